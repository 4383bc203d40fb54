//! Protection of the ingest endpoints: API keys and the per-client rate limit.
//!
//! ```text
//! request ─► Authorization: Bearer <key> ─► known key? ──no──► 401
//!                                              │ yes (or no keys configured: open)
//!                                              ▼
//!            token bucket of the key (or of the peer address when open) ──empty──► 429
//! ```
//!
//! Health, readiness, metrics and the OpenAPI document are not guarded: probes and
//! scrapers carry no keys and must not be throttled by client traffic.

use std::time::{Duration, Instant};

use super::body::RequestHead;
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
}

/// `Retry-After` in whole seconds, rounded up and at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

/// The API keys and the rate limiter of one server.
pub struct Guard {
    keys: Vec<Secret>,
    limiter: Option<RateLimiter>,
}

impl Guard {
    pub fn new(config: &HttpConfig) -> Self {
        Self {
            keys: config.api_keys.clone(),
            limiter: RateLimiter::new(
                config.rate_limit_per_second,
                config.rate_limit_burst,
                config.rate_limit_max_clients,
            ),
        }
    }

    /// Admits the request or says why not.
    pub fn check(&self, head: &RequestHead) -> Result<(), Refusal> {
        let client = self.authenticate(head)?;
        match &self.limiter {
            None => Ok(()),
            Some(limiter) => match limiter.check(client, Instant::now()) {
                Decision::Allow => Ok(()),
                Decision::Deny { retry_after } => Err(Refusal::RateLimited { retry_after }),
            },
        }
    }

    /// Who the request counts against: its key, or its address when the server is open.
    fn authenticate(&self, head: &RequestHead) -> Result<ClientKey, Refusal> {
        if self.keys.is_empty() {
            return Ok(head
                .remote
                .map_or(ClientKey::Anonymous, |addr| ClientKey::Address(addr.ip())));
        }
        let token = head
            .authorization
            .as_deref()
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
        found.map(ClientKey::ApiKey).ok_or(Refusal::WrongKey)
    }
}

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
        }
    }

    fn head(authorization: Option<&str>) -> RequestHead {
        RequestHead {
            content_type: None,
            content_length: None,
            authorization: authorization.map(str::to_owned),
            remote: Some("127.0.0.1:1234".parse().expect("address")),
            trace_context: Default::default(),
        }
    }

    #[test]
    fn open_server_admits_anyone() {
        assert_eq!(guard(&[], 0).check(&head(None)), Ok(()));
    }

    #[test]
    fn keys_are_required_and_checked() {
        let g = guard(&["k1", "k2"], 0);
        assert_eq!(g.check(&head(None)), Err(Refusal::MissingKey));
        assert_eq!(g.check(&head(Some("Basic k1"))), Err(Refusal::MissingKey));
        assert_eq!(g.check(&head(Some("Bearer nope"))), Err(Refusal::WrongKey));
        assert_eq!(g.check(&head(Some("Bearer k2"))), Ok(()));
        assert_eq!(g.check(&head(Some("bearer  k1 "))), Ok(()));
    }

    #[test]
    fn rate_limit_is_per_key() {
        let g = guard(&["k1", "k2"], 1);
        assert_eq!(g.check(&head(Some("Bearer k1"))), Ok(()));
        assert!(matches!(
            g.check(&head(Some("Bearer k1"))),
            Err(Refusal::RateLimited { .. })
        ));
        assert_eq!(g.check(&head(Some("Bearer k2"))), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(3)), 3);
    }
}
