//! The pure logic of statistics and leaderboards: what a batch of events adds to each
//! store, computed once per flush and shared by the Postgres and Redis writers.
//!
//! ```text
//! [Event] ──StatsDelta::of──► per player: +n, +n per type, latest event time
//!         ──ScoreDelta::of──► per (game, period, period key, player): +Σ score
//!                                  (period keys from period.rs: UTC day, ISO week)
//! ```
//!
//! Nothing here does I/O, so every rule (sums, ISO week edges, period ends) is unit-tested.

pub mod period;
pub mod scores;
pub mod stats;

pub use period::{Period, PeriodKey};
pub use scores::{CellSum, ScoreDelta, ScoreOverflow};
pub use stats::{PlayerDelta, StatsDelta};
