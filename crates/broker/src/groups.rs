//! Consumer groups (the classic protocol) and their committed offsets.
//!
//! A group lives on one shard: the owner of partition `crc32c(group) % OFFSETS_PARTITIONS` of
//! the internal `__consumer_offsets` topic, so its coordination and its durable offsets share
//! an owner. Group APIs arriving on other shards are forwarded there (`mesh::call`).
//!
//! State machine: Empty → PreparingRebalance (members (re)join; completes when all known
//! members joined or the rebalance timeout passes) → CompletingRebalance (the leader computes
//! assignments) → Stable (SyncGroup delivered them); Dead while DeleteGroups writes its
//! tombstones. Session timeouts, rebalance deadlines and unclaimed member ids expire exactly
//! at their deadline: one timer task per shard sleeps on a ring timeout until the earliest
//! deadline and is woken when an earlier one appears. Committed offsets are appended to the
//! group's offsets partition (one record per partition commit, tombstones for deletes) and
//! rebuilt in memory when the shard starts. OffsetCommit, OffsetDelete and JoinGroup's size
//! limit follow Kafka's classic group coordinator rule for rule (`ClassicGroup`,
//! `GroupMetadataManager`).

use crate::errors;
use crate::limits::{
    GROUPS_PER_SHARD_MAX, GROUP_ID_BYTES_MAX, GROUP_INSTANCE_ID_BYTES_MAX, GROUP_MEMBERS_MAX,
    JOIN_PROTOCOLS_MAX, MEMBER_ASSIGNMENT_BYTES_MAX, MEMBER_CLIENT_ID_BYTES_MAX,
    MEMBER_METADATA_BYTES_MAX,
};
use crate::shard;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use ringbroker_runtime::notify::Notify;
use ringbroker_runtime::oneshot;
use ringbroker_runtime::op;
use ringbroker_storage::PartitionLog;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
pub const OFFSETS_PARTITIONS: usize = 8;
/// The longest the timer task sleeps when no deadline is pending (a new deadline wakes it).
const TIMER_IDLE_WAIT: Duration = Duration::from_secs(60);

pub const UNKNOWN_MEMBER_ID: i16 = 25;
pub const ILLEGAL_GENERATION: i16 = 22;
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
pub const REBALANCE_IN_PROGRESS: i16 = 27;
pub const INVALID_SESSION_TIMEOUT: i16 = 26;
pub const MEMBER_ID_REQUIRED: i16 = 79;
pub const NON_EMPTY_GROUP: i16 = 68;
pub const GROUP_ID_NOT_FOUND: i16 = 69;
pub const INVALID_GROUP_ID: i16 = 24;
pub const FENCED_INSTANCE_ID: i16 = 82;
pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;

/// The protocol type of consumer groups (whose member metadata is the consumer protocol's
/// subscription, naming the topics each member reads).
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// The offsets partition that holds `group`.
pub fn offsets_partition(group: &str) -> i32 {
    (crc32c::crc32c(group.as_bytes()) % OFFSETS_PARTITIONS as u32) as i32
}

/// Cluster mode: NOT_COORDINATOR when this node does not lead `group`'s offsets partition
/// (the client then finds the coordinator again), COORDINATOR_LOAD_IN_PROGRESS while it leads
/// it but has not yet loaded its groups at that leader epoch (the client retries: answering
/// from a partial state would hand out no committed offset, and a commit could be
/// overwritten by an older one the load replays); `None` on its coordinator and on a single
/// node, which coordinates every group.
pub fn coordinator_error(group: &str) -> Option<i16> {
    let shard = shard::current();
    shard.shared.cluster.as_ref()?;
    let partition = offsets_partition(group);
    let replicas = shard
        .topic(OFFSETS_TOPIC)
        .and_then(|t| t.replicas(partition).map(|r| (r.leader, r.leader_epoch)));
    match replicas {
        Some((leader, epoch)) if leader == shard.shared.node_id => {
            // This shard's view may be ahead of the owner shard's: the epoch this view names
            // must be the one loaded, not merely some earlier one.
            (shard.shared.offsets_loaded.epoch(partition) != Some(epoch))
                .then_some(errors::COORDINATOR_LOAD_IN_PROGRESS)
        }
        _ => Some(errors::NOT_COORDINATOR),
    }
}

/// Cluster mode: per offsets partition, the leader epoch at which this node has loaded its
/// groups (-1: not coordinating it).
#[derive(Debug)]
pub struct OffsetsLoaded([std::sync::atomic::AtomicI32; OFFSETS_PARTITIONS]);

impl Default for OffsetsLoaded {
    fn default() -> Self {
        OffsetsLoaded(std::array::from_fn(|_| {
            std::sync::atomic::AtomicI32::new(-1)
        }))
    }
}

impl OffsetsLoaded {
    fn slot(&self, partition: i32) -> Option<&std::sync::atomic::AtomicI32> {
        usize::try_from(partition).ok().and_then(|p| self.0.get(p))
    }

    /// The leader epoch the groups of `partition` are loaded at, if any.
    pub fn epoch(&self, partition: i32) -> Option<i32> {
        let e = self
            .slot(partition)?
            .load(std::sync::atomic::Ordering::Acquire);
        (e >= 0).then_some(e)
    }

    fn set(&self, partition: i32, epoch: i32) {
        if let Some(s) = self.slot(partition) {
            s.store(epoch, std::sync::atomic::Ordering::Release);
        }
    }
}

/// The shard coordinating `group`.
pub fn group_shard(group: &str) -> usize {
    shard::current()
        .topic(OFFSETS_TOPIC)
        .and_then(|t| t.owner(offsets_partition(group)))
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    /// DeleteGroups is writing the group's tombstones; the group is gone once they are stored.
    Dead,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// What a JoinGroup gets back.
#[derive(Debug, Clone, Default)]
pub struct JoinResult {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// (member id, group instance id, metadata): only for the leader.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

/// What a SyncGroup gets back.
#[derive(Debug, Clone, Default)]
pub struct SyncResult {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

pub struct JoinRequest {
    pub group: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// KIP-394: from JoinGroup v4 a new member first gets its id with MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
}

struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: Instant,
    joined: bool,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
}

struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    /// In join order (the first member leads when no leader remains).
    members: Vec<(String, Member)>,
    /// KIP-394: ids handed out with MEMBER_ID_REQUIRED, not yet joined, each with the end of
    /// the session it asked for (as in Kafka, an id unclaimed by then is forgotten).
    pending: Vec<(String, Instant)>,
    rebalance_deadline: Option<Instant>,
}

impl Member {
    /// Whether the session timer runs: a member waiting for the broker's answer to its
    /// JoinGroup or SyncGroup is kept alive (Kafka's `shouldKeepAlive`); the rebalance
    /// deadline bounds that wait.
    fn session_deadline(&self) -> Option<Instant> {
        (self.join_waiter.is_none() && self.sync_waiter.is_none())
            .then(|| self.last_seen + self.session_timeout)
    }
}

impl Group {
    fn new() -> Group {
        Group {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: Vec::new(),
            pending: Vec::new(),
            rebalance_deadline: None,
        }
    }

    /// Whether one more member or pending member id would exceed [`GROUP_MEMBERS_MAX`], the
    /// bound on what a group keeps in memory (whatever `--group-max-size` says).
    fn full(&self) -> bool {
        self.members.len() + self.pending.len() >= GROUP_MEMBERS_MAX
    }

    /// Kafka's `acceptJoiningMember`: whether a JoinGroup from `member_id` (empty: a new
    /// member) may join under `group.max.size`. While the group prepares a rebalance, the
    /// members that already rejoined count (those that have not may be gone); once it has
    /// rebalanced, all members count. A member already waiting in this rebalance, or a known
    /// member after it, is always accepted.
    fn accepts_joining(&self, member_id: &str, max_size: usize) -> bool {
        let known = self.members.iter().find(|(id, _)| id == member_id);
        match self.state {
            GroupState::Empty | GroupState::Dead => true,
            GroupState::PreparingRebalance => {
                known.is_some_and(|(_, m)| m.join_waiter.is_some())
                    || self
                        .members
                        .iter()
                        .filter(|(_, m)| m.join_waiter.is_some())
                        .count()
                        < max_size
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                known.is_some() || self.members.len() < max_size
            }
        }
    }

    /// The member id a static member (`group.instance.id`) holds now.
    fn static_member(&self, instance_id: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(instance_id))
            .map(|(id, _)| id.as_str())
    }

    /// Kafka's `validateMember`: a static member must hold the member id it names
    /// (FENCED_INSTANCE_ID when another holds its instance id), and the member must exist.
    fn validate_member(&self, member_id: &str, instance_id: Option<&str>) -> i16 {
        if let Some(iid) = instance_id {
            match self.static_member(iid) {
                None => return UNKNOWN_MEMBER_ID,
                Some(holder) if holder != member_id => return FENCED_INSTANCE_ID,
                Some(_) => {}
            }
        }
        if self.members.iter().any(|(id, _)| id == member_id) {
            errors::NONE
        } else {
            UNKNOWN_MEMBER_ID
        }
    }

    /// The earliest deadline of this group: a session, the rebalance, an unclaimed member id.
    fn next_deadline(&self) -> Option<Instant> {
        self.members
            .iter()
            .filter_map(|(_, m)| m.session_deadline())
            .chain(self.rebalance_deadline)
            .chain(self.pending.iter().map(|(_, until)| *until))
            .min()
    }

    /// The topics the members subscribe to, from their consumer-protocol metadata (Kafka's
    /// `computeSubscribedTopics`); `None` when not known: not a consumer group, no protocol
    /// chosen yet, or metadata that does not parse.
    fn subscribed_topics(&self) -> Option<HashSet<String>> {
        if self.protocol_type.as_deref() != Some(CONSUMER_PROTOCOL_TYPE) {
            return None;
        }
        let protocol = self.protocol.as_ref()?;
        let mut topics = HashSet::new();
        for (_, m) in &self.members {
            let (_, meta) = m.protocols.iter().find(|(n, _)| n == protocol)?;
            topics.extend(subscription_topics(meta)?);
        }
        Some(topics)
    }

    /// Kafka's `isSubscribedToTopic`: when the subscriptions are not known, a consumer group
    /// counts as subscribed to every topic.
    fn is_subscribed_to(&self, subscribed: &Option<HashSet<String>>, topic: &str) -> bool {
        match subscribed {
            Some(topics) => topics.contains(topic),
            None => self.protocol_type.as_deref() == Some(CONSUMER_PROTOCOL_TYPE),
        }
    }

    fn member(&mut self, id: &str) -> Option<&mut Member> {
        self.members
            .iter_mut()
            .find(|(m, _)| m == id)
            .map(|(_, m)| m)
    }

    fn start_rebalance(&mut self) {
        if self.state == GroupState::PreparingRebalance {
            return;
        }
        tracing::debug!(
            generation = self.generation,
            from = self.state.name(),
            "rebalance starts"
        );
        self.state = GroupState::PreparingRebalance;
        let timeout = self
            .members
            .iter()
            .map(|(_, m)| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::ZERO);
        self.rebalance_deadline = Some(Instant::now() + timeout);
        for (_, m) in &mut self.members {
            m.joined = m.join_waiter.is_some();
            if let Some(w) = m.sync_waiter.take() {
                w.send(SyncResult {
                    error: REBALANCE_IN_PROGRESS,
                    ..Default::default()
                });
            }
        }
    }

    fn maybe_complete_join(&mut self, force: bool) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        if !force && !self.members.iter().all(|(_, m)| m.joined) {
            return;
        }
        // Members that did not rejoin in time are out.
        self.members.retain(|(_, m)| m.joined);
        self.rebalance_deadline = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.leader = None;
            self.protocol = None;
            return;
        }
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.iter().any(|(m, _)| m == l))
        {
            self.leader = Some(self.members[0].0.clone());
        }
        let leader = self.leader.clone().expect("set above");
        // The leader's first protocol that every member supports.
        let leader_protocols: Vec<String> = self
            .members
            .iter()
            .find(|(m, _)| *m == leader)
            .map(|(_, m)| m.protocols.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default();
        let protocol = leader_protocols.into_iter().find(|p| {
            self.members
                .iter()
                .all(|(_, m)| m.protocols.iter().any(|(n, _)| n == p))
        });
        self.protocol = protocol.clone();
        self.state = GroupState::CompletingRebalance;
        tracing::debug!(
            generation = self.generation,
            members = self.members.len(),
            "rebalance joined"
        );
        let metadata: Vec<(String, Option<String>, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| {
                let meta = m
                    .protocols
                    .iter()
                    .find(|(n, _)| Some(n) == protocol.as_ref())
                    .map(|(_, b)| b.clone());
                (id.clone(), m.instance_id.clone(), meta.unwrap_or_default())
            })
            .collect();
        for (id, m) in &mut self.members {
            m.last_seen = Instant::now();
            if let Some(w) = m.join_waiter.take() {
                w.send(JoinResult {
                    error: errors::NONE,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        metadata.clone()
                    } else {
                        Vec::new()
                    },
                });
            }
        }
    }

    fn remove_member(&mut self, id: &str) {
        if let Some(i) = self.members.iter().position(|(m, _)| m == id) {
            let (_, m) = self.members.remove(i);
            if let Some(w) = m.join_waiter {
                w.send(JoinResult {
                    error: UNKNOWN_MEMBER_ID,
                    ..Default::default()
                });
            }
            if let Some(w) = m.sync_waiter {
                w.send(SyncResult {
                    error: UNKNOWN_MEMBER_ID,
                    ..Default::default()
                });
            }
        }
        if self.members.is_empty() {
            if self.state != GroupState::Empty {
                self.generation += 1;
            }
            self.state = GroupState::Empty;
            self.leader = None;
            self.protocol = None;
            self.rebalance_deadline = None;
        } else {
            self.start_rebalance();
            self.maybe_complete_join(false);
        }
    }
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

#[derive(Default)]
struct Coordinator {
    groups: HashMap<String, Group>,
    offsets: HashMap<String, BTreeMap<(String, i32), Committed>>,
    /// Offset writes of a group being appended, and deletions of its offsets waiting or
    /// writing (an entry while either is not zero).
    writes: HashMap<String, GroupWrites>,
}

/// What orders a group's offset writes: a deletion (DeleteGroups, OffsetDelete) reads the
/// committed offsets it writes tombstones for only once no write of the group is in flight
/// (a commit appended but not yet applied would otherwise be missed, and live on in the log
/// after its tombstones), and a commit starts its append only while no deletion is pending.
#[derive(Default)]
struct GroupWrites {
    in_flight: usize,
    deletions: usize,
}

impl Coordinator {
    /// Applies one offset record: a committed offset, or a tombstone (`None`) that removes it
    /// (and the group's entry once it holds none).
    fn apply_offset(
        &mut self,
        group: &str,
        topic: String,
        partition: i32,
        committed: Option<Committed>,
    ) {
        match committed {
            Some(v) => {
                self.offsets
                    .entry(group.to_string())
                    .or_default()
                    .insert((topic, partition), v);
            }
            None => {
                if let Some(map) = self.offsets.get_mut(group) {
                    map.remove(&(topic, partition));
                    if map.is_empty() {
                        self.offsets.remove(group);
                    }
                }
            }
        }
    }
}

thread_local! {
    static COORDINATOR: RefCell<Coordinator> = RefCell::new(Coordinator::default());
}

fn with<R>(f: impl FnOnce(&mut Coordinator) -> R) -> R {
    COORDINATOR.with(|c| f(&mut c.borrow_mut()))
}

thread_local! {
    /// Woken whenever a group's offset write or deletion ends.
    static WRITES_SETTLED: Rc<Notify> = Notify::new();
}

/// Counts one offset write (`deletion` false) or one deletion of a group in
/// [`Coordinator::writes`] while it lives: dropped (done, failed or cancelled), it uncounts it
/// and wakes the waiters.
struct WriteGuard {
    group: String,
    deletion: bool,
}

impl WriteGuard {
    fn new(group: &str, deletion: bool) -> WriteGuard {
        with(|c| {
            let w = c.writes.entry(group.to_string()).or_default();
            if deletion {
                w.deletions += 1;
            } else {
                w.in_flight += 1;
            }
        });
        WriteGuard {
            group: group.to_string(),
            deletion,
        }
    }
}

/// For drops: like [`with`], but nothing once the thread's coordinator is gone (tasks dropped
/// as the thread ends).
fn with_if_alive(f: impl FnOnce(&mut Coordinator)) {
    let _ = COORDINATOR.try_with(|c| f(&mut c.borrow_mut()));
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        with_if_alive(|c| {
            if let Some(w) = c.writes.get_mut(&self.group) {
                if self.deletion {
                    w.deletions -= 1;
                } else {
                    w.in_flight -= 1;
                }
                if w.deletions == 0 && w.in_flight == 0 {
                    c.writes.remove(&self.group);
                }
            }
        });
        let _ = WRITES_SETTLED.try_with(|n| n.notify_all());
    }
}

/// Waits until `ready` holds for `group`'s writes (checked on this poll first, so what the
/// caller does right after, before its next await, still sees it hold).
async fn wait_for_writes(group: &str, ready: impl Fn(&GroupWrites) -> bool) {
    let settled = WRITES_SETTLED.with(Rc::clone);
    loop {
        let notified = settled.notified();
        if with(|c| c.writes.get(group).is_none_or(&ready)) {
            return;
        }
        notified.await;
    }
}

/// A deletion of `group`'s offsets: counted (so new commits of the group wait for it), then
/// returned once no offset write of the group is in flight.
async fn start_deletion(group: &str) -> WriteGuard {
    let deletion = WriteGuard::new(group, true);
    wait_for_writes(group, |w| w.in_flight == 0).await;
    deletion
}

fn new_member_id(client_id: &str) -> String {
    format!("{client_id}-{}", uuid::Uuid::new_v4())
}

/// `s` cut to at most `bytes_max` bytes, at a character boundary.
fn truncated(s: &str, bytes_max: usize) -> &str {
    let mut end = s.len().min(bytes_max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether a group id is one this broker keeps state for (JoinGroup, OffsetCommit).
pub fn valid_group_id(group: &str) -> bool {
    !group.is_empty() && group.len() <= GROUP_ID_BYTES_MAX
}

/// The error for a JoinGroup whose sizes exceed a limit before it touches any state.
fn join_request_error(req: &JoinRequest) -> Option<i16> {
    if !valid_group_id(&req.group) {
        return Some(INVALID_GROUP_ID);
    }
    if !(1..=30 * 60 * 1000).contains(&req.session_timeout_ms) {
        return Some(INVALID_SESSION_TIMEOUT);
    }
    let metadata_bytes = req.protocol_type.len()
        + req
            .protocols
            .iter()
            .map(|(name, meta)| name.len() + meta.len())
            .sum::<usize>();
    let too_big = req
        .instance_id
        .as_ref()
        .is_some_and(|i| i.len() > GROUP_INSTANCE_ID_BYTES_MAX)
        || req.protocols.len() > JOIN_PROTOCOLS_MAX
        || metadata_bytes > MEMBER_METADATA_BYTES_MAX;
    if too_big {
        crate::warn_limited!(
            group = %truncated(&req.group, 64),
            protocols = req.protocols.len(),
            metadata_bytes,
            "JoinGroup over a limit: INVALID_REQUEST"
        );
        return Some(errors::INVALID_REQUEST);
    }
    None
}

/// The group size limit this broker runs with (`--group-max-size`, Kafka's `group.max.size`).
fn group_max_size() -> usize {
    shard::current().shared.config.group_max_size
}

/// JoinGroup, run on the group's shard.
pub async fn join(req: JoinRequest) -> JoinResult {
    if let Some(error) = join_request_error(&req) {
        return JoinResult {
            error,
            ..Default::default()
        };
    }
    let client_id = truncated(&req.client_id, MEMBER_CLIENT_ID_BYTES_MAX);
    let max_size = group_max_size();
    tracing::debug!(group = %req.group, member = %req.member_id, "JoinGroup");
    let waiter = with(|c| {
        if !c.groups.contains_key(&req.group) && c.groups.len() >= GROUPS_PER_SHARD_MAX {
            forget_empty_groups(c);
        }
        if !c.groups.contains_key(&req.group) && c.groups.len() >= GROUPS_PER_SHARD_MAX {
            crate::warn_limited!(
                max = GROUPS_PER_SHARD_MAX,
                "JoinGroup for a new group on a full shard: COORDINATOR_NOT_AVAILABLE"
            );
            return Err(Box::new(JoinResult {
                error: errors::COORDINATOR_NOT_AVAILABLE,
                ..Default::default()
            }));
        }
        let g = c.groups.entry(req.group.clone()).or_insert_with(Group::new);
        if g.state == GroupState::Dead {
            return Err(Box::new(JoinResult {
                error: errors::COORDINATOR_NOT_AVAILABLE,
                ..Default::default()
            }));
        }
        if g.state != GroupState::Empty && g.protocol_type.as_deref() != Some(&req.protocol_type) {
            return Err(Box::new(JoinResult {
                error: INCONSISTENT_GROUP_PROTOCOL,
                ..Default::default()
            }));
        }
        // A static member coming back without its id takes its old place under a new id.
        let static_old = if req.member_id.is_empty() {
            req.instance_id
                .as_deref()
                .and_then(|iid| g.static_member(iid))
                .map(str::to_string)
        } else {
            None
        };
        if static_old.is_none() && !g.accepts_joining(&req.member_id, max_size) {
            crate::warn_limited!(group = %req.group, max = max_size, "JoinGroup: GROUP_MAX_SIZE_REACHED");
            g.pending.retain(|(id, _)| *id != req.member_id);
            if g.member(&req.member_id).is_some() {
                g.remove_member(&req.member_id);
                rearm(g);
            }
            return Err(Box::new(JoinResult {
                error: errors::GROUP_MAX_SIZE_REACHED,
                ..Default::default()
            }));
        }
        let mut member_id = req.member_id.clone();
        if member_id.is_empty() {
            if static_old.is_none() && g.full() {
                crate::warn_limited!(group = %req.group, max = GROUP_MEMBERS_MAX, "JoinGroup: GROUP_MAX_SIZE_REACHED");
                return Err(Box::new(JoinResult {
                    error: errors::GROUP_MAX_SIZE_REACHED,
                    ..Default::default()
                }));
            }
            member_id = new_member_id(client_id);
            if let Some(old) = static_old {
                let slot = g
                    .members
                    .iter_mut()
                    .find(|(id, _)| *id == old)
                    .expect("found above");
                slot.0 = member_id.clone();
                if g.leader.as_ref() == Some(&old) {
                    g.leader = Some(member_id.clone());
                }
            } else if req.require_known_member_id && req.instance_id.is_none() {
                let session = Duration::from_millis(req.session_timeout_ms as u64);
                g.pending
                    .push((member_id.clone(), Instant::now() + session));
                timers_changed(Instant::now() + session);
                return Err(Box::new(JoinResult {
                    error: MEMBER_ID_REQUIRED,
                    member_id,
                    ..Default::default()
                }));
            }
        } else if g.member(&member_id).is_none() {
            match g.pending.iter().position(|(id, _)| *id == member_id) {
                Some(i) => {
                    g.pending.remove(i);
                }
                None => {
                    return Err(Box::new(JoinResult {
                        error: UNKNOWN_MEMBER_ID,
                        member_id,
                        ..Default::default()
                    }))
                }
            }
        }
        if g.member(&member_id).is_none() {
            g.members.push((
                member_id.clone(),
                Member {
                    instance_id: req.instance_id.clone(),
                    client_id: client_id.to_string(),
                    client_host: req.client_host.clone(),
                    session_timeout: Duration::ZERO,
                    rebalance_timeout: Duration::ZERO,
                    protocols: Vec::new(),
                    assignment: Bytes::new(),
                    last_seen: Instant::now(),
                    joined: false,
                    join_waiter: None,
                    sync_waiter: None,
                },
            ));
        }
        g.protocol_type = Some(req.protocol_type.clone());
        let (tx, rx) = oneshot::channel();
        let m = g.member(&member_id).expect("added above");
        m.session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
        m.rebalance_timeout =
            Duration::from_millis(req.rebalance_timeout_ms.max(req.session_timeout_ms) as u64);
        // Copies: a slice would keep the whole request frame alive as long as the member.
        m.protocols = req
            .protocols
            .iter()
            .map(|(name, meta)| (name.clone(), Bytes::copy_from_slice(meta)))
            .collect();
        m.last_seen = Instant::now();
        m.joined = true;
        if let Some(old) = m.join_waiter.replace(tx) {
            old.send(JoinResult {
                error: UNKNOWN_MEMBER_ID,
                ..Default::default()
            });
        }
        g.start_rebalance();
        g.maybe_complete_join(false);
        rearm(g);
        Ok(rx)
    });
    match waiter {
        Err(result) => *result,
        Ok(rx) => rx.await.unwrap_or(JoinResult {
            error: UNKNOWN_MEMBER_ID,
            ..Default::default()
        }),
    }
}

/// SyncGroup, run on the group's shard.
pub async fn sync(
    group: String,
    generation: i32,
    member_id: String,
    instance_id: Option<String>,
    assignments: Vec<(String, Bytes)>,
) -> SyncResult {
    tracing::debug!(group = %group, member = %member_id, generation, leader_assignments = assignments.len(), "SyncGroup");
    let waiter = with(|c| {
        let Some(g) = c.groups.get_mut(&group) else {
            return Err(SyncResult {
                error: UNKNOWN_MEMBER_ID,
                ..Default::default()
            });
        };
        let valid = g.validate_member(&member_id, instance_id.as_deref());
        if valid != errors::NONE {
            return Err(SyncResult {
                error: valid,
                ..Default::default()
            });
        }
        if generation != g.generation {
            return Err(SyncResult {
                error: ILLEGAL_GENERATION,
                ..Default::default()
            });
        }
        let result = |g: &Group, assignment: Bytes| SyncResult {
            error: errors::NONE,
            protocol_type: g.protocol_type.clone(),
            protocol: g.protocol.clone(),
            assignment,
        };
        match g.state {
            GroupState::Dead => Err(SyncResult {
                error: errors::COORDINATOR_NOT_AVAILABLE,
                ..Default::default()
            }),
            GroupState::PreparingRebalance | GroupState::Empty => Err(SyncResult {
                error: REBALANCE_IN_PROGRESS,
                ..Default::default()
            }),
            GroupState::Stable => {
                let a = g.member(&member_id).expect("checked").assignment.clone();
                Err(result(g, a))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                g.member(&member_id).expect("checked").sync_waiter = Some(tx);
                if g.leader.as_ref() == Some(&member_id) {
                    if let Some((_, a)) = assignments
                        .iter()
                        .find(|(_, a)| a.len() > MEMBER_ASSIGNMENT_BYTES_MAX)
                    {
                        crate::warn_limited!(group = %group, bytes = a.len(), max = MEMBER_ASSIGNMENT_BYTES_MAX, "SyncGroup assignment too large: INVALID_REQUEST, rebalancing");
                        g.member(&member_id).expect("checked").sync_waiter = None;
                        g.start_rebalance();
                        rearm(g);
                        return Err(SyncResult {
                            error: errors::INVALID_REQUEST,
                            ..Default::default()
                        });
                    }
                    for (id, m) in &mut g.members {
                        // Copies, so the request frame is not kept alive by a slice of it.
                        m.assignment = assignments
                            .iter()
                            .find(|(a, _)| a == id)
                            .map(|(_, b)| Bytes::copy_from_slice(b))
                            .unwrap_or_default();
                    }
                    g.state = GroupState::Stable;
                    let snapshot: Vec<(Option<oneshot::Sender<SyncResult>>, Bytes)> = g
                        .members
                        .iter_mut()
                        .map(|(_, m)| (m.sync_waiter.take(), m.assignment.clone()))
                        .collect();
                    let (ptype, proto) = (g.protocol_type.clone(), g.protocol.clone());
                    // Members waiting for this answer were alive all along: their session
                    // timers start again now.
                    let now = Instant::now();
                    for (_, m) in &mut g.members {
                        m.last_seen = now;
                    }
                    rearm(g);
                    for (w, assignment) in snapshot {
                        if let Some(w) = w {
                            w.send(SyncResult {
                                error: errors::NONE,
                                protocol_type: ptype.clone(),
                                protocol: proto.clone(),
                                assignment,
                            });
                        }
                    }
                }
                Ok(rx)
            }
        }
    });
    match waiter {
        Err(result) => result,
        Ok(rx) => rx.await.unwrap_or(SyncResult {
            error: REBALANCE_IN_PROGRESS,
            ..Default::default()
        }),
    }
}

/// Heartbeat, run on the group's shard.
/// A static member (`group.instance.id`) whose place another instance took gets
/// FENCED_INSTANCE_ID (KIP-345), as with OffsetCommit and SyncGroup.
pub fn heartbeat(group: &str, generation: i32, member_id: &str, instance_id: Option<&str>) -> i16 {
    with(|c| {
        let Some(g) = c.groups.get_mut(group) else {
            return UNKNOWN_MEMBER_ID;
        };
        if g.state == GroupState::Dead {
            return errors::COORDINATOR_NOT_AVAILABLE;
        }
        let valid = g.validate_member(member_id, instance_id);
        if valid != errors::NONE {
            return valid;
        }
        let (state, current) = (g.state, g.generation);
        let Some(m) = g.member(member_id) else {
            return UNKNOWN_MEMBER_ID;
        };
        m.last_seen = Instant::now();
        if state == GroupState::PreparingRebalance {
            REBALANCE_IN_PROGRESS
        } else if generation != current {
            ILLEGAL_GENERATION
        } else {
            errors::NONE
        }
    })
}

/// LeaveGroup for each (member id, instance id); returns one error code each.
pub fn leave(group: &str, members: Vec<(String, Option<String>)>) -> Vec<i16> {
    with(|c| {
        let Some(g) = c.groups.get_mut(group) else {
            return members.iter().map(|_| UNKNOWN_MEMBER_ID).collect();
        };
        members
            .into_iter()
            .map(|(id, instance)| {
                let id = if id.is_empty() {
                    let found = instance.as_ref().and_then(|iid| {
                        g.members
                            .iter()
                            .find(|(_, m)| m.instance_id.as_ref() == Some(iid))
                            .map(|(id, _)| id.clone())
                    });
                    match found {
                        Some(id) => id,
                        None => return UNKNOWN_MEMBER_ID,
                    }
                } else {
                    id
                };
                if g.member(&id).is_none() {
                    return UNKNOWN_MEMBER_ID;
                }
                tracing::debug!(group, member = %id, "member left");
                g.remove_member(&id);
                rearm(g);
                errors::NONE
            })
            .collect()
    })
}

thread_local! {
    /// Wakes the timer task when a deadline earlier than the one it sleeps until appears.
    static TIMERS_CHANGED: Rc<Notify> = Notify::new();
    /// The instant the timer task sleeps until (`None`: not sleeping).
    static TIMERS_ARMED_UNTIL: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Tells the timer task about `deadline` if it sleeps past it.
fn timers_changed(deadline: Instant) {
    let earlier = TIMERS_ARMED_UNTIL.with(|a| a.get().is_some_and(|armed| deadline < armed));
    if earlier {
        TIMERS_ARMED_UNTIL.with(|a| a.set(Some(deadline)));
        TIMERS_CHANGED.with(|n| n.notify_all());
    }
}

/// After a change to `g`: its earliest deadline reaches the timer task.
fn rearm(g: &Group) {
    if let Some(deadline) = g.next_deadline() {
        timers_changed(deadline);
    }
}

/// The shard's group timer task: expires sessions, rebalance deadlines and unclaimed member
/// ids at their deadline (a ring timeout until the earliest one), until `stop` completes.
pub async fn run_timers(stop: impl Future<Output = ()>) {
    let notify = TIMERS_CHANGED.with(Rc::clone);
    let mut stop = std::pin::pin!(stop);
    loop {
        let now = Instant::now();
        let until = expire(now).unwrap_or(now + TIMER_IDLE_WAIT);
        TIMERS_ARMED_UNTIL.with(|a| a.set(Some(until)));
        // Created before the wait and after `expire`, with no await between: a deadline set
        // by any request from here on wakes this wait.
        let mut changed = std::pin::pin!(notify.notified());
        let woke = op::timeout(
            until.saturating_duration_since(Instant::now()),
            std::future::poll_fn(|cx| {
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(true);
                }
                changed.as_mut().poll(cx).map(|()| false)
            }),
        )
        .await;
        if woke == Some(true) {
            TIMERS_ARMED_UNTIL.with(|a| a.set(None));
            return;
        }
    }
}

/// Expires, as of `now`, members whose session ended, unclaimed member ids, and rebalances
/// whose deadline passed. The earliest deadline left. A group left Empty stays (as in Kafka:
/// DescribeGroups, ListGroups and DeleteGroups still see it) until a new group needs its slot.
fn expire(now: Instant) -> Option<Instant> {
    with(|c| {
        for (name, g) in c.groups.iter_mut() {
            g.pending.retain(|(_, until)| now < *until);
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| m.session_deadline().is_some_and(|d| now >= d))
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                tracing::info!(group = %name, member = %id, "session timed out; removing member");
                g.remove_member(&id);
            }
            if g.rebalance_deadline.is_some_and(|d| now >= d) {
                g.maybe_complete_join(true);
                // Passed either way: a deadline left behind would wake this task at once.
                g.rebalance_deadline = None;
            }
        }
        c.groups.values().filter_map(Group::next_deadline).min()
    })
}

/// When the shard holds GROUPS_PER_SHARD_MAX groups: a group without members keeps no
/// coordination state worth holding (its committed offsets live apart), so it makes room. A
/// Dead group is being deleted and stays until its tombstones are stored.
fn forget_empty_groups(c: &mut Coordinator) {
    c.groups.retain(|_, g| {
        g.state == GroupState::Dead || !(g.members.is_empty() && g.pending.is_empty())
    });
}

/// At shutdown: answers every JoinGroup and SyncGroup still waiting (for a rebalance that may
/// take a client-chosen time) with NOT_COORDINATOR, as Kafka's coordinator does when it
/// unloads its groups; the clients look for the coordinator again once it is back.
pub fn release_waiters() {
    with(|c| {
        for g in c.groups.values_mut() {
            for (_, m) in g.members.iter_mut() {
                if let Some(tx) = m.join_waiter.take() {
                    tx.send(JoinResult {
                        error: errors::NOT_COORDINATOR,
                        ..Default::default()
                    });
                }
                if let Some(tx) = m.sync_waiter.take() {
                    tx.send(SyncResult {
                        error: errors::NOT_COORDINATOR,
                        ..Default::default()
                    });
                }
            }
        }
    })
}

/// (group id, protocol type, state) of every group on this shard.
pub fn list() -> Vec<(String, String, &'static str)> {
    with(|c| {
        let mut names: Vec<&String> = c.groups.keys().chain(c.offsets.keys()).collect();
        names.sort();
        names.dedup();
        // A group being deleted is not listed.
        names.retain(|n| c.groups.get(*n).is_none_or(|g| g.state != GroupState::Dead));
        names
            .into_iter()
            .map(|n| {
                let g = c.groups.get(n);
                (
                    n.clone(),
                    g.and_then(|g| g.protocol_type.clone())
                        .unwrap_or_else(|| "consumer".into()),
                    g.map_or("Empty", |g| g.state.name()),
                )
            })
            .collect()
    })
}

/// A described group: state, protocol type, protocol, members
/// (id, instance id, client id, host, metadata, assignment).
#[allow(clippy::type_complexity)]
pub fn describe(
    group: &str,
) -> Option<(
    &'static str,
    String,
    String,
    Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
)> {
    with(|c| {
        let Some(g) = c.groups.get(group) else {
            // Known only by its committed offsets: a group without members.
            return c
                .offsets
                .contains_key(group)
                .then(|| ("Empty", String::new(), String::new(), Vec::new()));
        };
        let protocol = g.protocol.clone().unwrap_or_default();
        let members = g
            .members
            .iter()
            .map(|(id, m)| {
                let meta = m
                    .protocols
                    .iter()
                    .find(|(n, _)| Some(n) == g.protocol.as_ref())
                    .map(|(_, b)| b.clone());
                (
                    id.clone(),
                    m.instance_id.clone(),
                    m.client_id.clone(),
                    m.client_host.clone(),
                    meta.unwrap_or_default(),
                    m.assignment.clone(),
                )
            })
            .collect();
        Some((
            g.state.name(),
            g.protocol_type.clone().unwrap_or_default(),
            protocol,
            members,
        ))
    })
}

/// Whether a commit may add offsets for `group`: INVALID_GROUP_ID for an id this broker does
/// not keep, COORDINATOR_NOT_AVAILABLE when the group is new and the shard holds
/// [`GROUPS_PER_SHARD_MAX`] groups with offsets already.
pub fn offsets_room(group: &str) -> i16 {
    if !valid_group_id(group) {
        return INVALID_GROUP_ID;
    }
    with(|c| {
        if !c.offsets.contains_key(group) && c.offsets.len() >= GROUPS_PER_SHARD_MAX {
            crate::warn_limited!(
                max = GROUPS_PER_SHARD_MAX,
                "OffsetCommit for a new group on a full shard: COORDINATOR_NOT_AVAILABLE"
            );
            errors::COORDINATOR_NOT_AVAILABLE
        } else {
            errors::NONE
        }
    })
}

/// Kafka's classic-group rule for an OffsetCommit (`ClassicGroup::validateOffsetCommit`, and
/// `OffsetMetadataManager` for a group it does not know).
///
/// - a group being deleted: COORDINATOR_NOT_AVAILABLE;
/// - generation -1 (a simple or admin commit, e.g. AlterConsumerGroupOffsets) while the group
///   is Empty or unknown: accepted;
/// - a member named by id or `group.instance.id`: it must be a member (UNKNOWN_MEMBER_ID), a
///   static member must hold that id (FENCED_INSTANCE_ID), and the generation must be the
///   current one (ILLEGAL_GENERATION); no member and generation -1 while the group has
///   members: UNKNOWN_MEMBER_ID;
/// - a group unknown to this coordinator and generation >= 0: ILLEGAL_GENERATION (what Kafka
///   answers up to OffsetCommit v8);
/// - REBALANCE_IN_PROGRESS only while the group completes a rebalance (its members hold the
///   new generation but not their assignment yet). A commit of the current generation while
///   the group prepares a rebalance is accepted: it comes from a member that still owns its
///   partitions (often one committing as it leaves).
pub fn commit_allowed(
    group: &str,
    generation: i32,
    member_id: &str,
    instance_id: Option<&str>,
) -> i16 {
    with(|c| {
        let Some(g) = c.groups.get_mut(group) else {
            // No live group: Empty when it has committed offsets, unknown otherwise.
            return if generation < 0 {
                errors::NONE
            } else if c.offsets.contains_key(group) {
                UNKNOWN_MEMBER_ID
            } else {
                ILLEGAL_GENERATION
            };
        };
        if g.state == GroupState::Dead {
            return errors::COORDINATOR_NOT_AVAILABLE;
        }
        if generation < 0 && g.state == GroupState::Empty {
            return errors::NONE;
        }
        if generation >= 0 || !member_id.is_empty() || instance_id.is_some() {
            let valid = g.validate_member(member_id, instance_id);
            if valid != errors::NONE {
                return valid;
            }
            if generation != g.generation {
                return ILLEGAL_GENERATION;
            }
            if let Some(m) = g.member(member_id) {
                m.last_seen = Instant::now();
            }
        } else if g.state != GroupState::Empty {
            return UNKNOWN_MEMBER_ID;
        }
        if g.state == GroupState::CompletingRebalance {
            return REBALANCE_IN_PROGRESS;
        }
        errors::NONE
    })
}

/// Parses the topics of a consumer-protocol subscription (version, then the topic array: the
/// prefix every version shares, as Kafka reads it); `None` if it does not parse.
pub fn subscription_topics(mut b: &[u8]) -> Option<Vec<String>> {
    if b.remaining() < 6 {
        return None;
    }
    let _version = b.get_i16();
    let count = b.get_i32();
    // Each topic takes at least its 2-byte length: a count beyond that is malformed.
    if count < 0 || count as usize > b.remaining() / 2 {
        return None;
    }
    let mut topics = Vec::with_capacity(count as usize);
    for _ in 0..count {
        if b.remaining() < 2 {
            return None;
        }
        let n = b.get_i16();
        if n < 0 || n as usize > b.remaining() {
            return None;
        }
        topics.push(std::str::from_utf8(&b[..n as usize]).ok()?.to_string());
        b.advance(n as usize);
    }
    Some(topics)
}

// --- committed offsets -------------------------------------------------------------------

/// Kafka's `OffsetCommitKey` version: the key of an offset record is (group, topic,
/// partition), so compaction keeps the latest commit of each and a tombstone (null value)
/// removes it.
const OFFSET_KEY_VERSION: i16 = 1;
/// The value layout of Kafka's `OffsetCommitValue` version 3: offset, leader epoch, metadata,
/// commit timestamp. (A commit without metadata is stored with length -1, so OffsetFetch
/// answers null for it as before, where Kafka stores "".)
const OFFSET_VALUE_VERSION: i16 = 3;

fn put_short_string(b: &mut BytesMut, s: &str) {
    b.put_i16(s.len() as i16);
    b.put_slice(s.as_bytes());
}

fn get_short_string(b: &mut &[u8]) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let n = usize::try_from(b.get_i16()).ok()?;
    if b.remaining() < n {
        return None;
    }
    let s = std::str::from_utf8(&b[..n]).ok()?.to_string();
    b.advance(n);
    Some(s)
}

/// The key of an offset record (Kafka's `OffsetCommitKey` v1): version, group, topic,
/// partition.
pub fn encode_offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut b = BytesMut::with_capacity(8 + group.len() + topic.len());
    b.put_i16(OFFSET_KEY_VERSION);
    put_short_string(&mut b, group);
    put_short_string(&mut b, topic);
    b.put_i32(partition);
    b.to_vec()
}

/// Parses an offset record's key; `None` if it is not one (Kafka's group metadata records,
/// version 2, are not offsets).
pub fn decode_offset_key(mut b: &[u8]) -> Option<(String, String, i32)> {
    if b.remaining() < 2 || b.get_i16() != OFFSET_KEY_VERSION {
        return None;
    }
    let group = get_short_string(&mut b)?;
    let topic = get_short_string(&mut b)?;
    if b.remaining() != 4 {
        return None;
    }
    Some((group, topic, b.get_i32()))
}

/// The value of an offset record: a commit made at `commit_ms`.
pub fn encode_offset_value(c: &Committed, commit_ms: i64) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(OFFSET_VALUE_VERSION);
    b.put_i64(c.offset);
    b.put_i32(c.leader_epoch);
    match &c.metadata {
        Some(m) => put_short_string(&mut b, m),
        None => b.put_i16(-1),
    }
    b.put_i64(commit_ms);
    b.to_vec()
}

/// Parses an offset record's value.
pub fn decode_offset_value(mut b: &[u8]) -> Option<Committed> {
    if b.remaining() < 2 + 8 + 4 + 2 || b.get_i16() != OFFSET_VALUE_VERSION {
        return None;
    }
    let offset = b.get_i64();
    let leader_epoch = b.get_i32();
    let metadata = if b[..2] == (-1i16).to_be_bytes() {
        b.advance(2);
        None
    } else {
        Some(get_short_string(&mut b)?)
    };
    if b.remaining() != 8 {
        return None;
    }
    Some(Committed {
        offset,
        leader_epoch,
        metadata,
    })
}

/// The version byte of the key-less offset records earlier releases wrote (still replayed).
const LEGACY_RECORD_VERSION: u8 = 1;

/// A key-less offset record as earlier releases wrote it: version, group, topic, partition,
/// offset (-1: deleted), leader epoch, metadata (length -1: none). Only start-up reads them
/// (and rewrites what they hold as keyed records, which compaction can keep).
#[cfg(test)]
fn encode_offset_record(
    group: &str,
    topic: &str,
    partition: i32,
    c: Option<&Committed>,
) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(LEGACY_RECORD_VERSION);
    for s in [group, topic] {
        b.put_u16(s.len() as u16);
        b.put_slice(s.as_bytes());
    }
    b.put_i32(partition);
    b.put_i64(c.map_or(-1, |c| c.offset));
    b.put_i32(c.map_or(-1, |c| c.leader_epoch));
    match c.and_then(|c| c.metadata.as_ref()) {
        Some(m) => {
            b.put_i32(m.len() as i32);
            b.put_slice(m.as_bytes());
        }
        None => b.put_i32(-1),
    }
    b.to_vec()
}

/// Parses a key-less offset record of an earlier release; `None` if it is not one (so a
/// foreign record is skipped).
pub fn decode_offset_record(mut b: &[u8]) -> Option<(String, String, i32, Option<Committed>)> {
    let string = |b: &mut &[u8]| -> Option<String> {
        if b.remaining() < 2 {
            return None;
        }
        let n = b.get_u16() as usize;
        if b.remaining() < n {
            return None;
        }
        let s = std::str::from_utf8(&b[..n]).ok()?.to_string();
        b.advance(n);
        Some(s)
    };
    if b.remaining() < 1 || b.get_u8() != LEGACY_RECORD_VERSION {
        return None;
    }
    let group = string(&mut b)?;
    let topic = string(&mut b)?;
    if b.remaining() < 20 {
        return None;
    }
    let partition = b.get_i32();
    let offset = b.get_i64();
    let leader_epoch = b.get_i32();
    let meta_len = b.get_i32();
    let metadata = if meta_len < 0 {
        None
    } else {
        let n = meta_len as usize;
        if b.remaining() < n {
            return None;
        }
        Some(std::str::from_utf8(&b[..n]).ok()?.to_string())
    };
    let committed = (offset >= 0).then_some(Committed {
        offset,
        leader_epoch,
        metadata,
    });
    Some((group, topic, partition, committed))
}

/// How long an offset commit waits for the in-sync replicas of the offsets partition (Kafka's
/// `offsets.commit.timeout.ms` default).
const OFFSETS_REPLICATION_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Appends offset records to the group's offsets partition (on this shard) and applies them,
/// once no deletion of the group's offsets is pending (see [`GroupWrites`]).
pub async fn store_offsets(
    group: &str,
    entries: Vec<(String, i32, Option<Committed>)>,
) -> Result<(), String> {
    if entries.is_empty() {
        return Ok(());
    }
    wait_for_writes(group, |w| w.deletions == 0).await;
    append_offsets(group, entries).await
}

/// Appends offset records and applies them, counted as a write in flight of the group until
/// they are applied (or the append failed or was cancelled).
async fn append_offsets(
    group: &str,
    entries: Vec<(String, i32, Option<Committed>)>,
) -> Result<(), String> {
    if entries.is_empty() {
        return Ok(());
    }
    let _write = WriteGuard::new(group, false);
    let sh = shard::current();
    let partition = sh
        .partition_named(OFFSETS_TOPIC, offsets_partition(group))
        .ok_or("offsets partition not on this shard")?;
    // In a cluster only the partition's leader writes it (a follower's log is its leader's).
    if !partition.replica.is_leader() {
        return Err("this broker no longer leads the group's offsets partition".into());
    }
    let log = partition.log.clone();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    // Keyed by (group, topic, partition); a deleted offset is a tombstone (null value).
    let encoded: Vec<(Vec<u8>, Option<Vec<u8>>)> = entries
        .iter()
        .map(|(t, p, c)| {
            (
                encode_offset_key(group, t, *p),
                c.as_ref().map(|c| encode_offset_value(c, now_ms)),
            )
        })
        .collect();
    let records: Vec<ringbroker_protocol::batch::KeyValue<'_>> = encoded
        .iter()
        .map(|(k, v)| (Some(k.as_slice()), v.as_deref()))
        .collect();
    let batch = Bytes::from(ringbroker_protocol::batch::build_keyed_batch(
        0, now_ms, &records,
    ));
    let base = log
        .append_batch(batch, records.len() as u32)
        .await
        .map_err(|e| e.to_string())?;
    if sh.shared.config.flush.sync_before_ack(-1) {
        log.sync_to(base + records.len() as i64)
            .await
            .map_err(|e| e.to_string())?;
    }
    // As Kafka commits offsets with acks=all: on every in-sync replica before the answer, so
    // a new coordinator has them (a single node returns at once).
    if !partition.replica.is_alone() {
        crate::replication::await_acks(
            &partition,
            base + records.len() as i64,
            OFFSETS_REPLICATION_WAIT_MAX,
        )
        .await
        .map_err(|(_, why)| why)?;
    }
    with(|c| {
        for (t, p, committed) in entries {
            c.apply_offset(group, t, p, committed);
        }
    });
    Ok(())
}

/// Committed offsets of a group (all of them when `wanted` is `None`).
pub fn fetch_offsets(
    group: &str,
    wanted: Option<Vec<(String, i32)>>,
) -> Vec<(String, i32, Option<Committed>)> {
    with(|c| {
        let map = c.offsets.get(group);
        match wanted {
            Some(list) => list
                .into_iter()
                .map(|(t, p)| {
                    let v = map.and_then(|m| m.get(&(t.clone(), p)).cloned());
                    (t, p, v)
                })
                .collect(),
            None => map
                .map(|m| {
                    m.iter()
                        .map(|((t, p), v)| (t.clone(), *p, Some(v.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        }
    })
}

/// DeleteGroups for one group: NON_EMPTY_GROUP while it has members, GROUP_ID_NOT_FOUND when
/// unknown (or already being deleted); otherwise the group is Dead (commits and joins get
/// COORDINATOR_NOT_AVAILABLE) until its offsets' tombstones are stored, then gone. It first
/// waits for the group's commits in flight, so its tombstones cover every offset they add.
pub async fn delete_group(group: &str) -> i16 {
    let _deletion = start_deletion(group).await;
    let checked = with(|c| {
        match c.groups.get(group) {
            Some(g) if g.state == GroupState::Dead => return GROUP_ID_NOT_FOUND,
            Some(g) if !g.members.is_empty() => return NON_EMPTY_GROUP,
            Some(_) => {}
            None if c.offsets.contains_key(group) => {}
            None => return GROUP_ID_NOT_FOUND,
        }
        let g = c.groups.entry(group.to_string()).or_insert_with(Group::new);
        g.state = GroupState::Dead;
        // Unclaimed member ids die with the group.
        g.pending.clear();
        errors::NONE
    });
    if checked != errors::NONE {
        return checked;
    }
    // Dropped before the group is gone (the tombstones failed, or this was cancelled): the
    // group is Empty again.
    let revive = Revive(group);
    let entries: Vec<(String, i32, Option<Committed>)> = fetch_offsets(group, None)
        .into_iter()
        .map(|(t, p, _)| (t, p, None))
        .collect();
    if let Err(e) = append_offsets(group, entries).await {
        tracing::error!(group, error = %e, "could not write offset tombstones");
        return errors::KAFKA_STORAGE_ERROR;
    }
    with(|c| {
        c.groups.remove(group);
        c.offsets.remove(group);
    });
    drop(revive);
    errors::NONE
}

/// Makes a Dead group Empty again when dropped (a DeleteGroups that did not finish).
struct Revive<'a>(&'a str);

impl Drop for Revive<'_> {
    fn drop(&mut self) {
        with_if_alive(|c| {
            if let Some(g) = c.groups.get_mut(self.0) {
                if g.state == GroupState::Dead {
                    g.state = GroupState::Empty;
                }
            }
        });
    }
}

/// OffsetDelete for `group` (Kafka's `handleDeleteOffsets` for classic groups): one error per
/// asked partition, or the group's error. An unknown group: GROUP_ID_NOT_FOUND; a group with
/// members of another protocol type than "consumer": NON_EMPTY_GROUP; a consumer group with
/// members: GROUP_SUBSCRIBED_TO_TOPIC for the partitions of topics a member subscribes to
/// (every topic when the subscriptions cannot be read). The other partitions' committed
/// offsets get tombstones in the offsets partition (once the group's commits in flight are
/// applied, so none of them lands after its tombstone).
pub async fn delete_offsets(group: &str, partitions: &[(String, i32)]) -> Result<Vec<i16>, i16> {
    let _deletion = start_deletion(group).await;
    let codes = with(|c| {
        let codes: Vec<i16> = match c.groups.get(group) {
            Some(g) if g.state == GroupState::Dead => return Err(GROUP_ID_NOT_FOUND),
            Some(g) if !g.members.is_empty() => {
                if g.protocol_type.as_deref() != Some(CONSUMER_PROTOCOL_TYPE) {
                    return Err(NON_EMPTY_GROUP);
                }
                let subscribed = g.subscribed_topics();
                partitions
                    .iter()
                    .map(|(t, _)| {
                        if g.is_subscribed_to(&subscribed, t) {
                            GROUP_SUBSCRIBED_TO_TOPIC
                        } else {
                            errors::NONE
                        }
                    })
                    .collect()
            }
            Some(_) => vec![errors::NONE; partitions.len()],
            None if c.offsets.contains_key(group) => vec![errors::NONE; partitions.len()],
            None => return Err(GROUP_ID_NOT_FOUND),
        };
        Ok(codes)
    })?;
    let committed: HashSet<(String, i32)> = fetch_offsets(group, None)
        .into_iter()
        .map(|(t, p, _)| (t, p))
        .collect();
    let mut seen = HashSet::new();
    let mut tombstones: Vec<(String, i32, Option<Committed>)> = Vec::new();
    for ((t, p), code) in partitions.iter().zip(&codes) {
        let key = (t.clone(), *p);
        if *code == errors::NONE && committed.contains(&key) && seen.insert(key.clone()) {
            tombstones.push((key.0, key.1, None));
        }
    }
    if let Err(e) = append_offsets(group, tombstones).await {
        tracing::error!(group, error = %e, "could not write offset tombstones");
        return Err(errors::KAFKA_STORAGE_ERROR);
    }
    Ok(codes)
}

/// Rebuilds committed offsets from an offsets partition log (shard start-up). The log may
/// have offset gaps (compaction removed records): reads go on from the batch after each.
/// Key-less records of earlier releases are replayed too, and what they leave committed is
/// then written again as keyed records, so a cleaning (which drops key-less records) loses
/// nothing.
pub async fn load_offsets(log: Rc<PartitionLog>) -> usize {
    let mut legacy: HashSet<String> = HashSet::new();
    let (applied, complete) = replay_offsets(&log, &mut legacy).await;
    if !complete && !legacy.is_empty() {
        // Rewriting a partial state at the log end would make it the newest (an older commit
        // read before the failure would win over a newer one after it): leave the log as is.
        tracing::error!(dir = %log.dir().display(), "committed offsets not fully read; key-less offset records not rewritten as keyed ones");
        return applied;
    }
    let mut rewritten = false;
    for group in legacy {
        let entries: Vec<(String, i32, Option<Committed>)> = fetch_offsets(&group, None);
        // In batches a segment always holds (a group may have committed many partitions).
        for part in entries.chunks(LEGACY_REWRITE_ENTRIES_MAX) {
            match store_offsets(&group, part.to_vec()).await {
                Ok(()) => rewritten = true,
                Err(e) => {
                    tracing::error!(group, error = %e, "could not rewrite committed offsets as keyed records")
                }
            }
        }
    }
    if rewritten {
        // Durable before any cleaning drops the key-less originals, whatever --flush says.
        let end = log.high_watermark();
        if let Err(e) = log.sync_to(end).await {
            tracing::error!(dir = %log.dir().display(), error = %e, "could not sync the rewritten offsets");
        }
    }
    applied
}

/// Offsets rewritten per batch when key-less records of an earlier release are made keyed.
const LEGACY_REWRITE_ENTRIES_MAX: usize = 1000;

/// Applies every offset record of `log`; the groups of key-less (legacy) records go to
/// `legacy`. Returns the records applied and whether the whole log was read.
async fn replay_offsets(log: &PartitionLog, legacy: &mut HashSet<String>) -> (usize, bool) {
    let mut offset = log.log_start_offset();
    let mut applied = 0;
    while offset < log.high_watermark() {
        let chunk = match log.read(offset, 4 << 20).await {
            Ok(r) => r.records,
            Err(e) => {
                tracing::error!(dir = %log.dir().display(), error = %e, "could not read committed offsets");
                return (applied, false);
            }
        };
        let mut at = 0;
        while at < chunk.len() {
            let Ok(h) = ringbroker_protocol::batch::BatchHeader::parse(&chunk[at..]) else {
                break;
            };
            let batch = &chunk[at..at + h.total_bytes.min(chunk.len() - at)];
            for (key, value) in ringbroker_protocol::batch::record_keys_and_values(batch) {
                let record = match (key, value) {
                    (Some(key), value) => {
                        decode_offset_key(key).and_then(|(g, t, p)| match value {
                            None => Some((g, t, p, None)),
                            Some(v) => decode_offset_value(v).map(|c| (g, t, p, Some(c))),
                        })
                    }
                    (None, Some(value)) => {
                        let r = decode_offset_record(value);
                        if let Some((group, ..)) = &r {
                            legacy.insert(group.clone());
                        }
                        r
                    }
                    (None, None) => None,
                };
                if let Some((group, topic, partition, committed)) = record {
                    with(|c| c.apply_offset(&group, topic, partition, committed));
                    applied += 1;
                }
            }
            offset = h.base_offset + h.last_offset_delta as i64 + 1;
            at += h.total_bytes;
        }
        if at == 0 {
            tracing::error!(dir = %log.dir().display(), offset, "unreadable batch in the committed offsets; later ones not replayed");
            return (applied, false);
        }
    }
    (applied, true)
}

thread_local! {
    /// Cluster mode: the offsets partitions this shard coordinates the groups of (this node
    /// leads them), each with the leader epoch it loaded them at.
    static LED: RefCell<HashMap<i32, i32>> = RefCell::new(HashMap::new());
}

/// Forgets every group of offsets partition `partition` on this shard (members, rebalances,
/// committed offsets); JoinGroup and SyncGroup answers still waiting get NOT_COORDINATOR, so
/// their clients find the new coordinator.
fn drop_partition_groups(partition: i32) {
    with(|c| {
        c.groups.retain(|name, g| {
            if offsets_partition(name) != partition {
                return true;
            }
            for (_, m) in g.members.iter_mut() {
                if let Some(tx) = m.join_waiter.take() {
                    tx.send(JoinResult {
                        error: errors::NOT_COORDINATOR,
                        ..Default::default()
                    });
                }
                if let Some(tx) = m.sync_waiter.take() {
                    tx.send(SyncResult {
                        error: errors::NOT_COORDINATOR,
                        ..Default::default()
                    });
                }
            }
            false
        });
        c.offsets
            .retain(|name, _| offsets_partition(name) != partition);
    });
}

/// Cluster mode, on the shard owning offsets partition `partition`: this node now leads it at
/// `leader_epoch`, so it coordinates its groups: whatever this shard kept of them is dropped
/// and their committed offsets are loaded again from the partition's log (which, as a
/// follower's, holds what the previous leader wrote). Does nothing when already led at this
/// epoch. The load's task is returned (dropping it lets it run on).
pub fn offsets_partition_led(
    shard: &shard::Shard,
    partition: i32,
    leader_epoch: i32,
) -> Option<ringbroker_runtime::executor::JoinHandle<usize>> {
    let known = LED.with(|l| l.borrow_mut().insert(partition, leader_epoch));
    if known == Some(leader_epoch) {
        return None;
    }
    // Not coordinating until the load below is done.
    shard.shared.offsets_loaded.set(partition, -1);
    drop_partition_groups(partition);
    let log = shard.log(OFFSETS_TOPIC, partition)?;
    let shard_id = shard.id;
    let shared = shard.shared.clone();
    Some(ringbroker_runtime::executor::spawn(async move {
        let records = load_offsets(log).await;
        // Still led at this epoch (no later change started another load or dropped it).
        if LED.with(|l| l.borrow().get(&partition) == Some(&leader_epoch)) {
            shared.offsets_loaded.set(partition, leader_epoch);
        }
        tracing::info!(
            shard = shard_id,
            partition,
            leader_epoch,
            records,
            "coordinating the groups of an offsets partition"
        );
        records
    }))
}

/// Cluster mode, on the shard owning offsets partition `partition`: this node no longer leads
/// it; its groups are dropped here (their new coordinator loads them from its own replica).
pub fn offsets_partition_lost(shard: &shard::Shard, partition: i32) {
    if LED.with(|l| l.borrow_mut().remove(&partition)).is_some() {
        shard.shared.offsets_loaded.set(partition, -1);
        drop_partition_groups(partition);
        tracing::info!(
            partition,
            "no longer coordinating the groups of an offsets partition"
        );
    }
}

/// Cluster mode: after the offsets topic changed in `shard`'s view, takes up or gives up
/// each offsets partition this shard owns as its leadership changed. The load tasks are
/// returned (start-up waits for them before serving).
pub fn offsets_topic_changed(
    shard: &shard::Shard,
    topic: &crate::metadata::TopicInfo,
) -> Vec<ringbroker_runtime::executor::JoinHandle<usize>> {
    let mut loads = Vec::new();
    if topic.name != OFFSETS_TOPIC || shard.shared.cluster.is_none() {
        return loads;
    }
    for (p, replicas) in topic.replication.iter().enumerate() {
        let p = p as i32;
        let leads = topic.owner(p) == Some(shard.id)
            && replicas.leader == shard.shared.node_id
            && shard.log(OFFSETS_TOPIC, p).is_some();
        if leads {
            loads.extend(offsets_partition_led(shard, p, replicas.leader_epoch));
        } else {
            offsets_partition_lost(shard, p);
        }
    }
    loads
}

/// Committed offset of every (group, topic, partition) on this shard, for lag metrics.
pub fn all_committed() -> Vec<(String, String, i32, i64)> {
    with(|c| {
        c.offsets
            .iter()
            .flat_map(|(g, m)| {
                m.iter()
                    .map(move |((t, p), v)| (g.clone(), t.clone(), *p, v.offset))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join_request(group: &str, protocols: Vec<(String, Bytes)>) -> JoinRequest {
        JoinRequest {
            group: group.into(),
            member_id: String::new(),
            instance_id: None,
            client_id: "c".into(),
            client_host: String::new(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols,
            require_known_member_id: true,
        }
    }

    #[test]
    fn join_requests_over_a_limit_are_refused_with_their_error() {
        let range = |meta: usize| vec![("range".to_string(), Bytes::from(vec![0u8; meta]))];
        assert_eq!(join_request_error(&join_request("g", range(10))), None);
        assert_eq!(
            join_request_error(&join_request("", range(10))),
            Some(INVALID_GROUP_ID)
        );
        let at_limit = "g".repeat(GROUP_ID_BYTES_MAX);
        assert_eq!(
            join_request_error(&join_request(&at_limit, range(10))),
            None
        );
        assert_eq!(
            join_request_error(&join_request(&format!("{at_limit}g"), range(10))),
            Some(INVALID_GROUP_ID)
        );
        // Protocol type, names and metadata together.
        let fits = MEMBER_METADATA_BYTES_MAX - "consumer".len() - "range".len();
        assert_eq!(join_request_error(&join_request("g", range(fits))), None);
        assert_eq!(
            join_request_error(&join_request("g", range(fits + 1))),
            Some(errors::INVALID_REQUEST)
        );
        let many = (0..=JOIN_PROTOCOLS_MAX)
            .map(|i| (format!("p{i}"), Bytes::new()))
            .collect();
        assert_eq!(
            join_request_error(&join_request("g", many)),
            Some(errors::INVALID_REQUEST)
        );
        let mut r = join_request("g", range(1));
        r.instance_id = Some("i".repeat(GROUP_INSTANCE_ID_BYTES_MAX + 1));
        assert_eq!(join_request_error(&r), Some(errors::INVALID_REQUEST));
    }

    #[test]
    fn kept_client_ids_are_cut_at_a_character_boundary() {
        assert_eq!(truncated("abc", 2), "ab");
        assert_eq!(truncated("abc", 10), "abc");
        // 'é' is two bytes: cutting inside it keeps the character out.
        assert_eq!(truncated("aé", 2), "a");
        let long = "x".repeat(1000);
        assert_eq!(truncated(&long, MEMBER_CLIENT_ID_BYTES_MAX).len(), 255);
    }

    fn member(instance: Option<&str>, awaiting_join: bool) -> Member {
        Member {
            instance_id: instance.map(str::to_string),
            client_id: "c".into(),
            client_host: String::new(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            protocols: Vec::new(),
            assignment: Bytes::new(),
            last_seen: Instant::now(),
            joined: awaiting_join,
            join_waiter: awaiting_join.then(|| oneshot::channel().0),
            sync_waiter: None,
        }
    }

    fn group(state: GroupState, generation: i32, members: Vec<(&str, Member)>) -> Group {
        let mut g = Group::new();
        g.state = state;
        g.generation = generation;
        g.protocol_type = Some(CONSUMER_PROTOCOL_TYPE.into());
        g.members = members
            .into_iter()
            .map(|(id, m)| (id.to_string(), m))
            .collect();
        g
    }

    #[test]
    fn offset_commits_follow_kafkas_classic_group_rule_in_every_state() {
        let install = |state: GroupState, members: Vec<(&str, Member)>| {
            with(|c| {
                c.groups.insert("g".into(), group(state, 3, members));
            })
        };
        let statics = || vec![("m1", member(Some("s1"), false))];
        install(GroupState::Stable, statics());
        assert_eq!(commit_allowed("g", 3, "m1", None), errors::NONE);
        assert_eq!(commit_allowed("g", 3, "m1", Some("s1")), errors::NONE);
        assert_eq!(commit_allowed("g", -1, "", None), UNKNOWN_MEMBER_ID);
        assert_eq!(commit_allowed("g", 3, "m2", None), UNKNOWN_MEMBER_ID);
        assert_eq!(commit_allowed("g", 2, "m1", None), ILLEGAL_GENERATION);
        assert_eq!(commit_allowed("g", 3, "m2", Some("s1")), FENCED_INSTANCE_ID);
        assert_eq!(commit_allowed("g", 3, "m1", Some("s9")), UNKNOWN_MEMBER_ID);
        // The member id is checked before the generation, as in Kafka.
        assert_eq!(commit_allowed("g", -1, "m2", None), UNKNOWN_MEMBER_ID);
        install(GroupState::PreparingRebalance, statics());
        assert_eq!(commit_allowed("g", 3, "m1", None), errors::NONE);
        assert_eq!(commit_allowed("g", 2, "m1", None), ILLEGAL_GENERATION);
        install(GroupState::CompletingRebalance, statics());
        assert_eq!(commit_allowed("g", 3, "m1", None), REBALANCE_IN_PROGRESS);
        assert_eq!(commit_allowed("g", 2, "m1", None), ILLEGAL_GENERATION);
        install(GroupState::Dead, Vec::new());
        assert_eq!(
            commit_allowed("g", -1, "", None),
            errors::COORDINATOR_NOT_AVAILABLE
        );
        assert_eq!(
            commit_allowed("g", 3, "m1", None),
            errors::COORDINATOR_NOT_AVAILABLE
        );
        install(GroupState::Empty, Vec::new());
        assert_eq!(commit_allowed("g", -1, "", None), errors::NONE);
        assert_eq!(commit_allowed("g", -1, "m1", None), errors::NONE);
        assert_eq!(commit_allowed("g", 3, "m1", None), UNKNOWN_MEMBER_ID);
        // Groups this coordinator does not know; one known only by its offsets is Empty.
        assert_eq!(commit_allowed("new", -1, "", None), errors::NONE);
        assert_eq!(commit_allowed("new", 0, "m", None), ILLEGAL_GENERATION);
        with(|c| {
            c.groups.remove("g");
            c.apply_offset(
                "g",
                "t".into(),
                0,
                Some(Committed {
                    offset: 1,
                    leader_epoch: -1,
                    metadata: None,
                }),
            );
        });
        assert_eq!(commit_allowed("g", 0, "m", None), UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn the_joiner_over_group_max_size_is_the_one_kafka_refuses() {
        let g = group(
            GroupState::PreparingRebalance,
            1,
            vec![
                ("old", member(None, false)),
                ("a", member(None, true)),
                ("b", member(None, true)),
            ],
        );
        // Two joined already: a new member, and the old one rejoining last, are over 2.
        assert!(!g.accepts_joining("", 2));
        assert!(!g.accepts_joining("old", 2));
        assert!(g.accepts_joining("a", 2), "a member already waiting stays");
        assert!(g.accepts_joining("old", 3));
        let g = group(
            GroupState::Stable,
            1,
            vec![("a", member(None, false)), ("b", member(None, false))],
        );
        assert!(g.accepts_joining("a", 2));
        assert!(!g.accepts_joining("", 2));
        assert!(group(GroupState::Empty, 1, Vec::new()).accepts_joining("", 1));
    }

    #[test]
    fn subscriptions_parse_their_topics_and_refuse_lying_counts() {
        let mut b = BytesMut::new();
        b.put_i16(3); // any version: the topics prefix is shared
        b.put_i32(2);
        for t in ["a", "bc"] {
            b.put_i16(t.len() as i16);
            b.put_slice(t.as_bytes());
        }
        b.put_i32(-1); // user data and later fields are not read
        assert_eq!(
            subscription_topics(&b),
            Some(vec!["a".to_string(), "bc".to_string()])
        );
        let mut lying = BytesMut::new();
        lying.put_i16(0);
        lying.put_i32(i32::MAX);
        assert_eq!(subscription_topics(&lying), None);
        assert_eq!(subscription_topics(&b[..8]), None, "cut inside a topic");
        assert_eq!(subscription_topics(b""), None);
    }

    #[test]
    fn offset_records_round_trip() {
        let c = Committed {
            offset: 42,
            leader_epoch: 3,
            metadata: Some("m".into()),
        };
        let r = encode_offset_record("g", "t", 7, Some(&c));
        assert_eq!(
            decode_offset_record(&r),
            Some(("g".into(), "t".into(), 7, Some(c)))
        );
        let tomb = encode_offset_record("g", "t", 7, None);
        assert_eq!(
            decode_offset_record(&tomb),
            Some(("g".into(), "t".into(), 7, None))
        );
        assert_eq!(decode_offset_record(b"garbage"), None);
        assert_eq!(decode_offset_record(&r[..r.len() - 2]), None);
    }

    #[test]
    fn offset_keys_are_kafkas_and_values_round_trip() {
        let key = encode_offset_key("g", "t", 7);
        // Kafka's OffsetCommitKey v1: int16 version, string group, string topic, int32.
        assert_eq!(key, [0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 7]);
        assert_eq!(decode_offset_key(&key), Some(("g".into(), "t".into(), 7)));
        assert_eq!(decode_offset_key(&key[..key.len() - 1]), None);
        let mut group_metadata_key = key.clone();
        group_metadata_key[1] = 2;
        assert_eq!(decode_offset_key(&group_metadata_key), None);
        for metadata in [Some("m".to_string()), Some(String::new()), None] {
            let c = Committed {
                offset: 42,
                leader_epoch: 3,
                metadata,
            };
            let v = encode_offset_value(&c, 1000);
            assert_eq!(&v[..2], &[0, 3]);
            assert_eq!(decode_offset_value(&v), Some(c));
            assert_eq!(decode_offset_value(&v[..v.len() - 1]), None);
        }
    }

    /// Runs `f` on a one-shard broker (a fresh data directory holding `__consumer_offsets`).
    fn on_a_shard<F: Future<Output = ()> + 'static>(f: impl FnOnce() -> F) {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::BrokerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().to_path_buf(),
            vec![0],
        );
        let mut meta = crate::metadata::ClusterMeta {
            cluster_id: "c".into(),
            topics: Vec::new(),
        };
        let owners = meta.place(OFFSETS_PARTITIONS, 1);
        meta.topics
            .push(std::sync::Arc::new(crate::metadata::TopicInfo {
                name: OFFSETS_TOPIC.into(),
                id: uuid::Uuid::new_v4(),
                replication: vec![crate::metadata::ReplicaSet::single(0); owners.len()],
                owners,
                configs: BTreeMap::new(),
            }));
        let shared = std::sync::Arc::new(shard::Shared {
            config,
            advertised_host: "localhost".into(),
            advertised_port: 9092,
            listeners: Vec::new(),
            cluster_id: "c".into(),
            shard_count: 1,
            recovered_clean: false,
            shards_loaded: std::sync::atomic::AtomicUsize::new(0),
            offsets_loaded: Default::default(),
            connections: Default::default(),
            node_id: 0,
            cluster: None,
            tls: None,
            ktls: false,
        });
        let rt =
            ringbroker_runtime::Runtime::new(&ringbroker_runtime::RingConfig::default()).unwrap();
        shard::Shard::install(0, shared, &meta, ringbroker_storage::Recovery::Scan).unwrap();
        rt.block_on(f());
    }

    #[test]
    fn a_new_leader_of_an_offsets_partition_loads_its_groups_and_a_former_one_drops_them() {
        on_a_shard(|| async {
            let shard = shard::current();
            let at = |offset| Committed {
                offset,
                leader_epoch: -1,
                metadata: None,
            };
            let p = offsets_partition("g");
            if let Some(load) = offsets_partition_led(&shard, p, 0) {
                load.await.unwrap();
            }
            store_offsets("g", vec![("t".into(), 0, Some(at(7)))])
                .await
                .unwrap();
            let other = (0..)
                .map(|i| format!("other-{i}"))
                .find(|g| offsets_partition(g) != p)
                .unwrap();
            store_offsets(&other, vec![("t".into(), 0, Some(at(3)))])
                .await
                .unwrap();
            // Leadership lost: the partition's groups are gone here, the others stay.
            assert_eq!(shard.shared.offsets_loaded.epoch(p), Some(0));
            offsets_partition_lost(&shard, p);
            assert_eq!(shard.shared.offsets_loaded.epoch(p), None);
            assert!(fetch_offsets("g", None).is_empty());
            assert_eq!(fetch_offsets(&other, None).len(), 1);
            // Led again (a new epoch): loaded from the partition's log.
            let load = offsets_partition_led(&shard, p, 1).expect("a load");
            // Coordinating at the new epoch only once loaded.
            assert_eq!(shard.shared.offsets_loaded.epoch(p), None);
            assert!(load.await.unwrap() >= 1);
            assert_eq!(shard.shared.offsets_loaded.epoch(p), Some(1));
            let found = fetch_offsets("g", None);
            assert_eq!(found.len(), 1);
            assert_eq!(found[0].2.as_ref().map(|c| c.offset), Some(7));
            // The same epoch again: nothing to do.
            assert!(offsets_partition_led(&shard, p, 1).is_none());
        });
    }

    #[test]
    fn a_commit_in_flight_when_its_group_is_deleted_is_covered_by_a_tombstone() {
        on_a_shard(|| async {
            let at = |offset| Committed {
                offset,
                leader_epoch: -1,
                metadata: None,
            };
            // An Empty group with one committed offset.
            store_offsets("g", vec![("t".into(), 1, Some(at(10)))])
                .await
                .unwrap();
            // A commit of a partition new to the group is appending when DeleteGroups comes.
            let commit = ringbroker_runtime::spawn(async move {
                store_offsets("g", vec![("t".into(), 5, Some(at(50)))]).await
            });
            ringbroker_runtime::yield_now().await;
            let delete = ringbroker_runtime::spawn(async { delete_group("g").await });
            assert_eq!(commit.await.unwrap(), Ok(()));
            assert_eq!(delete.await.unwrap(), errors::NONE);
            assert_eq!(fetch_offsets("g", None), vec![]);
            // What a restart rebuilds from the log.
            with(|c| *c = Coordinator::default());
            let log = shard::current()
                .log(OFFSETS_TOPIC, offsets_partition("g"))
                .unwrap();
            replay_offsets(&log, &mut HashSet::new()).await;
            assert_eq!(
                fetch_offsets("g", None),
                vec![],
                "the log revives the group"
            );
        });
    }
}
