//! The Prometheus recorder behind `/metrics`, and the metrics registered at startup.
//!
//! Everything records through the `metrics` facade; the recorder renders Prometheus
//! text. Counters and gauges that would only appear at their first increment (errors,
//! dead letters, restarts, rebuilds, trace drops) are described and set to zero by
//! [`register_metrics`], so dashboards and alerts see a series from the first scrape.
//! The README's Metrics section documents every name.

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::catalogue::{self, CONSUMERS, Store};
use crate::event::{MISSING_SCORE, SCORE_NOT_A_NUMBER};

/// `EventError::kind`: why a record or a request is not a valid event (the `reason` of
/// `events_failed_total` and of the event logger's dead letters).
const EVENT_ERROR_KINDS: &[&str] = &[
    "malformed_json",
    "not_utf8",
    "byte_order_mark",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "empty_field",
    "field_too_long",
    "control_character",
    "nul_in_data",
    "bad_timestamp",
    "bad_event_id",
    "duplicate_key",
    "score_out_of_range",
];

/// The other `reason` labels of `events_failed_total`: the request-level refusals of the
/// ingest routes and the producer's (`ProduceError::reason`).
const REQUEST_FAILURE_REASONS: &[&str] = &[
    "request_timeout",
    "not_an_array",
    "batch_too_large",
    "overloaded",
    "too_large",
    "broker_timeout",
    "broker_error",
    "shutting_down",
];

/// Describes the daemon's metrics and creates, at zero, the counters that otherwise
/// appear only at their first increment. Idempotent (it only adds zero).
pub fn register_metrics() {
    describe_counter!("events_received_total", "Events received over HTTP.");
    describe_counter!(
        "events_published_total",
        "Events acknowledged by the broker."
    );
    describe_counter!(
        "events_failed_total",
        "Events refused or not published, by reason."
    );
    describe_histogram!(
        "http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency by route template, method and status."
    );
    describe_counter!(
        "producer_errors_total",
        "Produce errors by topic and reason."
    );
    describe_counter!(
        "producer_resends_total",
        "Idempotent produce batches sent again, by topic and reason."
    );
    describe_gauge!(
        "producer_in_flight_bytes",
        metrics::Unit::Bytes,
        "Bytes accepted by the producer and not yet acknowledged."
    );
    describe_gauge!(
        "gamestream_consumer_lag",
        "Records a sink has not made durable, per partition."
    );
    describe_gauge!(
        "gamestream_sink_committed_offset",
        "Next offset a sink will apply, per partition."
    );
    describe_gauge!(
        "gamestream_partition_high_watermark",
        "End of the partition at the last fetch."
    );
    describe_gauge!(
        "gamestream_partitions_owned",
        "Partitions this daemon reads."
    );
    describe_counter!(
        "gamestream_sink_records_total",
        "Records applied by a sink."
    );
    describe_histogram!(
        "gamestream_sink_write_duration_seconds",
        metrics::Unit::Seconds,
        "Duration of one sink write and offset commit."
    );
    describe_counter!(
        "gamestream_sink_write_errors_total",
        "Failed sink writes by kind."
    );
    describe_counter!(
        "gamestream_dead_letters_total",
        "Records dead-lettered, by consumer and reason."
    );
    describe_counter!(
        "gamestream_actor_restarts_total",
        "Pipeline restarts caused by a crashed actor."
    );
    describe_counter!(
        "gamestream_redis_rebuilds_total",
        "Redis stores rebuilt from Postgres."
    );
    describe_counter!(
        "gamestream_reader_fetch_errors_total",
        "Failed fetches (retried)."
    );
    describe_histogram!(
        "gamestream_end_to_end_latency_seconds",
        metrics::Unit::Seconds,
        "From an event's ingested_at (HTTP accept) to the sink's commit of it, sampled per batch."
    );
    describe_histogram!(
        "gamestream_reader_delivery_latency_seconds",
        metrics::Unit::Seconds,
        "From an event's ingested_at (HTTP accept) to its first fetch by a partition reader, sampled per fetch."
    );
    describe_histogram!(
        "gamestream_event_freshness_seconds",
        metrics::Unit::Seconds,
        "From an event's own timestamp to the sink's commit of it, sampled per batch."
    );
    describe_histogram!(
        "gamestream_partition_takeover_seconds",
        metrics::Unit::Seconds,
        "Time to claim a partition in every sink and prepare its reader."
    );
    describe_counter!(
        "gamestream_supervisor_escalations_total",
        "Times the supervisor gave up after repeated crashes (the daemon then exits 70)."
    );
    describe_gauge!(
        "gamestream_ready",
        "1 when the last /ready check passed, 0 when it failed."
    );
    describe_counter!(
        "http_client_aborted_connections_total",
        "Connections a client closed in the middle of a request (not a server error)."
    );
    describe_gauge!(
        "gamestream_group_offsets_mirrored_timestamp_seconds",
        metrics::Unit::Seconds,
        "When the old consumer group was last found up to date in Kafka (Unix time)."
    );
    describe_counter!(
        "gamestream_group_offsets_mirror_errors_total",
        "Failed mirrors of an old consumer group's offsets to Kafka (retried at the next tick)."
    );
    describe_gauge!(
        "gamestream_group_offsets_live_members",
        "Live members seen in an old consumer group, which is then not written (0: none)."
    );
    describe_counter!(
        "gamestream_trace_export_dropped_total",
        "Spans dropped instead of exported: queue_full or export_failed."
    );

    metrics::counter!("events_received_total").increment(0);
    metrics::counter!("events_published_total").increment(0);
    // Every reason the ingest path counts, so the dashboard and the alerts see a series
    // before the first failure.
    for reason in EVENT_ERROR_KINDS.iter().chain(REQUEST_FAILURE_REASONS) {
        metrics::counter!("events_failed_total", "reason" => *reason).increment(0);
    }
    // The dead letters each consumer can write, so `increase()` sees the first one.
    for reason in EVENT_ERROR_KINDS {
        metrics::counter!("gamestream_dead_letters_total", "consumer" => catalogue::LOGGER.consumer_service, "reason" => *reason)
            .increment(0);
    }
    for reason in [MISSING_SCORE, SCORE_NOT_A_NUMBER] {
        metrics::counter!("gamestream_dead_letters_total", "consumer" => catalogue::LEADERBOARD.consumer_service, "reason" => reason)
            .increment(0);
    }
    metrics::counter!("gamestream_supervisor_escalations_total").increment(0);
    metrics::counter!("http_client_aborted_connections_total").increment(0);
    describe_gauge!("http_connections_open", "Client connections open.");
    describe_counter!(
        "http_connections_refused_total",
        "Connections answered 503 and closed at http.max_connections (every connection was in a request)."
    );
    describe_counter!(
        "http_connections_closed_total",
        "Connections the server closed: header_timeout, idle_timeout, or evicted (the oldest with no request in progress, to make room at http.max_connections)."
    );
    describe_counter!(
        "http_requests_refused_unparsed_total",
        "Requests whose head could not be parsed (400, 414, 431 before any route)."
    );
    describe_counter!(
        "http_body_budget_refusals_total",
        "Request bodies refused with 503 because http.body_budget_bytes was in use."
    );
    describe_counter!(
        "http_auth_failures_total",
        "Requests with a missing or wrong API key (401)."
    );
    metrics::gauge!("http_connections_open").set(0.0);
    metrics::counter!("http_connections_refused_total").increment(0);
    for reason in ["header_timeout", "idle_timeout", "evicted"] {
        metrics::counter!("http_connections_closed_total", "reason" => reason).increment(0);
    }
    metrics::counter!("http_requests_refused_unparsed_total").increment(0);
    metrics::counter!("http_body_budget_refusals_total").increment(0);
    metrics::counter!("http_auth_failures_total").increment(0);
    for sink in catalogue::names() {
        metrics::counter!("gamestream_sink_records_total", "sink" => sink).increment(0);
        metrics::counter!("gamestream_sink_write_errors_total", "sink" => sink, "kind" => "transient")
            .increment(0);
        metrics::counter!("gamestream_actor_restarts_total", "actor" => sink).increment(0);
    }
    for actor in ["dlq", "partition_reader"] {
        metrics::counter!("gamestream_actor_restarts_total", "actor" => actor).increment(0);
    }
    for consumer in CONSUMERS {
        metrics::counter!("gamestream_dead_letters_total", "consumer" => consumer, "reason" => "sink_rejected")
            .increment(0);
    }
    for sink in catalogue::in_store(Store::Redis).map(|s| s.name) {
        metrics::counter!("gamestream_redis_rebuilds_total", "sink" => sink).increment(0);
    }
    for group in catalogue::LEGACY_GROUPS {
        metrics::counter!("gamestream_group_offsets_mirror_errors_total", "group" => group)
            .increment(0);
        metrics::gauge!("gamestream_group_offsets_live_members", "group" => group).set(0.0);
    }
    for reason in ["queue_full", "export_failed"] {
        metrics::counter!("gamestream_trace_export_dropped_total", "reason" => reason).increment(0);
    }
}

/// Buckets of the end-to-end latency and freshness histograms: milliseconds to an hour
/// (a backlog being drained is minutes old).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];

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
                    Matcher::Suffix("latency_seconds".to_owned()),
                    LATENCY_BUCKETS,
                )
                .unwrap_or_else(|_| unreachable!("the bucket list above is not empty"))
                .set_buckets_for_metric(
                    Matcher::Full("gamestream_event_freshness_seconds".to_owned()),
                    LATENCY_BUCKETS,
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
