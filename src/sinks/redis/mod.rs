//! Redis: the bb8 pool and the sinks' atomic, offset-fenced writes.
//!
//! - [`keys`]: every key name, behind `redis.key_prefix`.
//! - [`offsets`]: the offsets hash and the compare-and-set every sink script starts with.
//! - [`stats`]: `player_stats:*` hashes.
//! - [`leaderboard`]: `leaderboard:*` sorted sets.
//! - [`RedisSinkStore`]: a Redis sink's connection, keys and rebuild source.
//! - [`rebuild`]: refilling Redis from a Postgres snapshot when it comes back empty.

pub mod keys;
pub mod leaderboard;
pub mod offsets;
mod pool;
pub mod rebuild;
pub mod stats;
mod store;

pub use keys::RedisKeys;
pub use pool::{RedisError, RedisPool, connect, connection};
pub use rebuild::{RedisSinkSettings, Store};
pub use store::RedisSinkStore;
