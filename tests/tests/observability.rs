//! Metrics after a scenario, and the trace context from the ingress to the
//! worker (`SPEC.md` section 10).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    broker::TestBroker,
    db::TestDb,
    deliveries::{new_id, payment_attempt, user_created, user_event, Delivery},
    fake_clerk::{self, Answer, FakeClerk},
    ingress::{Endpoints, TestIngress},
    wait_for,
    worker::{deliver, publish, settings, store, wait_processed, TestWorker},
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use shared::{config::LogConfig, secret::Secret};
use worker::{config::ClerkSettings, credits::Catalog};

const DEADLINE: Duration = Duration::from_secs(30);

async fn scrape(addr: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one sample line, e.g. `name{label="x"}`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_counts_outcomes_latency_retries_dead_letters_and_clerk_writes() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    clerk.script(&[Answer::Status(503)]);
    let mut s = settings(db.url(None), e2e::amqp_url(), broker.prefix.clone());
    s.catalog = Catalog::parse(
        "[packs.credits_500]\ncredits = 500\n[plans.pro]\ncredits = 0\n",
        "t",
    )
    .unwrap();
    s.clerk = Some(ClerkSettings {
        api_url: clerk.url.clone(),
        secret_key: Secret::new(fake_clerk::SECRET_KEY.to_owned()),
    });
    let worker = TestWorker::spawn_with(s).await;
    let created = (
        new_id(),
        user_event("user.created", "user_m1", "m1@example.org", 1000),
    );
    let events = vec![
        created.clone(),
        (
            new_id(),
            user_event("user.created", "user_m2", "m2@example.org", 1000),
        ),
        (
            new_id(),
            serde_json::to_vec(&serde_json::json!({"type": "session.created", "data": {}}))
                .unwrap(),
        ),
        (
            new_id(),
            serde_json::to_vec(&serde_json::json!({"type": "user.updated", "data": {"no": "id"}}))
                .unwrap(),
        ),
        (
            new_id(),
            payment_attempt(
                "pa_m",
                "paid",
                "user_m1",
                &[("csub_item_m", "credits_500", None)],
            ),
        ),
        // An account that stays at zero.
        (
            new_id(),
            payment_attempt(
                "pa_z",
                "paid",
                "user_m3",
                &[("csub_item_z", "pro", Some(1))],
            ),
        ),
    ];

    deliver(&db, &broker, &events).await;
    publish(&broker, std::slice::from_ref(&created)).await;
    wait_processed(&db, 5, DEADLINE).await;
    wait_for("the Clerk write after a 503", DEADLINE, || async {
        clerk.credits_of("user_m1")
    })
    .await;
    let metrics = wait_for("the gauges to be refreshed", DEADLINE, || async {
        let m = scrape(worker.ops_addr).await;
        let ready = sample(&m, "clerk_worker_dlq_messages") == Some(1.0)
            && sample(&m, "clerk_worker_clerk_sync_total{outcome=\"ok\"}") == Some(1.0)
            && sample(
                &m,
                "clerk_worker_events_total{event_type=\"user.created\",outcome=\"duplicate\"}",
            ) == Some(1.0)
            && sample(&m, "clerk_worker_clerk_sync_pending") == Some(0.0)
            && sample(&m, "clerk_worker_credit_accounts_zero_balance") == Some(1.0);
        ready.then_some(m)
    })
    .await;

    let value = |series: &str| {
        sample(&metrics, series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert_eq!(
        value("clerk_worker_events_total{event_type=\"user.created\",outcome=\"processed\"}"),
        2.0
    );
    assert_eq!(
        value("clerk_worker_events_total{event_type=\"session.created\",outcome=\"ignored\"}"),
        1.0
    );
    assert_eq!(
        value("clerk_worker_events_total{event_type=\"user.updated\",outcome=\"dead_lettered\"}"),
        1.0
    );
    assert_eq!(
        value("clerk_worker_dead_lettered_total{event_type=\"user.updated\"}"),
        1.0
    );
    assert_eq!(
        value("clerk_worker_event_latency_seconds_count{event_type=\"user.created\"}"),
        2.0
    );
    assert_eq!(
        value("clerk_worker_clerk_sync_total{outcome=\"server_error\"}"),
        1.0
    );
    assert_eq!(value("clerk_worker_credit_accounts_zero_balance"), 1.0);
    assert_eq!(value("clerk_worker_broker_connected"), 1.0);
    assert_eq!(value("clerk_worker_clerk_sync_pending"), 0.0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ingress_counts_requests_by_outcome_and_their_latency() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let ingress = TestIngress::spawn(Endpoints {
        database_url: db.url(None),
        amqp_url: e2e::amqp_url(),
        prefix: broker.prefix.clone(),
    })
    .await;
    let delivery = Delivery::signed(&ingress.secret, user_created("user_n"));
    ingress.post(&delivery).await;
    ingress.post(&delivery).await;
    let mut bad = Delivery::signed(&ingress.secret, user_created("user_o"));
    bad.timestamp = "yesterday".to_owned();
    ingress.post(&bad).await;

    let metrics = wait_for("the relay to publish", DEADLINE, || async {
        let m = scrape(ingress.ops_addr).await;
        let published = sample(&m, "clerk_ingress_relay_published_total") == Some(1.0);
        let counted = sample(&m, "clerk_ingress_unpublished_events") == Some(0.0);
        (published && counted).then_some(m)
    })
    .await;

    let value = |series: &str| {
        sample(&metrics, series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert_eq!(value("clerk_ingress_requests_total{outcome=\"ok\"}"), 1.0);
    assert_eq!(
        value("clerk_ingress_requests_total{outcome=\"duplicate\"}"),
        1.0
    );
    assert_eq!(
        value("clerk_ingress_requests_total{outcome=\"invalid_timestamp\"}"),
        1.0
    );
    assert_eq!(
        value("clerk_ingress_requests_total{outcome=\"internal\"}"),
        0.0
    );
    assert_eq!(value("clerk_ingress_request_duration_seconds_count"), 3.0);
    assert_eq!(value("clerk_ingress_unpublished_events"), 0.0);
    assert_eq!(value("clerk_ingress_oldest_unpublished_age_seconds"), 0.0);
    ingress.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_span_is_a_child_of_the_ingress_span() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    shared::telemetry::install(
        &LogConfig {
            log_format: Some(shared::config::LogFormat::Json),
            otel_endpoint: None,
        },
        "e2e",
        Some(provider.clone()),
    );
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let ingress = TestIngress::spawn(Endpoints {
        database_url: db.url(None),
        amqp_url: e2e::amqp_url(),
        prefix: broker.prefix.clone(),
    })
    .await;
    let worker = TestWorker::spawn(&db, &broker).await;
    let delivery = Delivery::signed(&ingress.secret, user_created("user_traced"));

    ingress.post(&delivery).await;
    wait_processed(&db, 1, DEADLINE).await;
    worker.stop().await;
    ingress.stop().await;
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let receive = spans
        .iter()
        .find(|s| s.name == "webhook.receive")
        .expect("ingress span");
    let process = spans
        .iter()
        .find(|s| s.name == "event.process")
        .expect("worker span");
    assert_eq!(
        process.span_context.trace_id(),
        receive.span_context.trace_id()
    );
    assert_eq!(process.parent_span_id, receive.span_context.span_id());
    let stored: String = sqlx::query_scalar("SELECT traceparent FROM webhook_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        stored.contains(&receive.span_context.span_id().to_string()),
        "{stored}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_published_but_never_applied_shows_as_a_stall_until_it_is_applied() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    // Published ten minutes ago, and its message was lost on the way: no
    // worker can apply it until it is re-published.
    let id = new_id();
    store(
        &db,
        &id,
        &user_event("user.created", "user_stalled", "s@example.org", 1),
    )
    .await;
    sqlx::query("UPDATE webhook_events SET published_at = now() - interval '10 minutes'")
        .execute(&db.pool)
        .await
        .unwrap();
    let worker = TestWorker::spawn(&db, &broker).await;

    let stalled = wait_for("the stall gauge", DEADLINE, || async {
        sample(
            &scrape(worker.ops_addr).await,
            "clerk_worker_oldest_unprocessed_age_seconds",
        )
        .filter(|age| *age > 0.0)
    })
    .await;
    let body = user_event("user.created", "user_stalled", "s@example.org", 1);
    publish(&broker, &[(id.clone(), body)]).await;
    wait_processed(&db, 1, DEADLINE).await;
    wait_for("the stall to clear", DEADLINE, || async {
        (sample(
            &scrape(worker.ops_addr).await,
            "clerk_worker_oldest_unprocessed_age_seconds",
        ) == Some(0.0))
        .then_some(())
    })
    .await;

    assert!(stalled >= 600.0, "{stalled}");
    worker.stop().await;
}
