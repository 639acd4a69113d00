//! `GET /healthz` (the process runs) and `GET /readyz` (PostgreSQL answers).

use std::time::Duration;

use axum::{extract::State, http::StatusCode, Json};
use serde_json::{json, Value};

use crate::AppState;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when PostgreSQL answers. RabbitMQ is not a readiness condition: with
/// the broker down, events are still accepted and published later.
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match tokio::time::timeout(PROBE_TIMEOUT, shared::db::ping(&state.pool)).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Ok(Err(error)) => {
            tracing::warn!(error.message = %error, "readiness: PostgreSQL failed");
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
