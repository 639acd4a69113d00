//! `worker migrate`: applies the pending migrations, fills what they leave to
//! fill, and exits (the operation is [`crate::migrate::run`]). It is added to the command line apart from
//! [`super::Command`] because it reads only the database settings.

use crate::config::Config;

/// The subcommand's name on the command line.
pub const NAME: &str = "migrate";

/// The `migrate` subcommand, to add to the worker's command line. It takes
/// no arguments beyond the database settings.
pub fn command() -> clap::Command {
    clap::Command::new(NAME).about(
        "Apply pending database migrations and exit; run it with the schema owner's DATABASE_URL",
    )
}

/// Applies what is pending, fills the subjects of events stored before the
/// ingress computed them ([`crate::backfill`]), and prints both.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let report = crate::migrate::run(&config.database).await?;
    let pool =
        shared::db::connect(&config.database.database_url, 1, config.database.patience()).await?;
    let filled = crate::backfill::event_subjects(&pool).await;
    pool.close().await;
    println!("subjects_filled={}", filled?);
    println!("{report}");
    Ok(())
}
