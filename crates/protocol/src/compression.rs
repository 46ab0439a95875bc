//! Record batch compression codecs (the attributes' low 3 bits): gzip, snappy (Kafka's
//! xerial framing; raw snappy read too, as Kafka does), lz4 (the LZ4 frame format) and
//! zstd. The broker stores batches as produced, so it only decompresses for lookups inside a
//! batch (ListOffsets by timestamp); compaction will recompress with [`compress`].
//! Decompression stops at a caller's byte bound, so a small hostile batch cannot expand
//! into unbounded memory.

use std::io::{self, Read, Write};

/// A batch's compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

#[derive(Debug, thiserror::Error)]
pub enum CompressionError {
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
    #[error("decompressed data exceeds {0} bytes")]
    TooLarge(usize),
    #[error("{codec:?} data is malformed: {why}")]
    Malformed { codec: Codec, why: String },
}

impl Codec {
    /// The codec of a batch's `attributes`.
    pub fn of_attributes(attributes: i16) -> Result<Codec, CompressionError> {
        match (attributes & 0x7) as u8 {
            0 => Ok(Codec::None),
            1 => Ok(Codec::Gzip),
            2 => Ok(Codec::Snappy),
            3 => Ok(Codec::Lz4),
            4 => Ok(Codec::Zstd),
            other => Err(CompressionError::UnknownCodec(other)),
        }
    }

    /// The attributes bits of this codec.
    pub fn attribute_bits(self) -> i16 {
        match self {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Snappy => 2,
            Codec::Lz4 => 3,
            Codec::Zstd => 4,
        }
    }

    fn malformed(self, why: impl ToString) -> CompressionError {
        CompressionError::Malformed {
            codec: self,
            why: why.to_string(),
        }
    }
}

/// snappy-java's stream header: magic, version 1, compatible version 1.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;
/// snappy-java's block size.
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;

/// Most bytes of history a zstd frame may ask its decoder to keep (2^24, 16 MiB): producers'
/// zstd (librdkafka, zstd-jni) use windows of at most a few MiB; a frame asking for more is
/// refused instead of making a lookup allocate up to zstd's default limit of 128 MiB.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// A reader of the decompressed `data`, for walking records without holding them all: its
/// memory is the codec's own (at most a 16 MiB zstd window, a 4 MiB lz4 block, a 32 KiB
/// gzip window, one snappy block), whatever the data expands to.
/// `bytes_max` bounds only what is decompressed before the reader is handed out (a raw snappy
/// batch is one block, decoded whole); the caller bounds what it reads.
pub fn decompressor<'a>(
    codec: Codec,
    data: &'a [u8],
    bytes_max: usize,
) -> Result<Box<dyn Read + 'a>, CompressionError> {
    Ok(match codec {
        Codec::None => Box::new(data),
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(data)),
        Codec::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(data)),
        Codec::Zstd => {
            let mut d =
                zstd::stream::read::Decoder::with_buffer(data).map_err(|e| codec.malformed(e))?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| codec.malformed(e))?;
            Box::new(d)
        }
        Codec::Snappy => {
            if data.len() >= XERIAL_HEADER_BYTES && data.starts_with(XERIAL_MAGIC) {
                Box::new(XerialReader {
                    rest: &data[XERIAL_HEADER_BYTES..],
                    block: Vec::new(),
                    at: 0,
                })
            } else {
                // Raw snappy is one block: its size is bounded by what a block can expand to.
                let mut out = Vec::new();
                snappy_block(data, &mut out, bytes_max.min(SNAPPY_BLOCK_BYTES_MAX))?;
                Box::new(io::Cursor::new(out))
            }
        }
    })
}

/// Largest decompressed snappy block a reader accepts (snappy-java writes 32 KiB blocks;
/// a raw snappy batch from another client is one block of the whole records section).
const SNAPPY_BLOCK_BYTES_MAX: usize = 64 * 1024 * 1024;

/// snappy-java's framing read block by block.
struct XerialReader<'a> {
    rest: &'a [u8],
    block: Vec<u8>,
    at: usize,
}

impl Read for XerialReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.block.len() {
            if self.rest.is_empty() {
                return Ok(0);
            }
            let malformed = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
            let (len, after) = self
                .rest
                .split_first_chunk::<4>()
                .ok_or_else(|| malformed("truncated snappy block length"))?;
            let len = u32::from_be_bytes(*len) as usize;
            let block = after
                .get(..len)
                .ok_or_else(|| malformed("truncated snappy block"))?;
            self.block.clear();
            self.at = 0;
            snappy_block(block, &mut self.block, SNAPPY_BLOCK_BYTES_MAX)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            self.rest = &after[len..];
        }
        let n = buf.len().min(self.block.len() - self.at);
        buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Decompresses `data`, failing once the output would exceed `bytes_max`.
pub fn decompress(
    codec: Codec,
    data: &[u8],
    bytes_max: usize,
) -> Result<Vec<u8>, CompressionError> {
    match codec {
        Codec::None => {
            if data.len() > bytes_max {
                return Err(CompressionError::TooLarge(bytes_max));
            }
            Ok(data.to_vec())
        }
        Codec::Gzip => read_bounded(codec, flate2::read::MultiGzDecoder::new(data), bytes_max),
        Codec::Lz4 => read_bounded(codec, lz4_flex::frame::FrameDecoder::new(data), bytes_max),
        Codec::Zstd => {
            let mut decoder =
                zstd::stream::read::Decoder::new(data).map_err(|e| codec.malformed(e))?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| codec.malformed(e))?;
            read_bounded(codec, decoder, bytes_max)
        }
        Codec::Snappy => {
            if data.len() >= XERIAL_HEADER_BYTES && data.starts_with(XERIAL_MAGIC) {
                xerial_decompress(&data[XERIAL_HEADER_BYTES..], bytes_max)
            } else {
                let mut out = Vec::new();
                snappy_block(data, &mut out, bytes_max)?;
                Ok(out)
            }
        }
    }
}

fn read_bounded(
    codec: Codec,
    reader: impl Read,
    bytes_max: usize,
) -> Result<Vec<u8>, CompressionError> {
    let mut out = Vec::new();
    reader
        .take(bytes_max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| codec.malformed(e))?;
    if out.len() > bytes_max {
        return Err(CompressionError::TooLarge(bytes_max));
    }
    Ok(out)
}

/// Most bytes one byte of a snappy block can decode to: the densest element is a 3-byte copy
/// of 64 bytes (about 21.3 per byte), so a block claiming more than this times its own length
/// cannot hold it, and is refused before its claimed length is allocated.
const SNAPPY_EXPANSION_MAX: usize = 22;

/// Appends one raw snappy block's contents to `out`. The length the block claims is checked
/// against `bytes_max` and against what the block can really expand to before anything is
/// allocated, so a few bytes claiming 64 MiB cost nothing.
fn snappy_block(block: &[u8], out: &mut Vec<u8>, bytes_max: usize) -> Result<(), CompressionError> {
    let len = snap::raw::decompress_len(block).map_err(|e| Codec::Snappy.malformed(e))?;
    if out.len().saturating_add(len) > bytes_max {
        return Err(CompressionError::TooLarge(bytes_max));
    }
    if len > block.len().saturating_mul(SNAPPY_EXPANSION_MAX) {
        return Err(
            Codec::Snappy.malformed(format!("a {}-byte block claims {len} bytes", block.len()))
        );
    }
    let at = out.len();
    out.resize(at + len, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[at..])
        .map_err(|e| Codec::Snappy.malformed(e))?;
    Ok(())
}

/// snappy-java framing: blocks of (big-endian u32 length, raw snappy block).
fn xerial_decompress(mut rest: &[u8], bytes_max: usize) -> Result<Vec<u8>, CompressionError> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, after) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| Codec::Snappy.malformed("truncated block length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let block = after
            .get(..len)
            .ok_or_else(|| Codec::Snappy.malformed("truncated block"))?;
        snappy_block(block, &mut out, bytes_max)?;
        rest = &after[len..];
    }
    Ok(out)
}

/// Compresses `data` as Kafka's clients do (snappy in xerial framing, lz4 as an LZ4 frame,
/// zstd at its default level).
pub fn compress(codec: Codec, data: &[u8]) -> Result<Vec<u8>, CompressionError> {
    let io_err = |e: io::Error| codec.malformed(e);
    match codec {
        Codec::None => Ok(data.to_vec()),
        Codec::Gzip => {
            let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            w.write_all(data).map_err(io_err)?;
            w.finish().map_err(io_err)
        }
        Codec::Lz4 => {
            let mut w = lz4_flex::frame::FrameEncoder::new(Vec::new());
            w.write_all(data).map_err(io_err)?;
            w.finish().map_err(|e| codec.malformed(e))
        }
        Codec::Zstd => zstd::stream::encode_all(data, 0).map_err(io_err),
        Codec::Snappy => {
            let mut out = Vec::with_capacity(XERIAL_HEADER_BYTES + data.len());
            out.extend_from_slice(XERIAL_MAGIC);
            out.extend_from_slice(&1u32.to_be_bytes());
            out.extend_from_slice(&1u32.to_be_bytes());
            let mut encoder = snap::raw::Encoder::new();
            for chunk in data.chunks(XERIAL_BLOCK_BYTES) {
                let block = encoder
                    .compress_vec(chunk)
                    .map_err(|e| codec.malformed(e))?;
                out.extend_from_slice(&(block.len() as u32).to_be_bytes());
                out.extend_from_slice(&block);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Codec; 5] = [
        Codec::None,
        Codec::Gzip,
        Codec::Snappy,
        Codec::Lz4,
        Codec::Zstd,
    ];

    #[test]
    fn every_codec_round_trips_and_stops_at_the_bound() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in ALL {
            let packed = compress(codec, &data).unwrap();
            assert_eq!(
                decompress(codec, &packed, data.len()).unwrap(),
                data,
                "{codec:?}"
            );
            assert!(
                matches!(
                    decompress(codec, &packed, data.len() - 1),
                    Err(CompressionError::TooLarge(_))
                ),
                "{codec:?}"
            );
            assert_eq!(
                Codec::of_attributes(codec.attribute_bits() | 0x18).unwrap(),
                codec
            );
        }
        assert!(Codec::of_attributes(5).is_err());
    }

    #[test]
    fn streaming_readers_give_the_same_bytes() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 997).to_le_bytes())
            .collect();
        for codec in ALL {
            let packed = compress(codec, &data).unwrap();
            let mut out = Vec::new();
            decompressor(codec, &packed, usize::MAX)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data, "{codec:?}");
        }
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        let mut out = Vec::new();
        decompressor(Codec::Snappy, &raw, data.len())
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn a_raw_snappy_block_claiming_more_than_it_can_hold_is_refused_before_allocating() {
        // Five bytes whose length varint claims 60 MiB: under every bound, but no 4-byte
        // body decodes to it, so it is refused before 60 MiB are zero-filled.
        let mut block = Vec::new();
        let mut claim = 60u32 << 20;
        while claim >= 0x80 {
            block.push((claim as u8) | 0x80);
            claim >>= 7;
        }
        block.push(claim as u8);
        block.extend_from_slice(&[0, 0, 0, 0]);
        let e = decompress(Codec::Snappy, &block, 256 << 20).unwrap_err();
        assert!(e.to_string().contains("claims"), "{e}");
        let e = decompressor(Codec::Snappy, &block, usize::MAX)
            .err()
            .unwrap();
        assert!(e.to_string().contains("claims"), "{e}");
        // A lookup bound below the claim is met before anything is allocated.
        let raw = snap::raw::Encoder::new()
            .compress_vec(&[0u8; 4096])
            .unwrap();
        assert!(matches!(
            decompressor(Codec::Snappy, &raw, 4095),
            Err(CompressionError::TooLarge(4095))
        ));
    }

    #[test]
    fn raw_snappy_is_read_too_and_garbage_is_an_error() {
        let raw = snap::raw::Encoder::new()
            .compress_vec(b"hello hello hello")
            .unwrap();
        assert_eq!(
            decompress(Codec::Snappy, &raw, 100).unwrap(),
            b"hello hello hello"
        );
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            assert!(
                decompress(
                    codec,
                    b"\x82SNAPPY\x00\0\0\0\x01\0\0\0\x01\xff\xff\xff\xff",
                    100
                )
                .is_err(),
                "{codec:?}"
            );
        }
    }
}
