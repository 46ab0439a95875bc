//! SyncGroup: the leader's assignments are handed to every member.

use super::{decode_body, respond, Outcome};
use crate::groups;
use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;
use ringbroker_runtime::mesh;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: SyncGroupRequest = decode_body(&mut req)?;
    let group = body.group_id.0.to_string();
    let (generation, member, instance) = (
        body.generation_id,
        body.member_id.to_string(),
        body.group_instance_id.map(|s| s.to_string()),
    );
    let assignments: Vec<(String, bytes::Bytes)> = body
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let g = group.clone();
    let r = match crate::security::authorizer::group_read_refusal(conn, &group)
        .or_else(|| groups::coordinator_error(&group))
    {
        Some(error) => groups::SyncResult {
            error,
            ..groups::SyncResult::default()
        },
        None => {
            mesh::call(groups::group_shard(&group), move || {
                groups::sync(g, generation, member, instance, assignments)
            })
            .await
        }
    };
    let mut response = SyncGroupResponse::default()
        .with_error_code(r.error)
        .with_assignment(r.assignment);
    if req.version >= 5 {
        response = response
            .with_protocol_type(r.protocol_type.map(StrBytes::from_string))
            .with_protocol_name(r.protocol.map(StrBytes::from_string));
    }
    Ok(respond(&req, &response))
}
