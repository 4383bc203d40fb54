//! Committed offsets of the Redis sinks, stored in Redis beside the data.
//!
//! Each Redis sink keeps a hash `gamestream:offsets:{sink}:{topic}` (partition → next
//! offset, plus [`INITIALISED_FIELD`]). Its write is one Lua script that checks the
//! offsets, applies the batch and advances them, atomically (Redis runs a script
//! alone), so Redis applies each record once, as Postgres does with `sink_offsets`:
//!
//! ```text
//! marker missing                    → MISSING (Redis lost its data: restart and rebuild)
//! a stored lease epoch > the commit's → LEASE p,.. (this daemon lost those partitions)
//! every stored offset == expected   → apply, advance → OK
//! every stored offset == next       → DONE (this very write already landed: a retry after a timeout)
//! anything else                     → FENCED (another writer moved them)
//! ```

use std::collections::BTreeMap;

use redis::aio::ConnectionLike;

use super::keys::INITIALISED_FIELD;
use crate::sinks::error::WriteError;
use crate::sinks::{OffsetCommit, SinkError};

/// The Lua functions every sink script starts with. `KEYS[1]` is the offsets hash;
/// `ARGV[1]` the number of commits, followed by (partition, expected or '', next,
/// lease epoch or '') per commit; a script's own arguments start at `args_start()`.
/// A macro, so that `concat!` can prepend it to each script at compile time.
///
/// The lease fence: the hash keeps `epoch:{partition}`, the highest lease epoch that
/// wrote (or claimed) the partition. A commit with a lower epoch is refused (`LEASE`
/// and the partitions), so a daemon that lost its lease cannot write once the new
/// owner has claimed the partition ([`CLAIM_SCRIPT`]), even where the offsets match.
macro_rules! offsets_lua {
    () => {
        r#"
local STRIDE = 4
local function args_start()
  return 2 + STRIDE * tonumber(ARGV[1])
end

local function offsets_state()
  if redis.call('HEXISTS', KEYS[1], 'initialised_at') == 0 then
    return 'MISSING', ''
  end
  local c = tonumber(ARGV[1])
  local apply, done, detail, lost = true, true, '', ''
  for i = 0, c - 1 do
    local p, expected, nxt, epoch = ARGV[2 + STRIDE * i], ARGV[3 + STRIDE * i], ARGV[4 + STRIDE * i], ARGV[5 + STRIDE * i]
    if epoch ~= '' then
      local stored_epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch:' .. p) or '-1')
      if stored_epoch > tonumber(epoch) then
        if lost ~= '' then lost = lost .. ',' end
        lost = lost .. p
      end
    end
    local stored = redis.call('HGET', KEYS[1], p) or ''
    if stored ~= expected then apply = false end
    if stored ~= nxt then done = false end
    detail = detail .. ' p' .. p .. ' stored=' .. stored .. ' expected=' .. expected
  end
  if lost ~= '' then return 'LEASE', ' ' .. lost end
  if apply then return 'APPLY', '' end
  if done then return 'DONE', '' end
  return 'FENCED', detail
end

local function commit_offsets()
  local c = tonumber(ARGV[1])
  for i = 0, c - 1 do
    local p, epoch = ARGV[2 + STRIDE * i], ARGV[5 + STRIDE * i]
    redis.call('HSET', KEYS[1], p, ARGV[4 + STRIDE * i])
    if epoch ~= '' then redis.call('HSET', KEYS[1], 'epoch:' .. p, epoch) end
  end
  return args_start()
end

local function require_type(key, wanted)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= wanted then
    return 'WRONGTYPE gamestream: ' .. key .. ' holds a ' .. t .. ', not a ' .. wanted
  end
  return nil
end
"#
    };
}
pub(crate) use offsets_lua;

/// Claims a partition for a new lease epoch in a Redis sink's offsets hash, before
/// the sink reads where to resume: from then on a writer with an older epoch is
/// refused. KEYS[1]: the offsets hash; ARGV: partition, epoch. Answers `MISSING`
/// (Redis lost its data: rebuild first), `LEASE` (a newer epoch already claimed it),
/// or `OK <next offset or ''>`.
pub const CLAIM_SCRIPT: &str = r#"
if redis.call('HEXISTS', KEYS[1], 'initialised_at') == 0 then return 'MISSING' end
local field = 'epoch:' .. ARGV[1]
local stored = tonumber(redis.call('HGET', KEYS[1], field) or '-1')
if stored > tonumber(ARGV[2]) then return 'LEASE ' .. ARGV[1] end
redis.call('HSET', KEYS[1], field, ARGV[2])
return 'OK ' .. (redis.call('HGET', KEYS[1], ARGV[1]) or '')
"#;

/// What the claim script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Claimed; the partition's next offset, if Redis has one.
    Claimed(Option<i64>),
    /// The offsets hash has no marker: rebuild, then claim again.
    Missing,
}

/// Claims `partition` at `epoch` in `offsets_key` (see [`CLAIM_SCRIPT`]).
pub async fn claim(
    conn: &mut impl ConnectionLike,
    offsets_key: &str,
    partition: i32,
    epoch: i64,
) -> Result<Claim, SinkError> {
    let reply: String = redis::Script::new(CLAIM_SCRIPT)
        .key(offsets_key)
        .arg(partition)
        .arg(epoch)
        .invoke_async(conn)
        .await?;
    match reply.split_once(' ').unwrap_or((reply.as_str(), "")) {
        ("MISSING", _) => Ok(Claim::Missing),
        ("LEASE", _) => Err(SinkError::LeaseLost(vec![partition])),
        ("OK", "") => Ok(Claim::Claimed(None)),
        ("OK", next) => next
            .parse()
            .map(|n| Claim::Claimed(Some(n)))
            .map_err(|_| SinkError::unexpected(format!("claim script answered {reply:?}"))),
        _ => Err(SinkError::unexpected(format!(
            "claim script answered {reply:?}"
        ))),
    }
}

/// What a sink script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptStatus {
    /// Applied and committed.
    Applied,
    /// Already applied by an earlier attempt of the same write.
    AlreadyApplied,
    /// The offsets hash has no marker: Redis lost its data.
    Missing,
    /// The stored offsets are neither the expected nor the next ones.
    Fenced(String),
    /// A newer lease epoch holds these partitions.
    LeaseLost(Vec<i32>),
}

impl ScriptStatus {
    /// Reads a script's reply (`OK`, `DONE`, `MISSING`, `FENCED <detail>`).
    pub fn parse(reply: &str) -> Result<Self, SinkError> {
        match reply.split_once(' ').unwrap_or((reply, "")) {
            ("OK", _) => Ok(ScriptStatus::Applied),
            ("DONE", _) => Ok(ScriptStatus::AlreadyApplied),
            ("MISSING", _) => Ok(ScriptStatus::Missing),
            ("FENCED", detail) => Ok(ScriptStatus::Fenced(detail.trim().to_owned())),
            ("LEASE", list) => Ok(ScriptStatus::LeaseLost(
                list.trim()
                    .split(',')
                    .filter_map(|p| p.parse().ok())
                    .collect(),
            )),
            // A script that answers something else is broken for every batch, not
            // refusing this one: crash and let the supervisor decide.
            _ => Err(SinkError::unexpected(format!(
                "redis script answered {reply:?}"
            ))),
        }
    }

    /// The write's outcome for the sink actor. MISSING and FENCED are `Fenced`: the
    /// actor stops, the pipeline restarts from committed offsets, and the restarted sink
    /// rebuilds Redis (MISSING) or reloads what another writer committed (FENCED).
    pub fn into_result(self, sink: &str) -> Result<(), SinkError> {
        match self {
            ScriptStatus::Applied | ScriptStatus::AlreadyApplied => Ok(()),
            ScriptStatus::Missing => Err(SinkError::Fatal(WriteError::RedisLost {
                sink: sink.to_owned(),
            })),
            ScriptStatus::Fenced(detail) => Err(SinkError::Fatal(WriteError::OffsetsMoved {
                sink: sink.to_owned(),
                topic: "Redis".to_owned(),
                detail: format!(":{detail}"),
            })),
            ScriptStatus::LeaseLost(partitions) => Err(SinkError::LeaseLost(partitions)),
        }
    }
}

/// The commit arguments of a sink script: count, then (partition, expected, next,
/// epoch) per commit ('' for an absent expected offset or epoch).
pub fn commit_args(commits: &[OffsetCommit]) -> Vec<String> {
    let mut args = Vec::with_capacity(1 + 4 * commits.len());
    args.push(commits.len().to_string());
    for c in commits {
        args.push(c.partition.to_string());
        args.push(c.expected.map(|e| e.to_string()).unwrap_or_default());
        args.push(c.next.to_string());
        args.push(c.epoch.map(|e| e.to_string()).unwrap_or_default());
    }
    args
}

/// The offsets hash, read: `None` when the marker is missing (Redis lost its data, or
/// the sink has never run against this Redis), else the next offset per partition.
pub async fn load(
    conn: &mut impl ConnectionLike,
    offsets_key: &str,
) -> Result<Option<BTreeMap<i32, i64>>, redis::RedisError> {
    let fields: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(offsets_key)
        .query_async(conn)
        .await?;
    if !fields.contains_key(INITIALISED_FIELD) {
        return Ok(None);
    }
    Ok(Some(
        fields
            .iter()
            .filter_map(|(field, value)| Some((field.parse().ok()?, value.parse().ok()?)))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_arguments() {
        let args = commit_args(&[
            OffsetCommit {
                partition: 0,
                expected: None,
                next: 10,
                epoch: None,
            },
            OffsetCommit {
                partition: 2,
                expected: Some(7),
                next: 9,
                epoch: Some(3),
            },
        ]);
        assert_eq!(args, ["2", "0", "", "10", "", "2", "7", "9", "3"]);
    }

    #[test]
    fn script_replies() {
        assert_eq!(ScriptStatus::parse("OK").ok(), Some(ScriptStatus::Applied));
        assert_eq!(
            ScriptStatus::parse("DONE").ok(),
            Some(ScriptStatus::AlreadyApplied)
        );
        assert_eq!(
            ScriptStatus::parse("MISSING").ok(),
            Some(ScriptStatus::Missing)
        );
        assert_eq!(
            ScriptStatus::parse("FENCED  p0 stored=5 expected=4").ok(),
            Some(ScriptStatus::Fenced("p0 stored=5 expected=4".into()))
        );
        assert_eq!(
            ScriptStatus::parse("LEASE 1,4").ok(),
            Some(ScriptStatus::LeaseLost(vec![1, 4]))
        );
        assert!(ScriptStatus::parse("what").is_err());
        assert!(matches!(
            ScriptStatus::Missing.into_result("s"),
            Err(SinkError::Fatal(WriteError::RedisLost { .. }))
        ));
        assert!(ScriptStatus::AlreadyApplied.into_result("s").is_ok());
    }
}
