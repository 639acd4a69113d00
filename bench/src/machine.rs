//! The machine and the versions of its dependencies, free ports, and the
//! removal of a run's broker prefix.

use std::time::Duration;

use crate::*;
use anyhow::Context as _;
use clap::Args;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use serde_json::{json, Value};
use shared::{amqp::Names, secret::Secret};
use sqlx::{Connection as _, PgConnection};
use tokio::{io::AsyncReadExt as _, io::AsyncWriteExt as _, net::TcpStream};

#[derive(Args, Debug)]
pub(crate) struct MachineArgs {
    /// Any database of the PostgreSQL server.
    #[arg(long)]
    pub(crate) database_url: String,
    #[arg(long, env = "AMQP_URL", default_value = shared::config::DEFAULT_AMQP_URL, hide_env_values = true)]
    pub(crate) amqp_url: String,
    /// Free text describing the run (command line, commit).
    #[arg(long, default_value = "")]
    pub(crate) run: String,
}

#[derive(Args, Debug)]
pub(crate) struct BrokerArgs {
    #[arg(long, env = "AMQP_URL", default_value = shared::config::DEFAULT_AMQP_URL, hide_env_values = true)]
    pub(crate) amqp_url: String,
    /// The AMQP_PREFIX the services used.
    #[arg(long)]
    pub(crate) prefix: String,
}

// ---------------------------------------------------------------------------
// Machine, ports, broker

pub(crate) async fn machine(args: MachineArgs) -> anyhow::Result<bool> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
        .map(|m| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .ok();
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    // Whatever else runs on the machine skews every number: note it.
    let idle_watch = WatchArgs::default();
    let before = CpuSnapshot::take(&idle_watch, false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy_before = CpuSnapshot::take(&idle_watch, false)
        .usage_since(&before)
        .get("machine")
        .and_then(Value::as_f64);

    let mut db = PgConnection::connect(&args.database_url)
        .await
        .context("cannot connect to PostgreSQL")?;
    let mut settings = serde_json::Map::new();
    for name in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "wal_sync_method",
        "commit_delay",
        "shared_buffers",
        "max_connections",
    ] {
        let value: String = sqlx::query_scalar(&format!("SHOW {name}"))
            .fetch_one(&mut db)
            .await?;
        settings.insert(name.to_owned(), json!(value));
    }
    let rabbitmq = rabbitmq_version(&args.amqp_url).await;
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let line = json!({
        "bench": "machine",
        "run": args.run,
        "nproc": nproc,
        "cpu_model": cpu_model,
        "mem_total_kb": status_kb(&meminfo, "MemTotal"),
        "kernel": kernel,
        "postgres": settings,
        "rabbitmq_version": rabbitmq,
        "rustc": rustc,
        "busy_before_percent": busy_before,
    });
    emit(
        &line,
        &format!(
            "machine: {nproc} CPUs ({}), {} % busy before the run",
            cpu_model.as_deref().unwrap_or("?"),
            fmt_opt(busy_before)
        ),
    );
    if busy_before.is_some_and(|b| b > 15.0) {
        eprintln!(
            "bench: WARNING: the machine is already busy; the results will be lower and noisier"
        );
    }
    Ok(true)
}

/// The `version` the broker announces in its connection.start frame.
pub(crate) async fn rabbitmq_version(amqp_url: &str) -> Option<String> {
    let url = url::Url::parse(amqp_url).ok()?;
    let host = url.host_str()?.to_owned();
    let port = url.port().unwrap_or(5672);
    let read = async {
        let mut stream = TcpStream::connect((host.as_str(), port)).await.ok()?;
        stream.write_all(b"AMQP\x00\x00\x09\x01").await.ok()?;
        let mut frame = Vec::new();
        let mut chunk = [0u8; 2048];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 || frame.len() > 65_536 {
                return None;
            }
            frame.extend_from_slice(&chunk[..n]);
            if let Some(version) = announced_version(&frame) {
                return Some(version);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .flatten()
}

/// The `version` entry (a long string) of the server properties, once the
/// bytes read so far hold all of it.
pub(crate) fn announced_version(frame: &[u8]) -> Option<String> {
    let key = b"\x07versionS";
    let at = frame.windows(key.len()).position(|w| w == key)? + key.len();
    let len = usize::try_from(u32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?)).ok()?;
    let value = frame.get(at + 4..at + 4 + len)?;
    Some(String::from_utf8_lossy(value).into_owned())
}

pub(crate) fn free_port() -> anyhow::Result<bool> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    Ok(true)
}

pub(crate) async fn cleanup(args: BrokerArgs) -> anyhow::Result<bool> {
    let names = Names::new(&args.prefix);
    let connection = shared::amqp::connect(&Secret::new(args.amqp_url.clone()), "bench")
        .await
        .context("cannot connect to RabbitMQ")?;
    let mut complete = true;
    // A failed operation closes its channel, so each gets a fresh one.
    // The worker's delay queues, one per retry step of its default policy.
    let delay_queues: Vec<String> = worker::config::Settings::default_retry_policy()
        .steps()
        .into_iter()
        .map(|step| names.retry_queue(step))
        .collect();
    for queue in [&names.worker_queue, &names.dead_letter_queue]
        .into_iter()
        .chain(&delay_queues)
    {
        let channel = connection.create_channel().await?;
        if let Err(error) = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
        {
            eprintln!("bench: cannot delete queue {queue}: {error}");
            complete = false;
        }
    }
    for exchange in [
        &names.exchange,
        &names.dead_letter_exchange,
        &names.retry_exchange,
    ] {
        let channel = connection.create_channel().await?;
        if let Err(error) = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
        {
            eprintln!("bench: cannot delete exchange {exchange}: {error}");
            complete = false;
        }
    }
    connection.close(200, "bench done".into()).await.ok();
    Ok(complete)
}
