//! The benchmark's results: the table it prints and the JSON it writes (for comparing
//! commits), and the percentile arithmetic behind the latency figures.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::cpu::CpuReport;
use crate::config::Config;
use crate::loadgen::percentile;
use crate::telemetry::traces::TraceSettings;

/// The trace settings a run had (the daemon inherits the benchmark's environment), so
/// that runs with and without tracing can be told apart in their JSON.
#[derive(Debug, Clone, Serialize)]
pub struct TracingSetup {
    /// The daemon exported traces (an OTLP endpoint was set).
    pub exporting: bool,
    /// The sampler the daemon resolved from `OTEL_TRACES_SAMPLER`/`_ARG` when exporting.
    pub sampler: Option<String>,
    /// `--traceparent-sampled`: the fraction of pre-filled records whose `traceparent`
    /// was sampled (None: the records had no `traceparent`).
    pub traceparent_sampled: Option<f64>,
}

impl TracingSetup {
    /// Read the way the daemon reads it ([`TraceSettings::from_env`]).
    pub fn from_env(config: &Config, traceparent_sampled: Option<f64>) -> Self {
        let settings = TraceSettings::from_env(&config.telemetry);
        Self {
            exporting: settings.is_some(),
            sampler: settings.map(|s| format!("{:?}", s.sampler)),
            traceparent_sampled,
        }
    }

    fn describe(&self) -> String {
        let export = match &self.sampler {
            Some(sampler) => format!("exported ({sampler})"),
            None => "off".to_owned(),
        };
        match self.traceparent_sampled {
            Some(f) => format!("{export}; records traced, {f} sampled"),
            None => export,
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub cores: usize,
    /// `/proc/loadavg` (1, 5, 15 min) when the run started and when it ended: the
    /// machine is shared, so every figure needs its load next to it.
    pub load_average_start: [f64; 3],
    pub load_average_end: [f64; 3],
    pub events: usize,
    pub partitions: i32,
    /// The uniform workload (its fields at the top level of the JSON, as before
    /// workloads were added).
    #[serde(flatten)]
    pub uniform: WorkloadReport,
    /// With `--skew`: the skewed workload, measured after the uniform one.
    pub skewed: Option<WorkloadReport>,
    /// Whether the daemon exported traces, and how the pre-filled records were traced.
    pub tracing: TracingSetup,
    /// None with `--latency-duration 0`.
    pub latency: Option<LatencyReport>,
    /// None with `--ingest-duration 0`.
    pub ingest: Option<IngestReport>,
}

/// The throughput phase of one workload, next to the limits measured on its own rows.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadReport {
    /// "uniform" or "zipf EXPONENT".
    pub workload: String,
    /// Distinct players the events were drawn from.
    pub players: usize,
    pub zipf_exponent: Option<f64>,
    /// The share of events sent by the most active 1% of the players.
    pub top_percent_share: f64,
    /// `/proc/loadavg` before the pre-fill and after the pipeline of this workload.
    pub workload_load_average_start: [f64; 3],
    pub workload_load_average_end: [f64; 3],
    pub prefill_events_per_sec: f64,
    pub raw_fetch_records_per_sec: f64,
    pub copy_rows_per_sec: f64,
    /// Seconds from daemon start until each sink committed the end of every partition.
    pub sink_seconds: BTreeMap<String, f64>,
    pub sink_events_per_sec: BTreeMap<String, f64>,
    /// Each sink's events/s over this workload's plain COPY rows/s.
    pub sink_ratio_to_copy: BTreeMap<String, f64>,
    /// Per sink, the sum over partitions of the next offsets it committed.
    pub sink_committed_offsets: BTreeMap<String, i64>,
    /// Sum over partitions of the topic's end offsets (what every sink must reach).
    pub end_offsets: i64,
    /// Events/s until the last sink finished.
    pub pipeline_events_per_sec: f64,
    pub ratio_to_copy: f64,
    pub ratio_to_raw_fetch: f64,
    pub daemon_peak_rss_mb: f64,
    /// CPU of the daemon and of each store's processes over the pipeline phase.
    pub cpu: CpuReport,
    /// PostgreSQL's busy backends by statement during the pipeline.
    pub pg_activity: super::pg_activity::PgActivity,
    /// Rows in the scratch tables at the end (pipeline and, for the first workload,
    /// latency phase).
    pub rows: RowCounts,
}

/// The latency phase.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub target_rate: f64,
    pub achieved_rate: f64,
    /// Requests sent, accepted (2xx with an event id), and seen in Postgres.
    pub sent: usize,
    pub accepted: usize,
    pub samples: usize,
    /// From the request to the row visible in `events`.
    pub percentiles_ms: Percentiles,
    /// From the request to its 2xx answer (ingestion alone: validation and the broker's
    /// acknowledgement), for the accepted requests: the rest of `percentiles_ms` is the
    /// consumer side.
    pub http_percentiles_ms: Percentiles,
    pub poll_interval_ms: f64,
    /// The resolution of a sample: mean time between two polls.
    pub mean_poll_cycle_ms: f64,
    /// Where the mean of `percentiles_ms` went, from the daemon's own histograms.
    pub breakdown: LatencyBreakdown,
    /// Cores kept busy during the phase, per process: the daemon, each store, and this
    /// bench's own load client.
    pub cores_busy: BTreeMap<String, f64>,
}

/// An accepted event's mean way from the request to its row seen by the bench, in ms,
/// stage by stage (the stages add up to `total_ms`). Means over the phase, from the
/// `_sum` and `_count` of the daemon's histograms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyBreakdown {
    /// Accept to the partition reader's fetch returning the record: validation, the
    /// producer's batching, the produce round trip and the broker's answer to the
    /// waiting fetch (`gamestream_reader_delivery_latency_seconds`).
    pub accept_to_fetch_ms: f64,
    /// Fetched to the logger's write beginning: the hand-off to the sink and its linger
    /// or queue behind an earlier write.
    pub sink_batching_ms: f64,
    /// The logger's COPY and offset commit (`gamestream_sink_write_duration_seconds`).
    pub write_and_commit_ms: f64,
    /// Committed to the bench's poll seeing the row: the measurement's own resolution.
    pub commit_to_seen_ms: f64,
    /// The sum of the stages above.
    pub total_ms: f64,
    /// Beside the stages: accept to the 2xx answer, which waits for the broker's
    /// acknowledgement (`http_request_duration_seconds` of `POST /api/v1/events`).
    pub http_answer_ms: f64,
}

/// The ingest phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub connections: usize,
    pub seconds_per_run: f64,
    /// One per round: the constant endpoint and `POST /api/v1/events`, back to back.
    pub rounds: Vec<IngestRound>,
    /// Mean of the rounds' ratios.
    pub mean_ratio: f64,
    /// Latency of the single-event requests over every round.
    pub single_percentiles_ms: Percentiles,
    pub batch_connections: usize,
    pub batch_events_per_sec: f64,
    pub batch_gzip_events_per_sec: f64,
    /// Answers other than 2xx, over every run (a run with any is not a valid figure).
    pub failed: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct IngestRound {
    pub constant_requests_per_sec: f64,
    pub single_requests_per_sec: f64,
    /// Single-event requests/s over the constant endpoint's.
    pub ratio: f64,
}

/// Nearest-rank percentiles in milliseconds (0 for no samples).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Of ascending `sorted` samples.
    pub fn of(sorted: &[Duration]) -> Self {
        let ms = |p: f64| percentile(sorted, p).map_or(0.0, |d| d.as_secs_f64() * 1e3);
        Self {
            p50: ms(50.0),
            p95: ms(95.0),
            p99: ms(99.0),
            max: ms(100.0),
        }
    }
}

/// Row counts of the scratch database after the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RowCounts {
    pub events: i64,
    /// Sum of `player_statistics.total_events`.
    pub statistics_total_events: i64,
}

/// `/proc/loadavg`'s three averages (zeros where unavailable).
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut values = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [(); 3].map(|()| values.next().unwrap_or(0.0))
}

pub fn print_table(r: &BenchReport) {
    println!(
        "gamestream bench: {} events, {} partitions, {} cores, load {:.2} {:.2} {:.2} → {:.2} {:.2} {:.2}",
        r.events,
        r.partitions,
        r.cores,
        r.load_average_start[0],
        r.load_average_start[1],
        r.load_average_start[2],
        r.load_average_end[0],
        r.load_average_end[1],
        r.load_average_end[2],
    );
    println!("traces: {}", r.tracing.describe());
    let workloads: Vec<&WorkloadReport> = std::iter::once(&r.uniform).chain(&r.skewed).collect();
    let row = |name: &str, value: &dyn Fn(&WorkloadReport) -> String| {
        let values: String = workloads
            .iter()
            .map(|w| format!(" {:>16}", value(w)))
            .collect();
        println!("{name:<48}{values}");
    };
    row("measure (workload)", &|w| w.workload.clone());
    row("players", &|w| w.players.to_string());
    row("events from the top 1% of players", &|w| {
        format!("{:.0}%", w.top_percent_share * 100.0)
    });
    row("load average (1 min) before/after", &|w| {
        format!(
            "{:.2}/{:.2}",
            w.workload_load_average_start[0], w.workload_load_average_end[0]
        )
    });
    row("prefill (events/s)", &|w| {
        format!("{:.0}", w.prefill_events_per_sec)
    });
    row("limit: raw fetch (records/s)", &|w| {
        format!("{:.0}", w.raw_fetch_records_per_sec)
    });
    row("limit: plain COPY (rows/s)", &|w| {
        format!("{:.0}", w.copy_rows_per_sec)
    });
    for sink in r.uniform.sink_events_per_sec.keys() {
        row(&format!("sink {sink} (events/s, ×COPY)"), &|w| {
            let rate = w.sink_events_per_sec.get(sink).copied().unwrap_or(0.0);
            let ratio = w.sink_ratio_to_copy.get(sink).copied().unwrap_or(0.0);
            format!("{rate:.0} ({ratio:.2})")
        });
    }
    row("pipeline, all sinks (events/s)", &|w| {
        format!("{:.0}", w.pipeline_events_per_sec)
    });
    row("ratio to COPY limit", &|w| {
        format!("{:.2}", w.ratio_to_copy)
    });
    row("ratio to raw fetch limit", &|w| {
        format!("{:.2}", w.ratio_to_raw_fetch)
    });
    row("daemon peak RSS (MB)", &|w| {
        format!("{:.1}", w.daemon_peak_rss_mb)
    });
    row("CPU µs/event: daemon", &|w| {
        format!("{:.2}", w.cpu.daemon_us_per_event)
    });
    // One row per key of a per-workload map (a key missing in a workload shows 0).
    let keyed_rows = |label: &str, map: &dyn Fn(&WorkloadReport) -> &BTreeMap<String, f64>| {
        let keys: std::collections::BTreeSet<&String> =
            workloads.iter().flat_map(|w| map(w).keys()).collect();
        for key in keys {
            row(&format!("{label}{key}"), &|w| {
                format!("{:.2}", map(w).get(key).copied().unwrap_or(0.0))
            });
        }
    };
    keyed_rows("CPU µs/event: ", &|w| &w.cpu.store_us_per_event);
    row("Postgres busy backends (mean), all", &|w| {
        format!("{:.2}", w.pg_activity.total_busy())
    });
    keyed_rows("  ", &|w| &w.pg_activity.busy_backends);
    keyed_rows("  busy on: ", &|w| &w.pg_activity.busy_by_wait);
    row("pipeline wall (s)", &|w| {
        format!("{:.1}", w.cpu.wall_seconds)
    });
    row("rows in events", &|w| w.rows.events.to_string());
    if let Some(l) = &r.latency {
        let line = |name: &str, value: String| println!("{name:<48} {value:>16}");
        line(
            "latency: rate target/achieved (ev/s)",
            format!("{:.0}/{:.0}", l.target_rate, l.achieved_rate),
        );
        line(
            "latency: sent/accepted/seen",
            format!("{}/{}/{}", l.sent, l.accepted, l.samples),
        );
        let p = l.percentiles_ms;
        line("latency HTTP→Postgres p50 (ms)", format!("{:.1}", p.p50));
        line("latency HTTP→Postgres p95 (ms)", format!("{:.1}", p.p95));
        line("latency HTTP→Postgres p99 (ms)", format!("{:.1}", p.p99));
        line("latency HTTP→Postgres max (ms)", format!("{:.1}", p.max));
        let h = l.http_percentiles_ms;
        line(
            "latency HTTP answer p50/p99 (ms)",
            format!("{:.1}/{:.1}", h.p50, h.p99),
        );
        line(
            "latency: poll interval/cycle (ms)",
            format!("{:.1}/{:.1}", l.poll_interval_ms, l.mean_poll_cycle_ms),
        );
        let b = l.breakdown;
        line(
            "latency mean, where it went (ms)",
            format!("{:.1}", b.total_ms),
        );
        for (stage, ms) in [
            (
                "accept → reader's fetch (producer, broker)",
                b.accept_to_fetch_ms,
            ),
            ("fetch → logger write begins", b.sink_batching_ms),
            ("logger COPY + offset commit", b.write_and_commit_ms),
            ("commit → seen by the bench's poll", b.commit_to_seen_ms),
        ] {
            line(&format!("  {stage}"), format!("{ms:.1}"));
        }
        line(
            "  (beside them: accept → HTTP answer)",
            format!("{:.1}", b.http_answer_ms),
        );
        line(
            "latency phase: cores busy, all processes",
            format!("{:.2}", l.cores_busy.values().sum::<f64>()),
        );
        for (process, cores) in &l.cores_busy {
            line(&format!("  {process}"), format!("{cores:.2}"));
        }
    }
    if let Some(i) = &r.ingest {
        let line = |name: &str, value: String| println!("{name:<48} {value:>16}");
        for (n, round) in i.rounds.iter().enumerate() {
            line(
                &format!("ingest round {}: constant/single (req/s)", n + 1),
                format!(
                    "{:.0}/{:.0}",
                    round.constant_requests_per_sec, round.single_requests_per_sec
                ),
            );
            line(
                &format!("ingest round {}: ratio to constant", n + 1),
                format!("{:.2}", round.ratio),
            );
        }
        line(
            &format!("ingest: mean ratio ({} connections)", i.connections),
            format!("{:.2}", i.mean_ratio),
        );
        let p = i.single_percentiles_ms;
        line(
            "ingest: single POST p50/p99 (ms)",
            format!("{:.1}/{:.1}", p.p50, p.p99),
        );
        line(
            &format!(
                "ingest: batch, {} connections (events/s)",
                i.batch_connections
            ),
            format!("{:.0}", i.batch_events_per_sec),
        );
        line(
            "ingest: batch gzip (events/s)",
            format!("{:.0}", i.batch_gzip_events_per_sec),
        );
        line("ingest: non-2xx answers", i.failed.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: impl IntoIterator<Item = u64>) -> Vec<Duration> {
        let mut v: Vec<Duration> = values.into_iter().map(Duration::from_millis).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let p = Percentiles::of(&ms(1..=100));
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        // 1,000 samples: p99 is the 990th, so the ten slowest do not hide in it.
        let mut samples: Vec<u64> = vec![5; 989];
        samples.extend([7; 1]);
        samples.extend([40; 10]);
        let p = Percentiles::of(&ms(samples));
        assert_eq!((p.p50, p.p99, p.max), (5.0, 7.0, 40.0));
    }

    #[test]
    fn percentiles_of_one_and_of_none() {
        let p = Percentiles::of(&ms([12]));
        assert_eq!((p.p50, p.p95, p.p99, p.max), (12.0, 12.0, 12.0, 12.0));
        assert_eq!(
            Percentiles::of(&[]),
            Percentiles {
                p50: 0.0,
                p95: 0.0,
                p99: 0.0,
                max: 0.0
            }
        );
    }

    #[test]
    fn load_average_has_three_figures() {
        let load = load_average();
        assert!(load.iter().all(|v| *v >= 0.0));
    }
}
