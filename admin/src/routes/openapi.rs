//! `GET /api/admin/openapi.json`: the OpenAPI document, generated from the
//! routes' own annotations and types (never written by hand).

use axum::{routing::get, Json, Router};
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use crate::AppState;

/// The admin API's document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Clerk events admin API",
        description = "The admin API of the admin service: credits, sync, users, events, dead letters and the audit log. Every request carries `Authorization: Bearer TOKEN` (tokens from `admin tokens create`); every error answers `{\"error\": code}` with a stable code."
    ),
    paths(
        super::credits::put_user_credits,
        super::credits::put_owner_credits,
        super::sync::start_sync,
        super::jobs::get_job,
        super::users::get_user,
        super::events::search_events,
        super::events::get_event,
        super::events::replay_event,
        super::dlq::list_dead_letters,
        super::dlq::replay_dead_letters,
        super::audit::get_audit,
        get_openapi,
    ),
    modifiers(&BearerToken),
    tags(
        (name = "credits", description = "Credit balances"),
        (name = "users", description = "Users and the sync with Clerk"),
        (name = "events", description = "Stored events"),
        (name = "dlq", description = "Dead letters"),
        (name = "audit", description = "The audit log"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer token scheme the routes name.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The routes of this file.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/admin/openapi.json", get(get_openapi))
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/admin/openapi.json",
    tag = "audit",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json"),
        (status = 401, description = "No live token", body = crate::error::ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn get_openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
