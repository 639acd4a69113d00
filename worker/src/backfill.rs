//! Fills `webhook_event_bodies.subject` (`webhook_events.subject`) for the events stored before the ingress
//! computed it, in small batches (each its own short statement), so the
//! ingress's inserts never wait for it. Idempotent: concurrent runs (several
//! workers starting) only repeat each other's reads.

use shared::event_status::PAYLOAD;
use sqlx::PgPool;

/// Events read (and updated) per statement.
pub const BATCH: i64 = 1000;

/// Fills the subject of every event that has none and names one; returns
/// how many were filled. Events that concern no user or organization keep a
/// null subject.
pub async fn event_subjects(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut after = 0i64;
    let mut filled = 0u64;
    loop {
        let rows: Vec<(i64, String, serde_json::Value)> = sqlx::query_as(&format!(
            "SELECT id, event_type, {PAYLOAD} FROM webhook_event_bodies \
             WHERE subject IS NULL AND id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after)
        .bind(BATCH)
        .fetch_all(pool)
        .await?;
        let Some((last, _, _)) = rows.last() else {
            return Ok(filled);
        };
        after = *last;
        let (ids, subjects): (Vec<i64>, Vec<String>) = rows
            .iter()
            .filter_map(|(id, event_type, payload)| {
                let data = payload.get("data")?;
                shared::event::subject(event_type, data).map(|subject| (*id, subject))
            })
            .unzip();
        if ids.is_empty() {
            continue;
        }
        let updated = sqlx::query(
            "UPDATE webhook_event_bodies AS e SET subject = b.subject \
             FROM UNNEST($1::bigint[], $2::text[]) AS b(id, subject) \
             WHERE e.id = b.id AND e.subject IS NULL",
        )
        .bind(&ids)
        .bind(&subjects)
        .execute(pool)
        .await?;
        filled += updated.rows_affected();
    }
}
