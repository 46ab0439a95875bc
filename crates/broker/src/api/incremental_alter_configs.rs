//! IncrementalAlterConfigs (v0-1): SET, DELETE, APPEND and SUBTRACT (the last two for
//! list-typed configs such as cleanup.policy) on a TOPIC's overrides or on the dynamic configs
//! of the BROKER resource "" (cluster-wide) or this node's id. The resulting set is validated
//! whole (INVALID_CONFIG naming the key), persisted, then applied to live partitions.

use super::alter_configs::{alter_resource, check_configs_bytes};
use super::{decode_body, refuse_over, respond, Outcome};
use crate::limits::REQUEST_TOPICS_MAX;
use crate::shard::ConfigChange;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: IncrementalAlterConfigsRequest = decode_body(&mut req)?;
    refuse_over(
        "IncrementalAlterConfigs",
        "resources",
        body.resources.len(),
        REQUEST_TOPICS_MAX,
    )?;
    let mut responses = Vec::with_capacity(body.resources.len());
    for r in body.resources {
        let bytes = r
            .configs
            .iter()
            // Each entry counts one byte more, so empty names cannot come in unbounded numbers.
            .map(|c| 1 + c.name.len() + c.value.as_ref().map_or(0, |v| v.len()))
            .sum();
        let refusal = crate::security::authorizer::config_refusal(
            conn,
            crate::acl::ALTER_CONFIGS,
            r.resource_type,
            &r.resource_name,
        );
        let result = match check_configs_bytes(bytes) {
            _ if refusal.is_some() => Err(refusal.unwrap_or_default()),
            Err(e) => Err(e),
            Ok(()) => {
                let ops = r
                    .configs
                    .iter()
                    .map(|c| {
                        (
                            c.name.to_string(),
                            c.config_operation,
                            c.value.as_ref().map(|v| v.to_string()),
                        )
                    })
                    .collect();
                alter_resource(
                    r.resource_type,
                    &r.resource_name,
                    ConfigChange::Incremental(ops),
                    body.validate_only,
                )
                .await
            }
        };
        let mut out = AlterConfigsResourceResponse::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name);
        if let Err((code, message)) = result {
            out = out
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(message)));
        }
        responses.push(out);
    }
    Ok(respond(
        &req,
        &IncrementalAlterConfigsResponse::default().with_responses(responses),
    ))
}
