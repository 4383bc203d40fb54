//! Logs, metrics and traces: everything an operator sees of the daemon.
//!
//! ```text
//! tracing spans/events ─┬─► logs.rs    fmt layer: text, or one JSON object per line with
//!                       │               trace_id/span_id (LOG_FORMAT=json), RUST_LOG filter
//!                       └─► traces.rs  tracing-opentelemetry layer ─► BatchSpanProcessor
//!                                       (own thread) ─► OTLP gRPC or HTTP/protobuf
//! metrics::counter!/… ────► metrics.rs Prometheus recorder, rendered by `/metrics`
//! ```
//!
//! Traces are off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `_TRACES_ENDPOINT`) is set:
//! then no OTel layer, no processor thread and no exporter exist, and the propagation
//! helpers in [`traces`] return at their first check.

pub mod logs;
pub mod metrics;
pub mod traces;

pub use self::metrics::{metrics_handle, register_metrics, spawn_metrics_upkeep};

use crate::config::TelemetryConfig;

/// Owns the trace pipeline of the process; [`TelemetryGuard::shutdown`] flushes it.
#[must_use = "dropping the guard without shutdown loses the spans still queued"]
pub struct TelemetryGuard {
    traces: Option<traces::TracePipeline>,
}

impl TelemetryGuard {
    /// Exports the spans still queued (bounded by the exporter's timeout) and stops the
    /// processor thread. Call it outside `block_on` while the runtime still exists: the
    /// gRPC exporter's connection lives on it.
    pub fn shutdown(self) {
        if let Some(traces) = self.traces {
            traces.shutdown();
        }
    }
}

/// Installs the global subscriber (logs, and traces when an OTLP endpoint is set) and
/// registers every metric at zero. Call it inside a Tokio runtime context (the gRPC
/// exporter connects on it). A second call in one process (tests) changes nothing.
pub fn init(config: &TelemetryConfig) -> TelemetryGuard {
    let _ = metrics_handle();
    register_metrics();
    let pipeline = match traces::TraceSettings::from_env(config) {
        Some(settings) => match traces::TracePipeline::start(&settings) {
            Ok(pipeline) => Some(pipeline),
            Err(e) => {
                // Logs are not up yet; stderr is where the operator looks.
                eprintln!("gamestream: traces disabled: {e}");
                None
            }
        },
        None => None,
    };
    let otel_layer = pipeline.as_ref().map(traces::TracePipeline::layer);
    let installed = logs::install(config, otel_layer);
    match pipeline {
        Some(p) if installed => {
            tracing::info!(endpoint = %p.endpoint, protocol = p.protocol.as_str(), "exporting traces over OTLP");
            TelemetryGuard { traces: Some(p) }
        }
        Some(p) => {
            // Another subscriber was installed first: our layer is unused, stop the thread.
            p.shutdown();
            TelemetryGuard { traces: None }
        }
        None => TelemetryGuard { traces: None },
    }
}
