//! The admin API through real HTTP against a test's own database: tokens,
//! credit changes, the sync job.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{admin::TestAdmin, db::TestDb, fake_clerk::FakeClerk, wait_for};
use reqwest::StatusCode;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);

/// Runs the built `admin` binary against `db`.
fn run_admin(db: &TestDb, args: &[&str]) -> std::process::Output {
    std::process::Command::new(e2e::binary("admin"))
        .args(args)
        .env("DATABASE_URL", db.url(None))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// No token, an unknown one and a revoked one are all 401, with the stable
/// code; `/healthz` needs none.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_a_live_token_is_unauthorized() {
    let app = TestAdmin::spawn(None).await;
    let token = app.token("revoked-soon").await;
    admin::tokens::revoke(&app.db.pool, "revoked-soon")
        .await
        .unwrap();
    let body = r#"{"add": 1, "reason": "test"}"#;
    let path = "/api/admin/users/user_1/credits";

    let missing = app.send(reqwest::Method::PUT, path, None, Some(body)).await;
    let unknown = app.put(path, "adm_not_a_token", body).await;
    let revoked = app.put(path, &token, body).await;
    let health = app.send(reqwest::Method::GET, "/healthz", None, None).await;

    for answer in [missing, unknown, revoked] {
        assert_eq!(
            answer,
            (StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"}))
        );
    }
    assert_eq!(health.0, StatusCode::OK);
}

/// `admin tokens create` prints the token alone, stores only its hash; the
/// token works until `admin tokens revoke`; `list` shows names, never tokens.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_created_on_the_command_line_work_until_revoked() {
    let app = TestAdmin::spawn(None).await;
    app.exec("INSERT INTO users (id, email) VALUES ('user_t', 't@example.org')")
        .await;

    let created = run_admin(&app.db, &["tokens", "create", "panel"]);
    let token = String::from_utf8(created.stdout).unwrap();
    let token = token.strip_suffix('\n').unwrap();
    let stored: String =
        sqlx::query_scalar("SELECT token_hash FROM admin_tokens WHERE name = 'panel'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    let before = app
        .put(
            "/api/admin/users/user_t/credits",
            token,
            r#"{"set": 3, "reason": "r"}"#,
        )
        .await;
    let again = run_admin(&app.db, &["tokens", "create", "panel"]);
    let revoked = run_admin(&app.db, &["tokens", "revoke", "panel"]);
    let listed = run_admin(&app.db, &["tokens", "list"]);
    let after = app
        .put(
            "/api/admin/users/user_t/credits",
            token,
            r#"{"set": 4, "reason": "r"}"#,
        )
        .await;

    assert!(created.status.success());
    assert!(
        !token.contains(char::is_whitespace) && token.len() > 32,
        "{token}"
    );
    assert_eq!(stored, admin::tokens::hash(token));
    assert_ne!(stored, token);
    assert_eq!(before.0, StatusCode::OK, "{before:?}");
    assert!(!again.status.success(), "a name is taken once");
    assert!(revoked.status.success());
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.starts_with("panel\t") && listed.contains("revoked"),
        "{listed}"
    );
    assert!(!listed.contains(token));
    assert_eq!(after.0, StatusCode::UNAUTHORIZED);
}

/// A set then an add: the answer carries the balance and its parts; the
/// ledger and the audit log name the token as the actor.
#[tokio::test(flavor = "multi_thread")]
async fn adjusting_a_users_credits_answers_the_balance_and_audits_the_token_name() {
    let app = TestAdmin::spawn(None).await;
    let token = app.token("support-panel").await;
    app.exec("INSERT INTO users (id, email) VALUES ('user_c', 'c@example.org')")
        .await;

    let set = app
        .put(
            "/api/admin/users/user_c/credits",
            &token,
            r#"{"set": 50, "reason": "goodwill"}"#,
        )
        .await;
    let add = app
        .put(
            "/api/admin/users/user_c/credits",
            &token,
            r#"{"add": -20, "reason": "refund"}"#,
        )
        .await;

    assert_eq!(set.0, StatusCode::OK, "{set:?}");
    assert_eq!(
        add,
        (
            StatusCode::OK,
            json!({"user_id": "user_c", "balance": 30, "plan_credits": 0, "pack_credits": 30})
        )
    );
    let audited = app
        .scalar(
            "SELECT count(*) FROM admin_actions WHERE action_type = 'credits_adjusted' \
             AND actor = 'support-panel' AND user_id = 'user_c'",
        )
        .await;
    let ledger = app
        .scalar(
            "SELECT count(*) FROM credit_ledger WHERE owner_id = 'user_c' \
             AND reason = 'admin_adjustment' AND actor = 'support-panel'",
        )
        .await;
    assert_eq!((audited, ledger), (2, 2));
}

/// The owners' route takes an organization's account.
#[tokio::test(flavor = "multi_thread")]
async fn an_organizations_credits_change_through_the_owners_route() {
    let app = TestAdmin::spawn(None).await;
    let token = app.token("ops").await;
    app.exec("INSERT INTO credit_accounts (owner_id, pack_credits) VALUES ('org_1', 5)")
        .await;

    let answer = app
        .put(
            "/api/admin/credits/org_1",
            &token,
            r#"{"add": 7, "reason": "contract"}"#,
        )
        .await;

    assert_eq!(
        answer,
        (
            StatusCode::OK,
            json!({"owner_id": "org_1", "balance": 12, "plan_credits": 0, "pack_credits": 12})
        )
    );
}

/// Malformed bodies are 400 with a stable code, and change nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_credit_change_is_a_400_with_a_stable_code() {
    let app = TestAdmin::spawn(None).await;
    let token = app.token("ops").await;
    app.exec("INSERT INTO users (id, email) VALUES ('user_m', 'm@example.org')")
        .await;
    let path = "/api/admin/users/user_m/credits";

    let cases = [
        (r#"{"set": 1, "add": 2, "reason": "r"}"#, "set_or_add"),
        (r#"{"reason": "r"}"#, "set_or_add"),
        (r#"{"set": 1}"#, "missing_reason"),
        (r#"{"set": 1, "reason": "  "}"#, "missing_reason"),
        (r#"{"set": 1.5, "reason": "r"}"#, "malformed_body"),
        (r#"{"set": "1", "reason": "r"}"#, "malformed_body"),
        (r#"{"set": 1, "reason": "r", "extra": 1}"#, "malformed_body"),
        ("not json", "malformed_body"),
    ];
    for (body, code) in cases {
        let (status, answer) = app.put(path, &token, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error"], code, "{body}: {answer}");
    }
    assert_eq!(app.scalar("SELECT count(*) FROM credit_ledger").await, 0);
}

/// An unknown user is 404; a change the ledger refuses, or one for a deleted
/// user, is 422.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_users_are_404_and_refused_changes_422() {
    let app = TestAdmin::spawn(None).await;
    let token = app.token("ops").await;
    app.exec(
        "INSERT INTO users (id, email, deleted_at) VALUES ('user_live', 'l@example.org', NULL), \
         ('user_gone', 'g@example.org', now())",
    )
    .await;

    let unknown = app
        .put(
            "/api/admin/users/user_nobody/credits",
            &token,
            r#"{"add": 1, "reason": "r"}"#,
        )
        .await;
    let negative = app
        .put(
            "/api/admin/users/user_live/credits",
            &token,
            r#"{"add": -1, "reason": "r"}"#,
        )
        .await;
    let deleted = app
        .put(
            "/api/admin/users/user_gone/credits",
            &token,
            r#"{"set": 1, "reason": "r"}"#,
        )
        .await;

    assert_eq!(unknown.0, StatusCode::NOT_FOUND);
    assert_eq!(unknown.1["error"], "unknown_user");
    assert_eq!(negative.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(negative.1["error"], "refused_change");
    assert_eq!(deleted.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(deleted.1["error"], "deleted_user");
}

/// The sync runs as a job: 202 with its id, then its result; the users it
/// created and its audit row carry the token's name.
#[tokio::test(flavor = "multi_thread")]
async fn the_sync_runs_as_a_job_whose_result_the_jobs_route_shows() {
    let clerk = FakeClerk::start().await;
    clerk.set_users(vec![json!({
        "id": "user_synced", "object": "user",
        "email_addresses": [{"id": "idn_1", "email_address": "s@example.org"}],
        "primary_email_address_id": "idn_1",
        "first_name": "Rita", "last_name": "Levi", "updated_at": 5,
        "public_metadata": {}
    })]);
    let app = TestAdmin::spawn(Some(&clerk)).await;
    let token = app.token("nightly").await;

    let (status, started) = app
        .send(
            reqwest::Method::POST,
            "/api/admin/users/sync",
            Some(&token),
            None,
        )
        .await;
    let job_id = started["job_id"].as_str().unwrap().to_owned();
    let job = wait_for("the sync job to finish", DEADLINE, || async {
        let (_, job) = app
            .send(
                reqwest::Method::GET,
                &format!("/api/admin/jobs/{job_id}"),
                Some(&token),
                None,
            )
            .await;
        (job["state"] != "running").then_some(job)
    })
    .await;
    let unknown = app
        .send(
            reqwest::Method::GET,
            "/api/admin/jobs/nope",
            Some(&token),
            None,
        )
        .await;

    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["actor"], "nightly");
    assert_eq!(job["result"]["processed"], 1);
    assert_eq!(job["result"]["created_users"], 1);
    assert_eq!(job["result"]["failed"], 0);
    assert_eq!(
        app.scalar("SELECT count(*) FROM users WHERE id = 'user_synced'")
            .await,
        1
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM admin_actions WHERE actor = 'nightly'")
            .await,
        1
    );
    assert_eq!(unknown.0, StatusCode::NOT_FOUND);
}

/// Without CLERK_SECRET_KEY the sync is refused with a code, not a 500.
#[tokio::test(flavor = "multi_thread")]
async fn the_sync_without_clerk_configured_is_unavailable() {
    let app = TestAdmin::spawn(None).await;
    let token = app.token("ops").await;

    let (status, answer) = app
        .send(
            reqwest::Method::POST,
            "/api/admin/users/sync",
            Some(&token),
            None,
        )
        .await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer["error"], "clerk_not_configured");
}
