//! `/admin/users/sync`: starts `sync users` as a job through
//! `routes::sync::start` and shows its progress and result; a few lines of
//! JavaScript (`static/sync.js`) poll `/admin/jobs/{id}` while it runs.

use askama::Template;
use axum::{extract::State, response::Response, Extension, Json};
use serde::Deserialize;
use uuid::Uuid;

use super::page::{render, see_other, PageError, PagePath, PageQuery};
use crate::{
    error::AdminError,
    jobs::{Job, JobState},
    sessions::Session,
    AppState,
};

#[derive(Template)]
#[template(path = "sync.html")]
struct SyncPage {
    session: Session,
    configured: bool,
    job: Option<Job>,
    unknown_job: bool,
    state: &'static str,
    result: Vec<(String, String)>,
}

/// `?job=…`: the job to show.
#[derive(Debug, Default, Deserialize)]
pub struct JobQuery {
    /// A `job_id` the start gave.
    pub job: Option<String>,
}

/// The start button, and the job named by `?job=` with its progress and result.
pub async fn page(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    PageQuery(query): PageQuery<JobQuery>,
) -> Result<Response, PageError> {
    let job = query
        .job
        .as_deref()
        .and_then(|id| Uuid::parse_str(id.trim()).ok())
        .and_then(|id| state.jobs.get(id));
    let state_name = match job.as_ref().map(|job| &job.state) {
        Some(JobState::Running) => "running",
        Some(JobState::Succeeded) => "succeeded",
        Some(JobState::Failed) => "failed",
        None => "",
    };
    let result = job
        .as_ref()
        .and_then(|job| job.result.as_ref())
        .and_then(|result| result.as_object())
        .map(|fields| {
            fields
                .iter()
                .map(|(name, value)| (name.clone(), value.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let unknown_job = query.job.is_some() && job.is_none();
    render(&SyncPage {
        session,
        configured: state.clerk.is_some(),
        unknown_job,
        job,
        state: state_name,
        result,
    })
}

/// Starts the sync as the signed-in token and shows its job.
pub async fn start(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
) -> Result<Response, PageError> {
    let id = crate::routes::sync::start(&state, &session.actor).await?;
    Ok(see_other(&format!("/admin/users/sync?job={id}")))
}

/// The job as JSON, for the page's polling.
pub async fn job(
    State(state): State<AppState>,
    PagePath(id): PagePath<String>,
) -> Result<Json<Job>, PageError> {
    Uuid::parse_str(&id)
        .ok()
        .and_then(|id| state.jobs.get(id))
        .map(Json)
        .ok_or_else(|| {
            PageError(AdminError::NotFound {
                code: "unknown_job",
                detail: format!("no job {id} in this process"),
            })
        })
}
