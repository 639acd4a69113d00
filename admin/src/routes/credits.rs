//! `PUT /api/admin/users/{id}/credits` and `PUT /api/admin/credits/{owner_id}`:
//! `worker credits adjust` over HTTP (the same function, the token's name as
//! the actor).

use axum::{
    extract::{Path, State},
    routing::put,
    Extension, Json, Router,
};
use bytes::Bytes;
use serde::Serialize;
use utoipa::ToSchema;
use worker::credits::{
    adjust::{adjust, AdjustError, Adjustment, Target},
    ledger::LedgerError,
};

use super::{
    body::{is_meaningful, Body},
    Actor,
};
use crate::{
    error::{AdminError, ErrorBody},
    AppState,
};

/// The routes of this file.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/users/{id}/credits", put(put_user_credits))
        .route("/api/admin/credits/{owner_id}", put(put_owner_credits))
}

/// The body of a credit change: exactly one of `set` and `add`, and a reason.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum CreditsBody {
    /// Sets the balance.
    Set(SetCredits),
    /// Changes the balance.
    Add(AddCredits),
}

/// `{"set": N, "reason": "…"}`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SetCredits {
    /// The new balance.
    #[schema(minimum = 0, maximum = 2147483647)]
    set: i64,
    /// Why, for the ledger and the audit log (not blank).
    #[schema(pattern = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$")]
    reason: String,
}

/// `{"add": N, "reason": "…"}`; `add` may be negative.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct AddCredits {
    /// The change of the balance.
    #[schema(minimum = -2147483648_i64, maximum = 2147483647)]
    add: i64,
    /// Why, for the ledger and the audit log (not blank).
    #[schema(pattern = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$")]
    reason: String,
}

/// A user's balance after a change.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserCredits {
    /// The user.
    pub user_id: String,
    /// `plan_credits + pack_credits`.
    pub balance: i64,
    /// Credits of the plan period.
    pub plan_credits: i32,
    /// Credits bought in packs (an adjustment lands here).
    pub pack_credits: i32,
}

/// A credit owner's balance after a change.
#[derive(Debug, Serialize, ToSchema)]
pub struct OwnerCredits {
    /// The user or organisation.
    pub owner_id: String,
    /// `plan_credits + pack_credits`.
    pub balance: i64,
    /// Credits of the plan period.
    pub plan_credits: i32,
    /// Credits bought in packs (an adjustment lands here).
    pub pack_credits: i32,
}

/// Parses the body into what to do and why.
pub fn parse(bytes: &[u8]) -> Result<(Target, String), AdminError> {
    let body = Body::parse(
        bytes,
        &["set", "add", "reason"],
        "{\"set\"|\"add\": integer, \"reason\": text}",
    )?;
    validate(
        body.integer("set")?,
        body.integer("add")?,
        body.text("reason")?,
    )
}

/// What to do and why: exactly one of `set` and `add`, and a reason that is
/// not blank (the API's body and the console's form alike).
pub fn validate(
    set: Option<i64>,
    add: Option<i64>,
    reason: Option<String>,
) -> Result<(Target, String), AdminError> {
    let target = match (set, add) {
        (Some(n), None) => Target::Set(n),
        (None, Some(n)) => Target::Add(n),
        _ => {
            return Err(AdminError::BadRequest {
                code: "set_or_add",
                detail: "exactly one of \"set\" and \"add\" is required".to_owned(),
            })
        }
    };
    let reason = reason
        .filter(|reason| is_meaningful(reason))
        .ok_or_else(|| AdminError::BadRequest {
            code: "missing_reason",
            detail: "a non-empty \"reason\" is required".to_owned(),
        })?;
    Ok((target, reason))
}

/// Sets or changes a user's balance: ledger row `admin_adjustment`, audit
/// row `credits_adjusted`, Clerk sync.
#[utoipa::path(
    put,
    path = "/api/admin/users/{id}/credits",
    tag = "credits",
    params(("id" = String, Path, description = "Clerk user id")),
    request_body = CreditsBody,
    responses(
        (status = 200, description = "The balance after the change", body = UserCredits),
        (status = 400, description = "A malformed body (`malformed_body`, `set_or_add`, `missing_reason`)", body = ErrorBody),
        (status = 401, description = "No live token", body = ErrorBody),
        (status = 404, description = "Unknown user (`unknown_user`)", body = ErrorBody),
        (status = 422, description = "Refused: a negative result or a deleted user", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn put_user_credits(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<UserCredits>, AdminError> {
    let (target, reason) = parse(&body)?;
    let (balance, plan_credits, pack_credits) = change(&state, &actor, &id, target, reason).await?;
    Ok(Json(UserCredits {
        user_id: id,
        balance,
        plan_credits,
        pack_credits,
    }))
}

/// The same for any credit owner, organisations included.
#[utoipa::path(
    put,
    path = "/api/admin/credits/{owner_id}",
    tag = "credits",
    params(("owner_id" = String, Path, description = "Clerk user or organisation id")),
    request_body = CreditsBody,
    responses(
        (status = 200, description = "The balance after the change", body = OwnerCredits),
        (status = 400, description = "A malformed body (`malformed_body`, `set_or_add`, `missing_reason`)", body = ErrorBody),
        (status = 401, description = "No live token", body = ErrorBody),
        (status = 404, description = "Unknown owner (`unknown_user`)", body = ErrorBody),
        (status = 422, description = "Refused: a negative result or a deleted user", body = ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn put_owner_credits(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(owner_id): Path<String>,
    body: Bytes,
) -> Result<Json<OwnerCredits>, AdminError> {
    let (target, reason) = parse(&body)?;
    let (balance, plan_credits, pack_credits) =
        change(&state, &actor, &owner_id, target, reason).await?;
    Ok(Json(OwnerCredits {
        owner_id,
        balance,
        plan_credits,
        pack_credits,
    }))
}

/// Applies the adjustment as `actor`; returns the balance and its two parts
/// (also the console's adjustment form).
pub async fn change(
    state: &AppState,
    actor: &str,
    owner: &str,
    target: Target,
    reason: String,
) -> Result<(i64, i32, i32), AdminError> {
    if !crate::queries::storable(owner) {
        return Err(classify(AdjustError::UnknownUser(owner.to_owned())));
    }
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
    let account = crate::queries::users::account(&state.pool, owner)
        .await?
        .ok_or_else(|| classify(AdjustError::UnknownUser(owner.to_owned())))?;
    Ok((adjusted.after, account.plan_credits, account.pack_credits))
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
