//! ListOffsets: the earliest (-2) and latest (-1) offsets of partitions. Lookups by
//! timestamp need the time index, which comes with the log engine; until then they are
//! answered with INVALID_REQUEST and said so in the log.

use super::{decode_body, respond, Outcome};
use crate::errors;
use crate::shard;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use ringbroker_protocol::request::Request;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

pub async fn handle(mut req: Request) -> Result<Outcome, Outcome> {
    let body: ListOffsetsRequest = decode_body(&mut req)?;
    let shard = shard::current();
    let mut topics = Vec::with_capacity(body.topics.len());
    for t in body.topics {
        let topic = shard.topic(&t.name.0);
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let index = p.partition_index;
            let (error, offset) = match &topic {
                None => (errors::UNKNOWN_TOPIC_OR_PARTITION, -1),
                Some(_) if p.timestamp != LATEST && p.timestamp != EARLIEST => {
                    tracing::info!(
                        timestamp = p.timestamp,
                        "ListOffsets by timestamp is not implemented yet"
                    );
                    (errors::INVALID_REQUEST, -1)
                }
                Some(topic) => {
                    let which = p.timestamp;
                    let offsets = shard::on_partition(topic, index, move |log| async move {
                        if which == LATEST {
                            log.high_watermark()
                        } else {
                            log.log_start_offset()
                        }
                    })
                    .await;
                    match offsets {
                        Some(o) => (errors::NONE, o),
                        None => (errors::UNKNOWN_TOPIC_OR_PARTITION, -1),
                    }
                }
            };
            let mut r = ListOffsetsPartitionResponse::default()
                .with_partition_index(index)
                .with_error_code(error)
                .with_timestamp(-1)
                .with_offset(offset);
            if req.version >= 4 && error == errors::NONE {
                r = r.with_leader_epoch(0);
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
