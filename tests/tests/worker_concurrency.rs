//! Several workers on one queue, duplicates and shutdowns (`SPEC.md` section 8).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    broker::TestBroker,
    db::TestDb,
    deliveries::{new_id, user_deleted, user_event},
    process::Service,
    wait_for,
    worker::{deliver, finished_events, publish, wait_processed, wait_started, TestWorker},
};

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
