//! The logger's write: rows into `events` plus the offset commit, in one transaction.
//!
//! ```text
//! BEGIN
//!   SAVEPOINT copy; COPY events FROM STDIN (text)      -- the fast path
//!     on unique_violation: ROLLBACK TO copy;
//!     INSERT ... SELECT FROM UNNEST(...) ON CONFLICT (event_id) DO NOTHING
//!   INSERT INTO sink_offsets ... (next offset per partition)
//! COMMIT
//! ```
//!
//! COPY is the fastest way into PostgreSQL; a duplicate `event_id` (a client resending
//! an event, a dead letter replayed) is rare, so the batch takes the slower
//! conflict-tolerant statement only when COPY meets one.

use sqlx::{PgConnection, PgPool};

use crate::event::{Event, rfc3339};
use crate::sinks::{OffsetCommit, SinkError};

use super::offsets;

/// SQLSTATE of unique_violation.
const UNIQUE_VIOLATION: &str = "23505";

/// Writes `events` and commits `commits` for `topic` as `sink`, atomically.
pub async fn write(
    pool: &PgPool,
    sink: &str,
    topic: &str,
    events: &[&Event],
    commits: &[OffsetCommit],
) -> Result<(), SinkError> {
    let mut tx = pool.begin().await?;
    if !events.is_empty() {
        sqlx::query("SAVEPOINT copy_events")
            .execute(&mut *tx)
            .await?;
        match copy(&mut tx, events).await {
            Ok(()) => {
                sqlx::query("RELEASE SAVEPOINT copy_events")
                    .execute(&mut *tx)
                    .await?;
            }
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(UNIQUE_VIOLATION) => {
                sqlx::query("ROLLBACK TO SAVEPOINT copy_events")
                    .execute(&mut *tx)
                    .await?;
                insert_ignoring_duplicates(&mut tx, events).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    // A failed commit drops the transaction, which rolls the whole batch back.
    offsets::commit(&mut tx, sink, topic, commits).await?;
    tx.commit().await?;
    Ok(())
}

/// COPY in PostgreSQL's text format.
async fn copy(conn: &mut PgConnection, events: &[&Event]) -> Result<(), sqlx::Error> {
    let buffer = copy_buffer(events);
    let mut copy = conn
        .copy_in_raw(
            "COPY events (event_id, event_type, player_id, game_id, event_timestamp, ingested_at, data) FROM STDIN",
        )
        .await?;
    if let Err(e) = copy.send(buffer).await {
        // Abort so the connection is usable again; the original error is what matters.
        let _ = copy.abort(e.to_string()).await;
        return Err(e);
    }
    copy.finish().await?;
    Ok(())
}

/// The COPY text-format payload: one line per event, tab-separated, escaped.
pub fn copy_buffer(events: &[&Event]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.len() * 256);
    let mut uuid = uuid::Uuid::encode_buffer();
    for event in events {
        out.extend_from_slice(
            event
                .event_id
                .hyphenated()
                .encode_lower(&mut uuid)
                .as_bytes(),
        );
        for field in [&event.event_type, &event.player_id, &event.game_id] {
            out.push(b'\t');
            push_escaped(&mut out, field);
        }
        out.push(b'\t');
        out.extend_from_slice(rfc3339(event.timestamp).as_bytes());
        out.push(b'\t');
        out.extend_from_slice(rfc3339(event.ingested_at).as_bytes());
        out.push(b'\t');
        push_escaped(&mut out, &event.data);
        out.push(b'\n');
    }
    out
}

/// Escapes a value for COPY text format: backslash, tab, newline and carriage return.
fn push_escaped(out: &mut Vec<u8>, value: &str) {
    for &b in value.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// The conflict-tolerant path: one statement over arrays.
async fn insert_ignoring_duplicates(
    conn: &mut PgConnection,
    events: &[&Event],
) -> Result<(), sqlx::Error> {
    let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.event_id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let players: Vec<&str> = events.iter().map(|e| e.player_id.as_str()).collect();
    let games: Vec<&str> = events.iter().map(|e| e.game_id.as_str()).collect();
    let times: Vec<chrono::DateTime<chrono::Utc>> = events.iter().map(|e| e.timestamp).collect();
    let ingested: Vec<chrono::DateTime<chrono::Utc>> =
        events.iter().map(|e| e.ingested_at).collect();
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    sqlx::query(
        "INSERT INTO events (event_id, event_type, player_id, game_id, event_timestamp, ingested_at, data)
         SELECT id, t, p, g, ts, ia, d::jsonb
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[], $7::text[])
              AS u(id, t, p, g, ts, ia, d)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&players)
    .bind(&games)
    .bind(&times)
    .bind(&ingested)
    .bind(&data)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Score;

    #[test]
    fn copy_lines_escape_what_text_format_needs() {
        let event = Event {
            event_id: uuid::Uuid::nil(),
            event_type: "t\\x".to_owned(),
            player_id: "p".to_owned(),
            game_id: "g".to_owned(),
            timestamp: "2024-01-15T10:30:00Z".parse().expect("time"),
            ingested_at: "2024-01-15T10:30:01.5Z".parse().expect("time"),
            data: r#"{"a":"x\ty\\n"}"#.replace("\\t", "\t"),
            score: Score::Absent,
        };
        let line = String::from_utf8(copy_buffer(&[&event])).expect("utf8");
        assert_eq!(
            line,
            "00000000-0000-0000-0000-000000000000\tt\\\\x\tp\tg\t2024-01-15T10:30:00Z\t2024-01-15T10:30:01.500Z\t{\"a\":\"x\\ty\\\\\\\\n\"}\n"
        );
    }
}
