//! The ingress configuration, read from the environment (`SPEC.md` section 3).

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use shared::{
    config::{AmqpConfig, DatabaseConfig, LogConfig},
    secret::Secret,
    svix::{SecretError, WebhookSecrets},
};

/// Command line and environment of the `ingress` binary.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "ingress",
    version,
    about = "Receives Clerk webhooks: verify, store, publish"
)]
pub struct Config {
    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(flatten)]
    pub amqp: AmqpConfig,

    #[command(flatten)]
    pub log: LogConfig,

    /// One or more whsec_… secrets separated by spaces or commas; a request is
    /// valid if it verifies against any of them.
    #[arg(
        long = "clerk-webhook-secret",
        env = "CLERK_WEBHOOK_SECRET",
        hide_env_values = true,
        value_parser = shared::config::parse_secret
    )]
    pub webhook_secret: Option<Secret<String>>,

    /// Address the webhook listener binds.
    #[arg(long = "addr", env = "INGRESS_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,

    /// Address of the operations listener: `/readyz`, `/metrics` and
    /// `/healthz`. Keep it off the internet.
    #[arg(
        long = "ops-addr",
        env = "INGRESS_OPS_ADDR",
        default_value = "127.0.0.1:9091"
    )]
    pub ops_addr: SocketAddr,

    /// Bodies larger than this many bytes are refused with 413.
    #[arg(long = "max-body-bytes", env = "INGRESS_MAX_BODY_BYTES", default_value_t = 1_048_576,
          value_parser = clap::value_parser!(u64).range(1..=16 * 1024 * 1024))]
    pub max_body_bytes: u64,

    /// Connections open at once on the public listener; more wait in the
    /// kernel's backlog until one closes.
    #[arg(long = "max-connections", env = "INGRESS_MAX_CONNECTIONS",
          default_value_t = Settings::DEFAULT_LIMITS.max_connections as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Seconds a connection has to send a complete request head, from when it
    /// is accepted or has received its previous response.
    #[arg(long = "header-read-timeout-secs", env = "INGRESS_HEADER_READ_TIMEOUT_SECS",
          default_value_t = Settings::DEFAULT_LIMITS.header_read_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub header_read_timeout_secs: u64,

    /// Seconds a keep-alive connection may stay open after a response
    /// without starting a new request.
    #[arg(long = "idle-timeout-secs", env = "INGRESS_IDLE_TIMEOUT_SECS",
          default_value_t = Settings::DEFAULT_LIMITS.idle_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_timeout_secs: u64,

    /// Request bodies read and verified at once (before their signature is
    /// known to be good); at most an eighth of them may be over 64 KiB.
    /// Requests beyond that get 503 with Retry-After.
    #[arg(long = "max-unverified-bodies", env = "INGRESS_MAX_UNVERIFIED_BODIES",
          default_value_t = Settings::DEFAULT_MAX_UNVERIFIED_BODIES as u64,
          value_parser = clap::value_parser!(u64).range(2..=100_000))]
    pub max_unverified_bodies: u64,
}

/// Why the configuration cannot be used. Never carries a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("CLERK_WEBHOOK_SECRET is not set; the ingress refuses to start without it")]
    MissingSecret,
    #[error("CLERK_WEBHOOK_SECRET is invalid")]
    InvalidSecret(#[from] SecretError),
}

/// Everything the running service needs, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub database_url: Secret<String>,
    pub amqp_url: Secret<String>,
    pub amqp_prefix: String,
    pub secrets: WebhookSecrets,
    pub max_body_bytes: usize,
    /// Bodies read and verified at once.
    pub max_unverified_bodies: usize,
    /// Limits of the public listener's connections.
    pub limits: crate::server::Limits,
    /// How often the relay looks for unpublished rows it was not told about
    /// (rows of a replica that stopped, or of a failed publish).
    pub relay_poll_interval: Duration,
    /// How long start-up waits for PostgreSQL before giving up.
    pub database_patience: Duration,
    /// How often the unpublished-event gauges of `/metrics` are refreshed.
    pub gauge_interval: Duration,
}

impl Config {
    /// Validates the configuration.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let raw = self
            .webhook_secret
            .as_ref()
            .map(|s| s.expose().as_str())
            .unwrap_or_default();
        if raw.trim().is_empty() {
            return Err(ConfigError::MissingSecret);
        }
        let secrets = WebhookSecrets::parse(raw)?;
        Ok(Settings {
            database_url: self.database.database_url.clone(),
            amqp_url: self.amqp.amqp_url.clone(),
            amqp_prefix: self.amqp.amqp_prefix.clone(),
            secrets,
            max_body_bytes: usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX),
            max_unverified_bodies: usize::try_from(self.max_unverified_bodies)
                .unwrap_or(usize::MAX),
            limits: crate::server::Limits {
                max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
                header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
                idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            },
            relay_poll_interval: Settings::DEFAULT_RELAY_POLL_INTERVAL,
            database_patience: self.database.patience(),
            gauge_interval: Settings::DEFAULT_GAUGE_INTERVAL,
        })
    }
}

impl Settings {
    /// How often the unpublished-event gauges are refreshed.
    pub const DEFAULT_GAUGE_INTERVAL: Duration = Duration::from_secs(5);
    /// How often the relay polls when nobody woke it.
    pub const DEFAULT_RELAY_POLL_INTERVAL: Duration = Duration::from_secs(1);
    /// Default of `INGRESS_MAX_UNVERIFIED_BODIES`.
    pub const DEFAULT_MAX_UNVERIFIED_BODIES: usize = 256;
    /// Defaults of the connection limits.
    pub const DEFAULT_LIMITS: crate::server::Limits = crate::server::Limits {
        max_connections: 1024,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(5),
    };
}
