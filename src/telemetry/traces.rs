//! OTLP trace export and W3C trace-context propagation through Kafka.
//!
//! ```text
//! HTTP span ─► kafka.produce span ─► traceparent/tracestate in the record headers
//!    … broker …
//! reader: extract ─► kafka.consume span (child of the producer's) ─► SpanContext kept
//!         with the parsed record (only when the header is there)
//! sink:   sink.write_batch span: parent = first sampled record, links to the others
//!         (at most `telemetry.trace_max_links`) ─► sink.write, dead_letter children
//! ```
//!
//! Configured by the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (unset: tracing is off, nothing below runs),
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` or `http/protobuf`, the default),
//! `OTEL_SERVICE_NAME` (default `gamestream`), `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG`. Every sampler follows a remote parent's sampled flag, so
//! a trace sampled out at the HTTP request is not sampled in again by a consumer.
//!
//! Export never blocks the pipeline: finished spans go to the SDK's batch processor,
//! which exports from its own thread. A bounded queue sits in front of it; a span that
//! finds it full, and every span of an export that failed (collector unreachable), is
//! counted in `gamestream_trace_export_dropped_total` and dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter, SpanProcessor,
};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::Registry;

use crate::config::TelemetryConfig;

/// Service name when `OTEL_SERVICE_NAME` is not set.
const DEFAULT_SERVICE_NAME: &str = "gamestream";

/// `telemetry.trace_max_links`, for the sink batch spans.
static MAX_LINKS: AtomicUsize = AtomicUsize::new(0);

pub use crate::trace_context::{continue_http_caller, enabled, extract, inject};

/// The OTel layer over the registry, as [`TracePipeline::layer`] builds it.
pub type OtelLayer = OpenTelemetryLayer<Registry, SdkTracer>;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot build the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// OTLP transport, from `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }

    fn parse(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            Some("grpc") => Protocol::Grpc,
            Some("http/protobuf") | Some("") | None => Protocol::HttpProtobuf,
            Some(other) => {
                eprintln!(
                    "gamestream: OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported; using http/protobuf"
                );
                Protocol::HttpProtobuf
            }
        }
    }
}

/// What the environment and the config say about traces.
#[derive(Debug, Clone)]
pub struct TraceSettings {
    pub endpoint: String,
    pub protocol: Protocol,
    pub service_name: String,
    pub sampler: Sampler,
    pub max_links: usize,
    pub max_queue_spans: usize,
}

impl TraceSettings {
    /// `None` when no OTLP endpoint is set: tracing stays off.
    pub fn from_env(config: &TelemetryConfig) -> Option<Self> {
        Self::from_vars(config, |name| std::env::var(name).ok())
    }

    /// As [`Self::from_env`] with the variables from `var` (unit tests).
    pub fn from_vars(
        config: &TelemetryConfig,
        var: impl Fn(&str) -> Option<String>,
    ) -> Option<Self> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
        Some(Self {
            endpoint,
            protocol: Protocol::parse(
                set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                    .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
                    .as_deref(),
            ),
            service_name: set("OTEL_SERVICE_NAME").unwrap_or_else(|| DEFAULT_SERVICE_NAME.into()),
            sampler: sampler(
                set("OTEL_TRACES_SAMPLER").as_deref(),
                set("OTEL_TRACES_SAMPLER_ARG").as_deref(),
            ),
            max_links: config.trace_max_links,
            max_queue_spans: config.trace_max_queue_spans,
        })
    }
}

/// The sampler an `OTEL_TRACES_SAMPLER` value names. Ratio and always-on samplers are
/// wrapped in `ParentBased`, so a span with a (remote) parent follows its sampled flag.
pub fn sampler(name: Option<&str>, arg: Option<&str>) -> Sampler {
    let ratio = || {
        arg.and_then(|a| a.trim().parse::<f64>().ok())
            .map_or(1.0, |r| r.clamp(0.0, 1.0))
    };
    match name.map(str::trim) {
        Some("always_off") => Sampler::AlwaysOff,
        Some("parentbased_always_off") => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        Some("traceidratio") | Some("parentbased_traceidratio") => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio())))
        }
        Some("always_on") | Some("parentbased_always_on") | None => {
            Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
        }
        Some(other) => {
            eprintln!(
                "gamestream: OTEL_TRACES_SAMPLER={other} is not supported; using parentbased_always_on"
            );
            Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
        }
    }
}

/// The running trace pipeline: provider, batch processor thread, exporter.
pub struct TracePipeline {
    provider: SdkTracerProvider,
    pub endpoint: String,
    pub protocol: Protocol,
}

impl TracePipeline {
    /// Builds the exporter and the provider; must run inside a Tokio runtime context
    /// (the gRPC channel's worker is spawned on it). Enables the propagation helpers.
    pub fn start(settings: &TraceSettings) -> Result<Self, TraceError> {
        let exporter = match settings.protocol {
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build(),
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build(),
        }
        .map_err(|source| TraceError::Exporter {
            endpoint: settings.endpoint.clone(),
            source,
        })?;
        let queued = Arc::new(AtomicUsize::new(0));
        let exporter = CountingExporter {
            inner: exporter,
            queued: Arc::clone(&queued),
        };
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(settings.max_queue_spans)
                    .build(),
            )
            .build();
        let processor = BoundedProcessor {
            inner: batch,
            queued,
            limit: settings.max_queue_spans,
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(settings.sampler.clone())
            .with_max_links_per_span(u32::try_from(settings.max_links).unwrap_or(u32::MAX))
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .build(),
            )
            .build();
        MAX_LINKS.store(settings.max_links, Ordering::Relaxed);
        crate::trace_context::set_enabled(true);
        Ok(Self {
            provider,
            endpoint: settings.endpoint.clone(),
            protocol: settings.protocol,
        })
    }

    /// The `tracing` layer that turns spans into OTel spans of this pipeline.
    pub fn layer(&self) -> OtelLayer {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("gamestream"))
            .with_threads(false)
            .with_location(false)
    }

    /// Flushes what is queued and stops the processor thread.
    pub fn shutdown(self) {
        crate::trace_context::set_enabled(false);
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace export did not shut down cleanly");
        }
    }
}

/// Counts spans of failed exports as dropped, and tells [`BoundedProcessor`] how many
/// spans have left its queue.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let count = batch.len();
        self.queued.fetch_sub(count, Ordering::Relaxed);
        let result = self.inner.export(batch).await;
        if result.is_err() {
            metrics::counter!("gamestream_trace_export_dropped_total", "reason" => "export_failed")
                .increment(count as u64);
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A batch processor whose queue bound is enforced (and counted) here, since the SDK
/// drops silently when its own queue is full.
#[derive(Debug)]
struct BoundedProcessor {
    inner: BatchSpanProcessor,
    /// Spans handed to `inner` and not yet taken by an export.
    queued: Arc<AtomicUsize>,
    limit: usize,
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.limit {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!("gamestream_trace_export_dropped_total", "reason" => "queue_full")
                .increment(1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Records the consumption of one record under its producer's context; returns the
/// context later spans link to. An unsampled remote context is passed on untouched
/// (no span: the trace was sampled out at its start).
pub fn consume(
    remote: SpanContext,
    topic: &str,
    partition: i32,
    offset: i64,
    event_id: Option<&str>,
) -> SpanContext {
    if !remote.is_sampled() {
        return remote;
    }
    let span = tracing::info_span!(
        "kafka.consume",
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.destination.name = topic,
        messaging.destination.partition.id = partition,
        messaging.kafka.offset = offset,
        messaging.message.id = event_id,
    );
    if span
        .set_parent(Context::new().with_remote_span_context(remote.clone()))
        .is_err()
    {
        return remote;
    }
    span.context().span().span_context().clone()
}

/// The span of one sink batch write, for the contexts of its records. Its parent is the
/// first sampled record context and the others are links (at most
/// `telemetry.trace_max_links` in all). A batch whose records all carry unsampled
/// contexts gets no span; one without any context is a root the sampler decides on.
pub fn batch_span<'a>(
    sink: &'static str,
    records: usize,
    contexts: impl Iterator<Item = &'a SpanContext>,
) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let max_links = MAX_LINKS.load(Ordering::Relaxed);
    let mut any = false;
    let mut sampled: Vec<&SpanContext> = Vec::new();
    for cx in contexts {
        any = true;
        if cx.is_sampled() {
            sampled.push(cx);
            if sampled.len() > max_links {
                break;
            }
        }
    }
    if any && sampled.is_empty() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "sink.write_batch",
        otel.kind = "internal",
        sink,
        records,
        links = sampled.len().saturating_sub(1),
    );
    if let Some((parent, others)) = sampled.split_first() {
        let _ = span.set_parent(Context::new().with_remote_span_context((*parent).clone()));
        for cx in others.iter().take(max_links) {
            span.add_link_with_attributes(
                (*cx).clone(),
                vec![KeyValue::new("link.kind", "batched_record")],
            );
        }
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TelemetryConfig {
        TelemetryConfig {
            log_format: crate::config::LogFormat::Text,
            log_level: "info".into(),
            metrics_upkeep_interval: Duration::from_secs(5),
            trace_max_links: 4,
            trace_max_queue_spans: 16,
        }
    }

    #[test]
    fn no_endpoint_means_no_tracing() {
        assert!(TraceSettings::from_vars(&config(), |_| None).is_none());
        let blank = |name: &str| (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| " ".to_owned());
        assert!(TraceSettings::from_vars(&config(), blank).is_none());
    }

    #[test]
    fn standard_variables_are_read() {
        let vars = |name: &str| match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4317".to_owned()),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("grpc".to_owned()),
            "OTEL_SERVICE_NAME" => Some("gs-eu".to_owned()),
            "OTEL_TRACES_SAMPLER" => Some("traceidratio".to_owned()),
            "OTEL_TRACES_SAMPLER_ARG" => Some("0.1".to_owned()),
            _ => None,
        };
        let settings = TraceSettings::from_vars(&config(), vars).expect("endpoint set");
        assert_eq!(settings.endpoint, "http://collector:4317");
        assert_eq!(settings.protocol, Protocol::Grpc);
        assert_eq!(settings.service_name, "gs-eu");
        assert_eq!(
            format!("{:?}", settings.sampler),
            format!(
                "{:?}",
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.1)))
            )
        );
        assert_eq!(settings.max_links, 4);
    }

    #[test]
    fn protocol_defaults_to_http_protobuf() {
        assert_eq!(Protocol::parse(None), Protocol::HttpProtobuf);
        assert_eq!(Protocol::parse(Some("grpc")), Protocol::Grpc);
    }
}
