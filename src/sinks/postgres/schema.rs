//! The schema: sqlx migrations embedded from `migrations/`.

use sqlx::PgPool;
use sqlx::migrate::Migrator;

use super::PgError;

/// The migrations in `migrations/`, compiled in.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How far a database is from the schema this binary expects.
#[derive(Debug, PartialEq, Eq)]
pub enum SchemaStatus {
    UpToDate,
    /// Migrations this binary has that the database has not applied.
    Pending(Vec<i64>),
}

/// Applies every pending migration; a no-op on an up-to-date database. Safe to run from
/// several pods at once (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), PgError> {
    MIGRATOR.run(pool).await?;
    Ok(())
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
