//! `LeaseManager`: this daemon's partition leases (see [`crate::leases`]).
//!
//! ```text
//! Tick (every lease.renew_interval, and at once on start)
//!   heartbeat ─► live members ─► renew held leases
//!     lost (expired, or taken)     ─► Supervisor::LeaseLost      (stop reader, sinks forget)
//!     held in Postgres, not here   ─► Supervisor::LeaseAcquired  (adopted after a restart)
//!   plan (fair share)
//!     extra ones                   ─► Supervisor::Surrender ... ◄─ HandedOver ─► release row
//!     missing ones ─► acquire      ─► Supervisor::LeaseAcquired  (claim in sinks, spawn reader)
//! Drop(lease)        a sink's write was fenced: forget it, free the row if still ours
//! Leave              graceful stop, after the sinks' final commits: free every lease
//! ```
//!
//! Part of the supervisor's generation (one-for-all restart); each message it sends
//! carries the generation so that a stopped manager's late news is ignored. A restarted
//! generation with the same member id adopts the leases that have not expired, at
//! their epoch. A Postgres error only skips a round; when no renewal succeeded for a
//! whole `lease.ttl`, every lease is given up locally, since others may take it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort};

use crate::leases::{self, Lease, LeaseView};
use crate::sinks::postgres::leases as sql;

pub struct LeaseArgs {
    pub pg: sqlx::PgPool,
    pub topic: Arc<str>,
    pub member: Arc<str>,
    pub ttl: Duration,
    pub renew_interval: Duration,
    pub partitions: i32,
    /// Told of every lease change (the supervisor: it starts and stops readers).
    pub supervisor: DerivedActorRef<LeaseEvent>,
    /// The supervisor's generation, echoed in every message to it.
    pub generation: u64,
    pub view: LeaseView,
}

/// What the lease manager tells the supervisor. `generation` is the supervisor's
/// generation the manager belongs to; news of an older one is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// This daemon holds `lease` (new or adopted): claim it in the sinks, start its reader.
    Acquired { lease: Lease, generation: u64 },
    /// `lease` is gone: stop its reader; the sinks drop its records.
    Lost { lease: Lease, generation: u64 },
    /// Hand `lease` over (rebalance): stop its reader, flush the sinks, then answer
    /// [`LeaseMessage::HandedOver`].
    Surrender { lease: Lease, generation: u64 },
}

pub enum LeaseMessage {
    /// One round: heartbeat, renew, rebalance.
    Tick,
    /// The topic's partition count, re-read by the supervisor.
    PartitionCount(i32),
    /// The supervisor finished handing this lease over (reader stopped, sinks flushed
    /// and committed): free the row.
    HandedOver(Lease),
    /// A write under this lease was refused, or claiming it failed: forget it and free
    /// the row if it is still ours.
    Drop(Lease),
    /// Graceful stop: free every lease and leave the members.
    Leave(RpcReplyPort<()>),
}

pub struct LeaseManager;

/// One held lease.
#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: i64,
    /// Being handed over (a `Surrender` was sent).
    leaving: bool,
}

pub struct LeaseState {
    args: LeaseArgs,
    held: BTreeMap<i32, Held>,
    members: i64,
    /// Lease rows exist for partitions below this.
    rows_for: i32,
    last_renewed: Instant,
    timer: Option<tokio::task::JoinHandle<()>>,
    /// After `Leave`: take nothing more.
    left: bool,
}

impl Actor for LeaseManager {
    type Msg = LeaseMessage;
    type State = LeaseState;
    type Arguments = LeaseArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<LeaseMessage>,
        args: LeaseArgs,
    ) -> Result<LeaseState, ActorProcessingErr> {
        tracing::info!(member = %args.member, topic = %args.topic, "lease manager starting");
        Ok(LeaseState {
            args,
            held: BTreeMap::new(),
            members: 1,
            rows_for: 0,
            last_renewed: Instant::now(),
            timer: None,
            left: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<LeaseMessage>,
        state: &mut LeaseState,
    ) -> Result<(), ActorProcessingErr> {
        myself.cast(LeaseMessage::Tick)?;
        state.timer = Some(myself.send_interval(state.args.renew_interval, || LeaseMessage::Tick));
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<LeaseMessage>,
        state: &mut LeaseState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.timer.take() {
            timer.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<LeaseMessage>,
        message: LeaseMessage,
        state: &mut LeaseState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LeaseMessage::Tick if !state.left => {
                if let Err(e) = state.round().await {
                    tracing::warn!(member = %state.args.member, error = %e, "lease round failed; will try again");
                    state.give_up_if_stale();
                }
                state.publish();
            }
            LeaseMessage::Tick => {}
            LeaseMessage::PartitionCount(n) => state.args.partitions = n,
            LeaseMessage::HandedOver(lease) | LeaseMessage::Drop(lease) => {
                if state.held.get(&lease.partition).map(|h| h.epoch) == Some(lease.epoch) {
                    state.held.remove(&lease.partition);
                }
                match sql::release(&state.args.pg, &state.args.topic, &state.args.member, lease)
                    .await
                {
                    Ok(freed) => {
                        tracing::info!(member = %state.args.member, partition = lease.partition, epoch = lease.epoch, freed, "lease released")
                    }
                    // It runs out by itself within the ttl.
                    Err(e) => {
                        tracing::warn!(partition = lease.partition, error = %e, "releasing a lease failed")
                    }
                }
                metrics::counter!("gamestream_lease_changes_total", "change" => "released")
                    .increment(1);
                state.publish();
            }
            LeaseMessage::Leave(reply) => {
                state.left = true;
                match sql::leave(&state.args.pg, &state.args.topic, &state.args.member).await {
                    Ok(freed) => {
                        tracing::info!(member = %state.args.member, freed, "left; leases released")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "releasing the leases failed; they run out by themselves")
                    }
                }
                state.held.clear();
                state.publish();
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

impl LeaseState {
    async fn round(&mut self) -> Result<(), sqlx::Error> {
        let pg = self.args.pg.clone();
        let topic = Arc::clone(&self.args.topic);
        let member = Arc::clone(&self.args.member);
        let (pg, topic, member, ttl) = (&pg, &*topic, &*member, self.args.ttl);
        self.members = sql::heartbeat(pg, topic, member, ttl).await?;
        if self.rows_for < self.args.partitions {
            sql::ensure_rows(pg, topic, self.args.partitions).await?;
            self.rows_for = self.args.partitions;
        }
        let renewed: BTreeMap<i32, i64> = sql::renew(pg, topic, member, ttl)
            .await?
            .into_iter()
            .map(|l| (l.partition, l.epoch))
            .collect();
        self.last_renewed = Instant::now();
        let lost: Vec<Lease> = self
            .held
            .iter()
            .filter(|(p, h)| renewed.get(p) != Some(&h.epoch))
            .map(|(p, h)| Lease {
                partition: *p,
                epoch: h.epoch,
            })
            .collect();
        for lease in lost {
            self.lose(lease);
        }
        for (&partition, &epoch) in &renewed {
            if !self.held.contains_key(&partition) {
                tracing::info!(
                    member,
                    partition,
                    epoch,
                    "adopting a lease this member still holds"
                );
                self.take(Lease { partition, epoch }, "adopted");
            }
        }
        let holding: BTreeMap<i32, bool> = self.held.iter().map(|(p, h)| (*p, h.leaving)).collect();
        let plan = leases::plan(&holding, self.args.partitions, self.members);
        for partition in plan.release {
            if let Some(held) = self.held.get_mut(&partition) {
                held.leaving = true;
                let lease = Lease {
                    partition,
                    epoch: held.epoch,
                };
                tracing::info!(
                    member,
                    partition,
                    members = self.members,
                    "handing a lease over (rebalance)"
                );
                let _ = self.args.supervisor.send_message(LeaseEvent::Surrender {
                    lease,
                    generation: self.args.generation,
                });
            }
        }
        if plan.acquire > 0 {
            let want = i64::try_from(plan.acquire).unwrap_or(i64::MAX);
            for lease in sql::acquire(pg, topic, member, want, self.args.partitions, ttl).await? {
                tracing::info!(
                    member,
                    partition = lease.partition,
                    epoch = lease.epoch,
                    members = self.members,
                    "lease acquired"
                );
                self.take(lease, "acquired");
            }
        }
        Ok(())
    }

    fn take(&mut self, lease: Lease, change: &'static str) {
        self.held.insert(
            lease.partition,
            Held {
                epoch: lease.epoch,
                leaving: false,
            },
        );
        metrics::counter!("gamestream_lease_changes_total", "change" => change).increment(1);
        let _ = self.args.supervisor.send_message(LeaseEvent::Acquired {
            lease,
            generation: self.args.generation,
        });
    }

    fn lose(&mut self, lease: Lease) {
        tracing::warn!(member = %self.args.member, partition = lease.partition, epoch = lease.epoch, "lease lost; stopping the partition");
        self.held.remove(&lease.partition);
        metrics::counter!("gamestream_lease_changes_total", "change" => "lost").increment(1);
        let _ = self.args.supervisor.send_message(LeaseEvent::Lost {
            lease,
            generation: self.args.generation,
        });
    }

    /// No renewal for a whole ttl: the leases may be someone else's by now.
    fn give_up_if_stale(&mut self) {
        if self.last_renewed.elapsed() < self.args.ttl {
            return;
        }
        let held: Vec<Lease> = self
            .held
            .iter()
            .map(|(p, h)| Lease {
                partition: *p,
                epoch: h.epoch,
            })
            .collect();
        for lease in held {
            self.lose(lease);
        }
    }

    /// Updates `/ready`'s view and the lease gauges.
    fn publish(&self) {
        let topic = self.args.topic.to_string();
        let partitions: BTreeMap<i32, i64> = self.held.iter().map(|(p, h)| (*p, h.epoch)).collect();
        for p in 0..self.args.partitions.max(self.rows_for) {
            let labels = [("topic", topic.clone()), ("partition", p.to_string())];
            let epoch = partitions.get(&p);
            metrics::gauge!("gamestream_partition_owned", &labels).set(if epoch.is_some() {
                1.0
            } else {
                0.0
            });
            metrics::gauge!("gamestream_lease_epoch", &labels)
                .set(epoch.copied().unwrap_or(0) as f64);
        }
        metrics::gauge!("gamestream_lease_members", "topic" => topic).set(self.members as f64);
        self.args.view.set(self.members, partitions);
    }
}
