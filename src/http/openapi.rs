//! `GET /api/v1/openapi.json`: the OpenAPI 3 description of every route, and
//! `GET /api/v1/docs`: Swagger UI over it (as the old service offered).
//!
//! Hand-written with `serde_json::json!`, built once. A test checks that it lists every
//! route of [`super::observe::ROUTES`] with its method.

use std::sync::OnceLock;

use serde_json::{Value, json};
use warp::Filter;
use warp::http::{HeaderValue, header};
use warp::reply::Response;

/// The Swagger UI page. Its script and stylesheet come from the public CDN (the binary
/// stays small), pinned to one release and to the SHA-384 of its files (Subresource
/// Integrity): a changed file on the CDN is refused by the browser, not run. To move to
/// another release, take the hashes from its npm package:
/// `npm pack swagger-ui-dist@X.Y.Z`, then
/// `openssl dgst -sha384 -binary package/swagger-ui-bundle.js | openssl base64 -A`.
const DOCS_HTML: &str = r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>gamestream API</title>
  <link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5.35.0/swagger-ui.css"
        integrity="sha384-WlYgdmXYOOBWL5apwjDEZwN+U3HmXSSu5R6V5aGxEcf7z+KuRNwBhoxKVN1i3D5I" crossorigin="anonymous">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="https://unpkg.com/swagger-ui-dist@5.35.0/swagger-ui-bundle.js"
          integrity="sha384-gjRm0bEPMeTmMh5jT2cHccIwCUZSTd8YC+j0d0sXw0MdGEfScduGpSyF3ZSSLkX9" crossorigin="anonymous"></script>
  <script>
    window.onload = () => { window.ui = SwaggerUIBundle({ url: "/api/v1/openapi.json", dom_id: "#swagger-ui" }); };
  </script>
</body>
</html>
"##;

pub fn routes()
-> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let spec = warp::path!("api" / "v1" / "openapi.json")
        .and(warp::get())
        .map(|| with_type(document_text().as_bytes(), "application/json"));
    let docs = warp::path!("api" / "v1" / "docs")
        .and(warp::get())
        .map(|| with_type(DOCS_HTML.as_bytes(), "text/html; charset=utf-8"));
    spec.or(docs).unify()
}

fn with_type(body: &'static [u8], content_type: &'static str) -> Response {
    let mut response = Response::new(body.into());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The document as JSON text, rendered once.
pub fn document_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| document().to_string())
}

/// The OpenAPI 3 document: the routes described here, plus the query routes' own
/// fragment ([`super::queries::OPENAPI_FRAGMENT`]: paths and schemas), merged in.
pub fn document() -> Value {
    let mut doc = base_document();
    merge_fragment(&mut doc, super::queries::OPENAPI_FRAGMENT);
    doc
}

/// Adds a fragment's `paths` and `components.schemas` to `doc`. The fragment is a
/// compiled-in file checked by its own tests, so a parse failure cannot happen at run
/// time; it would leave the document without those routes, which the route test catches.
fn merge_fragment(doc: &mut Value, fragment: &str) {
    let Ok(fragment) = serde_json::from_str::<Value>(fragment) else {
        return;
    };
    for pointer in ["/paths", "/components/schemas"] {
        if let (Some(Value::Object(into)), Some(Value::Object(from))) =
            (doc.pointer_mut(pointer), fragment.pointer(pointer))
        {
            into.extend(from.clone());
        }
    }
}

/// The document without the query routes.
fn base_document() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "gamestream",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Game event ingestion, player statistics and leaderboards. An event is answered 2xx only after the Kafka broker acknowledged it (acks from all in-sync replicas)."
        },
        "paths": {
            "/api/v1/events": {"post": submit_one()},
            "/api/v1/events/batch": {"post": submit_batch()},
            "/api/v1/openapi.json": {"get": {
                "summary": "This document",
                "tags": ["meta"],
                "responses": {"200": {"description": "The OpenAPI 3 document", "content": {"application/json": {"schema": {"type": "object"}}}}}
            }},
            "/api/v1/docs": {"get": {
                "summary": "Swagger UI over this document",
                "tags": ["meta"],
                "responses": {"200": {"description": "An HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}}
            }},
            "/health": {"get": {
                "summary": "Liveness: the process is serving",
                "tags": ["operations"],
                "responses": {"200": {"description": "Alive", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}}}
            }},
            "/ready": {"get": {
                "summary": "Readiness: the broker answers (and, in consume mode, PostgreSQL and Redis)",
                "tags": ["operations"],
                "responses": {
                    "200": {"description": "Ready", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ready"}}}},
                    "503": {"description": "A dependency failed; `checks` says which and why", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ready"}}}}
                }
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics",
                "description": "Text exposition format 0.0.4. Includes events_received_total, events_published_total, events_failed_total{reason} and http_request_duration_seconds{endpoint,method,status}.",
                "tags": ["operations"],
                "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}
            }}
        },
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "Required only when the server has API keys configured (http.api_keys): for ingestion and the player and leaderboard queries."}
            },
            "headers": {
                "RetryAfter": {"description": "Seconds to wait before retrying", "schema": {"type": "integer", "minimum": 1}}
            },
            "schemas": schemas(),
            "responses": shared_responses()
        }
    })
}

fn submit_one() -> Value {
    json!({
        "summary": "Submit one event",
        "tags": ["ingest"],
        "security": [{}, {"apiKey": []}],
        "requestBody": {
            "required": true,
            "description": "UTF-8 JSON; may be sent with Content-Encoding gzip or deflate (the limit applies to the inflated body).",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventSubmission"}}}
        },
        "responses": {
            "200": {"description": "Published and acknowledged by the broker", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Success"}}}},
            "400": {"$ref": "#/components/responses/BadRequest"},
            "401": {"$ref": "#/components/responses/Unauthorized"},
            "408": {"$ref": "#/components/responses/RequestTimeout"},
            "413": {"$ref": "#/components/responses/TooLarge"},
            "415": {"$ref": "#/components/responses/UnsupportedMediaType"},
            "429": {"$ref": "#/components/responses/RateLimited"},
            "503": {"$ref": "#/components/responses/Unavailable"}
        }
    })
}

fn submit_batch() -> Value {
    json!({
        "summary": "Submit several events",
        "description": "A JSON array of events (at most http.batch_limit, default 1000). Each item is validated and published on its own: valid items are published even when others are not. One result per item, in order.",
        "tags": ["ingest"],
        "security": [{}, {"apiKey": []}],
        "requestBody": {
            "required": true,
            "description": "UTF-8 JSON; may be sent with Content-Encoding gzip or deflate (the limit applies to the inflated body).",
            "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/EventSubmission"}}}}
        },
        "responses": {
            "200": {"description": "Every item was handled; see each result", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchResult"}}}},
            "400": {"$ref": "#/components/responses/BadRequest"},
            "401": {"$ref": "#/components/responses/Unauthorized"},
            "408": {"$ref": "#/components/responses/RequestTimeout"},
            "413": {"$ref": "#/components/responses/TooLarge"},
            "415": {"$ref": "#/components/responses/UnsupportedMediaType"},
            "429": {"$ref": "#/components/responses/RateLimited"},
            "503": {
                "description": "No valid item could be published (broker slow or down, or overloaded); the body still has one result per item. Retry after Retry-After seconds.",
                "headers": {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchResult"}}}
            }
        }
    })
}

fn schemas() -> Value {
    // As event.rs checks ids: no control character (Unicode Cc), not only whitespace.
    let id = |what: &str| {
        json!({"type": "string", "minLength": 1, "maxLength": 100, "description": what,
            "pattern": "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"})
    };
    json!({
        "EventSubmission": {
            "type": "object",
            "required": ["event_type", "player_id", "game_id", "timestamp"],
            "properties": {
                "event_id": {"type": "string", "format": "uuid", "description": "Optional: the client's id for this event (a UUID of any version). Send the same id when resending after a 503, a timeout or a dropped connection: the event is kept under it everywhere. Absent, the server assigns one (returned in the answer)."},
                "event_type": id("player_level_up, player_score, quest_completed, achievement_unlocked, boss_defeated, or any custom type"),
                "player_id": id("The player; the Kafka key, so a player's events stay in order"),
                "game_id": id("The game"),
                "timestamp": {"type": "string", "format": "date-time", "description": "RFC 3339 event time, e.g. 2024-01-15T10:30:00Z; within years 0001 to 9999 once converted to UTC"},
                "data": {"type": "object", "additionalProperties": true, "default": {}, "description": "Free-form; for player_score, a numeric `score` feeds the leaderboards: a fraction counts as its integer part, truncated toward zero (12.5 counts 12, -12.5 counts -12), which must lie from -(2^53 - 1) to 2^53 - 1, i.e. ±9007199254740991, which every store holds exactly (beyond it the event is refused; a leaderboard sum past that bound is refused and the event dead-lettered). A player_score without a numeric `score` is accepted and stored, and dead-lettered by the leaderboard manager"}
            },
            "example": {"event_type": "player_score", "player_id": "player-123", "game_id": "game-456", "timestamp": "2024-01-15T10:30:00Z", "data": {"score": 1200}}
        },
        "Success": {
            "type": "object",
            "required": ["status", "event_id"],
            "properties": {
                "status": {"type": "string", "enum": ["success"]},
                "event_id": {"type": "string", "format": "uuid"}
            }
        },
        "Error": {
            "type": "object",
            "required": ["status", "error"],
            "properties": {
                "status": {"type": "string", "enum": ["error"]},
                "error": {"type": "string", "description": "Which field is wrong and why, or what went wrong"}
            }
        },
        "BatchResult": {
            "type": "object",
            "required": ["status", "accepted", "rejected", "results"],
            "properties": {
                "status": {"type": "string", "enum": ["success", "partial", "error"], "description": "success: every item published; error: none; partial: some"},
                "accepted": {"type": "integer", "description": "Items published"},
                "rejected": {"type": "integer", "description": "Items not published"},
                "results": {"type": "array", "description": "One per item, in order", "items": {"oneOf": [
                    {"$ref": "#/components/schemas/Success"},
                    {"$ref": "#/components/schemas/Error"}
                ]}}
            }
        },
        "Health": {
            "type": "object",
            "properties": {"status": {"type": "string", "enum": ["ok"]}}
        },
        "Ready": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["ready", "not ready"]},
                "checks": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Per dependency: \"ok\" or the error"}
            }
        }
    })
}

fn shared_responses() -> Value {
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        })
    };
    let mut responses = json!({
        "BadRequest": error("Invalid event (the message names the field and the rule), malformed JSON (with the byte offset), a batch that is not an array or is over the limit"),
        "Unauthorized": error("API keys are configured and the request has none or a wrong one"),
        "TooLarge": error("The body, or a gzip/deflate body once inflated, is over http.body_limit_bytes (default 1 MiB)"),
        "UnsupportedMediaType": error("Content-Type is not application/json, its charset is not UTF-8, or Content-Encoding is not gzip, deflate or identity"),
        "RequestTimeout": error("The body did not arrive within http.body_read_timeout (default 8 s); the connection is closed"),
        "RateLimited": error("Over the per-client rate limit, or too many failed authentications from this address (http.auth_failures_per_minute); retry after Retry-After seconds"),
        "Unavailable": error("The broker did not acknowledge in time, the producer is at its in-flight bound, the server holds as many request bodies as http.body_budget_bytes allows, the request timed out, or this instance does not ingest (consume mode); retry after Retry-After seconds")
    });
    for name in ["RateLimited", "Unavailable"] {
        responses[name]["headers"] =
            json!({"Retry-After": {"$ref": "#/components/headers/RetryAfter"}});
    }
    responses
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::observe::ROUTES;

    #[test]
    fn the_docs_page_pins_what_it_loads() {
        // Every external script or stylesheet names an exact release and carries its
        // SHA-384: nothing the CDN changes later runs in the page.
        let tags: Vec<&str> = DOCS_HTML
            .split('<')
            .filter(|tag| tag.contains("https://"))
            .collect();
        assert_eq!(tags.len(), 2, "{DOCS_HTML}");
        for tag in tags {
            assert!(tag.contains("swagger-ui-dist@5.35.0/"), "{tag}");
            assert!(tag.contains("integrity=\"sha384-"), "{tag}");
            assert!(tag.contains("crossorigin=\"anonymous\""), "{tag}");
        }
    }

    #[test]
    fn every_route_is_documented() {
        let doc: Value = serde_json::from_str(document_text()).expect("valid JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        let paths = doc["paths"].as_object().expect("paths");
        for route in ROUTES {
            let method = route.method.to_ascii_lowercase();
            assert!(
                paths.get(route.path).and_then(|p| p.get(&method)).is_some(),
                "{} {} is not documented",
                route.method,
                route.path
            );
        }
        assert_eq!(paths.len(), ROUTES.len(), "a documented path has no route");
    }

    #[test]
    fn every_reference_resolves() {
        fn walk(value: &Value, doc: &Value) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        let pointer = target.trim_start_matches('#');
                        assert!(doc.pointer(pointer).is_some(), "dangling {target}");
                    }
                    map.values().for_each(|v| walk(v, doc));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, doc)),
                _ => {}
            }
        }
        let doc = document();
        walk(&doc, &doc);
    }
}
