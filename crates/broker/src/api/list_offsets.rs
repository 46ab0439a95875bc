//! ListOffsets: the earliest (-2) and latest (-1) offsets of partitions, and the first offset
//! at or after a timestamp (through each segment's time index; exact for uncompressed batches,
//! the batch's first offset for compressed ones).

use super::{decode_body, respond, Outcome};
use crate::api::refuse_over;
use crate::errors;
use crate::limits::REQUEST_PARTITIONS_MAX;
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
    let asked: usize = body.topics.iter().map(|t| t.partitions.len()).sum();
    refuse_over("ListOffsets", "partitions", asked, REQUEST_PARTITIONS_MAX)?;
    let shard = shard::current();
    let mut topics = Vec::with_capacity(body.topics.len());
    for t in body.topics {
        let topic = shard.topic(&t.name.0);
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let index = p.partition_index;
            let (error, offset, timestamp) = match &topic {
                None => (errors::UNKNOWN_TOPIC_OR_PARTITION, -1, -1),
                Some(_) if p.timestamp < EARLIEST => (errors::INVALID_REQUEST, -1, -1),
                Some(topic) => {
                    let which = p.timestamp;
                    let found = shard::on_partition(topic, index, move |log| async move {
                        match which {
                            LATEST => Ok(Some((log.high_watermark(), -1))),
                            EARLIEST => Ok(Some((log.log_start_offset(), -1))),
                            ts => log.offset_for_timestamp(ts).await,
                        }
                    })
                    .await;
                    match found {
                        None => (errors::UNKNOWN_TOPIC_OR_PARTITION, -1, -1),
                        Some(Ok(Some((offset, ts)))) => (errors::NONE, offset, ts),
                        // No record that recent: Kafka answers offset -1.
                        Some(Ok(None)) => (errors::NONE, -1, -1),
                        Some(Err(e)) => {
                            tracing::error!(error = %e, "timestamp lookup failed");
                            (errors::KAFKA_STORAGE_ERROR, -1, -1)
                        }
                    }
                }
            };
            let mut r = ListOffsetsPartitionResponse::default()
                .with_partition_index(index)
                .with_error_code(error)
                .with_timestamp(timestamp)
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
