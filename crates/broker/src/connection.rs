//! One client connection: read frames, start the requests in arrival order (pipelined ones run
//! at once), send the responses in request order (several per `sendmsg` when the client
//! pipelines). A frame that cannot be parsed closes this connection only, after the answers to
//! the requests before it.
//!
//! A connection whose Produce and Fetch requests all go to partitions of one other shard is
//! handed to that shard ([`MOVE_AFTER_WINDOWS`] windows in a row, at most [`MOVES_MAX`] times):
//! SO_REUSEPORT spreads connections without knowing their partitions, and serving a connection
//! where its partitions live saves a cross-shard round trip per request.
//!
//! Bounds: the socket is not read while requests are handled, and at most
//! [`INFLIGHT_REQUESTS_MAX`] responses wait before they are sent, so a client that pipelines
//! without reading its responses stalls only itself (TCP back-pressure). Each connection has a
//! [`RECV_BYTES_MIN`] buffer; larger frames take their extra space from the shard's receive
//! budget ([`crate::limits::RecvGrant`]) and give it back once handled.

use crate::api::{self, Outcome};
use crate::limits::{ConnectionSlot, RecvGrant};
use crate::shard;
use crate::warn_limited;
use bytes::{Bytes, BytesMut};
use ringbroker_protocol::frame::{next_frame, Next};
use ringbroker_runtime::chunk::Chunk;
use ringbroker_runtime::executor::spawn;
use ringbroker_runtime::op::{self, SharedFd};
use ringbroker_runtime::splice::send_chunks;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

/// The receive buffer every connection has; larger frames borrow from the shard's budget.
pub const RECV_BYTES_MIN: usize = 64 * 1024;
/// Responses a connection may have waiting before they are sent (requests read ahead).
pub const INFLIGHT_REQUESTS_MAX: usize = 64;
/// Request windows in a row whose partitions all live on one other shard before the
/// connection moves there.
pub const MOVE_AFTER_WINDOWS: u32 = 4;
/// Moves a connection may make in its life (a client that switches between partitions of
/// different shards must not bounce for ever).
pub const MOVES_MAX: u32 = 3;

/// What a request handler may learn about the connection it serves.
pub struct Conn {
    pub peer: Rc<str>,
    owners: Cell<Owners>,
}

/// The shards owning the partitions the requests of one window touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owners {
    None,
    One(usize),
    Several,
}

impl Conn {
    pub fn new(peer: Rc<str>) -> Conn {
        Conn {
            peer,
            owners: Cell::new(Owners::None),
        }
    }

    /// Records that a request of this connection reads or writes a partition of `shard`.
    pub fn touched(&self, shard: usize) {
        self.owners.set(match self.owners.get() {
            Owners::None => Owners::One(shard),
            Owners::One(s) if s == shard => Owners::One(s),
            _ => Owners::Several,
        });
    }

    fn take_owners(&self) -> Owners {
        self.owners.replace(Owners::None)
    }
}

pub async fn serve(fd: SharedFd, peer: Option<SocketAddr>, slot: ConnectionSlot) {
    let peer: Rc<str> = peer.map_or_else(|| "unknown".into(), |p| p.to_string().into());
    tracing::debug!(%peer, "connection opened");
    serve_here(fd, peer, slot, BytesMut::with_capacity(RECV_BYTES_MIN), 0).await
}

/// Serves the connection on this shard; `buf` holds bytes already received, `moves` how often
/// it has moved between shards.
async fn serve_here(
    fd: SharedFd,
    peer: Rc<str>,
    slot: ConnectionSlot,
    mut buf: BytesMut,
    moves: u32,
) {
    let shared = shard::current().shared.clone();
    let frame_bytes_max = shared.config.frame_bytes_max;
    let budget_max = shared.config.recv_budget_bytes;
    let here = shard::current().id;
    let conn = Rc::new(Conn::new(peer.clone()));
    let mut grant = RecvGrant::none();
    let _counted = crate::stats::ConnectionGuard::open();
    let mut frames: Vec<Bytes> = Vec::new();
    // (shard, windows in a row whose partitions all live there)
    let mut elsewhere: Option<(usize, u32)> = None;
    loop {
        let mut responses: Vec<Chunk> = Vec::new();
        let mut frame_error: Option<String> = None;
        let mut reading_large_frame = false;
        while frames.len() < INFLIGHT_REQUESTS_MAX {
            match next_frame(&mut buf, frame_bytes_max) {
                Ok(Next::Frame(frame)) => frames.push(frame),
                Ok(Next::NeedMore { total }) => {
                    let total = total.unwrap_or(0);
                    reading_large_frame = total > RECV_BYTES_MIN;
                    let want = total.max(buf.len() + RECV_BYTES_MIN);
                    if buf.capacity() < want {
                        if reading_large_frame {
                            grant.grow_to(total - RECV_BYTES_MIN, budget_max).await;
                        }
                        buf.reserve(want - buf.len());
                    }
                    break;
                }
                Err(e) => {
                    frame_error = Some(e.to_string());
                    break;
                }
            }
        }
        let window_full = frames.len() >= INFLIGHT_REQUESTS_MAX;
        // One request is handled in place. Several (pipelined) run at once, each as its own
        // task started in arrival order (the executor is FIFO and handlers start their
        // partition work before their first await, so appends keep the connection's order);
        // the answers are taken in that order, up to the first that closes the connection.
        let mut close = if frames.len() == 1 {
            let frame = frames.pop().expect("one frame");
            take(api::handle(frame, &conn).await, &mut responses)
        } else {
            let running: Vec<_> = frames
                .drain(..)
                .map(|frame| {
                    let conn = conn.clone();
                    spawn(async move { api::handle(frame, &conn).await })
                })
                .collect();
            let mut close = None;
            for task in running {
                close = match task.await {
                    Ok(outcome) => take(outcome, &mut responses),
                    Err(_) => Some("request task vanished".into()),
                };
                if close.is_some() {
                    break;
                }
            }
            close
        };
        close = close.or(frame_error);
        if !responses.is_empty() {
            crate::stats::bytes_sent(responses.iter().map(Chunk::len).sum());
            if let Err(e) = send_chunks(&fd, responses).await {
                tracing::debug!(%peer, error = %e, "send failed; closing");
                return;
            }
        }
        if let Some(reason) = close {
            warn_limited!(%peer, %reason, "closing connection");
            return;
        }
        if window_full {
            // Answered a full window: handle what is already buffered before reading more.
            continue;
        }
        if crate::server::draining() {
            // The broker is stopping: every request read is answered; read no more.
            return;
        }
        // A large frame is handled: give its space back to the shard.
        if grant.bytes() > 0 && !reading_large_frame {
            let mut small = BytesMut::with_capacity(RECV_BYTES_MIN);
            small.extend_from_slice(&buf);
            buf = small;
            grant.release();
        }
        elsewhere = match (conn.take_owners(), elsewhere) {
            (Owners::None, kept) => kept,
            (Owners::One(s), Some((t, n))) if s != here && s == t => Some((s, n + 1)),
            (Owners::One(s), _) if s != here => Some((s, 1)),
            _ => None,
        };
        if let Some((target, n)) = elsewhere {
            // Nothing of this connection is in flight here now (every answer is sent, no
            // receive is armed), so its socket can change rings.
            if n >= MOVE_AFTER_WINDOWS && moves < MOVES_MAX && grant.bytes() == 0 {
                tracing::debug!(%peer, from = here, to = target, "moving connection to the shard that owns its partitions");
                crate::stats::connection_moved();
                let peer = peer.to_string();
                let fd = fd.clone();
                ringbroker_runtime::mesh::send(
                    target,
                    Box::new(move || {
                        drop(spawn(serve_here(fd, peer.into(), slot, buf, moves + 1)));
                    }),
                )
                .await;
                return;
            }
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

/// Adds a request's outcome to the responses; the reason when it closes the connection.
fn take(outcome: Outcome, responses: &mut Vec<Chunk>) -> Option<String> {
    match outcome {
        Outcome::Respond(bytes) => responses.push(Chunk::Mem(bytes)),
        Outcome::RespondChunks(chunks) => responses.extend(chunks),
        Outcome::Silent => {}
        Outcome::Close(reason) => return Some(reason),
    }
    None
}
