//! The operators' console in headless Chromium, driven through chromedriver
//! (Debian's `chromium` and `chromium-driver`; `scripts/browser-deps` installs
//! them): sign in, find a user's events, adjust credits with a reason, replay
//! a dead letter, and see both changes in the audit log under the token's
//! name. With `CONSOLE_SCREENSHOTS=DIR` (relative to the repository root) it
//! saves screenshots of the main pages there (`docs/screenshots` in the
//! README).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use e2e::{
    admin::TestAdmin,
    commands::{dead_letter, dlq_depth, mark_dead},
    deliveries::{new_id, user_event},
    fake_clerk::FakeClerk,
    wait_for,
    worker::store,
};
use fantoccini::{elements::Element, Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);
const USER: &str = "user_ada";
const ACTOR: &str = "ops-alice";

/// A chromedriver on a free loopback port, killed on drop.
struct Chromedriver {
    child: Child,
    url: String,
}

/// `name` on the `PATH`, or the path in the environment variable `env`.
fn program(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path)).filter(|path| path.is_file());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

impl Chromedriver {
    async fn start() -> Self {
        let driver = program("CHROMEDRIVER", "chromedriver").unwrap_or_else(|| {
            panic!(
                "chromedriver is not installed: run scripts/browser-deps (Debian's chromium and \
                 chromium-driver), or set CHROMEDRIVER to its path"
            )
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let url = format!("http://127.0.0.1:{port}");
        let driver = Self { child, url };
        let status = format!("{}/status", driver.url);
        wait_for("chromedriver to be ready", DEADLINE, || async {
            let answer = reqwest::get(&status)
                .await
                .ok()?
                .json::<Value>()
                .await
                .ok()?;
            (answer["value"]["ready"] == true).then_some(())
        })
        .await;
        driver
    }

    /// A headless Chromium session.
    async fn browser(&self) -> Client {
        let mut options = json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,900",
                "--hide-scrollbars",
            ]
        });
        if let Some(chromium) = program("CHROME_BIN", "chromium") {
            options["binary"] = json!(chromium);
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".to_owned(), options);
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a Chromium session (is Debian's chromium installed? scripts/browser-deps)")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where screenshots go, when asked for.
fn screenshot_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("CONSOLE_SCREENSHOTS")?);
    let dir = if dir.is_absolute() {
        dir
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir)
    };
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    Some(dir)
}

async fn screenshot(browser: &Client, name: &str) {
    if let Some(dir) = screenshot_dir() {
        let png = browser.screenshot().await.expect("screenshot");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }
}

/// Waits for an element matching `css`.
async fn element(browser: &Client, css: &str) -> Element {
    browser
        .wait()
        .at_most(DEADLINE)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
}

/// Waits until the text of `css` contains `text`.
async fn text_of(browser: &Client, css: &str, text: &str) -> String {
    wait_for(&format!("{css} to show {text:?}"), DEADLINE, || async {
        let found = browser
            .find(Locator::Css(css))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        found.contains(text).then_some(found)
    })
    .await
}

async fn fill(browser: &Client, css: &str, value: &str) {
    let field = element(browser, css).await;
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

async fn click(browser: &Client, css: &str) {
    element(browser, css).await.click().await.unwrap();
}

/// The scenario of the issue, through a real browser.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_finds_a_users_events_adjusts_credits_and_replays_a_dead_letter_and_the_audit_log_shows_both(
) {
    let driver = Chromedriver::start().await;
    let clerk = FakeClerk::start().await;
    clerk.set_users(vec![json!({
        "id": USER, "object": "user",
        "email_addresses": [{"id": "idn_1", "email_address": "ada@example.org"}],
        "primary_email_address_id": "idn_1",
        "first_name": "Ada", "last_name": "Lovelace", "updated_at": 5,
        "public_metadata": {}
    })]);
    let app = TestAdmin::spawn(Some(&clerk)).await;
    let token = app.token(ACTOR).await;
    app.exec(&format!(
        "INSERT INTO users (id, email, first_name, last_name) \
         VALUES ('{USER}', 'ada@example.org', 'Ada', 'Lovelace')"
    ))
    .await;
    let mut events = Vec::new();
    for (event_type, user, at) in [
        ("user.created", USER, 1),
        ("user.updated", USER, 2),
        ("user.created", "user_bob", 3),
    ] {
        let id = new_id();
        store(
            &app.db,
            &id,
            &user_event(event_type, user, "x@example.org", at),
        )
        .await;
        app.exec(&format!(
            "UPDATE webhook_events SET subject = '{user}', status = 'processed', \
             processed_at = now(), attempts = 1 WHERE webhook_id = '{id}'"
        ))
        .await;
        events.push(id);
    }
    let dead = new_id();
    let body = user_event("user.updated", USER, "ada@example.org", 9);
    store(&app.db, &dead, &body).await;
    app.exec(&format!(
        "UPDATE webhook_events SET subject = '{USER}' WHERE webhook_id = '{dead}'"
    ))
    .await;
    mark_dead(&app.db, &dead, 5, "Clerk API answered 503").await;
    dead_letter(&app.broker, &dead, &body, 5, "Clerk API answered 503", None).await;
    let browser = driver.browser().await;

    // Sign in: any page without a session leads to the sign-in form.
    browser
        .goto(&format!("{}/admin/events", app.base))
        .await
        .unwrap();
    fill(&browser, "#token", &token).await;
    click(&browser, "#sign-in").await;
    text_of(&browser, "#actor", ACTOR).await;

    // The user's events, and only theirs.
    fill(&browser, "#filter-user", USER).await;
    click(&browser, "#search").await;
    let listed = text_of(&browser, "#events", &events[0]).await;
    assert!(
        listed.contains(&events[1]) && listed.contains(&dead),
        "{listed}"
    );
    assert!(!listed.contains(&events[2]), "{listed}");
    screenshot(&browser, "events").await;
    click(&browser, &format!("a[href='/admin/events/{}']", events[1])).await;
    text_of(&browser, "#payload", "ada").await;
    screenshot(&browser, "event").await;

    // The user, and a credit adjustment with a reason.
    browser
        .goto(&format!("{}/admin/users", app.base))
        .await
        .unwrap();
    fill(&browser, "#user-id", USER).await;
    click(&browser, "#find-user").await;
    text_of(&browser, "h1", USER).await;
    fill(&browser, "#amount", "25").await;
    fill(&browser, "#reason", "goodwill for ticket 4711").await;
    click(&browser, "#adjust").await;
    text_of(&browser, "#notice", "Credits adjusted").await;
    text_of(&browser, "#balance", "25").await;
    text_of(&browser, "#ledger", "admin_adjustment").await;
    screenshot(&browser, "user").await;

    // The dead letter, replayed.
    browser
        .goto(&format!("{}/admin/dlq", app.base))
        .await
        .unwrap();
    text_of(&browser, "#dead-letters", &dead).await;
    screenshot(&browser, "dlq").await;
    click(&browser, &format!("input[name=ids][value='{dead}']")).await;
    click(&browser, "#replay-selected").await;
    text_of(&browser, "#notice", "Replayed 1 dead letter").await;

    // The audit log shows both, under the token's name.
    browser
        .goto(&format!("{}/admin/audit", app.base))
        .await
        .unwrap();
    let audit = text_of(&browser, "#audit-log", "dlq_replay").await;
    assert!(audit.contains("credits_adjusted"), "{audit}");
    assert!(audit.contains("goodwill for ticket 4711"), "{audit}");
    assert!(audit.matches(ACTOR).count() >= 2, "{audit}");
    screenshot(&browser, "audit").await;

    // The sync, started from its page; the page follows the job to its end.
    browser
        .goto(&format!("{}/admin/users/sync", app.base))
        .await
        .unwrap();
    click(&browser, "#start-sync").await;
    text_of(&browser, "#job-state", "succeeded").await;
    text_of(&browser, "#job-result", "processed").await;
    screenshot(&browser, "sync").await;

    // Sign out: the console is closed again.
    click(&browser, "header .sign-out button").await;
    element(&browser, "#token").await;
    browser.close().await.unwrap();

    let rows: Vec<(String, String, Option<String>, Value)> = sqlx::query_as(
        "SELECT action_type, actor, user_id, details FROM admin_actions \
         WHERE action_type IN ('credits_adjusted', 'dlq_replay') ORDER BY id",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].0, "credits_adjusted");
    assert_eq!(rows[0].1, ACTOR);
    assert_eq!(rows[0].2.as_deref(), Some(USER));
    assert!(rows[0].3.to_string().contains("goodwill for ticket 4711"));
    assert_eq!(rows[1].0, "dlq_replay");
    assert_eq!(rows[1].1, ACTOR);
    assert!(rows[1].3.to_string().contains(&dead), "{}", rows[1].3);
    assert_eq!(
        app.scalar(&format!(
            "SELECT plan_credits::bigint + pack_credits FROM credit_accounts WHERE owner_id = '{USER}'"
        ))
        .await,
        25
    );
    assert_eq!(dlq_depth(&app.broker).await, 0);
    let others = app
        .scalar(&format!(
            "SELECT count(*) FROM admin_actions WHERE actor = '{ACTOR}' \
             AND action_type NOT IN ('credits_adjusted', 'dlq_replay')"
        ))
        .await;
    assert!(others >= 1, "the sync's rows carry the token's name too");
    assert_eq!(app.scalar("SELECT count(*) FROM admin_sessions").await, 0);
}
