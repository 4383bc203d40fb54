//! `DlqActor`: makes dead letters durable, in `system.dlq` and `dlq_events`.
//!
//! Sinks `call` it with the letters of a flush and wait for the reply: a sink commits
//! no offset past a poison record before its letter is stored. Transient failures of
//! the broker or the database are retried with backoff until they pass (a dead letter
//! is never dropped). The Postgres row is exactly-once (unique per consumer and source
//! record); the Kafka message is at-least-once and carries its provenance (topic,
//! partition, offset), by which a reader of `system.dlq` can drop a repeat.
//!
//! Supervised by the [`Supervisor`](super::supervisor) like every pipeline actor.

use std::collections::BTreeMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;

use crate::dead_letter::DeadLetter;
use crate::kafka::partition_for_key;
use crate::retry::Backoff;
use crate::sinks::{SinkError, postgres};

pub enum DlqMessage {
    /// Store these letters; reply once they are durable in both places.
    Write {
        letters: Vec<DeadLetter>,
        reply: RpcReplyPort<()>,
    },
}

pub struct DlqArgs {
    pub kafka: Arc<rskafka::client::Client>,
    pub pg: sqlx::PgPool,
    pub topic: String,
    /// Largest `system.dlq` message, bytes; a larger record is cut in the message
    /// (its full bytes stay in `dlq_events.original_payload`).
    pub max_message_bytes: usize,
    pub backoff: Backoff,
}

pub struct DlqActor;

pub struct DlqState {
    partitions: Vec<PartitionClient>,
    pg: sqlx::PgPool,
    max_message_bytes: usize,
    backoff: Backoff,
}

impl Actor for DlqActor {
    type Msg = DlqMessage;
    type State = DlqState;
    type Arguments = DlqArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: DlqArgs,
    ) -> Result<DlqState, ActorProcessingErr> {
        let count = crate::kafka::partition_count(&args.kafka, &args.topic).await?;
        let mut partitions = Vec::with_capacity(count as usize);
        for partition in 0..count {
            partitions.push(
                args.kafka
                    .partition_client(args.topic.clone(), partition, UnknownTopicHandling::Retry)
                    .await?,
            );
        }
        Ok(DlqState {
            partitions,
            pg: args.pg,
            max_message_bytes: args.max_message_bytes,
            backoff: args.backoff,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: DlqMessage,
        state: &mut DlqState,
    ) -> Result<(), ActorProcessingErr> {
        let DlqMessage::Write { letters, reply } = message;
        loop {
            match state.store(&letters).await {
                Ok(()) => break,
                // A broken dlq_events table will not heal by retrying: crash, so the
                // supervisor restarts with backoff and escalates if it persists.
                Err(e @ SinkError::Fatal(_)) => return Err(Box::new(e)),
                Err(e) => {
                    let delay = state.backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, letters = letters.len(), "storing dead letters failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        state.backoff.reset();
        for letter in &letters {
            tracing::warn!(consumer = letter.consumer, topic = %letter.topic, partition = letter.partition,
                offset = letter.offset, reason = %letter.kind, error = %letter.error, "dead-lettered");
            metrics::counter!("gamestream_dead_letters_total", "consumer" => letter.consumer, "reason" => letter.kind.clone())
                .increment(1);
        }
        let _ = reply.send(());
        Ok(())
    }
}

impl DlqState {
    /// Publishes, then inserts. A crash in between publishes again on replay (the
    /// message repeats, the row does not).
    async fn store(&self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        let mut by_partition: BTreeMap<usize, Vec<Record>> = BTreeMap::new();
        for letter in letters {
            let key = letter
                .key
                .clone()
                .unwrap_or_else(|| letter.offset.to_string().into_bytes());
            let partition = partition_for_key(&key, self.partitions.len() as i32) as usize;
            let headers = BTreeMap::from([
                (
                    "consumer_service".to_owned(),
                    letter.consumer.as_bytes().to_vec(),
                ),
                ("error_kind".to_owned(), letter.kind.as_bytes().to_vec()),
            ]);
            by_partition.entry(partition).or_default().push(Record {
                key: Some(key),
                value: Some(letter.to_message(self.max_message_bytes)),
                headers,
                timestamp: letter.at,
            });
        }
        for (partition, records) in by_partition {
            self.partitions[partition]
                .produce(records, Compression::NoCompression)
                .await
                .map_err(|e| {
                    SinkError::Transient(e.into()).context("publishing to the dead-letter topic")
                })?;
        }
        postgres::dlq::insert(&self.pg, letters)
            .await
            .map_err(|e| match SinkError::from(e) {
                transient @ SinkError::Transient(_) => transient,
                // Refused rows are the table's fault, not the letters': never dead-letter a letter.
                SinkError::Permanent(e) | SinkError::Fatal(e) => SinkError::Fatal(e),
                lost @ SinkError::LeaseLost(_) => lost,
            })
            .map_err(|e| e.context("inserting into dlq_events"))?;
        Ok(())
    }
}
