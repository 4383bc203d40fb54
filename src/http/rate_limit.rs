//! Token-bucket rate limiting per client (an API key, or an address when the server
//! is open), with bounded memory.
//!
//! Each client's bucket holds up to `burst` tokens and refills at `rate` per second; a
//! request takes one token or is refused with the time until the next one. A bucket
//! that has been idle long enough to be full again carries no information (a fresh
//! bucket is full too), so such buckets are swept away. At most `max_clients` buckets
//! are kept: past that, new clients share one overflow bucket until a sweep makes room,
//! so a flood of distinct addresses costs a bounded amount of memory (and gets one
//! client's rate between them).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Fewest buckets before a sweep is considered; below it, sweeping costs more than the
/// memory it frees.
const SWEEP_FLOOR: usize = 1024;

/// Who a request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// The index of the API key in `http.api_keys` (the key itself is never stored).
    ApiKey(usize),
    /// The peer address, when the server is open.
    Address(IpAddr),
    /// No key and no address known.
    Anonymous,
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Allow,
    /// Refused; a token is available again after this long.
    Deny {
        retry_after: Duration,
    },
}

/// The buckets of every client.
pub struct RateLimiter {
    /// Tokens added per second.
    rate: f64,
    /// Bucket size.
    burst: f64,
    max_clients: usize,
    /// A std mutex, not a tokio one: it is held for a few arithmetic operations and
    /// never across an `.await`.
    buckets: Mutex<Buckets>,
}

struct Buckets {
    clients: HashMap<ClientKey, Bucket>,
    /// Shared by clients that arrive while `clients` is at `max_clients`.
    overflow: Bucket,
    /// Size of `clients` at which the next sweep runs.
    sweep_at: usize,
    /// No bucket can have become idle before this instant (computed by the last sweep),
    /// so a full map is not rescanned for every newcomer.
    sweep_not_before: Instant,
}

impl Buckets {
    /// Drops every idle bucket and notes when the next one can become idle.
    fn sweep(&mut self, rate: f64, burst: f64, now: Instant, max_clients: usize) {
        let mut next_idle: Option<Instant> = None;
        self.clients.retain(|_, bucket| {
            if bucket.is_idle(rate, burst, now) {
                return false;
            }
            let at = bucket.idle_at(rate, burst);
            next_idle = Some(next_idle.map_or(at, |t| t.min(at)));
            true
        });
        self.sweep_at = (self.clients.len() * 2).clamp(SWEEP_FLOOR.min(max_clients), max_clients);
        self.sweep_not_before = next_idle.unwrap_or(now);
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            updated: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.updated = now;
    }

    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Decision {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Decision::Allow
        } else {
            Decision::Deny {
                retry_after: Duration::from_secs_f64((1.0 - self.tokens) / rate),
            }
        }
    }

    /// When the bucket will be full again if nobody uses it.
    fn idle_at(&self, rate: f64, burst: f64) -> Instant {
        self.updated + Duration::from_secs_f64(((burst - self.tokens) / rate).max(0.0))
    }

    /// Whether the bucket would be full by `now`, i.e. is indistinguishable from a new one.
    fn is_idle(&self, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * rate >= burst
    }
}

impl RateLimiter {
    /// A limiter of `per_second` requests per second with bursts of `burst`, or `None`
    /// when `per_second` is 0 (unlimited).
    pub fn new(per_second: u32, burst: u32, max_clients: usize) -> Option<Self> {
        Self::with_rate(f64::from(per_second), burst, max_clients)
    }

    /// A limiter of `per_second` (which may be a fraction) requests per second, or
    /// `None` when it is not above 0.
    pub fn with_rate(per_second: f64, burst: u32, max_clients: usize) -> Option<Self> {
        if per_second.is_nan() || per_second <= 0.0 {
            return None;
        }
        let burst = f64::from(burst.max(1));
        Some(Self {
            rate: per_second,
            burst,
            max_clients: max_clients.max(1),
            buckets: Mutex::new(Buckets {
                clients: HashMap::new(),
                overflow: Bucket::full(burst, Instant::now()),
                sweep_at: SWEEP_FLOOR.min(max_clients.max(1)),
                sweep_not_before: Instant::now(),
            }),
        })
    }

    /// Takes a token for `client` at `now`.
    pub fn check(&self, client: ClientKey, now: Instant) -> Decision {
        let (rate, burst) = (self.rate, self.burst);
        // A poisoned lock only means another request panicked mid-update of plain
        // numbers; the buckets are still usable.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(bucket) = buckets.clients.get_mut(&client) {
            return bucket.take(rate, burst, now);
        }
        if buckets.clients.len() >= buckets.sweep_at {
            if now >= buckets.sweep_not_before {
                buckets.sweep(rate, burst, now, self.max_clients);
            }
            if buckets.clients.len() >= self.max_clients {
                return buckets.overflow.take(rate, burst, now);
            }
        }
        let mut bucket = Bucket::full(burst, now);
        let decision = bucket.take(rate, burst, now);
        buckets.clients.insert(client, bucket);
        decision
    }

    /// Whether `client`'s bucket is empty at `now` (then how long until a token is
    /// back), without taking a token. A client without a bucket is not blocked.
    pub fn blocked(&self, client: ClientKey, now: Instant) -> Option<Duration> {
        let (rate, burst) = (self.rate, self.burst);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = buckets.clients.get_mut(&client)?;
        bucket.refill(rate, burst, now);
        (bucket.tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
    }

    /// Buckets currently kept.
    #[cfg(test)]
    fn tracked_clients(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clients
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> ClientKey {
        ClientKey::Address(IpAddr::from(i.to_be_bytes()))
    }

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(2, 3, 10).expect("limited");
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check(ClientKey::ApiKey(0), t0), Decision::Allow);
        }
        let Decision::Deny { retry_after } = limiter.check(ClientKey::ApiKey(0), t0) else {
            panic!("the fourth request in the same instant is refused");
        };
        assert_eq!(retry_after, Duration::from_millis(500));
        // Another client has its own bucket.
        assert_eq!(limiter.check(ClientKey::ApiKey(1), t0), Decision::Allow);
        // Half a second later one token (2/s) is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(limiter.check(ClientKey::ApiKey(0), t1), Decision::Allow);
        assert!(matches!(
            limiter.check(ClientKey::ApiKey(0), t1),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn zero_rate_means_unlimited() {
        assert!(RateLimiter::new(0, 10, 10).is_none());
    }

    #[test]
    fn idle_buckets_are_evicted_and_memory_is_bounded() {
        let max = 2 * SWEEP_FLOOR;
        let limiter = RateLimiter::new(10, 1, max).expect("limited");
        let t0 = Instant::now();
        for i in 0..(4 * max as u32) {
            limiter.check(addr(i), t0);
        }
        assert!(
            limiter.tracked_clients() <= max,
            "{}",
            limiter.tracked_clients()
        );
        // The overflow clients shared one bucket of burst 1: all but one were refused.
        // After the buckets have refilled (1 token at 10/s: 100 ms), a newcomer's sweep
        // frees them all.
        let later = t0 + Duration::from_millis(200);
        assert_eq!(limiter.check(addr(u32::MAX), later), Decision::Allow);
        assert_eq!(limiter.tracked_clients(), 1);
    }

    #[test]
    fn overflow_clients_share_one_bucket() {
        let limiter = RateLimiter::new(1, 1, 1).expect("limited");
        let t0 = Instant::now();
        assert_eq!(limiter.check(addr(1), t0), Decision::Allow);
        // addr(1) is not idle (its token is spent), so addr(2) and addr(3) overflow.
        assert_eq!(limiter.check(addr(2), t0), Decision::Allow);
        assert!(matches!(limiter.check(addr(3), t0), Decision::Deny { .. }));
        assert_eq!(limiter.tracked_clients(), 1);
    }
}
