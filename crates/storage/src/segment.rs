//! One segment: `<base offset, 20 digits>.log` and its `.index`.

use crate::index::OffsetIndex;
use ringbroker_runtime::op::SharedFd;
use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The on-disk form of a time index entry: timestamp i64, relative offset u32.
fn encode_time_entry(timestamp: i64, relative_offset: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&timestamp.to_be_bytes());
    b[8..].copy_from_slice(&relative_offset.to_be_bytes());
    b
}

/// Index entries gathered in memory before one write of both index files (4 KiB of `.index`).
pub const INDEX_FLUSH_ENTRIES: usize = 512;

/// A write of a segment's index entries not yet on disk: `(file, bytes, position)` for the
/// offset index and the time index.
pub struct IndexFlush {
    pub index: (SharedFd, Vec<u8>, u64),
    pub time_index: (SharedFd, Vec<u8>, u64),
}

impl IndexFlush {
    pub async fn write(self) -> io::Result<()> {
        let (fd, bytes, at) = self.index;
        ringbroker_runtime::op::write_all_at(&fd, bytes.into(), at).await?;
        let (fd, bytes, at) = self.time_index;
        ringbroker_runtime::op::write_all_at(&fd, bytes.into(), at).await
    }
}

/// The on-disk form of time index entries.
pub fn encode_time_entries(entries: &[(i64, u32)]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|&(t, o)| encode_time_entry(t, o))
        .collect()
}

pub fn file_name(base_offset: i64, extension: &str) -> String {
    format!("{base_offset:020}.{extension}")
}

/// Parses `00000000000000000042.log` into 42.
pub fn parse_log_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

pub struct Segment {
    pub base_offset: i64,
    pub log_path: PathBuf,
    pub log: SharedFd,
    pub index_file: SharedFd,
    pub index: OffsetIndex,
    pub time_index_file: SharedFd,
    /// `(largest timestamp of all batches before this one, relative offset)`, one per offset
    /// index entry: a timestamp lookup starts at the last entry below its target.
    pub time_index: Vec<(i64, u32)>,
    /// Largest batch max-timestamp in the segment (`i64::MIN` when empty).
    pub max_timestamp: i64,
    /// Wall-clock creation (or opening) time, for `segment_ms` rolls.
    pub created: std::time::Instant,
    /// Bytes handed out to appends (some may still be in flight).
    pub reserved_bytes: u64,
    /// Bytes written and visible to readers (below the high watermark).
    pub committed_bytes: u64,
    /// Position of the last index entry (`None` before the first).
    pub last_indexed_position: Option<u64>,
    /// Index entries whose write to the index files has been issued. The rest exist only in
    /// memory until `INDEX_FLUSH_ENTRIES` of them gather, the segment rolls or the log
    /// closes: index files are derived data, rebuilt past their end at start-up.
    pub index_on_disk: usize,
    /// Offset one past the last batch appended to this segment.
    pub next_offset: i64,
    /// Leading index entries the recovery checkpointer wrote and fdatasync'd (both index
    /// files): a checkpoint may promise them. 0 at open, whatever the files hold.
    pub index_durable: usize,
    /// Recovery at open cut a torn or corrupt tail off this segment: later segments do not
    /// continue it (a cleaned segment may end before the next one's base, a cut one may not).
    pub truncated: bool,
}

impl Segment {
    /// Takes the index entries not yet written, if there are any and either `force` is set
    /// or at least `INDEX_FLUSH_ENTRIES` are waiting.
    pub fn take_index_flush(&mut self, force: bool) -> Option<IndexFlush> {
        let first = self.index_on_disk;
        let waiting = self.index.len() - first;
        if waiting == 0 || (!force && waiting < INDEX_FLUSH_ENTRIES) {
            return None;
        }
        self.index_on_disk = self.index.len();
        Some(IndexFlush {
            index: (
                self.index_file.clone(),
                self.index.encode_from(first),
                first as u64 * 8,
            ),
            time_index: (
                self.time_index_file.clone(),
                encode_time_entries(&self.time_index[first..]),
                first as u64 * 12,
            ),
        })
    }

    /// A write of the index entries `first..end` (both files), wherever the chunked writes
    /// stand; `None` when the range is empty. Entries never change once pushed below the
    /// high watermark, so writing them again over a chunked write is harmless.
    pub fn index_range_write(&self, first: usize, end: usize) -> Option<IndexFlush> {
        let end = end.min(self.index.len());
        if first >= end {
            return None;
        }
        Some(IndexFlush {
            index: (
                self.index_file.clone(),
                self.index.encode_range(first, end),
                first as u64 * 8,
            ),
            time_index: (
                self.time_index_file.clone(),
                encode_time_entries(&self.time_index[first..end]),
                first as u64 * 12,
            ),
        })
    }

    /// Opens (creating when missing) the files of the segment starting at `base_offset`.
    /// Control plane: plain blocking `open` calls at start-up and on roll.
    pub fn open(dir: &Path, base_offset: i64) -> io::Result<Segment> {
        let log_path = dir.join(file_name(base_offset, "log"));
        let log = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&log_path)?;
        let index_path = dir.join(file_name(base_offset, "index"));
        let index_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(index_path)?;
        let time_index_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(file_name(base_offset, "timeindex")))?;
        Ok(Segment {
            time_index_file: Arc::new(time_index_file.into()),
            time_index: Vec::new(),
            max_timestamp: i64::MIN,
            created: std::time::Instant::now(),
            base_offset,
            log_path,
            log: Arc::new(log.into()),
            index_file: Arc::new(index_file.into()),
            index: OffsetIndex::default(),
            reserved_bytes: 0,
            committed_bytes: 0,
            last_indexed_position: None,
            index_on_disk: 0,
            next_offset: base_offset,
            index_durable: 0,
            truncated: false,
        })
    }
}
