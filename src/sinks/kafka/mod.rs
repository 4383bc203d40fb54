//! Kafka on rskafka: the client, topic administration, the key partitioner and the
//! batching producer used by ingestion and the dead-letter queue.

mod client;
mod partitioner;
mod producer;
mod topics;
mod worker;

pub use client::{KafkaError, connect, connect_producer};
pub use partitioner::{murmur2, partition_for_key};
pub use producer::{KafkaProducer, ProduceError, ProducerRecord, ProducerTasks, RecordHeaders};
pub use topics::{TopicReport, create_topics, list_topics, partition_count};
