//! The broker stops and comes back: ingestion answers 503 (fast once the in-flight
//! bound is reached) while it is gone, memory held by the producer returns to zero, and
//! publishing resumes by itself. No acknowledged event is lost.
//!
//! Runs against a private Apache Kafka broker (the shared stack's broker must never be stopped).
//! Its memory storage starts empty after a restart, so events acknowledged before the
//! stop are checked on the broker before stopping it, and the topics are created again
//! after the restart, as a durable broker would still have them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::ingest::{Answer, TestServer, consume_all, event_json};
use crate::common::{PrivateBroker, TestEnv};
use gamestream::kafka;

const EVENTS: &str = "/api/v1/events";

async fn post_many(server: &TestServer, prefix: &str, n: usize) -> Vec<(Answer, Duration)> {
    let posts = (0..n).map(|i| async move {
        let started = Instant::now();
        let answer = server
            .post(
                EVENTS,
                &event_json("player_score", &format!("{prefix}-{i}"), r#"{"score":5}"#),
            )
            .await;
        (answer, started.elapsed())
    });
    futures::future::join_all(posts).await
}

fn acked_ids(answers: &[(Answer, Duration)]) -> BTreeSet<String> {
    answers
        .iter()
        .map(|(a, _)| {
            assert_eq!(a.status, 200, "{}", a.text);
            a.json()["event_id"].as_str().expect("event_id").to_owned()
        })
        .collect()
}

fn in_flight_bytes(metrics: &str, topic: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("producer_in_flight_bytes") && l.contains(&format!(r#"topic="{topic}""#))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn broker_outage_gives_503_then_recovers_without_losing_acknowledged_events() {
    let mut broker = PrivateBroker::start().await;
    let bootstrap = format!("\"{}\"", broker.address());
    let env = TestEnv::with_overrides(&[
        ("mode", "\"ingest\""),
        ("kafka.bootstrap_servers", &bootstrap),
        ("kafka.operation_timeout", "\"2s\""),
        ("producer.publish_timeout", "\"2s\""),
        // About 50 events of this test's size.
        ("producer.max_in_flight_bytes", "20000"),
    ])
    .await;
    let topic = env.config.topics.player_events.clone();
    let server = TestServer::start(env.config.clone()).await;

    // Before: acknowledged events are on the broker.
    let before = acked_ids(&post_many(&server, "before", 30).await);
    let on_topic: BTreeSet<String> = consume_all(&env.config)
        .await
        .iter()
        .map(|r| r.event_id())
        .collect();
    assert_eq!(on_topic, before);

    // During: the broker hangs (SIGSTOP: connections open, no answers). Every request is
    // answered 503 with Retry-After; once the bound is reached the refusal is immediate
    // instead of waiting for the broker. (A broker that is gone refuses connections at
    // once, so its requests fail fast and never fill the bound.)
    broker.freeze();
    let during = post_many(&server, "during", 120).await;
    let mut overloaded = 0;
    for (answer, took) in &during {
        assert_eq!(answer.status, 503, "{}", answer.text);
        assert_eq!(answer.header("retry-after"), Some("1"));
        let error = answer.error();
        if error.contains("overloaded") {
            overloaded += 1;
            assert!(
                *took < Duration::from_millis(500),
                "an overloaded refusal took {took:?}"
            );
        } else {
            assert!(
                error.contains("did not acknowledge") || error.contains("broker failed"),
                "{error}"
            );
            assert!(
                *took < Duration::from_secs(4),
                "publish_timeout is 2s, took {took:?}"
            );
        }
    }
    assert!(
        overloaded >= 50,
        "only {overloaded} of 120 were refused at the in-flight bound"
    );
    // Nothing stays held: every record's bytes are released once its attempt ended.
    let released = crate::common::eventually(Duration::from_secs(15), || async {
        in_flight_bytes(&server.get("/metrics").await.text, &topic) == Some(0.0)
    })
    .await;
    assert!(released, "in-flight bytes did not return to 0");

    // After: the hung broker is killed and started again (with its topics); publishing
    // resumes by itself.
    broker.stop().await;
    broker.restart().await;
    let client = kafka::connect(&env.config.kafka)
        .await
        .expect("kafka connects");
    kafka::create_topics(&client, &env.config.topics)
        .await
        .expect("topics created again");
    let resumed = crate::common::eventually(Duration::from_secs(30), || async {
        server
            .post(EVENTS, &event_json("player_score", "probe", "{}"))
            .await
            .status
            == 200
    })
    .await;
    assert!(
        resumed,
        "publishing did not resume after the broker came back"
    );
    let after = acked_ids(&post_many(&server, "after", 30).await);
    let on_topic: BTreeSet<String> = consume_all(&env.config)
        .await
        .iter()
        .map(|r| r.event_id())
        .collect();
    assert!(
        after.is_subset(&on_topic),
        "acknowledged after the restart but missing: {:?}",
        after.difference(&on_topic)
    );
    server.stop().await;
    broker.stop().await;
}
