//! ListGroups: the groups of every shard with their protocol type; v4+ also their state and
//! a states filter, v5+ their type and a types filter. Every group here is a classic group
//! (JoinGroup/SyncGroup; KIP-848's consumer groups are not served). Filters compare without
//! case, as Kafka does.

use super::{decode_body, respond, Outcome};
use crate::{groups, shard};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;
use ringbroker_runtime::mesh;

/// Kafka's `GroupType` name of every group this broker coordinates.
const GROUP_TYPE: &str = "classic";

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: ListGroupsRequest = decode_body(&mut req)?;
    let lower =
        |list: &[StrBytes]| -> Vec<String> { list.iter().map(|s| s.to_lowercase()).collect() };
    let states = lower(&body.states_filter);
    let types = lower(&body.types_filter);
    // DESCRIBE on the cluster lists every group, else those with DESCRIBE on them.
    let all = crate::security::authorizer::may(
        conn,
        crate::acl::DESCRIBE,
        crate::security::resource::CLUSTER,
        crate::security::resource::CLUSTER_NAME,
    );
    let mut listed = Vec::new();
    if types.is_empty() || types.iter().any(|t| t == GROUP_TYPE) {
        for s in 0..shard::current().shared.shard_count {
            for (id, ptype, state) in mesh::call(s, || async { groups::list() }).await {
                if !states.is_empty() && !states.contains(&state.to_lowercase()) {
                    continue;
                }
                if !all
                    && !crate::security::authorizer::may(
                        conn,
                        crate::acl::DESCRIBE,
                        crate::security::resource::GROUP,
                        &id,
                    )
                {
                    continue;
                }
                let mut g = ListedGroup::default()
                    .with_group_id(GroupId(StrBytes::from_string(id)))
                    .with_protocol_type(StrBytes::from_string(ptype));
                if req.version >= 4 {
                    g = g.with_group_state(StrBytes::from_static_str(state));
                }
                if req.version >= 5 {
                    g = g.with_group_type(StrBytes::from_static_str(GROUP_TYPE));
                }
                listed.push(g);
            }
        }
    }
    Ok(respond(
        &req,
        &ListGroupsResponse::default().with_groups(listed),
    ))
}
