//! The ingress through its real router, against a real PostgreSQL and RabbitMQ
//! (`SPEC.md` sections 4, 5 and 7). Each test has its own database and broker
//! prefix.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    broker::TestBroker,
    db::TestDb,
    deliveries::{new_id, new_secret, now, user_created, Delivery},
    ingress::{json_response, Endpoints, TestIngress},
    proxy::TcpProxy,
    wait_for,
};
use reqwest::StatusCode;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(20);

/// Fields drop in order: the ingress stops before its broker and database go.
struct World {
    ingress: TestIngress,
    broker: TestBroker,
    db: TestDb,
}

async fn world() -> World {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let ingress = TestIngress::spawn(Endpoints {
        database_url: db.url(None),
        amqp_url: e2e::amqp_url(),
        prefix: broker.prefix.clone(),
    })
    .await;
    World {
        ingress,
        broker,
        db,
    }
}

async fn stored_rows(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn unpublished_rows(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE published_at IS NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_event_is_stored_then_published_with_exactly_its_bytes() {
    let w = world().await;
    let delivery = Delivery::signed(&w.ingress.secret, user_created("user_new"));

    let (status, body) = w.ingress.post(&delivery).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok"}));
    let (event_type, raw, payload_type, status): (String, Vec<u8>, String, String) = sqlx::query_as(
        "SELECT event_type, raw_body, payload->>'type', status FROM webhook_events WHERE webhook_id = $1",
    )
    .bind(&delivery.id)
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(event_type, "user.created");
    assert_eq!(raw, delivery.body);
    assert_eq!(payload_type, "user.created");
    assert!(status == "received" || status == "published");
    // The body is stored once, as its bytes; the view reads the payload from
    // them, and it is the JSON of those bytes.
    let (stored_payload, view_payload): (Option<serde_json::Value>, serde_json::Value) =
        sqlx::query_as(
            "SELECT b.payload, e.payload FROM webhook_event_bodies b \
             JOIN webhook_events e ON e.id = b.id WHERE b.webhook_id = $1",
        )
        .bind(&delivery.id)
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    assert_eq!(stored_payload, None);
    assert_eq!(
        view_payload,
        serde_json::from_slice::<serde_json::Value>(&delivery.body).unwrap()
    );

    let messages = w.broker.take_worker_messages(1, DEADLINE).await;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(
        message.body, delivery.body,
        "the message carries the stored bytes"
    );
    assert_eq!(message.message_id.as_deref(), Some(delivery.id.as_str()));
    assert_eq!(message.type_header.as_deref(), Some("user.created"));
    assert_eq!(message.type_property.as_deref(), Some("user.created"));
    assert_eq!(message.routing_key, "user.created");
    assert_eq!(message.delivery_mode, Some(2), "persistent");
    let traceparent = message.traceparent.clone().expect("traceparent header");
    assert_eq!(traceparent.len(), 55, "W3C traceparent: {traceparent}");

    let published_status: String = wait_for("the row to be marked published", DEADLINE, || async {
        let (status, published): (String, bool) = sqlx::query_as(
            "SELECT status, published_at IS NOT NULL FROM webhook_events WHERE webhook_id = $1",
        )
        .bind(&delivery.id)
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
        published.then_some(status)
    })
    .await;
    assert_eq!(published_status, "published");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_svix_id_twice_answers_duplicate_and_is_stored_and_published_once() {
    let w = world().await;
    let delivery = Delivery::signed(&w.ingress.secret, user_created("user_dup"));
    let (first, _) = w.ingress.post(&delivery).await;
    // A retry by Svix carries a new timestamp and signature but the same id.
    let retry = Delivery::signed_at(
        &w.ingress.secret,
        &delivery.id,
        now() + 5,
        delivery.body.clone(),
    );

    let (status, body) = w.ingress.post(&retry).await;

    assert_eq!(first, StatusCode::OK);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "duplicate"}));
    assert_eq!(stored_rows(&w.db).await, 1);
    let messages = w.broker.take_worker_messages(1, DEADLINE).await;
    wait_for("nothing left to publish", DEADLINE, || async {
        (unpublished_rows(&w.db).await == 0).then_some(())
    })
    .await;
    let late = w.broker.take_worker_messages(0, Duration::ZERO).await;
    assert_eq!(messages.len() + late.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_webhooks_header_names_are_accepted() {
    let w = world().await;
    let delivery = Delivery::signed(&w.ingress.secret, user_created("user_std"));

    let (status, body) = w.ingress.post_with(&delivery, "webhook").await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok"}));
    assert_eq!(stored_rows(&w.db).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_empty_header_answers_400_missing_svix_headers() {
    let w = world().await;
    let delivery = Delivery::signed(&w.ingress.secret, user_created("user_hdr"));
    for (left_out, empty) in [
        ("svix-id", false),
        ("svix-timestamp", false),
        ("svix-signature", false),
        ("svix-id", true),
        ("svix-signature", true),
    ] {
        let mut request = w.ingress.http.post(w.ingress.url("/webhooks/clerk"));
        for (name, value) in [
            ("svix-id", &delivery.id),
            ("svix-timestamp", &delivery.timestamp),
            ("svix-signature", &delivery.signature),
        ] {
            if name != left_out {
                request = request.header(name, value);
            } else if empty {
                request = request.header(name, "");
            }
        }

        let (status, body) =
            json_response(request.body(delivery.body.clone()).send().await.unwrap()).await;

        assert_eq!(status, StatusCode::BAD_REQUEST, "without {left_out}");
        assert_eq!(body["error"], "missing_svix_headers", "without {left_out}");
    }
    assert_eq!(stored_rows(&w.db).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timestamp_that_is_not_an_integer_or_outside_300_seconds_answers_invalid_timestamp() {
    let w = world().await;
    let body = user_created("user_ts");
    let mut cases: Vec<Delivery> = [now() - 301, now() + 301, now() - 3600]
        .into_iter()
        .map(|ts| Delivery::signed_at(&w.ingress.secret, &new_id(), ts, body.clone()))
        .collect();
    for text in ["soon", "12.5", "-5"] {
        let mut d = Delivery::signed(&w.ingress.secret, body.clone());
        d.timestamp = text.to_owned();
        cases.push(d);
    }

    for delivery in &cases {
        let (status, answer) = w.ingress.post(delivery).await;

        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "timestamp {}",
            delivery.timestamp
        );
        assert_eq!(
            answer["error"], "invalid_timestamp",
            "timestamp {}",
            delivery.timestamp
        );
    }
    // Within tolerance on both sides is fine.
    for ts in [now() - 290, now() + 290] {
        let d = Delivery::signed_at(&w.ingress.secret, &new_id(), ts, body.clone());
        assert_eq!(w.ingress.post(&d).await.0, StatusCode::OK);
    }
    assert_eq!(stored_rows(&w.db).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signature_that_does_not_match_answers_invalid_signature() {
    let w = world().await;
    let body = user_created("user_sig");
    let other_secret = Delivery::signed(&new_secret(), body.clone());
    let mut tampered = Delivery::signed(&w.ingress.secret, body.clone());
    tampered.body.push(b' ');
    let mut bare = Delivery::signed(&w.ingress.secret, body.clone());
    bare.signature = "v1,".to_owned();
    let mut other_version = Delivery::signed(&w.ingress.secret, body.clone());
    other_version.signature = other_version.signature.replacen("v1,", "v2,", 1);

    for delivery in [other_secret, tampered, bare, other_version] {
        let (status, answer) = w.ingress.post(&delivery).await;

        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "signature {}",
            delivery.signature
        );
        assert_eq!(answer["error"], "invalid_signature");
    }
    assert_eq!(stored_rows(&w.db).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verified_body_that_is_not_a_clerk_event_answers_invalid_payload() {
    let w = world().await;
    let bodies: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"[{\"type\":\"user.created\"}]".to_vec(),
        b"{\"data\":{}}".to_vec(),
        b"{\"type\":7}".to_vec(),
        b"\xff\xfe{\"type\":\"user.created\"}".to_vec(),
        // Valid JSON that PostgreSQL's jsonb refuses.
        b"{\"type\":\"user.created\",\"data\":{\"x\":\"\\u0000\"}}".to_vec(),
        b"{\"type\":\"user.created\",\"data\":{\"n\":1e-20000}}".to_vec(),
    ];

    for body in bodies {
        let delivery = Delivery::signed(&w.ingress.secret, body.clone());
        let (status, answer) = w.ingress.post(&delivery).await;

        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "body {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            answer["error"],
            "invalid_payload",
            "body {}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(stored_rows(&w.db).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_limit_answers_413_whether_or_not_its_length_is_declared() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let ingress = TestIngress::spawn_with(
        Endpoints {
            database_url: db.url(None),
            amqp_url: e2e::amqp_url(),
            prefix: broker.prefix.clone(),
        },
        |s| s.max_body_bytes = 2048,
    )
    .await;
    let mut big = user_created("user_big");
    big.truncate(big.len() - 1);
    big.extend_from_slice(format!(",\"pad\":\"{}\"}}", "x".repeat(2048)).as_bytes());
    let delivery = Delivery::signed(&ingress.secret, big.clone());

    let (declared, answer) = ingress.post(&delivery).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(512).map(|c| Ok(c.to_vec())).collect();
    let streamed = ingress
        .http
        .post(ingress.url("/webhooks/clerk"))
        .header("svix-id", &delivery.id)
        .header("svix-timestamp", &delivery.timestamp)
        .header("svix-signature", &delivery.signature)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let (chunked, chunked_answer) = json_response(streamed).await;

    assert_eq!(declared, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer["error"], "payload_too_large");
    assert_eq!(chunked, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(chunked_answer["error"], "payload_too_large");
    assert_eq!(stored_rows(&db).await, 0);
    // Just under the limit is accepted.
    let small = Delivery::signed(&ingress.secret, user_created("user_small"));
    assert!(small.body.len() < 2048);
    assert_eq!(ingress.post(&small).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_copies_of_one_delivery_store_one_row_and_publish_one_message() {
    let w = world().await;
    let delivery = Delivery::signed(&w.ingress.secret, user_created("user_burst"));

    let answers = futures_util::future::join_all((0..50).map(|_| w.ingress.post(&delivery))).await;

    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK));
    let oks = answers.iter().filter(|(_, b)| b["status"] == "ok").count();
    let duplicates = answers
        .iter()
        .filter(|(_, b)| b["status"] == "duplicate")
        .count();
    assert_eq!((oks, duplicates), (1, 49));
    assert_eq!(stored_rows(&w.db).await, 1);
    wait_for("the row to be published", DEADLINE, || async {
        (unpublished_rows(&w.db).await == 0).then_some(())
    })
    .await;
    let messages = w.broker.take_worker_messages(1, DEADLINE).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].message_id.as_deref(),
        Some(delivery.id.as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_broker_down_events_are_accepted_and_published_once_it_is_back() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let amqp_port = reqwest::Url::parse(&e2e::amqp_url())
        .unwrap()
        .port()
        .unwrap_or(5672);
    let proxy = TcpProxy::start(amqp_port).await;
    let mut amqp_via_proxy = reqwest::Url::parse(&e2e::amqp_url()).unwrap();
    amqp_via_proxy.set_port(Some(proxy.port)).unwrap();
    let ingress = TestIngress::spawn(Endpoints {
        database_url: db.url(None),
        amqp_url: amqp_via_proxy.to_string(),
        prefix: broker.prefix.clone(),
    })
    .await;
    // Published while the broker is reachable: the relay holds a connection.
    let before = Delivery::signed(&ingress.secret, user_created("user_before"));
    assert_eq!(ingress.post(&before).await.0, StatusCode::OK);
    wait_for("the first event to be published", DEADLINE, || async {
        (unpublished_rows(&db).await == 0).then_some(())
    })
    .await;

    proxy.cut();
    let during: Vec<Delivery> = (0..5)
        .map(|i| Delivery::signed(&ingress.secret, user_created(&format!("user_during_{i}"))))
        .collect();
    for delivery in &during {
        let (status, body) = ingress.post(delivery).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"status": "ok"}));
    }
    assert_eq!(
        unpublished_rows(&db).await,
        5,
        "nothing can be published while the broker is away"
    );
    wait_for("the outbox gauge to count the five", DEADLINE, || async {
        let (_, metrics) = ingress.ops_get("/metrics").await;
        metrics
            .contains("clerk_ingress_unpublished_events 5")
            .then_some(())
    })
    .await;

    proxy.restore();
    wait_for(
        "the relay to publish the backlog",
        Duration::from_secs(60),
        || async { (unpublished_rows(&db).await == 0).then_some(()) },
    )
    .await;

    let messages = broker.take_worker_messages(6, DEADLINE).await;
    let mut ids: Vec<String> = messages
        .iter()
        .filter_map(|m| m.message_id.clone())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = during
        .iter()
        .map(|d| d.id.clone())
        .chain([before.id.clone()])
        .collect();
    expected.sort();
    assert_eq!(ids, expected, "every event exactly once");
    ingress.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_database_down_the_answer_is_500_and_readyz_503_until_it_is_back() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let proxy = TcpProxy::start(db.server_port()).await;
    let ingress = TestIngress::spawn(Endpoints {
        database_url: db.url(Some(proxy.port)),
        amqp_url: e2e::amqp_url(),
        prefix: broker.prefix.clone(),
    })
    .await;

    proxy.cut();
    let delivery = Delivery::signed(&ingress.secret, user_created("user_dbdown"));
    let (status, body) = ingress.post(&delivery).await;
    let (ready, ready_body) = ingress.ops_get("/readyz").await;
    let (live, _) = ingress.get("/healthz").await;

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, json!({"error": "internal"}));
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready_body.contains("postgres"), "{ready_body}");
    assert_eq!(live, StatusCode::OK);

    proxy.restore();
    // Clerk retries the same delivery; now it is stored.
    let retried = wait_for("the database to be back", DEADLINE, || async {
        let answer = ingress.post(&delivery).await;
        (answer.0 == StatusCode::OK).then_some(answer.1)
    })
    .await;
    assert_eq!(retried, json!({"status": "ok"}));
    assert_eq!(ingress.ops_get("/readyz").await.0, StatusCode::OK);
    assert_eq!(stored_rows(&db).await, 1);
    ingress.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_schema_answers_500_without_details() {
    let w = world().await;
    sqlx::query("ALTER TABLE webhook_event_bodies DROP COLUMN raw_body CASCADE")
        .execute(&w.db.pool)
        .await
        .unwrap();
    let delivery = Delivery::signed(&w.ingress.secret, user_created("user_sabotage"));

    let (status, body) = w.ingress.post(&delivery).await;

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, json!({"error": "internal"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_publish_each_stored_row_exactly_once() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let endpoints = || Endpoints {
        database_url: db.url(None),
        amqp_url: e2e::amqp_url(),
        prefix: broker.prefix.clone(),
    };
    // Rows a stopped replica left unpublished.
    let ids: Vec<String> = (0..600).map(|_| new_id()).collect();
    for id in &ids {
        sqlx::query(
            "INSERT INTO webhook_events (webhook_id, event_type, payload, raw_body) \
             VALUES ($1, 'user.created', '{\"type\":\"user.created\"}', '{\"type\":\"user.created\"}')",
        )
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    }

    let first = TestIngress::spawn(endpoints()).await;
    let second = TestIngress::spawn(endpoints()).await;
    wait_for(
        "both relays to publish everything",
        Duration::from_secs(60),
        || async { (unpublished_rows(&db).await == 0).then_some(()) },
    )
    .await;

    let messages = broker.take_worker_messages(ids.len(), DEADLINE).await;
    let mut published: Vec<String> = messages.into_iter().filter_map(|m| m.message_id).collect();
    published.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(published.len(), expected.len(), "no row published twice");
    assert_eq!(published, expected);
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn debug_health_and_metrics_routes_answer() {
    let w = world().await;
    let accepted = Delivery::signed(&w.ingress.secret, user_created("user_metrics"));
    w.ingress.post(&accepted).await;
    w.ingress.post(&accepted).await;
    let mut refused = accepted.clone();
    refused.signature = "v1,AAAA".to_owned();
    w.ingress.post(&refused).await;

    let (debug_status, debug) = w.ingress.get("/webhooks/clerk/_debug").await;
    let debug: serde_json::Value = serde_json::from_str(&debug).unwrap();
    let (live, _) = w.ingress.get("/healthz").await;
    let (ready, _) = w.ingress.ops_get("/readyz").await;
    let (metrics_status, metrics) = w.ingress.ops_get("/metrics").await;
    let (public_metrics, _) = w.ingress.get("/metrics").await;
    let (public_ready, _) = w.ingress.get("/readyz").await;

    assert_eq!(debug_status, StatusCode::OK);
    assert_eq!(debug["ok"], true);
    assert_eq!(debug["route"], "/webhooks/clerk");
    assert_eq!(debug["method"], "POST");
    assert_eq!(
        debug["requiredHeaders"],
        json!(["svix-id", "svix-timestamp", "svix-signature"])
    );
    assert!(debug["supportedEvents"]
        .as_array()
        .unwrap()
        .contains(&json!("user.deleted")));
    assert_eq!(debug["message"], "Webhook endpoint is configured correctly");
    assert_eq!(live, StatusCode::OK);
    assert_eq!(ready, StatusCode::OK);
    assert_eq!(metrics_status, StatusCode::OK);
    assert_eq!(
        public_metrics,
        StatusCode::NOT_FOUND,
        "metrics stay off the public port"
    );
    assert_eq!(
        public_ready,
        StatusCode::NOT_FOUND,
        "readyz stays off the public port"
    );
    assert!(
        metrics.contains("clerk_ingress_requests_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("clerk_ingress_requests_total{outcome=\"duplicate\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("clerk_ingress_requests_total{outcome=\"invalid_signature\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn header_values_with_bytes_outside_ascii_answer_400_without_panicking() {
    let w = world().await;
    let delivery = Delivery::signed(&w.ingress.secret, user_created("user_bytes"));
    let odd = |bytes: &[u8]| reqwest::header::HeaderValue::from_bytes(bytes).unwrap();
    let cases = [
        ("svix-id", odd(b"msg_\xff\xfe"), "missing_svix_headers"),
        ("svix-timestamp", odd(b"17\xe9"), "invalid_timestamp"),
        ("svix-signature", odd(b"v1,\xff\xff"), "invalid_signature"),
    ];

    for (name, value, expected) in cases {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("svix-id", delivery.id.parse().unwrap());
        headers.insert("svix-timestamp", delivery.timestamp.parse().unwrap());
        headers.insert("svix-signature", delivery.signature.parse().unwrap());
        headers.insert(name, value);
        let response = w
            .ingress
            .http
            .post(w.ingress.url("/webhooks/clerk"))
            .headers(headers)
            .body(delivery.body.clone())
            .send()
            .await
            .unwrap();

        let (status, body) = json_response(response).await;

        assert_eq!(status, StatusCode::BAD_REQUEST, "odd {name}");
        assert_eq!(body["error"], expected, "odd {name}");
    }
    assert_eq!(w.ingress.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(stored_rows(&w.db).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_deliveries_share_commits_and_each_answer_follows_its_own_commit() {
    let w = world().await;
    let distinct: Vec<Delivery> = (0..120)
        .map(|i| Delivery::signed(&w.ingress.secret, user_created(&format!("user_gc_{i}"))))
        .collect();
    // Copies of the first 30 in the same burst, and one body jsonb refuses.
    let mut burst: Vec<Delivery> = distinct
        .iter()
        .chain(distinct.iter().take(30))
        .cloned()
        .collect();
    let unstorable = Delivery::signed(
        &w.ingress.secret,
        b"{\"type\":\"user.created\",\"data\":{\"x\":\"\\u0000\"}}".to_vec(),
    );
    burst.push(unstorable.clone());

    let answers = futures_util::future::join_all(burst.iter().map(|delivery| async {
        let (status, body) = w.ingress.post(delivery).await;
        // Whatever answered 200 must already be committed.
        let committed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM webhook_events WHERE webhook_id = $1)",
        )
        .bind(&delivery.id)
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
        (delivery.id.clone(), status, body, committed)
    }))
    .await;

    for (id, status, body, committed) in &answers {
        if *id == unstorable.id {
            assert_eq!(*status, StatusCode::BAD_REQUEST);
            assert_eq!(body["error"], "invalid_payload");
            assert!(!committed);
        } else {
            assert_eq!(*status, StatusCode::OK, "{body}");
            assert!(committed, "{id} answered {body} before its commit");
        }
    }
    let oks = answers.iter().filter(|a| a.2["status"] == "ok").count();
    let duplicates = answers
        .iter()
        .filter(|a| a.2["status"] == "duplicate")
        .count();
    assert_eq!((oks, duplicates), (120, 30));
    assert_eq!(stored_rows(&w.db).await, 120);
}

/// The writer keeps its database connection between batches. When the
/// server dropped it while it sat idle (a restart, a failover), the next
/// request is stored on a fresh connection, not answered 500.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_after_the_database_dropped_the_idle_connections_is_stored() {
    let w = world().await;
    let first = Delivery::signed(&w.ingress.secret, user_created("user_before_drop"));
    assert_eq!(w.ingress.post(&first).await.0, StatusCode::OK);

    let dropped: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )
    .bind(&w.db.name)
    .fetch_all(&w.db.pool)
    .await
    .unwrap();
    assert!(!dropped.is_empty(), "the ingress held no connection");

    let second = Delivery::signed(&w.ingress.secret, user_created("user_after_drop"));
    let (status, answer) = w.ingress.post(&second).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "ok");
    assert_eq!(stored_rows(&w.db).await, 2);
}
