//! Prometheus metrics and the health check, served off the shard cores.
//!
//! Two plain threads: `metrics-http` serves `GET /metrics` and `GET /health` to any number of
//! clients at once ([`crate::http`]); `metrics` owns a `metrics-exporter-prometheus` recorder.
//! Shards never touch the recorder: they count into their own cells ([`crate::stats`], the
//! ring's statistics, the storage fsync histogram). Every [`PUBLISH_INTERVAL`], and on every
//! scrape, the metrics thread sends each live shard a control message that snapshots those
//! cells on the shard, then publishes the snapshots (counters as absolute values, histogram
//! deltas, gauges) and renders. `/health` reads only the shards' heartbeats
//! ([`crate::health`]), so neither a stuck shard nor a slow scrape can delay it.
//!
//! Consumer-group lag is computed here from two snapshots: committed offsets (from the shard
//! coordinating each group) and log end offsets (from the shard owning each partition).

use crate::health::Heartbeats;
use crate::http::Scrape;
use crate::stats::{RequestSnapshot, CLOSED_CODE, UNKNOWN_API_SLOT};
use kafka_protocol::messages::ApiKey;
use metrics::{counter, gauge, histogram, with_local_recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use metrics_util::MetricKindMask;
use ringbroker_runtime::driver::{opcode_name, RingStats};
use ringbroker_runtime::mesh::Mesh;
use ringbroker_runtime::stats::{HistogramDelta, LATENCY_BOUNDS};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often shard statistics are published even when nobody scrapes (keeps each publish
/// small: histogram samples are handed over per bucket).
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// How long a publish waits for a shard's snapshot before rendering without it.
const SHARD_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// While waiting for snapshots, how often a publish checks whether the shards it waits for
/// have meanwhile become stuck (then it stops waiting for them).
const STUCK_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Gauges of partitions and groups that disappear stop being published and leave the
/// exposition after this long.
const GAUGE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything one shard reports, taken on that shard.
#[derive(Debug, Default)]
pub struct ShardSnapshot {
    pub shard: usize,
    pub requests: RequestSnapshot,
    pub ring: Option<RingStats>,
    pub spliced_bytes: u64,
    pub fsync: HistogramDelta,
    /// (topic, partition, log start, log end, size in bytes) of every partition it owns.
    pub partitions: Vec<(String, i32, i64, i64, u64)>,
    /// (group, topic, partition, committed offset) of the groups it coordinates.
    pub committed: Vec<(String, String, i32, i64)>,
    /// What its log cleaner did, and the compacted partitions it owns.
    pub cleaner: crate::cleaner::CleanerCounters,
    pub compacted: Vec<crate::cleaner::PartitionCleanState>,
    /// Requests (or parts of them) the ACL authorizer refused, by resource type.
    pub authorization_denied: Vec<(&'static str, u64)>,
}

/// Runs on a shard thread.
fn take_snapshot() -> ShardSnapshot {
    let shard = crate::shard::current();
    let (cleaner, compacted) = crate::cleaner::snapshot();
    ShardSnapshot {
        cleaner,
        compacted,
        authorization_denied: crate::security::authorizer::denied_counts().to_vec(),
        shard: shard.id,
        requests: crate::stats::snapshot(),
        ring: Some(ringbroker_runtime::driver::stats()),
        spliced_bytes: ringbroker_runtime::splice::spliced_bytes(),
        fsync: ringbroker_storage::log::take_fsync_seconds(),
        partitions: shard
            .owned_partitions()
            .into_iter()
            .map(|((t, p), log)| {
                (
                    t,
                    p,
                    log.log_start_offset(),
                    log.high_watermark(),
                    log.size_bytes(),
                )
            })
            .collect(),
        committed: crate::groups::all_committed(),
    }
}

/// The running metrics thread.
pub struct MetricsServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Binds the metrics address (so a bad address fails start-up early).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

fn build_recorder() -> PrometheusRecorder {
    let mut builder =
        PrometheusBuilder::new().idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE_TIMEOUT));
    for name in [
        "ringbroker_request_duration_seconds",
        "ringbroker_fsync_duration_seconds",
    ] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.into()), &LATENCY_BOUNDS)
            .expect("latency buckets are not empty");
    }
    let recorder = builder.build_recorder();
    with_local_recorder(&recorder, describe);
    recorder
}

/// HELP texts (and units) of every series.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "ringbroker_requests_total",
        "Kafka requests handled, by API and shard."
    );
    describe_counter!(
        "ringbroker_request_errors_total",
        "Error codes in responses (one per partition, topic or group they name), and requests that closed their connection (code CONNECTION_CLOSED)."
    );
    describe_histogram!(
        "ringbroker_request_duration_seconds",
        Unit::Seconds,
        "Time from a request's decoding to its response being ready, by API."
    );
    describe_counter!(
        "ringbroker_bytes_received_total",
        Unit::Bytes,
        "Bytes read from client sockets."
    );
    describe_counter!(
        "ringbroker_bytes_sent_total",
        Unit::Bytes,
        "Response bytes sent to clients (memory and spliced)."
    );
    describe_counter!(
        "ringbroker_fetch_spliced_bytes_total",
        Unit::Bytes,
        "Record bytes moved from segment files to sockets by splice (zero copy)."
    );
    describe_counter!(
        "ringbroker_produce_records_total",
        "Records appended by Produce requests."
    );
    describe_gauge!("ringbroker_connections", "Open client connections.");
    describe_gauge!(
        "ringbroker_tls_path",
        "Per TLS listener, 1 for the path its connections take after the handshake: \
         userspace (rustls on the shard) or ktls (keys handed to the kernel)."
    );
    describe_counter!(
        "ringbroker_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out (the connection was closed)."
    );
    describe_counter!(
        "ringbroker_authorization_denied_total",
        "Operations the ACL authorizer refused, by resource type (topic, group, cluster, transactional_id) and shard."
    );
    describe_counter!(
        "ringbroker_connections_moved_total",
        "Connections handed from this shard to the shard that owns the partitions they use."
    );
    describe_counter!(
        "ringbroker_sasl_authentications_total",
        "SASL authentications by mechanism and result (success, failure), re-authentications included."
    );
    describe_counter!(
        "ringbroker_uring_submissions_total",
        "io_uring submissions by opcode and shard."
    );
    describe_counter!(
        "ringbroker_uring_cq_overflow_total",
        "Completions the kernel could not post because the completion queue was full."
    );
    describe_gauge!(
        "ringbroker_uring_inflight",
        "io_uring operations submitted and not yet completed."
    );
    describe_counter!(
        "ringbroker_cross_shard_messages_total",
        "Messages sent from one shard to another."
    );
    describe_gauge!(
        "ringbroker_partition_log_end_offset",
        "Offset the next record of the partition will get (high watermark)."
    );
    describe_gauge!(
        "ringbroker_partition_log_start_offset",
        "First offset still held by the partition."
    );
    describe_gauge!(
        "ringbroker_partition_size_bytes",
        Unit::Bytes,
        "Bytes in the partition's segment files."
    );
    describe_counter!(
        "ringbroker_cleaner_bytes_read_total",
        Unit::Bytes,
        "Segment bytes the log cleaner read (its key maps and its copies), by shard."
    );
    describe_counter!(
        "ringbroker_cleaner_bytes_written_total",
        Unit::Bytes,
        "Cleaned segment bytes the log cleaner wrote, by shard."
    );
    describe_counter!(
        "ringbroker_cleaner_records_removed_total",
        "Records the log cleaner removed (superseded values and expired tombstones), by shard."
    );
    describe_counter!(
        "ringbroker_cleaner_cleanings_total",
        "Cleanings of a compacted partition completed, by shard."
    );
    describe_counter!(
        "ringbroker_cleaner_errors_total",
        "Cleanings that failed (the partition is left as it was and retried later), by shard."
    );
    describe_gauge!(
        "ringbroker_partition_cleanable_dirty_ratio",
        "Of a compacted partition's closed segments, the share of bytes not cleaned yet (compared with min.cleanable.dirty.ratio)."
    );
    describe_gauge!(
        "ringbroker_partition_seconds_since_last_clean",
        Unit::Seconds,
        "Time since a compacted partition was last cleaned (since the broker started when it was not cleaned yet)."
    );
    describe_histogram!(
        "ringbroker_fsync_duration_seconds",
        Unit::Seconds,
        "Duration of fdatasync calls of group commit."
    );
    describe_gauge!(
        "ringbroker_consumer_group_lag",
        "Log end offset minus the group's committed offset, per partition."
    );
    describe_gauge!(
        "ringbroker_shard_heartbeat_age_seconds",
        Unit::Seconds,
        "Time since the shard's event loop last turned (/health fails above 2 s)."
    );
    describe_gauge!(
        "ringbroker_build_info",
        "Version of the running broker (value 1)."
    );
}

impl MetricsServer {
    /// Starts serving `listener`: the HTTP thread ([`crate::http`]) and the publisher.
    /// `/health` answers 200 once `ready` is set and while every shard's loop turns.
    pub fn start(
        listener: TcpListener,
        mesh: Arc<Mesh>,
        ready: Arc<AtomicBool>,
        heartbeats: Arc<Heartbeats>,
        shard_cpus: Vec<usize>,
    ) -> std::io::Result<MetricsServer> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (scrape_tx, scrape_rx) = mpsc::sync_channel::<Scrape>(crate::http::SCRAPES_QUEUED_MAX);
        let cpus = shard_cpus.clone();
        let (ready2, heartbeats2) = (ready.clone(), heartbeats.clone());
        let publisher = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                keep_off(&cpus);
                let mut publisher = Publisher {
                    recorder: build_recorder(),
                    mesh,
                    heartbeats: heartbeats2,
                };
                publisher.run(&scrape_rx, &ready2);
            })?;
        let stop2 = stop.clone();
        let http = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                keep_off(&shard_cpus);
                crate::http::serve(listener, &stop2, &ready, &heartbeats, scrape_tx);
            })?;
        Ok(MetricsServer {
            addr,
            stop,
            threads: vec![http, publisher],
        })
    }

    /// Stops the metrics threads (before the shards go away).
    pub fn stop(self) {
        // The HTTP thread sees the flag within a poll timeout; its end closes the scrape
        // queue, which ends the publisher.
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Moves the calling thread onto the CPUs no shard uses, when there are any (with every CPU
/// given to shards it shares them, as the kernel sees fit).
fn keep_off(shard_cpus: &[usize]) {
    let Ok(allowed) = ringbroker_runtime::affinity::allowed_cpus() else {
        return;
    };
    let free: Vec<usize> = allowed
        .into_iter()
        .filter(|c| !shard_cpus.contains(c))
        .collect();
    if !free.is_empty() {
        if let Err(e) = ringbroker_runtime::affinity::pin_current_thread_to_set(&free) {
            tracing::debug!(error = %e, "metrics thread stays unpinned");
        }
    }
}

struct Publisher {
    recorder: PrometheusRecorder,
    mesh: Arc<Mesh>,
    heartbeats: Arc<Heartbeats>,
}

impl Publisher {
    /// Publishes every [`PUBLISH_INTERVAL`] and answers scrapes, until the queue closes.
    fn run(&mut self, scrapes: &mpsc::Receiver<Scrape>, ready: &AtomicBool) {
        let mut next_publish = Instant::now();
        loop {
            crate::faults::metrics_turn();
            let wait = next_publish.saturating_duration_since(Instant::now());
            match scrapes.recv_timeout(wait) {
                Ok(scrape) => {
                    if let Err(e) = self.answer(scrape) {
                        tracing::debug!(error = %e, "metrics request failed");
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if ready.load(Ordering::Acquire) {
                        self.publish();
                    }
                    next_publish = Instant::now() + PUBLISH_INTERVAL;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn answer(&mut self, mut scrape: Scrape) -> std::io::Result<()> {
        if Instant::now() >= scrape.deadline {
            return Err(std::io::ErrorKind::TimedOut.into()); // waited in the queue too long
        }
        let body = self.render();
        let r = crate::http::response(
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            body.as_bytes(),
            scrape.head,
        );
        scrape.answer(&r)
    }

    /// Collects a snapshot from every shard that is not stuck (a stuck one would only make
    /// the scrape wait [`SHARD_REPLY_TIMEOUT`]) and hands them to the recorder.
    fn publish(&mut self) {
        let ages = self.heartbeats.ages();
        let live: Vec<usize> = (0..self.mesh.shard_count())
            .filter(|&s| ages[s] < crate::health::HEARTBEAT_STALE)
            .collect();
        let shards = live.len();
        let (tx, rx) = mpsc::channel::<ShardSnapshot>();
        for &s in &live {
            let tx = tx.clone();
            self.mesh.send_control(
                s,
                Box::new(move || {
                    let _ = tx.send(take_snapshot());
                }),
            );
        }
        drop(tx);
        let deadline = Instant::now() + SHARD_REPLY_TIMEOUT;
        let mut snapshots: Vec<ShardSnapshot> = Vec::with_capacity(shards);
        while snapshots.len() < shards {
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(STUCK_CHECK_INTERVAL);
            match rx.recv_timeout(slice) {
                Ok(s) => snapshots.push(s),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    // Stop waiting once every shard yet to answer is stuck.
                    let ages = self.heartbeats.ages();
                    let waiting_on_live = live.iter().any(|&s| {
                        ages[s] < crate::health::HEARTBEAT_STALE
                            && !snapshots.iter().any(|x| x.shard == s)
                    });
                    if !waiting_on_live {
                        break;
                    }
                }
                Err(_) => {
                    tracing::warn!(
                        answered = snapshots.len(),
                        shards,
                        "a shard did not answer the metrics snapshot in time"
                    );
                    break;
                }
            }
        }
        let mesh = self.mesh.clone();
        with_local_recorder(&self.recorder, || {
            apply(&snapshots, &mesh);
            crate::replication::metrics::record();
            crate::security::tls::record_metrics();
            for (shard, age) in ages.iter().enumerate() {
                gauge!("ringbroker_shard_heartbeat_age_seconds", "shard" => shard.to_string())
                    .set(age.as_secs_f64());
            }
        });
        self.recorder.handle().run_upkeep();
    }

    fn render(&mut self) -> String {
        self.publish();
        self.recorder.handle().render()
    }
}

fn api_name(key: i16) -> String {
    if key == UNKNOWN_API_SLOT {
        return "Unknown".into();
    }
    ApiKey::try_from(key).map_or_else(|_| format!("Api{key}"), |k| format!("{k:?}"))
}

/// `UnknownTopicOrPartition` → `UNKNOWN_TOPIC_OR_PARTITION`, as Kafka documents its errors.
fn error_name(code: i16) -> String {
    if code == CLOSED_CODE {
        return "CONNECTION_CLOSED".into();
    }
    let Some(e) = kafka_protocol::error::ResponseError::try_from_code(code) else {
        return "NONE".into();
    };
    let camel = format!("{e:?}");
    if camel.starts_with("Unknown(") {
        return format!("CODE_{code}");
    }
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn record_delta(h: &metrics::Histogram, delta: &HistogramDelta) {
    for (value, count) in delta.samples() {
        h.record_many(value, count as usize);
    }
}

fn apply(snapshots: &[ShardSnapshot], mesh: &Mesh) {
    gauge!("ringbroker_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let mut log_ends: HashMap<(&str, i32), i64> = HashMap::new();
    for (mechanism, result, n) in crate::security::sasl::authentication_counts() {
        counter!("ringbroker_sasl_authentications_total", "mechanism" => mechanism, "result" => result)
            .absolute(n);
    }
    for s in snapshots {
        let shard = s.shard.to_string();
        let r = &s.requests;
        for &(api, n) in &r.requests {
            counter!("ringbroker_requests_total", "api" => api_name(api), "shard" => shard.clone())
                .absolute(n);
        }
        for ((api, code), n) in &r.errors {
            counter!(
                "ringbroker_request_errors_total",
                "api" => api_name(*api),
                "code" => error_name(*code),
                "shard" => shard.clone()
            )
            .absolute(*n);
        }
        for (api, delta) in &r.durations {
            record_delta(
                &histogram!("ringbroker_request_duration_seconds", "api" => api_name(*api)),
                delta,
            );
        }
        counter!("ringbroker_bytes_received_total", "shard" => shard.clone())
            .absolute(r.bytes_received);
        counter!("ringbroker_bytes_sent_total", "shard" => shard.clone()).absolute(r.bytes_sent);
        counter!("ringbroker_fetch_spliced_bytes_total", "shard" => shard.clone())
            .absolute(s.spliced_bytes);
        counter!("ringbroker_produce_records_total", "shard" => shard.clone())
            .absolute(r.produce_records);
        gauge!("ringbroker_connections", "shard" => shard.clone()).set(r.connections as f64);
        counter!("ringbroker_connections_moved_total", "shard" => shard.clone())
            .absolute(r.connections_moved);
        for &(resource_type, n) in &s.authorization_denied {
            if n > 0 {
                counter!(
                    "ringbroker_authorization_denied_total",
                    "resource_type" => resource_type,
                    "shard" => shard.clone()
                )
                .absolute(n);
            }
        }
        if let Some(ring) = &s.ring {
            // Opcodes without a name of their own add up under "OTHER".
            let mut by_name: std::collections::BTreeMap<&'static str, u64> = Default::default();
            for (code, &n) in ring.submitted_by_opcode.iter().enumerate() {
                if n > 0 {
                    *by_name.entry(opcode_name(code)).or_default() += n;
                }
            }
            for (op, n) in by_name {
                counter!(
                    "ringbroker_uring_submissions_total",
                    "op" => op,
                    "shard" => shard.clone()
                )
                .absolute(n);
            }
            counter!("ringbroker_uring_cq_overflow_total", "shard" => shard.clone())
                .absolute(ring.cq_overflow);
            gauge!("ringbroker_uring_inflight", "shard" => shard.clone()).set(ring.inflight as f64);
        }
        record_delta(
            &histogram!("ringbroker_fsync_duration_seconds", "shard" => shard.clone()),
            &s.fsync,
        );
        let c = &s.cleaner;
        for (name, n) in [
            ("ringbroker_cleaner_bytes_read_total", c.bytes_read),
            ("ringbroker_cleaner_bytes_written_total", c.bytes_written),
            (
                "ringbroker_cleaner_records_removed_total",
                c.records_removed,
            ),
            ("ringbroker_cleaner_cleanings_total", c.cleanings),
            ("ringbroker_cleaner_errors_total", c.errors),
        ] {
            counter!(name, "shard" => shard.clone()).absolute(n);
        }
        for p in &s.compacted {
            let labels = [
                ("topic", p.topic.clone()),
                ("partition", p.partition.to_string()),
            ];
            gauge!("ringbroker_partition_cleanable_dirty_ratio", &labels).set(p.dirty_ratio);
            gauge!("ringbroker_partition_seconds_since_last_clean", &labels)
                .set(p.seconds_since_last_clean);
        }
        for (topic, partition, start, end, size) in &s.partitions {
            let labels = [
                ("topic", topic.clone()),
                ("partition", partition.to_string()),
            ];
            gauge!("ringbroker_partition_log_end_offset", &labels).set(*end as f64);
            gauge!("ringbroker_partition_log_start_offset", &labels).set(*start as f64);
            gauge!("ringbroker_partition_size_bytes", &labels).set(*size as f64);
            log_ends.insert((topic.as_str(), *partition), *end);
        }
    }
    for s in snapshots {
        for (group, topic, partition, committed) in &s.committed {
            if let Some(&end) = log_ends.get(&(topic.as_str(), *partition)) {
                gauge!(
                    "ringbroker_consumer_group_lag",
                    "group" => group.clone(),
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(lag(end, *committed) as f64);
            }
        }
    }
    let n = mesh.shard_count();
    for from in 0..n {
        for to in (0..n).filter(|&to| to != from) {
            counter!(
                "ringbroker_cross_shard_messages_total",
                "from" => from.to_string(),
                "to" => to.to_string()
            )
            .absolute(mesh.sent_count(from, to));
        }
    }
}

/// Records a consumer still has to read: log end minus committed, never negative (a commit
/// can be ahead of the log after a retention reset or a manual commit).
pub fn lag(log_end: i64, committed: i64) -> i64 {
    (log_end - committed).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_follow_kafka() {
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(35), "UNSUPPORTED_VERSION");
        assert_eq!(error_name(CLOSED_CODE), "CONNECTION_CLOSED");
        assert_eq!(api_name(0), "Produce");
        assert_eq!(api_name(UNKNOWN_API_SLOT), "Unknown");
    }

    #[test]
    fn lag_is_never_negative() {
        assert_eq!(lag(100, 40), 60);
        assert_eq!(lag(100, 100), 0);
        assert_eq!(lag(5, 9), 0);
    }
}
