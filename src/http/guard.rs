//! Protection of the ingest and query endpoints: API keys, the per-client rate limit,
//! and the limit on failed authentications per client address.
//!
//! ```text
//! request ─► client address out of failed-auth allowance? ──yes──► 429
//!            │ no
//!            ▼
//!            Authorization: Bearer <key> ─► known key? ──no──► 401 (takes one of the
//!                                              │ yes             address's allowance)
//!                                              │ (or no keys configured: open)
//!                                              ▼
//!            token bucket of the key (or of the client address when open) ──empty──► 429
//! ```
//!
//! Health, readiness, metrics and the OpenAPI document are not guarded: probes and
//! scrapers carry no keys and must not be throttled by client traffic.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use warp::Filter;
use warp::http::StatusCode;

use super::rate_limit::{ClientKey, Decision, RateLimiter};
use crate::config::{HttpConfig, Secret};

/// Why a request was refused before its body was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("an API key is required: send `Authorization: Bearer <key>`")]
    MissingKey,
    #[error("the API key is not valid")]
    WrongKey,
    #[error("rate limit exceeded: retry in {}s", retry_after_seconds(*retry_after))]
    RateLimited { retry_after: Duration },
    #[error(
        "too many failed authentications from this address: retry in {}s",
        retry_after_seconds(*retry_after)
    )]
    TooManyFailures { retry_after: Duration },
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::MissingKey | Refusal::WrongKey => StatusCode::UNAUTHORIZED,
            Refusal::RateLimited { .. } | Refusal::TooManyFailures { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
        }
    }

    /// The JSON error answer: 401 with `WWW-Authenticate`, or 429 with `Retry-After`.
    pub fn reply(&self) -> warp::reply::Response {
        let mut response =
            super::rejection::error_reply(self.status(), &self.to_string(), self.retry_after());
        if self.status() == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                warp::http::header::WWW_AUTHENTICATE,
                warp::http::HeaderValue::from_static("Bearer realm=\"gamestream\""),
            );
        }
        response
    }

    /// `Retry-After` seconds of a 429.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Refusal::RateLimited { retry_after } | Refusal::TooManyFailures { retry_after } => {
                Some(retry_after_seconds(*retry_after))
            }
            Refusal::MissingKey | Refusal::WrongKey => None,
        }
    }
}

/// `Retry-After` in whole seconds, rounded up and at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

/// The API keys and the rate limiters of one server.
pub struct Guard {
    keys: Vec<Secret>,
    limiter: Option<RateLimiter>,
    /// Failed authentications per client address (only with keys).
    failures: Option<RateLimiter>,
}

impl Guard {
    pub fn new(config: &HttpConfig) -> Self {
        let per_minute = config.auth_failures_per_minute;
        Self {
            keys: config.api_keys.clone(),
            limiter: RateLimiter::new(
                config.rate_limit_per_second,
                config.rate_limit_burst,
                config.rate_limit_max_clients,
            ),
            failures: if config.api_keys.is_empty() {
                None
            } else {
                RateLimiter::with_rate(
                    f64::from(per_minute) / 60.0,
                    per_minute,
                    config.rate_limit_max_clients,
                )
            },
        }
    }

    /// Admits a request with this `Authorization` header from `client`, or says why not.
    pub fn check(
        &self,
        authorization: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<(), Refusal> {
        let now = Instant::now();
        let source = client.map_or(ClientKey::Anonymous, ClientKey::Address);
        if let Some(failures) = &self.failures
            && let Some(retry_after) = failures.blocked(source, now)
        {
            return Err(Refusal::TooManyFailures { retry_after });
        }
        let counted = match self.authenticate(authorization) {
            Ok(Some(key)) => key,
            Ok(None) => source,
            Err(refusal) => {
                if let Some(failures) = &self.failures {
                    failures.check(source, now);
                }
                metrics::counter!("http_auth_failures_total").increment(1);
                return Err(refusal);
            }
        };
        match &self.limiter {
            None => Ok(()),
            Some(limiter) => match limiter.check(counted, now) {
                Decision::Allow => Ok(()),
                Decision::Deny { retry_after } => Err(Refusal::RateLimited { retry_after }),
            },
        }
    }

    /// The key the request presents (None: the server is open), or why it is refused.
    fn authenticate(&self, authorization: Option<&str>) -> Result<Option<ClientKey>, Refusal> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let token = authorization
            .and_then(bearer_token)
            .ok_or(Refusal::MissingKey)?;
        // Every key is compared in full, whatever matches, so the time taken does not
        // tell an attacker how close a guess was.
        let mut found = None;
        for (index, key) in self.keys.iter().enumerate() {
            if constant_time_eq(token.as_bytes(), key.expose().as_bytes()) {
                found = Some(index);
            }
        }
        found
            .map(|index| Some(ClientKey::ApiKey(index)))
            .ok_or(Refusal::WrongKey)
    }

    /// A filter admitting requests that pass [`Guard::check`], rejecting the others
    /// with the JSON error (401, 429 with `Retry-After`).
    pub fn filter(
        self: std::sync::Arc<Self>,
        client: warp::filters::BoxedFilter<(Option<IpAddr>,)>,
    ) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone + Send + Sync + 'static {
        let guard = self;
        warp::header::optional::<String>("authorization")
            .and(client)
            .and_then(
                move |authorization: Option<String>, client: Option<IpAddr>| {
                    let verdict = guard.check(authorization.as_deref(), client);
                    async move { verdict.map_err(|refusal| warp::reject::custom(Refused(refusal))) }
                },
            )
            .untuple_one()
    }
}

/// The rejection of a request the guard refused; `recover` answers it with
/// [`Refusal::reply`].
#[derive(Debug)]
pub struct Refused(pub Refusal);

impl warp::reject::Reject for Refused {}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Equality whose time depends only on the lengths, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(keys: &[&str], per_second: u32) -> Guard {
        Guard {
            keys: keys.iter().map(|k| Secret::new(*k)).collect(),
            limiter: RateLimiter::new(per_second, 1, 10),
            failures: RateLimiter::with_rate(3.0 / 60.0, 3, 10),
        }
    }

    fn check(g: &Guard, authorization: Option<&str>) -> Result<(), Refusal> {
        g.check(authorization, Some("127.0.0.1".parse().expect("ip")))
    }

    #[test]
    fn open_server_admits_anyone() {
        let mut g = guard(&[], 0);
        g.failures = None;
        assert_eq!(check(&g, None), Ok(()));
    }

    #[test]
    fn keys_are_required_and_checked() {
        let mut g = guard(&["k1", "k2"], 0);
        g.failures = None;
        assert_eq!(check(&g, None), Err(Refusal::MissingKey));
        assert_eq!(check(&g, Some("Basic k1")), Err(Refusal::MissingKey));
        assert_eq!(check(&g, Some("Bearer nope")), Err(Refusal::WrongKey));
        assert_eq!(check(&g, Some("Bearer k2")), Ok(()));
        assert_eq!(check(&g, Some("bearer  k1 ")), Ok(()));
    }

    #[test]
    fn failed_authentications_are_limited_per_address() {
        let g = guard(&["k1"], 0);
        for _ in 0..3 {
            assert_eq!(check(&g, Some("Bearer guess")), Err(Refusal::WrongKey));
        }
        // The allowance is spent: even the right key is refused from this address, so
        // guessing learns nothing more.
        assert!(matches!(
            check(&g, Some("Bearer k1")),
            Err(Refusal::TooManyFailures { .. })
        ));
        assert_eq!(
            g.check(Some("Bearer k1"), Some("127.0.0.2".parse().expect("ip"))),
            Ok(()),
            "another address is not affected"
        );
    }

    #[test]
    fn rate_limit_is_per_key() {
        let g = guard(&["k1", "k2"], 1);
        assert_eq!(check(&g, Some("Bearer k1")), Ok(()));
        assert!(matches!(
            check(&g, Some("Bearer k1")),
            Err(Refusal::RateLimited { .. })
        ));
        assert_eq!(check(&g, Some("Bearer k2")), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(3)), 3);
    }
}
