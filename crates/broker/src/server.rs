//! Start-up and shutdown of a broker: lock the data dir, load the topic table, bind one
//! SO_REUSEPORT listener per shard, start one pinned thread per CPU (each with its own ring,
//! mesh endpoint and partitions), and on shutdown flush every log and leave a clean marker.

use crate::config::BrokerConfig;
use crate::config::FlushPolicy;
use crate::metadata::ClusterMeta;
use crate::shard::{Shard, Shared};
use ringbroker_runtime::executor::{spawn, Runtime};
use ringbroker_runtime::mesh::Mesh;
use ringbroker_runtime::notify::Notify;
use ringbroker_runtime::op::{self, SharedFd};
use ringbroker_runtime::{affinity, KernelFeatures, RingConfig};
use ringbroker_storage::Recovery;
use socket2::{Domain, Protocol, Socket, Type};
use std::cell::RefCell;
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

const CLEAN_SHUTDOWN_MARKER: &str = "clean-shutdown";
const LISTEN_BACKLOG: i32 = 1024;

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
    threads: Vec<JoinHandle<()>>,
    _lock: File,
}

thread_local! {
    static STOP: RefCell<Option<Rc<Notify>>> = const { RefCell::new(None) };
}

fn lock_data_dir(dir: &Path) -> Result<File, StartError> {
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
        let previous_shutdown_clean = marker.exists();
        let mut meta = ClusterMeta::load_or_create(&config.data_dir)
            .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?;
        let _ = std::fs::remove_file(&marker);
        let shards = config.cores.len();
        if !meta
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
                owners,
                configs,
            }));
            meta.save(&config.data_dir)
                .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?;
        }
        if meta.reassign_orphans(shards) {
            tracing::info!(
                shards,
                "shard count changed: partitions of missing shards reassigned"
            );
            meta.save(&config.data_dir)
                .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?;
        }

        // The first listener resolves port 0; the others join its SO_REUSEPORT group.
        let first =
            bind_listener(config.listen).map_err(|e| StartError::Listen(config.listen, e))?;
        let listen_addr = socket2::SockRef::from(&first)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| StartError::Other("listener has no local address".into()))?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => {
                Some(crate::metrics::bind(addr).map_err(|e| StartError::MetricsListen(addr, e))?)
            }
            None => None,
        };
        let mut listeners = vec![first];
        for _ in 1..shards {
            listeners
                .push(bind_listener(listen_addr).map_err(|e| StartError::Listen(listen_addr, e))?);
        }

        let (advertised_host, advertised_port) = config
            .advertise
            .clone()
            .unwrap_or_else(|| (listen_addr.ip().to_string(), listen_addr.port()));
        let use_msg_ring = config.use_msg_ring && features.msg_ring;
        let (mesh, endpoints) =
            Mesh::build(shards, use_msg_ring).map_err(|e| StartError::Other(e.to_string()))?;
        let shared = Arc::new(Shared {
            config: config.clone(),
            advertised_host,
            advertised_port,
            cluster_id: meta.cluster_id.clone(),
            recovered_clean: previous_shutdown_clean,
            shard_count: shards,
            shutdown_flush_failed: std::sync::atomic::AtomicBool::new(false),
            connections: Arc::default(),
        });
        let meta = Arc::new(meta);
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), String>)>();
        let mut threads = Vec::with_capacity(shards);
        for ((id, endpoint), listener) in endpoints.into_iter().enumerate().zip(listeners) {
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
            let thread = std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || {
                    let setup = (|| -> Result<Runtime, String> {
                        affinity::pin_current_thread(cpu)
                            .map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))?;
                        let rt = Runtime::with_features(&ring, &features)
                            .map_err(|e| format!("io_uring setup: {e}"))?;
                        endpoint.install();
                        let recovery = if clean {
                            Recovery::TrustCleanShutdown
                        } else {
                            Recovery::Scan
                        };
                        Shard::install(id, shared, &meta, recovery)
                            .map_err(|e| format!("opening partitions: {e}"))?;
                        Ok(rt)
                    })();
                    let rt = match setup {
                        Ok(rt) => rt,
                        Err(reason) => {
                            let _ = ready_tx.send((id, Err(reason)));
                            return;
                        }
                    };
                    let stop = Notify::new();
                    STOP.with(|s| *s.borrow_mut() = Some(stop.clone()));
                    let _ = ready_tx.send((id, Ok(())));
                    drop(ready_tx);
                    rt.block_on(shard_main(Arc::new(listener), stop));
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
                    broker.stop_shards();
                    broker.join();
                    return Err(StartError::Shard { shard, cpu, reason });
                }
                Err(_) => {
                    broker.stop_shards();
                    broker.join();
                    return Err(StartError::Other(
                        "a shard thread died during start-up".into(),
                    ));
                }
            }
        }
        ready.store(true, std::sync::atomic::Ordering::Release);
        Ok(broker)
    }

    fn stop_shards(&self) {
        for s in 0..self.mesh.shard_count() {
            self.mesh.send_control(
                s,
                Box::new(|| {
                    STOP.with(|stop| {
                        if let Some(n) = stop.borrow().as_ref() {
                            n.notify_all()
                        }
                    })
                }),
            );
        }
    }

    fn stop_metrics(&mut self) {
        self.ready
            .store(false, std::sync::atomic::Ordering::Release);
        if let Some(m) = self.metrics.take() {
            m.stop();
        }
    }

    fn join(mut self) {
        self.stop_metrics();
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// Orderly stop: every shard stops accepting, flushes its logs, and exits; then the
    /// clean-shutdown marker is written.
    pub fn shutdown(mut self) -> std::io::Result<()> {
        self.stop_metrics();
        self.stop_shards();
        let data_dir = self.shared.config.data_dir.clone();
        let shared = self.shared.clone();
        self.join();
        if shared
            .shutdown_flush_failed
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(std::io::Error::other(
                "a partition could not be flushed; no clean-shutdown marker written",
            ));
        }
        std::fs::write(data_dir.join("meta").join(CLEAN_SHUTDOWN_MARKER), b"")?;
        Ok(())
    }
}

async fn shard_main(listener: SharedFd, stop: Rc<Notify>) {
    let stopped = stop.notified();
    let shard = crate::shard::current();
    // Committed offsets of the groups this shard coordinates, before any client is served.
    let offsets_topic = shard.topic(crate::groups::OFFSETS_TOPIC);
    for p in 0..offsets_topic.as_ref().map_or(0, |t| t.partition_count()) {
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
    let sweeper = spawn(async {
        loop {
            op::sleep(crate::groups::SWEEP_INTERVAL).await;
            crate::groups::sweep();
        }
    });
    let acceptor = spawn(accept_loop(listener));
    let flusher = match shard.shared.config.flush {
        FlushPolicy::Interval(every) => Some(spawn(flush_every(every))),
        _ => None,
    };
    let retention = spawn(retention_every(
        shard.shared.config.retention_check_interval,
    ));
    let checkpointer = spawn(recovery_checkpoint_every(
        shard.shared.config.recovery_checkpoint_interval,
    ));
    stopped.await;
    drop(acceptor);
    drop(flusher);
    drop(retention);
    drop(checkpointer);
    drop(sweeper);
    crate::producer_state::snapshot_all();
    for log in shard.owned_logs() {
        if let Err(e) = log.close().await {
            shard
                .shared
                .shutdown_flush_failed
                .store(true, std::sync::atomic::Ordering::Release);
            tracing::error!(dir = %log.dir().display(), error = %e, "flush at shutdown failed; the next start will scan every segment");
        }
    }
    tracing::info!(
        shard = shard.id,
        ring_ops = %ringbroker_runtime::driver::stats().summary(),
        spliced_bytes = ringbroker_runtime::splice::spliced_bytes(),
        "shard stopped"
    );
}

/// `--flush interval=<ms>`: fdatasync every owned partition with new data, periodically.
async fn flush_every(every: Duration) {
    loop {
        op::sleep(every).await;
        for log in crate::shard::current().owned_logs() {
            if let Err(e) = log.sync_to(log.high_watermark()).await {
                tracing::error!(dir = %log.dir().display(), error = %e, "periodic flush failed");
            }
        }
    }
}

/// Writes the recovery checkpoint of every partition this shard owns, periodically.
async fn recovery_checkpoint_every(every: Duration) {
    loop {
        op::sleep(every).await;
        for log in crate::shard::current().owned_logs() {
            if let Err(e) = log.checkpoint_recovery_point().await {
                tracing::warn!(dir = %log.dir().display(), error = %e, "recovery checkpoint not written");
            }
        }
    }
}

/// Applies retention to every partition this shard owns, periodically.
async fn retention_every(every: Duration) {
    loop {
        op::sleep(every).await;
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

async fn accept_loop(listener: SharedFd) {
    let shared = crate::shard::current().shared.clone();
    loop {
        match op::accept(&listener).await {
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
                spawn(crate::connection::serve(Arc::new(fd), peer, slot));
            }
            Err(e) => {
                // EMFILE and friends: log, back off a little, keep serving existing clients.
                tracing::warn!(error = %e, "accept failed");
                op::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
