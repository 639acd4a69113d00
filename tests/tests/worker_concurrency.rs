//! Several workers on one queue, duplicates and shutdowns (`SPEC.md` section 8).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    broker::TestBroker,
    commands::queue_depth,
    db::TestDb,
    deliveries::{new_id, new_secret, user_created, user_deleted, user_event, Delivery},
    process::Service,
    wait_for,
    worker::{deliver, finished_events, publish, wait_processed, wait_started, TestWorker},
};
use reqwest::StatusCode;

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn three_workers_and_every_deletion_delivered_three_times_promote_the_waitlist_exactly_once_in_order(
) {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    for i in 0..30 {
        sqlx::query("INSERT INTO memberships (email, user_id, status, created_at, activated_at) VALUES ($1, $2, 'active', now() - interval '1 day', now())")
            .bind(format!("m{i}@example.org"))
            .bind(format!("user_m{i}"))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let mut waitlist = Vec::new();
    for i in 0..20 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO memberships (email, status, created_at) VALUES ($1, 'waitlisted', now() - make_interval(secs => $2)) RETURNING id",
        )
        .bind(format!("w{i}@example.org"))
        .bind(f64::from(1000 - i))
        .fetch_one(&db.pool)
        .await
        .unwrap();
        waitlist.push(id);
    }
    // 30 members and 5 users who never had a membership.
    let events: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| format!("user_m{i}"))
        .chain((0..5).map(|i| format!("user_x{i}")))
        .map(|user| (new_id(), user_deleted(&user)))
        .collect();
    let workers = [
        TestWorker::spawn(&db, &broker).await,
        TestWorker::spawn(&db, &broker).await,
        TestWorker::spawn(&db, &broker).await,
    ];

    deliver(&db, &broker, &events).await;
    publish(&broker, &events).await;
    publish(&broker, &events).await;
    wait_processed(&db, 35, DEADLINE).await;
    wait_for("every copy to be consumed", DEADLINE, || async {
        (broker.worker_queue_depth().await == 0).then_some(())
    })
    .await;
    for worker in workers {
        worker.stop().await;
    }

    let promoted: Vec<i64> = sqlx::query_scalar(
        "SELECT membership_id FROM admin_actions WHERE action_type = 'waitlist_promoted' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(promoted, waitlist, "20 promotions, in waitlist order");
    let by_activation: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM memberships WHERE id = ANY($1) ORDER BY activated_at, id",
    )
    .bind(&waitlist)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(by_activation, waitlist, "activated in waitlist order");
    let per_member: Vec<(String, i64)> = sqlx::query_as(
        "SELECT user_id, count(*) FROM admin_actions WHERE action_type = 'user_deleted_webhook' GROUP BY user_id ORDER BY user_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        per_member.len(),
        30,
        "one audit per member, none for users without membership"
    );
    assert!(per_member.iter().all(|(_, n)| *n == 1));
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM memberships GROUP BY status ORDER BY status")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        statuses,
        vec![("active".to_owned(), 20), ("canceled".to_owned(), 30)]
    );
    let attempts: i64 = sqlx::query_scalar("SELECT sum(attempts) FROM webhook_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 35, "each event applied by exactly one attempt");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_in_the_middle_of_a_burst_loses_nothing_and_exits_zero() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let database_url = db.url(None);
    let mut worker = Service::worker_run(
        database_url.as_str(),
        broker.prefix.as_str(),
        &[("WORKER_CONCURRENCY", "4")],
    );
    worker.wait_for_line("consuming", DEADLINE);
    let events: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| {
            (
                new_id(),
                user_event("user.created", &format!("user_{i}"), "x@example.org", 1000),
            )
        })
        .collect();

    deliver(&db, &broker, &events).await;
    wait_started(&db, DEADLINE).await;
    worker.terminate();
    let (status, stderr) = worker.wait_exit(DEADLINE);
    let done_by_first = finished_events(&db).await;
    eprintln!("first worker finished {done_by_first} of 300 before it stopped");
    assert!(status.success(), "exit status {status:?}\n{stderr}");
    assert!(stderr.contains("shutdown: draining"), "{stderr}");

    // What the first worker did not finish is still in the queue.
    let second = TestWorker::spawn(&db, &broker).await;
    wait_processed(&db, 300, DEADLINE).await;
    second.stop().await;
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(users, 300);
    let attempts: i64 = sqlx::query_scalar("SELECT sum(attempts) FROM webhook_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 300, "nothing applied twice");
}

/// The failing events' rows: (svix id, status, attempts, processed).
async fn failing_rows(db: &TestDb, ids: &[String]) -> Vec<(String, String, i32, bool)> {
    sqlx::query_as(
        "SELECT webhook_id, status, attempts, processed_at IS NOT NULL FROM webhook_events \
         WHERE webhook_id = ANY($1) ORDER BY webhook_id",
    )
    .bind(ids)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_events_wait_in_delay_queues_so_300_healthy_ones_behind_them_are_processed_meanwhile(
) {
    const MAX_ATTEMPTS: i32 = 10;
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    // Inserting these users fails until the trigger is dropped: a raised
    // exception is a transient failure, counted and retried.
    sqlx::raw_sql(
        "CREATE FUNCTION fail_some_users() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
             IF NEW.id LIKE 'user_failing_%' THEN RAISE EXCEPTION 'injected failure'; END IF; \
             RETURN NEW; \
         END $$; \
         CREATE TRIGGER fail_some_users BEFORE INSERT ON users \
             FOR EACH ROW EXECUTE FUNCTION fail_some_users()",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let secret = new_secret();
    let database_url = db.url(None);
    let (_ingress, addr, _) = Service::ingress_run(&database_url, &broker.prefix, &secret, &[]);
    let max_attempts = MAX_ATTEMPTS.to_string();
    // The binary's own retry delays (1 s doubling up to 30 s): ten attempts
    // take a failing event at least 75 s, far more than the scenario needs.
    let mut worker = Service::worker_run(
        &database_url,
        &broker.prefix,
        &[
            ("WORKER_CONCURRENCY", "4"),
            ("WORKER_MAX_ATTEMPTS", max_attempts.as_str()),
        ],
    );
    worker.wait_for_line("consuming", DEADLINE);
    let ready: serde_json::Value =
        serde_json::from_str(&worker.wait_for_line("worker ready", DEADLINE)).unwrap();
    let metrics_url = format!("http://{}/metrics", ready["ops_addr"].as_str().unwrap());
    let send = |body: Vec<u8>| {
        let delivery = Delivery::signed(&secret, body);
        let addr = addr.clone();
        async move {
            assert_eq!(delivery.post_to(&addr).await, StatusCode::OK);
            delivery.id
        }
    };
    let mut failing = Vec::new();
    for i in 0..8 {
        failing.push(send(user_created(&format!("user_failing_{i}"))).await);
    }
    failing.sort();

    // Twice the worker's four slots have failed at least once: none of them
    // keeps a slot while it waits for its retry.
    wait_for("every failing event to fail once", DEADLINE, || async {
        let rows = failing_rows(&db, &failing).await;
        rows.iter()
            .all(|(_, status, attempts, _)| status == "failed" && *attempts >= 1)
            .then_some(())
    })
    .await;
    for i in 0..300 {
        send(user_created(&format!("user_healthy_{i}"))).await;
    }
    wait_processed(&db, 300, DEADLINE).await;

    for (id, status, attempts, processed) in failing_rows(&db, &failing).await {
        assert_eq!(status, "failed", "{id} is still retrying");
        assert!(
            (1..MAX_ATTEMPTS).contains(&attempts),
            "{id}: {attempts} attempts"
        );
        assert!(!processed, "{id}");
    }
    assert_eq!(
        queue_depth(&broker, &broker.names.dead_letter_queue).await,
        0
    );
    wait_for(
        "the gauge to count the 8 awaiting a retry",
        DEADLINE,
        || async {
            let text = reqwest::get(&metrics_url).await.ok()?.text().await.ok()?;
            text.lines()
                .any(|line| line == "clerk_worker_events_awaiting_retry 8")
                .then_some(())
        },
    )
    .await;

    // The fault is repaired: each failing event succeeds at its next retry.
    sqlx::query("DROP TRIGGER fail_some_users ON users")
        .execute(&db.pool)
        .await
        .unwrap();
    wait_processed(&db, 308, Duration::from_secs(90)).await;
    let delay_queues: Vec<String> = worker::config::Settings::default_retry_policy()
        .steps()
        .into_iter()
        .map(|step| broker.names.retry_queue(step))
        .collect();
    wait_for("no copy left in any queue", DEADLINE, || async {
        let mut left = queue_depth(&broker, &broker.names.worker_queue).await;
        for queue in &delay_queues {
            left += queue_depth(&broker, queue).await;
        }
        (left == 0).then_some(())
    })
    .await;
    worker.terminate();
    let (status, stderr) = worker.wait_exit(DEADLINE);
    assert!(status.success(), "exit status {status:?}\n{stderr}");

    for (id, status, attempts, processed) in failing_rows(&db, &failing).await {
        assert_eq!(status, "processed", "{id}");
        assert!(processed, "{id}");
        assert!(
            (2..=MAX_ATTEMPTS).contains(&attempts),
            "{id}: failed, then applied by one more attempt: {attempts}"
        );
    }
    assert_eq!(
        queue_depth(&broker, &broker.names.dead_letter_queue).await,
        0
    );
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(users, 308, "each event applied once");
    let healthy_attempts: i64 = sqlx::query_scalar(
        "SELECT sum(attempts) FROM webhook_events WHERE NOT (webhook_id = ANY($1))",
    )
    .bind(&failing)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(healthy_attempts, 300, "each healthy event took one attempt");
}

/// Every user insert that commits logs its top-level transaction in
/// `applied_in`; one for a user whose id starts with `user_failing_` raises
/// an error naming its transaction instead.
async fn log_user_inserts(db: &TestDb) {
    sqlx::raw_sql(
        "CREATE TABLE applied_in (user_id text, tx bigint); \
         CREATE FUNCTION log_or_fail() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
             IF NEW.id LIKE 'user_failing_%' THEN \
                 RAISE EXCEPTION 'injected failure in transaction %', txid_current(); \
             END IF; \
             INSERT INTO applied_in VALUES (NEW.id, txid_current()); \
             RETURN NEW; \
         END $$; \
         CREATE TRIGGER log_or_fail BEFORE INSERT ON users \
             FOR EACH ROW EXECUTE FUNCTION log_or_fail()",
    )
    .execute(&db.pool)
    .await
    .unwrap();
}

/// Committed user inserts logged by [`log_user_inserts`], and how many users
/// they name.
async fn user_inserts(db: &TestDb) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), count(DISTINCT user_id) FROM applied_in")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Deliveries that are ready together share one transaction, each in a
/// savepoint of its own: an event that fails in the middle of a batch rolls
/// back alone (it ends dead-lettered with its attempt counted), and the
/// events of the same transaction commit, each applied exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_event_rolls_back_alone_and_the_events_of_its_transaction_commit() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    log_user_inserts(&db).await;
    // Queued before the worker starts, so its deliveries arrive together.
    let events: Vec<(String, Vec<u8>)> = (0..120)
        .map(|i| {
            let user = if i % 10 == 5 {
                format!("user_failing_{i}")
            } else {
                format!("user_healthy_{i}")
            };
            (new_id(), user_created(&user))
        })
        .collect();
    deliver(&db, &broker, &events).await;
    let mut settings = e2e::worker::settings(db.url(None), e2e::amqp_url(), broker.prefix.clone());
    settings.max_attempts = 1;
    // More deliveries in flight than appliers: batches form.
    settings.concurrency = 64;
    let worker = TestWorker::spawn_with(settings).await;

    wait_processed(&db, 108, DEADLINE).await;
    wait_for("the 12 failing events to be dead", DEADLINE, || async {
        let dead: i64 =
            sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE status = 'dead'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        (dead == 12).then_some(())
    })
    .await;

    // Each healthy user was inserted by exactly one committed transaction.
    let (rows, users) = user_inserts(&db).await;
    assert_eq!((rows, users), (108, 108));
    // A transaction in which an event failed committed the others.
    let shared: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_events e JOIN applied_in a \
           ON a.tx = substring(e.last_error FROM 'in transaction ([0-9]+)')::bigint \
         WHERE e.status = 'dead'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        shared > 0,
        "no failing event shared its transaction with a committed one"
    );
    // Events share transactions: far fewer commits than events.
    let transactions: i64 = sqlx::query_scalar("SELECT count(DISTINCT tx) FROM applied_in")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        transactions < 108,
        "{transactions} transactions for 108 events"
    );
    assert_eq!(
        queue_depth(&broker, &broker.names.dead_letter_queue).await,
        12
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_of_an_event_delivered_together_are_applied_once() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    log_user_inserts(&db).await;
    // Each event queued three times before the worker starts, so copies
    // arrive side by side and land in the same batches.
    let events: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (new_id(), user_created(&format!("user_copied_{i}"))))
        .collect();
    deliver(&db, &broker, &events).await;
    publish(&broker, &events).await;
    publish(&broker, &events).await;
    let mut settings = e2e::worker::settings(db.url(None), e2e::amqp_url(), broker.prefix.clone());
    settings.concurrency = 64;
    let worker = TestWorker::spawn_with(settings).await;

    wait_processed(&db, 40, DEADLINE).await;
    wait_for("every copy to be acked", DEADLINE, || async {
        (queue_depth(&broker, &broker.names.worker_queue).await == 0).then_some(())
    })
    .await;

    let (rows, users) = user_inserts(&db).await;
    assert_eq!((rows, users), (40, 40), "each event applied exactly once");
    let attempts: Vec<i32> = sqlx::query_scalar("SELECT DISTINCT attempts FROM webhook_events")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(attempts, vec![1]);
    assert_eq!(
        queue_depth(&broker, &broker.names.dead_letter_queue).await,
        0
    );
    worker.stop().await;
}

/// Upserts of distinct users that are ready together are applied by one
/// statement; events of a user another event of the same batch concerns are
/// applied one by one, in order. Either way the mirror ends as if every
/// event had been applied in turn, each exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn upserts_of_distinct_users_share_a_statement_and_the_mirror_ends_as_if_applied_in_turn() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    // Each INSERT statement on users logs how many users it inserted.
    sqlx::raw_sql(
        "CREATE TABLE insert_statements (inserted bigint); \
         CREATE FUNCTION log_insert_statement() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
             INSERT INTO insert_statements SELECT count(*) FROM new_users; \
             RETURN NULL; \
         END $$; \
         CREATE TRIGGER log_insert_statement AFTER INSERT ON users \
             REFERENCING NEW TABLE AS new_users \
             FOR EACH STATEMENT EXECUTE FUNCTION log_insert_statement()",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // Every user is created; a third are updated afterwards, and a sixth get
    // an update older than their creation, which changes nothing.
    let mut events: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..90 {
        let user = format!("user_joint_{i}");
        let email = |version: &str| format!("{version}+{user}@example.org");
        events.push((
            new_id(),
            user_event("user.created", &user, &email("v1"), 10),
        ));
        if i % 3 == 0 {
            events.push((
                new_id(),
                user_event("user.updated", &user, &email("v2"), 20),
            ));
        }
        if i % 6 == 1 {
            events.push((
                new_id(),
                user_event("user.updated", &user, &email("stale"), 5),
            ));
        }
    }
    let total = i64::try_from(events.len()).unwrap();
    deliver(&db, &broker, &events).await;
    let mut settings = e2e::worker::settings(db.url(None), e2e::amqp_url(), broker.prefix.clone());
    settings.concurrency = 64;
    let worker = TestWorker::spawn_with(settings).await;

    wait_processed(&db, total, DEADLINE).await;

    let users: Vec<(String, String)> = sqlx::query_as("SELECT id, email FROM users ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(users.len(), 90);
    for (id, email) in users {
        let i: usize = id.trim_start_matches("user_joint_").parse().unwrap();
        let version = if i.is_multiple_of(3) { "v2" } else { "v1" };
        assert_eq!(email, format!("{version}+{id}@example.org"));
    }
    let attempts: Vec<(String, i32)> =
        sqlx::query_as("SELECT DISTINCT status, attempts FROM webhook_events")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(attempts, vec![("processed".to_owned(), 1)]);
    let (statements, largest): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), max(inserted) FROM insert_statements")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        largest > Some(1),
        "no statement inserted several users ({statements} statements)"
    );
    worker.stop().await;
}
