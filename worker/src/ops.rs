//! The worker's health and metrics listener (`WORKER_OPS_ADDR`).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{extract::State, http::StatusCode, routing::get, Json, Router};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::metrics::Metrics;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct OpsState {
    pub pool: PgPool,
    /// True while the consumer holds a live broker connection.
    pub broker_connected: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Ready when PostgreSQL answers and the consumer is connected to RabbitMQ.
async fn ready(State(state): State<OpsState>) -> (StatusCode, Json<Value>) {
    let mut failed = Vec::new();
    let database = tokio::time::timeout(PROBE_TIMEOUT, shared::db::ping(&state.pool)).await;
    if !matches!(database, Ok(Ok(()))) {
        failed.push("postgres");
    }
    if !state.broker_connected.load(Ordering::SeqCst) {
        failed.push("rabbitmq");
    }
    if failed.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "failed": failed})),
        )
    }
}

async fn metrics(
    State(state): State<OpsState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
