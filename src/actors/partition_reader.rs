//! `PartitionReader`: fetches one partition of the raw topic and feeds every sink.
//!
//! ```text
//! start: ask each sink where it needs to resume ─► begin at the lowest
//! loop:  credits left? ─► fetch ─► parse each record once (simd-json) ─► Arc<ParsedBatch>
//!        ─► cast to every sink ─► sinks Ack when durable ─► credits come back
//! ```
//!
//! Flow control: a reader never has more than `consumer.max_in_flight_records` records
//! handed to a sink and not acknowledged by it, so memory stays bounded with any backlog
//! and a slow sink slows its readers. Records that are not valid events travel on as
//! [`Poison`] so the sink that owns dead letters can store them and commit past.
//!
//! Fetch errors are transient (the broker is away): retried with backoff. An offset
//! that fell out of retention restarts from the earliest offset, with a warning and a
//! metric. Supervised by the [`Supervisor`](super::supervisor).

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::record::RecordAndOffset;

use super::record::{ParsedBatch, ParsedRecord, Poison};
use super::sink::SinkMessage;
use crate::event::{self, EventError};
use crate::retry::Backoff;

pub enum ReaderMessage {
    /// Fetch the next records, if credits allow.
    Fetch,
    /// A sink made a batch durable (or already had it).
    Ack {
        sink: &'static str,
        next_offset: i64,
        records: usize,
    },
}

pub struct ReaderArgs {
    pub kafka: Arc<rskafka::client::Client>,
    pub topic: Arc<str>,
    pub partition: i32,
    /// The sinks and their names (the names match their `Ack`s).
    pub sinks: Vec<(&'static str, ActorRef<SinkMessage>)>,
    pub max_in_flight_records: usize,
    pub fetch_max_bytes: i32,
    pub fetch_max_wait: Duration,
    pub backoff: Backoff,
}

pub struct PartitionReader;

pub struct ReaderState {
    client: PartitionClient,
    topic: Arc<str>,
    partition: i32,
    partition_label: String,
    sinks: Vec<SinkCredit>,
    next_offset: i64,
    high_watermark: i64,
    max_in_flight_records: usize,
    fetch_max_bytes: i32,
    fetch_max_wait_ms: i32,
    backoff: Backoff,
    /// A `Fetch` is queued or running; keeps exactly one fetch loop alive.
    fetching: bool,
    /// Reused buffer for simd-json's in-place parsing.
    scratch: Vec<u8>,
}

struct SinkCredit {
    name: &'static str,
    actor: ActorRef<SinkMessage>,
    in_flight: usize,
}

impl Actor for PartitionReader {
    type Msg = ReaderMessage;
    type State = ReaderState;
    type Arguments = ReaderArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ReaderMessage>,
        args: ReaderArgs,
    ) -> Result<ReaderState, ActorProcessingErr> {
        let client = args
            .kafka
            .partition_client(
                args.topic.to_string(),
                args.partition,
                UnknownTopicHandling::Retry,
            )
            .await?;
        let mut resume: Option<i64> = None;
        let mut any_missing = false;
        for (_, sink) in &args.sinks {
            let reply = sink
                .call(
                    |reply| SinkMessage::ResumeOffset {
                        partition: args.partition,
                        reply,
                    },
                    None,
                )
                .await?;
            match reply {
                ractor::rpc::CallResult::Success(Some(offset)) => {
                    resume = Some(resume.map_or(offset, |r| r.min(offset)))
                }
                ractor::rpc::CallResult::Success(None) => any_missing = true,
                other => return Err(format!("sink did not say where to resume: {other:?}").into()),
            }
        }
        let earliest = client.get_offset(OffsetAt::Earliest).await?;
        let next_offset = match resume {
            Some(offset) if !any_missing => offset.max(earliest),
            _ => earliest,
        };
        tracing::info!(topic = %args.topic, partition = args.partition, offset = next_offset, "reader starting");
        Ok(ReaderState {
            client,
            partition_label: args.partition.to_string(),
            topic: args.topic,
            partition: args.partition,
            sinks: args
                .sinks
                .into_iter()
                .map(|(name, actor)| SinkCredit {
                    name,
                    actor,
                    in_flight: 0,
                })
                .collect(),
            next_offset,
            high_watermark: next_offset,
            max_in_flight_records: args.max_in_flight_records,
            fetch_max_bytes: args.fetch_max_bytes,
            fetch_max_wait_ms: i32::try_from(args.fetch_max_wait.as_millis()).unwrap_or(i32::MAX),
            backoff: args.backoff,
            fetching: false,
            scratch: Vec::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<ReaderMessage>,
        state: &mut ReaderState,
    ) -> Result<(), ActorProcessingErr> {
        state.fetching = true;
        myself.cast(ReaderMessage::Fetch)?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ReaderMessage>,
        message: ReaderMessage,
        state: &mut ReaderState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ReaderMessage::Fetch => state.fetch(&myself).await?,
            ReaderMessage::Ack {
                sink,
                next_offset,
                records,
            } => {
                if let Some(credit) = state.sinks.iter_mut().find(|s| s.name == sink) {
                    credit.in_flight = credit.in_flight.saturating_sub(records);
                }
                let lag = (state.high_watermark - next_offset).max(0);
                metrics::gauge!("gamestream_consumer_lag", "sink" => sink, "partition" => state.partition_label.clone())
                    .set(lag as f64);
                if !state.fetching && state.has_credit() {
                    state.fetching = true;
                    myself.cast(ReaderMessage::Fetch)?;
                }
            }
        }
        Ok(())
    }
}

impl ReaderState {
    fn has_credit(&self) -> bool {
        self.sinks
            .iter()
            .all(|s| s.in_flight < self.max_in_flight_records)
    }

    async fn fetch(&mut self, myself: &ActorRef<ReaderMessage>) -> Result<(), ActorProcessingErr> {
        if !self.has_credit() {
            // Resumed by the Ack that frees credit.
            self.fetching = false;
            return Ok(());
        }
        let result = self
            .client
            .fetch_records(
                self.next_offset,
                1..self.fetch_max_bytes,
                self.fetch_max_wait_ms,
            )
            .await;
        match result {
            Ok((records, high_watermark)) => {
                self.backoff.reset();
                self.high_watermark = high_watermark;
                metrics::gauge!("gamestream_partition_high_watermark", "partition" => self.partition_label.clone())
                    .set(high_watermark as f64);
                self.dispatch(myself, records)?;
                myself.cast(ReaderMessage::Fetch)?;
            }
            Err(ClientError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            }) => {
                self.recover_offset().await?;
                myself.cast(ReaderMessage::Fetch)?;
            }
            Err(e) => {
                let delay = self.backoff.next_delay();
                metrics::counter!("gamestream_reader_fetch_errors_total", "partition" => self.partition_label.clone()).increment(1);
                tracing::warn!(partition = self.partition, error = %e, retry_in = ?delay, "fetch failed; retrying");
                // The timer task ends after one send.
                drop(myself.send_after(delay, || ReaderMessage::Fetch));
            }
        }
        Ok(())
    }

    /// The next offset is outside what the broker holds.
    async fn recover_offset(&mut self) -> Result<(), ActorProcessingErr> {
        let earliest = self.client.get_offset(OffsetAt::Earliest).await?;
        if self.next_offset < earliest {
            tracing::warn!(
                partition = self.partition,
                wanted = self.next_offset,
                earliest,
                "offset fell out of retention; resuming from the earliest offset"
            );
            metrics::counter!("gamestream_reader_offset_resets_total", "partition" => self.partition_label.clone()).increment(1);
            self.next_offset = earliest;
        } else {
            // Beyond the end: the topic was recreated or the broker lost data. Jumping
            // back would apply records twice, so wait for an operator (`offsets reset`).
            tracing::error!(
                partition = self.partition,
                wanted = self.next_offset,
                earliest,
                "offset is beyond the end of the partition; waiting (see `gamestream offsets reset`)"
            );
            tokio::time::sleep(self.backoff.next_delay()).await;
        }
        Ok(())
    }

    /// Parses the fetched records once and sends the batch to every sink.
    fn dispatch(
        &mut self,
        myself: &ActorRef<ReaderMessage>,
        fetched: Vec<RecordAndOffset>,
    ) -> Result<(), ActorProcessingErr> {
        let mut records = Vec::with_capacity(fetched.len());
        for r in fetched {
            if r.offset < self.next_offset {
                continue; // a fetch may start at the beginning of a stored record batch
            }
            let parsed = parse(&mut self.scratch, r.record.key, r.record.value);
            records.push(ParsedRecord {
                offset: r.offset,
                parsed,
            });
        }
        let Some(last) = records.last() else {
            return Ok(());
        };
        let batch = Arc::new(ParsedBatch {
            topic: Arc::clone(&self.topic),
            partition: self.partition,
            next_offset: last.offset + 1,
            records,
        });
        self.next_offset = batch.next_offset;
        metrics::counter!("gamestream_reader_records_total", "partition" => self.partition_label.clone())
            .increment(batch.records.len() as u64);
        for sink in &mut self.sinks {
            sink.in_flight += batch.records.len();
            sink.actor.cast(SinkMessage::Batch {
                batch: Arc::clone(&batch),
                reader: myself.clone(),
            })?;
        }
        Ok(())
    }
}

/// One record value into an event, or into a [`Poison`] that keeps the exact bytes.
fn parse(
    scratch: &mut Vec<u8>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
) -> Result<event::Event, Poison> {
    let Some(value) = value else {
        return Err(Poison {
            error: EventError::MalformedJson("the record has no value".to_owned()),
            payload: Vec::new(),
            key,
        });
    };
    // simd-json parses in place and scrambles its input; parse a copy so that a bad
    // record's original bytes survive for its dead letter.
    scratch.clear();
    scratch.extend_from_slice(&value);
    event::parse_record(scratch).map_err(|error| Poison {
        error,
        payload: value,
        key,
    })
}
