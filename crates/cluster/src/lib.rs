//! The cluster's metadata quorum: brokers, topics, partition assignments, topic configs and
//! partition leadership (leader, leader epoch, in-sync replicas) kept in a replicated log on
//! tikv's `raft` crate (raft-rs), the role KRaft's controller plays in Kafka.
//!
//! It runs on its own thread(s), off the shard cores: metadata changes are rare, their fsyncs
//! and blocking socket I/O must not stall a shard's loop. The broker talks to it through
//! [`Cluster`]: every committed change reaches the broker as a whole new [`MetadataImage`]
//! through the `publish` callback; requests ([`AdminRequest`]) go to the quorum's leader (the
//! active controller) from any broker and are answered once committed.
//!
//! Modules:
//! - [`state`]: the deterministic state machine (commands applied to a [`MetadataImage`]).
//! - [`controller`]: what the active controller decides before proposing (placement, ids,
//!   fencing and unfencing from heartbeats, preferred-leader moves).
//! - [`storage`]: raft-rs's `Storage` over durable files (entries log, hard state, snapshot).
//! - [`transport`]: framed TCP between quorum members (listener, readers, per-peer writers).
//! - `node`: the quorum thread's loop (tick, Ready handling, request routing, publishing).
//!
//! Threads: one quorum thread, one listener, one reader per accepted connection, one writer
//! per peer; none of them is a shard thread, and a dead or paused peer only fills its
//! writer's bounded queue.

pub mod auth;
pub mod controller;
mod logger;
mod node;
pub mod state;
pub mod storage;
pub mod transport;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A broker's id in the cluster (`--node-id`), Kafka's `BrokerId`.
pub type NodeId = i32;

/// How this node joins the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    /// The voters of the metadata quorum and the broker-to-broker address of each
    /// (`--cluster 1@127.0.0.1:19093,2@…`). A node not among them joins as a raft learner
    /// (added by the active controller once it said hello): it follows the metadata log and
    /// is a broker like any other, but does not vote.
    pub voters: Vec<(NodeId, SocketAddr)>,
    /// Where this node accepts broker-to-broker (quorum) connections.
    pub internal_listen: SocketAddr,
    /// The Kafka listener clients and other brokers reach this broker on (advertised).
    pub client_host: String,
    pub client_port: u16,
    /// Every advertised client listener by name (issue #16), carried in heartbeats into
    /// `BrokerInfo::listeners`; empty: only `client_host`/`client_port`.
    pub client_listeners: Vec<Endpoint>,
    /// Where the quorum's log, hard state and snapshots live (`<data-dir>/meta/raft`).
    pub dir: PathBuf,
    /// Raft tick.
    pub tick: Duration,
    /// Election timeout in ticks (raft-rs randomises within [this, 2 × this)).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// How often a broker tells the active controller it is alive.
    pub broker_heartbeat_interval: Duration,
    /// A broker not heard from for this long is fenced: it leads nothing and leaves every ISR.
    pub broker_session_timeout: Duration,
    /// Applied entries after which a snapshot replaces the log before them.
    pub snapshot_entries: u64,
    /// Replication factor of a CreateTopic that asks for -1 (Kafka's `default.replication.factor`).
    pub default_replication_factor: i16,
    /// How often the active controller moves leadership back to preferred replicas.
    pub leader_rebalance_interval: Duration,
    /// How quorum connections authenticate (issue #16); the default: neither TLS nor the
    /// password (plaintext, the voter-list fingerprint only).
    pub security: QuorumSecurity,
}

/// Authentication of quorum links ([`auth`]): TLS with client certificates, the inter-broker
/// password's challenge-response, both, or neither. Every node of a cluster must use the same.
#[derive(Debug, Clone, Default)]
pub struct QuorumSecurity {
    pub tls: Option<auth::QuorumTls>,
    pub password: Option<auth::QuorumPassword>,
}

impl QuorumSecurity {
    /// Whether connections are authenticated at all.
    pub fn authenticates(&self) -> bool {
        self.tls.is_some() || self.password.is_some()
    }
}

impl ClusterConfig {
    /// Defaults for everything but the identity and addresses.
    pub fn new(
        node_id: NodeId,
        voters: Vec<(NodeId, SocketAddr)>,
        internal_listen: SocketAddr,
        client_host: String,
        client_port: u16,
        dir: PathBuf,
    ) -> ClusterConfig {
        ClusterConfig {
            node_id,
            voters,
            internal_listen,
            client_host,
            client_port,
            client_listeners: Vec::new(),
            dir,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            broker_heartbeat_interval: Duration::from_millis(250),
            broker_session_timeout: Duration::from_millis(2000),
            snapshot_entries: 1000,
            default_replication_factor: 1,
            leader_rebalance_interval: Duration::from_secs(5),
            security: QuorumSecurity::default(),
        }
    }
}

/// The whole replicated state after some committed entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    /// Set once by the first active controller; empty until then.
    pub cluster_id: String,
    /// Index of the last raft entry applied to this image.
    pub applied_index: u64,
    pub brokers: BTreeMap<NodeId, BrokerInfo>,
    pub topics: BTreeMap<String, TopicImage>,
    /// SCRAM credentials by user name (issue #16): what AlterUserScramCredentials stored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scram_credentials: BTreeMap<String, Vec<ScramCredential>>,
    /// Access control entries (CreateAcls), in the order they were created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acls: Vec<AclBinding>,
    /// The active controller (raft leader) as this node last knew it when publishing; -1 when
    /// unknown. Not replicated state: filled in by the node that publishes the image.
    pub controller_id: NodeId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub id: NodeId,
    /// Its Kafka listener, as clients and other brokers reach it.
    pub host: String,
    pub port: u16,
    /// Every client listener of the broker as advertised, by listener name (issue #16:
    /// Metadata answers a client with the endpoints of the listener it connected to). Empty
    /// from a broker that registered before listeners were named: `host`/`port` then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Endpoint>,
    /// Not heard from within the session timeout (or never since the controller started):
    /// leads nothing and is in no ISR until it heartbeats again.
    pub fenced: bool,
    /// Chosen anew by every start of the broker's process; a new one means the broker
    /// restarted (it is then fenced and unfenced: it leads nothing it led before).
    pub incarnation: u64,
}

/// One advertised listener of a broker: its name (`PLAINTEXT`, `SASL_SSL`, ...) and address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// A user's salted SCRAM credential for one mechanism (RFC 5802: the password itself is never
/// stored, only what the server needs to check a proof).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// StoredKey and ServerKey are secrets (either lets a client be impersonated toward this
/// server or the server toward a client): never printed.
impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .field("salt_bytes", &self.salt.len())
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

/// One access control entry bound to a resource pattern (Kafka's `AclBinding`), with Kafka's
/// wire codes: `resource_type` (2 topic, 3 group, 4 cluster, 5 transactional id),
/// `pattern_type` (3 literal, 4 prefixed), `operation` (`AclOperation`), `permission_type`
/// (2 deny, 3 allow). `principal` is `User:name`, `host` an address or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: i8,
    pub resource_name: String,
    pub pattern_type: i8,
    pub principal: String,
    pub host: String,
    pub operation: i8,
    pub permission_type: i8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    pub id: Uuid,
    pub partitions: Vec<PartitionImage>,
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionImage {
    /// Assigned replicas; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// In-sync replicas (always includes the leader when there is one).
    pub isr: Vec<NodeId>,
    /// -1: no leader (every ISR member is fenced).
    pub leader: NodeId,
    /// Bumped on every leader change (KIP-320 leader epoch).
    pub leader_epoch: i32,
    /// Bumped on every change of this partition's state (ISR changes included), Kafka's
    /// partition epoch; AlterPartition names the one it starts from.
    pub partition_epoch: i32,
    /// An ongoing reassignment (KIP-455): replicas being added (in `replicas`, fetching, not
    /// yet all in the ISR). Empty when none is ongoing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adding_replicas: Vec<NodeId>,
    /// An ongoing reassignment: replicas that leave `replicas` when it completes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing_replicas: Vec<NodeId>,
    /// An ongoing reassignment's target, in its order (what `replicas` becomes when every
    /// adding replica is in the ISR). Empty when none is ongoing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_replicas: Vec<NodeId>,
}

impl PartitionImage {
    /// Whether a reassignment of this partition is ongoing.
    pub fn reassigning(&self) -> bool {
        !self.target_replicas.is_empty()
    }
}

/// One partition's reassignment asked of the controller (Kafka's AlterPartitionReassignments):
/// `target` the replicas it should end with, in order (the first is the preferred leader);
/// `None` cancels the ongoing one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReassignmentMove {
    pub topic: String,
    pub partition: i32,
    pub target: Option<Vec<NodeId>>,
}

/// A change asked of the active controller. Answered after it is committed and applied on the
/// asking node (its `publish` has been called with an image at or past the returned index).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    /// `assignments`: replicas per partition chosen by the client; `None`: the controller
    /// spreads `partitions` × `replication_factor` over unfenced brokers, leaders rotating.
    CreateTopic {
        name: String,
        partitions: i32,
        replication_factor: i16,
        assignments: Option<Vec<Vec<NodeId>>>,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    /// Grows `name` to `total` partitions.
    CreatePartitions {
        name: String,
        total: i32,
        assignments: Option<Vec<Vec<NodeId>>>,
    },
    /// Replaces the topic's configs whole.
    SetTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// A partition leader changes its ISR (Kafka's AlterPartition): accepted only when
    /// `leader_epoch` and `partition_epoch` are the current ones and `from` is the leader.
    AlterIsr {
        from: NodeId,
        topic: String,
        partition: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<NodeId>,
    },
    /// Starts, replaces or cancels partition reassignments (KIP-455). Decided as a whole: one
    /// invalid move refuses the request (the broker submits one request per partition to
    /// answer each on its own).
    AlterReassignments {
        moves: Vec<ReassignmentMove>,
    },
    /// Sets (replaces per mechanism) and deletes users' SCRAM credentials (issue #16).
    AlterScramCredentials {
        upserts: Vec<(String, ScramCredential)>,
        /// (user, mechanism)
        deletions: Vec<(String, String)>,
    },
    /// Adds access control entries (one already present is not added twice).
    CreateAcls {
        acls: Vec<AclBinding>,
    },
    /// Removes exactly these entries (the broker matched DeleteAcls filters against its image).
    DeleteAcls {
        acls: Vec<AclBinding>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AdminError {
    #[error("topic already exists")]
    TopicExists,
    #[error("unknown topic or partition")]
    UnknownTopic,
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    #[error("invalid partitions: {0}")]
    InvalidPartitions(String),
    #[error("invalid replica assignment: {0}")]
    InvalidReplicaAssignment(String),
    /// AlterIsr from a leader whose epoch is not the current one, or not the leader.
    #[error("fenced leader epoch")]
    FencedLeaderEpoch,
    /// AlterIsr naming a stale partition epoch.
    #[error("stale partition epoch")]
    InvalidUpdateVersion,
    /// AlterIsr with a member that is not an assigned, unfenced replica.
    #[error("ineligible replica: {0}")]
    IneligibleReplica(String),
    /// No active controller could be reached before the request's deadline.
    #[error("no active controller")]
    NotController,
    #[error("timed out")]
    Timeout,
    /// A cancel of a partition that has no reassignment ongoing.
    #[error("no reassignment in progress")]
    NoReassignmentInProgress,
    /// A change that would take the metadata past one of its limits
    /// ([`state::ACLS_TOTAL_MAX`], [`state::SCRAM_USERS_MAX`]).
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    Other(String),
}

/// What the broker is told when a request finished: the raft index it was applied at.
pub type AdminResult = Result<u64, AdminError>;
pub type Reply = Box<dyn FnOnce(AdminResult) + Send>;
/// Called on the cluster's thread with each new image, in order.
pub type Publish = Box<dyn Fn(Arc<MetadataImage>) + Send>;

/// Quorum facts for metrics and DescribeCluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub controller_id: NodeId,
    pub raft_term: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    /// Quorum connections refused so far (a peer that failed authentication or named another
    /// cluster, or a peer that refused this node).
    pub quorum_connections_refused: u64,
}

/// A running member of the cluster.
pub struct Cluster {
    node_id: NodeId,
    incarnation: u64,
    events: mpsc::Sender<node::Event>,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<ClusterStatus>>,
    /// The transport's count of refused quorum connections.
    refused: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// A number no earlier start of this node used (time, process id and a counter mixed).
fn new_incarnation() -> u64 {
    static STARTS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = STARTS.fetch_add(1, Ordering::SeqCst);
    (nanos ^ (u64::from(std::process::id()) << 40)).wrapping_add(n) | 1
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

/// Checks the identities in `config`; returns the voters' raft ids, sorted.
fn validate(config: &ClusterConfig) -> std::io::Result<Vec<u64>> {
    if config.node_id <= 0 {
        return Err(invalid(format!(
            "node id {} must be positive in cluster mode",
            config.node_id
        )));
    }
    if config.voters.iter().any(|(id, _)| *id <= 0) {
        return Err(invalid("voter ids must be positive".to_string()));
    }
    if config.client_host.len() > state::HOST_BYTES_MAX {
        return Err(invalid(format!(
            "advertised host is longer than {} bytes",
            state::HOST_BYTES_MAX
        )));
    }
    if !config.voters.iter().any(|(id, _)| *id == config.node_id) {
        tracing::info!(
            node = config.node_id,
            "this node is not one of the voters: it joins the metadata quorum as a learner \
             (it gets the metadata, it does not vote)"
        );
    }
    let mut voters: Vec<u64> = config.voters.iter().map(|(id, _)| *id as u64).collect();
    voters.sort_unstable();
    voters.dedup();
    if voters.len() != config.voters.len() {
        return Err(invalid("a voter id is listed twice".to_string()));
    }
    Ok(voters)
}

/// Where the quorum's readers put decoded frames: the quorum thread's channel, holding at
/// most `node::INBOUND_FRAMES_MAX` frames and `node::INBOUND_BYTES_MAX` bytes (readers wait,
/// which backs the TCP stream up; one frame alone always goes).
fn inbound_sink(
    tx: mpsc::Sender<node::Event>,
    queued: Arc<node::InboundQueued>,
    stop: Arc<AtomicBool>,
) -> transport::Inbound {
    Arc::new(move |from, frame, bytes| {
        loop {
            let frames = queued.frames.load(Ordering::SeqCst);
            let held = queued.bytes.load(Ordering::SeqCst);
            if frames == 0
                || (frames < node::INBOUND_FRAMES_MAX && held + bytes <= node::INBOUND_BYTES_MAX)
            {
                break;
            }
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        queued.frames.fetch_add(1, Ordering::SeqCst);
        queued.bytes.fetch_add(bytes, Ordering::SeqCst);
        tx.send(node::Event::Frame { from, frame, bytes }).is_ok()
    })
}

impl Cluster {
    /// Replays the local quorum state (calls `publish` with it before returning, so the broker
    /// starts from what this node last applied), then starts the quorum thread(s).
    pub fn start(config: ClusterConfig, publish: Publish) -> std::io::Result<Arc<Cluster>> {
        let voters = validate(&config)?;
        let (storage, mut image) = storage::DiskStorage::open(&config.dir, &voters)?;
        let commit = storage.hard_state().commit;
        node::apply_entries(&mut image, storage.entries_to(commit));
        image.controller_id = -1;
        tracing::info!(
            node = config.node_id,
            applied = image.applied_index,
            topics = image.topics.len(),
            "metadata replayed"
        );

        let raft_config = raft::Config {
            id: config.node_id as u64,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied: image.applied_index.max(storage.snapshot_index()),
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        };
        raft_config.validate().map_err(|e| invalid(e.to_string()))?;
        let raw = raft::RawNode::new(&raft_config, storage, &logger::raft_logger())
            .map_err(|e| std::io::Error::other(e.to_string()))?;

        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let inbound_queued = Arc::new(node::InboundQueued::default());
        let inbound = inbound_sink(tx.clone(), inbound_queued.clone(), stop.clone());
        let peers: Vec<(NodeId, SocketAddr)> = config
            .voters
            .iter()
            .copied()
            .filter(|(id, _)| *id != config.node_id)
            .collect();
        let fingerprint = transport::cluster_fingerprint(&config.voters);
        let link_security = transport::LinkSecurity {
            tls: config.security.tls.clone(),
            key: config
                .security
                .password
                .as_ref()
                .map(|p| auth::QuorumKey::derive(p, fingerprint)),
        };
        let transport = transport::Transport::start_secured(
            config.node_id,
            config.internal_listen,
            &peers,
            fingerprint,
            link_security,
            inbound,
            stop.clone(),
        )?;
        let refused = transport.refused();

        publish(Arc::new(image.clone()));

        let status = Arc::new(Mutex::new(ClusterStatus {
            node_id: config.node_id,
            controller_id: -1,
            raft_term: raw.raft.term,
            committed_index: raw.raft.raft_log.committed,
            applied_index: image.applied_index,
            quorum_connections_refused: 0,
        }));
        let incarnation = new_incarnation();
        let node_id = config.node_id;
        let node = node::Node::new(
            config,
            raw,
            image,
            publish,
            transport,
            rx,
            inbound_queued,
            stop.clone(),
            status.clone(),
            incarnation,
        );
        let thread = std::thread::Builder::new()
            .name(format!("quorum-{node_id}"))
            .spawn(move || node.run())?;
        Ok(Arc::new(Cluster {
            node_id,
            incarnation,
            events: tx,
            stop,
            status,
            refused,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Sends `request` to the active controller (forwarded when that is another node); `reply`
    /// runs on a cluster thread once it is committed and applied here, or failed.
    pub fn submit(&self, request: AdminRequest, timeout: Duration, reply: Reply) {
        if self.stop.load(Ordering::SeqCst) {
            reply(Err(AdminError::NotController));
            return;
        }
        let event = node::Event::Submit {
            request,
            deadline: Instant::now() + timeout,
            reply,
        };
        if let Err(mpsc::SendError(node::Event::Submit { reply, .. })) = self.events.send(event) {
            reply(Err(AdminError::NotController));
        }
    }

    pub fn status(&self) -> ClusterStatus {
        let mut status = match self.status.lock() {
            Ok(s) => s.clone(),
            Err(_) => ClusterStatus::default(),
        };
        status.quorum_connections_refused = self.refused.load(Ordering::SeqCst);
        status
    }

    /// This process's incarnation, as the node's heartbeats carry it.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Stops the threads (orderly shutdown).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let handle = match self.thread.lock() {
            Ok(mut t) => t.take(),
            Err(_) => None,
        };
        if let Some(h) = handle {
            // A reply or publish callback may shut the cluster down from the quorum thread.
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_checked_at_start() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let config = |node_id, voters: Vec<(NodeId, SocketAddr)>| {
            ClusterConfig::new(
                node_id,
                voters,
                a,
                "h".to_string(),
                1,
                PathBuf::from("/nonexistent"),
            )
        };
        assert_eq!(
            validate(&config(2, vec![(2, a), (1, a)])).unwrap(),
            vec![1, 2]
        );
        // A node outside the voters is a learner.
        assert_eq!(
            validate(&config(4, vec![(2, a), (1, a)])).unwrap(),
            vec![1, 2]
        );
        for bad in [
            config(0, vec![(0, a)]),
            config(1, vec![(1, a), (-3, a)]),
            config(1, vec![(1, a), (1, a)]),
        ] {
            let e = Cluster::start(bad, Box::new(|_| {})).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        }
    }
}
