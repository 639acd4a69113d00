//! Credits from Clerk Billing events, the ledger, operators' adjustments and
//! the Clerk metadata sync (`SPEC.md` sections 9.2–9.4), against a real
//! PostgreSQL and RabbitMQ and a local fake of Clerk's API.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    broker::TestBroker,
    db::TestDb,
    deliveries::{new_id, payment_attempt, subscription_item, user_event},
    fake_clerk::{self, Answer, FakeClerk},
    process::Service,
    wait_for,
    worker::{deliver, finished_events, settings, wait_processed, TestWorker},
};
use shared::secret::Secret;
use sqlx::PgPool;
use worker::{
    clerk_api::MAX_RETRY_DELAY,
    config::ClerkSettings,
    credits::{
        adjust::{adjust, AdjustError, Adjustment, Target},
        Catalog,
    },
};

const DEADLINE: Duration = Duration::from_secs(30);
const PLANS: &str = r#"
default_plan = "free_user"
[plans.free_user]
credits = 10
[plans.pro]
credits = 1000
[packs.credits_500]
credits = 500
"#;
const DAY: i64 = 86_400_000;

struct World {
    worker: Option<TestWorker>,
    broker: TestBroker,
    db: TestDb,
    clerk: FakeClerk,
    sent: i64,
}

impl World {
    async fn new() -> Self {
        let db = TestDb::new().await;
        let broker = TestBroker::new().await;
        let clerk = FakeClerk::start().await;
        let mut world = Self {
            worker: None,
            broker,
            db,
            clerk,
            sent: 0,
        };
        world.worker = Some(world.spawn_worker().await);
        world
    }

    async fn spawn_worker(&self) -> TestWorker {
        let mut s = settings(
            self.db.url(None),
            e2e::amqp_url(),
            self.broker.prefix.clone(),
        );
        s.catalog = Catalog::parse(PLANS, "test plans").unwrap();
        s.clerk = Some(ClerkSettings {
            api_url: self.clerk.url.clone(),
            secret_key: Secret::new(fake_clerk::SECRET_KEY.to_owned()),
        });
        TestWorker::spawn_with(s).await
    }

    /// Delivers events one after the other, each processed before the next.
    async fn send(&mut self, bodies: &[Vec<u8>]) {
        for body in bodies {
            deliver(&self.db, &self.broker, &[(new_id(), body.clone())]).await;
            self.sent += 1;
            let expected = self.sent;
            wait_for("the event to be processed", DEADLINE, || async {
                (finished_events(&self.db).await >= expected).then_some(())
            })
            .await;
        }
    }

    async fn account(&self, owner: &str) -> (Option<String>, i32, i32) {
        sqlx::query_as(
            "SELECT plan_slug, plan_credits, pack_credits FROM credit_accounts WHERE owner_id = $1",
        )
        .bind(owner)
        .fetch_optional(&self.db.pool)
        .await
        .unwrap()
        .unwrap_or((None, 0, 0))
    }

    async fn balance(&self, owner: &str) -> i64 {
        let (_, plan, pack) = self.account(owner).await;
        i64::from(plan) + i64::from(pack)
    }
}

/// `count` distinct paid payment attempts of one `credits_500` pack each.
fn pack_payments(
    attempt_prefix: &str,
    owner: &str,
    item: &str,
    count: usize,
) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let attempt = format!("{attempt_prefix}{i}");
            (
                new_id(),
                payment_attempt(&attempt, "paid", owner, &[(item, "credits_500", None)]),
            )
        })
        .collect()
}

/// The sum of each owner's ledger equals its balance.
async fn assert_ledger_matches_balances(pool: &PgPool) {
    let mismatches: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT a.owner_id, (a.plan_credits + a.pack_credits)::bigint, COALESCE(sum(l.delta), 0)::bigint \
         FROM credit_accounts a LEFT JOIN credit_ledger l ON l.owner_id = a.owner_id \
         GROUP BY a.owner_id, a.plan_credits, a.pack_credits \
         HAVING (a.plan_credits + a.pack_credits) <> COALESCE(sum(l.delta), 0)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        mismatches.is_empty(),
        "ledger and balance disagree: {mismatches:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_start_grants_its_allotment_a_renewal_resets_it_and_an_older_period_changes_nothing()
{
    let mut w = World::new().await;
    let p1 = 1_700_000_000_000;

    w.send(&[subscription_item(
        "subscriptionItem.active",
        "csub_item_pro",
        "user_a",
        "pro",
        "active",
        Some(p1),
    )])
    .await;
    assert_eq!(w.account("user_a").await, (Some("pro".to_owned()), 1000, 0));
    // Renewal: same item, next period. Then a late copy of an older period.
    w.send(&[
        subscription_item(
            "subscriptionItem.updated",
            "csub_item_pro",
            "user_a",
            "pro",
            "active",
            Some(p1 + 30 * DAY),
        ),
        subscription_item(
            "subscriptionItem.updated",
            "csub_item_pro",
            "user_a",
            "pro",
            "active",
            Some(p1 - 30 * DAY),
        ),
    ])
    .await;

    assert_eq!(w.account("user_a").await, (Some("pro".to_owned()), 1000, 0));
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT idempotency_key FROM credit_ledger WHERE owner_id = 'user_a' ORDER BY id",
    )
    .fetch_all(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(
        keys,
        vec![
            format!("plan:csub_item_pro:{p1}"),
            format!("plan:csub_item_pro:{}", p1 + 30 * DAY)
        ]
    );
    assert_ledger_matches_balances(&w.db.pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_applies_at_once_a_downgrade_when_its_item_becomes_active_and_old_items_ending_change_nothing(
) {
    let mut w = World::new().await;
    let t = 1_700_000_000_000;

    w.send(&[subscription_item(
        "subscriptionItem.active",
        "csub_item_free",
        "user_b",
        "free_user",
        "active",
        None,
    )])
    .await;
    assert_eq!(w.balance("user_b").await, 10);
    // Upgrade: the pro item becomes active now; the free item ends after.
    w.send(&[
        subscription_item(
            "subscriptionItem.active",
            "csub_item_pro",
            "user_b",
            "pro",
            "active",
            Some(t),
        ),
        subscription_item(
            "subscriptionItem.ended",
            "csub_item_free",
            "user_b",
            "free_user",
            "ended",
            None,
        ),
    ])
    .await;
    assert_eq!(w.account("user_b").await, (Some("pro".to_owned()), 1000, 0));
    // Downgrade: canceled now, nothing changes until the period ends.
    w.send(&[
        subscription_item(
            "subscriptionItem.canceled",
            "csub_item_pro",
            "user_b",
            "pro",
            "canceled",
            Some(t),
        ),
        subscription_item(
            "subscriptionItem.upcoming",
            "csub_item_free2",
            "user_b",
            "free_user",
            "upcoming",
            Some(t + 30 * DAY),
        ),
    ])
    .await;
    assert_eq!(w.balance("user_b").await, 1000);
    w.send(&[
        subscription_item(
            "subscriptionItem.active",
            "csub_item_free2",
            "user_b",
            "free_user",
            "active",
            Some(t + 30 * DAY),
        ),
        subscription_item(
            "subscriptionItem.ended",
            "csub_item_pro",
            "user_b",
            "pro",
            "ended",
            Some(t),
        ),
    ])
    .await;

    assert_eq!(
        w.account("user_b").await,
        (Some("free_user".to_owned()), 10, 0)
    );
    assert_ledger_matches_balances(&w.db.pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_end_of_the_current_plan_falls_back_to_the_default_plan() {
    let mut w = World::new().await;

    w.send(&[
        subscription_item(
            "subscriptionItem.active",
            "csub_item_pro",
            "user_c",
            "pro",
            "active",
            Some(5),
        ),
        subscription_item(
            "subscriptionItem.canceled",
            "csub_item_pro",
            "user_c",
            "pro",
            "canceled",
            Some(5),
        ),
    ])
    .await;
    assert_eq!(w.balance("user_c").await, 1000, "canceled changes nothing");
    w.send(&[subscription_item(
        "subscriptionItem.ended",
        "csub_item_pro",
        "user_c",
        "pro",
        "ended",
        Some(5),
    )])
    .await;
    // A late copy of the item's start cannot bring the credits back.
    w.send(&[subscription_item(
        "subscriptionItem.active",
        "csub_item_pro",
        "user_c",
        "pro",
        "active",
        Some(5),
    )])
    .await;

    assert_eq!(
        w.account("user_c").await,
        (Some("free_user".to_owned()), 10, 0)
    );
    assert_ledger_matches_balances(&w.db.pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paid_pack_adds_its_credits_once_and_a_paid_plan_item_grants_like_its_item_event() {
    let mut w = World::new().await;
    let pack = payment_attempt(
        "pa_1",
        "paid",
        "user_d",
        &[("csub_item_pack", "credits_500", None)],
    );

    w.send(&[
        payment_attempt(
            "pa_0",
            "pending",
            "user_d",
            &[("csub_item_pack", "credits_500", None)],
        ),
        pack.clone(),
        // Clerk sends the same attempt again under a new svix id.
        pack,
        payment_attempt(
            "pa_2",
            "paid",
            "user_d",
            &[("csub_item_pro", "pro", Some(77))],
        ),
        subscription_item(
            "subscriptionItem.active",
            "csub_item_pro",
            "user_d",
            "pro",
            "active",
            Some(77),
        ),
        payment_attempt(
            "pa_3",
            "failed",
            "user_d",
            &[("csub_item_pack2", "credits_500", None)],
        ),
        payment_attempt(
            "pa_4",
            "paid",
            "user_d",
            &[("csub_item_x", "not_in_catalog", None)],
        ),
    ])
    .await;

    assert_eq!(
        w.account("user_d").await,
        (Some("pro".to_owned()), 1000, 500)
    );
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM credit_ledger WHERE owner_id = 'user_d'")
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
    assert_eq!(rows, 2);
    assert_ledger_matches_balances(&w.db.pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_organization_payer_owns_the_credits() {
    let mut w = World::new().await;

    w.send(&[payment_attempt(
        "pa_org",
        "paid",
        "org_1",
        &[("csub_item_p", "credits_500", None)],
    )])
    .await;

    assert_eq!(w.balance("org_1").await, 500);
    assert_ledger_matches_balances(&w.db.pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_concurrent_pack_payments_for_one_user_leave_exactly_a_hundred_packs() {
    let w = World::new().await;
    let second = w.spawn_worker().await;
    let events = pack_payments("pa_", "user_e", "csub_item_pack", 100);

    deliver(&w.db, &w.broker, &events).await;
    wait_processed(&w.db, 100, DEADLINE).await;

    assert_eq!(w.balance("user_e").await, 100 * 500);
    assert_ledger_matches_balances(&w.db.pool).await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_balance_reaches_clerk_through_503_and_429_with_retry_after() {
    let mut w = World::new().await;
    w.clerk.script(&[
        Answer::Status(503),
        Answer::RateLimited {
            retry_after_secs: 1,
        },
    ]);

    w.send(&[payment_attempt(
        "pa_sync",
        "paid",
        "user_f",
        &[("csub_item_p", "credits_500", None)],
    )])
    .await;

    let credits = wait_for("the write to reach Clerk", DEADLINE, || async {
        w.clerk.credits_of("user_f")
    })
    .await;
    assert_eq!(credits, serde_json::json!(500));
    assert_eq!(w.clerk.write_attempts(), 3, "503, 429, then 200");
    wait_for("the sync queue to empty", DEADLINE, || async {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM clerk_sync_queue")
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
        (pending == 0).then_some(())
    })
    .await;
    let synced: Option<i32> = sqlx::query_scalar(
        "SELECT clerk_synced_credits FROM credit_accounts WHERE owner_id = 'user_f'",
    )
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(synced, Some(500));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_of_a_day_is_cut_to_the_cap() {
    let mut w = World::new().await;
    w.clerk.script(&[Answer::RateLimited {
        retry_after_secs: 86_400,
    }]);

    w.send(&[payment_attempt(
        "pa_cap",
        "paid",
        "user_cap",
        &[("csub_item_p", "credits_500", None)],
    )])
    .await;
    // The row is rescheduled by the same statement that counts the attempt.
    let (within_cap, last_error): (bool, Option<String>) =
        wait_for("the 429 to reschedule the write", DEADLINE, || async {
            sqlx::query_as(
                "SELECT due_at <= clock_timestamp() + make_interval(secs => $1), last_error \
                 FROM clerk_sync_queue WHERE owner_id = 'user_cap' AND attempts = 1",
            )
            .bind(MAX_RETRY_DELAY.as_secs_f64())
            .fetch_optional(&w.db.pool)
            .await
            .unwrap()
        })
        .await;

    assert!(
        within_cap,
        "the next write is due within {MAX_RETRY_DELAY:?}, not a day"
    );
    assert!(last_error.unwrap().contains("429"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_refuses_a_clerk_api_url_that_is_not_https_except_on_loopback() {
    let w = World::new().await;
    let database_url = w.db.url(None);
    let key = [("CLERK_SECRET_KEY", fake_clerk::SECRET_KEY)];

    let mut refusals = Vec::new();
    for url in [
        "http://api.clerk.com/v1",
        "http://10.1.2.3:8080/v1",
        "ftp://127.0.0.1/v1",
    ] {
        let env = [key[0], ("CLERK_API_URL", url)];
        let mut worker = Service::worker_run(&database_url, &w.broker.prefix, &env);
        refusals.push((url, worker.wait_exit(DEADLINE)));
    }
    let env = [key[0], ("CLERK_API_URL", w.clerk.url.as_str())];
    let mut local = Service::worker_run(&database_url, &w.broker.prefix, &env);
    local.wait_for_line("Clerk metadata sync enabled", DEADLINE);
    local.terminate();
    let (local_status, _) = local.wait_exit(DEADLINE);

    for (url, (status, stderr)) in &refusals {
        assert_eq!(status.code(), Some(1), "{url}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{url}: {stderr}");
        assert!(
            stderr.contains("CLERK_API_URL") && stderr.contains("https://"),
            "{url}: {stderr}"
        );
        assert!(!stderr.contains(fake_clerk::SECRET_KEY), "{url}: {stderr}");
    }
    assert!(local_status.success(), "plain http to 127.0.0.1 is allowed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_for_one_user_coalesces_into_few_writes_of_the_final_balance() {
    let w = World::new().await;
    let events = pack_payments("pa_burst_", "user_g", "csub_item_p", 30);

    deliver(&w.db, &w.broker, &events).await;
    wait_processed(&w.db, 30, DEADLINE).await;
    wait_for("Clerk to hold the final balance", DEADLINE, || async {
        (w.clerk.credits_of("user_g") == Some(serde_json::json!(15_000))).then_some(())
    })
    .await;

    let writes = w.clerk.writes().len();
    assert!(writes < 30, "{writes} writes for 30 changes");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_sync_survives_a_worker_restart() {
    let mut w = World::new().await;
    // Clerk is down for longer than the first worker lives.
    w.clerk.script(&[Answer::Status(503); 3]);
    w.send(&[payment_attempt(
        "pa_restart",
        "paid",
        "user_h",
        &[("csub_item_p", "credits_500", None)],
    )])
    .await;
    wait_for("a first failed write", DEADLINE, || async {
        (w.clerk.write_attempts() >= 1).then_some(())
    })
    .await;
    w.worker.take().unwrap().stop().await;

    let _restarted = w.spawn_worker().await;

    let credits = wait_for("the write after the restart", DEADLINE, || async {
        w.clerk.credits_of("user_h")
    })
    .await;
    assert_eq!(credits, serde_json::json!(500));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_user_updated_echo_of_our_own_write_causes_no_new_write() {
    let mut w = World::new().await;
    w.send(&[payment_attempt(
        "pa_echo",
        "paid",
        "user_i",
        &[("csub_item_p", "credits_500", None)],
    )])
    .await;
    wait_for("the write", DEADLINE, || async {
        w.clerk.credits_of("user_i")
    })
    .await;
    let attempts_before = w.clerk.write_attempts();

    // Clerk answers our write with a user.updated carrying the new metadata.
    let mut echo: serde_json::Value =
        serde_json::from_slice(&user_event("user.updated", "user_i", "i@example.org", 5000))
            .unwrap();
    echo["data"]["public_metadata"] = serde_json::json!({"credits": 500});
    w.send(&[serde_json::to_vec(&echo).unwrap()]).await;
    // A later change is written: the queue is working, yet the echo added nothing.
    w.send(&[payment_attempt(
        "pa_echo2",
        "paid",
        "user_j",
        &[("csub_item_p", "credits_500", None)],
    )])
    .await;
    wait_for("the later write", DEADLINE, || async {
        w.clerk.credits_of("user_j")
    })
    .await;

    let for_i = w
        .clerk
        .writes()
        .iter()
        .filter(|x| x.user_id == "user_i")
        .count();
    assert_eq!(for_i, 1);
    assert_eq!(w.clerk.write_attempts(), attempts_before + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn credits_adjust_sets_and_adds_with_audit_and_refuses_bad_input() {
    let mut w = World::new().await;
    w.send(&[user_event("user.created", "user_k", "k@example.org", 1000)])
        .await;
    let request = |target| Adjustment {
        user_id: "user_k".to_owned(),
        target,
        reason: "support ticket 42".to_owned(),
        actor: "ops@example.org".to_owned(),
    };

    let set = adjust(&w.db.pool, &request(Target::Set(150)))
        .await
        .unwrap();
    let added = adjust(&w.db.pool, &request(Target::Add(-50)))
        .await
        .unwrap();
    let negative = adjust(&w.db.pool, &request(Target::Add(-101)))
        .await
        .unwrap_err();
    let unknown = adjust(
        &w.db.pool,
        &Adjustment {
            user_id: "user_nobody".to_owned(),
            ..request(Target::Set(1))
        },
    )
    .await
    .unwrap_err();

    assert_eq!((set.before, set.after), (0, 150));
    assert_eq!((added.before, added.after), (150, 100));
    assert!(matches!(negative, AdjustError::Refused(_)), "{negative}");
    assert!(matches!(unknown, AdjustError::UnknownUser(_)), "{unknown}");
    assert_eq!(w.balance("user_k").await, 100);
    let audits: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT actor, details FROM admin_actions WHERE action_type = 'credits_adjusted' ORDER BY id",
    )
    .fetch_all(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(audits.len(), 2);
    assert_eq!(audits[0].0, "ops@example.org");
    assert_eq!(audits[1].1["reason"], "support ticket 42");
    assert_ledger_matches_balances(&w.db.pool).await;
    wait_for("the adjusted balance in Clerk", DEADLINE, || async {
        (w.clerk.credits_of("user_k") == Some(serde_json::json!(100))).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_credits_adjust_command_refuses_non_integers_and_negative_results_with_a_clear_error() {
    let w = World::new().await;
    let database_url = w.db.url(None);
    sqlx::query("INSERT INTO users (id) VALUES ('user_l')")
        .execute(&w.db.pool)
        .await
        .unwrap();
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("AMQP_URL", &*e2e::amqp_url()),
        ("AMQP_PREFIX", w.broker.prefix.as_str()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, *v)).collect();

    let mut not_a_number = Service::start(
        "worker",
        &[
            "credits", "adjust", "user_l", "--add", "1.5", "--reason", "x",
        ],
        &env,
    );
    let (status, stderr) = not_a_number.wait_exit(DEADLINE);
    assert!(!status.success());
    assert!(stderr.contains("1.5"), "{stderr}");

    let mut negative = Service::start(
        "worker",
        &[
            "credits", "adjust", "user_l", "--set", "-5", "--reason", "x",
        ],
        &env,
    );
    let (status, stderr) = negative.wait_exit(DEADLINE);
    assert!(!status.success());
    assert!(stderr.contains("below zero"), "{stderr}");

    let mut good = Service::start(
        "worker",
        &[
            "credits",
            "adjust",
            "user_l",
            "--set",
            "25",
            "--reason",
            "welcome gift",
            "--actor",
            "ops",
        ],
        &env,
    );
    let (status, stderr) = good.wait_exit(DEADLINE);
    assert!(status.success(), "{stderr}");
    assert_eq!(w.balance("user_l").await, 25);
}

fn clerk_user(id: &str, credits: Option<i64>) -> serde_json::Value {
    serde_json::json!({
        "id": id, "object": "user",
        "email_addresses": [{"id": format!("idn_{id}"), "email_address": format!("{id}@example.org")}],
        "primary_email_address_id": format!("idn_{id}"),
        "first_name": "Sync", "last_name": null, "updated_at": 1000,
        "public_metadata": credits.map_or(serde_json::json!({}), |c| serde_json::json!({"credits": c}))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_users_pages_through_three_pages_creates_missing_users_and_pushes_balances() {
    let w = World::new().await;
    w.clerk.set_users(vec![
        clerk_user("user_1", Some(100)),
        clerk_user("user_2", None),
        serde_json::json!({"object": "user", "note": "no id: counted as failed"}),
        clerk_user("user_3", Some(7)),
        clerk_user("user_4", None),
    ]);
    sqlx::query("INSERT INTO users (id) VALUES ('user_1')")
        .execute(&w.db.pool)
        .await
        .unwrap();
    for (owner, credits) in [("user_1", 100), ("user_2", 50), ("user_3", 9)] {
        sqlx::query("INSERT INTO credit_accounts (owner_id, pack_credits) VALUES ($1, $2)")
            .bind(owner)
            .bind(credits)
            .execute(&w.db.pool)
            .await
            .unwrap();
    }
    let api = worker::clerk_api::ClerkApi::new(
        &w.clerk.url,
        Secret::new(fake_clerk::SECRET_KEY.to_owned()),
    )
    .unwrap();
    let request = |dry_run| worker::sync_users::SyncRequest {
        dry_run,
        page_size: 2,
        retry_base_delay: Duration::from_millis(10),
        actor: "test".to_owned(),
    };
    let catalog = Catalog::parse(PLANS, "test plans").unwrap();
    let quiet = &mut worker::sync_users::Quiet;

    let dry = worker::sync_users::sync_users(&w.db.pool, &api, &catalog, &request(true), quiet)
        .await
        .unwrap();
    let users_after_dry_run: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    let writes_after_dry_run = w.clerk.write_attempts();
    let report = worker::sync_users::sync_users(&w.db.pool, &api, &catalog, &request(false), quiet)
        .await
        .unwrap();

    assert_eq!(dry, report, "a dry run reports what the real run does");
    assert_eq!(
        (users_after_dry_run, writes_after_dry_run),
        (1, 0),
        "a dry run writes nothing"
    );
    assert_eq!(
        report.to_string(),
        "processed=5 created_users=3 credits_refreshed=2 failed=1 \
         deleted_users=0 refreshed_users=1 plans_reconciled=0"
    );
    let first_pages: Vec<(u32, Option<String>)> =
        w.clerk.list_queries().into_iter().take(3).collect();
    assert_eq!(
        first_pages,
        vec![
            (2, None),
            (2, Some("user_2".to_owned())),
            (2, Some("user_3".to_owned()))
        ]
    );
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    assert_eq!(users, 4);
    assert_eq!(w.clerk.credits_of("user_2"), Some(serde_json::json!(50)));
    assert_eq!(w.clerk.credits_of("user_3"), Some(serde_json::json!(9)));
    assert_eq!(w.clerk.credits_of("user_1"), None, "Clerk already had 100");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sync_users_command_prints_its_counts_and_without_a_key_fails_clearly() {
    let w = World::new().await;
    w.clerk.set_users(vec![clerk_user("user_9", None)]);
    let database_url = w.db.url(None);
    let amqp_url = e2e::amqp_url();
    let base = vec![
        ("DATABASE_URL", database_url.as_str()),
        ("AMQP_URL", amqp_url.as_str()),
        ("AMQP_PREFIX", w.broker.prefix.as_str()),
        ("CLERK_API_URL", w.clerk.url.as_str()),
    ];
    let mut with_key = base.clone();
    with_key.push(("CLERK_SECRET_KEY", fake_clerk::SECRET_KEY));

    let mut run = Service::start("worker", &["sync", "users"], &with_key);
    let (status, _) = run.wait_exit(DEADLINE);
    let mut keyless = Service::start("worker", &["sync", "users"], &base);
    let (keyless_status, keyless_stderr) = keyless.wait_exit(DEADLINE);

    assert!(status.success());
    let stdout_user: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE id = 'user_9'")
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    assert_eq!(stdout_user, 1);
    assert!(!keyless_status.success());
    assert!(
        keyless_stderr.contains("CLERK_SECRET_KEY is not set"),
        "{keyless_stderr}"
    );
    assert!(!keyless_stderr.contains(fake_clerk::SECRET_KEY));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_secret_key_the_worker_says_once_that_the_clerk_sync_is_off() {
    let w = World::new().await;
    let database_url = w.db.url(None);
    let mut worker = Service::worker_run(database_url.as_str(), w.broker.prefix.as_str(), &[]);

    worker.wait_for_line("consuming", DEADLINE);
    worker.terminate();
    let (status, stderr) = worker.wait_exit(DEADLINE);

    assert!(status.success());
    assert_eq!(
        stderr.matches("Clerk metadata sync disabled").count(),
        1,
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_item_that_ended_before_it_was_ever_granted_cannot_be_granted_later() {
    let mut w = World::new().await;

    // The end of an item arrives before its start (events in any order).
    w.send(&[
        subscription_item(
            "subscriptionItem.ended",
            "csub_item_late",
            "user_p",
            "pro",
            "ended",
            Some(9),
        ),
        subscription_item(
            "subscriptionItem.active",
            "csub_item_late",
            "user_p",
            "pro",
            "active",
            Some(9),
        ),
    ])
    .await;

    assert_eq!(w.balance("user_p").await, 0);
    assert_ledger_matches_balances(&w.db.pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_adjustment_beyond_the_balance_range_is_refused_without_panicking() {
    let mut w = World::new().await;
    w.send(&[user_event("user.created", "user_q", "q@example.org", 1000)])
        .await;
    let request = |target| Adjustment {
        user_id: "user_q".to_owned(),
        target,
        reason: "typo".to_owned(),
        actor: "ops".to_owned(),
    };
    adjust(&w.db.pool, &request(Target::Set(10))).await.unwrap();

    let huge = adjust(&w.db.pool, &request(Target::Add(i64::MAX)))
        .await
        .unwrap_err();
    let tiny = adjust(&w.db.pool, &request(Target::Set(i64::MIN)))
        .await
        .unwrap_err();

    assert!(matches!(huge, AdjustError::Refused(_)), "{huge}");
    assert!(matches!(tiny, AdjustError::Refused(_)), "{tiny}");
    assert_eq!(w.balance("user_q").await, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_billing_event_that_changes_nothing_is_not_dead_lettered_for_a_missing_payer() {
    let mut w = World::new().await;
    let mut canceled: serde_json::Value = serde_json::from_slice(&subscription_item(
        "subscriptionItem.canceled",
        "csub_item_x",
        "user_r",
        "pro",
        "canceled",
        Some(1),
    ))
    .unwrap();
    canceled["data"]["payer"] = serde_json::Value::Null;
    let mut unknown_plan = canceled.clone();
    unknown_plan["type"] = serde_json::json!("subscriptionItem.active");
    unknown_plan["data"]["plan"]["slug"] = serde_json::json!("not_in_catalog");

    w.send(&[
        serde_json::to_vec(&canceled).unwrap(),
        serde_json::to_vec(&unknown_plan).unwrap(),
    ])
    .await;

    let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM webhook_events ORDER BY id")
        .fetch_all(&w.db.pool)
        .await
        .unwrap();
    assert_eq!(statuses, vec!["processed", "processed"]);
}
