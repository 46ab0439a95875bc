//! The records inside a stored batch, as far as lookups by timestamp need them: each
//! record's offset and timestamp, read through a decompressing reader when the batch is
//! compressed, so a lookup holds one codec window, never the decompressed batch. Records are
//! `length, attributes, timestampDelta, offsetDelta, key, value, headers` (varints); only the
//! first three fields are read, the rest is skipped.

use crate::batch::{BatchHeader, HEADER_BYTES};
use crate::compression::{decompressor, Codec, CompressionError};
use std::io::{self, Read};

/// Most decompressed record bytes any walk of one batch reads (a batch is at most
/// `max.message.bytes` compressed; this bounds the work a hostile one that expands enormously
/// costs). Lookups on a serving path pass a tighter bound of their own.
pub const DECOMPRESSED_BATCH_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Attributes bit 3: the batch carries the broker's append time, its records' own
/// timestamps do not count (Kafka gives every record the batch's max timestamp).
const LOG_APPEND_TIME: i16 = 0x8;

#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error("the batch header is malformed")]
    BadHeader,
    #[error("the records of the batch are malformed")]
    Malformed,
    #[error("the records of the batch expand beyond the bound of the walk")]
    TooLarge,
    #[error(transparent)]
    Compression(#[from] CompressionError),
}

/// Reads one zig-zag varint; `None` at a clean end of the input.
fn read_varint(r: &mut impl Read) -> Result<Option<i64>, RecordsError> {
    let mut raw: u64 = 0;
    for i in 0..10 {
        let mut b = [0u8; 1];
        match r.read_exact(&mut b) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && i == 0 => return Ok(None),
            Err(_) => return Err(RecordsError::Malformed),
        }
        raw |= ((b[0] & 0x7f) as u64) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(Some(((raw >> 1) as i64) ^ -((raw & 1) as i64)));
        }
    }
    Err(RecordsError::Malformed)
}

/// Calls `visit(offset, timestamp)` for each record of a whole batch, in order, until it
/// returns true; returns that record. Walking more than `bytes_max` decompressed bytes (at
/// most DECOMPRESSED_BATCH_BYTES_MAX) is `TooLarge`.
pub fn find_record(
    batch: &[u8],
    bytes_max: u64,
    mut visit: impl FnMut(i64, i64) -> bool,
) -> Result<Option<(i64, i64)>, RecordsError> {
    find_record_with_key(batch, bytes_max, |o, t, _| visit(o, t))
}

/// The index in its batch of the first record without a key (key length -1), walking at most
/// `bytes_max` decompressed bytes (beyond: `TooLarge`). A compacted topic refuses such
/// records (Kafka's LogValidator), compressed batches included.
pub fn first_keyless_record(batch: &[u8], bytes_max: u64) -> Result<Option<i32>, RecordsError> {
    let mut index: i32 = 0;
    let found = find_record_with_key(batch, bytes_max, |_, _, key_len| {
        if key_len < 0 {
            return true;
        }
        index = index.saturating_add(1);
        false
    })?;
    Ok(found.map(|_| index))
}

/// `find_record` with each record's key length (-1: no key) given to `visit` too.
fn find_record_with_key(
    batch: &[u8],
    bytes_max: u64,
    visit: impl FnMut(i64, i64, i64) -> bool,
) -> Result<Option<(i64, i64)>, RecordsError> {
    let bytes_max = bytes_max.min(DECOMPRESSED_BATCH_BYTES_MAX);
    let h = BatchHeader::parse(batch).map_err(|_| RecordsError::BadHeader)?;
    let body = batch
        .get(HEADER_BYTES..h.total_bytes)
        .ok_or(RecordsError::BadHeader)?;
    let codec = Codec::of_attributes(h.attributes)?;
    let reader = match decompressor(codec, body, bytes_max as usize) {
        Ok(r) => io::BufReader::new(r),
        Err(CompressionError::TooLarge(_)) => return Err(RecordsError::TooLarge),
        Err(e) => return Err(e.into()),
    };
    // One byte past the bound tells a batch that reaches it from one that exceeds it.
    let mut reader = reader.take(bytes_max + 1);
    match walk(&mut reader, &h, visit) {
        // A record cut short by the bound is not malformed: the batch is too large to walk.
        Err(RecordsError::Malformed) if reader.limit() == 0 => Err(RecordsError::TooLarge),
        other => other,
    }
}

/// The records of `h`'s batch read from `reader`, as `find_record` walks them.
fn walk(
    reader: &mut io::Take<impl Read>,
    h: &BatchHeader,
    mut visit: impl FnMut(i64, i64, i64) -> bool,
) -> Result<Option<(i64, i64)>, RecordsError> {
    let mut count: i64 = 0;
    while let Some(len) = read_varint(reader)? {
        let len = u64::try_from(len).map_err(|_| RecordsError::Malformed)?;
        let before = reader.limit();
        let mut attributes = [0u8; 1];
        reader
            .read_exact(&mut attributes)
            .map_err(|_| RecordsError::Malformed)?;
        let ts_delta = read_varint(reader)?.ok_or(RecordsError::Malformed)?;
        let offset_delta = read_varint(reader)?.ok_or(RecordsError::Malformed)?;
        // A record that ends before its key field has no key (lookups tolerate it).
        let key_len = if len > before - reader.limit() {
            read_varint(reader)?.ok_or(RecordsError::Malformed)?
        } else {
            -1
        };
        let used = before - reader.limit();
        let rest = len.checked_sub(used).ok_or(RecordsError::Malformed)?;
        let skipped = io::copy(&mut reader.take(rest), &mut io::sink())
            .map_err(|_| RecordsError::Malformed)?;
        if skipped != rest {
            return Err(RecordsError::Malformed);
        }
        if reader.limit() == 0 {
            return Err(RecordsError::TooLarge);
        }
        let timestamp = if h.attributes & LOG_APPEND_TIME != 0 {
            h.max_timestamp
        } else {
            h.base_timestamp.wrapping_add(ts_delta)
        };
        let offset = h.base_offset.wrapping_add(offset_delta);
        if visit(offset, timestamp, key_len) {
            return Ok(Some((offset, timestamp)));
        }
        count += 1;
        if count > h.records_count.max(0) as i64 {
            return Err(RecordsError::Malformed);
        }
    }
    Ok(None)
}

/// `(offset, timestamp)` of every record of a whole batch, in order (tests and tools).
pub fn offsets_and_timestamps(batch: &[u8]) -> Result<Vec<(i64, i64)>, RecordsError> {
    let mut out = Vec::new();
    find_record(batch, DECOMPRESSED_BATCH_BYTES_MAX, |o, t| {
        out.push((o, t));
        false
    })?;
    Ok(out)
}

/// In a whole batch (compressed or not), the first record at or above `offset_min` whose
/// timestamp is at or after `timestamp`: `(offset, timestamp)`, walking at most `bytes_max`
/// decompressed bytes (beyond: `TooLarge`).
pub fn first_at_or_after(
    batch: &[u8],
    timestamp: i64,
    offset_min: i64,
    bytes_max: u64,
) -> Result<Option<(i64, i64)>, RecordsError> {
    find_record(batch, bytes_max, |o, t| o >= offset_min && t >= timestamp)
}

/// Test and tooling helper: a v2 batch of `records` `(timestamp, value)` compressed with
/// `codec`, offsets from `base_offset`.
pub fn build_compressed_batch(
    codec: Codec,
    base_offset: i64,
    records: &[(i64, &[u8])],
) -> Result<Vec<u8>, CompressionError> {
    let values: Vec<&[u8]> = records.iter().map(|r| r.1).collect();
    let plain = crate::batch::build_batch(base_offset, 0, &values);
    // Rewrite each record's timestamp delta: rebuild the records section.
    let base_ts = records.iter().map(|r| r.0).min().unwrap_or(0);
    let max_ts = records.iter().map(|r| r.0).max().unwrap_or(0);
    let mut section = Vec::new();
    for (i, (ts, v)) in records.iter().enumerate() {
        let mut body = vec![0u8];
        put_varint(&mut body, ts - base_ts);
        put_varint(&mut body, i as i64);
        put_varint(&mut body, -1);
        put_varint(&mut body, v.len() as i64);
        body.extend_from_slice(v);
        put_varint(&mut body, 0);
        put_varint(&mut section, body.len() as i64);
        section.extend_from_slice(&body);
    }
    let mut b = plain[..HEADER_BYTES].to_vec();
    b.extend_from_slice(&crate::compression::compress(codec, &section)?);
    Ok(seal(b, codec, base_ts, max_ts))
}

/// Test and tooling helper: a v2 batch around an arbitrary records `section` (e.g. one that
/// claims far more records than it holds usefully), compressed with `codec`, its header
/// claiming `records_count` records, `base_ts` and `max_ts`, CRC valid.
pub fn build_batch_around(
    codec: Codec,
    base_offset: i64,
    records_count: i32,
    (base_ts, max_ts): (i64, i64),
    section: &[u8],
) -> Result<Vec<u8>, CompressionError> {
    let mut b = crate::batch::build_batch(base_offset, 0, &[b""])[..HEADER_BYTES].to_vec();
    b[57..61].copy_from_slice(&records_count.to_be_bytes());
    b[23..27].copy_from_slice(&(records_count - 1).to_be_bytes());
    b.extend_from_slice(&crate::compression::compress(codec, section)?);
    Ok(seal(b, codec, base_ts, max_ts))
}

/// Sets a built batch's length, codec, timestamps and CRC.
fn seal(mut b: Vec<u8>, codec: Codec, base_ts: i64, max_ts: i64) -> Vec<u8> {
    let batch_length = (b.len() - crate::batch::LOG_OVERHEAD) as i32;
    b[8..12].copy_from_slice(&batch_length.to_be_bytes());
    b[21..23].copy_from_slice(&codec.attribute_bits().to_be_bytes());
    b[27..35].copy_from_slice(&base_ts.to_be_bytes());
    b[35..43].copy_from_slice(&max_ts.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Test and tooling helper: the records section of a decompression bomb, `count` records of
/// 4 bytes each (length 3, attributes, timestamp delta 0, offset delta 0; no key, value or
/// headers, which a walk skips as part of the record), all alike, so it compresses to almost
/// nothing.
pub fn bomb_section(count: usize) -> Vec<u8> {
    [6u8, 0, 0, 0].repeat(count)
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_the_exact_record_inside_compressed_batches() {
        let records: Vec<(i64, &[u8])> =
            vec![(1000, b"a"), (1010, b"b"), (1005, b"c"), (1030, b"d")];
        for codec in [
            Codec::None,
            Codec::Gzip,
            Codec::Snappy,
            Codec::Lz4,
            Codec::Zstd,
        ] {
            let b = build_compressed_batch(codec, 40, &records).unwrap();
            assert!(crate::batch::validate_produced(&bytes::Bytes::from(b.clone())).is_ok());
            assert_eq!(
                offsets_and_timestamps(&b).unwrap(),
                vec![(40, 1000), (41, 1010), (42, 1005), (43, 1030)],
                "{codec:?}"
            );
            assert_eq!(
                first_at_or_after(&b, 1001, 0, u64::MAX).unwrap(),
                Some((41, 1010))
            );
            assert_eq!(
                first_at_or_after(&b, 1030, 0, u64::MAX).unwrap(),
                Some((43, 1030))
            );
            assert_eq!(
                first_at_or_after(&b, 1000, 42, u64::MAX).unwrap(),
                Some((42, 1005))
            );
            assert_eq!(first_at_or_after(&b, 1031, 0, u64::MAX).unwrap(), None);
            let mut log_append = b.clone();
            let bomb = build_batch_around(codec, 40, 1 << 20, (1000, 2000), &bomb_section(1 << 20))
                .unwrap();
            // 4 MiB of records walked in full, or refused past a tighter bound.
            assert_eq!(first_at_or_after(&bomb, 1001, 0, u64::MAX).unwrap(), None);
            let r = first_at_or_after(&bomb, 1001, 0, 1 << 20);
            assert!(matches!(r, Err(RecordsError::TooLarge)), "{codec:?}: {r:?}");
            assert_eq!(
                first_at_or_after(&bomb, 1000, 0, 1 << 20).unwrap(),
                Some((40, 1000))
            );
            assert_eq!(first_keyless_record(&b, u64::MAX).unwrap(), Some(0));
            log_append[22] |= 0x8;
            assert_eq!(
                first_at_or_after(&log_append, 0, 41, u64::MAX).unwrap(),
                Some((41, 1030))
            );
        }
    }

    #[test]
    fn keyless_records_are_found_in_plain_and_compressed_batches() {
        let keyed = |key: Option<&[u8]>| {
            let mut body = vec![0u8];
            put_varint(&mut body, 0);
            put_varint(&mut body, 0);
            match key {
                Some(k) => {
                    put_varint(&mut body, k.len() as i64);
                    body.extend_from_slice(k);
                }
                None => put_varint(&mut body, -1),
            }
            put_varint(&mut body, 1);
            body.push(b'v');
            put_varint(&mut body, 0);
            body
        };
        for codec in [
            Codec::None,
            Codec::Gzip,
            Codec::Lz4,
            Codec::Zstd,
            Codec::Snappy,
        ] {
            for (keys, want) in [
                (vec![Some(&b"a"[..]), Some(b""), Some(b"c")], None),
                (vec![Some(&b"a"[..]), None, Some(b"c")], Some(1)),
                (vec![None], Some(0)),
            ] {
                let mut section = Vec::new();
                for (i, k) in keys.iter().enumerate() {
                    let mut body = keyed(*k);
                    // offset delta = i
                    body[2] = (i as u8) << 1;
                    put_varint(&mut section, body.len() as i64);
                    section.extend_from_slice(&body);
                }
                let n = keys.len() as i32;
                let b = build_batch_around(codec, 0, n, (5, 5), &section).unwrap();
                assert_eq!(
                    first_keyless_record(&b, u64::MAX).unwrap(),
                    want,
                    "{codec:?} {keys:?}"
                );
            }
        }
    }
}
