//! Exponential backoff for transient failures (a broker, database or Redis that is
//! briefly away). Permanent failures are not retried: they are dead-lettered.

use std::time::Duration;

/// Doubling delays from `initial` up to `max`, with ±20% jitter so that many readers
/// retrying at once do not hit a recovering service in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    /// Consecutive failures so far.
    pub attempts: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
            attempts: 0,
        }
    }

    /// The delay before the next attempt; each call doubles the one after it.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        self.attempts += 1;
        let jitter = 0.8 + 0.4 * rand::random::<f64>();
        base.mul_f64(jitter).min(self.max)
    }

    /// Back to the first delay after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert!((80..=120).contains(&delays[0]), "{delays:?}");
        assert!((160..=240).contains(&delays[1]), "{delays:?}");
        assert!(delays[3..].iter().all(|d| *d <= 500), "{delays:?}");
        assert_eq!(b.attempts, 5);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
