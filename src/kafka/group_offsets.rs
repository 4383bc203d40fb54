//! The old pipeline's consumer groups, kept in Kafka as a mirror of the sinks' offsets.
//!
//! The sinks' offsets live beside their effects (Postgres `sink_offsets`, the Redis
//! offsets hashes): that is what makes the effects exactly-once, and it stays the
//! truth. Kafka's tools, Kafka UIs, lag exporters and KEDA read consumer groups
//! instead, so each old group is given the position of the sinks continuing it:
//!
//! | group | position per partition |
//! |---|---|
//! | `event-logger-group` | `event-logger` |
//! | `stats-aggregator-group` | the lower of `stats-aggregator` and `stats-aggregator-redis` |
//! | `leaderboard-manager-group` | the lower of `leaderboard-manager` and `leaderboard-manager-redis` |
//!
//! A partition that one of a group's sinks has not committed yet (or whose Redis lost
//! its offsets and will rebuild them) is left out of the group. The commits are
//! "simple" ones (no member), which the group coordinator refuses while the group has
//! members, and which are not even sent then: a group whose old consumers still run
//! belongs to them ([`MirrorOutcome::LiveMembers`]).
//!
//! This module writes the groups (and reads them back); the sinks' positions and each
//! group's share of them come from `sinks::positions`, and the actor that joins the
//! two every few seconds is `actors::group_mirror`.

use std::collections::{BTreeMap, BTreeSet};

use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::group::{GroupClient, GroupOffsets};

use super::KafkaError;
use crate::catalogue;

/// One old consumer group and the Kafka group name it is mirrored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroredGroup {
    /// The old group's name (`event-logger-group`, ...).
    pub legacy: &'static str,
    /// The group written in Kafka: `legacy` behind the configured prefix.
    pub name: String,
}

/// The three old groups, named with `prefix` (empty in production).
pub fn mirrored_groups(prefix: &str) -> Vec<MirroredGroup> {
    catalogue::LEGACY_GROUPS
        .iter()
        .map(|&legacy| MirroredGroup {
            legacy,
            name: format!("{prefix}{legacy}"),
        })
        .collect()
}

/// What one mirror of a group did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorOutcome {
    /// These partitions' offsets were committed.
    Committed(BTreeMap<i32, i64>),
    /// The group has live members (the old consumers): nothing was written. Each member
    /// as `client_id@host` (or the coordinator's refusal when it said so itself).
    LiveMembers(Vec<String>),
}

/// The group's committed offsets in `topic`'s `partitions` (those without one left out).
pub async fn fetch(
    group: &GroupClient,
    topic: &str,
    partitions: &BTreeSet<i32>,
) -> Result<BTreeMap<i32, i64>, KafkaError> {
    let asked = BTreeMap::from([(topic.to_owned(), partitions.iter().copied().collect())]);
    let mut offsets = group.fetch_offsets(&asked).await?;
    Ok(offsets.remove(topic).unwrap_or_default())
}

/// Commits `offsets` of `topic` to the group, unless the group has live members.
pub async fn mirror(
    group: &GroupClient,
    topic: &str,
    offsets: BTreeMap<i32, i64>,
) -> Result<MirrorOutcome, KafkaError> {
    match group.describe().await {
        Ok(description) if description.has_members() => {
            return Ok(MirrorOutcome::LiveMembers(
                description
                    .members
                    .iter()
                    .map(|m| format!("{}@{}", m.client_id, m.client_host))
                    .collect(),
            ));
        }
        Ok(_) => {}
        // A group of the new consumer protocol (KIP-848) is not described by
        // DescribeGroups; its coordinator refuses the commit below if it has members.
        Err(ClientError::ServerError {
            protocol_error: ProtocolError::GroupIdNotFound,
            ..
        }) => {}
        Err(e) => return Err(e.into()),
    }
    let commit: GroupOffsets = BTreeMap::from([(topic.to_owned(), offsets.clone())]);
    match group.commit_offsets(&commit).await {
        Ok(()) => Ok(MirrorOutcome::Committed(offsets)),
        // A consumer joined between the describe and the commit.
        Err(ClientError::ServerError {
            protocol_error:
                e @ (ProtocolError::UnknownMemberId
                | ProtocolError::IllegalGeneration
                | ProtocolError::RebalanceInProgress),
            ..
        }) => Ok(MirrorOutcome::LiveMembers(vec![format!(
            "(the coordinator refused a commit without a member: {e})"
        )])),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_the_old_names_behind_the_prefix() {
        let groups = mirrored_groups("t1-");
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "t1-event-logger-group",
                "t1-stats-aggregator-group",
                "t1-leaderboard-manager-group"
            ]
        );
        assert_eq!(mirrored_groups("")[0].name, "event-logger-group");
    }
}
