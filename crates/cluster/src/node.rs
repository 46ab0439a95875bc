//! The quorum thread: owns the `RawNode`, ticks it, handles its `Ready`s, applies committed
//! commands, publishes images, routes requests (local, forwarded, answered) and, while this
//! node is the raft leader, runs the active controller's duties.
//!
//! Ready order: snapshot, then entries and hard state persisted (fsync) before any message is
//! sent, then committed entries applied, then advance. Replies wait until the entry they
//! proposed is applied here and the image holding it was published.

use crate::controller::{self, Controller};
use crate::state::{self, Command};
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
/// A forwarded request not answered within this is sent again (the frame may have been lost).
const FORWARD_RETRY: Duration = Duration::from_secs(2);
/// Tags of applied entries remembered to recognise a request sent again (after a lost reply
/// or a leader change) that was already applied: it is not proposed twice.
const TAGS_REMEMBERED_MAX: usize = 8192;

pub enum Event {
    Frame(Frame),
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
    pub inbound_queued: Arc<AtomicUsize>,
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
        inbound_queued: Arc<AtomicUsize>,
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
        }
    }

    fn id(&self) -> NodeId {
        self.config.node_id
    }

    fn leader(&self) -> NodeId {
        match self.raw.raft.leader_id {
            0 => -1,
            id => id as NodeId,
        }
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
            Event::Frame(frame) => {
                self.inbound_queued.fetch_sub(1, Ordering::SeqCst);
                self.handle_frame(frame);
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

    fn handle_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Raft(bytes) => {
                let msg = match Message::parse_from_bytes(&bytes) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable raft message dropped");
                        return;
                    }
                };
                if msg.to != self.id() as u64 || !self.is_voter(msg.from as NodeId) {
                    tracing::warn!(
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
                if self.is_voter(hb.node_id) {
                    self.heartbeats.insert(hb.node_id, (Instant::now(), hb));
                }
            }
            Frame::Forward(f) => {
                if self.raw.raft.state == StateRole::Leader {
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
                match self.raw.propose(context, cmd.encode()) {
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
            };
            let peers: Vec<NodeId> = self.transport.peer_ids().collect();
            for peer in peers {
                self.transport.send(peer, &Frame::Heartbeat(hb.clone()));
            }
            self.heartbeats.insert(self.id(), (now, hb));
        }
        self.track_leadership(now);
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
                if let Err(e) = self.raw.propose(Vec::new(), cmd.encode()) {
                    tracing::debug!(error = %e, "controller proposal refused");
                }
            }
        }
        self.route_pending(now);
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
            }
            _ => {}
        }
    }

    fn send_messages(&mut self, msgs: Vec<Message>) {
        for msg in msgs {
            let to = msg.to as NodeId;
            let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            let sent = match msg.write_to_bytes() {
                Ok(bytes) => self.transport.send(to, &Frame::Raft(bytes)),
                Err(e) => {
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
                self.raw.report_snapshot(msg.to, status);
            }
        }
    }

    fn apply_committed(&mut self, entries: &[Entry]) -> bool {
        if entries.is_empty() {
            return false;
        }
        let me = self.id();
        for (tag, index, result) in apply_entries(&mut self.image, entries) {
            if let Some((origin, request_id)) = tag {
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
            self.send_messages(rd.take_messages());
            self.send_messages(rd.take_persisted_messages());
            let committed = rd.take_committed_entries();
            changed |= self.apply_committed(&committed);
            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                if let Err(e) = self.raw.mut_store().set_commit(commit) {
                    fail_stop(&e);
                }
            }
            self.send_messages(light.take_messages());
            let committed = light.take_committed_entries();
            changed |= self.apply_committed(&committed);
            self.raw.advance_apply();
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
