//! The replicated state machine: [`Command`]s carried (as JSON) in committed raft entries and
//! applied to a [`MetadataImage`] in log order. Applying is deterministic: everything that
//! needs a choice (a topic id, replica placement, a new leader) was decided by the active
//! controller before proposing and travels in the command, so every node that applies the same
//! entries gets the same image. A command that no longer fits the image (a stale epoch, a topic
//! that appeared meanwhile) fails or is a no-op on every node alike.

use crate::{
    AclBinding, AdminError, BrokerInfo, MetadataImage, NodeId, PartitionImage, ReassignmentMove,
    ScramCredential, TopicImage,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use uuid::Uuid;

/// Largest encoded command the controller proposes (requests whose command would be larger
/// are refused): far under the log's record limit (`storage::ENTRY_BYTES_MAX`) and raft's
/// per-message batch, so every entry is written, replicated and read back alike.
pub const COMMAND_BYTES_MAX: usize = 1 << 20;
/// Longest broker host name a heartbeat may carry (DNS names are at most 253 bytes).
pub const HOST_BYTES_MAX: usize = 255;

/// Client listeners a broker may register (a bound on what a heartbeat carries).
pub const BROKER_LISTENERS_MAX: usize = 16;

/// Most ACL bindings the metadata holds (the broker's `authorizer::ACLS_TOTAL_MAX`).
pub const ACLS_TOTAL_MAX: usize = 100_000;
/// Most users with SCRAM credentials the metadata holds (the broker's
/// `credentials::USERS_MAX`).
pub const SCRAM_USERS_MAX: usize = 10_000;

/// One change of the metadata, as committed in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Proposed once by the first active controller; a no-op when the image has an id.
    InitCluster {
        cluster_id: String,
    },
    /// A heartbeat from a broker that is unknown, fenced, restarted (new incarnation) or
    /// moved (new address): it becomes (or stays) unfenced.
    RegisterBroker {
        id: NodeId,
        incarnation: u64,
        host: String,
        port: u16,
        /// Every advertised client listener (issue #16; absent from older entries).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        listeners: Vec<crate::Endpoint>,
    },
    /// The broker's session expired.
    Fence {
        id: NodeId,
    },
    CreateTopic {
        name: String,
        id: Uuid,
        assignments: Vec<Vec<NodeId>>,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        name: String,
        /// The partition count it was decided against: a repeated request is refused, not
        /// applied twice.
        current: usize,
        /// Replicas of the new partitions, appended after the existing ones.
        assignments: Vec<Vec<NodeId>>,
    },
    SetTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    AlterIsr {
        from: NodeId,
        topic: String,
        partition: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<NodeId>,
    },
    /// Leader moves decided by the controller (preferred-leader rebalance).
    ElectLeaders {
        moves: Vec<LeaderMove>,
    },
    /// Partition reassignments (KIP-455) started, replaced or cancelled, checked by the
    /// controller and again when applied (all or none).
    AlterReassignments {
        moves: Vec<ReassignmentMove>,
    },
    AlterScramCredentials {
        upserts: Vec<(String, ScramCredential)>,
        deletions: Vec<(String, String)>,
    },
    CreateAcls {
        acls: Vec<AclBinding>,
    },
    DeleteAcls {
        acls: Vec<AclBinding>,
    },
}

/// One leadership change, valid only against the epochs it was decided on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderMove {
    pub topic: String,
    pub partition: i32,
    pub leader: NodeId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(data: &[u8]) -> Result<Command, serde_json::Error> {
        serde_json::from_slice(data)
    }
}

/// Applies `command` (committed at `index`) to `image`. The result is what the request that
/// proposed it is told.
pub fn apply(image: &mut MetadataImage, index: u64, command: &Command) -> Result<(), AdminError> {
    image.applied_index = index;
    match command {
        Command::InitCluster { cluster_id } => {
            if image.cluster_id.is_empty() {
                image.cluster_id = cluster_id.clone();
            }
            Ok(())
        }
        Command::RegisterBroker {
            id,
            incarnation,
            host,
            port,
            listeners,
        } => {
            register_broker(image, *id, *incarnation, host, *port);
            if let Some(b) = image.brokers.get_mut(id) {
                b.listeners = listeners
                    .iter()
                    .filter(|e| e.host.len() <= HOST_BYTES_MAX && e.name.len() <= HOST_BYTES_MAX)
                    .take(BROKER_LISTENERS_MAX)
                    .cloned()
                    .collect();
            }
            complete_reassignments(image);
            Ok(())
        }
        Command::Fence { id } => {
            fence(image, *id);
            complete_reassignments(image);
            Ok(())
        }
        Command::CreateTopic {
            name,
            id,
            assignments,
            configs,
        } => {
            if image.topics.contains_key(name) {
                return Err(AdminError::TopicExists);
            }
            validate_assignments(image, assignments, None)?;
            let partitions = assignments
                .iter()
                .map(|replicas| new_partition(image, replicas))
                .collect();
            image.topics.insert(
                name.clone(),
                TopicImage {
                    id: *id,
                    partitions,
                    configs: configs.clone(),
                },
            );
            Ok(())
        }
        Command::DeleteTopic { name } => match image.topics.remove(name) {
            Some(_) => Ok(()),
            None => Err(AdminError::UnknownTopic),
        },
        Command::CreatePartitions {
            name,
            current,
            assignments,
        } => {
            let Some(topic) = image.topics.get(name) else {
                return Err(AdminError::UnknownTopic);
            };
            if topic.partitions.len() != *current {
                return Err(AdminError::InvalidPartitions(format!(
                    "the topic has {} partitions now, not {current}",
                    topic.partitions.len()
                )));
            }
            let width = topic.partitions.first().map(|p| p.replicas.len());
            validate_assignments(image, assignments, width)?;
            let added: Vec<PartitionImage> = assignments
                .iter()
                .map(|replicas| new_partition(image, replicas))
                .collect();
            if let Some(topic) = image.topics.get_mut(name) {
                topic.partitions.extend(added);
            }
            Ok(())
        }
        Command::SetTopicConfigs { name, configs } => match image.topics.get_mut(name) {
            Some(topic) => {
                topic.configs = configs.clone();
                Ok(())
            }
            None => Err(AdminError::UnknownTopic),
        },
        Command::AlterIsr {
            from,
            topic,
            partition,
            leader_epoch,
            partition_epoch,
            isr,
        } => {
            alter_isr(
                image,
                *from,
                topic,
                *partition,
                *leader_epoch,
                *partition_epoch,
                isr,
            )?;
            complete_reassignments(image);
            Ok(())
        }
        Command::ElectLeaders { moves } => {
            for m in moves {
                elect(image, m);
            }
            Ok(())
        }
        Command::AlterScramCredentials { upserts, deletions } => {
            if scram_users_after(image, upserts, deletions) > SCRAM_USERS_MAX {
                return Err(AdminError::LimitExceeded(format!(
                    "the credential store holds at most {SCRAM_USERS_MAX} users"
                )));
            }
            for (user, mechanism) in deletions {
                if let Some(creds) = image.scram_credentials.get_mut(user) {
                    creds.retain(|c| &c.mechanism != mechanism);
                    if creds.is_empty() {
                        image.scram_credentials.remove(user);
                    }
                }
            }
            for (user, credential) in upserts {
                let creds = image.scram_credentials.entry(user.clone()).or_default();
                creds.retain(|c| c.mechanism != credential.mechanism);
                creds.push(credential.clone());
            }
            Ok(())
        }
        Command::CreateAcls { acls } => {
            // Appended in creation order, each binding once.
            let mut present: HashSet<&AclBinding> = image.acls.iter().collect();
            let added: Vec<AclBinding> = acls
                .iter()
                .filter(|a| present.insert(*a))
                .cloned()
                .collect();
            let total = image.acls.len() + added.len();
            if total > ACLS_TOTAL_MAX {
                return Err(AdminError::LimitExceeded(format!(
                    "the cluster would hold {total} ACLs, more than {ACLS_TOTAL_MAX}"
                )));
            }
            image.acls.extend(added);
            Ok(())
        }
        Command::DeleteAcls { acls } => {
            let gone: HashSet<&AclBinding> = acls.iter().collect();
            image.acls.retain(|a| !gone.contains(a));
            Ok(())
        }
        Command::AlterReassignments { moves } => {
            // All or none: every move is checked against the image before any is applied.
            let mut changed = Vec::with_capacity(moves.len());
            for m in moves {
                let mut p = partition_of(image, &m.topic, m.partition)?.clone();
                reassign(image, &mut p, m.target.as_deref())?;
                changed.push(p);
            }
            for (m, p) in moves.iter().zip(changed) {
                if let Some(slot) = image
                    .topics
                    .get_mut(&m.topic)
                    .and_then(|t| t.partitions.get_mut(m.partition as usize))
                {
                    *slot = p;
                }
            }
            complete_reassignments(image);
            Ok(())
        }
    }
}

/// Users with SCRAM credentials once `deletions`, then `upserts`, are applied to `image`.
fn scram_users_after(
    image: &MetadataImage,
    upserts: &[(String, ScramCredential)],
    deletions: &[(String, String)],
) -> usize {
    let mut added: HashSet<&str> = HashSet::new();
    for (user, _) in upserts {
        if !image.scram_credentials.contains_key(user) {
            added.insert(user);
        }
    }
    if image.scram_credentials.len() + added.len() <= SCRAM_USERS_MAX {
        return image.scram_credentials.len() + added.len();
    }
    // Near the limit: exactly, users whose every credential is deleted (and none upserted)
    // leave.
    let upserted: HashSet<&str> = upserts.iter().map(|(u, _)| u.as_str()).collect();
    let deleted: HashSet<(&str, &str)> = deletions
        .iter()
        .map(|(u, m)| (u.as_str(), m.as_str()))
        .collect();
    let mut left = 0;
    let mut checked: HashSet<&str> = HashSet::new();
    for (user, _) in deletions {
        if upserted.contains(user.as_str()) || !checked.insert(user) {
            continue;
        }
        if let Some(creds) = image.scram_credentials.get(user) {
            if creds
                .iter()
                .all(|c| deleted.contains(&(user.as_str(), c.mechanism.as_str())))
            {
                left += 1;
            }
        }
    }
    image.scram_credentials.len() + added.len() - left
}

/// Partition `partition` of `topic`, or UnknownTopic.
pub fn partition_of<'a>(
    image: &'a MetadataImage,
    topic: &str,
    partition: i32,
) -> Result<&'a PartitionImage, AdminError> {
    image
        .topics
        .get(topic)
        .and_then(|t| {
            usize::try_from(partition)
                .ok()
                .and_then(|i| t.partitions.get(i))
        })
        .ok_or(AdminError::UnknownTopic)
}

/// Starts, replaces (`target` while one is ongoing) or cancels (`None`) the reassignment of
/// `p`, as Kafka's KIP-455: with R its replicas before any reassignment and T the target,
/// replicas = R then T − R appended, adding = T − R, removing = R − T. A target equal to R with
/// nothing ongoing changes nothing. Completion is [`complete_reassignment`]'s.
pub fn reassign(
    image: &MetadataImage,
    p: &mut PartitionImage,
    target: Option<&[NodeId]>,
) -> Result<(), AdminError> {
    if let Some(t) = target {
        validate_target(image, t)?;
    }
    if p.reassigning() {
        revert(image, p)?;
    } else if target.is_none() {
        return Err(AdminError::NoReassignmentInProgress);
    }
    let Some(t) = target else {
        return Ok(());
    };
    if t == p.replicas.as_slice() {
        return Ok(());
    }
    let original = p.replicas.clone();
    let adding: Vec<NodeId> = t
        .iter()
        .copied()
        .filter(|r| !original.contains(r))
        .collect();
    p.removing_replicas = original
        .iter()
        .copied()
        .filter(|r| !t.contains(r))
        .collect();
    p.replicas.extend(adding.iter().copied());
    p.adding_replicas = adding;
    p.target_replicas = t.to_vec();
    p.partition_epoch += 1;
    Ok(())
}

/// A reassignment target: non-empty, distinct, registered brokers.
fn validate_target(image: &MetadataImage, target: &[NodeId]) -> Result<(), AdminError> {
    if target.is_empty() {
        return Err(AdminError::InvalidReplicaAssignment(
            "the target has no replicas".to_string(),
        ));
    }
    for (i, r) in target.iter().enumerate() {
        if target[..i].contains(r) {
            return Err(AdminError::InvalidReplicaAssignment(format!(
                "the target names broker {r} twice"
            )));
        }
        if !image.brokers.contains_key(r) {
            return Err(AdminError::InvalidReplicaAssignment(format!(
                "the target names unknown broker {r}"
            )));
        }
    }
    Ok(())
}

/// The leader `p` gets when its replicas become `replicas` with ISR `isr`: the current one when
/// it stays (or there is none), else the first of `replicas` in `isr` and unfenced; `None`
/// when no such replica exists.
fn leader_within(
    image: &MetadataImage,
    p: &PartitionImage,
    replicas: &[NodeId],
    isr: &[NodeId],
) -> Option<NodeId> {
    if p.leader == -1 || replicas.contains(&p.leader) {
        return Some(p.leader);
    }
    replicas
        .iter()
        .copied()
        .find(|r| isr.contains(r) && is_unfenced(image, *r))
}

/// Replaces `p`'s replicas, ISR and leader by `replicas`, its ISR members among them and the
/// leader chosen by [`leader_within`]; the reassignment fields are cleared.
fn settle(p: &mut PartitionImage, replicas: Vec<NodeId>, isr: Vec<NodeId>, leader: NodeId) {
    if leader != p.leader {
        p.leader = leader;
        p.leader_epoch += 1;
    }
    p.replicas = replicas;
    p.isr = isr;
    p.adding_replicas.clear();
    p.removing_replicas.clear();
    p.target_replicas.clear();
    p.partition_epoch += 1;
}

/// Cancels `p`'s ongoing reassignment: back to its replicas before it (adding ones dropped,
/// also from the ISR). Refused when none of those is in the ISR (nobody could lead it
/// without losing acknowledged records).
fn revert(image: &MetadataImage, p: &mut PartitionImage) -> Result<(), AdminError> {
    let original: Vec<NodeId> = p
        .replicas
        .iter()
        .copied()
        .filter(|r| !p.adding_replicas.contains(r))
        .collect();
    let isr: Vec<NodeId> = p
        .isr
        .iter()
        .copied()
        .filter(|r| original.contains(r))
        .collect();
    if isr.is_empty() {
        return Err(AdminError::InvalidReplicaAssignment(
            "none of the replicas before the reassignment is in sync".to_string(),
        ));
    }
    let leader = leader_within(image, p, &original, &isr).unwrap_or(-1);
    settle(p, original, isr, leader);
    Ok(())
}

/// Completes `p`'s reassignment when every adding replica is in the ISR and the target has a
/// replica that can lead (in sync, unfenced): replicas = target (its order), ISR ∩ target,
/// a new leader (epoch + 1) from the target when the current one leaves.
pub fn complete_reassignment(image: &MetadataImage, p: &mut PartitionImage) -> bool {
    if !p.reassigning() || !p.adding_replicas.iter().all(|r| p.isr.contains(r)) {
        return false;
    }
    let target = p.target_replicas.clone();
    let isr: Vec<NodeId> = p
        .isr
        .iter()
        .copied()
        .filter(|r| target.contains(r))
        .collect();
    if isr.is_empty() {
        return false;
    }
    let Some(leader) = leader_within(image, p, &target, &isr) else {
        return false;
    };
    settle(p, target, isr, leader);
    true
}

/// [`complete_reassignment`] on every partition with one ongoing.
fn complete_reassignments(image: &mut MetadataImage) {
    let mut done = Vec::new();
    for (name, topic) in &image.topics {
        for (i, p) in topic.partitions.iter().enumerate() {
            if p.reassigning() {
                let mut p = p.clone();
                if complete_reassignment(image, &mut p) {
                    done.push((name.clone(), i, p));
                }
            }
        }
    }
    for (name, i, p) in done {
        if let Some(slot) = image
            .topics
            .get_mut(&name)
            .and_then(|t| t.partitions.get_mut(i))
        {
            *slot = p;
        }
    }
}

fn is_unfenced(image: &MetadataImage, id: NodeId) -> bool {
    image.brokers.get(&id).is_some_and(|b| !b.fenced)
}

/// A new partition: ISR = its unfenced replicas, leader = the first of them.
fn new_partition(image: &MetadataImage, replicas: &[NodeId]) -> PartitionImage {
    let isr: Vec<NodeId> = replicas
        .iter()
        .copied()
        .filter(|&r| is_unfenced(image, r))
        .collect();
    PartitionImage {
        replicas: replicas.to_vec(),
        leader: isr.first().copied().unwrap_or(-1),
        isr,
        leader_epoch: 0,
        partition_epoch: 0,
        adding_replicas: Vec::new(),
        removing_replicas: Vec::new(),
        target_replicas: Vec::new(),
    }
}

/// Explicit or decided replica lists: non-empty, distinct, known brokers, one length
/// (`width` when the topic already has partitions).
pub fn validate_assignments(
    image: &MetadataImage,
    assignments: &[Vec<NodeId>],
    width: Option<usize>,
) -> Result<(), AdminError> {
    let Some(first) = assignments.first() else {
        return Err(AdminError::InvalidReplicaAssignment(
            "no partitions".to_string(),
        ));
    };
    let width = width.unwrap_or(first.len());
    for (p, replicas) in assignments.iter().enumerate() {
        if replicas.is_empty() {
            return Err(AdminError::InvalidReplicaAssignment(format!(
                "partition {p} has no replicas"
            )));
        }
        if replicas.len() != width {
            return Err(AdminError::InvalidReplicaAssignment(format!(
                "partition {p} has {} replicas, expected {width}",
                replicas.len()
            )));
        }
        for (i, r) in replicas.iter().enumerate() {
            if replicas[..i].contains(r) {
                return Err(AdminError::InvalidReplicaAssignment(format!(
                    "partition {p} names broker {r} twice"
                )));
            }
            if !image.brokers.contains_key(r) {
                return Err(AdminError::InvalidReplicaAssignment(format!(
                    "partition {p} names unknown broker {r}"
                )));
            }
        }
    }
    Ok(())
}

/// Replica lists for `count` new partitions of `replication_factor` over the unfenced brokers
/// (sorted by id): round-robin from a start that moves by one per partition, so first replicas
/// (the preferred leaders) spread evenly. `first_partition` numbers the first new partition in
/// the cluster-wide sequence the rotation follows.
pub fn place(
    image: &MetadataImage,
    count: i32,
    replication_factor: i16,
    first_partition: usize,
) -> Result<Vec<Vec<NodeId>>, AdminError> {
    if count <= 0 {
        return Err(AdminError::InvalidPartitions(format!(
            "partition count {count} must be positive"
        )));
    }
    let brokers: Vec<NodeId> = image
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .map(|b| b.id)
        .collect();
    if replication_factor <= 0 {
        return Err(AdminError::InvalidReplicationFactor(format!(
            "replication factor {replication_factor} must be positive"
        )));
    }
    let rf = replication_factor as usize;
    if rf > brokers.len() {
        return Err(AdminError::InvalidReplicationFactor(format!(
            "replication factor {rf} is larger than the {} available brokers",
            brokers.len()
        )));
    }
    let n = brokers.len();
    Ok((0..count as usize)
        .map(|p| {
            let start = (first_partition + p) % n;
            (0..rf).map(|r| brokers[(start + r) % n]).collect()
        })
        .collect())
}

/// Partitions in the whole image, the rotation base of [`place`].
pub fn partition_count(image: &MetadataImage) -> usize {
    image.topics.values().map(|t| t.partitions.len()).sum()
}

fn register_broker(image: &mut MetadataImage, id: NodeId, incarnation: u64, host: &str, port: u16) {
    match image.brokers.get_mut(&id) {
        Some(b) => {
            let restarted = b.incarnation != incarnation;
            b.host = host.to_string();
            b.port = port;
            b.incarnation = incarnation;
            if restarted && !b.fenced {
                fence(image, id);
            }
        }
        None => {
            image.brokers.insert(
                id,
                BrokerInfo {
                    id,
                    host: host.to_string(),
                    port,
                    listeners: Vec::new(),
                    fenced: true,
                    incarnation,
                },
            );
        }
    }
    unfence(image, id);
}

/// The broker leaves every ISR; partitions it led get the first unfenced ISR member (in
/// replica order) as leader, or leader -1 with the ISR kept when there is none.
pub fn fence(image: &mut MetadataImage, id: NodeId) {
    let Some(b) = image.brokers.get_mut(&id) else {
        return;
    };
    b.fenced = true;
    let unfenced: Vec<NodeId> = image
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .map(|b| b.id)
        .collect();
    for topic in image.topics.values_mut() {
        for p in &mut topic.partitions {
            if p.leader == id {
                let next = p
                    .replicas
                    .iter()
                    .chain(p.isr.iter())
                    .copied()
                    .find(|r| *r != id && p.isr.contains(r) && unfenced.contains(r));
                match next {
                    Some(next) => {
                        p.leader = next;
                        p.isr.retain(|r| *r != id);
                    }
                    None => p.leader = -1,
                }
                p.leader_epoch += 1;
                p.partition_epoch += 1;
            } else if p.leader != -1 && p.isr.contains(&id) {
                p.isr.retain(|r| *r != id);
                p.partition_epoch += 1;
            }
        }
    }
}

/// The broker is unfenced; leaderless partitions whose ISR holds it get it as leader. A
/// leaderless partition with an empty ISR never had a leader (it was created while all its
/// replicas were fenced: nothing was written to it), so any of its replicas may lead it.
fn unfence(image: &mut MetadataImage, id: NodeId) {
    let Some(b) = image.brokers.get_mut(&id) else {
        return;
    };
    b.fenced = false;
    for topic in image.topics.values_mut() {
        for p in &mut topic.partitions {
            if p.leader != -1 {
                continue;
            }
            if p.isr.is_empty() && p.replicas.contains(&id) {
                p.isr = vec![id];
            }
            if p.isr.contains(&id) {
                p.leader = id;
                p.leader_epoch += 1;
                p.partition_epoch += 1;
            }
        }
    }
}

fn alter_isr(
    image: &mut MetadataImage,
    from: NodeId,
    topic: &str,
    partition: i32,
    leader_epoch: i32,
    partition_epoch: i32,
    isr: &[NodeId],
) -> Result<(), AdminError> {
    let unfenced: Vec<NodeId> = image
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .map(|b| b.id)
        .collect();
    let p = image
        .topics
        .get_mut(topic)
        .and_then(|t| {
            usize::try_from(partition)
                .ok()
                .and_then(|i| t.partitions.get_mut(i))
        })
        .ok_or(AdminError::UnknownTopic)?;
    if p.leader != from || p.leader_epoch != leader_epoch {
        return Err(AdminError::FencedLeaderEpoch);
    }
    if p.partition_epoch != partition_epoch {
        return Err(AdminError::InvalidUpdateVersion);
    }
    if !isr.contains(&from) {
        return Err(AdminError::IneligibleReplica(format!(
            "the ISR must hold the leader {from}"
        )));
    }
    for (i, r) in isr.iter().enumerate() {
        if isr[..i].contains(r) {
            return Err(AdminError::IneligibleReplica(format!("{r} named twice")));
        }
        if !p.replicas.contains(r) {
            return Err(AdminError::IneligibleReplica(format!(
                "{r} is not an assigned replica"
            )));
        }
        if !unfenced.contains(r) {
            return Err(AdminError::IneligibleReplica(format!("{r} is fenced")));
        }
    }
    p.isr = isr.to_vec();
    p.partition_epoch += 1;
    Ok(())
}

fn elect(image: &mut MetadataImage, m: &LeaderMove) {
    let unfenced = is_unfenced(image, m.leader);
    let Some(p) = image.topics.get_mut(&m.topic).and_then(|t| {
        usize::try_from(m.partition)
            .ok()
            .and_then(|i| t.partitions.get_mut(i))
    }) else {
        return;
    };
    if p.leader_epoch != m.leader_epoch
        || p.partition_epoch != m.partition_epoch
        || !p.isr.contains(&m.leader)
        || !unfenced
        || p.leader == m.leader
    {
        return;
    }
    p.leader = m.leader;
    p.leader_epoch += 1;
    p.partition_epoch += 1;
}

/// The moves that give partitions back to their preferred replica (first of `replicas`) where
/// it is unfenced, in the ISR and not the leader.
pub fn preferred_leader_moves(image: &MetadataImage) -> Vec<LeaderMove> {
    let mut moves = Vec::new();
    for (name, topic) in &image.topics {
        for (i, p) in topic.partitions.iter().enumerate() {
            let Some(&preferred) = p.replicas.first() else {
                continue;
            };
            if p.leader != preferred && p.isr.contains(&preferred) && is_unfenced(image, preferred)
            {
                moves.push(LeaderMove {
                    topic: name.clone(),
                    partition: i as i32,
                    leader: preferred,
                    leader_epoch: p.leader_epoch,
                    partition_epoch: p.partition_epoch,
                });
            }
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(image: &mut MetadataImage, index: &mut u64, id: NodeId, incarnation: u64) {
        *index += 1;
        let cmd = Command::RegisterBroker {
            id,
            incarnation,
            host: "127.0.0.1".to_string(),
            port: 9000 + id as u16,
            listeners: Vec::new(),
        };
        apply(image, *index, &cmd).expect("register");
    }

    /// Three unfenced brokers and topic "t" with one partition on replicas `replicas`.
    fn cluster_with(replicas: Vec<NodeId>) -> (MetadataImage, u64) {
        let mut image = MetadataImage::default();
        let mut index = 0;
        for id in 1..=3 {
            register(&mut image, &mut index, id, 100 + id as u64);
        }
        index += 1;
        let cmd = Command::CreateTopic {
            name: "t".to_string(),
            id: Uuid::nil(),
            assignments: vec![replicas],
            configs: BTreeMap::new(),
        };
        apply(&mut image, index, &cmd).expect("create");
        (image, index)
    }

    fn part(image: &MetadataImage) -> &PartitionImage {
        &image.topics["t"].partitions[0]
    }

    #[test]
    fn fence_elects_first_unfenced_isr_member() {
        let (mut image, index) = cluster_with(vec![1, 2, 3]);
        assert_eq!(part(&image).leader, 1);
        assert_eq!(part(&image).isr, vec![1, 2, 3]);
        apply(&mut image, index + 1, &Command::Fence { id: 1 }).unwrap();
        let p = part(&image);
        assert_eq!(p.leader, 2);
        assert_eq!(p.isr, vec![2, 3]);
        assert_eq!(p.leader_epoch, 1);
        assert_eq!(p.partition_epoch, 1);
        assert!(image.brokers[&1].fenced);
        // A fenced follower just leaves the ISR.
        apply(&mut image, index + 2, &Command::Fence { id: 3 }).unwrap();
        let p = part(&image);
        assert_eq!((p.leader, p.isr.clone()), (2, vec![2]));
        assert_eq!((p.leader_epoch, p.partition_epoch), (1, 2));
    }

    #[test]
    fn fence_of_last_isr_member_leaves_no_leader_and_unfence_recovers() {
        let (mut image, mut index) = cluster_with(vec![1, 2]);
        index += 1;
        apply(&mut image, index, &Command::Fence { id: 2 }).unwrap();
        index += 1;
        apply(&mut image, index, &Command::Fence { id: 1 }).unwrap();
        let p = part(&image);
        assert_eq!(p.leader, -1);
        assert_eq!(p.isr, vec![1], "the ISR is kept when nobody can lead");
        assert_eq!(p.leader_epoch, 1);
        // Broker 2 comes back: not in the ISR, so it does not lead.
        register(&mut image, &mut index, 2, 102);
        assert_eq!(part(&image).leader, -1);
        // Broker 1 comes back (same incarnation): it leads again.
        register(&mut image, &mut index, 1, 101);
        let p = part(&image);
        assert_eq!(p.leader, 1);
        assert_eq!(p.leader_epoch, 2);
        assert!(!image.brokers[&1].fenced);
    }

    #[test]
    fn a_partition_created_while_all_its_replicas_are_fenced_gets_a_leader_on_unfence() {
        let (mut image, mut index) = cluster_with(vec![3]);
        for id in [1, 2] {
            index += 1;
            apply(&mut image, index, &Command::Fence { id }).unwrap();
        }
        index += 1;
        let cmd = Command::CreateTopic {
            name: "u".to_string(),
            id: Uuid::nil(),
            assignments: vec![vec![1, 2]],
            configs: BTreeMap::new(),
        };
        apply(&mut image, index, &cmd).unwrap();
        let p = &image.topics["u"].partitions[0];
        assert_eq!((p.leader, p.isr.clone()), (-1, vec![]));
        // A broker that is no replica of it changes nothing.
        register(&mut image, &mut index, 3, 555);
        assert_eq!(image.topics["u"].partitions[0].leader, -1);
        register(&mut image, &mut index, 2, 102);
        let p = &image.topics["u"].partitions[0];
        assert_eq!((p.leader, p.isr.clone()), (2, vec![2]));
        assert_eq!((p.leader_epoch, p.partition_epoch), (1, 1));
        // The other replica coming back does not take it over.
        register(&mut image, &mut index, 1, 101);
        let p = &image.topics["u"].partitions[0];
        assert_eq!((p.leader, p.isr.clone()), (2, vec![2]));
    }

    #[test]
    fn new_incarnation_is_fence_then_unfence() {
        let (mut image, mut index) = cluster_with(vec![1, 2, 3]);
        // Same incarnation: nothing changes.
        register(&mut image, &mut index, 1, 101);
        assert_eq!(part(&image).leader_epoch, 0);
        // Restarted broker 1: leadership moves, it leaves the ISR, it is unfenced.
        register(&mut image, &mut index, 1, 999);
        let p = part(&image);
        assert_eq!(p.leader, 2);
        assert_eq!(p.isr, vec![2, 3]);
        assert_eq!(p.leader_epoch, 1);
        assert!(!image.brokers[&1].fenced);
        assert_eq!(image.brokers[&1].incarnation, 999);
        // Restarted follower 3: leaves the ISR.
        register(&mut image, &mut index, 3, 777);
        assert_eq!(part(&image).isr, vec![2]);
    }

    #[test]
    fn alter_isr_checks_leader_and_epochs() {
        let (mut image, mut index) = cluster_with(vec![1, 2, 3]);
        let alter = |from, le, pe, isr: Vec<NodeId>| Command::AlterIsr {
            from,
            topic: "t".to_string(),
            partition: 0,
            leader_epoch: le,
            partition_epoch: pe,
            isr,
        };
        index += 1;
        assert_eq!(
            apply(&mut image, index, &alter(2, 0, 0, vec![1, 2])),
            Err(AdminError::FencedLeaderEpoch),
            "not the leader"
        );
        assert_eq!(
            apply(&mut image, index, &alter(1, 5, 0, vec![1, 2])),
            Err(AdminError::FencedLeaderEpoch),
            "wrong leader epoch"
        );
        assert_eq!(
            apply(&mut image, index, &alter(1, 0, 3, vec![1, 2])),
            Err(AdminError::InvalidUpdateVersion)
        );
        assert!(matches!(
            apply(&mut image, index, &alter(1, 0, 0, vec![2, 3])),
            Err(AdminError::IneligibleReplica(_))
        ));
        assert!(matches!(
            apply(&mut image, index, &alter(1, 0, 0, vec![1, 4])),
            Err(AdminError::IneligibleReplica(_))
        ));
        let unknown = Command::AlterIsr {
            from: 1,
            topic: "nope".to_string(),
            partition: 0,
            leader_epoch: 0,
            partition_epoch: 0,
            isr: vec![1],
        };
        assert_eq!(
            apply(&mut image, index, &unknown),
            Err(AdminError::UnknownTopic)
        );
        assert_eq!(
            part(&image).isr,
            vec![1, 2, 3],
            "failed changes change nothing"
        );
        apply(&mut image, index, &alter(1, 0, 0, vec![1, 2])).unwrap();
        assert_eq!(part(&image).isr, vec![1, 2]);
        assert_eq!(part(&image).partition_epoch, 1);
        // A fenced member cannot join.
        index += 1;
        apply(&mut image, index, &Command::Fence { id: 3 }).unwrap();
        assert!(matches!(
            apply(&mut image, index, &alter(1, 0, 1, vec![1, 2, 3])),
            Err(AdminError::IneligibleReplica(_))
        ));
    }

    #[test]
    fn elect_leaders_applies_only_at_the_decided_epochs() {
        let (mut image, mut index) = cluster_with(vec![1, 2, 3]);
        index += 1;
        apply(&mut image, index, &Command::Fence { id: 1 }).unwrap();
        assert!(preferred_leader_moves(&image).is_empty(), "1 is fenced");
        register(&mut image, &mut index, 1, 101);
        assert!(
            preferred_leader_moves(&image).is_empty(),
            "1 is not in the ISR"
        );
        index += 1;
        let add = Command::AlterIsr {
            from: 2,
            topic: "t".to_string(),
            partition: 0,
            leader_epoch: 1,
            partition_epoch: 1,
            isr: vec![2, 3, 1],
        };
        apply(&mut image, index, &add).unwrap();
        let moves = preferred_leader_moves(&image);
        assert_eq!(moves.len(), 1);
        let stale = Command::ElectLeaders {
            moves: vec![LeaderMove {
                partition_epoch: 0,
                ..moves[0].clone()
            }],
        };
        index += 1;
        apply(&mut image, index, &stale).unwrap();
        assert_eq!(part(&image).leader, 2, "a stale decision is a no-op");
        apply(&mut image, index, &Command::ElectLeaders { moves }).unwrap();
        let p = part(&image);
        assert_eq!((p.leader, p.leader_epoch, p.partition_epoch), (1, 2, 3));
        assert!(preferred_leader_moves(&image).is_empty());
    }

    #[test]
    fn placement_spreads_leaders_and_checks_replication_factor() {
        let (image, _) = cluster_with(vec![1]);
        let base = partition_count(&image);
        let a = place(&image, 6, 2, base).unwrap();
        let mut leaders = BTreeMap::new();
        for replicas in &a {
            assert_eq!(replicas.len(), 2);
            assert_ne!(replicas[0], replicas[1]);
            *leaders.entry(replicas[0]).or_insert(0) += 1;
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
        assert_eq!(
            a[0],
            vec![2, 3],
            "rotation continues after the existing partition"
        );
        assert!(matches!(
            place(&image, 1, 4, 0),
            Err(AdminError::InvalidReplicationFactor(_))
        ));
        assert!(matches!(
            place(&image, 1, 0, 0),
            Err(AdminError::InvalidReplicationFactor(_))
        ));
        assert!(matches!(
            place(&image, 0, 1, 0),
            Err(AdminError::InvalidPartitions(_))
        ));
        // Fenced brokers get no new replicas.
        let mut fenced = image.clone();
        fence(&mut fenced, 2);
        let b = place(&fenced, 4, 2, 0).unwrap();
        assert!(b.iter().flatten().all(|r| *r != 2));
        assert!(matches!(
            place(&fenced, 1, 3, 0),
            Err(AdminError::InvalidReplicationFactor(_))
        ));
    }

    #[test]
    fn explicit_assignments_are_validated() {
        let (image, _) = cluster_with(vec![1]);
        assert!(validate_assignments(&image, &[vec![1, 2], vec![2, 3]], None).is_ok());
        for bad in [
            vec![vec![1, 1]],
            vec![vec![1, 9]],
            vec![vec![1, 2], vec![3]],
            vec![vec![]],
            vec![],
        ] {
            assert!(
                matches!(
                    validate_assignments(&image, &bad, None),
                    Err(AdminError::InvalidReplicaAssignment(_))
                ),
                "{bad:?}"
            );
        }
        assert!(validate_assignments(&image, &[vec![1, 2]], Some(1)).is_err());
    }

    #[test]
    fn create_partitions_and_topic_errors() {
        let (mut image, index) = cluster_with(vec![1, 2]);
        let dup = Command::CreateTopic {
            name: "t".to_string(),
            id: Uuid::nil(),
            assignments: vec![vec![1]],
            configs: BTreeMap::new(),
        };
        assert_eq!(
            apply(&mut image, index + 1, &dup),
            Err(AdminError::TopicExists)
        );
        let grow = Command::CreatePartitions {
            name: "t".to_string(),
            current: 1,
            assignments: vec![vec![2, 3], vec![3, 1]],
        };
        apply(&mut image, index + 2, &grow).unwrap();
        let t = &image.topics["t"];
        assert_eq!(t.partitions.len(), 3);
        assert_eq!(t.partitions[2].leader, 3);
        assert!(
            matches!(
                apply(&mut image, index + 3, &grow),
                Err(AdminError::InvalidPartitions(_))
            ),
            "a repeated CreatePartitions is not applied twice"
        );
        assert_eq!(image.topics["t"].partitions.len(), 3);
        let narrow = Command::CreatePartitions {
            name: "t".to_string(),
            current: 3,
            assignments: vec![vec![2]],
        };
        assert!(apply(&mut image, index + 3, &narrow).is_err());
        apply(
            &mut image,
            index + 4,
            &Command::DeleteTopic {
                name: "t".to_string(),
            },
        )
        .unwrap();
        assert!(image.topics.is_empty());
        assert_eq!(image.applied_index, index + 4);
    }

    fn reassign_cmd(target: Option<Vec<NodeId>>) -> Command {
        Command::AlterReassignments {
            moves: vec![ReassignmentMove {
                topic: "t".to_string(),
                partition: 0,
                target,
            }],
        }
    }

    fn isr_cmd(image: &MetadataImage, isr: Vec<NodeId>) -> Command {
        let p = part(image);
        Command::AlterIsr {
            from: p.leader,
            topic: "t".to_string(),
            partition: 0,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr,
        }
    }

    fn four_brokers(replicas: Vec<NodeId>) -> (MetadataImage, u64) {
        let (mut image, mut index) = cluster_with(replicas);
        register(&mut image, &mut index, 4, 104);
        (image, index)
    }

    #[test]
    fn reassignment_adds_then_completes_when_the_new_replicas_are_in_sync() {
        let (mut image, mut index) = four_brokers(vec![1, 2]);
        index += 1;
        apply(&mut image, index, &reassign_cmd(Some(vec![3, 2]))).unwrap();
        let p = part(&image);
        assert_eq!(p.replicas, vec![1, 2, 3], "R then the new ones");
        assert_eq!(p.adding_replicas, vec![3]);
        assert_eq!(p.removing_replicas, vec![1]);
        assert_eq!(p.isr, vec![1, 2], "new replicas are not in sync yet");
        assert_eq!((p.leader, p.leader_epoch, p.partition_epoch), (1, 0, 1));
        // The leader adds 3 to the ISR once it caught up: the move completes.
        index += 1;
        let cmd = isr_cmd(&image, vec![1, 2, 3]);
        apply(&mut image, index, &cmd).unwrap();
        let p = part(&image);
        assert_eq!(p.replicas, vec![3, 2], "the target, in its order");
        assert_eq!(p.isr, vec![2, 3]);
        assert!(!p.reassigning());
        assert!(p.adding_replicas.is_empty() && p.removing_replicas.is_empty());
        assert_eq!(
            p.leader, 3,
            "the old leader left: first ISR member of the target"
        );
        assert_eq!((p.leader_epoch, p.partition_epoch), (1, 3));
    }

    #[test]
    fn reassignment_keeps_a_leader_that_stays_and_shrinks_at_once() {
        let (mut image, mut index) = four_brokers(vec![1, 2, 3]);
        index += 1;
        // Only removals: nothing to wait for.
        apply(&mut image, index, &reassign_cmd(Some(vec![2, 1]))).unwrap();
        let p = part(&image);
        assert_eq!(
            (p.replicas.clone(), p.isr.clone()),
            (vec![2, 1], vec![1, 2])
        );
        assert_eq!((p.leader, p.leader_epoch), (1, 0), "leader 1 stays");
        assert!(!p.reassigning());
        // A target equal to the replicas is a no-op.
        let before = part(&image).clone();
        index += 1;
        apply(&mut image, index, &reassign_cmd(Some(vec![2, 1]))).unwrap();
        assert_eq!(part(&image), &before);
    }

    #[test]
    fn reassignment_cancel_reverts_and_cancel_of_nothing_is_refused() {
        let (mut image, mut index) = four_brokers(vec![1, 2]);
        index += 1;
        assert_eq!(
            apply(&mut image, index, &reassign_cmd(None)),
            Err(AdminError::NoReassignmentInProgress)
        );
        apply(&mut image, index, &reassign_cmd(Some(vec![3, 4]))).unwrap();
        // 3 catches up, 4 does not: still ongoing.
        index += 1;
        let cmd = isr_cmd(&image, vec![1, 2, 3]);
        apply(&mut image, index, &cmd).unwrap();
        let p = part(&image);
        assert!(p.reassigning());
        assert_eq!(p.replicas, vec![1, 2, 3, 4]);
        // Replaced by another target: computed from the replicas before the first one.
        index += 1;
        apply(&mut image, index, &reassign_cmd(Some(vec![2, 4]))).unwrap();
        let p = part(&image);
        assert_eq!(p.replicas, vec![1, 2, 4]);
        assert_eq!(
            (p.adding_replicas.clone(), p.removing_replicas.clone()),
            (vec![4], vec![1])
        );
        assert_eq!(p.isr, vec![1, 2], "3 left the ISR with the first target");
        index += 1;
        apply(&mut image, index, &reassign_cmd(None)).unwrap();
        let p = part(&image);
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.leader),
            (vec![1, 2], vec![1, 2], 1)
        );
        assert!(!p.reassigning());
        assert_eq!(
            apply(&mut image, index + 1, &reassign_cmd(None)),
            Err(AdminError::NoReassignmentInProgress)
        );
    }

    #[test]
    fn reassignment_targets_are_checked_and_all_or_none() {
        let (mut image, index) = four_brokers(vec![1, 2]);
        for bad in [vec![], vec![3, 3], vec![3, 9]] {
            assert!(
                matches!(
                    apply(&mut image, index + 1, &reassign_cmd(Some(bad.clone()))),
                    Err(AdminError::InvalidReplicaAssignment(_))
                ),
                "{bad:?}"
            );
        }
        let two = Command::AlterReassignments {
            moves: vec![
                ReassignmentMove {
                    topic: "t".to_string(),
                    partition: 0,
                    target: Some(vec![3]),
                },
                ReassignmentMove {
                    topic: "t".to_string(),
                    partition: 7,
                    target: Some(vec![3]),
                },
            ],
        };
        assert_eq!(
            apply(&mut image, index + 1, &two),
            Err(AdminError::UnknownTopic)
        );
        assert!(!part(&image).reassigning(), "nothing applied");
    }

    #[test]
    fn reassignment_waits_for_a_target_leader_and_fencing_can_complete_it() {
        let (mut image, mut index) = four_brokers(vec![1]);
        index += 1;
        apply(&mut image, index, &reassign_cmd(Some(vec![2]))).unwrap();
        index += 1;
        let cmd = isr_cmd(&image, vec![1, 2]);
        apply(&mut image, index, &cmd).unwrap();
        let p = part(&image);
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.leader),
            (vec![2], vec![2], 2)
        );
        // Old images (no reassignment fields) still load.
        let json = r#"{"replicas":[1],"isr":[1],"leader":1,"leader_epoch":0,"partition_epoch":0}"#;
        let old: PartitionImage = serde_json::from_str(json).unwrap();
        assert!(!old.reassigning());
        // A cancel that would leave no in-sync original replica is refused.
        let (mut image, mut index) = four_brokers(vec![1]);
        index += 1;
        apply(&mut image, index, &reassign_cmd(Some(vec![2, 3]))).unwrap();
        index += 1;
        let cmd = isr_cmd(&image, vec![1, 2]);
        apply(&mut image, index, &cmd).unwrap();
        assert!(part(&image).reassigning(), "3 is not in sync yet");
        index += 1;
        apply(&mut image, index, &Command::Fence { id: 1 }).unwrap();
        let p = part(&image);
        assert_eq!((p.leader, p.isr.clone()), (2, vec![2]));
        assert!(matches!(
            apply(&mut image, index + 1, &reassign_cmd(None)),
            Err(AdminError::InvalidReplicaAssignment(_))
        ));
    }

    #[test]
    fn command_round_trips_through_json() {
        let cmd = Command::ElectLeaders {
            moves: vec![LeaderMove {
                topic: "t".to_string(),
                partition: 3,
                leader: 2,
                leader_epoch: 4,
                partition_epoch: 5,
            }],
        };
        assert_eq!(Command::decode(&cmd.encode()).unwrap(), cmd);
        assert!(Command::decode(b"{not json").is_err());
    }

    fn acl(name: &str) -> AclBinding {
        AclBinding {
            resource_type: 2,
            resource_name: name.to_string(),
            pattern_type: 3,
            principal: "User:u".to_string(),
            host: "*".to_string(),
            operation: 4,
            permission_type: 3,
        }
    }

    #[test]
    fn acls_are_kept_once_in_creation_order() {
        let mut image = MetadataImage::default();
        let create = |names: &[&str]| Command::CreateAcls {
            acls: names.iter().map(|n| acl(n)).collect(),
        };
        apply(&mut image, 1, &create(&["c", "a", "c"])).unwrap();
        apply(&mut image, 2, &create(&["b", "a", "d"])).unwrap();
        let names = |i: &MetadataImage| -> Vec<String> {
            i.acls.iter().map(|a| a.resource_name.clone()).collect()
        };
        assert_eq!(names(&image), ["c", "a", "b", "d"]);
        let delete = Command::DeleteAcls {
            acls: vec![acl("a"), acl("x"), acl("d")],
        };
        apply(&mut image, 3, &delete).unwrap();
        assert_eq!(names(&image), ["c", "b"]);
    }

    #[test]
    fn acls_beyond_the_total_are_refused_on_apply() {
        let mut image = MetadataImage {
            acls: (0..ACLS_TOTAL_MAX - 1)
                .map(|i| acl(&i.to_string()))
                .collect(),
            ..MetadataImage::default()
        };
        // Up to the limit (one already present is not counted).
        let at_limit = Command::CreateAcls {
            acls: vec![acl("0"), acl("last")],
        };
        apply(&mut image, 1, &at_limit).unwrap();
        assert_eq!(image.acls.len(), ACLS_TOTAL_MAX);
        let beyond = Command::CreateAcls {
            acls: vec![acl("one-more")],
        };
        assert!(matches!(
            apply(&mut image, 2, &beyond),
            Err(AdminError::LimitExceeded(_))
        ));
        assert_eq!(image.acls.len(), ACLS_TOTAL_MAX);
    }

    fn scram(mechanism: &str) -> ScramCredential {
        ScramCredential {
            mechanism: mechanism.to_string(),
            iterations: 4096,
            salt: vec![1],
            stored_key: vec![2],
            server_key: vec![3],
        }
    }

    #[test]
    fn scram_users_beyond_the_limit_are_refused_on_apply() {
        const SHA256: &str = "SCRAM-SHA-256";
        const SHA512: &str = "SCRAM-SHA-512";
        let mut image = MetadataImage::default();
        for i in 0..SCRAM_USERS_MAX {
            image
                .scram_credentials
                .insert(format!("u{i}"), vec![scram(SHA256)]);
        }
        image
            .scram_credentials
            .insert("u0".to_string(), vec![scram(SHA256), scram(SHA512)]);
        let alter =
            |upserts: &[(&str, &str)], deletions: &[(&str, &str)]| Command::AlterScramCredentials {
                upserts: upserts
                    .iter()
                    .map(|(u, m)| (u.to_string(), scram(m)))
                    .collect(),
                deletions: deletions
                    .iter()
                    .map(|(u, m)| (u.to_string(), m.to_string()))
                    .collect(),
            };
        // A new user at the limit: refused, nothing changed.
        assert!(matches!(
            apply(&mut image, 1, &alter(&[("new", SHA256)], &[])),
            Err(AdminError::LimitExceeded(_))
        ));
        assert!(!image.scram_credentials.contains_key("new"));
        // Deleting one of u0's two mechanisms frees no user.
        assert!(matches!(
            apply(&mut image, 2, &alter(&[("new", SHA256)], &[("u0", SHA512)])),
            Err(AdminError::LimitExceeded(_))
        ));
        // Existing users' credentials change; a user leaving makes room for a new one.
        apply(&mut image, 3, &alter(&[("u1", SHA512)], &[])).unwrap();
        apply(&mut image, 4, &alter(&[("new", SHA256)], &[("u2", SHA256)])).unwrap();
        assert_eq!(image.scram_credentials.len(), SCRAM_USERS_MAX);
        assert!(image.scram_credentials.contains_key("new"));
        assert!(!image.scram_credentials.contains_key("u2"));
    }
}
