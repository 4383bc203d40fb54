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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_ones() {
        let codes: Vec<u8> = [Exit::Success, Exit::Failure, Exit::Config, Exit::Escalated]
            .iter()
            .map(|e| e.code())
            .collect();
        assert_eq!(codes, [0, 1, 2, 70]);
    }
}
