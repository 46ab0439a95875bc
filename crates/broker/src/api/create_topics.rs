//! CreateTopics: validated and placed by shard 0, persisted, then opened by each owner. A
//! topic's configs are kept with it, so their size is bounded here first; a topic named twice
//! gets INVALID_REQUEST for each entry (as in Kafka). As strict as Kafka: unknown config names
//! and invalid values (INVALID_CONFIG), replica assignments (INVALID_REQUEST when counts are
//! also given, INVALID_REPLICA_ASSIGNMENT), names colliding by '.'/'_'; `validate_only` checks
//! everything and creates nothing; v5+ answers carry the counts and the configs.

use super::describe_configs::{topic_entries, NODE_ID};
use super::{decode_body, respond, Outcome};
use crate::api::refuse_over;
use crate::errors;
use crate::limits::{REQUEST_TOPICS_MAX, TOPIC_CONFIGS_BYTES_MAX};
use crate::shard::{self, NewTopic};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;

/// Kafka's checks of explicit replica assignments: counts then are -1, partitions are
/// numbered 0..n-1, each lists distinct brokers; on a single node, only this node (in a
/// cluster the controller checks the brokers are registered).
fn assignment_refusal(t: &CreatableTopic, single_node: bool) -> Option<(i16, String)> {
    if t.assignments.is_empty() {
        return None;
    }
    if t.num_partitions != -1 || t.replication_factor != -1 {
        return Some((
            errors::INVALID_REQUEST,
            "Both numPartitions or replicationFactor and replicasAssignments were set. \
             Both cannot be used at the same time."
                .into(),
        ));
    }
    let mut indexes: Vec<i32> = t.assignments.iter().map(|a| a.partition_index).collect();
    indexes.sort_unstable();
    if indexes.iter().enumerate().any(|(i, &p)| p != i as i32) {
        return Some((
            errors::INVALID_REPLICA_ASSIGNMENT,
            "Partitions should be a consecutive 0-based integer sequence".into(),
        ));
    }
    for a in &t.assignments {
        let brokers: Vec<i32> = a.broker_ids.iter().map(|b| b.0).collect();
        if brokers.is_empty() {
            return Some((
                errors::INVALID_REPLICA_ASSIGNMENT,
                format!("partition {} has an empty replica list", a.partition_index),
            ));
        }
        let mut unique = brokers.clone();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != brokers.len() {
            return Some((
                errors::INVALID_REPLICA_ASSIGNMENT,
                format!(
                    "Duplicate brokers not allowed in replica assignment: {brokers:?} for partition {}",
                    a.partition_index
                ),
            ));
        }
        if let Some(b) = brokers.iter().find(|&&b| single_node && b != NODE_ID) {
            return Some((
                errors::INVALID_REPLICA_ASSIGNMENT,
                format!(
                    "Unknown broker(s) in replica assignment: {b} for partition {} (this cluster is node {NODE_ID})",
                    a.partition_index
                ),
            ));
        }
    }
    None
}

/// A topic's configs as CreateTopics v5+ reports them (as DescribeConfigs would).
fn configs_of(
    shard: &crate::shard::Shard,
    configs: &std::collections::BTreeMap<String, String>,
) -> Vec<CreatableTopicConfigs> {
    shard
        .with_broker_view(|b| topic_entries(configs, b))
        .into_iter()
        .map(|e| {
            CreatableTopicConfigs::default()
                .with_name(StrBytes::from_string(e.name))
                .with_value(Some(StrBytes::from_string(e.value)))
                .with_read_only(e.read_only)
                .with_config_source(e.source as i8)
                .with_is_sensitive(false)
        })
        .collect()
}

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: CreateTopicsRequest = decode_body(&mut req)?;
    let v = req.version;
    refuse_over(
        "CreateTopics",
        "topics",
        body.topics.len(),
        REQUEST_TOPICS_MAX,
    )?;
    let mut times_named = std::collections::HashMap::new();
    for t in &body.topics {
        *times_named.entry(&t.name.0).or_insert(0usize) += 1;
    }
    let configs_bytes = |t: &kafka_protocol::messages::create_topics_request::CreatableTopic| {
        t.configs
            .iter()
            .map(|c| c.name.len() + c.value.as_ref().map_or(0, |v| v.len()))
            .sum::<usize>()
    };
    let single_node = shard::current().shared.cluster.is_none();
    // CREATE on the cluster allows every topic, else CREATE on each.
    let create_any = crate::security::authorizer::may(
        conn,
        crate::acl::CREATE,
        crate::security::resource::CLUSTER,
        crate::security::resource::CLUSTER_NAME,
    );
    let refused: Vec<Option<(i16, String)>> = body
        .topics
        .iter()
        .map(|t| {
            let bytes = configs_bytes(t);
            if times_named[&t.name.0] > 1 {
                Some((
                    errors::INVALID_REQUEST,
                    "topic named more than once in one request".to_string(),
                ))
            } else if !create_any
                && !crate::security::authorizer::on_topic(conn, crate::acl::CREATE, &t.name.0)
            {
                Some((
                    errors::TOPIC_AUTHORIZATION_FAILED,
                    "Authorization failed.".to_string(),
                ))
            } else if bytes > TOPIC_CONFIGS_BYTES_MAX {
                Some((
                    errors::INVALID_CONFIG,
                    format!("{bytes} bytes of configs, more than {TOPIC_CONFIGS_BYTES_MAX}"),
                ))
            } else if let Some(c) = t.configs.iter().find(|c| c.value.is_none()) {
                Some((
                    errors::INVALID_CONFIG,
                    format!(
                        "Null value not supported for topic configs: {}",
                        c.name.as_str()
                    ),
                ))
            } else {
                assignment_refusal(t, single_node)
            }
        })
        .collect();
    let requested: Vec<NewTopic> = body
        .topics
        .iter()
        .zip(&refused)
        .filter(|(_, refused)| refused.is_none())
        .map(|(t, _)| NewTopic {
            name: t.name.0.to_string(),
            // Explicit replica assignments name brokers; on one node they mean one replica each.
            partitions: if t.assignments.is_empty() {
                t.num_partitions
            } else {
                t.assignments.len() as i32
            },
            replication_factor: if t.assignments.is_empty() {
                t.replication_factor
            } else if single_node {
                1
            } else {
                t.assignments[0].broker_ids.len() as i16
            },
            assignments: (!t.assignments.is_empty()).then(|| {
                let mut by_partition: Vec<_> = t.assignments.iter().collect();
                by_partition.sort_by_key(|a| a.partition_index);
                by_partition
                    .into_iter()
                    .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                    .collect()
            }),
            configs: t
                .configs
                .iter()
                .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                .collect(),
        })
        .collect();
    let shard = shard::current();
    let mut created = shard::create_topics(requested, body.validate_only)
        .await
        .into_iter();
    let topics = body
        .topics
        .into_iter()
        .zip(refused)
        .map(|(t, refused)| {
            let result = match refused {
                Some(error) => Err(error),
                None => created.next().expect("one result per topic asked"),
            };
            let mut r = CreatableTopicResult::default().with_name(t.name);
            match result {
                Ok(info) => {
                    if v >= 5 {
                        r = r
                            .with_num_partitions(info.partition_count())
                            .with_replication_factor(
                                info.replication
                                    .first()
                                    .map_or(1, |r| r.replicas.len() as i16),
                            )
                            .with_configs(Some(configs_of(&shard, &info.configs)));
                    }
                    if v >= 7 && !body.validate_only {
                        r = r.with_topic_id(info.id);
                    }
                }
                Err((code, message)) => {
                    r = r
                        .with_error_code(code)
                        .with_error_message(Some(StrBytes::from_string(message)));
                }
            }
            r
        })
        .collect();
    Ok(respond(
        &req,
        &CreateTopicsResponse::default().with_topics(topics),
    ))
}
