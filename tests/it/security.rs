//! Security review checks: no configured secret in logs, metrics, HTTP error bodies or
//! command errors of a full run; every SQL statement binds its values; header limits.
//!
//! The secrets are real: a private PostgreSQL that requires a password (scram), a
//! private Redis with `requirepass`, an API key; the Kafka password is set too (the
//! shared broker has no SASL, so it is configured and unused).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::common::ingest::TestServer;
use crate::common::{
    PrivatePostgres, PrivateRedis, RawRecord, TestEnv, eventually, free_port, produce_raw,
    unique_id,
};

/// Every secret of one run, and wrong ones tried on purpose.
struct Secrets {
    pg: String,
    redis: String,
    kafka: String,
    api_key: String,
    wrong_pg: String,
    wrong_redis: String,
}

impl Secrets {
    fn new() -> Self {
        let secret = |what: &str| format!("{what}S3cr3t{}", unique_id());
        Self {
            pg: secret("pg"),
            redis: secret("redis"),
            kafka: secret("kafka"),
            api_key: secret("apikey"),
            wrong_pg: secret("wrongpg"),
            wrong_redis: secret("wrongredis"),
        }
    }

    fn all(&self) -> [(&'static str, &str); 6] {
        [
            ("postgres password", &self.pg),
            ("redis password", &self.redis),
            ("kafka password", &self.kafka),
            ("api key", &self.api_key),
            ("wrong postgres password", &self.wrong_pg),
            ("wrong redis password", &self.wrong_redis),
        ]
    }
}

/// Makes the private server ask for passwords over TCP (the socket stays trusted, so
/// the harness can still stop it) and gives the role `password`.
async fn require_password(pg: &PrivatePostgres, password: &str) {
    use sqlx::Connection;
    // One connection for every step: once the new rules are loaded, a new connection
    // without the password would be refused.
    pg.create_database("gs_security").await;
    let mut admin = pg.admin().await;
    // Utility statements take no parameters; the password is our own hex.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER ROLE gamestream PASSWORD '{password}'"
    )))
    .execute(&mut admin)
    .await
    .expect("alter role");
    let hba: String = sqlx::query_scalar("SHOW hba_file")
        .fetch_one(&mut admin)
        .await
        .expect("hba file");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "COPY (VALUES ('local all all trust'), ('host all all 127.0.0.1/32 scram-sha-256')) TO '{hba}'"
    )))
    .execute(&mut admin)
    .await
    .expect("write pg_hba.conf");
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut admin)
        .await
        .expect("reload");
    let _ = admin.close().await;
    let url = |pw: &str| {
        format!(
            "postgres://gamestream:{pw}@127.0.0.1:{}/gs_security",
            pg.port
        )
    };
    let refused = eventually(Duration::from_secs(10), || async {
        sqlx::PgPool::connect(&url("not-the-password"))
            .await
            .is_err()
    })
    .await;
    assert!(refused, "the private server must refuse a wrong password");
    sqlx::PgPool::connect(&url(password))
        .await
        .expect("the password is accepted");
}

/// A `gamestream` command with every secret configured and the private servers.
fn command(
    env: &TestEnv,
    pg: &PrivatePostgres,
    redis: &PrivateRedis,
    secrets: &Secrets,
    args: &[&str],
) -> tokio::process::Command {
    let mut cmd = env.command(args);
    cmd.env("DB_PORT", pg.port.to_string())
        .env("DB_NAME", "gs_security")
        .env("DB_PASSWORD", &secrets.pg)
        .env("REDIS_PORT", redis.port.to_string())
        .env("GAMESTREAM_REDIS__PASSWORD", &secrets.redis)
        .env("KAFKA_PASSWORD", &secrets.kafka)
        .env("GAMESTREAM_HTTP__API_KEYS", &secrets.api_key)
        .env("RUST_LOG", "debug")
        .env("RUST_BACKTRACE", "1");
    cmd
}

/// What a finished command printed, with its exit code.
async fn output(mut cmd: tokio::process::Command) -> (i32, String) {
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the command finishes")
        .expect("the command runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn assert_no_secret(secrets: &Secrets, what: &str, text: &str) {
    for (name, secret) in secrets.all() {
        if let Some(at) = text.find(secret) {
            let start = at.saturating_sub(200);
            panic!(
                "the {name} appears in {what}: …{}…",
                &text[start..(at + secret.len() + 100).min(text.len())]
            );
        }
    }
}

#[tokio::test]
async fn no_secret_in_logs_metrics_errors_or_failures() {
    let env = TestEnv::new().await;
    let secrets = Secrets::new();
    let pg = PrivatePostgres::start();
    require_password(&pg, &secrets.pg).await;
    let redis = PrivateRedis::start();
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(&secrets.redis)
        .query_async(&mut conn)
        .await
        .expect("requirepass");

    // A full run: migrate, serve, ingest, a poison record, metrics, SIGTERM.
    let (code, migrate) = output(command(&env, &pg, &redis, &secrets, &["migrate"])).await;
    assert_eq!(code, 0, "{migrate}");
    let port = free_port();
    let logs = tempfile::tempdir().expect("tempdir");
    let log_path = logs.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let port_flag = format!("http.port={port}");
    let mut daemon = command(&env, &pg, &redis, &secrets, &["--set", &port_flag, "serve"])
        .stdout(Stdio::from(log.try_clone().expect("log file")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("the daemon starts");
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let ready = eventually(Duration::from_secs(60), || async {
        http.get(url("/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(
        ready,
        "daemon not ready: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );

    let event = crate::common::ingest::event_json("player_score", "p-1", r#"{"score":5}"#);
    let mut bodies = String::new();
    let bearer = format!("Bearer {}", secrets.api_key);
    let wrong_bearer = format!("Bearer {}", secrets.wrong_pg);
    for (auth, body, want) in [
        (Some(bearer.as_str()), event.as_str(), 200),
        (None, event.as_str(), 401),
        (Some(wrong_bearer.as_str()), event.as_str(), 401),
        (Some(bearer.as_str()), "{\"event_type\":", 400),
        (Some(bearer.as_str()), "{\"event_type\":\"x\"}", 400),
    ] {
        let mut request = http
            .post(url("/api/v1/events"))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let answer = request.send().await.expect("an answer");
        assert_eq!(answer.status().as_u16(), want);
        bodies.push_str(&format!("{:?}\n", answer.headers()));
        bodies.push_str(&answer.text().await.expect("a body"));
    }
    for path in [
        "/ready",
        "/health",
        "/api/v1/players/nobody/stats",
        "/nowhere",
    ] {
        let answer = http.get(url(path)).send().await.expect("an answer");
        bodies.push_str(&answer.text().await.expect("a body"));
    }
    produce_raw(
        &env.config,
        &env.config.topics.player_events,
        &[RawRecord {
            key: b"p-1".to_vec(),
            value: b"not an event".to_vec(),
        }],
    )
    .await;
    let gs_pg = sqlx::PgPool::connect(&format!(
        "postgres://gamestream:{}@127.0.0.1:{}/gs_security",
        secrets.pg, pg.port
    ))
    .await
    .expect("private postgres");
    let consumed = eventually(Duration::from_secs(60), || async {
        let letters: i64 = sqlx::query_scalar("SELECT count(*) FROM dlq_events")
            .fetch_one(&gs_pg)
            .await
            .unwrap_or(0);
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&gs_pg)
            .await
            .unwrap_or(0);
        letters == 1 && events == 1
    })
    .await;
    assert!(consumed, "the event and the dead letter are stored");
    let metrics = http
        .get(url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    assert!(
        metrics.contains("gamestream_dead_letters_total"),
        "{metrics}"
    );

    let pid = daemon.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(60), daemon.wait())
        .await
        .expect("the daemon stops on SIGTERM")
        .expect("exit status");
    let daemon_log = std::fs::read_to_string(&log_path).expect("daemon log");
    assert!(exit.success(), "{daemon_log}");
    assert!(
        daemon_log.contains("dead-lettered"),
        "the consumer error is logged: {daemon_log}"
    );
    assert!(daemon_log.contains("DEBUG"), "debug logs were on");

    // Failed connections: wrong passwords; the daemon cannot start.
    let mut wrong = command(&env, &pg, &redis, &secrets, &["check"]);
    wrong
        .env("DB_PASSWORD", &secrets.wrong_pg)
        .env("GAMESTREAM_REDIS__PASSWORD", &secrets.wrong_redis);
    let (code, check_wrong) = output(wrong).await;
    assert_eq!(code, 1, "{check_wrong}");
    assert!(check_wrong.contains("FAILED"), "{check_wrong}");
    let mut wrong = command(&env, &pg, &redis, &secrets, &["serve"]);
    wrong.env("DB_PASSWORD", &secrets.wrong_pg);
    let (code, serve_wrong) = output(wrong).await;
    assert_ne!(code, 0, "{serve_wrong}");
    let (code, check_ok) = output(command(&env, &pg, &redis, &secrets, &["check"])).await;
    assert_eq!(code, 0, "{check_ok}");

    // Bad configuration, with secrets around and one under a misspelt name.
    let mut typo = command(&env, &pg, &redis, &secrets, &["check"]);
    typo.env("GAMESTREAM_POSTGRES__PASWORD", &secrets.pg);
    let (code, bad_env) = output(typo).await;
    assert_eq!(code, 2, "{bad_env}");
    let flag = format!("postgres.pasword={}", secrets.pg);
    let (code, bad_flag) = output(command(
        &env,
        &pg,
        &redis,
        &secrets,
        &["--set", &flag, "check"],
    ))
    .await;
    assert_eq!(code, 2, "{bad_flag}");
    let (code, bad_port) = output(command(
        &env,
        &pg,
        &redis,
        &secrets,
        &["--set", "http.port=high", "check"],
    ))
    .await;
    assert_eq!(code, 2, "{bad_port}");

    for (what, text) in [
        ("`migrate`", &migrate),
        ("the daemon's log", &daemon_log),
        ("HTTP bodies and headers", &bodies),
        ("/metrics", &metrics),
        ("`check` with wrong passwords", &check_wrong),
        ("`serve` with a wrong password", &serve_wrong),
        ("`check`", &check_ok),
        ("a misspelt setting in env", &bad_env),
        ("a misspelt setting in a flag", &bad_flag),
        ("a bad setting", &bad_port),
    ] {
        assert_no_secret(&secrets, what, text);
    }
    let config = gamestream::config::load(&gamestream::config::Sources {
        file: None,
        env: vec![
            ("DB_PASSWORD".into(), secrets.pg.clone()),
            ("KAFKA_PASSWORD".into(), secrets.kafka.clone()),
            ("GAMESTREAM_REDIS__PASSWORD".into(), secrets.redis.clone()),
            ("GAMESTREAM_HTTP__API_KEYS".into(), secrets.api_key.clone()),
        ],
        overrides: vec![],
    })
    .expect("config");
    assert_no_secret(
        &secrets,
        "the config's Debug form (what a panic would print)",
        &format!("{config:?} {config:#?}"),
    );
}

/// Every Rust source file under `dir`.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// SQL built from text: statements assembled with `format!` or `push_str`, or passed
/// through `AssertSqlSafe`. Each allowed one names what it interpolates and why that is
/// safe; anything else must bind its values ($1, $2, ...).
#[test]
fn every_sql_statement_binds_its_values() {
    const ALLOWED: &[(&str, &str)] = &[
        // Database names the benchmark generates itself, quoted as identifiers.
        ("src/bench/mod.rs", "CREATE DATABASE"),
        ("src/bench/mod.rs", "DROP DATABASE"),
        ("src/bench/mod.rs", "AssertSqlSafe(create)"),
        ("src/bench/mod.rs", "AssertSqlSafe(drop)"),
    ];
    const SQL: &[&str] = &[
        "SELECT ",
        "INSERT ",
        "UPDATE ",
        "DELETE ",
        "CREATE ",
        "DROP ",
        "ALTER ",
        "COPY ",
        "TRUNCATE ",
        "WITH ",
    ];
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() > 20, "found the sources");
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source");
        let name = file
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .expect("under the crate")
            .display()
            .to_string()
            .trim_start_matches('/')
            .to_owned();
        // A statement built at run time: the line that builds it and the next few.
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let builds = line.contains("format!(")
                || line.contains("push_str(")
                || line.contains("AssertSqlSafe(");
            if !builds {
                continue;
            }
            let window = lines[i..(i + 3).min(lines.len())].join(" ");
            let sql = line.contains("AssertSqlSafe(")
                || SQL.iter().any(|k| {
                    window.contains(&format!("\"{k}")) || window.contains(&format!("#\"{k}"))
                });
            if sql
                && !ALLOWED
                    .iter()
                    .any(|(f, what)| *f == name && window.contains(what))
            {
                found.push(format!("{name}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "SQL built from text (bind the values instead):\n{}",
        found.join("\n")
    );
}

#[tokio::test]
async fn oversized_headers_and_ids_are_refused() {
    let env = TestEnv::new().await;
    let server = TestServer::start(env.config.clone()).await;
    let event = crate::common::ingest::event_json("player_level_up", "p-1", "{}");
    let request = |extra: &str| {
        format!(
            "POST /api/v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{event}",
            event.len()
        )
    };
    let ok = server
        .raw(request("").as_bytes(), Duration::from_secs(30))
        .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let many: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = server
        .raw(request(&many).as_bytes(), Duration::from_secs(30))
        .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "101 headers: {answer}");
    let huge = format!("x-big: {}\r\n", "a".repeat(512 * 1024));
    let answer = server
        .raw(request(&huge).as_bytes(), Duration::from_secs(30))
        .await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "a 512 KiB header: {answer}"
    );
    server.stop().await;
}
