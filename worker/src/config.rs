//! The worker configuration, read from the environment (`SPEC.md` section 3).

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, Subcommand};
use shared::{
    config::{AmqpConfig, DatabaseConfig, LogConfig},
    secret::Secret,
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

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Clone, Debug)]
pub enum Command {
    /// Consume events and apply handlers (the default).
    Run,
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
}

impl Config {
    pub fn settings(&self) -> Settings {
        Settings {
            database_url: self.database.database_url.clone(),
            amqp_url: self.amqp.amqp_url.clone(),
            amqp_prefix: self.amqp.amqp_prefix.clone(),
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
            database_patience: self.database.patience(),
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(25),
        }
    }
}
