//! The audit log (`admin_actions`), newest first.

use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, QueryBuilder};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::BadParameter;

/// One audited change.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct AuditRow {
    /// Its position in the log; pass the last one as `before` for the next page.
    pub id: i64,
    /// `credits_adjusted`, `dlq_replay`, `replay_from_store`, `user_deleted`, …
    pub action_type: String,
    /// Who: an admin token's name, an operator's `--actor`, or `system`.
    pub actor: String,
    /// The user it is about, when one.
    pub user_id: Option<String>,
    /// The membership it is about, when one.
    pub membership_id: Option<i64>,
    /// The event it is about, when one.
    pub webhook_id: Option<String>,
    /// What was selected and what changed.
    #[schema(value_type = Object)]
    pub details: Value,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// What to list; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Rows about this user or credit owner.
    pub user_id: Option<String>,
    /// Rows written by this actor.
    pub actor: Option<String>,
    /// Rows of this action type.
    pub action_type: Option<String>,
    /// At most this many.
    pub limit: i64,
    /// Rows older than this id.
    pub before: Option<i64>,
}

/// Parses `before`: a positive row id.
pub fn parse_before(value: Option<&str>) -> Result<Option<i64>, BadParameter> {
    value
        .filter(|value| !value.is_empty())
        .map(|value| {
            value
                .parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| BadParameter {
                    code: "bad_cursor",
                    detail: "before must be the id of an audit row".to_owned(),
                })
        })
        .transpose()
}

const COLUMNS: &str =
    "id, action_type, actor, user_id, membership_id, webhook_id, details, created_at";

/// The rows the filter selects, newest first.
pub async fn list(pool: &PgPool, filter: &AuditFilter) -> Result<Vec<AuditRow>, sqlx::Error> {
    let texts = [&filter.user_id, &filter.actor, &filter.action_type];
    if !texts
        .iter()
        .copied()
        .flatten()
        .all(|text| super::storable(text))
    {
        return Ok(Vec::new());
    }
    let mut query = QueryBuilder::new(format!("SELECT {COLUMNS} FROM admin_actions WHERE TRUE"));
    if let Some(user_id) = &filter.user_id {
        query.push(" AND user_id = ").push_bind(user_id);
    }
    if let Some(actor) = &filter.actor {
        query.push(" AND actor = ").push_bind(actor);
    }
    if let Some(action_type) = &filter.action_type {
        query.push(" AND action_type = ").push_bind(action_type);
    }
    if let Some(before) = filter.before {
        query.push(" AND id < ").push_bind(before);
    }
    query
        .push(" ORDER BY id DESC LIMIT ")
        .push_bind(filter.limit);
    query.build_query_as().fetch_all(pool).await
}

/// The rows about one event: those naming it in `webhook_id`, and the
/// replays whose selection listed it.
pub async fn about_event(pool: &PgPool, webhook_id: &str) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM admin_actions
         WHERE webhook_id = $1
            OR (action_type IN ('replay_from_store', 'dlq_replay')
                AND details #> '{{selection,ids}}' ? $1)
         ORDER BY id DESC LIMIT 100"
    ))
    .bind(webhook_id)
    .fetch_all(pool)
    .await
}
