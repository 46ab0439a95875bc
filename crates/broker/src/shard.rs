//! One shard's state and the operations that cross shards.
//!
//! Each shard holds its own copy of the topic table (changed only by messages from shard 0,
//! the table's single writer) and the partitions it owns: one [`Partition`] per partition, the
//! single owner of its log and its producer state, found by a [`PartitionId`]. Work on a
//! partition always runs on its owner: `on_partition` sends it there through the mesh when it
//! is elsewhere.

use crate::config::BrokerConfig;
use crate::errors;
use crate::metadata::{partition_dir, valid_topic_name, ClusterMeta, TopicInfo};
use crate::producer_state::Producers;
use crate::topic_config::{self, BrokerView, DynamicBrokerConfigs, TopicProduceSettings};
use ringbroker_runtime::mesh;
use ringbroker_storage::{PartitionLog, Recovery};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use uuid::Uuid;

pub mod cluster;

/// What every shard shares, read-only after start-up.
#[derive(Debug)]
pub struct Shared {
    pub config: BrokerConfig,
    pub advertised_host: String,
    pub advertised_port: u16,
    /// Every listener as bound and advertised, in `BrokerConfig::listeners` order
    /// (`advertised_host`/`advertised_port` are the first one's).
    pub listeners: Vec<crate::security::ListenerInfo>,
    pub cluster_id: String,
    pub shard_count: usize,
    /// The previous run stopped cleanly (its snapshots can be trusted).
    pub recovered_clean: bool,
    /// Shards that have loaded their committed offsets and producer state; no shard accepts
    /// clients before every shard has, since any request may be forwarded to any shard.
    pub shards_loaded: std::sync::atomic::AtomicUsize,
    /// Client connections open on every shard together.
    pub connections: Arc<crate::limits::ConnectionCount>,
    /// This broker's node id: `--node-id` in a cluster, [`crate::metadata::SINGLE_NODE_ID`]
    /// alone.
    pub node_id: i32,
    /// The metadata quorum this broker belongs to; `None`: a single node (no `--cluster`).
    pub cluster: Option<Arc<ringbroker_cluster::Cluster>>,
    /// Cluster mode: per offsets partition, the leader epoch whose groups this node has
    /// loaded (coordinates); read by every shard, written by the partition's owner shard.
    pub offsets_loaded: crate::groups::OffsetsLoaded,
    /// The TLS server configuration (built once at start when a listener uses TLS).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS sessions are handed to the kernel after the handshake (kTLS probed at start and
    /// not turned off with `RINGBROKER_KTLS=off`).
    pub ktls: bool,
}

/// How clients and other brokers reach a broker (its Kafka listener).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    pub id: i32,
    pub host: String,
    pub port: u16,
    /// Fenced by the controller (not heard from): listed by no Metadata response.
    pub fenced: bool,
    /// Every advertised client listener by name (`host`/`port` are the first one's); empty
    /// from a broker that registered none (it is reached at `host`/`port` on every listener).
    pub listeners: Vec<ringbroker_cluster::Endpoint>,
}

impl BrokerAddress {
    /// Where a client of listener `listener` (a name; `None`: unknown) reaches this broker:
    /// its same-named listener. `None` when it has no such listener (Kafka leaves such a
    /// broker out of the answer).
    pub fn endpoint(&self, listener: Option<&str>) -> Option<(&str, u16)> {
        match listener {
            Some(name) if !self.listeners.is_empty() => self
                .listeners
                .iter()
                .find(|e| e.name == name)
                .map(|e| (e.host.as_str(), e.port)),
            _ => Some((self.host.as_str(), self.port)),
        }
    }
}

/// The brokers of the cluster as this shard last heard, and the active controller.
#[derive(Debug, Clone, Default)]
pub struct BrokersView {
    pub brokers: BTreeMap<i32, BrokerAddress>,
    /// -1: unknown.
    pub controller_id: i32,
}

/// Names a partition without allocating: its topic's id (a topic created again under the same
/// name is another topic) and its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionId {
    pub topic_id: Uuid,
    pub index: i32,
}

/// A partition this shard owns: the one owner of its log and of its idempotent producers'
/// state, so a Produce checks and reserves sequences and appends on the same value.
pub struct Partition {
    pub id: PartitionId,
    pub topic: String,
    pub log: Rc<PartitionLog>,
    pub producers: Producers,
    /// Its role in its replica set (leader, follower) and high watermark.
    pub replica: crate::replication::ReplicaState,
}

pub struct Shard {
    pub id: usize,
    pub shared: Arc<Shared>,
    topics: RefCell<HashMap<String, Arc<TopicInfo>>>,
    topic_ids: RefCell<HashMap<Uuid, Arc<TopicInfo>>>,
    partitions: RefCell<HashMap<PartitionId, Rc<Partition>>>,
    /// Shard 0 only: the authoritative table it persists.
    table: Option<RefCell<ClusterMeta>>,
    /// Broker configs set at runtime (shard 0 persists them and tells every shard).
    dynamic: RefCell<Arc<DynamicBrokerConfigs>>,
    /// What a Produce to each topic checks and does, by topic id: derived from the topic's
    /// configs and the broker's, refreshed when either changes (not parsed per request).
    produce_settings: RefCell<HashMap<Uuid, TopicProduceSettings>>,
    /// Every broker of the cluster (a single node: itself), kept current from the metadata
    /// quorum's images.
    brokers: RefCell<Arc<BrokersView>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

/// The shard running on this thread.
pub fn current() -> Rc<Shard> {
    CURRENT.with(|c| c.borrow().clone().expect("not on a shard thread"))
}

impl Shard {
    /// Creates this thread's shard, opening the logs of the partitions it owns (start-up:
    /// blocking file I/O, recovery scans).
    pub fn install(
        id: usize,
        shared: Arc<Shared>,
        meta: &ClusterMeta,
        recovery: Recovery,
    ) -> std::io::Result<Rc<Shard>> {
        let shared_data_dir = shared.config.data_dir.clone();
        let shard = Rc::new(Shard {
            id,
            shared: shared.clone(),
            topics: RefCell::new(HashMap::new()),
            topic_ids: RefCell::new(HashMap::new()),
            partitions: RefCell::new(HashMap::new()),
            table: (id == 0).then(|| RefCell::new(meta.clone())),
            dynamic: RefCell::new(Arc::new(DynamicBrokerConfigs::load(&shared_data_dir)?)),
            produce_settings: RefCell::new(HashMap::new()),
            brokers: RefCell::new(Arc::new(BrokersView {
                brokers: BTreeMap::from([(
                    shared.node_id,
                    BrokerAddress {
                        id: shared.node_id,
                        host: shared.advertised_host.clone(),
                        port: shared.advertised_port,
                        fenced: false,
                        listeners: shared
                            .listeners
                            .iter()
                            .map(|l| ringbroker_cluster::Endpoint {
                                name: l.name.clone(),
                                host: l.advertised_host.clone(),
                                port: l.advertised_port,
                            })
                            .collect(),
                    },
                )]),
                controller_id: shared.node_id,
            })),
        });
        for topic in &meta.topics {
            shard.apply_topic(topic.clone(), 0, recovery, Producers::awaiting_restore)?;
        }
        CURRENT.with(|c| *c.borrow_mut() = Some(shard.clone()));
        Ok(shard)
    }

    /// The cluster's brokers and controller as this shard last heard.
    pub fn brokers(&self) -> Arc<BrokersView> {
        self.brokers.borrow().clone()
    }

    /// Replaces the brokers view (from a new metadata image).
    pub fn set_brokers(&self, view: Arc<BrokersView>) {
        *self.brokers.borrow_mut() = view;
    }

    pub fn topic(&self, name: &str) -> Option<Arc<TopicInfo>> {
        self.topics.borrow().get(name).cloned()
    }

    pub fn topic_by_id(&self, id: &Uuid) -> Option<Arc<TopicInfo>> {
        self.topic_ids.borrow().get(id).cloned()
    }

    /// Every topic, sorted by name.
    pub fn all_topics(&self) -> Vec<Arc<TopicInfo>> {
        let mut v: Vec<_> = self.topics.borrow().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// A partition this shard owns.
    pub fn partition(&self, id: PartitionId) -> Option<Rc<Partition>> {
        self.partitions.borrow().get(&id).cloned()
    }

    /// A partition this shard owns, by topic name.
    pub fn partition_named(&self, topic: &str, partition: i32) -> Option<Rc<Partition>> {
        let topic_id = self.topics.borrow().get(topic)?.id;
        self.partition(PartitionId {
            topic_id,
            index: partition,
        })
    }

    /// The log of a partition this shard owns.
    pub fn log(&self, topic: &str, partition: i32) -> Option<Rc<PartitionLog>> {
        self.partition_named(topic, partition)
            .map(|p| p.log.clone())
    }

    /// Every partition this shard owns.
    pub fn owned(&self) -> Vec<Rc<Partition>> {
        self.partitions.borrow().values().cloned().collect()
    }

    /// Logs owned by this shard.
    pub fn owned_logs(&self) -> Vec<Rc<PartitionLog>> {
        self.partitions
            .borrow()
            .values()
            .map(|p| p.log.clone())
            .collect()
    }

    /// (topic, partition) and log of every partition this shard owns.
    pub fn owned_partitions(&self) -> Vec<((String, i32), Rc<PartitionLog>)> {
        self.partitions
            .borrow()
            .values()
            .map(|p| ((p.topic.clone(), p.id.index), p.log.clone()))
            .collect()
    }

    /// Adds a topic to this shard's view and opens the partitions it owns from index `first`
    /// on (0 for a new topic, the old count for a grown one), with the producer state
    /// `producers` makes (awaiting its restore at start-up, empty for a new partition).
    fn apply_topic(
        &self,
        topic: Arc<TopicInfo>,
        first: usize,
        recovery: Recovery,
        producers: fn() -> Producers,
    ) -> std::io::Result<()> {
        let config = self
            .log_config_of(&topic.name, &topic.configs)
            .map_err(std::io::Error::other)?;
        for (p, &owner) in topic.owners.iter().enumerate().skip(first) {
            // A cluster member opens only the partitions it holds a replica of.
            if owner != self.id || !cluster::hosts(&topic, p, self.shared.node_id) {
                continue;
            }
            let dir = partition_dir(&self.shared.config.data_dir, &topic.name, p as i32);
            let log = PartitionLog::open_with(&dir, config.clone(), recovery)?;
            let id = PartitionId {
                topic_id: topic.id,
                index: p as i32,
            };
            let partition = Partition {
                id,
                topic: topic.name.clone(),
                log: Rc::new(log),
                producers: producers(),
                replica: Default::default(),
            };
            self.partitions.borrow_mut().insert(id, Rc::new(partition));
        }
        self.refresh_produce_settings(&topic);
        self.topic_ids.borrow_mut().insert(topic.id, topic.clone());
        self.topics
            .borrow_mut()
            .insert(topic.name.clone(), topic.clone());
        crate::replication::topic_changed(self, &topic);
        Ok(())
    }

    /// Removes a topic from this shard's view, deleting the files of partitions it owns.
    fn remove_topic(&self, name: &str) {
        let Some(topic) = self.topics.borrow_mut().remove(name) else {
            return;
        };
        self.topic_ids.borrow_mut().remove(&topic.id);
        self.produce_settings.borrow_mut().remove(&topic.id);
        for p in 0..topic.partition_count() {
            let id = PartitionId {
                topic_id: topic.id,
                index: p,
            };
            let removed = self.partitions.borrow_mut().remove(&id);
            crate::cleaner::partition_removed(id);
            crate::replication::partition_removed(self, id);
            if let Some(partition) = removed {
                if let Err(e) = partition.log.remove_files() {
                    tracing::error!(topic = name, partition = p, error = %e, "could not delete partition files");
                }
            }
        }
    }
}

/// Runs `f` with the log of `topic`/`partition` on the shard that owns it.
/// `None` when that shard does not have the partition (deleted meanwhile).
pub async fn on_partition<R, F, Fut>(topic: &TopicInfo, partition: i32, f: F) -> Option<R>
where
    R: Send + 'static,
    F: FnOnce(Rc<PartitionLog>) -> Fut + Send + 'static,
    Fut: Future<Output = R> + 'static,
{
    on_owned_partition(topic, partition, move |p| f(p.log.clone())).await
}

/// Runs `f` with the [`Partition`] `topic`/`partition` on the shard that owns it.
/// `None` when that shard does not have the partition (deleted meanwhile).
pub async fn on_owned_partition<R, F, Fut>(topic: &TopicInfo, partition: i32, f: F) -> Option<R>
where
    R: Send + 'static,
    F: FnOnce(Rc<Partition>) -> Fut + Send + 'static,
    Fut: Future<Output = R> + 'static,
{
    let owner = topic.owner(partition)?;
    let id = PartitionId {
        topic_id: topic.id,
        index: partition,
    };
    mesh::call(owner, move || async move {
        let partition = current().partition(id)?;
        Some(f(partition).await)
    })
    .await
}

/// A topic to create.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
    /// Replicas per partition chosen by the client (cluster mode; a single node has checked
    /// them already and ignores them).
    pub assignments: Option<Vec<Vec<i32>>>,
}

/// Why a topic operation was refused: a Kafka error code and a message.
pub type TopicError = (i16, String);

/// Creates topics (through shard 0, which persists the table and tells every shard).
/// With `validate_only`, checks without creating.
pub async fn create_topics(
    topics: Vec<NewTopic>,
    validate_only: bool,
) -> Vec<Result<Arc<TopicInfo>, TopicError>> {
    if current().shared.cluster.is_some() {
        return cluster::create_topics(topics, validate_only).await;
    }
    mesh::call_detached(0, move || async move {
        coordinator_create(topics, validate_only).await
    })
    .await
}

async fn coordinator_create(
    topics: Vec<NewTopic>,
    validate_only: bool,
) -> Vec<Result<Arc<TopicInfo>, TopicError>> {
    let shard = current();
    let table = shard.table.as_ref().expect("shard 0 holds the topic table");
    let mut results = Vec::with_capacity(topics.len());
    let mut created = Vec::new();
    let mut partitions_total: usize = table.borrow().topics.iter().map(|x| x.owners.len()).sum();
    for t in topics {
        let result = {
            let mut meta = table.borrow_mut();
            let partitions = if t.partitions == -1 {
                shard.shared.config.default_partitions
            } else {
                t.partitions
            };
            if !valid_topic_name(&t.name) {
                Err((
                    errors::INVALID_TOPIC_EXCEPTION,
                    format!("invalid topic name {:?}", t.name),
                ))
            } else if meta.topics.iter().any(|x| x.name == t.name) {
                Err((
                    errors::TOPIC_ALREADY_EXISTS,
                    format!("topic {:?} already exists", t.name),
                ))
            } else if let Some(other) = meta.topics.iter().find(|x| names_collide(&x.name, &t.name))
            {
                Err((
                    errors::INVALID_TOPIC_EXCEPTION,
                    format!(
                        "Topic '{}' collides with existing topic: {} ('.' and '_' may collide in metric names)",
                        t.name, other.name
                    ),
                ))
            } else if partitions <= 0 || partitions > crate::limits::TOPIC_PARTITIONS_MAX {
                Err((
                    errors::INVALID_PARTITIONS,
                    format!(
                        "{partitions} partitions requested (1 to {} per topic)",
                        crate::limits::TOPIC_PARTITIONS_MAX
                    ),
                ))
            } else if partitions_total + partitions as usize > crate::limits::PARTITIONS_MAX {
                Err((
                    errors::POLICY_VIOLATION,
                    format!(
                        "{partitions} more partitions would exceed the broker's limit of {}",
                        crate::limits::PARTITIONS_MAX
                    ),
                ))
            } else if let Err(why) = topic_config::check_topic_configs(&t.configs)
                .and_then(|_| shard.log_config_of(&t.name, &t.configs).map(|_| ()))
            {
                Err((errors::INVALID_CONFIG, why))
            } else if t.replication_factor != -1 && t.replication_factor != 1 {
                Err((
                    errors::INVALID_REPLICATION_FACTOR,
                    "this broker is a single node: replication factor must be 1".into(),
                ))
            } else {
                let info = Arc::new(TopicInfo {
                    name: t.name.clone(),
                    id: Uuid::new_v4(),
                    owners: meta.place(partitions as usize, shard.shared.shard_count),
                    configs: topic_config::check_topic_configs(&t.configs).unwrap_or_default(),
                    replication: vec![
                        crate::metadata::ReplicaSet::single(shard.shared.node_id);
                        partitions as usize
                    ],
                });
                // Validated topics count too, as if created: one validate_only request
                // cannot answer (with configs) for more partitions than the broker may hold.
                partitions_total += partitions as usize;
                if !validate_only {
                    meta.topics.push(info.clone());
                    created.push(info.clone());
                }
                Ok(info)
            }
        };
        results.push(result);
    }
    if !created.is_empty() {
        let saved = table.borrow().save(&shard.shared.config.data_dir);
        if let Err(e) = saved {
            tracing::error!(error = %e, "could not persist the topic table");
            let mut meta = table.borrow_mut();
            meta.topics
                .retain(|t| !created.iter().any(|c| c.name == t.name));
            return results
                .into_iter()
                .map(|r| {
                    r.and(Err((
                        errors::KAFKA_STORAGE_ERROR,
                        format!("could not persist metadata: {e}"),
                    )))
                })
                .collect();
        }
        for s in 0..shard.shared.shard_count {
            let created = created.clone();
            let ok = mesh::call(s, move || async move {
                let shard = current();
                for t in created {
                    if let Err(e) = shard.apply_topic(t.clone(), 0, Recovery::Scan, Producers::default)
                    {
                        tracing::error!(topic = %t.name, error = %e, "could not open partition logs");
                        return false;
                    }
                }
                true
            })
            .await;
            if !ok {
                return results
                    .into_iter()
                    .map(|r| {
                        r.and(Err((
                            errors::KAFKA_STORAGE_ERROR,
                            "could not create partition logs".to_string(),
                        )))
                    })
                    .collect();
            }
        }
        for t in &created {
            tracing::info!(topic = %t.name, partitions = t.partition_count(), owners = ?t.owners, "created topic");
        }
    }
    results
}

/// Deletes topics by name (through shard 0); returns one result per name.
pub async fn delete_topics(names: Vec<String>) -> Vec<Result<Arc<TopicInfo>, TopicError>> {
    if current().shared.cluster.is_some() {
        return cluster::delete_topics(names).await;
    }
    mesh::call_detached(0, move || async move {
        let shard = current();
        let table = shard.table.as_ref().expect("shard 0 holds the topic table");
        let mut results = Vec::new();
        let mut deleted = Vec::new();
        for name in names {
            let mut meta = table.borrow_mut();
            match meta.topics.iter().position(|t| t.name == name) {
                Some(i) => {
                    let t = meta.topics.remove(i);
                    deleted.push(t.name.clone());
                    results.push(Ok(t));
                }
                None => results.push(Err((
                    errors::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("unknown topic {name:?}"),
                ))),
            }
        }
        if !deleted.is_empty() {
            if let Err(e) = table.borrow().save(&shard.shared.config.data_dir) {
                tracing::error!(error = %e, "could not persist the topic table after deletion");
            }
            for s in 0..shard.shared.shard_count {
                let deleted = deleted.clone();
                mesh::call(s, move || async move {
                    let shard = current();
                    for name in deleted {
                        shard.remove_topic(&name);
                    }
                })
                .await;
            }
            tracing::info!(topics = ?deleted, "deleted topics");
        }
        results
    })
    .await
}

/// Kafka's collision rule: names equal once '.' and '_' are treated alike (metric names
/// replace one by the other).
fn names_collide(a: &str, b: &str) -> bool {
    a != b
        && a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || (matches!(x, b'.' | b'_') && matches!(y, b'.' | b'_')))
}

// ---- Configs: what a topic runs with, and changing it at runtime (through shard 0). ----

impl Shard {
    /// The broker configs set at runtime, as this shard last heard of them.
    pub fn dynamic_configs(&self) -> Arc<DynamicBrokerConfigs> {
        self.dynamic.borrow().clone()
    }

    /// Runs `f` with this broker's static and dynamic configs.
    pub fn with_broker_view<R>(&self, f: impl FnOnce(BrokerView<'_>) -> R) -> R {
        let dynamic = self.dynamic.borrow();
        f(BrokerView {
            config: &self.shared.config,
            dynamic: &dynamic,
        })
    }

    /// What a Produce to `topic` checks and does.
    pub fn produce_settings(&self, topic: &TopicInfo) -> TopicProduceSettings {
        let known = self.produce_settings.borrow().get(&topic.id).copied();
        known.unwrap_or_else(|| self.resolve_produce_settings(topic))
    }

    fn resolve_produce_settings(&self, topic: &TopicInfo) -> TopicProduceSettings {
        self.with_broker_view(|b| TopicProduceSettings::of(&topic.configs, b))
    }

    /// Derives the Produce settings of `topic` again (its or the broker's configs changed).
    fn refresh_produce_settings(&self, topic: &TopicInfo) {
        let settings = self.resolve_produce_settings(topic);
        self.produce_settings
            .borrow_mut()
            .insert(topic.id, settings);
    }

    /// The log settings of topic `name` with `configs` on this broker. The offsets topic is
    /// compacted and never deleted by retention whatever the settings say (retention would
    /// delete live groups' committed offsets, which start-up replays from the log), and its
    /// segments follow the start-up flags only.
    fn log_config_of(
        &self,
        name: &str,
        configs: &BTreeMap<String, String>,
    ) -> Result<ringbroker_storage::LogConfig, String> {
        let mut config = self.with_broker_view(|b| topic_config::topic_log_config(configs, b))?;
        if name == crate::groups::OFFSETS_TOPIC {
            config.retention_ms = None;
            config.retention_bytes = None;
            // Nor can a cluster-wide dynamic `log.segment.bytes`/`log.roll.ms` make it roll a
            // segment (three open files) per commit: it keeps the start-up settings.
            config.segment_bytes = self.shared.config.log.segment_bytes;
            config.segment_ms = self.shared.config.log.segment_ms;
        }
        Ok(config)
    }

    /// Gives the owned partitions of `topic` the log settings its configs now say.
    fn reconfigure_owned(&self, topic: &TopicInfo) {
        let config = match self.log_config_of(&topic.name, &topic.configs) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(topic = %topic.name, error = %e, "configs not applied");
                return;
            }
        };
        for p in 0..topic.partition_count() {
            let id = PartitionId {
                topic_id: topic.id,
                index: p,
            };
            if let Some(partition) = self.partition(id) {
                partition.log.set_config(config.clone());
            }
        }
    }

    /// Takes a topic whose configs changed (the same topic id).
    fn apply_topic_configs(&self, topic: Arc<TopicInfo>) {
        let known = self.topic_ids.borrow().get(&topic.id).cloned();
        let Some(known) = known else { return };
        let updated = Arc::new(TopicInfo {
            configs: topic.configs.clone(),
            ..(*known).clone()
        });
        self.topic_ids
            .borrow_mut()
            .insert(updated.id, updated.clone());
        self.topics
            .borrow_mut()
            .insert(updated.name.clone(), updated.clone());
        self.refresh_produce_settings(&updated);
        self.reconfigure_owned(&updated);
    }

    /// Takes new dynamic broker configs and applies them to every owned partition.
    fn apply_dynamic_configs(&self, dynamic: Arc<DynamicBrokerConfigs>) {
        *self.dynamic.borrow_mut() = dynamic;
        for topic in self.all_topics() {
            self.refresh_produce_settings(&topic);
            self.reconfigure_owned(&topic);
        }
    }
}

/// A config change asked for by AlterConfigs or IncrementalAlterConfigs.
#[derive(Debug, Clone)]
pub enum ConfigChange {
    /// AlterConfigs: this becomes the whole set of overrides.
    Replace(BTreeMap<String, String>),
    /// IncrementalAlterConfigs: `(name, operation, value)`; operations are Kafka's
    /// (0 SET, 1 DELETE, 2 APPEND, 3 SUBTRACT).
    Incremental(Vec<(String, i8, Option<String>)>),
}

/// Which broker configs a BROKER resource names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerScope {
    /// Resource name "": the cluster-wide defaults.
    Cluster,
    /// Resource name = this node's id.
    ThisBroker,
}

/// Applies `change` to `current`; `list_default` gives, for a list-typed config, its default
/// (APPEND and SUBTRACT start from it when the config is not set).
fn changed_set(
    current: &BTreeMap<String, String>,
    change: ConfigChange,
    list_default: impl Fn(&str) -> Option<&'static str>,
) -> Result<BTreeMap<String, String>, TopicError> {
    let ops = match change {
        ConfigChange::Replace(set) => return Ok(set),
        ConfigChange::Incremental(ops) => ops,
    };
    let mut seen = std::collections::HashSet::new();
    if let Some((dup, _, _)) = ops.iter().find(|(name, _, _)| !seen.insert(name.as_str())) {
        return Err((
            errors::INVALID_REQUEST,
            format!("Error due to duplicate config keys: {dup}"),
        ));
    }
    let mut set = current.clone();
    for (name, op, value) in ops {
        let value = value.unwrap_or_default();
        match op {
            0 => {
                set.insert(name, value);
            }
            1 => {
                set.remove(&name);
            }
            2 | 3 => {
                let Some(default) = list_default(&name) else {
                    let verb = if op == 2 { "append" } else { "subtract" };
                    return Err((
                        errors::INVALID_CONFIG,
                        format!("Config value {verb} is not allowed for config key: {name}"),
                    ));
                };
                let old = set.get(&name).map_or(default, String::as_str);
                let mut items: Vec<String> = old
                    .split(',')
                    .map(str::trim)
                    .filter(|i| !i.is_empty())
                    .map(String::from)
                    .collect();
                let given = value.split(',').map(str::trim).filter(|i| !i.is_empty());
                if op == 2 {
                    for item in given {
                        if !items.iter().any(|i| i == item) {
                            items.push(item.to_string());
                        }
                    }
                } else {
                    let given: Vec<&str> = given.collect();
                    items.retain(|i| !given.contains(&i.as_str()));
                }
                set.insert(name, items.join(","));
            }
            other => {
                return Err((
                    errors::INVALID_REQUEST,
                    format!("unknown config operation {other} for {name}"),
                ))
            }
        }
    }
    Ok(set)
}

fn list_default_of_topic_config(name: &str) -> Option<&'static str> {
    topic_config::topic_config(name)
        .filter(|d| d.kind == topic_config::ConfigType::List)
        .map(|d| d.default)
}

/// Changes a topic's configs (through shard 0): validated, persisted with the topic table,
/// then applied on every shard (live partitions take the new log settings at once).
pub async fn alter_topic_configs(
    name: String,
    change: ConfigChange,
    validate_only: bool,
) -> Result<(), TopicError> {
    if current().shared.cluster.is_some() {
        return cluster::alter_topic_configs(name, change, validate_only).await;
    }
    mesh::call_detached(0, move || async move {
        let shard = current();
        let table = shard.table.as_ref().expect("shard 0 holds the topic table");
        let (updated, previous) = {
            let meta = table.borrow();
            let Some(topic) = meta.topics.iter().find(|t| t.name == name) else {
                return Err((
                    errors::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("unknown topic {name:?}"),
                ));
            };
            if name == crate::groups::OFFSETS_TOPIC {
                // Its policy (compact), retention and segments are the broker's to keep: it
                // holds every group's latest commit (see `log_config_of`).
                return Err((
                    errors::POLICY_VIOLATION,
                    format!("the configs of the internal topic {name} cannot be changed"),
                ));
            }
            // Names earlier releases stored without knowing them were never acted on: dropped.
            let known: BTreeMap<String, String> = topic
                .configs
                .iter()
                .filter(|(name, _)| topic_config::topic_config(name).is_some())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let set = changed_set(&known, change, list_default_of_topic_config)?;
            let set = topic_config::check_topic_configs(&set)
                .map_err(|why| (errors::INVALID_CONFIG, why))?;
            shard
                .log_config_of(&name, &set)
                .map_err(|why| (errors::INVALID_CONFIG, why))?;
            let bytes: usize = set.iter().map(|(k, v)| k.len() + v.len()).sum();
            if bytes > crate::limits::TOPIC_CONFIGS_BYTES_MAX {
                return Err((
                    errors::INVALID_CONFIG,
                    format!(
                        "{bytes} bytes of configs, more than {}",
                        crate::limits::TOPIC_CONFIGS_BYTES_MAX
                    ),
                ));
            }
            let updated = Arc::new(TopicInfo {
                configs: set,
                ..(**topic).clone()
            });
            (updated, topic.clone())
        };
        if validate_only {
            return Ok(());
        }
        let saved = {
            let mut meta = table.borrow_mut();
            if let Some(t) = meta.topics.iter_mut().find(|t| t.id == updated.id) {
                *t = updated.clone();
            }
            meta.save(&shard.shared.config.data_dir)
        };
        if let Err(e) = saved {
            let mut meta = table.borrow_mut();
            if let Some(t) = meta.topics.iter_mut().find(|t| t.id == previous.id) {
                *t = previous;
            }
            return Err((
                errors::KAFKA_STORAGE_ERROR,
                format!("could not persist metadata: {e}"),
            ));
        }
        // Each shard is sent the table's entry as it is when sent (a later change may have
        // landed meanwhile): the last message a shard gets carries the newest configs.
        for s in 0..shard.shared.shard_count {
            let latest = table
                .borrow()
                .topics
                .iter()
                .find(|t| t.id == updated.id)
                .cloned();
            let Some(latest) = latest else { break }; // deleted meanwhile
            mesh::call(
                s,
                move || async move { current().apply_topic_configs(latest) },
            )
            .await;
        }
        tracing::info!(topic = %updated.name, configs = ?updated.configs, "topic configs changed");
        Ok(())
    })
    .await
}

/// Broker configs that may be set at runtime: the synonyms of the topic configs this broker
/// acts on (each topic without its own override follows them).
pub fn broker_config_is_dynamic(name: &str) -> bool {
    topic_config::topic_config_of_synonym(name).is_some_and(|d| !d.read_only())
}

/// Changes dynamic broker configs (through shard 0): validated, persisted in
/// `meta/broker-configs.json`, then applied on every shard to topics without an override.
pub async fn alter_broker_configs(
    scope: BrokerScope,
    change: ConfigChange,
    validate_only: bool,
) -> Result<(), TopicError> {
    mesh::call_detached(0, move || async move {
        let shard = current();
        let current_set = shard.dynamic_configs();
        let layer = match scope {
            BrokerScope::Cluster => &current_set.cluster,
            BrokerScope::ThisBroker => &current_set.broker,
        };
        let list_default = |name: &str| {
            topic_config::topic_config_of_synonym(name)
                .filter(|d| d.kind == topic_config::ConfigType::List)
                .map(|d| d.default)
        };
        let set = changed_set(layer, change, list_default)?;
        let mut checked = BTreeMap::new();
        for (name, value) in &set {
            let def = topic_config::topic_config_of_synonym(name)
                .filter(|_| broker_config_is_dynamic(name));
            let Some(def) = def else {
                let why = if crate::api::describe_configs::is_broker_config(name) {
                    format!("Cannot update these configs dynamically: {name}")
                } else {
                    format!("Unknown broker config name: {name}")
                };
                return Err((errors::INVALID_CONFIG, why));
            };
            let value = def
                .check(value)
                .map_err(|why| (errors::INVALID_CONFIG, why.replace(def.name, name)))?;
            checked.insert(name.clone(), value);
        }
        let mut next = (*current_set).clone();
        match scope {
            BrokerScope::Cluster => next.cluster = checked,
            BrokerScope::ThisBroker => next.broker = checked,
        }
        // Every topic must still have valid log settings under the new defaults.
        {
            let view = BrokerView {
                config: &shard.shared.config,
                dynamic: &next,
            };
            topic_config::topic_log_config(&BTreeMap::new(), view)
                .map_err(|why| (errors::INVALID_CONFIG, why))?;
            // With its own overrides too (e.g. a topic's min.compaction.lag.ms against a new
            // default max.compaction.lag.ms): a default a topic conflicts with is refused, as
            // an accepted one would leave that topic unconfigurable (and unopenable at start).
            for topic in shard.all_topics() {
                topic_config::topic_log_config(&topic.configs, view).map_err(|why| {
                    (errors::INVALID_CONFIG, format!("topic {}: {why}", topic.name))
                })?;
            }
        }
        if validate_only {
            return Ok(());
        }
        next.save(&shard.shared.config.data_dir).map_err(|e| {
            (
                errors::KAFKA_STORAGE_ERROR,
                format!("could not persist broker configs: {e}"),
            )
        })?;
        let next = Arc::new(next);
        // Shard 0 takes them at once (a change right after this one starts from them); each
        // other shard is sent shard 0's configs as they are when sent.
        shard.apply_dynamic_configs(next.clone());
        for s in 1..shard.shared.shard_count {
            let latest = shard.dynamic_configs();
            mesh::call(s, move || async move { current().apply_dynamic_configs(latest) }).await;
        }
        tracing::info!(scope = ?scope, cluster = ?next.cluster, broker = ?next.broker, "dynamic broker configs changed");
        Ok(())
    })
    .await
}

#[cfg(test)]
mod config_tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn incremental_operations_follow_kafka() {
        let current = map(&[("retention.ms", "5"), ("segment.ms", "9")]);
        let ops = vec![
            ("retention.ms".to_string(), 1, None),
            ("cleanup.policy".to_string(), 2, Some("compact".to_string())),
            ("segment.ms".to_string(), 0, Some("10".to_string())),
        ];
        let set = changed_set(
            &current,
            ConfigChange::Incremental(ops),
            list_default_of_topic_config,
        )
        .unwrap();
        assert_eq!(
            set,
            map(&[("cleanup.policy", "delete,compact"), ("segment.ms", "10")])
        );
        let ops = vec![("cleanup.policy".to_string(), 3, Some("delete".to_string()))];
        let set = changed_set(
            &set,
            ConfigChange::Incremental(ops),
            list_default_of_topic_config,
        )
        .unwrap();
        assert_eq!(set["cleanup.policy"], "compact");
        let ops = vec![("retention.ms".to_string(), 2, Some("1".to_string()))];
        let e = changed_set(
            &set,
            ConfigChange::Incremental(ops),
            list_default_of_topic_config,
        )
        .unwrap_err();
        assert_eq!(e.0, errors::INVALID_CONFIG);
        let ops = vec![("retention.ms".to_string(), 7, Some("1".to_string()))];
        let e = changed_set(
            &set,
            ConfigChange::Incremental(ops),
            list_default_of_topic_config,
        )
        .unwrap_err();
        assert_eq!(e.0, errors::INVALID_REQUEST);
    }

    #[test]
    fn dot_and_underscore_collide() {
        assert!(names_collide("a.b", "a_b"));
        assert!(!names_collide("a.b", "a.b"));
        assert!(!names_collide("a.b", "a-b"));
    }
}

/// A topic to grow to `count` partitions; `assignments` (one replica list per new
/// partition) when the client chose brokers.
#[derive(Debug, Clone)]
pub struct NewPartitions {
    pub topic: String,
    pub count: i32,
    pub assignments: Option<Vec<Vec<i32>>>,
}

/// This single node's broker id (Metadata reports it).
const NODE_ID: i32 = 0;

/// Adds partitions to topics (through shard 0): validated as Kafka's controller does,
/// placed on the least-loaded shards, persisted, then every shard's view grows and the
/// owners open the new logs. With `validate_only`, checks without growing.
pub async fn create_partitions(
    requests: Vec<NewPartitions>,
    validate_only: bool,
) -> Vec<Result<(), TopicError>> {
    if current().shared.cluster.is_some() {
        return cluster::create_partitions(requests, validate_only).await;
    }
    mesh::call_detached(0, move || async move {
        coordinator_create_partitions(requests, validate_only).await
    })
    .await
}

/// Kafka's checks of a manual assignment for one new partition (in its order: ids sorted,
/// each registered and not repeated), on this one-broker cluster.
fn check_assignment(replicas: &[i32]) -> Result<(), TopicError> {
    let refuse = |why: String| Err((errors::INVALID_REPLICA_ASSIGNMENT, why));
    if replicas.is_empty() {
        return refuse("The manual partition assignment includes an empty replica list.".into());
    }
    let mut sorted = replicas.to_vec();
    sorted.sort_unstable();
    let mut previous = None;
    for &broker in &sorted {
        if broker != NODE_ID {
            return refuse(format!(
                "The manual partition assignment includes broker {broker}, but no such broker is registered."
            ));
        }
        if previous == Some(broker) {
            return refuse(format!(
                "The manual partition assignment includes the broker {broker} more than once."
            ));
        }
        previous = Some(broker);
    }
    Ok(())
}

/// Checks one growth against the table: the new partition count, or why not.
fn check_growth(
    meta: &ClusterMeta,
    request: &NewPartitions,
    partitions_total: usize,
) -> Result<(Arc<TopicInfo>, usize), TopicError> {
    let Some(topic) = meta.topics.iter().find(|t| t.name == request.topic) else {
        return Err((
            errors::UNKNOWN_TOPIC_OR_PARTITION,
            "This server does not host this topic-partition.".into(),
        ));
    };
    let existing = topic.partition_count();
    let count = request.count;
    if count == existing {
        return Err((
            errors::INVALID_PARTITIONS,
            format!("Topic already has {existing} partition(s)."),
        ));
    }
    if count < existing {
        return Err((
            errors::INVALID_PARTITIONS,
            format!(
                "The topic {} currently has {existing} partition(s); {count} would not be an increase.",
                request.topic
            ),
        ));
    }
    if count > crate::limits::TOPIC_PARTITIONS_MAX {
        return Err((
            errors::INVALID_PARTITIONS,
            format!(
                "{count} partitions requested (at most {} per topic)",
                crate::limits::TOPIC_PARTITIONS_MAX
            ),
        ));
    }
    let added = (count - existing) as usize;
    if let Some(assignments) = &request.assignments {
        if assignments.len() != added {
            return Err((
                errors::INVALID_REPLICA_ASSIGNMENT,
                format!(
                    "Attempted to add {added} additional partition(s), but only {} assignment(s) were specified.",
                    assignments.len()
                ),
            ));
        }
        for replicas in assignments {
            check_assignment(replicas)?;
        }
    }
    if partitions_total + added > crate::limits::PARTITIONS_MAX {
        return Err((
            errors::POLICY_VIOLATION,
            format!(
                "{added} more partitions would exceed the broker's limit of {}",
                crate::limits::PARTITIONS_MAX
            ),
        ));
    }
    Ok((topic.clone(), added))
}

async fn coordinator_create_partitions(
    requests: Vec<NewPartitions>,
    validate_only: bool,
) -> Vec<Result<(), TopicError>> {
    let shard = current();
    let table = shard.table.as_ref().expect("shard 0 holds the topic table");
    let mut results = Vec::with_capacity(requests.len());
    let mut grown: Vec<(usize, Arc<TopicInfo>)> = Vec::new(); // (table position, new info)
    let mut previous: Vec<Arc<TopicInfo>> = Vec::new();
    {
        let mut meta = table.borrow_mut();
        let mut partitions_total: usize = meta.topics.iter().map(|t| t.owners.len()).sum();
        for request in &requests {
            let checked = check_growth(&meta, request, partitions_total);
            let (topic, added) = match checked {
                Ok(found) => found,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            results.push(Ok(()));
            if validate_only {
                continue;
            }
            let mut info = (*topic).clone();
            info.owners
                .extend(meta.place(added, shard.shared.shard_count));
            info.replication.resize(
                info.owners.len(),
                crate::metadata::ReplicaSet::single(shard.shared.node_id),
            );
            let info = Arc::new(info);
            let at = meta
                .topics
                .iter()
                .position(|t| t.id == topic.id)
                .expect("checked above");
            meta.topics[at] = info.clone();
            partitions_total += added;
            previous.push(topic);
            grown.push((at, info));
        }
    }
    if grown.is_empty() {
        return results;
    }
    let saved = table.borrow().save(&shard.shared.config.data_dir);
    if let Err(e) = saved {
        tracing::error!(error = %e, "could not persist the topic table");
        let mut meta = table.borrow_mut();
        for ((at, _), before) in grown.iter().zip(&previous) {
            meta.topics[*at] = before.clone();
        }
        return results
            .into_iter()
            .map(|r| {
                r.and(Err((
                    errors::KAFKA_STORAGE_ERROR,
                    format!("could not persist metadata: {e}"),
                )))
            })
            .collect();
    }
    let infos: Vec<Arc<TopicInfo>> = grown.into_iter().map(|(_, info)| info).collect();
    for s in 0..shard.shared.shard_count {
        let infos = infos.clone();
        let ok = mesh::call(s, move || async move {
            let shard = current();
            let mut ok = true;
            for t in infos {
                if let Err(e) = shard.grow_topic(t.clone()) {
                    tracing::error!(topic = %t.name, error = %e, "could not open new partition logs");
                    ok = false;
                }
            }
            ok
        })
        .await;
        if !ok {
            return results
                .into_iter()
                .map(|r| {
                    r.and(Err((
                        errors::KAFKA_STORAGE_ERROR,
                        "could not create partition logs".to_string(),
                    )))
                })
                .collect();
        }
    }
    for t in &infos {
        tracing::info!(topic = %t.name, partitions = t.partition_count(), owners = ?t.owners, "added partitions");
    }
    results
}

impl Shard {
    /// Takes a grown topic into this shard's view and opens the new partitions it owns; its
    /// existing partitions stay as they are. A view already as large (growths may arrive
    /// out of order) or a topic deleted meanwhile is left alone.
    fn grow_topic(&self, topic: Arc<TopicInfo>) -> std::io::Result<()> {
        let (current, configs) = match self.topics.borrow().get(&topic.name) {
            Some(t) if t.id == topic.id => (t.partition_count(), t.configs.clone()),
            _ => return Ok(()),
        };
        if topic.partition_count() <= current {
            return Ok(());
        }
        // The configs this shard has are the newest it was told (an alter broadcasts the
        // latest state and keeps the owners; a growth keeps the configs).
        let topic = Arc::new(TopicInfo {
            configs,
            ..(*topic).clone()
        });
        self.apply_topic(topic, current as usize, Recovery::Scan, Producers::default)
    }
}
