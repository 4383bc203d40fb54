//! The query API: player statistics and leaderboards, read from Redis, with Postgres
//! (the complete record) as the fallback.
//!
//! ```text
//! GET /api/v1/players/{player_id}/stats
//!     HGETALL player_stats:{id} ──empty or Redis away──► player_statistics ──none──► 404
//! GET /api/v1/leaderboards/{game_id}?period=daily|weekly|alltime&date=…&limit=…
//!     ZRANGE leaderboard:{g}:{period}[:{date}] REV ──empty or away──► leaderboard_scores
//!         ──no score for the game at all──► 404
//! ```
//!
//! `period` defaults to `alltime`; `date` (daily: `2026-11-22`; weekly: `2026-W47` or
//! any day of that week) to the current UTC period; `limit` to
//! `leaderboard.query_default_limit`, at most `leaderboard.query_max_limit`. Each answer
//! says which store served it (`source`). Bad parameters get 400 with what is wrong.
//! The OpenAPI description of both routes is [`OPENAPI_FRAGMENT`] (paths and schemas,
//! to be merged into the server's document).

use std::collections::{BTreeMap, HashMap};

use percent_encoding::percent_decode_str;
use serde::Serialize;
use warp::Filter;
use warp::http::StatusCode;

use super::HttpState;
use super::rejection::{ApiError, error_reply};
use crate::aggregate::period::PeriodError;
use crate::aggregate::scores::Ranked;
use crate::aggregate::stats::{PlayerStats, last_event_text};
use crate::aggregate::{Period, PeriodKey};
use crate::sinks::postgres::{leaderboard as pg_leaderboard, stats as pg_stats};
use crate::sinks::redis::{RedisKeys, leaderboard as redis_leaderboard, stats as redis_stats};

/// OpenAPI 3 `paths` and `components.schemas` of these routes (JSON). It refers to the
/// shared `#/components/schemas/Error` and `#/components/headers/RetryAfter`.
pub const OPENAPI_FRAGMENT: &str = include_str!("openapi_queries.json");

/// The answer of `GET /api/v1/players/{player_id}/stats`.
#[derive(Debug, Serialize)]
pub struct PlayerStatsReply {
    pub player_id: String,
    pub total_events: i64,
    pub event_breakdown: BTreeMap<String, i64>,
    /// RFC 3339 time of the player's latest event (null if unknown).
    pub last_event: Option<String>,
    /// `redis` or `postgres`.
    pub source: &'static str,
}

/// The answer of `GET /api/v1/leaderboards/{game_id}`.
#[derive(Debug, Serialize)]
pub struct LeaderboardReply {
    pub game_id: String,
    pub period: &'static str,
    /// The day (`2026-11-22`) or ISO week (`2026-W47`); null for all time.
    pub date: Option<String>,
    pub entries: Vec<Entry>,
    pub source: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Entry {
    pub rank: usize,
    pub player_id: String,
    pub score: i64,
}

/// The query routes, behind `guard` (API keys and rate limit, as ingestion).
pub fn routes(
    state: HttpState,
    guard: impl Filter<Extract = (), Error = warp::Rejection> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static
{
    let stats_state = state.clone();
    let stats = warp::path!("api" / "v1" / "players" / String / "stats")
        .and(warp::get())
        .and(guard.clone())
        .then(move |player_id: String| {
            let state = stats_state.clone();
            async move { respond(player_stats(&state, &player_id).await) }
        });
    let board = warp::path!("api" / "v1" / "leaderboards" / String)
        .and(warp::get())
        .and(guard)
        .and(warp::query::<HashMap<String, String>>())
        .then(move |game_id: String, query: HashMap<String, String>| {
            let state = state.clone();
            async move { respond(leaderboard(&state, &game_id, &query).await) }
        });
    stats.or(board)
}

fn respond<T: Serialize>(result: Result<T, ApiError>) -> warp::reply::Response {
    use warp::Reply;
    match result {
        Ok(body) => warp::reply::json(&body).into_response(),
        Err(e) => error_reply(e.status, &e.message, e.retry_after),
    }
}

/// A path segment, percent-decoded (`player%201` is `player 1`), held to the events'
/// rule for ids (at most `MAX_ID_CHARS` characters, no control characters): any other
/// id names nothing stored, and must not become a Redis key.
fn decode(segment: &str, what: &'static str) -> Result<String, ApiError> {
    let id = percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`{what}` is not valid percent-encoded UTF-8"),
            )
        })?;
    let chars = id.chars().count();
    let refused = if chars > crate::event::MAX_ID_CHARS {
        Some(crate::event::EventError::TooLong { field: what, chars })
    } else if id.chars().any(char::is_control) {
        Some(crate::event::EventError::ControlCharacter(what))
    } else {
        None
    };
    match refused {
        Some(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, e.to_string())),
        None => Ok(id),
    }
}

/// The stores, or 503 in a process that does not consume (it has neither).
fn stores(
    state: &HttpState,
) -> Result<(&sqlx::PgPool, Option<&crate::sinks::redis::RedisPool>), ApiError> {
    let pg = state.postgres.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queries are answered by daemons in consume mode (this one only ingests)",
        )
    })?;
    Ok((pg, state.redis.as_ref()))
}

/// 503 with `http.retry_after`, as ingestion answers when its store is away.
fn unavailable(state: &HttpState, e: sqlx::Error) -> ApiError {
    tracing::warn!(error = %e, "query: postgres failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the statistics stores are unavailable; try again shortly",
    )
    .retry_after(super::guard::retry_after_seconds(
        state.config.http.retry_after,
    ))
}

async fn player_stats(state: &HttpState, raw_id: &str) -> Result<PlayerStatsReply, ApiError> {
    let player_id = decode(raw_id, "player_id")?;
    let (pg, redis) = stores(state)?;
    let keys = RedisKeys::new(state.config.redis.key_prefix.clone());
    if let Some(pool) = redis {
        let found = redis_read(pool, state, |mut conn| {
            let keys = keys.clone();
            let player_id = player_id.clone();
            async move { redis_stats::read(&mut conn, &keys, &player_id).await }
        })
        .await;
        if let Some(Some(stats)) = found {
            return Ok(stats_reply(stats, "redis"));
        }
    }
    match pg_stats::read(pg, &player_id)
        .await
        .map_err(|e| unavailable(state, e))?
    {
        Some(stats) => Ok(stats_reply(stats, "postgres")),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no statistics for player {player_id:?}"),
        )),
    }
}

fn stats_reply(stats: PlayerStats, source: &'static str) -> PlayerStatsReply {
    PlayerStatsReply {
        player_id: stats.player_id,
        total_events: stats.total_events,
        event_breakdown: stats.event_breakdown,
        last_event: stats.last_event.map(last_event_text),
        source,
    }
}

/// One Redis read, bounded by `redis.timeout`; None (and a log line) if Redis fails,
/// so that the caller falls back to Postgres.
async fn redis_read<T, F, Fut>(
    pool: &crate::sinks::redis::RedisPool,
    state: &HttpState,
    read: F,
) -> Option<T>
where
    F: FnOnce(redis::aio::MultiplexedConnection) -> Fut,
    Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
{
    let timeout = state.config.redis.timeout;
    let attempt = async {
        let conn = crate::sinks::redis::connection(pool, timeout)
            .await
            .map_err(|e| e.to_string())?;
        read(conn).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "query: redis failed; answering from postgres");
            None
        }
        Err(_) => {
            tracing::warn!(timeout = ?timeout, "query: redis did not answer; answering from postgres");
            None
        }
    }
}

/// The validated query string of a leaderboard request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardQuery {
    pub key: PeriodKey,
    pub limit: usize,
}

/// Reads `period`, `date` and `limit`, with the defaults and bounds of the config.
pub fn board_query(
    query: &HashMap<String, String>,
    now: chrono::DateTime<chrono::Utc>,
    default_limit: usize,
    max_limit: usize,
) -> Result<BoardQuery, String> {
    let period: Period = match query.get("period") {
        None => Period::AllTime,
        Some(p) => p.parse().map_err(|e: PeriodError| e.to_string())?,
    };
    let key = match query.get("date") {
        None => PeriodKey::of(period, now),
        Some(date) => PeriodKey::parse(period, date).map_err(|e| e.to_string())?,
    };
    let limit = match query.get("limit") {
        None => default_limit,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=max_limit).contains(&n) => n,
            _ => {
                return Err(format!(
                    "`limit` must be a whole number from 1 to {max_limit}; got {raw:?}"
                ));
            }
        },
    };
    Ok(BoardQuery { key, limit })
}

async fn leaderboard(
    state: &HttpState,
    raw_id: &str,
    query: &HashMap<String, String>,
) -> Result<LeaderboardReply, ApiError> {
    let game_id = decode(raw_id, "game_id")?;
    let config = &state.config.leaderboard;
    let BoardQuery { key, limit } = board_query(
        query,
        chrono::Utc::now(),
        config.query_default_limit,
        config.query_max_limit,
    )
    .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, message))?;
    let (pg, redis) = stores(state)?;
    let reply = |entries: Vec<Ranked>, source| LeaderboardReply {
        game_id: game_id.clone(),
        period: key.period().as_str(),
        date: (key != PeriodKey::AllTime).then(|| key.to_string()),
        entries: entries
            .into_iter()
            .enumerate()
            .map(|(i, r)| Entry {
                rank: i + 1,
                player_id: r.player_id,
                score: r.score,
            })
            .collect(),
        source,
    };
    if let Some(pool) = redis {
        // The dated key: complete for its period, current or past (within period_ttl).
        let redis_key =
            RedisKeys::new(state.config.redis.key_prefix.clone()).leaderboard_of(&game_id, key);
        let found = redis_read(pool, state, |mut conn| async move {
            redis_leaderboard::top(&mut conn, &redis_key, limit).await
        })
        .await;
        if let Some(entries) = found.filter(|e| !e.is_empty()) {
            return Ok(reply(entries, "redis"));
        }
    }
    let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
    let entries = pg_leaderboard::top(pg, &game_id, key, limit_sql)
        .await
        .map_err(|e| unavailable(state, e))?;
    if entries.is_empty()
        && !pg_leaderboard::game_exists(pg, &game_id)
            .await
            .map_err(|e| unavailable(state, e))?
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no scores for game {game_id:?}"),
        ));
    }
    Ok(reply(entries, "postgres"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2027-01-01T12:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc)
    }

    #[test]
    fn defaults_and_bounds() {
        let parse = |pairs: &[(&str, &str)]| board_query(&q(pairs), now(), 10, 100);
        assert_eq!(
            parse(&[]),
            Ok(BoardQuery {
                key: PeriodKey::AllTime,
                limit: 10
            })
        );
        let daily = parse(&[("period", "daily"), ("limit", "100")]).expect("valid");
        assert_eq!(
            (daily.key.to_string(), daily.limit),
            ("2027-01-01".to_owned(), 100)
        );
        let weekly = parse(&[("period", "weekly")]).expect("valid");
        assert_eq!(weekly.key.to_string(), "2026-W53", "current ISO week");
        let dated = parse(&[("period", "weekly"), ("date", "2026-11-22")]).expect("valid");
        assert_eq!(dated.key.to_string(), "2026-W47");
    }

    #[test]
    fn bad_parameters_say_what_is_wrong() {
        let err =
            |pairs: &[(&str, &str)]| board_query(&q(pairs), now(), 10, 100).expect_err("invalid");
        assert!(err(&[("period", "monthly")]).contains("`period`"));
        assert!(err(&[("period", "daily"), ("date", "2026-13-01")]).contains("`date`"));
        assert!(err(&[("date", "2026-11-22")]).contains("all-time board has no `date`"));
        assert!(err(&[("limit", "0")]).contains("`limit`"));
        assert!(err(&[("limit", "101")]).contains("1 to 100"));
        assert!(err(&[("limit", "ten")]).contains("\"ten\""));
    }

    #[test]
    fn openapi_fragment_describes_both_routes_and_their_answers() {
        let doc: serde_json::Value =
            serde_json::from_str(OPENAPI_FRAGMENT).expect("the fragment is JSON");
        for path in [
            "/api/v1/players/{player_id}/stats",
            "/api/v1/leaderboards/{game_id}",
        ] {
            let get = &doc["paths"][path]["get"];
            for status in ["200", "400", "404", "503"] {
                assert!(get["responses"][status].is_object(), "{path} {status}");
            }
        }
        let schemas = &doc["components"]["schemas"];
        let fields = |name: &str| -> Vec<String> {
            schemas[name]["required"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|f| f.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        // The schemas list exactly the fields the handlers serialize.
        let stats = serde_json::to_value(PlayerStatsReply {
            player_id: "p".into(),
            total_events: 1,
            event_breakdown: BTreeMap::new(),
            last_event: None,
            source: "redis",
        })
        .expect("json");
        let board = serde_json::to_value(LeaderboardReply {
            game_id: "g".into(),
            period: "daily",
            date: None,
            entries: vec![Entry {
                rank: 1,
                player_id: "p".into(),
                score: 3,
            }],
            source: "redis",
        })
        .expect("json");
        for (name, value) in [
            ("PlayerStats", &stats),
            ("Leaderboard", &board),
            ("LeaderboardEntry", &board["entries"][0]),
        ] {
            let mut keys: Vec<String> = value
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            let mut required = fields(name);
            keys.sort();
            required.sort();
            assert_eq!(keys, required, "{name}");
        }
    }

    #[test]
    fn path_segments_are_decoded() {
        assert_eq!(
            decode("player%201%2Fx", "player_id").ok(),
            Some("player 1/x".to_owned())
        );
        assert!(decode("%ff", "player_id").is_err());
        assert!(decode(&"é".repeat(100), "player_id").is_ok());
        assert!(decode(&"a".repeat(101), "player_id").is_err());
        assert!(decode("p%0Aflushall", "player_id").is_err());
    }
}
