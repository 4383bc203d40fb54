//! Topics with their configuration, on a private Apache Kafka broker: `topics create`
//! gives each topic of the contract its `retention.ms` (7 days for the raw and processed
//! events, 30 days for the others) and `min.insync.replicas`, as Kafka's own ConfigCommand
//! and our DescribeConfigs both read them back. A topic that already exists and differs
//! (retention changed by an operator, another partition count) is reported, and left as
//! it is. A topic the broker refuses fails with the broker's answer and the topic's name.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use crate::common::{PrivateBroker, eventually, kafka_sh, unique_id};
use gamestream::config::{self, Config, Sources};
use gamestream::kafka::{
    self, KafkaError, MIN_INSYNC_REPLICAS, RETENTION_MS, TopicDifference, TopicReport,
};

const SEVEN_DAYS_MS: &str = "604800000";
const THIRTY_DAYS_MS: &str = "2592000000";

/// The environment a `gamestream` process needs for a configuration on `address`
/// (`topics create` reaches no database and no Redis).
fn env(address: &str) -> Vec<(String, String)> {
    [
        ("KAFKA_BOOTSTRAP_SERVERS", address),
        ("DB_HOST", "127.0.0.1"),
        ("DB_NAME", "unused"),
        ("DB_USER", "unused"),
        ("REDIS_HOST", "127.0.0.1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// `--set` overrides: the contract's topic names under a prefix of this test's own,
/// then `extra`.
fn overrides(id: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut overrides: Vec<(String, String)> = [
        ("topics.player_events", "player.events.raw"),
        ("topics.processed_events", "player.events.processed"),
        ("topics.statistics", "player.statistics"),
        ("topics.leaderboards", "game.leaderboards"),
        ("topics.dlq", "system.dlq"),
    ]
    .into_iter()
    .map(|(k, name)| (k.to_owned(), format!("\"t{id}.{name}\"")))
    .collect();
    overrides.push(("kafka.operation_timeout".into(), "\"10s\"".into()));
    overrides.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    overrides
}

fn load_config(address: &str, overrides: &[(String, String)]) -> Config {
    config::load(&Sources {
        file: None,
        env: env(address),
        overrides: overrides.to_vec(),
    })
    .expect("valid configuration")
}

/// The retention each topic of the contract must have: 7 days for the raw and
/// processed events, 30 days for the others.
fn expected_retention(config: &Config) -> Vec<(String, &'static str)> {
    let t = &config.topics;
    vec![
        (t.player_events.clone(), SEVEN_DAYS_MS),
        (t.processed_events.clone(), SEVEN_DAYS_MS),
        (t.statistics.clone(), THIRTY_DAYS_MS),
        (t.leaderboards.clone(), THIRTY_DAYS_MS),
        (t.dlq.clone(), THIRTY_DAYS_MS),
    ]
}

/// Kafka's ConfigCommand (`kafka.sh tool configs`) against `broker`; its stdout.
async fn config_command(broker: &PrivateBroker, args: &[&str]) -> String {
    let output = tokio::process::Command::new("bash")
        .arg(kafka_sh())
        .args(["tool", "configs", "--bootstrap-server", &broker.address()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("kafka.sh runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "kafka.sh tool configs {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The configs set on `topic` itself, as ConfigCommand's `--describe` lists them
/// (`  name=value sensitive=false synonyms={...}`).
async fn tool_topic_configs(broker: &PrivateBroker, topic: &str) -> BTreeMap<String, String> {
    let out = config_command(
        broker,
        &[
            "--entity-type",
            "topics",
            "--entity-name",
            topic,
            "--describe",
        ],
    )
    .await;
    assert!(
        out.contains(&format!("Dynamic configs for topic {topic} are:")),
        "{out}"
    );
    out.lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next()?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `retention.ms` and `min.insync.replicas` of `topic` through our DescribeConfigs.
async fn described(client: &rskafka::client::Client, topic: &str) -> (String, String) {
    let configs = kafka::topic_configs(client, topic, &[RETENTION_MS, MIN_INSYNC_REPLICAS])
        .await
        .expect("DescribeConfigs answers");
    assert_eq!(configs.len(), 2, "only the keys asked for: {configs:?}");
    let value = |key: &str| {
        configs
            .get(key)
            .cloned()
            .flatten()
            .unwrap_or_else(|| panic!("{topic}: no {key} in {configs:?}"))
    };
    (value(RETENTION_MS), value(MIN_INSYNC_REPLICAS))
}

/// `gamestream topics create` (the built binary) with `overrides`; its stdout.
async fn run_topics_create(address: &str, overrides: &[(String, String)]) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_gamestream"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env(address))
        .args(
            overrides
                .iter()
                .flat_map(|(k, v)| ["--set".to_owned(), format!("{k}={v}")]),
        )
        .args(["topics", "create"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("gamestream runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "topics create failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_sets_retention_and_min_isr_and_reports_a_changed_topic_without_altering_it() {
    let broker = PrivateBroker::start().await;
    let address = broker.address();
    let id = unique_id();
    let overrides = overrides(&id, &[]);
    let config = load_config(&address, &overrides);
    let client = kafka::connect(&config.kafka).await.expect("broker answers");

    // First run, through the binary: every topic is created with its configs.
    let out = run_topics_create(&address, &overrides).await;
    for ((topic, retention), spec) in expected_retention(&config)
        .into_iter()
        .zip(config.topics.specs())
    {
        let line = format!(
            "created  {topic} ({} partitions, min.insync.replicas=1, retention.ms={retention})",
            spec.partitions
        );
        assert!(out.lines().any(|l| l == line), "{line} in {out}");
    }
    assert!(!out.contains("warning"), "{out}");

    // Kafka's own tool and our DescribeConfigs agree on what each topic has.
    for (topic, retention) in expected_retention(&config) {
        let set = tool_topic_configs(&broker, &topic).await;
        assert_eq!(
            set.get(RETENTION_MS).map(String::as_str),
            Some(retention),
            "{topic}: {set:?}"
        );
        assert_eq!(
            set.get(MIN_INSYNC_REPLICAS).map(String::as_str),
            Some("1"),
            "{topic}: {set:?}"
        );
        assert_eq!(
            described(&client, &topic).await,
            (retention.to_owned(), "1".to_owned()),
            "{topic}"
        );
    }
    // Without keys, DescribeConfigs lists every config of the topic.
    let all = kafka::topic_configs(&client, &config.topics.dlq, &[])
        .await
        .expect("DescribeConfigs answers");
    assert_eq!(
        all.get("cleanup.policy").cloned().flatten().as_deref(),
        Some("delete"),
        "{all:?}"
    );
    assert_eq!(
        all.get(RETENTION_MS).cloned().flatten().as_deref(),
        Some(THIRTY_DAYS_MS)
    );

    // An operator shortens the raw topic's retention.
    let raw = config.topics.player_events.clone();
    config_command(
        &broker,
        &[
            "--entity-type",
            "topics",
            "--entity-name",
            &raw,
            "--alter",
            "--add-config",
            "retention.ms=1000",
        ],
    )
    .await;
    let altered = eventually(Duration::from_secs(10), || {
        let (client, raw) = (&client, &raw);
        async move { described(client, raw).await.0 == "1000" }
    })
    .await;
    assert!(altered, "the broker applies the operator's change");

    // The binary again: the difference is a warning line, the exit status success.
    let out = run_topics_create(&address, &overrides).await;
    assert!(
        out.contains(&format!(
            "warning: topic {raw} has retention.ms 1000 (1s), configured {SEVEN_DAYS_MS} \
             (7days); left unchanged"
        )),
        "{out}"
    );
    assert_eq!(out.matches("warning").count(), 1, "{out}");
    assert!(!out.contains("created"), "{out}");

    // The library call, with a partition count that differs from the leaderboard
    // topic's too: both differences are in the reports, nothing else.
    let wider = load_config(
        &address,
        &[
            overrides.clone(),
            vec![("topics.leaderboards_partitions".into(), "2".into())],
        ]
        .concat(),
    );
    let reports = kafka::create_topics(&client, &wider.topics)
        .await
        .expect("create runs again");
    let differences: Vec<(String, Vec<TopicDifference>)> = reports
        .iter()
        .map(|report| match report {
            TopicReport::AlreadyExists {
                name, differences, ..
            } => (name.clone(), differences.clone()),
            other => panic!("every topic exists: {other:?}"),
        })
        .collect();
    let difference = |setting: &str, configured: &str, actual: &str| TopicDifference {
        setting: setting.to_owned(),
        configured: configured.to_owned(),
        actual: actual.to_owned(),
    };
    let t = &config.topics;
    assert_eq!(
        differences,
        vec![
            (
                t.player_events.clone(),
                vec![difference(RETENTION_MS, SEVEN_DAYS_MS, "1000")]
            ),
            (t.processed_events.clone(), vec![]),
            (t.statistics.clone(), vec![]),
            (
                t.leaderboards.clone(),
                vec![difference("partitions", "2", "1")]
            ),
            (t.dlq.clone(), vec![]),
        ]
    );

    // Nothing was changed back: the operator's retention and the partition count stand.
    let set = tool_topic_configs(&broker, &raw).await;
    assert_eq!(
        set.get(RETENTION_MS).map(String::as_str),
        Some("1000"),
        "{set:?}"
    );
    assert_eq!(described(&client, &raw).await, ("1000".into(), "1".into()));
    assert_eq!(
        kafka::partition_count(&client, &t.leaderboards)
            .await
            .expect("topic exists"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_the_broker_refuses_fails_with_its_answer_and_the_topic() {
    let broker = PrivateBroker::start().await;
    let address = broker.address();
    let id = unique_id();
    // Replication 3 on a single broker: Kafka refuses the first topic.
    let overrides = overrides(&id, &[("topics.replication_factor", "3")]);
    let config = load_config(&address, &overrides);
    let client = kafka::connect(&config.kafka).await.expect("broker answers");

    let error = kafka::create_topics(&client, &config.topics)
        .await
        .expect_err("the broker refuses");
    let raw = &config.topics.player_events;
    let text = error.to_string();
    match &error {
        KafkaError::TopicRefused {
            topic,
            error: protocol_error,
            ..
        } => {
            assert_eq!(topic, raw);
            assert_eq!(
                *protocol_error,
                rskafka::client::error::ProtocolError::InvalidReplicationFactor
            );
        }
        other => panic!("not a refusal: {other:?}"),
    }
    assert!(
        text.contains(&format!("refused to create topic `{raw}`"))
            && text.contains("InvalidReplicationFactor")
            && text.contains("replication factor of 3"),
        "the broker's answer and the topic are named: {text}"
    );

    // The binary says the same on stderr and fails.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_gamestream"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env(&address))
        .args(
            overrides
                .iter()
                .flat_map(|(k, v)| ["--set".to_owned(), format!("{k}={v}")]),
        )
        .args(["topics", "create"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("gamestream runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "refused to create topic `{raw}`: InvalidReplicationFactor"
        )),
        "{stderr}"
    );
    assert!(
        kafka::list_topics(&client)
            .await
            .expect("topics")
            .iter()
            .all(|(name, _)| !name.starts_with(&format!("t{id}."))),
        "nothing was created"
    );
}
