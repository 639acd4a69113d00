//! The admin API's user view, event search and detail, replays, dead letters,
//! audit log and OpenAPI document, through real HTTP against a test's own
//! database and broker prefix.

#![allow(clippy::unwrap_used)]

use std::{collections::BTreeSet, time::Duration};

use e2e::{
    admin::TestAdmin,
    commands::{dead_letter, event_state, mark_dead, run_worker},
    deliveries::{new_id, user_event, Delivery},
    ingress::{Endpoints, TestIngress},
    worker::{store, wait_processed, TestWorker},
};
use reqwest::StatusCode;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);

/// An ingress and a worker on the admin service's database and prefix.
async fn pipeline(app: &TestAdmin) -> (TestIngress, TestWorker) {
    let ingress = TestIngress::spawn(Endpoints {
        database_url: app.db.url(None),
        amqp_url: e2e::amqp_url(),
        prefix: app.broker.prefix.clone(),
    })
    .await;
    let worker = TestWorker::spawn(&app.db, &app.broker).await;
    (ingress, worker)
}

/// Posts a user event through the ingress; returns its svix id.
async fn post_user_event(ingress: &TestIngress, event_type: &str, user: &str, at: i64) -> String {
    let delivery = Delivery::signed(
        &ingress.secret,
        user_event(event_type, user, &format!("{user}@example.org"), at),
    );
    let (status, _) = ingress.post(&delivery).await;
    assert_eq!(status, StatusCode::OK);
    delivery.id
}

/// A stored event the worker gave up on, in the DLQ.
async fn dead(app: &TestAdmin, user: &str) -> String {
    let id = new_id();
    let body = user_event("user.created", user, "dead@example.org", 1000);
    store(&app.db, &id, &body).await;
    mark_dead(&app.db, &id, 5, "injected failure").await;
    dead_letter(&app.broker, &id, &body, 5, "injected failure", None).await;
    id
}

fn ids(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["webhook_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Events delivered through the ingress are found by user, type and status,
/// newest first, a page at a time through the cursor.
#[tokio::test(flavor = "multi_thread")]
async fn a_users_events_are_found_newest_first_a_page_at_a_time() {
    let app = TestAdmin::spawn(None).await;
    let token = app.token("panel").await;
    let (ingress, _worker) = pipeline(&app).await;
    let created = post_user_event(&ingress, "user.created", "user_a", 1_000).await;
    let first = post_user_event(&ingress, "user.updated", "user_a", 2_000).await;
    let second = post_user_event(&ingress, "user.updated", "user_a", 3_000).await;
    post_user_event(&ingress, "user.created", "user_b", 1_000).await;
    wait_processed(&app.db, 4, DEADLINE).await;

    let (status, page_one) = app
        .get("/api/admin/events?user_id=user_a&limit=2", &token)
        .await;
    let cursor = page_one["next_cursor"].as_str().unwrap().to_owned();
    let (_, page_two) = app
        .get(
            &format!("/api/admin/events?user_id=user_a&limit=2&cursor={cursor}"),
            &token,
        )
        .await;
    let (_, updates) = app
        .get("/api/admin/events?user_id=user_a&type=user.updated", &token)
        .await;
    let (_, processed) = app.get("/api/admin/events?status=processed", &token).await;
    let (_, dead) = app.get("/api/admin/events?status=dead", &token).await;
    let (_, future) = app
        .get("/api/admin/events?since=2999-01-01T00:00:00Z", &token)
        .await;
    let (_, past) = app
        .get("/api/admin/events?until=2000-01-01T00:00:00Z", &token)
        .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&page_one), [second.clone(), first.clone()]);
    assert_eq!(ids(&page_two), [created]);
    assert_eq!(page_two["next_cursor"], Value::Null);
    assert_eq!(ids(&updates), [second, first]);
    assert_eq!(ids(&processed).len(), 4);
    assert_eq!(page_one["events"][0]["status"], "processed");
    assert_eq!(page_one["events"][0]["subject"], "user_a");
    assert!(ids(&dead).is_empty());
    assert!(ids(&future).is_empty());
    assert!(ids(&past).is_empty());
}

/// The user view gathers the mirror row, memberships, the account with its
/// ledger, the user's events and the audit rows about them.
#[tokio::test(flavor = "multi_thread")]
async fn a_users_view_shows_account_ledger_memberships_events_and_audit() {
    let app = TestAdmin::spawn(None).await;
    let token = app.token("support").await;
    let (ingress, _worker) = pipeline(&app).await;
    let created = post_user_event(&ingress, "user.created", "user_v", 1_000).await;
    wait_processed(&app.db, 1, DEADLINE).await;
    app.exec(
        "INSERT INTO memberships (email, user_id, status, activated_at) \
         VALUES ('user_v@example.org', 'user_v', 'active', now())",
    )
    .await;
    let (adjusted, _) = app
        .put(
            "/api/admin/users/user_v/credits",
            &token,
            r#"{"set": 40, "reason": "welcome"}"#,
        )
        .await;

    let (status, view) = app.get("/api/admin/users/user_v", &token).await;
    let unknown = app.get("/api/admin/users/user_nobody", &token).await;

    assert_eq!(adjusted, StatusCode::OK);
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["user_id"], "user_v");
    assert_eq!(view["user"]["email"], "user_v@example.org");
    assert_eq!(view["memberships"][0]["status"], "active");
    assert_eq!(view["credit_account"]["balance"], 40);
    assert_eq!(view["ledger"][0]["reason"], "admin_adjustment");
    assert_eq!(view["ledger"][0]["delta"], 40);
    assert_eq!(view["ledger"][0]["actor"], "support");
    assert_eq!(ids(&json!({"events": view["events"]})), [created]);
    assert_eq!(view["audit"][0]["action_type"], "credits_adjusted");
    assert_eq!(view["audit"][0]["actor"], "support");
    assert_eq!(
        unknown,
        (
            StatusCode::NOT_FOUND,
            json!({"error": "unknown_user", "detail": "no user, membership or credit account user_nobody"})
        )
    );
}

/// One event shows its payload; replaying it re-publishes the stored bytes,
/// gives a dead event a fresh start, and the event's audit rows name the
/// token.
#[tokio::test(flavor = "multi_thread")]
async fn replaying_a_stored_event_republishes_it_and_is_audited_with_the_token_name() {
    let app = TestAdmin::spawn(None).await;
    let token = app.token("oncall").await;
    let id = new_id();
    let body = user_event("user.updated", "user_r", "r@example.org", 5_000);
    store(&app.db, &id, &body).await;
    mark_dead(&app.db, &id, 5, "injected failure").await;

    let (before_status, before) = app.get(&format!("/api/admin/events/{id}"), &token).await;
    let replayed = app
        .post(&format!("/api/admin/events/{id}/replay"), &token, "")
        .await;
    let published = app.broker.take_worker_messages(1, DEADLINE).await;
    let (_, after) = app.get(&format!("/api/admin/events/{id}"), &token).await;
    let unknown_get = app.get("/api/admin/events/msg_unknown", &token).await;
    let unknown_replay = app
        .post("/api/admin/events/msg_unknown/replay", &token, "")
        .await;

    assert_eq!(before_status, StatusCode::OK);
    assert_eq!(
        before["payload"],
        serde_json::from_slice::<Value>(&body).unwrap()
    );
    assert_eq!(before["status"], "dead");
    assert_eq!(before["last_error"], "injected failure");
    assert_eq!(
        replayed,
        (StatusCode::OK, json!({"republished": 1, "reset": 1}))
    );
    assert_eq!(published[0].message_id.as_deref(), Some(id.as_str()));
    assert_eq!(published[0].body, body);
    assert_eq!(after["status"], "published");
    assert_eq!(after["audit"][0]["action_type"], "replay_from_store");
    assert_eq!(after["audit"][0]["actor"], "oncall");
    assert_eq!(unknown_get.0, StatusCode::NOT_FOUND);
    assert_eq!(unknown_get.1["error"], "unknown_event");
    assert_eq!(unknown_replay.0, StatusCode::NOT_FOUND);
    assert_eq!(unknown_replay.1["error"], "unknown_event");
}

/// The API lists exactly what `worker dlq list --json` lists; a dry run
/// changes nothing; a replay moves one dead letter back and is audited with
/// the token's name; an id not in the queue replays nothing.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_as_the_cli_lists_them_and_replayed_with_the_token_name() {
    let app = TestAdmin::spawn(None).await;
    let token = app.token("oncall").await;
    let first = dead(&app, "user_d1").await;
    let second = dead(&app, "user_d2").await;

    let (status, listed) = app.get("/api/admin/dlq", &token).await;
    let cli = run_worker(&app.db, &app.broker, &["dlq", "list", "--json"], &[]).await;
    let dry = app
        .post(
            "/api/admin/dlq/replay",
            &token,
            &json!({"ids": [first], "dry_run": true}).to_string(),
        )
        .await;
    let (_, after_dry_run) = app.get("/api/admin/dlq", &token).await;
    let missing = app
        .post(
            "/api/admin/dlq/replay",
            &token,
            &json!({"ids": [first, "msg_not_dead"]}).to_string(),
        )
        .await;
    let (_, after_missing) = app.get("/api/admin/dlq", &token).await;
    let replayed = app
        .post(
            "/api/admin/dlq/replay",
            &token,
            &json!({"ids": [first]}).to_string(),
        )
        .await;
    let republished = app.broker.take_worker_messages(1, DEADLINE).await;
    let (_, left) = app.get("/api/admin/dlq", &token).await;
    let (_, audit) = app
        .get("/api/admin/audit?action_type=dlq_replay", &token)
        .await;

    assert_eq!(status, StatusCode::OK);
    assert!(cli.status.success(), "{cli:?}");
    assert_eq!(listed, serde_json::from_str::<Value>(&cli.stdout).unwrap());
    assert_eq!(listed[0]["svix_id"], first.as_str());
    assert_eq!(listed[0]["attempts"], 5);
    assert_eq!(listed[0]["last_error"], "injected failure");
    assert_eq!(dry.0, StatusCode::OK);
    assert_eq!(dry.1["replayed"], 0);
    assert_eq!(dry.1["would_replay"][0]["svix_id"], first.as_str());
    assert_eq!(after_dry_run, listed);
    assert_eq!(missing.0, StatusCode::NOT_FOUND);
    assert_eq!(missing.1["error"], "not_in_queue");
    assert_eq!(after_missing, listed);
    assert_eq!(replayed.0, StatusCode::OK, "{replayed:?}");
    assert_eq!(replayed.1["replayed"], 1);
    assert_eq!(republished[0].message_id.as_deref(), Some(first.as_str()));
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(left[0]["svix_id"], second.as_str());
    assert_eq!(event_state(&app.db, &first).await.0, "published");
    let rows = audit.as_array().unwrap();
    assert_eq!(rows.len(), 1, "a dry run and a refused replay write no row");
    assert_eq!(rows[0]["actor"], "oncall");
    assert_eq!(rows[0]["details"]["selection"], json!({"ids": [first]}));
}

/// A replay selection must name exactly one of ids, type and all.
#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_dlq_replay_is_a_400_and_replays_nothing() {
    let app = TestAdmin::spawn(None).await;
    let token = app.token("oncall").await;
    dead(&app, "user_keep").await;

    let mut answers = Vec::new();
    for body in [
        "",
        "not json",
        "{}",
        r#"{"ids": []}"#,
        r#"{"all": false}"#,
        r#"{"type": " "}"#,
        r#"{"ids": ["a"], "all": true}"#,
        r#"{"all": true, "extra": 1}"#,
        r#"{"ids": "a"}"#,
    ] {
        answers.push((body, app.post("/api/admin/dlq/replay", &token, body).await));
    }

    for (body, (status, answer)) in answers {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(
            ["malformed_body", "bad_selection"].contains(&answer["error"].as_str().unwrap()),
            "{body}: {answer}"
        );
    }
    let (_, left) = app.get("/api/admin/dlq", &token).await;
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(
        app.scalar("SELECT count(*) FROM admin_actions").await,
        0,
        "nothing was audited"
    );
}

/// The audit log filters by user, actor and type, newest first, and pages
/// with `before`.
#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_filters_by_user_actor_and_type_newest_first() {
    let app = TestAdmin::spawn(None).await;
    let alice = app.token("alice").await;
    let bob = app.token("bob").await;
    app.exec("INSERT INTO users (id, email) VALUES ('user_1', 'a@x.org'), ('user_2', 'b@x.org')")
        .await;
    for (token, user, reason) in [
        (&alice, "user_1", "one"),
        (&bob, "user_1", "two"),
        (&alice, "user_2", "three"),
    ] {
        let (status, _) = app
            .put(
                &format!("/api/admin/users/{user}/credits"),
                token,
                &json!({"add": 1, "reason": reason}).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let reasons = |rows: &Value| -> Vec<String> {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|row| row["details"]["reason"].as_str().unwrap_or("?").to_owned())
            .collect()
    };

    let (_, everything) = app.get("/api/admin/audit", &alice).await;
    let (_, by_user) = app.get("/api/admin/audit?user_id=user_1", &alice).await;
    let (_, by_actor) = app.get("/api/admin/audit?actor=alice", &alice).await;
    let (_, by_type) = app
        .get(
            "/api/admin/audit?action_type=credits_adjusted&limit=1",
            &alice,
        )
        .await;
    let before = by_type[0]["id"].as_i64().unwrap();
    let (_, older) = app
        .get(
            &format!("/api/admin/audit?action_type=credits_adjusted&limit=1&before={before}"),
            &alice,
        )
        .await;
    let (_, other_type) = app.get("/api/admin/audit?action_type=prune", &alice).await;

    assert_eq!(reasons(&everything), ["three", "two", "one"]);
    assert_eq!(reasons(&by_user), ["two", "one"]);
    assert_eq!(reasons(&by_actor), ["three", "one"]);
    assert_eq!(reasons(&by_type), ["three"]);
    assert_eq!(reasons(&older), ["two"]);
    assert!(other_type.as_array().unwrap().is_empty());
}

/// Malformed parameters answer 400 with a stable code; a NUL byte in an id
/// or a filter finds nothing (never a 500).
#[tokio::test(flavor = "multi_thread")]
async fn malformed_parameters_are_400_with_stable_codes_never_500() {
    let app = TestAdmin::spawn(None).await;
    let token = app.token("panel").await;

    let cases = [
        ("/api/admin/events?limit=0", "bad_limit"),
        ("/api/admin/events?limit=abc", "bad_limit"),
        ("/api/admin/events?limit=501", "bad_limit"),
        ("/api/admin/events?since=yesterday", "bad_timestamp"),
        (
            "/api/admin/events?until=2024-13-01T00:00:00Z",
            "bad_timestamp",
        ),
        ("/api/admin/events?status=lost", "bad_status"),
        ("/api/admin/events?cursor=nope", "bad_cursor"),
        ("/api/admin/audit?before=-3", "bad_cursor"),
        ("/api/admin/audit?limit=-1", "bad_limit"),
        ("/api/admin/dlq?limit=0", "bad_limit"),
    ];
    let mut answers = Vec::new();
    for (path, _) in cases {
        answers.push(app.get(path, &token).await);
    }
    let nul_filter = app.get("/api/admin/events?user_id=a%00b", &token).await;
    let nul_user = app.get("/api/admin/users/a%00b", &token).await;
    let nul_event = app.get("/api/admin/events/a%00b", &token).await;
    let nul_reason = app
        .put(
            "/api/admin/users/user_x/credits",
            &token,
            r#"{"add": 1, "reason": "a\u0000b"}"#,
        )
        .await;

    for ((path, code), (status, answer)) in cases.iter().zip(answers) {
        assert_eq!(
            (status, answer["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some(*code)),
            "{path}: {answer}"
        );
    }
    // No stored id holds a NUL character: such a filter or id finds nothing.
    assert_eq!(
        nul_filter,
        (StatusCode::OK, json!({"events": [], "next_cursor": null}))
    );
    assert_eq!(nul_user.0, StatusCode::NOT_FOUND);
    assert_eq!(nul_event.0, StatusCode::NOT_FOUND);
    assert!(
        nul_reason.0.is_client_error(),
        "a NUL byte in a reason: {nul_reason:?}"
    );
}

/// Without a reachable broker the DLQ and replay routes say so with 503; the
/// routes that only read the database still answer.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_broker_the_dlq_routes_are_unavailable_and_the_rest_answers() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("amqp://guest:guest@{}/%2f", closed.local_addr().unwrap());
    drop(closed);
    let app = TestAdmin::spawn_with_broker_url(&url).await;
    let token = app.token("panel").await;
    let id = new_id();
    store(
        &app.db,
        &id,
        &user_event("user.created", "user_o", "o@x.org", 1),
    )
    .await;

    let list = app.get("/api/admin/dlq", &token).await;
    let replay = app
        .post("/api/admin/dlq/replay", &token, r#"{"all": true}"#)
        .await;
    let event_replay = app
        .post(&format!("/api/admin/events/{id}/replay"), &token, "")
        .await;
    let events = app.get("/api/admin/events", &token).await;

    for (status, answer) in [list, replay, event_replay] {
        assert_eq!(
            (status, answer["error"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("broker_unavailable")),
            "{answer}"
        );
    }
    assert_eq!(events.0, StatusCode::OK);
    assert_eq!(event_state(&app.db, &id).await.0, "published");
}

/// The OpenAPI document names every route of SPEC section 11 with its
/// method, and needs a token like every route.
#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_describes_every_route() {
    let app = TestAdmin::spawn(None).await;
    let token = app.token("panel").await;

    let (status, document) = app.get("/api/admin/openapi.json", &token).await;
    let (anonymous, _) = app
        .send(reqwest::Method::GET, "/api/admin/openapi.json", None, None)
        .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(anonymous, StatusCode::UNAUTHORIZED);
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let routes: BTreeSet<String> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    let expected: BTreeSet<String> = [
        "PUT /api/admin/users/{id}/credits",
        "PUT /api/admin/credits/{owner_id}",
        "POST /api/admin/users/sync",
        "GET /api/admin/jobs/{id}",
        "GET /api/admin/users/{id}",
        "GET /api/admin/events",
        "GET /api/admin/events/{webhook_id}",
        "POST /api/admin/events/{webhook_id}/replay",
        "GET /api/admin/dlq",
        "POST /api/admin/dlq/replay",
        "GET /api/admin/audit",
        "GET /api/admin/openapi.json",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(routes, expected);
    assert_eq!(
        document["components"]["securitySchemes"]["token"]["scheme"],
        "bearer"
    );
}

/// A second page of events never repeats the first, even when events share
/// a received_at instant.
#[tokio::test(flavor = "multi_thread")]
async fn pages_of_events_received_at_the_same_instant_neither_repeat_nor_skip() {
    let app = TestAdmin::spawn(None).await;
    let token = app.token("panel").await;
    let mut stored = Vec::new();
    for n in 0..7 {
        let id = new_id();
        store(
            &app.db,
            &id,
            &user_event("user.updated", "user_same", "s@x.org", n),
        )
        .await;
        stored.push(id);
    }
    app.exec("UPDATE webhook_events SET received_at = '2026-01-01T00:00:00Z'")
        .await;

    let mut seen = Vec::new();
    let (_, pages) = app.get("/api/admin/events?limit=3", &token).await;
    seen.extend(ids(&pages));
    let mut cursor = pages["next_cursor"].as_str().map(str::to_owned);
    while let Some(next) = cursor {
        let (_, page) = app
            .get(&format!("/api/admin/events?limit=3&cursor={next}"), &token)
            .await;
        seen.extend(ids(&page));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }

    stored.reverse();
    assert_eq!(seen, stored, "newest first by id at one instant");
}
