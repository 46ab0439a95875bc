//! Response frames: size prefix, response header (v0, or v1 with tagged fields for flexible
//! versions; ApiVersions always v0), then the body.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader};
use kafka_protocol::protocol::Encodable;

/// Encodes one whole response frame.
pub fn encode_response<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Bytes, EncodeError> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = api.response_header_version(version);
    let size = header.compute_size(header_version).map_err(encode_error)?
        + body.compute_size(version).map_err(encode_error)?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(size as i32);
    header
        .encode(&mut buf, header_version)
        .map_err(encode_error)?;
    body.encode(&mut buf, version).map_err(encode_error)?;
    debug_assert_eq!(buf.len(), 4 + size, "compute_size disagrees with encode");
    Ok(buf.freeze())
}

/// Encodes one whole response frame as pieces: memory, and holes where record sections set
/// to [`crate::gather::placeholder`]s go (to be filled from files, in order).
pub fn encode_response_gather<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Vec<crate::gather::Piece>, EncodeError> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = api.response_header_version(version);
    let size = header.compute_size(header_version).map_err(encode_error)?
        + body.compute_size(version).map_err(encode_error)?;
    let mut buf = crate::gather::GatherBuf::with_capacity(256);
    buf.put_i32(size as i32);
    header
        .encode(&mut buf, header_version)
        .map_err(encode_error)?;
    body.encode(&mut buf, version).map_err(encode_error)?;
    debug_assert_eq!(
        kafka_protocol::protocol::buf::ByteBufMut::offset(&buf),
        4 + size
    );
    Ok(buf.finish())
}

/// A response that kafka-protocol refused to encode (a field set that the version lacks).
#[derive(Debug, thiserror::Error)]
#[error("encoding failed: {0}")]
pub struct EncodeError(pub String);

fn encode_error(e: impl std::fmt::Display) -> EncodeError {
    EncodeError(e.to_string())
}
