//! `PUT /api/admin/users/{id}/credits` and `PUT /api/admin/credits/{owner_id}`:
//! `worker credits adjust` over HTTP (the same function, the token's name as
//! the actor).

use axum::{
    extract::{Path, State},
    routing::put,
    Extension, Json, Router,
};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use worker::credits::{
    adjust::{adjust, AdjustError, Adjustment, Target},
    ledger::LedgerError,
};

use super::Actor;
use crate::{error::AdminError, AppState};

/// The routes of this file.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/users/{id}/credits", put(put_user_credits))
        .route("/api/admin/credits/{owner_id}", put(put_owner_credits))
}

/// The body: `{"set": N, "reason": "…"}` or `{"add": N, "reason": "…"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditsBody {
    set: Option<i64>,
    add: Option<i64>,
    reason: Option<String>,
}

/// Parses the body into what to do and why.
fn parse(body: &[u8]) -> Result<(Target, String), AdminError> {
    let body: CreditsBody = serde_json::from_slice(body).map_err(|e| AdminError::BadRequest {
        code: "malformed_body",
        detail: format!("expected {{\"set\"|\"add\": integer, \"reason\": text}}: {e}"),
    })?;
    let target = match (body.set, body.add) {
        (Some(n), None) => Target::Set(n),
        (None, Some(n)) => Target::Add(n),
        _ => {
            return Err(AdminError::BadRequest {
                code: "set_or_add",
                detail: "exactly one of \"set\" and \"add\" is required".to_owned(),
            })
        }
    };
    let reason = body
        .reason
        .filter(|reason| !reason.trim().is_empty())
        .ok_or_else(|| AdminError::BadRequest {
            code: "missing_reason",
            detail: "a non-empty \"reason\" is required".to_owned(),
        })?;
    Ok((target, reason))
}

async fn put_user_credits(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let (balance, plan, pack) = change(&state, &actor, &id, &body).await?;
    Ok(Json(json!({
        "user_id": id, "balance": balance, "plan_credits": plan, "pack_credits": pack,
    })))
}

async fn put_owner_credits(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(owner_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let (balance, plan, pack) = change(&state, &actor, &owner_id, &body).await?;
    Ok(Json(json!({
        "owner_id": owner_id, "balance": balance, "plan_credits": plan, "pack_credits": pack,
    })))
}

/// Applies the adjustment; returns the balance and its two parts.
async fn change(
    state: &AppState,
    actor: &str,
    owner: &str,
    body: &[u8],
) -> Result<(i64, i32, i32), AdminError> {
    let (target, reason) = parse(body)?;
    let adjusted = adjust(
        &state.pool,
        &Adjustment {
            user_id: owner.to_owned(),
            target,
            reason,
            actor: actor.to_owned(),
        },
    )
    .await
    .map_err(classify)?;
    let (plan, pack): (i32, i32) = sqlx::query_as(
        "SELECT plan_credits, pack_credits FROM credit_accounts WHERE owner_id = $1",
    )
    .bind(owner)
    .fetch_one(&state.pool)
    .await?;
    Ok((adjusted.after, plan, pack))
}

fn classify(error: AdjustError) -> AdminError {
    match error {
        AdjustError::UnknownUser(id) => AdminError::NotFound {
            code: "unknown_user",
            detail: format!("no user and no credit account {id}"),
        },
        AdjustError::DeletedUser(id) => AdminError::Refused {
            code: "deleted_user",
            detail: format!("user {id} is deleted"),
        },
        AdjustError::EmptyReason => AdminError::BadRequest {
            code: "missing_reason",
            detail: "a non-empty \"reason\" is required".to_owned(),
        },
        AdjustError::Refused(LedgerError::Database(error)) | AdjustError::Database(error) => {
            AdminError::Database(error)
        }
        AdjustError::Refused(refused) => AdminError::Refused {
            code: "refused_change",
            detail: refused.to_string(),
        },
    }
}
