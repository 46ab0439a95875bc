//! One client connection: read frames, start each request as a task in arrival order, send
//! the answers strictly in request order (several per `sendmsg` when several are ready). A
//! frame that cannot be parsed closes this connection only, after the answers to the requests
//! before it.
//!
//! The connection keeps reading while its requests run: a Produce that arrives while an
//! earlier one waits for its fdatasync is appended at once and joins the next group commit
//! (with acks=all, a client with five requests in flight would otherwise get one request
//! window per fdatasync). One task does the reading and the writing. It keeps three things
//! in flight and polls them together (`serve_here`): the receive op (armed while the
//! bounds allow), the oldest unanswered request (a spawned task's `JoinHandle`, then the next
//! once it is done), and the send of the answers taken so far. Ops are drop safe, so the task
//! may be dropped at any await (shutdown): the armed receive is cancelled, nothing more is
//! sent after a dropped send, the receive grant is given back by its `Drop`.
//!
//! Requests are started in arrival order and keep it for their appends: each is spawned the
//! moment its frame is parsed, the executor is FIFO, and handlers start their partition work
//! (Produce spawns its appends, Fetch registers its reads) before their first await, so a
//! request's partition work always starts before that of any request read after it.
//!
//! A connection whose Produce and Fetch requests all go to partitions of one other shard is
//! handed to that shard ([`MOVE_AFTER_WINDOWS`] receives in a row, at most [`MOVES_MAX`]
//! times): SO_REUSEPORT spreads connections without knowing their partitions, and serving a
//! connection where its partitions live saves a cross-shard round trip per request. It then
//! stops receiving, answers what it read, and moves once nothing of it is in flight.
//!
//! TLS listeners (`SSL`, `SASL_SSL`): the handshake runs first in the same task, on this
//! shard's ring ([`crate::security::tls`]); then either the kernel holds the session (kTLS:
//! the loop below serves the socket as plaintext) or the loop receives and sends through the
//! connection's `TlsStream` (one branch per receive and send; the plaintext path is
//! unchanged). A userspace TLS connection never moves to another shard.
//!
//! Bounds: a request is outstanding from the moment it is read until its answer is sent. At
//! most [`INFLIGHT_REQUESTS_MAX`] requests and [`INFLIGHT_BYTES_MAX`] bytes of them may be
//! outstanding; at either bound the socket is not read (TCP back-pressure), so a client that
//! pipelines without reading its answers stalls only itself. Each connection has a
//! [`RECV_BYTES_MIN`] buffer; the bytes of its outstanding requests and the extra space of a
//! large frame's buffer come from the shard's receive budget ([`crate::limits::RecvGrant`]):
//! a connection with requests outstanding reads on only while the budget has room, one with
//! none waits for room (one always may, so progress is guaranteed).

use crate::api::{self, Outcome};
use crate::limits::{ConnectionSlot, RecvGrant};
use crate::security::tls;
use crate::shard;
use crate::warn_limited;
use bytes::BytesMut;
use ringbroker_protocol::frame::{next_frame, Next};
use ringbroker_runtime::chunk::Chunk;
use ringbroker_runtime::executor::{spawn, JoinHandle};
use ringbroker_runtime::op::{self, SharedFd};
use ringbroker_runtime::splice::send_chunks;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// The receive buffer every connection has; larger frames borrow from the shard's budget.
pub const RECV_BYTES_MIN: usize = 64 * 1024;
/// Requests a connection may have read and not yet answered (their answers sent); at this
/// many it stops reading.
pub const INFLIGHT_REQUESTS_MAX: usize = 64;
/// Bytes of requests a connection may have read and not yet answered; at this many it stops
/// reading (one larger frame is still read when nothing else is outstanding). Five pipelined
/// 1 MiB Produce requests (clients' defaults) fit.
pub const INFLIGHT_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Receives in a row whose requests' partitions all live on one other shard before the
/// connection moves there.
pub const MOVE_AFTER_WINDOWS: u32 = 4;
/// Moves a connection may make in its life (a client that switches between partitions of
/// different shards must not bounce for ever).
pub const MOVES_MAX: u32 = 3;

/// What a request handler may learn about the connection it serves.
pub struct Conn {
    pub peer: Rc<str>,
    /// The listener it came in on (`Shared::listeners[listener]`): its security protocol
    /// decides whether SASL must come first, its name which endpoints Metadata advertises.
    pub listener: usize,
    pub protocol: crate::security::SecurityProtocol,
    /// Who is on the other end (`User:name`): [`crate::security::ANONYMOUS`] until TLS with a
    /// client certificate or SASL says otherwise. Authorization checks read it.
    pub principal: RefCell<Rc<str>>,
    /// SASL: the client has authenticated (always true on listeners without SASL). Until it
    /// has, only ApiVersions, SaslHandshake and SaslAuthenticate are served.
    pub authenticated: Cell<bool>,
    /// SASL with `connections.max.reauth.ms` (KIP-368): when the session expires; a request
    /// other than re-authentication after it closes the connection.
    pub session_expiry: Cell<Option<std::time::Instant>>,
    /// SASL: the mechanism chosen by SaslHandshake, and the state of an exchange in progress
    /// (owned by the SASL module).
    pub sasl: RefCell<Option<Box<dyn std::any::Any>>>,
    /// SASL: the mechanism of the last successful authentication (KIP-368: re-authentication
    /// must use the same one).
    pub sasl_mechanism: Cell<Option<crate::security::SaslMechanism>>,
    /// SASL: terminal. An authentication failed or the SASL order was broken; set the moment
    /// it happens (before the failure delay), so that requests pipelined behind it are not
    /// served: SASL requests and [`crate::security::admit`] close the connection unanswered.
    pub auth_failed: Cell<bool>,
    owners: Cell<Owners>,
    /// Requests of this connection waiting on something slow (see [`Conn::park`]).
    parked: Cell<u32>,
    /// The connection task, while it has requests running and no receive armed: a request
    /// that parks wakes it so that it reads on.
    waker: RefCell<Option<Waker>>,
}

/// A request's mark that it waits on something slow; dropping it takes the mark back.
pub struct Parked<'a>(&'a Conn);

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.parked.set(self.0.parked.get() - 1);
    }
}

/// The shards owning the partitions the requests of one window touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owners {
    None,
    One(usize),
    Several,
}

impl Conn {
    /// A connection of listener 0 as a plaintext listener serves it (tests, internal callers).
    pub fn new(peer: Rc<str>) -> Conn {
        Conn::on_listener(peer, 0, crate::security::SecurityProtocol::Plaintext)
    }

    /// A connection accepted on listener `listener` speaking `protocol`.
    pub fn on_listener(
        peer: Rc<str>,
        listener: usize,
        protocol: crate::security::SecurityProtocol,
    ) -> Conn {
        Conn {
            peer,
            listener,
            protocol,
            principal: RefCell::new(Rc::from(crate::security::ANONYMOUS)),
            authenticated: Cell::new(!protocol.uses_sasl()),
            session_expiry: Cell::new(None),
            sasl: RefCell::new(None),
            sasl_mechanism: Cell::new(None),
            auth_failed: Cell::new(false),
            owners: Cell::new(Owners::None),
            parked: Cell::new(0),
            waker: RefCell::new(None),
        }
    }

    /// Marks the calling request as waiting on something slow (an fdatasync, a long poll, a
    /// rebalance) until the guard drops. While any request is parked the connection reads the
    /// requests behind it and starts them at once (a Produce that arrives during a sync joins
    /// the next group commit); while none is, it reads again only once its running requests
    /// are answered, so requests that arrive meanwhile gather in the socket and are read,
    /// run and answered together (one receive and one send per window, not per request).
    pub fn park(&self) -> Parked<'_> {
        let n = self.parked.get();
        self.parked.set(n + 1);
        if n == 0 {
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
        Parked(self)
    }

    fn is_parked(&self) -> bool {
        self.parked.get() > 0
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

    /// What the connection is, in a form that can move to another shard's thread; `None`
    /// while a SASL exchange is in progress (it stays where it started).
    fn detach(&self) -> Option<MovedConn> {
        if self.sasl.borrow().is_some() {
            return None;
        }
        Some(MovedConn {
            peer: self.peer.to_string(),
            listener: self.listener,
            protocol: self.protocol,
            principal: self.principal.borrow().to_string(),
            authenticated: self.authenticated.get(),
            session_expiry: self.session_expiry.get(),
            sasl_mechanism: self.sasl_mechanism.get(),
            auth_failed: self.auth_failed.get(),
        })
    }
}

/// A [`Conn`] on its way to another shard.
struct MovedConn {
    peer: String,
    listener: usize,
    protocol: crate::security::SecurityProtocol,
    principal: String,
    authenticated: bool,
    session_expiry: Option<std::time::Instant>,
    sasl_mechanism: Option<crate::security::SaslMechanism>,
    auth_failed: bool,
}

impl MovedConn {
    fn attach(self) -> Conn {
        let conn = Conn::on_listener(self.peer.into(), self.listener, self.protocol);
        *conn.principal.borrow_mut() = self.principal.into();
        conn.authenticated.set(self.authenticated);
        conn.session_expiry.set(self.session_expiry);
        conn.sasl_mechanism.set(self.sasl_mechanism);
        conn.auth_failed.set(self.auth_failed);
        conn
    }
}

/// Serves a connection accepted on listener `listener` (`Shared::listeners`).
pub async fn serve(fd: SharedFd, peer: Option<SocketAddr>, slot: ConnectionSlot, listener: usize) {
    let peer: Rc<str> = peer.map_or_else(|| "unknown".into(), |p| p.to_string().into());
    let protocol = shard::current()
        .shared
        .listeners
        .get(listener)
        .map_or(crate::security::SecurityProtocol::Plaintext, |l| l.protocol);
    tracing::debug!(%peer, listener, %protocol, "connection opened");
    let conn = Conn::on_listener(peer, listener, protocol);
    if protocol.uses_tls() {
        return serve_tls(fd, conn, slot).await;
    }
    serve_here(
        fd,
        conn,
        slot,
        BytesMut::with_capacity(RECV_BYTES_MIN),
        0,
        None,
    )
    .await
}

/// Serves a connection of a TLS listener: the handshake on this shard's ring (bounded by
/// [`tls::TLS_HANDSHAKE_TIMEOUT`]; a failure closes this connection only), the principal from
/// the client certificate, then either the kernel takes the session (kTLS: served as
/// plaintext from then on, splice included) or rustls on this shard encrypts and decrypts
/// (userspace path; such a connection never moves to another shard).
async fn serve_tls(fd: SharedFd, conn: Conn, slot: ConnectionSlot) {
    let shared = shard::current().shared.clone();
    let Some(config) = shared.tls.clone() else {
        warn_limited!(peer = %conn.peer, "TLS listener without a TLS configuration; closing");
        return;
    };
    let mut stream = match tls::TlsStream::server(fd.clone(), config) {
        Ok(s) => s,
        Err(e) => {
            warn_limited!(peer = %conn.peer, error = %e, "cannot start a TLS session; closing");
            return;
        }
    };
    let failure = match op::timeout(tls::TLS_HANDSHAKE_TIMEOUT, stream.handshake()).await {
        Some(Ok(())) => None,
        Some(Err(e)) => Some(e.to_string()),
        None => Some(format!(
            "no TLS handshake within {:?}",
            tls::TLS_HANDSHAKE_TIMEOUT
        )),
    };
    if let Some(reason) = failure {
        tls::handshake_failed();
        warn_limited!(peer = %conn.peer, %reason, "TLS handshake failed; closing");
        return;
    }
    *conn.principal.borrow_mut() = tls::principal_of_stream(&stream).into();
    tracing::debug!(peer = %conn.peer, principal = %conn.principal.borrow(), session = %stream.negotiated(), "TLS session established");
    let mut buf = BytesMut::with_capacity(RECV_BYTES_MIN);
    if shared.ktls {
        // UNTESTED on the development machine (its kernel has no kTLS).
        match stream.into_ktls(&mut buf) {
            tls::KtlsHandoff::Kernel(fd) => return serve_here(fd, conn, slot, buf, 0, None).await,
            tls::KtlsHandoff::Failed(e) => {
                warn_limited!(peer = %conn.peer, error = %e, "kTLS hand-off failed; closing");
                return;
            }
            tls::KtlsHandoff::Userspace(s) => stream = *s,
        }
    }
    serve_here(fd, conn, slot, buf, 0, Some(stream)).await
}

/// Requests and their bytes.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    requests: usize,
    bytes: usize,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.requests += other.requests;
        self.bytes += other.bytes;
    }

    fn sub(&mut self, other: Tally) {
        self.requests -= other.requests;
        self.bytes -= other.bytes;
    }
}

/// Why the connection reads no more.
enum Stop {
    /// The peer closed its side, or the broker is draining: answer what was read, then leave.
    Quiet,
    /// Close after the answers to the requests before the cause (a frame error, a handler's
    /// `Outcome::Close`), logging the reason.
    Close(String),
}

/// What woke the connection task.
enum Event {
    Received(io::Result<usize>, BytesMut),
    /// One or more answers were taken from the oldest requests.
    Answered,
    Sent(io::Result<()>),
    /// A running request parked while no receive was armed.
    Parked,
}

type Receiving<'a> = Pin<Box<dyn Future<Output = (io::Result<usize>, BytesMut)> + 'a>>;
type Sending<'a> = Pin<Box<dyn Future<Output = io::Result<()>> + 'a>>;

/// Serves the connection on this shard; `buf` holds bytes already received, `moves` how often
/// it has moved between shards.
///
/// One loop turn: start every complete request in the buffer (within the bounds), start a
/// send of the answers taken when none runs, leave or move when nothing is outstanding and
/// that is due, arm a receive when none is armed and the bounds allow, then wait for the
/// first of: the send done, the oldest request(s) answered, the receive done. The receive
/// owns the buffer while armed, so frames are only parsed between receives; every future
/// waited on lives across turns in a local, so waiting for one never drops another.
async fn serve_here(
    fd: SharedFd,
    conn: Conn,
    slot: ConnectionSlot,
    mut buf: BytesMut,
    moves: u32,
    tls: Option<tls::TlsStream>,
) {
    let peer = conn.peer.clone();
    let shared = shard::current().shared.clone();
    let frame_bytes_max = shared.config.frame_bytes_max;
    let budget_max = shared.config.recv_budget_bytes;
    let here = shard::current().id;
    let conn = Rc::new(conn);
    let mut grant = RecvGrant::none();
    let _counted = crate::stats::ConnectionGuard::open();
    // Requests started and not yet answered, oldest first, with their frame bytes.
    let mut running: VecDeque<(JoinHandle<Outcome>, usize)> = VecDeque::new();
    // Answers taken from `running` and not yet handed to a send, and what they answer.
    let mut answers: Vec<Chunk> = Vec::new();
    let mut answered = Tally::default();
    let mut sending: Option<(Sending<'_>, Tally)> = None;
    let mut receiving: Option<Receiving<'_>> = None;
    // Read and not yet answered on the wire: running, answered and being sent.
    let mut outstanding = Tally::default();
    let mut stop: Option<Stop> = None;
    // Total bytes of a frame larger than RECV_BYTES_MIN being received (0: none).
    let mut large_frame_bytes = 0usize;
    // The buffer was grown for a large frame (it shrinks back once that frame is read).
    let mut buf_large = false;
    // (shard, receives in a row whose partitions all live there)
    let mut elsewhere: Option<(usize, u32)> = None;
    let mut moving: Option<usize> = None;
    loop {
        // Start the requests in the buffer, in arrival order.
        if receiving.is_none() && matches!(stop, None | Some(Stop::Quiet)) {
            while outstanding.requests < INFLIGHT_REQUESTS_MAX
                && outstanding.bytes < INFLIGHT_BYTES_MAX
            {
                // Before SASL authentication frames are small (Kafka's
                // sasl.server.max.receive.size); a larger one closes the connection.
                let limit = if conn.authenticated.get() {
                    frame_bytes_max
                } else {
                    frame_bytes_max.min(crate::security::SASL_FRAME_BYTES_MAX)
                };
                match next_frame(&mut buf, limit) {
                    Ok(Next::Frame(frame)) => {
                        let bytes = frame.len();
                        let conn = conn.clone();
                        let task = spawn(async move { api::handle(frame, &conn).await });
                        running.push_back((task, bytes));
                        outstanding.add(Tally { requests: 1, bytes });
                        large_frame_bytes = 0;
                    }
                    Ok(Next::NeedMore { total }) => {
                        large_frame_bytes = total.filter(|&t| t > RECV_BYTES_MIN).unwrap_or(0);
                        break;
                    }
                    Err(e) => {
                        // Answer the requests before it, then close.
                        stop = Some(Stop::Close(e.to_string()));
                        break;
                    }
                }
            }
        }
        // Hand the answers taken so far to one send (none runs).
        if sending.is_none() && answered.requests > 0 {
            let tally = std::mem::take(&mut answered);
            if answers.is_empty() {
                outstanding.sub(tally); // acks=0 Produce: nothing to send
            } else {
                let chunks = std::mem::take(&mut answers);
                crate::stats::bytes_sent(chunks.iter().map(Chunk::len).sum());
                let send: Sending<'_> = match &tls {
                    None => Box::pin(send_chunks(&fd, chunks)),
                    Some(t) => Box::pin(t.send_chunks(chunks)),
                };
                sending = Some((send, tally));
            }
        }
        // Outstanding bytes and a large frame's buffer beyond RECV_BYTES_MIN: the shard's.
        let grant_bytes = outstanding.bytes + large_frame_bytes.saturating_sub(RECV_BYTES_MIN);
        if grant.bytes() > grant_bytes {
            grant.shrink_to(grant_bytes);
        }
        let nothing_outstanding = outstanding.requests == 0
            && running.is_empty()
            && sending.is_none()
            && receiving.is_none();
        if nothing_outstanding {
            match &stop {
                Some(Stop::Quiet) => {
                    tracing::debug!(%peer, "connection closed");
                    close_tls(tls.as_ref()).await;
                    return;
                }
                Some(Stop::Close(reason)) => {
                    warn_limited!(%peer, %reason, "closing connection");
                    close_tls(tls.as_ref()).await;
                    return;
                }
                None => {}
            }
            if let Some(target) = moving.take() {
                // Nothing of this connection is in flight here now (every answer is sent, no
                // receive is armed), so its socket can change rings.
                let moved = conn.detach();
                if let (0, Some(moved)) = (grant.bytes(), moved) {
                    tracing::debug!(%peer, from = here, to = target, "moving connection to the shard that owns its partitions");
                    crate::stats::connection_moved();
                    let fd = fd.clone();
                    ringbroker_runtime::mesh::send(
                        target,
                        Box::new(move || {
                            drop(spawn(serve_here(
                                fd,
                                moved.attach(),
                                slot,
                                buf,
                                moves + 1,
                                None,
                            )));
                        }),
                    )
                    .await;
                    return;
                }
                // A large frame is half read, or a SASL exchange is in progress: stay.
            }
        }
        let may_read = stop.is_none()
            && moving.is_none()
            && receiving.is_none()
            && outstanding.requests < INFLIGHT_REQUESTS_MAX
            && outstanding.bytes < INFLIGHT_BYTES_MAX;
        // Read ahead of running requests only while one of them is parked (see Conn::park).
        let read_ahead = running.is_empty() || conn.is_parked();
        // Nothing but the lack of a parked request keeps the receive from being armed.
        let wake_on_park = may_read && !read_ahead;
        if may_read && read_ahead {
            if crate::server::draining() {
                // The broker is stopping: every request read is answered; read no more.
                stop = Some(Stop::Quiet);
                continue;
            }
            let room = if outstanding.requests == 0 {
                // Nothing to answer meanwhile: wait for room (one may always grow).
                grant.grow_to(grant_bytes, budget_max).await;
                true
            } else {
                // Answers to send meanwhile: read on only while the shard has room.
                grant.try_grow_to(grant_bytes, budget_max)
            };
            if room {
                if large_frame_bytes > 0 {
                    buf_large = true;
                } else if buf_large {
                    // The large frame is read: give its buffer back.
                    let mut small = BytesMut::with_capacity(RECV_BYTES_MIN);
                    small.extend_from_slice(&buf);
                    buf = small;
                    buf_large = false;
                }
                let want = large_frame_bytes.max(buf.len() + RECV_BYTES_MIN);
                if buf.capacity() < want {
                    buf.reserve(want - buf.len());
                }
                let taken = std::mem::take(&mut buf);
                receiving = Some(match &tls {
                    None => Box::pin(op::recv(&fd, taken)),
                    Some(t) => Box::pin(t.recv(taken)),
                });
            }
        }
        if receiving.is_none() && sending.is_none() && running.is_empty() {
            // Unreachable by the rules above (something outstanding is running or being
            // sent); never wait for nothing.
            debug_assert!(false, "connection waits for nothing");
            return;
        }
        let event = std::future::poll_fn(|cx| {
            if wake_on_park {
                conn.waker.replace(Some(cx.waker().clone()));
            }
            if let Some((send, _)) = sending.as_mut() {
                if let Poll::Ready(result) = send.as_mut().poll(cx) {
                    return Poll::Ready(Event::Sent(result));
                }
            }
            let mut took = false;
            while let Some((task, bytes)) = running.front_mut() {
                let Poll::Ready(outcome) = Pin::new(task).poll(cx) else {
                    break;
                };
                answered.add(Tally {
                    requests: 1,
                    bytes: *bytes,
                });
                running.pop_front();
                took = true;
                let close = match outcome {
                    Ok(outcome) => take(outcome, &mut answers),
                    Err(_) => Some("request task vanished".to_string()),
                };
                if let Some(reason) = close {
                    // The later requests are not answered (their tasks run on, detached).
                    for (_, bytes) in running.drain(..) {
                        answered.add(Tally { requests: 1, bytes });
                    }
                    stop = Some(Stop::Close(reason));
                    break;
                }
            }
            if took {
                return Poll::Ready(Event::Answered);
            }
            if let Some(recv) = receiving.as_mut() {
                if let Poll::Ready((result, b)) = recv.as_mut().poll(cx) {
                    return Poll::Ready(Event::Received(result, b));
                }
            }
            if wake_on_park && conn.is_parked() {
                // A running request parked: go round and arm a receive.
                return Poll::Ready(Event::Parked);
            }
            Poll::Pending
        })
        .await;
        conn.waker.take();
        match event {
            Event::Parked => {}
            Event::Answered => {
                if matches!(stop, Some(Stop::Close(_))) {
                    // Read no more (the bytes of a cancelled receive do not matter now).
                    receiving = None;
                }
            }
            Event::Sent(result) => {
                let (_, tally) = sending.take().expect("a send was running");
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "send failed; closing");
                    return;
                }
                outstanding.sub(tally);
            }
            Event::Received(result, b) => {
                receiving = None;
                buf = b;
                match result {
                    Ok(0) => {
                        tracing::debug!(%peer, "connection closed by peer");
                        // Answer what was read (the peer may only have shut its write side).
                        stop.get_or_insert(Stop::Quiet);
                    }
                    Ok(n) => {
                        crate::stats::bytes_received(n);
                        elsewhere = match (conn.take_owners(), elsewhere) {
                            (Owners::None, kept) => kept,
                            (Owners::One(s), Some((t, n))) if s != here && s == t => {
                                Some((s, n + 1))
                            }
                            (Owners::One(s), _) if s != here => Some((s, 1)),
                            _ => None,
                        };
                        if let Some((target, n)) = elsewhere {
                            // A userspace TLS session stays on the shard that holds it.
                            if n >= MOVE_AFTER_WINDOWS && moves < MOVES_MAX && tls.is_none() {
                                // Receive no more; move once everything read is answered.
                                moving = Some(target);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "recv failed; closing");
                        return;
                    }
                }
            }
        }
    }
}

/// Sends close_notify on a userspace TLS session (bounded by [`tls::CLOSE_NOTIFY_TIMEOUT`]).
async fn close_tls(tls: Option<&tls::TlsStream>) {
    if let Some(t) = tls {
        let _ = op::timeout(tls::CLOSE_NOTIFY_TIMEOUT, t.close()).await;
    }
}

/// Adds a request's outcome to the answers; the reason when it closes the connection.
fn take(outcome: Outcome, answers: &mut Vec<Chunk>) -> Option<String> {
    match outcome {
        Outcome::Respond(bytes) => answers.push(Chunk::Mem(bytes)),
        Outcome::RespondChunks(chunks) => answers.extend(chunks),
        Outcome::Silent => {}
        Outcome::Close(reason) => return Some(reason),
        Outcome::RespondThenClose(bytes, reason) => {
            answers.push(Chunk::Mem(bytes));
            return Some(reason);
        }
    }
    None
}
