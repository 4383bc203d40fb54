//! `DescribeConfigs` (API key 32): the configuration of topics, brokers and other resources.
//!
//! gamestream patch (see `GAMESTREAM_PATCH.md`): not part of rskafka 0.6.0.
//!
//! # References
//! - <https://kafka.apache.org/protocol#The_Messages_DescribeConfigs>
//! - `DescribeConfigsRequest.json` and `DescribeConfigsResponse.json` in Apache Kafka's
//!   `clients/src/main/resources/common/message/`
use std::io::{Read, Write};

use crate::protocol::{
    api_key::ApiKey,
    api_version::{ApiVersion, ApiVersionRange},
    error::Error,
    messages::{
        ReadVersionedError, ReadVersionedType, RequestBody, WriteVersionedError,
        WriteVersionedType, read_compact_versioned_array, read_versioned_array,
        write_compact_versioned_array, write_versioned_array,
    },
    primitives::{
        Array, Boolean, CompactArray, CompactArrayRef, CompactNullableString,
        CompactNullableStringRef, CompactString, CompactStringRef, Int8, Int16, Int32,
        NullableString, String_, TaggedFields,
    },
    traits::{ReadError, ReadType, WriteError, WriteType},
};

#[cfg(test)]
use proptest::prelude::*;

/// Resource type of a topic (`ConfigResource.Type.TOPIC`).
pub const RESOURCE_TYPE_TOPIC: i8 = 2;

/// Resource type of a broker (`ConfigResource.Type.BROKER`).
pub const RESOURCE_TYPE_BROKER: i8 = 4;

/// The first version with flexible (compact, tagged) encoding.
const FIRST_FLEXIBLE_VERSION: i16 = 4;

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DescribeConfigsRequest {
    /// The resources whose configurations we want to describe.
    #[cfg_attr(
        test,
        proptest(strategy = "prop::collection::vec(any::<DescribeConfigsResource>(), 0..3)")
    )]
    pub resources: Vec<DescribeConfigsResource>,

    /// True if we should include all synonyms.
    ///
    /// Added in version 1.
    pub include_synonyms: Option<Boolean>,

    /// True if we should include configuration documentation.
    ///
    /// Added in version 3.
    pub include_documentation: Option<Boolean>,

    /// The tagged fields.
    ///
    /// Added in version 4.
    pub tagged_fields: Option<TaggedFields>,
}

impl RequestBody for DescribeConfigsRequest {
    type ResponseBody = DescribeConfigsResponse;

    const API_KEY: ApiKey = ApiKey::DescribeConfigs;

    /// All versions Apache Kafka defines (4.0 removed version 0 from the broker).
    const API_VERSION_RANGE: ApiVersionRange =
        ApiVersionRange::new(ApiVersion(Int16(0)), ApiVersion(Int16(4)));

    const FIRST_TAGGED_FIELD_IN_REQUEST_VERSION: ApiVersion =
        ApiVersion(Int16(FIRST_FLEXIBLE_VERSION));
}

impl<W> WriteVersionedType<W> for DescribeConfigsRequest
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

        if self.include_synonyms.is_some() && v < 1 {
            return Err(WriteVersionedError::FieldNotAvailable {
                version,
                field: "include_synonyms".to_string(),
            });
        }
        if self.include_documentation.is_some() && v < 3 {
            return Err(WriteVersionedError::FieldNotAvailable {
                version,
                field: "include_documentation".to_string(),
            });
        }

        if v >= FIRST_FLEXIBLE_VERSION {
            write_compact_versioned_array(writer, version, Some(self.resources.as_slice()))?;
        } else {
            write_versioned_array(writer, version, Some(self.resources.as_slice()))?;
        }

        if v >= 1 {
            self.include_synonyms
                .unwrap_or(Boolean(false))
                .write(writer)?;
        }
        if v >= 3 {
            self.include_documentation
                .unwrap_or(Boolean(false))
                .write(writer)?;
        }
        if v >= FIRST_FLEXIBLE_VERSION {
            write_tagged_fields(writer, self.tagged_fields.as_ref())?;
        }

        Ok(())
    }
}

// this is not technically required for production but helpful for testing
impl<R> ReadVersionedType<R> for DescribeConfigsRequest
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);

        let resources = if v >= FIRST_FLEXIBLE_VERSION {
            read_compact_versioned_array(reader, version)?.unwrap_or_default()
        } else {
            read_versioned_array(reader, version)?.unwrap_or_default()
        };
        let include_synonyms = (v >= 1).then(|| Boolean::read(reader)).transpose()?;
        let include_documentation = (v >= 3).then(|| Boolean::read(reader)).transpose()?;
        let tagged_fields = (v >= FIRST_FLEXIBLE_VERSION)
            .then(|| TaggedFields::read(reader))
            .transpose()?;

        Ok(Self {
            resources,
            include_synonyms,
            include_documentation,
            tagged_fields,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DescribeConfigsResource {
    /// The resource type (see [`RESOURCE_TYPE_TOPIC`]).
    pub resource_type: Int8,

    /// The resource name.
    pub resource_name: String_,

    /// The configuration keys to list, or null to list all configuration keys.
    pub configuration_keys: Array<String_>,

    /// The tagged fields.
    ///
    /// Added in version 4.
    pub tagged_fields: Option<TaggedFields>,
}

impl<W> WriteVersionedType<W> for DescribeConfigsResource
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

        self.resource_type.write(writer)?;
        if v >= FIRST_FLEXIBLE_VERSION {
            CompactStringRef(&self.resource_name.0).write(writer)?;
            match self.configuration_keys.0.as_deref() {
                Some(keys) => {
                    let keys: Vec<_> = keys.iter().map(|k| CompactStringRef(&k.0)).collect();
                    CompactArrayRef(Some(keys.as_slice())).write(writer)?;
                }
                None => CompactArrayRef::<CompactStringRef<'_>>(None).write(writer)?,
            }
            write_tagged_fields(writer, self.tagged_fields.as_ref())?;
        } else {
            self.resource_name.write(writer)?;
            self.configuration_keys.write(writer)?;
        }

        Ok(())
    }
}

// this is not technically required for production but helpful for testing
impl<R> ReadVersionedType<R> for DescribeConfigsResource
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);

        let resource_type = Int8::read(reader)?;
        if v >= FIRST_FLEXIBLE_VERSION {
            let resource_name = String_(CompactString::read(reader)?.0);
            let configuration_keys = Array(
                CompactArray::<CompactString>::read(reader)?
                    .0
                    .map(|keys| keys.into_iter().map(|k| String_(k.0)).collect()),
            );
            let tagged_fields = Some(TaggedFields::read(reader)?);
            Ok(Self {
                resource_type,
                resource_name,
                configuration_keys,
                tagged_fields,
            })
        } else {
            Ok(Self {
                resource_type,
                resource_name: String_::read(reader)?,
                configuration_keys: Array::read(reader)?,
                tagged_fields: None,
            })
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DescribeConfigsResponse {
    /// The duration in milliseconds for which the request was throttled due to a quota
    /// violation, or zero if the request did not violate any quota.
    pub throttle_time_ms: Int32,

    /// The results for each resource.
    #[cfg_attr(
        test,
        proptest(strategy = "prop::collection::vec(any::<DescribeConfigsResult>(), 0..3)")
    )]
    pub results: Vec<DescribeConfigsResult>,

    /// The tagged fields.
    ///
    /// Added in version 4.
    pub tagged_fields: Option<TaggedFields>,
}

impl<R> ReadVersionedType<R> for DescribeConfigsResponse
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);

        let throttle_time_ms = Int32::read(reader)?;
        let results = if v >= FIRST_FLEXIBLE_VERSION {
            read_compact_versioned_array(reader, version)?.unwrap_or_default()
        } else {
            read_versioned_array(reader, version)?.unwrap_or_default()
        };
        let tagged_fields = (v >= FIRST_FLEXIBLE_VERSION)
            .then(|| TaggedFields::read(reader))
            .transpose()?;

        Ok(Self {
            throttle_time_ms,
            results,
            tagged_fields,
        })
    }
}

// this is not technically required for production but helpful for testing
impl<W> WriteVersionedType<W> for DescribeConfigsResponse
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
        if v >= FIRST_FLEXIBLE_VERSION {
            write_compact_versioned_array(writer, version, Some(self.results.as_slice()))?;
            write_tagged_fields(writer, self.tagged_fields.as_ref())?;
        } else {
            write_versioned_array(writer, version, Some(self.results.as_slice()))?;
        }

        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DescribeConfigsResult {
    /// The error code, or 0 if we were able to successfully describe the configurations.
    #[cfg_attr(test, proptest(strategy = "any::<i16>().prop_map(Error::new)"))]
    pub error: Option<Error>,

    /// The error message, or null if we were able to successfully describe the configurations.
    pub error_message: NullableString,

    /// The resource type.
    pub resource_type: Int8,

    /// The resource name.
    pub resource_name: String_,

    /// Each listed configuration.
    #[cfg_attr(
        test,
        proptest(strategy = "prop::collection::vec(any::<DescribeConfigsResourceResult>(), 0..3)")
    )]
    pub configs: Vec<DescribeConfigsResourceResult>,

    /// The tagged fields.
    ///
    /// Added in version 4.
    pub tagged_fields: Option<TaggedFields>,
}

impl<R> ReadVersionedType<R> for DescribeConfigsResult
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);
        let flexible = v >= FIRST_FLEXIBLE_VERSION;

        let error = Error::new(Int16::read(reader)?.0);
        let error_message = read_nullable_string(reader, flexible)?;
        let resource_type = Int8::read(reader)?;
        let resource_name = read_string(reader, flexible)?;
        let configs = if flexible {
            read_compact_versioned_array(reader, version)?.unwrap_or_default()
        } else {
            read_versioned_array(reader, version)?.unwrap_or_default()
        };
        let tagged_fields = flexible.then(|| TaggedFields::read(reader)).transpose()?;

        Ok(Self {
            error,
            error_message,
            resource_type,
            resource_name,
            configs,
            tagged_fields,
        })
    }
}

// this is not technically required for production but helpful for testing
impl<W> WriteVersionedType<W> for DescribeConfigsResult
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

        Int16::from(self.error).write(writer)?;
        write_nullable_string(writer, &self.error_message, flexible)?;
        self.resource_type.write(writer)?;
        write_string(writer, &self.resource_name, flexible)?;
        if flexible {
            write_compact_versioned_array(writer, version, Some(self.configs.as_slice()))?;
            write_tagged_fields(writer, self.tagged_fields.as_ref())?;
        } else {
            write_versioned_array(writer, version, Some(self.configs.as_slice()))?;
        }

        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DescribeConfigsResourceResult {
    /// The configuration name.
    pub name: String_,

    /// The configuration value (null for a sensitive one).
    pub value: NullableString,

    /// True if the configuration is read-only.
    pub read_only: Boolean,

    /// True if the configuration is not set.
    ///
    /// Version 0 only; later versions send `config_source`.
    pub is_default: Option<Boolean>,

    /// The configuration source (`DescribeConfigsResponse.ConfigSource`: 1 topic, 5 default, ...).
    ///
    /// Added in version 1.
    pub config_source: Option<Int8>,

    /// True if this configuration is sensitive.
    pub is_sensitive: Boolean,

    /// The synonyms for this configuration key (empty unless requested).
    ///
    /// Added in version 1.
    #[cfg_attr(
        test,
        proptest(strategy = "prop::collection::vec(any::<DescribeConfigsSynonym>(), 0..3)")
    )]
    pub synonyms: Vec<DescribeConfigsSynonym>,

    /// The configuration data type (BOOLEAN 1, STRING 2, INT 3, SHORT 4, LONG 5, DOUBLE 6,
    /// LIST 7, CLASS 8, PASSWORD 9; 0 unknown).
    ///
    /// Added in version 3.
    pub config_type: Option<Int8>,

    /// The configuration documentation.
    ///
    /// Added in version 3.
    pub documentation: Option<NullableString>,

    /// The tagged fields.
    ///
    /// Added in version 4.
    pub tagged_fields: Option<TaggedFields>,
}

impl<R> ReadVersionedType<R> for DescribeConfigsResourceResult
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!(v <= 4);
        let flexible = v >= FIRST_FLEXIBLE_VERSION;

        let name = read_string(reader, flexible)?;
        let value = read_nullable_string(reader, flexible)?;
        let read_only = Boolean::read(reader)?;
        let is_default = (v == 0).then(|| Boolean::read(reader)).transpose()?;
        let config_source = (v >= 1).then(|| Int8::read(reader)).transpose()?;
        let is_sensitive = Boolean::read(reader)?;
        let synonyms = if v >= 1 {
            if flexible {
                read_compact_versioned_array(reader, version)?.unwrap_or_default()
            } else {
                read_versioned_array(reader, version)?.unwrap_or_default()
            }
        } else {
            vec![]
        };
        let config_type = (v >= 3).then(|| Int8::read(reader)).transpose()?;
        let documentation = (v >= 3)
            .then(|| read_nullable_string(reader, flexible))
            .transpose()?;
        let tagged_fields = flexible.then(|| TaggedFields::read(reader)).transpose()?;

        Ok(Self {
            name,
            value,
            read_only,
            is_default,
            config_source,
            is_sensitive,
            synonyms,
            config_type,
            documentation,
            tagged_fields,
        })
    }
}

// this is not technically required for production but helpful for testing
impl<W> WriteVersionedType<W> for DescribeConfigsResourceResult
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

        write_string(writer, &self.name, flexible)?;
        write_nullable_string(writer, &self.value, flexible)?;
        self.read_only.write(writer)?;
        if v == 0 {
            self.is_default.unwrap_or(Boolean(false)).write(writer)?;
        } else {
            // -1 is the field's default in the message definition
            self.config_source.unwrap_or(Int8(-1)).write(writer)?;
        }
        self.is_sensitive.write(writer)?;
        if v >= 1 {
            if flexible {
                write_compact_versioned_array(writer, version, Some(self.synonyms.as_slice()))?;
            } else {
                write_versioned_array(writer, version, Some(self.synonyms.as_slice()))?;
            }
        }
        if v >= 3 {
            self.config_type.unwrap_or(Int8(0)).write(writer)?;
            let none = NullableString(None);
            write_nullable_string(
                writer,
                self.documentation.as_ref().unwrap_or(&none),
                flexible,
            )?;
        }
        if flexible {
            write_tagged_fields(writer, self.tagged_fields.as_ref())?;
        }

        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DescribeConfigsSynonym {
    /// The synonym name.
    pub name: String_,

    /// The synonym value.
    pub value: NullableString,

    /// The synonym source (as `config_source`).
    pub source: Int8,

    /// The tagged fields.
    ///
    /// Added in version 4.
    pub tagged_fields: Option<TaggedFields>,
}

impl<R> ReadVersionedType<R> for DescribeConfigsSynonym
where
    R: Read,
{
    fn read_versioned(reader: &mut R, version: ApiVersion) -> Result<Self, ReadVersionedError> {
        let v = version.0.0;
        assert!((1..=4).contains(&v));
        let flexible = v >= FIRST_FLEXIBLE_VERSION;

        Ok(Self {
            name: read_string(reader, flexible)?,
            value: read_nullable_string(reader, flexible)?,
            source: Int8::read(reader)?,
            tagged_fields: flexible.then(|| TaggedFields::read(reader)).transpose()?,
        })
    }
}

// this is not technically required for production but helpful for testing
impl<W> WriteVersionedType<W> for DescribeConfigsSynonym
where
    W: Write,
{
    fn write_versioned(
        &self,
        writer: &mut W,
        version: ApiVersion,
    ) -> Result<(), WriteVersionedError> {
        let v = version.0.0;
        assert!((1..=4).contains(&v));
        let flexible = v >= FIRST_FLEXIBLE_VERSION;

        write_string(writer, &self.name, flexible)?;
        write_nullable_string(writer, &self.value, flexible)?;
        self.source.write(writer)?;
        if flexible {
            write_tagged_fields(writer, self.tagged_fields.as_ref())?;
        }

        Ok(())
    }
}

fn write_tagged_fields<W: Write>(
    writer: &mut W,
    tagged_fields: Option<&TaggedFields>,
) -> Result<(), WriteError> {
    match tagged_fields {
        Some(tagged_fields) => tagged_fields.write(writer),
        None => TaggedFields::default().write(writer),
    }
}

fn write_string<W: Write>(writer: &mut W, s: &String_, flexible: bool) -> Result<(), WriteError> {
    if flexible {
        CompactStringRef(&s.0).write(writer)
    } else {
        s.write(writer)
    }
}

fn write_nullable_string<W: Write>(
    writer: &mut W,
    s: &NullableString,
    flexible: bool,
) -> Result<(), WriteError> {
    if flexible {
        CompactNullableStringRef(s.0.as_deref()).write(writer)
    } else {
        s.write(writer)
    }
}

fn read_string<R: Read>(reader: &mut R, flexible: bool) -> Result<String_, ReadError> {
    if flexible {
        Ok(String_(CompactString::read(reader)?.0))
    } else {
        String_::read(reader)
    }
}

fn read_nullable_string<R: Read>(
    reader: &mut R,
    flexible: bool,
) -> Result<NullableString, ReadError> {
    if flexible {
        Ok(NullableString(CompactNullableString::read(reader)?.0))
    } else {
        NullableString::read(reader)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use crate::protocol::messages::test_utils::test_roundtrip_versioned;

    use super::*;

    test_roundtrip_versioned!(
        DescribeConfigsRequest,
        DescribeConfigsRequest::API_VERSION_RANGE.min(),
        DescribeConfigsRequest::API_VERSION_RANGE.max(),
        test_roundtrip_describe_configs_request
    );

    test_roundtrip_versioned!(
        DescribeConfigsResponse,
        DescribeConfigsRequest::API_VERSION_RANGE.min(),
        DescribeConfigsRequest::API_VERSION_RANGE.max(),
        test_roundtrip_describe_configs_response
    );

    fn topic_request(keys: Option<Vec<&str>>) -> DescribeConfigsRequest {
        DescribeConfigsRequest {
            resources: vec![DescribeConfigsResource {
                resource_type: Int8(RESOURCE_TYPE_TOPIC),
                resource_name: String_("t".to_owned()),
                configuration_keys: Array(
                    keys.map(|keys| keys.into_iter().map(|k| String_(k.to_owned())).collect()),
                ),
                tagged_fields: None,
            }],
            include_synonyms: Some(Boolean(false)),
            include_documentation: None,
            tagged_fields: None,
        }
    }

    #[test]
    fn test_encode_request_v1() {
        let mut buf = vec![];
        topic_request(Some(vec!["retention.ms"]))
            .write_versioned(&mut buf, ApiVersion(Int16(1)))
            .unwrap();
        #[rustfmt::skip]
        let expected = [
            0, 0, 0, 1, // one resource
            2, // resource type: topic
            0, 1, b't', // resource name
            0, 0, 0, 1, // one key
            0, 12, b'r', b'e', b't', b'e', b'n', b't', b'i', b'o', b'n', b'.', b'm', b's',
            0, // include synonyms: false
        ];
        assert_eq!(buf, expected);
    }

    #[test]
    fn test_encode_request_v4() {
        let mut buf = vec![];
        topic_request(None)
            .write_versioned(&mut buf, ApiVersion(Int16(4)))
            .unwrap();
        #[rustfmt::skip]
        let expected = [
            2, // compact array: one resource
            2, // resource type: topic
            2, b't', // compact resource name
            0, // compact array: null, every key
            0, // resource's tagged fields
            0, // include synonyms: false
            0, // include documentation: false
            0, // tagged fields
        ];
        assert_eq!(buf, expected);
    }

    #[test]
    fn test_encode_request_field_not_available() {
        let mut buf = vec![];
        let err = topic_request(None)
            .write_versioned(&mut buf, ApiVersion(Int16(0)))
            .unwrap_err();
        assert!(matches!(
            err,
            WriteVersionedError::FieldNotAvailable { field, .. } if field == "include_synonyms"
        ));
    }

    /// A response as Apache Kafka 4.1 sends it (version 4) for one topic and one key.
    #[test]
    fn test_decode_response_v4() {
        #[rustfmt::skip]
        let data = [
            0, 0, 0, 0, // throttle time
            2, // compact array: one result
            0, 0, // no error
            0, // error message: null
            2, // resource type: topic
            2, b't', // resource name
            2, // compact array: one config
            13, b'r', b'e', b't', b'e', b'n', b't', b'i', b'o', b'n', b'.', b'm', b's',
            5, b'1', b'0', b'0', b'0', // value
            0, // read only: false
            1, // source: DYNAMIC_TOPIC_CONFIG
            0, // sensitive: false
            1, // compact array: no synonyms
            5, // type: LONG
            0, // documentation: null
            0, // config's tagged fields
            0, // result's tagged fields
            0, // tagged fields
        ];
        let response =
            DescribeConfigsResponse::read_versioned(&mut Cursor::new(data), ApiVersion(Int16(4)))
                .unwrap();
        assert_eq!(response.throttle_time_ms, Int32(0));
        let [result] = response.results.as_slice() else {
            panic!("one result: {response:?}");
        };
        assert_eq!(result.error, None);
        assert_eq!(result.resource_name.0, "t");
        let [config] = result.configs.as_slice() else {
            panic!("one config: {result:?}");
        };
        assert_eq!(config.name.0, "retention.ms");
        assert_eq!(config.value.0.as_deref(), Some("1000"));
        assert_eq!(config.config_source, Some(Int8(1)));
        assert_eq!(config.config_type, Some(Int8(5)));
        assert_eq!(config.documentation, Some(NullableString(None)));
    }

    #[test]
    fn test_decode_response_v1_error() {
        let message = "This server does not host this topic-partition.";
        let mut data = vec![0, 0, 0, 0, 0, 0, 0, 1, 0, 3];
        data.extend_from_slice(&(message.len() as i16).to_be_bytes());
        data.extend_from_slice(message.as_bytes());
        data.extend_from_slice(&[2, 0, 1, b't', 0, 0, 0, 0]);
        let response =
            DescribeConfigsResponse::read_versioned(&mut Cursor::new(data), ApiVersion(Int16(1)))
                .unwrap();
        let result = &response.results[0];
        assert_eq!(result.error, Some(Error::UnknownTopicOrPartition));
        assert_eq!(result.error_message.0.as_deref(), Some(message));
        assert!(result.configs.is_empty());
    }
}
