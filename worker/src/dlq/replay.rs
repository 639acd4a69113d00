//! `dlq replay`: re-publishes the selected dead letters and removes each
//! from the queue once its re-publish is confirmed.

use std::collections::BTreeSet;

use lapin::{Acker, Connection};
use shared::amqp::{AmqpError, Names, OutgoingEvent, Publisher, HEADER_TRACEPARENT};
use sqlx::PgPool;

use super::{headers::text_header, DeadLetterInfo, DlqError, Reader, REPLAY_BATCH};

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
    progress: &mut (dyn FnMut(u64) + Send),
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
    // A row for every change: a dry run or a replay refused before it moved
    // anything changed nothing.
    if !request.dry_run && (report.replayed > 0 || outcome.is_ok()) {
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
            tracing::warn!(error.message = %shared::error::Chain(&error), "the replay was not written to the audit log");
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
    progress: &mut (dyn FnMut(u64) + Send),
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
                    tracing::warn!(webhook_id = %selected.webhook_id, error.message = %shared::error::Chain(&error),
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
        "SELECT 1 FROM webhook_event_bodies b JOIN webhook_event_states s ON s.event_id = b.id \
         WHERE b.webhook_id = ANY($1) AND s.processed_at IS NULL ORDER BY b.id FOR UPDATE OF s",
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
