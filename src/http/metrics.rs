//! `GET /metrics`: the Prometheus text exposition of every metric of the process.

use warp::Filter;

use super::HttpState;

pub fn routes(
    state: HttpState,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static
{
    warp::path!("metrics").and(warp::get()).map(move || {
        warp::reply::with_header(
            state.metrics.render(),
            "content-type",
            "text/plain; version=0.0.4; charset=utf-8",
        )
    })
}
