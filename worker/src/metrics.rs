//! The worker's metrics, rendered as Prometheus text on `/metrics`. Counters
//! are updated as events flow; gauges that live in the database or the broker
//! are refreshed by [`crate::gauges`] on an interval.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event_type: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    event_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Receipt-to-commit buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

pub struct Metrics {
    registry: Registry,
    events: Family<EventLabels, Counter>,
    latency: Family<TypeLabel, Histogram, fn() -> Histogram>,
    retries: Family<TypeLabel, Counter>,
    dead_lettered: Family<TypeLabel, Counter>,
    clerk_sync: Family<OutcomeLabel, Counter>,
    pub dlq_messages: Gauge,
    pub broker_connected: Gauge,
    pub clerk_sync_pending: Gauge,
    pub clerk_sync_oldest_pending: Gauge<f64, AtomicU64>,
    pub zero_balance_accounts: Gauge,
    /// Age of the oldest event published but not applied (dead ones aside).
    pub oldest_unprocessed: Gauge<f64, AtomicU64>,
    /// Events that failed and wait in a delay queue for their next attempt.
    pub awaiting_retry: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "clerk_worker_events",
            "Events by type and outcome",
            events.clone(),
        );
        let latency = Family::<TypeLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "clerk_worker_event_latency_seconds",
            "Time from receipt by the ingress to the worker's commit",
            latency.clone(),
        );
        let retries = Family::<TypeLabel, Counter>::default();
        registry.register(
            "clerk_worker_retries",
            "Failed attempts that will be retried",
            retries.clone(),
        );
        let dead_lettered = Family::<TypeLabel, Counter>::default();
        registry.register(
            "clerk_worker_dead_lettered",
            "Events sent to the dead-letter queue",
            dead_lettered.clone(),
        );
        let clerk_sync = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "clerk_worker_clerk_sync",
            "Clerk metadata writes by outcome",
            clerk_sync.clone(),
        );
        let dlq_messages = Gauge::default();
        registry.register(
            "clerk_worker_dlq_messages",
            "Messages in the dead-letter queue",
            dlq_messages.clone(),
        );
        let broker_connected = Gauge::default();
        registry.register(
            "clerk_worker_broker_connected",
            "1 while the consumer holds a RabbitMQ connection",
            broker_connected.clone(),
        );
        let clerk_sync_pending = Gauge::default();
        registry.register(
            "clerk_worker_clerk_sync_pending",
            "Balances waiting to be written to Clerk",
            clerk_sync_pending.clone(),
        );
        let clerk_sync_oldest_pending = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "clerk_worker_clerk_sync_oldest_pending_age_seconds",
            "Age of the oldest balance waiting to be written to Clerk (0 when none)",
            clerk_sync_oldest_pending.clone(),
        );
        let zero_balance_accounts = Gauge::default();
        registry.register(
            "clerk_worker_credit_accounts_zero_balance",
            "Credit accounts with a zero balance",
            zero_balance_accounts.clone(),
        );
        let oldest_unprocessed = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "clerk_worker_oldest_unprocessed_age_seconds",
            "Age of the oldest event published to the broker but not yet applied, dead ones aside (0 when none)",
            oldest_unprocessed.clone(),
        );
        let awaiting_retry = Gauge::default();
        registry.register(
            "clerk_worker_events_awaiting_retry",
            "Events that failed and wait in a delay queue for their next attempt",
            awaiting_retry.clone(),
        );
        // The handled types' series exist from the start, at 0, so the first
        // increment after a restart is visible to rate() and increase().
        for event_type in shared::event::HANDLED_EVENT_TYPES {
            for outcome in ["processed", "unchanged", "duplicate", "dead_lettered"] {
                let _ = events.get_or_create(&EventLabels {
                    event_type: (*event_type).to_owned(),
                    outcome,
                });
            }
            let label = TypeLabel {
                event_type: (*event_type).to_owned(),
            };
            let _ = retries.get_or_create(&label);
            let _ = dead_lettered.get_or_create(&label);
        }
        for outcome in [
            "ok",
            "rate_limited",
            "server_error",
            "unreachable",
            "rejected",
            "decode_error",
        ] {
            let _ = clerk_sync.get_or_create(&OutcomeLabel { outcome });
        }
        Self {
            registry,
            events,
            latency,
            retries,
            dead_lettered,
            clerk_sync,
            dlq_messages,
            broker_connected,
            clerk_sync_pending,
            clerk_sync_oldest_pending,
            zero_balance_accounts,
            oldest_unprocessed,
            awaiting_retry,
        }
    }
}

impl Metrics {
    /// One event reached an outcome.
    pub fn event(&self, event_type: &str, outcome: &'static str) {
        self.events
            .get_or_create(&EventLabels {
                event_type: event_type.to_owned(),
                outcome,
            })
            .inc();
    }

    /// An event was committed `seconds` after the ingress received it.
    pub fn latency(&self, event_type: &str, seconds: f64) {
        self.latency
            .get_or_create(&TypeLabel {
                event_type: event_type.to_owned(),
            })
            .observe(seconds.max(0.0));
    }

    /// One failed attempt will be retried.
    pub fn retry(&self, event_type: &str) {
        self.retries
            .get_or_create(&TypeLabel {
                event_type: event_type.to_owned(),
            })
            .inc();
    }

    /// One event went to the dead-letter queue.
    pub fn dead_lettered(&self, event_type: &str) {
        self.dead_lettered
            .get_or_create(&TypeLabel {
                event_type: event_type.to_owned(),
            })
            .inc();
        self.event(event_type, "dead_lettered");
    }

    /// One Clerk metadata write ended with `outcome`.
    pub fn clerk_sync(&self, outcome: &'static str) {
        self.clerk_sync
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
