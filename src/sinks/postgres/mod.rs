//! PostgreSQL: the pool, the schema, and the sinks' transactional writes.

mod pool;
mod schema;

pub use pool::{PgError, connect, connect_options};
pub use schema::{MIGRATOR, SchemaStatus, migrate, require_migrated, schema_status};
