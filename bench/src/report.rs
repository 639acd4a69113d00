//! The report: the JSON lines of a run turned into the markdown tables of
//! BENCHMARKS.md, with the targets and whether each is met.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;

#[derive(Args, Debug)]
pub(crate) struct ReportArgs {
    /// The JSON lines of one run.
    pub(crate) file: PathBuf,
}

// ---------------------------------------------------------------------------
// Report

pub(crate) fn num(value: &Value, key: &str) -> Option<f64> {
    value.get(key).and_then(Value::as_f64)
}

pub(crate) fn cell(value: Option<f64>, digits: i32) -> String {
    match value {
        None => "–".to_owned(),
        Some(v) if digits == 0 => format!("{v:.0}"),
        Some(v) => format!("{:.*}", usize::try_from(digits).unwrap_or(1), v),
    }
}

pub(crate) fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "–",
    }
}

pub(crate) fn report(file: &Path) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let of = |kind: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l.get("bench").and_then(Value::as_str) == Some(kind))
            .collect()
    };
    let by_connections = |kind: &str, c: u64| -> Option<&Value> {
        of(kind)
            .into_iter()
            .find(|l| l.get("connections").and_then(Value::as_u64) == Some(c))
    };
    let mut out = String::new();
    let mut push = |line: String| {
        out.push_str(&line);
        out.push('\n');
    };

    if let Some(m) = of("machine").first() {
        let pg = m.get("postgres").cloned().unwrap_or(Value::Null);
        let pg = |k: &str| pg.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
        let text = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
        push(format!("Run: {}", text("run")));
        push(String::new());
        push(format!(
            "Machine: {} CPUs ({}), {:.1} GiB RAM, Linux {}; PostgreSQL {} (fsync {}, synchronous_commit {}, wal_sync_method {}, shared_buffers {}); RabbitMQ {}; {}. The load generator, PostgreSQL and RabbitMQ share these cores with the services.",
            m.get("nproc").and_then(Value::as_u64).unwrap_or(0),
            text("cpu_model"),
            num(m, "mem_total_kb").unwrap_or(0.0) / 1024.0 / 1024.0,
            text("kernel"),
            pg("server_version"),
            pg("fsync"),
            pg("synchronous_commit"),
            pg("wal_sync_method"),
            pg("shared_buffers"),
            text("rabbitmq_version"),
            text("rustc"),
        ));
        if let Some(busy) = num(m, "busy_before_percent").filter(|b| *b > 15.0) {
            push(format!(
                "**Warning:** the machine was already {busy:.0} % busy before the run started; these numbers are skewed by that other work."
            ));
        }
        push(String::new());
    }

    // Ingress against the baseline, per concurrency.
    let mut connections: Vec<u64> = of("load")
        .iter()
        .chain(of("baseline").iter())
        .filter_map(|l| l.get("connections").and_then(Value::as_u64))
        .collect();
    connections.sort_unstable();
    connections.dedup();
    if !connections.is_empty() {
        let head: Vec<String> = connections.iter().map(|c| format!("{c} conn.")).collect();
        let first = of("load")
            .first()
            .map(|l| (num(l, "duration_s"), num(l, "warmup_s")));
        if let Some((d, w)) = first {
            push(format!(
                "Ingress: keep-alive HTTP/1.1 connections sending distinct signed `user.created` deliveries ({} bytes) back to back for {} s after {} s of warm-up. Baseline: pgbench, one `INSERT … ON CONFLICT DO NOTHING RETURNING id` of the same payload into an empty `webhook_events` table as it was before the event was split from its state (one wide row per event) per transaction (`-M prepared`, `-j 2`), same durations.",
                of("load").first().and_then(|l| num(l, "body_bytes")).unwrap_or(0.0),
                cell(d, 0),
                cell(w, 0),
            ));
            push(String::new());
        }
        push(format!("| ingress | {} | target |", head.join(" | ")));
        push(format!("|---|{}---|", "---:|".repeat(connections.len())));
        let row = |title: &str, kind: &str, key: &str, digits: i32, target: &str| -> String {
            let cells: Vec<String> = connections
                .iter()
                .map(|c| cell(by_connections(kind, *c).and_then(|l| num(l, key)), digits))
                .collect();
            format!("| {title} | {} | {target} |", cells.join(" | "))
        };
        let ratio = |c: u64| -> Option<f64> {
            let ingress = by_connections("load", c).and_then(|l| num(l, "rps"))?;
            let base = by_connections("baseline", c).and_then(|l| num(l, "commits_per_s"))?;
            (base > 0.0).then(|| ingress / base)
        };
        let ratio_16 = ratio(16);
        let p99_16 = by_connections("load", 16).and_then(|l| num(l, "p99_ms"));
        push(row("accepted requests/s", "load", "rps", 0, ""));
        push(row("p50 latency (ms)", "load", "p50_ms", 2, ""));
        push(row(
            "p99 latency (ms)",
            "load",
            "p99_ms",
            2,
            &format!("≤ 20 ms at 16: {}", verdict(p99_16.map(|p| p <= 20.0))),
        ));
        push(row(
            "errors (non-2xx or transport)",
            "load",
            "errors",
            0,
            "0",
        ));
        // CPU milliseconds per request: % of one core × 10 / (requests/s).
        let per_request = |kind: &str, rate_key: &str, names: &[&str]| -> Vec<String> {
            connections
                .iter()
                .map(|c| {
                    let line = by_connections(kind, *c);
                    let rate = line.and_then(|l| num(l, rate_key)).filter(|r| *r > 0.0);
                    names
                        .iter()
                        .map(|name| {
                            let cpu = line
                                .and_then(|l| l.get("cpu"))
                                .and_then(|cpu| cpu.get(*name))
                                .and_then(Value::as_f64);
                            cell(cpu.zip(rate).map(|(p, r)| p * 10.0 / r), 2)
                        })
                        .collect::<Vec<_>>()
                        .join(" / ")
                })
                .collect()
        };
        push(format!(
            "| CPU ms per accepted request: ingress / postgres / rabbitmq | {} | |",
            per_request("load", "rps", &["ingress", "postgres", "rabbitmq"]).join(" | ")
        ));
        push(row(
            "baseline INSERT commits/s (pgbench)",
            "baseline",
            "commits_per_s",
            0,
            "",
        ));
        push(row(
            "baseline p50 latency (ms)",
            "baseline",
            "p50_ms",
            2,
            "",
        ));
        push(row(
            "baseline p99 latency (ms)",
            "baseline",
            "p99_ms",
            2,
            "",
        ));
        push(format!(
            "| CPU ms per baseline commit: postgres | {} | |",
            per_request("baseline", "commits_per_s", &["postgres"]).join(" | ")
        ));
        let ratios: Vec<String> = connections.iter().map(|c| cell(ratio(*c), 2)).collect();
        push(format!(
            "| **ingress / baseline** | {} | ≥ 0.75 at 16: {} (stretch ≥ 1.2: {}) |",
            ratios.join(" | "),
            verdict(ratio_16.map(|r| r >= 0.75)),
            verdict(ratio_16.map(|r| r >= 1.2)),
        ));
        let lag: Vec<String> = connections
            .iter()
            .map(|c| {
                of("settle")
                    .into_iter()
                    .find(|s| s.get("after").and_then(Value::as_str) == Some(&format!("load-c{c}")))
                    .map_or_else(
                        || "–".to_owned(),
                        |s| {
                            format!(
                                "{} rows, {} s",
                                cell(num(s, "unpublished"), 0),
                                cell(num(s, "relay_s"), 1)
                            )
                        },
                    )
            })
            .collect();
        push(format!(
            "| relay backlog at the end, time to publish it | {} | |",
            lag.join(" | ")
        ));
        push(String::new());
    }

    // End to end.
    let e2e = of("e2e");
    if !e2e.is_empty() {
        let base = |c: u64| by_connections("baseline", c).and_then(|l| num(l, "commits_per_s"));
        let first = e2e[0];
        let sent_at = first
            .get("connections")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        push(format!(
            "End to end: {} distinct events sent at {} connections while the workers run; events/s = processed / (max(processed_at) − min(received_at)), published events/s likewise with published_at; latencies from the rows' timestamps (percentile_cont). While sending: the events processed up to the last receipt (max(received_at)), over the time from the first receipt to it; after: the others, over the time from the last receipt to the last processing.",
            cell(num(first, "count"), 0),
            sent_at,
        ));
        push(String::new());
        let head: Vec<String> = e2e
            .iter()
            .map(|l| {
                let w = l.get("workers").and_then(Value::as_u64).unwrap_or(0);
                format!("{w} worker{}", if w == 1 { "" } else { "s" })
            })
            .collect();
        push(format!("| end to end | {} | target |", head.join(" | ")));
        push(format!("|---|{}---|", "---:|".repeat(e2e.len())));
        let row = |title: &str, key: &str, digits: i32, target: String| -> String {
            let cells: Vec<String> = e2e.iter().map(|l| cell(num(l, key), digits)).collect();
            format!("| {title} | {} | {target} |", cells.join(" | "))
        };
        push(row("processed events/s", "events_per_s", 0, String::new()));
        let best = e2e
            .iter()
            .filter_map(|l| num(l, "events_per_s"))
            .fold(None, |acc: Option<f64>, v| {
                Some(acc.map_or(v, |a| a.max(v)))
            });
        let ratio_cells: Vec<String> = e2e
            .iter()
            .map(|l| {
                let e = num(l, "events_per_s");
                let r = |c| Some(e? / base(c)?);
                format!("{} / {}", cell(r(16), 2), cell(r(sent_at), 2))
            })
            .collect();
        let best_ratio = best.and_then(|b| Some(b / base(16)?));
        push(format!(
            "| ÷ baseline at 16 / at {sent_at} | {} | ≥ 0.5 × baseline at 16: {} |",
            ratio_cells.join(" | "),
            verdict(best_ratio.map(|r| r >= 0.5))
        ));
        push(row(
            "receipt → processed p50 (ms)",
            "p50_ms",
            0,
            String::new(),
        ));
        push(row(
            "receipt → processed p99 (ms)",
            "p99_ms",
            0,
            String::new(),
        ));
        push(row(
            "published events/s (relay)",
            "published_per_s",
            0,
            String::new(),
        ));
        push(row(
            "receipt → published p99 (ms)",
            "to_published_p99_ms",
            0,
            String::new(),
        ));
        push(row(
            "published → processed p99 (ms)",
            "published_to_processed_p99_ms",
            0,
            String::new(),
        ));
        push(row(
            "sending: accepted requests/s",
            "send_rps",
            0,
            String::new(),
        ));
        push(row(
            "processed before the last receipt",
            "processed_while_sending",
            0,
            String::new(),
        ));
        push(row(
            "processed events/s while sending",
            "while_sending_per_s",
            0,
            String::new(),
        ));
        push(row(
            "processed events/s after the last receipt",
            "after_sending_per_s",
            0,
            String::new(),
        ));
        push(row("send errors", "errors", 0, "0".to_owned()));
        push(row("events processed", "processed", 0, String::new()));
        let per_event: Vec<String> = e2e
            .iter()
            .map(|l| {
                let rate = num(l, "events_per_s").filter(|r| *r > 0.0);
                let cpu = l.get("cpu");
                let of_names = |pick: &dyn Fn(&str) -> bool| -> Option<f64> {
                    let cpu = cpu?.as_object()?;
                    let total: f64 = cpu
                        .iter()
                        .filter(|(k, _)| pick(k))
                        .filter_map(|(_, v)| v.as_f64())
                        .sum();
                    Some(total * 10.0 / rate?)
                };
                format!(
                    "{} / {}",
                    cell(of_names(&|k| k.starts_with("worker")), 2),
                    cell(of_names(&|k| k == "postgres"), 2)
                )
            })
            .collect();
        push(format!(
            "| CPU ms per processed event: workers / postgres (whole run) | {} | |",
            per_event.join(" | ")
        ));
        push(String::new());
    }

    // Memory.
    let rss = of("rss");
    if !rss.is_empty() {
        push("| process | peak resident (VmHWM) | target |".to_owned());
        push("|---|---:|---|".to_owned());
        for l in rss {
            let mb = num(l, "vmhwm_kb").map(|kb| kb / 1024.0);
            push(format!(
                "| {} | {} MB | ≤ 50 MB: {} |",
                l.get("name").and_then(Value::as_str).unwrap_or("?"),
                cell(mb, 1),
                verdict(mb.map(|m| m <= 50.0))
            ));
        }
        push(String::new());
    }

    // CPU: each phase's `cpu` object.
    let mut phases: Vec<(String, Option<&Value>)> = Vec::new();
    for l in of("baseline") {
        phases.push((
            format!(
                "baseline c={}",
                l.get("connections").and_then(Value::as_u64).unwrap_or(0)
            ),
            l.get("cpu"),
        ));
    }
    for l in of("load") {
        phases.push((
            format!(
                "ingress c={}",
                l.get("connections").and_then(Value::as_u64).unwrap_or(0)
            ),
            l.get("cpu"),
        ));
    }
    for l in of("e2e") {
        let workers = l.get("workers").and_then(Value::as_u64).unwrap_or(0);
        phases.push((format!("end to end, {workers} worker(s)"), l.get("cpu")));
        // The sending part of the window, as a phase of its own.
        if let Some(cpu) = l.get("cpu_while_sending") {
            phases.push((
                format!("… of which while sending, {workers} worker(s)"),
                Some(cpu),
            ));
        }
    }
    if !phases.is_empty() {
        push(
            "CPU during each measured window in % of one core, from /proc/<pid>/stat and /proc/stat: \
             interrupts = irq + softirq time (mostly the loopback network), charged to no process; \
             other = the rest of the machine (kernel threads, any other program); \
             machine busy and iowait (idle while waiting for the disk) are in % of all cores."
                .to_owned(),
        );
        push(String::new());
        push(
            "| phase | load generator | ingress | worker(s) | postgres | rabbitmq | interrupts | other | machine busy | iowait |"
                .to_owned(),
        );
        push("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|".to_owned());
        for (title, cpu) in phases {
            let Some(cpu) = cpu.and_then(Value::as_object) else {
                continue;
            };
            let get = |k: &str| cpu.get(k).and_then(Value::as_f64);
            let workers: Vec<f64> = cpu
                .iter()
                .filter(|(k, _)| k.starts_with("worker"))
                .filter_map(|(_, v)| v.as_f64())
                .collect();
            let workers = if workers.is_empty() {
                "–".to_owned()
            } else {
                workers
                    .iter()
                    .map(|w| format!("{w:.0}"))
                    .collect::<Vec<_>>()
                    .join(" + ")
            };
            push(format!(
                "| {title} | {} | {} | {workers} | {} | {} | {} | {} | {} % | {} % |",
                cell(get("loadgen"), 0),
                cell(get("ingress"), 0),
                cell(get("postgres"), 0),
                cell(get("rabbitmq"), 0),
                cell(get("irq"), 0),
                cell(get("other"), 0),
                cell(get("machine"), 0),
                cell(get("iowait"), 0),
            ));
        }
        push(String::new());
    }

    let busiest_other = lines
        .iter()
        .filter_map(|l| l.get("cpu")?.get("other")?.as_f64())
        .fold(0.0_f64, f64::max);
    if busiest_other > 20.0 {
        push(format!(
            "**Note:** processes outside the benchmark used up to {busiest_other:.0} % of a core during a window (column other); rerun on a quiet machine for clean numbers."
        ));
        push(String::new());
    }

    // PostgreSQL's side of each window.
    let pg_rows: Vec<(String, &Value)> = of("baseline")
        .into_iter()
        .map(|l| ("baseline", l))
        .chain(of("load").into_iter().map(|l| ("ingress", l)))
        .filter_map(|(kind, l)| {
            let c = l.get("connections").and_then(Value::as_u64)?;
            Some((format!("{kind} c={c}"), l.get("pg")?))
        })
        .chain(of("e2e").into_iter().filter_map(|l| {
            let w = l.get("workers").and_then(Value::as_u64)?;
            Some((format!("end to end, {w} worker(s)"), l.get("pg")?))
        }))
        .filter(|(_, pg)| pg.is_object())
        .collect();
    if !pg_rows.is_empty() {
        push(
            "PostgreSQL during each window: write transactions committed (transaction ids used), \
             WAL flushes (pg_stat_wal.wal_sync; backends report it about once a second, so it is \
             approximate) and WAL written (pg_current_wal_lsn), server-wide:"
                .to_owned(),
        );
        push(String::new());
        push(
            "| phase | write commits/s | WAL flushes/s | commits per WAL flush | WAL bytes per commit |"
                .to_owned(),
        );
        push("|---|---:|---:|---:|---:|".to_owned());
        for (title, pg) in pg_rows {
            push(format!(
                "| {title} | {} | {} | {} | {} |",
                cell(num(pg, "commits_per_s"), 0),
                cell(num(pg, "wal_syncs_per_s"), 0),
                cell(num(pg, "commits_per_wal_sync"), 1),
                cell(num(pg, "wal_bytes_per_commit"), 0),
            ));
        }
        push(String::new());
    }

    // Failures, if any.
    let failures: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            let kind = l.get("bench")?.as_str()?;
            let errors = num(l, "errors").unwrap_or(0.0) + num(l, "failed").unwrap_or(0.0);
            let failure = l.get("failure").and_then(Value::as_str);
            let first = l.get("first_error").and_then(Value::as_str);
            (errors > 0.0 || failure.is_some()).then(|| {
                format!(
                    "- {kind}: {}{}",
                    failure.map_or_else(|| format!("{errors} errors"), str::to_owned),
                    first.map(|f| format!(" (first: {f})")).unwrap_or_default()
                )
            })
        })
        .collect();
    if !failures.is_empty() {
        push("Failures:".to_owned());
        push(String::new());
        for f in failures {
            push(f);
        }
        push(String::new());
    }
    print!("{out}");
    Ok(true)
}
