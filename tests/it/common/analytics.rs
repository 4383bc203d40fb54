//! Helpers of the statistics and leaderboard tests: a mixed event stream whose times
//! cross midnight UTC and an ISO week boundary, the expected aggregates computed here
//! (independently of the crate's own aggregation code), and readers of both stores.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use gamestream::event::{Event, Score};

use super::{TestEnv, committed_offsets, eventually, high_watermarks};

/// The Postgres sinks and the Redis sinks of the pipeline.
pub const PG_SINKS: [&str; 3] = ["event-logger", "stats-aggregator", "leaderboard-manager"];
pub const REDIS_SINKS: [&str; 2] = ["stats-aggregator-redis", "leaderboard-manager-redis"];

const TYPES: [&str; 7] = [
    "player_level_up",
    "player_score",
    "quest_completed",
    "achievement_unlocked",
    "boss_defeated",
    "player_score",
    "custom_event",
];

/// The start of `t`'s UTC day.
pub fn midnight(t: DateTime<Utc>) -> DateTime<Utc> {
    t.date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
}

/// The start of `t`'s ISO week (Monday 00:00 UTC).
pub fn monday(t: DateTime<Utc>) -> DateTime<Utc> {
    midnight(t) - chrono::Duration::days(i64::from(t.weekday().num_days_from_monday()))
}

pub fn day_key(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

pub fn week_key(t: DateTime<Utc>) -> String {
    let w = t.iso_week();
    format!("{:04}-W{:02}", w.year(), w.week())
}

/// Event `i` of a mixed stream at `now`: every known type plus a custom one; times
/// around today's midnight, around this week's Monday, ten days late, from 2023
/// (past any TTL) and just now; integer scores (some negative), now and then a fractional
/// one (counted as its truncation toward zero, as Python's `int()`), and a score that is
/// missing or a string (those are dead-lettered).
pub fn mixed_event(i: usize, players: usize, games: usize, now: DateTime<Utc>) -> Event {
    let ms = chrono::Duration::milliseconds;
    let odd = (i % 2) as i64;
    let timestamp = match i % 10 {
        0..=3 => midnight(now) + ms((i % 7) as i64 * 1000 - 3000 - odd),
        4 | 5 => monday(now) + ms((i % 5) as i64 * 1000 - 2000 - odd),
        6 => now - chrono::Duration::days(10) + ms(i as i64),
        7 => Utc
            .timestamp_opt(1_700_000_000 + i as i64, 0)
            .single()
            .expect("valid time"),
        _ => (now - ms((i % 600) as i64 * 1000)).max(midnight(now)),
    };
    let event_type = TYPES[(i / 3) % TYPES.len()];
    let (data, score) = if event_type == "player_score" {
        match i % 97 {
            0 => (r#"{"score":12.5}"#.to_owned(), Score::Integer(12)),
            1 => (r#"{"level":3}"#.to_owned(), Score::Absent),
            2 => (r#"{"score":"7"}"#.to_owned(), Score::NotANumber("a string")),
            3 => (r#"{"score":-7.9,"combo":1}"#.to_owned(), Score::Integer(-7)),
            _ => {
                let points = (i * 37 % 1000) as i64 - 100;
                (
                    format!(r#"{{"score":{points},"combo":2}}"#),
                    Score::Integer(points),
                )
            }
        }
    } else {
        (format!(r#"{{"level":{}}}"#, i % 50), Score::Absent)
    };
    Event {
        event_id: uuid::Uuid::new_v4(),
        event_type: event_type.to_owned(),
        player_id: format!("player-{}", (i * 7919) % players),
        game_id: format!("game-{}", i % games),
        timestamp,
        ingested_at: now,
        data,
        score,
    }
}

/// (game, period, period key, player).
pub type Cell = (String, String, String, String);

/// What the stores must hold after `events`, computed by the test.
#[derive(Debug, Default)]
pub struct Expected {
    pub breakdown: BTreeMap<String, BTreeMap<String, i64>>,
    pub last_event: BTreeMap<String, DateTime<Utc>>,
    pub scores: BTreeMap<Cell, i64>,
    /// Score events whose score cannot count (dead-lettered once each), per dead-letter
    /// kind.
    pub bad_scores: BTreeMap<String, usize>,
}

impl Expected {
    pub fn of(events: &[Event]) -> Self {
        let mut e = Self::default();
        for ev in events {
            *e.breakdown
                .entry(ev.player_id.clone())
                .or_default()
                .entry(ev.event_type.clone())
                .or_default() += 1;
            let last = e
                .last_event
                .entry(ev.player_id.clone())
                .or_insert(ev.timestamp);
            *last = (*last).max(ev.timestamp);
            if ev.event_type != "player_score" {
                continue;
            }
            let points = match ev.score {
                Score::Integer(points) => points,
                Score::Absent => {
                    *e.bad_scores.entry("missing_score".into()).or_default() += 1;
                    continue;
                }
                other => {
                    *e.bad_scores.entry("score_not_a_number".into()).or_default() += 1;
                    assert!(
                        matches!(other, Score::NotANumber(_)),
                        "test events have no score past the bound: {other:?}"
                    );
                    continue;
                }
            };
            for (period, key) in [
                ("alltime", "alltime".to_owned()),
                ("daily", day_key(ev.timestamp)),
                ("weekly", week_key(ev.timestamp)),
            ] {
                *e.scores
                    .entry((
                        ev.game_id.clone(),
                        period.to_owned(),
                        key,
                        ev.player_id.clone(),
                    ))
                    .or_default() += points;
            }
        }
        e
    }

    pub fn total(&self, player: &str) -> i64 {
        self.breakdown.get(player).map_or(0, |b| b.values().sum())
    }

    /// The board of (game, period, key): player → score.
    pub fn board(&self, game: &str, period: &str, key: &str) -> BTreeMap<String, i64> {
        self.scores
            .iter()
            .filter(|((g, p, k, _), _)| g == game && p == period && k == key)
            .map(|((_, _, _, player), score)| (player.clone(), *score))
            .collect()
    }

    pub fn games(&self) -> BTreeSet<String> {
        self.scores.keys().map(|c| c.0.clone()).collect()
    }

    /// Every (period, key) with scores, per game.
    pub fn periods(&self) -> BTreeSet<(String, String, String)> {
        self.scores
            .keys()
            .map(|(g, p, k, _)| (g.clone(), p.clone(), k.clone()))
            .collect()
    }
}

/// A board ranked as the stores rank it: score descending, then player id descending
/// (bytewise), as `ZRANGE ... REV` orders ties.
pub fn ranked(board: &BTreeMap<String, i64>) -> Vec<(String, i64)> {
    let mut entries: Vec<(String, i64)> = board.iter().map(|(p, s)| (p.clone(), *s)).collect();
    entries.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| b.0.as_bytes().cmp(a.0.as_bytes()))
    });
    entries
}

/// The Redis offsets of a Redis sink, per partition (empty if the hash is missing).
pub async fn redis_offsets(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    sink: &str,
    topic: &str,
) -> BTreeMap<i32, i64> {
    let fields: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{prefix}gamestream:offsets:{sink}:{topic}"))
        .query_async(redis)
        .await
        .unwrap_or_default();
    fields
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
        .collect()
}

/// Whether every sink, in both stores, has committed every partition to its high
/// watermark.
pub async fn all_caught_up(
    env: &TestEnv,
    redis: &mut redis::aio::MultiplexedConnection,
    marks: &[i64],
) -> bool {
    stores_at_marks(
        &env.pg,
        redis,
        &env.config.redis.key_prefix,
        &env.config.topics.player_events,
        marks,
    )
    .await
}

/// Whether every sink of both stores (Postgres `sink_offsets`, the Redis offsets hashes
/// under `prefix`) has committed each partition of `topic` to its mark in `marks`; a
/// partition whose mark is 0 has nothing to commit.
pub async fn stores_at_marks(
    pg: &sqlx::PgPool,
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    topic: &str,
    marks: &[i64],
) -> bool {
    let at_marks = |committed: &BTreeMap<i32, i64>| {
        marks
            .iter()
            .enumerate()
            .all(|(p, hw)| *hw == 0 || committed.get(&(p as i32)) == Some(hw))
    };
    for sink in PG_SINKS {
        let committed: BTreeMap<i32, i64> = committed_offsets(pg, sink, topic)
            .await
            .into_iter()
            .collect();
        if !at_marks(&committed) {
            return false;
        }
    }
    for sink in REDIS_SINKS {
        if !at_marks(&redis_offsets(redis, prefix, sink, topic).await) {
            return false;
        }
    }
    true
}

/// Waits until every sink has caught up with what is on the topic now.
pub async fn wait_all_caught_up(
    env: &TestEnv,
    redis: &mut redis::aio::MultiplexedConnection,
    timeout: Duration,
) -> bool {
    let marks = high_watermarks(&env.config, &env.config.topics.player_events).await;
    eventually(timeout, || {
        let mut redis = redis.clone();
        let marks = marks.clone();
        async move { all_caught_up(env, &mut redis, &marks).await }
    })
    .await
}

/// A `player_statistics` row: player, total, breakdown, latest event time.
type StatsRow = (
    String,
    i64,
    sqlx::types::Json<BTreeMap<String, i64>>,
    Option<DateTime<Utc>>,
);

/// A player's stored statistics: total, breakdown, latest event time.
pub type StoredStats = (i64, BTreeMap<String, i64>, Option<DateTime<Utc>>);

/// `player_statistics` as (total, breakdown, last_event_at) per player.
pub async fn pg_stats(pg: &sqlx::PgPool) -> BTreeMap<String, StoredStats> {
    let rows: Vec<StatsRow> = sqlx::query_as(
        "SELECT player_id, total_events, event_breakdown, last_event_at FROM player_statistics",
    )
    .fetch_all(pg)
    .await
    .expect("player_statistics");
    rows.into_iter()
        .map(|(p, n, b, t)| (p, (n, b.0, t)))
        .collect()
}

/// `leaderboard_scores` as cells.
pub async fn pg_scores(pg: &sqlx::PgPool) -> BTreeMap<Cell, i64> {
    let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
        "SELECT game_id, period, period_key, player_id, score FROM leaderboard_scores",
    )
    .fetch_all(pg)
    .await
    .expect("leaderboard_scores");
    rows.into_iter()
        .map(|(g, p, k, pl, s)| ((g, p, k, pl), s))
        .collect()
}

/// A Redis hash.
pub async fn hgetall(
    redis: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> BTreeMap<String, String> {
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(redis)
        .await
        .expect("hgetall")
}

/// A Redis sorted set, member → score.
pub async fn zset(
    redis: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> BTreeMap<String, i64> {
    let entries: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(redis)
        .await
        .expect("zrange");
    entries.into_iter().map(|(m, s)| (m, s as i64)).collect()
}

/// `last_event` as the Redis hash holds it.
pub fn last_event_text(t: DateTime<Utc>) -> String {
    use chrono::SubsecRound;
    t.trunc_subsecs(6)
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// Asserts that both stores hold exactly `expected` (statistics, every score, every
/// Redis board of a period within `ttl`, the current boards, no stray keys), that the
/// Redis hashes equal the Postgres rows, and that each bad score was dead-lettered once.
pub async fn assert_stores_match(
    env: &TestEnv,
    redis: &mut redis::aio::MultiplexedConnection,
    expected: &Expected,
    ttl: Duration,
) {
    let prefix = env.config.redis.key_prefix.clone();
    // Postgres statistics: the sum, and each player's breakdown and latest time.
    let stats = pg_stats(&env.pg).await;
    let sent: i64 = expected.breakdown.keys().map(|p| expected.total(p)).sum();
    let stored: i64 = stats.values().map(|s| s.0).sum();
    assert_eq!(stored, sent, "SUM(total_events) equals the events sent");
    assert_eq!(stats.len(), expected.breakdown.len(), "one row per player");
    for (player, breakdown) in &expected.breakdown {
        let (total, stored_breakdown, last) = &stats[player];
        assert_eq!(*total, expected.total(player), "{player}: total_events");
        assert_eq!(stored_breakdown, breakdown, "{player}: event_breakdown");
        assert_eq!(
            last.map(last_event_text),
            Some(last_event_text(expected.last_event[player])),
            "{player}: last_event_at"
        );
    }
    // Redis hashes: exactly one per player, equal to Postgres.
    let hashes = super::scan_keys(redis, &format!("{prefix}player_stats:*")).await;
    assert_eq!(
        hashes.len(),
        stats.len(),
        "one player_stats hash per player"
    );
    for (player, (total, breakdown, last)) in &stats {
        let hash = hgetall(redis, &format!("{prefix}player_stats:{player}")).await;
        let mut want: BTreeMap<String, String> = breakdown
            .iter()
            .map(|(t, n)| (format!("event_{t}"), n.to_string()))
            .collect();
        want.insert("total_events".into(), total.to_string());
        want.insert(
            "last_event".into(),
            last.map(last_event_text).unwrap_or_default(),
        );
        assert_eq!(hash, want, "player_stats:{player} agrees with Postgres");
    }
    // Postgres scores: every cell.
    assert_eq!(
        pg_scores(&env.pg).await,
        expected.scores,
        "leaderboard_scores"
    );
    // Redis boards: all time, every dated board within the TTL, the current boards.
    let now = Utc::now();
    let ttl = chrono::Duration::from_std(ttl).expect("ttl");
    let mut want_keys = BTreeSet::new();
    for (game, period, key) in expected.periods() {
        let board = expected.board(&game, &period, &key);
        let redis_key = if period == "alltime" {
            format!("{prefix}leaderboard:{game}:alltime")
        } else {
            let end = if period == "daily" {
                midnight(
                    DateTime::parse_from_rfc3339(&format!("{key}T00:00:00Z"))
                        .expect("day")
                        .to_utc(),
                ) + chrono::Duration::days(1)
            } else {
                week_end(&key)
            };
            let dated = format!("{prefix}leaderboard:{game}:{period}:{key}");
            if end + ttl <= now {
                continue; // past its TTL: Postgres only
            }
            let ttl_left: i64 = redis::cmd("TTL")
                .arg(&dated)
                .query_async(redis)
                .await
                .expect("ttl");
            let want_ttl = (end + ttl - now).num_seconds();
            assert!(
                (want_ttl - 60..=want_ttl + 5).contains(&ttl_left),
                "{dated}: TTL {ttl_left}s, expected about {want_ttl}s"
            );
            let current = if period == "daily" {
                day_key(now)
            } else {
                week_key(now)
            };
            if key == current {
                let undated = format!("{prefix}leaderboard:{game}:{period}");
                assert_eq!(
                    zset(redis, &undated).await,
                    board,
                    "{undated} holds the current period"
                );
                want_keys.insert(undated);
            }
            dated
        };
        assert_eq!(zset(redis, &redis_key).await, board, "{redis_key}");
        want_keys.insert(redis_key);
    }
    let got_keys: BTreeSet<String> = super::scan_keys(redis, &format!("{prefix}leaderboard:*"))
        .await
        .into_iter()
        .collect();
    assert_eq!(got_keys, want_keys, "no stray or missing leaderboard keys");
    // Dead letters: each bad score once, by the leaderboard manager only.
    let letters: Vec<(String, String)> =
        sqlx::query_as("SELECT consumer_service, error_kind FROM dlq_events")
            .fetch_all(&env.pg)
            .await
            .expect("dlq_events");
    assert!(
        letters.iter().all(|(c, _)| c == "leaderboard-manager"),
        "{letters:?}"
    );
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (_, kind) in letters {
        *kinds.entry(kind).or_default() += 1;
    }
    assert_eq!(
        kinds, expected.bad_scores,
        "one dead letter per bad score, of its kind"
    );
}

/// The first instant after ISO week `key` (`2026-W47`).
pub fn week_end(key: &str) -> DateTime<Utc> {
    let (year, week) = key.split_once("-W").expect("week key");
    chrono::NaiveDate::from_isoywd_opt(
        year.parse().expect("year"),
        week.parse().expect("week"),
        chrono::Weekday::Mon,
    )
    .expect("week exists")
    .and_hms_opt(0, 0, 0)
    .expect("midnight")
    .and_utc()
        + chrono::Duration::days(7)
}

/// Waits until the `leaderboards` table holds the all-time top `top_n` of every game, as
/// ranked by the test, and nothing else (no daily or weekly rows: CONTRACT); returns the
/// last difference.
pub async fn wait_leaderboards_table(
    env: &TestEnv,
    expected: &Expected,
    top_n: usize,
    timeout: Duration,
) -> Result<(), String> {
    wait_leaderboards_table_in(&env.pg, expected, top_n, timeout).await
}

/// [`wait_leaderboards_table`] on any database.
pub async fn wait_leaderboards_table_in(
    pg: &sqlx::PgPool,
    expected: &Expected,
    top_n: usize,
    timeout: Duration,
) -> Result<(), String> {
    let mut want = BTreeSet::new();
    for game in expected.games() {
        for (rank, (player, score)) in ranked(&expected.board(&game, "alltime", "alltime"))
            .into_iter()
            .take(top_n)
            .enumerate()
        {
            want.insert((
                game.clone(),
                "alltime".to_owned(),
                rank as i32 + 1,
                player,
                score,
            ));
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let rows: Vec<(String, String, i32, String, i64)> =
            sqlx::query_as("SELECT game_id, period, rank, player_id, score FROM leaderboards")
                .fetch_all(pg)
                .await
                .expect("leaderboards");
        let got: BTreeSet<_> = rows.into_iter().collect();
        if got == want {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "missing {:?}; unexpected {:?}",
                want.difference(&got).take(5).collect::<Vec<_>>(),
                got.difference(&want).take(5).collect::<Vec<_>>()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
