//! InitProducerId: a producer id for idempotent producers (epoch 0), or the same id with a
//! bumped epoch when the producer asks with its current one (KIP-360; a new id once the epoch
//! is exhausted). Transactional ids are refused: transactions are not implemented.

use super::{decode_body, respond, Outcome};
use crate::{producer_state, shard};
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use ringbroker_protocol::request::Request;
use ringbroker_runtime::mesh;

const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: InitProducerIdRequest = decode_body(&mut req)?;
    let mut response = InitProducerIdResponse::default();
    // An idempotent producer needs IDEMPOTENT_WRITE on the cluster or WRITE on some topic
    // (Kafka's authorizeByResourceType); transactions are not supported, so a transactional
    // id is refused with the error Kafka gives without WRITE on it.
    let idempotent_allowed = crate::security::authorizer::may(
        conn,
        crate::acl::IDEMPOTENT_WRITE,
        crate::security::resource::CLUSTER,
        crate::security::resource::CLUSTER_NAME,
    ) || crate::security::authorizer::authorize_any(
        conn,
        crate::acl::WRITE,
        crate::security::resource::TOPIC,
    );
    if body.transactional_id.is_none() && !idempotent_allowed {
        response = response
            .with_error_code(crate::errors::CLUSTER_AUTHORIZATION_FAILED)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        return Ok(respond(&req, &response));
    }
    if body.transactional_id.is_some() {
        response = response
            .with_error_code(TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        return Ok(respond(&req, &response));
    }
    // KIP-360: the producer keeps its id with the next epoch (its sequences restart at 0); at
    // the last epoch it gets a new id, as epoch 0 of the old one would be fenced as stale.
    let known = body.producer_id.0 >= 0 && body.producer_epoch >= 0;
    if let Some(epoch) = body.producer_epoch.checked_add(1).filter(|_| known) {
        return Ok(respond(
            &req,
            &response
                .with_producer_id(body.producer_id)
                .with_producer_epoch(epoch),
        ));
    }
    let shard = shard::current();
    let data_dir = shard.shared.config.data_dir.clone();
    let clustered = shard.shared.cluster.is_some();
    let node_id = shard.shared.node_id;
    let id = mesh::call(0, move || async move {
        producer_state::allocate_producer_id(&data_dir)
    })
    .await
    .map(|local| {
        if clustered {
            in_node_range(local, node_id)
        } else {
            local
        }
    });
    response = match id {
        Ok(id) => response
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(code) => response
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    };
    Ok(respond(&req, &response))
}

/// Bits of a producer id below the node's part (cluster mode).
const NODE_LOCAL_ID_BITS: u32 = 40;
/// Node ids whose range is distinct: 2^22 nodes × 2^40 ids stay below 2^62.
const NODE_RANGE_MASK: i64 = (1 << 22) - 1;

/// In a cluster, every node hands out ids from its own range (its node id above the local
/// counter): partitions move between leaders, and two producers with one id would have each
/// other's batches taken for duplicates.
fn in_node_range(local: i64, node_id: i32) -> i64 {
    ((i64::from(node_id) & NODE_RANGE_MASK) << NODE_LOCAL_ID_BITS)
        | (local & ((1 << NODE_LOCAL_ID_BITS) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_hand_out_disjoint_producer_ids() {
        assert_ne!(in_node_range(0, 1), in_node_range(0, 2));
        assert_eq!(in_node_range(5, 0), 5);
        assert_eq!(in_node_range(5, 3), (3 << 40) | 5);
        assert!(in_node_range((1 << 40) - 1, (1 << 22) - 1) > 0);
    }
}
