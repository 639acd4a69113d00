//! `GET /api/admin/jobs/{id}`: a job's progress and result.

use axum::{
    extract::{Path, State},
    routing::get,
    Json, Router,
};

use crate::{
    error::{AdminError, ErrorBody},
    jobs::Job,
    AppState,
};

/// The routes of this file.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/admin/jobs/{id}", get(get_job))
}

/// A job's progress and result.
#[utoipa::path(
    get,
    path = "/api/admin/jobs/{id}",
    tag = "users",
    params(("id" = String, Path, description = "The `job_id` a start answered")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 401, description = "No live token", body = ErrorBody),
        (status = 404, description = "No such job in this process (`unknown_job`)", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, AdminError> {
    let unknown = || AdminError::NotFound {
        code: "unknown_job",
        detail: format!("no job {id} in this process"),
    };
    let uuid = uuid::Uuid::parse_str(&id).map_err(|_| unknown())?;
    state.jobs.get(uuid).map(Json).ok_or_else(unknown)
}
