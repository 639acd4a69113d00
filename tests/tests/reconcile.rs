//! `worker sync users` heals what webhooks missed, run as an operator runs it
//! (the binary), against a local fake of Clerk's API: a user deleted in Clerk
//! whose `user.deleted` never came, a subscriber whose
//! `subscriptionItem.active` never came, a plan whose end never came, and a
//! second run that changes nothing.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    broker::TestBroker,
    commands::{run_worker, Finished},
    db::TestDb,
    deliveries::{new_secret, subscription_item, Delivery},
    fake_clerk::{self, FakeClerk},
    plans::PlansFile,
    process::Service,
    wait_for,
};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);
const PLANS: &str = r#"
default_plan = "free_user"
[plans.free_user]
credits = 10
[plans.pro]
credits = 1000
"#;
const PERIOD: i64 = 1_700_000_000_000;

struct World {
    db: TestDb,
    broker: TestBroker,
    clerk: FakeClerk,
    plans: PlansFile,
}

impl World {
    async fn new() -> Self {
        Self {
            db: TestDb::new().await,
            broker: TestBroker::new().await,
            clerk: FakeClerk::start().await,
            plans: PlansFile::write(PLANS),
        }
    }

    async fn sync(&self, extra: &[&str]) -> Finished {
        let mut args = vec!["sync", "users", "--actor", "ops_ana"];
        args.extend_from_slice(extra);
        let plans = self.plans.path();
        let finished = run_worker(
            &self.db,
            &self.broker,
            &args,
            &[
                ("CLERK_API_URL", self.clerk.url.as_str()),
                ("CLERK_SECRET_KEY", fake_clerk::SECRET_KEY),
                ("CREDIT_PLANS", plans.as_str()),
            ],
        )
        .await;
        assert!(finished.status.success(), "{finished:?}");
        finished
    }

    async fn exec(&self, sql: &str) {
        sqlx::query(sql).execute(&self.db.pool).await.unwrap();
    }

    async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    async fn balance(&self, owner: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT (plan_credits + pack_credits)::bigint FROM credit_accounts WHERE owner_id = $1",
        )
        .bind(owner)
        .fetch_optional(&self.db.pool)
        .await
        .unwrap()
        .unwrap_or_default()
    }
}

fn clerk_user(id: &str, email: &str, updated_at: i64) -> Value {
    json!({
        "id": id, "object": "user",
        "email_addresses": [{"id": format!("idn_{id}"), "email_address": email}],
        "primary_email_address_id": format!("idn_{id}"),
        "first_name": "Rita", "last_name": "Levi", "updated_at": updated_at,
        "public_metadata": {}
    })
}

fn subscription(items: Value) -> Value {
    json!({"id": "csub_1", "object": "commerce_subscription", "status": "active", "subscription_items": items})
}

fn item(id: &str, slug: &str, status: &str, period_start: i64) -> Value {
    json!({"id": id, "object": "commerce_subscription_item", "status": status,
           "plan": {"id": format!("cplan_{slug}"), "slug": slug}, "plan_period": "month",
           "period_start": period_start, "period_end": period_start + 30 * 86_400_000_i64})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_deleted_in_clerk_without_its_webhook_is_released_its_place_promoted_and_a_second_run_changes_nothing(
) {
    let w = World::new().await;
    w.exec("INSERT INTO users (id, email, clerk_updated_at) VALUES ('user_gone', 'gone@example.org', 1), ('user_here', 'old@example.org', 1)").await;
    w.exec("INSERT INTO memberships (email, user_id, status, created_at) VALUES ('gone@example.org', 'user_gone', 'active', now() - interval '2 days')").await;
    w.exec("INSERT INTO memberships (email, status, created_at) VALUES ('next@example.org', 'waitlisted', now() - interval '1 day')").await;
    w.clerk
        .set_users(vec![clerk_user("user_here", "new@example.org", 5)]);

    let first = w.sync(&[]).await;
    let audits_after_first = w.scalar("SELECT count(*) FROM admin_actions").await;
    let second = w.sync(&[]).await;

    assert_eq!(
        first.last_line(),
        "processed=1 created_users=0 credits_refreshed=0 failed=0 \
         deleted_users=1 refreshed_users=1 plans_reconciled=0"
    );
    assert_eq!(
        w.clerk.user_lookups(),
        vec!["user_gone".to_owned()],
        "the deletion was confirmed by id, once"
    );
    assert_eq!(
        w.scalar("SELECT count(*) FROM users WHERE id = 'user_gone' AND deleted_at IS NOT NULL")
            .await,
        1
    );
    assert_eq!(
        w.scalar("SELECT count(*) FROM memberships WHERE status = 'active' AND email = 'next@example.org'")
            .await,
        1,
        "the freed place went to the next in line"
    );
    assert_eq!(
        w.scalar(
            "SELECT count(*) FROM admin_actions WHERE action_type = 'user_deleted_sync' \
             AND actor = 'ops_ana' AND user_id = 'user_gone' AND webhook_id IS NULL"
        )
        .await,
        1
    );
    assert_eq!(
        w.scalar("SELECT count(*) FROM admin_actions WHERE action_type = 'waitlist_promoted'")
            .await,
        1
    );
    assert_eq!(
        w.scalar("SELECT count(*) FROM users WHERE id = 'user_here' AND email = 'new@example.org' AND clerk_updated_at = 5")
            .await,
        1,
        "the newer Clerk copy refreshed the mirror"
    );
    assert_eq!(
        second.last_line(),
        "processed=1 created_users=0 credits_refreshed=0 failed=0 \
         deleted_users=0 refreshed_users=0 plans_reconciled=0"
    );
    let run_audits = w
        .scalar("SELECT count(*) FROM admin_actions WHERE action_type = 'sync_users'")
        .await;
    assert_eq!(
        w.scalar("SELECT count(*) FROM admin_actions").await - run_audits,
        audits_after_first - 1,
        "the second run changed nothing but its own audit row"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_whose_start_never_came_is_granted_and_the_late_webhook_changes_nothing() {
    let w = World::new().await;
    w.exec("INSERT INTO users (id, clerk_updated_at) VALUES ('user_sub', 1)")
        .await;
    w.clerk
        .set_users(vec![clerk_user("user_sub", "sub@example.org", 1)]);
    w.clerk.set_subscription(
        "user_sub",
        subscription(json!([item("item_pro", "pro", "active", PERIOD)])),
    );

    let sync = w.sync(&[]).await;

    assert!(
        sync.last_line().ends_with("plans_reconciled=1"),
        "{}",
        sync.stdout
    );
    assert_eq!(w.balance("user_sub").await, 1000);
    assert_eq!(
        w.scalar(&format!(
            "SELECT count(*) FROM credit_ledger WHERE idempotency_key = 'plan:item_pro:{PERIOD}' AND actor = 'ops_ana'"
        ))
        .await,
        1
    );

    // The webhook arrives late, through the ingress and the worker.
    let secret = new_secret();
    let database_url = w.db.url(None);
    let plans = w.plans.path();
    let (_ingress, addr, _) = Service::ingress_run(&database_url, &w.broker.prefix, &secret, &[]);
    let _worker = Service::worker_run(
        &database_url,
        &w.broker.prefix,
        &[("CREDIT_PLANS", plans.as_str())],
    );
    let late = Delivery::signed(
        &secret,
        subscription_item(
            "subscriptionItem.active",
            "item_pro",
            "user_sub",
            "pro",
            "active",
            Some(PERIOD),
        ),
    );
    let status = late.post_to(&addr).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    wait_for("the late webhook to be processed", DEADLINE, || async {
        (w.scalar("SELECT count(*) FROM webhook_events WHERE status = 'processed'")
            .await
            == 1)
            .then_some(())
    })
    .await;

    assert_eq!(w.balance("user_sub").await, 1000);
    assert_eq!(w.scalar("SELECT count(*) FROM credit_ledger").await, 1);
    let again = w.sync(&[]).await;
    assert!(
        again.last_line().ends_with("plans_reconciled=0"),
        "{}",
        again.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_whose_end_never_came_falls_back_to_the_default_plan() {
    let w = World::new().await;
    w.exec("INSERT INTO users (id, clerk_updated_at) VALUES ('user_lapsed', 1)")
        .await;
    w.exec(&format!(
        "INSERT INTO credit_accounts (owner_id, plan_slug, plan_credits, pack_credits, plan_period_start, plan_item_id) \
         VALUES ('user_lapsed', 'pro', 1000, 5, {PERIOD}, 'item_pro')"
    ))
    .await;
    w.exec(&format!(
        "INSERT INTO credit_ledger (owner_id, delta, reason, idempotency_key) VALUES \
         ('user_lapsed', 1000, 'plan_grant', 'plan:item_pro:{PERIOD}'), ('user_lapsed', 5, 'credit_pack', 'pack:a:b')"
    ))
    .await;
    w.clerk
        .set_users(vec![clerk_user("user_lapsed", "l@example.org", 1)]);
    w.clerk.set_subscription(
        "user_lapsed",
        subscription(json!([item("item_pro", "pro", "ended", PERIOD)])),
    );

    let dry = w.sync(&["--dry-run"]).await;
    let balance_after_dry_run = w.balance("user_lapsed").await;
    let real = w.sync(&[]).await;

    assert!(
        dry.stdout
            .contains("would have ended plan item item_pro of user_lapsed"),
        "{}",
        dry.stdout
    );
    assert!(dry.last_line().starts_with("dry run: "), "{}", dry.stdout);
    assert!(
        dry.last_line().ends_with("plans_reconciled=1"),
        "{}",
        dry.stdout
    );
    assert_eq!(balance_after_dry_run, 1005, "a dry run changes nothing");
    assert!(
        real.last_line().ends_with("plans_reconciled=1"),
        "{}",
        real.stdout
    );
    assert_eq!(
        w.balance("user_lapsed").await,
        10 + 5,
        "the default plan, and the pack stays"
    );
    assert_eq!(
        w.scalar(
            "SELECT (SELECT sum(delta) FROM credit_ledger WHERE owner_id = 'user_lapsed') \
             - (SELECT plan_credits + pack_credits FROM credit_accounts WHERE owner_id = 'user_lapsed')"
        )
        .await,
        0,
        "the ledger sums to the balance"
    );
}
