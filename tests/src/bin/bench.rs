//! `bench`: the load generator and the measurements behind `scripts/bench`
//! (see BENCHMARKS.md). Every measuring subcommand prints one JSON line on
//! standard output (what `bench report` turns into tables) and one line for
//! people on standard error, and exits non-zero when the step failed: an
//! answer other than 2xx, a transport error, a duplicate, events not all
//! processed before the deadline.
//!
//! The deliveries are `user.created` events of about 1.4 KB, each with its own
//! svix-id and Clerk user id, signed on the fly exactly as Svix signs them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt as _, Full};
use hyper::{client::conn::http1::SendRequest, header, Method, Request, Uri};
use hyper_util::rt::TokioIo;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions, QueuePurgeOptions};
use serde_json::{json, Value};
use shared::{
    amqp::Names,
    secret::Secret,
    svix::{sign, SigningKey},
};
use sqlx::{Connection as _, PgConnection};
use tokio::{io::AsyncReadExt as _, io::AsyncWriteExt as _, net::TcpStream};

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;
/// Stands for the user id in the body template; as long as the real ids.
const USER_PLACEHOLDER: &str = "user_XXXXXXXXXXXXXXXXXXXXXXXXXXX";
/// The traceparent the baseline stores, as long as the ingress's.
const BASELINE_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

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
struct TargetArgs {
    /// Webhook endpoint of the ingress.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/clerk")]
    url: String,
    /// Webhook secret (whsec_…); the first one when several are listed.
    #[arg(long, env = "CLERK_WEBHOOK_SECRET", hide_env_values = true)]
    secret: String,
    /// Keep-alive connections, each sending its requests back to back.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    connections: u32,
}

#[derive(Args, Debug, Clone, Default)]
struct WatchArgs {
    /// NAME=PID: report the CPU use of this process under NAME.
    #[arg(long = "watch-pid", value_parser = parse_pid_pair)]
    pids: Vec<(String, u32)>,
    /// NAME=COMM: report the summed CPU use of every process whose command
    /// name is COMM (e.g. postgres=postgres, rabbitmq=beam.smp).
    #[arg(long = "watch-comm", value_parser = parse_pair)]
    comms: Vec<(String, String)>,
}

#[derive(Args, Debug)]
struct LoadArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Seconds of load before the measurement starts.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// The ingress's database, to count commits and WAL flushes meanwhile.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[command(flatten)]
    watch: WatchArgs,
}

#[derive(Args, Debug)]
struct E2eArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// How many events to send.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// The database the services use, to see when every event is processed.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Worker processes running (a label for the report).
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Seconds to wait, after the last answer, for every event to be processed.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    #[command(flatten)]
    watch: WatchArgs,
}

#[derive(Args, Debug)]
struct BaselineArgs {
    /// A scratch database; the migrations are applied to it and pgbench
    /// inserts into its (emptied) webhook_events table.
    #[arg(long)]
    database_url: String,
    /// pgbench clients (-c).
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// pgbench threads (-j).
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Seconds measured.
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Seconds of an unmeasured pgbench run first.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Where the pgbench script and transaction logs go.
    #[arg(long)]
    workdir: PathBuf,
    /// The pgbench executable.
    #[arg(long, default_value = "pgbench")]
    pgbench: String,
    #[command(flatten)]
    watch: WatchArgs,
}

#[derive(Args, Debug)]
struct BrokerArgs {
    #[arg(long, env = "AMQP_URL", default_value = shared::config::DEFAULT_AMQP_URL, hide_env_values = true)]
    amqp_url: String,
    /// The AMQP_PREFIX the services used.
    #[arg(long)]
    prefix: String,
}

#[derive(Args, Debug)]
struct SettleArgs {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The phase that just ended (a label for the report).
    #[arg(long, default_value = "")]
    after: String,
    /// Seconds to wait for the relay.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Then empty webhook_events and users, and checkpoint.
    #[arg(long)]
    reset: bool,
    /// Also purge the worker queue and the dead-letter queue of this prefix.
    #[arg(long)]
    purge_prefix: Option<String>,
    #[arg(long, env = "AMQP_URL", default_value = shared::config::DEFAULT_AMQP_URL, hide_env_values = true)]
    amqp_url: String,
}

#[derive(Args, Debug)]
struct MachineArgs {
    /// Any database of the PostgreSQL server.
    #[arg(long)]
    database_url: String,
    #[arg(long, env = "AMQP_URL", default_value = shared::config::DEFAULT_AMQP_URL, hide_env_values = true)]
    amqp_url: String,
    /// Free text describing the run (command line, commit).
    #[arg(long, default_value = "")]
    run: String,
}

#[derive(Args, Debug)]
struct RssArgs {
    /// How the process appears in the report.
    #[arg(long)]
    name: String,
    #[arg(long)]
    pid: u32,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// The JSON lines of one run.
    file: PathBuf,
}

fn parse_pair(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((name, rest)) if !name.is_empty() && !rest.is_empty() => {
            Ok((name.to_owned(), rest.to_owned()))
        }
        _ => Err("expected NAME=VALUE".to_owned()),
    }
}

fn parse_pid_pair(value: &str) -> Result<(String, u32), String> {
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
fn emit(line: &Value, human: &str) {
    println!("{line}");
    eprintln!("bench: {human}");
}

// ---------------------------------------------------------------------------
// Deliveries

fn template_body() -> Vec<u8> {
    e2e::deliveries::user_created(USER_PLACEHOLDER)
}

/// Makes distinct signed deliveries: a fresh svix-id and Clerk user id each.
struct Deliveries {
    key: SigningKey,
    template: Vec<u8>,
    /// Where the user id placeholder sits in the template.
    spots: Vec<usize>,
    /// Random per process, so ids never repeat across runs and phases.
    tag: String,
    next: AtomicU64,
    uri: Uri,
    authority: String,
    addr: String,
}

impl Deliveries {
    fn new(target: &TargetArgs) -> anyhow::Result<Self> {
        let first = target
            .secret
            .split(|c: char| c == ',' || c.is_whitespace())
            .find(|s| !s.is_empty())
            .context("the webhook secret is empty")?;
        let key = SigningKey::parse(first).context("the webhook secret is unusable")?;
        let uri: Uri = target.url.parse().context("--url is not a URL")?;
        if uri.scheme_str() != Some("http") {
            bail!("--url must be an http:// URL");
        }
        let authority = uri.authority().context("--url has no host")?.to_string();
        let addr = if uri.port().is_some() {
            authority.clone()
        } else {
            format!("{authority}:80")
        };
        let template = template_body();
        let needle = USER_PLACEHOLDER.as_bytes();
        let spots: Vec<usize> = template
            .windows(needle.len())
            .enumerate()
            .filter(|(_, window)| *window == needle)
            .map(|(at, _)| at)
            .collect();
        if spots.is_empty() {
            bail!("the event template has no user id to vary");
        }
        let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        Ok(Self {
            key,
            template,
            spots,
            tag,
            next: AtomicU64::new(0),
            uri,
            authority,
            addr,
        })
    }

    /// `LIKE` pattern matching every svix-id this generator makes.
    fn id_pattern(&self) -> String {
        format!("msg\\_{}\\_%", self.tag)
    }

    fn body_bytes(&self) -> usize {
        self.template.len()
    }

    /// The next delivery, signed now.
    fn request(&self) -> anyhow::Result<Request<Full<Bytes>>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let user = format!("user_{}{n:019}", self.tag);
        let mut body = self.template.clone();
        for &at in &self.spots {
            body[at..at + user.len()].copy_from_slice(user.as_bytes());
        }
        let id = format!("msg_{}_{n}", self.tag);
        let timestamp = e2e::deliveries::now();
        let signature = sign(&self.key, &id, timestamp, &body);
        Request::builder()
            .method(Method::POST)
            .uri(self.uri.path())
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header("svix-id", id)
            .header("svix-timestamp", timestamp.to_string())
            .header("svix-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .context("cannot build the request")
    }
}

// ---------------------------------------------------------------------------
// HTTP

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: &str) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake failed")?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes; the sender
        // reports the failure, if any.
        let _ = connection.await;
    });
    Ok(sender)
}

enum Answer {
    Ok,
    Duplicate,
    Refused(String),
}

/// Sends one request and reads the whole answer.
async fn exchange(sender: &mut Sender, request: Request<Full<Bytes>>) -> anyhow::Result<Answer> {
    sender.ready().await.context("connection lost")?;
    let response = sender
        .send_request(request)
        .await
        .context("request failed")?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("cannot read the answer")?
        .to_bytes();
    Ok(if !status.is_success() {
        // The start of the answer is enough to tell what went wrong.
        let text: String = String::from_utf8_lossy(&body)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(160)
            .collect();
        Answer::Refused(format!("{} {text}", status.as_u16()))
    } else if body.windows(9).any(|w| w == b"duplicate") {
        Answer::Duplicate
    } else {
        Answer::Ok
    })
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    sent: u64,
    ok: u64,
    duplicates: u64,
    errors: u64,
    first_error: Option<String>,
    /// Answers that completed inside the measured window.
    window_ok: u64,
    window_errors: u64,
    window_latencies_us: Vec<u32>,
}

impl Tally {
    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }

    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.duplicates += other.duplicates;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.window_ok += other.window_ok;
        self.window_errors += other.window_errors;
        self.window_latencies_us
            .extend_from_slice(&other.window_latencies_us);
    }
}

/// When a connection stops, and which answers are measured.
#[derive(Clone, Copy)]
struct Schedule {
    window_start: Instant,
    window_end: Instant,
    /// Stop after this many requests in all (a fixed-count run).
    count: Option<u64>,
}

/// One keep-alive connection sending requests back to back.
async fn connection_loop(
    deliveries: Arc<Deliveries>,
    schedule: Schedule,
    issued: Arc<AtomicU64>,
) -> Tally {
    let mut tally = Tally::default();
    let mut sender: Option<Sender> = None;
    loop {
        if Instant::now() >= schedule.window_end {
            break;
        }
        if let Some(count) = schedule.count {
            if issued.fetch_add(1, Ordering::Relaxed) >= count {
                break;
            }
        }
        let current = match sender.as_mut() {
            Some(current) if !current.is_closed() => current,
            _ => match connect(&deliveries.addr).await {
                Ok(fresh) => sender.insert(fresh),
                Err(error) => {
                    tally.sent += 1;
                    tally.error(format!("{error:#}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let request = match deliveries.request() {
            Ok(request) => request,
            Err(error) => {
                tally.error(format!("{error:#}"));
                break;
            }
        };
        tally.sent += 1;
        let started = Instant::now();
        let answer = exchange(current, request).await;
        let done = Instant::now();
        let measured = done >= schedule.window_start && done <= schedule.window_end;
        if measured {
            let micros = done.duration_since(started).as_micros();
            tally
                .window_latencies_us
                .push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
        match answer {
            Ok(Answer::Ok) => {
                tally.ok += 1;
                if measured {
                    tally.window_ok += 1;
                }
                continue;
            }
            Ok(Answer::Duplicate) => {
                tally.duplicates += 1;
                tally.error("answered duplicate to a fresh svix-id".to_owned());
            }
            Ok(Answer::Refused(what)) => tally.error(what),
            Err(error) => {
                tally.error(format!("{error:#}"));
                sender = None;
            }
        }
        if measured {
            tally.window_errors += 1;
        }
    }
    tally
}

async fn run_connections(
    deliveries: &Arc<Deliveries>,
    connections: u32,
    schedule: Schedule,
) -> anyhow::Result<Tally> {
    let issued = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            tokio::spawn(connection_loop(
                deliveries.clone(),
                schedule,
                issued.clone(),
            ))
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await.context("a connection task failed")?);
    }
    Ok(total)
}

/// The value at quantile `q` (nearest rank) of sorted samples, in ms.
fn quantile_ms(sorted_us: &[u32], q: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = (q * sorted_us.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted_us.len()) - 1;
    Some(round(f64::from(sorted_us[index]) / 1000.0, 2))
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

fn secs(value: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("{what} must be a positive number"))
}

async fn load(args: LoadArgs) -> anyhow::Result<bool> {
    let deliveries = Arc::new(Deliveries::new(&args.target)?);
    let duration = secs(args.duration, "--duration")?;
    let warmup = secs(args.warmup, "--warmup")?;
    if duration.is_zero() {
        bail!("--duration must be above 0");
    }
    // Fail fast, with the reason, when nothing listens.
    drop(connect(&deliveries.addr).await?);

    let start = Instant::now();
    let schedule = Schedule {
        window_start: start + warmup,
        window_end: start + warmup + duration,
        count: None,
    };
    let db = match &args.database_url {
        Some(url) => Some(
            PgConnection::connect(url)
                .await
                .context("cannot connect to the ingress's database")?,
        ),
        None => None,
    };
    let sampler = tokio::spawn(sample_window(
        args.watch.clone(),
        true,
        db,
        schedule.window_start,
        schedule.window_end,
    ));
    let mut tally = run_connections(&deliveries, args.target.connections, schedule).await?;
    let (cpu, pg) = sampler.await.context("the sampler failed")?;

    tally.window_latencies_us.sort_unstable();
    let rps = tally.window_ok as f64 / duration.as_secs_f64();
    let p50 = quantile_ms(&tally.window_latencies_us, 0.50);
    let p99 = quantile_ms(&tally.window_latencies_us, 0.99);
    let line = json!({
        "bench": "load",
        "connections": args.target.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "body_bytes": deliveries.body_bytes(),
        "sent": tally.sent,
        "accepted": tally.ok,
        "measured_accepted": tally.window_ok,
        "rps": round(rps, 1),
        "p50_ms": p50,
        "p90_ms": quantile_ms(&tally.window_latencies_us, 0.90),
        "p99_ms": p99,
        "max_ms": quantile_ms(&tally.window_latencies_us, 1.0),
        "errors": tally.errors,
        "measured_errors": tally.window_errors,
        "duplicates": tally.duplicates,
        "first_error": tally.first_error,
        "cpu": cpu,
        "pg": pg,
    });
    emit(
        &line,
        &format!(
            "load c={}: {:.0} accepted/s over {}s, p50 {} ms, p99 {} ms, {} errors{}",
            args.target.connections,
            rps,
            args.duration,
            fmt_opt(p50),
            fmt_opt(p99),
            tally.errors,
            tally
                .first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        ),
    );
    Ok(tally.errors == 0 && tally.window_ok > 0)
}

fn fmt_opt(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

// ---------------------------------------------------------------------------
// End to end

async fn e2e(args: E2eArgs) -> anyhow::Result<bool> {
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

    // Every accepted event must be processed before the deadline.
    let pattern = deliveries.id_pattern();
    let deadline = Instant::now() + timeout;
    let mut failed_reason = None;
    let (stored, processed) = loop {
        let (stored, processed, dead): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE processed_at IS NOT NULL), \
                    count(*) FILTER (WHERE status IN ('dead', 'failed')) \
             FROM webhook_events WHERE webhook_id LIKE $1",
        )
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
        tokio::time::sleep(Duration::from_millis(200)).await;
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
    let rate = |span: Option<f64>| {
        span.filter(|s| *s > 0.0)
            .map(|s| round(processed as f64 / s, 1))
    };
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
        "wall_s": round(wall_s, 2),
        "failure": failed_reason,
        "cpu": cpu,
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

// ---------------------------------------------------------------------------
// Baseline

/// One row per transaction, the statement the ingress runs, with the body
/// sent as a parameter twice (text for jsonb, and the raw bytes).
const PGBENCH_SCRIPT: &str = "\\set seq :seq + 1
INSERT INTO webhook_events (webhook_id, event_type, payload, raw_body, traceparent)
VALUES ('msg_' || :run || '_' || :client_id || '_' || :seq, 'user.created',
        :payload::jsonb, convert_to(:payload, 'UTF8'), :traceparent)
ON CONFLICT (webhook_id) DO NOTHING RETURNING id;
";

struct PgbenchRun {
    stdout: String,
}

async fn run_pgbench(
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
    fn number(&self, label: &str) -> Option<f64> {
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
fn pgbench_latencies(dir: &Path, prefix: &str) -> anyhow::Result<Vec<u32>> {
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

async fn baseline(args: BaselineArgs) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&args.workdir)?;
    let mut db = PgConnection::connect(&args.database_url)
        .await
        .context("cannot connect to the baseline database")?;
    shared::db::MIGRATOR
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
async fn checkpoint(db: &mut PgConnection) {
    if let Err(error) = sqlx::query("CHECKPOINT").execute(db).await {
        eprintln!("bench: CHECKPOINT skipped: {error}");
    }
}

// ---------------------------------------------------------------------------
// Between phases

async fn settle(args: SettleArgs) -> anyhow::Result<bool> {
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
        sqlx::query("TRUNCATE webhook_events, users CASCADE")
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

// ---------------------------------------------------------------------------
// CPU and memory from /proc

/// CPU time of the watched processes and of the whole machine at one moment.
struct CpuSnapshot {
    at: Instant,
    ticks: BTreeMap<String, u64>,
    machine_busy: u64,
    machine_total: u64,
    /// Interrupt handling, mostly the loopback network: charged to no process.
    machine_irq: u64,
    /// Idle with a disk request outstanding.
    machine_iowait: u64,
}

/// Command name and CPU ticks (user + system, all threads) of a stat line.
fn stat_ticks(stat: &str) -> Option<(&str, u64)> {
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
    fn take(watch: &WatchArgs, include_self: bool) -> Self {
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
    fn usage_since(&self, earlier: &Self) -> Value {
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
async fn sample_window(
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
struct PgSnapshot {
    at: Instant,
    /// Next transaction id: each committed write transaction takes one.
    next_xid: i64,
    wal_bytes: f64,
    wal_syncs: i64,
}

impl PgSnapshot {
    /// None when the server keeps no WAL statistics (before PostgreSQL 14).
    async fn take(db: &mut PgConnection) -> Option<Self> {
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
    fn usage(start: Option<&Self>, end: Option<&Self>) -> Value {
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
fn status_kb(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

fn rss(args: &RssArgs) -> anyhow::Result<bool> {
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

// ---------------------------------------------------------------------------
// Machine, ports, broker

async fn machine(args: MachineArgs) -> anyhow::Result<bool> {
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
async fn rabbitmq_version(amqp_url: &str) -> Option<String> {
    let url = reqwest::Url::parse(amqp_url).ok()?;
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
fn announced_version(frame: &[u8]) -> Option<String> {
    let key = b"\x07versionS";
    let at = frame.windows(key.len()).position(|w| w == key)? + key.len();
    let len = usize::try_from(u32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?)).ok()?;
    let value = frame.get(at + 4..at + 4 + len)?;
    Some(String::from_utf8_lossy(value).into_owned())
}

fn free_port() -> anyhow::Result<bool> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    Ok(true)
}

async fn cleanup(args: BrokerArgs) -> anyhow::Result<bool> {
    let names = Names::new(&args.prefix);
    let connection = shared::amqp::connect(&Secret::new(args.amqp_url.clone()), "bench")
        .await
        .context("cannot connect to RabbitMQ")?;
    let mut complete = true;
    // A failed operation closes its channel, so each gets a fresh one.
    for queue in [&names.worker_queue, &names.dead_letter_queue] {
        let channel = connection.create_channel().await?;
        if let Err(error) = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
        {
            eprintln!("bench: cannot delete queue {queue}: {error}");
            complete = false;
        }
    }
    for exchange in [&names.exchange, &names.dead_letter_exchange] {
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

// ---------------------------------------------------------------------------
// Report

fn num(value: &Value, key: &str) -> Option<f64> {
    value.get(key).and_then(Value::as_f64)
}

fn cell(value: Option<f64>, digits: i32) -> String {
    match value {
        None => "–".to_owned(),
        Some(v) if digits == 0 => format!("{v:.0}"),
        Some(v) => format!("{:.*}", usize::try_from(digits).unwrap_or(1), v),
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "–",
    }
}

fn report(file: &Path) -> anyhow::Result<bool> {
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
                "Ingress: keep-alive HTTP/1.1 connections sending distinct signed `user.created` deliveries ({} bytes) back to back for {} s after {} s of warm-up. Baseline: pgbench, one `INSERT … ON CONFLICT DO NOTHING RETURNING id` of the same payload into an empty `webhook_events` per transaction (`-M prepared`, `-j 2`), same durations.",
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
            "End to end: {} distinct events sent at {} connections while the workers run; events/s = processed / (max(processed_at) − min(received_at)), published events/s likewise with published_at; latencies from the rows' timestamps (percentile_cont).",
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

    // CPU.
    let mut phases: Vec<(String, &Value)> = Vec::new();
    for l in of("baseline") {
        phases.push((
            format!(
                "baseline c={}",
                l.get("connections").and_then(Value::as_u64).unwrap_or(0)
            ),
            l,
        ));
    }
    for l in of("load") {
        phases.push((
            format!(
                "ingress c={}",
                l.get("connections").and_then(Value::as_u64).unwrap_or(0)
            ),
            l,
        ));
    }
    for l in of("e2e") {
        phases.push((
            format!(
                "end to end, {} worker(s)",
                l.get("workers").and_then(Value::as_u64).unwrap_or(0)
            ),
            l,
        ));
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
        for (title, l) in phases {
            let Some(cpu) = l.get("cpu").and_then(Value::as_object) else {
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
