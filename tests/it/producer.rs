//! The batching producer on its own, against the real broker: batching, offsets,
//! extensible headers, the in-flight bound, and the flush on close.

use std::sync::Arc;
use std::time::Duration;

use crate::common::TestEnv;
use crate::common::ingest::consume_all;
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
    // A long linger keeps accepted records queued, holding their bytes.
    let env = TestEnv::with_overrides(&[
        ("producer.linger", "\"60s\""),
        ("producer.max_in_flight_bytes", "2000"),
        ("producer.publish_timeout", "\"120s\""),
    ])
    .await;
    let (producer, tasks) = producer(&env.config).await;
    let first = event("p-1", 1000);
    let waiting = {
        let producer = producer.clone();
        let first = first.clone();
        tokio::spawn(async move { producer.publish(&first).await })
    };
    assert!(
        crate::common::eventually(Duration::from_secs(5), || async {
            producer.in_flight_bytes() > 1000
        })
        .await,
        "the first record holds its bytes"
    );
    let started = std::time::Instant::now();
    let second = producer.publish(&event("p-2", 1000)).await;
    assert_eq!(second, Err(ProduceError::Overloaded { limit: 2000 }));
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "refused at once, not after a wait"
    );
    assert!(matches!(
        producer.publish(&event("p-3", 3000)).await,
        Err(ProduceError::TooLarge { .. })
    ));

    // Closing sends the queued record without waiting for the linger, and answers it.
    let started = std::time::Instant::now();
    tasks.close().await;
    let offset = waiting
        .await
        .expect("task")
        .expect("the queued record was flushed and acknowledged");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(producer.in_flight_bytes(), 0);
    assert_eq!(
        producer.publish(&event("p-4", 0)).await,
        Err(ProduceError::Closed)
    );

    let consumed = consume_all(&env.config).await;
    assert_eq!(consumed.len(), 1);
    assert_eq!(
        (consumed[0].offset, consumed[0].event_id()),
        (offset, first.event_id.to_string())
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
