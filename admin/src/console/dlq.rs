//! `/admin/dlq`: the dead letters, and their replay (selected, by type or
//! all, optionally as a dry run) through `routes::dlq::{list, replay}`.

use askama::Template;
use axum::{extract::State, response::Response, Extension};
use worker::dlq::{DeadLetterInfo, DEFAULT_LIST_LIMIT};

use super::page::{render, Form, OrDash as _, PageError};
use crate::{
    routes::dlq::{self as api, DlqReplayed},
    sessions::Session,
    AppState,
};

#[derive(Template)]
#[template(path = "dlq.html")]
struct DlqPage {
    session: Session,
    letters: Vec<DeadLetterInfo>,
    result: Option<DlqReplayed>,
}

/// The first dead letters, oldest first; the queue is left as it was.
pub async fn list(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
) -> Result<Response, PageError> {
    let letters = api::list(&state, DEFAULT_LIST_LIMIT).await?;
    render(&DlqPage {
        session,
        letters,
        result: None,
    })
}

/// Replays the selection the form names (`mode` = `selected` with `ids`,
/// `type` with `type`, or `all`; `dry_run` when ticked) as the signed-in
/// token, then shows what it did and what is left.
pub async fn replay(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Extension(form): Extension<Form>,
) -> Result<Response, PageError> {
    let mode = form.get("mode").unwrap_or_default();
    let selection = api::select(
        (mode == "selected").then(|| form.all("ids")),
        (mode == "type").then(|| form.get("type").unwrap_or_default().to_owned()),
        (mode == "all").then_some(true),
    )?;
    let dry_run = form.get("dry_run").is_some();
    let result = api::replay(&state, &session.actor, selection, dry_run).await?;
    let letters = api::list(&state, DEFAULT_LIST_LIMIT).await?;
    render(&DlqPage {
        session,
        letters,
        result: Some(result),
    })
}
