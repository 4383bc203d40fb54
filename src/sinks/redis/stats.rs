//! `player_stats:{player_id}` hashes: the batch write (one Lua script), the rebuild
//! from Postgres, and the read the query API uses.
//!
//! ```text
//! StatsDelta ─► script_args ─► EVALSHA: check offsets ─► HINCRBY total_events, event_{type}
//!                                                     ─► last_event = max(stored, batch)
//!                                                     ─► advance offsets ─► OK
//! ```

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use redis::aio::ConnectionLike;

use super::keys::RedisKeys;
use super::offsets::{ScriptStatus, commit_args, offsets_lua};
use crate::aggregate::StatsDelta;
use crate::aggregate::stats::PlayerStats;
use crate::aggregate::stats::last_event_text;
use crate::sinks::{OffsetCommit, SinkError};

/// The hash field of one event type's counter (CONTRACT: `event_{event_type}`).
pub fn type_field(event_type: &str) -> String {
    format!("event_{event_type}")
}

/// Fields of the hash besides the per-type counters.
pub const TOTAL_FIELD: &str = "total_events";
pub const LAST_EVENT_FIELD: &str = "last_event";

/// KEYS: offsets hash, then one hash per player. ARGV after the commits, per player in
/// KEYS order: total, last_event, number of types, then (field, count) per type.
const SCRIPT: &str = concat!(
    offsets_lua!(),
    r#"
local state, detail = offsets_state()
if state ~= 'APPLY' then return state .. detail end
for k = 2, #KEYS do
  local wrong = require_type(KEYS[k], 'hash')
  if wrong then return redis.error_reply(wrong) end
end
local j = args_start()
for k = 2, #KEYS do
  local key = KEYS[k]
  redis.call('HINCRBY', key, 'total_events', ARGV[j])
  local last = ARGV[j + 1]
  local current = redis.call('HGET', key, 'last_event')
  if (not current) or current < last then
    redis.call('HSET', key, 'last_event', last)
  end
  local types = tonumber(ARGV[j + 2])
  j = j + 3
  for _ = 1, types do
    redis.call('HINCRBY', key, ARGV[j], ARGV[j + 1])
    j = j + 2
  end
end
commit_offsets()
return 'OK'
"#
);

/// The script, hashed once (EVALSHA, with EVAL when Redis does not know it yet).
pub fn script() -> redis::Script {
    redis::Script::new(SCRIPT)
}

/// KEYS and ARGV of one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptArgs {
    pub keys: Vec<String>,
    pub args: Vec<String>,
}

/// Builds the script's KEYS and ARGV for `delta` and `commits`.
pub fn script_args(
    keys: &RedisKeys,
    offsets_key: &str,
    delta: &StatsDelta<'_>,
    commits: &[OffsetCommit],
) -> ScriptArgs {
    let mut out = ScriptArgs {
        keys: Vec::with_capacity(1 + delta.len()),
        args: commit_args(commits),
    };
    out.keys.push(offsets_key.to_owned());
    for (player_id, player) in delta.iter() {
        out.keys.push(keys.player_stats(player_id));
        out.args.push(player.total.to_string());
        out.args.push(last_event_text(player.last_event));
        out.args.push(player.breakdown.len().to_string());
        for (event_type, count) in &player.breakdown {
            out.args.push(type_field(event_type));
            out.args.push(count.to_string());
        }
    }
    out
}

/// Applies one batch and commits its offsets, atomically.
pub async fn write(
    conn: &mut impl ConnectionLike,
    script: &redis::Script,
    sink: &str,
    args: &ScriptArgs,
) -> Result<(), SinkError> {
    let mut invocation = script.prepare_invoke();
    for key in &args.keys {
        invocation.key(key);
    }
    for arg in &args.args {
        invocation.arg(arg);
    }
    let reply: String = invocation.invoke_async(conn).await?;
    ScriptStatus::parse(&reply)?.into_result(sink)
}

/// The commands that write one player's hash from scratch (rebuild).
pub fn rebuild_commands(pipe: &mut redis::Pipeline, keys: &RedisKeys, stats: &PlayerStats) {
    let key = keys.player_stats(&stats.player_id);
    pipe.cmd("DEL").arg(&key).ignore();
    let hset = pipe.cmd("HSET").arg(&key);
    hset.arg(TOTAL_FIELD).arg(stats.total_events);
    if let Some(t) = stats.last_event {
        hset.arg(LAST_EVENT_FIELD).arg(last_event_text(t));
    }
    for (event_type, count) in &stats.event_breakdown {
        hset.arg(type_field(event_type)).arg(*count);
    }
    hset.ignore();
}

/// Reads a player's hash; `None` if Redis has no such key.
pub async fn read(
    conn: &mut impl ConnectionLike,
    keys: &RedisKeys,
    player_id: &str,
) -> Result<Option<PlayerStats>, redis::RedisError> {
    let fields: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.player_stats(player_id))
        .query_async(conn)
        .await?;
    if fields.is_empty() {
        return Ok(None);
    }
    Ok(Some(from_fields(player_id, &fields)))
}

/// A hash's fields as statistics; a field that is not a number counts as 0.
/// A player's hash as statistics. Also reads the old pipeline's hashes (`gamestream
/// cutover`): a missing `total_events` is the breakdown's sum, and `last_event` may be
/// Python's `isoformat()` of a naive UTC time.
pub fn from_fields(player_id: &str, fields: &HashMap<String, String>) -> PlayerStats {
    let number = |v: &String| v.parse::<i64>().unwrap_or_default();
    let event_breakdown: BTreeMap<String, i64> = fields
        .iter()
        .filter_map(|(field, value)| {
            Some((field.strip_prefix("event_")?.to_owned(), number(value)))
        })
        .collect();
    PlayerStats {
        player_id: player_id.to_owned(),
        total_events: fields
            .get(TOTAL_FIELD)
            .map(number)
            .unwrap_or_else(|| event_breakdown.values().sum()),
        event_breakdown,
        last_event: fields.get(LAST_EVENT_FIELD).and_then(|t| parse_time(t)),
    }
}

/// A time as a hash holds it: RFC 3339, or (written by the old pipeline) a naive UTC time.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Score};

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
    fn arguments_follow_the_scripts_layout() {
        let events = [
            event("p2", "quest_completed", "2026-11-22T10:00:00Z"),
            event("p1", "player_score", "2026-11-22T10:00:01Z"),
            event("p2", "player_level_up", "2026-11-22T10:00:02Z"),
        ];
        let delta = StatsDelta::of(&events);
        let commits = [OffsetCommit {
            partition: 1,
            expected: Some(3),
            next: 6,
            epoch: None,
        }];
        let args = script_args(&RedisKeys::new("x:"), "x:offsets", &delta, &commits);
        assert_eq!(
            args.keys,
            ["x:offsets", "x:player_stats:p1", "x:player_stats:p2"]
        );
        assert_eq!(
            args.args,
            [
                "1",
                "1",
                "3",
                "6",
                "", // commits (no lease epoch)
                "1",
                "2026-11-22T10:00:01.000000Z",
                "1",
                "event_player_score",
                "1", // p1
                "2",
                "2026-11-22T10:00:02.000000Z",
                "2",
                "event_player_level_up",
                "1",
                "event_quest_completed",
                "1", // p2
            ]
        );
    }

    #[test]
    fn hash_fields_read_back() {
        let fields: HashMap<String, String> = [
            ("total_events", "3"),
            ("event_player_score", "2"),
            ("event_boss_defeated", "1"),
            ("last_event", "2026-11-22T10:00:01.000000Z"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let stats = from_fields("p", &fields);
        assert_eq!(stats.total_events, 3);
        assert_eq!(stats.event_breakdown.len(), 2);
        assert_eq!(stats.event_breakdown["player_score"], 2);
        assert_eq!(
            stats.last_event.map(|t| t.to_rfc3339()),
            Some("2026-11-22T10:00:01+00:00".to_owned())
        );
    }
}
