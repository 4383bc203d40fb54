//! `gamestream offsets show` and `gamestream offsets reset`: the sinks' positions in
//! the raw topic.
//!
//! The Postgres sinks keep theirs in `sink_offsets`, the Redis sinks in the hash
//! `{prefix}gamestream:offsets:{sink}:{topic}`; both store the *next* offset to apply.
//! The high watermark comes from a Fetch (tansu's ListOffsets(latest) is not reliable),
//! the earliest offset and time lookups from ListOffsets.
//!
//! A reset writes a sink's stored offset while no daemon holds the partition (a live
//! row in `partition_leases`); a daemon that held it would overwrite the reset with its
//! next commit, or be fenced by it. For the Postgres sinks the lease rows are locked
//! in the same transaction as the write, so a daemon cannot take the partition in
//! between. `--force` skips the check.

use crate::exit::Exit;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use rskafka::client::Client;
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use serde::Serialize;

use super::{OpsError, Result};
use crate::catalogue::{self, Store};
use crate::config::Config;
use crate::kafka;
use crate::sinks::redis::keys::{INITIALISED_FIELD, REBUILD_REQUESTED_FIELD};
use crate::sinks::redis::{RedisKeys, offsets as redis_offsets};
use crate::sinks::{postgres, redis};

/// Bytes asked for by the Fetch that reads a partition's high watermark: the answer
/// carries the watermark whatever the records, so one small record is enough.
const WATERMARK_FETCH_BYTES: i32 = 1024;
/// Bytes asked for by each Fetch of a time lookup (the broker returns at least one
/// whole batch however small this is).
const TIME_LOOKUP_FETCH_BYTES: i32 = 64 * 1024;
/// How long that Fetch may wait for records, ms: not at all, only the watermark matters.
const WATERMARK_FETCH_WAIT_MS: i32 = 0;

#[derive(Debug, Subcommand)]
pub enum OffsetsAction {
    /// Per sink and partition: committed (next) offset, high watermark, lag, lease holder.
    Show(ShowArgs),
    /// Move a sink's committed offset; refused while a daemon holds the partition.
    Reset(ResetArgs),
    /// Ask a Redis sink to rebuild its keys from its Postgres twin: deletes every key of
    /// its store (`player_stats:*` or `leaderboard:*`) and copies Postgres's rows and
    /// offsets, at the sink's next start (a running sink is restarted into it). The only
    /// way to replace keys gamestream did not write; refused while a daemon holds a partition.
    Rebuild(RebuildArgs),
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The Redis sink: stats-aggregator-redis or leaderboard-manager-redis.
    #[arg(long)]
    pub sink: String,
    /// Ask even while a daemon holds partitions (its sink rebuilds at its next write).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Only this sink.
    #[arg(long)]
    pub sink: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The sink: event-logger, stats-aggregator, leaderboard-manager (Postgres),
    /// stats-aggregator-redis, leaderboard-manager-redis (Redis).
    #[arg(long)]
    pub sink: String,
    /// `earliest`, `latest`, an offset, or an RFC 3339 time (the first record at or after it).
    #[arg(long, value_parser = ResetTarget::parse)]
    pub to: ResetTarget,
    /// Only this partition (default: every partition of the raw topic).
    #[arg(long)]
    pub partition: Option<i32>,
    /// Reset even while a daemon holds the partition (it may overwrite the reset).
    #[arg(long)]
    pub force: bool,
}

/// Where `offsets reset` moves a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    Earliest,
    Latest,
    Offset(i64),
    Time(DateTime<Utc>),
}

impl ResetTarget {
    pub fn parse(raw: &str) -> std::result::Result<Self, String> {
        match raw {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            _ => {
                if let Ok(offset) = raw.parse::<i64>() {
                    return if offset >= 0 {
                        Ok(Self::Offset(offset))
                    } else {
                        Err(format!("an offset is at least 0, got {offset}"))
                    };
                }
                DateTime::parse_from_rfc3339(raw)
                    .map(|t| Self::Time(t.with_timezone(&Utc)))
                    .map_err(|_| {
                        format!(
                            "expected earliest, latest, an offset or an RFC 3339 time, got `{raw}`"
                        )
                    })
            }
        }
    }
}

/// Runs an `offsets` subcommand.
pub async fn command(action: OffsetsAction, config: &Config) -> Exit {
    match action {
        OffsetsAction::Show(args) => {
            super::exit_code("offsets show", show_command(&args, config).await)
        }
        OffsetsAction::Reset(args) => {
            super::exit_code("offsets reset", reset_command(&args, config).await)
        }
        OffsetsAction::Rebuild(args) => {
            super::exit_code("offsets rebuild", rebuild_command(&args, config).await)
        }
    }
}

fn store_of(sink: &str) -> Result<Store> {
    catalogue::find(sink).map(|spec| spec.store).ok_or_else(|| {
        OpsError::Usage(format!(
            "unknown sink `{sink}`; the sinks are {}",
            all_sinks().collect::<Vec<_>>().join(", ")
        ))
    })
}

fn all_sinks() -> impl Iterator<Item = &'static str> {
    catalogue::names()
}

/// One row of `offsets show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OffsetRow {
    pub sink: String,
    pub store: Store,
    pub topic: String,
    pub partition: i32,
    /// The next offset the sink will apply; `None` when it has committed nothing yet.
    pub committed: Option<i64>,
    pub earliest: i64,
    pub high_watermark: i64,
    /// Records the sink has not applied: from its committed offset (or the earliest
    /// offset, where it starts without one) to the high watermark.
    pub lag: i64,
    /// The daemon holding the partition's lease, if any.
    pub holder: Option<String>,
}

/// The broker's bounds of one partition.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds {
    pub(super) earliest: i64,
    pub(super) high_watermark: i64,
}

pub(super) async fn partition_clients(
    client: &Client,
    topic: &str,
) -> Result<Vec<PartitionClient>> {
    let count = kafka::partition_count(client, topic).await?;
    let mut out = Vec::new();
    for partition in 0..count {
        out.push(
            client
                .partition_client(topic.to_owned(), partition, UnknownTopicHandling::Retry)
                .await?,
        );
    }
    Ok(out)
}

pub(super) async fn bounds(pc: &PartitionClient) -> Result<Bounds> {
    let earliest = pc.get_offset(OffsetAt::Earliest).await?;
    let (_, high_watermark) = pc
        .fetch_records(earliest, 1..WATERMARK_FETCH_BYTES, WATERMARK_FETCH_WAIT_MS)
        .await?;
    Ok(Bounds {
        earliest,
        high_watermark,
    })
}

/// Refuses (unless `force`) while a daemon holds a partition of `topic`; what it was
/// going to do is `action` in the message.
pub async fn refuse_while_held(
    pool: &sqlx::PgPool,
    topic: &str,
    action: &str,
    force: bool,
) -> Result<()> {
    let held = holders(pool, topic).await?;
    if held.is_empty() {
        return Ok(());
    }
    let who = held
        .iter()
        .map(|(p, owner)| format!("partition {p} held by `{owner}`"))
        .collect::<Vec<_>>()
        .join("; ");
    if force {
        tracing::warn!(holders = %who, "{action} while a daemon runs (--force)");
        return Ok(());
    }
    Err(OpsError::Refused(format!(
        "a gamestream daemon is running: {who}. Stop every daemon (or wait for its leases to \
         expire) before you {action}"
    )))
}

/// Live lease holders of `topic`, by partition.
pub(super) async fn holders(pool: &sqlx::PgPool, topic: &str) -> Result<BTreeMap<i32, String>> {
    let rows: Vec<(i32, String)> = sqlx::query_as(
        "SELECT partition, owner FROM partition_leases
         WHERE topic = $1 AND owner IS NOT NULL AND expires_at > now()",
    )
    .bind(topic)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Every sink's offsets (or one sink's), with the broker's watermarks and lease holders.
pub async fn show(config: &Config, sink: Option<&str>) -> Result<Vec<OffsetRow>> {
    let sinks: Vec<&str> = match sink {
        Some(sink) => {
            store_of(sink)?;
            vec![sink]
        }
        None => all_sinks().collect(),
    };
    let topic = config.topics.player_events.as_str();
    let client = kafka::connect(&config.kafka).await?;
    let mut partitions = Vec::new();
    for pc in partition_clients(&client, topic).await? {
        partitions.push((pc.partition(), bounds(&pc).await?));
    }
    let pool = postgres::connect(&config.postgres).await?;
    let holders = holders(&pool, topic).await?;
    let mut committed: BTreeMap<&str, BTreeMap<i32, i64>> = BTreeMap::new();
    let redis_pool = if sinks.iter().any(|s| store_of(s).ok() == Some(Store::Redis)) {
        Some(redis::connect(&config.redis).await?)
    } else {
        None
    };
    for &sink in &sinks {
        let offsets = match (store_of(sink)?, &redis_pool) {
            (Store::Postgres, _) | (Store::Redis, None) => {
                postgres::offsets::load(&pool, sink, topic).await?
            }
            (Store::Redis, Some(redis_pool)) => {
                let mut conn = redis_pool.get().await.map_err(redis::RedisError::from)?;
                let key = RedisKeys::new(config.redis.key_prefix.clone()).offsets(sink, topic);
                // No marker: Redis lost its data; the sink rebuilds from Postgres on start.
                redis_offsets::load(&mut *conn, &key)
                    .await?
                    .unwrap_or_default()
            }
        };
        committed.insert(sink, offsets);
    }
    let mut rows = Vec::new();
    for &sink in &sinks {
        for &(partition, b) in &partitions {
            let stored = committed[sink].get(&partition).copied();
            rows.push(OffsetRow {
                sink: sink.to_owned(),
                store: store_of(sink)?,
                topic: topic.to_owned(),
                partition,
                committed: stored,
                earliest: b.earliest,
                high_watermark: b.high_watermark,
                lag: (b.high_watermark - stored.unwrap_or(b.earliest).max(b.earliest)).max(0),
                holder: holders.get(&partition).cloned(),
            });
        }
    }
    Ok(rows)
}

async fn show_command(args: &ShowArgs, config: &Config) -> Result<Exit> {
    let rows = show(config, args.sink.as_deref()).await?;
    if args.json {
        for row in &rows {
            // Strings and integers always serialize.
            println!("{}", serde_json::to_string(row).unwrap_or_default());
        }
        return Ok(Exit::Success);
    }
    println!(
        "{:<26} {:<8} {:>9} {:>12} {:>12} {:>12} {:>10}  holder",
        "sink", "store", "partition", "committed", "earliest", "high_wm", "lag"
    );
    for r in &rows {
        println!(
            "{:<26} {:<8} {:>9} {:>12} {:>12} {:>12} {:>10}  {}",
            r.sink,
            match r.store {
                Store::Postgres => "postgres",
                Store::Redis => "redis",
            },
            r.partition,
            r.committed
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            r.earliest,
            r.high_watermark,
            r.lag,
            r.holder.as_deref().unwrap_or("-"),
        );
    }
    Ok(Exit::Success)
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetMove {
    pub partition: i32,
    pub from: Option<i64>,
    pub to: i64,
}

/// Resolves `target` to an offset of the partition.
async fn resolve(pc: &PartitionClient, target: ResetTarget) -> Result<i64> {
    let b = bounds(pc).await?;
    let offset = match target {
        ResetTarget::Earliest => b.earliest,
        ResetTarget::Latest => b.high_watermark,
        ResetTarget::Offset(offset) => {
            if offset < b.earliest || offset > b.high_watermark {
                return Err(OpsError::Refused(format!(
                    "partition {}: offset {offset} is outside what the broker holds ({}..={})",
                    pc.partition(),
                    b.earliest,
                    b.high_watermark
                )));
            }
            offset
        }
        ResetTarget::Time(t) => offset_at_time(pc, b, t).await?,
    };
    Ok(offset)
}

/// The first offset whose record time is at or after `t` (the end of the partition when
/// every record is older), as Kafka's ListOffsets defines it.
///
/// The broker's ListOffsets answer is used when the records agree with it (the record
/// at the answer is at or after `t`, the one before it older). Brokers differ here:
/// tansu 0.6 compares the time its storage wrote a batch, not the records' timestamps,
/// and answers 0 where Kafka answers -1 (no such record). When the check fails, the
/// offset is found by a binary search over the records' own timestamps with Fetch,
/// which assumes they grow with the offset, as the producer's clock makes them.
async fn offset_at_time(pc: &PartitionClient, b: Bounds, t: DateTime<Utc>) -> Result<i64> {
    let answer = match pc.get_offset(OffsetAt::Timestamp(t)).await? {
        offset if offset < 0 => b.high_watermark,
        offset => offset.clamp(b.earliest, b.high_watermark),
    };
    let at_or_after = answer == b.high_watermark || record_time(pc, answer).await? >= t;
    let before = answer == b.earliest || record_time(pc, answer - 1).await? < t;
    if at_or_after && before {
        return Ok(answer);
    }
    tracing::debug!(
        partition = pc.partition(),
        broker_answer = answer,
        "ListOffsets by time disagrees with the records; searching"
    );
    let (mut low, mut high) = (b.earliest, b.high_watermark);
    while low < high {
        let middle = low + (high - low) / 2;
        if record_time(pc, middle).await? >= t {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    Ok(low)
}

/// The timestamp of the record at `offset` (or of the next one, where compaction left a gap).
async fn record_time(pc: &PartitionClient, offset: i64) -> Result<DateTime<Utc>> {
    let (records, _) = pc
        .fetch_records(offset, 1..TIME_LOOKUP_FETCH_BYTES, WATERMARK_FETCH_WAIT_MS)
        .await?;
    records
        .iter()
        .find(|r| r.offset >= offset)
        .map(|r| r.record.timestamp)
        .ok_or_else(|| {
            OpsError::Refused(format!(
                "partition {}: the broker returned no record at offset {offset}",
                pc.partition()
            ))
        })
}

/// Moves `sink`'s offsets of the selected partitions to `target`. Refused while a daemon
/// holds one of them, unless `force`.
pub async fn reset(
    config: &Config,
    sink: &str,
    target: ResetTarget,
    partition: Option<i32>,
    force: bool,
) -> Result<Vec<ResetMove>> {
    let store = store_of(sink)?;
    let topic = config.topics.player_events.as_str();
    let client = kafka::connect(&config.kafka).await?;
    let clients = partition_clients(&client, topic).await?;
    let selected: Vec<&PartitionClient> = clients
        .iter()
        .filter(|pc| partition.is_none_or(|p| p == pc.partition()))
        .collect();
    if selected.is_empty() {
        return Err(OpsError::Usage(format!(
            "topic `{topic}` has no partition {}",
            partition.unwrap_or_default()
        )));
    }
    let mut targets = BTreeMap::new();
    for pc in selected {
        targets.insert(pc.partition(), resolve(pc, target).await?);
    }
    let pool = postgres::connect(&config.postgres).await?;
    let mut tx = pool.begin().await?;
    let partitions: Vec<i32> = targets.keys().copied().collect();
    // Locked until the commit: a daemon taking one of these partitions waits for it.
    let held: Vec<(i32, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT partition, owner, expires_at FROM partition_leases
         WHERE topic = $1 AND partition = ANY($2) AND owner IS NOT NULL AND expires_at > now()
         ORDER BY partition
         FOR UPDATE",
    )
    .bind(topic)
    .bind(&partitions)
    .fetch_all(&mut *tx)
    .await?;
    if !held.is_empty() {
        let who = held
            .iter()
            .map(|(p, owner, until)| {
                format!(
                    "partition {p} held by `{owner}` until {}",
                    crate::event::rfc3339(*until)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        if !force {
            return Err(OpsError::Refused(format!(
                "a daemon holds the partition(s): {who}. Stop it (or wait for the lease to expire) \
                 and run again, or pass --force"
            )));
        }
        tracing::warn!(sink, holders = %who, "resetting offsets of held partitions (--force)");
    }
    let moves = match store {
        Store::Postgres => {
            let before = postgres::offsets::load(&pool, sink, topic).await?;
            let offsets: Vec<i64> = partitions.iter().map(|p| targets[p]).collect();
            sqlx::query(
                "INSERT INTO sink_offsets (sink, topic, partition, next_offset)
                 SELECT $1, $2, p, o FROM UNNEST($3::int4[], $4::int8[]) AS u(p, o)
                 ON CONFLICT (sink, topic, partition)
                 DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
            )
            .bind(sink)
            .bind(topic)
            .bind(&partitions)
            .bind(&offsets)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            moves_of(&before, &targets)
        }
        Store::Redis => {
            let redis_pool = redis::connect(&config.redis).await?;
            let mut conn = redis_pool.get().await.map_err(redis::RedisError::from)?;
            let key = RedisKeys::new(config.redis.key_prefix.clone()).offsets(sink, topic);
            let before = redis_offsets::load(&mut *conn, &key).await?;
            if before.is_none() {
                eprintln!(
                    "warning: `{key}` has no initialised marker: {sink} will rebuild Redis from \
                     Postgres on its next start and take Postgres's offsets, not these"
                );
            }
            let mut hset = ::redis::cmd("HSET");
            hset.arg(&key);
            for (p, o) in &targets {
                hset.arg(p.to_string()).arg(o.to_string());
            }
            hset.query_async::<i64>(&mut *conn).await?;
            // The lease rows stay locked until after the Redis write.
            tx.commit().await?;
            moves_of(&before.unwrap_or_default(), &targets)
        }
    };
    Ok(moves)
}

fn moves_of(before: &BTreeMap<i32, i64>, targets: &BTreeMap<i32, i64>) -> Vec<ResetMove> {
    targets
        .iter()
        .map(|(&partition, &to)| ResetMove {
            partition,
            from: before.get(&partition).copied(),
            to,
        })
        .collect()
}

async fn reset_command(args: &ResetArgs, config: &Config) -> Result<Exit> {
    let moves = reset(config, &args.sink, args.to, args.partition, args.force).await?;
    for m in &moves {
        println!(
            "{} {} partition {}: {} -> {}",
            args.sink,
            config.topics.player_events,
            m.partition,
            m.from.map_or_else(|| "-".to_owned(), |f| f.to_string()),
            m.to
        );
    }
    let rewound = moves.iter().any(|m| m.from.is_some_and(|f| m.to < f));
    if rewound && catalogue::find(&args.sink).is_some_and(|spec| spec.additive) {
        eprintln!(
            "warning: {} counts: the records between the new and the old offset will be counted \
             again unless its data is rebuilt first (README, Operations: rewinding a sink)",
            args.sink
        );
    }
    Ok(Exit::Success)
}

/// Marks a Redis sink's store for a rebuild: its offsets hash loses the marker that says
/// its keys are complete and gains the request that lets the rebuild delete them.
pub async fn request_rebuild(config: &Config, sink: &str, force: bool) -> Result<()> {
    let spec = catalogue::find(sink).filter(|s| s.store == Store::Redis);
    let Some(spec) = spec else {
        return Err(OpsError::Usage(format!(
            "`{sink}` is not a Redis sink; the Redis sinks are {}",
            catalogue::in_store(Store::Redis)
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let topic = config.topics.player_events.as_str();
    let pool = postgres::connect(&config.postgres).await?;
    refuse_while_held(&pool, topic, "rebuild a Redis sink", force).await?;
    let redis_pool = redis::connect(&config.redis).await?;
    let mut conn = redis_pool.get().await.map_err(redis::RedisError::from)?;
    let key = RedisKeys::new(config.redis.key_prefix.clone()).offsets(spec.name, topic);
    ::redis::pipe()
        .atomic()
        .cmd("HDEL")
        .arg(&key)
        .arg(INITIALISED_FIELD)
        .ignore()
        .cmd("HSET")
        .arg(&key)
        .arg(REBUILD_REQUESTED_FIELD)
        .arg(format!(
            "{} (gamestream offsets rebuild)",
            crate::event::rfc3339(Utc::now())
        ))
        .ignore()
        .query_async::<()>(&mut *conn)
        .await?;
    Ok(())
}

async fn rebuild_command(args: &RebuildArgs, config: &Config) -> Result<Exit> {
    request_rebuild(config, &args.sink, args.force).await?;
    println!(
        "{}: rebuild requested; the sink deletes its keys and copies its Postgres twin at its next start",
        args.sink
    );
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(ResetTarget::parse("earliest"), Ok(ResetTarget::Earliest));
        assert_eq!(ResetTarget::parse("latest"), Ok(ResetTarget::Latest));
        assert_eq!(ResetTarget::parse("42"), Ok(ResetTarget::Offset(42)));
        assert!(ResetTarget::parse("-1").is_err());
        assert!(matches!(
            ResetTarget::parse("2026-11-22T10:00:00Z"),
            Ok(ResetTarget::Time(_))
        ));
        assert!(ResetTarget::parse("soon").is_err());
    }

    #[test]
    fn sinks_and_stores() {
        assert_eq!(store_of("event-logger").ok(), Some(Store::Postgres));
        assert_eq!(store_of("stats-aggregator-redis").ok(), Some(Store::Redis));
        assert!(matches!(store_of("nope"), Err(OpsError::Usage(_))));
    }
}
