//! Dead letters into `dlq_events`, once per consumer and source record.

use sqlx::PgPool;

use crate::dead_letter::DeadLetter;

/// Inserts `letters`; a letter already stored (same consumer, topic, partition,
/// offset) is left as it is, so retries and replays of a batch never duplicate rows.
pub async fn insert(pool: &PgPool, letters: &[DeadLetter]) -> Result<u64, sqlx::Error> {
    if letters.is_empty() {
        return Ok(0);
    }
    let originals: Vec<String> = letters
        .iter()
        .map(|l| l.original_event().to_string())
        .collect();
    let errors: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
    let consumers: Vec<&str> = letters.iter().map(|l| l.consumer).collect();
    let kinds: Vec<&str> = letters.iter().map(|l| l.kind.as_str()).collect();
    let topics: Vec<&str> = letters.iter().map(|l| l.topic.as_str()).collect();
    let partitions: Vec<i32> = letters.iter().map(|l| l.partition).collect();
    let offsets: Vec<i64> = letters.iter().map(|l| l.offset).collect();
    let payloads: Vec<&[u8]> = letters.iter().map(|l| l.payload.as_slice()).collect();
    let times: Vec<chrono::DateTime<chrono::Utc>> = letters.iter().map(|l| l.at).collect();
    let result = sqlx::query(
        "INSERT INTO dlq_events (original_event, error_message, consumer_service, error_kind,
                                 source_topic, source_partition, source_offset, original_payload, created_at)
         SELECT o::jsonb, e, c, k, t, p, off, pl, at
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::int8[],
                     $8::bytea[], $9::timestamptz[]) AS u(o, e, c, k, t, p, off, pl, at)
         ON CONFLICT (consumer_service, source_topic, source_partition, source_offset) DO NOTHING",
    )
    .bind(&originals)
    .bind(&errors)
    .bind(&consumers)
    .bind(&kinds)
    .bind(&topics)
    .bind(&partitions)
    .bind(&offsets)
    .bind(&payloads)
    .bind(&times)
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}
