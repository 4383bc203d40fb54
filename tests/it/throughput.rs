//! Write throughput of the statistics and leaderboard sink writers alone (no broker, no
//! reader): the same calls the sink actors make, on the real Postgres and Redis.
//!
//! ```text
//! cargo test --release --test it throughput:: -- --ignored --nocapture
//! GS_BENCH_EVENTS=500000 GS_BENCH_PLAYERS=20000 cargo test --release --test it throughput:: -- --ignored --nocapture
//! ```
//!
//! Events are `gamestream bench`'s mix (30% scores, 20,000 players, 100 games) with
//! times in the last hours, so the leaderboard writes also hit today's and this week's
//! boards (the heaviest case). Writes are cut as the sink actors cut them: the
//! configured batch size, records of every partition in each, offsets committed with
//! compare-and-set.

use std::time::{Duration, Instant};

use crate::common::TestEnv;
use chrono::Utc;
use gamestream::actors::leaderboard::{LeaderboardPgWriter, LeaderboardRedisWriter};
use gamestream::actors::leaderboard_refresher::{LeaderboardRefresher, RefresherArgs};
use gamestream::actors::sink::{SinkRecord, SinkWriter, WriteBatch};
use gamestream::actors::stats::{StatsPgWriter, StatsRedisWriter};
use gamestream::event::Event;
use gamestream::sinks::OffsetCommit;
use gamestream::sinks::redis::RedisKeys;

const PARTITIONS: i32 = 3;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (partition, offset, event), in offset order per partition.
fn stream(n: usize, players: usize, games: usize) -> Vec<(i32, i64, Event)> {
    let now = Utc::now();
    let mut next = [0i64; PARTITIONS as usize];
    (0..n)
        .map(|i| {
            let mut event = gamestream::bench::bench_event(i, players, games);
            event.timestamp = now - chrono::Duration::milliseconds(((n - i) * 7) as i64);
            let p = gamestream::kafka::partition_for_key(event.player_id.as_bytes(), PARTITIONS);
            let offset = next[p as usize];
            next[p as usize] += 1;
            (p, offset, event)
        })
        .collect()
}

/// Feeds `records` to `writer` in writes of `batch_size`; returns events/s.
async fn drive<W: SinkWriter>(
    writer: &mut W,
    topic: &str,
    records: &[(i32, i64, Event)],
    batch_size: usize,
) -> (f64, usize) {
    let mut committed = writer.committed(topic).await.expect("committed offsets");
    let started = Instant::now();
    let mut writes = 0;
    for chunk in records.chunks(batch_size) {
        let mut next = std::collections::BTreeMap::new();
        let records: Vec<SinkRecord<'_>> = chunk
            .iter()
            .map(|(partition, offset, event)| {
                next.insert(*partition, offset + 1);
                SinkRecord {
                    partition: *partition,
                    offset: *offset,
                    event,
                }
            })
            .collect();
        let commits = next
            .iter()
            .map(|(partition, next)| OffsetCommit {
                partition: *partition,
                expected: committed.get(partition).copied(),
                next: *next,
                epoch: None,
            })
            .collect();
        let batch = WriteBatch {
            topic,
            records,
            commits,
        };
        writer.write(&batch).await.expect("write");
        committed.extend(next);
        writes += 1;
    }
    (
        records.len() as f64 / started.elapsed().as_secs_f64(),
        writes,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --release --test it throughput:: -- --ignored --nocapture"]
async fn sink_writers_throughput() {
    let env = TestEnv::new().await;
    let n = setting("GS_BENCH_EVENTS", 200_000);
    let players = setting("GS_BENCH_PLAYERS", 20_000);
    let games = setting("GS_BENCH_GAMES", 100);
    let records = stream(n, players, games);
    let topic = env.config.topics.player_events.clone();
    let config = &env.config;
    let redis = gamestream::sinks::redis::connect(&config.redis)
        .await
        .expect("redis");
    let keys = RedisKeys::new(config.redis.key_prefix.clone());
    let settings = gamestream::sinks::redis::RedisSinkSettings::from_config(config);
    let (refresher, _) = ractor::Actor::spawn(
        None,
        LeaderboardRefresher,
        RefresherArgs {
            pg: env.pg.clone(),
            refresh_interval: config.leaderboard.refresh_interval,
            top_n: config.leaderboard.top_n,
        },
    )
    .await
    .expect("refresher");

    println!("{n} events, {players} players, {games} games, {PARTITIONS} partitions");
    let report = |name: &str, (rate, writes): (f64, usize), batch: usize| {
        println!("{name:<28} {rate:>10.0} events/s   ({writes} writes of up to {batch})");
    };
    let stats_batch = config.stats.buffer_size;
    let scores_batch = config.leaderboard.batch_size;
    let mut w = StatsPgWriter { pg: env.pg.clone() };
    report(
        "stats-aggregator",
        drive(&mut w, &topic, &records, stats_batch).await,
        stats_batch,
    );
    let mut w = StatsRedisWriter::new(
        redis.clone(),
        env.pg.clone(),
        keys.clone(),
        settings.clone(),
    );
    report(
        "stats-aggregator-redis",
        drive(&mut w, &topic, &records, stats_batch).await,
        stats_batch,
    );
    let mut w = LeaderboardPgWriter {
        pg: env.pg.clone(),
        refresher: refresher.clone(),
    };
    report(
        "leaderboard-manager",
        drive(&mut w, &topic, &records, scores_batch).await,
        scores_batch,
    );
    let mut w = LeaderboardRedisWriter::new(redis.clone(), env.pg.clone(), keys, settings);
    report(
        "leaderboard-manager-redis",
        drive(&mut w, &topic, &records, scores_batch).await,
        scores_batch,
    );

    let started = Instant::now();
    let rows =
        gamestream::sinks::postgres::leaderboard::refresh(&env.pg, None, config.leaderboard.top_n)
            .await
            .expect("refresh");
    println!(
        "leaderboards refresh (all games)   {:>6.0} ms   ({rows} rows written)",
        started.elapsed().as_secs_f64() * 1000.0
    );
    refresher.stop(None);
    tokio::time::sleep(Duration::from_millis(10)).await;

    // Sanity: every event counted once.
    let total: i64 = sqlx::query_scalar("SELECT SUM(total_events)::int8 FROM player_statistics")
        .fetch_one(&env.pg)
        .await
        .expect("sum");
    assert_eq!(total, n as i64);
}
