//! The old consumer groups in Kafka, as Kafka's own tools see them.
//!
//! The daemon mirrors its sinks' committed offsets into `event-logger-group`,
//! `stats-aggregator-group` and `leaderboard-manager-group` (behind a prefix of the
//! test's own, `group_offsets.group_prefix`, so that tests sharing the broker never meet).
//! After a drain, Kafka's `ConsumerGroupCommand --describe` (the class behind
//! `kafka-consumer-groups.sh`, from the `kafka-tools` jar) must show every partition of the
//! topic at lag 0 in all three groups; and a group that has a live member (Kafka's
//! console consumer, standing for an old consumer still running) must not be written,
//! and `/ready` must say so, until the member leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use gamestream::catalogue::LEGACY_GROUPS;
use gamestream::kafka;
use serde_json::Value;

use crate::common::analytics::wait_all_caught_up;
use crate::common::cluster::PrivateCluster;
use crate::common::ingest::TestServer;
use crate::common::{
    RawRecord, TestEnv, eventually, high_watermarks, kafka_sh, produce_raw, sample_event, unique_id,
};

/// How long the mirror may take to bring a group up to date (interval 1 s here).
const MIRROR_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the pipeline may take to drain the test's events.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);

/// A test env whose groups are named `<prefix><old name>`, mirrored every second.
async fn env_with_group_prefix() -> (TestEnv, String) {
    env_mirrored_every("\"1s\"").await
}

/// A test env whose groups are named `<prefix><old name>`, mirrored every `interval`.
async fn env_mirrored_every(interval: &str) -> (TestEnv, String) {
    let prefix = format!("t{}-", unique_id());
    let quoted = format!("\"{prefix}\"");
    let env = TestEnv::with_overrides(&[
        ("group_offsets.group_prefix", quoted.as_str()),
        ("group_offsets.interval", interval),
    ])
    .await;
    (env, prefix)
}

/// Produces events on every partition of the raw topic; returns the high watermarks.
async fn produce_everywhere(env: &TestEnv) -> Vec<i64> {
    let topic = &env.config.topics.player_events;
    let records: Vec<RawRecord> = (0..600)
        .map(|i| RawRecord::of(&sample_event(i, 300, 5)))
        .collect();
    produce_raw(&env.config, topic, &records).await;
    let marks = high_watermarks(&env.config, topic).await;
    assert!(
        marks.iter().all(|&m| m > 0),
        "600 events over 300 players reach every partition: {marks:?}"
    );
    marks
}

/// The offsets `group` holds in Kafka for the raw topic (OffsetFetch through rskafka).
async fn group_offsets_in_kafka(env: &TestEnv, group: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let client = kafka::connect(&env.config.kafka).await.expect("kafka");
    let topic = env.config.topics.player_events.clone();
    let asked = BTreeMap::from([(topic.clone(), (0..partitions).collect::<Vec<_>>())]);
    let mut offsets = client
        .group_client(group)
        .fetch_offsets(&asked)
        .await
        .expect("OffsetFetch");
    offsets.remove(&topic).unwrap_or_default()
}

/// Waits until `group` holds `marks` in Kafka.
async fn wait_group_at(env: &TestEnv, group: &str, marks: &[i64]) -> bool {
    let expected: BTreeMap<i32, i64> = marks
        .iter()
        .enumerate()
        .map(|(p, &m)| (p as i32, m))
        .collect();
    eventually(MIRROR_TIMEOUT, || {
        let expected = expected.clone();
        async move { group_offsets_in_kafka(env, group, marks.len() as i32).await == expected }
    })
    .await
}

/// One partition's line of `ConsumerGroupCommand --describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DescribedPartition {
    partition: i32,
    current_offset: String,
    log_end_offset: String,
    lag: String,
}

/// Runs Kafka's `ConsumerGroupCommand --describe --group group`; its lines for `topic`
/// and its whole output.
async fn describe_with_kafka_tool(
    env: &TestEnv,
    group: &str,
    topic: &str,
) -> (Vec<DescribedPartition>, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("bash")
            .arg(kafka_sh())
            .args([
                "tool",
                "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                "--bootstrap-server",
                &env.stack.kafka,
                "--describe",
                "--group",
                group,
            ])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("ConsumerGroupCommand finishes within 60 s")
    .expect("kafka.sh runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "ConsumerGroupCommand --describe --group {group} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID
    let rows = stdout
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 6 && fields[0] == group && fields[1] == topic).then(|| {
                DescribedPartition {
                    partition: fields[2].parse().expect("a partition number"),
                    current_offset: fields[3].to_owned(),
                    log_end_offset: fields[4].to_owned(),
                    lag: fields[5].to_owned(),
                }
            })
        })
        .collect();
    (rows, stdout)
}

/// `ConsumerGroupCommand` shows `group` at lag 0 on every partition, at the marks.
async fn assert_tool_shows_lag_zero(env: &TestEnv, group: &str, marks: &[i64]) {
    let topic = &env.config.topics.player_events;
    let (rows, output) = describe_with_kafka_tool(env, group, topic).await;
    let partitions: BTreeSet<i32> = rows.iter().map(|r| r.partition).collect();
    assert_eq!(
        partitions,
        (0..marks.len() as i32).collect::<BTreeSet<_>>(),
        "every partition of {topic} in {group}:\n{output}"
    );
    for row in &rows {
        let mark = marks[row.partition as usize].to_string();
        assert_eq!(
            (
                row.current_offset.as_str(),
                row.log_end_offset.as_str(),
                row.lag.as_str()
            ),
            (mark.as_str(), mark.as_str(), "0"),
            "partition {} of {group}:\n{output}",
            row.partition
        );
    }
}

async fn ready(server: &TestServer) -> Value {
    server.get("/ready").await.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_tools_show_the_old_groups_at_lag_zero_after_a_drain() {
    let (env, prefix) = env_with_group_prefix().await;
    let marks = produce_everywhere(&env).await;
    let server = TestServer::start(env.config.clone()).await;
    let mut redis = env.redis().await;
    assert!(
        wait_all_caught_up(&env, &mut redis, DRAIN_TIMEOUT).await,
        "the sinks drain the topic"
    );

    for legacy in LEGACY_GROUPS {
        let group = format!("{prefix}{legacy}");
        assert!(
            wait_group_at(&env, &group, &marks).await,
            "{group} holds the sinks' positions {marks:?} in Kafka, got {:?}",
            group_offsets_in_kafka(&env, &group, marks.len() as i32).await
        );
        assert_tool_shows_lag_zero(&env, &group, &marks).await;
    }

    let body = ready(&server).await;
    for legacy in LEGACY_GROUPS {
        let group = format!("{prefix}{legacy}");
        assert_eq!(
            body["group_offsets"][&group]["state"], "mirrored",
            "/ready: {body}"
        );
    }
    server.stop().await;
}

/// A graceful stop mirrors once more after the pipeline drained (and released its
/// leases): with an interval longer than the test, only that final round can bring the
/// groups to the sinks' positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_mirrors_the_last_positions() {
    let (env, prefix) = env_mirrored_every("\"10m\"").await;
    let marks = produce_everywhere(&env).await;
    let server = TestServer::start(env.config.clone()).await;
    let mut redis = env.redis().await;
    assert!(
        wait_all_caught_up(&env, &mut redis, DRAIN_TIMEOUT).await,
        "the sinks drain the topic"
    );
    server.stop().await;
    let expected: BTreeMap<i32, i64> = marks
        .iter()
        .enumerate()
        .map(|(p, &m)| (p as i32, m))
        .collect();
    for legacy in LEGACY_GROUPS {
        let group = format!("{prefix}{legacy}");
        assert_eq!(
            group_offsets_in_kafka(&env, &group, marks.len() as i32).await,
            expected,
            "{group} after the stop"
        );
    }
}

/// Kafka's console consumer as a live member of `group`, subscribed to `topic`, with the
/// group protocol `protocol` (`classic`, or `consumer`: KIP-848), for at most 3 minutes.
fn spawn_console_consumer(
    env: &TestEnv,
    group: &str,
    topic: &str,
    protocol: &str,
) -> tokio::process::Child {
    let protocol = format!("group.protocol={protocol}");
    tokio::process::Command::new("bash")
        .arg(kafka_sh())
        .args([
            "tool",
            "console-consumer",
            "--bootstrap-server",
            &env.stack.kafka,
            "--topic",
            topic,
            "--group",
            group,
            "--consumer-property",
            &protocol,
            "--timeout-ms",
            "180000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("kafka.sh tool console-consumer starts")
}

/// Whether `group` has a member, as Kafka's `ConsumerGroupCommand --describe --members`
/// lists them (any group protocol).
async fn has_members(env: &TestEnv, group: &str) -> bool {
    let output = tokio::process::Command::new("bash")
        .arg(kafka_sh())
        .args([
            "tool",
            "groups",
            "--bootstrap-server",
            &env.stack.kafka,
            "--describe",
            "--members",
            "--group",
            group,
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("kafka.sh runs");
    // GROUP CONSUMER-ID HOST CLIENT-ID #PARTITIONS
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|line| line.split_whitespace().next() == Some(group))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_a_live_member_is_not_written_and_ready_says_so() {
    live_member_is_respected("classic").await;
}

/// The same with a consumer of the new group protocol (KIP-848), which DescribeGroups
/// does not describe: the coordinator's refusal of the commit stands for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_a_live_member_of_the_new_protocol_is_not_written() {
    live_member_is_respected("consumer").await;
}

async fn live_member_is_respected(protocol: &str) {
    let (env, prefix) = env_with_group_prefix().await;
    let occupied = format!("{prefix}event-logger-group");
    // The member consumes another topic (the empty dead-letter one): whatever it
    // commits is not for the raw topic, whose offsets in the group must stay absent.
    let mut consumer = spawn_console_consumer(&env, &occupied, &env.config.topics.dlq, protocol);
    assert!(
        eventually(Duration::from_secs(90), || has_members(&env, &occupied)).await,
        "the console consumer joins {occupied}"
    );

    let marks = produce_everywhere(&env).await;
    let server = TestServer::start(env.config.clone()).await;
    let mut redis = env.redis().await;
    assert!(
        wait_all_caught_up(&env, &mut redis, DRAIN_TIMEOUT).await,
        "the sinks drain the topic"
    );
    // The other groups are mirrored meanwhile.
    for legacy in ["stats-aggregator-group", "leaderboard-manager-group"] {
        let group = format!("{prefix}{legacy}");
        assert!(
            wait_group_at(&env, &group, &marks).await,
            "{group} is mirrored"
        );
    }
    assert_ready_state(&server, &occupied, "live_members").await;
    let answer = server.get("/ready").await;
    let body = answer.json();
    assert_eq!(
        body["status"], "ready",
        "live members do not make the daemon unready: {body}"
    );
    let members = body["group_offsets"][&occupied]["members"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(members.len(), 1, "the console consumer is named: {body}");
    assert!(
        group_offsets_in_kafka(&env, &occupied, marks.len() as i32)
            .await
            .is_empty(),
        "{occupied} was written while it had a member"
    );

    // The member leaves (SIGTERM: the console consumer closes and leaves the group):
    // mirroring resumes.
    let pid = consumer.id().expect("the console consumer runs");
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .expect("kill runs");
    assert!(status.success(), "kill -TERM {pid}");
    let _ = tokio::time::timeout(Duration::from_secs(30), consumer.wait()).await;
    assert!(
        wait_group_at(&env, &occupied, &marks).await,
        "{occupied} is mirrored once its member left"
    );
    assert_ready_state(&server, &occupied, "mirrored").await;
    server.stop().await;
}

/// Waits until `/ready` shows `group` in `state` (`mirrored`, `live_members`, ...).
async fn assert_ready_state(server: &TestServer, group: &str, state: &str) {
    assert!(
        eventually(MIRROR_TIMEOUT, || async {
            ready(server).await["group_offsets"][group]["state"] == state
        })
        .await,
        "/ready does not show {group} as {state}: {}",
        ready(server).await
    );
}

/// The partition of `__consumer_offsets` holding `group` (Kafka's
/// `Utils.abs(groupId.hashCode()) % offsets.topic.num.partitions`, where `Utils.abs`
/// maps `i32::MIN` to 0): its leader is the group's coordinator.
fn offsets_partition(group: &str, partitions: i32) -> i32 {
    let hash = group
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    hash.checked_abs().unwrap_or(0) % partitions
}

/// The group client finds the coordinator again when it moves: after a controlled
/// move (preferred leader election of the group's `__consumer_offsets` partition: the
/// old coordinator, still up, answers NOT_COORDINATOR) and after the coordinator is
/// killed (a broken connection, then COORDINATOR_LOAD_IN_PROGRESS while the new one
/// loads the group), on a three-node Apache Kafka cluster of the test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_client_follows_its_coordinator() {
    const OFFSETS_TOPIC: &str = "__consumer_offsets";
    // deploy/local/kafka.sh sets offsets.topic.num.partitions=10.
    const OFFSETS_PARTITIONS: i32 = 10;
    let cluster = PrivateCluster::start(false).await;
    let brokers = cluster.bootstrap().split(',').map(str::to_owned).collect();
    let client = rskafka::client::ClientBuilder::new(brokers)
        .backoff_config(rskafka::BackoffConfig {
            deadline: Some(Duration::from_secs(60)),
            ..Default::default()
        })
        .build()
        .await
        .expect("cluster");
    let topic = format!("t{}", unique_id());
    client
        .controller_client()
        .expect("controller")
        .create_topic(&topic, 1, 3, 30_000)
        .await
        .expect("topic");
    let group_name = format!("g{}", unique_id());
    let group = client.group_client(&group_name);
    let commit_and_read = |offset: i64| {
        let group = &group;
        let topic = topic.clone();
        async move {
            let offsets = BTreeMap::from([(topic.clone(), BTreeMap::from([(0, offset)]))]);
            group.commit_offsets(&offsets).await.expect("commit");
            let asked = BTreeMap::from([(topic.clone(), vec![0])]);
            let read = group.fetch_offsets(&asked).await.expect("fetch");
            assert_eq!(read, offsets, "committed {offset}");
        }
    };
    commit_and_read(5).await;

    let partition = offsets_partition(&group_name, OFFSETS_PARTITIONS);
    assert!(
        cluster
            .wait_full_isr(OFFSETS_TOPIC, Duration::from_secs(60))
            .await,
        "{OFFSETS_TOPIC} has no full ISR"
    );
    let coordinator = cluster
        .leader_of(OFFSETS_TOPIC, partition)
        .await
        .expect("the group's coordinator");
    let successor = cluster
        .describe(OFFSETS_TOPIC)
        .await
        .and_then(|ps| ps.into_iter().find(|p| p.partition == partition))
        .and_then(|p| p.isr.into_iter().find(|n| *n != coordinator))
        .expect("another in-sync replica");
    cluster
        .make_preferred(OFFSETS_TOPIC, partition, successor)
        .await;
    cluster.elect_preferred_leaders(OFFSETS_TOPIC).await;
    assert_eq!(
        cluster.leader_of(OFFSETS_TOPIC, partition).await,
        Some(successor),
        "the election moved the coordinator"
    );
    commit_and_read(7).await;
    assert_eq!(
        group.describe().await.expect("describe").state,
        "Empty",
        "the group has offsets and no members"
    );

    cluster.kill(successor).await;
    commit_and_read(9).await;
}
