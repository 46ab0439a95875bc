//! DeleteRecords: moves each partition's log start offset up to the offset asked (-1: the
//! high watermark), on the partition's owner. The new start is persisted before the answer
//! (storage's log start checkpoint), Fetch below it is out of range and ListOffsets earliest
//! returns it; whole segments below it are deleted. The answer's low watermark is the log
//! start after the call (a start already past the offset stays). Like Kafka, it refuses the
//! internal `__consumer_offsets` topic (INVALID_TOPIC_EXCEPTION).

use super::{decode_body, refuse_over, respond, Outcome};
use crate::errors;
use crate::limits::REQUEST_PARTITIONS_MAX;
use crate::shard;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use ringbroker_protocol::request::Request;
use ringbroker_storage::DeleteRecordsError;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: DeleteRecordsRequest = decode_body(&mut req)?;
    let asked: usize = body.topics.iter().map(|t| t.partitions.len()).sum();
    refuse_over("DeleteRecords", "partitions", asked, REQUEST_PARTITIONS_MAX)?;
    let shard = shard::current();
    let mut topics = Vec::with_capacity(body.topics.len());
    for t in body.topics {
        let topic = shard.topic(&t.name.0);
        let allowed = crate::security::authorizer::on_topic(conn, crate::acl::DELETE, &t.name.0);
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let (error, low_watermark) = match &topic {
                _ if !allowed => (errors::TOPIC_AUTHORIZATION_FAILED, -1),
                None => (errors::UNKNOWN_TOPIC_OR_PARTITION, -1),
                // Kafka refuses internal topics (the group offsets live there).
                Some(topic) if topic.name == crate::groups::OFFSETS_TOPIC => {
                    (errors::INVALID_TOPIC_EXCEPTION, -1)
                }
                Some(topic) => {
                    let offset = p.offset;
                    let done =
                        shard::on_owned_partition(topic, p.partition_index, move |p| async move {
                            // Only the leader; a replicated one deletes no further than its
                            // high watermark (-1: up to it), as Kafka does.
                            let offset = match crate::replication::delete_records_access(&p) {
                                Err(code) => return Err(code),
                                Ok(Some(hw)) if offset == -1 => hw,
                                Ok(Some(hw)) if offset > hw => {
                                    return Err(errors::OFFSET_OUT_OF_RANGE)
                                }
                                Ok(_) => offset,
                            };
                            Ok(p.log.delete_records_before(offset).await)
                        })
                        .await;
                    let done = match done {
                        Some(Err(code)) => Err(code),
                        Some(Ok(r)) => Ok(Some(r)),
                        None => Ok(None),
                    };
                    match done {
                        Err(code) => (code, -1),
                        Ok(done) => match done {
                            None => (errors::UNKNOWN_TOPIC_OR_PARTITION, -1),
                            Some(Ok(start)) => (errors::NONE, start),
                            Some(Err(DeleteRecordsError::OutOfRange { .. })) => {
                                (errors::OFFSET_OUT_OF_RANGE, -1)
                            }
                            Some(Err(e)) => {
                                tracing::error!(topic = %topic.name, partition = p.partition_index, error = %e, "DeleteRecords failed");
                                (errors::KAFKA_STORAGE_ERROR, -1)
                            }
                        },
                    }
                }
            };
            partitions.push(
                DeleteRecordsPartitionResult::default()
                    .with_partition_index(p.partition_index)
                    .with_low_watermark(low_watermark)
                    .with_error_code(error),
            );
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    Ok(respond(
        &req,
        &DeleteRecordsResponse::default().with_topics(topics),
    ))
}

impl crate::stats::ErrorCodes for DeleteRecordsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        for t in &self.topics {
            t.partitions.iter().for_each(|p| f(p.error_code));
        }
    }
}
