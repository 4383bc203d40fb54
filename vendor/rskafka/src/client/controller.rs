use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use tokio::sync::Mutex;
use tracing::{debug, error, info};

use crate::{
    backoff::{Backoff, BackoffConfig, ErrorOrThrottle},
    client::{Error, Result},
    connection::{
        BrokerCache, BrokerCacheGeneration, BrokerConnection, BrokerConnector, MessengerTransport,
        MetadataLookupMode,
    },
    messenger::RequestError,
    protocol::{
        error::Error as ProtocolError,
        messages::{
            CreateTopicConfig, CreateTopicRequest, CreateTopicsRequest, DeleteTopicsRequest,
            DescribeConfigsRequest, DescribeConfigsResource, DescribeConfigsResourceResult,
            InitProducerIdRequest, RESOURCE_TYPE_TOPIC,
        },
        primitives::{Array, Boolean, Int8, Int16, Int32, Int64, NullableString, String_},
    },
    throttle::maybe_throttle,
    validation::ExactlyOne,
};

use super::error::RequestContext;

/// The identity of an idempotent producer (KIP-98): its id and epoch, written into every
/// record batch it produces together with the batch's base sequence number.
///
/// gamestream patch (see `GAMESTREAM_PATCH.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProducerIdentity {
    /// The producer id the broker assigned.
    pub id: i64,
    /// The epoch: a new epoch starts every partition's sequence at 0 again.
    pub epoch: i16,
}

#[derive(Debug)]
pub struct ControllerClient {
    brokers: Arc<BrokerConnector>,

    backoff_config: Arc<BackoffConfig>,

    /// Current broker connection if any
    current_broker: Mutex<(Option<BrokerConnection>, BrokerCacheGeneration)>,
}

impl ControllerClient {
    pub(super) fn new(brokers: Arc<BrokerConnector>, backoff_config: Arc<BackoffConfig>) -> Self {
        Self {
            brokers,
            backoff_config,
            current_broker: Mutex::new((None, BrokerCacheGeneration::START)),
        }
    }

    /// Create a topic
    pub async fn create_topic(
        &self,
        name: impl Into<String> + Send,
        num_partitions: i32,
        replication_factor: i16,
        timeout_ms: i32,
    ) -> Result<()> {
        self.create_topic_with_configs(
            name,
            num_partitions,
            replication_factor,
            BTreeMap::new(),
            timeout_ms,
        )
        .await
    }

    /// Create a topic with topic-level configuration (`retention.ms`, `min.insync.replicas`,
    /// ...), which the broker validates: an invalid name or value fails the creation with a
    /// [`Error::ServerError`] (e.g. `InvalidConfig`) carrying the broker's message.
    ///
    /// gamestream patch (see `GAMESTREAM_PATCH.md`).
    pub async fn create_topic_with_configs(
        &self,
        name: impl Into<String> + Send,
        num_partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        timeout_ms: i32,
    ) -> Result<()> {
        let request = &create_topics_request(
            name.into(),
            num_partitions,
            replication_factor,
            configs,
            timeout_ms,
        );

        maybe_retry(&self.backoff_config, self, "create_topic", || async move {
            let (broker, r#gen) = self
                .get()
                .await
                .map_err(|e| ErrorOrThrottle::Error((e, None)))?;
            let response = broker
                .request(request)
                .await
                .map_err(|e| ErrorOrThrottle::Error((e.into(), Some(r#gen))))?;

            maybe_throttle(response.throttle_time_ms)?;

            let topic = response
                .topics
                .exactly_one()
                .map_err(|e| ErrorOrThrottle::Error((Error::exactly_one_topic(e), Some(r#gen))))?;

            match topic.error {
                None => Ok(()),
                Some(protocol_error) => Err(ErrorOrThrottle::Error((
                    Error::ServerError {
                        protocol_error,
                        error_message: topic.error_message.and_then(|s| s.0),
                        request: RequestContext::Topic(topic.name.0),
                        response: None,
                        is_virtual: false,
                    },
                    Some(r#gen),
                ))),
            }
        })
        .await?;

        // Refresh the cache now there is definitely a new topic to observe.
        let _ = self.brokers.refresh_metadata().await;

        Ok(())
    }

    /// Delete a topic
    pub async fn delete_topic(
        &self,
        name: impl Into<String> + Send,
        timeout_ms: i32,
    ) -> Result<()> {
        let request = &DeleteTopicsRequest {
            topic_names: Array(Some(vec![String_(name.into())])),
            timeout_ms: Int32(timeout_ms),
            tagged_fields: None,
        };

        maybe_retry(&self.backoff_config, self, "delete_topic", || async move {
            let (broker, r#gen) = self
                .get()
                .await
                .map_err(|e| ErrorOrThrottle::Error((e, None)))?;
            let response = broker
                .request(request)
                .await
                .map_err(|e| ErrorOrThrottle::Error((e.into(), Some(r#gen))))?;

            maybe_throttle(response.throttle_time_ms)?;

            let topic = response
                .responses
                .exactly_one()
                .map_err(|e| ErrorOrThrottle::Error((Error::exactly_one_topic(e), Some(r#gen))))?;

            match topic.error {
                None => Ok(()),
                Some(protocol_error) => Err(ErrorOrThrottle::Error((
                    Error::ServerError {
                        protocol_error,
                        error_message: topic.error_message.and_then(|s| s.0),
                        request: RequestContext::Topic(topic.name.0),
                        response: None,
                        is_virtual: false,
                    },
                    Some(r#gen),
                ))),
            }
        })
        .await?;

        // Refresh the cache now there is definitely a new topic to observe.
        let _ = self.brokers.refresh_metadata().await;

        Ok(())
    }

    /// Describe the configuration of a topic: every entry, or only those named in `keys`
    /// (an empty list asks for none). Values the broker withholds (sensitive ones) are
    /// `None`.
    ///
    /// gamestream patch (see `GAMESTREAM_PATCH.md`).
    pub async fn describe_topic_configs(
        &self,
        name: impl Into<String> + Send,
        keys: Option<Vec<String>>,
    ) -> Result<Vec<ConfigEntry>> {
        let request = &DescribeConfigsRequest {
            resources: vec![DescribeConfigsResource {
                resource_type: Int8(RESOURCE_TYPE_TOPIC),
                resource_name: String_(name.into()),
                configuration_keys: Array(keys.map(|keys| keys.into_iter().map(String_).collect())),
                tagged_fields: None,
            }],
            include_synonyms: None,
            include_documentation: None,
            tagged_fields: None,
        };

        let configs = maybe_retry(
            &self.backoff_config,
            self,
            "describe_topic_configs",
            || async move {
                let (broker, r#gen) = self
                    .get()
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e, None)))?;
                let response = broker
                    .request(request)
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e.into(), Some(r#gen))))?;

                maybe_throttle(Some(response.throttle_time_ms))?;

                let result = response.results.exactly_one().map_err(|e| {
                    ErrorOrThrottle::Error((Error::exactly_one_topic(e), Some(r#gen)))
                })?;

                match result.error {
                    None => Ok(result.configs),
                    Some(protocol_error) => Err(ErrorOrThrottle::Error((
                        Error::ServerError {
                            protocol_error,
                            error_message: result.error_message.0,
                            request: RequestContext::Topic(result.resource_name.0),
                            response: None,
                            is_virtual: false,
                        },
                        Some(r#gen),
                    ))),
                }
            },
        )
        .await?;

        Ok(configs.into_iter().map(ConfigEntry::from).collect())
    }

    /// Gets a new producer id and epoch for an idempotent producer (no transactional id):
    /// InitProducerId (API key 22), answered by any broker; sent through the controller
    /// connection because it is the one cluster-wide connection this client keeps.
    ///
    /// gamestream patch (see `GAMESTREAM_PATCH.md`). An idempotent producer bumps its
    /// epoch locally, as Apache Kafka's Java client does (KIP-360): it needs this call
    /// only for its first id, or for a new one once its epoch is exhausted.
    pub async fn init_producer_id(&self) -> Result<ProducerIdentity> {
        let request = &InitProducerIdRequest {
            transactional_id: NullableString(None),
            transaction_timeout_ms: Int32(i32::MAX),
            producer_id: None,
            producer_epoch: None,
            tagged_fields: None,
        };

        maybe_retry(&self.backoff_config, self, "init_producer_id", || async move {
            let (broker, r#gen) = self
                .get()
                .await
                .map_err(|e| ErrorOrThrottle::Error((e, None)))?;
            let response = broker
                .request(request)
                .await
                .map_err(|e| ErrorOrThrottle::Error((e.into(), Some(r#gen))))?;
            if response.throttle_time_ms.0 > 0 {
                broker.throttle(std::time::Duration::from_millis(
                    response.throttle_time_ms.0 as u64,
                ));
            }
            match response.error {
                None => Ok(ProducerIdentity {
                    id: response.producer_id.0,
                    epoch: response.producer_epoch.0,
                }),
                Some(protocol_error) => Err(ErrorOrThrottle::Error((
                    Error::ServerError {
                        protocol_error,
                        error_message: None,
                        request: RequestContext::Producer,
                        response: None,
                        is_virtual: false,
                    },
                    Some(r#gen),
                ))),
            }
        })
        .await
    }

    /// Retrieve the broker ID of the controller
    async fn get_controller_id(&self) -> Result<i32> {
        // Request an uncached, fresh copy of the metadata.
        let (metadata, _gen) = self
            .brokers
            .request_metadata(&MetadataLookupMode::ArbitraryBroker, Some(vec![]))
            .await?;

        let controller_id = metadata
            .controller_id
            .ok_or_else(|| Error::InvalidResponse("Leader is NULL".to_owned()))?
            .0;

        Ok(controller_id)
    }
}

/// One configuration entry of a resource, as `DescribeConfigs` reports it.
///
/// gamestream patch (see `GAMESTREAM_PATCH.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigEntry {
    /// The configuration name, e.g. `retention.ms`.
    pub name: String,

    /// The value in effect; `None` for a sensitive one the broker does not reveal.
    pub value: Option<String>,

    /// Where the value comes from.
    pub source: ConfigSource,

    /// True if the configuration cannot be changed.
    pub read_only: bool,

    /// True if the configuration is sensitive (a password, a key).
    pub is_sensitive: bool,
}

impl From<DescribeConfigsResourceResult> for ConfigEntry {
    fn from(config: DescribeConfigsResourceResult) -> Self {
        let source = match (config.config_source, config.is_default) {
            (Some(source), _) => ConfigSource::from(source.0),
            // Version 0 only says whether the value is the default; any other value of a
            // topic was set on the topic (as Kafka's own client reads it).
            (None, Some(Boolean(true))) => ConfigSource::DefaultConfig,
            (None, _) => ConfigSource::DynamicTopicConfig,
        };
        Self {
            name: config.name.0,
            value: config.value.0,
            source,
            read_only: config.read_only.0,
            is_sensitive: config.is_sensitive.0,
        }
    }
}

/// Where a configuration value comes from (`DescribeConfigsResponse.ConfigSource`).
///
/// gamestream patch (see `GAMESTREAM_PATCH.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigSource {
    /// The broker did not say.
    Unknown,
    /// Set on the topic itself.
    DynamicTopicConfig,
    /// Set dynamically for this broker.
    DynamicBrokerConfig,
    /// Set dynamically as the default of every broker.
    DynamicDefaultBrokerConfig,
    /// In the broker's `server.properties`.
    StaticBrokerConfig,
    /// Kafka's built-in default.
    DefaultConfig,
    /// A dynamic broker logger level.
    DynamicBrokerLoggerConfig,
    /// A client metrics subscription.
    ClientMetricsConfig,
    /// Set on a consumer group.
    GroupConfig,
    /// A code this client does not know.
    Other(i8),
}

impl From<i8> for ConfigSource {
    fn from(source: i8) -> Self {
        match source {
            -1 | 0 => Self::Unknown,
            1 => Self::DynamicTopicConfig,
            2 => Self::DynamicBrokerConfig,
            3 => Self::DynamicDefaultBrokerConfig,
            4 => Self::StaticBrokerConfig,
            5 => Self::DefaultConfig,
            6 => Self::DynamicBrokerLoggerConfig,
            7 => Self::ClientMetricsConfig,
            8 => Self::GroupConfig,
            other => Self::Other(other),
        }
    }
}

/// The `CreateTopics` request for one topic with automatic partition assignment.
fn create_topics_request(
    name: String,
    num_partitions: i32,
    replication_factor: i16,
    configs: BTreeMap<String, String>,
    timeout_ms: i32,
) -> CreateTopicsRequest {
    CreateTopicsRequest {
        topics: vec![CreateTopicRequest {
            name: String_(name),
            num_partitions: Int32(num_partitions),
            replication_factor: Int16(replication_factor),
            assignments: vec![],
            configs: configs
                .into_iter()
                .map(|(name, value)| CreateTopicConfig {
                    name: String_(name),
                    value: NullableString(Some(value)),
                    tagged_fields: None,
                })
                .collect(),
            tagged_fields: None,
        }],
        timeout_ms: Int32(timeout_ms),
        validate_only: None,
        tagged_fields: None,
    }
}

/// Caches the cluster controller broker.
impl BrokerCache for &ControllerClient {
    type R = MessengerTransport;
    type E = Error;

    async fn get(&self) -> Result<(Arc<Self::R>, BrokerCacheGeneration)> {
        let mut current_broker = self.current_broker.lock().await;
        if let Some(broker) = &current_broker.0 {
            return Ok((Arc::clone(broker), current_broker.1));
        }

        info!("Creating new controller broker connection",);

        let controller_id = self.get_controller_id().await?;
        let broker = self.brokers.connect(controller_id).await?.ok_or_else(|| {
            Error::InvalidResponse(format!(
                "Controller {} not found in metadata response",
                controller_id
            ))
        })?;

        current_broker.0 = Some(Arc::clone(&broker));
        current_broker.1.bump();

        Ok((broker, current_broker.1))
    }

    async fn invalidate(&self, reason: &'static str, r#gen: BrokerCacheGeneration) {
        let mut guard = self.current_broker.lock().await;

        if guard.1 != r#gen {
            // stale request
            debug!(
                reason,
                current_gen = guard.1.get(),
                request_gen = r#gen.get(),
                "stale invalidation request for arbitrary broker cache",
            );
            return;
        }

        info!(reason, "Invalidating cached controller broker",);
        guard.0.take();
    }
}

/// Takes a `request_name` and a function yielding a fallible future
/// and handles certain classes of error
async fn maybe_retry<B, R, F, T>(
    backoff_config: &BackoffConfig,
    broker_cache: B,
    request_name: &str,
    f: R,
) -> Result<T>
where
    B: BrokerCache,
    R: (Fn() -> F) + Send + Sync,
    F: std::future::Future<
            Output = Result<T, ErrorOrThrottle<(Error, Option<BrokerCacheGeneration>)>>,
        > + Send,
{
    let mut backoff = Backoff::new(backoff_config);

    backoff
        .retry_with_backoff(request_name, || async {
            let (error, cache_gen) = match f().await {
                Ok(v) => {
                    return ControlFlow::Break(Ok(v));
                }
                Err(ErrorOrThrottle::Throttle(t)) => {
                    return ControlFlow::Continue(ErrorOrThrottle::Throttle(t));
                }
                Err(ErrorOrThrottle::Error(e)) => e,
            };

            match error {
                // broken connection
                Error::Request(RequestError::Poisoned(_) | RequestError::IO(_))
                | Error::Connection(_) => {
                    if let Some(cache_gen) = cache_gen {
                        broker_cache
                            .invalidate("controller client: connection broken", cache_gen)
                            .await
                    }
                }

                // our broker is actually not the controller
                Error::ServerError {
                    protocol_error: ProtocolError::NotController,
                    ..
                } => {
                    if let Some(cache_gen) = cache_gen {
                        broker_cache
                            .invalidate(
                                "controller client: server error: not controller",
                                cache_gen,
                            )
                            .await;
                    }
                }

                // fatal
                _ => {
                    error!(
                        e=%error,
                        request_name,
                        "request encountered fatal error",
                    );
                    return ControlFlow::Break(Err(error));
                }
            }
            ControlFlow::Continue(ErrorOrThrottle::Error(error))
        })
        .await
        .map_err(Error::RetryFailed)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{api_version::ApiVersion, messages::WriteVersionedType};

    fn encoded(version: i16) -> Vec<u8> {
        let configs = BTreeMap::from([
            ("retention.ms".to_owned(), "1000".to_owned()),
            ("min.insync.replicas".to_owned(), "2".to_owned()),
        ]);
        let mut buf = vec![];
        create_topics_request("t".to_owned(), 3, 1, configs, 5000)
            .write_versioned(&mut buf, ApiVersion(Int16(version)))
            .unwrap();
        buf
    }

    #[test]
    fn test_create_topics_request_carries_configs_v5() {
        let mut expected = vec![
            2, // compact array: one topic
            2, b't', // name
            0, 0, 0, 3, // partitions
            0, 1, // replication factor
            1, // compact array: no assignments
            3, // compact array: two configs, in name order
            20,
        ];
        expected.extend_from_slice(b"min.insync.replicas");
        expected.extend_from_slice(&[2, b'2', 0, 13]);
        expected.extend_from_slice(b"retention.ms");
        expected.extend_from_slice(&[5, b'1', b'0', b'0', b'0', 0]);
        expected.extend_from_slice(&[
            0, // topic's tagged fields
            0, 0, 0x13, 0x88, // timeout 5000 ms
            0,    // validate only: false
            0,    // tagged fields
        ]);
        assert_eq!(encoded(5), expected);
    }

    #[test]
    fn test_create_topics_request_carries_configs_v4() {
        let mut expected = vec![
            0, 0, 0, 1, // one topic
            0, 1, b't', // name
            0, 0, 0, 3, // partitions
            0, 1, // replication factor
            0, 0, 0, 0, // no assignments
            0, 0, 0, 2, // two configs
            0, 19,
        ];
        expected.extend_from_slice(b"min.insync.replicas");
        expected.extend_from_slice(&[0, 1, b'2', 0, 12]);
        expected.extend_from_slice(b"retention.ms");
        expected.extend_from_slice(&[0, 4, b'1', b'0', b'0', b'0']);
        expected.extend_from_slice(&[0, 0, 0x13, 0x88, 0]);
        assert_eq!(encoded(4), expected);
    }

    #[test]
    fn test_config_entry_from_v0_and_v1() {
        let result = |config_source, is_default| DescribeConfigsResourceResult {
            name: String_("retention.ms".to_owned()),
            value: NullableString(Some("1000".to_owned())),
            read_only: Boolean(false),
            is_default,
            config_source,
            is_sensitive: Boolean(false),
            synonyms: vec![],
            config_type: None,
            documentation: None,
            tagged_fields: None,
        };
        let v1 = ConfigEntry::from(result(Some(Int8(5)), None));
        assert_eq!(v1.source, ConfigSource::DefaultConfig);
        assert_eq!(v1.value.as_deref(), Some("1000"));
        let v0 = ConfigEntry::from(result(None, Some(Boolean(false))));
        assert_eq!(v0.source, ConfigSource::DynamicTopicConfig);
        assert_eq!(
            ConfigEntry::from(result(None, Some(Boolean(true)))).source,
            ConfigSource::DefaultConfig
        );
    }
}
