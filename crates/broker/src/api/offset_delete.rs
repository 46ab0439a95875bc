//! OffsetDelete (AdminClient `delete_consumer_group_offsets`): removes a group's committed
//! offsets for some partitions, durably (tombstones in its offsets partition), under Kafka's
//! rules: partitions of unknown topics get UNKNOWN_TOPIC_OR_PARTITION; the group's own checks
//! (unknown group, live members subscribed to the topic) are in `groups::delete_offsets`.

use super::{decode_body, refuse_over, respond, Outcome};
use crate::groups;
use crate::limits::REQUEST_PARTITIONS_MAX;
use crate::{errors, shard};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};
use ringbroker_protocol::request::Request;
use ringbroker_runtime::mesh;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: OffsetDeleteRequest = decode_body(&mut req)?;
    let asked_count: usize = body.topics.iter().map(|t| t.partitions.len()).sum();
    refuse_over(
        "OffsetDelete",
        "partitions",
        asked_count,
        REQUEST_PARTITIONS_MAX,
    )?;
    let group = body.group_id.0.to_string();
    let shard = shard::current();
    // Per asked partition in request order: the error known here (unknown topic or partition).
    let mut known_errors = Vec::with_capacity(asked_count);
    let mut deletable = Vec::new();
    for t in &body.topics {
        let topic = shard.topic(&t.name.0);
        // READ on the topic (TOPIC_AUTHORIZATION_FAILED; its offsets stay).
        let readable = crate::security::authorizer::on_topic(conn, crate::acl::READ, &t.name.0);
        for p in &t.partitions {
            let exists = topic
                .as_ref()
                .is_some_and(|ti| ti.owner(p.partition_index).is_some());
            if !readable {
                known_errors.push(errors::TOPIC_AUTHORIZATION_FAILED);
            } else if exists {
                known_errors.push(errors::NONE);
                deletable.push((t.name.0.to_string(), p.partition_index));
            } else {
                known_errors.push(errors::UNKNOWN_TOPIC_OR_PARTITION);
            }
        }
    }
    let refused = (!crate::security::authorizer::on_group(conn, crate::acl::DELETE, &group))
        .then_some(errors::GROUP_AUTHORIZATION_FAILED);
    if let Some(error) = refused.or_else(|| groups::coordinator_error(&group)) {
        return Ok(respond(
            &req,
            &OffsetDeleteResponse::default().with_error_code(error),
        ));
    }
    let g = group.clone();
    let outcome = mesh::call_detached(groups::group_shard(&group), move || async move {
        groups::delete_offsets(&g, &deletable).await
    })
    .await;
    let group_codes = match outcome {
        Ok(codes) => codes,
        Err(error) => {
            return Ok(respond(
                &req,
                &OffsetDeleteResponse::default().with_error_code(error),
            ))
        }
    };
    let mut group_codes = group_codes.into_iter();
    let mut known_errors = known_errors.into_iter();
    let topics = body
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let known = known_errors.next().unwrap_or(errors::NONE);
                    let code = if known != errors::NONE {
                        known
                    } else {
                        group_codes.next().unwrap_or(errors::NONE)
                    };
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    Ok(respond(
        &req,
        &OffsetDeleteResponse::default().with_topics(topics),
    ))
}

impl crate::stats::ErrorCodes for OffsetDeleteResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        f(self.error_code);
        for t in &self.topics {
            t.partitions.iter().for_each(|p| f(p.error_code));
        }
    }
}
