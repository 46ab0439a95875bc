//! What partition replication needs of a log besides appends and reads: a follower's append
//! of the batches it fetched from its leader (offsets and epochs kept as they are), cutting
//! the log back to where it diverges from the leader's (KIP-101/279), restarting it empty at
//! the leader's log start, and reads that stop below the replicated high watermark.
//!
//! Truncation is a control-plane step taken while no append is in flight: later segments are
//! unlinked, the cut segment ftruncated, its indexes trimmed in memory and on disk, the
//! recovery checkpoint moved back when it promised bytes that are gone, the leader epochs
//! trimmed, then the cut segment fdatasync'd through the ring. A reader holding a
//! `FileSlice` of cut bytes reads short (an error); a deleted file stays readable through
//! the fd the slice holds.

use super::epochs::batch_epoch;
use super::{
    AppendError, AppendWrite, Located, PartitionLog, PendingAppend, ReadError, SliceResult, State,
};
use crate::checkpoint::{Checkpoint, CheckpointFile};
use crate::frame::{BatchFrame, HEADER_BYTES};
use crate::segment::{IndexFlush, Segment};
use bytes::{Bytes, BytesMut};
use ringbroker_runtime::op::{self, SharedFd};
use ringbroker_runtime::spawn;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

/// How long a truncation waits for a running fdatasync or recovery checkpoint to end before
/// giving up with `AppendError::Busy` (they take milliseconds; a stuck disk takes longer).
pub const TRUNCATE_WAIT_MS_MAX: u64 = 10_000;
/// Attempts `truncate_to` makes when the log changes under one.
const TRUNCATE_ATTEMPTS_MAX: u32 = 5;
const LOG_CHANGED: &str = "the log changed during truncation";
/// Poll interval while a truncation waits for a recovery checkpoint pass to end.
const TRUNCATE_POLL_MS: u64 = 5;

/// The whole batches at the front of `batches`, checked: magic 2, lengths, CRC-32C, offsets
/// in range and increasing (gaps allowed, overlaps not). A partial batch at the end (a Fetch
/// response may end with one) is left out; anything else invalid is an error.
fn whole_batches(batches: &[u8]) -> Result<Vec<(usize, BatchFrame)>, AppendError> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut prev_end: Option<i64> = None;
    while batches.len() - at >= HEADER_BYTES {
        let rest = &batches[at..];
        let corrupt = |reason| AppendError::Corrupt {
            position: at,
            reason,
        };
        if rest[16] != 2 {
            return Err(corrupt("not a v2 batch (magic)"));
        }
        let frame = BatchFrame::parse(rest).ok_or(corrupt("malformed batch header"))?;
        if frame.total_bytes > rest.len() {
            break; // a partial trailing batch
        }
        if !frame.crc_matches(&rest[..frame.total_bytes]) {
            return Err(corrupt("CRC mismatch"));
        }
        let end = frame
            .base_offset
            .checked_add(frame.last_offset_delta as i64 + 1)
            .filter(|_| frame.base_offset >= 0)
            .ok_or(corrupt("offsets out of range"))?;
        if let Some(expected) = prev_end.filter(|&p| frame.base_offset < p) {
            return Err(AppendError::OutOfOrder {
                expected,
                got: frame.base_offset,
            });
        }
        prev_end = Some(end);
        out.push((at, frame));
        at += frame.total_bytes;
    }
    Ok(out)
}

/// One write of a replicated append: consecutive batches landing in one segment.
struct Group {
    seq: u64,
    segment_base: i64,
    log_fd: SharedFd,
    position: u64,
    /// Byte range in the appended bytes.
    bytes: std::ops::Range<usize>,
    end_offset: i64,
    end_position: u64,
    flushes: Vec<IndexFlush>,
}

/// ftruncate on an fd a segment owns (control plane, rare).
fn cut_file(fd: &SharedFd, len: u64) -> io::Result<()> {
    // SAFETY: ftruncate on an open fd the segment owns; no memory is passed.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unlinks the files of the segments based at `bases` (last first), then fsyncs the directory;
/// a file already gone is fine, any other failure is an error (a stale segment left behind
/// would come back at the next open).
fn unlink_segments(dir: &std::path::Path, bases: &[i64]) -> io::Result<()> {
    if bases.is_empty() {
        return Ok(());
    }
    for &base in bases.iter().rev() {
        for ext in ["log", "index", "timeindex"] {
            match std::fs::remove_file(dir.join(crate::segment::file_name(base, ext))) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

/// A truncation failed half way: memory and files may disagree, so the log refuses writes
/// until a reopen (the follower truncates again after it).
fn fail(dir: &std::path::Path, st: &mut State, e: io::Error) -> AppendError {
    tracing::error!(dir = %dir.display(), error = %e, "truncation failed half way; partition refuses writes until reopened");
    if st.failed.is_none() {
        st.failed = Some(e.to_string());
    }
    st.repairable = false;
    AppendError::Io(e)
}

fn read_error(e: ReadError) -> AppendError {
    match e {
        ReadError::Io(e) => AppendError::Io(e),
        other => AppendError::Failed(other.to_string()),
    }
}

impl PartitionLog {
    /// A follower's append: `batches` is one or more whole v2 batches as fetched from the
    /// leader (a Fetch response's records), offsets and epochs as the leader wrote them. Every
    /// batch is checked before anything is written (see [`whole_batches`]; the first must
    /// start at or after the log end); a partial trailing batch is ignored. The bytes are
    /// written as they are, through the ring, rolling segments and indexing as appends do;
    /// new leader epochs in their headers are recorded (persisted before the write). Returns
    /// the new log end offset once written (not synced: `sync_to`). Makes the log stop
    /// stamping a leader epoch into `append_batch`es (it follows now).
    pub async fn append_replicated(&self, batches: Bytes) -> Result<i64, AppendError> {
        let frames = whole_batches(&batches)?;
        if frames.is_empty() {
            return Ok(self.log_end_offset());
        }
        {
            let segment_bytes = self.config.borrow().segment_bytes.max(1 << 20);
            if let Some((_, f)) = frames.iter().find(|(_, f)| {
                f.total_bytes as u64 > segment_bytes || f.total_bytes as u64 > u32::MAX as u64 / 2
            }) {
                return Err(AppendError::TooLarge(f.total_bytes));
            }
        }
        let (groups, end_offset, epoch) = {
            let mut st = self.state.borrow_mut();
            if st.failed.is_some() {
                self.try_repair(&mut st);
            }
            if let Some(why) = &st.failed {
                return Err(AppendError::Failed(why.clone()));
            }
            let expected = st.next_offset;
            if frames[0].1.base_offset < expected {
                return Err(AppendError::OutOfOrder {
                    expected,
                    got: frames[0].1.base_offset,
                });
            }
            // New leader epochs are durable before data of theirs can be.
            let latest = st.epochs.latest();
            let new_epoch = |(at, _): &(usize, BatchFrame)| {
                let e = batch_epoch(&batches[*at..]);
                e >= 0 && latest.is_none_or(|l| e > l)
            };
            if frames.iter().any(new_epoch) {
                let mut epochs = st.epochs.clone();
                for (at, f) in &frames {
                    epochs.assign(batch_epoch(&batches[*at..]), f.base_offset);
                }
                st.set_epochs(&self.dir, epochs)?;
            }
            // Where the batches go: the segments to roll to, opened before anything changes
            // (and removed again if one cannot be).
            let rolls = self.plan_rolls(&st, &frames);
            let mut new_segments = Vec::with_capacity(rolls.iter().filter(|r| **r).count());
            for (roll, (_, f)) in rolls.iter().zip(&frames) {
                if !*roll {
                    continue;
                }
                match Segment::open(&self.dir, f.base_offset) {
                    Ok(seg) => new_segments.push(seg),
                    Err(e) => {
                        let bases: Vec<i64> = new_segments.iter().map(|s| s.base_offset).collect();
                        // Best effort: an empty segment left behind starts at a base the
                        // leader has a batch at, so a reopen ending the log there loses nothing.
                        if let Err(e) = unlink_segments(&self.dir, &bases) {
                            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a segment opened for a failed append");
                        }
                        return Err(AppendError::Io(e));
                    }
                }
            }
            st.stamp_epoch = None;
            let interval = self.config.borrow().index_interval_bytes;
            let mut new_segments = new_segments.into_iter();
            let mut groups: Vec<Group> = Vec::new();
            let mut flushes: Vec<IndexFlush> = Vec::new();
            for (roll, (at, f)) in rolls.iter().zip(&frames) {
                if *roll {
                    let seg = new_segments.next().expect("opened above");
                    let old = st.segments.last_mut().expect("active segment");
                    flushes.extend(old.take_index_flush(true));
                    st.unsynced.push(seg.log.clone());
                    tracing::debug!(dir = %self.dir.display(), base = seg.base_offset, "rolled to a new segment");
                    st.segments.push(seg);
                }
                let len = f.total_bytes as u64;
                let end = f.next_offset();
                st.next_offset = end;
                let active = st.segments.last_mut().expect("active segment");
                let position = active.reserved_bytes;
                active.reserved_bytes += len;
                active.next_offset = end;
                if active
                    .last_indexed_position
                    .is_none_or(|p| position >= p + interval)
                {
                    let rel = (f.base_offset - active.base_offset) as u32;
                    active.index.push(rel, position as u32);
                    active.time_index.push((active.max_timestamp, rel));
                    active.last_indexed_position = Some(position);
                    flushes.extend(active.take_index_flush(false));
                }
                active.max_timestamp = active.max_timestamp.max(f.max_timestamp);
                let bytes_end = at + f.total_bytes;
                match groups.last_mut() {
                    Some(g) if g.segment_base == active.base_offset => {
                        g.bytes.end = bytes_end;
                        g.end_offset = end;
                        g.end_position = position + len;
                    }
                    _ => groups.push(Group {
                        seq: 0,
                        segment_base: active.base_offset,
                        log_fd: active.log.clone(),
                        position,
                        bytes: *at..bytes_end,
                        end_offset: end,
                        end_position: position + len,
                        flushes: Vec::new(),
                    }),
                }
                groups
                    .last_mut()
                    .expect("pushed above")
                    .flushes
                    .append(&mut flushes);
            }
            for g in &mut groups {
                g.seq = st.next_seq;
                st.next_seq += 1;
                st.pending.push_back(PendingAppend {
                    seq: g.seq,
                    end_offset: g.end_offset,
                    segment_base: g.segment_base,
                    end_position: g.end_position,
                    done: false,
                });
                st.writes_in_flight += 1;
            }
            let end_offset = st.next_offset;
            (groups, end_offset, st.failure_epoch)
        };
        // Each write runs as a task of its own, as an append's does (safe to drop the caller).
        let handles: Vec<_> = groups
            .into_iter()
            .map(|g| {
                let write = AppendWrite {
                    dir: self.dir.clone(),
                    state: self.state.clone(),
                    appended: self.appended.clone(),
                    seq: g.seq,
                    epoch,
                    settled: false,
                };
                spawn(write.run(
                    g.log_fd,
                    vec![batches.slice(g.bytes)],
                    g.position,
                    g.flushes,
                ))
            })
            .collect();
        for handle in handles {
            handle.await.unwrap_or_else(|_| {
                Err(AppendError::Failed("the shard stopped mid-append".into()))
            })?;
        }
        self.wait_committed(end_offset, epoch).await?;
        Ok(end_offset)
    }

    /// For each of `frames` (in order), whether it starts a new segment: the active one would
    /// grow past `segment_bytes` or is older than `segment_ms` (and holds data), or the
    /// batch's offsets would not fit the segment's 32-bit relative offsets.
    fn plan_rolls(&self, st: &State, frames: &[(usize, BatchFrame)]) -> Vec<bool> {
        let config = self.config.borrow();
        let active = st.segments.last().expect("active segment");
        let mut too_old = config
            .segment_ms
            .is_some_and(|ms| active.created.elapsed().as_millis() as u64 >= ms);
        let (mut base, mut reserved) = (active.base_offset, active.reserved_bytes);
        frames
            .iter()
            .map(|(_, f)| {
                let len = f.total_bytes as u64;
                let relative_overflow = f.next_offset() - 1 - base > i32::MAX as i64;
                let roll = (reserved > 0 && (reserved + len > config.segment_bytes || too_old))
                    || relative_overflow;
                if roll {
                    (base, reserved, too_old) = (f.base_offset, 0, false);
                }
                reserved += len;
                roll
            })
            .collect()
    }

    /// Waits until everything below `end_offset` is written (visible), or the append of
    /// failure epoch `epoch` failed.
    async fn wait_committed(&self, end_offset: i64, epoch: u64) -> Result<(), AppendError> {
        loop {
            let notified = self.appended.notified();
            {
                let st = self.state.borrow();
                if st.committed_through(epoch) >= end_offset {
                    return Ok(());
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

    /// Waits until no fdatasync or recovery checkpoint pass runs; refuses at once while
    /// appends are in flight or the log failed.
    async fn wait_quiet(&self) -> Result<(), AppendError> {
        let deadline = std::time::Instant::now() + Duration::from_millis(TRUNCATE_WAIT_MS_MAX);
        loop {
            let notified = self.synced.notified();
            let sync_running = {
                let st = self.state.borrow();
                if let Some(why) = &st.failed {
                    return Err(AppendError::Failed(why.clone()));
                }
                if st.removed {
                    return Err(AppendError::Failed("the partition was deleted".into()));
                }
                if !st.pending.is_empty() || st.writes_in_flight > 0 {
                    return Err(AppendError::Busy("appends are in flight"));
                }
                if !st.sync_running && !st.checkpoint_running {
                    return Ok(());
                }
                st.sync_running
            };
            if std::time::Instant::now() >= deadline {
                return Err(AppendError::Busy(
                    "an fdatasync or recovery checkpoint kept running",
                ));
            }
            if sync_running {
                let _ = op::timeout(Duration::from_millis(TRUNCATE_WAIT_MS_MAX), notified).await;
            } else {
                op::sleep(Duration::from_millis(TRUNCATE_POLL_MS)).await;
            }
        }
    }

    /// Reads batch headers of a segment from `from` (a batch start) to `to` (a batch
    /// boundary): the end offset of the last batch and the largest max timestamp among them
    /// (`None` and `i64::MIN` when the range is empty).
    async fn walk_headers(
        &self,
        log_fd: &SharedFd,
        seg_base: i64,
        from: u64,
        to: u64,
    ) -> Result<(Option<i64>, i64), ReadError> {
        let (mut at, mut last_end, mut max_timestamp) = (from, None, i64::MIN);
        while at < to {
            let corrupt = ReadError::Corrupt {
                segment: seg_base,
                position: at,
            };
            if to - at < HEADER_BYTES as u64 {
                return Err(corrupt);
            }
            let header = op::read_exact_at(
                log_fd,
                BytesMut::with_capacity(HEADER_BYTES),
                at,
                HEADER_BYTES,
            )
            .await?;
            let frame = BatchFrame::parse(&header).ok_or(corrupt)?;
            last_end = Some(frame.next_offset());
            max_timestamp = max_timestamp.max(frame.max_timestamp);
            at += frame.total_bytes as u64;
        }
        Ok((last_end, max_timestamp))
    }

    /// Cuts the log back so that it ends before `offset`: every batch whose last offset is at
    /// or past `offset` goes (one straddling it goes whole). Returns the new log end offset,
    /// at most `offset` (below it when the batch before the cut ends earlier, after a cleaning).
    /// Later segments are deleted, the cut one ftruncated and its indexes trimmed, leader
    /// epochs starting at or after the new end removed, all durable before returning.
    /// Refused (`Busy`) while appends are in flight; waits for a running fdatasync or
    /// recovery checkpoint. An offset at or below the log start (or a cut there) leaves the
    /// log empty at its log start offset; one at or past the end changes nothing.
    pub async fn truncate_to(&self, offset: i64) -> Result<i64, AppendError> {
        // A recovery checkpoint pass or sync starting while the cut is located makes an
        // attempt give up before changing anything; the next one waits for it.
        let mut attempt = 1;
        loop {
            match self.try_truncate_to(offset).await {
                Err(AppendError::Busy(LOG_CHANGED)) if attempt < TRUNCATE_ATTEMPTS_MAX => {
                    attempt += 1
                }
                result => return result,
            }
        }
    }

    async fn try_truncate_to(&self, offset: i64) -> Result<i64, AppendError> {
        self.wait_quiet().await?;
        let (end, log_start) = {
            let st = self.state.borrow();
            (st.high_watermark, st.log_start_offset)
        };
        if offset >= end {
            return Ok(end);
        }
        if offset <= log_start {
            self.truncate_fully_and_start_at(log_start).await?;
            return Ok(log_start);
        }
        // The first batch that goes; the segment that stays active and where it is cut.
        let at: Located = match self.locate(offset).await {
            Ok(Ok(at)) => at,
            Ok(Err(_)) => return Ok(self.log_end_offset()),
            Err(e) => return Err(read_error(e)),
        };
        let (keep_fd, keep_base, cut_at, walk_from, max_before) = {
            let st = self.state.borrow();
            let Some(si) = st
                .segments
                .iter()
                .position(|s| Arc::ptr_eq(&s.log, &at.log_fd))
            else {
                return Err(AppendError::Busy(LOG_CHANGED));
            };
            // A first batch after a gap at the start of its segment: that segment goes too
            // (kept empty it would end the log past `offset`).
            let (si, cut_at) = if at.position == 0 && at.seg_base > offset && si > 0 {
                (si - 1, st.segments[si - 1].committed_bytes)
            } else {
                (si, at.position)
            };
            let seg = &st.segments[si];
            // Walk from the last index entry before the cut, for the end offset and
            // timestamps of the batches kept after it.
            let entries = seg.index.entries_below(cut_at);
            let (walk_from, max_before) = match entries.checked_sub(1) {
                Some(i) => (
                    seg.index.position_at(i).map_or(0, u64::from),
                    seg.time_index.get(i).map_or(i64::MIN, |&(t, _)| t),
                ),
                None => (0, i64::MIN),
            };
            (
                seg.log.clone(),
                seg.base_offset,
                cut_at,
                walk_from,
                max_before,
            )
        };
        let (last_end, walked_max) = self
            .walk_headers(&keep_fd, keep_base, walk_from, cut_at)
            .await
            .map_err(read_error)?;
        let new_end = last_end.unwrap_or(keep_base);
        if new_end <= log_start {
            self.truncate_fully_and_start_at(log_start).await?;
            return Ok(log_start);
        }
        self.cut(end, &keep_fd, cut_at, new_end, max_before.max(walked_max))?;
        // The cut segment's length (and its kept bytes) on stable storage. A task of its own,
        // so a caller dropped meanwhile cannot make its error go unseen (the kernel reports a
        // writeback error once).
        let (state, dir) = (self.state.clone(), self.dir.clone());
        let synced = spawn(async move {
            let synced = op::fdatasync(&keep_fd).await;
            if let Err(e) = &synced {
                let mut st = state.borrow_mut();
                tracing::error!(dir = %dir.display(), error = %e, "fdatasync after a truncation failed; partition stops accepting writes");
                st.failed = Some(e.to_string());
                st.repairable = false;
            }
            synced
        })
        .await;
        synced.unwrap_or_else(|_| Err(io::Error::other("the shard stopped mid-truncation")))?;
        tracing::info!(dir = %self.dir.display(), offset, log_end_offset = new_end, "log truncated");
        Ok(new_end)
    }

    /// The synchronous part of `truncate_to`: checks the log did not change since `end` was
    /// read, moves the recovery checkpoint back if needed, deletes the later segments, cuts
    /// the one `keep_fd` is at `cut_at`, updates the state and the leader epochs.
    fn cut(
        &self,
        end: i64,
        keep_fd: &SharedFd,
        cut_at: u64,
        new_end: i64,
        max_timestamp: i64,
    ) -> Result<(), AppendError> {
        let mut st = self.state.borrow_mut();
        let si = st
            .segments
            .iter()
            .position(|s| Arc::ptr_eq(&s.log, keep_fd));
        let quiet = st.failed.is_none()
            && !st.removed
            && st.pending.is_empty()
            && st.writes_in_flight == 0
            && !st.sync_running
            && !st.checkpoint_running
            && st.high_watermark == end
            && st.next_offset == end;
        let Some(si) = si.filter(|_| quiet) else {
            return Err(AppendError::Busy(LOG_CHANGED));
        };
        let keep_base = st.segments[si].base_offset;
        // 1. A recovery checkpoint promising bytes that go is moved back first: to the start
        // of the kept segment when it covered every segment before it, else to the start of
        // the log (it promises nothing then).
        let stale = |c: &Checkpoint| {
            c.segment_base > keep_base || (c.segment_base == keep_base && c.position > cut_at)
        };
        let replacement = match st.checkpoint {
            Some(c) if !stale(&c) => None,
            Some(_) => Some(keep_base),
            None => Some(st.segments[0].base_offset),
        };
        if let Some(base) = replacement {
            let checkpoint = Checkpoint {
                offset: base,
                segment_base: base,
                position: 0,
                index_entries: 0,
            };
            let mut file = match st.checkpoint_file.take() {
                Some(f) => f,
                None => CheckpointFile::open(&self.dir, st.checkpoint_sequence)?,
            };
            let written = file.write_blocking(&checkpoint);
            st.checkpoint_file = Some(file);
            written?;
            st.checkpoint = Some(checkpoint);
            st.durable_segments_below = st.durable_segments_below.min(base);
        }
        // 2. The later segments go, durably, before the kept one is cut (a crash between
        // must not leave a cut segment followed by stale ones). From here on a failure
        // leaves memory and files apart: the log refuses writes until a reopen.
        let removed: Vec<Segment> = st.segments.drain(si + 1..).collect();
        st.unsynced
            .retain(|f| !removed.iter().any(|s| Arc::ptr_eq(&s.log, f)));
        let bases: Vec<i64> = removed.iter().map(|s| s.base_offset).collect();
        let seg = st.segments.last().expect("the kept segment");
        let entries = seg.index.entries_below(cut_at);
        let on_disk = seg.index_on_disk.min(entries) as u64;
        let files = [
            (seg.log.clone(), cut_at),
            (seg.index_file.clone(), on_disk * 8),
            (seg.time_index_file.clone(), on_disk * 12),
        ];
        let changed = (|| -> io::Result<()> {
            unlink_segments(&self.dir, &bases)?;
            // 3. The kept segment's files are cut.
            for (fd, len) in &files {
                cut_file(fd, *len)?;
            }
            Ok(())
        })();
        if let Err(e) = changed {
            return Err(fail(&self.dir, &mut st, e));
        }
        let seg = st.segments.last_mut().expect("the kept segment");
        let entries = seg.index.truncate_at_position(cut_at as u32);
        seg.time_index.truncate(entries);
        seg.last_indexed_position = seg.index.last_position().map(u64::from);
        seg.index_on_disk = seg.index_on_disk.min(entries);
        seg.index_durable = seg.index_durable.min(entries);
        seg.reserved_bytes = cut_at;
        seg.committed_bytes = cut_at;
        seg.next_offset = new_end;
        seg.max_timestamp = max_timestamp;
        let log = seg.log.clone();
        if !st.unsynced.iter().any(|f| Arc::ptr_eq(f, &log)) {
            st.unsynced.push(log);
        }
        st.next_offset = new_end;
        st.high_watermark = new_end;
        st.synced_offset = st.synced_offset.min(new_end);
        // The kept segment's files changed under what earlier checkpoints saw.
        st.durable_segments_below = st.durable_segments_below.min(keep_base);
        st.first_dirty_offset = st.first_dirty_offset.min(new_end);
        // 4. Epochs that started in what went.
        let mut epochs = st.epochs.clone();
        if epochs.truncate_from_end(new_end) {
            if let Err(e) = st.set_epochs(&self.dir, epochs) {
                return Err(fail(&self.dir, &mut st, e));
            }
        }
        drop(st);
        if !removed.is_empty() {
            tracing::debug!(dir = %self.dir.display(), segments = removed.len(), "truncation deleted later segments");
        }
        Ok(())
    }

    /// Deletes every segment and restarts the log empty at `offset` (a follower whose
    /// leader's log start is past this log's end): the new segment, the log start offset and
    /// a recovery checkpoint at `offset` are durable before returning; the leader epochs are
    /// cleared. Refused (`Busy`) while appends are in flight.
    pub async fn truncate_fully_and_start_at(&self, offset: i64) -> Result<(), AppendError> {
        if offset < 0 {
            return Err(AppendError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot start a log at offset {offset}"),
            )));
        }
        self.wait_quiet().await?;
        let mut st = self.state.borrow_mut();
        let quiet = st.failed.is_none()
            && !st.removed
            && st.pending.is_empty()
            && st.writes_in_flight == 0
            && !st.sync_running
            && !st.checkpoint_running;
        if !quiet {
            return Err(AppendError::Busy(LOG_CHANGED));
        }
        // Old files first (a crash then leaves an empty log, which the follower fetches
        // into again), then the new segment, its directory entry, the log start, the
        // recovery checkpoint, the epochs. A failure on the way fails the log until a reopen.
        let bases: Vec<i64> = st.segments.iter().map(|s| s.base_offset).collect();
        let fresh = (|| -> io::Result<Segment> {
            unlink_segments(&self.dir, &bases)?;
            let seg = Segment::open(&self.dir, offset)?;
            for fd in [&seg.log, &seg.index_file, &seg.time_index_file] {
                cut_file(fd, 0)?;
            }
            std::fs::File::open(&*self.dir)?.sync_all()?;
            super::log_start::write(&self.dir, offset)?;
            Ok(seg)
        })();
        let seg = match fresh {
            Ok(seg) => seg,
            Err(e) => return Err(fail(&self.dir, &mut st, e)),
        };
        st.segments.clear();
        st.unsynced.clear();
        st.unsynced.push(seg.log.clone());
        st.segments.push(seg);
        st.next_offset = offset;
        st.high_watermark = offset;
        st.log_start_offset = offset;
        st.synced_offset = offset;
        st.first_dirty_offset = offset;
        st.durable_segments_below = offset;
        st.stamp_epoch = None;
        let checkpoint = Checkpoint {
            offset,
            segment_base: offset,
            position: 0,
            index_entries: 0,
        };
        let written = (|| -> io::Result<()> {
            let mut file = match st.checkpoint_file.take() {
                Some(f) => f,
                None => CheckpointFile::open(&self.dir, st.checkpoint_sequence)?,
            };
            let written = file.write_blocking(&checkpoint);
            st.checkpoint_file = Some(file);
            written?;
            st.checkpoint = Some(checkpoint);
            st.set_epochs(&self.dir, super::epochs::Epochs::default())
        })();
        if let Err(e) = written {
            return Err(fail(&self.dir, &mut st, e));
        }
        drop(st);
        self.appended.notify_all();
        tracing::info!(dir = %self.dir.display(), log_start_offset = offset, "log restarted empty");
        Ok(())
    }

    /// Like `read_slice`, but only batches whose last offset is below `end_offset` (a
    /// consumer reading below the replicated high watermark): no slice when the batch at
    /// `offset` ends at or past it, or `offset >= end_offset`. The result's `high_watermark`
    /// is the lower of `end_offset` and the log end. Offsets past the log end are out of range
    /// as for `read_slice`.
    pub async fn read_slice_until(
        &self,
        offset: i64,
        max_bytes: usize,
        end_offset: i64,
    ) -> Result<SliceResult, ReadError> {
        let (log_end, log_start) = {
            let st = self.state.borrow();
            (st.high_watermark, st.log_start_offset)
        };
        if end_offset >= log_end {
            return self.read_slice(offset, max_bytes).await;
        }
        let nothing = SliceResult {
            slice: None,
            high_watermark: end_offset.max(log_start),
            log_start_offset: log_start,
        };
        if offset >= end_offset && offset >= log_start && offset <= log_end {
            return Ok(nothing);
        }
        let mut at = match self.locate(offset).await? {
            Ok(at) => at,
            Err(_) => return Ok(nothing),
        };
        at.high_watermark = end_offset;
        // Where the batches below `end_offset` end in this segment: from the index entry at
        // or before it, the first batch ending past it.
        let from = {
            let st = self.state.borrow();
            let seg = st.segments.iter().find(|s| Arc::ptr_eq(&s.log, &at.log_fd));
            match seg {
                Some(seg) if end_offset - seg.base_offset <= u32::MAX as i64 => {
                    let rel = (end_offset - seg.base_offset) as u32;
                    (seg.index.lookup(rel) as u64).max(at.position)
                }
                _ => at.position,
            }
        };
        if let Some((cut, _)) = self
            .locate_in(end_offset, &at.log_fd, at.seg_base, from, at.end)
            .await?
        {
            at.end = cut;
        }
        if at.end <= at.position {
            return Ok(SliceResult {
                slice: None,
                high_watermark: end_offset,
                log_start_offset: at.log_start_offset,
            });
        }
        self.slice_at(at, max_bytes).await
    }
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
