//! Event handlers, one file per family. A handler runs inside the delivery's
//! transaction and never talks to the broker.

pub mod billing;
pub mod memberships;
pub mod users;

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde_json::Value;
use shared::event::user;
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

/// Which handler applies a type of event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handler {
    /// `user.created`, `user.updated`.
    UpsertUser,
    /// `user.deleted`.
    DeleteUser,
    /// `subscriptionItem.*` of the credit ledger.
    SubscriptionItem,
    /// `paymentAttempt.updated`.
    PaymentAttempt,
}

impl Handler {
    /// The handler of `event_type`; `None` for the types nobody handles
    /// (marked `ignored`).
    fn of(event_type: &str) -> Option<Self> {
        match event_type {
            "user.created" | "user.updated" => Some(Self::UpsertUser),
            "user.deleted" => Some(Self::DeleteUser),
            "subscriptionItem.active"
            | "subscriptionItem.updated"
            | "subscriptionItem.canceled"
            | "subscriptionItem.ended" => Some(Self::SubscriptionItem),
            "paymentAttempt.updated" => Some(Self::PaymentAttempt),
            _ => None,
        }
    }
}

/// Applies one event inside `tx`.
pub async fn apply(
    tx: &mut PgConnection,
    event: &Event<'_>,
    catalog: &Catalog,
) -> Result<Applied, HandlerError> {
    match Handler::of(event.event_type) {
        Some(Handler::UpsertUser) => users::upsert(tx, event).await,
        Some(Handler::DeleteUser) => users::delete(tx, event).await,
        Some(Handler::SubscriptionItem) => billing::subscription_item(tx, event, catalog).await,
        Some(Handler::PaymentAttempt) => billing::payment_attempt(tx, event, catalog).await,
        None => Ok(Applied::Ignored),
    }
}

/// Applies together, in one statement ([`users::upsert_many`]), the user
/// upserts (`user.created`, `user.updated`) of a batch that concern a user no
/// other event of the batch concerns. Returns what each event did, `None`
/// for the events left to [`apply`], one by one: other types, a user another
/// event of the batch also concerns, a payload that does not parse (its
/// error is [`apply`]'s to report). Applying those afterwards changes the
/// same rows as applying every event in order would, since no two events
/// from the two sets concern the same user.
///
/// Leaves everything to [`apply`] when fewer than two upserts qualify, or
/// when a handled event of another type names no subject (nothing then
/// proves it touches none of the users).
pub async fn upsert_users_together(
    tx: &mut PgConnection,
    events: &[Option<Event<'_>>],
) -> Result<Vec<Option<Applied>>, sqlx::Error> {
    let mut answers: Vec<Option<Applied>> = vec![None; events.len()];
    let upserts = joint_upserts(events);
    if upserts.is_empty() {
        return Ok(answers);
    }
    let users: Vec<&user::User> = upserts.iter().map(|upsert| &upsert.user).collect();
    let changed = users::upsert_many(tx, &users).await?;
    for upsert in &upserts {
        answers[upsert.index] = Some(users::outcome(
            upsert.webhook_id,
            &upsert.user,
            changed.contains(&upsert.user.id),
        ));
    }
    Ok(answers)
}

/// One upsert [`upsert_users_together`] joins.
struct JointUpsert<'a> {
    /// The event's position in the batch.
    index: usize,
    webhook_id: &'a str,
    user: user::User,
}

/// The upserts [`upsert_users_together`] joins: none when fewer than two
/// qualify.
fn joint_upserts<'a>(events: &[Option<Event<'a>>]) -> Vec<JointUpsert<'a>> {
    let mut subjects: HashMap<String, usize> = HashMap::with_capacity(events.len());
    let mut upserts: Vec<JointUpsert<'a>> = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let Some(event) = event else { continue };
        let subject = event
            .payload
            .get("data")
            .and_then(|data| shared::event::subject(event.event_type, data));
        let handler = Handler::of(event.event_type);
        let upsert = handler == Some(Handler::UpsertUser);
        match subject {
            Some(subject) => *subjects.entry(subject).or_default() += 1,
            None if handler.is_some() && !upsert => return Vec::new(),
            None => {}
        }
        if upsert {
            if let Ok(user) = data::<user::User>(event) {
                upserts.push(JointUpsert {
                    index,
                    webhook_id: event.webhook_id,
                    user,
                });
            }
        }
    }
    upserts.retain(|upsert| subjects.get(&upsert.user.id) == Some(&1));
    if upserts.len() < 2 {
        upserts.clear();
    }
    upserts
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Each `(event_type, data)` as a stored payload.
    fn payloads(events: &[(&str, Value)]) -> Vec<(String, Value)> {
        events
            .iter()
            .map(|(event_type, data)| {
                (
                    (*event_type).to_owned(),
                    json!({ "type": event_type, "data": data }),
                )
            })
            .collect()
    }

    /// The positions [`joint_upserts`] joins among `events`.
    fn joined(events: &[(&str, Value)]) -> Vec<usize> {
        let payloads = payloads(events);
        let events: Vec<Option<Event<'_>>> = payloads
            .iter()
            .map(|(event_type, payload)| {
                Some(Event {
                    webhook_id: "msg",
                    event_type,
                    payload,
                })
            })
            .collect();
        joint_upserts(&events)
            .into_iter()
            .map(|upsert| upsert.index)
            .collect()
    }

    #[test]
    fn upserts_of_distinct_users_are_joined() {
        assert_eq!(
            joined(&[
                ("user.created", json!({ "id": "user_a" })),
                ("session.created", json!({ "id": "sess_1" })),
                ("user.updated", json!({ "id": "user_b" })),
            ]),
            vec![0, 2]
        );
    }

    #[test]
    fn a_user_two_events_of_the_batch_concern_is_left_to_each_handler_in_turn() {
        assert_eq!(
            joined(&[
                ("user.created", json!({ "id": "user_a" })),
                ("user.updated", json!({ "id": "user_a" })),
                ("user.created", json!({ "id": "user_b" })),
                ("user.created", json!({ "id": "user_c" })),
                ("user.deleted", json!({ "id": "user_c", "deleted": true })),
                ("user.created", json!({ "id": "user_d" })),
                (
                    "paymentAttempt.updated",
                    json!({ "id": "pa_1", "payer": { "user_id": "user_d" } })
                ),
                ("user.created", json!({ "id": "user_e" })),
            ]),
            vec![2, 7]
        );
    }

    #[test]
    fn a_handled_event_without_subject_leaves_every_upsert_to_its_handler() {
        assert_eq!(
            joined(&[
                ("user.created", json!({ "id": "user_a" })),
                ("subscriptionItem.active", json!({ "id": "csub_1" })),
                ("user.created", json!({ "id": "user_b" })),
            ]),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn a_single_upsert_or_one_that_does_not_parse_is_not_joined() {
        assert_eq!(
            joined(&[
                ("user.created", json!({ "id": "user_a" })),
                ("user.created", json!({ "id": 42 })),
                ("user.created", json!("not an object")),
            ]),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn every_handled_type_has_its_handler_and_others_are_ignored() {
        for event_type in ["user.created", "user.updated"] {
            assert_eq!(Handler::of(event_type), Some(Handler::UpsertUser));
        }
        assert_eq!(Handler::of("user.deleted"), Some(Handler::DeleteUser));
        for state in ["active", "updated", "canceled", "ended"] {
            assert_eq!(
                Handler::of(&format!("subscriptionItem.{state}")),
                Some(Handler::SubscriptionItem)
            );
        }
        assert_eq!(
            Handler::of("paymentAttempt.updated"),
            Some(Handler::PaymentAttempt)
        );
        for ignored in ["session.created", "subscription.active", "user", ""] {
            assert_eq!(Handler::of(ignored), None);
        }
    }
}
