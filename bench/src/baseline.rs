//! The baseline: single-row INSERT commits of the same payload, measured
//! with pgbench, against which the ingress is compared.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use crate::*;
use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::json;
use sqlx::{Connection as _, PgConnection};

#[derive(Args, Debug)]
pub(crate) struct BaselineArgs {
    /// A scratch database; the migrations are applied to it and pgbench
    /// inserts into its (emptied) webhook_events table, as it was before the
    /// split of the event from its state.
    #[arg(long)]
    pub(crate) database_url: String,
    /// pgbench clients (-c).
    #[arg(long, default_value_t = 16)]
    pub(crate) connections: u32,
    /// pgbench threads (-j).
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: u32,
    /// Seconds measured.
    #[arg(long, default_value_t = 15.0)]
    pub(crate) duration: f64,
    /// Seconds of an unmeasured pgbench run first.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) warmup: f64,
    /// Where the pgbench script and transaction logs go.
    #[arg(long)]
    pub(crate) workdir: PathBuf,
    /// The pgbench executable.
    #[arg(long, default_value = "pgbench")]
    pub(crate) pgbench: String,
    #[command(flatten)]
    pub(crate) watch: WatchArgs,
}

// ---------------------------------------------------------------------------
// Baseline

/// One row per transaction, the statement the ingress runs, with the body
/// sent as a parameter twice (text for jsonb, and the raw bytes).
/// The baseline's schema is the migrations older than this one (the split of
/// the event from its state).
const BASELINE_SCHEMA_BEFORE: i64 = 20261217000001;

pub(crate) const PGBENCH_SCRIPT: &str = "\\set seq :seq + 1
INSERT INTO webhook_events (webhook_id, event_type, payload, raw_body, traceparent)
VALUES ('msg_' || :run || '_' || :client_id || '_' || :seq, 'user.created',
        :payload::jsonb, convert_to(:payload, 'UTF8'), :traceparent)
ON CONFLICT (webhook_id) DO NOTHING RETURNING id;
";

pub(crate) struct PgbenchRun {
    pub(crate) stdout: String,
}

pub(crate) async fn run_pgbench(
    args: &BaselineArgs,
    script: &Path,
    seconds: f64,
    run: &str,
    log_prefix: Option<&Path>,
) -> anyhow::Result<PgbenchRun> {
    let payload = String::from_utf8(template_body()).context("the payload is not UTF-8")?;
    let mut command = std::process::Command::new(&args.pgbench);
    command
        .arg("--no-vacuum")
        .args(["--protocol", "prepared"])
        .args(["--client", &args.connections.to_string()])
        .args(["--jobs", &args.threads.to_string()])
        .args(["--time", &format!("{}", seconds.ceil().max(1.0))])
        .arg("--file")
        .arg(script)
        .args(["--define", &format!("run={run}")])
        .args(["--define", "seq=0"])
        .args(["--define", &format!("payload={payload}")])
        .args(["--define", &format!("traceparent={BASELINE_TRACEPARENT}")]);
    if let Some(prefix) = log_prefix {
        command.arg("--log").arg("--log-prefix").arg(prefix);
    }
    command.arg(&args.database_url).current_dir(&args.workdir);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .context("the pgbench task failed")?
        .with_context(|| format!("cannot run {}", args.pgbench))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "pgbench failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            stdout.trim()
        );
    }
    Ok(PgbenchRun { stdout })
}

impl PgbenchRun {
    /// The number after `label` on the line that starts with it.
    pub(crate) fn number(&self, label: &str) -> Option<f64> {
        self.stdout.lines().find_map(|line| {
            let rest = line.trim().strip_prefix(label)?;
            let token = rest
                .trim_start_matches([' ', '=', ':'])
                .split_whitespace()
                .next()?;
            token.parse().ok()
        })
    }
}

/// Per-transaction latencies (µs, third field) of pgbench's --log files.
pub(crate) fn pgbench_latencies(dir: &Path, prefix: &str) -> anyhow::Result<Vec<u32>> {
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(dir).context("cannot list the pgbench logs")? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())?;
        latencies.extend(text.lines().filter_map(|line| {
            line.split_whitespace()
                .nth(2)
                .and_then(|field| field.parse::<u32>().ok())
        }));
    }
    latencies.sort_unstable();
    Ok(latencies)
}

pub(crate) async fn baseline(args: BaselineArgs) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&args.workdir)?;
    let mut db = PgConnection::connect(&args.database_url)
        .await
        .context("cannot connect to the baseline database")?;
    // The same table in every run: `webhook_events` as it was before the
    // event was split from its state (one wide row per event), so ratios stay
    // comparable across versions of the services.
    shared::db::migrations_before(BASELINE_SCHEMA_BEFORE)
        .run(&mut db)
        .await
        .context("cannot apply the migrations to the baseline database")?;
    sqlx::query("TRUNCATE webhook_events CASCADE")
        .execute(&mut db)
        .await?;
    checkpoint(&mut db).await;
    let script = args.workdir.join("baseline-insert.sql");
    std::fs::write(&script, PGBENCH_SCRIPT)?;

    let label = format!("c{}", args.connections);
    if args.warmup > 0.0 {
        run_pgbench(&args, &script, args.warmup, &format!("warm{label}"), None).await?;
    }
    let log_name = format!("pgbench-{label}");
    let mut watch = args.watch.clone();
    watch
        .comms
        .push(("loadgen".to_owned(), "pgbench".to_owned()));
    // pgbench and its server processes exit with the run, taking their CPU
    // time with them: sample inside the run.
    let margin = (args.duration / 4.0).min(0.5);
    let started = Instant::now();
    let sampler = tokio::spawn(sample_window(
        watch,
        false,
        Some(db),
        started + secs(margin, "--duration")?,
        started + secs(args.duration - margin, "--duration")?,
    ));
    let outcome = run_pgbench(
        &args,
        &script,
        args.duration,
        &label,
        Some(&args.workdir.join(&log_name)),
    )
    .await?;
    let (cpu, pg) = sampler.await.context("the sampler failed")?;
    let latencies = pgbench_latencies(&args.workdir, &log_name)?;

    let tps = outcome.number("tps").context("pgbench printed no tps")?;
    let failed = outcome
        .number("number of failed transactions")
        .unwrap_or(0.0);
    let line = json!({
        "bench": "baseline",
        "connections": args.connections,
        "threads": args.threads,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "commits_per_s": round(tps, 1),
        "transactions": outcome.number("number of transactions actually processed"),
        "failed": failed,
        "latency_avg_ms": outcome.number("latency average"),
        "p50_ms": quantile_ms(&latencies, 0.50),
        "p99_ms": quantile_ms(&latencies, 0.99),
        "cpu": cpu,
        "pg": pg,
    });
    emit(
        &line,
        &format!(
            "baseline c={}: {tps:.0} INSERT commits/s, p50 {} ms, p99 {} ms",
            args.connections,
            fmt_opt(quantile_ms(&latencies, 0.50)),
            fmt_opt(quantile_ms(&latencies, 0.99)),
        ),
    );
    Ok(failed == 0.0)
}

/// Starts a measurement from the same point: dirty pages written out.
pub(crate) async fn checkpoint(db: &mut PgConnection) {
    if let Err(error) = sqlx::query("CHECKPOINT").execute(db).await {
        eprintln!("bench: CHECKPOINT skipped: {error}");
    }
}
