//! `/admin/users` (find a user by id), `/admin/users/{id}` (balance, ledger,
//! memberships, events, audit rows) and its adjustment form, which goes
//! through `routes::credits::change` like the API.

use askama::Template;
use axum::{extract::State, response::Response, Extension};
use serde::Deserialize;

use super::page::{
    render, see_other, segment, Done, Form, OrDash as _, PageError, PagePath, PageQuery, When as _,
};
use crate::{
    error::AdminError,
    queries::users::{self, UserView},
    routes::credits,
    sessions::Session,
    AppState,
};

#[derive(Template)]
#[template(path = "users.html")]
struct FindPage {
    session: Session,
}

/// `?id=…` of the find form.
#[derive(Debug, Default, Deserialize)]
pub struct FindQuery {
    /// The Clerk user id (or organisation id) to open.
    pub id: Option<String>,
}

/// The find form; with an id, that user's page.
pub async fn find(
    Extension(session): Extension<Session>,
    PageQuery(query): PageQuery<FindQuery>,
) -> Result<Response, PageError> {
    match query
        .id
        .as_deref()
        .map(str::trim)
        .filter(|id| !id.is_empty())
    {
        Some(id) => Ok(see_other(&format!("/admin/users/{}", segment(id)))),
        None => render(&FindPage { session }),
    }
}

#[derive(Template)]
#[template(path = "user.html")]
struct UserPage {
    session: Session,
    view: UserView,
    path: String,
    adjusted: bool,
}

/// One user with the adjustment form.
pub async fn show(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    PagePath(id): PagePath<String>,
    PageQuery(done): PageQuery<Done>,
) -> Result<Response, PageError> {
    let view = users::view(&state.pool, &id)
        .await?
        .ok_or_else(|| AdminError::NotFound {
            code: "unknown_user",
            detail: format!("no user, membership or credit account {id}"),
        })?;
    render(&UserPage {
        session,
        path: segment(&id),
        view,
        adjusted: done.done.as_deref() == Some("adjusted"),
    })
}

/// The adjustment form: `mode` (`set` or `add`), `amount`, `reason`.
pub async fn adjust(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    PagePath(id): PagePath<String>,
    Extension(form): Extension<Form>,
) -> Result<Response, PageError> {
    let amount = form
        .get("amount")
        .map(str::trim)
        .and_then(|amount| amount.parse::<i64>().ok())
        .ok_or_else(|| AdminError::BadRequest {
            code: "malformed_body",
            detail: "the amount must be an integer".to_owned(),
        })?;
    let mode = form.get("mode").unwrap_or_default();
    let (target, reason) = credits::validate(
        (mode == "set").then_some(amount),
        (mode == "add").then_some(amount),
        form.get("reason").map(ToOwned::to_owned),
    )?;
    credits::change(&state, &session.actor, &id, target, reason).await?;
    Ok(see_other(&format!(
        "/admin/users/{}?done=adjusted",
        segment(&id)
    )))
}
