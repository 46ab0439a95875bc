//! Durable raft storage in the quorum's directory, read by raft-rs through [`raft::Storage`].
//!
//! Files (all in `dir`):
//! - `entries.log`: append-only records `u32 len | u32 crc32c(payload) | payload` (big endian),
//!   payload = protobuf `eraftpb::Entry`. A damaged *last* record (a torn write: cut short, or
//!   a bad checksum with nothing but zeros after it) is cut at open; a damaged record followed
//!   by more data, or a whole record over [`ENTRY_BYTES_MAX`], is corruption: open refuses.
//!   Raft may replace a suffix (a new leader's entries win): the file is truncated (and synced)
//!   to the first replaced record before the new ones are written.
//! - `hardstate`: `u32 crc32c | protobuf HardState`, replaced atomically (temp, fsync, rename,
//!   dir fsync).
//! - `snapshot.json`: the [`MetadataImage`] at `index` plus the raft metadata (term, voters),
//!   replaced atomically; the log before it is dropped by rewriting `entries.log`. A snapshot
//!   installed from the leader is marked `installed`: if the node crashes before the log is
//!   rewritten, open discards the old log (it may hold another history after the index).
//! - `voters`: the voter ids (JSON), written when the directory is first used; open refuses a
//!   different voter set.
//!
//! Entries since the snapshot are also kept in memory: the metadata log is small and bounded
//! by snapshots, and raft-rs reads it often.

use crate::MetadataImage;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// One log record's payload is at most this long (a whole entry, commands are small).
pub const ENTRY_BYTES_MAX: usize = 16 << 20;
const RECORD_HEADER_BYTES: usize = 8;

const ENTRIES_FILE: &str = "entries.log";
const HARD_STATE_FILE: &str = "hardstate";
const SNAPSHOT_FILE: &str = "snapshot.json";
const VOTERS_FILE: &str = "voters";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },
    /// The directory belongs to another configuration (a different voter set).
    #[error("{path}: {what}")]
    Mismatch { path: PathBuf, what: String },
}

impl From<StoreError> for io::Error {
    fn from(e: StoreError) -> io::Error {
        match e {
            StoreError::Io { source, .. } => source,
            e @ StoreError::Corrupt { .. } => io::Error::new(io::ErrorKind::InvalidData, e),
            e @ StoreError::Mismatch { .. } => io::Error::new(io::ErrorKind::InvalidInput, e),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `snapshot.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotFile {
    index: u64,
    term: u64,
    voters: Vec<u64>,
    /// Raft learners (brokers that joined after the voters): metadata only, no vote.
    #[serde(default)]
    learners: Vec<u64>,
    image: MetadataImage,
    /// Installed from the leader's snapshot (the log then held may be another history).
    #[serde(default)]
    installed: bool,
}

pub struct DiskStorage {
    dir: PathBuf,
    log: File,
    /// File length covered by `entries` (where the next record goes).
    log_len: u64,
    /// Entries after the snapshot, contiguous, with each record's file offset.
    entries: Vec<Entry>,
    offsets: Vec<u64>,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_index: u64,
    snapshot_term: u64,
    /// The image of the snapshot (what a lagging follower is sent), JSON.
    snapshot_data: Vec<u8>,
}

impl std::fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStorage")
            .field("dir", &self.dir)
            .field("snapshot_index", &self.snapshot_index)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl DiskStorage {
    /// Opens (creating) the storage in `dir`; `voters` is the initial configuration of a new
    /// quorum (the same on every node). Returns the storage and the snapshot's image.
    pub fn open(dir: &Path, voters: &[u64]) -> Result<(DiskStorage, MetadataImage), StoreError> {
        create_dir_durable(dir)?;
        let mut conf_state = ConfState {
            voters: voters.to_vec(),
            ..ConfState::default()
        };

        let snap_path = dir.join(SNAPSHOT_FILE);
        let (snapshot_index, snapshot_term, image, installed) = match std::fs::read(&snap_path) {
            Ok(bytes) => {
                let snap: SnapshotFile =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                        path: snap_path.clone(),
                        what: e.to_string(),
                    })?;
                let mut theirs = snap.voters.clone();
                theirs.sort_unstable();
                let mut ours = voters.to_vec();
                ours.sort_unstable();
                if theirs != ours {
                    return Err(StoreError::Mismatch {
                        path: snap_path,
                        what: format!("the snapshot's voters are {theirs:?}, not {ours:?}"),
                    });
                }
                conf_state.voters = snap.voters;
                conf_state.learners = snap.learners;
                (snap.index, snap.term, snap.image, snap.installed)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                (0, 0, MetadataImage::default(), false)
            }
            Err(e) => return Err(io_err(&snap_path)(e)),
        };
        // After the snapshot's own check: a directory from before the voters file existed gets
        // it only when its snapshot agrees.
        check_voters(dir, voters)?;
        let snapshot_data = serde_json::to_vec(&image).unwrap_or_default();

        let hs_path = dir.join(HARD_STATE_FILE);
        let mut hard_state = match std::fs::read(&hs_path) {
            Ok(bytes) => decode_hard_state(&bytes).ok_or_else(|| StoreError::Corrupt {
                path: hs_path.clone(),
                what: "bad checksum or encoding".to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => HardState::default(),
            Err(e) => return Err(io_err(&hs_path)(e)),
        };

        let log_path = dir.join(ENTRIES_FILE);
        let mut log = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        // The log file may have just been created.
        sync_dir(dir)?;
        let (mut records, mut good_len) = read_records(&mut log, &log_path)?;
        if installed
            && records
                .first()
                .is_some_and(|(_, e)| e.index <= snapshot_index)
        {
            // The node crashed while installing the leader's snapshot, before the log was
            // rewritten: what it holds after the snapshot's index may be another history.
            tracing::warn!(
                path = %log_path.display(),
                snapshot_index,
                "discarding the log left from before an installed snapshot"
            );
            records.clear();
            good_len = 0;
        }
        let file_len = log.metadata().map_err(io_err(&log_path))?.len();
        if good_len < file_len {
            tracing::warn!(
                path = %log_path.display(),
                good_len,
                file_len,
                "cutting a torn or corrupt tail off the raft log"
            );
            log.set_len(good_len).map_err(io_err(&log_path))?;
            log.sync_all().map_err(io_err(&log_path))?;
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(records.len());
        let mut offsets = Vec::with_capacity(records.len());
        for (offset, entry) in records {
            // Entries the snapshot covers (a crash between snapshot and log rewrite) are
            // skipped; a gap ends the usable log.
            if entry.index <= snapshot_index {
                continue;
            }
            let expected = entries.last().map_or(snapshot_index + 1, |e| e.index + 1);
            if entry.index != expected {
                return Err(StoreError::Corrupt {
                    path: log_path,
                    what: format!("entry {} where {expected} was expected", entry.index),
                });
            }
            entries.push(entry);
            offsets.push(offset);
        }
        let last_index = entries.last().map_or(snapshot_index, |e| e.index);
        // The commit index never trails the snapshot and never passes the durable log.
        hard_state.commit = hard_state.commit.max(snapshot_index).min(last_index);
        // A crash while installing a snapshot may leave the hard state's term behind it (no
        // vote was cast in the snapshot's term then).
        if hard_state.term < snapshot_term {
            hard_state.term = snapshot_term;
            hard_state.vote = 0;
        }
        log.seek(SeekFrom::Start(good_len))
            .map_err(io_err(&log_path))?;
        // Learners added by committed entries after the snapshot (raft takes the committed
        // entries as applied at start: their configuration changes are in the initial state).
        let committed = hard_state.commit.saturating_sub(snapshot_index) as usize;
        for entry in &entries[..committed.min(entries.len())] {
            add_learner_of(&mut conf_state, entry);
        }
        let storage = DiskStorage {
            dir: dir.to_path_buf(),
            log,
            log_len: good_len,
            entries,
            offsets,
            hard_state,
            conf_state,
            snapshot_index,
            snapshot_term,
            snapshot_data,
        };
        Ok((storage, image))
    }

    /// The configuration after a committed change was applied (kept in the next snapshot).
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    pub fn last_index(&self) -> u64 {
        self.entries.last().map_or(self.snapshot_index, |e| e.index)
    }

    /// Committed entries after the snapshot, up to `commit`, for replay at start.
    pub fn entries_to(&self, commit: u64) -> &[Entry] {
        let n = commit.saturating_sub(self.snapshot_index) as usize;
        &self.entries[..n.min(self.entries.len())]
    }

    /// Appends (replacing any conflicting suffix) and syncs.
    pub fn append(&mut self, new: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = new.first() else {
            return Ok(());
        };
        let path = self.dir.join(ENTRIES_FILE);
        if first.index <= self.snapshot_index {
            return Err(StoreError::Corrupt {
                path,
                what: format!(
                    "append at {} inside the snapshot (at {})",
                    first.index, self.snapshot_index
                ),
            });
        }
        let keep = (first.index - self.snapshot_index - 1) as usize;
        if keep > self.entries.len() {
            return Err(StoreError::Corrupt {
                path,
                what: format!("append at {} leaves a gap", first.index),
            });
        }
        if keep < self.entries.len() {
            let cut = self.offsets[keep];
            self.entries.truncate(keep);
            self.offsets.truncate(keep);
            self.log.set_len(cut).map_err(io_err(&path))?;
            // The cut is durable before the replacing records are written: a crash cannot
            // leave old records behind new ones.
            self.log.sync_data().map_err(io_err(&path))?;
            self.log_len = cut;
        }
        let mut buf = Vec::new();
        for entry in new {
            let payload = entry.write_to_bytes().map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                what: e.to_string(),
            })?;
            self.offsets.push(self.log_len + buf.len() as u64);
            buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            buf.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
            buf.extend_from_slice(&payload);
            self.entries.push(entry.clone());
        }
        self.log
            .seek(SeekFrom::Start(self.log_len))
            .map_err(io_err(&path))?;
        self.log.write_all(&buf).map_err(io_err(&path))?;
        self.log.sync_data().map_err(io_err(&path))?;
        self.log_len += buf.len() as u64;
        Ok(())
    }

    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<(), StoreError> {
        let bytes = hs.write_to_bytes().map_err(|e| StoreError::Corrupt {
            path: self.dir.join(HARD_STATE_FILE),
            what: e.to_string(),
        })?;
        let mut record = crc32c::crc32c(&bytes).to_be_bytes().to_vec();
        record.extend_from_slice(&bytes);
        write_atomic(&self.dir, HARD_STATE_FILE, &record)?;
        self.hard_state = hs.clone();
        Ok(())
    }

    /// Persists a new commit index (raft reports it after `advance`, outside the `Ready`'s
    /// hard state), so a restart replays everything this node applied.
    pub fn set_commit(&mut self, commit: u64) -> Result<(), StoreError> {
        if commit <= self.hard_state.commit {
            return Ok(());
        }
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Records `image` (applied through `index`) as the snapshot and drops the log up to it.
    pub fn snapshot_and_compact(
        &mut self,
        image: &MetadataImage,
        index: u64,
    ) -> Result<(), StoreError> {
        if index <= self.snapshot_index || index > self.last_index() {
            return Ok(());
        }
        let term = self.entry_term(index).unwrap_or(0);
        self.write_snapshot(image, index, term, false)?;
        let drop = (index - self.snapshot_index) as usize;
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.entries.drain(..drop);
        self.rewrite_log()
    }

    /// A snapshot sent by the leader (this node lagged behind its compaction): it replaces the
    /// log whole.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<MetadataImage, StoreError> {
        let meta = snap.get_metadata();
        let image: MetadataImage =
            serde_json::from_slice(&snap.data).map_err(|e| StoreError::Corrupt {
                path: self.dir.join(SNAPSHOT_FILE),
                what: format!("snapshot from the leader: {e}"),
            })?;
        self.conf_state = meta.get_conf_state().clone();
        self.write_snapshot(&image, meta.index, meta.term, true)?;
        self.snapshot_index = meta.index;
        self.snapshot_term = meta.term;
        self.entries.clear();
        self.rewrite_log()?;
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        self.set_hard_state(&hs)?;
        Ok(image)
    }

    fn write_snapshot(
        &mut self,
        image: &MetadataImage,
        index: u64,
        term: u64,
        installed: bool,
    ) -> Result<(), StoreError> {
        let mut image = image.clone();
        image.applied_index = index;
        image.controller_id = -1;
        let file = SnapshotFile {
            index,
            term,
            voters: self.conf_state.voters.clone(),
            learners: self.conf_state.learners.clone(),
            image,
            installed,
        };
        let bytes = serde_json::to_vec(&file).unwrap_or_default();
        write_atomic(&self.dir, SNAPSHOT_FILE, &bytes)?;
        self.snapshot_data = serde_json::to_vec(&file.image).unwrap_or_default();
        Ok(())
    }

    /// Writes the kept entries to a new log file that replaces the old one atomically.
    fn rewrite_log(&mut self) -> Result<(), StoreError> {
        let path = self.dir.join(ENTRIES_FILE);
        let mut buf = Vec::new();
        self.offsets.clear();
        for entry in &self.entries {
            let payload = entry.write_to_bytes().map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                what: e.to_string(),
            })?;
            self.offsets.push(buf.len() as u64);
            buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            buf.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
            buf.extend_from_slice(&payload);
        }
        write_atomic(&self.dir, ENTRIES_FILE, &buf)?;
        self.log = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.log_len = buf.len() as u64;
        Ok(())
    }

    fn entry_term(&self, idx: u64) -> Option<u64> {
        if idx == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        let first = self.snapshot_index + 1;
        if idx < first {
            return None;
        }
        self.entries.get((idx - first) as usize).map(|e| e.term)
    }
}

impl raft::Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.snapshot_index + 1;
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = self.entries[(low - first) as usize..(high - first) as usize].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entry_term(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(DiskStorage::last_index(self))
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let mut meta = SnapshotMetadata {
            index: self.snapshot_index,
            term: self.snapshot_term,
            ..SnapshotMetadata::default()
        };
        meta.set_conf_state(self.conf_state.clone());
        let mut snap = Snapshot {
            data: self.snapshot_data.clone().into(),
            ..Snapshot::default()
        };
        snap.set_metadata(meta);
        Ok(snap)
    }
}

fn decode_hard_state(bytes: &[u8]) -> Option<HardState> {
    let (crc, body) = bytes.split_at_checked(4)?;
    if u32::from_be_bytes(crc.try_into().ok()?) != crc32c::crc32c(body) {
        return None;
    }
    HardState::parse_from_bytes(body).ok()
}

/// Reads whole, checksummed records from the start; returns them with their offsets and the
/// length of the good prefix. A damaged record is a torn tail (the end of the good prefix) only
/// when nothing but zeros follows it; a damaged record with data after it, or a whole record
/// with a good checksum that is over the limit or undecodable, is corruption.
fn read_records(file: &mut File, path: &Path) -> Result<(Vec<(u64, Entry)>, u64), StoreError> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    file.read_to_end(&mut bytes).map_err(io_err(path))?;
    let corrupt = |pos: usize, what: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        what: format!("record at offset {pos}: {what}"),
    };
    let mut out = Vec::new();
    let mut pos = 0usize;
    while let Some(header) = bytes.get(pos..pos + RECORD_HEADER_BYTES) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let start = pos + RECORD_HEADER_BYTES;
        let end = start.saturating_add(len);
        let payload = bytes.get(start..end);
        let checked = payload.filter(|p| len > 0 && crc32c::crc32c(p) == crc);
        let Some(payload) = checked else {
            // Cut short or a bad checksum: a torn write if nothing was written after it.
            let after = bytes.get(end.min(bytes.len())..).unwrap_or_default();
            if after.iter().any(|b| *b != 0) {
                return Err(corrupt(
                    pos,
                    format!(
                        "bad checksum or length ({len} bytes) with {} bytes after it",
                        after.len()
                    ),
                ));
            }
            break;
        };
        if len > ENTRY_BYTES_MAX {
            return Err(corrupt(
                pos,
                format!("{len} bytes, over the limit of {ENTRY_BYTES_MAX}"),
            ));
        }
        let entry = Entry::parse_from_bytes(payload)
            .map_err(|e| corrupt(pos, format!("undecodable entry: {e}")))?;
        out.push((pos as u64, entry));
        pos = end;
    }
    Ok((out, pos as u64))
}

/// Creates `dir` and its missing ancestors, each made durable (its parent fsynced).
fn create_dir_durable(dir: &Path) -> Result<(), StoreError> {
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(p);
        d = p.parent();
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    for p in missing.iter().rev() {
        if let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The voter set this directory was first used with: recorded then, compared on every later
/// open (the quorum's membership is fixed; another `--cluster` would split its history).
/// The learner a configuration-change entry adds (the only change this quorum proposes),
/// added to `conf_state`.
pub fn add_learner_of(conf_state: &mut ConfState, entry: &Entry) {
    use protobuf::Message as _;
    if entry.get_entry_type() != raft::eraftpb::EntryType::EntryConfChange {
        return;
    }
    let Ok(cc) = raft::eraftpb::ConfChange::parse_from_bytes(&entry.data) else {
        tracing::error!(index = entry.index, "undecodable configuration change");
        return;
    };
    if cc.get_change_type() != raft::eraftpb::ConfChangeType::AddLearnerNode {
        tracing::error!(
            index = entry.index,
            "unexpected configuration change skipped"
        );
        return;
    }
    if !conf_state.voters.contains(&cc.node_id) && !conf_state.learners.contains(&cc.node_id) {
        conf_state.learners.push(cc.node_id);
    }
}

fn check_voters(dir: &Path, voters: &[u64]) -> Result<(), StoreError> {
    let path = dir.join(VOTERS_FILE);
    let mut ours = voters.to_vec();
    ours.sort_unstable();
    match std::fs::read(&path) {
        Ok(bytes) => {
            let mut theirs: Vec<u64> =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    path: path.clone(),
                    what: e.to_string(),
                })?;
            theirs.sort_unstable();
            if theirs != ours {
                return Err(StoreError::Mismatch {
                    path,
                    what: format!(
                        "this node's quorum state belongs to voters {theirs:?}; --cluster names \
                         {ours:?} (the voter set cannot change)"
                    ),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let bytes = serde_json::to_vec(&ours).unwrap_or_default();
            write_atomic(dir, VOTERS_FILE, &bytes)
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Replaces `dir/name` with `bytes`: temp file, fsync, rename, dir fsync.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Entry::default()
        }
    }

    #[test]
    fn restart_keeps_hard_state_and_entries() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, image) = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
            assert_eq!(image, MetadataImage::default());
            assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
            s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
                .unwrap();
            // A new leader replaces the suffix from 3.
            s.append(&[entry(3, 2, b"C"), entry(4, 2, b"d")]).unwrap();
            let hs = HardState {
                term: 2,
                vote: 3,
                commit: 3,
                ..HardState::default()
            };
            s.set_hard_state(&hs).unwrap();
        }
        let (s, _) = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        let hs = s.hard_state();
        assert_eq!((hs.term, hs.vote, hs.commit), (2, 3, 3));
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index(), 4);
        let all = s
            .entries(1, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        let data: Vec<&[u8]> = all.iter().map(|e| &e.data[..]).collect();
        assert_eq!(data, vec![&b"a"[..], b"b", b"C", b"d"]);
        assert_eq!(s.term(3).unwrap(), 2);
        assert_eq!(s.entries_to(3).len(), 3);
    }

    #[test]
    fn torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
            s.append(&[entry(1, 1, b"one"), entry(2, 1, b"two")])
                .unwrap();
        }
        let path = dir.path().join(ENTRIES_FILE);
        let good = std::fs::metadata(&path).unwrap().len();
        // A record cut short by a crash.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&100u32.to_be_bytes()).unwrap();
        f.write_all(&[0, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let (mut s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
        assert_eq!(s.last_index(), 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
        // Appending after the cut works and survives another restart.
        s.append(&[entry(3, 1, b"three")]).unwrap();
        drop(s);
        // A flipped byte in the last record's payload also ends the log there.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
        assert_eq!(s.last_index(), 2);
    }

    #[test]
    fn damage_before_the_last_record_is_corruption_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
            s.append(&[entry(1, 1, b"one"), entry(2, 1, b"two"), entry(3, 1, b"3")])
                .unwrap();
        }
        let path = dir.path().join(ENTRIES_FILE);
        let good = std::fs::read(&path).unwrap();
        // A flipped byte in the first record's payload: records follow it.
        let mut bytes = good.clone();
        bytes[RECORD_HEADER_BYTES + 2] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let e = DiskStorage::open(dir.path(), &[1]).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was cut");
        // A zero-filled tail (blocks allocated, never written) is torn, not corrupt.
        let mut bytes = good.clone();
        bytes.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&path, &bytes).unwrap();
        let (s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
        assert_eq!(s.last_index(), 3);
        drop(s);
        assert_eq!(std::fs::read(&path).unwrap(), good);
        // A whole, checksummed record over the limit is refused even when it is the last.
        let big = entry(4, 1, &vec![7u8; ENTRY_BYTES_MAX + 1])
            .write_to_bytes()
            .unwrap();
        let mut bytes = good.clone();
        bytes.extend_from_slice(&(big.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&big).to_be_bytes());
        bytes.extend_from_slice(&big);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            DiskStorage::open(dir.path(), &[1]),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_crash_while_installing_a_snapshot_drops_the_old_history() {
        let dir = tempfile::tempdir().unwrap();
        let image = MetadataImage {
            cluster_id: "leader's".to_string(),
            ..MetadataImage::default()
        };
        {
            let (mut s, _) = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
            // Entries 1..=10 of term 1, 6..=10 never committed.
            let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1, b"old")).collect();
            s.append(&ents).unwrap();
            // The leader's snapshot at 8 (term 2, another history after 5) is written, then
            // the node crashes before `entries.log` is rewritten.
            s.write_snapshot(&image, 8, 2, true).unwrap();
        }
        let (s, restored) = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        assert_eq!(restored.cluster_id, "leader's");
        assert_eq!(s.snapshot_index(), 8);
        assert_eq!(
            s.last_index(),
            8,
            "entries 9 and 10 of the old history are gone"
        );
        assert_eq!(s.term(8).unwrap(), 2);
        assert_eq!(s.hard_state().term, 2);
        assert_eq!(
            std::fs::metadata(dir.path().join(ENTRIES_FILE))
                .unwrap()
                .len(),
            0
        );
        drop(s);
        // Entries appended after a completed install are kept.
        {
            let (mut s, _) = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
            s.append(&[entry(9, 2, b"new")]).unwrap();
        }
        let (s, _) = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        assert_eq!(s.last_index(), 9);
    }

    #[test]
    fn another_voter_set_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(DiskStorage::open(dir.path(), &[3, 1, 2]).unwrap());
        // The order does not matter.
        drop(DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap());
        for other in [&[1, 2][..], &[1, 2, 4], &[1, 2, 3, 4]] {
            let e = DiskStorage::open(dir.path(), other).unwrap_err();
            assert!(matches!(e, StoreError::Mismatch { .. }), "{e}");
            assert_eq!(io::Error::from(e).kind(), io::ErrorKind::InvalidInput);
        }
        // A directory from before the voters file: its snapshot's voters decide, and a wrong
        // list does not get recorded.
        {
            let (mut st, _) = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
            st.append(&[entry(1, 1, b"x")]).unwrap();
            st.snapshot_and_compact(&MetadataImage::default(), 1)
                .unwrap();
        }
        std::fs::remove_file(dir.path().join(VOTERS_FILE)).unwrap();
        assert!(matches!(
            DiskStorage::open(dir.path(), &[1, 2]),
            Err(StoreError::Mismatch { .. })
        ));
        assert!(!dir.path().join(VOTERS_FILE).exists());
        drop(DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap());
        assert!(dir.path().join(VOTERS_FILE).exists());
    }

    #[test]
    fn missing_directories_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("meta").join("raft");
        drop(DiskStorage::open(&deep, &[1]).unwrap());
        assert!(deep.join(VOTERS_FILE).exists());
    }

    #[test]
    fn snapshot_compacts_the_log_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut image = MetadataImage {
            cluster_id: "abc".to_string(),
            ..MetadataImage::default()
        };
        {
            let (mut s, _) = DiskStorage::open(dir.path(), &[1, 2]).unwrap();
            let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1 + i / 6, b"x")).collect();
            s.append(&ents).unwrap();
            image.applied_index = 7;
            s.snapshot_and_compact(&image, 7).unwrap();
            assert_eq!(s.first_index().unwrap(), 8);
            assert_eq!(s.term(7).unwrap(), 2);
            assert!(matches!(
                s.entries(5, 9, None, GetEntriesContext::empty(false)),
                Err(raft::Error::Store(StorageError::Compacted))
            ));
            let snap = s.snapshot(0, 2).unwrap();
            assert_eq!(snap.get_metadata().index, 7);
            assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2]);
            let sent: MetadataImage = serde_json::from_slice(&snap.data).unwrap();
            assert_eq!(sent.cluster_id, "abc");
        }
        let (s, restored) = DiskStorage::open(dir.path(), &[1, 2]).unwrap();
        assert_eq!(restored.cluster_id, "abc");
        assert_eq!(restored.applied_index, 7);
        assert_eq!(s.first_index().unwrap(), 8);
        assert_eq!(s.last_index(), 10);
        assert_eq!(s.term(7).unwrap(), 2);
        let rest = s
            .entries(8, 11, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            rest.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        // The log file holds only what is after the snapshot.
        let path = dir.path().join(ENTRIES_FILE);
        let (records, _) = read_records(&mut File::open(&path).unwrap(), &path).unwrap();
        assert_eq!(records.len(), 3);
    }

    #[test]
    fn corrupt_hard_state_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(HARD_STATE_FILE), b"\x01\x02\x03\x04garbage").unwrap();
        assert!(matches!(
            DiskStorage::open(dir.path(), &[1]),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
