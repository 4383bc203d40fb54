//! The chaos suite: under continuous HTTP load the daemon is killed (-9) three times
//! (twice restarted under its lease member id, as a container in its pod; once under a
//! new one, as a replaced pod), Postgres restarts, Redis restarts empty and the broker
//! (Apache Kafka, killed with SIGKILL) restarts; then every table and key is checked against the
//! suite's own tally.
//!
//! ```text
//!  load workers ──POST /api/v1/events/batch──► gamestream serve (child, kill -9 ×3)
//!       │ tally: 2xx-acknowledged attempts          │           │            │
//!       │        and unacknowledged ones            ▼           ▼            ▼
//!       │                                   private Kafka   private PG   private Redis
//!  fault driver ── kill/restart, time to recover ──┘ (kill -9)  (restart)   (restart empty)
//! ```
//!
//! All three services are private to the test (`tests/it/common`): the shared stack is
//! never stopped. Single daemon: the multi-daemon (partition lease) part is not here.
//!
//! The load and its tally live in `tests/it/common/tally.rs` (shared with the
//! `failover` suite), with the rule for what each answer obliges the stores to hold.
//! Here the load resends every `seq` without a 2xx success, with the same client
//! `event_id` (the same event, as a mobile client resends), until it has one; copies
//! that landed are on the topic and must be in no store twice. The expected statistics and leaderboards are computed from the events that
//! landed (acknowledged ones plus the unacknowledged ones found) and compared with
//! `player_statistics`, `leaderboard_scores`, `player_stats:*` and the `leaderboard:*`
//! sorted sets; and no dead letter may exist (every fault is transient).
//!
//! Default size: 20,000 events. The full run (≥ 100,000):
//! `CHAOS_EVENTS=100000 cargo test --test it chaos:: -- --nocapture` (plain cargo test: the
//! full run outlasts the 5-minute kill of .config/nextest.toml).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::tally::{
    Daemon, Load, LoadSettings, Row, caught_up, check_events, check_stores, check_topic, event_of,
    fill_answers, prepare_private, print_table, private_settings, sink_offsets,
};
use crate::common::{PrivateBroker, PrivatePostgres, PrivateRedis, eventually};
use chrono::{SubsecRound, Utc};
use gamestream::config::Config;

/// How long a fault may take to recover before the suite calls it a failure.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the stores may take to catch up once the load is over.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a dead service stays dead.
const OUTAGE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// kill -9, then start again under the same member id: a container restarted in
    /// its pod (Kubernetes keeps the pod name), which adopts its own leases.
    KillDaemon,
    /// kill -9, then start under a new member id: a replaced pod, which must wait
    /// until the dead daemon's leases expire (`lease.ttl`, 10 s by default).
    ReplaceDaemon,
    RestartPostgres,
    /// SIGKILL of the postmaster (a crash: unflushed WAL is lost), then crash recovery.
    KillPostgres,
    /// A replaced pod (as [`Fault::ReplaceDaemon`]), and PostgreSQL killed with SIGKILL
    /// the moment the new daemon holds its first lease: while partitions move.
    KillPostgresDuringHandover,
    RestartRedisEmpty,
    RestartBroker,
}

const FAULTS: [Fault; 8] = [
    Fault::KillDaemon,
    Fault::RestartPostgres,
    Fault::ReplaceDaemon,
    Fault::KillPostgres,
    Fault::RestartRedisEmpty,
    Fault::KillDaemon,
    Fault::KillPostgresDuringHandover,
    Fault::RestartBroker,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillDaemon => "kill -9 daemon (same member id)",
            Fault::ReplaceDaemon => "kill -9 daemon (new member id)",
            Fault::RestartPostgres => "restart postgres",
            Fault::KillPostgres => "kill -9 postgres",
            Fault::KillPostgresDuringHandover => "kill -9 postgres during a handover",
            Fault::RestartRedisEmpty => "restart redis empty",
            Fault::RestartBroker => "restart broker",
        }
    }
}

/// The private services and the daemon under test.
struct Rig {
    pg: PrivatePostgres,
    redis: PrivateRedis,
    broker: PrivateBroker,
    config: Config,
    daemon: Daemon,
    _dir: tempfile::TempDir,
    /// `lease.member_id` of the daemon is `chaos-{member}`; a new one for
    /// [`Fault::ReplaceDaemon`].
    member: u32,
}

impl Rig {
    async fn start() -> Self {
        let pg = PrivatePostgres::start();
        let redis = PrivateRedis::start();
        let broker = PrivateBroker::start_durable().await;
        let (env, overrides) = private_settings(&broker.address(), &pg, &redis, &[]);
        let config = prepare_private(&pg, &env, &overrides).await;
        // `CHAOS_KEEP_LOG=1` keeps the daemon's log after the run, to read how it recovered.
        let dir = tempfile::Builder::new()
            .prefix("gs-chaos-")
            .disable_cleanup(std::env::var_os("CHAOS_KEEP_LOG").is_some())
            .tempdir()
            .expect("tempdir");
        let daemon = Daemon::start(
            env,
            overrides,
            dir.path().join("daemon.log"),
            "chaos-1".to_owned(),
        );
        Self {
            pg,
            redis,
            broker,
            config,
            daemon,
            _dir: dir,
            member: 1,
        }
    }

    /// The first half of a fault: kills the daemon or stops the service.
    async fn inflict(&mut self, fault: Fault) {
        match fault {
            Fault::KillDaemon | Fault::ReplaceDaemon | Fault::KillPostgresDuringHandover => {
                self.daemon.kill().await
            }
            Fault::RestartPostgres => tokio::task::block_in_place(|| self.pg.pause()),
            Fault::KillPostgres => tokio::task::block_in_place(|| self.pg.kill()),
            Fault::RestartRedisEmpty => tokio::task::block_in_place(|| self.redis.kill()),
            Fault::RestartBroker => self.broker.stop().await,
        }
    }

    /// The second half: after a pause, starts the daemon or the service again.
    async fn repair(&mut self, fault: Fault) {
        match fault {
            Fault::KillDaemon | Fault::ReplaceDaemon => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if fault == Fault::ReplaceDaemon {
                    self.member += 1;
                    self.daemon.member_id = format!("chaos-{}", self.member);
                }
                self.daemon.spawn();
            }
            Fault::RestartPostgres | Fault::KillPostgres => {
                tokio::time::sleep(OUTAGE).await;
                tokio::task::block_in_place(|| self.pg.resume());
            }
            Fault::KillPostgresDuringHandover => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.member += 1;
                self.daemon.member_id = format!("chaos-{}", self.member);
                self.daemon.spawn();
                // The new member's first lease: the dead daemon's ones expired and are
                // being taken over, claimed in the sinks, and written under new epochs.
                let member = format!("chaos-{}", self.member);
                let url = format!(
                    "postgres://gamestream@127.0.0.1:{}/gamestream",
                    self.pg.port
                );
                let moved = eventually(Duration::from_secs(60), || {
                    let (url, member) = (url.clone(), member.clone());
                    async move {
                        use sqlx::Connection;
                        let Ok(mut conn) = sqlx::PgConnection::connect(&url).await else {
                            return false;
                        };
                        sqlx::query_scalar::<_, i64>(
                            "SELECT count(*) FROM partition_leases WHERE owner = $1",
                        )
                        .bind(&member)
                        .fetch_one(&mut conn)
                        .await
                        .is_ok_and(|n| n > 0)
                    }
                })
                .await;
                assert!(moved, "the new daemon took no lease within 60 s");
                tokio::task::block_in_place(|| self.pg.kill());
                tokio::time::sleep(OUTAGE).await;
                tokio::task::block_in_place(|| self.pg.resume());
            }
            Fault::RestartRedisEmpty => {
                tokio::time::sleep(OUTAGE).await;
                tokio::task::block_in_place(|| self.redis.restart_empty());
            }
            Fault::RestartBroker => {
                tokio::time::sleep(OUTAGE).await;
                self.broker.restart().await;
            }
        }
    }

    /// Sum of committed offsets per sink (Postgres sinks, then Redis sinks); `None`
    /// while a store does not answer.
    async fn progress(&self, pg: &sqlx::PgPool) -> Option<Vec<i64>> {
        let offsets = sink_offsets(pg, self.redis.port, &self.config.topics.player_events).await?;
        Some(offsets.iter().map(|o| o.values().sum()).collect())
    }

    /// Whether every sink of both stores has committed up to the topic's high watermarks.
    async fn caught_up(&self, pg: &sqlx::PgPool) -> bool {
        caught_up(&self.config, pg, self.redis.port).await
    }
}

/// Runs the fault schedule while the load runs; one row per fault.
async fn drive_faults(rig: &mut Rig, load: &Load, pg: &sqlx::PgPool) -> Vec<Row> {
    let mut rows = Vec::new();
    for (k, &fault) in FAULTS.iter().enumerate() {
        let trigger = load.trigger(k);
        let (reached, acked_at_trigger) = load.reach_trigger(k, RECOVERY_TIMEOUT).await;
        assert!(
            reached,
            "{}: the load stalled before it ({acked_at_trigger} of {trigger} events acknowledged \
             after {RECOVERY_TIMEOUT:?}); daemon log in {:?}",
            fault.name(),
            rig.daemon.log
        );
        rig.daemon.check();
        eprintln!(
            "chaos: {} at {acked_at_trigger} acknowledged events ({:.0}s in)",
            fault.name(),
            (Utc::now() - load.now).as_seconds_f64()
        );
        let mut progress_before = loop {
            if let Some(p) = rig.progress(pg).await {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let started = Instant::now();
        rig.inflict(fault).await;
        // The baseline of recovery is taken once the fault has struck: answers and
        // commits already under way before it must not count as recovery (at full
        // speed they arrive every few milliseconds). With both stores up (the daemon
        // or the broker is down) their offsets are read again; a stopped store has
        // committed nothing since the reading above (and reading it would only wait).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let acked_before = load.acked_seqs.load(Ordering::SeqCst);
        // Only now may the load go on to its next stop: Apache Kafka acknowledges a whole
        // slice of the load within the 200 ms above, and recovery would then wait for
        // acknowledgements that the gate no longer lets come.
        load.faults_started.fetch_add(1, Ordering::SeqCst);
        let stores_up = matches!(
            fault,
            Fault::KillDaemon | Fault::ReplaceDaemon | Fault::RestartBroker
        );
        if stores_up && let Some(now) = rig.progress(pg).await {
            progress_before = now;
        }
        rig.repair(fault).await;
        let mut recovery = None;
        while started.elapsed() < RECOVERY_TIMEOUT {
            rig.daemon.check();
            let acked = load.acked_seqs.load(Ordering::SeqCst) > acked_before;
            let sinks = rig
                .progress(pg)
                .await
                .is_some_and(|now| now.iter().zip(&progress_before).all(|(a, b)| a > b));
            if acked && sinks {
                recovery = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rows.push(Row::fault(fault.name().to_owned(), recovery));
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_under_load_loses_and_duplicates_nothing() {
    let total: usize = std::env::var("CHAOS_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let began = Instant::now();
    let mut rig = Rig::start().await;
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&format!(
            "postgres://gamestream@127.0.0.1:{}/gamestream",
            rig.pg.port
        ))
        .expect("pool");
    let now = Utc::now().trunc_subsecs(0);
    let load = Load::new(
        LoadSettings {
            url: format!(
                "http://127.0.0.1:{}/api/v1/events/batch",
                rig.config.http.port
            ),
            total,
            faults: FAULTS.len(),
            windows: FAULTS.len() + 1,
            // `CHAOS_RATE` (events/s over all workers) paces the load, e.g. to a
            // production rate or below what the broker sustains on a busy machine.
            pace: Load::pace_from_env("CHAOS_RATE"),
            resend: true,
            // Each seq is one event under its own client id: a resend after a 503 or a
            // lost answer is the same event, which the stores must hold once.
            client_ids: true,
            partitions: rig.config.topics.player_events_partitions,
        },
        now,
    );
    let workers = load.spawn_workers();

    let fault_rows = drive_faults(&mut rig, &load, &pg).await;
    let load_done =
        tokio::time::timeout(RECOVERY_TIMEOUT, futures::future::join_all(workers)).await;
    load.abort.store(true, Ordering::SeqCst);
    assert!(load_done.is_ok(), "the load did not finish");
    rig.daemon.check();
    let mut caught_up = false;
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    while Instant::now() < deadline {
        if rig.caught_up(&pg).await {
            caught_up = true;
            break;
        }
        rig.daemon.check();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let tally = load.take_tally();
    let mut rows = vec![Row::steady_load()];
    rows.extend(fault_rows);
    fill_answers(&mut rows, &tally);
    let mut problems = Vec::new();
    let landed = check_events(&pg, &tally, now, &mut rows, &mut problems).await;
    let mut redis = rig.redis.connection().await;
    let store_problems = check_stores(&pg, &mut redis, &landed, now).await;
    rows.push(Row::check(
        "stores: stats, leaderboards, redis, dlq",
        landed.len(),
        store_problems.len(),
    ));
    problems.extend(store_problems);
    let topic = check_topic(&rig.config, &tally, now).await;
    rows.push(Row::check(
        "topic: every 2xx event under its client id",
        topic.records,
        topic.against_tally.len() + tally.wrong_ids.len(),
    ));
    problems.extend(tally.wrong_ids.iter().cloned());
    problems.extend(topic.against_tally.iter().cloned());
    println!(
        "resends that landed on the topic as well (skipped by the readers as duplicates): {}",
        topic.resent_copies
    );
    print_table("chaos suite", &rows, &tally, landed.len(), began.elapsed());
    println!("daemon log: {}", rig.daemon.log.display());
    for p in problems.iter().take(20) {
        println!("  {p}");
    }
    let seqs: std::collections::HashSet<usize> = tally.acked.keys().map(|t| t.0).collect();
    assert_eq!(
        seqs.len(),
        total,
        "every event acknowledged once by the end"
    );
    assert!(
        caught_up,
        "the sinks did not catch up; daemon log in {:?}",
        rig.daemon.log
    );
    assert!(
        rows.iter().all(|r| !r.is_fault || r.recovery.is_some()),
        "a fault did not recover"
    );
    assert!(
        rig.daemon.unexpected_exits.is_empty(),
        "the daemon exited by itself: {:?}; log in {:?}",
        rig.daemon.unexpected_exits,
        rig.daemon.log
    );
    assert!(
        problems.is_empty(),
        "{} discrepancies, first: {:?}",
        problems.len(),
        problems.first()
    );

    // The checker itself can fail: one lost row and one extra count are both seen.
    let (tag, (id, window)) = tally.acked.iter().next().expect("acknowledged events");
    sqlx::query("DELETE FROM events WHERE event_id = $1")
        .bind(id)
        .execute(&pg)
        .await
        .expect("delete a row");
    let before = rows[*window].discrepancies;
    let mut seen = Vec::new();
    check_events(&pg, &tally, now, &mut rows, &mut seen).await;
    assert_eq!(
        rows[*window].discrepancies,
        before + 1,
        "a lost {tag:?} is counted"
    );
    let player = event_of(tag.0, tag.1, now).player_id;
    let _: i64 = redis::cmd("HINCRBY")
        .arg(format!("player_stats:{player}"))
        .arg("total_events")
        .arg(1)
        .query_async(&mut redis)
        .await
        .expect("hincrby");
    assert!(
        !check_stores(&pg, &mut redis, &landed, now).await.is_empty(),
        "a count off by one is seen"
    );
}
