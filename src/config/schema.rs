//! The configuration's shape: one struct per section of `config/default.toml`, the
//! enums its settings choose from, and [`Secret`].

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[allow(unused_imports)]
use super::*;

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
    pub dedupe: DedupeConfig,
    pub logger: LoggerConfig,
    pub stats: StatsConfig,
    pub leaderboard: LeaderboardConfig,
    pub dlq: DlqConfig,
    pub supervisor: SupervisorConfig,
    pub lease: LeaseConfig,
    pub group_offsets: GroupOffsetsConfig,
    pub shadow: ShadowConfig,
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
    /// Most open client connections. Past it, the oldest connection with no request in progress is closed
    /// to make room; when every connection is in a request, newcomers get 503.
    pub max_connections: usize,
    /// Time from a connection's start (or the first byte of a later request) until the
    /// whole request head must have arrived; then the connection is closed (408 when a
    /// head had begun).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time to receive a whole request body once its head is read; then 408.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Most bytes of request bodies buffered at once over all requests (inflated size
    /// for compressed bodies); a body that would pass it gets 503 with `Retry-After`.
    pub body_budget_bytes: u64,
    /// Largest request head (request line and headers), bytes; larger gets 431 or 414.
    pub max_header_bytes: usize,
    /// Failed authentications (missing or wrong key) allowed per client address and
    /// minute before the address gets 429 for every request; 0 = no limit.
    pub auth_failures_per_minute: u32,
    /// Peers (IP addresses or CIDR blocks) whose `Forwarded` / `X-Forwarded-For`
    /// headers are believed for the client address; empty = the peer is the client.
    #[serde(deserialize_with = "string_list")]
    pub trusted_proxies: Vec<String>,
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
    /// The protocol actually used: a username with PLAINTEXT (the default, so also "no
    /// protocol set") means SASL_PLAINTEXT, which is how the old consumers connected when
    /// their deployment set only `KAFKA_USERNAME`/`KAFKA_PASSWORD` (CONTRACT,
    /// Environment: the cluster's port 9092 listener). Any other protocol is used as given.
    pub fn effective_protocol(&self) -> SecurityProtocol {
        match (self.security_protocol, self.username.is_empty()) {
            (SecurityProtocol::Plaintext, false) => SecurityProtocol::SaslPlaintext,
            (protocol, _) => protocol,
        }
    }

    /// Whether SASL credentials go to the brokers unencrypted (SASL_PLAINTEXT, given or
    /// implied by a username): SCRAM never sends the password itself, but the session,
    /// events included, is readable on the wire. The daemon warns about it at start.
    pub fn credentials_in_clear(&self) -> bool {
        self.effective_protocol() == SecurityProtocol::SaslPlaintext
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
    /// `retention.ms` of the raw and processed event topics.
    #[serde(with = "humantime_serde")]
    pub retention_raw: Duration,
    /// `retention.ms` of the other topics: statistics, leaderboards, dead letters.
    #[serde(with = "humantime_serde")]
    pub retention_other: Duration,
    /// `min.insync.replicas` of created topics.
    pub min_insync_replicas: i16,
}

/// One topic of the contract as `gamestream topics create` makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSpec<'a> {
    pub name: &'a str,
    pub partitions: i32,
    /// Its `retention.ms`.
    pub retention: Duration,
}

impl<'a> TopicSpec<'a> {
    fn new(name: &'a str, partitions: i32, retention: Duration) -> Self {
        Self {
            name,
            partitions,
            retention,
        }
    }
}

impl TopicsConfig {
    /// Every topic of the contract with the partition count it is created with.
    pub fn all(&self) -> [(&str, i32); 5] {
        self.specs().map(|spec| (spec.name, spec.partitions))
    }

    /// Every topic of the contract with its partition count and retention.
    pub fn specs(&self) -> [TopicSpec<'_>; 5] {
        let spec = TopicSpec::new;
        [
            spec(
                &self.player_events,
                self.player_events_partitions,
                self.retention_raw,
            ),
            spec(
                &self.processed_events,
                self.processed_events_partitions,
                self.retention_raw,
            ),
            spec(
                &self.statistics,
                self.statistics_partitions,
                self.retention_other,
            ),
            spec(
                &self.leaderboards,
                self.leaderboards_partitions,
                self.retention_other,
            ),
            spec(&self.dlq, self.dlq_partitions, self.retention_other),
        ]
    }
}

/// Which records every sink skips as resends of an earlier one (`crate::dedupe`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// Skip duplicates (records whose `event_id` repeats an earlier record's).
    pub enabled: bool,
    /// How much earlier (Kafka timestamp) the first record may be.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How many offsets back the first record may be; bounds memory per partition.
    pub max_records: u64,
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
    /// Produce as Kafka's idempotent producer (producer id, epoch, sequences), so that a
    /// batch whose outcome is unknown is sent again without being stored twice.
    pub idempotence: bool,
    /// How long one attempt of an idempotent produce may take before the same batch is
    /// sent again on a fresh connection.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
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
    /// ACL user of `AUTH`; empty = the default user (password only).
    pub username: String,
    /// `AUTH` password (contract: `REDIS_PASSWORD`); empty = no `AUTH`.
    pub password: Secret,
    pub db: i64,
    /// Connect over TLS (`rediss://`), verifying the server's certificate and host name.
    pub tls: bool,
    /// Extra CA certificates (PEM) trusted with `tls`, besides Mozilla's roots.
    pub ca_file: String,
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
    /// Most bytes of one fetch of one partition.
    pub fetch_max_bytes: i32,
    /// Bytes of fetches shared by the topic's partitions: a partition's fetches are
    /// `fetch_max_bytes`, or this over the partition count when that is less.
    pub fetch_budget_bytes: i64,
    #[serde(with = "humantime_serde")]
    pub fetch_max_wait: Duration,
    /// Most records of one partition handed to a sink and not yet acknowledged.
    pub max_in_flight_records: usize,
    /// Records in flight shared by the topic's partitions: a partition's credit is
    /// `max_in_flight_records`, or this over the partition count when that is less.
    pub in_flight_budget_records: usize,
    /// How long a sink may be out of credit before readers leave it behind.
    #[serde(with = "humantime_serde")]
    pub detach_after: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
}

/// Least credit and fetch size a partition gets however many partitions share the
/// budgets: below them a reader would fetch too little per round trip to keep up.
pub const MIN_PARTITION_CREDIT: usize = 100;
pub const MIN_PARTITION_FETCH_BYTES: i32 = 64 * 1024;

/// What one partition reader may hold: its credit in records and its fetch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionShare {
    pub max_in_flight_records: usize,
    pub fetch_max_bytes: i32,
}

impl ConsumerConfig {
    /// A partition's share of the budgets when the topic has `partitions` partitions,
    /// so that the readers of a daemon hold at most about `in_flight_budget_records`
    /// records and `fetch_budget_bytes` of fetches however many partitions it reads
    /// (each share is at least the `MIN_PARTITION_*` floor, and at most the
    /// per-partition settings).
    pub fn partition_share(&self, partitions: i32) -> PartitionShare {
        let n = partitions.max(1);
        let credit = (self.in_flight_budget_records / n as usize).max(MIN_PARTITION_CREDIT);
        let fetch = (self.fetch_budget_bytes / i64::from(n))
            .clamp(i64::from(MIN_PARTITION_FETCH_BYTES), i64::from(i32::MAX));
        PartitionShare {
            max_in_flight_records: self.max_in_flight_records.min(credit),
            fetch_max_bytes: self.fetch_max_bytes.min(fetch as i32),
        }
    }
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
    /// How often the `leaderboards` table (the all-time top N of each game) is refreshed.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Entries per game in the `leaderboards` table (all time only).
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

/// The old consumer groups in Kafka, mirrored from the sinks' offsets (see
/// `kafka::group_offsets`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupOffsetsConfig {
    /// Whether a consuming daemon commits its sinks' positions to the old groups.
    pub mirror: bool,
    /// How often the positions are read and committed (when they moved).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Put before each group's name (`event-logger-group`, ...): empty in production; a
    /// test or a second installation sharing the cluster uses its own.
    pub group_prefix: String,
}

/// Shadow mode: consuming next to the live old consumers, into stores of its own, so
/// that operators compare the two before switching (README, "Cut-over").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// When on: the pipeline only (`mode = "consume"`), Redis keys behind a non-empty
    /// `redis.key_prefix`, no commits to the old consumer groups (`group_offsets.mirror`
    /// off), and `migrate` and `cutover` refuse a database of the old pipeline.
    pub enabled: bool,
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

/// API keys keep their blank entries (trimmed to ""), so that validation can refuse
/// `GAMESTREAM_HTTP__API_KEYS=" , "` instead of silently starting an open server.
fn secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    let items = match StringOrList::deserialize(d)? {
        StringOrList::One(s) => s.split(',').map(str::to_owned).collect(),
        StringOrList::Many(v) => v,
    };
    Ok(items
        .into_iter()
        .map(|s| Secret(s.trim().to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::{PartitionShare, SecurityProtocol};
    use crate::config::test_support::load_with;

    /// The defaults keep 3 partitions at the per-partition settings; more partitions
    /// share the budgets, down to the floors.
    #[test]
    fn partitions_share_the_budgets() {
        let consumer = load_with(None, &[], &[]).expect("valid").consumer;
        let share = |n| consumer.partition_share(n);
        let whole = PartitionShare {
            max_in_flight_records: 5000,
            fetch_max_bytes: 1_048_576,
        };
        assert_eq!(share(1), whole);
        assert_eq!(share(3), whole);
        assert_eq!(
            share(12),
            PartitionShare {
                max_in_flight_records: 1250,
                fetch_max_bytes: 262_144
            }
        );
        assert_eq!(
            share(48),
            PartitionShare {
                max_in_flight_records: 312,
                fetch_max_bytes: 65_536
            }
        );
        assert_eq!(
            share(1000),
            PartitionShare {
                max_in_flight_records: super::MIN_PARTITION_CREDIT,
                fetch_max_bytes: super::MIN_PARTITION_FETCH_BYTES
            }
        );
        assert_eq!(share(0), whole, "no partitions read yet: one share");
        // A per-partition setting below the floor is kept.
        let mut small = consumer.clone();
        small.fetch_max_bytes = 32_768;
        assert_eq!(small.partition_share(48).fetch_max_bytes, 32_768);
    }

    /// (protocol set, username) → the protocol used: the old consumers' defaults.
    #[test]
    fn a_username_without_a_protocol_means_sasl_plaintext() {
        let protocol = |env: &[(&str, &str)]| {
            let config = load_with(None, env, &[]).expect("valid");
            (
                config.kafka.effective_protocol(),
                config.kafka.credentials_in_clear(),
            )
        };
        assert_eq!(protocol(&[]), (SecurityProtocol::Plaintext, false));
        let user = [("KAFKA_USERNAME", "u"), ("KAFKA_PASSWORD", "p")];
        assert_eq!(protocol(&user), (SecurityProtocol::SaslPlaintext, true));
        for (given, used, clear) in [
            ("PLAINTEXT", SecurityProtocol::SaslPlaintext, true),
            ("SASL_PLAINTEXT", SecurityProtocol::SaslPlaintext, true),
            ("SASL_SSL", SecurityProtocol::SaslSsl, false),
            ("sasl_ssl", SecurityProtocol::SaslSsl, false),
        ] {
            let env = [user[0], user[1], ("KAFKA_SECURITY_PROTOCOL", given)];
            assert_eq!(protocol(&env), (used, clear), "{given}");
        }
        // TLS without a username stays TLS without SASL.
        assert_eq!(
            protocol(&[("KAFKA_SECURITY_PROTOCOL", "SSL")]),
            (SecurityProtocol::Ssl, false)
        );
    }

    #[test]
    fn secrets_never_print() {
        let config = load_with(
            None,
            &[
                ("DB_PASSWORD", "hunter2"),
                ("KAFKA_PASSWORD", "s3cr3t"),
                (
                    "GAMESTREAM_HTTP__API_KEYS",
                    "k1-0123456789abcdef,k2-0123456789abcdef",
                ),
            ],
            &[],
        )
        .expect("valid");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("s3cr3t") && !debug.contains("k1-"),
            "{debug}"
        );
        assert_eq!(config.http.api_keys.len(), 2);
        assert_eq!(config.http.api_keys[1].expose(), "k2-0123456789abcdef");
    }
}
