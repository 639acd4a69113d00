//! The few calls of Clerk's Backend API the worker makes (`SPEC.md` 9.4, and
//! `worker sync users`). One attempt per call: callers decide about retries
//! with [`ClerkError::retry_after`].

use std::time::Duration;

use reqwest::{header::RETRY_AFTER, StatusCode};
use serde_json::{json, Value};
use shared::{event::billing::Subscription, secret::Secret};

/// Default `CLERK_API_URL`.
pub const DEFAULT_API_URL: &str = "https://api.clerk.com/v1";
/// The Backend API version the requests are written against.
pub const API_VERSION: &str = "2025-11-10";
/// Per-request deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two calls: the cap of the backoff of
/// [`retrying`], and of the delay a `Retry-After` from Clerk may ask for.
/// Clerk's rate-limit windows are 10 s and its own SDKs back off at most
/// 60 s; a longer hint (or a broken header) would only hold a balance back,
/// so it is cut to this.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// A Backend API client.
#[derive(Clone)]
pub struct ClerkApi {
    http: reqwest::Client,
    base: String,
    secret_key: Secret<String>,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClerkError {
    /// 429: retry after the given delay (from `Retry-After`), or a backoff.
    #[error("Clerk rate limit (429)")]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx: Clerk's side; retry with backoff.
    #[error("Clerk server error ({0})")]
    Server(u16),
    /// No answer: connection refused, reset, timed out.
    #[error("Clerk unreachable: {0}")]
    Connection(String),
    /// Any other answer: retrying will not help.
    #[error("Clerk refused the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// The answer was not what the API documents.
    #[error("unexpected answer from Clerk: {0}")]
    Decode(String),
}

impl ClerkError {
    /// `Some(delay hint)` if the call may succeed when retried; `None` if not.
    /// A zero delay means "use your backoff".
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClerkError::RateLimited { retry_after } => Some(retry_after.unwrap_or_default()),
            ClerkError::Server(_) | ClerkError::Connection(_) => Some(Duration::ZERO),
            ClerkError::Rejected { .. } | ClerkError::Decode(_) => None,
        }
    }

    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClerkError::RateLimited { .. } => "rate_limited",
            ClerkError::Server(_) => "server_error",
            ClerkError::Connection(_) => "unreachable",
            ClerkError::Rejected { .. } => "rejected",
            ClerkError::Decode(_) => "decode_error",
        }
    }
}

impl ClerkApi {
    pub fn new(base: &str, secret_key: Secret<String>) -> Result<Self, ClerkError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("clerk-events-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClerkError::Connection(e.to_string()))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            secret_key,
        })
    }

    /// Writes `{"credits": credits}` into the user's `public_metadata`
    /// (`PATCH /users/{id}/metadata`, a deep merge: other keys stay).
    pub async fn set_credits(&self, user_id: &str, credits: i64) -> Result<(), ClerkError> {
        let url = format!("{}/users/{}/metadata", self.base, path_segment(user_id));
        let response = self
            .http
            .patch(url)
            .bearer_auth(self.secret_key.expose())
            .header("Clerk-API-Version", API_VERSION)
            .json(&json!({"public_metadata": {"credits": credits}}))
            .send()
            .await
            .map_err(connection)?;
        check(response).await.map(|_| ())
    }

    /// One page of `GET /users` (newest first): the users after `starting_after`.
    pub async fn list_users(
        &self,
        limit: u32,
        starting_after: Option<&str>,
    ) -> Result<Vec<Value>, ClerkError> {
        let mut request = self
            .http
            .get(format!("{}/users", self.base))
            .bearer_auth(self.secret_key.expose())
            .header("Clerk-API-Version", API_VERSION)
            .query(&[
                ("limit", limit.to_string()),
                ("order_by", "-created_at".to_owned()),
            ]);
        if let Some(after) = starting_after {
            request = request.query(&[("starting_after", after)]);
        }
        let response = request.send().await.map_err(connection)?;
        let body = check(response).await?;
        match body {
            Value::Array(users) => Ok(users),
            other => Err(ClerkError::Decode(format!(
                "GET /users returned {} instead of an array",
                kind_of(&other)
            ))),
        }
    }
}

impl ClerkApi {
    /// `GET /users/{id}`: the user, or `None` when Clerk answers 404 (the
    /// user does not exist, or no longer does).
    pub async fn get_user(&self, user_id: &str) -> Result<Option<Value>, ClerkError> {
        let url = format!("{}/users/{}", self.base, path_segment(user_id));
        self.get_or_absent(url).await
    }

    /// The payer's Billing subscription: `GET /users/{id}/billing/subscription`,
    /// or `/organizations/{id}/…` for an organization (`org_…`). `None` when
    /// Clerk answers 404: the payer has no subscription.
    pub async fn billing_subscription(
        &self,
        owner_id: &str,
    ) -> Result<Option<Subscription>, ClerkError> {
        let collection = if owner_id.starts_with("org_") {
            "organizations"
        } else {
            "users"
        };
        let url = format!(
            "{}/{collection}/{}/billing/subscription",
            self.base,
            path_segment(owner_id)
        );
        match self.get_or_absent(url).await? {
            None => Ok(None),
            Some(body) => serde_json::from_value(body)
                .map(Some)
                .map_err(|e| ClerkError::Decode(format!("billing subscription: {e}"))),
        }
    }

    async fn get_or_absent(&self, url: String) -> Result<Option<Value>, ClerkError> {
        let response = self
            .http
            .get(url)
            .bearer_auth(self.secret_key.expose())
            .header("Clerk-API-Version", API_VERSION)
            .send()
            .await
            .map_err(connection)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check(response).await.map(Some)
    }
}

fn connection(error: reqwest::Error) -> ClerkError {
    // reqwest's message may hold the URL but never the bearer token.
    ClerkError::Connection(error.without_url().to_string())
}

async fn check(response: reqwest::Response) -> Result<Value, ClerkError> {
    let status = response.status();
    if status.is_success() {
        return response
            .json::<Value>()
            .await
            .map_err(|e| ClerkError::Decode(e.without_url().to_string()));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        return Err(ClerkError::RateLimited { retry_after });
    }
    if status.is_server_error() {
        return Err(ClerkError::Server(status.as_u16()));
    }
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let message = body["errors"][0]["message"]
        .as_str()
        .unwrap_or("no error message")
        .to_owned();
    Err(ClerkError::Rejected {
        status: status.as_u16(),
        message,
    })
}

/// The delay a `Retry-After` header asks for, capped at [`MAX_RETRY_DELAY`].
/// Only the delay-seconds form is read; an HTTP date or anything else gives
/// `None`, and the caller's backoff applies.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let digits = value.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Too many digits for a u64 is still "a very long time".
    let seconds = digits.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(seconds).min(MAX_RETRY_DELAY))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Clerk ids are `[a-z]+_[A-Za-z0-9]+`; anything else is percent-encoded so it
/// cannot change the path.
fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Calls `op` until it succeeds, fails for good, or `attempts` calls were
/// made; waits between calls for Clerk's `Retry-After`, or an exponential
/// backoff from `base` (doubling, jittered), whichever is longer.
pub async fn retrying<T, F, Fut>(attempts: u32, base: Duration, mut op: F) -> Result<T, ClerkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClerkError>>,
{
    let mut made = 0;
    loop {
        made += 1;
        match op().await {
            Ok(value) => return Ok(value),
            Err(error) => match error.retry_after() {
                Some(hint) if made < attempts => {
                    let delay = hint
                        .max(shared::backoff::RetryPolicy::new(base, MAX_RETRY_DELAY).delay(made))
                        .min(MAX_RETRY_DELAY);
                    tracing::warn!(error.message = %shared::error::Chain(&error), retry_in = ?delay, "Clerk call failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                _ => return Err(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("60"), Some(MAX_RETRY_DELAY));
        assert_eq!(parse_retry_after("86400"), Some(MAX_RETRY_DELAY));
        assert_eq!(
            parse_retry_after("99999999999999999999999999"),
            Some(MAX_RETRY_DELAY)
        );
    }

    #[test]
    fn a_retry_after_that_is_not_seconds_leaves_the_delay_to_the_backoff() {
        for value in ["", "-1", "1.5", "soon", "Wed, 21 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(value), None, "{value:?}");
        }
    }
}
