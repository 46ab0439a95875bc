//! Idempotent producers: producer ids, and per partition the batches of each producer.
//!
//! Each partition remembers, per producer id, its epoch, the sequence ranges and offsets of its
//! last `BATCHES_PER_PRODUCER` written batches, and the batches being written. A Produce checks
//! its batch and reserves its sequences in one step before the append's first await, so the
//! next pipelined batch of the producer is accepted at once; the reservation becomes a written
//! batch with its offset, or is released if the append fails (a guard, so dropping the append
//! releases it too). A batch already written is acknowledged with its original offset; a retry
//! of one still being written waits for the original's outcome; a sequence gap is out of order;
//! an older epoch is fenced. At start-up the state is restored from the snapshot of a clean
//! shutdown plus the batches written after it, or after a crash from the active segment; until
//! then idempotent batches of that partition wait. Producer ids come from shard 0, in blocks
//! persisted under `meta/`.

use crate::errors;
use crate::shard;
use ringbroker_protocol::batch::BatchHeader;
use ringbroker_runtime::notify::Notify;
use ringbroker_storage::atomic_file::write_atomically;
use ringbroker_storage::PartitionLog;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::rc::Rc;

/// Written batches remembered per producer and partition (Kafka's max in-flight requests).
pub const BATCHES_PER_PRODUCER: usize = 5;
/// Idempotent producers whose state one partition keeps; each costs about 300 bytes. A client
/// can make new producer ids at will (InitProducerId), so the count a partition keeps must
/// be bounded.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;
/// Producer ids reserved (and persisted) at once.
const ID_BLOCK: i64 = 1000;

/// Why an idempotent batch is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("sequence does not follow the producer's last batch")]
    OutOfOrder,
    #[error("producer epoch is older than the partition's")]
    StaleEpoch,
}

/// The producer fields of one batch's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
    /// The batch's max timestamp (-1 when not known), kept for DescribeProducers as Kafka's
    /// `ProducerStateEntry` keeps it, so describing a producer never reads the log.
    pub max_timestamp: i64,
}

impl ProducerBatch {
    /// `None` for a batch without a producer id (not idempotent).
    pub fn of(header: &BatchHeader) -> Option<ProducerBatch> {
        (header.producer_id >= 0).then(|| ProducerBatch {
            max_timestamp: header.max_timestamp,
            ..ProducerBatch::new(
                header.producer_id,
                header.producer_epoch,
                header.base_sequence,
                header.records_count,
            )
        })
    }

    pub fn new(producer_id: i64, epoch: i16, first_seq: i32, count: i32) -> ProducerBatch {
        debug_assert!(count > 0);
        ProducerBatch {
            producer_id,
            epoch,
            first_seq,
            last_seq: first_seq.wrapping_add(count - 1),
            max_timestamp: -1,
        }
    }

    fn same_range(&self, b: &Batch) -> bool {
        b.first_seq == self.first_seq && b.last_seq == self.last_seq
    }
}

/// How the append of a reserved batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Written at this base offset.
    Written(i64),
    /// Not written (the append failed or was dropped); the client retries.
    Failed,
}

/// One reservation's append, shared with the retries waiting for it.
#[derive(Default)]
struct Attempt {
    outcome: Cell<Option<Settled>>,
    settled: Notify,
}

#[derive(Clone)]
enum BatchState {
    Written(i64),
    Writing(Rc<Attempt>),
}

#[derive(Clone)]
struct Batch {
    first_seq: i32,
    last_seq: i32,
    max_timestamp: i64,
    state: BatchState,
}

impl Batch {
    fn is_written(&self) -> bool {
        matches!(self.state, BatchState::Written(_))
    }

    fn is_attempt(&self, attempt: &Rc<Attempt>) -> bool {
        matches!(&self.state, BatchState::Writing(a) if Rc::ptr_eq(a, attempt))
    }
}

#[derive(Default)]
struct ProducerEntry {
    epoch: i16,
    /// In sequence order: the last written batches (at most `BATCHES_PER_PRODUCER`) and the
    /// batches being written.
    batches: VecDeque<Batch>,
    /// The first sequence of the producer's next new batch (`None`: not known, any is taken).
    next_seq: Option<i32>,
}

impl ProducerEntry {
    fn reset(&mut self, epoch: i16) {
        self.epoch = epoch;
        self.batches.clear();
        self.next_seq = None;
    }

    fn push(&mut self, batch: Batch) {
        self.next_seq = Some(next_seq(batch.last_seq));
        self.batches.push_back(batch);
        self.trim();
    }

    /// Forgets the oldest written batches beyond `BATCHES_PER_PRODUCER`.
    fn trim(&mut self) {
        while self.batches.iter().filter(|b| b.is_written()).count() > BATCHES_PER_PRODUCER {
            let oldest = self
                .batches
                .iter()
                .position(Batch::is_written)
                .expect("counted above");
            self.batches.remove(oldest);
        }
    }
}

/// What to do with an idempotent batch (see [`PartitionProducers::check`]).
enum Decision {
    Append,
    /// Already written at this base offset.
    Duplicate(i64),
    /// The same batch is being written: its outcome answers this one.
    InFlight(InFlight),
    Reject(SequenceError),
}

/// The producer state of one partition.
#[derive(Default)]
struct PartitionProducers {
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
    fn check(&self, b: ProducerBatch) -> Decision {
        let Some(entry) = self.producers.get(&b.producer_id) else {
            return Decision::Append;
        };
        if b.epoch < entry.epoch {
            return Decision::Reject(SequenceError::StaleEpoch);
        }
        if b.epoch > entry.epoch {
            return if b.first_seq == 0 {
                Decision::Append
            } else {
                Decision::Reject(SequenceError::OutOfOrder)
            };
        }
        if let Some(seen) = entry.batches.iter().find(|x| b.same_range(x)) {
            return match &seen.state {
                BatchState::Written(base) => Decision::Duplicate(*base),
                BatchState::Writing(a) => Decision::InFlight(InFlight(a.clone())),
            };
        }
        match entry.next_seq {
            Some(next) if b.first_seq != next => Decision::Reject(SequenceError::OutOfOrder),
            _ => Decision::Append,
        }
    }

    /// Marks a batch `check` accepted as being written.
    fn reserve(&mut self, b: ProducerBatch, attempt: Rc<Attempt>) {
        let entry = self.entry(b);
        entry.push(Batch {
            first_seq: b.first_seq,
            last_seq: b.last_seq,
            max_timestamp: b.max_timestamp,
            state: BatchState::Writing(attempt),
        });
    }

    /// Records a batch known to be written (start-up: snapshot, then log scan in offset
    /// order); a batch at or before the producer's last known one is already accounted for.
    fn record(&mut self, b: ProducerBatch, base_offset: i64) {
        if self
            .producers
            .get(&b.producer_id)
            .is_some_and(|e| b.epoch < e.epoch)
        {
            return;
        }
        let entry = self.entry(b);
        let last_known = entry.batches.iter().rev().find_map(|x| match x.state {
            BatchState::Written(base) => Some(base),
            BatchState::Writing(_) => None,
        });
        if last_known.is_some_and(|last| base_offset <= last) {
            return;
        }
        entry.push(Batch {
            first_seq: b.first_seq,
            last_seq: b.last_seq,
            max_timestamp: b.max_timestamp,
            state: BatchState::Written(base_offset),
        });
    }

    /// The producer's entry, reset when the batch starts a new epoch. A new producer beyond
    /// [`PRODUCERS_PER_PARTITION_MAX`] takes the place of the one whose last written batch is
    /// oldest (Kafka expires idle producers by age instead): that producer's next batch is
    /// taken at any sequence, as a new producer's is.
    fn entry(&mut self, b: ProducerBatch) -> &mut ProducerEntry {
        if self.producers.len() >= PRODUCERS_PER_PARTITION_MAX
            && !self.producers.contains_key(&b.producer_id)
        {
            self.evict_least_recent();
        }
        let entry = self
            .producers
            .entry(b.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: b.epoch,
                ..ProducerEntry::default()
            });
        if b.epoch != entry.epoch {
            entry.reset(b.epoch);
        }
        entry
    }

    /// Forgets the producer whose newest written batch is the oldest; producers with a batch
    /// being written stay (their reservations must settle).
    fn evict_least_recent(&mut self) {
        let newest_written = |e: &ProducerEntry| {
            e.batches.iter().rev().find_map(|x| match x.state {
                BatchState::Written(base) => Some(base),
                BatchState::Writing(_) => None,
            })
        };
        let victim = self
            .producers
            .iter()
            .filter(|(_, e)| e.batches.iter().all(Batch::is_written))
            .min_by_key(|(_, e)| newest_written(e).unwrap_or(i64::MIN))
            .map(|(pid, _)| *pid);
        if let Some(pid) = victim {
            self.producers.remove(&pid);
        }
    }

    /// Ends a reservation. A written batch keeps its offset for duplicates. A failed one is
    /// released together with the batches reserved after it (they counted on it, and the log
    /// fails every append after a failed one): the producer's retry of it is the next batch
    /// accepted, and its later batches follow in order.
    fn settle(&mut self, b: ProducerBatch, attempt: &Rc<Attempt>, outcome: Settled) {
        let Some(entry) = self.producers.get_mut(&b.producer_id) else {
            return;
        };
        if entry.epoch != b.epoch {
            return; // a new epoch started meanwhile and forgot this batch
        }
        let Some(at) = entry.batches.iter().position(|x| x.is_attempt(attempt)) else {
            return; // released by the failure of an earlier batch
        };
        match outcome {
            Settled::Written(base) => {
                entry.batches[at].state = BatchState::Written(base);
                entry.trim();
            }
            Settled::Failed => {
                let mut i = 0;
                entry.batches.retain(|x| {
                    let keep = i < at || (i > at && x.is_written());
                    i += 1;
                    keep
                });
                // Normally `at` is now the end; a batch written after a failed one (which the
                // log does not do) keeps its place so the state matches the log.
                entry.next_seq = match entry.batches.get(at) {
                    Some(_) => entry.batches.back().map(|x| next_seq(x.last_seq)),
                    None => Some(b.first_seq),
                };
            }
        }
    }

    /// The written batches, after a first line `scan <offset>`: where a restore must read the
    /// log on from (batches may be appended after the snapshot), the log end when no batch is
    /// being written, else the active segment's base (a batch being written may already be
    /// below the log end).
    fn snapshot(&self, log_end: i64, active_segment_base: i64) -> String {
        let writing = self
            .producers
            .values()
            .any(|e| e.batches.iter().any(|b| !b.is_written()));
        let scan_from = if writing {
            active_segment_base
        } else {
            log_end
        };
        let mut out = format!("{SCAN_FROM} {scan_from}\n");
        for (pid, e) in &self.producers {
            for b in &e.batches {
                if let BatchState::Written(base) = b.state {
                    out.push_str(&format!(
                        "{pid} {} {} {} {base} {}\n",
                        e.epoch, b.first_seq, b.last_seq, b.max_timestamp
                    ));
                }
            }
        }
        out
    }

    /// The state in a snapshot, and the offset to read the log on from.
    fn restore(text: &str) -> (PartitionProducers, Option<i64>) {
        let mut p = PartitionProducers::default();
        let scan_from = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix(SCAN_FROM))
            .and_then(|x| x.trim().parse().ok());
        for line in text.lines() {
            let f: Vec<i64> = line.split(' ').filter_map(|x| x.parse().ok()).collect();
            // Snapshots written before timestamps were kept have five fields: -1.
            let (pid, epoch, first, last, base, max_timestamp) = match f[..] {
                [pid, epoch, first, last, base] => (pid, epoch, first, last, base, -1),
                [pid, epoch, first, last, base, ts] => (pid, epoch, first, last, base, ts),
                _ => continue,
            };
            let batch = ProducerBatch {
                producer_id: pid,
                epoch: epoch as i16,
                first_seq: first as i32,
                last_seq: last as i32,
                max_timestamp,
            };
            p.record(batch, base);
        }
        (p, scan_from)
    }
}

/// A partition's producer state, shared by the Produce requests on its owner shard.
#[derive(Default, Clone)]
pub struct Producers {
    state: Rc<RefCell<PartitionProducers>>,
    restore: Rc<PendingRestore>,
}

/// Set while a partition opened at start-up waits for its state (snapshot and log scan, which
/// awaits reads): its idempotent batches wait too, or they would be checked against nothing.
#[derive(Default)]
struct PendingRestore {
    pending: Cell<bool>,
    done: Notify,
}

/// The answer to an idempotent batch, decided before the append's first await.
pub enum Check {
    /// New and in order: append it, then settle the reservation.
    Reserved(Reservation),
    /// Already written at this base offset.
    Duplicate(i64),
    /// A retry of a batch being written: wait for the original's outcome.
    InFlight(InFlight),
    Rejected(SequenceError),
}

impl Producers {
    /// The state of a partition opened at start-up, until [`restore`] fills it.
    pub fn awaiting_restore() -> Producers {
        let producers = Producers::default();
        producers.restore.pending.set(true);
        producers
    }

    /// Returns once the state is restored (at once for a partition created while running).
    pub async fn restored(&self) {
        loop {
            let done = self.restore.done.notified();
            if !self.restore.pending.get() {
                return;
            }
            done.await;
        }
    }

    /// Checks a batch and, when it is new and in order, reserves its sequences.
    pub fn check_and_reserve(&self, b: ProducerBatch) -> Check {
        let mut state = self.state.borrow_mut();
        match state.check(b) {
            Decision::Duplicate(base) => Check::Duplicate(base),
            Decision::InFlight(original) => Check::InFlight(original),
            Decision::Reject(e) => Check::Rejected(e),
            Decision::Append => {
                let attempt = Rc::new(Attempt::default());
                state.reserve(b, attempt.clone());
                Check::Reserved(Reservation {
                    producers: self.clone(),
                    batch: b,
                    attempt,
                })
            }
        }
    }

    /// Records the idempotent batches of `records` (whole batches a follower appended from its
    /// leader), so that, should it lead the partition later, their retries are duplicates.
    pub fn record_replicated(&self, records: &[u8]) {
        let mut state = self.state.borrow_mut();
        let mut at = 0;
        while at < records.len() {
            let Ok(h) = BatchHeader::parse(&records[at..]) else {
                break;
            };
            if let Some(b) = ProducerBatch::of(&h).filter(|_| h.records_count > 0) {
                state.record(b, h.base_offset);
            }
            at += h.total_bytes;
        }
    }

    fn replace(&self, state: PartitionProducers) {
        *self.state.borrow_mut() = state;
        self.restore.pending.set(false);
        self.restore.done.notify_all();
    }

    fn snapshot(&self, log: &PartitionLog) -> String {
        self.state
            .borrow()
            .snapshot(log.high_watermark(), log.active_segment_base())
    }
}

/// Sequences reserved for a batch being appended. Settle it with [`Reservation::written`];
/// dropped unsettled (append failed, or the future dropped) it is released as failed.
pub struct Reservation {
    producers: Producers,
    batch: ProducerBatch,
    attempt: Rc<Attempt>,
}

impl Reservation {
    pub fn written(self, base_offset: i64) {
        self.settle(Settled::Written(base_offset));
    }

    fn settle(&self, outcome: Settled) {
        if self.attempt.outcome.get().is_some() {
            return;
        }
        self.attempt.outcome.set(Some(outcome));
        // Never borrowed here: the state holds no reservation, so none is dropped under a borrow.
        match self.producers.state.try_borrow_mut() {
            Ok(mut state) => state.settle(self.batch, &self.attempt, outcome),
            Err(_) => debug_assert!(false, "producer state borrowed while settling"),
        }
        self.attempt.settled.notify_all();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.settle(Settled::Failed);
    }
}

/// The append of the original of a retried batch.
pub struct InFlight(Rc<Attempt>);

impl InFlight {
    /// Waits until the original's append ends.
    pub async fn outcome(&self) -> Settled {
        loop {
            let settled = self.0.settled.notified();
            if let Some(outcome) = self.settled() {
                return outcome;
            }
            settled.await;
        }
    }

    /// How the original's append ended, if it has.
    pub fn settled(&self) -> Option<Settled> {
        self.0.outcome.get()
    }
}

const SNAPSHOT_FILE: &str = "producer-state.snapshot";
/// First line of a snapshot: the offset a restore reads the log on from.
const SCAN_FROM: &str = "scan";

/// Writes every owned partition's producer state next to its log (clean shutdown).
pub fn snapshot_all() {
    for partition in shard::current().owned() {
        if partition.producers.restore.pending.get() {
            continue; // stopped before its restore: the log scan after a start rebuilds it
        }
        let path = partition.log.dir().join(SNAPSHOT_FILE);
        let snapshot = partition.producers.snapshot(&partition.log);
        if let Err(e) = write_atomically(&path, snapshot.as_bytes()) {
            tracing::warn!(dir = %partition.log.dir().display(), error = %e, "could not snapshot producer state");
        }
    }
}

/// Restores a partition's producer state: from its snapshot after a clean shutdown, else by
/// reading the batch headers of its active segment.
pub async fn restore(topic: &str, partition: i32, log: &PartitionLog, clean: bool) {
    let path = log.dir().join(SNAPSHOT_FILE);
    let snapshot = std::fs::read_to_string(&path).ok();
    let _ = std::fs::remove_file(&path);
    let (mut state, scan_from) = match (clean, snapshot) {
        (true, Some(text)) => PartitionProducers::restore(&text),
        _ => (PartitionProducers::default(), None),
    };
    // Without a snapshot: the active segment's batches.
    let scan_from = scan_from.unwrap_or_else(|| log.active_segment_base());
    scan(&mut state, log, scan_from).await;
    if let Some(p) = shard::current().partition_named(topic, partition) {
        p.producers.replace(state);
    }
}

/// Records the idempotent batches of the log from `from` on.
async fn scan(state: &mut PartitionProducers, log: &PartitionLog, from: i64) {
    let mut offset = from.max(log.log_start_offset());
    while offset < log.high_watermark() {
        let Ok(r) = log.read(offset, 4 << 20).await else {
            break;
        };
        let mut at = 0;
        while at < r.records.len() {
            let Ok(h) = BatchHeader::parse(&r.records[at..]) else {
                break;
            };
            if let Some(b) = ProducerBatch::of(&h).filter(|_| h.records_count > 0) {
                state.record(b, h.base_offset);
            }
            offset = h.base_offset + h.last_offset_delta as i64 + 1;
            at += h.total_bytes;
        }
        if at == 0 {
            break;
        }
    }
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

    const PID: i64 = 7;

    fn batch(epoch: i16, first_seq: i32, count: i32) -> ProducerBatch {
        ProducerBatch::new(PID, epoch, first_seq, count)
    }

    fn reserve(p: &Producers, b: ProducerBatch) -> Reservation {
        match p.check_and_reserve(b) {
            Check::Reserved(r) => r,
            other => panic!("{b:?} not reserved: {}", describe(&other)),
        }
    }

    fn describe(c: &Check) -> String {
        match c {
            Check::Reserved(_) => "reserved".into(),
            Check::Duplicate(base) => format!("duplicate of {base}"),
            Check::InFlight(_) => "in flight".into(),
            Check::Rejected(e) => format!("rejected: {e}"),
        }
    }

    fn answer(p: &Producers, b: ProducerBatch) -> String {
        describe(&p.check_and_reserve(b))
    }

    #[test]
    fn last_timestamps_are_kept_and_answers_stop_at_their_bound() {
        let p = Producers::default();
        let stamped = |pid: i64, seq: i32, ts: i64| ProducerBatch {
            max_timestamp: ts,
            ..ProducerBatch::new(pid, 0, seq, 1)
        };
        reserve(&p, stamped(7, 0, 1000)).written(10);
        reserve(&p, stamped(7, 1, 2000)).written(11);
        reserve(&p, stamped(8, 0, 3000)).written(12);
        // Being written: not active yet.
        let _writing = reserve(&p, stamped(9, 0, 4000));
        let last = |a: &[ActiveProducer]| -> Vec<(i64, i64, i64)> {
            a.iter()
                .map(|a| (a.producer_id, a.last_batch_offset, a.last_timestamp))
                .collect()
        };
        let all = p.active_at_most(2).expect("two active");
        assert_eq!(last(&all), vec![(7, 11, 2000), (8, 12, 3000)]);
        assert_eq!(p.active_at_most(1), None);
        // Through a snapshot and its restore, and from a snapshot without timestamps: -1.
        let text = p.state.borrow().snapshot(13, 0);
        let (restored, _) = PartitionProducers::restore(&text);
        let q = Producers::default();
        q.replace(restored);
        assert_eq!(last(&q.active_at_most(10).unwrap()), last(&all));
        let (old, _) = PartitionProducers::restore("scan 13\n7 0 1 1 11\n");
        q.replace(old);
        assert_eq!(last(&q.active_at_most(10).unwrap()), vec![(7, 11, -1)]);
    }

    #[test]
    fn duplicates_gaps_and_epochs() {
        let p = Producers::default();
        reserve(&p, batch(0, 0, 10)).written(100);
        assert_eq!(answer(&p, batch(0, 0, 10)), "duplicate of 100");
        assert_eq!(
            answer(&p, batch(0, 11, 5)),
            "rejected: sequence does not follow the producer's last batch"
        );
        reserve(&p, batch(0, 10, 5)).written(110);
        assert_eq!(
            answer(&p, batch(1, 3, 1)),
            "rejected: sequence does not follow the producer's last batch"
        );
        reserve(&p, batch(1, 0, 1)).written(120);
        assert_eq!(
            answer(&p, batch(0, 15, 1)),
            "rejected: producer epoch is older than the partition's"
        );
        // Only the last five written batches are remembered; snapshots round-trip.
        for i in 1..8 {
            reserve(&p, batch(1, i, 1)).written(120 + i as i64);
        }
        assert!(answer(&p, batch(1, 1, 1)).starts_with("rejected"));
        assert_eq!(answer(&p, batch(1, 7, 1)), "duplicate of 127");
        let back = Producers::default();
        let (state, scan_from) = PartitionProducers::restore(&p.state.borrow().snapshot(130, 100));
        assert_eq!(scan_from, Some(130), "nothing being written: the log end");
        back.replace(state);
        assert_eq!(answer(&back, batch(1, 7, 1)), "duplicate of 127");
        assert_eq!(answer(&back, batch(1, 3, 1)), "duplicate of 123");
        assert_eq!(answer(&back, batch(1, 8, 1)), "reserved");
    }

    #[test]
    fn pipelined_batches_are_accepted_while_earlier_ones_are_written() {
        let p = Producers::default();
        let first = reserve(&p, batch(0, 0, 5));
        let second = reserve(&p, batch(0, 5, 5));
        let third = reserve(&p, batch(0, 10, 5));
        assert!(
            answer(&p, batch(0, 16, 1)).starts_with("rejected"),
            "a gap after the reserved ones"
        );
        // Appends may finish in any order; each keeps its own offset.
        second.written(5);
        third.written(10);
        first.written(0);
        assert_eq!(answer(&p, batch(0, 0, 5)), "duplicate of 0");
        assert_eq!(answer(&p, batch(0, 5, 5)), "duplicate of 5");
        assert_eq!(answer(&p, batch(0, 10, 5)), "duplicate of 10");
        assert_eq!(answer(&p, batch(0, 15, 5)), "reserved");
        // Written batches are snapshotted, batches still being written are not.
        let writing = reserve(&p, batch(0, 15, 5));
        let snapshot = p.state.borrow().snapshot(15, 10);
        assert_eq!(snapshot.lines().count(), 4);
        assert_eq!(
            PartitionProducers::restore(&snapshot).1,
            Some(10),
            "a batch being written may be below the log end: read the active segment"
        );
        drop(writing);
    }

    #[test]
    fn a_retry_of_a_batch_being_written_gets_the_first_copys_outcome() {
        let p = Producers::default();
        let original = reserve(&p, batch(0, 0, 5));
        let Check::InFlight(retry) = p.check_and_reserve(batch(0, 0, 5)) else {
            panic!("a retry of a batch being written must wait for it");
        };
        assert_eq!(retry.settled(), None);
        original.written(42);
        assert_eq!(retry.settled(), Some(Settled::Written(42)));
        assert_eq!(answer(&p, batch(0, 0, 5)), "duplicate of 42");

        // A failed first copy fails its waiting retries; the client's next retry is accepted.
        let original = reserve(&p, batch(0, 5, 5));
        let Check::InFlight(retry) = p.check_and_reserve(batch(0, 5, 5)) else {
            panic!("a retry of a batch being written must wait for it");
        };
        drop(original);
        assert_eq!(retry.settled(), Some(Settled::Failed));
        assert_eq!(answer(&p, batch(0, 5, 5)), "reserved");
    }

    #[test]
    fn a_failed_batch_releases_itself_and_the_batches_reserved_after_it() {
        let p = Producers::default();
        reserve(&p, batch(0, 0, 1)).written(0);
        let a = reserve(&p, batch(0, 1, 1));
        let b = reserve(&p, batch(0, 2, 1));
        let c = reserve(&p, batch(0, 3, 1));
        drop(b); // its append failed: so will c's (the log fails every append after a failed one)
        assert!(
            answer(&p, batch(0, 3, 1)).starts_with("rejected"),
            "c must follow b's retry"
        );
        assert!(answer(&p, batch(0, 4, 1)).starts_with("rejected"));
        let b_again = reserve(&p, batch(0, 2, 1));
        drop(c); // c's failure arrives after b's retry was accepted: it changes nothing
        let c_again = reserve(&p, batch(0, 3, 1));
        a.written(1);
        b_again.written(2);
        c_again.written(3);
        for seq in 0..4 {
            assert_eq!(answer(&p, batch(0, seq, 1)), format!("duplicate of {seq}"));
        }
        assert_eq!(answer(&p, batch(0, 4, 1)), "reserved");
    }

    #[test]
    fn producers_beyond_the_limit_replace_the_least_recent_and_never_one_being_written() {
        let p = Producers::default();
        let b = |pid: i64, seq: i32| ProducerBatch::new(pid, 0, seq, 1);
        // Producer 0 has a batch being written; the others have written one each, producer
        // 1 longest ago.
        let writing = match p.check_and_reserve(b(0, 0)) {
            Check::Reserved(r) => r,
            other => panic!("not reserved: {}", describe(&other)),
        };
        for pid in 1..PRODUCERS_PER_PARTITION_MAX as i64 {
            match p.check_and_reserve(b(pid, 0)) {
                Check::Reserved(r) => r.written(pid),
                other => panic!("not reserved: {}", describe(&other)),
            }
        }
        let kept = || p.state.borrow().producers.len();
        assert_eq!(kept(), PRODUCERS_PER_PARTITION_MAX);
        let newcomer = PRODUCERS_PER_PARTITION_MAX as i64;
        match p.check_and_reserve(b(newcomer, 0)) {
            Check::Reserved(r) => r.written(newcomer),
            other => panic!("not reserved: {}", describe(&other)),
        }
        assert_eq!(kept(), PRODUCERS_PER_PARTITION_MAX);
        let known = |pid: i64| p.state.borrow().producers.contains_key(&pid);
        assert!(!known(1), "the least recent producer made room");
        assert!(known(0), "a producer with a batch being written is kept");
        assert!(known(2) && known(newcomer));
        // Its reservation still settles, and its duplicate is still recognised.
        writing.written(99_999);
        assert_eq!(answer(&p, b(0, 0)), "duplicate of 99999");
    }

    #[test]
    fn a_scan_over_a_snapshot_records_only_later_batches() {
        let mut state = PartitionProducers::default();
        state.record(batch(1, 0, 2), 10);
        state.record(batch(1, 2, 2), 12);
        // The scan reads again from before the snapshot's last batch.
        state.record(batch(0, 40, 1), 5);
        state.record(batch(1, 2, 2), 12);
        state.record(batch(1, 4, 1), 14);
        let p = Producers::default();
        p.replace(state);
        assert_eq!(answer(&p, batch(1, 0, 2)), "duplicate of 10");
        assert_eq!(answer(&p, batch(1, 2, 2)), "duplicate of 12");
        assert_eq!(answer(&p, batch(1, 4, 1)), "duplicate of 14");
        assert_eq!(answer(&p, batch(1, 5, 1)), "reserved");
    }

    #[test]
    fn a_new_epoch_forgets_the_batches_of_the_old_one() {
        let p = Producers::default();
        let old = reserve(&p, batch(0, 0, 3));
        reserve(&p, batch(1, 0, 2)).written(10);
        old.written(0); // the old epoch's append ends after the bump
        assert_eq!(answer(&p, batch(1, 0, 2)), "duplicate of 10");
        assert_eq!(answer(&p, batch(1, 2, 1)), "reserved");
        assert!(answer(&p, batch(0, 0, 3)).starts_with("rejected: producer epoch"));
    }

    /// A simulated partition: the log's failure rule (a failed append fails every append in
    /// flight after it, and the log refuses appends until those have ended) and a client that
    /// pipelines new batches and retries any batch it has sent, at any time.
    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        pub enum Op {
            /// The client sends its next batch (1..=3 records).
            Send(i32),
            /// The client sends again one of the batches it has sent.
            Retry(usize),
            /// The oldest append in flight is written.
            Write,
            /// The append in flight at this index fails, dooming those after it.
            Fail(usize),
            /// A doomed append ends (its failure reaches its Produce).
            EndDoomed(usize),
        }

        pub fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (1..=3i32).prop_map(Op::Send),
                3 => any::<usize>().prop_map(Op::Retry),
                4 => Just(Op::Write),
                1 => any::<usize>().prop_map(Op::Fail),
                2 => any::<usize>().prop_map(Op::EndDoomed),
            ]
        }

        struct Append {
            batch: ProducerBatch,
            reservation: Reservation,
            doomed: bool,
        }

        #[derive(Default)]
        pub struct Sim {
            producers: Producers,
            sent: Vec<ProducerBatch>,
            /// Written batches; a batch's offset is its index.
            log: Vec<ProducerBatch>,
            in_flight: VecDeque<Append>,
            waiting: Vec<(ProducerBatch, InFlight)>,
        }

        impl Sim {
            fn refusing(&self) -> bool {
                self.in_flight.iter().any(|a| a.doomed)
            }

            fn is_live(&self, b: &ProducerBatch) -> bool {
                self.log.contains(b) || self.in_flight.iter().any(|a| a.batch == *b)
            }

            fn submit(&mut self, b: ProducerBatch) -> Result<(), TestCaseError> {
                let position = self.sent.iter().position(|x| *x == b).expect("sent");
                let follows_live = self.sent[..position].iter().all(|x| self.is_live(x));
                let live = self.is_live(&b);
                let recent = self.log.len().saturating_sub(BATCHES_PER_PRODUCER);
                match self.producers.check_and_reserve(b) {
                    Check::Reserved(reservation) => {
                        prop_assert!(!live, "{b:?} reserved while written or in flight");
                        prop_assert!(follows_live, "{b:?} reserved after a batch not written");
                        if self.refusing() {
                            drop(reservation); // the log fails it before its first await
                        } else {
                            self.in_flight.push_back(Append {
                                batch: b,
                                reservation,
                                doomed: false,
                            });
                        }
                    }
                    Check::Duplicate(base) => {
                        prop_assert_eq!(self.log.get(base as usize), Some(&b));
                    }
                    Check::InFlight(original) => {
                        prop_assert!(self.in_flight.iter().any(|a| a.batch == b));
                        self.waiting.push((b, original));
                    }
                    Check::Rejected(e) => {
                        prop_assert_eq!(e, SequenceError::OutOfOrder);
                        // Pipelining: with no failure pending, the next batch is always taken,
                        // and a recent written one is always a duplicate.
                        let pending_failure = self.refusing();
                        prop_assert!(
                            pending_failure || live || !follows_live,
                            "{b:?} refused though it follows the batches written or in flight"
                        );
                        let recent_copy = self.log[recent..].contains(&b);
                        prop_assert!(!recent_copy, "{b:?} is a recent duplicate");
                    }
                }
                Ok(())
            }

            pub fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
                match op {
                    Op::Send(count) => {
                        let first = self.sent.last().map_or(0, |b| b.last_seq + 1);
                        let b = ProducerBatch::new(PID, 0, first, count);
                        self.sent.push(b);
                        self.submit(b)?;
                    }
                    Op::Retry(i) if !self.sent.is_empty() => {
                        let b = self.sent[i % self.sent.len()];
                        self.submit(b)?;
                    }
                    Op::Write if self.in_flight.front().is_some_and(|a| !a.doomed) => {
                        let a = self.in_flight.pop_front().expect("front");
                        self.log.push(a.batch);
                        a.reservation.written(self.log.len() as i64 - 1);
                    }
                    Op::Fail(i) if !self.in_flight.is_empty() => {
                        let i = i % self.in_flight.len();
                        for a in self.in_flight.iter_mut().skip(i) {
                            a.doomed = true;
                        }
                        drop(self.in_flight.remove(i));
                    }
                    Op::EndDoomed(i) => {
                        let doomed: Vec<usize> = (0..self.in_flight.len())
                            .filter(|&k| self.in_flight[k].doomed)
                            .collect();
                        if !doomed.is_empty() {
                            drop(self.in_flight.remove(doomed[i % doomed.len()]));
                        }
                    }
                    _ => {}
                }
                self.check_invariants()
            }

            fn check_invariants(&mut self) -> Result<(), TestCaseError> {
                // The log holds each batch once, in sequence order, without gaps.
                for (i, b) in self.log.iter().enumerate() {
                    prop_assert_eq!(*b, self.sent[i], "log {:?} sent {:?}", self.log, self.sent);
                }
                // A retry that waited answers with its first copy's offset.
                let mut still = Vec::new();
                for (b, original) in self.waiting.drain(..) {
                    match original.settled() {
                        None => still.push((b, original)),
                        Some(Settled::Written(base)) => {
                            prop_assert_eq!(self.log.get(base as usize), Some(&b))
                        }
                        Some(Settled::Failed) => {}
                    }
                }
                self.waiting = still;
                Ok(())
            }

            /// Every append ends, then the client retries what is not written, in order: all
            /// of it must be taken (no state left stuck).
            pub fn finish(&mut self) -> Result<(), TestCaseError> {
                while !self.in_flight.is_empty() {
                    self.apply(Op::EndDoomed(0))?;
                    self.apply(Op::Write)?;
                }
                for i in self.log.len()..self.sent.len() {
                    let b = self.sent[i];
                    let Check::Reserved(r) = self.producers.check_and_reserve(b) else {
                        return Err(TestCaseError::fail(format!("{b:?} not taken at the end")));
                    };
                    self.log.push(b);
                    r.written(i as i64);
                }
                self.check_invariants()
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn pipelined_retried_and_failed_batches_are_written_once_in_order(
                ops in proptest::collection::vec(op(), 1..80)
            ) {
                let mut sim = Sim::default();
                for op in ops {
                    sim.apply(op)?;
                }
                sim.finish()?;
            }
        }
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

/// An idempotent producer a partition knows, for DescribeProducers: its epoch and its last
/// written batch's last sequence, base offset and max timestamp (-1 when not known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveProducer {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_sequence: i32,
    pub last_batch_offset: i64,
    pub last_timestamp: i64,
}

impl Producers {
    /// The producers with a written batch, by producer id; `None` when there are more than
    /// `count_max` (the walk stops there).
    pub fn active_at_most(&self, count_max: usize) -> Option<Vec<ActiveProducer>> {
        let state = self.state.borrow();
        let mut out = Vec::new();
        for (&producer_id, e) in &state.producers {
            let last = e.batches.iter().rev().find_map(|b| match b.state {
                BatchState::Written(base) => Some(ActiveProducer {
                    producer_id,
                    epoch: e.epoch,
                    last_sequence: b.last_seq,
                    last_batch_offset: base,
                    last_timestamp: b.max_timestamp,
                }),
                BatchState::Writing(_) => None,
            });
            if let Some(p) = last {
                if out.len() == count_max {
                    return None;
                }
                out.push(p);
            }
        }
        out.sort_by_key(|p| p.producer_id);
        Some(out)
    }
}
