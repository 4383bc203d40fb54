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

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Profile, Provider};
use serde::{Deserialize, Deserializer};

/// The defaults, compiled in so that the binary runs without its source tree.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

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
    ("PORT", "http.port"),
    ("BUFFER_SIZE", "stats.buffer_size"),
    ("LOG_FORMAT", "telemetry.log_format"),
];

/// Prefix of every other environment variable; `__` separates section and key.
pub const ENV_PREFIX: &str = "GAMESTREAM_";

/// The whole configuration of one gamestream process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which halves of the daemon this process runs.
    pub mode: Mode,
    pub http: HttpConfig,
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub producer: ProducerConfig,
    pub postgres: PostgresConfig,
    pub redis: RedisConfig,
    pub consumer: ConsumerConfig,
    pub logger: LoggerConfig,
    pub stats: StatsConfig,
    pub leaderboard: LeaderboardConfig,
    pub dlq: DlqConfig,
    pub supervisor: SupervisorConfig,
    pub lease: LeaseConfig,
    pub shutdown: ShutdownConfig,
    pub telemetry: TelemetryConfig,
}

/// Which halves of the daemon run in this process (a pod may run one or both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// HTTP ingestion and the consumer pipeline.
    All,
    /// HTTP ingestion only.
    Ingest,
    /// The consumer pipeline only (HTTP still serves health, metrics and queries).
    Consume,
}

impl Mode {
    /// Whether this process accepts events over HTTP.
    pub fn ingests(self) -> bool {
        matches!(self, Mode::All | Mode::Ingest)
    }

    /// Whether this process runs the consumer pipeline.
    pub fn consumes(self) -> bool {
        matches!(self, Mode::All | Mode::Consume)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address the server binds.
    pub bind: String,
    /// TCP port (contract: `PORT`).
    pub port: u16,
    /// Largest accepted body, bytes.
    pub body_limit_bytes: u64,
    /// Most events in one batch request.
    pub batch_limit: usize,
    /// Time a request may take before it is answered 503.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Accepted bearer tokens; empty means open.
    #[serde(deserialize_with = "secret_list")]
    pub api_keys: Vec<Secret>,
    /// Requests per second per key or client; 0 = unlimited.
    pub rate_limit_per_second: u32,
    /// Burst size of the token bucket, requests.
    pub rate_limit_burst: u32,
    /// Most clients (keys or addresses) with their own token bucket; beyond it, new
    /// clients share one overflow bucket, so a flood of addresses cannot grow memory.
    pub rate_limit_max_clients: usize,
    /// `Retry-After` sent with a 503 (broker slow, down or the in-flight bound reached).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port` of the bootstrap brokers.
    #[serde(deserialize_with = "string_list")]
    pub bootstrap_servers: Vec<String>,
    /// How to talk to the brokers.
    pub security_protocol: SecurityProtocol,
    /// SASL/SCRAM-SHA-512 user; empty = no SASL.
    pub username: String,
    /// SASL password.
    pub password: Secret,
    /// Extra CA certificates (PEM) for TLS; empty = system roots.
    pub ca_file: String,
    /// Client id sent to brokers.
    pub client_id: String,
    /// Retry deadline of one broker operation (produce: see `producer.publish_timeout`).
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
}

/// Kafka's `security.protocol` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SecurityProtocol {
    #[serde(rename = "PLAINTEXT", alias = "plaintext")]
    Plaintext,
    #[serde(rename = "SSL", alias = "ssl")]
    Ssl,
    #[serde(rename = "SASL_PLAINTEXT", alias = "sasl_plaintext")]
    SaslPlaintext,
    #[serde(rename = "SASL_SSL", alias = "sasl_ssl")]
    SaslSsl,
}

impl KafkaConfig {
    /// The protocol actually used: a username with PLAINTEXT means SASL_SSL, which is what
    /// the old deployments did when they set only `KAFKA_USERNAME`/`KAFKA_PASSWORD`.
    pub fn effective_protocol(&self) -> SecurityProtocol {
        match (self.security_protocol, self.username.is_empty()) {
            (SecurityProtocol::Plaintext, false) => SecurityProtocol::SaslSsl,
            (protocol, _) => protocol,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    pub player_events: String,
    pub player_events_partitions: i32,
    pub processed_events: String,
    pub processed_events_partitions: i32,
    pub statistics: String,
    pub statistics_partitions: i32,
    pub leaderboards: String,
    pub leaderboards_partitions: i32,
    pub dlq: String,
    pub dlq_partitions: i32,
    pub replication_factor: i16,
}

impl TopicsConfig {
    /// Every topic of the contract with the partition count it is created with.
    pub fn all(&self) -> [(&str, i32); 5] {
        [
            (&self.player_events, self.player_events_partitions),
            (&self.processed_events, self.processed_events_partitions),
            (&self.statistics, self.statistics_partitions),
            (&self.leaderboards, self.leaderboards_partitions),
            (&self.dlq, self.dlq_partitions),
        ]
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerConfig {
    /// How long a record may wait for others to share its produce request.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Most records in one produce request to one partition.
    pub max_batch_records: usize,
    /// Most bytes in one produce request to one partition.
    pub max_batch_bytes: usize,
    /// Bytes accepted and not yet acknowledged, over all partitions; beyond it, 503.
    pub max_in_flight_bytes: usize,
    /// Produce requests outstanding at once per partition.
    pub max_in_flight_requests: usize,
    /// How long a caller waits for the broker's acknowledgement before it gets 503.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    pub compression: CompressionConfig,
}

/// Compression of produced record batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionConfig {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Secret,
    pub sslmode: SslMode,
    pub ssl_root_cert: String,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Whether a commit waits for its WAL flush (PostgreSQL's `synchronous_commit`).
    pub synchronous_commit: bool,
}

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: Secret,
    pub db: i64,
    pub tls: bool,
    /// Put before every key written; empty in production.
    pub key_prefix: String,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Keys written per pipeline while rebuilding Redis from Postgres.
    pub rebuild_batch_size: usize,
    /// Lifetime of the lock one rebuilding process holds (extended while it works).
    #[serde(with = "humantime_serde")]
    pub rebuild_lock_ttl: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    pub fetch_max_bytes: i32,
    #[serde(with = "humantime_serde")]
    pub fetch_max_wait: Duration,
    pub max_in_flight_records: usize,
    /// How long a sink may be out of credit before readers leave it behind.
    #[serde(with = "humantime_serde")]
    pub detach_after: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
}

/// The raw event logger's batching and parallelism.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// Records per write.
    pub batch_size: usize,
    /// Longest wait of a partial batch.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Concurrent writers; partitions are spread over them.
    pub writers: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqConfig {
    /// Largest message on the dead-letter topic, bytes.
    pub max_message_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsConfig {
    /// Events buffered before a flush, so at most this many distinct players per
    /// flush but for what one fetch brings (contract: `BUFFER_SIZE`).
    pub buffer_size: usize,
    /// Longest wait of a partial buffer.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Concurrent writers per store; partitions are spread over them.
    pub writers: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderboardConfig {
    /// How often the `leaderboards` top-N table is refreshed.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Entries per game and period in the `leaderboards` table.
    pub top_n: u32,
    /// How long dated Redis boards live after their period ends.
    #[serde(with = "humantime_serde")]
    pub period_ttl: Duration,
    /// Records per write of the leaderboard sinks.
    pub batch_size: usize,
    /// Longest wait of a partial batch.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Concurrent writers per store; partitions are spread over them.
    pub writers: usize,
    /// Entries `GET /api/v1/leaderboards/{game_id}` returns without `limit`.
    pub query_default_limit: usize,
    /// Largest `limit` it accepts.
    pub query_max_limit: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    #[serde(with = "humantime_serde")]
    pub restart_initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub restart_max_backoff: Duration,
    pub max_restarts: u32,
    #[serde(with = "humantime_serde")]
    pub restart_window: Duration,
    #[serde(with = "humantime_serde")]
    pub partition_refresh_interval: Duration,
}

/// Partition leases among several daemons (see [`crate::leases`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// This daemon's name among the others; empty: the host name plus a random suffix
    /// (in Kubernetes, the pod name through the downward API).
    pub member_id: String,
    /// How long a lease (and a member's heartbeat) lasts without renewal: a dead
    /// daemon's partitions are taken over after at most `ttl + renew_interval`.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How often held leases are renewed, free ones taken and extra ones handed over.
    #[serde(with = "humantime_serde")]
    pub renew_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    pub log_level: String,
    /// How often histogram samples are folded into their buckets. The Prometheus
    /// recorder keeps raw samples until then, so without it memory grows between scrapes.
    #[serde(with = "humantime_serde")]
    pub metrics_upkeep_interval: Duration,
    /// Most span links on one sink batch-write span (one per traced record of the
    /// batch); the rest of a large batch's records are not linked. Count.
    pub trace_max_links: usize,
    /// Finished spans held for export at most; past it spans are dropped and counted in
    /// `gamestream_trace_export_dropped_total`. Count.
    pub trace_max_queue_spans: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A secret string (password, token). Its `Debug` and `Display` never show the value,
/// so it cannot leak through a log line, an error or a panic message.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that sends it to a server.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A list given either as a TOML/JSON array or as one comma-separated string
/// (which is how `KAFKA_BOOTSTRAP_SERVERS` arrives).
#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn into_vec(self) -> Vec<String> {
        let items = match self {
            StringOrList::One(s) => s.split(',').map(str::to_owned).collect(),
            StringOrList::Many(v) => v,
        };
        items
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    StringOrList::deserialize(d).map(StringOrList::into_vec)
}

fn secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    string_list(d).map(|v| v.into_iter().map(Secret).collect())
}

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

impl Config {
    /// Checks what types alone cannot: required values and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let sasl = matches!(
            self.kafka.effective_protocol(),
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        );
        let required = [
            (
                !self.kafka.bootstrap_servers.is_empty(),
                "`kafka.bootstrap_servers` (KAFKA_BOOTSTRAP_SERVERS) is required: at least one host:port",
            ),
            (
                !sasl || (!self.kafka.username.is_empty() && !self.kafka.password.is_empty()),
                "`kafka.username` and `kafka.password` (KAFKA_USERNAME, KAFKA_PASSWORD) are required with a SASL security protocol",
            ),
            (
                !self.postgres.host.is_empty(),
                "`postgres.host` (DB_HOST) is required",
            ),
            (
                !self.postgres.database.is_empty(),
                "`postgres.database` (DB_NAME) is required",
            ),
            (
                !self.postgres.user.is_empty(),
                "`postgres.user` (DB_USER) is required",
            ),
            (
                !self.redis.host.is_empty(),
                "`redis.host` (REDIS_HOST) is required",
            ),
            (
                !self.topics.player_events.is_empty(),
                "`topics.player_events` is required",
            ),
        ];
        problems.extend(
            required
                .iter()
                .filter(|(ok, _)| !ok)
                .map(|(_, msg)| (*msg).to_owned()),
        );
        for server in &self.kafka.bootstrap_servers {
            let ok = server
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                problems.push(format!(
                    "`kafka.bootstrap_servers`: `{server}` is not host:port"
                ));
            }
        }
        for (topic, partitions) in self.topics.all() {
            if partitions < 1 {
                problems.push(format!(
                    "topic `{topic}` needs at least 1 partition, got {partitions}"
                ));
            }
        }
        let positive = [
            ("http.batch_limit", self.http.batch_limit),
            (
                "http.rate_limit_max_clients",
                self.http.rate_limit_max_clients,
            ),
            (
                "producer.max_batch_records",
                self.producer.max_batch_records,
            ),
            ("producer.max_batch_bytes", self.producer.max_batch_bytes),
            (
                "producer.max_in_flight_bytes",
                self.producer.max_in_flight_bytes,
            ),
            (
                "producer.max_in_flight_requests",
                self.producer.max_in_flight_requests,
            ),
            (
                "consumer.max_in_flight_records",
                self.consumer.max_in_flight_records,
            ),
            ("logger.batch_size", self.logger.batch_size),
            ("logger.writers", self.logger.writers),
            ("stats.buffer_size", self.stats.buffer_size),
            ("stats.writers", self.stats.writers),
            ("leaderboard.writers", self.leaderboard.writers),
            ("leaderboard.batch_size", self.leaderboard.batch_size),
            ("leaderboard.top_n", self.leaderboard.top_n as usize),
            (
                "leaderboard.query_default_limit",
                self.leaderboard.query_default_limit,
            ),
            ("redis.rebuild_batch_size", self.redis.rebuild_batch_size),
            ("dlq.max_message_bytes", self.dlq.max_message_bytes),
        ];
        for (name, value) in positive {
            if value == 0 {
                problems.push(format!("`{name}` must be at least 1"));
            }
        }
        if self.leaderboard.query_default_limit > self.leaderboard.query_max_limit {
            problems.push(
                "`leaderboard.query_default_limit` must not exceed `leaderboard.query_max_limit`"
                    .to_owned(),
            );
        }
        if self.leaderboard.refresh_interval.is_zero() {
            problems.push("`leaderboard.refresh_interval` must be longer than 0".to_owned());
        }
        if self.lease.renew_interval.is_zero() || self.lease.renew_interval >= self.lease.ttl {
            problems.push(
                "`lease.renew_interval` must be longer than 0 and shorter than `lease.ttl`"
                    .to_owned(),
            );
        }
        if self.consumer.fetch_max_bytes < 1024 {
            problems.push("`consumer.fetch_max_bytes` must be at least 1024".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load_with(
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
    fn missing_required_values_are_named() {
        let err = load_with(
            None,
            &[("KAFKA_BOOTSTRAP_SERVERS", ""), ("DB_HOST", "")],
            &[],
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("KAFKA_BOOTSTRAP_SERVERS"), "{text}");
        assert!(text.contains("DB_HOST"), "{text}");

        let err =
            load_with(None, &[("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")], &[]).expect_err("invalid");
        assert!(err.to_string().contains("KAFKA_USERNAME"), "{err}");
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

    #[test]
    fn secrets_never_print() {
        let config = load_with(
            None,
            &[
                ("DB_PASSWORD", "hunter2"),
                ("KAFKA_PASSWORD", "s3cr3t"),
                ("GAMESTREAM_HTTP__API_KEYS", "k1,k2"),
            ],
            &[],
        )
        .expect("valid");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("s3cr3t") && !debug.contains("k1"),
            "{debug}"
        );
        assert_eq!(config.http.api_keys.len(), 2);
        assert_eq!(config.http.api_keys[1].expose(), "k2");
    }
}
