//! `OffsetFetch` (API key 9): a consumer group's committed offsets.
//!
//! gamestream patch (see `GAMESTREAM_PATCH.md`): not part of rskafka 0.6.0.
//!
//! Versions 1 to 7 (flexible from 6): one group per request. Version 0 read offsets from
//! ZooKeeper (Apache Kafka 4.0 removed it); version 8 batches groups and version 9 names
//! topics by id (KIP-848), neither needed to read one group.
//!
//! # References
//! - <https://kafka.apache.org/protocol#The_Messages_OffsetFetch>
//! - `OffsetFetchRequest.json` and `OffsetFetchResponse.json` in Apache Kafka's
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
            read_array, read_int32_array, read_nullable_string, read_string, read_tagged_fields,
            write_array, write_int32_array, write_nullable_string, write_string,
            write_tagged_fields,
        },
    },
    primitives::{Boolean, Int16, Int32, Int64, NullableString, String_, TaggedFields},
    traits::{ReadType, WriteType},
};

#[cfg(test)]
use proptest::prelude::*;

const FIRST_FLEXIBLE_VERSION: i16 = 6;
const MIN_VERSION: i16 = 1;
const MAX_VERSION: i16 = 7;

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OffsetFetchRequest {
    /// The group to fetch offsets for.
    pub group_id: String_,

    /// Each topic we would like to fetch offsets for, or `None` for every topic the group
    /// has offsets for.
    ///
    /// Null is allowed from version 2.
    #[cfg_attr(
        test,
        proptest(
            strategy = "prop::option::of(prop::collection::vec(any::<OffsetFetchRequestTopic>(), 0..3))"
        )
    )]
    pub topics: Option<Vec<OffsetFetchRequestTopic>>,

    /// Whether the broker should hold back unstable offsets (of open transactions) and
    /// answer `UNSTABLE_OFFSET_COMMIT` for their partitions.
    ///
    /// Added in version 7.
    pub require_stable: Option<Boolean>,

    /// The tagged fields.
    ///
    /// Added in version 6.
    pub tagged_fields: Option<TaggedFields>,
}

impl RequestBody for OffsetFetchRequest {
    type ResponseBody = OffsetFetchResponse;

    const API_KEY: ApiKey = ApiKey::OffsetFetch;

    /// The single-group versions Apache Kafka 4.1 accepts (it accepts 1 to 9).
    const API_VERSION_RANGE: ApiVersionRange = ApiVersionRange::new(
        ApiVersion(Int16(MIN_VERSION)),
        ApiVersion(Int16(MAX_VERSION)),
    );

    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion =
        ApiVersion(Int16(FIRST_FLEXIBLE_VERSION));
}

impl<W> WriteVersionedType<W> for OffsetFetchRequest
where
    W: Write,
{
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let v = version.0.0;
        assert!((MIN_VERSION..=MAX_VERSION).contains(&v));
        let flexible = v >= FIRST_FLEXIBLE_VERSION;

        if self.topics.is_none() && v < 2 {
            return Err(WriteVersionedError::FieldNotAvailable {
                version,
                field: "topics (null: every topic)".to_string(),
            });
        }
        if self.require_stable.is_some() && v < 7 {
            return Err(WriteVersionedError::FieldNotAvailable {
                version,
                field: "require_stable".to_string(),
            });
        }

        write_string(writer, &self.group_id, flexible)?;
        write_array(writer, version, self.topics.as_deref(), flexible)?;
        if v >= 7 {
            self.require_stable.unwrap_or(Boolean(false)).write(writer)?;
        }
        write_tagged_fields(writer, self.tagged_fields.as_ref(), flexible)?;
        Ok(())
    }
}

// this is not technically required for production but helpful for testing
impl<R> ReadVersionedType<R> for OffsetFetchRequest
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!((MIN_VERSION..=MAX_VERSION).contains(&v));
        let flexible = v >= FIRST_FLEXIBLE_VERSION;

        Ok(Self {
            group_id: read_string(reader, flexible)?,
            topics: read_array(reader, version, flexible)?,
            require_stable: (v >= 7).then(|| Boolean::read(reader)).transpose()?,
            tagged_fields: read_tagged_fields(reader, flexible)?,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OffsetFetchRequestTopic {
    /// The topic name.
    pub name: String_,

    /// The partition indexes we would like to fetch offsets for.
    pub partition_indexes: Vec<Int32>,

    /// The tagged fields.
    ///
    /// Added in version 6.
    pub tagged_fields: Option<TaggedFields>,
}

impl<W> WriteVersionedType<W> for OffsetFetchRequestTopic
where
    W: Write,
{
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let flexible = version.0.0 >= FIRST_FLEXIBLE_VERSION;
        write_string(writer, &self.name, flexible)?;
        write_int32_array(writer, &self.partition_indexes, flexible)?;
        write_tagged_fields(writer, self.tagged_fields.as_ref(), flexible)?;
        Ok(())
    }
}

// this is not technically required for production but helpful for testing
impl<R> ReadVersionedType<R> for OffsetFetchRequestTopic
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let flexible = version.0.0 >= FIRST_FLEXIBLE_VERSION;
        Ok(Self {
            name: read_string(reader, flexible)?,
            partition_indexes: read_int32_array(reader, flexible)?,
            tagged_fields: read_tagged_fields(reader, flexible)?,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OffsetFetchResponse {
    /// The duration in milliseconds for which the request was throttled due to a quota
    /// violation, or zero if the request did not violate any quota.
    ///
    /// Added in version 3.
    pub throttle_time_ms: Option<Int32>,

    /// The responses per topic.
    #[cfg_attr(
        test,
        proptest(strategy = "prop::collection::vec(any::<OffsetFetchResponseTopic>(), 0..3)")
    )]
    pub topics: Vec<OffsetFetchResponseTopic>,

    /// The top-level error code (the group's, the coordinator's), or 0 if there was no
    /// error.
    ///
    /// Added in version 2.
    #[cfg_attr(test, proptest(strategy = "any::<i16>().prop_map(Error::new)"))]
    pub error: Option<Error>,

    /// The tagged fields.
    ///
    /// Added in version 6.
    pub tagged_fields: Option<TaggedFields>,
}

impl<R> ReadVersionedType<R> for OffsetFetchResponse
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!((MIN_VERSION..=MAX_VERSION).contains(&v));
        let flexible = v >= FIRST_FLEXIBLE_VERSION;

        Ok(Self {
            throttle_time_ms: (v >= 3).then(|| Int32::read(reader)).transpose()?,
            topics: read_array(reader, version, flexible)?.unwrap_or_default(),
            error: if v >= 2 {
                Error::new(Int16::read(reader)?.0)
            } else {
                None
            },
            tagged_fields: read_tagged_fields(reader, flexible)?,
        })
    }
}

// this is not technically required for production but helpful for testing
impl<W> WriteVersionedType<W> for OffsetFetchResponse
where
    W: Write,
{
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let v = version.0.0;
        assert!((MIN_VERSION..=MAX_VERSION).contains(&v));
        let flexible = v >= FIRST_FLEXIBLE_VERSION;

        if v >= 3 {
            self.throttle_time_ms.unwrap_or(Int32(0)).write(writer)?;
        }
        write_array(writer, version, Some(self.topics.as_slice()), flexible)?;
        if v >= 2 {
            Int16::from(self.error).write(writer)?;
        }
        write_tagged_fields(writer, self.tagged_fields.as_ref(), flexible)?;
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OffsetFetchResponseTopic {
    /// The topic name.
    pub name: String_,

    /// The responses per partition.
    #[cfg_attr(
        test,
        proptest(strategy = "prop::collection::vec(any::<OffsetFetchResponsePartition>(), 0..3)")
    )]
    pub partitions: Vec<OffsetFetchResponsePartition>,

    /// The tagged fields.
    ///
    /// Added in version 6.
    pub tagged_fields: Option<TaggedFields>,
}

impl<R> ReadVersionedType<R> for OffsetFetchResponseTopic
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let flexible = version.0.0 >= FIRST_FLEXIBLE_VERSION;
        Ok(Self {
            name: read_string(reader, flexible)?,
            partitions: read_array(reader, version, flexible)?.unwrap_or_default(),
            tagged_fields: read_tagged_fields(reader, flexible)?,
        })
    }
}

// this is not technically required for production but helpful for testing
impl<W> WriteVersionedType<W> for OffsetFetchResponseTopic
where
    W: Write,
{
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let flexible = version.0.0 >= FIRST_FLEXIBLE_VERSION;
        write_string(writer, &self.name, flexible)?;
        write_array(writer, version, Some(self.partitions.as_slice()), flexible)?;
        write_tagged_fields(writer, self.tagged_fields.as_ref(), flexible)?;
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OffsetFetchResponsePartition {
    /// The partition index.
    pub partition_index: Int32,

    /// The committed offset (the next one to consume), or -1 if the group has none.
    pub committed_offset: Int64,

    /// The leader epoch of the committed offset (-1: unknown).
    ///
    /// Added in version 5.
    pub committed_leader_epoch: Option<Int32>,

    /// The partition metadata.
    pub metadata: NullableString,

    /// The partition's error code, or 0 if there was no error.
    #[cfg_attr(test, proptest(strategy = "any::<i16>().prop_map(Error::new)"))]
    pub error: Option<Error>,

    /// The tagged fields.
    ///
    /// Added in version 6.
    pub tagged_fields: Option<TaggedFields>,
}

impl<R> ReadVersionedType<R> for OffsetFetchResponsePartition
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        let flexible = v >= FIRST_FLEXIBLE_VERSION;
        Ok(Self {
            partition_index: Int32::read(reader)?,
            committed_offset: Int64::read(reader)?,
            committed_leader_epoch: (v >= 5).then(|| Int32::read(reader)).transpose()?,
            metadata: read_nullable_string(reader, flexible)?,
            error: Error::new(Int16::read(reader)?.0),
            tagged_fields: read_tagged_fields(reader, flexible)?,
        })
    }
}

// this is not technically required for production but helpful for testing
impl<W> WriteVersionedType<W> for OffsetFetchResponsePartition
where
    W: Write,
{
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let v = version.0.0;
        let flexible = v >= FIRST_FLEXIBLE_VERSION;
        self.partition_index.write(writer)?;
        self.committed_offset.write(writer)?;
        if v >= 5 {
            self.committed_leader_epoch
                .unwrap_or(Int32(-1))
                .write(writer)?;
        }
        write_nullable_string(writer, &self.metadata, flexible)?;
        Int16::from(self.error).write(writer)?;
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
        OffsetFetchRequest,
        OffsetFetchRequest::API_VERSION_RANGE.min(),
        OffsetFetchRequest::API_VERSION_RANGE.max(),
        test_roundtrip_offset_fetch_request
    );

    test_roundtrip_versioned!(
        OffsetFetchResponse,
        OffsetFetchRequest::API_VERSION_RANGE.min(),
        OffsetFetchRequest::API_VERSION_RANGE.max(),
        test_roundtrip_offset_fetch_response
    );

    fn request(require_stable: Option<Boolean>) -> OffsetFetchRequest {
        OffsetFetchRequest {
            group_id: String_("g".to_owned()),
            topics: Some(vec![OffsetFetchRequestTopic {
                name: String_("t".to_owned()),
                partition_indexes: vec![Int32(0), Int32(1)],
                tagged_fields: None,
            }]),
            require_stable,
            tagged_fields: None,
        }
    }

    #[test]
    fn test_encode_request_v5() {
        let mut buf = vec![];
        request(None)
            .write_versioned(&mut buf, ApiVersion(Int16(5)))
            .unwrap();
        #[rustfmt::skip]
        let expected = [
            0, 1, b'g', // group
            0, 0, 0, 1, // one topic
            0, 1, b't', // name
            0, 0, 0, 2, // two partitions
            0, 0, 0, 0,
            0, 0, 0, 1,
        ];
        assert_eq!(buf, expected);
    }

    #[test]
    fn test_encode_request_v7() {
        let mut buf = vec![];
        request(Some(Boolean(true)))
            .write_versioned(&mut buf, ApiVersion(Int16(7)))
            .unwrap();
        #[rustfmt::skip]
        let expected = [
            2, b'g', // compact group
            2, // compact array: one topic
            2, b't', // name
            3, // compact array: two partitions
            0, 0, 0, 0,
            0, 0, 0, 1,
            0, // topic's tagged fields
            1, // require stable
            0, // tagged fields
        ];
        assert_eq!(buf, expected);
    }

    #[test]
    fn test_encode_request_fields_not_available() {
        let mut buf = vec![];
        let err = request(Some(Boolean(true)))
            .write_versioned(&mut buf, ApiVersion(Int16(6)))
            .unwrap_err();
        assert!(matches!(
            err,
            WriteVersionedError::FieldNotAvailable { field, .. } if field == "require_stable"
        ));
        let err = OffsetFetchRequest {
            topics: None,
            ..request(None)
        }
        .write_versioned(&mut buf, ApiVersion(Int16(1)))
        .unwrap_err();
        assert!(matches!(err, WriteVersionedError::FieldNotAvailable { .. }));
    }

    /// As Apache Kafka 4.1 answers version 7: partition 0 committed at 42, partition 1
    /// without a committed offset.
    #[test]
    fn test_decode_response_v7() {
        #[rustfmt::skip]
        let data = [
            0, 0, 0, 0, // throttle time
            2, // compact array: one topic
            2, b't', // name
            3, // compact array: two partitions
            0, 0, 0, 0, // partition 0
            0, 0, 0, 0, 0, 0, 0, 42, // committed offset
            0xff, 0xff, 0xff, 0xff, // leader epoch -1
            1, // metadata ""
            0, 0, // no error
            0, // partition's tagged fields
            0, 0, 0, 1, // partition 1
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // no committed offset
            0xff, 0xff, 0xff, 0xff, // leader epoch -1
            1, // metadata ""
            0, 0, // no error
            0, // partition's tagged fields
            0, // topic's tagged fields
            0, 0, // no error
            0, // tagged fields
        ];
        let response =
            OffsetFetchResponse::read_versioned(&mut Cursor::new(data), ApiVersion(Int16(7)))
                .unwrap();
        assert_eq!(response.error, None);
        let [topic] = response.topics.as_slice() else {
            panic!("one topic: {response:?}");
        };
        assert_eq!(topic.name.0, "t");
        let offsets: Vec<_> = topic
            .partitions
            .iter()
            .map(|p| (p.partition_index.0, p.committed_offset.0, p.error))
            .collect();
        assert_eq!(offsets, [(0, 42, None), (1, -1, None)]);
        assert_eq!(
            topic.partitions[0].metadata,
            NullableString(Some(String::new()))
        );
    }

    #[test]
    fn test_decode_response_v2_not_coordinator() {
        #[rustfmt::skip]
        let data = [
            0, 0, 0, 0, // no topics
            0, 16, // NOT_COORDINATOR
        ];
        let response =
            OffsetFetchResponse::read_versioned(&mut Cursor::new(data), ApiVersion(Int16(2)))
                .unwrap();
        assert_eq!(response.error, Some(Error::NotCoordinator));
        assert!(response.topics.is_empty());
    }
}
