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
    envelope(body).map(|envelope| envelope.event_type)
}

/// What the ingress stores beside a verified body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The event type (`type`).
    pub event_type: String,
    /// The user or organization the event concerns ([`subject`]).
    pub subject: Option<String>,
    /// PostgreSQL's `jsonb` surely accepts the body ([`jsonb_accepts`]);
    /// when false, only PostgreSQL can tell.
    pub jsonb_safe: bool,
}

/// Reads the type and the subject of a raw body, parsing it once: it must be
/// a JSON object with a non-empty string `type`.
pub fn envelope(body: &[u8]) -> Result<Envelope, PayloadError> {
    let object: Map<String, Value> =
        serde_json::from_slice(body).map_err(|_| PayloadError::NotAnObject)?;
    let event_type = match object.get("type") {
        Some(Value::String(kind)) if !kind.is_empty() && kind.len() <= 255 => kind.clone(),
        _ => return Err(PayloadError::MissingType),
    };
    let subject = object
        .get("data")
        .and_then(|data| subject(&event_type, data));
    let jsonb_safe = jsonb_accepts(body, &object);
    Ok(Envelope {
        event_type,
        subject,
        jsonb_safe,
    })
}

/// Whether PostgreSQL's `jsonb` surely accepts a UTF-8 body serde parsed as
/// `object`. The two parsers differ only on escapes and numbers: `jsonb`
/// refuses a `\u0000` escape and lone surrogates, and numbers past its
/// numeric range (an exponent beyond about ±16000 for fractions, ±131000
/// for large numbers), which serde reads as 0, a subnormal or an infinity.
/// So any `\u` in the body, or a fractional number that is 0, tinier than
/// 1e-300 or not finite, answers false: not "refused", only "let
/// PostgreSQL check". Nesting is no concern: serde stops at 128 levels,
/// far below PostgreSQL's limit.
pub fn jsonb_accepts(body: &[u8], object: &Map<String, Value>) -> bool {
    fn numbers_fit(value: &Value) -> bool {
        match value {
            Value::Number(number) => match (number.is_f64(), number.as_f64()) {
                (false, _) => true,
                (true, Some(x)) => x.is_finite() && x.abs() >= 1e-300,
                (true, None) => false,
            },
            Value::Array(items) => items.iter().all(numbers_fit),
            Value::Object(fields) => fields.values().all(numbers_fit),
            Value::Null | Value::Bool(_) | Value::String(_) => true,
        }
    }
    !body.windows(2).any(|pair| pair == b"\\u") && object.values().all(numbers_fit)
}

/// The Clerk user or organization id an event concerns, from its `data`:
/// `data.id` for `user.*` and `organization.*`; the payer's `user_id`, else
/// its `organization_id`, for billing events (`subscription*`,
/// `paymentAttempt.*`); the member's user id, else the organization, for
/// `organizationMembership.*`; else `data.user_id`, else
/// `data.organization_id`. `None` when the event names neither.
pub fn subject(event_type: &str, data: &Value) -> Option<String> {
    let text = |value: Option<&Value>| match value {
        Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
        _ => None,
    };
    let family = event_type.split('.').next().unwrap_or_default();
    let found = match family {
        "user" | "organization" => text(data.get("id")),
        "subscription" | "subscriptionItem" | "paymentAttempt" => {
            let payer = data.get("payer");
            text(payer.and_then(|p| p.get("user_id")))
                .or_else(|| text(payer.and_then(|p| p.get("organization_id"))))
        }
        "organizationMembership" => text(
            data.get("public_user_data")
                .and_then(|user| user.get("user_id")),
        )
        .or_else(|| text(data.get("organization").and_then(|org| org.get("id")))),
        _ => None,
    };
    found
        .or_else(|| text(data.get("user_id")))
        .or_else(|| text(data.get("organization_id")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    #[test]
    fn the_subject_is_the_user_or_organization_the_event_concerns() {
        let cases = [
            ("user.created", json!({"id": "user_1"}), Some("user_1")),
            (
                "user.deleted",
                json!({"id": "user_2", "deleted": true}),
                Some("user_2"),
            ),
            (
                "organization.updated",
                json!({"id": "org_1"}),
                Some("org_1"),
            ),
            (
                "subscriptionItem.active",
                json!({"payer": {"user_id": "user_3", "organization_id": ""}}),
                Some("user_3"),
            ),
            (
                "paymentAttempt.updated",
                json!({"payer": {"user_id": "", "organization_id": "org_2"}}),
                Some("org_2"),
            ),
            (
                "subscription.created",
                json!({"payer": {"user_id": null, "organization_id": "org_3"}}),
                Some("org_3"),
            ),
            (
                "organizationMembership.created",
                json!({"public_user_data": {"user_id": "user_4"}, "organization": {"id": "org_4"}}),
                Some("user_4"),
            ),
            (
                "session.created",
                json!({"id": "sess_1", "user_id": "user_5"}),
                Some("user_5"),
            ),
            (
                "organizationInvitation.created",
                json!({"organization_id": "org_5"}),
                Some("org_5"),
            ),
            ("email.created", json!({"id": "ema_1"}), None),
            ("user.created", json!({"id": 42}), None),
            ("paymentAttempt.updated", json!({"payer": null}), None),
        ];
        for (event_type, data, expected) in cases {
            assert_eq!(
                subject(event_type, &data).as_deref(),
                expected,
                "{event_type} {data}"
            );
        }
    }

    #[test]
    fn the_envelope_reads_type_and_subject_in_one_parse() {
        assert_eq!(
            envelope(br#"{"type":"user.updated","data":{"id":"user_1"}}"#),
            Ok(Envelope {
                event_type: "user.updated".to_owned(),
                subject: Some("user_1".to_owned()),
                jsonb_safe: true,
            })
        );
        assert_eq!(
            envelope(br#"{"type":"user.updated"}"#).map(|e| e.subject),
            Ok(None)
        );
        assert_eq!(envelope(br#"{"data":{}}"#), Err(PayloadError::MissingType));
    }

    /// Whether [`envelope`] finds `body` surely storable as `jsonb`.
    fn safe(body: &str) -> bool {
        envelope(body.as_bytes()).unwrap().jsonb_safe
    }

    #[test]
    fn plain_json_is_surely_accepted_by_jsonb() {
        assert!(safe(
            r#"{"type":"user.created","data":{"id":"user_1","n":[1,-2,3.5,1e300,18446744073709551615,-1e-300],"ok":true,"name":"Zoë 名前","x":null}}"#
        ));
    }

    #[test]
    fn escapes_and_numbers_jsonb_may_refuse_are_left_to_postgresql() {
        for body in [
            r#"{"type":"user.created","data":{"x":"\u0000"}}"#,
            // Harmless, but told apart from the above only by PostgreSQL.
            r#"{"type":"user.created","data":{"x":"\u00e9"}}"#,
            r#"{"type":"user.created","data":{"x":"a\\u"}}"#,
            r#"{"type":"user.created","data":{"n":1e-20000}}"#,
            r#"{"type":"user.created","data":{"n":[0.0]}}"#,
            r#"{"type":"user.created","data":{"n":{"m":1e-310}}}"#,
        ] {
            assert!(!safe(body), "{body}");
        }
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
        /// Parses a user object (as `GET /users` returns them).
        pub fn deserialize_from(value: &serde_json::Value) -> Result<Self, serde_json::Error> {
            Self::deserialize(value)
        }

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

    pub(super) fn blank_as_none<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<String>, D::Error> {
        let value = Option::<serde_json::Value>::deserialize(deserializer)?;
        Ok(match value {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s),
            _ => None,
        })
    }

    pub(super) fn lenient_millis<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<i64>, D::Error> {
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

/// Typed views of Clerk Billing payloads, parsed leniently (fields differ
/// between Clerk's own documents; optional fields may be absent, `null` or `""`).
pub mod billing {
    use serde::{Deserialize, Deserializer};

    /// Who pays: a user, or an organization when `user_id` is empty.
    #[derive(Debug, Clone, Default, Deserialize)]
    pub struct Payer {
        /// Clerk user id, `""` for organization payers.
        #[serde(default, deserialize_with = "blank_as_none")]
        pub user_id: Option<String>,
        /// Clerk organization id, `""` for user payers.
        #[serde(default, deserialize_with = "blank_as_none")]
        pub organization_id: Option<String>,
    }

    impl Payer {
        /// The owner of the credits: the user, else the organization.
        pub fn owner(&self) -> Option<&str> {
            self.user_id.as_deref().or(self.organization_id.as_deref())
        }
    }

    /// A plan, as embedded in items.
    #[derive(Debug, Clone, Default, Deserialize)]
    pub struct Plan {
        /// Plan id (`cplan_…`).
        #[serde(default, deserialize_with = "blank_as_none")]
        pub id: Option<String>,
        /// The slug the catalog is keyed by.
        #[serde(default, deserialize_with = "blank_as_none")]
        pub slug: Option<String>,
    }

    /// A subscription item (`subscriptionItem.*` data, or an entry of a payment
    /// attempt's `subscription_items`).
    #[derive(Debug, Clone, Deserialize)]
    pub struct SubscriptionItem {
        /// Item id (`csub_item_…`).
        #[serde(default, deserialize_with = "blank_as_none")]
        pub id: Option<String>,
        /// `active`, `canceled`, `ended`, `upcoming`, …
        #[serde(default, deserialize_with = "blank_as_none")]
        pub status: Option<String>,
        /// The plan of the item.
        #[serde(default, deserialize_with = "null_as_default")]
        pub plan: Plan,
        /// Start of the current period, Unix ms (null for the default plan).
        #[serde(default, deserialize_with = "lenient_millis")]
        pub period_start: Option<i64>,
        /// Set when the item is sent as a standalone event.
        #[serde(default, deserialize_with = "null_as_default")]
        pub payer: Payer,
    }

    /// `paymentAttempt.*` data.
    #[derive(Debug, Clone, Deserialize)]
    pub struct PaymentAttempt {
        /// Attempt id.
        #[serde(default, deserialize_with = "blank_as_none")]
        pub id: Option<String>,
        /// Payment id (`cpa_…`), used when `id` is missing.
        #[serde(default, deserialize_with = "blank_as_none")]
        pub payment_id: Option<String>,
        /// `pending`, `paid` or `failed`.
        #[serde(default, deserialize_with = "blank_as_none")]
        pub status: Option<String>,
        /// Who paid.
        #[serde(default, deserialize_with = "null_as_default")]
        pub payer: Payer,
        /// What was paid for.
        #[serde(default, deserialize_with = "null_as_default")]
        pub subscription_items: Vec<SubscriptionItem>,
    }

    /// A payer's subscription, as `GET /users/{id}/billing/subscription`
    /// returns it. The SDK names the list `subscription_items`, the
    /// `subscription.*` webhooks `items`: both are accepted.
    #[derive(Debug, Clone, Default, Deserialize)]
    pub struct Subscription {
        /// `active`, `past_due`, `canceled`, `ended`, …
        #[serde(default, deserialize_with = "blank_as_none")]
        pub status: Option<String>,
        /// The items, current and past.
        #[serde(default, alias = "items", deserialize_with = "null_as_default")]
        pub subscription_items: Vec<SubscriptionItem>,
    }

    impl PaymentAttempt {
        /// The attempt's identity for idempotency keys.
        pub fn key(&self) -> Option<&str> {
            self.id.as_deref().or(self.payment_id.as_deref())
        }
    }

    fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Default,
    {
        Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
    }

    fn blank_as_none<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<String>, D::Error> {
        super::user::blank_as_none(deserializer)
    }

    fn lenient_millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
        super::user::lenient_millis(deserializer)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_user_payer_with_empty_organization_fields_owns_the_credits() {
            let item: SubscriptionItem = serde_json::from_value(serde_json::json!({
                "id": "csub_item_1", "object": "subscription_item", "status": "active",
                "plan": {"id": "cplan_1", "slug": "pro", "amount": 1000},
                "period_start": 1_716_883_200_000_i64, "period_end": null, "plan_period": "month",
                "payer": {"user_id": "user_1", "organization_id": "", "organization_name": ""}
            }))
            .unwrap();
            assert_eq!(item.payer.owner(), Some("user_1"));
            assert_eq!(item.plan.slug.as_deref(), Some("pro"));
        }

        #[test]
        fn an_organization_payer_owns_the_credits_when_the_user_is_empty() {
            let attempt: PaymentAttempt = serde_json::from_value(serde_json::json!({
                "id": "pa_1", "status": "paid",
                "payer": {"user_id": "", "organization_id": "org_1"},
                "subscription_items": [{"id": "csub_item_1", "plan": {"slug": "pro"}, "period_start": "5"}]
            }))
            .unwrap();
            assert_eq!(attempt.payer.owner(), Some("org_1"));
            assert_eq!(attempt.subscription_items[0].period_start, Some(5));
        }

        #[test]
        fn nulls_everywhere_parse() {
            let item: SubscriptionItem = serde_json::from_value(serde_json::json!({
                "id": null, "plan": null, "payer": null, "period_start": null
            }))
            .unwrap();
            assert_eq!(item.payer.owner(), None);
            let attempt: PaymentAttempt = serde_json::from_value(
                serde_json::json!({"subscription_items": null, "payer": null}),
            )
            .unwrap();
            assert!(attempt.subscription_items.is_empty());
        }
    }
}
