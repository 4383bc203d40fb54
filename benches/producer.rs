//! The ingest producer's hot path (`kafka::ingest_producer`: batch assembly and the
//! dispatch decision of the partition workers) against the local broker, each a
//! question a tuner asks:
//!
//! - `producer/round_trip`: what does the broker itself take for one record (a bare
//!   rskafka produce, acks=all)? The floor of everything below.
//! - `producer/lone`: what does one publish cost on an idle producer? The worker sends a
//!   lone record at once, so this is the round trip plus the producer's own work, with
//!   no linger in it (a fixed linger added 2 ms here).
//! - `producer/concurrent/linger_L/N`: how many records/s do N callers publishing at
//!   once get, as batches form behind in-flight requests (`producer.linger` L: how long
//!   a batch may wait behind them before it takes a free slot)?
//!
//! ```text
//! cargo bench --bench producer
//! BENCH_QUICK=1 cargo bench --bench producer
//! ```
//!
//! It needs the broker of the local stack (`eval "$(deploy/local/stack.sh env)"`) and
//! writes to a scratch topic of 3 partitions, deleted afterwards; without a broker it
//! says so and measures nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gamestream::bench::bench_event;
use gamestream::config::Config;
use gamestream::event::Event;
use gamestream::kafka::{self, KafkaProducer, ProducerTasks};
use rskafka::client::partition::{Compression, UnknownTopicHandling};

mod support;

const PARTITIONS: i32 = 3;
/// Distinct events cycled through (their ids repeat; the broker does not mind).
const EVENTS: usize = 10_000;

struct Fixture {
    config: Config,
    kafka: Arc<rskafka::client::Client>,
    topic: String,
    events: Vec<Event>,
}

async fn fixture() -> Result<Fixture, String> {
    let (config, kafka, topic) = support::scratch_topic("producer", PARTITIONS).await?;
    let events = (0..EVENTS).map(|i| bench_event(i, 20_000, 100)).collect();
    Ok(Fixture {
        config,
        kafka,
        topic,
        events,
    })
}

/// A producer on the scratch topic with `producer.linger = linger`.
async fn producer(f: &Fixture, linger: Duration) -> (KafkaProducer, ProducerTasks) {
    let mut settings = f.config.producer.clone();
    settings.linger = linger;
    let client = Arc::new(
        kafka::connect_producer(&f.config.kafka)
            .await
            .expect("producer client"),
    );
    KafkaProducer::start(&f.kafka, client, &f.topic, &settings)
        .await
        .expect("producer starts")
}

fn producer_benches(c: &mut Criterion) {
    let runtime = support::runtime();
    let Some(fixture) = support::set_up("producer", &runtime, fixture()) else {
        return;
    };
    let f = &fixture;
    let mut group = c.benchmark_group("producer");

    // The floor: one record, one bare produce request, no batching.
    let partition = runtime
        .block_on(
            f.kafka
                .partition_client(f.topic.clone(), 0, UnknownTopicHandling::Retry),
        )
        .expect("partition client");
    let record = rskafka::record::Record {
        key: Some(b"player-1".to_vec()),
        value: Some(f.events[0].to_record_value()),
        headers: BTreeMap::new(),
        timestamp: f.events[0].ingested_at,
    };
    group.throughput(Throughput::Elements(1));
    group.bench_function("round_trip", |b| {
        b.to_async(&runtime).iter(|| async {
            partition
                .produce(vec![record.clone()], Compression::NoCompression)
                .await
                .expect("produced")
        })
    });

    // One publish at a time on the producer's default settings.
    let (lone, lone_tasks) = runtime.block_on(producer(f, f.config.producer.linger));
    let mut next = 0_usize;
    group.bench_function("lone", |b| {
        b.to_async(&runtime).iter(|| {
            next = (next + 1) % EVENTS;
            let (producer, event) = (&lone, &f.events[next]);
            async move { producer.publish(event).await.expect("acknowledged") }
        })
    });
    runtime.block_on(lone_tasks.close());

    for linger in [Duration::ZERO, Duration::from_millis(2)] {
        let (producer, tasks) = runtime.block_on(producer(f, linger));
        for callers in [16_usize, 64, 256] {
            group.throughput(Throughput::Elements(callers as u64));
            let id = BenchmarkId::new(format!("concurrent/linger_{linger:?}"), callers);
            let mut start = 0_usize;
            group.bench_function(id, |b| {
                b.to_async(&runtime).iter(|| {
                    start = (start + callers) % (EVENTS - callers);
                    let (producer, events) = (&producer, &f.events[start..start + callers]);
                    async move {
                        let sends = events.iter().map(|e| producer.publish(e));
                        for result in futures::future::join_all(sends).await {
                            result.expect("acknowledged");
                        }
                    }
                })
            });
        }
        runtime.block_on(tasks.close());
    }
    group.finish();
    if let Ok(controller) = f.kafka.controller_client() {
        let _ = runtime.block_on(controller.delete_topic(f.topic.clone(), 10_000));
    }
}

/// `BENCH_QUICK=1`: seconds, not minutes (see the README's Benchmarks section).
fn settings() -> Criterion {
    let quick = std::env::var_os("BENCH_QUICK").is_some_and(|v| v != "0");
    let c = Criterion::default();
    if quick {
        c.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2))
    } else {
        c.measurement_time(Duration::from_secs(5))
    }
}

criterion_group! {
    name = benches;
    config = settings();
    targets = producer_benches
}
criterion_main!(benches);
