//! Between steps: wait until the relay published every row, then empty the
//! tables and queues for the next step.

use std::time::{Duration, Instant};

use crate::*;
use anyhow::Context as _;
use clap::Args;
use lapin::options::QueuePurgeOptions;
use serde_json::json;
use shared::{amqp::Names, secret::Secret};
use sqlx::{Connection as _, PgConnection};

#[derive(Args, Debug)]
pub(crate) struct SettleArgs {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: String,
    /// The phase that just ended (a label for the report).
    #[arg(long, default_value = "")]
    pub(crate) after: String,
    /// Seconds to wait for the relay.
    #[arg(long, default_value_t = 300.0)]
    pub(crate) timeout: f64,
    /// Then empty webhook_events and users, and checkpoint.
    #[arg(long)]
    pub(crate) reset: bool,
    /// Also purge the worker queue and the dead-letter queue of this prefix.
    #[arg(long)]
    pub(crate) purge_prefix: Option<String>,
    #[arg(long, env = "AMQP_URL", default_value = shared::config::DEFAULT_AMQP_URL, hide_env_values = true)]
    pub(crate) amqp_url: String,
}

// ---------------------------------------------------------------------------
// Between phases

pub(crate) async fn settle(args: SettleArgs) -> anyhow::Result<bool> {
    let mut db = PgConnection::connect(&args.database_url)
        .await
        .context("cannot connect to the services' database")?;
    let timeout = secs(args.timeout, "--timeout")?;
    let start = Instant::now();
    let mut unpublished_at_start = None;
    let caught_up = loop {
        let unpublished: i64 =
            sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE published_at IS NULL")
                .fetch_one(&mut db)
                .await
                .context("cannot count unpublished rows")?;
        unpublished_at_start.get_or_insert(unpublished);
        if unpublished == 0 {
            break true;
        }
        if start.elapsed() >= timeout {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let relay_s = round(start.elapsed().as_secs_f64(), 2);
    if caught_up && args.reset {
        // Services from before the split keep events in the webhook_events
        // table; later ones in webhook_event_bodies (the view cannot be
        // truncated).
        let split: bool =
            sqlx::query_scalar("SELECT to_regclass('webhook_event_bodies') IS NOT NULL")
                .fetch_one(&mut db)
                .await?;
        let events = if split {
            "webhook_event_bodies, webhook_event_states"
        } else {
            "webhook_events"
        };
        sqlx::query(&format!("TRUNCATE {events}, users CASCADE"))
            .execute(&mut db)
            .await
            .context("cannot empty the tables")?;
        checkpoint(&mut db).await;
    }
    let mut purged = 0u64;
    if let Some(prefix) = &args.purge_prefix {
        let names = Names::new(prefix);
        let connection = shared::amqp::connect(&Secret::new(args.amqp_url.clone()), "bench")
            .await
            .context("cannot connect to RabbitMQ")?;
        for queue in [&names.worker_queue, &names.dead_letter_queue] {
            // A queue nobody declared yet holds nothing; the failed purge
            // closes its channel, so each queue gets a fresh one.
            let channel = connection.create_channel().await?;
            match channel
                .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                .await
            {
                Ok(count) => purged += u64::from(count),
                Err(error) if error.to_string().contains("NOT_FOUND") => {}
                Err(error) => {
                    return Err(error).with_context(|| format!("cannot purge {queue}"));
                }
            }
        }
        connection.close(200, "bench done".into()).await.ok();
    }
    let line = json!({
        "bench": "settle",
        "after": args.after,
        "unpublished": unpublished_at_start,
        "relay_caught_up": caught_up,
        "relay_s": relay_s,
        "purged_messages": purged,
    });
    emit(
        &line,
        &format!(
            "settle after {}: {} rows were unpublished; {}",
            if args.after.is_empty() {
                "-"
            } else {
                &args.after
            },
            unpublished_at_start.unwrap_or(0),
            if caught_up {
                format!("relay caught up in {relay_s} s")
            } else {
                format!("relay did NOT catch up within {}s", args.timeout)
            }
        ),
    );
    Ok(caught_up)
}
