//! FindCoordinator: this broker (node 0) coordinates every group; transactions are not
//! offered, so transaction keys get COORDINATOR_NOT_AVAILABLE.

use super::{decode_body, respond, Outcome};
use crate::{errors, shard};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;

const KEY_TYPE_GROUP: i8 = 0;

pub async fn handle(mut req: Request) -> Result<Outcome, Outcome> {
    let body: FindCoordinatorRequest = decode_body(&mut req)?;
    let shared = shard::current().shared.clone();
    let (host, port) = (
        StrBytes::from_string(shared.advertised_host.clone()),
        shared.advertised_port as i32,
    );
    let error = if body.key_type == KEY_TYPE_GROUP {
        errors::NONE
    } else {
        crate::errors::COORDINATOR_NOT_AVAILABLE
    };
    let mut response = FindCoordinatorResponse::default();
    if req.version >= 4 {
        response.coordinators = body
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(if error == 0 { 0 } else { -1 }))
                    .with_host(if error == 0 {
                        host.clone()
                    } else {
                        StrBytes::default()
                    })
                    .with_port(if error == 0 { port } else { -1 })
                    .with_error_code(error)
            })
            .collect();
    } else {
        response = response
            .with_error_code(error)
            .with_node_id(BrokerId(if error == 0 { 0 } else { -1 }));
        if error == 0 {
            response = response.with_host(host).with_port(port);
        }
    }
    Ok(respond(&req, &response))
}
