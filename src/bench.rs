//! `gamestream bench`: what the whole pipeline does on this hardware, next to what the
//! hardware itself allows.
//!
//! ```text
//! prefill N events ─► raw fetch limit (rskafka, records/s)
//!                  ─► COPY limit (same rows, identically indexed table, rows/s)
//!                  ─► `gamestream serve --mode consume` as a child: time until every sink
//!                     committed the end offsets; its peak RSS
//! ```
//!
//! Everything runs against the configured services in a scratch database and scratch
//! topics (removed afterwards unless `--keep`), so it never touches production names.
//! Output: a table, and JSON (`--json FILE`) for comparing commits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rskafka::client::partition::{Compression, UnknownTopicHandling};
use serde::Serialize;

use crate::config::Config;
use crate::daemon::DaemonError;
use crate::event::{Event, Score};
use crate::sinks::{kafka, postgres};

/// Options of `gamestream bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Events to pre-fill the raw topic with.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Distinct players in the generated events.
    #[arg(long, default_value_t = 20_000)]
    pub players: usize,
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
    /// Give up waiting for the pipeline after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// The results, as printed and as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub cores: usize,
    pub events: usize,
    pub partitions: i32,
    pub prefill_events_per_sec: f64,
    pub raw_fetch_records_per_sec: f64,
    pub copy_rows_per_sec: f64,
    /// Seconds from daemon start until each sink committed the end of every partition.
    pub sink_seconds: BTreeMap<String, f64>,
    pub sink_events_per_sec: BTreeMap<String, f64>,
    /// Events/s until the last sink finished.
    pub pipeline_events_per_sec: f64,
    pub ratio_to_copy: f64,
    pub ratio_to_raw_fetch: f64,
    pub daemon_peak_rss_mb: f64,
}

/// The sinks that commit offsets to Postgres `sink_offsets`, which the benchmark waits for.
pub const POSTGRES_SINKS: &[&str] = &[
    crate::actors::logger::LOGGER,
    crate::actors::stats::STATS,
    crate::actors::leaderboard::LEADERBOARD,
];

/// The sinks that commit offsets to Redis, which the benchmark waits for too.
pub const REDIS_SINKS: &[&str] = &[
    crate::actors::stats::STATS_REDIS,
    crate::actors::leaderboard::LEADERBOARD_REDIS,
];

/// Runs the benchmark.
pub async fn run(config: &Config, args: &BenchArgs) -> Result<ExitCode, DaemonError> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let scratch = Scratch::create(config, &id, args.partitions).await?;
    let report = measure(config, &scratch, args).await;
    if !args.keep {
        scratch.remove(config).await;
    }
    let report = report?;
    print_table(&report);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("gamestream bench: cannot write {}: {e}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
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
    async fn create(base: &Config, id: &str, partitions: i32) -> Result<Self, DaemonError> {
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

async fn measure(
    base: &Config,
    scratch: &Scratch,
    args: &BenchArgs,
) -> Result<BenchReport, DaemonError> {
    let events: Vec<Event> = (0..args.events)
        .map(|i| bench_event(i, args.players, args.games))
        .collect();
    eprintln!(
        "bench: pre-filling {} events over {} partitions",
        events.len(),
        args.partitions
    );
    let started = Instant::now();
    prefill(scratch, &events).await?;
    let prefill_rate = events.len() as f64 / started.elapsed().as_secs_f64();

    eprintln!("bench: raw fetch limit");
    let raw_fetch = raw_fetch_rate(scratch).await?;
    eprintln!("bench: COPY limit");
    let copy = copy_rate(scratch, &events).await?;
    drop(events);

    eprintln!("bench: pipeline");
    let (sink_seconds, peak_rss) = run_pipeline(base, scratch, args).await?;
    let n = args.events as f64;
    let slowest = sink_seconds.values().copied().fold(0.0, f64::max);
    let pipeline_rate = if slowest > 0.0 { n / slowest } else { 0.0 };
    Ok(BenchReport {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        events: args.events,
        partitions: args.partitions,
        prefill_events_per_sec: prefill_rate,
        raw_fetch_records_per_sec: raw_fetch,
        copy_rows_per_sec: copy,
        sink_events_per_sec: sink_seconds
            .iter()
            .map(|(k, s)| (k.clone(), n / s))
            .collect(),
        sink_seconds,
        pipeline_events_per_sec: pipeline_rate,
        ratio_to_copy: pipeline_rate / copy,
        ratio_to_raw_fetch: pipeline_rate / raw_fetch,
        daemon_peak_rss_mb: peak_rss,
    })
}

/// A realistic mix: 30% scores, many players and games, small `data` objects.
pub fn bench_event(i: usize, players: usize, games: usize) -> Event {
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
    let base =
        chrono::DateTime::<chrono::Utc>::from_timestamp(1_763_800_000, 0).unwrap_or_default();
    Event {
        event_id: uuid::Uuid::new_v4(),
        event_type,
        player_id: format!("player-{}", (h >> 16) as usize % players.max(1)),
        game_id: format!("game-{}", (h >> 40) as usize % games.max(1)),
        timestamp: base + chrono::Duration::milliseconds(i as i64 * 7),
        ingested_at: base + chrono::Duration::milliseconds(i as i64 * 7 + 3),
        data,
        score,
    }
}

async fn prefill(scratch: &Scratch, events: &[Event]) -> Result<(), DaemonError> {
    let topic = &scratch.config.topics.player_events;
    let partitions = scratch.config.topics.player_events_partitions;
    let mut by_partition: Vec<Vec<rskafka::record::Record>> =
        (0..partitions).map(|_| Vec::new()).collect();
    for event in events {
        let p = kafka::partition_for_key(event.player_id.as_bytes(), partitions) as usize;
        by_partition[p].push(rskafka::record::Record {
            key: Some(event.player_id.clone().into_bytes()),
            value: Some(event.to_record_value()),
            headers: BTreeMap::new(),
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
                let chunk: Vec<_> = records.by_ref().take(2000).collect();
                client.produce(chunk, Compression::NoCompression).await?;
            }
            Ok::<(), rskafka::client::error::Error>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result
            .map_err(|e| DaemonError::Pipeline(e.to_string()))?
            .map_err(kafka::KafkaError::from)?;
    }
    Ok(())
}

/// Fetches every partition to its end, concurrently, as fast as rskafka can.
async fn raw_fetch_rate(scratch: &Scratch) -> Result<f64, DaemonError> {
    let topic = &scratch.config.topics.player_events;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..scratch.config.topics.player_events_partitions {
        let client = scratch
            .kafka
            .partition_client(topic.clone(), p, UnknownTopicHandling::Retry)
            .await
            .map_err(kafka::KafkaError::from)?;
        let max_bytes = scratch.config.consumer.fetch_max_bytes;
        tasks.spawn(async move {
            let (mut offset, mut count) = (0_i64, 0_usize);
            loop {
                let (records, hw) = client.fetch_records(offset, 1..max_bytes, 100).await?;
                for r in &records {
                    if r.offset >= offset {
                        count += 1;
                        offset = r.offset + 1;
                    }
                }
                if offset >= hw {
                    return Ok::<usize, rskafka::client::error::Error>(count);
                }
            }
        });
    }
    let mut total = 0;
    while let Some(result) = tasks.join_next().await {
        total += result
            .map_err(|e| DaemonError::Pipeline(e.to_string()))?
            .map_err(kafka::KafkaError::from)?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// A plain COPY of the same rows into a table indexed like `events`.
async fn copy_rate(scratch: &Scratch, events: &[Event]) -> Result<f64, DaemonError> {
    sqlx::query("CREATE TABLE bench_copy_limit (LIKE events INCLUDING ALL)")
        .execute(&scratch.pg)
        .await?;
    let mut conn = scratch.pg.acquire().await?;
    let started = Instant::now();
    for chunk in events.chunks(50_000) {
        let refs: Vec<&Event> = chunk.iter().collect();
        let buffer = postgres::events::copy_buffer(&refs);
        let mut copy = conn
            .copy_in_raw("COPY bench_copy_limit (event_id, event_type, player_id, game_id, event_timestamp, ingested_at, data) FROM STDIN")
            .await?;
        copy.send(buffer).await?;
        copy.finish().await?;
    }
    let rate = events.len() as f64 / started.elapsed().as_secs_f64();
    drop(conn);
    sqlx::query("DROP TABLE bench_copy_limit")
        .execute(&scratch.pg)
        .await?;
    Ok(rate)
}

/// Runs `gamestream serve --mode consume` on the scratch names until every sink has
/// committed the end of every partition; returns seconds per sink and peak RSS in MB.
async fn run_pipeline(
    base: &Config,
    scratch: &Scratch,
    args: &BenchArgs,
) -> Result<(BTreeMap<String, f64>, f64), DaemonError> {
    let topic = scratch.config.topics.player_events.clone();
    let ends = end_offsets(scratch).await?;
    let exe = std::env::current_exe()
        .map_err(|e| DaemonError::Pipeline(format!("cannot find own binary: {e}")))?;
    let sets = [
        ("mode", "\"consume\"".to_owned()),
        ("http.port", "0".to_owned()),
        (
            "postgres.database",
            format!("\"{}\"", scratch.config.postgres.database),
        ),
        ("topics.player_events", format!("\"{topic}\"")),
        ("topics.dlq", format!("\"{}\"", scratch.config.topics.dlq)),
        (
            "redis.key_prefix",
            format!("\"{}\"", scratch.config.redis.key_prefix),
        ),
    ];
    let mut cmd = tokio::process::Command::new(exe);
    for (key, value) in &sets {
        cmd.arg("--set").arg(format!("{key}={value}"));
    }
    let _ = base; // the child inherits this process's environment and so its connection settings
    cmd.arg("serve")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| DaemonError::Pipeline(format!("cannot start the daemon: {e}")))?;
    let pid = child.id().unwrap_or(0);
    let mut done: BTreeMap<String, f64> = BTreeMap::new();
    let mut peak_rss_kb = 0_u64;
    while done.len() < POSTGRES_SINKS.len() + REDIS_SINKS.len() {
        if started.elapsed() > args.timeout {
            return Err(DaemonError::Pipeline(format!(
                "pipeline did not finish within {:?}",
                args.timeout
            )));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(DaemonError::Pipeline(format!(
                "the daemon exited early: {status}"
            )));
        }
        peak_rss_kb = peak_rss_kb.max(rss_kb(pid, "VmHWM:"));
        let rows: Vec<(String, i32, i64)> = sqlx::query_as(
            "SELECT sink, partition, next_offset FROM sink_offsets WHERE topic = $1",
        )
        .bind(&topic)
        .fetch_all(&scratch.pg)
        .await?;
        for sink in POSTGRES_SINKS {
            let complete = ends.iter().all(|(p, end)| {
                *end == 0
                    || rows
                        .iter()
                        .any(|(s, rp, o)| s == sink && rp == p && o >= end)
            });
            if complete && !done.contains_key(*sink) {
                done.insert((*sink).to_owned(), started.elapsed().as_secs_f64());
            }
        }
        for sink in REDIS_SINKS {
            if done.contains_key(*sink) {
                continue;
            }
            let committed = scratch.redis_committed(sink).await;
            let complete = ends
                .iter()
                .all(|(p, end)| *end == 0 || committed.get(p).is_some_and(|o| o >= end));
            if complete {
                done.insert((*sink).to_owned(), started.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peak_rss_kb = peak_rss_kb.max(rss_kb(pid, "VmHWM:"));
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    Ok((done, peak_rss_kb as f64 / 1024.0))
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
async fn end_offsets(scratch: &Scratch) -> Result<Vec<(i32, i64)>, DaemonError> {
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

fn print_table(r: &BenchReport) {
    println!(
        "gamestream bench: {} events, {} partitions, {} cores",
        r.events, r.partitions, r.cores
    );
    println!("{:<34} {:>14}", "measure", "value");
    println!(
        "{:<34} {:>14.0}",
        "prefill (events/s)", r.prefill_events_per_sec
    );
    println!(
        "{:<34} {:>14.0}",
        "limit: raw fetch (records/s)", r.raw_fetch_records_per_sec
    );
    println!(
        "{:<34} {:>14.0}",
        "limit: plain COPY (rows/s)", r.copy_rows_per_sec
    );
    for (sink, rate) in &r.sink_events_per_sec {
        println!("{:<34} {:>14.0}", format!("sink {sink} (events/s)"), rate);
    }
    println!(
        "{:<34} {:>14.0}",
        "pipeline, all sinks (events/s)", r.pipeline_events_per_sec
    );
    println!("{:<34} {:>14.2}", "ratio to COPY limit", r.ratio_to_copy);
    println!(
        "{:<34} {:>14.2}",
        "ratio to raw fetch limit", r.ratio_to_raw_fetch
    );
    println!(
        "{:<34} {:>14.1}",
        "daemon peak RSS (MB)", r.daemon_peak_rss_mb
    );
}
