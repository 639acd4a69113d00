//! An admin service on port 0 over a test's own database and broker prefix,
//! and a client that speaks to it as the application's panel does.

use std::sync::Arc;

use admin::{broker::Broker, jobs::Jobs, Admin, AppState};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use shared::{config::AmqpConfig, secret::Secret};
use tokio_util::sync::CancellationToken;
use worker::{config::ClerkSettings, credits::Catalog};

use crate::{broker::TestBroker, db::TestDb, fake_clerk::FakeClerk};

pub struct TestAdmin {
    pub db: TestDb,
    pub broker: TestBroker,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
}

impl TestAdmin {
    /// A fresh database and prefix; the Backend API at `clerk` when given.
    pub async fn spawn(clerk: Option<&FakeClerk>) -> Self {
        let db = TestDb::new().await;
        let broker = TestBroker::new().await;
        Self::spawn_on(db, broker, clerk).await
    }

    /// The admin service over an existing database and prefix.
    pub async fn spawn_on(db: TestDb, broker: TestBroker, clerk: Option<&FakeClerk>) -> Self {
        let amqp_url = broker.url.clone();
        Self::spawn_with(db, broker, clerk, &amqp_url).await
    }

    /// The admin service with its own database and prefix, reaching the
    /// broker at `amqp_url` (e.g. a port where nothing listens).
    pub async fn spawn_with_broker_url(amqp_url: &str) -> Self {
        let db = TestDb::new().await;
        let broker = TestBroker::new().await;
        Self::spawn_with(db, broker, None, amqp_url).await
    }

    async fn spawn_with(
        db: TestDb,
        broker: TestBroker,
        clerk: Option<&FakeClerk>,
        amqp_url: &str,
    ) -> Self {
        let state = AppState {
            pool: db.pool.clone(),
            clerk: clerk.map(|clerk| ClerkSettings {
                api_url: clerk.url.clone(),
                secret_key: Secret::new(crate::fake_clerk::SECRET_KEY.to_owned()),
            }),
            catalog: Arc::new(Catalog::default()),
            jobs: Jobs::default(),
            broker: Broker::new(AmqpConfig {
                amqp_url: Secret::new(amqp_url.to_owned()),
                amqp_prefix: broker.prefix.clone(),
            }),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = Admin::build(listener, state);
        let base = format!("http://{}", admin.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(admin.run(shutdown.clone()));
        Self {
            db,
            broker,
            base,
            http: reqwest::Client::new(),
            shutdown,
        }
    }

    /// A new token named `name`.
    pub async fn token(&self, name: &str) -> String {
        admin::tokens::create(&self.db.pool, name).await.unwrap()
    }

    /// Sends a request; the answer's status and its body as JSON (or as a
    /// JSON string when it is not JSON).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.send(Method::GET, path, Some(token), None).await
    }

    pub async fn put(&self, path: &str, token: &str, body: &str) -> (StatusCode, Value) {
        self.send(Method::PUT, path, Some(token), Some(body)).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &str) -> (StatusCode, Value) {
        self.send(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::query(sql).execute(&self.db.pool).await.unwrap();
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

impl Drop for TestAdmin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
