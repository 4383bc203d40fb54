//! The query API against a running daemon: its answers equal what the test sent (and
//! so what the stores hold), from Redis and, when Redis lacks a key, from Postgres;
//! 404 and 400 answers say what is wrong.

use std::time::Duration;

use crate::common::analytics::{
    Expected, day_key, last_event_text, midnight, mixed_event, monday, ranked, wait_all_caught_up,
    week_key,
};
use crate::common::{RawRecord, TestEnv, produce_raw};
use chrono::Utc;
use gamestream::daemon;
use gamestream::event::{Event, Score};
use gamestream::shutdown::Shutdown;
use serde_json::{Value, json};

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.expect("a JSON body");
    (status, body)
}

fn entries(board: &[(String, i64)], limit: usize) -> Value {
    Value::Array(
        board
            .iter()
            .take(limit)
            .enumerate()
            .map(|(i, (player, score))| json!({"rank": i + 1, "player_id": player, "score": score}))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_answers_match_the_stores() {
    let env = TestEnv::with_overrides(&[
        ("mode", "\"consume\""),
        ("consumer.fetch_max_bytes", "32768"),
        ("stats.linger", "\"50ms\""),
        ("leaderboard.linger", "\"50ms\""),
        ("leaderboard.query_default_limit", "3"),
        ("leaderboard.query_max_limit", "500"),
    ])
    .await;
    let now = Utc::now();
    let mut events: Vec<Event> = (0..3_000).map(|i| mixed_event(i, 60, 3, now)).collect();
    let odd_name = "player 1/é?";
    events.push(Event {
        event_id: uuid::Uuid::new_v4(),
        event_type: "player_score".to_owned(),
        player_id: odd_name.to_owned(),
        game_id: "game-0".to_owned(),
        timestamp: now,
        ingested_at: now,
        data: r#"{"score":100000}"#.to_owned(),
        score: Score::Integer(100_000),
    });
    let records: Vec<_> = events.iter().map(RawRecord::of).collect();
    produce_raw(&env.config, &env.config.topics.player_events, &records).await;
    let expected = Expected::of(&events);

    let shutdown = Shutdown::new();
    let running = daemon::start(env.config.clone(), false, shutdown.clone())
        .await
        .expect("daemon starts");
    let mut redis = env.redis().await;
    assert!(wait_all_caught_up(&env, &mut redis, Duration::from_secs(60)).await);
    let base = format!("http://{}/api/v1", running.http_addr);
    let client = reqwest::Client::new();

    // Statistics of every player, from Redis.
    for (player, breakdown) in &expected.breakdown {
        let url = format!("{base}/players/{}/stats", urlencode(player));
        let (status, body) = get(&client, &url).await;
        assert_eq!(status, 200, "{url}: {body}");
        assert_eq!(
            body,
            json!({
                "player_id": player,
                "total_events": expected.total(player),
                "event_breakdown": breakdown,
                "last_event": last_event_text(expected.last_event[player]),
                "source": "redis",
            }),
            "{url}"
        );
    }
    // Without its Redis hash, the same answer from Postgres.
    let player = "player-7";
    let _: () = redis::cmd("DEL")
        .arg(format!(
            "{}player_stats:{player}",
            env.config.redis.key_prefix
        ))
        .query_async(&mut redis)
        .await
        .expect("del");
    let (status, body) = get(&client, &format!("{base}/players/{player}/stats")).await;
    assert_eq!(
        (status, &body["source"]),
        (200, &json!("postgres")),
        "{body}"
    );
    assert_eq!(body["total_events"], expected.total(player));
    assert_eq!(body["event_breakdown"], json!(expected.breakdown[player]));
    let (status, body) = get(&client, &format!("{base}/players/nobody/stats")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["status"], "error");

    // Boards: all time (default limit), today, a day and a week by date, a day past the
    // TTL (Postgres only), and the odd player's name.
    let game = "game-0";
    let alltime = ranked(&expected.board(game, "alltime", "alltime"));
    let (status, body) = get(&client, &format!("{base}/leaderboards/{game}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"game_id": game, "period": "alltime", "date": null,
               "entries": entries(&alltime, 3), "source": "redis"})
    );
    assert_eq!(body["entries"][0]["player_id"], odd_name);
    let (_, body) = get(
        &client,
        &format!("{base}/leaderboards/{game}?period=alltime&limit=500"),
    )
    .await;
    assert_eq!(
        body["entries"],
        entries(&alltime, 500),
        "the whole board, ranked"
    );

    let yesterday = day_key(midnight(now) - chrono::Duration::milliseconds(1));
    let last_week = week_key(monday(now) - chrono::Duration::milliseconds(1));
    for (query, period, key) in [
        ("period=daily".to_owned(), "daily", day_key(now)),
        (
            format!("period=daily&date={yesterday}"),
            "daily",
            yesterday.clone(),
        ),
        (
            format!("period=weekly&date={last_week}"),
            "weekly",
            last_week.clone(),
        ),
        (
            format!("period=weekly&date={}", day_key(now)),
            "weekly",
            week_key(now),
        ),
    ] {
        let board = ranked(&expected.board(game, period, &key));
        assert!(!board.is_empty(), "test data has scores in {period} {key}");
        let url = format!("{base}/leaderboards/{game}?{query}&limit=500");
        let (status, body) = get(&client, &url).await;
        assert_eq!(status, 200, "{url}: {body}");
        assert_eq!(body["date"], key, "{url}");
        assert_eq!(body["entries"], entries(&board, 500), "{url}");
        assert_eq!(body["source"], "redis", "{url}");
    }
    let old_day = "2023-11-14";
    let board = ranked(&expected.board(game, "daily", old_day));
    assert!(!board.is_empty());
    let (status, body) = get(
        &client,
        &format!("{base}/leaderboards/{game}?period=daily&date={old_day}&limit=500"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["entries"].clone(), body["source"].clone()),
        (entries(&board, 500), json!("postgres"))
    );
    let (status, body) = get(
        &client,
        &format!("{base}/leaderboards/{game}?period=daily&date=2001-01-01"),
    )
    .await;
    assert_eq!(
        (status, body["entries"].clone()),
        (200, json!([])),
        "a known game, an empty day"
    );

    // Bad requests.
    for (query, says) in [
        ("period=monthly", "`period`"),
        ("period=daily&date=2026-13-01", "`date`"),
        ("period=weekly&date=2026-W60", "`date`"),
        ("date=2026-11-22", "no `date`"),
        ("limit=0", "`limit`"),
        ("limit=501", "`limit`"),
        ("limit=ten", "`limit`"),
    ] {
        let (status, body) = get(&client, &format!("{base}/leaderboards/{game}?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(says)),
            "{query}: {body}"
        );
    }
    let (status, body) = get(&client, &format!("{base}/leaderboards/no-such-game")).await;
    assert_eq!(status, 404, "{body}");

    // Both routes are in the served OpenAPI document, with their schemas.
    let (status, doc) = get(&client, &format!("{base}/openapi.json")).await;
    assert_eq!(status, 200);
    for path in [
        "/api/v1/players/{player_id}/stats",
        "/api/v1/leaderboards/{game_id}",
    ] {
        assert!(
            doc["paths"][path]["get"].is_object(),
            "{path} not in openapi.json"
        );
    }
    assert!(doc["components"]["schemas"]["LeaderboardEntry"].is_object());

    shutdown.trigger();
    running.stop().await;
}

/// Percent-encodes a path segment.
fn urlencode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
