//! The throughput phase: pre-fill the scratch raw topic, then run the daemon as a child
//! until every sink has committed the end offsets.
//!
//! ```text
//! events ─► produce to the scratch topic (murmur2 partitions, as our producer does)
//! `gamestream serve` (child, scratch names) ─► poll sink_offsets (Postgres sinks) and
//!     the Redis offsets hash (Redis sinks) every POLL until each reaches the end of
//!     every partition; sample the child's VmHWM meanwhile; the child's and the
//!     stores' CPU (cpu.rs) from its start until then ─► SIGTERM
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rskafka::client::partition::{Compression, UnknownTopicHandling};

use super::BenchError;
use super::cpu::{self, CpuReport, Stores};
use super::pg_activity::{self, PgActivity};
use super::{BenchArgs, Scratch};
use crate::catalogue::{self, Store};
use crate::config::Mode;
use crate::event::Event;
use crate::kafka;

/// Records per produce request of the pre-fill.
const PREFILL_CHUNK: usize = 2000;
/// How often the committed offsets are polled.
const POLL: Duration = Duration::from_millis(50);
/// How long a stopped daemon may take to drain and exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// What the pipeline run measured.
pub(super) struct PipelineRun {
    /// Seconds from daemon start until each sink committed the end of every partition.
    pub sink_seconds: BTreeMap<String, f64>,
    /// Per sink, the sum over partitions of its committed next offsets at the end.
    pub sink_committed: BTreeMap<String, i64>,
    /// Sum of the partitions' end offsets.
    pub end_offsets: i64,
    pub peak_rss_mb: f64,
    /// The daemon's and the stores' CPU from its start until the last sink finished.
    pub cpu: CpuReport,
    /// PostgreSQL's busy backends by statement over the same span.
    pub pg_activity: PgActivity,
}

/// Produces `events` to the scratch raw topic, keyed and partitioned as our producer does;
/// with `traceparent_sampled`, each record carries a `traceparent` (see [`traceparent`]).
pub(super) async fn prefill(
    scratch: &Scratch,
    events: &[Event],
    traceparent_sampled: Option<f64>,
) -> Result<(), BenchError> {
    let topic = &scratch.config.topics.player_events;
    let partitions = scratch.config.topics.player_events_partitions;
    let mut by_partition: Vec<Vec<rskafka::record::Record>> =
        (0..partitions).map(|_| Vec::new()).collect();
    for (i, event) in events.iter().enumerate() {
        let p = kafka::partition_for_key(event.player_id.as_bytes(), partitions) as usize;
        let mut headers = BTreeMap::new();
        if let Some(fraction) = traceparent_sampled {
            headers.insert(
                "traceparent".to_owned(),
                traceparent(i, fraction).into_bytes(),
            );
        }
        by_partition[p].push(rskafka::record::Record {
            key: Some(event.player_id.clone().into_bytes()),
            value: Some(event.to_record_value()),
            headers,
            timestamp: event.ingested_at,
        });
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (p, records) in by_partition.into_iter().enumerate() {
        let client = scratch
            .kafka
            .partition_client(topic.clone(), p as i32, UnknownTopicHandling::Retry)
            .await
            .map_err(kafka::KafkaError::from)?;
        tasks.spawn(async move {
            let mut records = records.into_iter().peekable();
            while records.peek().is_some() {
                let chunk: Vec<_> = records.by_ref().take(PREFILL_CHUNK).collect();
                client.produce(chunk, Compression::NoCompression).await?;
            }
            Ok::<(), rskafka::client::error::Error>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result
            .map_err(|e| BenchError::Failed(e.to_string()))?
            .map_err(kafka::KafkaError::from)?;
    }
    Ok(())
}

/// A W3C `traceparent` for the `i`-th pre-filled record: random trace and span ids, the
/// sampled flag on exactly `fraction` of the records (spread evenly), as a producer that
/// samples that fraction of its traces writes them.
pub(super) fn traceparent(i: usize, fraction: f64) -> String {
    let sampled = (i as f64 * fraction).floor() != ((i + 1) as f64 * fraction).floor();
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-{}", if sampled { "01" } else { "00" })
}

/// A child `gamestream serve` on the scratch names. It inherits this process's
/// environment, and so its connection settings.
pub(super) fn daemon(
    scratch: &Scratch,
    mode: Mode,
    port: u16,
) -> Result<tokio::process::Child, BenchError> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::Failed(format!("cannot find own binary: {e}")))?;
    let mode = match mode {
        Mode::All => "all",
        Mode::Ingest => "ingest",
        Mode::Consume => "consume",
    };
    let config = &scratch.config;
    let sets = [
        ("mode", format!("\"{mode}\"")),
        ("http.port", port.to_string()),
        ("http.bind", "\"127.0.0.1\"".to_owned()),
        ("http.rate_limit_per_second", "0".to_owned()),
        (
            "postgres.database",
            format!("\"{}\"", config.postgres.database),
        ),
        (
            "topics.player_events",
            format!("\"{}\"", config.topics.player_events),
        ),
        ("topics.dlq", format!("\"{}\"", config.topics.dlq)),
        (
            "redis.key_prefix",
            format!("\"{}\"", config.redis.key_prefix),
        ),
    ];
    let mut cmd = tokio::process::Command::new(exe);
    for (key, value) in &sets {
        cmd.arg("--set").arg(format!("{key}={value}"));
    }
    cmd.arg("serve")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd.spawn()
        .map_err(|e| BenchError::Failed(format!("cannot start the daemon: {e}")))
}

/// SIGTERM, then wait for the drain (killed on drop after [`STOP_GRACE`]).
pub(super) async fn stop(mut child: tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let _ = tokio::time::timeout(STOP_GRACE, child.wait()).await;
}

/// Runs the daemon (consume mode) until every sink has committed the end of every
/// partition.
pub(super) async fn run_pipeline(
    scratch: &Scratch,
    args: &BenchArgs,
) -> Result<PipelineRun, BenchError> {
    let ends = end_offsets(scratch).await?;
    let stores = stores(scratch);
    let stores_before = stores.snapshot();
    let started = Instant::now();
    let mut child = daemon(scratch, Mode::Consume, 0)?;
    let pid = child.id().unwrap_or(0);
    let sampler =
        pg_activity::Sampler::start(scratch.pg.clone(), scratch.config.postgres.database.clone());
    let mut done: BTreeMap<String, f64> = BTreeMap::new();
    let mut committed: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    let mut peak_rss_kb = 0_u64;
    while done.len() < catalogue::SINKS.len() {
        if started.elapsed() > args.timeout {
            return Err(BenchError::Failed(format!(
                "pipeline did not finish within {:?}",
                args.timeout
            )));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(BenchError::Failed(format!(
                "the daemon exited early: {status}"
            )));
        }
        peak_rss_kb = peak_rss_kb.max(rss_kb(pid, "VmHWM:"));
        for spec in &catalogue::SINKS {
            if done.contains_key(spec.name) {
                continue;
            }
            let offsets = match spec.store {
                Store::Postgres => scratch.pg_committed(spec.name).await?,
                Store::Redis => scratch.redis_committed(spec.name).await,
            };
            committed.insert(spec.name.to_owned(), offsets);
        }
        for (sink, offsets) in &committed {
            let complete = ends
                .iter()
                .all(|(p, end)| *end == 0 || offsets.get(p).is_some_and(|o| o >= end));
            if complete && !done.contains_key(sink) {
                done.insert(sink.clone(), started.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(POLL).await;
    }
    peak_rss_kb = peak_rss_kb.max(rss_kb(pid, "VmHWM:"));
    let wall = started.elapsed().as_secs_f64();
    let daemon_ticks = cpu::process_ticks(pid);
    let stores_after = stores.snapshot();
    let pg_activity = sampler.finish().await;
    stop(child).await;
    let events = ends.iter().map(|(_, end)| end).sum::<i64>();
    let cpu = CpuReport::of(
        daemon_ticks,
        &stores_before,
        &stores_after,
        usize::try_from(events).unwrap_or(0),
        wall,
    );
    Ok(PipelineRun {
        sink_seconds: done,
        sink_committed: committed
            .into_iter()
            .map(|(sink, offsets)| (sink, offsets.values().sum()))
            .collect(),
        end_offsets: events,
        peak_rss_mb: peak_rss_kb as f64 / 1024.0,
        cpu,
        pg_activity,
    })
}

/// The stores whose processes run on this machine, found by the ports the daemon
/// connects to.
pub(super) fn stores(scratch: &Scratch) -> Stores {
    let config = &scratch.config;
    let mut ports = vec![
        ("postgres", config.postgres.port),
        ("redis", config.redis.port),
    ];
    for server in &config.kafka.bootstrap_servers {
        if let Some(port) = server.rsplit(':').next().and_then(|p| p.parse().ok()) {
            ports.push(("kafka", port));
        }
    }
    Stores {
        ports,
        pg_database: config.postgres.database.clone(),
    }
}

/// A `/proc/PID/status` field in kB (0 where unavailable).
fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The high watermark of each partition (from Fetch, which every broker answers right).
pub(super) async fn end_offsets(scratch: &Scratch) -> Result<Vec<(i32, i64)>, BenchError> {
    let topic = &scratch.config.topics.player_events;
    let mut ends = Vec::new();
    for p in 0..scratch.config.topics.player_events_partitions {
        let client = scratch
            .kafka
            .partition_client(topic.clone(), p, UnknownTopicHandling::Retry)
            .await
            .map_err(kafka::KafkaError::from)?;
        let (_, hw) = client
            .fetch_records(0, 1..1024, 10)
            .await
            .map_err(kafka::KafkaError::from)?;
        ends.push((p, hw));
    }
    Ok(ends)
}

#[cfg(test)]
mod tests {
    use super::traceparent;

    #[test]
    fn traceparent_samples_exactly_the_fraction_with_valid_headers() {
        let headers: Vec<String> = (0..1000).map(|i| traceparent(i, 0.1)).collect();
        let sampled = headers.iter().filter(|h| h.ends_with("-01")).count();
        assert_eq!(sampled, 100);
        for h in &headers {
            let parts: Vec<&str> = h.split('-').collect();
            assert_eq!(parts.len(), 4, "{h}");
            assert_eq!(
                (parts[0], parts[1].len(), parts[2].len()),
                ("00", 32, 16),
                "{h}"
            );
            assert!(
                parts[1..3]
                    .iter()
                    .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
            );
        }
        assert_eq!(
            (0..10)
                .filter(|&i| traceparent(i, 1.0).ends_with("-01"))
                .count(),
            10
        );
        assert!((0..10).all(|i| traceparent(i, 0.0).ends_with("-00")));
    }
}
