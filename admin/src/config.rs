//! The admin command line and environment (`SPEC.md` sections 2 and 3).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};
use shared::{
    config::{AmqpConfig, DatabaseConfig, LogConfig},
    secret::Secret,
};
use worker::{
    config::{check_clerk_api_url, ClerkSettings, ConfigError},
    credits::Catalog,
};

/// Command line and environment of the `admin` binary.
#[derive(Parser, Clone, Debug)]
#[command(name = "admin", version, about = "The admin API and its tokens")]
pub struct Config {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// The broker (dead letters and replays).
    #[command(flatten)]
    pub amqp: AmqpConfig,

    /// Log output.
    #[command(flatten)]
    pub log: LogConfig,

    /// Address of the admin API.
    #[arg(
        long = "addr",
        env = "ADMIN_ADDR",
        default_value = "127.0.0.1:8081",
        global = true
    )]
    pub addr: SocketAddr,

    /// Clerk Backend API base URL (for the sync).
    #[arg(long = "clerk-api-url", env = "CLERK_API_URL", default_value = worker::clerk_api::DEFAULT_API_URL, global = true)]
    pub clerk_api_url: String,

    /// Clerk Backend API secret key (sk_…); without it the sync is refused.
    #[arg(
        long = "clerk-secret-key",
        env = "CLERK_SECRET_KEY",
        hide_env_values = true,
        global = true,
        value_parser = shared::config::parse_secret
    )]
    pub clerk_secret_key: Option<Secret<String>>,

    /// Path of the plan catalog (TOML), for the sync's plan reconciliation.
    #[arg(
        long = "credit-plans",
        env = "CREDIT_PLANS",
        value_name = "PATH",
        global = true
    )]
    pub credit_plans: Option<PathBuf>,

    /// `tokens …`; serve when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands of `admin`.
#[derive(Subcommand, Clone, Debug)]
pub enum Command {
    /// Manage the API tokens.
    Tokens {
        /// `create`, `revoke` or `list`.
        #[command(subcommand)]
        command: TokensCommand,
    },
}

/// The subcommands of `admin tokens`.
#[derive(Subcommand, Clone, Debug)]
pub enum TokensCommand {
    /// Create a token and print it (shown once; only its hash is stored).
    Create {
        /// Its name: the actor of every change made with it.
        name: String,
    },
    /// Revoke a token.
    Revoke {
        /// Its name.
        name: String,
    },
    /// List the tokens (names and dates, never the tokens).
    List,
}

impl Config {
    /// The Backend API settings, if a secret key is configured (the URL is
    /// checked as the worker checks it).
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
}
