//! `bench`: the load generator and the measurements behind `scripts/bench`
//! (see BENCHMARKS.md). Every measuring subcommand prints one JSON line on
//! standard output (what `bench report` turns into tables) and one line for
//! people on standard error, and exits non-zero when the step failed: an
//! answer other than 2xx, a transport error, a duplicate, events not all
//! processed before the deadline.
//!
//! The deliveries are `user.created` events of about 1.4 KB, each with its own
//! svix-id and Clerk user id, signed on the fly exactly as Svix signs them.

use std::process::ExitCode;

mod baseline;
mod end_to_end;
mod load;
mod machine;
mod report;
mod sampling;
mod settle;

use baseline::*;
use clap::{Args, Parser, Subcommand};
use end_to_end::*;
use load::*;
use machine::*;
use report::*;
use sampling::*;
use serde_json::Value;
use settle::*;

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
pub(crate) const USER_HZ: f64 = 100.0;
/// Stands for the user id in the body template; as long as the real ids.
pub(crate) const USER_PLACEHOLDER: &str = "user_XXXXXXXXXXXXXXXXXXXXXXXXXXX";
/// The traceparent the baseline stores, as long as the ingress's.
pub(crate) const BASELINE_TRACEPARENT: &str =
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Load generator and measurements for scripts/bench.
#[derive(Parser, Debug)]
#[command(name = "bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sends deliveries back to back on keep-alive connections for a fixed time.
    Load(LoadArgs),
    /// Sends a fixed number of deliveries, then waits until all are processed.
    E2e(E2eArgs),
    /// Single-row INSERT commits/s of the same payload, measured with pgbench.
    Baseline(BaselineArgs),
    /// Waits until the relay published every row; can empty tables and queues.
    Settle(SettleArgs),
    /// Describes the machine and the versions of the dependencies.
    Machine(MachineArgs),
    /// Peak and current resident memory of a process.
    Rss(RssArgs),
    /// Turns the JSON lines of a run into markdown tables.
    Report(ReportArgs),
    /// Deletes the exchanges and queues of a broker prefix.
    Cleanup(BrokerArgs),
    /// Prints a free TCP port of 127.0.0.1.
    FreePort,
    /// Prints the event body the benchmark sends.
    Payload,
}

#[derive(Args, Debug)]
pub(crate) struct TargetArgs {
    /// Webhook endpoint of the ingress.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/clerk")]
    pub(crate) url: String,
    /// Webhook secret (whsec_…); the first one when several are listed.
    #[arg(long, env = "CLERK_WEBHOOK_SECRET", hide_env_values = true)]
    pub(crate) secret: String,
    /// Keep-alive connections, each sending its requests back to back.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(crate) connections: u32,
}

#[derive(Args, Debug, Clone, Default)]
pub(crate) struct WatchArgs {
    /// NAME=PID: report the CPU use of this process under NAME.
    #[arg(long = "watch-pid", value_parser = parse_pid_pair)]
    pub(crate) pids: Vec<(String, u32)>,
    /// NAME=COMM: report the summed CPU use of every process whose command
    /// name is COMM (e.g. postgres=postgres, rabbitmq=beam.smp).
    #[arg(long = "watch-comm", value_parser = parse_pair)]
    pub(crate) comms: Vec<(String, String)>,
}

pub(crate) fn parse_pair(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((name, rest)) if !name.is_empty() && !rest.is_empty() => {
            Ok((name.to_owned(), rest.to_owned()))
        }
        _ => Err("expected NAME=VALUE".to_owned()),
    }
}

pub(crate) fn parse_pid_pair(value: &str) -> Result<(String, u32), String> {
    let (name, pid) = parse_pair(value)?;
    let pid = pid.parse().map_err(|_| format!("'{pid}' is not a pid"))?;
    Ok((name, pid))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Load(args) => load(args).await,
        Command::E2e(args) => e2e(args).await,
        Command::Baseline(args) => baseline(args).await,
        Command::Settle(args) => settle(args).await,
        Command::Machine(args) => machine(args).await,
        Command::Rss(args) => rss(&args),
        Command::Report(args) => report(&args.file),
        Command::Cleanup(args) => cleanup(args).await,
        Command::FreePort => free_port(),
        Command::Payload => {
            println!("{}", String::from_utf8_lossy(&template_body()));
            Ok(true)
        }
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the machine-readable line and the human one.
pub(crate) fn emit(line: &Value, human: &str) {
    println!("{line}");
    eprintln!("bench: {human}");
}
