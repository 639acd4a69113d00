//! Logs and traces. Logs: `RUST_LOG` filter (default `info`), pretty lines on
//! a terminal and one JSON object per line otherwise, unless `LOG_FORMAT`
//! says. Traces: exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set; the trace context travels from the ingress to the worker in each
//! message's W3C `traceparent` header.

use std::{collections::HashMap, io::IsTerminal};

use opentelemetry::{
    propagation::TextMapPropagator,
    trace::{SpanContext, TraceContextExt as _, TracerProvider as _},
    Context,
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _, EnvFilter, Layer,
};

use crate::config::{LogConfig, LogFormat};

/// Keeps the trace exporter alive; flushes it when dropped (at exit).
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber: logs, and trace export when configured.
/// Safe to call more than once (later calls do nothing).
pub fn init(config: &LogConfig, service: &'static str) -> TelemetryGuard {
    let provider = config.otel_endpoint.as_deref().and_then(|endpoint| {
        match tracer_provider(endpoint, service) {
            Ok(provider) => Some(provider),
            Err(error) => {
                eprintln!("{service}: trace export disabled: {error}");
                None
            }
        }
    });
    install(config, service, provider.clone());
    if let Some(endpoint) = &config.otel_endpoint {
        if provider.is_some() {
            tracing::info!(endpoint = %endpoint, "exporting traces over OTLP/HTTP");
        }
    }
    TelemetryGuard { provider }
}

/// Installs the global subscriber with traces going to `provider` (tests use
/// an in-memory exporter).
pub fn install(config: &LogConfig, service: &'static str, provider: Option<SdkTracerProvider>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = config
        .log_format
        .unwrap_or(if std::io::stderr().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        });
    let logs = match format {
        LogFormat::Pretty => fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let traces = provider.map(|provider| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing_opentelemetry::layer().with_tracer(provider.tracer(service))
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init();
}

fn tracer_provider(endpoint: &str, service: &'static str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_headers(HashMap::new())
        .build()
        .map_err(|e| e.to_string())?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// The W3C `traceparent` of the current span when it is being traced, else
/// a fresh one, so every stored event carries a trace context.
pub fn current_traceparent() -> String {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    if span_context.is_valid() {
        format_traceparent(span_context)
    } else {
        new_traceparent()
    }
}

fn format_traceparent(span_context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        span_context.trace_id(),
        span_context.span_id(),
        span_context.trace_flags().to_u8()
    )
}

/// Makes `span` a child of the remote span named by `traceparent`.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    let carrier: HashMap<String, String> =
        HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent: Context = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// A fresh W3C `traceparent` (version 00, sampled) for an event received
/// outside any trace.
pub fn new_traceparent() -> String {
    use rand::Rng as _;
    let mut rng = rand::thread_rng();
    let trace: u128 = rng.gen_range(1..=u128::MAX);
    let span: u64 = rng.gen_range(1..=u64::MAX);
    format!("00-{trace:032x}-{span:016x}-01")
}
