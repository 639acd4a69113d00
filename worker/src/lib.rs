//! The worker: consumes the events the ingress stored and published, and runs
//! the operators' commands. For now `run` prepares what consumption needs (the
//! schema and the broker topology) and waits for a shutdown signal.

pub mod config;

use shared::{
    amqp::{self, Names},
    secret::Secret,
};
use tokio_util::sync::CancellationToken;

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Database(#[from] shared::db::DbError),
    #[error(transparent)]
    Broker(#[from] amqp::AmqpError),
}

/// Applies migrations, declares the broker topology and runs until `shutdown`.
pub async fn run(
    database_url: &Secret<String>,
    database_patience: std::time::Duration,
    amqp_url: &Secret<String>,
    prefix: &str,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let pool = shared::db::connect_and_migrate(database_url, 4, database_patience).await?;
    let connection = amqp::connect(amqp_url, "clerk-worker").await?;
    let channel =
        connection
            .create_channel()
            .await
            .map_err(|source| amqp::AmqpError::Protocol {
                operation: "channel.open",
                source,
            })?;
    amqp::declare_topology(&channel, &Names::new(prefix)).await?;
    tracing::info!(prefix, "worker ready: schema migrated, topology declared");
    shutdown.cancelled().await;
    let _ = connection.close(200, "shutdown".into()).await;
    pool.close().await;
    tracing::info!("worker stopped");
    Ok(())
}
