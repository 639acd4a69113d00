//! Long operations run as jobs: started by a request, watched with
//! `GET /api/admin/jobs/{id}`. Jobs live in this process's memory; a restart
//! forgets them (what they changed is in the database and the audit log).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// Where a job is.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Still running.
    Running,
    /// Done; `result` holds its report.
    Succeeded,
    /// Stopped on an error; `error` says which.
    Failed,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Job {
    /// Its id.
    pub id: Uuid,
    /// What it does (`sync_users`).
    pub kind: &'static str,
    /// Who started it (the token's name).
    pub actor: String,
    /// Where it is.
    pub state: JobState,
    /// The phase running and how many it has done, while it runs.
    pub progress: Option<Progress>,
    /// The report, once it succeeded: `processed`, `created_users`,
    /// `credits_refreshed`, `failed`, …
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why it failed, once it failed.
    pub error: Option<String>,
}

/// Progress of a running job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Progress {
    /// The phase.
    pub phase: String,
    /// Done in that phase.
    pub done: u64,
}

/// The jobs of this process.
#[derive(Clone, Default)]
pub struct Jobs {
    jobs: Arc<Mutex<HashMap<Uuid, Job>>>,
}

impl Jobs {
    /// Registers a running job and returns its id.
    pub fn start(&self, kind: &'static str, actor: &str) -> Uuid {
        let id = Uuid::new_v4();
        self.lock().insert(
            id,
            Job {
                id,
                kind,
                actor: actor.to_owned(),
                state: JobState::Running,
                progress: None,
                result: None,
                error: None,
            },
        );
        id
    }

    /// The job, if this process knows it.
    pub fn get(&self, id: Uuid) -> Option<Job> {
        self.lock().get(&id).cloned()
    }

    /// Changes the job with `change`, if it exists.
    pub fn update(&self, id: Uuid, change: impl FnOnce(&mut Job)) {
        if let Some(job) = self.lock().get_mut(&id) {
            change(job);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Job>> {
        // A panic while holding the lock leaves the map usable.
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
