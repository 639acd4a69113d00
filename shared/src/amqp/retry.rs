//! Retries off the worker: a failed event waits in a delay queue, not in
//! the worker that failed it, so its prefetch slot serves the next delivery.
//!
//! One quorum queue per step of the retry policy (`{prefix}.events.retry.{ms}`,
//! e.g. 1000, 2000 … 30000), each with a queue TTL equal to its step and
//! dead-lettering (at least once) to the events exchange, which routes the
//! event back to the worker queue under its own type. The worker publishes a
//! retry to the headers exchange `{prefix}.events.retry` with the step's
//! header and the attempt's jittered delay as the per-message `expiration`.
//!
//! Why a queue per step rather than one delay queue with per-message TTLs:
//! RabbitMQ expires messages only at the head of a queue, so on one shared
//! queue a 30 s retry would hold back every 1 s retry behind it. In a step's
//! queue every message expires within the step of being queued (its own
//! expiration is at most the step, and so is that of every message ahead of
//! it), so a retry waits between its jittered delay and its step: head-of-line
//! blocking is bounded by the step, and the jitter is kept. The names carry
//! the step, so a worker whose delays change declares new queues instead of
//! colliding with the arguments of the old ones (which drain by themselves).
//! The RabbitMQ delayed-message plugin is not needed.

use std::time::Duration;

use lapin::{
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
    Channel, ExchangeKind,
};

use super::{long_string, protocol, AmqpError, Names, OutgoingEvent, Publisher};

/// Header of a retrying event: the step (milliseconds) whose delay queue
/// holds it; the retry exchange routes on it. Not `x-`: a headers exchange
/// ignores binding arguments that start with `x-`, and would route every
/// retry to every delay queue.
pub const HEADER_RETRY_STEP: &str = "retry-step-ms";
/// Header of a retrying event: the failed attempts the worker counted. The
/// event's row is the authority; this counts for a message no row can.
pub const HEADER_RETRY_ATTEMPTS: &str = "x-retry-attempts";

/// Declares the retry exchange and the delay queue of every step; idempotent.
/// Only the worker, which knows its retry policy, declares these.
pub async fn declare_retry_topology(
    channel: &Channel,
    names: &Names,
    steps: &[Duration],
) -> Result<(), AmqpError> {
    channel
        .exchange_declare(
            names.retry_exchange.as_str().into(),
            ExchangeKind::Headers,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(protocol("exchange.declare"))?;
    for step in steps {
        let queue = names.retry_queue(*step);
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                delay_queue_arguments(names, *step),
            )
            .await
            .map_err(protocol("queue.declare"))?;
        let mut binding = FieldTable::default();
        binding.insert("x-match".into(), long_string("all"));
        binding.insert(HEADER_RETRY_STEP.into(), long_string(&millis(*step)));
        channel
            .queue_bind(
                queue.as_str().into(),
                names.retry_exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                binding,
            )
            .await
            .map_err(protocol("queue.bind"))?;
    }
    Ok(())
}

/// A quorum queue, like the others, so a retry survives the loss of a node;
/// expired messages go back to the events exchange at least once (which
/// RabbitMQ allows only with `reject-publish` overflow; no length limit is
/// set, so nothing is ever rejected).
fn delay_queue_arguments(names: &Names, step: Duration) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(i64::try_from(step.as_millis()).unwrap_or(i64::MAX)),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        long_string(&names.exchange),
    );
    args.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    args.insert("x-overflow".into(), long_string("reject-publish"));
    args
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// An event that failed and will be tried again after a delay.
#[derive(Clone, Copy, Debug)]
pub struct Retry<'a> {
    /// The event as it was published.
    pub event: OutgoingEvent<'a>,
    /// Failed attempts so far.
    pub attempts: i32,
    /// The step of the retry policy: which delay queue holds it.
    pub step: Duration,
    /// How long it waits (at most the step).
    pub delay: Duration,
}

impl Publisher {
    /// Publishes a retry to its step's delay queue and waits for the confirm;
    /// only then may the failed delivery be acked. A step without a declared
    /// queue makes the message unroutable, which is an error here.
    pub async fn retry_later(&self, retry: &Retry<'_>) -> Result<(), AmqpError> {
        let mut headers = FieldTable::default();
        headers.insert(HEADER_RETRY_STEP.into(), long_string(&millis(retry.step)));
        headers.insert(
            HEADER_RETRY_ATTEMPTS.into(),
            AMQPValue::LongInt(retry.attempts),
        );
        let properties = retry
            .event
            .properties_with(headers)
            .with_expiration(ShortString::from(millis(retry.delay.min(retry.step))));
        let sent = self
            .send(
                &self.names.retry_exchange,
                retry.event.event_type,
                retry.event.body,
                properties,
            )
            .await;
        Self::confirmations(vec![sent])
            .await
            .pop()
            .unwrap_or(Err(AmqpError::Nacked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_has_its_queue_named_after_the_prefix_and_the_step() {
        let names = Names::new("clerk");
        assert_eq!(names.retry_exchange, "clerk.events.retry");
        assert_eq!(
            names.retry_queue(Duration::from_secs(30)),
            "clerk.events.retry.30000"
        );
        assert_eq!(
            names.retry_queue(Duration::from_millis(50)),
            "clerk.events.retry.50"
        );
    }
}
