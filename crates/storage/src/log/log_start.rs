//! The log start offset a client set with DeleteRecords, kept durable per partition.
//!
//! File `log-start-offset-checkpoint` in the partition directory: magic, the offset and a
//! CRC32C, replaced atomically (write new, fsync, rename, fsync the directory) before the
//! new start is visible. At open the log start is the greater of the first segment's base and
//! this offset (retention may since have moved past it), so a restart, clean or not, never
//! shows records a client deleted. Control plane: plain blocking file calls, as for the topic
//! table.

use super::{PartitionLog, State};
use crate::atomic_file::{decode_offset_record, encode_offset_record, write_atomically};
use crate::segment::Segment;
use std::io;
use std::path::Path;

pub const FILE_NAME: &str = "log-start-offset-checkpoint";

const MAGIC: [u8; 4] = *b"RBLS";

/// The persisted log start offset of the partition in `dir`; `None` when none was set.
pub fn read(dir: &Path) -> io::Result<Option<i64>> {
    match std::fs::read(dir.join(FILE_NAME)) {
        Ok(bytes) => decode_offset_record(MAGIC, &bytes)
            .map(Some)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is damaged", dir.join(FILE_NAME).display()),
                )
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes `offset` the persisted log start offset of the partition in `dir`.
pub fn write(dir: &Path, offset: i64) -> io::Result<()> {
    write_atomically(&dir.join(FILE_NAME), &encode_offset_record(MAGIC, offset))
}

/// The log start at open: the first segment's base, or the persisted offset when that is
/// greater, but never past the end of the log. A persisted offset is only written once the
/// log below it is fdatasync'd, so it can exceed the end only if the disk lost synced data;
/// the log then starts at its end (logged).
pub(super) fn at_open(dir: &Path, first_base: i64, next_offset: i64) -> io::Result<i64> {
    let Some(persisted) = read(dir)? else {
        return Ok(first_base);
    };
    if persisted > next_offset {
        tracing::warn!(dir = %dir.display(), persisted, next_offset, "the persisted log start offset is past the end of the log; starting at the end");
        return Ok(next_offset.max(first_base));
    }
    Ok(persisted.max(first_base))
}

/// Takes out of the log the segments wholly below its start (never the active one).
fn take_segments_below_start(st: &mut State) -> Vec<Segment> {
    let start = st.log_start_offset;
    let below = st
        .segments
        .windows(2)
        .take_while(|pair| pair[1].base_offset <= start)
        .count();
    st.segments.drain(..below).collect()
}

/// Why DeleteRecords could not move a partition's log start.
#[derive(Debug, thiserror::Error)]
pub enum DeleteRecordsError {
    #[error("offset {offset} is above the high watermark {high_watermark}")]
    OutOfRange { offset: i64, high_watermark: i64 },
    #[error("the log is unavailable: {0}")]
    Failed(String),
    #[error("I/O error persisting the log start offset: {0}")]
    Io(#[from] io::Error),
}

/// Asks DeleteRecords for the high watermark.
pub const HIGH_WATERMARK: i64 = -1;

impl PartitionLog {
    /// DeleteRecords: makes `offset` (or the high watermark for [`HIGH_WATERMARK`]) the log
    /// start offset unless the log already starts later, and returns the log start (Kafka's
    /// low watermark). The log below the offset is fdatasync'd and the offset persisted
    /// before anything changes in memory; then every segment wholly below it (never the
    /// active one) is deleted.
    pub async fn delete_records_before(&self, offset: i64) -> Result<i64, DeleteRecordsError> {
        let high_watermark = self.high_watermark();
        let target = if offset == HIGH_WATERMARK {
            high_watermark
        } else {
            offset
        };
        if target < 0 || target > high_watermark {
            return Err(DeleteRecordsError::OutOfRange {
                offset,
                high_watermark,
            });
        }
        if target <= self.log_start_offset() {
            return Ok(self.log_start_offset());
        }
        // After a crash the log must still reach the persisted start.
        self.sync_to(target).await.map_err(|e| match e {
            super::AppendError::Io(e) => DeleteRecordsError::Io(e),
            other => DeleteRecordsError::Failed(other.to_string()),
        })?;
        let removed: Vec<Segment> = {
            let mut st = self.state.borrow_mut();
            if st.removed {
                return Err(DeleteRecordsError::Failed(
                    "the partition was deleted".into(),
                ));
            }
            if target <= st.log_start_offset {
                return Ok(st.log_start_offset);
            }
            // No await from here to the state change: a concurrent DeleteRecords cannot
            // persist a smaller offset after this one.
            write(&self.dir, target)?;
            st.log_start_offset = target;
            // A failed log's files may not be what its segments say (a cleaner's swap failed
            // half way): the segments below the start are deleted at the reopen instead.
            if st.failed.is_some() {
                Vec::new()
            } else {
                take_segments_below_start(&mut st)
            }
        };
        self.remove_segment_files(&removed);
        if !removed.is_empty() {
            tracing::info!(dir = %self.dir.display(), segments = removed.len(), log_start_offset = target, "deleted records moved the log start");
        }
        Ok(target)
    }

    /// At open: deletes the segments a DeleteRecords left wholly below the log start (the
    /// broker stopped after persisting the start, before unlinking them).
    pub(super) fn drop_segments_below_start(&self) {
        let removed = take_segments_below_start(&mut self.state.borrow_mut());
        self.remove_segment_files(&removed);
    }

    /// Unlinks the files of segments already taken out of the log (plain syscalls; a file
    /// still being read stays readable until that read ends).
    fn remove_segment_files(&self, removed: &[Segment]) {
        for seg in removed {
            for ext in ["log", "index", "timeindex"] {
                let path = self
                    .dir
                    .join(crate::segment::file_name(seg.base_offset, ext));
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not delete a retired segment file");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        write(dir.path(), 42).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(42));
        write(dir.path(), 7).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(7));
        std::fs::write(
            dir.path().join(FILE_NAME),
            b"RBLS\0\0\0\0\0\0\0\x07\0\0\0\0",
        )
        .unwrap();
        assert!(read(dir.path()).is_err());
        assert_eq!(at_open(dir.path(), 0, 10).ok(), None);
        write(dir.path(), 50).unwrap();
        assert_eq!(at_open(dir.path(), 0, 100).unwrap(), 50);
        assert_eq!(at_open(dir.path(), 60, 100).unwrap(), 60);
        assert_eq!(at_open(dir.path(), 0, 40).unwrap(), 40);
    }
}

#[cfg(test)]
mod log_tests {
    use super::*;
    use crate::log::tests::batch;
    use crate::log::{LogConfig, ReadError, Recovery};
    use ringbroker_runtime::block_on;

    fn config() -> LogConfig {
        LogConfig {
            segment_bytes: 2048,
            retention_ms: Some(1000),
            ..LogConfig::default()
        }
    }

    #[test]
    fn deleting_records_moves_the_log_start_durably_and_drops_whole_segments_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let p = path.clone();
        block_on(async move {
            let log = PartitionLog::open(&p, config()).unwrap();
            for i in 0..100 {
                log.append_batch(batch(1, 40, 10_000 + i), 1).await.unwrap();
            }
            let segments = log.segment_count();
            assert!(segments > 4);
            assert!(matches!(
                log.delete_records_before(101).await,
                Err(DeleteRecordsError::OutOfRange { .. })
            ));
            assert!(matches!(
                log.delete_records_before(-2).await,
                Err(DeleteRecordsError::OutOfRange { .. })
            ));
            assert_eq!(log.delete_records_before(0).await.unwrap(), 0);
            assert_eq!(log.delete_records_before(57).await.unwrap(), 57);
            assert_eq!(log.log_start_offset(), 57);
            assert!(log.segment_count() < segments);
            assert!(!p.join("00000000000000000000.log").exists());
            assert!(matches!(
                log.read(56, 100).await,
                Err(ReadError::OutOfRange { log_start: 57, .. })
            ));
            assert!(log.read(57, 100).await.is_ok());
            // An older offset leaves the start where it is.
            assert_eq!(log.delete_records_before(30).await.unwrap(), 57);
            // Retention never moves the start back to a segment base below it.
            log.enforce_retention(0).unwrap();
            assert_eq!(log.log_start_offset(), 57);
            let batch = log.batch_for_timestamp(0, 0).await.unwrap().unwrap();
            let first = crate::frame::BatchFrame::parse(&batch).unwrap();
            assert!(first.next_offset() > 57);
        })
        .unwrap();
        // An unclean reopen (a crash) and a clean one keep it.
        for recovery in [Recovery::Scan, Recovery::TrustCleanShutdown] {
            let log = PartitionLog::open_with(&path, config(), recovery).unwrap();
            assert_eq!(log.log_start_offset(), 57, "{recovery:?}");
        }
        let p = path.clone();
        block_on(async move {
            let log = PartitionLog::open(&p, config()).unwrap();
            // -1: up to the high watermark; the active segment stays.
            assert_eq!(
                log.delete_records_before(HIGH_WATERMARK).await.unwrap(),
                100
            );
            assert_eq!(log.segment_count(), 1);
            assert_eq!(log.append_batch(batch(1, 5, 0), 1).await.unwrap(), 100);
            assert_eq!(log.log_start_offset(), 100);
        })
        .unwrap();
        let log = PartitionLog::open(&path, config()).unwrap();
        assert_eq!((log.log_start_offset(), log.high_watermark()), (100, 101));
    }

    #[test]
    fn segments_left_below_a_persisted_start_are_deleted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let p = path.clone();
        let segments = block_on(async move {
            let log = PartitionLog::open(&p, config()).unwrap();
            for i in 0..100 {
                log.append_batch(batch(1, 40, 10_000 + i), 1).await.unwrap();
            }
            log.close().await.unwrap();
            log.segment_count()
        })
        .unwrap();
        // As if the broker stopped after persisting the start, before unlinking.
        write(&path, 57).unwrap();
        let log = PartitionLog::open_with(&path, config(), Recovery::TrustCleanShutdown).unwrap();
        assert_eq!(log.log_start_offset(), 57);
        assert!(log.segment_count() < segments);
        assert!(!path.join("00000000000000000000.log").exists());
        let p = path.clone();
        block_on(async move {
            let log = PartitionLog::open(&p, config()).unwrap();
            assert!(log.read(57, 10).await.is_ok());
            assert_eq!(log.high_watermark(), 100);
        })
        .unwrap();
    }
}
