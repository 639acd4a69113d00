//! Group commit: concurrent requests share one multi-row INSERT and one
//! commit, and each is answered only once its own row is committed.
//!
//! Requests queue their verified events on a channel. A few writer tasks each
//! take whatever is waiting (up to [`MAX_BATCH`]), insert it in one statement
//! (`ON CONFLICT (webhook_id) DO NOTHING`) and reply to every request of the
//! batch. There is no timer: under light load a batch holds one event and is
//! written at once; under heavy load events gather while the previous commit
//! is in flight. Copies of one svix-id inside a batch are answered like copies
//! across batches: the first is stored, the others are duplicates.

use std::{collections::HashSet, sync::Arc, time::Duration};

use shared::db::kept::KeptConnection;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot, Mutex, Notify};

/// Events written by one statement at most.
pub const MAX_BATCH: usize = 256;
/// Writer tasks: statements in flight at once. Measured at 16 connections on
/// 2 cores with connections kept between batches (BENCHMARKS.md): 1 beat 2
/// and 3 (larger batches: fewer statements and commits, less PostgreSQL
/// CPU per request, with p99 latency no worse).
pub const WRITERS: usize = 1;
/// How long one batch's insert may take before its writer gives up on its
/// connection and answers an error: well within the requests' own
/// `STORE_TIMEOUT`, so they hear of it.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// Events waiting for a writer before new requests wait for room.
const QUEUE: usize = 4096;

/// A verified event to store.
pub struct NewEvent {
    pub webhook_id: String,
    pub event_type: String,
    /// The user or organization it concerns (`shared::event::subject`).
    pub subject: Option<String>,
    /// The exact signed bytes: JSON, so UTF-8.
    pub raw_body: bytes::Bytes,
    /// jsonb surely accepts the body (`shared::event::jsonb_accepts`): the
    /// statement need not parse it again.
    pub jsonb_safe: bool,
    pub traceparent: String,
}

/// How a store request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Committed now.
    New,
    /// The svix-id was already stored (or stored by an earlier copy of the batch).
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database cannot store this body as JSON")]
    Unstorable,
    #[error("storing the event failed")]
    Database(#[from] sqlx::Error),
    #[error("the store is shutting down")]
    Closed,
    #[error("the database did not commit in time")]
    TimedOut,
}

struct Request {
    event: NewEvent,
    reply: oneshot::Sender<Result<Stored, StoreError>>,
}

/// The requests' side of the group commit.
#[derive(Clone)]
pub struct Store {
    sender: mpsc::Sender<Request>,
}

impl Store {
    /// Starts the writer tasks. They stop when every `Store` clone is dropped.
    pub fn start(pool: PgPool, relay_wakeup: Arc<Notify>) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..WRITERS {
            let writer = Writer {
                connection: KeptConnection::new(pool.clone(), WRITE_DEADLINE),
                receiver: receiver.clone(),
                relay_wakeup: relay_wakeup.clone(),
            };
            tokio::spawn(writer.run());
        }
        Self { sender }
    }

    /// Stores one event; returns once it is committed (or known).
    pub async fn store(&self, event: NewEvent) -> Result<Stored, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Request { event, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

struct Writer {
    /// Kept between batches: no pool checkout per commit.
    connection: KeptConnection,
    receiver: Arc<Mutex<mpsc::Receiver<Request>>>,
    relay_wakeup: Arc<Notify>,
}

impl Writer {
    async fn run(mut self) {
        loop {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            {
                let mut receiver = self.receiver.lock().await;
                if receiver.recv_many(&mut batch, MAX_BATCH).await == 0 {
                    return;
                }
            }
            self.write(batch).await;
        }
    }

    async fn write(&mut self, batch: Vec<Request>) {
        // The first copy of each svix-id is inserted; later copies in the same
        // batch are duplicates of it.
        let mut seen = HashSet::with_capacity(batch.len());
        let (mut firsts, copies): (Vec<Request>, Vec<Request>) = batch
            .into_iter()
            .partition(|r| seen.insert(r.event.webhook_id.clone()));
        // Concurrent batches take their unique-index locks in the same order,
        // so two batches holding the same svix-ids cannot deadlock.
        firsts.sort_by(|a, b| a.event.webhook_id.cmp(&b.event.webhook_id));
        match self.insert_batch(&firsts).await {
            Ok(inserted) => {
                if !inserted.is_empty() {
                    self.relay_wakeup.notify_one();
                }
                for request in firsts {
                    let outcome = if inserted.contains(&request.event.webhook_id) {
                        Stored::New
                    } else {
                        Stored::Duplicate
                    };
                    let _ = request.reply.send(Ok(outcome));
                }
                for request in copies {
                    let _ = request.reply.send(Ok(Stored::Duplicate));
                }
            }
            Err(error) if is_unstorable(&error) && firsts.len() + copies.len() > 1 => {
                // One body PostgreSQL refuses must not fail the others: write
                // this batch one event at a time.
                for request in firsts.into_iter().chain(copies) {
                    let result = self
                        .insert_batch(std::slice::from_ref(&request))
                        .await
                        .map(|inserted| {
                            if inserted.is_empty() {
                                Stored::Duplicate
                            } else {
                                self.relay_wakeup.notify_one();
                                Stored::New
                            }
                        })
                        .map_err(classify);
                    let _ = request.reply.send(result);
                }
            }
            Err(error) => {
                let unstorable = is_unstorable(&error);
                let message = shared::error::Chain(&error).to_string();
                for request in firsts.into_iter().chain(copies) {
                    let answer = if unstorable {
                        StoreError::Unstorable
                    } else {
                        StoreError::Database(sqlx::Error::Protocol(message.clone()))
                    };
                    let _ = request.reply.send(Err(answer));
                }
            }
        }
    }

    /// [`insert`] on the kept connection, once more on a fresh one when the
    /// kept one was gone (a repeat stores nothing twice: a row the first try
    /// committed is then a duplicate).
    async fn insert_batch(&mut self, batch: &[Request]) -> Result<HashSet<String>, sqlx::Error> {
        let result = self
            .connection
            .run(async |connection| insert(connection, batch).await)
            .await;
        match result {
            Err(error) if self.connection.lost_while_kept(&error) => {
                tracing::debug!(error.message = %shared::error::Chain(&error),
                    "the kept database connection was gone; storing the batch on a fresh one");
                self.connection
                    .run(async |connection| insert(connection, batch).await)
                    .await
            }
            other => other,
        }
    }
}

/// Inserts the batch in one statement; returns the svix-ids it stored.
async fn insert(
    connection: &mut PgConnection,
    batch: &[Request],
) -> Result<HashSet<String>, sqlx::Error> {
    let mut ids = Vec::with_capacity(batch.len());
    let mut types = Vec::with_capacity(batch.len());
    let mut subjects = Vec::with_capacity(batch.len());
    let mut bodies = Vec::with_capacity(batch.len());
    let mut traceparents = Vec::with_capacity(batch.len());
    let mut safe = Vec::with_capacity(batch.len());
    for request in batch {
        let event = &request.event;
        ids.push(event.webhook_id.as_str());
        types.push(event.event_type.as_str());
        subjects.push(event.subject.as_deref());
        bodies.push(event.raw_body.as_ref());
        traceparents.push(event.traceparent.as_str());
        safe.push(event.jsonb_safe);
    }
    // The body is stored once, as its bytes (the view reads the payload from
    // them). The cast refuses what jsonb cannot hold, as the payload column
    // did; it is skipped for a body the ingress proved jsonb accepts, in a
    // UTF-8 database (in another, converting the text may still fail). The
    // parse was a tenth of PostgreSQL's time per request, on the writer's
    // critical path.
    let stored: Vec<String> = sqlx::query_scalar(
        "WITH stored AS (\
             INSERT INTO webhook_event_bodies \
                 (webhook_id, event_type, raw_body, traceparent, subject) \
             SELECT id, kind, body, traceparent, subject \
             FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], \
                         $6::bool[]) \
                  AS batch(id, kind, body, traceparent, subject, safe) \
             WHERE CASE WHEN safe AND current_setting('server_encoding') = 'UTF8' THEN true \
                        ELSE convert_from(body, 'UTF8')::jsonb IS NOT NULL END \
             ON CONFLICT (webhook_id) DO NOTHING RETURNING id, webhook_id), \
         state AS (INSERT INTO webhook_event_states (event_id) SELECT id FROM stored) \
         SELECT webhook_id FROM stored",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&bodies)
    .bind(&traceparents)
    .bind(&subjects)
    .bind(&safe)
    .fetch_all(connection)
    .await?;
    Ok(stored.into_iter().collect())
}

/// JSON that serde accepts but PostgreSQL's jsonb does not (a `\u0000`
/// escape, 22P05 or 22P02; a number past numeric's range, 22003; text the
/// database's encoding cannot hold, 22P05 or 22021) is the sender's
/// problem, not an outage.
fn is_unstorable(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| matches!(code.as_ref(), "22P05" | "22P02" | "22003" | "22021"))
}

fn classify(error: sqlx::Error) -> StoreError {
    if is_unstorable(&error) {
        StoreError::Unstorable
    } else {
        StoreError::Database(error)
    }
}
