//! The Clerk event envelope, as far as the ingress needs it.

use serde_json::{Map, Value};

/// Event types the worker applies handlers to (`../SPEC.md` section 9); every
/// other type is stored, published and marked `ignored`.
pub const HANDLED_EVENT_TYPES: &[&str] = &[
    "user.created",
    "user.updated",
    "user.deleted",
    "subscriptionItem.active",
    "subscriptionItem.updated",
    "subscriptionItem.canceled",
    "subscriptionItem.ended",
    "paymentAttempt.updated",
];

/// Why a verified body is not a Clerk event.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    /// Not JSON, or JSON but not an object.
    #[error("body is not a JSON object")]
    NotAnObject,
    /// An object without a string `type`.
    #[error("body has no string \"type\" field")]
    MissingType,
}

/// Reads the event type of a raw body: it must be a JSON object with a
/// non-empty string `type`.
pub fn event_type(body: &[u8]) -> Result<String, PayloadError> {
    let object: Map<String, Value> =
        serde_json::from_slice(body).map_err(|_| PayloadError::NotAnObject)?;
    match object.get("type") {
        Some(Value::String(kind)) if !kind.is_empty() && kind.len() <= 255 => Ok(kind.clone()),
        _ => Err(PayloadError::MissingType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_type_of_an_object() {
        assert_eq!(
            event_type(br#"{"type":"user.created","data":{}}"#),
            Ok("user.created".to_owned())
        );
    }

    #[test]
    fn refuses_what_is_not_an_event() {
        assert_eq!(event_type(b"not json"), Err(PayloadError::NotAnObject));
        assert_eq!(
            event_type(b"[\"user.created\"]"),
            Err(PayloadError::NotAnObject)
        );
        assert_eq!(event_type(b"\xff\xfe"), Err(PayloadError::NotAnObject));
        assert_eq!(
            event_type(br#"{"data":{}}"#),
            Err(PayloadError::MissingType)
        );
        assert_eq!(
            event_type(br#"{"type":42}"#),
            Err(PayloadError::MissingType)
        );
        assert_eq!(
            event_type(br#"{"type":""}"#),
            Err(PayloadError::MissingType)
        );
    }
}
