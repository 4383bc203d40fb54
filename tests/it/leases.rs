//! Several daemons share one topic's partitions through fenced leases (issue 7):
//! three `gamestream serve` processes under continuous load, one killed with kill -9,
//! one paused past its lease with SIGSTOP (its late writes must be refused), a fourth
//! joining later; at the end every count is exact and every offset commit was made by
//! the daemon that held the partition's lease at that moment. And the fence itself,
//! in both stores, with a stale epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::analytics::{Expected, assert_stores_match, mixed_event, wait_all_caught_up};
use crate::common::{RawRecord, TestEnv, eventually, free_port, produce_raw};
use chrono::Utc;
use gamestream::event::{Event, Score};
use gamestream::sinks::postgres::{events as pg_events, leases};
use gamestream::sinks::redis::{RedisKeys, offsets as redis_offsets, stats as redis_stats};
use gamestream::sinks::{OffsetCommit, SinkError};

const PARTITIONS: usize = 6;
/// The default `leaderboard.period_ttl`.
const PERIOD_TTL: Duration = Duration::from_secs(35 * 24 * 3600);
/// Short leases, so that takeovers happen within seconds.
const LEASE_TTL: &str = "3s";
const LEASE_RENEW: &str = "1s";
/// How long the paused daemon stays stopped: well past its lease.
const PAUSE: Duration = Duration::from_secs(7);

/// Small fetches and batches, so that commits are many and kills land between them.
const SETTINGS: [(&str, &str); 8] = [
    ("mode", "\"consume\""),
    ("topics.player_events_partitions", "6"),
    ("consumer.fetch_max_bytes", "32768"),
    ("logger.batch_size", "300"),
    ("stats.buffer_size", "200"),
    ("stats.linger", "\"50ms\""),
    ("leaderboard.batch_size", "250"),
    ("leaderboard.linger", "\"50ms\""),
];

/// Records which daemon made every offset commit, and who held the lease then.
const AUDIT: &str = r#"
CREATE TABLE commit_audit (
    sink text, partition int, next_offset bigint, writer text, owner text, epoch bigint,
    at timestamptz DEFAULT clock_timestamp()
);
CREATE FUNCTION audit_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO commit_audit (sink, partition, next_offset, writer, owner, epoch)
    SELECT NEW.sink, NEW.partition, NEW.next_offset, current_setting('application_name'),
           l.owner, l.epoch
    FROM partition_leases l WHERE l.topic = NEW.topic AND l.partition = NEW.partition;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_commit AFTER INSERT OR UPDATE ON sink_offsets
    FOR EACH ROW EXECUTE FUNCTION audit_commit();
"#;

/// One `gamestream serve` child with its member id and HTTP port.
struct Daemon {
    name: &'static str,
    port: u16,
    child: tokio::process::Child,
}

impl Daemon {
    fn spawn(env: &TestEnv, name: &'static str, extra: &[&str]) -> Self {
        let port = free_port();
        let port_flag = format!("http.port={port}");
        let mut args = vec!["--set", &port_flag];
        args.extend_from_slice(extra);
        args.push("serve");
        let child = env
            .command(&args)
            .env("GAMESTREAM_LEASE__MEMBER_ID", name)
            .env("GAMESTREAM_LEASE__TTL", LEASE_TTL)
            .env("GAMESTREAM_LEASE__RENEW_INTERVAL", LEASE_RENEW)
            .env("RUST_LOG", "warn,gamestream::actors::dlq=error")
            .spawn()
            .expect("spawn gamestream serve");
        Self { name, port, child }
    }

    fn pid(&self) -> String {
        self.child.id().expect("running").to_string()
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {}", self.name);
    }

    /// The partitions `/ready` says this daemon holds (empty if it does not answer).
    async fn held(&self) -> BTreeSet<i64> {
        crate::common::held_partitions(self.port).await
    }

    /// The sum of a counter over its labels, from `/metrics`.
    async fn counter(&self, name: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let text = match reqwest::get(&url).await {
            Ok(reply) => reply.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Produces mixed events, a chunk every `every`, until `stop`; returns them all.
fn load(env: &TestEnv, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Event>> {
    let config = env.config.clone();
    let topic = env.config.topics.player_events.clone();
    tokio::spawn(async move {
        let now = Utc::now();
        let mut sent = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let chunk: Vec<Event> = (sent.len()..sent.len() + 100)
                .map(|i| mixed_event(i, 300, 5, now))
                .collect();
            let records: Vec<_> = chunk.iter().map(RawRecord::of).collect();
            produce_raw(&config, &topic, &records).await;
            sent.extend(chunk);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        sent
    })
}

/// Waits until the daemons' `/ready` together cover every partition, none twice,
/// each daemon holding its fair share (6 / n).
async fn wait_fair(daemons: &[&Daemon], timeout: Duration) -> bool {
    let share = PARTITIONS.div_ceil(daemons.len());
    eventually(timeout, || async {
        let mut all = Vec::new();
        for d in daemons {
            let held = d.held().await;
            if held.len() != share {
                return false;
            }
            all.extend(held);
        }
        let distinct: BTreeSet<_> = all.iter().collect();
        all.len() == PARTITIONS && distinct.len() == PARTITIONS
    })
    .await
}

async fn events_stored(pg: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pg)
        .await
        .expect("count")
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_share_partitions_through_kills_pauses_and_joins() {
    let env = TestEnv::with_overrides(&SETTINGS).await;
    sqlx::raw_sql(AUDIT)
        .execute(&env.pg)
        .await
        .expect("audit trigger");
    let mut redis = env.redis().await;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = load(&env, Arc::clone(&stop));

    let mut d1 = Daemon::spawn(&env, "d1", &[]);
    // d2 is the one paused: its sinks linger, so that when it is stopped they hold
    // records they have not written yet (whose writes must be refused after SIGCONT).
    let mut d2 = Daemon::spawn(
        &env,
        "d2",
        &[
            "--set",
            "logger.linger=\"2s\"",
            "--set",
            "logger.batch_size=100000",
            "--set",
            "stats.linger=\"2s\"",
            "--set",
            "stats.buffer_size=100000",
            "--set",
            "leaderboard.linger=\"2s\"",
            "--set",
            "leaderboard.batch_size=100000",
        ],
    );
    let mut d3 = Daemon::spawn(&env, "d3", &[]);
    assert!(
        wait_fair(&[&d1, &d2, &d3], Duration::from_secs(60)).await,
        "three daemons did not share the six partitions, two each"
    );
    assert!(
        eventually(Duration::from_secs(60), || async {
            events_stored(&env.pg).await > 2_000
        })
        .await,
        "no progress under load"
    );

    // kill -9: the survivors take d1's partitions once its leases run out.
    d1.child.kill().await.expect("kill -9 d1");
    let killed = std::time::Instant::now();
    assert!(
        wait_fair(&[&d2, &d3], Duration::from_secs(30)).await,
        "d1's partitions were not taken over"
    );
    // A figure for the record (not asserted: the machine is shared and noisy).
    eprintln!(
        "takeover after kill -9: {:?} (lease ttl {LEASE_TTL}, renew {LEASE_RENEW})",
        killed.elapsed()
    );

    // SIGSTOP past the lease: d3 takes everything; d2's late writes must be refused.
    let before_pause = d2.held().await;
    assert!(
        !before_pause.is_empty(),
        "d2 holds partitions before the pause"
    );
    d2.signal("-STOP");
    tokio::time::sleep(PAUSE).await;
    let taken = eventually(Duration::from_secs(30), || async {
        d3.held().await.len() == PARTITIONS
    })
    .await;
    d2.signal("-CONT");
    assert!(taken, "d3 did not take the paused daemon's partitions");
    let refused = eventually(Duration::from_secs(30), || async {
        d2.counter("gamestream_lease_fenced_writes_total").await > 0.0
    })
    .await;
    assert!(refused, "d2's late writes were not refused");

    // A fourth joins: the others hand partitions over until the shares are fair.
    let mut d4 = Daemon::spawn(&env, "d4", &[]);
    assert!(
        wait_fair(&[&d2, &d3, &d4], Duration::from_secs(60)).await,
        "the fourth daemon did not get its share"
    );
    assert_eq!(
        d4.counter("gamestream_partition_owned").await,
        2.0,
        "the metrics say which partitions d4 owns"
    );

    stop.store(true, Ordering::SeqCst);
    let sent = producer.await.expect("producer");
    let caught_up = wait_all_caught_up(&env, &mut redis, Duration::from_secs(120)).await;
    for d in [&mut d2, &mut d3, &mut d4] {
        d.child.kill().await.expect("kill");
    }
    assert!(caught_up, "the sinks did not catch up");

    assert_eq!(events_stored(&env.pg).await, sent.len() as i64, "events");
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT event_id) FROM events")
        .fetch_one(&env.pg)
        .await
        .expect("distinct");
    assert_eq!(distinct, sent.len() as i64, "no event twice");
    assert_stores_match(&env, &mut redis, &Expected::of(&sent), PERIOD_TTL).await;

    // Every commit was made by the daemon holding the lease, and each took part.
    let audit: Vec<(String, i32, String, Option<String>)> =
        sqlx::query_as("SELECT sink, partition, writer, owner FROM commit_audit")
            .fetch_all(&env.pg)
            .await
            .expect("audit");
    let foreign: Vec<_> = audit
        .iter()
        .filter(|(_, _, writer, owner)| owner.as_deref() != Some(writer.as_str()))
        .collect();
    assert!(
        foreign.is_empty(),
        "commits by a daemon that did not hold the lease: {foreign:?}"
    );
    let writers: BTreeMap<&str, usize> = audit.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(a.2.as_str()).or_default() += 1;
        m
    });
    for name in ["d1", "d2", "d3", "d4"] {
        assert!(
            writers.get(name).is_some_and(|n| *n > 0),
            "{name} committed nothing: {writers:?}"
        );
    }
}

fn event(player: &str) -> Event {
    Event {
        event_id: uuid::Uuid::new_v4(),
        event_type: "quest_completed".to_owned(),
        player_id: player.to_owned(),
        game_id: "g".to_owned(),
        timestamp: Utc::now(),
        ingested_at: Utc::now(),
        data: "{}".to_owned(),
        score: Score::Absent,
    }
}

fn commit(expected: Option<i64>, next: i64, epoch: i64) -> OffsetCommit {
    OffsetCommit {
        partition: 0,
        expected,
        next,
        epoch: Some(epoch),
    }
}

/// A takeover by member `b` while `a` still has a commit to make.
async fn take_over(env: &TestEnv, topic: &str) -> (i64, i64) {
    let ttl = Duration::from_secs(60);
    leases::ensure_rows(&env.pg, topic, 1).await.expect("rows");
    let a = leases::acquire(&env.pg, topic, "a", 1, 1, ttl)
        .await
        .expect("a acquires");
    assert_eq!(a.len(), 1);
    assert!(
        leases::acquire(&env.pg, topic, "b", 1, 1, ttl)
            .await
            .expect("b tries")
            .is_empty(),
        "a held lease is not taken"
    );
    // a is paused past its lease: it runs out, b takes it.
    sqlx::query("UPDATE partition_leases SET expires_at = now() WHERE topic = $1")
        .bind(topic)
        .execute(&env.pg)
        .await
        .expect("expire");
    let b = leases::acquire(&env.pg, topic, "b", 1, 1, ttl)
        .await
        .expect("b acquires");
    assert_eq!(b.len(), 1);
    assert!(b[0].epoch > a[0].epoch, "a takeover bumps the epoch");
    (a[0].epoch, b[0].epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_epoch_cannot_commit_in_postgres_or_redis() {
    let env = TestEnv::with_overrides(&[("mode", "\"consume\"")]).await;
    let topic = env.config.topics.player_events.clone();
    let (old, new) = take_over(&env, &topic).await;
    let first = event("p1");

    // Postgres: the old owner's commit, with offsets that match, is refused whole.
    let refused = pg_events::write(&env.pg, "s", &topic, &[&first], &[commit(None, 1, old)]).await;
    assert!(matches!(refused, Err(SinkError::LeaseLost(ref p)) if p == &[0]));
    assert_eq!(events_stored(&env.pg).await, 0, "nothing of it applied");
    pg_events::write(&env.pg, "s", &topic, &[&first], &[commit(None, 1, new)])
        .await
        .expect("the new owner commits");
    assert_eq!(events_stored(&env.pg).await, 1);

    // Redis: the new owner claims the partition; the old one is refused from then on.
    let mut redis = env.redis().await;
    let keys = RedisKeys::new(env.config.redis.key_prefix.clone());
    let offsets = keys.offsets("s", &topic);
    let _: () = redis::cmd("HSET")
        .arg(&offsets)
        .arg("initialised_at")
        .arg("now")
        .query_async(&mut redis)
        .await
        .expect("marker");
    let old_claim = redis_offsets::claim(&mut redis, &offsets, 0, old)
        .await
        .expect("the old owner claimed first");
    assert_eq!(old_claim, redis_offsets::Claim::Claimed(None));
    let script = redis_stats::script();
    let events = [event("p1")];
    let delta = gamestream::aggregate::StatsDelta::of(&events);
    let old_write = redis_stats::script_args(&keys, &offsets, &delta, &[commit(None, 1, old)]);
    redis_stats::write(&mut redis, &script, "s", &old_write)
        .await
        .expect("the old owner writes while it holds the partition");
    assert_eq!(
        redis_offsets::claim(&mut redis, &offsets, 0, new)
            .await
            .expect("the new owner claims"),
        redis_offsets::Claim::Claimed(Some(1))
    );
    let late = redis_stats::script_args(&keys, &offsets, &delta, &[commit(Some(1), 2, old)]);
    assert!(
        matches!(
            redis_stats::write(&mut redis, &script, "s", &late).await,
            Err(SinkError::LeaseLost(ref p)) if p == &[0]
        ),
        "a late write with matching offsets is refused by the epoch"
    );
    assert!(
        matches!(
            redis_offsets::claim(&mut redis, &offsets, 0, old).await,
            Err(SinkError::LeaseLost(ref p)) if p == &[0]
        ),
        "nor can the old owner claim it back"
    );
    let current = redis_stats::script_args(&keys, &offsets, &delta, &[commit(Some(1), 2, new)]);
    redis_stats::write(&mut redis, &script, "s", &current)
        .await
        .expect("the new owner writes");
    let stats: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.player_stats("p1"))
        .query_async(&mut redis)
        .await
        .expect("stats");
    assert_eq!(
        stats["total_events"], "2",
        "one write each, the late one refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_keeps_its_unexpired_leases() {
    let env = TestEnv::with_overrides(&[("mode", "\"consume\"")]).await;
    // A long lease: holding the partitions again well before it runs out means the
    // restarted daemon adopted them (same member id), not that it took expired ones.
    let long_ttl = ["--set", "lease.ttl=\"60s\""];
    let mut first = Daemon::spawn(&env, "pod-0", &long_ttl);
    let partitions = env.config.topics.player_events_partitions as usize;
    assert!(
        eventually(Duration::from_secs(30), || async {
            first.held().await.len() == partitions
        })
        .await,
        "a lone daemon holds every partition"
    );
    first.child.kill().await.expect("kill -9");
    let mut second = Daemon::spawn(&env, "pod-0", &long_ttl);
    let held = eventually(Duration::from_secs(30), || async {
        second.held().await.len() == partitions
    })
    .await;
    // Adopted, not acquired: the old leases had not run out, and kept their epochs.
    let adopted = second
        .counter("gamestream_lease_changes_total{change=\"adopted\"}")
        .await;
    second.child.kill().await.expect("kill");
    assert!(held, "the restarted daemon holds its partitions again");
    assert_eq!(adopted, partitions as f64, "every lease was adopted");
}
