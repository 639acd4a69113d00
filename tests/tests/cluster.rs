//! Broker failover (`SPEC.md` section 3, `AMQP_URL` as a list): a real
//! three-node RabbitMQ cluster (`scripts/rabbitmq-cluster`, started by the
//! harness when it is not running), the ingress and two workers as binaries,
//! and the node that leads the worker quorum queue stopped mid-stream.

#![allow(clippy::unwrap_used)]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use e2e::{
    broker::TestBroker,
    cluster::Cluster,
    db::TestDb,
    deliveries::{new_secret, user_created, Delivery},
    process::Service,
    worker::{finished_events, wait_processed},
};
use reqwest::StatusCode;
use tokio::sync::Notify;

/// Deliveries in the stream.
const TOTAL: usize = 600;
/// The sender waits for the node to be stopped before this delivery, so the
/// rest of the stream goes through the cluster without that node.
const AFTER_THE_STOP: usize = 400;
/// The stream's pace: a steady flow, about 50 deliveries a second.
const PACE: Duration = Duration::from_millis(20);
const DEADLINE: Duration = Duration::from_secs(180);

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_the_node_that_leads_the_worker_queue_mid_stream_loses_nothing_and_applies_nothing_twice(
) {
    let cluster = Cluster::ensure();
    let db = TestDb::new().await;
    // Declared through the first node: the quorum queues have a member on
    // each of the three nodes.
    let broker = TestBroker::new_at(&cluster.url).await;
    let database_url = db.url(None);
    let secret = new_secret();
    // The ingress and the first worker list the queue's leader first, the
    // second worker another node: when the leader stops, some connections
    // drop and move on to the next node, one stays while the queue elects a
    // new leader.
    let leader = cluster.leader(&broker.names.worker_queue);
    let (leader_first, other_first) = cluster.lists_starting_with(&leader);
    let (mut ingress, addr, _) = Service::ingress_run(
        &database_url,
        &broker.prefix,
        &secret,
        &[("AMQP_URL", leader_first.as_str())],
    );
    let mut workers = [leader_first.as_str(), other_first.as_str()].map(|amqp_url| {
        Service::worker_run(
            &database_url,
            &broker.prefix,
            &[("AMQP_URL", amqp_url), ("WORKER_CONCURRENCY", "8")],
        )
    });
    for worker in &mut workers {
        worker.wait_for_line("consuming", DEADLINE);
    }

    let sent = Arc::new(AtomicUsize::new(0));
    let stopped = Arc::new(Notify::new());
    let sender = tokio::spawn({
        let (sent, stopped, secret) = (sent.clone(), stopped.clone(), secret.clone());
        async move {
            let http = reqwest::Client::new();
            let mut pace = tokio::time::interval(PACE);
            let mut refused = Vec::new();
            for i in 0..TOTAL {
                if i == AFTER_THE_STOP {
                    stopped.notified().await;
                }
                pace.tick().await;
                let delivery = Delivery::signed(&secret, user_created(&format!("user_{i}")));
                let status = http
                    .post(format!("http://{addr}/webhooks/clerk"))
                    .header("svix-id", &delivery.id)
                    .header("svix-timestamp", &delivery.timestamp)
                    .header("svix-signature", &delivery.signature)
                    .header("content-type", "application/json")
                    .body(delivery.body)
                    .send()
                    .await
                    .map(|response| response.status());
                if !matches!(status, Ok(StatusCode::OK)) {
                    refused.push((i, format!("{status:?}")));
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
            refused
        }
    });

    // Mid-stream: the workers are applying events, more keep coming.
    e2e::wait_for(
        "a first part of the stream to be processed",
        DEADLINE,
        || async { (finished_events(&db).await >= 100).then_some(()) },
    )
    .await;
    assert_eq!(cluster.leader(&broker.names.worker_queue), leader);
    let node = tokio::task::block_in_place(|| cluster.stop(&leader));
    let sent_at_the_stop = sent.load(Ordering::SeqCst);
    stopped.notify_one();
    let refused = sender.await.unwrap();
    wait_processed(&db, TOTAL as i64, DEADLINE).await;
    tokio::task::block_in_place(|| node.restart());

    assert!(
        sent_at_the_stop < TOTAL,
        "the node stopped before the stream ended"
    );
    assert_eq!(
        refused,
        Vec::<(usize, String)>::new(),
        "every delivery got 200"
    );
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM webhook_events").await,
        TOTAL as i64
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM webhook_events WHERE status <> 'processed'"
        )
        .await,
        0,
        "every event processed, none dead"
    );
    assert_eq!(
        scalar(&db, "SELECT sum(attempts)::bigint FROM webhook_events").await,
        TOTAL as i64,
        "each event applied exactly once"
    );
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM users").await,
        TOTAL as i64
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM webhook_events WHERE published_at IS NULL"
        )
        .await,
        0,
        "every publish confirmed"
    );
    // A fresh connection: the test's first one may have been to the stopped node.
    let after = TestBroker::adopt_at(&cluster.url, &broker.prefix).await;
    assert!(
        after.take(&after.names.dead_letter_queue).await.is_none(),
        "nothing dead-lettered (leader was {leader})"
    );
    // The connections to the stopped node moved to the next one.
    let moved = "RabbitMQ node did not answer; trying the next";
    ingress.wait_for_line(moved, DEADLINE);
    workers[0].wait_for_line(moved, DEADLINE);
    for worker in &workers {
        worker.terminate();
    }
    for worker in &mut workers {
        let (status, log) = worker.wait_exit(DEADLINE);
        assert!(status.success(), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_of_unreachable_nodes_stops_the_worker_naming_each_node_without_its_password() {
    let db = TestDb::new().await;
    let database_url = db.url(None);
    // Ports 1 and 2 refuse connections on a test machine.
    let amqp_url = "amqp://guest:hunter2@127.0.0.1:1/%2f,amqp://app:p%40ss%2Cw0rd@127.0.0.1:2/%2f";
    let mut worker = Service::start(
        "worker",
        &["run"],
        &[
            ("DATABASE_URL", database_url.as_str()),
            ("AMQP_URL", amqp_url),
            ("AMQP_PREFIX", "unused"),
            ("WORKER_OPS_ADDR", "127.0.0.1:0"),
            ("DATABASE_WAIT_SECS", "1"),
        ],
    );

    let (status, stderr) = worker.wait_exit(DEADLINE);

    assert!(!status.success());
    let line = stderr
        .lines()
        .find(|l| l.starts_with("worker: "))
        .unwrap_or_else(|| panic!("no message line:\n{stderr}"));
    assert!(
        line.starts_with(
            "worker: RabbitMQ: none of the 2 nodes of AMQP_URL answered: \
             amqp://guest:***@127.0.0.1:1/%2f is unreachable: "
        ),
        "{line}"
    );
    assert!(
        line.contains("; amqp://app:***@127.0.0.1:2/%2f is unreachable: "),
        "{line}"
    );
    assert!(
        stderr.contains("RabbitMQ node did not answer; trying the next"),
        "{stderr}"
    );
    for secret in ["hunter2", "p%40ss", "w0rd", "p@ss"] {
        assert!(!stderr.contains(secret), "{secret} in:\n{stderr}");
    }
}
