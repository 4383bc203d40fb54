//! `RedisSinkStore`: what a Redis sink writes through, and what it is rebuilt from.
//!
//! Both Redis sinks (`player_stats:*`, `leaderboard:*`) hold one: a pooled connection
//! with the sink's reply timeout, its key names, its offsets hash, and the Postgres twin
//! sink whose rows and offsets refill Redis when it comes back empty
//! ([`rebuild`](super::rebuild)).

use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;

use super::pool::connection;
use super::rebuild::{
    RebuildSource, RedisSinkSettings, Store, claim_or_rebuild, committed_or_rebuild,
};
use super::{RedisKeys, RedisPool};
use crate::sinks::SinkError;

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
