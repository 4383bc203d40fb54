//! What the handlers share.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::kafka::KafkaProducer;
use crate::sinks::redis::RedisPool;

/// Shared, cheaply cloneable state of the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    pub config: Arc<Config>,
    /// Kafka client, for readiness (and the producer, in ingest mode).
    pub kafka: Arc<rskafka::client::Client>,
    /// Present in consume mode (readiness, queries).
    pub postgres: Option<sqlx::PgPool>,
    /// Present in consume mode (readiness, queries).
    pub redis: Option<RedisPool>,
    pub metrics: PrometheusHandle,
    /// Present when this process ingests (`mode` all or ingest).
    pub producer: Option<KafkaProducer>,
    /// Present in consume mode: the partitions this daemon holds, for `/ready`.
    pub leases: Option<crate::leases::LeaseView>,
    /// Present while the old consumer groups are mirrored: their status, for `/ready`.
    pub group_mirror: Option<crate::actors::group_mirror::GroupMirrorView>,
}
