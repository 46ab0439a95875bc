//! Log compaction (Kafka's log cleaner) for one partition: keep at least the latest record of
//! every key, drop the older ones, drop tombstones once they are old enough; offsets never
//! change, so a cleaned log has gaps that reads skip.
//!
//! One cleaning is one or more passes. A pass:
//! 1. builds a key→offset map over the *dirty* section: from the first dirty offset (persisted
//!    in `cleaner-offset-checkpoint`) through the closed segments (never the active one),
//!    stopping before the first batch newer than `now - min_compaction_lag_ms` and before the
//!    batch that would take the map past `map_bytes_max` (the next pass goes on from there);
//! 2. rewrites every closed segment from the log start to the one holding the map's end,
//!    grouped so consecutive small segments merge into one (at most `segment_bytes_max` bytes,
//!    relative offsets within u32). A record is kept iff it has a key, no later offset of its
//!    key is in the map, and it is not a removable tombstone. Batches where nothing is dropped
//!    are copied byte for byte; others are rebuilt with their codec, base offset, last offset
//!    delta and producer fields kept (Kafka's `filterTo` for v2), base/max timestamps of the
//!    retained records, and a new CRC; a batch left with no record is dropped. Control batches
//!    are copied as they are. A batch the cleaner cannot parse (or that expands beyond
//!    [`CLEAN_BATCH_DECOMPRESSED_BYTES_MAX`], or holds more than [`CLEAN_BATCH_RECORDS_MAX`]
//!    records) is copied as is and adds nothing to the map: that only keeps more records,
//!    never fewer. But it may hold a record of a key whose later tombstone expires, so once a
//!    pass meets such a batch it removes no tombstone after it (a tombstone before it is
//!    older than anything in it and may go); Kafka instead fails the cleaning.
//! 3. swaps the new segments in, crash-safely (Kafka's protocol): the new files are written as
//!    `<base>.log.cleaned` (`.index.cleaned`, `.timeindex.cleaned`), fdatasync'd, renamed to
//!    `.swap` group by group (index files first, the log last: `<base>.log.<end>.swap`
//!    carries the end of the offsets it replaces, so start-up knows exactly which old segments
//!    it stands for), the directory fsync'd; the old segments' files are deleted, the
//!    directory fsync'd; the `.swap` files renamed to their final names; the directory
//!    fsync'd. Then the segment list is
//!    replaced in one step and the new first dirty offset persisted. At open,
//!    [`finish_interrupted_clean`] deletes `.cleaned` files and finishes every `.swap`.
//!
//! Tombstones (null value): a tombstone is removed when the batch holding it was already
//! below the first dirty offset when this cleaning started (it survived one cleaning, so a
//! consumer reading the dirty section saw it) and that batch's max timestamp is older than
//! `now - delete_retention_ms`. Kafka's rule is the same with the segment's last-modified time
//! in place of the batch's timestamp (before KIP-534); the batch's timestamp does not move when
//! segments are merged or rewritten.
//!
//! Records without a key are dropped (Kafka's cleaner counts them invalid and drops them).
//! Empty batches are not retained: this broker rebuilds producer state from its snapshot and
//! the active segment, never from cleaned segments.
//!
//! The map stores the keys themselves (`HashMap<Box<[u8]>, i64>`), each counted as its length
//! rounded up to 16 plus [`MAP_ENTRY_OVERHEAD_BYTES`] against `map_bytes_max` (an upper bound
//! of its real memory, the table's spare buckets and growth included): exact (no hash collision can
//! ever drop a live record, which a 128-bit hash map like Kafka's makes merely unlikely) at the
//! cost of fewer keys per byte when keys are long.
//!
//! A segment may end up empty (every record of its group dropped); it stays (its base offset
//! keeps the log start where it was) and is merged into its neighbour by the next cleaning.
//!
//! Before its first swap a pass fdatasyncs the old segments up to the map's end (the log's
//! group-commit sync): a rewritten group may drop K=v1 because K=v2 sits in a later segment,
//! which must not be lost to a power cut after the swap.
//!
//! The cleaning never blocks the partition: segment bytes are read and written through the
//! ring, with a yield after every `io_bytes_per_turn` bytes; appends go to the active segment,
//! which is never touched; a reader holding an old segment's fd keeps reading the (unlinked)
//! old file, whose offsets are the same. The swap (renames, unlinks, directory fsyncs: control
//! plane, plain syscalls) runs without an await, so no other task sees a half-swapped list.

use super::{PartitionLog, State};
use crate::atomic_file::{decode_offset_record, encode_offset_record, write_atomically};
use crate::frame::{BatchFrame, HEADER_BYTES};
use crate::index::OffsetIndex;
use crate::segment::{self, encode_time_entries, Segment};
use bytes::{Bytes, BytesMut};
use ringbroker_protocol::compression::{self, Codec};
use ringbroker_runtime::op::{self, SharedFd};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

/// The first dirty offset of the partition: below it every record was cleaned once.
pub const FILE_NAME: &str = "cleaner-offset-checkpoint";
const MAGIC: [u8; 4] = *b"RBCO";

/// Bytes a key costs in the map besides its own length rounded up to 16 (see
/// [`map_entry_bytes`]). A bucket of the table is 25 bytes (the boxed slice's pointer and
/// length 16, the offset 8, a control byte 1); the table stays at most 7/8 full and doubles,
/// so just after a growth it holds 16/7 buckets per entry (~57 bytes), and while it grows the
/// old and the new table both live (~86 bytes per entry). The key's own allocation costs the
/// allocator's header and rounding (16 bytes with glibc, beyond the rounded length). So an
/// entry never costs more than this plus its rounded length, even mid-growth.
pub const MAP_ENTRY_OVERHEAD_BYTES: usize = 112;
/// Most bytes a batch's records may expand to for the cleaner to filter it; a batch that
/// expands beyond is unreadable to the cleaner (copied as it is, see the module doc).
pub const CLEAN_BATCH_DECOMPRESSED_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Most records of a batch the cleaner parses: each costs about 80 bytes of bookkeeping (its
/// `Rec`) and up to a set slot while the map is built, so this bounds that memory at about
/// 64 MiB whatever the records section holds (a record can be as small as 7 bytes). A batch
/// of more records is unreadable to the cleaner (copied as it is, see the module doc).
pub const CLEAN_BATCH_RECORDS_MAX: usize = 1 << 19;
/// Bytes read from a segment at once (more only for a larger batch).
const READ_CHUNK_BYTES: usize = 1024 * 1024;
/// Bytes of cleaned batches gathered before one write.
const WRITE_CHUNK_BYTES: usize = 1024 * 1024;
/// Groups (new segments) written before they are swapped in, so a cleaning holds at most
/// this many new segments' files open; a log of more groups is swapped in several steps, in
/// offset order (a crash between two steps leaves a cleaned prefix, which keeps every latest
/// record: the groups after it are either old, holding everything, or cleaned). Small, because
/// a swap step runs without an await and fsyncs the directory twice per group on the shard
/// thread: with 16 groups per step a step stalled the shard's requests for 30-60 ms
/// (docs/benchmarks.md, "Log compaction"); with 2, the fsyncs spread over the cleaning.
const GROUPS_PER_SWAP_MAX: usize = 2;
/// Passes one cleaning makes at most (each pass cleans at least one batch's worth).
pub const CLEAN_PASSES_MAX: usize = 4096;

/// Settings of one cleaning.
#[derive(Debug, Clone)]
pub struct CleanConfig {
    /// Wall clock for lags and tombstone ages.
    pub now_ms: i64,
    /// Tombstones whose batch is older than this (and was cleaned once) are removed.
    pub delete_retention_ms: i64,
    /// Records newer than this are never compacted.
    pub min_compaction_lag_ms: i64,
    /// Memory bound of the key→offset map; a larger dirty section is cleaned in passes.
    pub map_bytes_max: usize,
    /// After reading + writing this many bytes (a slice) the cleaner yields.
    pub io_bytes_per_turn: usize,
    /// Share of the wall clock, in percent (1-100), the cleaner's slices may take: after a
    /// slice that took `t`, it sleeps on a ring timeout for `t × (100 − p) / p`, so requests
    /// on the shard get the rest of its time whatever the log's size (100: only a yield).
    pub duty_percent: u32,
    /// Cleaned segments are merged up to this size.
    pub segment_bytes_max: u64,
}

/// How much of the log is cleanable, from counters the log keeps (no I/O).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanableState {
    /// Below it everything was cleaned once.
    pub first_dirty_offset: i64,
    /// Bytes of closed segments below `first_dirty_offset`.
    pub clean_bytes: u64,
    /// Bytes of closed segments at or after it (cleanable).
    pub dirty_bytes: u64,
    /// Max timestamp of the first closed segment holding dirty data (an upper bound of the
    /// oldest dirty record's timestamp); `None` when nothing closed is dirty.
    pub oldest_dirty_timestamp_ms: Option<i64>,
}

/// What one cleaning did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanStats {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_read: u64,
    pub records_kept: u64,
    pub tombstones_removed: u64,
    pub segments_before: usize,
    pub segments_after: usize,
    pub first_dirty_offset: i64,
}

/// Where a simulated crash stops a pass (tests), or where the kill -9 test hook aborts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashPoint {
    /// New files written and fdatasync'd under `.cleaned` names.
    CleanedWritten,
    /// Renamed to `.swap`, old files not deleted yet.
    SwapRenamed,
    /// Old segments deleted, `.swap` not yet renamed.
    OldDeleted,
    /// A pending repairable write failure, then the swap fails after the old segments'
    /// deletion (tests).
    #[cfg(test)]
    SwapFailsAfterWriteFailure,
}

/// `RINGBROKER_TEST_CLEAN_CRASH_AT`, read once.
fn crash_hook() -> Option<CrashPoint> {
    static HOOK: std::sync::OnceLock<Option<CrashPoint>> = std::sync::OnceLock::new();
    *HOOK.get_or_init(|| {
        match std::env::var("RINGBROKER_TEST_CLEAN_CRASH_AT")
            .ok()?
            .as_str()
        {
            "cleaned-written" => Some(CrashPoint::CleanedWritten),
            "swap-renamed" => Some(CrashPoint::SwapRenamed),
            "old-deleted" => Some(CrashPoint::OldDeleted),
            other => {
                tracing::warn!(
                    value = other,
                    "unknown RINGBROKER_TEST_CLEAN_CRASH_AT; ignored"
                );
                None
            }
        }
    })
}

/// At `point`: a simulated crash (tests) returns true; the test hook aborts the process.
fn crash_at(point: CrashPoint, simulated: Option<CrashPoint>) -> bool {
    if crash_hook() == Some(point) {
        tracing::error!(?point, "RINGBROKER_TEST_CLEAN_CRASH_AT: aborting mid-clean");
        std::process::abort();
    }
    simulated == Some(point)
}

/// The persisted first dirty offset of the partition in `dir` (`None`: never cleaned, or the
/// file is damaged, which only means cleaning again from the log start).
pub fn read_first_dirty(dir: &Path) -> Option<i64> {
    match std::fs::read(dir.join(FILE_NAME)) {
        Ok(bytes) => {
            let found = decode_offset_record(MAGIC, &bytes);
            if found.is_none() {
                tracing::warn!(dir = %dir.display(), "damaged {FILE_NAME}; cleaning from the log start");
            }
            found
        }
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read {FILE_NAME}; cleaning from the log start");
            }
            None
        }
    }
}

fn write_first_dirty(dir: &Path, offset: i64) -> io::Result<()> {
    write_atomically(&dir.join(FILE_NAME), &encode_offset_record(MAGIC, offset))
}

fn cleaned_name(base: i64, ext: &str) -> String {
    format!("{}.cleaned", segment::file_name(base, ext))
}

fn swap_log_name(base: i64, end: i64) -> String {
    format!("{}.{end:020}.swap", segment::file_name(base, "log"))
}

fn swap_index_name(base: i64, ext: &str) -> String {
    format!("{}.swap", segment::file_name(base, ext))
}

fn parse_digits(s: &str) -> Option<i64> {
    (s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `<base>.<ext>` for the segment extensions: `(base, ext)`.
fn parse_segment_file(name: &str) -> Option<(i64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    matches!(ext, "log" | "index" | "timeindex").then_some(())?;
    Some((parse_digits(stem)?, ext))
}

/// `<base>.log.<end>.swap`: `(base, end)`.
fn parse_swap_log(name: &str) -> Option<(i64, i64)> {
    let rest = name.strip_suffix(".swap")?;
    let (stem, rest) = rest.split_once('.')?;
    let end = rest.strip_prefix("log.")?;
    Some((parse_digits(stem)?, parse_digits(end)?))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// At open, before the segments are listed: deletes the files of a cleaning that had not
/// decided its swap (`*.cleaned`), and finishes every decided one (`<base>.log.<end>.swap`):
/// the old segments with bases in `[base, end)` are deleted, the `.swap` files renamed to
/// their final names. A `.swap` index file whose log was never renamed to `.swap` is deleted.
/// Control plane: plain blocking calls.
pub fn finish_interrupted_clean(dir: &Path) -> io::Result<()> {
    let names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut changed = false;
    for name in names.iter().filter(|n| n.ends_with(".cleaned")) {
        remove_if_present(&dir.join(name))?;
        changed = true;
    }
    let mut swaps: Vec<(i64, i64, &String)> = names
        .iter()
        .filter_map(|n| parse_swap_log(n).map(|(b, e)| (b, e, n)))
        .collect();
    swaps.sort_unstable();
    for &(base, end, name) in &swaps {
        for old in &names {
            if let Some((b, _)) = parse_segment_file(old) {
                if (base..end).contains(&b) {
                    remove_if_present(&dir.join(old))?;
                }
            }
        }
        // The unlinks are on disk before the final names appear.
        sync_dir(dir)?;
        for ext in ["index", "timeindex"] {
            let swap = dir.join(swap_index_name(base, ext));
            if swap.exists() {
                std::fs::rename(&swap, dir.join(segment::file_name(base, ext)))?;
            }
        }
        std::fs::rename(dir.join(name), dir.join(segment::file_name(base, "log")))?;
        tracing::info!(dir = %dir.display(), base, end, "finished a cleaning's interrupted segment swap");
        changed = true;
    }
    for name in &names {
        let orphan = (name.ends_with(".index.swap") || name.ends_with(".timeindex.swap"))
            && dir.join(name).exists();
        if orphan {
            remove_if_present(&dir.join(name))?;
            changed = true;
        }
    }
    if changed {
        sync_dir(dir)?;
    }
    Ok(())
}

// ---- records -------------------------------------------------------------------------------

/// Attributes bits of a batch.
const ATTR_LOG_APPEND_TIME: i16 = 0x08;
const ATTR_CONTROL: i16 = 0x20;

fn read_varint(b: &[u8], at: &mut usize) -> Option<i64> {
    let mut raw: u64 = 0;
    for i in 0..10 {
        let byte = *b.get(*at)?;
        *at += 1;
        raw |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(((raw >> 1) as i64) ^ -((raw & 1) as i64));
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// One record of a batch's (decompressed) records section.
struct Rec {
    /// The whole record, length prefix included.
    raw: Range<usize>,
    attributes: u8,
    ts_delta: i64,
    offset_delta: i64,
    /// From the key length to the end of the record.
    tail: Range<usize>,
    key: Option<Range<usize>>,
    tombstone: bool,
}

/// What a key of `key_bytes` bytes costs in the map, counted against `map_bytes_max`.
pub fn map_entry_bytes(key_bytes: usize) -> usize {
    key_bytes.next_multiple_of(16) + MAP_ENTRY_OVERHEAD_BYTES
}

/// Parses every record of `section`; `None` unless it holds exactly `count` whole records,
/// and for a count above [`CLEAN_BATCH_RECORDS_MAX`].
fn parse_records(section: &[u8], count: i32) -> Option<Vec<Rec>> {
    let count = usize::try_from(count).ok()?;
    if count > CLEAN_BATCH_RECORDS_MAX {
        return None;
    }
    // A record takes at least 7 bytes: the count cannot ask for more than the bytes allow.
    let mut out = Vec::with_capacity(count.min(section.len() / 7 + 1));
    let mut at = 0;
    while at < section.len() {
        let start = at;
        let len = usize::try_from(read_varint(section, &mut at)?).ok()?;
        let end = at.checked_add(len)?;
        let body = section.get(at..end)?;
        let mut p = 0;
        let attributes = *body.first()?;
        p += 1;
        let ts_delta = read_varint(body, &mut p)?;
        let offset_delta = read_varint(body, &mut p)?;
        let tail_start = p;
        let key_len = read_varint(body, &mut p)?;
        let key = if key_len < 0 {
            None
        } else {
            let k = p..p.checked_add(usize::try_from(key_len).ok()?)?;
            body.get(k.clone())?;
            p = k.end;
            Some(at + k.start..at + k.end)
        };
        let value_len = read_varint(body, &mut p)?;
        if value_len >= 0 {
            p = p.checked_add(usize::try_from(value_len).ok()?)?;
            if p > body.len() {
                return None;
            }
        }
        out.push(Rec {
            raw: start..end,
            attributes,
            ts_delta,
            offset_delta,
            tail: at + tail_start..end,
            key,
            tombstone: value_len < 0,
        });
        if out.len() > count {
            return None;
        }
        at = end;
    }
    (out.len() == count).then_some(out)
}

/// A batch's records section (decompressed) and its records; `None` when the cleaner cannot
/// read it (then it is kept as it is).
fn batch_records(batch: &[u8], frame: &BatchFrame) -> Option<(Codec, Vec<u8>, Vec<Rec>)> {
    let codec = Codec::of_attributes(frame.attributes).ok()?;
    let body = batch.get(HEADER_BYTES..frame.total_bytes)?;
    let count = i32::from_be_bytes(batch.get(57..61)?.try_into().ok()?);
    let section = compression::decompress(codec, body, CLEAN_BATCH_DECOMPRESSED_BYTES_MAX).ok()?;
    let records = parse_records(&section, count)?;
    Some((codec, section, records))
}

/// What filtering did to a batch.
enum Filtered {
    /// Nothing dropped: copy the bytes.
    Same,
    /// Every record dropped.
    Empty,
    Rebuilt(Vec<u8>),
}

/// Rebuilds `batch` with only the records `keep[i]` marks, as Kafka's `filterTo` does for v2:
/// base offset, last offset delta, producer fields and codec kept; the base timestamp is the
/// first retained record's (deltas rewritten), the max timestamp the retained records' max
/// (append-time batches keep both and their records' bytes); count, length and CRC new.
fn rebuild(
    batch: &[u8],
    frame: &BatchFrame,
    codec: Codec,
    section: &[u8],
    records: &[Rec],
    keep: &[bool],
) -> Result<Filtered, compression::CompressionError> {
    let kept: Vec<&Rec> = records
        .iter()
        .zip(keep)
        .filter(|(_, &k)| k)
        .map(|(r, _)| r)
        .collect();
    if kept.len() == records.len() {
        return Ok(Filtered::Same);
    }
    if kept.is_empty() {
        return Ok(Filtered::Empty);
    }
    let base_ts = i64::from_be_bytes(batch[27..35].try_into().expect("8 bytes"));
    let append_time = frame.attributes & ATTR_LOG_APPEND_TIME != 0;
    let mut new_section = Vec::with_capacity(section.len());
    let (new_base_ts, new_max_ts) = if append_time {
        for r in &kept {
            new_section.extend_from_slice(&section[r.raw.clone()]);
        }
        (base_ts, frame.max_timestamp)
    } else {
        let new_base = base_ts.wrapping_add(kept[0].ts_delta);
        let mut max_ts = i64::MIN;
        let mut body = Vec::new();
        for r in &kept {
            let ts = base_ts.wrapping_add(r.ts_delta);
            max_ts = max_ts.max(ts);
            body.clear();
            body.push(r.attributes);
            put_varint(&mut body, ts.wrapping_sub(new_base));
            put_varint(&mut body, r.offset_delta);
            body.extend_from_slice(&section[r.tail.clone()]);
            put_varint(&mut new_section, body.len() as i64);
            new_section.extend_from_slice(&body);
        }
        (new_base, max_ts)
    };
    let payload = compression::compress(codec, &new_section)?;
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&batch[..HEADER_BYTES]);
    out.extend_from_slice(&payload);
    let batch_length = (out.len() - 12) as i32;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    out[27..35].copy_from_slice(&new_base_ts.to_be_bytes());
    out[35..43].copy_from_slice(&new_max_ts.to_be_bytes());
    out[57..61].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(Filtered::Rebuilt(out))
}

// ---- I/O -----------------------------------------------------------------------------------

/// Bytes moved since the last yield, and the duty cycle between slices.
struct Budget {
    per_turn: usize,
    used: usize,
    duty_percent: u32,
    slice_started: std::time::Instant,
}

impl Budget {
    fn new(per_turn: usize, duty_percent: u32) -> Budget {
        Budget {
            per_turn,
            used: 0,
            duty_percent: duty_percent.clamp(1, 100),
            slice_started: std::time::Instant::now(),
        }
    }

    /// The pause after a slice that took `busy`.
    fn pause_after(&self, busy: std::time::Duration) -> std::time::Duration {
        let p = self.duty_percent;
        (busy * (100 - p) / p).min(PAUSE_MAX)
    }

    async fn spend(&mut self, bytes: usize) {
        self.used += bytes;
        if self.used >= self.per_turn.max(1) {
            self.used = 0;
            let pause = self.pause_after(self.slice_started.elapsed());
            if pause.is_zero() {
                ringbroker_runtime::yield_now().await;
            } else {
                // A ring timeout: the shard enters the ring and serves what arrived meanwhile.
                ringbroker_runtime::op::sleep(pause).await;
            }
            self.slice_started = std::time::Instant::now();
        }
    }
}

/// The longest pause between two slices (a slice stretched by a stall of the whole machine
/// must not park the cleaner for minutes).
const PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Whole batches of one segment file, read in chunks through the ring.
struct BatchReader {
    fd: SharedFd,
    seg_base: i64,
    position: u64,
    end: u64,
    buf: Bytes,
    buf_pos: u64,
}

impl BatchReader {
    fn new(fd: SharedFd, seg_base: i64, position: u64, end: u64) -> BatchReader {
        BatchReader {
            fd,
            seg_base,
            position,
            end,
            buf: Bytes::new(),
            buf_pos: position,
        }
    }

    fn corrupt(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the log is damaged at position {} of segment {}",
                self.position, self.seg_base
            ),
        )
    }

    /// The next batch and its frame; reads count against `stats` and `budget`.
    async fn next(
        &mut self,
        budget: &mut Budget,
        stats: &mut CleanStats,
    ) -> io::Result<Option<(BatchFrame, Bytes)>> {
        if self.position >= self.end {
            return Ok(None);
        }
        let left = (self.end - self.position) as usize;
        let mut in_buf = (self.position - self.buf_pos) as usize;
        if self.buf.len() < in_buf + HEADER_BYTES {
            if left < HEADER_BYTES {
                return Err(self.corrupt());
            }
            self.fill(READ_CHUNK_BYTES.min(left), budget, stats).await?;
            in_buf = 0;
        }
        let frame = BatchFrame::parse(&self.buf[in_buf..]).ok_or_else(|| self.corrupt())?;
        if frame.total_bytes > left {
            return Err(self.corrupt());
        }
        if self.buf.len() < in_buf + frame.total_bytes {
            self.fill(
                frame.total_bytes.max(READ_CHUNK_BYTES.min(left)),
                budget,
                stats,
            )
            .await?;
            in_buf = 0;
        }
        let batch = self.buf.slice(in_buf..in_buf + frame.total_bytes);
        self.position += frame.total_bytes as u64;
        Ok(Some((frame, batch)))
    }

    async fn fill(
        &mut self,
        want: usize,
        budget: &mut Budget,
        stats: &mut CleanStats,
    ) -> io::Result<()> {
        let data =
            op::read_exact_at(&self.fd, BytesMut::with_capacity(want), self.position, want).await?;
        self.buf = data.freeze();
        self.buf_pos = self.position;
        stats.bytes_read += want as u64;
        budget.spend(want).await;
        Ok(())
    }
}

/// One new segment being written under `.cleaned` names.
struct CleanedSegment {
    base: i64,
    /// Offsets `[base, end)` of the old segments it replaces.
    end: i64,
    log: SharedFd,
    index_file: SharedFd,
    time_index_file: SharedFd,
    index: OffsetIndex,
    time_index: Vec<(i64, u32)>,
    max_timestamp: i64,
    last_indexed: Option<u64>,
    position: u64,
    pending: Vec<u8>,
    /// Log files of the old segments, in order.
    replaces: Vec<SharedFd>,
    replaces_bases: Vec<i64>,
}

impl CleanedSegment {
    fn create(dir: &Path, base: i64, end: i64) -> io::Result<CleanedSegment> {
        let open = |ext: &str| -> io::Result<SharedFd> {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.join(cleaned_name(base, ext)))?;
            Ok(Arc::new(f.into()))
        };
        Ok(CleanedSegment {
            base,
            end,
            log: open("log")?,
            index_file: open("index")?,
            time_index_file: open("timeindex")?,
            index: OffsetIndex::default(),
            time_index: Vec::new(),
            max_timestamp: i64::MIN,
            last_indexed: None,
            position: 0,
            pending: Vec::new(),
            replaces: Vec::new(),
            replaces_bases: Vec::new(),
        })
    }

    async fn push(
        &mut self,
        batch: &[u8],
        frame: &BatchFrame,
        interval: u64,
        budget: &mut Budget,
        stats: &mut CleanStats,
    ) -> io::Result<()> {
        let len = batch.len() as u64;
        if self.position + len > u32::MAX as u64 {
            return Err(io::Error::other(
                "a cleaned segment would exceed 4 GiB; lower segment_bytes_max",
            ));
        }
        if self
            .last_indexed
            .is_none_or(|p| self.position >= p + interval)
        {
            let rel = (frame.base_offset - self.base) as u32;
            self.index.push(rel, self.position as u32);
            self.time_index.push((self.max_timestamp, rel));
            self.last_indexed = Some(self.position);
        }
        self.max_timestamp = self.max_timestamp.max(frame.max_timestamp);
        self.pending.extend_from_slice(batch);
        self.position += len;
        if self.pending.len() >= WRITE_CHUNK_BYTES {
            self.flush(budget, stats).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, budget: &mut Budget, stats: &mut CleanStats) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let bytes = Bytes::from(std::mem::take(&mut self.pending));
        let len = bytes.len();
        let at = self.position - len as u64;
        op::write_all_at(&self.log, bytes, at).await?;
        stats.bytes_written += len as u64;
        budget.spend(len).await;
        Ok(())
    }

    /// Writes the rest of the log and both index files, and fdatasyncs all three.
    async fn finish(&mut self, budget: &mut Budget, stats: &mut CleanStats) -> io::Result<()> {
        self.flush(budget, stats).await?;
        let index = self.index.encode_all();
        let time_index = encode_time_entries(&self.time_index);
        let index_bytes = index.len() + time_index.len();
        op::write_all_at(&self.index_file, index.into(), 0).await?;
        op::write_all_at(&self.time_index_file, time_index.into(), 0).await?;
        budget.spend(index_bytes).await;
        for fd in [&self.log, &self.index_file, &self.time_index_file] {
            op::fdatasync(fd).await?;
        }
        Ok(())
    }

    fn into_segment(self, dir: &Path) -> Segment {
        let entries = self.index.len();
        Segment {
            base_offset: self.base,
            log_path: dir.join(segment::file_name(self.base, "log")),
            log: self.log,
            index_file: self.index_file,
            index: self.index,
            time_index_file: self.time_index_file,
            time_index: self.time_index,
            max_timestamp: self.max_timestamp,
            created: std::time::Instant::now(),
            reserved_bytes: self.position,
            committed_bytes: self.position,
            last_indexed_position: self.last_indexed,
            index_on_disk: entries,
            next_offset: self.end,
            index_durable: entries,
            truncated: false,
        }
    }
}

/// A closed segment as a pass sees it.
#[derive(Clone)]
struct Closed {
    base: i64,
    /// The next segment's base.
    end: i64,
    log: SharedFd,
    bytes: u64,
}

/// How a pass ended.
pub(crate) enum Pass {
    /// Nothing was dirty and cleanable.
    Nothing,
    /// Cleaned; `more`: the map filled up before the end of the cleanable dirty section.
    Cleaned { more: bool },
    /// The log changed under the pass (retention, deletion); nothing swapped.
    Abandoned,
    /// Stopped at a simulated crash point; files left as a crash would leave them.
    Crashed,
}

/// Clears the log's `cleaning` flag and deletes the `.cleaned` files of a pass dropped or
/// failed before its swap.
struct PassGuard {
    state: Rc<RefCell<State>>,
    cleaned_files: Vec<PathBuf>,
}

impl Drop for PassGuard {
    fn drop(&mut self) {
        for path in &self.cleaned_files {
            if let Err(e) = remove_if_present(path) {
                tracing::warn!(path = %path.display(), error = %e, "could not delete a cleaner's unfinished file");
            }
        }
        if let Ok(mut st) = self.state.try_borrow_mut() {
            st.cleaning = false;
        }
    }
}

impl PartitionLog {
    /// How much of the log is cleanable (no I/O). A segment holding the first dirty offset
    /// is split at the index entry below it.
    pub fn cleanable_state(&self) -> CleanableState {
        let st = self.state.borrow();
        let first_dirty = st
            .first_dirty_offset
            .min(st.high_watermark)
            .max(st.log_start_offset);
        let (mut clean_bytes, mut dirty_bytes, mut oldest) = (0u64, 0u64, None);
        for pair in st.segments.windows(2) {
            let (s, end) = (&pair[0], pair[1].base_offset);
            let dirty_from = if end <= first_dirty {
                s.committed_bytes
            } else if s.base_offset >= first_dirty {
                0
            } else {
                (s.index.lookup((first_dirty - s.base_offset) as u32) as u64).min(s.committed_bytes)
            };
            clean_bytes += dirty_from;
            let dirty = s.committed_bytes - dirty_from;
            dirty_bytes += dirty;
            if dirty > 0 && oldest.is_none() && s.max_timestamp != i64::MIN {
                oldest = Some(s.max_timestamp);
            }
        }
        CleanableState {
            first_dirty_offset: first_dirty,
            clean_bytes,
            dirty_bytes,
            oldest_dirty_timestamp_ms: oldest,
        }
    }

    /// One cleaning: passes until the cleanable dirty section (closed segments, older than
    /// `min_compaction_lag_ms`) is all cleaned. Never touches the active segment. A cleaning
    /// already running on this log makes this one return at once with nothing done.
    pub async fn clean(&self, config: &CleanConfig) -> io::Result<CleanStats> {
        let mut stats = CleanStats {
            segments_before: self.segment_count(),
            ..CleanStats::default()
        };
        // Tombstones cleaned for the first time by a pass of this cleaning are not "cleaned
        // once" for its later passes.
        let cleaned_once_below = self.cleanable_state().first_dirty_offset;
        for _ in 0..CLEAN_PASSES_MAX {
            match self
                .clean_pass_from(config, &mut stats, None, Some(cleaned_once_below))
                .await?
            {
                Pass::Cleaned { more: true } => continue,
                _ => break,
            }
        }
        stats.segments_after = self.segment_count();
        stats.first_dirty_offset = self.cleanable_state().first_dirty_offset;
        Ok(stats)
    }

    /// One pass; `crash` stops it at that point as a crash would (tests).
    #[cfg(test)]
    pub(crate) async fn clean_pass(
        &self,
        config: &CleanConfig,
        stats: &mut CleanStats,
        crash: Option<CrashPoint>,
    ) -> io::Result<Pass> {
        self.clean_pass_from(config, stats, crash, None).await
    }

    /// One pass of a cleaning that began with `cleaned_once_below` as the first dirty offset
    /// (`None`: this pass's own): only tombstones in batches below it were cleaned once
    /// before, whatever earlier passes of the same cleaning moved the first dirty offset to.
    async fn clean_pass_from(
        &self,
        config: &CleanConfig,
        stats: &mut CleanStats,
        crash: Option<CrashPoint>,
        cleaned_once_below: Option<i64>,
    ) -> io::Result<Pass> {
        let (closed, first_dirty, log_start, dirty_position, interval) = {
            let mut st = self.state.borrow_mut();
            if st.cleaning || st.removed || st.failed.is_some() {
                return Ok(Pass::Nothing);
            }
            let (hw, log_start) = (st.high_watermark, st.log_start_offset);
            let mut closed = Vec::new();
            for pair in st.segments.windows(2) {
                let (s, end) = (&pair[0], pair[1].base_offset);
                if end > hw || s.committed_bytes != s.reserved_bytes {
                    break;
                }
                closed.push(Closed {
                    base: s.base_offset,
                    end,
                    log: s.log.clone(),
                    bytes: s.committed_bytes,
                });
            }
            // Not `clamp`: retention may briefly put the log start above the high watermark.
            let first_dirty = st.first_dirty_offset.min(hw).max(log_start);
            let Some(dirty_segment) = closed.iter().position(|c| c.end > first_dirty) else {
                return Ok(Pass::Nothing);
            };
            let seg = &st.segments[dirty_segment];
            let dirty_position = if first_dirty > seg.base_offset {
                seg.index.lookup((first_dirty - seg.base_offset) as u32) as u64
            } else {
                0
            };
            st.cleaning = true;
            (
                closed,
                first_dirty,
                log_start,
                (dirty_segment, dirty_position),
                self.config.borrow().index_interval_bytes,
            )
        };
        let mut guard = PassGuard {
            state: self.state.clone(),
            cleaned_files: Vec::new(),
        };
        let mut budget = Budget::new(config.io_bytes_per_turn, config.duty_percent);

        // 1. The key→offset map of the dirty section.
        let lag_limit = config.now_ms.saturating_sub(config.min_compaction_lag_ms);
        let mut map: HashMap<Box<[u8]>, i64> = HashMap::new();
        let mut map_bytes = 0usize;
        let mut map_end = None;
        let (dirty_segment, mut position) = dirty_position;
        'segments: for c in &closed[dirty_segment..] {
            let mut reader = BatchReader::new(c.log.clone(), c.base, position, c.bytes);
            position = 0;
            while let Some((frame, batch)) = reader.next(&mut budget, stats).await? {
                if frame.next_offset() <= first_dirty {
                    continue;
                }
                if frame.max_timestamp > lag_limit {
                    map_end = Some((frame.base_offset.max(first_dirty), false));
                    break 'segments;
                }
                if frame.attributes & ATTR_CONTROL != 0 {
                    continue;
                }
                let Some((_, section, records)) = batch_records(&batch, &frame) else {
                    continue;
                };
                let keyed = records.iter().filter_map(|r| {
                    let offset = frame.base_offset + r.offset_delta;
                    Some((offset, r.key.clone()?)).filter(|_| offset >= first_dirty)
                });
                // The keys this batch adds to the map (each once).
                let mut new_keys = std::collections::HashSet::new();
                let needed: usize = keyed
                    .clone()
                    .map(|(_, k)| &section[k])
                    .filter(|k| !map.contains_key(*k) && new_keys.insert(*k))
                    .map(|k| map_entry_bytes(k.len()))
                    .sum();
                if map_bytes + needed > config.map_bytes_max {
                    if map.is_empty() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "the batch at offset {} needs {needed} bytes of cleaner map, more than map_bytes_max {}",
                                frame.base_offset, config.map_bytes_max
                            ),
                        ));
                    }
                    map_end = Some((frame.base_offset.max(first_dirty), true));
                    break 'segments;
                }
                for (offset, key) in keyed {
                    let key = &section[key];
                    match map.get_mut(key) {
                        Some(o) => *o = offset.max(*o),
                        None => {
                            map_bytes += map_entry_bytes(key.len());
                            map.insert(key.into(), offset);
                        }
                    }
                }
            }
        }
        let last_end = closed.last().map_or(first_dirty, |c| c.end);
        let (map_end, more) = map_end.unwrap_or((last_end, false));
        if map_end <= first_dirty {
            return Ok(Pass::Nothing);
        }
        // The old segments up to the map's end must be durable before the first swap: a
        // swapped group may have dropped K=v1 because K=v2 sits in a later segment, and a
        // power loss must not take K=v2 with it (the log's group-commit sync fdatasyncs
        // every unsynced segment below the high watermark).
        self.sync_to(map_end).await.map_err(|e| match e {
            super::AppendError::Io(e) => e,
            other => io::Error::other(format!(
                "cannot sync the log below the cleaned range: {other}"
            )),
        })?;

        // 2. Rewrite the closed segments up to the map's end, in groups.
        let rewrite: Vec<&Closed> = closed.iter().filter(|c| c.base < map_end).collect();
        let mut groups: Vec<Vec<&Closed>> = Vec::new();
        for c in rewrite {
            let fits = groups.last().is_some_and(|g: &Vec<&Closed>| {
                let bytes: u64 = g.iter().map(|s| s.bytes).sum();
                bytes + c.bytes <= config.segment_bytes_max && c.end - g[0].base <= u32::MAX as i64
            });
            if fits {
                groups.last_mut().expect("a group").push(c);
            } else {
                groups.push(vec![c]);
            }
        }
        let delete_horizon = config.now_ms.saturating_sub(config.delete_retention_ms);
        // Batches ending at or below it were cleaned once before this cleaning began.
        let cleaned_once_below = cleaned_once_below.unwrap_or(first_dirty).min(first_dirty);
        // A batch the cleaner cannot read was met (it is copied as it is): no tombstone after
        // it is removed in this pass, or a record of its key inside it would come back.
        let mut unreadable_seen = false;
        let mut cleaned = Vec::with_capacity(groups.len().min(GROUPS_PER_SWAP_MAX));
        for (group_index, group) in groups.iter().enumerate() {
            let (base, end) = (group[0].base, group.last().expect("non-empty").end);
            for ext in ["log", "index", "timeindex"] {
                guard
                    .cleaned_files
                    .push(self.dir.join(cleaned_name(base, ext)));
            }
            let mut out = CleanedSegment::create(&self.dir, base, end)?;
            for c in group {
                out.replaces.push(c.log.clone());
                out.replaces_bases.push(c.base);
                let mut reader = BatchReader::new(c.log.clone(), c.base, 0, c.bytes);
                while let Some((frame, batch)) = reader.next(&mut budget, stats).await? {
                    if frame.next_offset() <= log_start {
                        continue; // below the log start: invisible already
                    }
                    let filtered = if frame.attributes & ATTR_CONTROL != 0 {
                        Filtered::Same
                    } else {
                        match batch_records(&batch, &frame) {
                            None => {
                                unreadable_seen = true;
                                Filtered::Same
                            }
                            Some((codec, section, records)) => {
                                let old_tombstones = frame.next_offset() <= cleaned_once_below
                                    && frame.max_timestamp < delete_horizon
                                    && !unreadable_seen;
                                let mut keep = Vec::with_capacity(records.len());
                                for r in &records {
                                    let offset = frame.base_offset + r.offset_delta;
                                    let kept = r.key.clone().is_some_and(|key| {
                                        let superseded = map
                                            .get(&section[key])
                                            .is_some_and(|&latest| offset < latest);
                                        let expired = r.tombstone && old_tombstones;
                                        if expired && !superseded {
                                            stats.tombstones_removed += 1;
                                        }
                                        !superseded && !expired
                                    });
                                    stats.records_kept += kept as u64;
                                    keep.push(kept);
                                }
                                stats.records_read += records.len() as u64;
                                rebuild(&batch, &frame, codec, &section, &records, &keep)
                                    .map_err(io::Error::other)?
                            }
                        }
                    };
                    match filtered {
                        Filtered::Same => {
                            out.push(&batch, &frame, interval, &mut budget, stats)
                                .await?
                        }
                        Filtered::Empty => {}
                        Filtered::Rebuilt(bytes) => {
                            let frame = BatchFrame::parse(&bytes).ok_or_else(|| {
                                io::Error::other("the cleaner built a malformed batch")
                            })?;
                            out.push(&bytes, &frame, interval, &mut budget, stats)
                                .await?
                        }
                    }
                }
            }
            out.finish(&mut budget, stats).await?;
            cleaned.push(out);
            if cleaned.len() == GROUPS_PER_SWAP_MAX || group_index + 1 == groups.len() {
                if crash_at(CrashPoint::CleanedWritten, crash) {
                    guard.cleaned_files.clear();
                    return Ok(Pass::Crashed);
                }
                // From the first rename on, these files are no longer the guard's to delete;
                // an abandoned swap deletes them itself.
                guard.cleaned_files.clear();
                if let Some(stop) = self.swap_in(std::mem::take(&mut cleaned), crash)? {
                    return Ok(stop);
                }
            }
        }
        self.state.borrow_mut().first_dirty_offset = map_end;
        if let Err(e) = write_first_dirty(&self.dir, map_end) {
            // Only costs a cleaning of more than is dirty next time.
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not persist the first dirty offset");
        }
        tracing::debug!(dir = %self.dir.display(), first_dirty, map_end, groups = groups.len(), "cleaned");
        Ok(Pass::Cleaned { more })
    }

    /// Swaps `cleaned` (written and fdatasync'd, consecutive, in offset order) in for the
    /// segments they replace: renames to `.swap`, directory fsync, old files deleted, renames
    /// to the final names, directory fsync, then the segment list in one step. No await: no
    /// other task sees a half-swapped list. `Some` when the pass must stop: the log changed
    /// under it (`Abandoned`, the new files deleted) or a simulated crash point was reached.
    fn swap_in(
        &self,
        cleaned: Vec<CleanedSegment>,
        crash: Option<CrashPoint>,
    ) -> io::Result<Option<Pass>> {
        let mut st = self.state.borrow_mut();
        let first_old = cleaned[0].replaces[0].clone();
        let at = st
            .segments
            .iter()
            .position(|s| Arc::ptr_eq(&s.log, &first_old));
        let olds = cleaned.iter().map(|c| c.replaces.len()).sum::<usize>();
        let unchanged = at.is_some_and(|at| {
            !st.removed
                && st.segments.len() > at + olds
                && cleaned
                    .iter()
                    .flat_map(|c| &c.replaces)
                    .zip(&st.segments[at..])
                    .all(|(o, s)| Arc::ptr_eq(o, &s.log))
        });
        let Some(at) = at.filter(|_| unchanged) else {
            // Retention or DeleteRecords took segments meanwhile, or the log was deleted.
            for c in &cleaned {
                for ext in ["log", "index", "timeindex"] {
                    let path = self.dir.join(cleaned_name(c.base, ext));
                    if let Err(e) = remove_if_present(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "could not delete a cleaner's unfinished file");
                    }
                }
            }
            return Ok(Some(Pass::Abandoned));
        };
        #[cfg(test)]
        if crash == Some(CrashPoint::SwapFailsAfterWriteFailure) {
            // A write failure (repairable) happened while the pass ran.
            st.failed = Some("simulated write failure".into());
            st.repairable = true;
        }
        let dir = self.dir.clone();
        let swap = || -> io::Result<bool> {
            for c in &cleaned {
                for ext in ["index", "timeindex"] {
                    std::fs::rename(
                        dir.join(cleaned_name(c.base, ext)),
                        dir.join(swap_index_name(c.base, ext)),
                    )?;
                }
                std::fs::rename(
                    dir.join(cleaned_name(c.base, "log")),
                    dir.join(swap_log_name(c.base, c.end)),
                )?;
                sync_dir(&dir)?;
            }
            if crash_at(CrashPoint::SwapRenamed, crash) {
                return Ok(false);
            }
            for c in &cleaned {
                for &b in &c.replaces_bases {
                    for ext in ["log", "index", "timeindex"] {
                        remove_if_present(&dir.join(segment::file_name(b, ext)))?;
                    }
                }
            }
            if crash_at(CrashPoint::OldDeleted, crash) {
                return Ok(false);
            }
            #[cfg(test)]
            if crash == Some(CrashPoint::SwapFailsAfterWriteFailure) {
                return Err(io::Error::other("simulated rename failure"));
            }
            // The unlinks are on disk before any final name appears, whatever order the file
            // system gives metadata operations.
            sync_dir(&dir)?;
            for c in &cleaned {
                for ext in ["index", "timeindex"] {
                    std::fs::rename(
                        dir.join(swap_index_name(c.base, ext)),
                        dir.join(segment::file_name(c.base, ext)),
                    )?;
                }
                std::fs::rename(
                    dir.join(swap_log_name(c.base, c.end)),
                    dir.join(segment::file_name(c.base, "log")),
                )?;
            }
            sync_dir(&dir)?;
            Ok(true)
        };
        match swap() {
            Ok(true) => {}
            Ok(false) => return Ok(Some(Pass::Crashed)),
            Err(e) => {
                // Half swapped: the files are what a crash would leave, and a reopen finishes
                // or discards it; the segments in memory are no longer backed by their names.
                // Whatever failure was pending (a repairable write failure would be cleared by
                // the next append's cut back): only a reopen may resume this log.
                tracing::error!(dir = %self.dir.display(), error = %e, "a cleaner's segment swap failed; partition refuses writes until reopened");
                st.failed = Some(format!("a cleaner's segment swap failed: {e}"));
                st.repairable = false;
                return Err(e);
            }
        }
        let new: Vec<Segment> = cleaned
            .into_iter()
            .map(|c| c.into_segment(&self.dir))
            .collect();
        st.segments.splice(at..at + olds, new);
        Ok(None)
    }
}

#[cfg(test)]
#[path = "clean_tests.rs"]
mod tests;
