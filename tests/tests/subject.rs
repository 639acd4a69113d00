//! The subject of an event (the user or organization it concerns): computed
//! by the ingress at insert, filled by the backfill for events stored before.

#![allow(clippy::unwrap_used)]

use e2e::{
    broker::TestBroker,
    commands::run_worker,
    db::TestDb,
    deliveries::{new_id, subscription_item, user_created, Delivery},
    ingress::{Endpoints, TestIngress},
    worker::store,
};
use reqwest::StatusCode;

/// The migration that added the column.
const SUBJECT_MIGRATION: i64 = 20261210000001;

async fn subject_of(db: &TestDb, webhook_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT subject FROM webhook_events WHERE webhook_id = $1")
        .bind(webhook_id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// A user event gets its user, a billing event its payer, in the ingress's
/// own insert.
#[tokio::test(flavor = "multi_thread")]
async fn the_ingress_stores_the_subject_of_each_new_event() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let ingress = TestIngress::spawn(Endpoints {
        database_url: db.url(None),
        amqp_url: e2e::amqp_url(),
        prefix: broker.prefix.clone(),
    })
    .await;
    let user = Delivery::signed(&ingress.secret, user_created("user_subject_1"));
    let org_item = Delivery::signed(
        &ingress.secret,
        subscription_item(
            "subscriptionItem.active",
            "csub_item_1",
            "org_subject_1",
            "pro",
            "active",
            None,
        ),
    );

    let (user_status, _) = ingress.post(&user).await;
    let (item_status, _) = ingress.post(&org_item).await;

    assert_eq!(user_status, StatusCode::OK);
    assert_eq!(item_status, StatusCode::OK);
    assert_eq!(
        subject_of(&db, &user.id).await.as_deref(),
        Some("user_subject_1")
    );
    assert_eq!(
        subject_of(&db, &org_item.id).await.as_deref(),
        Some("org_subject_1")
    );
    ingress.stop().await;
}

/// Events stored before the column existed get their subject when
/// `worker migrate` adds it; an event naming nobody keeps none.
#[tokio::test(flavor = "multi_thread")]
async fn worker_migrate_fills_the_subject_of_events_stored_before_the_column() {
    let db = TestDb::before(SUBJECT_MIGRATION).await;
    let broker = TestBroker::new().await;
    let (user, org, nobody) = (new_id(), new_id(), new_id());
    store(&db, &user, &user_created("user_before_1")).await;
    store(
        &db,
        &org,
        &subscription_item(
            "subscriptionItem.ended",
            "csub_item_2",
            "org_before_1",
            "pro",
            "ended",
            None,
        ),
    )
    .await;
    store(
        &db,
        &nobody,
        br#"{"type":"email.created","data":{"id":"ema_1"}}"#,
    )
    .await;

    let migrated = run_worker(&db, &broker, &["migrate"], &[]).await;

    assert!(migrated.status.success(), "{migrated:?}");
    assert!(
        migrated.stdout.contains("subjects_filled=2"),
        "{migrated:?}"
    );
    let newer = shared::db::MIGRATOR
        .iter()
        .filter(|m| m.version >= SUBJECT_MIGRATION)
        .count();
    assert_eq!(migrated.last_line(), format!("applied={newer}"));
    assert_eq!(
        subject_of(&db, &user).await.as_deref(),
        Some("user_before_1")
    );
    assert_eq!(subject_of(&db, &org).await.as_deref(), Some("org_before_1"));
    assert_eq!(subject_of(&db, &nobody).await, None);
    let indexed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE indexname = 'webhook_events_subject')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(indexed);
}

/// A second backfill finds nothing left to fill.
#[tokio::test(flavor = "multi_thread")]
async fn the_backfill_is_idempotent() {
    let db = TestDb::new().await;
    let id = new_id();
    store(&db, &id, &user_created("user_again_1")).await;

    let first = worker::backfill::event_subjects(&db.pool).await.unwrap();
    let second = worker::backfill::event_subjects(&db.pool).await.unwrap();

    assert_eq!((first, second), (1, 0));
    assert_eq!(subject_of(&db, &id).await.as_deref(), Some("user_again_1"));
}
