//! Fetch: whole batches from each partition's owner, bounded by the high watermark, the
//! partition and response byte limits, both clamped to `--fetch-max-bytes` (always at least
//! one batch, KIP-74; a batch is bounded by `--max-message-bytes`), with long polling:
//! when fewer than `min_bytes` are ready the request waits for an append on any of its
//! partitions, or for `max_wait_ms`. Sessions (KIP-227) are not offered: every response has
//! session id 0, which tells clients to send full requests.

use super::{decode_body, respond, Outcome};
use crate::api::refuse_over;
use crate::connection::Conn;
use crate::errors;
use crate::limits::{FETCH_WAIT_MS_MAX, REQUEST_PARTITIONS_MAX};
use crate::metadata::TopicInfo;
use crate::replication;
use crate::shard;
use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use ringbroker_protocol::gather::{placeholder, Piece};
use ringbroker_protocol::request::Request;
use ringbroker_protocol::response::encode_response_gather;
use ringbroker_runtime::chunk::{Chunk, FileSlice};
use ringbroker_runtime::executor::spawn;
use ringbroker_runtime::notify::Notify;
use ringbroker_runtime::op;
use ringbroker_storage::ReadError;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First Fetch version that names topics by id.
const TOPIC_ID_VERSION: i16 = 13;
const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
/// First Fetch version that carries the follower's id in `replica_state`.
const REPLICA_STATE_VERSION: i16 = 15;

/// The most record bytes a response carries: the client's `max_bytes` (0 or less: no limit of
/// its own) clamped to the broker's `--fetch-max-bytes`.
fn response_bytes_max(requested: i32, fetch_bytes_max: usize) -> usize {
    match usize::try_from(requested) {
        Ok(n) if n > 0 => n.min(fetch_bytes_max),
        _ => fetch_bytes_max,
    }
}

/// The most bytes read from one partition: its `partition_max_bytes` clamped to the response's
/// limit (the read still returns the first batch whole when it is larger, KIP-74).
fn partition_bytes_max(requested: i32, response_bytes_max: usize) -> usize {
    usize::try_from(requested)
        .unwrap_or(0)
        .min(response_bytes_max)
}

struct Wanted {
    partition: i32,
    offset: i64,
    max_bytes: usize,
    /// KIP-320: the leader epoch the fetcher knows (-1: not checked).
    current_leader_epoch: i32,
}

struct Got {
    error: i16,
    high_watermark: i64,
    log_start_offset: i64,
    /// The partition's batches, still in their segment file.
    slice: Option<FileSlice>,
}

impl Got {
    fn len(&self) -> usize {
        self.slice.as_ref().map_or(0, |s| s.len as usize)
    }
}

/// Reads one partition on its owner. `replica_id` ≥ 0: a follower's fetch (read to the log
/// end, recorded by the leader); else a consumer's (read below the high watermark).
async fn read_partition(
    topic: &Option<Arc<TopicInfo>>,
    unknown_code: i16,
    w: &Wanted,
    replica_id: i32,
) -> Got {
    let missing = Got {
        error: unknown_code,
        high_watermark: -1,
        log_start_offset: -1,
        slice: None,
    };
    let Some(topic) = topic else { return missing };
    let (offset, max_bytes, epoch) = (w.offset, w.max_bytes, w.current_leader_epoch);
    let result = shard::on_owned_partition(topic, w.partition, move |p| async move {
        let access = replication::fetch_access(&shard::current(), &p, replica_id, epoch, offset);
        let log = &p.log;
        let read = match access {
            Err(error) => {
                return Got {
                    error,
                    high_watermark: -1,
                    log_start_offset: -1,
                    slice: None,
                }
            }
            Ok(None) => log.read_slice(offset, max_bytes).await,
            // A consumer of a replicated leader: nothing at or past the high watermark.
            Ok(Some(hw)) if offset >= hw && offset <= log.log_end_offset() => {
                Ok(ringbroker_storage::SliceResult {
                    slice: None,
                    high_watermark: hw,
                    log_start_offset: log.log_start_offset(),
                })
            }
            Ok(Some(hw)) => log.read_slice_until(offset, max_bytes, hw).await,
        };
        let replicated = !p.replica.is_alone();
        match read {
            Ok(r) => Got {
                error: errors::NONE,
                high_watermark: if replicated {
                    replication::high_watermark(&p)
                } else {
                    r.high_watermark
                },
                log_start_offset: r.log_start_offset,
                slice: r.slice,
            },
            Err(e) => {
                let error = match e {
                    ReadError::OutOfRange { .. } => errors::OFFSET_OUT_OF_RANGE,
                    ReadError::Io(_) | ReadError::Corrupt { .. } => {
                        tracing::error!(dir = %log.dir().display(), error = %e, "read failed");
                        errors::KAFKA_STORAGE_ERROR
                    }
                };
                Got {
                    error,
                    high_watermark: if replicated {
                        replication::high_watermark(&p)
                    } else {
                        log.high_watermark()
                    },
                    log_start_offset: log.log_start_offset(),
                    slice: None,
                }
            }
        }
    })
    .await;
    result.unwrap_or(missing)
}

pub async fn handle(mut req: Request, conn: &Conn) -> Result<Outcome, Outcome> {
    let body: FetchRequest = decode_body(&mut req)?;
    let v = req.version;
    let shard = shard::current();
    // A follower's fetch names its broker (v15+ in `replica_state`); consumers send -1.
    let replica_id = if v >= REPLICA_STATE_VERSION {
        body.replica_state.replica_id.0
    } else {
        body.replica_id.0
    };
    if body.session_id != 0 {
        let response = FetchResponse::default().with_error_code(FETCH_SESSION_ID_NOT_FOUND);
        return Ok(respond(&req, &response));
    }
    let asked: usize = body.topics.iter().map(|t| t.partitions.len()).sum();
    refuse_over("Fetch", "partitions", asked, REQUEST_PARTITIONS_MAX)?;
    let max_bytes = response_bytes_max(body.max_bytes, shard.shared.config.fetch_bytes_max);
    let unknown_code = if v >= TOPIC_ID_VERSION {
        errors::UNKNOWN_TOPIC_ID
    } else {
        errors::UNKNOWN_TOPIC_OR_PARTITION
    };
    // A follower's fetch needs CLUSTER_ACTION on the cluster, a consumer's READ on each
    // topic (refused: TOPIC_AUTHORIZATION_FAILED; an unknown topic id stays unknown).
    let follower_allowed = replica_id < 0
        || crate::security::authorize(
            conn,
            crate::acl::CLUSTER_ACTION,
            crate::security::resource::CLUSTER,
            crate::security::resource::CLUSTER_NAME,
        );
    let wanted: Vec<_> = body
        .topics
        .into_iter()
        .map(|t| {
            let info = if v >= TOPIC_ID_VERSION {
                shard.topic_by_id(&t.topic_id)
            } else {
                shard.topic(&t.topic.0)
            };
            let name: &str = match &info {
                Some(i) => &i.name,
                None => &t.topic.0,
            };
            let known = v < TOPIC_ID_VERSION || info.is_some();
            let denied = known
                && !(follower_allowed
                    && (replica_id >= 0
                        || crate::security::authorize(
                            conn,
                            crate::acl::READ,
                            crate::security::resource::TOPIC,
                            name,
                        )));
            let info = if denied { None } else { info };
            let parts: Vec<Wanted> = t
                .partitions
                .iter()
                .map(|p| {
                    if let Some(owner) = info.as_ref().and_then(|i| i.owner(p.partition)) {
                        conn.touched(owner);
                    }
                    Wanted {
                        partition: p.partition,
                        offset: p.fetch_offset,
                        max_bytes: partition_bytes_max(p.partition_max_bytes, max_bytes),
                        current_leader_epoch: p.current_leader_epoch,
                    }
                })
                .collect();
            (t.topic, t.topic_id, info, parts, denied)
        })
        .collect();
    let wanted = Rc::new(wanted);
    let max_wait = long_poll_wait(body.max_wait_ms);
    let deadline = Instant::now() + max_wait;
    let min_bytes = body.min_bytes.max(0) as usize;
    let results = loop {
        let results = read_all(&wanted, unknown_code, replica_id).await;
        let ready: usize = results.iter().flatten().map(Got::len).sum();
        let any_error = results.iter().flatten().any(|g| g.error != errors::NONE);
        let now = Instant::now();
        // A stopping shard answers with what is there rather than wait out the client's time.
        if ready >= min_bytes || any_error || now >= deadline || crate::server::draining() {
            break results;
        }
        // A long poll: the connection reads the requests behind this one meanwhile.
        let _parked = conn.park();
        wait_for_append(&wanted, &results, deadline - now, replica_id >= 0).await;
    };
    // Trim to the response limit, keeping at least the first non-empty partition. Each
    // partition's records are a placeholder of the slice's length, filled from the file below.
    let mut budget_used = 0usize;
    let mut slices: Vec<FileSlice> = Vec::new();
    let topics = wanted
        .iter()
        .zip(results)
        .map(|((name, id, _, parts, _), got)| {
            let partitions = parts
                .iter()
                .zip(got)
                .map(|(w, g)| {
                    let mut slice = g.slice;
                    let mut error = g.error;
                    if budget_used > 0
                        && budget_used + slice.as_ref().map_or(0, |s| s.len as usize) > max_bytes
                    {
                        slice = None;
                    }
                    let records = match slice.map(|s| (placeholder(s.len as usize), s)) {
                        Some((Ok(p), s)) => {
                            budget_used += s.len as usize;
                            slices.push(s);
                            p
                        }
                        // Only a batch written under a larger --max-message-bytes than the
                        // broker now allows can get here (start-up refuses settings that
                        // would let a new one).
                        Some((Err(e), _)) => {
                            crate::warn_limited!(partition = w.partition, error = %e, "batch too large to serve");
                            error = errors::MESSAGE_TOO_LARGE;
                            Bytes::new()
                        }
                        None => Bytes::new(),
                    };
                    let mut pd = PartitionData::default()
                        .with_partition_index(w.partition)
                        .with_error_code(error)
                        .with_high_watermark(g.high_watermark)
                        .with_last_stable_offset(g.high_watermark)
                        .with_aborted_transactions(Some(vec![]))
                        // librdkafka rejects a null records field: always send bytes.
                        .with_records(Some(records));
                    if v >= 5 {
                        pd = pd.with_log_start_offset(g.log_start_offset);
                    }
                    if v >= 11 {
                        pd = pd.with_preferred_read_replica(BrokerId(-1));
                    }
                    pd
                })
                .collect();
            let t = FetchableTopicResponse::default().with_partitions(partitions);
            if v >= TOPIC_ID_VERSION {
                t.with_topic_id(*id)
            } else {
                t.with_topic(name.clone())
            }
        })
        .collect();
    let response = FetchResponse::default().with_responses(topics);
    crate::stats::response_errors(req.api as i16, &response);
    let pieces = match encode_response_gather(req.api, v, req.header.correlation_id, &response) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(version = v, error = %e, "could not encode a Fetch response");
            return Err(Outcome::Close("internal error encoding Fetch".into()));
        }
    };
    let mut slices = slices.into_iter();
    let chunks = pieces
        .into_iter()
        .map(|piece| match piece {
            Piece::Mem(b) => Chunk::Mem(b),
            Piece::Hole(len) => {
                let s = slices.next().expect("one hole per file slice");
                debug_assert_eq!(len, s.len as usize);
                Chunk::File(s)
            }
        })
        .collect();
    debug_assert!(slices.next().is_none());
    Ok(Outcome::RespondChunks(chunks))
}

type WantedTopics = Vec<(
    kafka_protocol::messages::TopicName,
    uuid::Uuid,
    Option<Arc<TopicInfo>>,
    Vec<Wanted>,
    // Not authorized: answered TOPIC_AUTHORIZATION_FAILED, never read.
    bool,
)>;

/// Reads every wanted partition, in parallel across their owner shards.
async fn read_all(wanted: &Rc<WantedTopics>, unknown_code: i16, replica_id: i32) -> Vec<Vec<Got>> {
    let mut handles = Vec::new();
    for (ti, (_, _, info, parts, denied)) in wanted.iter().enumerate() {
        let unknown_code = if *denied {
            errors::TOPIC_AUTHORIZATION_FAILED
        } else {
            unknown_code
        };
        for pi in 0..parts.len() {
            let wanted = wanted.clone();
            let info = info.clone();
            handles.push((
                ti,
                spawn(async move {
                    read_partition(&info, unknown_code, &wanted[ti].3[pi], replica_id).await
                }),
            ));
        }
    }
    let mut out: Vec<Vec<Got>> = wanted.iter().map(|_| Vec::new()).collect();
    for (ti, h) in handles {
        out[ti].push(h.await.expect("read task finished"));
    }
    out
}

/// How long a Fetch may wait for `min_bytes`: the client's `max_wait_ms`, within
/// [0, `FETCH_WAIT_MS_MAX`].
fn long_poll_wait(max_wait_ms: i32) -> Duration {
    Duration::from_millis(max_wait_ms.clamp(0, FETCH_WAIT_MS_MAX) as u64)
}

/// Waits until any wanted partition's high watermark (its log end for a follower's fetch)
/// moves past what the last read saw (so new data exists), or for `wait`.
async fn wait_for_append(
    wanted: &WantedTopics,
    seen: &[Vec<Got>],
    wait: Duration,
    replica_fetch: bool,
) {
    let woke = Notify::new();
    let released = woke.notified();
    for ((_, _, info, parts, _), got) in wanted.iter().zip(seen) {
        let Some(topic) = info.clone() else { continue };
        for (w, g) in parts.iter().zip(got) {
            let (partition, woke) = (w.partition, woke.clone());
            let offset = w.offset.max(g.high_watermark);
            let topic = topic.clone();
            spawn(async move {
                shard::on_owned_partition(&topic, partition, move |p| async move {
                    let appended = p.log.appended();
                    op::timeout(wait, async {
                        loop {
                            let next = appended.notified();
                            if replication::readable_end(&p, replica_fetch) > offset {
                                return;
                            }
                            next.await;
                        }
                    })
                    .await;
                })
                .await;
                woke.notify_all();
            });
        }
    }
    op::timeout(wait, first_of(released, crate::server::drain_started())).await;
}

/// Resolves when either future does.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::FETCH_BYTES_MAX_DEFAULT;

    #[test]
    fn long_poll_waits_are_clamped_to_the_broker_limit() {
        assert_eq!(long_poll_wait(500), Duration::from_millis(500));
        assert_eq!(long_poll_wait(-1), Duration::ZERO);
        assert_eq!(long_poll_wait(i32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn client_byte_limits_are_clamped_to_the_broker_limit() {
        let broker = FETCH_BYTES_MAX_DEFAULT;
        // librdkafka's largest legal settings.
        let response = response_bytes_max(2_147_483_135, broker);
        assert_eq!(response, broker);
        assert_eq!(partition_bytes_max(1_000_000_000, response), broker);
        // Smaller client limits are kept.
        assert_eq!(response_bytes_max(1 << 20, broker), 1 << 20);
        assert_eq!(partition_bytes_max(4096, 1 << 20), 4096);
        // A partition never reads more than the whole response may carry.
        assert_eq!(partition_bytes_max(8 << 20, 1 << 20), 1 << 20);
        // No client limit (0 or negative) means the broker's.
        assert_eq!(response_bytes_max(0, broker), broker);
        assert_eq!(response_bytes_max(-1, broker), broker);
        // A negative partition limit reads only the first batch (KIP-74 keeps it whole).
        assert_eq!(partition_bytes_max(-5, broker), 0);
    }
}
