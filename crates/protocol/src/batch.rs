//! RecordBatch v2, the unit clients produce and the log stores unchanged.
//!
//! ```text
//! 0  baseOffset i64 | 8 batchLength i32 | 12 partitionLeaderEpoch i32 | 16 magic i8
//! 17 crc u32 (CRC32C of bytes 21..end) | 21 attributes i16 | 23 lastOffsetDelta i32
//! 27 baseTimestamp i64 | 35 maxTimestamp i64 | 43 producerId i64 | 51 producerEpoch i16
//! 53 baseSequence i32 | 57 recordsCount i32 | 61 records
//! ```
//! baseOffset and partitionLeaderEpoch lie before the CRC'd range, so the broker assigns
//! offsets by replacing the first 8 bytes without touching the checksum.

use bytes::Bytes;

pub const HEADER_BYTES: usize = 61;
/// Bytes of a batch before the part counted by batchLength.
pub const LOG_OVERHEAD: usize = 12;
const CRC_START: usize = 21;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("no record batch in the request")]
    Empty,
    #[error("record batch truncated: {have} bytes, header says {need}")]
    Truncated { have: usize, need: usize },
    #[error("record batch length {0} is invalid")]
    BadLength(i32),
    #[error("record batch magic {0} is not 2")]
    BadMagic(i8),
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("record count {count} does not match lastOffsetDelta {last_offset_delta}")]
    CountMismatch { count: i32, last_offset_delta: i32 },
    #[error("records section does not hold the {count} records the header announces")]
    RecordsMismatch { count: i32 },
    #[error("{0} bytes follow the record batch; one batch per partition is accepted")]
    TrailingBytes(usize),
}

/// The fields of a batch header the broker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Length of the whole batch, `LOG_OVERHEAD + batchLength`.
    pub total_bytes: usize,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl BatchHeader {
    /// Parses the 61-byte header at the front of `bytes` (lengths checked, CRC not).
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < HEADER_BYTES {
            return Err(BatchError::Truncated {
                have: bytes.len(),
                need: HEADER_BYTES,
            });
        }
        let batch_length = be_i32(bytes, 8);
        if batch_length < (HEADER_BYTES - LOG_OVERHEAD) as i32 {
            return Err(BatchError::BadLength(batch_length));
        }
        Ok(BatchHeader {
            base_offset: be_i64(bytes, 0),
            total_bytes: LOG_OVERHEAD + batch_length as usize,
            magic: bytes[16] as i8,
            crc: u32::from_be_bytes(bytes[17..21].try_into().expect("4 bytes")),
            attributes: be_i16(bytes, 21),
            last_offset_delta: be_i32(bytes, 23),
            base_timestamp: be_i64(bytes, 27),
            max_timestamp: be_i64(bytes, 35),
            producer_id: be_i64(bytes, 43),
            producer_epoch: be_i16(bytes, 51),
            base_sequence: be_i32(bytes, 53),
            records_count: be_i32(bytes, 57),
        })
    }

    pub fn compression(&self) -> u8 {
        (self.attributes & 0x7) as u8
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

/// Validates the records of one produced partition: exactly one v2 batch, whole, with a good
/// CRC, and a record count that agrees with lastOffsetDelta and (when uncompressed) with the
/// records actually present.
pub fn validate_produced(records: &Bytes) -> Result<BatchHeader, BatchError> {
    if records.is_empty() {
        return Err(BatchError::Empty);
    }
    let header = BatchHeader::parse(records)?;
    if header.magic != 2 {
        return Err(BatchError::BadMagic(header.magic));
    }
    if records.len() < header.total_bytes {
        return Err(BatchError::Truncated {
            have: records.len(),
            need: header.total_bytes,
        });
    }
    if records.len() > header.total_bytes {
        return Err(BatchError::TrailingBytes(
            records.len() - header.total_bytes,
        ));
    }
    let batch = &records[..header.total_bytes];
    let computed = crc32c::crc32c(&batch[CRC_START..]);
    if computed != header.crc {
        return Err(BatchError::BadCrc {
            stored: header.crc,
            computed,
        });
    }
    if header.records_count <= 0 || header.last_offset_delta != header.records_count - 1 {
        return Err(BatchError::CountMismatch {
            count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    if header.compression() == 0
        && !records_fill_exactly(&batch[HEADER_BYTES..], header.records_count)
    {
        return Err(BatchError::RecordsMismatch {
            count: header.records_count,
        });
    }
    Ok(header)
}

/// Reads a zig-zag varint; returns (value, bytes used).
fn read_varint(bytes: &[u8]) -> Option<(i64, usize)> {
    let mut raw: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        raw |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Some((((raw >> 1) as i64) ^ -((raw & 1) as i64), i + 1));
        }
    }
    None
}

/// True when `records` is exactly `count` length-prefixed records.
fn records_fill_exactly(mut records: &[u8], count: i32) -> bool {
    for _ in 0..count {
        let Some((len, used)) = read_varint(records) else {
            return false;
        };
        if len < 0 || (len as usize) > records.len() - used {
            return false;
        }
        records = &records[used + len as usize..];
    }
    records.is_empty()
}

/// The values of the records of a whole uncompressed batch (empty for a compressed or
/// malformed one). Records: length, attributes, timestampDelta, offsetDelta, key, value, headers.
pub fn record_values(batch: &[u8]) -> Vec<&[u8]> {
    record_keys_and_values(batch)
        .into_iter()
        .filter_map(|(_, value)| value)
        .collect()
}

/// A record's key and value; `None` is null (a null value is a tombstone).
pub type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// The (key, value) of each record of a whole uncompressed batch, `None` for a null key or
/// value (a tombstone); empty for a compressed batch, cut at the first malformed record.
pub fn record_keys_and_values(batch: &[u8]) -> Vec<KeyValue<'_>> {
    let mut out = Vec::new();
    let Ok(h) = BatchHeader::parse(batch) else {
        return out;
    };
    if h.compression() != 0 || batch.len() < h.total_bytes {
        return out;
    }
    let mut rest = &batch[HEADER_BYTES..h.total_bytes];
    while !rest.is_empty() {
        let Some((len, used)) = read_varint(rest) else {
            break;
        };
        let Some(record) = usize::try_from(len)
            .ok()
            .and_then(|l| rest.get(used..used + l))
        else {
            break;
        };
        rest = &rest[used + len as usize..];
        let mut r = record.get(1..).unwrap_or_default(); // attributes
        let mut field = || -> Option<i64> {
            let (v, n) = read_varint(r)?;
            r = &r[n..];
            Some(v)
        };
        let (Some(_ts), Some(_od)) = (field(), field()) else {
            break;
        };
        let mut bytes_field = || -> Result<Option<&[u8]>, ()> {
            let (n, used) = read_varint(r).ok_or(())?;
            r = &r[used..];
            if n < 0 {
                return Ok(None);
            }
            let v = r.get(..n as usize).ok_or(())?;
            r = &r[n as usize..];
            Ok(Some(v))
        };
        let (Ok(key), Ok(value)) = (bytes_field(), bytes_field()) else {
            break;
        };
        out.push((key, value));
    }
    out
}

/// Attributes bit 3: the batch's timestamps are the broker's append time (LogAppendTime).
pub const TIMESTAMP_TYPE_LOG_APPEND_TIME: i16 = 0x08;

/// Stamps a whole, validated batch with the broker's append time, as Kafka's LogValidator does
/// for `message.timestamp.type=LogAppendTime`: the timestamp-type attribute bit is set,
/// maxTimestamp becomes `now_ms` and the CRC is recomputed. Records and baseTimestamp stay as
/// they are: readers take maxTimestamp as every record's timestamp in such a batch.
pub fn stamp_log_append_time(batch: &mut [u8], now_ms: i64) -> Result<(), BatchError> {
    let header = BatchHeader::parse(batch)?;
    if batch.len() < header.total_bytes {
        return Err(BatchError::Truncated {
            have: batch.len(),
            need: header.total_bytes,
        });
    }
    let attributes = header.attributes | TIMESTAMP_TYPE_LOG_APPEND_TIME;
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch[35..43].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..header.total_bytes]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// The smallest and largest record timestamp of a whole uncompressed batch (baseTimestamp plus
/// each record's delta); `None` for a compressed or malformed batch.
pub fn record_timestamp_range(batch: &[u8]) -> Option<(i64, i64)> {
    let h = BatchHeader::parse(batch).ok()?;
    if h.compression() != 0 || batch.len() < h.total_bytes {
        return None;
    }
    let mut rest = &batch[HEADER_BYTES..h.total_bytes];
    let mut range: Option<(i64, i64)> = None;
    while !rest.is_empty() {
        let (len, used) = read_varint(rest)?;
        let record = rest.get(used..used + usize::try_from(len).ok()?)?;
        rest = &rest[used + len as usize..];
        let (delta, _) = read_varint(record.get(1..)?)?; // after the attributes byte
        let ts = h.base_timestamp.checked_add(delta)?;
        range = Some(range.map_or((ts, ts), |(lo, hi)| (lo.min(ts), hi.max(ts))));
    }
    range
}

/// The 8 bytes that replace a batch's baseOffset when it is given `base_offset`.
pub fn base_offset_bytes(base_offset: i64) -> [u8; 8] {
    base_offset.to_be_bytes()
}

/// Test and tooling helper: builds an uncompressed v2 batch holding `values` (key-less).
pub fn build_batch(base_offset: i64, timestamp_ms: i64, values: &[&[u8]]) -> Vec<u8> {
    let records: Vec<KeyValue<'_>> = values.iter().map(|v| (None, Some(*v))).collect();
    build_keyed_batch(base_offset, timestamp_ms, &records)
}

/// Builds an uncompressed v2 batch of `records` (key, value; `None` is null: a null value is
/// a tombstone), all stamped `timestamp_ms`.
pub fn build_keyed_batch(base_offset: i64, timestamp_ms: i64, records: &[KeyValue<'_>]) -> Vec<u8> {
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
    let count = records.len();
    let mut section = Vec::new();
    for (i, (key, value)) in records.iter().enumerate() {
        let mut body = vec![0u8]; // attributes
        put_varint(&mut body, 0); // timestamp delta
        put_varint(&mut body, i as i64); // offset delta
        for field in [key, value] {
            match field {
                Some(bytes) => {
                    put_varint(&mut body, bytes.len() as i64);
                    body.extend_from_slice(bytes);
                }
                None => put_varint(&mut body, -1),
            }
        }
        put_varint(&mut body, 0); // no headers
        put_varint(&mut section, body.len() as i64);
        section.extend_from_slice(&body);
    }
    let records = section;
    let mut b = Vec::with_capacity(HEADER_BYTES + records.len());
    b.extend_from_slice(&base_offset.to_be_bytes());
    b.extend_from_slice(&((HEADER_BYTES - LOG_OVERHEAD + records.len()) as i32).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0; 4]); // crc, filled below
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(count as i32 - 1).to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&(count as i32).to_be_bytes());
    b.extend_from_slice(&records);
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Test and tooling helper: like `build_batch`, from an idempotent producer.
pub fn build_idempotent_batch(
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
    values: &[&[u8]],
) -> Vec<u8> {
    let mut b = build_batch(0, 1_700_000_000_000, values);
    b[43..51].copy_from_slice(&producer_id.to_be_bytes());
    b[51..53].copy_from_slice(&epoch.to_be_bytes());
    b[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_batches_round_trip_keys_values_and_tombstones() {
        let records: Vec<KeyValue<'_>> = vec![
            (Some(b"k1"), Some(b"v1")),
            (Some(b"k2"), None),
            (None, Some(b"v3")),
            (Some(b""), Some(b"")),
        ];
        let b = build_keyed_batch(7, 1000, &records);
        let h = validate_produced(&Bytes::from(b.clone())).unwrap();
        assert_eq!((h.base_offset, h.records_count), (7, 4));
        assert_eq!(record_keys_and_values(&b), records);
        assert_eq!(record_values(&b), vec![&b"v1"[..], b"v3", b""]);
    }
    use proptest::prelude::*;

    #[test]
    fn a_built_batch_validates() {
        let b = Bytes::from(build_batch(0, 1000, &[b"a", b"bb", b"ccc"]));
        let h = validate_produced(&b).unwrap();
        assert_eq!(
            (h.records_count, h.last_offset_delta, h.total_bytes),
            (3, 2, b.len())
        );
        assert_eq!(h.max_timestamp, 1000);
    }

    #[test]
    fn each_defect_gets_its_error() {
        let good = build_batch(0, 1, &[b"x", b"y"]);
        let mut bad_magic = good.clone();
        bad_magic[16] = 1;
        assert_eq!(
            validate_produced(&Bytes::from(bad_magic)),
            Err(BatchError::BadMagic(1))
        );
        let mut bad_crc = good.clone();
        *bad_crc.last_mut().unwrap() ^= 1;
        assert!(matches!(
            validate_produced(&Bytes::from(bad_crc)),
            Err(BatchError::BadCrc { .. })
        ));
        let short = Bytes::from(good[..good.len() - 1].to_vec());
        assert!(matches!(
            validate_produced(&short),
            Err(BatchError::Truncated { .. })
        ));
        let mut two = good.clone();
        two.extend_from_slice(&good);
        assert!(matches!(
            validate_produced(&Bytes::from(two)),
            Err(BatchError::TrailingBytes(_))
        ));
        // A count that lies about the records (CRC recomputed so only the count is wrong).
        let mut lying = good.clone();
        lying[57..61].copy_from_slice(&3i32.to_be_bytes());
        lying[23..27].copy_from_slice(&2i32.to_be_bytes());
        let crc = crc32c::crc32c(&lying[CRC_START..]);
        lying[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            validate_produced(&Bytes::from(lying)),
            Err(BatchError::RecordsMismatch { count: 3 })
        );
        assert_eq!(validate_produced(&Bytes::new()), Err(BatchError::Empty));
    }

    #[test]
    fn record_values_come_back_from_a_built_batch() {
        let b = build_batch(0, 1, &[b"one", b"", b"three"]);
        assert_eq!(
            record_values(&b),
            vec![&b"one"[..], &b""[..], &b"three"[..]]
        );
        assert!(record_values(&b[..20]).is_empty());
    }

    #[test]
    fn patching_base_offset_keeps_the_crc_valid() {
        let mut b = build_batch(0, 1, &[b"x"]);
        b[..8].copy_from_slice(&base_offset_bytes(123_456));
        let h = validate_produced(&Bytes::from(b)).unwrap();
        assert_eq!(h.base_offset, 123_456);
    }

    #[test]
    fn log_append_time_stamp_sets_the_bit_the_max_timestamp_and_a_valid_crc() {
        let mut b = build_batch(0, 1000, &[b"a", b"b"]);
        stamp_log_append_time(&mut b, 5_000).unwrap();
        let h = validate_produced(&Bytes::from(b)).unwrap();
        assert_eq!(
            h.attributes & TIMESTAMP_TYPE_LOG_APPEND_TIME,
            TIMESTAMP_TYPE_LOG_APPEND_TIME
        );
        assert_eq!((h.base_timestamp, h.max_timestamp), (1000, 5_000));
    }

    #[test]
    fn record_timestamps_come_back_from_a_built_batch() {
        let b = build_batch(0, 1234, &[b"a", b"b"]);
        assert_eq!(record_timestamp_range(&b), Some((1234, 1234)));
        assert_eq!(record_timestamp_range(&b[..30]), None);
    }

    proptest! {
        #[test]
        fn built_batches_always_validate(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..50), base in 0i64..i64::MAX / 2) {
            let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
            let b = Bytes::from(build_batch(base, 7, &refs));
            let h = validate_produced(&b).unwrap();
            prop_assert_eq!(h.records_count as usize, values.len());
            prop_assert_eq!(h.base_offset, base);
        }

        #[test]
        fn any_single_byte_flip_after_the_offset_fields_is_caught(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..50), 1..10), pos in 16usize..4000, bit in 0u8..8) {
            let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
            let mut b = build_batch(0, 7, &refs);
            let pos = 16 + pos % (b.len() - 16);
            b[pos] ^= 1 << bit;
            prop_assert!(validate_produced(&Bytes::from(b)).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = validate_produced(&Bytes::from(bytes));
        }
    }
}
