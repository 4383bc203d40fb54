//! `Supervisor`: the root actor of the consumer pipeline.
//!
//! ```text
//! Supervisor
//!  ├── DlqActor
//!  ├── SinkActor<W> × shards          (one group per sink of the catalogue, in its order)
//!  ├── LeaderboardRefresher
//!  ├── LeaseManager                   (which partitions this daemon holds)
//!  └── PartitionReader p .. q         (one per partition whose lease it holds)
//! ```
//!
//! It spawns every child with `spawn_linked`, so their crashes come back here as
//! supervision events. The restart policy lives in one place, [`Supervisor::on_child_down`]:
//! a crash of any child stops the whole generation and starts a new one from the
//! committed offsets after an exponential backoff (one-for-all: sinks and readers hold
//! in-flight state about each other, and the offsets in the destinations are the only
//! truth worth restarting from). More than `supervisor.max_restarts` crashes within
//! `supervisor.restart_window` escalate: the supervisor stops, the daemon shuts down and
//! exits non-zero instead of spinning.
//!
//! Partitions: the [`LeaseManager`] says which ones this daemon holds. An acquired
//! lease is claimed in every sink (which reloads where the partition stands), then its
//! reader starts; a lost one stops its reader and the sinks drop what they buffered
//! for it; a lease handed over (rebalance) stops its reader, flushes and commits the
//! sinks, and only then frees the row: no gap, no overlap. The partition count is
//! re-read every `partition_refresh_interval` for the lease manager.
//! A graceful stop ([`SupervisorMessage::Drain`]) stops the readers first, then flushes
//! every sink, then releases the leases (so other daemons take over at once), then
//! stops them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};

use super::dlq::{DlqActor, DlqArgs, DlqMessage};
use super::leaderboard::{LeaderboardPgWriter, LeaderboardRedisWriter};
use super::leaderboard_refresher::{LeaderboardRefresher, RefresherArgs, RefresherMessage};
use super::lease_manager::{LeaseArgs, LeaseEvent, LeaseManager, LeaseMessage};
use super::logger::LoggerWriter;
use super::partition_reader::{
    PartitionReader, ReaderArgs, ReaderMessage, ReaderStart, prepare_reader,
};
use super::sink::{PartitionFenced, SinkActor, SinkArgs, SinkMessage, SinkSettings, SinkWriter};
use super::stats::{StatsPgWriter, StatsRedisWriter};
use crate::catalogue::{
    self, LEADERBOARD, LEADERBOARD_REDIS, LOGGER, STATS, STATS_REDIS, SinkSpec,
};
use crate::config::Config;
use crate::leases::{Lease, LeaseView};
use crate::retry::Backoff;
use crate::shutdown::Shutdown;
use crate::sinks::redis::{RedisKeys, RedisPool, RedisSinkSettings};

/// Label of the refresher in supervision logs and restart metrics.
pub const REFRESHER: &str = "leaderboard-refresher";

/// What the pipeline needs from the outside world.
#[derive(Clone)]
pub struct PipelineContext {
    pub config: Arc<Config>,
    pub kafka: Arc<rskafka::client::Client>,
    pub pg: sqlx::PgPool,
    pub redis: RedisPool,
    /// Triggered by the supervisor when it gives up, so the daemon exits.
    pub shutdown: Shutdown,
    /// Set when the supervisor gave up (the daemon's exit code says so).
    pub escalated: Arc<AtomicBool>,
    /// This daemon's member id among the daemons sharing the partitions.
    pub member: Arc<str>,
    /// The leases held, for `/ready`.
    pub leases: LeaseView,
}

pub enum SupervisorMessage {
    /// Start a new generation of children (after a crash and its backoff).
    Restart,
    /// Re-read the topic's partition count; spawn readers for new partitions.
    RefreshPartitions,
    /// Graceful stop: readers, then a flush of every sink, then the sinks.
    Drain(RpcReplyPort<()>),
    /// A lease changed hands (see [`LeaseEvent`]).
    Lease(LeaseEvent),
    /// A sink's write for a partition was refused: its lease is gone.
    Fenced(PartitionFenced),
    /// The take-over of `lease` (claims in the sinks, the reader's start) finished.
    Claimed {
        lease: Lease,
        generation: u64,
        /// Boxed: a reader's start is large, and every other message small.
        result: Box<Result<ReaderStart, String>>,
    },
}

super::narrow_message!(SupervisorMessage::Lease(LeaseEvent));
super::narrow_message!(SupervisorMessage::Fenced(PartitionFenced));

pub struct Supervisor;

pub struct SupervisorState {
    ctx: PipelineContext,
    topic: Arc<str>,
    children: Option<Children>,
    /// Ids of the current generation, with a label for logs and metrics.
    current: HashMap<ActorId, &'static str>,
    /// Crash times within the restart window.
    crashes: VecDeque<Instant>,
    backoff: Backoff,
    /// Set while children are being stopped on purpose (their exits are not crashes).
    stopping: bool,
    refresh_timer: Option<tokio::task::JoinHandle<()>>,
    /// Counts generations; lease news of an older one is ignored.
    generation: u64,
}

struct Children {
    dlq: ActorRef<DlqMessage>,
    sinks: Vec<SinkGroup>,
    /// The reader of each held partition, with the lease epoch it reads under.
    readers: BTreeMap<i32, (ActorRef<ReaderMessage>, i64)>,
    /// Partitions being taken over (claims under way), with their lease epoch.
    claiming: BTreeMap<i32, i64>,
    leases: ActorRef<LeaseMessage>,
    /// The topic's partition count, last read: the readers' budgets are shared by them.
    partitions: i32,
    /// Refreshes the `leaderboards` table; drained after the sinks.
    refresher: ActorRef<RefresherMessage>,
}

/// The actors of one sink: several writers, each owning the partitions `p mod n`.
/// Offsets are per partition, so shards never contend for a commit.
struct SinkGroup {
    name: &'static str,
    shards: Vec<ActorRef<SinkMessage>>,
}

/// What every sink of a generation is wired to.
struct SinkWiring {
    supervisor: ActorRef<SupervisorMessage>,
    dlq: ActorRef<DlqMessage>,
    refresher: ActorRef<RefresherMessage>,
}

impl SinkGroup {
    fn shard_for(&self, partition: i32) -> ActorRef<SinkMessage> {
        self.shards[partition.unsigned_abs() as usize % self.shards.len()].clone()
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMessage;
    type State = SupervisorState;
    type Arguments = PipelineContext;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: PipelineContext,
    ) -> Result<Self::State, ActorProcessingErr> {
        let sup = &ctx.config.supervisor;
        let mut state = SupervisorState {
            topic: Arc::from(ctx.config.topics.player_events.as_str()),
            backoff: Backoff::new(sup.restart_initial_backoff, sup.restart_max_backoff),
            ctx,
            children: None,
            current: HashMap::new(),
            crashes: VecDeque::new(),
            stopping: false,
            refresh_timer: None,
            generation: 0,
        };
        // The first generation must start: a failure here fails `Pipeline::start`, so a
        // daemon that cannot consume at all says so at startup.
        state.spawn_generation(&myself).await?;
        let interval = state.ctx.config.supervisor.partition_refresh_interval;
        state.refresh_timer =
            Some(myself.send_interval(interval, || SupervisorMessage::RefreshPartitions));
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.refresh_timer.take() {
            timer.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMessage::Restart => {
                if state.ctx.shutdown.is_triggered() {
                    return Ok(());
                }
                state.stopping = false;
                if let Err(e) = state.spawn_generation(&myself).await {
                    tracing::error!(error = %e, "restarting the pipeline failed");
                    state.on_child_down(&myself, "pipeline", &e.to_string());
                }
            }
            SupervisorMessage::RefreshPartitions => {
                if let Err(e) = state.spawn_new_partitions(&myself).await {
                    tracing::warn!(error = %e, "refreshing partitions failed; will try again");
                }
            }
            SupervisorMessage::Drain(reply) => {
                state.drain().await;
                let _ = reply.send(());
            }
            SupervisorMessage::Lease(LeaseEvent::Acquired { lease, generation }) => {
                if generation == state.generation && !state.stopping {
                    state.take_over(&myself, lease).await;
                }
            }
            SupervisorMessage::Claimed {
                lease,
                generation,
                result,
            } => {
                if generation == state.generation && !state.stopping {
                    state.claimed(&myself, lease, *result).await;
                }
            }
            SupervisorMessage::Lease(LeaseEvent::Lost { lease, generation }) => {
                if generation == state.generation {
                    state
                        .stop_partition(lease.partition, Some(lease.epoch))
                        .await;
                }
            }
            SupervisorMessage::Lease(LeaseEvent::Surrender { lease, generation }) => {
                if generation == state.generation && !state.stopping {
                    state.hand_over(lease).await;
                }
            }
            SupervisorMessage::Fenced(PartitionFenced { partition }) => {
                if let Some(epoch) = state.stop_partition(partition, None).await
                    && let Some(children) = &state.children
                {
                    let _ = children
                        .leases
                        .cast(LeaseMessage::Drop(Lease { partition, epoch }));
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match &event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.clone().unwrap_or_else(|| "stopped".to_owned()))
            }
            _ => return Ok(()),
        };
        let Some(label) = state.current.remove(&cell.get_id()) else {
            return Ok(()); // a child of an older generation
        };
        if state.stopping {
            return Ok(());
        }
        state.on_child_down(&myself, label, &reason);
        Ok(())
    }
}

impl SupervisorState {
    /// The restart policy: stop the generation, then restart it after a backoff, or
    /// escalate when crashes come too often.
    fn on_child_down(
        &mut self,
        myself: &ActorRef<SupervisorMessage>,
        label: &'static str,
        reason: &str,
    ) {
        let config = Arc::clone(&self.ctx.config);
        let sup = &config.supervisor;
        let now = Instant::now();
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > sup.restart_window)
        {
            self.crashes.pop_front();
        }
        if self.crashes.is_empty() {
            self.backoff.reset();
        }
        self.crashes.push_back(now);
        metrics::counter!("gamestream_actor_restarts_total", "actor" => label).increment(1);
        self.stop_children();
        if self.crashes.len() as u32 > sup.max_restarts {
            tracing::error!(actor = label, reason, crashes = self.crashes.len(), window = ?sup.restart_window,
                "pipeline keeps crashing; giving up so the daemon exits (and its pod restarts)");
            metrics::counter!("gamestream_supervisor_escalations_total").increment(1);
            self.ctx.escalated.store(true, Ordering::SeqCst);
            self.ctx.shutdown.trigger();
            myself.stop(Some("escalated".to_owned()));
            return;
        }
        let delay = self.backoff.next_delay();
        tracing::error!(actor = label, reason, restart_in = ?delay, "pipeline actor failed; restarting from committed offsets");
        // The timer task ends after one send.
        drop(myself.send_after(delay, || SupervisorMessage::Restart));
    }

    fn stop_children(&mut self) {
        self.stopping = true;
        self.current.clear();
        if let Some(children) = self.children.take() {
            for (reader, _) in children.readers.values() {
                reader.stop(None);
            }
            children.leases.stop(None);
            for sink in children.sinks.iter().flat_map(|g| &g.shards) {
                sink.stop(None);
            }
            children.refresher.stop(None);
            children.dlq.stop(None);
        }
    }

    async fn spawn_generation(
        &mut self,
        myself: &ActorRef<SupervisorMessage>,
    ) -> Result<(), ActorProcessingErr> {
        self.generation += 1;
        let config = Arc::clone(&self.ctx.config);
        let supervisor: ActorCell = myself.get_cell();
        let retry = Backoff::new(
            config.consumer.retry_initial_backoff,
            config.consumer.retry_max_backoff,
        );
        let (dlq, _) = Actor::spawn_linked(
            None,
            DlqActor,
            DlqArgs {
                kafka: Arc::clone(&self.ctx.kafka),
                pg: self.ctx.pg.clone(),
                topic: config.topics.dlq.clone(),
                max_message_bytes: config.dlq.max_message_bytes,
                backoff: retry.clone(),
            },
            supervisor.clone(),
        )
        .await?;
        self.current.insert(dlq.get_id(), "dlq");
        let (refresher, _) = Actor::spawn_linked(
            None,
            LeaderboardRefresher,
            RefresherArgs {
                pg: self.ctx.pg.clone(),
                refresh_interval: config.leaderboard.refresh_interval,
                top_n: config.leaderboard.top_n,
            },
            supervisor.clone(),
        )
        .await?;
        self.current.insert(refresher.get_id(), REFRESHER);
        let wiring = SinkWiring {
            supervisor: myself.clone(),
            dlq: dlq.clone(),
            refresher: refresher.clone(),
        };
        // The catalogue's order: Postgres sinks first, since a Redis sink's start may
        // rebuild Redis from its Postgres twin.
        let mut sinks = Vec::with_capacity(catalogue::SINKS.len());
        for spec in &catalogue::SINKS {
            sinks.push(self.spawn_sink(spec, &wiring).await?);
        }

        // Last: its first round may at once hand partitions to the sinks above.
        let partitions = crate::kafka::partition_count(&self.ctx.kafka, &self.topic).await?;
        let (leases, _) = Actor::spawn_linked(
            None,
            LeaseManager,
            LeaseArgs {
                pg: self.ctx.pg.clone(),
                topic: Arc::clone(&self.topic),
                member: Arc::clone(&self.ctx.member),
                ttl: config.lease.ttl,
                renew_interval: config.lease.renew_interval,
                partitions,
                supervisor: myself.get_derived(),
                generation: self.generation,
                view: self.ctx.leases.clone(),
            },
            supervisor.clone(),
        )
        .await?;
        self.current.insert(leases.get_id(), "lease_manager");
        // Readers start as leases come; until then this daemon reads nothing.
        metrics::gauge!("gamestream_partitions_owned").set(0.0);

        self.children = Some(Children {
            dlq,
            sinks,
            readers: BTreeMap::new(),
            claiming: BTreeMap::new(),
            leases,
            partitions,
            refresher,
        });
        Ok(())
    }

    /// Spawns the shards of the catalogue's sink `spec`, each with its own writer.
    /// A new sink is one entry in the catalogue and one arm here.
    async fn spawn_sink(
        &mut self,
        spec: &'static SinkSpec,
        wiring: &SinkWiring,
    ) -> Result<SinkGroup, ActorProcessingErr> {
        let config = Arc::clone(&self.ctx.config);
        let (pg, redis) = (self.ctx.pg.clone(), self.ctx.redis.clone());
        let keys = RedisKeys::new(config.redis.key_prefix.clone());
        let redis_settings = RedisSinkSettings::from_config(&config);
        let batching = |batch_size: usize, linger: Duration| SinkSettings {
            batch_size,
            linger,
            retry_initial_backoff: config.consumer.retry_initial_backoff,
            retry_max_backoff: config.consumer.retry_max_backoff,
        };
        let stats = batching(config.stats.buffer_size, config.stats.linger);
        let scores = batching(config.leaderboard.batch_size, config.leaderboard.linger);
        let (stats_shards, score_shards) = (config.stats.writers, config.leaderboard.writers);
        match *spec {
            LOGGER => {
                let settings = batching(config.logger.batch_size, config.logger.linger);
                let writer = || LoggerWriter { pg: pg.clone() };
                self.spawn_shards(wiring, config.logger.writers, settings, writer)
                    .await
            }
            STATS => {
                let writer = || StatsPgWriter { pg: pg.clone() };
                self.spawn_shards(wiring, stats_shards, stats, writer).await
            }
            LEADERBOARD => {
                let writer = || LeaderboardPgWriter {
                    pg: pg.clone(),
                    refresher: wiring.refresher.clone(),
                };
                self.spawn_shards(wiring, score_shards, scores, writer)
                    .await
            }
            STATS_REDIS => {
                let writer = || {
                    StatsRedisWriter::new(
                        redis.clone(),
                        pg.clone(),
                        keys.clone(),
                        redis_settings.clone(),
                    )
                };
                self.spawn_shards(wiring, stats_shards, stats, writer).await
            }
            LEADERBOARD_REDIS => {
                let writer = || {
                    LeaderboardRedisWriter::new(
                        redis.clone(),
                        pg.clone(),
                        keys.clone(),
                        redis_settings.clone(),
                    )
                };
                self.spawn_shards(wiring, score_shards, scores, writer)
                    .await
            }
            other => Err(format!("sink `{}` has no writer in the supervisor", other.name).into()),
        }
    }

    /// Spawns `shards` sink actors, each with a writer from `writer`; together they
    /// serve every partition.
    async fn spawn_shards<W: SinkWriter>(
        &mut self,
        wiring: &SinkWiring,
        shards: usize,
        settings: SinkSettings,
        mut writer: impl FnMut() -> W,
    ) -> Result<SinkGroup, ActorProcessingErr> {
        let supervisor = wiring.supervisor.get_cell();
        let mut group = SinkGroup {
            name: "sink",
            shards: Vec::with_capacity(shards),
        };
        for _ in 0..shards.max(1) {
            let writer = writer();
            group.name = writer.name();
            let args = SinkArgs {
                writer,
                topic: Arc::clone(&self.topic),
                settings: settings.clone(),
                dlq: wiring.dlq.clone(),
                fenced: wiring.supervisor.get_derived(),
            };
            let (shard, _) =
                Actor::spawn_linked(None, SinkActor::<W>::default(), args, supervisor.clone())
                    .await?;
            self.current.insert(shard.get_id(), group.name);
            group.shards.push(shard);
        }
        Ok(group)
    }

    /// Re-reads the partition count for the lease manager (added partitions get
    /// leases, and so readers, at its next round).
    async fn spawn_new_partitions(
        &mut self,
        _myself: &ActorRef<SupervisorMessage>,
    ) -> Result<(), ActorProcessingErr> {
        if self.stopping || self.children.is_none() {
            return Ok(());
        }
        let count = crate::kafka::partition_count(&self.ctx.kafka, &self.topic).await?;
        if let Some(children) = &mut self.children {
            children.partitions = count;
            children.leases.cast(LeaseMessage::PartitionCount(count))?;
        }
        Ok(())
    }

    /// Starts taking `lease` over: claims it in every sink serving its partition and
    /// prepares its reader (the resume offset, a partition client) in a task of its
    /// own, which answers [`SupervisorMessage::Claimed`]. Nothing here waits, so a crash
    /// that comes meanwhile is handled at once (and makes the answer stale).
    async fn take_over(&mut self, myself: &ActorRef<SupervisorMessage>, lease: Lease) {
        let partition = lease.partition;
        let existing = self
            .children
            .as_ref()
            .and_then(|c| c.readers.get(&partition).map(|(_, epoch)| *epoch));
        match existing {
            Some(epoch) if epoch == lease.epoch => return,
            Some(_) => {
                self.stop_partition(partition, None).await;
            }
            None => {}
        }
        let Some(children) = self.children.as_mut() else {
            return;
        };
        if children.claiming.get(&partition) == Some(&lease.epoch) {
            return;
        }
        children.claiming.insert(partition, lease.epoch);
        let config = Arc::clone(&self.ctx.config);
        let shards: Vec<(&'static str, ActorRef<SinkMessage>)> = children
            .sinks
            .iter()
            .map(|group| (group.name, group.shard_for(partition)))
            .collect();
        let kafka = Arc::clone(&self.ctx.kafka);
        let topic = Arc::clone(&self.topic);
        let generation = self.generation;
        let myself = myself.clone();
        // Ends by itself: every call in it is bounded by the grace period.
        drop(tokio::spawn(async move {
            let timeout = config.shutdown.grace_period;
            let started = Instant::now();
            let result = async {
                claim_in_sinks(&shards, lease, timeout).await?;
                let dedupe = config.dedupe.enabled.then_some(&config.dedupe);
                prepare_reader(&kafka, &topic, partition, &shards, timeout, dedupe)
                    .await
                    .map_err(|e| format!("preparing the reader: {e}"))
            }
            .await;
            metrics::histogram!("gamestream_partition_takeover_seconds")
                .record(started.elapsed().as_secs_f64());
            let _ = myself.cast(SupervisorMessage::Claimed {
                lease,
                generation,
                result: Box::new(result),
            });
        }));
    }

    /// The take-over task of `lease` finished: start its reader, or give the lease up.
    async fn claimed(
        &mut self,
        myself: &ActorRef<SupervisorMessage>,
        lease: Lease,
        result: Result<ReaderStart, String>,
    ) {
        let partition = lease.partition;
        let config = Arc::clone(&self.ctx.config);
        let Some(children) = self.children.as_mut() else {
            return;
        };
        // Lost (or taken over again) while the claims ran: nothing to start.
        if children.claiming.get(&partition) != Some(&lease.epoch) {
            return;
        }
        children.claiming.remove(&partition);
        let start = match result {
            Ok(start) => start,
            Err(failure) => {
                tracing::warn!(partition, epoch = lease.epoch, error = %failure, "taking the partition over failed; giving the lease up");
                for group in &children.sinks {
                    let _ = group
                        .shard_for(partition)
                        .cast(SinkMessage::Forget { partition });
                }
                let _ = children.leases.cast(LeaseMessage::Drop(lease));
                return;
            }
        };
        // The readers share the budgets, so memory does not grow with the partitions.
        let share = config.consumer.partition_share(children.partitions);
        let args = ReaderArgs {
            start,
            topic: Arc::clone(&self.topic),
            partition,
            sinks: children
                .sinks
                .iter()
                .map(|group| (group.name, group.shard_for(partition)))
                .collect(),
            max_in_flight_records: share.max_in_flight_records,
            detach_after: config.consumer.detach_after,
            fetch_max_bytes: share.fetch_max_bytes,
            fetch_max_wait: config.consumer.fetch_max_wait,
            backoff: Backoff::new(
                config.consumer.retry_initial_backoff,
                config.consumer.retry_max_backoff,
            ),
        };
        // The reader's start does no I/O (the task above did it), so this is quick.
        match Actor::spawn_linked(None, PartitionReader, args, myself.get_cell()).await {
            Ok((reader, _)) => {
                self.current.insert(reader.get_id(), "partition_reader");
                children.readers.insert(partition, (reader, lease.epoch));
                tracing::info!(partition, epoch = lease.epoch, "partition taken over");
                metrics::gauge!("gamestream_partitions_owned").set(children.readers.len() as f64);
            }
            Err(e) => {
                let reason = format!("starting the reader of partition {partition}: {e}");
                self.on_child_down(myself, "partition_reader", &reason);
            }
        }
    }

    /// Stops the reader of `partition` (if it reads under `epoch`, when given) and has
    /// the sinks drop what they buffered for it. Returns the epoch it read under.
    async fn stop_partition(&mut self, partition: i32, epoch: Option<i64>) -> Option<i64> {
        let grace = self.ctx.config.shutdown.grace_period;
        let children = self.children.as_mut()?;
        // A take-over under way for it is void now.
        if epoch.is_none_or(|want| children.claiming.get(&partition) == Some(&want)) {
            children.claiming.remove(&partition);
        }
        let stopped = match children.readers.get(&partition) {
            Some((_, e)) if epoch.is_none_or(|want| want == *e) => {
                children.readers.remove(&partition)
            }
            _ => None,
        };
        let stopped_epoch = stopped.as_ref().map(|(_, e)| *e);
        if let Some((reader, _)) = stopped {
            // Not a crash: forget it before it exits.
            self.current.remove(&reader.get_id());
            stop_reader(&reader, partition, grace).await;
        }
        for group in &children.sinks {
            let _ = group
                .shard_for(partition)
                .cast(SinkMessage::Forget { partition });
            // This daemon no longer reports lag for a partition it does not read.
            metrics::gauge!("gamestream_consumer_lag", "sink" => group.name, "partition" => partition.to_string())
                .set(0.0);
        }
        metrics::gauge!("gamestream_partitions_owned").set(children.readers.len() as f64);
        if stopped_epoch.is_some() {
            tracing::warn!(partition, "partition stopped: its lease is gone");
        }
        stopped_epoch
    }

    /// Rebalance: stop the reader, let every sink flush and commit, then free the lease.
    async fn hand_over(&mut self, lease: Lease) {
        let grace = self.ctx.config.shutdown.grace_period;
        let Some(children) = self.children.as_mut() else {
            return;
        };
        let partition = lease.partition;
        children.claiming.remove(&partition);
        if let Some((reader, _)) = children.readers.remove(&partition) {
            self.current.remove(&reader.get_id());
            stop_reader(&reader, partition, grace).await;
        }
        for group in &children.sinks {
            let shard = group.shard_for(partition);
            let released = shard.call(
                |reply| SinkMessage::Release { partition, reply },
                Some(grace),
            );
            if !matches!(released.await, Ok(ractor::rpc::CallResult::Success(()))) {
                // Freed all the same: what this sink still writes for it is fenced, and
                // the next owner resumes from what was committed.
                tracing::warn!(
                    sink = group.name,
                    partition,
                    "sink did not flush for the handover; dropping what it holds"
                );
                let _ = shard.cast(SinkMessage::Forget { partition });
            }
            metrics::gauge!("gamestream_consumer_lag", "sink" => group.name, "partition" => partition.to_string())
                .set(0.0);
        }
        metrics::gauge!("gamestream_partitions_owned").set(children.readers.len() as f64);
        tracing::info!(partition, epoch = lease.epoch, "partition handed over");
        let _ = children.leases.cast(LeaseMessage::HandedOver(lease));
    }

    /// Graceful stop: no more fetching, every buffer flushed and committed.
    async fn drain(&mut self) {
        self.stopping = true;
        let Some(children) = self.children.take() else {
            return;
        };
        self.current.clear();
        let grace = self.ctx.config.shutdown.grace_period;
        for (&partition, (reader, _)) in &children.readers {
            stop_reader(reader, partition, grace).await;
        }
        let shards: Vec<(&'static str, ActorRef<SinkMessage>)> = children
            .sinks
            .iter()
            .flat_map(|g| g.shards.iter().map(|s| (g.name, s.clone())))
            .collect();
        for (name, sink) in shards {
            match sink.call(SinkMessage::Drain, Some(grace)).await {
                Ok(ractor::rpc::CallResult::Success(())) => tracing::info!(sink = name, "flushed"),
                other => {
                    tracing::warn!(sink = name, result = ?other.map(|_| ()), "sink did not flush in time")
                }
            }
            let _ = sink.stop_and_wait(None, Some(grace)).await;
        }
        // After the final commits: free the leases so that other daemons take over now.
        if let Err(e) = children.leases.call(LeaseMessage::Leave, Some(grace)).await {
            tracing::warn!(error = %e, "leases were not released; they run out by themselves");
        }
        let _ = children.leases.stop_and_wait(None, Some(grace)).await;
        // After the sinks: their last writes are in the final refresh.
        match children
            .refresher
            .call(RefresherMessage::Drain, Some(grace))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(())) => tracing::info!("leaderboards refreshed"),
            other => {
                tracing::warn!(result = ?other.map(|_| ()), "leaderboards were not refreshed in time")
            }
        }
        let _ = children.refresher.stop_and_wait(None, Some(grace)).await;
        let _ = children.dlq.stop_and_wait(None, Some(grace)).await;
    }
}

/// Stops the reader of `partition` and waits for it, at most `grace`.
async fn stop_reader(reader: &ActorRef<ReaderMessage>, partition: i32, grace: Duration) {
    if let Err(e) = reader.stop_and_wait(None, Some(grace)).await {
        tracing::warn!(partition, error = %e, "reader did not stop in time");
    }
}

/// Claims `lease` in every sink shard serving its partition, all at once, each bounded
/// by `timeout`.
async fn claim_in_sinks(
    shards: &[(&'static str, ActorRef<SinkMessage>)],
    lease: Lease,
    timeout: Duration,
) -> Result<(), String> {
    let claims = shards.iter().map(|(name, shard)| async move {
        let claim = shard.call(
            |reply| SinkMessage::Claim {
                partition: lease.partition,
                epoch: lease.epoch,
                reply,
            },
            Some(timeout),
        );
        match claim.await {
            Ok(ractor::rpc::CallResult::Success(Ok(()))) => Ok(()),
            Ok(ractor::rpc::CallResult::Success(Err(e))) => Err(format!("{name}: {e}")),
            Ok(ractor::rpc::CallResult::Timeout) => {
                Err(format!("{name}: no answer to the claim within {timeout:?}"))
            }
            Ok(ractor::rpc::CallResult::SenderError) => Err(format!("{name}: the sink stopped")),
            Err(e) => Err(format!("{name}: {e}")),
        }
    });
    futures::future::join_all(claims)
        .await
        .into_iter()
        .collect::<Result<Vec<()>, String>>()
        .map(|_| ())
}
