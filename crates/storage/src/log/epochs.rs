//! Leader epochs of a partition (Kafka's `LeaderEpochFileCache`): for every leader epoch the
//! log holds data of (or a leader began at), the offset its first batch got. Replication uses
//! them to find where a follower's log diverges from its leader's (KIP-101/279:
//! OffsetsForLeaderEpoch, then truncation).
//!
//! File `leader-epoch-checkpoint` in the partition directory, Kafka's text format: line 1 the
//! version `0`, line 2 the entry count, then one `epoch startOffset` line per entry, ascending.
//! Replaced atomically (`atomic_file`) whenever the entries change — rarely: once per leader
//! epoch, and on truncation. At open the file is loaded and entries past the recovered log end
//! dropped; without a usable file the entries are rebuilt from the batch headers
//! (`partitionLeaderEpoch`, bytes 12..16 of a v2 batch), reading a bounded number of headers
//! (see [`rebuild`]). Control plane: plain blocking file calls, like `log_start.rs`.
//!
//! A log that never began a leader epoch (a single broker) keeps whatever epoch its clients'
//! batches carry, and appends do not track them; only epochs >= 0 are ever recorded.

use super::{PartitionLog, State};
use crate::atomic_file::write_atomically;
use crate::frame::{BatchFrame, HEADER_BYTES};
use crate::segment::Segment;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const FILE_NAME: &str = "leader-epoch-checkpoint";

/// Kafka's `UNDEFINED_EPOCH` and `UNDEFINED_EPOCH_OFFSET`.
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;

/// Most entries a checkpoint file may hold (one per leader epoch the log has data of; a file
/// claiming more is damaged and the entries are rebuilt from the log).
pub const EPOCH_ENTRIES_MAX: usize = 1 << 20;

/// Where a v2 batch keeps its partitionLeaderEpoch (outside the CRC).
pub const EPOCH_FIELD: std::ops::Range<usize> = 12..16;

/// The partitionLeaderEpoch of the batch at the front of `batch` (at least 16 bytes).
pub fn batch_epoch(batch: &[u8]) -> i32 {
    i32::from_be_bytes(batch[EPOCH_FIELD].try_into().expect("4 bytes"))
}

/// `(epoch, start offset)` entries, both ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Epochs {
    entries: Vec<(i32, i64)>,
}

impl Epochs {
    pub(crate) fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    pub(crate) fn latest(&self) -> Option<i32> {
        self.entries.last().map(|&(e, _)| e)
    }

    /// Records that `epoch` starts at `start` unless the latest epoch is already >= it (as
    /// Kafka's `assign`); entries starting at or after `start` of smaller epochs are replaced
    /// (they cannot hold data of an older leader past a newer one's start). Negative epochs
    /// (a client's "none") are ignored. True when the entries changed.
    pub(crate) fn assign(&mut self, epoch: i32, start: i64) -> bool {
        if epoch < 0 || self.latest().is_some_and(|l| l >= epoch) {
            return false;
        }
        while self.entries.last().is_some_and(|&(_, s)| s >= start) {
            self.entries.pop();
        }
        self.entries.push((epoch, start));
        true
    }

    /// Removes the entries starting at or after `end` (the log was cut back to end there).
    pub(crate) fn truncate_from_end(&mut self, end: i64) -> bool {
        let keep = self.entries.partition_point(|&(_, s)| s < end);
        let changed = keep < self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// Removes the entries starting past `end` (at open: data the crash took; an entry at
    /// the end is a leader epoch begun with no data yet, and stays).
    pub(crate) fn drop_past(&mut self, end: i64) -> bool {
        let keep = self.entries.partition_point(|&(_, s)| s <= end);
        let changed = keep < self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// Kafka's `endOffsetFor`: the answer to OffsetsForLeaderEpoch for `epoch`.
    /// - the latest epoch: `(epoch, log_end)`;
    /// - else, when a larger epoch is known: the largest known epoch <= `epoch` (or `epoch`
    ///   itself when every known epoch is larger) and the start offset of the first larger one;
    /// - else (`epoch` is above every known epoch, none is known, or it is undefined):
    ///   `(UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET)`.
    pub(crate) fn end_offset_for(&self, epoch: i32, log_end: i64) -> (i32, i64) {
        let undefined = (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        if epoch == UNDEFINED_EPOCH {
            return undefined;
        }
        if self.latest() == Some(epoch) {
            return (epoch, log_end);
        }
        let higher = self.entries.partition_point(|&(e, _)| e <= epoch);
        let Some(&(_, higher_start)) = self.entries.get(higher) else {
            return undefined;
        };
        match higher.checked_sub(1) {
            Some(floor) => (self.entries[floor].0, higher_start),
            None => (epoch, higher_start),
        }
    }

    /// Kafka's text form: version, count, `epoch offset` lines.
    pub(crate) fn encode(&self) -> String {
        let mut s = format!("0\n{}\n", self.entries.len());
        for (e, o) in &self.entries {
            s.push_str(&format!("{e} {o}\n"));
        }
        s
    }

    /// Parses [`Epochs::encode`]'s form; `None` unless it is whole, sane and ascending.
    pub(crate) fn decode(text: &str) -> Option<Epochs> {
        let mut lines = text.lines();
        if lines.next()?.trim() != "0" {
            return None;
        }
        let count: usize = lines.next()?.trim().parse().ok()?;
        if count > EPOCH_ENTRIES_MAX {
            return None;
        }
        let mut entries: Vec<(i32, i64)> = Vec::with_capacity(count);
        for _ in 0..count {
            let mut fields = lines.next()?.split_whitespace();
            let epoch: i32 = fields.next()?.parse().ok()?;
            let start: i64 = fields.next()?.parse().ok()?;
            if fields.next().is_some() || epoch < 0 || start < 0 {
                return None;
            }
            if entries
                .last()
                .is_some_and(|&(e, s)| e >= epoch || s > start)
            {
                return None;
            }
            entries.push((epoch, start));
        }
        if lines.any(|l| !l.trim().is_empty()) {
            return None;
        }
        Some(Epochs { entries })
    }
}

/// The entries in `dir`'s file: `Ok(None)` when there is none, an error when it is damaged.
pub(crate) fn read(dir: &Path) -> io::Result<Option<Epochs>> {
    let path = dir.join(FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(Epochs::decode)
            .map(Some)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is damaged", path.display()),
                )
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes `epochs` the file's content (atomically, durable on return).
pub(crate) fn write(dir: &Path, epochs: &Epochs) -> io::Result<()> {
    write_atomically(&dir.join(FILE_NAME), epochs.encode().as_bytes())
}

#[cfg(test)]
thread_local! {
    /// Batch headers [`rebuild`] read on this thread (tests check the bound holds).
    pub(crate) static REBUILD_HEADER_READS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The epoch, base offset and length of the batch header at `position` of a segment.
fn header_at(file: &std::fs::File, position: u64) -> io::Result<(i32, i64, u64)> {
    #[cfg(test)]
    REBUILD_HEADER_READS.with(|n| n.set(n.get() + 1));
    let mut header = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut header, position)?;
    let frame = BatchFrame::parse(&header).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no batch header at position {position}"),
        )
    })?;
    Ok((
        batch_epoch(&header),
        frame.base_offset,
        frame.total_bytes as u64,
    ))
}

/// Rebuilds the entries from the batch headers of `segments` (their committed bytes), reading
/// a bounded number of headers: epochs only grow along a log, so a stretch whose first and
/// last probed batches carry the same epoch holds no change. Per segment it reads the header
/// at 0 and at every probe it needs among the offset index's positions (a bisection between
/// the index entries whose epochs differ), then walks the headers between the two adjacent
/// probes around each change and after the last index entry (about an index interval each).
/// A log with one epoch costs one header per segment plus its last index interval.
pub(crate) fn rebuild(segments: &[Segment]) -> io::Result<Epochs> {
    let mut epochs = Epochs::default();
    for seg in segments.iter().filter(|s| s.committed_bytes > 0) {
        let file = std::fs::File::from(seg.log.try_clone()?);
        let end = seg.committed_bytes;
        let mut probes: Vec<u64> = vec![0];
        probes.extend(
            (0..seg.index.len())
                .filter_map(|i| seg.index.position_at(i))
                .map(u64::from)
                .filter(|&p| p > 0 && p < end),
        );
        let walk = |epochs: &mut Epochs, from: u64, to: u64| -> io::Result<()> {
            let mut at = from;
            while at < to {
                let (epoch, base, len) = header_at(&file, at)?;
                epochs.assign(epoch, base);
                at += len;
            }
            Ok(())
        };
        let (first_epoch, first_base, _) = header_at(&file, 0)?;
        epochs.assign(first_epoch, first_base);
        // Bisect between probes lo and hi whose epochs differ, in offset order: a walk from
        // lo up to hi, then hi's own batch.
        let mut stack: Vec<(usize, usize, i32, (i32, i64))> = Vec::new();
        let last = probes.len() - 1;
        if last > 0 {
            let (last_epoch, last_base, _) = header_at(&file, probes[last])?;
            stack.push((0, last, first_epoch, (last_epoch, last_base)));
        }
        while let Some((lo, hi, lo_epoch, (hi_epoch, hi_base))) = stack.pop() {
            if lo_epoch == hi_epoch {
                continue;
            }
            if hi == lo + 1 {
                walk(&mut epochs, probes[lo], probes[hi])?;
                epochs.assign(hi_epoch, hi_base);
                continue;
            }
            let mid = (lo + hi) / 2;
            let (mid_epoch, mid_base, _) = header_at(&file, probes[mid])?;
            // The lower half first: a stack, so push it last.
            stack.push((mid, hi, mid_epoch, (hi_epoch, hi_base)));
            stack.push((lo, mid, lo_epoch, (mid_epoch, mid_base)));
        }
        walk(&mut epochs, probes[last], end)?;
    }
    Ok(epochs)
}

/// The entries at open: the file's, without those past `log_end`; rebuilt from the log when
/// the file is missing or damaged (and written back when that found any, or changed them).
pub(super) fn at_open(dir: &Path, segments: &[Segment], log_end: i64) -> io::Result<Epochs> {
    let (mut epochs, mut dirty) = match read(dir) {
        Ok(Some(epochs)) => (epochs, false),
        Ok(None) => {
            let epochs = rebuild(segments)?;
            let found = !epochs.entries.is_empty();
            if found {
                tracing::info!(dir = %dir.display(), entries = epochs.entries.len(), "rebuilt the leader epochs from the log");
            }
            (epochs, found)
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the leader epochs; rebuilding them from the log");
            (rebuild(segments)?, true)
        }
    };
    dirty |= epochs.drop_past(log_end);
    if dirty {
        write(dir, &epochs)?;
    }
    Ok(epochs)
}

impl State {
    /// Replaces the entries by `epochs`, persisting them first when they differ.
    pub(super) fn set_epochs(&mut self, dir: &Path, epochs: Epochs) -> io::Result<()> {
        if epochs != self.epochs {
            write(dir, &epochs)?;
            self.epochs = epochs;
        }
        Ok(())
    }
}

impl PartitionLog {
    /// The log end offset: the next offset to be written (what `high_watermark()` returns:
    /// storage's "high watermark" is the end of the written log; the broker keeps the
    /// replicated high watermark).
    pub fn log_end_offset(&self) -> i64 {
        self.state.borrow().high_watermark
    }

    /// The leader epochs, `(epoch, start offset)` ascending.
    pub fn epoch_entries(&self) -> Vec<(i32, i64)> {
        self.state.borrow().epochs.entries().to_vec()
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.state.borrow().epochs.latest()
    }

    /// Kafka's OffsetsForLeaderEpoch answer for `epoch` (`LeaderEpochFileCache.endOffsetFor`):
    /// the latest epoch ends at the log end offset; an earlier one at the start offset of the
    /// next larger known epoch, answered with the largest known epoch <= `epoch` (`epoch`
    /// itself when every known epoch is larger: its data is gone, the follower truncates to
    /// where the log's first known epoch starts); `(-1, -1)` (UNDEFINED_EPOCH /
    /// UNDEFINED_EPOCH_OFFSET) when `epoch` is above every known epoch, none is known, or it
    /// is -1.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let st = self.state.borrow();
        st.epochs.end_offset_for(epoch, st.high_watermark)
    }

    /// A leader starts epoch `epoch`: records `(epoch, log end offset)` unless the latest epoch
    /// is already >= `epoch`, persisted before returning. From then on `append_batch` writes
    /// `epoch` into each batch's partitionLeaderEpoch (until another epoch begins, a replicated
    /// append or a full truncation). An epoch below the latest is refused (InvalidInput): a
    /// leader never goes back in epochs.
    pub fn begin_leader_epoch(&self, epoch: i32) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        if epoch < 0 || st.epochs.latest().is_some_and(|l| l > epoch) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "leader epoch {epoch} is below the log's latest epoch {:?}",
                    st.epochs.latest()
                ),
            ));
        }
        let mut epochs = st.epochs.clone();
        let start = st.next_offset;
        epochs.assign(epoch, start);
        st.set_epochs(&self.dir, epochs)?;
        st.stamp_epoch = Some(epoch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epochs(entries: &[(i32, i64)]) -> Epochs {
        Epochs {
            entries: entries.to_vec(),
        }
    }

    #[test]
    fn end_offsets_answer_as_kafka_does() {
        let e = epochs(&[(1, 0), (3, 10), (4, 25)]);
        // The latest epoch ends at the log end.
        assert_eq!(e.end_offset_for(4, 40), (4, 40));
        // An earlier known epoch ends where the next one starts.
        assert_eq!(e.end_offset_for(3, 40), (3, 25));
        assert_eq!(e.end_offset_for(1, 40), (1, 10));
        // An unknown epoch between known ones: the largest known below it.
        assert_eq!(e.end_offset_for(2, 40), (1, 10));
        // Below every known epoch: itself, ending where the first known starts.
        assert_eq!(e.end_offset_for(0, 40), (0, 0));
        // Above every known epoch, undefined, or nothing known.
        assert_eq!(e.end_offset_for(5, 40), (-1, -1));
        assert_eq!(e.end_offset_for(-1, 40), (-1, -1));
        assert_eq!(Epochs::default().end_offset_for(0, 40), (-1, -1));
    }

    #[test]
    fn assign_keeps_epochs_growing_and_replaces_entries_a_newer_epoch_starts_before() {
        let mut e = Epochs::default();
        assert!(!e.assign(-1, 0));
        assert!(e.assign(0, 0));
        assert!(!e.assign(0, 5));
        assert!(e.assign(2, 5));
        assert!(!e.assign(1, 7));
        assert!(e.assign(3, 5));
        assert_eq!(e.entries(), &[(0, 0), (3, 5)]);
        assert!(e.truncate_from_end(5));
        assert_eq!(e.entries(), &[(0, 0)]);
        assert!(e.assign(4, 9));
        assert!(!e.drop_past(9));
        assert!(e.drop_past(8));
        assert_eq!(e.entries(), &[(0, 0)]);
    }

    #[test]
    fn the_file_round_trips_in_kafkas_format_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let e = epochs(&[(0, 0), (5, 100), (7, 250)]);
        write(dir.path(), &e).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap(),
            "0\n3\n0 0\n5 100\n7 250\n"
        );
        assert_eq!(read(dir.path()).unwrap(), Some(e));
        for bad in [
            "1\n0\n",
            "0\n2\n0 0\n",
            "0\n1\n0 0 0\n",
            "0\n2\n5 0\n4 10\n",
            "0\n1\n-3 0\n",
            "0\n99999999999\n",
            "0\n1\n0 0\n1 1\n",
        ] {
            std::fs::write(dir.path().join(FILE_NAME), bad).unwrap();
            assert!(read(dir.path()).is_err(), "{bad:?}");
        }
    }
}
