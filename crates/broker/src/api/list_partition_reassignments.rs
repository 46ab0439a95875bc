//! ListPartitionReassignments (KIP-455): the partitions with a reassignment ongoing (all of
//! them, or those among the named ones), with their replicas and the replicas being added and
//! removed, from this node's newest metadata image. Named topics or partitions that do not
//! exist are left out, as Kafka's controller does. A broker alone never has one.

use super::{decode_body, refuse_over, respond, Outcome};
use crate::limits::{REQUEST_PARTITIONS_MAX, REQUEST_TOPICS_MAX};
use crate::shard::cluster;
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    BrokerId, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use ringbroker_cluster::{MetadataImage, PartitionImage};
use ringbroker_protocol::request::Request;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: ListPartitionReassignmentsRequest = decode_body(&mut req)?;
    if let Some(topics) = &body.topics {
        refuse_over(
            "ListPartitionReassignments",
            "topics",
            topics.len(),
            REQUEST_TOPICS_MAX,
        )?;
        let named: usize = topics.iter().map(|t| t.partition_indexes.len()).sum();
        refuse_over(
            "ListPartitionReassignments",
            "partitions",
            named,
            REQUEST_PARTITIONS_MAX,
        )?;
    }
    if !crate::security::authorizer::on_cluster(conn, crate::acl::DESCRIBE) {
        return Ok(respond(
            &req,
            &ListPartitionReassignmentsResponse::default()
                .with_error_code(crate::errors::CLUSTER_AUTHORIZATION_FAILED)
                .with_error_message(Some(StrBytes::from_static_str(
                    "Cluster authorization failed.",
                ))),
        ));
    }
    let topics = match cluster::latest_image() {
        Some(image) => ongoing(&image, &body),
        None => Vec::new(),
    };
    Ok(respond(
        &req,
        &ListPartitionReassignmentsResponse::default()
            .with_error_message(None)
            .with_topics(topics),
    ))
}

fn ongoing(
    image: &MetadataImage,
    body: &ListPartitionReassignmentsRequest,
) -> Vec<OngoingTopicReassignment> {
    let ids = |v: &[i32]| v.iter().map(|&b| BrokerId(b)).collect::<Vec<_>>();
    let entry = |i: usize, p: &PartitionImage| {
        OngoingPartitionReassignment::default()
            .with_partition_index(i as i32)
            .with_replicas(ids(&p.replicas))
            .with_adding_replicas(ids(&p.adding_replicas))
            .with_removing_replicas(ids(&p.removing_replicas))
    };
    let topic = |name: &str, partitions: Vec<OngoingPartitionReassignment>| {
        OngoingTopicReassignment::default()
            .with_name(TopicName(StrBytes::from_string(name.to_string())))
            .with_partitions(partitions)
    };
    let mut out = Vec::new();
    match &body.topics {
        None => {
            for (name, t) in &image.topics {
                let partitions: Vec<_> = t
                    .partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.reassigning())
                    .map(|(i, p)| entry(i, p))
                    .collect();
                if !partitions.is_empty() {
                    out.push(topic(name, partitions));
                }
            }
        }
        Some(named) => {
            for n in named {
                let Some(t) = image.topics.get(n.name.0.as_str()) else {
                    continue;
                };
                let mut seen = std::collections::HashSet::new();
                let partitions: Vec<_> = n
                    .partition_indexes
                    .iter()
                    .filter(|&&i| seen.insert(i))
                    .filter_map(|&i| {
                        let p = t.partitions.get(usize::try_from(i).ok()?)?;
                        p.reassigning().then(|| entry(i as usize, p))
                    })
                    .collect();
                if !partitions.is_empty() {
                    out.push(topic(n.name.0.as_str(), partitions));
                }
            }
        }
    }
    out
}

impl crate::stats::ErrorCodes for ListPartitionReassignmentsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        f(self.error_code);
    }
}
