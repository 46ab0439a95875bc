//! Rebuilding segments at open. Three ways, from cheapest to dearest:
//! - trusted (clean shutdown, or wholly below the recovery checkpoint): load the index files,
//!   walk only the batch headers after the last entry;
//! - the segment holding the recovery point: load its durable index entries, walk headers up
//!   to the recovery point, then scan (CRC) the rest;
//! - everything else: scan (CRC) from the start.
//!
//! A scan stops at the first short, malformed, out-of-sequence or CRC-failing batch and cuts
//! the file there. Indexes are derived data: whatever a walk or scan adds is written back.
//! Start-up / control plane: plain blocking file I/O.

use crate::checkpoint::Checkpoint;
use crate::frame::{BatchFrame, HEADER_BYTES};
use crate::index::OffsetIndex;
use crate::log::LogConfig;
use crate::segment::{encode_time_entries, Segment};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a partition's recovery at open read, for the start-up log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes read and CRC-checked (after the recovery point, or everything without one).
    pub scanned_bytes: u64,
    /// Bytes of the segment files found at open.
    pub log_bytes: u64,
}

static SCANNED_BYTES: AtomicU64 = AtomicU64::new(0);
static LOG_BYTES: AtomicU64 = AtomicU64::new(0);
static PARTITIONS: AtomicU64 = AtomicU64::new(0);

/// Sums over every partition this process opened with a recovery scan (all shards).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryTotals {
    pub scanned_bytes: u64,
    pub log_bytes: u64,
    pub partitions: u64,
}

pub fn totals() -> RecoveryTotals {
    RecoveryTotals {
        scanned_bytes: SCANNED_BYTES.load(Ordering::Relaxed),
        log_bytes: LOG_BYTES.load(Ordering::Relaxed),
        partitions: PARTITIONS.load(Ordering::Relaxed),
    }
}

pub(crate) fn add_to_totals(report: &RecoveryReport) {
    SCANNED_BYTES.fetch_add(report.scanned_bytes, Ordering::Relaxed);
    LOG_BYTES.fetch_add(report.log_bytes, Ordering::Relaxed);
    PARTITIONS.fetch_add(1, Ordering::Relaxed);
}

/// A segment rebuilt up to `position`: where a walk or scan goes on from.
struct Rebuilt {
    position: u64,
    next_offset: i64,
    index: OffsetIndex,
    time_index: Vec<(i64, u32)>,
    max_timestamp: i64,
    last_indexed: Option<u64>,
    /// Leading index entries that are on disk already and stay as they are.
    entries_on_disk: usize,
}

impl Rebuilt {
    fn empty(base_offset: i64) -> Rebuilt {
        Rebuilt {
            position: 0,
            next_offset: base_offset,
            index: OffsetIndex::default(),
            time_index: Vec::new(),
            max_timestamp: i64::MIN,
            last_indexed: None,
            entries_on_disk: 0,
        }
    }

    /// Accounts for the batch `frame` at `self.position`: an index entry when due, the
    /// timestamps, the next offset and position.
    fn add(&mut self, frame: &BatchFrame, base_offset: i64, config: &LogConfig) {
        if self
            .last_indexed
            .is_none_or(|p| self.position >= p + config.index_interval_bytes)
        {
            let rel = (self.next_offset - base_offset) as u32;
            if self.last_indexed != Some(self.position) {
                self.index.push(rel, self.position as u32);
                self.time_index.push((self.max_timestamp, rel));
            }
            self.last_indexed = Some(self.position);
        }
        self.max_timestamp = self.max_timestamp.max(frame.max_timestamp);
        self.position += frame.total_bytes as u64;
        self.next_offset = frame.next_offset();
    }

    /// Reads the first entries of the index files (at most `max_entries`, only those below
    /// `below_position`); `None` when they are inconsistent. Position and offset are those
    /// of the last entry: a header walk goes on from there.
    fn from_index_files(
        seg: &Segment,
        max_entries: u64,
        below_position: u64,
    ) -> io::Result<Option<Rebuilt>> {
        let index_file = std::fs::File::from(seg.index_file.try_clone()?);
        let time_file = std::fs::File::from(seg.time_index_file.try_clone()?);
        let on_disk = (index_file.metadata()?.len() / 8).min(time_file.metadata()?.len() / 12);
        let count = on_disk.min(max_entries) as usize;
        let mut raw = vec![0u8; count * 8];
        index_file.read_exact_at(&mut raw, 0)?;
        let mut raw_time = vec![0u8; count * 12];
        time_file.read_exact_at(&mut raw_time, 0)?;
        let mut rebuilt = Rebuilt::empty(seg.base_offset);
        let mut last: Option<(u32, u32, i64)> = None;
        for (entry, time) in raw.chunks_exact(8).zip(raw_time.chunks_exact(12)) {
            let rel = u32::from_be_bytes(entry[..4].try_into().expect("4 bytes"));
            let pos = u32::from_be_bytes(entry[4..].try_into().expect("4 bytes"));
            let ts = i64::from_be_bytes(time[..8].try_into().expect("8 bytes"));
            let time_rel = u32::from_be_bytes(time[8..].try_into().expect("4 bytes"));
            if pos as u64 >= below_position {
                break;
            }
            let ordered = last.is_none_or(|(o, p, t)| o < rel && p < pos && t <= ts);
            if !ordered || time_rel != rel {
                return Ok(None);
            }
            rebuilt.index.push(rel, pos);
            rebuilt.time_index.push((ts, rel));
            last = Some((rel, pos, ts));
        }
        if let Some((rel, pos, ts)) = last {
            rebuilt.position = pos as u64;
            rebuilt.next_offset = seg.base_offset + rel as i64;
            rebuilt.max_timestamp = ts;
            rebuilt.last_indexed = Some(pos as u64);
        }
        rebuilt.entries_on_disk = rebuilt.index.len();
        Ok(Some(rebuilt))
    }

    /// Walks batch headers (no CRC) from `self.position` to exactly `end`; false when the
    /// headers do not lead there in sequence, or a batch ends past `next_offset_max`.
    fn walk_headers(
        &mut self,
        log: &std::fs::File,
        base_offset: i64,
        end: u64,
        config: &LogConfig,
        next_offset_max: i64,
    ) -> io::Result<bool> {
        let mut header = [0u8; HEADER_BYTES];
        while self.position < end {
            if end - self.position < HEADER_BYTES as u64 {
                return Ok(false);
            }
            log.read_exact_at(&mut header, self.position)?;
            let Some(frame) = BatchFrame::parse(&header) else {
                return Ok(false);
            };
            // A cleaned segment has gaps: a batch may start past the previous one's end.
            if frame.base_offset < self.next_offset
                || frame.next_offset() > next_offset_max
                || self.position + frame.total_bytes as u64 > end
            {
                return Ok(false);
            }
            self.add(&frame, base_offset, config);
        }
        Ok(true)
    }

    /// Writes the index entries not on disk yet, cuts stale ones after them, and hands the
    /// result to the segment.
    fn install(self, seg: &mut Segment) -> io::Result<()> {
        let keep = self.entries_on_disk;
        let index_file = std::fs::File::from(seg.index_file.try_clone()?);
        let time_file = std::fs::File::from(seg.time_index_file.try_clone()?);
        if keep < self.index.len() {
            index_file.write_all_at(&self.index.encode_from(keep), keep as u64 * 8)?;
            let encoded = encode_time_entries(&self.time_index[keep..]);
            time_file.write_all_at(&encoded, keep as u64 * 12)?;
        }
        // Entries past the rebuilt ones (stale, or beyond a cut) must not survive.
        for (file, len) in [
            (&index_file, self.index.len() as u64 * 8),
            (&time_file, self.time_index.len() as u64 * 12),
        ] {
            if file.metadata()?.len() != len {
                file.set_len(len)?;
            }
        }
        seg.time_index = self.time_index;
        seg.max_timestamp = self.max_timestamp;
        seg.index = self.index;
        seg.last_indexed_position = self.last_indexed;
        seg.index_on_disk = seg.index.len();
        seg.reserved_bytes = self.position;
        seg.committed_bytes = self.position;
        seg.next_offset = self.next_offset;
        Ok(())
    }
}

/// Loads a segment whose files are all durable and whole (a clean shutdown, or below the
/// recovery checkpoint) from its index files, walking only the batch headers after the last
/// index entry. Returns false (nothing changed) if what it finds is inconsistent.
/// `next_base`: the base offset of the segment after it (`None` for the last one).
pub(crate) fn load_trusted_segment(
    seg: &mut Segment,
    config: &LogConfig,
    next_base: Option<i64>,
) -> io::Result<bool> {
    let log = std::fs::File::from(seg.log.try_clone()?);
    let log_len = log.metadata()?.len();
    let index_len = std::fs::File::from(seg.index_file.try_clone()?)
        .metadata()?
        .len();
    let time_len = std::fs::File::from(seg.time_index_file.try_clone()?)
        .metadata()?
        .len();
    if index_len % 8 != 0 || (index_len == 0 && log_len > 0) || time_len != index_len / 8 * 12 {
        return Ok(false);
    }
    let Some(mut rebuilt) = Rebuilt::from_index_files(seg, index_len / 8, log_len)? else {
        return Ok(false);
    };
    if rebuilt.index.len() as u64 != index_len / 8 {
        return Ok(false); // an entry at or past the end of the log
    }
    let max = next_offset_max(seg.base_offset, next_base);
    if !rebuilt.walk_headers(&log, seg.base_offset, log_len, config, max)? {
        return Ok(false);
    }
    rebuilt.install(seg)?;
    Ok(true)
}

/// Loads the segment that holds the recovery point: its durable index entries and the
/// batch headers up to the recovery point are trusted, the bytes after it are scanned.
/// Returns the bytes scanned, or `None` (nothing changed) when the files do not agree with
/// the checkpoint.
pub(crate) fn load_checkpointed_segment(
    seg: &mut Segment,
    config: &LogConfig,
    checkpoint: &Checkpoint,
    next_base: Option<i64>,
) -> io::Result<Option<u64>> {
    debug_assert_eq!(seg.base_offset, checkpoint.segment_base);
    let log = std::fs::File::from(seg.log.try_clone()?);
    if log.metadata()?.len() < checkpoint.position {
        return Ok(None);
    }
    let Some(mut rebuilt) =
        Rebuilt::from_index_files(seg, checkpoint.index_entries, checkpoint.position)?
    else {
        return Ok(None);
    };
    let max = next_offset_max(seg.base_offset, next_base);
    if !rebuilt.walk_headers(&log, seg.base_offset, checkpoint.position, config, max)?
        || rebuilt.next_offset != checkpoint.offset
    {
        return Ok(None);
    }
    scan(seg, config, rebuilt, max).map(Some)
}

/// Scans a segment from the start: rebuilds its index and next offset, and truncates the
/// file at the first batch that is short, malformed, out of sequence or fails its CRC.
/// Returns the bytes scanned.
pub(crate) fn recover_segment(
    seg: &mut Segment,
    config: &LogConfig,
    next_base: Option<i64>,
) -> io::Result<u64> {
    let start = Rebuilt::empty(seg.base_offset);
    scan(
        seg,
        config,
        start,
        next_offset_max(seg.base_offset, next_base),
    )
}

/// The largest end (last offset + 1) a batch of the segment based at `base` may have: its
/// offsets relative to the base fit in a u32, and stay below the next segment's base (Kafka's
/// `ensureOffsetInRange`). A batch past it has a damaged base offset, whatever its CRC says
/// (a gap left by a cleaning is a forward jump too, but never one beyond these).
fn next_offset_max(base: i64, next_base: Option<i64>) -> i64 {
    let relative_max = base.saturating_add(u32::MAX as i64);
    next_base.map_or(relative_max, |n| n.min(relative_max))
}

/// Reads and CRC-checks every batch from `from.position` to the end of the file, cutting
/// it at the first bad one. Returns the bytes scanned.
fn scan(
    seg: &mut Segment,
    config: &LogConfig,
    from: Rebuilt,
    next_offset_max: i64,
) -> io::Result<u64> {
    let mut file = std::fs::File::from(seg.log.try_clone()?);
    let file_len = file.seek(SeekFrom::End(0))?;
    let start = from.position;
    file.seek(SeekFrom::Start(start))?;
    let mut reader = io::BufReader::with_capacity(1 << 20, file);
    let mut rebuilt = from;
    let mut batch = Vec::new();
    let mut header = [0u8; HEADER_BYTES];
    let stop_reason = loop {
        let position = rebuilt.position;
        if position == file_len {
            break None;
        }
        if file_len - position < HEADER_BYTES as u64 {
            break Some("short header");
        }
        reader.read_exact(&mut header)?;
        let Some(frame) = BatchFrame::parse(&header) else {
            break Some("malformed header");
        };
        // Offsets only grow; a cleaned segment has gaps between batches.
        if frame.base_offset < rebuilt.next_offset {
            break Some("offset out of sequence");
        }
        if frame.next_offset() > next_offset_max {
            break Some("offset beyond the segment's range");
        }
        if position + frame.total_bytes as u64 > file_len {
            break Some("batch cut short");
        }
        batch.clear();
        batch.extend_from_slice(&header);
        batch.resize(frame.total_bytes, 0);
        reader.read_exact(&mut batch[HEADER_BYTES..])?;
        if !frame.crc_matches(&batch) {
            break Some("CRC mismatch");
        }
        rebuilt.add(&frame, seg.base_offset, config);
    };
    if let Some(reason) = stop_reason {
        tracing::warn!(
            segment = %seg.log_path.display(),
            position = rebuilt.position,
            truncated_bytes = file_len - rebuilt.position,
            reason,
            "log tail is not a whole valid batch; truncating"
        );
        let file = reader.into_inner();
        file.set_len(rebuilt.position)?;
        file.sync_all()?;
        seg.truncated = true;
    }
    rebuilt.install(seg)?;
    Ok(file_len - start)
}
