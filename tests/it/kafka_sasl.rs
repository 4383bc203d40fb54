//! SASL/SCRAM-SHA-512 to Apache Kafka, over SASL_PLAINTEXT and SASL_SSL, against a
//! private broker whose SCRAM user is created at format time (`kafka.sh --scram`) and
//! whose TLS listener is signed by a CA `kafka.sh tls` generated for the test.
//!
//! The contract's environment (`KAFKA_USERNAME`, `KAFKA_PASSWORD`,
//! `KAFKA_SECURITY_PROTOCOL`, and the CA file setting; credentials without a protocol
//! are SASL_PLAINTEXT, as the old consumers had it) connects, creates topics,
//! produces and reads back; a wrong password, no credentials, an untrusted certificate
//! and a missing CA are each refused with an error that names the cause, and no error
//! shows the password.

use std::time::Duration;

use crate::common::{
    BrokerSecurity, PrivateBroker, RawRecord, high_watermarks, produce_raw, sample_event,
};
use gamestream::config::{self, Config, Sources};
use gamestream::kafka;

const USER: &str = "gamestream";
const PASSWORD: &str = "scram-s3cret-pw";

fn config_with(address: &str, kafka_env: &[(&str, &str)]) -> Config {
    let mut env: Vec<(String, String)> = [
        ("KAFKA_BOOTSTRAP_SERVERS", address.to_owned()),
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

/// Connects, creates the topics, produces ten records and reads their count back.
async fn round_trip(config: &Config) {
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
    produce_raw(config, &topic, &sent).await;
    let marks: i64 = high_watermarks(config, &topic).await.iter().sum();
    assert_eq!(marks, 10, "what was produced over SASL is there");
}

/// The error of connecting with `config`, which must fail.
async fn refusal(config: &Config) -> String {
    match tokio::time::timeout(Duration::from_secs(60), kafka::connect(&config.kafka)).await {
        Ok(Err(e)) => {
            let text = format!("{e:#} {e:?}");
            assert!(
                !text.contains(PASSWORD),
                "the password is never in an error: {text}"
            );
            text
        }
        Ok(Ok(client)) => match client.list_topics().await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("connecting was not refused"),
        },
        Err(_) => panic!("no answer within 60 s"),
    }
}

fn users() -> Vec<(String, String)> {
    vec![(USER.to_owned(), PASSWORD.to_owned())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plaintext_scram_connects_and_wrong_credentials_are_refused() {
    let broker = PrivateBroker::start_secured(BrokerSecurity {
        protocol: "SASL_PLAINTEXT",
        users: users(),
    })
    .await;
    let address = broker.address();
    round_trip(&config_with(
        &address,
        &[
            ("KAFKA_USERNAME", USER),
            ("KAFKA_PASSWORD", PASSWORD),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
        ],
    ))
    .await;
    // The old consumers' environment: credentials and no protocol mean SASL_PLAINTEXT
    // (CONTRACT, Environment), so it connects to this listener as it is.
    let old_environment = config_with(
        &address,
        &[
            ("KAFKA_USERNAME", USER),
            ("KAFKA_PASSWORD", PASSWORD),
            // A topic of its own: the round trip counts what it produced.
            ("KAFKA_TOPIC_PLAYER_EVENTS", "old.environment.raw"),
        ],
    );
    assert!(old_environment.kafka.credentials_in_clear());
    round_trip(&old_environment).await;

    let wrong = refusal(&config_with(
        &address,
        &[
            ("KAFKA_USERNAME", USER),
            ("KAFKA_PASSWORD", "not-the-password"),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
        ],
    ))
    .await;
    assert!(
        wrong.to_lowercase().contains("auth") || wrong.contains("SASL"),
        "a wrong password is refused as an authentication failure: {wrong}"
    );
    let anonymous = refusal(&config_with(&address, &[])).await;
    assert!(
        !anonymous.is_empty(),
        "a client without credentials is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_verifies_the_broker_and_refuses_untrusted_certificates() {
    let broker = PrivateBroker::start_secured(BrokerSecurity {
        protocol: "SASL_SSL",
        users: users(),
    })
    .await;
    let address = broker.address();
    let ca = broker.ca_file();
    let ca = ca.to_str().expect("utf-8 path");
    let secured = |ca_file: &str, password: &str| {
        config_with(
            &address,
            &[
                ("KAFKA_USERNAME", USER),
                ("KAFKA_PASSWORD", password),
                ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                ("GAMESTREAM_KAFKA__CA_FILE", ca_file),
            ],
        )
    };
    round_trip(&secured(ca, PASSWORD)).await;

    let wrong = refusal(&secured(ca, "not-the-password")).await;
    assert!(
        wrong.to_lowercase().contains("auth") || wrong.contains("SASL"),
        "a wrong password over TLS is an authentication failure: {wrong}"
    );

    // The broker's certificate is signed by the test's own CA, which only `ca_file`
    // makes trusted: without it, the system roots refuse it.
    let untrusted = refusal(&secured("", PASSWORD)).await;
    assert!(
        untrusted.to_lowercase().contains("certificate")
            || untrusted.to_lowercase().contains("tls"),
        "an untrusted certificate is refused as such: {untrusted}"
    );

    // Another CA than the one that signed the broker: refused as well.
    let other = tempfile::tempdir().expect("tempdir");
    let made = std::process::Command::new("bash")
        .arg(crate::common::kafka_sh())
        .args(["tls", "--dir"])
        .arg(other.path())
        .output()
        .expect("kafka.sh tls");
    assert!(made.status.success(), "{made:?}");
    let other_ca = other.path().join("ca.crt");
    let foreign = refusal(&secured(other_ca.to_str().unwrap(), PASSWORD)).await;
    assert!(
        foreign.to_lowercase().contains("certificate") || foreign.to_lowercase().contains("tls"),
        "a certificate of another CA is refused as such: {foreign}"
    );

    // A CA file that is not there: the error names the file.
    let missing = refusal(&secured("/nonexistent/ca.crt", PASSWORD)).await;
    assert!(
        missing.contains("/nonexistent/ca.crt"),
        "a missing CA file is named: {missing}"
    );
}
