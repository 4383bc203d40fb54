//! `gamestream bench` in smoke mode (a few thousand events, every phase, both
//! workloads) on the local stack, checking counts, never times: every sink reached the
//! end offsets, every accepted latency event was seen in Postgres, the tables hold
//! exactly what was sent, the CPU of the daemon and of each store was measured, the
//! latency's stages add up to its mean, and the ingest phase got only 2xx answers. Plus
//! the COPY-limit table's shape against the real `events` table.
//!
//! ```text
//! cargo nextest run --test it bench_smoke::
//! ```

use crate::common::{Stack, TestEnv};
use gamestream::bench::limits::{COPY_LIMIT_TABLE, create_copy_table, table_shape};
use gamestream::catalogue;

const EVENTS: usize = 3_000;
const LATENCY_RATE: usize = 300;
const LATENCY_SECONDS: usize = 2;

#[tokio::test]
async fn smoke_run_counts_every_event_in_every_sink() {
    let stack = Stack::from_env();
    let json = tempfile::NamedTempFile::new().expect("temp file");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_gamestream"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(stack.env(&stack.pg_admin_db))
        .args(["bench", "--events", &EVENTS.to_string()])
        .args(["--players", "300", "--games", "10", "--timeout", "3m"])
        // The skewed workload too, on few players (the flag's default exponent).
        .args(["--skew", "--skew-players", "1000"])
        .args(["--latency-rate", &LATENCY_RATE.to_string()])
        .args(["--latency-duration", &format!("{LATENCY_SECONDS}s")])
        .args(["--ingest-duration", "1s", "--ingest-rounds", "1"])
        .args(["--ingest-connections", "4", "--batch-connections", "1"])
        .arg("--json")
        .arg(json.path())
        .output()
        .await
        .expect("gamestream bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("p99"),
        "the table has the latency: {stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(json.path()).expect("json written")).expect("json");

    assert_eq!(report["events"], EVENTS);
    assert_eq!(report["end_offsets"], EVENTS, "the prefill landed whole");
    for sink in catalogue::names() {
        assert_eq!(
            report["sink_committed_offsets"][sink], EVENTS,
            "{sink} committed the end of every partition: {report:#}"
        );
        assert!(report["sink_events_per_sec"][sink].as_f64().is_some());
    }
    assert!(report["cores"].as_u64().is_some_and(|c| c >= 1));
    assert_eq!(
        report["load_average_start"].as_array().map(Vec::len),
        Some(3)
    );

    let latency = &report["latency"];
    let sent = (LATENCY_RATE * LATENCY_SECONDS) as u64;
    assert_eq!(latency["sent"], sent);
    assert_eq!(latency["accepted"], sent, "every request was accepted");
    assert_eq!(latency["samples"], sent, "every accepted event was seen");
    let p = &latency["percentiles_ms"];
    let (p50, p99, max) = (
        p["p50"].as_f64().expect("p50"),
        p["p99"].as_f64().expect("p99"),
        p["max"].as_f64().expect("max"),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{p}");
    // Where the time went: the stages come from the daemon's histograms and add up to
    // the mean; the processes that carried the phase were measured.
    let stage = |name: &str| latency["breakdown"][name].as_f64().expect(name);
    assert!(stage("accept_to_fetch_ms") > 0.0, "{latency}");
    assert!(stage("write_and_commit_ms") > 0.0, "{latency}");
    assert!(stage("http_answer_ms") > 0.0, "{latency}");
    let stages = [
        "accept_to_fetch_ms",
        "sink_batching_ms",
        "write_and_commit_ms",
        "commit_to_seen_ms",
    ];
    let sum: f64 = stages.iter().map(|s| stage(s)).sum();
    assert!((sum - stage("total_ms")).abs() < 1e-6, "{latency}");
    for process in ["daemon", "bench client", "postgres", "kafka"] {
        assert!(
            latency["cores_busy"][process]
                .as_f64()
                .is_some_and(|c| c > 0.0),
            "{process}: {latency}"
        );
    }

    // The ingest phase: both endpoints answered, every answer 2xx.
    let ingest = &report["ingest"];
    assert_eq!(ingest["failed"], 0, "{ingest}");
    assert_eq!(
        ingest["rounds"].as_array().map(Vec::len),
        Some(1),
        "{ingest}"
    );
    let round = &ingest["rounds"][0];
    for figure in [
        "constant_requests_per_sec",
        "single_requests_per_sec",
        "ratio",
    ] {
        assert!(
            round[figure].as_f64().is_some_and(|v| v > 0.0),
            "{figure}: {ingest}"
        );
    }
    for figure in ["batch_events_per_sec", "batch_gzip_events_per_sec"] {
        assert!(
            ingest[figure].as_f64().is_some_and(|v| v > 0.0),
            "{figure}: {ingest}"
        );
    }
    assert!(stdout.contains("ingest: mean ratio"), "{stdout}");

    let total = EVENTS as i64 + sent as i64;
    assert_eq!(report["rows"]["events"], total, "one row per event");
    assert_eq!(report["rows"]["statistics_total_events"], total);
    assert_eq!(report["workload"], "uniform");
    assert_cpu_measured(&report);

    // The skewed workload: its own scratch names, every event in every sink, and most
    // events from a few players.
    let skewed = &report["skewed"];
    assert_eq!(skewed["workload"], "zipf 1.1", "{report:#}");
    assert_eq!(skewed["players"], 1000);
    assert!(
        skewed["top_percent_share"]
            .as_f64()
            .is_some_and(|share| share > 0.3),
        "{skewed}"
    );
    assert_eq!(skewed["end_offsets"], EVENTS);
    for sink in catalogue::names() {
        assert_eq!(skewed["sink_committed_offsets"][sink], EVENTS, "{sink}");
        assert!(skewed["sink_ratio_to_copy"][sink].as_f64().is_some());
    }
    assert_eq!(skewed["rows"]["events"], EVENTS);
    assert_eq!(skewed["rows"]["statistics_total_events"], EVENTS);
    assert_cpu_measured(skewed);
    assert!(
        stdout.contains("zipf 1.1"),
        "the table has both workloads: {stdout}"
    );
}

/// The daemon's CPU per event, and the stack's stores found by their ports (the stack
/// runs on this machine).
fn assert_cpu_measured(workload: &serde_json::Value) {
    assert!(
        workload["pg_activity"]["polls"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "PostgreSQL's activity was sampled: {workload}"
    );
    let cpu = &workload["cpu"];
    assert!(
        cpu["daemon_us_per_event"]
            .as_f64()
            .is_some_and(|us| us > 0.0),
        "{cpu}"
    );
    for store in ["postgres", "redis", "kafka"] {
        assert!(
            cpu["store_us_per_event"][store].as_f64().is_some(),
            "{store}: {cpu}"
        );
    }
}

#[tokio::test]
async fn copy_limit_table_has_the_shape_of_events() {
    let env = TestEnv::new().await;
    create_copy_table(&env.pg).await.expect("copy table");
    let events = table_shape(&env.pg, "events").await.expect("shape");
    let copy = table_shape(&env.pg, COPY_LIMIT_TABLE).await.expect("shape");
    assert_eq!(copy, events);
    let columns = events.iter().filter(|l| l.starts_with("column ")).count();
    let indexes = events.iter().filter(|l| l.starts_with("index ")).count();
    assert_eq!(
        (columns, indexes),
        (8, 5),
        "events: 8 columns, primary key and 4 indexes: {events:#?}"
    );
    assert!(
        events.contains(&"index unique btree (event_id)".to_owned()),
        "{events:#?}"
    );

    // The comparison sees what matters: a table without the indexes is not the same.
    sqlx::query("CREATE TABLE bare_events (LIKE events INCLUDING DEFAULTS)")
        .execute(&env.pg)
        .await
        .expect("bare table");
    let bare = table_shape(&env.pg, "bare_events").await.expect("shape");
    assert_ne!(bare, events);
    assert_eq!(bare.len(), columns, "the same columns, no indexes");
}
