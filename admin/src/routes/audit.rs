//! `GET /api/admin/audit`: the audit log, newest first.

use axum::{extract::State, routing::get, Json, Router};
use serde::Deserialize;
use utoipa::IntoParams;

use super::Params;
use crate::{
    error::{AdminError, ErrorBody},
    queries::{
        self,
        audit::{AuditFilter, AuditRow},
    },
    AppState,
};

/// The routes of this file.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/admin/audit", get(get_audit))
}

/// The filters of the audit log.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Rows about this user or credit owner.
    pub user_id: Option<String>,
    /// Rows written by this actor (a token's name, an operator).
    pub actor: Option<String>,
    /// Rows of this type (`credits_adjusted`, `dlq_replay`, …).
    pub action_type: Option<String>,
    /// At most this many rows (1 to 500, default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// Rows older than this id (the last `id` of the previous page).
    #[param(value_type = Option<i64>, minimum = 1)]
    pub before: Option<String>,
}

impl AuditQuery {
    /// The filter these parameters name.
    pub fn filter(&self) -> Result<AuditFilter, AdminError> {
        Ok(AuditFilter {
            user_id: queries::filter(self.user_id.as_deref()),
            actor: queries::filter(self.actor.as_deref()),
            action_type: queries::filter(self.action_type.as_deref()),
            limit: queries::parse_limit(self.limit.as_deref())?,
            before: queries::audit::parse_before(self.before.as_deref())?,
        })
    }
}

/// The audit log, newest first.
#[utoipa::path(
    get,
    path = "/api/admin/audit",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit rows, newest first", body = Vec<AuditRow>),
        (status = 400, description = "A malformed parameter", body = ErrorBody),
        (status = 401, description = "No live token", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn get_audit(
    State(state): State<AppState>,
    Params(query): Params<AuditQuery>,
) -> Result<Json<Vec<AuditRow>>, AdminError> {
    super::refuse_empty(&[("limit", &query.limit), ("before", &query.before)])?;
    let filter = query.filter()?;
    Ok(Json(queries::audit::list(&state.pool, &filter).await?))
}
