//! What the hardware allows, measured in the same run as the pipeline: a raw fetch of
//! the topic (records/s) and a plain COPY of the same rows into a table indexed like
//! `events` (rows/s).
//!
//! ```text
//! scratch topic ──rskafka fetch, all partitions at once──► records/s
//! the events    ──COPY (text) into bench_copy_limit (LIKE events INCLUDING ALL)──► rows/s
//! ```
//!
//! The COPY table must match `events` (columns, defaults, indexes), or the limit would
//! flatter or wrong the pipeline; [`table_shape`] reads both from the catalog so that a
//! test (and the benchmark itself) can compare them.

use std::time::Instant;

use rskafka::client::partition::UnknownTopicHandling;

use super::BenchError;
use super::Scratch;
use crate::event::Event;
use crate::kafka;
use crate::sinks::postgres;

/// The table the COPY limit writes into.
pub const COPY_LIMIT_TABLE: &str = "bench_copy_limit";

/// Rows per COPY statement of the limit measurement (the logger's writes are smaller;
/// a large COPY is what the hardware allows at best).
const COPY_CHUNK_ROWS: usize = 50_000;

/// Fetches every partition to its end, concurrently, as fast as rskafka can.
pub(super) async fn raw_fetch_rate(scratch: &Scratch) -> Result<f64, BenchError> {
    let topic = &scratch.config.topics.player_events;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..scratch.config.topics.player_events_partitions {
        let client = scratch
            .kafka
            .partition_client(topic.clone(), p, UnknownTopicHandling::Retry)
            .await
            .map_err(kafka::KafkaError::from)?;
        let max_bytes = scratch.config.consumer.fetch_max_bytes;
        let max_wait_ms =
            i32::try_from(scratch.config.consumer.fetch_max_wait.as_millis()).unwrap_or(i32::MAX);
        tasks.spawn(async move {
            let (mut offset, mut count) = (0_i64, 0_usize);
            loop {
                let (records, hw) = client
                    .fetch_records(offset, 1..max_bytes, max_wait_ms)
                    .await?;
                for r in &records {
                    if r.offset >= offset {
                        count += 1;
                        offset = r.offset + 1;
                    }
                }
                if offset >= hw {
                    return Ok::<usize, rskafka::client::error::Error>(count);
                }
            }
        });
    }
    let mut total = 0;
    while let Some(result) = tasks.join_next().await {
        total += result
            .map_err(|e| BenchError::Failed(e.to_string()))?
            .map_err(kafka::KafkaError::from)?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Creates [`COPY_LIMIT_TABLE`] as a copy of `events`' shape (columns, defaults,
/// constraints, indexes).
pub async fn create_copy_table(pg: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("CREATE TABLE bench_copy_limit (LIKE events INCLUDING ALL)")
        .execute(pg)
        .await?;
    Ok(())
}

/// A table's shape from the catalog: one line per column (name, type, not null,
/// default) and one per index (its definition with the table and index names taken
/// out), sorted, so that two tables of the same shape compare equal.
pub async fn table_shape(pg: &sqlx::PgPool, table: &str) -> Result<Vec<String>, sqlx::Error> {
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT format('column %s %s%s default %s', a.attname,
                       format_type(a.atttypid, a.atttypmod),
                       CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                       COALESCE(pg_get_expr(d.adbin, d.adrelid), 'none'))
         FROM pg_attribute a
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attnum",
    )
    .bind(table)
    .fetch_all(pg)
    .await?;
    // `CREATE UNIQUE INDEX name ON public.table USING btree (col)` → `UNIQUE btree (col)`.
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT format('index %s%s', CASE WHEN i.indisunique THEN 'unique ' ELSE '' END,
                       regexp_replace(pg_get_indexdef(i.indexrelid), '^.* USING ', ''))
         FROM pg_index i
         WHERE i.indrelid = $1::regclass",
    )
    .bind(table)
    .fetch_all(pg)
    .await?;
    let mut shape = columns;
    let mut indexes = indexes;
    indexes.sort();
    shape.extend(indexes);
    Ok(shape)
}

/// A plain COPY of the same rows into a table indexed like `events`; rows/s.
pub(super) async fn copy_rate(scratch: &Scratch, events: &[Event]) -> Result<f64, BenchError> {
    create_copy_table(&scratch.pg).await?;
    let (real, copy) = (
        table_shape(&scratch.pg, "events").await?,
        table_shape(&scratch.pg, COPY_LIMIT_TABLE).await?,
    );
    if real != copy {
        return Err(BenchError::Failed(format!(
            "the COPY-limit table does not match `events`: {copy:?} vs {real:?}"
        )));
    }
    let mut conn = scratch.pg.acquire().await?;
    let started = Instant::now();
    for chunk in events.chunks(COPY_CHUNK_ROWS) {
        let refs: Vec<&Event> = chunk.iter().collect();
        let buffer = postgres::events::copy_buffer(&refs);
        let mut copy = conn
            .copy_in_raw("COPY bench_copy_limit (event_id, event_type, player_id, game_id, event_timestamp, ingested_at, data) FROM STDIN")
            .await?;
        copy.send(buffer).await?;
        copy.finish().await?;
    }
    let rate = events.len() as f64 / started.elapsed().as_secs_f64();
    drop(conn);
    sqlx::query("DROP TABLE bench_copy_limit")
        .execute(&scratch.pg)
        .await?;
    Ok(rate)
}
