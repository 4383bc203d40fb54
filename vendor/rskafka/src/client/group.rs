//! A consumer group's committed offsets and membership, through the group's coordinator.
//!
//! gamestream patch (see `GAMESTREAM_PATCH.md`): not part of rskafka 0.6.0.
//!
//! The client does not join the group. It commits "simple" offsets (generation -1, empty
//! member id), as Kafka's own tools do for a group without members; the coordinator
//! refuses them (`UNKNOWN_MEMBER_ID`, `ILLEGAL_GENERATION`) while the group has live
//! members. [`GroupClient::describe`] tells whether it has.
//!
//! The coordinator is found with `FindCoordinator` and cached; a broken connection,
//! `NOT_COORDINATOR`, `COORDINATOR_NOT_AVAILABLE` or `COORDINATOR_LOAD_IN_PROGRESS`
//! drops it and the request is sent again, to the coordinator found anew, with backoff
//! until the client's backoff deadline. Throttle times in the answers are not acted on.
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::{
    backoff::{Backoff, BackoffConfig, ErrorOrThrottle},
    client::{Error, Result, error::RequestContext},
    connection::{BrokerCache, BrokerCacheGeneration, BrokerConnection, BrokerConnector},
    messenger::RequestError,
    protocol::{
        error::Error as ProtocolError,
        messages::{
            COORDINATOR_KEY_TYPE_GROUP, DescribeGroupsRequest, FindCoordinatorRequest,
            OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
            OffsetFetchRequest, OffsetFetchRequestTopic, SIMPLE_COMMIT_GENERATION_ID,
        },
        primitives::{Int8, Int32, Int64, NullableString, String_},
    },
};

/// Committed offsets, by topic and partition: the next offset to consume.
pub type GroupOffsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// A client for one consumer group. Build it with
/// [`Client::group_client`](crate::client::Client::group_client).
#[derive(Debug)]
pub struct GroupClient {
    group: String,
    brokers: Arc<BrokerConnector>,
    backoff_config: Arc<BackoffConfig>,
    /// The group's coordinator, once found.
    coordinator: Mutex<(Option<BrokerConnection>, BrokerCacheGeneration)>,
}

/// A group as `DescribeGroups` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupDescription {
    /// `Empty`, `Stable`, `PreparingRebalance`, `CompletingRebalance`, or `Dead` (also
    /// for a group that does not exist).
    pub state: String,
    /// `consumer` for consumers, empty for a group that only has committed offsets.
    pub protocol_type: String,
    /// The live members.
    pub members: Vec<GroupMember>,
}

impl GroupDescription {
    /// Whether consumers are in the group (a simple commit would be refused).
    pub fn has_members(&self) -> bool {
        !self.members.is_empty()
    }
}

/// A live member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupMember {
    pub member_id: String,
    /// The static member id (`group.instance.id`), if any.
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
}

impl GroupClient {
    pub(super) fn new(
        group: String,
        brokers: Arc<BrokerConnector>,
        backoff_config: Arc<BackoffConfig>,
    ) -> Self {
        Self {
            group,
            brokers,
            backoff_config,
            coordinator: Mutex::new((None, BrokerCacheGeneration::START)),
        }
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The group's state and live members.
    pub async fn describe(&self) -> Result<GroupDescription> {
        let request = &DescribeGroupsRequest {
            groups: vec![String_(self.group.clone())],
            include_authorized_operations: None,
            tagged_fields: None,
        };
        self.retry("describe_group", || async move {
            let (broker, r#gen) = self.coordinator_or_retry().await?;
            let response = broker
                .request(request)
                .await
                .map_err(|e| ErrorOrThrottle::Error((e.into(), Some(r#gen))))?;
            let group = response
                .groups
                .into_iter()
                .find(|g| g.group_id.0 == self.group)
                .ok_or_else(|| {
                    ErrorOrThrottle::Error((
                        Error::InvalidResponse(format!(
                            "DescribeGroups answered without group `{}`",
                            self.group
                        )),
                        Some(r#gen),
                    ))
                })?;
            if let Some(protocol_error) = group.error {
                return Err(ErrorOrThrottle::Error((
                    self.server_error(protocol_error, None),
                    Some(r#gen),
                )));
            }
            Ok(GroupDescription {
                state: group.group_state.0,
                protocol_type: group.protocol_type.0,
                members: group
                    .members
                    .into_iter()
                    .map(|m| GroupMember {
                        member_id: m.member_id.0,
                        group_instance_id: m.group_instance_id.and_then(|i| i.0),
                        client_id: m.client_id.0,
                        client_host: m.client_host.0,
                    })
                    .collect(),
            })
        })
        .await
    }

    /// The group's committed offsets of the given partitions; a partition without a
    /// committed offset is left out.
    pub async fn fetch_offsets(
        &self,
        partitions: &BTreeMap<String, Vec<i32>>,
    ) -> Result<GroupOffsets> {
        let request = &OffsetFetchRequest {
            group_id: String_(self.group.clone()),
            topics: Some(
                partitions
                    .iter()
                    .map(|(topic, partitions)| OffsetFetchRequestTopic {
                        name: String_(topic.clone()),
                        partition_indexes: partitions.iter().copied().map(Int32).collect(),
                        tagged_fields: None,
                    })
                    .collect(),
            ),
            require_stable: None,
            tagged_fields: None,
        };
        self.retry("fetch_offsets", || async move {
            let (broker, r#gen) = self.coordinator_or_retry().await?;
            let response = broker
                .request(request)
                .await
                .map_err(|e| ErrorOrThrottle::Error((e.into(), Some(r#gen))))?;
            if let Some(protocol_error) = response.error {
                return Err(ErrorOrThrottle::Error((
                    self.server_error(protocol_error, None),
                    Some(r#gen),
                )));
            }
            let mut offsets = GroupOffsets::new();
            for topic in response.topics {
                for partition in topic.partitions {
                    if let Some(protocol_error) = partition.error {
                        return Err(ErrorOrThrottle::Error((
                            Error::ServerError {
                                protocol_error,
                                error_message: None,
                                request: RequestContext::Partition(
                                    topic.name.0.clone(),
                                    partition.partition_index.0,
                                ),
                                response: None,
                                is_virtual: false,
                            },
                            Some(r#gen),
                        )));
                    }
                    if partition.committed_offset.0 >= 0 {
                        offsets
                            .entry(topic.name.0.clone())
                            .or_default()
                            .insert(partition.partition_index.0, partition.committed_offset.0);
                    }
                }
            }
            Ok(offsets)
        })
        .await
    }

    /// Commits `offsets` (the next offset to consume, per topic and partition) as a
    /// simple commit: generation -1, no member. Refused by the coordinator while the
    /// group has members (`UNKNOWN_MEMBER_ID` or `ILLEGAL_GENERATION`).
    pub async fn commit_offsets(&self, offsets: &GroupOffsets) -> Result<()> {
        let request = &OffsetCommitRequest {
            group_id: String_(self.group.clone()),
            generation_id: Int32(SIMPLE_COMMIT_GENERATION_ID),
            member_id: String_(String::new()),
            group_instance_id: None,
            retention_time_ms: None,
            topics: offsets
                .iter()
                .map(|(topic, partitions)| OffsetCommitRequestTopic {
                    name: String_(topic.clone()),
                    partitions: partitions
                        .iter()
                        .map(|(&partition, &offset)| OffsetCommitRequestPartition {
                            partition_index: Int32(partition),
                            committed_offset: Int64(offset),
                            committed_leader_epoch: None,
                            committed_metadata: NullableString(Some(String::new())),
                            tagged_fields: None,
                        })
                        .collect(),
                    tagged_fields: None,
                })
                .collect(),
            tagged_fields: None,
        };
        self.retry("commit_offsets", || async move {
            let (broker, r#gen) = self.coordinator_or_retry().await?;
            let response = broker
                .request(request)
                .await
                .map_err(|e| ErrorOrThrottle::Error((e.into(), Some(r#gen))))?;
            // A coordinator error applies to every partition: report that one first, so
            // that the whole commit is sent again.
            let mut first_error = None;
            for topic in &response.topics {
                for partition in &topic.partitions {
                    if let Some(protocol_error) = partition.error {
                        let context = (topic.name.0.clone(), partition.partition_index.0);
                        if is_coordinator_error(protocol_error) {
                            first_error = Some((protocol_error, context));
                            break;
                        }
                        first_error.get_or_insert((protocol_error, context));
                    }
                }
            }
            match first_error {
                None => Ok(()),
                Some((protocol_error, (topic, partition))) => Err(ErrorOrThrottle::Error((
                    Error::ServerError {
                        protocol_error,
                        error_message: Some(format!("committing group `{}`", self.group)),
                        request: RequestContext::Partition(topic, partition),
                        response: None,
                        is_virtual: false,
                    },
                    Some(r#gen),
                ))),
            }
        })
        .await
    }

    fn server_error(&self, protocol_error: ProtocolError, error_message: Option<String>) -> Error {
        Error::ServerError {
            protocol_error,
            error_message,
            request: RequestContext::Group(self.group.clone()),
            response: None,
            is_virtual: false,
        }
    }

    async fn coordinator_or_retry(
        &self,
    ) -> Result<
        (BrokerConnection, BrokerCacheGeneration),
        ErrorOrThrottle<(Error, Option<BrokerCacheGeneration>)>,
    > {
        self.get()
            .await
            .map_err(|e| ErrorOrThrottle::Error((e, None)))
    }

    /// Asks an arbitrary broker for the group's coordinator and connects to it.
    async fn find_coordinator(&self) -> Result<BrokerConnection> {
        let request = &FindCoordinatorRequest {
            key: String_(self.group.clone()),
            key_type: Some(Int8(COORDINATOR_KEY_TYPE_GROUP)),
            tagged_fields: None,
        };
        let (broker, r#gen) = (&*self.brokers).get().await?;
        let response = match broker.request(request).await {
            Ok(response) => response,
            Err(e) => {
                (&*self.brokers)
                    .invalidate("group client: connection broken", r#gen)
                    .await;
                return Err(e.into());
            }
        };
        if let Some(protocol_error) = response.error {
            return Err(self.server_error(protocol_error, response.error_message.and_then(|m| m.0)));
        }
        let node_id = response.node_id.0;
        if let Some(connection) = self.brokers.connect(node_id).await? {
            return Ok(connection);
        }
        // A broker the cached topology does not know yet: refresh it once.
        self.brokers.refresh_metadata().await?;
        self.brokers.connect(node_id).await?.ok_or_else(|| {
            Error::InvalidResponse(format!(
                "coordinator {node_id} of group `{}` ({}:{}) is not in the cluster metadata",
                self.group, response.host.0, response.port.0
            ))
        })
    }

    /// Runs `f` with backoff, finding the coordinator again after the errors that say it
    /// moved or is not ready.
    async fn retry<R, F, T>(&self, request_name: &str, f: R) -> Result<T>
    where
        R: (Fn() -> F) + Send + Sync,
        F: std::future::Future<
                Output = Result<T, ErrorOrThrottle<(Error, Option<BrokerCacheGeneration>)>>,
            > + Send,
    {
        let mut backoff = Backoff::new(&self.backoff_config);
        backoff
            .retry_with_backoff(request_name, || async {
                let (error, cache_gen) = match f().await {
                    Ok(v) => return ControlFlow::Break(Ok(v)),
                    Err(ErrorOrThrottle::Throttle(t)) => {
                        return ControlFlow::Continue(ErrorOrThrottle::Throttle(t));
                    }
                    Err(ErrorOrThrottle::Error(e)) => e,
                };
                let reason = match &error {
                    Error::Request(RequestError::Poisoned(_) | RequestError::IO(_))
                    | Error::Connection(_) => "group client: connection broken",
                    Error::ServerError { protocol_error, .. }
                        if is_coordinator_error(*protocol_error) =>
                    {
                        "group client: coordinator moved or not ready"
                    }
                    _ => {
                        debug!(e=%error, request_name, group=%self.group, "group request failed");
                        return ControlFlow::Break(Err(error));
                    }
                };
                if let Some(cache_gen) = cache_gen {
                    self.invalidate(reason, cache_gen).await;
                }
                ControlFlow::Continue(ErrorOrThrottle::Error(error))
            })
            .await
            .map_err(Error::RetryFailed)?
    }
}

/// The errors after which the coordinator is looked up again and the request re-sent.
fn is_coordinator_error(error: ProtocolError) -> bool {
    matches!(
        error,
        ProtocolError::NotCoordinator
            | ProtocolError::CoordinatorNotAvailable
            | ProtocolError::CoordinatorLoadInProgress
    )
}

/// Caches the group's coordinator.
impl BrokerCache for &GroupClient {
    type R = crate::connection::MessengerTransport;
    type E = Error;

    async fn get(&self) -> Result<(BrokerConnection, BrokerCacheGeneration)> {
        let mut current = self.coordinator.lock().await;
        if let Some(broker) = &current.0 {
            return Ok((Arc::clone(broker), current.1));
        }
        let broker = self.find_coordinator().await?;
        info!(group = %self.group, "found the group coordinator");
        current.0 = Some(Arc::clone(&broker));
        current.1.bump();
        Ok((broker, current.1))
    }

    async fn invalidate(&self, reason: &'static str, r#gen: BrokerCacheGeneration) {
        let mut current = self.coordinator.lock().await;
        if current.1 != r#gen {
            debug!(
                reason,
                current_gen = current.1.get(),
                request_gen = r#gen.get(),
                "stale invalidation request for group coordinator cache",
            );
            return;
        }
        warn!(reason, group = %self.group, "invalidating cached group coordinator");
        current.0.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_coordinator_errors_are_retried() {
        for error in [
            ProtocolError::NotCoordinator,
            ProtocolError::CoordinatorNotAvailable,
            ProtocolError::CoordinatorLoadInProgress,
        ] {
            assert!(is_coordinator_error(error), "{error:?}");
        }
        for error in [
            ProtocolError::UnknownMemberId,
            ProtocolError::IllegalGeneration,
            ProtocolError::GroupAuthorizationFailed,
        ] {
            assert!(!is_coordinator_error(error), "{error:?}");
        }
    }

    #[test]
    fn test_has_members() {
        let mut group = GroupDescription {
            state: "Empty".to_owned(),
            protocol_type: "consumer".to_owned(),
            members: vec![],
        };
        assert!(!group.has_members());
        group.members.push(GroupMember {
            member_id: "m".to_owned(),
            group_instance_id: None,
            client_id: "c".to_owned(),
            client_host: "/h".to_owned(),
        });
        assert!(group.has_members());
    }
}
