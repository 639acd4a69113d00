//! `worker replay --from-store (--id SVIX_ID… | --since RFC3339 [--type TYPE])`.

use clap::{ArgGroup, Args};

use super::{broker, close, database, progress, ActorArg};
use crate::{config::Config, replay};

/// Arguments of `worker replay`.
#[derive(Args, Clone, Debug)]
#[command(group(ArgGroup::new("events").required(true).args(["ids", "since"])))]
pub struct ReplayArgs {
    /// Re-publish from the `webhook_events` archive (the only source).
    #[arg(long, required = true)]
    pub from_store: bool,

    /// Re-publish the stored events with these svix ids (repeatable).
    #[arg(long = "id", value_name = "SVIX_ID", num_args = 1..)]
    pub ids: Vec<String>,

    /// Re-publish the events received at or after this instant
    /// (RFC 3339, e.g. 2024-05-01T00:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub since: Option<time::OffsetDateTime>,

    /// With --since: only events of this type.
    #[arg(long = "type", value_name = "TYPE", conflicts_with = "ids")]
    pub event_type: Option<String>,

    #[command(flatten)]
    pub audit: ActorArg,
}

fn parse_rfc3339(value: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map_err(|_| "not an RFC 3339 timestamp (e.g. 2024-05-01T00:00:00Z)".to_owned())
}

impl ReplayArgs {
    /// Re-publishes the selected stored events and prints the report.
    pub async fn run(&self, config: &Config) -> anyhow::Result<()> {
        let selection = match self.since {
            Some(since) => replay::StoreSelection::Since {
                since,
                event_type: self.event_type.clone(),
            },
            None => replay::StoreSelection::Ids(self.ids.clone()),
        };
        let pool = database(config).await?;
        let (connection, names) = broker(config).await?;
        let report = replay::replay_from_store(
            &pool,
            &connection,
            &names,
            &selection,
            &self.audit.actor,
            &mut progress("republished"),
        )
        .await;
        close(pool, connection).await;
        println!("{}", report?);
        Ok(())
    }
}
