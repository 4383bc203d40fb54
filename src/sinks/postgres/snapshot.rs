//! A consistent read of the Postgres sinks: rows and committed offsets from one
//! snapshot, which is what a Redis rebuild needs (the rebuilt keys and the offsets
//! Redis resumes from must describe the same moment).

use std::collections::BTreeMap;

use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// A read-only REPEATABLE READ transaction: every statement in it sees the database as
/// of its first statement.
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
}

/// The next offset per partition that `sink` committed for `topic`, as of the
/// caller's snapshot.
pub async fn committed(
    conn: &mut PgConnection,
    sink: &str,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, sqlx::Error> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM sink_offsets WHERE sink = $1 AND topic = $2",
    )
    .bind(sink)
    .bind(topic)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}
