//! Per-cell score sums of a batch: what one flush adds to `leaderboard_scores` and to
//! the `leaderboard:*` sorted sets.
//!
//! A cell is (game, period key, player). Each `player_score` event with an integer
//! `data.score` adds its score to three cells: all time, the UTC day and the ISO week
//! of its own timestamp. A late event therefore lands in its own (past) period.

use std::collections::{BTreeMap, BTreeSet};

use crate::event::{Event, MAX_EXACT_SCORE, Score};

use super::period::{Period, PeriodKey};

/// One leaderboard cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScoreCell<'a> {
    pub game_id: &'a str,
    pub key: PeriodKey,
    pub player_id: &'a str,
}

/// What a batch adds per cell, in (game, period key, player) order: the order rows
/// are locked in, the same for every writer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScoreDelta<'a> {
    cells: BTreeMap<ScoreCell<'a>, CellSum>,
    /// Score events summed (for metrics).
    events: usize,
}

/// What a batch adds to one cell: the sum, and the range its running sum went through
/// (including 0, before the first event). A store refuses the batch when the stored score
/// plus `high` or `low` leaves the bound, not only the stored score plus `sum`: so a batch
/// is accepted exactly when each of its records would be, one at a time, and whether a
/// record is dead-lettered does not depend on how the two stores' sinks batched it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CellSum {
    pub sum: i64,
    /// The highest running sum, at least 0.
    pub high: i64,
    /// The lowest running sum, at most 0.
    pub low: i64,
}

impl CellSum {
    /// Whether the range adds nothing to a check of the final score (the stored score
    /// and the stored score plus `sum` are the extremes): scores of one sign.
    pub fn monotonic(&self) -> bool {
        self.high == self.sum.max(0) && self.low == self.sum.min(0)
    }
}

/// A batch's sum for one cell beyond ±[`MAX_EXACT_SCORE`]: no store may hold it (Redis
/// would round it), so neither does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the score sum of player {player_id:?} in game {game_id:?} ({key}) would leave ±{MAX_EXACT_SCORE} (2^53 - 1), the largest score every store holds exactly"
)]
pub struct ScoreOverflow {
    pub game_id: String,
    pub player_id: String,
    pub key: String,
}

/// What both leaderboard stores say when an increment would take a stored score past
/// ±[`MAX_EXACT_SCORE`] (Postgres: a CHECK constraint; Redis: the batch script).
pub const SCORE_BOUND_REFUSAL: &str = "a leaderboard score must stay within ±9007199254740991 (2^53 - 1), the largest score every store holds exactly";

/// One row of `leaderboard_scores`, as the rebuild reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreRow {
    pub game_id: String,
    pub key: PeriodKey,
    pub player_id: String,
    pub score: i64,
}

/// One ranked entry of a board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranked {
    pub player_id: String,
    pub score: i64,
}

/// The score this event adds to the leaderboards, if any: only `player_score` events
/// with a numeric `data.score` count, as its truncation toward zero (the others are
/// dead-lettered by the Postgres leaderboard sink).
pub fn score_of(event: &Event) -> Option<i64> {
    match event.score {
        Score::Integer(score) if event.is_score_event() => Some(score),
        _ => None,
    }
}

impl<'a> ScoreDelta<'a> {
    /// Sums the scores of `events` per cell. Fails if a cell's sum (what the batch adds
    /// to it) leaves ±[`MAX_EXACT_SCORE`]; whether the stored score plus that sum stays
    /// within it is the stores' check (a CHECK constraint, the Redis script).
    pub fn of(events: impl IntoIterator<Item = &'a Event>) -> Result<Self, ScoreOverflow> {
        let mut delta = Self::default();
        for event in events {
            let Some(score) = score_of(event) else {
                continue;
            };
            delta.events += 1;
            for period in Period::ALL {
                let cell = ScoreCell {
                    game_id: &event.game_id,
                    key: PeriodKey::of(period, event.timestamp),
                    player_id: &event.player_id,
                };
                let cell_sum = delta.cells.entry(cell).or_default();
                cell_sum.sum = cell_sum
                    .sum
                    .checked_add(score)
                    .filter(|s| s.unsigned_abs() <= MAX_EXACT_SCORE as u64)
                    .ok_or_else(|| ScoreOverflow {
                        game_id: event.game_id.clone(),
                        player_id: event.player_id.clone(),
                        key: cell.key.to_string(),
                    })?;
                cell_sum.high = cell_sum.high.max(cell_sum.sum);
                cell_sum.low = cell_sum.low.min(cell_sum.sum);
            }
        }
        Ok(delta)
    }

    /// Cells touched.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Score events summed.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Each cell and what it gains.
    pub fn iter(&self) -> impl Iterator<Item = (ScoreCell<'a>, i64)> + '_ {
        self.cells.iter().map(|(cell, sum)| (*cell, sum.sum))
    }

    /// Each cell, what it gains, and the range of its running sum.
    pub fn sums(&self) -> impl Iterator<Item = (ScoreCell<'a>, CellSum)> + '_ {
        self.cells.iter().map(|(cell, sum)| (*cell, *sum))
    }

    /// Whether every cell's running sum only grows or only shrinks (then a check of the
    /// final scores is a check of every record's).
    pub fn monotonic(&self) -> bool {
        self.cells.values().all(CellSum::monotonic)
    }

    /// The games touched (their `leaderboards` top-N rows need a refresh).
    pub fn games(&self) -> BTreeSet<&'a str> {
        self.cells.keys().map(|c| c.game_id).collect()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;

    fn score_event(player: &str, game: &str, t: &str, score: Score) -> Event {
        Event {
            event_id: uuid::Uuid::new_v4(),
            event_type: "player_score".to_owned(),
            player_id: player.to_owned(),
            game_id: game.to_owned(),
            timestamp: DateTime::parse_from_rfc3339(t)
                .expect("test time")
                .with_timezone(&Utc),
            ingested_at: Utc::now(),
            data: "{}".to_owned(),
            score,
        }
    }

    fn cells(delta: &ScoreDelta<'_>) -> Vec<(String, String, String, i64)> {
        delta
            .iter()
            .map(|(c, s)| {
                (
                    c.game_id.to_owned(),
                    c.key.to_string(),
                    c.player_id.to_owned(),
                    s,
                )
            })
            .collect()
    }

    #[test]
    fn sums_per_cell_in_the_events_own_periods() {
        let mut level_up = score_event("p1", "g", "2026-12-31T10:00:00Z", Score::Absent);
        level_up.event_type = "player_level_up".to_owned();
        let events = [
            score_event("p1", "g", "2026-12-31T23:59:59Z", Score::Integer(10)),
            score_event("p1", "g", "2027-01-01T00:00:00Z", Score::Integer(5)),
            score_event("p2", "g", "2027-01-04T08:00:00Z", Score::Integer(-3)),
            score_event(
                "p1",
                "g",
                "2027-01-01T09:00:00Z",
                Score::NotANumber("a string"),
            ),
            level_up,
        ];
        let delta = ScoreDelta::of(&events).expect("no overflow");
        assert_eq!(delta.events(), 3);
        let got = cells(&delta);
        let want = [
            ("g", "alltime", "p1", 15),
            ("g", "alltime", "p2", -3),
            ("g", "2026-12-31", "p1", 10),
            ("g", "2027-01-01", "p1", 5),
            ("g", "2027-01-04", "p2", -3),
            ("g", "2026-W53", "p1", 15),
            ("g", "2027-W01", "p2", -3),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(g, k, p, s)| ((*g).to_owned(), (*k).to_owned(), (*p).to_owned(), *s))
            .collect();
        assert_eq!(got, want);
        assert_eq!(delta.games().into_iter().collect::<Vec<_>>(), vec!["g"]);
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        let events = [
            score_event("p", "g", "2026-11-22T00:00:00Z", Score::Integer(i64::MAX)),
            score_event("p", "g", "2026-11-22T00:00:01Z", Score::Integer(1)),
        ];
        let err = ScoreDelta::of(&events).expect_err("overflows");
        assert_eq!(err.player_id, "p");
    }

    #[test]
    fn a_sum_past_the_exact_bound_is_an_error() {
        let max = Score::Integer(MAX_EXACT_SCORE);
        // At the bound exactly: fine, in every cell.
        let at_bound = [
            score_event(
                "p",
                "g",
                "2026-11-22T00:00:00Z",
                Score::Integer(MAX_EXACT_SCORE - 1),
            ),
            score_event("p", "g", "2026-11-22T00:00:01Z", Score::Integer(1)),
        ];
        let delta = ScoreDelta::of(&at_bound).expect("at the bound");
        assert!(delta.iter().all(|(_, sum)| sum == MAX_EXACT_SCORE));
        // One past it, either way: refused, naming the cell and the bound.
        for (first, second) in [
            (max, Score::Integer(1)),
            (Score::Integer(-MAX_EXACT_SCORE), Score::Integer(-1)),
        ] {
            let events = [
                score_event("p", "g", "2026-11-22T00:00:00Z", first),
                score_event("p", "g", "2026-11-22T00:00:01Z", second),
            ];
            let err = ScoreDelta::of(&events).expect_err("past the bound");
            assert_eq!((err.game_id.as_str(), err.player_id.as_str()), ("g", "p"));
            assert_eq!(err.key, "2026-11-22", "the first cell summed: the day");
            assert!(err.to_string().contains("9007199254740991"), "{err}");
        }
        // Sums of different cells are separate: two players at the bound each.
        let two = [
            score_event("a", "g", "2026-11-22T00:00:00Z", max),
            score_event("b", "g", "2026-11-22T00:00:00Z", max),
            score_event("a", "h", "2026-11-22T00:00:00Z", max),
        ];
        assert_eq!(ScoreDelta::of(&two).expect("separate cells").len(), 9);
        // A day past the bound while the week and all time are not (a negative score
        // on another day of the week): refused too.
        let day = [
            score_event("p", "g", "2026-11-23T00:00:00Z", Score::Integer(-5)),
            score_event("p", "g", "2026-11-24T00:00:00Z", max),
            score_event("p", "g", "2026-11-24T00:00:01Z", Score::Integer(1)),
        ];
        let err = ScoreDelta::of(&day).expect_err("the day's sum");
        assert_eq!(err.key, "2026-11-24");
    }

    #[test]
    fn running_sums_keep_their_range() {
        let events = [
            score_event("p", "g", "2026-11-22T00:00:00Z", Score::Integer(5)),
            score_event("p", "g", "2026-11-22T00:00:01Z", Score::Integer(-8)),
            score_event("p", "g", "2026-11-22T00:00:02Z", Score::Integer(4)),
            score_event("q", "g", "2026-11-22T00:00:00Z", Score::Integer(2)),
            score_event("q", "g", "2026-11-22T00:00:01Z", Score::Integer(3)),
        ];
        let delta = ScoreDelta::of(&events).expect("small");
        let of = |player: &str| {
            delta
                .sums()
                .find(|(c, _)| c.player_id == player && c.key == PeriodKey::AllTime)
                .expect("cell")
                .1
        };
        assert_eq!(
            of("p"),
            CellSum {
                sum: 1,
                high: 5,
                low: -3
            }
        );
        assert!(!of("p").monotonic());
        assert_eq!(
            of("q"),
            CellSum {
                sum: 5,
                high: 5,
                low: 0
            }
        );
        assert!(of("q").monotonic());
        assert!(!delta.monotonic());
        assert!(ScoreDelta::of(&events[3..]).expect("small").monotonic());
    }

    #[test]
    fn the_refusal_names_the_bound() {
        assert!(SCORE_BOUND_REFUSAL.contains(&MAX_EXACT_SCORE.to_string()));
    }

    #[test]
    fn no_score_events_no_cells() {
        let events = [score_event(
            "p",
            "g",
            "2026-11-22T00:00:00Z",
            Score::NotANumber("a string"),
        )];
        let delta = ScoreDelta::of(&events).expect("no overflow");
        assert!(delta.is_empty());
        assert_eq!(delta.events(), 0);
    }
}
