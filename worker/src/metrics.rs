//! Counters of the worker, rendered as Prometheus text on `/metrics`.

use std::{collections::BTreeMap, fmt::Write as _, sync::Mutex, time::Duration};

#[derive(Default)]
pub struct Metrics {
    events: Mutex<BTreeMap<(String, &'static str), u64>>,
    retries: Mutex<BTreeMap<String, u64>>,
    clerk_sync: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// One event reached an outcome.
    pub fn event(&self, event_type: &str, outcome: &'static str, _elapsed: Duration) {
        if let Ok(mut events) = self.events.lock() {
            *events.entry((event_type.to_owned(), outcome)).or_default() += 1;
        }
    }

    /// One failed attempt will be retried.
    pub fn retry(&self, event_type: &str) {
        if let Ok(mut retries) = self.retries.lock() {
            *retries.entry(event_type.to_owned()).or_default() += 1;
        }
    }

    /// One Clerk metadata write ended with `outcome`.
    pub fn clerk_sync(&self, outcome: &'static str) {
        if let Ok(mut sync) = self.clerk_sync.lock() {
            *sync.entry(outcome).or_default() += 1;
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP clerk_worker_events_total Events by type and outcome.\n");
        out.push_str("# TYPE clerk_worker_events_total counter\n");
        if let Ok(events) = self.events.lock() {
            for ((event_type, outcome), value) in events.iter() {
                let _ = writeln!(
                    out,
                    "clerk_worker_events_total{{event_type=\"{}\",outcome=\"{outcome}\"}} {value}",
                    escape(event_type)
                );
            }
        }
        out.push_str("# HELP clerk_worker_retries_total Failed attempts that will be retried.\n");
        out.push_str("# TYPE clerk_worker_retries_total counter\n");
        if let Ok(retries) = self.retries.lock() {
            for (event_type, value) in retries.iter() {
                let _ = writeln!(
                    out,
                    "clerk_worker_retries_total{{event_type=\"{}\"}} {value}",
                    escape(event_type)
                );
            }
        }
        out.push_str("# HELP clerk_worker_clerk_sync_total Clerk metadata writes by outcome.\n");
        out.push_str("# TYPE clerk_worker_clerk_sync_total counter\n");
        if let Ok(sync) = self.clerk_sync.lock() {
            for (outcome, value) in sync.iter() {
                let _ = writeln!(
                    out,
                    "clerk_worker_clerk_sync_total{{outcome=\"{outcome}\"}} {value}"
                );
            }
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
