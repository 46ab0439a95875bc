//! FindCoordinator: a group's coordinator is the leader of its `__consumer_offsets`
//! partition (a single node: itself, node 0, for every group); no leader (or no offsets topic
//! yet) gives COORDINATOR_NOT_AVAILABLE, so the client asks again. Transactions are not
//! offered, so transaction keys get COORDINATOR_NOT_AVAILABLE.

use super::{decode_body, respond, Outcome};
use crate::shard::Shard;
use crate::{errors, groups, shard};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;

const KEY_TYPE_GROUP: i8 = 0;

/// The coordinator of group `group`: (node id, host, port), at its endpoint of listener
/// `listener` (the one the request came in on).
fn group_coordinator(
    shard: &Shard,
    group: &str,
    listener: Option<&str>,
) -> Result<(i32, StrBytes, i32), i16> {
    let shared = &shard.shared;
    if shared.cluster.is_none() {
        let (host, port) = listener
            .and_then(|name| shared.listeners.iter().find(|l| l.name == name))
            .map_or(
                (shared.advertised_host.as_str(), shared.advertised_port),
                |l| (l.advertised_host.as_str(), l.advertised_port),
            );
        return Ok((
            shared.node_id,
            StrBytes::from_string(host.to_string()),
            port as i32,
        ));
    }
    let leader = shard
        .topic(groups::OFFSETS_TOPIC)
        .and_then(|t| {
            t.replicas(groups::offsets_partition(group))
                .map(|r| r.leader)
        })
        .ok_or(errors::COORDINATOR_NOT_AVAILABLE)?;
    let view = shard.brokers();
    match view.brokers.get(&leader) {
        Some(b) if !b.fenced => match b.endpoint(listener) {
            Some((host, port)) => Ok((b.id, StrBytes::from_string(host.to_string()), port as i32)),
            None => Err(errors::COORDINATOR_NOT_AVAILABLE),
        },
        _ => Err(errors::COORDINATOR_NOT_AVAILABLE),
    }
}

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: FindCoordinatorRequest = decode_body(&mut req)?;
    let shard = shard::current();
    let listener = crate::security::listener_name(&shard.shared, conn);
    let locate = |key: &str| {
        // DESCRIBE on the group (or transactional id) the key names.
        if body.key_type == KEY_TYPE_GROUP
            && !crate::security::authorizer::on_group(conn, crate::acl::DESCRIBE, key)
        {
            Err(errors::GROUP_AUTHORIZATION_FAILED)
        } else if body.key_type != KEY_TYPE_GROUP
            && !crate::security::authorize(
                conn,
                crate::acl::DESCRIBE,
                crate::security::resource::TRANSACTIONAL_ID,
                key,
            )
        {
            Err(errors::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
        } else if body.key_type == KEY_TYPE_GROUP {
            group_coordinator(&shard, key, listener)
        } else {
            Err(errors::COORDINATOR_NOT_AVAILABLE)
        }
    };
    let mut response = FindCoordinatorResponse::default();
    if req.version >= 4 {
        response.coordinators = body
            .coordinator_keys
            .iter()
            .map(|key| {
                let c = Coordinator::default().with_key(key.clone());
                match locate(key) {
                    Ok((node, host, port)) => c
                        .with_node_id(BrokerId(node))
                        .with_host(host)
                        .with_port(port)
                        .with_error_code(errors::NONE),
                    Err(error) => c
                        .with_node_id(BrokerId(-1))
                        .with_host(StrBytes::default())
                        .with_port(-1)
                        .with_error_code(error),
                }
            })
            .collect();
    } else {
        response = match locate(&body.key) {
            Ok((node, host, port)) => response
                .with_error_code(errors::NONE)
                .with_node_id(BrokerId(node))
                .with_host(host)
                .with_port(port),
            Err(error) => response.with_error_code(error).with_node_id(BrokerId(-1)),
        };
    }
    Ok(respond(&req, &response))
}
