//! `cutover verify`: the stores against each other and against `events`.
//!
//! `events` is exact (its primary key drops a duplicate `event_id`), so it is the
//! reference: per player, `total_events` and `event_breakdown` in `player_statistics`
//! and in the Redis hash must equal the player's events; per game and player, the
//! all-time score in `leaderboard_scores` and in the Redis board must equal the sum of
//! the player's `player_score` points. The figures agree once every sink has applied
//! the same records: run it when the daemons have caught up (`offsets show`: lag 0).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use futures::TryStreamExt;
use sqlx::types::Json;

use super::import;
use crate::aggregate::Period;
use crate::config::Config;
use crate::ops::Result;
use crate::sinks::redis::RedisKeys;
use crate::sinks::{postgres, redis};

/// One disagreement: what, and the value each store holds (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// `player p-1 total_events`, `player p-1 event_player_score`, `game g-1 player p-1 alltime score`.
    pub subject: String,
    pub events: Option<i64>,
    pub postgres: Option<i64>,
    pub redis: Option<i64>,
}

/// What `verify` compared and found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub players: usize,
    pub scores: usize,
    pub differences: Vec<Difference>,
}

/// Compares the stores; reads only.
pub async fn verify(config: &Config) -> Result<Report> {
    let pool = postgres::connect(&config.postgres).await?;
    let redis_pool = redis::connect(&config.redis).await?;
    let mut redis_conn = redis_pool.get().await.map_err(redis::RedisError::from)?;
    let conn = &mut *redis_conn;
    let keys = RedisKeys::new(config.redis.key_prefix.clone());
    let mut report = Report::default();

    // Per player and event type: events, player_statistics, the Redis hashes.
    let mut from_events: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let mut rows = sqlx::query_as::<_, (String, String, i64)>(
        "SELECT player_id, event_type, count(*) FROM events GROUP BY player_id, event_type",
    )
    .fetch(&pool);
    while let Some((player, event_type, n)) = rows.try_next().await? {
        from_events.entry(player).or_default().insert(event_type, n);
    }
    drop(rows);
    let mut from_postgres: BTreeMap<String, (i64, BTreeMap<String, i64>)> = BTreeMap::new();
    let mut rows = sqlx::query_as::<_, (String, i64, Json<BTreeMap<String, i64>>)>(
        "SELECT player_id, total_events, event_breakdown FROM player_statistics",
    )
    .fetch(&pool);
    while let Some((player, total, breakdown)) = rows.try_next().await? {
        from_postgres.insert(player, (total, breakdown.0));
    }
    drop(rows);
    let players = import::stats_players(conn, &keys).await?;
    let from_redis: BTreeMap<String, (i64, BTreeMap<String, i64>)> =
        import::read_stats(conn, &keys, &players)
            .await?
            .into_iter()
            .map(|(s, _)| (s.player_id, (s.total_events, s.event_breakdown)))
            .collect();
    let everyone: BTreeSet<&String> = from_events
        .keys()
        .chain(from_postgres.keys())
        .chain(from_redis.keys())
        .collect();
    report.players = everyone.len();
    for player in everyone {
        let events = from_events.get(player);
        let pg = from_postgres.get(player);
        let rd = from_redis.get(player);
        compare(
            &mut report.differences,
            format!("player {player} total_events"),
            events.map(|b| b.values().sum()),
            pg.map(|(t, _)| *t),
            rd.map(|(t, _)| *t),
        );
        let types: BTreeSet<&String> = events
            .into_iter()
            .flat_map(|b| b.keys())
            .chain(pg.into_iter().flat_map(|(_, b)| b.keys()))
            .chain(rd.into_iter().flat_map(|(_, b)| b.keys()))
            .collect();
        for t in types {
            compare(
                &mut report.differences,
                format!("player {player} event_{t}"),
                Some(events.and_then(|b| b.get(t)).copied().unwrap_or(0)),
                Some(pg.and_then(|(_, b)| b.get(t)).copied().unwrap_or(0)),
                Some(rd.and_then(|(_, b)| b.get(t)).copied().unwrap_or(0)),
            );
        }
    }

    // Per game and player, all time: events, leaderboard_scores, the Redis boards.
    let mut score_events: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut rows = sqlx::query_as::<_, (String, String, Option<Json<serde_json::Value>>)>(
        "SELECT game_id, player_id, data->'score' FROM events WHERE event_type = $1",
    )
    .bind(crate::event::SCORE_EVENT_TYPE)
    .fetch(&pool);
    while let Some((game, player, score)) = rows.try_next().await? {
        if let Some(points) = score.and_then(|s| import::points(&s.0)) {
            *score_events.entry((game, player)).or_default() += points;
        }
    }
    drop(rows);
    let score_postgres: BTreeMap<(String, String), i64> =
        sqlx::query_as::<_, (String, String, i64)>(
            "SELECT game_id, player_id, score FROM leaderboard_scores WHERE period = 'alltime'",
        )
        .fetch_all(&pool)
        .await?
        .into_iter()
        .map(|(g, p, s)| ((g, p), s))
        .collect();
    let mut score_redis = BTreeMap::new();
    for game in import::alltime_games(conn, &keys).await? {
        for (player, score) in
            import::read_board(conn, &keys.leaderboard(&game, Period::AllTime)).await?
        {
            score_redis.insert((game.clone(), player), score);
        }
    }
    let cells: BTreeSet<&(String, String)> = score_events
        .keys()
        .chain(score_postgres.keys())
        .chain(score_redis.keys())
        .collect();
    report.scores = cells.len();
    for cell in cells {
        compare(
            &mut report.differences,
            format!("game {} player {} alltime score", cell.0, cell.1),
            score_events.get(cell).copied(),
            score_postgres.get(cell).copied(),
            score_redis.get(cell).copied(),
        );
    }
    Ok(report)
}

fn compare(
    out: &mut Vec<Difference>,
    subject: String,
    events: Option<i64>,
    postgres: Option<i64>,
    redis: Option<i64>,
) {
    if events == postgres && postgres == redis {
        return;
    }
    out.push(Difference {
        subject,
        events,
        postgres,
        redis,
    });
}

impl Report {
    /// The findings as text, at most `show` differences listed.
    pub fn render(&self, show: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "compared {} players and {} all-time scores (events, Postgres, Redis): {} difference(s)",
            self.players,
            self.scores,
            self.differences.len()
        );
        let text = |v: Option<i64>| v.map_or_else(|| "absent".to_owned(), |v| v.to_string());
        for d in self.differences.iter().take(show) {
            let _ = writeln!(
                out,
                "  {}: events {}, postgres {}, redis {}",
                d.subject,
                text(d.events),
                text(d.postgres),
                text(d.redis)
            );
        }
        if self.differences.len() > show {
            let _ = writeln!(out, "  ... and {} more", self.differences.len() - show);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_disagreements_are_differences() {
        let mut out = Vec::new();
        compare(&mut out, "same".into(), Some(1), Some(1), Some(1));
        compare(&mut out, "absent everywhere".into(), None, None, None);
        compare(&mut out, "redis behind".into(), Some(2), Some(2), Some(1));
        compare(&mut out, "missing row".into(), Some(2), None, Some(2));
        let subjects: Vec<&str> = out.iter().map(|d| d.subject.as_str()).collect();
        assert_eq!(subjects, ["redis behind", "missing row"]);
        let report = Report {
            players: 2,
            scores: 0,
            differences: out,
        };
        let text = report.render(1);
        assert!(text.contains("2 difference(s)"), "{text}");
        assert!(
            text.contains("redis behind: events 2, postgres 2, redis 1"),
            "{text}"
        );
        assert!(text.contains("... and 1 more"), "{text}");
    }
}
