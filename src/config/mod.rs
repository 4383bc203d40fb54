//! Layered configuration.
//!
//! ```text
//! config/default.toml (compiled in) ─► --config FILE ─► environment ─► flags
//!       lowest precedence                                              highest
//! ```
//!
//! The defaults live in exactly one place, `config/default.toml`, which documents every
//! setting with its unit; the structs below only give them types. Environment variables
//! use the names of the platform contract where one exists (`DB_HOST`, `PORT`, ...) and
//! `GAMESTREAM_<SECTION>__<KEY>` otherwise.
//!
//! A bad configuration is reported whole: [`load`] checks every field on its own and
//! returns one [`ConfigError`] listing each unknown key, wrong type, unparsable duration
//! and missing required value, so an operator fixes them in one go.

mod layers;
mod net;
mod schema;
mod validate;

pub use layers::{ConfigError, Sources, load};
pub use net::IpBlock;
pub use schema::*;
pub use validate::MIN_API_KEY_CHARS;

/// The defaults, compiled in so that the binary runs without its source tree.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");
/// Environment variables named by the platform contract, and the setting each one sets.
pub const CONTRACT_ENV: &[(&str, &str)] = &[
    ("KAFKA_BOOTSTRAP_SERVERS", "kafka.bootstrap_servers"),
    ("KAFKA_USERNAME", "kafka.username"),
    ("KAFKA_PASSWORD", "kafka.password"),
    ("KAFKA_SECURITY_PROTOCOL", "kafka.security_protocol"),
    ("KAFKA_TOPIC_PLAYER_EVENTS", "topics.player_events"),
    ("DB_HOST", "postgres.host"),
    ("DB_PORT", "postgres.port"),
    ("DB_NAME", "postgres.database"),
    ("DB_USER", "postgres.user"),
    ("DB_PASSWORD", "postgres.password"),
    ("REDIS_HOST", "redis.host"),
    ("REDIS_PORT", "redis.port"),
    ("REDIS_PASSWORD", "redis.password"),
    ("PORT", "http.port"),
    ("BUFFER_SIZE", "stats.buffer_size"),
    ("LOG_FORMAT", "telemetry.log_format"),
];

/// Prefix of every other environment variable; `__` separates section and key.
pub const ENV_PREFIX: &str = "GAMESTREAM_";

#[cfg(test)]
mod test_support {
    use super::*;

    pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    pub(super) fn load_with(
        file: Option<&str>,
        env_pairs: &[(&str, &str)],
        flags: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file.map(|text| {
            let path = dir.path().join("gamestream.toml");
            std::fs::write(&path, text).expect("write config file");
            path
        });
        load(&Sources {
            file: path,
            env: env(env_pairs),
            overrides: flags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
    }
}
