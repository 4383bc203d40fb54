//! Partition leases: how several daemons share a topic's partitions without a Kafka
//! consumer group (the design's rule: a partition has one writer at a time, fenced by
//! its lease epoch).
//!
//! ```text
//! every lease.renew_interval, per daemon (LeaseManager):
//!   heartbeat in lease_members ─► live members m ─► fair share s = ceil(partitions / m)
//!   renew own leases (lost ones: stop their readers at once)
//!   held > s: hand the extra ones over (stop reader, flush sinks, release the row)
//!   held < s: take free or expired ones (epoch + 1), claim them in every sink, read
//! every sink commit: fenced by (partition, epoch) in the same transaction / Lua script
//! ```
//!
//! This module holds the pure parts (member ids, the fair-share plan) and the view
//! that `/ready` shows; the statements are in `sinks::postgres::leases`, the actor in
//! `actors::lease_manager` (both above this layer, so not linked from here).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;

/// One held lease: the partition and the epoch (fencing token) it was taken with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lease {
    pub partition: i32,
    pub epoch: i64,
}

/// Characters of the random suffix of a default member id.
const MEMBER_SUFFIX_LEN: usize = 8;

/// This daemon's member id: the configured one, else the host name plus a random
/// suffix (two daemons on one host must not share an id; in Kubernetes the pod name
/// is configured, so that a restarted container keeps its unexpired leases).
pub fn member_id(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gamestream".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..MEMBER_SUFFIX_LEN])
}

/// How many partitions each of `members` live daemons may hold: ceil(partitions / members).
pub fn fair_share(partitions: i32, members: i64) -> usize {
    let partitions = usize::try_from(partitions.max(0)).unwrap_or(0);
    let members = usize::try_from(members.max(1)).unwrap_or(1);
    partitions.div_ceil(members)
}

/// What one lease round should do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// How many more free leases to take.
    pub acquire: usize,
    /// Held partitions to hand over (the highest ones, so shares stay predictable).
    pub release: Vec<i32>,
}

/// The plan for a daemon that holds `held` (partition → being handed over already)
/// of `partitions`, with `members` live daemons. Partitions that no longer exist are
/// released first; leases being handed over count as held until they are released,
/// so a round never takes more than the share.
pub fn plan(held: &BTreeMap<i32, bool>, partitions: i32, members: i64) -> Plan {
    let share = fair_share(partitions, members);
    let mut release: Vec<i32> = held
        .iter()
        .filter(|(p, leaving)| !**leaving && **p >= partitions)
        .map(|(p, _)| *p)
        .collect();
    let kept: Vec<i32> = held
        .iter()
        .filter(|(p, leaving)| !**leaving && **p < partitions)
        .map(|(p, _)| *p)
        .collect();
    let leaving = held.len() - kept.len() - release.len();
    let counted = kept.len() + leaving;
    // Handovers under way already count towards the excess.
    let extra = counted
        .saturating_sub(share)
        .saturating_sub(leaving)
        .min(kept.len());
    release.extend(kept.iter().rev().take(extra).copied());
    Plan {
        acquire: share.saturating_sub(counted),
        release,
    }
}

/// What this daemon holds, as `/ready` and the logs show it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LeaseSnapshot {
    pub member: String,
    pub topic: String,
    /// Live members at the last round (this one included).
    pub members: i64,
    /// Held partitions and their lease epochs.
    pub partitions: BTreeMap<i32, i64>,
}

/// The lease manager's latest snapshot, shared with the HTTP server. A std lock:
/// it is held only to copy a small map, never across an await.
#[derive(Debug, Clone, Default)]
pub struct LeaseView(Arc<RwLock<LeaseSnapshot>>);

impl LeaseView {
    pub fn new(member: &str, topic: &str) -> Self {
        Self(Arc::new(RwLock::new(LeaseSnapshot {
            member: member.to_owned(),
            topic: topic.to_owned(),
            ..LeaseSnapshot::default()
        })))
    }

    pub fn snapshot(&self) -> LeaseSnapshot {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set(&self, members: i64, partitions: BTreeMap<i32, i64>) {
        let mut guard = match self.0.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.members = members;
        guard.partitions = partitions;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(parts: &[(i32, bool)]) -> BTreeMap<i32, bool> {
        parts.iter().copied().collect()
    }

    #[test]
    fn shares_are_ceilings() {
        assert_eq!(fair_share(6, 1), 6);
        assert_eq!(fair_share(6, 3), 2);
        assert_eq!(fair_share(6, 4), 2);
        assert_eq!(fair_share(6, 5), 2);
        assert_eq!(fair_share(6, 7), 1);
        assert_eq!(fair_share(5, 2), 3);
        assert_eq!(fair_share(6, 0), 6, "no members known yet counts as one");
    }

    #[test]
    fn a_lone_daemon_takes_everything() {
        assert_eq!(
            plan(&held(&[]), 6, 1),
            Plan {
                acquire: 6,
                release: vec![]
            }
        );
    }

    #[test]
    fn a_joiner_makes_the_others_hand_over_their_highest() {
        // Two daemons held 3 each; a third joins: share 2.
        assert_eq!(
            plan(&held(&[(0, false), (2, false), (4, false)]), 6, 3),
            Plan {
                acquire: 0,
                release: vec![4]
            }
        );
    }

    #[test]
    fn survivors_take_a_dead_daemons_share() {
        // Three held 2 each; one died: share 3.
        assert_eq!(plan(&held(&[(0, false), (3, false)]), 6, 2).acquire, 1);
    }

    #[test]
    fn leases_being_handed_over_count_until_released() {
        let p = plan(&held(&[(0, false), (1, false), (5, true)]), 6, 3);
        assert_eq!(
            p,
            Plan {
                acquire: 0,
                release: vec![]
            },
            "the handover under way is enough"
        );
    }

    #[test]
    fn partitions_that_no_longer_exist_are_released() {
        let p = plan(&held(&[(0, false), (7, false)]), 6, 1);
        assert_eq!(p.release, vec![7]);
        assert_eq!(p.acquire, 5);
    }

    #[test]
    fn shares_add_up_to_every_partition() {
        for partitions in 1..=12 {
            for members in 1..=8i64 {
                let share = fair_share(partitions, members);
                assert!(share * members as usize >= partitions as usize);
                assert!(share == 0 || (share - 1) * (members as usize) < partitions as usize);
            }
        }
    }

    #[test]
    fn default_member_ids_differ() {
        assert_ne!(member_id(""), member_id(""));
        assert_eq!(member_id("pod-7"), "pod-7");
    }
}
