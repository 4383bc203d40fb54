//! The bad-input matrix: malformed requests to a running daemon, each with the exact
//! status and error it must get; then the same bodies, made into records and produced
//! straight to the topic, must each be dead-lettered with the same reason, without
//! stalling the partition, and the valid ones (ids with SQL or Redis syntax) must be
//! stored verbatim.

use std::time::Duration;

use crate::common::ingest::TestServer;
use crate::common::{
    RawRecord, TestEnv, committed_offsets, eventually, high_watermarks, produce_raw,
};

const ONE: &str = "/api/v1/events";
const BATCH: &str = "/api/v1/events/batch";
const JSON: Option<&str> = Some("application/json");
/// simd-json's rule for numbers, and where the number of a `with("data", …)` body starts.
const BIG_NUMBER_AT_122: &str = "malformed JSON: invalid number, or a number beyond 64 bits \
     (integers up to 18446744073709551615, fractions up to about 1.8e308) at byte 122 ('1')";

/// A valid submission with `field` set to the raw JSON `value` (or removed when `None`).
fn with(field: &str, value: Option<&str>) -> Vec<u8> {
    let mut fields = vec![
        ("event_type", r#""player_score""#.to_owned()),
        ("player_id", r#""player-0""#.to_owned()),
        ("game_id", r#""game-1""#.to_owned()),
        ("timestamp", r#""2024-01-15T10:30:00Z""#.to_owned()),
        ("data", r#"{"score":7}"#.to_owned()),
    ];
    fields.retain(|(k, _)| *k != field);
    if let Some(v) = value {
        fields.push((field_name(field), v.to_owned()));
    }
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!(r#""{k}":{v}"#))
        .collect();
    format!("{{{}}}", body.join(",")).into_bytes()
}

/// `with` takes a `&str` field; the table only uses the contract's names.
fn field_name(field: &str) -> &'static str {
    match field {
        "event_type" => "event_type",
        "player_id" => "player_id",
        "game_id" => "game_id",
        "timestamp" => "timestamp",
        "data" => "data",
        other => panic!("unknown field {other}"),
    }
}

fn good() -> Vec<u8> {
    with("data", Some(r#"{"score":7}"#))
}

/// A valid submission of game `fraction` whose `data` is `{"score": <score>}`.
fn fraction(score: &str) -> Vec<u8> {
    String::from_utf8(with("data", Some(&format!(r#"{{"score":{score}}}"#))))
        .unwrap_or_default()
        .replace(r#""game-1""#, r#""fraction""#)
        .into_bytes()
}

/// The scores' rule at the bound, as a refusal says it.
fn score_past_bound(got: &str) -> String {
    format!(
        "`data.score` of a player_score event must be between -9007199254740991 and \
         9007199254740991 (2^53 - 1) once truncated to an integer, got {got}"
    )
}

fn nested(depth: usize) -> Vec<u8> {
    with(
        "data",
        Some(&format!(
            r#"{{"n":{}1{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )),
    )
}

/// One row of the matrix.
struct Case {
    name: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// The `error` of the answer; for a 200, `None`.
    error: Option<String>,
    /// For a valid `player_score` event whose score cannot count: the leaderboard
    /// manager's dead-letter kind (`missing_score`, `score_not_a_number`).
    leaderboard_letter: Option<&'static str>,
}

fn case(name: &'static str, body: Vec<u8>, status: u16, error: Option<&str>) -> Case {
    Case {
        name,
        path: ONE,
        content_type: JSON,
        body,
        status,
        error: error.map(str::to_owned),
        leaderboard_letter: None,
    }
}

/// A valid `player_score` event whose score the leaderboard manager dead-letters as `kind`.
fn uncounted(name: &'static str, body: Vec<u8>, kind: &'static str) -> Case {
    Case {
        leaderboard_letter: Some(kind),
        ..case(name, body, 200, None)
    }
}

fn matrix() -> Vec<Case> {
    let long_id = format!(r#""{}""#, "x".repeat(10_000));
    let emoji_id = format!(r#""{}""#, "😀".repeat(100));
    let mut latin1 = good();
    let at = latin1.len() - 2;
    latin1.splice(at..at, [b',', b'"', b'k', b'"', b':', b'"', 0xe9, b'"']);
    let mut bom = vec![0xef, 0xbb, 0xbf];
    bom.extend(good());
    let mut utf16 = vec![0xff, 0xfe];
    for b in good() {
        utf16.extend([b, 0]);
    }
    let mut huge = good();
    let at = huge.len() - 2;
    huge.splice(
        at..at,
        format!(r#","blob":"{}""#, "x".repeat(1024 * 1024)).into_bytes(),
    );
    let oversized_field = with(
        "data",
        Some(&format!(r#"{{"blob":"{}"}}"#, "x".repeat(512 * 1024))),
    );
    let raw_tab = with("player_id", Some("\"a\tb\""));
    let mut cases = vec![
        case(
            "empty body",
            vec![],
            400,
            Some("malformed JSON: the body is empty at byte 0"),
        ),
        case(
            "whitespace only",
            b"  \n ".to_vec(),
            400,
            Some("malformed JSON: the body is empty at byte 0"),
        ),
        case(
            "invalid UTF-8 (Latin-1 é)",
            latin1,
            400,
            Some("the body is not valid UTF-8 (invalid byte at offset 129)"),
        ),
        case(
            "UTF-8 byte order mark",
            bom,
            400,
            Some("the body starts with a byte order mark (EF BB BF): send UTF-8 JSON without it"),
        ),
        case(
            "UTF-16 with BOM",
            utf16,
            400,
            Some("the body is not valid UTF-8 (invalid byte at offset 0)"),
        ),
        case(
            "nesting 2000 deep",
            nested(2000),
            400,
            Some("malformed JSON: values are nested deeper than 1024 levels"),
        ),
        uncounted("nesting 1000 deep is fine", nested(1000), "missing_score"),
        case(
            "number beyond f64",
            with("data", Some(r#"{"score":1e400}"#)),
            400,
            Some(BIG_NUMBER_AT_122),
        ),
        case("fractional score, truncated", fraction("12.5"), 200, None),
        case("negative fractional score", fraction("-12.5"), 200, None),
        case("score in exponent form", fraction("1e3"), 200, None),
        uncounted(
            "score a string",
            with("data", Some(r#"{"score":"7"}"#)),
            "score_not_a_number",
        ),
        uncounted(
            "score a boolean",
            with("data", Some(r#"{"score":true}"#)),
            "score_not_a_number",
        ),
        uncounted(
            "score null",
            with("data", Some(r#"{"score":null}"#)),
            "score_not_a_number",
        ),
        case(
            "score past 2^53 - 1 once truncated",
            with("data", Some(r#"{"score":9007199254740992.5}"#)),
            400,
            Some(&score_past_bound("9007199254740992")),
        ),
        case(
            "score beyond 64 bits as a fraction",
            with("data", Some(r#"{"score":-1.5e300}"#)),
            400,
            Some(&score_past_bound("-1.5e300")),
        ),
        case(
            "integer beyond 64 bits",
            with("data", Some(r#"{"score":123456789012345678901234567890}"#)),
            400,
            Some(&BIG_NUMBER_AT_122.replace("122", "142")),
        ),
        case(
            "duplicate key at top level",
            [&good()[..good().len() - 1], br#","player_id":"player-1"}"#].concat(),
            400,
            Some("duplicate key \"player_id\" in a JSON object: each key may appear once"),
        ),
        case(
            "duplicate key inside data",
            with("data", Some(r#"{"score":1,"score":2}"#)),
            400,
            Some("duplicate key \"score\" in a JSON object: each key may appear once"),
        ),
        case(
            "null player_id",
            with("player_id", Some("null")),
            400,
            Some("`player_id` is required"),
        ),
        uncounted(
            "null data is the default",
            with("data", Some("null")),
            "missing_score",
        ),
        case(
            "missing event_type",
            with("event_type", None),
            400,
            Some("`event_type` is required"),
        ),
        case(
            "missing timestamp",
            with("timestamp", None),
            400,
            Some("`timestamp` is required"),
        ),
        case(
            "escaped control character in id",
            with("player_id", Some(r#""a\u0001b""#)),
            400,
            Some("`player_id` must not contain control characters"),
        ),
        case(
            "raw tab in id",
            raw_tab,
            400,
            Some(
                "malformed JSON: control character (\\u0000-\\u001F) found while parsing a string at byte 115",
            ),
        ),
        case(
            "NUL in data",
            with("data", Some(r#"{"note":"a\u0000b"}"#)),
            400,
            Some("`data` must not contain NUL characters (\\u0000): PostgreSQL cannot store them"),
        ),
        case(
            "id of 101 characters",
            with("player_id", Some(&format!(r#""{}""#, "p".repeat(101)))),
            400,
            Some("`player_id` must be at most 100 characters, got 101"),
        ),
        case(
            "very long id (10,000)",
            with("game_id", Some(&long_id)),
            400,
            Some("`game_id` must be at most 100 characters, got 10000"),
        ),
        case(
            "100 four-byte characters fit",
            with("player_id", Some(&emoji_id)),
            200,
            None,
        ),
        case(
            "body over the limit",
            huge,
            413,
            Some("the request body is larger than the limit of 1048576 bytes"),
        ),
        uncounted(
            "large field within the limit",
            oversized_field,
            "missing_score",
        ),
        case(
            "player_id a number",
            with("player_id", Some("42")),
            400,
            Some("`player_id` must be a string, got a number"),
        ),
        case(
            "timestamp a number",
            with("timestamp", Some("1705314600")),
            400,
            Some("`timestamp` must be a string, got a number"),
        ),
        case(
            "timestamp not RFC 3339",
            with("timestamp", Some(r#""2024-01-15 10:30""#)),
            400,
            Some(
                "`timestamp` must be an RFC 3339 time such as 2024-01-15T10:30:00Z, got \"2024-01-15 10:30\"",
            ),
        ),
        case(
            "timestamp past year 9999 in UTC",
            with("timestamp", Some(r#""9999-12-31T23:59:59-01:00""#)),
            400,
            Some(
                "`timestamp` must fall within years 0001 to 9999 once converted to UTC, got \"9999-12-31T23:59:59-01:00\"",
            ),
        ),
        case(
            "data an array",
            with("data", Some("[1,2]")),
            400,
            Some("`data` must be a JSON object, got an array"),
        ),
        case(
            "data a string",
            with("data", Some(r#""{}""#)),
            400,
            Some("`data` must be a JSON object, got a string"),
        ),
        case(
            "event an array",
            b"[1]".to_vec(),
            400,
            Some("the event must be a JSON object, got an array"),
        ),
        case(
            "trailing data",
            [&good()[..], b" x"].concat(),
            400,
            Some("malformed JSON: trailing characters at byte 126"),
        ),
        case(
            "invalid escape",
            with("player_id", Some(r#""a\qb""#)),
            400,
            Some("malformed JSON: invalid escape \\q in a string"),
        ),
        case(
            "lone surrogate",
            with("player_id", Some(r#""\ud800""#)),
            400,
            Some(
                "malformed JSON: invalid \\u escape in a string (bad hex digits or a lone surrogate)",
            ),
        ),
        case(
            "SQL in ids is data",
            with("player_id", Some(r#""'); DROP TABLE events; --""#)),
            200,
            None,
        ),
        case(
            "Redis syntax in ids is data",
            with("game_id", Some(r#""* EVAL \"return 1\" 0 {x}:*""#)),
            200,
            None,
        ),
        case(
            "Redis protocol in an id",
            with("player_id", Some(r#""*1\r\n$8\r\nFLUSHALL\r\n""#)),
            400,
            Some("`player_id` must not contain control characters"),
        ),
        Case {
            content_type: Some("text/plain"),
            ..case(
                "text/plain",
                good(),
                415,
                Some("Content-Type must be application/json"),
            )
        },
        Case {
            content_type: None,
            ..case(
                "no Content-Type",
                good(),
                415,
                Some("Content-Type must be application/json"),
            )
        },
        Case {
            path: BATCH,
            ..case(
                "batch: an object",
                good(),
                400,
                Some("the body must be a JSON array of events, got an object"),
            )
        },
        Case {
            path: BATCH,
            ..case(
                "batch: 1001 items",
                format!(
                    "[{}]",
                    vec![String::from_utf8(good()).unwrap_or_default(); 1001].join(",")
                )
                .into_bytes(),
                400,
                Some("a batch holds at most 1000 events, got 1001"),
            )
        },
        Case {
            path: BATCH,
            ..case(
                "batch: duplicate key in an item",
                format!(
                    "[{}]",
                    String::from_utf8(with("data", Some(r#"{"a":1,"a":1}"#))).unwrap_or_default()
                )
                .into_bytes(),
                400,
                Some("duplicate key \"a\" in a JSON object: each key may appear once"),
            )
        },
        Case {
            path: BATCH,
            ..case(
                "batch: empty body",
                vec![],
                400,
                Some("malformed JSON: the body is empty at byte 0"),
            )
        },
    ];
    for c in &mut cases {
        c.body.shrink_to_fit();
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_request_gets_its_exact_answer() {
    let env = TestEnv::with_overrides(&[("mode", "\"ingest\"")]).await;
    let server = TestServer::start(env.config.clone()).await;
    let cases = matrix();
    assert!(cases.len() >= 30, "the matrix has {} rows", cases.len());
    let mut wrong = Vec::new();
    for c in &cases {
        let mut request = server.http.post(server.url(c.path)).body(c.body.clone());
        if let Some(ct) = c.content_type {
            request = request.header("content-type", ct);
        }
        let answer = server.send(request).await;
        let error = (answer.status != 200).then(|| answer.error());
        if answer.status != c.status || error != c.error {
            wrong.push(format!(
                "{}: got {} {:?}, expected {} {:?}",
                c.name, answer.status, error, c.status, c.error
            ));
        }
    }
    server.stop().await;
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// A case's body as a record value: the server's two fields added in front.
fn as_record(body: &[u8]) -> Vec<u8> {
    let fields = format!(
        r#""event_id":"{}","ingested_at":"2024-01-15T10:30:01Z","#,
        uuid::Uuid::new_v4()
    );
    match body.iter().position(|b| *b == b'{') {
        Some(at) => [&body[..=at], fields.as_bytes(), &body[at + 1..]].concat(),
        None => body.to_vec(),
    }
}

/// A reason without its numbers: positions move by the fields `as_record` adds.
fn without_digits(reason: &str) -> String {
    reason.chars().filter(|c| !c.is_ascii_digit()).collect()
}

/// The cases a producer could write to the topic: a single event's body, refused for
/// what it holds (not for HTTP reasons: size limit, content type).
fn topic_cases() -> Vec<Case> {
    matrix()
        .into_iter()
        .filter(|c| c.path == ONE && c.content_type == JSON && c.status != 413)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_records_on_the_topic_are_dead_lettered_with_their_reason() {
    let env =
        TestEnv::with_overrides(&[("mode", "\"consume\""), ("logger.batch_size", "50")]).await;
    let topic = env.config.topics.player_events.clone();
    let cases = topic_cases();
    let mut records = Vec::new();
    for c in &cases {
        records.push(RawRecord {
            key: b"player-0".to_vec(),
            value: as_record(&c.body),
        });
    }
    let last = with("player_id", Some(r#""after-the-poison""#));
    records.push(RawRecord {
        key: b"player-0".to_vec(),
        value: as_record(&last),
    });
    let per_partition = produce_raw(&env.config, &topic, &records).await;
    assert_eq!(
        per_partition.iter().filter(|n| **n > 0).count(),
        1,
        "one key, one partition"
    );

    let shutdown = gamestream::shutdown::Shutdown::new();
    let running = gamestream::daemon::start(env.config.clone(), false, shutdown.clone())
        .await
        .expect("daemon starts");
    let marks = high_watermarks(&env.config, &topic).await;
    let mut redis = env.redis().await;
    let done = eventually(Duration::from_secs(90), || async {
        let committed = committed_offsets(&env.pg, "event-logger", &topic).await;
        marks
            .iter()
            .enumerate()
            .all(|(p, hw)| *hw == 0 || committed.iter().any(|(cp, o)| *cp == p as i32 && o == hw))
    })
    .await;
    let redis_done =
        crate::common::analytics::wait_all_caught_up(&env, &mut redis, Duration::from_secs(60))
            .await;
    shutdown.trigger();
    running.stop().await;
    assert!(done && redis_done, "the partition stalled");

    let letters: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT source_offset, error_kind, error_message, consumer_service FROM dlq_events
         ORDER BY source_offset",
    )
    .fetch_all(&env.pg)
    .await
    .expect("dead letters");
    let mut wrong = Vec::new();
    let refused: Vec<(usize, &Case)> = cases
        .iter()
        .enumerate()
        .filter(|(_, c)| c.status != 200)
        .collect();
    for (offset, c) in &refused {
        let found: Vec<_> = letters
            .iter()
            .filter(|(o, _, _, _)| *o == *offset as i64)
            .collect();
        let want = c.error.as_deref().map(without_digits);
        match found.as_slice() {
            [(_, _, message, _)] if Some(without_digits(message)) == want => {}
            other => wrong.push(format!(
                "{}: dead letters {other:?}, expected {want:?}",
                c.name
            )),
        }
    }
    // A valid `player_score` event without a numeric score is the leaderboard's dead
    // letter, of its kind, and only that; every other letter is a refused record's.
    for (offset, c) in cases.iter().enumerate().filter(|(_, c)| c.status == 200) {
        let found: Vec<(&str, &str)> = letters
            .iter()
            .filter(|l| l.0 == offset as i64)
            .map(|l| (l.3.as_str(), l.1.as_str()))
            .collect();
        let want: Vec<(&str, &str)> = c
            .leaderboard_letter
            .map(|kind| ("leaderboard-manager", kind))
            .into_iter()
            .collect();
        if found != want {
            wrong.push(format!(
                "{}: dead letters {found:?}, expected {want:?}",
                c.name
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        letters.len(),
        refused.len()
            + cases
                .iter()
                .filter(|c| c.leaderboard_letter.is_some())
                .count(),
        "one dead letter per refused record or uncountable score"
    );

    let rows: Vec<(String, String)> = sqlx::query_as("SELECT player_id, game_id FROM events")
        .fetch_all(&env.pg)
        .await
        .expect("events");
    let accepted = cases.iter().filter(|c| c.status == 200).count();
    assert_eq!(
        rows.len(),
        accepted + 1,
        "every valid record, and the last one, written"
    );
    assert!(rows.iter().any(|r| r.0 == "after-the-poison"));
    // Ids with SQL or Redis syntax are stored verbatim, in both stores, and harm nothing.
    let sql_id = "'); DROP TABLE events; --";
    let redis_id = r#"* EVAL "return 1" 0 {x}:*"#;
    assert!(rows.iter().any(|r| r.0 == sql_id), "{rows:?}");
    assert!(rows.iter().any(|r| r.1 == redis_id), "{rows:?}");
    let prefix = &env.config.redis.key_prefix;
    let stats =
        crate::common::analytics::hgetall(&mut redis, &format!("{prefix}player_stats:{sql_id}"))
            .await;
    assert_eq!(
        stats.get("total_events").map(String::as_str),
        Some("1"),
        "{stats:?}"
    );
    let board = crate::common::analytics::zset(
        &mut redis,
        &format!("{prefix}leaderboard:{redis_id}:alltime"),
    )
    .await;
    assert_eq!(board.get("player-0"), Some(&7), "{board:?}");
    // Fractional scores count as their truncation toward zero: 12 - 12 + 1000.
    let board = crate::common::analytics::zset(
        &mut redis,
        &format!("{prefix}leaderboard:fraction:alltime"),
    )
    .await;
    assert_eq!(board.get("player-0"), Some(&1000), "{board:?}");
    let stored: i64 = sqlx::query_scalar(
        "SELECT score FROM leaderboard_scores
         WHERE game_id = 'fraction' AND period = 'alltime' AND player_id = 'player-0'",
    )
    .fetch_one(&env.pg)
    .await
    .expect("score row");
    assert_eq!(stored, 1000);
}
