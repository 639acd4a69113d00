//! Handler scenarios through the real binaries: signed deliveries posted to
//! the `ingress` binary and applied by the `worker` binary (`SPEC.md`
//! section 9).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    broker::TestBroker,
    db::TestDb,
    deliveries::{new_secret, payment_attempt, subscription_item, user_deleted, Delivery},
    plans::PlansFile,
    process::Service,
    wait_for,
};
use reqwest::StatusCode;

const DEADLINE: Duration = Duration::from_secs(30);
const DAY: i64 = 86_400_000;

/// Catalog without a default plan.
const PLANS: &str = r#"
[plans.free_user]
credits = 10
[plans.pro]
credits = 1000
[packs.credits_500]
credits = 500
"#;

/// A database, a broker prefix, and both binaries running against them.
struct World {
    db: TestDb,
    secret: String,
    addr: String,
    _ingress: Service,
    _worker: Service,
    _broker: TestBroker,
    _plans: PlansFile,
}

impl World {
    async fn new() -> Self {
        let db = TestDb::new().await;
        let broker = TestBroker::new().await;
        let secret = new_secret();
        let plans = PlansFile::write(PLANS);
        let database_url = db.url(None);
        let (ingress, addr, _) = Service::ingress_run(&database_url, &broker.prefix, &secret, &[]);
        let plans_path = plans.path();
        let worker = Service::worker_run(
            &database_url,
            &broker.prefix,
            &[("CREDIT_PLANS", plans_path.as_str())],
        );
        Self {
            db,
            secret,
            addr,
            _ingress: ingress,
            _worker: worker,
            _broker: broker,
            _plans: plans,
        }
    }

    /// Posts `body` signed and waits until the worker has finished with it;
    /// returns its final status.
    async fn send(&self, body: Vec<u8>) -> String {
        let delivery = Delivery::signed(&self.secret, body);
        let status = delivery.post_to(&self.addr).await;
        assert_eq!(status, StatusCode::OK);
        self.final_status(&delivery.id).await
    }

    async fn final_status(&self, webhook_id: &str) -> String {
        wait_for("the event to be finished", DEADLINE, || async {
            sqlx::query_scalar::<_, String>(
                "SELECT status FROM webhook_events WHERE webhook_id = $1 \
                 AND status IN ('processed', 'ignored', 'dead')",
            )
            .bind(webhook_id)
            .fetch_optional(&self.db.pool)
            .await
            .unwrap()
        })
        .await
    }

    async fn membership(&self, id: i64) -> (String, Option<String>) {
        sqlx::query_as("SELECT status, user_id FROM memberships WHERE id = $1")
            .bind(id)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    async fn insert_membership(
        &self,
        user_id: Option<&str>,
        status: &str,
        age_minutes: i32,
    ) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO memberships (email, user_id, status, created_at) \
             VALUES ($1, $2, $3, now() - make_interval(mins => $4)) RETURNING id",
        )
        .bind(format!("member{age_minutes}@example.org"))
        .bind(user_id)
        .bind(status)
        .bind(age_minutes)
        .fetch_one(&self.db.pool)
        .await
        .unwrap()
    }

    async fn balance(&self, owner: &str) -> Option<i64> {
        sqlx::query_scalar(
            "SELECT (plan_credits + pack_credits)::bigint FROM credit_accounts WHERE owner_id = $1",
        )
        .bind(owner)
        .fetch_optional(&self.db.pool)
        .await
        .unwrap()
    }

    async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_users_own_waitlisted_membership_never_takes_the_place_it_frees() {
    let w = World::new().await;
    let m1 = w.insert_membership(Some("user_u"), "active", 30).await;
    let m2 = w.insert_membership(Some("user_u"), "waitlisted", 20).await;
    let m3 = w.insert_membership(None, "waitlisted", 10).await;

    let status = w.send(user_deleted("user_u")).await;

    assert_eq!(status, "processed");
    assert_eq!(w.membership(m1).await, ("canceled".to_owned(), None));
    assert_eq!(w.membership(m2).await, ("canceled".to_owned(), None));
    assert_eq!(
        w.membership(m3).await.0,
        "active",
        "the next in line is promoted"
    );
    let promoted: Vec<i64> = sqlx::query_scalar(
        "SELECT membership_id FROM admin_actions WHERE action_type = 'waitlist_promoted'",
    )
    .fetch_all(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(
        promoted,
        vec![m3],
        "one promotion, for the one active place freed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_item_that_ended_grants_again_when_a_later_period_starts() {
    let w = World::new().await;
    let owner = "user_returning";
    let t0 = 1_700_000_000_000;
    let (t1, t2) = (t0 + DAY, t0 + 40 * DAY);
    let events = [
        subscription_item(
            "subscriptionItem.active",
            "item_f",
            owner,
            "free_user",
            "active",
            Some(t0),
        ),
        subscription_item(
            "subscriptionItem.active",
            "item_p",
            owner,
            "pro",
            "active",
            Some(t1),
        ),
        subscription_item(
            "subscriptionItem.ended",
            "item_f",
            owner,
            "free_user",
            "ended",
            Some(t0),
        ),
        subscription_item(
            "subscriptionItem.ended",
            "item_p",
            owner,
            "pro",
            "ended",
            Some(t1),
        ),
        subscription_item(
            "subscriptionItem.active",
            "item_f",
            owner,
            "free_user",
            "active",
            Some(t2),
        ),
    ];

    for event in events {
        assert_eq!(w.send(event).await, "processed");
    }

    assert_eq!(w.balance(owner).await, Some(10));
    // The end of the first period still blocks a late start of that period.
    let late = subscription_item(
        "subscriptionItem.active",
        "item_f",
        owner,
        "free_user",
        "active",
        Some(t0),
    );
    assert_eq!(w.send(late).await, "processed");
    assert_eq!(w.balance(owner).await, Some(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_end_of_an_item_outside_the_catalog_writes_nothing() {
    let w = World::new().await;

    let status = w
        .send(subscription_item(
            "subscriptionItem.ended",
            "item_enterprise",
            "user_enterprise",
            "enterprise",
            "ended",
            Some(1_700_000_000_000),
        ))
        .await;

    assert_eq!(status, "processed");
    assert_eq!(w.count("credit_accounts").await, 0);
    assert_eq!(w.count("credit_ledger").await, 0);
    assert_eq!(w.count("credit_plan_ends").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paid_attempt_without_a_payer_for_a_plan_outside_the_catalog_is_processed_and_writes_nothing(
) {
    let w = World::new().await;
    let mut body: serde_json::Value = serde_json::from_slice(&payment_attempt(
        "cpa_nobody",
        "paid",
        "user_nobody",
        &[("item_unknown", "enterprise", Some(1_700_000_000_000))],
    ))
    .unwrap();
    body["data"]["payer"] = serde_json::Value::Null;

    let status = w.send(serde_json::to_vec(&body).unwrap()).await;

    assert_eq!(status, "processed");
    assert_eq!(w.count("credit_accounts").await, 0);
    assert_eq!(w.count("credit_ledger").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_the_application_inserts_with_the_contract_columns_is_published_and_applied() {
    let w = World::new().await;
    let body = e2e::deliveries::user_created("user_from_the_app");

    sqlx::query(
        "INSERT INTO webhook_events (webhook_id, event_type, payload) \
         VALUES ('msg_from_the_app', 'user.created', $1::jsonb)",
    )
    .bind(std::str::from_utf8(&body).unwrap())
    .execute(&w.db.pool)
    .await
    .unwrap();

    assert_eq!(w.final_status("msg_from_the_app").await, "processed");
    let user: Option<String> =
        sqlx::query_scalar("SELECT id FROM users WHERE id = 'user_from_the_app'")
            .fetch_optional(&w.db.pool)
            .await
            .unwrap();
    assert_eq!(user.as_deref(), Some("user_from_the_app"));
}
