//! The follower side: one fetcher task per (shard, leader broker) fetches for every partition
//! this shard follows from that leader (Kafka's replica fetcher threads). It connects to the
//! leader's Kafka listener through the ring and speaks Kafka: first OffsetForLeaderEpoch v4
//! (with `replica_id`) for each newly followed partition, truncating the log where it
//! diverges from the leader's (KIP-101/279), then Fetch v12 in a loop from the log end:
//! append the batches (`append_replicated`), fdatasync them when the flush policy syncs for
//! acks=all, and only then fetch again, so the offset the leader sees is durable.
//!
//! It connects on the inter-broker listener (`--inter-broker-listener-name`, default the
//! first listener) at the leader's endpoint of that name. When that listener uses TLS, the
//! connection is a TLS client on the ring ([`crate::security::tls::TlsStream`]): it verifies
//! the leader's certificate (its advertised host) against `--tls-ca-file` (default
//! `--tls-client-ca-file`) and presents this broker's own certificate. When it uses SASL, the
//! fetcher authenticates first (SaslHandshake v1, SaslAuthenticate v2) as the inter-broker
//! user, and again before the session the leader granted expires (KIP-368).

use super::{log_end, UNDEFINED_EPOCH};
use crate::errors;
use crate::metadata::TopicInfo;
use crate::security::SecurityProtocol;
use crate::shard::{Partition, PartitionId, Shard};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use ringbroker_protocol::frame::{next_frame, Next};
use ringbroker_runtime::executor::spawn;
use ringbroker_runtime::notify::Notify;
use ringbroker_runtime::op::{self, SharedFd};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

const FETCH_VERSION: i16 = 12;
const OFFSET_FOR_LEADER_EPOCH_VERSION: i16 = 4;
const SASL_HANDSHAKE_VERSION: i16 = 1;
/// v1+ carries the session lifetime (KIP-368).
const SASL_AUTHENTICATE_VERSION: i16 = 2;
/// SaslAuthenticate round trips of one authentication (SCRAM needs two).
const SASL_ROUNDS_MAX: usize = 4;
/// Largest SASL answer frame.
const SASL_FRAME_BYTES_MAX: usize = 64 << 10;
/// Re-authenticate this long before the session the leader granted ends (or at half of it
/// when it is shorter).
const REAUTH_MARGIN: Duration = Duration::from_secs(5);
/// How long the leader may hold a Fetch with nothing new.
const FETCH_WAIT_MS: i32 = 500;
/// Record bytes asked per partition and per response.
const FETCH_PARTITION_BYTES_MAX: i32 = 1 << 20;
const FETCH_RESPONSE_BYTES_MAX: i32 = 10 << 20;
/// An answer's frame beyond this is a broken peer: the fetch limit, plus one oversized
/// batch (KIP-74 always returns the first batch whole) bounded by the broker's
/// `--max-message-bytes`, plus headers.
const RESPONSE_OVERHEAD_BYTES: usize = 1 << 20;
/// A leader that does not answer within this long (beyond its long poll) is given up on and
/// reconnected to (Kafka's `replica.socket.timeout.ms` is 30 s; the controller fences a
/// silent broker after 2 s, which moves the partitions elsewhere sooner).
const RESPONSE_WAIT_MAX: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Reconnect back-off, doubling between these bounds.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(2000);
/// A partition the leader refused (not leader, fenced or unknown epoch, unknown partition)
/// is left out of fetches this long, waiting for new metadata.
const PARTITION_BACKOFF: Duration = Duration::from_millis(300);
/// With nothing to fetch, how long to wait for a change before looking again.
const IDLE_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("I/O error talking to the leader: {0}")]
    Io(#[from] std::io::Error),
    #[error("the leader closed the connection")]
    Closed,
    #[error("no answer from the leader within {0:?}")]
    Timeout(Duration),
    #[error("bad answer from the leader: {0}")]
    Protocol(String),
    #[error("TLS with the leader: {0}")]
    Tls(String),
    #[error("SASL authentication to the leader failed: {0}")]
    Sasl(String),
}

/// A partition this shard follows, as its fetcher sees it.
struct Followed {
    partition: Rc<Partition>,
    topic: String,
    epoch: i32,
    /// Its log has been reconciled with the leader's at this epoch.
    truncated: bool,
    /// Left out of fetches until then.
    retry_at: Option<Instant>,
    /// Bumped at every (re)follow: a response to a request sent before is ignored.
    generation: u64,
}

struct Fetcher {
    leader: i32,
    parts: RefCell<HashMap<PartitionId, Followed>>,
    /// Released when partitions join or leave.
    changed: Rc<Notify>,
}

thread_local! {
    static FETCHERS: RefCell<HashMap<i32, Rc<Fetcher>>> = RefCell::new(HashMap::new());
    static GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// `p` is to be fetched from `leader` at `epoch` (after its truncation).
pub(super) fn follow(_shard: &Shard, topic: &TopicInfo, p: Rc<Partition>, leader: i32, epoch: i32) {
    let generation = GENERATION.with(|g| {
        g.set(g.get() + 1);
        g.get()
    });
    let fetcher = FETCHERS.with(|f| {
        let mut fetchers = f.borrow_mut();
        if let Some(existing) = fetchers.get(&leader) {
            return existing.clone();
        }
        let fetcher = Rc::new(Fetcher {
            leader,
            parts: RefCell::new(HashMap::new()),
            changed: Notify::new(),
        });
        fetchers.insert(leader, fetcher.clone());
        spawn(run(fetcher.clone()));
        fetcher
    });
    fetcher.parts.borrow_mut().insert(
        p.id,
        Followed {
            topic: topic.name.clone(),
            partition: p,
            epoch,
            truncated: false,
            retry_at: None,
            generation,
        },
    );
    fetcher.changed.notify_all();
}

/// `id` is no longer fetched from `leader`; the fetcher stops with its last partition.
pub(super) fn unfollow(_shard: &Shard, leader: i32, id: PartitionId) {
    FETCHERS.with(|f| {
        let mut fetchers = f.borrow_mut();
        if let Some(fetcher) = fetchers.get(&leader) {
            fetcher.parts.borrow_mut().remove(&id);
            fetcher.changed.notify_all();
            if fetcher.parts.borrow().is_empty() {
                fetchers.remove(&leader);
            }
        }
    });
}

/// `id` is gone from this shard: no fetcher fetches it any more.
pub(super) fn forget(shard: &Shard, id: PartitionId) {
    let leaders: Vec<i32> = FETCHERS.with(|f| f.borrow().keys().copied().collect());
    for leader in leaders {
        unfollow(shard, leader, id);
    }
}

/// This fetcher is still the shard's fetcher for its leader (not stopped or replaced).
fn registered(f: &Rc<Fetcher>) -> bool {
    FETCHERS.with(|fs| fs.borrow().get(&f.leader).is_some_and(|x| Rc::ptr_eq(x, f)))
        && !crate::server::draining()
}

/// Resolves when the fetcher is stopped (its last partition left, or the shard drains).
async fn stopped(f: &Rc<Fetcher>) {
    loop {
        let next = f.changed.notified();
        if !registered(f) {
            return;
        }
        first_of(next, crate::server::drain_started()).await;
    }
}

/// Runs `future` until it completes (`Some`) or the fetcher stops (`None`).
async fn unless_stopped<T>(f: &Rc<Fetcher>, future: impl Future<Output = T>) -> Option<T> {
    let mut future = std::pin::pin!(future);
    let mut stop = std::pin::pin!(stopped(f));
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(out));
        }
        if stop.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(None);
        }
        std::task::Poll::Pending
    })
    .await
}

async fn first_of(a: impl Future<Output = ()>, b: impl Future<Output = ()>) {
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    std::future::poll_fn(|cx| {
        if a.as_mut().poll(cx).is_ready() || b.as_mut().poll(cx).is_ready() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// The listener followers fetch on: `--inter-broker-listener-name`, default the first
/// listener (its name and security protocol, as this broker has it: every broker of a
/// cluster is expected to name its listeners alike, as in Kafka).
fn inter_broker_listener(shard: &Shard) -> (String, SecurityProtocol) {
    let config = &shard.shared.config;
    let listener = match &config.security.inter_broker_listener {
        Some(name) => config.listeners.iter().find(|l| &l.name == name),
        None => config.listeners.first(),
    };
    listener.map_or_else(
        || {
            (
                SecurityProtocol::Plaintext.name().to_string(),
                SecurityProtocol::Plaintext,
            )
        },
        |l| (l.name.clone(), l.protocol),
    )
}

/// The leader's endpoint for `listener` from the brokers view (its advertised host, for TLS
/// name checks, and the address). Hosts are normally IP literals (no lookup); a name is
/// resolved with the system resolver (rare: once per connection).
fn leader_address(leader: i32, listener: &str) -> Option<(String, SocketAddr)> {
    let shard = crate::shard::current();
    let brokers = shard.brokers();
    let b = brokers.brokers.get(&leader)?;
    let (host, port) = b.endpoint(Some(listener))?;
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Some((host.to_string(), SocketAddr::new(ip, port)));
    }
    let addr = (host, port).to_socket_addrs().ok()?.next()?;
    Some((host.to_string(), addr))
}

async fn run(f: Rc<Fetcher>) {
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let (listener, protocol) = inter_broker_listener(&crate::shard::current());
    while registered(&f) {
        let target = leader_address(f.leader, &listener);
        let connected = match &target {
            None => None,
            Some((_, addr)) => {
                unless_stopped(&f, op::timeout(CONNECT_TIMEOUT, op::connect(*addr))).await
            }
        };
        let outcome = match (connected, target) {
            (None, _) if !registered(&f) => return,
            (None, None) => Err(FetchError::Protocol(format!(
                "no address known for broker {} on listener {listener}",
                f.leader
            ))),
            (None, Some(_)) => return,
            (Some(None), _) => Err(FetchError::Timeout(CONNECT_TIMEOUT)),
            (Some(Some(Err(e))), _) => Err(FetchError::Io(e)),
            (Some(Some(Ok(fd))), Some((host, addr))) => {
                match unless_stopped(&f, LeaderConn::open(fd, protocol, &host)).await {
                    None => return,
                    Some(Err(e)) => Err(e),
                    Some(Ok(mut conn)) => {
                        tracing::info!(
                            leader = f.leader,
                            %addr,
                            listener,
                            protocol = protocol.name(),
                            "replica fetcher connected"
                        );
                        backoff = RECONNECT_BACKOFF_MIN;
                        session(&f, &mut conn).await
                    }
                }
            }
            (Some(Some(Ok(_))), None) => Err(FetchError::Protocol(format!(
                "no address known for broker {}",
                f.leader
            ))),
        };
        match outcome {
            Ok(()) => return,
            Err(e) => {
                crate::warn_limited!(leader = f.leader, error = %e, "replica fetcher: reconnecting");
            }
        }
        unless_stopped(&f, op::sleep(backoff)).await;
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
    }
}

/// One connection's work: truncations and fetches until the fetcher stops (`Ok`) or the
/// connection fails.
async fn session(f: &Rc<Fetcher>, conn: &mut LeaderConn) -> Result<(), FetchError> {
    let shard = crate::shard::current();
    let node_id = shard.shared.node_id;
    let sync = shard.shared.config.flush.sync_before_ack(-1);
    let frame_bytes_max = FETCH_RESPONSE_BYTES_MAX as usize
        + shard.shared.config.message_bytes_max
        + RESPONSE_OVERHEAD_BYTES;
    loop {
        if !registered(f) {
            return Ok(());
        }
        // KIP-368: a new SASL session before the leader's one ends (between requests).
        if conn.reauth_due() {
            if unless_stopped(f, conn.authenticate()).await.is_none() {
                return Ok(());
            }
            if let Some(e) = conn.auth_failed.take() {
                return Err(e);
            }
        }
        let now = Instant::now();
        // Partitions to reconcile first: (id, generation, topic, partition, epoch, latest).
        let mut to_truncate = Vec::new();
        let mut to_fetch = Vec::new();
        let mut earliest_retry: Option<Instant> = None;
        for (id, x) in f.parts.borrow_mut().iter_mut() {
            if let Some(at) = x.retry_at {
                if at > now {
                    earliest_retry = Some(earliest_retry.map_or(at, |e| e.min(at)));
                    continue;
                }
                x.retry_at = None;
            }
            if x.truncated {
                to_fetch.push((*id, x.generation));
            } else {
                to_truncate.push((*id, x.generation));
            }
        }
        if !to_truncate.is_empty() {
            truncate(f, conn, node_id, &to_truncate).await?;
            continue;
        }
        if to_fetch.is_empty() {
            let wait = earliest_retry.map_or(IDLE_WAIT, |at| at.saturating_duration_since(now));
            let changed = f.changed.notified();
            if unless_stopped(f, op::timeout(wait.min(IDLE_WAIT), changed))
                .await
                .is_none()
            {
                return Ok(());
            }
            continue;
        }
        fetch(f, conn, node_id, sync, frame_bytes_max, &to_fetch).await?;
    }
}

/// The partitions of `ids` still followed at the same generation, grouped by topic.
fn still_followed(f: &Fetcher, ids: &[(PartitionId, u64)]) -> Vec<(PartitionId, u64)> {
    let parts = f.parts.borrow();
    ids.iter()
        .copied()
        .filter(|(id, g)| parts.get(id).is_some_and(|x| x.generation == *g))
        .collect()
}

fn with_followed<R>(
    f: &Fetcher,
    id: PartitionId,
    generation: u64,
    act: impl FnOnce(&mut Followed) -> R,
) -> Option<R> {
    let mut parts = f.parts.borrow_mut();
    let x = parts.get_mut(&id).filter(|x| x.generation == generation)?;
    Some(act(x))
}

/// KIP-101/279: asks the leader where our latest epoch ends there and cuts the log back to
/// it when ours goes further; a log without epochs is cut back to the HW known here.
async fn truncate(
    f: &Rc<Fetcher>,
    conn: &mut LeaderConn,
    node_id: i32,
    ids: &[(PartitionId, u64)],
) -> Result<(), FetchError> {
    // (id, generation, topic, index, current epoch, our latest epoch)
    let mut asks = Vec::new();
    for &(id, generation) in ids {
        let Some((p, topic, epoch)) = with_followed(f, id, generation, |x| {
            (x.partition.clone(), x.topic.clone(), x.epoch)
        }) else {
            continue;
        };
        match p.log.latest_epoch() {
            Some(latest) => asks.push((id, generation, topic, p, epoch, latest)),
            None => {
                // No epochs: nothing written under a leader here. Keep what the HW covers.
                let target = p.replica.hw.get().max(p.log.log_start_offset());
                if target < log_end(&p.log) {
                    if let Err(e) = p.log.truncate_to(target).await {
                        tracing::error!(topic, partition = id.index, error = %e, "truncation failed");
                        set_retry(f, id, generation);
                        continue;
                    }
                }
                with_followed(f, id, generation, |x| x.truncated = true);
            }
        }
    }
    if asks.is_empty() {
        return Ok(());
    }
    let mut topics: Vec<OffsetForLeaderTopic> = Vec::new();
    for (id, _, topic, _, epoch, latest) in &asks {
        let part = OffsetForLeaderPartition::default()
            .with_partition(id.index)
            .with_current_leader_epoch(*epoch)
            .with_leader_epoch(*latest);
        match topics.iter_mut().find(|t| t.topic.0.as_str() == topic) {
            Some(t) => t.partitions.push(part),
            None => topics.push(
                OffsetForLeaderTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                    .with_partitions(vec![part]),
            ),
        }
    }
    let request = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(node_id))
        .with_topics(topics);
    let Some(response) = unless_stopped(
        f,
        conn.call::<_, OffsetForLeaderEpochResponse>(
            ApiKey::OffsetForLeaderEpoch,
            OFFSET_FOR_LEADER_EPOCH_VERSION,
            &request,
            node_id,
            RESPONSE_OVERHEAD_BYTES,
        ),
    )
    .await
    else {
        return Ok(());
    };
    let response = response?;
    for t in response.topics {
        for r in t.partitions {
            let Some((id, generation, topic, p, _, latest)) = asks
                .iter()
                .find(|a| a.2 == t.topic.0.as_str() && a.0.index == r.partition)
            else {
                continue;
            };
            if with_followed(f, *id, *generation, |_| ()).is_none() {
                continue;
            }
            if r.error_code != errors::NONE {
                tracing::info!(
                    topic,
                    partition = id.index,
                    error = r.error_code,
                    "leader refused OffsetForLeaderEpoch; waiting"
                );
                set_retry(f, *id, *generation);
                continue;
            }
            let end = log_end(&p.log);
            let target = truncation_target(
                *latest,
                r.leader_epoch,
                r.end_offset,
                end,
                p.replica.hw.get().max(p.log.log_start_offset()),
                |e| p.log.end_offset_for_epoch(e).1,
            );
            // KIP-279: when the leader never had our latest epoch, the cut may still leave
            // records of an earlier epoch the leader does not share: ask again with the latest
            // epoch left (each round cuts the log shorter, so this ends).
            let again = target < end && r.leader_epoch >= 0 && r.leader_epoch < *latest;
            if target < end {
                tracing::info!(
                    topic,
                    partition = id.index,
                    from = end,
                    to = target,
                    leader_epoch = r.leader_epoch,
                    "truncating to the leader's log"
                );
                if let Err(e) = p.log.truncate_to(target).await {
                    tracing::error!(topic, partition = id.index, error = %e, "truncation failed");
                    set_retry(f, *id, *generation);
                    continue;
                }
                if p.replica.hw.get() > target {
                    p.replica.hw.set(target);
                }
                // Batches cut off may have been idempotent ones: rebuild from the log.
                crate::producer_state::restore(topic, id.index, &p.log, false).await;
            }
            with_followed(f, *id, *generation, |x| x.truncated = !again);
        }
    }
    // Partitions the answer left out are asked again.
    Ok(())
}

/// Where a follower cuts its log (KIP-279): the leader's end of our latest epoch (or of the
/// latest epoch it has before ours, then no further than where that epoch ends here), never
/// beyond our own end; an undefined answer falls back to the HW we know.
pub fn truncation_target(
    our_latest_epoch: i32,
    leader_epoch: i32,
    leader_end: i64,
    our_end: i64,
    known_hw: i64,
    our_end_of_epoch: impl Fn(i32) -> i64,
) -> i64 {
    if leader_epoch == UNDEFINED_EPOCH || leader_end < 0 {
        return known_hw.min(our_end);
    }
    let mut target = leader_end.min(our_end);
    if leader_epoch < our_latest_epoch {
        let ours = our_end_of_epoch(leader_epoch);
        if ours >= 0 {
            target = target.min(ours);
        }
    }
    target
}

fn set_retry(f: &Fetcher, id: PartitionId, generation: u64) {
    with_followed(f, id, generation, |x| {
        x.retry_at = Some(Instant::now() + PARTITION_BACKOFF)
    });
}

/// One Fetch round for `ids`: appends what the leader sends, syncs it when the flush policy
/// does for acks=all, and takes the leader's HW.
async fn fetch(
    f: &Rc<Fetcher>,
    conn: &mut LeaderConn,
    node_id: i32,
    sync: bool,
    frame_bytes_max: usize,
    ids: &[(PartitionId, u64)],
) -> Result<(), FetchError> {
    let ids = still_followed(f, ids);
    let mut topics: Vec<FetchTopic> = Vec::new();
    // (id, generation, topic, partition)
    let mut sent = Vec::with_capacity(ids.len());
    for (id, generation) in ids {
        let Some((p, topic, epoch)) = with_followed(f, id, generation, |x| {
            (x.partition.clone(), x.topic.clone(), x.epoch)
        }) else {
            continue;
        };
        let part = FetchPartition::default()
            .with_partition(id.index)
            .with_current_leader_epoch(epoch)
            .with_fetch_offset(log_end(&p.log))
            .with_last_fetched_epoch(p.log.latest_epoch().unwrap_or(UNDEFINED_EPOCH))
            .with_log_start_offset(p.log.log_start_offset())
            .with_partition_max_bytes(FETCH_PARTITION_BYTES_MAX);
        match topics.iter_mut().find(|t| t.topic.0.as_str() == topic) {
            Some(t) => t.partitions.push(part),
            None => topics.push(
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                    .with_partitions(vec![part]),
            ),
        }
        sent.push((id, generation, topic, p));
    }
    if sent.is_empty() {
        return Ok(());
    }
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(node_id))
        .with_max_wait_ms(FETCH_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_RESPONSE_BYTES_MAX)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(topics);
    let Some(response) = unless_stopped(
        f,
        conn.call::<_, FetchResponse>(
            ApiKey::Fetch,
            FETCH_VERSION,
            &request,
            node_id,
            frame_bytes_max,
        ),
    )
    .await
    else {
        return Ok(());
    };
    let response = response?;
    if response.error_code != errors::NONE {
        return Err(FetchError::Protocol(format!(
            "Fetch refused whole: error {}",
            response.error_code
        )));
    }
    for t in response.responses {
        for r in t.partitions {
            let Some((id, generation, topic, p)) = sent
                .iter()
                .find(|s| s.2 == t.topic.0.as_str() && s.0.index == r.partition_index)
            else {
                continue;
            };
            // Unfollowed or refollowed meanwhile: the data is for a role that ended.
            if with_followed(f, *id, *generation, |_| ()).is_none() {
                continue;
            }
            apply_fetched(f, p, topic, *id, *generation, r, sync).await;
        }
    }
    Ok(())
}

async fn apply_fetched(
    f: &Fetcher,
    p: &Rc<Partition>,
    topic: &str,
    id: PartitionId,
    generation: u64,
    r: kafka_protocol::messages::fetch_response::PartitionData,
    sync: bool,
) {
    match r.error_code {
        errors::NONE => {
            if r.diverging_epoch.epoch >= 0 {
                // A Kafka leader saw our last epoch diverge (KIP-320): reconcile again.
                with_followed(f, id, generation, |x| x.truncated = false);
                return;
            }
            let records = r.records.unwrap_or_default();
            if !records.is_empty() {
                if let Some(base) = starts_before_empty_log(&p.log, &records) {
                    // The leader's log start is inside its first batch (DeleteRecords): as
                    // Kafka does, our empty log starts at that batch instead.
                    tracing::info!(topic, partition = id.index, base, "the leader's first batch starts before our empty log: starting the log at it");
                    if let Err(e) = p.log.truncate_fully_and_start_at(base).await {
                        tracing::error!(topic, partition = id.index, error = %e, "could not restart the log");
                        set_retry(f, id, generation);
                        return;
                    }
                }
                let appended = p.log.append_replicated(records.clone()).await;
                let end = match appended {
                    Ok(end) => end,
                    Err(e) => {
                        tracing::error!(topic, partition = id.index, error = %e, "could not append replicated batches");
                        // Reconcile with the leader before trying again.
                        with_followed(f, id, generation, |x| {
                            x.truncated = false;
                            x.retry_at = Some(Instant::now() + PARTITION_BACKOFF);
                        });
                        return;
                    }
                };
                p.producers.record_replicated(&records);
                if sync {
                    if let Err(e) = p.log.sync_to(end).await {
                        tracing::error!(topic, partition = id.index, error = %e, "could not sync replicated batches");
                        set_retry(f, id, generation);
                        return;
                    }
                }
            }
            // The leader's log start moved (DeleteRecords, retention): follow it.
            if r.log_start_offset > p.log.log_start_offset()
                && r.log_start_offset <= log_end(&p.log)
            {
                if let Err(e) = p.log.delete_records_before(r.log_start_offset).await {
                    tracing::warn!(topic, partition = id.index, error = %e, "could not move the log start to the leader's");
                }
            }
            if r.high_watermark >= 0 {
                p.replica.hw.set(r.high_watermark.min(log_end(&p.log)));
            }
        }
        errors::OFFSET_OUT_OF_RANGE => {
            let end = log_end(&p.log);
            if r.log_start_offset >= 0 && end < r.log_start_offset {
                tracing::info!(
                    topic,
                    partition = id.index,
                    from = end,
                    to = r.log_start_offset,
                    "behind the leader's log start: restarting the log there"
                );
                match p.log.truncate_fully_and_start_at(r.log_start_offset).await {
                    // Nothing of the old log is left: neither are its producers.
                    Ok(()) => crate::producer_state::restore(topic, id.index, &p.log, false).await,
                    Err(e) => {
                        tracing::error!(topic, partition = id.index, error = %e, "could not restart the log");
                        set_retry(f, id, generation);
                    }
                }
            } else {
                // Ahead of the leader's end: reconcile.
                with_followed(f, id, generation, |x| x.truncated = false);
            }
        }
        code => {
            tracing::debug!(
                topic,
                partition = id.index,
                error = code,
                "leader refused the fetch; waiting for new metadata"
            );
            set_retry(f, id, generation);
        }
    }
}

/// The base offset of the first of `records` when our log is empty and that batch starts
/// before the log's start yet ends at or after it (the leader's log start fell inside it).
fn starts_before_empty_log(log: &ringbroker_storage::PartitionLog, records: &[u8]) -> Option<i64> {
    let end = log_end(log);
    if end != log.log_start_offset() {
        return None;
    }
    let h = ringbroker_protocol::batch::BatchHeader::parse(records).ok()?;
    let last = h.base_offset + i64::from(h.last_offset_delta);
    (h.base_offset < end && last >= end).then_some(h.base_offset)
}

/// A connection to a leader's Kafka listener.
/// The connection's byte stream: the socket, or TLS over it.
enum Wire {
    Plain(SharedFd),
    Tls(Box<crate::security::tls::TlsStream>),
}

struct LeaderConn {
    wire: Wire,
    buf: BytesMut,
    correlation_id: i32,
    /// SASL: the inter-broker credentials, and when the session the leader granted needs
    /// renewing (KIP-368; `None`: never).
    sasl: Option<(crate::security::SaslMechanism, String, String)>,
    reauth_at: Option<Instant>,
    /// A re-authentication failed: the connection ends with this.
    auth_failed: Option<FetchError>,
}

thread_local! {
    /// This shard's TLS client configuration for inter-broker connections (built on first
    /// use from the PEM files; an error is kept and logged on every connection attempt).
    static TLS_CLIENT: RefCell<Option<std::sync::Arc<rustls::ClientConfig>>> =
        const { RefCell::new(None) };
}

/// The TLS client configuration followers use: trusting `--tls-ca-file` (default
/// `--tls-client-ca-file`), presenting this broker's certificate.
fn tls_client_config() -> Result<std::sync::Arc<rustls::ClientConfig>, FetchError> {
    if let Some(c) = TLS_CLIENT.with(|c| c.borrow().clone()) {
        return Ok(c);
    }
    let shard = crate::shard::current();
    let security = &shard.shared.config.security;
    let files = security.tls.as_ref().ok_or_else(|| {
        FetchError::Tls("the inter-broker listener uses TLS but --tls-cert-file is not set".into())
    })?;
    let ca = security
        .inter_broker_tls_ca
        .as_ref()
        .or(files.client_ca.as_ref())
        .ok_or_else(|| {
            FetchError::Tls(
                "the inter-broker listener uses TLS: give --tls-ca-file (or --tls-client-ca-file)"
                    .into(),
            )
        })?;
    let config = crate::security::tls::client_config(ca, Some((&files.cert, &files.key)))
        .map_err(|e| FetchError::Tls(e.to_string()))?;
    let config = std::sync::Arc::new(config);
    TLS_CLIENT.with(|c| *c.borrow_mut() = Some(config.clone()));
    Ok(config)
}

impl LeaderConn {
    /// A connection to the leader over `fd` on a listener of `protocol`: TLS handshake
    /// (verifying `host`) and SASL authentication as that protocol needs.
    async fn open(
        fd: SharedFd,
        protocol: SecurityProtocol,
        host: &str,
    ) -> Result<LeaderConn, FetchError> {
        let wire = if protocol.uses_tls() {
            let config = tls_client_config()?;
            let conn = crate::security::tls::client_connection(config, host)
                .map_err(|e| FetchError::Tls(format!("{host}: {e}")))?;
            let stream = crate::security::tls::TlsStream::new(fd, conn);
            op::timeout(
                crate::security::tls::TLS_HANDSHAKE_TIMEOUT,
                stream.handshake(),
            )
            .await
            .ok_or(FetchError::Timeout(
                crate::security::tls::TLS_HANDSHAKE_TIMEOUT,
            ))?
            .map_err(|e| FetchError::Tls(format!("handshake with {host}: {e}")))?;
            Wire::Tls(Box::new(stream))
        } else {
            Wire::Plain(fd)
        };
        let mut conn = LeaderConn {
            wire,
            buf: BytesMut::with_capacity(64 << 10),
            correlation_id: 0,
            sasl: None,
            reauth_at: None,
            auth_failed: None,
        };
        if protocol.uses_sasl() {
            let shard = crate::shard::current();
            conn.sasl = Some(
                shard
                    .shared
                    .config
                    .security
                    .inter_broker_sasl
                    .clone()
                    .ok_or_else(|| {
                        FetchError::Sasl(
                            "the inter-broker listener uses SASL: give --inter-broker-user and \
                         --inter-broker-password-file"
                                .into(),
                        )
                    })?,
            );
            conn.authenticate().await;
            if let Some(e) = conn.auth_failed.take() {
                return Err(e);
            }
        }
        Ok(conn)
    }

    /// The session the leader granted ends soon: authenticate again.
    fn reauth_due(&self) -> bool {
        self.reauth_at.is_some_and(|at| Instant::now() >= at)
    }

    /// SaslHandshake + SaslAuthenticate as the inter-broker user; a failure is left in
    /// `auth_failed`.
    async fn authenticate(&mut self) {
        if let Err(e) = self.try_authenticate().await {
            self.auth_failed = Some(e);
        }
    }

    async fn try_authenticate(&mut self) -> Result<(), FetchError> {
        use crate::security::sasl_client::{SaslClient, Step};
        let Some((mechanism, user, password)) = self.sasl.clone() else {
            return Ok(());
        };
        let node_id = crate::shard::current().shared.node_id;
        let handshake: SaslHandshakeResponse = self
            .call(
                ApiKey::SaslHandshake,
                SASL_HANDSHAKE_VERSION,
                &SaslHandshakeRequest::default()
                    .with_mechanism(StrBytes::from_static_str(mechanism.name())),
                node_id,
                SASL_FRAME_BYTES_MAX,
            )
            .await?;
        if handshake.error_code != errors::NONE {
            let offered: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(FetchError::Sasl(format!(
                "the leader does not take {} (error {}; it offers {offered:?})",
                mechanism.name(),
                handshake.error_code
            )));
        }
        let mut client = SaslClient::new(mechanism, &user, &password)
            .map_err(|e| FetchError::Sasl(e.to_string()))?;
        let mut message = client.initial();
        for _ in 0..SASL_ROUNDS_MAX {
            let answer: SaslAuthenticateResponse = self
                .call(
                    ApiKey::SaslAuthenticate,
                    SASL_AUTHENTICATE_VERSION,
                    &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(message)),
                    node_id,
                    SASL_FRAME_BYTES_MAX,
                )
                .await?;
            if answer.error_code != errors::NONE {
                return Err(FetchError::Sasl(format!(
                    "as {user} with {}: error {} {}",
                    mechanism.name(),
                    answer.error_code,
                    answer.error_message.as_deref().unwrap_or("")
                )));
            }
            match client
                .step(&answer.auth_bytes)
                .map_err(|e| FetchError::Sasl(e.to_string()))?
            {
                Step::Send(next) => message = next,
                Step::Done => {
                    self.reauth_at = u64::try_from(answer.session_lifetime_ms)
                        .ok()
                        .filter(|&ms| ms > 0)
                        .map(|ms| {
                            let lifetime = Duration::from_millis(ms);
                            let early = REAUTH_MARGIN.min(lifetime / 2);
                            Instant::now() + (lifetime - early)
                        });
                    return Ok(());
                }
            }
        }
        Err(FetchError::Sasl(format!(
            "no outcome after {SASL_ROUNDS_MAX} rounds"
        )))
    }

    /// Sends one request and waits for its answer (one request in flight at a time).
    async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
        node_id: i32,
        frame_bytes_max: usize,
    ) -> Result<Resp, FetchError> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let correlation_id = self.correlation_id;
        let frame = encode_request(api, version, correlation_id, request, node_id)?;
        match &self.wire {
            Wire::Plain(fd) => op::send_all(fd, vec![frame]).await?,
            Wire::Tls(s) => {
                s.send_chunks(vec![ringbroker_runtime::chunk::Chunk::Mem(frame)])
                    .await?
            }
        }
        let body = op::timeout(RESPONSE_WAIT_MAX, self.next_frame(frame_bytes_max))
            .await
            .ok_or(FetchError::Timeout(RESPONSE_WAIT_MAX))??;
        decode_response(api, version, correlation_id, body)
    }

    async fn next_frame(&mut self, frame_bytes_max: usize) -> Result<Bytes, FetchError> {
        loop {
            match next_frame(&mut self.buf, frame_bytes_max)
                .map_err(|e| FetchError::Protocol(e.to_string()))?
            {
                Next::Frame(body) => return Ok(body),
                Next::NeedMore { total } => {
                    let want = total.unwrap_or(0).max(self.buf.len() + (64 << 10));
                    if self.buf.capacity() < want {
                        self.buf.reserve(want - self.buf.len());
                    }
                }
            }
            let buf = std::mem::take(&mut self.buf);
            let (result, buf) = match &self.wire {
                Wire::Plain(fd) => op::recv(fd, buf).await,
                Wire::Tls(s) => s.recv(buf).await,
            };
            self.buf = buf;
            if result? == 0 {
                return Err(FetchError::Closed);
            }
        }
    }
}

/// A request frame: size, header, body.
fn encode_request<Req: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &Req,
    node_id: i32,
) -> Result<Bytes, FetchError> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(format!(
            "ringbroker-replica-{node_id}"
        ))));
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    header
        .encode(&mut buf, api.request_header_version(version))
        .map_err(|e| FetchError::Protocol(format!("encoding a {api:?} header: {e}")))?;
    request
        .encode(&mut buf, version)
        .map_err(|e| FetchError::Protocol(format!("encoding {api:?} v{version}: {e}")))?;
    let len = i32::try_from(buf.len() - 4)
        .map_err(|_| FetchError::Protocol(format!("{api:?} request over 2 GiB")))?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

fn decode_response<Resp: Decodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    mut frame: Bytes,
) -> Result<Resp, FetchError> {
    let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
        .map_err(|e| FetchError::Protocol(format!("{api:?} response header: {e}")))?;
    if header.correlation_id != correlation_id {
        return Err(FetchError::Protocol(format!(
            "{api:?} answer has correlation id {}, expected {correlation_id}",
            header.correlation_id
        )));
    }
    Resp::decode(&mut frame, version)
        .map_err(|e| FetchError::Protocol(format!("{api:?} v{version} answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_follows_kip_279() {
        let ours = |e: i32| match e {
            3 => 80,
            5 => 120,
            _ => -1,
        };
        // The leader has our epoch and ends it earlier: cut there.
        assert_eq!(truncation_target(5, 5, 100, 120, 50, ours), 100);
        // The leader has more of our epoch than we do: keep ours.
        assert_eq!(truncation_target(5, 5, 150, 120, 50, ours), 120);
        // The leader never had our epoch 5, its latest before is 3 ending at 90: no further
        // than where epoch 3 ends here (80).
        assert_eq!(truncation_target(5, 3, 90, 120, 50, ours), 80);
        // Undefined: back to the HW we know.
        assert_eq!(truncation_target(5, -1, -1, 120, 50, ours), 50);
        assert_eq!(truncation_target(5, -1, -1, 40, 50, ours), 40);
    }

    #[test]
    fn an_empty_log_starts_at_the_batch_holding_the_leaders_log_start() {
        let dir = tempfile::tempdir().unwrap();
        ringbroker_runtime::block_on(async move {
            let log = ringbroker_storage::PartitionLog::open(
                dir.path(),
                ringbroker_storage::LogConfig::default(),
            )
            .unwrap();
            let b = super::super::tests::batch(5); // offsets 0..=4
            assert_eq!(starts_before_empty_log(&log, &b), None);
            log.truncate_fully_and_start_at(3).await.unwrap();
            assert_eq!(starts_before_empty_log(&log, &b), Some(0));
            log.truncate_fully_and_start_at(5).await.unwrap();
            assert_eq!(starts_before_empty_log(&log, &b), None);
            // Not empty: appends must follow on as usual.
            log.truncate_fully_and_start_at(0).await.unwrap();
            assert_eq!(log.append_replicated(b.clone()).await.unwrap(), 5);
            assert_eq!(starts_before_empty_log(&log, &b), None);
        })
        .unwrap();
    }

    #[test]
    fn requests_are_framed_and_answers_checked() {
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(2))
            .with_max_wait_ms(FETCH_WAIT_MS);
        let frame = encode_request(ApiKey::Fetch, FETCH_VERSION, 7, &request, 2).unwrap();
        let len = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(len, frame.len() - 4);
        let mut body = frame.slice(4..);
        let header = RequestHeader::decode(
            &mut body,
            ApiKey::Fetch.request_header_version(FETCH_VERSION),
        )
        .unwrap();
        assert_eq!(header.correlation_id, 7);
        let back = FetchRequest::decode(&mut body, FETCH_VERSION).unwrap();
        assert_eq!(back.replica_id, BrokerId(2));
        // An answer with another correlation id is refused.
        let mut answer = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(8)
            .encode(
                &mut answer,
                ApiKey::Fetch.response_header_version(FETCH_VERSION),
            )
            .unwrap();
        FetchResponse::default()
            .encode(&mut answer, FETCH_VERSION)
            .unwrap();
        let e = decode_response::<FetchResponse>(ApiKey::Fetch, FETCH_VERSION, 7, answer.freeze());
        assert!(matches!(e, Err(FetchError::Protocol(_))));
    }
}
