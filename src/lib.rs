//! gamestream: an actor-based stream processor for real-time game analytics.
//!
//! ```text
//! HTTP POST /api/v1/events ─(warp, http)─► KafkaProducer (kafka::ingest_producer)
//!                                             │ acks=all
//!                                             ▼
//!                                 player.events.raw (N partitions)
//!                                             │ one PartitionReader per leased partition
//!   Supervisor ─┬─ LeaseManager               ▼
//!               ├─ PartitionReader p0..pN ── Arc<ParsedBatch>, credit-based flow control
//!               │     ├─► SinkActor<LoggerWriter>            ─► Postgres `events`
//!               │     ├─► SinkActor<StatsPgWriter>           ─► Postgres `player_statistics`
//!               │     ├─► SinkActor<LeaderboardPgWriter>     ─► Postgres `leaderboard_scores`
//!               │     ├─► SinkActor<StatsRedisWriter>        ─► Redis `player_stats:*`
//!               │     └─► SinkActor<LeaderboardRedisWriter>  ─► Redis `leaderboard:*`
//!               ├─ LeaderboardRefresher                      ─► Postgres `leaderboards`
//!               └─ DlqActor ◄── dead letters ── sinks        ─► Kafka `system.dlq`, Postgres `dlq_events`
//! ```
//!
//! The sinks are listed once, in the [`catalogue`]. Every sink stores, in its own
//! destination and in the same transaction (or atomic Redis step) as its writes, the
//! next offset of each partition it has applied. That is what makes the effects
//! exactly-once across crashes, restarts and several pods. Beside the pipeline, a task
//! (`actors::group_mirror`) copies those offsets every few seconds into the old
//! consumer groups in Kafka, for Kafka's tools, lag exporters and KEDA.
//!
//! # Layers
//!
//! Lowest first; a module imports only from its own layer or below (checked by
//! `tests/it/layering.rs`), so data flows one way: http → kafka → readers → sinks →
//! stores.
//!
//! 1. domain: [`config`], [`event`], [`aggregate`], [`dead_letter`], [`dedupe`], [`retry`],
//!    [`shutdown`], [`leases`] (the lease rules), [`catalogue`] (the sinks), [`exit`]
//!    (exit codes), [`trace_context`] (W3C context in record headers);
//! 2. stores: [`sinks`] (Postgres and Redis write paths, their errors), [`kafka`] (the
//!    client, topics, the HTTP ingest producer, and the consumer groups' mirror);
//! 3. [`telemetry`]: logs, Prometheus metrics, OTLP traces;
//! 4. [`actors`]: the consumer pipeline (supervisor, readers, sinks, leases, DLQ);
//! 5. [`http`]: the warp server: ingestion, queries, health, metrics, OpenAPI;
//! 6. [`daemon`]: `serve`, wiring connections, the HTTP server and the pipeline;
//! 7. tools: [`commands`] (migrate, topics, check), [`ops`] (dlq, offsets), [`bench`],
//!    [`loadgen`];
//! 8. [`cli`] and the binary's `main`.

#![deny(unsafe_code, rustdoc::broken_intra_doc_links)]

pub mod actors;
pub mod aggregate;
pub mod bench;
pub mod catalogue;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod dead_letter;
pub mod dedupe;
pub mod event;
pub mod exit;
pub mod http;
pub mod kafka;
pub mod leases;
pub mod loadgen;
pub mod ops;
pub mod retry;
pub mod shutdown;
pub mod sinks;
pub mod telemetry;
pub mod trace_context;
