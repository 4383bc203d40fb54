//! The connection pool, built from [`PostgresConfig`].

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

use crate::config::{PostgresConfig, SslMode};
use crate::sinks::tls::{TlsProblem, ca_file_text, tls_problem};

/// Errors of the Postgres layer.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// `hint` names the setting to look at when the TLS handshake failed (empty otherwise).
    #[error("postgres {addr}: {source}{hint}")]
    Connect {
        addr: String,
        source: sqlx::Error,
        hint: String,
    },
    #[error(
        "postgres: `postgres.ssl_root_cert` (GAMESTREAM_POSTGRES__SSL_ROOT_CERT) `{path}`: {source}"
    )]
    RootCert {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "database `{database}` is not migrated ({detail}): run `gamestream migrate` first, or start with `gamestream serve --migrate`"
    )]
    NotMigrated { database: String, detail: String },
    /// Neither empty, nor gamestream's, nor the old pipeline's whole schema.
    #[error("database `{database}`: {detail}")]
    Unrecognised { database: String, detail: String },
    #[error(
        "database `{database}` is the old pipeline's and `shadow.enabled` is on: a shadow consumes into a database of its own (DB_NAME / `postgres.database`); turn shadow mode off to adopt this one"
    )]
    ShadowOnLegacy { database: String },
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
    // sqlx reads the file only when it connects, and its error does not say which file.
    if !config.ssl_root_cert.is_empty()
        && let Err(source) = std::fs::File::open(&config.ssl_root_cert)
    {
        return Err(PgError::RootCert {
            path: config.ssl_root_cert.clone(),
            source,
        });
    }
    let connect_err = |source: sqlx::Error| PgError::Connect {
        addr: addr.clone(),
        hint: tls_hint(config, &source),
        source,
    };
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(connect_options(config).application_name(application_name))
        .await
        .map_err(connect_err)?;
    sqlx::query("SELECT 1")
        .execute(&pool)
        .await
        .map_err(connect_err)?;
    Ok(pool)
}

/// What a failed TLS handshake means in settings, for the end of the error message.
fn tls_hint(config: &PostgresConfig, error: &sqlx::Error) -> String {
    let sslmode = match config.sslmode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    };
    match tls_problem(error) {
        None => String::new(),
        Some(TlsProblem::Untrusted) => format!(
            " (the server's certificate is not signed by a trusted CA: `postgres.ssl_root_cert` \
             (GAMESTREAM_POSTGRES__SSL_ROOT_CERT) must hold the CA that signed it; {})",
            ca_file_text(&config.ssl_root_cert)
        ),
        Some(TlsProblem::WrongName) => format!(
            " (the server's certificate is not valid for host `{}`: `postgres.host` (DB_HOST) \
             must be a name the certificate carries, as `postgres.sslmode` verify-full requires)",
            config.host
        ),
        Some(TlsProblem::OtherCertificate) => format!(
            " (the server's certificate was refused; `postgres.sslmode` is {sslmode}, \
             `postgres.ssl_root_cert` is {})",
            ca_file_text(&config.ssl_root_cert)
        ),
        Some(TlsProblem::NotTls) => format!(
            " (the server did not answer in TLS: is `postgres.port` (DB_PORT) {} PostgreSQL's port?)",
            config.port
        ),
    }
}
