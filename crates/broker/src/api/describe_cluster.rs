//! DescribeCluster (KIP-700): the cluster's unfenced brokers (with `include_fenced_brokers`,
//! v2, the fenced ones too, marked), the active controller and the cluster id; a single node
//! is node 0 and its own controller, at its advertised address. Kafka's checks on `endpoint_type` (v1+): an unknown type gets
//! UNSUPPORTED_ENDPOINT_TYPE, the controller type MISMATCHED_ENDPOINT_TYPE (this listener
//! serves brokers); v0 requests cannot carry either.

use super::{decode_body, respond, Outcome};
use crate::{acl, errors, shard};
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;

/// Kafka's `EndpointType` ids.
const ENDPOINT_TYPE_BROKER: i8 = 1;
const ENDPOINT_TYPE_CONTROLLER: i8 = 2;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: DescribeClusterRequest = decode_body(&mut req)?;
    let shard = shard::current();
    let shared = shard.shared.clone();
    let endpoint_error = match body.endpoint_type {
        ENDPOINT_TYPE_BROKER => None,
        ENDPOINT_TYPE_CONTROLLER => Some((
            errors::MISMATCHED_ENDPOINT_TYPE,
            "The request was sent to an endpoint of type BROKER, but we wanted an endpoint of \
             type CONTROLLER"
                .to_string(),
        )),
        other => Some((
            errors::UNSUPPORTED_ENDPOINT_TYPE,
            format!("Unsupported endpoint type {other}"),
        )),
    };
    if let Some((code, message)) = endpoint_error {
        return Ok(respond(
            &req,
            &DescribeClusterResponse::default()
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(message))),
        ));
    }
    let view = shard.brokers();
    // The endpoints of the listener the request came in on; brokers without it are left out.
    let listener = crate::security::listener_name(&shared, conn);
    let brokers = view
        .brokers
        .values()
        .filter(|b| !b.fenced || (req.version >= 2 && body.include_fenced_brokers))
        .filter_map(|b| {
            let (host, port) = b.endpoint(listener)?;
            Some(
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.id))
                    .with_host(StrBytes::from_string(host.to_string()))
                    .with_port(port as i32)
                    .with_rack(None)
                    .with_is_fenced(b.fenced),
            )
        })
        .collect();
    let response = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(shared.cluster_id.clone()))
        .with_controller_id(BrokerId(view.controller_id))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(crate::security::authorizer::authorized_operations(
            conn,
            body.include_cluster_authorized_operations,
            acl::CLUSTER_OPERATIONS,
            crate::security::resource::CLUSTER,
            crate::security::resource::CLUSTER_NAME,
        ));
    Ok(respond(&req, &response))
}

impl crate::stats::ErrorCodes for DescribeClusterResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        f(self.error_code);
    }
}
