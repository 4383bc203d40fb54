//! SASL/SCRAM-SHA-512 to Kafka (issue 7), against a private tansu 0.6 broker that
//! requires authentication: the CONTRACT env (`KAFKA_USERNAME`, `KAFKA_PASSWORD`,
//! `KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT`) connects, creates topics, produces and
//! reads back; a wrong password and no credentials are refused.
//!
//! tansu creates users through the Kafka API, which an authenticating broker only
//! serves to authenticated clients, so the user is created first on the same sqlite
//! storage with authentication off, then the broker restarts with `--authentication`.

use std::process::Stdio;
use std::time::Duration;

use crate::common::{RawRecord, eventually, free_port, high_watermarks, produce_raw, sample_event};
use gamestream::config::{self, Config, Sources};
use gamestream::kafka;

const USER: &str = "gamestream";
const PASSWORD: &str = "scram-s3cret";

/// A tansu broker on `port`, with its sqlite storage in `dir`.
fn broker(dir: &std::path::Path, port: u16, authentication: bool) -> tokio::process::Child {
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .expect("log file");
    let log_err = log.try_clone().expect("log file");
    let mut cmd = tokio::process::Command::new(crate::common::tansu_binary());
    cmd.current_dir(dir)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("SCHEMA_REGISTRY")
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .args(["broker", "--cluster-id", "gamestream-sasl"])
        // Resolved against the working directory.
        .args(["--storage-engine", "sqlite://tansu.db"])
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true);
    if authentication {
        cmd.arg("--authentication");
    }
    cmd.spawn().expect("start tansu")
}

async fn listening(port: u16) -> bool {
    eventually(Duration::from_secs(30), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await
}

fn config_with(port: u16, kafka_env: &[(&str, &str)]) -> Config {
    let mut env: Vec<(String, String)> = [
        ("KAFKA_BOOTSTRAP_SERVERS", format!("127.0.0.1:{port}")),
        ("DB_HOST", "127.0.0.1".to_owned()),
        ("DB_NAME", "unused".to_owned()),
        ("DB_USER", "unused".to_owned()),
        ("REDIS_HOST", "127.0.0.1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.extend(
        kafka_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    config::load(&Sources {
        file: None,
        env,
        overrides: vec![("kafka.operation_timeout".into(), "\"5s\"".into())],
    })
    .expect("valid configuration")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_512_connects_and_wrong_credentials_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();

    let mut open = broker(dir.path(), port, false);
    assert!(
        listening(port).await,
        "tansu did not start: {:?}",
        dir.path()
    );
    let created = eventually(Duration::from_secs(30), || async {
        tokio::process::Command::new(crate::common::tansu_binary())
            .args(["user", "create", "--mechanism", "scram512"])
            .args([
                "--broker",
                &format!("tcp://127.0.0.1:{port}"),
                USER,
                PASSWORD,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success())
    })
    .await;
    assert!(created, "tansu user create failed");
    open.kill().await.expect("stop the open broker");

    let _secured = broker(dir.path(), port, true);
    assert!(
        listening(port).await,
        "tansu with --authentication did not start"
    );

    let config = config_with(
        port,
        &[
            ("KAFKA_USERNAME", USER),
            ("KAFKA_PASSWORD", PASSWORD),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
        ],
    );
    let client = kafka::connect(&config.kafka)
        .await
        .expect("SCRAM-SHA-512 authenticates");
    kafka::create_topics(&client, &config.topics)
        .await
        .expect("topics are created over SASL");
    let topic = config.topics.player_events.clone();
    let sent: Vec<_> = (0..10)
        .map(|i| RawRecord::of(&sample_event(i, 3, 1)))
        .collect();
    produce_raw(&config, &topic, &sent).await;
    let marks: i64 = high_watermarks(&config, &topic).await.iter().sum();
    assert_eq!(marks, 10, "what was produced over SASL is there");

    let wrong = config_with(
        port,
        &[
            ("KAFKA_USERNAME", USER),
            ("KAFKA_PASSWORD", "not-the-password"),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
        ],
    );
    assert!(
        kafka::connect(&wrong.kafka).await.is_err(),
        "a wrong password is refused"
    );
    let anonymous = config_with(port, &[]);
    let refused = match kafka::connect(&anonymous.kafka).await {
        Err(_) => true,
        Ok(client) => client.list_topics().await.is_err(),
    };
    assert!(refused, "a client without credentials is refused");
}
