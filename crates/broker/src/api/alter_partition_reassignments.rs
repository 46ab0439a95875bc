//! AlterPartitionReassignments (KIP-455): moves partitions between brokers. Each named
//! partition gets a target replica list (or `null`: cancel the ongoing move). In a cluster the
//! checks a client can be told about per partition run here against this node's view (as
//! Kafka's controller words them), then the moves go to the active controller together; it
//! starts them (the new replicas fetch as followers) and completes each once its new replicas
//! are in sync. A broker alone (no `--cluster`) is a one-broker cluster: a target of exactly
//! its replicas is a no-op success, anything else names a broker that is not registered.
//!
//! v1 (KIP-860) carries `allow_replication_factor_change`: when false, a target whose length
//! differs from the partition's replica count is refused with INVALID_REPLICATION_FACTOR.

use super::{decode_body, refuse_over, respond, Outcome};
use crate::errors;
use crate::limits::{REQUEST_PARTITIONS_MAX, REQUEST_TOPICS_MAX};
use crate::shard::{self, cluster, TopicError};
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
};
use kafka_protocol::protocol::StrBytes;
use ringbroker_cluster::{AdminRequest, MetadataImage, ReassignmentMove};
use ringbroker_protocol::request::Request;
use std::time::{Duration, Instant};

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: AlterPartitionReassignmentsRequest = decode_body(&mut req)?;
    refuse_over(
        "AlterPartitionReassignments",
        "topics",
        body.topics.len(),
        REQUEST_TOPICS_MAX,
    )?;
    let named: usize = body.topics.iter().map(|t| t.partitions.len()).sum();
    refuse_over(
        "AlterPartitionReassignments",
        "partitions",
        named,
        REQUEST_PARTITIONS_MAX,
    )?;
    let allow_rf_change = req.version < 1 || body.allow_replication_factor_change;
    // ALTER on the cluster: refused whole, every partition with the same error.
    if !crate::security::authorizer::on_cluster(conn, crate::acl::ALTER) {
        let code = errors::CLUSTER_AUTHORIZATION_FAILED;
        let message = || Some(StrBytes::from_static_str("Cluster authorization failed."));
        let responses = body
            .topics
            .iter()
            .map(|t| {
                ReassignableTopicResponse::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                ReassignablePartitionResponse::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code)
                                    .with_error_message(message())
                            })
                            .collect(),
                    )
            })
            .collect();
        let mut response = AlterPartitionReassignmentsResponse::default()
            .with_error_code(code)
            .with_error_message(message())
            .with_responses(responses);
        if req.version >= 1 {
            response = response.with_allow_replication_factor_change(allow_rf_change);
        }
        return Ok(respond(&req, &response));
    }
    let timeout = match u64::try_from(body.timeout_ms) {
        Ok(ms) if ms > 0 => Duration::from_millis(ms).min(cluster::ADMIN_TIMEOUT),
        _ => cluster::ADMIN_TIMEOUT,
    };
    let deadline = Instant::now() + timeout;
    let moves: Vec<ReassignmentMove> = body
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| ReassignmentMove {
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                target: p.replicas.as_ref().map(|r| r.iter().map(|b| b.0).collect()),
            })
        })
        .collect();
    let results = alter(moves, allow_rf_change, deadline).await;
    let mut results = results.into_iter();
    let responses = body
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut r = ReassignablePartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_error_message(None);
                    if let Some(Err((code, message))) = results.next() {
                        r = r
                            .with_error_code(code)
                            .with_error_message(Some(StrBytes::from_string(message)));
                    }
                    r
                })
                .collect();
            ReassignableTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    let mut response = AlterPartitionReassignmentsResponse::default()
        .with_error_message(None)
        .with_responses(responses);
    if req.version >= 1 {
        response = response.with_allow_replication_factor_change(allow_rf_change);
    }
    Ok(respond(&req, &response))
}

/// One result per move, in order.
async fn alter(
    moves: Vec<ReassignmentMove>,
    allow_rf_change: bool,
    deadline: Instant,
) -> Vec<Result<(), TopicError>> {
    let shard = shard::current();
    let Some(image) = cluster::latest_image() else {
        return moves
            .iter()
            .map(|m| alone(&shard, m, allow_rf_change))
            .collect();
    };
    let mut results: Vec<Result<(), TopicError>> = Vec::with_capacity(moves.len());
    for (i, m) in moves.iter().enumerate() {
        let repeated = moves[..i]
            .iter()
            .chain(&moves[i + 1..])
            .any(|o| o.topic == m.topic && o.partition == m.partition);
        results.push(if repeated {
            Err((
                errors::INVALID_REQUEST,
                "The partition is named more than once.".to_string(),
            ))
        } else {
            check(&image, m, allow_rf_change)
        });
    }
    let checked: Vec<usize> = (0..moves.len()).filter(|&i| results[i].is_ok()).collect();
    if checked.is_empty() {
        return results;
    }
    let batch: Vec<ReassignmentMove> = checked.iter().map(|&i| moves[i].clone()).collect();
    let together =
        cluster::submit(AdminRequest::AlterReassignments { moves: batch }, deadline).await;
    match together {
        Ok(_) => {
            for m in moves.iter().filter(|m| m.target.is_some()) {
                tracing::info!(topic = %m.topic, partition = m.partition, target = ?m.target, "partition reassignment started");
            }
        }
        // Refused as a whole (the image changed since the checks): each on its own, so each
        // gets its own answer.
        Err(e) if checked.len() > 1 && !is_submit_failure(&e) => {
            for &i in &checked {
                let one = AdminRequest::AlterReassignments {
                    moves: vec![moves[i].clone()],
                };
                results[i] = cluster::submit(one, deadline)
                    .await
                    .map(|_| ())
                    .map_err(cluster::admin_error);
            }
        }
        Err(e) => {
            let e = cluster::admin_error(e);
            for &i in &checked {
                results[i] = Err(e.clone());
            }
        }
    }
    results
}

/// The controller could not be reached or did not answer in time (no partition's fault).
fn is_submit_failure(e: &ringbroker_cluster::AdminError) -> bool {
    matches!(
        e,
        ringbroker_cluster::AdminError::NotController | ringbroker_cluster::AdminError::Timeout
    )
}

/// Kafka's per-partition checks, against this node's newest image.
fn check(
    image: &MetadataImage,
    m: &ReassignmentMove,
    allow_rf_change: bool,
) -> Result<(), TopicError> {
    let Some(p) = image.topics.get(&m.topic).and_then(|t| {
        usize::try_from(m.partition)
            .ok()
            .and_then(|i| t.partitions.get(i))
    }) else {
        return Err(unknown());
    };
    let Some(target) = &m.target else {
        if !p.reassigning() {
            return Err(no_reassignment());
        }
        return Ok(());
    };
    check_target(target, |b| image.brokers.contains_key(&b))?;
    let current = p.replicas.len() - p.adding_replicas.len();
    if !allow_rf_change && target.len() != current {
        return Err(rf_change(current, target.len()));
    }
    Ok(())
}

/// A target list: non-empty, no broker twice, every broker registered.
fn check_target(target: &[i32], registered: impl Fn(i32) -> bool) -> Result<(), TopicError> {
    let refuse = |why: String| Err((errors::INVALID_REPLICA_ASSIGNMENT, why));
    if target.is_empty() {
        return refuse("The manual partition assignment includes an empty replica list.".into());
    }
    for (i, &b) in target.iter().enumerate() {
        if target[..i].contains(&b) {
            return refuse(format!(
                "The manual partition assignment includes the broker {b} more than once."
            ));
        }
        if !registered(b) {
            return refuse(format!(
                "The manual partition assignment includes broker {b}, but no such broker is registered."
            ));
        }
    }
    Ok(())
}

/// A broker alone: its partitions are on it and nowhere else can they go.
fn alone(
    shard: &shard::Shard,
    m: &ReassignmentMove,
    allow_rf_change: bool,
) -> Result<(), TopicError> {
    let Some(set) = shard
        .topic(&m.topic)
        .and_then(|t| t.replicas(m.partition).cloned())
    else {
        return Err(unknown());
    };
    let Some(target) = &m.target else {
        return Err(no_reassignment());
    };
    let me = shard.shared.node_id;
    check_target(target, |b| b == me)?;
    if !allow_rf_change && target.len() != set.replicas.len() {
        return Err(rf_change(set.replicas.len(), target.len()));
    }
    Ok(())
}

fn unknown() -> TopicError {
    (
        errors::UNKNOWN_TOPIC_OR_PARTITION,
        "This server does not host this topic-partition.".to_string(),
    )
}

fn no_reassignment() -> TopicError {
    (
        errors::NO_REASSIGNMENT_IN_PROGRESS,
        "No ongoing reassignment for this partition.".to_string(),
    )
}

fn rf_change(from: usize, to: usize) -> TopicError {
    (
        errors::INVALID_REPLICATION_FACTOR,
        format!(
            "The replication factor is changed from {from} to {to} but allowReplicationFactorChange is false."
        ),
    )
}

impl crate::stats::ErrorCodes for AlterPartitionReassignmentsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        f(self.error_code);
        self.responses
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| f(p.error_code));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked_as_kafka_words_them() {
        let registered = |b| (1..=3).contains(&b);
        assert!(check_target(&[1, 3], registered).is_ok());
        for (bad, words) in [
            (vec![], "empty replica list"),
            (vec![1, 1], "more than once"),
            (vec![1, 4], "no such broker"),
        ] {
            let (code, message) = check_target(&bad, registered).unwrap_err();
            assert_eq!(code, errors::INVALID_REPLICA_ASSIGNMENT);
            assert!(message.contains(words), "{message}");
        }
    }
}
