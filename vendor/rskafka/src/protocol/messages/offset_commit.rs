//! `OffsetCommit` (API key 8): commit a consumer group's offsets.
//!
//! gamestream patch (see `GAMESTREAM_PATCH.md`): not part of rskafka 0.6.0.
//!
//! Versions 2 to 8 (flexible from 8). Apache Kafka 4.0 removed versions 0 and 1;
//! version 9 names topics by id (KIP-848), which a client naming topics does not need.
//!
//! A commit with generation -1 and an empty member id is a "simple" commit, for a group
//! without members (as Kafka's tools and `assign()`-only consumers make it); the
//! coordinator refuses it while the group has members.
//!
//! # References
//! - <https://kafka.apache.org/protocol#The_Messages_OffsetCommit>
//! - `OffsetCommitRequest.json` and `OffsetCommitResponse.json` in Apache Kafka's
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
            read_array, read_nullable_string, read_string, read_tagged_fields, write_array,
            write_nullable_string, write_string, write_tagged_fields,
        },
    },
    primitives::{Int16, Int32, Int64, NullableString, String_, TaggedFields},
    traits::{ReadType, WriteType},
};

#[cfg(test)]
use proptest::prelude::*;

const FIRST_FLEXIBLE_VERSION: i16 = 8;
const MIN_VERSION: i16 = 2;
const MAX_VERSION: i16 = 8;

/// The generation of a commit made outside the group's membership.
pub const SIMPLE_COMMIT_GENERATION_ID: i32 = -1;

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OffsetCommitRequest {
    /// The unique group identifier.
    pub group_id: String_,

    /// The generation of the group, or [`SIMPLE_COMMIT_GENERATION_ID`].
    pub generation_id: Int32,

    /// The member id assigned by the group coordinator, or empty for a simple commit.
    pub member_id: String_,

    /// The unique identifier of the consumer instance provided by the end user (static
    /// membership).
    ///
    /// Added in version 7.
    pub group_instance_id: Option<NullableString>,

    /// The time period in ms to retain the offset (-1: the broker's setting).
    ///
    /// Versions 2 to 4.
    pub retention_time_ms: Option<Int64>,

    /// The topics to commit offsets for.
    #[cfg_attr(
        test,
        proptest(strategy = "prop::collection::vec(any::<OffsetCommitRequestTopic>(), 0..3)")
    )]
    pub topics: Vec<OffsetCommitRequestTopic>,

    /// The tagged fields.
    ///
    /// Added in version 8.
    pub tagged_fields: Option<TaggedFields>,
}

impl RequestBody for OffsetCommitRequest {
    type ResponseBody = OffsetCommitResponse;

    const API_KEY: ApiKey = ApiKey::OffsetCommit;

    /// Apache Kafka 4.1 accepts 2 to 9.
    const API_VERSION_RANGE: ApiVersionRange = ApiVersionRange::new(
        ApiVersion(Int16(MIN_VERSION)),
        ApiVersion(Int16(MAX_VERSION)),
    );

    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion =
        ApiVersion(Int16(FIRST_FLEXIBLE_VERSION));
}

impl<W> WriteVersionedType<W> for OffsetCommitRequest
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

        if matches!(&self.group_instance_id, Some(NullableString(Some(_)))) && v < 7 {
            return Err(WriteVersionedError::FieldNotAvailable {
                version,
                field: "group_instance_id".to_string(),
            });
        }

        write_string(writer, &self.group_id, flexible)?;
        self.generation_id.write(writer)?;
        write_string(writer, &self.member_id, flexible)?;
        if v >= 7 {
            let none = NullableString(None);
            write_nullable_string(
                writer,
                self.group_instance_id.as_ref().unwrap_or(&none),
                flexible,
            )?;
        }
        if v <= 4 {
            self.retention_time_ms.unwrap_or(Int64(-1)).write(writer)?;
        }
        write_array(writer, version, Some(self.topics.as_slice()), flexible)?;
        write_tagged_fields(writer, self.tagged_fields.as_ref(), flexible)?;
        Ok(())
    }
}

// this is not technically required for production but helpful for testing
impl<R> ReadVersionedType<R> for OffsetCommitRequest
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!((MIN_VERSION..=MAX_VERSION).contains(&v));
        let flexible = v >= FIRST_FLEXIBLE_VERSION;

        Ok(Self {
            group_id: read_string(reader, flexible)?,
            generation_id: Int32::read(reader)?,
            member_id: read_string(reader, flexible)?,
            group_instance_id: (v >= 7)
                .then(|| read_nullable_string(reader, flexible))
                .transpose()?,
            retention_time_ms: (v <= 4).then(|| Int64::read(reader)).transpose()?,
            topics: read_array(reader, version, flexible)?.unwrap_or_default(),
            tagged_fields: read_tagged_fields(reader, flexible)?,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OffsetCommitRequestTopic {
    /// The topic name.
    pub name: String_,

    /// Each partition to commit offsets for.
    #[cfg_attr(
        test,
        proptest(strategy = "prop::collection::vec(any::<OffsetCommitRequestPartition>(), 0..3)")
    )]
    pub partitions: Vec<OffsetCommitRequestPartition>,

    /// The tagged fields.
    ///
    /// Added in version 8.
    pub tagged_fields: Option<TaggedFields>,
}

impl<W> WriteVersionedType<W> for OffsetCommitRequestTopic
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

// this is not technically required for production but helpful for testing
impl<R> ReadVersionedType<R> for OffsetCommitRequestTopic
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

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OffsetCommitRequestPartition {
    /// The partition index.
    pub partition_index: Int32,

    /// The offset to be committed: the next one to consume.
    pub committed_offset: Int64,

    /// The leader epoch of this partition (-1: unknown).
    ///
    /// Added in version 6.
    pub committed_leader_epoch: Option<Int32>,

    /// Any associated metadata the client wants to keep.
    pub committed_metadata: NullableString,

    /// The tagged fields.
    ///
    /// Added in version 8.
    pub tagged_fields: Option<TaggedFields>,
}

impl<W> WriteVersionedType<W> for OffsetCommitRequestPartition
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
        if v >= 6 {
            self.committed_leader_epoch
                .unwrap_or(Int32(-1))
                .write(writer)?;
        }
        write_nullable_string(writer, &self.committed_metadata, flexible)?;
        write_tagged_fields(writer, self.tagged_fields.as_ref(), flexible)?;
        Ok(())
    }
}

// this is not technically required for production but helpful for testing
impl<R> ReadVersionedType<R> for OffsetCommitRequestPartition
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        let flexible = v >= FIRST_FLEXIBLE_VERSION;
        Ok(Self {
            partition_index: Int32::read(reader)?,
            committed_offset: Int64::read(reader)?,
            committed_leader_epoch: (v >= 6).then(|| Int32::read(reader)).transpose()?,
            committed_metadata: read_nullable_string(reader, flexible)?,
            tagged_fields: read_tagged_fields(reader, flexible)?,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OffsetCommitResponse {
    /// The duration in milliseconds for which the request was throttled due to a quota
    /// violation, or zero if the request did not violate any quota.
    ///
    /// Added in version 3.
    pub throttle_time_ms: Option<Int32>,

    /// The responses for each topic.
    #[cfg_attr(
        test,
        proptest(strategy = "prop::collection::vec(any::<OffsetCommitResponseTopic>(), 0..3)")
    )]
    pub topics: Vec<OffsetCommitResponseTopic>,

    /// The tagged fields.
    ///
    /// Added in version 8.
    pub tagged_fields: Option<TaggedFields>,
}

impl<R> ReadVersionedType<R> for OffsetCommitResponse
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
            tagged_fields: read_tagged_fields(reader, flexible)?,
        })
    }
}

// this is not technically required for production but helpful for testing
impl<W> WriteVersionedType<W> for OffsetCommitResponse
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
        write_tagged_fields(writer, self.tagged_fields.as_ref(), flexible)?;
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OffsetCommitResponseTopic {
    /// The topic name.
    pub name: String_,

    /// The responses for each partition in the topic.
    #[cfg_attr(
        test,
        proptest(strategy = "prop::collection::vec(any::<OffsetCommitResponsePartition>(), 0..3)")
    )]
    pub partitions: Vec<OffsetCommitResponsePartition>,

    /// The tagged fields.
    ///
    /// Added in version 8.
    pub tagged_fields: Option<TaggedFields>,
}

impl<R> ReadVersionedType<R> for OffsetCommitResponseTopic
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
impl<W> WriteVersionedType<W> for OffsetCommitResponseTopic
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
pub struct OffsetCommitResponsePartition {
    /// The partition index.
    pub partition_index: Int32,

    /// The error code, or 0 if there was no error.
    #[cfg_attr(test, proptest(strategy = "any::<i16>().prop_map(Error::new)"))]
    pub error: Option<Error>,

    /// The tagged fields.
    ///
    /// Added in version 8.
    pub tagged_fields: Option<TaggedFields>,
}

impl<R> ReadVersionedType<R> for OffsetCommitResponsePartition
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let flexible = version.0.0 >= FIRST_FLEXIBLE_VERSION;
        Ok(Self {
            partition_index: Int32::read(reader)?,
            error: Error::new(Int16::read(reader)?.0),
            tagged_fields: read_tagged_fields(reader, flexible)?,
        })
    }
}

// this is not technically required for production but helpful for testing
impl<W> WriteVersionedType<W> for OffsetCommitResponsePartition
where
    W: Write,
{
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let flexible = version.0.0 >= FIRST_FLEXIBLE_VERSION;
        self.partition_index.write(writer)?;
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
        OffsetCommitRequest,
        OffsetCommitRequest::API_VERSION_RANGE.min(),
        OffsetCommitRequest::API_VERSION_RANGE.max(),
        test_roundtrip_offset_commit_request
    );

    test_roundtrip_versioned!(
        OffsetCommitResponse,
        OffsetCommitRequest::API_VERSION_RANGE.min(),
        OffsetCommitRequest::API_VERSION_RANGE.max(),
        test_roundtrip_offset_commit_response
    );

    fn simple_commit() -> OffsetCommitRequest {
        OffsetCommitRequest {
            group_id: String_("g".to_owned()),
            generation_id: Int32(SIMPLE_COMMIT_GENERATION_ID),
            member_id: String_(String::new()),
            group_instance_id: None,
            retention_time_ms: None,
            topics: vec![OffsetCommitRequestTopic {
                name: String_("t".to_owned()),
                partitions: vec![OffsetCommitRequestPartition {
                    partition_index: Int32(1),
                    committed_offset: Int64(300),
                    committed_leader_epoch: None,
                    committed_metadata: NullableString(None),
                    tagged_fields: None,
                }],
                tagged_fields: None,
            }],
            tagged_fields: None,
        }
    }

    #[test]
    fn test_encode_request_v2() {
        let mut buf = vec![];
        simple_commit()
            .write_versioned(&mut buf, ApiVersion(Int16(2)))
            .unwrap();
        #[rustfmt::skip]
        let expected = [
            0, 1, b'g', // group
            0xff, 0xff, 0xff, 0xff, // generation -1
            0, 0, // member id ""
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // retention -1
            0, 0, 0, 1, // one topic
            0, 1, b't',
            0, 0, 0, 1, // one partition
            0, 0, 0, 1, // partition 1
            0, 0, 0, 0, 0, 0, 1, 0x2c, // offset 300
            0xff, 0xff, // metadata: null
        ];
        assert_eq!(buf, expected);
    }

    #[test]
    fn test_encode_request_v8() {
        let mut buf = vec![];
        simple_commit()
            .write_versioned(&mut buf, ApiVersion(Int16(8)))
            .unwrap();
        #[rustfmt::skip]
        let expected = [
            2, b'g', // compact group
            0xff, 0xff, 0xff, 0xff, // generation -1
            1, // member id ""
            0, // group instance id: null
            2, // compact array: one topic
            2, b't',
            2, // compact array: one partition
            0, 0, 0, 1, // partition 1
            0, 0, 0, 0, 0, 0, 1, 0x2c, // offset 300
            0xff, 0xff, 0xff, 0xff, // leader epoch -1
            0, // metadata: null
            0, // partition's tagged fields
            0, // topic's tagged fields
            0, // tagged fields
        ];
        assert_eq!(buf, expected);
    }

    #[test]
    fn test_encode_request_group_instance_id_not_available() {
        let mut buf = vec![];
        let err = OffsetCommitRequest {
            group_instance_id: Some(NullableString(Some("i".to_owned()))),
            ..simple_commit()
        }
        .write_versioned(&mut buf, ApiVersion(Int16(6)))
        .unwrap_err();
        assert!(matches!(
            err,
            WriteVersionedError::FieldNotAvailable { field, .. } if field == "group_instance_id"
        ));
    }

    #[test]
    fn test_decode_response_v8() {
        #[rustfmt::skip]
        let data = [
            0, 0, 0, 0, // throttle time
            2, // compact array: one topic
            2, b't',
            3, // compact array: two partitions
            0, 0, 0, 0, 0, 0, 0, // partition 0: no error
            0, 0, 0, 1, 0, 25, 0, // partition 1: UNKNOWN_MEMBER_ID
            0, // topic's tagged fields
            0, // tagged fields
        ];
        let response =
            OffsetCommitResponse::read_versioned(&mut Cursor::new(data), ApiVersion(Int16(8)))
                .unwrap();
        let [topic] = response.topics.as_slice() else {
            panic!("one topic: {response:?}");
        };
        let errors: Vec<_> = topic
            .partitions
            .iter()
            .map(|p| (p.partition_index.0, p.error))
            .collect();
        assert_eq!(errors, [(0, None), (1, Some(Error::UnknownMemberId))]);
    }
}
