//! AlterUserScramCredentials (v0): sets and deletes users' SCRAM credentials. The client sends
//! the salted password (it ran PBKDF2); the broker keeps only StoredKey and ServerKey derived
//! from it. Kafka's checks per user (an error refuses every change of that user, the others
//! apply): an empty name or iterations outside 4096..=16384 UNACCEPTABLE_CREDENTIAL, an unknown
//! mechanism UNSUPPORTED_SASL_MECHANISM, a (user, mechanism) altered twice DUPLICATE_RESOURCE,
//! deleting a credential that does not exist RESOURCE_NOT_FOUND; without ALTER on the cluster
//! every user gets CLUSTER_AUTHORIZATION_FAILED.

use super::describe_user_scram_credentials::{
    mechanism_of_code, CLUSTER_AUTHORIZATION_FAILED, DUPLICATE_RESOURCE, RESOURCE_NOT_FOUND,
};
use super::{decode_body, respond, Outcome};
use crate::security::credentials::{self, AlterError, Change};
use crate::security::scram::{self, Algorithm, Credential};
use crate::security::{self, sasl};
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Deletions and upsertions one request may carry together.
pub const ALTERATIONS_PER_REQUEST_MAX: usize = 10_000;

pub const UNACCEPTABLE_CREDENTIAL: i16 = 93;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: AlterUserScramCredentialsRequest = decode_body(&mut req)?;
    super::refuse_over(
        "AlterUserScramCredentials",
        "alterations",
        body.deletions.len() + body.upsertions.len(),
        ALTERATIONS_PER_REQUEST_MAX,
    )?;
    let authorized = security::authorize(
        conn,
        crate::acl::ALTER,
        security::resource::CLUSTER,
        security::resource::CLUSTER_NAME,
    );
    // Users in request order (each once: a set, the request may name 10,000), each with its
    // first error.
    let mut users: Vec<String> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut errors: HashMap<String, (i16, String)> = HashMap::new();
    for name in body
        .deletions
        .iter()
        .map(|d| d.name.as_str())
        .chain(body.upsertions.iter().map(|u| u.name.as_str()))
    {
        if seen.insert(name) {
            users.push(name.to_string());
        }
    }
    drop(seen);
    let answer = |users: &[String], errors: &HashMap<String, (i16, String)>| {
        let results = users
            .iter()
            .map(|u| {
                let r = AlterUserScramCredentialsResult::default()
                    .with_user(StrBytes::from_string(u.clone()));
                match errors.get(u) {
                    Some((code, message)) => r
                        .with_error_code(*code)
                        .with_error_message(Some(StrBytes::from_string(message.clone()))),
                    None => r,
                }
            })
            .collect();
        AlterUserScramCredentialsResponse::default().with_results(results)
    };
    if !authorized {
        for u in &users {
            errors.insert(
                u.clone(),
                (
                    CLUSTER_AUTHORIZATION_FAILED,
                    "Cluster authorization failed.".to_string(),
                ),
            );
        }
        return Ok(respond(&req, &answer(&users, &errors)));
    }
    let mut fail = |user: &str, code: i16, message: String| {
        errors.entry(user.to_string()).or_insert((code, message));
    };
    // (user, mechanism code) pairs named more than once.
    let mut pairs: HashMap<(&str, i8), usize> = HashMap::new();
    for (name, m) in body
        .deletions
        .iter()
        .map(|d| (d.name.as_str(), d.mechanism))
        .chain(
            body.upsertions
                .iter()
                .map(|u| (u.name.as_str(), u.mechanism)),
        )
    {
        *pairs.entry((name, m)).or_default() += 1;
    }
    let store = credentials::current();
    let mut changes: BTreeMap<String, Vec<Change>> = BTreeMap::new();
    for d in &body.deletions {
        let user = d.name.as_str();
        let m = match check_named(user, d.mechanism, &pairs) {
            Ok(m) => m,
            Err((code, message)) => {
                fail(user, code, message);
                continue;
            }
        };
        if store.get(user, m).is_none() {
            fail(
                user,
                RESOURCE_NOT_FOUND,
                "Attempt to delete a user credential that does not exist".into(),
            );
            continue;
        }
        changes
            .entry(user.to_string())
            .or_default()
            .push(Change::Delete(user.to_string(), m));
    }
    for u in &body.upsertions {
        let user = u.name.as_str();
        if user.len() > scram::USER_BYTES_MAX {
            fail(
                user,
                UNACCEPTABLE_CREDENTIAL,
                format!("Username longer than {} bytes", scram::USER_BYTES_MAX),
            );
            continue;
        }
        let m = match check_named(user, u.mechanism, &pairs) {
            Ok(m) => m,
            Err((code, message)) => {
                fail(user, code, message);
                continue;
            }
        };
        let iterations = u.iterations;
        if iterations < scram::ITERATIONS_MIN as i32 {
            fail(user, UNACCEPTABLE_CREDENTIAL, "Too few iterations".into());
            continue;
        }
        if iterations > scram::ITERATIONS_MAX as i32 {
            fail(user, UNACCEPTABLE_CREDENTIAL, "Too many iterations".into());
            continue;
        }
        let Some(algorithm) = Algorithm::of(m) else {
            fail(
                user,
                sasl::UNSUPPORTED_SASL_MECHANISM,
                "Unknown SCRAM mechanism".into(),
            );
            continue;
        };
        if u.salt.is_empty()
            || u.salt.len() > scram::SALT_BYTES_MAX
            || u.salted_password.len() != algorithm.output_len()
        {
            fail(
                user,
                UNACCEPTABLE_CREDENTIAL,
                "Credential must have a salt and a salted password of the mechanism's length"
                    .into(),
            );
            continue;
        }
        let credential = Credential {
            mechanism: m,
            iterations: iterations as u32,
            salt: u.salt.to_vec(),
            stored_key: algorithm.hash(&algorithm.client_key(&u.salted_password)),
            server_key: algorithm.server_key(&u.salted_password),
        };
        changes
            .entry(user.to_string())
            .or_default()
            .push(Change::Upsert(user.to_string(), credential));
    }
    let accepted: Vec<Change> = changes
        .into_iter()
        .filter(|(u, _)| !errors.contains_key(u))
        .flat_map(|(_, cs)| cs)
        .collect();
    let accepted_users: Vec<String> = users
        .iter()
        .filter(|u| !errors.contains_key(*u))
        .cloned()
        .collect();
    if let Err(AlterError::Failed(code, message)) = credentials::alter(accepted).await {
        for u in accepted_users {
            errors.insert(u, (code, message.clone()));
        }
    } else if !accepted_users.is_empty() {
        tracing::info!(peer = %conn.peer, principal = %conn.principal.borrow(), users = ?accepted_users, "SCRAM credentials altered");
    }
    Ok(respond(&req, &answer(&users, &errors)))
}

impl crate::stats::ErrorCodes for AlterUserScramCredentialsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        for r in &self.results {
            f(r.error_code);
        }
    }
}

/// The checks a deletion and an upsertion share, in Kafka's order: a user name, a known
/// mechanism, the (user, mechanism) pair named once in the request. The mechanism, or the
/// error code and message.
fn check_named(
    user: &str,
    mechanism: i8,
    pairs: &HashMap<(&str, i8), usize>,
) -> Result<security::SaslMechanism, (i16, String)> {
    if user.is_empty() {
        return Err((UNACCEPTABLE_CREDENTIAL, "Username must not be empty".into()));
    }
    let Some(m) = mechanism_of_code(mechanism) else {
        return Err((
            sasl::UNSUPPORTED_SASL_MECHANISM,
            "Unknown SCRAM mechanism".into(),
        ));
    };
    if pairs.get(&(user, mechanism)).copied().unwrap_or(0) > 1 {
        return Err((
            DUPLICATE_RESOURCE,
            "A user credential cannot be altered twice in the same request".into(),
        ));
    }
    Ok(m)
}
