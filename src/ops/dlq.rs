//! `gamestream dlq list` and `gamestream dlq replay`: dead letters in `dlq_events`.
//!
//! Replay re-publishes each letter's original bytes (`original_payload`) to the raw
//! topic and stamps `replayed_at`, chunk by chunk, each chunk in one transaction:
//!
//! ```text
//! BEGIN
//!   SELECT … WHERE replayed_at IS NULL … FOR UPDATE SKIP LOCKED LIMIT chunk   (claim)
//!   produce to the raw topic, wait for the broker's ack                       (publish)
//!   UPDATE dlq_events SET replayed_at = now() WHERE id = ANY(claimed)          (mark)
//! COMMIT
//! ```
//!
//! Guarantee: a row is marked replayed only after the broker acknowledged its record,
//! and a marked row is never published again, also with several replays at once (a row
//! one replay has claimed is skipped by the others). If publishing fails, or the process
//! dies after the ack and before the commit, the transaction rolls back and the rows stay
//! unmarked: the next replay publishes them again, so a record reaches the topic at least
//! once and at most once more per such crash. The readers skip such a repeat as a
//! duplicate of the first (same `dlq_replay_of`, within `dedupe.window`), and only the
//! sinks of the letter's consumer (`dlq_replay_for`) apply a replayed record: the others
//! had applied the original. So a replayed letter is applied once, where it was refused.

use crate::exit::Exit;
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args, Subcommand};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;
use serde::Serialize;

use super::{OpsError, Result, parse_time};
use crate::config::Config;
use crate::kafka;
use crate::sinks::postgres;

/// Rows `dlq list` prints when no `--limit` is given.
pub const DEFAULT_LIST_LIMIT: i64 = 100;
/// Letters claimed, published and marked per transaction by `dlq replay` when no
/// `--chunk` is given: bounds the records held in memory and the rows locked at once.
pub const DEFAULT_REPLAY_CHUNK: i64 = 500;
/// Most replayed ids listed one by one in `dlq replay`'s report (more: first … last).
const PRINTED_IDS: usize = 50;
/// Headers that say which dead letter a replayed record comes from, and whose.
pub use crate::actors::partition_reader::{REPLAY_FOR_HEADER, REPLAY_HEADER};

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead letters (oldest first): id, time, consumer, reason, source, replayed_at, error.
    List(ListArgs),
    /// Re-publish dead letters' original records to the raw topic and mark them replayed
    /// (never twice, also with several replays at once).
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only letters of this consumer (`event-logger`, `stats-aggregator`, `leaderboard-manager`).
    #[arg(long)]
    pub service: Option<String>,
    /// Only letters written at or after this time: RFC 3339, or a duration back from now (`2h`).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only letters with this reason (`error_kind`: `malformed_json`, `missing_field`, ...).
    #[arg(long)]
    pub reason: Option<String>,
    /// At most this many rows.
    #[arg(long, default_value_t = DEFAULT_LIST_LIMIT)]
    pub limit: i64,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("selection").required(true).args(["id", "service"])))]
pub struct ReplayArgs {
    /// Replay these letters (ids from `dlq list`).
    #[arg(long, num_args = 1.., value_name = "N")]
    pub id: Vec<i32>,
    /// Replay every letter of this consumer written since `--since`.
    #[arg(long, requires = "since", conflicts_with = "id")]
    pub service: Option<String>,
    /// With `--service`: letters written at or after this time (RFC 3339 or `2h`).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Show what would be replayed; publish and mark nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Letters per transaction (claim, publish, mark).
    #[arg(long, default_value_t = DEFAULT_REPLAY_CHUNK)]
    pub chunk: i64,
}

/// Runs a `dlq` subcommand.
pub async fn command(action: DlqAction, config: &Config) -> Exit {
    let name = match &action {
        DlqAction::List(_) => "dlq list",
        DlqAction::Replay(_) => "dlq replay",
    };
    let result = match action {
        DlqAction::List(args) => list_command(&args, config).await,
        DlqAction::Replay(args) => replay_command(&args, config).await,
    };
    super::exit_code(name, result)
}

/// One row of `dlq list`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LetterRow {
    pub id: i32,
    pub created_at: DateTime<Utc>,
    pub consumer_service: String,
    pub error_kind: String,
    pub error_message: String,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub replayed_at: Option<DateTime<Utc>>,
}

/// The filters of `dlq list`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub service: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub limit: i64,
}

/// Letters matching `filter`, oldest first.
pub async fn list(pool: &sqlx::PgPool, filter: &ListFilter) -> Result<Vec<LetterRow>> {
    Ok(sqlx::query_as(
        "SELECT id, created_at, consumer_service, error_kind, error_message,
                source_topic, source_partition, source_offset, replayed_at
         FROM dlq_events
         WHERE ($1::text IS NULL OR consumer_service = $1)
           AND ($2::timestamptz IS NULL OR created_at >= $2)
           AND ($3::text IS NULL OR error_kind = $3)
         ORDER BY id
         LIMIT $4",
    )
    .bind(&filter.service)
    .bind(filter.since)
    .bind(&filter.reason)
    .bind(filter.limit.max(0))
    .fetch_all(pool)
    .await?)
}

async fn list_command(args: &ListArgs, config: &Config) -> Result<Exit> {
    let pool = postgres::connect(&config.postgres).await?;
    let rows = list(
        &pool,
        &ListFilter {
            service: args.service.clone(),
            since: args.since,
            reason: args.reason.clone(),
            limit: args.limit,
        },
    )
    .await?;
    if args.json {
        for row in &rows {
            // A struct of strings, numbers and times always serializes.
            println!("{}", serde_json::to_string(row).unwrap_or_default());
        }
    } else {
        println!(
            "{:>8}  {:<20}  {:<20}  {:<18}  {:<30}  {:<20}  error",
            "id", "time", "consumer", "reason", "source (topic/partition/offset)", "replayed_at"
        );
        for row in &rows {
            let source = match (&row.source_topic, row.source_partition, row.source_offset) {
                (Some(t), Some(p), Some(o)) => format!("{t}/{p}/{o}"),
                _ => "-".to_owned(),
            };
            println!(
                "{:>8}  {:<20}  {:<20}  {:<18}  {:<30}  {:<20}  {}",
                row.id,
                crate::event::rfc3339(row.created_at),
                row.consumer_service,
                row.error_kind,
                source,
                row.replayed_at
                    .map(crate::event::rfc3339)
                    .unwrap_or(std::borrow::Cow::Borrowed("-")),
                row.error_message.replace(['\n', '\r'], " "),
            );
        }
        println!("{} letter(s)", rows.len());
    }
    Ok(Exit::Success)
}

/// Which letters a replay takes.
#[derive(Debug, Clone, Default)]
pub struct ReplaySelection {
    /// These ids (empty: select by service and time instead).
    pub ids: Vec<i32>,
    pub service: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

/// A claimed letter, with what is needed to publish it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Claimed {
    id: i32,
    consumer_service: String,
    source_topic: Option<String>,
    source_partition: Option<i32>,
    source_offset: Option<i64>,
    payload: Vec<u8>,
}

/// What one replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Letters marked replayed (or, in a dry run, that would be).
    pub replayed: Vec<i32>,
    /// Records published (letters of one source record share one).
    pub published: usize,
    /// Requested ids not replayed: unknown, already replayed, or claimed by another replay.
    pub skipped: Vec<i32>,
}

/// Claims, publishes and marks the selected letters, `chunk` per transaction.
pub async fn replay(
    pool: &sqlx::PgPool,
    config: &Config,
    selection: &ReplaySelection,
    chunk: i64,
    dry_run: bool,
) -> Result<ReplayReport> {
    if chunk < 1 {
        return Err(OpsError::Usage("--chunk must be at least 1".to_owned()));
    }
    let mut report = ReplayReport::default();
    if dry_run {
        let rows = claim(&mut *pool.acquire().await?, selection, i64::MAX, false).await?;
        record_claimed(&mut report, &rows);
    } else {
        let publisher = RawPublisher::connect(config).await?;
        loop {
            let mut tx = pool.begin().await?;
            // The daemon's connections commit asynchronously (`postgres.synchronous_commit`);
            // a replay mark must be durable before it is reported, or a Postgres crash
            // could forget it and a later replay would publish the letter again.
            sqlx::query("SET LOCAL synchronous_commit = on")
                .execute(&mut *tx)
                .await?;
            let rows = claim(&mut tx, selection, chunk, true).await?;
            if rows.is_empty() {
                break;
            }
            report.published += publisher.publish(&rows).await?;
            let ids: Vec<i32> = rows.iter().map(|r| r.id).collect();
            sqlx::query("UPDATE dlq_events SET replayed_at = now() WHERE id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(
                letters = ids.len(),
                first_id = ids[0],
                "dead letters replayed"
            );
            record_claimed(&mut report, &rows);
        }
    }
    if !selection.ids.is_empty() {
        let done: BTreeSet<i32> = report.replayed.iter().copied().collect();
        report.skipped = selection
            .ids
            .iter()
            .copied()
            .filter(|id| !done.contains(id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
    }
    Ok(report)
}

fn record_claimed(report: &mut ReplayReport, rows: &[Claimed]) {
    report.replayed.extend(rows.iter().map(|r| r.id));
}

/// The unreplayed letters a replay selects (a macro so both statements are literals).
macro_rules! select_letters {
    () => {
        "SELECT id, consumer_service, source_topic, source_partition, source_offset,
                COALESCE(original_payload, convert_to(original_event #>> '{}', 'UTF8')) AS payload
         FROM dlq_events
         WHERE replayed_at IS NULL
           AND ($1::int4[] IS NULL OR id = ANY($1))
           AND ($2::text IS NULL OR consumer_service = $2)
           AND ($3::timestamptz IS NULL OR created_at >= $3)
         ORDER BY id
         LIMIT $4"
    };
}
const SELECT_LETTERS: &str = select_letters!();
/// The same, claimed: rows that another replay has claimed are skipped, not waited for.
const CLAIM_LETTERS: &str = concat!(select_letters!(), " FOR UPDATE SKIP LOCKED");

/// Selects unreplayed letters; with `lock`, claims them (rows another replay holds are skipped).
async fn claim(
    conn: &mut sqlx::PgConnection,
    selection: &ReplaySelection,
    limit: i64,
    lock: bool,
) -> Result<Vec<Claimed>> {
    let ids = (!selection.ids.is_empty()).then_some(&selection.ids);
    let statement = if lock { CLAIM_LETTERS } else { SELECT_LETTERS };
    Ok(sqlx::query_as(statement)
        .bind(ids)
        .bind(&selection.service)
        .bind(selection.since)
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

/// Publishes replayed records to the raw topic, partitioned as ingestion does.
struct RawPublisher {
    partitions: Vec<PartitionClient>,
}

impl RawPublisher {
    async fn connect(config: &Config) -> Result<Self> {
        let client = kafka::connect(&config.kafka).await?;
        let topic = &config.topics.player_events;
        let count = kafka::partition_count(&client, topic).await?;
        let mut partitions = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        for partition in 0..count {
            partitions.push(
                client
                    .partition_client(topic.clone(), partition, UnknownTopicHandling::Retry)
                    .await?,
            );
        }
        if partitions.is_empty() {
            return Err(OpsError::Refused(format!(
                "topic `{topic}` has no partitions"
            )));
        }
        Ok(Self { partitions })
    }

    /// Produces one record per distinct source record (for every consumer with a letter
    /// of it in `rows`) and waits for every ack; returns how many were published.
    async fn publish(&self, rows: &[Claimed]) -> Result<usize> {
        let count = self.partitions.len() as i32;
        // The consumers of each source record's letters, for `dlq_replay_for`.
        let mut consumers: BTreeMap<_, BTreeSet<&str>> = BTreeMap::new();
        for row in rows {
            if row.source_topic.is_some() {
                consumers
                    .entry(source_of(row))
                    .or_default()
                    .insert(row.consumer_service.as_str());
            }
        }
        let mut seen = BTreeSet::new();
        let mut by_partition: BTreeMap<usize, Vec<Record>> = BTreeMap::new();
        let mut published = 0;
        for row in rows {
            let source = source_of(row);
            if source.0.is_some() && !seen.insert(source.clone()) {
                continue; // another consumer's letter of the same record: publish it once
            }
            let targets = match consumers.get(&source) {
                Some(set) => set.iter().copied().collect::<Vec<_>>().join(","),
                None => row.consumer_service.clone(),
            };
            let (record, partition) = replay_record(row, &targets, count);
            by_partition
                .entry(partition as usize)
                .or_default()
                .push(record);
            published += 1;
        }
        for (partition, records) in by_partition {
            self.partitions[partition]
                .produce(records, Compression::NoCompression)
                .await?;
        }
        Ok(published)
    }
}

/// The record to publish for a letter, and its partition: keyed by `player_id` (as
/// ingestion keys it) where the payload has one, else on the partition it came from.
/// Where a letter's record came from: topic, partition, offset.
fn source_of(row: &Claimed) -> (Option<String>, Option<i32>, Option<i64>) {
    (
        row.source_topic.clone(),
        row.source_partition,
        row.source_offset,
    )
}

/// The record that replays `row`, for the sinks of the consumers `targets` (comma
/// separated), and its partition.
fn replay_record(row: &Claimed, targets: &str, partitions: i32) -> (Record, i32) {
    let fields: Option<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(&row.payload).ok();
    let text = |name: &str| {
        fields
            .as_ref()
            .and_then(|f| f.get(name))
            .and_then(|v| v.as_str())
            .map(|s| s.as_bytes().to_vec())
    };
    let key = text("player_id");
    let mut headers = BTreeMap::from([
        (REPLAY_HEADER.to_owned(), row.id.to_string().into_bytes()),
        (REPLAY_FOR_HEADER.to_owned(), targets.as_bytes().to_vec()),
    ]);
    for name in ["event_type", "event_id"] {
        if let Some(value) = text(name) {
            headers.insert(name.to_owned(), value);
        }
    }
    let partition = match &key {
        Some(key) => kafka::partition_for_key(key, partitions),
        None => row
            .source_partition
            .filter(|p| (0..partitions).contains(p))
            .unwrap_or(0),
    };
    let record = Record {
        key,
        value: Some(row.payload.clone()),
        headers,
        timestamp: Utc::now(),
    };
    (record, partition)
}

async fn replay_command(args: &ReplayArgs, config: &Config) -> Result<Exit> {
    let pool = postgres::connect(&config.postgres).await?;
    let selection = ReplaySelection {
        ids: args.id.clone(),
        service: args.service.clone(),
        since: args.since,
    };
    let report = replay(&pool, config, &selection, args.chunk, args.dry_run).await?;
    let verb = if args.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    println!(
        "{verb} {} letter(s){} to {}",
        report.replayed.len(),
        if args.dry_run {
            String::new()
        } else {
            format!(" as {} record(s)", report.published)
        },
        config.topics.player_events
    );
    if !report.replayed.is_empty() && report.replayed.len() <= PRINTED_IDS {
        println!("ids: {}", join(&report.replayed));
    } else if let (Some(first), Some(last)) = (report.replayed.first(), report.replayed.last()) {
        println!("ids: {first} … {last}");
    }
    if !report.skipped.is_empty() {
        println!(
            "not replayed (unknown, already replayed, or being replayed by another run): {}",
            join(&report.skipped)
        );
    }
    Ok(Exit::Success)
}

fn join(ids: &[i32]) -> String {
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(payload: &[u8], source_partition: Option<i32>) -> Claimed {
        Claimed {
            id: 7,
            consumer_service: "event-logger".into(),
            source_topic: Some("t".into()),
            source_partition,
            source_offset: Some(3),
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn replayed_records_keep_bytes_key_and_headers() {
        let payload = br#"{"event_id":"e-1","event_type":"player_score","player_id":"p-9"}"#;
        let (record, partition) = replay_record(
            &claimed(payload, Some(2)),
            "stats-aggregator,leaderboard-manager",
            3,
        );
        assert_eq!(record.value.as_deref(), Some(&payload[..]));
        assert_eq!(record.key.as_deref(), Some(&b"p-9"[..]));
        assert_eq!(partition, kafka::partition_for_key(b"p-9", 3));
        assert_eq!(record.headers["event_id"], b"e-1");
        assert_eq!(record.headers["event_type"], b"player_score");
        assert_eq!(record.headers[REPLAY_HEADER], b"7");
        assert_eq!(
            record.headers[REPLAY_FOR_HEADER],
            b"stats-aggregator,leaderboard-manager"
        );
    }

    #[test]
    fn records_without_a_player_go_back_to_their_partition() {
        let (record, partition) =
            replay_record(&claimed(b"\xff not json", Some(2)), "event-logger", 3);
        assert_eq!(record.key, None);
        assert_eq!(partition, 2);
        let (_, partition) = replay_record(&claimed(b"{}", Some(5)), "event-logger", 3);
        assert_eq!(partition, 0, "a partition the topic no longer has");
    }
}
