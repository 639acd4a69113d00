//! `GET|POST /admin/sign-in` and `POST /admin/sign-out`: a token opens a
//! session kept in an `HttpOnly; SameSite=Strict` cookie; signing out ends it.

use askama::Template;
use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use bytes::Bytes;

use super::{
    page::{render, Form, PageError},
    COOKIE, HOME,
};
use crate::{sessions, AppState};

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    error: Option<&'static str>,
}

/// The sign-in form; a signed-in operator goes to the events page.
pub async fn form(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    if super::current(&state, &headers).await?.is_some() {
        return Ok(Redirect::to(HOME).into_response());
    }
    render(&SignInPage { error: None })
}

/// Opens a session for a live token: sets the cookie and goes to the events
/// page. An unknown or revoked token gets the form again with 401.
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    super::same_origin(&headers)?;
    let form = Form::parse(&body);
    let token = form.get("token").map(str::trim).unwrap_or_default();
    let opened = if token.is_empty() {
        None
    } else {
        sessions::open(&state.pool, token).await?
    };
    let Some(opened) = opened else {
        let page = SignInPage {
            error: Some("That token is unknown or revoked."),
        };
        let mut refused = render(&page)?;
        *refused.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(refused);
    };
    // Signing in again replaces the session this browser had.
    if let Some(previous) = super::session_id(&headers) {
        sessions::close(&state.pool, &previous).await?;
    }
    tracing::info!(actor = %opened.session.actor, "console sign-in");
    let max_age = i64::from(sessions::LIFETIME_HOURS) * 3600;
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        opened.id,
        secure(&headers)
    );
    Ok(with_cookie(Redirect::to(HOME).into_response(), &cookie))
}

/// Ends the session and clears the cookie.
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    if let Some(id) = super::session_id(&headers) {
        sessions::close(&state.pool, &id).await?;
    }
    let cookie = format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        secure(&headers)
    );
    Ok(with_cookie(
        Redirect::to("/admin/sign-in").into_response(),
        &cookie,
    ))
}

/// `; Secure` when the request reached the proxy in front over HTTPS
/// (`X-Forwarded-Proto: https`): the service itself speaks plain HTTP on an
/// internal address, so the cookie must still work there.
fn secure(headers: &HeaderMap) -> &'static str {
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
    if https {
        "; Secure"
    } else {
        ""
    }
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
