//! The chaos suite: under continuous HTTP load the daemon is killed (-9) three times
//! (twice restarted under its lease member id, as a container in its pod; once under a
//! new one, as a replaced pod), Postgres restarts, Redis restarts empty and the broker
//! (Apache Kafka, killed with SIGKILL) restarts; then every table and key is checked against the
//! suite's own tally.
//!
//! ```text
//!  load workers ──POST /api/v1/events/batch──► gamestream serve (child, kill -9 ×3)
//!       │ tally: 2xx-acknowledged attempts          │           │            │
//!       │        and unacknowledged ones            ▼           ▼            ▼
//!       │                                   private Kafka   private PG   private Redis
//!  fault driver ── kill/restart, time to recover ──┘ (kill -9)  (restart)   (restart empty)
//! ```
//!
//! All three services are private to the test (`tests/it/common`): the shared stack is
//! never stopped. Single daemon: the multi-daemon (partition lease) part is not here.
//!
//! # The tally rule
//!
//! The server assigns `event_id`, so a client cannot resend "the same" event: a resend
//! is a new event. Each *attempt* therefore carries its own tag in `data`
//! (`seq`, `attempt`), and the load resends a `seq` (as a new attempt) only when the
//! attempt got no 2xx success: a non-2xx answer, an item error, or no answer at all.
//! - An attempt with a 2xx success is *acknowledged*: it must be in `events` exactly
//!   once (else it is lost, a discrepancy).
//! - An attempt without one is *unacknowledged*: it may have landed ("accepted but the
//!   answer was lost", e.g. the daemon was killed after the broker's ack). It may be in
//!   `events` at most once; if it is, it is an event the system accepted, so it counts.
//! - Any other row is a phantom; a tag in two rows is a duplicate.
//!
//! The expected statistics and leaderboards are then computed here, from the events
//! that landed (acknowledged ones plus the unacknowledged ones found), and compared
//! with `player_statistics`, `leaderboard_scores`, `player_stats:*` and the
//! `leaderboard:*` sorted sets; and no dead letter may exist (every fault is transient).
//!
//! Default size: 20,000 events. The full run (≥ 100,000):
//! `CHAOS_EVENTS=100000 cargo test --test it chaos:: -- --nocapture` (plain cargo test: the
//! full run outlasts the 5-minute kill of .config/nextest.toml).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::analytics::{
    Expected, PG_SINKS, REDIS_SINKS, day_key, hgetall, last_event_text, pg_scores, pg_stats,
    redis_offsets, stores_at_marks, week_key, zset,
};
use crate::common::{
    PrivateBroker, PrivatePostgres, PrivateRedis, eventually, free_port, high_watermarks, scan_keys,
};
use chrono::{DateTime, SubsecRound, Utc};
use gamestream::config::{self, Config, Sources};
use gamestream::event::{Event, KNOWN_EVENT_TYPES, Score};
use gamestream::kafka;
use gamestream::sinks::postgres;
use uuid::Uuid;

/// Events per HTTP batch request.
const BATCH: usize = 25;
/// Concurrent load workers.
const WORKERS: usize = 8;
const PLAYERS: usize = 300;
const GAMES: usize = 4;
/// Pause between two attempts of the same batch.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long a fault may take to recover before the suite calls it a failure.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the stores may take to catch up once the load is over.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a dead service stays dead.
const OUTAGE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// kill -9, then start again under the same member id: a container restarted in
    /// its pod (Kubernetes keeps the pod name), which adopts its own leases.
    KillDaemon,
    /// kill -9, then start under a new member id: a replaced pod, which must wait
    /// until the dead daemon's leases expire (`lease.ttl`, 10 s by default).
    ReplaceDaemon,
    RestartPostgres,
    /// SIGKILL of the postmaster (a crash: unflushed WAL is lost), then crash recovery.
    KillPostgres,
    /// A replaced pod (as [`Fault::ReplaceDaemon`]), and PostgreSQL killed with SIGKILL
    /// the moment the new daemon holds its first lease: while partitions move.
    KillPostgresDuringHandover,
    RestartRedisEmpty,
    RestartBroker,
}

const FAULTS: [Fault; 8] = [
    Fault::KillDaemon,
    Fault::RestartPostgres,
    Fault::ReplaceDaemon,
    Fault::KillPostgres,
    Fault::RestartRedisEmpty,
    Fault::KillDaemon,
    Fault::KillPostgresDuringHandover,
    Fault::RestartBroker,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillDaemon => "kill -9 daemon (same member id)",
            Fault::ReplaceDaemon => "kill -9 daemon (new member id)",
            Fault::RestartPostgres => "restart postgres",
            Fault::KillPostgres => "kill -9 postgres",
            Fault::KillPostgresDuringHandover => "kill -9 postgres during a handover",
            Fault::RestartRedisEmpty => "restart redis empty",
            Fault::RestartBroker => "restart broker",
        }
    }
}

/// One attempt: the `seq` of the logical event and the attempt number.
type Tag = (usize, u32);

/// What the load saw.
#[derive(Default)]
struct Tally {
    /// Acknowledged attempts: event id, and the window (faults started) of the ack.
    acked: HashMap<Tag, (Uuid, usize)>,
    /// Attempts without a 2xx success.
    unacked: HashSet<Tag>,
}

/// Shared state of the load workers and the fault driver.
struct Load {
    url: String,
    total: usize,
    /// Events per fault window: the load is gated so every fault happens mid-stream.
    window: usize,
    now: DateTime<Utc>,
    next: AtomicUsize,
    acked_seqs: AtomicUsize,
    faults_started: AtomicUsize,
    abort: AtomicBool,
    tally: Mutex<Tally>,
    /// Each worker's time between batches under `CHAOS_RATE` (None: as fast as acks come).
    pace: Option<Duration>,
}

impl Load {
    /// The first `seq` the workers may not send yet: three quarters of a window past
    /// the next fault's trigger, so every fault strikes mid-stream. Starting a fault
    /// opens the next window at once: load must keep flowing while it is in progress,
    /// or its recovery (new acknowledgements, new commits) could never be observed.
    fn limit(&self) -> usize {
        (self.faults_started.load(Ordering::SeqCst) + 1) * self.window + self.window / 4
    }
}

/// The event of attempt `(seq, attempt)`, as the load sends it and the checker expects it.
fn event_of(seq: usize, attempt: u32, now: DateTime<Utc>) -> Event {
    let event_type = KNOWN_EVENT_TYPES[seq % KNOWN_EVENT_TYPES.len()];
    let (data, score) = if event_type == "player_score" {
        let points = (seq * 37 % 1000) as i64 - 100;
        (
            format!(r#"{{"seq":{seq},"attempt":{attempt},"score":{points}}}"#),
            Score::Integer(points),
        )
    } else {
        (
            format!(r#"{{"seq":{seq},"attempt":{attempt}}}"#),
            Score::Absent,
        )
    };
    Event {
        event_id: Uuid::nil(),
        event_type: event_type.to_owned(),
        player_id: format!("player-{}", seq * 7919 % PLAYERS),
        game_id: format!("game-{}", seq % GAMES),
        timestamp: now,
        ingested_at: now,
        data,
        score,
    }
}

fn submission_json(event: &Event) -> String {
    format!(
        r#"{{"event_type":"{}","player_id":"{}","game_id":"{}","timestamp":"{}","data":{}}}"#,
        event.event_type,
        event.player_id,
        event.game_id,
        gamestream::event::rfc3339(event.timestamp),
        event.data
    )
}

/// A load worker: takes batches of `seq`s and sends each until every event of it has
/// an acknowledged attempt.
async fn worker(load: Arc<Load>, http: reqwest::Client) {
    let mut next_batch_at = tokio::time::Instant::now();
    loop {
        if let Some(pace) = load.pace {
            tokio::time::sleep_until(next_batch_at).await;
            next_batch_at = next_batch_at.max(tokio::time::Instant::now() - pace) + pace;
        }
        let start = load.next.fetch_add(BATCH, Ordering::SeqCst);
        if start >= load.total {
            return;
        }
        while start >= load.limit() {
            if load.abort.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut pending: Vec<usize> = (start..(start + BATCH).min(load.total)).collect();
        let mut attempt = 0u32;
        while !pending.is_empty() {
            if load.abort.load(Ordering::SeqCst) {
                return;
            }
            pending = send_batch(&load, &http, &pending, attempt).await;
            attempt += 1;
            if !pending.is_empty() {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Sends one attempt of `seqs`; returns the seqs without an acknowledged attempt.
async fn send_batch(
    load: &Load,
    http: &reqwest::Client,
    seqs: &[usize],
    attempt: u32,
) -> Vec<usize> {
    let items: Vec<String> = seqs
        .iter()
        .map(|&seq| submission_json(&event_of(seq, attempt, load.now)))
        .collect();
    let body = format!("[{}]", items.join(","));
    let answer = match http
        .post(&load.url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(response) => {
            let ok = response.status().is_success();
            response
                .json::<serde_json::Value>()
                .await
                .ok()
                .map(|json| (ok, json))
        }
        Err(_) => None,
    };
    let window = load.faults_started.load(Ordering::SeqCst);
    let mut tally = load.tally.lock().expect("tally lock"); // poisoned only if a worker panicked
    let mut retry = Vec::new();
    for (i, &seq) in seqs.iter().enumerate() {
        let acked_id = answer.as_ref().and_then(|(ok, json)| {
            let item = &json["results"][i];
            (*ok && item["status"] == "success")
                .then(|| item["event_id"].as_str()?.parse::<Uuid>().ok())
                .flatten()
        });
        match acked_id {
            Some(id) => {
                tally.acked.insert((seq, attempt), (id, window));
                load.acked_seqs.fetch_add(1, Ordering::SeqCst);
            }
            None => {
                tally.unacked.insert((seq, attempt));
                retry.push(seq);
            }
        }
    }
    retry
}

/// The private services and the daemon under test.
struct Rig {
    pg: PrivatePostgres,
    redis: PrivateRedis,
    broker: PrivateBroker,
    config: Config,
    env: Vec<(String, String)>,
    overrides: Vec<(String, String)>,
    log: PathBuf,
    _dir: tempfile::TempDir,
    daemon: Option<tokio::process::Child>,
    /// `lease.member_id` of the daemon; a new one for [`Fault::ReplaceDaemon`].
    member: u32,
    /// Exits of the daemon the suite did not cause.
    unexpected_exits: Vec<String>,
}

impl Rig {
    async fn start() -> Self {
        let pg = PrivatePostgres::start();
        let redis = PrivateRedis::start();
        let broker = PrivateBroker::start_durable().await;
        let env: Vec<(String, String)> = [
            ("KAFKA_BOOTSTRAP_SERVERS", broker.address()),
            ("DB_HOST", "127.0.0.1".to_owned()),
            ("DB_PORT", pg.port.to_string()),
            ("DB_NAME", "gamestream".to_owned()),
            ("DB_USER", "gamestream".to_owned()),
            ("DB_PASSWORD", String::new()),
            ("REDIS_HOST", "127.0.0.1".to_owned()),
            ("REDIS_PORT", redis.port.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let overrides: Vec<(String, String)> = [
            ("http.bind", "\"127.0.0.1\"".to_owned()),
            ("http.port", free_port().to_string()),
            ("redis.timeout", "\"1s\"".to_owned()),
            ("consumer.retry_max_backoff", "\"500ms\"".to_owned()),
            ("stats.linger", "\"50ms\"".to_owned()),
            ("leaderboard.linger", "\"50ms\"".to_owned()),
            ("leaderboard.refresh_interval", "\"1s\"".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let config = config::load(&Sources {
            file: None,
            env: env.clone(),
            overrides: overrides.clone(),
        })
        .expect("chaos configuration is valid");
        pg.create_database("gamestream").await;
        let pool = postgres::connect(&config.postgres)
            .await
            .expect("connect private postgres");
        postgres::migrate(&pool).await.expect("migrate");
        pool.close().await;
        let client = kafka::connect(&config.kafka).await.expect("private broker");
        kafka::create_topics(&client, &config.topics)
            .await
            .expect("create topics");
        // `CHAOS_KEEP_LOG=1` keeps the daemon's log after the run, to read how it recovered.
        let dir = tempfile::Builder::new()
            .prefix("gs-chaos-")
            .disable_cleanup(std::env::var_os("CHAOS_KEEP_LOG").is_some())
            .tempdir()
            .expect("tempdir");
        let log = dir.path().join("daemon.log");
        let mut rig = Self {
            pg,
            redis,
            broker,
            config,
            env,
            overrides,
            log,
            _dir: dir,
            daemon: None,
            member: 1,
            unexpected_exits: Vec::new(),
        };
        rig.spawn_daemon();
        rig
    }

    fn spawn_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log");
        let log_err = log.try_clone().expect("daemon log");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gamestream"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .envs(self.env.clone())
            .args(
                self.overrides
                    .iter()
                    .flat_map(|(k, v)| ["--set".to_owned(), format!("{k}={v}")]),
            )
            .args([
                "--set",
                &format!("lease.member_id=\"chaos-{}\"", self.member),
            ])
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn gamestream serve");
        self.daemon = Some(child);
    }

    /// Restarts the daemon if it exited by itself, noting it.
    fn check_daemon(&mut self) {
        let exited = self
            .daemon
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten());
        if let Some(status) = exited {
            self.unexpected_exits.push(status.to_string());
            self.spawn_daemon();
        }
    }

    /// The first half of a fault: kills the daemon or stops the service.
    async fn inflict(&mut self, fault: Fault) {
        match fault {
            Fault::KillDaemon | Fault::ReplaceDaemon | Fault::KillPostgresDuringHandover => {
                if let Some(mut child) = self.daemon.take() {
                    child.kill().await.expect("kill -9 the daemon");
                }
            }
            Fault::RestartPostgres => tokio::task::block_in_place(|| self.pg.pause()),
            Fault::KillPostgres => tokio::task::block_in_place(|| self.pg.kill()),
            Fault::RestartRedisEmpty => tokio::task::block_in_place(|| self.redis.kill()),
            Fault::RestartBroker => self.broker.stop().await,
        }
    }

    /// The second half: after a pause, starts the daemon or the service again.
    async fn repair(&mut self, fault: Fault) {
        match fault {
            Fault::KillDaemon | Fault::ReplaceDaemon => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if fault == Fault::ReplaceDaemon {
                    self.member += 1;
                }
                self.spawn_daemon();
            }
            Fault::RestartPostgres | Fault::KillPostgres => {
                tokio::time::sleep(OUTAGE).await;
                tokio::task::block_in_place(|| self.pg.resume());
            }
            Fault::KillPostgresDuringHandover => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.member += 1;
                self.spawn_daemon();
                // The new member's first lease: the dead daemon's ones expired and are
                // being taken over, claimed in the sinks, and written under new epochs.
                let member = format!("chaos-{}", self.member);
                let url = format!(
                    "postgres://gamestream@127.0.0.1:{}/gamestream",
                    self.pg.port
                );
                let moved = eventually(Duration::from_secs(60), || {
                    let (url, member) = (url.clone(), member.clone());
                    async move {
                        use sqlx::Connection;
                        let Ok(mut conn) = sqlx::PgConnection::connect(&url).await else {
                            return false;
                        };
                        sqlx::query_scalar::<_, i64>(
                            "SELECT count(*) FROM partition_leases WHERE owner = $1",
                        )
                        .bind(&member)
                        .fetch_one(&mut conn)
                        .await
                        .is_ok_and(|n| n > 0)
                    }
                })
                .await;
                assert!(moved, "the new daemon took no lease within 60 s");
                tokio::task::block_in_place(|| self.pg.kill());
                tokio::time::sleep(OUTAGE).await;
                tokio::task::block_in_place(|| self.pg.resume());
            }
            Fault::RestartRedisEmpty => {
                tokio::time::sleep(OUTAGE).await;
                tokio::task::block_in_place(|| self.redis.restart_empty());
            }
            Fault::RestartBroker => {
                tokio::time::sleep(OUTAGE).await;
                self.broker.restart().await;
            }
        }
    }

    async fn redis(&self) -> Option<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.redis.port)).ok()?;
        tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()
    }

    /// Sum of committed offsets per sink (Postgres sinks, then Redis sinks); `None`
    /// while a store does not answer.
    async fn progress(&self, pg: &sqlx::PgPool) -> Option<Vec<i64>> {
        let topic = &self.config.topics.player_events;
        let mut sums = Vec::new();
        for sink in PG_SINKS {
            let rows: Vec<(i32, i64)> = sqlx::query_as(
                "SELECT partition, next_offset FROM sink_offsets WHERE sink = $1 AND topic = $2",
            )
            .bind(sink)
            .bind(topic)
            .fetch_all(pg)
            .await
            .ok()?;
            sums.push(rows.iter().map(|r| r.1).sum());
        }
        let mut redis = self.redis().await?;
        for sink in REDIS_SINKS {
            let offsets = tokio::time::timeout(
                Duration::from_secs(2),
                redis_offsets(&mut redis, "", sink, topic),
            )
            .await
            .ok()?;
            sums.push(offsets.values().sum());
        }
        Some(sums)
    }

    /// Whether every sink of both stores has committed up to the topic's high watermarks.
    async fn caught_up(&self, pg: &sqlx::PgPool) -> bool {
        let topic = &self.config.topics.player_events;
        let marks = high_watermarks(&self.config, topic).await;
        let Some(mut redis) = self.redis().await else {
            return false;
        };
        stores_at_marks(pg, &mut redis, "", topic, &marks).await
    }
}

/// One line of the report.
struct Row {
    fault: String,
    /// Time to recover; `None` if it did not (within the timeout).
    recovery: Option<Duration>,
    /// Whether the row is a fault (with a recovery time) or a check.
    is_fault: bool,
    checked: usize,
    discrepancies: usize,
}

/// Runs the fault schedule while the load runs; one row per fault.
async fn drive_faults(rig: &mut Rig, load: &Load, pg: &sqlx::PgPool) -> Vec<Row> {
    let mut rows = Vec::new();
    for (k, &fault) in FAULTS.iter().enumerate() {
        let trigger = k * load.window + load.window / 2;
        let reached = eventually(RECOVERY_TIMEOUT, || async {
            load.acked_seqs.load(Ordering::SeqCst) >= trigger
        })
        .await;
        let acked_at_trigger = load.acked_seqs.load(Ordering::SeqCst);
        assert!(
            reached,
            "{}: the load stalled before it ({acked_at_trigger} of {trigger} events acknowledged \
             after {RECOVERY_TIMEOUT:?}); daemon log in {:?}",
            fault.name(),
            rig.log
        );
        rig.check_daemon();
        eprintln!(
            "chaos: {} at {acked_at_trigger} acknowledged events ({:.0}s in)",
            fault.name(),
            (Utc::now() - load.now).as_seconds_f64()
        );
        let mut progress_before = loop {
            if let Some(p) = rig.progress(pg).await {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let started = Instant::now();
        rig.inflict(fault).await;
        // The baseline of recovery is taken once the fault has struck: answers and
        // commits already under way before it must not count as recovery (at full
        // speed they arrive every few milliseconds). With both stores up (the daemon
        // or the broker is down) their offsets are read again; a stopped store has
        // committed nothing since the reading above (and reading it would only wait).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let acked_before = load.acked_seqs.load(Ordering::SeqCst);
        // Only now may the load go on to its next stop: Apache Kafka acknowledges a whole
        // slice of the load within the 200 ms above, and recovery would then wait for
        // acknowledgements that the gate no longer lets come.
        load.faults_started.fetch_add(1, Ordering::SeqCst);
        let stores_up = matches!(
            fault,
            Fault::KillDaemon | Fault::ReplaceDaemon | Fault::RestartBroker
        );
        if stores_up && let Some(now) = rig.progress(pg).await {
            progress_before = now;
        }
        rig.repair(fault).await;
        let mut recovery = None;
        while started.elapsed() < RECOVERY_TIMEOUT {
            rig.check_daemon();
            let acked = load.acked_seqs.load(Ordering::SeqCst) > acked_before;
            let sinks = rig
                .progress(pg)
                .await
                .is_some_and(|now| now.iter().zip(&progress_before).all(|(a, b)| a > b));
            if acked && sinks {
                recovery = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rows.push(Row {
            fault: fault.name().to_owned(),
            recovery,
            is_fault: true,
            checked: 0,
            discrepancies: 0,
        });
    }
    rows
}

/// An `events` row: event id, `data.seq`, `data.attempt`.
type EventRow = (Uuid, Option<String>, Option<String>);

/// Checks `events` against the tally; fills `checked` and `discrepancies` of each
/// window's row (row 0: before any fault) and returns the events that landed.
async fn check_events(
    pg: &sqlx::PgPool,
    tally: &Tally,
    now: DateTime<Utc>,
    rows: &mut [Row],
    problems: &mut Vec<String>,
) -> Vec<Event> {
    let stored: Vec<EventRow> =
        sqlx::query_as("SELECT event_id, data->>'seq', data->>'attempt' FROM events")
            .fetch_all(pg)
            .await
            .expect("events");
    let mut by_tag: HashMap<Tag, Vec<Uuid>> = HashMap::new();
    for (id, seq, attempt) in &stored {
        match (
            seq.as_deref().and_then(|s| s.parse().ok()),
            attempt.as_deref().and_then(|a| a.parse().ok()),
        ) {
            (Some(seq), Some(attempt)) => by_tag.entry((seq, attempt)).or_default().push(*id),
            _ => problems.push(format!("events row {id} carries no seq/attempt tag")),
        }
    }
    for (tag, (id, window)) in &tally.acked {
        let row = &mut rows[*window];
        row.checked += 1;
        match by_tag.get(tag).map(Vec::as_slice) {
            Some([stored]) if stored == id => {}
            Some(ids) => {
                row.discrepancies += 1;
                problems.push(format!("acknowledged {tag:?} ({id}) stored as {ids:?}"));
            }
            None => {
                row.discrepancies += 1;
                problems.push(format!("acknowledged {tag:?} ({id}) lost"));
            }
        }
    }
    let mut landed = Vec::new();
    for (tag, ids) in &by_tag {
        if tally.acked.contains_key(tag) {
        } else if tally.unacked.contains(tag) {
            if ids.len() > 1 {
                problems.push(format!("unacknowledged {tag:?} stored {} times", ids.len()));
            }
        } else {
            problems.push(format!("phantom event {tag:?} {ids:?}"));
            continue;
        }
        landed.push(event_of(tag.0, tag.1, now));
    }
    landed
}

/// Checks that the topic holds each event once: an event id on two records (a produce
/// retried after the broker had appended it) is one event counted twice by the
/// statistics and leaderboards, while `events` ignores the copy. Returns the records
/// read and the differences.
async fn check_topic(config: &Config) -> (usize, Vec<String>) {
    let records = crate::common::ingest::consume_all(config).await;
    let mut offsets: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
    for record in &records {
        offsets
            .entry(record.event_id())
            .or_default()
            .push((record.partition, record.offset));
    }
    let problems = offsets
        .into_iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(id, at)| format!("event {id} is in the topic {} times: {at:?}", at.len()))
        .collect();
    (records.len(), problems)
}

/// Compares the stores with what `landed` must have produced; returns the differences.
async fn check_stores(
    pg: &sqlx::PgPool,
    redis: &mut redis::aio::MultiplexedConnection,
    landed: &[Event],
    now: DateTime<Utc>,
) -> Vec<String> {
    let expected = Expected::of(landed);
    let mut problems = Vec::new();
    let stats = pg_stats(pg).await;
    let players: HashSet<&String> = stats.keys().chain(expected.breakdown.keys()).collect();
    for player in players {
        let want = expected.breakdown.get(player).cloned().unwrap_or_default();
        let (total, breakdown) = stats
            .get(player)
            .map(|s| (s.0, s.1.clone()))
            .unwrap_or_default();
        if total != expected.total(player) || breakdown != want {
            problems.push(format!(
                "player_statistics {player}: {total} {breakdown:?}, expected {} {want:?}",
                expected.total(player)
            ));
        }
        let hash = hgetall(redis, &format!("player_stats:{player}")).await;
        let mut want_hash: BTreeMap<String, String> = want
            .iter()
            .map(|(t, n)| (format!("event_{t}"), n.to_string()))
            .collect();
        want_hash.insert("total_events".into(), expected.total(player).to_string());
        want_hash.insert("last_event".into(), last_event_text(now));
        if hash != want_hash {
            problems.push(format!(
                "player_stats:{player}: {hash:?}, expected {want_hash:?}"
            ));
        }
    }
    let hashes = scan_keys(redis, "player_stats:*").await.len();
    if hashes != expected.breakdown.len() {
        problems.push(format!(
            "{hashes} player_stats hashes, expected {}",
            expected.breakdown.len()
        ));
    }
    let scores = pg_scores(pg).await;
    if scores != expected.scores {
        let differing = scores
            .iter()
            .filter(|(cell, s)| expected.scores.get(*cell) != Some(s))
            .count()
            + expected
                .scores
                .keys()
                .filter(|cell| !scores.contains_key(*cell))
                .count();
        problems.push(format!("leaderboard_scores: {differing} cells differ"));
    }
    for game in expected.games() {
        for (period, key) in [
            ("alltime", "alltime".to_owned()),
            ("daily", day_key(now)),
            ("weekly", week_key(now)),
        ] {
            let board = expected.board(&game, period, &key);
            let redis_key = format!("leaderboard:{game}:{period}");
            let stored = zset(redis, &redis_key).await;
            if stored != board {
                problems.push(format!(
                    "{redis_key}: {} members differ",
                    board
                        .iter()
                        .filter(|(p, s)| stored.get(*p) != Some(s))
                        .count()
                        + stored.keys().filter(|p| !board.contains_key(*p)).count()
                ));
            }
        }
    }
    let letters: i64 = sqlx::query_scalar("SELECT count(*) FROM dlq_events")
        .fetch_one(pg)
        .await
        .expect("dlq_events");
    if letters != 0 {
        problems.push(format!("{letters} dead letters for transient faults"));
    }
    problems
}

fn print_table(rows: &[Row], tally: &Tally, landed: usize, elapsed: Duration) {
    println!(
        "\nchaos suite: {} events acknowledged in {elapsed:.1?}",
        tally.acked.len()
    );
    println!(
        "{:<36} {:>12} {:>15} {:>14}",
        "fault", "recovery", "events checked", "discrepancies"
    );
    for row in rows {
        let recovery = match (row.is_fault, row.recovery) {
            (false, _) => "-".to_owned(),
            (true, Some(d)) => format!("{:.1}s", d.as_secs_f64()),
            (true, None) => "NOT RECOVERED".to_owned(),
        };
        println!(
            "{:<36} {:>12} {:>15} {:>14}",
            row.fault, recovery, row.checked, row.discrepancies
        );
    }
    let unacked_landed = landed - tally.acked.len().min(landed);
    println!(
        "unacknowledged attempts: {} (of which landed, counted in the expectations: {unacked_landed})",
        tally.unacked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_under_load_loses_and_duplicates_nothing() {
    let total: usize = std::env::var("CHAOS_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let began = Instant::now();
    let mut rig = Rig::start().await;
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&format!(
            "postgres://gamestream@127.0.0.1:{}/gamestream",
            rig.pg.port
        ))
        .expect("pool");
    let now = Utc::now().trunc_subsecs(0);
    let load = Arc::new(Load {
        url: format!(
            "http://127.0.0.1:{}/api/v1/events/batch",
            rig.config.http.port
        ),
        total,
        window: total / (FAULTS.len() + 1),
        now,
        next: AtomicUsize::new(0),
        acked_seqs: AtomicUsize::new(0),
        faults_started: AtomicUsize::new(0),
        abort: AtomicBool::new(false),
        tally: Mutex::new(Tally::default()),
        // `CHAOS_RATE` (events/s over all workers) paces the load, e.g. to a production
        // rate or below what the broker sustains on a busy machine.
        pace: std::env::var("CHAOS_RATE")
            .ok()
            .and_then(|r| r.parse::<f64>().ok())
            .filter(|r| *r > 0.0)
            .map(|rate| Duration::from_secs_f64((BATCH * WORKERS) as f64 / rate)),
    });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("http client");
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| tokio::spawn(worker(Arc::clone(&load), http.clone())))
        .collect();

    let fault_rows = drive_faults(&mut rig, &load, &pg).await;
    let load_done =
        tokio::time::timeout(RECOVERY_TIMEOUT, futures::future::join_all(workers)).await;
    load.abort.store(true, Ordering::SeqCst);
    assert!(load_done.is_ok(), "the load did not finish");
    rig.check_daemon();
    let mut caught_up = false;
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    while Instant::now() < deadline {
        if rig.caught_up(&pg).await {
            caught_up = true;
            break;
        }
        rig.check_daemon();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let tally = std::mem::take(&mut *load.tally.lock().expect("tally lock"));
    let mut rows = vec![Row {
        fault: "steady load (before the faults)".to_owned(),
        recovery: None,
        is_fault: false,
        checked: 0,
        discrepancies: 0,
    }];
    rows.extend(fault_rows);
    let mut problems = Vec::new();
    let landed = check_events(&pg, &tally, now, &mut rows, &mut problems).await;
    let mut redis = rig.redis.connection().await;
    let store_problems = check_stores(&pg, &mut redis, &landed, now).await;
    rows.push(Row {
        fault: "stores: stats, leaderboards, redis, dlq".to_owned(),
        recovery: None,
        is_fault: false,
        checked: landed.len(),
        discrepancies: store_problems.len(),
    });
    problems.extend(store_problems);
    let (records, topic_problems) = check_topic(&rig.config).await;
    rows.push(Row {
        fault: "topic: one record per event id".to_owned(),
        recovery: None,
        is_fault: false,
        checked: records,
        discrepancies: topic_problems.len(),
    });
    // First in the list: a duplicated record explains the store differences it causes.
    problems.splice(0..0, topic_problems);
    print_table(&rows, &tally, landed.len(), began.elapsed());
    println!("daemon log: {}", rig.log.display());
    for p in problems.iter().take(20) {
        println!("  {p}");
    }
    let seqs: HashSet<usize> = tally.acked.keys().map(|t| t.0).collect();
    assert_eq!(
        seqs.len(),
        total,
        "every event acknowledged once by the end"
    );
    assert!(
        caught_up,
        "the sinks did not catch up; daemon log in {:?}",
        rig.log
    );
    assert!(
        rows.iter().all(|r| !r.is_fault || r.recovery.is_some()),
        "a fault did not recover"
    );
    assert!(
        rig.unexpected_exits.is_empty(),
        "the daemon exited by itself: {:?}; log in {:?}",
        rig.unexpected_exits,
        rig.log
    );
    assert!(
        problems.is_empty(),
        "{} discrepancies, first: {:?}",
        problems.len(),
        problems.first()
    );

    // The checker itself can fail: one lost row and one extra count are both seen.
    let (tag, (id, window)) = tally.acked.iter().next().expect("acknowledged events");
    sqlx::query("DELETE FROM events WHERE event_id = $1")
        .bind(id)
        .execute(&pg)
        .await
        .expect("delete a row");
    let before = rows[*window].discrepancies;
    let mut seen = Vec::new();
    check_events(&pg, &tally, now, &mut rows, &mut seen).await;
    assert_eq!(
        rows[*window].discrepancies,
        before + 1,
        "a lost {tag:?} is counted"
    );
    let player = event_of(tag.0, tag.1, now).player_id;
    let _: i64 = redis::cmd("HINCRBY")
        .arg(format!("player_stats:{player}"))
        .arg("total_events")
        .arg(1)
        .query_async(&mut redis)
        .await
        .expect("hincrby");
    assert!(
        !check_stores(&pg, &mut redis, &landed, now).await.is_empty(),
        "a count off by one is seen"
    );
}
