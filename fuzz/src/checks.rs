//! The properties the fuzz targets check, shared (by `#[path]`) with
//! `tests/it/fuzz_replay.rs`, which replays the committed corpus through them in the
//! ordinary test suite. Each function must never panic, whatever the input.
//!
//! - `submission`: whatever ingestion accepts becomes a record that the partition
//!   readers accept and read back identically (nothing ingestion lets in is poison).
//! - `record`: a record the reader accepts survives re-encoding unchanged.
//! - `batch`: a batch body is refused whole or item by item, never by a panic, and its
//!   valid items obey `submission`'s property.

use gamestream::event::{self, Event, EventError};

/// The batch limit the `batch` property runs with (the shipped default).
pub const BATCH_LIMIT: usize = 1000;

pub fn submission(input: &[u8]) {
    if let Ok(submission) = event::parse_submission(&mut input.to_vec()) {
        accepted_round_trips(submission.accept(chrono::Utc::now()));
    }
}

pub fn record(input: &[u8]) {
    if let Ok(event) = event::parse_record(&mut input.to_vec()) {
        accepted_round_trips(event);
    }
}

pub fn batch(input: &[u8]) {
    if let Ok(items) = event::parse_batch(&mut input.to_vec(), BATCH_LIMIT) {
        assert!(items.len() <= BATCH_LIMIT);
        for item in items.into_iter().flatten() {
            accepted_round_trips(item.accept(chrono::Utc::now()));
        }
    }
}

fn accepted_round_trips(event: Event) {
    let mut value = event.to_record_value();
    let back: Result<Event, EventError> = event::parse_record(&mut value);
    match back {
        Ok(back) => assert_eq!(back, event, "the record reads back as it was written"),
        Err(e) => panic!("an accepted event became a poison record: {e}: {event:?}"),
    }
}
