//! One client connection: read frames, handle each request in order, send the responses in
//! request order (several per `sendmsg` when the client pipelines). A frame that cannot be
//! parsed closes this connection only.

use crate::api::{self, Outcome};
use crate::shard;
use bytes::BytesMut;
use ringbroker_protocol::frame::{next_frame, Next};
use ringbroker_runtime::chunk::Chunk;
use ringbroker_runtime::op::{self, SharedFd};
use ringbroker_runtime::splice::send_chunks;
use std::net::SocketAddr;

/// Receive buffer growth step.
const RECV_BYTES_MIN: usize = 64 * 1024;

pub async fn serve(fd: SharedFd, peer: Option<SocketAddr>) {
    let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
    let frame_bytes_max = shard::current().shared.config.frame_bytes_max;
    let mut buf = BytesMut::with_capacity(RECV_BYTES_MIN);
    let _counted = crate::stats::ConnectionGuard::open();
    tracing::debug!(%peer, "connection opened");
    loop {
        let mut responses: Vec<Chunk> = Vec::new();
        let mut close: Option<String> = None;
        loop {
            match next_frame(&mut buf, frame_bytes_max) {
                Ok(Next::Frame(frame)) => match api::handle(frame).await {
                    Outcome::Respond(bytes) => responses.push(Chunk::Mem(bytes)),
                    Outcome::RespondChunks(chunks) => responses.extend(chunks),
                    Outcome::Silent => {}
                    Outcome::Close(reason) => {
                        close = Some(reason);
                        break;
                    }
                },
                Ok(Next::NeedMore { total }) => {
                    let want = total.unwrap_or(0).max(buf.len() + RECV_BYTES_MIN);
                    if buf.capacity() < want {
                        buf.reserve(want - buf.len());
                    }
                    break;
                }
                Err(e) => {
                    close = Some(e.to_string());
                    break;
                }
            }
        }
        if !responses.is_empty() {
            crate::stats::bytes_sent(responses.iter().map(Chunk::len).sum());
            if let Err(e) = send_chunks(&fd, responses).await {
                tracing::debug!(%peer, error = %e, "send failed; closing");
                return;
            }
        }
        if let Some(reason) = close {
            tracing::warn!(%peer, %reason, "closing connection");
            return;
        }
        let (result, b) = op::recv(&fd, buf).await;
        buf = b;
        match result {
            Ok(0) => {
                tracing::debug!(%peer, "connection closed by peer");
                return;
            }
            Ok(n) => crate::stats::bytes_received(n),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "recv failed; closing");
                return;
            }
        }
    }
}
