//! The worker's operator commands as an operator runs them: the built binary
//! against a test's database and broker prefix, with its output captured; and
//! helpers to put messages straight into the dead-letter queue.

use std::{
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

use lapin::{options::QueueDeclareOptions, types::FieldTable};
use shared::amqp::{DeadLetter, OutgoingEvent, Publisher};

use crate::{broker::TestBroker, db::TestDb};

/// How long one command may take before the test gives up on it.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// A command that ran to its end.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The last line written to stdout.
    pub fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }
}

/// Runs `worker <args>` against `db` and `broker`'s prefix; `env` is applied
/// last, so it can override the connection settings.
pub async fn run_worker(
    db: &TestDb,
    broker: &TestBroker,
    args: &[&str],
    env: &[(&str, &str)],
) -> Finished {
    run_worker_at(&db.url(None), &broker.prefix, args, env).await
}

/// Runs `worker <args>` against `database_url` and the test broker with
/// `prefix`; `env` is applied last.
pub async fn run_worker_at(
    database_url: &str,
    prefix: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Finished {
    let mut command = Command::new(crate::binary("worker"));
    command.args(args);
    for name in [
        "DATABASE_URL",
        "AMQP_URL",
        "AMQP_PREFIX",
        "WORKER_OPS_ADDR",
        "LOG_FORMAT",
        "RUST_LOG",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        command.env_remove(name);
    }
    command
        .env("DATABASE_URL", database_url)
        .env("AMQP_URL", crate::amqp_url())
        .env("AMQP_PREFIX", prefix)
        .env("DATABASE_WAIT_SECS", "5")
        .env("LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().expect("spawn worker");
    let pid = child.id();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = match tokio::time::timeout(COMMAND_DEADLINE, waiting).await {
        Ok(joined) => joined.expect("join").expect("wait for worker"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("worker {args:?} still running after {COMMAND_DEADLINE:?}");
        }
    };
    Finished {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Messages ready in `queue`.
pub async fn queue_depth(broker: &TestBroker, queue: &str) -> u32 {
    broker
        .channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare")
        .message_count()
}

/// Messages ready in the dead-letter queue.
pub async fn dlq_depth(broker: &TestBroker) -> u32 {
    queue_depth(broker, &broker.names.dead_letter_queue).await
}

/// Dead-letters `body` as the worker does: to the dead-letter exchange, with
/// the attempts and the last error as headers.
pub async fn dead_letter(
    broker: &TestBroker,
    webhook_id: &str,
    body: &[u8],
    attempts: i32,
    last_error: &str,
    traceparent: Option<&str>,
) {
    let event_type = shared::event::event_type(body).expect("test event has a type");
    let publisher = Publisher::open(&broker.connection, &broker.names)
        .await
        .expect("publisher");
    publisher
        .dead_letter(&DeadLetter {
            event: OutgoingEvent {
                webhook_id,
                event_type: &event_type,
                body,
                traceparent,
            },
            attempts,
            last_error,
        })
        .await
        .expect("dead letter confirmed");
}

/// `status`, `attempts` and `last_error` of a stored event.
pub async fn event_state(db: &TestDb, webhook_id: &str) -> (String, i32, Option<String>) {
    sqlx::query_as("SELECT status, attempts, last_error FROM webhook_events WHERE webhook_id = $1")
        .bind(webhook_id)
        .fetch_one(&db.pool)
        .await
        .expect("stored event")
}

/// Marks a stored event as the worker does when it gives up on it.
pub async fn mark_dead(db: &TestDb, webhook_id: &str, attempts: i32, last_error: &str) {
    sqlx::query(
        "UPDATE webhook_events SET status = 'dead', attempts = $2, last_error = $3 \
         WHERE webhook_id = $1",
    )
    .bind(webhook_id)
    .bind(attempts)
    .bind(last_error)
    .execute(&db.pool)
    .await
    .expect("mark dead");
}
