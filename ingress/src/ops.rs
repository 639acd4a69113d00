//! The ingress's operations listener (`INGRESS_OPS_ADDR`, loopback by
//! default): `/healthz`, `/readyz` and `/metrics`, kept off the public port.
//!
//! A scrape only renders what is in memory: the unpublished-event gauges are refreshed
//! by [`refresh_gauges`] in the background, so scraping never costs a query.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Json, Router,
};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How long a readiness probe waits for PostgreSQL.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the ops routes read.
#[derive(Clone)]
pub struct OpsState {
    /// For the readiness probe.
    pub pool: PgPool,
    /// Rendered by `/metrics`.
    pub metrics: Arc<Metrics>,
}

/// The ops routes.
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(crate::routes::health::live))
        .route("/readyz", get(ready))
        .route("/metrics", get(scrape))
        .with_state(state)
}

/// Ready when PostgreSQL answers. RabbitMQ is not a readiness condition: with
/// the broker down, events are still accepted and published later.
async fn ready(State(state): State<OpsState>) -> (StatusCode, Json<Value>) {
    match tokio::time::timeout(PROBE_TIMEOUT, shared::db::ping(&state.pool)).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Ok(Err(error)) => {
            tracing::warn!(error.message = %shared::error::Chain(&error), "readiness: PostgreSQL failed");
            unavailable()
        }
        Err(_) => {
            tracing::warn!("readiness: PostgreSQL did not answer in time");
            unavailable()
        }
    }
}

fn unavailable() -> (StatusCode, Json<Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "unavailable", "failed": ["postgres"]})),
    )
}

async fn scrape(State(state): State<OpsState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Counts the unpublished events every `interval` until `stop`; a failed count keeps the
/// last values.
pub async fn refresh_gauges(
    pool: PgPool,
    metrics: Arc<Metrics>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        let counted = sqlx::query_as::<_, (i64, f64)>(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(e.received_at)), 0)::float8 \
             FROM webhook_event_states s JOIN webhook_event_bodies e ON e.id = s.event_id \
             WHERE s.published_at IS NULL",
        )
        .fetch_one(&pool)
        .await;
        match counted {
            Ok((rows, oldest)) => metrics.set_unpublished(rows, oldest),
            Err(error) => {
                tracing::debug!(error.message = %shared::error::Chain(&error), "counting the unpublished events failed");
            }
        }
    }
}
