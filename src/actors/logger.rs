//! The raw event logger: every valid event into Postgres `events`, exactly once.
//!
//! A [`SinkWriter`] run by the generic [`SinkActor`](super::sink::SinkActor): each
//! write is one transaction of a COPY and the offset commit (see
//! [`crate::sinks::postgres::events`]). It is also the consumer that dead-letters
//! records that are not valid events (`consumer_service = event-logger`).

use std::collections::BTreeMap;

use super::sink::{SinkWriter, WriteBatch};
use crate::catalogue::{LOGGER, SinkSpec};
use crate::sinks::SinkError;
use crate::sinks::postgres::{events, offsets};

pub struct LoggerWriter {
    pub pg: sqlx::PgPool,
}

impl SinkWriter for LoggerWriter {
    fn spec(&self) -> &'static SinkSpec {
        &LOGGER
    }

    async fn committed(&self, topic: &str) -> Result<BTreeMap<i32, i64>, SinkError> {
        Ok(offsets::load(&self.pg, LOGGER.name, topic).await?)
    }

    async fn write(&mut self, batch: &WriteBatch<'_>) -> Result<(), SinkError> {
        events::write(
            &self.pg,
            LOGGER.name,
            batch.topic,
            &batch.events(),
            &batch.commits,
        )
        .await
    }
}
