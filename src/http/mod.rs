//! The warp HTTP server: ingestion, queries, health, metrics.
//!
//! ```text
//! server.rs: connection cap, header/idle timeouts, JSON for hyper's refusals
//! request ─► routes() ─┬─ POST /api/v1/events, /api/v1/events/batch (ingest.rs;
//!                      │        guard.rs: API keys, rate limits; client.rs: trusted
//!                      │        proxies; body.rs: limits, budget, gzip/deflate)
//!                      ├─ GET  /health, /ready      (health.rs)
//!                      ├─ GET  /metrics             (metrics.rs)
//!                      ├─ GET  /api/v1/openapi.json, /api/v1/docs (openapi.rs)
//!                      ├─ GET  /api/v1/players/{player_id}/stats,
//!                      │  GET  /api/v1/leaderboards/{game_id}   (queries.rs,
//!                      │        behind guard.rs as ingestion)
//!                      └─ anything else ─► 404/405 JSON (rejection.rs)
//!            every answer ─► http_request_duration_seconds (observe.rs)
//! ```

mod body;
mod client;
mod guard;
mod health;
mod ingest;
mod metrics;
pub mod observe;
pub mod openapi;
pub mod queries;
mod rate_limit;
mod rejection;
mod server;
mod state;

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use warp::Filter;

pub use rejection::{ApiError, error_reply};
pub use state::HttpState;

use crate::shutdown::Shutdown;

/// Every route of the server, with JSON error replies for rejections.
pub fn routes(
    state: HttpState,
) -> impl Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible>
+ Clone
+ Send
+ Sync
+ 'static {
    let guard = std::sync::Arc::new(guard::Guard::new(&state.config.http));
    let client = client::TrustedProxies::new(&state.config.http.trusted_proxies).filter();
    let query_guard = std::sync::Arc::clone(&guard).filter(client.clone());
    // Ingest first: it carries nearly all the traffic, and every route tried before
    // the matching one costs a rejection.
    ingest::routes(state.clone(), guard, client)
        .or(health::routes(state.clone()))
        .or(metrics::routes(state.clone()))
        .or(queries::routes(state, query_guard))
        .or(openapi::routes())
        .recover(rejection::recover)
        .with(observe::request_metrics())
}

/// A running HTTP server.
pub struct HttpServer {
    /// The bound address (useful when the configured port was 0).
    pub local_addr: SocketAddr,
    /// Completes when the server has drained its connections after shutdown.
    pub task: JoinHandle<()>,
}

/// Binds and starts the server (server.rs: connection cap and timeouts); it stops
/// accepting when `shutdown` triggers and finishes once in-flight requests are answered.
pub async fn serve(
    state: HttpState,
    addr: SocketAddr,
    shutdown: Shutdown,
) -> std::io::Result<HttpServer> {
    let limits = server::Limits::new(&state.config.http).fitted_to_file_limit();
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let service = warp::service(routes(state));
    let task = tokio::spawn(server::run(listener, service, limits, shutdown));
    tracing::info!(%local_addr, "http server listening");
    Ok(HttpServer { local_addr, task })
}
