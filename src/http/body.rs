//! The request head of the ingest endpoints and reading their JSON bodies with a limit.
//!
//! The body is read into one `Vec<u8>` because simd-json parses in place. The limit is
//! checked twice: against `Content-Length` before reading anything, and while reading,
//! so a chunked body cannot pass it either.

use std::net::SocketAddr;
use std::str::FromStr;

use bytes::Buf;
use futures::{Stream, StreamExt};
use warp::Filter;

/// What the ingest handlers need from the request headers.
#[derive(Debug)]
pub struct RequestHead {
    /// `None` when there is no `Content-Type` header.
    pub content_type: Option<MediaType>,
    pub content_length: Option<u64>,
    pub authorization: Option<String>,
    pub remote: Option<SocketAddr>,
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
pub fn head() -> impl Filter<Extract = (RequestHead,), Error = warp::Rejection> + Copy {
    warp::header::optional::<MediaType>("content-type")
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::addr::remote())
        .and(lenient("traceparent"))
        .and(lenient("tracestate"))
        .map(
            |content_type, content_length, authorization, remote, traceparent, tracestate| {
                RequestHead {
                    content_type,
                    content_length,
                    authorization,
                    remote,
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

/// Whether a `Content-Type` names JSON. Parsing never fails, so the header is checked
/// without copying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaType {
    pub is_json: bool,
}

impl FromStr for MediaType {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let essence = value.split(';').next().unwrap_or_default().trim();
        let bytes = essence.as_bytes();
        let (prefix, suffix) = (b"application/".as_slice(), b"+json".as_slice());
        let is_json = bytes.eq_ignore_ascii_case(b"application/json")
            || (bytes.len() > prefix.len() + suffix.len()
                && bytes[..prefix.len()].eq_ignore_ascii_case(prefix)
                && bytes[bytes.len() - suffix.len()..].eq_ignore_ascii_case(suffix));
        Ok(Self { is_json })
    }
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the request body could not be read: {0}")]
    Read(String),
}

/// Reads the whole body, refusing it as soon as it passes `limit` bytes.
pub async fn read<S, B>(body: S, head: &RequestHead, limit: u64) -> Result<Vec<u8>, BodyError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if head.content_length.is_some_and(|length| length > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    // Content-Length (already within the limit) sizes the buffer exactly; a chunked
    // body grows it as it comes.
    let capacity = head.content_length.unwrap_or_default();
    let mut out = Vec::with_capacity(usize::try_from(capacity).unwrap_or_default());
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        if (out.len() + chunk.remaining()) as u64 > limit {
            return Err(BodyError::TooLarge { limit });
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
            authorization: None,
            remote: None,
            trace_context: Default::default(),
        }
    }

    #[tokio::test]
    async fn limit_applies_with_and_without_content_length() {
        let chunks = || {
            futures::stream::iter(vec![
                Ok::<_, warp::Error>(bytes::Bytes::from_static(b"12345")),
                Ok(bytes::Bytes::from_static(b"6789")),
            ])
        };
        assert_eq!(
            read(chunks(), &head(Some(9)), 9).await.expect("fits"),
            b"123456789"
        );
        assert!(matches!(
            read(chunks(), &head(Some(9)), 8).await,
            Err(BodyError::TooLarge { limit: 8 })
        ));
        assert!(matches!(
            read(chunks(), &head(None), 8).await,
            Err(BodyError::TooLarge { limit: 8 })
        ));
        assert_eq!(read(chunks(), &head(None), 9).await.expect("fits").len(), 9);
    }
}
