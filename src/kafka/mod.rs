//! Kafka on rskafka: the client, topic administration, the key partitioner, and the
//! HTTP ingest producer ([`ingest_producer`]: batching, acks=all, one worker per
//! partition) that `POST /api/v1/events` publishes through, and the old consumer groups'
//! offsets mirrored from the sinks' ([`group_offsets`]).

mod client;
pub mod group_offsets;
pub mod ingest_producer;
mod partitioner;
mod topics;

pub use client::{KafkaError, connect, connect_producer};
pub use ingest_producer::{
    KafkaProducer, ProduceError, ProducerRecord, ProducerTasks, RecordHeaders,
};
pub use partitioner::{murmur2, partition_for_key};
pub use topics::{
    MIN_INSYNC_REPLICAS, RETENTION_MS, TopicDifference, TopicReport, create_topics, list_topics,
    partition_count, topic_configs,
};
