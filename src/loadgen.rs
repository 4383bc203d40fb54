//! `gamestream loadgen`: sends realistic events to a running server at a steady rate and
//! reports what happened (the successor of the old `load_test_events.sh 1000 100`).
//!
//! ```text
//! schedule: request i is due at start + i × batch / rate ─► ≤ concurrency in flight
//!   ─► POST /api/v1/events (or /batch) ─► status, latency ─► progress bar ─► report
//! ```
//!
//! The schedule is open-loop: a slow answer does not delay the next request's due time
//! unless all `concurrency` slots are busy, so the achieved rate shows whether the
//! server kept up. Latency is measured per request, from send to the full answer.
//! The event mix is about 30% `player_score` (with an integer `data.score`, which feeds
//! the leaderboards), the rest spread over the other known types.

use crate::exit::Exit;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::config::Config;

/// Distinct error messages kept for the report; the rest are only counted.
const ERROR_SAMPLES: usize = 5;

/// Arguments of `gamestream loadgen`.
#[derive(Debug, Clone, Args)]
pub struct LoadgenArgs {
    /// Events to send in total.
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Events per second to aim for; 0 sends as fast as the concurrency allows.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Distinct players (player-1 .. player-N).
    #[arg(long, default_value_t = 5)]
    pub players: u32,
    /// Distinct games (game-1 .. game-N).
    #[arg(long, default_value_t = 3)]
    pub games: u32,
    /// Events per request: 1 posts to /api/v1/events, more to /api/v1/events/batch.
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Base URL of the server [default: http://127.0.0.1:<http.port>].
    #[arg(long)]
    pub url: Option<String>,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// API key sent as `Authorization: Bearer`; defaults to the first of `http.api_keys`.
    #[arg(long, env = "GAMESTREAM_LOADGEN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Time one request may take before it counts as failed, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Send a request that got no 2xx (a 503, a timeout, a dropped connection) again,
    /// with the same body and so the same client `event_id`s, up to this many times
    /// (the pipeline counts each event once). 0: never.
    #[arg(long, default_value_t = 0)]
    pub retry: u32,
}

/// Why the load generator could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("invalid argument: {0}")]
    Argument(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The outcome of one request.
#[derive(Debug)]
struct Outcome {
    events: u64,
    succeeded: u64,
    latency: Duration,
    /// Why (some of) its events failed.
    error: Option<String>,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub target: String,
    pub duration: Duration,
    pub requests: u64,
    pub failed_requests: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Request latencies, sorted ascending.
    pub latencies: Vec<Duration>,
    pub error_samples: Vec<String>,
}

impl Report {
    /// Events acknowledged per second over the run.
    pub fn rate(&self) -> f64 {
        per_second(self.succeeded, self.duration)
    }

    pub fn print(&self) {
        let secs = self.duration.as_secs_f64();
        println!("target          {}", self.target);
        println!("duration        {secs:.2} s");
        println!(
            "succeeded       {} events ({} requests)",
            self.succeeded,
            self.requests - self.failed_requests
        );
        println!(
            "failed          {} events ({} requests)",
            self.failed, self.failed_requests
        );
        println!(
            "achieved rate   {:.1} events/s ({:.1} requests/s)",
            self.rate(),
            per_second(self.requests, self.duration)
        );
        for (name, p) in [("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("max", 100.0)] {
            match percentile(&self.latencies, p) {
                Some(d) => println!("latency {name:<7} {:.2} ms", d.as_secs_f64() * 1e3),
                None => println!("latency {name:<7} -"),
            }
        }
        for sample in &self.error_samples {
            println!("error           {sample}");
        }
    }
}

fn per_second(n: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// The nearest-rank percentile `p` (0 < p ≤ 100) of ascending `sorted` values.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// The subcommand: runs, prints the report, exits 1 if any request failed.
pub async fn command(args: LoadgenArgs, config: &Config) -> Exit {
    match run(args, config).await {
        Ok(report) => {
            report.print();
            if report.failed == 0 && report.failed_requests == 0 {
                Exit::Success
            } else {
                Exit::Failure
            }
        }
        Err(e @ LoadgenError::Argument(_)) => {
            eprintln!("gamestream loadgen: {e}");
            Exit::Config
        }
        Err(e) => {
            eprintln!("gamestream loadgen: {e}");
            Exit::Failure
        }
    }
}

/// Sends the load and measures it.
pub async fn run(args: LoadgenArgs, config: &Config) -> Result<Report, LoadgenError> {
    check(&args)?;
    let base = args
        .url
        .clone()
        .unwrap_or_else(|| format!("http://127.0.0.1:{}", config.http.port));
    let path = if args.batch > 1 {
        "/api/v1/events/batch"
    } else {
        "/api/v1/events"
    };
    let target = format!("{}{path}", base.trim_end_matches('/'));
    let api_key = args
        .api_key
        .clone()
        .or_else(|| config.http.api_keys.first().map(|k| k.expose().to_owned()));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs_f64(args.timeout))
        .tcp_nodelay(true)
        .build()?;
    let sender = Arc::new(Sender {
        client,
        target: target.clone(),
        api_key,
        batched: args.batch > 1,
        players: args.players,
        games: args.games,
        retries: args.retry,
    });
    let progress = progress_bar(args.count);
    let (outcomes_tx, mut outcomes_rx) = mpsc::unbounded_channel::<Outcome>();
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let interval =
        (args.rate > 0.0).then(|| Duration::from_secs_f64(args.batch as f64 / args.rate));

    let started = Instant::now();
    let schedule = {
        let count = args.count;
        let batch = args.batch;
        let sender = Arc::clone(&sender);
        tokio::spawn(async move {
            let mut sent = 0;
            let mut index: u32 = 0;
            while sent < count {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(started + interval * index).await;
                }
                let events = batch.min(count - sent);
                // The semaphore is never closed, so acquiring only waits.
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    break;
                };
                let sender = Arc::clone(&sender);
                let outcomes = outcomes_tx.clone();
                tokio::spawn(async move {
                    let outcome = sender.send(events).await;
                    drop(slot);
                    let _ = outcomes.send(outcome);
                });
                sent += events;
                index = index.saturating_add(1);
            }
        })
    };

    let mut report = Report {
        target,
        duration: Duration::ZERO,
        requests: 0,
        failed_requests: 0,
        succeeded: 0,
        failed: 0,
        latencies: Vec::new(),
        error_samples: Vec::new(),
    };
    while let Some(outcome) = outcomes_rx.recv().await {
        report.requests += 1;
        report.succeeded += outcome.succeeded;
        report.failed += outcome.events - outcome.succeeded;
        report.latencies.push(outcome.latency);
        if let Some(error) = outcome.error {
            report.failed_requests += 1;
            if report.error_samples.len() < ERROR_SAMPLES && !report.error_samples.contains(&error)
            {
                report.error_samples.push(error);
            }
        }
        progress.inc(outcome.events);
    }
    report.duration = started.elapsed();
    if let Err(e) = schedule.await {
        return Err(LoadgenError::Argument(format!("scheduler failed: {e}")));
    }
    progress.finish_and_clear();
    report.latencies.sort_unstable();
    Ok(report)
}

fn check(args: &LoadgenArgs) -> Result<(), LoadgenError> {
    let problems = [
        (args.count == 0, "--count must be at least 1"),
        (args.batch == 0, "--batch must be at least 1"),
        (args.players == 0, "--players must be at least 1"),
        (args.games == 0, "--games must be at least 1"),
        (args.concurrency == 0, "--concurrency must be at least 1"),
        (
            !(args.rate >= 0.0 && args.rate.is_finite()),
            "--rate must be 0 or more",
        ),
        (
            !(args.timeout > 0.0 && args.timeout.is_finite()),
            "--timeout must be more than 0",
        ),
    ];
    match problems.iter().find(|(bad, _)| *bad) {
        Some((_, message)) => Err(LoadgenError::Argument((*message).to_owned())),
        None => Ok(()),
    }
}

fn progress_bar(total: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40} {pos}/{len} events  {per_sec}  elapsed {elapsed_precise}  eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Builds and sends requests.
struct Sender {
    client: reqwest::Client,
    target: String,
    api_key: Option<String>,
    batched: bool,
    players: u32,
    games: u32,
    /// Times a request without a 2xx is sent again, same body.
    retries: u32,
}

/// Pause before sending a request again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

impl Sender {
    /// Sends `events` events (one request, again after a failure up to `retries`
    /// times, with the same body: the same client ids). Latency is the last attempt's.
    async fn send(&self, events: u64) -> Outcome {
        let body = self.body(events);
        let mut attempt = 0;
        loop {
            let outcome = self.send_once(events, body.clone()).await;
            if outcome.error.is_none() || outcome.succeeded > 0 || attempt >= self.retries {
                return outcome;
            }
            attempt += 1;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn send_once(&self, events: u64, body: Vec<u8>) -> Outcome {
        let mut request = self
            .client
            .post(&self.target)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let started = Instant::now();
        let answer = async {
            let response = request.send().await?;
            let status = response.status();
            let text = response.text().await?;
            Ok::<_, reqwest::Error>((status, text))
        }
        .await;
        let latency = started.elapsed();
        let (succeeded, error) = match answer {
            Err(e) => (0, Some(format!("request failed: {e}"))),
            Ok((status, _)) if status.is_success() && !self.batched => (1, None),
            Ok((status, text)) if status.is_success() => {
                let accepted = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["accepted"].as_u64())
                    .unwrap_or(0)
                    .min(events);
                let error =
                    (accepted < events).then(|| format!("{status}: {}", first_error(&text)));
                (accepted, error)
            }
            Ok((status, text)) => (0, Some(format!("{status}: {}", first_error(&text)))),
        };
        Outcome {
            events,
            succeeded,
            latency,
            error,
        }
    }

    fn body(&self, events: u64) -> Vec<u8> {
        let mut rng = rand::rng();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let value = if self.batched {
            Value::Array(
                (0..events)
                    .map(|_| random_event(&mut rng, self.players, self.games, &now))
                    .collect(),
            )
        } else {
            random_event(&mut rng, self.players, self.games, &now)
        };
        // Serializing a serde_json::Value cannot fail.
        serde_json::to_vec(&value).unwrap_or_default()
    }
}

/// The `error` of an error answer (or the first failed item of a batch), else the text.
fn first_error(text: &str) -> String {
    let value: Option<Value> = serde_json::from_str(text).ok();
    let message = value.as_ref().and_then(|v| {
        v["error"].as_str().map(str::to_owned).or_else(|| {
            v["results"].as_array().and_then(|items| {
                items
                    .iter()
                    .find_map(|item| item["error"].as_str().map(str::to_owned))
            })
        })
    });
    message.unwrap_or_else(|| text.chars().take(200).collect())
}

/// One event of the mix: ~30% player_score, ~25% player_level_up, ~20% quest_completed,
/// ~15% achievement_unlocked, ~10% boss_defeated.
fn random_event(rng: &mut impl Rng, players: u32, games: u32, now: &str) -> Value {
    let player = format!("player-{}", rng.random_range(1..=players));
    let game = format!("game-{}", rng.random_range(1..=games));
    let roll = rng.random_range(0..100);
    let (event_type, data) = match roll {
        0..30 => (
            "player_score",
            json!({"score": rng.random_range(1..=1000_i64)}),
        ),
        30..55 => (
            "player_level_up",
            json!({"level": rng.random_range(2..=100), "experience": rng.random_range(100..=100_000)}),
        ),
        55..75 => (
            "quest_completed",
            json!({"quest_id": format!("quest-{}", rng.random_range(1..=50)), "reward": rng.random_range(10..=500)}),
        ),
        75..90 => (
            "achievement_unlocked",
            json!({"achievement_id": format!("ach-{}", rng.random_range(1..=30))}),
        ),
        _ => (
            "boss_defeated",
            json!({"boss_id": format!("boss-{}", rng.random_range(1..=10)), "duration_ms": rng.random_range(10_000..=600_000)}),
        ),
    };
    json!({
        // The client's own id: a resend of the same body is the same event.
        "event_id": uuid::Uuid::new_v4().to_string(),
        "event_type": event_type,
        "player_id": player,
        "game_id": game,
        "timestamp": now,
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        let mut v: Vec<_> = values.iter().map(|&m| Duration::from_millis(m)).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn nearest_rank_percentiles() {
        let one_to_hundred = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(
            percentile(&one_to_hundred, 50.0),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            percentile(&one_to_hundred, 95.0),
            Some(Duration::from_millis(95))
        );
        assert_eq!(
            percentile(&one_to_hundred, 99.0),
            Some(Duration::from_millis(99))
        );
        assert_eq!(
            percentile(&one_to_hundred, 100.0),
            Some(Duration::from_millis(100))
        );
        // Few samples: p99 of four is the largest, p50 of four the second.
        let four = ms(&[40, 10, 30, 20]);
        assert_eq!(percentile(&four, 50.0), Some(Duration::from_millis(20)));
        assert_eq!(percentile(&four, 99.0), Some(Duration::from_millis(40)));
        assert_eq!(percentile(&four, 1.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&ms(&[7]), 50.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&four, 0.0), None);
        assert_eq!(percentile(&four, 101.0), None);
    }

    #[test]
    fn the_mix_is_valid_and_about_thirty_percent_scores() {
        let mut rng = rand::rng();
        let now = "2024-01-15T10:30:00.000Z";
        let total = 10_000;
        let mut scores = 0;
        for _ in 0..total {
            let value = random_event(&mut rng, 5, 3, now);
            let mut bytes = serde_json::to_vec(&value).expect("serializes");
            let submission = crate::event::parse_submission(&mut bytes).expect("valid event");
            if submission.event_type == "player_score" {
                scores += 1;
                assert!(matches!(
                    submission.score,
                    crate::event::Score::Integer(1..=1000)
                ));
            }
            let player: u32 = submission.player_id["player-".len()..]
                .parse()
                .expect("numbered");
            assert!((1..=5).contains(&player), "{}", submission.player_id);
        }
        let share = f64::from(scores) / f64::from(total);
        assert!((0.27..0.33).contains(&share), "{share}");
    }

    #[test]
    fn first_error_reads_error_replies() {
        assert_eq!(
            first_error(r#"{"status":"error","error":"`x` is required"}"#),
            "`x` is required"
        );
        assert_eq!(
            first_error(
                r#"{"results":[{"status":"success","event_id":"a"},{"status":"error","error":"bad"}]}"#
            ),
            "bad"
        );
        assert_eq!(first_error("plain"), "plain");
    }
}
