//! The byte stream under a client connection: the socket itself (PLAINTEXT, SASL_PLAINTEXT)
//! or TLS over it (SSL, SASL_SSL).
//!
//! Plaintext sends keep their pieces as they are (one `sendmsg` whose iovecs point at the
//! request header and at the shared record batch, nothing copied); over TLS the bytes are
//! encrypted anyway, so the pieces are sealed into TLS records and those are sent.
//!
//! One sender and one receiver may use a transport at the same time (the load generator's
//! producer sends while its answer reader receives): TLS state is borrowed only between
//! awaits, never across one.

use super::security::ClientSecurity;
use bytes::{Bytes, BytesMut};
use ringbroker_broker::security::tls::{TlsStream, TLS_HANDSHAKE_TIMEOUT};
use ringbroker_runtime::chunk::Chunk;
use ringbroker_runtime::op::{self, SharedFd};
use std::io;

pub enum Transport {
    Plain(SharedFd),
    /// The broker crate's TLS stream on this thread's ring (client side).
    Tls(Box<TlsStream>),
}

impl Transport {
    /// Sends every byte of `pieces`, in order.
    pub async fn send(&self, pieces: Vec<Bytes>) -> io::Result<()> {
        match self {
            Transport::Plain(fd) => op::send_all(fd, pieces).await,
            Transport::Tls(tls) => tls
                .send_chunks(pieces.into_iter().map(Chunk::Mem).collect())
                .await
                .map_err(tls_error),
        }
    }

    /// Receives into the spare capacity of `buf` (appending); 0 bytes: the peer closed.
    pub async fn recv(&self, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        match self {
            Transport::Plain(fd) => op::recv(fd, buf).await,
            Transport::Tls(tls) => {
                let (result, buf) = tls.recv(buf).await;
                (result.map_err(tls_error), buf)
            }
        }
    }
}

/// Names TLS in an error of the TLS stream (with TLS 1.3 a broker that refuses the client's
/// certificate says so in an alert after the handshake, on the first receive).
fn tls_error(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("TLS: {e}"))
}

/// The transport `security` asks for over the connected socket `fd` to `addr` (host:port;
/// its host is the name the broker's certificate must carry).
pub async fn open(
    fd: SharedFd,
    addr: &str,
    security: &ClientSecurity,
) -> anyhow::Result<Transport> {
    match &security.tls {
        None => Ok(Transport::Plain(fd)),
        Some(config) => {
            let name = super::security::server_name(addr)?;
            let conn = rustls::ClientConnection::new(config.clone(), name)
                .map_err(|e| anyhow::anyhow!("TLS set-up for {addr}: {e}"))?;
            let stream = TlsStream::new(fd, rustls::Connection::Client(conn));
            match op::timeout(TLS_HANDSHAKE_TIMEOUT, stream.handshake()).await {
                Some(Ok(())) => Ok(Transport::Tls(Box::new(stream))),
                Some(Err(e)) => Err(anyhow::anyhow!(
                    "TLS handshake with {addr} failed: {e} (is it an SSL / SASL_SSL listener, and does --tls-ca-file hold the CA of its certificate?)"
                )),
                None => Err(anyhow::anyhow!(
                    "TLS handshake with {addr}: no answer within {TLS_HANDSHAKE_TIMEOUT:?}"
                )),
            }
        }
    }
}
