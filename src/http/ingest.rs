//! Event ingestion: `POST /api/v1/events` and `POST /api/v1/events/batch`.
//!
//! ```text
//! request ─► mode ingests? ─► API key, rate limit ─► Content-Type (JSON, UTF-8),
//!            Content-Encoding ─► body (≤ limit inflated, ≤ body_read_timeout, budget)
//!         ─► simd-json + CONTRACT rules (event.rs) ─► event_id, ingested_at
//!         ─► KafkaProducer (acks = all) ─► 200 {"status":"success","event_id":…}
//! ```
//!
//! A 2xx is sent only after the broker acknowledged the write, and nothing that fails
//! validation reaches the producer. The whole request, body read included, is bounded
//! by `http.request_timeout` (503); the body read alone by `http.body_read_timeout` (408).
//!
//! Metrics: `events_received_total` counts events in every body that was read (a body
//! that is not even JSON counts as one), `events_published_total` those acknowledged by
//! the broker and `events_failed_total{reason}` those refused (a validation rule, a
//! malformed or oversized batch) or not acknowledged (overloaded, broker timeout or
//! error; a request that timed out counts once, as `request_timeout`). Requests refused
//! before their body is read (401, 413, 415, 429, and 408 or 503 for a body too slow
//! or past the body budget) show in
//! `http_request_duration_seconds` by status, not here.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::Stream;
use metrics::Counter;
use tracing::Instrument;
use uuid::Uuid;
use warp::Filter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use super::HttpState;
use super::body::{self, BodyBudget, BodyError, BodyLimits, Encoding, RequestHead};
use super::guard::{Guard, Refusal, retry_after_seconds};

use super::rejection::error_reply;
use crate::event::{self, BatchError, Event, EventError};
use crate::kafka::{KafkaProducer, ProduceError, ProducerRecord};

/// The ingest routes. In consume-only mode they exist and answer 503, saying so.
pub fn routes(
    state: HttpState,
    guard: Arc<Guard>,
    client: warp::filters::BoxedFilter<(Option<std::net::IpAddr>,)>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let ingest = Arc::new(Ingest::new(&state, guard));
    let single_ingest = Arc::clone(&ingest);
    let single = warp::path!("api" / "v1" / "events")
        .and(warp::post())
        .and(body::head(client.clone()))
        .and(warp::body::stream())
        .then(move |head, body| {
            let ingest = Arc::clone(&single_ingest);
            let span = request_span(SINGLE_ROUTE, &head);
            async move { traced(&span, ingest.bounded(ingest.single(head, body))).await }
        });
    let batch = warp::path!("api" / "v1" / "events" / "batch")
        .and(warp::post())
        .and(body::head(client))
        .and(warp::body::stream())
        .then(move |head, body| {
            let ingest = Arc::clone(&ingest);
            let span = request_span(BATCH_ROUTE, &head);
            async move { traced(&span, ingest.bounded(ingest.batch(head, body))).await }
        });
    single.or(batch).unify()
}

/// Route templates, as the request spans name them.
const SINGLE_ROUTE: &str = "/api/v1/events";
const BATCH_ROUTE: &str = "/api/v1/events/batch";

/// The server span of one ingest request, in the caller's trace when the request
/// carries one; a disabled span (no cost) when traces are off.
fn request_span(route: &'static str, head: &body::RequestHead) -> tracing::Span {
    if !crate::telemetry::traces::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "http.request",
        otel.name = format!("POST {route}"),
        otel.kind = "server",
        http.request.method = "POST",
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    let caller = &head.trace_context;
    crate::telemetry::traces::continue_http_caller(
        &span,
        caller.traceparent.as_deref(),
        caller.tracestate.as_deref(),
    );
    span
}

/// Runs `handler` inside `span` and records the response status on it.
async fn traced(span: &tracing::Span, handler: impl Future<Output = Response>) -> Response {
    let response = handler.instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// What the ingest handlers share.
struct Ingest {
    /// `None` in consume-only mode.
    producer: Option<KafkaProducer>,
    guard: Arc<Guard>,
    body: BodyLimits,
    batch_limit: usize,
    request_timeout: Duration,
    /// `Retry-After` of a 503, seconds.
    retry_after: u64,
    /// Handles of the hot counters, registered once instead of looked up per request.
    received: Counter,
    published: Counter,
}

/// An early answer: a handler step that cannot go on returns the response to send
/// (boxed: a response is large and this is the uncommon path).
type Answer<T> = Result<T, Box<Response>>;

impl Ingest {
    fn new(state: &HttpState, guard: Arc<Guard>) -> Self {
        let http = &state.config.http;
        Self {
            producer: state.producer.clone(),
            guard,
            body: BodyLimits {
                limit: http.body_limit_bytes,
                timeout: http.body_read_timeout,
                budget: BodyBudget::new(http.body_budget_bytes),
            },
            batch_limit: http.batch_limit,
            request_timeout: http.request_timeout,
            retry_after: retry_after_seconds(http.retry_after),
            received: metrics::counter!("events_received_total"),
            published: metrics::counter!("events_published_total"),
        }
    }

    /// Runs a handler within `http.request_timeout`.
    async fn bounded(&self, handler: impl Future<Output = Answer<Response>>) -> Response {
        match tokio::time::timeout(self.request_timeout, handler).await {
            Ok(Ok(response)) => response,
            Ok(Err(response)) => *response,
            Err(_) => {
                failed("request_timeout", 1);
                self.unavailable(&format!(
                    "the request was not completed within {:?}; it may be retried",
                    self.request_timeout
                ))
            }
        }
    }

    async fn single<S, B>(&self, head: RequestHead, body: S) -> Answer<Response>
    where
        S: Stream<Item = Result<B, warp::Error>>,
        B: bytes::Buf,
    {
        let (producer, encoding) = self.admit(&head)?;
        let mut body = self.read(body, &head, encoding).await?;
        self.received.increment(1);
        let submission =
            event::parse_submission(&mut body.bytes).map_err(|e| Box::new(self.invalid(&e)))?;
        drop(body);
        let event = submission.accept(Utc::now());
        match producer.publish(&event).await {
            Ok(_) => {
                self.published.increment(1);
                Ok(success(event.event_id))
            }
            Err(e) => {
                failed(e.kind(), 1);
                Err(Box::new(self.produce_error(&e)))
            }
        }
    }

    async fn batch<S, B>(&self, head: RequestHead, body: S) -> Answer<Response>
    where
        S: Stream<Item = Result<B, warp::Error>>,
        B: bytes::Buf,
    {
        let (producer, encoding) = self.admit(&head)?;
        let mut body = self.read(body, &head, encoding).await?;
        let Validated {
            mut results,
            events,
            positions,
        } = self.validate_batch(&mut body.bytes)?;
        drop(body);
        let records = events.iter().map(ProducerRecord::from_event).collect();
        let outcomes = producer.send_all(records).await;
        let server_errors = record_outcomes(&mut results, &events, &positions, outcomes);
        let published = events.len() - server_errors;
        self.published.increment(published as u64);
        Ok(self.batch_reply(&results, server_errors, published))
    }

    /// Parses the batch body and validates each item; the valid ones become events.
    fn validate_batch(&self, bytes: &mut [u8]) -> Answer<Validated> {
        let items = match event::parse_batch(bytes, self.batch_limit) {
            Ok(items) => items,
            Err(BatchError::Invalid(e)) => {
                self.received.increment(1);
                return Err(Box::new(self.invalid(&e)));
            }
            Err(e @ BatchError::NotAnArray(_)) => {
                self.received.increment(1);
                failed("not_an_array", 1);
                return Err(Box::new(bad_request(&e.to_string())));
            }
            Err(e @ BatchError::TooMany { got, .. }) => {
                self.received.increment(got as u64);
                failed("batch_too_large", got as u64);
                return Err(Box::new(bad_request(&e.to_string())));
            }
        };
        self.received.increment(items.len() as u64);
        let now = Utc::now();
        let mut results = Vec::with_capacity(items.len());
        let mut events = Vec::with_capacity(items.len());
        let mut positions = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            match item {
                Ok(submission) => {
                    let event = submission.accept(now);
                    results.push(ItemResult::Pending);
                    positions.push(index);
                    events.push(event);
                }
                Err(e) => {
                    failed(e.kind(), 1);
                    results.push(ItemResult::Failed(format!("item {index}: {e}")));
                }
            }
        }
        Ok(Validated {
            results,
            events,
            positions,
        })
    }

    /// The checks that need no body: mode, key, rate, media type, charset, encoding.
    fn admit(&self, head: &RequestHead) -> Answer<(&KafkaProducer, Encoding)> {
        let Some(producer) = &self.producer else {
            return Err(Box::new(error_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "this gamestream instance runs in consume mode and does not accept events; \
                 send them to an instance with mode `all` or `ingest`",
                None,
            )));
        };
        if let Err(refusal) = self.guard.check(head.authorization.as_deref(), head.client) {
            return Err(Box::new(refused(&refusal)));
        }
        let unsupported = |message: &str| {
            Box::new(error_reply(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                message,
                None,
            ))
        };
        match head.content_type {
            Some(media) if media.is_json && media.utf8 => {}
            Some(media) if media.is_json => {
                return Err(unsupported(
                    "the body must be UTF-8: send Content-Type: application/json with no charset \
                     or charset=utf-8",
                ));
            }
            _ => return Err(unsupported("Content-Type must be application/json")),
        }
        let encoding = Encoding::of(head.content_encoding.as_deref())
            .map_err(|message| unsupported(&message))?;
        Ok((producer, encoding))
    }

    async fn read<S, B>(
        &self,
        body: S,
        head: &RequestHead,
        encoding: Encoding,
    ) -> Answer<body::Body>
    where
        S: Stream<Item = Result<B, warp::Error>>,
        B: bytes::Buf,
    {
        body::read(body, head, encoding, &self.body)
            .await
            .map_err(|e| {
                let message = e.to_string();
                Box::new(match e {
                    BodyError::TooLarge { .. } | BodyError::InflatedTooLarge { .. } => {
                        error_reply(StatusCode::PAYLOAD_TOO_LARGE, &message, None)
                    }
                    BodyError::Read(_) | BodyError::Corrupt(..) => bad_request(&message),
                    BodyError::Timeout(_) => {
                        let mut response = error_reply(StatusCode::REQUEST_TIMEOUT, &message, None);
                        // The rest of the body is not read: the connection cannot be reused.
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        response
                    }
                    BodyError::Budget => self.unavailable(&message),
                })
            })
    }

    fn invalid(&self, error: &EventError) -> Response {
        failed(error.kind(), 1);
        bad_request(&error.to_string())
    }

    fn produce_error(&self, error: &ProduceError) -> Response {
        match error {
            ProduceError::TooLarge { .. } => {
                error_reply(StatusCode::PAYLOAD_TOO_LARGE, &error.to_string(), None)
            }
            ProduceError::Overloaded { .. }
            | ProduceError::Timeout(_)
            | ProduceError::Broker(_)
            | ProduceError::Closed => self.unavailable(&error.to_string()),
        }
    }

    fn unavailable(&self, message: &str) -> Response {
        error_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            message,
            Some(self.retry_after),
        )
    }

    /// 200 with one result per item; 503 (same body) when valid items existed and none
    /// of them could be published. `Retry-After` whenever an item failed server-side.
    fn batch_reply(
        &self,
        results: &[ItemResult],
        server_errors: usize,
        published: usize,
    ) -> Response {
        let rejected = results.len() - published;
        let status = if server_errors > 0 && published == 0 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let overall = match (published, rejected) {
            (_, 0) => "success",
            (0, _) => "error",
            _ => "partial",
        };
        let mut out = Vec::with_capacity(64 + results.len() * 64);
        out.extend_from_slice(b"{\"status\":\"");
        out.extend_from_slice(overall.as_bytes());
        out.extend_from_slice(
            format!("\",\"accepted\":{published},\"rejected\":{rejected},\"results\":[").as_bytes(),
        );
        for (i, result) in results.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            result.write_json(&mut out);
        }
        out.extend_from_slice(b"]}");
        let mut response = json_response(status, out);
        if server_errors > 0
            && let Ok(value) = HeaderValue::from_str(&self.retry_after.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// Fills in the result of each published item; returns how many failed at the broker
/// (counted in `events_failed_total` by reason).
fn record_outcomes(
    results: &mut [ItemResult],
    events: &[Event],
    positions: &[usize],
    outcomes: Vec<Result<i64, ProduceError>>,
) -> usize {
    let mut failures: Vec<(&'static str, u64)> = Vec::new();
    for ((event, &position), outcome) in events.iter().zip(positions).zip(outcomes) {
        results[position] = match outcome {
            Ok(_) => ItemResult::Published(event.event_id),
            Err(e) => {
                match failures.iter_mut().find(|(kind, _)| *kind == e.kind()) {
                    Some((_, n)) => *n += 1,
                    None => failures.push((e.kind(), 1)),
                }
                ItemResult::Failed(e.to_string())
            }
        };
    }
    let mut total = 0;
    for (kind, n) in failures {
        failed(kind, n);
        total += n as usize;
    }
    total
}

/// A batch body after validation.
struct Validated {
    /// One per item, in order; the valid ones still `Pending`.
    results: Vec<ItemResult>,
    /// The valid items, accepted.
    events: Vec<Event>,
    /// For each event, its index in `results`.
    positions: Vec<usize>,
}

/// The outcome of one batch item.
enum ItemResult {
    /// Valid, handed to the producer, not yet acknowledged.
    Pending,
    Published(Uuid),
    Failed(String),
}

impl ItemResult {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            ItemResult::Published(id) => push_success(out, *id),
            ItemResult::Pending => {
                // Every pending item is resolved before the reply is built.
                out.extend_from_slice(b"{\"status\":\"error\",\"error\":\"not published\"}");
            }
            ItemResult::Failed(message) => {
                out.extend_from_slice(b"{\"status\":\"error\",\"error\":");
                // A str always serializes into a Vec.
                let _ = serde_json::to_writer(&mut *out, message);
                out.push(b'}');
            }
        }
    }
}

fn push_success(out: &mut Vec<u8>, id: Uuid) {
    out.extend_from_slice(b"{\"status\":\"success\",\"event_id\":\"");
    out.extend_from_slice(
        id.hyphenated()
            .encode_lower(&mut Uuid::encode_buffer())
            .as_bytes(),
    );
    out.extend_from_slice(b"\"}");
}

/// `200 {"status":"success","event_id":"…"}`, built without a serializer.
fn success(id: Uuid) -> Response {
    let mut out = Vec::with_capacity(80);
    push_success(&mut out, id);
    json_response(StatusCode::OK, out)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn bad_request(message: &str) -> Response {
    error_reply(StatusCode::BAD_REQUEST, message, None)
}

fn refused(refusal: &Refusal) -> Response {
    refusal.reply()
}

fn failed(reason: &'static str, events: u64) {
    metrics::counter!("events_failed_total", "reason" => reason).increment(events);
}
