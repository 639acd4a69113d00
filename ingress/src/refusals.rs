//! Refused requests are logged as a summary, not one line each.
//!
//! Anyone can send the ingress garbage, so one WARN line per refusal would let
//! a stranger fill the logs. Every refusal is counted in the metrics; the log
//! gets the first refusal of each period in full (so a wrong secret shows up
//! at once) and, at the end of a period that had more, one line with the
//! count per outcome and a sample of the sources.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

/// How often the summary is written, when there was something to summarise.
pub const PERIOD: Duration = Duration::from_secs(60);

/// Sources named in one summary at most.
const SAMPLE: usize = 5;

/// The refusals of the current period.
#[derive(Clone, Default)]
pub struct Refusals(Arc<Mutex<Period>>);

#[derive(Default)]
struct Period {
    counts: BTreeMap<&'static str, u64>,
    sources: Vec<IpAddr>,
}

impl Refusals {
    /// Records one refusal; logs it in full when it is the first of the period.
    pub fn record(&self, outcome: &'static str, reason: &str, source: Option<IpAddr>) {
        let first = {
            let mut period = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let first = period.counts.is_empty();
            *period.counts.entry(outcome).or_default() += 1;
            if let Some(source) = source {
                if period.sources.len() < SAMPLE && !period.sources.contains(&source) {
                    period.sources.push(source);
                }
            }
            first
        };
        if first {
            tracing::warn!(
                outcome,
                reason,
                source = source.map(|s| s.to_string()).unwrap_or_default(),
                "webhook refused (further refusals in the next {} s are summarised)",
                PERIOD.as_secs()
            );
        }
    }

    /// Writes the summary of the period that ends now, if it had more than the
    /// one refusal already logged, and starts a new period.
    pub fn flush(&self) {
        let period = std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let total: u64 = period.counts.values().sum();
        if total > 1 {
            let counts = period
                .counts
                .iter()
                .map(|(outcome, n)| format!("{outcome}={n}"))
                .collect::<Vec<_>>()
                .join(" ");
            let sources = period
                .sources
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ");
            tracing::warn!(total, counts, sources, "webhook refusals summary");
        }
    }

    /// Flushes every [`PERIOD`] until `stop`, then once more.
    pub async fn run(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(PERIOD);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => self.flush(),
                () = stop.cancelled() => break,
            }
        }
        self.flush();
    }
}
