//! Counters of the ingress, rendered as Prometheus text on `/metrics`.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering},
};

use crate::routes::webhook::Outcome;

/// Process-wide counters. Gauges that live in the database are read at scrape.
#[derive(Default)]
pub struct Metrics {
    requests: [AtomicU64; Outcome::ALL.len()],
    relay_published: AtomicU64,
    relay_failures: AtomicU64,
}

impl Metrics {
    pub fn request(&self, outcome: Outcome) {
        self.requests[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn relay_published(&self, count: u64) {
        self.relay_published.fetch_add(count, Ordering::Relaxed);
    }

    pub fn relay_failure(&self) {
        self.relay_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition; `unpublished` is `None` when the database
    /// could not be asked.
    pub fn render(&self, unpublished: Option<i64>) -> String {
        let mut out = String::new();
        out.push_str("# HELP clerk_ingress_requests_total Webhook requests by outcome.\n");
        out.push_str("# TYPE clerk_ingress_requests_total counter\n");
        for outcome in Outcome::ALL {
            let value = self.requests[outcome as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "clerk_ingress_requests_total{{outcome=\"{}\"}} {value}",
                outcome.as_str()
            );
        }
        out.push_str("# HELP clerk_ingress_relay_published_total Events the relay published with a broker confirm.\n");
        out.push_str("# TYPE clerk_ingress_relay_published_total counter\n");
        let _ = writeln!(
            out,
            "clerk_ingress_relay_published_total {}",
            self.relay_published.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP clerk_ingress_relay_failures_total Relay passes that failed to publish.\n",
        );
        out.push_str("# TYPE clerk_ingress_relay_failures_total counter\n");
        let _ = writeln!(
            out,
            "clerk_ingress_relay_failures_total {}",
            self.relay_failures.load(Ordering::Relaxed)
        );
        if let Some(rows) = unpublished {
            out.push_str("# HELP clerk_ingress_unpublished_events Stored events the broker has not confirmed yet.\n");
            out.push_str("# TYPE clerk_ingress_unpublished_events gauge\n");
            let _ = writeln!(out, "clerk_ingress_unpublished_events {rows}");
        }
        out
    }
}
