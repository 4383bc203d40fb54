//! The one distinction every write path makes: transient, permanent, or fatal.
//!
//! Transient failures (a lost connection, a timeout, a server restarting) are retried
//! with backoff and never dead-lettered. Permanent failures (the destination refuses
//! this data for good: a data or constraint error) are isolated to the record that
//! causes them, which goes to the DLQ, so one poison record never blocks its partition.
//! Fatal failures are the system's fault, not the records' (a missing table, a revoked
//! permission, a broken script): the sink crashes, the supervisor restarts it with
//! backoff and, if it keeps failing, stops the daemon. Nothing is dead-lettered for them.

use crate::kafka::KafkaError;
use crate::sinks::postgres::PgError;
use crate::sinks::redis::RedisError;

/// A store could not be reached, or refused a command: what `serve`, the
/// administrative commands and the operator tools report (the sinks' own writes are
/// classified as [`SinkError`] instead). Each variant keeps the store's error as its
/// source, which names the address or the statement.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(transparent)]
    Redis(#[from] RedisError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Postgres(PgError::Sqlx(e))
    }
}

impl From<rskafka::client::error::Error> for StoreError {
    fn from(e: rskafka::client::error::Error) -> Self {
        StoreError::Kafka(KafkaError::Client(e))
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::Redis(RedisError::Command(e))
    }
}

/// `From` the store errors (and their clients' raw errors) for an error enum with a
/// `Store(StoreError)` variant, so `?` works on every store call.
macro_rules! from_store_errors {
    ($target:ty) => {
        impl From<$crate::sinks::StoreError> for $target {
            fn from(e: $crate::sinks::StoreError) -> Self {
                Self::Store(e)
            }
        }
        $crate::sinks::error::from_store_errors!(@each $target:
            $crate::kafka::KafkaError,
            $crate::sinks::postgres::PgError,
            $crate::sinks::redis::RedisError,
            ::sqlx::Error,
            ::rskafka::client::error::Error,
            ::redis::RedisError
        );
    };
    (@each $target:ty: $($source:ty),*) => {
        $(impl From<$source> for $target {
            fn from(e: $source) -> Self {
                Self::Store(e.into())
            }
        })*
    };
}
pub(crate) use from_store_errors;

/// A sink write error, classified. The classification decides what the sink actor
/// does; the [`WriteError`] inside says what happened, with the store's own error as
/// its source.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Retry later: the destination is away or overloaded.
    #[error("transient: {0}")]
    Transient(#[source] WriteError),
    /// The destination refuses this data; retrying will not help.
    #[error("permanent: {0}")]
    Permanent(#[source] WriteError),
    /// The destination is misconfigured or broken for every record, or its offsets moved
    /// under this writer; crash and let the supervisor restart from committed offsets.
    #[error("fatal: {0}")]
    Fatal(#[source] WriteError),
    /// This daemon's lease on these partitions ended (another daemon took them, or it
    /// ran out while the daemon was paused): nothing was written. The sink drops the
    /// partitions; the rest of its batch is written again without them.
    #[error("lease lost on partitions {0:?}")]
    LeaseLost(Vec<i32>),
}

/// What went wrong in a sink write.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("kafka: {0}")]
    Kafka(#[from] rskafka::client::error::Error),
    #[error("redis: no pooled connection in time")]
    PoolTimedOut,
    /// A compare-and-set offset commit found other offsets than this writer expected:
    /// another writer (a zombie of an older generation) committed in between.
    #[error("{sink}: committed offsets of {topic} moved under this writer{detail}")]
    OffsetsMoved {
        sink: String,
        topic: String,
        detail: String,
    },
    /// Redis lost its data (the offsets marker is gone) while the sink ran: the sink
    /// restarts, and rebuilds Redis from Postgres on its way up.
    #[error(
        "{sink}: Redis has lost its data (offsets marker gone); restarting to rebuild from Postgres"
    )]
    RedisLost { sink: String },
    /// A store answered something this code does not expect (a script's reply, ...).
    #[error("{0}")]
    Unexpected(String),
    /// A condition of this write path (a rebuild under way elsewhere, a sum overflow).
    #[error("{0}")]
    Refused(String),
    /// `context` failed because of `source`.
    #[error("{context}: {source}")]
    In {
        context: &'static str,
        #[source]
        source: Box<WriteError>,
    },
}

impl SinkError {
    /// A transient error with a message of this write path.
    pub fn transient(message: impl Into<String>) -> Self {
        SinkError::Transient(WriteError::Refused(message.into()))
    }

    /// A permanent error with a message of this write path.
    pub fn permanent(message: impl Into<String>) -> Self {
        SinkError::Permanent(WriteError::Refused(message.into()))
    }

    /// A fatal error: the store answered what this code does not expect.
    pub fn unexpected(message: impl Into<String>) -> Self {
        SinkError::Fatal(WriteError::Unexpected(message.into()))
    }

    /// The same classification, with `context` around the cause.
    pub fn context(self, context: &'static str) -> Self {
        let wrap = |source| WriteError::In {
            context,
            source: Box::new(source),
        };
        match self {
            SinkError::Transient(e) => SinkError::Transient(wrap(e)),
            SinkError::Permanent(e) => SinkError::Permanent(wrap(e)),
            SinkError::Fatal(e) => SinkError::Fatal(wrap(e)),
            lost @ SinkError::LeaseLost(_) => lost,
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::Transient(_) => "transient",
            SinkError::Permanent(_) => "permanent",
            SinkError::Fatal(WriteError::OffsetsMoved { .. } | WriteError::RedisLost { .. }) => {
                "fenced"
            }
            SinkError::Fatal(_) => "fatal",
            SinkError::LeaseLost(_) => "lease_lost",
        }
    }
}

impl From<sqlx::Error> for SinkError {
    fn from(e: sqlx::Error) -> Self {
        if pg_is_transient(&e) {
            SinkError::Transient(e.into())
        } else if pg_is_data_error(&e) {
            SinkError::Permanent(e.into())
        } else {
            SinkError::Fatal(e.into())
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
            SinkError::Transient(e.into())
        } else {
            SinkError::Fatal(e.into())
        }
    }
}

impl From<bb8::RunError<redis::RedisError>> for SinkError {
    fn from(e: bb8::RunError<redis::RedisError>) -> Self {
        match e {
            bb8::RunError::User(e) => e.into(),
            bb8::RunError::TimedOut => SinkError::Transient(WriteError::PoolTimedOut),
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
