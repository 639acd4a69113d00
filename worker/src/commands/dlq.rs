//! `worker dlq list [--limit N] [--json]` and
//! `worker dlq replay (--id SVIX_ID… | --type TYPE | --all) [--dry-run]`.

use clap::{ArgGroup, Args, Subcommand};

use super::{broker, close, database, progress, ActorArg};
use crate::{config::Config, dlq};

/// The subcommands of `worker dlq`.
#[derive(Subcommand, Clone, Debug)]
pub enum DlqCommand {
    /// List dead-lettered events without removing them.
    List(DlqListArgs),
    /// Re-publish dead-lettered events for processing; a message leaves the
    /// dead-letter queue only after its re-publish is confirmed.
    Replay(DlqReplayArgs),
}

/// Arguments of `worker dlq list`.
#[derive(Args, Clone, Debug)]
pub struct DlqListArgs {
    /// Show at most this many dead letters.
    #[arg(long, value_name = "N", default_value_t = dlq::DEFAULT_LIST_LIMIT,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,

    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `worker dlq replay`.
#[derive(Args, Clone, Debug)]
#[command(group(ArgGroup::new("selection").required(true).args(["ids", "event_type", "all"])))]
pub struct DlqReplayArgs {
    /// Replay the dead letters with these svix ids (repeatable).
    #[arg(long = "id", value_name = "SVIX_ID", num_args = 1..)]
    pub ids: Vec<String>,

    /// Replay every dead letter of this event type.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,

    /// Replay every dead letter.
    #[arg(long)]
    pub all: bool,

    /// Show what would be replayed; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub audit: ActorArg,
}

impl DlqCommand {
    /// Runs the subcommand.
    pub async fn run(&self, config: &Config) -> anyhow::Result<()> {
        match self {
            DlqCommand::List(args) => args.run(config).await,
            DlqCommand::Replay(args) => args.run(config).await,
        }
    }
}

impl DlqListArgs {
    /// Prints the dead letters as a table or one JSON array.
    pub async fn run(&self, config: &Config) -> anyhow::Result<()> {
        let pool = database(config).await?;
        let (connection, names) = broker(config).await?;
        let listing = dlq::list(&pool, &connection, &names, self.limit).await;
        close(pool, connection).await;
        let listing = listing?;
        if self.json {
            println!("{}", listing.to_json());
        } else {
            print!("{}", listing.to_table());
        }
        Ok(())
    }
}

impl DlqReplayArgs {
    /// The selection the arguments name.
    fn selection(&self) -> dlq::Selection {
        if let Some(event_type) = &self.event_type {
            dlq::Selection::Type(event_type.clone())
        } else if self.all {
            dlq::Selection::All
        } else {
            dlq::Selection::Ids(self.ids.clone())
        }
    }

    /// Replays (or, on a dry run, lists) the selected dead letters.
    pub async fn run(&self, config: &Config) -> anyhow::Result<()> {
        let request = dlq::ReplayRequest {
            selection: self.selection(),
            dry_run: self.dry_run,
            actor: self.audit.actor.clone(),
        };
        let pool = database(config).await?;
        let (connection, names) = broker(config).await?;
        let report = dlq::replay(
            &pool,
            &connection,
            &names,
            &request,
            &mut progress("replayed"),
        )
        .await;
        close(pool, connection).await;
        let report = report?;
        for info in &report.would_replay {
            println!(
                "would replay {} {} (attempts {}: {})",
                info.svix_id.as_deref().unwrap_or("-"),
                info.event_type,
                info.attempts
                    .map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
                info.last_error.as_deref().unwrap_or("no error recorded"),
            );
        }
        if report.without_id > 0 {
            eprintln!(
                "worker: left {} selected message(s) without a message id in {}: they cannot be replayed",
                report.without_id, report.queue
            );
        }
        if report.repeated > 0 {
            eprintln!(
                "worker: left {} message(s) in {} whose svix id was already replayed in this run",
                report.repeated, report.queue
            );
        }
        println!("{report}");
        Ok(())
    }
}
