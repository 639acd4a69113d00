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
    /// Registers a running job of `kind`, unless one is running already:
    /// returns the id of the job that runs, and whether it is the new one.
    pub fn start_unless_running(&self, kind: &'static str, actor: &str) -> (Uuid, bool) {
        let mut jobs = self.lock();
        if let Some(running) = jobs
            .values()
            .find(|job| job.kind == kind && job.state == JobState::Running)
        {
            return (running.id, false);
        }
        let id = Uuid::new_v4();
        jobs.insert(
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
        (id, true)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_start_while_one_runs_answers_the_running_job() {
        let jobs = Jobs::default();
        let (first, started_first) = jobs.start_unless_running("sync_users", "a");
        let (again, started_again) = jobs.start_unless_running("sync_users", "b");
        jobs.update(first, |job| job.state = JobState::Succeeded);
        let (next, started_next) = jobs.start_unless_running("sync_users", "c");

        assert!(started_first);
        assert_eq!((again, started_again), (first, false));
        assert!(started_next);
        assert_ne!(next, first);
        assert_eq!(jobs.get(next).map(|job| job.actor), Some("c".to_owned()));
    }
}
