//! How a `gamestream` command ends: the process exit codes, in one type.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the command ran and failed (a service is down, a write failed, a drain timed out) |
//! | 2 | bad configuration or usage (the message names the setting or argument) |
//! | 70 | the supervisor gave up after repeated crashes (`EX_SOFTWARE`) |

use std::process::ExitCode;

/// The outcome of a command, as its exit code says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    Failure,
    Config,
    Escalated,
}

impl Exit {
    /// The numeric exit code.
    pub const fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Config => 2,
            Exit::Escalated => 70,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// What to try next, for an error whose usual cause is the environment rather than the
/// command (printed under the error by every command).
pub fn hint(error: &str) -> Option<&'static str> {
    if error.contains("password authentication failed") {
        Some(
            "the database refused the user or password: set DB_USER and DB_PASSWORD \
             (next to `make run`, the local stack's settings: eval \"$(deploy/local/stack.sh env)\")",
        )
    } else if error.contains("Connection refused") {
        Some(
            "nothing listens there: check DB_HOST/DB_PORT, REDIS_HOST/REDIS_PORT and \
             KAFKA_BOOTSTRAP_SERVERS (`deploy/local/stack.sh status` for the local stack)",
        )
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_errors_get_a_hint() {
        let auth = "postgres 127.0.0.1:5432: error returned from database: password authentication failed for user \"gamestream\"";
        assert!(hint(auth).is_some_and(|h| h.contains("DB_PASSWORD")));
        assert!(hint("kafka: Connection refused (os error 111)").is_some());
        assert_eq!(hint("unknown sink `x`"), None);
    }

    #[test]
    fn codes_are_the_documented_ones() {
        let codes: Vec<u8> = [Exit::Success, Exit::Failure, Exit::Config, Exit::Escalated]
            .iter()
            .map(|e| e.code())
            .collect();
        assert_eq!(codes, [0, 1, 2, 70]);
    }
}
