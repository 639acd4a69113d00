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
    let database_url = settings.database_url.clone();
    let worker = Worker::build(settings, listener).await?;
    // The worker's start applied the migrations: fill the subjects of the
    // events stored before, beside the consumer.
    let backfill = shared::db::pool(&database_url, 1)?;
    tokio::spawn(async move {
        match crate::backfill::event_subjects(&backfill).await {
            Ok(0) => {}
            Ok(filled) => tracing::info!(filled, "filled the subject of stored events"),
            Err(error) => tracing::warn!(error.message = %shared::error::Chain(&error),
                "filling the subject of stored events failed; `worker migrate` retries it"),
        }
        backfill.close().await;
    });
    tracing::info!(ops_addr = %worker.ops_addr()?, "worker ready");
    worker.run(shared::shutdown::on_signal()).await?;
    Ok(())
}
