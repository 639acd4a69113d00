//! The worker: consumes the events the ingress stored and published, applies
//! idempotent handlers, and serves health and metrics. Any number of workers
//! may consume the same queue.

pub mod audit;
pub mod backfill;
pub mod clerk_api;
pub mod clerk_sync;
pub mod commands;
pub mod config;
pub mod consumer;
pub mod credits;
pub mod dlq;
pub mod gauges;
pub mod handlers;
pub mod metrics;
pub mod migrate;
pub mod ops;
pub mod prune;
pub mod replay;
pub mod sync_users;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::StreamExt as _;
use lapin::{
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
    Connection,
};
use shared::{
    amqp::{self, AmqpError, Names, Publisher},
    backoff::RetryPolicy,
};
use sqlx::PgPool;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{config::Settings, consumer::Context, metrics::Metrics};

/// Database connections per worker: one per delivery in flight (attempts
/// made alone), one kept by each batch applier, plus the Clerk sync, the
/// gauges and the readiness probe.
fn pool_size(concurrency: u16) -> u32 {
    let appliers = u32::try_from(consumer::batch::appliers(concurrency)).unwrap_or(u32::MAX);
    u32::from(concurrency)
        .saturating_add(appliers)
        .saturating_add(4)
}

/// Start-up and run failures.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Database(#[from] shared::db::DbError),
    #[error(transparent)]
    Broker(#[from] AmqpError),
    #[error("ops listener")]
    Listener(#[from] std::io::Error),
    #[error("Clerk API client: {0}")]
    Clerk(String),
}

/// A connected, migrated worker, ready to run.
pub struct Worker {
    settings: Settings,
    names: Names,
    pool: PgPool,
    /// The connection made at start; taken by `run`.
    connection: Option<Connection>,
    /// Taken by `run`.
    ops_listener: Option<TcpListener>,
    metrics: Arc<Metrics>,
    catalog: Arc<credits::Catalog>,
    /// Wakes the Clerk sync after a balance changed.
    sync_wakeup: Arc<tokio::sync::Notify>,
    broker_connected: Arc<AtomicBool>,
}

impl Worker {
    /// Connects to PostgreSQL (applying migrations) and RabbitMQ (declaring
    /// the topology); fails if either stays unreachable at start.
    pub async fn build(
        mut settings: Settings,
        ops_listener: TcpListener,
    ) -> Result<Self, RunError> {
        let catalog = std::mem::take(&mut settings.catalog);
        if catalog.is_empty() {
            tracing::warn!("no plan catalog (CREDIT_PLANS): billing events change no credits");
        }
        let pool = shared::db::connect_and_migrate(
            &settings.database_url,
            pool_size(settings.concurrency),
            settings.database_patience,
        )
        .await?;
        let names = Names::new(&settings.amqp_prefix);
        let connection = connect_with_patience(&settings, settings.database_patience).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|source| AmqpError::Protocol {
                operation: "channel.open",
                source,
            })?;
        amqp::declare_topology(&channel, &names).await?;
        declare_retry_queues(&channel, &names, &settings).await?;
        let _ = channel.close(200, "topology declared".into()).await;
        Ok(Self {
            settings,
            names,
            pool,
            connection: Some(connection),
            ops_listener: Some(ops_listener),
            metrics: Arc::default(),
            catalog: Arc::new(catalog),
            sync_wakeup: Arc::default(),
            broker_connected: Arc::default(),
        })
    }

    /// The ops listener's address (useful with port 0).
    pub fn ops_addr(&self) -> Result<SocketAddr, std::io::Error> {
        match &self.ops_listener {
            Some(listener) => listener.local_addr(),
            None => Err(std::io::Error::other("the ops listener is already serving")),
        }
    }

    /// Consumes until `shutdown`: then stops taking deliveries, lets the ones
    /// in flight finish (up to the drain timeout) and returns. A lost broker
    /// connection is re-established with backoff.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), RunError> {
        let (Some(ops_listener), Some(first_connection)) =
            (self.ops_listener.take(), self.connection.take())
        else {
            return Ok(());
        };
        let ops_app = ops::router(ops::OpsState {
            pool: self.pool.clone(),
            broker_connected: self.broker_connected.clone(),
            metrics: self.metrics.clone(),
        });
        let ops_stop = shutdown.clone();
        let ops = tokio::spawn(async move {
            axum::serve(ops_listener, ops_app)
                .with_graceful_shutdown(ops_stop.cancelled_owned())
                .await
        });
        let syncer = self.start_clerk_sync(&shutdown)?;
        let gauges = tokio::spawn(
            gauges::Gauges {
                pool: self.pool.clone(),
                amqp_url: self.settings.amqp_url.clone(),
                names: self.names.clone(),
                metrics: self.metrics.clone(),
                interval: self.settings.gauge_interval,
            }
            .run(shutdown.clone()),
        );
        let context = self.context(
            Publisher::open(&first_connection, &self.names).await?,
            &shutdown,
        );
        let mut connection = Some((first_connection, context));
        let mut delays = reconnect_backoff(&self.settings);
        loop {
            let (conn, context) = match connection.take() {
                Some(pair) => pair,
                None => match self.reconnect(&shutdown).await {
                    Some(pair) => pair,
                    None => break,
                },
            };
            let consumed = self.consume(&conn, context, &shutdown).await;
            self.set_broker_connected(false);
            let _ = conn.close(200, "worker stopping".into()).await;
            match consumed {
                Ok(()) => break,
                Err(error) => {
                    let delay = delays.next().unwrap_or(self.settings.retry_max_delay);
                    tracing::warn!(error.message = %shared::error::Chain(&error), retry_in = ?delay, "lost RabbitMQ; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
        if let Some(syncer) = syncer {
            let _ = syncer.await;
        }
        let _ = gauges.await;
        self.pool.close().await;
        if let Ok(Err(error)) = ops.await {
            tracing::warn!(error.message = %shared::error::Chain(&error), "ops listener failed");
        }
        tracing::info!("worker stopped");
        Ok(())
    }

    fn set_broker_connected(&self, connected: bool) {
        self.broker_connected.store(connected, Ordering::SeqCst);
        self.metrics.broker_connected.set(i64::from(connected));
    }

    /// Starts the Clerk metadata sync, or says once that it is off.
    fn start_clerk_sync(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, RunError> {
        let Some(clerk) = &self.settings.clerk else {
            tracing::warn!("Clerk metadata sync disabled: CLERK_SECRET_KEY is not set");
            return Ok(None);
        };
        let api = clerk_api::ClerkApi::new(&clerk.api_url, clerk.secret_key.clone())
            .map_err(|e| RunError::Clerk(e.to_string()))?;
        let syncer = clerk_sync::Syncer {
            pool: self.pool.clone(),
            api,
            metrics: self.metrics.clone(),
            wakeup: self.sync_wakeup.clone(),
            poll_interval: Duration::from_millis(500),
            retry_base_delay: self.settings.retry_base_delay,
            retry_max_delay: self.settings.retry_max_delay,
        };
        Ok(Some(tokio::spawn(syncer.run(shutdown.clone()))))
    }

    /// What every delivery task of one connection shares.
    fn context(&self, publisher: Publisher, shutdown: &CancellationToken) -> Arc<Context> {
        Arc::new(Context {
            pool: self.pool.clone(),
            batches: consumer::batch::Batches::start(
                self.pool.clone(),
                self.catalog.clone(),
                consumer::batch::appliers(self.settings.concurrency),
            ),
            publisher: Arc::new(publisher),
            metrics: self.metrics.clone(),
            catalog: self.catalog.clone(),
            sync_wakeup: self.sync_wakeup.clone(),
            max_attempts: self.settings.max_attempts,
            retry: self.settings.retry_policy(),
            shutdown: shutdown.clone(),
        })
    }

    async fn reconnect(&self, shutdown: &CancellationToken) -> Option<(Connection, Arc<Context>)> {
        let mut delays = reconnect_backoff(&self.settings);
        loop {
            let attempt = async {
                let conn = amqp::connect(&self.settings.amqp_url, "clerk-worker").await?;
                let publisher = Publisher::open(&conn, &self.names).await?;
                Ok::<_, AmqpError>((conn, publisher))
            };
            match attempt.await {
                Ok((conn, publisher)) => {
                    tracing::info!("reconnected to RabbitMQ");
                    return Some((conn, self.context(publisher, shutdown)));
                }
                Err(error) => {
                    let delay = delays.next().unwrap_or(self.settings.retry_max_delay);
                    tracing::warn!(error.message = %shared::error::Chain(&error), retry_in = ?delay, "RabbitMQ unreachable");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => return None,
                    }
                }
            }
        }
    }

    /// Consumes on one connection. Returns `Ok` after a clean shutdown and an
    /// error when the connection or the consumer is lost.
    async fn consume(
        &self,
        connection: &Connection,
        context: Arc<Context>,
        shutdown: &CancellationToken,
    ) -> Result<(), AmqpError> {
        let protocol = |operation| move |source| AmqpError::Protocol { operation, source };
        let channel = connection
            .create_channel()
            .await
            .map_err(protocol("channel.open"))?;
        amqp::declare_topology(&channel, &self.names).await?;
        declare_retry_queues(&channel, &self.names, &self.settings).await?;
        channel
            .basic_qos(self.settings.concurrency, BasicQosOptions::default())
            .await
            .map_err(protocol("basic.qos"))?;
        let tag = format!(
            "clerk-worker-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let mut deliveries = channel
            .basic_consume(
                self.names.worker_queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(protocol("basic.consume"))?;
        self.set_broker_connected(true);
        tracing::info!(
            queue = %self.names.worker_queue,
            concurrency = self.settings.concurrency,
            "consuming"
        );
        let mut tasks = JoinSet::new();
        let lost = loop {
            tokio::select! {
                () = shutdown.cancelled() => break None,
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        let context = context.clone();
                        tasks.spawn(async move { consumer::handle(&context, delivery).await });
                    }
                    Some(Err(error)) => break Some(AmqpError::Protocol { operation: "consume", source: error }),
                    None => break Some(AmqpError::Unroutable("the broker cancelled the consumer".to_owned())),
                },
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(error) = joined {
                        tracing::error!(error.message = %shared::error::Chain(&error), "delivery task failed");
                    }
                }
            }
        };
        if lost.is_none() {
            // Stop taking deliveries; what was prefetched but not started goes
            // back to the queue when the channel closes.
            let _ = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
            tracing::info!(
                in_flight = tasks.len(),
                "shutdown: draining in-flight deliveries"
            );
        }
        drain(&mut tasks, self.settings.drain_timeout).await;
        let _ = channel.close(200, "worker stopping".into()).await;
        match lost {
            None => Ok(()),
            Some(error) => Err(error),
        }
    }
}

/// Waits for the delivery tasks, up to `timeout`; the rest are abandoned and
/// their messages return to the queue unacked.
async fn drain(tasks: &mut JoinSet<()>, timeout: Duration) {
    let finished = tokio::time::timeout(timeout, async {
        while let Some(joined) = tasks.join_next().await {
            if let Err(error) = joined {
                tracing::error!(error.message = %shared::error::Chain(&error), "delivery task failed");
            }
        }
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            abandoned = tasks.len(),
            "drain timed out; unfinished deliveries return to the queue"
        );
        tasks.abort_all();
    }
}

/// Declares the delay queue of every step a failing event can wait in: the
/// steps after attempts 1 to `max_attempts - 1` (the last attempt goes to the
/// dead-letter queue).
async fn declare_retry_queues(
    channel: &lapin::Channel,
    names: &Names,
    settings: &Settings,
) -> Result<(), AmqpError> {
    let policy = settings.retry_policy();
    let mut steps: Vec<Duration> = (1..settings.max_attempts)
        .map(|attempt| policy.step(attempt))
        .collect();
    steps.dedup();
    amqp::retry::declare_retry_topology(channel, names, &steps).await
}

fn reconnect_backoff(settings: &Settings) -> shared::backoff::Delays {
    settings.retry_policy().delays()
}

async fn connect_with_patience(
    settings: &Settings,
    patience: Duration,
) -> Result<Connection, AmqpError> {
    use backon::Retryable as _;
    let connect = || amqp::connect(&settings.amqp_url, "clerk-worker");
    let retried = connect
        .retry(RetryPolicy::new(
            Duration::from_millis(200),
            Duration::from_secs(2),
        ))
        // A URL that does not parse, or a certificate every node presents
        // and that does not verify, will not change by waiting.
        .when(|error| !error.is_permanent())
        .notify(|error, after| {
            tracing::warn!(error.message = %shared::error::Chain(&error), retry_in = ?after, "RabbitMQ not reachable yet");
        });
    match tokio::time::timeout(patience, retried).await {
        Ok(result) => result,
        Err(_) => amqp::connect(&settings.amqp_url, "clerk-worker").await,
    }
}
