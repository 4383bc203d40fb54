//! The write paths the actors call, one folder per backend.
//!
//! Each backend owns its connection setup and its statements; actors never build SQL,
//! Redis commands or Kafka requests themselves. Every error a sink returns is
//! classified by [`error::SinkError`]: transient (retried) or permanent (dead-lettered).

pub mod error;
pub mod positions;
pub mod postgres;
pub mod redis;
mod tls;

pub use error::{SinkError, StoreError};

/// One partition's offset commit, compare-and-set: it applies only if the stored next
/// offset is still `expected` (None: nothing stored yet). A writer whose view is stale
/// (a zombie from a previous generation, a daemon that lost its lease) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetCommit {
    pub partition: i32,
    pub expected: Option<i64>,
    pub next: i64,
    /// The epoch of the partition lease this write runs under (the fencing token): the
    /// commit applies only while that lease is still held. None: unfenced (tools, tests).
    pub epoch: Option<i64>,
}
