//! TLS to PostgreSQL and Redis, and AUTH to Redis, against private servers whose
//! certificates a CA of the test's own (openssl) signed: verified connections work end to
//! end (migrations, the Redis sinks, a rebuild, the query API); a wrong CA, a wrong host
//! name and a wrong password are refused with errors that say what is wrong, name the
//! setting to look at, and never show the password.

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use gamestream::config::{self, Config, PostgresConfig, RedisConfig, Secret, Sources, SslMode};
use gamestream::daemon;
use gamestream::event::Event;
use gamestream::shutdown::Shutdown;
use gamestream::sinks::{postgres, redis as gs_redis};
use serde_json::Value;

use crate::common::analytics::{Expected, REDIS_SINKS, mixed_event, wait_all_caught_up};
use crate::common::tls::{ServerCert, TestCa};
use crate::common::{
    PrivatePostgres, PrivateRedis, RawRecord, RedisOptions, Stack, TestEnv, produce_raw,
};

/// Distinctive, so that a leak into an error or a log line is found by a substring test.
const PASSWORD: &str = "Tls-Test-Pa55-q7Zr";
const WRONG_PASSWORD: &str = "Wrong-Pa55-k2Xv";
const PG_DATABASE: &str = "gs_tls";

/// The defaults, pointed at the shared stack (each test then changes one store).
fn base_config() -> Config {
    config::load(&Sources {
        file: None,
        env: Stack::from_env().env(PG_DATABASE),
        overrides: Vec::new(),
    })
    .expect("valid configuration")
}

/// Runs the `gamestream` binary with only `env` (and PATH); its exit code and its
/// stdout and stderr together.
async fn gamestream(args: &[&str], env: &[(String, String)]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gamestream"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run gamestream");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn set(env: &mut Vec<(String, String)>, name: &str, value: &str) {
    env.retain(|(k, _)| k != name);
    env.push((name.to_owned(), value.to_owned()));
}

// ------------------------------------------------------------------------ PostgreSQL

/// A private PostgreSQL with `ssl = on` and a certificate for `names`, and its database.
async fn tls_postgres(server: &ServerCert) -> PrivatePostgres {
    let pg = PrivatePostgres::start_with_tls(server);
    pg.create_database(PG_DATABASE).await;
    pg
}

/// `sslmode = verify-full` to `host` on the private server, trusting `root_cert`.
fn verify_full(pg: &PrivatePostgres, host: &str, root_cert: &Path) -> PostgresConfig {
    let mut config = base_config().postgres;
    config.host = host.to_owned();
    config.port = pg.port;
    config.user = "gamestream".to_owned();
    config.password = Secret::default();
    config.sslmode = SslMode::VerifyFull;
    config.ssl_root_cert = root_cert.display().to_string();
    config.acquire_timeout = Duration::from_secs(5);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_with_the_test_ca_migrates_and_queries() {
    let mut ca = TestCa::new("gamestream test CA");
    let pg = tls_postgres(&ca.issue(&["localhost", "127.0.0.1"])).await;
    // A DNS name and an IP address, each checked against the certificate's names.
    for host in ["localhost", "127.0.0.1"] {
        let config = verify_full(&pg, host, &ca.cert_file());
        let pool = postgres::connect(&config)
            .await
            .unwrap_or_else(|e| panic!("verify-full to {host}: {e}"));
        postgres::migrate(&pool).await.expect("migrations apply");
        postgres::require_migrated(&pool, PG_DATABASE)
            .await
            .expect("migrated");
        let (ssl, version): (bool, String) =
            sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&pool)
                .await
                .expect("pg_stat_ssl");
        assert!(ssl, "{host}: the connection is not TLS");
        assert!(version.starts_with("TLSv1."), "{host}: {version}");
        let players: i64 = sqlx::query_scalar("SELECT count(*) FROM player_statistics")
            .fetch_one(&pool)
            .await
            .expect("a table of the migrations");
        assert_eq!(players, 0);
        pool.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wrong_ca_is_refused_as_a_certificate_problem() {
    let mut ca = TestCa::new("gamestream test CA");
    let other = TestCa::new("another CA");
    let pg = tls_postgres(&ca.issue(&["localhost", "127.0.0.1"])).await;
    let config = verify_full(&pg, "localhost", &other.cert_file());
    let error = postgres::connect(&config)
        .await
        .expect_err("a certificate from a CA not trusted")
        .to_string();
    println!("wrong CA: {error}");
    assert!(
        error.contains("invalid peer certificate: UnknownIssuer"),
        "{error}"
    );
    assert!(
        error.contains(&format!("postgres localhost:{}/{PG_DATABASE}", pg.port)),
        "{error}"
    );
    assert!(
        error.contains("`postgres.ssl_root_cert` (GAMESTREAM_POSTGRES__SSL_ROOT_CERT)")
            && error.contains(&other.cert_file().display().to_string()),
        "{error}"
    );

    // What the binary prints: the same, and exit 1.
    let mut env = Stack::from_env().env(PG_DATABASE);
    set(&mut env, "DB_HOST", "localhost");
    set(&mut env, "DB_PORT", &pg.port.to_string());
    set(&mut env, "GAMESTREAM_POSTGRES__SSLMODE", "verify-full");
    set(
        &mut env,
        "GAMESTREAM_POSTGRES__SSL_ROOT_CERT",
        &other.cert_file().display().to_string(),
    );
    let (code, output) = gamestream(&["migrate"], &env).await;
    println!("gamestream migrate: {output}");
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("UnknownIssuer") && output.contains("postgres.ssl_root_cert"),
        "{output}"
    );

    // A missing CA file is named as such before any connection.
    let mut missing = config.clone();
    missing.ssl_root_cert = "/nonexistent/ca.crt".to_owned();
    let error = postgres::connect(&missing)
        .await
        .expect_err("no such file")
        .to_string();
    assert!(
        error.contains("`postgres.ssl_root_cert`") && error.contains("/nonexistent/ca.crt"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wrong_host_name_is_refused() {
    let mut ca = TestCa::new("gamestream test CA");
    // Signed by the trusted CA, but for another name than the ones connected to.
    let pg = tls_postgres(&ca.issue(&["db.gamestream.internal"])).await;
    for host in ["localhost", "127.0.0.1"] {
        let config = verify_full(&pg, host, &ca.cert_file());
        let error = postgres::connect(&config)
            .await
            .expect_err("a certificate for another name")
            .to_string();
        println!("wrong host {host}: {error}");
        assert!(
            error.contains("invalid peer certificate: certificate not valid for name")
                && error.contains(host)
                && error.contains("db.gamestream.internal"),
            "{error}"
        );
        assert!(
            error.contains(&format!(
                "not valid for host `{host}`: `postgres.host` (DB_HOST)"
            )),
            "{error}"
        );
    }
    // verify-ca checks the chain only: the same server is accepted.
    let mut config = verify_full(&pg, "localhost", &ca.cert_file());
    config.sslmode = SslMode::VerifyCa;
    postgres::connect(&config)
        .await
        .expect("verify-ca does not check the name");
}

// ----------------------------------------------------------------------------- Redis

/// A private Redis, TLS only, with a certificate for `names` and `requirepass`.
fn tls_redis(server: ServerCert, users: &[(&str, &str)]) -> PrivateRedis {
    PrivateRedis::start_with(RedisOptions {
        tls: Some(server),
        password: Some(PASSWORD.to_owned()),
        users: users
            .iter()
            .map(|(u, p)| ((*u).to_owned(), (*p).to_owned()))
            .collect(),
    })
}

/// `redis.tls` to `host` on the private server, trusting `ca_file`, with `password`.
fn redis_tls_config(
    redis: &PrivateRedis,
    host: &str,
    ca_file: &Path,
    password: &str,
) -> RedisConfig {
    let mut config = base_config().redis;
    config.host = host.to_owned();
    config.port = redis.port;
    config.tls = true;
    config.ca_file = ca_file.display().to_string();
    config.password = Secret::new(password);
    config.timeout = Duration::from_secs(5);
    config
}

/// A SET and a GET through a pooled connection.
async fn write_and_read(pool: &gs_redis::RedisPool, key: &str) {
    let mut conn = gs_redis::connection(pool, Duration::from_secs(5))
        .await
        .expect("a pooled connection");
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("over tls")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let value: String = redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(value, "over tls");
}

async fn refused(config: &RedisConfig) -> String {
    let error = gs_redis::connect(config)
        .await
        .err()
        .unwrap_or_else(|| panic!("{}:{} accepted", config.host, config.port))
        .to_string();
    assert!(
        !error.contains(PASSWORD) && !error.contains(WRONG_PASSWORD),
        "a password in the error: {error}"
    );
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_with_password_connects_and_writes_through_the_pool() {
    let mut ca = TestCa::new("gamestream test CA");
    let redis = tls_redis(ca.issue(&["localhost", "127.0.0.1"]), &[]);
    for host in ["localhost", "127.0.0.1"] {
        let config = redis_tls_config(&redis, host, &ca.cert_file(), PASSWORD);
        let pool = gs_redis::connect(&config)
            .await
            .unwrap_or_else(|e| panic!("TLS to {host}: {e}"));
        write_and_read(&pool, &format!("tls-test:{host}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_acl_user_and_wrong_passwords_over_tls() {
    let mut ca = TestCa::new("gamestream test CA");
    let redis = tls_redis(ca.issue(&["localhost"]), &[("gs-app", PASSWORD)]);
    let ok = redis_tls_config(&redis, "localhost", &ca.cert_file(), PASSWORD);

    let mut user = ok.clone();
    user.username = "gs-app".to_owned();
    let pool = gs_redis::connect(&user).await.expect("the ACL user");
    write_and_read(&pool, "tls-test:acl").await;

    for username in ["", "gs-app"] {
        let mut wrong = ok.clone();
        wrong.username = username.to_owned();
        wrong.password = Secret::new(WRONG_PASSWORD);
        let error = refused(&wrong).await;
        println!("wrong password (user `{username}`): {error}");
        assert!(
            error.contains(&format!("redis localhost:{} (TLS)", redis.port))
                && error.contains("Password authentication failed")
                && error.contains("AUTH refused: check `redis.username`")
                && error.contains("REDIS_PASSWORD"),
            "{error}"
        );
    }
    let mut none = ok.clone();
    none.password = Secret::default();
    let error = refused(&none).await;
    println!("no password: {error}");
    assert!(
        error.contains("NOAUTH") && error.contains("the server requires AUTH"),
        "{error}"
    );

    // The binary, configured by the contract's REDIS_PASSWORD and the GAMESTREAM_ names:
    // `check` passes with the password, names the setting without it, and neither
    // its output nor its debug log shows a password.
    let mut env = Stack::from_env().env("gamestream");
    set(&mut env, "REDIS_HOST", "localhost");
    set(&mut env, "REDIS_PORT", &redis.port.to_string());
    set(&mut env, "GAMESTREAM_REDIS__TLS", "true");
    set(
        &mut env,
        "GAMESTREAM_REDIS__CA_FILE",
        &ca.cert_file().display().to_string(),
    );
    set(&mut env, "RUST_LOG", "debug");
    set(&mut env, "REDIS_PASSWORD", PASSWORD);
    let (code, output) = gamestream(&["check"], &env).await;
    let redis_line = output
        .lines()
        .find(|l| l.starts_with("redis "))
        .unwrap_or("");
    assert!(redis_line.contains(" ok "), "{output}");
    assert_eq!(code, 0, "{output}");
    assert!(!output.contains(PASSWORD), "the password in the output");

    set(&mut env, "REDIS_PASSWORD", WRONG_PASSWORD);
    let (code, output) = gamestream(&["check"], &env).await;
    let redis_line = output
        .lines()
        .find(|l| l.starts_with("redis "))
        .unwrap_or("");
    println!("gamestream check: {redis_line}");
    assert_eq!(code, 1, "{output}");
    assert!(
        redis_line.contains("FAILED") && redis_line.contains("AUTH refused"),
        "{output}"
    );
    assert!(
        !output.contains(WRONG_PASSWORD) && !output.contains(PASSWORD),
        "a password in the output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_wrong_ca_is_refused_as_a_certificate_problem() {
    let mut ca = TestCa::new("gamestream test CA");
    let other = TestCa::new("another CA");
    let redis = tls_redis(ca.issue(&["localhost", "127.0.0.1"]), &[]);
    let config = redis_tls_config(&redis, "localhost", &other.cert_file(), PASSWORD);
    let error = refused(&config).await;
    println!("wrong CA: {error}");
    assert!(
        error.contains("invalid peer certificate: UnknownIssuer")
            && error.contains(&format!("redis localhost:{} (TLS)", redis.port))
            && error.contains("`redis.ca_file` (GAMESTREAM_REDIS__CA_FILE)")
            && error.contains(&other.cert_file().display().to_string()),
        "{error}"
    );
    // Without a CA file only Mozilla's roots are trusted, and say so.
    let mut roots_only = config.clone();
    roots_only.ca_file = String::new();
    let error = refused(&roots_only).await;
    println!("no CA file: {error}");
    assert!(
        error.contains("UnknownIssuer") && error.contains("now empty: Mozilla's roots only"),
        "{error}"
    );
    // A CA file that is missing or holds no certificate is named.
    let mut missing = config.clone();
    missing.ca_file = "/nonexistent/redis-ca.crt".to_owned();
    let error = refused(&missing).await;
    assert!(
        error.contains("`redis.ca_file`") && error.contains("/nonexistent/redis-ca.crt"),
        "{error}"
    );
    let not_pem = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(not_pem.path(), "not a certificate\n").expect("write");
    let mut garbage = config.clone();
    garbage.ca_file = not_pem.path().display().to_string();
    let error = refused(&garbage).await;
    assert!(error.contains("no PEM certificate"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_wrong_host_name_is_refused() {
    let mut ca = TestCa::new("gamestream test CA");
    // For localhost only: 127.0.0.1 is not one of its names.
    let redis = tls_redis(ca.issue(&["localhost"]), &[]);
    let config = redis_tls_config(&redis, "127.0.0.1", &ca.cert_file(), PASSWORD);
    let error = refused(&config).await;
    println!("wrong host: {error}");
    assert!(
        error.contains("invalid peer certificate: certificate not valid for name")
            && error.contains("127.0.0.1")
            && error.contains("not valid for host `127.0.0.1`: `redis.host` (REDIS_HOST)"),
        "{error}"
    );
    // The right name works on the same server.
    let mut right = config.clone();
    right.host = "localhost".to_owned();
    gs_redis::connect(&right)
        .await
        .expect("localhost is its name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_setting_that_does_not_match_the_port_is_named() {
    let mut ca = TestCa::new("gamestream test CA");
    // TLS to a plain port: what comes back is not TLS.
    let plain = PrivateRedis::start();
    let config = redis_tls_config(&plain, "localhost", &ca.cert_file(), "");
    let error = refused(&config).await;
    println!("TLS to a plain port: {error}");
    assert!(
        error.contains("timed out") && error.contains("must be its tls-port"),
        "{error}"
    );
    // Plain to a TLS port: refused (the server drops it), not hung.
    let tls = tls_redis(ca.issue(&["localhost"]), &[]);
    let mut config = redis_tls_config(&tls, "localhost", &ca.cert_file(), PASSWORD);
    config.tls = false;
    config.ca_file = String::new();
    let error = refused(&config).await;
    println!("plain to a TLS port: {error}");
    assert!(
        error.contains(&format!("redis localhost:{}", tls.port))
            && error.contains("does it expect TLS on this port? Then set `redis.tls`"),
        "{error}"
    );
}

/// The daemon on a TLS Redis with AUTH: the Redis sinks initialise and write through it,
/// the query API reads from it, and after a FLUSHALL the sinks rebuild it from Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_feeds_the_sinks_the_rebuild_and_the_query_api() {
    let mut ca = TestCa::new("gamestream test CA");
    let redis = tls_redis(ca.issue(&["localhost", "127.0.0.1"]), &[]);
    let port = redis.port.to_string();
    let ca_file = format!("\"{}\"", ca.cert_file().display());
    let password = format!("\"{PASSWORD}\"");
    let env = TestEnv::with_overrides(&[
        ("mode", "\"consume\""),
        ("consumer.fetch_max_bytes", "32768"),
        ("stats.linger", "\"50ms\""),
        ("leaderboard.linger", "\"50ms\""),
        ("consumer.retry_max_backoff", "\"500ms\""),
        ("redis.host", "\"localhost\""),
        ("redis.port", &port),
        ("redis.tls", "true"),
        ("redis.ca_file", &ca_file),
        ("redis.password", &password),
    ])
    .await;
    let now = Utc::now();
    let first: Vec<Event> = (0..2_000).map(|i| mixed_event(i, 40, 3, now)).collect();
    produce(&env, &first).await;
    let shutdown = Shutdown::new();
    let running = daemon::start(env.config.clone(), false, shutdown.clone())
        .await
        .expect("daemon starts on TLS Redis");

    let pool = gs_redis::connect(&env.config.redis)
        .await
        .expect("TLS Redis");
    let mut conn = gs_redis::connection(&pool, Duration::from_secs(5))
        .await
        .expect("a pooled connection");
    assert!(
        wait_all_caught_up(&env, &mut conn, Duration::from_secs(90)).await,
        "the Redis sinks did not catch up over TLS"
    );
    let base = format!("http://{}/api/v1", running.http_addr);
    let client = reqwest::Client::new();
    let expected = Expected::of(&first);
    assert_stats_from_redis(&client, &base, &expected).await;

    // FLUSHALL: the sinks notice the lost marker and rebuild from Postgres, over TLS.
    let before: Vec<Option<String>> = markers(&env, &mut conn).await;
    assert!(before.iter().all(Option::is_some), "{before:?}");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("FLUSHALL (private redis)");
    let second: Vec<Event> = (2_000..3_000).map(|i| mixed_event(i, 40, 3, now)).collect();
    produce(&env, &second).await;
    let caught_up = wait_all_caught_up(&env, &mut conn, Duration::from_secs(90)).await;
    let after = markers(&env, &mut conn).await;
    let all: Vec<Event> = first.into_iter().chain(second).collect();
    let answers = stats_from_redis(&client, &base, &Expected::of(&all)).await;
    shutdown.trigger();
    running.stop().await;
    assert!(caught_up, "did not catch up after FLUSHALL");
    for ((sink, before), after) in REDIS_SINKS.iter().zip(&before).zip(&after) {
        let text = after.clone().unwrap_or_default();
        assert!(
            after != before && text.contains("rebuilt from postgres"),
            "{sink}: {before:?} → {after:?}"
        );
    }
    answers.expect("the query API answers from Redis after the rebuild");
}

async fn produce(env: &TestEnv, events: &[Event]) {
    let records: Vec<_> = events.iter().map(RawRecord::of).collect();
    produce_raw(&env.config, &env.config.topics.player_events, &records).await;
}

/// The marker of each Redis sink's offsets hash (changes with every rebuild).
async fn markers(
    env: &TestEnv,
    conn: &mut redis::aio::MultiplexedConnection,
) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for sink in REDIS_SINKS {
        let marker: Option<String> = redis::cmd("HGET")
            .arg(format!(
                "{}gamestream:offsets:{sink}:{}",
                env.config.redis.key_prefix, env.config.topics.player_events
            ))
            .arg("initialised_at")
            .query_async(conn)
            .await
            .expect("HGET");
        out.push(marker);
    }
    out
}

/// `GET /players/{id}/stats` of every player: each answered from Redis with the expected
/// total. Err names the first player that was not.
async fn stats_from_redis(
    client: &reqwest::Client,
    base: &str,
    expected: &Expected,
) -> Result<(), String> {
    for player in expected.breakdown.keys() {
        let response = client
            .get(format!("{base}/players/{player}/stats"))
            .send()
            .await
            .map_err(|e| format!("{player}: {e}"))?;
        let status = response.status().as_u16();
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("{player}: {e}"))?;
        let want = (200, "redis", expected.total(player));
        let got = (
            status,
            body["source"].as_str().unwrap_or(""),
            body["total_events"].as_i64().unwrap_or(-1),
        );
        if got != want {
            return Err(format!("{player}: {body} (want {want:?})"));
        }
    }
    Ok(())
}

async fn assert_stats_from_redis(client: &reqwest::Client, base: &str, expected: &Expected) {
    stats_from_redis(client, base, expected)
        .await
        .expect("the query API answers from Redis");
}
