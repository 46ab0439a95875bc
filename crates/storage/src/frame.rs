//! Batch framing as storage sees it: enough of the RecordBatch v2 header to walk a log.

/// Bytes of the fixed batch header.
pub const HEADER_BYTES: usize = 61;
const LOG_OVERHEAD: usize = 12;
const CRC_START: usize = 21;

/// What a log scan needs of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchFrame {
    pub base_offset: i64,
    pub total_bytes: usize,
    pub last_offset_delta: i32,
    pub max_timestamp: i64,
    pub crc: u32,
    pub attributes: i16,
}

impl BatchFrame {
    /// Reads the header at the front of `bytes`; `None` if it is short or its length invalid.
    pub fn parse(bytes: &[u8]) -> Option<BatchFrame> {
        if bytes.len() < HEADER_BYTES || bytes[16] != 2 {
            return None;
        }
        let batch_length = i32::from_be_bytes(bytes[8..12].try_into().ok()?);
        if batch_length < (HEADER_BYTES - LOG_OVERHEAD) as i32 {
            return None;
        }
        let last_offset_delta = i32::from_be_bytes(bytes[23..27].try_into().ok()?);
        if last_offset_delta < 0 {
            return None;
        }
        Some(BatchFrame {
            base_offset: i64::from_be_bytes(bytes[0..8].try_into().ok()?),
            total_bytes: LOG_OVERHEAD + batch_length as usize,
            last_offset_delta,
            max_timestamp: i64::from_be_bytes(bytes[35..43].try_into().ok()?),
            crc: u32::from_be_bytes(bytes[17..21].try_into().ok()?),
            attributes: i16::from_be_bytes(bytes[21..23].try_into().ok()?),
        })
    }

    /// Compression codec bits (0 = none).
    pub fn compression(&self) -> u8 {
        (self.attributes & 0x7) as u8
    }

    pub fn next_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64 + 1
    }

    /// Checks the CRC of a whole batch (`batch.len() == total_bytes`).
    pub fn crc_matches(&self, batch: &[u8]) -> bool {
        batch.len() == self.total_bytes && crc32c::crc32c(&batch[CRC_START..]) == self.crc
    }
}

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

/// In a whole uncompressed batch, the first record with timestamp >= `timestamp`:
/// `(offset, timestamp)`. Records are `length, attributes, timestampDelta, offsetDelta, …`.
pub fn first_record_at_or_after(batch: &[u8], timestamp: i64) -> Option<(i64, i64)> {
    let base_offset = i64::from_be_bytes(batch.get(0..8)?.try_into().ok()?);
    let base_timestamp = i64::from_be_bytes(batch.get(27..35)?.try_into().ok()?);
    let mut rest = batch.get(HEADER_BYTES..)?;
    while !rest.is_empty() {
        let (len, used) = read_varint(rest)?;
        let record = rest.get(used..used + usize::try_from(len).ok()?)?;
        let (ts_delta, n) = read_varint(record.get(1..)?)?;
        let (offset_delta, _) = read_varint(record.get(1 + n..)?)?;
        if base_timestamp + ts_delta >= timestamp {
            return Some((base_offset + offset_delta, base_timestamp + ts_delta));
        }
        rest = &rest[used + len as usize..];
    }
    None
}
