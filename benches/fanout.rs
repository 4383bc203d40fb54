//! The actor tree alone: how many events/s go from partition readers to sinks, by sink
//! batch size and reader credit (`consumer.max_in_flight_records`), when the sinks
//! write nowhere (in-memory [`SinkWriter`]s that only count).
//!
//! ```text
//! scratch topic (pre-filled once, 3 partitions)
//!   └─ PartitionReader p0..p2 ──Arc<ParsedBatch>──► SinkActor<MemoryWriter> × 3
//!                              ◄──────── Ack ──────┘ (credits)
//! one iteration = spawn the tree, claim every partition (as the lease manager would),
//! drain the topic to its end in every sink, stop
//! ```
//!
//! So this is the ceiling the pipeline's own machinery (fetch, parse, fan-out,
//! batching, acks) puts on throughput, without Postgres or Redis. It needs the broker
//! of the local stack (`eval "$(deploy/local/stack.sh env)"`); without one it says so
//! and measures nothing.
//!
//! ```text
//! cargo bench --bench fanout
//! BENCH_QUICK=1 cargo bench --bench fanout
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gamestream::actors::dlq::DlqMessage;
use gamestream::actors::partition_reader::{PartitionReader, ReaderArgs, prepare_reader};
use gamestream::actors::sink::{
    PartitionFenced, SinkActor, SinkArgs, SinkMessage, SinkSettings, SinkWriter, WriteBatch,
};
use gamestream::bench::bench_event;
use gamestream::catalogue::{SinkSpec, Store};
use gamestream::config::Config;
use gamestream::kafka;
use gamestream::retry::Backoff;
use gamestream::sinks::SinkError;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rskafka::client::partition::{Compression, UnknownTopicHandling};

mod support;

const EVENTS: usize = 30_000;
const PARTITIONS: i32 = 3;
const SINKS: [SinkSpec; 3] = [memory("memory-a"), memory("memory-b"), memory("memory-c")];

/// A catalogue entry for an in-memory sink of this bench.
const fn memory(name: &'static str) -> SinkSpec {
    SinkSpec {
        name,
        consumer_service: name,
        store: Store::Postgres,
        legacy_group: name,
        dead_letters_invalid_records: false,
        rebuilt_from: None,
        additive: false,
    }
}
/// How often the driver looks whether every sink has everything.
const POLL: Duration = Duration::from_millis(1);
/// A drain that takes this long is stuck (a sink refusing to write), not slow.
const GIVE_UP: Duration = Duration::from_secs(120);

/// A sink that applies records by counting them.
struct MemoryWriter {
    spec: &'static SinkSpec,
    applied: Arc<AtomicUsize>,
}

impl SinkWriter for MemoryWriter {
    fn spec(&self) -> &'static SinkSpec {
        self.spec
    }

    async fn committed(&self, _topic: &str) -> Result<BTreeMap<i32, i64>, SinkError> {
        Ok(BTreeMap::new())
    }

    async fn write(&mut self, batch: &WriteBatch<'_>) -> Result<(), SinkError> {
        self.applied
            .fetch_add(batch.records.len(), Ordering::Relaxed);
        Ok(())
    }
}

/// Stands in for the supervisor: sinks tell it when a write finds a lease lost, which
/// the in-memory writers never do.
struct NoLeaseOwner;

impl Actor for NoLeaseOwner {
    type Msg = PartitionFenced;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ActorRef<PartitionFenced>,
        _: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// Stands in for the DLQ actor: the bench's records are all valid, so it is never
/// asked; if it is, it confirms.
struct NoDlq;

impl Actor for NoDlq {
    type Msg = DlqMessage;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<DlqMessage>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<DlqMessage>,
        message: DlqMessage,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let DlqMessage::Write { reply, .. } = message;
        let _ = reply.send(());
        Ok(())
    }
}

struct Fixture {
    config: Config,
    kafka: Arc<rskafka::client::Client>,
    topic: Arc<str>,
}

async fn fixture() -> Result<Fixture, String> {
    let (config, kafka, topic) = support::scratch_topic("fanout", PARTITIONS).await?;
    let mut by_partition: Vec<Vec<rskafka::record::Record>> =
        (0..PARTITIONS).map(|_| Vec::new()).collect();
    for i in 0..EVENTS {
        let event = bench_event(i, 20_000, 100);
        let p = kafka::partition_for_key(event.player_id.as_bytes(), PARTITIONS) as usize;
        by_partition[p].push(rskafka::record::Record {
            key: Some(event.player_id.clone().into_bytes()),
            value: Some(event.to_record_value()),
            headers: BTreeMap::new(),
            timestamp: event.ingested_at,
        });
    }
    for (p, records) in by_partition.into_iter().enumerate() {
        let client = kafka
            .partition_client(topic.clone(), p as i32, UnknownTopicHandling::Retry)
            .await
            .map_err(|e| e.to_string())?;
        for chunk in records.chunks(2_000) {
            client
                .produce(chunk.to_vec(), Compression::NoCompression)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(Fixture {
        config,
        kafka,
        topic: Arc::from(topic.as_str()),
    })
}

/// Spawns the tree, waits until every sink applied every event, stops it; the time
/// from spawn to the last sink's last write.
async fn drain(f: &Fixture, batch_size: usize, credit: usize) -> Duration {
    let (dlq, dlq_join) = Actor::spawn(None, NoDlq, ()).await.expect("spawn dlq");
    let (supervisor, supervisor_join) = Actor::spawn(None, NoLeaseOwner, ())
        .await
        .expect("spawn supervisor stand-in");
    let started = Instant::now();
    let settings = SinkSettings {
        batch_size,
        linger: f.config.logger.linger,
        retry_initial_backoff: f.config.consumer.retry_initial_backoff,
        retry_max_backoff: f.config.consumer.retry_max_backoff,
    };
    let mut sinks = Vec::new();
    let mut counters = Vec::new();
    for spec in &SINKS {
        let name = spec.name;
        let applied = Arc::new(AtomicUsize::new(0));
        counters.push(Arc::clone(&applied));
        let args = SinkArgs {
            writer: MemoryWriter { spec, applied },
            topic: Arc::clone(&f.topic),
            settings: settings.clone(),
            dlq: dlq.clone(),
            fenced: supervisor.get_derived(),
        };
        let (sink, join) = Actor::spawn(None, SinkActor::<MemoryWriter>::default(), args)
            .await
            .expect("spawn sink");
        sinks.push((name, sink, join));
    }
    // Sinks write only the partitions this daemon holds a lease of.
    for (_, sink, _) in &sinks {
        for partition in 0..PARTITIONS {
            let claimed = sink
                .call(
                    |reply| SinkMessage::Claim {
                        partition,
                        epoch: 1,
                        reply,
                    },
                    None,
                )
                .await;
            assert!(
                matches!(claimed, Ok(ractor::rpc::CallResult::Success(Ok(())))),
                "a memory sink claims every partition"
            );
        }
    }
    let mut readers = Vec::new();
    for partition in 0..PARTITIONS {
        let shards: Vec<_> = sinks.iter().map(|(n, s, _)| (*n, s.clone())).collect();
        let start = prepare_reader(&f.kafka, &f.topic, partition, &shards, GIVE_UP, None)
            .await
            .expect("reader start");
        let args = ReaderArgs {
            start,
            topic: Arc::clone(&f.topic),
            partition,
            sinks: shards,
            max_in_flight_records: credit,
            detach_after: f.config.consumer.detach_after,
            fetch_max_bytes: f.config.consumer.fetch_max_bytes,
            fetch_max_wait: f.config.consumer.fetch_max_wait,
            backoff: Backoff::new(
                f.config.consumer.retry_initial_backoff,
                f.config.consumer.retry_max_backoff,
            ),
        };
        readers.push(
            Actor::spawn(None, PartitionReader, args)
                .await
                .expect("spawn reader"),
        );
    }
    while counters.iter().any(|c| c.load(Ordering::Relaxed) < EVENTS) {
        assert!(
            started.elapsed() < GIVE_UP,
            "the sinks did not drain the topic within {GIVE_UP:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let elapsed = started.elapsed();
    for (reader, join) in readers {
        reader.stop(None);
        let _ = join.await;
    }
    for (_, sink, join) in sinks {
        sink.stop(None);
        let _ = join.await;
    }
    dlq.stop(None);
    let _ = dlq_join.await;
    supervisor.stop(None);
    let _ = supervisor_join.await;
    elapsed
}

fn fanout(c: &mut Criterion) {
    let runtime = support::runtime();
    let Some(fixture) = support::set_up("fanout", &runtime, fixture()) else {
        return;
    };
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(EVENTS as u64));
    for batch_size in [500, 5_000] {
        for credit in [1_000, 5_000, 20_000] {
            group.bench_function(
                BenchmarkId::new(format!("batch_{batch_size}"), format!("credit_{credit}")),
                |b| {
                    b.to_async(&runtime).iter_custom(|iters| {
                        let fixture = &fixture;
                        async move {
                            let mut total = Duration::ZERO;
                            for _ in 0..iters {
                                total += drain(fixture, batch_size, credit).await;
                            }
                            total
                        }
                    })
                },
            );
        }
    }
    group.finish();
    if let Ok(controller) = fixture.kafka.controller_client() {
        let _ = runtime.block_on(controller.delete_topic(fixture.topic.to_string(), 10_000));
    }
}

/// Few samples: one is a whole drain of the topic.
fn settings() -> Criterion {
    let quick = std::env::var_os("BENCH_QUICK").is_some_and(|v| v != "0");
    let c = Criterion::default().sample_size(10);
    if quick {
        c.warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_secs(2))
    } else {
        c.measurement_time(Duration::from_secs(8))
    }
}

criterion_group! {
    name = benches;
    config = settings();
    targets = fanout
}
criterion_main!(benches);
