//! `GET /api/admin/users/{id}`: a user with memberships, credit account,
//! recent ledger rows, events and audit rows.

use axum::{
    extract::{Path, State},
    routing::get,
    Json, Router,
};

use crate::{
    error::{AdminError, ErrorBody},
    queries::users::{self, UserView},
    AppState,
};

/// The routes of this file.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/admin/users/{id}", get(get_user))
}

/// A user as the database knows it.
#[utoipa::path(
    get,
    path = "/api/admin/users/{id}",
    tag = "users",
    params(("id" = String, Path, description = "Clerk user id")),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 400, description = "A value PostgreSQL cannot store", body = ErrorBody),
        (status = 401, description = "No live token", body = ErrorBody),
        (status = 404, description = "Nothing is known of that id (`unknown_user`)", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn get_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<UserView>, AdminError> {
    users::view(&state.pool, &id)
        .await?
        .map(Json)
        .ok_or_else(|| AdminError::NotFound {
            code: "unknown_user",
            detail: format!("no user, membership or credit account {id}"),
        })
}
