//! JoinGroup: forwarded to the group's shard; the answer waits until the rebalance completes.

use super::{decode_body, respond, Outcome};
use crate::groups::{self, JoinRequest};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;
use ringbroker_runtime::mesh;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: JoinGroupRequest = decode_body(&mut req)?;
    let v = req.version;
    let group = body.group_id.0.to_string();
    let join = JoinRequest {
        group: group.clone(),
        member_id: body.member_id.to_string(),
        instance_id: body.group_instance_id.map(|s| s.to_string()),
        client_id: req.header.client_id.as_deref().unwrap_or("").to_string(),
        client_host: String::new(),
        session_timeout_ms: body.session_timeout_ms,
        rebalance_timeout_ms: if v >= 1 {
            body.rebalance_timeout_ms
        } else {
            body.session_timeout_ms
        },
        protocol_type: body.protocol_type.to_string(),
        protocols: body
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: v >= 4,
    };
    let r = match crate::security::authorizer::group_read_refusal(conn, &group)
        .or_else(|| groups::coordinator_error(&group))
    {
        Some(error) => groups::JoinResult {
            error,
            member_id: join.member_id,
            ..groups::JoinResult::default()
        },
        None => mesh::call(groups::group_shard(&group), move || groups::join(join)).await,
    };
    let members = r
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let m = JoinGroupResponseMember::default()
                .with_member_id(StrBytes::from_string(id))
                .with_metadata(metadata);
            if v >= 5 {
                m.with_group_instance_id(instance.map(StrBytes::from_string))
            } else {
                m
            }
        })
        .collect();
    let mut response = JoinGroupResponse::default()
        .with_error_code(r.error)
        .with_generation_id(if r.error == 0 { r.generation } else { -1 })
        .with_leader(StrBytes::from_string(r.leader))
        .with_member_id(StrBytes::from_string(r.member_id))
        .with_members(members);
    if v >= 7 {
        response = response
            .with_protocol_type(r.protocol_type.map(StrBytes::from_string))
            .with_protocol_name(r.protocol.map(StrBytes::from_string));
    } else {
        response = response
            .with_protocol_name(Some(StrBytes::from_string(r.protocol.unwrap_or_default())));
    }
    Ok(respond(&req, &response))
}
