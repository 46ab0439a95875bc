//! Encoding responses whose record sections come from files, without copying them.
//!
//! A Fetch response puts each partition's records between other fields, so the encoder works
//! in one pass over kafka-protocol's own encoding: each partition's `records` is set to a
//! *placeholder* — a slice of a static zero region of the right length — and the response is
//! encoded through [`GatherBuf`], a `ByteBufMut` that copies every other write but, when it is
//! asked to write bytes that lie in the zero region, records a hole of that length instead.
//! The holes are then filled, in order, with the file ranges. The bytes on the wire are
//! identical to an in-memory encode of the same records (tested for every Fetch version).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;
use std::ops::Range;

/// Largest record section one placeholder can stand for. The broker keeps every record
/// section below it by construction (`--fetch-max-bytes` and `--max-message-bytes` are
/// refused above it); [`placeholder`] still checks, so a section that slips past is an error
/// for its partition, never a panic.
pub const PLACEHOLDER_BYTES_MAX: usize = 256 << 20;

/// A record section longer than [`PLACEHOLDER_BYTES_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "record section of {bytes} bytes exceeds the {PLACEHOLDER_BYTES_MAX}-byte placeholder limit"
)]
pub struct SectionTooLarge {
    pub bytes: usize,
}

// Never read or written: only the addresses of its bytes are compared. An interior-mutable
// element type puts it in .bss, so it costs address space, not binary size or memory.
static ZEROS: [std::sync::atomic::AtomicU8; PLACEHOLDER_BYTES_MAX] =
    [const { std::sync::atomic::AtomicU8::new(0) }; PLACEHOLDER_BYTES_MAX];

fn zeros() -> &'static [u8] {
    // SAFETY: AtomicU8 has the layout of u8; nothing ever stores to ZEROS, so a shared byte
    // view of it is never aliased by a write.
    unsafe { std::slice::from_raw_parts(ZEROS.as_ptr() as *const u8, PLACEHOLDER_BYTES_MAX) }
}

/// A placeholder for `len` record bytes to be taken from a file.
pub fn placeholder(len: usize) -> Result<Bytes, SectionTooLarge> {
    match zeros().get(..len) {
        Some(region) => Ok(Bytes::from_static(region)),
        None => Err(SectionTooLarge { bytes: len }),
    }
}

fn is_placeholder(src: &[u8]) -> bool {
    let zeros = zeros().as_ptr_range();
    !src.is_empty() && zeros.contains(&src.as_ptr())
}

/// One piece of an encoded response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Mem(Bytes),
    /// A hole of this many bytes for the next file-backed record section.
    Hole(usize),
}

/// A `ByteBufMut` that copies ordinary writes and turns placeholder writes into holes.
#[derive(Default)]
pub struct GatherBuf {
    pieces: Vec<Piece>,
    current: BytesMut,
    /// Bytes in `pieces` (memory and holes) before `current`.
    flushed: usize,
}

impl GatherBuf {
    pub fn with_capacity(bytes: usize) -> GatherBuf {
        GatherBuf {
            pieces: Vec::new(),
            current: BytesMut::with_capacity(bytes),
            flushed: 0,
        }
    }

    fn flush(&mut self) {
        if !self.current.is_empty() {
            let mem = self.current.split().freeze();
            self.flushed += mem.len();
            self.pieces.push(Piece::Mem(mem));
        }
    }

    /// The pieces, in wire order.
    pub fn finish(mut self) -> Vec<Piece> {
        self.flush();
        self.pieces
    }
}

// SAFETY: every method delegates to the BytesMut being filled; `put_slice` only diverts
// placeholder slices, which it never reads.
unsafe impl BufMut for GatherBuf {
    fn remaining_mut(&self) -> usize {
        self.current.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: forwarded contract: the caller initialised `cnt` bytes of chunk_mut.
        unsafe { self.current.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        self.current.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        if is_placeholder(src) {
            self.flush();
            self.flushed += src.len();
            self.pieces.push(Piece::Hole(src.len()));
        } else {
            self.current.extend_from_slice(src);
        }
    }
}

impl ByteBufMut for GatherBuf {
    fn offset(&self) -> usize {
        self.flushed + self.current.len()
    }

    fn seek(&mut self, offset: usize) {
        assert!(
            offset >= self.flushed,
            "GatherBuf cannot seek back past a flushed piece"
        );
        self.current.resize(offset - self.flushed, 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        assert!(
            r.start >= self.flushed,
            "GatherBuf cannot revisit a flushed piece"
        );
        &mut self.current[r.start - self.flushed..r.end - self.flushed]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{FetchResponse, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn response(records: &[Bytes], version: i16) -> FetchResponse {
        let partitions = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                PartitionData::default()
                    .with_partition_index(i as i32)
                    .with_high_watermark(9)
                    .with_records(Some(r.clone()))
            })
            .collect();
        let topic = FetchableTopicResponse::default().with_partitions(partitions);
        let topic = if version >= 13 {
            topic.with_topic_id(uuid::Uuid::from_u128(7))
        } else {
            topic.with_topic(TopicName(StrBytes::from_static_str("t")))
        };
        FetchResponse::default().with_responses(vec![topic])
    }

    #[test]
    fn holes_filled_with_the_records_equal_an_in_memory_encode_for_every_fetch_version() {
        let records = [
            Bytes::from_static(b"first-records"),
            Bytes::new(),
            Bytes::from(vec![7u8; 70_000]),
        ];
        for version in 4..=17 {
            let mut plain = BytesMut::new();
            response(&records, version)
                .encode(&mut plain, version)
                .unwrap();

            let with_holes = response(
                &records.clone().map(|r| {
                    if r.is_empty() {
                        r
                    } else {
                        placeholder(r.len()).unwrap()
                    }
                }),
                version,
            );
            assert_eq!(with_holes.compute_size(version).unwrap(), plain.len());
            let mut buf = GatherBuf::default();
            with_holes.encode(&mut buf, version).unwrap();
            let mut file_sections = records.iter().filter(|r| !r.is_empty());
            let mut rebuilt = Vec::new();
            for piece in buf.finish() {
                match piece {
                    Piece::Mem(b) => rebuilt.extend_from_slice(&b),
                    Piece::Hole(n) => {
                        let r = file_sections
                            .next()
                            .expect("one hole per non-empty section");
                        assert_eq!(n, r.len());
                        rebuilt.extend_from_slice(r);
                    }
                }
            }
            assert!(file_sections.next().is_none());
            assert_eq!(rebuilt, plain.to_vec(), "Fetch v{version}");
        }
    }

    #[test]
    fn a_section_beyond_the_placeholder_limit_is_an_error_not_a_panic() {
        assert_eq!(
            placeholder(PLACEHOLDER_BYTES_MAX).map(|b| b.len()),
            Ok(PLACEHOLDER_BYTES_MAX)
        );
        assert_eq!(
            placeholder(PLACEHOLDER_BYTES_MAX + 1),
            Err(SectionTooLarge {
                bytes: PLACEHOLDER_BYTES_MAX + 1
            })
        );
        assert!(placeholder(1_000_000_000).is_err());
    }
}
