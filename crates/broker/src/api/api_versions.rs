//! ApiVersions: the table of supported versions. A request at a version we do not know gets
//! UNSUPPORTED_VERSION with the table, encoded as v0 so any client can read it (KIP-511).

use super::{decode_body, respond, Outcome, SUPPORTED};
use crate::errors;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use ringbroker_protocol::request::Request;
use ringbroker_protocol::response::encode_response;

fn table() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|&(api, min, max)| {
            ApiVersion::default()
                .with_api_key(api as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect()
}

pub async fn handle(mut req: Request, _conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let _body: ApiVersionsRequest = decode_body(&mut req)?;
    // Default-valued tagged fields (features, zk_migration_ready) stay out, as Kafka does.
    let response = ApiVersionsResponse::default()
        .with_error_code(errors::NONE)
        .with_api_keys(table());
    Ok(respond(&req, &response))
}

pub fn unsupported_version(version: i16, correlation_id: i32) -> Outcome {
    tracing::debug!(
        version,
        "ApiVersions at an unsupported version; answering v0 (KIP-511)"
    );
    let response = ApiVersionsResponse::default()
        .with_error_code(errors::UNSUPPORTED_VERSION)
        .with_api_keys(table());
    crate::stats::response_errors(ApiKey::ApiVersions as i16, &response);
    match encode_response(ApiKey::ApiVersions, 0, correlation_id, &response) {
        Ok(frame) => Outcome::Respond(frame),
        Err(e) => Outcome::Close(e.to_string()),
    }
}
