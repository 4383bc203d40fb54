//! `gamestream serve`: connects to the services, starts the HTTP server and the
//! consumer pipeline, and runs until SIGTERM.
//!
//! ```text
//! load config ─► connect Kafka (+ Postgres, Redis in consume mode) ─► check schema
//!             ─► HTTP server ─► pipeline ─► wait for shutdown ─► drain ─► exit 0
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::actors::group_mirror::{GroupMirrorArgs, GroupMirrorTask};
use crate::actors::{Pipeline, PipelineContext, PipelineOutcome};

use crate::config::Config;
use crate::exit::Exit;
use crate::http::{self, HttpState};
use crate::kafka::{KafkaProducer, ProducerTasks};
use crate::shutdown::Shutdown;
use crate::sinks::StoreError;
use crate::sinks::error::from_store_errors;
use crate::sinks::postgres;
use crate::sinks::redis;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(StoreError),
    #[error("the consumer pipeline did not start: {0}")]
    Pipeline(#[source] ractor::SpawnErr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

from_store_errors!(DaemonError);

/// Runs the daemon until SIGTERM/Ctrl-C (or a supervisor escalation).
pub async fn serve(config: Config, migrate: bool) -> Result<Exit, DaemonError> {
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let running = start(config, migrate, shutdown.clone()).await?;
    shutdown.wait().await;
    Ok(match running.stop().await {
        PipelineOutcome::Drained => Exit::Success,
        PipelineOutcome::TimedOut => Exit::Failure,
        PipelineOutcome::Escalated => Exit::Escalated,
    })
}

/// A started daemon: what `stop` has to wait for.
pub struct Running {
    pub http_addr: SocketAddr,
    http_task: tokio::task::JoinHandle<()>,
    pipeline: Option<Pipeline>,
    /// The producer's workers (ingest mode); closed after the HTTP server drained, so
    /// requests still in flight get their acknowledgements.
    producer: Option<ProducerTasks>,
    /// Mirrors the sinks' offsets into the old consumer groups (consume mode, when
    /// `group_offsets.mirror` is on); its final round runs after the pipeline drained.
    group_mirror: Option<GroupMirrorTask>,
    grace: Duration,
    /// Folds histogram samples into buckets; ends on shutdown.
    metrics_upkeep: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Graceful stop (the shutdown must have been triggered, which also stops the HTTP
    /// server from accepting): answer the requests in flight and flush the producer,
    /// then drain the pipeline, all within the grace period.
    pub async fn stop(self) -> PipelineOutcome {
        let deadline = tokio::time::Instant::now() + self.grace;
        if tokio::time::timeout_at(deadline, self.http_task)
            .await
            .is_err()
        {
            tracing::warn!("http server did not finish its requests within the grace period");
        }
        if let Some(producer) = self.producer {
            producer.close().await;
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        // Before the pipeline releases its leases: the final mirror still covers them.
        let held = self.group_mirror.as_ref().map(GroupMirrorTask::held_now);
        let outcome = match self.pipeline {
            Some(pipeline) => pipeline.stop(remaining).await,
            None => PipelineOutcome::Drained,
        };
        if let Some(group_mirror) = self.group_mirror {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            group_mirror
                .finish(held.unwrap_or_default(), remaining)
                .await;
        }
        match outcome {
            PipelineOutcome::Drained => tracing::info!("stopped cleanly"),
            PipelineOutcome::TimedOut => tracing::warn!(
                "grace period ran out; uncommitted records will be read again at the next start"
            ),
            PipelineOutcome::Escalated => {
                tracing::error!("stopped after repeated pipeline crashes")
            }
        }
        if let Err(e) = self.metrics_upkeep.await {
            tracing::error!(error = %e, "metrics upkeep task failed");
        }
        outcome
    }
}

/// Connects and starts everything; returns once the daemon is serving.
pub async fn start(
    config: Config,
    migrate: bool,
    shutdown: Shutdown,
) -> Result<Running, DaemonError> {
    let config = Arc::new(config);
    tracing::info!(mode = ?config.mode, brokers = %config.kafka.bootstrap_servers.join(","), "starting");
    if config.kafka.credentials_in_clear() {
        // The old consumers' default (CONTRACT): kept for compatibility, said out loud.
        tracing::warn!(
            protocol = "SASL_PLAINTEXT",
            user = %config.kafka.username,
            "Kafka SASL credentials and events go over plaintext; set KAFKA_SECURITY_PROTOCOL=SASL_SSL to encrypt them"
        );
    }
    let metrics = crate::telemetry::metrics_handle();

    let kafka = Arc::new(crate::kafka::connect(&config.kafka).await?);

    let member: Arc<str> = Arc::from(crate::leases::member_id(&config.lease.member_id));
    let (pg, redis_pool) = if config.mode.consumes() {
        let pg = postgres::connect_as(&config.postgres, &member).await?;
        if config.shadow.enabled {
            postgres::refuse_legacy(&pg, &config.postgres.database).await?;
        }
        if migrate {
            postgres::migrate(&pg).await?;
        } else {
            postgres::require_migrated(&pg, &config.postgres.database).await?;
        }
        let redis_pool = redis::connect(&config.redis).await?;
        (Some(pg), Some(redis_pool))
    } else {
        (None, None)
    };

    let (producer, producer_tasks) = if config.mode.ingests() {
        // A client of its own: produce requests are never re-sent by rskafka.
        let producer_client = Arc::new(crate::kafka::connect_producer(&config.kafka).await?);
        let (producer, tasks) = KafkaProducer::start(
            &kafka,
            producer_client,
            &config.topics.player_events,
            &config.producer,
        )
        .await?;
        (Some(producer), Some(tasks))
    } else {
        (None, None)
    };

    let leases = config
        .mode
        .consumes()
        .then(|| crate::leases::LeaseView::new(&member, &config.topics.player_events));
    let pipeline = match (&pg, &redis_pool, &leases) {
        (Some(pg), Some(redis_pool), Some(leases)) => {
            let ctx = PipelineContext {
                config: Arc::clone(&config),
                kafka: Arc::clone(&kafka),
                pg: pg.clone(),
                redis: redis_pool.clone(),
                shutdown: shutdown.clone(),
                escalated: Arc::new(AtomicBool::new(false)),
                member: Arc::clone(&member),
                leases: leases.clone(),
            };
            let pipeline = Pipeline::start(ctx).await.map_err(DaemonError::Pipeline)?;
            Some(pipeline)
        }
        _ => None,
    };

    let (group_mirror, group_mirror_view) = match (&pg, &redis_pool, &leases) {
        (Some(pg), Some(redis_pool), Some(leases)) if config.group_offsets.mirror => {
            let (task, view) = GroupMirrorTask::start(GroupMirrorArgs {
                config: Arc::clone(&config),
                kafka: Arc::clone(&kafka),
                pg: pg.clone(),
                redis: redis_pool.clone(),
                leases: leases.clone(),
            });
            (Some(task), Some(view))
        }
        _ => (None, None),
    };

    let state = HttpState {
        config: Arc::clone(&config),
        kafka,
        postgres: pg,
        redis: redis_pool,
        metrics,
        producer,
        leases,
        group_mirror: group_mirror_view,
    };
    let addr_text = format!("{}:{}", config.http.bind, config.http.port);
    let addr: SocketAddr = tokio::net::lookup_host(&addr_text)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| DaemonError::Bind {
            addr: addr_text.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a bindable address"),
        })?;
    let metrics = state.metrics.clone();
    let server = http::serve(state, addr, shutdown.clone())
        .await
        .map_err(|source| DaemonError::Bind {
            addr: addr_text,
            source,
        })?;
    let metrics_upkeep = crate::telemetry::spawn_metrics_upkeep(
        metrics,
        config.telemetry.metrics_upkeep_interval,
        shutdown,
    );
    Ok(Running {
        http_addr: server.local_addr,
        http_task: server.task,
        pipeline,
        producer: producer_tasks,
        group_mirror,
        grace: config.shutdown.grace_period,
        metrics_upkeep,
    })
}
