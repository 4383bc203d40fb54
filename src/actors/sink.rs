//! `SinkActor<W>`: the one actor behind every sink (logger, stats, leaderboard).
//!
//! It owns a [`SinkWriter`] (the destination-specific write path) and does what every
//! sink needs the same way:
//!
//! ```text
//! Batch(Arc<ParsedBatch>) ──► skip what this sink already applied (offset dedupe)
//!                          ──► buffer until batch_size records or linger (linger 0:
//!                              until the mailbox holds no earlier batch)
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
//! Leases ([`crate::leases`]): a sink writes a partition only after the supervisor
//! `Claim`ed it for a lease epoch (the sink then reloads where the partition stands,
//! since another daemon may have moved it), and every commit carries that epoch. A
//! write refused for a lost lease ([`SinkError::LeaseLost`]) drops those partitions'
//! records unwritten, tells the supervisor, and writes the rest of the batch again.
//!
//! Supervised by the [`Supervisor`](super::supervisor): a crash restarts the whole
//! pipeline from committed offsets, so nothing buffered here needs saving.

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort};
use tracing::Instrument;

use super::dlq::DlqMessage;
use super::record::{ParsedBatch, ParsedRecord};
use crate::catalogue::SinkSpec;
use crate::dead_letter::DeadLetter;
use crate::event::Event;
use crate::retry::Backoff;
use crate::sinks::error::WriteError;
use crate::sinks::{OffsetCommit, SinkError};
use crate::telemetry::traces;

/// The destination-specific part of a sink.
pub trait SinkWriter: Send + Sync + 'static {
    /// The sink's entry in the [catalogue](crate::catalogue): its name (the key of its
    /// offsets, its metrics label and its `Ack`s), its dead letters' `consumer_service`,
    /// its store, and whether it dead-letters records that are not valid events.
    fn spec(&self) -> &'static SinkSpec;

    /// The sink's name (see [`Self::spec`]).
    fn name(&self) -> &'static str {
        self.spec().name
    }

    /// A valid event this sink can never apply (e.g. a score that is not a number).
    fn reject(&self, _event: &Event) -> Option<Rejection> {
        None
    }

    /// The next offset to apply per partition, from the destination itself.
    fn committed(
        &self,
        topic: &str,
    ) -> impl Future<Output = Result<BTreeMap<i32, i64>, SinkError>> + Send;

    /// Takes over `partition` for lease `epoch` (a writer with an older epoch must be
    /// refused from now on) and returns the next offset to apply, from the destination.
    /// By default the offsets are just reloaded: a Postgres commit is fenced by the
    /// lease row itself.
    fn claim(
        &self,
        topic: &str,
        partition: i32,
        epoch: i64,
    ) -> impl Future<Output = Result<Option<i64>, SinkError>> + Send {
        let _ = epoch;
        async move { Ok(self.committed(topic).await?.get(&partition).copied()) }
    }

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

/// What a sink tells a reader when one of its batches is durable (or was already):
/// the reader's credits for `records` come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkAck {
    pub sink: &'static str,
    pub next_offset: i64,
    pub records: usize,
}

/// What a sink tells the owner of the leases when a write found `partition`'s lease
/// lost (the sink has dropped the partition; its reader must stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionFenced {
    pub partition: i32,
}

/// Where a sink sends its [`SinkAck`]s: the reader of the batch, seen only through that
/// one message (so a sink never depends on the reader's own message type).
pub type AckTo = DerivedActorRef<SinkAck>;
/// Where a sink reports a lost lease: the supervisor, seen only through that message.
pub type FencedTo = DerivedActorRef<PartitionFenced>;

/// Messages a sink accepts.
pub enum SinkMessage {
    /// Records from a reader; acknowledged to `reader` once durable.
    Batch {
        batch: Arc<ParsedBatch>,
        reader: AckTo,
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
    /// This daemon now holds `partition` under lease `epoch`: reload where it stands
    /// and fence its writes with `epoch`. Replies with the error if that failed.
    Claim {
        partition: i32,
        epoch: i64,
        reply: RpcReplyPort<Result<(), SinkError>>,
    },
    /// Hand `partition` over (its reader has stopped): flush, then forget it.
    Release {
        partition: i32,
        reply: RpcReplyPort<()>,
    },
    /// `partition` is no longer this daemon's: drop what is buffered for it, unwritten.
    Forget { partition: i32 },
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
    /// Told when a write finds a partition's lease lost.
    pub fenced: FencedTo,
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
    /// Per claimed partition, the lease epoch its commits are fenced with.
    epochs: BTreeMap<i32, i64>,
    fenced: FencedTo,
}

struct Buffered {
    batch: Arc<ParsedBatch>,
    /// Index of the first record this sink still has to apply.
    from: usize,
    reader: AckTo,
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
        // Exported at 0 from the start, so `rate()` and alerts see the first fenced write.
        metrics::counter!("gamestream_lease_fenced_writes_total", "sink" => args.writer.name())
            .increment(0);
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
            epochs: BTreeMap::new(),
            fenced: args.fenced,
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
                    if state.settings.linger.is_zero() {
                        // No timer: the flush queues behind the messages already in the
                        // mailbox, so the batches that arrived during the last write
                        // share the next one, and a lone batch is written at once.
                        myself.cast(SinkMessage::Linger(generation))?;
                    } else {
                        // The timer task ends by itself after one send; a stale one is ignored.
                        drop(myself.send_after(state.settings.linger, move || {
                            SinkMessage::Linger(generation)
                        }));
                    }
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
            SinkMessage::Claim {
                partition,
                epoch,
                reply,
            } => {
                let result = state.claim(partition, epoch).await;
                let _ = reply.send(result);
            }
            SinkMessage::Release { partition, reply } => {
                state.flush().await?;
                state.forget(partition);
                let _ = reply.send(());
            }
            SinkMessage::Forget { partition } => state.forget(partition),
        }
        Ok(())
    }
}

impl<W: SinkWriter> SinkState<W> {
    /// Buffers the part of `batch` this sink has not seen; acknowledges a batch it
    /// already has entirely (a reader restarted and re-sent it).
    fn accept(&mut self, batch: Arc<ParsedBatch>, reader: AckTo) {
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

    /// Writes everything buffered: dead letters, then records and offsets. Partitions
    /// whose lease turns out lost are dropped and the rest written again.
    async fn flush(&mut self) -> Result<(), ActorProcessingErr> {
        self.generation += 1;
        self.linger_armed = false;
        let mut send_letters = true;
        while !self.buffer.is_empty() {
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
            match self
                .write_buffered(&buffered, send_letters, &span)
                .instrument(span.clone())
                .await?
            {
                None => {
                    for b in &buffered {
                        ack(&b.reader, self.writer.name(), &b.batch);
                    }
                    return Ok(());
                }
                Some(lost) => {
                    // The dead letters of this buffer are stored already.
                    send_letters = false;
                    self.buffer = buffered;
                    self.buffered_records = self
                        .buffer
                        .iter()
                        .map(|b| b.batch.records.len() - b.from)
                        .sum();
                    self.lease_lost(&lost);
                }
            }
        }
        Ok(())
    }

    /// One attempt at writing `buffered`, inside the batch span `span`. `Some(partitions)` when the leases of those
    /// partitions are lost (nothing was written).
    async fn write_buffered(
        &mut self,
        buffered: &[Buffered],
        send_letters: bool,
        span: &tracing::Span,
    ) -> Result<Option<Vec<i32>>, ActorProcessingErr> {
        let name = self.writer.name();
        let started = Instant::now();

        let mut commits: BTreeMap<i32, i64> = BTreeMap::new();
        let mut records = Vec::new();
        let mut letters = Vec::new();
        for b in buffered {
            commits.insert(b.batch.partition, b.batch.next_offset);
            for record in &b.batch.records[b.from..] {
                self.classify(&b.batch, record, &mut records, &mut letters);
            }
        }
        // A partition never claimed (or forgotten) has no lease to write under.
        let unclaimed: Vec<i32> = commits
            .keys()
            .copied()
            .filter(|p| !self.epochs.contains_key(p))
            .collect();
        if !unclaimed.is_empty() {
            return Ok(Some(unclaimed));
        }
        let count = records.len();
        if send_letters {
            let letters_span = if letters.is_empty() {
                tracing::Span::none()
            } else {
                child_span(span, "dead_letter", self.writer.spec())
            };
            self.dead_letter(letters).instrument(letters_span).await?;
        }
        let commits = commits
            .into_iter()
            .map(|(partition, next)| OffsetCommit {
                partition,
                expected: self.committed.get(&partition).copied(),
                next,
                epoch: self.epochs.get(&partition).copied(),
            })
            .collect();
        let batch = WriteBatch {
            topic: &self.topic,
            records,
            commits,
        };
        let write = child_span(span, "sink.write", self.writer.spec());
        match write_with_retry(&mut self.writer, &mut self.backoff, &batch)
            .instrument(write)
            .await
        {
            Ok(()) => {}
            Err(SinkError::LeaseLost(lost)) => return Ok(Some(lost)),
            Err(SinkError::Permanent(e)) => {
                tracing::warn!(sink = name, error = %e, records = count, "batch refused; isolating the record that causes it");
                let (letters, commits) =
                    isolate(&mut self.writer, &mut self.backoff, &batch, &e).await?;
                send_dead_letters(&self.dlq, letters)
                    .instrument(child_span(span, "dead_letter", self.writer.spec()))
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
        record_latency(name, &batch.records, chrono::Utc::now());
        Ok(None)
    }

    /// A write was refused because these partitions' leases are gone: count it, drop
    /// them, and tell the supervisor (which stops their readers and frees the leases).
    fn lease_lost(&mut self, partitions: &[i32]) {
        let name = self.writer.name();
        metrics::counter!("gamestream_lease_fenced_writes_total", "sink" => name).increment(1);
        tracing::warn!(sink = name, partitions = ?partitions, "write refused: lease lost; dropping the partitions");
        for &partition in partitions {
            self.forget(partition);
            let _ = self.fenced.send_message(PartitionFenced { partition });
        }
    }

    /// Drops everything this sink knows about `partition`: its buffered records (not
    /// acknowledged: the reader is gone), its offsets and its lease epoch.
    fn forget(&mut self, partition: i32) {
        self.buffer.retain(|b| b.batch.partition != partition);
        self.buffered_records = self
            .buffer
            .iter()
            .map(|b| b.batch.records.len() - b.from)
            .sum();
        self.received.remove(&partition);
        self.committed.remove(&partition);
        self.epochs.remove(&partition);
    }

    /// Takes `partition` over at lease `epoch`: reloads where the destination has it.
    async fn claim(&mut self, partition: i32, epoch: i64) -> Result<(), SinkError> {
        self.forget(partition);
        let name = self.writer.name();
        let next = loop {
            match self.writer.claim(&self.topic, partition, epoch).await {
                Ok(next) => break next,
                Err(SinkError::Transient(e)) => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!(sink = name, partition, error = %e, retry_in = ?delay, "claiming a partition failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.backoff.reset();
        if let Some(next) = next {
            self.received.insert(partition, next);
            self.committed.insert(partition, next);
            metrics::gauge!("gamestream_sink_committed_offset", "sink" => name, "partition" => partition.to_string())
                .set(next as f64);
        }
        self.epochs.insert(partition, epoch);
        Ok(())
    }

    fn classify<'a>(
        &self,
        batch: &ParsedBatch,
        record: &'a ParsedRecord,
        records: &mut Vec<SinkRecord<'a>>,
        letters: &mut Vec<DeadLetter>,
    ) {
        let name = self.writer.spec().consumer_service;
        if !record.is_for(name) {
            // A replay of another consumer's dead letter: this sink applied the original.
            return;
        }
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
            Err(poison) if self.writer.spec().dead_letters_invalid_records => {
                letters.push(DeadLetter {
                    consumer: name,
                    topic: batch.topic.to_string(),
                    partition: batch.partition,
                    offset: record.offset,
                    key: poison.key.clone(),
                    payload: poison.payload.clone(),
                    error: poison.error.to_string(),
                    kind: poison.error.kind().to_owned(),
                    at: chrono::Utc::now(),
                })
            }
            Err(_) => {}
        }
    }

    async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), ActorProcessingErr> {
        send_dead_letters(&self.dlq, letters).await
    }
}

/// At most this many records of a committed batch are sampled into the latency
/// histograms (evenly spread), so their memory between two upkeeps stays small at any rate.
const LATENCY_SAMPLES_PER_BATCH: usize = 64;

/// Records, for records evenly sampled from a committed batch, the time from their
/// `ingested_at` (end-to-end latency) and from their event time (freshness) to `now`.
fn record_latency(
    sink: &'static str,
    records: &[SinkRecord<'_>],
    now: chrono::DateTime<chrono::Utc>,
) {
    if records.is_empty() {
        return;
    }
    let latency = metrics::histogram!("gamestream_end_to_end_latency_seconds", "sink" => sink);
    let freshness = metrics::histogram!("gamestream_event_freshness_seconds", "sink" => sink);
    let step = records.len().div_ceil(LATENCY_SAMPLES_PER_BATCH);
    for record in records.iter().step_by(step) {
        let seconds = |since: chrono::DateTime<chrono::Utc>| {
            (now - since).num_microseconds().unwrap_or(i64::MAX).max(0) as f64 / 1e6
        };
        latency.record(seconds(record.event.ingested_at));
        freshness.record(seconds(record.event.timestamp));
    }
}

/// A child of the batch span `parent` (`sink.write`: the destination call; `dead_letter`:
/// the DLQ hand-off). Disabled when the parent is: an unsampled batch gets no children.
fn child_span(parent: &tracing::Span, name: &'static str, spec: &SinkSpec) -> tracing::Span {
    if parent.is_disabled() {
        return tracing::Span::none();
    }
    let (sink, db_system) = (spec.name, spec.store.db_system());
    match name {
        "dead_letter" => {
            tracing::info_span!(parent: parent, "dead_letter", otel.kind = "internal", sink)
        }
        _ => {
            tracing::info_span!(parent: parent, "sink.write", otel.kind = "client", db.system = db_system, sink)
        }
    }
}

fn ack(reader: &AckTo, sink: &'static str, batch: &ParsedBatch) {
    // A reader that has stopped (restart, shutdown) no longer needs its credits back.
    let _ = reader.send_message(SinkAck {
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
    batch_error: &WriteError,
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
                epoch: batch
                    .commits
                    .iter()
                    .find(|c| c.partition == record.partition)
                    .and_then(|c| c.epoch),
            }],
        };
        match write_with_retry(writer, backoff, &single).await {
            Ok(()) => *slot = Some(record.offset + 1),
            Err(SinkError::Permanent(e)) => {
                tracing::warn!(sink = writer.name(), partition = record.partition, offset = record.offset, error = %e, "record refused; dead-lettering it");
                letters.push(DeadLetter {
                    consumer: writer.spec().consumer_service,
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
            error = %batch_error,
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

#[cfg(test)]
mod tests {
    //! The sink actor alone: a fake writer, a fake reader and a fake DLQ, no supervisor.

    use std::sync::Mutex;

    use tokio::sync::mpsc;

    use super::*;
    use crate::catalogue::STATS;

    /// What the fake writer was asked to do, and what it answers next.
    #[derive(Default)]
    struct Log {
        writes: Vec<(Vec<i64>, Vec<OffsetCommit>)>,
        /// Answered (once) instead of writing.
        next_error: Option<SinkError>,
        /// Writes begun.
        started: usize,
        /// When set, a write waits for a permit of it.
        gate: Option<Arc<tokio::sync::Semaphore>>,
    }

    struct FakeWriter(Arc<Mutex<Log>>);

    impl SinkWriter for FakeWriter {
        fn spec(&self) -> &'static SinkSpec {
            &STATS
        }

        async fn committed(&self, _topic: &str) -> Result<BTreeMap<i32, i64>, SinkError> {
            Ok(BTreeMap::new())
        }

        async fn write(&mut self, batch: &WriteBatch<'_>) -> Result<(), SinkError> {
            let gate = {
                let mut log = self.0.lock().unwrap();
                log.started += 1;
                log.gate.clone()
            };
            if let Some(gate) = gate {
                drop(gate.acquire().await);
            }
            let mut log = self.0.lock().unwrap();
            if let Some(e) = log.next_error.take() {
                return Err(e);
            }
            let offsets = batch.records.iter().map(|r| r.offset).collect();
            log.writes.push((offsets, batch.commits.clone()));
            Ok(())
        }
    }

    /// An actor that forwards every message it gets to a channel.
    struct Forward<T>(PhantomData<fn() -> T>);

    impl<T: ractor::Message> Actor for Forward<T> {
        type Msg = T;
        type State = mpsc::UnboundedSender<T>;
        type Arguments = mpsc::UnboundedSender<T>;

        async fn pre_start(
            &self,
            _myself: ActorRef<T>,
            tx: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(tx)
        }

        async fn handle(
            &self,
            _myself: ActorRef<T>,
            message: T,
            tx: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let _ = tx.send(message);
            Ok(())
        }
    }

    async fn forward<T: ractor::Message>() -> (ActorRef<T>, mpsc::UnboundedReceiver<T>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (actor, _) = Actor::spawn(None, Forward::<T>(PhantomData), tx)
            .await
            .expect("spawn");
        (actor, rx)
    }

    fn event(i: i64) -> Event {
        Event {
            event_id: uuid::Uuid::new_v4(),
            event_type: "quest_completed".to_owned(),
            player_id: format!("p{i}"),
            game_id: "g".to_owned(),
            timestamp: chrono::Utc::now(),
            ingested_at: chrono::Utc::now(),
            data: "{}".to_owned(),
            score: crate::event::Score::Absent,
        }
    }

    fn batch(partition: i32, offsets: std::ops::Range<i64>) -> Arc<ParsedBatch> {
        Arc::new(ParsedBatch {
            topic: Arc::from("t"),
            partition,
            next_offset: offsets.end,
            records: offsets
                .map(|offset| ParsedRecord {
                    offset,
                    parsed: Ok(event(offset)),
                    trace: None,
                    replay_for: None,
                })
                .collect(),
        })
    }

    struct Rig {
        sink: ActorRef<SinkMessage>,
        log: Arc<Mutex<Log>>,
        reader: ActorRef<SinkAck>,
        acks: mpsc::UnboundedReceiver<SinkAck>,
        fenced: mpsc::UnboundedReceiver<PartitionFenced>,
    }

    async fn rig(batch_size: usize) -> Rig {
        rig_lingering(batch_size, Duration::from_millis(20)).await
    }

    async fn rig_lingering(batch_size: usize, linger: Duration) -> Rig {
        let log = Arc::new(Mutex::new(Log::default()));
        let (reader, acks) = forward::<SinkAck>().await;
        let (owner, fenced) = forward::<PartitionFenced>().await;
        let (dlq, _letters) = forward::<DlqMessage>().await;
        let (sink, _) = Actor::spawn(
            None,
            SinkActor::<FakeWriter>::default(),
            SinkArgs {
                writer: FakeWriter(Arc::clone(&log)),
                topic: Arc::from("t"),
                settings: SinkSettings {
                    batch_size,
                    linger,
                    retry_initial_backoff: Duration::from_millis(1),
                    retry_max_backoff: Duration::from_millis(5),
                },
                dlq,
                fenced: owner.get_derived(),
            },
        )
        .await
        .expect("spawn sink");
        Rig {
            sink,
            log,
            reader,
            acks,
            fenced,
        }
    }

    async fn claim(sink: &ActorRef<SinkMessage>, partition: i32, epoch: i64) {
        let claimed = sink
            .call(
                |reply| SinkMessage::Claim {
                    partition,
                    epoch,
                    reply,
                },
                Some(Duration::from_secs(5)),
            )
            .await
            .expect("call");
        assert!(matches!(claimed, ractor::rpc::CallResult::Success(Ok(()))));
    }

    async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("in time")
            .expect("open")
    }

    #[tokio::test]
    async fn a_claimed_batch_is_written_with_its_epoch_and_acknowledged() {
        let mut rig = rig(100).await;
        claim(&rig.sink, 0, 7).await;
        rig.sink
            .cast(SinkMessage::Batch {
                batch: batch(0, 0..3),
                reader: rig.reader.get_derived(),
            })
            .unwrap();
        // Below batch_size: the linger flushes it.
        let ack = next(&mut rig.acks).await;
        assert_eq!(
            ack,
            SinkAck {
                sink: STATS.name,
                next_offset: 3,
                records: 3
            }
        );
        let log = rig.log.lock().unwrap();
        assert_eq!(log.writes.len(), 1);
        let (offsets, commits) = &log.writes[0];
        assert_eq!(offsets, &[0, 1, 2]);
        assert_eq!(
            commits,
            &[OffsetCommit {
                partition: 0,
                expected: None,
                next: 3,
                epoch: Some(7)
            }]
        );
    }

    #[tokio::test]
    async fn without_linger_the_batches_that_arrive_during_a_write_share_the_next() {
        let mut rig = rig_lingering(100, Duration::ZERO).await;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        rig.log.lock().unwrap().gate = Some(Arc::clone(&gate));
        claim(&rig.sink, 0, 1).await;
        let send = |offsets| {
            rig.sink
                .cast(SinkMessage::Batch {
                    batch: batch(0, offsets),
                    reader: rig.reader.get_derived(),
                })
                .unwrap();
        };
        // The first batch finds the sink idle: its write begins, held open by the gate.
        send(0..2);
        let started = Instant::now();
        while rig.log.lock().unwrap().started == 0 {
            assert!(started.elapsed() < Duration::from_secs(5), "no write began");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Two more arrive while that write is held open: they share the next write.
        send(2..4);
        send(4..6);
        gate.add_permits(10);
        for expected in [2, 4, 6] {
            assert_eq!(next(&mut rig.acks).await.next_offset, expected);
        }
        let writes: Vec<Vec<i64>> = rig
            .log
            .lock()
            .unwrap()
            .writes
            .iter()
            .map(|(offsets, _)| offsets.clone())
            .collect();
        assert_eq!(writes, [vec![0, 1], vec![2, 3, 4, 5]]);
    }

    #[tokio::test]
    async fn a_batch_seen_before_is_acknowledged_without_a_write() {
        let mut rig = rig(2).await;
        claim(&rig.sink, 1, 1).await;
        for _ in 0..2 {
            rig.sink
                .cast(SinkMessage::Batch {
                    batch: batch(1, 10..12),
                    reader: rig.reader.get_derived(),
                })
                .unwrap();
        }
        for _ in 0..2 {
            assert_eq!(next(&mut rig.acks).await.next_offset, 12);
        }
        assert_eq!(rig.log.lock().unwrap().writes.len(), 1, "written once");
    }

    #[tokio::test]
    async fn a_lost_lease_drops_the_partition_and_tells_the_owner() {
        let mut rig = rig(1).await;
        claim(&rig.sink, 2, 3).await;
        rig.log.lock().unwrap().next_error = Some(SinkError::LeaseLost(vec![2]));
        rig.sink
            .cast(SinkMessage::Batch {
                batch: batch(2, 0..1),
                reader: rig.reader.get_derived(),
            })
            .unwrap();
        assert_eq!(
            next(&mut rig.fenced).await,
            PartitionFenced { partition: 2 }
        );
        // Nothing was written and nothing acknowledged: the reader is being stopped.
        assert!(rig.log.lock().unwrap().writes.is_empty());
        assert!(rig.acks.try_recv().is_err());
    }

    #[tokio::test]
    async fn an_unclaimed_partition_is_never_written() {
        let mut rig = rig(1).await;
        rig.sink
            .cast(SinkMessage::Batch {
                batch: batch(5, 0..1),
                reader: rig.reader.get_derived(),
            })
            .unwrap();
        assert_eq!(
            next(&mut rig.fenced).await,
            PartitionFenced { partition: 5 }
        );
        assert!(rig.log.lock().unwrap().writes.is_empty());
    }
}
