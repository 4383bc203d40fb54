//! Redis: the bb8 pool and (later) the sinks' atomic, offset-fenced writes.

mod pool;

pub use pool::{RedisError, RedisPool, connect};
