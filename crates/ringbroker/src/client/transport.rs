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
use ringbroker_runtime::op::{self, SharedFd};
use std::io;

pub enum Transport {
    Plain(SharedFd),
}

impl Transport {
    /// Sends every byte of `pieces`, in order.
    pub async fn send(&self, pieces: Vec<Bytes>) -> io::Result<()> {
        match self {
            Transport::Plain(fd) => op::send_all(fd, pieces).await,
        }
    }

    /// Receives into the spare capacity of `buf` (appending); 0 bytes: the peer closed.
    pub async fn recv(&self, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        match self {
            Transport::Plain(fd) => op::recv(fd, buf).await,
        }
    }
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
        Some(_config) => {
            let _name = super::security::server_name(addr)?;
            anyhow::bail!("TLS client transport is not merged yet")
        }
    }
}
