//! Test harness for the end-to-end tests: a fresh database and a fresh broker
//! prefix per test (both removed on drop, also when the test fails), a TCP
//! proxy that can cut a dependency off, a real ingress on port 0, signed
//! Clerk-shaped deliveries, restricted database roles and broker users, a
//! certificate authority with a TLS endpoint, a RabbitMQ cluster, and the admin
//! console through plain HTTP (its browser test drives headless Chromium).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

pub mod admin;
pub mod broker;
pub mod cluster;
pub mod commands;
pub mod console;
pub mod db;
pub mod deliveries;
pub mod fake_clerk;
pub mod ingress;
pub mod plans;
pub mod process;
pub mod proxy;
pub mod roles;
pub mod tls;
pub mod worker;

use std::{future::Future, path::PathBuf, time::Duration};

/// PostgreSQL server the tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// RabbitMQ the tests use, each with its own prefix.
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| shared::config::DEFAULT_AMQP_URL.to_owned())
}

/// Polls `condition` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A binary of this workspace, built by `cargo build --workspace --bins`, or
/// from `E2E_BIN_DIR` when set (e.g. `target/release`, to run the end-to-end
/// tests against a release build).
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("E2E_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        assert!(path.exists(), "{} is missing", path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile> directory");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}
