//! What types alone cannot check: required values, ranges, and settings that must
//! agree with each other.

#[allow(unused_imports)]
use super::*;

impl Config {
    /// Checks what types alone cannot: required values and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let sasl = matches!(
            self.kafka.effective_protocol(),
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        );
        let required = [
            (
                !self.kafka.bootstrap_servers.is_empty(),
                "`kafka.bootstrap_servers` (KAFKA_BOOTSTRAP_SERVERS) is required: at least one host:port",
            ),
            (
                !sasl || (!self.kafka.username.is_empty() && !self.kafka.password.is_empty()),
                "`kafka.username` and `kafka.password` (KAFKA_USERNAME, KAFKA_PASSWORD) are required with a SASL security protocol",
            ),
            (
                !self.postgres.host.is_empty(),
                "`postgres.host` (DB_HOST) is required",
            ),
            (
                !self.postgres.database.is_empty(),
                "`postgres.database` (DB_NAME) is required",
            ),
            (
                !self.postgres.user.is_empty(),
                "`postgres.user` (DB_USER) is required",
            ),
            (
                !self.redis.host.is_empty(),
                "`redis.host` (REDIS_HOST) is required",
            ),
            (
                self.redis.ca_file.is_empty() || self.redis.tls,
                "`redis.ca_file` (GAMESTREAM_REDIS__CA_FILE) is set but `redis.tls` (GAMESTREAM_REDIS__TLS) is false: set both, or neither",
            ),
            (
                self.redis.username.is_empty() || !self.redis.password.is_empty(),
                "`redis.username` (GAMESTREAM_REDIS__USERNAME) needs `redis.password` (REDIS_PASSWORD)",
            ),
            (
                !self.topics.player_events.is_empty(),
                "`topics.player_events` is required",
            ),
        ];
        problems.extend(
            required
                .iter()
                .filter(|(ok, _)| !ok)
                .map(|(_, msg)| (*msg).to_owned()),
        );
        for server in &self.kafka.bootstrap_servers {
            let ok = server
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                problems.push(format!(
                    "`kafka.bootstrap_servers`: `{server}` is not host:port"
                ));
            }
        }
        for (topic, partitions) in self.topics.all() {
            if partitions < 1 {
                problems.push(format!(
                    "topic `{topic}` needs at least 1 partition, got {partitions}"
                ));
            }
        }
        for (name, retention) in [
            ("topics.retention_raw", self.topics.retention_raw),
            ("topics.retention_other", self.topics.retention_other),
        ] {
            // Kafka's retention.ms is a long of milliseconds; below 1 ms it would be 0.
            let millis = retention.as_millis();
            if millis < 1 || millis > i64::MAX as u128 {
                problems.push(format!(
                    "`{name}` must be between 1ms and {} days",
                    i64::MAX as u128 / 86_400_000
                ));
            }
        }
        let (min_isr, replication) = (
            self.topics.min_insync_replicas,
            self.topics.replication_factor,
        );
        if min_isr < 1 {
            problems.push("`topics.min_insync_replicas` must be at least 1".to_owned());
        } else if replication >= 1 && min_isr > replication {
            problems.push(format!(
                "`topics.min_insync_replicas` ({min_isr}) must not exceed \
                 `topics.replication_factor` ({replication}): no write could be acknowledged"
            ));
        }
        let positive = [
            ("http.batch_limit", self.http.batch_limit),
            (
                "http.rate_limit_max_clients",
                self.http.rate_limit_max_clients,
            ),
            (
                "producer.max_batch_records",
                self.producer.max_batch_records,
            ),
            ("producer.max_batch_bytes", self.producer.max_batch_bytes),
            (
                "producer.max_in_flight_bytes",
                self.producer.max_in_flight_bytes,
            ),
            (
                "producer.max_in_flight_requests",
                self.producer.max_in_flight_requests,
            ),
            (
                "consumer.max_in_flight_records",
                self.consumer.max_in_flight_records,
            ),
            (
                "consumer.in_flight_budget_records",
                self.consumer.in_flight_budget_records,
            ),
            ("logger.batch_size", self.logger.batch_size),
            ("logger.writers", self.logger.writers),
            ("stats.buffer_size", self.stats.buffer_size),
            ("stats.writers", self.stats.writers),
            ("leaderboard.writers", self.leaderboard.writers),
            ("leaderboard.batch_size", self.leaderboard.batch_size),
            ("leaderboard.top_n", self.leaderboard.top_n as usize),
            (
                "leaderboard.query_default_limit",
                self.leaderboard.query_default_limit,
            ),
            ("redis.rebuild_batch_size", self.redis.rebuild_batch_size),
            ("dlq.max_message_bytes", self.dlq.max_message_bytes),
        ];
        for (name, value) in positive {
            if value == 0 {
                problems.push(format!("`{name}` must be at least 1"));
            }
        }
        if self.leaderboard.query_default_limit > self.leaderboard.query_max_limit {
            problems.push(
                "`leaderboard.query_default_limit` must not exceed `leaderboard.query_max_limit`"
                    .to_owned(),
            );
        }
        if self.leaderboard.refresh_interval.is_zero() {
            problems.push("`leaderboard.refresh_interval` must be longer than 0".to_owned());
        }
        if self.lease.renew_interval.is_zero() || self.lease.renew_interval >= self.lease.ttl {
            problems.push(
                "`lease.renew_interval` must be longer than 0 and shorter than `lease.ttl`"
                    .to_owned(),
            );
        }
        if self.producer.idempotence && self.producer.max_in_flight_requests > 5 {
            // The broker remembers a producer's last five batches per partition: a copy
            // of an older one could not be recognised.
            problems.push(
                "`producer.max_in_flight_requests` must be at most 5 with `producer.idempotence`"
                    .to_owned(),
            );
        }
        if self.producer.request_timeout.is_zero()
            || self.producer.request_timeout > self.producer.publish_timeout
        {
            problems.push(
                "`producer.request_timeout` must be longer than 0 and at most `producer.publish_timeout`"
                    .to_owned(),
            );
        }
        if self.dedupe.enabled && (self.dedupe.max_records == 0 || self.dedupe.window.is_zero()) {
            problems.push(
                "`dedupe.max_records` and `dedupe.window` must be above 0 with `dedupe.enabled` (set `dedupe.enabled = false` to turn deduplication off)"
                    .to_owned(),
            );
        }
        if self.group_offsets.interval < std::time::Duration::from_secs(1) {
            problems.push("`group_offsets.interval` must be at least 1s".to_owned());
        }
        self.validate_shadow(&mut problems);
        self.validate_http(&mut problems);
        if self.consumer.fetch_max_bytes < 1024 {
            problems.push("`consumer.fetch_max_bytes` must be at least 1024".to_owned());
        }
        if self.consumer.fetch_budget_bytes < i64::from(self.consumer.fetch_max_bytes.max(1024)) {
            problems.push(
                "`consumer.fetch_budget_bytes` must be at least `consumer.fetch_max_bytes` (one partition's fetch)"
                    .to_owned(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// Shortest API key accepted, in characters.
pub const MIN_API_KEY_CHARS: usize = 16;

impl Config {
    /// Shadow mode must not touch what the live old pipeline owns.
    fn validate_shadow(&self, problems: &mut Vec<String>) {
        if !self.shadow.enabled {
            return;
        }
        if self.mode != Mode::Consume {
            problems.push(
                "`shadow.enabled` needs `mode = \"consume\"` (GAMESTREAM_MODE=consume): the old ingestion service keeps taking the events".to_owned(),
            );
        }
        if self.redis.key_prefix.is_empty() {
            problems.push(
                "`shadow.enabled` needs a `redis.key_prefix` (e.g. \"shadow:\") so that the shadow's keys stay apart from the old pipeline's".to_owned(),
            );
        }
        if self.group_offsets.mirror {
            problems.push(
                "`shadow.enabled` needs `group_offsets.mirror = false`: the old consumer groups belong to the live consumers".to_owned(),
            );
        }
    }

    fn validate_http(&self, problems: &mut Vec<String>) {
        let http = &self.http;
        for (index, key) in http.api_keys.iter().enumerate() {
            let chars = key.expose().chars().count();
            if chars == 0 {
                problems.push(format!(
                    "`http.api_keys` (GAMESTREAM_HTTP__API_KEYS) has a blank key (entry {}): \
                     list keys separated by commas, or leave the setting unset for an open server",
                    index + 1
                ));
            } else if chars < MIN_API_KEY_CHARS {
                problems.push(format!(
                    "`http.api_keys` (GAMESTREAM_HTTP__API_KEYS): key {} has {chars} characters; \
                     keys must have at least {MIN_API_KEY_CHARS}",
                    index + 1
                ));
            }
        }
        for (name, value) in [
            ("http.max_connections", http.max_connections as u64),
            ("http.body_limit_bytes", http.body_limit_bytes),
        ] {
            if value == 0 {
                problems.push(format!("`{name}` must be at least 1"));
            }
        }
        for (name, value) in [
            ("http.header_read_timeout", http.header_read_timeout),
            ("http.idle_timeout", http.idle_timeout),
            ("http.body_read_timeout", http.body_read_timeout),
            ("http.request_timeout", http.request_timeout),
        ] {
            if value.is_zero() {
                problems.push(format!("`{name}` must be longer than 0"));
            }
        }
        if http.body_budget_bytes < http.body_limit_bytes {
            problems.push(format!(
                "`http.body_budget_bytes` ({}) must be at least `http.body_limit_bytes` ({}): \
                 a body of the largest size could never be accepted",
                http.body_budget_bytes, http.body_limit_bytes
            ));
        }
        if http.max_header_bytes < 8192 {
            problems.push(format!(
                "`http.max_header_bytes` must be at least 8192, got {}",
                http.max_header_bytes
            ));
        }
        for proxy in &http.trusted_proxies {
            if let Err(e) = IpBlock::parse(proxy) {
                problems.push(format!("`http.trusted_proxies`: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::load_with;

    #[test]
    fn shadow_mode_names_what_it_needs() {
        let err = load_with(None, &[], &[("shadow.enabled", "true")]).expect_err("invalid");
        let text = err.to_string();
        for setting in [
            "mode = \"consume\"",
            "redis.key_prefix",
            "group_offsets.mirror = false",
        ] {
            assert!(text.contains(setting), "names {setting}: {text}");
        }
        let config = load_with(
            None,
            &[],
            &[
                ("shadow.enabled", "true"),
                ("mode", "\"consume\""),
                ("redis.key_prefix", "\"shadow:\""),
                ("group_offsets.mirror", "false"),
            ],
        )
        .expect("a complete shadow configuration is valid");
        assert!(config.shadow.enabled);
    }

    #[test]
    fn missing_required_values_are_named() {
        let err = load_with(
            None,
            &[("KAFKA_BOOTSTRAP_SERVERS", ""), ("DB_HOST", "")],
            &[],
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("KAFKA_BOOTSTRAP_SERVERS"), "{text}");
        assert!(text.contains("DB_HOST"), "{text}");

        let err =
            load_with(None, &[("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")], &[]).expect_err("invalid");
        assert!(err.to_string().contains("KAFKA_USERNAME"), "{err}");
    }

    #[test]
    fn topic_configs_default_to_the_contract_and_are_checked() {
        let config = load_with(None, &[], &[]).expect("defaults are valid");
        let retention: Vec<_> = config
            .topics
            .specs()
            .iter()
            .map(|spec| (spec.name, spec.retention.as_secs() / 86_400))
            .collect();
        assert_eq!(
            retention,
            [
                ("player.events.raw", 7),
                ("player.events.processed", 7),
                ("player.statistics", 30),
                ("game.leaderboards", 30),
                ("system.dlq", 30),
            ]
        );
        assert_eq!(config.topics.min_insync_replicas, 1);

        let err = load_with(
            None,
            &[],
            &[
                ("topics.min_insync_replicas", "2"),
                ("topics.retention_raw", "\"0s\""),
            ],
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("`topics.min_insync_replicas` (2)"), "{text}");
        assert!(text.contains("`topics.retention_raw`"), "{text}");
        load_with(
            None,
            &[],
            &[
                ("topics.min_insync_replicas", "2"),
                ("topics.replication_factor", "3"),
            ],
        )
        .expect("production's replication 3 and min ISR 2 are valid");
    }

    #[test]
    fn redis_tls_and_auth_settings_must_agree() {
        let err = load_with(None, &[("GAMESTREAM_REDIS__CA_FILE", "/ca.pem")], &[])
            .expect_err("a CA file without TLS");
        assert!(err.to_string().contains("GAMESTREAM_REDIS__TLS"), "{err}");
        let err = load_with(None, &[("GAMESTREAM_REDIS__USERNAME", "app")], &[])
            .expect_err("a user without a password");
        assert!(err.to_string().contains("REDIS_PASSWORD"), "{err}");
        let config = load_with(
            None,
            &[
                ("GAMESTREAM_REDIS__TLS", "true"),
                ("GAMESTREAM_REDIS__CA_FILE", "/ca.pem"),
                ("GAMESTREAM_REDIS__USERNAME", "app"),
                ("REDIS_PASSWORD", "from-contract"),
            ],
            &[],
        )
        .expect("valid");
        assert!(config.redis.tls);
        assert_eq!(config.redis.ca_file, "/ca.pem");
        assert_eq!(config.redis.password.expose(), "from-contract");
        // The GAMESTREAM_ name wins over the contract's, as for every setting.
        let config = load_with(
            None,
            &[
                ("REDIS_PASSWORD", "from-contract"),
                ("GAMESTREAM_REDIS__PASSWORD", "from-prefix"),
            ],
            &[],
        )
        .expect("valid");
        assert_eq!(config.redis.password.expose(), "from-prefix");
    }

    #[test]
    fn idempotent_producing_bounds_requests_in_flight_and_attempt_time() {
        let config = load_with(None, &[], &[]).expect("defaults are valid");
        assert!(config.producer.idempotence, "on by default");
        let err = load_with(
            None,
            &[],
            &[
                ("producer.max_in_flight_requests", "6"),
                ("producer.request_timeout", "\"10s\""),
            ],
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("`producer.max_in_flight_requests`"), "{text}");
        assert!(text.contains("`producer.request_timeout`"), "{text}");
        load_with(
            None,
            &[],
            &[
                ("producer.max_in_flight_requests", "6"),
                ("producer.idempotence", "false"),
            ],
        )
        .expect("without idempotence the broker's five-batch memory does not bound it");
    }
}

#[cfg(test)]
mod http_tests {
    use crate::config::test_support::load_with;

    #[test]
    fn api_keys_must_be_present_and_long_enough() {
        for blank in [" , ", "", ",", "0123456789abcdef, "] {
            let err = load_with(None, &[("GAMESTREAM_HTTP__API_KEYS", blank)], &[])
                .expect_err("a blank key");
            assert!(err.to_string().contains("blank key"), "{blank:?}: {err}");
        }
        let err =
            load_with(None, &[("GAMESTREAM_HTTP__API_KEYS", "x")], &[]).expect_err("a short key");
        assert!(err.to_string().contains("at least 16"), "{err}");
        let config = load_with(
            None,
            &[(
                "GAMESTREAM_HTTP__API_KEYS",
                " 0123456789abcdef , fedcba9876543210",
            )],
            &[],
        )
        .expect("two long keys");
        assert_eq!(config.http.api_keys.len(), 2);
        assert_eq!(config.http.api_keys[0].expose(), "0123456789abcdef");
        assert!(
            load_with(None, &[], &[])
                .expect("defaults")
                .http
                .api_keys
                .is_empty(),
            "the default stays open"
        );
    }

    #[test]
    fn http_edge_settings_are_checked() {
        let err = load_with(
            None,
            &[],
            &[
                ("http.body_budget_bytes", "10"),
                ("http.max_header_bytes", "100"),
                ("http.trusted_proxies", "[\"10.0.0.0/33\", \"nope\"]"),
                ("http.max_connections", "0"),
            ],
        )
        .expect_err("invalid");
        let text = err.to_string();
        for name in [
            "`http.body_budget_bytes`",
            "`http.max_header_bytes`",
            "10.0.0.0/33",
            "\"nope\"",
            "`http.max_connections`",
        ] {
            assert!(text.contains(name), "{name}: {text}");
        }
        let config = load_with(
            None,
            &[(
                "GAMESTREAM_HTTP__TRUSTED_PROXIES",
                "10.0.0.0/8, 192.168.1.7,::1",
            )],
            &[],
        )
        .expect("valid proxies");
        assert_eq!(config.http.trusted_proxies.len(), 3);
    }
}
