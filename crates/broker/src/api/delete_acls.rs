//! DeleteAcls (v1-3): removes the entries each filter matches (Kafka's `AclBindingFilter`),
//! answering per filter the entries it matched. Needs the authorizer (SECURITY_DISABLED
//! otherwise) and ALTER on the cluster (CLUSTER_AUTHORIZATION_FAILED for every filter
//! otherwise). The entries are matched against this broker's table and exactly those are
//! removed (in a cluster: through the controller).

use super::{decode_body, refuse_over, respond, Outcome};
use crate::acl;
use crate::errors;
use crate::security::authorizer::{self, AclFilter, ACLS_PER_REQUEST_MAX};
use crate::security::resource;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::{DeleteAclsRequest, DeleteAclsResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_cluster::AclBinding;
use ringbroker_protocol::request::Request;
use std::collections::HashSet;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: DeleteAclsRequest = decode_body(&mut req)?;
    refuse_over(
        "DeleteAcls",
        "filters",
        body.filters.len(),
        ACLS_PER_REQUEST_MAX,
    )?;
    let refuse = |code: i16, message: String| {
        DeleteAclsFilterResult::default()
            .with_error_code(code)
            .with_error_message(Some(StrBytes::from_string(message)))
    };
    let results: Vec<DeleteAclsFilterResult> = if !authorizer::enabled() {
        body.filters
            .iter()
            .map(|_| {
                refuse(
                    errors::SECURITY_DISABLED,
                    "No Authorizer is configured.".into(),
                )
            })
            .collect()
    } else if !crate::security::authorize(
        conn,
        acl::ALTER,
        resource::CLUSTER,
        resource::CLUSTER_NAME,
    ) {
        body.filters
            .iter()
            .map(|_| {
                refuse(
                    errors::CLUSTER_AUTHORIZATION_FAILED,
                    "Cluster authorization failed.".into(),
                )
            })
            .collect()
    } else {
        let table = authorizer::table();
        // Per filter: the entries it matched, or why it is refused.
        let matched: Vec<Result<Vec<AclBinding>, String>> = body
            .filters
            .into_iter()
            .map(|f| {
                let filter = AclFilter {
                    resource_type: f.resource_type_filter,
                    resource_name: f.resource_name_filter.map(|s| s.to_string()),
                    pattern_type: f.pattern_type_filter,
                    principal: f.principal_filter.map(|s| s.to_string()),
                    host: f.host_filter.map(|s| s.to_string()),
                    operation: f.operation,
                    permission_type: f.permission_type,
                };
                filter.validate()?;
                Ok(table
                    .bindings()
                    .iter()
                    .filter(|b| filter.matches(b))
                    .cloned()
                    .collect())
            })
            .collect();
        let mut seen = HashSet::new();
        let doomed: Vec<AclBinding> = matched
            .iter()
            .filter_map(|m| m.as_ref().ok())
            .flatten()
            .filter(|b| seen.insert(*b))
            .cloned()
            .collect();
        let outcome = authorizer::delete(doomed).await;
        matched
            .into_iter()
            .map(|m| match (m, &outcome) {
                (Err(why), _) => refuse(errors::INVALID_REQUEST, why),
                (Ok(_), Err((code, why))) => refuse(*code, why.clone()),
                (Ok(bindings), Ok(())) => DeleteAclsFilterResult::default().with_matching_acls(
                    bindings
                        .into_iter()
                        .map(|b| {
                            DeleteAclsMatchingAcl::default()
                                .with_resource_type(b.resource_type)
                                .with_resource_name(StrBytes::from_string(b.resource_name))
                                .with_pattern_type(b.pattern_type)
                                .with_principal(StrBytes::from_string(b.principal))
                                .with_host(StrBytes::from_string(b.host))
                                .with_operation(b.operation)
                                .with_permission_type(b.permission_type)
                        })
                        .collect(),
                ),
            })
            .collect()
    };
    Ok(respond(
        &req,
        &DeleteAclsResponse::default().with_filter_results(results),
    ))
}
