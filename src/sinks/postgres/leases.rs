//! Partition leases and lease members: the statements behind [`crate::leases`].
//!
//! ```text
//! lease_members     (topic, member, expires_at)          heartbeat ─► live member count
//! partition_leases  (topic, partition, owner, epoch, expires_at)
//!   renew    owner = me, not expired   ─► expires_at = now + ttl   (epoch unchanged)
//!   acquire  free or expired           ─► owner = me, epoch + 1    (SKIP LOCKED: no waiting)
//!   release  owner = me, epoch = mine  ─► owner NULL, expires now  (a graceful handover)
//!   fence    in a sink's commit transaction: epoch = mine, not expired, FOR SHARE
//! ```
//!
//! "Partition P of topic T is held" means: its row has `owner IS NOT NULL AND
//! expires_at > now()` (other tools, such as `gamestream offsets reset`, rely on it).
//! The fence takes a share lock on the lease rows it checks, so a takeover (an UPDATE)
//! waits until the commit is done, and a commit after a takeover sees the new epoch and
//! is refused. Rows are locked in partition order everywhere, so a renewal and a commit
//! never deadlock.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use crate::leases::Lease;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn leases(rows: Vec<(i32, i64)>) -> Vec<Lease> {
    let mut out: Vec<Lease> = rows
        .into_iter()
        .map(|(partition, epoch)| Lease { partition, epoch })
        .collect();
    out.sort_unstable();
    out
}

/// Records that `member` is alive for another `ttl`, drops members that are not, and
/// returns how many live members share `topic` (this one included).
pub async fn heartbeat(
    pool: &PgPool,
    topic: &str,
    member: &str,
    ttl: Duration,
) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM lease_members WHERE topic = $1 AND expires_at <= now()")
        .bind(topic)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO lease_members (topic, member, expires_at)
         VALUES ($1, $2, now() + $3::int8 * interval '1 millisecond')
         ON CONFLICT (topic, member) DO UPDATE
         SET expires_at = EXCLUDED.expires_at, updated_at = now()",
    )
    .bind(topic)
    .bind(member)
    .bind(millis(ttl))
    .execute(&mut *tx)
    .await?;
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lease_members WHERE topic = $1 AND expires_at > now()",
    )
    .bind(topic)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(live)
}

/// Makes sure every partition below `partitions` has a lease row (free when new).
pub async fn ensure_rows(pool: &PgPool, topic: &str, partitions: i32) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO partition_leases (topic, partition)
         SELECT $1, p FROM generate_series(0, $2::int4 - 1) AS p
         ON CONFLICT (topic, partition) DO NOTHING",
    )
    .bind(topic)
    .bind(partitions)
    .execute(pool)
    .await?;
    Ok(())
}

/// Extends every unexpired lease `member` holds by `ttl`; returns them. A lease that
/// is missing from the answer was lost (it expired, or another member took it).
pub async fn renew(
    pool: &PgPool,
    topic: &str,
    member: &str,
    ttl: Duration,
) -> Result<Vec<Lease>, sqlx::Error> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "WITH mine AS (
             SELECT partition FROM partition_leases
             WHERE topic = $1 AND owner = $2 AND expires_at > now()
             ORDER BY partition
             FOR UPDATE
         )
         UPDATE partition_leases l
         SET expires_at = now() + $3::int8 * interval '1 millisecond', updated_at = now()
         FROM mine
         WHERE l.topic = $1 AND l.partition = mine.partition
         RETURNING l.partition, l.epoch",
    )
    .bind(topic)
    .bind(member)
    .bind(millis(ttl))
    .fetch_all(pool)
    .await?;
    Ok(leases(rows))
}

/// Takes up to `want` free or expired leases among partitions `0..partitions`, each
/// with its epoch bumped. Rows another member is changing right now are skipped.
pub async fn acquire(
    pool: &PgPool,
    topic: &str,
    member: &str,
    want: i64,
    partitions: i32,
    ttl: Duration,
) -> Result<Vec<Lease>, sqlx::Error> {
    if want <= 0 {
        return Ok(Vec::new());
    }
    // A new epoch is the fencing token of every write under the lease, so it must
    // survive a PostgreSQL crash once this daemon acts on it: with the pool's
    // asynchronous commit, a crash could forget the increment after the daemon saw it,
    // and another daemon would then take the same epoch. This commit waits for its WAL
    // flush, whatever `postgres.synchronous_commit` says.
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = on")
        .execute(&mut *tx)
        .await?;
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "WITH free AS (
             SELECT partition FROM partition_leases
             WHERE topic = $1 AND partition < $4 AND (owner IS NULL OR expires_at <= now())
             ORDER BY partition
             LIMIT $3
             FOR UPDATE SKIP LOCKED
         )
         UPDATE partition_leases l
         SET owner = $2, epoch = l.epoch + 1,
             expires_at = now() + $5::int8 * interval '1 millisecond', updated_at = now()
         FROM free
         WHERE l.topic = $1 AND l.partition = free.partition
         RETURNING l.partition, l.epoch",
    )
    .bind(topic)
    .bind(member)
    .bind(want)
    .bind(partitions)
    .bind(millis(ttl))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(leases(rows))
}

/// Frees one lease, if `member` still holds it at `lease.epoch`, so that another
/// member can take it at once.
pub async fn release(
    pool: &PgPool,
    topic: &str,
    member: &str,
    lease: Lease,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE partition_leases SET owner = NULL, expires_at = now(), updated_at = now()
         WHERE topic = $1 AND partition = $2 AND owner = $3 AND epoch = $4",
    )
    .bind(topic)
    .bind(lease.partition)
    .bind(member)
    .bind(lease.epoch)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A graceful exit: frees every lease of `member` and removes it from the members.
pub async fn leave(pool: &PgPool, topic: &str, member: &str) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let freed = sqlx::query(
        "UPDATE partition_leases SET owner = NULL, expires_at = now(), updated_at = now()
         WHERE topic = $1 AND owner = $2",
    )
    .bind(topic)
    .bind(member)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM lease_members WHERE topic = $1 AND member = $2")
        .bind(topic)
        .bind(member)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(freed.rows_affected())
}

/// The fence, inside a sink's commit transaction: of `fences` (partition, epoch), the
/// partitions whose lease is no longer held at that epoch. The rows still held stay
/// share-locked until the transaction ends, so no takeover can slip in before it.
pub async fn lost_in_tx(
    conn: &mut PgConnection,
    topic: &str,
    fences: &[Lease],
) -> Result<Vec<i32>, sqlx::Error> {
    if fences.is_empty() {
        return Ok(Vec::new());
    }
    let partitions: Vec<i32> = fences.iter().map(|f| f.partition).collect();
    let epochs: Vec<i64> = fences.iter().map(|f| f.epoch).collect();
    // clock_timestamp(), not now(): the transaction may have started a while ago.
    let held: Vec<i32> = sqlx::query_scalar(
        "SELECT l.partition FROM partition_leases l
         JOIN UNNEST($2::int4[], $3::int8[]) AS f(p, e) ON l.partition = f.p AND l.epoch = f.e
         WHERE l.topic = $1 AND l.owner IS NOT NULL AND l.expires_at > clock_timestamp()
         ORDER BY l.partition
         FOR SHARE OF l",
    )
    .bind(topic)
    .bind(&partitions)
    .bind(&epochs)
    .fetch_all(conn)
    .await?;
    Ok(partitions
        .into_iter()
        .filter(|p| !held.contains(p))
        .collect())
}
