//! `cutover plan`: what the old pipeline left, read without changing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::import;
use crate::aggregate::{Period, PeriodKey};
use crate::catalogue::{self, Store};
use crate::config::Config;
use crate::kafka::{self, group_offsets};
use crate::ops::Result;
use crate::ops::offsets::{bounds, holders, partition_clients};
use crate::sinks::redis::RedisKeys;
use crate::sinks::redis::keys::INITIALISED_FIELD;
use crate::sinks::redis::rebuild::oldest_kept;
use crate::sinks::{postgres, redis};

/// Records read past the logger group's committed offset, per partition, to find the
/// ones the old logger wrote without committing (an unclean stop).
const UNCLEAN_SCAN_LIMIT: i64 = 100_000;

/// Everything `plan` prints and `apply` acts on.
#[derive(Debug, Clone, Serialize)]
pub struct Survey {
    pub topic: String,
    pub partitions: Vec<PartitionState>,
    pub groups: Vec<GroupState>,
    pub postgres: PostgresState,
    pub redis: RedisState,
    /// Partitions a gamestream daemon holds (a live lease): `apply` refuses.
    pub daemon_holders: BTreeMap<i32, String>,
    /// When an earlier `apply` adopted this topic, if one did.
    pub adopted_at: Option<DateTime<Utc>>,
    /// From when `events` holds every event (`--events-complete-since`; `None`: all
    /// along, as the old logger never deleted any).
    pub events_complete_since: Option<DateTime<Utc>>,
    /// The daily and weekly boards Redis keeps: rebuilt from `events`, or started empty
    /// where `events` is not complete for the period. (`leaderboard_scores` gets every
    /// complete period, as the sinks keep them all.)
    pub periods: Vec<PeriodPlan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionState {
    pub partition: i32,
    pub earliest: i64,
    pub high_watermark: i64,
}

/// One old consumer group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupState {
    /// `event-logger-group`, ...
    pub legacy: &'static str,
    /// The group's name in Kafka (behind `group_offsets.group_prefix`).
    pub name: String,
    /// The sinks seeded from it.
    pub sinks: Vec<&'static str>,
    /// Committed next offset per partition (partitions it never committed are absent).
    pub offsets: BTreeMap<i32, i64>,
    /// Live members (`client@host`): the old consumers still run.
    pub members: Vec<String>,
    /// Records from the committed offset to the high watermark, per partition: what the
    /// seeded sinks will apply first.
    pub past_commit: BTreeMap<i32, i64>,
    /// For `event-logger-group`: records past its committed offset that are already in
    /// `events` (the old logger wrote them, then stopped before committing). Non-zero
    /// means an unclean stop; the other groups may have applied a window of this kind too.
    pub applied_past_commit: Option<BTreeMap<i32, i64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PostgresState {
    pub database: String,
    pub events: i64,
    pub oldest_event: Option<DateTime<Utc>>,
    pub player_statistics: i64,
    pub leaderboards: i64,
    pub leaderboard_scores: i64,
    /// gamestream's own committed offsets for the topic: non-zero means it already ran here.
    pub sink_offsets: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RedisState {
    pub player_stats_keys: usize,
    pub alltime_boards: usize,
    /// The old undated `leaderboard:{game}:daily|weekly` keys (all-time sums, never rolled over).
    pub period_boards: usize,
    /// Each Redis sink's offsets marker, if it has one (it then keeps its keys).
    pub markers: BTreeMap<&'static str, Option<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeriodPlan {
    pub period: &'static str,
    pub key: String,
    /// Whether `events` is complete for the whole period.
    pub covered: bool,
}

/// Reads the old state. Changes nothing. `events_complete_since`: see [`Survey`].
pub async fn survey(
    config: &Config,
    events_complete_since: Option<DateTime<Utc>>,
) -> Result<Survey> {
    let topic = config.topics.player_events.clone();
    let client = kafka::connect(&config.kafka).await?;
    let clients = partition_clients(&client, &topic).await?;
    let mut partitions = Vec::new();
    for pc in &clients {
        let b = bounds(pc).await?;
        partitions.push(PartitionState {
            partition: pc.partition(),
            earliest: b.earliest,
            high_watermark: b.high_watermark,
        });
    }
    let all: BTreeSet<i32> = partitions.iter().map(|p| p.partition).collect();
    let pool = postgres::connect(&config.postgres).await?;
    let mut groups = Vec::new();
    for group in group_offsets::mirrored_groups(&config.group_offsets.group_prefix) {
        let gc = client.group_client(group.name.clone());
        let offsets = group_offsets::fetch(&gc, &topic, &all).await?;
        let members = match gc.describe().await {
            Ok(d) => d
                .members
                .iter()
                .map(|m| format!("{}@{}", m.client_id, m.client_host))
                .collect(),
            Err(_) => Vec::new(),
        };
        let past_commit = partitions
            .iter()
            .filter_map(|p| {
                let from = offsets.get(&p.partition)?;
                Some((p.partition, (p.high_watermark - from).max(0)))
            })
            .collect();
        let applied_past_commit = if group.legacy == catalogue::LOGGER.legacy_group {
            let mut applied = BTreeMap::new();
            for pc in &clients {
                let p = pc.partition();
                let (Some(&from), Some(state)) = (
                    offsets.get(&p),
                    partitions.iter().find(|s| s.partition == p),
                ) else {
                    continue;
                };
                let to = state.high_watermark.min(from + UNCLEAN_SCAN_LIMIT);
                applied.insert(p, logged_prefix(&pool, pc, from, to).await?);
            }
            Some(applied)
        } else {
            None
        };
        groups.push(GroupState {
            legacy: group.legacy,
            name: group.name,
            sinks: catalogue::of_legacy_group(group.legacy)
                .map(|s| s.name)
                .collect(),
            offsets,
            members,
            past_commit,
            applied_past_commit,
        });
    }
    let postgres = postgres_state(&pool, &config.postgres.database, &topic).await?;
    let adopted_at: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT adopted_at FROM cutover_adoptions WHERE topic = $1")
            .bind(&topic)
            .fetch_optional(&pool)
            .await?;
    let redis_pool = redis::connect(&config.redis).await?;
    let mut conn = redis_pool.get().await.map_err(redis::RedisError::from)?;
    let keys = RedisKeys::new(config.redis.key_prefix.clone());
    let mut markers = BTreeMap::new();
    for spec in catalogue::in_store(Store::Redis) {
        let marker: Option<String> = ::redis::cmd("HGET")
            .arg(keys.offsets(spec.name, &topic))
            .arg(INITIALISED_FIELD)
            .query_async(&mut *conn)
            .await?;
        markers.insert(spec.name, marker);
    }
    let redis = RedisState {
        player_stats_keys: import::stats_players(&mut *conn, &keys).await?.len(),
        alltime_boards: import::alltime_games(&mut *conn, &keys).await?.len(),
        period_boards: import::scan(
            &mut *conn,
            &format!("{}:daily", keys.pattern("leaderboard:")),
        )
        .await?
        .len()
            + import::scan(
                &mut *conn,
                &format!("{}:weekly", keys.pattern("leaderboard:")),
            )
            .await?
            .len(),
        markers,
    };
    let periods = period_plans(
        Utc::now(),
        config.leaderboard.period_ttl,
        events_complete_since,
    );
    Ok(Survey {
        topic: topic.clone(),
        partitions,
        groups,
        postgres,
        redis,
        daemon_holders: holders(&pool, &topic).await?,
        adopted_at,
        events_complete_since,
        periods,
    })
}

/// How many records from `from` on (up to `to`) are already in `events`: the old
/// logger wrote them in offset order, so they are a prefix of the range.
async fn logged_prefix(
    pool: &sqlx::PgPool,
    pc: &rskafka::client::partition::PartitionClient,
    from: i64,
    to: i64,
) -> Result<i64> {
    if from >= to {
        return Ok(0);
    }
    let records = import::read_range(pc, from, to).await?;
    let ids: Vec<uuid::Uuid> = records.iter().map(|(_, e)| e.event_id).collect();
    let logged: BTreeSet<uuid::Uuid> =
        sqlx::query_scalar("SELECT event_id FROM events WHERE event_id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    Ok(records
        .iter()
        .take_while(|(_, e)| logged.contains(&e.event_id))
        .last()
        .map_or(0, |(offset, _)| offset + 1 - from))
}

async fn postgres_state(pool: &sqlx::PgPool, database: &str, topic: &str) -> Result<PostgresState> {
    let (events, oldest_event, player_statistics, leaderboards, leaderboard_scores, sink_offsets): (
        i64,
        Option<DateTime<Utc>>,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM events),
                (SELECT min(event_timestamp) FROM events),
                (SELECT count(*) FROM player_statistics),
                (SELECT count(*) FROM leaderboards),
                (SELECT count(*) FROM leaderboard_scores),
                (SELECT count(*) FROM sink_offsets WHERE topic = $1)",
    )
    .bind(topic)
    .fetch_one(pool)
    .await?;
    Ok(PostgresState {
        database: database.to_owned(),
        events,
        oldest_event,
        player_statistics,
        leaderboards,
        leaderboard_scores,
        sink_offsets,
    })
}

/// The days and weeks whose boards Redis keeps at `now` (as a rebuild would), each
/// covered when `events` is complete from its start on.
pub(super) fn period_plans(
    now: DateTime<Utc>,
    ttl: std::time::Duration,
    events_complete_since: Option<DateTime<Utc>>,
) -> Vec<PeriodPlan> {
    let (first_day, first_week) = oldest_kept(now, ttl);
    let mut out = Vec::new();
    for (period, first, step) in [
        (Period::Daily, first_day, chrono::Duration::days(1)),
        (Period::Weekly, first_week, chrono::Duration::weeks(1)),
    ] {
        let mut key = first;
        while let Some(start) = key.start().filter(|s| *s <= now) {
            out.push(PeriodPlan {
                period: period.as_str(),
                key: key.to_string(),
                covered: covers(events_complete_since, key),
            });
            key = PeriodKey::of(period, start + step);
        }
    }
    out
}

/// Whether `events`, complete since `since`, holds every event of period `key`.
pub(super) fn covers(since: Option<DateTime<Utc>>, key: PeriodKey) -> bool {
    match (since, key.start()) {
        (None, _) => true,
        (Some(since), Some(start)) => since <= start,
        (Some(_), None) => false,
    }
}

impl Survey {
    /// The group continuing into `sink`.
    pub fn group_of(&self, sink: &str) -> Option<&GroupState> {
        self.groups.iter().find(|g| g.sinks.contains(&sink))
    }

    /// The plan as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "cut-over plan for topic `{}`", self.topic);
        if let Some(at) = self.adopted_at {
            let _ = writeln!(
                out,
                "ALREADY ADOPTED at {}: `apply` changes nothing (run `cutover verify`)",
                crate::event::rfc3339(at)
            );
        }
        for (p, owner) in &self.daemon_holders {
            let _ = writeln!(
                out,
                "BLOCKER: partition {p} is held by gamestream daemon `{owner}`: stop it first"
            );
        }
        if self.postgres.sink_offsets > 0 && self.adopted_at.is_none() {
            let _ = writeln!(
                out,
                "BLOCKER: gamestream already consumed into this database ({} sink_offsets rows): adoption is for a database only the old pipeline wrote",
                self.postgres.sink_offsets
            );
        }
        let _ = writeln!(
            out,
            "\noffsets to seed (next offset per partition; earliest..high watermark in brackets):"
        );
        for g in &self.groups {
            let _ = writeln!(
                out,
                "  {} (Kafka group `{}`) -> {}",
                g.legacy,
                g.name,
                g.sinks.join(", ")
            );
            if !g.members.is_empty() {
                let _ = writeln!(
                    out,
                    "    BLOCKER: live members {}: stop the old consumers first",
                    g.members.join(", ")
                );
            }
            for p in &self.partitions {
                let seeded = g
                    .offsets
                    .get(&p.partition)
                    .map_or_else(|| "none committed".to_owned(), |o| o.to_string());
                let _ = write!(
                    out,
                    "    partition {}: {seeded} [{}..{}]",
                    p.partition, p.earliest, p.high_watermark
                );
                if let Some(n) = g.past_commit.get(&p.partition) {
                    let _ = write!(out, ", {n} record(s) to apply");
                }
                if let Some(expired) = g
                    .offsets
                    .get(&p.partition)
                    .map(|o| p.earliest - o)
                    .filter(|n| *n > 0)
                {
                    let _ = write!(
                        out,
                        ", EXPIRED: {expired} record(s) Kafka deleted before the group applied them"
                    );
                }
                if let Some(n) = g
                    .applied_past_commit
                    .as_ref()
                    .and_then(|a| a.get(&p.partition))
                    .filter(|n| **n > 0)
                {
                    let _ = write!(
                        out,
                        ", UNCLEAN STOP: {n} record(s) past the commit already in `events`"
                    );
                }
                let _ = writeln!(out);
            }
        }
        let pg = &self.postgres;
        let _ = writeln!(
            out,
            "\npostgres `{}`: {} events (oldest {}), {} player_statistics rows (replaced from Redis), {} leaderboards rows (kept), {} leaderboard_scores rows",
            pg.database,
            pg.events,
            pg.oldest_event
                .map_or_else(|| "-".into(), |t| crate::event::rfc3339(t).into_owned()),
            pg.player_statistics,
            pg.leaderboards,
            pg.leaderboard_scores,
        );
        let r = &self.redis;
        let _ = writeln!(
            out,
            "redis: {} player_stats hashes (kept, imported), {} all-time boards (kept, imported), {} old daily/weekly boards (replaced)",
            r.player_stats_keys, r.alltime_boards, r.period_boards
        );
        for (sink, marker) in &r.markers {
            let _ = writeln!(
                out,
                "  {sink}: {}",
                marker.as_deref().map_or("no gamestream offsets yet", |m| m)
            );
        }
        let _ = writeln!(
            out,
            "\ndaily and weekly boards (events taken as complete {}; --events-complete-since if it was pruned):",
            self.events_complete_since.map_or_else(
                || "from the first event on".to_owned(),
                |t| format!("since {}", crate::event::rfc3339(t))
            )
        );
        for p in &self.periods {
            let _ = writeln!(
                out,
                "  {} {}: {}",
                p.period,
                p.key,
                if p.covered {
                    "rebuilt from events"
                } else {
                    "started empty (events begins after it)"
                }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn periods_are_covered_from_the_oldest_event() {
        let now = at("2026-12-02T12:00:00Z");
        let plans = period_plans(
            now,
            std::time::Duration::from_secs(2 * 86_400),
            Some(at("2026-12-01T08:00:00Z")),
        );
        assert!(
            period_plans(now, std::time::Duration::from_secs(2 * 86_400), None)
                .iter()
                .all(|p| p.covered)
        );
        let days: Vec<(&str, bool)> = plans
            .iter()
            .filter(|p| p.period == "daily")
            .map(|p| (p.key.as_str(), p.covered))
            .collect();
        assert_eq!(
            days,
            [
                ("2026-11-30", false),
                ("2026-12-01", false),
                ("2026-12-02", true)
            ]
        );
        let weeks: Vec<(&str, bool)> = plans
            .iter()
            .filter(|p| p.period == "weekly")
            .map(|p| (p.key.as_str(), p.covered))
            .collect();
        assert_eq!(weeks, [("2026-W49", false)]);
        assert!(covers(None, PeriodKey::AllTime));
        assert!(!covers(Some(now), PeriodKey::of(Period::Daily, now)));
    }
}
