//! ListGroups: the groups of every shard, optionally filtered by state (v4+).

use super::{decode_body, respond, Outcome};
use crate::{groups, shard};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;
use ringbroker_runtime::mesh;

pub async fn handle(mut req: Request) -> Result<Outcome, Outcome> {
    let body: ListGroupsRequest = decode_body(&mut req)?;
    let states: Vec<String> = body
        .states_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let mut listed = Vec::new();
    for s in 0..shard::current().shared.shard_count {
        for (id, ptype, state) in mesh::call(s, || async { groups::list() }).await {
            if !states.is_empty() && !states.contains(&state.to_lowercase()) {
                continue;
            }
            let mut g = ListedGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(id)))
                .with_protocol_type(StrBytes::from_string(ptype));
            if req.version >= 4 {
                g = g.with_group_state(StrBytes::from_static_str(state));
            }
            listed.push(g);
        }
    }
    Ok(respond(
        &req,
        &ListGroupsResponse::default().with_groups(listed),
    ))
}
