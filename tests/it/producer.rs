//! The batching producer on its own, against the real broker: batching, a lone record
//! sent at once, offsets, extensible headers, the in-flight bound (on a private broker
//! that is frozen), and the flush on close.

use std::sync::Arc;
use std::time::Duration;

use crate::common::ingest::consume_all;
use crate::common::{PrivateBroker, TestEnv};
use gamestream::config::Config;
use gamestream::event::{Event, parse_submission};
use gamestream::kafka::{
    self, KafkaProducer, ProduceError, ProducerRecord, ProducerTasks, partition_for_key,
};

fn event(player: &str, pad: usize) -> Event {
    let mut body = format!(
        r#"{{"event_type":"player_score","player_id":"{player}","game_id":"g","timestamp":"2024-01-15T10:30:00Z","data":{{"score":1,"pad":"{}"}}}}"#,
        "x".repeat(pad)
    )
    .into_bytes();
    parse_submission(&mut body)
        .expect("valid")
        .accept(chrono::Utc::now())
}

async fn producer(config: &Config) -> (KafkaProducer, ProducerTasks) {
    // The metric handles are registered when the producer starts: install the recorder first.
    gamestream::telemetry::metrics_handle();
    let metadata = kafka::connect(&config.kafka).await.expect("kafka connects");
    let client = Arc::new(
        kafka::connect_producer(&config.kafka)
            .await
            .expect("kafka connects"),
    );
    KafkaProducer::start(
        &metadata,
        client,
        &config.topics.player_events,
        &config.producer,
    )
    .await
    .expect("producer starts")
}

#[tokio::test]
async fn concurrent_publishes_share_produce_requests() {
    let env = TestEnv::with_overrides(&[("producer.linger", "\"50ms\"")]).await;
    let (producer, tasks) = producer(&env.config).await;
    let events: Vec<Event> = (0..300).map(|i| event(&format!("player-{i}"), 0)).collect();
    let sends = events.iter().map(|e| producer.publish(e));
    let offsets = futures::future::join_all(sends).await;
    assert!(offsets.iter().all(Result::is_ok), "{offsets:?}");
    tasks.close().await;

    let text = gamestream::telemetry::metrics_handle().render();
    let topic = format!(r#"topic="{}""#, env.config.topics.player_events);
    let total = |series: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(series) && l.contains(&topic))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    };
    let (requests, records) = (
        total("producer_batch_records_count"),
        total("producer_batch_records_sum"),
    );
    assert_eq!(records, 300.0, "{text}");
    assert!(
        requests <= 30.0,
        "300 concurrent records took {requests} produce requests"
    );
    assert_eq!(consume_all(&env.config).await.len(), 300);
}

#[tokio::test]
async fn a_lone_record_is_sent_at_once_whatever_the_linger() {
    // `linger` bounds only a wait behind in-flight requests: with nothing in flight a
    // record goes at once. A record that waited for this linger would get a Timeout.
    let env = TestEnv::with_overrides(&[
        ("producer.linger", "\"1h\""),
        ("producer.publish_timeout", "\"60s\""),
    ])
    .await;
    let (producer, tasks) = producer(&env.config).await;
    let mut offsets = Vec::new();
    for i in 0..3 {
        // One after another, each alone on an idle producer (the first one also waits
        // for the idempotent producer's id).
        let offset = producer
            .publish(&event("lone", i))
            .await
            .expect("acknowledged without waiting for the linger");
        offsets.push(offset);
    }
    assert_eq!(offsets, [0, 1, 2], "one partition, one record per request");
    assert_eq!(producer.in_flight_bytes(), 0, "nothing left waiting");
    tasks.close().await;
    assert_eq!(consume_all(&env.config).await.len(), 3);
}

#[tokio::test]
async fn offsets_are_per_partition_and_headers_can_be_extended() {
    let env = TestEnv::new().await;
    let (producer, tasks) = producer(&env.config).await;
    // One player: one partition, consecutive offsets in the order of the request.
    let records: Vec<ProducerRecord> = (0..50)
        .map(|_| ProducerRecord::from_event(&event("solo", 0)))
        .collect();
    let results = producer.send_all(records).await;
    let offsets: Vec<i64> = results
        .into_iter()
        .map(|r| r.expect("acknowledged"))
        .collect();
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");

    let mut record = ProducerRecord::from_event(&event("traced", 0));
    record.headers.insert(
        "traceparent".to_owned(),
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec(),
    );
    let offset = producer.send(record).await.expect("acknowledged");
    tasks.close().await;

    let consumed = consume_all(&env.config).await;
    assert_eq!(consumed.len(), 51);
    let traced = consumed
        .iter()
        .find(|r| r.key.as_deref() == Some(b"traced".as_slice()))
        .expect("traced record");
    assert_eq!(traced.offset, offset);
    assert_eq!(traced.partition, partition_for_key(b"traced", 3));
    assert_eq!(
        traced.header("traceparent").as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(traced.header("event_type").as_deref(), Some("player_score"));
    let solo: Vec<i64> = consumed
        .iter()
        .filter(|r| r.key.as_deref() == Some(b"solo".as_slice()))
        .map(|r| r.offset)
        .collect();
    assert_eq!(solo, offsets);
}

#[tokio::test]
async fn the_in_flight_bound_fails_fast_and_close_flushes_what_is_queued() {
    // Records hold their bytes until the broker answers: a private broker, frozen. The
    // first record is in flight (waiting for the broker), the second queued behind it
    // (a long linger: it waits for the first), together above half the bound.
    let broker = PrivateBroker::start().await;
    let bootstrap = format!("\"{}\"", broker.address());
    let env = TestEnv::with_overrides(&[
        ("kafka.bootstrap_servers", &bootstrap),
        ("producer.linger", "\"1h\""),
        ("producer.max_in_flight_bytes", "3000"),
        ("producer.publish_timeout", "\"120s\""),
    ])
    .await;
    let (producer, tasks) = producer(&env.config).await;
    broker.freeze();
    let (first, second) = (event("p-1", 1000), event("p-1", 1000));
    let waiting: Vec<_> = [&first, &second]
        .into_iter()
        .map(|e| {
            let (producer, e) = (producer.clone(), e.clone());
            tokio::spawn(async move { producer.publish(&e).await })
        })
        .collect();
    assert!(
        crate::common::eventually(Duration::from_secs(5), || async {
            producer.in_flight_bytes() > 2000
        })
        .await,
        "both records hold their bytes"
    );
    let started = std::time::Instant::now();
    let third = producer.publish(&event("p-2", 1000)).await;
    assert_eq!(third, Err(ProduceError::Overloaded { limit: 3000 }));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once, not after a wait"
    );
    assert!(matches!(
        producer.publish(&event("p-3", 4000)).await,
        Err(ProduceError::TooLarge { .. })
    ));

    // Once the broker answers, the queued record follows the first (not after the
    // linger), and closing waits for both answers.
    broker.thaw();
    tasks.close().await;
    let mut offsets = Vec::new();
    for task in waiting {
        let offset = task.await.expect("task").expect("flushed and acknowledged");
        offsets.push(offset);
    }
    assert_eq!(offsets, [0, 1], "in order, behind each other");
    assert_eq!(producer.in_flight_bytes(), 0);
    assert_eq!(
        producer.publish(&event("p-4", 0)).await,
        Err(ProduceError::Closed)
    );

    let consumed = consume_all(&env.config).await;
    let stored: Vec<(i64, String)> = consumed.iter().map(|r| (r.offset, r.event_id())).collect();
    assert_eq!(
        stored,
        [
            (0, first.event_id.to_string()),
            (1, second.event_id.to_string())
        ]
    );
}

#[tokio::test]
async fn a_missing_topic_is_reported_at_start() {
    let env = TestEnv::new().await;
    let client = Arc::new(
        kafka::connect(&env.config.kafka)
            .await
            .expect("kafka connects"),
    );
    let err = KafkaProducer::start(
        &client,
        Arc::clone(&client),
        "no.such.topic.here",
        &env.config.producer,
    )
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("no.such.topic.here"), "{err}");
}
