//! A real worker in this process, against the test's database and prefix, and
//! helpers to store and publish events the way the ingress does.

use std::{net::SocketAddr, time::Duration};

use shared::{
    amqp::{OutgoingEvent, Publisher},
    secret::Secret,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker::{config::Settings, RunError, Worker};

use crate::{broker::TestBroker, db::TestDb};

pub struct TestWorker {
    pub ops_addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), RunError>>>,
}

/// Settings for tests: short retry delays so failure paths finish quickly.
pub fn settings(database_url: String, amqp_url: String, prefix: String) -> Settings {
    Settings {
        database_url: Secret::new(database_url),
        amqp_url: Secret::new(amqp_url),
        amqp_prefix: prefix,
        concurrency: 16,
        max_attempts: 5,
        database_patience: Duration::from_secs(10),
        retry_base_delay: Duration::from_millis(50),
        retry_max_delay: Duration::from_millis(500),
        drain_timeout: Duration::from_secs(10),
        gauge_interval: Duration::from_millis(200),
        catalog: worker::credits::Catalog::default(),
        clerk: None,
    }
}

impl TestWorker {
    pub async fn spawn(db: &TestDb, broker: &TestBroker) -> Self {
        Self::spawn_with(settings(
            db.url(None),
            crate::amqp_url(),
            broker.prefix.clone(),
        ))
        .await
    }

    pub async fn spawn_with(settings: Settings) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let worker = Worker::build(settings, listener)
            .await
            .expect("worker starts");
        let ops_addr = worker.ops_addr().expect("ops addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        Self {
            ops_addr,
            shutdown,
            task: Some(task),
        }
    }

    /// Stops as on SIGTERM and waits for the drain.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("worker run");
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ =
                tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(task));
        }
    }
}

/// Stores `body` under `webhook_id` as the ingress does after a confirmed
/// publish, without publishing.
pub async fn store(db: &TestDb, webhook_id: &str, body: &[u8]) {
    let event_type = shared::event::event_type(body).expect("test event has a type");
    sqlx::query(
        "INSERT INTO webhook_events (webhook_id, event_type, payload, raw_body, published_at, status) \
         VALUES ($1, $2, $3::jsonb, $4, now(), 'published')",
    )
    .bind(webhook_id)
    .bind(event_type)
    .bind(std::str::from_utf8(body).expect("utf-8"))
    .bind(body)
    .execute(&db.pool)
    .await
    .expect("store event");
}

/// Publishes `events` (`(webhook_id, body)`) to the events exchange with confirms.
pub async fn publish(broker: &TestBroker, events: &[(String, Vec<u8>)]) {
    let publisher = Publisher::open(&broker.connection, &broker.names)
        .await
        .expect("publisher");
    let types: Vec<String> = events
        .iter()
        .map(|(_, body)| shared::event::event_type(body).expect("type"))
        .collect();
    let outgoing: Vec<OutgoingEvent<'_>> = events
        .iter()
        .zip(&types)
        .map(|((id, body), event_type)| OutgoingEvent {
            webhook_id: id,
            event_type,
            body,
            traceparent: None,
        })
        .collect();
    for result in publisher.publish_all(&outgoing).await {
        result.expect("publish confirmed");
    }
}

/// Stores and publishes each event once.
pub async fn deliver(db: &TestDb, broker: &TestBroker, events: &[(String, Vec<u8>)]) {
    for (id, body) in events {
        store(db, id, body).await;
    }
    publish(broker, events).await;
}

/// How many events have been processed or ignored.
pub async fn finished_events(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE processed_at IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .expect("count")
}

/// Waits until exactly `expected` events are processed or ignored.
pub async fn wait_processed(db: &TestDb, expected: i64, deadline: Duration) {
    crate::wait_for(
        &format!("{expected} events to be processed"),
        deadline,
        || async { (finished_events(db).await == expected).then_some(()) },
    )
    .await;
}

/// Waits until a worker has finished at least one event: it is mid-stream.
pub async fn wait_started(db: &TestDb, deadline: Duration) {
    crate::wait_for("the worker to finish a first event", deadline, || async {
        (finished_events(db).await > 0).then_some(())
    })
    .await;
}
