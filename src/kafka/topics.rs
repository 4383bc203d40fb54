//! Topic administration: create the contract's topics, list them, count partitions.

use rskafka::client::Client;
use rskafka::client::error::{Error as ClientError, ProtocolError};

use super::KafkaError;
use crate::config::TopicsConfig;

/// What `create_topics` did with one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicReport {
    Created { name: String, partitions: i32 },
    AlreadyExists { name: String, partitions: usize },
}

impl std::fmt::Display for TopicReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopicReport::Created { name, partitions } => {
                write!(f, "created  {name} ({partitions} partitions)")
            }
            TopicReport::AlreadyExists { name, partitions } => {
                write!(f, "exists   {name} ({partitions} partitions)")
            }
        }
    }
}

/// Creates each topic of the contract that does not exist yet; existing ones are
/// reported, not an error, so this is safe to run on every deploy.
pub async fn create_topics(
    client: &Client,
    topics: &TopicsConfig,
) -> Result<Vec<TopicReport>, KafkaError> {
    let existing = client.list_topics().await?;
    let controller = client.controller_client()?;
    let mut reports = Vec::new();
    for (name, partitions) in topics.all() {
        if let Some(topic) = existing.iter().find(|t| t.name == name) {
            reports.push(TopicReport::AlreadyExists {
                name: name.to_owned(),
                partitions: topic.partitions.len(),
            });
            continue;
        }
        match controller
            .create_topic(name, partitions, topics.replication_factor, 10_000)
            .await
        {
            Ok(()) => reports.push(TopicReport::Created {
                name: name.to_owned(),
                partitions,
            }),
            Err(ClientError::ServerError {
                protocol_error: ProtocolError::TopicAlreadyExists,
                ..
            }) => {
                // Another pod created it between our list and our create.
                let partitions = partition_count(client, name).await?;
                reports.push(TopicReport::AlreadyExists {
                    name: name.to_owned(),
                    partitions: partitions as usize,
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    let created: Vec<(&str, i32)> = reports
        .iter()
        .filter_map(|r| match r {
            TopicReport::Created { name, partitions } => Some((name.as_str(), *partitions)),
            TopicReport::AlreadyExists { .. } => None,
        })
        .collect();
    wait_until_listed(client, &created).await?;
    Ok(reports)
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
