//! The admin API's routes, one file per resource, each exporting `router()`.

pub mod audit;
pub mod body;
pub mod credits;
pub mod dlq;
pub mod events;
pub mod jobs;
pub mod openapi;
pub mod sync;
pub mod users;

use axum::{
    extract::{FromRequestParts, Query, Request, State},
    http::{header::AUTHORIZATION, request::Parts},
    middleware::Next,
    response::Response,
};

use crate::{error::AdminError, AppState};

/// The token's name, set by [`authenticate`]: the actor of every change.
#[derive(Clone, Debug)]
pub struct Actor(pub String);

/// Lets through only requests with `Authorization: Bearer TOKEN` of a live
/// token, and hands the token's name to the route.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, AdminError> {
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or(AdminError::Unauthorized)?;
    let actor = crate::tokens::actor(&state.pool, token)
        .await?
        .ok_or(AdminError::Unauthorized)?;
    request.extensions_mut().insert(Actor(actor));
    Ok(next.run(request).await)
}

/// The query string as `T`, or 400 `bad_query` (as JSON, like every error).
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(params)| Params(params))
            .map_err(|rejection| AdminError::BadRequest {
                code: "bad_query",
                detail: rejection.body_text(),
            })
    }
}

/// The API takes a typed parameter given empty (`?limit=`) as malformed, as
/// its document says; the console's forms, which send empty fields, read the
/// same parameters leniently.
pub fn refuse_empty(parameters: &[(&'static str, &Option<String>)]) -> Result<(), AdminError> {
    match parameters
        .iter()
        .find(|(_, value)| value.as_deref().is_some_and(str::is_empty))
    {
        Some((name, _)) => Err(AdminError::BadRequest {
            code: "empty_parameter",
            detail: format!("{name} is empty: give a value or leave it out"),
        }),
        None => Ok(()),
    }
}
