//! The one error type of the admin service, and its one mapping to HTTP.

use serde::Serialize;
use utoipa::ToSchema;

use crate::queries::BadParameter;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};

/// Everything a request or a command of the admin service can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No token, an unknown one or a revoked one.
    #[error("unauthorized")]
    Unauthorized,
    /// The request body or parameters are not what the route takes.
    #[error("bad request: {detail}")]
    BadRequest {
        /// The stable machine code.
        code: &'static str,
        /// What is wrong, for people.
        detail: String,
    },
    /// The thing named in the path does not exist.
    #[error("not found: {detail}")]
    NotFound {
        /// The stable machine code.
        code: &'static str,
        /// What was not found.
        detail: String,
    },
    /// A well-formed change the data refuses.
    #[error("refused: {detail}")]
    Refused {
        /// The stable machine code.
        code: &'static str,
        /// Why.
        detail: String,
    },
    /// A console form without its session's CSRF token, or sent from
    /// another site.
    #[error("forbidden: {detail}")]
    Forbidden {
        /// The stable machine code.
        code: &'static str,
        /// Why.
        detail: String,
    },
    /// A dependency the route needs is not configured.
    #[error("unavailable: {detail}")]
    Unavailable {
        /// The stable machine code.
        code: &'static str,
        /// What is missing.
        detail: String,
    },
    /// A token name is taken.
    #[error("a token named {0} exists already")]
    TokenExists(String),
    /// No token has that name.
    #[error("no token named {0}")]
    NoSuchToken(String),
    /// A fault of the service itself (a console page that failed to render).
    #[error("internal: {0}")]
    Internal(String),
    /// PostgreSQL failed.
    #[error("database")]
    Database(#[from] sqlx::Error),
}

impl AdminError {
    /// The answer's status, stable code and detail: the one mapping the API's
    /// JSON errors and the console's error pages share. Logs what is not the
    /// client's doing.
    pub fn answer(&self) -> (StatusCode, &'static str, Option<String>) {
        match self {
            AdminError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            AdminError::BadRequest { code, detail } => {
                (StatusCode::BAD_REQUEST, *code, Some(detail.clone()))
            }
            AdminError::NotFound { code, detail } => {
                (StatusCode::NOT_FOUND, *code, Some(detail.clone()))
            }
            AdminError::Refused { code, detail } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                *code,
                Some(detail.clone()),
            ),
            AdminError::Forbidden { code, detail } => {
                (StatusCode::FORBIDDEN, *code, Some(detail.clone()))
            }
            AdminError::Unavailable { code, detail } => {
                (StatusCode::SERVICE_UNAVAILABLE, *code, Some(detail.clone()))
            }
            AdminError::Database(error) if is_data_exception(error) => {
                tracing::info!(error.message = %shared::error::Chain(&error), "a request's value was refused by PostgreSQL");
                (
                    StatusCode::BAD_REQUEST,
                    "bad_value",
                    Some("a value of the request cannot be stored or compared".to_owned()),
                )
            }
            AdminError::TokenExists(_)
            | AdminError::NoSuchToken(_)
            | AdminError::Internal(_)
            | AdminError::Database(_) => {
                tracing::error!(error.message = %shared::error::Chain(&self), "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", None)
            }
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code, detail) = self.answer();
        let body = match detail {
            Some(detail) => serde_json::json!({"error": code, "detail": detail}),
            None => serde_json::json!({"error": code}),
        };
        (status, Json(body)).into_response()
    }
}

/// PostgreSQL's data exceptions (SQLSTATE class 22: a text with a NUL byte, a
/// number out of range, …) are caused by a value a client sent, never by the
/// service: they answer 400, not 500.
fn is_data_exception(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|error| error.code())
        .is_some_and(|code| code.starts_with("22"))
}

impl From<BadParameter> for AdminError {
    fn from(bad: BadParameter) -> Self {
        AdminError::BadRequest {
            code: bad.code,
            detail: bad.detail,
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable machine code: `unauthorized`, `bad_limit`, `unknown_user`, …
    pub error: String,
    /// What is wrong, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
