//! The recovery checkpoint of a partition (Kafka's recovery point): the offset below which
//! the log, and the index files of every segment before the one holding it, are known to be
//! on stable storage. After an unclean stop, recovery trusts the bytes below it and scans
//! (CRC) only those after it.
//!
//! File `recovery-point-offset-checkpoint` in the partition directory: two 512-byte slots,
//! written alternately in place and fdatasync'd (one sync per checkpoint, no rename, no
//! directory sync after the first). Each slot carries a sequence number and a CRC32C; the
//! valid slot with the highest sequence wins, so a torn write leaves the previous checkpoint.
//! A stale checkpoint is safe (recovery scans more); one ahead of durable data is not, so a
//! checkpoint is written only after the syncs that make it true.

use bytes::Bytes;
use ringbroker_runtime::op::{self, SharedFd};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const FILE_NAME: &str = "recovery-point-offset-checkpoint";

/// One slot per sector, so a torn sector write cannot damage the other slot.
const SLOT_BYTES: u64 = 512;
const MAGIC: [u8; 4] = *b"RBRP";
/// magic 4, sequence 8, offset 8, segment base 8, position 8, index entries 8, CRC32C 4.
const RECORD_BYTES: usize = 48;

/// What a checkpoint promises: offsets below `offset` are durable; they end at byte
/// `position` of the segment starting at `segment_base`, whose first `index_entries` offset
/// and time index entries are durable too; every earlier segment is wholly durable (log and
/// index files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub offset: i64,
    pub segment_base: i64,
    pub position: u64,
    pub index_entries: u64,
}

impl Checkpoint {
    fn encode(&self, sequence: u64) -> [u8; RECORD_BYTES] {
        let mut b = [0u8; RECORD_BYTES];
        b[..4].copy_from_slice(&MAGIC);
        b[4..12].copy_from_slice(&sequence.to_be_bytes());
        b[12..20].copy_from_slice(&self.offset.to_be_bytes());
        b[20..28].copy_from_slice(&self.segment_base.to_be_bytes());
        b[28..36].copy_from_slice(&self.position.to_be_bytes());
        b[36..44].copy_from_slice(&self.index_entries.to_be_bytes());
        let crc = crc32c::crc32c(&b[..44]);
        b[44..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// `(sequence, checkpoint)` of a slot, `None` unless it is whole and consistent.
    fn decode(b: &[u8]) -> Option<(u64, Checkpoint)> {
        let b = b.get(..RECORD_BYTES)?;
        if b[..4] != MAGIC || crc32c::crc32c(&b[..44]).to_be_bytes() != b[44..48] {
            return None;
        }
        let int = |r: std::ops::Range<usize>| -> Option<[u8; 8]> { b.get(r)?.try_into().ok() };
        let c = Checkpoint {
            offset: i64::from_be_bytes(int(12..20)?),
            segment_base: i64::from_be_bytes(int(20..28)?),
            position: u64::from_be_bytes(int(28..36)?),
            index_entries: u64::from_be_bytes(int(36..44)?),
        };
        let sane = c.segment_base >= 0 && c.offset >= c.segment_base;
        sane.then_some((u64::from_be_bytes(int(4..12)?), c))
    }
}

/// The newest valid checkpoint in `dir` and its sequence number; `None` when there is none
/// (no file, or no valid slot). Start-up: plain blocking reads.
pub fn read(dir: &Path) -> io::Result<Option<(u64, Checkpoint)>> {
    let file = match std::fs::File::open(dir.join(FILE_NAME)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut best: Option<(u64, Checkpoint)> = None;
    for slot in 0..2 {
        let mut b = [0u8; RECORD_BYTES];
        match file.read_exact_at(&mut b, slot * SLOT_BYTES) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => continue,
            Err(e) => return Err(e),
        }
        if let Some((seq, c)) = Checkpoint::decode(&b) {
            if best.is_none_or(|(s, _)| seq > s) {
                best = Some((seq, c));
            }
        }
    }
    Ok(best)
}

/// The checkpoint file of one partition, open for writing.
pub struct CheckpointFile {
    file: SharedFd,
    /// The partition directory, while the new file's entry in it is not known durable.
    dir_to_sync: Option<SharedFd>,
    /// Sequence number of the last checkpoint written (or read at open).
    sequence: u64,
}

impl CheckpointFile {
    /// Opens (creating when missing) the checkpoint file in `dir`; `sequence` is the one
    /// read at open (0 without a file). Control plane: plain blocking `open` calls, once per
    /// partition.
    pub fn open(dir: &Path, sequence: u64) -> io::Result<CheckpointFile> {
        let path = dir.join(FILE_NAME);
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let dir_to_sync = if existed {
            None
        } else {
            Some(std::sync::Arc::new(std::fs::File::open(dir)?.into()))
        };
        Ok(CheckpointFile {
            file: std::sync::Arc::new(file.into()),
            dir_to_sync,
            sequence,
        })
    }

    /// Writes `checkpoint` over the older slot and fdatasyncs it (and, the first time, the
    /// directory holding the new file), through the ring. The caller must have made
    /// everything it promises durable first.
    pub async fn write(&mut self, checkpoint: &Checkpoint) -> io::Result<()> {
        let sequence = self.sequence + 1;
        let bytes = Bytes::copy_from_slice(&checkpoint.encode(sequence));
        op::write_all_at(&self.file, bytes, (sequence % 2) * SLOT_BYTES).await?;
        op::fdatasync(&self.file).await?;
        if let Some(dir) = &self.dir_to_sync {
            op::fdatasync(dir).await?;
            self.dir_to_sync = None;
        }
        self.sequence = sequence;
        Ok(())
    }

    /// [`CheckpointFile::write`] with plain blocking calls, for a control-plane step that
    /// must not await (a truncation moving the recovery point back, `log/replica.rs`).
    pub fn write_blocking(&mut self, checkpoint: &Checkpoint) -> io::Result<()> {
        let sequence = self.sequence + 1;
        let file = std::fs::File::from(self.file.try_clone()?);
        file.write_all_at(&checkpoint.encode(sequence), (sequence % 2) * SLOT_BYTES)?;
        file.sync_data()?;
        if let Some(dir) = &self.dir_to_sync {
            std::fs::File::from(dir.try_clone()?).sync_all()?;
            self.dir_to_sync = None;
        }
        self.sequence = sequence;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64) -> Checkpoint {
        Checkpoint {
            offset,
            segment_base: offset / 2,
            position: offset as u64 * 3,
            index_entries: 7,
        }
    }

    #[test]
    fn the_newest_whole_slot_wins_and_a_torn_one_leaves_the_previous() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let d = dir.path().to_path_buf();
        ringbroker_runtime::block_on(async move {
            let mut f = CheckpointFile::open(&d, 0).unwrap();
            for offset in [10, 20, 30] {
                f.write(&at(offset)).await.unwrap();
                assert_eq!(read(&d).unwrap(), Some((f.sequence, at(offset))));
            }
        })
        .unwrap();
        // Sequence 3 (offset 30) sits in slot 1; damage it: slot 0 (offset 20) is used.
        let path = dir.path().join(FILE_NAME);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xFF], SLOT_BYTES + 30).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some((2, at(20))));
        // Reopened with the sequence read back, the next write goes over the damaged slot.
        let d = dir.path().to_path_buf();
        ringbroker_runtime::block_on(async move {
            let mut f = CheckpointFile::open(&d, 2).unwrap();
            f.write(&at(40)).await.unwrap();
            assert_eq!(read(&d).unwrap(), Some((3, at(40))));
        })
        .unwrap();
        std::fs::write(&path, [0u8; 3]).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
    }
}
