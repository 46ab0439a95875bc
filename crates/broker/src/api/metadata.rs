//! Metadata: the cluster's unfenced brokers and controller (a single node: itself, node 0),
//! and the requested topics (all of them when none are named), each partition with its
//! leader, epoch, replicas, ISR and offline (fenced) replicas; a partition without a leader
//! gets LEADER_NOT_AVAILABLE. Unknown topics are created when auto-creation is on and the
//! client allows it. A topic named twice is answered once (as Kafka does), so a response is
//! never a multiple of the broker's state. v8+ reports the operations allowed on each topic
//! (and, v8-10, on the cluster) when asked: those the connection's principal may perform.
//!
//! Authorization: a topic is listed only with DESCRIBE on it (a named one without gets
//! TOPIC_AUTHORIZATION_FAILED, all-topics requests leave it out); auto-creation needs CREATE
//! on the cluster or on the topic (TOPIC_AUTHORIZATION_FAILED otherwise).

use super::{decode_body, respond, Outcome};
use crate::api::refuse_over;
use crate::metadata::TopicInfo;
use crate::security::{authorizer, resource};
use crate::shard::{self, BrokersView, NewTopic};
use crate::{acl, errors};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;
use std::collections::BTreeMap;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: MetadataRequest = decode_body(&mut req)?;
    let v = req.version;
    let asked_operations = body.include_topic_authorized_operations;
    let topic_operations = |name: &str| {
        authorizer::authorized_operations(
            conn,
            asked_operations,
            acl::TOPIC_OPERATIONS,
            resource::TOPIC,
            name,
        )
    };
    let count = body.topics.as_ref().map_or(0, Vec::len);
    refuse_over(
        "Metadata",
        "topics",
        count,
        crate::limits::REQUEST_TOPICS_MAX,
    )?;
    let shard = shard::current();
    let shared = shard.shared.clone();
    let brokers = shard.brokers();
    let mut topics = Vec::new();
    // v0: empty list = all topics; v1+: null = all topics.
    let requested: Option<Vec<(Option<String>, uuid::Uuid)>> = match body.topics {
        None => None,
        Some(list) if list.is_empty() && v == 0 => None,
        Some(list) => {
            let mut seen = std::collections::HashSet::new();
            Some(
                list.into_iter()
                    .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
                    .filter(|key| seen.insert(key.clone()))
                    .collect(),
            )
        }
    };
    match requested {
        None => {
            for t in shard.all_topics() {
                if authorizer::may(conn, acl::DESCRIBE, resource::TOPIC, &t.name) {
                    topics.push(topic_entry(&t, v, topic_operations(&t.name), &brokers));
                }
            }
        }
        Some(list) => {
            let allow_create =
                shared.config.auto_create_topics && (v < 4 || body.allow_auto_topic_creation);
            let create_anywhere = allow_create
                && authorizer::may(conn, acl::CREATE, resource::CLUSTER, resource::CLUSTER_NAME);
            let mut missing = Vec::new();
            let mut create_errors = BTreeMap::new();
            for (name, id) in &list {
                let known = match name {
                    Some(n) => shard.topic(n),
                    None => shard.topic_by_id(id),
                };
                if known.is_none() {
                    if let Some(n) = name {
                        // Not describable: refused below without a word about it.
                        let describable = authorizer::may(conn, acl::DESCRIBE, resource::TOPIC, n);
                        let may_create = describable
                            && (create_anywhere
                                || (allow_create && authorizer::on_topic(conn, acl::CREATE, n)));
                        if allow_create && describable && !may_create {
                            create_errors.insert(n.clone(), errors::TOPIC_AUTHORIZATION_FAILED);
                        } else if may_create {
                            missing.push(NewTopic {
                                name: n.clone(),
                                partitions: shared.config.default_partitions,
                                replication_factor: -1,
                                configs: BTreeMap::new(),
                                assignments: None,
                            });
                        }
                    }
                }
            }
            if !missing.is_empty() {
                for (t, result) in missing
                    .clone()
                    .into_iter()
                    .zip(shard::create_topics(missing, false).await)
                {
                    if let Err((code, msg)) = result {
                        if code != errors::TOPIC_ALREADY_EXISTS {
                            tracing::info!(topic = %t.name, code, %msg, "auto-creation refused");
                            create_errors.insert(t.name, code);
                        }
                    }
                }
            }
            for (name, id) in list {
                let known = match &name {
                    Some(n) => shard.topic(n),
                    None => shard.topic_by_id(&id),
                };
                // Kafka refuses a named topic without DESCRIBE whether it exists or not (its
                // existence is not told); a topic id only once resolved.
                let denied = match (&name, &known) {
                    (Some(n), _) => !authorizer::on_topic(conn, acl::DESCRIBE, n),
                    (None, Some(t)) => !authorizer::on_topic(conn, acl::DESCRIBE, &t.name),
                    (None, None) => false,
                };
                topics.push(match known {
                    _ if denied => {
                        let mut entry = MetadataResponseTopic::default()
                            .with_error_code(errors::TOPIC_AUTHORIZATION_FAILED)
                            .with_name(name.map(|n| TopicName(StrBytes::from_string(n))));
                        if v >= 10 {
                            entry = entry.with_topic_id(id);
                        }
                        if v >= 8 {
                            entry = entry.with_topic_authorized_operations(acl::authorized(
                                asked_operations,
                                &[],
                            ));
                        }
                        entry
                    }
                    Some(t) => topic_entry(&t, v, topic_operations(&t.name), &brokers),
                    None => {
                        let code = name
                            .as_ref()
                            .and_then(|n| create_errors.get(n).copied())
                            .unwrap_or(if name.is_some() {
                                errors::UNKNOWN_TOPIC_OR_PARTITION
                            } else {
                                errors::UNKNOWN_TOPIC_ID
                            });
                        let ops = match &name {
                            Some(n) => topic_operations(n),
                            None => acl::authorized(asked_operations, &[]),
                        };
                        let mut entry = MetadataResponseTopic::default()
                            .with_error_code(code)
                            .with_name(name.map(|n| TopicName(StrBytes::from_string(n))));
                        if v >= 10 {
                            entry = entry.with_topic_id(id);
                        }
                        if v >= 8 {
                            entry = entry.with_topic_authorized_operations(ops);
                        }
                        entry
                    }
                });
            }
        }
    }
    // The endpoints of the listener the request came in on; brokers without it are left
    // out (as Kafka does).
    let listener = crate::security::listener_name(&shared, conn);
    let broker_entries = brokers
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .filter_map(|b| {
            let (host, port) = b.endpoint(listener)?;
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(b.id))
                    .with_host(StrBytes::from_string(host.to_string()))
                    .with_port(port as i32),
            )
        })
        .collect();
    let mut response = MetadataResponse::default()
        .with_brokers(broker_entries)
        .with_topics(topics);
    if v >= 1 {
        response = response.with_controller_id(BrokerId(brokers.controller_id));
    }
    if v >= 2 {
        response = response.with_cluster_id(Some(StrBytes::from_string(shared.cluster_id.clone())));
    }
    if (8..=10).contains(&v) {
        response = response.with_cluster_authorized_operations(authorizer::authorized_operations(
            conn,
            body.include_cluster_authorized_operations,
            acl::CLUSTER_OPERATIONS,
            resource::CLUSTER,
            resource::CLUSTER_NAME,
        ));
    }
    Ok(respond(&req, &response))
}

/// A known topic's entry; `authorized_operations` is what v8+ reports for it.
fn topic_entry(
    t: &TopicInfo,
    v: i16,
    authorized_operations: i32,
    brokers: &BrokersView,
) -> MetadataResponseTopic {
    let ids = |nodes: &[i32]| nodes.iter().map(|&n| BrokerId(n)).collect::<Vec<_>>();
    let partitions = t
        .replication
        .iter()
        .enumerate()
        .map(|(p, r)| {
            let offline: Vec<BrokerId> = r
                .replicas
                .iter()
                .filter(|n| brokers.brokers.get(n).is_none_or(|b| b.fenced))
                .map(|&n| BrokerId(n))
                .collect();
            let mut entry = MetadataResponsePartition::default()
                .with_partition_index(p as i32)
                .with_leader_id(BrokerId(r.leader))
                .with_replica_nodes(ids(&r.replicas))
                .with_isr_nodes(ids(&r.isr));
            if r.leader < 0 {
                entry = entry.with_error_code(errors::LEADER_NOT_AVAILABLE);
            }
            if v >= 5 {
                entry = entry.with_offline_replicas(offline);
            }
            if v >= 7 {
                entry = entry.with_leader_epoch(r.leader_epoch);
            }
            entry
        })
        .collect();
    let mut entry = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(t.name.clone()))))
        .with_partitions(partitions);
    if v >= 10 {
        entry = entry.with_topic_id(t.id);
    }
    if v >= 8 {
        entry = entry.with_topic_authorized_operations(authorized_operations);
    }
    if v >= 1 {
        entry = entry.with_is_internal(t.name == crate::groups::OFFSETS_TOPIC);
    }
    entry
}
