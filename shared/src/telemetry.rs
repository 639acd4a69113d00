//! Log set-up: `RUST_LOG` filter (default `info`), pretty lines on a terminal
//! and one JSON object per line otherwise, unless `LOG_FORMAT` says.

use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Safe to call more than once (later calls
/// do nothing), which keeps tests that start several services simple.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = config
        .log_format
        .unwrap_or(if std::io::stderr().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        });
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    if config.otel_endpoint.is_some() {
        tracing::warn!("OTEL_EXPORTER_OTLP_ENDPOINT is set but trace export is not built yet; no traces are exported");
    }
}

/// A fresh W3C `traceparent` (version 00, sampled) for an event received
/// outside any incoming trace.
pub fn new_traceparent() -> String {
    use rand::Rng as _;
    let mut rng = rand::thread_rng();
    let trace: u128 = rng.gen_range(1..=u128::MAX);
    let span: u64 = rng.gen_range(1..=u64::MAX);
    format!("00-{trace:032x}-{span:016x}-01")
}
