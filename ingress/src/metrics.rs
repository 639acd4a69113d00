//! The ingress's metrics, rendered as Prometheus text on `/metrics`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::sync::atomic::AtomicU64;

use crate::routes::webhook::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Request latency buckets, in seconds: the interesting range is 1–50 ms.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0,
];

/// The ingress's metric families, registered once.
pub struct Metrics {
    registry: Registry,
    requests: Family<OutcomeLabel, Counter>,
    duration: Histogram,
    relay_published: Counter,
    relay_failures: Counter,
    unpublished: Gauge,
    oldest_unpublished: Gauge<f64, AtomicU64>,
    open_connections: Gauge,
    header_timeouts: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "clerk_ingress_requests",
            "Webhook requests by outcome",
            requests.clone(),
        );
        let duration = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "clerk_ingress_request_duration_seconds",
            "Time to answer a webhook request",
            duration.clone(),
        );
        let relay_published = Counter::default();
        registry.register(
            "clerk_ingress_relay_published",
            "Events the relay published with a broker confirm",
            relay_published.clone(),
        );
        let relay_failures = Counter::default();
        registry.register(
            "clerk_ingress_relay_failures",
            "Relay passes that failed to publish",
            relay_failures.clone(),
        );
        let unpublished = Gauge::default();
        registry.register(
            "clerk_ingress_unpublished_events",
            "Stored events the broker has not confirmed yet",
            unpublished.clone(),
        );
        let oldest_unpublished = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "clerk_ingress_oldest_unpublished_age_seconds",
            "Age of the oldest stored event the broker has not confirmed (0 when none)",
            oldest_unpublished.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "clerk_ingress_open_connections",
            "Connections open on the public listener",
            open_connections.clone(),
        );
        let header_timeouts = Counter::default();
        registry.register(
            "clerk_ingress_header_timeouts",
            "Connections closed because a request head did not arrive in time",
            header_timeouts.clone(),
        );
        // Every outcome is shown from the start, at 0.
        for outcome in Outcome::ALL {
            let _ = requests.get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            });
        }
        Self {
            registry,
            requests,
            duration,
            relay_published,
            relay_failures,
            unpublished,
            oldest_unpublished,
            open_connections,
            header_timeouts,
        }
    }
}

impl Metrics {
    /// One request ended with `outcome` after `seconds`.
    pub fn request(&self, outcome: Outcome, seconds: f64) {
        self.requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
        self.duration.observe(seconds);
    }

    /// The relay published `count` events.
    pub fn relay_published(&self, count: u64) {
        self.relay_published.inc_by(count);
    }

    /// A relay pass failed.
    pub fn relay_failure(&self) {
        self.relay_failures.inc();
    }

    /// The unpublished events as last counted: how many, and the oldest one's age in seconds.
    pub fn set_unpublished(&self, rows: i64, oldest_seconds: f64) {
        self.unpublished.set(rows);
        self.oldest_unpublished.set(oldest_seconds);
    }

    /// A connection was accepted.
    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    /// A connection was closed.
    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    /// A connection was closed because its request head was too slow.
    pub fn header_timeout(&self) {
        self.header_timeouts.inc();
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
