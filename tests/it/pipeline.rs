//! The consumer pipeline against real Postgres, Redis and the broker: exactly-once
//! rows, dead letters, crashes, graceful stop, and a database outage.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{
    RawRecord, TestEnv, committed_offsets, eventually, high_watermarks, produce_raw, sample_event,
};
use gamestream::config::{self, Sources};
use gamestream::daemon;
use gamestream::shutdown::Shutdown;

const LOGGER: &str = "event-logger";

type Time = chrono::DateTime<chrono::Utc>;
/// event_id, event_type, player_id, game_id, event_timestamp, ingested_at, data
type EventRow = (
    uuid::Uuid,
    String,
    String,
    String,
    Time,
    Time,
    serde_json::Value,
);
/// consumer_service, error_kind, error_message, topic, partition, offset, payload, original_event
type DeadLetterRow = (
    String,
    String,
    String,
    String,
    i32,
    i64,
    Vec<u8>,
    serde_json::Value,
);

async fn count(pg: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pg)
        .await
        .expect("count query")
}

/// Waits until the logger has committed every partition up to its high watermark.
async fn wait_until_committed(env: &TestEnv, pg: &sqlx::PgPool, timeout: Duration) -> bool {
    let topic = env.config.topics.player_events.clone();
    let marks = high_watermarks(&env.config, &topic).await;
    eventually(timeout, || async {
        let committed = committed_offsets(pg, LOGGER, &topic).await;
        marks
            .iter()
            .enumerate()
            .all(|(p, hw)| *hw == 0 || committed.iter().any(|(cp, o)| *cp == p as i32 && o == hw))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_lands_once_field_by_field() {
    let env =
        TestEnv::with_overrides(&[("mode", "\"consume\""), ("logger.batch_size", "500")]).await;
    let events: Vec<_> = (0..3000).map(|i| sample_event(i, 37, 5)).collect();
    let records: Vec<_> = events.iter().map(RawRecord::of).collect();
    let per_partition = produce_raw(&env.config, &env.config.topics.player_events, &records).await;
    assert_eq!(per_partition.len(), 3);
    assert!(per_partition.iter().all(|n| *n > 0), "{per_partition:?}");

    let shutdown = Shutdown::new();
    let running = daemon::start(env.config.clone(), false, shutdown.clone())
        .await
        .expect("daemon starts");
    assert!(
        wait_until_committed(&env, &env.pg, Duration::from_secs(60)).await,
        "logger did not catch up"
    );
    shutdown.trigger();
    assert_eq!(
        running.stop().await,
        gamestream::actors::PipelineOutcome::Drained
    );

    assert_eq!(count(&env.pg, "SELECT count(*) FROM events").await, 3000);
    let rows: Vec<EventRow> =
        sqlx::query_as("SELECT event_id, event_type, player_id, game_id, event_timestamp, ingested_at, data FROM events")
            .fetch_all(&env.pg)
            .await
            .expect("rows");
    let by_id: HashMap<_, _> = rows.into_iter().map(|r| (r.0, r)).collect();
    for sent in &events {
        let row = by_id
            .get(&sent.event_id)
            .unwrap_or_else(|| panic!("event {} missing", sent.event_id));
        assert_eq!(row.1, sent.event_type);
        assert_eq!(row.2, sent.player_id);
        assert_eq!(row.3, sent.game_id);
        assert_eq!(row.4, sent.timestamp);
        assert_eq!(row.5, sent.ingested_at);
        assert_eq!(
            row.6,
            serde_json::from_str::<serde_json::Value>(&sent.data).expect("json")
        );
    }
    assert_eq!(count(&env.pg, "SELECT count(*) FROM dlq_events").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_the_partition_goes_on() {
    let env =
        TestEnv::with_overrides(&[("mode", "\"consume\""), ("logger.batch_size", "50")]).await;
    let topic = env.config.topics.player_events.clone();
    let good = |i: usize| RawRecord::of(&sample_event(i, 1, 1)); // one player: all on one partition
    let bad = |value: Vec<u8>| RawRecord {
        key: b"player-0".to_vec(),
        value,
    };
    let valid = String::from_utf8(sample_event(0, 1, 1).to_record_value()).expect("utf8");
    let poisons: Vec<(Vec<u8>, &str)> = vec![
        (b"not json at all".to_vec(), "malformed_json"),
        (vec![b'{', 0xff, 0xfe, b'}'], "not_utf8"),
        (
            br#"{"event_type":"x","game_id":"g","timestamp":"2024-01-15T10:30:00Z"}"#.to_vec(),
            "missing_field",
        ),
        (
            valid
                .replacen(r#""player_id":"player-0""#, r#""player_id":42"#, 1)
                .into_bytes(),
            "wrong_type",
        ),
        (
            valid
                .replacen("2023-11-14T22:13:20Z", "the day before yesterday", 1)
                .into_bytes(),
            "bad_timestamp",
        ),
        (
            // Above `dlq.max_message_bytes` (900,000), below the broker's default
            // `message.max.bytes` (1,048,588) for the whole record batch.
            format!(r#"{{"blob":"{}"}}"#, "x".repeat(950 * 1024)).into_bytes(),
            "missing_field",
        ),
    ];
    assert!(
        valid.contains("2023-11-14T22:13:20Z"),
        "sample timestamp changed: {valid}"
    );
    let mut records = Vec::new();
    for (i, (payload, _)) in poisons.iter().enumerate() {
        records.push(good(i * 2));
        records.push(bad(payload.clone()));
    }
    records.push(good(99));
    produce_raw(&env.config, &topic, &records).await;

    let shutdown = Shutdown::new();
    let running = daemon::start(env.config.clone(), false, shutdown.clone())
        .await
        .expect("daemon starts");
    assert!(
        wait_until_committed(&env, &env.pg, Duration::from_secs(60)).await,
        "partition stalled"
    );
    shutdown.trigger();
    running.stop().await;

    assert_eq!(
        count(&env.pg, "SELECT count(*) FROM events").await,
        poisons.len() as i64 + 1
    );
    let letters: Vec<DeadLetterRow> = sqlx::query_as(
        "SELECT consumer_service, error_kind, error_message, source_topic, source_partition, source_offset,
                original_payload, original_event
         FROM dlq_events ORDER BY source_offset",
    )
    .fetch_all(&env.pg)
    .await
    .expect("dead letters");
    assert_eq!(letters.len(), poisons.len());
    for (i, ((payload, kind), letter)) in poisons.iter().zip(&letters).enumerate() {
        assert_eq!(letter.0, LOGGER);
        assert_eq!(letter.1, *kind, "poison {i}: {}", letter.2);
        assert!(!letter.2.is_empty());
        assert_eq!(letter.3, topic);
        assert_eq!(
            letter.5,
            (i * 2 + 1) as i64,
            "provenance offset of poison {i}"
        );
        assert_eq!(&letter.6, payload, "exact bytes kept for replay");
    }
    assert_eq!(
        letters[0].7,
        serde_json::json!("not json at all"),
        "non-JSON kept as a string"
    );

    let published = crate::common::consume_all(&env.config, &env.config.topics.dlq).await;
    assert_eq!(
        published.len(),
        poisons.len(),
        "one message per dead letter on the DLQ topic"
    );
    for (_, _, _, value) in &published {
        let message: serde_json::Value =
            serde_json::from_slice(value.as_deref().expect("value")).expect("json");
        for field in [
            "original_event",
            "error",
            "timestamp",
            "consumer_service",
            "topic",
            "partition",
            "offset",
        ] {
            assert!(message.get(field).is_some(), "{field} missing in {message}");
        }
        assert_eq!(message["consumer_service"], LOGGER);
    }
}

/// A `gamestream serve --mode consume` child process.
async fn spawn_consumer(env: &TestEnv) -> tokio::process::Child {
    env.command(&[
        "--set",
        "mode=\"consume\"",
        "--set",
        "logger.batch_size=300",
        "serve",
    ])
    .env("RUST_LOG", "warn")
    .spawn()
    .expect("spawn gamestream serve")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_consuming_loses_and_duplicates_nothing() {
    let env = TestEnv::new().await;
    let n = 20_000;
    let records: Vec<_> = (0..n)
        .map(|i| RawRecord::of(&sample_event(i, 101, 7)))
        .collect();
    produce_raw(&env.config, &env.config.topics.player_events, &records).await;

    for round in 0..3 {
        let mut child = spawn_consumer(&env).await;
        // Let it write some batches, then kill it mid-stream.
        let progressed = eventually(Duration::from_secs(30), || async {
            count(&env.pg, "SELECT count(*) FROM events").await > (round as i64 + 1) * 2_000
        })
        .await;
        child.kill().await.expect("kill -9");
        assert!(progressed, "round {round}: no progress before the kill");
    }
    let mut child = spawn_consumer(&env).await;
    let done = wait_until_committed(&env, &env.pg, Duration::from_secs(90)).await;
    child.kill().await.expect("kill");
    assert!(done, "did not catch up after the kills");
    assert_eq!(
        count(&env.pg, "SELECT count(*) FROM events").await,
        n as i64
    );
    assert_eq!(
        count(&env.pg, "SELECT count(DISTINCT event_id) FROM events").await,
        n as i64
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_exits_zero_and_restart_duplicates_nothing() {
    let env = TestEnv::new().await;
    let n = 15_000;
    let records: Vec<_> = (0..n)
        .map(|i| RawRecord::of(&sample_event(i, 50, 3)))
        .collect();
    produce_raw(&env.config, &env.config.topics.player_events, &records).await;

    let mut child = spawn_consumer(&env).await;
    let started = eventually(Duration::from_secs(30), || async {
        count(&env.pg, "SELECT count(*) FROM events").await > 1_000
    })
    .await;
    assert!(started, "no progress");
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(25), child.wait())
        .await
        .expect("exits within the grace period")
        .expect("wait");
    assert_eq!(exit.code(), Some(0), "graceful stop exits 0");

    // After a drain, what was written equals what was committed.
    let committed: i64 = committed_offsets(&env.pg, LOGGER, &env.config.topics.player_events)
        .await
        .iter()
        .map(|(_, o)| o)
        .sum();
    assert_eq!(
        count(&env.pg, "SELECT count(*) FROM events").await,
        committed,
        "rows match committed offsets after SIGTERM"
    );

    let mut child = spawn_consumer(&env).await;
    let done = wait_until_committed(&env, &env.pg, Duration::from_secs(60)).await;
    child.kill().await.expect("kill");
    assert!(done);
    assert_eq!(
        count(&env.pg, "SELECT count(*) FROM events").await,
        n as i64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_waited_out_not_dead_lettered() {
    let env = TestEnv::new().await;
    let private = crate::common::PrivatePostgres::start();
    // The same settings as the env, but Postgres is the private server.
    let mut env_vars = env.child_env();
    for (k, v) in &mut env_vars {
        match k.as_str() {
            "DB_PORT" => *v = private.port.to_string(),
            "DB_PASSWORD" => v.clear(),
            "DB_NAME" => *v = "gamestream".to_owned(),
            _ => {}
        }
    }
    private.create_database("gamestream").await;
    let mut overrides = env.overrides.clone();
    overrides.push(("mode".into(), "\"consume\"".into()));
    overrides.push(("logger.batch_size".into(), "100".into()));
    overrides.push(("logger.linger".into(), "\"20ms\"".into()));
    overrides.push(("consumer.retry_max_backoff".into(), "\"1s\"".into()));
    let config = config::load(&Sources {
        file: None,
        env: env_vars,
        overrides,
    })
    .expect("config");
    let pg = gamestream::sinks::postgres::connect(&config.postgres)
        .await
        .expect("connect private");
    gamestream::sinks::postgres::migrate(&pg)
        .await
        .expect("migrate private");

    let n = 40_000;
    let records: Vec<_> = (0..n)
        .map(|i| RawRecord::of(&sample_event(i, 20, 2)))
        .collect();
    produce_raw(&config, &config.topics.player_events, &records).await;

    let shutdown = Shutdown::new();
    let running = daemon::start(config.clone(), false, shutdown.clone())
        .await
        .expect("daemon starts");
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&pg, "SELECT count(*) FROM events").await > 500
        })
        .await
    );
    let before_outage = count(&pg, "SELECT count(*) FROM events").await;
    assert!(
        before_outage < n as i64,
        "the outage must happen mid-stream (had {before_outage} of {n})"
    );
    private.pause();
    tokio::time::sleep(Duration::from_secs(4)).await;
    private.resume();

    let marks = high_watermarks(&config, &config.topics.player_events).await;
    let total: i64 = marks.iter().sum();
    let caught_up = eventually(Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
            .fetch_one(&pg)
            .await
            .is_ok_and(|c| c == total)
    })
    .await;
    shutdown.trigger();
    running.stop().await;
    assert!(caught_up, "rows did not all arrive after the outage");
    assert_eq!(count(&pg, "SELECT count(*) FROM events").await, n as i64);
    assert_eq!(
        count(&pg, "SELECT count(*) FROM dlq_events").await,
        0,
        "a transient outage is never dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_keeps_crashing_escalates_and_the_daemon_exits_70() {
    let took = escalation().await;
    eprintln!("escalated in {took:?}");
}

/// The same under CPU load: busy loops on every core while a sink keeps crashing, and
/// still the daemon exits 70 (the supervisor's take-over of partitions runs outside its
/// message handler, so a crash never waits behind it). Runs alone (`.config/nextest.toml`:
/// it takes every test thread), and prints how long escalation took: a figure, not an
/// assertion, on a shared machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_keeps_crashing_escalates_under_cpu_load() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let spinners: Vec<_> = (0..cores)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut x = 0_u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(
                        x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                    );
                }
            })
        })
        .collect();
    let took = escalation().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for spinner in spinners {
        let _ = spinner.join();
    }
    eprintln!("escalated under load ({cores} busy loops) in {took:?}");
}

/// Starts a consuming daemon whose logger cannot write (its table is gone), waits for
/// it to give up with exit 70, checks nothing was dead-lettered or committed, and
/// returns how long it took from the start.
async fn escalation() -> Duration {
    let env = TestEnv::new().await;
    let records: Vec<_> = (0..500)
        .map(|i| RawRecord::of(&sample_event(i, 10, 2)))
        .collect();
    produce_raw(&env.config, &env.config.topics.player_events, &records).await;
    // An operator mistake: the logger's table is gone. That is no record's fault, so
    // nothing may be dead-lettered; the logger crashes, restarts, and the daemon gives up.
    sqlx::query("DROP TABLE events")
        .execute(&env.pg)
        .await
        .expect("drop events");
    let started = std::time::Instant::now();
    let mut child = env
        .command(&[
            "--set",
            "mode=\"consume\"",
            "--set",
            "supervisor.max_restarts=2",
            "--set",
            "supervisor.restart_initial_backoff=\"50ms\"",
            "serve",
        ])
        .env("RUST_LOG", "error")
        .spawn()
        .expect("spawn");
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the daemon gives up")
        .expect("wait");
    let took = started.elapsed();
    assert_eq!(exit.code(), Some(70), "escalation exits 70");
    assert_eq!(
        count(&env.pg, "SELECT count(*) FROM dlq_events").await,
        0,
        "a systemic failure is never dead-lettered"
    );
    assert!(
        committed_offsets(&env.pg, LOGGER, &env.config.topics.player_events)
            .await
            .is_empty(),
        "nothing committed"
    );
    took
}
