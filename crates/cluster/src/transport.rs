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
//! cluster, a stale `--cluster`), not a hostile network: there is no authentication yet
//! (issue #16).

use crate::{AdminRequest, AdminResult, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// The first frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node_id: NodeId,
    pub fingerprint: u64,
    /// The sender's quorum listener: how a node not in the voter list (a learner joining the
    /// cluster) is reached back. An unspecified IP (`0.0.0.0`) means the connection's own.
    #[serde(default)]
    pub addr: Option<SocketAddr>,
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
            other => return Err(FrameError::UnknownKind(other)),
        })
    }
}

/// Splits a byte stream into frame bodies. Bytes are pushed as they arrive.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
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
        if len > CONTROL_FRAME_BYTES_MAX && self.buf.get(4).is_some_and(|k| *k != KIND_RAFT) {
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
    /// This node's hello frame (sent first on every connection).
    hello: Vec<u8>,
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
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("quorum-listen-{node_id}"))
                    .spawn(move || accept_loop(listener, known, inbound, stop, conns))?,
            );
        }
        let hello = Frame::Hello(Hello {
            node_id,
            fingerprint,
            addr: Some(listen),
        })
        .encode();
        let mut transport = Transport {
            stop,
            peers: Vec::new(),
            threads,
            conns,
            hello,
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
        let hello = self.hello.clone();
        self.threads.push(
            std::thread::Builder::new()
                .name(format!("quorum-peer-{peer}"))
                .spawn(move || write_loop(peer, addr, &hello, rx, stop, conns))?,
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
#[derive(Debug, Clone)]
struct Known {
    peers: Vec<NodeId>,
    fingerprint: u64,
    learners: Arc<Mutex<Vec<NodeId>>>,
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

fn read_loop(
    mut stream: TcpStream,
    addr: SocketAddr,
    known: &Known,
    inbound: Inbound,
    stop: Arc<AtomicBool>,
) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(POLL_INTERVAL)).is_err()
    {
        return;
    }
    let mut reader = FrameReader::default();
    let mut buf = vec![0u8; 64 << 10];
    let started = Instant::now();
    let mut last_read = started;
    // The node the connection's hello named.
    let mut from: Option<NodeId> = None;
    while !stop.load(Ordering::SeqCst) {
        if from.is_none() && started.elapsed() > HELLO_TIMEOUT {
            tracing::warn!(%addr, "quorum connection without a hello, closing");
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        match stream.read(&mut buf) {
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
                    let _ = stream.shutdown(Shutdown::Both);
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
                    let refused = match (from, frame) {
                        (None, Frame::Hello(h)) => {
                            if h.fingerprint != known.fingerprint {
                                Some(format!(
                                    "node {} has another voter list (fingerprint {:x}, ours {:x})",
                                    h.node_id, h.fingerprint, known.fingerprint
                                ))
                            } else if known.peers.contains(&h.node_id) {
                                from = Some(h.node_id);
                                None
                            } else if h.node_id <= 0 || h.addr.is_none() {
                                Some(format!("node {} is not a peer", h.node_id))
                            } else if !known.admit_learner(h.node_id) {
                                Some(format!(
                                    "node {} is not a peer and {LEARNERS_MAX} learners are known",
                                    h.node_id
                                ))
                            } else {
                                // A learner: the quorum thread learns its address.
                                let mut h = h;
                                if let Some(a) = h.addr.as_mut() {
                                    if a.ip().is_unspecified() {
                                        a.set_ip(addr.ip());
                                    }
                                }
                                from = Some(h.node_id);
                                if !inbound(h.node_id, Frame::Hello(h), bytes) {
                                    return;
                                }
                                None
                            }
                        }
                        (None, _) => Some("a frame before the hello".to_string()),
                        (Some(_), Frame::Hello(_)) => Some("a second hello".to_string()),
                        (Some(node), frame) => {
                            if !inbound(node, frame, bytes) {
                                return;
                            }
                            None
                        }
                    };
                    if let Some(why) = refused {
                        tracing::warn!(%addr, why, "quorum connection refused");
                        let _ = stream.shutdown(Shutdown::Both);
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(%addr, error = %e, "bad quorum frame, closing the connection");
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    }
}

fn write_loop(
    peer: NodeId,
    addr: SocketAddr,
    hello: &[u8],
    queue: PeerQueueRx,
    stop: Arc<AtomicBool>,
    conns: SharedConns,
) {
    let mut conn: Option<(TcpStream, Option<u64>)> = None;
    let mut backoff = BACKOFF_MIN;
    while !stop.load(Ordering::SeqCst) {
        let frame = match queue.recv_timeout(POLL_INTERVAL) {
            Ok(f) => f,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if conn.is_none() {
            match connect(addr).and_then(|mut s| s.write_all(hello).map(|()| s)) {
                Ok(s) => {
                    let id = register(&conns, &s);
                    conn = Some((s, id));
                    backoff = BACKOFF_MIN;
                }
                Err(e) => {
                    tracing::debug!(peer, %addr, error = %e, "quorum peer unreachable");
                    // Frames queued meanwhile are stale; raft resends what matters.
                    sleep_unless_stopped(backoff, &stop);
                    queue.drain();
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        if let Some((s, id)) = conn.as_mut() {
            if let Err(e) = s.write_all(&frame) {
                tracing::debug!(peer, error = %e, "quorum peer write failed, reconnecting");
                let _ = s.shutdown(Shutdown::Both);
                unregister(&conns, *id);
                conn = None;
            }
        }
    }
    if let Some((s, id)) = conn {
        let _ = s.shutdown(Shutdown::Both);
        unregister(&conns, id);
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
}
