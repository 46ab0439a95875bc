//! Heartbeat: keeps a member's session alive; tells it when a rebalance started, and a static
//! member replaced by another instance that it is fenced.

use super::{decode_body, respond, Outcome};
use crate::groups;
use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};
use ringbroker_protocol::request::Request;
use ringbroker_runtime::mesh;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: HeartbeatRequest = decode_body(&mut req)?;
    let group = body.group_id.0.to_string();
    let (generation, member, instance) = (
        body.generation_id,
        body.member_id.to_string(),
        body.group_instance_id.map(|s| s.to_string()),
    );
    if let Some(error) = crate::security::authorizer::group_read_refusal(conn, &group)
        .or_else(|| groups::coordinator_error(&group))
    {
        return Ok(respond(
            &req,
            &HeartbeatResponse::default().with_error_code(error),
        ));
    }
    let g = group.clone();
    let error = mesh::call(groups::group_shard(&group), move || async move {
        groups::heartbeat(&g, generation, &member, instance.as_deref())
    })
    .await;
    Ok(respond(
        &req,
        &HeartbeatResponse::default().with_error_code(error),
    ))
}
