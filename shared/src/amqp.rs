//! RabbitMQ: connection (to one node or the first answering node of a
//! cluster, TLS included: [`Nodes`]), topology declaration (`../SPEC.md`
//! section 7), the worker's delay queues for retries ([`retry`]) and a
//! publish that waits for the broker's confirm.

mod nodes;
pub mod retry;

pub use nodes::Nodes;

use std::time::Duration;

use lapin::{
    message::BasicReturnMessage,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
    BasicProperties, Channel, Connection, ExchangeKind,
};

use crate::secret::Secret;

/// Deliveries of one message before the broker dead-letters it on its own: the
/// guard against a message that kills the worker before any error handling runs.
/// The worker's own retry budget (`WORKER_MAX_ATTEMPTS`) is far below it.
pub const DELIVERY_LIMIT: i64 = 20;

/// The dead-letter queue's delivery limit: out of reach, so that listing it
/// (which returns every message) can never make RabbitMQ drop a dead letter.
pub const DLQ_DELIVERY_LIMIT: i64 = 1_000_000_000;

/// How long connecting to one broker node may take before it counts as
/// unreachable (and the next node of the list is tried).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a batch of publishes may wait for the broker's confirms.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Header carrying the event type on every message.
pub const HEADER_TYPE: &str = "type";
/// Header carrying the W3C trace context of the request that received the event.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// Header of a dead letter: how many attempts were made.
pub const HEADER_ATTEMPTS: &str = "x-attempts";
/// Header of a dead letter: the last error.
pub const HEADER_LAST_ERROR: &str = "x-last-error";
/// Header of a dead letter: when it was dead-lettered (RFC 3339).
pub const HEADER_DEAD_LETTERED_AT: &str = "x-dead-lettered-at";

/// The names of every exchange and queue, derived from `AMQP_PREFIX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// Topic exchange events are published to, routing key = event type.
    pub exchange: String,
    /// Quorum queue the workers consume, bound with `#`.
    pub worker_queue: String,
    /// Exchange the worker queue dead-letters to.
    pub dead_letter_exchange: String,
    /// Quorum queue holding dead letters until an operator replays them.
    pub dead_letter_queue: String,
    /// Headers exchange a retrying event is published to; it routes to the
    /// delay queue of its step ([`Names::retry_queue`]).
    pub retry_exchange: String,
}

impl Names {
    /// The names for one prefix.
    pub fn new(prefix: &str) -> Self {
        Self {
            exchange: format!("{prefix}.events"),
            worker_queue: format!("{prefix}.events.worker"),
            dead_letter_exchange: format!("{prefix}.events.dlx"),
            dead_letter_queue: format!("{prefix}.events.dlq"),
            retry_exchange: format!("{prefix}.events.retry"),
        }
    }

    /// The delay queue of one retry step: `{prefix}.events.retry.{milliseconds}`.
    /// Its messages expire after the step and return to the exchange.
    pub fn retry_queue(&self, step: Duration) -> String {
        format!("{}.{}", self.retry_exchange, step.as_millis())
    }
}

/// Broker errors. None carries the password: URLs are shown through
/// [`crate::secret::redact_url`], and a URL that does not parse is not shown at all.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// An entry of `AMQP_URL` does not parse as an `amqp://` or `amqps://`
    /// URL. The parser's own message is left out: it may quote the URL.
    #[error(
        "AMQP_URL is not a valid amqp:// or amqps:// URL, or comma-separated list of them \
         (characters such as , / ? # in the password must be percent-encoded)"
    )]
    InvalidUrl,
    /// A node's TLS parameters cannot be used (an unreadable `cacertfile`,
    /// an unsupported option).
    #[error("AMQP_URL {node}: {problem}")]
    TlsSetting {
        /// The node's URL with its password hidden.
        node: String,
        /// What is wrong.
        problem: String,
    },
    /// No node of `AMQP_URL` could be connected to; one failure per node, in order.
    #[error("{}", unreachable(failures))]
    Unreachable {
        /// Why each node failed.
        failures: Vec<NodeFailure>,
    },
    /// A protocol operation failed.
    #[error("RabbitMQ {operation} failed")]
    Protocol {
        /// What was being done.
        operation: &'static str,
        /// The cause.
        #[source]
        source: lapin::Error,
    },
    /// The broker refused the message.
    #[error("RabbitMQ did not accept the message (nack)")]
    Nacked,
    /// The message matched no queue and came back.
    #[error("RabbitMQ returned the message as unroutable: {0}")]
    Unroutable(String),
    /// The confirm did not arrive in time.
    #[error("RabbitMQ did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
}

fn protocol(operation: &'static str) -> impl FnOnce(lapin::Error) -> AmqpError {
    move |source| AmqpError::Protocol { operation, source }
}

/// Why one node could not be connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFailure {
    /// The node's URL with its password hidden.
    pub node: String,
    /// What happened, on one line ("is unreachable: …", "TLS: …").
    pub reason: String,
    /// Whether trying again cannot help (the server's certificate was refused).
    pub permanent: bool,
}

fn unreachable(failures: &[NodeFailure]) -> String {
    let each = |f: &NodeFailure| format!("{} {}", f.node, f.reason);
    match failures {
        [one] => format!("RabbitMQ at {}", each(one)),
        many => format!(
            "RabbitMQ: none of the {} nodes of AMQP_URL answered: {}",
            many.len(),
            many.iter().map(each).collect::<Vec<_>>().join("; ")
        ),
    }
}

impl AmqpError {
    /// Whether retrying cannot help until the configuration changes: a URL
    /// or TLS setting that cannot be used, or every node's certificate refused.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::InvalidUrl | Self::TlsSetting { .. } => true,
            Self::Unreachable { failures } => {
                !failures.is_empty() && failures.iter().all(|f| f.permanent)
            }
            _ => false,
        }
    }
}

/// Connects to the first node of `url` (`AMQP_URL`: one URL or a
/// comma-separated list) that answers; the connection is named `name` in the
/// broker's management view.
pub async fn connect(url: &Secret<String>, name: &str) -> Result<Connection, AmqpError> {
    Nodes::parse(url.expose())?.connect(name).await
}

/// Declares every exchange, queue and binding; idempotent.
pub async fn declare_topology(channel: &Channel, names: &Names) -> Result<(), AmqpError> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for exchange in [&names.exchange, &names.dead_letter_exchange] {
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                durable_exchange,
                FieldTable::default(),
            )
            .await
            .map_err(protocol("exchange.declare"))?;
    }
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };

    let mut dlq_args = FieldTable::default();
    dlq_args.insert("x-queue-type".into(), long_string("quorum"));
    // RabbitMQ 4 gives quorum queues a default delivery limit of 20 and drops
    // what exceeds it when there is nowhere to dead-letter to. Listing the DLQ
    // returns every message to it, so its limit must be out of reach.
    dlq_args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DLQ_DELIVERY_LIMIT),
    );
    channel
        .queue_declare(
            names.dead_letter_queue.as_str().into(),
            durable_queue,
            dlq_args,
        )
        .await
        .map_err(protocol("queue.declare"))?;
    bind(
        channel,
        &names.dead_letter_queue,
        &names.dead_letter_exchange,
    )
    .await?;

    channel
        .queue_declare(
            names.worker_queue.as_str().into(),
            durable_queue,
            worker_queue_arguments(names),
        )
        .await
        .map_err(protocol("queue.declare"))?;
    bind(channel, &names.worker_queue, &names.exchange).await
}

/// Arguments of the worker queue. Dead-lettering is at-least-once, which
/// RabbitMQ allows only with `reject-publish` overflow: a message leaves the
/// queue only once the dead-letter queue has it.
fn worker_queue_arguments(names: &Names) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args.insert(
        "x-dead-letter-exchange".into(),
        long_string(&names.dead_letter_exchange),
    );
    args.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    args.insert("x-overflow".into(), long_string("reject-publish"));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    args
}

async fn bind(channel: &Channel, queue: &str, exchange: &str) -> Result<(), AmqpError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(protocol("queue.bind"))
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// One stored event on its way to the broker.
#[derive(Clone, Copy, Debug)]
pub struct OutgoingEvent<'a> {
    /// The svix-id: the message id.
    pub webhook_id: &'a str,
    /// The event type: routing key and `type` header.
    pub event_type: &'a str,
    /// The raw body exactly as stored.
    pub body: &'a [u8],
    /// W3C trace context of the request that received it.
    pub traceparent: Option<&'a str>,
}

/// An event that failed for good, on its way to the dead-letter queue.
#[derive(Clone, Copy, Debug)]
pub struct DeadLetter<'a> {
    /// The event as it was published.
    pub event: OutgoingEvent<'a>,
    /// Attempts made.
    pub attempts: i32,
    /// Why the last attempt failed.
    pub last_error: &'a str,
}

impl OutgoingEvent<'_> {
    fn properties(&self) -> BasicProperties {
        self.properties_with(FieldTable::default())
    }

    fn properties_with(&self, mut headers: FieldTable) -> BasicProperties {
        headers.insert(HEADER_TYPE.into(), long_string(self.event_type));
        if let Some(traceparent) = self.traceparent {
            headers.insert(HEADER_TRACEPARENT.into(), long_string(traceparent));
        }
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(ShortString::from(self.webhook_id))
            .with_type(ShortString::from(self.event_type))
            .with_headers(headers)
    }
}

/// A channel in confirm mode with the topology declared.
pub struct Publisher {
    channel: Channel,
    names: Names,
}

impl Publisher {
    /// Opens a confirm-mode channel on `connection` and declares the topology.
    pub async fn open(connection: &Connection, names: &Names) -> Result<Self, AmqpError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(protocol("channel.open"))?;
        declare_topology(&channel, names).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(protocol("confirm.select"))?;
        Ok(Self {
            channel,
            names: names.clone(),
        })
    }

    /// Whether the channel can still be used.
    pub fn is_usable(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes every event, then waits for all their confirms. The result for
    /// each event is in the same position: `Ok` only if the broker confirmed it
    /// and routed it to a queue (publishes are `mandatory`).
    pub async fn publish_all(&self, events: &[OutgoingEvent<'_>]) -> Vec<Result<(), AmqpError>> {
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            pending.push(
                self.send(
                    &self.names.exchange,
                    event.event_type,
                    event.body,
                    event.properties(),
                )
                .await,
            );
        }
        Self::confirmations(pending).await
    }

    /// Publishes a dead letter to the dead-letter exchange, carrying its
    /// attempts and last error as headers, and waits for the confirm.
    pub async fn dead_letter(&self, letter: &DeadLetter<'_>) -> Result<(), AmqpError> {
        let mut headers = FieldTable::default();
        headers.insert(HEADER_ATTEMPTS.into(), AMQPValue::LongInt(letter.attempts));
        let error: String = letter.last_error.chars().take(2000).collect();
        headers.insert(HEADER_LAST_ERROR.into(), long_string(&error));
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        headers.insert(HEADER_DEAD_LETTERED_AT.into(), long_string(&now));
        let sent = self
            .send(
                &self.names.dead_letter_exchange,
                letter.event.event_type,
                letter.event.body,
                letter.event.properties_with(headers),
            )
            .await;
        Self::confirmations(vec![sent])
            .await
            .pop()
            .unwrap_or(Err(AmqpError::Nacked))
    }

    async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<lapin::PublisherConfirm, AmqpError> {
        self.channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .map_err(protocol("basic.publish"))
    }

    async fn confirmations(
        pending: Vec<Result<lapin::PublisherConfirm, AmqpError>>,
    ) -> Vec<Result<(), AmqpError>> {
        let mut results = Vec::with_capacity(pending.len());
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        for sent in pending {
            let result = match sent {
                Err(e) => Err(e),
                Ok(confirm) => match tokio::time::timeout_at(deadline, confirm).await {
                    Err(_) => Err(AmqpError::ConfirmTimeout(CONFIRM_TIMEOUT)),
                    Ok(Err(e)) => Err(AmqpError::Protocol {
                        operation: "publisher confirm",
                        source: e,
                    }),
                    Ok(Ok(confirmation)) => {
                        let acked = confirmation.is_ack();
                        match (acked, confirmation.take_message()) {
                            (_, Some(returned)) => Err(unroutable(&returned)),
                            (true, None) => Ok(()),
                            (false, None) => Err(AmqpError::Nacked),
                        }
                    }
                },
            };
            results.push(result);
        }
        results
    }

    /// Publishes keyed events (for example by row id) and returns the keys
    /// the broker confirmed, in order, with the first failure if any.
    pub async fn publish_confirmed<K: Copy>(
        &self,
        events: &[(K, OutgoingEvent<'_>)],
    ) -> (Vec<K>, Option<AmqpError>) {
        let outgoing: Vec<OutgoingEvent<'_>> = events.iter().map(|(_, event)| *event).collect();
        let mut confirmed = Vec::with_capacity(events.len());
        let mut failure = None;
        for ((key, _), result) in events.iter().zip(self.publish_all(&outgoing).await) {
            match result {
                Ok(()) => confirmed.push(*key),
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        (confirmed, failure)
    }

    /// Publishes one event and waits for its confirm.
    pub async fn publish(&self, event: &OutgoingEvent<'_>) -> Result<(), AmqpError> {
        self.publish_all(std::slice::from_ref(event))
            .await
            .pop()
            .unwrap_or(Err(AmqpError::Nacked))
    }
}

fn unroutable(returned: &BasicReturnMessage) -> AmqpError {
    AmqpError::Unroutable(format!("{} {}", returned.reply_code, returned.reply_text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_the_broker_client_would_quote_are_refused_without_showing_them() {
        for url in [
            "amqp:guest:hunter2@rabbit/%2f",
            "amqp://guest:se/cr3t-pw@127.0.0.1:1/%2f",
            "http://guest:hunter2@rabbit/",
            "hunter2",
        ] {
            let error = Nodes::parse(url).err().expect("refused");
            assert!(matches!(error, AmqpError::InvalidUrl), "{url}");
            assert!(!error.to_string().contains("hunter2"), "{error}");
            assert!(!error.to_string().contains("cr3t"), "{error}");
        }
        assert!(Nodes::parse("amqp://guest:se%2Fcr3t-pw@127.0.0.1:1/%2f").is_ok());
        assert!(Nodes::parse("amqps://rabbit/%2f?server_name_indication=r").is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_named_without_its_password() {
        let url = Secret::new("amqp://guest:p%40ss%2Fw0rd@127.0.0.1:1/%2f".to_owned());

        let error = connect(&url, "test").await.unwrap_err();

        let message = error.to_string();
        assert!(
            message.starts_with("RabbitMQ at amqp://guest:***@127.0.0.1:1/%2f"),
            "{message}"
        );
        assert!(
            !message.contains("p%40ss") && !message.contains("w0rd"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_list_of_unreachable_nodes_names_each_without_its_password() {
        let url = Secret::new(
            "amqp://guest:hunter2@127.0.0.1:1/%2f,amqp://guest:s3cr3t@127.0.0.1:2/%2f".to_owned(),
        );

        let error = connect(&url, "test").await.unwrap_err();

        let message = error.to_string();
        assert!(
            message.starts_with("RabbitMQ: none of the 2 nodes of AMQP_URL answered: amqp://guest:***@127.0.0.1:1/%2f is unreachable: "),
            "{message}"
        );
        assert!(
            message.contains("; amqp://guest:***@127.0.0.1:2/%2f is unreachable: "),
            "{message}"
        );
        assert!(
            !message.contains("hunter2") && !message.contains("s3cr3t"),
            "{message}"
        );
        assert!(!error.is_permanent());
    }
}
