//! LeaveGroup: one member (v0-2) or a batch identified by member or instance id (v3+).

use super::{decode_body, respond, Outcome};
use crate::groups;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;
use ringbroker_runtime::mesh;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: LeaveGroupRequest = decode_body(&mut req)?;
    let group = body.group_id.0.to_string();
    let members: Vec<(String, Option<String>)> = if req.version >= 3 {
        body.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(body.member_id.to_string(), None)]
    };
    if let Some(error) = crate::security::authorizer::group_read_refusal(conn, &group)
        .or_else(|| groups::coordinator_error(&group))
    {
        return Ok(respond(
            &req,
            &LeaveGroupResponse::default().with_error_code(error),
        ));
    }
    let (g, asked) = (group.clone(), members.clone());
    let codes = mesh::call(groups::group_shard(&group), move || async move {
        groups::leave(&g, asked)
    })
    .await;
    let mut response = LeaveGroupResponse::default();
    if req.version >= 3 {
        response.members = members
            .into_iter()
            .zip(&codes)
            .map(|((id, instance), &code)| {
                MemberResponse::default()
                    .with_member_id(StrBytes::from_string(id))
                    .with_group_instance_id(instance.map(StrBytes::from_string))
                    .with_error_code(code)
            })
            .collect();
    } else {
        response = response.with_error_code(codes[0]);
    }
    Ok(respond(&req, &response))
}
