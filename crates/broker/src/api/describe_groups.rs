//! DescribeGroups: state, protocol and members of each group (unknown groups are "Dead"). A
//! group named twice is described once, so a response is never a multiple of the broker's
//! state. v3+ reports the operations allowed on each group when asked (all of them: no
//! authorizer yet).

use super::{decode_body, respond, Outcome};
use crate::{acl, groups};
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;
use ringbroker_runtime::mesh;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let mut body: DescribeGroupsRequest = decode_body(&mut req)?;
    let mut seen = std::collections::HashSet::new();
    body.groups.retain(|g| seen.insert(g.0.clone()));
    let mut described = Vec::new();
    for group in body.groups {
        let name = group.0.to_string();
        let n = name.clone();
        let refused = (!crate::security::authorizer::on_group(conn, acl::DESCRIBE, &name))
            .then_some(crate::errors::GROUP_AUTHORIZATION_FAILED);
        if let Some(error) = refused.or_else(|| groups::coordinator_error(&name)) {
            described.push(
                DescribedGroup::default()
                    .with_group_id(group)
                    .with_error_code(error),
            );
            continue;
        }
        let found = mesh::call(groups::group_shard(&name), move || async move {
            groups::describe(&n)
        })
        .await;
        let mut d = DescribedGroup::default().with_group_id(group);
        if req.version >= 3 {
            d = d.with_authorized_operations(crate::security::authorizer::authorized_operations(
                conn,
                body.include_authorized_operations,
                acl::GROUP_OPERATIONS,
                crate::security::resource::GROUP,
                &name,
            ));
        }
        match found {
            None => d = d.with_group_state(StrBytes::from_static_str("Dead")),
            Some((state, ptype, protocol, members)) => {
                let members = members
                    .into_iter()
                    .map(|(id, instance, client_id, host, metadata, assignment)| {
                        let m = DescribedGroupMember::default()
                            .with_member_id(StrBytes::from_string(id))
                            .with_client_id(StrBytes::from_string(client_id))
                            .with_client_host(StrBytes::from_string(host))
                            .with_member_metadata(metadata)
                            .with_member_assignment(assignment);
                        if req.version >= 4 {
                            m.with_group_instance_id(instance.map(StrBytes::from_string))
                        } else {
                            m
                        }
                    })
                    .collect();
                d = d
                    .with_group_state(StrBytes::from_static_str(state))
                    .with_protocol_type(StrBytes::from_string(ptype))
                    .with_protocol_data(StrBytes::from_string(protocol))
                    .with_members(members);
            }
        }
        described.push(d);
    }
    Ok(respond(
        &req,
        &DescribeGroupsResponse::default().with_groups(described),
    ))
}
