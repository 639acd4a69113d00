//! The Clerk event envelope, as far as the ingress needs it.

use serde_json::{Map, Value};

/// Event types the worker applies handlers to (`../SPEC.md` section 9); every
/// other type is stored, published and marked `ignored`.
pub const HANDLED_EVENT_TYPES: &[&str] = &["user.created", "user.updated", "user.deleted"];

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

/// Typed views of the `data` of the user events, parsed leniently: unknown
/// fields are ignored, optional fields may be absent, `null` or `""`, and
/// timestamps may come as integers, floats or digit strings.
pub mod user {
    use serde::{Deserialize, Deserializer};

    /// `data` of `user.created` and `user.updated`.
    #[derive(Debug, Clone, Deserialize)]
    pub struct User {
        /// Clerk user id (`user_…`).
        pub id: String,
        /// Every address of the user; the primary one is named by id.
        #[serde(default, deserialize_with = "null_as_empty")]
        pub email_addresses: Vec<EmailAddress>,
        /// Id of the primary address among `email_addresses`.
        #[serde(default, deserialize_with = "blank_as_none")]
        pub primary_email_address_id: Option<String>,
        /// Given name.
        #[serde(default, deserialize_with = "blank_as_none")]
        pub first_name: Option<String>,
        /// Family name.
        #[serde(default, deserialize_with = "blank_as_none")]
        pub last_name: Option<String>,
        /// Last change in Clerk, Unix milliseconds: orders updates.
        #[serde(default, deserialize_with = "lenient_millis")]
        pub updated_at: Option<i64>,
    }

    /// One entry of `email_addresses`.
    #[derive(Debug, Clone, Deserialize)]
    pub struct EmailAddress {
        /// Id (`idn_…`).
        #[serde(default, deserialize_with = "blank_as_none")]
        pub id: Option<String>,
        /// The address.
        #[serde(default, deserialize_with = "blank_as_none")]
        pub email_address: Option<String>,
    }

    impl User {
        /// The address whose id is `primary_email_address_id`, if any.
        pub fn primary_email(&self) -> Option<&str> {
            let primary = self.primary_email_address_id.as_deref()?;
            self.email_addresses
                .iter()
                .find(|e| e.id.as_deref() == Some(primary))
                .and_then(|e| e.email_address.as_deref())
        }
    }

    /// `data` of `user.deleted`: a deleted-object marker.
    #[derive(Debug, Clone, Deserialize)]
    pub struct DeletedUser {
        /// Clerk user id.
        pub id: String,
    }

    fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
    }

    fn blank_as_none<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<String>, D::Error> {
        let value = Option::<serde_json::Value>::deserialize(deserializer)?;
        Ok(match value {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s),
            _ => None,
        })
    }

    fn lenient_millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
        let value = Option::<serde_json::Value>::deserialize(deserializer)?;
        Ok(match value {
            Some(serde_json::Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_primary_email_is_the_entry_named_by_id() {
            let user: User = serde_json::from_value(serde_json::json!({
                "id": "user_1",
                "email_addresses": [
                    {"id": "idn_a", "email_address": "a@example.org"},
                    {"id": "idn_b", "email_address": "b@example.org"}
                ],
                "primary_email_address_id": "idn_b",
                "first_name": "",
                "last_name": null,
                "updated_at": "1716883200000"
            }))
            .unwrap();
            assert_eq!(user.primary_email(), Some("b@example.org"));
            assert_eq!(user.first_name, None);
            assert_eq!(user.last_name, None);
            assert_eq!(user.updated_at, Some(1_716_883_200_000));
        }

        #[test]
        fn sparse_users_parse() {
            let user: User = serde_json::from_value(serde_json::json!({
                "id": "user_2", "email_addresses": null, "primary_email_address_id": null
            }))
            .unwrap();
            assert_eq!(user.primary_email(), None);
            assert_eq!(user.updated_at, None);
        }
    }
}
