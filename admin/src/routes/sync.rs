//! `POST /api/admin/users/sync`: `worker sync users` as a job (the same
//! function, the token's name as the actor).

use axum::{extract::State, http::StatusCode, routing::post, Extension, Json, Router};
use serde_json::json;
use uuid::Uuid;
use worker::{clerk_api::ClerkApi, sync_users};

use super::Actor;
use crate::{
    error::{AdminError, ErrorBody},
    jobs::Jobs,
    AppState,
};

/// The routes of this file.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/admin/users/sync", post(start_sync))
}

/// The id of a started job.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobStarted {
    /// Watch it with `GET /api/admin/jobs/{id}`.
    pub job_id: Uuid,
}

/// Starts `sync users` as a job.
#[utoipa::path(
    post,
    path = "/api/admin/users/sync",
    tag = "users",
    responses(
        (status = 202, description = "Started; or, while a sync runs, that job (one sync at a time)", body = JobStarted),
        (status = 401, description = "No live token", body = ErrorBody),
        (status = 503, description = "CLERK_SECRET_KEY is not set (`clerk_not_configured`)", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn start_sync(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
) -> Result<(StatusCode, Json<JobStarted>), AdminError> {
    let job_id = start(&state, &actor).await?;
    Ok((StatusCode::ACCEPTED, Json(JobStarted { job_id })))
}

/// Starts `sync users` as a job run by `actor` and returns its id (also the
/// console's sync button); while a sync runs, the id of that one.
/// 503 `clerk_not_configured` without the Backend API.
pub async fn start(state: &AppState, actor: &str) -> Result<Uuid, AdminError> {
    let Some(clerk) = state.clerk.clone() else {
        return Err(AdminError::Unavailable {
            code: "clerk_not_configured",
            detail: "CLERK_SECRET_KEY is not set: sync needs the Clerk Backend API".to_owned(),
        });
    };
    let api =
        ClerkApi::new(&clerk.api_url, clerk.secret_key).map_err(|e| AdminError::Unavailable {
            code: "clerk_not_configured",
            detail: e.to_string(),
        })?;
    // One sync at a time: a second start while one runs answers its job.
    let (id, started) = state.jobs.start_unless_running("sync_users", actor);
    if !started {
        return Ok(id);
    }
    let request = sync_users::SyncRequest {
        dry_run: false,
        page_size: sync_users::PAGE_SIZE,
        retry_base_delay: std::time::Duration::from_millis(500),
        actor: actor.to_owned(),
    };
    let jobs = state.jobs.clone();
    let state = state.clone();
    tokio::spawn(async move {
        let mut progress = JobProgress {
            jobs: jobs.clone(),
            id,
        };
        let report =
            sync_users::sync_users(&state.pool, &api, &state.catalog, &request, &mut progress)
                .await;
        jobs.update(id, |job| match report {
            Ok(report) => {
                job.state = crate::jobs::JobState::Succeeded;
                job.result = Some(json!({
                    "processed": report.processed,
                    "created_users": report.created_users,
                    "credits_refreshed": report.credits_refreshed,
                    "failed": report.failed,
                    "deleted_users": report.deleted_users,
                    "refreshed_users": report.refreshed_users,
                    "plans_reconciled": report.plans_reconciled,
                }));
            }
            Err(error) => {
                tracing::warn!(error.message = %shared::error::Chain(&error), "sync job failed");
                job.state = crate::jobs::JobState::Failed;
                job.error = Some(shared::error::Chain(&error).to_string());
            }
        });
    });
    Ok(id)
}

/// Records the sync's progress on its job.
struct JobProgress {
    jobs: Jobs,
    id: Uuid,
}

impl sync_users::Progress for JobProgress {
    fn step(&mut self, phase: &str, done: u64) {
        self.jobs.update(self.id, |job| {
            job.progress = Some(crate::jobs::Progress {
                phase: phase.to_owned(),
                done,
            });
        });
    }

    fn change(&mut self, _description: &str) {}
}
