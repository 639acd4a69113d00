//! TLS to PostgreSQL and to RabbitMQ, through the binaries as an operator
//! runs them.
//!
//! PostgreSQL: the local server's own certificate (`ssl = on`; Debian's
//! snakeoil certificate is self-signed, so it is its own root), reached under
//! the name it is valid for through a TCP proxy (TLS stays end to end).
//! RabbitMQ: a TLS endpoint in front of the real broker whose certificate
//! comes from a CA the test makes.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    broker::TestBroker,
    commands::run_worker_at,
    db::TestDb,
    deliveries::{new_secret, user_created, Delivery},
    process::Service,
    proxy::TcpProxy,
    tls::{PostgresCertificate, TempDir, TestCa, TlsProxy},
    worker::wait_processed,
};
use reqwest::StatusCode;

const DEADLINE: Duration = Duration::from_secs(60);

/// `db`'s URL through `proxy` under `host`, with TLS parameters.
fn postgres_url(db: &TestDb, host: &str, proxy: &TcpProxy, query: &str) -> String {
    let mut url = reqwest::Url::parse(&db.url(Some(proxy.port))).unwrap();
    url.set_host(Some(host)).unwrap();
    url.set_query(Some(query));
    url.to_string()
}

/// The test broker's URL as `amqps://localhost:PORT` (a TLS endpoint), with
/// `query` (e.g. `cacertfile=…`).
fn amqps_url(endpoint: &TlsProxy, query: Option<&str>) -> String {
    let mut url = reqwest::Url::parse(&e2e::amqp_url()).unwrap();
    url.set_scheme("amqps").unwrap();
    url.set_host(Some("localhost")).unwrap();
    url.set_port(Some(endpoint.port)).unwrap();
    url.set_query(query);
    url.to_string()
}

fn amqp_port() -> u16 {
    reqwest::Url::parse(&e2e::amqp_url())
        .unwrap()
        .port()
        .unwrap_or(5672)
}

/// Posts one signed `user.created` and expects 200.
async fn post_one(addr: &str, secret: &str) -> Delivery {
    let delivery = Delivery::signed(secret, user_created("user_tls"));
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/webhooks/clerk"))
        .header("svix-id", &delivery.id)
        .header("svix-timestamp", &delivery.timestamp)
        .header("svix-signature", &delivery.signature)
        .header("content-type", "application/json")
        .body(delivery.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    delivery
}

/// The one line a binary wrote to stderr outside its JSON log.
fn message_line<'a>(stderr: &'a str, binary: &str) -> &'a str {
    let prefix = format!("{binary}: ");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(lines.len(), 1, "one line from {binary}:\n{stderr}");
    lines[0]
}

/// Starts `binary` with `env`, expects it to stop with a non-zero status and
/// returns its one-line message.
fn refused(binary: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut service = Service::start(binary, args, env);
    let (status, stderr) = service.wait_exit(DEADLINE);
    assert!(!status.success(), "{binary} exited 0:\n{stderr}");
    message_line(&stderr, binary).to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_verify_full_with_the_right_root_carries_a_delivery_from_ingress_to_worker() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let server = PostgresCertificate::of(&db.pool).await;
    let proxy = TcpProxy::start_at(&server.host, db.server_port()).await;
    let database_url = postgres_url(
        &db,
        &server.host,
        &proxy,
        &format!("sslmode=verify-full&sslrootcert={}", server.path),
    );
    let secret = new_secret();

    let migrate = run_worker_at(&database_url, &broker.prefix, &["migrate"], &[]).await;
    assert!(migrate.status.success(), "{migrate:?}");
    let (_ingress, addr, _) = Service::ingress_run(&database_url, &broker.prefix, &secret, &[]);
    let mut worker = Service::worker_run(&database_url, &broker.prefix, &[]);
    worker.wait_for_line("consuming", DEADLINE);
    let delivery = post_one(&addr, &secret).await;

    wait_processed(&db, 1, DEADLINE).await;
    let status: String =
        sqlx::query_scalar("SELECT status FROM webhook_events WHERE webhook_id = $1")
            .bind(&delivery.id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "processed");
    let listing = run_worker_at(&database_url, &broker.prefix, &["dlq", "list"], &[]).await;
    assert!(listing.status.success(), "{listing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_with_a_root_that_did_not_sign_its_certificate_stops_each_binary_on_one_line() {
    let db = TestDb::new().await;
    let server = PostgresCertificate::of(&db.pool).await;
    let proxy = TcpProxy::start_at(&server.host, db.server_port()).await;
    let files = TempDir::new();
    let wrong_root = files.write(
        "other-ca.pem",
        &TestCa::new("not the server's CA").cert_pem(),
    );
    let database_url = postgres_url(
        &db,
        &server.host,
        &proxy,
        &format!("sslmode=verify-full&sslrootcert={wrong_root}"),
    );
    let expected = format!(
        "TLS: the server's certificate was not issued by a trusted CA (checked against sslrootcert {wrong_root})"
    );
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        (
            "CLERK_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ),
        ("INGRESS_ADDR", "127.0.0.1:0"),
        ("WORKER_OPS_ADDR", "127.0.0.1:0"),
    ];

    for (binary, args) in [
        ("ingress", &[][..]),
        ("worker", &["run"][..]),
        ("worker", &["migrate"][..]),
        ("worker", &["prune", "--older-than", "30d", "--dry-run"][..]),
    ] {
        let line = refused(binary, args, &env);
        assert!(
            line.starts_with(&format!("{binary}: PostgreSQL at postgres://")),
            "{args:?}: {line}"
        );
        assert!(line.ends_with(&expected), "{args:?}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_under_a_name_its_certificate_does_not_carry_is_refused() {
    let db = TestDb::new().await;
    let server = PostgresCertificate::of(&db.pool).await;
    // The certificate names a host, not the address 127.0.0.1.
    let proxy = TcpProxy::start_at("127.0.0.1", db.server_port()).await;
    let database_url = postgres_url(
        &db,
        "127.0.0.1",
        &proxy,
        &format!("sslmode=verify-full&sslrootcert={}", server.path),
    );

    let line = refused(
        "worker",
        &["run"],
        &[
            ("DATABASE_URL", database_url.as_str()),
            ("WORKER_OPS_ADDR", "127.0.0.1:0"),
        ],
    );

    assert!(
        line.contains("TLS: the server's certificate was refused: invalid peer certificate: certificate not valid for name \"127.0.0.1\""),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn amqps_with_the_endpoints_ca_carries_a_delivery_from_ingress_to_worker() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let ca = TestCa::new("e2e broker CA");
    let endpoint = TlsProxy::start(amqp_port(), &ca.issue(&["localhost"])).await;
    let files = TempDir::new();
    let ca_file = files.write("broker-ca.pem", &ca.cert_pem());
    let amqp_url = amqps_url(&endpoint, Some(&format!("cacertfile={ca_file}")));
    let database_url = db.url(None);
    let secret = new_secret();
    let over_tls = [("AMQP_URL", amqp_url.as_str())];

    let (_ingress, addr, _) =
        Service::ingress_run(&database_url, &broker.prefix, &secret, &over_tls);
    let mut worker = Service::worker_run(&database_url, &broker.prefix, &over_tls);
    worker.wait_for_line("consuming", DEADLINE);
    let delivery = post_one(&addr, &secret).await;

    wait_processed(&db, 1, DEADLINE).await;
    let (status, published): (String, bool) = sqlx::query_as(
        "SELECT status, published_at IS NOT NULL FROM webhook_events WHERE webhook_id = $1",
    )
    .bind(&delivery.id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), published), ("processed", true));
    // The relay and the worker (its consumer, its gauges) went through TLS:
    // the endpoint is their only way to the broker.
    assert!(endpoint.handshakes() >= 2, "{}", endpoint.handshakes());
    let listing = run_worker_at(&database_url, &broker.prefix, &["dlq", "list"], &over_tls).await;
    assert!(listing.status.success(), "{listing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn amqps_to_a_certificate_of_an_unknown_ca_is_refused_with_a_clear_error() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let endpoint_ca = TestCa::new("the endpoint's CA");
    let endpoint = TlsProxy::start(amqp_port(), &endpoint_ca.issue(&["localhost"])).await;
    let files = TempDir::new();
    let other_ca = files.write("other-ca.pem", &TestCa::new("another CA").cert_pem());
    let database_url = db.url(None);
    let with_other_ca = amqps_url(&endpoint, Some(&format!("cacertfile={other_ca}")));
    let with_system_roots = amqps_url(&endpoint, None);

    for (amqp_url, roots) in [
        (&with_other_ca, format!("cacertfile {other_ca}")),
        (&with_system_roots, "the system roots".to_owned()),
    ] {
        let expected = format!(
            "RabbitMQ at amqps://guest:***@localhost:{}/%2f TLS: the server's certificate was not issued by a trusted CA (checked against {roots})",
            endpoint.port
        );
        let env = [
            ("DATABASE_URL", database_url.as_str()),
            ("AMQP_URL", amqp_url.as_str()),
            ("AMQP_PREFIX", broker.prefix.as_str()),
            ("WORKER_OPS_ADDR", "127.0.0.1:0"),
        ];
        let line = refused("worker", &["run"], &env);
        assert_eq!(line, format!("worker: {expected}"));
        let listing = run_worker_at(
            &database_url,
            &broker.prefix,
            &["dlq", "list"],
            &[("AMQP_URL", amqp_url.as_str())],
        )
        .await;
        assert!(!listing.status.success());
        assert_eq!(listing.stderr.trim(), format!("worker: {expected}"));
    }

    // The ingress keeps answering (the broker is not needed to store), and
    // its relay says why it cannot publish.
    let secret = new_secret();
    let (mut ingress, addr, _) = Service::ingress_run(
        &database_url,
        &broker.prefix,
        &secret,
        &[("AMQP_URL", with_other_ca.as_str())],
    );
    post_one(&addr, &secret).await;
    let warning = ingress.wait_for_line("relay could not publish", DEADLINE);
    assert!(
        warning.contains("TLS: the server's certificate was not issued by a trusted CA"),
        "{warning}"
    );
    assert!(!warning.contains("guest:guest"), "{warning}");
    assert_eq!(endpoint.handshakes(), 0);
}
