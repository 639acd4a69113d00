//! What `ingress` and `worker` share: typed configuration, Svix signature
//! verification, the Clerk event envelope, the database pool with its embedded
//! migrations, and the RabbitMQ topology with a confirmed publish.
//!
//! Data flows one way: request → verify → store → publish; delivery → lock →
//! handle → mark → ack. This crate holds the pieces both directions need and no
//! business logic.
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod amqp;
pub mod backoff;
pub mod config;
pub mod db;
pub mod error;
pub mod event;
pub mod event_status;
pub mod secret;
pub mod shutdown;
pub mod svix;
pub mod telemetry;
pub mod tls;
