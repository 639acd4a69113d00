//! A verified body, from `shared::event::event_type` to the typed views the
//! worker's handlers read (`shared::event::{user, billing}` and the billing
//! handler's `subscription_item_data`/`payment_attempt_data`): nothing
//! panics, `event_type` agrees with a plain JSON parse, and the lenient
//! fields keep their promises (no blank strings, numbers and digit strings
//! read as the same milliseconds, owners and keys chosen as documented).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use shared::event::{
    billing::{Payer, PaymentAttempt, SubscriptionItem},
    event_type,
    user::{DeletedUser, User},
    PayloadError,
};
use worker::handlers::{
    billing::{payment_attempt_data, subscription_item_data},
    Event, HandlerError,
};

fuzz_target!(|body: &[u8]| {
    let kind = event_type(body);
    let Ok(payload) = serde_json::from_slice::<Value>(body) else {
        assert_eq!(kind, Err(PayloadError::NotAnObject));
        return;
    };
    let Some(object) = payload.as_object() else {
        assert_eq!(kind, Err(PayloadError::NotAnObject));
        return;
    };
    match (&kind, object.get("type")) {
        (Ok(kind), Some(Value::String(field))) => {
            assert_eq!(kind, field);
            assert!((1..=255).contains(&kind.len()));
        }
        (Err(PayloadError::MissingType), Some(Value::String(field))) => {
            assert!(field.is_empty() || field.len() > 255);
        }
        (Err(PayloadError::MissingType), _) => {}
        (kind, field) => panic!("event_type gave {kind:?} for a type field {field:?}"),
    }

    let event_type = kind.as_deref().unwrap_or("paymentAttempt.updated");
    let event = Event {
        webhook_id: "msg_fuzz",
        event_type,
        payload: &payload,
    };
    let item = subscription_item_data(&event);
    let attempt = payment_attempt_data(&event);
    let Some(data) = object.get("data") else {
        assert!(matches!(item, Err(HandlerError::Malformed(_))));
        assert!(matches!(attempt, Err(HandlerError::Malformed(_))));
        return;
    };
    let data = Source::Json(data);
    let direct = serde_json::from_value::<SubscriptionItem>(data.value().clone());
    assert_eq!(item.is_ok(), direct.is_ok());
    if let Ok(item) = item {
        check_item(&item, data);
    }
    let direct = serde_json::from_value::<PaymentAttempt>(data.value().clone());
    assert_eq!(attempt.is_ok(), direct.is_ok());
    if let Ok(attempt) = attempt {
        check_optional(&attempt.id, data.field("id"));
        check_optional(&attempt.payment_id, data.field("payment_id"));
        check_optional(&attempt.status, data.field("status"));
        check_payer(&attempt.payer, data.field("payer"));
        assert_eq!(
            attempt.key(),
            attempt.id.as_deref().or(attempt.payment_id.as_deref())
        );
        match data.field("subscription_items") {
            Source::Json(Value::Array(entries)) => {
                assert_eq!(attempt.subscription_items.len(), entries.len());
                for (item, value) in attempt.subscription_items.iter().zip(entries) {
                    check_item(item, Source::Json(value));
                }
            }
            Source::Absent | Source::Json(Value::Null) => {
                assert!(attempt.subscription_items.is_empty());
            }
            _ => {
                for item in &attempt.subscription_items {
                    check_item(item, Source::Unknown);
                }
            }
        }
    }

    if let Ok(user) = User::deserialize_from(data.value()) {
        if let Source::Json(id) = data.field("id") {
            assert_eq!(Some(user.id.as_str()), id.as_str());
        }
        check_optional(&user.first_name, data.field("first_name"));
        check_optional(&user.last_name, data.field("last_name"));
        check_optional(
            &user.primary_email_address_id,
            data.field("primary_email_address_id"),
        );
        check_millis(user.updated_at, data.field("updated_at"));
        for address in &user.email_addresses {
            check_optional(&address.id, Source::Unknown);
            check_optional(&address.email_address, Source::Unknown);
        }
        if let Some(email) = user.primary_email() {
            let primary = user
                .primary_email_address_id
                .as_deref()
                .expect("a primary email needs a primary id");
            assert!(user.email_addresses.iter().any(|a| {
                a.id.as_deref() == Some(primary) && a.email_address.as_deref() == Some(email)
            }));
        }
    }
    if let Ok(deleted) = serde_json::from_value::<DeletedUser>(data.value().clone()) {
        if let Source::Json(id) = data.field("id") {
            assert_eq!(Some(deleted.id.as_str()), id.as_str());
        }
    }
});

/// Where a typed value was read from, as far as the checks can tell.
#[derive(Clone, Copy, Debug)]
enum Source<'a> {
    /// This JSON value.
    Json(&'a Value),
    /// A field that was not there (or a field of `null`).
    Absent,
    /// Unknown: serde also reads a struct from an array of its fields in
    /// order; for those only the invariants are checked.
    Unknown,
}

impl<'a> Source<'a> {
    fn field(self, name: &str) -> Source<'a> {
        match self {
            Source::Json(Value::Object(object)) => {
                object.get(name).map_or(Source::Absent, Source::Json)
            }
            Source::Json(Value::Null) | Source::Absent => Source::Absent,
            Source::Json(_) | Source::Unknown => Source::Unknown,
        }
    }

    fn value(self) -> &'a Value {
        match self {
            Source::Json(value) => value,
            Source::Absent | Source::Unknown => &Value::Null,
        }
    }
}

fn check_item(item: &SubscriptionItem, source: Source<'_>) {
    check_optional(&item.id, source.field("id"));
    check_optional(&item.status, source.field("status"));
    let plan = source.field("plan");
    check_optional(&item.plan.slug, plan.field("slug"));
    check_optional(&item.plan.id, plan.field("id"));
    check_millis(item.period_start, source.field("period_start"));
    check_payer(&item.payer, source.field("payer"));
}

fn check_payer(payer: &Payer, source: Source<'_>) {
    check_optional(&payer.user_id, source.field("user_id"));
    check_optional(&payer.organization_id, source.field("organization_id"));
    assert_eq!(
        payer.owner(),
        payer
            .user_id
            .as_deref()
            .or(payer.organization_id.as_deref())
    );
}

/// A lenient string is never blank; read from a known field, it is the
/// field's value when that is a non-blank string, and nothing otherwise.
fn check_optional(parsed: &Option<String>, source: Source<'_>) {
    assert!(parsed.as_deref().is_none_or(|s| !s.trim().is_empty()));
    let expected = match source {
        Source::Unknown => return,
        Source::Json(Value::String(s)) if !s.trim().is_empty() => Some(s.as_str()),
        Source::Json(_) | Source::Absent => None,
    };
    assert_eq!(parsed.as_deref(), expected);
}

/// Lenient milliseconds: an integer as is, a finite float truncated
/// (saturating), a string of an integer (spaces around it allowed).
fn check_millis(parsed: Option<i64>, source: Source<'_>) {
    let expected = match source {
        Source::Unknown => return,
        Source::Json(Value::Number(n)) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite())
                .map(|f| f.trunc().clamp(i64::MIN as f64, i64::MAX as f64) as i64)
        }),
        Source::Json(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Source::Json(_) | Source::Absent => None,
    };
    assert_eq!(parsed, expected);
}
