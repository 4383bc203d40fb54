//! Duplicate verdicts from the log alone: which records of a partition repeat an earlier
//! one, so that every sink skips them.
//!
//! A client that got no 2xx (a 503, a timeout, a dropped connection) resends its event
//! with the same `event_id`; the first attempt may have been appended anyway. The rule:
//!
//! > a record is a **duplicate** if an earlier record of the same partition with the same
//! > key lies at most `dedupe.max_records` offsets back and its Kafka timestamp is at
//! > most `dedupe.window` earlier.
//!
//! The key is the event's `event_id`; for a record that `gamestream dlq replay`
//! published, it is the dead letter it replays (header `dlq_replay_of`), so a replay
//! repeated after a crash is a duplicate of the first, while the replay itself is not a
//! duplicate of the original event. Records that are not valid events have no key and
//! are never duplicates (they are dead-lettered once by their sink, by offset).
//!
//! The verdict of a record depends only on the records before it in the partition
//! (at most `max_records` of them), so every reader that has seen those records decides
//! the same way: after a restart, a take-over by another daemon, an `offsets reset`, or
//! for a sink catching up from its own cursor. A reader that starts at offset `s` first
//! reads `[s - max_records, s)` into its window ([`DedupeWindow::observe`] without
//! using the verdicts). No store is involved, so emptying Redis changes nothing.
//!
//! Memory: one map entry and one queue entry per record in the window: at most
//! [`ENTRY_BYTES`] (228) per record with the tables' slack, so `max_records ×
//! ENTRY_BYTES` per partition (~23 MB at the default 100,000; ~15 MB measured);
//! [`DedupeWindow::memory_bytes`] reports what the tables hold.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use uuid::Uuid;

/// Bytes one record of a full window may hold: the map entry (key, offset, timestamp:
/// 40 bytes, plus a control byte) in a hash table that, with entries evicted and
/// inserted all the time, holds up to four times as many slots as entries before it
/// rehashes, and the eviction queue's entry (32 bytes, up to twice). Measured: 180
/// bytes per record in the unit test's steady state; the daemon's peak RSS grew by
/// 44–48 MB with three full windows of 100,000 (~150 bytes per record).
pub const ENTRY_BYTES: usize = 4 * (40 + 1) + 2 * 32;

/// What identifies a record for the duplicate verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DedupeKey {
    /// An event, by its `event_id`.
    Event(Uuid),
    /// A record republished by `dlq replay`, by the dead letter's id.
    Replay(i64),
}

/// The records of one partition's window, by key, in offset order.
#[derive(Debug)]
pub struct DedupeWindow {
    max_records: i64,
    window_ms: i64,
    /// Each key's latest occurrence: its offset and Kafka timestamp (ms).
    latest: HashMap<DedupeKey, (i64, i64)>,
    /// Every observed record with a key, in offset order, for eviction.
    order: VecDeque<(i64, DedupeKey)>,
}

impl DedupeWindow {
    pub fn new(max_records: u64, window: Duration) -> Self {
        Self {
            max_records: i64::try_from(max_records).unwrap_or(i64::MAX),
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            latest: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The first offset a reader starting at `start` must read into the window so that
    /// its verdicts equal those of a reader that has been running all along.
    pub fn preload_from(&self, start: i64) -> i64 {
        start.saturating_sub(self.max_records).max(0)
    }

    /// Observes the record at `offset` (records must come in increasing offset order)
    /// and says whether it is a duplicate of an earlier one.
    pub fn observe(&mut self, offset: i64, key: Option<DedupeKey>, timestamp_ms: i64) -> bool {
        self.evict_before(offset.saturating_sub(self.max_records));
        let Some(key) = key else {
            return false;
        };
        let duplicate = self.latest.get(&key).is_some_and(|&(earlier, at)| {
            offset - earlier <= self.max_records
                && timestamp_ms.saturating_sub(at) <= self.window_ms
        });
        // The latest occurrence stays the one to compare with: a duplicate is a record of
        // the log too, and the next repeat may be within reach of it only.
        self.latest.insert(key, (offset, timestamp_ms));
        self.order.push_back((offset, key));
        duplicate
    }

    /// Records in the window.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Bytes the window's tables hold (their capacity, not only their entries).
    pub fn memory_bytes(&self) -> usize {
        let map_entry = std::mem::size_of::<(DedupeKey, (i64, i64))>() + 1;
        let queue_entry = std::mem::size_of::<(i64, DedupeKey)>();
        self.latest.capacity() * map_entry + self.order.capacity() * queue_entry
    }

    fn evict_before(&mut self, first_kept: i64) {
        while let Some(&(offset, key)) = self.order.front() {
            if offset >= first_kept {
                break;
            }
            self.order.pop_front();
            if self.latest.get(&key).is_some_and(|&(at, _)| at == offset) {
                self.latest.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;

    fn id(n: u128) -> Option<DedupeKey> {
        Some(DedupeKey::Event(Uuid::from_u128(n)))
    }

    #[test]
    fn a_repeat_within_the_window_is_a_duplicate() {
        let mut window = DedupeWindow::new(100, Duration::from_secs(300));
        assert!(!window.observe(0, id(1), 0));
        assert!(!window.observe(1, id(2), 10));
        assert!(
            window.observe(2, id(1), 4 * MINUTE),
            "4 minutes later, 2 records back"
        );
        assert!(
            window.observe(3, id(1), 4 * MINUTE + 1),
            "a second resend too"
        );
        assert!(!window.observe(4, None, 0), "no key, never a duplicate");
    }

    #[test]
    fn the_time_boundary_is_inclusive() {
        let mut window = DedupeWindow::new(100, Duration::from_secs(300));
        window.observe(0, id(1), 0);
        assert!(window.observe(1, id(1), 5 * MINUTE), "exactly the window");
        let mut window = DedupeWindow::new(100, Duration::from_secs(300));
        window.observe(0, id(1), 0);
        assert!(!window.observe(1, id(1), 5 * MINUTE + 1), "one ms past it");
    }

    #[test]
    fn the_offset_boundary_is_inclusive() {
        let mut window = DedupeWindow::new(3, Duration::from_secs(300));
        window.observe(10, id(1), 0);
        window.observe(11, id(2), 0);
        window.observe(12, id(3), 0);
        assert!(window.observe(13, id(1), 0), "3 offsets back");
        let mut window = DedupeWindow::new(3, Duration::from_secs(300));
        window.observe(10, id(1), 0);
        window.observe(12, id(3), 0);
        assert!(
            !window.observe(14, id(1), 0),
            "4 offsets back (a gap counts)"
        );
        assert!(window.len() <= 3, "evicted: {}", window.len());
    }

    #[test]
    fn a_repeat_counts_from_the_latest_occurrence() {
        let mut window = DedupeWindow::new(2, Duration::from_secs(300));
        window.observe(0, id(1), 0);
        window.observe(2, id(1), 0); // duplicate of 0
        assert!(window.observe(4, id(1), 0), "within reach of offset 2");
    }

    #[test]
    fn a_replay_is_keyed_by_its_letter_not_by_its_event() {
        let mut window = DedupeWindow::new(100, Duration::from_secs(300));
        window.observe(0, id(1), 0);
        assert!(!window.observe(1, Some(DedupeKey::Replay(7)), 0));
        assert!(
            window.observe(2, Some(DedupeKey::Replay(7)), 0),
            "replayed twice"
        );
        assert!(!window.observe(3, Some(DedupeKey::Replay(8)), 0));
    }

    #[test]
    fn a_reader_started_later_decides_as_one_that_ran_all_along() {
        // A log with repeats at various distances.
        let log: Vec<(i64, Option<DedupeKey>, i64)> = (0..400)
            .map(|o: i64| (o, id((o % 37 * 7 + o / 150) as u128), o * 1_000))
            .collect();
        let settings = (50u64, Duration::from_secs(40));
        let mut all_along = DedupeWindow::new(settings.0, settings.1);
        let verdicts: Vec<bool> = log
            .iter()
            .map(|&(o, k, t)| all_along.observe(o, k, t))
            .collect();
        assert!(verdicts.iter().any(|d| *d) && verdicts.iter().any(|d| !*d));
        for start in [0, 1, 49, 50, 51, 120, 399] {
            let mut restarted = DedupeWindow::new(settings.0, settings.1);
            let from = restarted.preload_from(start) as usize;
            for &(o, k, t) in &log[from..start as usize] {
                restarted.observe(o, k, t);
            }
            for &(o, k, t) in &log[start as usize..] {
                assert_eq!(
                    restarted.observe(o, k, t),
                    verdicts[o as usize],
                    "offset {o} after a start at {start}"
                );
            }
        }
    }

    #[test]
    fn memory_is_bounded_by_max_records() {
        let mut window = DedupeWindow::new(1_000, Duration::from_secs(300));
        for o in 0..10_000 {
            window.observe(o, id(o as u128), 0);
        }
        assert!(window.len() <= 1_001, "{}", window.len());
        assert!(window.latest.len() <= 1_001);
        assert!(
            window.memory_bytes() <= 1_001 * ENTRY_BYTES,
            "{} bytes for {} records",
            window.memory_bytes(),
            window.len()
        );
    }
}
