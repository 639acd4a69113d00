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

use std::collections::{BTreeSet, VecDeque};

use lapin::{
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions},
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable},
    Acker, BasicProperties, Channel, Connection, ErrorKind,
};
use serde::Serialize;
use shared::amqp::{
    AmqpError, Names, OutgoingEvent, Publisher, HEADER_ATTEMPTS, HEADER_DEAD_LETTERED_AT,
    HEADER_LAST_ERROR, HEADER_TRACEPARENT, HEADER_TYPE,
};
use sqlx::PgPool;

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
    #[error("RabbitMQ {operation} failed: {source}")]
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
    #[error("PostgreSQL failed: {0}")]
    Database(#[from] sqlx::Error),
    /// A re-publish was not confirmed; that message stays in the queue.
    #[error("re-publishing failed: {0}")]
    Republish(AmqpError),
    /// A replay stopped part-way; the messages replayed stay replayed, the
    /// rest stay in the queue.
    #[error("stopped after replaying {replayed} message(s): {source}")]
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

/// One dead letter, as `dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterInfo {
    /// The svix id (the message id); absent on a message published without one.
    pub svix_id: Option<String>,
    /// The event type.
    #[serde(rename = "type")]
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
    fn from_message(routing_key: &str, properties: &BasicProperties) -> Self {
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

fn text_header(headers: &FieldTable, name: &str) -> Option<String> {
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

/// Acks sent between two barriers (see [`Reader::barrier`]).
const ACKS_PER_BARRIER: usize = 16;

/// A channel on the dead-letter queue. Every message it fetched stays unacked
/// until it is acked (replayed) or, at [`Reader::release`], handed back.
struct Reader {
    channel: Channel,
    queue: String,
    /// Messages a barrier fetched, handed out by `next` before new ones.
    lookahead: VecDeque<BasicGetMessage>,
    /// Acks sent since the last `basic.get`.
    acks_since_get: usize,
    /// Whether this channel fetched anything.
    fetched: bool,
}

impl Reader {
    /// Opens a channel and checks that the queue exists.
    async fn open(connection: &Connection, names: &Names) -> Result<Self, DlqError> {
        let queue = names.dead_letter_queue.clone();
        let channel = connection
            .create_channel()
            .await
            .map_err(broker("channel.open"))?;
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(_) => Ok(Self {
                channel,
                queue,
                lookahead: VecDeque::new(),
                acks_since_get: 0,
                fetched: false,
            }),
            Err(error) if is_not_found(&error) => Err(DlqError::NoQueue { queue }),
            Err(error) => Err(broker("queue.declare")(error)),
        }
    }

    /// The next message, held unacked; `None` once the queue has no more.
    async fn next(&mut self) -> Result<Option<BasicGetMessage>, DlqError> {
        match self.lookahead.pop_front() {
            Some(message) => Ok(Some(message)),
            None => self.get().await,
        }
    }

    async fn get(&mut self) -> Result<Option<BasicGetMessage>, DlqError> {
        let message = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions::default())
            .await
            .map_err(broker("basic.get"))?;
        self.acks_since_get = 0;
        self.fetched |= message.is_some();
        Ok(message)
    }

    /// Acks a message: it leaves the queue.
    async fn ack(&mut self, acker: &Acker) -> Result<(), DlqError> {
        acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(broker("basic.ack"))?;
        self.acks_since_get += 1;
        if self.acks_since_get >= ACKS_PER_BARRIER {
            self.barrier().await?;
        }
        Ok(())
    }

    /// A `basic.get`, which the queue answers only after applying everything
    /// this channel sent before it. The broker's channel holds acks back
    /// once a few dozen are unapplied and sends them later, and the ones
    /// still held back when the channel closes are lost: the queue would then
    /// hand acked messages back. A barrier every few acks prevents that. A
    /// message it fetches is handed out by `next`.
    async fn barrier(&mut self) -> Result<(), DlqError> {
        if let Some(message) = self.get().await? {
            self.lookahead.push_back(message);
        }
        Ok(())
    }

    /// Hands every message not acked back to the queue, with one `nack` in the
    /// order they were fetched (each goes behind the others), and closes the
    /// channel. If that fails, closing the channel hands them back anyway.
    async fn release(mut self) {
        if self.acks_since_get > 0 {
            if let Err(error) = self.barrier().await {
                tracing::debug!(error.message = %error, "barrier before release failed");
            }
        }
        if self.fetched {
            let every_unacked = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            if let Err(error) = self.channel.basic_nack(0, every_unacked).await {
                tracing::debug!(error.message = %error, "nack failed");
            }
        }
        let _ = self.channel.close(200, "done".into()).await;
    }
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
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

/// Which dead letters to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These svix ids; every one must be in the queue.
    Ids(Vec<String>),
    /// Every dead letter of this type.
    Type(String),
    /// Every dead letter.
    All,
}

impl Selection {
    /// The selection as the audit log records it.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            Selection::Ids(ids) => serde_json::json!({"ids": ids}),
            Selection::Type(event_type) => serde_json::json!({"type": event_type}),
            Selection::All => serde_json::json!({"all": true}),
        }
    }
}

impl Selection {
    fn selects(&self, info: &DeadLetterInfo) -> bool {
        match self {
            Self::Ids(ids) => info.svix_id.as_ref().is_some_and(|id| ids.contains(id)),
            Self::Type(event_type) => &info.event_type == event_type,
            Self::All => true,
        }
    }
}

/// What to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    /// Which dead letters.
    pub selection: Selection,
    /// Only report what would be replayed.
    pub dry_run: bool,
    /// Who asked, for the audit log.
    pub actor: String,
}

/// What a replay did (or, on a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// The queue's name.
    pub queue: String,
    /// Messages re-published and removed from the queue (0 on a dry run).
    pub replayed: u64,
    /// On a dry run, the dead letters a real run would replay.
    pub would_replay: Vec<DeadLetterInfo>,
    /// Selected messages left in the queue because they have no message id,
    /// which the worker would dead-letter again at once.
    pub without_id: u64,
    /// Selected messages left in the queue because a message with the same id
    /// was replayed in this run (a second copy, or one that failed again).
    pub repeated: u64,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

impl std::fmt::Display for ReplayReport {
    /// `replayed=N`, or `would_replay=N` on a dry run.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dry_run {
            write!(f, "would_replay={}", self.would_replay.len())
        } else {
            write!(f, "replayed={}", self.replayed)
        }
    }
}

/// A selected dead letter, with what its re-publish needs.
struct Selected {
    webhook_id: String,
    info: DeadLetterInfo,
    body: Vec<u8>,
    traceparent: Option<String>,
    acker: Acker,
}

/// Re-publishes the selected dead letters to the events exchange and removes
/// each from the dead-letter queue once its re-publish is confirmed. Messages
/// not selected stay where they were. With ids, every id must be in the queue,
/// otherwise nothing changes. An id is replayed at most once per run, so a
/// message that fails again meanwhile is not replayed twice.
/// `progress` is called with the running total after each batch.
pub async fn replay(
    pool: &PgPool,
    connection: &Connection,
    names: &Names,
    request: &ReplayRequest,
    progress: &mut dyn FnMut(u64),
) -> Result<ReplayReport, DlqError> {
    let mut reader = Reader::open(connection, names).await?;
    let mut report = ReplayReport {
        queue: reader.queue.clone(),
        dry_run: request.dry_run,
        ..ReplayReport::default()
    };
    let outcome = replay_with(
        pool,
        connection,
        names,
        request,
        &mut reader,
        &mut report,
        progress,
    )
    .await;
    // Whatever was not replayed goes back, also after an error.
    reader.release().await;
    if !request.dry_run {
        let audited = crate::audit::record(
            pool,
            &crate::audit::Action {
                action_type: "dlq_replay",
                actor: &request.actor,
                details: serde_json::json!({
                    "selection": request.selection.describe(),
                    "replayed": report.replayed,
                    "completed": outcome.is_ok(),
                }),
            },
        )
        .await;
        if let Err(error) = audited {
            tracing::warn!(error.message = %error, "the replay was not written to the audit log");
        }
    }
    match outcome {
        Ok(()) => Ok(report),
        Err(error) if report.replayed > 0 => Err(DlqError::Stopped {
            replayed: report.replayed,
            source: Box::new(error),
        }),
        Err(error) => Err(error),
    }
}

async fn replay_with(
    pool: &PgPool,
    connection: &Connection,
    names: &Names,
    request: &ReplayRequest,
    reader: &mut Reader,
    report: &mut ReplayReport,
    progress: &mut dyn FnMut(u64),
) -> Result<(), DlqError> {
    let publisher = if request.dry_run {
        None
    } else {
        Some(
            Publisher::open(connection, names)
                .await
                .map_err(DlqError::Publisher)?,
        )
    };
    // With ids, every id must be found before anything changes; otherwise
    // batches go out while the queue is read.
    let streaming = !matches!(request.selection, Selection::Ids(_));
    let mut pending: Vec<Selected> = Vec::new();
    // Ids taken in this run. A message with one of them fetched later is a
    // second copy or, while batches go out, one that failed again since: it
    // stays for the operator to look at.
    let mut taken: BTreeSet<String> = BTreeSet::new();
    while let Some(message) = reader.next().await? {
        let delivery = message.delivery;
        let info =
            DeadLetterInfo::from_message(delivery.routing_key.as_str(), &delivery.properties);
        if !request.selection.selects(&info) {
            continue;
        }
        let Some(webhook_id) = info.svix_id.clone() else {
            report.without_id += 1;
            continue;
        };
        if !taken.insert(webhook_id.clone()) {
            report.repeated += 1;
            continue;
        }
        let traceparent = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| text_header(h, HEADER_TRACEPARENT));
        pending.push(Selected {
            webhook_id,
            info,
            body: delivery.data,
            traceparent,
            acker: delivery.acker,
        });
        if let (true, Some(publisher)) = (streaming, &publisher) {
            if pending.len() >= REPLAY_BATCH {
                let batch = std::mem::take(&mut pending);
                replay_batch(pool, publisher, reader, batch, report).await?;
                progress(report.replayed);
            }
        }
    }
    if let Selection::Ids(ids) = &request.selection {
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !taken.contains(*id))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !missing.is_empty() {
            return Err(DlqError::NotInQueue {
                queue: reader.queue.clone(),
                missing,
            });
        }
    }
    let Some(publisher) = publisher else {
        report.would_replay = pending.into_iter().map(|s| s.info).collect();
        return Ok(());
    };
    while !pending.is_empty() {
        let rest = pending.split_off(pending.len().min(REPLAY_BATCH));
        let batch = std::mem::replace(&mut pending, rest);
        replay_batch(pool, &publisher, reader, batch, report).await?;
        progress(report.replayed);
    }
    Ok(())
}

/// Replays one batch: resets the rows, re-publishes, and acks each message
/// whose re-publish was confirmed. The others stay in the queue.
async fn replay_batch(
    pool: &PgPool,
    publisher: &Publisher,
    reader: &mut Reader,
    batch: Vec<Selected>,
    report: &mut ReplayReport,
) -> Result<(), DlqError> {
    let confirms = republish(pool, publisher, &batch).await?;
    let mut failure = None;
    for (selected, confirm) in batch.iter().zip(confirms) {
        match confirm {
            Ok(()) => {
                report.replayed += 1;
                if let Err(error) = reader.ack(&selected.acker).await {
                    // It was replayed, but it stays in the queue as well;
                    // replaying it again would be harmless.
                    tracing::warn!(webhook_id = %selected.webhook_id, error.message = %error,
                        "replayed, but removing it from the dead-letter queue failed");
                    return Err(error);
                }
            }
            Err(error) => {
                failure.get_or_insert(DlqError::Republish(error));
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Re-publishes a batch with confirms. Its rows are locked first and reset
/// (only those whose re-publish was confirmed) in the same transaction, so a
/// worker that receives a copy at once waits for the reset.
async fn republish(
    pool: &PgPool,
    publisher: &Publisher,
    batch: &[Selected],
) -> Result<Vec<Result<(), AmqpError>>, DlqError> {
    let ids: Vec<String> = batch
        .iter()
        .map(|s| s.webhook_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "SELECT 1 FROM webhook_events WHERE webhook_id = ANY($1) AND processed_at IS NULL \
         ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    let outgoing: Vec<OutgoingEvent<'_>> = batch
        .iter()
        .map(|s| OutgoingEvent {
            webhook_id: &s.webhook_id,
            event_type: &s.info.event_type,
            body: &s.body,
            traceparent: s.traceparent.as_deref(),
        })
        .collect();
    let confirms = publisher.publish_all(&outgoing).await;
    let confirmed: Vec<&str> = batch
        .iter()
        .zip(&confirms)
        .filter(|(_, confirm)| confirm.is_ok())
        .map(|(s, _)| s.webhook_id.as_str())
        .collect();
    shared::event_status::restart_replayed(&mut tx, &confirmed).await?;
    tx.commit().await?;
    Ok(confirms)
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
