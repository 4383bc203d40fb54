//! HTTP ingestion against the real broker of the local stack: what a posted event
//! becomes on the topic, batches, every refusal, protection, metrics and the OpenAPI
//! document. Each test has its own topics (TestEnv) and its own in-process server.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::TestEnv;
use crate::common::ingest::{TestServer, consume_all, event_json};
use gamestream::http::observe::ROUTES;
use gamestream::kafka::partition_for_key;
use serde_json::{Value, json};

const EVENTS: &str = "/api/v1/events";
const BATCH: &str = "/api/v1/events/batch";

async fn ingest_env(extra: &[(&str, &str)]) -> TestEnv {
    let mut overrides = vec![("mode", "\"ingest\"")];
    overrides.extend_from_slice(extra);
    TestEnv::with_overrides(&overrides).await
}

#[tokio::test]
async fn posted_event_lands_on_its_partition_with_key_headers_and_value() {
    let env = ingest_env(&[]).await;
    let server = TestServer::start(env.config.clone()).await;
    let before = chrono::Utc::now();
    let answer = server
        .post(
            EVENTS,
            &event_json(
                "player_level_up",
                "player-123",
                r#"{"level":5,"experience":1000}"#,
            ),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let reply = answer.json();
    assert_eq!(reply["status"], "success");
    assert_eq!(reply.as_object().map(|o| o.len()), Some(2), "{reply}");
    let event_id = reply["event_id"].as_str().expect("event_id").to_owned();
    let uuid = uuid::Uuid::parse_str(&event_id).expect("a UUID");
    assert_eq!(uuid.get_version_num(), 4);

    let records = consume_all(&env.config).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(record.partition, partition_for_key(b"player-123", 3));
    assert_eq!(record.key.as_deref(), Some(b"player-123".as_slice()));
    assert_eq!(
        record.header("event_type").as_deref(),
        Some("player_level_up")
    );
    assert_eq!(
        record.header("event_id").as_deref(),
        Some(event_id.as_str())
    );
    let value = record.value.as_object().expect("an object");
    assert_eq!(value.len(), 7, "{value:?}");
    assert_eq!(value["event_id"], event_id.as_str());
    assert_eq!(value["event_type"], "player_level_up");
    assert_eq!(value["player_id"], "player-123");
    assert_eq!(value["game_id"], "game-1");
    assert_eq!(value["timestamp"], "2024-01-15T10:30:00Z");
    assert_eq!(value["data"], json!({"level": 5, "experience": 1000}));
    let ingested_at =
        chrono::DateTime::parse_from_rfc3339(value["ingested_at"].as_str().expect("string"))
            .expect("RFC 3339");
    let lag = ingested_at.with_timezone(&chrono::Utc) - before;
    assert!(
        (-1..60).contains(&lag.num_seconds()),
        "ingested_at {ingested_at} vs {before}"
    );
    server.stop().await;
}

#[tokio::test]
async fn each_player_keeps_to_the_partition_of_the_java_partitioner() {
    let env = ingest_env(&[]).await;
    let server = TestServer::start(env.config.clone()).await;
    let players: Vec<String> = (0..30).map(|i| format!("player-{i}")).collect();
    let bodies: Vec<String> = players
        .iter()
        .map(|p| event_json("player_score", p, r#"{"score":1}"#))
        .collect();
    let posts = bodies.iter().map(|body| server.post(EVENTS, body));
    for answer in futures::future::join_all(posts).await {
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    let records = consume_all(&env.config).await;
    assert_eq!(records.len(), players.len());
    let mut partitions = BTreeSet::new();
    for record in &records {
        let player = record.value["player_id"].as_str().expect("player_id");
        assert_eq!(
            record.partition,
            partition_for_key(player.as_bytes(), 3),
            "{player}"
        );
        partitions.insert(record.partition);
    }
    assert_eq!(
        partitions.len(),
        3,
        "30 players spread over all 3 partitions"
    );
    server.stop().await;
}

#[tokio::test]
async fn batch_publishes_the_valid_items_and_answers_each_in_order() {
    let env = ingest_env(&[]).await;
    let server = TestServer::start(env.config.clone()).await;
    let body = format!(
        "[{},{},{},42,{}]",
        event_json("player_score", "p-1", r#"{"score":10}"#),
        r#"{"event_type":"player_score","game_id":"g","timestamp":"2024-01-15T10:30:00Z"}"#,
        event_json("quest_completed", "p-2", "{}"),
        event_json("custom_type", "p-3", r#"{"nested":{"a":[1,2]}}"#),
    );
    let answer = server.post(BATCH, &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let reply = answer.json();
    assert_eq!(reply["status"], "partial");
    assert_eq!(
        (reply["accepted"].as_u64(), reply["rejected"].as_u64()),
        (Some(3), Some(2))
    );
    let results = reply["results"].as_array().expect("results");
    assert_eq!(results.len(), 5);
    for i in [0, 2, 4] {
        assert_eq!(results[i]["status"], "success", "{}", results[i]);
        assert!(uuid::Uuid::parse_str(results[i]["event_id"].as_str().unwrap_or_default()).is_ok());
    }
    assert_eq!(
        results[1],
        json!({"status": "error", "error": "item 1: `player_id` is required"})
    );
    assert_eq!(
        results[3],
        json!({"status": "error", "error": "item 3: the event must be a JSON object, got a number"})
    );

    let records = consume_all(&env.config).await;
    let on_topic: BTreeSet<String> = records.iter().map(|r| r.event_id()).collect();
    let acked: BTreeSet<String> = [0, 2, 4]
        .iter()
        .map(|&i| {
            results[i]["event_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(on_topic, acked, "exactly the valid items are on the topic");
    let custom = records
        .iter()
        .find(|r| r.value["event_type"] == "custom_type")
        .expect("custom event");
    assert_eq!(custom.value["data"], json!({"nested": {"a": [1, 2]}}));

    // All invalid: nothing published, still one result per item; empty: nothing to do.
    let answer = server.post(BATCH, r#"[{"event_type":""}, "x"]"#).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let reply = answer.json();
    assert_eq!(
        (reply["status"].as_str(), reply["accepted"].as_u64()),
        (Some("error"), Some(0))
    );
    assert_eq!(reply["results"].as_array().map(Vec::len), Some(2));
    let answer = server.post(BATCH, "[]").await;
    assert_eq!(
        answer.json(),
        json!({"status": "success", "accepted": 0, "rejected": 0, "results": []})
    );
    assert_eq!(consume_all(&env.config).await.len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn every_bad_request_gets_its_status_and_a_clear_error_and_nothing_reaches_kafka() {
    let env = ingest_env(&[("http.body_limit_bytes", "4096"), ("http.batch_limit", "3")]).await;
    let server = TestServer::start(env.config.clone()).await;
    let ok = |f: &str| event_json("x", "p", f);
    let long = "g".repeat(101);
    let field_cases: Vec<(String, &str)> = vec![
        (
            r#"{"player_id":"p","game_id":"g","timestamp":"2024-01-15T10:30:00Z"}"#.to_owned(),
            "`event_type` is required",
        ),
        (
            r#"{"event_type":7,"player_id":"p","game_id":"g","timestamp":"2024-01-15T10:30:00Z"}"#
                .to_owned(),
            "`event_type` must be a string, got a number",
        ),
        (
            r#"{"event_type":"x","player_id":"","game_id":"g","timestamp":"2024-01-15T10:30:00Z"}"#
                .to_owned(),
            "`player_id` must not be empty",
        ),
        (
            format!(
                r#"{{"event_type":"x","player_id":"p","game_id":"{long}","timestamp":"2024-01-15T10:30:00Z"}}"#
            ),
            "`game_id` must be at most 100 characters, got 101",
        ),
        (
            r#"{"event_type":"x","player_id":"p","game_id":"g"}"#.to_owned(),
            "`timestamp` is required",
        ),
        (
            r#"{"event_type":"x","player_id":"p","game_id":"g","timestamp":"yesterday"}"#
                .to_owned(),
            "`timestamp` must be an RFC 3339 time such as 2024-01-15T10:30:00Z, got \"yesterday\"",
        ),
        (ok("[1]"), "`data` must be a JSON object, got an array"),
        (
            "[1]".to_owned(),
            "the event must be a JSON object, got an array",
        ),
    ];
    for (body, message) in &field_cases {
        let answer = server.post(EVENTS, body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text);
        assert_eq!(answer.error(), *message, "{body}");
    }

    for body in [r#"{"event_type": "x",, }"#, r#"{"event_type": "x""#, ""] {
        let answer = server.post(EVENTS, body).await;
        assert_eq!(answer.status, 400, "{body:?}: {}", answer.text);
        let error = answer.error();
        assert!(
            error.starts_with("malformed JSON: ") && error.contains("at byte"),
            "{body:?}: {error}"
        );
    }

    // Content-Type: wrong or missing → 415.
    let good = event_json("x", "p", "{}");
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = server.http.post(server.url(EVENTS)).body(good.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let answer = server.send(request).await;
        assert_eq!(answer.status, 415, "{content_type:?}: {}", answer.text);
        assert_eq!(answer.error(), "Content-Type must be application/json");
    }

    // Over the body limit, with Content-Length and chunked.
    let big = ok(&format!(r#"{{"pad":"{}"}}"#, "x".repeat(5000)));
    let answer = server.post(EVENTS, &big).await;
    assert_eq!(answer.status, 413, "{}", answer.text);
    assert!(answer.error().contains("4096 bytes"), "{}", answer.text);
    let chunk = format!("3e8\r\n{}\r\n", "x".repeat(1000));
    let raw = format!(
        "POST {EVENTS} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(5)
    );
    let answer = server.raw(raw.as_bytes(), Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Unknown paths → 404; known paths with the wrong method → 405.
    for path in [
        "/nope",
        "/api/v1/nope",
        "/api/v1/events/batch/x",
        "/api/v2/events",
    ] {
        let answer = server.get(path).await;
        assert_eq!(answer.status, 404, "GET {path}: {}", answer.text);
        assert_eq!(answer.error(), "no such endpoint");
        let answer = server.post(path, &good).await;
        assert_eq!(answer.status, 404, "POST {path}: {}", answer.text);
    }
    for (method, path) in [
        (reqwest::Method::GET, EVENTS),
        (reqwest::Method::PUT, EVENTS),
        (reqwest::Method::DELETE, EVENTS),
        (reqwest::Method::GET, BATCH),
        (reqwest::Method::POST, "/health"),
        (reqwest::Method::POST, "/metrics"),
    ] {
        let answer = server
            .send(server.http.request(method.clone(), server.url(path)))
            .await;
        assert_eq!(answer.status, 405, "{method} {path}: {}", answer.text);
        assert_eq!(answer.error(), "method not allowed on this endpoint");
    }

    // Batch bodies that are not a list of at most batch_limit items.
    let answer = server.post(BATCH, &good).await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert_eq!(
        answer.error(),
        "the body must be a JSON array of events, got an object"
    );
    let four = format!("[{good},{good},{good},{good}]");
    let answer = server.post(BATCH, &four).await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert_eq!(answer.error(), "a batch holds at most 3 events, got 4");
    let answer = server.post(BATCH, "[{]").await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert!(
        answer.error().starts_with("malformed JSON"),
        "{}",
        answer.text
    );

    assert!(
        consume_all(&env.config).await.is_empty(),
        "nothing invalid reached the topic"
    );
    server.stop().await;
}

#[tokio::test]
async fn api_keys_guard_ingest_but_not_probes() {
    let env = ingest_env(&[(
        "http.api_keys",
        r#"["key-one-0123456789", "key-two-0123456789"]"#,
    )])
    .await;
    let server = TestServer::start(env.config.clone()).await;
    let good = event_json("x", "p", "{}");
    let post = |key: Option<&str>, path: &'static str, body: String| {
        let mut request = server
            .http
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.header("authorization", key);
        }
        server.send(request)
    };

    let answer = post(None, EVENTS, good.clone()).await;
    assert_eq!(answer.status, 401, "{}", answer.text);
    assert_eq!(
        answer.error(),
        "an API key is required: send `Authorization: Bearer <key>`"
    );
    assert!(
        answer
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer"))
    );
    let answer = post(Some("Bearer key-three-0123456789"), EVENTS, good.clone()).await;
    assert_eq!(answer.status, 401, "{}", answer.text);
    assert_eq!(answer.error(), "the API key is not valid");
    let answer = post(Some("Basic azE6"), BATCH, format!("[{good}]")).await;
    assert_eq!(answer.status, 401, "{}", answer.text);

    assert_eq!(
        post(Some("Bearer key-two-0123456789"), EVENTS, good.clone())
            .await
            .status,
        200
    );
    let answer = post(
        Some("Bearer key-one-0123456789"),
        BATCH,
        format!("[{good}]"),
    )
    .await;
    assert_eq!(
        (answer.status, answer.json()["accepted"].as_u64()),
        (200, Some(1)),
        "{}",
        answer.text
    );
    // A key is checked before the body: an unauthenticated bad body is 401, not 400/415.
    let answer = server
        .send(server.http.post(server.url(EVENTS)).body("junk"))
        .await;
    assert_eq!(answer.status, 401);

    for path in ["/health", "/ready", "/metrics", "/api/v1/openapi.json"] {
        assert_eq!(server.get(path).await.status, 200, "{path} needs no key");
    }
    assert_eq!(consume_all(&env.config).await.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_per_client_and_spares_probes() {
    let env = ingest_env(&[
        ("http.rate_limit_per_second", "1"),
        ("http.rate_limit_burst", "2"),
    ])
    .await;
    let server = TestServer::start(env.config.clone()).await;
    let good = event_json("x", "p", "{}");
    assert_eq!(server.post(EVENTS, &good).await.status, 200);
    assert_eq!(server.post(BATCH, &format!("[{good}]")).await.status, 200);
    let answer = server.post(EVENTS, &good).await;
    assert_eq!(answer.status, 429, "{}", answer.text);
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert!(
        answer.error().starts_with("rate limit exceeded"),
        "{}",
        answer.text
    );
    for _ in 0..5 {
        assert_eq!(server.get("/health").await.status, 200);
        assert_eq!(server.get("/metrics").await.status, 200);
    }
    // One token per second comes back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(server.post(EVENTS, &good).await.status, 200);
    assert_eq!(server.post(EVENTS, &good).await.status, 429);
    assert_eq!(consume_all(&env.config).await.len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn rate_limit_is_per_api_key() {
    let env = ingest_env(&[
        (
            "http.api_keys",
            r#"["key-one-0123456789", "key-two-0123456789"]"#,
        ),
        ("http.rate_limit_per_second", "1"),
        ("http.rate_limit_burst", "1"),
    ])
    .await;
    let server = TestServer::start(env.config.clone()).await;
    let good = event_json("x", "p", "{}");
    let post = |key: &'static str| {
        server.send(
            server
                .http
                .post(server.url(EVENTS))
                .header("content-type", "application/json")
                .bearer_auth(key)
                .body(good.clone()),
        )
    };
    assert_eq!(post("key-one-0123456789").await.status, 200);
    assert_eq!(post("key-one-0123456789").await.status, 429);
    assert_eq!(
        post("key-two-0123456789").await.status,
        200,
        "k2 has its own bucket"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_request_that_does_not_finish_in_time_gets_503() {
    let env = ingest_env(&[("http.request_timeout", "\"300ms\"")]).await;
    let server = TestServer::start(env.config.clone()).await;
    // Announces 200 bytes and sends 10: the handler waits for the rest until the timeout.
    let raw = format!(
        "POST {EVENTS} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"event_"
    );
    let started = std::time::Instant::now();
    let answer = server.raw(raw.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(
        answer.contains("was not completed within 300ms"),
        "{answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn consume_mode_refuses_events_with_503_saying_why() {
    let env = TestEnv::with_overrides(&[("mode", "\"consume\"")]).await;
    let server = TestServer::start(env.config.clone()).await;
    let answer = server.post(EVENTS, &event_json("x", "p", "{}")).await;
    assert_eq!(answer.status, 503, "{}", answer.text);
    assert!(answer.error().contains("consume mode"), "{}", answer.text);
    assert_eq!(server.get("/health").await.status, 200);
    server.stop().await;
}

/// The value of the first sample line of `/metrics` that starts with `series` and
/// contains every one of `labels`.
fn sample(text: &str, series: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(series) && labels.iter().all(|want| l.contains(want)))
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
}

#[tokio::test]
async fn metrics_count_events_and_time_requests_by_route_template() {
    let env = ingest_env(&[]).await;
    let server = TestServer::start(env.config.clone()).await;
    assert_eq!(
        server
            .post(EVENTS, &event_json("x", "p", "{}"))
            .await
            .status,
        200
    );
    assert_eq!(
        server.post(EVENTS, r#"{"event_type":"x"}"#).await.status,
        400
    );
    assert_eq!(
        server
            .post(BATCH, &format!("[{},1]", event_json("x", "q", "{}")))
            .await
            .status,
        200
    );
    assert_eq!(server.get("/random/path/123").await.status, 404);
    let text = server.get("/metrics").await.text;

    // Other tests of this binary share the process-wide recorder: lower bounds only.
    assert!(
        sample(&text, "events_received_total", &[]).is_some_and(|v| v >= 4.0),
        "{text}"
    );
    assert!(
        sample(&text, "events_published_total", &[]).is_some_and(|v| v >= 2.0),
        "{text}"
    );
    assert!(
        sample(&text, "events_failed_total", &[r#"reason="missing_field""#])
            .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        sample(&text, "events_failed_total", &[r#"reason="not_an_object""#])
            .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    let duration = |endpoint: &str, method: &str, status: &str| {
        let labels = [
            format!(r#"endpoint="{endpoint}""#),
            format!(r#"method="{method}""#),
            format!(r#"status="{status}""#),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        sample(&text, "http_request_duration_seconds_count", &labels)
    };
    assert!(
        duration(EVENTS, "POST", "200").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        duration(EVENTS, "POST", "400").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        duration(BATCH, "POST", "200").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        duration("unmatched", "GET", "404").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket{"),
        "a histogram, not a summary"
    );
    assert!(
        !text.contains("/random/path"),
        "raw paths never become labels"
    );
    let topic = format!(r#"topic="{}""#, env.config.topics.player_events);
    let batches: f64 = text
        .lines()
        .filter(|l| l.starts_with("producer_batch_records_count") && l.contains(&topic))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum();
    assert!(batches >= 1.0, "{text}");
    assert!(
        sample(&text, "producer_in_flight_bytes", &[&topic]).is_some(),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn openapi_document_parses_and_lists_every_route_the_server_answers() {
    let env = ingest_env(&[]).await;
    let server = TestServer::start(env.config.clone()).await;
    let answer = server.get("/api/v1/openapi.json").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let doc: Value = answer.json();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|ops| ops.keys())
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(documented, routes);
    for expected in [
        "/api/v1/events",
        "/api/v1/events/batch",
        "/health",
        "/ready",
        "/metrics",
        "/api/v1/openapi.json",
    ] {
        assert!(paths.contains_key(expected), "{expected}");
    }
    // Every documented route exists on the server: neither 404 nor 405.
    for (method, path) in &documented {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let request = server
            .http
            .request(method.clone(), server.url(path))
            .header("content-type", "application/json")
            .body("{}");
        let answer = server.send(request).await;
        assert!(
            ![404, 405].contains(&answer.status),
            "{method} {path}: {}",
            answer.status
        );
    }
    let docs = server.get("/api/v1/docs").await;
    assert!(docs.text.contains("/api/v1/openapi.json"));
    server.stop().await;
}
