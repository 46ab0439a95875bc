//! OffsetCommit: checked on the group's shard by Kafka's classic-group rule
//! (`groups::commit_allowed`), appended durably to the group's `__consumer_offsets`
//! partition, then visible to OffsetFetch. Metadata longer
//! than `offset.metadata.max.bytes` gets OFFSET_METADATA_TOO_LARGE for its partition only.

use super::{decode_body, respond, Outcome};
use crate::api::refuse_over;
use crate::groups::{self, Committed};
use crate::limits::{OFFSET_METADATA_BYTES_MAX, REQUEST_PARTITIONS_MAX};
use crate::{errors, shard};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use ringbroker_protocol::request::Request;
use ringbroker_runtime::mesh;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: OffsetCommitRequest = decode_body(&mut req)?;
    let shard = shard::current();
    let group = body.group_id.0.to_string();
    let asked_count: usize = body.topics.iter().map(|t| t.partitions.len()).sum();
    refuse_over(
        "OffsetCommit",
        "partitions",
        asked_count,
        REQUEST_PARTITIONS_MAX,
    )?;
    // READ on the group (GROUP_AUTHORIZATION_FAILED for every partition), READ on each
    // topic (TOPIC_AUTHORIZATION_FAILED for its partitions): refused ones are not stored.
    let group_refused = crate::security::authorizer::group_read_refusal(conn, &group);
    // (topic, partition, error known here, commit)
    let mut asked = Vec::new();
    for t in &body.topics {
        let topic = shard.topic(&t.name.0);
        let readable = crate::security::authorizer::on_topic(conn, crate::acl::READ, &t.name.0);
        for p in &t.partitions {
            let known = topic
                .as_ref()
                .is_some_and(|ti| ti.owner(p.partition_index).is_some());
            let commit = Committed {
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
            };
            let metadata_bytes = commit.metadata.as_ref().map_or(0, String::len);
            let error = if let Some(refused) = group_refused {
                refused
            } else if !readable {
                errors::TOPIC_AUTHORIZATION_FAILED
            } else if !known {
                errors::UNKNOWN_TOPIC_OR_PARTITION
            } else if metadata_bytes > OFFSET_METADATA_BYTES_MAX {
                errors::OFFSET_METADATA_TOO_LARGE
            } else {
                errors::NONE
            };
            asked.push((t.name.0.to_string(), p.partition_index, error, commit));
        }
    }
    let (g, generation, member, instance) = (
        group.clone(),
        body.generation_id_or_member_epoch,
        body.member_id.to_string(),
        body.group_instance_id.as_ref().map(|s| s.to_string()),
    );
    let valid: Vec<(String, i32, Option<Committed>)> = asked
        .iter()
        .filter(|a| a.2 == errors::NONE)
        .map(|(t, p, _, c)| (t.clone(), *p, Some(c.clone())))
        .collect();
    let not_coordinator = group_refused.or_else(|| groups::coordinator_error(&group));
    let group_error = if let Some(error) = not_coordinator {
        error
    } else {
        mesh::call(groups::group_shard(&group), move || async move {
            let room = groups::offsets_room(&g);
            if room != errors::NONE {
                return room;
            }
            let allowed = groups::commit_allowed(&g, generation, &member, instance.as_deref());
            if allowed != errors::NONE {
                return allowed;
            }
            match groups::store_offsets(&g, valid).await {
                Ok(()) => errors::NONE,
                Err(e) => {
                    tracing::error!(group = %g, error = %e, "could not store committed offsets");
                    errors::KAFKA_STORAGE_ERROR
                }
            }
        })
        .await
    };
    let mut topics: Vec<OffsetCommitResponseTopic> = Vec::new();
    // `asked` holds the request's partitions in request order.
    let mut asked = asked.into_iter();
    for t in body.topics {
        let partitions = t
            .partitions
            .iter()
            .map(|p| {
                let known = asked.next().map_or(errors::NONE, |a| a.2);
                let code = if known != errors::NONE {
                    known
                } else {
                    group_error
                };
                OffsetCommitResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(code)
            })
            .collect();
        topics.push(
            OffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    Ok(respond(
        &req,
        &OffsetCommitResponse::default().with_topics(topics),
    ))
}
