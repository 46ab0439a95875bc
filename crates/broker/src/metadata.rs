//! The topic table: names, ids, partition count and the shard that owns each partition.
//! Persisted as `meta/topics.json` (write new, fsync, rename); shard 0 is its only writer.

use ringbroker_storage::atomic_file::write_atomically;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

/// Kafka's limit on topic name length.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Node id of a broker that runs without `--cluster` (a one-node cluster).
pub const SINGLE_NODE_ID: i32 = 0;

/// One partition's replicas as the cluster metadata says. A single node: itself, the leader,
/// epoch 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSet {
    /// Assigned replicas (node ids); the first is the preferred leader.
    pub replicas: Vec<i32>,
    /// In-sync replicas; includes the leader when there is one.
    pub isr: Vec<i32>,
    /// -1: no leader.
    pub leader: i32,
    pub leader_epoch: i32,
    /// Bumped on every change of the partition's state (ISR included).
    pub partition_epoch: i32,
}

impl ReplicaSet {
    /// A partition of a broker running alone as `node`.
    pub fn single(node: i32) -> ReplicaSet {
        ReplicaSet {
            replicas: vec![node],
            isr: vec![node],
            leader: node,
            leader_epoch: 0,
            partition_epoch: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub id: Uuid,
    /// `owners[p]` is the shard that owns partition `p` on this node (when the node holds a
    /// replica of it).
    pub owners: Vec<usize>,
    pub configs: BTreeMap<String, String>,
    /// `replication[p]`: partition `p`'s replicas, ISR, leader and epochs; as long as `owners`.
    /// Not persisted in `topics.json`: a single node fills it with [`ReplicaSet::single`], a
    /// cluster member from the metadata quorum's image.
    pub replication: Vec<ReplicaSet>,
}

impl TopicInfo {
    pub fn partition_count(&self) -> i32 {
        self.owners.len() as i32
    }

    /// Partition `partition`'s replica set.
    pub fn replicas(&self, partition: i32) -> Option<&ReplicaSet> {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.replication.get(p))
    }

    pub fn owner(&self, partition: i32) -> Option<usize> {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.owners.get(p).copied())
    }
}

#[derive(Serialize, Deserialize)]
struct TopicRecord {
    name: String,
    id: Uuid,
    owners: Vec<usize>,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct MetaFile {
    cluster_id: String,
    topics: Vec<TopicRecord>,
}

/// The whole table.
#[derive(Debug, Clone, Default)]
pub struct ClusterMeta {
    pub cluster_id: String,
    pub topics: Vec<Arc<TopicInfo>>,
}

fn meta_path(data_dir: &Path) -> PathBuf {
    data_dir.join("meta").join("topics.json")
}

impl ClusterMeta {
    /// Loads the table, creating a fresh one (new cluster id) when there is none.
    pub fn load_or_create(data_dir: &Path) -> io::Result<ClusterMeta> {
        std::fs::create_dir_all(data_dir.join("meta"))?;
        let path = meta_path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: MetaFile = serde_json::from_slice(&bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?;
                Ok(ClusterMeta {
                    cluster_id: file.cluster_id,
                    topics: file
                        .topics
                        .into_iter()
                        .map(|t| {
                            Arc::new(TopicInfo {
                                name: t.name,
                                id: t.id,
                                replication: vec![
                                    ReplicaSet::single(SINGLE_NODE_ID);
                                    t.owners.len()
                                ],
                                owners: t.owners,
                                configs: t.configs,
                            })
                        })
                        .collect(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let meta = ClusterMeta {
                    cluster_id: new_cluster_id(),
                    topics: Vec::new(),
                };
                meta.save(data_dir)?;
                Ok(meta)
            }
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, data_dir: &Path) -> io::Result<()> {
        let file = MetaFile {
            cluster_id: self.cluster_id.clone(),
            topics: self
                .topics
                .iter()
                .map(|t| TopicRecord {
                    name: t.name.clone(),
                    id: t.id,
                    owners: t.owners.clone(),
                    configs: t.configs.clone(),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
        write_atomically(&meta_path(data_dir), &bytes)
    }

    /// Partitions each shard owns.
    pub fn load_per_shard(&self, shards: usize) -> Vec<usize> {
        let mut load = vec![0; shards];
        for t in &self.topics {
            for &o in &t.owners {
                if o < shards {
                    load[o] += 1;
                }
            }
        }
        load
    }

    /// Gives every partition whose owner no longer exists (fewer shards than before) to the
    /// least-loaded shard. Returns whether anything moved. Files are per partition, so
    /// nothing moves on disk.
    pub fn reassign_orphans(&mut self, shards: usize) -> bool {
        let mut load = self.load_per_shard(shards);
        let mut moved = false;
        for t in &mut self.topics {
            if t.owners.iter().all(|&o| o < shards) {
                continue;
            }
            let mut info = (**t).clone();
            for o in &mut info.owners {
                if *o >= shards {
                    *o = least_loaded(&load);
                    load[*o] += 1;
                }
            }
            *t = Arc::new(info);
            moved = true;
        }
        moved
    }

    /// Owners for `partitions` new partitions, spread over the least-loaded shards.
    pub fn place(&self, partitions: usize, shards: usize) -> Vec<usize> {
        let mut load = self.load_per_shard(shards);
        (0..partitions)
            .map(|_| {
                let s = least_loaded(&load);
                load[s] += 1;
                s
            })
            .collect()
    }
}

fn least_loaded(load: &[usize]) -> usize {
    load.iter()
        .enumerate()
        .min_by_key(|&(i, &l)| (l, i))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

fn new_cluster_id() -> String {
    // Kafka cluster ids are 22 characters; any stable string works for clients.
    Uuid::new_v4().simple().to_string()[..22].to_string()
}

/// Kafka's rule: 1-249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOPIC_NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The directory of a partition's log.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = ClusterMeta::load_or_create(dir.path()).unwrap();
        let owners = meta.place(4, 2);
        assert_eq!(owners, vec![0, 1, 0, 1]);
        meta.topics.push(Arc::new(TopicInfo {
            name: "t".into(),
            id: Uuid::new_v4(),
            replication: vec![ReplicaSet::single(0); owners.len()],
            owners,
            configs: BTreeMap::new(),
        }));
        meta.save(dir.path()).unwrap();
        let again = ClusterMeta::load_or_create(dir.path()).unwrap();
        assert_eq!(again.cluster_id, meta.cluster_id);
        assert_eq!(again.topics, meta.topics);
    }

    #[test]
    fn orphaned_partitions_move_to_remaining_shards() {
        let mut meta = ClusterMeta {
            cluster_id: "c".into(),
            topics: vec![],
        };
        meta.topics.push(Arc::new(TopicInfo {
            name: "t".into(),
            id: Uuid::nil(),
            owners: vec![0, 1, 2, 3],
            configs: BTreeMap::new(),
            replication: vec![ReplicaSet::single(0); 4],
        }));
        assert!(meta.reassign_orphans(2));
        assert!(meta.topics[0].owners.iter().all(|&o| o < 2));
        assert_eq!(meta.load_per_shard(2), vec![2, 2]);
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(valid_topic_name("orders.v1_x-y"));
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(250)] {
            assert!(!valid_topic_name(bad), "{bad:?}");
        }
    }
}
