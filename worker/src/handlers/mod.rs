//! Event handlers, one file per family. A handler runs inside the delivery's
//! transaction and never talks to the broker.

pub mod billing;
pub mod memberships;
pub mod users;

use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::PgConnection;

use crate::credits::Catalog;

/// The stored event a handler applies.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    pub webhook_id: &'a str,
    pub event_type: &'a str,
    pub payload: &'a Value,
}

/// What a handler did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The handler changed what the event asks for.
    Processed,
    /// The event was understood but changes nothing (stale update, update of
    /// a deleted user); the row is still marked `processed`.
    Unchanged,
    /// Nobody handles this type: the row is marked `ignored`.
    Ignored,
}

impl Applied {
    /// The event's status once applied.
    pub fn status(self) -> shared::event_status::Status {
        use shared::event_status::Status;
        match self {
            Applied::Processed | Applied::Unchanged => Status::Processed,
            Applied::Ignored => Status::Ignored,
        }
    }

    /// The label of the events metric and the log's `outcome`.
    pub fn outcome(self) -> &'static str {
        match self {
            Applied::Processed => "processed",
            Applied::Unchanged => "unchanged",
            Applied::Ignored => "ignored",
        }
    }
}

/// Why a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A handled type whose payload can never be applied: retrying is useless.
    #[error("payload cannot be applied: {0}")]
    Malformed(String),
    #[error("PostgreSQL failed")]
    Database(#[from] sqlx::Error),
}

/// Applies one event inside `tx`.
pub async fn apply(
    tx: &mut PgConnection,
    event: &Event<'_>,
    catalog: &Catalog,
) -> Result<Applied, HandlerError> {
    match event.event_type {
        "user.created" | "user.updated" => users::upsert(tx, event).await,
        "user.deleted" => users::delete(tx, event).await,
        "subscriptionItem.active"
        | "subscriptionItem.updated"
        | "subscriptionItem.canceled"
        | "subscriptionItem.ended" => billing::subscription_item(tx, event, catalog).await,
        "paymentAttempt.updated" => billing::payment_attempt(tx, event, catalog).await,
        _ => Ok(Applied::Ignored),
    }
}

/// The event's `data`, typed.
fn data<T: DeserializeOwned>(event: &Event<'_>) -> Result<T, HandlerError> {
    let data = event
        .payload
        .get("data")
        .ok_or_else(|| HandlerError::Malformed(format!("{} without data", event.event_type)))?;
    T::deserialize(data)
        .map_err(|e| HandlerError::Malformed(format!("{} data: {e}", event.event_type)))
}
