//! `worker sync users [--dry-run]`.

use std::io::IsTerminal as _;

use clap::{Args, Subcommand};

use super::{database, ActorArg};
use crate::{clerk_api::ClerkApi, config::Config, sync_users};

/// The subcommands of `worker sync`.
#[derive(Subcommand, Clone, Debug)]
pub enum SyncCommand {
    /// Reconcile with Clerk: create missing users, refresh changed ones,
    /// release users Clerk deleted, bring plan credits in line with Clerk
    /// Billing, and push balances to Clerk's metadata.
    Users(SyncUsersArgs),
}

/// Arguments of `worker sync users`.
#[derive(Args, Clone, Debug)]
pub struct SyncUsersArgs {
    /// Report and list what would change; write nothing locally or to Clerk.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub audit: ActorArg,
}

impl SyncCommand {
    /// Runs the subcommand.
    pub async fn run(&self, config: &Config) -> anyhow::Result<()> {
        match self {
            SyncCommand::Users(args) => args.run(config).await,
        }
    }
}

/// Progress of `sync users` on a terminal; in a dry run, each change it
/// would make on standard output.
struct SyncProgress {
    terminal: bool,
    dry_run: bool,
}

impl sync_users::Progress for SyncProgress {
    fn step(&mut self, phase: &str, done: u64) {
        if self.terminal {
            eprintln!("{phase} {done}…");
        }
    }

    fn change(&mut self, description: &str) {
        if self.dry_run {
            println!("would have {description}");
        }
    }
}

impl SyncUsersArgs {
    /// Reconciles with Clerk and prints the counts.
    pub async fn run(&self, config: &Config) -> anyhow::Result<()> {
        let Some(clerk) = config.clerk()? else {
            anyhow::bail!("CLERK_SECRET_KEY is not set: sync users needs the Clerk Backend API");
        };
        let api = ClerkApi::new(&clerk.api_url, clerk.secret_key)?;
        let pool = database(config).await?;
        let catalog = config.catalog()?;
        let request = sync_users::SyncRequest {
            dry_run: self.dry_run,
            page_size: sync_users::PAGE_SIZE,
            retry_base_delay: std::time::Duration::from_millis(500),
            actor: self.audit.actor.clone(),
        };
        let mut progress = SyncProgress {
            terminal: std::io::stderr().is_terminal(),
            dry_run: self.dry_run,
        };
        let report = sync_users::sync_users(&pool, &api, &catalog, &request, &mut progress).await;
        pool.close().await;
        let report = report?;
        if self.dry_run {
            println!("dry run: {report}");
        } else {
            println!("{report}");
        }
        Ok(())
    }
}
