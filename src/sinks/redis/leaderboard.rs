//! `leaderboard:*` sorted sets: the batch write (one Lua script), the rebuild from
//! Postgres, and the read the query API uses.
//!
//! Every score goes to three boards of the event's own periods:
//!
//! ```text
//! leaderboard:{g}:alltime                     always
//! leaderboard:{g}:daily:2026-11-22            the event's UTC day      (EXPIREAT day end + period_ttl)
//! leaderboard:{g}:weekly:2026-W47             the event's ISO week     (EXPIREAT week end + period_ttl)
//! leaderboard:{g}:daily, leaderboard:{g}:weekly
//!                                             only if that period is the current one (EXPIREAT period end)
//! ```
//!
//! The undated daily and weekly keys are the CONTRACT's "current period" boards. They
//! expire when their period ends, so yesterday's scores never linger there; and before
//! a batch adds to one, the script checks which period it holds (the
//! `gamestream:leaderboard-period:*` key) and, at a rollover, first replaces it with a
//! copy of the dated key of the new period, which already has that period's early
//! (clock-skewed) events. A dated key past its TTL is not written at all.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionLike;

use super::keys::RedisKeys;
use super::offsets::{ScriptStatus, commit_args, offsets_lua};
use crate::aggregate::scores::{Ranked, SCORE_BOUND_REFUSAL, ScoreCell, ScoreRow};
use crate::aggregate::{CellSum, Period, PeriodKey, ScoreDelta};
use crate::sinks::{OffsetCommit, SinkError};

/// KEYS: offsets hash; then (undated, dated, period marker) per rollover; then one key
/// per group. ARGV after the commits: rollover count, then (period label, expire-at
/// seconds) per rollover; group count, then per group: expire-at (0: none), member
/// count, then (member, increment, highest and lowest running sum) per member.
const SCRIPT: &str = concat!(
    offsets_lua!(),
    r#"
local state, detail = offsets_state()
if state ~= 'APPLY' then return state .. detail end
local j = args_start()
local rollovers = tonumber(ARGV[j])
local groups_at = j + 1 + 2 * rollovers
local groups = tonumber(ARGV[groups_at])
for k = 2, #KEYS do
  local wanted = 'zset'
  if k <= 1 + 3 * rollovers and (k - 1) % 3 == 0 then wanted = 'string' end
  local wrong = require_type(KEYS[k], wanted)
  if wrong then return redis.error_reply(wrong) end
end
j = j + 1
local k = 2
for _ = 1, rollovers do
  local undated, dated, marker = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local label, expire_at = ARGV[j], ARGV[j + 1]
  if redis.call('GET', marker) ~= label then
    redis.call('ZUNIONSTORE', undated, 1, dated)
    redis.call('SET', marker, label)
    redis.call('EXPIREAT', marker, expire_at)
  end
  k = k + 3
  j = j + 2
end
-- Every new score within ±(2^53 - 1), checked before the first increment (a script is
-- not rolled back). Exact: both terms are integers below 2^53 in magnitude, and a double
-- sum rounds monotonically, so a sum that reaches 2^53 never rounds below it.
local first_group = k
j = groups_at + 1
for _ = 1, groups do
  local key = KEYS[k]
  local members = tonumber(ARGV[j + 1])
  j = j + 2
  for _ = 1, members do
    local current = tonumber(redis.call('ZSCORE', key, ARGV[j]) or '0')
    local high, low = current + tonumber(ARGV[j + 2]), current + tonumber(ARGV[j + 3])
    if high >= 9007199254740992 or low <= -9007199254740992 then
      local reached = high
      if low <= -9007199254740992 then reached = low end
      return redis.error_reply('SCORE_BOUND ' .. key .. ' member ' .. ARGV[j] .. ': adding the batch would take its score to ' .. string.format('%.0f', reached))
    end
    j = j + 4
  end
  k = k + 1
end
k = first_group
j = groups_at + 1
for _ = 1, groups do
  local key = KEYS[k]
  local expire_at = tonumber(ARGV[j])
  local members = tonumber(ARGV[j + 1])
  j = j + 2
  for _ = 1, members do
    redis.call('ZINCRBY', key, ARGV[j + 1], ARGV[j])
    j = j + 4
  end
  if expire_at > 0 then redis.call('EXPIREAT', key, expire_at) end
  k = k + 1
end
commit_offsets()
return 'OK'
"#
);

/// The script, hashed once.
pub fn script() -> redis::Script {
    redis::Script::new(SCRIPT)
}

/// Before adding to an undated key: make sure it holds `label`'s period.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rollover {
    undated: String,
    dated: String,
    marker: String,
    label: String,
    expire_at: i64,
}

/// Increments to one sorted set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Group<'a> {
    /// Unix seconds at which the key expires; 0 for never.
    expire_at: i64,
    members: Vec<(&'a str, CellSum)>,
}

/// What one batch does to the sorted sets, before it becomes script arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan<'a> {
    rollovers: BTreeMap<String, Rollover>,
    groups: BTreeMap<String, Group<'a>>,
}

/// When a dated key of `key`'s period expires: its end plus the TTL.
fn dated_expiry(key: PeriodKey, ttl: Duration) -> Option<DateTime<Utc>> {
    let ttl = chrono::Duration::from_std(ttl).ok()?;
    key.end()?.checked_add_signed(ttl)
}

/// Plans the writes of `delta` at time `now`.
pub fn plan<'a>(
    keys: &RedisKeys,
    delta: &ScoreDelta<'a>,
    now: DateTime<Utc>,
    ttl: Duration,
) -> Plan<'a> {
    let mut plan = Plan::default();
    for (cell, sum) in delta.sums() {
        plan.add(keys, cell, sum, now, ttl);
    }
    plan
}

impl<'a> Plan<'a> {
    fn add(
        &mut self,
        keys: &RedisKeys,
        cell: ScoreCell<'a>,
        sum: CellSum,
        now: DateTime<Utc>,
        ttl: Duration,
    ) {
        let period = cell.key.period();
        if period == Period::AllTime {
            self.push(
                keys.leaderboard(cell.game_id, period),
                0,
                cell.player_id,
                sum,
            );
            return;
        }
        match dated_expiry(cell.key, ttl) {
            Some(expiry) if expiry > now => self.push(
                keys.leaderboard_of(cell.game_id, cell.key),
                expiry.timestamp(),
                cell.player_id,
                sum,
            ),
            _ => {} // past its TTL in Redis; Postgres keeps it
        }
        if cell.key != PeriodKey::of(period, now) {
            return; // a late (or early) event: not the current period's board
        }
        let Some(end) = cell.key.end() else {
            return;
        };
        let undated = keys.leaderboard(cell.game_id, period);
        self.rollovers
            .entry(undated.clone())
            .or_insert_with(|| Rollover {
                undated: undated.clone(),
                dated: keys.leaderboard_of(cell.game_id, cell.key),
                marker: keys.leaderboard_period(cell.game_id, period),
                label: cell.key.to_string(),
                expire_at: end.timestamp(),
            });
        self.push(undated, end.timestamp(), cell.player_id, sum);
    }

    fn push(&mut self, key: String, expire_at: i64, member: &'a str, sum: CellSum) {
        let group = self.groups.entry(key).or_default();
        group.expire_at = expire_at;
        group.members.push((member, sum));
    }

    /// Whether the batch changes no sorted set (it still commits its offsets).
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The script's KEYS and ARGV.
    pub fn script_args(
        &self,
        offsets_key: &str,
        commits: &[OffsetCommit],
    ) -> super::stats::ScriptArgs {
        let mut keys = vec![offsets_key.to_owned()];
        let mut args = commit_args(commits);
        args.push(self.rollovers.len().to_string());
        for r in self.rollovers.values() {
            keys.extend([r.undated.clone(), r.dated.clone(), r.marker.clone()]);
            args.extend([r.label.clone(), r.expire_at.to_string()]);
        }
        args.push(self.groups.len().to_string());
        for (key, group) in &self.groups {
            keys.push(key.clone());
            args.push(group.expire_at.to_string());
            args.push(group.members.len().to_string());
            for (member, sum) in &group.members {
                args.push((*member).to_owned());
                args.push(sum.sum.to_string());
                args.push(sum.high.to_string());
                args.push(sum.low.to_string());
            }
        }
        super::stats::ScriptArgs { keys, args }
    }
}

/// Applies one batch and commits its offsets, atomically.
pub async fn write(
    conn: &mut impl ConnectionLike,
    script: &redis::Script,
    sink: &str,
    args: &super::stats::ScriptArgs,
) -> Result<(), SinkError> {
    let mut invocation = script.prepare_invoke();
    for key in &args.keys {
        invocation.key(key);
    }
    for arg in &args.args {
        invocation.arg(arg);
    }
    let reply: String = match invocation.invoke_async(conn).await {
        Ok(reply) => reply,
        Err(e) if e.code() == Some(SCORE_BOUND) => {
            return Err(SinkError::permanent(format!(
                "{}: {SCORE_BOUND_REFUSAL}",
                e.detail().unwrap_or("a leaderboard score")
            )));
        }
        Err(e) => return Err(e.into()),
    };
    ScriptStatus::parse(&reply)?.into_result(sink)
}

/// The error code of the script's refusal of a score past ±(2^53 - 1): nothing was
/// written, and the batch holds a record that Postgres refuses too.
const SCORE_BOUND: &str = "SCORE_BOUND";

/// Rebuild: the commands that put one stored score into its boards. Returns the keys
/// that need an expiry (dated and undated), with it, so the caller sets each once.
pub fn rebuild_commands(
    pipe: &mut redis::Pipeline,
    keys: &RedisKeys,
    row: &ScoreRow,
    now: DateTime<Utc>,
    ttl: Duration,
    expiries: &mut BTreeMap<String, i64>,
    markers: &mut BTreeMap<String, (String, i64)>,
) {
    let period = row.key.period();
    if period == Period::AllTime {
        pipe.zadd(
            keys.leaderboard(&row.game_id, period),
            &row.player_id,
            row.score,
        )
        .ignore();
        return;
    }
    if let Some(expiry) = dated_expiry(row.key, ttl).filter(|e| *e > now) {
        let dated = keys.leaderboard_of(&row.game_id, row.key);
        pipe.zadd(&dated, &row.player_id, row.score).ignore();
        expiries.insert(dated, expiry.timestamp());
    }
    if let (true, Some(end)) = (row.key == PeriodKey::of(period, now), row.key.end()) {
        let undated = keys.leaderboard(&row.game_id, period);
        pipe.zadd(&undated, &row.player_id, row.score).ignore();
        expiries.insert(undated, end.timestamp());
        markers.insert(
            keys.leaderboard_period(&row.game_id, period),
            (row.key.to_string(), end.timestamp()),
        );
    }
}

/// The top `limit` of a board, highest first (ties: player id descending, as
/// `ZRANGE ... REV` orders them). Empty when Redis has no such key.
pub async fn top(
    conn: &mut impl ConnectionLike,
    key: &str,
    limit: usize,
) -> Result<Vec<Ranked>, redis::RedisError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let entries: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(limit - 1)
        .arg("REV")
        .arg("WITHSCORES")
        .query_async(conn)
        .await?;
    Ok(entries
        .into_iter()
        .map(|(player_id, score)| Ranked {
            player_id,
            // Sums of integer scores are integers; Redis holds them as doubles.
            score: score.round() as i64,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Score};

    fn at(t: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(t)
            .expect("test time")
            .with_timezone(&Utc)
    }

    fn score(player: &str, t: &str, points: i64) -> Event {
        Event {
            event_id: uuid::Uuid::new_v4(),
            event_type: "player_score".to_owned(),
            player_id: player.to_owned(),
            game_id: "g".to_owned(),
            timestamp: at(t),
            ingested_at: Utc::now(),
            data: "{}".to_owned(),
            score: Score::Integer(points),
        }
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn current_late_and_expired_events() {
        let now = at("2027-01-01T00:00:05Z"); // Friday, ISO week 2026-W53
        let events = [
            score("a", "2027-01-01T00:00:01Z", 5), // today, this week
            score("b", "2026-12-31T23:59:59Z", 7), // yesterday, this week
            score("a", "2026-12-20T10:00:00Z", 1), // 12 days late: own day and week, within TTL
            score("c", "2026-10-01T10:00:00Z", 2), // past the 35-day TTL: only all time
        ];
        let delta = ScoreDelta::of(&events).expect("no overflow");
        let plan = plan(&RedisKeys::new("t:"), &delta, now, DAY * 35);
        let args = plan.script_args("t:offsets", &[]);
        assert_eq!(
            args.keys,
            [
                "t:offsets",
                // rollovers (undated, dated, marker), by undated key
                "t:leaderboard:g:daily",
                "t:leaderboard:g:daily:2027-01-01",
                "t:gamestream:leaderboard-period:g:daily",
                "t:leaderboard:g:weekly",
                "t:leaderboard:g:weekly:2026-W53",
                "t:gamestream:leaderboard-period:g:weekly",
                // groups, by key
                "t:leaderboard:g:alltime",
                "t:leaderboard:g:daily",
                "t:leaderboard:g:daily:2026-12-20",
                "t:leaderboard:g:daily:2026-12-31",
                "t:leaderboard:g:daily:2027-01-01",
                "t:leaderboard:g:weekly",
                "t:leaderboard:g:weekly:2026-W51",
                "t:leaderboard:g:weekly:2026-W53",
            ]
        );
        let day_end = at("2027-01-02T00:00:00Z").timestamp().to_string();
        let week_end = at("2027-01-04T00:00:00Z").timestamp().to_string();
        let ttl_after = |t: &str| (at(t).timestamp() + 35 * 86_400).to_string();
        let expected: Vec<String> = [
            "0", // no commits
            "2",
            "2027-01-01",
            &day_end,
            "2026-W53",
            &week_end,
            "8", // groups
            "0",
            "3",
            "a",
            "6",
            "6",
            "0",
            "b",
            "7",
            "7",
            "0",
            "c",
            "2",
            "2",
            "0", // alltime
            &day_end,
            "1",
            "a",
            "5",
            "5",
            "0", // daily (current)
            &ttl_after("2026-12-21T00:00:00Z"),
            "1",
            "a",
            "1",
            "1",
            "0", // daily:2026-12-20
            &ttl_after("2027-01-01T00:00:00Z"),
            "1",
            "b",
            "7",
            "7",
            "0", // daily:2026-12-31
            &ttl_after("2027-01-02T00:00:00Z"),
            "1",
            "a",
            "5",
            "5",
            "0", // daily:2027-01-01
            &week_end,
            "2",
            "a",
            "5",
            "5",
            "0",
            "b",
            "7",
            "7",
            "0", // weekly (current)
            &ttl_after("2026-12-21T00:00:00Z"),
            "1",
            "a",
            "1",
            "1",
            "0", // weekly:2026-W51
            &ttl_after("2027-01-04T00:00:00Z"),
            "2",
            "a",
            "5",
            "5",
            "0",
            "b",
            "7",
            "7",
            "0", // weekly:2026-W53
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        assert_eq!(args.args, expected);
    }

    #[test]
    fn no_scores_no_groups_but_commits() {
        let delta = ScoreDelta::of(&[]).expect("empty");
        let plan = plan(&RedisKeys::new(""), &delta, Utc::now(), DAY);
        assert!(plan.is_empty());
        let commits = [OffsetCommit {
            partition: 0,
            expected: None,
            next: 3,
            epoch: None,
        }];
        let args = plan.script_args("o", &commits);
        assert_eq!(args.keys, ["o"]);
        assert_eq!(args.args, ["1", "0", "", "3", "", "0", "0"]);
    }

    #[test]
    fn rebuild_puts_rows_in_their_boards() {
        let now = at("2026-11-22T12:00:00Z");
        let keys = RedisKeys::new("");
        let mut pipe = redis::pipe();
        let (mut expiries, mut markers) = (BTreeMap::new(), BTreeMap::new());
        let today = PeriodKey::of(Period::Daily, now);
        for key in [
            PeriodKey::AllTime,
            today,
            PeriodKey::of(Period::Daily, at("2026-01-01T00:00:00Z")),
        ] {
            let row = ScoreRow {
                game_id: "g".into(),
                key,
                player_id: "p".into(),
                score: 3,
            };
            rebuild_commands(
                &mut pipe,
                &keys,
                &row,
                now,
                DAY * 35,
                &mut expiries,
                &mut markers,
            );
        }
        assert_eq!(
            expiries.keys().collect::<Vec<_>>(),
            ["leaderboard:g:daily", "leaderboard:g:daily:2026-11-22"]
        );
        assert_eq!(
            markers
                .get("gamestream:leaderboard-period:g:daily")
                .map(|m| m.0.as_str()),
            Some("2026-11-22")
        );
        assert_eq!(
            pipe.cmd_iter().count(),
            3,
            "all time, dated today, undated today"
        );
    }
}
