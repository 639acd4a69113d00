//! Load generation: distinct signed deliveries, keep-alive HTTP/1.1
//! connections sending them back to back, and the `load` step (answers per
//! second and latency quantiles of the ingress alone).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::*;
use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt as _, Full};
use hyper::{client::conn::http1::SendRequest, header, Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::json;
use shared::svix::{sign, SigningKey};
use sqlx::{Connection as _, PgConnection};
use tokio::net::TcpStream;

#[derive(Args, Debug)]
pub(crate) struct LoadArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 15.0)]
    pub(crate) duration: f64,
    /// Seconds of load before the measurement starts.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) warmup: f64,
    /// The ingress's database, to count commits and WAL flushes meanwhile.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<String>,
    #[command(flatten)]
    pub(crate) watch: WatchArgs,
}

// ---------------------------------------------------------------------------
// Deliveries

pub(crate) fn template_body() -> Vec<u8> {
    e2e::deliveries::user_created(USER_PLACEHOLDER)
}

/// Makes distinct signed deliveries: a fresh svix-id and Clerk user id each.
pub(crate) struct Deliveries {
    pub(crate) key: SigningKey,
    pub(crate) template: Vec<u8>,
    /// Where the user id placeholder sits in the template.
    pub(crate) spots: Vec<usize>,
    /// Random per process, so ids never repeat across runs and phases.
    pub(crate) tag: String,
    pub(crate) next: AtomicU64,
    pub(crate) uri: Uri,
    pub(crate) authority: String,
    pub(crate) addr: String,
}

impl Deliveries {
    pub(crate) fn new(target: &TargetArgs) -> anyhow::Result<Self> {
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
    pub(crate) fn id_pattern(&self) -> String {
        format!("msg\\_{}\\_%", self.tag)
    }

    pub(crate) fn body_bytes(&self) -> usize {
        self.template.len()
    }

    /// The next delivery, signed now.
    pub(crate) fn request(&self) -> anyhow::Result<Request<Full<Bytes>>> {
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

pub(crate) async fn connect(addr: &str) -> anyhow::Result<Sender> {
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

pub(crate) enum Answer {
    Ok,
    Duplicate,
    Refused(String),
}

/// Sends one request and reads the whole answer.
pub(crate) async fn exchange(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<Answer> {
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
pub(crate) struct Tally {
    pub(crate) sent: u64,
    pub(crate) ok: u64,
    pub(crate) duplicates: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// Answers that completed inside the measured window.
    pub(crate) window_ok: u64,
    pub(crate) window_errors: u64,
    pub(crate) window_latencies_us: Vec<u32>,
}

impl Tally {
    pub(crate) fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }

    pub(crate) fn merge(&mut self, other: Tally) {
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
pub(crate) struct Schedule {
    pub(crate) window_start: Instant,
    pub(crate) window_end: Instant,
    /// Stop after this many requests in all (a fixed-count run).
    pub(crate) count: Option<u64>,
}

/// One keep-alive connection sending requests back to back.
pub(crate) async fn connection_loop(
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

pub(crate) async fn run_connections(
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
pub(crate) fn quantile_ms(sorted_us: &[u32], q: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = (q * sorted_us.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted_us.len()) - 1;
    Some(round(f64::from(sorted_us[index]) / 1000.0, 2))
}

pub(crate) fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

pub(crate) fn secs(value: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("{what} must be a positive number"))
}

pub(crate) async fn load(args: LoadArgs) -> anyhow::Result<bool> {
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

pub(crate) fn fmt_opt(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}
