//! Logs and spans for both daemons, and the trace every task carries.
//!
//! Logs always go to stderr (text or JSON lines). With an OTLP endpoint
//! (`--otlp-endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`) every
//! `tracing` span is also exported, in batches, over OTLP/HTTP with protobuf
//! bodies to `ENDPOINT/v1/traces` (plain HTTP: point it at a collector
//! on the machine or the site, which forwards). Without one nothing about
//! OpenTelemetry runs.
//!
//! A task's spans (its submission, each run of it, every step, model call
//! and connector call) are parented under a root derived from the task id
//! ([`aios_shared::trace`]), so they form one trace even across restarts,
//! and outgoing HTTP calls carry it in a `traceparent` header.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider};
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::cli::LogFormat;

/// Flushes exported spans when dropped; keep it alive for the process's life.
#[must_use = "spans are flushed when the guard drops"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(err) = provider.shutdown() {
                eprintln!("cannot flush the OTLP exporter: {err}");
            }
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter for {endpoint}: {source}")]
pub struct TelemetryError {
    endpoint: String,
    source: opentelemetry_otlp::ExporterBuildError,
}

/// Installs the global subscriber: the log layer (filtered by `AIOS_LOG`,
/// default `info,quinn=warn`) and, given `otlp` (a base URL), the span
/// exporter naming this process `service`. Only binaries call this.
pub fn init(format: LogFormat, otlp: Option<&str>, service: &'static str) -> Result<Telemetry, TelemetryError> {
    // reqwest 0.13 is built with rustls and no crypto provider of its own
    // (features unify between the OTLP exporter and rmcp's MCP client): it
    // takes the process's, which must be installed before any client is
    // built. Ring, as for QUIC.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    };
    let provider = match otlp.map(str::trim).filter(|e| !e.is_empty()) {
        None => None,
        Some(endpoint) => {
            let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(traces)
                .build()
                .map_err(|source| TelemetryError { endpoint: endpoint.to_owned(), source })?;
            let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
            Some(SdkTracerProvider::builder().with_resource(resource).with_batch_exporter(exporter).build())
        }
    };
    let spans = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    tracing_subscriber::registry().with(filter).with(logs).with(spans).init();
    Ok(Telemetry { provider })
}

/// Makes `span` a child of `task`'s root, so it joins the task's trace.
/// Does nothing when spans are not exported.
pub fn join_task_trace(span: &Span, task: &str) {
    let trace_id = TraceId::from_bytes(aios_shared::trace::task_trace_id(task));
    let root = SpanId::from_bytes(aios_shared::trace::task_root_span_id(task));
    let parent = SpanContext::new(trace_id, root, TraceFlags::SAMPLED, true, TraceState::default());
    // Fails only when no OpenTelemetry layer is installed.
    let _ = span.set_parent(Context::new().with_remote_span_context(parent));
}

/// The `traceparent` header for an outgoing call made in the current span,
/// when spans are exported.
pub fn traceparent() -> Option<String> {
    let context = Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| aios_shared::trace::traceparent(span_context.trace_id().to_bytes(), span_context.span_id().to_bytes()))
}
