//! The consumer pipeline: ractor actors, one file each.
//!
//! ```text
//! Supervisor ─┬─ PartitionReader p0..pN ──Arc<ParsedBatch>──► every sink
//!             ├─ SinkActor<LoggerWriter>                ──► Postgres `events`
//!             ├─ SinkActor<StatsPgWriter>               ──► Postgres `player_statistics`
//!             ├─ SinkActor<StatsRedisWriter>            ──► Redis `player_stats:*`
//!             ├─ SinkActor<LeaderboardPgWriter>         ──► Postgres `leaderboard_scores`
//!             ├─ SinkActor<LeaderboardRedisWriter>      ──► Redis `leaderboard:*`
//!             ├─ LeaderboardRefresher                   ──► Postgres `leaderboards`
//!             ├─ LeaseManager                           ──► Postgres `partition_leases`, `lease_members`
//!             └─ DlqActor ◄── dead letters ── sinks
//! ```
//!
//! - [`supervisor`]: the root; spawns, restarts (one-for-all, with backoff), escalates, drains.
//! - [`partition_reader`]: fetches a partition, parses once, fans out under credit-based flow control.
//! - [`sink`]: the generic sink actor (batching, linger, offset dedupe, retry, poison isolation, acks).
//! - [`logger`]: the sink writer for `events`.
//! - [`stats`]: the sink writers of the statistics aggregator (Postgres and Redis).
//! - [`leaderboard`]: the sink writers of the leaderboard manager (Postgres and Redis).
//! - [`leaderboard_refresher`]: keeps the `leaderboards` top-N table in step.
//! - [`lease_manager`]: the partition leases this daemon holds (renew, take, hand over).
//! - [`dlq`]: stores dead letters in `system.dlq` and `dlq_events`.
//! - [`group_mirror`]: beside the pipeline (a task the daemon starts), mirrors the sinks'
//!   offsets into the old consumer groups in Kafka.
//! - [`record`]: what readers hand to sinks.

/// `From` and `TryFrom` between an actor's message enum and the payload of one of its
/// variants, so that the actor can be handed out as a `DerivedActorRef` of that payload
/// alone (a narrow handle: the holder sees one message, not the actor's whole enum).
macro_rules! narrow_message {
    ($message:ident :: $variant:ident ( $payload:ty )) => {
        impl From<$payload> for $message {
            fn from(payload: $payload) -> Self {
                $message::$variant(payload)
            }
        }

        impl TryFrom<$message> for $payload {
            type Error = $message;

            fn try_from(message: $message) -> Result<Self, $message> {
                match message {
                    $message::$variant(payload) => Ok(payload),
                    other => Err(other),
                }
            }
        }
    };
}
pub(crate) use narrow_message;

pub mod dlq;
pub mod group_mirror;
pub mod leaderboard;
pub mod leaderboard_refresher;
pub mod lease_manager;
pub mod logger;
pub mod partition_reader;
pub mod record;
pub mod sink;
pub mod stats;
pub mod supervisor;

use std::sync::atomic::Ordering;
use std::time::Duration;

use ractor::{Actor, ActorRef};

pub use supervisor::{PipelineContext, Supervisor, SupervisorMessage};

/// A running pipeline, owned by the daemon.
pub struct Pipeline {
    supervisor: ActorRef<SupervisorMessage>,
    join: tokio::task::JoinHandle<()>,
    ctx: PipelineContext,
}

/// How a pipeline ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineOutcome {
    /// Drained: everything fetched was written and committed.
    Drained,
    /// The grace period ran out before every sink had flushed (nothing is lost: what
    /// was not committed is read again at the next start).
    TimedOut,
    /// The supervisor gave up after repeated crashes.
    Escalated,
}

impl Pipeline {
    /// Spawns the supervisor, which spawns everything else; returns once the first
    /// generation of actors has started.
    pub async fn start(ctx: PipelineContext) -> Result<Self, ractor::SpawnErr> {
        let (supervisor, join) = Actor::spawn(None, Supervisor, ctx.clone()).await?;
        Ok(Self {
            supervisor,
            join,
            ctx,
        })
    }

    /// Whether the supervisor gave up.
    pub fn escalated(&self) -> bool {
        self.ctx.escalated.load(Ordering::SeqCst)
    }

    /// Graceful stop within `grace`.
    pub async fn stop(self, grace: Duration) -> PipelineOutcome {
        if self.escalated() {
            let _ = self.join.await;
            return PipelineOutcome::Escalated;
        }
        let drained =
            tokio::time::timeout(grace, self.supervisor.call(SupervisorMessage::Drain, None)).await;
        self.supervisor.stop(None);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.join).await;
        match drained {
            Ok(Ok(ractor::rpc::CallResult::Success(()))) => PipelineOutcome::Drained,
            _ if self.ctx.escalated.load(Ordering::SeqCst) => PipelineOutcome::Escalated,
            _ => PipelineOutcome::TimedOut,
        }
    }
}
