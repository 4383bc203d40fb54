//! `cutover apply`: adopting the old pipeline's state (the table in the module above).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

use super::import;
use super::survey::{Survey, covers, survey};
use crate::aggregate::scores::ScoreRow;
use crate::aggregate::stats::{PlayerStats, last_event_text};
use crate::aggregate::{Period, PeriodKey};
use crate::catalogue::{self, SinkSpec, Store};
use crate::config::Config;
use crate::kafka;
use crate::ops::offsets::partition_clients;
use crate::ops::{OpsError, Result};
use crate::sinks::redis::{RedisKeys, leaderboard as redis_leaderboard, rebuild};
use crate::sinks::{postgres, redis};

/// Rows per multi-row statement.
const ROWS_PER_STATEMENT: usize = 5_000;

/// Next offset per partition, per sink (as stored in `cutover_adoptions.offsets`).
type Seeds = BTreeMap<String, BTreeMap<i32, i64>>;

/// What `apply` did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// An earlier `apply` had adopted the topic: nothing changed (beyond finishing its
    /// Redis part, if it was interrupted: `completed_redis`).
    pub already: bool,
    pub completed_redis: Vec<&'static str>,
    pub seeds: Seeds,
    pub summary: Summary,
}

/// Counts of what was imported; stored in `cutover_adoptions.summary`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// `player_stats:*` hashes imported into `player_statistics`.
    pub players_imported: usize,
    /// `player_statistics` rows without a Redis hash (kept as they were).
    pub players_without_hash: i64,
    /// All-time scores imported from the Redis boards into `leaderboard_scores`.
    pub alltime_scores: usize,
    /// Daily and weekly scores rebuilt from `events`.
    pub period_scores: usize,
    pub periods_rebuilt: Vec<String>,
    pub periods_started_empty: Vec<String>,
    /// Old undated `leaderboard:{game}:daily|weekly` keys replaced.
    pub old_period_boards_replaced: usize,
    /// Score events in `events` that the leaderboard sinks will apply again (the logger
    /// group was ahead): left out of the rebuilt days and weeks.
    pub gap_events_left_out: usize,
    /// Score events the old manager applied that `events` does not hold yet (the logger
    /// group was behind): added to the rebuilt days and weeks from Kafka.
    pub gap_events_added: usize,
    /// Hashes whose `last_event` was rewritten in gamestream's form (same time).
    pub last_event_normalised: usize,
}

/// Adopts the old pipeline's state. Refused while a daemon or an old consumer runs, or
/// when gamestream has already consumed into this database; a second run changes nothing.
pub async fn apply(
    config: &Config,
    allow_missing_offsets: bool,
    events_complete_since: Option<DateTime<Utc>>,
) -> Result<Applied> {
    let survey = survey(config, events_complete_since).await?;
    refuse_blockers(&survey)?;
    let topic = survey.topic.as_str();
    let pool = postgres::connect(&config.postgres).await?;
    let redis_pool = redis::connect(&config.redis).await?;
    let mut redis_conn = redis_pool.get().await.map_err(redis::RedisError::from)?;
    let conn = &mut *redis_conn;
    let keys = RedisKeys::new(config.redis.key_prefix.clone());

    type Earlier = (Json<Seeds>, Json<Summary>, Option<DateTime<Utc>>);
    let earlier: Option<Earlier> = sqlx::query_as(
        "SELECT offsets, summary, redis_marked_at FROM cutover_adoptions WHERE topic = $1",
    )
    .bind(topic)
    .fetch_optional(&pool)
    .await?;
    if let Some((seeds, summary, marked)) = earlier {
        let mut completed_redis = Vec::new();
        if marked.is_none() {
            completed_redis = mark_redis(conn, &keys, topic, &seeds.0, true).await?;
            mark_done(&pool, topic).await?;
        }
        return Ok(Applied {
            already: true,
            completed_redis,
            seeds: seeds.0,
            summary: summary.0,
        });
    }
    if survey.postgres.sink_offsets > 0 {
        return Err(OpsError::Refused(format!(
            "gamestream has already consumed `{topic}` into database `{}` ({} sink_offsets rows): \
             adoption is for a database only the old pipeline wrote",
            survey.postgres.database, survey.postgres.sink_offsets
        )));
    }
    let seeds = seeds(&survey, allow_missing_offsets)?;
    let now = Utc::now();
    let mut summary = Summary::default();

    let mut tx = pool.begin().await?;
    // A daemon taking a partition meanwhile waits for this transaction.
    sqlx::query("SELECT 1 FROM partition_leases WHERE topic = $1 FOR UPDATE")
        .bind(topic)
        .execute(&mut *tx)
        .await?;
    seed_postgres(&mut tx, topic, &seeds).await?;

    let players = import::stats_players(conn, &keys).await?;
    let hashes = import::read_stats(conn, &keys, &players).await?;
    let stats: Vec<PlayerStats> = hashes.iter().map(|(s, _)| s.clone()).collect();
    import_stats(&mut tx, &stats).await?;
    summary.players_imported = stats.len();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM player_statistics")
        .fetch_one(&mut *tx)
        .await?;
    summary.players_without_hash = rows - stats.len() as i64;

    let mut scores = Vec::new();
    for game in import::alltime_games(conn, &keys).await? {
        for (player_id, score) in
            import::read_board(conn, &keys.leaderboard(&game, Period::AllTime)).await?
        {
            scores.push(ScoreRow {
                game_id: game.clone(),
                key: PeriodKey::AllTime,
                player_id,
                score,
            });
        }
    }
    summary.alltime_scores = scores.len();

    let (left_out, added) = offset_gap(config, &survey, &seeds).await?;
    summary.gap_events_left_out = left_out.len();
    summary.gap_events_added = added.len();
    for p in &survey.periods {
        let label = format!("{} {}", p.period, p.key);
        if p.covered {
            summary.periods_rebuilt.push(label);
        } else {
            summary.periods_started_empty.push(label);
        }
    }
    let period_rows = period_scores(&mut tx, events_complete_since, &left_out, &added).await?;
    summary.period_scores = period_rows.len();
    scores.extend(period_rows);
    replace_scores(&mut tx, &scores).await?;

    // Redis: the old daily and weekly boards are wrong (never rolled over): replaced.
    let mut old_boards =
        import::scan(conn, &format!("{}:daily", keys.pattern("leaderboard:"))).await?;
    old_boards
        .extend(import::scan(conn, &format!("{}:weekly", keys.pattern("leaderboard:"))).await?);
    summary.old_period_boards_replaced = old_boards.len();
    let mut pipe = ::redis::pipe();
    for chunk in old_boards.chunks(import::REDIS_BATCH) {
        pipe.cmd("UNLINK").arg(chunk).ignore();
    }
    let (mut expiries, mut markers) = (BTreeMap::new(), BTreeMap::new());
    for row in scores.iter().filter(|r| r.key != PeriodKey::AllTime) {
        redis_leaderboard::rebuild_commands(
            &mut pipe,
            &keys,
            row,
            now,
            config.leaderboard.period_ttl,
            &mut expiries,
            &mut markers,
        );
    }
    rebuild::expire_boards(&mut pipe, &expiries, &markers);
    for (stats, raw) in &hashes {
        if let Some(t) = stats
            .last_event
            .filter(|t| raw.as_deref() != Some(&last_event_text(*t)))
        {
            pipe.hset(
                keys.player_stats(&stats.player_id),
                "last_event",
                last_event_text(t),
            )
            .ignore();
            summary.last_event_normalised += 1;
        }
    }
    pipe.query_async::<()>(conn).await?;

    sqlx::query("INSERT INTO cutover_adoptions (topic, offsets, summary) VALUES ($1, $2, $3)")
        .bind(topic)
        .bind(Json(&seeds))
        .bind(Json(&summary))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    mark_redis(conn, &keys, topic, &seeds, false).await?;
    mark_done(&pool, topic).await?;
    Ok(Applied {
        already: false,
        completed_redis: Vec::new(),
        seeds,
        summary,
    })
}

fn refuse_blockers(survey: &Survey) -> Result<()> {
    if !survey.daemon_holders.is_empty() {
        let who: Vec<String> = survey
            .daemon_holders
            .iter()
            .map(|(p, owner)| format!("partition {p} by `{owner}`"))
            .collect();
        return Err(OpsError::Refused(format!(
            "a gamestream daemon holds partitions ({}): stop every daemon before `cutover apply`",
            who.join(", ")
        )));
    }
    for g in &survey.groups {
        if !g.members.is_empty() {
            return Err(OpsError::Refused(format!(
                "consumer group `{}` has live members ({}): stop the old consumers before `cutover apply`",
                g.name,
                g.members.join(", ")
            )));
        }
    }
    Ok(())
}

/// Every sink's offsets from its old group. A partition the group never committed is
/// refused, unless it is empty or `allow_missing` (then it starts at its earliest offset).
fn seeds(survey: &Survey, allow_missing: bool) -> Result<Seeds> {
    let mut seeds = Seeds::new();
    let mut missing = Vec::new();
    for spec in catalogue::SINKS {
        let group = survey.group_of(spec.name).ok_or_else(|| {
            OpsError::Refused(format!(
                "no old consumer group continues into `{}`",
                spec.name
            ))
        })?;
        let offsets = seeds.entry(spec.name.to_owned()).or_default();
        for p in &survey.partitions {
            let next = match group.offsets.get(&p.partition) {
                Some(&o) => o,
                None if allow_missing || p.high_watermark == p.earliest => p.earliest,
                None => {
                    missing.push(format!("{} partition {}", group.name, p.partition));
                    continue;
                }
            };
            offsets.insert(p.partition, next);
        }
    }
    if missing.is_empty() {
        Ok(seeds)
    } else {
        missing.dedup();
        Err(OpsError::Refused(format!(
            "no committed offset for {}: the old consumers never committed there, or Kafka \
             expired the group's offsets. Pass --allow-missing-offsets to apply those \
             partitions from their earliest record",
            missing.join(", ")
        )))
    }
}

async fn seed_postgres(tx: &mut PgConnection, topic: &str, seeds: &Seeds) -> Result<()> {
    for spec in catalogue::in_store(Store::Postgres) {
        let (partitions, offsets): (Vec<i32>, Vec<i64>) =
            seeds[spec.name].iter().map(|(p, o)| (*p, *o)).unzip();
        sqlx::query(
            "INSERT INTO sink_offsets (sink, topic, partition, next_offset)
             SELECT $1, $2, p, o FROM UNNEST($3::int4[], $4::int8[]) AS u(p, o)",
        )
        .bind(spec.name)
        .bind(topic)
        .bind(&partitions)
        .bind(&offsets)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// The Redis hashes' totals replace `player_statistics`'s partial counts.
async fn import_stats(tx: &mut PgConnection, stats: &[PlayerStats]) -> Result<()> {
    for chunk in stats.chunks(ROWS_PER_STATEMENT) {
        let players: Vec<&str> = chunk.iter().map(|s| s.player_id.as_str()).collect();
        let totals: Vec<i64> = chunk.iter().map(|s| s.total_events).collect();
        let breakdowns: Vec<String> = chunk
            .iter()
            .map(|s| serde_json::to_string(&s.event_breakdown).expect("counts serialise"))
            .collect();
        let last: Vec<Option<DateTime<Utc>>> = chunk.iter().map(|s| s.last_event).collect();
        sqlx::query(
            "INSERT INTO player_statistics AS s (player_id, total_events, event_breakdown, last_event_at, updated_at)
             SELECT p, n, b::jsonb, t, now()
             FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::timestamptz[]) AS u(p, n, b, t)
             ON CONFLICT (player_id) DO UPDATE SET
                 total_events = EXCLUDED.total_events,
                 event_breakdown = EXCLUDED.event_breakdown,
                 last_event_at = EXCLUDED.last_event_at,
                 updated_at = now()",
        )
        .bind(&players)
        .bind(&totals)
        .bind(&breakdowns)
        .bind(&last)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Where `events` ends (the logger's offset, plus what it wrote past it before an
/// unclean stop) and the leaderboard manager's offset differ, the score events between
/// them: those `events` holds that the leaderboard sinks will apply (left out of the
/// rebuild), and those the old manager applied that `events` does not hold yet (added).
async fn offset_gap(
    config: &Config,
    survey: &Survey,
    seeds: &Seeds,
) -> Result<(HashSet<Uuid>, Vec<import::GapEvent>)> {
    let logger = &seeds[catalogue::LOGGER.name];
    let manager = &seeds[catalogue::LEADERBOARD.name];
    let logged_past = survey
        .group_of(catalogue::LOGGER.name)
        .and_then(|g| g.applied_past_commit.clone())
        .unwrap_or_default();
    let client = kafka::connect(&config.kafka).await?;
    let mut left_out = HashSet::new();
    let mut added = Vec::new();
    for pc in partition_clients(&client, &survey.topic).await? {
        let p = pc.partition();
        let (Some(&l), Some(&m)) = (logger.get(&p), manager.get(&p)) else {
            continue;
        };
        let l = l + logged_past.get(&p).copied().unwrap_or(0);
        let (from, to) = (l.min(m), l.max(m));
        for (_, event) in import::read_range(&pc, from, to).await? {
            if !event.is_score_event() {
                continue;
            }
            if l > m {
                left_out.insert(event.event_id);
            } else if let Some(points) = import::event_points(&event) {
                added.push(import::GapEvent {
                    game_id: event.game_id,
                    player_id: event.player_id,
                    timestamp: event.timestamp,
                    points,
                });
            }
        }
    }
    Ok((left_out, added))
}

/// The daily and weekly scores of every period `events` is complete for, from `events`
/// (± the gap).
async fn period_scores(
    tx: &mut PgConnection,
    since: Option<DateTime<Utc>>,
    left_out: &HashSet<Uuid>,
    added: &[import::GapEvent],
) -> Result<Vec<ScoreRow>> {
    let mut sums: BTreeMap<(String, PeriodKey, String), i64> = BTreeMap::new();
    let mut add = |game: &str, player: &str, at: DateTime<Utc>, points: i64| {
        for period in [Period::Daily, Period::Weekly] {
            let key = PeriodKey::of(period, at);
            if covers(since, key) {
                *sums
                    .entry((game.to_owned(), key, player.to_owned()))
                    .or_default() += points;
            }
        }
    };
    let mut rows = sqlx::query_as::<
        _,
        (
            Uuid,
            String,
            String,
            DateTime<Utc>,
            Option<sqlx::types::Json<serde_json::Value>>,
        ),
    >(
        "SELECT event_id, game_id, player_id, event_timestamp, data->'score' FROM events
         WHERE event_type = $1",
    )
    .bind(crate::event::SCORE_EVENT_TYPE)
    .fetch(&mut *tx);
    while let Some((id, game, player, at, score)) = rows.try_next().await? {
        if left_out.contains(&id) {
            continue;
        }
        if let Some(points) = score.and_then(|s| import::points(&s.0)) {
            add(&game, &player, at, points);
        }
    }
    drop(rows);
    for e in added {
        add(&e.game_id, &e.player_id, e.timestamp, e.points);
    }
    Ok(sums
        .into_iter()
        .map(|((game_id, key, player_id), score)| ScoreRow {
            game_id,
            key,
            player_id,
            score,
        })
        .collect())
}

/// `leaderboard_scores` (gamestream's own table) becomes exactly `scores`.
async fn replace_scores(tx: &mut PgConnection, scores: &[ScoreRow]) -> Result<()> {
    sqlx::query("DELETE FROM leaderboard_scores")
        .execute(&mut *tx)
        .await?;
    for chunk in scores.chunks(ROWS_PER_STATEMENT) {
        let games: Vec<&str> = chunk.iter().map(|r| r.game_id.as_str()).collect();
        let periods: Vec<&str> = chunk.iter().map(|r| r.key.period().as_str()).collect();
        let keys: Vec<String> = chunk.iter().map(|r| r.key.to_string()).collect();
        let players: Vec<&str> = chunk.iter().map(|r| r.player_id.as_str()).collect();
        let values: Vec<i64> = chunk.iter().map(|r| r.score).collect();
        sqlx::query(
            "INSERT INTO leaderboard_scores (game_id, period, period_key, player_id, score)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[])",
        )
        .bind(&games)
        .bind(&periods)
        .bind(&keys)
        .bind(&players)
        .bind(&values)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Writes each Redis sink's offsets hash with the adopted offsets and its marker, so
/// that the sink keeps the keys. With `only_missing`, hashes that have a marker are left.
async fn mark_redis(
    conn: &mut ::redis::aio::MultiplexedConnection,
    keys: &RedisKeys,
    topic: &str,
    seeds: &Seeds,
    only_missing: bool,
) -> Result<Vec<&'static str>> {
    let mut marked = Vec::new();
    for spec in catalogue::in_store(Store::Redis) {
        let key = keys.offsets(spec.name, topic);
        if only_missing
            && crate::sinks::redis::offsets::load(conn, &key)
                .await?
                .is_some()
        {
            continue;
        }
        let offsets = seeds.get(spec.name).cloned().unwrap_or_default();
        rebuild::finish(conn, &key, &offsets, &adopted_note(spec))
            .await
            .map_err(|e| OpsError::Refused(format!("writing `{key}`: {e}")))?;
        marked.push(spec.name);
    }
    Ok(marked)
}

fn adopted_note(spec: &SinkSpec) -> String {
    format!(
        "adopted from {} by gamestream cutover apply",
        spec.legacy_group
    )
}

async fn mark_done(pool: &sqlx::PgPool, topic: &str) -> Result<()> {
    sqlx::query("UPDATE cutover_adoptions SET redis_marked_at = now() WHERE topic = $1")
        .bind(topic)
        .execute(pool)
        .await?;
    Ok(())
}

impl Applied {
    /// What was done, as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.already {
            let _ = writeln!(out, "already adopted: nothing changed");
            if !self.completed_redis.is_empty() {
                let _ = writeln!(
                    out,
                    "finished the interrupted Redis part: marked {}",
                    self.completed_redis.join(", ")
                );
            }
            return out;
        }
        let _ = writeln!(
            out,
            "adopted the old pipeline's state; offsets seeded (next offset per partition):"
        );
        for (sink, offsets) in &self.seeds {
            let list: Vec<String> = offsets.iter().map(|(p, o)| format!("{p}:{o}")).collect();
            let _ = writeln!(out, "  {sink}: {}", list.join(" "));
        }
        let s = &self.summary;
        let _ = writeln!(
            out,
            "player_statistics: {} players imported from Redis ({} rows without a Redis hash kept as they were)",
            s.players_imported, s.players_without_hash
        );
        let _ = writeln!(
            out,
            "leaderboard_scores: {} all-time scores from Redis, {} daily/weekly scores from events",
            s.alltime_scores, s.period_scores
        );
        let _ = writeln!(
            out,
            "old daily/weekly Redis boards replaced: {}",
            s.old_period_boards_replaced
        );
        if !s.periods_started_empty.is_empty() {
            let _ = writeln!(
                out,
                "started EMPTY (events begins after them): {}",
                s.periods_started_empty.join(", ")
            );
        }
        if s.gap_events_left_out + s.gap_events_added > 0 {
            let _ = writeln!(
                out,
                "logger/manager offset gap: {} score events left out of the rebuild (applied again by the sinks), {} added from Kafka",
                s.gap_events_left_out, s.gap_events_added
            );
        }
        let _ = writeln!(
            out,
            "next: start the daemons, then `gamestream cutover verify` once they have caught up"
        );
        out
    }
}
