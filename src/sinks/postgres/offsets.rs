//! Committed offsets, stored beside the data (table `sink_offsets`).
//!
//! A sink commits "the next offset I will apply" for each partition in the same
//! transaction as the rows it wrote, so the rows and the offset are durable together
//! or not at all: that is the exactly-once guarantee. Commits are compare-and-set, so
//! two writers can never both apply the same records.

use std::collections::BTreeMap;

use sqlx::{PgConnection, PgPool};

use super::leases;
use crate::leases::Lease;
use crate::sinks::error::WriteError;
use crate::sinks::{OffsetCommit, SinkError};

/// The next offset to apply, per partition, that `sink` committed for `topic`.
pub async fn load(
    pool: &PgPool,
    sink: &str,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, sqlx::Error> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM sink_offsets WHERE sink = $1 AND topic = $2",
    )
    .bind(sink)
    .bind(topic)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Every sink's committed next offsets for `topic`: sink → partition → next offset.
pub async fn load_all(
    pool: &PgPool,
    topic: &str,
) -> Result<BTreeMap<String, BTreeMap<i32, i64>>, sqlx::Error> {
    let rows: Vec<(String, i32, i64)> =
        sqlx::query_as("SELECT sink, partition, next_offset FROM sink_offsets WHERE topic = $1")
            .bind(topic)
            .fetch_all(pool)
            .await?;
    let mut out: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for (sink, partition, next) in rows {
        out.entry(sink).or_default().insert(partition, next);
    }
    Ok(out)
}

/// Records the next offsets inside the caller's transaction, compare-and-set: fails with
/// [`SinkError::Fatal`] ([`WriteError::OffsetsMoved`]) if any partition's stored offset is not what the commit
/// expects; the caller then drops the transaction, which rolls the whole batch back.
///
/// Commits that carry a lease epoch are fenced first, in the same transaction: if this
/// daemon no longer holds any of those leases, [`SinkError::LeaseLost`] names them and
/// the caller rolls back (see [`leases::lost_in_tx`]).
pub async fn commit(
    conn: &mut PgConnection,
    sink: &str,
    topic: &str,
    commits: &[OffsetCommit],
) -> Result<(), SinkError> {
    if commits.is_empty() {
        return Ok(());
    }
    let fences: Vec<Lease> = commits
        .iter()
        .filter_map(|c| {
            c.epoch.map(|epoch| Lease {
                partition: c.partition,
                epoch,
            })
        })
        .collect();
    let lost = leases::lost_in_tx(&mut *conn, topic, &fences).await?;
    if !lost.is_empty() {
        return Err(SinkError::LeaseLost(lost));
    }
    let partitions: Vec<i32> = commits.iter().map(|c| c.partition).collect();
    let expected: Vec<Option<i64>> = commits.iter().map(|c| c.expected).collect();
    let next: Vec<i64> = commits.iter().map(|c| c.next).collect();
    let applied: i64 = sqlx::query_scalar(
        "WITH input AS (
             SELECT * FROM UNNEST($3::int4[], $4::int8[], $5::int8[]) AS i(p, expected, next)
         ), updated AS (
             UPDATE sink_offsets s SET next_offset = i.next, updated_at = now()
             FROM input i
             WHERE s.sink = $1 AND s.topic = $2 AND s.partition = i.p AND s.next_offset = i.expected
             RETURNING s.partition
         ), inserted AS (
             INSERT INTO sink_offsets (sink, topic, partition, next_offset)
             SELECT $1, $2, p, next FROM input WHERE expected IS NULL
             ON CONFLICT (sink, topic, partition) DO NOTHING
             RETURNING partition
         )
         SELECT (SELECT count(*) FROM updated) + (SELECT count(*) FROM inserted)",
    )
    .bind(sink)
    .bind(topic)
    .bind(&partitions)
    .bind(&expected)
    .bind(&next)
    .fetch_one(conn)
    .await?;
    if applied != commits.len() as i64 {
        return Err(SinkError::Fatal(WriteError::OffsetsMoved {
            sink: sink.to_owned(),
            topic: topic.to_owned(),
            detail: String::new(),
        }));
    }
    Ok(())
}
