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
//! Each sink has its own cursor (the offset after the last record sent to it). Sinks
//! that keep up share one cursor and one fetch. A sink out of credit for longer than
//! `consumer.detach_after` (its store is down, say) is left behind; when it has credit
//! again it gets catch-up fetches from its own cursor, in turn with the others, until
//! its cursor meets theirs. So one store being away never stops the others.
//!
//! Duplicates (`dedupe`): the reader gives each record its verdict once, in offset
//! order, with a [`DedupeWindow`] of the records before it, and leaves duplicates out of
//! the batches it sends, so no sink applies or dead-letters them. Before its first
//! fetch it reads the window back from the log ([`prepare_reader`]); a catch-up fetch
//! behind the frontier uses the verdicts already given (the duplicates' offsets).
//!
//! Fetch errors are transient (the broker is away): retried with backoff. An offset
//! that fell out of retention restarts from the earliest offset, with a warning and a
//! metric. Supervised by the [`Supervisor`](super::supervisor).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::record::RecordAndOffset;

use super::record::{ParsedBatch, ParsedRecord, Poison};
use super::sink::{AckTo, SinkAck, SinkMessage};
use crate::config::DedupeConfig;
use crate::dedupe::{DedupeKey, DedupeWindow};
use crate::event::{self, EventError};
use crate::retry::Backoff;
use crate::telemetry::traces;

/// At most this many records of one fetch are timed into the delivery histogram.
const DELIVERY_SAMPLES_PER_FETCH: usize = 64;

pub enum ReaderMessage {
    /// Fetch the next records, if credits allow. The number is the fetch loop's token:
    /// a message of an older loop (a stale timer) is ignored, so one loop runs at a time.
    Fetch(u64),
    /// A sink made a batch durable (or already had it).
    Ack(SinkAck),
}

super::narrow_message!(ReaderMessage::Ack(SinkAck));

/// What a reader starts from: its partition client and the first offset to fetch.
/// Prepared by [`prepare_reader`] before the reader is spawned, so that starting the
/// actor does no I/O.
pub struct ReaderStart {
    pub client: PartitionClient,
    pub next_offset: i64,
    /// The duplicate window, filled with the records before `next_offset`; `None`
    /// with `dedupe.enabled = false`.
    pub window: Option<DedupeWindow>,
}

impl std::fmt::Debug for ReaderStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderStart")
            .field("next_offset", &self.next_offset)
            .finish_non_exhaustive()
    }
}

/// Connects a partition client and asks each sink where it needs to resume (each call
/// bounded by `timeout`): the reader begins at the lowest, or at the earliest offset when
/// a sink has nothing for the partition.
///
/// With deduplication on, it then reads the records before that offset back into a
/// [`DedupeWindow`] (each fetch bounded by `timeout`), so that the reader's verdicts
/// are those of a reader that had been running all along.
pub async fn prepare_reader(
    kafka: &rskafka::client::Client,
    topic: &str,
    partition: i32,
    sinks: &[(&'static str, ActorRef<SinkMessage>)],
    timeout: Duration,
    dedupe: Option<&DedupeConfig>,
) -> Result<ReaderStart, ActorProcessingErr> {
    let client = tokio::time::timeout(
        timeout,
        kafka.partition_client(topic.to_owned(), partition, UnknownTopicHandling::Retry),
    )
    .await
    .map_err(|_| format!("no partition client within {timeout:?}"))??;
    let mut resume: Option<i64> = None;
    let mut any_missing = false;
    for (name, sink) in sinks {
        let reply = sink
            .call(
                |reply| SinkMessage::ResumeOffset { partition, reply },
                Some(timeout),
            )
            .await?;
        match reply {
            ractor::rpc::CallResult::Success(Some(offset)) => {
                resume = Some(resume.map_or(offset, |r| r.min(offset)))
            }
            ractor::rpc::CallResult::Success(None) => any_missing = true,
            other => {
                return Err(format!("sink {name} did not say where to resume: {other:?}").into());
            }
        }
    }
    let earliest = tokio::time::timeout(timeout, client.get_offset(OffsetAt::Earliest))
        .await
        .map_err(|_| format!("no earliest offset within {timeout:?}"))??;
    let next_offset = match resume {
        Some(offset) if !any_missing => offset.max(earliest),
        _ => earliest,
    };
    let window = match dedupe {
        Some(settings) => Some(
            preload_window(&client, partition, settings, earliest, next_offset, timeout).await?,
        ),
        None => None,
    };
    Ok(ReaderStart {
        client,
        next_offset,
        window,
    })
}

/// Reads `[next_offset - max_records, next_offset)` (from `earliest` at the most) into a
/// new window; reports how long it took.
async fn preload_window(
    client: &PartitionClient,
    partition: i32,
    settings: &DedupeConfig,
    earliest: i64,
    next_offset: i64,
    timeout: Duration,
) -> Result<DedupeWindow, ActorProcessingErr> {
    let started = Instant::now();
    let mut window = DedupeWindow::new(settings.max_records, settings.window);
    let mut offset = window.preload_from(next_offset).max(earliest);
    let mut scratch = Vec::new();
    while offset < next_offset {
        let (records, _) = tokio::time::timeout(
            timeout,
            client.fetch_records(offset, 1..PRELOAD_FETCH_BYTES, 0),
        )
        .await
        .map_err(|_| format!("no records to rebuild the duplicate window within {timeout:?}"))??;
        let Some(last) = records.last().map(|r| r.offset) else {
            break; // nothing more below the high watermark
        };
        for r in records {
            if r.offset < offset || r.offset >= next_offset {
                continue;
            }
            let key = dedupe_key(&r.record.headers, || {
                let value = r.record.value.as_deref()?;
                scratch.clear();
                scratch.extend_from_slice(value);
                event::parse_record(&mut scratch).ok().map(|e| e.event_id)
            });
            window.observe(r.offset, key, r.record.timestamp.timestamp_millis());
        }
        offset = last + 1;
    }
    let took = started.elapsed();
    metrics::gauge!("gamestream_dedupe_rebuild_seconds", "partition" => partition.to_string())
        .set(took.as_secs_f64());
    tracing::info!(
        partition,
        records = window.len(),
        took_ms = took.as_millis() as u64,
        "duplicate window rebuilt from the log"
    );
    Ok(window)
}

/// Bytes per fetch when rebuilding a duplicate window.
const PRELOAD_FETCH_BYTES: i32 = 4 * 1024 * 1024;

/// A record's duplicate key: the dead letter a replay republishes (header
/// `dlq_replay_of`), else the `event_id` of the event its value parses to; `None` for
/// a record that is not a valid event. The reader passes the event it parsed anyway;
/// rebuilding the window parses the value here.
fn dedupe_key(
    headers: &std::collections::BTreeMap<String, Vec<u8>>,
    event_id: impl FnOnce() -> Option<uuid::Uuid>,
) -> Option<DedupeKey> {
    match headers.get(REPLAY_HEADER) {
        Some(letter) => std::str::from_utf8(letter)
            .ok()
            .and_then(|l| l.parse().ok())
            .map(DedupeKey::Replay),
        None => event_id().map(DedupeKey::Event),
    }
}

/// The header `gamestream dlq replay` stamps on the records it republishes: the id of
/// the dead letter (`dlq_events.id`).
pub const REPLAY_HEADER: &str = "dlq_replay_of";
/// The header that names the consumer (`consumer_service`) whose dead letter a replayed
/// record is: only that consumer's sinks apply it.
pub const REPLAY_FOR_HEADER: &str = "dlq_replay_for";

pub struct ReaderArgs {
    pub start: ReaderStart,
    pub topic: Arc<str>,
    pub partition: i32,
    /// The sinks and their names (the names match their `Ack`s).
    pub sinks: Vec<(&'static str, ActorRef<SinkMessage>)>,
    pub max_in_flight_records: usize,
    pub detach_after: Duration,
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
    high_watermark: i64,
    max_in_flight_records: usize,
    detach_after: Duration,
    /// The cursor served last, so that cursors take turns.
    last_cursor: i64,
    fetch_max_bytes: i32,
    fetch_max_wait_ms: i32,
    backoff: Backoff,
    /// A fetch loop is running (a `Fetch` with the current token is queued or running).
    fetching: bool,
    token: u64,
    /// Reused buffer for simd-json's in-place parsing.
    scratch: Vec<u8>,
    /// The duplicate verdicts: `None` with deduplication off.
    dedupe: Option<Verdicts>,
    /// This reader as its sinks see it: where their acks go.
    ack_to: AckTo,
    /// The offset after the newest record fetched so far: records before it were
    /// delivered once already (a catch-up fetch), so their delivery is not timed again.
    delivered_up_to: i64,
    /// `gamestream_reader_delivery_latency_seconds`: a record's Kafka timestamp (the
    /// HTTP accept, `ingested_at`) to its first fetch.
    delivery: metrics::Histogram,
}

/// The duplicate window and the verdicts given so far.
struct Verdicts {
    window: DedupeWindow,
    /// The offset after the last record given a verdict: records from here on are new
    /// to the window; records before it were judged already.
    frontier: i64,
    /// The duplicates before the frontier that a sink behind may still fetch.
    duplicates: std::collections::BTreeSet<i64>,
    skipped: metrics::Counter,
    window_records: metrics::Gauge,
    window_bytes: metrics::Gauge,
}

impl Verdicts {
    /// Whether the record at `offset` is a duplicate; records at or past the frontier are
    /// judged now (in offset order), the others were judged when first fetched.
    fn judge(&mut self, offset: i64, key: Option<DedupeKey>, timestamp_ms: i64) -> bool {
        if offset < self.frontier {
            return self.duplicates.contains(&offset);
        }
        self.frontier = offset + 1;
        let duplicate = self.window.observe(offset, key, timestamp_ms);
        if duplicate {
            self.duplicates.insert(offset);
        }
        duplicate
    }

    /// Forgets verdicts no sink can fetch again (below every sink's cursor).
    fn forget_below(&mut self, lowest_cursor: i64) {
        if self
            .duplicates
            .first()
            .is_some_and(|first| *first < lowest_cursor)
        {
            self.duplicates = self.duplicates.split_off(&lowest_cursor);
        }
        self.window_records.set(self.window.len() as f64);
        self.window_bytes.set(self.window.memory_bytes() as f64);
    }
}

struct SinkCredit {
    name: &'static str,
    actor: ActorRef<SinkMessage>,
    flow: Flow,
}

/// A sink's position and credit, as the reader sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Flow {
    /// Records sent and not yet acknowledged.
    in_flight: usize,
    /// The offset after the last record sent to this sink.
    cursor: i64,
    /// Since when this sink has had no credit.
    starved_since: Option<Instant>,
}

impl Actor for PartitionReader {
    type Msg = ReaderMessage;
    type State = ReaderState;
    type Arguments = ReaderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ReaderMessage>,
        args: ReaderArgs,
    ) -> Result<ReaderState, ActorProcessingErr> {
        let ReaderStart {
            client,
            next_offset,
            window,
        } = args.start;
        let label = args.partition.to_string();
        let dedupe = window.map(|window| {
            let skipped = metrics::counter!("gamestream_dedupe_duplicates_total", "partition" => label.clone());
            skipped.increment(0);
            Verdicts {
                window,
                frontier: next_offset,
                duplicates: Default::default(),
                skipped,
                window_records: metrics::gauge!("gamestream_dedupe_window_records", "partition" => label.clone()),
                window_bytes: metrics::gauge!("gamestream_dedupe_window_bytes", "partition" => label.clone()),
            }
        });
        // Every sink starts at the common minimum; a sink that is further on skips what
        // it already has (the sink dedupes by offset), so they share fetches at once.
        tracing::info!(topic = %args.topic, partition = args.partition, offset = next_offset, "reader starting");
        // At zero from the start, so the series exists before the first error.
        metrics::counter!("gamestream_reader_fetch_errors_total", "partition" => args.partition.to_string())
            .increment(0);
        Ok(ReaderState {
            client,
            ack_to: myself.get_derived(),
            partition_label: args.partition.to_string(),
            topic: args.topic,
            partition: args.partition,
            sinks: args
                .sinks
                .into_iter()
                .map(|(name, actor)| SinkCredit {
                    name,
                    actor,
                    flow: Flow {
                        in_flight: 0,
                        cursor: next_offset,
                        starved_since: None,
                    },
                })
                .collect(),
            high_watermark: next_offset,
            max_in_flight_records: args.max_in_flight_records,
            detach_after: args.detach_after,
            last_cursor: next_offset,
            fetch_max_bytes: args.fetch_max_bytes,
            fetch_max_wait_ms: i32::try_from(args.fetch_max_wait.as_millis()).unwrap_or(i32::MAX),
            backoff: args.backoff,
            fetching: false,
            token: 0,
            scratch: Vec::new(),
            dedupe,
            delivered_up_to: next_offset,
            delivery: metrics::histogram!("gamestream_reader_delivery_latency_seconds", "partition" => label),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<ReaderMessage>,
        state: &mut ReaderState,
    ) -> Result<(), ActorProcessingErr> {
        state.fetching = true;
        myself.cast(ReaderMessage::Fetch(state.token))?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ReaderMessage>,
        message: ReaderMessage,
        state: &mut ReaderState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ReaderMessage::Fetch(token) if token == state.token => {
                state.fetching = true;
                state.fetch(&myself).await?;
            }
            ReaderMessage::Fetch(_) => {} // a stale timer of an older fetch loop
            ReaderMessage::Ack(SinkAck {
                sink,
                next_offset,
                records,
            }) => {
                let max = state.max_in_flight_records;
                if let Some(credit) = state.sinks.iter_mut().find(|s| s.name == sink) {
                    credit.flow.in_flight = credit.flow.in_flight.saturating_sub(records);
                    if credit.flow.in_flight < max {
                        credit.flow.starved_since = None;
                    }
                }
                let lag = (state.high_watermark - next_offset).max(0);
                metrics::gauge!("gamestream_consumer_lag", "sink" => sink, "partition" => state.partition_label.clone())
                    .set(lag as f64);
                if !state.fetching {
                    state.token += 1;
                    state.fetching = true;
                    myself.cast(ReaderMessage::Fetch(state.token))?;
                }
            }
        }
        Ok(())
    }
}

impl ReaderState {
    async fn fetch(&mut self, myself: &ActorRef<ReaderMessage>) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        let mut flows: Vec<Flow> = self.sinks.iter().map(|s| s.flow.clone()).collect();
        let choice = choose_cursor(
            &mut flows,
            self.max_in_flight_records,
            self.detach_after,
            self.last_cursor,
            now,
        );
        for (sink, flow) in self.sinks.iter_mut().zip(flows) {
            sink.flow.starved_since = flow.starved_since;
        }
        let Some(cursor) = choice else {
            // Nothing to do until an Ack frees credit, or a starved sink may be left behind.
            self.fetching = false;
            drop(myself.send_after(self.detach_after, {
                let token = self.token;
                move || ReaderMessage::Fetch(token)
            }));
            return Ok(());
        };
        self.last_cursor = cursor;
        let token = self.token;
        let result = self
            .client
            .fetch_records(cursor, 1..self.fetch_max_bytes, self.fetch_max_wait_ms)
            .await;
        match result {
            Ok((records, high_watermark)) => {
                self.backoff.reset();
                self.high_watermark = high_watermark;
                metrics::gauge!("gamestream_partition_high_watermark", "partition" => self.partition_label.clone())
                    .set(high_watermark as f64);
                self.dispatch(myself, cursor, records)?;
                myself.cast(ReaderMessage::Fetch(token))?;
            }
            Err(ClientError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            }) => {
                self.recover_offset(cursor).await?;
                myself.cast(ReaderMessage::Fetch(token))?;
            }
            Err(e) => {
                let delay = self.backoff.next_delay();
                metrics::counter!("gamestream_reader_fetch_errors_total", "partition" => self.partition_label.clone()).increment(1);
                tracing::warn!(partition = self.partition, error = %e, retry_in = ?delay, "fetch failed; retrying");
                drop(myself.send_after(delay, move || ReaderMessage::Fetch(token)));
            }
        }
        Ok(())
    }

    /// `cursor` is outside what the broker holds.
    async fn recover_offset(&mut self, cursor: i64) -> Result<(), ActorProcessingErr> {
        let earliest = self.client.get_offset(OffsetAt::Earliest).await?;
        if cursor < earliest {
            tracing::warn!(
                partition = self.partition,
                wanted = cursor,
                earliest,
                "offset fell out of retention; resuming from the earliest offset"
            );
            metrics::counter!("gamestream_reader_offset_resets_total", "partition" => self.partition_label.clone()).increment(1);
            for sink in self.sinks.iter_mut().filter(|s| s.flow.cursor == cursor) {
                sink.flow.cursor = earliest;
            }
        } else {
            // Beyond the end: the topic was recreated or the broker lost data. Jumping
            // back would apply records twice, so wait for an operator (`offsets reset`).
            tracing::error!(
                partition = self.partition,
                wanted = cursor,
                earliest,
                "offset is beyond the end of the partition; waiting (see `gamestream offsets reset`)"
            );
            tokio::time::sleep(self.backoff.next_delay()).await;
        }
        Ok(())
    }

    /// Parses the records fetched at `cursor` once and sends the batch to every sink
    /// at that cursor that has credit.
    fn dispatch(
        &mut self,
        _myself: &ActorRef<ReaderMessage>,
        cursor: i64,
        fetched: Vec<RecordAndOffset>,
    ) -> Result<(), ActorProcessingErr> {
        let mut records = Vec::with_capacity(fetched.len());
        // The offset after the last record fetched, duplicates included.
        let mut next_offset = None;
        let mut duplicates = 0u64;
        for r in fetched {
            if r.offset < cursor {
                continue; // a fetch may start at the beginning of a stored record batch
            }
            next_offset = Some(r.offset + 1);
            let parsed = parse(&mut self.scratch, r.record.key, r.record.value);
            if let Some(verdicts) = self.dedupe.as_mut() {
                let key = if r.offset < verdicts.frontier {
                    None // judged already: the key is not needed
                } else {
                    dedupe_key(&r.record.headers, || {
                        parsed.as_ref().ok().map(|e| e.event_id)
                    })
                };
                if verdicts.judge(r.offset, key, r.record.timestamp.timestamp_millis()) {
                    duplicates += 1;
                    continue;
                }
            }
            let trace = traces::extract(&r.record.headers).map(|remote| {
                let event_id = r
                    .record
                    .headers
                    .get("event_id")
                    .and_then(|id| std::str::from_utf8(id).ok());
                Box::new(traces::consume(
                    remote,
                    &self.topic,
                    self.partition,
                    r.offset,
                    event_id,
                ))
            });
            let replay_for = r
                .record
                .headers
                .get(REPLAY_FOR_HEADER)
                .and_then(|target| std::str::from_utf8(target).ok())
                .map(Box::from);
            records.push(ParsedRecord {
                offset: r.offset,
                parsed,
                trace,
                replay_for,
            });
        }
        let Some(next_offset) = next_offset else {
            return Ok(());
        };
        self.time_delivery(&records, next_offset);
        let max = self.max_in_flight_records;
        if let Some(verdicts) = self.dedupe.as_mut() {
            verdicts.skipped.increment(duplicates);
        }
        // A batch of only duplicates goes out empty: the sinks commit past them, so
        // their lag returns to 0.
        let batch = Arc::new(ParsedBatch {
            topic: Arc::clone(&self.topic),
            partition: self.partition,
            next_offset,
            records,
        });
        metrics::counter!("gamestream_reader_records_total", "partition" => self.partition_label.clone())
            .increment(batch.records.len() as u64);
        for sink in self
            .sinks
            .iter_mut()
            .filter(|s| s.flow.cursor == cursor && s.flow.in_flight < max)
        {
            sink.flow.in_flight += batch.records.len();
            sink.flow.cursor = batch.next_offset;
            sink.actor.cast(SinkMessage::Batch {
                batch: Arc::clone(&batch),
                reader: self.ack_to.clone(),
            })?;
        }
        self.forget_judged();
        Ok(())
    }

    /// Records, for records fetched for the first time (evenly sampled), the time from
    /// their HTTP accept (`ingested_at`, the Kafka timestamp the ingest producer gives
    /// them) to now: the broker's part of the end-to-end latency.
    fn time_delivery(&mut self, records: &[ParsedRecord], next_offset: i64) {
        let first_new = self.delivered_up_to;
        if next_offset <= first_new {
            return;
        }
        self.delivered_up_to = next_offset;
        let now = chrono::Utc::now();
        let new = records.iter().filter(|r| r.offset >= first_new);
        let step = records.len().div_ceil(DELIVERY_SAMPLES_PER_FETCH).max(1);
        for record in new.step_by(step) {
            if let Ok(event) = &record.parsed {
                let micros = (now - event.ingested_at).num_microseconds().unwrap_or(0);
                self.delivery.record(micros.max(0) as f64 / 1e6);
            }
        }
    }

    fn forget_judged(&mut self) {
        if let Some(verdicts) = self.dedupe.as_mut() {
            let lowest = self.sinks.iter().map(|s| s.flow.cursor).min();
            verdicts.forget_below(lowest.unwrap_or(verdicts.frontier));
        }
    }
}

/// Which cursor to fetch at next, or None to wait.
///
/// A cursor is served when it has a sink with credit and no sink at it has been out of
/// credit for less than `detach_after` (so a briefly busy sink is waited for, not left
/// behind). Servable cursors take turns, so catching up never stops the others.
pub(crate) fn choose_cursor(
    sinks: &mut [Flow],
    max_in_flight: usize,
    detach_after: Duration,
    last: i64,
    now: Instant,
) -> Option<i64> {
    for sink in sinks.iter_mut() {
        if sink.in_flight >= max_in_flight {
            sink.starved_since.get_or_insert(now);
        } else {
            sink.starved_since = None;
        }
    }
    let waiting_for = |cursor: i64| {
        sinks.iter().any(|s| {
            s.cursor == cursor
                && s.starved_since
                    .is_some_and(|since| now.duration_since(since) < detach_after)
        })
    };
    let mut servable: Vec<i64> = sinks
        .iter()
        .filter(|s| s.in_flight < max_in_flight)
        .map(|s| s.cursor)
        .filter(|c| !waiting_for(*c))
        .collect();
    servable.sort_unstable();
    servable.dedup();
    servable
        .iter()
        .copied()
        .find(|c| *c > last)
        .or_else(|| servable.first().copied())
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

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 100;
    const DETACH: Duration = Duration::from_secs(5);

    fn flow(in_flight: usize, cursor: i64) -> Flow {
        Flow {
            in_flight,
            cursor,
            starved_since: None,
        }
    }

    #[test]
    fn sinks_that_keep_up_share_one_cursor() {
        let now = Instant::now();
        let mut flows = vec![flow(10, 500), flow(90, 500)];
        assert_eq!(choose_cursor(&mut flows, MAX, DETACH, 500, now), Some(500));
    }

    #[test]
    fn a_briefly_busy_sink_is_waited_for() {
        let now = Instant::now();
        let mut flows = vec![flow(10, 500), flow(MAX, 500)];
        assert_eq!(
            choose_cursor(&mut flows, MAX, DETACH, 500, now),
            None,
            "wait for the busy sink"
        );
        assert!(flows[1].starved_since.is_some());
    }

    #[test]
    fn a_sink_starved_past_detach_after_is_left_behind() {
        let start = Instant::now();
        let mut flows = vec![flow(10, 500), flow(MAX, 500)];
        assert_eq!(choose_cursor(&mut flows, MAX, DETACH, 500, start), None);
        let later = start + DETACH + Duration::from_millis(1);
        assert_eq!(
            choose_cursor(&mut flows, MAX, DETACH, 500, later),
            Some(500),
            "the healthy sink goes on"
        );
    }

    #[test]
    fn a_lagging_sink_with_credit_takes_turns_with_the_others() {
        let now = Instant::now();
        let mut flows = vec![flow(0, 9_000), flow(0, 2_000)];
        assert_eq!(
            choose_cursor(&mut flows, MAX, DETACH, 9_000, now),
            Some(2_000)
        );
        assert_eq!(
            choose_cursor(&mut flows, MAX, DETACH, 2_000, now),
            Some(9_000)
        );
    }

    #[test]
    fn nothing_to_do_without_credit() {
        let now = Instant::now();
        let mut flows = vec![flow(MAX, 1), flow(MAX, 7)];
        assert_eq!(choose_cursor(&mut flows, MAX, DETACH, 0, now), None);
    }
}
