//! The internet-facing half: verify a Clerk (Svix) delivery, commit it to
//! `webhook_events`, answer, and let the relay publish it to RabbitMQ with a
//! broker confirm. No business logic lives here.

pub mod admission;
pub mod config;
pub mod metrics;
pub mod ops;
pub mod refusals;
pub mod relay;
pub mod routes;
pub mod server;
pub mod store;

use std::{future::IntoFuture as _, net::SocketAddr, sync::Arc};

use shared::{amqp::Names, svix::WebhookSecrets};
use sqlx::PgPool;
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    admission::Admission, config::Settings, metrics::Metrics, refusals::Refusals, relay::Relay,
};

/// How long SIGTERM waits for requests in flight before the process stops.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Pool connections: the store's writers, the relay's lanes and the gauges.
const MAX_DB_CONNECTIONS: u32 = 16;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub secrets: Arc<WebhookSecrets>,
    pub max_body_bytes: usize,
    /// Permits to read a body before it is verified.
    pub admission: Admission,
    /// Refused requests, summarised in the log.
    pub refusals: Refusals,
    /// Wakes the relay as soon as a new row is committed.
    pub relay_wakeup: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    /// Group commit of new events.
    pub store: store::Store,
}

/// A bound, connected, migrated ingress, ready to run.
pub struct Ingress {
    listener: TcpListener,
    ops_listener: TcpListener,
    limits: server::Limits,
    gauge_interval: std::time::Duration,
    state: AppState,
    relay: Relay,
}

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] shared::db::DbError),
    #[error("cannot read the listener's address")]
    Listener(#[from] std::io::Error),
}

impl Ingress {
    /// Connects to PostgreSQL (waiting up to `settings.database_patience`) and
    /// applies pending migrations. RabbitMQ is not needed to start: the relay
    /// connects on its own and publishes what accumulated meanwhile.
    /// `listener` is the public one; `ops_listener` serves `/readyz` and `/metrics`.
    pub async fn build(
        settings: Settings,
        listener: TcpListener,
        ops_listener: TcpListener,
    ) -> Result<Self, StartError> {
        let pool = shared::db::connect_and_migrate(
            &settings.database_url,
            MAX_DB_CONNECTIONS,
            settings.database_patience,
        )
        .await?;
        Ok(Self::with_pool(settings, listener, ops_listener, pool))
    }

    /// Same as [`Ingress::build`] with a pool the caller made (and migrated).
    pub fn with_pool(
        settings: Settings,
        listener: TcpListener,
        ops_listener: TcpListener,
        pool: PgPool,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let relay_wakeup = Arc::new(Notify::new());
        let relay = Relay {
            pool: pool.clone(),
            amqp_url: settings.amqp_url.clone(),
            names: Names::new(&settings.amqp_prefix),
            wakeup: relay_wakeup.clone(),
            poll_interval: settings.relay_poll_interval,
            metrics: metrics.clone(),
        };
        let store = store::Store::start(pool.clone(), relay_wakeup.clone());
        let state = AppState {
            store,
            pool,
            secrets: Arc::new(settings.secrets),
            max_body_bytes: settings.max_body_bytes,
            admission: Admission::new(settings.max_unverified_bodies),
            refusals: Refusals::default(),
            relay_wakeup,
            metrics,
        };
        Self {
            listener,
            ops_listener,
            limits: settings.limits,
            gauge_interval: settings.gauge_interval,
            state,
            relay,
        }
    }

    /// The address the public listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, std::io::Error> {
        self.listener.local_addr()
    }

    /// The address the ops listener is bound to.
    pub fn ops_addr(&self) -> Result<SocketAddr, std::io::Error> {
        self.ops_listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting connections,
    /// lets in-flight requests finish, gives the relay one last pass and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), std::io::Error> {
        let addr = self.listener.local_addr()?;
        let ops_addr = self.ops_listener.local_addr()?;
        tracing::info!(%addr, %ops_addr, secrets = self.state.secrets.len(),
            body_memory_bound = self.state.admission.memory_bound(self.state.max_body_bytes),
            "ingress listening");
        let background = CancellationToken::new();
        let relay = tokio::spawn(self.relay.run(background.clone()));
        let gauges = tokio::spawn(ops::refresh_gauges(
            self.state.pool.clone(),
            self.state.metrics.clone(),
            self.gauge_interval,
            background.clone(),
        ));
        let refusals = tokio::spawn(self.state.refusals.clone().run(background.clone()));
        let ops_app = ops::router(ops::OpsState {
            pool: self.state.pool.clone(),
            metrics: self.state.metrics.clone(),
        });
        let ops = tokio::spawn(
            axum::serve(self.ops_listener, ops_app)
                .with_graceful_shutdown(background.clone().cancelled_owned())
                .into_future(),
        );
        let metrics = self.state.metrics.clone();
        let app = routes::router(self.state);
        let serve = server::serve(self.listener, app, self.limits, metrics, shutdown.clone());
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        };
        tokio::select! {
            () = serve => tracing::info!("requests drained"),
            () = deadline => {
                tracing::warn!(after = ?DRAIN_TIMEOUT, "requests still in flight at the drain deadline; stopping anyway");
            }
        }
        background.cancel();
        for (name, task) in [
            ("relay", relay),
            ("gauges", gauges),
            ("refusal log", refusals),
        ] {
            if let Err(e) = task.await {
                tracing::error!(task = name, error.message = %shared::error::Chain(&e), "background task failed");
            }
        }
        match ops.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error.message = %shared::error::Chain(&e), "ops listener failed")
            }
            Err(e) => {
                tracing::error!(error.message = %shared::error::Chain(&e), "ops listener task failed")
            }
        }
        tracing::info!("ingress stopped");
        Ok(())
    }
}
