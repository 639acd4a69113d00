//! The public ingress under abuse, through the real binary: slow request
//! heads, requests refused before their body, a flood of unfinished large
//! bodies, and a flood of forged deliveries in the log.

#![allow(clippy::unwrap_used)]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use e2e::{
    broker::TestBroker,
    db::TestDb,
    deliveries::{new_id, new_secret, now, user_created, Delivery},
    process::Service,
    wait_for,
};
use futures_util::{stream, StreamExt as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

const DEADLINE: Duration = Duration::from_secs(60);

/// The ingress's peak memory with every attack of this file at its defaults.
/// README ("Exposing the ingress") explains the figure.
const MEMORY_BOUND: u64 = 160 * 1024 * 1024;

/// A request head with plausible, well-formed svix headers that no secret
/// signed, declaring `length` body bytes.
fn forged_head(addr: &str, length: usize) -> String {
    let signature = STANDARD.encode(rand::random::<[u8; 32]>());
    format!(
        "POST /webhooks/clerk HTTP/1.1\r\nHost: {addr}\r\nsvix-id: {}\r\nsvix-timestamp: {}\r\n\
         svix-signature: v1,{signature}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n",
        new_id(),
        now()
    )
}

/// Reads until the peer closes or `deadline` passes; returns what came.
async fn read_answer(stream: &mut TcpStream, deadline: Duration) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(deadline, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

async fn metric(ops_addr: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{ops_addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

struct World {
    db: TestDb,
    broker: TestBroker,
    secret: String,
}

async fn world() -> World {
    World {
        db: TestDb::new().await,
        broker: TestBroker::new().await,
        secret: new_secret(),
    }
}

impl World {
    fn ingress(&self, extra: &[(&str, &str)]) -> (Service, String, String) {
        Service::ingress_run(&self.db.url(None), &self.broker.prefix, &self.secret, extra)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_that_never_finish_their_request_head_are_closed_by_the_header_timeout() {
    let w = world().await;
    let (_ingress, addr, ops_addr) = w.ingress(&[("INGRESS_HEADER_READ_TIMEOUT_SECS", "1")]);
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"POST /webhooks/clerk HTTP/1.1\r\nHost: x\r\nsvix-id: msg_")
            .await
            .unwrap();
        slow.push(stream);
    }

    // Each is closed by the server (EOF or a reset), with no answer but the
    // connection's end.
    let closed = stream::iter(slow)
        .map(|mut stream| async move {
            let mut rest = Vec::new();
            let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest)).await;
            read.is_ok()
        })
        .buffer_unordered(200)
        .filter(|closed| std::future::ready(*closed))
        .count()
        .await;

    assert_eq!(
        closed, 200,
        "every slow connection was closed by the server"
    );
    let timeouts = wait_for("the header timeouts to be counted", DEADLINE, || async {
        metric(&ops_addr, "clerk_ingress_header_timeouts_total")
            .await
            .filter(|n| *n >= 200.0)
    })
    .await;
    assert_eq!(timeouts, 200.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_svix_headers_is_refused_before_its_body_is_sent() {
    let w = world().await;
    let (_ingress, addr, _) = w.ingress(&[]);
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /webhooks/clerk HTTP/1.1\r\nHost: {addr}\r\ncontent-type: application/json\r\n\
                 content-length: 500000\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();

    // Not one byte of the body is sent: the answer comes anyway.
    let answer = read_answer(&mut stream, DEADLINE).await;

    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("missing_svix_headers"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declared_length_over_the_limit_is_refused_before_the_body_is_sent() {
    let w = world().await;
    let (_ingress, addr, _) = w.ingress(&[]);
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(forged_head(&addr, 5_000_000).as_bytes())
        .await
        .unwrap();

    let answer = read_answer(&mut stream, DEADLINE).await;

    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_unfinished_large_bodies_stays_within_the_memory_bound_and_real_deliveries_pass()
{
    const ATTACKERS: usize = 600;
    const DECLARED: usize = 1_000_000;
    let w = world().await;
    let (ingress, addr, ops_addr) = w.ingress(&[]);
    let sent = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut attackers = Vec::new();
    for _ in 0..ATTACKERS {
        let (addr, sent, refused, stop) =
            (addr.clone(), sent.clone(), refused.clone(), stop.clone());
        attackers.push(tokio::spawn(async move {
            let Ok(stream) = TcpStream::connect(&addr).await else {
                sent.fetch_add(1, Ordering::SeqCst);
                return;
            };
            let (mut reader, mut writer) = stream.into_split();
            let head = forged_head(&addr, DECLARED);
            // All but the last 1000 bytes, then nothing more.
            let body = vec![b' '; DECLARED - 1000];
            let written = async {
                writer.write_all(head.as_bytes()).await?;
                writer.write_all(&body).await
            };
            let read = async {
                let mut answer = Vec::new();
                let _ = reader.read_to_end(&mut answer).await;
                answer
            };
            tokio::pin!(written, read);
            tokio::select! {
                _ = &mut written => {
                    sent.fetch_add(1, Ordering::SeqCst);
                    tokio::select! {
                        answer = &mut read => if answer.starts_with(b"HTTP/1.1 503") {
                            refused.fetch_add(1, Ordering::SeqCst);
                        },
                        () = stop.cancelled() => {}
                    }
                }
                answer = &mut read => {
                    if answer.starts_with(b"HTTP/1.1 503") {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            }
            stop.cancelled().await;
        }));
    }
    wait_for("every attacker to send or be refused", DEADLINE, || async {
        (sent.load(Ordering::SeqCst) == ATTACKERS).then_some(())
    })
    .await;

    let delivery = Delivery::signed(&w.secret, user_created("user_in_the_flood"));
    let status = delivery.post_to(&addr).await;
    let peak = ingress.peak_rss_bytes();
    let overloaded = metric(
        &ops_addr,
        "clerk_ingress_requests_total{outcome=\"overloaded\"}",
    )
    .await
    .unwrap_or_default();
    eprintln!(
        "peak {} MiB, {overloaded} refused with 503, {} attackers saw it",
        peak >> 20,
        refused.load(Ordering::SeqCst)
    );
    stop.cancel();
    for attacker in attackers {
        attacker.await.unwrap();
    }

    assert_eq!(
        status,
        reqwest::StatusCode::OK,
        "a real delivery still passes"
    );
    assert!(
        peak < MEMORY_BOUND,
        "peak resident memory {} MiB over the bound of {} MiB",
        peak >> 20,
        MEMORY_BOUND >> 20
    );
    assert!(
        overloaded >= 1.0,
        "bodies beyond the permits were refused with 503"
    );
    assert!(
        refused.load(Ordering::SeqCst) >= 1,
        "some attackers saw 503"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn three_thousand_forged_deliveries_add_a_few_log_lines_and_are_all_counted() {
    const FORGED: usize = 3000;
    let w = world().await;
    let (mut ingress, addr, ops_addr) = w.ingress(&[]);
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/webhooks/clerk");
    let forged_secret = new_secret();

    let statuses: Vec<u16> = stream::iter(0..FORGED)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            let delivery =
                Delivery::signed(&forged_secret, user_created(&format!("user_forged_{i}")));
            async move {
                http.post(url)
                    .header("svix-id", &delivery.id)
                    .header("svix-timestamp", &delivery.timestamp)
                    .header("svix-signature", &delivery.signature)
                    .body(delivery.body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let counted = metric(
        &ops_addr,
        "clerk_ingress_requests_total{outcome=\"invalid_signature\"}",
    )
    .await;
    ingress.terminate();
    let (status, stderr) = ingress.wait_exit(DEADLINE);

    assert!(statuses.iter().all(|s| *s == 400), "all refused with 400");
    assert_eq!(counted, Some(FORGED as f64), "each refusal is counted");
    assert!(status.success());
    let refusal_lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("refus"))
        .collect();
    assert!(
        refusal_lines.len() <= 24,
        "{} log lines for {FORGED} refusals:\n{}",
        refusal_lines.len(),
        refusal_lines.join("\n")
    );
    let summarised: u64 = refusal_lines
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|log| log["message"] == "webhook refusals summary")
        .filter_map(|log| log["total"].as_u64())
        .sum();
    assert_eq!(
        summarised, FORGED as u64,
        "the summaries account for every refusal"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keep_alive_connection_left_idle_is_closed_by_the_idle_timeout() {
    let w = world().await;
    // The header timeout alone would keep the connection for 300 s.
    let (_ingress, addr, _) = w.ingress(&[
        ("INGRESS_HEADER_READ_TIMEOUT_SECS", "300"),
        ("INGRESS_IDLE_TIMEOUT_SECS", "1"),
    ]);
    let delivery = Delivery::signed(&w.secret, user_created("user_keep_alive"));
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /webhooks/clerk HTTP/1.1\r\nHost: {addr}\r\nsvix-id: {}\r\nsvix-timestamp: {}\r\n\
         svix-signature: {}\r\ncontent-length: {}\r\n\r\n",
        delivery.id,
        delivery.timestamp,
        delivery.signature,
        delivery.body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&delivery.body).await.unwrap();

    // The response comes, then the connection ends without another request.
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);

    assert!(
        ended.is_ok(),
        "the server closed the idle connection: {answer}"
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#"{"status":"ok"}"#), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let w = world().await;
    let (_ingress, addr, ops_addr) = w.ingress(&[
        ("INGRESS_MAX_CONNECTIONS", "2"),
        ("INGRESS_HEADER_READ_TIMEOUT_SECS", "300"),
    ]);
    let first = TcpStream::connect(&addr).await.unwrap();
    let _second = TcpStream::connect(&addr).await.unwrap();
    wait_for("two open connections", DEADLINE, || async {
        metric(&ops_addr, "clerk_ingress_open_connections")
            .await
            .filter(|n| *n == 2.0)
    })
    .await;
    let mut third = TcpStream::connect(&addr).await.unwrap();
    third
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let open_with_three_clients = metric(&ops_addr, "clerk_ingress_open_connections").await;

    drop(first);
    let answer = read_answer(&mut third, DEADLINE).await;

    assert_eq!(
        open_with_three_clients,
        Some(2.0),
        "the third was not accepted"
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_never_logs_a_broker_password_whatever_its_characters() {
    let w = world().await;
    for url in [
        "amqp://guest:se/cr3t-pw@127.0.0.1:1/%2f",
        "amqp://guest:se%2Fcr3t-pw@127.0.0.1:1/%2f",
    ] {
        let (mut ingress, addr, _) = w.ingress(&[("AMQP_URL", url)]);
        let delivery = Delivery::signed(&w.secret, user_created("user_unpublished"));
        let status = delivery.post_to(&addr).await;
        // The relay tries to publish the stored event and fails.
        ingress.wait_for_line("relay could not publish", DEADLINE);
        ingress.terminate();
        let (_, stderr) = ingress.wait_exit(DEADLINE);

        assert_eq!(status, reqwest::StatusCode::OK);
        assert!(!stderr.contains("cr3t"), "{url}: {stderr}");
    }
}
