//! Statistics and leaderboards against real Postgres, Redis and the broker: exact
//! counts and scores through kill -9, periods around midnight and ISO week boundaries,
//! late events, Redis lost mid-stream or flushed (private Redis servers), and sums held
//! within ±(2^53 - 1) by both stores alike.

use std::time::Duration;

use crate::common::analytics::{
    Expected, REDIS_SINKS, assert_stores_match, day_key, midnight, mixed_event, monday,
    redis_offsets, wait_all_caught_up, wait_leaderboards_table, week_key, zset,
};
use crate::common::{PrivateRedis, RawRecord, TestEnv, eventually, produce_raw};
use chrono::Utc;
use gamestream::daemon;
use gamestream::event::{Event, Score};
use gamestream::shutdown::Shutdown;

/// Small fetches and batches (a player's events spread over many commits, and kills
/// land between them), a fast refresh, a short top N (so the table is really cut).
const SETTINGS: [(&str, &str); 9] = [
    ("mode", "\"consume\""),
    ("consumer.fetch_max_bytes", "32768"),
    ("logger.batch_size", "300"),
    ("stats.buffer_size", "200"),
    ("stats.linger", "\"50ms\""),
    ("leaderboard.batch_size", "250"),
    ("leaderboard.linger", "\"50ms\""),
    ("leaderboard.refresh_interval", "\"1s\""),
    ("leaderboard.top_n", "5"),
];
const TOP_N: usize = 5;
/// The default `leaderboard.period_ttl`.
const PERIOD_TTL: Duration = Duration::from_secs(35 * 24 * 3600);

async fn total_counted(pg: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT COALESCE(SUM(total_events), 0)::int8 FROM player_statistics")
        .fetch_one(pg)
        .await
        .expect("sum")
}

async fn produce(env: &TestEnv, events: &[Event]) {
    let records: Vec<_> = events.iter().map(RawRecord::of).collect();
    produce_raw(&env.config, &env.config.topics.player_events, &records).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_aggregating_counts_every_event_once() {
    let env = TestEnv::with_overrides(&SETTINGS).await;
    let now = Utc::now();
    let n = 30_000;
    let events: Vec<_> = (0..n).map(|i| mixed_event(i, 400, 6, now)).collect();
    produce(&env, &events).await;
    let mut redis = env.redis().await;

    let spawn = || {
        env.command(&["serve"])
            // The bad scores' dead letters are expected; keep the output for surprises.
            .env("RUST_LOG", "warn,gamestream::actors::dlq=error")
            .spawn()
            .expect("spawn gamestream serve")
    };
    let mut killed_mid_stream = 0;
    for round in 0..3 {
        let mut child = spawn();
        let progressed = eventually(Duration::from_secs(60), || async {
            total_counted(&env.pg).await > (round + 1) * 6_000
        })
        .await;
        child.kill().await.expect("kill -9");
        assert!(progressed, "round {round}: no progress before the kill");
        if total_counted(&env.pg).await < n as i64 {
            killed_mid_stream += 1;
        }
    }
    assert!(killed_mid_stream > 0, "no kill happened mid-stream");

    let mut child = spawn();
    let caught_up = wait_all_caught_up(&env, &mut redis, Duration::from_secs(120)).await;
    let table = if caught_up {
        wait_leaderboards_table(&env, &Expected::of(&events), TOP_N, Duration::from_secs(30)).await
    } else {
        Err("not caught up".to_owned())
    };
    child.kill().await.expect("kill");
    assert!(caught_up, "the sinks did not catch up after the kills");
    assert_stores_match(&env, &mut redis, &Expected::of(&events), PERIOD_TTL).await;
    table.expect("leaderboards table holds the top N");
}

/// One event per player, so that each board's members say exactly which events it got.
fn scored(player: &str, t: chrono::DateTime<Utc>, points: i64) -> Event {
    Event {
        event_id: uuid::Uuid::new_v4(),
        event_type: "player_score".to_owned(),
        player_id: player.to_owned(),
        game_id: "periods".to_owned(),
        timestamp: t,
        ingested_at: Utc::now(),
        data: format!(r#"{{"score":{points}}}"#),
        score: Score::Integer(points),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_in_their_own_periods() {
    let env = TestEnv::with_overrides(&SETTINGS).await;
    let now = Utc::now();
    let ms = chrono::Duration::milliseconds;
    let before_midnight = scored("p-before-midnight", midnight(now) - ms(1), 10);
    let at_midnight = scored("p-at-midnight", midnight(now), 20);
    let before_monday = scored("p-sunday", monday(now) - ms(1), 100);
    let at_monday = scored("p-monday", monday(now), 1000);
    let late = scored("p-late", now - chrono::Duration::days(10), 5);
    let ancient = scored("p-ancient", now - chrono::Duration::days(400), 7);
    assert_ne!(
        day_key(before_midnight.timestamp),
        day_key(at_midnight.timestamp)
    );
    assert_ne!(
        week_key(before_monday.timestamp),
        week_key(at_monday.timestamp)
    );

    let shutdown = Shutdown::new();
    let running = daemon::start(env.config.clone(), false, shutdown.clone())
        .await
        .expect("daemon starts");
    let mut redis = env.redis().await;
    let in_time = [
        before_midnight.clone(),
        at_midnight.clone(),
        before_monday.clone(),
        at_monday.clone(),
    ];
    produce(&env, &in_time).await;
    assert!(wait_all_caught_up(&env, &mut redis, Duration::from_secs(60)).await);
    // The late and the ancient event arrive after newer ones were applied.
    produce(&env, &[late.clone(), ancient.clone()]).await;
    assert!(wait_all_caught_up(&env, &mut redis, Duration::from_secs(60)).await);
    shutdown.trigger();
    running.stop().await;

    let prefix = &env.config.redis.key_prefix;
    let board = |suffix: String| format!("{prefix}leaderboard:periods:{suffix}");
    let all = [
        &before_midnight,
        &at_midnight,
        &before_monday,
        &at_monday,
        &late,
        &ancient,
    ];
    for e in all {
        let (p, s) = (e.player_id.clone(), e.score_points());
        let day = day_key(e.timestamp);
        let week = week_key(e.timestamp);
        assert_eq!(
            zset(&mut redis, &board("alltime".into())).await.get(&p),
            Some(&s),
            "{p} all time"
        );
        let ancient = e.player_id == "p-ancient";
        for (period, key) in [("daily", &day), ("weekly", &week)] {
            let dated = zset(&mut redis, &board(format!("{period}:{key}"))).await;
            assert_eq!(
                dated.get(&p).copied(),
                (!ancient).then_some(s),
                "{p} in {period}:{key}"
            );
            let row: Option<i64> = sqlx::query_scalar(
                "SELECT score FROM leaderboard_scores
                 WHERE game_id = 'periods' AND period = $1 AND period_key = $2 AND player_id = $3",
            )
            .bind(period)
            .bind(key)
            .bind(&p)
            .fetch_optional(&env.pg)
            .await
            .expect("score row");
            assert_eq!(row, Some(s), "{p}: Postgres keeps {period} {key}");
        }
        let today = zset(&mut redis, &board("daily".into())).await;
        assert_eq!(
            today.get(&p).copied(),
            (day == day_key(now)).then_some(s),
            "{p} in today's board"
        );
        let this_week = zset(&mut redis, &board("weekly".into())).await;
        assert_eq!(
            this_week.get(&p).copied(),
            (week == week_key(now)).then_some(s),
            "{p} in this week's board"
        );
    }
    // The boundary cases, spelled out: a millisecond apart, different boards.
    let today = zset(&mut redis, &board("daily".into())).await;
    assert!(today.contains_key("p-at-midnight") && !today.contains_key("p-before-midnight"));
    let this_week = zset(&mut redis, &board("weekly".into())).await;
    assert!(this_week.contains_key("p-monday") && !this_week.contains_key("p-sunday"));
    assert!(!this_week.contains_key("p-late") && !this_week.contains_key("p-ancient"));
}

/// A record of game `compat` with `data` as given: the pipeline reads the score from it.
fn with_data(player: &str, event_type: &str, data: &str) -> Event {
    Event {
        game_id: "compat".to_owned(),
        event_type: event_type.to_owned(),
        data: data.to_owned(),
        score: Score::Absent,
        ..scored(player, Utc::now(), 0)
    }
}

/// As the old leaderboard manager's `int(score)`: a fractional score counts as its
/// truncation toward zero, event by event, in both stores; a score that is not a number,
/// or none, is dead-lettered by the leaderboard manager with its own kind while the
/// statistics count the event; one past ±(2^53 - 1) once truncated is not a valid event.
/// And the `leaderboards` table holds all-time rows only (CONTRACT): the daily and weekly
/// rows an earlier version wrote are gone after a refresh, and the operators' query reads
/// one board.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_count_as_python_int_and_leaderboards_hold_all_time_only() {
    let env = TestEnv::with_overrides(&SETTINGS).await;
    for (player, period) in [("stale-daily", "daily"), ("stale-weekly", "weekly")] {
        sqlx::query(
            "INSERT INTO leaderboards (game_id, player_id, rank, score, period)
             VALUES ('compat', $1, 1, 99, $2)",
        )
        .bind(player)
        .bind(period)
        .execute(&env.pg)
        .await
        .expect("a row an earlier version wrote");
    }
    let score = |player: &str, data: &str| with_data(player, "player_score", data);
    let events = [
        score("p-half", r#"{"score":12.5}"#),
        score("p-negative-half", r#"{"score":-12.5}"#),
        score("p-exponent", r#"{"score":1e3}"#),
        // Truncated one by one: 8 + 5 + 0, not int(14.6).
        score("p-sum", r#"{"score":8.7}"#),
        score("p-sum", r#"{"score":5}"#),
        score("p-sum", r#"{"score":0.9}"#),
        score("p-string", r#"{"score":"10"}"#),
        score("p-boolean", r#"{"score":true}"#),
        score("p-null", r#"{"score":null}"#),
        score("p-missing", r#"{"level":3}"#),
        score("p-huge", r#"{"score":1e30}"#),
        score("p-past-bound", r#"{"score":9007199254740992.0}"#),
        with_data("p-other", "quest_completed", r#"{"score":"ten"}"#),
    ];
    produce(&env, &events).await;
    let shutdown = Shutdown::new();
    let running = daemon::start(env.config.clone(), false, shutdown.clone())
        .await
        .expect("daemon starts");
    let mut redis = env.redis().await;
    let caught_up = wait_all_caught_up(&env, &mut redis, Duration::from_secs(60)).await;
    // The operators' query, once the refresh has run: one board, all time, ranked, of
    // truncated scores.
    let row = |rank: i32, player: &str, score: i64| {
        ("alltime".to_owned(), rank, player.to_owned(), score)
    };
    let want_table = [
        row(1, "p-exponent", 1000),
        row(2, "p-sum", 13),
        row(3, "p-half", 12),
        row(4, "p-negative-half", -12),
    ];
    let operators_query = || async {
        sqlx::query_as::<_, (String, i32, String, i64)>(
            "SELECT period, rank, player_id, score FROM leaderboards
             WHERE game_id = 'compat' ORDER BY rank LIMIT 10",
        )
        .fetch_all(&env.pg)
        .await
        .expect("the operators' query")
    };
    let refreshed = eventually(Duration::from_secs(30), || async {
        operators_query().await == want_table
    })
    .await;
    shutdown.trigger();
    running.stop().await;
    assert!(caught_up, "the sinks did not catch up");
    assert!(refreshed, "leaderboards: {:?}", operators_query().await);

    let want: std::collections::BTreeMap<String, i64> = [
        ("p-exponent", 1000),
        ("p-sum", 13),
        ("p-half", 12),
        ("p-negative-half", -12),
    ]
    .map(|(p, s)| (p.to_owned(), s))
    .into();
    let prefix = &env.config.redis.key_prefix;
    for (period, key) in [
        ("alltime", "alltime".to_owned()),
        ("daily", day_key(Utc::now())),
        ("weekly", week_key(Utc::now())),
    ] {
        let stored: Vec<(String, i64)> = sqlx::query_as(
            "SELECT player_id, score FROM leaderboard_scores
             WHERE game_id = 'compat' AND period = $1 AND period_key = $2",
        )
        .bind(period)
        .bind(&key)
        .fetch_all(&env.pg)
        .await
        .expect("scores");
        assert_eq!(
            stored
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
            want,
            "Postgres {period} {key}"
        );
        let board = zset(&mut redis, &format!("{prefix}leaderboard:compat:{period}")).await;
        assert_eq!(board, want, "Redis {period}");
    }

    let letters: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT original_event->>'player_id', consumer_service, error_kind, error_message
         FROM dlq_events ORDER BY 1",
    )
    .fetch_all(&env.pg)
    .await
    .expect("dead letters");
    let not_a_number =
        |got: &str| format!("`data.score` of a player_score event must be a number, got {got}");
    let out_of_range = |got: &str| {
        format!(
            "`data.score` of a player_score event must be between -9007199254740991 and \
             9007199254740991 (2^53 - 1) once truncated to an integer, got {got}"
        )
    };
    let letter = |player: &str, consumer: &str, kind: &str, message: String| {
        (
            player.to_owned(),
            consumer.to_owned(),
            kind.to_owned(),
            message,
        )
    };
    let lb = "leaderboard-manager";
    assert_eq!(
        letters,
        [
            letter(
                "p-boolean",
                lb,
                "score_not_a_number",
                not_a_number("a boolean")
            ),
            letter(
                "p-huge",
                "event-logger",
                "score_out_of_range",
                out_of_range("1e30")
            ),
            letter(
                "p-missing",
                lb,
                "missing_score",
                "a player_score event needs a numeric `data.score`; it has none".to_owned()
            ),
            letter("p-null", lb, "score_not_a_number", not_a_number("null")),
            letter(
                "p-past-bound",
                "event-logger",
                "score_out_of_range",
                out_of_range("9007199254740992")
            ),
            letter(
                "p-string",
                lb,
                "score_not_a_number",
                not_a_number("a string")
            ),
        ]
    );
    // Events whose score does not count are still events: stored and counted.
    let counted: Vec<(String, i64)> =
        sqlx::query_as("SELECT player_id, total_events::int8 FROM player_statistics ORDER BY 1")
            .fetch_all(&env.pg)
            .await
            .expect("statistics");
    let players: Vec<&str> = counted.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        players,
        [
            "p-boolean",
            "p-exponent",
            "p-half",
            "p-missing",
            "p-negative-half",
            "p-null",
            "p-other",
            "p-string",
            "p-sum",
        ]
    );
    assert_eq!(counted.iter().map(|(_, n)| n).sum::<i64>(), 11);
}

/// Migration 20261203000001 deletes the daily and weekly rows of `leaderboards`, of every
/// game (the refresh only rewrites the games it ranks), and keeps the all-time ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_keeps_all_time_rows_only() {
    let env = TestEnv::new().await;
    for (game, player, period) in [
        ("never-played-again", "a", "daily"),
        ("never-played-again", "b", "weekly"),
        ("never-played-again", "c", "alltime"),
        ("game-1", "d", "alltime"),
    ] {
        sqlx::query(
            "INSERT INTO leaderboards (game_id, player_id, rank, score, period)
             VALUES ($1, $2, 1, 5, $3)",
        )
        .bind(game)
        .bind(player)
        .bind(period)
        .execute(&env.pg)
        .await
        .expect("row");
    }
    assert!(
        gamestream::sinks::postgres::MIGRATOR
            .iter()
            .any(|m| m.version == 20261203000001),
        "the migration is embedded"
    );
    sqlx::raw_sql(include_str!(
        "../../migrations/20261203000001_leaderboards_alltime_only.sql"
    ))
    .execute(&env.pg)
    .await
    .expect("the migration runs (again)");
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT player_id, period FROM leaderboards ORDER BY 1")
            .fetch_all(&env.pg)
            .await
            .expect("rows");
    assert_eq!(
        rows,
        [
            ("c".to_owned(), "alltime".to_owned()),
            ("d".to_owned(), "alltime".to_owned())
        ]
    );
}

/// Score of a test event built with an integer score.
trait Points {
    fn score_points(&self) -> i64;
}

impl Points for Event {
    fn score_points(&self) -> i64 {
        match self.score {
            Score::Integer(s) => s,
            _ => panic!("test events have integer scores"),
        }
    }
}

/// A daemon in this process whose Redis is `private`.
async fn env_on_private_redis(private: &PrivateRedis, extra: &[(&str, &str)]) -> TestEnv {
    let port = private.port.to_string();
    let mut settings = SETTINGS.to_vec();
    settings.extend([
        ("redis.port", port.as_str()),
        ("redis.timeout", "\"1s\""),
        ("consumer.retry_max_backoff", "\"500ms\""),
    ]);
    settings.extend(extra);
    TestEnv::with_overrides(&settings).await
}

/// The marker field of a Redis sink's offsets hash (changes with every rebuild).
async fn marker(
    redis: &mut redis::aio::MultiplexedConnection,
    env: &TestEnv,
    sink: &str,
) -> Option<String> {
    redis::cmd("HGET")
        .arg(format!(
            "{}gamestream:offsets:{sink}:{}",
            env.config.redis.key_prefix, env.config.topics.player_events
        ))
        .arg("initialised_at")
        .query_async(redis)
        .await
        .expect("hget")
}

fn rebuilds_counted(sink: &str) -> u64 {
    let text = gamestream::telemetry::metrics_handle().render();
    text.lines()
        .filter(|l| {
            l.starts_with("gamestream_redis_rebuilds_total")
                && l.contains(&format!("sink=\"{sink}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_mid_stream_is_rebuilt_from_postgres() {
    let mut private = PrivateRedis::start();
    let env = env_on_private_redis(&private, &[]).await;
    let now = Utc::now();
    let first: Vec<_> = (0..20_000).map(|i| mixed_event(i, 300, 5, now)).collect();
    produce(&env, &first).await;
    let shutdown = Shutdown::new();
    let running = daemon::start(env.config.clone(), false, shutdown.clone())
        .await
        .expect("daemon starts");
    let rebuilds_before: Vec<u64> = REDIS_SINKS.iter().map(|s| rebuilds_counted(s)).collect();

    let mut redis = private.connection().await;
    let topic = env.config.topics.player_events.clone();
    let prefix = env.config.redis.key_prefix.clone();
    let started = eventually(Duration::from_secs(60), || {
        let mut redis = redis.clone();
        let (topic, prefix) = (topic.clone(), prefix.clone());
        async move {
            let applied: i64 = redis_offsets(&mut redis, &prefix, REDIS_SINKS[0], &topic)
                .await
                .values()
                .sum();
            applied > 2_000
        }
    })
    .await;
    assert!(started, "Redis sinks made no progress");
    let applied_before_loss: i64 = redis_offsets(&mut redis, &prefix, REDIS_SINKS[0], &topic)
        .await
        .values()
        .sum();
    assert!(
        applied_before_loss < first.len() as i64,
        "the loss must happen mid-stream"
    );

    private.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    private.restart_empty();
    let second: Vec<_> = (20_000..30_000)
        .map(|i| mixed_event(i, 300, 5, now))
        .collect();
    produce(&env, &second).await;

    let mut redis = private.connection().await;
    let caught_up = wait_all_caught_up(&env, &mut redis, Duration::from_secs(120)).await;
    shutdown.trigger();
    running.stop().await;
    assert!(caught_up, "did not catch up after Redis came back empty");
    let all: Vec<Event> = first.into_iter().chain(second).collect();
    assert_stores_match(&env, &mut redis, &Expected::of(&all), PERIOD_TTL).await;
    for (sink, before) in REDIS_SINKS.iter().zip(rebuilds_before) {
        let marker = marker(&mut redis, &env, sink).await.unwrap_or_default();
        assert!(marker.contains("rebuilt from postgres"), "{sink}: {marker}");
        assert!(
            rebuilds_counted(sink) > before,
            "{sink}: rebuild counted in the metric"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_is_noticed_and_redis_rebuilt() {
    let private = PrivateRedis::start();
    let env = env_on_private_redis(&private, &[]).await;
    let now = Utc::now();
    let first: Vec<_> = (0..8_000).map(|i| mixed_event(i, 200, 4, now)).collect();
    produce(&env, &first).await;
    let shutdown = Shutdown::new();
    let running = daemon::start(env.config.clone(), false, shutdown.clone())
        .await
        .expect("daemon starts");
    let mut redis = private.connection().await;
    assert!(wait_all_caught_up(&env, &mut redis, Duration::from_secs(60)).await);
    let markers_before = [
        marker(&mut redis, &env, REDIS_SINKS[0]).await,
        marker(&mut redis, &env, REDIS_SINKS[1]).await,
    ];
    assert!(markers_before.iter().all(Option::is_some));

    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut redis)
        .await
        .expect("flushall (private redis)");
    let second: Vec<_> = (8_000..16_000)
        .map(|i| mixed_event(i, 200, 4, now))
        .collect();
    produce(&env, &second).await;
    let caught_up = wait_all_caught_up(&env, &mut redis, Duration::from_secs(120)).await;
    shutdown.trigger();
    running.stop().await;
    assert!(caught_up, "did not catch up after FLUSHALL");
    for (sink, before) in REDIS_SINKS.iter().zip(markers_before) {
        let after = marker(&mut redis, &env, sink).await;
        assert!(
            after.is_some() && after != before,
            "{sink}: rebuilt ({before:?} → {after:?})"
        );
    }
    let all: Vec<Event> = first.into_iter().chain(second).collect();
    assert_stores_match(&env, &mut redis, &Expected::of(&all), PERIOD_TTL).await;
}

/// Redis unresponsive (SIGSTOP, data kept): the readers leave its sinks behind after
/// `consumer.detach_after`, Postgres goes on to the end, and when Redis answers again its
/// sinks catch up from their own offsets (no rebuild: the data is still there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_up_while_redis_is_down() {
    let mut private = PrivateRedis::start();
    let env = env_on_private_redis(
        &private,
        &[
            ("consumer.max_in_flight_records", "1000"),
            ("consumer.detach_after", "\"1s\""),
        ],
    )
    .await;
    assert!(
        env.config.consumer.max_in_flight_records < 18_000 / 3,
        "the outage must outlast the readers' credit, or no sink is ever left behind"
    );
    let now = Utc::now();
    let events: Vec<_> = (0..20_000).map(|i| mixed_event(i, 300, 5, now)).collect();
    let shutdown = Shutdown::new();
    let running = daemon::start(env.config.clone(), false, shutdown.clone())
        .await
        .expect("daemon starts");
    let mut redis = private.connection().await;
    produce(&env, &events[..2_000]).await;
    assert!(wait_all_caught_up(&env, &mut redis, Duration::from_secs(60)).await);

    private.pause(); // unresponsive, data kept
    let paused_at = std::time::Instant::now();
    produce(&env, &events[2_000..]).await;
    let pg_kept_up = eventually(Duration::from_secs(90), || async {
        total_counted(&env.pg).await == events.len() as i64
    })
    .await;
    let kept_up_after = paused_at.elapsed();
    private.resume();
    let prefix = env.config.redis.key_prefix.clone();
    let topic = env.config.topics.player_events.clone();
    let redis_applied: i64 = redis_offsets(&mut redis, &prefix, REDIS_SINKS[0], &topic)
        .await
        .values()
        .sum();
    let caught_up = wait_all_caught_up(&env, &mut redis, Duration::from_secs(120)).await;
    shutdown.trigger();
    running.stop().await;
    assert!(
        pg_kept_up,
        "Postgres statistics did not keep up while Redis was down"
    );
    assert!(
        redis_applied < events.len() as i64 / 2,
        "Redis was behind while Postgres finished (it had {redis_applied}, Postgres all after {kept_up_after:?})"
    );
    assert!(caught_up, "Redis did not catch up from its own offsets");
    assert_stores_match(&env, &mut redis, &Expected::of(&events), PERIOD_TTL).await;
}

/// A score event of game `bound`.
fn bounded(player: &str, t: chrono::DateTime<Utc>, points: i64) -> Event {
    Event {
        game_id: "bound".to_owned(),
        ..scored(player, t, points)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sum_past_the_exact_bound_is_dead_lettered_and_the_stores_agree() {
    const MAX: i64 = gamestream::event::MAX_EXACT_SCORE;
    let env = TestEnv::with_overrides(&SETTINGS).await;
    let now = Utc::now();
    let shutdown = Shutdown::new();
    let running = daemon::start(env.config.clone(), false, shutdown.clone())
        .await
        .expect("daemon starts");
    let mut redis = env.redis().await;
    // One write: the batch's own sum crosses (the sinks refuse it and isolate the record).
    produce(
        &env,
        &[
            bounded("over", now, MAX - 10),
            bounded("other", now, 7),
            bounded("over", now, 5),
            bounded("over", now, 10), // MAX + 5: refused
            bounded("at-max", now, MAX),
            bounded("over", now, 3),
            bounded("at-min", now, -MAX),
            bounded("other", now, 8),
        ],
    )
    .await;
    assert!(wait_all_caught_up(&env, &mut redis, Duration::from_secs(60)).await);
    // Another: the batch's sum (-2) is fine, the stored score plus its running sum is not.
    produce(
        &env,
        &[
            bounded("over", now, 2),  // MAX exactly
            bounded("over", now, 1),  // MAX + 1: refused
            bounded("over", now, -4), // MAX - 4
        ],
    )
    .await;
    let caught_up = wait_all_caught_up(&env, &mut redis, Duration::from_secs(60)).await;
    shutdown.trigger();
    running.stop().await;
    assert!(caught_up, "the partitions went on past the refused records");

    let prefix = &env.config.redis.key_prefix;
    let boards = [
        ("alltime", "alltime".to_owned()),
        ("daily", day_key(now)),
        ("weekly", week_key(now)),
    ];
    for (player, want) in [
        ("over", MAX - 4),
        ("other", 15),
        ("at-max", MAX),
        ("at-min", -MAX),
    ] {
        for (period, key) in &boards {
            let stored: Option<i64> = sqlx::query_scalar(
                "SELECT score FROM leaderboard_scores
                 WHERE game_id = 'bound' AND period = $1 AND period_key = $2 AND player_id = $3",
            )
            .bind(period)
            .bind(key)
            .bind(player)
            .fetch_optional(&env.pg)
            .await
            .expect("score row");
            assert_eq!(stored, Some(want), "Postgres: {player} {period} {key}");
            let redis_key = if *period == "alltime" {
                format!("{prefix}leaderboard:bound:alltime")
            } else {
                format!("{prefix}leaderboard:bound:{period}:{key}")
            };
            // The score as Redis prints it: an exact integer, not a rounded double.
            let in_redis: Option<String> = redis::cmd("ZSCORE")
                .arg(&redis_key)
                .arg(player)
                .query_async(&mut redis)
                .await
                .expect("zscore");
            assert_eq!(
                in_redis,
                Some(want.to_string()),
                "Redis: {player} in {redis_key}"
            );
        }
    }
    let letters: Vec<(String, String, String, String, i64)> = sqlx::query_as(
        "SELECT consumer_service, error_kind, error_message,
                original_event->'data'->>'score', source_offset
         FROM dlq_events ORDER BY source_offset",
    )
    .fetch_all(&env.pg)
    .await
    .expect("dead letters");
    assert_eq!(
        letters.len(),
        2,
        "the two crossing records, once each: {letters:#?}"
    );
    for ((consumer, kind, error, score, _), want) in letters.iter().zip(["10", "1"]) {
        assert_eq!(consumer, "leaderboard-manager");
        assert_eq!(kind, "sink_rejected");
        assert_eq!(score, want, "{error}");
        assert!(
            error.contains("9007199254740991") && error.contains("every store holds exactly"),
            "{error}"
        );
    }
}
