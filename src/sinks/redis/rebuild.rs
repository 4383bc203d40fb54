//! Refilling Redis from Postgres when it comes back empty.
//!
//! Redis restarted without persistence (or flushed) has lost the sinks' keys *and* the
//! offsets hashes that say what they contain. A Redis sink notices when it starts (its
//! offsets hash has no marker) and, before it applies anything, rebuilds:
//!
//! ```text
//! SET rebuild-lock NX PX ttl            (one process rebuilds; the others wait and retry)
//! BEGIN REPEATABLE READ READ ONLY       (one Postgres snapshot)
//!   offsets ◄── sink_offsets of the Postgres twin sink (stats-aggregator, leaderboard-manager)
//!   UNLINK every key of the store (SCAN by prefix)
//!   rows    ──► pipelines of rebuild_batch_size (player_statistics → hashes,
//!                                                leaderboard_scores → sorted sets)
//! COMMIT
//! MULTI; DEL offsets; HSET offsets initialised_at <now> <partition> <next> ...; EXEC
//! ```
//!
//! The Redis sink then resumes from the Postgres sink's offsets, which describe exactly
//! the rows it copied, so nothing is missing and nothing counts twice.
//!
//! A rebuild deletes only keys gamestream may delete: the store must be empty (Redis
//! flushed or restarted without persistence), or a rebuild must have been asked for
//! ([`REBUILD_REQUESTED_FIELD`], set by `gamestream offsets rebuild` or by a rebuild cut
//! short). Keys without gamestream's offsets are the old pipeline's: the sink leaves
//! them alone and retries until `gamestream cutover apply` adopts them (it writes the
//! offsets hashes) or an operator asks for the rebuild. A sink running
//! while Redis empties finds the marker gone at its next write (the script answers
//! MISSING), stops, and is restarted into this path. Rebuilds are counted in
//! `gamestream_redis_rebuilds_total{sink}` (a first start, with nothing in Postgres
//! yet, only initialises and is not counted).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use redis::aio::MultiplexedConnection;

use super::keys::{INITIALISED_FIELD, REBUILD_REQUESTED_FIELD, RedisKeys, scan_step};
use super::pool::connection;
use super::{RedisPool, leaderboard, offsets, stats};
use crate::aggregate::{Period, PeriodKey};
use crate::event::rfc3339;
use crate::sinks::SinkError;
use crate::sinks::postgres::{self, snapshot};

/// What a Redis sink needs beyond its pool: timeouts and rebuild sizes.
#[derive(Debug, Clone)]
pub struct RedisSinkSettings {
    /// Longest wait for one script or pipeline reply.
    pub timeout: Duration,
    /// Rows per pipeline while rebuilding.
    pub rebuild_batch_size: usize,
    /// Lifetime of the rebuild lock; refreshed after every pipeline.
    pub rebuild_lock_ttl: Duration,
    /// How long dated leaderboard keys live after their period.
    pub period_ttl: Duration,
}

impl RedisSinkSettings {
    /// From `[redis]` and `[leaderboard]`.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            timeout: config.redis.timeout,
            rebuild_batch_size: config.redis.rebuild_batch_size,
            rebuild_lock_ttl: config.redis.rebuild_lock_ttl,
            period_ttl: config.leaderboard.period_ttl,
        }
    }
}

/// Which store a Redis sink keeps, and so what a rebuild copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// `player_stats:*` from `player_statistics`.
    Stats,
    /// `leaderboard:*` from `leaderboard_scores`.
    Leaderboard,
}

/// A Redis sink and the Postgres sink whose offsets and rows it is rebuilt from.
#[derive(Debug, Clone, Copy)]
pub(super) struct RebuildSource<'a> {
    pub(super) sink: &'static str,
    pub(super) postgres_sink: &'static str,
    pub(super) topic: &'a str,
    pub(super) store: Store,
}

/// The sink's committed offsets from Redis; when Redis has lost them, a rebuild from
/// Postgres first. A rebuild running elsewhere is a transient error (retry later).
pub(super) async fn committed_or_rebuild(
    pool: &RedisPool,
    pg: &sqlx::PgPool,
    keys: &RedisKeys,
    settings: &RedisSinkSettings,
    source: RebuildSource<'_>,
) -> Result<BTreeMap<i32, i64>, SinkError> {
    let mut conn = connection(pool, settings.timeout).await?;
    let offsets_key = keys.offsets(source.sink, source.topic);
    if let Some(committed) = offsets::load(&mut conn, &offsets_key).await? {
        return Ok(committed);
    }
    let lock_key = keys.rebuild_lock(source.sink, source.topic);
    let Some(lock) = RebuildLock::acquire(&mut conn, lock_key, settings.rebuild_lock_ttl).await?
    else {
        return Err(SinkError::transient(format!(
            "{}: another process is rebuilding Redis from Postgres",
            source.sink
        )));
    };
    // Someone may have finished a rebuild between our look and our lock.
    let result = match offsets::load(&mut conn, &offsets_key).await {
        Ok(Some(committed)) => Ok(committed),
        Ok(None) => rebuild(&mut conn, pg, keys, settings, source, &lock).await,
        Err(e) => Err(e.into()),
    };
    if let Err(e) = lock.release(&mut conn).await {
        tracing::warn!(sink = source.sink, error = %e, "releasing the rebuild lock failed; it expires by itself");
    }
    result
}

/// Claims `partition` for lease `epoch` in the sink's offsets hash (so that a writer
/// with an older epoch is refused from now on) and returns where to resume it;
/// rebuilds Redis from Postgres first if it lost its data.
pub(super) async fn claim_or_rebuild(
    pool: &RedisPool,
    pg: &sqlx::PgPool,
    keys: &RedisKeys,
    settings: &RedisSinkSettings,
    source: RebuildSource<'_>,
    partition: i32,
    epoch: i64,
) -> Result<Option<i64>, SinkError> {
    let offsets_key = keys.offsets(source.sink, source.topic);
    let mut conn = connection(pool, settings.timeout).await?;
    if let offsets::Claim::Claimed(next) =
        offsets::claim(&mut conn, &offsets_key, partition, epoch).await?
    {
        return Ok(next);
    }
    committed_or_rebuild(pool, pg, keys, settings, source).await?;
    match offsets::claim(&mut conn, &offsets_key, partition, epoch).await? {
        offsets::Claim::Claimed(next) => Ok(next),
        offsets::Claim::Missing => Err(SinkError::transient(format!(
            "{}: Redis lost its data again while claiming partition {partition}",
            source.sink
        ))),
    }
}

async fn rebuild(
    conn: &mut MultiplexedConnection,
    pg: &sqlx::PgPool,
    keys: &RedisKeys,
    settings: &RedisSinkSettings,
    source: RebuildSource<'_>,
    lock: &RebuildLock,
) -> Result<BTreeMap<i32, i64>, SinkError> {
    let started = Instant::now();
    tracing::info!(
        sink = source.sink,
        from = source.postgres_sink,
        "Redis has no committed offsets for this sink; rebuilding it from Postgres"
    );
    let offsets_key = keys.offsets(source.sink, source.topic);
    let patterns = store_patterns(keys, source.store);
    allow_wipe(conn, &offsets_key, &patterns, settings, source.sink).await?;
    let mut tx = snapshot::begin(pg).await?;
    let committed = snapshot::committed(&mut tx, source.postgres_sink, source.topic).await?;
    let mut wiped = 0;
    for pattern in &patterns {
        wiped += wipe(conn, pattern, settings).await?;
    }
    let rows = match source.store {
        Store::Stats => copy_stats(conn, &mut tx, keys, settings, lock).await?,
        Store::Leaderboard => copy_scores(conn, &mut tx, keys, settings, lock).await?,
    };
    tx.commit().await?;
    // A first start (Postgres has applied nothing yet) only initialises Redis; it is
    // not a rebuild worth counting or warning about.
    let rebuilt = !committed.is_empty() || rows > 0;
    let note = if rebuilt {
        "rebuilt from postgres"
    } else {
        "initialised: postgres had nothing yet"
    };
    finish(conn, &offsets_key, &committed, note).await?;
    let elapsed = started.elapsed();
    if rebuilt {
        metrics::counter!("gamestream_redis_rebuilds_total", "sink" => source.sink).increment(1);
        metrics::histogram!("gamestream_redis_rebuild_duration_seconds", "sink" => source.sink)
            .record(elapsed.as_secs_f64());
        tracing::warn!(sink = source.sink, rows, wiped, offsets = ?committed, elapsed = ?elapsed, "Redis rebuilt from Postgres");
    } else {
        tracing::info!(sink = source.sink, wiped, "Redis initialised for this sink");
    }
    Ok(committed)
}

/// SCAN patterns of every key of a store.
fn store_patterns(keys: &RedisKeys, store: Store) -> Vec<String> {
    match store {
        Store::Stats => vec![keys.pattern("player_stats:")],
        Store::Leaderboard => vec![
            keys.pattern("leaderboard:"),
            keys.pattern("gamestream:leaderboard-period:"),
        ],
    }
}

/// Succeeds when the rebuild may delete the store's keys: a rebuild was asked for, or
/// the store is empty (then the request is recorded, so that a rebuild cut short
/// resumes). Keys in a store without gamestream's offsets are refused (transient: the
/// sink retries until they are adopted or a rebuild is asked for).
async fn allow_wipe(
    conn: &mut MultiplexedConnection,
    offsets_key: &str,
    patterns: &[String],
    settings: &RedisSinkSettings,
    sink: &str,
) -> Result<(), SinkError> {
    let requested: bool = redis::cmd("HEXISTS")
        .arg(offsets_key)
        .arg(REBUILD_REQUESTED_FIELD)
        .query_async(conn)
        .await?;
    if requested {
        return Ok(());
    }
    for pattern in patterns {
        if let Some(key) = first_key(conn, pattern, settings).await? {
            return Err(SinkError::transient(format!(
                "{sink}: Redis holds `{key}` (and perhaps more such keys) but no gamestream offsets \
                 (`{offsets_key}`): keys gamestream did not write are never deleted. Adopt them \
                 with `gamestream cutover apply` (the old pipeline's), or replace them with a copy \
                 of Postgres with `gamestream offsets rebuild --sink {sink}`"
            )));
        }
    }
    redis::cmd("HSET")
        .arg(offsets_key)
        .arg(REBUILD_REQUESTED_FIELD)
        .arg(format!("{} (found empty)", rfc3339(Utc::now())))
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// The first key matching `pattern`, if any.
async fn first_key(
    conn: &mut MultiplexedConnection,
    pattern: &str,
    settings: &RedisSinkSettings,
) -> Result<Option<String>, SinkError> {
    let mut cursor: u64 = 0;
    loop {
        let (next, found) = scan_step(conn, cursor, pattern, settings.rebuild_batch_size).await?;
        if let Some(key) = found.into_iter().next() {
            return Ok(Some(key));
        }
        if next == 0 {
            return Ok(None);
        }
        cursor = next;
    }
}

/// Deletes every key matching `pattern` (leftovers of a rebuild cut short must not add
/// to the copy). Returns how many.
async fn wipe(
    conn: &mut MultiplexedConnection,
    pattern: &str,
    settings: &RedisSinkSettings,
) -> Result<u64, SinkError> {
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, found) = scan_step(conn, cursor, pattern, settings.rebuild_batch_size).await?;
        if !found.is_empty() {
            deleted += found.len() as u64;
            redis::cmd("UNLINK")
                .arg(&found)
                .query_async::<()>(conn)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

async fn copy_stats(
    conn: &mut MultiplexedConnection,
    tx: &mut sqlx::PgConnection,
    keys: &RedisKeys,
    settings: &RedisSinkSettings,
    lock: &RebuildLock,
) -> Result<u64, SinkError> {
    let mut rows = postgres::stats::stream_all(tx);
    let mut pipe = redis::pipe();
    let (mut count, mut pending) = (0, 0);
    while let Some(player) = rows.try_next().await? {
        stats::rebuild_commands(&mut pipe, keys, &player);
        count += 1;
        pending += 1;
        if pending >= settings.rebuild_batch_size {
            flush(conn, &mut pipe, lock).await?;
            pending = 0;
        }
    }
    flush(conn, &mut pipe, lock).await?;
    Ok(count)
}

async fn copy_scores(
    conn: &mut MultiplexedConnection,
    tx: &mut sqlx::PgConnection,
    keys: &RedisKeys,
    settings: &RedisSinkSettings,
    lock: &RebuildLock,
) -> Result<u64, SinkError> {
    let now = Utc::now();
    let (first_day, first_week) = oldest_kept(now, settings.period_ttl);
    let mut rows = postgres::leaderboard::stream_recent(tx, first_day, first_week);
    let mut pipe = redis::pipe();
    let (mut expiries, mut markers) = (BTreeMap::new(), BTreeMap::new());
    let (mut count, mut pending) = (0, 0);
    while let Some(row) = rows.try_next().await? {
        leaderboard::rebuild_commands(
            &mut pipe,
            keys,
            &row,
            now,
            settings.period_ttl,
            &mut expiries,
            &mut markers,
        );
        count += 1;
        pending += 1;
        if pending >= settings.rebuild_batch_size {
            flush(conn, &mut pipe, lock).await?;
            pending = 0;
        }
    }
    expire_boards(&mut pipe, &expiries, &markers);
    flush(conn, &mut pipe, lock).await?;
    Ok(count)
}

/// After [`leaderboard::rebuild_commands`] for every row: each dated and undated board's
/// expiry, and the markers of the periods the undated boards hold, set once each.
pub fn expire_boards(
    pipe: &mut redis::Pipeline,
    expiries: &BTreeMap<String, i64>,
    markers: &BTreeMap<String, (String, i64)>,
) {
    for (key, at) in expiries {
        pipe.cmd("EXPIREAT").arg(key).arg(*at).ignore();
    }
    for (marker, (label, at)) in markers {
        pipe.cmd("SET").arg(marker).arg(label).ignore();
        pipe.cmd("EXPIREAT").arg(marker).arg(*at).ignore();
    }
}

/// The oldest day and week whose dated keys are still within `ttl` at `now` (a period
/// is kept while its end plus `ttl` is in the future).
pub fn oldest_kept(now: DateTime<Utc>, ttl: Duration) -> (PeriodKey, PeriodKey) {
    let horizon = chrono::Duration::from_std(ttl)
        .ok()
        .and_then(|ttl| now.checked_sub_signed(ttl))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    (
        PeriodKey::of(Period::Daily, horizon),
        PeriodKey::of(Period::Weekly, horizon),
    )
}

/// Sends the pipeline (if it has anything) and keeps the lock alive.
async fn flush(
    conn: &mut MultiplexedConnection,
    pipe: &mut redis::Pipeline,
    lock: &RebuildLock,
) -> Result<(), SinkError> {
    if pipe.cmd_iter().next().is_some() {
        pipe.query_async::<()>(conn).await?;
        pipe.clear();
    }
    lock.refresh(conn).await
}

/// Marks the store complete: the offsets the copy corresponds to, plus the marker.
pub async fn finish(
    conn: &mut MultiplexedConnection,
    offsets_key: &str,
    committed: &BTreeMap<i32, i64>,
    note: &str,
) -> Result<(), SinkError> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.cmd("DEL").arg(offsets_key).ignore();
    let hset = pipe.cmd("HSET").arg(offsets_key);
    hset.arg(INITIALISED_FIELD)
        .arg(format!("{} ({note})", rfc3339(Utc::now())));
    for (partition, next) in committed {
        hset.arg(partition.to_string()).arg(*next);
    }
    hset.ignore();
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

/// Compare-and-delete / compare-and-extend on the lock's token.
const LOCK_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'release' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"#;

/// The lock one rebuilding process holds, identified by a random token so that only
/// its holder extends or releases it.
struct RebuildLock {
    key: String,
    token: String,
    ttl_ms: u64,
}

impl RebuildLock {
    async fn acquire(
        conn: &mut MultiplexedConnection,
        key: String,
        ttl: Duration,
    ) -> Result<Option<Self>, SinkError> {
        let lock = Self {
            key,
            token: uuid::Uuid::new_v4().to_string(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        };
        let set: Option<String> = redis::cmd("SET")
            .arg(&lock.key)
            .arg(&lock.token)
            .arg("NX")
            .arg("PX")
            .arg(lock.ttl_ms)
            .query_async(conn)
            .await?;
        Ok(set.map(|_| lock))
    }

    async fn refresh(&self, conn: &mut MultiplexedConnection) -> Result<(), SinkError> {
        let held: i64 = redis::Script::new(LOCK_SCRIPT)
            .key(&self.key)
            .arg(&self.token)
            .arg(self.ttl_ms)
            .invoke_async(conn)
            .await?;
        if held == 1 {
            Ok(())
        } else {
            Err(SinkError::transient(
                "the rebuild lock expired during the rebuild; starting over",
            ))
        }
    }

    async fn release(&self, conn: &mut MultiplexedConnection) -> Result<(), SinkError> {
        let _: i64 = redis::Script::new(LOCK_SCRIPT)
            .key(&self.key)
            .arg(&self.token)
            .arg("release")
            .invoke_async(conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_kept_periods() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let (day, week) = oldest_kept(now, Duration::from_secs(35 * 86_400));
        // now − 35 days is 2026-10-18T12:00: that day still ends after it, the day before not.
        assert_eq!(day.to_string(), "2026-10-18");
        assert_eq!(week.to_string(), "2026-W42");
        assert!(
            day.end()
                .is_some_and(|end| end + chrono::Duration::days(35) > now)
        );
        let day_before = PeriodKey::parse(Period::Daily, "2026-10-17").expect("day");
        assert!(
            day_before
                .end()
                .is_some_and(|end| end + chrono::Duration::days(35) <= now)
        );
    }
}
