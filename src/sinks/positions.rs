//! Where each sink stands: its committed positions, read from its own store, and the
//! position of each old consumer group (the slowest of the sinks continuing it), for
//! the mirror of the groups in Kafka (`kafka::group_offsets`, `actors::group_mirror`).

use std::collections::{BTreeMap, BTreeSet};

use super::StoreError;
use super::postgres;
use super::redis::{RedisKeys, RedisPool, offsets as redis_offsets};
use crate::catalogue::{self, Store};

/// Committed next offsets per partition, by sink; `None` for a Redis sink whose offsets
/// are gone (it rebuilds them from Postgres when it starts).
pub type SinkPositions = BTreeMap<&'static str, Option<BTreeMap<i32, i64>>>;

/// Every sink's committed positions in `topic`, from Postgres and Redis.
pub async fn sink_positions(
    pg: &sqlx::PgPool,
    redis: &RedisPool,
    keys: &RedisKeys,
    topic: &str,
) -> Result<SinkPositions, StoreError> {
    let mut in_postgres = postgres::offsets::load_all(pg, topic).await?;
    let mut out = SinkPositions::new();
    for spec in catalogue::SINKS.iter() {
        let positions = match spec.store {
            Store::Postgres => Some(in_postgres.remove(spec.name).unwrap_or_default()),
            Store::Redis => {
                let mut conn = redis.get().await.map_err(super::redis::RedisError::from)?;
                redis_offsets::load(&mut *conn, &keys.offsets(spec.name, topic)).await?
            }
        };
        out.insert(spec.name, positions);
    }
    Ok(out)
}

/// The position of the old group `legacy` in each of `partitions`: the lowest of its
/// sinks' committed next offsets. Partitions some sink has no offset for are left out.
pub fn group_position(
    legacy: &str,
    positions: &SinkPositions,
    partitions: &BTreeSet<i32>,
) -> BTreeMap<i32, i64> {
    let sinks: Vec<&str> = catalogue::of_legacy_group(legacy).map(|s| s.name).collect();
    partitions
        .iter()
        .filter_map(|&partition| {
            sinks
                .iter()
                .map(|sink| {
                    positions
                        .get(sink)
                        .and_then(Option::as_ref)
                        .and_then(|p| p.get(&partition).copied())
                })
                .collect::<Option<Vec<i64>>>()
                .and_then(|offsets| offsets.into_iter().min())
                .map(|min| (partition, min))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink and its committed (partition, next offset) pairs, if it has any.
    type Entry<'a> = (&'static str, Option<&'a [(i32, i64)]>);

    fn positions(entries: &[Entry<'_>]) -> SinkPositions {
        entries
            .iter()
            .map(|&(sink, p)| (sink, p.map(|p| p.iter().copied().collect())))
            .collect()
    }

    #[test]
    fn a_group_is_at_its_slowest_sink() {
        let p = positions(&[
            ("event-logger", Some(&[(0, 10), (1, 20)])),
            ("stats-aggregator", Some(&[(0, 7), (1, 30), (2, 5)])),
            ("stats-aggregator-redis", Some(&[(0, 9), (1, 25)])),
            ("leaderboard-manager", Some(&[(0, 3)])),
            ("leaderboard-manager-redis", None),
        ]);
        let all = BTreeSet::from([0, 1, 2]);
        assert_eq!(
            group_position("event-logger-group", &p, &all),
            BTreeMap::from([(0, 10), (1, 20)])
        );
        // Partition 2: the Redis sink has nothing yet, so the group is not moved there.
        assert_eq!(
            group_position("stats-aggregator-group", &p, &all),
            BTreeMap::from([(0, 7), (1, 25)])
        );
        // Redis lost its offsets: nothing to say until it rebuilt them.
        assert!(group_position("leaderboard-manager-group", &p, &all).is_empty());
        // Only the partitions asked for.
        assert_eq!(
            group_position("event-logger-group", &p, &BTreeSet::from([1])),
            BTreeMap::from([(1, 20)])
        );
    }
}
