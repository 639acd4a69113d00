//! `GET /api/admin/events` (search), `GET /api/admin/events/{webhook_id}`
//! (one event) and `POST /api/admin/events/{webhook_id}/replay` (as
//! `worker replay --from-store --id`, the same function).

use axum::{
    extract::{Path, State},
    routing::{get, post},
    Extension, Json, Router,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use worker::replay::{replay_from_store, ReplayError, StoreSelection};

use super::{Actor, Params};
use crate::{
    error::{AdminError, ErrorBody},
    queries::{
        self,
        events::{Cursor, EventDetail, EventFilter, EventPage},
    },
    AppState,
};

/// The routes of this file.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/events", get(search_events))
        .route("/api/admin/events/{webhook_id}", get(get_event))
        .route("/api/admin/events/{webhook_id}/replay", post(replay_event))
}

/// The filters of the event search.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Events about this user or organisation.
    pub user_id: Option<String>,
    /// Events of this type (`user.deleted`, …).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// Events in this status.
    #[param(value_type = Option<String>, pattern = "^(received|published|processed|ignored|failed|dead)$")]
    pub status: Option<String>,
    /// Received at or after this instant (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<String>,
    /// Received before this instant (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub until: Option<String>,
    /// At most this many events (1 to 500, default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<String>, pattern = "^-?[0-9]{1,16}_[0-9]{1,18}$")]
    pub cursor: Option<String>,
}

impl EventsQuery {
    /// The filter these parameters name.
    pub fn filter(&self) -> Result<EventFilter, AdminError> {
        Ok(EventFilter {
            subject: queries::filter(self.user_id.as_deref()),
            event_type: queries::filter(self.event_type.as_deref()),
            status: queries::events::parse_status(queries::filter(self.status.as_deref()))?,
            since: queries::parse_instant("since", self.since.as_deref())?,
            until: queries::parse_instant("until", self.until.as_deref())?,
            limit: queries::parse_limit(self.limit.as_deref())?,
            cursor: queries::filter(self.cursor.as_deref())
                .map(|cursor| Cursor::parse(&cursor))
                .transpose()?,
        })
    }
}

/// Stored events, newest first.
#[utoipa::path(
    get,
    path = "/api/admin/events",
    tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "A page of events, newest first", body = EventPage),
        (status = 400, description = "A malformed parameter", body = ErrorBody),
        (status = 401, description = "No live token", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn search_events(
    State(state): State<AppState>,
    Params(query): Params<EventsQuery>,
) -> Result<Json<EventPage>, AdminError> {
    super::refuse_empty(&[
        ("status", &query.status),
        ("since", &query.since),
        ("until", &query.until),
        ("limit", &query.limit),
        ("cursor", &query.cursor),
    ])?;
    let filter = query.filter()?;
    Ok(Json(queries::events::search(&state.pool, &filter).await?))
}

fn unknown_event(webhook_id: &str) -> AdminError {
    AdminError::NotFound {
        code: "unknown_event",
        detail: format!("no stored event {webhook_id}"),
    }
}

/// One stored event with its payload and audit rows.
#[utoipa::path(
    get,
    path = "/api/admin/events/{webhook_id}",
    tag = "events",
    params(("webhook_id" = String, Path, description = "The svix id")),
    responses(
        (status = 200, description = "The event", body = EventDetail),
        (status = 400, description = "A value PostgreSQL cannot store", body = ErrorBody),
        (status = 401, description = "No live token", body = ErrorBody),
        (status = 404, description = "Not stored (`unknown_event`)", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn get_event(
    State(state): State<AppState>,
    Path(webhook_id): Path<String>,
) -> Result<Json<EventDetail>, AdminError> {
    queries::events::detail(&state.pool, &webhook_id)
        .await?
        .map(Json)
        .ok_or_else(|| unknown_event(&webhook_id))
}

/// What a replay of a stored event did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    /// Events re-published and confirmed by the broker (1).
    pub republished: u64,
    /// Of those, dead or failed events given a fresh start.
    pub reset: u64,
}

/// Re-publishes one stored event; handlers are idempotent, so an event
/// already applied changes nothing.
#[utoipa::path(
    post,
    path = "/api/admin/events/{webhook_id}/replay",
    tag = "events",
    params(("webhook_id" = String, Path, description = "The svix id")),
    responses(
        (status = 200, description = "Re-published and confirmed", body = Replayed),
        (status = 400, description = "A value PostgreSQL cannot store", body = ErrorBody),
        (status = 401, description = "No live token", body = ErrorBody),
        (status = 404, description = "Not stored (`unknown_event`)", body = ErrorBody),
        (status = 503, description = "RabbitMQ is unreachable or did not confirm", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn replay_event(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(webhook_id): Path<String>,
) -> Result<Json<Replayed>, AdminError> {
    replay(&state, &actor, &webhook_id).await.map(Json)
}

/// Re-publishes one stored event as `actor` (also the console's replay button).
pub async fn replay(
    state: &AppState,
    actor: &str,
    webhook_id: &str,
) -> Result<Replayed, AdminError> {
    // Nothing stored holds a NUL character; the replay itself answers for
    // any other id that is not stored.
    if !queries::storable(webhook_id) {
        return Err(unknown_event(webhook_id));
    }
    let session = state.broker.connect().await?;
    let outcome = replay_from_store(
        &state.pool,
        &session.connection,
        &session.names,
        &StoreSelection::Ids(vec![webhook_id.to_owned()]),
        actor,
        &mut |_| {},
    )
    .await;
    session.close().await;
    match outcome {
        Ok(report) => Ok(Replayed {
            republished: report.republished,
            reset: report.reset,
        }),
        Err(ReplayError::UnknownIds(_)) => Err(unknown_event(webhook_id)),
        Err(ReplayError::Database(error)) => Err(AdminError::Database(error)),
        Err(error) => {
            tracing::warn!(error.message = %shared::error::Chain(&error), "replay failed");
            Err(AdminError::Unavailable {
                code: "broker_unavailable",
                detail: "RabbitMQ did not confirm the re-publish; nothing was lost, try again"
                    .to_owned(),
            })
        }
    }
}
