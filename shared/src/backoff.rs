//! The retry delay every retry loop of the product uses.

use std::time::Duration;

use rand::Rng as _;

/// Exponential backoff with jitter: `base` doubled for each attempt after the
/// first, capped at `max`, then scaled by a random factor between ½ and 1 so
/// that retries of many callers spread out.
pub fn jittered(base: Duration, max: Duration, attempt: u32) -> Duration {
    let step = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max);
    step.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_attempt_within_jitter_and_stays_under_the_cap() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(30);
        for attempt in 1..=40 {
            let step = base.saturating_mul(1u32 << (attempt - 1).min(16)).min(max);
            let delay = jittered(base, max, attempt);
            assert!(
                delay <= step && delay >= step / 2,
                "attempt {attempt}: {delay:?}"
            );
        }
    }
}
