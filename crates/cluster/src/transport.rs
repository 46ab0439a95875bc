//! TCP between quorum members, blocking std I/O on plain threads.
//!
//! Connections are one-way: each node has one writer thread per peer that connects to the
//! peer's `internal_listen` and sends frames from a bounded queue (full → the frame is
//! dropped; raft retransmits and heartbeats repeat), reconnecting with backoff. The listener
//! accepts connections and runs one reader thread per connection that decodes frames and hands
//! them to the quorum thread through a channel. A bad frame closes its connection only.
//!
//! Frame: `u32 len (big endian) | u8 kind | payload`, `len` = 1 + payload length, at most
//! [`FRAME_BYTES_MAX`] for raft messages (a snapshot carries the whole image) and
//! [`CONTROL_FRAME_BYTES_MAX`] for every other kind.
//!
//! Every connection starts with a hello frame (the sender's node id and the fingerprint of the
//! voter list, [`cluster_fingerprint`]); the reader closes a connection whose hello is missing
//! (within [`HELLO_TIMEOUT`]), names a node that is not a peer or another fingerprint, and tags
//! every later frame with the hello's node. This catches misconfiguration (a node of another
//! cluster, a stale `--cluster`), not a hostile network.
//!
//! Authentication (issue #16, [`crate::auth`], [`LinkSecurity`]): with TLS, every connection is
//! first a mutually authenticated TLS session (each side verifies the other's certificate
//! against the cluster's CA); with the inter-broker password, the hello carries the connecting
//! node's nonce, the accepting node answers with a [`Challenge`] (its nonce and its proof) and
//! the connecting node with a [`Proof`] before any other frame is taken. A refused connection
//! is closed, logged (rate-limited) and counted ([`Transport::refused`]); the quorum is not
//! affected.

use crate::auth::{self, Exchange, QuorumKey, QuorumTls, Role};
use crate::{AdminRequest, AdminResult, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest frame (kind byte + payload) a peer may send; a raft snapshot carries the whole image.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Largest frame of any other kind (heartbeat, forwarded request, reply, hello): a forwarded
/// request is at most a command ([`crate::state::COMMAND_BYTES_MAX`]) plus its envelope.
pub const CONTROL_FRAME_BYTES_MAX: usize = crate::state::COMMAND_BYTES_MAX + (64 << 10);
/// A connection must say who it is within this.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// Frames waiting for one peer's writer; more are dropped.
pub const PEER_QUEUE_FRAMES_MAX: usize = 1024;
/// Bytes waiting for one peer's writer; a frame that would pass this is dropped (unless the
/// queue is empty, so one snapshot-sized frame still goes).
pub const PEER_QUEUE_BYTES_MAX: usize = 32 << 20;
/// Nodes outside the voter list (learners) whose hello a listener accepts: each gets a writer
/// thread on every voter.
pub const LEARNERS_MAX: usize = 16;
/// Connections a listener serves at once (a voter has one per peer; more is a misbehaving
/// client).
pub const CONNECTIONS_MAX: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often blocked threads look at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A connection silent for this long is dead (peers send raft and broker heartbeats several
/// times a second); its reader closes it, so vanished peers do not pile up readers.
const READ_IDLE_MAX: Duration = Duration::from_secs(10);

const KIND_RAFT: u8 = 1;
const KIND_HEARTBEAT: u8 = 2;
const KIND_FORWARD: u8 = 3;
const KIND_FORWARD_REPLY: u8 = 4;
const KIND_HELLO: u8 = 5;
const KIND_CHALLENGE: u8 = 6;
const KIND_PROOF: u8 = 7;
/// At most one "quorum connection refused" line per this (the rest are counted).
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The first frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node_id: NodeId,
    pub fingerprint: u64,
    /// The sender's quorum listener: how a node not in the voter list (a learner joining the
    /// cluster) is reached back. An unspecified IP (`0.0.0.0`) means the connection's own.
    #[serde(default)]
    pub addr: Option<SocketAddr>,
    /// The connecting node's nonce when it authenticates with the inter-broker password
    /// ([`crate::auth`]); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<Vec<u8>>,
}

/// The accepting node's answer to a hello with a nonce: its own nonce and its proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub nonce: Vec<u8>,
    pub proof: Vec<u8>,
}

/// The connecting node's proof, after it checked the [`Challenge`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub proof: Vec<u8>,
}

/// How quorum connections are authenticated: TLS with client certificates and/or the
/// challenge-response over the inter-broker password's key. The default: neither.
#[derive(Debug, Clone, Default)]
pub struct LinkSecurity {
    pub tls: Option<QuorumTls>,
    pub key: Option<QuorumKey>,
}

/// A hash of the sorted voter list (`id@addr`): nodes started with different `--cluster`
/// lists refuse each other's connections. FNV-1a, stable across builds.
pub fn cluster_fingerprint(voters: &[(NodeId, SocketAddr)]) -> u64 {
    let mut list: Vec<String> = voters.iter().map(|(id, a)| format!("{id}@{a}")).collect();
    list.sort_unstable();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in list.join(",").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: NodeId,
    pub incarnation: u64,
    pub host: String,
    pub port: u16,
    /// Every advertised client listener (issue #16; absent from older brokers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<crate::Endpoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forward {
    pub request_id: u64,
    pub origin: NodeId,
    pub request: AdminRequest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardReply {
    pub request_id: u64,
    pub result: AdminResult,
}

/// Where readers hand decoded frames: the node the connection's hello named, the frame and
/// its length on the wire. False when nobody listens any more.
pub type Inbound = Arc<dyn Fn(NodeId, Frame, usize) -> bool + Send + Sync>;

/// A decoded frame.
#[derive(Debug)]
pub enum Frame {
    /// Protobuf bytes of an `eraftpb::Message` (decoded by the quorum thread).
    Raft(Vec<u8>),
    Heartbeat(Heartbeat),
    Forward(Forward),
    ForwardReply(ForwardReply),
    Hello(Hello),
    Challenge(Challenge),
    Proof(Proof),
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("bad payload: {0}")]
    Payload(#[from] serde_json::Error),
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload) = match self {
            Frame::Raft(bytes) => (KIND_RAFT, bytes.clone()),
            // Serialising plain data cannot fail.
            Frame::Heartbeat(h) => (KIND_HEARTBEAT, serde_json::to_vec(h).unwrap_or_default()),
            Frame::Forward(f) => (KIND_FORWARD, serde_json::to_vec(f).unwrap_or_default()),
            Frame::ForwardReply(r) => (
                KIND_FORWARD_REPLY,
                serde_json::to_vec(r).unwrap_or_default(),
            ),
            Frame::Hello(h) => (KIND_HELLO, serde_json::to_vec(h).unwrap_or_default()),
            Frame::Challenge(c) => (KIND_CHALLENGE, serde_json::to_vec(c).unwrap_or_default()),
            Frame::Proof(p) => (KIND_PROOF, serde_json::to_vec(p).unwrap_or_default()),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.extend_from_slice(&((payload.len() + 1) as u32).to_be_bytes());
        out.push(kind);
        out.extend_from_slice(&payload);
        out
    }

    /// Decodes the body of a frame (what follows the length).
    pub fn decode(body: &[u8]) -> Result<Frame, FrameError> {
        let (&kind, payload) = body.split_first().ok_or(FrameError::Empty)?;
        Ok(match kind {
            KIND_RAFT => Frame::Raft(payload.to_vec()),
            KIND_HEARTBEAT => Frame::Heartbeat(serde_json::from_slice(payload)?),
            KIND_FORWARD => Frame::Forward(serde_json::from_slice(payload)?),
            KIND_FORWARD_REPLY => Frame::ForwardReply(serde_json::from_slice(payload)?),
            KIND_HELLO => Frame::Hello(serde_json::from_slice(payload)?),
            KIND_CHALLENGE => Frame::Challenge(serde_json::from_slice(payload)?),
            KIND_PROOF => Frame::Proof(serde_json::from_slice(payload)?),
            other => return Err(FrameError::UnknownKind(other)),
        })
    }
}

/// Splits a byte stream into frame bodies. Bytes are pushed as they arrive.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Every frame is capped at [`CONTROL_FRAME_BYTES_MAX`], raft ones too: an accepted
    /// connection that has not authenticated yet.
    control_only: bool,
}

impl FrameReader {
    /// A reader for an accepted connection before it authenticated: no frame larger than
    /// [`CONTROL_FRAME_BYTES_MAX`] is buffered, until [`FrameReader::authenticated`].
    pub fn unauthenticated() -> FrameReader {
        FrameReader {
            buf: Vec::new(),
            control_only: true,
        }
    }

    /// The connection authenticated: raft frames may be [`FRAME_BYTES_MAX`] long.
    pub fn authenticated(&mut self) {
        self.control_only = false;
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame and its length on the wire, if one is buffered.
    pub fn next_frame(&mut self) -> Option<Result<(Frame, usize), FrameError>> {
        let header: [u8; 4] = self.buf.get(..4)?.try_into().ok()?;
        let len = u32::from_be_bytes(header) as usize;
        if len > FRAME_BYTES_MAX {
            return Some(Err(FrameError::TooLong(len)));
        }
        if len > CONTROL_FRAME_BYTES_MAX
            && (self.control_only || self.buf.get(4).is_some_and(|k| *k != KIND_RAFT))
        {
            return Some(Err(FrameError::TooLong(len)));
        }
        if self.buf.len() < 4 + len {
            return None;
        }
        let frame = Frame::decode(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        Some(frame.map(|f| (f, 4 + len)))
    }
}

/// Open sockets, so that shutdown can close them under threads blocked on them.
#[derive(Default)]
struct Conns {
    next_id: u64,
    open: HashMap<u64, TcpStream>,
}

type SharedConns = Arc<Mutex<Conns>>;

fn register(conns: &SharedConns, stream: &TcpStream) -> Option<u64> {
    let clone = stream.try_clone().ok()?;
    let mut c = conns.lock().ok()?;
    c.next_id += 1;
    let id = c.next_id;
    c.open.insert(id, clone);
    Some(id)
}

fn unregister(conns: &SharedConns, id: Option<u64>) {
    if let (Some(id), Ok(mut c)) = (id, conns.lock()) {
        c.open.remove(&id);
    }
}

/// One peer's writer queue, bounded in frames and bytes.
struct PeerQueue {
    tx: SyncSender<Vec<u8>>,
    queued_bytes: Arc<AtomicUsize>,
}

/// The writer's end of a [`PeerQueue`].
struct PeerQueueRx {
    rx: Receiver<Vec<u8>>,
    queued_bytes: Arc<AtomicUsize>,
}

impl PeerQueueRx {
    fn taken(&self, frame: Vec<u8>) -> Vec<u8> {
        self.queued_bytes.fetch_sub(frame.len(), Ordering::SeqCst);
        frame
    }

    fn recv_timeout(&self, d: Duration) -> Result<Vec<u8>, mpsc::RecvTimeoutError> {
        self.rx.recv_timeout(d).map(|f| self.taken(f))
    }

    fn drain(&self) {
        while let Ok(f) = self.rx.try_recv() {
            self.taken(f);
        }
    }
}

/// The network side of one node: its listener, readers and per-peer writers.
pub struct Transport {
    stop: Arc<AtomicBool>,
    peers: Vec<(NodeId, PeerQueue)>,
    threads: Vec<JoinHandle<()>>,
    conns: SharedConns,
    /// Who this node is and how its connections authenticate.
    me: Arc<Me>,
}

/// This node as its connections present it.
struct Me {
    node_id: NodeId,
    fingerprint: u64,
    listen: SocketAddr,
    security: LinkSecurity,
    rng: ring::rand::SystemRandom,
    /// Connections refused (either side: a peer that failed to authenticate, or a peer that
    /// this node could not authenticate).
    refused: Arc<AtomicU64>,
    /// When a refusal was last logged and how many were not since.
    refused_log: Mutex<(Option<Instant>, u64)>,
}

impl Me {
    /// Counts a refused connection and logs it, at most once per [`REFUSED_LOG_INTERVAL`].
    fn refuse(&self, addr: SocketAddr, peer: Option<NodeId>, why: &str) {
        self.refused.fetch_add(1, Ordering::SeqCst);
        let Ok(mut log) = self.refused_log.lock() else {
            return;
        };
        let (last, suppressed) = &mut *log;
        if last.is_some_and(|t| t.elapsed() < REFUSED_LOG_INTERVAL) {
            *suppressed += 1;
            return;
        }
        tracing::warn!(%addr, peer, why, not_logged_since = *suppressed, "quorum connection refused");
        *last = Some(Instant::now());
        *suppressed = 0;
    }
}

impl Transport {
    /// Binds `listen` and starts the threads; frames received from `peers` (connections whose
    /// hello carries `fingerprint`) go to `inbound`. A hello with the fingerprint from a node
    /// that is not a peer but names its address (a learner, at most [`LEARNERS_MAX`] of them)
    /// is handed to `inbound` too, its connection's later frames as well: the quorum thread
    /// decides whether to take them ([`Transport::add_peer`]).
    pub fn start(
        node_id: NodeId,
        listen: SocketAddr,
        peers: &[(NodeId, SocketAddr)],
        fingerprint: u64,
        inbound: Inbound,
        stop: Arc<AtomicBool>,
    ) -> io::Result<Transport> {
        Transport::start_secured(
            node_id,
            listen,
            peers,
            fingerprint,
            LinkSecurity::default(),
            inbound,
            stop,
        )
    }

    /// [`Transport::start`] with connections authenticated as `security` says (both ends of
    /// every connection must be configured alike).
    pub fn start_secured(
        node_id: NodeId,
        listen: SocketAddr,
        peers: &[(NodeId, SocketAddr)],
        fingerprint: u64,
        security: LinkSecurity,
        inbound: Inbound,
        stop: Arc<AtomicBool>,
    ) -> io::Result<Transport> {
        let me = Arc::new(Me {
            node_id,
            fingerprint,
            listen,
            security,
            rng: ring::rand::SystemRandom::new(),
            refused: Arc::default(),
            refused_log: Mutex::new((None, 0)),
        });
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let conns: SharedConns = Arc::default();
        let mut threads = Vec::new();
        {
            let stop = stop.clone();
            let conns = conns.clone();
            let known = Known {
                peers: peers.iter().map(|(id, _)| *id).collect(),
                fingerprint,
                learners: Arc::default(),
                me: me.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("quorum-listen-{node_id}"))
                    .spawn(move || accept_loop(listener, known, inbound, stop, conns))?,
            );
        }
        let mut transport = Transport {
            stop,
            peers: Vec::new(),
            threads,
            conns,
            me,
        };
        for &(peer, addr) in peers {
            transport.add_peer(peer, addr)?;
        }
        Ok(transport)
    }

    /// Starts a writer to `peer` at `addr` (a learner that said hello); a known peer is kept.
    pub fn add_peer(&mut self, peer: NodeId, addr: SocketAddr) -> io::Result<()> {
        if self.peers.iter().any(|(id, _)| *id == peer) {
            return Ok(());
        }
        let (tx, rx) = mpsc::sync_channel(PEER_QUEUE_FRAMES_MAX);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let rx = PeerQueueRx {
            rx,
            queued_bytes: queued_bytes.clone(),
        };
        let tx = PeerQueue { tx, queued_bytes };
        let stop = self.stop.clone();
        let conns = self.conns.clone();
        let me = self.me.clone();
        self.threads.push(
            std::thread::Builder::new()
                .name(format!("quorum-peer-{peer}"))
                .spawn(move || write_loop(peer, addr, &me, rx, stop, conns))?,
        );
        self.peers.push((peer, tx));
        Ok(())
    }

    /// Queues `frame` for `peer`; false when it was dropped (queue full, frame over the
    /// limit, unknown peer). Never blocks.
    pub fn send(&self, peer: NodeId, frame: &Frame) -> bool {
        let Some((_, queue)) = self.peers.iter().find(|(id, _)| *id == peer) else {
            return false;
        };
        let bytes = frame.encode();
        let limit = match frame {
            Frame::Raft(_) => FRAME_BYTES_MAX,
            _ => CONTROL_FRAME_BYTES_MAX,
        };
        if bytes.len() > limit + 4 {
            tracing::error!(
                peer,
                bytes = bytes.len(),
                "quorum frame over the limit, not sent"
            );
            return false;
        }
        let len = bytes.len();
        let before = queue.queued_bytes.fetch_add(len, Ordering::SeqCst);
        if before > 0 && before + len > PEER_QUEUE_BYTES_MAX {
            queue.queued_bytes.fetch_sub(len, Ordering::SeqCst);
            tracing::debug!(peer, "quorum peer queue full (bytes), frame dropped");
            return false;
        }
        match queue.tx.try_send(bytes) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                queue.queued_bytes.fetch_sub(len, Ordering::SeqCst);
                tracing::debug!(peer, "quorum peer queue full, frame dropped");
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                queue.queued_bytes.fetch_sub(len, Ordering::SeqCst);
                false
            }
        }
    }

    /// Connections refused so far, on either side (authentication or identity failures).
    pub fn refused(&self) -> Arc<AtomicU64> {
        self.me.refused.clone()
    }

    pub fn peer_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.iter().map(|(id, _)| *id)
    }

    /// Stops every thread and closes every socket.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.peers.clear();
        if let Ok(conns) = self.conns.lock() {
            for c in conns.open.values() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Who may connect: the peers' ids and the cluster's fingerprint, and the learners whose
/// hello was taken (bounded by [`LEARNERS_MAX`]).
#[derive(Clone)]
struct Known {
    peers: Vec<NodeId>,
    fingerprint: u64,
    learners: Arc<Mutex<Vec<NodeId>>>,
    me: Arc<Me>,
}

impl Known {
    /// Whether a hello from `id`, not a peer, is taken as a learner's.
    fn admit_learner(&self, id: NodeId) -> bool {
        let Ok(mut learners) = self.learners.lock() else {
            return false;
        };
        if learners.contains(&id) {
            return true;
        }
        if learners.len() >= LEARNERS_MAX {
            return false;
        }
        learners.push(id);
        true
    }
}

fn accept_loop(
    listener: TcpListener,
    known: Known,
    inbound: Inbound,
    stop: Arc<AtomicBool>,
    conns: SharedConns,
) {
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        readers.retain(|r| !r.is_finished());
        match listener.accept() {
            Ok((stream, addr)) => {
                if readers.len() >= CONNECTIONS_MAX {
                    tracing::warn!(%addr, "too many quorum connections, closing");
                    continue;
                }
                let conn_id = register(&conns, &stream);
                let inbound = inbound.clone();
                let stop = stop.clone();
                let conns = conns.clone();
                let known = known.clone();
                match std::thread::Builder::new()
                    .name("quorum-read".to_string())
                    .spawn(move || {
                        read_loop(stream, addr, &known, inbound, stop);
                        unregister(&conns, conn_id);
                    }) {
                    Ok(h) => readers.push(h),
                    Err(e) => tracing::warn!(error = %e, "cannot start a quorum reader"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL_INTERVAL),
            Err(e) => {
                tracing::warn!(error = %e, "quorum accept failed");
                std::thread::sleep(POLL_INTERVAL);
            }
        }
    }
    for r in readers {
        let _ = r.join();
    }
}

/// A quorum connection's byte stream: plain TCP or TLS over it.
enum Link {
    Plain(TcpStream),
    Server(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
    Client(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Link {
    fn socket(&self) -> &TcpStream {
        match self {
            Link::Plain(s) => s,
            Link::Server(s) => &s.sock,
            Link::Client(s) => &s.sock,
        }
    }

    fn shutdown(&self) {
        let _ = self.socket().shutdown(Shutdown::Both);
    }

    /// Runs the TLS handshake to its end (nothing to do on a plain link), until `deadline`.
    /// The socket has a short read timeout.
    fn finish_handshake(&mut self, deadline: Instant) -> io::Result<()> {
        loop {
            let r = match self {
                Link::Plain(_) => return Ok(()),
                Link::Server(s) if s.conn.is_handshaking() => s.conn.complete_io(&mut s.sock),
                Link::Client(s) if s.conn.is_handshaking() => s.conn.complete_io(&mut s.sock),
                _ => return Ok(()),
            };
            match r {
                Ok((0, 0)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed during the TLS handshake",
                    ))
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake not done in time",
                ));
            }
        }
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Plain(s) => s.read(buf),
            Link::Server(s) => s.read(buf),
            Link::Client(s) => s.read(buf),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Link::Plain(s) => s.write(buf),
            Link::Server(s) => s.write(buf),
            Link::Client(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Link::Plain(s) => s.flush(),
            Link::Server(s) => s.flush(),
            Link::Client(s) => s.flush(),
        }
    }
}

/// Where an accepted connection is in its opening.
enum Opening {
    /// Waiting for the hello.
    Hello,
    /// Challenge sent, waiting for the connecting node's proof.
    Proof(Hello, Exchange),
    /// Authenticated: every frame is the named node's.
    Open(NodeId),
}

fn read_loop(
    stream: TcpStream,
    addr: SocketAddr,
    known: &Known,
    inbound: Inbound,
    stop: Arc<AtomicBool>,
) {
    let me = &known.me;
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(POLL_INTERVAL)).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let started = Instant::now();
    let mut stream = match &me.security.tls {
        None => Link::Plain(stream),
        Some(tls) => match rustls::ServerConnection::new(tls.server.clone()) {
            Ok(c) => Link::Server(Box::new(rustls::StreamOwned::new(c, stream))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a TLS session for a quorum connection");
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        },
    };
    if let Err(e) = stream.finish_handshake(started + HELLO_TIMEOUT) {
        me.refuse(addr, None, &format!("TLS handshake failed: {e}"));
        stream.shutdown();
        return;
    }
    let mut reader = FrameReader::unauthenticated();
    let mut buf = vec![0u8; 64 << 10];
    let mut last_read = started;
    let mut opening = Opening::Hello;
    while !stop.load(Ordering::SeqCst) {
        if !matches!(opening, Opening::Open(_)) && started.elapsed() > HELLO_TIMEOUT {
            let why = match opening {
                Opening::Proof(..) => "no proof in time",
                _ => "no hello in time",
            };
            me.refuse(addr, None, why);
            stream.shutdown();
            return;
        }
        let read = stream.read(&mut buf);
        if matches!(read, Ok(0)) || read.as_ref().is_err_and(|e| !transient(e)) {
            if !matches!(opening, Opening::Open(_)) {
                let peer = match &opening {
                    Opening::Proof(h, _) => Some(h.node_id),
                    _ => None,
                };
                me.refuse(addr, peer, "closed before it authenticated");
            }
            return;
        }
        match read {
            Ok(0) => return,
            Ok(n) => {
                last_read = Instant::now();
                reader.push(&buf[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if last_read.elapsed() > READ_IDLE_MAX {
                    tracing::debug!(%addr, "idle quorum connection closed");
                    stream.shutdown();
                    return;
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        loop {
            match reader.next_frame() {
                None => break,
                Some(Ok((frame, bytes))) => {
                    let (next, refused) =
                        opening_step(opening, frame, bytes, addr, known, &inbound, &mut stream);
                    let Some(next) = next else {
                        // Nobody listens any more.
                        return;
                    };
                    if matches!(next, Opening::Open(_)) {
                        reader.authenticated();
                    }
                    opening = next;
                    if let Some((peer, why)) = refused {
                        me.refuse(addr, peer, &why);
                        stream.shutdown();
                        return;
                    }
                }
                Some(Err(e)) => {
                    if matches!(opening, Opening::Open(_)) {
                        tracing::warn!(%addr, error = %e, "bad quorum frame, closing the connection");
                    } else {
                        me.refuse(addr, None, &format!("bad frame: {e}"));
                    }
                    stream.shutdown();
                    return;
                }
            }
        }
    }
}

/// One frame of an accepted connection: the connection's next state (`None`: the quorum
/// thread is gone) and, when it is refused, the node it claimed and why.
fn opening_step(
    opening: Opening,
    frame: Frame,
    bytes: usize,
    addr: SocketAddr,
    known: &Known,
    inbound: &Inbound,
    stream: &mut Link,
) -> (Option<Opening>, Option<(Option<NodeId>, String)>) {
    let me = &known.me;
    match (opening, frame) {
        (Opening::Hello, Frame::Hello(h)) => {
            if h.fingerprint != known.fingerprint {
                let why = format!(
                    "node {} has another voter list (fingerprint {:x}, ours {:x})",
                    h.node_id, h.fingerprint, known.fingerprint
                );
                return (Some(Opening::Hello), Some((Some(h.node_id), why)));
            }
            if !known.peers.contains(&h.node_id) && (h.node_id <= 0 || h.addr.is_none()) {
                let why = format!("node {} is not a peer", h.node_id);
                return (Some(Opening::Hello), Some((Some(h.node_id), why)));
            }
            let Some(key) = &me.security.key else {
                return admit(h, bytes, addr, known, inbound);
            };
            let client_nonce = match h.nonce.as_deref().map(auth::nonce_from) {
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    return (Some(Opening::Hello), Some((Some(h.node_id), e.to_string())))
                }
                None => {
                    let why = auth::AuthError::Missing.to_string();
                    return (Some(Opening::Hello), Some((Some(h.node_id), why)));
                }
            };
            let server_nonce = match auth::new_nonce(&me.rng) {
                Ok(n) => n,
                Err(e) => return (Some(Opening::Hello), Some((Some(h.node_id), e.to_string()))),
            };
            let exchange = Exchange {
                client: h.node_id,
                server: me.node_id,
                client_nonce,
                server_nonce,
            };
            let challenge = Frame::Challenge(Challenge {
                nonce: server_nonce.to_vec(),
                proof: key.proof(Role::Server, &exchange),
            });
            if let Err(e) = stream
                .write_all(&challenge.encode())
                .and_then(|()| stream.flush())
            {
                let why = format!("cannot send the challenge: {e}");
                return (Some(Opening::Hello), Some((Some(h.node_id), why)));
            }
            (Some(Opening::Proof(h, exchange)), None)
        }
        (Opening::Proof(h, exchange), Frame::Proof(p)) => {
            let key = me.security.key.as_ref();
            match key.map(|k| k.verify(Role::Client, &exchange, &p.proof)) {
                Some(Ok(())) => admit(h, bytes, addr, known, inbound),
                Some(Err(e)) => {
                    let node = h.node_id;
                    (
                        Some(Opening::Proof(h, exchange)),
                        Some((Some(node), e.to_string())),
                    )
                }
                None => (
                    Some(Opening::Hello),
                    Some((None, "unexpected proof".to_string())),
                ),
            }
        }
        (Opening::Open(node), Frame::Hello(_)) => (
            Some(Opening::Open(node)),
            Some((Some(node), "a second hello".to_string())),
        ),
        (Opening::Open(node), frame) => {
            if inbound(node, frame, bytes) {
                (Some(Opening::Open(node)), None)
            } else {
                (None, None)
            }
        }
        (Opening::Hello, _) => (
            Some(Opening::Hello),
            Some((None, "a frame before the hello".to_string())),
        ),
        (Opening::Proof(h, x), _) => {
            let node = h.node_id;
            (
                Some(Opening::Proof(h, x)),
                Some((Some(node), "a frame before the proof".to_string())),
            )
        }
    }
}

/// Takes the connection of an authenticated hello: a peer's, or a learner's (bounded by
/// [`LEARNERS_MAX`]; the quorum thread learns its address from the hello).
fn admit(
    h: Hello,
    bytes: usize,
    addr: SocketAddr,
    known: &Known,
    inbound: &Inbound,
) -> (Option<Opening>, Option<(Option<NodeId>, String)>) {
    let node = h.node_id;
    if known.peers.contains(&node) {
        return (Some(Opening::Open(node)), None);
    }
    if !known.admit_learner(node) {
        let why = format!("node {node} is not a peer and {LEARNERS_MAX} learners are known");
        return (Some(Opening::Hello), Some((Some(node), why)));
    }
    let mut h = h;
    h.nonce = None;
    if let Some(a) = h.addr.as_mut() {
        if a.ip().is_unspecified() {
            a.set_ip(addr.ip());
        }
    }
    if inbound(node, Frame::Hello(h), bytes) {
        (Some(Opening::Open(node)), None)
    } else {
        (None, None)
    }
}

fn write_loop(
    peer: NodeId,
    addr: SocketAddr,
    me: &Me,
    queue: PeerQueueRx,
    stop: Arc<AtomicBool>,
    conns: SharedConns,
) {
    let mut conn: Option<(Link, Option<u64>)> = None;
    let mut backoff = BACKOFF_MIN;
    while !stop.load(Ordering::SeqCst) {
        let frame = match queue.recv_timeout(POLL_INTERVAL) {
            Ok(f) => f,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if conn.is_none() {
            match open(peer, addr, me, &conns) {
                Ok(c) => {
                    conn = Some(c);
                    backoff = BACKOFF_MIN;
                }
                Err(e) => {
                    match e {
                        OpenError::Io(e) => {
                            tracing::debug!(peer, %addr, error = %e, "quorum peer unreachable")
                        }
                        OpenError::Refused(why) => me.refuse(addr, Some(peer), &why),
                    }
                    // Frames queued meanwhile are stale; raft resends what matters.
                    sleep_unless_stopped(backoff, &stop);
                    queue.drain();
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        if let Some((s, id)) = conn.as_mut() {
            if let Err(e) = s.write_all(&frame).and_then(|()| s.flush()) {
                tracing::debug!(peer, error = %e, "quorum peer write failed, reconnecting");
                s.shutdown();
                unregister(&conns, *id);
                conn = None;
            }
        }
    }
    if let Some((s, id)) = conn {
        s.shutdown();
        unregister(&conns, id);
    }
}

enum OpenError {
    /// The peer is not there (connect, reset): retried quietly.
    Io(io::Error),
    /// The peer's identity or authentication failed (or it refused ours).
    Refused(String),
}

/// Connects to `peer` and runs the opening (TLS handshake, hello, challenge-response).
fn open(
    peer: NodeId,
    addr: SocketAddr,
    me: &Me,
    conns: &SharedConns,
) -> Result<(Link, Option<u64>), OpenError> {
    let s = connect(addr).map_err(OpenError::Io)?;
    s.set_read_timeout(Some(POLL_INTERVAL))
        .map_err(OpenError::Io)?;
    let id = register(conns, &s);
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let result = (|| {
        let mut link = match &me.security.tls {
            None => Link::Plain(s),
            Some(tls) => {
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let c = rustls::ClientConnection::new(tls.client.clone(), name)
                    .map_err(|e| OpenError::Refused(format!("TLS: {e}")))?;
                Link::Client(Box::new(rustls::StreamOwned::new(c, s)))
            }
        };
        link.finish_handshake(deadline).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                OpenError::Refused(format!("TLS handshake failed: {e}"))
            } else {
                OpenError::Refused(format!(
                    "TLS handshake failed: {e} (does the peer trust our certificate?)"
                ))
            }
        })?;
        let client_nonce = match &me.security.key {
            Some(_) => {
                Some(auth::new_nonce(&me.rng).map_err(|e| OpenError::Refused(e.to_string()))?)
            }
            None => None,
        };
        let hello = Frame::Hello(Hello {
            node_id: me.node_id,
            fingerprint: me.fingerprint,
            addr: Some(me.listen),
            nonce: client_nonce.map(|n| n.to_vec()),
        });
        link.write_all(&hello.encode())
            .and_then(|()| link.flush())
            .map_err(OpenError::Io)?;
        if let (Some(key), Some(client_nonce)) = (&me.security.key, client_nonce) {
            let challenge = read_challenge(&mut link, deadline)?;
            let server_nonce = auth::nonce_from(&challenge.nonce)
                .map_err(|e| OpenError::Refused(e.to_string()))?;
            let exchange = Exchange {
                client: me.node_id,
                server: peer,
                client_nonce,
                server_nonce,
            };
            key.verify(Role::Server, &exchange, &challenge.proof)
                .map_err(|e| OpenError::Refused(e.to_string()))?;
            let proof = Frame::Proof(Proof {
                proof: key.proof(Role::Client, &exchange),
            });
            link.write_all(&proof.encode())
                .and_then(|()| link.flush())
                .map_err(OpenError::Io)?;
        }
        Ok(link)
    })();
    match result {
        Ok(link) => Ok((link, id)),
        Err(e) => {
            // The socket was dropped with the closure's state, which closed it.
            unregister(conns, id);
            Err(e)
        }
    }
}

/// Reads the accepting node's [`Challenge`] (the first frame it sends), until `deadline`.
fn read_challenge(link: &mut Link, deadline: Instant) -> Result<Challenge, OpenError> {
    let mut reader = FrameReader::default();
    let mut buf = [0u8; 4096];
    loop {
        match reader.next_frame() {
            Some(Ok((Frame::Challenge(c), _))) => return Ok(c),
            Some(Ok((other, _))) => {
                return Err(OpenError::Refused(format!(
                    "expected a challenge, got {}",
                    frame_name(&other)
                )))
            }
            Some(Err(e)) => return Err(OpenError::Refused(format!("bad challenge: {e}"))),
            None => {}
        }
        if Instant::now() >= deadline {
            return Err(OpenError::Refused(
                "no challenge in time (is the inter-broker password configured on the peer?)"
                    .to_string(),
            ));
        }
        match link.read(&mut buf) {
            Ok(0) => {
                return Err(OpenError::Refused(
                    "the peer closed the connection during authentication (another \
                     inter-broker password or certificate authority?)"
                        .to_string(),
                ))
            }
            Ok(n) => reader.push(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(OpenError::Refused(format!("authentication failed: {e}"))),
        }
    }
}

/// A read that timed out or was interrupted (try again), not a closed connection.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Raft(_) => "a raft message",
        Frame::Heartbeat(_) => "a heartbeat",
        Frame::Forward(_) => "a forwarded request",
        Frame::ForwardReply(_) => "a reply",
        Frame::Hello(_) => "a hello",
        Frame::Challenge(_) => "a challenge",
        Frame::Proof(_) => "a proof",
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let mut left = d;
    while !left.is_zero() && !stop.load(Ordering::SeqCst) {
        let step = left.min(POLL_INTERVAL);
        std::thread::sleep(step);
        left -= step;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn frames_round_trip_and_split_across_reads() {
        let frames = [
            Frame::Raft(vec![1, 2, 3]),
            Frame::Heartbeat(Heartbeat {
                node_id: 2,
                incarnation: 9,
                host: "h".to_string(),
                port: 9092,
                listeners: Vec::new(),
            }),
            Frame::ForwardReply(ForwardReply {
                request_id: 7,
                result: Err(crate::AdminError::TopicExists),
            }),
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(|f| f.encode()).collect();
        let mut r = FrameReader::default();
        let mut out = Vec::new();
        for chunk in bytes.chunks(3) {
            r.push(chunk);
            while let Some(f) = r.next_frame() {
                out.push(f.unwrap().0);
            }
        }
        assert_eq!(out.len(), 3);
        assert!(matches!(&out[0], Frame::Raft(b) if b == &[1, 2, 3]));
        assert!(matches!(&out[1], Frame::Heartbeat(h) if h.node_id == 2 && h.incarnation == 9));
        assert!(
            matches!(&out[2], Frame::ForwardReply(r) if r.request_id == 7 && r.result.is_err())
        );
    }

    fn hello(node_id: NodeId, fingerprint: u64) -> Vec<u8> {
        Frame::Hello(Hello {
            node_id,
            fingerprint,
            addr: None,
            nonce: None,
        })
        .encode()
    }

    #[test]
    fn connections_must_say_who_they_are() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let inbound: Inbound =
            Arc::new(move |from, f, _| tx.lock().unwrap().send((from, f)).is_ok());
        let stop = Arc::new(AtomicBool::new(false));
        let voters = [(1, addr), (2, addr), (3, addr)];
        let fp = cluster_fingerprint(&voters);
        let mut t = Transport::start(1, addr, &[(2, addr), (3, addr)], fp, inbound, stop).unwrap();
        let hb = Frame::Heartbeat(Heartbeat {
            node_id: 2,
            incarnation: 1,
            host: "h".to_string(),
            port: 1,
            listeners: Vec::new(),
        })
        .encode();
        let mut byte = [0u8; 1];
        // No hello: closed once the hello deadline passed. Wrong fingerprint, unknown node,
        // a frame before the hello: closed.
        let mut silent = TcpStream::connect(addr).unwrap();
        let mut refused = Vec::new();
        for first in [hello(2, fp ^ 1), hello(4, fp), hb.clone()] {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&first).unwrap();
            s.write_all(&hb).unwrap();
            refused.push(s);
        }
        for s in refused.iter_mut() {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert!(closed(s.read(&mut byte)), "refused connection closed");
        }
        silent
            .set_read_timeout(Some(HELLO_TIMEOUT + Duration::from_secs(3)))
            .unwrap();
        let started = Instant::now();
        assert!(closed(silent.read(&mut byte)), "silent connection closed");
        assert!(started.elapsed() < HELLO_TIMEOUT + Duration::from_secs(2));
        assert!(rx.try_recv().is_err(), "no refused frame was delivered");
        // A proper hello: frames are delivered, tagged with its node.
        let mut good = TcpStream::connect(addr).unwrap();
        good.write_all(&hello(3, fp)).unwrap();
        good.write_all(&hb).unwrap();
        let (from, frame) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(from, 3);
        assert!(matches!(frame, Frame::Heartbeat(h) if h.node_id == 2));
        // The fingerprint covers ids and addresses, not their order.
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(fp, cluster_fingerprint(&[(3, addr), (1, addr), (2, addr)]));
        assert_ne!(fp, cluster_fingerprint(&[(1, addr), (2, addr), (3, other)]));
        assert_ne!(fp, cluster_fingerprint(&[(1, addr), (2, addr), (4, addr)]));
        t.shutdown();
    }

    fn closed(r: io::Result<usize>) -> bool {
        match r {
            Ok(n) => n == 0,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }

    #[test]
    fn a_bad_frame_closes_only_its_connection() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let inbound: Inbound = Arc::new(move |_, f, _| tx.lock().unwrap().send(f).is_ok());
        let stop = Arc::new(AtomicBool::new(false));
        let mut t = Transport::start(1, addr, &[(3, addr)], 77, inbound, stop).unwrap();
        let mut bad = TcpStream::connect(addr).unwrap();
        let mut good = TcpStream::connect(addr).unwrap();
        good.write_all(&hello(3, 77)).unwrap();
        bad.write_all(&[0, 0, 0, 2, 99, 0]).unwrap();
        bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut byte = [0u8; 1];
        assert!(closed(bad.read(&mut byte)), "the bad connection is closed");
        let hb = Frame::Heartbeat(Heartbeat {
            node_id: 3,
            incarnation: 1,
            host: "h".to_string(),
            port: 1,
            listeners: Vec::new(),
        });
        good.write_all(&hb.encode()).unwrap();
        match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
            Frame::Heartbeat(h) => assert_eq!(h.node_id, 3),
            other => panic!("{other:?}"),
        }
        let started = Instant::now();
        t.shutdown();
        assert!(started.elapsed() < Duration::from_secs(2));
        good.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(
            closed(good.read(&mut byte)),
            "shutdown closes accepted sockets"
        );
    }

    #[test]
    fn a_peer_that_never_reads_never_blocks_send() {
        // Connections to it complete in the kernel; nobody reads them.
        let paused = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let inbound: Inbound = Arc::new(|_, _, _| true);
        let stop = Arc::new(AtomicBool::new(false));
        let peer = (7, paused.local_addr().unwrap());
        let mut t = Transport::start(1, addr, &[peer], 0, inbound, stop).unwrap();
        let frame = Frame::Raft(vec![0u8; 256 << 10]);
        let started = Instant::now();
        let mut dropped = 0;
        // 256 MiB offered: far more than socket buffers and the queue hold.
        for _ in 0..1024 {
            if !t.send(7, &frame) {
                dropped += 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "send blocked: {:?}",
            started.elapsed()
        );
        assert!(dropped > 0, "the queue is bounded");
        let started = Instant::now();
        t.shutdown();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "shutdown waited on the stuck writer: {:?}",
            started.elapsed()
        );
        drop(paused);
    }

    fn password(p: &str) -> auth::QuorumPassword {
        auth::QuorumPassword {
            user: "broker".to_string(),
            password: p.to_string(),
        }
    }

    fn free_addr() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    type Received = Receiver<(NodeId, Frame)>;

    fn start_node(
        id: NodeId,
        addr: SocketAddr,
        peers: &[(NodeId, SocketAddr)],
        fp: u64,
        security: LinkSecurity,
    ) -> (Transport, Received) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let inbound: Inbound =
            Arc::new(move |from, f, _| tx.lock().unwrap().send((from, f)).is_ok());
        let stop = Arc::new(AtomicBool::new(false));
        let t = Transport::start_secured(id, addr, peers, fp, security, inbound, stop).unwrap();
        (t, rx)
    }

    fn heartbeat(node_id: NodeId) -> Frame {
        Frame::Heartbeat(Heartbeat {
            node_id,
            incarnation: 1,
            host: "h".to_string(),
            port: 1,
            listeners: Vec::new(),
        })
    }

    /// Sends heartbeats from `t` to `to` until `rx` gets one from `from` (true) or `wait`
    /// passed (false).
    fn delivered(t: &Transport, to: NodeId, rx: &Received, from: NodeId, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            t.send(to, &heartbeat(from));
            if let Ok((f, Frame::Heartbeat(_))) = rx.recv_timeout(Duration::from_millis(100)) {
                if f == from {
                    return true;
                }
            }
        }
        false
    }

    #[test]
    fn with_a_password_only_nodes_that_know_it_get_in() {
        let (a1, a2, a3) = (free_addr(), free_addr(), free_addr());
        let voters = [(1, a1), (2, a2), (3, a3)];
        let fp = cluster_fingerprint(&voters);
        let key = auth::QuorumKey::derive(&password("right"), fp);
        let secured = |k: &auth::QuorumKey| LinkSecurity {
            tls: None,
            key: Some(k.clone()),
        };
        let (mut t1, rx1) = start_node(1, a1, &[(2, a2), (3, a3)], fp, secured(&key));
        let (mut t2, _rx2) = start_node(2, a2, &[(1, a1)], fp, secured(&key));
        assert!(
            delivered(&t2, 1, &rx1, 2, Duration::from_secs(5)),
            "same password: frames flow"
        );
        // The wrong password: refused on both sides, nothing delivered.
        let wrong = auth::QuorumKey::derive(&password("wrong"), fp);
        let (mut t3, _rx3) = start_node(3, a3, &[(1, a1)], fp, secured(&wrong));
        assert!(!delivered(&t3, 1, &rx1, 3, Duration::from_secs(2)));
        assert!(t1.refused().load(Ordering::SeqCst) > 0, "node 1 counted it");
        assert!(t3.refused().load(Ordering::SeqCst) > 0, "node 3 counted it");
        t3.shutdown();
        // No password at all (an unsecured node): refused too.
        let (mut t3, _rx3) = start_node(3, a3, &[(1, a1)], fp, LinkSecurity::default());
        assert!(!delivered(&t3, 1, &rx1, 3, Duration::from_secs(2)));
        t3.shutdown();
        // The quorum link that authenticated still works.
        assert!(delivered(&t2, 1, &rx1, 2, Duration::from_secs(5)));

        // By hand: a correct exchange, then its proof replayed on a new connection.
        let mut byte = [0u8; 1];
        let nonce = [7u8; auth::NONCE_BYTES];
        let hello3 = Frame::Hello(Hello {
            node_id: 3,
            fingerprint: fp,
            addr: None,
            nonce: Some(nonce.to_vec()),
        })
        .encode();
        let open_by_hand = |proof_of: &dyn Fn(&Exchange) -> Vec<u8>| {
            let mut s = TcpStream::connect(a1).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(&hello3).unwrap();
            let mut link = Link::Plain(s.try_clone().unwrap());
            let c = match read_challenge(&mut link, Instant::now() + Duration::from_secs(5)) {
                Ok(c) => c,
                Err(_) => panic!("no challenge"),
            };
            let x = Exchange {
                client: 3,
                server: 1,
                client_nonce: nonce,
                server_nonce: auth::nonce_from(&c.nonce).unwrap(),
            };
            key.verify(Role::Server, &x, &c.proof).unwrap();
            let proof = proof_of(&x);
            s.write_all(
                &Frame::Proof(Proof {
                    proof: proof.clone(),
                })
                .encode(),
            )
            .unwrap();
            s.write_all(&heartbeat(3).encode()).unwrap();
            (s, proof)
        };
        let (mut good, recorded) = open_by_hand(&|x| key.proof(Role::Client, x));
        match rx1.recv_timeout(Duration::from_secs(5)).unwrap() {
            (3, Frame::Heartbeat(_)) => {}
            other => panic!("{other:?}"),
        }
        let (mut replayed, _) = open_by_hand(&|_| recorded.clone());
        assert!(
            closed(replayed.read(&mut byte)),
            "a replayed proof is refused"
        );
        // Truncated proof, a proof of the wrong role.
        let (mut cut, _) = open_by_hand(&|x| key.proof(Role::Client, x)[..16].to_vec());
        assert!(closed(cut.read(&mut byte)), "a truncated proof is refused");
        let (mut reflected, _) = open_by_hand(&|x| key.proof(Role::Server, x));
        assert!(
            closed(reflected.read(&mut byte)),
            "a reflected proof is refused"
        );
        // A hello without a nonce, or a truncated nonce.
        for nonce in [None, Some(vec![1u8; 5])] {
            let mut s = TcpStream::connect(a1).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let h = Frame::Hello(Hello {
                node_id: 3,
                fingerprint: fp,
                addr: None,
                nonce,
            });
            s.write_all(&h.encode()).unwrap();
            s.write_all(&heartbeat(3).encode()).unwrap();
            assert!(closed(s.read(&mut byte)), "refused");
        }
        // A frame instead of the proof.
        {
            let mut s = TcpStream::connect(a1).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(&hello3).unwrap();
            let mut link = Link::Plain(s.try_clone().unwrap());
            assert!(read_challenge(&mut link, Instant::now() + Duration::from_secs(5)).is_ok());
            s.write_all(&heartbeat(3).encode()).unwrap();
            assert!(closed(s.read(&mut byte)), "refused");
        }
        assert!(rx1.try_recv().is_err(), "nothing from a refused connection");
        good.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        assert!(
            !closed(good.read(&mut byte)),
            "the good connection stays open"
        );
        t2.shutdown();
        t1.shutdown();
    }

    /// `openssl` makes a CA and a certificate it signed for 127.0.0.1, in `dir`; returns
    /// (cert, key, ca) paths.
    fn make_certs(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        use std::process::Command;
        let p = |f: &str| dir.join(format!("{name}-{f}"));
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let (ca_key, ca, key, csr, cert, ext) = (
            p("ca.key"),
            p("ca.pem"),
            p("node.key"),
            p("node.csr"),
            p("node.pem"),
            p("ext"),
        );
        let s = |p: &PathBuf| p.to_str().unwrap().to_string();
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        let (ca_key_s, ca_s) = (s(&ca_key), s(&ca));
        args.extend([
            "-keyout",
            &ca_key_s,
            "-out",
            &ca_s,
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
        ]);
        run(&args);
        let mut args = vec!["req"];
        args.extend(ec);
        let (key_s, csr_s) = (s(&key), s(&csr));
        args.extend(["-keyout", &key_s, "-out", &csr_s, "-subj", "/CN=broker"]);
        run(&args);
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        let (cert_s, ext_s) = (s(&cert), s(&ext));
        run(&[
            "x509",
            "-req",
            "-in",
            &csr_s,
            "-CA",
            &ca_s,
            "-CAkey",
            &ca_key_s,
            "-CAcreateserial",
            "-out",
            &cert_s,
            "-days",
            "2",
            "-extfile",
            &ext_s,
        ]);
        (cert, key, ca)
    }

    #[test]
    fn with_tls_only_certificates_of_the_clusters_ca_get_in() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = make_certs(dir.path(), "ours");
        let (other_cert, other_key, other_ca) = make_certs(dir.path(), "other");
        let ours = auth::QuorumTls::from_pem_files(&cert, &key, &ca).unwrap();
        let (a1, a2, a3) = (free_addr(), free_addr(), free_addr());
        let voters = [(1, a1), (2, a2), (3, a3)];
        let fp = cluster_fingerprint(&voters);
        let tls = |t: &auth::QuorumTls| LinkSecurity {
            tls: Some(t.clone()),
            key: None,
        };
        let (mut t1, rx1) = start_node(1, a1, &[(2, a2), (3, a3)], fp, tls(&ours));
        let (mut t2, _rx2) = start_node(2, a2, &[(1, a1)], fp, tls(&ours));
        assert!(delivered(&t2, 1, &rx1, 2, Duration::from_secs(5)));
        // A certificate of another CA (that trusts ours, even): refused.
        let foreign = auth::QuorumTls::from_pem_files(&other_cert, &other_key, &ca).unwrap();
        let (mut t3, _rx3) = start_node(3, a3, &[(1, a1)], fp, tls(&foreign));
        assert!(!delivered(&t3, 1, &rx1, 3, Duration::from_secs(2)));
        assert!(t1.refused().load(Ordering::SeqCst) > 0, "node 1 counted it");
        t3.shutdown();
        // Our certificate but trusting another CA: node 3 refuses node 1's certificate.
        let distrust = auth::QuorumTls::from_pem_files(&cert, &key, &other_ca).unwrap();
        let (mut t3, _rx3) = start_node(3, a3, &[(1, a1)], fp, tls(&distrust));
        assert!(!delivered(&t3, 1, &rx1, 3, Duration::from_secs(2)));
        assert!(t3.refused().load(Ordering::SeqCst) > 0, "node 3 counted it");
        t3.shutdown();
        // Plaintext toward a TLS listener: refused (no hello is ever read).
        let (mut t3, _rx3) = start_node(3, a3, &[(1, a1)], fp, LinkSecurity::default());
        assert!(!delivered(&t3, 1, &rx1, 3, Duration::from_secs(3)));
        t3.shutdown();
        // TLS and the password together.
        let key = auth::QuorumKey::derive(&password("pw"), fp);
        let both = LinkSecurity {
            tls: Some(ours.clone()),
            key: Some(key.clone()),
        };
        let (a4, a5) = (free_addr(), free_addr());
        let (mut t4, rx4) = start_node(1, a4, &[(2, a5)], fp, both.clone());
        let (mut t5, _rx5) = start_node(2, a5, &[(1, a4)], fp, both);
        assert!(delivered(&t5, 1, &rx4, 2, Duration::from_secs(5)));
        let wrong = LinkSecurity {
            tls: Some(ours),
            key: Some(auth::QuorumKey::derive(&password("nope"), fp)),
        };
        t5.shutdown();
        let (mut t5, _rx5) = start_node(2, a5, &[(1, a4)], fp, wrong);
        assert!(!delivered(&t5, 1, &rx4, 2, Duration::from_secs(2)));
        // A big raft frame goes through TLS whole.
        // (Resent: the first may go to a connection node 1 closed as idle meanwhile, as raft
        // would resend.)
        let big: Vec<u8> = (0..(4 << 20)).map(|i| (i % 251) as u8).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut next_send = Instant::now();
        loop {
            assert!(Instant::now() < deadline, "the big frame did not arrive");
            if Instant::now() >= next_send {
                t2.send(1, &Frame::Raft(big.clone()));
                next_send = Instant::now() + Duration::from_secs(2);
            }
            if let Ok((2, Frame::Raft(b))) = rx1.recv_timeout(Duration::from_millis(100)) {
                assert!(b == big, "the frame arrived changed");
                break;
            }
        }
        for t in [&mut t1, &mut t2, &mut t4, &mut t5] {
            t.shutdown();
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut r = FrameReader::default();
        r.push(&u32::MAX.to_be_bytes());
        assert!(matches!(r.next_frame(), Some(Err(FrameError::TooLong(_)))));
        let mut r = FrameReader::default();
        r.push(&[0, 0, 0, 2, 99, 0]);
        assert!(matches!(
            r.next_frame(),
            Some(Err(FrameError::UnknownKind(99)))
        ));
        let mut r = FrameReader::default();
        r.push(&[0, 0, 0, 3, KIND_HEARTBEAT, b'{', b'x']);
        assert!(matches!(r.next_frame(), Some(Err(FrameError::Payload(_)))));
        let mut r = FrameReader::default();
        r.push(&[0, 0, 0, 0]);
        assert!(matches!(r.next_frame(), Some(Err(FrameError::Empty))));
        // Only raft messages may be longer than a control frame; known before the payload.
        let long = ((CONTROL_FRAME_BYTES_MAX + 1) as u32).to_be_bytes();
        for kind in [KIND_HEARTBEAT, KIND_FORWARD, KIND_FORWARD_REPLY, KIND_HELLO] {
            let mut r = FrameReader::default();
            r.push(&long);
            r.push(&[kind]);
            assert!(matches!(r.next_frame(), Some(Err(FrameError::TooLong(_)))));
        }
        let mut r = FrameReader::default();
        r.push(&long);
        r.push(&[KIND_RAFT]);
        assert!(
            r.next_frame().is_none(),
            "a raft frame waits for its payload"
        );
    }

    #[test]
    fn unauthenticated_connections_get_no_long_frames() {
        // Before the opening completes, a raft frame is capped like a control frame: an
        // unauthenticated peer cannot make the node buffer FRAME_BYTES_MAX.
        let long = ((CONTROL_FRAME_BYTES_MAX + 1) as u32).to_be_bytes();
        let mut r = FrameReader::unauthenticated();
        r.push(&long);
        r.push(&[KIND_RAFT]);
        assert!(matches!(r.next_frame(), Some(Err(FrameError::TooLong(_)))));
        // Once authenticated, the same frame waits for its payload.
        let mut r = FrameReader::unauthenticated();
        r.authenticated();
        r.push(&long);
        r.push(&[KIND_RAFT]);
        assert!(r.next_frame().is_none());
        // Control-sized frames are read either way.
        let mut r = FrameReader::unauthenticated();
        r.push(&Frame::Raft(vec![7; 10]).encode());
        assert!(matches!(r.next_frame(), Some(Ok((Frame::Raft(b), _))) if b.len() == 10));
    }
}
