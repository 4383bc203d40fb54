//! PostgreSQL: the pool, the schema, and the sinks' transactional writes.

pub mod dlq;
pub mod events;
pub mod leaderboard;
pub mod leases;
pub mod offsets;
mod pool;
mod schema;
pub mod snapshot;
pub mod stats;

pub use pool::{PgError, connect, connect_as, connect_options};
pub use schema::{
    Adopted, LEGACY_TABLES, MIGRATOR, SchemaStatus, migrate, refuse_legacy, require_migrated,
    schema_status,
};
