//! `leaderboard_scores` (every player's score in every period: the system of record)
//! and the CONTRACT `leaderboards` table (the all-time top N of each game, as the old
//! leaderboard manager wrote it; daily and weekly boards are in `leaderboard_scores`,
//! Redis and the query API only).
//!
//! ```text
//! sink write:  BEGIN; upsert leaderboard_scores (score += Σ) FROM UNNEST; offsets::commit; COMMIT
//! refresh:     BEGIN; advisory lock; rank all time per game ─► upsert top N,
//!              delete what fell out; COMMIT                    (every refresh_interval)
//! ```

use futures::{Stream, TryStreamExt};
use sqlx::{PgConnection, PgPool};

use super::offsets;
use crate::aggregate::period::ALLTIME_KEY;
use crate::aggregate::scores::{Ranked, SCORE_BOUND_REFUSAL, ScoreRow};
use crate::aggregate::{Period, PeriodKey, ScoreDelta};
use crate::event::MAX_EXACT_SCORE;
use crate::sinks::{OffsetCommit, SinkError};

/// Advisory lock taken by a refresh, so that refreshes of several daemons take turns
/// instead of deadlocking on each other's rows ("gamelb" in ASCII).
const REFRESH_LOCK: i64 = 0x6761_6d65_6c62;

/// Adds `delta` to `leaderboard_scores` and commits `commits`, atomically.
pub async fn write(
    pool: &PgPool,
    sink: &str,
    topic: &str,
    delta: &ScoreDelta<'_>,
    commits: &[OffsetCommit],
) -> Result<(), SinkError> {
    let mut tx = pool.begin().await?;
    if !delta.is_empty() {
        let crossed = upsert(&mut tx, delta).await.map_err(|e| match &e {
            // Permanent either way (SQLSTATE 23514); this says which rule, in the words
            // the Redis sink uses for the same refusal.
            sqlx::Error::Database(db) if db.constraint() == Some(SCORE_BOUND_CONSTRAINT) => {
                SinkError::permanent(format!(
                    "{SCORE_BOUND_REFUSAL} (check constraint {SCORE_BOUND_CONSTRAINT})"
                ))
            }
            _ => SinkError::from(e),
        })?;
        if crossed {
            // Dropping the transaction rolls the upsert back.
            return Err(SinkError::permanent(format!(
                "{SCORE_BOUND_REFUSAL} (a running sum of the batch would leave it)"
            )));
        }
    }
    // A failed commit drops the transaction, which rolls the whole batch back.
    offsets::commit(&mut tx, sink, topic, commits).await?;
    tx.commit().await?;
    Ok(())
}

/// The CHECK constraint holding `leaderboard_scores.score` within ±(2^53 - 1) (migration
/// 20261202000001).
pub const SCORE_BOUND_CONSTRAINT: &str = "leaderboard_scores_score_exact";

/// One statement for the batch; cells are unique and ordered in `delta`. The CHECK
/// constraint bounds each final score; when a cell's running sum changes direction within
/// the batch (scores of both signs), the statement also counts the cells whose stored
/// score plus that running sum left the bound on the way (`true`: the caller rolls back),
/// so that the batch is refused exactly when one of its records would be alone.
async fn upsert(conn: &mut PgConnection, delta: &ScoreDelta<'_>) -> Result<bool, sqlx::Error> {
    let n = delta.len();
    let (mut games, mut periods, mut keys, mut players, mut scores) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut highs, mut lows) = (Vec::new(), Vec::new());
    let ranged = !delta.monotonic();
    for (cell, sum) in delta.sums() {
        games.push(cell.game_id);
        periods.push(cell.key.period().as_str());
        keys.push(cell.key.to_string());
        players.push(cell.player_id);
        scores.push(sum.sum);
        if ranged {
            highs.push(sum.high);
            lows.push(sum.low);
        }
    }
    if !ranged {
        sqlx::query(
            "INSERT INTO leaderboard_scores AS s (game_id, period, period_key, player_id, score, updated_at)
             SELECT g, per, k, p, sc, now()
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[]) AS u(g, per, k, p, sc)
             ON CONFLICT (game_id, period, period_key, player_id) DO UPDATE SET
                 score = s.score + EXCLUDED.score,
                 updated_at = now()",
        )
        .bind(&games)
        .bind(&periods)
        .bind(&keys)
        .bind(&players)
        .bind(&scores)
        .execute(conn)
        .await?;
        return Ok(false);
    }
    // The score before the batch is the returned one minus the batch's sum.
    let crossed: i64 = sqlx::query_scalar(
        "WITH u AS (
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[],
                                  $6::int8[], $7::int8[]) AS u(g, per, k, p, sc, hi, lo)
         ), up AS (
             INSERT INTO leaderboard_scores AS s (game_id, period, period_key, player_id, score, updated_at)
             SELECT g, per, k, p, sc, now() FROM u
             ON CONFLICT (game_id, period, period_key, player_id) DO UPDATE SET
                 score = s.score + EXCLUDED.score,
                 updated_at = now()
             RETURNING s.game_id, s.period, s.period_key, s.player_id, s.score
         )
         SELECT count(*) FROM up
         JOIN u ON up.game_id = u.g AND up.period = u.per AND up.period_key = u.k AND up.player_id = u.p
         WHERE up.score - u.sc + u.hi > $8 OR up.score - u.sc + u.lo < -$8",
    )
    .bind(&games)
    .bind(&periods)
    .bind(&keys)
    .bind(&players)
    .bind(&scores)
    .bind(&highs)
    .bind(&lows)
    .bind(MAX_EXACT_SCORE)
    .fetch_one(conn)
    .await?;
    Ok(crossed > 0)
}

/// Rewrites the `leaderboards` rows of `games` (all games when None) from the all-time
/// scores of `leaderboard_scores`: the top `top_n` of each game, `period = 'alltime'`,
/// ranked 1.. by score (ties: player id descending, as Redis's `ZRANGE REV`), so that the
/// operators' `SELECT * FROM leaderboards WHERE game_id = ... ORDER BY rank` reads one
/// board (CONTRACT). The boards are read off `idx_leaderboard_scores_alltime_top` (their
/// cost does not grow with the number of players). Rows that did not change are not
/// touched; rows that fell out are deleted, and so is any daily or weekly row of those
/// games (an earlier version wrote them; migration 20261203000001 deletes the rest).
/// Returns rows changed.
pub async fn refresh(
    pool: &PgPool,
    games: Option<&[String]>,
    top_n: u32,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(REFRESH_LOCK)
        .execute(&mut *tx)
        .await?;
    // A few index probes per game: compiling them (JIT) would cost more than running them.
    sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
    let games = match games {
        Some(games) => games.to_vec(),
        None => all_games(&mut tx).await?,
    };
    let changed: i64 = sqlx::query_scalar(
        "WITH games AS (
             SELECT DISTINCT game_id FROM UNNEST($1::text[]) AS g(game_id)
         ), top AS (
             -- Off the partial index, in ranking order.
             SELECT g.game_id, t.player_id, t.score, 'alltime' AS period,
                    row_number() OVER (PARTITION BY g.game_id
                                       ORDER BY t.score DESC, t.player_id COLLATE \"C\" DESC) AS rank
             FROM games g
             CROSS JOIN LATERAL (
                 SELECT s.player_id, s.score FROM leaderboard_scores s
                 WHERE s.game_id = g.game_id AND s.period = 'alltime'
                 ORDER BY s.score DESC, s.player_id COLLATE \"C\" DESC
                 LIMIT $2
             ) t
         ), upserted AS (
             INSERT INTO leaderboards AS l (game_id, player_id, rank, score, period, updated_at)
             SELECT game_id, player_id, rank, score, period, now() FROM top
             ON CONFLICT (game_id, player_id, period) DO UPDATE
                 SET rank = EXCLUDED.rank, score = EXCLUDED.score, updated_at = EXCLUDED.updated_at
                 WHERE (l.rank, l.score) IS DISTINCT FROM (EXCLUDED.rank, EXCLUDED.score)
             RETURNING 1
         ), deleted AS (
             DELETE FROM leaderboards l
             WHERE l.game_id IN (SELECT game_id FROM games)
               AND NOT EXISTS (SELECT 1 FROM top t
                               WHERE t.game_id = l.game_id AND t.player_id = l.player_id
                                 AND t.period = l.period)
             RETURNING 1
         )
         SELECT (SELECT count(*) FROM upserted) + (SELECT count(*) FROM deleted)",
    )
    .bind(&games)
    .bind(i64::from(top_n))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(changed.try_into().unwrap_or_default())
}

/// Every game with a score, by a skip scan of the all-time index (one probe per game,
/// not a pass over every row; every game with a score has an all-time row).
async fn all_games(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH RECURSIVE games AS (
             (SELECT game_id FROM leaderboard_scores WHERE period = 'alltime'
              ORDER BY game_id LIMIT 1)
             UNION ALL
             SELECT (SELECT s.game_id FROM leaderboard_scores s
                     WHERE s.game_id > g.game_id AND s.period = 'alltime'
                     ORDER BY s.game_id LIMIT 1)
             FROM games g WHERE g.game_id IS NOT NULL
         )
         SELECT game_id FROM games WHERE game_id IS NOT NULL",
    )
    .fetch_all(conn)
    .await
}

/// The top `limit` of one board, from the complete scores.
pub async fn top(
    pool: &PgPool,
    game_id: &str,
    key: PeriodKey,
    limit: i64,
) -> Result<Vec<Ranked>, sqlx::Error> {
    // The all-time board names its period literally, so that the planner can use the
    // partial index whatever plan it caches.
    let rows: Vec<(String, i64)> = if key == PeriodKey::AllTime {
        sqlx::query_as(
            "SELECT player_id, score FROM leaderboard_scores
             WHERE game_id = $1 AND period = 'alltime'
             ORDER BY score DESC, player_id COLLATE \"C\" DESC
             LIMIT $2",
        )
        .bind(game_id)
        .bind(limit)
        .fetch_all(pool)
        .await?
    } else {
        sqlx::query_as(
            "SELECT player_id, score FROM leaderboard_scores
             WHERE game_id = $1 AND period = $2 AND period_key = $3
             ORDER BY score DESC, player_id COLLATE \"C\" DESC
             LIMIT $4",
        )
        .bind(game_id)
        .bind(key.period().as_str())
        .bind(key.to_string())
        .bind(limit)
        .fetch_all(pool)
        .await?
    };
    Ok(rows
        .into_iter()
        .map(|(player_id, score)| Ranked { player_id, score })
        .collect())
}

/// Whether any score of `game_id` was ever recorded (a game with none is unknown).
pub async fn game_exists(pool: &PgPool, game_id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM leaderboard_scores WHERE game_id = $1 AND period = 'alltime')",
    )
    .bind(game_id)
    .fetch_one(pool)
    .await
}

/// The scores Redis keeps (all time, and days and weeks from `first_day` and
/// `first_week` on), streamed inside the caller's snapshot transaction.
pub fn stream_recent<'c>(
    conn: &'c mut PgConnection,
    first_day: PeriodKey,
    first_week: PeriodKey,
) -> impl Stream<Item = Result<ScoreRow, sqlx::Error>> + Send + 'c {
    sqlx::query_as::<_, (String, String, String, String, i64)>(
        "SELECT game_id, period, period_key, player_id, score FROM leaderboard_scores
         WHERE period = 'alltime' OR (period = 'daily' AND period_key >= $1)
                                  OR (period = 'weekly' AND period_key >= $2)",
    )
    .bind(first_day.to_string())
    .bind(first_week.to_string())
    .fetch(conn)
    .try_filter_map(|row| std::future::ready(Ok(score_row(row))))
}

/// A stored row as a [`ScoreRow`]; None (with a warning) if its period is unreadable.
fn score_row(
    (game_id, period, key, player_id, score): (String, String, String, String, i64),
) -> Option<ScoreRow> {
    let Some(key) = parse_key(&period, &key) else {
        tracing::warn!(
            game_id,
            period,
            key,
            "leaderboard_scores row with an unreadable period; skipped"
        );
        return None;
    };
    Some(ScoreRow {
        game_id,
        key,
        player_id,
        score,
    })
}

fn parse_key(period: &str, key: &str) -> Option<PeriodKey> {
    match period.parse::<Period>().ok()? {
        Period::AllTime if key == ALLTIME_KEY => Some(PeriodKey::AllTime),
        Period::AllTime => None,
        period => PeriodKey::parse(period, key).ok(),
    }
}
