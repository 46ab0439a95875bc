//! What a shard counts while it serves: plain per-thread cells, no atomics, no locks, no
//! allocation per request. The metrics thread reads them through [`snapshot`], which runs on
//! the shard itself (sent there as a control message), and publishes them.

use kafka_protocol::messages::*;
use ringbroker_runtime::stats::{HistogramDelta, LocalCounter, LocalHistogram};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Instant;

/// Slots for API keys 0..=126; key 127 stands for every key we do not know.
pub const API_SLOTS: usize = 128;
pub const UNKNOWN_API_SLOT: i16 = 127;
/// The `code` label of requests that closed their connection (malformed, unsupported).
pub const CLOSED_CODE: i16 = i16::MIN;

#[derive(Default)]
struct ShardStats {
    requests: Vec<LocalCounter>,
    durations: Vec<LocalHistogram>,
    errors: RefCell<HashMap<(i16, i16), u64>>,
    bytes_received: LocalCounter,
    bytes_sent: LocalCounter,
    produce_records: LocalCounter,
    connections: Cell<i64>,
    connections_moved: LocalCounter,
}

thread_local! {
    static STATS: ShardStats = ShardStats {
        requests: (0..API_SLOTS).map(|_| LocalCounter::default()).collect(),
        durations: (0..API_SLOTS).map(|_| LocalHistogram::default()).collect(),
        ..ShardStats::default()
    };
}

fn slot(api: i16) -> usize {
    if (0..UNKNOWN_API_SLOT).contains(&api) {
        api as usize
    } else {
        UNKNOWN_API_SLOT as usize
    }
}

/// A request of `api` was handled; it started at `started`.
pub fn request_done(api: i16, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    STATS.with(|s| {
        s.requests[slot(api)].add(1);
        s.durations[slot(api)].record(seconds);
    });
}

/// A response to `api` carried error `code` (once per partition, topic or group it names).
pub fn error(api: i16, code: i16) {
    if code == 0 {
        return;
    }
    STATS.with(|s| {
        *s.errors
            .borrow_mut()
            .entry((slot(api) as i16, code))
            .or_insert(0) += 1
    });
}

pub fn bytes_received(n: usize) {
    STATS.with(|s| s.bytes_received.add(n as u64));
}

pub fn bytes_sent(n: usize) {
    STATS.with(|s| s.bytes_sent.add(n as u64));
}

/// A connection left this shard for the shard that owns its partitions.
pub fn connection_moved() {
    STATS.with(|s| s.connections_moved.add(1));
}

pub fn produce_records(n: u32) {
    STATS.with(|s| s.produce_records.add(n as u64));
}

/// Counts an open connection until the guard drops.
pub struct ConnectionGuard(());

impl ConnectionGuard {
    pub fn open() -> ConnectionGuard {
        STATS.with(|s| s.connections.set(s.connections.get() + 1));
        ConnectionGuard(())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        STATS.with(|s| s.connections.set(s.connections.get() - 1));
    }
}

/// One shard's request counters, taken on that shard.
#[derive(Debug, Default)]
pub struct RequestSnapshot {
    /// (api key, requests so far) for every key seen at least once.
    pub requests: Vec<(i16, u64)>,
    /// (api key, duration samples since the previous snapshot).
    pub durations: Vec<(i16, HistogramDelta)>,
    /// ((api key, error code), responses so far).
    pub errors: Vec<((i16, i16), u64)>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub produce_records: u64,
    pub connections: i64,
    pub connections_moved: u64,
}

/// Reads this shard's counters (totals) and takes its histograms (since the last call).
pub fn snapshot() -> RequestSnapshot {
    STATS.with(|s| RequestSnapshot {
        requests: s
            .requests
            .iter()
            .enumerate()
            .filter(|(_, c)| c.get() > 0)
            .map(|(k, c)| (k as i16, c.get()))
            .collect(),
        durations: s
            .durations
            .iter()
            .enumerate()
            .map(|(k, h)| (k as i16, h.take()))
            .filter(|(_, d)| !d.is_empty())
            .collect(),
        errors: s.errors.borrow().iter().map(|(&k, &v)| (k, v)).collect(),
        bytes_received: s.bytes_received.get(),
        bytes_sent: s.bytes_sent.get(),
        produce_records: s.produce_records.get(),
        connections: s.connections.get(),
        connections_moved: s.connections_moved.get(),
    })
}

/// The error codes a response carries, for `ringbroker_request_errors_total`.
pub trait ErrorCodes {
    fn each_error(&self, f: &mut dyn FnMut(i16));
}

macro_rules! top_level_error {
    ($($t:ty),*) => {$(
        impl ErrorCodes for $t {
            fn each_error(&self, f: &mut dyn FnMut(i16)) {
                f(self.error_code);
            }
        }
    )*};
}

top_level_error!(
    ApiVersionsResponse,
    JoinGroupResponse,
    SyncGroupResponse,
    HeartbeatResponse,
    ListGroupsResponse,
    InitProducerIdResponse
);

impl ErrorCodes for CreateAclsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        self.results.iter().for_each(|r| f(r.error_code));
    }
}

impl ErrorCodes for DescribeAclsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        f(self.error_code);
    }
}

impl ErrorCodes for DeleteAclsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        self.filter_results.iter().for_each(|r| f(r.error_code));
    }
}

impl ErrorCodes for MetadataResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        for t in &self.topics {
            f(t.error_code);
            t.partitions.iter().for_each(|p| f(p.error_code));
        }
    }
}

impl ErrorCodes for ProduceResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        for t in &self.responses {
            t.partition_responses.iter().for_each(|p| f(p.error_code));
        }
    }
}

impl ErrorCodes for FetchResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        f(self.error_code);
        for t in &self.responses {
            t.partitions.iter().for_each(|p| f(p.error_code));
        }
    }
}

impl ErrorCodes for ListOffsetsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        for t in &self.topics {
            t.partitions.iter().for_each(|p| f(p.error_code));
        }
    }
}

impl ErrorCodes for CreateTopicsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        self.topics.iter().for_each(|t| f(t.error_code));
    }
}

impl ErrorCodes for DeleteTopicsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        self.responses.iter().for_each(|t| f(t.error_code));
    }
}

impl ErrorCodes for FindCoordinatorResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        f(self.error_code);
        self.coordinators.iter().for_each(|c| f(c.error_code));
    }
}

impl ErrorCodes for LeaveGroupResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        f(self.error_code);
        self.members.iter().for_each(|m| f(m.error_code));
    }
}

impl ErrorCodes for OffsetCommitResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        for t in &self.topics {
            t.partitions.iter().for_each(|p| f(p.error_code));
        }
    }
}

impl ErrorCodes for OffsetFetchResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        f(self.error_code);
        for t in &self.topics {
            t.partitions.iter().for_each(|p| f(p.error_code));
        }
        for g in &self.groups {
            f(g.error_code);
            for t in &g.topics {
                t.partitions.iter().for_each(|p| f(p.error_code));
            }
        }
    }
}

impl ErrorCodes for DescribeGroupsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        self.groups.iter().for_each(|g| f(g.error_code));
    }
}

impl ErrorCodes for DeleteGroupsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        self.results.iter().for_each(|r| f(r.error_code));
    }
}

/// Counts every error code in `response` to `api`.
pub fn response_errors<T: ErrorCodes>(api: i16, response: &T) {
    response.each_error(&mut |code| error(api, code));
}

impl ErrorCodes for kafka_protocol::messages::DescribeConfigsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        self.results.iter().for_each(|r| f(r.error_code));
    }
}

impl ErrorCodes for kafka_protocol::messages::AlterConfigsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        self.responses.iter().for_each(|r| f(r.error_code));
    }
}

impl ErrorCodes for kafka_protocol::messages::IncrementalAlterConfigsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        self.responses.iter().for_each(|r| f(r.error_code));
    }
}
