//! Applies the deliveries that are ready together: one transaction for all
//! of them, one commit.
//!
//! Each delivery task hands its attempt to [`Batches`] and awaits its own
//! outcome. An applier takes whatever attempts are waiting (up to
//! [`MAX_BATCH`], nothing is held back to fill it) and applies them in one
//! transaction: one statement locks the states of all of them, each event is
//! checked, one statement upserts the users that only one event of the
//! batch concerns, the other handlers are applied in turn, one statement
//! marks the applied ones. Each applier keeps its database connection
//! between batches ([`KeptConnection`]). After the commit every task gets
//! its outcome and only then acks: an event is applied exactly once because
//! its effects and its `processed_at` commit together, as with a
//! transaction of its own, and a redelivery after a crash finds
//! `processed_at` set.
//!
//! One failure never undoes the others. The first try takes no savepoints
//! (nearly every batch commits as it is); when an event fails, the
//! transaction is rolled back, that event keeps its failure, and the others
//! are applied again in one transaction with a savepoint each: an event that
//! fails there rolls back to its savepoint, which undoes its writes and
//! releases its locks and nothing else.
//!
//! When the batch itself fails (`BEGIN`, a savepoint command or the commit:
//! the database went away, say), nothing of it was applied, and every task
//! makes its attempt alone, in a transaction of its own, where the failure
//! is classified as before. So does an event that lost a deadlock or a
//! serialization conflict to another batch: that is the batches' doing, not
//! the event's, so it costs no attempt.
//!
//! Events are locked and applied in svix-id order, so two batches lock event
//! states in the same order; a second copy of an event already in the batch
//! is attempted alone (it waits for the batch's lock, then finds the event
//! applied; should it deadlock with the batch over a row their handlers
//! both write, that is a lost conflict, tried again without counting).
//!
//! At most 32 savepoints per transaction keeps within the subtransactions
//! PostgreSQL tracks per session without overflowing to disk.

use std::{sync::Arc, time::Duration};

use shared::db::kept::KeptConnection;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::Instrument as _;

use shared::event_status::{self, Message, Status};

use super::{apply_one, check, decision::lost_a_conflict, Attempt, Checked};
use crate::{
    credits::Catalog,
    handlers::{self, Event, HandlerError},
};

/// Events per transaction at most.
pub const MAX_BATCH: usize = 32;
/// One savepoint name per position in a batch.
const SAVEPOINTS: [&str; MAX_BATCH] = [
    "e0", "e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9", "e10", "e11", "e12", "e13", "e14",
    "e15", "e16", "e17", "e18", "e19", "e20", "e21", "e22", "e23", "e24", "e25", "e26", "e27",
    "e28", "e29", "e30", "e31",
];
/// How long one batch may take before its applier gives up on its connection
/// and its events are attempted one by one: a batch takes milliseconds, so
/// this only cuts short a connection that stopped answering or a long wait
/// for a lock (the attempts alone wait for it, with the statement timeout).
const BATCH_DEADLINE: Duration = Duration::from_secs(10);
/// Batches applied at once, at most.
pub const MAX_APPLIERS: usize = 16;

/// Deliveries in flight per applier: one applier per full batch.
pub const DELIVERIES_PER_APPLIER: usize = MAX_BATCH;

/// How many batches a worker applies at once: one per
/// [`DELIVERIES_PER_APPLIER`] deliveries in flight (`WORKER_CONCURRENCY`),
/// at least one, at most [`MAX_APPLIERS`]. A batch locks, upserts users and
/// marks its events with one statement each, so a larger batch costs
/// PostgreSQL less per event; while one batch is applied, the deliveries
/// that arrive meanwhile make the next one. With 16 in flight (the default)
/// one applier did better than 2 and 4, and with 64 about as well as 2
/// (BENCHMARKS.md).
pub fn appliers(concurrency: u16) -> usize {
    (usize::from(concurrency) / DELIVERIES_PER_APPLIER).clamp(1, MAX_APPLIERS)
}

/// What a batch answers a delivery task.
pub(crate) enum Outcome {
    /// The attempt committed with the batch (or failed on its own: the error
    /// is the event's).
    Done(Result<Attempt, HandlerError>),
    /// Nothing was applied; make the attempt alone.
    Alone,
}

struct Request {
    webhook_id: String,
    body: Vec<u8>,
    routing_key: String,
    span: tracing::Span,
    reply: oneshot::Sender<Outcome>,
}

/// The handle delivery tasks send their attempts to. The appliers stop when
/// every handle is dropped.
#[derive(Clone)]
pub struct Batches {
    sender: mpsc::Sender<Request>,
}

impl Batches {
    /// Starts `appliers` appliers on `pool` ([`appliers`]).
    pub fn start(pool: PgPool, catalog: Arc<Catalog>, appliers: usize) -> Self {
        let (sender, receiver) = mpsc::channel(MAX_BATCH * appliers.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..appliers {
            let applier = Applier {
                pool: pool.clone(),
                catalog: catalog.clone(),
                receiver: receiver.clone(),
            };
            tokio::spawn(applier.run());
        }
        Self { sender }
    }

    /// Applies one attempt with the next batch.
    pub(crate) async fn attempt(
        &self,
        webhook_id: &str,
        body: &[u8],
        routing_key: &str,
    ) -> Outcome {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            webhook_id: webhook_id.to_owned(),
            body: body.to_vec(),
            routing_key: routing_key.to_owned(),
            span: tracing::Span::current(),
            reply,
        };
        if self.sender.send(request).await.is_err() {
            return Outcome::Alone;
        }
        answer.await.unwrap_or(Outcome::Alone)
    }
}

struct Applier {
    pool: PgPool,
    catalog: Arc<Catalog>,
    receiver: Arc<Mutex<mpsc::Receiver<Request>>>,
}

impl Applier {
    async fn run(self) {
        let mut connection = KeptConnection::new(self.pool.clone(), BATCH_DEADLINE);
        loop {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            {
                let mut receiver = self.receiver.lock().await;
                if receiver.recv_many(&mut batch, MAX_BATCH).await == 0 {
                    return;
                }
            }
            batch.sort_by(|a, b| a.webhook_id.cmp(&b.webhook_id));
            // A copy of an event already in the batch (re-published while the
            // first was in flight) is attempted alone: it waits for the
            // batch's lock on the event and then finds it applied.
            let mut firsts: Vec<Request> = Vec::with_capacity(batch.len());
            for request in batch {
                if firsts
                    .last()
                    .is_some_and(|last| last.webhook_id == request.webhook_id)
                {
                    let _ = request.reply.send(Outcome::Alone);
                } else {
                    firsts.push(request);
                }
            }
            let batch = firsts;
            match self.apply(&mut connection, &batch).await {
                Ok(outcomes) => {
                    for (request, outcome) in batch.into_iter().zip(outcomes) {
                        let _ = request.reply.send(outcome);
                    }
                }
                Err(error) => {
                    tracing::debug!(events = batch.len(), error.message = %shared::error::Chain(&error),
                        "a batch failed; its events are attempted one by one");
                    for request in batch {
                        let _ = request.reply.send(Outcome::Alone);
                    }
                }
            }
        }
    }

    /// The batch in one transaction. An error here means nothing of it
    /// committed, or, when the database did not answer in time, that whether
    /// it committed is unknown: either way every event is then attempted
    /// alone, which finds it applied if it was.
    ///
    /// First without savepoints, the user upserts in one statement, which
    /// nearly always commits. When that statement fails, the batch is
    /// applied again with every upsert on its own, so that a failure is
    /// pinned on its event. When an event fails, the transaction is rolled
    /// back, that event keeps its failure, and the others are applied again,
    /// each in a savepoint.
    async fn apply(
        &self,
        connection: &mut KeptConnection,
        batch: &[Request],
    ) -> Result<Vec<Outcome>, sqlx::Error> {
        let mut together = connection
            .run(async |connection| self.apply_together(connection, batch, true).await)
            .await?;
        if let Together::UpsertsFailed = together {
            together = connection
                .run(async |connection| self.apply_together(connection, batch, false).await)
                .await?;
        }
        let (failed, error) = match together {
            Together::Committed(outcomes) => return Ok(outcomes),
            Together::Failed { index, error } => (index, error),
            // Not joined, the upserts cannot fail together; were it so, each
            // event would still be attempted alone.
            Together::UpsertsFailed => return Ok(batch.iter().map(|_| Outcome::Alone).collect()),
        };
        let others: Vec<&Request> = batch
            .iter()
            .enumerate()
            .filter_map(|(index, request)| (index != failed).then_some(request))
            .collect();
        let mut outcomes = connection
            .run(async |connection| self.apply_in_savepoints(connection, &others).await)
            .await?;
        outcomes.insert(failed, failure(error));
        Ok(outcomes)
    }

    /// Every event of the batch in one transaction, no savepoint: committed,
    /// or rolled back at the first event that failed. The states are locked
    /// and marked with one statement each for the whole batch, and so are
    /// the user upserts when `join_upserts`
    /// ([`handlers::upsert_users_together`]).
    async fn apply_together(
        &self,
        connection: &mut PgConnection,
        batch: &[Request],
        join_upserts: bool,
    ) -> Result<Together, sqlx::Error> {
        let messages: Vec<Message<'_>> = batch
            .iter()
            .map(|request| Message {
                webhook_id: &request.webhook_id,
                body: &request.body,
            })
            .collect();
        let mut tx = connection.begin().await?;
        let rows = event_status::lock(&mut tx, &messages).await?;
        let mut checked = Vec::with_capacity(batch.len());
        for (index, ((request, message), row)) in batch.iter().zip(&messages).zip(rows).enumerate()
        {
            match check(message, &request.routing_key, row) {
                Ok(one) => checked.push(one),
                Err(error) => {
                    tx.rollback().await?;
                    return Ok(Together::Failed { index, error });
                }
            }
        }
        let events: Vec<Option<Event<'_>>> = checked
            .iter()
            .zip(&messages)
            .map(|(one, message)| match one {
                Checked::Ready(ready) => Some(ready.event(message)),
                Checked::Ended(_) => None,
            })
            .collect();
        let together = if join_upserts {
            match handlers::upsert_users_together(&mut tx, &events).await {
                Ok(together) => together,
                Err(error) => {
                    tracing::debug!(error.message = %shared::error::Chain(&error),
                        "the joint user upserts failed; each is applied on its own");
                    tx.rollback().await?;
                    return Ok(Together::UpsertsFailed);
                }
            }
        } else {
            vec![None; events.len()]
        };
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut applied: Vec<(i64, Status)> = Vec::with_capacity(batch.len());
        for (index, (((request, message), one), together)) in batch
            .iter()
            .zip(&messages)
            .zip(checked)
            .zip(together)
            .enumerate()
        {
            let attempt = match (one, together) {
                (Checked::Ended(attempt), _) => Ok(attempt),
                (Checked::Ready(ready), Some(done)) => Ok(ready.done(done)),
                (Checked::Ready(ready), None) => {
                    handlers::apply(&mut tx, &ready.event(message), &self.catalog)
                        .instrument(request.span.clone())
                        .await
                        .map(|done| ready.done(done))
                }
            };
            match attempt {
                Ok(attempt) => {
                    if let Attempt::Done {
                        event_id,
                        applied: done,
                        ..
                    } = &attempt
                    {
                        applied.push((*event_id, done.status()));
                    }
                    outcomes.push(Outcome::Done(Ok(attempt)));
                }
                Err(error) => {
                    tx.rollback().await?;
                    return Ok(Together::Failed { index, error });
                }
            }
        }
        event_status::mark_applied(&mut tx, &applied).await?;
        tx.commit().await?;
        Ok(Together::Committed(outcomes))
    }

    /// Every event in a savepoint of its own, in one transaction: an event
    /// that fails rolls back to its savepoint and the others commit.
    async fn apply_in_savepoints(
        &self,
        connection: &mut PgConnection,
        batch: &[&Request],
    ) -> Result<Vec<Outcome>, sqlx::Error> {
        let mut tx = connection.begin().await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for (index, request) in batch.iter().enumerate() {
            // Each event's savepoint nests in the previous one's rather than
            // releasing it first: one round trip per event instead of two.
            let savepoint = SAVEPOINTS[index];
            sqlx::query(&format!("SAVEPOINT {savepoint}"))
                .execute(&mut *tx)
                .await?;
            let attempt = self.apply_one(&mut tx, request).await;
            // Whatever did not apply leaves nothing behind, its locks included.
            if !matches!(attempt, Ok(Attempt::Done { .. })) {
                sqlx::query(&format!("ROLLBACK TO SAVEPOINT {savepoint}"))
                    .execute(&mut *tx)
                    .await?;
            }
            outcomes.push(match attempt {
                Ok(attempt) => Outcome::Done(Ok(attempt)),
                Err(error) => failure(error),
            });
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn apply_one(
        &self,
        tx: &mut sqlx::PgConnection,
        request: &Request,
    ) -> Result<Attempt, HandlerError> {
        apply_one(
            tx,
            &self.catalog,
            &request.webhook_id,
            &request.body,
            &request.routing_key,
        )
        .instrument(request.span.clone())
        .await
    }
}

/// How the batch went without savepoints.
enum Together {
    Committed(Vec<Outcome>),
    /// Rolled back: the event at `index` failed.
    Failed {
        index: usize,
        error: HandlerError,
    },
    /// Rolled back: the joint user upserts failed, so which event failed
    /// is not known.
    UpsertsFailed,
}

/// The outcome of an event that failed in a batch: its own failure, unless it
/// lost a conflict with another transaction (then it goes again alone).
fn failure(error: HandlerError) -> Outcome {
    if lost_a_conflict(&error) {
        Outcome::Alone
    } else {
        Outcome::Done(Err(error))
    }
}
