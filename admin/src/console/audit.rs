//! `/admin/audit`: the audit log with the API's filters (user, actor, action
//! type), newest first, a page at a time.

use askama::Template;
use axum::{extract::State, response::Response, Extension};

use super::page::{href, render, PageError, PageQuery, When as _};
use crate::{
    queries::{self, audit::AuditRow},
    routes::audit::AuditQuery,
    sessions::Session,
    AppState,
};

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    session: Session,
    query: AuditQuery,
    rows: Vec<AuditRow>,
    next_href: Option<String>,
}

/// The rows the filters select, newest first.
pub async fn list(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    PageQuery(query): PageQuery<AuditQuery>,
) -> Result<Response, PageError> {
    let filter = query.filter()?;
    let rows = queries::audit::list(&state.pool, &filter).await?;
    let next_href = (rows.len() as i64 == filter.limit)
        .then(|| rows.last())
        .flatten()
        .map(|last| {
            let before = last.id.to_string();
            href(
                "/admin/audit",
                &[
                    ("user_id", query.user_id.as_deref()),
                    ("actor", query.actor.as_deref()),
                    ("action_type", query.action_type.as_deref()),
                    ("limit", query.limit.as_deref()),
                    ("before", Some(&before)),
                ],
            )
        });
    render(&AuditPage {
        session,
        query,
        rows,
        next_href,
    })
}
