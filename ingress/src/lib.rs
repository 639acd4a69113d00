//! The internet-facing half: verify a Clerk (Svix) delivery, commit it to
//! `webhook_events`, answer, and let the relay publish it to RabbitMQ with a
//! broker confirm. No business logic lives here.

pub mod config;
pub mod metrics;
pub mod relay;
pub mod routes;
pub mod store;

use std::{future::IntoFuture as _, net::SocketAddr, sync::Arc};

use shared::{amqp::Names, svix::WebhookSecrets};
use sqlx::PgPool;
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;

use crate::{config::Settings, metrics::Metrics, relay::Relay};

/// How long SIGTERM waits for requests in flight before the process stops.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Pool connections: request handlers plus the relay's one transaction.
const MAX_DB_CONNECTIONS: u32 = 16;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub secrets: Arc<WebhookSecrets>,
    pub max_body_bytes: usize,
    /// Wakes the relay as soon as a new row is committed.
    pub relay_wakeup: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    /// Group commit of new events.
    pub store: store::Store,
}

/// A bound, connected, migrated ingress, ready to run.
pub struct Ingress {
    listener: TcpListener,
    state: AppState,
    relay: Relay,
}

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] shared::db::DbError),
    #[error("cannot read the listener's address: {0}")]
    Listener(#[from] std::io::Error),
}

impl Ingress {
    /// Connects to PostgreSQL (waiting up to `settings.database_patience`) and
    /// applies pending migrations. RabbitMQ is not needed to start: the relay
    /// connects on its own and publishes what accumulated meanwhile.
    pub async fn build(settings: Settings, listener: TcpListener) -> Result<Self, StartError> {
        let pool = shared::db::connect_and_migrate(
            &settings.database_url,
            MAX_DB_CONNECTIONS,
            settings.database_patience,
        )
        .await?;
        Ok(Self::with_pool(settings, listener, pool))
    }

    /// Same as [`Ingress::build`] with a pool the caller made (and migrated).
    pub fn with_pool(settings: Settings, listener: TcpListener, pool: PgPool) -> Self {
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
            relay_wakeup,
            metrics,
        };
        Self {
            listener,
            state,
            relay,
        }
    }

    /// The address the listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, std::io::Error> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting connections,
    /// lets in-flight requests finish, gives the relay one last pass and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), std::io::Error> {
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, secrets = self.state.secrets.len(), "ingress listening");
        let relay_stop = CancellationToken::new();
        let relay = tokio::spawn(self.relay.run(relay_stop.clone()));
        let app = routes::router(self.state);
        let serve = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future();
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        };
        let served = tokio::select! {
            served = serve => {
                tracing::info!("requests drained");
                served
            }
            () = deadline => {
                tracing::warn!(after = ?DRAIN_TIMEOUT, "requests still in flight at the drain deadline; stopping anyway");
                Ok(())
            }
        };
        relay_stop.cancel();
        if let Err(e) = relay.await {
            tracing::error!(error.message = %e, "relay task failed");
        }
        tracing::info!("ingress stopped");
        served
    }
}
