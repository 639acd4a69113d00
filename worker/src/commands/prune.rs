//! `worker prune --older-than DURATION [--dry-run]`.

use std::time::Duration;

use clap::Args;

use super::{database, progress, ActorArg};
use crate::{config::Config, prune};

/// Arguments of `worker prune`.
#[derive(Args, Clone, Debug)]
pub struct PruneArgs {
    /// Age of the events to delete: a number and a unit, one of s, m, h, d
    /// or w (e.g. 30d). Keep it longer than the sender's retry window: a
    /// redelivery of a pruned event is no longer recognised as a duplicate.
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    pub older_than: Duration,

    /// Count what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub audit: ActorArg,
}

fn parse_age(value: &str) -> Result<Duration, String> {
    prune::parse_duration(value).map_err(|e| e.to_string())
}

impl PruneArgs {
    /// Prunes and prints the report.
    pub async fn run(&self, config: &Config) -> anyhow::Result<()> {
        let pool = database(config).await?;
        let request = prune::PruneRequest::new(self.older_than, self.dry_run, &self.audit.actor);
        let report = prune::prune(&pool, &request, &mut progress("deleted")).await;
        pool.close().await;
        println!("{}", report?);
        Ok(())
    }
}
