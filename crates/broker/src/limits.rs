//! Limits that keep hostile or broken clients from costing more than their own connection:
//! rate-limited warnings, the receive-buffer budget, the connection count, and a named bound
//! on every size or count a client controls before it reaches an allocation, a loop, a
//! placeholder or state the broker keeps (docs/operations.md, "Limits and failure behaviour",
//! lists each with what a client sees when it is exceeded).

use ringbroker_runtime::notify::Notify;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Warnings about bad input a shard logs per second (a burst of up to this many, refilled
/// continuously); the rest are counted and reported with the next one logged.
pub const WARNINGS_PER_SECOND: f64 = 10.0;

/// Receive buffers hold at most this many bytes per shard beyond the first
/// [`RECV_BYTES_MIN`](crate::connection::RECV_BYTES_MIN) of each connection; a connection that
/// needs a bigger buffer for a large frame waits until others give theirs back (one always
/// may, so progress is guaranteed). Kafka's equivalent is `queued.max.request.bytes`.
pub const RECV_BUDGET_BYTES_DEFAULT: usize = 512 * 1024 * 1024;

/// Kafka's default `fetch.max.bytes`: the most record bytes one Fetch response carries (the
/// first batch is always whole, KIP-74). `--fetch-max-bytes`; a Fetch's `max_bytes` and each
/// `partition_max_bytes` are clamped to it.
pub const FETCH_BYTES_MAX_DEFAULT: usize = 57_671_680;

/// Largest `--fetch-max-bytes` and `--max-message-bytes` (and topic `max.message.bytes`): one
/// partition's record section in a Fetch response, a whole batch at most this big included,
/// must fit one gather placeholder.
pub const RECORD_SECTION_BYTES_MAX: usize = ringbroker_protocol::gather::PLACEHOLDER_BYTES_MAX;

/// Longest a Fetch waits for `min_bytes` (its `max_wait_ms` is clamped to it): each waiting
/// Fetch parks a watcher on every partition it names until the wait ends, so the client's
/// choice (up to 24 days) must not set how long they stay. Clients' defaults are 500 ms;
/// a shorter wait only means an earlier, emptier answer.
pub const FETCH_WAIT_MS_MAX: i32 = 30_000;

/// Partitions one request may name (Fetch, ListOffsets, OffsetCommit, OffsetFetch), counting
/// repeats: no real client names more partitions than a broker may hold. Beyond it the
/// connection is closed, as for a malformed request.
pub const REQUEST_PARTITIONS_MAX: usize = PARTITIONS_MAX;

/// Topics one CreateTopics, DeleteTopics or Metadata request may name (every topic has a
/// partition, so no more can exist). Beyond it the connection is closed.
pub const REQUEST_TOPICS_MAX: usize = PARTITIONS_MAX;

/// Bytes one Fetch (or any read) reads at once to walk from an index entry to the batch it
/// wants: a topic's `index.interval.bytes` may be up to 2 GiB, and then a segment has no index
/// entry past its first batch; the walk goes on window by window, so memory stays bounded.
pub const LOCATE_WINDOW_BYTES_MAX: usize = ringbroker_storage::log::LOCATE_WINDOW_BYTES_MAX;

/// Decompressed record bytes one timestamp lookup (ListOffsets) walks in one stored batch:
/// `LOOKUP_EXPANSION_MAX` times the batch's own bytes, within `LOOKUP_DECOMPRESSED_BYTES_MIN`
/// and `LOOKUP_DECOMPRESSED_BYTES_MAX`. Produce does not look inside compressed batches, so a
/// 30 KB zstd batch can claim 256 MiB of tiny records; a real producer's batches compress a
/// few times, never 64 times. Beyond it the lookup answers approximately (the batch's first
/// offset and its max timestamp), as for any compressed batch before exact lookups.
pub const LOOKUP_EXPANSION_MAX: u64 = 64;
pub const LOOKUP_DECOMPRESSED_BYTES_MIN: u64 = 1024 * 1024;
pub const LOOKUP_DECOMPRESSED_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// The decompressed bytes a timestamp lookup may walk in a batch of `batch_bytes`.
pub fn lookup_decompressed_bytes_max(batch_bytes: usize) -> u64 {
    (batch_bytes as u64)
        .saturating_mul(LOOKUP_EXPANSION_MAX)
        .clamp(LOOKUP_DECOMPRESSED_BYTES_MIN, LOOKUP_DECOMPRESSED_BYTES_MAX)
}

/// Producer entries in one DescribeProducers response, all partitions together (a partition
/// holds at most `PRODUCERS_PER_PARTITION_MAX`). A partition whose producers would pass it gets
/// INVALID_REQUEST (Kafka has no such bound; no error code fits better), so a response stays
/// a few MiB.
pub const DESCRIBE_PRODUCERS_RESPONSE_PRODUCERS_MAX: usize = 100_000;

/// Resources one DescribeConfigs request may name, counting repeats (a topic yields about 40
/// configs with synonyms and documentation). Beyond it the connection is closed.
pub const DESCRIBE_CONFIGS_RESOURCES_MAX: usize = 10_000;

/// Partitions of all topics together (Kafka has no such limit; each partition costs open
/// files and memory). CreateTopics or auto-creation beyond it: POLICY_VIOLATION.
pub const PARTITIONS_MAX: usize = 100_000;

/// Partitions of one topic. CreateTopics beyond it: INVALID_PARTITIONS.
pub const TOPIC_PARTITIONS_MAX: i32 = PARTITIONS_MAX as i32;

/// Bytes of one topic's configs (names and values), kept in the topic table. More:
/// INVALID_CONFIG for that topic.
pub const TOPIC_CONFIGS_BYTES_MAX: usize = 64 * 1024;

/// Kafka's `offset.metadata.max.bytes`: the metadata string of one committed offset. Longer:
/// OFFSET_METADATA_TOO_LARGE for that partition.
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;

/// What one group keeps: members together with ids handed out by MEMBER_ID_REQUIRED and not
/// yet joined. A further JoinGroup: GROUP_MAX_SIZE_REACHED. Also the default and the largest
/// value of `--group-max-size` (Kafka's `group.max.size`, unbounded there by default), which
/// applies Kafka's rule to the members themselves.
pub const GROUP_MEMBERS_MAX: usize = 1000;

/// Groups a shard coordinates (live groups and, separately, groups with committed offsets;
/// groups hash to shards by their id). A JoinGroup or OffsetCommit that would add one more:
/// COORDINATOR_NOT_AVAILABLE (retriable; room returns as groups empty or are deleted).
pub const GROUPS_PER_SHARD_MAX: usize = 100_000;

/// Group ids longer than this: INVALID_GROUP_ID (offset records store the id with a 16-bit
/// length; Kafka's only bound is the protocol's 32767).
pub const GROUP_ID_BYTES_MAX: usize = 1024;

/// Kafka's rule for `group.instance.id` (the client checks it there); longer: INVALID_REQUEST.
pub const GROUP_INSTANCE_ID_BYTES_MAX: usize = 249;

/// Protocols one JoinGroup may offer (clients offer one to three). More: INVALID_REQUEST.
pub const JOIN_PROTOCOLS_MAX: usize = 32;

/// Bytes a member's JoinGroup keeps: protocol type, protocol names and their metadata
/// together. More: INVALID_REQUEST.
pub const MEMBER_METADATA_BYTES_MAX: usize = 1 << 20;

/// Bytes of one member's assignment in the leader's SyncGroup. More: INVALID_REQUEST to the
/// leader, and the group rebalances again.
pub const MEMBER_ASSIGNMENT_BYTES_MAX: usize = 1 << 20;

/// Client ids kept for a group member (in its member id and in DescribeGroups) are cut to
/// this many bytes (at a character boundary).
pub const MEMBER_CLIENT_ID_BYTES_MAX: usize = 255;

struct WarnBucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

thread_local! {
    static WARN: RefCell<WarnBucket> = RefCell::new(WarnBucket {
        tokens: WARNINGS_PER_SECOND,
        last: Instant::now(),
        suppressed: 0,
    });
    static RECV_BUDGET: Rc<RecvBudget> = Rc::new(RecvBudget {
        in_use: Cell::new(0),
        freed: Notify::new(),
    });
}

/// Whether a bad-input warning may be logged now: `Some(n)` with the number suppressed since
/// the last one logged, `None` to stay quiet (the warning is counted).
pub fn warn_allowed() -> Option<u64> {
    WARN.with(|w| {
        let mut w = w.borrow_mut();
        let now = Instant::now();
        let refill = now.duration_since(w.last).as_secs_f64() * WARNINGS_PER_SECOND;
        w.tokens = (w.tokens + refill).min(WARNINGS_PER_SECOND);
        w.last = now;
        if w.tokens >= 1.0 {
            w.tokens -= 1.0;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    })
}

/// Logs a warning about a client's bad input, rate limited per shard.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {
        if let Some(suppressed) = $crate::limits::warn_allowed() {
            tracing::warn!(suppressed, $($arg)+);
        }
    };
}

/// The shard's receive-buffer budget.
pub struct RecvBudget {
    in_use: Cell<usize>,
    freed: Rc<Notify>,
}

/// Bytes of the budget a connection holds; given back on drop.
pub struct RecvGrant {
    budget: Rc<RecvBudget>,
    bytes: usize,
}

impl RecvGrant {
    pub fn none() -> RecvGrant {
        RecvGrant {
            budget: RECV_BUDGET.with(Rc::clone),
            bytes: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Grows this grant to `bytes`, waiting while the shard's budget is spent (unless
    /// nothing else holds any, so one large frame can always be read).
    pub async fn grow_to(&mut self, bytes: usize, budget_max: usize) {
        let freed = self.budget.freed.clone();
        loop {
            let notified = freed.notified();
            if self.try_grow_to(bytes, budget_max) {
                return;
            }
            notified.await;
        }
    }

    /// Grows this grant to `bytes` if the shard's budget has room now (or nothing else holds
    /// any); whether it now holds at least `bytes`.
    pub fn try_grow_to(&mut self, bytes: usize, budget_max: usize) -> bool {
        if bytes <= self.bytes {
            return true;
        }
        let more = bytes - self.bytes;
        let in_use = self.budget.in_use.get();
        if in_use + more <= budget_max || in_use == self.bytes {
            self.budget.in_use.set(in_use + more);
            self.bytes = bytes;
            return true;
        }
        false
    }

    /// Gives back what this grant holds beyond `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget
                .in_use
                .set(self.budget.in_use.get() - (self.bytes - bytes));
            self.bytes = bytes;
            self.budget.freed.notify_all();
        }
    }

    /// Gives the whole grant back.
    pub fn release(&mut self) {
        self.shrink_to(0);
    }
}

impl Drop for RecvGrant {
    fn drop(&mut self) {
        self.release();
    }
}

/// The broker-wide connection count, shared by every shard's accept loop.
#[derive(Debug, Default)]
pub struct ConnectionCount(AtomicUsize);

/// One counted connection; uncounted on drop.
pub struct ConnectionSlot(Arc<ConnectionCount>);

impl ConnectionCount {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// Takes a slot unless `max` connections are open.
    pub fn try_take(self: &Arc<Self>, max: usize) -> Option<ConnectionSlot> {
        let mut n = self.0.load(Ordering::Relaxed);
        loop {
            if n >= max {
                return None;
            }
            match self
                .0
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(ConnectionSlot(self.clone())),
                Err(now) => n = now,
            }
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn warnings_are_rate_limited_and_counted() {
        let allowed = (0..100).filter(|_| warn_allowed().is_some()).count();
        assert!(allowed <= WARNINGS_PER_SECOND as usize + 1, "{allowed}");
        std::thread::sleep(Duration::from_millis(250));
        assert!(matches!(warn_allowed(), Some(n) if n >= 80));
    }

    #[test]
    fn connection_slots_stop_at_the_limit_and_come_back() {
        let c = Arc::new(ConnectionCount::default());
        let a = c.try_take(2).unwrap();
        let _b = c.try_take(2).unwrap();
        assert!(c.try_take(2).is_none());
        drop(a);
        assert!(c.try_take(2).is_some());
    }
}
