//! Partition logs: append-only, segmented, with the bytes of each record batch stored exactly
//! as they arrived (Kafka's RecordBatch v2), so reads hand out file bytes unchanged.
//!
//! - [`frame`]: the little of the batch format storage must know to scan and recover a log
//!   (length, offset delta, CRC). Full produce-side validation lives in `protocol`.
//! - [`index`]: the sparse offset index (relative offset, position), in memory and on disk.
//! - [`segment`]: one `.log` file plus its `.index`, named by base offset.
//! - [`log`]: `PartitionLog`: offset assignment, ordered appends through the ring, the high
//!   watermark, group-commit fdatasync, reads by offset, recovery at open; the durable log
//!   start offset DeleteRecords moves (`log/log_start.rs`), batch lookups by timestamp
//!   (`log/timestamps.rs`), log compaction (`log/clean.rs`), leader epochs
//!   (`log/epochs.rs`) and what a replica needs: replicated appends, truncation, reads below
//!   the replicated high watermark (`log/replica.rs`).
//! - [`recovery`]: rebuilding segments at open (trusted, from the recovery point, or scanned).
//! - [`checkpoint`]: the per-partition recovery checkpoint (Kafka's recovery point).
//! - [`atomic_file`]: write-new + fsync + rename, for metadata.
//!
//! A `PartitionLog` lives on the shard that owns its partition (`!Send`).

pub mod atomic_file;
pub mod checkpoint;
pub mod frame;
pub mod index;
pub mod log;
pub mod recovery;
pub mod segment;

pub use checkpoint::Checkpoint;
pub use log::{
    AppendError, CleanConfig, CleanStats, CleanableState, DeleteRecordsError, LogConfig,
    PartitionLog, ReadError, ReadResult, Recovery, SliceResult, HIGH_WATERMARK, SEGMENT_BYTES_MAX,
    UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET,
};
pub use recovery::{RecoveryReport, RecoveryTotals};
