//! The integration-test harness: real Postgres, Redis and broker from the local stack
//! (`deploy/local/stack.sh up`, which `make test` runs first).
//!
//! Each [`TestEnv`] isolates itself so tests run in parallel and re-run without cleanup:
//! its own database (created and migrated), its own topic names (created), its own
//! Redis key prefix and consumer-group prefix. A test never passes silently without its services: if the stack
//! is not up, [`TestEnv::new`] panics saying how to start it.

pub mod analytics;
pub mod cluster;
pub mod tally;

use std::process::Stdio;
use std::time::Duration;

pub mod ingest;
pub mod tls;

use gamestream::config::{self, Config, Sources};
use gamestream::kafka;
use gamestream::sinks::postgres;

/// Addresses of the local stack, from the env that `stack.sh env` prints.
pub struct Stack {
    pub kafka: String,
    pub pg_host: String,
    pub pg_port: String,
    pub pg_user: String,
    pub pg_password: String,
    pub pg_admin_db: String,
    pub redis_host: String,
    pub redis_port: String,
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

impl Stack {
    pub fn from_env() -> Self {
        Self {
            kafka: var("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            pg_host: var("DB_HOST", "127.0.0.1"),
            pg_port: var("DB_PORT", "5432"),
            pg_user: var("DB_USER", "gamestream"),
            pg_password: var("DB_PASSWORD", "gamestream"),
            pg_admin_db: var("DB_NAME", "gamestream"),
            redis_host: var("REDIS_HOST", "127.0.0.1"),
            redis_port: var("REDIS_PORT", "6379"),
        }
    }

    /// The contract env vars pointing at this stack (for child daemons and config loads).
    pub fn env(&self, database: &str) -> Vec<(String, String)> {
        [
            ("KAFKA_BOOTSTRAP_SERVERS", self.kafka.as_str()),
            ("DB_HOST", &self.pg_host),
            ("DB_PORT", &self.pg_port),
            ("DB_NAME", database),
            ("DB_USER", &self.pg_user),
            ("DB_PASSWORD", &self.pg_password),
            ("REDIS_HOST", &self.redis_host),
            ("REDIS_PORT", &self.redis_port),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

/// A short random id for names (databases, topics, key prefixes).
pub fn unique_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// One isolated test environment on the shared stack.
pub struct TestEnv {
    pub stack: Stack,
    pub database: String,
    /// `--set` overrides that isolate this env (topics, key prefix), for config and children.
    pub overrides: Vec<(String, String)>,
    pub config: Config,
    pub pg: sqlx::PgPool,
}

/// The old pipeline's database as it exists today (beside the project root).
pub const LEGACY_SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/legacy/schema.sql");

const NOT_UP: &str =
    "the local stack is not up: run `make test` (which starts it) or `deploy/local/stack.sh up`";

impl TestEnv {
    /// A fresh database (migrated), fresh topics (created) and a fresh Redis key prefix.
    pub async fn new() -> Self {
        Self::with_overrides(&[]).await
    }

    /// As [`TestEnv::new`], with extra settings (`("logger.batch_size", "10")`).
    pub async fn with_overrides(extra: &[(&str, &str)]) -> Self {
        Self::build(extra, true).await
    }

    /// As [`TestEnv::with_overrides`], but the database is the old pipeline's: the
    /// tables of `../shared/legacy/schema.sql`, empty and not migrated.
    pub async fn legacy(extra: &[(&str, &str)]) -> Self {
        let env = Self::build(extra, false).await;
        let schema = std::fs::read_to_string(LEGACY_SCHEMA).expect("../shared/legacy/schema.sql");
        sqlx::raw_sql(sqlx::AssertSqlSafe(schema))
            .execute(&env.pg)
            .await
            .expect("the old pipeline's schema applies");
        env
    }

    async fn build(extra: &[(&str, &str)], migrate: bool) -> Self {
        let stack = Stack::from_env();
        let id = unique_id();
        let database = format!("gs_test_{id}");
        create_database(&stack, &database).await;

        let mut overrides: Vec<(String, String)> = vec![
            (
                "topics.player_events".into(),
                format!("\"t{id}.player.events.raw\""),
            ),
            (
                "topics.processed_events".into(),
                format!("\"t{id}.player.events.processed\""),
            ),
            (
                "topics.statistics".into(),
                format!("\"t{id}.player.statistics\""),
            ),
            (
                "topics.leaderboards".into(),
                format!("\"t{id}.game.leaderboards\""),
            ),
            ("topics.dlq".into(), format!("\"t{id}.system.dlq\"")),
            ("redis.key_prefix".into(), format!("\"t{id}:\"")),
            // The consumer groups the daemon mirrors its offsets into, of its own too.
            ("group_offsets.group_prefix".into(), format!("\"t{id}-\"")),
            ("http.port".into(), "0".into()),
            ("http.bind".into(), "\"127.0.0.1\"".into()),
        ];
        overrides.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let config = config::load(&Sources {
            file: None,
            env: stack.env(&database),
            overrides: overrides.clone(),
        })
        .expect("test configuration is valid");
        let pg = postgres::connect(&config.postgres)
            .await
            .unwrap_or_else(|e| panic!("{NOT_UP}: {e}"));
        if migrate {
            postgres::migrate(&pg).await.expect("migrations apply");
        }
        let client = kafka::connect(&config.kafka)
            .await
            .unwrap_or_else(|e| panic!("{NOT_UP}: {e}"));
        kafka::create_topics(&client, &config.topics)
            .await
            .expect("topics are created");
        Self {
            stack,
            database,
            overrides,
            config,
            pg,
        }
    }

    /// Environment for a child `gamestream` process pointed at this env.
    pub fn child_env(&self) -> Vec<(String, String)> {
        self.stack.env(&self.database)
    }

    /// `--set` arguments for a child `gamestream` process pointed at this env.
    pub fn child_args(&self) -> Vec<String> {
        self.overrides
            .iter()
            .flat_map(|(k, v)| ["--set".to_owned(), format!("{k}={v}")])
            .collect()
    }

    /// A `gamestream` command (the binary under test) configured for this env.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gamestream"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.child_env())
            .args(self.child_args())
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// A Redis connection to the stack.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        let url = format!(
            "redis://{}:{}/",
            self.stack.redis_host, self.stack.redis_port
        );
        let client = redis::Client::open(url).expect("redis url");
        client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("{NOT_UP}: {e}"))
    }
}

/// A test that passed removes what it made on the *shared* stack: its database (hundreds
/// of them piled up in `.stack/` otherwise, 7.6 GB after a few sessions) and the
/// thousands of keys the stats and leaderboard sinks wrote under its Redis prefix. A
/// failed test keeps both, as evidence. Synchronous, since `Drop` cannot await.
impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        self.remove_redis_keys();
        self.drop_database();
    }
}

impl TestEnv {
    fn remove_redis_keys(&self) {
        let url = format!(
            "redis://{}:{}/",
            self.stack.redis_host, self.stack.redis_port
        );
        let Ok(mut conn) = redis::Client::open(url).and_then(|c| c.get_connection()) else {
            return;
        };
        let pattern = format!("{}*", self.config.redis.key_prefix);
        let mut cursor: u64 = 0;
        loop {
            let Ok((next, keys)) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query::<(u64, Vec<String>)>(&mut conn)
            else {
                return;
            };
            if !keys.is_empty() {
                let _ = redis::cmd("UNLINK").arg(&keys).query::<i64>(&mut conn);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }

    /// `DROP DATABASE … WITH (FORCE)` from a thread of its own (this may run inside the
    /// test's runtime, which cannot be blocked on); FORCE ends the pool's and any child
    /// daemon's connections. Best effort: a failure only leaves the database behind.
    fn drop_database(&self) {
        let url = admin_url(&self.stack);
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database);
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let connect = sqlx::PgPool::connect(&url);
                if let Ok(Ok(admin)) = tokio::time::timeout(Duration::from_secs(10), connect).await
                {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(statement))
                        .execute(&admin)
                        .await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// The stack's maintenance database, where databases are created and dropped.
fn admin_url(stack: &Stack) -> String {
    format!(
        "postgres://{}:{}@{}:{}/{}",
        stack.pg_user, stack.pg_password, stack.pg_host, stack.pg_port, stack.pg_admin_db
    )
}

/// Creates a database on the stack (the stack's role has CREATEDB).
pub async fn create_database(stack: &Stack, database: &str) {
    let url = admin_url(stack);
    let admin = tokio::time::timeout(Duration::from_secs(10), sqlx::PgPool::connect(&url))
        .await
        .unwrap_or_else(|_| panic!("{NOT_UP}: postgres did not answer"))
        .unwrap_or_else(|e| panic!("{NOT_UP}: {e}"));
    let statement = format!("CREATE DATABASE \"{database}\"");
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
}

/// Polls `check` until it returns true or `timeout` passes; returns whether it did.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A valid event for tests: `player_score` every third, with a score.
pub fn sample_event(i: usize, players: usize, games: usize) -> gamestream::event::Event {
    use chrono::TimeZone;
    let event_type = ["player_level_up", "player_score", "quest_completed"][i % 3];
    let data = if event_type == "player_score" {
        format!(r#"{{"score":{}}}"#, i % 97)
    } else {
        format!(r#"{{"level":{i}}}"#)
    };
    let score = if event_type == "player_score" {
        gamestream::event::Score::Integer((i % 97) as i64)
    } else {
        gamestream::event::Score::Absent
    };
    gamestream::event::Event {
        event_id: uuid::Uuid::new_v4(),
        event_type: event_type.to_owned(),
        player_id: format!("player-{}", i % players),
        game_id: format!("game-{}", i % games),
        timestamp: chrono::Utc
            .timestamp_opt(1_700_000_000 + i as i64, 0)
            .single()
            .expect("valid time"),
        ingested_at: chrono::Utc
            .timestamp_opt(1_700_000_001 + i as i64, 0)
            .single()
            .expect("valid time"),
        data,
        score,
    }
}

/// A raw record to produce: key and value bytes.
pub struct RawRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl RawRecord {
    pub fn of(event: &gamestream::event::Event) -> Self {
        Self {
            key: event.player_id.clone().into_bytes(),
            value: event.to_record_value(),
        }
    }
}

/// Produces records straight to `topic`, partitioned by key as our producer does,
/// in chunks; returns the number produced per partition.
pub async fn produce_raw(config: &Config, topic: &str, records: &[RawRecord]) -> Vec<usize> {
    use rskafka::client::partition::{Compression, UnknownTopicHandling};
    let client = kafka::connect(&config.kafka).await.expect("kafka");
    let partitions = kafka::partition_count(&client, topic)
        .await
        .expect("topic exists");
    let mut per_partition: Vec<Vec<rskafka::record::Record>> =
        (0..partitions).map(|_| Vec::new()).collect();
    for r in records {
        let p = kafka::partition_for_key(&r.key, partitions) as usize;
        per_partition[p].push(rskafka::record::Record {
            key: Some(r.key.clone()),
            value: Some(r.value.clone()),
            headers: Default::default(),
            timestamp: chrono::Utc::now(),
        });
    }
    let mut counts = Vec::new();
    for (p, records) in per_partition.into_iter().enumerate() {
        counts.push(records.len());
        let pc = client
            .partition_client(topic.to_owned(), p as i32, UnknownTopicHandling::Retry)
            .await
            .expect("partition");
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for record in records {
            bytes += record.approximate_size();
            chunk.push(record);
            if bytes > 512 * 1024 {
                pc.produce(std::mem::take(&mut chunk), Compression::NoCompression)
                    .await
                    .expect("produce");
                bytes = 0;
            }
        }
        if !chunk.is_empty() {
            pc.produce(chunk, Compression::NoCompression)
                .await
                .expect("produce");
        }
    }
    counts
}

/// The high watermark of each partition of `topic` (from Fetch).
pub async fn high_watermarks(config: &Config, topic: &str) -> Vec<i64> {
    use rskafka::client::partition::UnknownTopicHandling;
    let client = kafka::connect(&config.kafka).await.expect("kafka");
    let partitions = kafka::partition_count(&client, topic)
        .await
        .expect("topic exists");
    let mut marks = Vec::new();
    for p in 0..partitions {
        let pc = client
            .partition_client(topic.to_owned(), p, UnknownTopicHandling::Retry)
            .await
            .expect("partition");
        let (_, hw) = pc.fetch_records(0, 1..1024, 10).await.expect("fetch");
        marks.push(hw);
    }
    marks
}

/// Every record of `topic`, all partitions, as (partition, offset, key, value, headers).
pub async fn consume_all(
    config: &Config,
    topic: &str,
) -> Vec<(i32, i64, Option<Vec<u8>>, Option<Vec<u8>>)> {
    use rskafka::client::partition::UnknownTopicHandling;
    let client = kafka::connect(&config.kafka).await.expect("kafka");
    let partitions = kafka::partition_count(&client, topic)
        .await
        .expect("topic exists");
    let mut out = Vec::new();
    for p in 0..partitions {
        let pc = client
            .partition_client(topic.to_owned(), p, UnknownTopicHandling::Retry)
            .await
            .expect("partition");
        let mut offset = 0;
        loop {
            let (records, hw) = pc
                .fetch_records(offset, 1..8 * 1024 * 1024, 50)
                .await
                .expect("fetch");
            for r in records {
                if r.offset >= offset {
                    out.push((p, r.offset, r.record.key, r.record.value));
                    offset = r.offset + 1;
                }
            }
            if offset >= hw {
                break;
            }
        }
    }
    out
}

/// The committed next offset of `sink` per partition.
pub async fn committed_offsets(pg: &sqlx::PgPool, sink: &str, topic: &str) -> Vec<(i32, i64)> {
    sqlx::query_as("SELECT partition, next_offset FROM sink_offsets WHERE sink = $1 AND topic = $2 ORDER BY partition")
        .bind(sink)
        .bind(topic)
        .fetch_all(pg)
        .await
        .expect("query offsets")
}

/// A private PostgreSQL server (own data dir, own port) for tests that stop and start
/// the database, which they cannot do to the shared stack.
pub struct PrivatePostgres {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl PrivatePostgres {
    const BIN: &'static str = "/usr/lib/postgresql/15/bin";

    fn as_postgres(program: &str) -> std::process::Command {
        // PostgreSQL refuses to run as root; the Debian package's `postgres` user can.
        if Self::as_root() {
            let mut cmd = std::process::Command::new("runuser");
            cmd.args(["-u", "postgres", "--", &format!("{}/{program}", Self::BIN)]);
            cmd
        } else {
            std::process::Command::new(format!("{}/{program}", Self::BIN))
        }
    }

    /// initdb + start on a free port, with a `gamestream` superuser (trust auth).
    pub fn start() -> Self {
        let pg = Self::init();
        pg.resume();
        pg
    }

    /// As [`PrivatePostgres::start`], with `ssl = on` and `server` as its certificate
    /// (plain connections are still accepted; the client's `sslmode` decides).
    pub fn start_with_tls(server: &tls::ServerCert) -> Self {
        let pg = Self::init();
        let data = pg.dir.path().join("data");
        std::fs::copy(&server.cert, data.join("server.crt")).expect("copy server.crt");
        std::fs::copy(&server.key, data.join("server.key")).expect("copy server.key");
        // The key must belong to the server's user and be readable by it alone.
        let run = |program: &str, args: &[&str]| {
            let status = std::process::Command::new(program)
                .args(args)
                .status()
                .unwrap_or_else(|e| panic!("{program}: {e}"));
            assert!(status.success(), "{program} {args:?}");
        };
        let (crt, key) = (
            data.join("server.crt").display().to_string(),
            data.join("server.key").display().to_string(),
        );
        run("chmod", &["600", &key]);
        if Self::as_root() {
            run("chown", &["postgres:postgres", &crt, &key]);
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(
            &mut conf,
            b"\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )
        .expect("write postgresql.conf");
        pg.resume();
        pg
    }

    fn as_root() -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false)
    }

    /// initdb on a free port, not started.
    fn init() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("gs-pg-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        std::process::Command::new("chmod")
            .args(["777", &dir.path().display().to_string()])
            .status()
            .expect("chmod");
        let data = dir.path().join("data");
        let status = Self::as_postgres("initdb")
            .args([
                "-D",
                &data.display().to_string(),
                "-U",
                "gamestream",
                "--auth=trust",
                "-E",
                "UTF8",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb");
        assert!(status.success(), "initdb failed");
        let port = free_port();
        Self { port, dir }
    }

    /// Starts (again) on the same port and data.
    pub fn resume(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("pg.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let status = Self::as_postgres("pg_ctl")
            .args([
                "-D",
                &data.display().to_string(),
                "-l",
                &log.display().to_string(),
                "-o",
                &options,
                "-w",
                "start",
            ])
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl start");
        assert!(status.success(), "private postgres did not start");
    }

    /// A connection to its `postgres` database as the `gamestream` superuser.
    pub async fn admin(&self) -> sqlx::PgConnection {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&format!(
            "postgres://gamestream@127.0.0.1:{}/postgres",
            self.port
        ))
        .await
        .expect("private postgres answers")
    }

    /// Creates the (empty) database `name`: a fresh server has only `postgres`.
    pub async fn create_database(&self, name: &str) {
        let mut admin = self.admin().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .expect("create database");
    }

    /// Kills the postmaster with SIGKILL (a crash: what the WAL has not flushed is
    /// lost; [`PrivatePostgres::resume`] then runs crash recovery), and waits until its
    /// backends, which notice the postmaster's death, are gone too.
    pub fn kill(&self) {
        let pid_file = self.dir.path().join("data/postmaster.pid");
        let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok())
        else {
            return;
        };
        // Its backends outlive it for a moment (until they notice), still attached to
        // the shared memory a new postmaster must find unused: wait for them too.
        let children: Vec<String> = std::process::Command::new("pgrep")
            .args(["-P", &pid.to_string()])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let alive = |p: &str| std::path::Path::new(&format!("/proc/{p}")).exists();
        while std::time::Instant::now() < deadline
            && (alive(&pid.to_string()) || children.iter().any(|c| alive(c)))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it (fast: connections are cut, as in a crash of the client's view).
    pub fn pause(&self) {
        let data = self.dir.path().join("data");
        let _ = Self::as_postgres("pg_ctl")
            .args([
                "-D",
                &data.display().to_string(),
                "-m",
                "fast",
                "-w",
                "stop",
            ])
            .stdout(Stdio::null())
            .status();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.pause();
    }
}

/// A loopback TCP port nobody listens on right now, below the ephemeral port range.
pub fn free_port() -> u16 {
    // Not bind(0): its ports come from the kernel's ephemeral range, which every
    // outgoing connection (each test opens many) also draws from, so one of them could
    // take the port before the child binds it ("Address already in use"). A random
    // port below that range is only ever taken by a bind; binding it checks it is free.
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (15_000, ephemeral_start.max(20_000));
    loop {
        let port = rand::random_range(low..high);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `deploy/local/kafka.sh`, which assembles Apache Kafka from Maven Central jars (cached)
/// and runs KRaft brokers.
pub fn kafka_sh() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/local/kafka.sh").to_owned()
}

/// How a private broker's client listener is secured.
#[derive(Debug, Clone, Default)]
pub struct BrokerSecurity {
    /// `PLAINTEXT` (default), `SASL_PLAINTEXT` or `SASL_SSL`.
    pub protocol: &'static str,
    /// SCRAM-SHA-512 users created at format time.
    pub users: Vec<(String, String)>,
}

/// An Apache Kafka broker of one test's own (KRaft, one combined node, its log in a
/// temporary directory), on free loopback ports, that the test may kill and start
/// again (the shared stack's broker must never be stopped). Its data survive
/// [`PrivateBroker::restart`], as on a real broker.
pub struct PrivateBroker {
    pub port: u16,
    controller_port: u16,
    child: Option<tokio::process::Child>,
    /// The node's config, data and logs (`server.log`), kept by `kafka.sh`.
    pub dir: tempfile::TempDir,
    security: BrokerSecurity,
}

impl PrivateBroker {
    /// Starts a PLAINTEXT broker and waits until it answers Kafka requests.
    pub async fn start() -> Self {
        Self::start_secured(BrokerSecurity::default()).await
    }

    /// As [`PrivateBroker::start`]; kept for the suites that ask for durable storage
    /// by name (Apache Kafka's log always is).
    pub async fn start_durable() -> Self {
        Self::start().await
    }

    /// A broker whose client listener uses `security` (`tls/` in its directory holds
    /// the CA and broker certificate `kafka.sh tls` made, for `SASL_SSL`).
    pub async fn start_secured(security: BrokerSecurity) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut broker = Self {
            port: free_port(),
            controller_port: free_port(),
            child: None,
            dir,
            security,
        };
        broker.restart().await;
        broker
    }

    /// `host:port` for `kafka.bootstrap_servers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The CA certificate the broker's TLS listener is signed with (`SASL_SSL` only).
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("tls/ca.crt")
    }

    /// Freezes the broker with SIGSTOP: connections stay open and nothing answers, as
    /// with a broker in a long pause or behind a partitioned network. [`Self::stop`]
    /// (SIGKILL) still ends it.
    pub fn freeze(&self) {
        if let Some(pid) = self.child.as_ref().and_then(tokio::process::Child::id) {
            let _ = std::process::Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status();
        }
    }

    /// Undoes [`Self::freeze`] (SIGCONT): the broker answers what waited meanwhile.
    pub fn thaw(&self) {
        if let Some(pid) = self.child.as_ref().and_then(tokio::process::Child::id) {
            signal(pid, "-CONT");
        }
    }

    /// Kills the broker with SIGKILL (like a crash) and waits until it is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the broker again on the same ports, with the same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        let protocol = if self.security.protocol.is_empty() {
            "PLAINTEXT"
        } else {
            self.security.protocol
        };
        let mut command = tokio::process::Command::new("bash");
        command
            .arg(kafka_sh())
            .arg("run")
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--port", &self.port.to_string()])
            .args(["--controller-port", &self.controller_port.to_string()])
            .args(["--security", protocol])
            // A killed node is back in the metadata quorum sooner.
            .args(["--set", "broker.session.timeout.ms=3000"])
            .args(["--set", "broker.heartbeat.interval.ms=500"])
            .args(["--heap", "384m"]);
        for (user, password) in &self.security.users {
            command.args(["--scram", &format!("{user}:{password}")]);
        }
        if protocol == "SASL_SSL" {
            command.arg("--tls-dir").arg(self.dir.path().join("tls"));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("kafka-sh.log"))
            .expect("broker log file");
        let log_err = log.try_clone().expect("broker log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .expect("cannot run deploy/local/kafka.sh");
        self.child = Some(child);
        let dir = self.dir.path().to_owned();
        let up = eventually(Duration::from_secs(90), || {
            let dir = dir.clone();
            async move {
                tokio::process::Command::new("bash")
                    .arg(kafka_sh())
                    .args(["wait", "--dir"])
                    .arg(&dir)
                    .args(["--timeout", "2"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await
                    .is_ok_and(|s| s.success())
            }
        })
        .await;
        assert!(
            up,
            "private Apache Kafka did not come up on {}; logs in {:?}",
            self.address(),
            self.dir.path()
        );
    }
}

/// A private Redis server (own port, no persistence) for tests that stop, restart or
/// flush Redis, which they must never do to the shared stack. Killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
    paused: bool,
    options: RedisOptions,
}

/// How a [`PrivateRedis`] is secured.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// TLS only (`--port 0 --tls-port`) with this certificate; clients need no certificate.
    pub tls: Option<tls::ServerCert>,
    /// `requirepass`: the default user's password.
    pub password: Option<String>,
    /// ACL users (`user` directives): name, password; each may run every command.
    pub users: Vec<(String, String)>,
}

impl PrivateRedis {
    /// How long a (re)started server may take to answer PING.
    const READY_TIMEOUT: Duration = Duration::from_secs(10);

    /// Starts an empty server on a free port.
    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    /// Starts an empty server on a free port, secured as `options` say.
    pub fn start_with(options: RedisOptions) -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
            paused: false,
            options,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut security: Vec<String> = Vec::new();
        match &self.options.tls {
            Some(server) => {
                let (cert, key) = (server.cert.display(), server.key.display());
                security.extend(
                    ["--port", "0", "--tls-port", &port]
                        .into_iter()
                        .map(str::to_owned),
                );
                security.extend([
                    "--tls-cert-file".to_owned(),
                    cert.to_string(),
                    "--tls-key-file".to_owned(),
                    key.to_string(),
                    // For client certificates, which are not asked for.
                    "--tls-ca-cert-file".to_owned(),
                    server.ca.display().to_string(),
                    "--tls-auth-clients".to_owned(),
                    "no".to_owned(),
                ]);
            }
            None => security.extend(["--port".to_owned(), port]),
        }
        if let Some(password) = &self.options.password {
            security.extend(["--requirepass".to_owned(), password.clone()]);
        }
        for (user, password) in &self.options.users {
            // One word per argument: redis-server joins them into the `user` directive.
            security.extend([
                "--user".to_owned(),
                user.clone(),
                "on".to_owned(),
                format!(">{password}"),
                "~*".to_owned(),
                "&*".to_owned(),
                "+@all".to_owned(),
            ]);
        }
        let child = std::process::Command::new("redis-server")
            .args(&security)
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server) starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Self::READY_TIMEOUT;
        while !self.ready() {
            assert!(
                std::time::Instant::now() < deadline,
                "private redis did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Plain and open: it answers PING. Otherwise (TLS, AUTH): it accepts connections.
    fn ready(&self) -> bool {
        let plain = self.options.tls.is_none()
            && self.options.password.is_none()
            && self.options.users.is_empty();
        if plain {
            self.answers_ping()
        } else {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        }
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Kills it (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        self.resume();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it and starts an empty one on the same port (a restart without persistence).
    pub fn restart_empty(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Freezes the process (SIGSTOP): connections stay open and nothing answers, as in
    /// a network partition. Data is kept.
    pub fn pause(&mut self) {
        if let Some(child) = &self.child {
            signal(child.id(), "-STOP");
            self.paused = true;
        }
    }

    /// Undoes [`PrivateRedis::pause`].
    pub fn resume(&mut self) {
        if let (Some(child), true) = (&self.child, self.paused) {
            signal(child.id(), "-CONT");
            self.paused = false;
        }
    }

    /// A connection to it.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("private redis answers")
    }
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every key matching `pattern` (SCAN, so it is safe on the shared server).
pub async fn scan_keys(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("scan");
        keys.extend(found);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// The partitions the daemon whose HTTP port is `port` holds, as its `/ready` says
/// (empty while it does not answer).
pub async fn held_partitions(port: u16) -> std::collections::BTreeSet<i64> {
    let url = format!("http://127.0.0.1:{port}/ready");
    let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(2), reqwest::get(&url)).await
    else {
        return Default::default();
    };
    let body: serde_json::Value = reply.json().await.unwrap_or_default();
    body["leases"]["partitions"]
        .as_object()
        .map(|m| m.keys().filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_default()
}
