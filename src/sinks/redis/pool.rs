//! The bb8 pool of multiplexed Redis connections, built from [`RedisConfig`].

use base64::Engine as _;
use bb8_redis::RedisConnectionManager;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::config::RedisConfig;
use crate::sinks::SinkError;
use crate::sinks::tls::{TlsProblem, ca_file_text, tls_problem};

/// A pool of Redis connections.
pub type RedisPool = bb8::Pool<RedisConnectionManager>;

/// Errors of the Redis layer.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// `hint` names the setting to look at (TLS or AUTH refused; empty otherwise).
    #[error("redis {addr}: {source}{hint}")]
    Connect {
        addr: String,
        source: redis::RedisError,
        hint: String,
    },
    #[error("redis: `redis.ca_file` (GAMESTREAM_REDIS__CA_FILE) `{path}`: {detail}")]
    CaFile { path: String, detail: String },
    #[error("redis: {0}")]
    Command(#[from] redis::RedisError),
    #[error("redis: no connection within the pool timeout: {0}")]
    Pool(String),
}

impl From<bb8::RunError<redis::RedisError>> for RedisError {
    fn from(e: bb8::RunError<redis::RedisError>) -> Self {
        match e {
            bb8::RunError::User(e) => RedisError::Command(e),
            bb8::RunError::TimedOut => RedisError::Pool("timed out".to_owned()),
        }
    }
}

/// Builds the pool and proves it with a PING, so a wrong address, certificate or
/// password fails here, naming the address and the setting to look at.
pub async fn connect(config: &RedisConfig) -> Result<RedisPool, RedisError> {
    let addr = if config.tls {
        format!("{}:{} (TLS)", config.host, config.port)
    } else {
        format!("{}:{}", config.host, config.port)
    };
    let connect_err = |source: redis::RedisError| RedisError::Connect {
        addr: addr.clone(),
        hint: hint(config, &source),
        source,
    };
    let info = connection_info(config).map_err(|e| match e {
        InfoError::Redis(source) => connect_err(source),
        InfoError::CaFile(e) => e,
    })?;
    // One direct connection first: bb8 would turn "connection refused" into a bare timeout.
    let client = redis::Client::open(info.clone()).map_err(connect_err)?;
    let mut conn = tokio::time::timeout(config.timeout, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| RedisError::Pool(format!("{addr}: no answer within {:?}", config.timeout)))?
        .map_err(connect_err)?;
    let _: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(connect_err)?;
    let manager = RedisConnectionManager::new(info).map_err(connect_err)?;
    Ok(bb8::Pool::builder()
        .max_size(config.max_connections)
        .connection_timeout(config.timeout)
        .build_unchecked(manager))
}

enum InfoError {
    Redis(redis::RedisError),
    CaFile(RedisError),
}

/// Address, AUTH, database and, with `tls`, the trust store of every connection.
fn connection_info(config: &RedisConfig) -> Result<ConnectionInfo, InfoError> {
    let target = if config.tls {
        ConnectionAddr::TcpTls {
            host: config.host.clone(),
            port: config.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(config.host.clone(), config.port)
    };
    let mut settings = RedisConnectionInfo::default().set_db(config.db);
    if !config.username.is_empty() {
        settings = settings.set_username(&config.username);
    }
    if !config.password.is_empty() {
        settings = settings.set_password(config.password.expose());
    }
    // TCP_NODELAY: a pipeline or script call is several small writes, and with Nagle on
    // the second waited for the server's delayed ACK (40 ms on Linux): measured, the
    // Redis sinks' batch writes took ~24 ms at 500 events/s with Nagle on.
    let info = target
        .into_connection_info()
        .map_err(InfoError::Redis)?
        .set_redis_settings(settings)
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    if !config.tls {
        return Ok(info);
    }
    // The redis crate builds its rustls config with the process's default provider;
    // ring is the only one compiled in, installed here in case nothing did yet.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let roots = trusted_roots_pem(&config.ca_file).map_err(InfoError::CaFile)?;
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(roots),
    };
    let client = redis::Client::build_with_tls(info, certificates).map_err(|e| {
        InfoError::CaFile(RedisError::CaFile {
            path: config.ca_file.clone(),
            detail: e.to_string(),
        })
    })?;
    Ok(client.get_connection_info().clone())
}

/// Mozilla's roots plus the certificates of `ca_file`, as the one PEM bundle the redis
/// crate takes (it would otherwise trust the CA file *instead of* the roots, unlike
/// `postgres.ssl_root_cert` and `kafka.ca_file`).
fn trusted_roots_pem(ca_file: &str) -> Result<Vec<u8>, RedisError> {
    let mut pem = Vec::new();
    for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        // The crate refuses the whole bundle if one certificate is not a usable anchor.
        if rustls::RootCertStore::empty().add(cert.clone()).is_err() {
            continue;
        }
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        let text = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in text.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    if ca_file.is_empty() {
        return Ok(pem);
    }
    let ca_err = |detail: String| RedisError::CaFile {
        path: ca_file.to_owned(),
        detail,
    };
    let extra = std::fs::read(ca_file).map_err(|e| ca_err(e.to_string()))?;
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(&extra) {
        let cert = cert.map_err(|e| ca_err(format!("not PEM: {e}")))?;
        rustls::RootCertStore::empty()
            .add(cert)
            .map_err(|e| ca_err(format!("not a usable CA certificate: {e}")))?;
        found += 1;
    }
    if found == 0 {
        return Err(ca_err("no PEM certificate in it".to_owned()));
    }
    pem.push(b'\n');
    pem.extend_from_slice(&extra);
    Ok(pem)
}

/// What a refused connection means in settings, for the end of the error message.
/// Never quotes the password.
fn hint(config: &RedisConfig, error: &redis::RedisError) -> String {
    let auth = " (AUTH refused: check `redis.username` (GAMESTREAM_REDIS__USERNAME) and \
                `redis.password` (REDIS_PASSWORD or GAMESTREAM_REDIS__PASSWORD))";
    if error.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("WRONGPASS"))
    {
        return auth.to_owned();
    }
    if matches!(error.code(), Some("NOAUTH")) {
        return " (the server requires AUTH: set `redis.password` (REDIS_PASSWORD))".to_owned();
    }
    match tls_problem(error) {
        None if config.tls && error.is_timeout() => format!(
            " (if the server is up: with `redis.tls` (GAMESTREAM_REDIS__TLS), `redis.port` \
             (REDIS_PORT) {} must be its tls-port; a plain port never answers the handshake)",
            config.port
        ),
        None if !config.tls && error.is_connection_dropped() && !error.is_connection_refusal() => {
            " (if the server is up: does it expect TLS on this port? Then set `redis.tls` \
             (GAMESTREAM_REDIS__TLS) to true)"
                .to_owned()
        }
        None => String::new(),
        Some(TlsProblem::Untrusted) => format!(
            " (the server's certificate is not signed by a trusted CA: `redis.ca_file` \
             (GAMESTREAM_REDIS__CA_FILE) must hold the CA that signed it; {})",
            ca_file_text(&config.ca_file)
        ),
        Some(TlsProblem::WrongName) => format!(
            " (the server's certificate is not valid for host `{}`: `redis.host` (REDIS_HOST) \
             must be a name the certificate carries)",
            config.host
        ),
        Some(TlsProblem::OtherCertificate) => format!(
            " (the server's certificate was refused; `redis.ca_file` is {})",
            ca_file_text(&config.ca_file)
        ),
        Some(TlsProblem::NotTls) => format!(
            " (the server did not answer in TLS: with `redis.tls`, `redis.port` (REDIS_PORT) \
             {} must be the server's tls-port)",
            config.port
        ),
    }
}

/// A pooled connection with the sink's reply timeout (the pool's default is shorter
/// than a large script or pipeline may take under load).
pub async fn connection(
    pool: &RedisPool,
    timeout: Duration,
) -> Result<MultiplexedConnection, SinkError> {
    let mut conn = pool.get().await?.clone();
    conn.set_response_timeout(timeout);
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mozilla_root_is_in_the_bundle_and_the_ca_file_after_them() {
        let roots = trusted_roots_pem("").expect("roots");
        let count = CertificateDer::pem_slice_iter(&roots)
            .collect::<Result<Vec<_>, _>>()
            .expect("PEM")
            .len();
        assert_eq!(count, webpki_root_certs::TLS_SERVER_ROOT_CERTS.len());

        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").expect("write");
        let err = trusted_roots_pem(&ca.display().to_string()).expect_err("no certificate");
        assert!(
            err.to_string().contains("redis.ca_file") && err.to_string().contains("no PEM"),
            "{err}"
        );
        let first_end = std::str::from_utf8(&roots)
            .expect("ascii")
            .find("-----END CERTIFICATE-----\n")
            .expect("a certificate")
            + "-----END CERTIFICATE-----\n".len();
        std::fs::write(&ca, &roots[..first_end]).expect("write");
        let with_ca = trusted_roots_pem(&ca.display().to_string()).expect("a CA file");
        let count_with_ca = CertificateDer::pem_slice_iter(&with_ca).count();
        assert_eq!(count_with_ca, count + 1);
    }
}
