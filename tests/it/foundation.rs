//! The foundation against the real stack: schema, topics, `check`, configuration
//! errors at the command line, and the health endpoints.

use std::time::Duration;

use crate::common::{Stack, TestEnv, create_database, unique_id};
use gamestream::sinks::postgres::{self, SchemaStatus};

async fn run(cmd: &mut tokio::process::Command) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("command finishes")
        .expect("command runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `gamestream` command against the stack with a fresh, empty database.
async fn bare(database: &str, args: &[&str]) -> tokio::process::Command {
    let stack = Stack::from_env();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gamestream"));
    cmd.env_clear()
        .envs(stack.env(database))
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args);
    cmd
}

#[tokio::test]
async fn migrations_apply_to_an_empty_database_and_reapply_as_a_no_op() {
    let database = format!("gs_test_{}", unique_id());
    create_database(&Stack::from_env(), &database).await;

    let (code, out, err) = run(&mut bare(&database, &["migrate"]).await).await;
    assert_eq!(code, 0, "{out}{err}");
    let migrations = gamestream::sinks::postgres::MIGRATOR.iter().count();
    assert!(
        out.contains(&format!("applied {migrations} migration(s)")),
        "{out}"
    );
    let (code, out, err) = run(&mut bare(&database, &["migrate"]).await).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("is up to date"),
        "second run is a no-op: {out}"
    );

    let config = gamestream::config::load(&gamestream::config::Sources {
        env: Stack::from_env().env(&database),
        ..Default::default()
    })
    .expect("config");
    let pool = postgres::connect(&config.postgres).await.expect("connect");
    assert_eq!(
        postgres::schema_status(&pool).await.expect("status"),
        SchemaStatus::UpToDate
    );
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("tables");
    for table in [
        "dlq_events",
        "events",
        "leaderboard_scores",
        "leaderboards",
        "player_statistics",
        "sink_offsets",
    ] {
        assert!(
            tables.iter().any(|t| t == table),
            "{table} missing from {tables:?}"
        );
    }
    let indexes: Vec<String> =
        sqlx::query_scalar("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'")
            .fetch_all(&pool)
            .await
            .expect("indexes");
    for column in [
        "(player_id)",
        "(game_id)",
        "(event_type)",
        "(event_timestamp)",
        "(game_id, period)",
        "(rank)",
        "(consumer_service)",
    ] {
        assert!(
            indexes.iter().any(|i| i.ends_with(column)),
            "no index on {column}: {indexes:#?}"
        );
    }
}

#[tokio::test]
async fn every_contract_query_runs_against_the_schema() {
    let env = TestEnv::new().await;
    sqlx::query(
        "INSERT INTO events (event_id, event_type, player_id, game_id, event_timestamp, ingested_at, data)
         VALUES (gen_random_uuid(), 'player_score', 'player-123', 'game-1', now(), now(), '{\"score\": 5}')",
    )
    .execute(&env.pg)
    .await
    .expect("insert event");
    sqlx::query("INSERT INTO player_statistics (player_id, total_events, event_breakdown) VALUES ('player-123', 1, '{\"player_score\": 1}')")
        .execute(&env.pg)
        .await
        .expect("insert stats");
    sqlx::query("INSERT INTO leaderboards (game_id, player_id, rank, score, period) VALUES ('game-1', 'player-123', 1, 5, 'alltime')")
        .execute(&env.pg)
        .await
        .expect("insert leaderboard");
    let queries: [&'static str; 6] = [
        "SELECT COUNT(*) FROM events",
        "SELECT * FROM events WHERE player_id = 'player-123' ORDER BY created_at DESC",
        "SELECT player_id, total_events, event_breakdown FROM player_statistics WHERE player_id = 'player-123'",
        "SELECT * FROM leaderboards WHERE game_id = 'game-1' ORDER BY rank LIMIT 10",
        "SELECT player_id, score FROM leaderboards WHERE period = 'alltime' ORDER BY score DESC LIMIT 100",
        "SELECT event_type, COUNT(*) FROM events GROUP BY event_type",
    ];
    for query in queries {
        let rows = sqlx::query(query)
            .fetch_all(&env.pg)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        assert_eq!(rows.len(), 1, "{query}");
    }
    let duplicate = sqlx::query(
        "INSERT INTO leaderboards (game_id, player_id, rank, score, period) VALUES ('game-1', 'player-123', 2, 6, 'hourly')",
    )
    .execute(&env.pg)
    .await;
    assert!(
        duplicate.is_err(),
        "period is limited to daily, weekly, alltime"
    );
}

#[tokio::test]
async fn topics_create_twice_is_fine() {
    let id = unique_id();
    let env = TestEnv::new().await;
    let topic_flags: Vec<String> = [
        "player_events",
        "processed_events",
        "statistics",
        "leaderboards",
        "dlq",
    ]
    .iter()
    .flat_map(|t| ["--set".to_owned(), format!("topics.{t}=\"x{id}.{t}\"")])
    .collect();
    let args: Vec<&str> = topic_flags
        .iter()
        .map(String::as_str)
        .chain(["topics", "create"])
        .collect();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gamestream"));
    cmd.env_clear().envs(env.child_env()).args(&args);
    let (code, out, err) = run(&mut cmd).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("created").count(), 5, "{out}");
    assert!(
        out.contains(&format!("created  x{id}.player_events (3 partitions, ")),
        "{out}"
    );
    assert!(
        out.contains(&format!("created  x{id}.leaderboards (1 partitions, ")),
        "{out}"
    );
    let (code, out, err) = run(&mut cmd).await;
    assert_eq!(code, 0, "second create is fine: {out}{err}");
    assert_eq!(out.matches("exists").count(), 5, "{out}");
}

#[tokio::test]
async fn check_names_a_stopped_redis_and_exits_1() {
    let env = TestEnv::new().await;
    let (code, out, err) = run(&mut env.command(&["check"])).await;
    assert_eq!(code, 0, "all services up: {out}{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains(" ok ")).count(),
        3,
        "{out}"
    );

    let closed = crate::common::free_port().to_string();
    let (code, out, _) = run(env.command(&["check"]).env("REDIS_PORT", &closed)).await;
    assert_eq!(code, 1, "{out}");
    let redis_line = out
        .lines()
        .find(|l| l.starts_with("redis"))
        .expect("a redis line");
    assert!(
        redis_line.contains("FAILED") && redis_line.contains(&format!("127.0.0.1:{closed}")),
        "{redis_line}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("kafka") && l.contains(" ok ")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("postgres") && l.contains(" ok ")),
        "{out}"
    );
}

#[tokio::test]
async fn serve_refuses_a_database_that_is_not_migrated() {
    let database = format!("gs_test_{}", unique_id());
    create_database(&Stack::from_env(), &database).await;
    let (code, out, err) =
        run(&mut bare(&database, &["--set", "http.port=0", "serve"]).await).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("is not migrated") && err.contains("gamestream migrate"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_configuration_exits_2_listing_every_problem() {
    let (code, out, err) = run(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_gamestream"))
            .env_clear()
            .env("DB_PORT", "not-a-port")
            .env("GAMESTREAM_LOGGER__LINGER", "soonish")
            .env("DB_PASSWORD", "hunter2-secret")
            .args(["--set", "no.such_key=1", "check"]),
    )
    .await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("3 problems"), "{err}");
    assert!(
        err.contains("env DB_PORT")
            && err.contains("env GAMESTREAM_LOGGER__LINGER")
            && err.contains("no.such_key"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "a secret leaked: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_metrics_and_unknown_paths() {
    let env = TestEnv::new().await;
    let shutdown = gamestream::shutdown::Shutdown::new();
    let running = gamestream::daemon::start(env.config.clone(), false, shutdown.clone())
        .await
        .expect("daemon starts");
    let base = format!("http://{}", running.http_addr);
    let client = reqwest::Client::new();

    let health = client
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    let ready = client
        .get(format!("{base}/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["checks"]["postgres"], "ok", "{body}");
    assert_eq!(body["checks"]["redis"], "ok", "{body}");
    assert_eq!(body["checks"]["kafka"], "ok", "{body}");

    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("gamestream_sink_committed_offset")
            || metrics.contains("gamestream_partitions_owned"),
        "{metrics}"
    );

    let missing = client
        .get(format!("{base}/no/such/path"))
        .send()
        .await
        .expect("404");
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.expect("json error");
    assert_eq!(body["status"], "error");

    shutdown.trigger();
    running.stop().await;
}

#[test]
fn readme_documents_every_setting() {
    let readme = include_str!("../../README.md");
    let mut section = String::new();
    for line in gamestream::config::DEFAULT_TOML.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, _)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
            let key = key.trim();
            let path = if section.is_empty() {
                key.to_owned()
            } else {
                format!("{section}.{key}")
            };
            assert!(
                readme.contains(&format!("`{path}`")),
                "README does not document `{path}`"
            );
        }
    }
    for (env, _) in gamestream::config::CONTRACT_ENV {
        assert!(
            readme.contains(&format!("`{env}`")),
            "README does not document {env}"
        );
    }
}
