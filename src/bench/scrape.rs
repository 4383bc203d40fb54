//! Reading the child daemon's own histograms from its `/metrics`, so that the latency
//! phase can say where each millisecond of an event's way went.
//!
//! ```text
//! GET /metrics before the phase ─┐
//!                                ├─► Δ _sum / Δ _count per stage ─► mean ms per stage
//! GET /metrics after the phase  ─┘
//! ```
//!
//! Only `_sum` and `_count` are read: their differences give exact means over the phase,
//! where the buckets would give percentiles no finer than their bounds.

use super::BenchError;
use super::report::LatencyBreakdown;
use crate::catalogue;

/// The series the breakdown is made of: a histogram's name and the labels a series must
/// carry to count (the others are summed over).
struct Stage {
    histogram: &'static str,
    labels: &'static [(&'static str, &'static str)],
}

const HTTP_INGEST: Stage = Stage {
    histogram: "http_request_duration_seconds",
    labels: &[("endpoint", "/api/v1/events"), ("method", "POST")],
};
const DELIVERY: Stage = Stage {
    histogram: "gamestream_reader_delivery_latency_seconds",
    labels: &[],
};
const LOGGER_WRITE: Stage = Stage {
    histogram: "gamestream_sink_write_duration_seconds",
    labels: &[("sink", catalogue::LOGGER.name)],
};
const LOGGER_END_TO_END: Stage = Stage {
    histogram: "gamestream_end_to_end_latency_seconds",
    labels: &[("sink", catalogue::LOGGER.name)],
};

/// The sums and counts of the stages' histograms at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Snapshot {
    /// (sum in seconds, count) per stage, in the order of [`STAGES`].
    stages: [(f64, f64); 4],
}

const STAGES: [&Stage; 4] = [&HTTP_INGEST, &DELIVERY, &LOGGER_WRITE, &LOGGER_END_TO_END];

impl Snapshot {
    /// Reads the stages out of a Prometheus text exposition.
    pub(super) fn parse(exposition: &str) -> Self {
        let mut stages = [(0.0, 0.0); 4];
        for (stage, (sum, count)) in STAGES.iter().zip(stages.iter_mut()) {
            *sum = series_total(
                exposition,
                &format!("{}_sum", stage.histogram),
                stage.labels,
            );
            *count = series_total(
                exposition,
                &format!("{}_count", stage.histogram),
                stage.labels,
            );
        }
        Self { stages }
    }

    /// The mean of each stage between `self` (before) and `after`, in ms.
    fn means_ms(&self, after: &Self) -> [f64; 4] {
        let mut means = [0.0; 4];
        for ((before, after), mean) in self.stages.iter().zip(&after.stages).zip(&mut means) {
            let count = after.1 - before.1;
            *mean = if count > 0.0 {
                (after.0 - before.0) / count * 1e3
            } else {
                0.0
            };
        }
        means
    }

    /// Splits an event's mean way from the request to the row seen by the bench
    /// (`seen_mean_ms`) into its stages. A stage is what one mean exceeds the one
    /// before it by, so the stages add up to the whole. The HTTP answer runs beside the
    /// broker's stage (the reader may fetch a record before its producer has heard the
    /// acknowledgement), so it is reported next to the stages, not among them.
    pub(super) fn breakdown(&self, after: &Self, seen_mean_ms: f64) -> LatencyBreakdown {
        let [http, delivery, write, end_to_end] = self.means_ms(after);
        LatencyBreakdown {
            accept_to_fetch_ms: delivery,
            sink_batching_ms: end_to_end - delivery - write,
            write_and_commit_ms: write,
            commit_to_seen_ms: seen_mean_ms - end_to_end,
            total_ms: seen_mean_ms,
            http_answer_ms: http,
        }
    }
}

/// The sum of the values of every series named `name` that carries each of `labels`.
fn series_total(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let carries = |(k, v): &(&str, &str)| {
                series_labels
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            };
            labels
                .iter()
                .all(carries)
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// `GET /metrics` of the daemon at `base`.
pub(super) async fn snapshot(client: &reqwest::Client, base: &str) -> Result<Snapshot, BenchError> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| BenchError::Failed(format!("GET /metrics of the bench daemon: {e}")))?
        .text()
        .await
        .map_err(|e| BenchError::Failed(format!("GET /metrics of the bench daemon: {e}")))?;
    Ok(Snapshot::parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{endpoint="/api/v1/events",method="POST",status="202",le="0.005"} 1
http_request_duration_seconds_sum{endpoint="/api/v1/events",method="POST",status="202"} 0.002
http_request_duration_seconds_count{endpoint="/api/v1/events",method="POST",status="202"} 1
http_request_duration_seconds_sum{endpoint="/api/v1/events/batch",method="POST",status="202"} 9
http_request_duration_seconds_count{endpoint="/api/v1/events/batch",method="POST",status="202"} 9
"#;

    const AFTER: &str = r#"http_request_duration_seconds_sum{endpoint="/api/v1/events",method="POST",status="202"} 0.032
http_request_duration_seconds_count{endpoint="/api/v1/events",method="POST",status="202"} 11
http_request_duration_seconds_sum{endpoint="/api/v1/events",method="POST",status="400"} 0.0
http_request_duration_seconds_count{endpoint="/api/v1/events",method="POST",status="400"} 0
http_request_duration_seconds_sum{endpoint="/api/v1/events/batch",method="POST",status="202"} 90
http_request_duration_seconds_count{endpoint="/api/v1/events/batch",method="POST",status="202"} 10
gamestream_reader_delivery_latency_seconds_sum{partition="0"} 0.02
gamestream_reader_delivery_latency_seconds_count{partition="0"} 2
gamestream_reader_delivery_latency_seconds_sum{partition="1"} 0.03
gamestream_reader_delivery_latency_seconds_count{partition="1"} 3
gamestream_sink_write_duration_seconds_sum{sink="event-logger"} 0.04
gamestream_sink_write_duration_seconds_count{sink="event-logger"} 10
gamestream_sink_write_duration_seconds_sum{sink="stats-aggregator-postgres"} 100
gamestream_sink_write_duration_seconds_count{sink="stats-aggregator-postgres"} 1
gamestream_end_to_end_latency_seconds_sum{sink="event-logger"} 0.25
gamestream_end_to_end_latency_seconds_count{sink="event-logger"} 10
"#;

    #[test]
    fn series_are_summed_over_the_labels_not_asked_for() {
        assert_eq!(
            series_total(
                AFTER,
                "gamestream_reader_delivery_latency_seconds_count",
                &[]
            ),
            5.0
        );
        // `/api/v1/events/batch` is another endpoint, not a longer label value.
        assert_eq!(
            series_total(
                AFTER,
                "http_request_duration_seconds_count",
                HTTP_INGEST.labels
            ),
            11.0
        );
    }

    #[test]
    fn the_stages_add_up_to_the_whole() {
        let (before, after) = (Snapshot::parse(BEFORE), Snapshot::parse(AFTER));
        let b = before.breakdown(&after, 30.0);
        // HTTP: 30 ms over 10 requests; delivery: 50 ms over 5; write 4 ms over 10;
        // end to end 250 ms over 10.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(b.http_answer_ms, 3.0), "{b:?}");
        assert!(close(b.accept_to_fetch_ms, 10.0), "{b:?}");
        assert!(close(b.write_and_commit_ms, 4.0), "{b:?}");
        assert!(close(b.sink_batching_ms, 25.0 - 10.0 - 4.0), "{b:?}");
        assert!(close(b.commit_to_seen_ms, 5.0), "{b:?}");
        let sum =
            b.accept_to_fetch_ms + b.sink_batching_ms + b.write_and_commit_ms + b.commit_to_seen_ms;
        assert!(close(sum, b.total_ms), "{b:?}");
    }

    #[test]
    fn a_stage_with_no_new_samples_is_zero() {
        let snapshot = Snapshot::parse(AFTER);
        assert_eq!(snapshot.means_ms(&snapshot), [0.0; 4]);
    }
}
