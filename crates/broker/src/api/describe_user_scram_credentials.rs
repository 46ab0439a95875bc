//! DescribeUserScramCredentials (v0): the SCRAM mechanisms and iteration counts of the named
//! users (none named: every user with a credential), never salts or keys. As Kafka: a user
//! named twice gets DUPLICATE_RESOURCE, an unknown one RESOURCE_NOT_FOUND; without DESCRIBE
//! on the cluster the whole request gets CLUSTER_AUTHORIZATION_FAILED.

use super::{decode_body, respond, Outcome};
use crate::security::{self, credentials, SaslMechanism};
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;

/// Users one request may name.
pub const USERS_PER_REQUEST_MAX: usize = 10_000;

pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
pub const RESOURCE_NOT_FOUND: i16 = 91;
pub const DUPLICATE_RESOURCE: i16 = 92;

/// Kafka's `ScramMechanism` type codes.
pub fn mechanism_code(m: SaslMechanism) -> i8 {
    match m {
        SaslMechanism::ScramSha256 => 1,
        SaslMechanism::ScramSha512 => 2,
        SaslMechanism::Plain => 0,
    }
}

pub fn mechanism_of_code(code: i8) -> Option<SaslMechanism> {
    match code {
        1 => Some(SaslMechanism::ScramSha256),
        2 => Some(SaslMechanism::ScramSha512),
        _ => None,
    }
}

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: DescribeUserScramCredentialsRequest = decode_body(&mut req)?;
    if let Some(users) = &body.users {
        super::refuse_over(
            "DescribeUserScramCredentials",
            "users",
            users.len(),
            USERS_PER_REQUEST_MAX,
        )?;
    }
    if !security::authorize(
        conn,
        crate::acl::DESCRIBE,
        security::resource::CLUSTER,
        security::resource::CLUSTER_NAME,
    ) {
        return Ok(respond(
            &req,
            &DescribeUserScramCredentialsResponse::default()
                .with_error_code(CLUSTER_AUTHORIZATION_FAILED)
                .with_error_message(Some(StrBytes::from_static_str(
                    "Cluster authorization failed.",
                ))),
        ));
    }
    let store = credentials::current();
    let infos = |user: &str| -> Vec<CredentialInfo> {
        store.users.get(user).map_or_else(Vec::new, |cs| {
            cs.iter()
                .map(|c| {
                    CredentialInfo::default()
                        .with_mechanism(mechanism_code(c.mechanism))
                        .with_iterations(c.iterations as i32)
                })
                .collect()
        })
    };
    let results = match body.users.as_deref() {
        None | Some([]) => store
            .users
            .keys()
            .map(|u| {
                DescribeUserScramCredentialsResult::default()
                    .with_user(StrBytes::from_string(u.clone()))
                    .with_credential_infos(infos(u))
            })
            .collect(),
        Some(named) => {
            let mut seen = std::collections::HashMap::new();
            for u in named {
                *seen.entry(u.name.as_str()).or_insert(0usize) += 1;
            }
            let mut done = std::collections::HashSet::new();
            named
                .iter()
                .filter(|u| done.insert(u.name.as_str()))
                .map(|u| {
                    let name = u.name.as_str();
                    let result =
                        DescribeUserScramCredentialsResult::default().with_user(u.name.clone());
                    if seen.get(name).copied().unwrap_or(0) > 1 {
                        result
                            .with_error_code(DUPLICATE_RESOURCE)
                            .with_error_message(Some(StrBytes::from_string(format!(
                                "Cannot describe SCRAM credentials for the same user twice in a \
                                 single request: {name}"
                            ))))
                    } else if !store.users.contains_key(name) {
                        result
                            .with_error_code(RESOURCE_NOT_FOUND)
                            .with_error_message(Some(StrBytes::from_string(format!(
                                "Attempt to describe a user credential that does not exist: \
                                 {name}"
                            ))))
                    } else {
                        result.with_credential_infos(infos(name))
                    }
                })
                .collect()
        }
    };
    Ok(respond(
        &req,
        &DescribeUserScramCredentialsResponse::default().with_results(results),
    ))
}

impl crate::stats::ErrorCodes for DescribeUserScramCredentialsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        f(self.error_code);
        for r in &self.results {
            f(r.error_code);
        }
    }
}
