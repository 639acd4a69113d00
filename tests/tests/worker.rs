//! `worker run` against a real PostgreSQL and RabbitMQ (`SPEC.md` sections 8
//! and 9.1): exactly-once effects over at-least-once delivery.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    broker::TestBroker,
    commands::queue_depth,
    db::TestDb,
    deliveries::{new_id, user_deleted, user_event},
    wait_for,
    worker::{deliver, finished_events, publish, store, TestWorker},
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
    assert!(
        broker.take(&broker.names.dead_letter_queue).await.is_none(),
        "genuine duplicates are acked, not dead-lettered"
    );
}

/// Publishes `body` straight to the events exchange, as anyone holding the
/// broker's password could, routed as `routing_key`.
async fn publish_by_hand(broker: &TestBroker, routing_key: &str, id: &str, body: &[u8]) {
    broker
        .channel
        .basic_publish(
            broker.names.exchange.as_str().into(),
            routing_key.into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            lapin::BasicProperties::default().with_message_id(id.into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn stored_events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn membership_status(pool: &PgPool, id: i64) -> (Option<String>, String) {
    sqlx::query_as("SELECT user_id, status FROM memberships WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_user_deleted_published_straight_to_the_exchange_changes_nothing_and_is_dead_lettered(
) {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let member = add_membership(&db.pool, "h@example.org", Some("user_h"), "active", 500).await;
    let waitlisted = add_membership(&db.pool, "w@example.org", None, "waitlisted", 400).await;
    let worker = TestWorker::spawn(&db, &broker).await;
    // One genuine event first, so the count of stored events is not zero.
    deliver(
        &db,
        &broker,
        &[(
            new_id(),
            user_event("user.created", "user_h", "h@example.org", 1000),
        )],
    )
    .await;
    wait_finished(&db, 1).await;
    let forged = new_id();

    publish(&broker, &[(forged.clone(), user_deleted("user_h"))]).await;
    let dead = wait_for("the forged message in the DLQ", DEADLINE, || async {
        broker.take(&broker.names.dead_letter_queue).await
    })
    .await;
    wait_for("the queue to be empty", DEADLINE, || async {
        (broker.worker_queue_depth().await == 0).then_some(())
    })
    .await;
    worker.stop().await;

    assert_eq!(dead.message_id.as_deref(), Some(forged.as_str()));
    let reason = dead.header("x-last-error").unwrap();
    assert!(
        reason.contains("no stored event with this svix id"),
        "{reason}"
    );
    assert_eq!(dead.header("x-attempts").as_deref(), Some("0"));
    assert_eq!(
        membership_status(&db.pool, member).await,
        (Some("user_h".to_owned()), "active".to_owned())
    );
    assert_eq!(
        membership_status(&db.pool, waitlisted).await,
        (None, "waitlisted".to_owned())
    );
    let audit_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM admin_actions")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(audit_rows, 0);
    assert!(
        !user(&db.pool, "user_h").await.unwrap().3,
        "user not deleted"
    );
    assert_eq!(stored_events(&db.pool).await, 1, "nothing stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_with_a_stored_svix_id_but_another_body_or_type_is_dead_lettered_and_the_genuine_one_is_processed_later(
) {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let member = add_membership(&db.pool, "k@example.org", Some("user_k"), "active", 500).await;
    let victim = add_membership(&db.pool, "v@example.org", Some("user_v"), "active", 450).await;
    let id = new_id();
    let genuine = user_deleted("user_k");
    // Stored by the ingress, not published yet (the broker was down).
    store(&db, &id, &genuine).await;
    let worker = TestWorker::spawn(&db, &broker).await;

    publish(&broker, &[(id.clone(), user_deleted("user_v"))]).await;
    let other_body = wait_for("the forged body in the DLQ", DEADLINE, || async {
        broker.take(&broker.names.dead_letter_queue).await
    })
    .await;
    publish_by_hand(&broker, "user.created", &id, &genuine).await;
    let other_type = wait_for("the re-routed copy in the DLQ", DEADLINE, || async {
        broker.take(&broker.names.dead_letter_queue).await
    })
    .await;
    let untouched = event_status(&db.pool, &id).await;
    let victim_after_forgery = membership_status(&db.pool, victim).await;
    // The ingress's relay publishes the stored event.
    publish(&broker, &[(id.clone(), genuine)]).await;
    wait_finished(&db, 1).await;
    worker.stop().await;

    let reason = other_body.header("x-last-error").unwrap();
    assert!(reason.contains("body differs"), "{reason}");
    let reason = other_type.header("x-last-error").unwrap();
    assert!(reason.contains("routing key differs"), "{reason}");
    assert_eq!(
        untouched,
        ("published".to_owned(), 0, None),
        "the stored row is untouched by the forgeries"
    );
    assert_eq!(
        victim_after_forgery,
        (Some("user_v".to_owned()), "active".to_owned())
    );
    assert_eq!(
        membership_status(&db.pool, member).await,
        (None, "canceled".to_owned())
    );
    assert_eq!(
        membership_status(&db.pool, victim).await,
        (Some("user_v".to_owned()), "active".to_owned())
    );
    assert_eq!(
        event_status(&db.pool, &id).await,
        ("processed".to_owned(), 1, None)
    );
    assert_eq!(
        audits(&db.pool, "user_deleted_webhook").await,
        vec![(Some("user_k".to_owned()), Some(member), Some(id))]
    );
    assert!(broker.take(&broker.names.dead_letter_queue).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_is_not_a_clerk_event_and_has_no_row_goes_to_the_dlq_with_its_reason() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let worker = TestWorker::spawn(&db, &broker).await;
    let id = new_id();

    publish_by_hand(&broker, "user.created", &id, b"not an event").await;
    let dead = wait_for("the dead letter", DEADLINE, || async {
        broker.take(&broker.names.dead_letter_queue).await
    })
    .await;
    worker.stop().await;

    assert_eq!(dead.body, b"not an event");
    assert_eq!(dead.message_id.as_deref(), Some(id.as_str()));
    let reason = dead.header("x-last-error").unwrap();
    assert!(reason.contains("no stored event"), "{reason}");
    assert_eq!(stored_events(&db.pool).await, 0, "nothing stored");
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
    assert_eq!((status.as_str(), attempts), ("dead", 1), "{last_error:?}");
    assert!(last_error.unwrap().contains("missing field `id`"));
    assert_eq!(dead.header("x-attempts").as_deref(), Some("1"));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_waits_in_the_delay_queue_of_its_step_and_returns_to_the_worker_queue_once_under_its_type(
) {
    use shared::amqp::{
        retry::{declare_retry_topology, Retry, HEADER_RETRY_ATTEMPTS},
        OutgoingEvent, Publisher,
    };
    let broker = TestBroker::new().await;
    let (short, long) = (Duration::from_millis(50), Duration::from_secs(30));
    declare_retry_topology(&broker.channel, &broker.names, &[short, long])
        .await
        .unwrap();
    // Declaring again changes nothing.
    declare_retry_topology(&broker.channel, &broker.names, &[short, long])
        .await
        .unwrap();
    let publisher = Publisher::open(&broker.connection, &broker.names)
        .await
        .unwrap();
    let body = user_deleted("user_retry");
    let ids: Vec<String> = (0..10).map(|_| new_id()).collect();

    for (i, id) in ids.iter().enumerate() {
        let step = if i % 2 == 0 { short } else { long };
        let retry = Retry {
            event: OutgoingEvent {
                webhook_id: id,
                event_type: "user.deleted",
                body: &body,
                traceparent: None,
            },
            attempts: 2,
            step,
            delay: step / 2,
        };
        publisher.retry_later(&retry).await.unwrap();
    }
    wait_for("the short retries to come back", DEADLINE, || async {
        (broker.worker_queue_depth().await == 5).then_some(())
    })
    .await;

    let long_queue = broker.names.retry_queue(long);
    assert_eq!(queue_depth(&broker, &long_queue).await, 5, "one copy each");
    let short_queue = broker.names.retry_queue(short);
    assert_eq!(queue_depth(&broker, &short_queue).await, 0);
    let mut back = Vec::new();
    while let Some(message) = broker.take(&broker.names.worker_queue).await {
        assert_eq!(message.routing_key, "user.deleted");
        assert_eq!(message.type_header.as_deref(), Some("user.deleted"));
        assert_eq!(message.body, body);
        assert_eq!(message.header(HEADER_RETRY_ATTEMPTS).as_deref(), Some("2"));
        back.push(message.message_id.unwrap());
    }
    back.sort();
    let mut expected: Vec<String> = ids.iter().step_by(2).cloned().collect();
    expected.sort();
    assert_eq!(back, expected);
}
