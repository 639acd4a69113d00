//! The split of each event from its state (migrations 20261217000001 and
//! 20261217000002) upgrades a populated database while the services of the
//! previous release keep writing to it.

#![allow(clippy::unwrap_used)]

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use e2e::{
    broker::TestBroker,
    commands::run_worker,
    db::TestDb,
    ingress::{Endpoints, TestIngress},
    wait_for,
};
use sqlx::PgPool;

/// The expand step: the schema before it is the previous release's.
const EXPAND: i64 = 20261217000001;
/// The contract step.
const CONTRACT: i64 = shared::db::EVENT_STATE_CONTRACT;

const DEADLINE: Duration = Duration::from_secs(120);

/// Stored events the upgrade starts from.
const EVENTS: i64 = 1_000_000;

/// One event in ten hundred is still unpublished (in the previous release's
/// outbox); of the rest, per hundred: one dead, one failed, one published and
/// waiting for a worker, the others processed.
const POPULATE: &str = "\
    INSERT INTO webhook_events (webhook_id, event_type, payload, raw_body, received_at, \
        published_at, processed_at, status, attempts, last_error, subject) \
    SELECT 'msg_old_' || i, 'user.created', p, convert_to(p::text, 'UTF8'), at, \
           CASE WHEN s = 'received' THEN NULL ELSE at END, \
           CASE WHEN s = 'processed' THEN at END, s, \
           CASE s WHEN 'dead' THEN 5 WHEN 'failed' THEN 2 WHEN 'processed' THEN 1 ELSE 0 END, \
           CASE WHEN s IN ('dead', 'failed') THEN 'Clerk answered 503 for ' || i END, \
           'user_' || i \
    FROM (SELECT i, \
                 jsonb_build_object('type', 'user.created', 'data', jsonb_build_object('id', 'user_' || i)) AS p, \
                 timestamptz '2026-11-01 00:00:00+00' + make_interval(secs => i) AS at, \
                 CASE WHEN i % 1000 = 0 THEN 'received' WHEN i % 100 = 1 THEN 'dead' \
                      WHEN i % 100 = 2 THEN 'failed' WHEN i % 100 = 3 THEN 'published' \
                      ELSE 'processed' END AS s \
          FROM generate_series($1::bigint, $2::bigint) AS i) AS rows";

/// Every state column of the rows named `msg_old_…` other than those the
/// previous release may apply during the upgrade (the published ones, whose
/// number ends in 03), in one number per column: the same query reads the
/// table before and the view after.
const FINGERPRINT: &str = "\
    SELECT count(*), count(published_at), count(processed_at), sum(attempts), \
           sum(hashtext(webhook_id || status || coalesce(last_error, '') \
                        || coalesce(extract(epoch FROM published_at)::text, '') \
                        || coalesce(extract(epoch FROM processed_at)::text, '')))::bigint \
    FROM webhook_events \
    WHERE webhook_id LIKE 'msg_old_%' AND substr(webhook_id, 9)::bigint % 100 <> 3";

type Fingerprint = (i64, i64, i64, Option<i64>, Option<i64>);

/// What the previous release's ingress, relay and worker run (their exact
/// statements), against the table they know.
struct PreviousRelease {
    pool: PgPool,
}

impl PreviousRelease {
    /// The ingress stores an event and its outbox entry; returns its id.
    async fn store(&self, webhook_id: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "WITH stored AS (\
                 INSERT INTO webhook_events \
                     (webhook_id, event_type, payload, raw_body, traceparent, subject) \
                 SELECT id, 'user.created', '{\"type\":\"user.created\"}'::jsonb, \
                        convert_to('{\"type\":\"user.created\"}', 'UTF8'), '', NULL \
                 FROM (VALUES ($1)) AS batch(id) \
                 ON CONFLICT (webhook_id) DO NOTHING RETURNING id, webhook_id), \
             queued AS (INSERT INTO webhook_outbox (event_id) SELECT id FROM stored) \
             SELECT id FROM stored",
        )
        .bind(webhook_id)
        .fetch_one(&self.pool)
        .await
    }

    /// The relay marks it published.
    async fn publish(&self, id: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "WITH done AS (DELETE FROM webhook_outbox WHERE event_id = ANY($1) RETURNING event_id) \
             UPDATE webhook_events SET published_at = now(), \
             status = CASE WHEN status = 'received' THEN 'published' ELSE status END \
             WHERE id IN (SELECT event_id FROM done)",
        )
        .bind(vec![id])
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// A worker applies an event.
    async fn apply(&self, webhook_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE webhook_events SET status = 'processed', processed_at = now(), \
             attempts = attempts + 1, last_error = NULL WHERE webhook_id = $1",
        )
        .bind(webhook_id)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }
}

async fn split(pool: &PgPool) -> bool {
    sqlx::query_scalar("SELECT to_regclass('webhook_event_bodies') IS NOT NULL")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn installed_on(pool: &PgPool, version: i64) -> time::OffsetDateTime {
    sqlx::query_scalar("SELECT installed_on FROM _sqlx_migrations WHERE version = $1")
        .bind(version)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// What the previous release did while the upgrade ran.
#[derive(Default)]
struct Written {
    /// New events it stored, published and applied.
    new: Vec<String>,
    /// Events of the million it applied (they were waiting for a worker).
    applied_old: Vec<String>,
    /// Its statements failed once the contract step had made
    /// `webhook_events` a view (its ingress inserts with `ON CONFLICT`).
    stopped_by_contract: bool,
}

/// Runs the previous release's statements in a loop until `done`: store a new
/// event, publish it, apply it, and apply one of the old published events.
/// A failure before the contract step fails the test.
async fn previous_release(pool: PgPool, done: Arc<AtomicBool>) -> Written {
    let release = PreviousRelease { pool: pool.clone() };
    let mut written = Written::default();
    let mut k = 0i64;
    while !done.load(Ordering::SeqCst) {
        let new = format!("msg_new_{k}");
        // Each published event of the million once, while there are some.
        let old = (k < EVENTS / 100).then(|| format!("msg_old_{}", 3 + 100 * k));
        let step = async {
            let id = release.store(&new).await?;
            release.publish(id).await?;
            release.apply(&new).await?;
            match &old {
                Some(old) => release.apply(old).await,
                None => Ok(()),
            }
        };
        match step.await {
            Ok(()) => {
                written.new.push(new);
                written.applied_old.extend(old);
            }
            Err(error) => {
                assert!(
                    split(&pool).await,
                    "the previous release failed before the contract step: {error}"
                );
                written.stopped_by_contract = true;
                break;
            }
        }
        k += 1;
    }
    written
}

/// A million stored events, every state among them, and the previous
/// release writing all the while: `worker migrate` expands, copies the
/// states in batches while the previous release's ingress, relay and worker
/// keep committing (their writes during the copy are kept), contracts, and
/// the new release then publishes what the old outbox held.
#[tokio::test(flavor = "multi_thread")]
async fn a_million_events_are_split_while_the_previous_release_keeps_writing() {
    let db = TestDb::before(EXPAND).await;
    let broker = TestBroker::new().await;
    for start in (1..=EVENTS).step_by(250_000) {
        sqlx::query(POPULATE)
            .bind(start)
            .bind(start + 249_999)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO webhook_outbox (event_id) \
         SELECT id FROM webhook_events WHERE published_at IS NULL",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let before: Fingerprint = sqlx::query_as(FINGERPRINT)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(before.0, EVENTS - EVENTS / 100);

    let done = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(previous_release(
        shared::db::pool(&shared::secret::Secret::new(db.url(None)), 2).unwrap(),
        done.clone(),
    ));
    let migrated = run_worker(&db, &broker, &["migrate"], &[]).await;
    done.store(true, Ordering::SeqCst);
    let written = writer.await.unwrap();

    assert!(migrated.status.success(), "{migrated:?}");
    assert!(split(&db.pool).await);
    let kind: String =
        sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE relname = 'webhook_events'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(kind, "v", "webhook_events is a view now");
    let outbox: bool = sqlx::query_scalar("SELECT to_regclass('webhook_outbox') IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!outbox);
    // Every stored event kept its state, and each has one.
    let after: Fingerprint = sqlx::query_as(FINGERPRINT)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(after, before);
    let (bodies, states): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM webhook_event_bodies), \
                (SELECT count(*) FROM webhook_event_states)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(bodies, states);
    assert!(bodies >= EVENTS + written.new.len() as i64);
    // The previous release kept committing while the states were copied,
    // between the expand and the contract steps, and lost none of it.
    let (expand, contract) = (
        installed_on(&db.pool, EXPAND).await,
        installed_on(&db.pool, CONTRACT).await,
    );
    let during_copy: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_events WHERE webhook_id LIKE 'msg_new_%' \
         AND received_at > $1 AND received_at < $2",
    )
    .bind(expand)
    .bind(contract)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        during_copy > 0,
        "the previous release stored nothing while the states were copied"
    );
    let applied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_events WHERE webhook_id = ANY($1) \
         AND status = 'processed' AND processed_at IS NOT NULL AND published_at IS NOT NULL",
    )
    .bind(
        written
            .new
            .iter()
            .chain(&written.applied_old)
            .collect::<Vec<_>>(),
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        applied as usize,
        written.new.len() + written.applied_old.len()
    );
    println!(
        "expand to contract (the copy): {:.1} s; the previous release wrote {} rounds \
         ({} during the copy), stopped by the contract: {}",
        (contract - expand).as_seconds_f64(),
        written.new.len(),
        during_copy,
        written.stopped_by_contract
    );

    // The new release publishes what the previous one's outbox still held.
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_event_states WHERE published_at IS NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(unpublished >= EVENTS / 1000);
    let ingress = TestIngress::spawn(Endpoints {
        database_url: db.url(None),
        amqp_url: e2e::amqp_url(),
        prefix: broker.prefix.clone(),
    })
    .await;
    let messages = broker
        .take_worker_messages(unpublished as usize, DEADLINE)
        .await;
    assert_eq!(messages.len() as i64, unpublished);
    wait_for("the relay to mark them published", DEADLINE, || async {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE published_at IS NULL")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        (left == 0).then_some(())
    })
    .await;
    ingress.stop().await;
}

/// A transaction that holds the events table keeps the contract step from
/// its lock; the step gives way after its lock timeout instead of making
/// everyone queue behind it, and the previous release's ingress commits
/// meanwhile. Once the transaction ends, the upgrade completes.
#[tokio::test(flavor = "multi_thread")]
async fn the_contract_step_gives_way_to_a_long_transaction_and_completes_after_it() {
    let db = TestDb::before(EXPAND).await;
    let release = PreviousRelease {
        pool: db.pool.clone(),
    };
    let first = release.store("msg_before").await.unwrap();
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM webhook_events WHERE id = $1 FOR UPDATE")
        .bind(first)
        .execute(&mut *holder)
        .await
        .unwrap();

    let migrating = {
        let pool = db.pool.clone();
        tokio::spawn(async move { shared::db::migrate(&pool).await })
    };
    wait_for(
        "the contract step to wait for its lock",
        DEADLINE,
        || async {
            let waiting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' \
                   AND query LIKE '%The contract step of the split%')",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            waiting.then_some(())
        },
    )
    .await;
    // Behind a lock request that never gave way, this insert would wait
    // until the holder ends; it commits while the holder still holds.
    let during = tokio::time::timeout(DEADLINE, release.store("msg_during"))
        .await
        .expect("the insert waited behind the contract step's lock request")
        .unwrap();

    assert!(!migrating.is_finished());
    assert!(!split(&db.pool).await);
    holder.commit().await.unwrap();
    let applied = migrating.await.unwrap().unwrap();
    assert!(applied.contains(&CONTRACT));
    assert!(split(&db.pool).await);
    let stored: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, status FROM webhook_events ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        stored,
        vec![
            (first, "received".to_owned()),
            (during, "received".to_owned())
        ]
    );
}

/// Migration 20261224000001: the ingress stores the body once. Events stored
/// before keep their payload, the view reads the payload of the new ones from
/// their bytes, and a row needs one or the other.
#[tokio::test(flavor = "multi_thread")]
async fn events_stored_before_the_body_was_stored_once_keep_their_payload() {
    let db = TestDb::before(20261224000001).await;
    // The previous release stored both; its payload differs here from the
    // bytes' JSON only so that the test can tell which one the view reads.
    sqlx::query(
        "INSERT INTO webhook_events (webhook_id, event_type, payload, raw_body) VALUES \
         ('msg_before', 'user.created', '{\"type\": \"user.created\", \"stored\": true}', \
          convert_to('{\"type\": \"user.created\"}', 'UTF8'))",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    shared::db::migrate(&db.pool).await.unwrap();

    let payload = |id: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, serde_json::Value>(
                "SELECT payload FROM webhook_events WHERE webhook_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        payload("msg_before").await,
        serde_json::json!({"type": "user.created", "stored": true})
    );
    // Stored the new way: the bytes only.
    sqlx::raw_sql(
        "INSERT INTO webhook_event_bodies (webhook_id, event_type, raw_body) \
         VALUES ('msg_after', 'user.created', convert_to('{\"type\": \"user.created\"}', 'UTF8')); \
         INSERT INTO webhook_event_states (event_id) \
         SELECT id FROM webhook_event_bodies WHERE webhook_id = 'msg_after'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        payload("msg_after").await,
        serde_json::json!({"type": "user.created"})
    );
    // An update through the view that leaves the payload alone keeps the
    // body stored once.
    sqlx::query("UPDATE webhook_events SET subject = 'user_after' WHERE webhook_id = 'msg_after'")
        .execute(&db.pool)
        .await
        .unwrap();
    let stored: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT payload FROM webhook_event_bodies WHERE webhook_id = 'msg_after'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(stored, None);
    // Neither bytes nor payload: refused.
    let refused = sqlx::query(
        "INSERT INTO webhook_event_bodies (webhook_id, event_type) VALUES ('msg_empty', 'user.created')",
    )
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert_eq!(
        refused
            .as_database_error()
            .and_then(|e| e.code())
            .as_deref(),
        Some("23514")
    );
}
