//! `GET /webhooks/clerk/_debug`: lets an operator check the endpoint is wired.

use axum::Json;
use serde_json::{json, Value};
use shared::event::HANDLED_EVENT_TYPES;

use super::WEBHOOK_PATH;

pub async fn describe() -> Json<Value> {
    Json(json!({
        "ok": true,
        "route": WEBHOOK_PATH,
        "method": "POST",
        "requiredHeaders": ["svix-id", "svix-timestamp", "svix-signature"],
        "supportedEvents": HANDLED_EVENT_TYPES,
        "message": "Webhook endpoint is configured correctly",
    }))
}
