//! Every Redis key gamestream writes, in one place, each behind `redis.key_prefix`.
//!
//! ```text
//! {prefix}player_stats:{player_id}                      hash (CONTRACT)
//! {prefix}leaderboard:{game_id}:{daily|weekly|alltime}  sorted set (CONTRACT; current period)
//! {prefix}leaderboard:{game_id}:daily:2026-11-22        sorted set, one per past or current day
//! {prefix}leaderboard:{game_id}:weekly:2026-W47         sorted set, one per ISO week
//! {prefix}gamestream:leaderboard-period:{game_id}:{daily|weekly}   the period the undated key holds
//! {prefix}gamestream:offsets:{sink}:{topic}             hash: partition → next offset, + marker
//! {prefix}gamestream:rebuild-lock:{sink}:{topic}        string, while a rebuild runs
//! ```

use crate::aggregate::{Period, PeriodKey};

/// Field of the offsets hash that says the sink's keys are complete (written last by a
/// rebuild). Redis restarted without persistence, or flushed, has no such field.
pub const INITIALISED_FIELD: &str = "initialised_at";

/// Field of the offsets hash that allows a rebuild to delete the store's keys: set by
/// `gamestream offsets rebuild` (an operator asked for one), or by a rebuild itself when
/// it found the store empty (so that a rebuild cut short is resumed). Without it a sink
/// that finds keys and no [`INITIALISED_FIELD`] leaves them alone: they were not written
/// by gamestream (the old pipeline's, before `gamestream cutover apply`).
pub const REBUILD_REQUESTED_FIELD: &str = "rebuild_requested_at";

/// One SCAN step over the keys matching `pattern` (see [`RedisKeys::pattern`]) from
/// `cursor`: the next cursor (0 at the end) and the keys found, which may be none.
pub async fn scan_step(
    conn: &mut impl redis::aio::ConnectionLike,
    cursor: u64,
    pattern: &str,
    count: usize,
) -> redis::RedisResult<(u64, Vec<String>)> {
    redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await
}

/// Builds key names with the configured prefix.
#[derive(Debug, Clone)]
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// What every key starts with (`redis.key_prefix`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The CONTRACT statistics hash of a player.
    pub fn player_stats(&self, player_id: &str) -> String {
        format!("{}player_stats:{player_id}", self.prefix)
    }

    /// The CONTRACT board of a game: all time, or the *current* day or week.
    pub fn leaderboard(&self, game_id: &str, period: Period) -> String {
        format!("{}leaderboard:{game_id}:{}", self.prefix, period.as_str())
    }

    /// The board of one period; the all-time period has only the undated key.
    pub fn leaderboard_of(&self, game_id: &str, key: PeriodKey) -> String {
        match key {
            PeriodKey::AllTime => self.leaderboard(game_id, Period::AllTime),
            PeriodKey::Day(_) | PeriodKey::Week { .. } => format!(
                "{}leaderboard:{game_id}:{}:{key}",
                self.prefix,
                key.period().as_str()
            ),
        }
    }

    /// Which period the undated daily or weekly key of a game holds (its text form).
    pub fn leaderboard_period(&self, game_id: &str, period: Period) -> String {
        format!(
            "{}gamestream:leaderboard-period:{game_id}:{}",
            self.prefix,
            period.as_str()
        )
    }

    /// A Redis sink's committed offsets.
    pub fn offsets(&self, sink: &str, topic: &str) -> String {
        format!("{}gamestream:offsets:{sink}:{topic}", self.prefix)
    }

    /// Held while one process rebuilds a sink's keys.
    pub fn rebuild_lock(&self, sink: &str, topic: &str) -> String {
        format!("{}gamestream:rebuild-lock:{sink}:{topic}", self.prefix)
    }

    /// A SCAN pattern for every key that starts with the prefix and `start`; the
    /// prefix's glob characters are escaped so that it matches only itself.
    pub fn pattern(&self, start: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + start.len() + 2);
        for c in self.prefix.chars().chain(start.chars()) {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('*');
        out
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    #[test]
    fn names() {
        let keys = RedisKeys::new("t1:");
        assert_eq!(keys.player_stats("p-1"), "t1:player_stats:p-1");
        assert_eq!(
            keys.leaderboard("g", Period::Daily),
            "t1:leaderboard:g:daily"
        );
        let day = PeriodKey::Day(NaiveDate::from_ymd_opt(2026, 11, 22).expect("date"));
        assert_eq!(
            keys.leaderboard_of("g", day),
            "t1:leaderboard:g:daily:2026-11-22"
        );
        let week = PeriodKey::Week {
            year: 2026,
            week: 7,
        };
        assert_eq!(
            keys.leaderboard_of("g", week),
            "t1:leaderboard:g:weekly:2026-W07"
        );
        assert_eq!(
            keys.leaderboard_of("g", PeriodKey::AllTime),
            "t1:leaderboard:g:alltime"
        );
        assert_eq!(
            RedisKeys::new("").player_stats("p"),
            "player_stats:p",
            "no prefix in production"
        );
    }

    #[test]
    fn patterns_escape_the_prefix() {
        assert_eq!(
            RedisKeys::new("a*b[1]:").pattern("player_stats:"),
            "a\\*b\\[1\\]:player_stats:*"
        );
    }
}
