//! Encoding helpers shared by the consumer-group messages (FindCoordinator, OffsetFetch,
//! OffsetCommit, DescribeGroups), whose fields switch from the classic to the compact
//! (flexible, KIP-482) encoding at one version of each message.
//!
//! gamestream patch (see `GAMESTREAM_PATCH.md`): not part of rskafka 0.6.0.
use std::io::{Read, Write};

use crate::protocol::{
    api_version::ApiVersion,
    messages::{
        ReadVersionedError, ReadVersionedType, WriteVersionedError, WriteVersionedType,
        read_compact_versioned_array, read_versioned_array, write_compact_versioned_array,
        write_versioned_array,
    },
    primitives::{
        Bytes, CompactBytes, CompactBytesRef, CompactNullableString, CompactNullableStringRef,
        CompactString, CompactStringRef, Int32, NullableString, String_, TaggedFields,
        UnsignedVarint,
    },
    traits::{ReadError, ReadType, WriteError, WriteType},
    vec_builder::VecBuilder,
};

pub(crate) fn write_string<W: Write>(
    writer: &mut W,
    s: &String_,
    flexible: bool,
) -> Result<(), WriteError> {
    if flexible {
        CompactStringRef(&s.0).write(writer)
    } else {
        s.write(writer)
    }
}

pub(crate) fn read_string<R: Read>(reader: &mut R, flexible: bool) -> Result<String_, ReadError> {
    if flexible {
        Ok(String_(CompactString::read(reader)?.0))
    } else {
        String_::read(reader)
    }
}

pub(crate) fn write_nullable_string<W: Write>(
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

pub(crate) fn read_nullable_string<R: Read>(
    reader: &mut R,
    flexible: bool,
) -> Result<NullableString, ReadError> {
    if flexible {
        Ok(NullableString(CompactNullableString::read(reader)?.0))
    } else {
        NullableString::read(reader)
    }
}

pub(crate) fn write_bytes<W: Write>(
    writer: &mut W,
    b: &Bytes,
    flexible: bool,
) -> Result<(), WriteError> {
    if flexible {
        CompactBytesRef(&b.0).write(writer)
    } else {
        b.write(writer)
    }
}

pub(crate) fn read_bytes<R: Read>(reader: &mut R, flexible: bool) -> Result<Bytes, ReadError> {
    if flexible {
        Ok(Bytes(CompactBytes::read(reader)?.0))
    } else {
        Bytes::read(reader)
    }
}

/// An array of versioned structures; `None` writes a null array.
pub(crate) fn write_array<W: Write, T: WriteVersionedType<W>>(
    writer: &mut W,
    version: ApiVersion,
    data: Option<&[T]>,
    flexible: bool,
) -> Result<(), WriteVersionedError> {
    if flexible {
        write_compact_versioned_array(writer, version, data)
    } else {
        write_versioned_array(writer, version, data)
    }
}

pub(crate) fn read_array<R: Read, T: ReadVersionedType<R>>(
    reader: &mut R,
    version: ApiVersion,
    flexible: bool,
) -> Result<Option<Vec<T>>, ReadVersionedError> {
    if flexible {
        read_compact_versioned_array(reader, version)
    } else {
        read_versioned_array(reader, version)
    }
}

/// The length of an array of primitives (`[]int32`, `[]string`).
fn write_len<W: Write>(writer: &mut W, len: usize, flexible: bool) -> Result<(), WriteError> {
    if flexible {
        UnsignedVarint(u64::try_from(len + 1).map_err(WriteError::from)?).write(writer)
    } else {
        Int32(i32::try_from(len).map_err(WriteError::from)?).write(writer)
    }
}

/// The length of an array of primitives; `None` for a null array.
fn read_len<R: Read>(reader: &mut R, flexible: bool) -> Result<Option<usize>, ReadError> {
    if flexible {
        match UnsignedVarint::read(reader)?.0 {
            0 => Ok(None),
            n => Ok(Some(usize::try_from(n - 1).map_err(ReadError::Overflow)?)),
        }
    } else {
        match Int32::read(reader)?.0 {
            -1 => Ok(None),
            n if n < -1 => Err(ReadError::Malformed(
                format!("Invalid negative length for array: {n}").into(),
            )),
            n => Ok(Some(usize::try_from(n).map_err(ReadError::Overflow)?)),
        }
    }
}

pub(crate) fn write_int32_array<W: Write>(
    writer: &mut W,
    data: &[Int32],
    flexible: bool,
) -> Result<(), WriteError> {
    write_len(writer, data.len(), flexible)?;
    for i in data {
        i.write(writer)?;
    }
    Ok(())
}

/// A non-nullable `[]int32` (a null one reads as empty).
pub(crate) fn read_int32_array<R: Read>(
    reader: &mut R,
    flexible: bool,
) -> Result<Vec<Int32>, ReadError> {
    let len = read_len(reader, flexible)?.unwrap_or_default();
    let mut builder = VecBuilder::new(len);
    for _ in 0..len {
        builder.push(Int32::read(reader)?);
    }
    Ok(builder.into())
}

pub(crate) fn write_string_array<W: Write>(
    writer: &mut W,
    data: &[String_],
    flexible: bool,
) -> Result<(), WriteError> {
    write_len(writer, data.len(), flexible)?;
    for s in data {
        write_string(writer, s, flexible)?;
    }
    Ok(())
}

/// A non-nullable `[]string` (a null one reads as empty).
pub(crate) fn read_string_array<R: Read>(
    reader: &mut R,
    flexible: bool,
) -> Result<Vec<String_>, ReadError> {
    let len = read_len(reader, flexible)?.unwrap_or_default();
    let mut builder = VecBuilder::new(len);
    for _ in 0..len {
        builder.push(read_string(reader, flexible)?);
    }
    Ok(builder.into())
}

/// The tagged fields of a flexible version (none written when `tagged_fields` is `None`);
/// nothing in a classic version.
pub(crate) fn write_tagged_fields<W: Write>(
    writer: &mut W,
    tagged_fields: Option<&TaggedFields>,
    flexible: bool,
) -> Result<(), WriteError> {
    if !flexible {
        return Ok(());
    }
    match tagged_fields {
        Some(tagged_fields) => tagged_fields.write(writer),
        None => TaggedFields::default().write(writer),
    }
}

pub(crate) fn read_tagged_fields<R: Read>(
    reader: &mut R,
    flexible: bool,
) -> Result<Option<TaggedFields>, ReadError> {
    flexible.then(|| TaggedFields::read(reader)).transpose()
}
