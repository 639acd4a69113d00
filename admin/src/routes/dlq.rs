//! `GET /api/admin/dlq` (as `worker dlq list --json`) and
//! `POST /api/admin/dlq/replay` (as `worker dlq replay`): the same functions,
//! the token's name as the actor.

use axum::{
    extract::State,
    routing::{get, post},
    Extension, Json, Router,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use worker::dlq::{self, DeadLetterInfo, DlqError, ReplayRequest, Selection};

use super::{
    body::{is_meaningful, Body},
    Actor, Params,
};
use crate::{
    error::{AdminError, ErrorBody},
    AppState,
};

/// The routes of this file.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/dlq", get(list_dead_letters))
        .route("/api/admin/dlq/replay", post(replay_dead_letters))
}

/// The most dead letters one list shows (as `worker dlq list --limit`).
const MAX_LIST_LIMIT: u32 = 100_000;

/// How many dead letters to show.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DlqQuery {
    /// At most this many, oldest first (1 to 100000, default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100000)]
    pub limit: Option<String>,
}

/// The dead letters, oldest first; the queue is left as it was.
#[utoipa::path(
    get,
    path = "/api/admin/dlq",
    tag = "dlq",
    params(DlqQuery),
    responses(
        (status = 200, description = "Dead letters, oldest first", body = Vec<DeadLetterInfo>),
        (status = 400, description = "A malformed parameter", body = ErrorBody),
        (status = 401, description = "No live token", body = ErrorBody),
        (status = 503, description = "RabbitMQ is unreachable", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    Params(query): Params<DlqQuery>,
) -> Result<Json<Vec<DeadLetterInfo>>, AdminError> {
    super::refuse_empty(&[("limit", &query.limit)])?;
    let limit = crate::queries::parse_limit_within(
        query.limit.as_deref(),
        dlq::DEFAULT_LIST_LIMIT.into(),
        MAX_LIST_LIMIT.into(),
    )?;
    // At most MAX_LIST_LIMIT, so it fits.
    let limit = u32::try_from(limit).unwrap_or(MAX_LIST_LIMIT);
    list(&state, limit).await.map(Json)
}

/// The first `limit` dead letters (also the console's page).
pub async fn list(state: &AppState, limit: u32) -> Result<Vec<DeadLetterInfo>, AdminError> {
    let _turn = state.broker.dlq_turn().await;
    let session = state.broker.connect().await?;
    let listing = dlq::list(&state.pool, &session.connection, &session.names, limit).await;
    session.close().await;
    Ok(listing.map_err(classify)?.entries)
}

/// Which dead letters to replay: exactly one of `ids`, `type` and `all`,
/// and optionally `dry_run`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum DlqReplayBody {
    /// These svix ids; every one must be in the queue.
    Ids(ReplayIds),
    /// Every dead letter of one event type.
    Type(ReplayType),
    /// Every dead letter.
    All(ReplayAll),
}

/// `{"ids": ["msg_…", …]}`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ReplayIds {
    /// The svix ids.
    #[schema(min_items = 1, inline)]
    ids: Vec<SvixId>,
    /// Show what would be replayed; change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// A svix id (not blank).
#[derive(Serialize, ToSchema)]
#[schema(pattern = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$")]
#[allow(dead_code)]
pub struct SvixId(String);

/// `{"type": "user.deleted"}`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ReplayType {
    /// The event type.
    #[serde(rename = "type")]
    #[schema(pattern = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$")]
    event_type: String,
    /// Show what would be replayed; change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// `{"all": true}`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ReplayAll {
    /// Must be `true`.
    #[schema(inline)]
    all: AllTrue,
    /// Show what would be replayed; change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// The constant `true`.
#[derive(Serialize)]
pub struct AllTrue;

impl utoipa::PartialSchema for AllTrue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Boolean)
            .enum_values(Some([true]))
            .into()
    }
}

impl ToSchema for AllTrue {}

/// Reads the body into a selection and the dry-run flag, or 400
/// (`malformed_body`, `bad_selection`).
pub fn parse(bytes: &[u8]) -> Result<(Selection, bool), AdminError> {
    let body = Body::parse(
        bytes,
        &["ids", "type", "all", "dry_run"],
        "{\"ids\": [...]}, {\"type\": \"...\"} or {\"all\": true}",
    )?;
    let selection = select(body.texts("ids")?, body.text("type")?, body.boolean("all")?)?;
    Ok((selection, body.boolean("dry_run")?.unwrap_or(false)))
}

/// The selection `ids`, `type` or `all` name, exactly one of them (the API's
/// body and the console's form alike), or 400 `bad_selection`.
pub fn select(
    ids: Option<Vec<String>>,
    event_type: Option<String>,
    all: Option<bool>,
) -> Result<Selection, AdminError> {
    let bad = |detail: &str| AdminError::BadRequest {
        code: "bad_selection",
        detail: detail.to_owned(),
    };
    match (ids, event_type, all) {
        (Some(ids), None, None) => {
            if ids.is_empty() || !ids.iter().all(|id| is_meaningful(id)) {
                return Err(bad("\"ids\" must list at least one svix id"));
            }
            Ok(Selection::Ids(ids))
        }
        (None, Some(event_type), None) => {
            if !is_meaningful(&event_type) {
                return Err(bad("\"type\" must name an event type"));
            }
            Ok(Selection::Type(event_type))
        }
        (None, None, Some(true)) => Ok(Selection::All),
        (None, None, Some(false)) => Err(bad("\"all\" must be true when given")),
        _ => Err(bad(
            "exactly one of \"ids\", \"type\" and \"all\" is required",
        )),
    }
}

/// What a DLQ replay did.
#[derive(Debug, Serialize, ToSchema)]
pub struct DlqReplayed {
    /// Dead letters re-published, confirmed and removed from the queue.
    pub replayed: u64,
    /// A dry run: nothing changed.
    pub dry_run: bool,
    /// On a dry run, what would have been replayed.
    pub would_replay: Vec<DeadLetterInfo>,
}

/// Moves dead letters back for processing; a message leaves the queue only
/// after its re-publish is confirmed.
#[utoipa::path(
    post,
    path = "/api/admin/dlq/replay",
    tag = "dlq",
    request_body = DlqReplayBody,
    responses(
        (status = 200, description = "Replayed (or, on a dry run, listed)", body = DlqReplayed),
        (status = 400, description = "A malformed body (`malformed_body`, `bad_selection`)", body = ErrorBody),
        (status = 401, description = "No live token", body = ErrorBody),
        (status = 404, description = "Some ids are not in the queue; nothing was replayed (`not_in_queue`)", body = ErrorBody),
        (status = 503, description = "RabbitMQ is unreachable or stopped the replay part-way", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn replay_dead_letters(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<Json<DlqReplayed>, AdminError> {
    let (selection, dry_run) = parse(&body)?;
    replay(&state, &actor, selection, dry_run).await.map(Json)
}

/// Replays the selected dead letters as `actor` (also the console's button).
pub async fn replay(
    state: &AppState,
    actor: &str,
    selection: Selection,
    dry_run: bool,
) -> Result<DlqReplayed, AdminError> {
    let request = ReplayRequest {
        selection,
        dry_run,
        actor: actor.to_owned(),
    };
    let _turn = state.broker.dlq_turn().await;
    let session = state.broker.connect().await?;
    let report = dlq::replay(
        &state.pool,
        &session.connection,
        &session.names,
        &request,
        &mut |_| {},
    )
    .await;
    session.close().await;
    let report = report.map_err(classify)?;
    Ok(DlqReplayed {
        replayed: report.replayed,
        dry_run: report.dry_run,
        would_replay: report.would_replay,
    })
}

/// The answer for a DLQ failure.
fn classify(error: DlqError) -> AdminError {
    match error {
        DlqError::NotInQueue { missing, .. } => AdminError::NotFound {
            code: "not_in_queue",
            detail: format!(
                "not in the dead-letter queue: {}; nothing was replayed",
                missing.join(", ")
            ),
        },
        DlqError::Database(error) => AdminError::Database(error),
        error => {
            tracing::warn!(error.message = %shared::error::Chain(&error), "DLQ operation failed");
            AdminError::Unavailable {
                code: "broker_unavailable",
                detail: shared::error::Chain(&error).to_string(),
            }
        }
    }
}
