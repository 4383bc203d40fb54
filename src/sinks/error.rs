//! The one distinction every write path makes: transient, permanent, or fatal.
//!
//! Transient failures (a lost connection, a timeout, a server restarting) are retried
//! with backoff and never dead-lettered. Permanent failures (the destination refuses
//! this data for good: a data or constraint error) are isolated to the record that
//! causes them, which goes to the DLQ, so one poison record never blocks its partition.
//! Fatal failures are the system's fault, not the records' (a missing table, a revoked
//! permission, a broken script): the sink crashes, the supervisor restarts it with
//! backoff and, if it keeps failing, stops the daemon. Nothing is dead-lettered for them.

use std::fmt;

/// A sink write error, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkError {
    /// Retry later: the destination is away or overloaded.
    Transient(String),
    /// The destination refuses this data; retrying will not help.
    Permanent(String),
    /// The destination is misconfigured or broken for every record; crash and let the
    /// supervisor decide.
    Fatal(String),
    /// This process no longer owns the partition (its lease moved to another daemon);
    /// the write was refused and must not be retried.
    Fenced(String),
    /// This daemon's lease on these partitions ended (another daemon took them, or it
    /// ran out while the daemon was paused): nothing was written. The sink drops the
    /// partitions; the rest of its batch is written again without them.
    LeaseLost(Vec<i32>),
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkError::Transient(m) => write!(f, "transient: {m}"),
            SinkError::Permanent(m) => write!(f, "permanent: {m}"),
            SinkError::Fatal(m) => write!(f, "fatal: {m}"),
            SinkError::Fenced(m) => write!(f, "fenced: {m}"),
            SinkError::LeaseLost(p) => write!(f, "lease lost on partitions {p:?}"),
        }
    }
}

impl std::error::Error for SinkError {}

impl SinkError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::Transient(_) => "transient",
            SinkError::Permanent(_) => "permanent",
            SinkError::Fatal(_) => "fatal",
            SinkError::Fenced(_) => "fenced",
            SinkError::LeaseLost(_) => "lease_lost",
        }
    }
}

impl From<sqlx::Error> for SinkError {
    fn from(e: sqlx::Error) -> Self {
        if pg_is_transient(&e) {
            SinkError::Transient(e.to_string())
        } else if pg_is_data_error(&e) {
            SinkError::Permanent(e.to_string())
        } else {
            SinkError::Fatal(e.to_string())
        }
    }
}

/// Whether a Postgres error is about the data written (SQLSTATE class 22, data
/// exception, or 23, integrity constraint violation), so that the record causing it
/// can be dead-lettered. sqlx's own encode errors count too.
pub fn pg_is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

impl From<redis::RedisError> for SinkError {
    fn from(e: redis::RedisError) -> Self {
        // Events are validated before they reach a sink, so a Redis error that is not
        // transient (a script error, WRONGTYPE, NOPERM) is never one record's fault.
        if redis_is_transient(&e) {
            SinkError::Transient(e.to_string())
        } else {
            SinkError::Fatal(e.to_string())
        }
    }
}

impl From<bb8::RunError<redis::RedisError>> for SinkError {
    fn from(e: bb8::RunError<redis::RedisError>) -> Self {
        match e {
            bb8::RunError::User(e) => e.into(),
            bb8::RunError::TimedOut => {
                SinkError::Transient("redis: no pooled connection in time".to_owned())
            }
        }
    }
}

/// Whether a Postgres error is worth retrying: connection trouble, resource
/// exhaustion, server shutdown, serialization conflicts. Data and constraint errors
/// (SQLSTATE classes 22 and 23) are permanent.
pub fn pg_is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => {
                let class = &code[..code.len().min(2)];
                matches!(class, "08" | "53" | "57" | "58" | "40" | "55") || code == "25P03"
            }
            None => true,
        },
        _ => false,
    }
}

/// Whether a Redis error is worth retrying. Script and type errors are permanent.
pub fn redis_is_transient(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::BusyLoading
                    | redis::ServerErrorKind::TryAgain
                    | redis::ServerErrorKind::ClusterDown
                    | redis::ServerErrorKind::MasterDown
                    | redis::ServerErrorKind::ReadOnly
            )
        )
}
