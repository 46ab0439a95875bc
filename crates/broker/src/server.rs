//! Start-up and shutdown of a broker: lock the data dir, load the topic table, bind one
//! SO_REUSEPORT listener per shard, start one pinned thread per CPU (each with its own ring,
//! mesh endpoint and partitions), and on shutdown flush every log and leave a clean marker.
//!
//! Shutdown runs in two phases across all shards: *drain* (stop accepting, let every
//! connection finish the requests it has read and leave, refuse to read more), then *close*
//! (sync and close every log). The clean-shutdown marker is written, fsync'd with its
//! directory, only when every shard drained in time and reported its logs closed; it is
//! removed (with a directory fsync) at start before anything else is written.

use crate::config::BrokerConfig;
use crate::config::FlushPolicy;
use crate::health::Heartbeats;
use crate::metadata::ClusterMeta;
use crate::shard::{Shard, Shared};
use ringbroker_runtime::executor::{spawn, Runtime};
use ringbroker_runtime::mesh::Mesh;
use ringbroker_runtime::notify::Notify;
use ringbroker_runtime::op::{self, SharedFd};
use ringbroker_runtime::{affinity, KernelFeatures, RingConfig};
use ringbroker_storage::Recovery;
use socket2::{Domain, Protocol, Socket, Type};
use std::cell::{Cell, RefCell};
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{mpsc, Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const CLEAN_SHUTDOWN_MARKER: &str = "clean-shutdown";
const LISTEN_BACKLOG: i32 = 1024;
/// At shutdown, connections have this long to finish the requests they have read (a long-poll
/// Fetch waits out its `max_wait_ms`).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Past [`DRAIN_TIMEOUT`], the connections still open are shut both ways (a response a client
/// does not read can then fail), and get this long to leave; past it, logs are closed anyway
/// and no clean-shutdown marker is written.
pub const DRAIN_FORCE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error("data directory {0} is in use by another running ringbroker (lock file {0}/.lock is held); stop it or choose another --data-dir")]
    Locked(PathBuf),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("cannot serve metrics on {0}: {1}")]
    MetricsListen(SocketAddr, std::io::Error),
    #[error("shard {shard} on CPU {cpu}: {reason}")]
    Shard {
        shard: usize,
        cpu: usize,
        reason: String,
    },
    #[error("{0}")]
    Other(String),
    /// A TLS file (`--tls-cert-file`, `--tls-key-file`, `--tls-client-ca-file`) is missing
    /// or unusable, or a TLS listener has none.
    #[error("TLS: {0}")]
    Tls(String),
}

/// A running broker: its shard threads and how to stop them.
pub struct Broker {
    pub listen_addr: SocketAddr,
    /// Where `/metrics` and `/health` answer, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    metrics: Option<crate::metrics::MetricsServer>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    pub shared: Arc<Shared>,
    pub previous_shutdown_clean: bool,
    mesh: Arc<Mesh>,
    /// One per shard; each returns whether its logs closed and synced.
    threads: Vec<JoinHandle<bool>>,
    _lock: File,
}

/// How the main thread tells a shard to stop, in two steps.
#[derive(Default)]
struct StopSignals {
    /// A stop was asked for (possibly before the shard finished starting).
    stopping: Cell<bool>,
    drain: Notify,
    close: Notify,
    /// Told when the shard has stopped accepting and asked its connections to leave.
    drain_ack: RefCell<Option<mpsc::Sender<usize>>>,
}

thread_local! {
    static STOP: RefCell<Option<Rc<StopSignals>>> = const { RefCell::new(None) };
    static DRAINING: Cell<bool> = const { Cell::new(false) };
    /// Released when the shard starts draining.
    static DRAIN_STARTED: Rc<Notify> = Notify::new();
    /// Client connections accepted here (they may have moved to another shard since).
    static ACCEPTED: RefCell<Vec<Weak<OwnedFd>>> = const { RefCell::new(Vec::new()) };
}

/// On a shard: whether it is stopping. A connection then reads no further request; it answers
/// those it has read and leaves.
pub fn draining() -> bool {
    DRAINING.with(Cell::get)
}

/// On a shard: resolves once it starts draining (at once if it has), so that requests waiting
/// for a client-chosen time (a long-poll Fetch's `max_wait_ms`) end with the drain instead of
/// holding the stop back.
pub async fn drain_started() {
    let notify = DRAIN_STARTED.with(Rc::clone);
    let started = notify.notified();
    if draining() {
        return;
    }
    started.await;
}

/// Removes the clean-shutdown marker (and makes the removal durable); whether it was there.
fn take_marker(marker: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(marker) {
        Ok(()) => {
            if let Some(dir) = marker.parent() {
                File::open(dir)?.sync_all()?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes the clean-shutdown marker durably (the file, then its directory entry).
fn write_marker(marker: &Path) -> std::io::Result<()> {
    File::create(marker)?.sync_all()?;
    let dir = marker
        .parent()
        .ok_or_else(|| std::io::Error::other("marker path has no directory"))?;
    File::open(dir)?.sync_all()
}

/// Takes the data directory's lock (`<dir>/.lock`, flock) for as long as the file lives; an
/// offline tool (`ringbroker user create`) takes it too, so it never writes under a broker.
pub fn lock_data_dir(dir: &Path) -> Result<File, StartError> {
    std::fs::create_dir_all(dir).map_err(|e| StartError::DataDir(dir.to_path_buf(), e))?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(|e| StartError::DataDir(dir.to_path_buf(), e))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(StartError::Locked(dir.to_path_buf()));
    }
    Ok(file)
}

fn bind_listener(addr: SocketAddr) -> std::io::Result<OwnedFd> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

impl Broker {
    /// Starts every shard; returns once all of them serve.
    pub fn start(config: BrokerConfig, features: &KernelFeatures) -> Result<Broker, StartError> {
        let lock = lock_data_dir(&config.data_dir)?;
        let marker = config.data_dir.join("meta").join(CLEAN_SHUTDOWN_MARKER);
        // Before anything is written: a crash from here on must make the next start recover.
        let previous_shutdown_clean =
            take_marker(&marker).map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?;
        let mut meta = ClusterMeta::load_or_create(&config.data_dir)
            .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?;
        let shards = config.cores.len();
        // A cluster member gets the offsets topic (and every other) from the metadata quorum.
        let clustered = config.cluster.is_some();
        if !clustered
            && !meta
                .topics
                .iter()
                .any(|t| t.name == crate::groups::OFFSETS_TOPIC)
        {
            let owners = meta.place(crate::groups::OFFSETS_PARTITIONS, shards);
            let mut configs = std::collections::BTreeMap::new();
            configs.insert("retention.ms".to_string(), "-1".to_string());
            meta.topics.push(Arc::new(crate::metadata::TopicInfo {
                name: crate::groups::OFFSETS_TOPIC.to_string(),
                id: uuid::Uuid::new_v4(),
                replication: vec![
                    crate::metadata::ReplicaSet::single(
                        crate::metadata::SINGLE_NODE_ID
                    );
                    owners.len()
                ],
                owners,
                configs,
            }));
        }
        // The offsets topic is compacted (the latest commit per group, topic and partition
        // is kept); one created by an earlier release gets the policy now.
        if let Some(at) = meta
            .topics
            .iter()
            .position(|t| t.name == crate::groups::OFFSETS_TOPIC && !clustered)
        {
            let offsets = &meta.topics[at];
            if offsets.configs.get("cleanup.policy").map(String::as_str) != Some("compact") {
                let mut info = (**offsets).clone();
                info.configs
                    .insert("cleanup.policy".to_string(), "compact".to_string());
                meta.topics[at] = Arc::new(info);
                meta.save(&config.data_dir)
                    .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?;
            }
        }
        if meta.reassign_orphans(shards) {
            tracing::info!(
                shards,
                "shard count changed: partitions of missing shards reassigned"
            );
            meta.save(&config.data_dir)
                .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?;
        }

        // Per listener, the first socket resolves port 0; each other shard's joins its
        // SO_REUSEPORT group. `sockets[shard][listener]`.
        let mut sockets: Vec<Vec<OwnedFd>> = (0..shards).map(|_| Vec::new()).collect();
        let mut listener_infos = Vec::with_capacity(config.listeners.len());
        for (index, listener) in config.listeners.iter().enumerate() {
            let first =
                bind_listener(listener.addr).map_err(|e| StartError::Listen(listener.addr, e))?;
            let bound = socket2::SockRef::from(&first)
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| StartError::Other("listener has no local address".into()))?;
            sockets[0].push(first);
            for shard_sockets in sockets.iter_mut().skip(1) {
                shard_sockets.push(bind_listener(bound).map_err(|e| StartError::Listen(bound, e))?);
            }
            let (advertised_host, advertised_port) = listener
                .advertised
                .clone()
                .unwrap_or_else(|| (bound.ip().to_string(), bound.port()));
            listener_infos.push(crate::security::ListenerInfo {
                index,
                name: listener.name.clone(),
                protocol: listener.protocol,
                bound,
                advertised_host,
                advertised_port,
            });
        }
        let (tls, ktls) = build_tls(&config)?;
        let listen_addr = listener_infos[0].bound;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => {
                Some(crate::metrics::bind(addr).map_err(|e| StartError::MetricsListen(addr, e))?)
            }
            None => None,
        };
        let (advertised_host, advertised_port) = (
            listener_infos[0].advertised_host.clone(),
            listener_infos[0].advertised_port,
        );
        let use_msg_ring = config.use_msg_ring && features.msg_ring;
        let (mesh, endpoints) =
            Mesh::build(shards, use_msg_ring).map_err(|e| StartError::Other(e.to_string()))?;
        let membership = match &config.cluster {
            Some(settings) => Some(join_cluster(
                &config,
                settings,
                (&advertised_host, advertised_port),
                &listener_infos,
                &mut meta,
            )?),
            None => None,
        };
        let shared = Arc::new(Shared {
            config: config.clone(),
            advertised_host,
            advertised_port,
            listeners: listener_infos,
            cluster_id: membership
                .as_ref()
                .map_or_else(|| meta.cluster_id.clone(), |m| m.image.cluster_id.clone()),
            recovered_clean: previous_shutdown_clean,
            shard_count: shards,
            shards_loaded: std::sync::atomic::AtomicUsize::new(0),
            offsets_loaded: Default::default(),
            connections: Arc::default(),
            node_id: config
                .cluster
                .as_ref()
                .map_or(crate::metadata::SINGLE_NODE_ID, |c| c.node_id),
            cluster: membership.as_ref().map(|m| m.cluster.clone()),
            tls,
            ktls,
        });
        let meta = Arc::new(meta);
        // The ACLs every shard starts with: the metadata image's in a cluster, else the
        // data dir's.
        let acls = match &membership {
            Some(m) => m.image.acls.clone(),
            None => crate::security::authorizer::load(&config.data_dir)
                .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?,
        };
        let acl_table = Arc::new(crate::security::authorizer::AclTable::build(
            &config.security,
            acls,
        ));
        // SCRAM credentials every shard starts with: the quorum's (a cluster member), else the
        // data directory's file.
        let credentials = Arc::new(match &membership {
            Some(m) => {
                crate::security::credentials::Credentials::from_image(&m.image.scram_credentials)
            }
            None => crate::security::credentials::Credentials::load(&config.data_dir)
                .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?,
        });
        let heartbeats = Arc::new(Heartbeats::new(shards));
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), String>)>();
        let mut threads = Vec::with_capacity(shards);
        for ((id, endpoint), listeners) in endpoints.into_iter().enumerate().zip(sockets) {
            let cpu = config.cores[id];
            let shared = shared.clone();
            let meta = meta.clone();
            let ready_tx = ready_tx.clone();
            let features = features.clone();
            let ring = RingConfig {
                iowq_cpu: Some(cpu),
                ..config.ring.clone()
            };
            let clean = previous_shutdown_clean;
            let heartbeats = heartbeats.clone();
            let acl_table = acl_table.clone();
            let credentials = credentials.clone();
            let member = membership.as_ref().map(|m| {
                (
                    m.slot.clone(),
                    mesh.clone(),
                    m.default_replication_factor,
                    m.image.clone(),
                )
            });
            let thread = std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || {
                    let setup = (|| -> Result<Runtime, String> {
                        affinity::pin_current_thread(cpu)
                            .map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))?;
                        let rt = Runtime::with_features(&ring, &features)
                            .map_err(|e| format!("io_uring setup: {e}"))?;
                        ringbroker_runtime::executor::add_turn_hook(Rc::new(move || {
                            heartbeats.beat(id)
                        }));
                        endpoint.install();
                        crate::security::authorizer::install(acl_table);
                        let recovery = if clean {
                            Recovery::TrustCleanShutdown
                        } else {
                            Recovery::Scan
                        };
                        let shard = Shard::install(id, shared, &meta, recovery)
                            .map_err(|e| format!("opening partitions: {e}"))?;
                        crate::security::credentials::install(credentials);
                        if let Some((slot, mesh, replication_factor, image)) = member {
                            shard
                                .set_brokers(Arc::new(crate::shard::cluster::brokers_view(&image)));
                            crate::shard::cluster::install(slot, mesh, replication_factor, image);
                            // The topics were taken before the brokers view: tell the
                            // replication hook again, now that it knows every broker.
                            for topic in shard.all_topics() {
                                crate::replication::topic_changed(&shard, &topic);
                            }
                        }
                        Ok(rt)
                    })();
                    let rt = match setup {
                        Ok(rt) => rt,
                        Err(reason) => {
                            let _ = ready_tx.send((id, Err(reason)));
                            return false;
                        }
                    };
                    let stop = Rc::new(StopSignals::default());
                    STOP.with(|s| *s.borrow_mut() = Some(stop.clone()));
                    let _ = ready_tx.send((id, Ok(())));
                    drop(ready_tx);
                    rt.block_on(shard_main(
                        listeners.into_iter().map(Arc::new).collect(),
                        stop,
                    ))
                })
                .map_err(|e| StartError::Other(format!("cannot start shard thread: {e}")))?;
            threads.push(thread);
        }
        drop(ready_tx);
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let metrics = match metrics_listener {
            Some(l) => {
                let addr = l.local_addr().ok();
                Some(
                    crate::metrics::MetricsServer::start(
                        l,
                        mesh.clone(),
                        ready.clone(),
                        heartbeats.clone(),
                        config.cores.clone(),
                    )
                    .map_err(|e| {
                        StartError::MetricsListen(
                            addr.unwrap_or(listen_addr),
                            std::io::Error::other(e),
                        )
                    })?,
                )
            }
            None => None,
        };
        let broker = Broker {
            listen_addr,
            metrics_addr: metrics.as_ref().map(|m| m.addr),
            metrics,
            ready: ready.clone(),
            shared,
            previous_shutdown_clean,
            mesh,
            threads,
            _lock: lock,
        };
        for _ in 0..shards {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((shard, Err(reason))) => {
                    let cpu = config.cores[shard];
                    broker.stop_shards(None);
                    broker.join();
                    return Err(StartError::Shard { shard, cpu, reason });
                }
                Err(_) => {
                    broker.stop_shards(None);
                    broker.join();
                    return Err(StartError::Other(
                        "a shard thread died during start-up".into(),
                    ));
                }
            }
        }
        if let Some(m) = &membership {
            // From now on each new metadata image goes to shard 0.
            m.slot.connect(broker.mesh.clone());
        }
        ready.store(true, std::sync::atomic::Ordering::Release);
        crate::faults::start_watcher(broker.mesh.clone());
        Ok(broker)
    }

    /// Starts the drain phase on every shard (each tells `acks` once it stopped accepting);
    /// without `acks`, the close phase follows at once.
    fn stop_shards(&self, acks: Option<mpsc::Sender<usize>>) {
        let close_too = acks.is_none();
        for s in 0..self.mesh.shard_count() {
            let ack = acks.clone();
            self.mesh.send_control(
                s,
                Box::new(move || {
                    STOP.with(|stop| {
                        if let Some(n) = stop.borrow().as_ref() {
                            *n.drain_ack.borrow_mut() = ack;
                            n.stopping.set(true);
                            n.drain.notify_all();
                            if close_too {
                                n.close.notify_all();
                            }
                        }
                    })
                }),
            );
        }
    }

    fn close_shards(&self) {
        for s in 0..self.mesh.shard_count() {
            self.mesh.send_control(
                s,
                Box::new(|| {
                    STOP.with(|stop| {
                        if let Some(n) = stop.borrow().as_ref() {
                            n.close.notify_all();
                        }
                    })
                }),
            );
        }
    }

    /// Drain phase, from the main thread: every shard stops accepting, then every connection
    /// (wherever it moved) finishes and leaves. Whether all of that happened in time.
    fn drain(&self) -> bool {
        let shards = self.mesh.shard_count();
        let (tx, rx) = mpsc::channel();
        self.stop_shards(Some(tx));
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        // A shard that does not answer in time fails the drain, but the others' connections
        // are still shut below before their logs close.
        let mut acked = true;
        for _ in 0..shards {
            if rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_err()
            {
                tracing::error!("a shard did not stop accepting in time");
                acked = false;
                break;
            }
        }
        if acked && self.connections_gone_by(deadline) {
            return true;
        }
        tracing::warn!(
            connections = self.shared.connections.open(),
            "connections still busy after the drain timeout; shutting them"
        );
        for s in 0..shards {
            self.mesh
                .send_control(s, Box::new(|| shut_accepted(libc::SHUT_RDWR)));
        }
        if self.connections_gone_by(Instant::now() + DRAIN_FORCE_GRACE) {
            return acked;
        }
        tracing::error!(
            connections = self.shared.connections.open(),
            "connections still busy after being shut"
        );
        false
    }

    /// Waits until no client connection is open on any shard, or `deadline`.
    fn connections_gone_by(&self, deadline: Instant) -> bool {
        loop {
            if self.shared.connections.open() == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stop_metrics(&mut self) {
        self.ready
            .store(false, std::sync::atomic::Ordering::Release);
        if let Some(m) = self.metrics.take() {
            m.stop();
        }
    }

    /// Waits for every shard thread, then stops the metadata quorum's threads (cluster mode);
    /// how many shards did not report their logs closed.
    fn join(mut self) -> usize {
        self.stop_metrics();
        let threads = std::mem::take(&mut self.threads);
        let failed = threads
            .into_iter()
            .map(|t| t.join().unwrap_or(false))
            .filter(|closed| !closed)
            .count();
        if let Some(cluster) = &self.shared.cluster {
            cluster.shutdown();
        }
        failed
    }

    /// Orderly stop: every shard stops accepting and drains its connections, then every
    /// shard closes its logs and exits; then, only if all of that succeeded, the
    /// clean-shutdown marker is written.
    pub fn shutdown(mut self) -> std::io::Result<()> {
        self.stop_metrics();
        let drained = self.drain();
        self.close_shards();
        let marker = self
            .shared
            .config
            .data_dir
            .join("meta")
            .join(CLEAN_SHUTDOWN_MARKER);
        let failed = self.join();
        if failed > 0 {
            return Err(std::io::Error::other(format!(
                "{failed} shard(s) could not close their logs; no clean-shutdown marker written"
            )));
        }
        if !drained {
            return Err(std::io::Error::other(
                "connections were still busy when the logs closed; no clean-shutdown marker written",
            ));
        }
        write_marker(&marker)
    }
}

/// A shard's life after start-up; whether its logs closed and synced at the end.
async fn shard_main(listeners: Vec<SharedFd>, stop: Rc<StopSignals>) -> bool {
    let drain = stop.drain.notified();
    let close = stop.close.notified();
    let shard = crate::shard::current();
    if shard.id == 0 && shard.shared.cluster.is_some() {
        // Users created offline (`ringbroker user create`) join the quorum's store.
        drop(spawn(crate::security::credentials::bootstrap_cluster(
            shard.shared.config.data_dir.clone(),
        )));
    }
    // The loop turns at least this often even when idle, so its heartbeat stays fresh (also
    // while the state below loads).
    drop(spawn(async {
        loop {
            op::sleep(crate::health::HEARTBEAT_TICK).await;
        }
    }));
    let delay = crate::faults::load_delay(shard.id);
    if !delay.is_zero() {
        op::sleep(delay).await;
    }
    // Committed offsets of the groups this shard coordinates, before any client is served.
    let offsets_topic = shard.topic(crate::groups::OFFSETS_TOPIC);
    // A cluster member coordinates (and loads) only the offsets partitions it leads.
    if let (Some(topic), true) = (&offsets_topic, shard.shared.cluster.is_some()) {
        for load in crate::groups::offsets_topic_changed(&shard, topic) {
            let _ = load.await;
        }
    }
    let single_node_partitions = match shard.shared.cluster {
        Some(_) => 0,
        None => offsets_topic.as_ref().map_or(0, |t| t.partition_count()),
    };
    for p in 0..single_node_partitions {
        if let Some(log) = shard.log(crate::groups::OFFSETS_TOPIC, p) {
            let n = crate::groups::load_offsets(log).await;
            if n > 0 {
                tracing::info!(
                    shard = shard.id,
                    partition = p,
                    records = n,
                    "loaded committed offsets"
                );
            }
        }
    }
    // Producer state of idempotent producers, for every partition this shard owns.
    for topic in shard.all_topics() {
        for p in 0..topic.partition_count() {
            if let Some(log) = shard.log(&topic.name, p) {
                crate::producer_state::restore(&topic.name, p, &log, shard.shared.recovered_clean)
                    .await;
            }
        }
    }
    // Requests reach every shard (forwarded partitions, group coordinators): accept only once
    // every shard has loaded its state, or a client could read "no committed offset" or have
    // an idempotent retry checked against an empty producer state. A stop asked for meanwhile
    // (another shard failed to start) ends the wait.
    shard
        .shared
        .shards_loaded
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    while shard
        .shared
        .shards_loaded
        .load(std::sync::atomic::Ordering::Acquire)
        < shard.shared.shard_count
        && !stop.stopping.get()
    {
        op::sleep(Duration::from_millis(1)).await;
    }
    // Background loops end once the shard drains (their sleeps end with it); the close waits
    // for them, so no flush, checkpoint or retention pass runs while the logs close.
    let mut background = vec![
        spawn(crate::groups::run_timers(drain_started())),
        spawn(recovery_checkpoint_every(
            shard.shared.config.recovery_checkpoint_interval,
        )),
        spawn(retention_every(
            shard.shared.config.retention_check_interval,
        )),
    ];
    if shard.shared.config.cleaner.enabled {
        background.push(spawn(cleaner_every(shard.shared.config.cleaner.backoff)));
    }
    if let FlushPolicy::Interval(every) = shard.shared.config.flush {
        background.push(spawn(flush_every(every)));
    }
    if shard.id == 0 && shard.shared.cluster.is_some() {
        background.push(spawn(crate::shard::cluster::run_applier()));
    }
    let acceptors: Vec<_> = listeners
        .iter()
        .enumerate()
        .map(|(index, listener)| spawn(accept_loop(listener.clone(), index)))
        .collect();

    drain.await;
    DRAINING.with(|d| d.set(true));
    DRAIN_STARTED.with(|n| n.notify_all());
    crate::groups::release_waiters();
    stop_accepting(&listeners, acceptors).await;
    if let Some(ack) = stop.drain_ack.borrow_mut().take() {
        let _ = ack.send(shard.id);
    }

    for task in background {
        let _ = task.await;
    }
    close.await;
    let closed = close_logs().await;
    tracing::info!(
        shard = shard.id,
        closed,
        ring_ops = %ringbroker_runtime::driver::stats().summary(),
        spliced_bytes = ringbroker_runtime::splice::spliced_bytes(),
        "shard stopped"
    );
    closed
}

/// How long a new cluster member waits at start-up for the metadata quorum to have a cluster
/// id (a leader elected once by a majority of the voters).
pub const CLUSTER_JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a cluster member waits at start-up to catch up with the quorum's committed
/// metadata once it has a cluster id.
pub const CLUSTER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running member of the metadata quorum, as start-up hands it to the shards.
struct Membership {
    cluster: Arc<ringbroker_cluster::Cluster>,
    slot: Arc<crate::shard::cluster::ImageSlot>,
    /// The image the shards are built from.
    image: Arc<ringbroker_cluster::MetadataImage>,
    default_replication_factor: i16,
}

/// Cluster mode: followers can reach leaders on the inter-broker listener (default the first
/// listener): its SASL needs the inter-broker credentials, its TLS a trust anchor for the
/// leaders' certificates.
fn check_inter_broker_listener(config: &BrokerConfig) -> Result<(), StartError> {
    let security = &config.security;
    let listener = match &security.inter_broker_listener {
        Some(name) => config.listeners.iter().find(|l| &l.name == name),
        None => config.listeners.first(),
    };
    let Some(listener) = listener else {
        return Ok(());
    };
    if listener.protocol.uses_sasl() && security.inter_broker_sasl.is_none() {
        return Err(StartError::Other(format!(
            "the inter-broker listener {} uses {}: give --inter-broker-user and \
             --inter-broker-password-file (a super user, for follower fetches)",
            listener.name, listener.protocol
        )));
    }
    let trust = security.inter_broker_tls_ca.is_some()
        || security.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    if listener.protocol.uses_tls() && !trust {
        return Err(StartError::Other(format!(
            "the inter-broker listener {} uses {}: give --tls-ca-file (the CA of the brokers' \
             certificates) or --tls-client-ca-file",
            listener.name, listener.protocol
        )));
    }
    Ok(())
}

/// How this node's quorum links authenticate (issue #16): TLS with mutual authentication when
/// the broker has a certificate and a client CA (`--tls-cert-file`, `--tls-key-file`,
/// `--tls-client-ca-file`), the challenge-response over the inter-broker password when it has
/// inter-broker SASL credentials; both, or neither. A secured client listener (SSL, SASL_*)
/// requires the password: it is what authenticates quorum members (the client CA also signs
/// clients' certificates), otherwise the start is refused.
fn quorum_security(
    config: &BrokerConfig,
) -> Result<ringbroker_cluster::QuorumSecurity, StartError> {
    let security = &config.security;
    let tls = match &security.tls {
        Some(crate::security::TlsFiles {
            cert,
            key,
            client_ca: Some(ca),
            ..
        }) => Some(
            ringbroker_cluster::auth::QuorumTls::from_pem_files(cert, key, ca).map_err(|e| {
                StartError::Other(format!(
                    "quorum TLS (--tls-cert-file, --tls-key-file, --tls-client-ca-file): {e}"
                ))
            })?,
        ),
        _ => None,
    };
    let password = security
        .inter_broker_sasl
        .as_ref()
        .map(
            |(_, user, password)| ringbroker_cluster::auth::QuorumPassword {
                user: user.clone(),
                password: password.clone(),
            },
        );
    // The inter-broker password is what names a quorum member: the client CA also signs
    // Kafka clients' certificates, so mutual TLS alone would let any client certificate join
    // the quorum (and read the image: SCRAM keys, ACLs). Secured client listeners therefore
    // need it; mutual TLS then adds encryption and a second factor.
    if let Some(secured) = config
        .listeners
        .iter()
        .find(|l| l.protocol != crate::security::SecurityProtocol::Plaintext)
    {
        if password.is_none() {
            return Err(StartError::Other(format!(
                "the client listener {} uses {}: in a cluster give --inter-broker-user and \
                 --inter-broker-password-file too (the inter-broker password authenticates the \
                 metadata quorum's members on --internal-listen; mutual TLS with \
                 --tls-client-ca-file alone would admit any client certificate)",
                secured.name, secured.protocol
            )));
        }
    }
    let quorum = ringbroker_cluster::QuorumSecurity { tls, password };
    if quorum.authenticates() {
        tracing::info!(
            tls = quorum.tls.is_some(),
            inter_broker_password = quorum.password.is_some(),
            "quorum connections are authenticated"
        );
    }
    Ok(quorum)
}

/// Cluster mode: starts this node's member of the metadata quorum (`<data-dir>/meta/raft`),
/// waits (at most [`CLUSTER_JOIN_TIMEOUT`]) until the quorum has a cluster id, then merges the
/// newest image into `meta` (persisted) and removes the partition directories this node no
/// longer hosts.
fn join_cluster(
    config: &BrokerConfig,
    settings: &crate::config::ClusterSettings,
    (client_host, client_port): (&str, u16),
    listeners: &[crate::security::ListenerInfo],
    meta: &mut ClusterMeta,
) -> Result<Membership, StartError> {
    let raft_dir = config.data_dir.join("meta").join("raft");
    // The quorum decides which topics exist: topics kept by a single node's data dir (no
    // quorum state yet) would be deleted as unknown. Refuse instead of losing them.
    if !raft_dir.exists() && !meta.topics.is_empty() {
        return Err(StartError::Other(format!(
            "{} holds {} topic(s) of a broker that ran without --cluster; cluster mode would \
             delete them as unknown to the metadata quorum: give this node an empty --data-dir",
            config.data_dir.display(),
            meta.topics.len()
        )));
    }
    let mut cluster_config = ringbroker_cluster::ClusterConfig::new(
        settings.node_id,
        settings.voters.clone(),
        settings.internal_listen,
        client_host.to_string(),
        client_port,
        raft_dir,
    );
    cluster_config.client_listeners = listeners
        .iter()
        .map(|l| ringbroker_cluster::Endpoint {
            name: l.name.clone(),
            host: l.advertised_host.clone(),
            port: l.advertised_port,
        })
        .collect();
    cluster_config.broker_heartbeat_interval = settings.broker_heartbeat_interval;
    cluster_config.broker_session_timeout = settings.broker_session_timeout;
    check_inter_broker_listener(config)?;
    cluster_config.security = quorum_security(config)?;
    let slot = crate::shard::cluster::ImageSlot::new();
    let publish_to = slot.clone();
    let cluster = ringbroker_cluster::Cluster::start(
        cluster_config,
        Box::new(move |image| publish_to.publish(image)),
    )
    .map_err(|e| StartError::Other(format!("cannot start the metadata quorum member: {e}")))?;
    tracing::info!(
        node_id = settings.node_id,
        voters = ?settings.voters,
        internal_listen = %settings.internal_listen,
        "joining the cluster's metadata quorum"
    );
    let Some(image) = slot.wait_until(CLUSTER_JOIN_TIMEOUT, |i| !i.cluster_id.is_empty()) else {
        cluster.shutdown();
        return Err(StartError::Other(format!(
            "the metadata quorum has no cluster id after {} s: a majority of the voters in \
             --cluster must be running and reach each other's internal addresses",
            CLUSTER_JOIN_TIMEOUT.as_secs()
        )));
    };
    // A node that was down catches up first (topics deleted or moved meanwhile are not
    // opened only to be removed): it waits, bounded, until its image holds its own
    // registration by this process (the active controller commits it after everything before
    // it). With no majority reachable it starts from what it has.
    let deadline = Instant::now() + CLUSTER_CATCH_UP_TIMEOUT;
    let incarnation = cluster.incarnation();
    let image = loop {
        let latest = slot.latest();
        let caught_up = latest
            .brokers
            .get(&settings.node_id)
            .is_some_and(|b| b.incarnation == incarnation && !b.fenced);
        if caught_up || Instant::now() >= deadline {
            if !caught_up {
                tracing::warn!(
                    applied_index = latest.applied_index,
                    "no active controller reached; starting from the local metadata"
                );
            }
            break if latest.cluster_id.is_empty() {
                image
            } else {
                latest
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let merge =
        crate::shard::cluster::merge_image(meta, &image, settings.node_id, config.cores.len());
    *meta = merge.meta;
    if merge.persist {
        if let Err(e) = meta.save(&config.data_dir) {
            cluster.shutdown();
            return Err(StartError::DataDir(config.data_dir.clone(), e));
        }
    }
    crate::shard::cluster::remove_unhosted_dirs(&config.data_dir, meta, settings.node_id);
    tracing::info!(
        cluster_id = %image.cluster_id,
        applied_index = image.applied_index,
        topics = image.topics.len(),
        brokers = image.brokers.len(),
        "metadata image loaded"
    );
    Ok(Membership {
        cluster,
        slot,
        image,
        default_replication_factor: settings.default_replication_factor,
    })
}

/// Sleeps for `duration`; whether the shard still serves afterwards.
async fn sleep_unless_draining(duration: Duration) -> bool {
    op::timeout(duration, drain_started()).await.is_none()
}

/// Close phase: snapshots producer state, syncs and closes every log this shard owns; whether
/// all of them closed.
async fn close_logs() -> bool {
    let shard = crate::shard::current();
    let delay = crate::faults::close_delay();
    if !delay.is_zero() {
        op::sleep(delay).await;
    }
    crate::producer_state::snapshot_all();
    let mut closed = true;
    for log in shard.owned_logs() {
        if let Err(e) = log.close().await {
            closed = false;
            tracing::error!(dir = %log.dir().display(), error = %e, "flush at shutdown failed; the next start will scan every segment");
        }
    }
    if crate::faults::close_must_fail() {
        closed = false;
        tracing::error!(
            shard = shard.id,
            "test fault: this shard reports that its logs failed to close"
        );
    }
    closed
}

/// Ends the accept loop (shutting the listener down wakes its pending accept), then asks
/// every connection accepted here to leave: shutting its read side wakes one waiting for a
/// request; one handling requests sees [`draining`] once it has answered them.
async fn stop_accepting(
    listeners: &[SharedFd],
    acceptors: Vec<ringbroker_runtime::executor::JoinHandle<()>>,
) {
    for listener in listeners {
        // SAFETY: shutdown(2) on a socket this shard keeps open; no memory is passed.
        unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
    for acceptor in acceptors {
        let _ = acceptor.await;
    }
    shut_accepted(libc::SHUT_RD);
}

/// Shuts (`how`: `SHUT_RD` or `SHUT_RDWR`) every still-open connection accepted here.
fn shut_accepted(how: libc::c_int) {
    let accepted = ACCEPTED.with(|a| a.borrow().clone());
    for conn in accepted.iter().filter_map(Weak::upgrade) {
        // SAFETY: shutdown(2) on a socket the upgraded Arc keeps open; no memory is passed.
        unsafe { libc::shutdown(conn.as_raw_fd(), how) };
    }
}

/// `--flush interval=<ms>`: fdatasync every owned partition with new data, periodically.
async fn flush_every(every: Duration) {
    while sleep_unless_draining(every).await {
        for log in crate::shard::current().owned_logs() {
            if let Err(e) = log.sync_to(log.high_watermark()).await {
                tracing::error!(dir = %log.dir().display(), error = %e, "periodic flush failed");
            }
        }
    }
}

/// Writes the recovery checkpoint of every partition this shard owns, periodically, until the
/// shard drains.
async fn recovery_checkpoint_every(every: Duration) {
    while sleep_unless_draining(every).await {
        for log in crate::shard::current().owned_logs() {
            if let Err(e) = log.checkpoint_recovery_point().await {
                tracing::warn!(dir = %log.dir().display(), error = %e, "recovery checkpoint not written");
            }
        }
    }
}

/// Applies retention to every partition this shard owns, periodically.
async fn retention_every(every: Duration) {
    while sleep_unless_draining(every).await {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for log in crate::shard::current().owned_logs() {
            if let Err(e) = log.enforce_retention(now_ms) {
                tracing::error!(dir = %log.dir().display(), error = %e, "retention failed");
            }
        }
    }
}

/// Cleans the due compacted partitions this shard owns, dirtiest first, one after the other;
/// sleeps `every` (Kafka's `log.cleaner.backoff.ms`) only once none is due (or after
/// [`CLEANINGS_PER_LOOK_MAX`] in a row); a cleaning in progress when the shard drains is
/// dropped (the storage side keeps the log whole).
async fn cleaner_every(every: Duration) {
    while sleep_unless_draining(every).await {
        for _ in 0..CLEANINGS_PER_LOOK_MAX {
            if draining() || !crate::cleaner::clean_dirtiest(drain_started()).await {
                break;
            }
        }
    }
}

/// Cleanings a shard's cleaner runs back to back before it sleeps its backoff again.
const CLEANINGS_PER_LOOK_MAX: usize = 64;

/// The TLS server configuration, built once when a listener uses TLS, and whether its
/// connections are handed to the kernel (kTLS: probed, `RINGBROKER_KTLS=off` forces the
/// userspace path). Records each TLS listener's path for `ringbroker_tls_path`.
fn build_tls(
    config: &BrokerConfig,
) -> Result<(Option<Arc<rustls::ServerConfig>>, bool), StartError> {
    let tls_listeners: Vec<&str> = config
        .listeners
        .iter()
        .filter(|l| l.protocol.uses_tls())
        .map(|l| l.name.as_str())
        .collect();
    if tls_listeners.is_empty() {
        return Ok((None, false));
    }
    let files = config.security.tls.as_ref().ok_or_else(|| {
        StartError::Tls(format!(
            "listener {} uses TLS: --tls-cert-file and --tls-key-file are needed",
            tls_listeners.join(", ")
        ))
    })?;
    let (ktls, why) = crate::security::tls::ktls_decision();
    let server = crate::security::tls::server_config(files, ktls)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let path = if ktls { "ktls" } else { "userspace" };
    for name in &tls_listeners {
        crate::security::tls::set_path(name, path);
    }
    tracing::info!(listeners = %tls_listeners.join(","), path, reason = %why, "TLS path");
    Ok((Some(Arc::new(server)), ktls))
}

/// Accepts the connections of listener `index` (`Shared::listeners`).
async fn accept_loop(listener: SharedFd, index: usize) {
    let shared = crate::shard::current().shared.clone();
    loop {
        let accepted = op::accept(&listener).await;
        if draining() {
            return; // a connection accepted as the listener shut is closed unserved
        }
        match accepted {
            Ok(fd) => {
                let sock = socket2::SockRef::from(&fd);
                let peer = sock.peer_addr().ok().and_then(|a| a.as_socket());
                let max = shared.config.max_connections;
                let Some(slot) = shared.connections.try_take(max) else {
                    // Over the limit: close at once (the client sees EOF and can back off).
                    crate::warn_limited!(
                        peer = %peer.map_or_else(|| "unknown".into(), |p| p.to_string()),
                        max_connections = max,
                        "connection limit reached; closing a new connection"
                    );
                    drop(fd);
                    continue;
                };
                let _ = sock.set_tcp_nodelay(true);
                let fd = Arc::new(fd);
                remember_accepted(&fd);
                drop(spawn(crate::connection::serve(fd, peer, slot, index)));
            }
            Err(e) => {
                // EMFILE and friends: log, back off a little, keep serving existing clients.
                tracing::warn!(error = %e, "accept failed");
                op::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Keeps a weak reference to an accepted connection, so shutdown can reach it; references to
/// closed connections are dropped whenever the list doubles.
fn remember_accepted(fd: &SharedFd) {
    const PRUNE_AT_LEN_MIN: usize = 64;
    ACCEPTED.with(|a| {
        let mut a = a.borrow_mut();
        if a.len() >= PRUNE_AT_LEN_MIN && a.len() == a.capacity() {
            a.retain(|w| w.strong_count() > 0);
        }
        a.push(Arc::downgrade(fd));
    });
}
