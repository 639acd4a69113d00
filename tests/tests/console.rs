//! The operators' console through plain HTTP against a test's own database
//! and broker prefix: sign-in and its cookie, CSRF and origin checks,
//! sign-out, revocation, error pages, and the audit of console changes.

#![allow(clippy::unwrap_used)]

use e2e::{
    admin::TestAdmin,
    commands::{dead_letter, mark_dead},
    console::{Console, Page},
    deliveries::{new_id, user_event},
    worker::store,
};
use reqwest::StatusCode;

const USER: &str = "user_console";

/// A service with one user and a token named `name`.
async fn app_with_user(name: &str) -> (TestAdmin, String) {
    let app = TestAdmin::spawn(None).await;
    app.exec(&format!(
        "INSERT INTO users (id, email) VALUES ('{USER}', 'c@example.org')"
    ))
    .await;
    let token = app.token(name).await;
    (app, token)
}

/// Changes of the balance and audit rows so far.
async fn changes(app: &TestAdmin) -> (i64, i64) {
    (
        app.scalar("SELECT count(*) FROM credit_ledger").await,
        app.scalar("SELECT count(*) FROM admin_actions").await,
    )
}

fn assert_sign_in_page(page: &Page) {
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), Some("/admin/sign-in"));
}

/// An unknown, empty or revoked token gets the form again with 401 and no
/// cookie; without a session every page sends the visitor to the sign-in.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_or_revoked_token_does_not_sign_in() {
    let (app, token) = app_with_user("soon-revoked").await;
    admin::tokens::revoke(&app.db.pool, "soon-revoked")
        .await
        .unwrap();
    let mut console = app.console();

    let unknown = console.sign_in("adm_not_a_token").await;
    let empty = console.sign_in("").await;
    let revoked = console.sign_in(&token).await;
    let page = console.get("/admin/events").await;
    let home = console.get("/").await;

    for answer in [&unknown, &empty, &revoked] {
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.set_cookie(), None);
        assert!(
            answer.body.contains("unknown or revoked"),
            "{}",
            answer.body
        );
    }
    assert_sign_in_page(&page);
    assert_sign_in_page(&home);
    assert_eq!(app.scalar("SELECT count(*) FROM admin_sessions").await, 0);
}

/// The session cookie is `HttpOnly`, `SameSite=Strict`, `Path=/`, `Secure`
/// only behind HTTPS; only the hash of its value is stored; the pages then
/// show the token's name.
#[tokio::test(flavor = "multi_thread")]
async fn signing_in_sets_a_strict_http_only_cookie_whose_hash_alone_is_stored() {
    let (app, token) = app_with_user("ops-carol").await;
    let mut console = app.console();

    let signed_in = console.sign_in(&token).await;
    let behind_https = app
        .console()
        .post_from(
            console.origin(),
            "/admin/sign-in",
            &[("token", &token)],
            &[("x-forwarded-proto", "https")],
        )
        .await;
    let events = console.get("/admin/events").await;
    let home = console.get("/").await;
    let session = console.session.clone().unwrap();

    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    assert_eq!(signed_in.location(), Some("/admin/events"));
    let cookie = signed_in.set_cookie().unwrap();
    assert!(cookie.starts_with("clerk_admin_session="), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.split("; ").any(|a| a == attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(behind_https.set_cookie().unwrap().ends_with("; Secure"));
    assert_eq!(events.status, StatusCode::OK);
    assert!(events.body.contains("ops-carol"));
    assert_eq!(home.location(), Some("/admin/events"));
    let stored = app
        .scalar(&format!(
            "SELECT count(*) FROM admin_sessions WHERE session_hash = '{}'",
            admin::tokens::hash(&session)
        ))
        .await;
    let in_clear = app
        .scalar(&format!(
            "SELECT count(*) FROM admin_sessions WHERE session_hash = '{session}'"
        ))
        .await;
    assert_eq!((stored, in_clear), (1, 0));
}

/// A form without the session's CSRF token, or with another one, is 403 and
/// changes nothing; the same form with the token goes through.
#[tokio::test(flavor = "multi_thread")]
async fn a_post_without_or_with_a_wrong_csrf_token_changes_nothing() {
    let (app, token) = app_with_user("ops-dan").await;
    let console = Console::signed_in(&app, &token).await;
    let other = Console::signed_in(&app, &token).await;
    let path = format!("/admin/users/{USER}/credits");
    let form = |csrf: &'static str| {
        vec![
            ("mode", "add"),
            ("amount", "5"),
            ("reason", "csrf test"),
            ("csrf", csrf),
        ]
    };

    let without = console.post(&path, &form("")[..3]).await;
    let wrong = console.post(&path, &form("0123")).await;
    let other_csrf = other.csrf().await;
    let others_token = console
        .post(
            &path,
            &[
                ("mode", "add"),
                ("amount", "5"),
                ("reason", "csrf test"),
                ("csrf", &other_csrf),
            ],
        )
        .await;
    let replay = console.post("/admin/dlq/replay", &[("mode", "all")]).await;
    let sign_out = console.post("/admin/sign-out", &[]).await;
    let before = changes(&app).await;
    let csrf = console.csrf().await;
    let with_token = console
        .post(
            &path,
            &[
                ("mode", "add"),
                ("amount", "5"),
                ("reason", "csrf test"),
                ("csrf", &csrf),
            ],
        )
        .await;

    for refused in [&without, &wrong, &others_token, &replay, &sign_out] {
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
        assert!(refused.body.contains("bad_csrf_token"), "{}", refused.body);
    }
    assert_eq!(before, (0, 0));
    assert_eq!(app.scalar("SELECT count(*) FROM admin_sessions").await, 2);
    assert_eq!(with_token.status, StatusCode::SEE_OTHER);
    assert_eq!(
        with_token.location(),
        Some(format!("/admin/users/{USER}?done=adjusted").as_str())
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM admin_actions WHERE actor = 'ops-dan' AND action_type = 'credits_adjusted'")
            .await,
        1
    );
}

/// A form sent from another site is refused (403) even with the right CSRF
/// token, and so is a sign-in from another site.
#[tokio::test(flavor = "multi_thread")]
async fn a_cross_origin_post_is_refused() {
    let (app, token) = app_with_user("ops-erin").await;
    let console = Console::signed_in(&app, &token).await;
    let csrf = console.csrf().await;
    let fields = [
        ("mode", "set"),
        ("amount", "100"),
        ("reason", "from elsewhere"),
        ("csrf", csrf.as_str()),
    ];
    let path = format!("/admin/users/{USER}/credits");

    let evil = console
        .post_from("https://evil.example", &path, &fields, &[])
        .await;
    let opaque = console.post_from("null", &path, &fields, &[]).await;
    let sign_in = app
        .console()
        .post_from(
            "https://evil.example",
            "/admin/sign-in",
            &[("token", &token)],
            &[],
        )
        .await;

    for refused in [&evil, &opaque, &sign_in] {
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
        assert!(refused.body.contains("cross_origin"), "{}", refused.body);
    }
    assert_eq!(sign_in.set_cookie(), None);
    assert_eq!(changes(&app).await, (0, 0));
    assert_eq!(app.scalar("SELECT count(*) FROM admin_sessions").await, 1);
}

/// Signing out deletes the session and clears the cookie; the old cookie
/// opens nothing afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn signing_out_ends_the_session() {
    let (app, token) = app_with_user("ops-fay").await;
    let console = Console::signed_in(&app, &token).await;
    let csrf = console.csrf().await;

    let signed_out = console.post("/admin/sign-out", &[("csrf", &csrf)]).await;
    let after = console.get("/admin/events").await;
    let post_after = console
        .post(
            &format!("/admin/users/{USER}/credits"),
            &[
                ("mode", "add"),
                ("amount", "1"),
                ("reason", "r"),
                ("csrf", &csrf),
            ],
        )
        .await;

    assert_sign_in_page(&signed_out);
    let cleared = signed_out.set_cookie().unwrap();
    assert!(cleared.starts_with("clerk_admin_session=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_sign_in_page(&after);
    assert_eq!(post_after.status, StatusCode::FORBIDDEN);
    assert_eq!(app.scalar("SELECT count(*) FROM admin_sessions").await, 0);
    assert_eq!(changes(&app).await, (0, 0));
}

/// Revoking a token ends its sessions at once: pages go to the sign-in,
/// forms are refused.
#[tokio::test(flavor = "multi_thread")]
async fn revoking_the_token_ends_its_sessions() {
    let (app, token) = app_with_user("ops-gus").await;
    let console = Console::signed_in(&app, &token).await;
    let csrf = console.csrf().await;

    admin::tokens::revoke(&app.db.pool, "ops-gus")
        .await
        .unwrap();
    let page = console.get(&format!("/admin/users/{USER}")).await;
    let form = console
        .post(
            &format!("/admin/users/{USER}/credits"),
            &[
                ("mode", "add"),
                ("amount", "1"),
                ("reason", "r"),
                ("csrf", &csrf),
            ],
        )
        .await;

    assert_sign_in_page(&page);
    assert_eq!(form.status, StatusCode::FORBIDDEN);
    assert!(form.body.contains("no_session"), "{}", form.body);
    assert_eq!(changes(&app).await, (0, 0));
}

/// What a client sends wrong is an HTML page with a 4xx status, never a 500
/// or JSON; untrusted text (a payload, a reason) is escaped.
#[tokio::test(flavor = "multi_thread")]
async fn console_errors_are_html_pages_with_the_right_status_and_untrusted_text_is_escaped() {
    let (app, token) = app_with_user("ops-hal").await;
    let id = new_id();
    let body = user_event("user.updated", USER, "<script>alert(1)</script>@x.org", 7);
    store(&app.db, &id, &body).await;
    let console = Console::signed_in(&app, &token).await;
    let csrf = console.csrf().await;
    let path = format!("/admin/users/{USER}/credits");
    let adjust = |amount: &'static str, reason: &'static str| {
        let fields = [
            ("mode", "add"),
            ("amount", amount),
            ("reason", reason),
            ("csrf", csrf.as_str()),
        ];
        let (console, path) = (&console, &path);
        async move { console.post(path, &fields).await }
    };

    let answers = [
        (console.get("/admin/events/nul%00byte").await, 404),
        (console.get("/admin/users/nul%00byte").await, 404),
        (console.get("/admin/users/user_nobody").await, 404),
        (console.get("/admin/events/msg_nothing").await, 404),
        (console.get("/admin/events?status=lost").await, 400),
        (console.get("/admin/events?since=yesterday").await, 400),
        (console.get("/admin/audit?limit=0").await, 400),
        (console.get("/admin/no-such-page").await, 404),
        (console.get("/admin/jobs/not-a-job").await, 404),
        (adjust("five", "r").await, 400),
        (adjust("5", " ").await, 400),
        (adjust("-5", "take more than there is").await, 422),
    ];
    let event = console.get(&format!("/admin/events/{id}")).await;
    let unknown_job = console.get("/admin/users/sync?job=not-a-job").await;
    let reason = "<b>bold</b> & \"quoted\"";
    let escaped = adjust("3", reason).await;
    let user = console.get(&format!("/admin/users/{USER}")).await;

    for (page, status) in &answers {
        assert_eq!(page.status.as_u16(), *status, "{}", page.body);
        let content_type = page.headers["content-type"].to_str().unwrap();
        assert!(content_type.starts_with("text/html"), "{content_type}");
    }
    assert_eq!(unknown_job.status, StatusCode::OK);
    assert!(unknown_job.body.contains("does not know that job"));
    assert_eq!(event.status, StatusCode::OK);
    assert_eq!(escaped.status, StatusCode::SEE_OTHER);
    assert!(!event.body.contains("<script>alert"), "{}", event.body);
    assert!(event
        .body
        .contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
    assert!(!user.body.contains("<b>bold</b>"));
    assert!(
        user.body.contains("&#60;b&#62;bold&#60;/b&#62;"),
        "{}",
        user.body
    );
    assert!(event.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
}

/// Every change made in the console is in `admin_actions` with the token's
/// name: a credit change, the replay of a stored event, a DLQ replay (a dry
/// run changes nothing).
#[tokio::test(flavor = "multi_thread")]
async fn every_console_change_is_audited_with_the_token_name() {
    let (app, token) = app_with_user("ops-ivy").await;
    let stored = new_id();
    store(
        &app.db,
        &stored,
        &user_event("user.updated", USER, "c@example.org", 8),
    )
    .await;
    let dead = new_id();
    let body = user_event("user.created", USER, "c@example.org", 1);
    store(&app.db, &dead, &body).await;
    mark_dead(&app.db, &dead, 5, "injected failure").await;
    dead_letter(&app.broker, &dead, &body, 5, "injected failure", None).await;
    let console = Console::signed_in(&app, &token).await;
    let csrf = console.csrf().await;

    let adjusted = console
        .post(
            &format!("/admin/users/{USER}/credits"),
            &[
                ("mode", "set"),
                ("amount", "40"),
                ("reason", "welcome"),
                ("csrf", &csrf),
            ],
        )
        .await;
    let replayed = console
        .post(
            &format!("/admin/events/{stored}/replay"),
            &[("csrf", &csrf)],
        )
        .await;
    let dry_run = console
        .post(
            "/admin/dlq/replay",
            &[("mode", "all"), ("dry_run", "1"), ("csrf", &csrf)],
        )
        .await;
    let dlq_before = console.get("/admin/dlq").await;
    let dlq_replayed = console
        .post(
            "/admin/dlq/replay",
            &[("mode", "selected"), ("ids", &dead), ("csrf", &csrf)],
        )
        .await;
    let audit = console.get("/admin/audit?actor=ops-ivy").await;

    assert_eq!(adjusted.status, StatusCode::SEE_OTHER);
    assert_eq!(replayed.status, StatusCode::SEE_OTHER);
    assert_eq!(
        replayed.location(),
        Some(format!("/admin/events/{stored}?done=replayed").as_str())
    );
    assert!(
        dry_run.body.contains("Dry run: 1 dead letter(s)"),
        "{}",
        dry_run.body
    );
    assert!(dlq_before.body.contains(&dead));
    assert!(
        dlq_replayed.body.contains("Replayed 1 dead letter(s)"),
        "{}",
        dlq_replayed.body
    );
    let actions: Vec<(String, String)> =
        sqlx::query_as("SELECT action_type, actor FROM admin_actions ORDER BY id")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    let by_ivy: Vec<&str> = actions
        .iter()
        .filter(|(_, actor)| actor == "ops-ivy")
        .map(|(action, _)| action.as_str())
        .collect();
    assert_eq!(
        by_ivy,
        ["credits_adjusted", "replay_from_store", "dlq_replay"],
        "{actions:?}"
    );
    for action in ["credits_adjusted", "replay_from_store", "dlq_replay"] {
        assert!(audit.body.contains(action), "{}", audit.body);
    }
}
