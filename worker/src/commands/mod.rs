//! The worker's command line (`SPEC.md` section 2), one file per command
//! family, each owning its arguments (`Args`) and its `run`. A `run` parses
//! nothing and decides nothing the operation does not: it connects, calls the
//! operation of the library (`crate::dlq`, `crate::replay`, `crate::prune`,
//! `crate::credits::adjust`, `crate::sync_users`) — the very functions the
//! admin service calls — and prints the result.

pub mod credits;
pub mod dlq;
pub mod migrate;
pub mod prune;
pub mod replay;
pub mod run;
pub mod sync;

use std::io::IsTerminal as _;

use clap::{Args, Subcommand};
use lapin::Connection;
use shared::amqp::Names;
use sqlx::PgPool;

use crate::config::{Config, Settings};

/// Database connections an operator's command uses.
const COMMAND_POOL_SIZE: u32 = 2;

/// The subcommands of `worker` (`migrate` is added by [`migrate::command`]).
#[derive(Subcommand, Clone, Debug)]
pub enum Command {
    /// Consume events and apply handlers (the default).
    Run,
    /// Inspect the dead-letter queue and move dead letters back for processing.
    Dlq {
        /// `list` or `replay`.
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Re-publish stored events; handlers are idempotent, so processed events
    /// are skipped by the worker as duplicates.
    Replay(replay::ReplayArgs),
    /// Delete processed and ignored events older than a given age; dead,
    /// failed and unprocessed events are never deleted.
    Prune(prune::PruneArgs),
    /// Manual credit changes.
    Credits {
        /// `adjust`.
        #[command(subcommand)]
        command: credits::CreditsCommand,
    },
    /// Reconcile with Clerk's Backend API.
    Sync {
        /// `users`.
        #[command(subcommand)]
        command: sync::SyncCommand,
    },
}

impl Command {
    /// Runs the command. `settings` are those `worker run` validated before
    /// its logs started, if any.
    pub async fn run(&self, config: &Config, settings: Option<Settings>) -> anyhow::Result<()> {
        match self {
            Command::Run => run::run(config, settings).await,
            Command::Dlq { command } => command.run(config).await,
            Command::Replay(args) => args.run(config).await,
            Command::Prune(args) => args.run(config).await,
            Command::Credits { command } => command.run(config).await,
            Command::Sync { command } => command.run(config).await,
        }
    }
}

/// Who runs an operator's command, for the audit log (`admin_actions.actor`).
#[derive(Args, Clone, Debug)]
pub struct ActorArg {
    /// Who, for the audit log; defaults to $USER.
    #[arg(
        long,
        value_name = "NAME",
        env = "USER",
        default_value = "operator",
        hide_env_values = true
    )]
    pub actor: String,
}

/// A small pool on the configured database, migrated.
async fn database(config: &Config) -> anyhow::Result<PgPool> {
    Ok(shared::db::connect_and_migrate(
        &config.database.database_url,
        COMMAND_POOL_SIZE,
        config.database.patience(),
    )
    .await?)
}

/// A broker connection and the names under the configured prefix.
async fn broker(config: &Config) -> anyhow::Result<(Connection, Names)> {
    let connection = shared::amqp::connect(&config.amqp.amqp_url, "clerk-worker-command").await?;
    Ok((connection, Names::new(&config.amqp.amqp_prefix)))
}

/// Closes what [`database`] and [`broker`] opened.
async fn close(pool: PgPool, connection: Connection) {
    let _ = connection.close(200, "done".into()).await;
    pool.close().await;
}

/// Running totals on stderr, only for a person watching a terminal.
fn progress(what: &'static str) -> impl FnMut(u64) {
    let terminal = std::io::stderr().is_terminal();
    move |done| {
        if terminal {
            eprintln!("{what} {done}…");
        }
    }
}
