//! What the benches that need the local stack share: the configuration from the
//! environment, a Kafka client, and a scratch topic of their own.
//! (`benches/support/` is a folder so that cargo does not take it for a bench.)

use std::sync::Arc;

use gamestream::config::{self, Config, Sources};
use gamestream::kafka;

/// The configuration (`eval "$(deploy/local/stack.sh env)"`), a client, and a new topic
/// `bench-{prefix}-{random}` of `partitions` partitions; errors as text, for the bench
/// to print before it skips.
pub async fn scratch_topic(
    prefix: &str,
    partitions: i32,
) -> Result<(Config, Arc<rskafka::client::Client>, String), String> {
    let config =
        config::load(&Sources::from_process_env(None, Vec::new())).map_err(|e| e.to_string())?;
    let kafka = Arc::new(
        kafka::connect(&config.kafka)
            .await
            .map_err(|e| e.to_string())?,
    );
    let id = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("bench-{prefix}-{}", &id[..10]);
    kafka
        .controller_client()
        .map_err(|e| e.to_string())?
        .create_topic(&topic, partitions, 1, 10_000)
        .await
        .map_err(|e| e.to_string())?;
    Ok((config, kafka, topic))
}

/// A multi-threaded runtime for a bench's async parts.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs the bench's `fixture` set-up; without the local stack, says so and gives `None`
/// (the bench then measures nothing rather than failing).
pub fn set_up<T>(
    bench: &str,
    runtime: &tokio::runtime::Runtime,
    fixture: impl std::future::Future<Output = Result<T, String>>,
) -> Option<T> {
    match runtime.block_on(fixture) {
        Ok(fixture) => Some(fixture),
        Err(e) => {
            eprintln!(
                "{bench}: cannot set up ({e}); start the local stack and eval its env. Skipped."
            );
            None
        }
    }
}
