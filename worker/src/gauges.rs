//! Refreshes the gauges that live outside the process: the dead-letter queue's
//! depth (from the broker), the Clerk sync backlog, the number of credit
//! accounts with a zero balance, the age of the oldest event waiting to be
//! applied and the events waiting for a retry (cheap queries on the database).

use std::{sync::Arc, time::Duration};

use lapin::{options::QueueDeclareOptions, types::FieldTable, Connection};
use shared::{
    amqp::{self, Names},
    secret::Secret,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

pub struct Gauges {
    pub pool: PgPool,
    pub amqp_url: Secret<String>,
    pub names: Names,
    pub metrics: Arc<Metrics>,
    pub interval: Duration,
}

impl Gauges {
    pub async fn run(self, stop: CancellationToken) {
        let mut broker: Option<Connection> = None;
        while !stop.is_cancelled() {
            self.refresh_database().await;
            self.refresh_dlq(&mut broker).await;
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = stop.cancelled() => {}
            }
        }
        if let Some(connection) = broker {
            let _ = connection.close(200, "worker stopping".into()).await;
        }
    }

    async fn refresh_database(&self) {
        let backlog: Result<(i64, f64), _> = sqlx::query_as(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(requested_at)), 0)::float8 FROM clerk_sync_queue",
        )
        .fetch_one(&self.pool)
        .await;
        if let Ok((pending, oldest)) = backlog {
            self.metrics.clerk_sync_pending.set(pending);
            self.metrics.clerk_sync_oldest_pending.set(oldest);
        }
        let zero: Result<i64, _> = sqlx::query_scalar(
            "SELECT count(*) FROM credit_accounts WHERE plan_credits + pack_credits = 0",
        )
        .fetch_one(&self.pool)
        .await;
        if let Ok(zero) = zero {
            self.metrics.zero_balance_accounts.set(zero);
        }
        // A stall: events the broker has but no worker applies (the partial
        // index webhook_event_states_unprocessed makes this a short index scan).
        let stalled: Result<(f64, i64), _> = sqlx::query_as(
            "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(published_at)), 0)::float8, \
                    count(*) FILTER (WHERE status = 'failed') \
             FROM webhook_event_states \
             WHERE processed_at IS NULL AND status IN ('published', 'failed')",
        )
        .fetch_one(&self.pool)
        .await;
        if let Ok((age, failed)) = stalled {
            self.metrics.oldest_unprocessed.set(age);
            self.metrics.awaiting_retry.set(failed);
        }
    }

    async fn refresh_dlq(&self, broker: &mut Option<Connection>) {
        if broker.as_ref().is_none_or(|c| !c.status().connected()) {
            *broker = amqp::connect(&self.amqp_url, "clerk-worker-gauges")
                .await
                .ok();
        }
        let Some(connection) = broker.as_ref() else {
            return;
        };
        let depth = async {
            let channel = connection.create_channel().await?;
            let queue = channel
                .queue_declare(
                    self.names.dead_letter_queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let _ = channel.close(200, "done".into()).await;
            Ok::<_, lapin::Error>(queue.message_count())
        };
        match depth.await {
            Ok(depth) => {
                self.metrics.dlq_messages.set(i64::from(depth));
            }
            Err(error) => {
                tracing::debug!(error.message = %shared::error::Chain(&error), "could not read the DLQ depth");
                *broker = None;
            }
        }
    }
}
