//! `RedisSinkStore`: what a Redis sink writes through, and what it is rebuilt from.
//!
//! Both Redis sinks (`player_stats:*`, `leaderboard:*`) hold one: a pooled connection
//! with the sink's reply timeout, its key names, its offsets hash, and the Postgres twin
//! sink whose rows and offsets refill Redis when it comes back empty
//! ([`rebuild`](super::rebuild)).

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::rebuild::{RebuildSource, claim_or_rebuild, committed_or_rebuild};
use super::{RedisKeys, RedisPool};
use crate::sinks::SinkError;

/// What a Redis sink needs beyond its pool: timeouts and rebuild sizes.
#[derive(Debug, Clone)]
pub struct RedisSinkSettings {
    /// Longest wait for one script or pipeline reply.
    pub timeout: Duration,
    /// Rows per pipeline while rebuilding.
    pub rebuild_batch_size: usize,
    /// Lifetime of the rebuild lock; refreshed after every pipeline.
    pub rebuild_lock_ttl: Duration,
    /// How long dated leaderboard keys live after their period.
    pub period_ttl: Duration,
}

impl RedisSinkSettings {
    /// From `[redis]` and `[leaderboard]`.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            timeout: config.redis.timeout,
            rebuild_batch_size: config.redis.rebuild_batch_size,
            rebuild_lock_ttl: config.redis.rebuild_lock_ttl,
            period_ttl: config.leaderboard.period_ttl,
        }
    }
}

/// Which store a Redis sink keeps, and so what a rebuild copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// `player_stats:*` from `player_statistics`.
    Stats,
    /// `leaderboard:*` from `leaderboard_scores`.
    Leaderboard,
}

/// Where a Redis sink writes and what it is rebuilt from: its pool, the Postgres twin's
/// database, key names, settings, and which sink and store it is.
#[derive(Clone)]
pub struct RedisSinkStore {
    pub redis: RedisPool,
    pub pg: sqlx::PgPool,
    pub keys: RedisKeys,
    pub settings: RedisSinkSettings,
    /// The Redis sink's name (its offsets hash, metrics, logs).
    pub sink: &'static str,
    /// The Postgres sink it is rebuilt from.
    pub postgres_sink: &'static str,
    pub store: Store,
}

impl RedisSinkStore {
    fn source<'a>(&self, topic: &'a str) -> RebuildSource<'a> {
        RebuildSource {
            sink: self.sink,
            postgres_sink: self.postgres_sink,
            topic,
            store: self.store,
        }
    }

    /// See [`rebuild`](super::rebuild) (`committed_or_rebuild`).
    pub async fn committed(&self, topic: &str) -> Result<BTreeMap<i32, i64>, SinkError> {
        committed_or_rebuild(
            &self.redis,
            &self.pg,
            &self.keys,
            &self.settings,
            self.source(topic),
        )
        .await
    }

    /// See [`rebuild`](super::rebuild) (`claim_or_rebuild`).
    pub async fn claim(
        &self,
        topic: &str,
        partition: i32,
        epoch: i64,
    ) -> Result<Option<i64>, SinkError> {
        let source = self.source(topic);
        claim_or_rebuild(
            &self.redis,
            &self.pg,
            &self.keys,
            &self.settings,
            source,
            partition,
            epoch,
        )
        .await
    }

    /// The sink's offsets hash for `topic`.
    pub fn offsets_key(&self, topic: &str) -> String {
        self.keys.offsets(self.sink, topic)
    }

    /// A pooled connection with the sink's reply timeout.
    pub async fn connection(&self) -> Result<MultiplexedConnection, SinkError> {
        connection(&self.redis, self.settings.timeout).await
    }
}

/// A pooled connection with the sink's reply timeout (the pool's default is shorter
/// than a large script or pipeline may take under load).
pub async fn connection(
    pool: &RedisPool,
    timeout: Duration,
) -> Result<MultiplexedConnection, SinkError> {
    let mut conn = pool.get().await?.clone();
    conn.set_response_timeout(timeout);
    Ok(conn)
}
