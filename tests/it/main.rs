//! The integration tests: one test binary, one module per suite, all against real
//! PostgreSQL, Redis and Apache Kafka on loopback (`deploy/local/stack.sh up`, which
//! `make test` runs first). One binary compiles and links the harness (`common`) once;
//! `cargo nextest` still runs every test in its own process, so the global metrics
//! recorder and tracing subscriber of one suite never meet another's.
//!
//! Run one suite with `cargo nextest run --test it SUITE::` (e.g. `chaos::`).

mod common;

mod bad_input;
mod bench_smoke;
mod broker_outage;
mod chaos;
mod cutover;
mod dedupe;
mod deploy_manifests;
mod failover;
mod foundation;
mod fuzz_replay;
mod group_offsets;
mod http_edge;
mod ingest;
mod kafka_client;
mod kafka_sasl;
mod layering;
mod leases;
mod loadgen;
mod ops;
mod pipeline;
mod producer;
mod queries;
mod redis_scripts;
mod security;
mod stats_leaderboards;
mod store_tls;
mod throughput;
mod topics_config;
mod traces;
