//! A dead letter: a record that a consumer could not apply, with why and where from.
//!
//! The same letter is written to Postgres `dlq_events` (unique per consumer and source
//! record, so it is written once however often it is retried) and published to
//! `system.dlq` as JSON with the CONTRACT fields plus provenance.

use chrono::{DateTime, Utc};
use serde_json::json;

/// One dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// `consumer_service` of the CONTRACT: `event-logger`, `stats-aggregator` or `leaderboard-manager`.
    pub consumer: &'static str,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record key as received.
    pub key: Option<Vec<u8>>,
    /// The record value as received.
    pub payload: Vec<u8>,
    /// What is wrong, in words.
    pub error: String,
    /// A short stable reason code (`malformed_json`, `missing_field`, `missing_score`, ...).
    pub kind: String,
    pub at: DateTime<Utc>,
}

impl DeadLetter {
    /// `original_event` as JSON: the record itself where it is JSON that PostgreSQL's
    /// JSONB accepts, else the record as a (lossy UTF-8) JSON string.
    pub fn original_event(&self) -> serde_json::Value {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&self.payload)
            && !contains_nul(&value)
        {
            return value;
        }
        let text = String::from_utf8_lossy(&self.payload).replace('\0', "\u{FFFD}");
        serde_json::Value::String(text)
    }

    /// The value published to `system.dlq`. A record too large for one message
    /// (over `max_bytes`) is cut to its first bytes, marked `original_event_truncated`.
    pub fn to_message(&self, max_bytes: usize) -> Vec<u8> {
        let oversized = self.payload.len() > max_bytes / 2;
        let original = if oversized {
            let cut = &self.payload[..max_bytes / 4];
            serde_json::Value::String(String::from_utf8_lossy(cut).replace('\0', "\u{FFFD}"))
        } else {
            self.original_event()
        };
        let message = json!({
            "original_event": original,
            "original_event_truncated": oversized,
            "error": self.error,
            "error_kind": self.kind,
            "timestamp": crate::event::rfc3339(self.at),
            "consumer_service": self.consumer,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
        });
        // Serializing a serde_json::Value into a Vec cannot fail.
        serde_json::to_vec(&message).unwrap_or_default()
    }
}

fn contains_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(contains_nul),
        serde_json::Value::Object(map) => {
            map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(payload: &[u8]) -> DeadLetter {
        DeadLetter {
            consumer: "event-logger",
            topic: "t".into(),
            partition: 2,
            offset: 7,
            key: None,
            payload: payload.to_vec(),
            error: "`player_id` is required".into(),
            kind: "missing_field".into(),
            at: Utc::now(),
        }
    }

    #[test]
    fn original_event_is_json_where_it_can_be() {
        assert_eq!(letter(br#"{"a":1}"#).original_event(), json!({"a": 1}));
        assert_eq!(letter(b"not json").original_event(), json!("not json"));
        assert_eq!(letter(&[b'x', 0xff]).original_event(), json!("x\u{FFFD}"));
        assert_eq!(
            letter(br#"{"a":"\u0000"}"#).original_event(),
            json!("{\"a\":\"\\u0000\"}")
        );
    }

    #[test]
    fn message_has_contract_fields_and_provenance() {
        let m: serde_json::Value =
            serde_json::from_slice(&letter(b"{}").to_message(1 << 20)).expect("json");
        for field in [
            "original_event",
            "error",
            "timestamp",
            "consumer_service",
            "topic",
            "partition",
            "offset",
        ] {
            assert!(m.get(field).is_some(), "{field} missing from {m}");
        }
        assert_eq!(m["partition"], 2);
        assert_eq!(m["offset"], 7);
        assert_eq!(m["original_event_truncated"], false);
    }

    #[test]
    fn oversized_records_are_cut_in_the_message() {
        let big = letter(&vec![b'a'; 10_000]).to_message(4_000);
        assert!(big.len() < 4_000, "{}", big.len());
        let m: serde_json::Value = serde_json::from_slice(&big).expect("json");
        assert_eq!(m["original_event_truncated"], true);
    }
}
