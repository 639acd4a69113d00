//! The admin service (`SPEC.md` section 11): the admin HTTP API over the very
//! operations of the worker's commands (`worker::credits::adjust`,
//! `worker::sync_users`, …), each change audited with the token's name as the
//! actor. `main.rs` parses the command line; [`Admin::build`] and
//! [`Admin::run`] serve; [`tokens`] manages the API tokens; [`console`] is
//! the operators' web console over the same operations, signed in through
//! [`sessions`].
#![warn(missing_docs)]

pub mod broker;
pub mod config;
pub mod console;
pub mod error;
pub mod jobs;
pub mod queries;
pub mod routes;
pub mod sessions;
pub mod tokens;

use std::{net::SocketAddr, sync::Arc};

use axum::{middleware, response::IntoResponse as _, routing::get, Router};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use worker::{config::ClerkSettings, credits::Catalog};

/// What every route shares.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub pool: PgPool,
    /// The Backend API, when `CLERK_SECRET_KEY` is set.
    pub clerk: Option<ClerkSettings>,
    /// The plan catalog (for the sync's plan reconciliation).
    pub catalog: Arc<Catalog>,
    /// The jobs of this process.
    pub jobs: jobs::Jobs,
    /// RabbitMQ, for dead letters and replays.
    pub broker: broker::Broker,
}

/// The router: `/healthz` open, everything under `/api/admin` behind a
/// token, the console's pages (`/`, `/admin/…`) behind a session cookie.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(routes::credits::router())
        .merge(routes::sync::router())
        .merge(routes::jobs::router())
        .merge(routes::users::router())
        .merge(routes::events::router())
        .merge(routes::dlq::router())
        .merge(routes::audit::router())
        .merge(routes::openapi::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            routes::authenticate,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(api)
        .merge(console::router(state.clone()))
        .fallback(|uri: axum::http::Uri| async move {
            if uri.path().starts_with("/admin") {
                return console::not_found(&uri);
            }
            error::AdminError::NotFound {
                code: "no_route",
                detail: "no such route".to_owned(),
            }
            .into_response()
        })
        .with_state(state)
}

/// A bound, connected admin service.
pub struct Admin {
    listener: TcpListener,
    state: AppState,
}

impl Admin {
    /// Takes a bound listener and what the routes need.
    pub fn build(listener: TcpListener, state: AppState) -> Self {
        Self { listener, state }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }
}
