//! Operator tools: `gamestream dlq …` (list and replay dead letters) and
//! `gamestream offsets …` (show and reset the sinks' committed offsets).
//!
//! ```text
//! dlq list     dlq_events ──filter──► table / JSON lines
//! dlq replay   dlq_events ──claim (FOR UPDATE SKIP LOCKED)──► raw topic ──acked──► replayed_at, COMMIT
//! offsets show sink_offsets + Redis offsets hashes + broker watermarks + partition_leases ──► table
//! offsets reset  lease check ──► broker offset for earliest|latest|N|time ──► sink_offsets / Redis hash
//! offsets rebuild  lease check ──► Redis offsets hash: marker off, rebuild requested
//! cutover …      the old pipeline's groups, Postgres and Redis ──► plan / adopt / compare (cutover/mod.rs)
//! ```
//!
//! Each command is a thin layer over Postgres, Redis and the broker; none of them needs a
//! running daemon, and `offsets reset` refuses to run while one holds the partition.

pub mod cutover;
pub mod dlq;
pub mod offsets;

use chrono::{DateTime, Utc};

use crate::exit::Exit;
use crate::sinks::StoreError;
use crate::sinks::error::from_store_errors;

/// Errors of the operator tools.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Store(StoreError),
    /// The command was understood and refused (a daemon holds the partition, ...): exit 1.
    #[error("{0}")]
    Refused(String),
    /// The arguments do not make sense (unknown sink, bad time): exit 2.
    #[error("{0}")]
    Usage(String),
}

from_store_errors!(OpsError);

pub type Result<T, E = OpsError> = std::result::Result<T, E>;

/// Prints the error and maps it to the CLI's exit codes.
pub fn exit_code(command: &str, result: Result<Exit>) -> Exit {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gamestream {command}: {e}");
            if let Some(hint) = crate::exit::hint(&e.to_string()) {
                eprintln!("hint: {hint}");
            }
            match e {
                OpsError::Usage(_) => Exit::Config,
                _ => Exit::Failure,
            }
        }
    }
}

/// A point in time given on the command line: RFC 3339 (`2026-11-22T10:00:00Z`), or a
/// duration back from now (`90m`, `2h`, `1day`).
pub fn parse_time(raw: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    match humantime::parse_duration(raw) {
        Ok(ago) => chrono::Duration::from_std(ago)
            .ok()
            .and_then(|ago| Utc::now().checked_sub_signed(ago))
            .ok_or_else(|| format!("`{raw}` reaches too far back")),
        Err(_) => Err(format!(
            "expected an RFC 3339 time (2026-11-22T10:00:00Z) or a duration back from now (2h), got `{raw}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(
            parse_time("2026-11-22T10:00:00+01:00").map(|t| t.to_rfc3339()),
            Ok("2026-11-22T09:00:00+00:00".to_owned())
        );
        let two_hours_ago = parse_time("2h").expect("a duration");
        let delta = Utc::now() - two_hours_ago;
        assert!(delta >= chrono::Duration::hours(2) && delta < chrono::Duration::hours(3));
        assert!(parse_time("yesterday-ish").is_err());
    }
}
