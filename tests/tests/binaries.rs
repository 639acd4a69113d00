//! The `ingress` and `worker` binaries as an operator runs them: start-up
//! refusals, and shutdown on SIGTERM.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use e2e::{
    broker::TestBroker,
    db::TestDb,
    deliveries::{new_secret, user_created, Delivery},
    process::Service,
};

const DEADLINE: Duration = Duration::from_secs(20);

#[test]
fn a_malformed_webhook_secret_stops_the_ingress_with_a_clear_message_and_no_secret() {
    let mut ingress = Service::start(
        "ingress",
        &[],
        &[
            (
                "CLERK_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_not*base64*hunter2",
            ),
            ("INGRESS_ADDR", "127.0.0.1:0"),
        ],
    );

    let (status, stderr) = ingress.wait_exit(DEADLINE);

    assert!(!status.success());
    assert!(
        stderr.contains("CLERK_WEBHOOK_SECRET is invalid"),
        "{stderr}"
    );
    assert!(stderr.contains("#2"), "names which entry: {stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(
        !stderr.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        "{stderr}"
    );
}

#[test]
fn a_missing_webhook_secret_stops_the_ingress() {
    let mut ingress = Service::start("ingress", &[], &[("INGRESS_ADDR", "127.0.0.1:0")]);

    let (status, stderr) = ingress.wait_exit(DEADLINE);

    assert!(!status.success());
    assert!(
        stderr.contains("CLERK_WEBHOOK_SECRET is not set"),
        "{stderr}"
    );
}

#[test]
fn a_worker_given_no_runtime_thread_stops_with_a_clear_message() {
    let mut worker = Service::start(
        "worker",
        &["migrate"],
        &[
            ("DATABASE_URL", "postgres://127.0.0.1:1/unused"),
            ("TOKIO_WORKER_THREADS", "0"),
        ],
    );

    let (status, stderr) = worker.wait_exit(DEADLINE);

    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("TOKIO_WORKER_THREADS must be a number of threads above 0"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_unreachable_database_stops_the_ingress_with_a_clear_message() {
    let mut ingress = Service::start(
        "ingress",
        &[],
        &[
            ("CLERK_WEBHOOK_SECRET", &new_secret()),
            ("INGRESS_ADDR", "127.0.0.1:0"),
            // Port 9 (discard) refuses connections on a test machine.
            (
                "DATABASE_URL",
                "postgres://postgres:hunter2@127.0.0.1:9/nowhere",
            ),
            ("DATABASE_WAIT_SECS", "1"),
        ],
    );

    let (status, stderr) = ingress.wait_exit(DEADLINE);

    assert!(!status.success());
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_in_flight_request_finish_and_publishes_it_before_exit() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let secret = new_secret();
    let database_url = db.url(None);
    let mut ingress = Service::start(
        "ingress",
        &[],
        &[
            ("CLERK_WEBHOOK_SECRET", secret.as_str()),
            ("INGRESS_ADDR", "127.0.0.1:0"),
            ("DATABASE_URL", database_url.as_str()),
            ("AMQP_URL", e2e::amqp_url().as_str()),
            ("AMQP_PREFIX", broker.prefix.as_str()),
            ("RUST_LOG", "info,ingress=debug"),
        ],
    );
    let listening = ingress.wait_for_line("ingress listening", DEADLINE);
    let log: serde_json::Value = serde_json::from_str(&listening).unwrap();
    let addr = log["addr"].as_str().expect("addr field").to_owned();
    let delivery = Delivery::signed(&secret, user_created("user_drain"));
    let (head, tail) = delivery.body.split_at(delivery.body.len() / 2);

    // Half a request is in flight when the signal arrives.
    let mut stream = TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /webhooks/clerk HTTP/1.1\r\nHost: {addr}\r\nsvix-id: {}\r\nsvix-timestamp: {}\r\nsvix-signature: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        delivery.id,
        delivery.timestamp,
        delivery.signature,
        delivery.body.len()
    )
    .unwrap();
    stream.write_all(head).unwrap();
    stream.flush().unwrap();
    // The request is in the handler (not just in the socket) when the signal comes.
    ingress.wait_for_line("reading the webhook body", DEADLINE);
    ingress.terminate();
    ingress.wait_for_line("shutdown signal received", DEADLINE);
    stream.write_all(tail).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);

    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#"{"status":"ok"}"#), "{response}");
    let (status, stderr) = ingress.wait_exit(DEADLINE);
    assert!(status.success(), "exit status {status:?}\n{stderr}");
    let published: bool = sqlx::query_scalar(
        "SELECT published_at IS NOT NULL FROM webhook_events WHERE webhook_id = $1",
    )
    .bind(&delivery.id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(published, "the last pass of the relay published it");
    let messages = broker.take_worker_messages(1, DEADLINE).await;
    assert_eq!(messages.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_declares_the_topology_and_exits_zero_on_sigterm() {
    let db = TestDb::new().await;
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let database_url = db.url(None);
    let mut worker = Service::start(
        "worker",
        &["run"],
        &[
            ("DATABASE_URL", database_url.as_str()),
            ("AMQP_URL", e2e::amqp_url().as_str()),
            ("AMQP_PREFIX", prefix.as_str()),
            ("WORKER_OPS_ADDR", "127.0.0.1:0"),
        ],
    );
    worker.wait_for_line("worker ready", DEADLINE);
    // The queues exist now: a TestBroker on the same prefix finds them (and
    // removes them when the test ends).
    let broker = TestBroker::adopt(&prefix).await;
    assert_eq!(broker.worker_queue_depth().await, 0);

    worker.terminate();
    let (status, stderr) = worker.wait_exit(DEADLINE);

    assert!(status.success(), "exit status {status:?}\n{stderr}");
    assert!(stderr.contains("worker stopped"), "{stderr}");
}
