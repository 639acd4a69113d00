//! `POST /webhooks/clerk`: verify, store, answer (`SPEC.md` sections 4 and 5).
//!
//! The answer is 200 only once the row is committed. Publishing is the relay's
//! job: it is woken here and publishes with a broker confirm, so a broker
//! outage never turns into an error for Clerk.

use std::{net::SocketAddr, time::Instant};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{
        header::{CONTENT_LENGTH, RETRY_AFTER},
        HeaderMap, StatusCode,
    },
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;
use shared::{
    event::{self, PayloadError},
    svix::{SignedRequest, VerifyError},
};

/// How long a client may take to send its body.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// What a 503 for too many bodies in flight tells the sender to wait, in seconds.
pub const OVERLOADED_RETRY_AFTER_SECS: u64 = 5;
/// How long a request may wait for its row to be committed before it answers
/// 500 (Svix gives up after 15 s and retries).
pub const STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

use crate::{
    store::{NewEvent, StoreError, Stored},
    AppState,
};

/// How a request ended; one label value of the requests metric each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok = 0,
    Duplicate,
    MissingSvixHeaders,
    InvalidTimestamp,
    InvalidSignature,
    InvalidPayload,
    PayloadTooLarge,
    Overloaded,
    Internal,
}

impl Outcome {
    /// Every outcome, for metrics that show each from the start.
    pub const ALL: [Outcome; 9] = [
        Outcome::Ok,
        Outcome::Duplicate,
        Outcome::MissingSvixHeaders,
        Outcome::InvalidTimestamp,
        Outcome::InvalidSignature,
        Outcome::InvalidPayload,
        Outcome::PayloadTooLarge,
        Outcome::Overloaded,
        Outcome::Internal,
    ];

    /// The stable machine code: the `status` of a 200 or the `error` of a refusal.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Duplicate => "duplicate",
            Outcome::MissingSvixHeaders => "missing_svix_headers",
            Outcome::InvalidTimestamp => "invalid_timestamp",
            Outcome::InvalidSignature => "invalid_signature",
            Outcome::InvalidPayload => "invalid_payload",
            Outcome::PayloadTooLarge => "payload_too_large",
            Outcome::Overloaded => "overloaded",
            Outcome::Internal => "internal",
        }
    }
}

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("verified body is not a Clerk event")]
    Payload(#[from] PayloadError),
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("too many request bodies are being read; retry later")]
    Overloaded,
    #[error("reading the request body failed")]
    UnreadableBody,
    #[error("the body did not arrive within {} s", BODY_TIMEOUT.as_secs())]
    SlowBody,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl WebhookError {
    fn outcome(&self) -> Outcome {
        match self {
            WebhookError::Verify(VerifyError::MissingHeaders | VerifyError::InvalidId) => {
                Outcome::MissingSvixHeaders
            }
            WebhookError::Verify(
                VerifyError::InvalidTimestamp
                | VerifyError::TimestampTooOld
                | VerifyError::TimestampTooNew,
            ) => Outcome::InvalidTimestamp,
            WebhookError::Verify(VerifyError::InvalidSignature) => Outcome::InvalidSignature,
            WebhookError::Payload(_)
            | WebhookError::Store(StoreError::Unstorable)
            | WebhookError::UnreadableBody
            | WebhookError::SlowBody => Outcome::InvalidPayload,
            WebhookError::TooLarge { .. } => Outcome::PayloadTooLarge,
            WebhookError::Overloaded => Outcome::Overloaded,
            WebhookError::Store(_) => Outcome::Internal,
        }
    }

    fn status(&self) -> StatusCode {
        match self.outcome() {
            Outcome::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Outcome::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        let outcome = self.outcome();
        let body = match outcome {
            // Nothing about the internals leaves the process.
            Outcome::Internal => json!({ "error": outcome.as_str() }),
            _ => {
                json!({ "error": outcome.as_str(), "message": shared::error::Chain(&self).to_string() })
            }
        };
        let mut response = (self.status(), Json(body)).into_response();
        if outcome == Outcome::Overloaded {
            response
                .headers_mut()
                .insert(RETRY_AFTER, OVERLOADED_RETRY_AFTER_SECS.into());
        }
        response
    }
}

#[tracing::instrument(name = "webhook.receive", skip_all)]
pub async fn receive(State(state): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    let (parts, body) = request.into_parts();
    let result = accept(&state, &parts.headers, body).await;
    let elapsed = started.elapsed().as_secs_f64();
    let elapsed_ms = elapsed * 1000.0;
    match result {
        Ok(accepted) => {
            state.metrics.request(accepted.outcome, elapsed);
            tracing::info!(
                webhook_id = %accepted.webhook_id,
                event_type = %accepted.event_type,
                outcome = accepted.outcome.as_str(),
                elapsed_ms,
                "webhook accepted"
            );
            (
                StatusCode::OK,
                Json(json!({ "status": accepted.outcome.as_str() })),
            )
                .into_response()
        }
        Err(error) => {
            let outcome = error.outcome();
            state.metrics.request(outcome, elapsed);
            if outcome == Outcome::Internal {
                tracing::error!(
                    outcome = outcome.as_str(),
                    error.message = %shared::error::Chain(&error),
                    elapsed_ms,
                    "webhook not stored"
                );
            } else {
                state.refusals.record(
                    outcome.as_str(),
                    &shared::error::Chain(&error).to_string(),
                    source,
                );
            }
            error.into_response()
        }
    }
}

struct Accepted {
    webhook_id: String,
    event_type: String,
    outcome: Outcome,
}

async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Accepted, WebhookError> {
    // Everything that needs no body is checked first, so a request that
    // cannot be good is refused before its body is read.
    let headers_only = SignedRequest {
        id: svix_header(headers, "svix-id", "webhook-id"),
        timestamp: svix_header(headers, "svix-timestamp", "webhook-timestamp"),
        signature: svix_header(headers, "svix-signature", "webhook-signature"),
        body: &[],
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let checked = headers_only.check_headers(now)?;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.max_body_bytes as u64) {
        return Err(WebhookError::TooLarge {
            limit: state.max_body_bytes,
        });
    }
    let permit = state
        .admission
        .try_admit(declared)
        .ok_or(WebhookError::Overloaded)?;
    tracing::debug!("reading the webhook body");
    let body = tokio::time::timeout(BODY_TIMEOUT, read_body(body, state.max_body_bytes))
        .await
        .map_err(|_| WebhookError::SlowBody)??;
    let verified = state.secrets.verify_body(&checked, &body)?;
    drop(permit);
    let event::Envelope {
        event_type,
        subject,
        jsonb_safe,
    } = event::envelope(&body)?;
    // envelope() parsed the body as JSON, which guarantees valid UTF-8 (the
    // store reads it as text).
    std::str::from_utf8(&body).map_err(|_| PayloadError::NotAnObject)?;

    let store = state.store.store(NewEvent {
        webhook_id: verified.id.clone(),
        event_type: event_type.clone(),
        subject,
        raw_body: body.clone(),
        jsonb_safe,
        traceparent: shared::telemetry::current_traceparent(),
    });
    let stored = tokio::time::timeout(STORE_TIMEOUT, store)
        .await
        .map_err(|_| StoreError::TimedOut)??;
    let outcome = match stored {
        Stored::New => Outcome::Ok,
        Stored::Duplicate => Outcome::Duplicate,
    };
    Ok(Accepted {
        webhook_id: verified.id,
        event_type,
        outcome,
    })
}

/// The `svix-*` header, or its Standard Webhooks `webhook-*` twin.
fn svix_header<'a>(headers: &'a HeaderMap, svix: &str, standard: &str) -> Option<&'a [u8]> {
    headers
        .get(svix)
        .or_else(|| headers.get(standard))
        .map(|value| value.as_bytes())
}

async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, WebhookError> {
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(error) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(WebhookError::TooLarge { limit })
            } else {
                Err(WebhookError::UnreadableBody)
            }
        }
    }
}
