//! `GroupMirror`: every `group_offsets.interval`, commits the sinks' positions to the old
//! consumer groups in Kafka, so that Kafka's tools, UIs, lag exporters and KEDA see them.
//!
//! ```text
//! tick ─► partitions this daemon holds (leases) ─► sinks' offsets (Postgres, Redis)
//!      ─► per old group: slowest sink per partition ─► moved since the last commit?
//!      ─► DescribeGroups: members? ─ yes ─► skip (logged once, shown on /ready)
//!                                  └ no ──► OffsetCommit (generation -1, no member)
//! final round (graceful stop, after the pipeline drained) ─► the same, once
//! ```
//!
//! A plain task beside the pipeline, off its hot path: it reads the committed offsets
//! the sinks wrote, with its own queries, and never waits on a sink. Each daemon commits
//! only the partitions it holds a lease on, so that several daemons never write the
//! same partition (one reading Postgres just before another's newer commit could
//! otherwise move a group back for a round), and a partition nobody holds keeps its
//! last mirrored position. A failure (Kafka, Postgres, Redis away) is logged at warn and
//! counted; the next tick tries again; the daemon never stops because of it.
//!
//! Offsets committed to Kafka are read back per group at start (`OffsetFetch`), so a
//! restart does not commit what Kafka already has; afterwards only the partitions whose
//! position moved are committed. They are read back again every hour (`RESEED_INTERVAL`) and
//! after a failure: Kafka expires the offsets of a group without members
//! (`offsets.retention.minutes`, 7 days) in a partition that saw no commit for that
//! long, and another daemon may have written a partition this one held before.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rskafka::client::Client;
use rskafka::client::group::GroupClient;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::kafka::group_offsets::{self, MirrorOutcome, MirroredGroup};
use crate::leases::LeaseView;
use crate::sinks::positions;
use crate::sinks::redis::{RedisKeys, RedisPool};

/// How often what Kafka holds for each group is read back (see the module's doc).
const RESEED_INTERVAL: Duration = Duration::from_secs(3600);

/// How long the final round at a graceful stop may take at most (less when the grace
/// period has less left).
const FINAL_ROUND_TIMEOUT: Duration = Duration::from_secs(5);

/// One group's mirroring, as `/ready` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GroupMirrorStatus {
    /// The group's name in Kafka.
    pub group: String,
    /// `pending` (nothing mirrored yet), `mirrored`, `live_members` (the group has
    /// consumers: not written), or `error` (the last round failed).
    pub state: &'static str,
    /// When the group was last found up to date (committed, or nothing had moved).
    pub last_mirrored: Option<String>,
    /// The live members (`client_id@host`) while `state` is `live_members`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// The last error, while `state` is `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The mirror's latest status per group, shared with the HTTP server (a std lock held
/// only to copy a small map).
#[derive(Debug, Clone, Default)]
pub struct GroupMirrorView(Arc<RwLock<BTreeMap<String, GroupMirrorStatus>>>);

impl GroupMirrorView {
    /// Each old group's status, by its name in Kafka.
    pub fn snapshot(&self) -> BTreeMap<String, GroupMirrorStatus> {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, status: GroupMirrorStatus) {
        let mut guard = match self.0.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.insert(status.group.clone(), status);
    }
}

/// What the mirror reads from.
pub struct GroupMirrorArgs {
    pub config: Arc<Config>,
    pub kafka: Arc<Client>,
    pub pg: sqlx::PgPool,
    pub redis: RedisPool,
    pub leases: LeaseView,
}

/// The running mirror: [`GroupMirrorTask::finish`] runs the final round and ends it.
pub struct GroupMirrorTask {
    finish: oneshot::Sender<(BTreeSet<i32>, Duration)>,
    task: tokio::task::JoinHandle<()>,
    leases: LeaseView,
}

impl GroupMirrorTask {
    /// Starts mirroring every `group_offsets.interval`; returns the view `/ready` shows.
    pub fn start(args: GroupMirrorArgs) -> (Self, GroupMirrorView) {
        let view = GroupMirrorView::default();
        let interval = args.config.group_offsets.interval;
        let leases = args.leases.clone();
        let mut mirror = GroupMirror::new(args, view.clone());
        let (finish, mut finished) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => mirror.round(BTreeSet::new()).await,
                    finish = &mut finished => {
                        // The leases are released by now: mirror what was held before.
                        let (released, within): (BTreeSet<i32>, Duration) =
                            finish.unwrap_or_default();
                        let within = within.min(FINAL_ROUND_TIMEOUT);
                        if tokio::time::timeout(within, mirror.round(released)).await.is_err() {
                            tracing::warn!(
                                "group offsets: the final mirror did not finish within {within:?}"
                            );
                        }
                        break;
                    }
                }
            }
        });
        (
            Self {
                finish,
                task,
                leases,
            },
            view,
        )
    }

    /// The partitions this daemon holds now: taken before the pipeline stops (and
    /// releases them), for [`GroupMirrorTask::finish`].
    pub fn held_now(&self) -> BTreeSet<i32> {
        self.leases.snapshot().partitions.into_keys().collect()
    }

    /// Mirrors once more, for `held` too (the pipeline has drained: its last commits are
    /// in, and it released its leases), within `within` (at most 5 s), then stops.
    pub async fn finish(self, held: BTreeSet<i32>, within: Duration) {
        let _ = self.finish.send((held, within));
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "group offsets mirror task failed");
        }
    }
}

struct MirrorGroupState {
    group: MirroredGroup,
    client: GroupClient,
    /// What Kafka holds for the group, as far as this daemon knows: read once at start,
    /// then what it committed. Only partitions it holds.
    committed: BTreeMap<i32, i64>,
    /// When `committed` was last read from Kafka (`None`: to be read).
    seeded: Option<Instant>,
    /// Whether the group's live members were logged (once, until they leave).
    live_members_logged: bool,
}

struct GroupMirror {
    topic: String,
    pg: sqlx::PgPool,
    redis: RedisPool,
    keys: RedisKeys,
    leases: LeaseView,
    view: GroupMirrorView,
    groups: Vec<MirrorGroupState>,
    /// The partitions of the current round: held now (and, in the final round, held
    /// before the pipeline stopped and released them).
    held: BTreeSet<i32>,
}

impl GroupMirror {
    fn new(args: GroupMirrorArgs, view: GroupMirrorView) -> Self {
        let groups = group_offsets::mirrored_groups(&args.config.group_offsets.group_prefix)
            .into_iter()
            .map(|group| {
                view.set(GroupMirrorStatus {
                    group: group.name.clone(),
                    state: "pending",
                    ..GroupMirrorStatus::default()
                });
                MirrorGroupState {
                    client: args.kafka.group_client(group.name.clone()),
                    group,
                    committed: BTreeMap::new(),
                    seeded: None,
                    live_members_logged: false,
                }
            })
            .collect();
        Self {
            topic: args.config.topics.player_events.clone(),
            pg: args.pg,
            redis: args.redis,
            keys: RedisKeys::new(args.config.redis.key_prefix.clone()),
            leases: args.leases,
            view,
            groups,
            held: BTreeSet::new(),
        }
    }

    /// One mirror of every group, for the partitions held now and those in `released`.
    async fn round(&mut self, released: BTreeSet<i32>) {
        let mut held: BTreeSet<i32> = self.leases.snapshot().partitions.into_keys().collect();
        held.extend(released);
        self.held = held;
        if self.held.is_empty() {
            return;
        }
        let positions = match positions::sink_positions(
            &self.pg,
            &self.redis,
            &self.keys,
            &self.topic,
        )
        .await
        {
            Ok(positions) => positions,
            Err(e) => {
                tracing::warn!(error = %e, "group offsets: cannot read the sinks' offsets; retrying at the next tick");
                for group in &self.groups {
                    self.failed(group, e.to_string());
                }
                return;
            }
        };
        for i in 0..self.groups.len() {
            let target =
                positions::group_position(self.groups[i].group.legacy, &positions, &self.held);
            if let Err(e) = self.mirror_group(i, target).await {
                let group = &self.groups[i];
                tracing::warn!(group = %group.group.name, error = %e, "group offsets: mirroring failed; retrying at the next tick");
                // Unknown what Kafka holds now: read it again next time.
                self.groups[i].seeded = None;
                self.failed(&self.groups[i], e.to_string());
            }
        }
    }

    async fn mirror_group(
        &mut self,
        i: usize,
        target: BTreeMap<i32, i64>,
    ) -> Result<(), crate::sinks::StoreError> {
        let topic = self.topic.clone();
        let held = self.held.clone();
        let state = &mut self.groups[i];
        if state
            .seeded
            .is_none_or(|at| at.elapsed() >= RESEED_INTERVAL)
        {
            state.committed = group_offsets::fetch(&state.client, &topic, &held).await?;
            state.seeded = Some(Instant::now());
        }
        // Partitions no longer held: another daemon commits them now.
        state.committed.retain(|p, _| held.contains(p));
        let moved: BTreeMap<i32, i64> = target
            .into_iter()
            .filter(|(p, offset)| state.committed.get(p) != Some(offset))
            .collect();
        if moved.is_empty() {
            if !state.live_members_logged {
                mirrored(&self.view, &state.group);
            }
            return Ok(());
        }
        match group_offsets::mirror(&state.client, &topic, moved).await? {
            MirrorOutcome::Committed(offsets) => {
                if state.live_members_logged {
                    tracing::info!(group = %state.group.name, "group offsets: the group has no members any more; mirroring resumes");
                    state.live_members_logged = false;
                    metrics::gauge!("gamestream_group_offsets_live_members", "group" => state.group.legacy).set(0.0);
                }
                tracing::debug!(group = %state.group.name, partitions = offsets.len(), "group offsets committed");
                state.committed.extend(offsets);
                mirrored(&self.view, &state.group);
            }
            MirrorOutcome::LiveMembers(members) => {
                if !state.live_members_logged {
                    tracing::warn!(
                        group = %state.group.name,
                        members = %members.join(", "),
                        "group offsets: the group has live members (the old consumers?); it is not written while they are in it"
                    );
                    state.live_members_logged = true;
                }
                metrics::gauge!("gamestream_group_offsets_live_members", "group" => state.group.legacy)
                    .set(members.len() as f64);
                self.view.set(GroupMirrorStatus {
                    group: state.group.name.clone(),
                    state: "live_members",
                    last_mirrored: self
                        .view
                        .snapshot()
                        .get(&state.group.name)
                        .and_then(|s| s.last_mirrored.clone()),
                    members,
                    error: None,
                });
            }
        }
        Ok(())
    }

    fn failed(&self, group: &MirrorGroupState, error: String) {
        metrics::counter!("gamestream_group_offsets_mirror_errors_total", "group" => group.group.legacy)
            .increment(1);
        let last_mirrored = self
            .view
            .snapshot()
            .get(&group.group.name)
            .and_then(|s| s.last_mirrored.clone());
        self.view.set(GroupMirrorStatus {
            group: group.group.name.clone(),
            state: "error",
            last_mirrored,
            members: Vec::new(),
            error: Some(error),
        });
    }
}

/// Records that `group` is up to date in Kafka now.
fn mirrored(view: &GroupMirrorView, group: &MirroredGroup) {
    let now = SystemTime::now();
    metrics::gauge!("gamestream_group_offsets_mirrored_timestamp_seconds", "group" => group.legacy)
        .set(
            now.duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        );
    view.set(GroupMirrorStatus {
        group: group.name.clone(),
        state: "mirrored",
        last_mirrored: Some(chrono::DateTime::<chrono::Utc>::from(now).to_rfc3339()),
        members: Vec::new(),
        error: None,
    });
}
