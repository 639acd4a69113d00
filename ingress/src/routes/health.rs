//! `GET /healthz`: the process runs. (Readiness is on the ops listener.)

use axum::Json;
use serde_json::{json, Value};

/// Always 200 while the process serves.
pub async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}
