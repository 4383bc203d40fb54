//! Exactly once from the client's side: a client that resends its event with the same
//! `event_id` (after a 503, a timeout, a dropped connection, or just twice) has it
//! counted once in every store, also across a SIGKILL and restart of the daemon, which
//! rebuilds its duplicate window from the log.
//!
//! `cargo nextest run --test it dedupe::`

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use gamestream::event::Event;
use uuid::Uuid;

use crate::common::tally::{
    Daemon, Settings, caught_up, check_stores, prepare_private, private_settings,
};
use crate::common::{PrivateBroker, PrivatePostgres, PrivateRedis, held_partitions};
use gamestream::config::Config;

const EVENTS: usize = 600;
const CHUNK: usize = 50;
const WAIT: Duration = Duration::from_secs(90);

fn submission(event: &Event) -> serde_json::Value {
    serde_json::json!({
        "event_id": event.event_id.to_string(),
        "event_type": event.event_type,
        "player_id": event.player_id,
        "game_id": event.game_id,
        "timestamp": gamestream::event::rfc3339(event.timestamp),
        "data": serde_json::from_str::<serde_json::Value>(&event.data).expect("data"),
    })
}

/// Posts `events` in chunks to the batch endpoint; every item must be accepted.
async fn post(http: &reqwest::Client, port: u16, events: &[&Event]) {
    for chunk in events.chunks(CHUNK) {
        let body: Vec<serde_json::Value> = chunk.iter().map(|e| submission(e)).collect();
        let answer = http
            .post(format!("http://127.0.0.1:{port}/api/v1/events/batch"))
            .json(&body)
            .send()
            .await
            .expect("batch answered");
        let status = answer.status();
        let text = answer.text().await.expect("body");
        assert!(status.is_success(), "{status}: {text}");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(json["accepted"], chunk.len(), "{text}");
        // Each item is answered with the client's own id.
        for (item, event) in json["results"]
            .as_array()
            .expect("results")
            .iter()
            .zip(chunk)
        {
            assert_eq!(item["event_id"], event.event_id.to_string(), "{text}");
        }
    }
}

async fn metric(http: &reqwest::Client, port: u16, name: &str) -> f64 {
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Private Postgres, Redis and Kafka, and a daemon (`gamestream serve`) on them.
struct Rig {
    _pg: PrivatePostgres,
    redis: PrivateRedis,
    _broker: PrivateBroker,
    env: Settings,
    overrides: Settings,
    config: Config,
    dir: tempfile::TempDir,
    daemon: Daemon,
    pool: sqlx::PgPool,
    http: reqwest::Client,
}

impl Rig {
    /// Starts everything, the daemon as `member` with `extra` settings, and waits until
    /// it is ready.
    async fn start(extra: &[(&str, String)], member: &str) -> Self {
        let pg = PrivatePostgres::start();
        let redis = PrivateRedis::start();
        let broker = PrivateBroker::start().await;
        let (env, overrides) = private_settings(&broker.address(), &pg, &redis, extra);
        let config = prepare_private(&pg, &env, &overrides).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut daemon = Daemon::start(
            env.clone(),
            overrides.clone(),
            dir.path().join(format!("{member}.log")),
            member.to_owned(),
        );
        assert!(
            daemon.wait_ready(config.http.port, WAIT).await,
            "not ready: {:?}",
            daemon.log
        );
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&format!(
                "postgres://gamestream@127.0.0.1:{}/gamestream",
                pg.port
            ))
            .await
            .expect("pool");
        Self {
            _pg: pg,
            redis,
            _broker: broker,
            env,
            overrides,
            config,
            dir,
            daemon,
            pool,
            http: reqwest::Client::new(),
        }
    }

    fn port(&self) -> u16 {
        self.config.http.port
    }

    /// Waits until every sink committed every partition to its end.
    async fn caught_up(&mut self) {
        wait_caught_up(&self.config, &self.pool, self.redis.port, &mut self.daemon).await;
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        crate::common::tally::redis_on(self.redis.port)
            .await
            .expect("redis")
    }

    async fn events_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .expect("events")
    }
}

/// `n` events of the fault suites' load, each with its own client id.
fn client_events(n: usize, now: chrono::DateTime<Utc>) -> Vec<Event> {
    (0..n)
        .map(|seq| {
            let mut event = crate::common::tally::event_of(seq, 0, now);
            event.event_id = Uuid::new_v4();
            event
        })
        .collect()
}

#[tokio::test]
async fn resent_events_count_once_in_every_store_across_a_kill() {
    let mut rig = Rig::start(&[], "dedupe-a").await;
    let (http, port) = (rig.http.clone(), rig.port());
    let now = Utc::now().trunc_subsecs(0);
    let events = client_events(EVENTS, now);

    // Every event once, then a resend of every fifth one at once (same ids).
    post(&http, port, &events.iter().collect::<Vec<_>>()).await;
    let resent_now: Vec<&Event> = events.iter().step_by(5).collect();
    post(&http, port, &resent_now).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&http, port, "gamestream_dedupe_duplicates_total").await < resent_now.len() as f64
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the duplicates were not all skipped within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGKILL, restart, and resend another tenth, partly the same events again: the new
    // daemon knows them only from the log.
    rig.daemon.kill().await;
    rig.daemon.spawn();
    assert!(
        rig.daemon.wait_ready(port, WAIT).await,
        "not ready again: {:?}",
        rig.daemon.log
    );
    let resent_after: Vec<&Event> = events.iter().skip(2).step_by(10).collect();
    post(&http, port, &resent_after).await;
    rig.caught_up().await;
    let skipped = metric(&http, port, "gamestream_dedupe_duplicates_total").await;
    // Each resend after the kill, and again any earlier duplicate some sink had not
    // committed before it (the new reader starts at the slowest sink and judges again).
    assert!(
        skipped >= resent_after.len() as f64,
        "the restarted daemon skipped {skipped} duplicates, fewer than the {} resends",
        resent_after.len()
    );

    let stored: BTreeSet<Uuid> = sqlx::query_scalar("SELECT event_id FROM events")
        .fetch_all(&rig.pool)
        .await
        .expect("events")
        .into_iter()
        .collect();
    let sent: BTreeSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(stored, sent, "`events` holds each client id once");
    let problems = check_stores(&rig.pool, &mut rig.redis().await, &events, now).await;
    assert!(
        problems.is_empty(),
        "stores differ from the distinct events: {problems:#?}"
    );
    assert!(
        rig.daemon.unexpected_exits.is_empty(),
        "{:?}",
        rig.daemon.unexpected_exits
    );
}

#[tokio::test]
async fn a_malformed_client_event_id_is_refused_with_its_reason() {
    let env = crate::common::TestEnv::new().await;
    let server = crate::common::ingest::TestServer::start(env.config.clone()).await;
    let body = r#"{"event_id":"not-a-uuid","event_type":"player_score","player_id":"p","game_id":"g","timestamp":"2024-01-15T10:30:00Z"}"#;
    let answer = server.post("/api/v1/events", body).await;
    assert_eq!(answer.status, 400, "{}", answer.text);
    assert!(
        answer.error().contains("`event_id` must be a UUID"),
        "{}",
        answer.text
    );
    let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
    let body = body.replace("not-a-uuid", id);
    let answer = server.post("/api/v1/events", &body).await;
    assert!(answer.status < 300, "{}", answer.text);
    assert_eq!(
        answer.json()["event_id"],
        id,
        "the client's id is the event's id"
    );
}

/// A dead letter that only the leaderboard consumer wrote (the other sinks applied the
/// event), replayed twice (the second as after a crash between the broker's ack and the
/// replay's commit): the leaderboards count it once, and the statistics and `events`,
/// which had it already, not again.
#[tokio::test]
async fn a_replayed_letter_is_applied_once_by_the_sinks_that_refused_it() {
    let mut rig = Rig::start(&[], "replay-a").await;
    let (http, port) = (rig.http.clone(), rig.port());
    let now = Utc::now().trunc_subsecs(0);
    // Events of every type; seq 4 is a player_score (KNOWN_EVENT_TYPES order).
    let events = client_events(50, now);
    let scored = events
        .iter()
        .find(|e| e.event_type == "player_score")
        .expect("a player_score event")
        .clone();
    post(&http, port, &events.iter().collect::<Vec<_>>()).await;
    rig.caught_up().await;

    // As if the leaderboard sinks had refused `scored` (a rule since fixed): its scores
    // are taken out of both leaderboard stores, and its letter written.
    let score = match scored.score {
        gamestream::event::Score::Integer(points) => points,
        other => panic!("{other:?}"),
    };
    sqlx::query(
        "UPDATE leaderboard_scores SET score = score - $1 WHERE player_id = $2 AND game_id = $3",
    )
    .bind(score)
    .bind(&scored.player_id)
    .bind(&scored.game_id)
    .execute(&rig.pool)
    .await
    .expect("take the score out");
    let mut redis_conn = rig.redis().await;
    for board in ["alltime", "daily", "weekly"] {
        let _: f64 = redis::cmd("ZINCRBY")
            .arg(format!("leaderboard:{}:{board}", scored.game_id))
            .arg(-score)
            .arg(&scored.player_id)
            .query_async(&mut redis_conn)
            .await
            .expect("take the score out of redis");
    }
    let letter: i32 = sqlx::query_scalar(
        "INSERT INTO dlq_events (original_event, error_message, consumer_service, error_kind, \
         source_topic, source_partition, source_offset, original_payload) \
         VALUES ($1, 'refused by a rule since fixed', 'leaderboard-manager', 'bad_score', $2, 0, 999999, $3) \
         RETURNING id",
    )
    .bind(serde_json::from_slice::<serde_json::Value>(&scored.to_record_value()).expect("json"))
    .bind(&rig.config.topics.player_events)
    .bind(scored.to_record_value())
    .fetch_one(&rig.pool)
    .await
    .expect("letter");

    let selection = gamestream::ops::dlq::ReplaySelection {
        ids: vec![letter],
        service: None,
        since: None,
    };
    for round in 0..2 {
        let report = gamestream::ops::dlq::replay(&rig.pool, &rig.config, &selection, 10, false)
            .await
            .expect("replay");
        assert_eq!(report.replayed, vec![letter], "round {round}");
        // The second time, as if the replay had crashed before marking the letter.
        sqlx::query("UPDATE dlq_events SET replayed_at = NULL WHERE id = $1")
            .bind(letter)
            .execute(&rig.pool)
            .await
            .expect("unmark");
    }
    rig.caught_up().await;

    // Every store equals the events posted once: the leaderboards got the score back
    // once, statistics and `events` were not fed again.
    let problems = check_stores(&rig.pool, &mut redis_conn, &events, now).await;
    let problems: Vec<String> = problems
        .into_iter()
        .filter(|p| !p.contains("dead letters"))
        .collect();
    assert!(problems.is_empty(), "stores differ: {problems:#?}");
    assert_eq!(rig.events_rows().await, events.len() as i64);
    let skipped = metric(&http, port, "gamestream_dedupe_duplicates_total").await;
    assert!(
        skipped >= 1.0,
        "the repeated replay was skipped as a duplicate"
    );
}

async fn wait_caught_up(
    config: &gamestream::config::Config,
    pool: &sqlx::PgPool,
    redis_port: u16,
    daemon: &mut Daemon,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !caught_up(config, pool, redis_port).await {
        daemon.check();
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sinks did not catch up within {WAIT:?}; log {:?}",
            daemon.log
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Two daemons share the partitions; the one that owned some is killed and the other
/// takes them over (its readers rebuild their windows from the log); resends to the
/// survivor of events first sent to either count once.
#[tokio::test]
async fn resends_after_a_take_over_by_another_daemon_count_once() {
    let leases = [
        ("lease.ttl", "\"3s\"".to_owned()),
        ("lease.renew_interval", "\"1s\"".to_owned()),
    ];
    let mut rig = Rig::start(&leases, "dedupe-a").await;
    let port_a = rig.port();
    let port_b = crate::common::free_port();
    let mut overrides_b = rig.overrides.clone();
    overrides_b.push(("http.port".to_owned(), port_b.to_string()));
    let mut b = Daemon::start(
        rig.env.clone(),
        overrides_b,
        rig.dir.path().join("b.log"),
        "dedupe-b".to_owned(),
    );
    assert!(b.wait_ready(port_b, WAIT).await, "b not ready: {:?}", b.log);
    let partitions = rig.config.topics.player_events_partitions as usize;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (ha, hb) = (held_partitions(port_a).await, held_partitions(port_b).await);
        if !ha.is_empty() && !hb.is_empty() && ha.len() + hb.len() == partitions {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemons did not share the partitions: a {ha:?}, b {hb:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let http = rig.http.clone();
    let now = Utc::now().trunc_subsecs(0);
    let events = client_events(400, now);
    let (first_half, second_half) = events.split_at(events.len() / 2);
    post(&http, port_a, &first_half.iter().collect::<Vec<_>>()).await;
    post(&http, port_b, &second_half.iter().collect::<Vec<_>>()).await;
    wait_caught_up(&rig.config, &rig.pool, rig.redis.port, &mut b).await;

    // a goes; b takes its partitions over once a's leases expire.
    rig.daemon.kill().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while held_partitions(port_b).await.len() != partitions {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b did not take a's partitions over within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A fifth of all the events again, through b.
    let resent: Vec<&Event> = events.iter().step_by(5).collect();
    post(&http, port_b, &resent).await;
    wait_caught_up(&rig.config, &rig.pool, rig.redis.port, &mut b).await;

    let problems = check_stores(&rig.pool, &mut rig.redis().await, &events, now).await;
    assert!(problems.is_empty(), "stores differ: {problems:#?}");
    assert_eq!(rig.events_rows().await, events.len() as i64);
    assert!(b.unexpected_exits.is_empty(), "{:?}", b.unexpected_exits);
}

/// The window's boundary, end to end: a resend within `dedupe.window` counts once; one
/// after it is a new record for the counting sinks (statistics and leaderboards count
/// it again) while `events` keeps the first (its key is `event_id`). As the README says.
#[tokio::test]
async fn a_resend_after_the_window_is_counted_again_except_in_events() {
    let window = [("dedupe.window", "\"2s\"".to_owned())];
    let mut rig = Rig::start(&window, "window-a").await;
    let (http, port) = (rig.http.clone(), rig.port());
    let now = Utc::now().trunc_subsecs(0);
    let scored = |seq: usize, player: &str| {
        let mut event = crate::common::tally::event_of(seq, 0, now);
        event.event_type = "player_score".to_owned();
        event.data = r#"{"score":10}"#.to_owned();
        event.player_id = player.to_owned();
        event.game_id = "window-game".to_owned();
        event.event_id = Uuid::new_v4();
        event
    };
    let within = scored(1, "within-window");
    let after = scored(2, "after-window");
    post(&http, port, &[&within, &after]).await;
    post(&http, port, &[&within]).await; // at once: a duplicate
    rig.caught_up().await;
    tokio::time::sleep(Duration::from_secs(3)).await; // past the 2 s window
    post(&http, port, &[&after]).await;
    rig.caught_up().await;

    let total = |player: &'static str| {
        let pool = rig.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT total_events FROM player_statistics WHERE player_id = $1",
            )
            .bind(player)
            .fetch_one(&pool)
            .await
            .expect("statistics")
        }
    };
    assert_eq!(
        total("within-window").await,
        1,
        "a resend within the window"
    );
    assert_eq!(total("after-window").await, 2, "a resend after the window");
    let redis_conn = rig.redis().await;
    let board = "leaderboard:window-game:alltime".to_owned();
    let score = |player: &'static str| {
        let board = board.clone();
        let mut conn = redis_conn.clone();
        async move {
            redis::cmd("ZSCORE")
                .arg(&board)
                .arg(player)
                .query_async::<f64>(&mut conn)
                .await
                .expect("zscore")
        }
    };
    assert_eq!(score("within-window").await, 10.0);
    assert_eq!(score("after-window").await, 20.0);
    assert_eq!(
        rig.events_rows().await,
        2,
        "`events` keeps the first of each id"
    );
}
