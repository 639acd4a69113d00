//! Settings both binaries read from the environment (`../SPEC.md` section 3).
//!
//! Each binary has one typed configuration struct that flattens these groups;
//! clap reads every field from its environment variable (or the matching long
//! flag). Connection strings may hold passwords, so they are [`Secret`]s and
//! clap is told never to print their values.

use clap::{Args, ValueEnum};

use crate::secret::Secret;

/// Default `DATABASE_URL`.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/clerk_events";
/// Default `AMQP_URL`.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Where the database is.
#[derive(Args, Clone, Debug)]
pub struct DatabaseConfig {
    /// PostgreSQL connection string.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true,
        hide_default_value = true,
        value_parser = parse_secret
    )]
    pub database_url: Secret<String>,

    /// Seconds a service waits at start for PostgreSQL to answer before it
    /// gives up with an error.
    #[arg(
        long = "database-wait-secs",
        env = "DATABASE_WAIT_SECS",
        default_value_t = 15
    )]
    pub database_wait_secs: u64,
}

impl DatabaseConfig {
    /// How long to wait for PostgreSQL at start.
    pub fn patience(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.database_wait_secs)
    }
}

/// Where the broker is and which names to use on it.
#[derive(Args, Clone, Debug)]
pub struct AmqpConfig {
    /// RabbitMQ connection string.
    #[arg(
        long = "amqp-url",
        env = "AMQP_URL",
        default_value = DEFAULT_AMQP_URL,
        hide_env_values = true,
        hide_default_value = true,
        value_parser = parse_secret
    )]
    pub amqp_url: Secret<String>,

    /// Prefix of every exchange and queue name.
    #[arg(long = "amqp-prefix", env = "AMQP_PREFIX", default_value = "clerk", value_parser = parse_prefix)]
    pub amqp_prefix: String,
}

/// How logs are written.
#[derive(Args, Clone, Debug)]
pub struct LogConfig {
    /// `pretty` or `json`; by default pretty on a terminal, JSON otherwise.
    #[arg(long = "log-format", env = "LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// OTLP endpoint for traces; no export when unset.
    #[arg(
        long = "otel-exporter-otlp-endpoint",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT"
    )]
    pub otel_endpoint: Option<String>,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// clap value parser for a secret: wraps it so it cannot be printed.
#[allow(clippy::unnecessary_wraps)] // clap's value_parser signature
pub fn parse_secret(value: &str) -> Result<Secret<String>, String> {
    Ok(Secret::new(value.to_owned()))
}

fn parse_prefix(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 200
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(value.to_owned())
    } else {
        Err("must be 1 to 200 characters of letters, digits, '-', '_' or '.'".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_accepts_plain_names_and_refuses_others() {
        assert!(parse_prefix("clerk").is_ok());
        assert!(parse_prefix("t_1234-abcd.x").is_ok());
        assert!(parse_prefix("").is_err());
        assert!(parse_prefix("a b").is_err());
        assert!(parse_prefix("a/b").is_err());
    }
}
