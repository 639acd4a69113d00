//! The retry policy every retry loop of the product uses: exponential
//! backoff with jitter, one formula, given as a [`RetryPolicy`] (a backon
//! [`BackoffBuilder`], so `Retryable::retry(policy)` takes it as it is).

use std::time::Duration;

use backon::BackoffBuilder;
use rand::Rng as _;

/// Exponential backoff with jitter: the step of attempt `n` is `base`
/// doubled `n - 1` times, capped at `max`; the delay is the step scaled by a
/// random factor between ½ and 1, so that retries of many callers spread out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The step of the first attempt.
    pub base: Duration,
    /// The longest step.
    pub max: Duration,
}

impl RetryPolicy {
    /// A policy from `base` doubling up to `max` (at least `base`).
    pub const fn new(base: Duration, max: Duration) -> Self {
        let max = if max.as_nanos() < base.as_nanos() {
            base
        } else {
            max
        };
        Self { base, max }
    }

    /// The step of attempt `attempt` (1 for the first), before jitter: the
    /// longest the delay after that attempt can be.
    pub fn step(&self, attempt: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max)
    }

    /// The delay after attempt `attempt`: its [`step`](Self::step) scaled by
    /// a random factor between ½ and 1.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.step(attempt)
            .mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// Every distinct step, shortest first: `base`, `2 × base`, … up to `max`.
    pub fn steps(&self) -> Vec<Duration> {
        let mut steps: Vec<Duration> = Vec::new();
        for attempt in 1.. {
            let step = self.step(attempt);
            if steps.last() == Some(&step) {
                break;
            }
            steps.push(step);
        }
        steps
    }

    /// The delays after attempts 1, 2, 3 …, without end.
    pub fn delays(&self) -> Delays {
        Delays {
            policy: *self,
            attempt: 0,
            budget: None,
            spent: Duration::ZERO,
        }
    }

    /// The delays after attempts 1, 2, 3 … as long as their sum stays within
    /// `total`.
    pub fn delays_within(&self, total: Duration) -> Delays {
        Delays {
            budget: Some(total),
            ..self.delays()
        }
    }
}

impl BackoffBuilder for RetryPolicy {
    type Backoff = Delays;

    fn build(self) -> Delays {
        self.delays()
    }
}

/// The delays of a [`RetryPolicy`], one per failed attempt: without end, or
/// until a budget of total delay is spent.
#[derive(Clone, Debug)]
pub struct Delays {
    policy: RetryPolicy,
    attempt: u32,
    budget: Option<Duration>,
    spent: Duration,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.attempt = self.attempt.saturating_add(1);
        let delay = self.policy.delay(self.attempt);
        if let Some(budget) = self.budget {
            if self.spent.saturating_add(delay) > budget {
                return None;
            }
        }
        self.spent = self.spent.saturating_add(delay);
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_attempt_within_jitter_and_stays_under_the_cap() {
        let policy = RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(30));
        for attempt in 1..=40 {
            let step = Duration::from_secs(1)
                .saturating_mul(1u32 << (attempt - 1).min(16))
                .min(Duration::from_secs(30));
            assert_eq!(policy.step(attempt), step);
            let delay = policy.delay(attempt);
            assert!(
                delay <= step && delay >= step / 2,
                "attempt {attempt}: {delay:?}"
            );
        }
    }

    #[test]
    fn the_steps_are_the_distinct_capped_doublings() {
        let secs = |s: u64| Duration::from_secs(s);
        assert_eq!(
            RetryPolicy::new(secs(1), secs(30)).steps(),
            [1, 2, 4, 8, 16, 30].map(secs)
        );
        let ms = |m: u64| Duration::from_millis(m);
        assert_eq!(
            RetryPolicy::new(ms(50), ms(500)).steps(),
            [50, 100, 200, 400, 500].map(ms)
        );
        assert_eq!(RetryPolicy::new(secs(5), secs(1)).steps(), [secs(5)]);
    }

    #[test]
    fn bounded_delays_stop_before_exceeding_their_budget() {
        let policy = RetryPolicy::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<Duration> = policy.delays_within(Duration::from_secs(2)).collect();
        assert!(delays.iter().sum::<Duration>() <= Duration::from_secs(2));
        assert!(delays.len() >= 4, "{delays:?}");
    }

    #[test]
    fn the_delays_follow_the_attempts() {
        let policy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1));
        for (attempt, delay) in (1..=10).zip(policy.delays()) {
            let step = policy.step(attempt);
            assert!(delay <= step && delay >= step / 2, "{attempt}: {delay:?}");
        }
    }
}
