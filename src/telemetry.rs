//! Logs and metrics setup.
//!
//! Logs: `tracing` with `RUST_LOG` filters (default from `telemetry.log_level`), as text
//! or one JSON object per line (`LOG_FORMAT=json`). Metrics: the `metrics` facade with a
//! Prometheus recorder whose text `/metrics` serves.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global log subscriber. Later calls (tests) are no-ops.
pub fn init_logs(config: &TelemetryConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.log_format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // Already initialised (a second daemon in one test process): keep the first.
    let _ = result;
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .unwrap_or_else(|_| unreachable!("the bucket list above is not empty"))
                .set_buckets_for_metric(
                    Matcher::Full("producer_batch_records".to_owned()),
                    &[
                        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
                        5000.0,
                    ],
                )
                .unwrap_or_else(|_| unreachable!("the bucket list above is not empty"))
                .set_buckets_for_metric(
                    Matcher::Full("producer_batch_bytes".to_owned()),
                    &[
                        1024.0,
                        4096.0,
                        16384.0,
                        65536.0,
                        262_144.0,
                        1_048_576.0,
                        4_194_304.0,
                    ],
                )
                .unwrap_or_else(|_| unreachable!("the bucket list above is not empty"))
                .build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder is installed; then ours is simply unused.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Folds histogram samples into their buckets every `interval` until `shutdown`. The
/// recorder built by [`metrics_handle`] holds every raw sample until a render or an
/// upkeep, so a process nobody scrapes would otherwise grow without bound.
pub fn spawn_metrics_upkeep(
    handle: PrometheusHandle,
    interval: std::time::Duration,
    shutdown: crate::shutdown::Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => handle.run_upkeep(),
                () = shutdown.wait() => break,
            }
        }
    })
}
