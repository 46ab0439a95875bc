//! DescribeProducers (KIP-664): per partition, the idempotent producers its state knows
//! (asked on the owner shard): id, epoch, the last sequence written, and the max timestamp
//! of that last batch (kept in the producer state, as Kafka's `ProducerStateEntry` does; -1
//! when not known). No transactions exist, so the coordinator epoch and transaction start
//! offset are -1. A partition named twice gets INVALID_REQUEST for each entry (as ListOffsets
//! in Kafka), and the producers of one response are bounded by
//! `DESCRIBE_PRODUCERS_RESPONSE_PRODUCERS_MAX`: a partition that would pass it gets
//! INVALID_REQUEST.

use super::{decode_body, refuse_over, repeated_partitions, respond, Outcome};
use crate::errors;
use crate::limits::{DESCRIBE_PRODUCERS_RESPONSE_PRODUCERS_MAX, REQUEST_PARTITIONS_MAX};
use crate::shard;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};
use ringbroker_protocol::request::Request;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: DescribeProducersRequest = decode_body(&mut req)?;
    let asked: usize = body.topics.iter().map(|t| t.partition_indexes.len()).sum();
    refuse_over(
        "DescribeProducers",
        "partitions",
        asked,
        REQUEST_PARTITIONS_MAX,
    )?;
    let repeated = repeated_partitions(
        body.topics
            .iter()
            .flat_map(|t| t.partition_indexes.iter().map(|&i| (t.name.0.as_str(), i))),
    );
    let shard = shard::current();
    let mut remaining = DESCRIBE_PRODUCERS_RESPONSE_PRODUCERS_MAX;
    let mut topics = Vec::with_capacity(body.topics.len());
    for t in body.topics {
        let topic = shard.topic(&t.name.0);
        let readable = crate::security::authorizer::on_topic(conn, crate::acl::READ, &t.name.0);
        let mut partitions = Vec::with_capacity(t.partition_indexes.len());
        for index in t.partition_indexes {
            let r = PartitionResponse::default().with_partition_index(index);
            if !readable {
                partitions.push(r.with_error_code(errors::TOPIC_AUTHORIZATION_FAILED));
                continue;
            }
            if !repeated.is_empty() && repeated.contains(&(t.name.0.to_string(), index)) {
                partitions.push(r.with_error_code(errors::INVALID_REQUEST));
                continue;
            }
            let found = match &topic {
                None => None,
                Some(topic) => {
                    let count_max = remaining;
                    shard::on_owned_partition(topic, index, move |p| async move {
                        p.producers.active_at_most(count_max)
                    })
                    .await
                }
            };
            partitions.push(match found {
                None => r.with_error_code(errors::UNKNOWN_TOPIC_OR_PARTITION),
                Some(None) => {
                    crate::warn_limited!(
                        topic = %t.name.0,
                        partition = index,
                        max = DESCRIBE_PRODUCERS_RESPONSE_PRODUCERS_MAX,
                        "DescribeProducers: response producer limit reached: INVALID_REQUEST"
                    );
                    r.with_error_code(errors::INVALID_REQUEST)
                }
                Some(Some(producers)) => {
                    remaining -= producers.len();
                    r.with_active_producers(
                        producers
                            .into_iter()
                            .map(|a| {
                                ProducerState::default()
                                    .with_producer_id(ProducerId(a.producer_id))
                                    .with_producer_epoch(a.epoch as i32)
                                    .with_last_sequence(a.last_sequence)
                                    .with_last_timestamp(a.last_timestamp)
                                    .with_coordinator_epoch(-1)
                                    .with_current_txn_start_offset(-1)
                            })
                            .collect(),
                    )
                }
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

impl crate::stats::ErrorCodes for DescribeProducersResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        for t in &self.topics {
            t.partitions.iter().for_each(|p| f(p.error_code));
        }
    }
}
