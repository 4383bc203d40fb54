//! The HTTP edge against a real daemon over raw sockets: connection timeouts (header,
//! idle, body), the connection cap, the body budget, compressed and non-UTF-8 bodies,
//! JSON answers for the requests hyper itself refuses, keys on the query routes, the
//! failed-authentication limit, trusted proxies, the store bounds of events, and the
//! configuration errors of the keys. Every probe is bounded in count and time.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::TestEnv;
use crate::common::ingest::{TestServer, consume_all, event_json};

const EVENTS: &str = "/api/v1/events";
const KEY: &str = "edge-key-0123456789";

async fn ingest_env(extra: &[(&str, &str)]) -> TestEnv {
    let mut overrides = vec![("mode", "\"ingest\"")];
    overrides.extend_from_slice(extra);
    TestEnv::with_overrides(&overrides).await
}

async fn connect(server: &TestServer) -> TcpStream {
    TcpStream::connect(server.addr).await.expect("connect")
}

/// What a connection received until the server closed it or `within` passed.
struct Received {
    text: String,
    closed: bool,
}

async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Received {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    Received {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}

/// The JSON body of a raw HTTP/1.1 answer.
fn json_body(answer: &str) -> Value {
    let (_, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body: {answer:?}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer:?}"))
}

/// `/health` answers 200 on a fresh connection (bounded: 3 s).
async fn health_answers(server: &TestServer) {
    let answer = tokio::time::timeout(
        Duration::from_secs(3),
        server.send(server.http.get(server.url("/health"))),
    )
    .await
    .expect("/health answers within 3 s");
    assert_eq!(answer.status, 200, "{}", answer.text);
}

#[tokio::test]
async fn silent_slowloris_and_idle_connections_are_closed_while_health_answers() {
    let env = ingest_env(&[
        ("http.header_read_timeout", "\"1s\""),
        ("http.idle_timeout", "\"2s\""),
    ])
    .await;
    let server = TestServer::start(env.config.clone()).await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(connect(&server).await);
    }
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut stream = connect(&server).await;
        stream
            .write_all(b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        slow.push(stream);
    }
    // A keep-alive connection that made one request.
    let mut idle = connect(&server).await;
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut first = [0u8; 1024];
    let n = idle.read(&mut first).await.expect("an answer");
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));

    // The slowloris connections trickle a header every 200 ms; /health answers meanwhile.
    for round in 0..4 {
        for stream in &mut slow {
            let _ = stream
                .write_all(format!("x-r{round}: 1\r\n").as_bytes())
                .await;
        }
        health_answers(&server).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for mut stream in silent {
        let got = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(got.closed, "a silent connection is closed");
        assert_eq!(got.text, "", "and gets no answer");
    }
    for mut stream in slow {
        let got = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(got.closed, "a slowloris connection is closed");
        assert!(got.text.starts_with("HTTP/1.1 408"), "{}", got.text);
        assert!(
            json_body(&got.text)["error"]
                .as_str()
                .is_some_and(|e| e.contains("http.header_read_timeout")),
            "{}",
            got.text
        );
    }
    let got = read_until_closed(&mut idle, Duration::from_secs(6)).await;
    assert!(got.closed, "an idle keep-alive connection is closed");
    assert_eq!(got.text, "");
    // Keep-alive itself still works within the idle timeout.
    let mut kept = connect(&server).await;
    for _ in 0..2 {
        kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let n = kept.read(&mut first).await.expect("an answer");
        assert!(first[..n].starts_with(b"HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let metrics = server.get("/metrics").await.text;
    assert!(
        metrics.contains("http_connections_closed_total{reason=\"header_timeout\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"idle_timeout\""), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn a_slow_body_gets_408_and_the_connection_closes() {
    let env = ingest_env(&[("http.body_read_timeout", "\"500ms\"")]).await;
    let server = TestServer::start(env.config.clone()).await;
    let mut stream = connect(&server).await;
    stream
        .write_all(
            b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 200\r\n\r\n{\"event_",
        )
        .await
        .expect("write");
    let got = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(got.text.starts_with("HTTP/1.1 408"), "{}", got.text);
    assert!(
        got.text.to_ascii_lowercase().contains("connection: close"),
        "{}",
        got.text
    );
    assert_eq!(
        json_body(&got.text)["error"],
        "the request body did not arrive within 500ms (http.body_read_timeout)"
    );
    assert!(got.closed);
    server.stop().await;
}

/// A POST whose head is complete and whose body (`length` bytes announced) is not:
/// the connection is in a request until the body timeout.
async fn stalled_body(server: &TestServer, length: usize) -> TcpStream {
    let mut stream = connect(server).await;
    stream
        .write_all(
            format!(
                "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: {length}\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    stream
}

#[tokio::test]
async fn past_the_connection_cap_idle_connections_make_room_and_busy_ones_do_not() {
    let env = ingest_env(&[
        ("http.max_connections", "8"),
        ("http.body_read_timeout", "\"3s\""),
    ])
    .await;
    let server = TestServer::start(env.config.clone()).await;
    // Eight idle connections: each newcomer closes the oldest, so /health answers.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(connect(&server).await);
    }
    health_answers(&server).await;
    let got = read_until_closed(&mut idle[0], Duration::from_secs(3)).await;
    assert!(got.closed, "the oldest idle connection made room");

    // Eight connections in a request: nothing can be closed, a newcomer gets 503.
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut busy = Vec::new();
    for _ in 0..8 {
        busy.push(stalled_body(&server, 100).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = connect(&server).await;
    let got = read_until_closed(&mut refused, Duration::from_secs(3)).await;
    assert!(got.text.starts_with("HTTP/1.1 503"), "{}", got.text);
    assert!(got.text.contains("retry-after: 1\r\n"), "{}", got.text);
    assert!(
        json_body(&got.text)["error"]
            .as_str()
            .is_some_and(|e| e.contains("http.max_connections")),
        "{}",
        got.text
    );
    // Once their bodies time out (408), there is room again.
    for mut stream in busy {
        let got = read_until_closed(&mut stream, Duration::from_secs(6)).await;
        assert!(got.text.starts_with("HTTP/1.1 408"), "{}", got.text);
    }
    health_answers(&server).await;
    let metrics = server.get("/metrics").await.text;
    assert!(
        metrics.contains("http_connections_refused_total 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn bodies_in_flight_stay_within_the_budget() {
    let env = ingest_env(&[
        ("http.body_limit_bytes", "1000"),
        ("http.body_budget_bytes", "2500"),
        ("http.body_read_timeout", "\"2s\""),
    ])
    .await;
    let server = TestServer::start(env.config.clone()).await;
    let holding = [
        stalled_body(&server, 1000).await,
        stalled_body(&server, 1000).await,
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = stalled_body(&server, 1000).await;
    let got = read_until_closed(&mut third, Duration::from_secs(3)).await;
    assert!(got.text.starts_with("HTTP/1.1 503"), "{}", got.text);
    assert!(got.text.contains("retry-after: 1\r\n"), "{}", got.text);
    assert!(
        json_body(&got.text)["error"]
            .as_str()
            .is_some_and(|e| e.contains("http.body_budget_bytes")),
        "{}",
        got.text
    );
    drop(holding);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let good = event_json("x", "p", "{}");
    assert_eq!(server.post(EVENTS, &good).await.status, 200, "room again");
    server.stop().await;
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("compress");
    encoder.finish().expect("compress")
}

#[tokio::test]
async fn compressed_bodies_are_inflated_within_the_limit_and_charsets_are_checked() {
    let env = ingest_env(&[]).await;
    let server = TestServer::start(env.config.clone()).await;
    let good = event_json("x", "p-gzip", "{}");
    let post = |encoding: Option<&str>, content_type: &str, body: Vec<u8>| {
        let mut request = server
            .http
            .post(server.url(EVENTS))
            .header("content-type", content_type)
            .body(body);
        if let Some(encoding) = encoding {
            request = request.header("content-encoding", encoding);
        }
        server.send(request)
    };
    let json = "application/json";
    let answer = post(Some("gzip"), json, gzip(good.as_bytes())).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(good.as_bytes()).expect("compress");
    let answer = post(Some("deflate"), json, zlib.finish().expect("compress")).await;
    assert_eq!(answer.status, 200, "{}", answer.text);

    // 16 MiB of JSON whitespace compress to ~16 KB: a 413 once past the 1 MiB limit.
    let mut bomb = b"[".to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 16 << 20));
    let bomb = gzip(&bomb);
    assert!(bomb.len() < 100 * 1024, "{}", bomb.len());
    let answer = post(Some("gzip"), json, bomb).await;
    assert_eq!(answer.status, 413, "{}", answer.text);
    assert!(
        answer.error().contains("inflates to more than"),
        "{}",
        answer.text
    );

    let answer = post(Some("gzip"), json, good.clone().into_bytes()).await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert!(
        answer
            .error()
            .contains("gzip request body could not be decoded")
    );
    let answer = post(Some("br"), json, good.clone().into_bytes()).await;
    assert_eq!(answer.status, 415, "{}", answer.text);
    assert!(answer.error().contains("\"br\""), "{}", answer.text);

    for charset in ["latin1", "utf-16", "\"ISO-8859-1\""] {
        let answer = post(
            None,
            &format!("application/json; charset={charset}"),
            good.clone().into_bytes(),
        )
        .await;
        assert_eq!(answer.status, 415, "{charset}: {}", answer.text);
        assert!(answer.error().contains("UTF-8"), "{}", answer.text);
    }
    let answer = post(
        None,
        "application/json; charset=UTF-8",
        good.clone().into_bytes(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let consumed = consume_all(&env.config).await;
    assert_eq!(consumed.len(), 3, "gzip, deflate and utf-8 events");
    server.stop().await;
}

#[tokio::test]
async fn requests_hyper_refuses_get_the_json_error() {
    let env = ingest_env(&[]).await;
    let server = TestServer::start(env.config.clone()).await;
    let event = event_json("x", "p", "{}");
    let many: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let cases = [
        (
            format!(
                "POST {EVENTS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nContent-Length: 3\r\n\r\n{event}",
                event.len()
            ),
            "400",
        ),
        (
            format!("GET /health HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
            "431",
        ),
        (
            format!(
                "GET /health?{} HTTP/1.1\r\nHost: x\r\n\r\n",
                "a".repeat(100 * 1024)
            ),
            "4",
        ),
        ("BREW /health HTCPCP/1.0\r\n\r\n".to_owned(), "400"),
    ];
    for (request, status) in cases {
        let mut stream = connect(&server).await;
        let _ = stream.write_all(request.as_bytes()).await;
        let got = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(
            got.text.starts_with(&format!("HTTP/1.1 {status}")),
            "{}: {}",
            &request[..40.min(request.len())],
            got.text
        );
        assert_eq!(json_body(&got.text)["status"], "error", "{}", got.text);
        assert!(got.closed);
    }
    // After a refusal the server goes on normally.
    health_answers(&server).await;
    assert_eq!(server.post(EVENTS, &event).await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_then_a_bad_head_gets_the_json_error() {
    let env = ingest_env(&[]).await;
    let server = TestServer::start(env.config.clone()).await;
    let event = event_json("x", "p-pipelined", "{}");
    let pipelined = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\n\r\n\
         POST {EVENTS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{event}\
         GET /health HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        event.len()
    );
    let mut stream = connect(&server).await;
    stream.write_all(pipelined.as_bytes()).await.expect("write");
    let got = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let statuses: Vec<&str> = got
        .text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &got.text[i + 9..i + 12])
        .filter(|status| status.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(statuses, ["200", "200", "200", "400"], "{}", got.text);
    let last = &got.text[got.text.rfind("HTTP/1.1 400").expect("the refusal")..];
    assert_eq!(json_body(last)["status"], "error", "{last}");
    assert!(got.closed);
    assert_eq!(consume_all(&env.config).await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn keys_guard_queries_and_failed_authentications_are_limited_per_client() {
    let env = ingest_env(&[
        ("http.api_keys", &format!("[\"{KEY}\"]")),
        ("http.auth_failures_per_minute", "5"),
        ("http.trusted_proxies", "[\"127.0.0.1\"]"),
    ])
    .await;
    let server = TestServer::start(env.config.clone()).await;
    let get = |path: &str, key: Option<&str>, forwarded_for: Option<&str>| {
        let mut request = server.http.get(server.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(client) = forwarded_for {
            request = request.header("x-forwarded-for", client);
        }
        server.send(request)
    };
    for path in ["/api/v1/players/p-1/stats", "/api/v1/leaderboards/g-1"] {
        let answer = get(path, None, Some("203.0.113.1")).await;
        assert_eq!(answer.status, 401, "{path}: {}", answer.text);
        assert!(answer.header("www-authenticate").is_some());
        // With the key the query passes the guard (this daemon only ingests: 503).
        let answer = get(path, Some(KEY), None).await;
        assert_eq!(answer.status, 503, "{path}: {}", answer.text);
        assert!(answer.error().contains("consume mode"), "{}", answer.text);
    }
    for path in [
        "/health",
        "/ready",
        "/metrics",
        "/api/v1/openapi.json",
        "/api/v1/docs",
    ] {
        assert_eq!(
            get(path, None, None).await.status,
            200,
            "{path} needs no key"
        );
    }
    let docs = get("/api/v1/docs", None, None).await.text;
    assert!(docs.contains("integrity=\"sha384-"), "{docs}");

    // Client 198.51.100.7 (behind the trusted proxy 127.0.0.1) guesses: 5 tries, then
    // 429 for everything it sends, the right key included.
    let guesser = Some("198.51.100.7");
    for i in 0..5 {
        let answer = get(
            "/api/v1/leaderboards/g",
            Some(&format!("guess-{i}-0123456789")),
            guesser,
        )
        .await;
        assert_eq!(answer.status, 401, "{}", answer.text);
    }
    let answer = get("/api/v1/leaderboards/g", Some(KEY), guesser).await;
    assert_eq!(answer.status, 429, "{}", answer.text);
    assert!(
        answer
            .header("retry-after")
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1))
    );
    assert!(
        answer.error().contains("too many failed authentications"),
        "{}",
        answer.text
    );
    let answer = server
        .send(
            server
                .http
                .post(server.url(EVENTS))
                .header("content-type", "application/json")
                .header("x-forwarded-for", "198.51.100.7")
                .bearer_auth(KEY)
                .body(event_json("x", "p", "{}")),
        )
        .await;
    assert_eq!(answer.status, 429, "ingestion too: {}", answer.text);
    // Another client behind the same proxy is not affected.
    let answer = get("/api/v1/leaderboards/g", Some(KEY), Some("198.51.100.8")).await;
    assert_eq!(answer.status, 503, "{}", answer.text);
    // An untrusted peer's X-Forwarded-For is not believed: loopback itself is the
    // client here, with its own allowance (1 failure so far, above).
    server.stop().await;
}

#[tokio::test]
async fn the_open_rate_limit_follows_the_forwarded_client_only_from_trusted_proxies() {
    let limits = [
        ("http.rate_limit_per_second", "1"),
        ("http.rate_limit_burst", "1"),
    ];
    let good = event_json("x", "p", "{}");
    for (trusted, second_client_status) in [("[\"127.0.0.0/8\"]", 200), ("[\"10.0.0.0/8\"]", 429)] {
        let mut overrides = limits.to_vec();
        overrides.push(("http.trusted_proxies", trusted));
        let env = ingest_env(&overrides).await;
        let server = TestServer::start(env.config.clone()).await;
        let post = |forwarded: &str| {
            server.send(
                server
                    .http
                    .post(server.url(EVENTS))
                    .header("content-type", "application/json")
                    .header("forwarded", forwarded)
                    .body(good.clone()),
            )
        };
        assert_eq!(post("for=192.0.2.1").await.status, 200, "{trusted}");
        assert_eq!(
            post("for=\"[2001:db8::2]:4711\"").await.status,
            second_client_status,
            "{trusted}: a second client has its own bucket only behind a trusted proxy"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn events_no_store_can_hold_are_refused_at_the_door() {
    let env = ingest_env(&[]).await;
    let server = TestServer::start(env.config.clone()).await;
    let event = |timestamp: &str, score: &str| {
        format!(
            r#"{{"event_type":"player_score","player_id":"p","game_id":"g","timestamp":"{timestamp}","data":{{"score":{score}}}}}"#
        )
    };
    let refused = [
        (
            event("0001-01-01T00:00:00+01:00", "1"),
            "years 0001 to 9999",
        ),
        (
            event("9999-12-31T23:59:59-01:00", "1"),
            "years 0001 to 9999",
        ),
        (
            event("2024-01-15T10:30:00Z", "9007199254740992"),
            "2^53 - 1",
        ),
        (
            event("2024-01-15T10:30:00Z", "-9007199254740992"),
            "2^53 - 1",
        ),
        (
            event("2024-01-15T10:30:00Z", "9223372036854775807"),
            "2^53 - 1",
        ),
    ];
    for (body, says) in &refused {
        let answer = server.post(EVENTS, body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.text);
        assert!(answer.error().contains(says), "{body}: {}", answer.text);
    }
    for body in [
        event("0001-01-01T00:00:00Z", "9007199254740991"),
        event("9999-12-31T23:59:59Z", "-9007199254740991"),
    ] {
        let answer = server.post(EVENTS, &body).await;
        assert_eq!(answer.status, 200, "{body}: {}", answer.text);
    }
    assert_eq!(consume_all(&env.config).await.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn blank_or_short_api_keys_are_configuration_errors() {
    for (keys, says) in [
        (" , ", "blank key"),
        ("", "blank key"),
        ("short", "at least 16"),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_gamestream"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("GAMESTREAM_HTTP__API_KEYS", keys)
            .arg("serve")
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(30), output)
            .await
            .expect("exits at once")
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{keys:?}: {stderr}");
        assert!(stderr.contains("GAMESTREAM_HTTP__API_KEYS"), "{stderr}");
        assert!(stderr.contains(says), "{keys:?}: {stderr}");
        assert!(
            !stderr.contains("short\""),
            "the key itself is not printed: {stderr}"
        );
    }
}
