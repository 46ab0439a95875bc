//! One segment: `<base offset, 20 digits>.log` and its `.index`.

use crate::index::OffsetIndex;
use ringbroker_runtime::op::SharedFd;
use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// Bytes handed out to appends (some may still be in flight).
    pub reserved_bytes: u64,
    /// Bytes written and visible to readers (below the high watermark).
    pub committed_bytes: u64,
    /// Position of the last index entry (`None` before the first).
    pub last_indexed_position: Option<u64>,
    /// Offset one past the last batch appended to this segment.
    pub next_offset: i64,
}

impl Segment {
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
        Ok(Segment {
            base_offset,
            log_path,
            log: Arc::new(log.into()),
            index_file: Arc::new(index_file.into()),
            index: OffsetIndex::default(),
            reserved_bytes: 0,
            committed_bytes: 0,
            last_indexed_position: None,
            next_offset: base_offset,
        })
    }
}
