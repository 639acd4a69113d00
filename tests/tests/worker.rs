//! `worker run` against a real PostgreSQL and RabbitMQ (`SPEC.md` sections 8
//! and 9.1): exactly-once effects over at-least-once delivery.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    broker::TestBroker,
    db::TestDb,
    deliveries::{new_id, user_deleted, user_event},
    wait_for,
    worker::{deliver, finished_events, publish, TestWorker},
};
use serde_json::json;
use sqlx::PgPool;

const DEADLINE: Duration = Duration::from_secs(30);

async fn wait_finished(db: &TestDb, expected: i64) {
    wait_for("events to be processed", DEADLINE, || async {
        (finished_events(db).await >= expected).then_some(())
    })
    .await;
}

async fn event_status(pool: &PgPool, webhook_id: &str) -> (String, i32, Option<String>) {
    sqlx::query_as("SELECT status, attempts, last_error FROM webhook_events WHERE webhook_id = $1")
        .bind(webhook_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn user(
    pool: &PgPool,
    id: &str,
) -> Option<(Option<String>, Option<String>, Option<i64>, bool)> {
    sqlx::query_as("SELECT email, first_name, clerk_updated_at, deleted_at IS NOT NULL FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn add_membership(
    pool: &PgPool,
    email: &str,
    user_id: Option<&str>,
    status: &str,
    age_secs: i64,
) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO memberships (email, user_id, status, created_at, activated_at, deactivated_at) \
         VALUES ($1, $2, $3, now() - make_interval(secs => $4), \
                 CASE WHEN $3 = 'active' THEN now() END, \
                 CASE WHEN $3 = 'canceled' THEN now() - interval '1 day' END) RETURNING id",
    )
    .bind(email)
    .bind(user_id)
    .bind(status)
    .bind(age_secs as f64)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn audits(
    pool: &PgPool,
    action_type: &str,
) -> Vec<(Option<String>, Option<i64>, Option<String>)> {
    sqlx::query_as(
        "SELECT user_id, membership_id, webhook_id FROM admin_actions WHERE action_type = $1 ORDER BY id",
    )
    .bind(action_type)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn user_created_mirrors_the_user_with_its_primary_email() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let worker = TestWorker::spawn(&db, &broker).await;
    let id = new_id();

    deliver(
        &db,
        &broker,
        &[(
            id.clone(),
            user_event("user.created", "user_a", "a@example.org", 1000),
        )],
    )
    .await;
    wait_finished(&db, 1).await;

    assert_eq!(
        user(&db.pool, "user_a").await,
        Some((
            Some("a@example.org".to_owned()),
            Some("Grace".to_owned()),
            Some(1000),
            false
        ))
    );
    assert_eq!(
        event_status(&db.pool, &id).await,
        ("processed".to_owned(), 1, None)
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_update_applies_and_an_older_one_changes_nothing() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let worker = TestWorker::spawn(&db, &broker).await;

    deliver(
        &db,
        &broker,
        &[(
            new_id(),
            user_event("user.created", "user_b", "old@example.org", 1000),
        )],
    )
    .await;
    wait_finished(&db, 1).await;
    deliver(
        &db,
        &broker,
        &[(
            new_id(),
            user_event("user.updated", "user_b", "new@example.org", 3000),
        )],
    )
    .await;
    wait_finished(&db, 2).await;
    let stale = new_id();
    deliver(
        &db,
        &broker,
        &[(
            stale.clone(),
            user_event("user.updated", "user_b", "stale@example.org", 2000),
        )],
    )
    .await;
    wait_finished(&db, 3).await;

    let (email, _, updated_at, _) = user(&db.pool, "user_b").await.unwrap();
    assert_eq!(email.as_deref(), Some("new@example.org"));
    assert_eq!(updated_at, Some(3000));
    assert_eq!(event_status(&db.pool, &stale).await.0, "processed");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_after_the_deletion_changes_nothing_even_when_it_arrives_first_for_an_unknown_user(
) {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let worker = TestWorker::spawn(&db, &broker).await;

    // The deletion overtakes the creation.
    deliver(&db, &broker, &[(new_id(), user_deleted("user_c"))]).await;
    wait_finished(&db, 1).await;
    deliver(
        &db,
        &broker,
        &[
            (
                new_id(),
                user_event("user.created", "user_c", "c@example.org", 1000),
            ),
            (
                new_id(),
                user_event("user.updated", "user_c", "c2@example.org", 9000),
            ),
        ],
    )
    .await;
    wait_finished(&db, 3).await;

    let (email, _, _, deleted) = user(&db.pool, "user_c").await.unwrap();
    assert!(deleted);
    assert_eq!(email, None, "the tombstone was not filled in");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_active_member_cancels_the_membership_and_promotes_the_oldest_waitlisted() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let active = add_membership(&db.pool, "d@example.org", Some("user_d"), "active", 500).await;
    let oldest = add_membership(&db.pool, "w1@example.org", None, "waitlisted", 400).await;
    let younger = add_membership(&db.pool, "w2@example.org", None, "waitlisted", 300).await;
    let worker = TestWorker::spawn(&db, &broker).await;
    let id = new_id();

    deliver(&db, &broker, &[(id.clone(), user_deleted("user_d"))]).await;
    wait_finished(&db, 1).await;

    let rows: Vec<(i64, Option<String>, String, bool, bool)> = sqlx::query_as(
        "SELECT id, user_id, status, activated_at IS NOT NULL, deactivated_at IS NOT NULL FROM memberships ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (active, None, "canceled".to_owned(), true, true),
            (oldest, None, "active".to_owned(), true, false),
            (younger, None, "waitlisted".to_owned(), false, false),
        ]
    );
    assert_eq!(
        audits(&db.pool, "user_deleted_webhook").await,
        vec![(Some("user_d".to_owned()), Some(active), Some(id.clone()))]
    );
    assert_eq!(
        audits(&db.pool, "waitlist_promoted").await,
        vec![(None, Some(oldest), Some(id))]
    );
    assert!(
        user(&db.pool, "user_d").await.unwrap().3,
        "user marked deleted"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_already_canceled_membership_is_unlinked_and_audited_but_keeps_its_status_and_date() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let canceled = add_membership(&db.pool, "e@example.org", Some("user_e"), "canceled", 500).await;
    add_membership(&db.pool, "w@example.org", None, "waitlisted", 400).await;
    let before: time::OffsetDateTime =
        sqlx::query_scalar("SELECT deactivated_at FROM memberships WHERE id = $1")
            .bind(canceled)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let worker = TestWorker::spawn(&db, &broker).await;

    deliver(&db, &broker, &[(new_id(), user_deleted("user_e"))]).await;
    wait_finished(&db, 1).await;

    let (user_id, status, after): (Option<String>, String, time::OffsetDateTime) =
        sqlx::query_as("SELECT user_id, status, deactivated_at FROM memberships WHERE id = $1")
            .bind(canceled)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((user_id, status.as_str()), (None, "canceled"));
    assert_eq!(after, before, "first deactivated_at kept");
    assert_eq!(audits(&db.pool, "user_deleted_webhook").await.len(), 1);
    assert!(
        audits(&db.pool, "waitlist_promoted").await.is_empty(),
        "nobody promoted"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_user_without_membership_succeeds_without_audit() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let waitlisted = add_membership(&db.pool, "w@example.org", None, "waitlisted", 400).await;
    let worker = TestWorker::spawn(&db, &broker).await;
    let id = new_id();

    deliver(&db, &broker, &[(id.clone(), user_deleted("user_f"))]).await;
    wait_finished(&db, 1).await;

    assert_eq!(event_status(&db.pool, &id).await.0, "processed");
    assert!(audits(&db.pool, "user_deleted_webhook").await.is_empty());
    let status: String = sqlx::query_scalar("SELECT status FROM memberships WHERE id = $1")
        .bind(waitlisted)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(status, "waitlisted");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_event_types_are_marked_ignored_and_acked() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let worker = TestWorker::spawn(&db, &broker).await;
    let id = new_id();
    let body = serde_json::to_vec(&json!({
        "type": "organization.created", "object": "event", "data": {"id": "org_1"}
    }))
    .unwrap();

    deliver(&db, &broker, &[(id.clone(), body)]).await;
    wait_finished(&db, 1).await;

    assert_eq!(event_status(&db.pool, &id).await.0, "ignored");
    wait_for("the queue to be empty", DEADLINE, || async {
        (broker.worker_queue_depth().await == 0).then_some(())
    })
    .await;
    assert!(broker.take(&broker.names.dead_letter_queue).await.is_none());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_event_is_applied_once() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    add_membership(&db.pool, "g@example.org", Some("user_g"), "active", 500).await;
    add_membership(&db.pool, "w1@example.org", None, "waitlisted", 400).await;
    add_membership(&db.pool, "w2@example.org", None, "waitlisted", 300).await;
    let worker = TestWorker::spawn(&db, &broker).await;
    let id = new_id();
    let event = (id.clone(), user_deleted("user_g"));

    // As if a worker died between commit and ack: the broker delivers again.
    deliver(&db, &broker, std::slice::from_ref(&event)).await;
    wait_finished(&db, 1).await;
    publish(&broker, &[event.clone(), event]).await;
    wait_for("the redeliveries to be consumed", DEADLINE, || async {
        (broker.worker_queue_depth().await == 0).then_some(())
    })
    .await;
    worker.stop().await;

    assert_eq!(audits(&db.pool, "user_deleted_webhook").await.len(), 1);
    assert_eq!(audits(&db.pool, "waitlist_promoted").await.len(), 1);
    let active_now: i64 =
        sqlx::query_scalar("SELECT count(*) FROM memberships WHERE status = 'active'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(active_now, 1);
    assert_eq!(
        event_status(&db.pool, &id).await,
        ("processed".to_owned(), 1, None)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_without_a_stored_row_is_stored_then_applied() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let worker = TestWorker::spawn(&db, &broker).await;
    let id = new_id();

    publish(
        &broker,
        &[(
            id.clone(),
            user_event("user.created", "user_h", "h@example.org", 1000),
        )],
    )
    .await;
    wait_finished(&db, 1).await;

    assert_eq!(event_status(&db.pool, &id).await.0, "processed");
    assert!(user(&db.pool, "user_h").await.is_some());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_is_not_a_clerk_event_and_has_no_row_goes_to_the_dlq_with_its_reason() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let worker = TestWorker::spawn(&db, &broker).await;
    let id = new_id();
    let channel = &broker.channel;
    channel
        .basic_publish(
            broker.names.exchange.as_str().into(),
            "user.created".into(),
            lapin::options::BasicPublishOptions::default(),
            b"not an event",
            lapin::BasicProperties::default().with_message_id(id.as_str().into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let dead = wait_for("the dead letter", DEADLINE, || async {
        broker.take(&broker.names.dead_letter_queue).await
    })
    .await;

    assert_eq!(dead.body, b"not an event");
    assert_eq!(dead.message_id.as_deref(), Some(id.as_str()));
    let reason = dead.header("x-last-error").unwrap();
    assert!(reason.contains("not a Clerk event"), "{reason}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handled_type_whose_payload_cannot_parse_is_dead_lettered_at_once() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let worker = TestWorker::spawn(&db, &broker).await;
    let id = new_id();
    let body =
        serde_json::to_vec(&json!({"type": "user.created", "data": {"no_id": true}})).unwrap();

    deliver(&db, &broker, &[(id.clone(), body)]).await;
    let dead = wait_for("the dead letter", DEADLINE, || async {
        broker.take(&broker.names.dead_letter_queue).await
    })
    .await;

    let (status, attempts, last_error) = event_status(&db.pool, &id).await;
    assert_eq!((status.as_str(), attempts), ("dead", 1));
    assert!(last_error.unwrap().contains("missing field `id`"));
    assert_eq!(dead.header("x-attempts").as_deref(), Some("1"));
    worker.stop().await;
}
