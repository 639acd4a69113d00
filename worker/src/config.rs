//! The worker configuration, read from the environment (`SPEC.md` section 3).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use shared::{
    backoff::RetryPolicy,
    config::{AmqpConfig, DatabaseConfig, LogConfig},
    secret::Secret,
};

use crate::{
    commands::Command,
    credits::{catalog::CatalogError, Catalog},
};

/// Command line and environment of the `worker` binary.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "worker",
    version,
    about = "Applies stored Clerk events; operators' commands"
)]
pub struct Config {
    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(flatten)]
    pub amqp: AmqpConfig,

    #[command(flatten)]
    pub log: LogConfig,

    /// Address of the health and metrics listener.
    #[arg(
        long = "ops-addr",
        env = "WORKER_OPS_ADDR",
        default_value = "127.0.0.1:9090",
        global = true
    )]
    pub ops_addr: SocketAddr,

    /// Deliveries in flight per worker (the consumer prefetch).
    #[arg(long = "concurrency", env = "WORKER_CONCURRENCY", default_value_t = 16, global = true,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub concurrency: u16,

    /// Attempts before an event is dead-lettered.
    #[arg(long = "max-attempts", env = "WORKER_MAX_ATTEMPTS", default_value_t = 5, global = true,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// Clerk Backend API base URL.
    #[arg(long = "clerk-api-url", env = "CLERK_API_URL", default_value = crate::clerk_api::DEFAULT_API_URL, global = true)]
    pub clerk_api_url: String,

    /// Clerk Backend API secret key (sk_…); without it the metadata sync is off.
    #[arg(
        long = "clerk-secret-key",
        env = "CLERK_SECRET_KEY",
        hide_env_values = true,
        global = true,
        value_parser = shared::config::parse_secret
    )]
    pub clerk_secret_key: Option<Secret<String>>,

    /// Path of the plan catalog (TOML); without it no billing event changes credits.
    #[arg(
        long = "credit-plans",
        env = "CREDIT_PLANS",
        value_name = "PATH",
        global = true
    )]
    pub credit_plans: Option<PathBuf>,

    /// What to do; `run` when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Everything `worker run` needs, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub database_url: Secret<String>,
    pub amqp_url: Secret<String>,
    pub amqp_prefix: String,
    pub concurrency: u16,
    pub max_attempts: u32,
    /// How long start-up waits for PostgreSQL before giving up.
    pub database_patience: Duration,
    /// Shortest wait before retrying a failed event; doubles per attempt.
    pub retry_base_delay: Duration,
    /// Longest wait between two attempts, and between reconnections.
    pub retry_max_delay: Duration,
    /// How long shutdown waits for in-flight deliveries.
    pub drain_timeout: Duration,
    /// How often the gauges kept outside the process are read.
    pub gauge_interval: Duration,
    /// The plan catalog; empty when `CREDIT_PLANS` is not set.
    pub catalog: Catalog,
    /// The Backend API, when `CLERK_SECRET_KEY` is set.
    pub clerk: Option<ClerkSettings>,
}

/// The first retry of a failing event waits up to this long; each further
/// one twice as long as the one before, up to [`RETRY_MAX_DELAY`].
pub const RETRY_BASE_DELAY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts of an event, and between tries to
/// reach the database or the broker again.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(30);

impl Settings {
    /// The retry policy of failing events, of the wait for the database and
    /// of reconnections.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::new(self.retry_base_delay, self.retry_max_delay)
    }

    /// The policy of `worker run`: [`RETRY_BASE_DELAY`] doubling up to
    /// [`RETRY_MAX_DELAY`].
    pub fn default_retry_policy() -> RetryPolicy {
        RetryPolicy::new(RETRY_BASE_DELAY, RETRY_MAX_DELAY)
    }
}

/// Where and how to reach Clerk's Backend API.
#[derive(Clone, Debug)]
pub struct ClerkSettings {
    pub api_url: String,
    pub secret_key: Secret<String>,
}

/// Why the configuration cannot be used. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The plan catalog cannot be used.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// `CLERK_API_URL` does not parse.
    #[error("CLERK_API_URL is not a valid URL")]
    ClerkUrl,
    /// `CLERK_API_URL` would send the secret key in the clear.
    #[error(
        "CLERK_API_URL {url} is refused: the secret key travels only over https:// \
         (plain http:// only to a loopback address: 127.0.0.0/8, ::1 or localhost)"
    )]
    ClerkUrlInsecure {
        /// The URL, without its password or query.
        url: String,
    },
}

/// Checks `CLERK_API_URL`. Every request carries `CLERK_SECRET_KEY`, so the
/// API is reached over `https://` only, except on this machine (a loopback
/// address or `localhost`), where plain `http://` serves a local stand-in.
pub fn check_clerk_api_url(value: &str) -> Result<(), ConfigError> {
    let url = url::Url::parse(value).map_err(|_| ConfigError::ClerkUrl)?;
    let allowed = match url.scheme() {
        "https" => url.has_host(),
        "http" => is_loopback(url.host()),
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(ConfigError::ClerkUrlInsecure {
            url: shared::secret::redact_url(value),
        })
    }
}

fn is_loopback(host: Option<url::Host<&str>>) -> bool {
    match host {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

impl Config {
    /// The Backend API settings, if a secret key is configured. The URL is
    /// checked either way ([`check_clerk_api_url`]).
    pub fn clerk(&self) -> Result<Option<ClerkSettings>, ConfigError> {
        check_clerk_api_url(&self.clerk_api_url)?;
        Ok(self
            .clerk_secret_key
            .as_ref()
            .map(|key| key.expose().trim())
            .filter(|key| !key.is_empty())
            .map(|key| ClerkSettings {
                api_url: self.clerk_api_url.clone(),
                secret_key: Secret::new(key.to_owned()),
            }))
    }

    /// The plan catalog of `CREDIT_PLANS`; empty when it is not set.
    pub fn catalog(&self) -> Result<Catalog, ConfigError> {
        Ok(match &self.credit_plans {
            Some(path) => Catalog::load(path)?,
            None => Catalog::default(),
        })
    }

    /// Validates everything `worker run` needs (the catalog is read here).
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let catalog = self.catalog()?;
        Ok(Settings {
            database_url: self.database.database_url.clone(),
            amqp_url: self.amqp.amqp_url.clone(),
            amqp_prefix: self.amqp.amqp_prefix.clone(),
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
            database_patience: self.database.patience(),
            retry_base_delay: RETRY_BASE_DELAY,
            retry_max_delay: RETRY_MAX_DELAY,
            drain_timeout: Duration::from_secs(25),
            gauge_interval: Duration::from_secs(15),
            catalog,
            clerk: self.clerk()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clerk_api_url_is_https_or_plain_http_on_loopback_only() {
        for accepted in [
            crate::clerk_api::DEFAULT_API_URL,
            "https://clerk.internal.example/v1",
            "http://127.0.0.1:4010/v1",
            "http://127.8.9.10/v1",
            "http://[::1]:4010/v1",
            "http://localhost:4010/v1",
            "http://LocalHost/v1",
        ] {
            assert!(check_clerk_api_url(accepted).is_ok(), "{accepted}");
        }
        for refused in [
            "http://api.clerk.com/v1",
            "http://10.0.0.1/v1",
            "http://128.0.0.1/v1",
            "http://[::ffff:127.0.0.1]/v1",
            "http://localhost.example.com/v1",
            "http://127.0.0.1.example.com/v1",
            "ftp://127.0.0.1/v1",
            "ws://localhost/v1",
            "file:///v1",
        ] {
            let error = check_clerk_api_url(refused).unwrap_err();
            assert!(
                matches!(error, ConfigError::ClerkUrlInsecure { .. }),
                "{refused}: {error}"
            );
        }
        assert!(matches!(
            check_clerk_api_url("api.clerk.com/v1"),
            Err(ConfigError::ClerkUrl)
        ));
    }

    #[test]
    fn a_refused_clerk_api_url_is_named_without_its_password() {
        let error = check_clerk_api_url("http://user:hunter2@api.clerk.com/v1?k=sk_live_x")
            .unwrap_err()
            .to_string();

        assert!(
            error.contains("http://user:***@api.clerk.com/v1"),
            "{error}"
        );
        assert!(
            !error.contains("hunter2") && !error.contains("sk_live"),
            "{error}"
        );
    }
}
