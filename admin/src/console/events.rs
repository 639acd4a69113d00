//! `/admin/events` (the search, with the API's filters and cursor),
//! `/admin/events/{webhook_id}` (one event with its payload and audit rows)
//! and its replay button.

use askama::Template;
use axum::{extract::State, response::Response, Extension};

use super::page::{
    href, render, see_other, segment, Done, OrDash as _, PageError, PagePath, PageQuery, When as _,
};
use crate::{
    error::AdminError,
    queries::{
        self,
        events::{EventDetail, EventPage, STATUSES},
    },
    routes::events::EventsQuery,
    sessions::Session,
    AppState,
};

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    session: Session,
    query: EventsQuery,
    statuses: Vec<(&'static str, bool)>,
    page: EventPage,
    next_href: Option<String>,
}

/// The events the filters select, newest first, a page at a time.
pub async fn list(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    PageQuery(query): PageQuery<EventsQuery>,
) -> Result<Response, PageError> {
    let filter = query.filter()?;
    let page = queries::events::search(&state.pool, &filter).await?;
    let next_href = page.next_cursor.as_deref().map(|cursor| {
        href(
            "/admin/events",
            &[
                ("user_id", query.user_id.as_deref()),
                ("type", query.event_type.as_deref()),
                ("status", query.status.as_deref()),
                ("since", query.since.as_deref()),
                ("until", query.until.as_deref()),
                ("limit", query.limit.as_deref()),
                ("cursor", Some(cursor)),
            ],
        )
    });
    let statuses = STATUSES
        .iter()
        .map(|status| (*status, query.status.as_deref() == Some(*status)))
        .collect();
    render(&EventsPage {
        session,
        query,
        statuses,
        page,
        next_href,
    })
}

#[derive(Template)]
#[template(path = "event.html")]
struct EventPageView {
    session: Session,
    event: EventDetail,
    payload: String,
    replayed: bool,
}

/// One event: payload, status, attempts, last error, timestamps, audit rows.
pub async fn show(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    PagePath(webhook_id): PagePath<String>,
    PageQuery(done): PageQuery<Done>,
) -> Result<Response, PageError> {
    let event = queries::events::detail(&state.pool, &webhook_id)
        .await?
        .ok_or_else(|| AdminError::NotFound {
            code: "unknown_event",
            detail: format!("no stored event {webhook_id}"),
        })?;
    let payload = serde_json::to_string_pretty(&event.payload).unwrap_or_default();
    render(&EventPageView {
        session,
        event,
        payload,
        replayed: done.done.as_deref() == Some("replayed"),
    })
}

/// The replay button: re-publishes the stored event as the signed-in token.
pub async fn replay(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    PagePath(webhook_id): PagePath<String>,
) -> Result<Response, PageError> {
    crate::routes::events::replay(&state, &session.actor, &webhook_id).await?;
    Ok(see_other(&format!(
        "/admin/events/{}?done=replayed",
        segment(&webhook_id)
    )))
}
