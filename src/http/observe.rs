//! The route table and the per-request metric.
//!
//! `http_request_duration_seconds{endpoint, method, status}` is recorded for every
//! answer, rejections included. `endpoint` is the route template from [`ROUTES`], or
//! `unmatched` for any other path, so a scanner probing random paths cannot create
//! new series; `method` is one of the standard methods or `OTHER`.

use std::sync::OnceLock;

use warp::http::Method;

/// One route of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    /// The path template (OpenAPI syntax for parameters, `{name}`).
    pub path: &'static str,
}

/// Every route the server answers. The OpenAPI document is tested against this list;
/// a new route goes here too, or its requests count as `unmatched`.
pub const ROUTES: &[Route] = &[
    Route {
        method: "POST",
        path: "/api/v1/events",
    },
    Route {
        method: "POST",
        path: "/api/v1/events/batch",
    },
    Route {
        method: "GET",
        path: "/api/v1/openapi.json",
    },
    Route {
        method: "GET",
        path: "/api/v1/docs",
    },
    Route {
        method: "GET",
        path: "/health",
    },
    Route {
        method: "GET",
        path: "/ready",
    },
    Route {
        method: "GET",
        path: "/metrics",
    },
    Route {
        method: "GET",
        path: "/api/v1/players/{player_id}/stats",
    },
    Route {
        method: "GET",
        path: "/api/v1/leaderboards/{game_id}",
    },
];

/// The `endpoint` label of a request path.
pub fn endpoint_label(path: &str) -> &'static str {
    endpoint_index(path).map_or(UNMATCHED, |i| ROUTES[i].path)
}

/// The label of requests to paths no route serves.
const UNMATCHED: &str = "unmatched";

fn endpoint_index(path: &str) -> Option<usize> {
    ROUTES
        .iter()
        .position(|route| template_matches(route.path, path))
}

/// Whether `path` fits `template`, where a `{name}` segment matches any one segment.
fn template_matches(template: &str, path: &str) -> bool {
    let mut want = template.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w == g || (w.starts_with('{') && !g.is_empty()) => {}
            _ => return false,
        }
    }
}

/// Method labels; anything else is `OTHER`.
const METHODS: [(Method, &str); 8] = [
    (Method::GET, "GET"),
    (Method::POST, "POST"),
    (Method::PUT, "PUT"),
    (Method::DELETE, "DELETE"),
    (Method::HEAD, "HEAD"),
    (Method::OPTIONS, "OPTIONS"),
    (Method::PATCH, "PATCH"),
    (Method::TRACE, "TRACE"),
];
const OTHER_METHOD: &str = "OTHER";

fn method_index(method: &Method) -> usize {
    METHODS
        .iter()
        .position(|(m, _)| m == method)
        .unwrap_or(METHODS.len())
}

fn method_label(index: usize) -> &'static str {
    METHODS.get(index).map_or(OTHER_METHOD, |(_, label)| label)
}

/// The status codes this server sends, whose histograms are cached; others are
/// labelled too, but looked up per request.
const STATUSES: [(u16, &str); 13] = [
    (200, "200"),
    (400, "400"),
    (401, "401"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (411, "411"),
    (413, "413"),
    (415, "415"),
    (429, "429"),
    (500, "500"),
    (502, "502"),
    (503, "503"),
];

fn status_label(status: u16) -> metrics::SharedString {
    match STATUSES.iter().find(|(code, _)| *code == status) {
        Some((_, text)) => metrics::SharedString::const_str(text),
        None => metrics::SharedString::from(status.to_string()),
    }
}

/// The histogram of one (endpoint, method, status), registered on first use and then
/// reused: building a labelled key per request would cost allocations and a registry
/// lookup on the hot path.
fn duration_histogram(path: &str, method: &Method, status: u16) -> metrics::Histogram {
    const ENDPOINTS: usize = ROUTES.len() + 1;
    const SLOTS: usize = ENDPOINTS * (METHODS.len() + 1) * STATUSES.len();
    static HANDLES: [OnceLock<metrics::Histogram>; SLOTS] = [const { OnceLock::new() }; SLOTS];
    let endpoint = endpoint_index(path);
    let endpoint_slot = endpoint.unwrap_or(ROUTES.len());
    let method = method_index(method);
    let register = || {
        metrics::histogram!(
            "http_request_duration_seconds",
            "endpoint" => endpoint.map_or(UNMATCHED, |i| ROUTES[i].path),
            "method" => method_label(method),
            "status" => status_label(status),
        )
    };
    match STATUSES.iter().position(|(code, _)| *code == status) {
        Some(status_slot) => {
            let slot =
                (endpoint_slot * (METHODS.len() + 1) + method) * STATUSES.len() + status_slot;
            HANDLES[slot].get_or_init(register).clone()
        }
        None => register(),
    }
}

/// The warp wrapper that records `http_request_duration_seconds` for every request.
pub fn request_metrics() -> warp::log::Log<impl Fn(warp::log::Info<'_>) + Copy + Send + Sync> {
    warp::log::custom(|info| {
        duration_histogram(info.path(), info.method(), info.status().as_u16())
            .record(info.elapsed().as_secs_f64());
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_labels_are_templates() {
        assert_eq!(endpoint_label("/api/v1/events"), "/api/v1/events");
        assert_eq!(
            endpoint_label("/api/v1/events/batch"),
            "/api/v1/events/batch"
        );
        assert_eq!(endpoint_label("/health"), "/health");
        assert_eq!(endpoint_label("/api/v1/events/x"), "unmatched");
        assert_eq!(endpoint_label("/wp-admin.php"), "unmatched");
        assert!(template_matches("/a/{id}/b", "/a/42/b"));
        assert!(!template_matches("/a/{id}/b", "/a//b"));
    }

    #[test]
    fn status_labels() {
        assert_eq!(status_label(200).as_ref(), "200");
        assert_eq!(status_label(418).as_ref(), "418");
    }
}
