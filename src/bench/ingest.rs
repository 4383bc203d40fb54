//! The ingest phase: how fast a child daemon (`mode = "ingest"`) takes events over HTTP,
//! next to a constant endpoint of the same server, measured by the same client in the
//! same minute.
//!
//! ```text
//! rounds × ( GET /health, N connections, closed loop   ─► reference requests/s
//!            POST /api/v1/events, same connections      ─► requests/s, ratio, p50/p99 )
//! POST /api/v1/events/batch, 1,000 events a request     ─► events/s, plain and gzip
//! ```
//!
//! A closed loop: each connection sends its next request when the last one is answered,
//! so the figure is what the server sustains with that many clients waiting on it. The
//! client runs in this process, on the same cores as the server, for both endpoints
//! alike: the ratio is the figure to compare, not the absolute rate (a lighter client
//! such as wrk, `benches/http_ingest.sh`, gets higher rates from both).

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::report::{IngestReport, IngestRound, Percentiles};
use super::{BenchArgs, BenchError, Scratch, latency, throughput};
use crate::config::Mode;

/// Events in one request of the batch runs (the default `http.batch_limit`).
const BATCH_EVENTS: usize = 1000;
/// Distinct request bodies cycled through by the single-event runs.
const BODIES: usize = 1024;
/// Sending before the first measured run, so the broker's and the server's first-use
/// costs (connections, JIT, allocations) are not in it.
const WARM_UP: Duration = Duration::from_secs(3);

/// One closed-loop run's outcome.
struct Run {
    per_sec: f64,
    failed: u64,
    latencies: Vec<Duration>,
}

/// What one run sends: parsed once, so a request costs the client no formatting,
/// parsing or body copy of its own (the client shares the cores with the server).
#[derive(Clone)]
struct Request {
    url: reqwest::Url,
    /// POST bodies, one per request in turn; none: GET.
    bodies: Arc<[Bytes]>,
    gzip: bool,
}

impl Request {
    fn new(base: &str, path: &str, bodies: Vec<Vec<u8>>, gzip: bool) -> Result<Self, BenchError> {
        let url = reqwest::Url::parse(&format!("{base}{path}"))
            .map_err(|e| BenchError::Failed(format!("{base}{path}: {e}")))?;
        Ok(Self {
            url,
            bodies: bodies.into_iter().map(Bytes::from).collect(),
            gzip,
        })
    }
}

pub(super) async fn run(scratch: &Scratch, args: &BenchArgs) -> Result<IngestReport, BenchError> {
    let port = latency::free_port()?;
    let child = throughput::daemon(scratch, Mode::Ingest, port)?;
    let base = format!("http://127.0.0.1:{port}");
    let result = async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(args.ingest_connections.max(args.batch_connections))
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| BenchError::Failed(format!("http client: {e}")))?;
        latency::wait_ready(&client, &base).await?;
        measure(&client, &base, args).await
    }
    .await;
    throughput::stop(child).await;
    result
}

async fn measure(
    client: &reqwest::Client,
    base: &str,
    args: &BenchArgs,
) -> Result<IngestReport, BenchError> {
    let bodies: Vec<Vec<u8>> = (0..BODIES)
        .map(|i| latency::submission(i, args.players, args.games))
        .collect();
    let single = Request::new(base, "/api/v1/events", bodies, false)?;
    let constant = Request::new(base, "/health", Vec::new(), false)?;
    let (n, seconds) = (args.ingest_connections, args.ingest_duration);
    eprintln!("bench: ingest phase, {n} connections, {seconds:?} per run");
    let mut failed = run_closed_loop(client, &single, n, WARM_UP).await?.failed;
    let mut rounds = Vec::new();
    let mut single_latencies = Vec::new();
    for _ in 0..args.ingest_rounds.max(1) {
        let constant = run_closed_loop(client, &constant, n, seconds).await?;
        let events = run_closed_loop(client, &single, n, seconds).await?;
        failed += constant.failed + events.failed;
        rounds.push(IngestRound {
            constant_requests_per_sec: constant.per_sec,
            single_requests_per_sec: events.per_sec,
            ratio: events.per_sec / constant.per_sec.max(f64::MIN_POSITIVE),
        });
        single_latencies.extend(events.latencies);
    }
    single_latencies.sort_unstable();
    let batch_body = batch_body(args.players, args.games);
    let mut batch_rates = [0.0; 2];
    for (gzip, rate) in [false, true].into_iter().zip(&mut batch_rates) {
        let body = if gzip {
            gzipped(&batch_body)?
        } else {
            batch_body.clone()
        };
        let batch = Request::new(base, "/api/v1/events/batch", vec![body], gzip)?;
        let run = run_closed_loop(client, &batch, args.batch_connections, seconds).await?;
        failed += run.failed;
        *rate = run.per_sec * BATCH_EVENTS as f64;
    }
    let mean_ratio = rounds.iter().map(|r| r.ratio).sum::<f64>() / rounds.len() as f64;
    Ok(IngestReport {
        connections: n,
        seconds_per_run: seconds.as_secs_f64(),
        rounds,
        mean_ratio,
        single_percentiles_ms: Percentiles::of(&single_latencies),
        batch_connections: args.batch_connections,
        batch_events_per_sec: batch_rates[0],
        batch_gzip_events_per_sec: batch_rates[1],
        failed,
    })
}

/// `connections` loops, each sending `request` and, once answered, the next, for `length`.
async fn run_closed_loop(
    client: &reqwest::Client,
    request: &Request,
    connections: usize,
    length: Duration,
) -> Result<Run, BenchError> {
    let started = Instant::now();
    let deadline = started + length;
    let mut loops = tokio::task::JoinSet::new();
    for connection in 0..connections.max(1) {
        let (client, request) = (client.clone(), request.clone());
        loops.spawn(async move {
            let (mut ok, mut failed, mut latencies) = (0_u64, 0_u64, Vec::new());
            let mut i = connection;
            while Instant::now() < deadline {
                let at = Instant::now();
                let answered = send(&client, &request, i).await;
                if answered {
                    ok += 1;
                    latencies.push(at.elapsed());
                } else {
                    failed += 1;
                }
                i += connections;
            }
            (ok, failed, latencies)
        });
    }
    let (mut ok, mut failed, mut latencies) = (0, 0, Vec::new());
    while let Some(done) = loops.join_next().await {
        let (o, f, l) = done.map_err(|e| BenchError::Failed(format!("ingest client: {e}")))?;
        ok += o;
        failed += f;
        latencies.extend(l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Run {
        per_sec: ok as f64 / elapsed,
        failed,
        latencies,
    })
}

/// Sends one request; whether it was answered 2xx.
async fn send(client: &reqwest::Client, request: &Request, i: usize) -> bool {
    let builder = if request.bodies.is_empty() {
        client.get(request.url.clone())
    } else {
        let post = client
            .post(request.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(request.bodies[i % request.bodies.len()].clone());
        if request.gzip {
            post.header(reqwest::header::CONTENT_ENCODING, "gzip")
        } else {
            post
        }
    };
    match builder.send().await {
        // The body is read, so the connection is free for the next request.
        Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
        Err(_) => false,
    }
}

/// A `POST /api/v1/events/batch` body: a JSON array of [`BATCH_EVENTS`] events.
fn batch_body(players: usize, games: usize) -> Vec<u8> {
    let mut body = b"[".to_vec();
    for i in 0..BATCH_EVENTS {
        if i > 0 {
            body.push(b',');
        }
        body.extend(latency::submission(i, players, games));
    }
    body.push(b']');
    body
}

fn gzipped(body: &[u8]) -> Result<Vec<u8>, BenchError> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(body)
        .and_then(|()| encoder.finish())
        .map_err(|e| BenchError::Failed(format!("gzip: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_body_is_a_json_array_of_batch_events() {
        let body = batch_body(10, 3);
        let value: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        let events = value.as_array().expect("an array of events");
        assert_eq!(events.len(), BATCH_EVENTS);
        assert!(events.iter().all(|e| e["player_id"].is_string()));
        let inflated = {
            use std::io::Read as _;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&gzipped(&body).expect("gzip")[..])
                .read_to_end(&mut out)
                .expect("gunzip");
            out
        };
        assert_eq!(inflated, body);
    }
}
