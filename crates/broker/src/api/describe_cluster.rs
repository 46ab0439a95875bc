//! DescribeCluster (KIP-700): this broker as node 0 and controller of a one-node cluster, at
//! its advertised address. Kafka's checks on `endpoint_type` (v1+): an unknown type gets
//! UNSUPPORTED_ENDPOINT_TYPE, the controller type MISMATCHED_ENDPOINT_TYPE (this listener
//! serves brokers); v0 requests cannot carry either. The broker is never fenced, so
//! `include_fenced_brokers` (v2) lists the same broker.

use super::{decode_body, respond, Outcome};
use crate::{acl, errors, shard};
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;

/// Kafka's `EndpointType` ids.
const ENDPOINT_TYPE_BROKER: i8 = 1;
const ENDPOINT_TYPE_CONTROLLER: i8 = 2;

pub async fn handle(mut req: Request) -> Result<Outcome, Outcome> {
    let body: DescribeClusterRequest = decode_body(&mut req)?;
    let shared = shard::current().shared.clone();
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
    let broker = DescribeClusterBroker::default()
        .with_broker_id(BrokerId(0))
        .with_host(StrBytes::from_string(shared.advertised_host.clone()))
        .with_port(shared.advertised_port as i32)
        .with_rack(None);
    let response = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(shared.cluster_id.clone()))
        .with_controller_id(BrokerId(0))
        .with_brokers(vec![broker])
        .with_cluster_authorized_operations(acl::authorized(
            body.include_cluster_authorized_operations,
            acl::CLUSTER_OPERATIONS,
        ));
    Ok(respond(&req, &response))
}

impl crate::stats::ErrorCodes for DescribeClusterResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        f(self.error_code);
    }
}
