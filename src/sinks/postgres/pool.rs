//! The connection pool, built from [`PostgresConfig`].

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

use crate::config::{PostgresConfig, SslMode};

/// Errors of the Postgres layer.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("postgres {addr}: {source}")]
    Connect { addr: String, source: sqlx::Error },
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "database `{database}` is not migrated ({detail}): run `gamestream migrate` first, or start with `gamestream serve --migrate`"
    )]
    NotMigrated { database: String, detail: String },
}

/// Connection options from the configuration (never from `PG*` env vars or `.pgpass`,
/// so that what runs is what the config says).
pub fn connect_options(config: &PostgresConfig) -> PgConnectOptions {
    let mut options = PgConnectOptions::new_without_pgpass()
        .host(&config.host)
        .port(config.port)
        .database(&config.database)
        .username(&config.user)
        .application_name("gamestream")
        // Safe off: offsets commit with the rows (see `postgres.synchronous_commit`).
        .options([(
            "synchronous_commit",
            if config.synchronous_commit {
                "on"
            } else {
                "off"
            },
        )])
        .ssl_mode(match config.sslmode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        });
    if !config.password.is_empty() {
        options = options.password(config.password.expose());
    }
    if !config.ssl_root_cert.is_empty() {
        options = options.ssl_root_cert(&config.ssl_root_cert);
    }
    options
}

/// Opens the pool and proves it with one round-trip, so a wrong host or password
/// fails here with the address in the message.
pub async fn connect(config: &PostgresConfig) -> Result<PgPool, PgError> {
    connect_as(config, "gamestream").await
}

/// [`connect`], with the connections' `application_name` (the daemon's lease member
/// id, so that `pg_stat_activity` and audits say which daemon wrote).
pub async fn connect_as(
    config: &PostgresConfig,
    application_name: &str,
) -> Result<PgPool, PgError> {
    let addr = format!("{}:{}/{}", config.host, config.port, config.database);
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(connect_options(config).application_name(application_name))
        .await
        .map_err(|source| PgError::Connect {
            addr: addr.clone(),
            source,
        })?;
    sqlx::query("SELECT 1")
        .execute(&pool)
        .await
        .map_err(|source| PgError::Connect { addr, source })?;
    Ok(pool)
}
