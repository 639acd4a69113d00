//! Outages are not message failures (`SPEC.md` section 8). A dependency is cut
//! off by a TCP proxy between the service under test and the real server:
//! its connections drop and new ones are refused, exactly as when the server
//! stops, while the tests running in parallel keep their server.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    broker::TestBroker,
    db::TestDb,
    deliveries::{new_id, user_created, user_event, Delivery},
    ingress::{Endpoints, TestIngress},
    process::Service,
    proxy::TcpProxy,
    worker::{deliver, settings, wait_processed, wait_started, TestWorker},
};
use reqwest::StatusCode;

const DEADLINE: Duration = Duration::from_secs(90);

fn user_events(range: std::ops::Range<usize>) -> Vec<(String, Vec<u8>)> {
    range
        .map(|i| {
            (
                new_id(),
                user_event("user.created", &format!("user_{i}"), "x@example.org", 1000),
            )
        })
        .collect()
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

fn amqp_via(proxy: &TcpProxy) -> String {
    let mut url = reqwest::Url::parse(&e2e::amqp_url()).unwrap();
    url.set_port(Some(proxy.port)).unwrap();
    url.to_string()
}

fn amqp_port() -> u16 {
    reqwest::Url::parse(&e2e::amqp_url())
        .unwrap()
        .port()
        .unwrap_or(5672)
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_seconds_without_postgres_under_load_dead_letter_nothing_and_lose_nothing() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let proxy = TcpProxy::start(db.server_port()).await;
    let worker = TestWorker::spawn_with(settings(
        db.url(Some(proxy.port)),
        e2e::amqp_url(),
        broker.prefix.clone(),
    ))
    .await;
    let ready_url = format!("http://{}/readyz", worker.ops_addr);
    let first = user_events(0..100);
    let second = user_events(100..200);
    deliver(&db, &broker, &first).await;
    wait_started(&db, DEADLINE).await;

    proxy.cut();
    deliver(&db, &broker, &second).await;
    let readiness = reqwest::get(&ready_url).await.unwrap();
    assert_eq!(readiness.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(readiness.text().await.unwrap().contains("postgres"));
    // The outage lasts ten seconds: the scenario, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        broker.worker_queue_depth().await > 0,
        "deliveries beyond the prefetch wait in the broker during the outage"
    );
    proxy.restore();

    wait_processed(&db, 200, DEADLINE).await;
    worker.stop().await;
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM webhook_events WHERE status <> 'processed'"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(&db, "SELECT sum(attempts)::bigint FROM webhook_events").await,
        200,
        "the outage counted no attempt"
    );
    assert_eq!(scalar(&db, "SELECT count(*) FROM users").await, 200);
    assert!(
        broker.take(&broker.names.dead_letter_queue).await.is_none(),
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_lost_and_back_under_load_loses_nothing_between_ingress_and_worker() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let proxy = TcpProxy::start(amqp_port()).await;
    let ingress = TestIngress::spawn(Endpoints {
        database_url: db.url(None),
        amqp_url: amqp_via(&proxy),
        prefix: broker.prefix.clone(),
    })
    .await;
    let worker = TestWorker::spawn_with(settings(
        db.url(None),
        amqp_via(&proxy),
        broker.prefix.clone(),
    ))
    .await;
    let send = |range: std::ops::Range<usize>| {
        let ingress = &ingress;
        async move {
            for i in range {
                let delivery =
                    Delivery::signed(&ingress.secret, user_created(&format!("user_{i}")));
                assert_eq!(ingress.post(&delivery).await.0, StatusCode::OK);
            }
        }
    };

    send(0..100).await;
    wait_started(&db, DEADLINE).await;
    proxy.cut();
    send(100..200).await;
    proxy.restore();
    send(200..300).await;

    wait_processed(&db, 300, DEADLINE).await;
    worker.stop().await;
    ingress.stop().await;
    assert_eq!(scalar(&db, "SELECT count(*) FROM users").await, 300);
    assert_eq!(
        scalar(&db, "SELECT sum(attempts)::bigint FROM webhook_events").await,
        300,
        "nothing applied twice"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM webhook_events WHERE published_at IS NULL"
        )
        .await,
        0
    );
    assert!(broker.take(&broker.names.dead_letter_queue).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let database_url = db.url(None);
    let mut doomed = Service::worker_run(database_url.as_str(), broker.prefix.as_str(), &[]);
    doomed.wait_for_line("consuming", DEADLINE);
    let events = user_events(0..300);

    deliver(&db, &broker, &events).await;
    wait_started(&db, DEADLINE).await;
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    let survivor = TestWorker::spawn(&db, &broker).await;
    wait_processed(&db, 300, DEADLINE).await;
    survivor.stop().await;

    assert_eq!(scalar(&db, "SELECT count(*) FROM users").await, 300);
    assert_eq!(
        scalar(&db, "SELECT sum(attempts)::bigint FROM webhook_events").await,
        300,
        "nothing applied twice"
    );
    assert!(broker.take(&broker.names.dead_letter_queue).await.is_none());
}

/// The server process behind the kept connection.
async fn backend(kept: &mut shared::db::kept::KeptConnection) -> Result<i32, sqlx::Error> {
    kept.run(async |connection| {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(connection)
            .await
    })
    .await
}

/// Runs `sql` on the kept connection.
async fn execute(
    kept: &mut shared::db::kept::KeptConnection,
    sql: &str,
) -> Result<(), sqlx::Error> {
    kept.run(async |connection| sqlx::query(sql).execute(connection).await.map(drop))
        .await
}

/// Whether the server still runs backend `pid`.
async fn backend_alive(db: &TestDb, pid: i32) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
        .bind(pid)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// A connection kept between uses serves them all while it works; a use that
/// fails, that finds it dropped, or that overruns its deadline gives it up,
/// and the next use gets a fresh one; a connection lost while kept is told
/// apart, for work that may go again at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_connection_is_reused_until_a_use_fails_or_overruns_and_then_replaced() {
    let db = TestDb::new().await;
    let pool = shared::db::pool(&shared::secret::Secret::new(db.url(None)), 2).unwrap();
    let mut kept = shared::db::kept::KeptConnection::new(pool, Duration::from_millis(500));

    let first = backend(&mut kept).await.unwrap();
    assert_eq!(
        backend(&mut kept).await.unwrap(),
        first,
        "kept between uses"
    );

    // A use that fails gives the connection up: its state is unknown.
    let failed = execute(&mut kept, "SELECT no_such_column FROM pg_class").await;
    assert!(!kept.lost_while_kept(&failed.unwrap_err()));
    let second = backend(&mut kept).await.unwrap();
    assert_ne!(second, first);
    wait_for_backend_gone(&db, first).await;

    // The server drops it while it is idle: a use fails, the next one works.
    terminate(&db, second).await;
    assert!(backend(&mut kept).await.is_err());
    let third = backend(&mut kept).await.unwrap();
    assert_ne!(third, second);

    // The error says so: work that may run twice can go again at once.
    terminate(&db, third).await;
    let lost = backend(&mut kept).await.unwrap_err();
    assert!(kept.lost_while_kept(&lost), "{lost:?}");
    let fourth = backend(&mut kept).await.unwrap();
    assert_ne!(fourth, third);
    assert_eq!(backend(&mut kept).await.unwrap(), fourth, "kept again");

    // A use that overruns its deadline is abandoned with its connection (the
    // server notices once the statement ends).
    let overran = execute(&mut kept, "SELECT pg_sleep(3)").await;
    match overran {
        Err(sqlx::Error::Io(error)) => assert_eq!(error.kind(), std::io::ErrorKind::TimedOut),
        other => panic!("expected a timeout, got {other:?}"),
    }
    wait_for_backend_gone(&db, fourth).await;
    assert_ne!(backend(&mut kept).await.unwrap(), fourth);
}

/// Ends backend `pid` as a server restart would, and waits until it is gone.
async fn terminate(db: &TestDb, pid: i32) {
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&db.pool)
        .await
        .unwrap();
    wait_for_backend_gone(db, pid).await;
}

async fn wait_for_backend_gone(db: &TestDb, pid: i32) {
    e2e::wait_for("the abandoned connection to close", DEADLINE, || async {
        (!backend_alive(db, pid).await).then_some(())
    })
    .await;
}
