//! Where PostgreSQL's time goes during a throughput run, by statement: a sampling
//! profile of `pg_stat_activity`.
//!
//! ```text
//! every SAMPLE_EVERY: active backends of the scratch database ─► (statement kind, waiting on)
//! at the end: samples per kind / number of polls = backends busy with it on average
//! ```
//!
//! The figures add up to the mean number of busy backends (at most the cores PostgreSQL
//! gets), so they say which sink's statements hold PostgreSQL, and whether they run
//! (`CPU`) or wait (`Lock`, `LWLock`, `IO`, or `Client`: for data from the daemon).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;

/// Polling interval: a poll costs PostgreSQL ~0.2 ms of one core, 2% at this rate.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// Busy backends by statement kind over a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PgActivity {
    pub polls: u64,
    /// Statement kind → mean number of backends running it.
    pub busy_backends: BTreeMap<String, f64>,
    /// What the busy backends were doing: `CPU` (no wait event) or the wait event type.
    pub busy_by_wait: BTreeMap<String, f64>,
}

impl PgActivity {
    pub fn total_busy(&self) -> f64 {
        self.busy_backends.values().sum()
    }
}

/// A running sampler; [`Sampler::finish`] stops it and returns the profile.
pub(super) struct Sampler {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<PgActivity>,
}

impl Sampler {
    /// Starts polling the backends of `database` (the sampler's own excluded).
    pub(super) fn start(pg: sqlx::PgPool, database: String) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            let mut waits: BTreeMap<String, u64> = BTreeMap::new();
            let mut polls = 0_u64;
            let mut ticks = tokio::time::interval(SAMPLE_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {}
                }
                let active: Result<Vec<(String, Option<String>)>, _> = sqlx::query_as(
                    "SELECT left(query, 200), wait_event_type FROM pg_stat_activity
                     WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid()",
                )
                .bind(&database)
                .fetch_all(&pg)
                .await;
                let Ok(active) = active else { continue };
                polls += 1;
                for (query, wait) in active {
                    *counts.entry(statement_kind(&query).to_owned()).or_default() += 1;
                    *waits
                        .entry(wait.unwrap_or_else(|| "CPU".to_owned()))
                        .or_default() += 1;
                }
            }
            let mean = |m: BTreeMap<String, u64>| {
                m.into_iter()
                    .map(|(k, n)| (k, n as f64 / polls.max(1) as f64))
                    .collect()
            };
            PgActivity {
                polls,
                busy_backends: mean(counts),
                busy_by_wait: mean(waits),
            }
        });
        Self { stop, task }
    }

    pub(super) async fn finish(self) -> PgActivity {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// The sink statement a query text belongs to.
fn statement_kind(query: &str) -> &'static str {
    let q = query.trim_start();
    let starts = |prefix: &str| {
        q.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    if starts("COPY events") {
        "events: COPY"
    } else if q.contains("INSERT INTO events") {
        "events: insert (a duplicate in COPY)"
    } else if q.contains("player_statistics") {
        "player_statistics: upsert"
    } else if starts("WITH games AS") || q.contains("INSERT INTO leaderboards ") {
        "leaderboards: refresh"
    } else if q.contains("leaderboard_scores") {
        "leaderboard_scores: upsert"
    } else if q.contains("sink_offsets") {
        "sink_offsets: commit"
    } else if q.contains("partition_leases") || q.contains("lease") {
        "leases"
    } else if starts("COMMIT") {
        "COMMIT"
    } else if starts("BEGIN") || starts("SAVEPOINT") || starts("RELEASE") || starts("SET") {
        "transaction control"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::statement_kind;

    #[test]
    fn the_sinks_statements_are_told_apart() {
        let kinds = [
            (
                "COPY events (event_id, event_type) FROM STDIN",
                "events: COPY",
            ),
            (
                "INSERT INTO player_statistics AS s (player_id) SELECT",
                "player_statistics: upsert",
            ),
            (
                "\n   INSERT INTO leaderboard_scores AS s (game_id",
                "leaderboard_scores: upsert",
            ),
            (
                "WITH i AS (SELECT ...) UPDATE sink_offsets s SET next_offset",
                "sink_offsets: commit",
            ),
            (
                "WITH u AS (\n SELECT * FROM UNNEST($1::text[]) ), up AS ( INSERT INTO leaderboard_scores",
                "leaderboard_scores: upsert",
            ),
            (
                "WITH games AS (\n SELECT DISTINCT game_id FROM UNNEST($1::text[])",
                "leaderboards: refresh",
            ),
            ("COMMIT", "COMMIT"),
            ("commit", "COMMIT"),
            ("SAVEPOINT copy", "transaction control"),
            ("SELECT 1", "other"),
        ];
        for (query, kind) in kinds {
            assert_eq!(statement_kind(query), kind, "{query}");
        }
    }
}
