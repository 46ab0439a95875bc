//! Kafka wire protocol glue for ringbroker.
//!
//! - [`frame`]: 4-byte size-prefixed frames, bounded by `frame_bytes_max` before any
//!   allocation.
//! - [`request`]: the request header (API key, version, correlation id, client id), routing
//!   errors (unknown API, unsupported version) decided before the body is decoded.
//! - [`response`]: a response frame (size, header, body) encoded with kafka-protocol types.
//! - [`gather`]: responses whose record sections stay in files (holes filled by splice).
//! - [`batch`]: RecordBatch v2 validation (magic, lengths, CRC32C, record count) and the
//!   offset patch (baseOffset sits outside the CRC, so it is replaced without re-hashing).
//! - [`compression`]: the batch codecs (gzip, snappy, lz4, zstd), bounded decompression.
//! - [`records`]: each record's offset and timestamp inside a stored batch, for lookups.
//!
//! Message types come from the `kafka-protocol` crate; this crate owns what it does not do.

pub mod alloc;
pub mod batch;
pub mod compression;
pub mod frame;
pub mod gather;
pub mod records;
pub mod request;
pub mod response;

pub use kafka_protocol;
