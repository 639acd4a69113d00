//! Publishes committed events that the broker has not confirmed yet.
//!
//! Every stored event goes through here: the request handler commits the
//! event with its state (`webhook_event_states`, no `published_at` yet) and
//! wakes the relay. A pass claims the oldest unpublished states with
//! `FOR UPDATE SKIP LOCKED` (so several ingress replicas never publish the
//! same row at once), publishes their events, waits for the broker's confirms
//! and, in the same transaction, sets `published_at` on the confirmed ones.
//! Rows whose publish failed stay unpublished and are retried with
//! exponential backoff; the relay also polls, so rows left by a replica that
//! stopped are picked up too.

use std::{sync::Arc, time::Duration};

use lapin::Connection;
use shared::{
    amqp::{self, AmqpError, Names, OutgoingEvent, Publisher},
    secret::Secret,
};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Rows claimed, published and marked in one transaction.
pub const BATCH_SIZE: i64 = 256;

/// Passes in flight at once: while one lane waits for the broker's confirms
/// of its batch, the other claims and publishes the next (`SKIP LOCKED`
/// keeps their batches apart).
pub const LANES: usize = 2;

/// After a pass that published something, how long the relay lets new rows
/// gather before the next pass: the latency it adds is small next to the
/// commits it saves when events keep coming.
const LINGER: Duration = Duration::from_millis(20);

/// How long the relay keeps trying to publish after shutdown was requested.
const FINAL_PASS_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Relay {
    pub pool: PgPool,
    pub amqp_url: Secret<String>,
    pub names: Names,
    pub wakeup: Arc<Notify>,
    pub poll_interval: Duration,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("PostgreSQL failed")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Broker(#[from] AmqpError),
}

#[derive(sqlx::FromRow)]
struct Pending {
    id: i64,
    webhook_id: String,
    event_type: String,
    raw_body: Vec<u8>,
    traceparent: Option<String>,
}

/// An open connection and its confirm-mode channel.
struct Broker {
    connection: Connection,
    publisher: Publisher,
}

/// The relay's retry policy: 200 ms doubling up to 30 s, jittered.
fn backoff() -> shared::backoff::Delays {
    shared::backoff::RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(30)).delays()
}

impl Relay {
    /// Runs until `stop` is cancelled, then makes one last bounded pass.
    /// Runs [`LANES`] lanes until `stop`, then gives each one last pass.
    pub async fn run(self, stop: CancellationToken) {
        let relay = Arc::new(self);
        let mut lanes = tokio::task::JoinSet::new();
        for _ in 0..LANES {
            lanes.spawn(relay.clone().lane(stop.clone()));
        }
        while lanes.join_next().await.is_some() {}
    }

    /// One lane: claims, publishes and marks a batch at a time, with a broker
    /// connection of its own.
    async fn lane(self: Arc<Self>, stop: CancellationToken) {
        let mut broker: Option<Broker> = None;
        let mut delays = backoff();
        while !stop.is_cancelled() {
            match self.pass(&mut broker).await {
                Ok(published) => {
                    delays = backoff();
                    if published as i64 == BATCH_SIZE {
                        continue;
                    }
                    tokio::select! {
                        () = self.wakeup.notified() => {
                            // Let a busy ingress gather a few more rows: one
                            // relay transaction for many events instead of one
                            // each (fewer commits, less competition with the
                            // requests' own commits).
                            if published > 0 {
                                tokio::select! {
                                    () = tokio::time::sleep(LINGER) => {}
                                    () = stop.cancelled() => {}
                                }
                            }
                        }
                        () = tokio::time::sleep(self.poll_interval) => {}
                        () = stop.cancelled() => {}
                    }
                }
                Err(error) => {
                    self.metrics.relay_failure();
                    if matches!(error, RelayError::Broker(_)) {
                        broker = None;
                    }
                    let delay = delays.next().unwrap_or(Duration::from_secs(30));
                    tracing::warn!(error.message = %shared::error::Chain(&error), retry_in = ?delay, "relay could not publish; events stay stored");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop.cancelled() => {}
                    }
                }
            }
        }
        self.final_pass(&mut broker).await;
        if let Some(broker) = broker {
            let _ = broker.connection.close(200, "shutdown".into()).await;
        }
    }

    /// Publishes what the last requests committed, if the broker allows it
    /// quickly; anything left is published by the next start.
    async fn final_pass(&self, broker: &mut Option<Broker>) {
        let drain = async {
            loop {
                match self.pass(broker).await {
                    Ok(n) if n as i64 == BATCH_SIZE => continue,
                    Ok(_) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        match tokio::time::timeout(FINAL_PASS_TIMEOUT, drain).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(error.message = %shared::error::Chain(&error), "unpublished events stay stored for the next start");
            }
            Err(_) => tracing::warn!("final relay pass timed out; unpublished events stay stored"),
        }
    }

    /// One batch: claim, publish, mark. Returns how many rows were published.
    async fn pass(&self, broker: &mut Option<Broker>) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<Pending> = sqlx::query_as(shared::event_status::UNPUBLISHED)
            .bind(BATCH_SIZE)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let publisher = match broker {
            Some(b) if b.publisher.is_usable() => &b.publisher,
            _ => {
                let connection = amqp::connect(&self.amqp_url, "clerk-ingress-relay").await?;
                let publisher = Publisher::open(&connection, &self.names).await?;
                tracing::info!("relay connected to RabbitMQ");
                &broker
                    .insert(Broker {
                        connection,
                        publisher,
                    })
                    .publisher
            }
        };
        let events: Vec<(i64, OutgoingEvent<'_>)> = rows
            .iter()
            .map(|row| {
                let event = OutgoingEvent {
                    webhook_id: &row.webhook_id,
                    event_type: &row.event_type,
                    body: &row.raw_body,
                    traceparent: row.traceparent.as_deref(),
                };
                (row.id, event)
            })
            .collect();
        let (confirmed, first_error) = publisher.publish_confirmed(&events).await;
        if !confirmed.is_empty() {
            shared::event_status::mark_published(&mut tx, &confirmed).await?;
        }
        tx.commit().await?;
        self.metrics.relay_published(confirmed.len() as u64);
        tracing::debug!(published = confirmed.len(), "relay pass");
        match first_error {
            Some(error) => Err(error.into()),
            None => Ok(confirmed.len()),
        }
    }
}
