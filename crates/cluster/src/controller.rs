//! What the active controller (the raft leader) decides before proposing: the command for a
//! request (placement, topic ids, validation against its image), and which brokers to
//! register, unfence or fence from the heartbeats it hears. Its decisions are proposals only;
//! the state machine re-checks them when they are applied.

use crate::state::{self, Command, LeaderMove};
use crate::transport::Heartbeat;
use crate::{AdminError, AdminRequest, MetadataImage, NodeId};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A proposal about a broker that is not yet reflected in the image is not repeated sooner.
const REPROPOSE_INTERVAL: Duration = Duration::from_secs(1);
/// Partitions one topic may have (a client-controlled count; each costs image space on every
/// node and a log on its replicas).
pub const TOPIC_PARTITIONS_MAX: i32 = 100_000;

/// The command for `request`, decided against `image`.
pub fn decide(
    image: &MetadataImage,
    request: AdminRequest,
    default_replication_factor: i16,
) -> Result<Command, AdminError> {
    match request {
        AdminRequest::CreateTopic {
            name,
            partitions,
            replication_factor,
            assignments,
            configs,
        } => {
            if image.topics.contains_key(&name) {
                return Err(AdminError::TopicExists);
            }
            if partitions > TOPIC_PARTITIONS_MAX
                || assignments
                    .as_ref()
                    .is_some_and(|a| a.len() > TOPIC_PARTITIONS_MAX as usize)
            {
                return Err(AdminError::InvalidPartitions(format!(
                    "at most {TOPIC_PARTITIONS_MAX} partitions per topic"
                )));
            }
            let assignments = match assignments {
                Some(a) => {
                    if partitions != -1 && partitions as usize != a.len() {
                        return Err(AdminError::InvalidReplicaAssignment(format!(
                            "{} partitions assigned, {partitions} asked",
                            a.len()
                        )));
                    }
                    state::validate_assignments(image, &a, None)?;
                    if replication_factor != -1
                        && a.first().map(|r| r.len()) != Some(replication_factor as usize)
                    {
                        return Err(AdminError::InvalidReplicaAssignment(format!(
                            "replication factor {replication_factor} does not match the assignment"
                        )));
                    }
                    a
                }
                None => {
                    let rf = if replication_factor == -1 {
                        default_replication_factor
                    } else {
                        replication_factor
                    };
                    state::place(image, partitions, rf, state::partition_count(image))?
                }
            };
            Ok(Command::CreateTopic {
                name,
                id: Uuid::new_v4(),
                assignments,
                configs,
            })
        }
        AdminRequest::DeleteTopic { name } => {
            if !image.topics.contains_key(&name) {
                return Err(AdminError::UnknownTopic);
            }
            Ok(Command::DeleteTopic { name })
        }
        AdminRequest::CreatePartitions {
            name,
            total,
            assignments,
        } => {
            let topic = image.topics.get(&name).ok_or(AdminError::UnknownTopic)?;
            let current = topic.partitions.len();
            if total > TOPIC_PARTITIONS_MAX {
                return Err(AdminError::InvalidPartitions(format!(
                    "at most {TOPIC_PARTITIONS_MAX} partitions per topic"
                )));
            }
            if total <= 0 || (total as usize) <= current {
                return Err(AdminError::InvalidPartitions(format!(
                    "topic has {current} partitions, {total} asked"
                )));
            }
            let count = total as usize - current;
            let width = topic.partitions.first().map(|p| p.replicas.len());
            let assignments = match assignments {
                Some(a) => {
                    if a.len() != count {
                        return Err(AdminError::InvalidReplicaAssignment(format!(
                            "{} new partitions assigned, {count} needed",
                            a.len()
                        )));
                    }
                    state::validate_assignments(image, &a, width)?;
                    a
                }
                None => state::place(
                    image,
                    count as i32,
                    width.unwrap_or(1) as i16,
                    state::partition_count(image),
                )?,
            };
            Ok(Command::CreatePartitions {
                name,
                current,
                assignments,
            })
        }
        AdminRequest::SetTopicConfigs { name, configs } => {
            if !image.topics.contains_key(&name) {
                return Err(AdminError::UnknownTopic);
            }
            Ok(Command::SetTopicConfigs { name, configs })
        }
        AdminRequest::AlterIsr {
            from,
            topic,
            partition,
            leader_epoch,
            partition_epoch,
            isr,
        } => Ok(Command::AlterIsr {
            from,
            topic,
            partition,
            leader_epoch,
            partition_epoch,
            isr,
        }),
        AdminRequest::AlterScramCredentials { upserts, deletions } => {
            Ok(Command::AlterScramCredentials { upserts, deletions })
        }
        AdminRequest::CreateAcls { acls } => Ok(Command::CreateAcls { acls }),
        AdminRequest::DeleteAcls { acls } => Ok(Command::DeleteAcls { acls }),
        AdminRequest::AlterReassignments { moves } => {
            if moves.is_empty() {
                return Err(AdminError::InvalidReplicaAssignment(
                    "no partitions named".to_string(),
                ));
            }
            for (i, m) in moves.iter().enumerate() {
                if moves[..i]
                    .iter()
                    .any(|o| o.topic == m.topic && o.partition == m.partition)
                {
                    return Err(AdminError::InvalidReplicaAssignment(format!(
                        "{}-{} named twice",
                        m.topic, m.partition
                    )));
                }
                let mut p = state::partition_of(image, &m.topic, m.partition)?.clone();
                state::reassign(image, &mut p, m.target.as_deref())?;
            }
            Ok(Command::AlterReassignments { moves })
        }
    }
}

/// The active controller's view of broker liveness during one leadership term.
#[derive(Debug)]
pub struct Controller {
    /// Brokers are not fenced before this (one session timeout after becoming leader).
    grace_until: Instant,
    /// The last entry of the previous terms: decisions wait until it is applied.
    pub start_index: u64,
    last_rebalance: Instant,
    init_proposed: Option<Instant>,
    registering: HashMap<NodeId, (u64, Instant)>,
    fencing: HashMap<NodeId, Instant>,
}

impl Controller {
    pub fn new(now: Instant, session_timeout: Duration, start_index: u64) -> Controller {
        Controller {
            grace_until: now + session_timeout,
            start_index,
            last_rebalance: now,
            init_proposed: None,
            registering: HashMap::new(),
            fencing: HashMap::new(),
        }
    }

    /// Commands to propose now, given the image and the last heartbeat heard from each broker.
    pub fn duties(
        &mut self,
        now: Instant,
        image: &MetadataImage,
        heartbeats: &HashMap<NodeId, (Instant, Heartbeat)>,
        session_timeout: Duration,
        rebalance_interval: Duration,
    ) -> Vec<Command> {
        let mut out = Vec::new();
        if image.applied_index < self.start_index {
            return out;
        }
        let recent = |at: Option<Instant>| at.is_some_and(|t| now < t + REPROPOSE_INTERVAL);
        if image.cluster_id.is_empty() && !recent(self.init_proposed) {
            self.init_proposed = Some(now);
            out.push(Command::InitCluster {
                cluster_id: new_cluster_id(),
            });
        }
        for (&id, (seen, hb)) in heartbeats {
            if now.saturating_duration_since(*seen) > session_timeout {
                continue;
            }
            let needed = match image.brokers.get(&id) {
                None => true,
                Some(b) => {
                    b.fenced
                        || b.incarnation != hb.incarnation
                        || b.host != hb.host
                        || b.port != hb.port
                        || b.listeners != hb.listeners
                }
            };
            if !needed {
                self.registering.remove(&id);
                continue;
            }
            if let Some((inc, at)) = self.registering.get(&id) {
                if *inc == hb.incarnation && recent(Some(*at)) {
                    continue;
                }
            }
            self.registering.insert(id, (hb.incarnation, now));
            out.push(Command::RegisterBroker {
                id,
                incarnation: hb.incarnation,
                host: hb.host.clone(),
                port: hb.port,
                listeners: hb.listeners.clone(),
            });
        }
        if now >= self.grace_until {
            for b in image.brokers.values() {
                if b.fenced {
                    self.fencing.remove(&b.id);
                    continue;
                }
                let alive = heartbeats.get(&b.id).is_some_and(|(seen, _)| {
                    now.saturating_duration_since(*seen) <= session_timeout
                });
                if alive || recent(self.fencing.get(&b.id).copied()) {
                    continue;
                }
                tracing::info!(broker = b.id, "broker session expired, fencing it");
                self.fencing.insert(b.id, now);
                out.push(Command::Fence { id: b.id });
            }
        }
        if now >= self.last_rebalance + rebalance_interval {
            self.last_rebalance = now;
            let moves = state::preferred_leader_moves(image);
            out.extend(elect_leaders_batches(moves));
        }
        out
    }
}

/// `moves` as ElectLeaders commands, each under [`state::COMMAND_BYTES_MAX`] encoded.
pub fn elect_leaders_batches(moves: Vec<LeaderMove>) -> Vec<Command> {
    // The envelope `{"ElectLeaders":{"moves":[...]}}` and a comma per move.
    const ENVELOPE_BYTES: usize = 64;
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = ENVELOPE_BYTES;
    for m in moves {
        let len = serde_json::to_vec(&m).map_or(usize::MAX, |b| b.len().saturating_add(1));
        if ENVELOPE_BYTES.saturating_add(len) > state::COMMAND_BYTES_MAX {
            // Cannot happen with valid topic names; never propose it.
            tracing::error!(topic = m.topic, "leader move too large to propose");
            continue;
        }
        if bytes + len > state::COMMAND_BYTES_MAX {
            out.push(Command::ElectLeaders {
                moves: std::mem::take(&mut batch),
            });
            bytes = ENVELOPE_BYTES;
        }
        bytes += len;
        batch.push(m);
    }
    if !batch.is_empty() {
        out.push(Command::ElectLeaders { moves: batch });
    }
    out
}

/// A cluster id in Kafka's form: a random UUID in unpadded URL-safe base64 (22 characters).
pub fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits = Uuid::new_v4().as_u128();
    (0..22)
        .map(|i| {
            // 22 six-bit groups from the top; the last one holds the final two bits.
            let shift = 128i32 - 6 * (i + 1);
            let v = if shift >= 0 {
                (bits >> shift) & 0x3f
            } else {
                (bits << (-shift)) & 0x3f
            };
            ALPHABET[v as usize] as char
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::apply;
    use std::collections::BTreeMap;

    fn hb(id: NodeId, incarnation: u64) -> Heartbeat {
        Heartbeat {
            node_id: id,
            incarnation,
            host: "h".to_string(),
            port: 1,
            listeners: Vec::new(),
        }
    }

    #[test]
    fn registers_heartbeating_brokers_and_fences_silent_ones_after_grace() {
        let t0 = Instant::now();
        let session = Duration::from_secs(2);
        let rebalance = Duration::from_secs(60);
        let mut image = MetadataImage {
            cluster_id: "c".to_string(),
            ..MetadataImage::default()
        };
        let mut c = Controller::new(t0, session, 0);
        let mut beats = HashMap::new();
        beats.insert(1, (t0, hb(1, 10)));
        beats.insert(2, (t0, hb(2, 20)));
        let mut cmds = c.duties(t0, &image, &beats, session, rebalance);
        cmds.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(cmds.len(), 2);
        for (i, cmd) in cmds.iter().enumerate() {
            apply(&mut image, i as u64 + 1, cmd).unwrap();
        }
        assert!(image.brokers.values().all(|b| !b.fenced));
        // Not repeated once reflected.
        assert!(c.duties(t0, &image, &beats, session, rebalance).is_empty());
        // Broker 2 goes silent: fenced only after its session timeout.
        let t1 = t0 + Duration::from_millis(1500);
        beats.insert(1, (t1, hb(1, 10)));
        assert!(c.duties(t1, &image, &beats, session, rebalance).is_empty());
        let t2 = t0 + Duration::from_millis(2500);
        beats.insert(1, (t2, hb(1, 10)));
        assert_eq!(
            c.duties(t2, &image, &beats, session, rebalance),
            vec![Command::Fence { id: 2 }]
        );
        apply(&mut image, 3, &Command::Fence { id: 2 }).unwrap();
        // It heartbeats again with a new incarnation: registered (unfenced).
        beats.insert(2, (t2, hb(2, 21)));
        let cmds = c.duties(t2, &image, &beats, session, rebalance);
        assert!(matches!(
            cmds.as_slice(),
            [Command::RegisterBroker {
                id: 2,
                incarnation: 21,
                ..
            }]
        ));
    }

    #[test]
    fn no_fencing_during_grace_and_no_decisions_before_catch_up() {
        let t0 = Instant::now();
        let session = Duration::from_secs(2);
        let mut image = MetadataImage::default();
        apply(
            &mut image,
            1,
            &Command::RegisterBroker {
                id: 3,
                incarnation: 1,
                host: "h".to_string(),
                port: 1,
                listeners: Vec::new(),
            },
        )
        .unwrap();
        let beats = HashMap::new();
        let mut c = Controller::new(t0, session, 5);
        assert!(c.duties(t0, &image, &beats, session, session).is_empty());
        image.applied_index = 5;
        let cmds = c.duties(t0, &image, &beats, session, Duration::from_secs(60));
        assert!(matches!(cmds.as_slice(), [Command::InitCluster { .. }]));
        let later = t0 + Duration::from_millis(2100);
        let cmds = c.duties(later, &image, &beats, session, Duration::from_secs(60));
        assert!(cmds.contains(&Command::Fence { id: 3 }));
    }

    #[test]
    fn decide_places_and_validates() {
        let mut image = MetadataImage::default();
        for id in 1..=3 {
            apply(
                &mut image,
                id as u64,
                &Command::RegisterBroker {
                    id,
                    incarnation: 1,
                    host: "h".to_string(),
                    port: 1,
                    listeners: Vec::new(),
                },
            )
            .unwrap();
        }
        let create = |partitions, rf, assignments| AdminRequest::CreateTopic {
            name: "t".to_string(),
            partitions,
            replication_factor: rf,
            assignments,
            configs: BTreeMap::new(),
        };
        match decide(&image, create(3, -1, None), 2).unwrap() {
            Command::CreateTopic { assignments, .. } => {
                assert_eq!(assignments, vec![vec![1, 2], vec![2, 3], vec![3, 1]])
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(&image, create(1, 4, None), 1),
            Err(AdminError::InvalidReplicationFactor(_))
        ));
        assert!(matches!(
            decide(&image, create(0, 1, None), 1),
            Err(AdminError::InvalidPartitions(_))
        ));
        assert!(matches!(
            decide(&image, create(2, -1, Some(vec![vec![1, 2]])), 1),
            Err(AdminError::InvalidReplicaAssignment(_))
        ));
        assert!(decide(&image, create(-1, -1, Some(vec![vec![3, 1]])), 1).is_ok());
        assert!(matches!(
            decide(&image, create(i32::MAX, 1, None), 1),
            Err(AdminError::InvalidPartitions(_))
        ));
        assert_eq!(
            decide(
                &image,
                AdminRequest::DeleteTopic {
                    name: "x".to_string()
                },
                1
            ),
            Err(AdminError::UnknownTopic)
        );
    }

    #[test]
    fn decide_checks_reassignments_before_proposing() {
        let mut image = MetadataImage::default();
        for id in 1..=3 {
            apply(
                &mut image,
                id as u64,
                &Command::RegisterBroker {
                    id,
                    incarnation: 1,
                    host: "h".to_string(),
                    port: 1,
                    listeners: Vec::new(),
                },
            )
            .unwrap();
        }
        let create = decide(
            &image,
            AdminRequest::CreateTopic {
                name: "t".to_string(),
                partitions: 1,
                replication_factor: -1,
                assignments: Some(vec![vec![1, 2]]),
                configs: BTreeMap::new(),
            },
            1,
        )
        .unwrap();
        apply(&mut image, 4, &create).unwrap();
        let mv = |partition, target: Option<Vec<NodeId>>| crate::ReassignmentMove {
            topic: "t".to_string(),
            partition,
            target,
        };
        let req = |moves| AdminRequest::AlterReassignments { moves };
        assert_eq!(
            decide(&image, req(vec![mv(0, None)]), 1),
            Err(AdminError::NoReassignmentInProgress)
        );
        assert_eq!(
            decide(&image, req(vec![mv(1, Some(vec![3]))]), 1),
            Err(AdminError::UnknownTopic)
        );
        assert!(matches!(
            decide(&image, req(vec![mv(0, Some(vec![3, 4]))]), 1),
            Err(AdminError::InvalidReplicaAssignment(_))
        ));
        assert!(matches!(
            decide(
                &image,
                req(vec![mv(0, Some(vec![3])), mv(0, Some(vec![2]))]),
                1
            ),
            Err(AdminError::InvalidReplicaAssignment(_))
        ));
        assert!(matches!(
            decide(&image, req(vec![]), 1),
            Err(AdminError::InvalidReplicaAssignment(_))
        ));
        let cmd = decide(&image, req(vec![mv(0, Some(vec![2, 3]))]), 1).unwrap();
        assert!(matches!(cmd, Command::AlterReassignments { .. }));
        apply(&mut image, 5, &cmd).unwrap();
        assert_eq!(image.topics["t"].partitions[0].adding_replicas, vec![3]);
        assert!(decide(&image, req(vec![mv(0, None)]), 1).is_ok());
    }

    #[test]
    fn many_leader_moves_are_split_under_the_command_limit() {
        let moves: Vec<LeaderMove> = (0..40_000)
            .map(|i| LeaderMove {
                topic: format!("a-topic-with-a-longish-name-{i}"),
                partition: i,
                leader: 3,
                leader_epoch: 12,
                partition_epoch: 40,
            })
            .collect();
        let cmds = elect_leaders_batches(moves.clone());
        assert!(cmds.len() > 1);
        let mut all = Vec::new();
        for cmd in cmds {
            assert!(cmd.encode().len() <= state::COMMAND_BYTES_MAX);
            match cmd {
                Command::ElectLeaders { moves } => all.extend(moves),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(all, moves, "every move once, in order");
        assert!(elect_leaders_batches(Vec::new()).is_empty());
    }

    #[test]
    fn cluster_ids_look_like_kafkas() {
        let a = new_cluster_id();
        assert_eq!(a.len(), 22);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(a, new_cluster_id());
    }

    /// Issue #16: a broker's advertised listeners travel in its heartbeat into the image; a
    /// heartbeat of an older broker (no listeners field) still decodes.
    #[test]
    fn heartbeat_listeners_reach_the_image() {
        let t0 = Instant::now();
        let session = Duration::from_secs(2);
        let mut image = MetadataImage {
            cluster_id: "c".to_string(),
            ..MetadataImage::default()
        };
        let mut c = Controller::new(t0, session, 0);
        let endpoints = vec![
            crate::Endpoint {
                name: "PLAINTEXT".into(),
                host: "h".into(),
                port: 1,
            },
            crate::Endpoint {
                name: "SSL".into(),
                host: "h".into(),
                port: 2,
            },
        ];
        let mut beat = hb(1, 10);
        beat.listeners = endpoints.clone();
        let beats = HashMap::from([(1, (t0, beat))]);
        let cmds = c.duties(t0, &image, &beats, session, Duration::from_secs(60));
        assert_eq!(cmds.len(), 1);
        // Through the log's encoding, as committed.
        let cmd = Command::decode(&cmds[0].encode()).unwrap();
        apply(&mut image, 1, &cmd).unwrap();
        assert_eq!(image.brokers[&1].listeners, endpoints);
        let old: Heartbeat =
            serde_json::from_str(r#"{"node_id":1,"incarnation":1,"host":"h","port":1}"#).unwrap();
        assert!(old.listeners.is_empty());
    }
}
