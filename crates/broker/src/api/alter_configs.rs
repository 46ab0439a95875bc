//! AlterConfigs (v0-2): each resource's given configs replace its whole set of overrides
//! (a TOPIC's overrides, or the dynamic configs of the BROKER resource "" or this node's id).
//! Validated first (INVALID_CONFIG naming the key), persisted, then applied to live partitions.

use super::describe_configs::{broker_scope, RESOURCE_BROKER, RESOURCE_TOPIC};
use super::{decode_body, refuse_over, respond, Outcome};
use crate::errors;
use crate::limits::{REQUEST_TOPICS_MAX, TOPIC_CONFIGS_BYTES_MAX};
use crate::shard::{self, ConfigChange};
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;

/// Where one resource's change goes, once its type and name are known good.
pub async fn alter_resource(
    resource_type: i8,
    name: &str,
    change: ConfigChange,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    match resource_type {
        RESOURCE_TOPIC => {
            if !crate::metadata::valid_topic_name(name) {
                return Err((
                    errors::INVALID_TOPIC_EXCEPTION,
                    format!("invalid topic name {name:?}"),
                ));
            }
            shard::alter_topic_configs(name.to_string(), change, validate_only).await
        }
        RESOURCE_BROKER => match broker_scope(name) {
            Some(scope) => shard::alter_broker_configs(scope, change, validate_only).await,
            None => Err((
                errors::INVALID_REQUEST,
                format!(
                    "unexpected broker id {name:?}: this is node {}",
                    crate::shard::current().shared.node_id
                ),
            )),
        },
        other => Err((
            errors::INVALID_REQUEST,
            format!("resource type {other} is not supported (TOPIC = 2, BROKER = 4)"),
        )),
    }
}

/// Refuses a resource whose configs, all together, are larger than a topic may keep.
pub fn check_configs_bytes(bytes: usize) -> Result<(), (i16, String)> {
    if bytes > TOPIC_CONFIGS_BYTES_MAX {
        return Err((
            errors::INVALID_CONFIG,
            format!("{bytes} bytes of configs, more than {TOPIC_CONFIGS_BYTES_MAX}"),
        ));
    }
    Ok(())
}

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: AlterConfigsRequest = decode_body(&mut req)?;
    refuse_over(
        "AlterConfigs",
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
        let mut seen = std::collections::HashSet::new();
        let duplicate = r.configs.iter().find(|c| !seen.insert(c.name.as_str()));
        let refusal = crate::security::authorizer::config_refusal(
            conn,
            crate::acl::ALTER_CONFIGS,
            r.resource_type,
            &r.resource_name,
        );
        let result = match duplicate {
            _ if refusal.is_some() => Err(refusal.unwrap_or_default()),
            Some(c) => Err((
                errors::INVALID_REQUEST,
                format!("Error due to duplicate config keys: {}", c.name.as_str()),
            )),
            None => match check_configs_bytes(bytes) {
                Err(e) => Err(e),
                Ok(()) => {
                    // As in Kafka, a config given without a value is left out of the new set.
                    let set = r
                        .configs
                        .iter()
                        .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                        .collect();
                    alter_resource(
                        r.resource_type,
                        &r.resource_name,
                        ConfigChange::Replace(set),
                        body.validate_only,
                    )
                    .await
                }
            },
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
        &AlterConfigsResponse::default().with_responses(responses),
    ))
}
