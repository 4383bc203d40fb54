//! Where settings come from and in which order: the compiled-in defaults, the
//! `--config` file, the environment (the contract's names and `GAMESTREAM_*`), and
//! `--set` flags; every problem of every layer is collected into one [`ConfigError`].

use std::collections::BTreeSet;
use std::path::PathBuf;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Profile, Provider};

#[allow(unused_imports)]
use super::*;

/// Everything that was wrong with a configuration, one line per problem.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration ({} problem{}):\n  - {}", problems.len(), if problems.len() == 1 { "" } else { "s" }, problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// Where configuration comes from, besides the compiled-in defaults.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// File given with `--config`.
    pub file: Option<PathBuf>,
    /// Environment variables to read (normally `std::env::vars()`; tests pass their own).
    pub env: Vec<(String, String)>,
    /// `key=value` overrides from flags, in dotted form (`logger.batch_size=100`).
    pub overrides: Vec<(String, String)>,
}

impl Sources {
    /// Sources with this process's environment.
    pub fn from_process_env(file: Option<PathBuf>, overrides: Vec<(String, String)>) -> Self {
        Self {
            file,
            env: std::env::vars().collect(),
            overrides,
        }
    }
}

/// Loads, checks and returns the configuration, or every problem with it.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let base = Figment::from(Toml::string(DEFAULT_TOML));
    let mut problems = Vec::new();
    let user = user_layers(&base, sources, &mut problems);
    let merged = base.clone().merge(user.clone());

    if problems.is_empty()
        && let Ok(config) = merged.extract::<Config>()
    {
        return config.validate().map(|()| config);
    }
    problems.extend(field_problems(&base, &user));
    if problems.is_empty() {
        // Every field is fine on its own; report the combined error as it is.
        if let Err(e) = merged.extract::<Config>() {
            problems.extend(e.into_iter().map(|e| e.to_string()));
        }
    }
    Err(ConfigError { problems })
}

/// The file, environment and flag layers, in precedence order.
fn user_layers(base: &Figment, sources: &Sources, problems: &mut Vec<String>) -> Figment {
    let mut user = Figment::new();
    if let Some(path) = &sources.file {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let file = Figment::from(Toml::string(&text));
                if let Err(e) = file.data() {
                    problems.push(format!("config file {}: {e}", path.display()));
                }
                user = user.merge(Layer::from_figment(
                    format!("config file {}", path.display()),
                    &file,
                ));
            }
            Err(e) => problems.push(format!("config file {}: {e}", path.display())),
        }
    }
    for (name, key) in CONTRACT_ENV {
        if let Some((_, value)) = sources.env.iter().find(|(k, _)| k == name) {
            user = user.merge(Layer::single(
                format!("env {name}"),
                key,
                typed_value(base, key, value, parse_env_value),
            ));
        }
    }
    for (name, value) in &sources.env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.is_empty() {
            let key = rest.to_ascii_lowercase().replace("__", ".");
            user = user.merge(Layer::single(
                format!("env {name}"),
                &key,
                typed_value(base, &key, value, parse_env_value),
            ));
        }
    }
    for (key, raw) in &sources.overrides {
        user = user.merge(Layer::single(
            format!("flag --set {key}"),
            key,
            typed_value(base, key, raw, parse_flag_value),
        ));
    }
    user
}

/// One configuration layer with a name that error messages quote (`env DB_PORT`,
/// `flag --set http.port`, `config file ./gs.toml`).
struct Layer {
    name: String,
    dict: Dict,
}

impl Layer {
    fn single(name: String, dotted_key: &str, value: Value) -> Self {
        let dict = figment::util::nest(dotted_key, untag(value))
            .into_dict()
            .unwrap_or_default();
        Self { name, dict }
    }

    fn from_figment(name: String, figment: &Figment) -> Self {
        let dict = dict_of(figment)
            .into_iter()
            .map(|(k, v)| (k, untag(v)))
            .collect();
        Self { name, dict }
    }
}

impl figment::Provider for Layer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<figment::value::Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// A value without the tag a previous figment gave it, so that merging it into the
/// user layers tags it with the layer that names its source.
fn untag(value: Value) -> Value {
    use figment::value::Tag;
    match value {
        Value::String(_, v) => Value::String(Tag::Default, v),
        Value::Char(_, v) => Value::Char(Tag::Default, v),
        Value::Bool(_, v) => Value::Bool(Tag::Default, v),
        Value::Num(_, v) => Value::Num(Tag::Default, v),
        Value::Empty(_, v) => Value::Empty(Tag::Default, v),
        Value::Dict(_, d) => Value::Dict(
            Tag::Default,
            d.into_iter().map(|(k, v)| (k, untag(v))).collect(),
        ),
        Value::Array(_, a) => Value::Array(Tag::Default, a.into_iter().map(untag).collect()),
    }
}

/// The value of a setting given as text (an env var or a flag). Where the setting is a
/// string (a password, a host, a topic), the text is taken as it is, so a password of
/// `12345` stays a string; a TOML-quoted text (`"consume"`) is unquoted. Elsewhere the
/// text is read as the type it spells (`8080`, `true`, `[1, 2]`).
fn typed_value(base: &Figment, key: &str, raw: &str, parse: fn(&str) -> Value) -> Value {
    match base.find_value(key) {
        Ok(Value::String(..)) => match toml_value(raw) {
            Some(value @ Value::String(..)) if raw.trim_start().starts_with(['"', '\'']) => value,
            _ => Value::from(raw.to_owned()),
        },
        _ => parse(raw),
    }
}

/// An environment value as the type it spells (`8080` is a number, `true` a bool),
/// falling back to a string; this is how figment's own `Env` provider reads values.
fn parse_env_value(raw: &str) -> Value {
    raw.parse::<Value>()
        .unwrap_or_else(|_| Value::from(raw.to_owned()))
}

/// A `--set` value: a TOML value (`5`, `"x"`, `[1, 2]`, `true`), or else a plain string.
fn parse_flag_value(raw: &str) -> Value {
    let parsed = toml_value(raw);
    parsed.unwrap_or_else(|| Value::from(raw.to_owned()))
}

fn toml_value(raw: &str) -> Option<Value> {
    let doc = format!("v = {raw}");
    let figment = Figment::from(Toml::string(&doc));
    figment.find_value("v").ok()
}

/// Checks each user-given setting on its own against the defaults, so that every bad
/// field is reported, not just the first one serde meets.
fn field_problems(base: &Figment, user: &Figment) -> Vec<String> {
    let known = leaf_paths(&dict_of(base));
    let given = dict_of(user);
    let mut problems = Vec::new();
    for path in leaf_paths(&given) {
        let source = user
            .find_metadata(&path)
            .map(|m| m.name.to_string())
            .unwrap_or_default();
        if !known.contains(&path) && !known.iter().any(|k| k.starts_with(&format!("{path}."))) {
            problems.push(format!("unknown setting `{path}` (from {source})"));
            continue;
        }
        let Ok(value) = user.find_value(&path) else {
            continue;
        };
        let single = base.clone().merge(Serialized::global(path.as_str(), value));
        match single.extract::<Config>() {
            Ok(config) => {
                if let Err(e) = config.validate() {
                    problems.extend(
                        e.problems
                            .into_iter()
                            .map(|p| format!("{p} (from {source})")),
                    );
                }
            }
            Err(e) => {
                for err in e {
                    problems.push(format!("`{path}` (from {source}): {}", err.kind));
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

fn dict_of(figment: &Figment) -> Dict {
    figment
        .data()
        .ok()
        .and_then(|mut profiles| profiles.remove(&Profile::Default))
        .unwrap_or_default()
}

/// Dotted paths of every non-table value in a dictionary.
fn leaf_paths(dict: &Dict) -> BTreeSet<String> {
    fn walk(prefix: &str, dict: &Dict, out: &mut BTreeSet<String>) {
        for (key, value) in dict {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                Value::Dict(_, inner) => walk(&path, inner, out),
                _ => {
                    out.insert(path);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk("", dict, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::test_support::load_with;

    #[test]
    fn defaults_load_and_are_complete() {
        let config = load_with(None, &[], &[]).expect("defaults are valid");
        assert_eq!(config.http.port, 8080);
        assert_eq!(config.topics.player_events, "player.events.raw");
        assert_eq!(config.kafka.bootstrap_servers, vec!["127.0.0.1:9092"]);
        assert_eq!(config.mode, Mode::All);
        assert_eq!(config.shutdown.grace_period, Duration::from_secs(20));
    }

    #[test]
    fn file_then_env_then_flag() {
        let file = "[http]\nport = 1000\n[logger]\nbatch_size = 7\n[stats]\nbuffer_size = 3\n";
        let config = load_with(Some(file), &[], &[]).expect("valid");
        assert_eq!((config.http.port, config.logger.batch_size), (1000, 7));

        let config = load_with(
            Some(file),
            &[("PORT", "2000"), ("GAMESTREAM_LOGGER__BATCH_SIZE", "8")],
            &[],
        )
        .expect("valid");
        assert_eq!((config.http.port, config.logger.batch_size), (2000, 8));
        assert_eq!(
            config.stats.buffer_size, 3,
            "file value kept where env is silent"
        );

        let config = load_with(
            Some(file),
            &[("PORT", "2000"), ("GAMESTREAM_LOGGER__BATCH_SIZE", "8")],
            &[("http.port", "3000"), ("logger.batch_size", "9")],
        )
        .expect("valid");
        assert_eq!((config.http.port, config.logger.batch_size), (3000, 9));
    }

    #[test]
    fn every_contract_env_var_sets_its_field() {
        let config = load_with(
            None,
            &[
                ("KAFKA_BOOTSTRAP_SERVERS", "a:1, b:2"),
                ("KAFKA_USERNAME", "u"),
                ("KAFKA_PASSWORD", "p"),
                ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
                ("KAFKA_TOPIC_PLAYER_EVENTS", "t.raw"),
                ("DB_HOST", "db"),
                ("DB_PORT", "5433"),
                ("DB_NAME", "n"),
                ("DB_USER", "usr"),
                ("DB_PASSWORD", "pw"),
                ("REDIS_HOST", "r"),
                ("REDIS_PORT", "6380"),
                ("PORT", "9000"),
                ("BUFFER_SIZE", "42"),
                ("LOG_FORMAT", "json"),
            ],
            &[],
        )
        .expect("valid");
        assert_eq!(config.kafka.bootstrap_servers, vec!["a:1", "b:2"]);
        assert_eq!(config.kafka.username, "u");
        assert_eq!(config.kafka.password.expose(), "p");
        assert_eq!(
            config.kafka.security_protocol,
            SecurityProtocol::SaslPlaintext
        );
        assert_eq!(config.topics.player_events, "t.raw");
        assert_eq!(
            (
                config.postgres.host.as_str(),
                config.postgres.port,
                config.postgres.database.as_str()
            ),
            ("db", 5433, "n")
        );
        assert_eq!(
            (
                config.postgres.user.as_str(),
                config.postgres.password.expose()
            ),
            ("usr", "pw")
        );
        assert_eq!((config.redis.host.as_str(), config.redis.port), ("r", 6380));
        assert_eq!(config.http.port, 9000);
        assert_eq!(config.stats.buffer_size, 42);
        assert_eq!(config.telemetry.log_format, LogFormat::Json);
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let err = load_with(
            Some("[http]\nport = \"eighty\"\nnot_a_key = 1\n"),
            &[
                ("GAMESTREAM_LOGGER__LINGER", "soon"),
                ("GAMESTREAM_NOPE__X", "1"),
            ],
            &[("stats.buffer_size", "-4")],
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert_eq!(err.problems.len(), 5, "{text}");
        assert!(text.contains("`http.port`"), "{text}");
        assert!(text.contains("unknown setting `http.not_a_key`"), "{text}");
        assert!(text.contains("`logger.linger`"), "{text}");
        assert!(text.contains("unknown setting `nope.x`"), "{text}");
        assert!(
            text.contains("`stats.buffer_size` (from flag --set stats.buffer_size)"),
            "{text}"
        );
        assert!(
            text.contains("(from env GAMESTREAM_LOGGER__LINGER)"),
            "{text}"
        );
    }

    #[test]
    fn negative_buffer_size_is_a_type_error() {
        let err = load_with(None, &[("BUFFER_SIZE", "-4")], &[]).expect_err("invalid");
        assert!(err.to_string().contains("`stats.buffer_size`"), "{err}");
    }

    #[test]
    fn bad_enum_and_missing_file_are_reported() {
        let err = load_with(
            None,
            &[("KAFKA_SECURITY_PROTOCOL", "TELNET")],
            &[("mode", "sideways")],
        )
        .expect_err("invalid");
        assert_eq!(err.problems.len(), 2, "{err}");
        let err = load(&Sources {
            file: Some("/nonexistent/gs.toml".into()),
            ..Sources::default()
        })
        .expect_err("invalid");
        assert!(err.to_string().contains("/nonexistent/gs.toml"), "{err}");
    }

    #[test]
    fn string_settings_keep_numeric_looking_text() {
        let config = load_with(
            None,
            &[
                ("DB_PASSWORD", "12345"),
                ("GAMESTREAM_KAFKA__PASSWORD", "007"),
                ("DB_HOST", "10"),
            ],
            &[("redis.password", "true"), ("topics.dlq", "\"quoted.dlq\"")],
        )
        .expect("numeric-looking strings are strings");
        assert_eq!(config.postgres.password.expose(), "12345");
        assert_eq!(config.kafka.password.expose(), "007");
        assert_eq!(config.postgres.host, "10");
        assert_eq!(config.redis.password.expose(), "true");
        assert_eq!(config.topics.dlq, "quoted.dlq");
    }
}
