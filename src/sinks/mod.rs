//! The write paths the actors call, one folder per backend.
//!
//! Each backend owns its connection setup, its error type (split into transient
//! errors, retried with backoff, and permanent ones, dead-lettered) and its
//! statements. Actors never build SQL, Redis commands or Kafka requests themselves.

pub mod kafka;
pub mod postgres;
pub mod redis;
