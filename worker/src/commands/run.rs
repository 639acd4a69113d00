//! `worker run` (the default): the service itself.

use crate::{
    config::{Config, Settings},
    Worker,
};

/// Runs the worker until a signal; `settings` when already validated.
pub async fn run(config: &Config, settings: Option<Settings>) -> anyhow::Result<()> {
    let settings = match settings {
        Some(settings) => settings,
        None => config.settings()?,
    };
    let listener = tokio::net::TcpListener::bind(config.ops_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.ops_addr))?;
    let worker = Worker::build(settings, listener).await?;
    tracing::info!(ops_addr = %worker.ops_addr()?, "worker ready");
    worker.run(shared::shutdown::on_signal()).await?;
    Ok(())
}
