//! What a dead letter's headers say about it: the worker's own
//! (`x-attempts`, `x-last-error`, `x-dead-lettered-at`) or, for a message the
//! broker dead-lettered on its own, the broker's `x-death`.

use lapin::{
    types::{AMQPValue, FieldTable},
    BasicProperties,
};
use serde::Serialize;
use shared::amqp::{HEADER_ATTEMPTS, HEADER_DEAD_LETTERED_AT, HEADER_LAST_ERROR, HEADER_TYPE};

/// One dead letter, as `dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DeadLetterInfo {
    /// The svix id (the message id); absent on a message published without one.
    pub svix_id: Option<String>,
    /// The event type.
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub event_type: String,
    /// Attempts made before it was dead-lettered, when known.
    pub attempts: Option<i64>,
    /// Why the last attempt failed, when known.
    pub last_error: Option<String>,
    /// When it was dead-lettered (RFC 3339), when known.
    pub dead_lettered_at: Option<String>,
}

impl DeadLetterInfo {
    /// Reads what the worker (`x-attempts`, `x-last-error`,
    /// `x-dead-lettered-at`) or, for a message the broker dead-lettered on its
    /// own, the broker (`x-death`) recorded on the message.
    pub(super) fn from_message(routing_key: &str, properties: &BasicProperties) -> Self {
        let headers = properties.headers().as_ref();
        let death = headers.and_then(latest_death);
        let event_type = headers
            .and_then(|h| text_header(h, HEADER_TYPE))
            .or_else(|| properties.kind().as_ref().map(ToString::to_string))
            .unwrap_or_else(|| routing_key.to_owned());
        Self {
            svix_id: properties.message_id().as_ref().map(ToString::to_string),
            event_type,
            attempts: headers
                .and_then(|h| int_header(h, HEADER_ATTEMPTS))
                .or_else(|| death.and_then(|d| d.inner().get("count").and_then(as_int))),
            last_error: headers
                .and_then(|h| text_header(h, HEADER_LAST_ERROR))
                .or_else(|| death.and_then(|d| d.inner().get("reason").and_then(as_text))),
            dead_lettered_at: headers
                .and_then(|h| text_header(h, HEADER_DEAD_LETTERED_AT))
                .or_else(|| death.and_then(|d| d.inner().get("time").and_then(as_time))),
        }
    }
}

/// The newest entry of the broker's `x-death` header.
fn latest_death(headers: &FieldTable) -> Option<&FieldTable> {
    match headers.inner().get("x-death")? {
        AMQPValue::FieldArray(deaths) => match deaths.as_slice().first()? {
            AMQPValue::FieldTable(death) => Some(death),
            _ => None,
        },
        _ => None,
    }
}

pub(super) fn text_header(headers: &FieldTable, name: &str) -> Option<String> {
    headers.inner().get(name).and_then(as_text)
}

fn int_header(headers: &FieldTable, name: &str) -> Option<i64> {
    headers.inner().get(name).and_then(as_int)
}

fn as_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn as_int(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortUInt(i) => Some(i64::from(*i)),
        AMQPValue::LongInt(i) => Some(i64::from(*i)),
        AMQPValue::LongUInt(i) => Some(i64::from(*i)),
        AMQPValue::LongLongInt(i) => Some(*i),
        _ => None,
    }
}

fn as_time(value: &AMQPValue) -> Option<String> {
    let AMQPValue::Timestamp(seconds) = value else {
        return None;
    };
    let at = time::OffsetDateTime::from_unix_timestamp(i64::try_from(*seconds).ok()?).ok()?;
    at.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString, ShortString};

    fn long(text: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
    }

    #[test]
    fn the_workers_headers_describe_a_dead_letter() {
        let mut headers = FieldTable::default();
        headers.insert(HEADER_TYPE.into(), long("user.created"));
        headers.insert(HEADER_ATTEMPTS.into(), AMQPValue::LongInt(5));
        headers.insert(HEADER_LAST_ERROR.into(), long("injected failure"));
        headers.insert(HEADER_DEAD_LETTERED_AT.into(), long("2024-05-01T10:00:00Z"));
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from("msg_1"))
            .with_headers(headers);

        let info = DeadLetterInfo::from_message("user.created", &properties);

        assert_eq!(
            info,
            DeadLetterInfo {
                svix_id: Some("msg_1".to_owned()),
                event_type: "user.created".to_owned(),
                attempts: Some(5),
                last_error: Some("injected failure".to_owned()),
                dead_lettered_at: Some("2024-05-01T10:00:00Z".to_owned()),
            }
        );
    }

    #[test]
    fn a_message_the_broker_dead_lettered_is_described_by_x_death() {
        let mut death = FieldTable::default();
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        death.insert("reason".into(), long("delivery_limit"));
        death.insert("time".into(), AMQPValue::Timestamp(1_714_557_600));
        let mut deaths = FieldArray::default();
        deaths.push(AMQPValue::FieldTable(death));
        let mut headers = FieldTable::default();
        headers.insert("x-death".into(), AMQPValue::FieldArray(deaths));
        let properties = BasicProperties::default().with_headers(headers);

        let info = DeadLetterInfo::from_message("user.deleted", &properties);

        assert_eq!(info.svix_id, None);
        assert_eq!(info.event_type, "user.deleted");
        assert_eq!(info.attempts, Some(1));
        assert_eq!(info.last_error.as_deref(), Some("delivery_limit"));
        assert_eq!(
            info.dead_lettered_at.as_deref(),
            Some("2024-05-01T10:00:00Z")
        );
    }
}
