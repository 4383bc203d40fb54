//! Per-player counts of a batch: what one flush adds to `player_statistics` and to
//! the `player_stats:{player_id}` hashes.
//!
//! The old aggregator wrote each flush's partial count over the stored total; here a
//! flush only ever *adds* its delta, and the offsets committed with it make sure each
//! delta is added once.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Datelike, SubsecRound, Timelike, Utc};

use crate::event::Event;

/// Sub-second digits kept for `last_event`: PostgreSQL stores microseconds, so a
/// Redis hash rebuilt from Postgres shows the very same text.
pub const LAST_EVENT_SUBSEC_DIGITS: u16 = 6;

/// What a batch adds to one player's statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayerDelta<'a> {
    /// Events of the player in the batch.
    pub total: i64,
    /// Events per type; sums to `total`.
    pub breakdown: BTreeMap<&'a str, i64>,
    /// The latest event time among them, truncated to microseconds.
    pub last_event: DateTime<Utc>,
}

/// What a batch adds, per player, ordered by player id (the order rows are locked
/// in, so that concurrent writers never deadlock on each other).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsDelta<'a> {
    players: BTreeMap<&'a str, PlayerDelta<'a>>,
}

impl<'a> StatsDelta<'a> {
    /// Counts `events` per player and type.
    pub fn of(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut players: BTreeMap<&'a str, PlayerDelta<'a>> = BTreeMap::new();
        for event in events {
            let at = event.timestamp.trunc_subsecs(LAST_EVENT_SUBSEC_DIGITS);
            let delta = players
                .entry(event.player_id.as_str())
                .or_insert_with(|| PlayerDelta {
                    total: 0,
                    breakdown: BTreeMap::new(),
                    last_event: at,
                });
            delta.total += 1;
            *delta
                .breakdown
                .entry(event.event_type.as_str())
                .or_default() += 1;
            delta.last_event = delta.last_event.max(at);
        }
        Self { players }
    }

    /// Distinct players in the batch.
    pub fn len(&self) -> usize {
        self.players.len()
    }

    pub fn is_empty(&self) -> bool {
        self.players.is_empty()
    }

    /// Events counted, over all players.
    pub fn events(&self) -> i64 {
        self.players.values().map(|p| p.total).sum()
    }

    /// Each player's delta, by player id.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &PlayerDelta<'a>)> {
        self.players.iter().map(|(id, delta)| (*id, delta))
    }
}

impl PlayerDelta<'_> {
    /// The breakdown as a JSON object (`{"player_score": 3}`), as `event_breakdown` holds it.
    pub fn breakdown_json(&self) -> String {
        // A map of strings to integers always serializes.
        serde_json::to_string(&self.breakdown)
            .unwrap_or_else(|_| unreachable!("a string-to-integer map serializes"))
    }
}

/// A player's statistics as stored (in either store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayerStats {
    pub player_id: String,
    pub total_events: i64,
    pub event_breakdown: BTreeMap<String, i64>,
    pub last_event: Option<DateTime<Utc>>,
}

/// `last_event` as the Redis hash holds it: RFC 3339 in UTC with exactly six
/// sub-second digits, so that two values compare as text the way they compare as times
/// (the Lua script keeps the greater one without parsing dates).
pub fn last_event_text(t: DateTime<Utc>) -> String {
    let t = t.trunc_subsecs(LAST_EVENT_SUBSEC_DIGITS);
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Outside four digits `%Y` adds a sign; rare enough for the general path.
        return t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    }
    // Written out by hand: chrono's `format` interprets the pattern on every call, which
    // was ~7% of the daemon's CPU draining a backlog (one call per player per write).
    // chrono keeps a leap second as second 59 with nanoseconds past 1e9; `%S` prints
    // it as 60 and the fraction past 1e9.
    let (second, nanos) = match t.nanosecond() {
        n if n >= 1_000_000_000 => (t.second() + 1, n - 1_000_000_000),
        n => (t.second(), n),
    };
    let mut text = String::with_capacity(27);
    let _ = write!(
        text,
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{second:02}.{:06}Z",
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        nanos / 1_000,
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Score;

    fn event(player: &str, event_type: &str, t: &str) -> Event {
        Event {
            event_id: uuid::Uuid::new_v4(),
            event_type: event_type.to_owned(),
            player_id: player.to_owned(),
            game_id: "g".to_owned(),
            timestamp: DateTime::parse_from_rfc3339(t)
                .expect("test time")
                .with_timezone(&Utc),
            ingested_at: Utc::now(),
            data: "{}".to_owned(),
            score: Score::Absent,
        }
    }

    #[test]
    fn counts_per_player_and_type_and_keeps_the_latest_time() {
        let events = [
            event("b", "quest_completed", "2026-11-22T10:00:00Z"),
            event("a", "player_score", "2026-11-22T10:00:02Z"),
            event("b", "quest_completed", "2026-11-22T09:00:00Z"),
            event("b", "custom/type", "2026-11-22T10:00:00.1234567Z"),
            event("a", "player_score", "2026-11-22T10:00:01Z"),
        ];
        let delta = StatsDelta::of(&events);
        assert_eq!(delta.len(), 2);
        assert_eq!(delta.events(), 5);
        let players: Vec<_> = delta.iter().collect();
        assert_eq!(players[0].0, "a", "ordered by player id");
        assert_eq!(players[0].1.total, 2);
        assert_eq!(players[0].1.breakdown_json(), r#"{"player_score":2}"#);
        assert_eq!(
            last_event_text(players[0].1.last_event),
            "2026-11-22T10:00:02.000000Z"
        );
        let b = players[1].1;
        assert_eq!(b.total, 3);
        assert_eq!(
            b.breakdown_json(),
            r#"{"custom/type":1,"quest_completed":2}"#
        );
        assert_eq!(
            last_event_text(b.last_event),
            "2026-11-22T10:00:00.123456Z",
            "truncated to microseconds, as Postgres stores it"
        );
    }

    #[test]
    fn last_event_text_is_what_the_strftime_pattern_gives() {
        let pattern = |t: DateTime<Utc>| {
            t.trunc_subsecs(LAST_EVENT_SUBSEC_DIGITS)
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string()
        };
        let mut times: Vec<DateTime<Utc>> = [
            "2026-11-22T10:00:00Z",
            "2026-11-22T10:00:00.5Z",
            "0001-01-01T00:00:00.000001Z",
            "9999-12-31T23:59:59.999999999Z",
            "2016-12-31T23:59:60.25Z",
        ]
        .iter()
        .map(|t| DateTime::parse_from_rfc3339(t).expect("time").to_utc())
        .collect();
        times.extend((0..2000).map(|i| {
            DateTime::from_timestamp(1_700_000_000 + i * 86_413, (i as u32) * 499_997)
                .expect("time")
        }));
        times.push(DateTime::from_timestamp(-62_200_000_000, 0).expect("a negative year"));
        for t in times {
            assert_eq!(last_event_text(t), pattern(t), "{t:?}");
        }
    }

    #[test]
    fn last_event_text_sorts_like_time() {
        let a = last_event_text(event("p", "x", "2026-11-22T10:00:00Z").timestamp);
        let b = last_event_text(event("p", "x", "2026-11-22T10:00:00.5Z").timestamp);
        let c = last_event_text(event("p", "x", "2026-11-22T10:00:01Z").timestamp);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn empty_batch() {
        let delta = StatsDelta::of(&[]);
        assert!(delta.is_empty());
        assert_eq!(delta.events(), 0);
    }
}
