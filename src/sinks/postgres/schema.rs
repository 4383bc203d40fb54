//! The schema: sqlx migrations embedded from `migrations/`, and the adoption of a
//! database the old pipeline created.
//!
//! A database is in one of three states when `migrate` runs:
//!
//! | state | what `migrate` does |
//! |---|---|
//! | empty | applies every migration |
//! | migrated by gamestream (`_sqlx_migrations` exists) | applies the pending ones |
//! | the old pipeline's (its four tables, no `_sqlx_migrations`) | converts the old tables into what migration 1 creates (`adopt_legacy.sql`) and records migration 1 as applied, in one transaction; then applies the rest |
//!
//! Applied migrations are never edited (sqlx compares their checksums), so the adoption
//! is not a migration of its own: it stands in for the first one.

use std::time::{Duration, Instant};

use sqlx::migrate::{Migrate, Migrator};
use sqlx::{Acquire, PgPool};

use super::PgError;

/// The migrations in `migrations/`, compiled in.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The old pipeline's tables (`../shared/legacy/schema.sql`), all four of which a
/// database to adopt must have.
pub const LEGACY_TABLES: [&str; 4] = ["events", "player_statistics", "leaderboards", "dlq_events"];

/// What adopting the old pipeline's database did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// Rows of `events` converted (its TIMESTAMP columns rewritten as TIMESTAMPTZ).
    pub events: i64,
    /// Rows of `player_statistics`, `leaderboards` and `dlq_events`.
    pub other_rows: i64,
    /// Time the conversion took, in its transaction.
    pub elapsed: Duration,
}

/// How far a database is from the schema this binary expects.
#[derive(Debug, PartialEq, Eq)]
pub enum SchemaStatus {
    UpToDate,
    /// Migrations this binary has that the database has not applied.
    Pending(Vec<i64>),
}

/// Applies every pending migration; a no-op on an up-to-date database. Safe to run from
/// several pods at once (sqlx takes an advisory lock; the adoption takes the same one).
/// A database of the old pipeline is adopted first (see the module's table); the answer
/// says so.
pub async fn migrate(pool: &PgPool) -> Result<Option<Adopted>, PgError> {
    let adopted = adopt_legacy(pool).await?;
    MIGRATOR.run(pool).await?;
    Ok(adopted)
}

/// Refuses the old pipeline's database (its tables, no migration history): a shadow
/// (`shadow.enabled`) must never adopt the live database.
pub async fn refuse_legacy(pool: &PgPool, database: &str) -> Result<(), PgError> {
    let legacy: bool =
        sqlx::query_scalar("SELECT to_regclass($1) IS NULL AND to_regclass('events') IS NOT NULL")
            .bind(MIGRATOR.table_name.as_ref())
            .fetch_one(pool)
            .await?;
    if legacy {
        return Err(PgError::ShadowOnLegacy {
            database: database.to_owned(),
        });
    }
    Ok(())
}

/// Converts the old pipeline's tables into migration 1's, if this is its database.
async fn adopt_legacy(pool: &PgPool) -> Result<Option<Adopted>, PgError> {
    let mut conn = pool.acquire().await?;
    // The lock sqlx's Migrator takes: no other pod migrates meanwhile.
    conn.lock().await?;
    let result = adopt_locked(&mut conn).await;
    conn.unlock().await?;
    result
}

async fn adopt_locked(conn: &mut sqlx::PgConnection) -> Result<Option<Adopted>, PgError> {
    let history: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(MIGRATOR.table_name.as_ref())
        .fetch_one(&mut *conn)
        .await?;
    if history {
        return Ok(None);
    }
    let present: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_name = ANY($1)",
    )
    .bind(LEGACY_TABLES)
    .fetch_all(&mut *conn)
    .await?;
    if present.is_empty() {
        return Ok(None);
    }
    let missing: Vec<&str> = LEGACY_TABLES
        .into_iter()
        .filter(|t| !present.iter().any(|p| p == t))
        .collect();
    if !missing.is_empty() {
        return Err(PgError::Unrecognised {
            database: current_database(conn).await?,
            detail: format!(
                "it has the old pipeline's table(s) {} but not {}, and no migration history: \
                 neither empty, nor the old pipeline's database, nor gamestream's",
                present.join(", "),
                missing.join(", ")
            ),
        });
    }
    let started = Instant::now();
    let mut tx = conn.begin().await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut *tx)
        .await?;
    let other_rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM player_statistics) + (SELECT count(*) FROM leaderboards)
              + (SELECT count(*) FROM dlq_events)",
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::raw_sql(include_str!("adopt_legacy.sql"))
        .execute(&mut *tx)
        .await?;
    let first = MIGRATOR
        .iter()
        .next()
        .expect("migrations/ holds at least the contract tables");
    tx.ensure_migrations_table(&MIGRATOR.table_name).await?;
    tx.skip(&MIGRATOR.table_name, first).await?;
    tx.commit().await?;
    let adopted = Adopted {
        events,
        other_rows,
        elapsed: started.elapsed(),
    };
    tracing::warn!(events, other_rows, elapsed = ?adopted.elapsed, "adopted the old pipeline's database");
    Ok(Some(adopted))
}

async fn current_database(conn: &mut sqlx::PgConnection) -> Result<String, PgError> {
    Ok(sqlx::query_scalar("SELECT current_database()")
        .fetch_one(conn)
        .await?)
}

/// Compares the applied migrations with the embedded ones.
pub async fn schema_status(pool: &PgPool) -> Result<SchemaStatus, PgError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let applied: Vec<i64> = if exists {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    let pending: Vec<i64> = MIGRATOR
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect();
    Ok(if pending.is_empty() {
        SchemaStatus::UpToDate
    } else {
        SchemaStatus::Pending(pending)
    })
}

/// Fails with [`PgError::NotMigrated`] unless the database is up to date.
pub async fn require_migrated(pool: &PgPool, database: &str) -> Result<(), PgError> {
    match schema_status(pool).await? {
        SchemaStatus::UpToDate => Ok(()),
        SchemaStatus::Pending(versions) => Err(PgError::NotMigrated {
            database: database.to_owned(),
            detail: format!(
                "{} pending migration(s), first {}",
                versions.len(),
                versions[0]
            ),
        }),
    }
}
