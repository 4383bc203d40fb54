//! The statistics aggregator (the old `StatsBuffer`): per-player event counts in
//! Postgres `player_statistics` and Redis `player_stats:*`, exactly once in each.
//!
//! Two [`SinkWriter`]s, each run by its own generic
//! [`SinkActor`](super::sink::SinkActor) and each with its own committed offsets, so
//! that one store being away never holds the other back:
//!
//! ```text
//! batch ─► StatsDelta (per player: +n, +n per type, latest time)
//!   ├─ stats-aggregator        ─► one transaction: upsert player_statistics + sink_offsets
//!   └─ stats-aggregator-redis  ─► one Lua script: check offsets, HINCRBY, advance offsets
//!                                 (rebuilt from Postgres when Redis comes back empty)
//! ```
//!
//! Buffering: the sink actor flushes when `stats.buffer_size` (`BUFFER_SIZE`) records
//! are buffered or `stats.linger` has passed, so a flush never holds more than
//! `buffer_size` distinct players that a single fetch did not bring at once. Neither
//! writer rejects an event (every valid event counts), so this consumer has no dead
//! letters of its own.

use std::collections::BTreeMap;

use super::sink::{SinkWriter, WriteBatch};
use crate::aggregate::StatsDelta;
use crate::catalogue::{STATS, STATS_REDIS, SinkSpec};
use crate::sinks::SinkError;
use crate::sinks::postgres::{offsets, stats as pg_stats};
use crate::sinks::redis::{RedisKeys, RedisPool, stats as redis_stats};
use crate::sinks::redis::{RedisSinkSettings, RedisSinkStore, Store};

/// Writes `player_statistics`.
pub struct StatsPgWriter {
    pub pg: sqlx::PgPool,
}

impl SinkWriter for StatsPgWriter {
    fn spec(&self) -> &'static SinkSpec {
        &STATS
    }

    async fn committed(&self, topic: &str) -> Result<BTreeMap<i32, i64>, SinkError> {
        Ok(offsets::load(&self.pg, STATS.name, topic).await?)
    }

    async fn write(&mut self, batch: &WriteBatch<'_>) -> Result<(), SinkError> {
        let delta = StatsDelta::of(batch.records.iter().map(|r| r.event));
        metrics::histogram!("gamestream_stats_players_per_write", "sink" => STATS.name)
            .record(delta.len() as f64);
        pg_stats::write(&self.pg, STATS.name, batch.topic, &delta, &batch.commits).await
    }
}

/// Writes the `player_stats:{player_id}` hashes.
pub struct StatsRedisWriter {
    store: RedisSinkStore,
    /// The batch script, hashed once.
    script: redis::Script,
}

impl StatsRedisWriter {
    pub fn new(
        redis: RedisPool,
        pg: sqlx::PgPool,
        keys: RedisKeys,
        settings: RedisSinkSettings,
    ) -> Self {
        Self {
            store: RedisSinkStore {
                redis,
                pg,
                keys,
                settings,
                sink: STATS_REDIS.name,
                postgres_sink: STATS.name,
                store: Store::Stats,
            },
            script: redis_stats::script(),
        }
    }
}

impl SinkWriter for StatsRedisWriter {
    fn spec(&self) -> &'static SinkSpec {
        &STATS_REDIS
    }

    async fn committed(&self, topic: &str) -> Result<BTreeMap<i32, i64>, SinkError> {
        self.store.committed(topic).await
    }

    async fn claim(
        &self,
        topic: &str,
        partition: i32,
        epoch: i64,
    ) -> Result<Option<i64>, SinkError> {
        self.store.claim(topic, partition, epoch).await
    }

    async fn write(&mut self, batch: &WriteBatch<'_>) -> Result<(), SinkError> {
        let delta = StatsDelta::of(batch.records.iter().map(|r| r.event));
        let offsets_key = self.store.offsets_key(batch.topic);
        let args = redis_stats::script_args(&self.store.keys, &offsets_key, &delta, &batch.commits);
        let mut conn = self.store.connection().await?;
        redis_stats::write(&mut conn, &self.script, STATS_REDIS.name, &args).await
    }
}
