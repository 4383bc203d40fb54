//! The statistics aggregator and the leaderboard manager, as the supervisor spawns
//! them: four sinks (one per store, each with its own offsets, each a group of
//! `writers` shards by partition) and the refresher of the `leaderboards` table.
//!
//! ```text
//! Supervisor ─┬─ LeaderboardRefresher
//!             ├─ SinkActor<StatsPgWriter> × stats.writers             stats-aggregator
//!             ├─ SinkActor<LeaderboardPgWriter> × leaderboard.writers leaderboard-manager ──Changed──► refresher
//!             ├─ SinkActor<StatsRedisWriter> × stats.writers          stats-aggregator-redis
//!             └─ SinkActor<LeaderboardRedisWriter> × leaderboard.writers leaderboard-manager-redis
//! ```
//!
//! All are linked to the supervisor, so they restart with the rest of the generation.
//! The Postgres sinks are spawned first: a Redis sink's start may rebuild Redis from
//! them.

use ractor::{Actor, ActorCell, ActorRef, SpawnErr};

use super::PipelineContext;
use super::leaderboard::{LeaderboardPgWriter, LeaderboardRedisWriter};
use super::leaderboard_refresher::{LeaderboardRefresher, RefresherArgs, RefresherMessage};
use super::sink::SinkSettings;
use super::stats::{StatsPgWriter, StatsRedisWriter};
use crate::config::Config;
use crate::sinks::redis::RedisKeys;
use crate::sinks::redis::rebuild::RedisSinkSettings;

/// Label of the refresher in supervision logs and restart metrics.
pub const REFRESHER: &str = "leaderboard-refresher";

/// Spawns the refresher, linked to `supervisor`.
pub async fn spawn_refresher(
    ctx: &PipelineContext,
    supervisor: &ActorCell,
) -> Result<ActorRef<RefresherMessage>, SpawnErr> {
    let (refresher, _) = Actor::spawn_linked(
        None,
        LeaderboardRefresher,
        RefresherArgs {
            pg: ctx.pg.clone(),
            refresh_interval: ctx.config.leaderboard.refresh_interval,
            top_n: ctx.config.leaderboard.top_n,
        },
        supervisor.clone(),
    )
    .await?;
    Ok(refresher)
}

/// The writers of the four sinks (one per shard) and their batching.
pub struct AnalyticsWriters {
    pub stats_pg: Vec<StatsPgWriter>,
    pub stats_redis: Vec<StatsRedisWriter>,
    pub leaderboard_pg: Vec<LeaderboardPgWriter>,
    pub leaderboard_redis: Vec<LeaderboardRedisWriter>,
    /// `stats.buffer_size` (`BUFFER_SIZE`) and `stats.linger`.
    pub stats_settings: SinkSettings,
    /// `leaderboard.batch_size` and `leaderboard.linger`.
    pub leaderboard_settings: SinkSettings,
}

/// Builds the writers of the stats and leaderboard sinks.
pub fn writers(ctx: &PipelineContext, refresher: &ActorRef<RefresherMessage>) -> AnalyticsWriters {
    let config = &ctx.config;
    let keys = RedisKeys::new(config.redis.key_prefix.clone());
    let redis = redis_sink_settings(config);
    let shards = |n: usize| 0..n;
    AnalyticsWriters {
        stats_pg: shards(config.stats.writers)
            .map(|_| StatsPgWriter { pg: ctx.pg.clone() })
            .collect(),
        stats_redis: shards(config.stats.writers)
            .map(|_| {
                StatsRedisWriter::new(
                    ctx.redis.clone(),
                    ctx.pg.clone(),
                    keys.clone(),
                    redis.clone(),
                )
            })
            .collect(),
        leaderboard_pg: shards(config.leaderboard.writers)
            .map(|_| LeaderboardPgWriter {
                pg: ctx.pg.clone(),
                refresher: refresher.clone(),
            })
            .collect(),
        leaderboard_redis: shards(config.leaderboard.writers)
            .map(|_| {
                LeaderboardRedisWriter::new(
                    ctx.redis.clone(),
                    ctx.pg.clone(),
                    keys.clone(),
                    redis.clone(),
                )
            })
            .collect(),
        stats_settings: sink_settings(config, config.stats.buffer_size, config.stats.linger),
        leaderboard_settings: sink_settings(
            config,
            config.leaderboard.batch_size,
            config.leaderboard.linger,
        ),
    }
}

fn sink_settings(config: &Config, batch_size: usize, linger: std::time::Duration) -> SinkSettings {
    SinkSettings {
        batch_size,
        linger,
        retry_initial_backoff: config.consumer.retry_initial_backoff,
        retry_max_backoff: config.consumer.retry_max_backoff,
    }
}

/// The Redis sinks' settings, from `[redis]` and `[leaderboard]`.
pub fn redis_sink_settings(config: &Config) -> RedisSinkSettings {
    RedisSinkSettings {
        timeout: config.redis.timeout,
        rebuild_batch_size: config.redis.rebuild_batch_size,
        rebuild_lock_ttl: config.redis.rebuild_lock_ttl,
        period_ttl: config.leaderboard.period_ttl,
    }
}
