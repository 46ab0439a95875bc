//! DescribeProducers (KIP-664): per partition, the idempotent producers its state knows
//! (asked on the owner shard): id, epoch, the last sequence written, and the max timestamp
//! of that last batch (read from the log; -1 once the batch is below the log start). No
//! transactions exist, so the coordinator epoch and transaction start offset are -1.

use super::{decode_body, refuse_over, respond, Outcome};
use crate::errors;
use crate::limits::REQUEST_PARTITIONS_MAX;
use crate::shard;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};
use ringbroker_protocol::request::Request;
use ringbroker_storage::frame::BatchFrame;

pub async fn handle(mut req: Request) -> Result<Outcome, Outcome> {
    let body: DescribeProducersRequest = decode_body(&mut req)?;
    let asked: usize = body.topics.iter().map(|t| t.partition_indexes.len()).sum();
    refuse_over(
        "DescribeProducers",
        "partitions",
        asked,
        REQUEST_PARTITIONS_MAX,
    )?;
    let shard = shard::current();
    let mut topics = Vec::with_capacity(body.topics.len());
    for t in body.topics {
        let topic = shard.topic(&t.name.0);
        let mut partitions = Vec::with_capacity(t.partition_indexes.len());
        for index in t.partition_indexes {
            let found = match &topic {
                None => None,
                Some(topic) => {
                    shard::on_owned_partition(topic, index, |p| async move {
                        let mut out = Vec::new();
                        for a in p.producers.active() {
                            out.push((a, last_timestamp(&p.log, a.last_batch_offset).await));
                        }
                        out
                    })
                    .await
                }
            };
            let r = PartitionResponse::default().with_partition_index(index);
            partitions.push(match found {
                None => r.with_error_code(errors::UNKNOWN_TOPIC_OR_PARTITION),
                Some(producers) => r.with_active_producers(
                    producers
                        .into_iter()
                        .map(|(a, last_timestamp)| {
                            ProducerState::default()
                                .with_producer_id(ProducerId(a.producer_id))
                                .with_producer_epoch(a.epoch as i32)
                                .with_last_sequence(a.last_sequence)
                                .with_last_timestamp(last_timestamp)
                                .with_coordinator_epoch(-1)
                                .with_current_txn_start_offset(-1)
                        })
                        .collect(),
                ),
            });
        }
        topics.push(
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    Ok(respond(
        &req,
        &DescribeProducersResponse::default().with_topics(topics),
    ))
}

/// The max timestamp of the batch at `offset`; -1 when it cannot be read (deleted).
async fn last_timestamp(log: &ringbroker_storage::PartitionLog, offset: i64) -> i64 {
    match log.read(offset, 1).await {
        Ok(r) => BatchFrame::parse(&r.records).map_or(-1, |f| f.max_timestamp),
        Err(_) => -1,
    }
}

impl crate::stats::ErrorCodes for DescribeProducersResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        for t in &self.topics {
            t.partitions.iter().for_each(|p| f(p.error_code));
        }
    }
}
