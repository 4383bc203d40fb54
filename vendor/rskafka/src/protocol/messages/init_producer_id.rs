//! `InitProducerId` (API key 22): a producer id and epoch for an idempotent (or
//! transactional) producer.
//!
//! gamestream patch (see `GAMESTREAM_PATCH.md`): not part of rskafka 0.6.0.
//!
//! # References
//! - <https://kafka.apache.org/protocol#The_Messages_InitProducerId>
//! - `InitProducerIdRequest.json` and `InitProducerIdResponse.json` in Apache Kafka's
//!   `clients/src/main/resources/common/message/`
//! - KIP-98 (idempotent producer), KIP-360 (epoch bumps: `producer_id` and
//!   `producer_epoch` in the request, version 3)
use std::io::{Read, Write};

use crate::protocol::{
    api_key::ApiKey,
    api_version::{ApiVersion, ApiVersionRange},
    error::Error,
    messages::{
        ReadVersionedError, ReadVersionedType, RequestBody, WriteVersionedError,
        WriteVersionedType,
    },
    primitives::{
        CompactNullableString, CompactNullableStringRef, Int16, Int32, Int64, NullableString,
        TaggedFields,
    },
    traits::{ReadType, WriteType},
};

/// The first version with flexible (compact, tagged) encoding.
const FIRST_FLEXIBLE_VERSION: i16 = 2;

/// The first version carrying the current producer id and epoch (KIP-360).
const FIRST_VERSION_WITH_PRODUCER: i16 = 3;

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct InitProducerIdRequest {
    /// The transactional id, or null for an idempotent producer without transactions.
    pub transactional_id: NullableString,

    /// The time in ms to wait before aborting idle transactions (ignored without a
    /// transactional id).
    pub transaction_timeout_ms: Int32,

    /// The producer id, to bump the epoch of an existing producer; -1 for a new one.
    ///
    /// Added in version 3; `None` (or -1) below it.
    pub producer_id: Option<Int64>,

    /// The producer's current epoch; -1 for a new producer.
    ///
    /// Added in version 3.
    pub producer_epoch: Option<Int16>,

    /// The tagged fields.
    ///
    /// Added in version 2.
    pub tagged_fields: Option<TaggedFields>,
}

impl RequestBody for InitProducerIdRequest {
    type ResponseBody = InitProducerIdResponse;

    const API_KEY: ApiKey = ApiKey::InitProducerId;

    /// Versions 0 to 4 (5 and later only add transaction-version fields).
    const API_VERSION_RANGE: ApiVersionRange =
        ApiVersionRange::new(ApiVersion(Int16(0)), ApiVersion(Int16(4)));

    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion =
        ApiVersion(Int16(FIRST_FLEXIBLE_VERSION));
}

impl<W> WriteVersionedType<W> for InitProducerIdRequest
where
    W: Write,
{
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);
        let flexible = v >= FIRST_FLEXIBLE_VERSION;

        // An epoch bump of an existing producer cannot be expressed before version 3.
        let bumps = self.producer_id.is_some_and(|id| id.0 != -1)
            || self.producer_epoch.is_some_and(|epoch| epoch.0 != -1);
        if bumps && v < FIRST_VERSION_WITH_PRODUCER {
            return Err(WriteVersionedError::FieldNotAvailable {
                version,
                field: "producer_id".to_string(),
            });
        }

        if flexible {
            CompactNullableStringRef(self.transactional_id.0.as_deref()).write(writer)?;
        } else {
            self.transactional_id.write(writer)?;
        }
        self.transaction_timeout_ms.write(writer)?;
        if v >= FIRST_VERSION_WITH_PRODUCER {
            self.producer_id.unwrap_or(Int64(-1)).write(writer)?;
            self.producer_epoch.unwrap_or(Int16(-1)).write(writer)?;
        }
        if flexible {
            match self.tagged_fields.as_ref() {
                Some(tagged_fields) => tagged_fields.write(writer)?,
                None => TaggedFields::default().write(writer)?,
            }
        }
        Ok(())
    }
}

// this is not technically required for production but helpful for testing
impl<R> ReadVersionedType<R> for InitProducerIdRequest
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);
        let flexible = v >= FIRST_FLEXIBLE_VERSION;

        let transactional_id = if flexible {
            NullableString(CompactNullableString::read(reader)?.0)
        } else {
            NullableString::read(reader)?
        };
        let transaction_timeout_ms = Int32::read(reader)?;
        let (producer_id, producer_epoch) = if v >= FIRST_VERSION_WITH_PRODUCER {
            (Some(Int64::read(reader)?), Some(Int16::read(reader)?))
        } else {
            (None, None)
        };
        let tagged_fields = flexible.then(|| TaggedFields::read(reader)).transpose()?;
        Ok(Self {
            transactional_id,
            transaction_timeout_ms,
            producer_id,
            producer_epoch,
            tagged_fields,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct InitProducerIdResponse {
    /// The duration in milliseconds for which the request was throttled due to a quota
    /// violation, or zero if the request did not violate any quota.
    pub throttle_time_ms: Int32,

    /// The error code, or `None` if there was no error.
    #[cfg_attr(test, proptest(strategy = "any::<i16>().prop_map(Error::new)"))]
    pub error: Option<Error>,

    /// The current producer id.
    pub producer_id: Int64,

    /// The current epoch associated with the producer id.
    pub producer_epoch: Int16,

    /// The tagged fields.
    ///
    /// Added in version 2.
    pub tagged_fields: Option<TaggedFields>,
}

impl<R> ReadVersionedType<R> for InitProducerIdResponse
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);

        let throttle_time_ms = Int32::read(reader)?;
        let error = Error::new(Int16::read(reader)?.0);
        let producer_id = Int64::read(reader)?;
        let producer_epoch = Int16::read(reader)?;
        let tagged_fields = (v >= FIRST_FLEXIBLE_VERSION)
            .then(|| TaggedFields::read(reader))
            .transpose()?;
        Ok(Self {
            throttle_time_ms,
            error,
            producer_id,
            producer_epoch,
            tagged_fields,
        })
    }
}

// this is not technically required for production but helpful for testing
impl<W> WriteVersionedType<W> for InitProducerIdResponse
where
    W: Write,
{
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);

        self.throttle_time_ms.write(writer)?;
        Int16::from(self.error).write(writer)?;
        self.producer_id.write(writer)?;
        self.producer_epoch.write(writer)?;
        if v >= FIRST_FLEXIBLE_VERSION {
            match self.tagged_fields.as_ref() {
                Some(tagged_fields) => tagged_fields.write(writer)?,
                None => TaggedFields::default().write(writer)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use crate::protocol::messages::test_utils::test_roundtrip_versioned;

    use super::*;

    test_roundtrip_versioned!(
        InitProducerIdRequest,
        InitProducerIdRequest::API_VERSION_RANGE.min(),
        InitProducerIdRequest::API_VERSION_RANGE.max(),
        test_roundtrip_init_producer_id_request
    );

    test_roundtrip_versioned!(
        InitProducerIdResponse,
        InitProducerIdRequest::API_VERSION_RANGE.min(),
        InitProducerIdRequest::API_VERSION_RANGE.max(),
        test_roundtrip_init_producer_id_response
    );

    fn idempotent(producer: Option<(i64, i16)>) -> InitProducerIdRequest {
        InitProducerIdRequest {
            transactional_id: NullableString(None),
            transaction_timeout_ms: Int32(60_000),
            producer_id: producer.map(|(id, _)| Int64(id)),
            producer_epoch: producer.map(|(_, epoch)| Int16(epoch)),
            tagged_fields: None,
        }
    }

    #[test]
    fn test_encode_request_v0() {
        let mut buf = vec![];
        idempotent(None)
            .write_versioned(&mut buf, ApiVersion(Int16(0)))
            .unwrap();
        #[rustfmt::skip]
        assert_eq!(buf, [
            0xff, 0xff,             // transactional_id: null (int16 length -1)
            0x00, 0x00, 0xea, 0x60, // transaction_timeout_ms: 60000
        ]);
    }

    #[test]
    fn test_encode_request_v4_bump() {
        let mut buf = vec![];
        idempotent(Some((1000, 3)))
            .write_versioned(&mut buf, ApiVersion(Int16(4)))
            .unwrap();
        #[rustfmt::skip]
        assert_eq!(buf, [
            0x00,                   // transactional_id: null (compact length 0)
            0x00, 0x00, 0xea, 0x60, // transaction_timeout_ms: 60000
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xe8, // producer_id: 1000
            0x00, 0x03,             // producer_epoch: 3
            0x00,                   // tagged fields: none
        ]);
    }

    #[test]
    fn test_bump_refused_before_v3() {
        let mut buf = vec![];
        let error = idempotent(Some((1000, 3)))
            .write_versioned(&mut buf, ApiVersion(Int16(2)))
            .unwrap_err();
        assert!(matches!(
            error,
            WriteVersionedError::FieldNotAvailable { .. }
        ));
        // A new producer (-1, -1) is fine at every version.
        idempotent(Some((-1, -1)))
            .write_versioned(&mut vec![], ApiVersion(Int16(2)))
            .unwrap();
    }

    #[test]
    fn test_decode_response_v2() {
        #[rustfmt::skip]
        let bytes = [
            0x00, 0x00, 0x00, 0x00, // throttle_time_ms: 0
            0x00, 0x00,             // error_code: none
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, // producer_id: 7
            0x00, 0x00,             // producer_epoch: 0
            0x00,                   // tagged fields: none
        ];
        let response =
            InitProducerIdResponse::read_versioned(&mut Cursor::new(bytes), ApiVersion(Int16(2)))
                .unwrap();
        assert_eq!(response.error, None);
        assert_eq!(response.producer_id, Int64(7));
        assert_eq!(response.producer_epoch, Int16(0));
    }
}
