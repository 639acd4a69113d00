//! A local stand-in for Clerk's Backend API: the only dependency the tests
//! replace. It serves `PATCH /v1/users/{id}/metadata`, `GET /v1/users`,
//! `GET /v1/users/{id}` and the payers' `GET …/billing/subscription`, records
//! every call, and can be told to fail the next metadata writes.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, patch},
    Json, Router,
};
use serde_json::{json, Value};
use tokio::task::AbortHandle;

/// The secret key the fake accepts.
pub const SECRET_KEY: &str = "sk_test_fake_0123456789";

/// A scripted answer to the next metadata write.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    Status(u16),
    RateLimited { retry_after_secs: u64 },
}

/// One metadata write Clerk accepted.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    pub user_id: String,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    users: Vec<Value>,
    script: VecDeque<Answer>,
    writes: Vec<Write>,
    write_attempts: usize,
    list_queries: Vec<(u32, Option<String>)>,
    /// Users `GET /users/{id}` knows beyond the listed ones.
    unlisted: Vec<Value>,
    user_lookups: Vec<String>,
    subscriptions: HashMap<String, Value>,
}

pub struct FakeClerk {
    /// Base URL, as `CLERK_API_URL` (ends in `/v1`).
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    task: AbortHandle,
}

impl FakeClerk {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/v1/users/{id}/metadata", patch(write_metadata))
            .route("/v1/users", get(list_users))
            .route("/v1/users/{id}", get(get_user))
            .route("/v1/users/{id}/billing/subscription", get(subscription))
            .route(
                "/v1/organizations/{id}/billing/subscription",
                get(subscription),
            )
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake clerk");
        let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })
        .abort_handle();
        Self { url, inner, task }
    }

    /// The users `GET /users` pages through, in the order given.
    pub fn set_users(&self, users: Vec<Value>) {
        self.inner.lock().expect("lock").users = users;
    }

    /// Users `GET /users/{id}` finds although `GET /users` does not list them
    /// (created while a sync pages, say).
    pub fn set_unlisted_users(&self, users: Vec<Value>) {
        self.inner.lock().expect("lock").unlisted = users;
    }

    /// Ids asked for with `GET /users/{id}`, in order.
    pub fn user_lookups(&self) -> Vec<String> {
        self.inner.lock().expect("lock").user_lookups.clone()
    }

    /// The Billing subscription of a payer (user or organization); payers
    /// without one get 404.
    pub fn set_subscription(&self, owner_id: &str, subscription: Value) {
        self.inner
            .lock()
            .expect("lock")
            .subscriptions
            .insert(owner_id.to_owned(), subscription);
    }

    /// The next metadata writes answer these, in order; then 200 again.
    pub fn script(&self, answers: &[Answer]) {
        self.inner
            .lock()
            .expect("lock")
            .script
            .extend(answers.iter().copied());
    }

    /// Writes answered 200.
    pub fn writes(&self) -> Vec<Write> {
        self.inner.lock().expect("lock").writes.clone()
    }

    /// Every metadata write received, answered 200 or not.
    pub fn write_attempts(&self) -> usize {
        self.inner.lock().expect("lock").write_attempts
    }

    /// `(limit, starting_after)` of every `GET /users`.
    pub fn list_queries(&self) -> Vec<(u32, Option<String>)> {
        self.inner.lock().expect("lock").list_queries.clone()
    }

    /// The credits Clerk holds for a user now.
    pub fn credits_of(&self, user_id: &str) -> Option<Value> {
        self.inner
            .lock()
            .expect("lock")
            .writes
            .iter()
            .rev()
            .find(|w| w.user_id == user_id)
            .map(|w| w.body["public_metadata"]["credits"].clone())
    }
}

impl Drop for FakeClerk {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {SECRET_KEY}"))
}

fn clerk_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"errors": [{"message": message, "long_message": message, "code": "fake"}]})),
    )
        .into_response()
}

async fn write_metadata(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&headers) {
        return clerk_error(StatusCode::UNAUTHORIZED, "invalid secret key");
    }
    let mut inner = inner.lock().expect("lock");
    inner.write_attempts += 1;
    match inner.script.pop_front() {
        Some(Answer::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            clerk_error(status, "scripted failure")
        }
        Some(Answer::RateLimited { retry_after_secs }) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry_after_secs.to_string())],
            Json(
                json!({"errors": [{"message": "Too many requests", "code": "too_many_requests"}]}),
            ),
        )
            .into_response(),
        None => {
            inner.writes.push(Write {
                user_id: user_id.clone(),
                body: body.clone(),
            });
            Json(json!({"id": user_id, "object": "user", "public_metadata": body["public_metadata"]})).into_response()
        }
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    limit: Option<u32>,
    starting_after: Option<String>,
}

async fn list_users(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    if !authorized(&headers) {
        return clerk_error(StatusCode::UNAUTHORIZED, "invalid secret key");
    }
    let mut inner = inner.lock().expect("lock");
    let limit = query.limit.unwrap_or(10);
    inner
        .list_queries
        .push((limit, query.starting_after.clone()));
    let start = match &query.starting_after {
        None => 0,
        Some(after) => match inner.users.iter().position(|u| u["id"] == json!(after)) {
            Some(i) => i + 1,
            None => {
                return clerk_error(StatusCode::UNPROCESSABLE_ENTITY, "starting_after not found")
            }
        },
    };
    let page: Vec<Value> = inner
        .users
        .iter()
        .skip(start)
        .take(limit as usize)
        .cloned()
        .collect();
    Json(Value::Array(page)).into_response()
}

async fn get_user(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers) {
        return clerk_error(StatusCode::UNAUTHORIZED, "invalid secret key");
    }
    let mut inner = inner.lock().expect("lock");
    inner.user_lookups.push(user_id.clone());
    let found = inner
        .users
        .iter()
        .chain(&inner.unlisted)
        .find(|u| u["id"] == json!(user_id))
        .cloned();
    match found {
        Some(user) => Json(user).into_response(),
        None => clerk_error(StatusCode::NOT_FOUND, "not found"),
    }
}

async fn subscription(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(owner_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers) {
        return clerk_error(StatusCode::UNAUTHORIZED, "invalid secret key");
    }
    match inner.lock().expect("lock").subscriptions.get(&owner_id) {
        Some(subscription) => Json(subscription.clone()).into_response(),
        None => clerk_error(StatusCode::NOT_FOUND, "no subscription"),
    }
}
