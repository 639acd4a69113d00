//! `worker dlq list` and `worker dlq replay`: the dead-letter queue as an
//! operator sees it.
//!
//! Both read the queue with `basic.get` without acknowledging, and keep every
//! message they fetched unacknowledged until they are done: a message handed
//! back earlier would be the next one `basic.get` returns. At the end every
//! message that stays is handed back (`nack` with requeue). The broker puts a
//! message handed back behind the others, so they go back in the order they
//! were read, and listing leaves the queue as it was, order included. If the
//! process dies instead, the broker hands them back when the connection drops.
//!
//! A replayed message leaves the queue only once its re-publish to the events
//! exchange is confirmed. Before that, its `webhook_events` row is reset
//! (`status = 'published'`, `attempts = 0`, `last_error = NULL`, unless it was
//! processed) in a transaction that keeps the row locked until the confirm, so
//! a worker that receives the copy at once waits for the reset rather than
//! dead-lettering it again.
//!
//! The queue is read by [`reader`], each message described by [`headers`],
//! and the replay lives in [`replay`](mod@replay).

mod headers;
mod reader;
mod replay;

use lapin::Connection;
use shared::amqp::{AmqpError, Names};
use sqlx::PgPool;

pub use headers::DeadLetterInfo;
pub use replay::{replay, ReplayReport, ReplayRequest, Selection};

use reader::Reader;

/// Dead letters `dlq list` shows unless told otherwise.
pub const DEFAULT_LIST_LIMIT: u32 = 100;

/// Messages re-published per batch of confirms.
pub const REPLAY_BATCH: usize = 100;

/// Longest last error a table row shows, in characters.
const TABLE_ERROR_WIDTH: usize = 100;

/// Dead-letter queue failures.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// The queue is not declared on the broker.
    #[error("the dead-letter queue {queue} does not exist (is AMQP_PREFIX right?)")]
    NoQueue {
        /// Its name.
        queue: String,
    },
    /// A broker operation failed.
    #[error("RabbitMQ {operation} failed")]
    Broker {
        /// What was being done.
        operation: &'static str,
        /// The cause.
        #[source]
        source: lapin::Error,
    },
    /// Opening the publisher failed.
    #[error(transparent)]
    Publisher(AmqpError),
    /// Some requested ids are not in the queue; nothing was replayed.
    #[error("not in the dead-letter queue {queue}: {}; nothing was replayed", missing.join(", "))]
    NotInQueue {
        /// The queue's name.
        queue: String,
        /// The ids not found.
        missing: Vec<String>,
    },
    /// The database failed.
    #[error("PostgreSQL failed")]
    Database(#[from] sqlx::Error),
    /// A re-publish was not confirmed; that message stays in the queue.
    #[error("re-publishing failed")]
    Republish(AmqpError),
    /// A replay stopped part-way; the messages replayed stay replayed, the
    /// rest stay in the queue.
    #[error("stopped after replaying {replayed} message(s)")]
    Stopped {
        /// Messages replayed before the failure.
        replayed: u64,
        /// The cause.
        #[source]
        source: Box<DlqError>,
    },
}

fn broker(operation: &'static str) -> impl FnOnce(lapin::Error) -> DlqError {
    move |source| DlqError::Broker { operation, source }
}

/// The dead letters `dlq list` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqListing {
    /// The queue's name.
    pub queue: String,
    /// The first dead letters, oldest first, at most the limit.
    pub entries: Vec<DeadLetterInfo>,
    /// Dead letters in the queue when it was read (may exceed `entries`).
    pub total: u64,
}

impl DlqListing {
    /// The entries as one JSON array.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.entries).unwrap_or_else(|_| "[]".to_owned())
    }

    /// A table for people, with a summary line; says so when the queue is empty.
    pub fn to_table(&self) -> String {
        if self.entries.is_empty() {
            return format!("no dead letters in {}\n", self.queue);
        }
        let header = [
            "SVIX ID",
            "TYPE",
            "ATTEMPTS",
            "DEAD-LETTERED AT",
            "LAST ERROR",
        ];
        let rows: Vec<[String; 5]> = self
            .entries
            .iter()
            .map(|e| {
                [
                    e.svix_id.clone().unwrap_or_else(|| "-".to_owned()),
                    e.event_type.clone(),
                    e.attempts.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                    e.dead_lettered_at.clone().unwrap_or_else(|| "-".to_owned()),
                    e.last_error
                        .as_deref()
                        .map_or_else(|| "-".to_owned(), one_line),
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: [&str; 5]| {
            let mut text = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    text.push_str(cell);
                } else {
                    text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(header);
        for row in &rows {
            line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
        }
        let shown = self.entries.len() as u64;
        if self.total > shown {
            out.push_str(&format!(
                "{shown} of {} dead letters in {} shown; use --limit to see more\n",
                self.total, self.queue
            ));
        } else {
            out.push_str(&format!("{shown} dead letter(s) in {}\n", self.queue));
        }
        out
    }
}

/// An error on one line, cut to the table's width.
fn one_line(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > TABLE_ERROR_WIDTH {
        let cut: String = flat.chars().take(TABLE_ERROR_WIDTH - 1).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

/// Lists the first `limit` dead letters, oldest first, and leaves the queue
/// as it was. The broker puts a message handed back behind the others, so
/// every message in the queue is read and they are all handed back in their
/// order; that keeps the order too. Where a message carries no attempt count at
/// all, the count stored in `webhook_events` is shown.
pub async fn list(
    pool: &PgPool,
    connection: &Connection,
    names: &Names,
    limit: u32,
) -> Result<DlqListing, DlqError> {
    let mut reader = Reader::open(connection, names).await?;
    let mut entries = Vec::new();
    let mut fetched = 0u64;
    let read = async {
        // The queue's message count may lag behind messages just handed back;
        // reading until the broker has none left does not.
        while let Some(message) = reader.next().await? {
            fetched += 1;
            let delivery = message.delivery;
            if entries.len() < limit as usize {
                entries.push(DeadLetterInfo::from_message(
                    delivery.routing_key.as_str(),
                    &delivery.properties,
                ));
            }
        }
        Ok::<_, DlqError>(())
    };
    let read = read.await;
    let queue = reader.queue.clone();
    reader.release().await;
    read?;
    fill_attempts_from_store(pool, &mut entries).await?;
    Ok(DlqListing {
        queue,
        entries,
        total: fetched,
    })
}

/// Fills in the attempts of dead letters that carry none from `webhook_events`.
async fn fill_attempts_from_store(
    pool: &PgPool,
    entries: &mut [DeadLetterInfo],
) -> Result<(), DlqError> {
    let unknown: Vec<String> = entries
        .iter()
        .filter(|e| e.attempts.is_none())
        .filter_map(|e| e.svix_id.clone())
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let stored: Vec<(String, i32)> = sqlx::query_as(
        "SELECT webhook_id, attempts FROM webhook_events WHERE webhook_id = ANY($1)",
    )
    .bind(&unknown)
    .fetch_all(pool)
    .await?;
    for entry in entries.iter_mut().filter(|e| e.attempts.is_none()) {
        entry.attempts = stored
            .iter()
            .find(|(id, _)| Some(id) == entry.svix_id.as_ref())
            .map(|(_, attempts)| i64::from(*attempts));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_keeps_each_dead_letter_on_one_line() {
        let listing = DlqListing {
            queue: "clerk.events.dlq".to_owned(),
            entries: vec![DeadLetterInfo {
                svix_id: Some("msg_1".to_owned()),
                event_type: "user.created".to_owned(),
                attempts: Some(5),
                last_error: Some(format!("first line\nsecond {}", "x".repeat(200))),
                dead_lettered_at: None,
            }],
            total: 3,
        };

        let table = listing.to_table();

        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("SVIX ID"));
        assert!(lines[1].starts_with("msg_1"));
        assert!(lines[1].contains("first line second x"));
        assert!(lines[1].ends_with('…'));
        assert!(lines[2].contains("1 of 3"));
        assert_eq!(
            DlqListing {
                entries: vec![],
                total: 0,
                ..listing
            }
            .to_table(),
            "no dead letters in clerk.events.dlq\n"
        );
    }
}
