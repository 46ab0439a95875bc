//! OffsetFetch: a group's committed offsets, for named partitions or all of them (topics
//! null, v2+), for one group (v1-7) or several (v8; a group named twice is answered once, so
//! a response is never a multiple of the broker's state).

use super::{decode_body, respond, Outcome};
use crate::api::refuse_over;
use crate::groups::{self, Committed};
use crate::limits::REQUEST_PARTITIONS_MAX;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;
use ringbroker_runtime::mesh;
use std::collections::BTreeMap;

type Found = Vec<(String, i32, Option<Committed>)>;

async fn fetch(group: String, wanted: Option<Vec<(String, i32)>>) -> Found {
    let g = group.clone();
    mesh::call(groups::group_shard(&group), move || async move {
        groups::fetch_offsets(&g, wanted)
    })
    .await
}

/// The (topic, partition) pairs a request names, from its topics' names and partition indexes.
fn wanted<'a>(topics: impl Iterator<Item = (&'a str, &'a [i32])>) -> Vec<(String, i32)> {
    topics
        .flat_map(|(name, partitions)| partitions.iter().map(move |&p| (name.to_string(), p)))
        .collect()
}

/// DESCRIBE on the group (GROUP_AUTHORIZATION_FAILED).
fn group_refusal(conn: &crate::connection::Conn, group: &str) -> Option<i16> {
    (!crate::security::authorizer::on_group(conn, crate::acl::DESCRIBE, group))
        .then_some(crate::errors::GROUP_AUTHORIZATION_FAILED)
}

/// A topic's offsets need DESCRIBE on it: without, a named topic's partitions are answered
/// TOPIC_AUTHORIZATION_FAILED (and no offsets), and a request for all offsets leaves it out.
#[allow(clippy::type_complexity)]
fn describable(
    conn: &crate::connection::Conn,
    all: bool,
    topic: String,
    partitions: Vec<(i32, Option<Committed>)>,
) -> Option<(String, Vec<(i32, Option<Committed>)>, i16)> {
    if crate::security::authorizer::may(
        conn,
        crate::acl::DESCRIBE,
        crate::security::resource::TOPIC,
        &topic,
    ) {
        return Some((topic, partitions, crate::errors::NONE));
    }
    if all {
        return None;
    }
    let hidden = partitions.into_iter().map(|(p, _)| (p, None)).collect();
    Some((topic, hidden, crate::errors::TOPIC_AUTHORIZATION_FAILED))
}

fn by_topic(found: Found) -> BTreeMap<String, Vec<(i32, Option<Committed>)>> {
    let mut out: BTreeMap<String, Vec<(i32, Option<Committed>)>> = BTreeMap::new();
    for (t, p, c) in found {
        out.entry(t).or_default().push((p, c));
    }
    out
}

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let mut body: OffsetFetchRequest = decode_body(&mut req)?;
    let v = req.version;
    let asked: usize = body
        .topics
        .iter()
        .flatten()
        .map(|t| t.partition_indexes.len())
        .chain(
            body.groups
                .iter()
                .flat_map(|g| g.topics.iter().flatten())
                .map(|t| t.partition_indexes.len()),
        )
        .sum();
    refuse_over("OffsetFetch", "partitions", asked, REQUEST_PARTITIONS_MAX)?;
    let mut seen = std::collections::HashSet::new();
    body.groups.retain(|g| seen.insert(g.group_id.0.clone()));
    let metadata = |c: &Option<Committed>| {
        Some(StrBytes::from_string(
            c.as_ref()
                .and_then(|c| c.metadata.clone())
                .unwrap_or_default(),
        ))
    };
    if v >= 8 {
        let mut groups_out = Vec::new();
        for g in body.groups {
            if let Some(error) = group_refusal(conn, &g.group_id.0)
                .or_else(|| groups::coordinator_error(&g.group_id.0))
            {
                groups_out.push(
                    OffsetFetchResponseGroup::default()
                        .with_group_id(GroupId(g.group_id.0))
                        .with_error_code(error),
                );
                continue;
            }
            let wanted = g
                .topics
                .map(|ts| wanted(ts.iter().map(|t| (&*t.name.0, &t.partition_indexes[..]))));
            let all = wanted.is_none();
            let found = fetch(g.group_id.0.to_string(), wanted).await;
            let topics = by_topic(found)
                .into_iter()
                .filter_map(|(t, ps)| describable(conn, all, t, ps))
                .map(|(t, ps, refused)| {
                    let partitions = ps
                        .into_iter()
                        .map(|(p, c)| {
                            OffsetFetchResponsePartitions::default()
                                .with_error_code(refused)
                                .with_partition_index(p)
                                .with_committed_offset(c.as_ref().map_or(-1, |c| c.offset))
                                .with_committed_leader_epoch(
                                    c.as_ref().map_or(-1, |c| c.leader_epoch),
                                )
                                .with_metadata(metadata(&c))
                        })
                        .collect();
                    OffsetFetchResponseTopics::default()
                        .with_name(TopicName(StrBytes::from_string(t)))
                        .with_partitions(partitions)
                })
                .collect();
            groups_out.push(
                OffsetFetchResponseGroup::default()
                    .with_group_id(GroupId(g.group_id.0))
                    .with_topics(topics),
            );
        }
        return Ok(respond(
            &req,
            &OffsetFetchResponse::default().with_groups(groups_out),
        ));
    }
    if let Some(error) = group_refusal(conn, &body.group_id.0)
        .or_else(|| groups::coordinator_error(&body.group_id.0))
    {
        // v2+ carry a top-level error; v1 only per-partition ones.
        let topics = body
            .topics
            .iter()
            .flatten()
            .map(|t| {
                let partitions = t
                    .partition_indexes
                    .iter()
                    .map(|&p| {
                        OffsetFetchResponsePartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(-1)
                            .with_error_code(error)
                    })
                    .collect();
                OffsetFetchResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(partitions)
            })
            .collect();
        let mut response = OffsetFetchResponse::default().with_topics(topics);
        if v >= 2 {
            response = response.with_error_code(error);
        }
        return Ok(respond(&req, &response));
    }
    let wanted = body
        .topics
        .map(|ts| wanted(ts.iter().map(|t| (&*t.name.0, &t.partition_indexes[..]))));
    let all = wanted.is_none();
    let found = fetch(body.group_id.0.to_string(), wanted).await;
    let topics = by_topic(found)
        .into_iter()
        .filter_map(|(t, ps)| describable(conn, all, t, ps))
        .map(|(t, ps, refused)| {
            let partitions = ps
                .into_iter()
                .map(|(p, c)| {
                    let r = OffsetFetchResponsePartition::default()
                        .with_error_code(refused)
                        .with_partition_index(p)
                        .with_committed_offset(c.as_ref().map_or(-1, |c| c.offset))
                        .with_metadata(metadata(&c));
                    if v >= 5 {
                        r.with_committed_leader_epoch(c.as_ref().map_or(-1, |c| c.leader_epoch))
                    } else {
                        r
                    }
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(StrBytes::from_string(t)))
                .with_partitions(partitions)
        })
        .collect();
    Ok(respond(
        &req,
        &OffsetFetchResponse::default().with_topics(topics),
    ))
}
