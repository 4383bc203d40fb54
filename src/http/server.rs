//! The server's connection loop: hyper's HTTP/1.1 with the edge's limits.
//!
//! ```text
//! accept ─► under http.max_connections? ──yes──► connection task
//!              │ no                                 ├─ head within header_read_timeout
//!              ├─ close the oldest connection with  │   (from the start, or from the
//!              │  no request in progress, and       │   first byte of a later head;
//!              │  serve the newcomer                │   408 if a head had begun)
//!              └─ none idle: 503 + Retry-After,     ├─ keep-alive idle ≤ idle_timeout
//!                 close                             ├─ hyper's own refusals (bad head,
//!                                                   │   too many or too large headers)
//!                                                   │   answered with the JSON error
//!                                                   └─ shutdown: finish, then close
//! ```
//!
//! A connection is "idle" between requests: after its response is produced and before
//! hyper hands the next request to the routes. Only idle connections are closed to make
//! room, and not within [`ANSWER_GRACE`] of their last answer (its bytes may still be on
//! their way). Requests in progress are bounded by the handlers' own timeouts
//! (`http.body_read_timeout`, `http.request_timeout`).
//!
//! Until its first byte a connection is a socket and a small task; hyper's parser and
//! buffers (~30 KB) exist only for connections that speak. The client address reaches
//! the routes as a [`Peer`] request extension.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
#[cfg(test)]
use warp::Filter;
use warp::reply::Response;

use crate::config::HttpConfig;
use crate::shutdown::Shutdown;

/// A connection that answered less than this long ago is not closed to make room: its
/// answer may still be in flight.
const ANSWER_GRACE: Duration = Duration::from_secs(1);
/// File descriptors kept free for the stores, the brokers and refusals when the open-file
/// limit lowers `http.max_connections`.
const RESERVED_FDS: usize = 256;
/// Refusals (503 past the cap) written at once; past it, a newcomer is closed unanswered.
const MAX_REFUSING: usize = 256;
/// Connections asked to make room and not yet closed, past which accepting waits.
const MAX_EVICTING: usize = 64;
/// How long a refused connection is given to read its 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The peer address of a request's connection (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// The limits of the connection loop, from `http.*`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub retry_after_seconds: u64,
}

impl Limits {
    pub fn new(http: &HttpConfig) -> Self {
        Self {
            max_connections: http.max_connections,
            header_read_timeout: http.header_read_timeout,
            idle_timeout: http.idle_timeout,
            max_header_bytes: http.max_header_bytes,
            retry_after_seconds: super::guard::retry_after_seconds(http.retry_after),
        }
    }

    /// `max_connections`, lowered to fit the process's open-file limit (with a warning).
    pub fn fitted_to_file_limit(mut self) -> Self {
        if let Some(limit) = open_file_limit() {
            let room = usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .saturating_sub(RESERVED_FDS)
                .max(1);
            if self.max_connections > room {
                tracing::warn!(
                    max_connections = self.max_connections,
                    open_file_limit = limit,
                    using = room,
                    "`http.max_connections` is above the open-file limit minus {RESERVED_FDS}; \
                     lowering it (raise `ulimit -n` to allow more connections)"
                );
                self.max_connections = room;
            }
        }
        self
    }
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits` (Linux).
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Where a connection is between requests.
#[derive(Debug, Default)]
struct Times {
    /// The routes are working on a request of this connection.
    busy: bool,
    /// When the last response was produced (None: none yet).
    answered_at: Option<Instant>,
    /// When the first byte of the next request head arrived (None: not yet).
    head_started: Option<Instant>,
    /// Final responses produced by the routes, and their heads seen going out.
    answered: u64,
    heads_written: u64,
}

/// What the connection task, its I/O, its service and the registry share.
struct Entry {
    accepted: Instant,
    times: Mutex<Times>,
    /// Asked to close to make room.
    evict: Notify,
    evicting: AtomicBool,
    /// The deadline may have moved earlier (a head began).
    wake: Notify,
}

impl Entry {
    fn new() -> Self {
        Self {
            accepted: Instant::now(),
            times: Mutex::new(Times::default()),
            evict: Notify::new(),
            evicting: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.times
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether it may be closed to make room at `now`.
    fn evictable(&self, now: Instant) -> bool {
        let times = self.times();
        !times.busy
            && times
                .answered_at
                .is_none_or(|at| now.saturating_duration_since(at) >= ANSWER_GRACE)
    }

    /// When the connection is due to close, and why; None while a request is in progress.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Expiry)> {
        let times = self.times();
        if times.busy {
            return None;
        }
        Some(match (times.head_started, times.answered_at) {
            (Some(head), Some(_)) => (head + limits.header_read_timeout, Expiry::HeadStarted),
            (head, None) => (
                self.accepted + limits.header_read_timeout,
                if head.is_some() {
                    Expiry::HeadStarted
                } else {
                    Expiry::Silent
                },
            ),
            (None, Some(at)) => (at + limits.idle_timeout, Expiry::Idle),
        })
    }
}

/// Why a connection's deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// No byte since the connection opened.
    Silent,
    /// A head began but did not complete.
    HeadStarted,
    /// Keep-alive with no new request.
    Idle,
}

impl Expiry {
    fn reason(self) -> &'static str {
        match self {
            Expiry::Silent | Expiry::HeadStarted => "header_timeout",
            Expiry::Idle => "idle_timeout",
        }
    }
}

/// Every open connection, oldest first.
#[derive(Default)]
struct Registry {
    connections: Mutex<BTreeMap<u64, Arc<Entry>>>,
    next_id: AtomicU64,
    /// Signalled when the last connection closes (for shutdown).
    emptied: Notify,
    evicting: AtomicUsize,
}

impl Registry {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Entry>>> {
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a new connection if there is room, making room by closing the
    /// oldest connection with no request in progress if needed. None: no room (every connection is busy).
    fn admit(&self, limits: &Limits) -> Option<(u64, Arc<Entry>)> {
        let mut map = self.map();
        let open = map
            .len()
            .saturating_sub(self.evicting.load(Ordering::Relaxed));
        if open >= limits.max_connections {
            let now = Instant::now();
            let victim = map
                .values()
                .find(|entry| !entry.evicting.load(Ordering::Relaxed) && entry.evictable(now))?;
            victim.evicting.store(true, Ordering::Relaxed);
            self.evicting.fetch_add(1, Ordering::Relaxed);
            victim.evict.notify_one();
            metrics::counter!("http_connections_closed_total", "reason" => "evicted").increment(1);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry::new());
        map.insert(id, Arc::clone(&entry));
        metrics::gauge!("http_connections_open").set(map.len() as f64);
        Some((id, entry))
    }

    fn remove(&self, id: u64) {
        let mut map = self.map();
        if let Some(entry) = map.remove(&id)
            && entry.evicting.load(Ordering::Relaxed)
        {
            self.evicting.fetch_sub(1, Ordering::Relaxed);
        }
        metrics::gauge!("http_connections_open").set(map.len() as f64);
        if map.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    /// Closes the oldest connection with no request in progress, if any (the open-file limit was hit).
    fn evict_one(&self) -> bool {
        let map = self.map();
        let now = Instant::now();
        match map
            .values()
            .find(|e| !e.evicting.load(Ordering::Relaxed) && e.evictable(now))
        {
            Some(victim) => {
                victim.evicting.store(true, Ordering::Relaxed);
                self.evicting.fetch_add(1, Ordering::Relaxed);
                victim.evict.notify_one();
                true
            }
            None => false,
        }
    }

    async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.map().is_empty() {
                return;
            }
            emptied.await;
        }
    }
}

/// Unregisters its connection when the task ends, however it ends.
struct Registered {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

/// What the server serves: the warp routes as one cloneable service per connection.
pub trait RouteService:
    tower_service::Service<
        hyper::Request<Incoming>,
        Response = Response,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> RouteService for S where
    S: tower_service::Service<
            hyper::Request<Incoming>,
            Response = Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Serves `service` (the routes) on `listener` until `shutdown`, then answers the
/// requests in progress and returns once every connection has closed.
pub async fn run<S>(listener: TcpListener, service: S, limits: Limits, shutdown: Shutdown)
where
    S: RouteService,
{
    let registry = Arc::new(Registry::default());
    let limits = Arc::new(limits);
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.wait() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE/ENFILE: make room, and give the closing a moment.
                let freed = registry.evict_one();
                tracing::warn!(error = %e, freed_an_idle_connection = freed, "http accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Connections asked to make room close on their own tasks; a flood accepted
        // faster than they run must not pile up descriptors meanwhile.
        let mut waited = 0;
        while registry.evicting.load(Ordering::Relaxed) >= MAX_EVICTING && waited < 1000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            waited += 1;
        }
        let Some((id, entry)) = registry.admit(&limits) else {
            metrics::counter!("http_connections_refused_total").increment(1);
            refuse(stream, &refusing, limits.retry_after_seconds);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let registered = Registered {
            registry: Arc::clone(&registry),
            id,
        };
        let fut = connection(
            stream,
            peer,
            service.clone(),
            Arc::clone(&limits),
            entry,
            shutdown.clone(),
            registered,
        );
        tokio::spawn(fut);
    }
    drop(listener);
    registry.wait_empty().await;
}

/// The 503 of a connection past the cap: written without waiting, then the connection
/// is given [`REFUSAL_LINGER`] to read it (its request, unread, would otherwise turn
/// the close into a reset that can overtake the answer).
fn refuse(stream: TcpStream, refusing: &Arc<Semaphore>, retry_after: u64) {
    let answer = canned(
        503,
        "Service Unavailable",
        "the server is at its connection limit (http.max_connections); retry shortly",
        Some(retry_after),
    );
    if stream.try_write(&answer).is_err() {
        return;
    }
    let Ok(permit) = Arc::clone(refusing).try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            use tokio::io::AsyncReadExt;
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        drop(permit);
    });
}

/// After an answer to a request that was not read whole (hyper refused its head): reads
/// and drops what the client still sends, for up to [`REFUSAL_LINGER`] and 1 MiB, so
/// that closing with unread bytes (a reset) does not destroy the answer in flight.
async fn linger(mut stream: TcpStream) {
    use tokio::io::AsyncReadExt;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 8192];
    let mut budget = 1usize << 20;
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        while budget > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    })
    .await;
}

/// A whole HTTP/1.1 answer with the JSON error body, closing the connection.
fn canned(status: u16, reason: &str, message: &str, retry_after: Option<u64>) -> Vec<u8> {
    let body = serde_json::json!({"status": "error", "error": message}).to_string();
    let retry = retry_after
        .map(|s| format!("retry-after: {s}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n{retry}connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn connection<S>(
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    limits: Arc<Limits>,
    entry: Arc<Entry>,
    shutdown: Shutdown,
    registered: Registered,
) where
    S: RouteService,
{
    // hyper's connection (buffers and all) is built once the first bytes arrive: a
    // silent connection costs a socket and this small task, not a parser.
    let mut first = [0u8; 1];
    tokio::select! {
        // `peek`, not `readable`: readiness may be reported before any byte is there.
        peeked = stream.peek(&mut first) => {
            if !matches!(peeked, Ok(n) if n > 0) {
                return;
            }
        }
        () = tokio::time::sleep_until(entry.accepted + limits.header_read_timeout) => {
            metrics::counter!("http_connections_closed_total", "reason" => Expiry::Silent.reason())
                .increment(1);
            return;
        }
        () = entry.evict.notified() => return,
        () = shutdown.wait() => return,
    }
    // Boxed: the parser's state is large, and only connections that speak carry it.
    Box::pin(speak(
        stream, peer, service, limits, entry, shutdown, registered,
    ))
    .await;
}

/// Serves a connection whose first bytes have arrived.
async fn speak<S>(
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    limits: Arc<Limits>,
    entry: Arc<Entry>,
    shutdown: Shutdown,
    registered: Registered,
) where
    S: RouteService,
{
    let io = TokioIo::new(Tracked::new(stream, Arc::clone(&entry)));
    let service = Routes {
        inner: service,
        entry: Arc::clone(&entry),
        peer,
    };
    let mut conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Our own header timer below: hyper's would also close idle keep-alive
        // connections at the header timeout.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true)
        .serve_connection(io, service);
    let mut draining = false;
    loop {
        let deadline = entry.deadline(&limits);
        let sleep = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = Pin::new(&mut conn) => {
                match result {
                    Ok(()) => {}
                    // A client closing mid-request (a load test stopping, a phone losing
                    // its network) is not the server's error.
                    Err(e) if e.is_incomplete_message() => {
                        metrics::counter!("http_client_aborted_connections_total").increment(1);
                    }
                    Err(e) => tracing::debug!(error = %e, %peer, "http connection ended with an error"),
                }
                let tracked = conn.into_parts().io.into_inner();
                if tracked.replacement.is_some() {
                    linger(tracked.stream).await;
                }
                return;
            }
            () = sleep => {
                // Re-read: the state may have changed since the deadline was taken.
                let Some((at, expiry)) = entry.deadline(&limits) else { continue };
                if Instant::now() < at {
                    continue;
                }
                metrics::counter!("http_connections_closed_total", "reason" => expiry.reason())
                    .increment(1);
                if expiry == Expiry::HeadStarted {
                    let parts = conn.into_parts();
                    let mut stream = parts.io.into_inner().stream;
                    let answer = canned(
                        408,
                        "Request Timeout",
                        &format!(
                            "the request head was not received within {:?} (http.header_read_timeout)",
                            limits.header_read_timeout
                        ),
                        None,
                    );
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        stream.write_all(&answer).await?;
                        stream.shutdown().await
                    })
                    .await;
                }
                return;
            }
            () = entry.wake.notified() => {}
            () = entry.evict.notified() => {
                if entry.evictable(Instant::now()) {
                    return;
                }
                // It became busy in the meantime: it keeps its place.
                if entry.evicting.swap(false, Ordering::Relaxed) {
                    registered.registry.evicting.fetch_sub(1, Ordering::Relaxed);
                }
            }
            () = shutdown.wait(), if !draining => {
                draining = true;
                if !entry.times().busy {
                    return;
                }
                Pin::new(&mut conn).graceful_shutdown();
            }
        }
    }
}

/// The routes as hyper's service: adds [`Peer`] and tracks the connection's state.
struct Routes<S> {
    inner: S,
    entry: Arc<Entry>,
    peer: SocketAddr,
}

impl<S> hyper::service::Service<hyper::Request<Incoming>> for Routes<S>
where
    S: RouteService,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        {
            let mut times = self.entry.times();
            times.busy = true;
            times.head_started = None;
        }
        request.extensions_mut().insert(Peer(self.peer));
        let mut inner = self.inner.clone();
        let entry = Arc::clone(&self.entry);
        let answer = inner.call(request);
        Box::pin(async move {
            let response = answer.await;
            let mut times = entry.times();
            times.busy = false;
            times.answered_at = Some(Instant::now());
            times.answered += 1;
            response
        })
    }
}

/// The connection's socket, noting when a request head begins and replacing hyper's
/// bodiless refusals (400, 414, 431 for heads it cannot parse) with the JSON error.
struct Tracked {
    stream: TcpStream,
    entry: Arc<Entry>,
    /// A replacement answer still to send; once set, hyper's own bytes are dropped.
    replacement: Option<(Vec<u8>, usize)>,
}

impl Tracked {
    fn new(stream: TcpStream, entry: Arc<Entry>) -> Self {
        Self {
            stream,
            entry,
            replacement: None,
        }
    }

    /// Whether `bytes` (the start of a write) are a final response head that no route
    /// produced, i.e. hyper's refusal of a request it could not parse; then its status.
    fn refusal(&self, bytes: &[u8]) -> Option<u16> {
        let status = response_status(bytes)?;
        if status < 200 {
            return None;
        }
        let mut times = self.entry.times();
        if times.heads_written < times.answered {
            times.heads_written += 1;
            return None;
        }
        Some(status)
    }

    fn start_replacement(&mut self, status: u16) {
        let (reason, message) = match status {
            414 => (
                "URI Too Long",
                "the request URI is too long (http.max_header_bytes)",
            ),
            431 => (
                "Request Header Fields Too Large",
                "the request has too many headers (at most 100) or they are too large \
                 (http.max_header_bytes)",
            ),
            _ => (
                "Bad Request",
                "the request is not valid HTTP/1.1 (bad request line or headers, or \
                 conflicting Content-Length / Transfer-Encoding)",
            ),
        };
        let status = if matches!(status, 414 | 431) {
            status
        } else {
            400
        };
        self.replacement = Some((canned(status, reason, message, None), 0));
        metrics::counter!("http_requests_refused_unparsed_total").increment(1);
    }

    /// Sends what is left of the replacement.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((bytes, sent)) = &mut self.replacement else {
            return Poll::Ready(Ok(()));
        };
        while *sent < bytes.len() {
            let n = std::task::ready!(Pin::new(&mut self.stream).poll_write(cx, &bytes[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// The status of an HTTP/1.x response head at the start of `bytes`.
fn response_status(bytes: &[u8]) -> Option<u16> {
    let rest = bytes
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| bytes.strip_prefix(b"HTTP/1.0 "))?;
    let digits = rest.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let mut times = self.entry.times();
            if !times.busy && times.head_started.is_none() {
                times.head_started = Some(Instant::now());
                drop(times);
                self.entry.wake.notify_one();
            }
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.replacement.is_none()
            && let Some(status) = self.refusal(buf)
        {
            self.start_replacement(status);
        }
        if self.replacement.is_some() {
            // hyper's bytes are dropped; ours go out on flush.
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.replacement.is_none()
            && let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && let Some(status) = self.refusal(first)
        {
            self.start_replacement(status);
        }
        if self.replacement.is_some() {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_connection_holds_a_small_task() {
        // What each connection costs before its first byte: the spawned future.
        let limits = Arc::new(Limits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_header_bytes: 8192,
            retry_after_seconds: 1,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let client = TcpStream::connect(listener.local_addr().expect("addr"));
            let ((stream, peer), _client) =
                tokio::join!(async { listener.accept().await.expect("accept") }, client);
            let registry = Arc::new(Registry::default());
            let (id, entry) = registry.admit(&limits).expect("room");
            let service = warp::service(warp::any().map(warp::reply));
            let future = connection(
                stream,
                peer,
                service,
                limits,
                entry,
                Shutdown::new(),
                Registered { registry, id },
            );
            let size = std::mem::size_of_val(&future);
            assert!(size < 4096, "{size} bytes");
        });
    }

    #[test]
    fn statuses_of_response_heads() {
        assert_eq!(response_status(b"HTTP/1.1 431 Request"), Some(431));
        assert_eq!(response_status(b"HTTP/1.0 400 "), Some(400));
        assert_eq!(response_status(b"{\"status\":\"error\"}"), None);
        assert_eq!(response_status(b"HTTP/1.1 4"), None);
    }

    #[test]
    fn canned_answers_are_complete_json() {
        let text =
            String::from_utf8(canned(503, "Service Unavailable", "full", Some(2))).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(head.contains("retry-after: 2\r\n"));
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(json["error"], "full");
    }

    #[test]
    fn deadlines_follow_the_connection_state() {
        let limits = Limits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_header_bytes: 8192,
            retry_after_seconds: 1,
        };
        let entry = Entry::new();
        let (at, expiry) = entry.deadline(&limits).expect("a deadline");
        assert_eq!(
            (at, expiry),
            (entry.accepted + limits.header_read_timeout, Expiry::Silent)
        );
        entry.times().head_started = Some(entry.accepted);
        assert_eq!(
            entry.deadline(&limits).expect("deadline").1,
            Expiry::HeadStarted
        );
        entry.times().busy = true;
        assert!(
            entry.deadline(&limits).is_none(),
            "a request in progress has none"
        );
        let answered = entry.accepted + Duration::from_secs(3);
        {
            let mut times = entry.times();
            times.busy = false;
            times.head_started = None;
            times.answered_at = Some(answered);
        }
        assert_eq!(
            entry.deadline(&limits),
            Some((answered + limits.idle_timeout, Expiry::Idle))
        );
        assert!(!entry.evictable(answered), "just answered");
        assert!(entry.evictable(answered + ANSWER_GRACE));
    }

    #[tokio::test]
    async fn the_longest_idle_connection_makes_room() {
        let limits = Limits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_header_bytes: 8192,
            retry_after_seconds: 1,
        };
        let registry = Registry::default();
        let (_, first) = registry.admit(&limits).expect("room");
        let (_, second) = registry.admit(&limits).expect("room");
        first.times().busy = true;
        let (_, third) = registry.admit(&limits).expect("the idle one makes room");
        assert!(second.evicting.load(Ordering::Relaxed));
        assert!(!first.evicting.load(Ordering::Relaxed));
        third.times().busy = true;
        assert!(
            registry.admit(&limits).is_none(),
            "no room when every other connection is busy"
        );
    }
}
