//! Stored events: the search (newest first, by subject, type, status and
//! time, with a keyset cursor) and one event in full.

use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, QueryBuilder};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::{audit::AuditRow, BadParameter};

/// The statuses `webhook_events.status` takes.
pub const STATUSES: [&str; 6] = [
    "received",
    "published",
    "processed",
    "ignored",
    "failed",
    "dead",
];

/// One event in a list.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct EventSummary {
    /// The svix id.
    pub webhook_id: String,
    /// The event type (`user.deleted`, …).
    pub event_type: String,
    /// The user or organisation it is about, when it names one.
    pub subject: Option<String>,
    /// `received`, `published`, `processed`, `ignored`, `failed` or `dead`.
    pub status: String,
    /// Attempts the worker made.
    pub attempts: i32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the ingress stored it.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// When the broker confirmed it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub published_at: Option<OffsetDateTime>,
    /// When a handler committed it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub processed_at: Option<OffsetDateTime>,
    #[serde(skip)]
    id: i64,
}

/// A page of events, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventPage {
    /// The events.
    pub events: Vec<EventSummary>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One event in full, with the audit rows that name it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventDetail {
    /// What the list shows.
    #[serde(flatten)]
    pub event: EventSummary,
    /// The event as received.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Audit rows about this event (handlers' rows and replays that named it).
    pub audit: Vec<AuditRow>,
}

/// What to search for; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Events about this user or organisation (`webhook_events.subject`).
    pub subject: Option<String>,
    /// Events of this type.
    pub event_type: Option<String>,
    /// Events in this status.
    pub status: Option<String>,
    /// Received at or after.
    pub since: Option<OffsetDateTime>,
    /// Received before.
    pub until: Option<OffsetDateTime>,
    /// At most this many.
    pub limit: i64,
    /// Older than this position of a previous page.
    pub cursor: Option<Cursor>,
}

/// A position in the newest-first order: `received_at` and `id` of the last
/// event of a page. Written `{unix microseconds}_{id}`, opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    received_at: OffsetDateTime,
    id: i64,
}

impl Cursor {
    fn after(event: &EventSummary) -> Self {
        Self {
            received_at: event.received_at,
            id: event.id,
        }
    }

    /// Reads a cursor a previous page gave.
    pub fn parse(value: &str) -> Result<Self, BadParameter> {
        let bad = || BadParameter {
            code: "bad_cursor",
            detail: "cursor must be a next_cursor of a previous page".to_owned(),
        };
        let (micros, id) = value.split_once('_').ok_or_else(bad)?;
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        let id: i64 = id.parse().map_err(|_| bad())?;
        let received_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
            .map_err(|_| bad())?;
        Ok(Self { received_at, id })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}_{}",
            self.received_at.unix_timestamp_nanos() / 1_000,
            self.id
        )
    }
}

/// Checks a status filter against [`STATUSES`].
pub fn parse_status(value: Option<String>) -> Result<Option<String>, BadParameter> {
    match value {
        Some(status) if !STATUSES.contains(&status.as_str()) => Err(BadParameter {
            code: "bad_status",
            detail: format!("status must be one of {}", STATUSES.join(", ")),
        }),
        other => Ok(other),
    }
}

const SUMMARY_COLUMNS: &str = "id, webhook_id, event_type, subject, status, attempts, last_error, \
     received_at, published_at, processed_at";

/// The events the filter selects, newest first.
pub async fn search(pool: &PgPool, filter: &EventFilter) -> Result<EventPage, sqlx::Error> {
    let texts = [&filter.subject, &filter.event_type, &filter.status];
    if !texts
        .iter()
        .copied()
        .flatten()
        .all(|text| super::storable(text))
    {
        return Ok(EventPage {
            events: Vec::new(),
            next_cursor: None,
        });
    }
    let mut query = QueryBuilder::new(format!(
        "SELECT {SUMMARY_COLUMNS} FROM webhook_events WHERE TRUE"
    ));
    if let Some(subject) = &filter.subject {
        query.push(" AND subject = ").push_bind(subject);
    }
    if let Some(event_type) = &filter.event_type {
        query.push(" AND event_type = ").push_bind(event_type);
    }
    if let Some(status) = &filter.status {
        query.push(" AND status = ").push_bind(status);
    }
    if let Some(since) = filter.since {
        query.push(" AND received_at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        query.push(" AND received_at < ").push_bind(until);
    }
    if let Some(cursor) = filter.cursor {
        query
            .push(" AND (received_at, id) < (")
            .push_bind(cursor.received_at)
            .push(", ")
            .push_bind(cursor.id)
            .push(")");
    }
    // One more than asked tells whether another page follows.
    query
        .push(" ORDER BY received_at DESC, id DESC LIMIT ")
        .push_bind(filter.limit + 1);
    let mut events: Vec<EventSummary> = query.build_query_as().fetch_all(pool).await?;
    let next_cursor = if events.len() as i64 > filter.limit {
        events.truncate(filter.limit as usize);
        events.last().map(|last| Cursor::after(last).to_string())
    } else {
        None
    };
    Ok(EventPage {
        events,
        next_cursor,
    })
}

/// The newest events about one user or organisation.
pub async fn recent_for(
    pool: &PgPool,
    subject: &str,
    limit: i64,
) -> Result<Vec<EventSummary>, sqlx::Error> {
    let filter = EventFilter {
        subject: Some(subject.to_owned()),
        limit,
        ..EventFilter::default()
    };
    Ok(search(pool, &filter).await?.events)
}

#[derive(sqlx::FromRow)]
struct DetailRow {
    #[sqlx(flatten)]
    summary: EventSummary,
    payload: Value,
}

/// One event by its svix id, or `None` when it is not stored.
pub async fn detail(pool: &PgPool, webhook_id: &str) -> Result<Option<EventDetail>, sqlx::Error> {
    if !super::storable(webhook_id) {
        return Ok(None);
    }
    let row: Option<DetailRow> = sqlx::query_as(&format!(
        "SELECT {SUMMARY_COLUMNS}, payload FROM webhook_events WHERE webhook_id = $1"
    ))
    .bind(webhook_id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let audit = super::audit::about_event(pool, webhook_id).await?;
    Ok(Some(EventDetail {
        event: row.summary,
        payload: row.payload,
        audit,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_wrote() {
        let cursor = Cursor {
            received_at: OffsetDateTime::from_unix_timestamp_nanos(1_717_000_000_123_456_000)
                .unwrap(),
            id: 42,
        };
        assert_eq!(Cursor::parse(&cursor.to_string()), Ok(cursor));
    }

    #[test]
    fn anything_else_is_a_bad_cursor() {
        for bad in [
            "",
            "12",
            "a_b",
            "1_x",
            "99999999999999999999999999_1",
            "1_2_3",
        ] {
            assert_eq!(Cursor::parse(bad).unwrap_err().code, "bad_cursor", "{bad}");
        }
    }

    #[test]
    fn only_the_six_statuses_are_accepted() {
        assert_eq!(parse_status(Some("dead".into())), Ok(Some("dead".into())));
        assert_eq!(parse_status(None), Ok(None));
        assert_eq!(
            parse_status(Some("lost".into())).unwrap_err().code,
            "bad_status"
        );
    }
}
