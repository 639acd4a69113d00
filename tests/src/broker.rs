//! A broker prefix of its own for each test; its exchanges and queues are
//! deleted when the test ends.

use std::time::Duration;

use lapin::{
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions},
    Channel, Connection,
};
use shared::{
    amqp::{self, Names},
    secret::Secret,
};

pub struct TestBroker {
    pub prefix: String,
    /// The broker (or the comma-separated nodes of a cluster) it uses.
    pub url: String,
    pub names: Names,
    pub connection: Connection,
    pub channel: Channel,
}

/// A message as the broker holds it.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub type_header: Option<String>,
    pub type_property: Option<String>,
    pub traceparent: Option<String>,
    pub delivery_mode: Option<u8>,
    pub routing_key: String,
    pub headers: Vec<(String, String)>,
}

impl Received {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
}

impl TestBroker {
    /// A fresh prefix with the whole topology declared.
    pub async fn new() -> Self {
        Self::new_at(&crate::amqp_url()).await
    }

    /// A fresh prefix with the whole topology declared on the broker at `url`
    /// (one URL or a cluster's list).
    pub async fn new_at(url: &str) -> Self {
        let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let broker = Self::adopt_at(url, &prefix).await;
        amqp::declare_topology(&broker.channel, &broker.names)
            .await
            .expect("declare topology");
        broker
    }

    /// Takes charge of a prefix something else declared, to inspect it and to
    /// remove it when the test ends.
    pub async fn adopt(prefix: &str) -> Self {
        Self::adopt_at(&crate::amqp_url(), prefix).await
    }

    /// [`TestBroker::adopt`] on the broker at `url`.
    pub async fn adopt_at(url: &str, prefix: &str) -> Self {
        let prefix = prefix.to_owned();
        let names = Names::new(&prefix);
        let connection = amqp::connect(&Secret::new(url.to_owned()), "e2e-test")
            .await
            .expect("connect to the test RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        Self {
            prefix,
            url: url.to_owned(),
            names,
            connection,
            channel,
        }
    }

    /// Takes (and acks) one message from `queue`, if any.
    pub async fn take(&self, queue: &str) -> Option<Received> {
        let message = self
            .channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")?;
        message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        Some(received(&message))
    }

    /// Takes every message of the worker queue until `expected` have arrived
    /// (or `deadline` passes), then checks that no more come.
    pub async fn take_worker_messages(&self, expected: usize, deadline: Duration) -> Vec<Received> {
        let mut all = Vec::new();
        let until = tokio::time::Instant::now() + deadline;
        while all.len() < expected && tokio::time::Instant::now() < until {
            match self.take(&self.names.worker_queue).await {
                Some(m) => all.push(m),
                None => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
        while let Some(m) = self.take(&self.names.worker_queue).await {
            all.push(m);
        }
        all
    }

    /// Messages currently in the worker queue.
    pub async fn worker_queue_depth(&self) -> u32 {
        let queue = self
            .channel
            .queue_declare(
                self.names.worker_queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("passive declare");
        queue.message_count()
    }
}

fn received(message: &BasicGetMessage) -> Received {
    let properties = &message.delivery.properties;
    let text = |value: &lapin::types::AMQPValue| match value {
        lapin::types::AMQPValue::LongString(s) => {
            String::from_utf8_lossy(s.as_bytes()).into_owned()
        }
        lapin::types::AMQPValue::LongInt(i) => i.to_string(),
        lapin::types::AMQPValue::LongLongInt(i) => i.to_string(),
        other => format!("{other:?}"),
    };
    let headers: Vec<(String, String)> = properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), text(v)))
                .collect()
        })
        .unwrap_or_default();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    Received {
        body: message.delivery.data.clone(),
        message_id: properties.message_id().as_ref().map(ToString::to_string),
        type_header: header("type"),
        type_property: properties.kind().as_ref().map(ToString::to_string),
        traceparent: header("traceparent"),
        delivery_mode: *properties.delivery_mode(),
        routing_key: message.delivery.routing_key.to_string(),
        headers: headers.clone(),
    }
}

/// The delay queues a worker of the tests may declare: those of the test
/// settings' retry policy ([`crate::worker::settings`]) and of the binary's
/// default one.
fn retry_queues(names: &Names) -> Vec<String> {
    let test = crate::worker::settings(String::new(), String::new(), String::new());
    let binary = worker::config::Settings::default_retry_policy();
    test.retry_policy()
        .steps()
        .into_iter()
        .chain(binary.steps())
        .map(|step| names.retry_queue(step))
        .collect()
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let names = self.names.clone();
        let url = self.url.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                let Ok(connection) = amqp::connect(&Secret::new(url), "e2e-cleanup").await else {
                    return;
                };
                if let Ok(mut channel) = connection.create_channel().await {
                    for queue in [&names.worker_queue, &names.dead_letter_queue]
                        .into_iter()
                        .cloned()
                        .chain(retry_queues(&names))
                    {
                        let deleted = channel
                            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                            .await;
                        if deleted.is_err() {
                            // A queue that was never declared closes the channel.
                            match connection.create_channel().await {
                                Ok(fresh) => channel = fresh,
                                Err(_) => return,
                            }
                        }
                    }
                    for exchange in [
                        &names.exchange,
                        &names.dead_letter_exchange,
                        &names.retry_exchange,
                    ] {
                        let _ = channel
                            .exchange_delete(
                                exchange.as_str().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await;
                    }
                }
                let _ = connection.close(200, "cleanup".into()).await;
            });
        });
        let _ = cleanup.join();
    }
}
