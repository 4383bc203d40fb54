//! The Redis sink scripts on a real Redis: offsets compare-and-set (apply once, a
//! repeat is a no-op, a stale writer is fenced, lost data is noticed), type checks
//! before any write, the rollover of the current-period boards, and the refusal of a
//! leaderboard score past ±(2^53 - 1) before any write.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::analytics::{hgetall, zset};
use crate::common::{Stack, unique_id};
use chrono::{DateTime, Utc};
use gamestream::aggregate::{Period, PeriodKey, ScoreDelta, StatsDelta};
use gamestream::event::{Event, Score};
use gamestream::sinks::redis::{RedisKeys, leaderboard, stats};
use gamestream::sinks::{OffsetCommit, SinkError};

async fn redis() -> redis::aio::MultiplexedConnection {
    let stack = Stack::from_env();
    redis::Client::open(format!(
        "redis://{}:{}/",
        stack.redis_host, stack.redis_port
    ))
    .expect("url")
    .get_multiplexed_async_connection()
    .await
    .expect("the local stack's redis answers (deploy/local/stack.sh up)")
}

fn event(player: &str, event_type: &str, t: DateTime<Utc>, score: Score) -> Event {
    Event {
        event_id: uuid::Uuid::new_v4(),
        event_type: event_type.to_owned(),
        player_id: player.to_owned(),
        game_id: "g".to_owned(),
        timestamp: t,
        ingested_at: t,
        data: "{}".to_owned(),
        score,
    }
}

fn commit(partition: i32, expected: Option<i64>, next: i64) -> OffsetCommit {
    OffsetCommit {
        partition,
        expected,
        next,
        epoch: None,
    }
}

/// Removes a test's keys from the shared Redis.
async fn remove_keys(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    for key in crate::common::scan_keys(conn, &format!("{prefix}*")).await {
        let _: i64 = redis::cmd("UNLINK")
            .arg(key)
            .query_async(conn)
            .await
            .expect("unlink");
    }
}

async fn mark_initialised(conn: &mut redis::aio::MultiplexedConnection, offsets: &str) {
    let _: () = redis::cmd("HSET")
        .arg(offsets)
        .arg("initialised_at")
        .arg("test")
        .query_async(conn)
        .await
        .expect("hset");
}

#[tokio::test]
async fn stats_script_applies_once_and_fences() {
    let mut conn = redis().await;
    let prefix = format!("s{}:", unique_id());
    let keys = RedisKeys::new(prefix.clone());
    let offsets = keys.offsets("stats-aggregator-redis", "t");
    let script = stats::script();
    let t = Utc::now();
    let events = [
        event("a", "player_score", t, Score::Integer(1)),
        event("a", "quest_completed", t, Score::Absent),
        event(
            "b",
            "quest_completed",
            t - chrono::Duration::seconds(5),
            Score::Absent,
        ),
    ];
    let delta = StatsDelta::of(&events);
    let first = stats::script_args(&keys, &offsets, &delta, &[commit(0, None, 3)]);

    let missing = stats::write(&mut conn, &script, "s", &first).await;
    assert!(
        matches!(missing, Err(SinkError::Fatal(ref e)) if e.to_string().contains("lost its data")),
        "{missing:?}"
    );
    assert!(
        hgetall(&mut conn, &keys.player_stats("a")).await.is_empty(),
        "nothing applied without the marker"
    );

    mark_initialised(&mut conn, &offsets).await;
    stats::write(&mut conn, &script, "s", &first)
        .await
        .expect("applied");
    stats::write(&mut conn, &script, "s", &first)
        .await
        .expect("a repeat is a no-op");
    let a = hgetall(&mut conn, &keys.player_stats("a")).await;
    assert_eq!(a["total_events"], "2");
    assert_eq!(a["event_player_score"], "1");
    assert_eq!(a["event_quest_completed"], "1");
    assert_eq!(hgetall(&mut conn, &offsets).await["0"], "3");

    // A writer that still thinks partition 0 is at 1: fenced, nothing applied.
    let stale = stats::script_args(&keys, &offsets, &delta, &[commit(0, Some(1), 4)]);
    let fenced = stats::write(&mut conn, &script, "s", &stale).await;
    assert!(
        matches!(fenced, Err(SinkError::Fatal(ref e)) if e.to_string().contains("stored=3")),
        "{fenced:?}"
    );
    assert_eq!(
        hgetall(&mut conn, &keys.player_stats("a")).await["total_events"],
        "2"
    );

    // The next batch: last_event only moves forward.
    let older = [event(
        "a",
        "boss_defeated",
        t - chrono::Duration::hours(1),
        Score::Absent,
    )];
    let next = stats::script_args(
        &keys,
        &offsets,
        &StatsDelta::of(&older),
        &[commit(0, Some(3), 4)],
    );
    stats::write(&mut conn, &script, "s", &next)
        .await
        .expect("applied");
    let a = hgetall(&mut conn, &keys.player_stats("a")).await;
    assert_eq!(a["total_events"], "3");
    assert_eq!(
        a["last_event"],
        crate::common::analytics::last_event_text(t)
    );

    // A key of the wrong type is refused before anything is written (and is fatal:
    // the store is broken, not the record).
    let _: () = redis::cmd("SET")
        .arg(keys.player_stats("z"))
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .expect("set");
    let bad = [
        event("a", "x", t, Score::Absent),
        event("z", "x", t, Score::Absent),
    ];
    let refused = stats::script_args(
        &keys,
        &offsets,
        &StatsDelta::of(&bad),
        &[commit(0, Some(4), 6)],
    );
    let result = stats::write(&mut conn, &script, "s", &refused).await;
    assert!(
        matches!(result, Err(SinkError::Fatal(ref e)) if e.to_string().contains("WRONGTYPE")),
        "{result:?}"
    );
    assert_eq!(
        hgetall(&mut conn, &keys.player_stats("a")).await["total_events"],
        "3",
        "no partial write"
    );
    assert_eq!(hgetall(&mut conn, &offsets).await["0"], "4");
    remove_keys(&mut conn, &prefix).await;
}

/// A Redis connection, keys under a fresh prefix, the leaderboard sink's offsets hash
/// (marked initialised), its script and the default period TTL.
struct LeaderboardFixture {
    conn: redis::aio::MultiplexedConnection,
    prefix: String,
    keys: RedisKeys,
    offsets: String,
    script: redis::Script,
    ttl: Duration,
}

impl LeaderboardFixture {
    async fn new(tag: &str) -> Self {
        let mut conn = redis().await;
        let prefix = format!("{tag}{}:", unique_id());
        let keys = RedisKeys::new(prefix.clone());
        let offsets = keys.offsets("leaderboard-manager-redis", "t");
        mark_initialised(&mut conn, &offsets).await;
        Self {
            conn,
            prefix,
            keys,
            offsets,
            script: leaderboard::script(),
            ttl: Duration::from_secs(35 * 86_400),
        }
    }
}

#[tokio::test]
async fn leaderboard_script_rolls_the_current_boards_over() {
    let LeaderboardFixture {
        mut conn,
        prefix,
        keys,
        offsets,
        script,
        ttl,
    } = LeaderboardFixture::new("l").await;
    let now = Utc::now();
    let today = PeriodKey::of(Period::Daily, now);
    let undated = keys.leaderboard("g", Period::Daily);
    let dated = keys.leaderboard_of("g", today);

    // Yesterday's board is still in the undated key (as if it had not expired yet), and
    // today's dated key already has an early event.
    let _: () = redis::pipe()
        .zadd(&undated, "yesterday-player", 99)
        .ignore()
        .set(keys.leaderboard_period("g", Period::Daily), "1999-01-01")
        .ignore()
        .zadd(&dated, "early", 3)
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("setup");

    let events = [
        event("p", "player_score", now, Score::Integer(10)),
        event("p", "player_score", now, Score::Integer(5)),
        event(
            "q",
            "player_score",
            now - chrono::Duration::days(3),
            Score::Integer(7),
        ),
        event("r", "player_score", now, Score::NotANumber("a string")),
    ];
    let delta = ScoreDelta::of(&events).expect("no overflow");
    let plan = leaderboard::plan(&keys, &delta, now, ttl);
    let args = plan.script_args(&offsets, &[commit(0, None, 4)]);
    leaderboard::write(&mut conn, &script, "l", &args)
        .await
        .expect("applied");
    leaderboard::write(&mut conn, &script, "l", &args)
        .await
        .expect("repeat is a no-op");

    let want = |pairs: &[(&str, i64)]| -> BTreeMap<String, i64> {
        pairs.iter().map(|(p, s)| ((*p).to_owned(), *s)).collect()
    };
    assert_eq!(
        zset(&mut conn, &undated).await,
        want(&[("early", 3), ("p", 15)]),
        "rolled over, then added"
    );
    assert_eq!(
        zset(&mut conn, &dated).await,
        want(&[("early", 3), ("p", 15)])
    );
    assert_eq!(
        zset(&mut conn, &keys.leaderboard("g", Period::AllTime)).await,
        want(&[("p", 15), ("q", 7)])
    );
    let three_days_ago = keys.leaderboard_of(
        "g",
        PeriodKey::of(Period::Daily, now - chrono::Duration::days(3)),
    );
    assert_eq!(
        zset(&mut conn, &three_days_ago).await,
        want(&[("q", 7)]),
        "a late event lands in its own day"
    );
    let marker: String = redis::cmd("GET")
        .arg(keys.leaderboard_period("g", Period::Daily))
        .query_async(&mut conn)
        .await
        .expect("marker");
    assert_eq!(marker, today.to_string());
    let end = today.end().expect("a day ends").timestamp();
    let expires: i64 = redis::cmd("EXPIRETIME")
        .arg(&undated)
        .query_async(&mut conn)
        .await
        .expect("expiretime");
    assert_eq!(expires, end, "the current board expires when the day ends");
    let expires: i64 = redis::cmd("EXPIRETIME")
        .arg(&dated)
        .query_async(&mut conn)
        .await
        .expect("expiretime");
    assert_eq!(
        expires,
        end + ttl.as_secs() as i64,
        "the dated board lives period_ttl longer"
    );
    let alltime_ttl: i64 = redis::cmd("TTL")
        .arg(keys.leaderboard("g", Period::AllTime))
        .query_async(&mut conn)
        .await
        .expect("ttl");
    assert_eq!(alltime_ttl, -1, "all time never expires");
    remove_keys(&mut conn, &prefix).await;
}

/// Raw ZSCORE, as Redis formats it (an integer score prints as one).
async fn zscore(conn: &mut redis::aio::MultiplexedConnection, key: &str, member: &str) -> String {
    redis::cmd("ZSCORE")
        .arg(key)
        .arg(member)
        .query_async(conn)
        .await
        .expect("zscore")
}

#[tokio::test]
async fn leaderboard_script_refuses_a_score_past_the_exact_bound_before_writing() {
    let LeaderboardFixture {
        mut conn,
        prefix,
        keys,
        offsets,
        script,
        ttl,
    } = LeaderboardFixture::new("b").await;
    let now = Utc::now();
    let alltime = keys.leaderboard("g", Period::AllTime);
    let max = gamestream::event::MAX_EXACT_SCORE;
    let writer = conn.clone();
    let write = |events: Vec<Event>, expected: Option<i64>, next: i64| {
        let keys = keys.clone();
        let offsets = offsets.clone();
        let script = script.clone();
        let mut conn = writer.clone();
        async move {
            let delta = ScoreDelta::of(&events).expect("within the bound alone");
            let plan = leaderboard::plan(&keys, &delta, now, ttl);
            let args = plan.script_args(&offsets, &[commit(0, expected, next)]);
            leaderboard::write(&mut conn, &script, "l", &args).await
        }
    };
    let scored =
        |player: &str, points: i64| event(player, "player_score", now, Score::Integer(points));

    write(vec![scored("p", max - 1), scored("q", 4)], None, 2)
        .await
        .expect("below the bound");
    // Past it: refused as permanent (the record is dead-lettered), and nothing written,
    // not even q's increment before p's in the same batch, nor the offsets.
    let refused = write(vec![scored("q", 1), scored("p", 2)], Some(2), 4).await;
    assert!(
        matches!(&refused, Err(SinkError::Permanent(e)) if e.to_string().contains("9007199254740991")),
        "{refused:?}"
    );
    assert_eq!(zscore(&mut conn, &alltime, "p").await, "9007199254740990");
    assert_eq!(zscore(&mut conn, &alltime, "q").await, "4");
    assert_eq!(hgetall(&mut conn, &offsets).await["0"], "2");
    // A batch that crosses the bound on the way and comes back (+2, -3) is refused too:
    // its records one at a time would be.
    let crossing = write(vec![scored("p", 2), scored("p", -3)], Some(2), 4).await;
    assert!(
        matches!(crossing, Err(SinkError::Permanent(_))),
        "{crossing:?}"
    );
    assert_eq!(zscore(&mut conn, &alltime, "p").await, "9007199254740990");
    // Exactly at the bound, either sign: stored exactly.
    write(vec![scored("p", 1), scored("n", -max)], Some(2), 4)
        .await
        .expect("at the bound");
    assert_eq!(zscore(&mut conn, &alltime, "p").await, "9007199254740991");
    assert_eq!(zscore(&mut conn, &alltime, "n").await, "-9007199254740991");
    let today = keys.leaderboard("g", Period::Daily);
    assert_eq!(zscore(&mut conn, &today, "p").await, "9007199254740991");
    // And the lower bound refuses too.
    let below = write(vec![scored("n", -1)], Some(4), 5).await;
    assert!(matches!(below, Err(SinkError::Permanent(_))), "{below:?}");
    assert_eq!(hgetall(&mut conn, &offsets).await["0"], "4");
    remove_keys(&mut conn, &prefix).await;
}
