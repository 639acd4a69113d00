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

    /// Bodies larger than this many bytes are refused with 413.
    #[arg(long = "max-body-bytes", env = "INGRESS_MAX_BODY_BYTES", default_value_t = 1_048_576,
          value_parser = clap::value_parser!(u64).range(1..=16 * 1024 * 1024))]
    pub max_body_bytes: u64,
}

/// Why the configuration cannot be used. Never carries a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("CLERK_WEBHOOK_SECRET is not set; the ingress refuses to start without it")]
    MissingSecret,
    #[error("CLERK_WEBHOOK_SECRET is invalid: {0}")]
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
    /// How often the relay looks for unpublished rows it was not told about
    /// (rows of a replica that stopped, or of a failed publish).
    pub relay_poll_interval: Duration,
    /// How long start-up waits for PostgreSQL before giving up.
    pub database_patience: Duration,
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
            relay_poll_interval: Settings::DEFAULT_RELAY_POLL_INTERVAL,
            database_patience: self.database.patience(),
        })
    }
}

impl Settings {
    pub const DEFAULT_RELAY_POLL_INTERVAL: Duration = Duration::from_secs(1);
}
