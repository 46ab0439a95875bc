//! Kafka APIs, one module each, and the versions the broker advertises.
//!
//! Only versions that are implemented and tested are listed, with one deliberate exception:
//! Produce is advertised from v0 because librdkafka before 2.10 (Debian's kcat among them)
//! stops compressing when a broker's Produce minimum is above 0 (KAFKA-18659,
//! librdkafka#4956). Kafka 4 does the same; like it, we refuse v0-2 requests (their message
//! format predates RecordBatch v2) by closing the connection.

pub mod alter_configs;
pub mod alter_partition_reassignments;
pub mod alter_user_scram_credentials;
pub mod api_versions;
pub mod create_acls;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_acls;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_acls;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod describe_producers;
pub mod describe_user_scram_credentials;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod list_partition_reassignments;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sasl_authenticate;
pub mod sasl_handshake;
pub mod sync_group;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};
use ringbroker_protocol::request::{decode_header, Request, RequestError};
use ringbroker_protocol::response::encode_response;

/// `(api, min version, max version)` advertised in ApiVersions.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 11),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
];

pub fn supported(api: ApiKey, version: i16) -> bool {
    SUPPORTED
        .iter()
        .any(|&(a, min, max)| a == api && (min..=max).contains(&version))
}

/// What the connection does after a request.
pub enum Outcome {
    /// Send this response frame.
    Respond(Bytes),
    /// Send this response frame, given as memory pieces and file ranges (zero-copy Fetch).
    RespondChunks(Vec<ringbroker_runtime::chunk::Chunk>),
    /// No response (Produce with acks=0).
    Silent,
    /// Close the connection, logging why.
    Close(String),
    /// Send this response frame, then close the connection, logging why (a refused SASL
    /// handshake or authentication).
    RespondThenClose(Bytes, String),
}

/// Closes the connection (logged, rate limited) when one request names more `what`
/// ("partitions", "topics") than the broker's limit `max` for a single request.
pub fn refuse_over(api: &str, what: &str, count: usize, max: usize) -> Result<(), Outcome> {
    if count <= max {
        return Ok(());
    }
    crate::warn_limited!(api, count, max, "a request names too many {what}; closing");
    Err(Outcome::Close(format!(
        "{api} names {count} {what}, more than {max}"
    )))
}

/// The `(topic, partition)` pairs named more than once among `named` (Kafka answers every
/// entry of such a partition INVALID_REQUEST in ListOffsets and DescribeProducers; work and
/// response size then never grow with repeats).
pub(crate) fn repeated_partitions<'a>(
    named: impl Iterator<Item = (&'a str, i32)>,
) -> std::collections::HashSet<(String, i32)> {
    let mut seen = std::collections::HashSet::new();
    let mut repeated = std::collections::HashSet::new();
    for (topic, partition) in named {
        if !seen.insert((topic, partition)) {
            repeated.insert((topic.to_string(), partition));
        }
    }
    repeated
}

/// Decodes a request body of type `T`; a body that does not decode closes the connection.
pub(crate) fn decode_body<T: Decodable>(req: &mut Request) -> Result<T, Outcome> {
    T::decode(&mut req.body, req.version).map_err(|e| {
        Outcome::Close(format!(
            "malformed {:?} v{} request: {e}",
            req.api, req.version
        ))
    })
}

/// Encodes the response to `req`.
pub(crate) fn respond<T: Encodable + crate::stats::ErrorCodes>(req: &Request, body: &T) -> Outcome {
    crate::stats::response_errors(req.api as i16, body);
    match encode_response(req.api, req.version, req.header.correlation_id, body) {
        Ok(frame) => Outcome::Respond(frame),
        Err(e) => {
            tracing::error!(api = ?req.api, version = req.version, error = %e, "could not encode a response");
            Outcome::Close(format!(
                "internal error encoding {:?} v{}",
                req.api, req.version
            ))
        }
    }
}

/// Handles one request frame, counting it for the metrics layer.
pub async fn handle(frame: Bytes, conn: &crate::connection::Conn) -> Outcome {
    let started = std::time::Instant::now();
    let api = frame.get(..2).map_or(crate::stats::UNKNOWN_API_SLOT, |k| {
        i16::from_be_bytes([k[0], k[1]])
    });
    let outcome = dispatch(frame, conn).await;
    if let Outcome::Close(_) = outcome {
        crate::stats::error(api, crate::stats::CLOSED_CODE);
    }
    crate::stats::request_done(api, started);
    outcome
}

async fn dispatch(frame: Bytes, conn: &crate::connection::Conn) -> Outcome {
    if conn.protocol.uses_sasl() && crate::security::sasl::raw_expected(conn) {
        // After a SaslHandshake v0 the client's tokens come without Kafka headers.
        return crate::security::sasl::raw_token(frame, conn).await;
    }
    let req = match decode_header(frame, supported) {
        Ok(req) => req,
        Err(RequestError::UnsupportedVersion {
            api: ApiKey::ApiVersions,
            version,
            correlation_id,
        }) => {
            return api_versions::unsupported_version(version, correlation_id);
        }
        Err(e) => return Outcome::Close(e.to_string()),
    };
    if let Err(outcome) = crate::security::admit(&req, conn) {
        return outcome;
    }
    let result = match req.api {
        ApiKey::ApiVersions => api_versions::handle(req, conn).await,
        ApiKey::Metadata => metadata::handle(req, conn).await,
        ApiKey::Produce => produce::handle(req, conn).await,
        ApiKey::Fetch => fetch::handle(req, conn).await,
        ApiKey::ListOffsets => list_offsets::handle(req, conn).await,
        ApiKey::CreateTopics => create_topics::handle(req, conn).await,
        ApiKey::DeleteTopics => delete_topics::handle(req, conn).await,
        ApiKey::FindCoordinator => find_coordinator::handle(req, conn).await,
        // Both wait for the group's other members (a rebalance): the connection reads on.
        ApiKey::JoinGroup => {
            let _parked = conn.park();
            join_group::handle(req, conn).await
        }
        ApiKey::SyncGroup => {
            let _parked = conn.park();
            sync_group::handle(req, conn).await
        }
        ApiKey::Heartbeat => heartbeat::handle(req, conn).await,
        ApiKey::LeaveGroup => leave_group::handle(req, conn).await,
        ApiKey::OffsetCommit => offset_commit::handle(req, conn).await,
        ApiKey::OffsetFetch => offset_fetch::handle(req, conn).await,
        ApiKey::ListGroups => list_groups::handle(req, conn).await,
        ApiKey::DescribeGroups => describe_groups::handle(req, conn).await,
        ApiKey::DeleteGroups => delete_groups::handle(req, conn).await,
        ApiKey::InitProducerId => init_producer_id::handle(req, conn).await,
        ApiKey::CreatePartitions => create_partitions::handle(req, conn).await,
        ApiKey::DeleteRecords => delete_records::handle(req, conn).await,
        ApiKey::DescribeLogDirs => describe_log_dirs::handle(req, conn).await,
        ApiKey::OffsetForLeaderEpoch => offset_for_leader_epoch::handle(req, conn).await,
        ApiKey::DescribeProducers => describe_producers::handle(req, conn).await,
        ApiKey::OffsetDelete => offset_delete::handle(req, conn).await,
        ApiKey::DescribeCluster => describe_cluster::handle(req, conn).await,
        ApiKey::DescribeConfigs => describe_configs::handle(req, conn).await,
        ApiKey::AlterConfigs => alter_configs::handle(req, conn).await,
        ApiKey::IncrementalAlterConfigs => incremental_alter_configs::handle(req, conn).await,
        ApiKey::AlterPartitionReassignments => {
            alter_partition_reassignments::handle(req, conn).await
        }
        ApiKey::ListPartitionReassignments => list_partition_reassignments::handle(req, conn).await,
        ApiKey::CreateAcls => create_acls::handle(req, conn).await,
        ApiKey::DescribeAcls => describe_acls::handle(req, conn).await,
        ApiKey::DeleteAcls => delete_acls::handle(req, conn).await,
        ApiKey::SaslHandshake => sasl_handshake::handle(req, conn).await,
        ApiKey::SaslAuthenticate => sasl_authenticate::handle(req, conn).await,
        ApiKey::DescribeUserScramCredentials => {
            describe_user_scram_credentials::handle(req, conn).await
        }
        ApiKey::AlterUserScramCredentials => alter_user_scram_credentials::handle(req, conn).await,
        other => Err(Outcome::Close(format!("{other:?} is not implemented"))),
    };
    result.unwrap_or_else(|outcome| outcome)
}
