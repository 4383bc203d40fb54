//! The integration-test harness: real Postgres, Redis and broker from the local stack
//! (`deploy/local/stack.sh up`, which `make test` runs first).
//!
//! Each [`TestEnv`] isolates itself so tests run in parallel and re-run without cleanup:
//! its own database (created and migrated), its own topic names (created), its own
//! Redis key prefix. A test never passes silently without its services: if the stack
//! is not up, [`TestEnv::new`] panics saying how to start it.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::process::Stdio;
use std::time::Duration;

pub mod ingest;

use gamestream::config::{self, Config, Sources};
use gamestream::sinks::{kafka, postgres};

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
    pub id: String,
    pub stack: Stack,
    pub database: String,
    /// `--set` overrides that isolate this env (topics, key prefix), for config and children.
    pub overrides: Vec<(String, String)>,
    pub config: Config,
    pub pg: sqlx::PgPool,
}

const NOT_UP: &str =
    "the local stack is not up: run `make test` (which starts it) or `deploy/local/stack.sh up`";

impl TestEnv {
    /// A fresh database (migrated), fresh topics (created) and a fresh Redis key prefix.
    pub async fn new() -> Self {
        Self::with_overrides(&[]).await
    }

    /// As [`TestEnv::new`], with extra settings (`("logger.batch_size", "10")`).
    pub async fn with_overrides(extra: &[(&str, &str)]) -> Self {
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
        postgres::migrate(&pg).await.expect("migrations apply");
        let client = kafka::connect(&config.kafka)
            .await
            .unwrap_or_else(|e| panic!("{NOT_UP}: {e}"));
        kafka::create_topics(&client, &config.topics)
            .await
            .expect("topics are created");
        Self {
            id,
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

/// Creates a database on the stack (the stack's role has CREATEDB).
pub async fn create_database(stack: &Stack, database: &str) {
    let url = format!(
        "postgres://{}:{}@{}:{}/{}",
        stack.pg_user, stack.pg_password, stack.pg_host, stack.pg_port, stack.pg_admin_db
    );
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

/// A tansu broker of one test's own, on a free loopback port with in-memory storage,
/// that the test may stop and start again (the shared stack's broker must never be
/// stopped). Memory storage forgets everything on restart, topics included.
pub struct PrivateBroker {
    pub port: u16,
    child: Option<tokio::process::Child>,
    /// Working directory (tansu reads a `.env` from it) and log file.
    dir: tempfile::TempDir,
}

impl PrivateBroker {
    /// Starts a broker and waits until it answers Kafka requests.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut broker = Self {
            port,
            child: None,
            dir,
        };
        broker.restart().await;
        broker
    }

    /// `host:port` for `kafka.bootstrap_servers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (like a crash) and waits until it is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the broker again on the same port (with empty storage).
    pub async fn restart(&mut self) {
        self.stop().await;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .expect("broker log file");
        let log_err = log.try_clone().expect("broker log file");
        let child = tokio::process::Command::new(tansu_binary())
            .current_dir(self.dir.path())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("SCHEMA_REGISTRY")
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .args([
                "broker",
                "--cluster-id",
                "gamestream-test",
                "--storage-engine",
                "memory://tansu/",
            ])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tansu ({}): {e}", tansu_binary()));
        self.child = Some(child);
        let address = self.address();
        let up = eventually(Duration::from_secs(30), || {
            let address = address.clone();
            async move {
                let build = rskafka::client::ClientBuilder::new(vec![address]).build();
                match tokio::time::timeout(Duration::from_secs(2), build).await {
                    Ok(Ok(client)) => client.list_topics().await.is_ok(),
                    _ => false,
                }
            }
        })
        .await;
        assert!(
            up,
            "private tansu did not come up on {}; log in {:?}",
            self.address(),
            self.dir.path()
        );
    }
}

/// The tansu binary: `$TANSU`, else `~/.cargo/bin/tansu`, else `tansu` on PATH.
fn tansu_binary() -> String {
    if let Ok(path) = std::env::var("TANSU") {
        return path;
    }
    let home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let cargo_bin = format!("{home}/bin/tansu");
    if std::path::Path::new(&cargo_bin).exists() {
        cargo_bin
    } else {
        "tansu".to_owned()
    }
}
