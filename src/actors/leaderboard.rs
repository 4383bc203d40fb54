//! The leaderboard manager: scores per game and period in Postgres
//! `leaderboard_scores` and the Redis `leaderboard:*` sorted sets, exactly once in each.
//!
//! Two [`SinkWriter`]s, each run by its own generic
//! [`SinkActor`](super::sink::SinkActor) with its own committed offsets:
//!
//! ```text
//! batch ─► ScoreDelta (per game, period key, player: Σ data.score)
//!   ├─ leaderboard-manager        ─► one transaction: upsert leaderboard_scores + sink_offsets
//!   │                                ─► tells the LeaderboardRefresher which games changed
//!   └─ leaderboard-manager-redis  ─► one Lua script: check offsets, roll the undated keys
//!                                    over, ZINCRBY, advance offsets (rebuilt from Postgres
//!                                    when Redis comes back empty)
//! ```
//!
//! A `player_score` event whose `data.score` is missing or not a number is
//! dead-lettered once (`missing_score`, `score_not_a_number`), by the Postgres sink
//! (`consumer_service = leaderboard-manager`); a fractional score counts as its
//! truncation toward zero (12.5 → 12, -12.5 → -12), as the old manager's `int(score)`;
//! the Redis sink passes over it. The `leaderboards` top-N table is not written here
//! but by the [`LeaderboardRefresher`](super::leaderboard_refresher).

use std::collections::BTreeMap;

use ractor::ActorRef;

use super::leaderboard_refresher::RefresherMessage;
use super::sink::{Rejection, SinkWriter, WriteBatch};
use crate::aggregate::ScoreDelta;
use crate::catalogue::{LEADERBOARD, LEADERBOARD_REDIS, SinkSpec};
use crate::event::Event;
use crate::sinks::SinkError;
use crate::sinks::postgres::{leaderboard as pg_leaderboard, offsets};
use crate::sinks::redis::{RedisKeys, RedisPool, leaderboard as redis_leaderboard};
use crate::sinks::redis::{RedisSinkSettings, RedisSinkStore, Store};

/// Why a score event cannot count, if it cannot: `missing_score` or
/// `score_not_a_number` ([`Score::problem`]). A fractional score counts as its truncation.
pub fn bad_score(event: &Event) -> Option<Rejection> {
    if !event.is_score_event() {
        return None;
    }
    event
        .score
        .problem()
        .map(|(kind, message)| Rejection { kind, message })
}

/// Writes `leaderboard_scores`.
pub struct LeaderboardPgWriter {
    pub pg: sqlx::PgPool,
    /// Told which games changed, after each commit.
    pub refresher: ActorRef<RefresherMessage>,
}

impl SinkWriter for LeaderboardPgWriter {
    fn spec(&self) -> &'static SinkSpec {
        &LEADERBOARD
    }

    fn reject(&self, event: &Event) -> Option<Rejection> {
        bad_score(event)
    }

    async fn committed(&self, topic: &str) -> Result<BTreeMap<i32, i64>, SinkError> {
        Ok(offsets::load(&self.pg, LEADERBOARD.name, topic).await?)
    }

    async fn write(&mut self, batch: &WriteBatch<'_>) -> Result<(), SinkError> {
        // A batch whose sums would take a stored score past ±(2^53 - 1) is refused as a
        // whole (here, or by the CHECK constraint); the sink actor then writes the
        // records one by one and dead-letters the one that crosses the bound.
        let delta = ScoreDelta::of(batch.records.iter().map(|r| r.event))
            .map_err(|e| SinkError::permanent(e.to_string()))?;
        pg_leaderboard::write(
            &self.pg,
            LEADERBOARD.name,
            batch.topic,
            &delta,
            &batch.commits,
        )
        .await?;
        metrics::counter!("gamestream_leaderboard_score_events_total")
            .increment(delta.events() as u64);
        let games: Vec<String> = delta.games().into_iter().map(str::to_owned).collect();
        if !games.is_empty() {
            // A stopped refresher (shutdown, restart) refreshes everything when it starts.
            let _ = self.refresher.cast(RefresherMessage::Changed(games));
        }
        Ok(())
    }
}

/// Writes the `leaderboard:*` sorted sets.
pub struct LeaderboardRedisWriter {
    store: RedisSinkStore,
    /// The batch script, hashed once.
    script: redis::Script,
}

impl LeaderboardRedisWriter {
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
                sink: LEADERBOARD_REDIS.name,
                postgres_sink: LEADERBOARD.name,
                store: Store::Leaderboard,
            },
            script: redis_leaderboard::script(),
        }
    }
}

impl SinkWriter for LeaderboardRedisWriter {
    fn spec(&self) -> &'static SinkSpec {
        &LEADERBOARD_REDIS
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
        // A batch whose sums would take a score past ±(2^53 - 1) fails (here, or in the
        // script, before it writes anything); the sink actor then applies its records one
        // at a time and dead-letters the one that crosses the bound, as the Postgres
        // sink does.
        let delta = ScoreDelta::of(batch.records.iter().map(|r| r.event))
            .map_err(|e| SinkError::permanent(e.to_string()))?;
        let plan = redis_leaderboard::plan(
            &self.store.keys,
            &delta,
            chrono::Utc::now(),
            self.store.settings.period_ttl,
        );
        let offsets_key = self.store.offsets_key(batch.topic);
        let args = plan.script_args(&offsets_key, &batch.commits);
        let mut conn = self.store.connection().await?;
        redis_leaderboard::write(&mut conn, &self.script, LEADERBOARD_REDIS.name, &args).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Score;

    fn event(event_type: &str, score: Score) -> Event {
        Event {
            event_id: uuid::Uuid::new_v4(),
            event_type: event_type.to_owned(),
            player_id: "p".to_owned(),
            game_id: "g".to_owned(),
            timestamp: chrono::Utc::now(),
            ingested_at: chrono::Utc::now(),
            data: "{}".to_owned(),
            score,
        }
    }

    #[test]
    fn only_score_events_without_a_numeric_score_are_refused() {
        assert_eq!(bad_score(&event("player_score", Score::Integer(3))), None);
        assert_eq!(
            bad_score(&event("quest_completed", Score::NotANumber("a string"))),
            None
        );
        assert_eq!(bad_score(&event("quest_completed", Score::Absent)), None);
        let absent = bad_score(&event("player_score", Score::Absent)).expect("refused");
        assert_eq!(absent.kind, "missing_score");
        assert_eq!(
            absent.message,
            "a player_score event needs a numeric `data.score`; it has none"
        );
        for (json_type, message) in [
            (
                "a string",
                "`data.score` of a player_score event must be a number, got a string",
            ),
            (
                "a boolean",
                "`data.score` of a player_score event must be a number, got a boolean",
            ),
            (
                "null",
                "`data.score` of a player_score event must be a number, got null",
            ),
        ] {
            let refused =
                bad_score(&event("player_score", Score::NotANumber(json_type))).expect("refused");
            assert_eq!(refused.kind, "score_not_a_number");
            assert_eq!(refused.message, message);
        }
        // An event built by hand with a score beyond 64 bits is refused too, not counted.
        let huge = bad_score(&event("player_score", Score::Huge(1e30))).expect("refused");
        assert_eq!(huge.kind, "score_out_of_range");
        assert!(huge.message.ends_with("got 1e30"), "{}", huge.message);
    }
}
