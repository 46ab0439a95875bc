//! CreateAcls (v1-3): adds access control entries. Needs the authorizer
//! (SECURITY_DISABLED otherwise) and ALTER on the cluster (CLUSTER_AUTHORIZATION_FAILED for
//! every creation otherwise). A creation Kafka would refuse (a filter-only code such as ANY
//! or MATCH, an empty principal or name, a cluster resource not named `kafka-cluster`) gets
//! INVALID_REQUEST; the valid ones of the request are added together.

use super::{decode_body, refuse_over, respond, Outcome};
use crate::acl;
use crate::errors;
use crate::security::authorizer::{self, ACLS_PER_REQUEST_MAX};
use crate::security::resource;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::{CreateAclsRequest, CreateAclsResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_cluster::AclBinding;
use ringbroker_protocol::request::Request;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: CreateAclsRequest = decode_body(&mut req)?;
    refuse_over(
        "CreateAcls",
        "creations",
        body.creations.len(),
        ACLS_PER_REQUEST_MAX,
    )?;
    let refuse_all = |code: i16, message: &str| -> Vec<AclCreationResult> {
        body.creations
            .iter()
            .map(|_| {
                AclCreationResult::default()
                    .with_error_code(code)
                    .with_error_message(Some(StrBytes::from_string(message.to_string())))
            })
            .collect()
    };
    let results = if !authorizer::enabled() {
        refuse_all(errors::SECURITY_DISABLED, "No Authorizer is configured.")
    } else if !crate::security::authorize(
        conn,
        acl::ALTER,
        resource::CLUSTER,
        resource::CLUSTER_NAME,
    ) {
        refuse_all(
            errors::CLUSTER_AUTHORIZATION_FAILED,
            "Cluster authorization failed.",
        )
    } else {
        let checked: Vec<Result<AclBinding, String>> = body
            .creations
            .iter()
            .map(|c| {
                let b = AclBinding {
                    resource_type: c.resource_type,
                    resource_name: c.resource_name.to_string(),
                    pattern_type: c.resource_pattern_type,
                    principal: c.principal.to_string(),
                    host: c.host.to_string(),
                    operation: c.operation,
                    permission_type: c.permission_type,
                };
                authorizer::validate_new(&b).map(|()| b)
            })
            .collect();
        let valid: Vec<AclBinding> = checked.iter().filter_map(|c| c.clone().ok()).collect();
        let outcome = if valid.is_empty() {
            Ok(())
        } else {
            authorizer::create(valid).await
        };
        checked
            .into_iter()
            .map(|c| {
                let error = match (c, &outcome) {
                    (Err(why), _) => Some((errors::INVALID_REQUEST, why)),
                    (Ok(_), Err((code, why))) => Some((*code, why.clone())),
                    (Ok(_), Ok(())) => None,
                };
                match error {
                    Some((code, why)) => AclCreationResult::default()
                        .with_error_code(code)
                        .with_error_message(Some(StrBytes::from_string(why))),
                    None => AclCreationResult::default(),
                }
            })
            .collect()
    };
    Ok(respond(
        &req,
        &CreateAclsResponse::default().with_results(results),
    ))
}
