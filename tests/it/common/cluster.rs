//! A private three-node Apache Kafka cluster for leader-failover tests: KRaft, every node
//! a combined controller and broker, replication factor 3, `min.insync.replicas=2`,
//! all through `deploy/local/kafka.sh cluster up` in a temporary directory on free
//! loopback ports. Nodes can be killed (SIGKILL) and restarted one at a time, and
//! leadership moved on purpose (preferred leader election). Every node is killed when
//! the cluster is dropped; and `--watch-pid` stops them if the test process dies
//! without dropping it.
//!
//! Partition state (leader, replicas, in-sync replicas) comes from TopicCommand
//! `--describe`: rskafka's metadata does not say who leads. A tool run takes ~1.5 s.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::kafka_sh;

/// Nodes of the cluster (`node1` .. `node3`, node ids 1..=3).
pub const NODES: i32 = 3;
/// How long one `kafka.sh` call (a node start, a tool run) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(150);

/// One partition of a topic as the cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub partition: i32,
    /// `None` while the partition has no leader.
    pub leader: Option<i32>,
    /// The assigned replicas; the first is the preferred leader.
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

impl PartitionState {
    pub fn preferred(&self) -> Option<i32> {
        self.replicas.first().copied()
    }
}

/// Three Apache Kafka nodes of the test's own.
pub struct PrivateCluster {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    bootstrap: String,
}

impl PrivateCluster {
    /// Starts the cluster and waits until every node has started. `keep_dir` keeps its
    /// directory (configs, `server.log` of each node) after the test.
    pub async fn start(keep_dir: bool) -> Self {
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("gs-cluster-")
                .disable_cleanup(keep_dir)
                .tempdir()
                .expect("tempdir");
            let path = dir.path().to_owned();
            let mut cluster = Self {
                dir: Some(dir),
                path,
                bootstrap: String::new(),
            };
            let base = free_port_run(2 * NODES as u16);
            let pid = std::process::id().to_string();
            let base = base.to_string();
            let mut args = vec![
                "cluster",
                "up",
                "--dir",
                path_str(&cluster.path),
                "--nodes",
                "3",
                "--base-port",
                &base,
                "--heap",
                "384m",
                "--watch-pid",
                &pid,
                "--timeout",
                "120",
            ];
            for setting in [
                // A killed node is fenced (and its partitions get new leaders) after 3 s
                // instead of 6, and may register again sooner when restarted.
                "broker.session.timeout.ms=3000",
                "broker.heartbeat.interval.ms=500",
                // Leadership moves only when the test moves it.
                "auto.leader.rebalance.enable=false",
            ] {
                args.extend(["--set", setting]);
            }
            let out = run_kafka_sh(&args).await;
            match out.status.code() {
                Some(0) => {
                    cluster.bootstrap = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                    return cluster;
                }
                // A port was taken meanwhile: other ports (dropping `cluster` kills what started).
                Some(4) => continue,
                _ => panic!(
                    "kafka.sh cluster up failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        }
        panic!("kafka.sh cluster up: no free ports after 5 attempts");
    }

    /// `host:port,host:port,host:port` for `kafka.bootstrap_servers`.
    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    /// The directory of a node (its `server.log`, `kafka.out`, ...).
    pub fn node_dir(&self, node: i32) -> PathBuf {
        self.path.join(format!("node{node}"))
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// Every partition of `topic`: leader, replicas, in-sync replicas (TopicCommand
    /// `--describe`); `None` if the tool failed (no node answered).
    pub async fn describe(&self, topic: &str) -> Option<Vec<PartitionState>> {
        let out = run_kafka_sh(&[
            "tool",
            "topics",
            "--bootstrap-server",
            &self.bootstrap,
            "--describe",
            "--topic",
            topic,
        ])
        .await;
        if !out.status.success() {
            return None;
        }
        let partitions = parse_describe(&String::from_utf8_lossy(&out.stdout));
        (!partitions.is_empty()).then_some(partitions)
    }

    /// The leader of `topic`'s `partition`, `None` if it has none or the tool failed.
    pub async fn leader_of(&self, topic: &str, partition: i32) -> Option<i32> {
        self.describe(topic)
            .await?
            .into_iter()
            .find(|p| p.partition == partition)?
            .leader
    }

    /// Kills `node` with SIGKILL (a crash) and waits until it is gone.
    pub async fn kill(&self, node: i32) {
        let dir = self.node_dir(node);
        let out = run_kafka_sh(&["stop", "--dir", path_str(&dir), "--kill"]).await;
        assert!(
            out.status.success(),
            "kafka.sh stop --kill node {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `node` again with its settings and data; waits until it has started.
    pub async fn restart(&self, node: i32) {
        let dir = self.node_dir(node);
        let pid = std::process::id().to_string();
        let out = run_kafka_sh(&[
            "restart",
            "--dir",
            path_str(&dir),
            "--watch-pid",
            &pid,
            "--timeout",
            "120",
        ])
        .await;
        assert!(
            out.status.success(),
            "kafka.sh restart node {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until every partition of `topic` has all its replicas in sync; returns
    /// whether they did within `timeout`.
    pub async fn wait_full_isr(&self, topic: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.describe(topic).await.is_some_and(|partitions| {
                partitions
                    .iter()
                    .all(|p| p.leader.is_some() && p.isr.len() == p.replicas.len())
            }) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    }

    /// Makes `node` the preferred leader of `topic`'s `partition` (a reassignment that
    /// only reorders the replicas: no data moves), without electing it yet.
    pub async fn make_preferred(&self, topic: &str, partition: i32, node: i32) {
        let state = self
            .describe(topic)
            .await
            .and_then(|ps| ps.into_iter().find(|p| p.partition == partition))
            .unwrap_or_else(|| panic!("{topic}-{partition} is not described"));
        assert!(state.replicas.contains(&node), "{node} is no replica");
        let mut replicas = vec![node];
        replicas.extend(state.replicas.iter().filter(|r| **r != node));
        let plan = serde_json::json!({
            "version": 1,
            "partitions": [{"topic": topic, "partition": partition, "replicas": replicas}],
        });
        let file = self.path.join(format!("reassign-{partition}.json"));
        std::fs::write(&file, plan.to_string()).expect("write the reassignment");
        let reassign = |action: &'static str| {
            let file = file.clone();
            let bootstrap = self.bootstrap.clone();
            async move {
                run_kafka_sh(&[
                    "tool",
                    "reassign",
                    "--bootstrap-server",
                    &bootstrap,
                    "--reassignment-json-file",
                    path_str(&file),
                    action,
                ])
                .await
            }
        };
        let out = reassign("--execute").await;
        assert!(
            out.status.success(),
            "reassign --execute: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let out = reassign("--verify").await;
            if String::from_utf8_lossy(&out.stdout).contains("is completed") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the reassignment of {topic}-{partition} did not complete: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A controlled leader change: every partition of `topic` whose leader is not its
    /// preferred replica is handed to it (LeaderElectionCommand, `PREFERRED`). Returns
    /// the tool's output.
    pub async fn elect_preferred_leaders(&self, topic: &str) -> String {
        let partitions = self
            .describe(topic)
            .await
            .unwrap_or_else(|| panic!("{topic} is not described"));
        let plan = serde_json::json!({
            "partitions": partitions
                .iter()
                .map(|p| serde_json::json!({"topic": topic, "partition": p.partition}))
                .collect::<Vec<_>>(),
        });
        let file = self.path.join("elect.json");
        std::fs::write(&file, plan.to_string()).expect("write the election plan");
        let out = run_kafka_sh(&[
            "tool",
            "leader-election",
            "--bootstrap-server",
            &self.bootstrap,
            "--election-type",
            "PREFERRED",
            "--path-to-json-file",
            path_str(&file),
        ])
        .await;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "leader election failed: {text}");
        text
    }
}

impl Drop for PrivateCluster {
    /// Kills every node (SIGKILL: nothing of the cluster is worth a clean shutdown),
    /// then removes the directory unless it is kept, or the test failed (the nodes'
    /// logs are evidence).
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.as_mut()
        {
            dir.disable_cleanup(true);
            eprintln!("cluster: kept {}", self.path.display());
        }
        let _ = std::process::Command::new("bash")
            .arg(kafka_sh())
            .args(["cluster", "down", "--kill", "--dir"])
            .arg(&self.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        drop(self.dir.take());
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Runs `kafka.sh ARGS`, bounded by [`CALL_TIMEOUT`] (then killed, and a failure).
async fn run_kafka_sh(args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new("bash")
        .arg(kafka_sh())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run deploy/local/kafka.sh");
    match tokio::time::timeout(CALL_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.expect("kafka.sh output"),
        Err(_) => panic!("kafka.sh {args:?} did not finish within {CALL_TIMEOUT:?}"),
    }
}

/// The first of `count` consecutive free loopback ports, below the ephemeral range
/// (as [`super::free_port`] picks single ports).
fn free_port_run(count: u16) -> u16 {
    loop {
        let base = super::free_port();
        if base.checked_add(count).is_none() {
            continue;
        }
        if (base..base + count).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
}

/// The partition lines of TopicCommand `--describe`:
/// `\tTopic: t\tPartition: 0\tLeader: 1\tReplicas: 1,2,3\tIsr: 1,2,3\t...`
/// (`Leader: none` while there is none).
fn parse_describe(text: &str) -> Vec<PartitionState> {
    let nodes =
        |v: &str| -> Vec<i32> { v.split(',').filter_map(|n| n.trim().parse().ok()).collect() };
    let mut out = Vec::new();
    for line in text.lines() {
        let mut partition = None;
        let mut leader = None;
        let mut replicas = Vec::new();
        let mut isr = Vec::new();
        for field in line.split('\t') {
            let Some((name, value)) = field.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim() {
                "Partition" => partition = value.parse().ok(),
                "Leader" => leader = value.parse().ok().filter(|l: &i32| *l >= 0),
                "Replicas" => replicas = nodes(value),
                "Isr" => isr = nodes(value),
                _ => {}
            }
        }
        if let Some(partition) = partition {
            out.push(PartitionState {
                partition,
                leader,
                replicas,
                isr,
            });
        }
    }
    out.sort_by_key(|p| p.partition);
    out
}

#[test]
fn describe_lines_are_parsed() {
    let text = "Topic: x\tTopicId: 4t9W\tPartitionCount: 3\tReplicationFactor: 3\tConfigs: min.insync.replicas=2\n\
                \tTopic: x\tPartition: 1\tLeader: none\tReplicas: 2,3,1\tIsr: 3\tElr: \tLastKnownElr: \n\
                \tTopic: x\tPartition: 0\tLeader: 1\tReplicas: 2,1,3\tIsr: 1,3\tElr: \tLastKnownElr: \n";
    assert_eq!(
        parse_describe(text),
        vec![
            PartitionState {
                partition: 0,
                leader: Some(1),
                replicas: vec![2, 1, 3],
                isr: vec![1, 3],
            },
            PartitionState {
                partition: 1,
                leader: None,
                replicas: vec![2, 3, 1],
                isr: vec![3],
            },
        ]
    );
}
