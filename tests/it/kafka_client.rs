//! The vendored Kafka client's additions (vendor/rskafka/GAMESTREAM_PATCH.md) against
//! Apache Kafka: the idempotent producer's broker contract (a copy of a batch with the
//! same sequence is stored once, a gap is refused, a new epoch starts again at 0), and
//! throttling honoured per connection (KIP-219) under a produce quota.
//!
//! `cargo nextest run --test it kafka_client::`

use std::time::{Duration, Instant};

use chrono::Utc;
use rskafka::client::controller::ProducerIdentity;
use rskafka::client::error::{Error, ProtocolError};
use rskafka::client::partition::{
    Compression, OffsetAt, PartitionClient, ProduceOptions, UnknownTopicHandling,
};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

use crate::common::{TestEnv, kafka_sh, unique_id};

fn record(pad: usize) -> Record {
    Record {
        key: Some(b"player-1".to_vec()),
        value: Some(vec![b'x'; pad]),
        headers: Default::default(),
        timestamp: Utc::now(),
    }
}

async fn client(env: &TestEnv, client_id: &str) -> Client {
    ClientBuilder::new(env.config.kafka.bootstrap_servers.clone())
        .client_id(client_id)
        .build()
        .await
        .expect("kafka connects")
}

async fn partition(client: &Client, env: &TestEnv) -> PartitionClient {
    client
        .partition_client(
            env.config.topics.player_events.clone(),
            0,
            UnknownTopicHandling::Retry,
        )
        .await
        .expect("partition client")
}

fn idempotent(producer: ProducerIdentity, base_sequence: i32) -> ProduceOptions {
    ProduceOptions {
        idempotence: Some((producer, base_sequence)),
    }
}

/// The protocol error of a failed request, under rskafka's retry wrapper.
fn protocol_error(error: &Error) -> Option<ProtocolError> {
    match error {
        Error::ServerError { protocol_error, .. } => Some(*protocol_error),
        Error::RetryFailed(rskafka::BackoffError::DeadlineExceded { source, .. }) => {
            source.downcast_ref::<Error>().and_then(protocol_error)
        }
        _ => None,
    }
}

#[tokio::test]
async fn a_batch_sent_again_with_its_sequence_is_stored_once() {
    let env = TestEnv::new().await;
    let client = client(&env, "gamestream-idempotence-test").await;
    let producer = client
        .controller_client()
        .expect("controller client")
        .init_producer_id()
        .await
        .expect("InitProducerId");
    assert!(producer.id >= 0, "{producer:?}");
    let partition = partition(&client, &env).await;
    let batch = || vec![record(10), record(10), record(10)];

    let first = partition
        .produce_with(batch(), Compression::NoCompression, idempotent(producer, 0))
        .await
        .expect("appended");
    // The same batch again, as after a broken connection: the broker answers with the
    // offsets of the copy it holds and appends nothing.
    let again = partition
        .produce_with(batch(), Compression::NoCompression, idempotent(producer, 0))
        .await
        .expect("a copy is answered, not refused");
    assert_eq!(again.offsets, first.offsets);
    let next = partition
        .produce_with(batch(), Compression::NoCompression, idempotent(producer, 3))
        .await
        .expect("the next sequence is appended");
    assert_eq!(next.offsets[0], first.offsets[2] + 1);
    let end = partition
        .get_offset(OffsetAt::Latest)
        .await
        .expect("high watermark");
    assert_eq!(end, next.offsets[2] + 1, "six records, not nine");

    // A gap (sequence 10 after 5) is refused: nothing from it on is appended.
    let gap = partition
        .produce_with(
            batch(),
            Compression::NoCompression,
            idempotent(producer, 10),
        )
        .await
        .expect_err("a gap is refused");
    assert_eq!(
        protocol_error(&gap),
        Some(ProtocolError::OutOfOrderSequenceNumber),
        "{gap}"
    );
    // The producer's next epoch starts again at sequence 0 (the bump the producer does
    // locally, as Kafka's Java client does for an idempotent producer).
    let bumped = ProducerIdentity {
        id: producer.id,
        epoch: producer.epoch + 1,
    };
    let after_bump = partition
        .produce_with(batch(), Compression::NoCompression, idempotent(bumped, 0))
        .await
        .expect("a new epoch starts at 0");
    assert_eq!(after_bump.offsets[0], end);
    // The old epoch is fenced.
    let fenced = partition
        .produce_with(batch(), Compression::NoCompression, idempotent(producer, 6))
        .await
        .expect_err("the old epoch is fenced");
    assert!(
        matches!(
            protocol_error(&fenced),
            Some(ProtocolError::InvalidProducerEpoch | ProtocolError::ProducerFenced)
        ),
        "{fenced:?}"
    );
}

/// Sets (or, with `None`, removes) a produce quota for `client_id` through Kafka's own
/// `kafka-configs` tool.
async fn set_produce_quota(env: &TestEnv, client_id: &str, bytes_per_second: Option<u64>) {
    let bootstrap = env.config.kafka.bootstrap_servers.join(",");
    let mut args = vec![
        kafka_sh(),
        "tool".into(),
        "configs".into(),
        "--bootstrap-server".into(),
        bootstrap,
        "--alter".into(),
        "--entity-type".into(),
        "clients".into(),
        "--entity-name".into(),
        client_id.into(),
    ];
    match bytes_per_second {
        Some(rate) => args.extend(["--add-config".into(), format!("producer_byte_rate={rate}")]),
        None => args.extend(["--delete-config".into(), "producer_byte_rate".into()]),
    }
    let run = tokio::process::Command::new("bash")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("kafka-configs finishes within 60 s")
        .expect("run kafka-configs");
    assert!(
        out.status.success(),
        "kafka-configs {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_throttled_connection_holds_its_next_request() {
    const QUOTA: u64 = 256 * 1024;
    const BATCH_BYTES: usize = 200 * 1024;
    // Kafka measures a quota over ~10 s windows: ~13 batches pass before it throttles.
    const MAX_BATCHES: usize = 40;
    let env = TestEnv::new().await;
    let client_id = format!("gamestream-quota-{}", unique_id());
    set_produce_quota(&env, &client_id, Some(QUOTA)).await;
    let client = client(&env, &client_id).await;
    let partition = partition(&client, &env).await;
    let start = partition
        .get_offset(OffsetAt::Latest)
        .await
        .expect("high watermark");

    let mut throttled = None;
    let mut sent = 0;
    for _ in 0..MAX_BATCHES {
        let answer = partition
            .produce_with(
                vec![record(BATCH_BYTES)],
                Compression::NoCompression,
                ProduceOptions::default(),
            )
            .await
            .expect("a throttled produce is answered, not failed");
        sent += 1;
        if let Some(throttle) = answer.throttle {
            throttled = Some(throttle);
            break;
        }
    }
    let throttle = throttled.unwrap_or_else(|| {
        panic!("no throttle after {MAX_BATCHES} batches of {BATCH_BYTES} bytes at {QUOTA} B/s")
    });
    // The next request on the connection waits out the throttle before it is sent.
    let began = Instant::now();
    partition
        .produce_with(
            vec![record(10)],
            Compression::NoCompression,
            ProduceOptions::default(),
        )
        .await
        .expect("appended after the throttle");
    let waited = began.elapsed();
    sent += 1;
    set_produce_quota(&env, &client_id, None).await;
    assert!(
        waited >= throttle.mul_f64(0.9),
        "the broker asked for {throttle:?}; the next request went after {waited:?}"
    );
    // Each throttled produce was answered once, not sent again.
    let end = partition
        .get_offset(OffsetAt::Latest)
        .await
        .expect("high watermark");
    assert_eq!(end - start, sent as i64, "records appended once each");
    println!("throttle {throttle:?} after {sent} batches; next request waited {waited:?}");
}
