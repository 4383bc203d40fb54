//! The batching Kafka producer that ingestion publishes through.
//!
//! ```text
//! publish(record) ─► partition_for_key(player_id) ─► acquire in-flight bytes ─┐ (or Overloaded)
//!                                                                             ▼
//!   PartitionWorker p0 ◄── queue ◄──────────────────────────────────── one queue per partition
//!     │ sends at once when nothing is in flight; batches only behind in-flight requests
//!     └─► PartitionClient::produce (acks = all) ─► offsets ─► each caller's oneshot
//! ```
//!
//! Concurrent callers share broker round-trips without a timer: a record for an idle
//! partition is sent at once, and records arriving while that partition's requests are
//! out wait for them (at most `linger`) and go together; up to `max_in_flight_requests`
//! produce requests per partition are outstanding at once (see `worker.rs`). A caller
//! is answered only once the broker acknowledged its record (rskafka produces with
//! `acks = -1`), so an `Ok` offset is durable.
//!
//! Memory is bounded by a semaphore of bytes: a record holds its permits from the
//! moment it is accepted until its produce request has finished (acknowledged, failed or
//! timed out). When the semaphore is exhausted, [`KafkaProducer::send`] fails at once
//! with [`ProduceError::Overloaded`] instead of buffering, so a broker outage shows up
//! as fast 503s and flat memory, never as a growing queue.
//!
//! The workers are owned by [`ProducerTasks`]: [`ProducerTasks::close`] stops intake,
//! flushes what is queued and waits for the last acknowledgements; dropping it without
//! closing aborts the workers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::Client;
use rskafka::client::partition::Compression;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot};
use tokio::task::JoinHandle;

use tracing::Instrument;

mod sequence;
mod worker;

use super::partitioner::partition_for_key;
use super::{KafkaError, partition_count};
use crate::config::{CompressionConfig, ProducerConfig};
use crate::event::Event;
use crate::trace_context as traces;
use worker::{PartitionWorker, Pending, WorkerSettings};

/// Record headers: name to raw bytes. [`KafkaProducer::publish`] and
/// [`KafkaProducer::send_all`] add the W3C `traceparent`/`tracestate` of their
/// `kafka.produce` span when traces are exported.
pub type RecordHeaders = BTreeMap<String, Vec<u8>>;

/// Bytes counted for a record besides its key, value and headers: Kafka's per-record
/// framing (varint lengths, attributes, timestamp and offset deltas), roughly.
const RECORD_OVERHEAD_BYTES: usize = 32;

/// Why a record was not acknowledged. Cloneable, because one broker failure answers
/// every caller of the batch it hit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProduceError {
    /// The in-flight byte bound is reached: the broker is slow or down. Retry later.
    #[error("the service is overloaded: {limit} bytes already await broker acknowledgement")]
    Overloaded { limit: usize },
    /// One record (or one batch request) is larger than the whole in-flight bound.
    #[error("{size} bytes is more than the producer may hold in flight ({limit} bytes)")]
    TooLarge { size: usize, limit: usize },
    /// No acknowledgement within `producer.publish_timeout`. The record may or may not
    /// have been written; it was not confirmed.
    #[error("the broker did not acknowledge the write within {0:?}")]
    Timeout(Duration),
    /// The broker (or the connection to it) failed the write.
    #[error("the broker failed the write: {0}")]
    Broker(Arc<str>),
    /// The producer is shutting down and accepts nothing more.
    #[error("the producer is shut down")]
    Closed,
}

impl ProduceError {
    /// A short stable reason, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ProduceError::Overloaded { .. } => "overloaded",
            ProduceError::TooLarge { .. } => "too_large",
            ProduceError::Timeout(_) => "broker_timeout",
            ProduceError::Broker(_) => "broker_error",
            ProduceError::Closed => "shutting_down",
        }
    }
}

pub type Result<T, E = ProduceError> = std::result::Result<T, E>;

/// One record to publish: the partition follows from the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: RecordHeaders,
    /// The record's Kafka timestamp (CreateTime).
    pub timestamp: chrono::DateTime<chrono::Utc>,
}

impl ProducerRecord {
    /// The record of an event as the platform contract specifies it (README, "Events"): key `player_id`, the
    /// seven-field JSON value, headers `event_type` and `event_id`.
    pub fn from_event(event: &Event) -> Self {
        let mut headers = RecordHeaders::new();
        headers.insert(
            "event_type".to_owned(),
            event.event_type.as_bytes().to_vec(),
        );
        headers.insert(
            "event_id".to_owned(),
            event
                .event_id
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .as_bytes()
                .to_vec(),
        );
        Self {
            key: event.player_id.as_bytes().to_vec(),
            value: event.to_record_value(),
            headers,
            timestamp: event.ingested_at,
        }
    }

    /// Bytes this record holds while in flight.
    pub(super) fn size(&self) -> usize {
        RECORD_OVERHEAD_BYTES
            + self.key.len()
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    pub(super) fn into_rskafka(self) -> rskafka::record::Record {
        rskafka::record::Record {
            key: Some(self.key),
            value: Some(self.value),
            headers: self.headers,
            timestamp: self.timestamp,
        }
    }
}

/// Publishes records to one topic. Cheap to clone; every clone feeds the same workers.
#[derive(Clone)]
pub struct KafkaProducer {
    shared: Arc<Shared>,
}

/// What every clone of the producer shares.
struct Shared {
    topic: String,
    /// One queue per partition, indexed by partition number. Unbounded because the
    /// byte semaphore, not the queue, bounds what is held.
    queues: Vec<mpsc::UnboundedSender<Pending>>,
    /// Permits are bytes accepted and not yet finished with.
    in_flight: Arc<Semaphore>,
    max_in_flight_bytes: usize,
    publish_timeout: Duration,
}

/// The owner of the per-partition workers.
pub struct ProducerTasks {
    workers: Vec<JoinHandle<()>>,
    /// Tells the workers to stop intake, flush and finish.
    close: tokio::sync::watch::Sender<bool>,
}

impl KafkaProducer {
    /// Reads the topic's partition count from the broker (through `metadata`, a client
    /// that retries) and starts one worker per partition, producing through `client`
    /// (see [`super::connect_producer`]). Fails when the topic does not exist.
    pub async fn start(
        metadata: &Client,
        client: Arc<Client>,
        topic: &str,
        config: &ProducerConfig,
    ) -> Result<(KafkaProducer, ProducerTasks), KafkaError> {
        let partitions = partition_count(metadata, topic).await?;
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight_bytes));
        let (close, close_rx) = tokio::sync::watch::channel(false);
        let settings = Arc::new(WorkerSettings {
            topic: topic.to_owned(),
            linger: config.linger,
            max_batch_records: config.max_batch_records,
            max_batch_bytes: config.max_batch_bytes,
            max_in_flight_requests: config.max_in_flight_requests,
            publish_timeout: config.publish_timeout,
            request_timeout: config.request_timeout,
            idempotence: config.idempotence,
            compression: compression(config.compression),
            in_flight: Arc::clone(&in_flight),
            max_in_flight_bytes: config.max_in_flight_bytes,
        });
        let mut queues = Vec::with_capacity(partitions as usize);
        let mut workers = Vec::with_capacity(partitions as usize);
        for partition in 0..partitions {
            let (sender, receiver) = mpsc::unbounded_channel();
            queues.push(sender);
            let worker = PartitionWorker::new(
                Arc::clone(&client),
                partition,
                Arc::clone(&settings),
                receiver,
                close_rx.clone(),
            );
            workers.push(tokio::spawn(worker.run()));
        }
        tracing::info!(topic, partitions, "kafka producer started");
        // At zero from the start, so dashboards see the series before the first error.
        for reason in ["overloaded", "broker_error", "broker_timeout"] {
            metrics::counter!("producer_errors_total", "topic" => topic.to_owned(), "reason" => reason)
                .increment(0);
        }
        if config.idempotence {
            for reason in worker::RESEND_REASONS {
                metrics::counter!("producer_resends_total", "topic" => topic.to_owned(), "reason" => reason)
                    .increment(0);
            }
        }
        let shared = Arc::new(Shared {
            topic: topic.to_owned(),
            queues,
            in_flight,
            max_in_flight_bytes: config.max_in_flight_bytes,
            publish_timeout: config.publish_timeout,
        });
        Ok((KafkaProducer { shared }, ProducerTasks { workers, close }))
    }

    /// The topic this producer writes.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// Partitions of the topic, as read at start.
    pub fn partitions(&self) -> i32 {
        // The count came from an i32 and is at least 1 for an existing topic.
        self.shared.queues.len() as i32
    }

    /// Publishes one event; resolves to its offset once the broker acknowledged it.
    /// Traced as a `kafka.produce` span whose context travels in the record headers.
    pub async fn publish(&self, event: &Event) -> Result<i64> {
        let mut record = ProducerRecord::from_event(event);
        let span = self.produce_span(1);
        // The event's id (the client's own, if it sent one) on its producer span.
        span.record(
            "messaging.message.id",
            tracing::field::display(event.event_id),
        );
        traces::inject(&span, &mut record.headers);
        self.send(record).instrument(span).await
    }

    /// The producer span of `records` records; disabled (no cost) when traces are off.
    fn produce_span(&self, records: usize) -> tracing::Span {
        if !traces::enabled() {
            return tracing::Span::none();
        }
        tracing::info_span!(
            "kafka.produce",
            otel.name = format!("{} publish", self.shared.topic),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.operation.type = "publish",
            messaging.destination.name = %self.shared.topic,
            messaging.batch.message_count = records,
            messaging.message.id = tracing::field::Empty,
        )
    }

    /// Publishes one record; resolves to its offset once the broker acknowledged it.
    pub async fn send(&self, record: ProducerRecord) -> Result<i64> {
        let size = record.size();
        let permit = self.acquire(size)?;
        let partition = partition_for_key(&record.key, self.partitions());
        let reply = self.enqueue(partition, vec![record], permit)?;
        self.await_reply(reply).await
    }

    /// Publishes several records at once, grouped per partition so each partition's
    /// share travels as one unit. One result per record, in order.
    /// Traced as one `kafka.produce` span whose context every record carries.
    pub async fn send_all(&self, mut records: Vec<ProducerRecord>) -> Vec<Result<i64>> {
        let count = records.len();
        if count == 0 {
            return Vec::new();
        }
        let span = self.produce_span(count);
        for record in &mut records {
            traces::inject(&span, &mut record.headers);
        }
        self.send_all_traced(records, count).instrument(span).await
    }

    async fn send_all_traced(
        &self,
        records: Vec<ProducerRecord>,
        count: usize,
    ) -> Vec<Result<i64>> {
        let total: usize = records.iter().map(ProducerRecord::size).sum();
        let mut permit = match self.acquire(total) {
            Ok(permit) => permit,
            Err(e) => return vec![Err(e); count],
        };
        // Group by partition, remembering each record's position in the request.
        let partitions = self.partitions();
        let mut groups: BTreeMap<i32, (Vec<usize>, Vec<ProducerRecord>, usize)> = BTreeMap::new();
        for (index, record) in records.into_iter().enumerate() {
            let partition = partition_for_key(&record.key, partitions);
            let size = record.size();
            let group = groups.entry(partition).or_default();
            group.0.push(index);
            group.1.push(record);
            group.2 += size;
        }
        let mut waiting = Vec::with_capacity(groups.len());
        for (partition, (indexes, group, bytes)) in groups {
            // `permit` holds exactly the sum of the groups' sizes, so each split succeeds.
            let Some(group_permit) = permit.split(bytes) else {
                unreachable!("the permit covers every group");
            };
            waiting.push((indexes, self.enqueue(partition, group, group_permit)));
        }
        let mut results: Vec<Result<i64>> = vec![Err(ProduceError::Closed); count];
        let replies = waiting.into_iter().map(|(indexes, reply)| async move {
            let outcome = match reply {
                Ok(reply) => self.await_reply(reply).await,
                Err(e) => Err(e),
            };
            (indexes, outcome)
        });
        for (indexes, outcome) in futures::future::join_all(replies).await {
            for (position, index) in indexes.into_iter().enumerate() {
                results[index] = match &outcome {
                    Ok(first) => Ok(first + position as i64),
                    Err(e) => Err(e.clone()),
                };
            }
        }
        results
    }

    /// Takes `size` bytes of the in-flight bound, or fails at once.
    fn acquire(&self, size: usize) -> Result<OwnedSemaphorePermit> {
        let limit = self.shared.max_in_flight_bytes;
        let too_large = ProduceError::TooLarge { size, limit };
        let permits = u32::try_from(size).map_err(|_| too_large.clone())?;
        if size > limit {
            return Err(too_large);
        }
        match Arc::clone(&self.shared.in_flight).try_acquire_many_owned(permits) {
            Ok(permit) => Ok(permit),
            Err(TryAcquireError::NoPermits) => {
                metrics::counter!(
                    "producer_errors_total",
                    "topic" => self.shared.topic.clone(),
                    "reason" => "overloaded"
                )
                .increment(1);
                Err(ProduceError::Overloaded { limit })
            }
            Err(TryAcquireError::Closed) => Err(ProduceError::Closed),
        }
    }

    fn enqueue(
        &self,
        partition: i32,
        records: Vec<ProducerRecord>,
        permit: OwnedSemaphorePermit,
    ) -> Result<oneshot::Receiver<Result<i64>>> {
        let (reply, receiver) = oneshot::channel();
        let queue = usize::try_from(partition)
            .ok()
            .and_then(|p| self.shared.queues.get(p))
            .ok_or(ProduceError::Closed)?;
        queue
            .send(Pending::new(records, permit, reply))
            .map_err(|_| ProduceError::Closed)?;
        Ok(receiver)
    }

    async fn await_reply(&self, reply: oneshot::Receiver<Result<i64>>) -> Result<i64> {
        let timeout = self.shared.publish_timeout;
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(result)) => result,
            // The worker dropped the request: it is shutting down.
            Ok(Err(_)) => Err(ProduceError::Closed),
            Err(_) => Err(ProduceError::Timeout(timeout)),
        }
    }

    /// Bytes currently accepted and not yet finished with (for tests and diagnostics).
    pub fn in_flight_bytes(&self) -> usize {
        self.shared.max_in_flight_bytes - self.shared.in_flight.available_permits()
    }
}

impl ProducerTasks {
    /// Stops intake, flushes every queued record, waits for their acknowledgements
    /// (each bounded by `publish_timeout`) and ends the workers.
    pub async fn close(mut self) {
        self.close.send_replace(true);
        for worker in std::mem::take(&mut self.workers) {
            if let Err(e) = worker.await {
                tracing::error!(error = %e, "kafka producer worker failed");
            }
        }
        tracing::info!("kafka producer flushed and stopped");
    }
}

impl Drop for ProducerTasks {
    /// A producer dropped without [`ProducerTasks::close`] leaves no task behind.
    fn drop(&mut self) {
        for worker in &self.workers {
            worker.abort();
        }
    }
}

fn compression(config: CompressionConfig) -> Compression {
    match config {
        CompressionConfig::None => Compression::NoCompression,
        CompressionConfig::Gzip => Compression::Gzip,
        CompressionConfig::Snappy => Compression::Snappy,
        CompressionConfig::Lz4 => Compression::Lz4,
        CompressionConfig::Zstd => Compression::Zstd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn record_of_an_event_follows_the_contract() {
        let mut body = br#"{"event_type":"player_score","player_id":"p-7","game_id":"g","timestamp":"2024-01-15T10:30:00Z","data":{"score":3}}"#.to_vec();
        let event = crate::event::parse_submission(&mut body)
            .expect("valid")
            .accept(Utc::now());
        let record = ProducerRecord::from_event(&event);
        assert_eq!(record.key, b"p-7");
        assert_eq!(record.headers["event_type"], b"player_score");
        assert_eq!(
            record.headers["event_id"],
            event.event_id.to_string().into_bytes()
        );
        assert_eq!(record.value, event.to_record_value());
        assert_eq!(
            record.size(),
            RECORD_OVERHEAD_BYTES + 3 + record.value.len() + 10 + 12 + 8 + 36
        );
    }

    #[test]
    fn error_kinds_are_stable() {
        assert_eq!(ProduceError::Overloaded { limit: 1 }.kind(), "overloaded");
        assert_eq!(
            ProduceError::Timeout(Duration::ZERO).kind(),
            "broker_timeout"
        );
        assert_eq!(ProduceError::Closed.kind(), "shutting_down");
    }
}
