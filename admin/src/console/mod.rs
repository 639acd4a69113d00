//! The operators' console (`SPEC.md` section 11): server-rendered pages under
//! `/admin/…` over the very functions the API calls (`crate::queries` for
//! reads, `crate::routes::{credits, events, dlq, sync}` for changes), the
//! signed-in token's name as the actor. One file per page family; templates
//! in `admin/templates/`.
//!
//! Sign-in opens a session ([`crate::sessions`]) kept in the cookie
//! [`COOKIE`] (`HttpOnly; SameSite=Strict; Path=/`, plus `Secure` when the
//! request came over HTTPS per `X-Forwarded-Proto`). Every POST is refused
//! (403) when its `Origin` is another host, and, behind the session, when its
//! form lacks the session's CSRF token.

pub mod audit;
pub mod dlq;
pub mod events;
pub mod page;
pub mod sign_in;
pub mod sync;
pub mod users;

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, Method, Uri},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Router,
};
use subtle::ConstantTimeEq as _;

use self::page::{Form, PageError};
use crate::{error::AdminError, sessions, AppState};

/// The session cookie's name.
pub const COOKIE: &str = "clerk_admin_session";

/// The largest form a console POST may send.
const FORM_LIMIT: usize = 64 * 1024;

/// Where a signed-in operator lands.
pub const HOME: &str = "/admin/events";

/// The console's routes: the sign-in page and static files open, the rest
/// behind a session.
pub fn router(state: AppState) -> Router<AppState> {
    let pages = Router::new()
        .route("/admin/events", get(events::list))
        .route("/admin/events/{webhook_id}", get(events::show))
        .route("/admin/events/{webhook_id}/replay", post(events::replay))
        .route("/admin/dlq", get(dlq::list))
        .route("/admin/dlq/replay", post(dlq::replay))
        .route("/admin/users", get(users::find))
        .route("/admin/users/sync", get(sync::page).post(sync::start))
        .route("/admin/users/{id}", get(users::show))
        .route("/admin/users/{id}/credits", post(users::adjust))
        .route("/admin/jobs/{id}", get(sync::job))
        .route("/admin/audit", get(audit::list))
        .route("/admin/sign-out", post(sign_in::sign_out))
        .route_layer(middleware::from_fn_with_state(state, require_session));
    Router::new()
        .route("/", get(home))
        .route("/admin", get(home))
        .route("/admin/sign-in", get(sign_in::form).post(sign_in::submit))
        .route("/admin/static/console.css", get(stylesheet))
        .route("/admin/static/sync.js", get(script))
        .merge(pages)
        .layer(middleware::from_fn(security_headers))
}

/// `GET /`: the events page with a session, else the sign-in page.
async fn home(State(state): State<AppState>, headers: HeaderMap) -> Result<Redirect, PageError> {
    Ok(match current(&state, &headers).await? {
        Some(_) => Redirect::to(HOME),
        None => Redirect::to("/admin/sign-in"),
    })
}

/// The session id the request's cookie carries.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// The live session of the request, if any.
pub async fn current(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<sessions::Session>, AdminError> {
    match session_id(headers) {
        Some(id) => sessions::find(&state.pool, &id).await,
        None => Ok(None),
    }
}

/// Refuses a request whose `Origin` is not this host (a form posted from
/// another site). A request without `Origin` passes: browsers send it on
/// every POST, and the CSRF token still guards the forms.
pub fn same_origin(headers: &HeaderMap) -> Result<(), AdminError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok());
    let origin_host = origin.to_str().ok().and_then(|origin| {
        origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
    });
    match (origin_host, host) {
        (Some(origin), Some(host)) if origin.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(AdminError::Forbidden {
            code: "cross_origin",
            detail: "this form was sent from another site".to_owned(),
        }),
    }
}

/// Lets through only requests of a live session: a GET without one goes to
/// the sign-in page; a POST without one, from another origin, or without the
/// session's CSRF token is refused (403) before its handler runs. Hands the
/// session, and a POST's parsed form, to the handler.
async fn require_session(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, PageError> {
    let session = current(&state, request.headers()).await?;
    let is_post = request.method() == Method::POST;
    let Some(session) = session else {
        if is_post {
            return Err(AdminError::Forbidden {
                code: "no_session",
                detail: "your session has ended: sign in again".to_owned(),
            }
            .into());
        }
        return Ok(Redirect::to("/admin/sign-in").into_response());
    };
    let mut request = request;
    if is_post {
        same_origin(request.headers())?;
        let (parts, body) = request.into_parts();
        let bytes =
            axum::body::to_bytes(body, FORM_LIMIT)
                .await
                .map_err(|_| AdminError::BadRequest {
                    code: "form_too_large",
                    detail: format!("a form may carry at most {FORM_LIMIT} bytes"),
                })?;
        let form = Form::parse(&bytes);
        let sent = form.get("csrf").unwrap_or_default().as_bytes();
        if !bool::from(sent.ct_eq(session.csrf.as_bytes())) {
            return Err(AdminError::Forbidden {
                code: "bad_csrf_token",
                detail: "this form is stale or was not sent from the console: reload the page"
                    .to_owned(),
            }
            .into());
        }
        request = Request::from_parts(parts, Body::empty());
        request.extensions_mut().insert(form);
    }
    request.extensions_mut().insert(session);
    Ok(next.run(request).await)
}

/// Headers of every console answer: no framing, no sniffing, scripts and
/// styles only from this service, nothing cached.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../static/console.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../static/sync.js"),
    )
}

/// The answer for an unknown path under `/admin`: an HTML 404.
pub fn not_found(uri: &Uri) -> Response {
    PageError::from(AdminError::NotFound {
        code: "no_route",
        detail: format!("no page {}", uri.path()),
    })
    .into_response()
}
