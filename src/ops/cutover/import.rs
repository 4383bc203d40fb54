//! Reading the old pipeline's state: its Redis keys, records of the raw topic, and the
//! score rule the old leaderboard manager applied.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionLike;
use rskafka::client::partition::PartitionClient;

use crate::aggregate::stats::PlayerStats;
use crate::event::{self, Event, Score};
use crate::ops::Result;
use crate::sinks::redis::keys::scan_step;
use crate::sinks::redis::{RedisKeys, stats};

/// Keys per SCAN step and values per pipelined read.
pub(super) const REDIS_BATCH: usize = 1_000;
/// Bytes per Fetch while reading a range of the raw topic.
const FETCH_BYTES: i32 = 4 * 1024 * 1024;

/// Every key matching `pattern` (SCAN, so Redis keeps serving meanwhile).
pub(super) async fn scan(conn: &mut impl ConnectionLike, pattern: &str) -> Result<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, found) = scan_step(conn, cursor, pattern, REDIS_BATCH).await?;
        keys.extend(found);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// The player ids of the `player_stats:*` hashes.
pub(super) async fn stats_players(
    conn: &mut impl ConnectionLike,
    keys: &RedisKeys,
) -> Result<Vec<String>> {
    let prefix = keys.player_stats("");
    Ok(scan(conn, &keys.pattern("player_stats:"))
        .await?
        .into_iter()
        .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
        .collect())
}

/// The players' hashes, as statistics (`total_events`, `event_{type}`, `last_event`),
/// each with its `last_event` as written; players whose key vanished meanwhile are left out.
pub(super) async fn read_stats(
    conn: &mut impl ConnectionLike,
    keys: &RedisKeys,
    players: &[String],
) -> Result<Vec<(PlayerStats, Option<String>)>> {
    let mut out = Vec::with_capacity(players.len());
    for chunk in players.chunks(REDIS_BATCH) {
        let mut pipe = redis::pipe();
        for player in chunk {
            pipe.hgetall(keys.player_stats(player));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(conn).await?;
        for (player, hash) in chunk.iter().zip(hashes) {
            if !hash.is_empty() {
                out.push((stats_of(player, &hash), hash.get("last_event").cloned()));
            }
        }
    }
    Ok(out)
}

/// One old `player_stats:{id}` hash as statistics (the sinks' own reader).
pub(super) fn stats_of(player_id: &str, hash: &HashMap<String, String>) -> PlayerStats {
    stats::from_fields(player_id, hash)
}

/// The games that have an all-time board in Redis.
pub(super) async fn alltime_games(
    conn: &mut impl ConnectionLike,
    keys: &RedisKeys,
) -> Result<Vec<String>> {
    let prefix = format!("{}leaderboard:", keys.prefix());
    let boards = scan(conn, &format!("{}:alltime", keys.pattern("leaderboard:"))).await?;
    Ok(boards
        .into_iter()
        .filter_map(|k| {
            k.strip_prefix(&prefix)?
                .strip_suffix(":alltime")
                .map(str::to_owned)
        })
        .collect())
}

/// Every member of a sorted set with its score (rounded: the old manager added integers).
pub(super) async fn read_board(
    conn: &mut impl ConnectionLike,
    key: &str,
) -> Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    let mut start = 0usize;
    loop {
        let page: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(key)
            .arg(start)
            .arg(start + REDIS_BATCH - 1)
            .arg("WITHSCORES")
            .query_async(conn)
            .await?;
        let len = page.len();
        out.extend(page.into_iter().map(|(m, s)| (m, s.round() as i64)));
        if len < REDIS_BATCH {
            return Ok(out);
        }
        start += REDIS_BATCH;
    }
}

/// The valid events among the records `[from, to)` of one partition, with their offsets
/// (records that are not valid events count nowhere and are skipped).
pub(super) async fn read_range(
    pc: &PartitionClient,
    from: i64,
    to: i64,
) -> Result<Vec<(i64, Event)>> {
    let mut out = Vec::new();
    let mut next = from;
    while next < to {
        let (records, high_watermark) = pc.fetch_records(next, 1..FETCH_BYTES, 0).await?;
        if records.is_empty() {
            break;
        }
        for r in records {
            if r.offset < next || r.offset >= to {
                continue;
            }
            next = r.offset + 1;
            if let Some(mut value) = r.record.value
                && let Ok(event) = event::parse_record(&mut value)
            {
                out.push((r.offset, event));
            }
        }
        if next >= high_watermark {
            break;
        }
    }
    Ok(out)
}

/// A score event between the logger's and the manager's offsets, for the rebuild.
#[derive(Debug, Clone)]
pub(super) struct GapEvent {
    pub(super) game_id: String,
    pub(super) player_id: String,
    pub(super) timestamp: DateTime<Utc>,
    pub(super) points: i64,
}

/// The points a parsed score event adds (none when gamestream dead-letters its score).
pub(super) fn event_points(event: &Event) -> Option<i64> {
    match event.score {
        Score::Integer(points) => Some(points),
        _ => None,
    }
}

/// The points a `player_score` event's `data.score` adds, as the old manager summed
/// them: `int(score)` of a JSON number (truncated toward zero), within ±(2^53 − 1);
/// anything else counts nothing (gamestream dead-letters it).
pub(super) fn points(score: &serde_json::Value) -> Option<i64> {
    let n = score.as_number()?;
    let value = match n.as_i64() {
        Some(i) => i,
        None => {
            let f = n.as_f64()?.trunc();
            if !f.is_finite() || f.abs() > event::MAX_EXACT_SCORE as f64 {
                return None;
            }
            f as i64
        }
    };
    (value.abs() <= event::MAX_EXACT_SCORE).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_hashes_become_statistics() {
        let hash = HashMap::from([
            ("total_events".to_owned(), "5".to_owned()),
            ("event_player_score".to_owned(), "3".to_owned()),
            ("event_quest_completed".to_owned(), "2".to_owned()),
            (
                "last_event".to_owned(),
                "2026-11-30T10:00:00.250000".to_owned(),
            ),
        ]);
        let stats = stats_of("p-1", &hash);
        assert_eq!(stats.total_events, 5);
        assert_eq!(stats.event_breakdown["player_score"], 3);
        assert_eq!(stats.event_breakdown.len(), 2);
        assert_eq!(
            stats.last_event.map(|t| t.to_rfc3339()),
            Some("2026-11-30T10:00:00.250+00:00".to_owned())
        );
        let no_total = HashMap::from([("event_x".to_owned(), "4".to_owned())]);
        assert_eq!(stats_of("p", &no_total).total_events, 4);
    }

    #[test]
    fn times_in_either_form() {
        let parse_time = stats::parse_time;
        assert!(parse_time("2026-11-30T10:00:00Z").is_some());
        assert!(parse_time("2026-11-30T10:00:00+00:00").is_some());
        assert!(parse_time("2026-11-30T10:00:00").is_some());
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn points_truncate_like_python_int() {
        let p = |text: &str| points(&serde_json::from_str(text).expect("json"));
        assert_eq!(p("42"), Some(42));
        assert_eq!(p("12.5"), Some(12));
        assert_eq!(p("-12.5"), Some(-12));
        assert_eq!(p("1e3"), Some(1000));
        assert_eq!(p("9007199254740991"), Some(9_007_199_254_740_991));
        assert_eq!(p("9007199254740992"), None);
        assert_eq!(p("1e300"), None);
        assert_eq!(p("\"12\""), None);
        assert_eq!(p("true"), None);
        assert_eq!(p("null"), None);
    }
}
