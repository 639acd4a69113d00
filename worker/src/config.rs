//! The worker configuration, read from the environment (`SPEC.md` section 3).

use clap::{Parser, Subcommand};
use shared::config::{AmqpConfig, DatabaseConfig, LogConfig};

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

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Clone, Debug)]
pub enum Command {
    /// Consume events and apply handlers (the default).
    Run,
}
