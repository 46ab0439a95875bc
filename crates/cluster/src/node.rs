//! The quorum thread: owns the `RawNode`, ticks it, handles its `Ready`s, applies committed
//! commands, publishes images, routes requests (local, forwarded, answered) and, while this
//! node is the raft leader, runs the active controller's duties.
//!
//! Ready order: snapshot, then entries and hard state persisted (fsync) before any message is
//! sent, then committed entries applied, then advance. Replies wait until the entry they
//! proposed is applied here and the image holding it was published.

use crate::controller::{self, Controller};
use crate::state::{self, Command, COMMAND_BYTES_MAX, HOST_BYTES_MAX};
use crate::storage::DiskStorage;
use crate::transport::{Forward, ForwardReply, Frame, Heartbeat, Transport};
use crate::{AdminError, AdminRequest, AdminResult, ClusterConfig, ClusterStatus, MetadataImage};
use crate::{NodeId, Publish, Reply};
use protobuf::Message as _;
use raft::eraftpb::{Entry, EntryType, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Requests submitted on this node and not answered yet; more are refused.
pub const PENDING_REQUESTS_MAX: usize = 10_000;
/// Frames read from peers and not yet taken by the quorum thread; readers wait beyond this.
pub const INBOUND_FRAMES_MAX: usize = 4096;
/// Bytes of those frames; readers wait beyond this (one frame alone always goes).
pub const INBOUND_BYTES_MAX: usize = 64 << 20;
/// A forwarded request not answered within this is sent again (the frame may have been lost).
const FORWARD_RETRY: Duration = Duration::from_secs(2);
/// Tags of applied entries remembered to recognise a request sent again (after a lost reply
/// or a leader change) that was already applied: it is not proposed twice.
const TAGS_REMEMBERED_MAX: usize = 8192;
/// A learner whose addition was proposed and is not in the configuration yet is proposed
/// again after this.
const LEARNER_REPROPOSE: Duration = Duration::from_secs(2);

/// What the readers handed over and the quorum thread did not take yet.
#[derive(Debug, Default)]
pub struct InboundQueued {
    pub frames: AtomicUsize,
    pub bytes: AtomicUsize,
}

pub enum Event {
    /// A frame from the peer `from` (as its connection's hello named it), `bytes` long.
    Frame {
        from: NodeId,
        frame: Frame,
        bytes: usize,
    },
    Submit {
        request: AdminRequest,
        deadline: Instant,
        reply: Reply,
    },
}

/// Who proposed an entry, in the entry's context: its origin answers when it applies it.
#[derive(Debug, Serialize, Deserialize)]
struct Tag {
    origin: NodeId,
    request_id: u64,
}

struct Pending {
    request: AdminRequest,
    deadline: Instant,
    reply: Reply,
    /// The leader it was last sent to (this node when it proposed it itself) and when.
    sent: Option<(NodeId, Instant)>,
}

pub struct Node {
    pub config: ClusterConfig,
    pub raw: RawNode<DiskStorage>,
    pub image: MetadataImage,
    pub publish: Publish,
    pub transport: Transport,
    pub events: Receiver<Event>,
    pub inbound_queued: Arc<InboundQueued>,
    pub stop: Arc<AtomicBool>,
    pub status: Arc<Mutex<ClusterStatus>>,
    pub incarnation: u64,
    published_controller: NodeId,
    heartbeats: HashMap<NodeId, (Instant, Heartbeat)>,
    last_heartbeat: Option<Instant>,
    controller: Option<Controller>,
    pending: HashMap<u64, Pending>,
    next_request_id: u64,
    /// Replies due once the image holding their entry is published.
    answers: Vec<(Reply, AdminResult)>,
    /// Requests that reached this leader before it applied the previous terms' entries.
    deferred: VecDeque<(NodeId, u64, AdminRequest)>,
    applied_tags: HashSet<(NodeId, u64)>,
    applied_tags_order: VecDeque<(NodeId, u64)>,
    /// Requests proposed during this leadership.
    proposed_tags: HashSet<(NodeId, u64)>,
    /// Nodes outside the voter list that said hello (learners, or nodes that want to be):
    /// their writers run; the active controller adds them to the configuration as learners.
    learners: HashSet<NodeId>,
    /// When the active controller last proposed adding a learner.
    learner_proposed: Option<Instant>,
}

/// What applying one command gave: who proposed it (origin, request id), its index, its result.
pub type Applied = (Option<(NodeId, u64)>, u64, Result<(), AdminError>);

/// Applies committed `entries` to `image`; returns, per command, what it gave.
pub fn apply_entries(image: &mut MetadataImage, entries: &[Entry]) -> Vec<Applied> {
    let mut out = Vec::new();
    for entry in entries {
        image.applied_index = entry.index;
        if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
            continue;
        }
        let result = match Command::decode(&entry.data) {
            Ok(cmd) => state::apply(image, entry.index, &cmd),
            Err(e) => {
                // Every node skips it alike.
                tracing::error!(index = entry.index, error = %e, "undecodable metadata command");
                Err(AdminError::Other(format!("undecodable command: {e}")))
            }
        };
        let tag = serde_json::from_slice::<Tag>(&entry.context)
            .ok()
            .map(|t| (t.origin, t.request_id));
        out.push((tag, entry.index, result));
    }
    out
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: ClusterConfig,
        raw: RawNode<DiskStorage>,
        image: MetadataImage,
        publish: Publish,
        transport: Transport,
        events: Receiver<Event>,
        inbound_queued: Arc<InboundQueued>,
        stop: Arc<AtomicBool>,
        status: Arc<Mutex<ClusterStatus>>,
        incarnation: u64,
    ) -> Node {
        // Ids of a new process never meet entries proposed by an earlier one.
        let next_request_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Node {
            config,
            raw,
            image,
            publish,
            transport,
            events,
            inbound_queued,
            stop,
            status,
            incarnation,
            published_controller: -1,
            heartbeats: HashMap::new(),
            last_heartbeat: None,
            controller: None,
            pending: HashMap::new(),
            next_request_id,
            answers: Vec::new(),
            deferred: VecDeque::new(),
            applied_tags: HashSet::new(),
            applied_tags_order: VecDeque::new(),
            proposed_tags: HashSet::new(),
            learners: HashSet::new(),
            learner_proposed: None,
        }
    }

    fn id(&self) -> NodeId {
        self.config.node_id
    }

    fn leader(&self) -> NodeId {
        raft_to_node(self.raw.raft.leader_id).unwrap_or(-1)
    }

    pub fn run(mut self) {
        let mut next_tick = Instant::now() + self.config.tick;
        while !self.stop.load(Ordering::SeqCst) {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(wait) {
                Ok(ev) => {
                    self.handle_event(ev);
                    // Take what else is queued before handling the Ready (batches appends).
                    for _ in 0..INBOUND_FRAMES_MAX {
                        match self.events.try_recv() {
                            Ok(ev) => self.handle_event(ev),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + self.config.tick;
                self.raw.tick();
                self.on_tick(now);
            }
            self.on_ready();
            self.update_status();
        }
        self.finish();
    }

    fn finish(&mut self) {
        for (_, p) in self.pending.drain() {
            (p.reply)(Err(AdminError::NotController));
        }
        while let Ok(ev) = self.events.try_recv() {
            if let Event::Submit { reply, .. } = ev {
                reply(Err(AdminError::NotController));
            }
        }
        self.transport.shutdown();
    }

    fn handle_event(&mut self, ev: Event) {
        match ev {
            Event::Frame { from, frame, bytes } => {
                self.inbound_queued.frames.fetch_sub(1, Ordering::SeqCst);
                self.inbound_queued.bytes.fetch_sub(bytes, Ordering::SeqCst);
                self.handle_frame(from, frame);
            }
            Event::Submit {
                request,
                deadline,
                reply,
            } => {
                if self.pending.len() >= PENDING_REQUESTS_MAX {
                    reply(Err(AdminError::Other(
                        "too many pending metadata requests".to_string(),
                    )));
                    return;
                }
                // Its forward frame and its command stay under their limits.
                let size = serde_json::to_vec(&request).map_or(usize::MAX, |b| b.len());
                if size > COMMAND_BYTES_MAX {
                    reply(Err(too_large(size)));
                    return;
                }
                let id = self.next_request_id;
                self.next_request_id += 1;
                self.pending.insert(
                    id,
                    Pending {
                        request,
                        deadline,
                        reply,
                        sent: None,
                    },
                );
                self.route_pending(Instant::now());
            }
        }
    }

    fn is_voter(&self, id: NodeId) -> bool {
        self.config.voters.iter().any(|(v, _)| *v == id)
    }

    /// A frame from the peer `from` (the transport checked it is one).
    fn handle_frame(&mut self, from: NodeId, frame: Frame) {
        match frame {
            Frame::Raft(bytes) => {
                let msg = match Message::parse_from_bytes(&bytes) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable raft message dropped");
                        return;
                    }
                };
                if !raft_message_acceptable(&msg, self.id(), from)
                    || !(self.is_voter(from) || self.learners.contains(&from))
                {
                    tracing::warn!(
                        conn = from,
                        from = msg.from,
                        to = msg.to,
                        "misaddressed raft message dropped"
                    );
                    return;
                }
                // The image in a snapshot is checked before raft takes it: installing it
                // cannot fail on its content.
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    let data = &msg.get_snapshot().data;
                    if let Err(e) = serde_json::from_slice::<MetadataImage>(data) {
                        tracing::warn!(from = msg.from, error = %e, "undecodable snapshot dropped");
                        return;
                    }
                }
                if let Err(e) = self.raw.step(msg) {
                    tracing::debug!(error = %e, "raft step refused a message");
                }
            }
            Frame::Heartbeat(hb) => {
                if hb.node_id == from && hb.host.len() <= HOST_BYTES_MAX {
                    self.heartbeats.insert(hb.node_id, (Instant::now(), hb));
                } else {
                    tracing::warn!(conn = from, node = hb.node_id, "bad heartbeat dropped");
                }
            }
            Frame::Forward(f) => {
                if f.origin != from {
                    tracing::warn!(
                        conn = from,
                        origin = f.origin,
                        "misattributed request dropped"
                    );
                } else if self.raw.raft.state == StateRole::Leader {
                    self.handle_request(f.origin, f.request_id, f.request);
                } else {
                    // The origin sends it again to the leader it learns of.
                    tracing::debug!(
                        origin = f.origin,
                        "forwarded request at a non-leader ignored"
                    );
                }
            }
            Frame::ForwardReply(r) => {
                if let Some(p) = self.pending.remove(&r.request_id) {
                    (p.reply)(r.result);
                }
            }
            // A node outside the voter list (the transport bounds how many): its address lets
            // this node reach it back; the active controller makes it a learner.
            Frame::Hello(h) => {
                let Some(addr) = h.addr else {
                    return;
                };
                if h.node_id != from || self.is_voter(from) || from == self.id() {
                    return;
                }
                match self.transport.add_peer(from, addr) {
                    Ok(()) => {
                        if self.learners.insert(from) {
                            tracing::info!(node = from, %addr, "a learner said hello");
                        }
                    }
                    Err(e) => tracing::warn!(node = from, error = %e, "cannot reach a learner"),
                }
            }
        }
    }

    /// On the leader: decide and propose `request` for `origin`, or answer its error. A
    /// request already proposed or applied is not proposed again (its origin answers when it
    /// applies it); one that comes before this leader caught up waits.
    fn handle_request(&mut self, origin: NodeId, request_id: u64, request: AdminRequest) {
        let tag = (origin, request_id);
        if self.applied_tags.contains(&tag) || self.proposed_tags.contains(&tag) {
            return;
        }
        let caught_up = self
            .controller
            .as_ref()
            .is_some_and(|c| self.image.applied_index >= c.start_index);
        if !caught_up {
            if self.deferred.len() < PENDING_REQUESTS_MAX {
                self.deferred.push_back((origin, request_id, request));
            } else {
                self.answer(origin, request_id, Err(AdminError::NotController));
            }
            return;
        }
        let decided =
            controller::decide(&self.image, request, self.config.default_replication_factor);
        let result = match decided {
            Ok(cmd) => {
                let context = serde_json::to_vec(&Tag { origin, request_id }).unwrap_or_default();
                let data = cmd.encode();
                if data.len() > COMMAND_BYTES_MAX {
                    self.answer(origin, request_id, Err(too_large(data.len())));
                    return;
                }
                if grows_image(&cmd) {
                    // A partition costs about three times its assignment in the image.
                    let after = image_bytes(&self.image).saturating_add(3 * data.len());
                    if after > IMAGE_BYTES_MAX {
                        let err = AdminError::Other(format!(
                            "the cluster metadata would reach {after} bytes, over the limit of \
                             {IMAGE_BYTES_MAX}"
                        ));
                        self.answer(origin, request_id, Err(err));
                        return;
                    }
                }
                match self.raw.propose(context, data) {
                    Ok(()) => {
                        self.proposed_tags.insert(tag);
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "metadata proposal refused");
                        Err(AdminError::NotController)
                    }
                }
            }
            Err(e) => Err(e),
        };
        self.answer(origin, request_id, result);
    }

    fn answer(&mut self, origin: NodeId, request_id: u64, result: AdminResult) {
        if origin == self.id() {
            if let Some(p) = self.pending.remove(&request_id) {
                (p.reply)(result);
            }
        } else {
            self.transport.send(
                origin,
                &Frame::ForwardReply(ForwardReply { request_id, result }),
            );
        }
    }

    /// Sends unanswered requests to the leader (again when it changed or after a while) and
    /// fails the expired ones.
    fn route_pending(&mut self, now: Instant) {
        let leader = self.leader();
        let me = self.id();
        let mut expired = Vec::new();
        let mut to_propose = Vec::new();
        for (&id, p) in self.pending.iter_mut() {
            if now >= p.deadline {
                expired.push(id);
                continue;
            }
            if leader == -1 {
                continue;
            }
            let due = match p.sent {
                None => true,
                Some((to, at)) => to != leader || (to != me && now >= at + FORWARD_RETRY),
            };
            if !due {
                continue;
            }
            p.sent = Some((leader, now));
            if leader == me {
                to_propose.push((id, p.request.clone()));
            } else {
                self.transport.send(
                    leader,
                    &Frame::Forward(Forward {
                        request_id: id,
                        origin: me,
                        request: p.request.clone(),
                    }),
                );
            }
        }
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                let err = if p.sent.is_none() {
                    AdminError::NotController
                } else {
                    AdminError::Timeout
                };
                (p.reply)(Err(err));
            }
        }
        for (id, request) in to_propose {
            self.handle_request(me, id, request);
        }
    }

    fn on_tick(&mut self, now: Instant) {
        if self
            .last_heartbeat
            .is_none_or(|t| now >= t + self.config.broker_heartbeat_interval)
        {
            self.last_heartbeat = Some(now);
            let hb = Heartbeat {
                node_id: self.id(),
                incarnation: self.incarnation,
                host: self.config.client_host.clone(),
                port: self.config.client_port,
                listeners: self.config.client_listeners.clone(),
            };
            let peers: Vec<NodeId> = self.transport.peer_ids().collect();
            for peer in peers {
                self.transport.send(peer, &Frame::Heartbeat(hb.clone()));
            }
            self.heartbeats.insert(self.id(), (now, hb));
        }
        self.track_leadership(now);
        self.add_learners(now);
        let caught_up = self
            .controller
            .as_ref()
            .is_some_and(|c| self.image.applied_index >= c.start_index);
        if caught_up {
            for (origin, id, request) in std::mem::take(&mut self.deferred) {
                self.handle_request(origin, id, request);
            }
        }
        if let Some(c) = self.controller.as_mut() {
            let cmds = c.duties(
                now,
                &self.image,
                &self.heartbeats,
                self.config.broker_session_timeout,
                self.config.leader_rebalance_interval,
            );
            for cmd in cmds {
                let data = cmd.encode();
                if data.len() > COMMAND_BYTES_MAX {
                    // Duties are built under the limit; never write what could not be read.
                    tracing::error!(bytes = data.len(), "controller command over the limit");
                    continue;
                }
                if let Err(e) = self.raw.propose(Vec::new(), data) {
                    tracing::debug!(error = %e, "controller proposal refused");
                }
            }
        }
        self.route_pending(now);
    }

    /// On the active controller: proposes adding one learner that said hello and is not in the
    /// configuration yet (one configuration change at a time, as raft requires).
    fn add_learners(&mut self, now: Instant) {
        if self.controller.is_none()
            || self.raw.raft.has_pending_conf()
            || self
                .learner_proposed
                .is_some_and(|t| now < t + LEARNER_REPROPOSE)
        {
            return;
        }
        let mut waiting: Vec<NodeId> = self
            .learners
            .iter()
            .copied()
            .filter(|&id| self.raw.raft.prs().get(id as u64).is_none())
            .collect();
        waiting.sort_unstable();
        let Some(&id) = waiting.first() else {
            return;
        };
        let mut cc = raft::eraftpb::ConfChange::default();
        cc.set_change_type(raft::eraftpb::ConfChangeType::AddLearnerNode);
        cc.node_id = id as u64;
        self.learner_proposed = Some(now);
        match self.raw.propose_conf_change(Vec::new(), cc) {
            Ok(()) => tracing::info!(node = id, "proposed adding a learner"),
            Err(e) => tracing::debug!(node = id, error = %e, "learner proposal refused"),
        }
    }

    /// Applies the committed configuration changes among `entries` (adding learners).
    fn apply_conf_changes(&mut self, entries: &[Entry]) {
        for entry in entries {
            if entry.get_entry_type() != EntryType::EntryConfChange {
                continue;
            }
            let cc = match raft::eraftpb::ConfChange::parse_from_bytes(&entry.data) {
                Ok(cc) => cc,
                Err(e) => {
                    tracing::error!(index = entry.index, error = %e, "undecodable configuration change");
                    continue;
                }
            };
            if cc.get_change_type() != raft::eraftpb::ConfChangeType::AddLearnerNode {
                tracing::error!(
                    index = entry.index,
                    "unexpected configuration change skipped"
                );
                continue;
            }
            match self.raw.apply_conf_change(&cc) {
                Ok(cs) => {
                    tracing::info!(node = cc.node_id, learners = ?cs.learners, "learner added to the metadata quorum");
                    self.raw.mut_store().set_conf_state(cs);
                }
                Err(e) => {
                    tracing::error!(node = cc.node_id, error = %e, "configuration change refused")
                }
            }
        }
    }

    /// Starts or ends the active controller's term with raft leadership.
    fn track_leadership(&mut self, now: Instant) {
        let leading = self.raw.raft.state == StateRole::Leader;
        match (leading, self.controller.is_some()) {
            (true, false) => {
                tracing::info!(
                    node = self.id(),
                    term = self.raw.raft.term,
                    "active controller"
                );
                let start = self.raw.raft.raft_log.last_index();
                self.controller = Some(Controller::new(
                    now,
                    self.config.broker_session_timeout,
                    start,
                ));
            }
            (false, true) => {
                tracing::info!(node = self.id(), "no longer the active controller");
                self.controller = None;
                self.proposed_tags.clear();
                // Their origins send them again to the new leader.
                self.deferred.clear();
                // Requests of this node it proposed (or deferred) itself: whoever leads next
                // (this node again, too) gets them again.
                let me = self.id();
                for p in self.pending.values_mut() {
                    if p.sent.is_some_and(|(to, _)| to == me) {
                        p.sent = None;
                    }
                }
            }
            _ => {}
        }
    }

    /// Sends `msgs`; the snapshots among them are noted in `snapshots` (to report to raft
    /// after `advance`, never between `ready` and `advance`).
    fn send_messages(&mut self, msgs: Vec<Message>, snapshots: &mut Vec<(u64, SnapshotStatus)>) {
        for msg in msgs {
            let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            let sent = match (raft_to_node(msg.to), msg.write_to_bytes()) {
                (Some(to), Ok(bytes)) => self.transport.send(to, &Frame::Raft(bytes)),
                (None, _) => {
                    tracing::warn!(to = msg.to, "raft message to an impossible node id");
                    false
                }
                (_, Err(e)) => {
                    tracing::warn!(error = %e, "raft message not encodable");
                    false
                }
            };
            if is_snapshot {
                // Raft waits for this before probing the follower again; a lost snapshot is
                // noticed by the probe and sent again.
                let status = if sent {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                snapshots.push((msg.to, status));
            }
        }
    }

    fn apply_committed(&mut self, entries: &[Entry]) -> bool {
        if entries.is_empty() {
            return false;
        }
        self.apply_conf_changes(entries);
        let me = self.id();
        for (tag, index, result) in apply_entries(&mut self.image, entries) {
            if let Some((origin, request_id)) = tag {
                self.proposed_tags.remove(&(origin, request_id));
                if self.applied_tags.insert((origin, request_id)) {
                    self.applied_tags_order.push_back((origin, request_id));
                    if self.applied_tags_order.len() > TAGS_REMEMBERED_MAX {
                        if let Some(old) = self.applied_tags_order.pop_front() {
                            self.applied_tags.remove(&old);
                        }
                    }
                }
                if origin == me {
                    if let Some(p) = self.pending.remove(&request_id) {
                        self.answers.push((p.reply, result.map(|()| index)));
                    }
                }
            }
        }
        true
    }

    fn on_ready(&mut self) {
        let mut changed = false;
        if self.raw.has_ready() {
            let mut rd = self.raw.ready();
            if !rd.snapshot().is_empty() {
                match self.raw.mut_store().apply_snapshot(rd.snapshot()) {
                    Ok(image) => {
                        tracing::info!(
                            index = image.applied_index,
                            "installed a snapshot from the leader"
                        );
                        self.image = image;
                        changed = true;
                    }
                    Err(e) => fail_stop(&e),
                }
            }
            if !rd.entries().is_empty() {
                if let Err(e) = self.raw.mut_store().append(rd.entries()) {
                    fail_stop(&e);
                }
            }
            if let Some(hs) = rd.hs() {
                if let Err(e) = self.raw.mut_store().set_hard_state(hs) {
                    fail_stop(&e);
                }
            }
            let mut snapshots = Vec::new();
            self.send_messages(rd.take_messages(), &mut snapshots);
            self.send_messages(rd.take_persisted_messages(), &mut snapshots);
            let committed = rd.take_committed_entries();
            changed |= self.apply_committed(&committed);
            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                if let Err(e) = self.raw.mut_store().set_commit(commit) {
                    fail_stop(&e);
                }
            }
            self.send_messages(light.take_messages(), &mut snapshots);
            let committed = light.take_committed_entries();
            changed |= self.apply_committed(&committed);
            self.raw.advance_apply();
            for (to, status) in snapshots {
                self.raw.report_snapshot(to, status);
            }
            if changed {
                self.maybe_snapshot();
            }
        }
        self.track_leadership(Instant::now());
        let controller = self.leader();
        if changed || controller != self.published_controller {
            self.published_controller = controller;
            let mut image = self.image.clone();
            image.controller_id = controller;
            (self.publish)(Arc::new(image));
        }
        self.update_status();
        for (reply, result) in self.answers.drain(..) {
            reply(result);
        }
        // A new leader may have become known: send what waits for one.
        if !self.pending.is_empty() {
            self.route_pending(Instant::now());
        }
    }

    fn maybe_snapshot(&mut self) {
        let applied = self.image.applied_index;
        if applied.saturating_sub(self.raw.store().snapshot_index()) < self.config.snapshot_entries
        {
            return;
        }
        if let Err(e) = self
            .raw
            .mut_store()
            .snapshot_and_compact(&self.image, applied)
        {
            fail_stop(&e);
        }
        tracing::debug!(index = applied, "metadata snapshot written, log compacted");
    }

    fn update_status(&self) {
        if let Ok(mut s) = self.status.lock() {
            s.node_id = self.id();
            s.controller_id = self.leader();
            s.raft_term = self.raw.raft.term;
            s.committed_index = self.raw.raft.raft_log.committed;
            s.applied_index = self.image.applied_index;
        }
    }
}

/// A raft id as a node id: 0 (none) and ids out of the node id range are not nodes.
fn raft_to_node(id: u64) -> Option<NodeId> {
    NodeId::try_from(id).ok().filter(|id| *id > 0)
}

/// A raft message is taken only when addressed to this node and sent by the node its
/// connection belongs to (the `from` of the message, read as a node id without truncation).
fn raft_message_acceptable(msg: &Message, me: NodeId, conn: NodeId) -> bool {
    raft_to_node(msg.to) == Some(me) && raft_to_node(msg.from) == Some(conn)
}

/// The image travels whole in a raft snapshot message (not chunked): requests that would grow
/// it past this are refused, so a snapshot always fits a frame
/// ([`crate::transport::FRAME_BYTES_MAX`]) with room for the message around it.
pub const IMAGE_BYTES_MAX: usize = 48 << 20;

fn grows_image(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::CreateTopic { .. }
            | Command::CreatePartitions { .. }
            | Command::SetTopicConfigs { .. }
            | Command::AlterScramCredentials { .. }
            | Command::CreateAcls { .. }
    )
}

/// The image's JSON length (what a snapshot carries), counted without building it.
fn image_bytes(image: &MetadataImage) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    match serde_json::to_writer(&mut c, image) {
        Ok(()) => c.0,
        Err(_) => usize::MAX,
    }
}

fn too_large(bytes: usize) -> AdminError {
    AdminError::Other(format!(
        "metadata request of {bytes} bytes is over the limit of {COMMAND_BYTES_MAX}"
    ))
}

/// The quorum cannot go on without its disk: continuing would break raft's promises.
fn fail_stop(e: &dyn std::fmt::Display) -> ! {
    tracing::error!(error = %e, "metadata quorum storage failed");
    panic!("metadata quorum storage failed: {e}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::HardState;
    use std::collections::BTreeMap;

    fn entry(index: u64, cmd: &Command) -> Entry {
        Entry {
            index,
            term: 1,
            data: cmd.encode().into(),
            ..Entry::default()
        }
    }

    fn commands() -> Vec<Command> {
        let mut cmds = vec![Command::InitCluster {
            cluster_id: "c1".to_string(),
        }];
        for id in 1..=3 {
            cmds.push(Command::RegisterBroker {
                id,
                incarnation: 7,
                host: "h".to_string(),
                port: 9000,
                listeners: Vec::new(),
            });
        }
        for t in 0..6 {
            cmds.push(Command::CreateTopic {
                name: format!("t{t}"),
                id: uuid::Uuid::from_u128(t),
                assignments: vec![vec![1, 2, 3], vec![2, 3, 1]],
                configs: BTreeMap::new(),
            });
        }
        cmds.push(Command::Fence { id: 1 });
        cmds.push(Command::DeleteTopic {
            name: "t2".to_string(),
        });
        cmds.push(Command::RegisterBroker {
            id: 1,
            incarnation: 8,
            host: "h".to_string(),
            port: 9000,
            listeners: Vec::new(),
        });
        cmds
    }

    #[test]
    fn replay_from_snapshot_and_log_gives_the_same_image() {
        let cmds = commands();
        let entries: Vec<Entry> = cmds
            .iter()
            .enumerate()
            .map(|(i, c)| entry(i as u64 + 1, c))
            .collect();
        let mut direct = MetadataImage::default();
        apply_entries(&mut direct, &entries);
        assert_eq!(direct.cluster_id, "c1");
        assert_eq!(direct.topics.len(), 5);
        assert_eq!(direct.applied_index, cmds.len() as u64);

        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
            store.append(&entries).unwrap();
            // A snapshot of the image after the first 6 entries, then the log after it.
            let mut at6 = MetadataImage::default();
            apply_entries(&mut at6, &entries[..6]);
            store.snapshot_and_compact(&at6, 6).unwrap();
            let hs = HardState {
                term: 1,
                commit: cmds.len() as u64,
                ..HardState::default()
            };
            store.set_hard_state(&hs).unwrap();
        }
        let (store, mut replayed) = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        assert_eq!(replayed.applied_index, 6);
        assert_eq!(store.snapshot_index(), 6);
        apply_entries(&mut replayed, store.entries_to(store.hard_state().commit));
        // `controller_id` is not replicated: the snapshot stores "unknown".
        direct.controller_id = -1;
        assert_eq!(replayed, direct);
    }

    /// A single-voter node driven by hand (no thread), with no peers.
    fn lone_node(dir: &std::path::Path) -> Node {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let inbound: crate::transport::Inbound = Arc::new(|_, _, _| true);
        let transport = Transport::start(1, addr, &[], 0, inbound, stop.clone()).unwrap();
        let config = ClusterConfig::new(1, vec![(1, addr)], addr, "h".to_string(), 1, dir.into());
        let (storage, image) = DiskStorage::open(dir, &[1]).unwrap();
        let raft_config = raft::Config {
            id: 1,
            pre_vote: true,
            ..raft::Config::default()
        };
        let raw = RawNode::new(&raft_config, storage, &crate::logger::raft_logger()).unwrap();
        let (_tx, rx) = std::sync::mpsc::channel();
        Node::new(
            config,
            raw,
            image,
            Box::new(|_| {}),
            transport,
            rx,
            Arc::default(),
            stop,
            Arc::default(),
            1,
        )
    }

    #[test]
    fn a_request_deferred_by_a_lost_leadership_is_proposed_when_it_is_regained() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = lone_node(dir.path());
        node.raw.campaign().unwrap();
        node.on_ready();
        assert_eq!(node.leader(), 1);
        // The controller has not caught up: the request waits (sent to itself).
        node.controller = Some(Controller::new(Instant::now(), Duration::ZERO, u64::MAX));
        let (tx, rx) = std::sync::mpsc::channel();
        node.handle_event(Event::Submit {
            request: AdminRequest::DeleteTopic {
                name: "missing".to_string(),
            },
            deadline: Instant::now() + Duration::from_secs(60),
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        });
        assert_eq!(node.deferred.len(), 1);
        // Leadership lost, then regained with no other leader known in between.
        let term = node.raw.raft.term;
        node.raw.raft.become_follower(term + 1, 0);
        node.on_ready();
        assert!(node.controller.is_none());
        node.raw.campaign().unwrap();
        for _ in 0..20 {
            node.on_ready();
            node.on_tick(Instant::now());
        }
        assert_eq!(node.leader(), 1);
        assert_eq!(
            rx.try_recv().expect("the request was answered"),
            Err(AdminError::UnknownTopic)
        );
        node.transport.shutdown();
    }

    #[test]
    fn requests_that_would_grow_the_image_past_a_snapshot_frame_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = lone_node(dir.path());
        node.raw.campaign().unwrap();
        for _ in 0..5 {
            node.on_ready();
        }
        node.image.brokers.insert(
            1,
            crate::BrokerInfo {
                id: 1,
                host: "h".to_string(),
                port: 1,
                listeners: Vec::new(),
                fenced: false,
                incarnation: 1,
            },
        );
        let submit = |node: &mut Node, name: &str| {
            let (tx, rx) = std::sync::mpsc::channel();
            node.handle_event(Event::Submit {
                request: AdminRequest::CreateTopic {
                    name: name.to_string(),
                    partitions: 1,
                    replication_factor: 1,
                    assignments: None,
                    configs: Default::default(),
                },
                deadline: Instant::now() + Duration::from_secs(60),
                reply: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            });
            for _ in 0..5 {
                node.on_ready();
            }
            rx.try_recv().expect("answered")
        };
        assert!(submit(&mut node, "fits").is_ok());
        // Many topics' configs, as committed earlier, fill the image up to its limit.
        let filler = crate::TopicImage {
            id: uuid::Uuid::nil(),
            partitions: Vec::new(),
            configs: [("x".to_string(), "v".repeat(1 << 20))].into(),
        };
        for i in 0..(IMAGE_BYTES_MAX >> 20) {
            node.image
                .topics
                .insert(format!("filler-{i}"), filler.clone());
        }
        match submit(&mut node, "too-much") {
            Err(AdminError::Other(msg)) => assert!(msg.contains("over the limit"), "{msg}"),
            other => panic!("{other:?}"),
        }
        node.transport.shutdown();
    }

    #[test]
    fn raft_messages_are_taken_only_from_their_connections_node() {
        let msg = |from: u64, to: u64| Message {
            from,
            to,
            ..Message::default()
        };
        assert!(raft_message_acceptable(&msg(2, 1), 1, 2));
        // Another voter's id on this connection, or addressed to another node.
        assert!(!raft_message_acceptable(&msg(3, 1), 1, 2));
        assert!(!raft_message_acceptable(&msg(2, 3), 1, 2));
        // Ids that would truncate to a voter's.
        assert!(!raft_message_acceptable(&msg((1 << 32) | 2, 1), 1, 2));
        assert!(!raft_message_acceptable(&msg(2, (1 << 32) | 1), 1, 2));
        assert_eq!(raft_to_node((1 << 32) | 2), None);
        assert_eq!(raft_to_node(0), None);
        assert_eq!(raft_to_node(7), Some(7));
    }

    #[test]
    fn entries_answer_their_origin_by_tag() {
        let cmd = Command::DeleteTopic {
            name: "missing".to_string(),
        };
        let mut e = entry(1, &cmd);
        e.context = serde_json::to_vec(&Tag {
            origin: 2,
            request_id: 99,
        })
        .unwrap()
        .into();
        let garbage = Entry {
            index: 2,
            data: b"not a command".to_vec().into(),
            ..Entry::default()
        };
        let mut image = MetadataImage::default();
        let out = apply_entries(&mut image, &[e, garbage]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], (Some((2, 99)), 1, Err(AdminError::UnknownTopic)));
        assert!(matches!(out[1], (None, 2, Err(AdminError::Other(_)))));
        assert_eq!(image.applied_index, 2);
    }
}
