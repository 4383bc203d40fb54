//! Kubernetes probes.
//!
//! - `GET /health`: the process is alive and serving (liveness). Always 200.
//! - `GET /ready`: the broker answers and, in consume mode, Postgres and Redis do
//!   (readiness). 200 or 503, with one entry per dependency saying what failed.
//!   In `all` mode Postgres and Redis are reported but do not gate readiness: a pod
//!   whose Redis is away still ingests (its sinks wait and catch up), so it must stay
//!   in the Service. In consume mode the body also says which partitions this daemon
//!   holds (`leases`: member id, live members, partition → lease epoch); holding none
//!   (more daemons than partitions) is not a reason to be unready.
//!   While the old consumer groups are mirrored, `group_offsets` gives each group's
//!   state (`mirrored`, `live_members` with the members, `error`, `pending`); a group
//!   with live members (the old consumers still running) is not written, and is not a
//!   reason to be unready either.

use std::time::Duration;

use serde_json::json;
use warp::Filter;
use warp::http::StatusCode;

use super::HttpState;
use crate::config::Mode;

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub fn routes(
    state: HttpState,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static
{
    let health = warp::path!("health")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "ok"})));
    let ready = warp::path!("ready").and(warp::get()).then(move || {
        let state = state.clone();
        async move { ready(&state).await }
    });
    health.or(ready)
}

async fn ready(state: &HttpState) -> warp::reply::WithStatus<warp::reply::Json> {
    let kafka = bounded(async {
        state
            .kafka
            .list_topics()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let postgres = bounded(async {
        match &state.postgres {
            None => Ok(()),
            Some(pool) => sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    });
    let redis = bounded(async {
        match &state.redis {
            None => Ok(()),
            Some(pool) => {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                redis::cmd("PING")
                    .query_async::<String>(&mut *conn)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    });
    let (kafka, postgres, redis) = tokio::join!(kafka, postgres, redis);
    let mut checks = serde_json::Map::new();
    let mut ok = true;
    let mode = state.config.mode;
    // (name, result, reported, gates readiness)
    for (name, result, reported, gating) in [
        ("kafka", kafka, true, true),
        ("postgres", postgres, mode.consumes(), mode == Mode::Consume),
        ("redis", redis, mode.consumes(), mode == Mode::Consume),
    ] {
        if !reported {
            continue;
        }
        if gating {
            ok &= result.is_ok();
        }
        checks.insert(
            name.to_owned(),
            match result {
                Ok(()) => json!("ok"),
                Err(e) => json!(e),
            },
        );
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    metrics::gauge!("gamestream_ready").set(if ok { 1.0 } else { 0.0 });
    let mut body = json!({"status": if ok { "ready" } else { "not ready" }, "checks": checks});
    if let Some(leases) = &state.leases {
        body["leases"] = json!(leases.snapshot());
    }
    if let Some(group_mirror) = &state.group_mirror {
        body["group_offsets"] = json!(group_mirror.snapshot());
    }
    warp::reply::with_status(warp::reply::json(&body), status)
}

async fn bounded(
    check: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")))
}
