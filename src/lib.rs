//! gamestream: an actor-based stream processor for real-time game analytics.
//!
//! ```text
//! HTTP POST /api/v1/events ─(warp)─► Kafka producer ─► player.events.raw (N partitions)
//!                                                           │ one PartitionReader per partition
//!   Supervisor ── PartitionReader p0..pN ◄──────────────────┘
//!                   │ fan-out of parsed batches, credit-based flow control
//!                   ├─► Logger ──────► Postgres `events`
//!                   ├─► StatsBuffer ─► Postgres `player_statistics`, Redis `player_stats:*`
//!                   ├─► Leaderboard ─► Redis `leaderboard:*`, Postgres `leaderboards`
//!                   └─► Dlq ─────────► Kafka `system.dlq`, Postgres `dlq_events`
//! ```
//!
//! Every sink stores, in its own destination and in the same transaction (or atomic Redis
//! step) as its writes, the next offset of each partition it has applied. That is what
//! makes the effects exactly-once across crashes, restarts and several pods.
//!
//! # Layout
//!
//! - [`actors`]: the consumer pipeline: supervisor, partition readers, sinks, DLQ.
//! - [`aggregate`]: statistics and leaderboard arithmetic: per-player deltas, score sums, periods.
//! - [`bench`]: `gamestream bench`, the end-to-end benchmark.
//! - [`cli`]: the `gamestream` command line (serve, migrate, topics, check, loadgen, ...).
//! - [`commands`]: the administrative subcommands (migrate, topics, check).
//! - [`config`]: layered configuration: compiled-in defaults, file, environment, flags.
//! - [`dead_letter`]: the dead-letter record and its `system.dlq` message.
//! - [`event`]: the event type, its validation rules and its simd-json parsers.
//! - [`leases`]: partition leases among several daemons: member ids, fair shares, the `/ready` view.
//! - [`http`]: the warp server: ingestion, queries, health, metrics, OpenAPI.
//! - [`sinks`]: the write paths per backend (Postgres, Redis, Kafka).
//! - [`telemetry`]: logs (text or JSON with trace ids), Prometheus metrics, OTLP traces and
//!   W3C trace-context propagation through Kafka headers.
//! - [`retry`]: exponential backoff for transient failures.
//! - [`shutdown`]: the one shutdown signal every task listens to.
//! - [`daemon`]: `serve`: wires connections, the HTTP server and the pipeline together.
//! - [`loadgen`]: `loadgen`: paced HTTP load with a progress bar and latency percentiles.
//! - [`ops`]: operator tools: `dlq list|replay`, `offsets show|reset`.

#![deny(unsafe_code, rustdoc::broken_intra_doc_links)]

pub mod actors;
pub mod aggregate;
pub mod bench;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod dead_letter;
pub mod event;
pub mod http;
pub mod leases;
pub mod loadgen;
pub mod ops;
pub mod retry;
pub mod shutdown;
pub mod sinks;
pub mod telemetry;
