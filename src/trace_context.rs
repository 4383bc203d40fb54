//! W3C trace context (`traceparent`, `tracestate`) carried in Kafka record headers and
//! HTTP requests.
//!
//! The propagation half of tracing, kept apart from the OTLP export in
//! [`crate::telemetry::traces`] so that the stores' write paths (the ingest producer
//! injects, the readers extract) depend on nothing above them. Everything here is a
//! no-op while no exporter runs ([`enabled`] is false).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header that marks a record as carrying a trace context.
const TRACEPARENT: &str = "traceparent";

/// Whether spans are exported at all; read on hot paths before any other work.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether an OTLP exporter runs in this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Set by the trace pipeline when its exporter starts and stops.
pub(crate) fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Writes `span`'s W3C context (`traceparent`, `tracestate`) into Kafka record headers.
/// Does nothing when tracing is off or the span has no OTel context.
pub fn inject(span: &tracing::Span, headers: &mut BTreeMap<String, Vec<u8>>) {
    if !enabled() {
        return;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// The remote context in a record's headers, when tracing is on and the record has a
/// valid `traceparent`.
pub fn extract(headers: &BTreeMap<String, Vec<u8>>) -> Option<SpanContext> {
    if !enabled() || !headers.contains_key(TRACEPARENT) {
        return None;
    }
    remote_context(&HeaderExtractor(headers))
}

/// The valid remote context a W3C `traceparent` (and `tracestate`) carries, if any.
fn remote_context(carrier: &dyn Extractor) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(carrier);
    let remote = cx.span().span_context().clone();
    remote.is_valid().then_some(remote)
}

/// Makes an HTTP request's `span` continue its caller's trace, from the request's
/// `traceparent` (and `tracestate`) headers. With the default `parentbased_*`
/// samplers the caller's sampled flag decides, so a traced client sees its call and
/// everything downstream (publish, consume, sink writes) in its own trace. A missing
/// or invalid `traceparent` is ignored and the request starts a trace of its own, as
/// the W3C Trace Context recommendation asks; nothing happens when tracing is off.
pub fn continue_http_caller(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) {
    let Some(traceparent) = traceparent else {
        return;
    };
    if !enabled() {
        return;
    }
    if let Some(remote) = remote_context(&RequestHeaders {
        traceparent,
        tracestate,
    }) {
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    }
}

struct HeaderInjector<'a>(&'a mut BTreeMap<String, Vec<u8>>);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value.into_bytes());
    }
}

struct HeaderExtractor<'a>(&'a BTreeMap<String, Vec<u8>>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The two trace-context headers of an HTTP request.
struct RequestHeaders<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for RequestHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, "tracestate"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_the_w3c_context() {
        let mut headers = BTreeMap::new();
        headers.insert(
            TRACEPARENT.to_owned(),
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec(),
        );
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        let remote = cx.span().span_context().clone();
        assert!(remote.is_valid() && remote.is_sampled());
        let mut out = BTreeMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut out));
        assert_eq!(out[TRACEPARENT], headers[TRACEPARENT]);
    }
}
