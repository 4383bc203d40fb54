//! `gamestream bench`: what the whole pipeline does on this hardware, next to what the
//! hardware itself allows.
//!
//! ```text
//! per workload (uniform; with --skew also Zipf over --skew-players)       workload.rs
//! prefill N events ─► limits: raw fetch (rskafka, records/s)          limits.rs
//!                             COPY (same rows, identically indexed table, rows/s)
//!                  ─► throughput: `gamestream serve --mode consume` as a child, timed
//!                     until every sink committed the end offsets; its peak RSS,
//!                     its CPU and the stores' CPU per event (/proc)   throughput.rs, cpu.rs
//!                  ─► latency (uniform only): a child in `all` mode, POST /api/v1/events
//!                     at a fixed rate, request → row visible in `events`   latency.rs
//! ─► table and JSON, each workload next to its own COPY limit             report.rs
//! ```
//!
//! Everything runs against the configured services in a scratch database and scratch
//! topics (removed afterwards unless `--keep`), so it never touches production names.
//! Output: a table, and JSON (`--json FILE`) for comparing commits. A smoke run (a few
//! thousand events, every phase) is `tests/it/bench_smoke.rs`.

pub mod cpu;
pub mod ingest;
pub mod latency;
pub mod limits;
pub mod pg_activity;
pub mod report;
pub mod scrape;
pub mod throughput;
pub mod workload;

use crate::exit::Exit;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::event::{Event, Score};
use crate::kafka;
use crate::sinks::StoreError;
use crate::sinks::error::from_store_errors;
use crate::sinks::postgres;
pub use report::{BenchReport, LatencyReport, Percentiles, RowCounts, WorkloadReport};
pub use workload::Players;

/// Options of `gamestream bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Events to pre-fill the raw topic with.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Distinct players in the generated events (the uniform workload: every player
    /// equally active).
    #[arg(long, default_value_t = 20_000)]
    pub players: usize,
    /// Also measure throughput on a skewed workload, next to the uniform one: players
    /// drawn from a Zipf distribution with this exponent (1.1 without a value), so that
    /// a few percent of the players send most events, as in a real game.
    #[arg(long, value_name = "EXPONENT", num_args = 0..=1, default_missing_value = "1.1",
          value_parser = parse_exponent)]
    pub skew: Option<f64>,
    /// Distinct players of the skewed workload.
    #[arg(long, default_value_t = 200_000)]
    pub skew_players: usize,
    /// Distinct games in the generated events.
    #[arg(long, default_value_t = 100)]
    pub games: usize,
    /// Partitions of the scratch raw topic.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Write the results as JSON to this file too.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep the scratch database and topics for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Give up waiting for the pipeline (and for the latency phase's rows) after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Latency phase: events per second sent to POST /api/v1/events.
    #[arg(long, default_value_t = 5000.0)]
    pub latency_rate: f64,
    /// Latency phase: how long to send for (0 skips the phase).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub latency_duration: Duration,
    /// Latency phase: most requests in flight at once.
    #[arg(long, default_value_t = 256)]
    pub latency_concurrency: usize,
    /// Ingest phase: how long each closed-loop run sends for (0 skips the phase): the
    /// constant endpoint and single-event POSTs in turn, then the batch endpoint.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub ingest_duration: Duration,
    /// Ingest phase: connections of the constant and single-event runs.
    #[arg(long, default_value_t = 64)]
    pub ingest_connections: usize,
    /// Ingest phase: rounds of (constant endpoint, single-event POSTs).
    #[arg(long, default_value_t = 2)]
    pub ingest_rounds: usize,
    /// Ingest phase: connections of the batch runs (1,000 events a request).
    #[arg(long, default_value_t = 4)]
    pub batch_connections: usize,
    /// Latency phase: how often `events` is polled for the rows sent (the resolution
    /// of the latency figures).
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// Give every pre-filled record a W3C `traceparent` header, as a daemon with tracing
    /// on produces them, with the sampled flag on this fraction of them (e.g. 0.1). The
    /// consumer's per-record trace work (extract, consume spans, span links) is then part
    /// of the throughput figure; it costs nothing while tracing is off.
    #[arg(long, value_name = "FRACTION", value_parser = parse_fraction)]
    pub traceparent_sampled: Option<f64>,
}

fn parse_exponent(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() => Ok(s),
        _ => Err(format!(
            "`{text}` is not a positive Zipf exponent (e.g. 1.1)"
        )),
    }
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("`{text}` is not a fraction between 0 and 1")),
    }
}

/// Why a benchmark run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Store(StoreError),
    /// The run itself went wrong (the daemon exited, a stage timed out, ...).
    #[error("{0}")]
    Failed(String),
}

from_store_errors!(BenchError);

/// Runs the benchmark: the uniform workload (throughput, then latency), and with
/// `--skew` the skewed one (throughput), each on scratch names of its own.
pub async fn run(config: &Config, args: &BenchArgs) -> Result<Exit, BenchError> {
    let load_average_start = report::load_average();
    let mut workloads = vec![Players::uniform(args.players)];
    if let Some(exponent) = args.skew {
        workloads.push(Players::zipf(args.skew_players, exponent));
    }
    let mut measured = Vec::with_capacity(workloads.len());
    let mut latency = None;
    let mut ingested = None;
    for (n, players) in workloads.iter().enumerate() {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let scratch = Scratch::create(config, &id, args.partitions).await?;
        let with_latency = n == 0 && !args.latency_duration.is_zero();
        let mut result = measure(&scratch, args, players, with_latency).await;
        if n == 0 && !args.ingest_duration.is_zero() && result.is_ok() {
            match ingest::run(&scratch, args).await {
                Ok(report) => ingested = Some(report),
                Err(e) => result = Err(e),
            }
        }
        if !args.keep {
            scratch.remove(config).await;
        }
        let (workload, workload_latency) = result?;
        measured.push(workload);
        latency = latency.or(workload_latency);
    }
    let mut measured = measured.into_iter();
    let Some(uniform) = measured.next() else {
        unreachable!("the uniform workload is always measured");
    };
    let report = BenchReport {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average_start,
        load_average_end: report::load_average(),
        events: args.events,
        partitions: args.partitions,
        uniform,
        skewed: measured.next(),
        tracing: report::TracingSetup::from_env(config, args.traceparent_sampled),
        latency,
        ingest: ingested,
    };
    report::print_table(&report);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("gamestream bench: cannot write {}: {e}", path.display());
        }
    }
    Ok(Exit::Success)
}

/// Scratch names and connections.
struct Scratch {
    config: Config,
    kafka: Arc<rskafka::client::Client>,
    pg: sqlx::PgPool,
    /// The Redis sinks' offsets are read here; their keys (under the scratch prefix) are
    /// removed with the rest.
    redis: crate::sinks::redis::RedisPool,
}

impl Scratch {
    async fn create(base: &Config, id: &str, partitions: i32) -> Result<Self, BenchError> {
        let mut config = base.clone();
        config.postgres.database = format!("gamestream_bench_{id}");
        for (topic, name) in [
            (&mut config.topics.player_events, "player.events.raw"),
            (
                &mut config.topics.processed_events,
                "player.events.processed",
            ),
            (&mut config.topics.statistics, "player.statistics"),
            (&mut config.topics.leaderboards, "game.leaderboards"),
            (&mut config.topics.dlq, "system.dlq"),
        ] {
            *topic = format!("bench-{id}.{name}");
        }
        config.topics.player_events_partitions = partitions;
        config.redis.key_prefix = format!("bench-{id}:");
        let admin = postgres::connect(&base.postgres).await?;
        let create = format!("CREATE DATABASE \"{}\"", config.postgres.database);
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&admin)
            .await?;
        admin.close().await;
        let pg = postgres::connect(&config.postgres).await?;
        postgres::migrate(&pg).await?;
        let kafka = Arc::new(kafka::connect(&config.kafka).await?);
        kafka::create_topics(&kafka, &config.topics).await?;
        let redis = crate::sinks::redis::connect(&config.redis).await?;
        Ok(Self {
            config,
            kafka,
            pg,
            redis,
        })
    }

    /// The next offset per partition a Postgres sink has committed.
    async fn pg_committed(&self, sink: &str) -> Result<BTreeMap<i32, i64>, sqlx::Error> {
        crate::sinks::postgres::offsets::load(&self.pg, sink, &self.config.topics.player_events)
            .await
    }

    /// The next offset per partition a Redis sink has committed (empty before its start).
    async fn redis_committed(&self, sink: &str) -> BTreeMap<i32, i64> {
        let key = crate::sinks::redis::RedisKeys::new(self.config.redis.key_prefix.clone())
            .offsets(sink, &self.config.topics.player_events);
        let Ok(mut conn) = self.redis.get().await else {
            return BTreeMap::new();
        };
        crate::sinks::redis::offsets::load(&mut *conn, &key)
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Deletes every Redis key under the scratch prefix.
    async fn remove_redis_keys(&self) {
        let Ok(mut conn) = self.redis.get().await else {
            return;
        };
        let pattern =
            crate::sinks::redis::RedisKeys::new(self.config.redis.key_prefix.clone()).pattern("");
        let mut cursor: u64 = 0;
        loop {
            let scanned: Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(self.config.redis.rebuild_batch_size)
                .query_async(&mut *conn)
                .await;
            let Ok((next, keys)) = scanned else {
                return;
            };
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut *conn)
                    .await;
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }

    async fn row_counts(&self) -> Result<RowCounts, sqlx::Error> {
        let (events, statistics_total_events): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM events),
                    (SELECT COALESCE(sum(total_events), 0)::int8 FROM player_statistics)",
        )
        .fetch_one(&self.pg)
        .await?;
        Ok(RowCounts {
            events,
            statistics_total_events,
        })
    }

    async fn remove(self, base: &Config) {
        self.remove_redis_keys().await;
        self.pg.close().await;
        if let Ok(controller) = self.kafka.controller_client() {
            for (topic, _) in self.config.topics.all() {
                let _ = controller.delete_topic(topic, 10_000).await;
            }
        }
        if let Ok(admin) = postgres::connect(&base.postgres).await {
            let drop = format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.config.postgres.database
            );
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
        }
    }
}

/// One workload on its scratch names: pre-fill, the limits, the pipeline, and (the
/// first workload only) the latency phase.
async fn measure(
    scratch: &Scratch,
    args: &BenchArgs,
    players: &Players,
    with_latency: bool,
) -> Result<(WorkloadReport, Option<LatencyReport>), BenchError> {
    // The children inherit this process's environment (connections, OTEL_* variables).
    let load_average_start = report::load_average();
    let events: Vec<Event> = (0..args.events)
        .map(|i| bench_event_for(i, players, args.games))
        .collect();
    eprintln!(
        "bench: {} workload: pre-filling {} events of {} players over {} partitions",
        players.name(),
        events.len(),
        players.count(),
        args.partitions
    );
    let started = Instant::now();
    throughput::prefill(scratch, &events, args.traceparent_sampled).await?;
    let prefill_rate = events.len() as f64 / started.elapsed().as_secs_f64();

    eprintln!("bench: raw fetch limit");
    let raw_fetch = limits::raw_fetch_rate(scratch).await?;
    eprintln!("bench: COPY limit");
    let copy = limits::copy_rate(scratch, &events).await?;
    drop(events);

    eprintln!("bench: pipeline");
    let run = throughput::run_pipeline(scratch, args).await?;
    let load_average_end = report::load_average();
    let latency = if with_latency {
        eprintln!(
            "bench: latency at {} events/s for {:?}",
            args.latency_rate, args.latency_duration
        );
        Some(latency::run(scratch, args).await?)
    } else {
        None
    };
    let rows = scratch.row_counts().await?;
    let n = args.events as f64;
    let slowest = run.sink_seconds.values().copied().fold(0.0, f64::max);
    let pipeline_rate = if slowest > 0.0 { n / slowest } else { 0.0 };
    let sink_events_per_sec: BTreeMap<String, f64> = run
        .sink_seconds
        .iter()
        .map(|(k, s)| (k.clone(), n / s))
        .collect();
    let workload = WorkloadReport {
        workload: players.name(),
        players: players.count(),
        zipf_exponent: players.exponent(),
        top_percent_share: players.top_percent_share(),
        workload_load_average_start: load_average_start,
        workload_load_average_end: load_average_end,
        prefill_events_per_sec: prefill_rate,
        raw_fetch_records_per_sec: raw_fetch,
        copy_rows_per_sec: copy,
        sink_ratio_to_copy: sink_events_per_sec
            .iter()
            .map(|(k, rate)| (k.clone(), rate / copy))
            .collect(),
        sink_events_per_sec,
        sink_seconds: run.sink_seconds,
        sink_committed_offsets: run.sink_committed,
        end_offsets: run.end_offsets,
        pipeline_events_per_sec: pipeline_rate,
        ratio_to_copy: pipeline_rate / copy,
        ratio_to_raw_fetch: pipeline_rate / raw_fetch,
        daemon_peak_rss_mb: run.peak_rss_mb,
        cpu: run.cpu,
        pg_activity: run.pg_activity,
        rows,
    };
    Ok((workload, latency))
}

/// Events after which the generated times start over from the base (7 ms apart: 1.9 h).
const TIME_SPREAD_EVENTS: usize = 1_000_000;

/// The time the generated events start from, fixed once per run.
static BENCH_BASE_TIME: std::sync::OnceLock<chrono::DateTime<chrono::Utc>> =
    std::sync::OnceLock::new();

/// A realistic mix: 30% scores, many players and games, small `data` objects; every
/// player equally active.
pub fn bench_event(i: usize, players: usize, games: usize) -> Event {
    bench_event_for(i, &Players::uniform(players), games)
}

/// The `i`-th event of a workload whose players are drawn from `players`.
pub fn bench_event_for(i: usize, players: &Players, games: usize) -> Event {
    // A cheap deterministic scramble so players and games do not advance in lockstep.
    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let kinds = [
        "player_level_up",
        "quest_completed",
        "achievement_unlocked",
        "boss_defeated",
    ];
    let (event_type, data, score) = if h % 10 < 3 {
        let score = (h >> 20) % 1000;
        (
            "player_score".to_owned(),
            format!(r#"{{"score":{score},"combo":{}}}"#, h % 7),
            Score::Integer(score as i64),
        )
    } else {
        let kind = kinds[(h >> 8) as usize % kinds.len()];
        (
            kind.to_owned(),
            format!(r#"{{"level":{},"zone":"z{}"}}"#, h % 60, h % 13),
            Score::Absent,
        )
    };
    let base = *BENCH_BASE_TIME.get_or_init(|| {
        // Recent enough that no retention (7 days on the raw topic) deletes the records
        // while they are consumed: the start of the hour two hours ago, so 1M events
        // (7 ms apart) end before now. A fixed date from the past did get deleted by
        // Apache Kafka mid-run.
        let two_hours_ago = chrono::Utc::now() - chrono::Duration::hours(2);
        let hour = two_hours_ago.timestamp() - two_hours_ago.timestamp().rem_euclid(3600);
        chrono::DateTime::<chrono::Utc>::from_timestamp(hour, 0).unwrap_or(two_hours_ago)
    });
    // Every millionth event starts over at the base, so that any count stays within the
    // two hours: Apache Kafka refuses a record timestamped more than an hour ahead
    // (`log.message.timestamp.after.max.ms`), which 5M events 7 ms apart would be.
    let spread_ms = (i % TIME_SPREAD_EVENTS) as i64 * 7;
    Event {
        event_id: uuid::Uuid::new_v4(),
        event_type,
        player_id: format!("player-{}", players.pick(i, h)),
        game_id: format!("game-{}", (h >> 40) as usize % games.max(1)),
        timestamp: base + chrono::Duration::milliseconds(spread_ms),
        ingested_at: base + chrono::Duration::milliseconds(spread_ms + 3),
        data,
        score,
    }
}
