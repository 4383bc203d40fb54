//! One partition's share of the producer: a task that turns queued records into
//! produce requests.
//!
//! ```text
//! queue ─► Batch ─► produce request ─► replies
//!   nothing of the partition in flight: the batch goes at once (the record, and
//!     whatever else was already queued: no timer, no wait)
//!   requests in flight: the batch fills behind them, and goes when they have all
//!     finished, or once it waited `linger` (into a free slot of
//!     `max_in_flight_requests`), or when it is full
//! ```
//!
//! So a lone record costs one broker round trip and no linger, and under load the
//! batches grow by themselves with the broker's round trip: what arrives while a
//! request is out shares the next one (Nagle's algorithm, not a fixed timer).
//! `linger = 0` sends a batch whenever a slot is free. The idempotent producer's rules
//! ([`Sequencer::may_dispatch`](super::sequence::Sequencer::may_dispatch)) come on
//! top: a ready batch still waits while a batch is retried or an epoch's first batch
//! is unconfirmed, and sequences are taken in dispatch order, so none of this changes
//! what the broker sees.
//!
//! The worker owns its [`PartitionConnection`]: an rskafka `PartitionClient` created on
//! first use and recreated after any failed or timed-out request, or after sitting idle
//! for [`IDLE_REFRESH`]. A connection that hangs (a broker host gone without a reset)
//! would keep hanging; a fresh client after a failure never inherits it.
//!
//! # Idempotent (the default): a batch is sent until it is confirmed
//!
//! With `producer.idempotence`, each partition worker has its own producer id, and
//! every batch carries it with its epoch and sequence numbers ([`super::sequence`]). A
//! batch whose outcome is unknown (a broken connection, an attempt longer than
//! `producer.request_timeout`, `NotLeaderOrFollower`) is sent again with the same
//! sequence until `publish_timeout`; the broker appends it once. Retries go out in
//! sequence order, behind the oldest unconfirmed batch, with up to
//! `max_in_flight_requests` (at most 5, what the broker remembers per producer) first
//! attempts in flight. A caller still gets a 503 when the batch is not confirmed by
//! `publish_timeout`.
//!
//! # Without idempotence: each request is sent once
//!
//! The producer's rskafka client never retries (see
//! [`crate::kafka::connect_producer`]): a request whose connection broke may have
//! been appended, and sending it again could store its events twice. What is retried,
//! until `publish_timeout`, is what certainly appended nothing ([`appended_nothing`]):
//! getting a connected partition client, and a batch the broker refused (a leader
//! change). The client is connected (a ListOffsets request) before a batch is handed
//! to it, so a broker that is down or restarting fails there, not in the produce
//! request; a produce request that fails otherwise answers its callers with an error
//! (a 503, "not confirmed"), and the caller decides whether to send again.
//!
//! Owned by [`super::ProducerTasks`]; it stops when told to close, after flushing
//! what it holds and collecting the last acknowledgements.

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::Client;
use rskafka::client::controller::ProducerIdentity;
use rskafka::client::partition::{
    Compression, OffsetAt, PartitionClient, ProduceOptions, UnknownTopicHandling,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::sequence::{Attempt, BatchId, Refusal, Sequencer};
use super::{ProduceError, ProducerRecord};
use crate::retry::Backoff;

/// A partition client unused for this long is replaced before its next request: a
/// broker (Kafka's `connections.max.idle.ms`, 10 minutes) or a load balancer may have
/// closed its idle connection, and a request on a closed connection fails after
/// being handed over, where it cannot be retried.
const IDLE_REFRESH: Duration = Duration::from_secs(60);
/// Pauses between attempts that sent nothing (getting a connected partition client,
/// sending a refused batch again): doubling from 50 ms up to 1 s.
fn attempt_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_secs(1))
}

/// The reply a caller waits for: the offset of its first record (its records are
/// written together, so the others follow consecutively).
pub(super) type Reply = oneshot::Sender<Result<i64, ProduceError>>;

/// Settings every worker of one producer shares.
pub(super) struct WorkerSettings {
    pub topic: String,
    pub linger: Duration,
    pub max_batch_records: usize,
    pub max_batch_bytes: usize,
    pub max_in_flight_requests: usize,
    pub publish_timeout: Duration,
    /// How long one attempt of an idempotent produce request may take before it is
    /// sent again on a fresh connection (with the same sequence).
    pub request_timeout: Duration,
    /// Produce idempotently (`producer.idempotence`): see [`super::sequence`].
    pub idempotence: bool,
    pub compression: Compression,
    /// The producer's byte bound, for the in-flight gauge.
    pub in_flight: Arc<Semaphore>,
    pub max_in_flight_bytes: usize,
}

/// One caller's records bound for this partition. They always travel in the same
/// produce request, so their offsets are contiguous.
pub(super) struct Pending {
    records: Vec<ProducerRecord>,
    /// Held until the produce request finished: this is what bounds memory.
    permit: OwnedSemaphorePermit,
    reply: Reply,
}

impl Pending {
    pub(super) fn new(
        records: Vec<ProducerRecord>,
        permit: OwnedSemaphorePermit,
        reply: Reply,
    ) -> Self {
        Self {
            records,
            permit,
            reply,
        }
    }

    fn bytes(&self) -> usize {
        self.permit.num_permits()
    }
}

/// Records collected for one produce request.
#[derive(Default)]
struct Batch {
    pendings: Vec<Pending>,
    records: usize,
    bytes: usize,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.pendings.is_empty()
    }

    fn is_full(&self, settings: &WorkerSettings) -> bool {
        self.records >= settings.max_batch_records || self.bytes >= settings.max_batch_bytes
    }

    /// Whether `pending` may join without the batch passing its limits; an empty
    /// batch takes anything, so an oversized request still goes out, alone.
    fn fits(&self, pending: &Pending, settings: &WorkerSettings) -> bool {
        self.is_empty()
            || (self.records + pending.records.len() <= settings.max_batch_records
                && self.bytes + pending.bytes() <= settings.max_batch_bytes)
    }

    fn push(&mut self, pending: Pending) {
        self.records += pending.records.len();
        self.bytes += pending.bytes();
        self.pendings.push(pending);
    }

    /// Starts an empty batch with `pending`. Returns whether it has already waited long
    /// enough behind in-flight requests (`linger` 0) and, if not, when it has.
    fn start(&mut self, pending: Pending, settings: &WorkerSettings) -> (bool, Option<Instant>) {
        debug_assert!(self.is_empty(), "a batch starts empty");
        self.push(pending);
        if settings.linger.is_zero() {
            (true, None)
        } else {
            (false, Some(Instant::now() + settings.linger))
        }
    }

    /// Whether the batch should go out as soon as a request slot is free (and the
    /// idempotent producer allows): at once when nothing of the partition is in flight;
    /// behind in-flight requests only once it has waited `linger`, is full, or must
    /// make room (closing, or a request that did not fit is waiting).
    fn ready(&self, settings: &WorkerSettings, now: &Dispatch) -> bool {
        !self.is_empty()
            && (now.in_flight == 0 || now.lingered || now.flushing || self.is_full(settings))
    }
}

/// What the dispatch decision ([`Batch::ready`]) looks at besides the batch.
struct Dispatch {
    /// Produce requests of the partition not yet finished.
    in_flight: usize,
    /// The batch has waited `linger` behind them.
    lingered: bool,
    /// Everything held must go: closing, or a request that did not fit waits.
    flushing: bool,
}

/// Metric handles of one partition, registered once rather than looked up per batch.
#[derive(Clone)]
struct WorkerMetrics {
    topic: String,
    batch_records: metrics::Histogram,
    batch_bytes: metrics::Histogram,
    request_duration: metrics::Histogram,
    records: metrics::Counter,
    in_flight_bytes: metrics::Gauge,
}

impl WorkerMetrics {
    fn new(topic: &str, partition: i32) -> Self {
        let labels = [
            ("topic", topic.to_owned()),
            ("partition", partition.to_string()),
        ];
        Self {
            topic: topic.to_owned(),
            batch_records: metrics::histogram!("producer_batch_records", &labels),
            batch_bytes: metrics::histogram!("producer_batch_bytes", &labels),
            request_duration: metrics::histogram!("producer_request_duration_seconds", &labels),
            records: metrics::counter!("producer_records_total", &labels),
            in_flight_bytes: metrics::gauge!("producer_in_flight_bytes", "topic" => topic.to_owned()),
        }
    }

    /// A batch sent again (idempotent producer), by cause.
    fn resend(&self, reason: &'static str) {
        metrics::counter!("producer_resends_total", "topic" => self.topic.clone(), "reason" => reason)
            .increment(1);
    }

    fn error(&self, reason: &'static str, n: u64) {
        metrics::counter!("producer_errors_total", "topic" => self.topic.clone(), "reason" => reason)
            .increment(n);
    }
}

/// The task of one partition.
pub(super) struct PartitionWorker {
    partition: i32,
    settings: Arc<WorkerSettings>,
    queue: mpsc::UnboundedReceiver<Pending>,
    close: watch::Receiver<bool>,
    connection: Arc<PartitionConnection>,
    metrics: Arc<WorkerMetrics>,
    /// With `producer.idempotence`: this partition's producer id and sequences.
    idempotence: Option<Arc<Idempotence>>,
}

impl PartitionWorker {
    pub(super) fn new(
        client: Arc<Client>,
        partition: i32,
        settings: Arc<WorkerSettings>,
        queue: mpsc::UnboundedReceiver<Pending>,
        close: watch::Receiver<bool>,
    ) -> Self {
        let connection = Arc::new(PartitionConnection {
            client,
            topic: settings.topic.clone(),
            partition,
            current: tokio::sync::Mutex::new(None),
            throttled_until: std::sync::Mutex::new(None),
        });
        let metrics = Arc::new(WorkerMetrics::new(&settings.topic, partition));
        let idempotence = settings
            .idempotence
            .then(|| Arc::new(Idempotence::default()));
        Self {
            partition,
            settings,
            queue,
            close,
            connection,
            metrics,
            idempotence,
        }
    }

    /// Collects and dispatches batches until closed and drained.
    pub(super) async fn run(mut self) {
        let settings = Arc::clone(&self.settings);
        let mut batch = Batch::default();
        // A request that did not fit the current batch; it starts the next one.
        let mut carry: Option<Pending> = None;
        let mut in_flight = JoinSet::new();
        // When the current batch's wait behind in-flight requests ends (set by its first
        // record; only counted while something is in flight).
        let mut linger_until: Option<Instant> = None;
        let mut lingered = false;
        let mut intake_open = true;
        let mut closing = false;
        loop {
            // An idempotent partition sends nothing new while it retries a batch, or
            // before its epoch's first batch is confirmed (see `super::sequence`).
            let may_dispatch = self
                .idempotence
                .as_ref()
                .is_none_or(|idempotence| idempotence.lock().may_dispatch());
            let ready = batch.ready(
                &settings,
                &Dispatch {
                    in_flight: in_flight.len(),
                    lingered,
                    flushing: closing || carry.is_some(),
                },
            );
            if ready && may_dispatch && in_flight.len() < settings.max_in_flight_requests {
                self.dispatch(std::mem::take(&mut batch), &mut in_flight);
                (lingered, linger_until) = (false, None);
                if let Some(pending) = carry.take() {
                    (lingered, linger_until) = batch.start(pending, &settings);
                    // What queued meanwhile joins it before it is looked at again.
                    carry = self.take_queued(&mut batch);
                }
                continue;
            }
            if !intake_open && batch.is_empty() && in_flight.is_empty() {
                break;
            }
            let can_take = intake_open && carry.is_none() && !batch.is_full(&settings);
            tokio::select! {
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Err(e) = done {
                        tracing::error!(partition = self.partition, error = %e, "produce task failed");
                    }
                }
                received = self.queue.recv(), if can_take => match received {
                    Some(pending) if batch.fits(&pending, &settings) => {
                        if batch.is_empty() {
                            (lingered, linger_until) = batch.start(pending, &settings);
                        } else {
                            batch.push(pending);
                        }
                        // Whatever else is already queued goes in the same request: a
                        // burst is one request, not one per record.
                        carry = self.take_queued(&mut batch);
                    }
                    Some(pending) => carry = Some(pending),
                    None => intake_open = false,
                },
                () = sleep_until(linger_until), if linger_until.is_some() && !lingered => {
                    lingered = true;
                }
                _ = self.close.changed(), if !closing => {
                    // Stop intake; what is already queued is still received and flushed.
                    closing = true;
                    self.queue.close();
                }
            }
        }
        tracing::debug!(partition = self.partition, "producer worker stopped");
    }

    /// Moves what is already queued into `batch` without waiting, until it is full; the
    /// first request that does not fit is returned (it starts the next batch).
    fn take_queued(&mut self, batch: &mut Batch) -> Option<Pending> {
        while !batch.is_full(&self.settings) {
            let Ok(pending) = self.queue.try_recv() else {
                // Empty, or closed: `recv` reports the close on the next turn.
                return None;
            };
            if !batch.fits(&pending, &self.settings) {
                return Some(pending);
            }
            batch.push(pending);
        }
        None
    }

    /// Sends `batch` in a task of its own.
    fn dispatch(&self, batch: Batch, in_flight: &mut JoinSet<()>) {
        // Prepared here, not in the task: an idempotent batch takes its sequence
        // numbers in the order batches are dispatched.
        let Some(prepared) = prepare(batch, &self.settings, &self.metrics) else {
            return;
        };
        let sequence = self.idempotence.as_ref().map(|idempotence| {
            let id = idempotence.lock().assign(prepared.records.len());
            (Arc::clone(idempotence), id)
        });
        in_flight.spawn(produce(
            Arc::clone(&self.connection),
            Arc::clone(&self.settings),
            Arc::clone(&self.metrics),
            prepared,
            sequence,
        ));
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A batch's records, ready to send, and whom to answer.
struct Prepared {
    records: Vec<rskafka::record::Record>,
    /// Per caller: how many records, where to answer, the bytes it holds.
    answers: Vec<(usize, Reply, OwnedSemaphorePermit)>,
}

/// Drops the callers that stopped waiting (timed out: their 503 is sent, and dropping
/// them returns their bytes at once) and gathers the others' records; `None` when no
/// caller is left.
fn prepare(batch: Batch, settings: &WorkerSettings, metrics: &WorkerMetrics) -> Option<Prepared> {
    let (live, expired): (Vec<Pending>, Vec<Pending>) = batch
        .pendings
        .into_iter()
        .partition(|p| !p.reply.is_closed());
    if !expired.is_empty() {
        metrics.error("expired", expired.len() as u64);
    }
    drop(expired);
    if live.is_empty() {
        record_in_flight(settings, metrics);
        return None;
    }
    let mut records = Vec::with_capacity(live.iter().map(|p| p.records.len()).sum());
    let mut answers = Vec::with_capacity(live.len());
    let mut bytes = 0;
    for pending in live {
        bytes += pending.bytes();
        answers.push((pending.records.len(), pending.reply, pending.permit));
        records.extend(
            pending
                .records
                .into_iter()
                .map(ProducerRecord::into_rskafka),
        );
    }
    metrics.batch_records.record(records.len() as f64);
    metrics.batch_bytes.record(bytes as f64);
    record_in_flight(settings, metrics);
    Some(Prepared { records, answers })
}

/// Sends one batch and answers each of its callers.
async fn produce(
    connection: Arc<PartitionConnection>,
    settings: Arc<WorkerSettings>,
    metrics: Arc<WorkerMetrics>,
    prepared: Prepared,
    sequence: Option<(Arc<Idempotence>, BatchId)>,
) {
    let Prepared { records, answers } = prepared;
    let count = records.len();
    let started = Instant::now();
    let deadline = started + settings.publish_timeout;
    let mut used = None;
    let outcome = match &sequence {
        Some((idempotence, id)) => {
            // Resolves the batch however this ends (a panic included), so no later batch
            // waits behind it for ever.
            let mut resolution = Resolution {
                idempotence,
                id: *id,
                confirmed: false,
            };
            let outcome = send_idempotent(
                &connection,
                &settings,
                &metrics,
                idempotence,
                *id,
                &records,
                deadline,
                &mut used,
            )
            .await;
            resolution.confirmed = outcome.is_ok();
            drop(resolution);
            outcome
        }
        None => send_once(
            &connection,
            &settings,
            &answers,
            &records,
            deadline,
            &mut used,
        )
        .await
        .map(Stored::At),
    };
    let outcome = match outcome {
        Ok(Stored::OffsetsUnknown) => Ok(vec![-1; count]),
        Ok(Stored::At(offsets)) if offsets.len() == count && contiguous(&offsets) => Ok(offsets),
        Ok(Stored::At(offsets)) => Err(ProduceError::Broker(Arc::from(format!(
            "the broker acknowledged {} of {count} records, or not at consecutive offsets",
            offsets.len()
        )))),
        Err(e) => Err(e),
    };
    metrics
        .request_duration
        .record(started.elapsed().as_secs_f64());
    match &outcome {
        Ok(_) => metrics.records.increment(count as u64),
        Err(e) => {
            metrics.error(e.kind(), count as u64);
            tracing::warn!(
                topic = %settings.topic,
                partition = connection.partition,
                records = count,
                error = %e,
                "produce failed; the partition client will be recreated"
            );
            if let Some(client) = used.as_ref() {
                connection.reset(client).await;
            }
        }
    }
    let mut start = 0;
    for (len, reply, permit) in answers {
        let result = match &outcome {
            Ok(offsets) => Ok(offsets[start]),
            Err(e) => Err(e.clone()),
        };
        start += len;
        // The caller may have gone away meanwhile; nothing to tell it then.
        let _ = reply.send(result);
        drop(permit);
    }
    record_in_flight(&settings, &metrics);
}

/// Where a confirmed batch is.
enum Stored {
    /// At these offsets.
    At(Vec<i64>),
    /// In the log, its offsets not told (an older broker's `DuplicateSequenceNumber`, or
    /// a batch a later confirmed batch proves stored): its callers get offset -1.
    OffsetsUnknown,
}

/// Resolves an idempotent batch in its partition's sequencer when dropped.
struct Resolution<'a> {
    idempotence: &'a Idempotence,
    id: BatchId,
    confirmed: bool,
}

impl Drop for Resolution<'_> {
    fn drop(&mut self) {
        let mut sequencer = self.idempotence.lock();
        if self.confirmed {
            sequencer.confirmed(self.id);
        } else {
            sequencer.resolve(self.id);
        }
        drop(sequencer);
        self.idempotence.changed.notify_waiters();
    }
}

/// Without idempotence: sends the batch once, and again only after a failure that
/// certainly appended nothing ([`appended_nothing`]), until the deadline.
async fn send_once(
    connection: &PartitionConnection,
    settings: &WorkerSettings,
    answers: &[(usize, Reply, OwnedSemaphorePermit)],
    records: &[rskafka::record::Record],
    deadline: Instant,
    used: &mut Option<Arc<PartitionClient>>,
) -> Result<Vec<i64>, ProduceError> {
    let mut backoff = attempt_backoff();
    loop {
        // Each attempt sends a copy: a batch the broker refused (a leader change) is sent
        // again, which rskafka's ownership of what it sends allows only this way.
        let attempt = send(
            connection,
            used,
            records.to_vec(),
            settings.compression,
            None,
        );
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(offsets)) => return Ok(offsets),
            // A caller that stopped waiting has its 503: nothing more is sent for it.
            Ok(Err(e))
                if appended_nothing(&e)
                    && !answers.iter().any(|(_, reply, _)| reply.is_closed()) =>
            {
                let pause = backoff.next_delay();
                if Instant::now() + pause >= deadline {
                    return Err(ProduceError::Broker(Arc::from(e.to_string())));
                }
                tracing::info!(
                    topic = %settings.topic,
                    partition = connection.partition,
                    records = records.len(),
                    error = %e,
                    "produce refused before anything was appended; sending it again"
                );
                if let Some(client) = used.take() {
                    connection.reset(&client).await;
                }
                tokio::time::sleep(pause).await;
            }
            Ok(Err(e)) => return Err(ProduceError::Broker(Arc::from(e.to_string()))),
            Err(_) => return Err(ProduceError::Timeout(settings.publish_timeout)),
        }
    }
}

/// With idempotence: sends the batch with its sequence, and again with the same
/// sequence after anything that may or may not have appended it (a broken connection,
/// an attempt past `producer.request_timeout`, `NotLeaderOrFollower`, ...), until the
/// deadline; the broker appends it once. Retries go out in sequence order: a batch
/// retries only once every earlier batch of the partition is resolved.
#[allow(clippy::too_many_arguments)]
async fn send_idempotent(
    connection: &PartitionConnection,
    settings: &WorkerSettings,
    metrics: &WorkerMetrics,
    idempotence: &Idempotence,
    id: BatchId,
    records: &[rskafka::record::Record],
    deadline: Instant,
    used: &mut Option<Arc<PartitionClient>>,
) -> Result<Stored, ProduceError> {
    let timed_out = || ProduceError::Timeout(settings.publish_timeout);
    let mut backoff = attempt_backoff();
    let mut retry = false;
    loop {
        if retry {
            tokio::time::timeout_at(deadline, idempotence.wait_for_head(id))
                .await
                .map_err(|_| timed_out())?;
        }
        let attempt = idempotence.lock().attempt(id);
        let (identity, base_sequence) = match attempt {
            Attempt::Send {
                identity,
                base_sequence,
                ..
            } => (identity, base_sequence),
            Attempt::NeedsIdentity => {
                match tokio::time::timeout_at(deadline, idempotence.init(&connection.client)).await
                {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) if retriable(&e) => {
                        tracing::debug!(partition = connection.partition, error = %e, "no producer id yet");
                        pause(&mut backoff, deadline)
                            .await
                            .map_err(|()| timed_out())?;
                        continue;
                    }
                    Ok(Err(e)) => {
                        return Err(ProduceError::Broker(Arc::from(format!(
                            "the broker refused an idempotent producer id ({e}); \
                             producer.idempotence = false produces without one"
                        ))));
                    }
                    Err(_) => return Err(timed_out()),
                }
            }
        };
        if retry {
            idempotence.lock().retrying(id);
        }
        retry = true;
        let attempt = send(
            connection,
            used,
            records.to_vec(),
            settings.compression,
            Some((identity, base_sequence)),
        );
        // A throttled connection holds the request first: that wait is not the broker
        // being slow, so the attempt's time starts after it.
        let attempt_deadline = deadline
            .min(connection.throttled_until().max(Instant::now()) + settings.request_timeout);
        let error = match tokio::time::timeout_at(attempt_deadline, attempt).await {
            Ok(Ok(offsets)) => return Ok(Stored::At(offsets)),
            Ok(Err(e)) => e,
            Err(_) if Instant::now() >= deadline => return Err(timed_out()),
            Err(_) => {
                // A hung attempt: a fresh connection sends the same sequence again.
                metrics.resend("request_timeout");
                if let Some(client) = used.take() {
                    connection.reset(&client).await;
                }
                continue;
            }
        };
        match idempotent_verdict(&error) {
            Verdict::Duplicate => {
                // An older broker's answer to a copy of an appended batch: the records
                // are in the log once; their offsets are not told.
                return Ok(Stored::OffsetsUnknown);
            }
            Verdict::SequenceRefused => {
                let refusal = idempotence.lock().refused(id);
                match refusal {
                    Refusal::Stored => return Ok(Stored::OffsetsUnknown),
                    Refusal::Renumbered => {
                        tracing::warn!(
                            topic = %settings.topic,
                            partition = connection.partition,
                            error = %error,
                            "the broker refused the head batch's sequence; \
                             bumping the producer epoch and renumbering"
                        );
                        metrics.resend("sequence_refused");
                        idempotence.changed.notify_waiters();
                    }
                    // An earlier batch is not appended yet: wait behind it.
                    Refusal::Behind => metrics.resend("out_of_order"),
                }
            }
            Verdict::Retry => {
                metrics.resend(retry_reason(&error));
                tracing::info!(
                    topic = %settings.topic,
                    partition = connection.partition,
                    records = records.len(),
                    base_sequence,
                    error = %error,
                    "produce not confirmed; sending the same batch again"
                );
                if let Some(client) = used.take() {
                    connection.reset(&client).await;
                }
                pause(&mut backoff, deadline)
                    .await
                    .map_err(|()| ProduceError::Broker(Arc::from(error.to_string())))?;
            }
            Verdict::Fatal => return Err(ProduceError::Broker(Arc::from(error.to_string()))),
        }
    }
}

/// Sleeps the next backoff pause, or fails if it would end past `deadline`.
async fn pause(backoff: &mut Backoff, deadline: Instant) -> Result<(), ()> {
    let pause = backoff.next_delay();
    if Instant::now() + pause >= deadline {
        return Err(());
    }
    tokio::time::sleep(pause).await;
    Ok(())
}

/// What an idempotent produce does after an error.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The batch is in the log already (an older broker's answer to a copy).
    Duplicate,
    /// The broker refused the batch's sequence or epoch: nothing was appended.
    SequenceRefused,
    /// The batch may or may not be appended: send it again, same sequence.
    Retry,
    /// Refused for good (too large, not authorised, ...).
    Fatal,
}

/// The protocol error under rskafka's retry wrapper, if there is one.
fn root_error(error: &rskafka::client::error::Error) -> &rskafka::client::error::Error {
    use rskafka::client::error::Error;
    match error {
        Error::RetryFailed(rskafka::BackoffError::DeadlineExceded { source, .. }) => source
            .downcast_ref::<Error>()
            .map(root_error)
            .unwrap_or(error),
        _ => error,
    }
}

/// Classifies an idempotent produce's error as Apache Kafka's Java producer does.
fn idempotent_verdict(error: &rskafka::client::error::Error) -> Verdict {
    use rskafka::client::error::{Error, ProtocolError};
    match root_error(error) {
        Error::ServerError { protocol_error, .. } => match protocol_error {
            ProtocolError::DuplicateSequenceNumber => Verdict::Duplicate,
            ProtocolError::OutOfOrderSequenceNumber
            | ProtocolError::UnknownProducerId
            | ProtocolError::InvalidProducerEpoch
            | ProtocolError::ProducerFenced => Verdict::SequenceRefused,
            ProtocolError::NotLeaderOrFollower
            | ProtocolError::LeaderNotAvailable
            | ProtocolError::UnknownTopicOrPartition
            | ProtocolError::NotEnoughReplicas
            | ProtocolError::NotEnoughReplicasAfterAppend
            | ProtocolError::RequestTimedOut
            | ProtocolError::NetworkException
            | ProtocolError::KafkaStorageError
            | ProtocolError::BrokerNotAvailable
            | ProtocolError::ReplicaNotAvailable
            | ProtocolError::CorruptMessage => Verdict::Retry,
            _ => Verdict::Fatal,
        },
        Error::Connection(_) | Error::Request(_) | Error::Timeout => Verdict::Retry,
        _ => Verdict::Fatal,
    }
}

/// Whether getting a producer id may succeed if tried again.
fn retriable(error: &rskafka::client::error::Error) -> bool {
    idempotent_verdict(error) == Verdict::Retry
        || matches!(
            root_error(error),
            rskafka::client::error::Error::ServerError {
                protocol_error: rskafka::client::error::ProtocolError::CoordinatorLoadInProgress
                    | rskafka::client::error::ProtocolError::CoordinatorNotAvailable
                    | rskafka::client::error::ProtocolError::NotCoordinator
                    | rskafka::client::error::ProtocolError::NotController,
                ..
            }
        )
}

/// The `reason` labels of `producer_resends_total`.
pub(super) const RESEND_REASONS: [&str; 6] = [
    "connection",
    "not_leader",
    "broker_error",
    "request_timeout",
    "out_of_order",
    "sequence_refused",
];

/// A short label for a resend's cause (one of [`RESEND_REASONS`]).
fn retry_reason(error: &rskafka::client::error::Error) -> &'static str {
    use rskafka::client::error::{Error, ProtocolError};
    match root_error(error) {
        Error::ServerError {
            protocol_error: ProtocolError::NotLeaderOrFollower,
            ..
        } => "not_leader",
        Error::ServerError { .. } => "broker_error",
        _ => "connection",
    }
}

/// Whether a failed produce request certainly appended nothing, so that sending the
/// same records again cannot store them twice:
/// - no connection to the leader was made (nothing was sent);
/// - rskafka itself found the partition has no known leader or is unknown, before
///   sending (a *virtual* server error);
/// - the broker refused the records before appending them: no leader yet, too few
///   in-sync replicas to accept.
///
/// Never such a case: a broken connection or a timeout after sending, and a broker's
/// NotLeaderOrFollower or UnknownTopicOrPartition answer. With `acks=all` a leader
/// demoted after appending answers NotLeaderOrFollower, and the follower that fetched
/// the batch keeps it as the new leader.
fn appended_nothing(error: &rskafka::client::error::Error) -> bool {
    use rskafka::client::error::{Error, ProtocolError};
    match error {
        Error::Connection(_) => true,
        Error::ServerError {
            protocol_error,
            is_virtual,
            ..
        } => match protocol_error {
            ProtocolError::LeaderNotAvailable | ProtocolError::NotEnoughReplicas => true,
            ProtocolError::NotLeaderOrFollower | ProtocolError::UnknownTopicOrPartition => {
                *is_virtual
            }
            _ => false,
        },
        // The producer's client does not retry: what rskafka would have retried comes
        // back wrapped, with the request's own error as the source.
        Error::RetryFailed(rskafka::BackoffError::DeadlineExceded { source, .. }) => {
            source.downcast_ref::<Error>().is_some_and(appended_nothing)
        }
        _ => false,
    }
}

/// Whether offsets follow each other (they do: one produce request appends one batch).
fn contiguous(offsets: &[i64]) -> bool {
    offsets.windows(2).all(|w| w[1] == w[0] + 1)
}

/// Gets a connected partition client, retrying with backoff (nothing is sent until
/// one is connected), then sends the batch once; `used` tells the caller which client
/// it ran on, even when the attempt is cancelled by the timeout.
async fn send(
    connection: &PartitionConnection,
    used: &mut Option<Arc<PartitionClient>>,
    records: Vec<rskafka::record::Record>,
    compression: Compression,
    idempotence: Option<(ProducerIdentity, i32)>,
) -> Result<Vec<i64>, rskafka::client::error::Error> {
    let mut backoff = attempt_backoff();
    let client = loop {
        match connection.get().await {
            Ok(client) => break client,
            Err(e) => {
                let pause = backoff.next_delay();
                tracing::debug!(partition = connection.partition, error = %e, retry_in = ?pause, "no connected partition client yet");
                tokio::time::sleep(pause).await;
                // rskafka keeps a cached leader that a failed client does not drop; an
                // unconstrained metadata request replaces the cache.
                let _ = connection.client.list_topics().await;
            }
        }
    };
    *used = Some(Arc::clone(&client));
    let answer = client
        .produce_with(records, compression, ProduceOptions { idempotence })
        .await?;
    if let Some(throttle) = answer.throttle {
        connection.throttled(throttle);
    }
    Ok(answer.offsets)
}

fn record_in_flight(settings: &WorkerSettings, metrics: &WorkerMetrics) {
    let held = settings.max_in_flight_bytes - settings.in_flight.available_permits();
    metrics.in_flight_bytes.set(held as f64);
}

/// The partition's rskafka client, created lazily and replaced after a failure.
struct PartitionConnection {
    client: Arc<Client>,
    topic: String,
    partition: i32,
    /// The client and when it was last handed out. A tokio mutex: creating a client
    /// awaits the broker, and concurrent produce tasks of this partition must wait for
    /// that one creation, not start their own.
    current: tokio::sync::Mutex<Option<(Arc<PartitionClient>, Instant)>>,
    /// Until when the broker throttles the connection (the last produce answer's
    /// `throttle_time_ms`): rskafka holds the next request that long.
    throttled_until: std::sync::Mutex<Option<Instant>>,
}

impl PartitionConnection {
    fn throttled(&self, throttle: Duration) {
        let until = Instant::now() + throttle;
        let mut throttled_until = self
            .throttled_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *throttled_until = Some(throttled_until.map_or(until, |current| current.max(until)));
    }

    /// When the connection may send again (now, if it is not throttled).
    fn throttled_until(&self) -> Instant {
        let throttled_until = self
            .throttled_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        throttled_until.unwrap_or_else(Instant::now)
    }

    /// The current client, or a new one, connected to the partition's leader; nothing
    /// of a batch has been sent when this fails.
    async fn get(&self) -> Result<Arc<PartitionClient>, rskafka::client::error::Error> {
        let mut current = self.current.lock().await;
        let now = Instant::now();
        if let Some((client, last_used)) = current.as_mut()
            && now.duration_since(*last_used) < IDLE_REFRESH
        {
            *last_used = now;
            return Ok(Arc::clone(client));
        }
        *current = None;
        let client = self
            .client
            .partition_client(
                self.topic.clone(),
                self.partition,
                UnknownTopicHandling::Retry,
            )
            .await?;
        // rskafka connects to the leader on a client's first request: make it this one,
        // which appends nothing, so a broker that cannot be reached fails here.
        client.get_offset(OffsetAt::Earliest).await?;
        let client = Arc::new(client);
        *current = Some((Arc::clone(&client), now));
        Ok(client)
    }

    /// Forgets `failed` if it is still the current client (another task may have
    /// replaced it already), so the next request starts from a fresh connection.
    async fn reset(&self, failed: &Arc<PartitionClient>) {
        let mut current = self.current.lock().await;
        if current
            .as_ref()
            .is_some_and(|(now, _)| Arc::ptr_eq(now, failed))
        {
            *current = None;
        }
    }
}

/// One partition's idempotent producer: its sequences, and who waits on them.
#[derive(Default)]
struct Idempotence {
    sequencer: std::sync::Mutex<Sequencer>,
    /// Notified whenever a batch is resolved or the batches are renumbered: retries
    /// waiting behind an earlier batch look again.
    changed: tokio::sync::Notify,
    /// One InitProducerId at a time.
    init: tokio::sync::Mutex<()>,
}

impl Idempotence {
    fn lock(&self) -> std::sync::MutexGuard<'_, Sequencer> {
        // The sequencer's methods do not panic midway; a poisoned lock holds a
        // consistent state.
        self.sequencer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until no earlier batch than `id` is unresolved.
    async fn wait_for_head(&self, id: BatchId) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.lock().is_head(id) {
                return;
            }
            changed.await;
        }
    }

    /// Gets a producer id (InitProducerId), unless another batch got one meanwhile.
    async fn init(&self, client: &Client) -> Result<(), rskafka::client::error::Error> {
        let _one_at_a_time = self.init.lock().await;
        if self.lock().identity().is_some() {
            return Ok(());
        }
        let identity = client.controller_client()?.init_producer_id().await?;
        tracing::info!(
            producer_id = identity.id,
            epoch = identity.epoch,
            "idempotent producer id assigned"
        );
        self.lock().set_identity(identity);
        self.changed.notify_waiters();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rskafka::BackoffError;
    use rskafka::client::error::{Error, ProtocolError, RequestContext, RequestError};

    /// A server error: answered by the broker, or (`is_virtual`) found by rskafka
    /// before it sent anything.
    fn server_error(protocol_error: ProtocolError, is_virtual: bool) -> Error {
        Error::ServerError {
            protocol_error,
            error_message: None,
            request: RequestContext::Partition("player.events.raw".into(), 0),
            response: None,
            is_virtual,
        }
    }

    fn refused(protocol_error: ProtocolError) -> Error {
        server_error(protocol_error, false)
    }

    /// As the producer's client returns what rskafka would have retried.
    fn wrapped(error: Error) -> Error {
        Error::RetryFailed(BackoffError::DeadlineExceded {
            deadline: Duration::ZERO,
            source: Box::new(error),
        })
    }

    /// `error` wrapped, rebuilt (rskafka's errors are not Clone).
    fn wrapped_copy(error: &Error) -> Error {
        let copy = match error {
            Error::ServerError {
                protocol_error,
                is_virtual,
                ..
            } => server_error(*protocol_error, *is_virtual),
            _ => Error::Connection(rskafka::ConnectionError::Metadata(RequestError::IO(
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            ))),
        };
        wrapped(copy)
    }

    fn broken_connection() -> Error {
        let io = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "broker went away");
        Error::Request(RequestError::Poisoned(Arc::new(RequestError::IO(io))))
    }

    fn settings(linger: Duration) -> WorkerSettings {
        let in_flight = Arc::new(Semaphore::new(1 << 20));
        WorkerSettings {
            topic: "player.events.raw".to_owned(),
            linger,
            max_batch_records: 3,
            max_batch_bytes: 1 << 20,
            max_in_flight_requests: 4,
            publish_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
            idempotence: true,
            compression: Compression::NoCompression,
            in_flight,
            max_in_flight_bytes: 1 << 20,
        }
    }

    fn pending(settings: &WorkerSettings, records: usize) -> Pending {
        let record = ProducerRecord {
            key: b"p".to_vec(),
            value: b"{}".to_vec(),
            headers: Default::default(),
            timestamp: chrono::Utc::now(),
        };
        let permit = Arc::clone(&settings.in_flight)
            .try_acquire_many_owned(100)
            .expect("permits");
        Pending::new(vec![record; records], permit, oneshot::channel().0)
    }

    fn now(in_flight: usize, lingered: bool, flushing: bool) -> Dispatch {
        Dispatch {
            in_flight,
            lingered,
            flushing,
        }
    }

    #[test]
    fn a_batch_goes_at_once_when_nothing_is_in_flight_else_waits_behind() {
        let settings = settings(Duration::from_secs(3600));
        let mut batch = Batch::default();
        assert!(!batch.ready(&settings, &now(0, true, true)), "empty");
        let (lingered, until) = batch.start(pending(&settings, 1), &settings);
        assert!(
            !lingered && until.is_some(),
            "a linger to wait behind requests"
        );
        // Nothing in flight: at once, whatever the linger.
        assert!(batch.ready(&settings, &now(0, false, false)));
        // Behind an in-flight request: it fills, until it waited the linger, must make
        // room, or is full.
        assert!(!batch.ready(&settings, &now(1, false, false)));
        assert!(batch.ready(&settings, &now(1, true, false)));
        assert!(batch.ready(&settings, &now(4, false, true)));
        batch.push(pending(&settings, 2));
        assert!(batch.ready(&settings, &now(1, false, false)), "full");
    }

    #[test]
    fn without_a_linger_a_batch_goes_whenever_a_slot_is_free() {
        let settings = settings(Duration::ZERO);
        let mut batch = Batch::default();
        assert_eq!(batch.start(pending(&settings, 1), &settings), (true, None));
        assert!(batch.ready(&settings, &now(3, true, false)));
    }

    #[test]
    fn refusals_and_unmade_connections_are_sent_again() {
        let before_sending = [
            refused(ProtocolError::LeaderNotAvailable),
            refused(ProtocolError::NotEnoughReplicas),
            server_error(ProtocolError::NotLeaderOrFollower, true),
            server_error(ProtocolError::UnknownTopicOrPartition, true),
            Error::Connection(rskafka::ConnectionError::Metadata(RequestError::IO(
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            ))),
        ];
        for error in before_sending {
            assert!(appended_nothing(&wrapped_copy(&error)), "wrapped {error}");
            assert!(appended_nothing(&error), "{error}");
        }
    }

    #[test]
    fn what_the_broker_may_have_appended_is_never_sent_again() {
        assert!(!appended_nothing(&broken_connection()));
        assert!(!appended_nothing(&wrapped(broken_connection())));
        assert!(!appended_nothing(&Error::Timeout));
        // Appended, not yet replicated enough; and a timeout the broker reports.
        assert!(!appended_nothing(&refused(
            ProtocolError::NotEnoughReplicasAfterAppend
        )));
        assert!(!appended_nothing(&refused(ProtocolError::RequestTimedOut)));
        assert!(!appended_nothing(&refused(ProtocolError::MessageTooLarge)));
        // A leader demoted after appending (acks=all) answers NotLeaderOrFollower.
        assert!(!appended_nothing(&refused(
            ProtocolError::NotLeaderOrFollower
        )));
        assert!(!appended_nothing(&wrapped(refused(
            ProtocolError::NotLeaderOrFollower
        ))));
        assert!(!appended_nothing(&refused(
            ProtocolError::UnknownTopicOrPartition
        )));
    }
}
