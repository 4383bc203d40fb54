//! The operator tools against the real stack: `dlq list` filters, `dlq replay` publishes
//! each letter once (also two replays at once) and the replayed events land once in
//! `events`; `offsets show` equals the stores; `offsets reset` is refused under a live
//! lease, accepted with --force or after expiry, and resolves a time to an offset.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::ingest::TestServer;
use crate::common::{RawRecord, TestEnv, eventually, high_watermarks, produce_raw, sample_event};
use chrono::{DateTime, Utc};
use gamestream::dead_letter::DeadLetter;
use gamestream::ops::dlq::REPLAY_HEADER;
use gamestream::sinks::postgres;
use serde_json::Value;

/// What a finished `gamestream` child said.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// stdout's lines, each parsed as JSON.
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

async fn run(env: &TestEnv, args: &[&str]) -> Run {
    let out = env
        .command(args)
        .output()
        .await
        .expect("the gamestream binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn letter(
    consumer: &'static str,
    kind: &str,
    offset: i64,
    payload: Vec<u8>,
    at: DateTime<Utc>,
) -> DeadLetter {
    DeadLetter {
        consumer,
        topic: "source.topic".into(),
        partition: 0,
        offset,
        key: None,
        payload,
        error: format!("{kind} at {offset}"),
        kind: kind.into(),
        at,
    }
}

/// dlq_events ids by source offset.
async fn ids_by_offset(pg: &sqlx::PgPool) -> BTreeMap<i64, i32> {
    let rows: Vec<(i64, i32)> = sqlx::query_as("SELECT source_offset, id FROM dlq_events")
        .fetch_all(pg)
        .await
        .expect("dlq rows");
    rows.into_iter().collect()
}

fn listed_ids(run: &Run) -> Vec<i64> {
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.json_lines()
        .iter()
        .map(|row| row["id"].as_i64().expect("an id"))
        .collect()
}

#[tokio::test]
async fn dlq_list_filters_by_service_time_and_reason() {
    let env = TestEnv::new().await;
    let now = Utc::now();
    let old = now - chrono::Duration::hours(3);
    postgres::dlq::insert(
        &env.pg,
        &[
            letter("event-logger", "malformed_json", 1, b"{".to_vec(), old),
            letter("event-logger", "missing_field", 2, b"{}".to_vec(), now),
            letter("leaderboard-manager", "bad_score", 3, b"{}".to_vec(), now),
        ],
    )
    .await
    .expect("insert letters");
    let ids = ids_by_offset(&env.pg).await;
    let id = |offset: i64| i64::from(ids[&offset]);

    let all = run(&env, &["dlq", "list", "--json"]).await;
    assert_eq!(listed_ids(&all), [id(1), id(2), id(3)]);
    let first = &all.json_lines()[0];
    assert_eq!(first["consumer_service"], "event-logger");
    assert_eq!(first["error_kind"], "malformed_json");
    assert_eq!(first["source_topic"], "source.topic");
    assert_eq!(first["source_offset"], 1);
    assert_eq!(first["replayed_at"], Value::Null);

    let by_service = run(
        &env,
        &["dlq", "list", "--json", "--service", "event-logger"],
    )
    .await;
    assert_eq!(listed_ids(&by_service), [id(1), id(2)]);
    let by_reason = run(&env, &["dlq", "list", "--json", "--reason", "bad_score"]).await;
    assert_eq!(listed_ids(&by_reason), [id(3)]);
    let recent = run(&env, &["dlq", "list", "--json", "--since", "1h"]).await;
    assert_eq!(listed_ids(&recent), [id(2), id(3)]);
    let since = crate_time(now - chrono::Duration::minutes(1));
    let both = run(
        &env,
        &[
            "dlq",
            "list",
            "--json",
            "--service",
            "event-logger",
            "--since",
            &since,
        ],
    )
    .await;
    assert_eq!(listed_ids(&both), [id(2)]);
    let limited = run(&env, &["dlq", "list", "--json", "--limit", "1"]).await;
    assert_eq!(listed_ids(&limited), [id(1)]);

    let table = run(&env, &["dlq", "list"]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.contains("3 letter(s)"), "{}", table.stdout);
    assert!(
        table.stdout.contains("source.topic/0/3"),
        "{}",
        table.stdout
    );
    let bad_time = run(&env, &["dlq", "list", "--since", "last tuesday"]).await;
    assert_eq!(
        bad_time.code, 2,
        "a bad time is a usage error: {}",
        bad_time.stderr
    );
}

fn crate_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Records on the raw topic that a replay published (values, by the dead letter they
/// replay). Values need not be JSON, so not `crate::common::ingest::consume_all`.
async fn replayed_records(env: &TestEnv) -> BTreeMap<i32, Vec<Vec<u8>>> {
    use rskafka::client::partition::UnknownTopicHandling;
    let topic = &env.config.topics.player_events;
    let marks = high_watermarks(&env.config, topic).await;
    let client = gamestream::kafka::connect(&env.config.kafka)
        .await
        .expect("kafka");
    let mut out: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    for (p, mark) in marks.into_iter().enumerate() {
        let pc = client
            .partition_client(topic.clone(), p as i32, UnknownTopicHandling::Retry)
            .await
            .expect("partition");
        let mut offset = 0;
        while offset < mark {
            let (records, _) = pc
                .fetch_records(offset, 1..8 * 1024 * 1024, 100)
                .await
                .expect("fetch");
            for r in records {
                if r.offset < offset {
                    continue;
                }
                offset = r.offset + 1;
                if let Some(id) = r.record.headers.get(REPLAY_HEADER) {
                    let id: i32 = String::from_utf8_lossy(id).parse().expect("a dlq id");
                    out.entry(id)
                        .or_default()
                        .push(r.record.value.unwrap_or_default());
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn replay_publishes_each_letter_once_even_with_two_replays_at_once() {
    let env = TestEnv::new().await;
    const EVENTS: usize = 20;
    let events: Vec<_> = (0..EVENTS).map(|i| sample_event(i, 7, 2)).collect();
    let mut letters: Vec<DeadLetter> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            letter(
                "event-logger",
                "sink_rejected",
                i as i64,
                e.to_record_value(),
                Utc::now(),
            )
        })
        .collect();
    // Not JSON at all: replayed byte for byte, and dead-lettered again by the pipeline.
    let garbage = b"\xff\xfe not an event".to_vec();
    letters.push(letter(
        "event-logger",
        "invalid_utf8",
        EVENTS as i64,
        garbage.clone(),
        Utc::now(),
    ));
    postgres::dlq::insert(&env.pg, &letters)
        .await
        .expect("insert letters");
    let ids = ids_by_offset(&env.pg).await;
    let id_args: Vec<String> = ids.values().map(i32::to_string).collect();
    let mut args = vec!["dlq", "replay", "--chunk", "3", "--id"];
    args.extend(id_args.iter().map(String::as_str));

    let dry = run(&env, &[&args[..], &["--dry-run"]].concat()).await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stdout.contains("would replay 21 letter(s)"),
        "{}",
        dry.stdout
    );
    assert!(
        replayed_records(&env).await.is_empty(),
        "a dry run publishes nothing"
    );

    let (a, b) = tokio::join!(run(&env, &args), run(&env, &args));
    assert_eq!((a.code, b.code), (0, 0), "{}\n{}", a.stderr, b.stderr);

    let published = replayed_records(&env).await;
    assert_eq!(
        published.len(),
        EVENTS + 1,
        "every letter is published: {:?}",
        published.keys()
    );
    for (offset, id) in &ids {
        let copies = &published[id];
        assert_eq!(
            copies.len(),
            1,
            "letter {id} published {} times",
            copies.len()
        );
        assert_eq!(
            copies[0], letters[*offset as usize].payload,
            "letter {id}: the exact bytes"
        );
    }
    let unmarked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dlq_events WHERE replayed_at IS NULL")
            .fetch_one(&env.pg)
            .await
            .expect("count");
    assert_eq!(unmarked, 0);
    let again = run(&env, &args).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stdout.contains("replayed 0 letter(s)"),
        "{}",
        again.stdout
    );
    assert!(again.stdout.contains("not replayed"), "{}", again.stdout);
    assert_eq!(
        replayed_records(&env).await.len(),
        EVENTS + 1,
        "never twice"
    );

    // The pipeline applies the replayed events once, and dead-letters the garbage anew.
    let server = TestServer::start(env.config.clone()).await;
    let stored = eventually(Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&env.pg)
            .await
            .expect("count");
        let letters: i64 = sqlx::query_scalar("SELECT count(*) FROM dlq_events")
            .fetch_one(&env.pg)
            .await
            .expect("count");
        n == EVENTS as i64 && letters == EVENTS as i64 + 2
    })
    .await;
    server.stop().await;
    assert!(
        stored,
        "the replayed events reach `events`, the garbage the DLQ again"
    );
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT event_id) FROM events")
        .fetch_one(&env.pg)
        .await
        .expect("count");
    assert_eq!(distinct, EVENTS as i64);
    let fresh: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT original_payload FROM dlq_events WHERE source_topic = $1")
            .bind(&env.config.topics.player_events)
            .fetch_all(&env.pg)
            .await
            .expect("new letter");
    assert_eq!(fresh, [garbage]);
}

/// Puts `count` events on the raw topic; returns each partition's high watermark.
async fn fill(env: &TestEnv, count: usize) -> Vec<i64> {
    let records: Vec<RawRecord> = (0..count)
        .map(|i| RawRecord::of(&sample_event(i, 11, 2)))
        .collect();
    produce_raw(&env.config, &env.config.topics.player_events, &records).await;
    high_watermarks(&env.config, &env.config.topics.player_events).await
}

async fn set_pg_offset(env: &TestEnv, sink: &str, partition: i32, offset: i64) {
    sqlx::query(
        "INSERT INTO sink_offsets (sink, topic, partition, next_offset) VALUES ($1, $2, $3, $4)
         ON CONFLICT (sink, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
    )
    .bind(sink)
    .bind(&env.config.topics.player_events)
    .bind(partition)
    .bind(offset)
    .execute(&env.pg)
    .await
    .expect("set offset");
}

async fn pg_offset(env: &TestEnv, sink: &str, partition: i32) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT next_offset FROM sink_offsets WHERE sink = $1 AND topic = $2 AND partition = $3",
    )
    .bind(sink)
    .bind(&env.config.topics.player_events)
    .bind(partition)
    .fetch_optional(&env.pg)
    .await
    .expect("offset")
}

fn redis_offsets_key(env: &TestEnv, sink: &str) -> String {
    gamestream::sinks::redis::RedisKeys::new(env.config.redis.key_prefix.clone())
        .offsets(sink, &env.config.topics.player_events)
}

async fn lease(env: &TestEnv, partition: i32, owner: &str, expires_in_secs: i64) {
    sqlx::query(
        "INSERT INTO partition_leases (topic, partition, owner, epoch, expires_at)
         VALUES ($1, $2, $3, 1, now() + make_interval(secs => $4))
         ON CONFLICT (topic, partition) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at",
    )
    .bind(&env.config.topics.player_events)
    .bind(partition)
    .bind(owner)
    .bind(expires_in_secs as f64)
    .execute(&env.pg)
    .await
    .expect("lease");
}

#[tokio::test]
async fn offsets_show_equals_the_stores() {
    let env = TestEnv::new().await;
    let marks = fill(&env, 60).await;
    assert!(
        marks.iter().all(|&m| m > 2),
        "every partition has records: {marks:?}"
    );
    set_pg_offset(&env, "event-logger", 0, 1).await;
    set_pg_offset(&env, "event-logger", 1, marks[1]).await;
    set_pg_offset(&env, "stats-aggregator", 2, 2).await;
    let mut redis = env.redis().await;
    let _: i64 = redis::cmd("HSET")
        .arg(redis_offsets_key(&env, "stats-aggregator-redis"))
        .arg("initialised_at")
        .arg("2026-11-22T00:00:00Z")
        .arg("0")
        .arg(2)
        .query_async(&mut redis)
        .await
        .expect("hset");
    lease(&env, 1, "pod-7", 60).await;

    let show = run(&env, &["offsets", "show", "--json"]).await;
    assert_eq!(show.code, 0, "{}", show.stderr);
    let rows = show.json_lines();
    assert_eq!(
        rows.len(),
        5 * marks.len(),
        "five sinks × partitions: {}",
        show.stdout
    );
    let row = |sink: &str, p: i64| {
        rows.iter()
            .find(|r| r["sink"] == sink && r["partition"] == p)
            .unwrap_or_else(|| panic!("no row {sink} {p}"))
            .clone()
    };
    for (p, &mark) in marks.iter().enumerate() {
        let p = p as i64;
        for sink in [
            "event-logger",
            "stats-aggregator",
            "leaderboard-manager",
            "stats-aggregator-redis",
            "leaderboard-manager-redis",
        ] {
            let r = row(sink, p);
            assert_eq!(r["high_watermark"], mark, "{r}");
            assert_eq!(r["earliest"], 0, "{r}");
            let committed = r["committed"].as_i64();
            assert_eq!(r["lag"], mark - committed.unwrap_or(0), "{r}");
            assert_eq!(
                r["holder"],
                if p == 1 {
                    Value::from("pod-7")
                } else {
                    Value::Null
                },
                "{r}"
            );
        }
    }
    assert_eq!(row("event-logger", 0)["committed"], 1);
    assert_eq!(row("event-logger", 1)["committed"], marks[1]);
    assert_eq!(row("event-logger", 1)["lag"], 0);
    assert_eq!(row("event-logger", 2)["committed"], Value::Null);
    assert_eq!(row("stats-aggregator", 2)["committed"], 2);
    assert_eq!(row("stats-aggregator-redis", 0)["committed"], 2);
    assert_eq!(row("stats-aggregator-redis", 0)["store"], "redis");
    assert_eq!(
        row("leaderboard-manager-redis", 0)["committed"],
        Value::Null
    );

    let one = run(
        &env,
        &["offsets", "show", "--json", "--sink", "stats-aggregator"],
    )
    .await;
    assert_eq!(one.json_lines().len(), marks.len());
    let table = run(&env, &["offsets", "show"]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.contains("pod-7"), "{}", table.stdout);
    let unknown = run(&env, &["offsets", "show", "--sink", "nope"]).await;
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
}

#[tokio::test]
async fn reset_is_refused_under_a_live_lease_unless_forced_or_expired() {
    let env = TestEnv::new().await;
    let marks = fill(&env, 45).await;
    set_pg_offset(&env, "stats-aggregator", 0, 3).await;
    lease(&env, 0, "pod-a", 600).await;

    let refused = run(
        &env,
        &[
            "offsets",
            "reset",
            "--sink",
            "stats-aggregator",
            "--to",
            "earliest",
        ],
    )
    .await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("pod-a"),
        "names the holder: {}",
        refused.stderr
    );
    assert_eq!(
        pg_offset(&env, "stats-aggregator", 0).await,
        Some(3),
        "unchanged"
    );
    assert_eq!(
        pg_offset(&env, "stats-aggregator", 1).await,
        None,
        "unchanged"
    );

    // Another partition is free.
    let other = run(
        &env,
        &[
            "offsets",
            "reset",
            "--sink",
            "stats-aggregator",
            "--to",
            "latest",
            "--partition",
            "1",
        ],
    )
    .await;
    assert_eq!(other.code, 0, "{}", other.stderr);
    assert_eq!(pg_offset(&env, "stats-aggregator", 1).await, Some(marks[1]));

    // Redis sinks are guarded by the same leases.
    let redis_refused = run(
        &env,
        &[
            "offsets",
            "reset",
            "--sink",
            "stats-aggregator-redis",
            "--to",
            "1",
            "--partition",
            "0",
        ],
    )
    .await;
    assert_eq!(redis_refused.code, 1, "{}", redis_refused.stderr);

    let forced = run(
        &env,
        &[
            "offsets",
            "reset",
            "--sink",
            "stats-aggregator",
            "--to",
            "earliest",
            "--partition",
            "0",
            "--force",
        ],
    )
    .await;
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert_eq!(pg_offset(&env, "stats-aggregator", 0).await, Some(0));
    assert!(
        forced.stderr.contains("counted again"),
        "warns about counting twice: {}",
        forced.stderr
    );

    // Expired: free again.
    lease(&env, 0, "pod-a", -1).await;
    let after_expiry = run(
        &env,
        &[
            "offsets",
            "reset",
            "--sink",
            "stats-aggregator",
            "--to",
            "2",
            "--partition",
            "0",
        ],
    )
    .await;
    assert_eq!(after_expiry.code, 0, "{}", after_expiry.stderr);
    assert_eq!(pg_offset(&env, "stats-aggregator", 0).await, Some(2));

    let redis_reset = run(
        &env,
        &[
            "offsets",
            "reset",
            "--sink",
            "leaderboard-manager-redis",
            "--to",
            "latest",
        ],
    )
    .await;
    assert_eq!(redis_reset.code, 0, "{}", redis_reset.stderr);
    let mut redis = env.redis().await;
    let stored: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(redis_offsets_key(&env, "leaderboard-manager-redis"))
        .query_async(&mut redis)
        .await
        .expect("hgetall");
    for (p, mark) in marks.iter().enumerate() {
        assert_eq!(stored[&p.to_string()], mark.to_string());
    }

    let beyond = run(
        &env,
        &[
            "offsets",
            "reset",
            "--sink",
            "event-logger",
            "--to",
            "999999",
        ],
    )
    .await;
    assert_eq!(beyond.code, 1, "{}", beyond.stderr);
    let unknown = run(
        &env,
        &["offsets", "reset", "--sink", "nope", "--to", "earliest"],
    )
    .await;
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    let bad = run(
        &env,
        &[
            "offsets",
            "reset",
            "--sink",
            "event-logger",
            "--to",
            "yesterday",
        ],
    )
    .await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

#[tokio::test]
async fn reset_to_a_time_finds_the_first_record_at_or_after_it() {
    use rskafka::client::partition::{Compression, UnknownTopicHandling};
    let env = TestEnv::new().await;
    let topic = env.config.topics.player_events.clone();
    let client = gamestream::kafka::connect(&env.config.kafka)
        .await
        .expect("kafka");
    let then = Utc::now() - chrono::Duration::hours(2);
    let now = Utc::now();
    let mut old_per_partition = Vec::new();
    for p in 0..3 {
        let pc = client
            .partition_client(topic.clone(), p, UnknownTopicHandling::Retry)
            .await
            .expect("partition");
        let old = 2 + p as usize;
        let record = |i: usize, at: DateTime<Utc>| rskafka::record::Record {
            key: None,
            value: Some(sample_event(i, 5, 1).to_record_value()),
            headers: Default::default(),
            timestamp: at,
        };
        for i in 0..old {
            let at = then + chrono::Duration::seconds(i as i64);
            pc.produce(vec![record(i, at)], Compression::NoCompression)
                .await
                .expect("produce");
        }
        for i in 0..4 {
            let at = now + chrono::Duration::milliseconds(i as i64);
            pc.produce(vec![record(i, at)], Compression::NoCompression)
                .await
                .expect("produce");
        }
        old_per_partition.push(old as i64);
    }
    let cut = crate_time(now - chrono::Duration::hours(1));
    let reset = run(
        &env,
        &["offsets", "reset", "--sink", "event-logger", "--to", &cut],
    )
    .await;
    assert_eq!(reset.code, 0, "{}", reset.stderr);
    for (p, old) in old_per_partition.iter().enumerate() {
        assert_eq!(
            pg_offset(&env, "event-logger", p as i32).await,
            Some(*old),
            "partition {p}: {}",
            reset.stdout
        );
    }
    let future = crate_time(now + chrono::Duration::hours(1));
    let reset = run(
        &env,
        &[
            "offsets",
            "reset",
            "--sink",
            "event-logger",
            "--to",
            &future,
        ],
    )
    .await;
    assert_eq!(reset.code, 0, "{}", reset.stderr);
    for (p, old) in old_per_partition.iter().enumerate() {
        assert_eq!(
            pg_offset(&env, "event-logger", p as i32).await,
            Some(old + 4),
            "a time after every record: the end"
        );
    }
    let past = crate_time(then - chrono::Duration::hours(1));
    let reset = run(
        &env,
        &["offsets", "reset", "--sink", "event-logger", "--to", &past],
    )
    .await;
    assert_eq!(reset.code, 0, "{}", reset.stderr);
    for p in 0..3 {
        assert_eq!(
            pg_offset(&env, "event-logger", p).await,
            Some(0),
            "a time before every record: the start"
        );
    }
}

#[tokio::test]
async fn concurrent_replays_in_one_process_share_the_letters_without_overlap() {
    use gamestream::ops::dlq::{ReplaySelection, replay};
    let env = TestEnv::new().await;
    const LETTERS: usize = 40;
    let letters: Vec<DeadLetter> = (0..LETTERS)
        .map(|i| {
            let payload = sample_event(i, 5, 1).to_record_value();
            letter(
                "event-logger",
                "sink_rejected",
                i as i64,
                payload,
                Utc::now(),
            )
        })
        .collect();
    postgres::dlq::insert(&env.pg, &letters)
        .await
        .expect("insert letters");
    let selection = ReplaySelection {
        service: Some("event-logger".into()),
        since: Some(Utc::now() - chrono::Duration::hours(1)),
        ..Default::default()
    };
    let run = || replay(&env.pg, &env.config, &selection, 1, false);
    let reports = futures::future::join_all((0..4).map(|_| run())).await;
    let mut replayed: Vec<i32> = Vec::new();
    let mut published = 0;
    for report in reports {
        let report = report.expect("replay");
        published += report.published;
        replayed.extend(report.replayed);
    }
    replayed.sort_unstable();
    let mut expected: Vec<i32> = ids_by_offset(&env.pg).await.into_values().collect();
    expected.sort_unstable();
    assert_eq!(
        replayed, expected,
        "each letter claimed by exactly one replay"
    );
    assert_eq!(published, LETTERS);
    let on_topic = replayed_records(&env).await;
    assert_eq!(on_topic.len(), LETTERS);
    assert!(
        on_topic.values().all(|copies| copies.len() == 1),
        "once each"
    );
}
