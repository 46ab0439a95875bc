//! DeleteGroups: removes empty groups and their committed offsets (tombstones in the log).

use super::{decode_body, respond, Outcome};
use crate::groups;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};
use ringbroker_protocol::request::Request;
use ringbroker_runtime::mesh;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: DeleteGroupsRequest = decode_body(&mut req)?;
    let mut results = Vec::new();
    for group in body.groups_names {
        let name = group.0.to_string();
        let n = name.clone();
        let refused = (!crate::security::authorizer::on_group(conn, crate::acl::DELETE, &name))
            .then_some(crate::errors::GROUP_AUTHORIZATION_FAILED);
        let code = match refused.or_else(|| groups::coordinator_error(&name)) {
            Some(error) => error,
            None => {
                mesh::call_detached(groups::group_shard(&name), move || async move {
                    groups::delete_group(&n).await
                })
                .await
            }
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group)
                .with_error_code(code),
        );
    }
    Ok(respond(
        &req,
        &DeleteGroupsResponse::default().with_results(results),
    ))
}
