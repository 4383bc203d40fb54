//! `FindCoordinator` (API key 10): the broker that coordinates a consumer group (or a
//! transactional id).
//!
//! gamestream patch (see `GAMESTREAM_PATCH.md`): not part of rskafka 0.6.0.
//!
//! Versions 0 to 3 (flexible from 3): one key per request. Version 4 (KIP-699) batches
//! keys and answers with a list of coordinators; it is not needed to look up one group.
//!
//! # References
//! - <https://kafka.apache.org/protocol#The_Messages_FindCoordinator>
//! - `FindCoordinatorRequest.json` and `FindCoordinatorResponse.json` in Apache Kafka's
//!   `clients/src/main/resources/common/message/`
use std::io::{Read, Write};

use crate::protocol::{
    api_key::ApiKey,
    api_version::{ApiVersion, ApiVersionRange},
    error::Error,
    messages::{
        ReadVersionedError, ReadVersionedType, RequestBody, WriteVersionedError,
        WriteVersionedType,
        flexible::{
            read_nullable_string, read_string, read_tagged_fields, write_nullable_string,
            write_string, write_tagged_fields,
        },
    },
    primitives::{Int8, Int16, Int32, NullableString, String_, TaggedFields},
    traits::{ReadType, WriteType},
};

#[cfg(test)]
use proptest::prelude::*;

/// Key type of a consumer group.
pub const COORDINATOR_KEY_TYPE_GROUP: i8 = 0;

/// Key type of a transactional id.
pub const COORDINATOR_KEY_TYPE_TRANSACTION: i8 = 1;

const FIRST_FLEXIBLE_VERSION: i16 = 3;
const MAX_VERSION: i16 = 3;

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct FindCoordinatorRequest {
    /// The coordinator key (the group id).
    pub key: String_,

    /// The coordinator key type ([`COORDINATOR_KEY_TYPE_GROUP`], ...).
    ///
    /// Added in version 1; version 0 only looks up groups.
    pub key_type: Option<Int8>,

    /// The tagged fields.
    ///
    /// Added in version 3.
    pub tagged_fields: Option<TaggedFields>,
}

impl RequestBody for FindCoordinatorRequest {
    type ResponseBody = FindCoordinatorResponse;

    const API_KEY: ApiKey = ApiKey::FindCoordinator;

    /// The single-key versions. Apache Kafka 4.1 accepts 0 to 6 (0 is deprecated).
    const API_VERSION_RANGE: ApiVersionRange =
        ApiVersionRange::new(ApiVersion(Int16(0)), ApiVersion(Int16(MAX_VERSION)));

    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion =
        ApiVersion(Int16(FIRST_FLEXIBLE_VERSION));
}

impl<W> WriteVersionedType<W> for FindCoordinatorRequest
where
    W: Write,
{
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let v = version.0.0;
        assert!(v <= MAX_VERSION);
        let flexible = v >= FIRST_FLEXIBLE_VERSION;

        let key_type = self.key_type.unwrap_or(Int8(COORDINATOR_KEY_TYPE_GROUP));
        if v < 1 && key_type.0 != COORDINATOR_KEY_TYPE_GROUP {
            return Err(WriteVersionedError::FieldNotAvailable {
                version,
                field: "key_type".to_string(),
            });
        }

        write_string(writer, &self.key, flexible)?;
        if v >= 1 {
            key_type.write(writer)?;
        }
        write_tagged_fields(writer, self.tagged_fields.as_ref(), flexible)?;
        Ok(())
    }
}

// this is not technically required for production but helpful for testing
impl<R> ReadVersionedType<R> for FindCoordinatorRequest
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!(v <= MAX_VERSION);
        let flexible = v >= FIRST_FLEXIBLE_VERSION;

        Ok(Self {
            key: read_string(reader, flexible)?,
            key_type: (v >= 1).then(|| Int8::read(reader)).transpose()?,
            tagged_fields: read_tagged_fields(reader, flexible)?,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct FindCoordinatorResponse {
    /// The duration in milliseconds for which the request was throttled due to a quota
    /// violation, or zero if the request did not violate any quota.
    ///
    /// Added in version 1.
    pub throttle_time_ms: Option<Int32>,

    /// The error code, or 0 if there was no error.
    #[cfg_attr(test, proptest(strategy = "any::<i16>().prop_map(Error::new)"))]
    pub error: Option<Error>,

    /// The error message, or null if there was no error.
    ///
    /// Added in version 1.
    pub error_message: Option<NullableString>,

    /// The node id of the coordinator.
    pub node_id: Int32,

    /// The host name.
    pub host: String_,

    /// The port.
    pub port: Int32,

    /// The tagged fields.
    ///
    /// Added in version 3.
    pub tagged_fields: Option<TaggedFields>,
}

impl<R> ReadVersionedType<R> for FindCoordinatorResponse
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!(v <= MAX_VERSION);
        let flexible = v >= FIRST_FLEXIBLE_VERSION;

        Ok(Self {
            throttle_time_ms: (v >= 1).then(|| Int32::read(reader)).transpose()?,
            error: Error::new(Int16::read(reader)?.0),
            error_message: (v >= 1)
                .then(|| read_nullable_string(reader, flexible))
                .transpose()?,
            node_id: Int32::read(reader)?,
            host: read_string(reader, flexible)?,
            port: Int32::read(reader)?,
            tagged_fields: read_tagged_fields(reader, flexible)?,
        })
    }
}

// this is not technically required for production but helpful for testing
impl<W> WriteVersionedType<W> for FindCoordinatorResponse
where
    W: Write,
{
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let v = version.0.0;
        assert!(v <= MAX_VERSION);
        let flexible = v >= FIRST_FLEXIBLE_VERSION;

        if v >= 1 {
            self.throttle_time_ms.unwrap_or(Int32(0)).write(writer)?;
        }
        Int16::from(self.error).write(writer)?;
        if v >= 1 {
            let none = NullableString(None);
            write_nullable_string(
                writer,
                self.error_message.as_ref().unwrap_or(&none),
                flexible,
            )?;
        }
        self.node_id.write(writer)?;
        write_string(writer, &self.host, flexible)?;
        self.port.write(writer)?;
        write_tagged_fields(writer, self.tagged_fields.as_ref(), flexible)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use crate::protocol::messages::test_utils::test_roundtrip_versioned;

    use super::*;

    test_roundtrip_versioned!(
        FindCoordinatorRequest,
        FindCoordinatorRequest::API_VERSION_RANGE.min(),
        FindCoordinatorRequest::API_VERSION_RANGE.max(),
        test_roundtrip_find_coordinator_request
    );

    test_roundtrip_versioned!(
        FindCoordinatorResponse,
        FindCoordinatorRequest::API_VERSION_RANGE.min(),
        FindCoordinatorRequest::API_VERSION_RANGE.max(),
        test_roundtrip_find_coordinator_response
    );

    fn request() -> FindCoordinatorRequest {
        FindCoordinatorRequest {
            key: String_("g".to_owned()),
            key_type: Some(Int8(COORDINATOR_KEY_TYPE_GROUP)),
            tagged_fields: None,
        }
    }

    #[test]
    fn test_encode_request_v0_v2_v3() {
        let mut buf = vec![];
        request()
            .write_versioned(&mut buf, ApiVersion(Int16(0)))
            .unwrap();
        assert_eq!(buf, [0, 1, b'g']);

        let mut buf = vec![];
        request()
            .write_versioned(&mut buf, ApiVersion(Int16(2)))
            .unwrap();
        assert_eq!(buf, [0, 1, b'g', 0]);

        let mut buf = vec![];
        request()
            .write_versioned(&mut buf, ApiVersion(Int16(3)))
            .unwrap();
        #[rustfmt::skip]
        let expected = [
            2, b'g', // compact key
            0, // key type: group
            0, // tagged fields
        ];
        assert_eq!(buf, expected);
    }

    #[test]
    fn test_encode_request_v0_transaction_not_available() {
        let mut buf = vec![];
        let err = FindCoordinatorRequest {
            key_type: Some(Int8(COORDINATOR_KEY_TYPE_TRANSACTION)),
            ..request()
        }
        .write_versioned(&mut buf, ApiVersion(Int16(0)))
        .unwrap_err();
        assert!(matches!(
            err,
            WriteVersionedError::FieldNotAvailable { field, .. } if field == "key_type"
        ));
    }

    /// As Apache Kafka 4.1 answers version 3.
    #[test]
    fn test_decode_response_v3() {
        #[rustfmt::skip]
        let data = [
            0, 0, 0, 0, // throttle time
            0, 0, // no error
            5, b'N', b'O', b'N', b'E', // error message "NONE"
            0, 0, 0, 1, // node id
            10, b'1', b'2', b'7', b'.', b'0', b'.', b'0', b'.', b'1', // host
            0, 0, 0x23, 0x84, // port 9092
            0, // tagged fields
        ];
        let response =
            FindCoordinatorResponse::read_versioned(&mut Cursor::new(data), ApiVersion(Int16(3)))
                .unwrap();
        assert_eq!(response.error, None);
        assert_eq!(response.node_id, Int32(1));
        assert_eq!(response.host.0, "127.0.0.1");
        assert_eq!(response.port, Int32(9092));
        assert_eq!(
            response.error_message,
            Some(NullableString(Some("NONE".to_owned())))
        );
    }

    #[test]
    fn test_decode_response_v1_coordinator_not_available() {
        #[rustfmt::skip]
        let data = [
            0, 0, 0, 0, // throttle time
            0, 15, // COORDINATOR_NOT_AVAILABLE
            0xff, 0xff, // error message: null
            0xff, 0xff, 0xff, 0xff, // node id -1
            0, 0, // host ""
            0xff, 0xff, 0xff, 0xff, // port -1
        ];
        let response =
            FindCoordinatorResponse::read_versioned(&mut Cursor::new(data), ApiVersion(Int16(1)))
                .unwrap();
        assert_eq!(response.error, Some(Error::CoordinatorNotAvailable));
        assert_eq!(response.node_id, Int32(-1));
    }
}
