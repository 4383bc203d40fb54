//! Topic administration: create the contract's topics with their configuration, list
//! them, count partitions, read a topic's configuration back.

use std::collections::BTreeMap;
use std::time::Duration;

use rskafka::client::Client;
use rskafka::client::controller::ControllerClient;
use rskafka::client::error::{Error as ClientError, ProtocolError};

use super::KafkaError;
use crate::config::{TopicSpec, TopicsConfig};

/// Kafka's name of a topic's retention, in milliseconds.
pub const RETENTION_MS: &str = "retention.ms";
/// Kafka's name of the replicas an `acks=all` write must reach.
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";

/// How long the broker may take to create one topic.
const CREATE_TIMEOUT_MS: i32 = 10_000;

/// What `create_topics` did with one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicReport {
    /// Created, with these topic configs.
    Created {
        name: String,
        partitions: i32,
        configs: BTreeMap<String, String>,
    },
    /// It existed already and was left as it is; `differences` says where it is not as
    /// configured.
    AlreadyExists {
        name: String,
        partitions: usize,
        differences: Vec<TopicDifference>,
    },
}

/// A setting in which an existing topic differs from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDifference {
    /// `partitions`, or a topic config (`retention.ms`, `min.insync.replicas`).
    pub setting: String,
    /// What the configuration asks for.
    pub configured: String,
    /// What the topic has (`unset` when the broker reported no value).
    pub actual: String,
}

impl std::fmt::Display for TopicReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopicReport::Created {
                name,
                partitions,
                configs,
            } => {
                write!(f, "created  {name} ({partitions} partitions")?;
                for (key, value) in configs {
                    write!(f, ", {key}={value}")?;
                }
                write!(f, ")")
            }
            TopicReport::AlreadyExists {
                name,
                partitions,
                differences,
            } => {
                write!(f, "exists   {name} ({partitions} partitions)")?;
                for d in differences {
                    write!(
                        f,
                        "\nwarning: topic {name} has {} {}, configured {}; left unchanged",
                        d.setting,
                        readable(&d.setting, &d.actual),
                        readable(&d.setting, &d.configured),
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// A config value for people: milliseconds of retention also as a duration.
fn readable(setting: &str, value: &str) -> String {
    match value.parse::<u64>() {
        Ok(ms) if setting == RETENTION_MS => {
            let duration = humantime::format_duration(Duration::from_millis(ms));
            format!("{value} ({duration})")
        }
        _ => value.to_owned(),
    }
}

/// The topic configs `create_topics` gives `spec`'s topic.
fn configs_for(topics: &TopicsConfig, spec: &TopicSpec<'_>) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            RETENTION_MS.to_owned(),
            spec.retention.as_millis().to_string(),
        ),
        (
            MIN_INSYNC_REPLICAS.to_owned(),
            topics.min_insync_replicas.to_string(),
        ),
    ])
}

/// Creates each topic of the contract that does not exist yet, with its partitions,
/// `retention.ms` and `min.insync.replicas`. Existing ones are reported, not an error, so
/// this is safe to run on every deploy, and never altered: where one differs from the
/// configuration (partitions, retention, min ISR), its report lists the differences.
pub async fn create_topics(
    client: &Client,
    topics: &TopicsConfig,
) -> Result<Vec<TopicReport>, KafkaError> {
    let existing = client.list_topics().await?;
    let controller = client.controller_client()?;
    let mut reports = Vec::new();
    for spec in topics.specs() {
        let configs = configs_for(topics, &spec);
        let partitions = match existing.iter().find(|t| t.name == spec.name) {
            Some(topic) => topic.partitions.len(),
            None => match controller
                .create_topic_with_configs(
                    spec.name,
                    spec.partitions,
                    topics.replication_factor,
                    configs.clone(),
                    CREATE_TIMEOUT_MS,
                )
                .await
            {
                Ok(()) => {
                    reports.push(TopicReport::Created {
                        name: spec.name.to_owned(),
                        partitions: spec.partitions,
                        configs,
                    });
                    continue;
                }
                Err(ClientError::ServerError {
                    protocol_error: ProtocolError::TopicAlreadyExists,
                    ..
                }) => {
                    // Another pod created it between our list and our create.
                    partition_count(client, spec.name).await? as usize
                }
                Err(e) => return Err(refused(spec.name, "create", e)),
            },
        };
        let differences = differences(&controller, &spec, partitions, &configs).await?;
        reports.push(TopicReport::AlreadyExists {
            name: spec.name.to_owned(),
            partitions,
            differences,
        });
    }
    let created: Vec<(&str, i32)> = reports
        .iter()
        .filter_map(|r| match r {
            TopicReport::Created {
                name, partitions, ..
            } => Some((name.as_str(), *partitions)),
            TopicReport::AlreadyExists { .. } => None,
        })
        .collect();
    wait_until_listed(client, &created).await?;
    Ok(reports)
}

/// Where the existing topic of `spec` differs from `configs` and the partition count.
async fn differences(
    controller: &ControllerClient,
    spec: &TopicSpec<'_>,
    partitions: usize,
    configs: &BTreeMap<String, String>,
) -> Result<Vec<TopicDifference>, KafkaError> {
    let mut differences = Vec::new();
    if i32::try_from(partitions).ok() != Some(spec.partitions) {
        differences.push(TopicDifference {
            setting: "partitions".to_owned(),
            configured: spec.partitions.to_string(),
            actual: partitions.to_string(),
        });
    }
    let keys: Vec<&str> = configs.keys().map(String::as_str).collect();
    let actual = describe(controller, spec.name, &keys).await?;
    for (key, configured) in configs {
        let value = actual.get(key).cloned().flatten();
        if !value.as_deref().is_some_and(|v| same_value(v, configured)) {
            differences.push(TopicDifference {
                setting: key.clone(),
                configured: configured.clone(),
                actual: value.unwrap_or_else(|| "unset".to_owned()),
            });
        }
    }
    Ok(differences)
}

/// Whether two config values are the same: as numbers where both are, else as text.
fn same_value(a: &str, b: &str) -> bool {
    match (a.trim().parse::<i64>(), b.trim().parse::<i64>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The configuration of `topic` as the broker reports it (DescribeConfigs): the values in
/// effect of `keys`, or of every config when `keys` is empty. A value the broker withholds
/// (a sensitive one) is `None`.
pub async fn topic_configs(
    client: &Client,
    topic: &str,
    keys: &[&str],
) -> Result<BTreeMap<String, Option<String>>, KafkaError> {
    describe(&client.controller_client()?, topic, keys).await
}

async fn describe(
    controller: &ControllerClient,
    topic: &str,
    keys: &[&str],
) -> Result<BTreeMap<String, Option<String>>, KafkaError> {
    let keys = (!keys.is_empty()).then(|| keys.iter().map(|k| (*k).to_owned()).collect());
    let entries = controller
        .describe_topic_configs(topic, keys)
        .await
        .map_err(|e| refused(topic, "describe the configuration of", e))?;
    Ok(entries.into_iter().map(|e| (e.name, e.value)).collect())
}

/// A broker's error answer about `topic` as [`KafkaError::TopicRefused`], naming the
/// topic and what the broker said; other failures (connection, timeout) as they are.
fn refused(topic: &str, action: &'static str, error: ClientError) -> KafkaError {
    match error {
        ClientError::ServerError {
            protocol_error,
            error_message,
            ..
        } => KafkaError::TopicRefused {
            topic: topic.to_owned(),
            action,
            error: protocol_error,
            answer: match error_message {
                Some(message) if !message.is_empty() => format!("{protocol_error}: {message}"),
                _ => protocol_error.to_string(),
            },
        },
        other => KafkaError::Client(other),
    }
}

/// How long a created topic may take to appear in the brokers' metadata.
const CREATION_SETTLES_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until the brokers list every topic of `created` with all its partitions.
/// Apache Kafka answers CreateTopics once its controller has the topic, while the
/// brokers' metadata follow a moment later: a daemon started right after `topics
/// create` would otherwise find its topics missing.
async fn wait_until_listed(client: &Client, created: &[(&str, i32)]) -> Result<(), KafkaError> {
    if created.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    loop {
        let listed = client.list_topics().await?;
        let missing: Vec<&str> = created
            .iter()
            .filter(|(name, partitions)| {
                !listed
                    .iter()
                    .any(|t| t.name == *name && t.partitions.len() == *partitions as usize)
            })
            .map(|(name, _)| *name)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if started.elapsed() > CREATION_SETTLES_WITHIN {
            return Err(KafkaError::UnknownTopic(missing.join(", ")));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Every topic with its partition count, sorted by name.
pub async fn list_topics(client: &Client) -> Result<Vec<(String, usize)>, KafkaError> {
    let mut topics: Vec<_> = client
        .list_topics()
        .await?
        .into_iter()
        .map(|t| (t.name, t.partitions.len()))
        .collect();
    topics.sort();
    Ok(topics)
}

/// The number of partitions of `topic`, from fresh broker metadata.
pub async fn partition_count(client: &Client, topic: &str) -> Result<i32, KafkaError> {
    let topics = client.list_topics().await?;
    let found = topics
        .into_iter()
        .find(|t| t.name == topic)
        .ok_or_else(|| KafkaError::UnknownTopic(topic.to_owned()))?;
    Ok(found.partitions.len() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_difference_is_a_warning_line_with_readable_retention() {
        let report = TopicReport::AlreadyExists {
            name: "player.events.raw".to_owned(),
            partitions: 3,
            differences: vec![
                TopicDifference {
                    setting: RETENTION_MS.to_owned(),
                    configured: "604800000".to_owned(),
                    actual: "1000".to_owned(),
                },
                TopicDifference {
                    setting: "partitions".to_owned(),
                    configured: "6".to_owned(),
                    actual: "3".to_owned(),
                },
            ],
        };
        assert_eq!(
            report.to_string(),
            "exists   player.events.raw (3 partitions)\n\
             warning: topic player.events.raw has retention.ms 1000 (1s), \
             configured 604800000 (7days); left unchanged\n\
             warning: topic player.events.raw has partitions 3, configured 6; left unchanged"
        );
        let created = TopicReport::Created {
            name: "system.dlq".to_owned(),
            partitions: 1,
            configs: BTreeMap::from([
                (RETENTION_MS.to_owned(), "2592000000".to_owned()),
                (MIN_INSYNC_REPLICAS.to_owned(), "1".to_owned()),
            ]),
        };
        assert_eq!(
            created.to_string(),
            "created  system.dlq (1 partitions, min.insync.replicas=1, retention.ms=2592000000)"
        );
    }

    #[test]
    fn config_values_compare_as_numbers() {
        assert!(same_value("604800000", " 604800000"));
        assert!(!same_value("1000", "604800000"));
        assert!(same_value("delete", "delete"));
    }

    #[test]
    fn a_broker_refusal_names_the_topic_and_the_answer() {
        let error = refused(
            "t.raw",
            "create",
            ClientError::ServerError {
                protocol_error: ProtocolError::InvalidConfig,
                error_message: Some("Invalid value -5 for configuration retention.ms".into()),
                request: rskafka::client::error::RequestContext::Topic("t.raw".into()),
                response: None,
                is_virtual: false,
            },
        );
        assert_eq!(
            error.to_string(),
            "kafka: the broker refused to create topic `t.raw`: InvalidConfig: \
             Invalid value -5 for configuration retention.ms"
        );
    }
}
