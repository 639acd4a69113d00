//! `worker credits adjust USER_ID (--set N | --add N) --reason TEXT [--actor NAME]`.

use clap::{ArgGroup, Args, Subcommand};

use super::database;
use crate::{
    config::Config,
    credits::adjust::{adjust, Adjustment, Target},
};

/// The subcommands of `worker credits`.
#[derive(Subcommand, Clone, Debug)]
pub enum CreditsCommand {
    /// Set or change one user's balance: audited, and synced to Clerk like any
    /// other change.
    Adjust(CreditsAdjustArgs),
}

/// Arguments of `worker credits adjust`.
#[derive(Args, Clone, Debug)]
#[command(group(ArgGroup::new("change").required(true).args(["set", "add"])))]
pub struct CreditsAdjustArgs {
    /// Clerk user id (user_…).
    #[arg(value_name = "USER_ID")]
    pub user_id: String,

    /// Make the balance exactly N.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub set: Option<i64>,

    /// Add N to the balance (negative to take away).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub add: Option<i64>,

    /// Why, for the audit log.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,

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

impl CreditsCommand {
    /// Runs the subcommand.
    pub async fn run(&self, config: &Config) -> anyhow::Result<()> {
        match self {
            CreditsCommand::Adjust(args) => args.run(config).await,
        }
    }
}

impl CreditsAdjustArgs {
    /// Adjusts the balance and prints it before and after.
    pub async fn run(&self, config: &Config) -> anyhow::Result<()> {
        let target = match (self.set, self.add) {
            (Some(n), _) => Target::Set(n),
            (None, Some(n)) => Target::Add(n),
            (None, None) => anyhow::bail!("one of --set or --add is required"),
        };
        let pool = database(config).await?;
        let adjusted = adjust(
            &pool,
            &Adjustment {
                user_id: self.user_id.clone(),
                target,
                reason: self.reason.clone(),
                actor: self.actor.clone(),
            },
        )
        .await;
        pool.close().await;
        let adjusted = adjusted?;
        println!(
            "user={} before={} after={} (Clerk metadata sync scheduled)",
            self.user_id, adjusted.before, adjusted.after
        );
        Ok(())
    }
}
