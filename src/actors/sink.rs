//! `SinkActor<W>`: the one actor behind every sink (logger, stats, leaderboard).
//!
//! It owns a [`SinkWriter`] (the destination-specific write path) and does what every
//! sink needs the same way:
//!
//! ```text
//! Batch(Arc<ParsedBatch>) ──► skip what this sink already applied (offset dedupe)
//!                          ──► buffer until batch_size records or linger
//!                          ──► flush: dead letters first (durable), then
//!                              writer.write(records + next offsets) in one atomic step,
//!                              retried with backoff while transient
//!                          ──► Ack to each reader (frees its credits)
//! ```
//!
//! Traces: each flush is a `sink.write_batch` span linked to the trace contexts of its
//! records, with `sink.write` and `dead_letter` children (see
//! [`traces::batch_span`](crate::telemetry::traces::batch_span)).
//!
//! A permanent write error is isolated record by record: the records that still fail
//! are dead-lettered and their offsets committed past, so the partition goes on.
//!
//! Supervised by the [`Supervisor`](super::supervisor): a crash restarts the whole
//! pipeline from committed offsets, so nothing buffered here needs saving.

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::Instrument;

use super::dlq::DlqMessage;
use super::partition_reader::ReaderMessage;
use super::record::{ParsedBatch, ParsedRecord};
use crate::dead_letter::DeadLetter;
use crate::event::Event;
use crate::retry::Backoff;
use crate::sinks::{OffsetCommit, SinkError};
use crate::telemetry::traces;

/// The destination-specific part of a sink.
pub trait SinkWriter: Send + Sync + 'static {
    /// The sink's name: the key of its offsets, its metrics label and its `Ack`s.
    fn name(&self) -> &'static str;

    /// `consumer_service` in this sink's dead letters (CONTRACT: `event-logger`,
    /// `stats-aggregator`, `leaderboard-manager`). Defaults to [`Self::name`]; a second
    /// sink of one consumer (its Redis store) names the consumer it belongs to.
    fn dead_letter_consumer(&self) -> &'static str {
        self.name()
    }

    /// Whether this sink dead-letters records that are not valid events. Exactly one
    /// sink (the logger) does, so a bad record yields one dead letter, not three.
    fn dead_letters_invalid_records(&self) -> bool {
        false
    }

    /// A valid event this sink can never apply (e.g. a score that is not an integer).
    fn reject(&self, _event: &Event) -> Option<Rejection> {
        None
    }

    /// The next offset to apply per partition, from the destination itself.
    fn committed(
        &self,
        topic: &str,
    ) -> impl Future<Output = Result<BTreeMap<i32, i64>, SinkError>> + Send;

    /// Applies the records and commits the offsets, atomically.
    fn write(
        &mut self,
        batch: &WriteBatch<'_>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Why a sink refuses a valid event for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: &'static str,
    pub message: String,
}

/// What one write applies and commits.
#[derive(Debug)]
pub struct WriteBatch<'a> {
    pub topic: &'a str,
    /// Records to apply, in offset order per partition.
    pub records: Vec<SinkRecord<'a>>,
    /// Offsets to commit with them (compare-and-set).
    pub commits: Vec<OffsetCommit>,
}

/// One event with its position.
#[derive(Debug, Clone, Copy)]
pub struct SinkRecord<'a> {
    pub partition: i32,
    pub offset: i64,
    pub event: &'a Event,
}

impl WriteBatch<'_> {
    /// The events alone.
    pub fn events(&self) -> Vec<&Event> {
        self.records.iter().map(|r| r.event).collect()
    }
}

/// Messages a sink accepts.
pub enum SinkMessage {
    /// Records from a reader; acknowledged to `reader` once durable.
    Batch {
        batch: Arc<ParsedBatch>,
        reader: ActorRef<ReaderMessage>,
    },
    /// Where a reader of `partition` should start: the next offset this sink needs
    /// (None: it has nothing for that partition and wants the earliest).
    ResumeOffset {
        partition: i32,
        reply: RpcReplyPort<Option<i64>>,
    },
    /// The linger timer of flush generation `.0` fired.
    Linger(u64),
    /// Flush everything buffered, then reply (graceful stop).
    Drain(RpcReplyPort<()>),
}

/// Batching and retry settings of a sink.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub batch_size: usize,
    pub linger: Duration,
    pub retry_initial_backoff: Duration,
    pub retry_max_backoff: Duration,
}

pub struct SinkArgs<W> {
    pub writer: W,
    pub topic: Arc<str>,
    pub settings: SinkSettings,
    pub dlq: ActorRef<DlqMessage>,
}

/// The generic sink actor; `W` decides where records go.
pub struct SinkActor<W>(PhantomData<fn() -> W>);

impl<W> Default for SinkActor<W> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

pub struct SinkState<W> {
    writer: W,
    topic: Arc<str>,
    settings: SinkSettings,
    dlq: ActorRef<DlqMessage>,
    backoff: Backoff,
    buffer: Vec<Buffered>,
    buffered_records: usize,
    /// Per partition, the offset after the last record received (buffered or committed).
    received: BTreeMap<i32, i64>,
    /// Per partition, the next offset stored in the destination (what a commit expects).
    committed: BTreeMap<i32, i64>,
    /// Generation of the current buffer; a linger timer of an older one is ignored.
    generation: u64,
    linger_armed: bool,
}

struct Buffered {
    batch: Arc<ParsedBatch>,
    /// Index of the first record this sink still has to apply.
    from: usize,
    reader: ActorRef<ReaderMessage>,
}

impl<W: SinkWriter> Actor for SinkActor<W> {
    type Msg = SinkMessage;
    type State = SinkState<W>;
    type Arguments = SinkArgs<W>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut backoff = Backoff::new(
            args.settings.retry_initial_backoff,
            args.settings.retry_max_backoff,
        );
        // Starting needs the committed offsets; wait out a destination that is away.
        let received = loop {
            match args.writer.committed(&args.topic).await {
                Ok(offsets) => break offsets,
                Err(SinkError::Transient(e)) => {
                    tracing::warn!(sink = args.writer.name(), error = %e, "loading committed offsets; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(Box::new(e)),
            }
        };
        backoff.reset();
        for (partition, offset) in &received {
            metrics::gauge!("gamestream_sink_committed_offset", "sink" => args.writer.name(), "partition" => partition.to_string())
                .set(*offset as f64);
        }
        Ok(SinkState {
            writer: args.writer,
            topic: args.topic,
            settings: args.settings,
            dlq: args.dlq,
            backoff,
            buffer: Vec::new(),
            buffered_records: 0,
            committed: received.clone(),
            received,
            generation: 0,
            linger_armed: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SinkMessage::Batch { batch, reader } => {
                state.accept(batch, reader);
                if state.buffered_records >= state.settings.batch_size {
                    state.flush().await?;
                } else if !state.linger_armed && !state.buffer.is_empty() {
                    state.linger_armed = true;
                    let generation = state.generation;
                    // The timer task ends by itself after one send; a stale one is ignored.
                    drop(myself.send_after(state.settings.linger, move || {
                        SinkMessage::Linger(generation)
                    }));
                }
            }
            SinkMessage::ResumeOffset { partition, reply } => {
                let _ = reply.send(state.received.get(&partition).copied());
            }
            SinkMessage::Linger(generation) => {
                if generation == state.generation {
                    state.flush().await?;
                }
            }
            SinkMessage::Drain(reply) => {
                state.flush().await?;
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

impl<W: SinkWriter> SinkState<W> {
    /// Buffers the part of `batch` this sink has not seen; acknowledges a batch it
    /// already has entirely (a reader restarted and re-sent it).
    fn accept(&mut self, batch: Arc<ParsedBatch>, reader: ActorRef<ReaderMessage>) {
        let expected = self.received.get(&batch.partition).copied();
        let from = expected.map_or(0, |next| batch.records.partition_point(|r| r.offset < next));
        if expected.is_some_and(|next| next >= batch.next_offset) {
            ack(&reader, self.writer.name(), &batch);
            return;
        }
        if let Some(next) = expected {
            let first = batch
                .records
                .get(from)
                .map_or(batch.next_offset, |r| r.offset);
            if first > next {
                tracing::warn!(
                    sink = self.writer.name(),
                    partition = batch.partition,
                    expected = next,
                    got = first,
                    "gap in offsets (records removed by retention or compaction)"
                );
            }
        }
        self.received.insert(batch.partition, batch.next_offset);
        self.buffered_records += batch.records.len() - from;
        self.buffer.push(Buffered {
            batch,
            from,
            reader,
        });
    }

    /// Writes everything buffered: dead letters, then records and offsets.
    async fn flush(&mut self) -> Result<(), ActorProcessingErr> {
        self.generation += 1;
        self.linger_armed = false;
        if self.buffer.is_empty() {
            return Ok(());
        }
        let buffered = std::mem::take(&mut self.buffer);
        let span = traces::batch_span(
            self.writer.name(),
            self.buffered_records,
            buffered
                .iter()
                .flat_map(|b| &b.batch.records[b.from..])
                .filter_map(|r| r.trace.as_deref()),
        );
        self.buffered_records = 0;
        self.write_buffered(buffered, &span)
            .instrument(span.clone())
            .await
    }

    /// Writes what [`Self::flush`] took from the buffer, inside the batch span `span`.
    async fn write_buffered(
        &mut self,
        buffered: Vec<Buffered>,
        span: &tracing::Span,
    ) -> Result<(), ActorProcessingErr> {
        let name = self.writer.name();
        let started = Instant::now();

        let mut commits: BTreeMap<i32, i64> = BTreeMap::new();
        let mut records = Vec::new();
        let mut letters = Vec::new();
        for b in &buffered {
            commits.insert(b.batch.partition, b.batch.next_offset);
            for record in &b.batch.records[b.from..] {
                self.classify(&b.batch, record, &mut records, &mut letters);
            }
        }
        let count = records.len();
        let letters_span = if letters.is_empty() {
            tracing::Span::none()
        } else {
            child_span(span, "dead_letter", name)
        };
        self.dead_letter(letters).instrument(letters_span).await?;
        let commits = commits
            .into_iter()
            .map(|(partition, next)| OffsetCommit {
                partition,
                expected: self.committed.get(&partition).copied(),
                next,
            })
            .collect();
        let batch = WriteBatch {
            topic: &self.topic,
            records,
            commits,
        };
        let write = child_span(span, "sink.write", name);
        match write_with_retry(&mut self.writer, &mut self.backoff, &batch)
            .instrument(write)
            .await
        {
            Ok(()) => {}
            Err(SinkError::Permanent(e)) => {
                tracing::warn!(sink = name, error = %e, records = count, "batch refused; isolating the record that causes it");
                let (letters, commits) =
                    isolate(&mut self.writer, &mut self.backoff, &batch, &e).await?;
                send_dead_letters(&self.dlq, letters)
                    .instrument(child_span(span, "dead_letter", name))
                    .await?;
                let rest = WriteBatch {
                    topic: batch.topic,
                    records: Vec::new(),
                    commits,
                };
                write_with_retry(&mut self.writer, &mut self.backoff, &rest)
                    .await
                    .map_err(Box::new)?;
            }
            Err(e) => return Err(Box::new(e)),
        }
        for commit in &batch.commits {
            self.committed.insert(commit.partition, commit.next);
            metrics::gauge!("gamestream_sink_committed_offset", "sink" => name, "partition" => commit.partition.to_string())
                .set(commit.next as f64);
        }
        tracing::debug!(sink = name, records = count, "batch written");
        metrics::counter!("gamestream_sink_records_total", "sink" => name).increment(count as u64);
        metrics::histogram!("gamestream_sink_batch_records", "sink" => name).record(count as f64);
        metrics::histogram!("gamestream_sink_write_duration_seconds", "sink" => name)
            .record(started.elapsed().as_secs_f64());
        drop(batch);
        for b in &buffered {
            ack(&b.reader, name, &b.batch);
        }
        Ok(())
    }

    fn classify<'a>(
        &self,
        batch: &ParsedBatch,
        record: &'a ParsedRecord,
        records: &mut Vec<SinkRecord<'a>>,
        letters: &mut Vec<DeadLetter>,
    ) {
        let name = self.writer.dead_letter_consumer();
        match &record.parsed {
            Ok(event) => match self.writer.reject(event) {
                None => records.push(SinkRecord {
                    partition: batch.partition,
                    offset: record.offset,
                    event,
                }),
                Some(rejection) => letters.push(DeadLetter {
                    consumer: name,
                    topic: batch.topic.to_string(),
                    partition: batch.partition,
                    offset: record.offset,
                    key: Some(event.player_id.clone().into_bytes()),
                    payload: event.to_record_value(),
                    error: rejection.message,
                    kind: rejection.kind.to_owned(),
                    at: chrono::Utc::now(),
                }),
            },
            Err(poison) if self.writer.dead_letters_invalid_records() => letters.push(DeadLetter {
                consumer: name,
                topic: batch.topic.to_string(),
                partition: batch.partition,
                offset: record.offset,
                key: poison.key.clone(),
                payload: poison.payload.clone(),
                error: poison.error.to_string(),
                kind: poison.error.kind().to_owned(),
                at: chrono::Utc::now(),
            }),
            Err(_) => {}
        }
    }

    async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), ActorProcessingErr> {
        send_dead_letters(&self.dlq, letters).await
    }
}

/// A child of the batch span `parent` (`sink.write`: the destination call; `dead_letter`:
/// the DLQ hand-off). Disabled when the parent is: an unsampled batch gets no children.
fn child_span(parent: &tracing::Span, name: &'static str, sink: &'static str) -> tracing::Span {
    if parent.is_disabled() {
        return tracing::Span::none();
    }
    // The Redis stores of a consumer are the sinks named `…-redis`.
    let db_system = if sink.ends_with("-redis") {
        "redis"
    } else {
        "postgresql"
    };
    match name {
        "dead_letter" => {
            tracing::info_span!(parent: parent, "dead_letter", otel.kind = "internal", sink)
        }
        _ => {
            tracing::info_span!(parent: parent, "sink.write", otel.kind = "client", db.system = db_system, sink)
        }
    }
}

fn ack(reader: &ActorRef<ReaderMessage>, sink: &'static str, batch: &ParsedBatch) {
    // A reader that has stopped (restart, shutdown) no longer needs its credits back.
    let _ = reader.cast(ReaderMessage::Ack {
        sink,
        next_offset: batch.next_offset,
        records: batch.records.len(),
    });
}

/// Hands dead letters to the DLQ actor and waits until they are durable, so that no
/// offset is committed past a poison record before its letter is stored.
async fn send_dead_letters(
    dlq: &ActorRef<DlqMessage>,
    letters: Vec<DeadLetter>,
) -> Result<(), ActorProcessingErr> {
    if letters.is_empty() {
        return Ok(());
    }
    match dlq
        .call(|reply| DlqMessage::Write { letters, reply }, None)
        .await?
    {
        ractor::rpc::CallResult::Success(()) => Ok(()),
        other => Err(format!("dead-letter queue did not confirm the write: {other:?}").into()),
    }
}

/// Calls the writer until it succeeds or fails for a reason retrying cannot fix.
async fn write_with_retry<W: SinkWriter>(
    writer: &mut W,
    backoff: &mut Backoff,
    batch: &WriteBatch<'_>,
) -> Result<(), SinkError> {
    loop {
        match writer.write(batch).await {
            Ok(()) => {
                backoff.reset();
                return Ok(());
            }
            Err(SinkError::Transient(e)) => {
                let delay = backoff.next_delay();
                metrics::counter!("gamestream_sink_write_errors_total", "sink" => writer.name(), "kind" => "transient").increment(1);
                tracing::warn!(sink = writer.name(), error = %e, retry_in = ?delay, attempt = backoff.attempts, "write failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                metrics::counter!("gamestream_sink_write_errors_total", "sink" => writer.name(), "kind" => e.kind()).increment(1);
                return Err(e);
            }
        }
    }
}

/// Writes a refused batch one record at a time (each with its own offset commit).
/// Returns dead letters for the records the destination refuses on their own, and the
/// batch's commits re-based on what the single writes committed.
async fn isolate<W: SinkWriter>(
    writer: &mut W,
    backoff: &mut Backoff,
    batch: &WriteBatch<'_>,
    batch_error: &str,
) -> Result<(Vec<DeadLetter>, Vec<OffsetCommit>), ActorProcessingErr> {
    let mut letters = Vec::new();
    let mut expected: BTreeMap<i32, Option<i64>> = batch
        .commits
        .iter()
        .map(|c| (c.partition, c.expected))
        .collect();
    for record in &batch.records {
        let slot = expected.entry(record.partition).or_default();
        let single = WriteBatch {
            topic: batch.topic,
            records: vec![*record],
            commits: vec![OffsetCommit {
                partition: record.partition,
                expected: *slot,
                next: record.offset + 1,
            }],
        };
        match write_with_retry(writer, backoff, &single).await {
            Ok(()) => *slot = Some(record.offset + 1),
            Err(SinkError::Permanent(e)) => {
                tracing::warn!(sink = writer.name(), partition = record.partition, offset = record.offset, error = %e, "record refused; dead-lettering it");
                letters.push(DeadLetter {
                    consumer: writer.dead_letter_consumer(),
                    topic: batch.topic.to_owned(),
                    partition: record.partition,
                    offset: record.offset,
                    key: Some(record.event.player_id.clone().into_bytes()),
                    payload: record.event.to_record_value(),
                    error: format!("refused by the destination: {e}"),
                    kind: "sink_rejected".to_owned(),
                    at: chrono::Utc::now(),
                });
            }
            Err(e) => return Err(Box::new(e)),
        }
    }
    if letters.is_empty() {
        tracing::warn!(
            sink = writer.name(),
            error = batch_error,
            "batch refused but every record was accepted alone"
        );
    }
    let commits = batch
        .commits
        .iter()
        .map(|c| OffsetCommit {
            expected: expected.get(&c.partition).copied().flatten(),
            ..*c
        })
        .collect();
    Ok((letters, commits))
}
