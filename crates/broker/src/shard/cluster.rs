//! A shard's side of the metadata quorum (cluster mode, `--cluster`).
//!
//! The quorum ([`ringbroker_cluster::Cluster`]) runs on its own threads and publishes every
//! new [`MetadataImage`] into an [`ImageSlot`]; it wakes shard 0, whose applier task merges
//! the newest image into the local topic table (keeping each partition's owner shard stable,
//! persisted in `meta/topics.json`) and hands the topics that changed, the deleted ones and the
//! brokers view to every shard. A shard opens the logs of the partitions whose replicas
//! include this node and removes the ones no longer assigned to it. Each shard then records
//! the image's applied index, which admin requests wait for: a change submitted to the
//! controller is answered once this node's shards see it.
//!
//! Admin changes (CreateTopics, DeleteTopics, CreatePartitions, topic AlterConfigs) are checked
//! locally as on a single node, then submitted to the active controller with
//! [`Cluster::submit`]; its answer comes back to the asking shard through the mesh's control
//! mailbox. Nothing here runs without `--cluster`.

use super::{
    changed_set, current, list_default_of_topic_config, names_collide, BrokerAddress, BrokersView,
    ConfigChange, NewPartitions, NewTopic, PartitionId, Shard, TopicError,
};
use crate::errors;
use crate::metadata::{valid_topic_name, ClusterMeta, ReplicaSet, TopicInfo};
use crate::producer_state::Producers;
use crate::topic_config;
use ringbroker_cluster::{AdminError, AdminRequest, AdminResult, MetadataImage, NodeId};
use ringbroker_runtime::mesh::Mesh;
use ringbroker_runtime::notify::Notify;
use ringbroker_runtime::{executor, oneshot, op};
use ringbroker_storage::{PartitionLog, Recovery};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an admin request (all the topics it names together) waits for the controller to
/// commit it and this node to apply it.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer than its deadline an admin request waits for the quorum's answer and for
/// this shard to apply it.
const REPLY_GRACE: Duration = Duration::from_millis(500);
/// Shard 0's applier looks at the newest image at least this often (a missed wake-up, a
/// retried creation of the offsets topic).
const APPLIER_POLL: Duration = Duration::from_secs(1);
/// How long shard 0 waits for another shard to take an image (only a stopping shard takes
/// longer than a moment).
const APPLY_CALL_TIMEOUT: Duration = Duration::from_secs(5);
use crate::errors::{NOT_CONTROLLER, REQUEST_TIMED_OUT};
/// Kafka's UNKNOWN_SERVER_ERROR.
const UNKNOWN_SERVER_ERROR: i16 = -1;

/// Where the quorum's thread leaves each new image for the broker: read at start-up (the image
/// the shards are built from) and by shard 0's applier afterwards.
pub struct ImageSlot {
    latest: Mutex<Arc<MetadataImage>>,
    changed: Condvar,
    /// Set once the shards run: from then on each new image wakes shard 0.
    mesh: OnceLock<Arc<Mesh>>,
    /// A wake-up is on its way to shard 0 (one at a time: the applier reads the newest).
    wake_pending: AtomicBool,
}

impl ImageSlot {
    pub fn new() -> Arc<ImageSlot> {
        Arc::new(ImageSlot {
            latest: Mutex::new(Arc::new(MetadataImage {
                controller_id: -1,
                ..MetadataImage::default()
            })),
            changed: Condvar::new(),
            mesh: OnceLock::new(),
            wake_pending: AtomicBool::new(false),
        })
    }

    /// The quorum's `publish` callback: keeps `image` as the newest and wakes shard 0.
    pub fn publish(&self, image: Arc<MetadataImage>) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = image;
        self.changed.notify_all();
        self.wake_applier();
    }

    fn wake_applier(&self) {
        if let Some(mesh) = self.mesh.get() {
            if !self.wake_pending.swap(true, Ordering::AcqRel) {
                mesh.send_control(0, Box::new(image_arrived));
            }
        }
    }

    /// The newest image published.
    pub fn latest(&self) -> Arc<MetadataImage> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Blocks (start-up, main thread) until an image satisfies `ready`, or `timeout` passed.
    pub fn wait_until(
        &self,
        timeout: Duration,
        ready: impl Fn(&MetadataImage) -> bool,
    ) -> Option<Arc<MetadataImage>> {
        let deadline = Instant::now() + timeout;
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if ready(&latest) {
                return Some(latest.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            latest = self
                .changed
                .wait_timeout(latest, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The shards run: later images go to shard 0 (and one wake-up now, for any image that
    /// came while they started).
    pub fn connect(&self, mesh: Arc<Mesh>) {
        let _ = self.mesh.set(mesh);
        self.wake_applier();
    }
}

/// This shard's cluster state (installed on every shard thread in cluster mode).
struct Local {
    slot: Arc<ImageSlot>,
    mesh: Arc<Mesh>,
    /// `--default-replication-factor`.
    default_replication_factor: i16,
    /// Index of the newest image this shard has applied.
    applied_index: Cell<u64>,
    applied: Rc<Notify>,
    /// Shard 0: a new image is in the slot.
    arrived: Rc<Notify>,
    /// Shard 0: the image the topic table was last merged with.
    merged: RefCell<Arc<MetadataImage>>,
    /// Shard 0: a creation of the offsets topic is in flight.
    creating_offsets_topic: Cell<bool>,
    /// Admin requests of this shard waiting for the controller's answer, by request number.
    replies: RefCell<HashMap<u64, oneshot::Sender<AdminResult>>>,
    next_reply: Cell<u64>,
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
}

fn local() -> Rc<Local> {
    LOCAL.with(|l| {
        l.borrow()
            .clone()
            .expect("cluster state installed on this shard")
    })
}

/// Installs the cluster state on this shard thread; `image` is the one its topic table was
/// built from.
pub fn install(
    slot: Arc<ImageSlot>,
    mesh: Arc<Mesh>,
    default_replication_factor: i16,
    image: Arc<MetadataImage>,
) {
    let local = Local {
        slot,
        mesh,
        default_replication_factor,
        applied_index: Cell::new(image.applied_index),
        applied: Notify::new(),
        arrived: Notify::new(),
        merged: RefCell::new(image),
        creating_offsets_topic: Cell::new(false),
        replies: RefCell::new(HashMap::new()),
        next_reply: Cell::new(0),
    };
    LOCAL.with(|l| *l.borrow_mut() = Some(Rc::new(local)));
}

/// On shard 0 (a control message): a new image is waiting.
fn image_arrived() {
    LOCAL.with(|l| {
        if let Some(local) = l.borrow().as_ref() {
            local.slot.wake_pending.store(false, Ordering::Release);
            local.arrived.notify_all();
        }
    });
}

/// The replication factor of topics created with -1 (this node alone: 1).
pub fn default_replication_factor() -> i16 {
    LOCAL.with(|l| {
        l.borrow()
            .as_ref()
            .map_or(1, |local| local.default_replication_factor)
    })
}

/// Index of the newest metadata image this shard has applied (0 alone).
pub fn applied_index() -> u64 {
    LOCAL.with(|l| {
        l.borrow()
            .as_ref()
            .map_or(0, |local| local.applied_index.get())
    })
}

/// Waits until this shard has applied the metadata image at `index` (or a later one);
/// whether it did within `timeout`.
pub async fn wait_applied(index: u64, timeout: Duration) -> bool {
    let Some(local) = LOCAL.with(|l| l.borrow().clone()) else {
        return true;
    };
    let deadline = Instant::now() + timeout;
    loop {
        let applied = local.applied.notified();
        if local.applied_index.get() >= index {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || op::timeout(left, applied).await.is_none() {
            return local.applied_index.get() >= index;
        }
    }
}

/// The newest metadata image this node has (None: a broker alone, not in a cluster).
pub fn latest_image() -> Option<Arc<MetadataImage>> {
    LOCAL.with(|l| l.borrow().as_ref().map(|local| local.slot.latest()))
}

/// Removes a waiting reply when the request's future is dropped first.
struct ReplyGuard {
    local: Rc<Local>,
    key: u64,
}

impl Drop for ReplyGuard {
    fn drop(&mut self) {
        self.local.replies.borrow_mut().remove(&self.key);
    }
}

/// Sends `request` to the active controller and waits (until `deadline`) for it to be
/// committed and applied on this shard: the raft index it was applied at. A deadline already
/// past submits nothing.
pub async fn submit(request: AdminRequest, deadline: Instant) -> AdminResult {
    let timeout = deadline.saturating_duration_since(Instant::now());
    if timeout.is_zero() {
        return Err(AdminError::Timeout);
    }
    let shard = current();
    let Some(cluster) = shard.shared.cluster.clone() else {
        return Err(AdminError::Other("not a cluster member".into()));
    };
    let local = local();
    let key = local.next_reply.get();
    local.next_reply.set(key + 1);
    let (tx, rx) = oneshot::channel();
    local.replies.borrow_mut().insert(key, tx);
    let _guard = ReplyGuard {
        local: local.clone(),
        key,
    };
    let mesh = local.mesh.clone();
    let me = shard.id;
    cluster.submit(
        request,
        timeout,
        Box::new(move |result| {
            mesh.send_control(
                me,
                Box::new(move || {
                    LOCAL.with(|l| {
                        let waiting = l
                            .borrow()
                            .as_ref()
                            .and_then(|local| local.replies.borrow_mut().remove(&key));
                        if let Some(tx) = waiting {
                            tx.send(result);
                        }
                    })
                }),
            )
        }),
    );
    // The quorum answers by the deadline; a little more covers the trip back.
    let index = match op::timeout(timeout + REPLY_GRACE, rx).await {
        Some(Ok(result)) => result?,
        Some(Err(_)) | None => return Err(AdminError::Timeout),
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if wait_applied(index, left.max(REPLY_GRACE)).await {
        Ok(index)
    } else {
        Err(AdminError::Timeout)
    }
}

/// The Kafka error code and message of a refused admin request.
pub fn admin_error(e: AdminError) -> TopicError {
    let code = match &e {
        AdminError::TopicExists => errors::TOPIC_ALREADY_EXISTS,
        AdminError::UnknownTopic => errors::UNKNOWN_TOPIC_OR_PARTITION,
        AdminError::InvalidReplicationFactor(_) => errors::INVALID_REPLICATION_FACTOR,
        AdminError::InvalidPartitions(_) => errors::INVALID_PARTITIONS,
        AdminError::InvalidReplicaAssignment(_) => errors::INVALID_REPLICA_ASSIGNMENT,
        AdminError::NotController => NOT_CONTROLLER,
        AdminError::Timeout => REQUEST_TIMED_OUT,
        AdminError::NoReassignmentInProgress => errors::NO_REASSIGNMENT_IN_PROGRESS,
        AdminError::LimitExceeded(_) => errors::INVALID_REQUEST,
        AdminError::FencedLeaderEpoch
        | AdminError::InvalidUpdateVersion
        | AdminError::IneligibleReplica(_)
        | AdminError::Other(_) => UNKNOWN_SERVER_ERROR,
    };
    (code, e.to_string())
}

// ---- Images: merged into the topic table on shard 0, applied on every shard. ----

/// A partition's replica set as the image says.
fn replica_set(p: &ringbroker_cluster::PartitionImage) -> ReplicaSet {
    ReplicaSet {
        replicas: p.replicas.clone(),
        isr: p.isr.clone(),
        leader: p.leader,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
    }
}

/// Whether this node holds a replica of partition `p` of `topic`.
pub fn hosts(topic: &TopicInfo, p: usize, node_id: NodeId) -> bool {
    topic
        .replication
        .get(p)
        .is_some_and(|r| r.replicas.contains(&node_id))
}

/// What an image changes in the local topic table.
#[derive(Debug, Default)]
pub struct Merge {
    /// The table after the image (owners of existing partitions kept).
    pub meta: ClusterMeta,
    /// Topics new or different (replicas, leaders, ISR, configs, partitions).
    pub changed: Vec<Arc<TopicInfo>>,
    /// Topics gone (deleted, or created again under the same name with another id).
    pub deleted: Vec<Arc<TopicInfo>>,
    /// Whether what `topics.json` keeps (topics, owners, configs) changed.
    pub persist: bool,
}

/// Merges `image` into `meta`: every topic of the image, with the image's replica sets and
/// configs; partitions already in `meta` keep their owner shard, new ones go to the shard
/// holding the fewest partitions this node hosts.
pub fn merge_image(
    meta: &ClusterMeta,
    image: &MetadataImage,
    node_id: NodeId,
    shards: usize,
) -> Merge {
    let old: HashMap<&str, &Arc<TopicInfo>> =
        meta.topics.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut merge = Merge {
        meta: ClusterMeta {
            cluster_id: meta.cluster_id.clone(),
            topics: Vec::with_capacity(image.topics.len()),
        },
        ..Merge::default()
    };
    // Load per shard: hosted partitions of the topics kept as they are.
    let mut load = vec![0usize; shards.max(1)];
    for t in &meta.topics {
        if image.topics.get(&t.name).is_some_and(|i| i.id == t.id) {
            for (p, &o) in t.owners.iter().enumerate() {
                if o < load.len() && hosts(t, p, node_id) {
                    load[o] += 1;
                }
            }
        }
    }
    for (name, ti) in &image.topics {
        let previous = old.get(name.as_str()).filter(|t| t.id == ti.id);
        let mut owners: Vec<usize> = previous.map_or_else(Vec::new, |t| t.owners.clone());
        owners.truncate(ti.partitions.len());
        for p in owners.len()..ti.partitions.len() {
            let hosted = ti.partitions[p].replicas.contains(&node_id);
            let shard = least_loaded(&load);
            if hosted {
                load[shard] += 1;
            }
            owners.push(shard);
        }
        let info = TopicInfo {
            name: name.clone(),
            id: ti.id,
            owners,
            configs: ti.configs.clone(),
            replication: ti.partitions.iter().map(replica_set).collect(),
        };
        let info = match previous {
            Some(p) if ***p == info => (*p).clone(),
            Some(p) => {
                merge.persist |= p.owners != info.owners || p.configs != info.configs;
                let info = Arc::new(info);
                merge.changed.push(info.clone());
                info
            }
            None => {
                merge.persist = true;
                let info = Arc::new(info);
                merge.changed.push(info.clone());
                info
            }
        };
        merge.meta.topics.push(info);
    }
    for t in &meta.topics {
        if image.topics.get(&t.name).is_none_or(|i| i.id != t.id) {
            merge.persist = true;
            merge.deleted.push(t.clone());
        }
    }
    merge
}

fn least_loaded(load: &[usize]) -> usize {
    load.iter()
        .enumerate()
        .min_by_key(|&(i, &l)| (l, i))
        .map_or(0, |(i, _)| i)
}

/// The brokers view an image gives.
pub fn brokers_view(image: &MetadataImage) -> BrokersView {
    BrokersView {
        brokers: image
            .brokers
            .values()
            .map(|b| {
                (
                    b.id,
                    BrokerAddress {
                        id: b.id,
                        host: b.host.clone(),
                        port: b.port,
                        fenced: b.fenced,
                        listeners: b.listeners.clone(),
                    },
                )
            })
            .collect(),
        controller_id: image.controller_id,
    }
}

/// Start-up: removes the partition directories in `data_dir` this node does not host under
/// `meta` (topics deleted while it was down, partitions assigned elsewhere). Directory names
/// are `<topic>-<partition>`; anything else is left alone.
pub fn remove_unhosted_dirs(data_dir: &Path, meta: &ClusterMeta, node_id: NodeId) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    let topics: HashMap<&str, &Arc<TopicInfo>> =
        meta.topics.iter().map(|t| (t.name.as_str(), t)).collect();
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((topic, partition)) = name.rsplit_once('-') else {
            continue;
        };
        let Ok(partition) = partition.parse::<usize>() else {
            continue;
        };
        if !valid_topic_name(topic) {
            continue;
        }
        let hosted = topics
            .get(topic)
            .is_some_and(|t| hosts(t, partition, node_id));
        if hosted {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => tracing::info!(
                dir = %entry.path().display(),
                "removed a partition this node no longer hosts"
            ),
            Err(e) => tracing::warn!(
                dir = %entry.path().display(),
                error = %e,
                "could not remove a partition this node no longer hosts"
            ),
        }
    }
}

/// Shard 0's task (cluster mode): merges each new image into the topic table and applies it
/// on every shard, in order, until the shard drains; creates the offsets topic through the
/// controller when the cluster has none.
pub async fn run_applier() {
    let local = local();
    while !crate::server::draining() {
        let arrived = local.arrived.notified();
        let image = local.slot.latest();
        let merged = Arc::ptr_eq(&image, &local.merged.borrow());
        if !merged {
            apply_image(image.clone()).await;
            *local.merged.borrow_mut() = image.clone();
        }
        ensure_offsets_topic(&local, &image);
        let _ = op::timeout(APPLIER_POLL, arrived).await;
    }
}

/// Shard 0: merges `image` into the table, persists it when needed, and applies the changes on
/// every shard (itself included).
async fn apply_image(image: Arc<MetadataImage>) {
    let shard = current();
    let table = shard.table.as_ref().expect("shard 0 holds the topic table");
    let merge = merge_image(
        &table.borrow(),
        &image,
        shard.shared.node_id,
        shard.shared.shard_count,
    );
    *table.borrow_mut() = merge.meta;
    if merge.persist {
        if let Err(e) = table.borrow().save(&shard.shared.config.data_dir) {
            // The quorum keeps the truth; the file only keeps owner shards stable.
            tracing::error!(error = %e, "could not persist the topic table");
        }
    }
    let view = Arc::new(brokers_view(&image));
    let credentials = Arc::new(crate::security::credentials::Credentials::from_image(
        &image.scram_credentials,
    ));
    let changed = Arc::new(merge.changed);
    let deleted = Arc::new(merge.deleted);
    let index = image.applied_index;
    // ACLs changed: one new table, installed on every shard with the image.
    let acls = (image.acls != local().merged.borrow().acls).then(|| {
        Arc::new(crate::security::authorizer::AclTable::build(
            &shard.shared.config.security,
            image.acls.clone(),
        ))
    });
    for s in 0..shard.shared.shard_count {
        // A stopping shard may have left its loop: no call waits for it then.
        if crate::server::draining() {
            return;
        }
        let (view, changed, deleted) = (view.clone(), changed.clone(), deleted.clone());
        let acls = acls.clone();
        let credentials = credentials.clone();
        let applied = ringbroker_runtime::mesh::call(s, move || async move {
            let shard = current();
            shard.set_brokers(view);
            crate::security::credentials::install(credentials);
            if let Some(acls) = acls {
                crate::security::authorizer::install(acls);
            }
            for t in deleted.iter() {
                shard.remove_topic_id(t);
            }
            for t in changed.iter() {
                if let Err(e) = shard.sync_topic(t.clone()) {
                    tracing::error!(topic = %t.name, error = %e, "could not open partition logs");
                }
            }
            let local = local();
            if index > local.applied_index.get() {
                local.applied_index.set(index);
            }
            local.applied.notify_all();
        });
        if op::timeout(APPLY_CALL_TIMEOUT, applied).await.is_none() {
            tracing::error!(shard = s, "a shard did not take a metadata image in time");
        }
    }
    for t in deleted.iter() {
        tracing::info!(topic = %t.name, "topic deleted (metadata quorum)");
    }
    for t in changed.iter() {
        tracing::debug!(topic = %t.name, partitions = t.partition_count(), "topic changed (metadata quorum)");
    }
}

/// Shard 0: asks the controller for `__consumer_offsets` when the cluster has a controller,
/// enough unfenced brokers for its replication factor and no such topic yet.
fn ensure_offsets_topic(local: &Rc<Local>, image: &MetadataImage) {
    if image.topics.contains_key(crate::groups::OFFSETS_TOPIC)
        || image.controller_id < 0
        || local.creating_offsets_topic.get()
    {
        return;
    }
    let unfenced = image.brokers.values().filter(|b| !b.fenced).count();
    let replication_factor = local.default_replication_factor;
    if unfenced < replication_factor as usize {
        return;
    }
    local.creating_offsets_topic.set(true);
    let local = local.clone();
    drop(executor::spawn(async move {
        let configs = BTreeMap::from([
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("retention.ms".to_string(), "-1".to_string()),
        ]);
        let result = submit(
            AdminRequest::CreateTopic {
                name: crate::groups::OFFSETS_TOPIC.to_string(),
                partitions: crate::groups::OFFSETS_PARTITIONS as i32,
                replication_factor,
                assignments: None,
                configs,
            },
            Instant::now() + ADMIN_TIMEOUT,
        )
        .await;
        match result {
            Ok(_) | Err(AdminError::TopicExists) => {
                tracing::info!(replication_factor, "offsets topic created")
            }
            Err(e) => tracing::warn!(error = %e, "could not create the offsets topic yet"),
        }
        local.creating_offsets_topic.set(false);
    }));
}

impl Shard {
    /// Takes a topic as the metadata image says it now is: a new topic is added (its hosted
    /// partitions opened); a known one gets the new replica sets, configs and partitions,
    /// opening the partitions it now hosts and removing those it no longer does. Ends with
    /// the replication hook, as every change of the view does.
    fn sync_topic(&self, topic: Arc<TopicInfo>) -> std::io::Result<()> {
        let known = self.topic_ids.borrow().get(&topic.id).cloned();
        let Some(known) = known else {
            self.apply_topic(topic.clone(), 0, Recovery::Scan, Producers::default)?;
            drop(crate::groups::offsets_topic_changed(self, &topic));
            return Ok(());
        };
        let node_id = self.shared.node_id;
        let config = self
            .log_config_of(&topic.name, &topic.configs)
            .map_err(std::io::Error::other)?;
        for (p, &owner) in topic.owners.iter().enumerate() {
            let id = PartitionId {
                topic_id: topic.id,
                index: p as i32,
            };
            let wanted = owner == self.id && hosts(&topic, p, node_id);
            let open = self.partitions.borrow().contains_key(&id);
            if wanted && !open {
                let dir = crate::metadata::partition_dir(
                    &self.shared.config.data_dir,
                    &topic.name,
                    p as i32,
                );
                let log = PartitionLog::open_with(&dir, config.clone(), Recovery::Scan)?;
                self.partitions.borrow_mut().insert(
                    id,
                    Rc::new(super::Partition {
                        id,
                        topic: topic.name.clone(),
                        log: Rc::new(log),
                        producers: Producers::default(),
                        replica: Default::default(),
                    }),
                );
            } else if !wanted && open {
                self.remove_partition(id, &topic.name);
            }
        }
        self.topic_ids.borrow_mut().insert(topic.id, topic.clone());
        self.topics
            .borrow_mut()
            .insert(topic.name.clone(), topic.clone());
        if known.configs != topic.configs {
            self.refresh_produce_settings(&topic);
            self.reconfigure_owned(&topic);
        }
        crate::replication::topic_changed(self, &topic);
        // A new leader of an offsets partition coordinates its groups (loads them).
        drop(crate::groups::offsets_topic_changed(self, &topic));
        Ok(())
    }

    /// Drops an owned partition and deletes its files.
    fn remove_partition(&self, id: PartitionId, topic: &str) {
        let removed = self.partitions.borrow_mut().remove(&id);
        crate::cleaner::partition_removed(id);
        crate::replication::partition_removed(self, id);
        if let Some(partition) = removed {
            if let Err(e) = partition.log.remove_files() {
                tracing::error!(topic, partition = id.index, error = %e, "could not delete partition files");
            }
        }
    }

    /// Removes `topic` (this id) from the view, deleting the files of its owned partitions.
    fn remove_topic_id(&self, topic: &TopicInfo) {
        let same = self
            .topics
            .borrow()
            .get(&topic.name)
            .is_some_and(|t| t.id == topic.id);
        if same {
            self.remove_topic(&topic.name);
        } else if self.topic_ids.borrow_mut().remove(&topic.id).is_some() {
            for p in 0..topic.partition_count() {
                self.remove_partition(
                    PartitionId {
                        topic_id: topic.id,
                        index: p,
                    },
                    &topic.name,
                );
            }
        }
    }
}

// ---- Admin requests in cluster mode: checked here, decided by the controller. ----

/// The brokers the controller may place replicas on (unfenced), as this shard last heard.
fn unfenced_brokers(shard: &Shard) -> usize {
    shard
        .brokers()
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .count()
}

/// CreateTopics in cluster mode: each topic checked locally (name, collisions, partitions,
/// configs), then created by the controller; `validate_only` answers from the local checks.
pub async fn create_topics(
    topics: Vec<NewTopic>,
    validate_only: bool,
) -> Vec<Result<Arc<TopicInfo>, TopicError>> {
    let shard = current();
    // One deadline for the whole request, however many topics it names.
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    let mut results = Vec::with_capacity(topics.len());
    let mut partitions_total: usize = shard
        .all_topics()
        .iter()
        .map(|t| t.partition_count() as usize)
        .sum();
    for t in topics {
        let result = async {
            let partitions = if t.partitions == -1 {
                shard.shared.config.default_partitions
            } else {
                t.partitions
            };
            let replication_factor = if t.replication_factor == -1 {
                default_replication_factor()
            } else {
                t.replication_factor
            };
            if !valid_topic_name(&t.name) {
                return Err((
                    errors::INVALID_TOPIC_EXCEPTION,
                    format!("invalid topic name {:?}", t.name),
                ));
            }
            if shard.topic(&t.name).is_some() {
                return Err((
                    errors::TOPIC_ALREADY_EXISTS,
                    format!("topic {:?} already exists", t.name),
                ));
            }
            if let Some(other) = shard
                .all_topics()
                .into_iter()
                .find(|x| names_collide(&x.name, &t.name))
            {
                return Err((
                    errors::INVALID_TOPIC_EXCEPTION,
                    format!(
                        "Topic '{}' collides with existing topic: {} ('.' and '_' may collide in metric names)",
                        t.name, other.name
                    ),
                ));
            }
            if partitions <= 0 || partitions > crate::limits::TOPIC_PARTITIONS_MAX {
                return Err((
                    errors::INVALID_PARTITIONS,
                    format!(
                        "{partitions} partitions requested (1 to {} per topic)",
                        crate::limits::TOPIC_PARTITIONS_MAX
                    ),
                ));
            }
            if partitions_total + partitions as usize > crate::limits::PARTITIONS_MAX {
                return Err((
                    errors::POLICY_VIOLATION,
                    format!(
                        "{partitions} more partitions would exceed the broker's limit of {}",
                        crate::limits::PARTITIONS_MAX
                    ),
                ));
            }
            let configs = topic_config::check_cluster_topic_configs(&t.configs)
                .and_then(|c| shard.log_config_of(&t.name, &c).map(|_| c))
                .map_err(|why| (errors::INVALID_CONFIG, why))?;
            if t.assignments.is_none() {
                let unfenced = unfenced_brokers(&shard);
                if replication_factor < 1 || replication_factor as usize > unfenced {
                    return Err((
                        errors::INVALID_REPLICATION_FACTOR,
                        format!(
                            "Replication factor: {replication_factor} larger than available brokers: {unfenced}."
                        ),
                    ));
                }
            }
            partitions_total += partitions as usize;
            if validate_only {
                let replicas = match &t.assignments {
                    Some(a) => a.clone(),
                    None => (0..partitions)
                        .map(|_| vec![-1; replication_factor as usize])
                        .collect(),
                };
                return Ok(Arc::new(TopicInfo {
                    name: t.name.clone(),
                    id: uuid::Uuid::nil(),
                    owners: vec![0; replicas.len()],
                    configs,
                    replication: replicas
                        .into_iter()
                        .map(|r| ReplicaSet {
                            isr: r.clone(),
                            leader: r.first().copied().unwrap_or(-1),
                            replicas: r,
                            leader_epoch: 0,
                            partition_epoch: 0,
                        })
                        .collect(),
                }));
            }
            submit(
                AdminRequest::CreateTopic {
                    name: t.name.clone(),
                    partitions,
                    replication_factor,
                    assignments: t.assignments.clone(),
                    configs,
                },
                deadline,
            )
            .await
            .map_err(admin_error)?;
            let created = shard.topic(&t.name).ok_or((
                REQUEST_TIMED_OUT,
                format!("topic {:?} was created but is not known here yet", t.name),
            ))?;
            tracing::info!(topic = %t.name, partitions, replication_factor, "created topic (metadata quorum)");
            Ok(created)
        }
        .await;
        results.push(result);
    }
    results
}

/// DeleteTopics in cluster mode: each known topic deleted by the controller.
pub async fn delete_topics(names: Vec<String>) -> Vec<Result<Arc<TopicInfo>, TopicError>> {
    let shard = current();
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    let mut results = Vec::with_capacity(names.len());
    for name in names {
        let Some(info) = shard.topic(&name) else {
            results.push(Err((
                errors::UNKNOWN_TOPIC_OR_PARTITION,
                format!("unknown topic {name:?}"),
            )));
            continue;
        };
        let result = submit(AdminRequest::DeleteTopic { name: name.clone() }, deadline)
            .await
            .map(|_| info)
            .map_err(admin_error);
        if result.is_ok() {
            tracing::info!(topic = %name, "deleted topic (metadata quorum)");
        }
        results.push(result);
    }
    results
}

/// CreatePartitions in cluster mode: checked against this shard's view, grown by the
/// controller (which checks explicit assignments against the registered brokers).
pub async fn create_partitions(
    requests: Vec<NewPartitions>,
    validate_only: bool,
) -> Vec<Result<(), TopicError>> {
    let shard = current();
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    let mut results = Vec::with_capacity(requests.len());
    for request in requests {
        let result = async {
            let topic = shard.topic(&request.topic);
            crate::shard::check_partition_count(topic.as_deref(), &request)?;
            let count = request.count;
            if validate_only {
                return Ok(());
            }
            submit(
                AdminRequest::CreatePartitions {
                    name: request.topic.clone(),
                    total: count,
                    assignments: request.assignments.clone(),
                },
                deadline,
            )
            .await
            .map_err(admin_error)?;
            tracing::info!(topic = %request.topic, partitions = count, "added partitions (metadata quorum)");
            Ok(())
        }
        .await;
        results.push(result);
    }
    results
}

/// A topic's AlterConfigs/IncrementalAlterConfigs in cluster mode: the resulting set checked
/// as on a single node, then set whole by the controller.
pub async fn alter_topic_configs(
    name: String,
    change: ConfigChange,
    validate_only: bool,
) -> Result<(), TopicError> {
    let shard = current();
    let Some(topic) = shard.topic(&name) else {
        return Err((
            errors::UNKNOWN_TOPIC_OR_PARTITION,
            format!("unknown topic {name:?}"),
        ));
    };
    if name == crate::groups::OFFSETS_TOPIC {
        return Err((
            errors::POLICY_VIOLATION,
            format!("the configs of the internal topic {name} cannot be changed"),
        ));
    }
    let known: BTreeMap<String, String> = topic
        .configs
        .iter()
        .filter(|(name, _)| topic_config::topic_config(name).is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let set = changed_set(&known, change, list_default_of_topic_config)?;
    let set = topic_config::check_cluster_topic_configs(&set)
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
    if validate_only {
        return Ok(());
    }
    submit(
        AdminRequest::SetTopicConfigs {
            name: name.clone(),
            configs: set.clone(),
        },
        Instant::now() + ADMIN_TIMEOUT,
    )
    .await
    .map_err(admin_error)?;
    tracing::info!(topic = %name, configs = ?set, "topic configs changed (metadata quorum)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringbroker_cluster::{BrokerInfo, PartitionImage, TopicImage};

    fn partition(replicas: &[i32], leader: i32, epoch: i32) -> PartitionImage {
        PartitionImage {
            replicas: replicas.to_vec(),
            isr: replicas.to_vec(),
            leader,
            leader_epoch: epoch,
            partition_epoch: epoch,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
            target_replicas: Vec::new(),
        }
    }

    fn image(topics: &[(&str, uuid::Uuid, Vec<PartitionImage>)]) -> MetadataImage {
        MetadataImage {
            cluster_id: "c".into(),
            applied_index: 7,
            brokers: BTreeMap::from([(
                1,
                BrokerInfo {
                    id: 1,
                    host: "h".into(),
                    port: 1,
                    listeners: Vec::new(),
                    fenced: false,
                    incarnation: 1,
                },
            )]),
            topics: topics
                .iter()
                .map(|(name, id, partitions)| {
                    (
                        name.to_string(),
                        TopicImage {
                            id: *id,
                            partitions: partitions.clone(),
                            configs: BTreeMap::new(),
                        },
                    )
                })
                .collect(),
            controller_id: 1,
            ..Default::default()
        }
    }

    #[test]
    fn merge_keeps_owners_places_hosted_partitions_and_finds_deletions() {
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let first = image(&[(
            "a",
            a,
            vec![
                partition(&[1, 2], 1, 0),
                partition(&[2, 3], 2, 0),
                partition(&[1, 3], 3, 0),
            ],
        )]);
        let m = merge_image(&ClusterMeta::default(), &first, 1, 2);
        assert_eq!(m.changed.len(), 1);
        assert!(m.persist && m.deleted.is_empty());
        let t = &m.meta.topics[0];
        // Hosted partitions 0 and 2 spread over both shards.
        assert_ne!(t.owners[0], t.owners[2]);
        assert_eq!(t.replication[2].leader, 3);
        // Same image again: nothing changes.
        let again = merge_image(&m.meta, &first, 1, 2);
        assert!(again.changed.is_empty() && again.deleted.is_empty() && !again.persist);
        // A leader change only: changed, owners kept, nothing to persist.
        let moved = image(&[(
            "a",
            a,
            vec![
                partition(&[1, 2], 2, 1),
                partition(&[2, 3], 2, 0),
                partition(&[1, 3], 3, 0),
            ],
        )]);
        let m2 = merge_image(&m.meta, &moved, 1, 2);
        assert_eq!(m2.changed.len(), 1);
        assert!(!m2.persist);
        assert_eq!(m2.meta.topics[0].owners, t.owners);
        assert_eq!(m2.meta.topics[0].replication[0].leader_epoch, 1);
        // Deleted, and another topic created.
        let other = image(&[("b", b, vec![partition(&[1], 1, 0)])]);
        let m3 = merge_image(&m2.meta, &other, 1, 2);
        assert_eq!(m3.deleted.len(), 1);
        assert_eq!(m3.deleted[0].id, a);
        assert_eq!(m3.changed[0].id, b);
        // Created again under the same name: the old one is deleted.
        let again_b = image(&[("b", a, vec![partition(&[1], 1, 0)])]);
        let m4 = merge_image(&m3.meta, &again_b, 1, 2);
        assert_eq!(m4.deleted[0].id, b);
        assert_eq!(m4.changed[0].id, a);
    }

    #[test]
    fn unhosted_partition_dirs_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let a = uuid::Uuid::new_v4();
        let m = merge_image(
            &ClusterMeta::default(),
            &image(&[(
                "a",
                a,
                vec![partition(&[1, 2], 1, 0), partition(&[2, 3], 2, 0)],
            )]),
            1,
            1,
        );
        for d in ["a-0", "a-1", "gone-0", "meta", "not-a-partition-x"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        remove_unhosted_dirs(dir.path(), &m.meta, 1);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["a-0", "meta", "not-a-partition-x"]);
    }
}
