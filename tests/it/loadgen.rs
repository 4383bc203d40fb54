//! `gamestream loadgen` (the binary) against an in-process server and the real broker.

use std::time::Duration;

use crate::common::TestEnv;
use crate::common::ingest::{TestServer, consume_all};

async fn loadgen(env: &TestEnv, args: &[&str]) -> (Option<i32>, String) {
    let mut command = env.command(&["loadgen"]);
    command.args(args);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("loadgen finishes")
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.code(), format!("{stdout}{stderr}"))
}

fn line_value<'a>(output: &'a str, label: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{output}"))
}

#[tokio::test]
async fn loadgen_sends_every_event_and_reports() {
    let env = TestEnv::with_overrides(&[("mode", "\"ingest\"")]).await;
    let server = TestServer::start(env.config.clone()).await;
    let url = format!("http://{}", server.addr);
    let (code, output) = loadgen(
        &env,
        &[
            "--count",
            "300",
            "--rate",
            "0",
            "--players",
            "7",
            "--url",
            &url,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(
        line_value(&output, "succeeded"),
        "300 events (300 requests)"
    );
    assert_eq!(line_value(&output, "failed"), "0 events (0 requests)");
    for p in ["latency p50", "latency p95", "latency p99"] {
        assert!(line_value(&output, p).ends_with(" ms"), "{output}");
    }
    let records = consume_all(&env.config).await;
    assert_eq!(records.len(), 300);
    let players: std::collections::BTreeSet<_> = records
        .iter()
        .map(|r| r.value["player_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(players.len() <= 7 && players.len() >= 5, "{players:?}");
    let scores = records
        .iter()
        .filter(|r| r.value["event_type"] == "player_score")
        .count();
    assert!(
        (45..=135).contains(&scores),
        "{scores} of 300 are player_score (expected ~30%)"
    );
    assert!(
        records
            .iter()
            .filter(|r| r.value["event_type"] == "player_score")
            .all(|r| r.value["data"]["score"].is_i64())
    );
    server.stop().await;
}

#[tokio::test]
async fn loadgen_batches_and_paces() {
    let env = TestEnv::with_overrides(&[("mode", "\"ingest\"")]).await;
    let server = TestServer::start(env.config.clone()).await;
    let url = format!("http://{}", server.addr);
    // 250 events in batches of 100 at 500 events/s: 3 requests due at 0, 0.2 and 0.4 s.
    let (code, output) = loadgen(
        &env,
        &[
            "--count", "250", "--batch", "100", "--rate", "500", "--url", &url,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(line_value(&output, "succeeded"), "250 events (3 requests)");
    assert!(
        line_value(&output, "target").ends_with("/api/v1/events/batch"),
        "{output}"
    );
    let seconds: f64 = line_value(&output, "duration")
        .trim_end_matches(" s")
        .parse()
        .expect("seconds");
    assert!(seconds >= 0.4, "paced run took {seconds} s");
    assert_eq!(consume_all(&env.config).await.len(), 250);
    server.stop().await;
}

#[tokio::test]
async fn loadgen_exits_1_when_requests_fail() {
    let env = TestEnv::with_overrides(&[
        ("mode", "\"ingest\""),
        ("http.api_keys", r#"["right-key-0123456789"]"#),
    ])
    .await;
    let server = TestServer::start(env.config.clone()).await;
    let url = format!("http://{}", server.addr);
    let (code, output) = loadgen(
        &env,
        &[
            "--count",
            "5",
            "--rate",
            "0",
            "--url",
            &url,
            "--api-key",
            "wrong",
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{output}");
    assert_eq!(line_value(&output, "failed"), "5 events (5 requests)");
    assert!(
        output.contains("401 Unauthorized: the API key is not valid"),
        "{output}"
    );

    // Nothing listening at all.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let (code, output) = loadgen(
        &env,
        &[
            "--count",
            "3",
            "--rate",
            "0",
            "--url",
            &format!("http://{closed}"),
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{output}");
    assert_eq!(line_value(&output, "failed"), "3 events (3 requests)");
    server.stop().await;
}
