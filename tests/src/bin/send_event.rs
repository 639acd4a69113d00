//! `send-event`: signs an example Clerk event the way Svix does and posts it to
//! a running ingress. Development aid behind `scripts/send-example`.
//!
//! The secret comes from `CLERK_WEBHOOK_SECRET` (the first entry when several
//! are configured) or, when that is unset, from a file (`.dev/webhook-secret`
//! by default, written by `scripts/up`). The secret is never printed.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};
use clap::Parser;
use shared::svix::{sign, SigningKey};

const DEFAULT_URL: &str = "http://127.0.0.1:8080/webhooks/clerk";

/// Signs an event file with the webhook secret and posts it to the ingress.
#[derive(Parser, Debug)]
#[command(name = "send-event", version)]
struct Args {
    /// The event body to send, sent byte for byte (`-` reads standard input).
    file: PathBuf,

    /// Webhook endpoint.
    #[arg(env = "INGRESS_URL", default_value = DEFAULT_URL)]
    url: String,

    /// The svix-id to send; a fresh `msg_…` id when omitted. Sending the same
    /// id twice shows the ingress's deduplication.
    #[arg(long)]
    id: Option<String>,

    /// Where to read the secret when CLERK_WEBHOOK_SECRET is not set.
    #[arg(
        long,
        env = "CLERK_WEBHOOK_SECRET_FILE",
        default_value = ".dev/webhook-secret"
    )]
    secret_file: PathBuf,

    /// Give up on the request after this many seconds.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("send-event: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let key = signing_key(&args.secret_file)?;
    let body = read_body(&args.file)?;
    let id = match args.id {
        Some(id) if id.trim().is_empty() => bail!("--id must not be empty"),
        Some(id) => id,
        None => format!("msg_{}", uuid::Uuid::new_v4().simple()),
    };
    let timestamp = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the system clock is before 1970")?
            .as_secs(),
    )
    .context("the system clock is out of range")?;
    let signature = sign(&key, &id, timestamp, &body);

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs.max(1)))
        .build()
        .context("cannot build the HTTP client")?;
    println!("POST {} svix-id={id}", args.url);
    let response = client
        .post(&args.url)
        .header("content-type", "application/json")
        .header("svix-id", &id)
        .header("svix-timestamp", timestamp.to_string())
        .header("svix-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {}: {}", args.url, root_cause(&e)))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .context("cannot read the response body")?;
    println!("{status}");
    println!("{text}");
    if !status.is_success() {
        bail!("the ingress answered {status}");
    }
    Ok(())
}

/// The first configured secret from the environment, else from `file`.
fn signing_key(file: &Path) -> anyhow::Result<SigningKey> {
    let (list, origin) = match std::env::var("CLERK_WEBHOOK_SECRET") {
        Ok(value) if !value.trim().is_empty() => (value, "CLERK_WEBHOOK_SECRET".to_owned()),
        _ => {
            let value = std::fs::read_to_string(file).with_context(|| {
                format!(
                    "CLERK_WEBHOOK_SECRET is not set and {} cannot be read (run scripts/up first)",
                    file.display()
                )
            })?;
            (value, file.display().to_string())
        }
    };
    let first = list
        .split(|c: char| c == ',' || c.is_whitespace())
        .find(|s| !s.is_empty())
        .with_context(|| format!("{origin} holds no secret"))?;
    SigningKey::parse(first).with_context(|| format!("the secret in {origin} is unusable"))
}

/// The innermost error of a chain: for a failed request, the useful part
/// ("Connection refused", "operation timed out").
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

fn read_body(file: &Path) -> anyhow::Result<Vec<u8>> {
    if file == Path::new("-") {
        let mut body = Vec::new();
        std::io::stdin()
            .read_to_end(&mut body)
            .context("cannot read standard input")?;
        return Ok(body);
    }
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}
