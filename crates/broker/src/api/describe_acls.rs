//! DescribeAcls (v1-3): the entries one filter matches (Kafka's `AclBindingFilter`: ANY and
//! MATCH pattern types as Kafka defines them), grouped by resource pattern. Needs the
//! authorizer (SECURITY_DISABLED otherwise) and DESCRIBE on the cluster
//! (CLUSTER_AUTHORIZATION_FAILED otherwise).

use super::{decode_body, respond, Outcome};
use crate::acl;
use crate::errors;
use crate::security::authorizer::{self, AclFilter};
use crate::security::resource;
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{DescribeAclsRequest, DescribeAclsResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;
use std::collections::HashMap;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: DescribeAclsRequest = decode_body(&mut req)?;
    let refused = |code: i16, message: String| {
        DescribeAclsResponse::default()
            .with_error_code(code)
            .with_error_message(Some(StrBytes::from_string(message)))
    };
    let filter = AclFilter {
        resource_type: body.resource_type_filter,
        resource_name: body.resource_name_filter.map(|s| s.to_string()),
        pattern_type: body.pattern_type_filter,
        principal: body.principal_filter.map(|s| s.to_string()),
        host: body.host_filter.map(|s| s.to_string()),
        operation: body.operation,
        permission_type: body.permission_type,
    };
    let response = if !authorizer::enabled() {
        refused(
            errors::SECURITY_DISABLED,
            "No Authorizer is configured.".into(),
        )
    } else if !crate::security::authorize(
        conn,
        acl::DESCRIBE,
        resource::CLUSTER,
        resource::CLUSTER_NAME,
    ) {
        refused(
            errors::CLUSTER_AUTHORIZATION_FAILED,
            "Cluster authorization failed.".into(),
        )
    } else if let Err(why) = filter.validate() {
        refused(errors::INVALID_REQUEST, why)
    } else {
        let table = authorizer::table();
        let mut resources: Vec<DescribeAclsResource> = Vec::new();
        let mut index: HashMap<(i8, &str, i8), usize> = HashMap::new();
        for b in table.bindings().iter().filter(|b| filter.matches(b)) {
            let key = (b.resource_type, b.resource_name.as_str(), b.pattern_type);
            let at = *index.entry(key).or_insert_with(|| {
                resources.push(
                    DescribeAclsResource::default()
                        .with_resource_type(b.resource_type)
                        .with_resource_name(StrBytes::from_string(b.resource_name.clone()))
                        .with_pattern_type(b.pattern_type),
                );
                resources.len() - 1
            });
            resources[at].acls.push(
                AclDescription::default()
                    .with_principal(StrBytes::from_string(b.principal.clone()))
                    .with_host(StrBytes::from_string(b.host.clone()))
                    .with_operation(b.operation)
                    .with_permission_type(b.permission_type),
            );
        }
        DescribeAclsResponse::default().with_resources(resources)
    };
    Ok(respond(&req, &response))
}
