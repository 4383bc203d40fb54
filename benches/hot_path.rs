//! The CPU-bound steps of the pipeline, each a question a tuner asks:
//!
//! - `parse`: what does parsing and validating one record cost, simd-json (what the
//!   readers use) against serde_json, with a small and a large `data` object?
//! - `partitioner`: what does the murmur2 key partitioner cost per key?
//! - `copy_buffer`: what does building the logger's COPY payload cost, for 1k and 10k
//!   events (the `logger.batch_size` range)?
//! - `aggregate`: what do the stats and leaderboard deltas of a batch cost, for 1k and
//!   5k events (`stats.buffer_size`, `leaderboard.batch_size`)?
//! - `time_text`: what does writing a time as the stores keep it cost (a Redis hash's
//!   `last_event`, once per player per write; a daily board's key, once per score event),
//!   next to chrono's `format` with the same pattern, which it replaced?
//! - `produce_batch`: what does the copy cost that each produce attempt sends (kept so
//!   that a batch the broker refused can be sent again), next to building the records
//!   from events, for a full batch (`producer.max_batch_records`, 2,000)?
//!
//! ```text
//! cargo bench --bench hot_path                    # full
//! BENCH_QUICK=1 cargo bench --bench hot_path   # seconds, not minutes
//! cargo bench --bench hot_path -- parse           # one group
//! ```
//!
//! No services needed. Events are `gamestream bench`'s mix (30% scores, 20,000
//! players, 100 games).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gamestream::aggregate::stats::last_event_text;
use gamestream::aggregate::{Period, PeriodKey, ScoreDelta, StatsDelta};
use gamestream::bench::bench_event;
use gamestream::event::{Event, parse_record};
use gamestream::kafka::{ProducerRecord, murmur2, partition_for_key};
use gamestream::sinks::postgres::events::copy_buffer;

const PLAYERS: usize = 20_000;
const GAMES: usize = 100;
const PARTITIONS: i32 = 3;

fn events(n: usize) -> Vec<Event> {
    (0..n).map(|i| bench_event(i, PLAYERS, GAMES)).collect()
}

/// The record value of an event whose `data` holds `extra` padding fields.
fn record_with_data(extra: usize) -> Vec<u8> {
    let mut event = bench_event(7, PLAYERS, GAMES);
    if extra > 0 {
        let fields: Vec<String> = (0..extra)
            .map(|i| format!(r#""field_{i}":{{"name":"item-{i}","count":{i},"tags":["a","b"]}}"#))
            .collect();
        event.data = format!(r#"{{"score":42,{}}}"#, fields.join(","));
    }
    event.to_record_value()
}

/// The serde_json baseline: the same fields, the same checks that matter for cost.
#[derive(serde::Deserialize)]
struct SerdeRecord<'a> {
    event_id: uuid::Uuid,
    #[serde(borrow)]
    event_type: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    player_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    game_id: std::borrow::Cow<'a, str>,
    timestamp: chrono::DateTime<chrono::Utc>,
    ingested_at: chrono::DateTime<chrono::Utc>,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

fn serde_parse(bytes: &[u8]) -> Option<Event> {
    let r: SerdeRecord<'_> = serde_json::from_slice(bytes).ok()?;
    let ok = |s: &str| !s.is_empty() && s.chars().count() <= gamestream::event::MAX_ID_CHARS;
    if !(ok(&r.event_type) && ok(&r.player_id) && ok(&r.game_id)) {
        return None;
    }
    let score = serde_json::from_str::<serde_json::Value>(r.data.get())
        .ok()?
        .get("score")
        .and_then(serde_json::Value::as_i64)
        .map_or(
            gamestream::event::Score::Absent,
            gamestream::event::Score::Integer,
        );
    Some(Event {
        event_id: r.event_id,
        event_type: r.event_type.into_owned(),
        player_id: r.player_id.into_owned(),
        game_id: r.game_id.into_owned(),
        timestamp: r.timestamp,
        ingested_at: r.ingested_at,
        data: r.data.get().to_owned(),
        score,
    })
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for (size, extra) in [("small", 0), ("large", 40)] {
        let record = record_with_data(extra);
        group.throughput(Throughput::Bytes(record.len() as u64));
        let mut scratch = Vec::with_capacity(record.len());
        group.bench_function(BenchmarkId::new("simd_json", size), |b| {
            b.iter(|| {
                scratch.clear();
                scratch.extend_from_slice(&record);
                black_box(parse_record(&mut scratch).ok())
            })
        });
        group.bench_function(BenchmarkId::new("serde_json", size), |b| {
            b.iter(|| black_box(serde_parse(black_box(&record))))
        });
    }
    group.finish();
}

fn partitioner(c: &mut Criterion) {
    let keys: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("player-{i}").into_bytes())
        .collect();
    let mut group = c.benchmark_group("partitioner");
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("murmur2_1k_keys", |b| {
        b.iter(|| {
            keys.iter()
                .map(|k| murmur2(black_box(k)))
                .fold(0, i32::wrapping_add)
        })
    });
    group.bench_function("partition_for_key_1k_keys", |b| {
        b.iter(|| {
            keys.iter()
                .map(|k| partition_for_key(black_box(k), PARTITIONS))
                .sum::<i32>()
        })
    });
    group.finish();
}

fn copy_payload(c: &mut Criterion) {
    let mut group = c.benchmark_group("copy_buffer");
    for n in [1_000, 10_000] {
        let events = events(n);
        let refs: Vec<&Event> = events.iter().collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &refs, |b, refs| {
            b.iter(|| black_box(copy_buffer(refs)))
        });
    }
    group.finish();
}

fn aggregate(c: &mut Criterion) {
    let mut group = c.benchmark_group("aggregate");
    for n in [1_000, 5_000] {
        let events = events(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("stats_delta", n), &events, |b, events| {
            b.iter(|| black_box(StatsDelta::of(events.iter())))
        });
        group.bench_with_input(
            BenchmarkId::new("stats_delta_with_breakdown_json", n),
            &events,
            |b, events| {
                b.iter(|| {
                    let delta = StatsDelta::of(events.iter());
                    delta
                        .iter()
                        .map(|(_, p)| p.breakdown_json().len())
                        .sum::<usize>()
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("score_delta", n), &events, |b, events| {
            b.iter(|| black_box(ScoreDelta::of(events.iter()).ok()))
        });
    }
    group.finish();
}

fn time_text(c: &mut Criterion) {
    let mut group = c.benchmark_group("time_text");
    let times: Vec<chrono::DateTime<chrono::Utc>> =
        events(1_000).iter().map(|e| e.timestamp).collect();
    group.throughput(Throughput::Elements(times.len() as u64));
    group.bench_function("last_event_text", |b| {
        b.iter(|| {
            times
                .iter()
                .map(|t| last_event_text(*t).len())
                .sum::<usize>()
        })
    });
    group.bench_function("last_event_strftime_reference", |b| {
        b.iter(|| {
            times
                .iter()
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string().len())
                .sum::<usize>()
        })
    });
    group.bench_function("day_key", |b| {
        b.iter(|| {
            times
                .iter()
                .map(|t| PeriodKey::of(Period::Daily, *t).to_string().len())
                .sum::<usize>()
        })
    });
    group.bench_function("day_key_strftime_reference", |b| {
        b.iter(|| {
            times
                .iter()
                .map(|t| t.date_naive().format("%Y-%m-%d").to_string().len())
                .sum::<usize>()
        })
    });
    group.finish();
}

fn produce_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("produce_batch");
    let n = 2_000;
    let events = events(n);
    let records: Vec<ProducerRecord> = events.iter().map(ProducerRecord::from_event).collect();
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(BenchmarkId::new("records_from_events", n), |b| {
        b.iter(|| {
            black_box(
                events
                    .iter()
                    .map(ProducerRecord::from_event)
                    .collect::<Vec<_>>(),
            )
        })
    });
    group.bench_function(BenchmarkId::new("copy_for_an_attempt", n), |b| {
        b.iter(|| black_box(records.clone()))
    });
    group.finish();
}

/// Criterion's settings: full by default, a few seconds in all with
/// `BENCH_QUICK=1` (see the README's Benchmarks section).
pub fn settings() -> Criterion {
    let quick = std::env::var_os("BENCH_QUICK").is_some_and(|v| v != "0");
    let c = Criterion::default();
    if quick {
        c.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
    } else {
        c.measurement_time(Duration::from_secs(3))
    }
}

criterion_group! {
    name = benches;
    config = settings();
    targets = parse, partitioner, copy_payload, aggregate, time_text, produce_batch
}
criterion_main!(benches);
