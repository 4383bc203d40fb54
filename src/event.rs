//! The event: its shape, its validation rules, and its two parsers.
//!
//! ```text
//! client JSON ──parse_submission──► Submission ──Event::accept──► Event ──to_record_value──► Kafka
//! Kafka value ─────────────────────parse_record──────────────────► Event ──► sinks
//! ```
//!
//! Both parsers use simd-json and the same field rules (the platform contract: README, "Events"), so nothing that
//! ingestion would refuse can pass a partition reader, whoever produced it. Errors say
//! which field is wrong and why, in words an API client can act on.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use simd_json::BorrowedValue;
use simd_json::prelude::*;
use uuid::Uuid;

/// Longest `event_type`, `player_id` and `game_id`, in characters (the columns are VARCHAR(100)).
pub const MAX_ID_CHARS: usize = 100;

/// The event types the platform knows; any other non-empty type is a valid custom type.
pub const KNOWN_EVENT_TYPES: [&str; 5] = [
    "player_level_up",
    "player_score",
    "quest_completed",
    "achievement_unlocked",
    "boss_defeated",
];

/// The event type whose `data.score` feeds the leaderboards.
pub const SCORE_EVENT_TYPE: &str = "player_score";

/// An event as it travels on `player.events.raw` and lands in the sinks.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: Uuid,
    pub event_type: String,
    pub player_id: String,
    pub game_id: String,
    /// The event time, as the client stated it.
    pub timestamp: DateTime<Utc>,
    /// When gamestream accepted it (server clock, UTC).
    pub ingested_at: DateTime<Utc>,
    /// The `data` object as compact JSON text: written as-is to JSONB and to the record,
    /// so it is encoded once.
    pub data: String,
    /// `data.score`, read while the value tree was at hand.
    pub score: Score,
}

/// What `data.score` holds. A JSON number counts as its integer part, truncated toward
/// zero as the old leaderboard manager's Python `int(score)` did (12.5 → 12, -12.5 → -12,
/// 1e3 → 1000); anything else does not count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Score {
    /// No `score` key in `data`.
    Absent,
    /// A number whose truncation fits 64 bits. Whether it fits every store
    /// ([`MAX_EXACT_SCORE`]) is a rule of `player_score` events only ([`check_score`]).
    Integer(i64),
    /// A number whose truncation does not fit 64 bits (1e30, 18446744073709551615): its
    /// value as a double, for the refusal's message (which may round a large integer:
    /// 18446744073709552000). JSON has no infinities or NaN.
    Huge(f64),
    /// Present but not a number: its JSON type (`a string`, `a boolean`, `null`, `an
    /// array`, `an object`).
    NotANumber(&'static str),
}

/// A client's submission, validated, before the server assigns ingest time (and the
/// id, unless the client chose one).
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// The client's own `event_id`, if it sent one: a resend of the same event carries
    /// the same id, so the pipeline can count it once.
    pub event_id: Option<Uuid>,
    pub event_type: String,
    pub player_id: String,
    pub game_id: String,
    pub timestamp: DateTime<Utc>,
    pub data: String,
    pub score: Score,
}

/// Why an event was refused. The `Display` text is what clients and dead letters see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("the body is not valid UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    #[error("the body starts with a byte order mark (EF BB BF): send UTF-8 JSON without it")]
    ByteOrderMark,
    #[error("the event must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("`{0}` is required")]
    Missing(&'static str),
    #[error("`{field}` must be {expected}, got {got}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    #[error("`{0}` must not be empty")]
    Empty(&'static str),
    #[error("`{field}` must be at most {MAX_ID_CHARS} characters, got {chars}")]
    TooLong { field: &'static str, chars: usize },
    #[error("`{0}` must not contain control characters")]
    ControlCharacter(&'static str),
    #[error("`data` must not contain NUL characters (\\u0000): PostgreSQL cannot store them")]
    NulInData,
    #[error("`{field}` must be an RFC 3339 time such as 2024-01-15T10:30:00Z, got {value:?}")]
    BadTime { field: &'static str, value: String },
    #[error("`{field}` must fall within years 0001 to 9999 once converted to UTC, got {value:?}")]
    TimeOutOfRange { field: &'static str, value: String },
    /// The number as stated (an integer) or as its double (beyond 64 bits).
    #[error(
        "`data.score` of a player_score event must be between -{MAX_EXACT_SCORE} and {MAX_EXACT_SCORE} (2^53 - 1) once truncated to an integer, got {0}"
    )]
    ScoreOutOfRange(String),
    #[error("`event_id` must be a UUID such as 0f8fad5b-d9cb-469f-a165-70867728950e, got {0:?}")]
    BadEventId(String),
    #[error("duplicate key {0:?} in a JSON object: each key may appear once")]
    DuplicateKey(String),
}

impl EventError {
    /// A short stable reason code, for metrics labels and the dead-letter `error_kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            EventError::MalformedJson(_) => "malformed_json",
            EventError::NotUtf8(_) => "not_utf8",
            EventError::ByteOrderMark => "byte_order_mark",
            EventError::NotAnObject(_) => "not_an_object",
            EventError::Missing(_) => "missing_field",
            EventError::WrongType { .. } => "wrong_type",
            EventError::Empty(_) => "empty_field",
            EventError::TooLong { .. } => "field_too_long",
            EventError::ControlCharacter(_) => "control_character",
            EventError::NulInData => "nul_in_data",
            EventError::BadTime { .. } | EventError::TimeOutOfRange { .. } => "bad_timestamp",
            EventError::ScoreOutOfRange(_) => "score_out_of_range",
            EventError::BadEventId(_) => "bad_event_id",
            EventError::DuplicateKey(_) => "duplicate_key",
        }
    }
}

pub type Result<T, E = EventError> = std::result::Result<T, E>;

/// Parses and validates one client submission (the body of `POST /api/v1/events`).
/// simd-json parses in place, so the buffer is scratch space afterwards.
pub fn parse_submission(bytes: &mut [u8]) -> Result<Submission> {
    with_json(bytes, submission_from_value)
}

/// Validates one already-parsed item (an element of a batch body).
pub fn submission_from_value(value: &BorrowedValue<'_>) -> Result<Submission> {
    let fields = Fields::of(value)?;
    let (data, score) = fields.data()?;
    let event_id = match fields.present("event_id") {
        None => None,
        Some(_) => {
            let raw = fields.string("event_id")?;
            Some(Uuid::parse_str(raw).map_err(|_| EventError::BadEventId(truncate(raw, 40)))?)
        }
    };
    let event_type = fields.id("event_type")?;
    check_score(&event_type, score)?;
    Ok(Submission {
        event_id,
        event_type,
        player_id: fields.id("player_id")?,
        game_id: fields.id("game_id")?,
        timestamp: fields.time("timestamp")?,
        data,
        score,
    })
}

/// Why a whole batch body (`POST /api/v1/events/batch`) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Not JSON at all (or not UTF-8, or a duplicate key).
    #[error(transparent)]
    Invalid(#[from] EventError),
    #[error("the body must be a JSON array of events, got {0}")]
    NotAnArray(&'static str),
    #[error("a batch holds at most {limit} events, got {got}")]
    TooMany { limit: usize, got: usize },
}

/// Parses a batch body: a JSON array of at most `limit` submissions, each validated on
/// its own (one bad item does not refuse the others).
pub fn parse_batch(bytes: &mut [u8], limit: usize) -> Result<Vec<Result<Submission>>, BatchError> {
    with_json(bytes, |value| {
        let BorrowedValue::Array(items) = value else {
            return Err(BatchError::NotAnArray(type_name(value)));
        };
        if items.len() > limit {
            return Err(BatchError::TooMany {
                limit,
                got: items.len(),
            });
        }
        Ok(items.iter().map(submission_from_value).collect())
    })
}

/// Parses and validates a record value read from `player.events.raw`: the client's
/// fields plus `event_id` and `ingested_at`.
pub fn parse_record(bytes: &mut [u8]) -> Result<Event> {
    with_json(bytes, record_from_value)
}

fn record_from_value(value: &BorrowedValue<'_>) -> Result<Event> {
    let fields = Fields::of(value)?;
    let (data, score) = fields.data()?;
    let raw_id = fields.string("event_id")?;
    let event_id =
        Uuid::parse_str(raw_id).map_err(|_| EventError::BadEventId(raw_id.to_owned()))?;
    let event_type = fields.id("event_type")?;
    check_score(&event_type, score)?;
    Ok(Event {
        event_id,
        event_type,
        player_id: fields.id("player_id")?,
        game_id: fields.id("game_id")?,
        timestamp: fields.time("timestamp")?,
        ingested_at: fields.time("ingested_at")?,
        data,
        score,
    })
}

/// Parses a JSON document with simd-json and hands its value to `then`; parse errors
/// become client words.
///
/// The document goes through simd-json's tape first, where repeated object keys are
/// still visible (the value tree keeps or drops them silently, depending on the object's
/// size), so a duplicate key is refused here, for every object at every depth. The value
/// is lent to `then` rather than returned so that, on a parse error, the input can be
/// read again to describe it.
pub fn with_json<T, E: From<EventError>>(
    bytes: &mut [u8],
    then: impl FnOnce(&BorrowedValue<'_>) -> Result<T, E>,
) -> Result<T, E> {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(EventError::NotUtf8(e.valid_up_to()).into());
    }
    if bytes.starts_with(UTF8_BOM) {
        return Err(EventError::ByteOrderMark.into());
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(EventError::MalformedJson("the body is empty at byte 0".to_owned()).into());
    }
    // simd-json unescapes strings in place, so after a failed parse the input is only
    // still the client's when it held no escape at all.
    let pristine = !bytes.contains(&b'\\');
    let parsed = PARSE_BUFFERS.with_borrow_mut(|buffers| {
        simd_json::to_tape_with_buffers(bytes, buffers).map(|tape| {
            if let Err(key) = skip_checking_keys(&tape.0, 0) {
                return Err(EventError::DuplicateKey(truncate(key, MAX_ID_CHARS)).into());
            }
            then(&simd_json::value::lazy::Value::from_tape(tape.as_value()).into_value())
        })
    });
    parsed.unwrap_or_else(|e| {
        let original = pristine.then_some(&*bytes);
        Err(EventError::MalformedJson(describe_json_error(&e, original)).into())
    })
}

/// The UTF-8 encoding of U+FEFF, which some clients put before a JSON text.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Objects with at most this many keys are checked for duplicates by comparing keys
/// pairwise (no allocation beyond a small vector); larger ones use a hash set.
const PAIRWISE_KEY_CHECK_MAX: usize = 16;

/// Walks the value starting at `nodes[at]`, refusing an object that repeats a key (the
/// key is the error); returns the index just past the value. simd-json's depth limit
/// (1024) bounds the recursion.
fn skip_checking_keys<'a>(nodes: &[simd_json::Node<'a>], at: usize) -> Result<usize, &'a str> {
    use simd_json::Node;
    match nodes.get(at) {
        Some(Node::Object { len, .. }) => {
            let mut next = at + 1;
            let mut small: Vec<&str> = Vec::new();
            let mut large: std::collections::HashSet<&str> = std::collections::HashSet::new();
            for _ in 0..*len {
                let Some(Node::String(key)) = nodes.get(next) else {
                    return Ok(nodes.len());
                };
                let repeated = if *len <= PAIRWISE_KEY_CHECK_MAX {
                    let seen = small.contains(key);
                    small.push(key);
                    seen
                } else {
                    !large.insert(key)
                };
                if repeated {
                    return Err(key);
                }
                next = skip_checking_keys(nodes, next + 1)?;
            }
            Ok(next)
        }
        Some(Node::Array { len, .. }) => {
            let mut next = at + 1;
            for _ in 0..*len {
                next = skip_checking_keys(nodes, next)?;
            }
            Ok(next)
        }
        Some(Node::String(_) | Node::Static(_)) => Ok(at + 1),
        None => Ok(nodes.len()),
    }
}

thread_local! {
    /// simd-json's scratch space (a padded copy of the input, the structural indexes, the
    /// string buffer), reused by every parse on this thread instead of allocated per
    /// document. It keeps the size of the largest document parsed on the thread, which
    /// the HTTP body limit and the fetch size bound.
    static PARSE_BUFFERS: std::cell::RefCell<simd_json::Buffers> =
        std::cell::RefCell::new(simd_json::Buffers::default());
}

/// Words for a parse error. simd-json's errors are terse and some of its positions are
/// relative to a string, so when the input is still as the client sent it, serde_json
/// (on this error path only) says what and where; the depth limit and numbers beyond 64
/// bits are simd-json's own rules, described here.
fn describe_json_error(e: &simd_json::Error, original: Option<&[u8]>) -> String {
    use simd_json::ErrorType as T;
    let what = match e.error() {
        T::DepthLimitExceeded => {
            return format!(
                "values are nested deeper than {} levels",
                simd_json::DEFAULT_MAX_DEPTH
            );
        }
        T::InvalidNumber | T::InvalidExponent => {
            "invalid number, or a number beyond 64 bits (integers up to 18446744073709551615, \
             fractions up to about 1.8e308)"
                .to_owned()
        }
        _ => {
            if let Some((input, Err(precise))) = original.map(|input| {
                (
                    input,
                    serde_json::from_slice::<serde::de::IgnoredAny>(input),
                )
            }) {
                return serde_json_words(&precise, input);
            }
            match e.error() {
                T::Eof => "unexpected end of input".to_owned(),
                T::TrailingData => "unexpected data after the JSON value".to_owned(),
                // simd-json places these within the string, not the body: no position.
                T::InvalidEscape => {
                    return match e.character() {
                        Some(c) => format!("invalid escape \\{c} in a string"),
                        None => "invalid escape in a string".to_owned(),
                    };
                }
                T::InvalidUnicodeEscape | T::InvalidUnicodeCodepoint => {
                    return "invalid \\u escape in a string (bad hex digits or a lone surrogate)"
                        .to_owned();
                }
                T::ExpectedObjectColon => "expected ':' after an object key".to_owned(),
                T::ExpectedMapComma | T::ExpectedArrayComma => "expected ','".to_owned(),
                T::KeyMustBeAString | T::BadKeyType => "object keys must be strings".to_owned(),
                _ => "invalid JSON".to_owned(),
            }
        }
    };
    match e.character() {
        Some(c) => format!("{what} at byte {} ({c:?})", e.index()),
        None => format!("{what} at byte {}", e.index()),
    }
}

/// serde_json's description of `e`, with its line and column turned into the byte
/// offset the other messages give.
fn serde_json_words(e: &serde_json::Error, input: &[u8]) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let what = text.strip_suffix(&suffix).unwrap_or(&text);
    let line_start = match e.line() {
        0 | 1 => 0,
        line => input
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(line - 2)
            .map_or(input.len(), |(at, _)| at + 1),
    };
    format!(
        "{what} at byte {}",
        line_start + e.column().saturating_sub(1)
    )
}

/// Field access on a JSON object with the contract's rules and messages.
struct Fields<'v, 'a> {
    object: &'v simd_json::borrowed::Object<'a>,
}

impl<'v, 'a> Fields<'v, 'a> {
    fn of(value: &'v BorrowedValue<'a>) -> Result<Self> {
        match value {
            BorrowedValue::Object(object) => Ok(Self { object }),
            other => Err(EventError::NotAnObject(type_name(other))),
        }
    }

    fn present(&self, field: &'static str) -> Option<&'v BorrowedValue<'a>> {
        self.object.get(field).filter(|v| !v.is_null())
    }

    fn string(&self, field: &'static str) -> Result<&'v str> {
        match self.present(field) {
            None => Err(EventError::Missing(field)),
            Some(BorrowedValue::String(s)) => Ok(s.as_ref()),
            Some(other) => Err(EventError::WrongType {
                field,
                expected: "a string",
                got: type_name(other),
            }),
        }
    }

    /// An identifier: a non-empty string of at most 100 characters, no control characters.
    fn id(&self, field: &'static str) -> Result<String> {
        let s = self.string(field)?;
        if s.trim().is_empty() {
            return Err(EventError::Empty(field));
        }
        let chars = s.chars().count();
        if chars > MAX_ID_CHARS {
            return Err(EventError::TooLong { field, chars });
        }
        if s.chars().any(char::is_control) {
            return Err(EventError::ControlCharacter(field));
        }
        Ok(s.to_owned())
    }

    /// An RFC 3339 time, in UTC, in years 0001 to 9999 once converted. Its UTC form must
    /// itself be RFC 3339: `9999-12-31T23:59:59-01:00` is year 10000 in UTC, which the
    /// record could not carry. Year 0000 (`0001-01-01T00:00:00+01:00`) is refused too:
    /// PostgreSQL has no year 0 (the events table would refuse it) and its ISO week key
    /// would not be a four-digit year (`-001-W52`), so every store would disagree.
    fn time(&self, field: &'static str) -> Result<DateTime<Utc>> {
        let s = self.string(field)?;
        let t = DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| EventError::BadTime {
                field,
                value: truncate(s, 64),
            })?;
        if !(1..=9999).contains(&t.year()) {
            return Err(EventError::TimeOutOfRange {
                field,
                value: truncate(s, 64),
            });
        }
        Ok(t)
    }

    /// `data`: an object (default `{}`), as compact JSON, plus its `score`.
    fn data(&self) -> Result<(String, Score)> {
        match self.present("data") {
            None => Ok(("{}".to_owned(), Score::Absent)),
            Some(value @ BorrowedValue::Object(object)) => {
                if contains_nul(value) {
                    return Err(EventError::NulInData);
                }
                let score = object.get("score").map_or(Score::Absent, score_of);
                Ok((value.encode(), score))
            }
            Some(other) => Err(EventError::WrongType {
                field: "data",
                expected: "a JSON object",
                got: type_name(other),
            }),
        }
    }
}

/// The largest score magnitude every store holds exactly: 2^53 - 1 (JavaScript's
/// `Number.MAX_SAFE_INTEGER`, the largest n such that n and n + 1 are both exact doubles).
/// Redis keeps sorted-set scores as doubles, which hold every integer up to 2^53 but
/// round 2^53 + 1 to 2^53, while PostgreSQL's BIGINT keeps it exact: past the bound the
/// stores would disagree. The same bound holds for a single event's
/// score and for every stored sum (`leaderboard_scores.score`, the `leaderboard:*`
/// sorted sets): a sum that would leave it is refused and its record dead-lettered.
pub const MAX_EXACT_SCORE: i64 = (1 << 53) - 1;

/// The dead-letter kind of a `player_score` event without a `data.score`.
pub const MISSING_SCORE: &str = "missing_score";
/// The dead-letter kind of a `player_score` event whose `data.score` is not a number.
pub const SCORE_NOT_A_NUMBER: &str = "score_not_a_number";

impl Score {
    /// Why a `player_score` event with this score cannot count on the leaderboards: its
    /// dead-letter kind and message; None when it counts. (A number past the exact bound
    /// does not get this far: the parser refuses such an event, `score_out_of_range`, and
    /// the stores refuse a sum past it.)
    pub fn problem(&self) -> Option<(&'static str, String)> {
        match self {
            Score::Integer(_) => None,
            Score::Absent => Some((
                MISSING_SCORE,
                "a player_score event needs a numeric `data.score`; it has none".to_owned(),
            )),
            Score::NotANumber(kind) => Some((
                SCORE_NOT_A_NUMBER,
                format!("`data.score` of a player_score event must be a number, got {kind}"),
            )),
            Score::Huge(_) => Some((
                "score_out_of_range",
                format!(
                    "`data.score` of a player_score event must be between -{MAX_EXACT_SCORE} and {MAX_EXACT_SCORE} (2^53 - 1) once truncated to an integer, got {self}"
                ),
            )),
        }
    }
}

/// Refuses a leaderboard score no store can hold exactly (the whole event: with its
/// score cut or rounded it would be a different event). A score that is missing or not a
/// number leaves the event valid: the leaderboard sink dead-letters it
/// (`crate::actors::leaderboard::bad_score`), the other sinks count it. Other event types
/// keep any `data.score`.
fn check_score(event_type: &str, score: Score) -> Result<()> {
    if event_type != SCORE_EVENT_TYPE {
        return Ok(());
    }
    match score {
        Score::Integer(s) if s.unsigned_abs() > MAX_EXACT_SCORE as u64 => {
            Err(EventError::ScoreOutOfRange(s.to_string()))
        }
        Score::Huge(f) => Err(EventError::ScoreOutOfRange(huge_text(f))),
        _ => Ok(()),
    }
}

/// `data.score` as the leaderboards read it: a number truncated toward zero, like Python's
/// `int()` of a float.
fn score_of(value: &BorrowedValue<'_>) -> Score {
    if let Some(i) = value.as_i64() {
        return Score::Integer(i);
    }
    // An integer past i64 (up to 2^64 - 1) or a fraction.
    match value.as_u64().map(|u| u as f64).or_else(|| value.as_f64()) {
        Some(f) => truncated(f),
        None => Score::NotANumber(type_name(value)),
    }
}

/// A double truncated toward zero, if that fits 64 bits. -2^63 is exact as a double and
/// fits; 2^63 does not (`as` would saturate it to i64::MAX, a different number).
fn truncated(f: f64) -> Score {
    const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
    let t = f.trunc();
    if (-TWO_POW_63..TWO_POW_63).contains(&t) {
        Score::Integer(t as i64)
    } else {
        Score::Huge(f)
    }
}

/// A double beyond 64 bits, as a refusal quotes it: every digit while that stays short
/// (as JavaScript prints numbers below 1e21), else in exponent form.
fn huge_text(f: f64) -> String {
    if f.abs() < 1e21 {
        format!("{f}")
    } else {
        format!("{f:e}")
    }
}

fn contains_nul(value: &BorrowedValue<'_>) -> bool {
    match value {
        BorrowedValue::String(s) => s.contains('\0'),
        BorrowedValue::Array(items) => items.iter().any(contains_nul),
        BorrowedValue::Object(object) => object
            .iter()
            .any(|(k, v)| k.contains('\0') || contains_nul(v)),
        BorrowedValue::Static(_) => false,
    }
}

fn type_name(value: &BorrowedValue<'_>) -> &'static str {
    match value.value_type() {
        ValueType::Null => "null",
        ValueType::Bool => "a boolean",
        ValueType::I64 | ValueType::U64 | ValueType::F64 => "a number",
        ValueType::String => "a string",
        ValueType::Array => "an array",
        ValueType::Object => "an object",
        _ => "an unsupported value",
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

impl Submission {
    /// Accepts the submission: keeps the client's `event_id` or assigns a fresh one
    /// (UUID v4), and stamps `ingested_at`.
    pub fn accept(self, now: DateTime<Utc>) -> Event {
        Event {
            event_id: self.event_id.unwrap_or_else(Uuid::new_v4),
            event_type: self.event_type,
            player_id: self.player_id,
            game_id: self.game_id,
            timestamp: self.timestamp,
            ingested_at: now,
            data: self.data,
            score: self.score,
        }
    }
}

impl Event {
    /// The record value on `player.events.raw`: the seven contract fields as JSON.
    pub fn to_record_value(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            160 + self.data.len()
                + self.event_type.len()
                + self.player_id.len()
                + self.game_id.len(),
        );
        out.extend_from_slice(b"{\"event_id\":\"");
        out.extend_from_slice(
            self.event_id
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        );
        out.extend_from_slice(b"\",\"event_type\":");
        push_json_string(&mut out, &self.event_type);
        out.extend_from_slice(b",\"player_id\":");
        push_json_string(&mut out, &self.player_id);
        out.extend_from_slice(b",\"game_id\":");
        push_json_string(&mut out, &self.game_id);
        out.extend_from_slice(b",\"timestamp\":\"");
        out.extend_from_slice(rfc3339(self.timestamp).as_bytes());
        out.extend_from_slice(b"\",\"ingested_at\":\"");
        out.extend_from_slice(rfc3339(self.ingested_at).as_bytes());
        out.extend_from_slice(b"\",\"data\":");
        out.extend_from_slice(self.data.as_bytes());
        out.push(b'}');
        out
    }

    /// Whether this event feeds the leaderboards.
    pub fn is_score_event(&self) -> bool {
        self.event_type == SCORE_EVENT_TYPE
    }
}

/// RFC 3339 in UTC with `Z`, and sub-second digits only when there are any.
pub fn rfc3339(t: DateTime<Utc>) -> Cow<'static, str> {
    Cow::Owned(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping is correct and fast; a String cannot fail to serialize.
    serde_json::to_writer(&mut *out, s)
        .unwrap_or_else(|_| unreachable!("serializing a str into a Vec cannot fail"));
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Score::Absent => f.write_str("absent"),
            Score::Integer(i) => write!(f, "{i}"),
            Score::Huge(x) => f.write_str(&huge_text(*x)),
            Score::NotANumber(kind) => write!(f, "not a number ({kind})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(json: &str) -> Result<Submission> {
        parse_submission(&mut json.as_bytes().to_vec())
    }

    const GOOD: &str = r#"{"event_type":"player_score","player_id":"p-1","game_id":"g-1","timestamp":"2024-01-15T10:30:00Z","data":{"score":42,"x":[1,"a"]}}"#;

    #[test]
    fn good_submission_round_trips_through_the_record() {
        let s = sub(GOOD).expect("valid");
        assert_eq!(s.score, Score::Integer(42));
        let event = s.accept(Utc::now());
        let mut value = event.to_record_value();
        let back = parse_record(&mut value).expect("record parses");
        assert_eq!(back, event);
        let json: serde_json::Value =
            serde_json::from_slice(&event.to_record_value()).expect("valid JSON");
        assert_eq!(json.as_object().map(|o| o.len()), Some(7));
        assert_eq!(json["data"]["x"][1], "a");
    }

    #[test]
    fn a_client_event_id_is_kept_and_a_malformed_one_refused() {
        let with_id = GOOD.replacen(
            '{',
            r#"{"event_id":"0F8FAD5B-D9CB-469F-A165-70867728950E","#,
            1,
        );
        let event = sub(&with_id).expect("valid").accept(Utc::now());
        assert_eq!(
            event.event_id.to_string(),
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "any version, kept, written lowercase"
        );
        let mut value = event.to_record_value();
        assert_eq!(
            parse_record(&mut value).expect("record").event_id,
            event.event_id
        );
        // Absent (or null, as for every optional field): the server assigns one, a new
        // one each time.
        let null_id = GOOD.replacen('{', r#"{"event_id":null,"#, 1);
        assert_eq!(sub(&null_id).expect("null is absent").event_id, None);
        let a = sub(GOOD).expect("valid").accept(Utc::now());
        let b = sub(GOOD).expect("valid").accept(Utc::now());
        assert_ne!(a.event_id, b.event_id);
        for (bad, message) in [
            (
                r#""nope""#,
                r#"`event_id` must be a UUID such as 0f8fad5b-d9cb-469f-a165-70867728950e, got "nope""#,
            ),
            ("42", "`event_id` must be a string, got a number"),
        ] {
            let body = GOOD.replacen('{', &format!(r#"{{"event_id":{bad},"#), 1);
            let err = sub(&body).expect_err(bad);
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn data_defaults_to_empty_object() {
        let s = sub(r#"{"event_type":"x","player_id":"p","game_id":"g","timestamp":"2024-01-15T10:30:00+02:00"}"#).expect("valid");
        assert_eq!(s.data, "{}");
        assert_eq!(s.timestamp.to_rfc3339(), "2024-01-15T08:30:00+00:00");
    }

    #[test]
    fn each_rule_has_its_message() {
        let cases: &[(&str, &str)] = &[
            ("[1]", "the event must be a JSON object, got an array"),
            (
                r#"{"player_id":"p","game_id":"g","timestamp":"2024-01-15T10:30:00Z"}"#,
                "`event_type` is required",
            ),
            (
                r#"{"event_type":5,"player_id":"p","game_id":"g","timestamp":"2024-01-15T10:30:00Z"}"#,
                "`event_type` must be a string, got a number",
            ),
            (
                r#"{"event_type":"  ","player_id":"p","game_id":"g","timestamp":"2024-01-15T10:30:00Z"}"#,
                "`event_type` must not be empty",
            ),
            (
                r#"{"event_type":"x","player_id":null,"game_id":"g","timestamp":"2024-01-15T10:30:00Z"}"#,
                "`player_id` is required",
            ),
            (
                r#"{"event_type":"x","player_id":"p","game_id":"g\u0007","timestamp":"2024-01-15T10:30:00Z"}"#,
                "`game_id` must not contain control characters",
            ),
            (
                r#"{"event_type":"x","player_id":"p","game_id":"g","timestamp":"yesterday"}"#,
                "`timestamp` must be an RFC 3339 time such as 2024-01-15T10:30:00Z, got \"yesterday\"",
            ),
            (
                r#"{"event_type":"x","player_id":"p","game_id":"g","timestamp":"2024-01-15T10:30:00Z","data":[1]}"#,
                "`data` must be a JSON object, got an array",
            ),
            (
                r#"{"event_type":"x","player_id":"p","game_id":"g","timestamp":"2024-01-15T10:30:00Z","data":{"a":"\u0000"}}"#,
                "`data` must not contain NUL characters (\\u0000): PostgreSQL cannot store them",
            ),
        ];
        for (input, message) in cases {
            assert_eq!(
                sub(input).expect_err(input).to_string(),
                *message,
                "{input}"
            );
        }
    }

    #[test]
    fn too_long_counts_characters_not_bytes() {
        let ok = "é".repeat(100);
        let long = "é".repeat(101);
        let t = |p: &str| {
            format!(
                r#"{{"event_type":"x","player_id":"{p}","game_id":"g","timestamp":"2024-01-15T10:30:00Z"}}"#
            )
        };
        assert!(sub(&t(&ok)).is_ok());
        assert_eq!(
            sub(&t(&long)).expect_err("long"),
            EventError::TooLong {
                field: "player_id",
                chars: 101
            }
        );
    }

    #[test]
    fn malformed_json_says_where() {
        let err = sub(r#"{"event_type": "x",, }"#).expect_err("malformed");
        assert_eq!(err.kind(), "malformed_json");
        assert!(err.to_string().contains("at byte 19"), "{err}");
        let err = parse_submission(&mut [b'{', 0xff, b'}']).expect_err("not utf8");
        assert_eq!(err, EventError::NotUtf8(1));
    }

    /// A submission of `event_type` whose data is `{"score": <score>}`.
    fn scored(event_type: &str, score: &str) -> Result<Submission> {
        sub(&format!(
            r#"{{"event_type":"{event_type}","player_id":"p","game_id":"g","timestamp":"2024-01-15T10:30:00Z","data":{{"score":{score}}}}}"#
        ))
    }

    #[test]
    fn scores() {
        let t = |score: &str| scored("player_score", score).expect("valid").score;
        assert_eq!(t("-7"), Score::Integer(-7));
        assert_eq!(t("10.0"), Score::Integer(10));
        assert_eq!(MAX_EXACT_SCORE, 9_007_199_254_740_991);
        assert_eq!(t("9007199254740991"), Score::Integer(MAX_EXACT_SCORE));
        assert_eq!(t("-9007199254740991"), Score::Integer(-MAX_EXACT_SCORE));
        assert_eq!(
            sub(r#"{"event_type":"player_score","player_id":"p","game_id":"g","timestamp":"2024-01-15T10:30:00Z","data":{"level":1}}"#)
                .expect("valid")
                .score,
            Score::Absent
        );
    }

    /// A number counts as Python's `int()` of it: truncated toward zero.
    #[test]
    fn fractional_scores_are_truncated_toward_zero() {
        let t = |score: &str| scored("player_score", score).expect("valid").score;
        for (json, want) in [
            ("12.5", 12),
            ("-12.5", -12),
            ("12.999", 12),
            ("-0.5", 0),
            ("0.0", 0),
            ("1e3", 1000),
            ("-1E3", -1000),
            ("2.5e1", 25),
            ("1e-7", 0),
            ("9007199254740991.0", MAX_EXACT_SCORE),
            ("-4503599627370495.5", -4_503_599_627_370_495),
        ] {
            assert_eq!(t(json), Score::Integer(want), "{json}");
        }
    }

    /// What is not a number is kept as its type, for the leaderboard's dead letter; the
    /// event itself is valid.
    #[test]
    fn scores_that_are_not_numbers_are_named() {
        let t = |score: &str| scored("player_score", score).expect("valid").score;
        for (json, kind) in [
            (r#""10""#, "a string"),
            ("true", "a boolean"),
            ("null", "null"),
            ("[1]", "an array"),
            (r#"{"v":1}"#, "an object"),
        ] {
            assert_eq!(t(json), Score::NotANumber(kind), "{json}");
        }
    }

    #[test]
    fn scores_beyond_the_exact_bound_are_refused_once_truncated() {
        let refused = |score: &str| scored("player_score", score).expect_err(score);
        let message = |got: &str| {
            format!(
                "`data.score` of a player_score event must be between -9007199254740991 and 9007199254740991 (2^53 - 1) once truncated to an integer, got {got}"
            )
        };
        for (json, got) in [
            ("9007199254740992", "9007199254740992"),
            ("-9007199254740992", "-9007199254740992"),
            ("-9223372036854775808", "-9223372036854775808"),
            ("9007199254740992.5", "9007199254740992"),
            ("1e16", "10000000000000000"),
            ("-1.5e18", "-1500000000000000000"),
            ("9223372036854775807", "9223372036854775807"),
            ("9223372036854775808", "9223372036854776000"),
            ("18446744073709551615", "18446744073709552000"),
            ("1e30", "1e30"),
            ("-1.7976931348623157e308", "-1.7976931348623157e308"),
        ] {
            let err = refused(json);
            assert_eq!(err.kind(), "score_out_of_range", "{json}");
            assert_eq!(err.to_string(), message(got), "{json}");
        }
        // 2^63 - 1 as an integer is a valid i64 but not exact; as a double it is 2^63,
        // past 64 bits: both are refused, neither saturated.
        assert_eq!(
            truncated(9_223_372_036_854_775_808.0),
            Score::Huge(9.223_372_036_854_776e18)
        );
        assert_eq!(
            truncated(-9_223_372_036_854_775_808.0),
            Score::Integer(i64::MIN)
        );
    }

    /// Another event type keeps any `data.score`: it counts nowhere.
    #[test]
    fn other_event_types_keep_any_score() {
        for score in [
            "9223372036854775807",
            "18446744073709551615",
            "1e30",
            "12.5",
            r#""ten""#,
            "null",
        ] {
            let event = scored("quest_completed", score).expect(score);
            let mut record = event.accept(Utc::now()).to_record_value();
            parse_record(&mut record).expect("its record reads back");
        }
    }

    #[test]
    fn timestamps_every_store_holds() {
        let at = |timestamp: &str| {
            sub(&format!(
                r#"{{"event_type":"x","player_id":"p","game_id":"g","timestamp":"{timestamp}"}}"#
            ))
        };
        at("0001-01-01T00:00:00Z").expect("the first instant of year 1");
        at("9999-12-31T23:59:59.999999Z").expect("the last of year 9999");
        at("0001-01-01T00:59:59-01:00").expect("year 1 in UTC");
        for outside in [
            "0001-01-01T00:00:00+01:00",
            "0000-06-01T00:00:00Z",
            "9999-12-31T23:59:59-01:00",
        ] {
            assert_eq!(
                at(outside).expect_err(outside).kind(),
                "bad_timestamp",
                "{outside}"
            );
        }
    }

    #[test]
    fn record_needs_id_and_ingest_time() {
        let err = parse_record(&mut GOOD.as_bytes().to_vec()).expect_err("no event_id");
        assert_eq!(err, EventError::Missing("event_id"));
        let with_bad_id = GOOD.replacen(
            '{',
            r#"{"event_id":"nope","ingested_at":"2024-01-15T10:30:00Z","#,
            1,
        );
        assert_eq!(
            parse_record(&mut with_bad_id.into_bytes())
                .expect_err("bad id")
                .kind(),
            "bad_event_id"
        );
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth_and_size() {
        let dup =
            |json: &str| with_json(&mut json.as_bytes().to_vec(), |_| Ok::<_, EventError>(()));
        assert_eq!(
            dup(r#"{"a":1,"b":2,"a":3}"#),
            Err(EventError::DuplicateKey("a".into()))
        );
        assert_eq!(
            dup(r#"[{"x":{"k":[{"deep":1,"deep":2}]}}]"#),
            Err(EventError::DuplicateKey("deep".into()))
        );
        let many: Vec<String> = (0..40).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let mut large = format!("{{{},\"k7\":0}}", many.join(","));
        assert_eq!(
            dup(&large),
            Err(EventError::DuplicateKey("k7".into())),
            "hash-backed objects too"
        );
        large = format!("{{{}}}", many.join(","));
        assert_eq!(dup(&large), Ok(()));
        assert_eq!(dup(r#"{"a":{"a":1},"b":[{"a":2},{"a":3}]}"#), Ok(()));
        let err = sub(r#"{"event_type":"x","player_id":"p","player_id":"q","game_id":"g","timestamp":"2024-01-15T10:30:00Z"}"#)
            .expect_err("duplicate");
        assert_eq!(err.kind(), "duplicate_key");
        assert_eq!(
            err.to_string(),
            "duplicate key \"player_id\" in a JSON object: each key may appear once"
        );
    }

    #[test]
    fn parsing_keeps_values_of_every_shape() {
        let mut json = br#"{"a":[1,-2.5,"s",true,null,{"b":{}}],"c":"\u00e9"}"#.to_vec();
        let encoded =
            with_json(&mut json, |value| Ok::<_, EventError>(value.encode())).expect("valid");
        assert_eq!(encoded, r#"{"a":[1,-2.5,"s",true,null,{"b":{}}],"c":"é"}"#);
    }
}
