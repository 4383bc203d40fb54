//! The administrative subcommands: `migrate`, `topics`, `check`.

use std::time::Duration;

use crate::config::Config;
use crate::exit::Exit;
use crate::kafka;
use crate::sinks::StoreError;
use crate::sinks::{postgres, redis};

/// `gamestream migrate`.
pub async fn migrate(config: &Config) -> Result<Exit, StoreError> {
    let pool = postgres::connect(&config.postgres).await?;
    if config.shadow.enabled {
        postgres::refuse_legacy(&pool, &config.postgres.database).await?;
    }
    let before = postgres::schema_status(&pool).await?;
    let adopted = postgres::migrate(&pool).await?;
    if let Some(adopted) = &adopted {
        let per_million = if adopted.events > 0 {
            format!(
                ", {:.1} s per million events rows",
                adopted.elapsed.as_secs_f64() * 1e6 / adopted.events as f64
            )
        } else {
            String::new()
        };
        println!(
            "database `{}`: adopted the old pipeline's tables ({} events rows, {} other rows) in {:.1} s{per_million}; \
             next: `gamestream cutover plan`",
            config.postgres.database,
            adopted.events,
            adopted.other_rows,
            adopted.elapsed.as_secs_f64()
        );
    }
    match before {
        postgres::SchemaStatus::UpToDate => {
            println!("database `{}` is up to date", config.postgres.database)
        }
        postgres::SchemaStatus::Pending(versions) => {
            // An adoption stands in for the first migration.
            println!(
                "database `{}`: applied {} migration(s)",
                config.postgres.database,
                versions.len() - usize::from(adopted.is_some())
            )
        }
    }
    Ok(Exit::Success)
}

/// `gamestream topics create`.
pub async fn topics_create(config: &Config) -> Result<Exit, StoreError> {
    let client = kafka::connect(&config.kafka).await?;
    for report in kafka::create_topics(&client, &config.topics).await? {
        println!("{report}");
    }
    Ok(Exit::Success)
}

/// `gamestream topics list`.
pub async fn topics_list(config: &Config) -> Result<Exit, StoreError> {
    let client = kafka::connect(&config.kafka).await?;
    for (name, partitions) in kafka::list_topics(&client).await? {
        println!("{name}\t{partitions}");
    }
    Ok(Exit::Success)
}

/// One service's answer to `check`.
#[derive(Debug)]
pub struct CheckLine {
    pub service: &'static str,
    pub address: String,
    pub result: Result<String, String>,
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.result {
            Ok(detail) => write!(f, "{:<9} ok      {}  {detail}", self.service, self.address),
            Err(error) => write!(f, "{:<9} FAILED  {}  {error}", self.service, self.address),
        }
    }
}

/// Tries each service once (concurrently, each bounded in time).
pub async fn check_services(config: &Config) -> Vec<CheckLine> {
    let limit = Duration::from_secs(10);
    let kafka_check = async {
        let client = kafka::connect(&config.kafka)
            .await
            .map_err(|e| e.to_string())?;
        let topics = kafka::list_topics(&client)
            .await
            .map_err(|e| e.to_string())?;
        let raw = &config.topics.player_events;
        Ok(match topics.iter().find(|(name, _)| name == raw) {
            Some((_, partitions)) => {
                format!("{} topics; {raw} has {partitions} partitions", topics.len())
            }
            None => format!(
                "{} topics; {raw} missing (run `gamestream topics create`)",
                topics.len()
            ),
        })
    };
    let pg_check = async {
        let pool = postgres::connect(&config.postgres)
            .await
            .map_err(|e| e.to_string())?;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&pool)
            .await
            .map_err(|e| e.to_string())?;
        let schema = match postgres::schema_status(&pool)
            .await
            .map_err(|e| e.to_string())?
        {
            postgres::SchemaStatus::UpToDate => "schema up to date".to_owned(),
            postgres::SchemaStatus::Pending(v) => format!(
                "{} migration(s) pending (run `gamestream migrate`)",
                v.len()
            ),
        };
        Ok(format!("PostgreSQL {version}; {schema}"))
    };
    let redis_check = async {
        let pool = redis::connect(&config.redis)
            .await
            .map_err(|e| e.to_string())?;
        let mut conn = pool
            .get()
            .await
            .map_err(|e| redis::RedisError::from(e).to_string())?;
        let info: String = ::redis::cmd("INFO")
            .arg("server")
            .query_async(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        Ok(format!("Redis {version}"))
    };
    let bounded = |service: &'static str| {
        move |r: Result<Result<String, String>, _>| {
            r.unwrap_or_else(|_| Err(format!("{service}: no answer within {limit:?}")))
        }
    };
    let (k, p, r) = tokio::join!(
        tokio::time::timeout(limit, kafka_check),
        tokio::time::timeout(limit, pg_check),
        tokio::time::timeout(limit, redis_check),
    );
    vec![
        CheckLine {
            service: "kafka",
            address: config.kafka.bootstrap_servers.join(","),
            result: bounded("kafka")(k),
        },
        CheckLine {
            service: "postgres",
            address: format!(
                "{}:{}/{}",
                config.postgres.host, config.postgres.port, config.postgres.database
            ),
            result: bounded("postgres")(p),
        },
        CheckLine {
            service: "redis",
            address: format!("{}:{}", config.redis.host, config.redis.port),
            result: bounded("redis")(r),
        },
    ]
}

/// `gamestream check`: one line per service; exit 1 if any failed.
pub async fn check(config: &Config) -> Result<Exit, StoreError> {
    let lines = check_services(config).await;
    for line in &lines {
        println!("{line}");
    }
    Ok(if lines.iter().all(|l| l.result.is_ok()) {
        Exit::Success
    } else {
        Exit::Failure
    })
}
