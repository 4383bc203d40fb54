//! The global `tracing` subscriber: log lines on stderr, and the OTel layer when traces
//! are on.
//!
//! Logs are filtered by `RUST_LOG` (default `telemetry.log_level`); that filter is the
//! log layer's own, so `RUST_LOG=warn` quiets the logs without hiding spans from the
//! OTel layer (which takes this crate's spans at info and above). `LOG_FORMAT=json`
//! writes one JSON object per line: `timestamp`, `level`, `target`, the event's fields,
//! `span` (the innermost span's name) and, inside a span with an OTel context,
//! `trace_id` and `span_id`, the keys Grafana joins logs and Tempo traces by.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

use super::traces::OtelLayer;
use std::io::IsTerminal;

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the subscriber; `false` when one was installed before (a second daemon in a
/// test process keeps the first).
pub fn install(config: &TelemetryConfig, otel: Option<OtelLayer>) -> bool {
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    // Spans of this crate only: dependencies' spans would flood the trace.
    let otel = otel.map(|layer| {
        layer.with_filter(Targets::new().with_target(env!("CARGO_CRATE_NAME"), Level::INFO))
    });
    let registry = tracing_subscriber::registry().with(otel);
    let result = match config.log_format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colours only for a person at a terminal: a file or a pipe (a log
                    // collector) gets plain text. NO_COLOR turns them off anywhere.
                    .with_ansi(colour(
                        std::io::stderr().is_terminal(),
                        std::env::var_os("NO_COLOR"),
                    ))
                    .with_filter(filter()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonLine)
                    .with_writer(std::io::stderr)
                    .with_filter(filter()),
            )
            .try_init(),
    };
    result.is_ok()
}

/// Whether text logs carry ANSI colours: only on a terminal, and never with `NO_COLOR`
/// set to anything non-empty (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// One JSON object per event, with the OTel ids of the current span.
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("target".into(), Value::String(meta.target().to_owned()));
        event.record(&mut JsonFields(&mut line));
        let _ = ctx;
        // The registry's current span, not the log layer's: spans this layer's filter
        // hides (RUST_LOG=warn hides info spans) still name the trace the line is in.
        let current = tracing::Span::current();
        if let Some(meta) = current.metadata() {
            line.insert("span".into(), Value::String(meta.name().to_owned()));
        }
        if super::traces::enabled() && !current.is_none() {
            let cx = current.context();
            let span_context = cx.span().span_context().clone();
            if span_context.is_valid() {
                line.insert(
                    "trace_id".into(),
                    Value::String(span_context.trace_id().to_string()),
                );
                line.insert(
                    "span_id".into(),
                    Value::String(span_context.span_id().to_string()),
                );
            }
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Collects an event's fields into the line.
struct JsonFields<'a>(&'a mut Map<String, Value>);

impl Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
}
