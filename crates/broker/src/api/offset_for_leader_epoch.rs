//! OffsetForLeaderEpoch (KIP-101, KIP-320): the end offset of a leader epoch, which consumers
//! use to validate their position after a leader change. This single node leads every
//! partition in epoch 0 for ever (Metadata and ListOffsets say so), so Kafka's leader epoch
//! cache here holds one entry, epoch 0 starting at the log start offset, and its answers are:
//! a `current_leader_epoch` newer than 0 is UNKNOWN_LEADER_EPOCH, an older one (below 0 but
//! not -1, which means "not checked") FENCED_LEADER_EPOCH; epoch 0 ends at the log end offset;
//! an epoch after 0 (or -1) is unknown (epoch -1, offset -1); an epoch before 0 answers
//! itself with the start offset of epoch 0. `replica_id` (v3+) changes nothing: there are no
//! followers, and without an authorizer a follower's request is answered like a consumer's.

use super::{decode_body, refuse_over, respond, Outcome};
use crate::acl;
use crate::errors;
use crate::limits::REQUEST_PARTITIONS_MAX;
use crate::security::authorizer::{on_cluster, on_topic};
use crate::shard;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use ringbroker_protocol::request::Request;

/// The one leader epoch of every partition.
pub const LEADER_EPOCH: i32 = 0;
/// Kafka's "no epoch" (and, for `current_leader_epoch`, "do not check").
const UNDEFINED_EPOCH: i32 = -1;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: OffsetForLeaderEpochRequest = decode_body(&mut req)?;
    let asked: usize = body.topics.iter().map(|t| t.partitions.len()).sum();
    refuse_over(
        "OffsetForLeaderEpoch",
        "partitions",
        asked,
        REQUEST_PARTITIONS_MAX,
    )?;
    let shard = shard::current();
    let alone = shard.shared.cluster.is_none();
    let replica_id = body.replica_id.0;
    let mut topics = Vec::with_capacity(body.topics.len());
    // A follower needs CLUSTER_ACTION (CLUSTER_AUTHORIZATION_FAILED), a client DESCRIBE on
    // each topic (TOPIC_AUTHORIZATION_FAILED).
    let refusal = if replica_id >= 0 {
        (!on_cluster(conn, acl::CLUSTER_ACTION)).then_some(errors::CLUSTER_AUTHORIZATION_FAILED)
    } else {
        None
    };
    for t in body.topics {
        let topic = shard.topic(&t.topic.0);
        let refusal = refusal.or_else(|| {
            (replica_id < 0 && !on_topic(conn, acl::DESCRIBE, &t.topic.0))
                .then_some(errors::TOPIC_AUTHORIZATION_FAILED)
        });
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let answer = EpochEndOffset::default()
                .with_partition(p.partition)
                .with_leader_epoch(UNDEFINED_EPOCH)
                .with_end_offset(-1);
            let current = p.current_leader_epoch;
            let answer = match &topic {
                _ if refusal.is_some() => answer.with_error_code(refusal.unwrap_or_default()),
                None => answer.with_error_code(errors::UNKNOWN_TOPIC_OR_PARTITION),
                // A cluster member answers from the partition's leader epoch cache.
                Some(topic) if !alone => {
                    let requested = p.leader_epoch;
                    let found =
                        shard::on_owned_partition(topic, p.partition, move |p| async move {
                            crate::replication::epoch_end_offset(&p, replica_id, current, requested)
                        })
                        .await;
                    match found {
                        None | Some(None) => {
                            answer.with_error_code(errors::UNKNOWN_TOPIC_OR_PARTITION)
                        }
                        Some(Some(Err(code))) => answer.with_error_code(code),
                        Some(Some(Ok((epoch, end)))) => {
                            answer.with_leader_epoch(epoch).with_end_offset(end)
                        }
                    }
                }
                Some(_) if current > LEADER_EPOCH => {
                    answer.with_error_code(errors::UNKNOWN_LEADER_EPOCH)
                }
                Some(_) if current != UNDEFINED_EPOCH && current < LEADER_EPOCH => {
                    answer.with_error_code(errors::FENCED_LEADER_EPOCH)
                }
                Some(topic) => {
                    let offsets = shard::on_partition(topic, p.partition, |log| async move {
                        (log.log_start_offset(), log.high_watermark())
                    })
                    .await;
                    match offsets {
                        None => answer.with_error_code(errors::UNKNOWN_TOPIC_OR_PARTITION),
                        Some((log_start, log_end)) => {
                            let (epoch, end) = end_offset_for(p.leader_epoch, log_start, log_end);
                            answer.with_leader_epoch(epoch).with_end_offset(end)
                        }
                    }
                }
            };
            partitions.push(answer);
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions),
        );
    }
    Ok(respond(
        &req,
        &OffsetForLeaderEpochResponse::default().with_topics(topics),
    ))
}

/// Kafka's `LeaderEpochFileCache.endOffsetFor` over a cache holding only epoch 0, which
/// starts at the log start offset: `(epoch, end offset)`.
fn end_offset_for(requested: i32, log_start: i64, log_end: i64) -> (i32, i64) {
    if requested == UNDEFINED_EPOCH || requested > LEADER_EPOCH {
        (UNDEFINED_EPOCH, -1)
    } else if requested == LEADER_EPOCH {
        (LEADER_EPOCH, log_end)
    } else {
        (requested, log_start)
    }
}

impl crate::stats::ErrorCodes for OffsetForLeaderEpochResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        for t in &self.topics {
            t.partitions.iter().for_each(|p| f(p.error_code));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_answer_as_kafkas_cache_with_one_entry() {
        assert_eq!(end_offset_for(0, 5, 42), (0, 42));
        assert_eq!(end_offset_for(1, 5, 42), (-1, -1));
        assert_eq!(end_offset_for(-1, 5, 42), (-1, -1));
        assert_eq!(end_offset_for(-3, 5, 42), (-3, 5));
    }
}
