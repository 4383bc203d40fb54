//! The latency phase: events at a fixed rate through `POST /api/v1/events` of a child
//! daemon (ingest and consume), timed from the request until the row is visible in
//! Postgres `events`.
//!
//! ```text
//! pacer ── every 1/rate s ──► POST /api/v1/events ──► 2xx {event_id}
//!   (send time t0)                                        │ (id, t0)
//! watcher ◄───────────────────────────────────────────────┘
//!   every poll_interval: SELECT event_id FROM events WHERE event_id = ANY(pending)
//!   found at poll start t1 ─► sample t1 - t0
//! ```
//!
//! The resolution of a sample is one poll cycle (the interval plus the query's own
//! time), reported next to the percentiles. The client's send time stands for the
//! server's accept; on loopback they differ by microseconds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use super::BenchError;
use super::report::{LatencyBreakdown, LatencyReport, Percentiles};
use super::{BenchArgs, Scratch, bench_event, cpu, scrape, throughput};
use crate::config::Mode;

/// How often readiness is asked while the daemon starts, and for how long at most.
const READY_POLL: Duration = Duration::from_millis(100);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Per-request timeout of the load client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One accepted event, waiting to be seen in Postgres.
struct Sent {
    id: uuid::Uuid,
    at: Instant,
}

/// Runs the phase against a fresh child daemon on the scratch names.
pub(super) async fn run(scratch: &Scratch, args: &BenchArgs) -> Result<LatencyReport, BenchError> {
    let port = free_port()?;
    let child = throughput::daemon(scratch, Mode::All, port)?;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.latency_concurrency)
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| BenchError::Failed(format!("http client: {e}")))?;
    let result = async {
        wait_ready(&client, &base).await?;
        let before = scrape::snapshot(&client, &base).await?;
        let busy = Busy::start(scratch, child.id().unwrap_or(0));
        let mut report = drive(scratch, args, &client, &base).await?;
        report.cores_busy = busy.finish();
        let after = scrape::snapshot(&client, &base).await?;
        report.breakdown = before.breakdown(&after, report.breakdown.total_ms);
        Ok(report)
    }
    .await;
    throughput::stop(child).await;
    result
}

pub(super) async fn wait_ready(client: &reqwest::Client, base: &str) -> Result<(), BenchError> {
    let started = Instant::now();
    while started.elapsed() < READY_TIMEOUT {
        let ready = client.get(format!("{base}/ready")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(READY_POLL).await;
    }
    Err(BenchError::Failed(format!(
        "the daemon was not ready within {READY_TIMEOUT:?}"
    )))
}

/// Paces the requests and watches for the rows; returns once every accepted event was
/// seen (or `args.timeout` passed).
async fn drive(
    scratch: &Scratch,
    args: &BenchArgs,
    client: &reqwest::Client,
    base: &str,
) -> Result<LatencyReport, BenchError> {
    let count = (args.latency_rate * args.latency_duration.as_secs_f64()).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / args.latency_rate.max(f64::MIN_POSITIVE));
    let (sent_tx, sent_rx) = mpsc::unbounded_channel::<Sent>();
    let watcher = tokio::spawn(watch(
        scratch.pg.clone(),
        sent_rx,
        args.poll_interval,
        args.timeout,
    ));
    let slots = Arc::new(Semaphore::new(args.latency_concurrency.max(1)));
    let target = format!("{base}/api/v1/events");
    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..count {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        // The semaphore is never closed, so acquiring only waits.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let body = submission(i, args.players, args.games);
        let (client, target, sent_tx) = (client.clone(), target.clone(), sent_tx.clone());
        requests.spawn(async move {
            let at = Instant::now();
            let id = post(&client, &target, body).await;
            let answered = at.elapsed();
            drop(slot);
            let id = id?;
            let _ = sent_tx.send(Sent { id, at });
            Some(answered)
        });
    }
    let send_seconds = started.elapsed().as_secs_f64();
    drop(sent_tx);
    let mut answers = Vec::with_capacity(count);
    while let Some(answered) = requests.join_next().await {
        answers.extend(answered.ok().flatten());
    }
    answers.sort_unstable();
    let watched = watcher
        .await
        .map_err(|e| BenchError::Failed(format!("latency watcher: {e}")))??;
    let mut samples = watched.samples;
    samples.sort_unstable();
    let total: Duration = samples.iter().sum();
    let mean_ms = total.as_secs_f64() * 1e3 / samples.len().max(1) as f64;
    Ok(LatencyReport {
        target_rate: args.latency_rate,
        achieved_rate: count as f64 / send_seconds.max(f64::MIN_POSITIVE),
        sent: count,
        accepted: answers.len(),
        samples: samples.len(),
        percentiles_ms: Percentiles::of(&samples),
        http_percentiles_ms: Percentiles::of(&answers),
        poll_interval_ms: args.poll_interval.as_secs_f64() * 1e3,
        mean_poll_cycle_ms: watched.mean_cycle.as_secs_f64() * 1e3,
        // The stages are filled in from the daemon's histograms once the phase is over.
        breakdown: LatencyBreakdown {
            total_ms: mean_ms,
            ..Default::default()
        },
        cores_busy: Default::default(),
    })
}

/// The request body of the `i`-th event: `bench_event`'s mix, timed now (so today's
/// boards are hit). The ingest phase sends the same bodies.
pub(super) fn submission(i: usize, players: usize, games: usize) -> Vec<u8> {
    let event = bench_event(i, players, games);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(
        r#"{{"event_type":"{}","player_id":"{}","game_id":"{}","timestamp":"{now}","data":{}}}"#,
        event.event_type, event.player_id, event.game_id, event.data
    )
    .into_bytes()
}

/// POSTs one event; its id if it was accepted.
async fn post(client: &reqwest::Client, target: &str, body: Vec<u8>) -> Option<uuid::Uuid> {
    let response = client
        .post(target)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let text = response.text().await.ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["event_id"].as_str()?.parse().ok()
}

struct Watched {
    samples: Vec<Duration>,
    mean_cycle: Duration,
}

/// Polls `events` for the pending ids until the sender is done and nothing is pending.
async fn watch(
    pg: sqlx::PgPool,
    mut sent: mpsc::UnboundedReceiver<Sent>,
    poll_interval: Duration,
    timeout: Duration,
) -> Result<Watched, BenchError> {
    let mut pending: HashMap<uuid::Uuid, Instant> = HashMap::new();
    let mut samples = Vec::new();
    let (mut open, mut cycles, started) = (true, 0_u32, Instant::now());
    let mut ticker = tokio::time::interval(poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while (open || !pending.is_empty()) && started.elapsed() < timeout {
        ticker.tick().await;
        cycles += 1;
        loop {
            match sent.try_recv() {
                Ok(s) => {
                    pending.insert(s.id, s.at);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if pending.is_empty() {
            continue;
        }
        let ids: Vec<uuid::Uuid> = pending.keys().copied().collect();
        let polled_at = Instant::now();
        let found: Vec<uuid::Uuid> =
            sqlx::query_scalar("SELECT event_id FROM events WHERE event_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&pg)
                .await?;
        for id in found {
            if let Some(at) = pending.remove(&id) {
                samples.push(polled_at.saturating_duration_since(at));
            }
        }
    }
    Ok(Watched {
        samples,
        mean_cycle: started.elapsed() / cycles.max(1),
    })
}

/// CPU of every process on the events' way (the daemon, the stores, this bench's own
/// load client) over the phase, to read as cores busy: at a rate the machine cannot
/// carry, it says who holds the cores.
struct Busy {
    stores: cpu::Stores,
    stores_before: cpu::Snapshot,
    daemon: (u32, u64),
    client_before: u64,
    started: Instant,
}

impl Busy {
    fn start(scratch: &Scratch, daemon_pid: u32) -> Self {
        let stores = throughput::stores(scratch);
        Self {
            stores_before: stores.snapshot(),
            stores,
            daemon: (daemon_pid, cpu::process_ticks(daemon_pid)),
            client_before: cpu::process_ticks(std::process::id()),
            started: Instant::now(),
        }
    }

    /// Process → cores busy.
    fn finish(self) -> BTreeMap<String, f64> {
        let wall = self.started.elapsed().as_secs_f64();
        let (pid, daemon_before) = self.daemon;
        let daemon = cpu::process_ticks(pid).saturating_sub(daemon_before);
        let stores_after = self.stores.snapshot();
        let stores = cpu::CpuReport::of(0, &self.stores_before, &stores_after, 0, wall);
        let client = cpu::process_ticks(std::process::id()).saturating_sub(self.client_before);
        let mut busy: BTreeMap<String, f64> = stores
            .store_cpu_seconds
            .into_iter()
            .map(|(store, seconds)| (store, seconds / wall.max(f64::MIN_POSITIVE)))
            .collect();
        busy.insert("daemon".to_owned(), cpu::cores_busy(daemon, wall));
        busy.insert("bench client".to_owned(), cpu::cores_busy(client, wall));
        busy
    }
}

/// A free loopback port for the child's HTTP server.
pub(super) fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::Failed(format!("no free port: {e}")))
}
