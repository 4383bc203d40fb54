//! What flows from partition readers to sinks.
//!
//! A reader parses each fetched record once into a [`ParsedBatch`] and sends the same
//! `Arc` to every sink, so three sinks cost one parse and no copies.
//!
//! A record that arrived with a W3C `traceparent` (and traces are exported) keeps the
//! context of its `kafka.consume` span, so each sink's batch-write span can link to it.

use std::sync::Arc;

use opentelemetry::trace::SpanContext;

use crate::event::{Event, EventError};

/// A contiguous run of one partition's records, in offset order.
#[derive(Debug)]
pub struct ParsedBatch {
    pub topic: Arc<str>,
    pub partition: i32,
    pub records: Vec<ParsedRecord>,
    /// The offset after the last record of this batch (what a sink commits once it has
    /// applied the whole batch).
    pub next_offset: i64,
}

/// One record: its offset and either the event or why it could not be one.
#[derive(Debug)]
pub struct ParsedRecord {
    pub offset: i64,
    pub parsed: Result<Event, Poison>,
    /// The record's trace context; `None` (one word, no allocation) unless traces are
    /// exported and the record carried one.
    pub trace: Option<Box<SpanContext>>,
    /// For a record `gamestream dlq replay` published: the consumers whose dead letters
    /// it replays (header `dlq_replay_for`, comma separated). Only their sinks apply it;
    /// the others had applied the original. `None`: every sink.
    pub replay_for: Option<Box<str>>,
}

impl ParsedRecord {
    /// Whether the sinks of `consumer_service` apply this record.
    pub fn is_for(&self, consumer_service: &str) -> bool {
        self.replay_for
            .as_deref()
            .is_none_or(|targets| targets.split(',').any(|t| t == consumer_service))
    }
}

/// A record that cannot become an event. It is dead-lettered with its bytes.
#[derive(Debug, Clone)]
pub struct Poison {
    pub error: EventError,
    /// The record value exactly as read (empty for a record without a value).
    pub payload: Vec<u8>,
    /// The record key, if any (the player id, for records from our producer).
    pub key: Option<Vec<u8>>,
}

impl ParsedBatch {
    /// The offset of the first record (or `next_offset` for an empty batch).
    pub fn first_offset(&self) -> i64 {
        self.records.first().map_or(self.next_offset, |r| r.offset)
    }
}
