//! Leaderboard periods: the UTC day and the ISO week of an event's own timestamp.
//!
//! ```text
//! 2026-12-31T23:59:59Z ─► daily 2026-12-31, weekly 2026-W53
//! 2027-01-01T00:00:00Z ─► daily 2027-01-01, weekly 2026-W53   (ISO year ≠ calendar year)
//! 2027-01-04T00:00:00Z ─► daily 2027-01-04, weekly 2027-W01   (weeks start on Monday)
//! ```
//!
//! A [`PeriodKey`] names one period; its text form (`2026-11-22`, `2026-W47`,
//! `alltime`) is the suffix of the dated Redis keys and the `period_key` column of
//! `leaderboard_scores`. Both forms sort like the periods they name.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Days, NaiveDate, Utc, Weekday};

/// Which board: the CONTRACT's `period` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    Daily,
    Weekly,
    AllTime,
}

/// The text of the all-time period key (there is only one all-time period).
pub const ALLTIME_KEY: &str = "alltime";

/// Why a period or period key given by a client is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error("`period` must be one of daily, weekly, alltime; got {0:?}")]
    UnknownPeriod(String),
    #[error("`date` for the daily board must be a UTC day such as 2026-11-22; got {0:?}")]
    BadDay(String),
    #[error(
        "`date` for the weekly board must be an ISO week such as 2026-W47, or a day such as 2026-11-22; got {0:?}"
    )]
    BadWeek(String),
    #[error("the all-time board has no `date`")]
    DateOnAllTime,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::Daily, Period::Weekly, Period::AllTime];

    /// The CONTRACT name (`daily`, `weekly`, `alltime`): the `period` column and the
    /// suffix of the undated Redis keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::AllTime => "alltime",
        }
    }
}

impl FromStr for Period {
    type Err = PeriodError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "daily" => Ok(Period::Daily),
            "weekly" => Ok(Period::Weekly),
            "alltime" => Ok(Period::AllTime),
            other => Err(PeriodError::UnknownPeriod(other.to_owned())),
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One period of one board: all time, a UTC day, or an ISO week.
///
/// The derived order (all time, then days by date, then weeks by ISO year and week)
/// is the order the writers lock rows in; it only has to be the same everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeriodKey {
    AllTime,
    Day(NaiveDate),
    /// An ISO 8601 week: its ISO year (which differs from the calendar year around
    /// New Year) and number (1..=52 or 53).
    Week {
        year: i32,
        week: u32,
    },
}

impl PeriodKey {
    /// The period of `period` that contains `t`.
    pub fn of(period: Period, t: DateTime<Utc>) -> Self {
        let date = t.date_naive();
        match period {
            Period::AllTime => PeriodKey::AllTime,
            Period::Daily => PeriodKey::Day(date),
            Period::Weekly => {
                let iso = date.iso_week();
                PeriodKey::Week {
                    year: iso.year(),
                    week: iso.week(),
                }
            }
        }
    }

    /// Which board this period belongs to.
    pub fn period(self) -> Period {
        match self {
            PeriodKey::AllTime => Period::AllTime,
            PeriodKey::Day(_) => Period::Daily,
            PeriodKey::Week { .. } => Period::Weekly,
        }
    }

    /// The first instant of the period (None for all time).
    pub fn start(self) -> Option<DateTime<Utc>> {
        let first_day = match self {
            PeriodKey::AllTime => return None,
            PeriodKey::Day(date) => date,
            PeriodKey::Week { year, week } => NaiveDate::from_isoywd_opt(year, week, Weekday::Mon)?,
        };
        Some(first_day.and_hms_opt(0, 0, 0)?.and_utc())
    }

    /// The first instant after the period (None for all time, or past chrono's range).
    pub fn end(self) -> Option<DateTime<Utc>> {
        let days = match self {
            PeriodKey::AllTime => return None,
            PeriodKey::Day(_) => 1,
            PeriodKey::Week { .. } => 7,
        };
        self.start()?.checked_add_days(Days::new(days))
    }

    /// Parses a client's `date` for `period`: a day (`2026-11-22`) for the daily board;
    /// an ISO week (`2026-W47`) or any day of it for the weekly board; nothing but
    /// `alltime` for the all-time board.
    pub fn parse(period: Period, text: &str) -> Result<Self, PeriodError> {
        match period {
            Period::AllTime if text == ALLTIME_KEY => Ok(PeriodKey::AllTime),
            Period::AllTime => Err(PeriodError::DateOnAllTime),
            Period::Daily => parse_day(text)
                .map(PeriodKey::Day)
                .ok_or_else(|| PeriodError::BadDay(text.to_owned())),
            Period::Weekly => parse_week(text)
                .or_else(|| {
                    parse_day(text).map(|d| {
                        let iso = d.iso_week();
                        PeriodKey::Week {
                            year: iso.year(),
                            week: iso.week(),
                        }
                    })
                })
                .ok_or_else(|| PeriodError::BadWeek(text.to_owned())),
        }
    }
}

/// `YYYY-MM-DD`, exactly (no signs, no extra digits).
fn parse_day(text: &str) -> Option<NaiveDate> {
    let well_formed = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !well_formed {
        return None;
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// `YYYY-Www` with a week that exists in that ISO year (W53 only in long years).
fn parse_week(text: &str) -> Option<PeriodKey> {
    let (year, week) = text.split_once("-W")?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(year, 4) || !digits(week, 2) {
        return None;
    }
    let (year, week) = (year.parse().ok()?, week.parse().ok()?);
    NaiveDate::from_isoywd_opt(year, week, Weekday::Mon)?;
    Some(PeriodKey::Week { year, week })
}

impl fmt::Display for PeriodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeriodKey::AllTime => f.write_str(ALLTIME_KEY),
            // By hand, not `format("%Y-%m-%d")`, which interprets its pattern per call
            // (once per score event and board); `%Y` signs a year outside 0..=9999.
            PeriodKey::Day(date) if (0..=9999).contains(&date.year()) => {
                write!(
                    f,
                    "{:04}-{:02}-{:02}",
                    date.year(),
                    date.month(),
                    date.day()
                )
            }
            PeriodKey::Day(date) => write!(f, "{}", date.format("%Y-%m-%d")),
            PeriodKey::Week { year, week } => write!(f, "{year:04}-W{week:02}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test time")
            .with_timezone(&Utc)
    }

    fn keys(text: &str) -> (String, String) {
        let t = at(text);
        (
            PeriodKey::of(Period::Daily, t).to_string(),
            PeriodKey::of(Period::Weekly, t).to_string(),
        )
    }

    #[test]
    fn a_day_key_is_what_the_strftime_pattern_gives() {
        for days in (-800_000..3_000_000).step_by(997) {
            let date = NaiveDate::from_num_days_from_ce_opt(days).expect("a date");
            assert_eq!(
                PeriodKey::Day(date).to_string(),
                date.format("%Y-%m-%d").to_string()
            );
        }
    }

    #[test]
    fn iso_weeks_around_new_year() {
        // 2026 starts on a Thursday, so it has 53 ISO weeks; 2027-01-01..03 belong to it.
        assert_eq!(
            keys("2026-12-31T23:59:59.999Z"),
            ("2026-12-31".into(), "2026-W53".into())
        );
        assert_eq!(
            keys("2027-01-01T00:00:00Z"),
            ("2027-01-01".into(), "2026-W53".into())
        );
        assert_eq!(
            keys("2027-01-03T23:59:59Z"),
            ("2027-01-03".into(), "2026-W53".into())
        );
        assert_eq!(
            keys("2027-01-04T00:00:00Z"),
            ("2027-01-04".into(), "2027-W01".into())
        );
        // And the other way round: 2024-12-30 (a Monday) is in 2025's first week.
        assert_eq!(
            keys("2024-12-30T00:00:00Z"),
            ("2024-12-30".into(), "2025-W01".into())
        );
        assert_eq!(
            keys("2024-12-29T23:59:59Z"),
            ("2024-12-29".into(), "2024-W52".into())
        );
    }

    #[test]
    fn days_are_utc_days_of_the_event_time() {
        // 01:30 at +02:00 is 23:30 the day before in UTC.
        assert_eq!(keys("2026-11-23T01:30:00+02:00").0, "2026-11-22");
        assert_eq!(keys("2026-11-22T23:59:59.999999Z").0, "2026-11-22");
        assert_eq!(keys("2026-11-23T00:00:00Z").0, "2026-11-23");
        assert_eq!(keys("2026-11-22T12:00:00Z").1, "2026-W47");
    }

    #[test]
    fn period_bounds() {
        let day = PeriodKey::of(Period::Daily, at("2026-11-22T15:00:00Z"));
        assert_eq!(day.start(), Some(at("2026-11-22T00:00:00Z")));
        assert_eq!(day.end(), Some(at("2026-11-23T00:00:00Z")));
        let week = PeriodKey::of(Period::Weekly, at("2027-01-01T15:00:00Z"));
        assert_eq!(week.start(), Some(at("2026-12-28T00:00:00Z")));
        assert_eq!(week.end(), Some(at("2027-01-04T00:00:00Z")));
        assert_eq!(PeriodKey::AllTime.end(), None);
    }

    #[test]
    fn text_forms_parse_back_and_sort_like_periods() {
        for key in [
            PeriodKey::of(Period::Daily, at("2026-01-05T00:00:00Z")),
            PeriodKey::of(Period::Weekly, at("2026-01-05T00:00:00Z")),
            PeriodKey::of(Period::Weekly, at("2027-01-01T00:00:00Z")),
        ] {
            assert_eq!(PeriodKey::parse(key.period(), &key.to_string()), Ok(key));
        }
        assert!("2026-W09" < "2026-W10" && "2026-W53" < "2027-W01");
        assert!("2026-09-30" < "2026-10-01");
    }

    #[test]
    fn client_dates() {
        assert_eq!(
            PeriodKey::parse(Period::Weekly, "2027-01-02").map(|k| k.to_string()),
            Ok("2026-W53".to_owned()),
            "a day names its ISO week"
        );
        assert_eq!(
            PeriodKey::parse(Period::Weekly, "2025-W53"),
            Err(PeriodError::BadWeek("2025-W53".into())),
            "2025 has 52 ISO weeks"
        );
        for bad in [
            "2026-11-31",
            "2026-1-22",
            "+2026-11-22",
            "22.11.2026",
            "",
            "2026-11-22T00:00:00Z",
        ] {
            assert!(PeriodKey::parse(Period::Daily, bad).is_err(), "{bad}");
        }
        assert_eq!(
            PeriodKey::parse(Period::AllTime, "2026-11-22"),
            Err(PeriodError::DateOnAllTime)
        );
        assert_eq!(
            "hourly".parse::<Period>(),
            Err(PeriodError::UnknownPeriod("hourly".into()))
        );
        assert_eq!("weekly".parse::<Period>(), Ok(Period::Weekly));
    }
}
