//! Crash-safe small-file replacement: write `name.tmp`, fsync it, rename over `name`, fsync
//! the directory. Control plane only (plain blocking syscalls).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent directory"))?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Bytes of an offset record: magic 4, offset 8, CRC32C 4.
pub const OFFSET_RECORD_BYTES: usize = 16;

/// The on-disk form of a small offset file (a partition's log start, its first dirty offset):
/// a 4-byte magic naming the file's kind, the offset, and a CRC32C of both.
pub fn encode_offset_record(magic: [u8; 4], offset: i64) -> [u8; OFFSET_RECORD_BYTES] {
    let mut b = [0u8; OFFSET_RECORD_BYTES];
    b[..4].copy_from_slice(&magic);
    b[4..12].copy_from_slice(&offset.to_be_bytes());
    let crc = crc32c::crc32c(&b[..12]);
    b[12..].copy_from_slice(&crc.to_be_bytes());
    b
}

/// The offset of a record [`encode_offset_record`] wrote with `magic`; `None` when the bytes
/// are not one (wrong length or magic, bad CRC, negative offset).
pub fn decode_offset_record(magic: [u8; 4], b: &[u8]) -> Option<i64> {
    let b: &[u8; OFFSET_RECORD_BYTES] = b.try_into().ok()?;
    if b[..4] != magic || crc32c::crc32c(&b[..12]).to_be_bytes() != b[12..] {
        return None;
    }
    let offset = i64::from_be_bytes(b[4..12].try_into().ok()?);
    (offset >= 0).then_some(offset)
}

#[cfg(test)]
mod tests {
    #[test]
    fn offset_records_round_trip_and_damage_is_seen() {
        let b = super::encode_offset_record(*b"TEST", 42);
        assert_eq!(super::decode_offset_record(*b"TEST", &b), Some(42));
        assert_eq!(super::decode_offset_record(*b"OTHR", &b), None);
        let mut bad = b;
        bad[5] ^= 1;
        assert_eq!(super::decode_offset_record(*b"TEST", &bad), None);
        assert_eq!(super::decode_offset_record(*b"TEST", &b[..15]), None);
    }

    #[test]
    fn replaces_contents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meta.json");
        super::write_atomically(&p, b"one").unwrap();
        super::write_atomically(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!dir.path().join("meta.tmp").exists());
    }
}
