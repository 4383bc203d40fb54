//! HTTP load with a tally, the checks against it, and the daemon under test: the
//! pieces the fault suites (`chaos`, `failover`) share.
//!
//! # The tally rule
//!
//! Without client ids the server assigns `event_id`, so a resend is a new event. Each
//! *attempt* therefore carries its own tag in `data` (`seq`, `attempt`). With
//! [`LoadSettings::resend`], the load sends a `seq` again (as a new attempt) only when
//! the attempt got no 2xx success: a non-2xx answer, an item error, or no answer at all;
//! without it every `seq` is sent once.
//!
//! With [`LoadSettings::client_ids`], each `seq` has its own `event_id`, and a resend is
//! the same body (attempt 0) with the same id, as a mobile client would send it: all
//! attempts of a `seq` are one event, which the stores must hold once however many of
//! them landed (the readers skip the copies as duplicates).
//! - An attempt with a 2xx success is *acknowledged*: it must be stored exactly once
//!   (else it is lost, a discrepancy).
//! - An attempt without one is *unacknowledged*: it may have landed ("accepted but the
//!   answer was lost", e.g. the daemon was killed after the broker's ack, or the
//!   broker appended it and died before answering). It may be stored at most once; if
//!   it is, it is an event the system accepted, so it counts.
//! - Any other row or record is a phantom; a tag in two rows is a duplicate.
//!
//! The expected statistics and leaderboards are then computed from the events that
//! landed and compared with `player_statistics`, `leaderboard_scores`,
//! `player_stats:*` and the `leaderboard:*` sorted sets ([`check_stores`]).
//!
//! # Fault windows
//!
//! The load is gated so that every fault strikes mid-stream: window `k` is the stretch
//! between the start of fault `k` and the start of fault `k + 1` (window 0: before the
//! first fault). Every answer is counted in the window it arrived in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use gamestream::config::{self, Config, Sources};
use gamestream::event::{Event, KNOWN_EVENT_TYPES, Score};
use gamestream::kafka;
use gamestream::sinks::postgres;
use uuid::Uuid;

use super::analytics::{
    Expected, PG_SINKS, REDIS_SINKS, day_key, hgetall, last_event_text, pg_scores, pg_stats,
    redis_offsets, stores_at_marks, week_key, zset,
};
use super::{PrivatePostgres, PrivateRedis, eventually, free_port, high_watermarks, scan_keys};

/// Events per HTTP batch request.
pub const BATCH: usize = 25;
/// Concurrent load workers.
pub const WORKERS: usize = 8;
pub const PLAYERS: usize = 300;
pub const GAMES: usize = 4;
/// Pause between two attempts of the same batch.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// One attempt: the `seq` of the logical event and the attempt number.
pub type Tag = (usize, u32);

/// How the HTTP answers of one window went.
#[derive(Debug, Default, Clone, Copy)]
pub struct Answers {
    /// Requests answered, with any status.
    pub requests: usize,
    /// Answers whose status was not 2xx (503 "not confirmed", "overloaded", ...).
    pub non_2xx: usize,
    /// Requests without an answer (connection refused or broken, client timeout).
    pub no_answer: usize,
    /// Events without a 2xx success: in a non-2xx or missing answer, or an item error
    /// of a 2xx (partial) answer.
    pub unacked_events: usize,
}

/// What the load saw.
#[derive(Default)]
pub struct Tally {
    /// Acknowledged attempts: event id, and the window (faults started) of the ack.
    pub acked: HashMap<Tag, (Uuid, usize)>,
    /// Attempts without a 2xx success.
    pub unacked: HashSet<Tag>,
    /// Answers per window.
    pub answers: BTreeMap<usize, Answers>,
    /// With client ids: acknowledgements under another id than the one sent.
    pub wrong_ids: Vec<String>,
    /// Whether each `seq` was one event under a client id (records of the same id on
    /// the topic are then resends, not duplicates).
    pub client_ids: bool,
}

/// The shape of a load.
pub struct LoadSettings {
    /// `POST /api/v1/events/batch` of the daemon.
    pub url: String,
    /// Logical events (`seq`s).
    pub total: usize,
    /// Faults the load is gated for: once the last one has started, the gate opens.
    pub faults: usize,
    /// Windows the load is divided into: at least `faults + 1`.
    pub windows: usize,
    /// Each worker's time between batches (None: as fast as answers come).
    pub pace: Option<Duration>,
    /// Whether a `seq` without a 2xx success is sent again (as a new attempt).
    pub resend: bool,
    /// Whether each `seq` carries its own client `event_id` (a resend is then the same
    /// event, not a new attempt).
    pub client_ids: bool,
    /// Partitions of the raw topic, to count acknowledgements per partition.
    pub partitions: i32,
}

/// Shared state of the load workers and the fault driver.
pub struct Load {
    pub url: String,
    pub total: usize,
    /// Events per fault window: the load is gated so every fault happens mid-stream.
    pub window: usize,
    /// The `timestamp` of every event sent.
    pub now: DateTime<Utc>,
    next: AtomicUsize,
    /// Acknowledged events, all partitions.
    pub acked_seqs: AtomicUsize,
    /// Acknowledged events per partition of the raw topic.
    acked_by_partition: Vec<AtomicUsize>,
    pub faults_started: AtomicUsize,
    faults: usize,
    pub abort: AtomicBool,
    tally: Mutex<Tally>,
    pace: Option<Duration>,
    resend: bool,
    /// With client ids: the high bits of every `seq`'s id, new per load.
    client_ids: Option<u64>,
    partitions: i32,
}

impl Load {
    pub fn new(settings: LoadSettings, now: DateTime<Utc>) -> Arc<Self> {
        Arc::new(Self {
            url: settings.url,
            total: settings.total,
            window: settings.total / settings.windows.max(settings.faults + 1),
            now,
            next: AtomicUsize::new(0),
            acked_seqs: AtomicUsize::new(0),
            acked_by_partition: (0..settings.partitions)
                .map(|_| AtomicUsize::new(0))
                .collect(),
            faults_started: AtomicUsize::new(0),
            faults: settings.faults,
            abort: AtomicBool::new(false),
            tally: Mutex::new(Tally::default()),
            pace: settings.pace,
            resend: settings.resend,
            client_ids: settings.client_ids.then(rand::random::<u64>),
            partitions: settings.partitions,
        })
    }

    /// The client id of `seq`, with client ids.
    pub fn client_id(&self, seq: usize) -> Option<Uuid> {
        self.client_ids
            .map(|high| Uuid::from_u64_pair(high, seq as u64))
    }

    /// A worker's time between batches for `rate` events/s over all workers, from the
    /// environment variable `var` (None when unset or not a positive number).
    pub fn pace_from_env(var: &str) -> Option<Duration> {
        std::env::var(var)
            .ok()
            .and_then(|r| r.parse::<f64>().ok())
            .filter(|r| *r > 0.0)
            .map(Self::pace_for_rate)
    }

    /// A worker's time between batches for `rate` events/s over all workers.
    pub fn pace_for_rate(rate: f64) -> Duration {
        Duration::from_secs_f64((BATCH * WORKERS) as f64 / rate)
    }

    /// The first `seq` the workers may not send yet: three quarters of a window past
    /// the next fault's trigger, so every fault strikes mid-stream. Starting a fault
    /// opens the next window at once: load must keep flowing while it is in progress,
    /// or its recovery (new acknowledgements, new commits) could never be observed.
    /// Once the last fault has started, nothing holds the load back.
    fn limit(&self) -> usize {
        let started = self.faults_started.load(Ordering::SeqCst);
        if started >= self.faults {
            return usize::MAX;
        }
        (started + 1) * self.window + self.window / 4
    }

    /// The acknowledged events that fault `k` waits for before it strikes: half of its
    /// window.
    pub fn trigger(&self, k: usize) -> usize {
        k * self.window + self.window / 2
    }

    /// Waits (at most `timeout`) until fault `k`'s trigger is acknowledged; returns
    /// whether it was, and the acknowledged count then.
    pub async fn reach_trigger(&self, k: usize, timeout: Duration) -> (bool, usize) {
        let trigger = self.trigger(k);
        let reached = eventually(timeout, || async {
            self.acked_seqs.load(Ordering::SeqCst) >= trigger
        })
        .await;
        (reached, self.acked_seqs.load(Ordering::SeqCst))
    }

    /// Acknowledged events of the given partitions.
    pub fn acked_in(&self, partitions: &[i32]) -> usize {
        partitions
            .iter()
            .filter_map(|p| self.acked_by_partition.get(*p as usize))
            .map(|n| n.load(Ordering::SeqCst))
            .sum()
    }

    /// Starts the load workers.
    pub fn spawn_workers(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("http client");
        (0..WORKERS)
            .map(|_| tokio::spawn(worker(Arc::clone(self), http.clone())))
            .collect()
    }

    /// The answers per window so far.
    pub fn answers(&self) -> BTreeMap<usize, Answers> {
        self.tally.lock().expect("tally lock").answers.clone()
    }

    /// The tally so far (the load is over).
    pub fn take_tally(&self) -> Tally {
        self.tally.lock().expect("tally lock").client_ids = self.client_ids.is_some();
        std::mem::take(&mut *self.tally.lock().expect("tally lock"))
    }
}

/// The event of attempt `(seq, attempt)`, as the load sends it and the checker expects it.
pub fn event_of(seq: usize, attempt: u32, now: DateTime<Utc>) -> Event {
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

/// A load worker: takes batches of `seq`s and sends each (until every event of it has
/// an acknowledged attempt, with `resend`).
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
            if !load.resend {
                break;
            }
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
    // With client ids every attempt is the same event: attempt 0, the seq's own id.
    let attempt = if load.client_ids.is_some() {
        0
    } else {
        attempt
    };
    let events: Vec<Event> = seqs
        .iter()
        .map(|&seq| {
            let mut event = event_of(seq, attempt, load.now);
            if let Some(id) = load.client_id(seq) {
                event.event_id = id;
            }
            event
        })
        .collect();
    let items: Vec<String> = events
        .iter()
        .map(|event| match load.client_ids {
            Some(_) => submission_json(event).replacen(
                '{',
                &format!(r#"{{"event_id":"{}","#, event.event_id),
                1,
            ),
            None => submission_json(event),
        })
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
            Some((ok, response.json::<serde_json::Value>().await.ok()))
        }
        Err(_) => None,
    };
    let window = load.faults_started.load(Ordering::SeqCst);
    let mut tally = load.tally.lock().expect("tally lock"); // poisoned only if a worker panicked
    let counts = tally.answers.entry(window).or_default();
    match &answer {
        Some((ok, _)) => {
            counts.requests += 1;
            if !ok {
                counts.non_2xx += 1;
            }
        }
        None => counts.no_answer += 1,
    }
    let mut retry = Vec::new();
    for (i, (&seq, event)) in seqs.iter().zip(&events).enumerate() {
        let acked_id = answer.as_ref().and_then(|(ok, json)| {
            let item = &json.as_ref()?["results"][i];
            (*ok && item["status"] == "success")
                .then(|| item["event_id"].as_str()?.parse::<Uuid>().ok())
                .flatten()
        });
        match acked_id {
            Some(id) => {
                if load.client_ids.is_some() && id != event.event_id {
                    tally.wrong_ids.push(format!(
                        "seq {seq} sent with id {} acknowledged as {id}",
                        event.event_id
                    ));
                }
                tally.acked.insert((seq, attempt), (id, window));
                load.acked_seqs.fetch_add(1, Ordering::SeqCst);
                let partition = gamestream::kafka::partition_for_key(
                    event.player_id.as_bytes(),
                    load.partitions,
                );
                if let Some(n) = load.acked_by_partition.get(partition as usize) {
                    n.fetch_add(1, Ordering::SeqCst);
                }
            }
            None => {
                tally.unacked.insert((seq, attempt));
                retry.push(seq);
            }
        }
    }
    tally.answers.entry(window).or_default().unacked_events += retry.len();
    retry
}

/// One line of a fault suite's report.
pub struct Row {
    pub fault: String,
    /// Time to recover; `None` if it did not (within the timeout).
    pub recovery: Option<Duration>,
    /// Whether the row is a fault (with a recovery time) or a check.
    pub is_fault: bool,
    /// The answers of the row's window (filled by [`fill_answers`]); none for checks.
    pub answers: Option<Answers>,
    pub checked: usize,
    pub discrepancies: usize,
}

impl Row {
    /// The row of window 0.
    pub fn steady_load() -> Self {
        Self::check("steady load (before the faults)", 0, 0)
    }

    pub fn fault(name: String, recovery: Option<Duration>) -> Self {
        Self {
            fault: name,
            recovery,
            is_fault: true,
            answers: None,
            checked: 0,
            discrepancies: 0,
        }
    }

    pub fn check(name: &str, checked: usize, discrepancies: usize) -> Self {
        Self {
            fault: name.to_owned(),
            recovery: None,
            is_fault: false,
            answers: None,
            checked,
            discrepancies,
        }
    }
}

/// Puts each window's answers on its row (row `k` is window `k`).
pub fn fill_answers(rows: &mut [Row], tally: &Tally) {
    for (window, row) in rows.iter_mut().enumerate() {
        if window == 0 || row.is_fault {
            row.answers = Some(tally.answers.get(&window).copied().unwrap_or_default());
        }
    }
}

/// Prints the report: one line per window (recovery, non-2xx answers, requests
/// without an answer, events without a 2xx success, events checked, discrepancies),
/// then one per check.
pub fn print_table(title: &str, rows: &[Row], tally: &Tally, landed: usize, elapsed: Duration) {
    println!(
        "\n{title}: {} events acknowledged in {elapsed:.1?}",
        tally.acked.len()
    );
    println!(
        "{:<44} {:>13} {:>8} {:>9} {:>8} {:>15} {:>14}",
        "fault", "recovery", "non-2xx", "no answer", "unacked", "events checked", "discrepancies"
    );
    for row in rows {
        let recovery = match (row.is_fault, row.recovery) {
            (false, _) => "-".to_owned(),
            (true, Some(d)) => format!("{:.1}s", d.as_secs_f64()),
            (true, None) => "NOT RECOVERED".to_owned(),
        };
        let (non_2xx, no_answer, unacked) = match row.answers {
            Some(a) => (
                format!("{}/{}", a.non_2xx, a.requests + a.no_answer),
                a.no_answer.to_string(),
                a.unacked_events.to_string(),
            ),
            None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        println!(
            "{:<44} {:>13} {:>8} {:>9} {:>8} {:>15} {:>14}",
            row.fault, recovery, non_2xx, no_answer, unacked, row.checked, row.discrepancies
        );
    }
    let unacked_landed = landed - tally.acked.len().min(landed);
    println!(
        "unacknowledged attempts: {} (of which landed, counted in the expectations: {unacked_landed})",
        tally.unacked.len()
    );
}

/// An `events` row: event id, `data.seq`, `data.attempt`.
type EventRow = (Uuid, Option<String>, Option<String>);

/// Checks `events` against the tally; fills `checked` and `discrepancies` of each
/// window's row (row 0: before any fault) and returns the events that landed.
pub async fn check_events(
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

/// The raw topic read back and checked.
pub struct TopicCheck {
    /// Records on the topic.
    pub records: usize,
    /// Event ids on two or more records: a produce retried after the broker had
    /// appended it is one event counted twice by the statistics and leaderboards, while
    /// `events` ignores the copy.
    pub duplicates: Vec<String>,
    /// Acknowledged attempts missing from the topic or there under another id, and
    /// records of no attempt the load made.
    pub against_tally: Vec<String>,
    /// The event of each record whose tag the load sent, once per record (once per
    /// event id with client ids).
    pub landed: Vec<Event>,
    /// With client ids: records beyond the first of an event id (resends that landed,
    /// which the readers skip as duplicates).
    pub resent_copies: usize,
    /// Every event id on the topic.
    pub ids: HashSet<Uuid>,
}

/// Reads every record of the raw topic and checks it: one record per event id, and
/// (against the tally) every acknowledged attempt there under its acknowledged id.
pub async fn check_topic(config: &Config, tally: &Tally, now: DateTime<Utc>) -> TopicCheck {
    let records = super::ingest::consume_all(config).await;
    let mut offsets: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
    let mut by_tag: HashMap<Tag, Vec<Uuid>> = HashMap::new();
    let mut against_tally = Vec::new();
    let mut landed = Vec::new();
    let mut ids = HashSet::new();
    for record in &records {
        let id = record.event_id();
        offsets
            .entry(id.clone())
            .or_default()
            .push((record.partition, record.offset));
        let data = &record.value["data"];
        let tag = data["seq"]
            .as_u64()
            .zip(data["attempt"].as_u64())
            .map(|(seq, attempt)| (seq as usize, attempt as u32));
        match (id.parse::<Uuid>(), tag) {
            (Ok(uuid), Some(tag))
                if tally.acked.contains_key(&tag) || tally.unacked.contains(&tag) =>
            {
                let first = ids.insert(uuid);
                by_tag.entry(tag).or_default().push(uuid);
                if first || !tally.client_ids {
                    landed.push(event_of(tag.0, tag.1, now));
                }
            }
            _ => against_tally.push(format!(
                "record at {}:{} ({id}, tag {tag:?}) is no attempt of the load",
                record.partition, record.offset
            )),
        }
    }
    for (tag, (id, _)) in &tally.acked {
        match by_tag.get(tag).map(Vec::as_slice) {
            Some(found) if found.contains(id) => {}
            Some(found) => against_tally.push(format!(
                "acknowledged {tag:?} ({id}) is on the topic as {found:?}"
            )),
            None => against_tally.push(format!("acknowledged {tag:?} ({id}) is not on the topic")),
        }
    }
    let repeated: Vec<(String, Vec<(i32, i64)>)> =
        offsets.into_iter().filter(|(_, at)| at.len() > 1).collect();
    let resent_copies = if tally.client_ids {
        repeated.iter().map(|(_, at)| at.len() - 1).sum()
    } else {
        0
    };
    let duplicates = if tally.client_ids {
        Vec::new()
    } else {
        repeated
            .into_iter()
            .map(|(id, at)| format!("event {id} is in the topic {} times: {at:?}", at.len()))
            .collect()
    };
    TopicCheck {
        records: records.len(),
        resent_copies,
        duplicates,
        against_tally,
        landed,
        ids,
    }
}

/// Compares the stores with what `landed` must have produced; returns the differences.
/// The daemon writes Redis keys without a prefix (a private Redis).
pub async fn check_stores(
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

/// A connection to the (private) Redis on `port`; `None` while it does not answer.
pub async fn redis_on(port: u16) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()
}

/// The committed next offset of every sink (Postgres sinks, then Redis sinks) per
/// partition of `topic`; `None` while a store does not answer.
pub async fn sink_offsets(
    pg: &sqlx::PgPool,
    redis_port: u16,
    topic: &str,
) -> Option<Vec<BTreeMap<i32, i64>>> {
    let mut all = Vec::new();
    for sink in PG_SINKS {
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT partition, next_offset FROM sink_offsets WHERE sink = $1 AND topic = $2",
        )
        .bind(sink)
        .bind(topic)
        .fetch_all(pg)
        .await
        .ok()?;
        all.push(rows.into_iter().collect());
    }
    let mut redis = redis_on(redis_port).await?;
    for sink in REDIS_SINKS {
        let offsets = tokio::time::timeout(
            Duration::from_secs(2),
            redis_offsets(&mut redis, "", sink, topic),
        )
        .await
        .ok()?;
        all.push(offsets);
    }
    Some(all)
}

/// Whether every sink of both stores has committed up to the topic's high watermarks.
pub async fn caught_up(config: &Config, pg: &sqlx::PgPool, redis_port: u16) -> bool {
    let topic = &config.topics.player_events;
    let marks = high_watermarks(config, topic).await;
    let Some(mut redis) = redis_on(redis_port).await else {
        return false;
    };
    stores_at_marks(pg, &mut redis, "", topic, &marks).await
}

/// `(name, value)` pairs: environment variables or `--set` overrides.
pub type Settings = Vec<(String, String)>;

/// The settings a fault suite's daemon runs with against private services: the
/// contract's env (the broker at `bootstrap`, the private Postgres and Redis) and
/// `--set` overrides (a free HTTP port, short lingers and backoffs, then `extra`).
pub fn private_settings(
    bootstrap: &str,
    pg: &PrivatePostgres,
    redis: &PrivateRedis,
    extra: &[(&str, String)],
) -> (Settings, Settings) {
    let env = [
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.to_owned()),
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
    let overrides = [
        ("http.bind", "\"127.0.0.1\"".to_owned()),
        ("http.port", free_port().to_string()),
        ("redis.timeout", "\"1s\"".to_owned()),
        ("consumer.retry_max_backoff", "\"500ms\"".to_owned()),
        ("stats.linger", "\"50ms\"".to_owned()),
        ("leaderboard.linger", "\"50ms\"".to_owned()),
        ("leaderboard.refresh_interval", "\"1s\"".to_owned()),
    ]
    .into_iter()
    .chain(extra.iter().cloned())
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    (env, overrides)
}

/// Loads the configuration of `env` and `overrides`, creates and migrates the
/// `gamestream` database on the private Postgres and creates the topics (with
/// `topics.replication_factor`).
pub async fn prepare_private(
    pg: &PrivatePostgres,
    env: &[(String, String)],
    overrides: &[(String, String)],
) -> Config {
    let config = config::load(&Sources {
        file: None,
        env: env.to_vec(),
        overrides: overrides.to_vec(),
    })
    .expect("the fault suite's configuration is valid");
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
    config
}

/// A `gamestream serve` child under test, its output appended to one log file.
pub struct Daemon {
    env: Vec<(String, String)>,
    overrides: Vec<(String, String)>,
    /// The daemon's stdout and stderr, over all its runs.
    pub log: PathBuf,
    /// `lease.member_id` the next start uses.
    pub member_id: String,
    child: Option<tokio::process::Child>,
    /// Exits of the daemon the suite did not cause.
    pub unexpected_exits: Vec<String>,
}

impl Daemon {
    /// Starts the daemon (`RUST_LOG=warn`, or `FAULT_DAEMON_RUST_LOG`).
    pub fn start(
        env: Vec<(String, String)>,
        overrides: Vec<(String, String)>,
        log: PathBuf,
        member_id: String,
    ) -> Self {
        let mut daemon = Self {
            env,
            overrides,
            log,
            member_id,
            child: None,
            unexpected_exits: Vec::new(),
        };
        daemon.spawn();
        daemon
    }

    /// Starts the daemon (again), under `member_id`.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log");
        let log_err = log.try_clone().expect("daemon log");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gamestream"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            // `FAULT_DAEMON_RUST_LOG` (e.g. `warn,rskafka=info`) to see more of how it recovered.
            .env(
                "RUST_LOG",
                std::env::var("FAULT_DAEMON_RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .envs(self.env.clone())
            .args(
                self.overrides
                    .iter()
                    .flat_map(|(k, v)| ["--set".to_owned(), format!("{k}={v}")]),
            )
            .args(["--set", &format!("lease.member_id=\"{}\"", self.member_id)])
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn gamestream serve");
        self.child = Some(child);
    }

    /// Waits until the daemon on `port` answers `GET /ready` with 200 (the broker
    /// answers, and so do Postgres and Redis); returns whether it did within `timeout`.
    /// A load that sends each event once must not start before: every batch sent to a
    /// daemon still starting is an event lost to the test.
    pub async fn wait_ready(&mut self, port: u16, timeout: Duration) -> bool {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let url = format!("http://127.0.0.1:{port}/ready");
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            self.check();
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Kills the daemon with SIGKILL and waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill -9 the daemon");
        }
    }

    /// Restarts the daemon if it exited by itself, noting it.
    pub fn check(&mut self) {
        let exited = self
            .child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten());
        if let Some(status) = exited {
            self.unexpected_exits.push(status.to_string());
            self.spawn();
        }
    }
}
