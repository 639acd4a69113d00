//! A real ingress on port 0, against the test's database and broker prefix.

use std::{net::SocketAddr, time::Duration};

use ingress::{config::Settings, Ingress};
use reqwest::StatusCode;
use serde_json::Value;
use shared::{secret::Secret, svix::WebhookSecrets};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::deliveries::{new_secret, Delivery};

pub struct TestIngress {
    pub addr: SocketAddr,
    /// The ops listener: `/readyz` and `/metrics`.
    pub ops_addr: SocketAddr,
    pub secret: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), std::io::Error>>>,
}

/// Where the ingress connects.
pub struct Endpoints {
    pub database_url: String,
    pub amqp_url: String,
    pub prefix: String,
}

impl TestIngress {
    pub async fn spawn(endpoints: Endpoints) -> Self {
        Self::spawn_with(endpoints, |_| {}).await
    }

    /// Spawns with settings adjusted by `adjust`.
    pub async fn spawn_with(endpoints: Endpoints, adjust: impl FnOnce(&mut Settings)) -> Self {
        let secret = new_secret();
        let mut settings = Settings {
            database_url: Secret::new(endpoints.database_url),
            amqp_url: Secret::new(endpoints.amqp_url),
            amqp_prefix: endpoints.prefix,
            secrets: WebhookSecrets::parse(&secret).expect("secret"),
            max_body_bytes: 1_048_576,
            max_unverified_bodies: Settings::DEFAULT_MAX_UNVERIFIED_BODIES,
            limits: Settings::DEFAULT_LIMITS,
            relay_poll_interval: Duration::from_millis(200),
            database_patience: Duration::from_secs(10),
            gauge_interval: Duration::from_millis(200),
        };
        adjust(&mut settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let ops_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind ops");
        let ingress = Ingress::build(settings, listener, ops_listener)
            .await
            .expect("ingress starts");
        let addr = ingress.local_addr().expect("addr");
        let ops_addr = ingress.ops_addr().expect("ops addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ingress.run(shutdown.clone()));
        Self {
            addr,
            ops_addr,
            secret,
            http: reqwest::Client::new(),
            shutdown,
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Posts a delivery with the `svix-*` headers.
    pub async fn post(&self, delivery: &Delivery) -> (StatusCode, Value) {
        self.post_with(delivery, "svix").await
    }

    /// Posts a delivery with `svix-*` or `webhook-*` header names.
    pub async fn post_with(&self, delivery: &Delivery, header_prefix: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url("/webhooks/clerk"))
            .header(format!("{header_prefix}-id"), &delivery.id)
            .header(format!("{header_prefix}-timestamp"), &delivery.timestamp)
            .header(format!("{header_prefix}-signature"), &delivery.signature)
            .header("content-type", "application/json")
            .body(delivery.body.clone())
            .send()
            .await
            .expect("request");
        json_response(response).await
    }

    /// GET on the public listener.
    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let response = self.http.get(self.url(path)).send().await.expect("request");
        let status = response.status();
        (status, response.text().await.expect("body"))
    }

    /// GET on the ops listener.
    pub async fn ops_get(&self, path: &str) -> (StatusCode, String) {
        let url = format!("http://{}{path}", self.ops_addr);
        let response = self.http.get(url).send().await.expect("request");
        let status = response.status();
        (status, response.text().await.expect("body"))
    }

    /// Stops as on SIGTERM and waits for the drain.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("ingress run");
        }
    }
}

impl Drop for TestIngress {
    /// Stops the ingress before the test's broker and database are removed, so
    /// its relay cannot declare the topology again after the cleanup.
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ =
                tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(task));
        }
    }
}

pub async fn json_response(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}
