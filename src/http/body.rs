//! The request head of the ingest endpoints and reading their JSON bodies with limits.
//!
//! ```text
//! Content-Length ≤ body_limit_bytes? ─► reserve it in the body budget ─► read chunks
//!   (≤ limit, ≤ body_read_timeout, budget grown as a chunked body comes)
//!   ─► Content-Encoding gzip/deflate: inflate, ≤ limit, budget grown ─► bytes
//! ```
//!
//! The body is read into one `Vec<u8>` because simd-json parses in place. The limit is
//! checked against `Content-Length` before reading anything, while reading (so a
//! chunked body cannot pass it either), and on the inflated size of a compressed body
//! (a zip bomb is a 413). Every buffered body holds a [`Reservation`] of the server's
//! [`BodyBudget`] (`http.body_budget_bytes`) until it is dropped, so the memory of
//! bodies in flight has a bound whatever the number of connections.

use std::io::Read;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Buf;
use futures::{Stream, StreamExt};
use warp::Filter;
use warp::filters::BoxedFilter;

/// What the ingest handlers need from the request headers.
#[derive(Debug)]
pub struct RequestHead {
    /// `None` when there is no `Content-Type` header.
    pub content_type: Option<MediaType>,
    pub content_length: Option<u64>,
    /// The `Content-Encoding` header, as sent.
    pub content_encoding: Option<String>,
    pub authorization: Option<String>,
    /// The client's address (the peer, or what a trusted proxy forwarded).
    pub client: Option<IpAddr>,
    /// The caller's W3C trace context (`traceparent`, `tracestate`).
    pub trace_context: TraceContext,
}

/// The W3C trace-context headers of a request, when present and visible ASCII.
#[derive(Debug, Default)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// Extracts the [`RequestHead`]. Unparsable header values are rejected as 400 by warp,
/// except the trace-context ones: a bad one is ignored (W3C Trace Context), never a
/// reason to refuse events.
pub fn head(
    client: BoxedFilter<(Option<IpAddr>,)>,
) -> impl Filter<Extract = (RequestHead,), Error = warp::Rejection> + Clone {
    warp::header::optional::<MediaType>("content-type")
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::header::optional::<String>("content-encoding"))
        .and(warp::header::optional::<String>("authorization"))
        .and(client)
        .and(lenient("traceparent"))
        .and(lenient("tracestate"))
        .map(
            |content_type,
             content_length,
             content_encoding,
             authorization,
             client,
             traceparent,
             tracestate| {
                RequestHead {
                    content_type,
                    content_length,
                    content_encoding,
                    authorization,
                    client,
                    trace_context: TraceContext {
                        traceparent,
                        tracestate,
                    },
                }
            },
        )
}

/// An optional header whose unreadable value counts as absent.
fn lenient(
    name: &'static str,
) -> impl Filter<Extract = (Option<String>,), Error = std::convert::Infallible> + Copy {
    warp::header::optional::<String>(name)
        .or(warp::any().map(|| None))
        .unify()
}

/// Whether a `Content-Type` names JSON, and whether its charset (if any) is UTF-8.
/// Parsing never fails, so the header is checked without copying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaType {
    pub is_json: bool,
    /// No `charset` parameter, or `utf-8` / `utf8` (any case, quoted or not).
    pub utf8: bool,
}

impl FromStr for MediaType {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let mut parts = value.split(';');
        let essence = parts.next().unwrap_or_default().trim();
        let bytes = essence.as_bytes();
        let (prefix, suffix) = (b"application/".as_slice(), b"+json".as_slice());
        let is_json = bytes.eq_ignore_ascii_case(b"application/json")
            || (bytes.len() > prefix.len() + suffix.len()
                && bytes[..prefix.len()].eq_ignore_ascii_case(prefix)
                && bytes[bytes.len() - suffix.len()..].eq_ignore_ascii_case(suffix));
        let utf8 = parts
            .filter_map(|param| param.split_once('='))
            .filter(|(name, _)| name.trim().eq_ignore_ascii_case("charset"))
            .all(|(_, charset)| {
                let charset = charset.trim().trim_matches('"');
                charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")
            });
        Ok(Self { is_json, utf8 })
    }
}

/// The `Content-Encoding` of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    /// zlib (RFC 9110's "deflate"), or raw deflate as some clients send it.
    Deflate,
}

impl Encoding {
    /// The encoding named by a `Content-Encoding` header; the error says what is wrong.
    pub fn of(header: Option<&str>) -> Result<Self, String> {
        let value = header.unwrap_or_default().trim();
        if value.is_empty() || value.eq_ignore_ascii_case("identity") {
            Ok(Encoding::Identity)
        } else if value.eq_ignore_ascii_case("gzip") || value.eq_ignore_ascii_case("x-gzip") {
            Ok(Encoding::Gzip)
        } else if value.eq_ignore_ascii_case("deflate") {
            Ok(Encoding::Deflate)
        } else {
            Err(format!(
                "Content-Encoding {value:?} is not supported: send the body as is, or with \
                 gzip or deflate"
            ))
        }
    }
}

/// The bytes of request bodies that may be buffered at once (`http.body_budget_bytes`).
#[derive(Debug, Clone)]
pub struct BodyBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    limit: u64,
    used: AtomicU64,
}

impl BodyBudget {
    pub fn new(limit: u64) -> Self {
        Self {
            inner: Arc::new(BudgetInner {
                limit,
                used: AtomicU64::new(0),
            }),
        }
    }

    /// An empty reservation, grown as bytes are buffered.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            budget: Arc::clone(&self.inner),
            bytes: 0,
        }
    }

    /// Bytes reserved now.
    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.inner.used.load(Ordering::Relaxed)
    }
}

/// Bytes of the budget held by one body; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BudgetInner>,
    bytes: u64,
}

impl Reservation {
    /// Holds `total` bytes (more or fewer than now); false if the budget has no room.
    #[must_use]
    pub fn resize(&mut self, total: u64) -> bool {
        if total <= self.bytes {
            self.budget
                .used
                .fetch_sub(self.bytes - total, Ordering::Relaxed);
            self.bytes = total;
            return true;
        }
        let more = total - self.bytes;
        let limit = self.budget.limit;
        let taken = self
            .budget
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(more).filter(|&after| after <= limit)
            });
        if taken.is_ok() {
            self.bytes = total;
        }
        taken.is_ok()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A body read whole, with its share of the budget.
#[derive(Debug)]
pub struct Body {
    pub bytes: Vec<u8>,
    _reservation: Reservation,
}

/// The limits of reading one body.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    pub limit: u64,
    pub timeout: Duration,
    pub budget: BodyBudget,
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the request body inflates to more than the limit of {limit} bytes")]
    InflatedTooLarge { limit: u64 },
    #[error("the request body could not be read: {0}")]
    Read(String),
    #[error("the request body did not arrive within {0:?} (http.body_read_timeout)")]
    Timeout(Duration),
    #[error(
        "the server is holding as many request bodies as it may (http.body_budget_bytes); \
         retry shortly"
    )]
    Budget,
    #[error("the {0} request body could not be decoded: {1}")]
    Corrupt(&'static str, String),
}

/// Reads the whole body, refusing it as soon as it passes `limits.limit` bytes (before
/// or after inflating), takes longer than `limits.timeout`, or does not fit the budget.
pub async fn read<S, B>(
    body: S,
    head: &RequestHead,
    encoding: Encoding,
    limits: &BodyLimits,
) -> Result<Body, BodyError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let limit = limits.limit;
    if head.content_length.is_some_and(|length| length > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut reservation = limits.budget.reservation();
    // Content-Length (already within the limit) sizes the buffer exactly; a chunked
    // body grows it as it comes.
    let capacity = head.content_length.unwrap_or_default();
    if !reservation.resize(capacity) {
        return Err(budget_exhausted());
    }
    let raw = tokio::time::timeout(
        limits.timeout,
        collect(body, capacity, limit, &mut reservation),
    )
    .await
    .map_err(|_| BodyError::Timeout(limits.timeout))??;
    let bytes = match encoding {
        Encoding::Identity => raw,
        Encoding::Gzip => inflate(
            flate2::read::MultiGzDecoder::new(raw.as_slice()),
            "gzip",
            raw.len(),
            limit,
            &mut reservation,
        )?,
        Encoding::Deflate if is_zlib(&raw) => inflate(
            flate2::read::ZlibDecoder::new(raw.as_slice()),
            "deflate",
            raw.len(),
            limit,
            &mut reservation,
        )?,
        Encoding::Deflate => inflate(
            flate2::read::DeflateDecoder::new(raw.as_slice()),
            "deflate",
            raw.len(),
            limit,
            &mut reservation,
        )?,
    };
    // The compressed copy (if any) is gone: hold what is kept.
    let _ = reservation.resize(bytes.capacity() as u64);
    Ok(Body {
        bytes,
        _reservation: reservation,
    })
}

fn budget_exhausted() -> BodyError {
    metrics::counter!("http_body_budget_refusals_total").increment(1);
    BodyError::Budget
}

async fn collect<S, B>(
    body: S,
    capacity: u64,
    limit: u64,
    reservation: &mut Reservation,
) -> Result<Vec<u8>, BodyError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut out = Vec::with_capacity(usize::try_from(capacity).unwrap_or_default());
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        let needed = (out.len() + chunk.remaining()) as u64;
        if needed > limit {
            return Err(BodyError::TooLarge { limit });
        }
        if needed > out.capacity() as u64 {
            // Grow as Vec would (doubling), within the limit, and reserve it first.
            let grown = needed.max(out.capacity() as u64 * 2).min(limit);
            if !reservation.resize(grown) {
                return Err(budget_exhausted());
            }
            out.reserve_exact(usize::try_from(grown).unwrap_or(usize::MAX) - out.len());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(out)
}

/// Whether `bytes` start with a zlib header (RFC 1950: deflate method, check bits).
fn is_zlib(bytes: &[u8]) -> bool {
    match bytes {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

/// Inflates up to `limit` bytes, growing the reservation (which holds the `held`
/// compressed bytes) as the output grows.
fn inflate(
    mut decoder: impl Read,
    name: &'static str,
    held: usize,
    limit: u64,
    reservation: &mut Reservation,
) -> Result<Vec<u8>, BodyError> {
    const STEP: usize = 64 * 1024;
    let mut out: Vec<u8> = Vec::new();
    loop {
        if out.len() as u64 > limit {
            return Err(BodyError::InflatedTooLarge { limit });
        }
        if out.capacity() - out.len() < STEP {
            let grown = (out.capacity() * 2).max(STEP);
            // One byte past the limit is enough to know it is passed.
            let grown = grown.min(
                usize::try_from(limit)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1),
            );
            let grown = grown.max(out.len() + 1);
            if !reservation.resize((held + grown) as u64) {
                return Err(budget_exhausted());
            }
            out.reserve_exact(grown - out.len());
        }
        let start = out.len();
        let room = out.capacity() - start;
        out.resize(start + room, 0);
        match decoder.read(&mut out[start..]) {
            Ok(0) => {
                out.truncate(start);
                return Ok(out);
            }
            Ok(n) => out.truncate(start + n),
            Err(e) => return Err(BodyError::Corrupt(name, e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(value: &str) -> bool {
        value
            .parse::<MediaType>()
            .map(|m| m.is_json)
            .unwrap_or(false)
    }

    #[test]
    fn json_media_types() {
        assert!(media("application/json"));
        assert!(media("Application/JSON; charset=utf-8"));
        assert!(media("application/vnd.api+json"));
        assert!(!media("text/plain"));
        assert!(!media("application/x-www-form-urlencoded"));
        assert!(!media("application/jsonx"));
        assert!(!media("+json"));
    }

    fn head(length: Option<u64>) -> RequestHead {
        RequestHead {
            content_type: None,
            content_length: length,
            content_encoding: None,
            authorization: None,
            client: None,
            trace_context: Default::default(),
        }
    }

    fn limits(limit: u64, budget: u64) -> BodyLimits {
        BodyLimits {
            limit,
            timeout: Duration::from_secs(5),
            budget: BodyBudget::new(budget),
        }
    }

    async fn read_plain(
        chunks: Vec<&'static [u8]>,
        head: &RequestHead,
        limit: u64,
    ) -> Result<Vec<u8>, BodyError> {
        let stream = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, warp::Error>(bytes::Bytes::from_static(c))),
        );
        read(stream, head, Encoding::Identity, &limits(limit, 1 << 20))
            .await
            .map(|b| b.bytes)
    }

    #[tokio::test]
    async fn limit_applies_with_and_without_content_length() {
        let chunks = || vec![b"12345".as_slice(), b"6789".as_slice()];
        assert_eq!(
            read_plain(chunks(), &head(Some(9)), 9).await.expect("fits"),
            b"123456789"
        );
        assert!(matches!(
            read_plain(chunks(), &head(Some(9)), 8).await,
            Err(BodyError::TooLarge { limit: 8 })
        ));
        assert!(matches!(
            read_plain(chunks(), &head(None), 8).await,
            Err(BodyError::TooLarge { limit: 8 })
        ));
        assert_eq!(
            read_plain(chunks(), &head(None), 9)
                .await
                .expect("fits")
                .len(),
            9
        );
    }

    #[test]
    fn charsets_and_encodings() {
        let utf8 = |v: &str| v.parse::<MediaType>().map(|m| m.utf8).unwrap_or(false);
        assert!(utf8("application/json"));
        assert!(utf8("application/json; charset=UTF-8"));
        assert!(utf8("application/json;charset=\"utf8\""));
        assert!(!utf8("application/json; charset=latin1"));
        assert!(!utf8("application/json; charset=utf-16"));
        assert_eq!(Encoding::of(None), Ok(Encoding::Identity));
        assert_eq!(Encoding::of(Some("GZIP")), Ok(Encoding::Gzip));
        assert_eq!(Encoding::of(Some("deflate")), Ok(Encoding::Deflate));
        assert!(
            Encoding::of(Some("br"))
                .expect_err("unsupported")
                .contains("\"br\"")
        );
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).expect("compress");
        encoder.finish().expect("compress")
    }

    #[tokio::test]
    async fn compressed_bodies_are_inflated_within_the_limit_and_budget() {
        let body = |bytes: Vec<u8>| {
            futures::stream::iter(vec![Ok::<_, warp::Error>(bytes::Bytes::from(bytes))])
        };
        let plain = br#"{"a":1}"#.repeat(100);
        let limits = limits(1 << 20, 4 << 20);
        let out = read(body(gzip(&plain)), &head(None), Encoding::Gzip, &limits)
            .await
            .expect("inflates");
        assert_eq!(out.bytes, plain);
        assert!(limits.budget.used() > 0, "held while the body lives");
        drop(out);
        assert_eq!(limits.budget.used(), 0, "given back");
        // 8 MiB of zeros compress to ~8 KB: refused once past the 1 MiB limit.
        let bomb = gzip(&vec![0u8; 8 << 20]);
        assert!(bomb.len() < 64 * 1024);
        assert!(matches!(
            read(body(bomb), &head(None), Encoding::Gzip, &limits).await,
            Err(BodyError::InflatedTooLarge { .. })
        ));
        assert_eq!(limits.budget.used(), 0);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut zlib, &plain).expect("compress");
        let out = read(
            body(zlib.finish().expect("compress")),
            &head(None),
            Encoding::Deflate,
            &limits,
        )
        .await
        .expect("inflates");
        assert_eq!(out.bytes, plain);
        assert!(matches!(
            read(
                body(b"not gzip".to_vec()),
                &head(None),
                Encoding::Gzip,
                &limits
            )
            .await,
            Err(BodyError::Corrupt("gzip", _))
        ));
    }

    #[tokio::test]
    async fn the_budget_bounds_bodies_in_flight() {
        let limits = limits(100, 150);
        let body = || {
            futures::stream::iter(vec![Ok::<_, warp::Error>(bytes::Bytes::from(vec![
                b'x';
                100
            ]))])
        };
        let first = read(body(), &head(Some(100)), Encoding::Identity, &limits)
            .await
            .expect("fits the budget");
        assert!(matches!(
            read(body(), &head(Some(100)), Encoding::Identity, &limits).await,
            Err(BodyError::Budget)
        ));
        assert!(matches!(
            read(body(), &head(None), Encoding::Identity, &limits).await,
            Err(BodyError::Budget)
        ));
        drop(first);
        read(body(), &head(None), Encoding::Identity, &limits)
            .await
            .expect("room again");
    }

    #[tokio::test]
    async fn a_slow_body_times_out() {
        let mut limits = limits(100, 1000);
        limits.timeout = Duration::from_millis(50);
        let never = futures::stream::pending::<Result<bytes::Bytes, warp::Error>>();
        assert!(matches!(
            read(never, &head(Some(10)), Encoding::Identity, &limits).await,
            Err(BodyError::Timeout(_))
        ));
        assert_eq!(limits.budget.used(), 0);
    }
}
