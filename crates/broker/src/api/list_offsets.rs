//! ListOffsets: the earliest (-2), latest (-1), max-timestamp (-3, KIP-734), earliest local
//! (-4: no tiered storage, so the earliest) and latest tiered (-5: nothing is tiered, offset
//! -1 as Kafka answers without remote storage) offsets of partitions, and the first offset at
//! or after a timestamp. Timestamp lookups are exact inside compressed batches too: storage
//! finds the batch through each segment's time index, and only that batch is decompressed,
//! walking at most `lookup_decompressed_bytes_max` of it (beyond: the batch's first offset and
//! max timestamp). A partition named twice in one request gets INVALID_REQUEST, as in Kafka.
//!
//! Fields by version: v2 `isolation_level` (no transactions: read-committed sees the high
//! watermark too), v4 `current_leader_epoch` in the request (checked as Kafka does: newer
//! than this node's epoch 0 is UNKNOWN_LEADER_EPOCH, older than it but not -1 is
//! FENCED_LEADER_EPOCH) and `leader_epoch` in the answer, v6 flexible encoding, v7-v9 the
//! special timestamps above, v10 `timeout_ms`, which bounds waits for remote storage, which
//! this broker has not.

use super::{decode_body, respond, Outcome};
use crate::acl;
use crate::api::{refuse_over, repeated_partitions};
use crate::errors;
use crate::limits::{lookup_decompressed_bytes_max, REQUEST_PARTITIONS_MAX};
use crate::security::authorizer::{on_cluster, on_topic};
use crate::shard;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use ringbroker_protocol::records;
use ringbroker_protocol::request::Request;
use ringbroker_storage::{PartitionLog, ReadError};

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;
use super::offset_for_leader_epoch::LEADER_EPOCH;

/// One partition's answer: error, offset, timestamp, leader epoch.
type Found = (i16, i64, i64, i32);

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: ListOffsetsRequest = decode_body(&mut req)?;
    let asked: usize = body.topics.iter().map(|t| t.partitions.len()).sum();
    refuse_over("ListOffsets", "partitions", asked, REQUEST_PARTITIONS_MAX)?;
    // Kafka's rule: a partition named twice gets INVALID_REQUEST for each entry.
    let repeated = repeated_partitions(body.topics.iter().flat_map(|t| {
        t.partitions
            .iter()
            .map(|p| (t.name.0.as_str(), p.partition_index))
    }));
    let shard = shard::current();
    let alone = shard.shared.cluster.is_none();
    let mut topics = Vec::with_capacity(body.topics.len());
    // A replica's request needs CLUSTER_ACTION, a client's DESCRIBE on each topic.
    let replica = body.replica_id.0 >= 0;
    let replica_allowed = !replica || on_cluster(conn, acl::CLUSTER_ACTION);
    for t in body.topics {
        let topic = shard.topic(&t.name.0);
        let allowed = replica_allowed && (replica || on_topic(conn, acl::DESCRIBE, &t.name.0));
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let index = p.partition_index;
            let twice = !repeated.is_empty() && repeated.contains(&(t.name.0.to_string(), index));
            let (error, offset, timestamp, leader_epoch) = match &topic {
                _ if !allowed => (errors::TOPIC_AUTHORIZATION_FAILED, -1, -1, -1),
                _ if twice => (errors::INVALID_REQUEST, -1, -1, -1),
                None => (errors::UNKNOWN_TOPIC_OR_PARTITION, -1, -1, -1),
                Some(_) if p.timestamp < LATEST_TIERED => (errors::INVALID_REQUEST, -1, -1, -1),
                // A single node leads at epoch 0; a cluster member checks on the owner.
                Some(_) if alone && p.current_leader_epoch > LEADER_EPOCH => {
                    (errors::UNKNOWN_LEADER_EPOCH, -1, -1, -1)
                }
                Some(_) if alone && p.current_leader_epoch < -1 => {
                    (errors::FENCED_LEADER_EPOCH, -1, -1, -1)
                }
                Some(topic) => {
                    let (which, epoch) = (p.timestamp, p.current_leader_epoch);
                    let found = shard::on_owned_partition(topic, index, move |p| async move {
                        match crate::replication::list_offsets_access(&p, epoch) {
                            Err(code) => (code, -1, -1, -1),
                            Ok(hw) => {
                                let leader_epoch = p.replica.leader_epoch().unwrap_or(0);
                                lookup(p.log.clone(), which, hw, leader_epoch).await
                            }
                        }
                    })
                    .await;
                    found.unwrap_or((errors::UNKNOWN_TOPIC_OR_PARTITION, -1, -1, -1))
                }
            };
            let mut r = ListOffsetsPartitionResponse::default()
                .with_partition_index(index)
                .with_error_code(error)
                .with_timestamp(timestamp)
                .with_offset(offset);
            if req.version >= 4 {
                r = r.with_leader_epoch(leader_epoch);
            }
            partitions.push(r);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    Ok(respond(
        &req,
        &ListOffsetsResponse::default().with_topics(topics),
    ))
}

/// Answers one partition on its owner; `hw`: a replicated leader's high watermark (latest),
/// `leader_epoch`: the epoch found offsets are reported under.
async fn lookup(
    log: std::rc::Rc<PartitionLog>,
    which: i64,
    hw: Option<i64>,
    leader_epoch: i32,
) -> Found {
    let found = match which {
        LATEST => Ok(Some((hw.unwrap_or_else(|| log.high_watermark()), -1))),
        EARLIEST | EARLIEST_LOCAL => Ok(Some((log.log_start_offset(), -1))),
        LATEST_TIERED => return (errors::NONE, -1, -1, -1),
        MAX_TIMESTAMP => match log.max_timestamp() {
            Some(max) => first_at_or_after(&log, max).await,
            None => Ok(None),
        },
        ts => first_at_or_after(&log, ts).await,
    };
    // A replicated leader answers timestamp lookups only with records below its high
    // watermark (what consumers may read).
    let found = match (found, hw) {
        (Ok(Some((offset, _))), Some(hw))
            if (which >= 0 || which == MAX_TIMESTAMP) && offset >= hw =>
        {
            Ok(None)
        }
        (found, _) => found,
    };
    match found {
        Ok(Some((offset, ts))) => (errors::NONE, offset, ts, leader_epoch),
        // No record that recent (or an empty log): Kafka answers offset -1.
        Ok(None) => (errors::NONE, -1, -1, -1),
        Err(e) => {
            tracing::error!(dir = %log.dir().display(), error = %e, "timestamp lookup failed");
            (errors::KAFKA_STORAGE_ERROR, -1, -1, -1)
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum LookupError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Records(#[from] records::RecordsError),
}

/// The first record at or after `timestamp` at or above the log start: `(offset, timestamp)`.
async fn first_at_or_after(
    log: &PartitionLog,
    timestamp: i64,
) -> Result<Option<(i64, i64)>, LookupError> {
    let mut from = log.log_start_offset();
    // Each pass moves `from` past a whole batch, so this ends with the log.
    loop {
        let Some(batch) = log.batch_for_timestamp(timestamp, from).await? else {
            return Ok(None);
        };
        let frame = ringbroker_storage::frame::BatchFrame::parse(&batch)
            .ok_or(records::RecordsError::BadHeader)?;
        let bytes_max = lookup_decompressed_bytes_max(batch.len());
        match records::first_at_or_after(&batch, timestamp, from, bytes_max) {
            Ok(Some(found)) => return Ok(Some(found)),
            Ok(None) => {}
            // A batch that expands far beyond its size (a decompression bomb, or a freak):
            // answered approximately, as compressed batches were before exact lookups.
            Err(records::RecordsError::TooLarge) => {
                crate::warn_limited!(
                    dir = %log.dir().display(),
                    base_offset = frame.base_offset,
                    batch_bytes = batch.len(),
                    bytes_max,
                    "timestamp lookup: batch expands beyond the lookup bound; answering its first offset"
                );
                return Ok(Some((frame.base_offset.max(from), frame.max_timestamp)));
            }
            Err(e) => return Err(e.into()),
        }
        let next = frame.next_offset();
        if next <= from {
            return Ok(None); // storage found no batch past `from` after all
        }
        from = next;
    }
}
