//! One file per route; [`router`] assembles them.

pub mod debug;
pub mod health;
pub mod webhook;

use axum::{
    routing::{get, post},
    Router,
};

use crate::AppState;

/// The webhook path of `SPEC.md` section 4.
pub const WEBHOOK_PATH: &str = "/webhooks/clerk";

/// The public routes: the webhook, its self-description, and `/healthz`.
/// Anything else (`/metrics`, `/readyz` included) is 404 here.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(webhook::receive))
        .route("/webhooks/clerk/_debug", get(debug::describe))
        .route("/healthz", get(health::live))
        .with_state(state)
}
