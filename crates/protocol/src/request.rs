//! The request header, read before the body so that routing errors (unknown API key,
//! unsupported version) are decided without decoding anything the broker cannot handle.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("frame of {0} bytes is too short for a request header")]
    Truncated(usize),
    #[error("unknown API key {api_key}")]
    UnknownApi { api_key: i16, correlation_id: i32 },
    #[error("{api:?} v{version} is not supported")]
    UnsupportedVersion {
        api: ApiKey,
        version: i16,
        correlation_id: i32,
    },
    #[error("malformed request header for {api:?} v{version}: {reason}")]
    BadHeader {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

/// A request whose header is decoded; `body` is the rest of the frame, still encoded.
#[derive(Debug)]
pub struct Request {
    pub api: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: Bytes,
}

/// Reads the header of `frame`. `supported` answers whether the broker implements a version.
pub fn decode_header(
    mut frame: Bytes,
    supported: impl Fn(ApiKey, i16) -> bool,
) -> Result<Request, RequestError> {
    if frame.len() < 8 {
        return Err(RequestError::Truncated(frame.len()));
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(api_key).map_err(|_| RequestError::UnknownApi {
        api_key,
        correlation_id,
    })?;
    if !supported(api, version) {
        return Err(RequestError::UnsupportedVersion {
            api,
            version,
            correlation_id,
        });
    }
    let header_version = api.request_header_version(version);
    let header =
        RequestHeader::decode(&mut frame, header_version).map_err(|e| RequestError::BadHeader {
            api,
            version,
            reason: e.to_string(),
        })?;
    Ok(Request {
        api,
        version,
        header,
        body: frame,
    })
}

/// Decodes `body` as the request of `api` at `version` with kafka-protocol and drops it: the
/// decode the broker's handlers run, for the fuzz target and its regression replays. `Ok(false)`
/// for an API the broker does not serve.
pub fn decode_request_body(api: ApiKey, version: i16, mut body: Bytes) -> Result<bool, String> {
    use kafka_protocol::messages::*;
    macro_rules! decode {
        ($t:ty) => {{
            <$t>::decode(&mut body, version).map_err(|e| e.to_string())?;
        }};
    }
    match api {
        ApiKey::Produce => decode!(ProduceRequest),
        ApiKey::Fetch => decode!(FetchRequest),
        ApiKey::ListOffsets => decode!(ListOffsetsRequest),
        ApiKey::Metadata => decode!(MetadataRequest),
        ApiKey::ApiVersions => decode!(ApiVersionsRequest),
        ApiKey::CreateTopics => decode!(CreateTopicsRequest),
        ApiKey::DeleteTopics => decode!(DeleteTopicsRequest),
        ApiKey::FindCoordinator => decode!(FindCoordinatorRequest),
        ApiKey::JoinGroup => decode!(JoinGroupRequest),
        ApiKey::SyncGroup => decode!(SyncGroupRequest),
        ApiKey::Heartbeat => decode!(HeartbeatRequest),
        ApiKey::LeaveGroup => decode!(LeaveGroupRequest),
        ApiKey::OffsetCommit => decode!(OffsetCommitRequest),
        ApiKey::OffsetFetch => decode!(OffsetFetchRequest),
        ApiKey::ListGroups => decode!(ListGroupsRequest),
        ApiKey::DescribeGroups => decode!(DescribeGroupsRequest),
        ApiKey::DeleteGroups => decode!(DeleteGroupsRequest),
        ApiKey::InitProducerId => decode!(InitProducerIdRequest),
        ApiKey::CreateAcls => decode!(CreateAclsRequest),
        ApiKey::DescribeAcls => decode!(DescribeAclsRequest),
        ApiKey::DeleteAcls => decode!(DeleteAclsRequest),
        _ => return Ok(false),
    }
    Ok(true)
}

/// The whole request path on raw bytes, as the fuzz target runs it: frames (bounded by
/// `frame_bytes_max`), headers routed by `supported`, bodies decoded. Returns how many frames
/// decoded completely.
pub fn decode_stream(
    data: &[u8],
    frame_bytes_max: usize,
    supported: impl Fn(ApiKey, i16) -> bool,
) -> usize {
    use crate::frame::{next_frame, Next};
    let mut buf = bytes::BytesMut::from(data);
    let mut decoded = 0;
    while let Ok(Next::Frame(frame)) = next_frame(&mut buf, frame_bytes_max) {
        if let Ok(req) = decode_header(frame, &supported) {
            if let Ok(true) = decode_request_body(req.api, req.version, req.body) {
                decoded += 1;
            }
        }
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn header_bytes(api: ApiKey, version: i16) -> Bytes {
        let h = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        let mut buf = BytesMut::new();
        h.encode(&mut buf, api.request_header_version(version))
            .unwrap();
        buf.extend_from_slice(b"body");
        buf.freeze()
    }

    #[test]
    fn decodes_flexible_and_classic_headers() {
        for (api, v) in [
            (ApiKey::Produce, 7),
            (ApiKey::Fetch, 12),
            (ApiKey::ApiVersions, 3),
        ] {
            let r = decode_header(header_bytes(api, v), |_, _| true).unwrap();
            assert_eq!((r.api, r.version, r.header.correlation_id), (api, v, 42));
            assert_eq!(r.header.client_id.as_deref(), Some("test"));
            assert_eq!(&r.body[..], b"body");
        }
    }

    #[test]
    fn routing_errors_keep_the_correlation_id() {
        match decode_header(header_bytes(ApiKey::Fetch, 99), |_, v| v < 20) {
            Err(RequestError::UnsupportedVersion {
                correlation_id: 42,
                version: 99,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        let mut raw = header_bytes(ApiKey::Fetch, 1).to_vec();
        raw[0..2].copy_from_slice(&999i16.to_be_bytes());
        assert!(matches!(
            decode_header(Bytes::from(raw), |_, _| true),
            Err(RequestError::UnknownApi {
                api_key: 999,
                correlation_id: 42
            })
        ));
        assert!(matches!(
            decode_header(Bytes::from_static(b"abc"), |_, _| true),
            Err(RequestError::Truncated(3))
        ));
    }
}
