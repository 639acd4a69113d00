//! Machine sampling: CPU from /proc (per process, per command name, the
//! whole machine), PostgreSQL's commit and WAL counters, resident memory.

use std::{collections::BTreeMap, time::Instant};

use crate::*;
use anyhow::Context as _;
use clap::Args;
use serde_json::{json, Value};
use sqlx::PgConnection;

#[derive(Args, Debug)]
pub(crate) struct RssArgs {
    /// How the process appears in the report.
    #[arg(long)]
    pub(crate) name: String,
    #[arg(long)]
    pub(crate) pid: u32,
}

// ---------------------------------------------------------------------------
// CPU and memory from /proc

/// CPU time of the watched processes and of the whole machine at one moment.
pub(crate) struct CpuSnapshot {
    pub(crate) at: Instant,
    pub(crate) ticks: BTreeMap<String, u64>,
    pub(crate) machine_busy: u64,
    pub(crate) machine_total: u64,
    /// Interrupt handling, mostly the loopback network: charged to no process.
    pub(crate) machine_irq: u64,
    /// Idle with a disk request outstanding.
    pub(crate) machine_iowait: u64,
}

/// Command name and CPU ticks (user + system, all threads) of a stat line.
pub(crate) fn stat_ticks(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    // Fields after the command name start with the state (field 3);
    // utime and stime are fields 14 and 15.
    let mut fields = stat.get(close + 1..)?.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((comm, utime + stime))
}

impl CpuSnapshot {
    pub(crate) fn take(watch: &WatchArgs, include_self: bool) -> Self {
        let mut ticks = BTreeMap::new();
        let read = |path: String| std::fs::read_to_string(path).ok();
        if include_self {
            if let Some((_, t)) = read("/proc/self/stat".to_owned())
                .as_deref()
                .and_then(stat_ticks)
            {
                ticks.insert("loadgen".to_owned(), t);
            }
        }
        for (name, pid) in &watch.pids {
            if let Some((_, t)) = read(format!("/proc/{pid}/stat"))
                .as_deref()
                .and_then(stat_ticks)
            {
                *ticks.entry(name.clone()).or_insert(0) += t;
            }
        }
        if !watch.comms.is_empty() {
            for (name, _) in &watch.comms {
                ticks.entry(name.clone()).or_insert(0);
            }
            let pids = std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
            for pid in pids {
                let Some(stat) = read(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                let Some((comm, t)) = stat_ticks(&stat) else {
                    continue;
                };
                for (name, wanted) in &watch.comms {
                    if comm == wanted {
                        *ticks.entry(name.clone()).or_insert(0) += t;
                    }
                }
            }
        }
        // First line of /proc/stat: user nice system idle iowait irq softirq steal.
        let (machine_busy, machine_total, machine_irq, machine_iowait) =
            read("/proc/stat".to_owned())
                .and_then(|text| {
                    let line = text.lines().next()?.to_owned();
                    let values: Vec<u64> = line
                        .split_whitespace()
                        .skip(1)
                        .take(8)
                        .filter_map(|v| v.parse().ok())
                        .collect();
                    let total: u64 = values.iter().sum();
                    let field = |i: usize| values.get(i).copied().unwrap_or(0);
                    let idle = field(3) + field(4);
                    Some((total - idle, total, field(5) + field(6), field(4)))
                })
                .unwrap_or((0, 0, 0, 0));
        Self {
            at: Instant::now(),
            ticks,
            machine_busy,
            machine_total,
            machine_irq,
            machine_iowait,
        }
    }

    /// Percent of one core per watched name between `earlier` and now, and
    /// how busy the whole machine was (percent of all cores).
    pub(crate) fn usage_since(&self, earlier: &Self) -> Value {
        let seconds = self.at.duration_since(earlier.at).as_secs_f64().max(1e-3);
        let mut usage = serde_json::Map::new();
        let mut watched = 0.0;
        for (name, after) in &self.ticks {
            let before = earlier.ticks.get(name).copied().unwrap_or(0);
            let percent = after.saturating_sub(before) as f64 / USER_HZ / seconds * 100.0;
            watched += percent;
            usage.insert(name.clone(), json!(round(percent, 1)));
        }
        let total = self.machine_total.saturating_sub(earlier.machine_total);
        if total > 0 {
            let busy = self.machine_busy.saturating_sub(earlier.machine_busy);
            usage.insert(
                "machine".to_owned(),
                json!(round(busy as f64 / total as f64 * 100.0, 1)),
            );
            let iowait = self.machine_iowait.saturating_sub(earlier.machine_iowait);
            usage.insert(
                "iowait".to_owned(),
                json!(round(iowait as f64 / total as f64 * 100.0, 1)),
            );
            // Interrupts, then everything else that ran meanwhile (kernel
            // threads, other programs), in percent of one core.
            let cores = |ticks: u64| ticks as f64 / USER_HZ / seconds * 100.0;
            let irq = cores(self.machine_irq.saturating_sub(earlier.machine_irq));
            usage.insert("irq".to_owned(), json!(round(irq, 1)));
            usage.insert(
                "other".to_owned(),
                json!(round((cores(busy) - watched - irq).max(0.0), 1)),
            );
        }
        usage.insert("seconds".to_owned(), json!(round(seconds, 2)));
        Value::Object(usage)
    }
}

/// CPU use, and PostgreSQL's commits and WAL flushes when `db` is given,
/// between `from` and `to`.
pub(crate) async fn sample_window(
    watch: WatchArgs,
    include_self: bool,
    mut db: Option<PgConnection>,
    from: Instant,
    to: Instant,
) -> (Value, Value) {
    tokio::time::sleep_until(from.into()).await;
    let cpu_start = CpuSnapshot::take(&watch, include_self);
    let pg_start = match db.as_mut() {
        Some(db) => PgSnapshot::take(db).await,
        None => None,
    };
    tokio::time::sleep_until(to.into()).await;
    let cpu = CpuSnapshot::take(&watch, include_self).usage_since(&cpu_start);
    let pg_end = match db.as_mut() {
        Some(db) => PgSnapshot::take(db).await,
        None => None,
    };
    (cpu, PgSnapshot::usage(pg_start.as_ref(), pg_end.as_ref()))
}

/// The server's transaction id counter, WAL position and WAL flush count.
pub(crate) struct PgSnapshot {
    pub(crate) at: Instant,
    /// Next transaction id: each committed write transaction takes one.
    pub(crate) next_xid: i64,
    pub(crate) wal_bytes: f64,
    pub(crate) wal_syncs: i64,
}

impl PgSnapshot {
    /// None when the server keeps no WAL statistics (before PostgreSQL 14).
    pub(crate) async fn take(db: &mut PgConnection) -> Option<Self> {
        let (next_xid, wal_bytes, wal_syncs): (i64, f64, i64) = sqlx::query_as(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, \
                    (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8, \
                    (SELECT wal_sync FROM pg_stat_wal)",
        )
        .fetch_one(db)
        .await
        .ok()?;
        Some(Self {
            at: Instant::now(),
            next_xid,
            wal_bytes,
            wal_syncs,
        })
    }

    /// Rates between two snapshots. Transaction ids and the WAL position are
    /// exact and server-wide (anything else writing counts too); backends
    /// report their WAL flushes about once a second, so that count is
    /// approximate on short windows.
    pub(crate) fn usage(start: Option<&Self>, end: Option<&Self>) -> Value {
        let (Some(start), Some(end)) = (start, end) else {
            return Value::Null;
        };
        let seconds = end.at.duration_since(start.at).as_secs_f64().max(1e-3);
        let commits = (end.next_xid - start.next_xid) as f64;
        let syncs = (end.wal_syncs - start.wal_syncs) as f64;
        let per_s = |v: f64| round(v / seconds, 1);
        json!({
            "commits_per_s": per_s(commits),
            "wal_syncs_per_s": per_s(syncs),
            "commits_per_wal_sync": (syncs > 0.0).then(|| round(commits / syncs, 2)),
            "wal_bytes_per_commit": (commits > 0.0)
                .then(|| round((end.wal_bytes - start.wal_bytes) / commits, 0)),
        })
    }
}

/// A `kB` field of /proc/<pid>/status.
pub(crate) fn status_kb(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

pub(crate) fn rss(args: &RssArgs) -> anyhow::Result<bool> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", args.pid))
        .with_context(|| format!("process {} ({}) is not running", args.pid, args.name))?;
    let peak = status_kb(&status, "VmHWM").context("no VmHWM in /proc/<pid>/status")?;
    let line = json!({
        "bench": "rss",
        "name": args.name,
        "vmhwm_kb": peak,
        "vmrss_kb": status_kb(&status, "VmRSS"),
    });
    emit(
        &line,
        &format!(
            "{}: peak resident {:.1} MB",
            args.name,
            peak as f64 / 1024.0
        ),
    );
    Ok(true)
}
