//! `player_statistics`: the stats sink's write (one upsert over arrays plus the offset
//! commit, in one transaction), and the reads of the query API and the Redis rebuild.
//!
//! ```text
//! BEGIN
//!   INSERT INTO player_statistics SELECT FROM UNNEST(players, totals, breakdowns, last times)
//!     ON CONFLICT: total_events += n, event_breakdown summed per type, last_event_at = max
//!   offsets::commit (compare-and-set)
//! COMMIT
//! ```

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::{Stream, TryStreamExt};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

use super::offsets;
use crate::aggregate::StatsDelta;
use crate::aggregate::stats::PlayerStats;
use crate::sinks::{OffsetCommit, SinkError};

/// Adds `delta` to `player_statistics` and commits `commits`, atomically.
pub async fn write(
    pool: &PgPool,
    sink: &str,
    topic: &str,
    delta: &StatsDelta<'_>,
    commits: &[OffsetCommit],
) -> Result<(), SinkError> {
    let mut tx = pool.begin().await?;
    if !delta.is_empty() {
        upsert(&mut tx, delta).await?;
    }
    // A failed commit drops the transaction, which rolls the whole batch back.
    offsets::commit(&mut tx, sink, topic, commits).await?;
    tx.commit().await?;
    Ok(())
}

/// One statement for the whole batch: players are unique in `delta` (ON CONFLICT may
/// touch a row only once) and sorted (so concurrent writers lock rows in one order).
async fn upsert(conn: &mut PgConnection, delta: &StatsDelta<'_>) -> Result<(), sqlx::Error> {
    let mut players = Vec::with_capacity(delta.len());
    let mut totals = Vec::with_capacity(delta.len());
    let mut breakdowns = Vec::with_capacity(delta.len());
    let mut last_events = Vec::with_capacity(delta.len());
    for (player_id, player) in delta.iter() {
        players.push(player_id);
        totals.push(player.total);
        breakdowns.push(player.breakdown_json());
        last_events.push(player.last_event);
    }
    sqlx::query(
        "INSERT INTO player_statistics AS s (player_id, total_events, event_breakdown, last_event_at, updated_at)
         SELECT p, n, b::jsonb, t, now()
         FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::timestamptz[]) AS u(p, n, b, t)
         ON CONFLICT (player_id) DO UPDATE SET
             total_events = s.total_events + EXCLUDED.total_events,
             event_breakdown = s.event_breakdown || COALESCE(
                 (SELECT jsonb_object_agg(e.key, COALESCE((s.event_breakdown ->> e.key)::bigint, 0) + e.value::bigint)
                  FROM jsonb_each_text(EXCLUDED.event_breakdown) AS e),
                 '{}'::jsonb),
             last_event_at = GREATEST(s.last_event_at, EXCLUDED.last_event_at),
             updated_at = now()",
    )
    .bind(&players)
    .bind(&totals)
    .bind(&breakdowns)
    .bind(&last_events)
    .execute(conn)
    .await?;
    Ok(())
}

/// A row as the readers see it.
type Row = (
    String,
    i64,
    Json<BTreeMap<String, i64>>,
    Option<DateTime<Utc>>,
);

fn from_row((player_id, total_events, breakdown, last_event): Row) -> PlayerStats {
    PlayerStats {
        player_id,
        total_events,
        event_breakdown: breakdown.0,
        last_event,
    }
}

/// One player's statistics, if the player has any.
pub async fn read(pool: &PgPool, player_id: &str) -> Result<Option<PlayerStats>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT player_id, total_events, event_breakdown, last_event_at
         FROM player_statistics WHERE player_id = $1",
    )
    .bind(player_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(from_row))
}

/// Every player's statistics, streamed (inside the caller's snapshot transaction).
pub fn stream_all<'c>(
    conn: &'c mut PgConnection,
) -> impl Stream<Item = Result<PlayerStats, sqlx::Error>> + Send + 'c {
    sqlx::query_as::<_, Row>(
        "SELECT player_id, total_events, event_breakdown, last_event_at FROM player_statistics",
    )
    .fetch(conn)
    .map_ok(from_row)
}
