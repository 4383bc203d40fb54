//! The switch-over from the old pipeline, played on real services (issue 18).
//!
//! The test plays the old pipeline itself: its database from `../shared/legacy/schema.sql`,
//! three consumers that each applied a prefix of every partition and committed exactly
//! that prefix with OffsetCommit (the logger's rows, HINCRBY hashes and partial counts
//! overwritten in Postgres, ZINCRBY boards whose days and weeks never rolled over, the
//! all-time top 100 in `leaderboards`). Then `migrate`, `cutover plan`, `cutover apply`,
//! a daemon, more events, `cutover verify`: every store must equal the tally of all events.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use gamestream::daemon;
use gamestream::event::{Event, Score};
use gamestream::kafka;
use gamestream::shutdown::Shutdown;

use crate::common::analytics::{
    Expected, assert_stores_match, hgetall, mixed_event, wait_all_caught_up,
};
use crate::common::tally::Daemon;
use crate::common::{RawRecord, TestEnv, consume_all, produce_raw, scan_keys};

const SETTINGS: [(&str, &str); 7] = [
    ("mode", "\"consume\""),
    ("logger.batch_size", "200"),
    ("stats.linger", "\"50ms\""),
    ("leaderboard.batch_size", "200"),
    ("leaderboard.linger", "\"50ms\""),
    ("leaderboard.refresh_interval", "\"1s\""),
    ("consumer.retry_max_backoff", "\"500ms\""),
];
const PLAYERS: usize = 40;
const GAMES: usize = 3;
const OLD_EVENTS: usize = 600;
const NEW_EVENTS: usize = 300;
/// The default `leaderboard.period_ttl`.
const PERIOD_TTL: Duration = Duration::from_secs(35 * 24 * 3600);
const CATCH_UP: Duration = Duration::from_secs(120);

/// Event `i` with a score the old manager could sum (the old pipeline never produced
/// the dead letters gamestream writes for the others).
fn old_event(i: usize) -> Event {
    let mut e = mixed_event(i, PLAYERS, GAMES, Utc::now());
    if e.event_type == "player_score" && !matches!(e.score, Score::Integer(_)) {
        e.data = r#"{"score":7}"#.to_owned();
        e.score = Score::Integer(7);
    }
    e
}

/// Where each old consumer group stopped, per partition (the next offset).
struct Cuts {
    logger: BTreeMap<i32, i64>,
    /// Records the logger wrote past its commit (an unclean stop), per partition.
    logged_past_commit: i64,
    stats: BTreeMap<i32, i64>,
    leaderboard: BTreeMap<i32, i64>,
}

impl Cuts {
    /// Different prefixes per group; on partition 0 the logger is behind the
    /// leaderboard manager, elsewhere ahead of it (both offset gaps of `apply`).
    fn of(marks: &BTreeMap<i32, i64>, logged_past_commit: i64) -> Self {
        let cut = |f: fn(i32, i64) -> i64| marks.iter().map(|(&p, &hw)| (p, f(p, hw))).collect();
        Self {
            logger: cut(|p, hw| if p == 0 { hw / 4 } else { hw * 3 / 5 }),
            logged_past_commit,
            stats: cut(|_, hw| hw * 2 / 5),
            leaderboard: cut(|_, hw| hw / 2),
        }
    }
}

/// The old pipeline, played: each consumer applies the records below its cut, in
/// offset order, then commits its cut; it stops cleanly.
async fn play_old_pipeline(env: &TestEnv, records: &[(i32, i64, Event)], cuts: &Cuts) {
    let prefix = &env.config.redis.key_prefix;
    let mut redis = env.redis().await;
    let below = |cut: &BTreeMap<i32, i64>| {
        records
            .iter()
            .filter(|(p, o, _)| *o < cut[p])
            .map(|(_, _, e)| e)
            .collect::<Vec<_>>()
    };
    // The raw event logger: one row per event, UTC clock times in TIMESTAMP columns;
    // after an unclean stop, a few rows past what it committed.
    let logged: BTreeMap<i32, i64> = cuts
        .logger
        .iter()
        .map(|(&p, &cut)| (p, cut + cuts.logged_past_commit))
        .collect();
    for e in below(&logged) {
        sqlx::query(
            "INSERT INTO events (event_id, event_type, player_id, game_id, event_timestamp, ingested_at, data)
             VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
        )
        .bind(e.event_id)
        .bind(&e.event_type)
        .bind(&e.player_id)
        .bind(&e.game_id)
        .bind(e.timestamp.naive_utc())
        .bind(e.ingested_at.naive_utc())
        .bind(&e.data)
        .execute(&env.pg)
        .await
        .expect("old logger insert");
    }
    // The statistics aggregator: HINCRBY per event (right), Postgres overwritten by
    // each buffer's partial counts (wrong).
    let mut last_event = BTreeMap::new();
    for buffer in below(&cuts.stats).chunks(50) {
        let mut partial: BTreeMap<&str, BTreeMap<&str, i64>> = BTreeMap::new();
        for e in buffer {
            let key = format!("{prefix}player_stats:{}", e.player_id);
            let _: () = redis::pipe()
                .hincr(&key, "total_events", 1)
                .hincr(&key, format!("event_{}", e.event_type), 1)
                .query_async(&mut redis)
                .await
                .expect("old HINCRBY");
            let last = last_event.entry(e.player_id.clone()).or_insert(e.timestamp);
            *last = (*last).max(e.timestamp);
            *partial
                .entry(e.player_id.as_str())
                .or_default()
                .entry(e.event_type.as_str())
                .or_default() += 1;
        }
        for (player, breakdown) in partial {
            sqlx::query(
                "INSERT INTO player_statistics (player_id, total_events, event_breakdown)
                 VALUES ($1, $2, $3::jsonb)
                 ON CONFLICT (player_id) DO UPDATE SET total_events = EXCLUDED.total_events,
                     event_breakdown = EXCLUDED.event_breakdown, updated_at = CURRENT_TIMESTAMP",
            )
            .bind(player)
            .bind(breakdown.values().sum::<i64>() as i32)
            .bind(serde_json::to_string(&breakdown).expect("json"))
            .execute(&env.pg)
            .await
            .expect("old partial counts");
        }
    }
    for (player, t) in last_event {
        // Python's isoformat() of a naive UTC time.
        let _: () = redis::cmd("HSET")
            .arg(format!("{prefix}player_stats:{player}"))
            .arg("last_event")
            .arg(t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.f").to_string())
            .query_async(&mut redis)
            .await
            .expect("old last_event");
    }
    // The leaderboard manager: ZINCRBY into all three boards (days and weeks never
    // rolled over), then the all-time top 100 per game into `leaderboards`.
    let mut alltime: BTreeMap<(String, String), i64> = BTreeMap::new();
    for e in below(&cuts.leaderboard) {
        let Score::Integer(points) = e.score else {
            continue;
        };
        if e.event_type != "player_score" {
            continue;
        }
        for period in ["alltime", "daily", "weekly"] {
            let _: f64 = redis::cmd("ZINCRBY")
                .arg(format!("{prefix}leaderboard:{}:{period}", e.game_id))
                .arg(points)
                .arg(&e.player_id)
                .query_async(&mut redis)
                .await
                .expect("old ZINCRBY");
        }
        *alltime
            .entry((e.game_id.clone(), e.player_id.clone()))
            .or_default() += points;
    }
    let mut ranked: Vec<(&(String, String), &i64)> = alltime.iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(a.1).then(b.0.1.cmp(&a.0.1)));
    let mut ranks: BTreeMap<&str, i32> = BTreeMap::new();
    for ((game, player), score) in ranked {
        let rank = ranks.entry(game.as_str()).or_default();
        *rank += 1;
        if *rank <= 100 {
            sqlx::query(
                "INSERT INTO leaderboards (game_id, player_id, rank, score, period)
                 VALUES ($1, $2, $3, $4, 'alltime')",
            )
            .bind(game)
            .bind(player)
            .bind(*rank)
            .bind(score)
            .execute(&env.pg)
            .await
            .expect("old leaderboards");
        }
    }
    // Each group commits what it applied (auto-commit after a clean stop).
    let client = kafka::connect(&env.config.kafka).await.expect("kafka");
    let topic = env.config.topics.player_events.clone();
    for (legacy, cut) in [
        ("event-logger-group", &cuts.logger),
        ("stats-aggregator-group", &cuts.stats),
        ("leaderboard-manager-group", &cuts.leaderboard),
    ] {
        let group = format!("{}{legacy}", env.config.group_offsets.group_prefix);
        client
            .group_client(group.clone())
            .commit_offsets(&BTreeMap::from([(topic.clone(), cut.clone())]))
            .await
            .unwrap_or_else(|e| panic!("commit {group}: {e}"));
    }
}

/// The old pipeline's stream: produced, read back with partitions and offsets, applied
/// in part by the played consumers (the logger `logged_past_commit` records past its
/// commit in each partition).
async fn old_pipeline(env: &TestEnv, logged_past_commit: i64) -> (Vec<Event>, Cuts) {
    let events: Vec<Event> = (0..OLD_EVENTS).map(old_event).collect();
    let records: Vec<RawRecord> = events.iter().map(RawRecord::of).collect();
    produce_raw(&env.config, &env.config.topics.player_events, &records).await;
    let mut stream = Vec::new();
    let mut marks = BTreeMap::new();
    for (p, offset, _, value) in consume_all(&env.config, &env.config.topics.player_events).await {
        let mut value = value.expect("value");
        let event = gamestream::event::parse_record(&mut value).expect("a valid event");
        stream.push((p, offset, event));
        marks.insert(p, offset + 1);
    }
    let cuts = Cuts::of(&marks, logged_past_commit);
    play_old_pipeline(env, &stream, &cuts).await;
    (events, cuts)
}

async fn run(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    let out = env
        .command(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run gamestream");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_pipeline_is_taken_over_without_counting_twice() {
    let env = TestEnv::legacy(&SETTINGS).await;
    // The logger stopped uncleanly: 3 rows past its commit in each partition.
    let (mut all, cuts) = old_pipeline(&env, 3).await;

    let (code, out, err) = run(&env, &["migrate"]).await;
    assert_eq!(code, 0, "migrate: {out}{err}");
    assert!(out.contains("adopted the old pipeline's tables"), "{out}");

    let (code, plan, err) = run(&env, &["cutover", "plan"]).await;
    assert_eq!(code, 0, "plan: {plan}{err}");
    for group in [
        "event-logger-group",
        "stats-aggregator-group",
        "leaderboard-manager-group",
    ] {
        assert!(plan.contains(group), "the plan names {group}: {plan}");
    }
    assert!(!plan.contains("BLOCKER"), "{plan}");
    assert!(
        plan.contains("UNCLEAN STOP: 3 record(s) past the commit already in `events`"),
        "the plan tells the unclean stop's window: {plan}"
    );
    let seeded: i64 = sqlx::query_scalar("SELECT count(*) FROM sink_offsets")
        .fetch_one(&env.pg)
        .await
        .expect("count");
    assert_eq!(seeded, 0, "plan changes nothing");

    let (code, out, err) = run(&env, &["cutover", "apply"]).await;
    assert_eq!(code, 0, "apply: {out}{err}");
    let logger: BTreeMap<i32, i64> = sqlx::query_as(
        "SELECT partition, next_offset FROM sink_offsets WHERE sink = 'event-logger'",
    )
    .fetch_all(&env.pg)
    .await
    .expect("offsets")
    .into_iter()
    .collect();
    assert_eq!(
        logger, cuts.logger,
        "the logger continues event-logger-group"
    );

    let shutdown = Shutdown::new();
    let running = daemon::start(env.config.clone(), false, shutdown.clone())
        .await
        .expect("daemon starts");
    // New events for half of the players only, and one newcomer.
    let mut new: Vec<Event> = (OLD_EVENTS..OLD_EVENTS + NEW_EVENTS)
        .map(|i| mixed_event(i, PLAYERS / 2, GAMES, Utc::now()))
        .collect();
    new[0].player_id = "newcomer".to_owned();
    let records: Vec<RawRecord> = new.iter().map(RawRecord::of).collect();
    produce_raw(&env.config, &env.config.topics.player_events, &records).await;
    let mut redis = env.redis().await;
    assert!(
        wait_all_caught_up(&env, &mut redis, CATCH_UP).await,
        "the sinks did not catch up"
    );
    shutdown.trigger();
    running.stop().await;

    let (code, out, err) = run(&env, &["cutover", "verify"]).await;
    assert_eq!(code, 0, "verify found differences: {out}{err}");
    assert!(out.contains("0 difference(s)"), "{out}");

    all.extend(new);
    let expected = Expected::of(&all);
    assert_stores_match(&env, &mut redis, &expected, PERIOD_TTL).await;
    let prefix = &env.config.redis.key_prefix;
    let untouched = scan_keys(&mut redis, &format!("{prefix}player_stats:player-3*")).await;
    assert!(
        untouched.iter().any(|k| k.ends_with("player-35")),
        "a player without new events keeps the hash the old pipeline wrote: {untouched:?}"
    );
}

/// A second `apply` changes nothing: the offsets, the imported rows and the markers
/// stay as the first one left them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_twice_changes_nothing_the_second_time() {
    let env = TestEnv::legacy(&SETTINGS).await;
    old_pipeline(&env, 0).await;
    assert_eq!(run(&env, &["migrate"]).await.0, 0);
    let (code, out, err) = run(&env, &["cutover", "apply"]).await;
    assert_eq!(code, 0, "first apply: {out}{err}");

    async fn snapshot(env: &TestEnv) -> (String, Vec<String>) {
        let rows: String = sqlx::query_scalar(
            "SELECT concat_ws(' | ',
                 (SELECT string_agg(concat(sink, partition, ':', next_offset), ',' ORDER BY sink, partition) FROM sink_offsets),
                 (SELECT string_agg(concat(player_id, '=', total_events, event_breakdown::text), ',' ORDER BY player_id) FROM player_statistics),
                 (SELECT string_agg(concat(game_id, period, period_key, player_id, '=', score), ',' ORDER BY 1) FROM leaderboard_scores),
                 (SELECT adopted_at::text FROM cutover_adoptions))",
        )
        .fetch_one(&env.pg)
        .await
        .expect("snapshot");
        let mut redis = env.redis().await;
        let prefix = &env.config.redis.key_prefix;
        let mut markers = Vec::new();
        for key in scan_keys(&mut redis, &format!("{prefix}gamestream:offsets:*")).await {
            let hash = hgetall(&mut redis, &key).await;
            markers.push(format!("{key} {hash:?}"));
        }
        markers.sort();
        (rows, markers)
    }
    let before = snapshot(&env).await;
    assert_eq!(before.1.len(), 2, "both Redis sinks marked: {:?}", before.1);
    // No daemon has applied the records past the old commits yet: verify sees it.
    let (code, out, err) = run(&env, &["cutover", "verify", "--show", "3"]).await;
    assert_eq!(code, 1, "verify exits 1 on differences: {out}{err}");
    assert!(
        out.contains("... and "),
        "at most 3 differences listed: {out}"
    );
    let (code, out, err) = run(&env, &["cutover", "apply"]).await;
    assert_eq!(code, 0, "second apply: {out}{err}");
    assert!(out.contains("already adopted: nothing changed"), "{out}");
    assert_eq!(
        snapshot(&env).await,
        before,
        "the second apply changed something"
    );
}

/// `migrate` converts the old tables in place: every row kept (NULLs the new NOT NULL
/// columns cannot hold replaced by defaults), clock times read as UTC, migrations
/// recorded; a second `migrate` is a no-op.
#[tokio::test]
async fn migrate_adopts_the_old_database_without_losing_a_row() {
    let env = TestEnv::legacy(&[]).await;
    sqlx::raw_sql(
        "INSERT INTO events (event_id, event_type, player_id, game_id, event_timestamp, ingested_at, data, created_at)
         VALUES ('00000000-0000-4000-8000-000000000001', 'player_score', 'p-1', 'g-1',
                 '2026-11-30 23:59:59.5', '2026-12-01 00:00:01', NULL, NULL),
                ('00000000-0000-4000-8000-000000000002', 'quest_completed', 'p-2', 'g-1',
                 '2026-11-30 10:00:00', '2026-11-30 10:00:01', '{\"q\": 1}', '2026-11-30 10:00:02');
         INSERT INTO player_statistics (player_id, total_events, event_breakdown, updated_at, created_at)
         VALUES ('p-1', NULL, NULL, NULL, NULL), ('p-2', 2147483647, '{\"quest_completed\": 2147483647}', DEFAULT, DEFAULT);
         INSERT INTO leaderboards (game_id, player_id, rank, score, period) VALUES ('g-1', 'p-1', 1, 10, 'alltime');
         INSERT INTO dlq_events (original_event, error_message, consumer_service) VALUES ('{\"x\": 1}', NULL, NULL);",
    )
    .execute(&env.pg)
    .await
    .expect("old rows");

    let (code, out, err) = run(&env, &["migrate"]).await;
    assert_eq!(code, 0, "migrate: {out}{err}");
    assert!(out.contains("(2 events rows, 4 other rows)"), "{out}");
    assert_eq!(
        gamestream::sinks::postgres::schema_status(&env.pg)
            .await
            .expect("status"),
        gamestream::sinks::postgres::SchemaStatus::UpToDate
    );
    let (code, out, _) = run(&env, &["migrate"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("is up to date"),
        "a second migrate is a no-op: {out}"
    );

    let first: (String, String, String) = sqlx::query_as(
        "SELECT to_char(event_timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'),
                data::text, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
         FROM events WHERE player_id = 'p-1'",
    )
    .fetch_one(&env.pg)
    .await
    .expect("event");
    assert_eq!(
        first,
        (
            "2026-11-30 23:59:59.500".to_owned(),
            "{}".to_owned(),
            "2026-12-01 00:00:01".to_owned()
        ),
        "clock times read as UTC; NULL data and created_at filled"
    );
    let stats: Vec<(String, i64)> =
        sqlx::query_as("SELECT player_id, total_events FROM player_statistics ORDER BY 1")
            .fetch_all(&env.pg)
            .await
            .expect("stats");
    assert_eq!(
        stats,
        [("p-1".to_owned(), 0), ("p-2".to_owned(), 2_147_483_647)]
    );
    sqlx::query(
        "UPDATE player_statistics SET total_events = total_events + 1 WHERE player_id = 'p-2'",
    )
    .execute(&env.pg)
    .await
    .expect("total_events is BIGINT now");
    let letter: (String, String, String) =
        sqlx::query_as("SELECT error_message, consumer_service, error_kind FROM dlq_events")
            .fetch_one(&env.pg)
            .await
            .expect("dead letter");
    assert_eq!(letter.1, "unknown");
    assert_eq!(letter.2, "unknown");
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename = 'events' ORDER BY 1",
    )
    .fetch_all(&env.pg)
    .await
    .expect("indexes");
    assert_eq!(
        indexes,
        [
            "events_pkey",
            "idx_events_event_timestamp",
            "idx_events_event_type",
            "idx_events_game_id",
            "idx_events_player_id"
        ],
        "the old indexes carry gamestream's names, none doubled"
    );
    let period_check_valid: bool = sqlx::query_scalar(
        "SELECT convalidated FROM pg_constraint WHERE conname = 'leaderboards_period_check'",
    )
    .fetch_one(&env.pg)
    .await
    .expect("constraint");
    assert!(period_check_valid, "every old row keeps the period check");
}

/// A Redis sink never deletes keys it did not write: on a Redis holding the old
/// pipeline's keys and no gamestream offsets it waits (the keys stay) until a rebuild
/// is asked for with `offsets rebuild`, which then replaces them with Postgres's copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_sink_leaves_keys_it_did_not_write() {
    let env = TestEnv::with_overrides(&SETTINGS).await;
    let prefix = env.config.redis.key_prefix.clone();
    let foreign = format!("{prefix}player_stats:from-the-old-pipeline");
    let mut redis = env.redis().await;
    let _: () = redis::cmd("HSET")
        .arg(&foreign)
        .arg("total_events")
        .arg(3)
        .query_async(&mut redis)
        .await
        .expect("hset");
    let events: Vec<Event> = (0..50).map(old_event).collect();
    let records: Vec<RawRecord> = events.iter().map(RawRecord::of).collect();
    produce_raw(&env.config, &env.config.topics.player_events, &records).await;

    // The stats sink's Redis twin finds a key it did not write and no gamestream
    // offsets: it leaves the key and waits, saying why (and the daemon with it).
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("daemon.log");
    let mut daemon = Daemon::start(
        env.child_env(),
        env.overrides.clone(),
        log.clone(),
        "cutover-foreign".to_owned(),
    );
    let said = crate::common::eventually(CATCH_UP, || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log)
                .is_ok_and(|text| text.contains("keys gamestream did not write are never deleted"))
        }
    })
    .await;
    assert!(
        said,
        "the sink said why it waits: {:?}",
        std::fs::read_to_string(&log)
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg(&foreign)
        .query_async(&mut redis)
        .await
        .expect("exists");
    assert!(exists, "the foreign key is still there");
    let stats_keys = scan_keys(&mut redis, &format!("{prefix}player_stats:*")).await;
    assert_eq!(
        stats_keys,
        std::slice::from_ref(&foreign),
        "the Redis stats sink wrote nothing"
    );
    daemon.kill().await;

    // Asked for (--force: the killed daemon's leases, if any, have not run out yet).
    let (code, out, err) = run(
        &env,
        &[
            "offsets",
            "rebuild",
            "--sink",
            "stats-aggregator-redis",
            "--force",
        ],
    )
    .await;
    assert_eq!(code, 0, "offsets rebuild: {out}{err}");
    let shutdown = Shutdown::new();
    let running = daemon::start(env.config.clone(), false, shutdown.clone())
        .await
        .expect("daemon starts again");
    assert!(
        wait_all_caught_up(&env, &mut redis, CATCH_UP).await,
        "the Redis sinks caught up after the rebuild"
    );
    shutdown.trigger();
    running.stop().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(&foreign)
        .query_async(&mut redis)
        .await
        .expect("exists");
    assert!(!exists, "the asked-for rebuild replaced the foreign key");
    assert_stores_match(&env, &mut redis, &Expected::of(&events), PERIOD_TTL).await;
}

/// Shadow mode consumes next to the live old pipeline into a database and Redis keys of
/// its own: the old keys and the old groups' offsets stay as they were, and the live
/// database is never adopted by a shadow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_consumes_beside_the_live_pipeline_and_touches_nothing_of_it() {
    let env = TestEnv::legacy(&SETTINGS).await;
    old_pipeline(&env, 0).await;
    let prefix = env.config.redis.key_prefix.clone();
    let shadow_prefix = format!("{prefix}shadow:");
    let shadow_settings = [
        "--set",
        "shadow.enabled=true",
        "--set",
        "group_offsets.mirror=false",
    ];
    let prefix_setting = format!("redis.key_prefix=\"{shadow_prefix}\"");

    // Pointed at the live database by mistake: refused, nothing adopted.
    let mut args: Vec<&str> = shadow_settings.to_vec();
    args.extend(["--set", &prefix_setting, "migrate"]);
    let (code, out, err) = run(&env, &args).await;
    assert_ne!(code, 0, "a shadow must not adopt the live database: {out}");
    assert!(err.contains("shadow.enabled"), "{err}");
    let history: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&env.pg)
        .await
        .expect("history");
    assert!(!history, "the live database was left as it was");

    // Its own database and key prefix.
    let mut redis = env.redis().await;
    let old_hashes = hashes(&mut redis, &format!("{prefix}player_stats:*")).await;
    let client = kafka::connect(&env.config.kafka).await.expect("kafka");
    let groups =
        gamestream::kafka::group_offsets::mirrored_groups(&env.config.group_offsets.group_prefix);
    let all_partitions: std::collections::BTreeSet<i32> = (0..16).collect();
    let mut old_offsets = Vec::new();
    for g in &groups {
        old_offsets.push(
            gamestream::kafka::group_offsets::fetch(
                &client.group_client(g.name.clone()),
                &env.config.topics.player_events,
                &all_partitions,
            )
            .await
            .expect("offsets"),
        );
    }
    let shadow_db = format!("{}_shadow", env.database);
    crate::common::create_database(&env.stack, &shadow_db).await;
    let mut overrides = env.overrides.clone();
    overrides.extend([
        ("shadow.enabled".to_owned(), "true".to_owned()),
        ("group_offsets.mirror".to_owned(), "false".to_owned()),
        (
            "redis.key_prefix".to_owned(),
            format!("\"{shadow_prefix}\""),
        ),
    ]);
    let shadow = gamestream::config::load(&gamestream::config::Sources {
        file: None,
        env: env.stack.env(&shadow_db),
        overrides,
    })
    .expect("the shadow's configuration is valid");
    let shadow_pg = gamestream::sinks::postgres::connect(&shadow.postgres)
        .await
        .expect("shadow database");
    let shutdown = Shutdown::new();
    let running = daemon::start(shadow.clone(), true, shutdown.clone())
        .await
        .expect("the shadow starts");
    let marks = crate::common::high_watermarks(&env.config, &env.config.topics.player_events).await;
    let caught_up = crate::common::eventually(CATCH_UP, || {
        let mut redis = redis.clone();
        let (pg, marks, shadow_prefix) = (&shadow_pg, marks.clone(), shadow_prefix.clone());
        let topic = env.config.topics.player_events.clone();
        async move {
            crate::common::analytics::stores_at_marks(
                pg,
                &mut redis,
                &shadow_prefix,
                &topic,
                &marks,
            )
            .await
        }
    })
    .await;
    shutdown.trigger();
    running.stop().await;
    assert!(caught_up, "the shadow consumed the whole stream");
    let shadow_events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&shadow_pg)
        .await
        .expect("count");
    assert_eq!(
        shadow_events, OLD_EVENTS as i64,
        "the shadow logged every event once"
    );
    let shadow_total: i64 =
        sqlx::query_scalar("SELECT sum(total_events)::int8 FROM player_statistics")
            .fetch_one(&shadow_pg)
            .await
            .expect("sum");
    assert_eq!(shadow_total, OLD_EVENTS as i64);
    shadow_pg.close().await;

    assert_eq!(
        hashes(&mut redis, &format!("{prefix}player_stats:*")).await,
        old_hashes,
        "the old pipeline's hashes are untouched"
    );
    for (g, before) in groups.iter().zip(&old_offsets) {
        let now = gamestream::kafka::group_offsets::fetch(
            &client.group_client(g.name.clone()),
            &env.config.topics.player_events,
            &all_partitions,
        )
        .await
        .expect("offsets");
        assert_eq!(&now, before, "{}: the shadow committed nothing", g.name);
    }
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{shadow_db}\" WITH (FORCE)"
    )))
    .execute(&env.pg)
    .await;
}

/// Every hash matching `pattern`, whole.
async fn hashes(
    redis: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for key in scan_keys(redis, pattern).await {
        let hash = hgetall(redis, &key).await;
        out.insert(key, hash);
    }
    out
}
