//! `DescribeGroups` (API key 15): a classic consumer group's state and members.
//!
//! gamestream patch (see `GAMESTREAM_PATCH.md`): not part of rskafka 0.6.0.
//!
//! Versions 0 to 5 (flexible from 5). Version 6 (KIP-1043) adds an error message per
//! group; Apache Kafka 4.1 accepts 0 to 6.
//!
//! # References
//! - <https://kafka.apache.org/protocol#The_Messages_DescribeGroups>
//! - `DescribeGroupsRequest.json` and `DescribeGroupsResponse.json` in Apache Kafka's
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
            read_array, read_bytes, read_nullable_string, read_string, read_string_array,
            read_tagged_fields, write_array, write_bytes, write_nullable_string, write_string,
            write_string_array, write_tagged_fields,
        },
    },
    primitives::{Boolean, Bytes, Int16, Int32, NullableString, String_, TaggedFields},
    traits::{ReadType, WriteType},
};

#[cfg(test)]
use proptest::prelude::*;

const FIRST_FLEXIBLE_VERSION: i16 = 5;
const MAX_VERSION: i16 = 5;

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DescribeGroupsRequest {
    /// The names of the groups to describe.
    pub groups: Vec<String_>,

    /// Whether to include authorized operations.
    ///
    /// Added in version 3.
    pub include_authorized_operations: Option<Boolean>,

    /// The tagged fields.
    ///
    /// Added in version 5.
    pub tagged_fields: Option<TaggedFields>,
}

impl RequestBody for DescribeGroupsRequest {
    type ResponseBody = DescribeGroupsResponse;

    const API_KEY: ApiKey = ApiKey::DescribeGroups;

    const API_VERSION_RANGE: ApiVersionRange =
        ApiVersionRange::new(ApiVersion(Int16(0)), ApiVersion(Int16(MAX_VERSION)));

    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion =
        ApiVersion(Int16(FIRST_FLEXIBLE_VERSION));
}

impl<W> WriteVersionedType<W> for DescribeGroupsRequest
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

        if self.include_authorized_operations == Some(Boolean(true)) && v < 3 {
            return Err(WriteVersionedError::FieldNotAvailable {
                version,
                field: "include_authorized_operations".to_string(),
            });
        }

        write_string_array(writer, &self.groups, flexible)?;
        if v >= 3 {
            self.include_authorized_operations
                .unwrap_or(Boolean(false))
                .write(writer)?;
        }
        write_tagged_fields(writer, self.tagged_fields.as_ref(), flexible)?;
        Ok(())
    }
}

// this is not technically required for production but helpful for testing
impl<R> ReadVersionedType<R> for DescribeGroupsRequest
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!(v <= MAX_VERSION);
        let flexible = v >= FIRST_FLEXIBLE_VERSION;

        Ok(Self {
            groups: read_string_array(reader, flexible)?,
            include_authorized_operations: (v >= 3).then(|| Boolean::read(reader)).transpose()?,
            tagged_fields: read_tagged_fields(reader, flexible)?,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DescribeGroupsResponse {
    /// The duration in milliseconds for which the request was throttled due to a quota
    /// violation, or zero if the request did not violate any quota.
    ///
    /// Added in version 1.
    pub throttle_time_ms: Option<Int32>,

    /// Each described group.
    #[cfg_attr(
        test,
        proptest(strategy = "prop::collection::vec(any::<DescribedGroup>(), 0..3)")
    )]
    pub groups: Vec<DescribedGroup>,

    /// The tagged fields.
    ///
    /// Added in version 5.
    pub tagged_fields: Option<TaggedFields>,
}

impl<R> ReadVersionedType<R> for DescribeGroupsResponse
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!(v <= MAX_VERSION);
        let flexible = v >= FIRST_FLEXIBLE_VERSION;
        Ok(Self {
            throttle_time_ms: (v >= 1).then(|| Int32::read(reader)).transpose()?,
            groups: read_array(reader, version, flexible)?.unwrap_or_default(),
            tagged_fields: read_tagged_fields(reader, flexible)?,
        })
    }
}

// this is not technically required for production but helpful for testing
impl<W> WriteVersionedType<W> for DescribeGroupsResponse
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
        write_array(writer, version, Some(self.groups.as_slice()), flexible)?;
        write_tagged_fields(writer, self.tagged_fields.as_ref(), flexible)?;
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DescribedGroup {
    /// The describe error, or 0 if there was no error.
    #[cfg_attr(test, proptest(strategy = "any::<i16>().prop_map(Error::new)"))]
    pub error: Option<Error>,

    /// The group id.
    pub group_id: String_,

    /// The group state (`Empty`, `Stable`, `PreparingRebalance`,
    /// `CompletingRebalance`, `Dead`), or the empty string.
    pub group_state: String_,

    /// The group protocol type (`consumer`), or the empty string.
    pub protocol_type: String_,

    /// The group protocol data (the assignor), or the empty string.
    pub protocol_data: String_,

    /// The group members (none in a `Dead` group).
    #[cfg_attr(
        test,
        proptest(strategy = "prop::collection::vec(any::<DescribedGroupMember>(), 0..3)")
    )]
    pub members: Vec<DescribedGroupMember>,

    /// 32-bit bitfield of the authorized operations for this group.
    ///
    /// Added in version 3.
    pub authorized_operations: Option<Int32>,

    /// The tagged fields.
    ///
    /// Added in version 5.
    pub tagged_fields: Option<TaggedFields>,
}

impl<R> ReadVersionedType<R> for DescribedGroup
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        let flexible = v >= FIRST_FLEXIBLE_VERSION;
        Ok(Self {
            error: Error::new(Int16::read(reader)?.0),
            group_id: read_string(reader, flexible)?,
            group_state: read_string(reader, flexible)?,
            protocol_type: read_string(reader, flexible)?,
            protocol_data: read_string(reader, flexible)?,
            members: read_array(reader, version, flexible)?.unwrap_or_default(),
            authorized_operations: (v >= 3).then(|| Int32::read(reader)).transpose()?,
            tagged_fields: read_tagged_fields(reader, flexible)?,
        })
    }
}

// this is not technically required for production but helpful for testing
impl<W> WriteVersionedType<W> for DescribedGroup
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
        Int16::from(self.error).write(writer)?;
        write_string(writer, &self.group_id, flexible)?;
        write_string(writer, &self.group_state, flexible)?;
        write_string(writer, &self.protocol_type, flexible)?;
        write_string(writer, &self.protocol_data, flexible)?;
        write_array(writer, version, Some(self.members.as_slice()), flexible)?;
        if v >= 3 {
            // i32::MIN is the field's default in the message definition
            self.authorized_operations
                .unwrap_or(Int32(i32::MIN))
                .write(writer)?;
        }
        write_tagged_fields(writer, self.tagged_fields.as_ref(), flexible)?;
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DescribedGroupMember {
    /// The member id assigned by the group coordinator.
    pub member_id: String_,

    /// The unique identifier of the consumer instance provided by the end user.
    ///
    /// Added in version 4.
    pub group_instance_id: Option<NullableString>,

    /// The client id used in the member's latest join group request.
    pub client_id: String_,

    /// The client host.
    pub client_host: String_,

    /// The metadata of the group protocol in use (only in the `Stable` state).
    pub member_metadata: Bytes,

    /// The current assignment provided by the group leader (only in the `Stable` state).
    pub member_assignment: Bytes,

    /// The tagged fields.
    ///
    /// Added in version 5.
    pub tagged_fields: Option<TaggedFields>,
}

impl<R> ReadVersionedType<R> for DescribedGroupMember
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        let flexible = v >= FIRST_FLEXIBLE_VERSION;
        Ok(Self {
            member_id: read_string(reader, flexible)?,
            group_instance_id: (v >= 4)
                .then(|| read_nullable_string(reader, flexible))
                .transpose()?,
            client_id: read_string(reader, flexible)?,
            client_host: read_string(reader, flexible)?,
            member_metadata: read_bytes(reader, flexible)?,
            member_assignment: read_bytes(reader, flexible)?,
            tagged_fields: read_tagged_fields(reader, flexible)?,
        })
    }
}

// this is not technically required for production but helpful for testing
impl<W> WriteVersionedType<W> for DescribedGroupMember
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
        write_string(writer, &self.member_id, flexible)?;
        if v >= 4 {
            let none = NullableString(None);
            write_nullable_string(
                writer,
                self.group_instance_id.as_ref().unwrap_or(&none),
                flexible,
            )?;
        }
        write_string(writer, &self.client_id, flexible)?;
        write_string(writer, &self.client_host, flexible)?;
        write_bytes(writer, &self.member_metadata, flexible)?;
        write_bytes(writer, &self.member_assignment, flexible)?;
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
        DescribeGroupsRequest,
        DescribeGroupsRequest::API_VERSION_RANGE.min(),
        DescribeGroupsRequest::API_VERSION_RANGE.max(),
        test_roundtrip_describe_groups_request
    );

    test_roundtrip_versioned!(
        DescribeGroupsResponse,
        DescribeGroupsRequest::API_VERSION_RANGE.min(),
        DescribeGroupsRequest::API_VERSION_RANGE.max(),
        test_roundtrip_describe_groups_response
    );

    #[test]
    fn test_encode_request_v0_v5() {
        let request = DescribeGroupsRequest {
            groups: vec![String_("g".to_owned())],
            include_authorized_operations: None,
            tagged_fields: None,
        };
        let mut buf = vec![];
        request
            .write_versioned(&mut buf, ApiVersion(Int16(0)))
            .unwrap();
        assert_eq!(buf, [0, 0, 0, 1, 0, 1, b'g']);

        let mut buf = vec![];
        request
            .write_versioned(&mut buf, ApiVersion(Int16(5)))
            .unwrap();
        #[rustfmt::skip]
        let expected = [
            2, // compact array: one group
            2, b'g',
            0, // include authorized operations: false
            0, // tagged fields
        ];
        assert_eq!(buf, expected);
    }

    /// A stable group with one member, as Apache Kafka 4.1 answers version 5.
    #[test]
    fn test_decode_response_v5_stable_group() {
        #[rustfmt::skip]
        let data = [
            0, 0, 0, 0, // throttle time
            2, // compact array: one group
            0, 0, // no error
            2, b'g', // group id
            7, b'S', b't', b'a', b'b', b'l', b'e', // state
            9, b'c', b'o', b'n', b's', b'u', b'm', b'e', b'r', // protocol type
            6, b'r', b'a', b'n', b'g', b'e', // protocol data
            2, // compact array: one member
            2, b'm', // member id
            0, // group instance id: null
            2, b'c', // client id
            3, b'/', b'h', // client host
            3, 1, 2, // metadata
            2, 3, // assignment
            0, // member's tagged fields
            0x80, 0, 0, 0, // authorized operations: not asked
            0, // group's tagged fields
            0, // tagged fields
        ];
        let response =
            DescribeGroupsResponse::read_versioned(&mut Cursor::new(data), ApiVersion(Int16(5)))
                .unwrap();
        let [group] = response.groups.as_slice() else {
            panic!("one group: {response:?}");
        };
        assert_eq!(group.error, None);
        assert_eq!(group.group_state.0, "Stable");
        assert_eq!(group.protocol_type.0, "consumer");
        let [member] = group.members.as_slice() else {
            panic!("one member: {group:?}");
        };
        assert_eq!(member.member_id.0, "m");
        assert_eq!(member.client_host.0, "/h");
        assert_eq!(member.member_metadata, Bytes(vec![1, 2]));
        assert_eq!(member.member_assignment, Bytes(vec![3]));
        assert_eq!(group.authorized_operations, Some(Int32(i32::MIN)));
    }

    /// A group that does not exist is `Dead`, without an error, in a classic version.
    #[test]
    fn test_decode_response_v0_dead_group() {
        #[rustfmt::skip]
        let data = [
            0, 0, 0, 1, // one group
            0, 0, // no error
            0, 1, b'g',
            0, 4, b'D', b'e', b'a', b'd',
            0, 0, // protocol type ""
            0, 0, // protocol data ""
            0, 0, 0, 0, // no members
        ];
        let response =
            DescribeGroupsResponse::read_versioned(&mut Cursor::new(data), ApiVersion(Int16(0)))
                .unwrap();
        assert_eq!(response.throttle_time_ms, None);
        assert_eq!(response.groups[0].group_state.0, "Dead");
        assert!(response.groups[0].members.is_empty());
    }
}
