//! Building an rskafka [`Client`] from [`KafkaConfig`]: bootstrap, SASL/SCRAM-SHA-512, TLS.

use std::sync::Arc;

use rskafka::BackoffConfig;
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::config::{KafkaConfig, SecurityProtocol};

/// Errors of the Kafka layer.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka {brokers}: {source}")]
    Connect {
        brokers: String,
        source: rskafka::client::error::Error,
    },
    #[error("kafka: {0}")]
    Client(#[from] rskafka::client::error::Error),
    #[error("kafka TLS: {0}")]
    Tls(String),
    #[error("kafka: no answer from {brokers} within {timeout:?}")]
    Timeout {
        brokers: String,
        timeout: std::time::Duration,
    },
    #[error("kafka: topic `{0}` does not exist (run `gamestream topics create`)")]
    UnknownTopic(String),
    /// The broker answered a topic request with an error (an invalid config value, a
    /// policy violation, too few brokers for the replication factor, ...).
    #[error("kafka: the broker refused to {action} topic `{topic}`: {answer}")]
    TopicRefused {
        topic: String,
        /// What was asked: `create`, `describe the configuration of`.
        action: &'static str,
        /// The broker's error code, as rskafka names it.
        error: rskafka::client::error::ProtocolError,
        /// The error code and the broker's message, if it sent one.
        answer: String,
    },
}

/// Connects to the cluster. Every broker operation of the returned client retries with
/// backoff for at most `operation_timeout`, so a dead broker surfaces as an error
/// instead of a hang.
pub async fn connect(config: &KafkaConfig) -> Result<Client, KafkaError> {
    connect_with(config, config.operation_timeout).await
}

/// Connects a client for producing, whose operations are never retried inside rskafka.
///
/// rskafka re-sends a produce request whose connection broke, and a broker that had
/// appended the records before the break (killed before its answer) then holds them
/// twice: the same `event_id` at two offsets, which `events` ignores but statistics
/// and leaderboards would count twice. Only the producer knows how to send again
/// safely: with the same sequence numbers (`producer.idempotence`), or, without
/// idempotence, only what was certainly not appended ([`super::ingest_producer`]).
///
/// Connecting itself is retried, until `operation_timeout`: it sends no records.
pub async fn connect_producer(config: &KafkaConfig) -> Result<Client, KafkaError> {
    let started = std::time::Instant::now();
    loop {
        match connect_with(config, std::time::Duration::ZERO).await {
            Err(e) if started.elapsed() < config.operation_timeout => {
                tracing::debug!(error = %e, "producer client not connected yet; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            result => return result,
        }
    }
}

/// A client whose operations retry with backoff until `retry_deadline` (zero: a
/// failure is returned at once).
async fn connect_with(
    config: &KafkaConfig,
    retry_deadline: std::time::Duration,
) -> Result<Client, KafkaError> {
    let brokers = config.bootstrap_servers.join(",");
    let backoff = BackoffConfig {
        init_backoff: std::time::Duration::from_millis(50),
        max_backoff: std::time::Duration::from_secs(1),
        base: 2.0,
        deadline: Some(retry_deadline),
    };
    let mut builder = ClientBuilder::new(config.bootstrap_servers.clone())
        .client_id(config.client_id.as_str())
        .backoff_config(backoff);
    let protocol = config.effective_protocol();
    if matches!(
        protocol,
        SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
    ) {
        let credentials =
            Credentials::new(config.username.clone(), config.password.expose().to_owned());
        builder = builder.sasl_config(SaslConfig::ScramSha512(credentials));
    }
    if matches!(protocol, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl) {
        builder = builder.tls_config(Arc::new(tls_config(&config.ca_file)?));
    }
    let build = builder.build();
    match tokio::time::timeout(config.operation_timeout, build).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(source)) => Err(KafkaError::Connect { brokers, source }),
        Err(_) => Err(KafkaError::Timeout {
            brokers,
            timeout: config.operation_timeout,
        }),
    }
}

/// A rustls client config trusting Mozilla's roots plus the certificates in `ca_file`.
fn tls_config(ca_file: &str) -> Result<rustls::ClientConfig, KafkaError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if !ca_file.is_empty() {
        let certs = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| KafkaError::Tls(format!("{ca_file}: {e}")))?;
        for cert in certs {
            let cert = cert.map_err(|e| KafkaError::Tls(format!("{ca_file}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| KafkaError::Tls(format!("{ca_file}: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| KafkaError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
