//! `PartitionLog`: the log of one partition, owned by one shard.
//!
//! Appends get their offsets and file positions synchronously (so concurrent appends never
//! overlap), are written through the ring, and become visible in order: the high watermark
//! only moves past an append once it and every earlier one are written. `sync_to` gives
//! group commit: one fdatasync covers every append written before it started, and callers
//! that arrive while one runs wait for it and the next.
//!
//! Every operation is safe to drop at any await: an append's write and a sync's fdatasyncs
//! run as tasks of their own once started, so they always end completed or failed in the
//! log's state, whatever happens to the caller; reads only look at the state.
//!
//! Invariants: segments are sorted by offset (after a cleaning, `log/clean.rs`, offsets may have
//! gaps inside and between segments; reads skip them); `committed_bytes <=
//! reserved_bytes`; reads never see bytes at or above the high watermark.

use crate::checkpoint::{Checkpoint, CheckpointFile};
use crate::frame::{BatchFrame, HEADER_BYTES};
use crate::recovery::{self, RecoveryReport};
use crate::segment::{parse_log_name, IndexFlush, Segment};
use bytes::{Bytes, BytesMut};
use ringbroker_runtime::chunk::FileSlice;
use ringbroker_runtime::notify::Notify;
use ringbroker_runtime::op::{self, SharedFd};
use ringbroker_runtime::spawn;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::rc::Rc;

mod clean;
mod epochs;
mod log_start;
mod replica;
mod timestamps;
pub use clean::{CleanConfig, CleanStats, CleanableState};
pub use epochs::{UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET};
pub use log_start::{DeleteRecordsError, HIGH_WATERMARK};

/// Most bytes `locate` reads at once while walking batch headers from an index entry to the
/// batch it wants, whatever `index.interval.bytes` says (up to 2 GiB): memory per Fetch stays
/// bounded, and a wider gap between index entries is walked in several reads.
pub const LOCATE_WINDOW_BYTES_MAX: usize = 1024 * 1024;
/// Fewest bytes `locate` reads at once (a few batches' headers in one read).
const LOCATE_WINDOW_BYTES_MIN: usize = 16 * 1024;

/// The read window of `locate`: two index intervals, within its bounds.
fn locate_window_bytes(index_interval_bytes: u64) -> usize {
    usize::try_from(index_interval_bytes.saturating_mul(2))
        .unwrap_or(usize::MAX)
        .clamp(LOCATE_WINDOW_BYTES_MIN, LOCATE_WINDOW_BYTES_MAX)
}

#[cfg(test)]
thread_local! {
    /// Largest read `locate` made on this thread (tests check the bound holds).
    static LOCATE_READ_BYTES_MAX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Largest segment: index entries hold 32-bit file positions, and Kafka's `segment.bytes` is a
/// 32-bit int too.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment when the active one would exceed this.
    pub segment_bytes: u64,
    /// Roll when the active segment is older than this (and holds data).
    pub segment_ms: Option<u64>,
    /// Delete whole segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    /// Delete the oldest segments while the rest still hold at least this many bytes.
    pub retention_bytes: Option<u64>,
    /// Add an index entry once this many bytes were appended since the last one.
    pub index_interval_bytes: u64,
}

thread_local! {
    /// Durations of this thread's group-commit fdatasyncs, for the metrics layer.
    static FSYNC_SECONDS: ringbroker_runtime::stats::LocalHistogram =
        ringbroker_runtime::stats::LocalHistogram::default();
}

/// The fdatasync durations recorded on this thread since the last call.
pub fn take_fsync_seconds() -> ringbroker_runtime::stats::HistogramDelta {
    FSYNC_SECONDS.with(|h| h.take())
}

/// Kafka's default `retention.ms`: 7 days.
pub const RETENTION_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: None,
            retention_ms: Some(RETENTION_MS_DEFAULT),
            retention_bytes: None,
            index_interval_bytes: 4096,
        }
    }
}

/// How `open_with` treats existing segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// After an unclean stop: trust what the recovery checkpoint covers, re-read every batch
    /// after it and check its CRC (every batch when there is no usable checkpoint).
    Scan,
    /// Trust index files and segment lengths (after a clean shutdown).
    TrustCleanShutdown,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("the log is unavailable after an earlier I/O error: {0}")]
    Failed(String),
    #[error("I/O error appending to the log: {0}")]
    Io(#[from] io::Error),
    #[error("batch of {0} bytes does not fit a segment")]
    TooLarge(usize),
    /// A replicated batch starts below the log end or an earlier batch's end (an overlap).
    #[error("replicated batch at offset {got} overlaps the log, which continues at {expected}")]
    OutOfOrder { expected: i64, got: i64 },
    /// Replicated bytes that are not whole valid v2 batches (nothing was written).
    #[error("replicated batch at byte {position} is invalid: {reason}")]
    Corrupt {
        position: usize,
        reason: &'static str,
    },
    /// What a caller waits for is gone: the log was truncated below `offset` (`sync_to`).
    #[error("the log was truncated to {log_end}, below offset {offset}")]
    Truncated { offset: i64, log_end: i64 },
    /// A truncation was asked for while appends were in flight; try again.
    #[error("the log is busy: {0}")]
    Busy(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("offset {offset} is outside the log [{log_start}, {high_watermark}]")]
    OutOfRange {
        offset: i64,
        log_start: i64,
        high_watermark: i64,
    },
    #[error("I/O error reading the log: {0}")]
    Io(#[from] io::Error),
    #[error("the log is damaged at position {position} of segment {segment}")]
    Corrupt { segment: i64, position: u64 },
}

/// Whole batches as a range of a segment file, for zero-copy sends.
#[derive(Debug, Clone)]
pub struct SliceResult {
    /// `None` when there is nothing to read at that offset yet.
    pub slice: Option<FileSlice>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

/// Whole batches read from the log, with the partition's offsets at read time.
#[derive(Debug, Clone)]
pub struct ReadResult {
    pub records: Bytes,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

struct Located {
    log_fd: SharedFd,
    seg_base: i64,
    position: u64,
    first_len: u64,
    end: u64,
    high_watermark: i64,
    log_start_offset: i64,
}

struct PendingAppend {
    seq: u64,
    end_offset: i64,
    segment_base: i64,
    end_position: u64,
    done: bool,
}

struct State {
    segments: Vec<Segment>,
    next_offset: i64,
    high_watermark: i64,
    log_start_offset: i64,
    pending: VecDeque<PendingAppend>,
    next_seq: u64,
    failed: Option<String>,
    /// The failure was a write (ENOSPC, EIO on write): once no write is in flight, the next
    /// append cuts the log back to the high watermark and tries again. A failed fdatasync is
    /// not repairable (the page cache may have dropped the dirty pages).
    repairable: bool,
    /// Bumped by every write failure: an append that started before it must not report
    /// success later, when offsets past the failure are handed out again.
    failure_epoch: u64,
    /// The high watermark when each recent failure epoch began (newest last, at most
    /// [`FAILURE_EPOCHS_KEPT`]): an append of an earlier epoch whose end is at or below it was
    /// committed before the failure, and the cut back keeps it.
    failure_high_watermarks: VecDeque<(u64, i64)>,
    writes_in_flight: usize,
    synced_offset: i64,
    sync_running: bool,
    /// Segments written since the last completed sync (the active one, and any rolled away).
    unsynced: Vec<SharedFd>,
    /// The recovery checkpoint on disk (read at open or last written).
    checkpoint: Option<Checkpoint>,
    /// Opened at the first checkpoint write; taken out while a write runs.
    checkpoint_file: Option<CheckpointFile>,
    /// Sequence number of the checkpoint read at open, for the first write.
    checkpoint_sequence: u64,
    checkpoint_running: bool,
    /// Every segment below this base offset has its log and both index files durable as
    /// they are in memory (made so by a checkpoint, or found so at open).
    durable_segments_below: i64,
    /// The files were deleted (topic deletion): no checkpoint may recreate them.
    removed: bool,
    /// Below it every record was cleaned once (`log/clean.rs`; persisted).
    first_dirty_offset: i64,
    /// A cleaning pass runs on this log.
    cleaning: bool,
    /// Leader epochs (`log/epochs.rs`; persisted).
    epochs: epochs::Epochs,
    /// The leader epoch `append_batch` writes into each batch (`begin_leader_epoch`); `None`:
    /// batches keep the epoch they carry.
    stamp_epoch: Option<i32>,
}

pub struct PartitionLog {
    dir: Rc<Path>,
    /// Replaced whole by [`PartitionLog::set_config`] (a topic's configs changed).
    config: RefCell<LogConfig>,
    /// Shared with the tasks that finish appends and syncs.
    state: Rc<RefCell<State>>,
    /// Released whenever the high watermark moves.
    appended: Rc<Notify>,
    synced: Rc<Notify>,
    recovery_report: RecoveryReport,
}

/// Failure epochs whose starting high watermark a log remembers.
const FAILURE_EPOCHS_KEPT: usize = 16;

impl State {
    /// A write failed: appends started before now must not report success for offsets past
    /// the current high watermark, which are handed out again after the cut back.
    fn begin_failure_epoch(&mut self) {
        self.failure_epoch += 1;
        if self.failure_high_watermarks.len() == FAILURE_EPOCHS_KEPT {
            self.failure_high_watermarks.pop_front();
        }
        self.failure_high_watermarks
            .push_back((self.failure_epoch, self.high_watermark));
    }

    /// The offset below which an append started in failure epoch `epoch` is known committed.
    fn committed_through(&self, epoch: u64) -> i64 {
        if epoch == self.failure_epoch {
            return self.high_watermark;
        }
        // Old-epoch appends never move the high watermark after the next epoch began.
        self.failure_high_watermarks
            .iter()
            .find(|(e, _)| *e == epoch + 1)
            .map_or(i64::MIN, |(_, hw)| *hw)
    }
}

impl PartitionLog {
    /// Opens the log in `dir` (created when missing) after an unclean stop: segments the
    /// recovery checkpoint covers are trusted, the bytes after it are scanned to rebuild
    /// offsets and indexes; a torn or corrupt tail is cut off (and logged).
    /// Start-up / control plane: uses plain blocking file I/O.
    pub fn open(dir: &Path, config: LogConfig) -> io::Result<PartitionLog> {
        Self::open_with(dir, config, Recovery::Scan)
    }

    /// Opens the log; with `Recovery::TrustCleanShutdown` (the broker stopped cleanly, so
    /// every file was flushed whole) segments are loaded from their index files and only the
    /// bytes after the last index entry are walked, without CRC checks. With `Recovery::Scan`
    /// the same holds for the segments wholly below the recovery checkpoint; the segment
    /// holding it is walked by headers up to it and scanned (CRC) after it, later segments
    /// are scanned whole. Any inconsistency falls back to a full scan of that segment.
    pub fn open_with(
        dir: &Path,
        config: LogConfig,
        recovery: Recovery,
    ) -> io::Result<PartitionLog> {
        std::fs::create_dir_all(dir)?;
        // A cleaning interrupted by a crash: finish its decided swaps, discard the rest.
        clean::finish_interrupted_clean(dir)?;
        let mut bases: Vec<i64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_log_name(e.file_name().to_str()?))
            .collect();
        bases.sort_unstable();
        if bases.is_empty() {
            bases.push(0);
        }
        let (checkpoint_sequence, checkpoint) = match crate::checkpoint::read(dir) {
            Ok(found) => found.map_or((0, None), |(seq, c)| (seq, Some(c))),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the recovery checkpoint; scanning every segment");
                (0, None)
            }
        };
        // Usable only when the segment holding the recovery point is there.
        let usable = checkpoint
            .filter(|c| recovery == Recovery::Scan && bases.binary_search(&c.segment_base).is_ok());
        let mut report = RecoveryReport::default();
        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
        let mut next_offset = bases[0];
        // Base of the first segment whose files are not known durable as loaded.
        let mut durable_segments_below: Option<i64> = None;
        let mut checkpoint_used = false;
        for (i, &base) in bases.iter().enumerate() {
            let mut seg = Segment::open(dir, base)?;
            let next_base = bases.get(i + 1).copied();
            // A cleaned segment may end before the next base (a gap); a cut one may not.
            let cut = segments.last().is_some_and(|s| s.truncated);
            if i > 0 && (base < next_offset || (cut && base != next_offset)) {
                tracing::warn!(dir = %dir.display(), base, expected = next_offset, "segment does not continue the previous one; later segments ignored");
                break;
            }
            report.log_bytes += std::fs::File::from(seg.log.try_clone()?).metadata()?.len();
            let loaded = match (recovery, usable) {
                (Recovery::TrustCleanShutdown, _) => {
                    recovery::load_trusted_segment(&mut seg, &config, next_base)?
                }
                (Recovery::Scan, Some(c)) if base < c.segment_base => {
                    recovery::load_trusted_segment(&mut seg, &config, next_base)?
                }
                (Recovery::Scan, Some(c)) if base == c.segment_base => {
                    match recovery::load_checkpointed_segment(&mut seg, &config, &c, next_base)? {
                        Some(scanned) => {
                            report.scanned_bytes += scanned;
                            durable_segments_below.get_or_insert(base);
                            checkpoint_used = true;
                            true
                        }
                        None => false,
                    }
                }
                _ => false,
            };
            if !loaded {
                report.scanned_bytes += recovery::recover_segment(&mut seg, &config, next_base)?;
                durable_segments_below.get_or_insert(base);
            }
            next_offset = seg.next_offset;
            segments.push(seg);
        }
        let log_start_offset = segments[0].base_offset;
        let active = segments.last().expect("at least one segment");
        let durable_segments_below = durable_segments_below.unwrap_or(active.base_offset);
        // Below what offset the log is known durable, and which segments may not be: after a
        // clean stop everything was synced; after an unclean one only what the checkpoint
        // covers (the rest may have been in the page cache only).
        let (synced_offset, unsynced) = match recovery {
            Recovery::TrustCleanShutdown => (next_offset, vec![active.log.clone()]),
            Recovery::Scan => {
                let synced = usable.map_or(log_start_offset, |c| c.offset.min(next_offset));
                let from = usable.map_or(log_start_offset, |c| c.segment_base);
                let unsynced = segments
                    .iter()
                    .filter(|s| s.base_offset >= from)
                    .map(|s| s.log.clone())
                    .collect();
                (synced, unsynced)
            }
        };
        if recovery == Recovery::Scan {
            recovery::add_to_totals(&report);
            if report.log_bytes > 0 {
                tracing::debug!(dir = %dir.display(), scanned_bytes = report.scanned_bytes, log_bytes = report.log_bytes, recovery_point = ?usable.map(|c| c.offset), "recovered");
            }
        }
        let log = PartitionLog {
            dir: dir.into(),
            config: RefCell::new(config),
            state: Rc::new(RefCell::new(State {
                segments,
                next_offset,
                high_watermark: next_offset,
                log_start_offset: log_start::at_open(dir, log_start_offset, next_offset)?,
                pending: VecDeque::new(),
                next_seq: 0,
                failed: None,
                repairable: false,
                failure_epoch: 0,
                failure_high_watermarks: VecDeque::new(),
                writes_in_flight: 0,
                synced_offset,
                sync_running: false,
                unsynced,
                // A checkpoint this open could not use is replaced at the first chance.
                checkpoint: match recovery {
                    Recovery::TrustCleanShutdown => checkpoint,
                    Recovery::Scan => usable.filter(|_| checkpoint_used),
                },
                checkpoint_file: None,
                checkpoint_sequence,
                checkpoint_running: false,
                durable_segments_below,
                removed: false,
                first_dirty_offset: clean::read_first_dirty(dir).unwrap_or(0),
                cleaning: false,
                epochs: epochs::Epochs::default(),
                stamp_epoch: None,
            })),
            appended: Notify::new(),
            synced: Notify::new(),
            recovery_report: report,
        };
        log.drop_segments_below_start();
        {
            let mut st = log.state.borrow_mut();
            let epochs = epochs::at_open(dir, &st.segments, st.high_watermark)?;
            st.epochs = epochs;
            st.first_dirty_offset = st
                .first_dirty_offset
                .min(st.high_watermark)
                .max(st.log_start_offset);
        }
        Ok(log)
    }

    /// What recovery at open read.
    pub fn recovery_report(&self) -> RecoveryReport {
        self.recovery_report
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn high_watermark(&self) -> i64 {
        self.state.borrow().high_watermark
    }

    /// Base offset of the active (last) segment.
    pub fn active_segment_base(&self) -> i64 {
        self.state
            .borrow()
            .segments
            .last()
            .expect("active segment")
            .base_offset
    }

    pub fn log_start_offset(&self) -> i64 {
        self.state.borrow().log_start_offset
    }

    /// Bytes of committed data in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.state
            .borrow()
            .segments
            .iter()
            .map(|s| s.committed_bytes)
            .sum()
    }

    pub fn segment_count(&self) -> usize {
        self.state.borrow().segments.len()
    }

    /// Released when the high watermark moves (new data is readable).
    pub fn appended(&self) -> Rc<Notify> {
        self.appended.clone()
    }

    /// The settings this log runs with.
    pub fn config(&self) -> LogConfig {
        self.config.borrow().clone()
    }

    /// Takes new settings (a topic's configs changed): the next append rolls and indexes by
    /// them, the next retention pass deletes by them. Segments already written stay as they are.
    pub fn set_config(&self, config: LogConfig) {
        *self.config.borrow_mut() = config;
    }

    /// Appends one validated batch of `record_count` records; returns its base offset once
    /// it and every earlier append are written (visible to readers).
    pub async fn append_batch(&self, batch: Bytes, record_count: u32) -> Result<i64, AppendError> {
        debug_assert!(batch.len() >= HEADER_BYTES && record_count > 0);
        let len = batch.len() as u64;
        if len > self.config.borrow().segment_bytes.max(1 << 20) || len > u32::MAX as u64 / 2 {
            return Err(AppendError::TooLarge(batch.len()));
        }
        let (base_offset, end_offset, seq, log_fd, position, index_flushes, epoch, stamp) = {
            let mut st = self.state.borrow_mut();
            if st.failed.is_some() {
                self.try_repair(&mut st);
            }
            if let Some(why) = &st.failed {
                return Err(AppendError::Failed(why.clone()));
            }
            let needs_roll = {
                let active = st.segments.last().expect("active segment");
                let too_old = self
                    .config
                    .borrow()
                    .segment_ms
                    .is_some_and(|ms| active.created.elapsed().as_millis() as u64 >= ms);
                active.reserved_bytes > 0
                    && (active.reserved_bytes + len > self.config.borrow().segment_bytes || too_old)
            };
            let mut index_flushes = Vec::new();
            if needs_roll {
                let base = st.next_offset;
                let seg = Segment::open(&self.dir, base)?;
                let old = st.segments.last_mut().expect("active segment");
                index_flushes.extend(old.take_index_flush(true));
                st.unsynced.push(seg.log.clone());
                st.segments.push(seg);
                tracing::debug!(dir = %self.dir.display(), base, "rolled to a new segment");
            }
            let base_offset = st.next_offset;
            let end_offset = base_offset + record_count as i64;
            st.next_offset = end_offset;
            let seq = st.next_seq;
            st.next_seq += 1;
            let interval = self.config.borrow().index_interval_bytes;
            let active = st.segments.last_mut().expect("active segment");
            let position = active.reserved_bytes;
            active.reserved_bytes += len;
            active.next_offset = end_offset;
            let max_timestamp = BatchFrame::parse(&batch).map_or(i64::MIN, |f| f.max_timestamp);
            if active
                .last_indexed_position
                .is_none_or(|p| position >= p + interval)
            {
                let rel = (base_offset - active.base_offset) as u32;
                active.index.push(rel, position as u32);
                active.time_index.push((active.max_timestamp, rel));
                active.last_indexed_position = Some(position);
                index_flushes.extend(active.take_index_flush(false));
            }
            active.max_timestamp = active.max_timestamp.max(max_timestamp);
            let segment_base = active.base_offset;
            let log_fd = active.log.clone();
            st.pending.push_back(PendingAppend {
                seq,
                end_offset,
                segment_base,
                end_position: position + len,
                done: false,
            });
            st.writes_in_flight += 1;
            let epoch = st.failure_epoch;
            (
                base_offset,
                end_offset,
                seq,
                log_fd,
                position,
                index_flushes,
                epoch,
                st.stamp_epoch,
            )
        };
        // baseOffset (and a leader's partitionLeaderEpoch) are outside the CRC: write ours,
        // then the batch from after them.
        let bufs = match stamp {
            None => vec![
                Bytes::copy_from_slice(&base_offset.to_be_bytes()),
                batch.slice(8..),
            ],
            Some(leader_epoch) => {
                let mut head = [0u8; 16];
                head[..8].copy_from_slice(&base_offset.to_be_bytes());
                head[8..12].copy_from_slice(&batch[8..12]);
                head[12..].copy_from_slice(&leader_epoch.to_be_bytes());
                vec![Bytes::copy_from_slice(&head), batch.slice(16..)]
            }
        };
        // The write and its bookkeeping run as a task of their own: once offsets are handed
        // out, the append must end written or failed even if this future is dropped, or its
        // pending entry would hold the high watermark back for ever.
        let write = AppendWrite {
            dir: self.dir.clone(),
            state: self.state.clone(),
            appended: self.appended.clone(),
            seq,
            epoch,
            settled: false,
        };
        let written = spawn(write.run(log_fd, bufs, position, index_flushes)).await;
        written
            .unwrap_or_else(|_| Err(AppendError::Failed("the shard stopped mid-append".into())))?;
        // Wait until every earlier append is written too, so the caller's data is visible.
        // (Only watching: a caller dropped here leaves nothing behind.)
        loop {
            let notified = self.appended.notified();
            {
                let st = self.state.borrow();
                // Committed wins: data below the high watermark when a failure began is kept
                // by the cut back, whatever failed after it.
                if st.committed_through(epoch) >= end_offset {
                    return Ok(base_offset);
                }
                if st.failure_epoch != epoch {
                    return Err(AppendError::Failed(
                        "an earlier append of this partition failed".into(),
                    ));
                }
                if let Some(why) = &st.failed {
                    return Err(AppendError::Failed(why.clone()));
                }
            }
            notified.await;
        }
    }

    /// After a failed write, once no write is in flight: cut the active segment (and its
    /// indexes) back to the high watermark and accept appends again. Rare control path: plain
    /// ftruncate calls.
    fn try_repair(&self, st: &mut State) {
        if !st.repairable || st.writes_in_flight > 0 {
            return;
        }
        let hw = st.high_watermark;
        let active = st.segments.last_mut().expect("active segment");
        if active.base_offset > hw {
            // The failure came right after a roll; a restart's recovery scan handles that.
            return;
        }
        let keep = active.committed_bytes;
        let entries = active.index.truncate_at_position(keep as u32);
        active.time_index.truncate(entries);
        active.last_indexed_position = active.index.last_position().map(u64::from);
        active.index_on_disk = active.index_on_disk.min(entries);
        let entries = active.index_on_disk;
        let cut = |fd: &SharedFd, len: u64| -> io::Result<()> {
            // SAFETY: ftruncate on an fd the segment owns.
            if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        let result = cut(&active.log, keep)
            .and_then(|()| cut(&active.index_file, entries as u64 * 8))
            .and_then(|()| cut(&active.time_index_file, entries as u64 * 12));
        if let Err(e) = result {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot cut the log back yet; still refusing writes");
            return;
        }
        let dropped = active.reserved_bytes - keep;
        active.reserved_bytes = keep;
        active.next_offset = hw;
        st.next_offset = hw;
        // Epochs a failed replicated append recorded for offsets it did not keep (the file
        // drops them at the next open).
        st.epochs.drop_past(hw);
        st.pending.clear();
        st.failed = None;
        st.repairable = false;
        tracing::warn!(dir = %self.dir.display(), high_watermark = hw, dropped_bytes = dropped, "partition cut back to its high watermark after a failed write; accepting writes again");
    }

    /// Below this offset everything is on stable storage (tests).
    #[cfg(test)]
    pub(crate) fn synced_offset(&self) -> i64 {
        self.state.borrow().synced_offset
    }

    /// Returns once everything below `offset` is on stable storage (fdatasync through the
    /// ring). Concurrent callers share syncs: group commit.
    pub async fn sync_to(&self, offset: i64) -> Result<(), AppendError> {
        loop {
            let notified = self.synced.notified();
            let running = {
                let st = self.state.borrow();
                if st.synced_offset >= offset {
                    return Ok(());
                }
                if let Some(why) = &st.failed {
                    return Err(AppendError::Failed(why.clone()));
                }
                // Nothing written or in flight reaches it: a truncation took it away.
                if offset > st.next_offset {
                    return Err(AppendError::Truncated {
                        offset,
                        log_end: st.next_offset,
                    });
                }
                st.sync_running
            };
            if running {
                // A sync is under way; it may not cover us, so check again after it.
                notified.await;
                continue;
            }
            let (fds, target) = {
                let mut st = self.state.borrow_mut();
                st.sync_running = true;
                let active = st.segments.last().expect("active").log.clone();
                let mut fds = std::mem::replace(&mut st.unsynced, vec![active.clone()]);
                if !fds.iter().any(|f| std::sync::Arc::ptr_eq(f, &active)) {
                    fds.push(active);
                }
                (fds, st.high_watermark)
            };
            // The fdatasyncs run as a task of their own, so a caller dropped mid-sync neither
            // leaves the sync marked running for ever nor loses an fdatasync's error (the
            // kernel reports a writeback error once per open file: lost, it never comes back).
            let sync = SyncRun {
                dir: self.dir.clone(),
                state: self.state.clone(),
                synced: self.synced.clone(),
                fds,
                settled: false,
            };
            let result = spawn(sync.run(target)).await;
            let result =
                result.unwrap_or_else(|_| Err(io::Error::other("the shard stopped mid-sync")));
            result?;
        }
    }

    /// Finds the batch holding `offset`: (segment file, segment base, batch position, batch
    /// length, committed end of that segment), or an early answer when nothing is to be read.
    /// After a cleaning an offset may fall in a gap: the batch after it is found, in the next
    /// segment if the gap runs to the end of this one (Kafka's Fetch serves the next batches).
    async fn locate(&self, offset: i64) -> Result<Result<Located, ReadResult>, ReadError> {
        let (high_watermark, log_start_offset) = {
            let st = self.state.borrow();
            let (hw, start) = (st.high_watermark, st.log_start_offset);
            if offset < start || offset > hw {
                return Err(ReadError::OutOfRange {
                    offset,
                    log_start: start,
                    high_watermark: hw,
                });
            }
            (hw, start)
        };
        let nothing = ReadResult {
            records: Bytes::new(),
            high_watermark,
            log_start_offset,
        };
        if offset == high_watermark {
            return Ok(Err(nothing));
        }
        // Where the search goes on: `offset`, or the base of the segment after the one where
        // a gap ran to its end. By offset, not by segment: a cleaning may merge segments
        // while `locate_in` awaits, and the next segment's offsets then sit in the merged one.
        let mut search_from = offset;
        loop {
            let (log_fd, seg_base, position, end, next_base) = {
                let st = self.state.borrow();
                let i = st
                    .segments
                    .partition_point(|s| s.base_offset <= search_from)
                    .checked_sub(1);
                let Some(i) = i else {
                    return Ok(Err(nothing));
                };
                let seg = &st.segments[i];
                if seg.base_offset >= high_watermark {
                    return Ok(Err(nothing));
                }
                let pos = seg.index.lookup((search_from - seg.base_offset) as u32) as u64;
                (
                    seg.log.clone(),
                    seg.base_offset,
                    pos,
                    seg.committed_bytes,
                    st.segments.get(i + 1).map(|n| n.base_offset),
                )
            };
            match self
                .locate_in(offset, &log_fd, seg_base, position, end)
                .await?
            {
                Some((position, first_len)) => {
                    return Ok(Ok(Located {
                        log_fd,
                        seg_base,
                        position,
                        first_len,
                        end,
                        high_watermark,
                        log_start_offset,
                    }))
                }
                None => match next_base {
                    Some(next) => search_from = search_from.max(next),
                    // Data below the high watermark must exist in the active segment;
                    // reaching its end means damage.
                    None => {
                        return Err(ReadError::Corrupt {
                            segment: seg_base,
                            position: end,
                        })
                    }
                },
            }
        }
    }

    /// Walks batch headers of one segment from `position` to `end`: the position and length
    /// of the first batch ending past `offset`, `None` when none does before `end`.
    async fn locate_in(
        &self,
        offset: i64,
        log_fd: &SharedFd,
        seg_base: i64,
        mut position: u64,
        end: u64,
    ) -> Result<Option<(u64, u64)>, ReadError> {
        // Walk batch headers from the indexed position, reading windows large enough to cover
        // an index interval in one go, but never more than LOCATE_WINDOW_BYTES_MAX at a time:
        // `index.interval.bytes` may be up to 2 GiB, and a wider gap is walked window by window.
        let window = locate_window_bytes(self.config.borrow().index_interval_bytes);
        let mut buf = BytesMut::new();
        let mut buf_pos = position;
        loop {
            if position >= end {
                return Ok(None);
            }
            if end - position < HEADER_BYTES as u64 {
                return Err(ReadError::Corrupt {
                    segment: seg_base,
                    position,
                });
            }
            let in_buf = (position - buf_pos) as usize;
            if buf.len() < in_buf + HEADER_BYTES {
                buf.clear();
                buf_pos = position;
                let want = window.min((end - position) as usize);
                #[cfg(test)]
                LOCATE_READ_BYTES_MAX.with(|m| m.set(m.get().max(want)));
                buf = op::read_exact_at(log_fd, buf, position, want).await?;
                continue;
            }
            let frame = BatchFrame::parse(&buf[in_buf..]).ok_or(ReadError::Corrupt {
                segment: seg_base,
                position,
            })?;
            if frame.next_offset() > offset {
                return Ok(Some((position, frame.total_bytes as u64)));
            }
            position += frame.total_bytes as u64;
        }
    }

    /// Reads whole batches starting with the one that holds `offset`, up to `max_bytes`
    /// (always at least one batch when any is available, as Kafka does, KIP-74).
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult, ReadError> {
        let at = match self.locate(offset).await? {
            Ok(at) => at,
            Err(empty) => return Ok(empty),
        };
        let want = (at.end - at.position).min((max_bytes as u64).max(at.first_len)) as usize;
        let data =
            op::read_exact_at(&at.log_fd, BytesMut::with_capacity(want), at.position, want).await?;
        let mut keep = 0;
        while keep < data.len() {
            match BatchFrame::parse(&data[keep..]) {
                Some(f) if keep + f.total_bytes <= data.len() => keep += f.total_bytes,
                _ => break,
            }
        }
        if keep == 0 {
            return Err(ReadError::Corrupt {
                segment: at.seg_base,
                position: at.position,
            });
        }
        let mut data = data;
        data.truncate(keep);
        Ok(ReadResult {
            records: data.freeze(),
            high_watermark: at.high_watermark,
            log_start_offset: at.log_start_offset,
        })
    }

    /// Like `read`, but hands out the file range instead of its bytes, for splice. The range
    /// ends on a batch boundary: the committed end of the segment, an indexed batch start, or
    /// (for ranges shorter than an index interval) a boundary found by reading headers.
    pub async fn read_slice(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Result<SliceResult, ReadError> {
        let at = match self.locate(offset).await? {
            Ok(at) => at,
            Err(empty) => {
                return Ok(SliceResult {
                    slice: None,
                    high_watermark: empty.high_watermark,
                    log_start_offset: empty.log_start_offset,
                })
            }
        };
        self.slice_at(at, max_bytes).await
    }

    /// The file range of whole batches from `at`, up to `max_bytes` (at least the first
    /// batch), ending at or before `at.end`.
    async fn slice_at(&self, at: Located, max_bytes: usize) -> Result<SliceResult, ReadError> {
        let limit = at.position + (max_bytes as u64).max(at.first_len);
        let indexed_end = || {
            let st = self.state.borrow();
            // The same file: a cleaning may have swapped in another segment of that base.
            let seg = st
                .segments
                .iter()
                .find(|s| std::sync::Arc::ptr_eq(&s.log, &at.log_fd))?;
            seg.index
                .last_position_in((at.position + at.first_len - 1) as u32, limit as u32)
        };
        let end = if at.end <= limit {
            at.end
        } else if let Some(p) = indexed_end() {
            p as u64
        } else {
            // Fewer bytes than an index interval: extend batch by batch, reading headers.
            let mut end = at.position + at.first_len;
            while end + HEADER_BYTES as u64 <= at.end {
                let header = op::read_exact_at(
                    &at.log_fd,
                    BytesMut::with_capacity(HEADER_BYTES),
                    end,
                    HEADER_BYTES,
                )
                .await?;
                let f = BatchFrame::parse(&header).ok_or(ReadError::Corrupt {
                    segment: at.seg_base,
                    position: end,
                })?;
                if end + f.total_bytes as u64 > limit {
                    break;
                }
                end += f.total_bytes as u64;
            }
            end
        };
        debug_assert!(end > at.position && end <= at.end);
        Ok(SliceResult {
            slice: Some(FileSlice {
                file: at.log_fd,
                position: at.position,
                len: (end - at.position) as u32,
            }),
            high_watermark: at.high_watermark,
            log_start_offset: at.log_start_offset,
        })
    }

    /// Deletes whole old segments (never the active one) that retention no longer keeps:
    /// newest record older than `retention_ms` before `now_ms`, or beyond `retention_bytes`.
    /// The log start offset moves to the first remaining segment. A file still being read
    /// (an in-flight splice holds its fd) stays readable until that read ends.
    /// Returns how many segments were deleted. Unlinks are plain syscalls (rare, small).
    pub fn enforce_retention(&self, now_ms: i64) -> io::Result<usize> {
        let removed: Vec<Segment> = {
            let mut st = self.state.borrow_mut();
            // A failed log's files may not be what its segments say (a cleaner's swap failed
            // half way): nothing is deleted by name until a reopen has sorted them out.
            if st.failed.is_some() {
                return Ok(0);
            }
            let mut total: u64 = st.segments.iter().map(|s| s.committed_bytes).sum();
            let mut count = 0;
            while count + 1 < st.segments.len() {
                let seg = &st.segments[count];
                let expired = self
                    .config
                    .borrow()
                    .retention_ms
                    .is_some_and(|ms| seg.max_timestamp < now_ms - ms as i64);
                let over = self
                    .config
                    .borrow()
                    .retention_bytes
                    .is_some_and(|b| total - seg.committed_bytes >= b);
                if !(expired || over) {
                    break;
                }
                total -= seg.committed_bytes;
                count += 1;
            }
            let removed: Vec<Segment> = st.segments.drain(..count).collect();
            if count > 0 {
                // A DeleteRecords start inside the first remaining segment stays.
                st.log_start_offset = st.log_start_offset.max(st.segments[0].base_offset);
            }
            removed
        };
        for seg in &removed {
            for ext in ["log", "index", "timeindex"] {
                let path = self
                    .dir
                    .join(crate::segment::file_name(seg.base_offset, ext));
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not delete a retired segment file");
                }
            }
        }
        if !removed.is_empty() {
            tracing::info!(dir = %self.dir.display(), segments = removed.len(), log_start_offset = self.log_start_offset(), "retention deleted old segments");
        }
        Ok(removed.len())
    }

    /// Flushes everything for a clean shutdown: the log data and every index file.
    pub async fn close(&self) -> Result<(), AppendError> {
        self.sync_to(self.high_watermark()).await?;
        let (flushes, index_files): (Vec<_>, Vec<_>) = {
            let mut st = self.state.borrow_mut();
            let flushes = st
                .segments
                .iter_mut()
                .filter_map(|s| s.take_index_flush(true))
                .collect();
            let files = st
                .segments
                .iter()
                .flat_map(|s| [s.index_file.clone(), s.time_index_file.clone()])
                .collect();
            (flushes, files)
        };
        // The flushes were taken (the segments count them as written): they run to the end
        // in a task of their own even if this future is dropped.
        let flushed = spawn(async move {
            for flush in flushes {
                flush.write().await?;
            }
            for fd in index_files {
                op::fdatasync(&fd).await?;
            }
            Ok::<(), io::Error>(())
        })
        .await;
        flushed.unwrap_or_else(|_| Err(io::Error::other("the shard stopped mid-close")))?;
        Ok(())
    }

    /// Writes the recovery checkpoint if the durable part of the log grew since the last one;
    /// returns the checkpoint written. The recovery point is the greater of the last
    /// fdatasync'd offset and the base of the segment holding the high watermark (the
    /// segments rolled away before it are complete, and are fdatasync'd here, as Kafka
    /// flushes a segment when it rolls). Before the checkpoint is written, every segment it
    /// newly covers gets its index files written whole and fdatasync'd, and so do the index
    /// entries below the recovery point of the segment holding it: a checkpoint never
    /// promises more than is on stable storage. Meant for a periodic per-shard task; cheap
    /// when nothing changed.
    pub async fn checkpoint_recovery_point(&self) -> io::Result<Option<Checkpoint>> {
        let (offset, high_watermark) = {
            let st = self.state.borrow();
            if st.failed.is_some() || st.removed || st.checkpoint_running {
                return Ok(None);
            }
            let hw = st.high_watermark;
            // Retention may have deleted the high watermark's segment while appends to a
            // newer one are in flight; try again later.
            let Some(hw_segment) = st
                .segments
                .partition_point(|s| s.base_offset <= hw)
                .checked_sub(1)
            else {
                return Ok(None);
            };
            let offset = st.synced_offset.max(st.segments[hw_segment].base_offset);
            if offset <= st.checkpoint.map_or(st.log_start_offset, |c| c.offset) {
                return Ok(None);
            }
            (offset, hw)
        };
        // Where the recovery point sits: the end of the committed bytes at the high watermark,
        // else the start of the batch at that offset (always a batch boundary).
        let at = if offset < high_watermark {
            match self.locate(offset).await {
                Ok(Ok(at)) => Some((at.seg_base, at.position)),
                Ok(Err(_)) => None,
                Err(ReadError::Io(e)) => return Err(e),
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        } else {
            None
        };
        let (checkpoint, index_writes, log_files, index_files, mut file) = {
            let mut st = self.state.borrow_mut();
            if st.failed.is_some() || st.removed || st.checkpoint_running {
                return Ok(None);
            }
            let (segment_base, position) = match at {
                Some(at) => at,
                None => {
                    let seg = st.segments.iter().rev().find(|s| s.base_offset <= offset);
                    match seg {
                        Some(seg) if st.high_watermark == offset => {
                            (seg.base_offset, seg.committed_bytes)
                        }
                        _ => return Ok(None), // moved on meanwhile; next time
                    }
                }
            };
            let Some(si) = st
                .segments
                .iter()
                .position(|s| s.base_offset == segment_base)
            else {
                return Ok(None); // deleted by retention meanwhile
            };
            let below = st.durable_segments_below;
            let (mut index_writes, mut log_files, mut index_files) =
                (Vec::new(), Vec::new(), Vec::new());
            for seg in st.segments[..si].iter().filter(|s| s.base_offset >= below) {
                index_writes.extend(seg.index_range_write(seg.index_durable, seg.index.len()));
                log_files.push(seg.log.clone());
                index_files.extend([seg.index_file.clone(), seg.time_index_file.clone()]);
            }
            let seg = &st.segments[si];
            let index_entries = seg.index.entries_below(position);
            if let Some(w) = seg.index_range_write(seg.index_durable, index_entries) {
                index_writes.push(w);
                index_files.extend([seg.index_file.clone(), seg.time_index_file.clone()]);
            }
            let file = match st.checkpoint_file.take() {
                Some(f) => f,
                None => CheckpointFile::open(&self.dir, st.checkpoint_sequence)?,
            };
            st.checkpoint_running = true;
            let checkpoint = Checkpoint {
                offset,
                segment_base,
                position,
                index_entries: index_entries as u64,
            };
            (checkpoint, index_writes, log_files, index_files, file)
        };
        // The writes and syncs run as a task of their own, like `sync_to`'s: a caller dropped
        // mid-pass must neither leave `checkpoint_running` set for ever nor lose an fdatasync
        // error of a rolled segment.
        let mut pass = CheckpointPass {
            dir: self.dir.clone(),
            state: self.state.clone(),
            settled: false,
        };
        let run = async move {
            let mut log_failed = false;
            let written = async {
                for w in index_writes {
                    w.write().await?;
                }
                for fd in &log_files {
                    op::fdatasync(fd).await.inspect_err(|_| log_failed = true)?;
                }
                for fd in &index_files {
                    op::fdatasync(fd).await?;
                }
                file.write(&checkpoint).await
            }
            .await;
            pass.settled = true;
            let mut st = pass.state.borrow_mut();
            st.checkpoint_running = false;
            st.checkpoint_file = Some(file);
            if let Err(e) = written {
                if log_failed && st.failed.is_none() {
                    tracing::error!(dir = %pass.dir.display(), error = %e, "fdatasync of a rolled segment failed; partition stops accepting writes");
                    st.failed = Some(e.to_string());
                    st.repairable = false;
                }
                return Err(e);
            }
            for seg in st.segments.iter_mut() {
                if seg.base_offset >= checkpoint.segment_base {
                    if seg.base_offset == checkpoint.segment_base {
                        let entries = checkpoint.index_entries as usize;
                        seg.index_durable = seg.index_durable.max(entries);
                        seg.index_on_disk = seg.index_on_disk.max(entries);
                    }
                    break;
                }
                seg.index_durable = seg.index.len();
            }
            st.durable_segments_below = st.durable_segments_below.max(checkpoint.segment_base);
            st.checkpoint = Some(checkpoint);
            Ok(Some(checkpoint))
        };
        spawn(run)
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the shard stopped mid-checkpoint")))
    }

    /// Deletes the log's directory (control plane; plain blocking calls).
    pub fn remove_files(&self) -> io::Result<()> {
        self.state.borrow_mut().removed = true;
        std::fs::remove_dir_all(&self.dir)
    }
}

/// Marks append `seq` written and moves the high watermark past every written append at the
/// front of the queue.
fn complete(state: &RefCell<State>, appended: &Notify, seq: u64) {
    let moved = {
        let mut st = state.borrow_mut();
        let front_seq = st
            .pending
            .front()
            .map(|p| p.seq)
            .expect("completed append is pending");
        st.pending[(seq - front_seq) as usize].done = true;
        let mut moved = false;
        while st.pending.front().is_some_and(|p| p.done) {
            let p = st.pending.pop_front().expect("front exists");
            st.high_watermark = p.end_offset;
            if let Some(seg) = st
                .segments
                .iter_mut()
                .rev()
                .find(|s| s.base_offset == p.segment_base)
            {
                seg.committed_bytes = p.end_position;
            }
            moved = true;
        }
        moved
    };
    if moved {
        appended.notify_all();
    }
}

/// An append's write of its batch (and of the index entries it filled), then its bookkeeping:
/// completed, or failed (repairable). Dropped unfinished (the shard's executor stopped),
/// the write may still land, so the guard fails the log until a reopen recovers it.
struct AppendWrite {
    dir: Rc<Path>,
    state: Rc<RefCell<State>>,
    appended: Rc<Notify>,
    seq: u64,
    epoch: u64,
    settled: bool,
}

impl AppendWrite {
    /// Writes `bufs` (one batch, or several whole ones) at `position` of `log_fd`.
    async fn run(
        mut self,
        log_fd: SharedFd,
        bufs: Vec<Bytes>,
        position: u64,
        index_flushes: Vec<IndexFlush>,
    ) -> Result<(), AppendError> {
        let mut written = op::writev_all_at(&log_fd, bufs, position).await;
        for flush in index_flushes {
            if written.is_err() {
                break;
            }
            written = flush.write().await;
        }
        // No await from here on.
        self.settled = true;
        self.state.borrow_mut().writes_in_flight -= 1;
        if let Err(e) = written {
            {
                let mut st = self.state.borrow_mut();
                if st.failed.is_none() {
                    tracing::error!(dir = %self.dir.display(), error = %e, high_watermark = st.high_watermark, "append failed; partition refuses writes until the log is cut back to its high watermark");
                    st.failed = Some(e.to_string());
                    st.repairable = true;
                }
                st.begin_failure_epoch();
            }
            self.appended.notify_all();
            return Err(AppendError::Io(e));
        }
        if self.state.borrow().failure_epoch != self.epoch {
            return Err(AppendError::Failed(
                "an earlier append of this partition failed".into(),
            ));
        }
        complete(&self.state, &self.appended, self.seq);
        Ok(())
    }
}

impl Drop for AppendWrite {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Its write may still be in the kernel: the log cannot be cut back under it, so it
        // stays failed (and `writes_in_flight` stays up) until a reopen scans the files.
        if let Ok(mut st) = self.state.try_borrow_mut() {
            tracing::error!(dir = %self.dir.display(), "an append was abandoned mid-write; partition refuses writes until reopened");
            if st.failed.is_none() {
                st.failed = Some("an append was abandoned mid-write".into());
            }
            st.repairable = false;
            st.begin_failure_epoch();
        }
        self.appended.notify_all();
    }
}

/// One group-commit sync: an fdatasync of every file in `fds`, then the bookkeeping (synced
/// offset, or the failure). Dropped unfinished (the shard's executor stopped), the guard
/// clears the running flag, hands the files back for a later sync and fails the log: an
/// fdatasync whose outcome nobody saw may have swallowed a writeback error.
struct SyncRun {
    dir: Rc<Path>,
    state: Rc<RefCell<State>>,
    synced: Rc<Notify>,
    fds: Vec<SharedFd>,
    settled: bool,
}

impl SyncRun {
    async fn run(mut self, target: i64) -> io::Result<()> {
        let mut result = Ok(());
        for fd in &self.fds {
            let started = std::time::Instant::now();
            let synced = op::fdatasync(fd).await;
            FSYNC_SECONDS.with(|h| h.record(started.elapsed().as_secs_f64()));
            if let Err(e) = synced {
                result = Err(e);
                break;
            }
        }
        // No await from here on.
        self.settled = true;
        {
            let mut st = self.state.borrow_mut();
            st.sync_running = false;
            match &result {
                Ok(()) => st.synced_offset = st.synced_offset.max(target),
                Err(e) => {
                    tracing::error!(dir = %self.dir.display(), error = %e, "fdatasync failed; partition stops accepting writes");
                    st.failed = Some(e.to_string());
                    // Even after a write failure: a failed sync is never repairable.
                    st.repairable = false;
                }
            }
        }
        self.synced.notify_all();
        result
    }
}

impl Drop for SyncRun {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Ok(mut st) = self.state.try_borrow_mut() {
            tracing::error!(dir = %self.dir.display(), "an fdatasync was abandoned; partition refuses writes until reopened");
            st.sync_running = false;
            st.repairable = false;
            for fd in self.fds.drain(..) {
                if !st.unsynced.iter().any(|f| std::sync::Arc::ptr_eq(f, &fd)) {
                    st.unsynced.push(fd);
                }
            }
            if st.failed.is_none() {
                st.failed = Some("an fdatasync was abandoned before its outcome was seen".into());
            }
        }
        self.synced.notify_all();
    }
}

/// One recovery checkpoint pass. Dropped unfinished (the shard's executor stopped), it clears
/// the running flag and fails the log, as an abandoned sync does: an fdatasync of a rolled
/// segment whose outcome nobody saw may have swallowed a writeback error.
struct CheckpointPass {
    dir: Rc<Path>,
    state: Rc<RefCell<State>>,
    settled: bool,
}

impl Drop for CheckpointPass {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Ok(mut st) = self.state.try_borrow_mut() {
            tracing::error!(dir = %self.dir.display(), "a recovery checkpoint was abandoned; partition refuses writes until reopened");
            st.checkpoint_running = false;
            if st.failed.is_none() {
                st.failed = Some("a recovery checkpoint was abandoned mid-pass".into());
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ringbroker_runtime::block_on;
    use std::future::Future;

    /// An uncompressed v2 batch of `n` records of `size` bytes, CRC valid.
    pub(crate) fn batch(n: usize, size: usize, ts: i64) -> Bytes {
        let mut records = Vec::new();
        for i in 0..n {
            let mut body = vec![0u8, 0, (i as u8) << 1, 1];
            body.push((size as u8) << 1); // small sizes only (< 64)
            body.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, size));
            body.push(0);
            records.push((body.len() as u8) << 1);
            records.extend_from_slice(&body);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&((49 + records.len()) as i32).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.push(2);
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(n as i32 - 1).to_be_bytes());
        b.extend_from_slice(&ts.to_be_bytes());
        b.extend_from_slice(&ts.to_be_bytes());
        b.extend_from_slice(&(-1i64).to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&(n as i32).to_be_bytes());
        b.extend_from_slice(&records);
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(b)
    }

    fn offsets_in(records: &[u8]) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < records.len() {
            let f = BatchFrame::parse(&records[at..]).unwrap();
            out.push((f.base_offset, f.next_offset()));
            at += f.total_bytes;
        }
        out
    }

    fn small_config() -> LogConfig {
        LogConfig {
            segment_bytes: 4096,
            index_interval_bytes: 256,
            ..LogConfig::default()
        }
    }

    #[test]
    fn concurrent_appends_get_contiguous_offsets_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        block_on(async move {
            let log = Rc::new(PartitionLog::open(&path, small_config()).unwrap());
            let handles: Vec<_> = (0..50)
                .map(|i| {
                    let log = log.clone();
                    spawn(async move {
                        log.append_batch(batch(1 + i % 3, 20, i as i64), 1 + (i % 3) as u32)
                            .await
                    })
                })
                .collect();
            let mut bases = Vec::new();
            for h in handles {
                bases.push(h.await.unwrap().unwrap());
            }
            bases.sort();
            let total: i64 = (0..50).map(|i| 1 + i % 3).sum();
            assert_eq!(log.high_watermark(), total);
            assert!(log.segment_count() > 1, "4 KiB segments must have rolled");
            // Every offset reads back from the batch that holds it.
            for offset in 0..total {
                let r = log.read(offset, 1).await.unwrap();
                let (base, next) = offsets_in(&r.records)[0];
                assert!(
                    base <= offset && offset < next,
                    "offset {offset} in [{base},{next})"
                );
            }
            let r = log.read(total, 1000).await.unwrap();
            assert!(r.records.is_empty());
            assert!(matches!(
                log.read(total + 1, 10).await,
                Err(ReadError::OutOfRange { .. })
            ));
            log.sync_to(total).await.unwrap();
        })
        .unwrap();
    }

    #[test]
    fn reopen_recovers_offsets_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let p2 = path.clone();
        block_on(async move {
            let log = PartitionLog::open(&p2, LogConfig::default()).unwrap();
            for i in 0..10 {
                log.append_batch(batch(2, 10, i), 2).await.unwrap();
            }
            log.sync_to(20).await.unwrap();
        })
        .unwrap();
        let seg = path.join("00000000000000000000.log");
        let good_len = std::fs::metadata(&seg).unwrap().len();
        // Append garbage, as a crash mid-write might leave.
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        std::io::Write::write_all(&mut f, &[0xAB; 100]).unwrap();
        drop(f);
        block_on(async move {
            let log = PartitionLog::open(&path, LogConfig::default()).unwrap();
            assert_eq!(log.high_watermark(), 20);
            assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len);
            let r = log.read(0, 1 << 20).await.unwrap();
            assert_eq!(offsets_in(&r.records).len(), 10);
            assert_eq!(log.append_batch(batch(1, 5, 0), 1).await.unwrap(), 20);
        })
        .unwrap();
    }

    /// Flips one byte of a file (inside a record: the batch's CRC no longer matches).
    fn flip_byte(path: &Path, position: u64) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, position).unwrap();
        f.write_all_at(&[b[0] ^ 0x5A], position).unwrap();
    }

    /// Bytes of one `batch(2, 30, _)`: 61 of header, two records of 37.
    const BATCH_2X30_BYTES: u64 = 135;

    #[test]
    fn after_a_crash_only_the_bytes_after_the_recovery_point_are_scanned() {
        // 4 KiB segments hold 30 batches of 2 records: bases 0, 60, 120.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let cfg = LogConfig {
            segment_bytes: 4096,
            index_interval_bytes: 256,
            ..LogConfig::default()
        };
        let seg = |base: i64| path.join(crate::segment::file_name(base, "log"));
        let (p1, c1) = (path.clone(), cfg.clone());
        let checkpoint = block_on(async move {
            let log = PartitionLog::open(&p1, c1).unwrap();
            assert_eq!(log.checkpoint_recovery_point().await.unwrap(), None);
            for i in 0..45 {
                log.append_batch(batch(2, 30, i), 2).await.unwrap();
            }
            log.sync_to(90).await.unwrap();
            let c = log
                .checkpoint_recovery_point()
                .await
                .unwrap()
                .expect("a checkpoint");
            assert_eq!(
                log.checkpoint_recovery_point().await.unwrap(),
                None,
                "nothing new"
            );
            // Written, not synced: a kill -9 keeps them in the page cache.
            for i in 45..70 {
                log.append_batch(batch(2, 30, i), 2).await.unwrap();
            }
            assert_eq!(log.segment_count(), 3);
            c
            // Dropped without close: as after kill -9.
        })
        .unwrap();
        assert_eq!(
            checkpoint,
            crate::checkpoint::Checkpoint {
                offset: 90,
                segment_base: 60,
                position: 15 * BATCH_2X30_BYTES,
                index_entries: 8, // one entry per 2 batches (270 bytes >= 256)
            }
        );
        let index_of_60 = path.join(crate::segment::file_name(60, "index"));
        assert!(std::fs::metadata(&index_of_60).unwrap().len() >= 8 * 8);
        // Damage below the recovery point goes unnoticed: those bytes are trusted, not read.
        flip_byte(&seg(0), BATCH_2X30_BYTES + 70);
        flip_byte(&seg(60), 3 * BATCH_2X30_BYTES + 100);
        // Half of the durable index entries lost: the header walk covers the rest.
        std::fs::File::options()
            .write(true)
            .open(&index_of_60)
            .unwrap()
            .set_len(4 * 8)
            .unwrap();
        // Damage after it is found: batch 5 of segment 120 (offset 130) ends the log.
        flip_byte(&seg(120), 5 * BATCH_2X30_BYTES + 100);
        let (p2, c2) = (path.clone(), cfg.clone());
        block_on(async move {
            let log = PartitionLog::open(&p2, c2).unwrap();
            assert_eq!(
                log.recovery_report(),
                RecoveryReport {
                    scanned_bytes: 15 * BATCH_2X30_BYTES + 10 * BATCH_2X30_BYTES,
                    log_bytes: 70 * BATCH_2X30_BYTES,
                }
            );
            assert_eq!(log.high_watermark(), 130);
            for offset in 0..130 {
                let r = log.read(offset, 1).await.unwrap();
                let (base, next) = offsets_in(&r.records)[0];
                assert!(
                    base <= offset && offset < next,
                    "{offset} in [{base},{next})"
                );
            }
            assert_eq!(log.append_batch(batch(2, 30, 0), 2).await.unwrap(), 130);
            log.sync_to(132).await.unwrap();
            let c = log
                .checkpoint_recovery_point()
                .await
                .unwrap()
                .expect("a checkpoint");
            assert_eq!((c.offset, c.segment_base), (132, 120));
        })
        .unwrap();
    }

    #[test]
    fn without_syncs_the_recovery_point_follows_segment_rolls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let cfg = LogConfig {
            segment_bytes: 4096,
            index_interval_bytes: 256,
            ..LogConfig::default()
        };
        let seg = |base: i64| path.join(crate::segment::file_name(base, "log"));
        let (p1, c1) = (path.clone(), cfg.clone());
        block_on(async move {
            let log = PartitionLog::open(&p1, c1).unwrap();
            for i in 0..20 {
                log.append_batch(batch(2, 30, i), 2).await.unwrap();
            }
            // Nothing synced, nothing rolled: nothing to promise.
            assert_eq!(log.checkpoint_recovery_point().await.unwrap(), None);
            for i in 20..70 {
                log.append_batch(batch(2, 30, i), 2).await.unwrap();
            }
            let c = log
                .checkpoint_recovery_point()
                .await
                .unwrap()
                .expect("a checkpoint");
            // The rolled segments were synced by the checkpoint; the active one was not.
            assert_eq!((c.offset, c.segment_base, c.position), (120, 120, 0));
        })
        .unwrap();
        flip_byte(&seg(0), 2 * BATCH_2X30_BYTES + 100);
        flip_byte(&seg(60), 29 * BATCH_2X30_BYTES + 100);
        flip_byte(&seg(120), 3 * BATCH_2X30_BYTES + 100);
        block_on(async move {
            let log = PartitionLog::open(&path, cfg).unwrap();
            assert_eq!(log.recovery_report().scanned_bytes, 10 * BATCH_2X30_BYTES);
            assert_eq!(log.high_watermark(), 126);
            assert_eq!(log.segment_count(), 3);
        })
        .unwrap();
    }

    #[test]
    fn a_deleted_log_writes_no_checkpoint_into_a_recreated_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        block_on(async move {
            let log = PartitionLog::open(&path, LogConfig::default()).unwrap();
            log.append_batch(batch(2, 30, 0), 2).await.unwrap();
            log.sync_to(2).await.unwrap();
            log.remove_files().unwrap();
            // The topic is created again under the same name while the old log lingers.
            let new = PartitionLog::open(&path, LogConfig::default()).unwrap();
            assert_eq!(log.checkpoint_recovery_point().await.unwrap(), None);
            assert!(!path.join(crate::checkpoint::FILE_NAME).exists());
            assert_eq!(new.high_watermark(), 0);
        })
        .unwrap();
    }

    #[test]
    fn a_clean_close_reopens_without_a_scan_to_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let cfg = LogConfig {
            segment_bytes: 8192,
            index_interval_bytes: 300,
            ..LogConfig::default()
        };
        let (p1, c1) = (path.clone(), cfg.clone());
        let first = block_on(async move {
            let log = PartitionLog::open(&p1, c1).unwrap();
            for i in 0..200 {
                log.append_batch(batch(1 + i % 3, 30, i as i64), 1 + (i % 3) as u32)
                    .await
                    .unwrap();
            }
            log.close().await.unwrap();
            let all = log.read(0, 1 << 30).await.unwrap().records;
            (log.high_watermark(), log.segment_count(), all)
        })
        .unwrap();
        let (p2, c2) = (path.clone(), cfg.clone());
        block_on(async move {
            let log = PartitionLog::open_with(&p2, c2, Recovery::TrustCleanShutdown).unwrap();
            assert_eq!(
                (log.high_watermark(), log.segment_count()),
                (first.0, first.1)
            );
            for offset in (0..first.0).step_by(7) {
                let r = log.read(offset, 100).await.unwrap();
                let (base, next) = offsets_in(&r.records)[0];
                assert!(base <= offset && offset < next);
            }
            assert_eq!(log.append_batch(batch(1, 5, 0), 1).await.unwrap(), first.0);
        })
        .unwrap();
        // A damaged index is noticed and the segment is scanned instead.
        let idx = path.join("00000000000000000000.index");
        std::fs::write(&idx, [0xFFu8; 16]).unwrap();
        block_on(async move {
            let log = PartitionLog::open_with(&path, cfg, Recovery::TrustCleanShutdown).unwrap();
            assert_eq!(log.high_watermark(), first.0 + 1);
        })
        .unwrap();
    }

    #[test]
    fn index_entries_are_written_in_chunks_and_a_short_index_file_is_completed_at_open() {
        use crate::segment::INDEX_FLUSH_ENTRIES;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let cfg = LogConfig {
            index_interval_bytes: 1,
            ..LogConfig::default()
        };
        let n = INDEX_FLUSH_ENTRIES * 2 + 100;
        let idx = path.join("00000000000000000000.index");
        let tidx = path.join("00000000000000000000.timeindex");
        let (p1, c1) = (path.clone(), cfg.clone());
        let (idx1, tidx1) = (idx.clone(), tidx.clone());
        block_on(async move {
            let log = PartitionLog::open(&p1, c1).unwrap();
            for i in 0..n {
                log.append_batch(batch(1, 20, i as i64), 1).await.unwrap();
            }
            // One write per INDEX_FLUSH_ENTRIES entries; the last 100 are only in memory.
            let on_disk = (INDEX_FLUSH_ENTRIES * 2) as u64;
            assert_eq!(std::fs::metadata(&idx1).unwrap().len(), on_disk * 8);
            assert_eq!(std::fs::metadata(&tidx1).unwrap().len(), on_disk * 12);
            // Not closed: as after a crash that the clean-shutdown check missed.
        })
        .unwrap();
        let (p2, c2) = (path.clone(), cfg.clone());
        block_on(async move {
            let log = PartitionLog::open_with(&p2, c2, Recovery::TrustCleanShutdown).unwrap();
            assert_eq!(log.high_watermark(), n as i64);
            for offset in [0, 1, 700, n as i64 - 50, n as i64 - 1] {
                let r = log.read(offset, 1).await.unwrap();
                assert_eq!(offsets_in(&r.records)[0].0, offset);
            }
            log.append_batch(batch(1, 20, 0), 1).await.unwrap();
            log.close().await.unwrap();
        })
        .unwrap();
        assert_eq!(std::fs::metadata(&idx).unwrap().len(), (n as u64 + 1) * 8);
        assert_eq!(std::fs::metadata(&tidx).unwrap().len(), (n as u64 + 1) * 12);
    }

    #[test]
    fn a_huge_index_interval_does_not_widen_the_reads_that_locate_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        // No index entry after the first: every read walks headers from the segment start.
        let cfg = LogConfig {
            index_interval_bytes: i32::MAX as u64,
            ..LogConfig::default()
        };
        block_on(async move {
            let log = PartitionLog::open(&path, cfg).unwrap();
            // 3000 batches of 20 records, about 3.5 MB in one segment.
            for i in 0..3000 {
                log.append_batch(batch(20, 50, i), 20).await.unwrap();
            }
            let n = log.high_watermark();
            assert_eq!(n, 60_000);
            LOCATE_READ_BYTES_MAX.with(|m| m.set(0));
            for offset in [0, 1, n / 2 + 3, n - 21, n - 1] {
                let r = log.read(offset, 1).await.unwrap();
                let (base, next) = offsets_in(&r.records)[0];
                assert!(base <= offset && offset < next, "{offset}: {base}..{next}");
            }
            let widest = LOCATE_READ_BYTES_MAX.with(|m| m.get());
            assert!(
                widest <= LOCATE_WINDOW_BYTES_MAX,
                "locate read {widest} bytes at once"
            );
            log.close().await.unwrap();
        })
        .unwrap();
    }

    /// The first record at or after `timestamp` in a log of uncompressed batches.
    async fn offset_for_timestamp(
        log: &PartitionLog,
        timestamp: i64,
    ) -> Result<Option<(i64, i64)>, ReadError> {
        let batch = log.batch_for_timestamp(timestamp, 0).await?;
        Ok(batch.and_then(|b| crate::frame::first_record_at_or_after(&b, timestamp)))
    }

    #[test]
    fn timestamps_find_the_first_record_at_or_after_them_before_and_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let cfg = LogConfig {
            segment_bytes: 4096,
            index_interval_bytes: 200,
            ..LogConfig::default()
        };
        for round in 0..3 {
            let (path, cfg) = (path.clone(), cfg.clone());
            block_on(async move {
                let recovery = if round == 2 {
                    Recovery::TrustCleanShutdown
                } else {
                    Recovery::Scan
                };
                let log = PartitionLog::open_with(&path, cfg, recovery).unwrap();
                if round == 0 {
                    // Batch i holds 2 records at timestamp 1000 + 10 i (offsets 2i, 2i+1).
                    for i in 0..200 {
                        log.append_batch(batch(2, 20, 1000 + 10 * i), 2)
                            .await
                            .unwrap();
                    }
                    log.close().await.unwrap();
                }
                assert_eq!(
                    offset_for_timestamp(&log, 0).await.unwrap(),
                    Some((0, 1000))
                );
                assert_eq!(
                    offset_for_timestamp(&log, 1000).await.unwrap(),
                    Some((0, 1000))
                );
                assert_eq!(
                    offset_for_timestamp(&log, 1001).await.unwrap(),
                    Some((2, 1010))
                );
                assert_eq!(
                    offset_for_timestamp(&log, 1995).await.unwrap(),
                    Some((200, 2000))
                );
                assert_eq!(
                    offset_for_timestamp(&log, 2990).await.unwrap(),
                    Some((398, 2990))
                );
                assert_eq!(offset_for_timestamp(&log, 2991).await.unwrap(), None);
            })
            .unwrap();
        }
    }

    #[test]
    fn retention_deletes_whole_old_segments_and_moves_the_log_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        block_on(async move {
            let cfg = LogConfig {
                segment_bytes: 2048,
                retention_ms: Some(1000),
                retention_bytes: Some(5000),
                ..LogConfig::default()
            };
            let log = PartitionLog::open(&path, cfg).unwrap();
            for i in 0..100 {
                log.append_batch(batch(1, 40, 10_000 + i), 1).await.unwrap();
            }
            let segments = log.segment_count();
            assert!(segments > 5);
            // By bytes: at least 5000 bytes stay.
            assert!(log.enforce_retention(0).unwrap() > 0);
            assert!(log.size_bytes() >= 5000 && log.size_bytes() < 5000 + 2048);
            let start = log.log_start_offset();
            assert!(start > 0);
            assert!(matches!(
                log.read(start - 1, 100).await,
                Err(ReadError::OutOfRange { .. })
            ));
            assert!(log.read(start, 100).await.is_ok());
            assert!(!path.join("00000000000000000000.log").exists());
            // By time: everything but the active segment is older than now - 1 s.
            log.enforce_retention(1_000_000).unwrap();
            assert_eq!(log.segment_count(), 1);
            assert_eq!(log.high_watermark(), 100);
            assert_eq!(log.append_batch(batch(1, 5, 0), 1).await.unwrap(), 100);
        })
        .unwrap();
        // The log start survives a reopen (it is the first segment's base offset).
        let log = PartitionLog::open(&dir.path().join("t-0"), LogConfig::default()).unwrap();
        assert!(log.log_start_offset() > 0);
    }

    #[test]
    fn a_new_config_applies_to_the_open_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        block_on(async move {
            let log = PartitionLog::open(&path, LogConfig::default()).unwrap();
            for i in 0..20 {
                log.append_batch(batch(1, 40, 10_000 + i), 1).await.unwrap();
            }
            assert_eq!(log.segment_count(), 1, "1 GiB segments: no roll yet");
            log.set_config(LogConfig {
                segment_bytes: 256,
                retention_bytes: Some(300),
                ..LogConfig::default()
            });
            assert_eq!(log.config().segment_bytes, 256);
            for i in 0..20 {
                log.append_batch(batch(1, 40, 20_000 + i), 1).await.unwrap();
            }
            assert!(log.segment_count() > 5, "rolls at the new segment.bytes");
            assert!(
                log.enforce_retention(0).unwrap() > 0,
                "deletes by the new retention.bytes"
            );
            assert!(log.log_start_offset() > 0);
        })
        .unwrap();
    }

    #[test]
    fn segments_roll_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        block_on(async move {
            let log = PartitionLog::open(
                &path,
                LogConfig {
                    segment_ms: Some(20),
                    ..LogConfig::default()
                },
            )
            .unwrap();
            log.append_batch(batch(1, 5, 0), 1).await.unwrap();
            ringbroker_runtime::op::sleep(std::time::Duration::from_millis(30)).await;
            log.append_batch(batch(1, 5, 0), 1).await.unwrap();
            assert_eq!(log.segment_count(), 2);
        })
        .unwrap();
    }

    #[test]
    fn reads_respect_max_bytes_but_return_at_least_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        block_on(async move {
            let log = PartitionLog::open(&path, LogConfig::default()).unwrap();
            let one = batch(3, 30, 0);
            for _ in 0..10 {
                log.append_batch(one.clone(), 3).await.unwrap();
            }
            let r = log.read(0, 1).await.unwrap();
            assert_eq!(r.records.len(), one.len());
            let r = log.read(4, one.len() * 3 + 5).await.unwrap();
            assert_eq!(offsets_in(&r.records), vec![(3, 6), (6, 9), (9, 12)]);
            assert_eq!(&r.records[8..one.len()], &one[8..]);
        })
        .unwrap();
    }

    /// The bytes of a slice, read back with plain file I/O.
    pub(crate) fn slice_bytes(r: &SliceResult) -> Vec<u8> {
        let s = r.slice.as_ref().expect("a slice");
        let mut buf = vec![0u8; s.len as usize];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::from(s.file.try_clone().unwrap()),
            &mut buf,
            s.position,
        )
        .unwrap();
        buf
    }

    #[test]
    fn slices_end_on_batch_boundaries_and_match_copied_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        block_on(async move {
            let log = PartitionLog::open(
                &path,
                LogConfig {
                    segment_bytes: 1 << 20,
                    index_interval_bytes: 1024,
                    ..LogConfig::default()
                },
            )
            .unwrap();
            for i in 0..300 {
                log.append_batch(batch(1 + i % 4, 40, 0), 1 + (i % 4) as u32)
                    .await
                    .unwrap();
            }
            let hw = log.high_watermark();
            for (offset, max) in [
                (0, 1),
                (0, 500),
                (7, 3000),
                (100, 20_000),
                (hw - 1, 1 << 20),
                (0, 1 << 30),
            ] {
                let sliced = log.read_slice(offset, max).await.unwrap();
                let copied = log.read(offset, max).await.unwrap();
                let bytes = slice_bytes(&sliced);
                let batches = offsets_in(&bytes);
                assert!(batches[0].0 <= offset && offset < batches[0].1);
                assert!(
                    bytes.len() <= max.max(bytes.len().min(200)),
                    "at most max_bytes, or one batch"
                );
                // The slice is a prefix of what a copied read returns (the copy is exact to max_bytes).
                assert_eq!(&copied.records[..bytes.len()], &bytes[..]);
            }
            assert!(log.read_slice(hw, 100).await.unwrap().slice.is_none());
            assert!(matches!(
                log.read_slice(hw + 1, 100).await,
                Err(ReadError::OutOfRange { .. })
            ));
        })
        .unwrap();
    }

    /// Polls `future` once, then drops it: a caller that went away mid-flight.
    fn poll_once_then_drop<F: Future>(future: F) {
        let mut future = std::pin::pin!(future);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let _ = future.as_mut().poll(&mut cx);
    }

    /// Awaits `future` for at most 10 s, so a log left stuck fails the test instead of
    /// hanging it.
    async fn within<F: Future>(future: F) -> F::Output {
        op::timeout(std::time::Duration::from_secs(10), future)
            .await
            .expect("the log is stuck after an operation was dropped mid-flight")
    }

    #[test]
    fn appends_dropped_mid_flight_still_end_written_and_later_appends_proceed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        let p1 = path.clone();
        let total = block_on(async move {
            let log = PartitionLog::open(&p1, small_config()).unwrap();
            let mut next = 0i64;
            for round in 0..24u32 {
                // Dropped right after its first poll (offsets handed out), after its write
                // was submitted, or after it completed but before the caller saw it.
                let mut append = Box::pin(log.append_batch(batch(2, 20, 0), 2));
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                let _ = append.as_mut().poll(&mut cx);
                for _ in 0..round % 4 {
                    ringbroker_runtime::yield_now().await;
                }
                drop(append);
                next += 2;
            }
            for round in 0..16u64 {
                // Dropped by a timeout racing the write (always polled once first).
                let limit = std::time::Duration::from_micros(1 + 20 * round);
                let _ = op::timeout(limit, log.append_batch(batch(1, 20, 0), 1)).await;
                next += 1;
            }
            let base = within(log.append_batch(batch(1, 5, 0), 1)).await.unwrap();
            assert_eq!(base, next, "every dropped append kept its offsets");
            assert_eq!(log.high_watermark(), next + 1);
            assert!(log.segment_count() > 1, "4 KiB segments must have rolled");
            for offset in 0..=next {
                let r = log.read(offset, 1).await.unwrap();
                let (first, end) = offsets_in(&r.records)[0];
                assert!(first <= offset && offset < end);
            }
            within(log.sync_to(next + 1)).await.unwrap();
            next + 1
        })
        .unwrap();
        // The files hold every batch below the high watermark, with no hole.
        block_on(async move {
            let log = PartitionLog::open(&path, small_config()).unwrap();
            assert_eq!(log.high_watermark(), total);
            for offset in 0..total {
                let r = log.read(offset, 1).await.unwrap();
                let (first, end) = offsets_in(&r.records)[0];
                assert!(first <= offset && offset < end);
            }
        })
        .unwrap();
    }

    #[test]
    fn a_sync_dropped_mid_fdatasync_does_not_stop_later_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        block_on(async move {
            let log = PartitionLog::open(&path, small_config()).unwrap();
            for round in 0..8 {
                for i in 0..20 {
                    log.append_batch(batch(1, 20, i), 1).await.unwrap();
                }
                let hw = log.high_watermark();
                if round % 2 == 0 {
                    poll_once_then_drop(log.sync_to(hw));
                } else {
                    let limit = std::time::Duration::from_micros(1 + 50 * round);
                    let _ = op::timeout(limit, log.sync_to(hw)).await;
                }
                within(log.sync_to(hw)).await.unwrap();
                assert!(!log.state.borrow().sync_running);
            }
            assert!(log.segment_count() > 1, "syncs covered rolled segments too");
            log.append_batch(batch(1, 5, 0), 1).await.unwrap();
        })
        .unwrap();
    }

    #[test]
    fn a_checkpoint_dropped_mid_pass_does_not_stop_later_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-0");
        block_on(async move {
            let log = PartitionLog::open(&path, small_config()).unwrap();
            for round in 0..8u64 {
                for i in 0..20 {
                    log.append_batch(batch(1, 20, i), 1).await.unwrap();
                }
                let hw = log.high_watermark();
                within(log.sync_to(hw)).await.unwrap();
                // Dropped at some await of its pass: before, inside or after its writes.
                let limit = std::time::Duration::from_micros(1 + 40 * round);
                let _ = op::timeout(limit, log.checkpoint_recovery_point()).await;
                // A later pass covers everything synced (the dropped one may still be running).
                let covered = || log.state.borrow().checkpoint.map(|c| c.offset);
                for _ in 0..1000 {
                    within(log.checkpoint_recovery_point()).await.unwrap();
                    if covered() == Some(hw) {
                        break;
                    }
                    op::sleep(std::time::Duration::from_millis(1)).await;
                }
                assert_eq!(covered(), Some(hw), "round {round}");
            }
            assert!(log.state.borrow().failed.is_none());
        })
        .unwrap();
    }

    #[test]
    fn appends_and_syncs_torn_down_with_their_executor_fail_the_log_instead_of_hanging_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path_a, path_s) = (dir.path().join("a-0"), dir.path().join("s-0"));
        let appending = Rc::new(PartitionLog::open(&path_a, small_config()).unwrap());
        let syncing = Rc::new(PartitionLog::open(&path_s, small_config()).unwrap());
        let config = ringbroker_runtime::RingConfig::default();
        let first = ringbroker_runtime::Runtime::new(&config).unwrap();
        let (a, s) = (appending.clone(), syncing.clone());
        first.block_on(async move {
            a.append_batch(batch(1, 5, 0), 1).await.unwrap();
            s.append_batch(batch(1, 5, 0), 1).await.unwrap();
            // Their tasks are spawned but have not run when the executor stops.
            poll_once_then_drop(a.append_batch(batch(1, 5, 0), 1));
            poll_once_then_drop(s.sync_to(1));
        });
        drop(first);
        let second = ringbroker_runtime::Runtime::new(&config).unwrap();
        let (a, s) = (appending.clone(), syncing.clone());
        second.block_on(async move {
            let appended = within(a.append_batch(batch(1, 5, 0), 1)).await;
            assert!(
                matches!(appended, Err(AppendError::Failed(_))),
                "{appended:?}"
            );
            let synced = within(s.sync_to(1)).await;
            assert!(matches!(synced, Err(AppendError::Failed(_))), "{synced:?}");
        });
        drop(second);
        drop((appending, syncing));
        // A reopen recovers both from their files (the abandoned write may have landed).
        block_on(async move {
            for path in [path_a, path_s] {
                let log = PartitionLog::open(&path, small_config()).unwrap();
                let hw = log.high_watermark();
                assert!(hw == 1 || hw == 2, "{hw}");
                for offset in 0..hw {
                    assert_eq!(
                        offsets_in(&log.read(offset, 1).await.unwrap().records)[0].0,
                        offset
                    );
                }
                assert_eq!(log.append_batch(batch(1, 5, 0), 1).await.unwrap(), hw);
                log.sync_to(hw + 1).await.unwrap();
            }
        })
        .unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// After retention by size: the kept segments hold at least `retention_bytes` (unless
        /// only the active one is left), the log start is the first kept segment's base, and
        /// every offset from it to the high watermark still reads back.
        #[test]
        fn retention_keeps_a_readable_suffix(counts in proptest::collection::vec(1usize..5, 1..80), seg in 512u64..4096, keep in 0u64..10_000) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("r-0");
            block_on(async move {
                let cfg = LogConfig { segment_bytes: seg, retention_bytes: Some(keep), retention_ms: None, index_interval_bytes: 100, ..LogConfig::default() };
                let log = PartitionLog::open(&path, cfg).unwrap();
                let before_bytes: u64 = {
                    for &c in &counts {
                        log.append_batch(batch(c, 9, 0), c as u32).await.unwrap();
                    }
                    log.size_bytes()
                };
                log.enforce_retention(0).unwrap();
                let (start, hw) = (log.log_start_offset(), log.high_watermark());
                assert!(log.size_bytes() >= keep.min(before_bytes) || log.segment_count() == 1);
                for offset in start..hw {
                    let r = log.read(offset, 50).await.unwrap();
                    let (base, next) = offsets_in(&r.records)[0];
                    assert!(base <= offset && offset < next);
                }
                if start > 0 {
                    assert!(matches!(log.read(start - 1, 10).await, Err(ReadError::OutOfRange { .. })));
                }
            }).unwrap();
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]
        /// Whatever the batch sizes and segment size, every offset below the high watermark
        /// reads back, before and after reopening.
        #[test]
        fn every_offset_reads_back_across_rolls_and_reopen(counts in proptest::collection::vec(1usize..6, 1..60), seg_kib in 1u64..8) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p-0");
            let cfg = LogConfig { segment_bytes: seg_kib * 1024, index_interval_bytes: 200, ..LogConfig::default() };
            let total: i64 = counts.iter().map(|&c| c as i64).sum();
            for round in 0..2 {
                let path = path.clone();
                let cfg = cfg.clone();
                let counts = counts.clone();
                block_on(async move {
                    let log = PartitionLog::open(&path, cfg).unwrap();
                    if round == 0 {
                        for &c in &counts {
                            log.append_batch(batch(c, 7, 0), c as u32).await.unwrap();
                        }
                    }
                    assert_eq!(log.high_watermark(), total);
                    for offset in 0..total {
                        let r = log.read(offset, 64).await.unwrap();
                        let (base, next) = offsets_in(&r.records)[0];
                        assert!(base <= offset && offset < next);
                    }
                }).unwrap();
            }
        }
    }
}
