//! Traces and metrics of a real `gamestream serve` child process.
//!
//! The OTLP receiver is real: an OTLP/HTTP server on 127.0.0.1:0 in this process that
//! decodes each `ExportTraceServiceRequest` protobuf (opentelemetry-proto) and keeps
//! its spans. The daemon under test is the binary, as operators run it, with the
//! standard `OTEL_*` variables.
//!
//! Also here, `#[ignore]`d: `discarding_otlp_receiver`, a receiver that answers 200 and
//! drops everything, for the tracing-cost benchmark (see the README).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::TestEnv;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use warp::Filter;

const WAIT: Duration = Duration::from_secs(60);

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
struct Received {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    /// (trace id, span id) of each link.
    links: Vec<(Vec<u8>, Vec<u8>)>,
    attributes: BTreeMap<String, String>,
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body.
struct OtlpReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    async fn start() -> Self {
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let store = Arc::clone(&spans);
        let route = warp::post()
            .and(warp::path!("v1" / "traces"))
            .and(warp::body::bytes())
            .map(move |body: bytes::Bytes| {
                let request = ExportTraceServiceRequest::decode(body)
                    .expect("the daemon sends a valid ExportTraceServiceRequest");
                store.lock().expect("lock").extend(decode(request));
                warp::http::Response::builder()
                    .header("content-type", "application/x-protobuf")
                    .body(ExportTraceServiceResponse::default().encode_to_vec())
                    .expect("response")
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(warp::serve(route).incoming(listener).run());
        Self {
            addr,
            spans,
            _server: server,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("lock").clone()
    }
}

fn decode(request: ExportTraceServiceRequest) -> Vec<Received> {
    let mut out = Vec::new();
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            for span in scope.spans {
                let attributes = span
                    .attributes
                    .iter()
                    .map(|kv| {
                        let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(AnyValue::StringValue(s)) => s.clone(),
                            Some(AnyValue::IntValue(i)) => i.to_string(),
                            Some(other) => format!("{other:?}"),
                            None => String::new(),
                        };
                        (kv.key.clone(), value)
                    })
                    .collect();
                out.push(Received {
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    links: span
                        .links
                        .into_iter()
                        .map(|l| (l.trace_id, l.span_id))
                        .collect(),
                    attributes,
                });
            }
        }
    }
    out
}

/// A `gamestream serve` child on a known port.
struct Daemon {
    child: tokio::process::Child,
    base: String,
    http: reqwest::Client,
}

impl Daemon {
    async fn spawn(env: &TestEnv, otel: &[(&str, &str)]) -> Self {
        let port = crate::common::free_port();
        let mut cmd = env.command(&["--set", &format!("http.port={port}"), "serve"]);
        cmd.env("RUST_LOG", "warn")
            .envs(otel.iter().copied())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().expect("spawn gamestream serve");
        let daemon = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
        };
        let up = crate::common::eventually(WAIT, || async {
            daemon
                .get("/health")
                .await
                .is_some_and(|(status, _)| status == 200)
        })
        .await;
        assert!(up, "the daemon did not start serving");
        daemon
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        Some((response.status().as_u16(), response.text().await.ok()?))
    }

    async fn post_event(&self, body: &str) -> (u16, String) {
        self.post_event_with(body, &[]).await
    }

    /// POSTs one event with extra request headers (raw bytes: they may be invalid).
    async fn post_event_with(&self, body: &str, headers: &[(&str, &[u8])]) -> (u16, String) {
        let mut request = self
            .http
            .post(format!("{}/api/v1/events", self.base))
            .header("content-type", "application/json");
        for (name, value) in headers {
            let value = reqwest::header::HeaderValue::from_bytes(value).expect("header value");
            request = request.header(*name, value);
        }
        let response = request.body(body.to_owned()).send().await.expect("POST");
        (
            response.status().as_u16(),
            response.text().await.expect("body"),
        )
    }

    async fn metrics(&self) -> String {
        self.get("/metrics").await.expect("GET /metrics").1
    }

    /// Stops the daemon (SIGTERM, so it flushes) and returns what it logged.
    async fn stop_and_read_logs(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let mut logs = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = tokio::time::timeout(WAIT, stderr.read_to_string(&mut logs)).await;
        }
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
        logs
    }

    /// Names of the process's threads (`/proc/PID/task/*/comm`, at most 15 chars).
    fn threads(&self) -> Vec<String> {
        let pid = self.child.id().expect("running");
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("proc")
            .filter_map(|t| t.ok())
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect()
    }
}

/// The thread of the SDK's batch span processor (its name, cut to 15 chars by Linux).
const EXPORT_THREAD: &str = "OpenTelemetry.T";

fn event_body(player: &str) -> String {
    format!(
        r#"{{"event_type":"player_score","player_id":"{player}","game_id":"g-trace","timestamp":"2024-01-15T10:30:00Z","data":{{"score":5}}}}"#
    )
}

/// Sum of the samples of `name` (every label set).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn events_rows(env: &TestEnv, event_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_id = $1::uuid")
        .bind(event_id)
        .fetch_one(&env.pg)
        .await
        .expect("count")
}

/// Lowercase hex of trace and span ids, as logs and `traceparent` write them.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn event_id(answer: &str) -> String {
    let body: serde_json::Value = serde_json::from_str(answer).expect("JSON answer");
    body["event_id"].as_str().expect("event_id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_is_one_trace_from_http_request_to_logger_write() {
    let env = TestEnv::new().await;
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let daemon = Daemon::spawn(
        &env,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_SERVICE_NAME", "gamestream-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            // JSON logs, with the sink's per-batch debug line, to join with the trace.
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "warn,gamestream::actors::sink=debug"),
        ],
    )
    .await;
    assert!(
        daemon.threads().iter().any(|t| t == EXPORT_THREAD),
        "a traced daemon runs the batch export thread: {:?}",
        daemon.threads()
    );
    let (status, answer) = daemon.post_event(&event_body("p-traced")).await;
    let mut daemon = daemon;
    assert_eq!(status, 200, "{answer}");
    let id = event_id(&answer);
    assert!(
        crate::common::eventually(WAIT, || async { events_rows(&env, &id).await == 1 }).await,
        "the logger wrote the event"
    );

    // Names as Tempo shows them (`otel.name`): the route, and "<topic> publish".
    let http_name = "POST /api/v1/events";
    let produce_name = format!("{} publish", env.config.topics.player_events);
    let wanted = |spans: &[Received]| {
        [http_name, produce_name.as_str(), "kafka.consume"]
            .iter()
            .all(|n| spans.iter().any(|s| s.name == *n))
            && spans.iter().any(|s| {
                s.name == "sink.write_batch"
                    && s.attributes.get("sink").map(String::as_str) == Some("event-logger")
            })
    };
    assert!(
        crate::common::eventually(WAIT, || async { wanted(&receiver.spans()) }).await,
        "spans received: {:?}",
        receiver
            .spans()
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
    );
    let spans = receiver.spans();
    let one = |name: &str| -> Received {
        let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} span: {found:?}");
        found[0].clone()
    };
    let http = one(http_name);
    let produce = one(&produce_name);
    assert_eq!(
        produce
            .attributes
            .get("messaging.system")
            .map(String::as_str),
        Some("kafka")
    );
    let consume = one("kafka.consume");
    assert_eq!(
        http.parent_span_id,
        Vec::<u8>::new(),
        "the request is the root"
    );
    assert_eq!(produce.trace_id, http.trace_id);
    assert_eq!(
        produce.parent_span_id, http.span_id,
        "produce is a child of the request"
    );
    assert_eq!(consume.trace_id, http.trace_id, "the context crossed Kafka");
    assert_eq!(
        consume.parent_span_id, produce.span_id,
        "consume follows produce"
    );
    let logger = spans
        .iter()
        .find(|s| {
            s.name == "sink.write_batch"
                && s.attributes.get("sink").map(String::as_str) == Some("event-logger")
        })
        .expect("logger batch span");
    assert!(
        logger.trace_id == http.trace_id
            || logger
                .links
                .iter()
                .any(|(t, s)| *t == http.trace_id && *s == consume.span_id),
        "the logger write is in the event's trace or linked to it: {logger:?}"
    );
    // Its database call is a child span, with the backend named.
    assert!(
        spans.iter().any(|s| s.name == "sink.write"
            && s.parent_span_id == logger.span_id
            && s.attributes.get("db.system").map(String::as_str) == Some("postgresql")),
        "the logger's Postgres write is a child span"
    );
    // Every sink of the event is in the trace (stats and leaderboard, Postgres and Redis).
    // (the stats and leaderboard sinks flush on their own linger, later than the logger)
    let sinks_in_trace = || {
        receiver
            .spans()
            .iter()
            .filter(|s| s.name == "sink.write_batch" && s.trace_id == http.trace_id)
            .filter_map(|s| s.attributes.get("sink").cloned())
            .collect::<Vec<String>>()
    };
    let every_sink = crate::common::eventually(WAIT, || async {
        let sinks = sinks_in_trace();
        [
            "event-logger",
            "stats-aggregator",
            "leaderboard-manager-redis",
        ]
        .iter()
        .all(|sink| sinks.iter().any(|s| s == sink))
    })
    .await;
    assert!(every_sink, "sinks in the trace: {:?}", sinks_in_trace());
    assert_eq!(
        metric_sum(
            &daemon.metrics().await,
            "gamestream_trace_export_dropped_total"
        ),
        0.0,
        "nothing dropped with a healthy collector"
    );
    // The logger's JSON log line of that batch names the trace and its span.
    let logs = daemon.stop_and_read_logs().await;
    let joined = logs.lines().any(|line| {
        serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
            v["message"] == "batch written"
                && v["sink"] == "event-logger"
                && v["trace_id"] == hex(&logger.trace_id).as_str()
                && v["span_id"] == hex(&logger.span_id).as_str()
        })
    });
    assert!(
        joined,
        "a JSON log line carries the logger span's ids:\n{logs}"
    );
}

/// A caller's W3C `traceparent` is continued. With `parentbased_traceidratio` at 0 no
/// request starts a sampled trace of its own, so only a caller's sampled flag can make
/// spans; an invalid `traceparent` is ignored, never a reason to refuse the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_traceparent_is_continued_and_a_bad_one_ignored() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const UNSAMPLED_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";
    let env = TestEnv::new().await;
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let daemon = Daemon::spawn(
        &env,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let bad: [&[u8]; 4] = [b"nonsense", b"00-zz-00f067aa0ba902b7-01", b"\xff\xfe", b""];
    for value in bad {
        let (status, answer) = daemon
            .post_event_with(&event_body("p-bad-context"), &[("traceparent", value)])
            .await;
        assert_eq!(status, 200, "traceparent {value:?}: {answer}");
    }
    let unsampled = format!("00-{UNSAMPLED_TRACE}-{CALLER_SPAN}-00");
    let (status, answer) = daemon
        .post_event_with(
            &event_body("p-unsampled"),
            &[("traceparent", unsampled.as_bytes())],
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let sampled = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (status, answer) = daemon
        .post_event_with(
            &event_body("p-caller"),
            &[
                ("traceparent", sampled.as_bytes()),
                ("tracestate", b"vendor=abc"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let id = event_id(&answer);
    assert!(crate::common::eventually(WAIT, || async { events_rows(&env, &id).await == 1 }).await);

    let http_name = "POST /api/v1/events";
    let downstream = crate::common::eventually(WAIT, || async {
        let spans = receiver.spans();
        [http_name, "kafka.consume", "sink.write_batch"]
            .iter()
            .all(|name| spans.iter().any(|s| s.name == *name))
    })
    .await;
    let spans = receiver.spans();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert!(
        downstream,
        "the caller's trace reaches the sinks: {names:?}"
    );
    let http: Vec<&Received> = spans.iter().filter(|s| s.name == http_name).collect();
    assert_eq!(
        http.len(),
        1,
        "only the sampled caller's request: {names:?}"
    );
    assert_eq!(
        hex(&http[0].trace_id),
        TRACE,
        "the request joins the caller's trace"
    );
    assert_eq!(
        hex(&http[0].parent_span_id),
        CALLER_SPAN,
        "the request span's parent is the caller's span"
    );
    let foreign: Vec<String> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) != TRACE)
        .map(|s| format!("{} in {}", s.name, hex(&s.trace_id)))
        .collect();
    assert!(
        foreign.is_empty(),
        "no other trace is sampled (unsampled caller, bad headers): {foreign:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    let env = TestEnv::new().await;
    let daemon = Daemon::spawn(&env, &[]).await;
    // Traffic so histograms and per-partition gauges have samples: one good event, one
    // invalid one.
    let (status, answer) = daemon.post_event(&event_body("p-metrics")).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = daemon.post_event(r#"{"event_type":""}"#).await;
    assert_eq!(status, 400);
    let id = event_id(&answer);
    assert!(crate::common::eventually(WAIT, || async { events_rows(&env, &id).await == 1 }).await);

    let wanted: Vec<&str> = include_str!("../../deploy/observability/dashboard-metrics.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(wanted.len() > 10, "the list is read");
    let exported = |text: &str, name: &str| {
        text.lines().any(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = daemon.metrics().await;
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|name| !exported(&text, name))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not exported: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_no_exporter_runs_and_records_carry_no_context() {
    let env = TestEnv::new().await;
    // Everything but the endpoint: a sampler and a protocol alone must not start export.
    let daemon = Daemon::spawn(
        &env,
        &[
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    )
    .await;
    let (status, answer) = daemon.post_event(&event_body("p-untraced")).await;
    assert_eq!(status, 200, "{answer}");
    let id = event_id(&answer);
    assert!(crate::common::eventually(WAIT, || async { events_rows(&env, &id).await == 1 }).await);
    let threads = daemon.threads();
    assert!(
        !threads.iter().any(|t| t.starts_with("OpenTelemetry")),
        "no export thread without an endpoint: {threads:?}"
    );
    let records = crate::common::ingest::consume_all(&env.config).await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].header("traceparent"),
        None,
        "no context injected"
    );
    assert_eq!(records[0].header("event_id").as_deref(), Some(id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_costs_only_dropped_spans() {
    let env = TestEnv::new().await;
    // A port nothing listens on: every export fails at connect.
    let endpoint = format!("http://127.0.0.1:{}", crate::common::free_port());
    let daemon = Daemon::spawn(
        &env,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, answer) = daemon.post_event(&event_body(&format!("p-drop-{i}"))).await;
        assert_eq!(status, 200, "ingest goes on without a collector: {answer}");
        ids.push(event_id(&answer));
    }
    for id in &ids {
        assert!(
            crate::common::eventually(WAIT, || async { events_rows(&env, id).await == 1 }).await,
            "the pipeline writes without a collector"
        );
    }
    let records = crate::common::ingest::consume_all(&env.config).await;
    assert!(
        records.iter().all(|r| r.header("traceparent").is_some()),
        "records still carry their context"
    );
    let dropped = crate::common::eventually(WAIT, || async {
        metric_sum(
            &daemon.metrics().await,
            "gamestream_trace_export_dropped_total",
        ) > 0.0
    })
    .await;
    assert!(dropped, "failed exports are counted as dropped spans");
}

/// An OTLP/HTTP receiver that accepts and discards, for the tracing-cost benchmark:
/// `OTLP_SINK_PORT=4318 cargo nextest run --test it traces:: discarding -- --ignored` and,
/// meanwhile, `OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 gamestream bench …`.
#[tokio::test]
#[ignore = "a tool for the benchmark, not a test"]
async fn discarding_otlp_receiver() {
    let port: u16 = std::env::var("OTLP_SINK_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(4318);
    let spans = Arc::new(Mutex::new(0_usize));
    let count = Arc::clone(&spans);
    let route = warp::post()
        .and(warp::path!("v1" / "traces"))
        .and(warp::body::bytes())
        .map(move |body: bytes::Bytes| {
            if let Ok(request) = ExportTraceServiceRequest::decode(body) {
                *count.lock().expect("lock") += decode(request).len();
            }
            ExportTraceServiceResponse::default().encode_to_vec()
        });
    let seconds: u64 = std::env::var("OTLP_SINK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let server = warp::serve(route).incoming(listener).run();
    let _ = tokio::time::timeout(Duration::from_secs(seconds), server).await;
    eprintln!("spans received: {}", spans.lock().expect("lock"));
}
