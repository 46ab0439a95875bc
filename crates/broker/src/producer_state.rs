//! Idempotent producers: producer ids, and per partition the last batches of each producer.
//!
//! Each partition remembers, per producer id, its epoch and the sequence ranges and offsets of
//! its last `BATCHES_PER_PRODUCER` batches. A batch already seen is acknowledged with its
//! original offset and not written again; a sequence gap gets OUT_OF_ORDER_SEQUENCE_NUMBER;
//! an older epoch gets INVALID_PRODUCER_EPOCH. The state lives on the partition's owner shard,
//! is snapshotted at clean shutdown and rebuilt from the active segment after a crash.
//! Producer ids come from shard 0, in blocks persisted under `meta/`.

use crate::errors;
use crate::shard;
use ringbroker_storage::atomic_file::write_atomically;
use ringbroker_storage::PartitionLog;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::Path;

/// Batches remembered per producer and partition (Kafka's max in-flight requests).
pub const BATCHES_PER_PRODUCER: usize = 5;
/// Producer ids reserved (and persisted) at once.
const ID_BLOCK: i64 = 1000;
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const INVALID_PRODUCER_EPOCH: i16 = 47;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SeenBatch {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

#[derive(Debug, Default, Clone)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<SeenBatch>,
}

/// What to do with an idempotent batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Append,
    /// Already stored at this base offset.
    Duplicate(i64),
    Reject(i16),
}

/// The producer state of one partition.
#[derive(Debug, Default)]
pub struct PartitionProducers {
    producers: HashMap<i64, ProducerEntry>,
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

impl PartitionProducers {
    pub fn check(&self, producer_id: i64, epoch: i16, base_seq: i32, count: i32) -> Decision {
        let Some(entry) = self.producers.get(&producer_id) else {
            return Decision::Append;
        };
        if epoch < entry.epoch {
            return Decision::Reject(INVALID_PRODUCER_EPOCH);
        }
        if epoch > entry.epoch {
            return if base_seq == 0 {
                Decision::Append
            } else {
                Decision::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)
            };
        }
        let last_seq = base_seq.wrapping_add(count - 1);
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == base_seq && b.last_seq == last_seq)
        {
            return Decision::Duplicate(b.base_offset);
        }
        match entry.batches.back() {
            Some(last) if base_seq != next_seq(last.last_seq) => {
                Decision::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)
            }
            _ => Decision::Append,
        }
    }

    pub fn record(
        &mut self,
        producer_id: i64,
        epoch: i16,
        base_seq: i32,
        count: i32,
        base_offset: i64,
    ) {
        let entry = self.producers.entry(producer_id).or_default();
        if epoch != entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(SeenBatch {
            first_seq: base_seq,
            last_seq: base_seq.wrapping_add(count - 1),
            base_offset,
        });
        while entry.batches.len() > BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
    }

    fn snapshot(&self) -> String {
        let mut out = String::new();
        for (pid, e) in &self.producers {
            for b in &e.batches {
                out.push_str(&format!(
                    "{pid} {} {} {} {}\n",
                    e.epoch, b.first_seq, b.last_seq, b.base_offset
                ));
            }
        }
        out
    }

    fn restore(text: &str) -> PartitionProducers {
        let mut p = PartitionProducers::default();
        for line in text.lines() {
            let f: Vec<i64> = line.split(' ').filter_map(|x| x.parse().ok()).collect();
            if let [pid, epoch, first, last, base] = f[..] {
                p.record(
                    pid,
                    epoch as i16,
                    first as i32,
                    (last - first + 1) as i32,
                    base,
                );
            }
        }
        p
    }
}

thread_local! {
    static PARTITIONS: RefCell<HashMap<(String, i32), PartitionProducers>> = RefCell::new(HashMap::new());
}

/// Runs `f` with the producer state of a partition owned by this shard.
pub fn with_partition<R>(
    topic: &str,
    partition: i32,
    f: impl FnOnce(&mut PartitionProducers) -> R,
) -> R {
    PARTITIONS.with(|p| {
        f(p.borrow_mut()
            .entry((topic.to_string(), partition))
            .or_default())
    })
}

const SNAPSHOT_FILE: &str = "producer-state.snapshot";

/// Writes every owned partition's producer state next to its log (clean shutdown).
pub fn snapshot_all() {
    let sh = shard::current();
    PARTITIONS.with(|p| {
        for ((topic, partition), state) in p.borrow().iter() {
            if let Some(log) = sh.log(topic, *partition) {
                if let Err(e) = write_atomically(&log.dir().join(SNAPSHOT_FILE), state.snapshot().as_bytes()) {
                    tracing::warn!(dir = %log.dir().display(), error = %e, "could not snapshot producer state");
                }
            }
        }
    });
}

/// Restores a partition's producer state: from its snapshot after a clean shutdown, else by
/// reading the batch headers of its active segment.
pub async fn restore(topic: &str, partition: i32, log: &PartitionLog, clean: bool) {
    let path = log.dir().join(SNAPSHOT_FILE);
    let snapshot = std::fs::read_to_string(&path).ok();
    let _ = std::fs::remove_file(&path);
    let state = match (clean, snapshot) {
        (true, Some(text)) => PartitionProducers::restore(&text),
        _ => rebuild(log).await,
    };
    if !state.producers.is_empty() {
        PARTITIONS.with(|p| p.borrow_mut().insert((topic.to_string(), partition), state));
    }
}

async fn rebuild(log: &PartitionLog) -> PartitionProducers {
    let mut state = PartitionProducers::default();
    let mut offset = log.active_segment_base().max(log.log_start_offset());
    while offset < log.high_watermark() {
        let Ok(r) = log.read(offset, 4 << 20).await else {
            break;
        };
        let mut at = 0;
        while at < r.records.len() {
            let Ok(h) = ringbroker_protocol::batch::BatchHeader::parse(&r.records[at..]) else {
                break;
            };
            if h.producer_id >= 0 {
                state.record(
                    h.producer_id,
                    h.producer_epoch,
                    h.base_sequence,
                    h.records_count,
                    h.base_offset,
                );
            }
            offset = h.base_offset + h.last_offset_delta as i64 + 1;
            at += h.total_bytes;
        }
        if at == 0 {
            break;
        }
    }
    state
}

thread_local! {
    /// Shard 0: the next id to hand out and the end of the persisted block.
    static IDS: RefCell<Option<(i64, i64)>> = const { RefCell::new(None) };
}

/// Hands out a new producer id (on shard 0), persisting a new block when one runs out.
pub fn allocate_producer_id(data_dir: &Path) -> Result<i64, i16> {
    IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        let path = data_dir.join("meta").join("producer-id-block");
        let (next, end) = match *ids {
            Some(v) => v,
            None => {
                // Ids of a block handed out before a restart are never reused.
                let start = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .unwrap_or(0);
                (start, start)
            }
        };
        let (next, end) = if next >= end {
            let new_end = next + ID_BLOCK;
            if let Err(e) = write_atomically(&path, new_end.to_string().as_bytes()) {
                tracing::error!(error = %e, "could not persist the producer id block");
                return Err(errors::KAFKA_STORAGE_ERROR);
            }
            (next, new_end)
        } else {
            (next, end)
        };
        *ids = Some((next + 1, end));
        Ok(next)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_gaps_and_epochs() {
        let mut p = PartitionProducers::default();
        assert_eq!(p.check(7, 0, 0, 10), Decision::Append);
        p.record(7, 0, 0, 10, 100);
        assert_eq!(p.check(7, 0, 0, 10), Decision::Duplicate(100));
        assert_eq!(
            p.check(7, 0, 11, 5),
            Decision::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
        assert_eq!(p.check(7, 0, 10, 5), Decision::Append);
        p.record(7, 0, 10, 5, 110);
        assert_eq!(
            p.check(7, 1, 3, 1),
            Decision::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
        assert_eq!(p.check(7, 1, 0, 1), Decision::Append);
        p.record(7, 1, 0, 1, 120);
        assert_eq!(
            p.check(7, 0, 15, 1),
            Decision::Reject(INVALID_PRODUCER_EPOCH)
        );
        // Only the last five batches are remembered; snapshots round-trip.
        for i in 1..8 {
            p.record(7, 1, i, 1, 120 + i as i64);
        }
        assert_eq!(
            p.check(7, 1, 1, 1),
            Decision::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
        assert_eq!(p.check(7, 1, 7, 1), Decision::Duplicate(127));
        let back = PartitionProducers::restore(&p.snapshot());
        assert_eq!(back.check(7, 1, 7, 1), Decision::Duplicate(127));
        assert_eq!(back.check(7, 1, 8, 1), Decision::Append);
    }

    #[test]
    fn producer_ids_never_repeat_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("meta")).unwrap();
        let first = allocate_producer_id(dir.path()).unwrap();
        let second = allocate_producer_id(dir.path()).unwrap();
        assert_eq!(second, first + 1);
        IDS.with(|i| *i.borrow_mut() = None); // a restart
        let third = allocate_producer_id(dir.path()).unwrap();
        assert!(third > second);
    }
}
