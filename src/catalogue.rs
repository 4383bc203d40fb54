//! The sink catalogue: every sink the pipeline runs, in one table.
//!
//! A sink is one destination with its own committed offsets. The old pipeline had three
//! consumers; gamestream splits the two that wrote two stores into one sink per store,
//! so that one store being away never holds the other back:
//!
//! | sink | consumer (`consumer_service`) | store | old consumer group |
//! |---|---|---|---|
//! | `event-logger` | `event-logger` | Postgres `events` | `event-logger-group` |
//! | `stats-aggregator` | `stats-aggregator` | Postgres `player_statistics` | `stats-aggregator-group` |
//! | `leaderboard-manager` | `leaderboard-manager` | Postgres `leaderboard_scores` | `leaderboard-manager-group` |
//! | `stats-aggregator-redis` | `stats-aggregator` | Redis `player_stats:*` | `stats-aggregator-group` |
//! | `leaderboard-manager-redis` | `leaderboard-manager` | Redis `leaderboard:*` | `leaderboard-manager-group` |
//!
//! [`SINKS`] is in start order: Postgres sinks first, because a Redis sink's start may
//! rebuild Redis from its Postgres twin's rows and offsets. Metrics, the supervisor, the
//! operator tools, the benchmark and the dead-letter code all read this table; adding a
//! sink is one entry here plus its writer (and the line in the supervisor's
//! `writers_for` that builds it).

/// Where a sink keeps its effects and its offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    /// Offsets in `sink_offsets`, written in the same transaction as the rows.
    Postgres,
    /// Offsets in a Redis hash, advanced by the same Lua script as the keys.
    Redis,
}

impl Store {
    /// `db.system` of the sink's trace spans (OpenTelemetry semantic conventions).
    pub fn db_system(self) -> &'static str {
        match self {
            Store::Postgres => "postgresql",
            Store::Redis => "redis",
        }
    }
}

/// One sink: its names and where it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkSpec {
    /// The key of its offsets, its `sink` metrics label, and its readers' `Ack`s.
    pub name: &'static str,
    /// `consumer_service` in its dead letters (CONTRACT: one of the three old consumers).
    pub consumer_service: &'static str,
    pub store: Store,
    /// The old pipeline's consumer group this sink continues.
    pub legacy_group: &'static str,
    /// Whether this sink dead-letters records that are not valid events. Exactly one
    /// sink does, so that a bad record yields one dead letter, not five.
    pub dead_letters_invalid_records: bool,
    /// For a Redis sink: the Postgres sink whose rows and offsets rebuild it.
    pub rebuilt_from: Option<&'static str>,
    /// Whether its writes add up (counts, sums): a record applied twice counts twice,
    /// so moving its offsets back is refused without `--force`.
    pub additive: bool,
}

/// The raw event logger: every valid event into Postgres `events`.
pub const LOGGER: SinkSpec = SinkSpec {
    name: "event-logger",
    consumer_service: "event-logger",
    store: Store::Postgres,
    legacy_group: "event-logger-group",
    dead_letters_invalid_records: true,
    rebuilt_from: None,
    additive: false,
};

/// Per-player statistics in Postgres `player_statistics`.
pub const STATS: SinkSpec = SinkSpec {
    name: "stats-aggregator",
    consumer_service: "stats-aggregator",
    store: Store::Postgres,
    legacy_group: "stats-aggregator-group",
    dead_letters_invalid_records: false,
    rebuilt_from: None,
    additive: true,
};

/// Leaderboard scores in Postgres `leaderboard_scores` (and from them `leaderboards`).
pub const LEADERBOARD: SinkSpec = SinkSpec {
    name: "leaderboard-manager",
    consumer_service: "leaderboard-manager",
    store: Store::Postgres,
    legacy_group: "leaderboard-manager-group",
    dead_letters_invalid_records: false,
    rebuilt_from: None,
    additive: true,
};

/// Per-player statistics in Redis `player_stats:*`.
pub const STATS_REDIS: SinkSpec = SinkSpec {
    name: "stats-aggregator-redis",
    consumer_service: STATS.consumer_service,
    store: Store::Redis,
    legacy_group: STATS.legacy_group,
    dead_letters_invalid_records: false,
    rebuilt_from: Some(STATS.name),
    additive: true,
};

/// Leaderboards in Redis `leaderboard:*`.
pub const LEADERBOARD_REDIS: SinkSpec = SinkSpec {
    name: "leaderboard-manager-redis",
    consumer_service: LEADERBOARD.consumer_service,
    store: Store::Redis,
    legacy_group: LEADERBOARD.legacy_group,
    dead_letters_invalid_records: false,
    rebuilt_from: Some(LEADERBOARD.name),
    additive: true,
};

/// Every sink, in start order (Postgres before the Redis sinks rebuilt from it).
pub const SINKS: [SinkSpec; 5] = [LOGGER, STATS, LEADERBOARD, STATS_REDIS, LEADERBOARD_REDIS];

/// The old consumers, as named in dead letters (`consumer_service`).
pub const CONSUMERS: [&str; 3] = [
    LOGGER.consumer_service,
    STATS.consumer_service,
    LEADERBOARD.consumer_service,
];

/// The old pipeline's consumer groups, one per old consumer (Kafka's tools show them;
/// the daemon mirrors its sinks' positions into them, see `kafka::group_offsets`).
pub const LEGACY_GROUPS: [&str; 3] = [
    LOGGER.legacy_group,
    STATS.legacy_group,
    LEADERBOARD.legacy_group,
];

/// The sink called `name`.
pub fn find(name: &str) -> Option<&'static SinkSpec> {
    SINKS.iter().find(|s| s.name == name)
}

/// The sinks that keep their offsets in `store`.
pub fn in_store(store: Store) -> impl Iterator<Item = &'static SinkSpec> {
    SINKS.iter().filter(move |s| s.store == store)
}

/// The sinks continuing the old consumer group `group`.
pub fn of_legacy_group(group: &str) -> impl Iterator<Item = &'static SinkSpec> + '_ {
    SINKS.iter().filter(move |s| s.legacy_group == group)
}

/// The names of every sink, in start order.
pub fn names() -> impl Iterator<Item = &'static str> {
    SINKS.iter().map(|s| s.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        let mut names: Vec<_> = names().collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SINKS.len());
        for spec in &SINKS {
            assert_eq!(find(spec.name), Some(spec));
        }
        assert_eq!(find("nope"), None);
    }

    #[test]
    fn exactly_one_sink_dead_letters_invalid_records() {
        let owners: Vec<_> = SINKS
            .iter()
            .filter(|s| s.dead_letters_invalid_records)
            .collect();
        assert_eq!(owners, [&LOGGER]);
    }

    #[test]
    fn every_redis_sink_is_rebuilt_from_an_earlier_postgres_sink_of_its_consumer() {
        for (i, spec) in SINKS.iter().enumerate() {
            match spec.store {
                Store::Postgres => assert_eq!(spec.rebuilt_from, None),
                Store::Redis => {
                    let twin = find(spec.rebuilt_from.expect("a Redis sink has a twin"))
                        .expect("the twin is in the catalogue");
                    assert_eq!(twin.store, Store::Postgres);
                    assert_eq!(twin.consumer_service, spec.consumer_service);
                    assert_eq!(twin.legacy_group, spec.legacy_group);
                    let twin_at = SINKS.iter().position(|s| s == twin).unwrap();
                    assert!(twin_at < i, "{} starts before {}", twin.name, spec.name);
                }
            }
        }
    }

    #[test]
    fn every_consumer_and_old_group_has_a_sink() {
        for consumer in CONSUMERS {
            assert!(SINKS.iter().any(|s| s.consumer_service == consumer));
        }
        for group in [
            "event-logger-group",
            "stats-aggregator-group",
            "leaderboard-manager-group",
        ] {
            assert!(of_legacy_group(group).count() >= 1);
            assert!(LEGACY_GROUPS.contains(&group));
        }
    }
}
