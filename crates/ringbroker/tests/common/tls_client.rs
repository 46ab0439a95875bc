//! A raw Kafka protocol client over TLS (rustls, blocking std I/O) for tests.
#![allow(dead_code)]

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS client configuration trusting `ca`, presenting `client` (cert, key) when given.
pub fn client_config(ca: &Path, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    Arc::new(ringbroker_broker::security::tls::client_config(ca, client).unwrap())
}

/// Connects to `addr` and returns the TLS stream (the handshake runs on first use).
pub fn connect(addr: &str, config: Arc<rustls::ClientConfig>) -> TlsStream {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Encodes one request frame.
pub fn frame<Req: Encodable>(
    api: kafka_protocol::messages::ApiKey,
    version: i16,
    correlation_id: i32,
    request: &Req,
) -> Vec<u8> {
    let header = kafka_protocol::messages::RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("tls-test")));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, api.request_header_version(version))
        .unwrap();
    request.encode(&mut body, version).unwrap();
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    frame.to_vec()
}

/// Sends a request on any stream and reads its response.
pub fn call<S: Read + Write, Req: Encodable, Resp: Decodable>(
    stream: &mut S,
    api: kafka_protocol::messages::ApiKey,
    version: i16,
    request: &Req,
) -> std::io::Result<Resp> {
    stream.write_all(&frame(api, version, 7, request))?;
    stream.flush()?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size)?;
    let mut buf = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut buf)?;
    let mut buf = Bytes::from(buf);
    let rh = kafka_protocol::messages::ResponseHeader::decode(
        &mut buf,
        api.response_header_version(version),
    )
    .unwrap();
    assert_eq!(rh.correlation_id, 7);
    let resp = Resp::decode(&mut buf, version).unwrap();
    assert!(!buf.has_remaining());
    Ok(resp)
}
