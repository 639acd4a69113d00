//! The `e2e` step: a fixed number of deliveries, then the wait until the
//! worker processed them all, with the CPU each process spent.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::*;
use anyhow::Context as _;
use clap::Args;
use serde_json::json;
use sqlx::{Connection as _, PgConnection};

#[derive(Args, Debug)]
pub(crate) struct E2eArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// How many events to send.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) count: u64,
    /// The database the services use, to see when every event is processed.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: String,
    /// Worker processes running (a label for the report).
    #[arg(long, default_value_t = 1)]
    pub(crate) workers: u32,
    /// Seconds to wait, after the last answer, for every event to be processed.
    #[arg(long, default_value_t = 300.0)]
    pub(crate) timeout: f64,
    #[command(flatten)]
    pub(crate) watch: WatchArgs,
}

// ---------------------------------------------------------------------------
// End to end

pub(crate) async fn e2e(args: E2eArgs) -> anyhow::Result<bool> {
    let deliveries = Arc::new(Deliveries::new(&args.target)?);
    let timeout = secs(args.timeout, "--timeout")?;
    let mut db = PgConnection::connect(&args.database_url)
        .await
        .context("cannot connect to the services' database")?;
    drop(connect(&deliveries.addr).await?);

    let cpu_start = CpuSnapshot::take(&args.watch, true);
    let pg_start = PgSnapshot::take(&mut db).await;
    let start = Instant::now();
    let far = start + Duration::from_secs(365 * 86_400);
    let schedule = Schedule {
        window_start: start,
        window_end: far,
        count: Some(args.count),
    };
    let tally = run_connections(&deliveries, args.target.connections, schedule).await?;
    let send_s = start.elapsed().as_secs_f64();
    let cpu_while_sending = CpuSnapshot::take(&args.watch, true).usage_since(&cpu_start);

    // Every accepted event must be processed before the deadline.
    let pattern = deliveries.id_pattern();
    let deadline = Instant::now() + timeout;
    let mut failed_reason = None;
    // The progress is read from the narrow state rows where the services
    // have them (the step starts on emptied tables, so every row is one of
    // ours), and from the wide event rows for a build from before the split.
    // The reads cost PostgreSQL CPU inside the measured window, hence one a
    // second: the rates come from the rows' timestamps, not from when this
    // loop notices the end.
    let split: bool = sqlx::query_scalar("SELECT to_regclass('webhook_event_bodies') IS NOT NULL")
        .fetch_one(&mut db)
        .await
        .context("cannot read the services' schema")?;
    let progress = if split {
        "SELECT count(*), count(*) FILTER (WHERE processed_at IS NOT NULL), \
                count(*) FILTER (WHERE status IN ('dead', 'failed')) \
         FROM webhook_event_states WHERE $1::text IS NOT NULL"
    } else {
        "SELECT count(*), count(*) FILTER (WHERE processed_at IS NOT NULL), \
                count(*) FILTER (WHERE status IN ('dead', 'failed')) \
         FROM webhook_events WHERE webhook_id LIKE $1"
    };
    let (stored, processed) = loop {
        let (stored, processed, dead): (i64, i64, i64) = sqlx::query_as(progress)
            .bind(&pattern)
            .fetch_one(&mut db)
            .await
            .context("cannot count processed events")?;
        if dead > 0 {
            failed_reason = Some(format!("{dead} events failed or were dead-lettered"));
            break (stored, processed);
        }
        if processed >= stored && u64::try_from(stored).unwrap_or(0) >= tally.ok {
            break (stored, processed);
        }
        if Instant::now() >= deadline {
            failed_reason = Some(format!(
                "only {processed} of {stored} stored events were processed {}s after the last answer",
                args.timeout
            ));
            break (stored, processed);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let wall_s = start.elapsed().as_secs_f64();
    let cpu = CpuSnapshot::take(&args.watch, true).usage_since(&cpu_start);
    let pg = PgSnapshot::usage(pg_start.as_ref(), PgSnapshot::take(&mut db).await.as_ref());

    let (span_s, p50_s, p99_s, max_s): (Option<f64>, Option<f64>, Option<f64>, Option<f64>) =
        sqlx::query_as(
            "SELECT EXTRACT(EPOCH FROM max(processed_at) - min(received_at))::float8, \
                    EXTRACT(EPOCH FROM percentile_cont(0.5) WITHIN GROUP \
                        (ORDER BY processed_at - received_at))::float8, \
                    EXTRACT(EPOCH FROM percentile_cont(0.99) WITHIN GROUP \
                        (ORDER BY processed_at - received_at))::float8, \
                    EXTRACT(EPOCH FROM max(processed_at - received_at))::float8 \
             FROM webhook_events WHERE webhook_id LIKE $1 AND processed_at IS NOT NULL",
        )
        .bind(&pattern)
        .fetch_one(&mut db)
        .await
        .context("cannot read the processing times")?;
    // Where the time goes: the relay (received → published) and the workers
    // (published → processed). published_at is the relay's transaction time.
    let (publish_span_s, to_publish_p99_s, to_process_p99_s): (
        Option<f64>,
        Option<f64>,
        Option<f64>,
    ) = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM max(published_at) - min(received_at))::float8, \
                EXTRACT(EPOCH FROM percentile_cont(0.99) WITHIN GROUP \
                    (ORDER BY published_at - received_at))::float8, \
                EXTRACT(EPOCH FROM percentile_cont(0.99) WITHIN GROUP \
                    (ORDER BY processed_at - published_at))::float8 \
         FROM webhook_events WHERE webhook_id LIKE $1 AND processed_at IS NOT NULL \
           AND published_at IS NOT NULL",
    )
    .bind(&pattern)
    .fetch_one(&mut db)
    .await
    .context("cannot read the publishing times")?;
    // The two phases of the step: while the events are being sent, the
    // workers share the machine with the load generator, the ingress and its
    // relay; after the last receipt they have it to themselves.
    let (while_sending, sending_span_s, after_span_s): (Option<i64>, Option<f64>, Option<f64>) =
        sqlx::query_as(
            "WITH sent AS (SELECT min(received_at) AS first, max(received_at) AS last \
                           FROM webhook_events WHERE webhook_id LIKE $1) \
             SELECT count(*) FILTER (WHERE e.processed_at <= sent.last), \
                    EXTRACT(EPOCH FROM sent.last - sent.first)::float8, \
                    EXTRACT(EPOCH FROM max(e.processed_at) - sent.last)::float8 \
             FROM webhook_events e CROSS JOIN sent \
             WHERE e.webhook_id LIKE $1 AND e.processed_at IS NOT NULL \
             GROUP BY sent.first, sent.last",
        )
        .bind(&pattern)
        .fetch_optional(&mut db)
        .await
        .context("cannot read the processing times while sending")?
        .unwrap_or_default();
    let per_s = |count: Option<i64>, span: Option<f64>| {
        Some(round(count? as f64 / span.filter(|s| *s > 0.0)?, 1))
    };
    let after_sending = while_sending.map(|w| processed - w);
    let rate = |span: Option<f64>| per_s(Some(processed), span);
    let events_per_s = rate(span_s);
    let ms = |v: Option<f64>| v.map(|s| round(s * 1000.0, 1));
    let line = json!({
        "bench": "e2e",
        "workers": args.workers,
        "connections": args.target.connections,
        "count": args.count,
        "accepted": tally.ok,
        "errors": tally.errors,
        "duplicates": tally.duplicates,
        "first_error": tally.first_error,
        "stored": stored,
        "processed": processed,
        "send_s": round(send_s, 2),
        "send_rps": round(tally.ok as f64 / send_s, 1),
        "span_s": span_s.map(|s| round(s, 2)),
        "events_per_s": events_per_s,
        "p50_ms": ms(p50_s),
        "p99_ms": ms(p99_s),
        "max_ms": ms(max_s),
        "published_per_s": rate(publish_span_s),
        "to_published_p99_ms": ms(to_publish_p99_s),
        "published_to_processed_p99_ms": ms(to_process_p99_s),
        "processed_while_sending": while_sending,
        "while_sending_per_s": per_s(while_sending, sending_span_s),
        "after_sending_per_s": per_s(after_sending, after_span_s),
        "wall_s": round(wall_s, 2),
        "failure": failed_reason,
        "cpu": cpu,
        "cpu_while_sending": cpu_while_sending,
        "pg": pg,
    });
    emit(
        &line,
        &format!(
            "e2e {} worker(s): {processed}/{} processed, {} events/s, receipt→processed p99 {} ms, {} send errors{}",
            args.workers,
            args.count,
            fmt_opt(events_per_s),
            fmt_opt(ms(p99_s)),
            tally.errors,
            failed_reason
                .as_deref()
                .map(|r| format!("; FAILED: {r}"))
                .unwrap_or_default()
        ),
    );
    Ok(failed_reason.is_none()
        && tally.errors == 0
        && u64::try_from(processed).unwrap_or(0) == args.count)
}
