//! A cluster of real `ringbroker` processes for end-to-end tests: N nodes of the debug binary
//! on free ports (client and internal listeners picked before any starts), each with its own
//! temporary data dir; one node can be killed (SIGKILL), paused (SIGSTOP), resumed (SIGCONT)
//! or restarted on the same ports and data; every node is stopped on drop.

use super::Broker;
use kafka_protocol::messages::metadata_response::MetadataResponse;
use kafka_protocol::messages::{ApiKey, MetadataRequest};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Metadata version the helpers ask with (leader epochs, offline replicas, cluster id).
const METADATA_VERSION: i16 = 12;

/// One node: its id, ports and data dir, and the process while it runs.
pub struct Node {
    pub id: i32,
    pub client_port: u16,
    pub internal_port: u16,
    pub data_dir: PathBuf,
    pub broker: Option<Broker>,
    paused: bool,
    /// One more free port of this node's, for a second listener (see
    /// [`Cluster::start_with_node_args`]).
    pub spare_port: u16,
}

impl Node {
    /// `127.0.0.1:<client port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    /// The `--cluster` value every node gets.
    pub voters: String,
    extra: Vec<String>,
    /// Flags made per node ([`Cluster::start_with_node_args`]).
    node_args: Option<NodeArgs>,
    _dir: tempfile::TempDir,
}

/// Flags for one node, made from its ports and id when it starts. When they hold
/// `--listeners`, the node gets no `--listen` (its `client_port` should then be a PLAINTEXT
/// listener among them: the helpers here speak plaintext to it).
pub type NodeArgs = std::sync::Arc<dyn Fn(&Node) -> Vec<String> + Send + Sync>;

/// A port free right now on 127.0.0.1, below the kernel's ephemeral range (so no outgoing
/// connection, e.g. one node dialling another before that one listens, can take it first);
/// released before use.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let low = 10_000u32;
    let span = ephemeral_start.saturating_sub(low).max(1);
    // Spread over the range by process and time, so concurrent test processes differ.
    let seed = std::process::id().wrapping_mul(7919).wrapping_add(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    );
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + (seed.wrapping_add(n.wrapping_mul(104_729)) % span);
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n) at once and waits until each has joined (its start-up line
    /// appears once the metadata quorum has a cluster id).
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// Like [`Cluster::start`], with extra flags for every node.
    pub fn start_with(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_configured(n, extra, None)
    }

    /// Like [`Cluster::start_with`], plus flags made for each node by `node_args` (also for
    /// restarts and added nodes).
    pub fn start_with_node_args(n: usize, extra: &[&str], node_args: NodeArgs) -> Cluster {
        Cluster::start_configured(n, extra, Some(node_args))
    }

    fn start_configured(n: usize, extra: &[&str], node_args: Option<NodeArgs>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 * n {
            let p = free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                id: i as i32 + 1,
                client_port: ports[2 * i],
                internal_port: ports[2 * i + 1],
                data_dir: dir.path().join(format!("node-{}", i + 1)),
                broker: None,
                paused: false,
                spare_port: ports[2 * n + i],
            })
            .collect();
        let voters = nodes
            .iter()
            .map(|n| format!("{}@127.0.0.1:{}", n.id, n.internal_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            nodes,
            voters,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            node_args,
            _dir: dir,
        };
        let started: Vec<_> = cluster
            .nodes
            .iter()
            .map(|node| {
                let args = cluster.args(node);
                let data_dir = node.data_dir.clone();
                std::thread::spawn(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    Broker::start(&data_dir, &args)
                })
            })
            .collect();
        for (node, started) in cluster.nodes.iter_mut().zip(started) {
            node.broker = Some(started.join().expect("a node started"));
        }
        cluster
    }

    fn args(&self, node: &Node) -> Vec<String> {
        let per_node = self.node_args.as_ref().map(|f| f(node)).unwrap_or_default();
        let mut args = Vec::new();
        if !per_node.iter().any(|a| a == "--listeners") {
            args.push("--listen".to_string());
            args.push(node.addr());
        }
        args.extend([
            "--node-id".to_string(),
            node.id.to_string(),
            "--cluster".to_string(),
            self.voters.clone(),
        ]);
        // A node added after the start is not among the voters: it says where it listens.
        if !self
            .voters
            .split(',')
            .any(|v| v.starts_with(&format!("{}@", node.id)))
        {
            args.push("--internal-listen".to_string());
            args.push(format!("127.0.0.1:{}", node.internal_port));
        }
        args.extend(self.extra.iter().cloned());
        args.extend(per_node);
        args
    }

    /// The flags node `id` is (or would be) started with, for starting a variant by hand.
    pub fn node_command_args(&self, id: i32) -> Vec<String> {
        self.args(self.node(id))
    }

    /// A directory that lives as long as the cluster (certificates, password files).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Starts one more broker (the next id), not among the voters: it joins the running
    /// cluster as a metadata learner. Returns its id once it started (registered).
    pub fn add_node(&mut self) -> i32 {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let p = free_port();
            let taken = self
                .nodes
                .iter()
                .any(|n| n.client_port == p || n.internal_port == p || n.spare_port == p);
            if !ports.contains(&p) && !taken {
                ports.push(p);
            }
        }
        let node = Node {
            id,
            client_port: ports[0],
            internal_port: ports[1],
            data_dir: self._dir.path().join(format!("node-{id}")),
            broker: None,
            paused: false,
            spare_port: ports[2],
        };
        let args = self.args(&node);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let broker = Broker::start(&node.data_dir, &args);
        self.nodes.push(Node {
            broker: Some(broker),
            ..node
        });
        id
    }

    pub fn node(&self, id: i32) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn node_mut(&mut self, id: i32) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The client address of node `id`.
    pub fn addr(&self, id: i32) -> String {
        self.node(id).addr()
    }

    /// `host:port,...` of the running, unpaused nodes.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.broker.is_some() && !n.paused)
            .map(Node::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Ends node `id` with SIGKILL (no shutdown at all) and waits for it to exit.
    pub fn kill(&mut self, id: i32) {
        let node = self.node_mut(id);
        node.paused = false;
        drop(node.broker.take()); // Broker's drop is kill -9 + wait
    }

    fn signal(&mut self, id: i32, signal: i32) {
        let node = self.node_mut(id);
        let pid = node.broker.as_ref().expect("node running").pid;
        // SAFETY: signalling a child process this test started.
        unsafe { libc::kill(pid as i32, signal) };
        node.paused = signal == libc::SIGSTOP;
    }

    /// Freezes node `id` (SIGSTOP): its sockets stay open, it answers nothing.
    pub fn pause(&mut self, id: i32) {
        self.signal(id, libc::SIGSTOP);
    }

    /// Lets a paused node run again (SIGCONT).
    pub fn resume(&mut self, id: i32) {
        self.signal(id, libc::SIGCONT);
    }

    /// Starts node `id` again on the same ports and data dir (after [`Cluster::kill`]).
    pub fn restart(&mut self, id: i32) {
        assert!(self.node(id).broker.is_none(), "node {id} still runs");
        let args = self.args(self.node(id));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let data_dir = self.node(id).data_dir.clone();
        let broker = Broker::start(&data_dir, &args);
        self.node_mut(id).broker = Some(broker);
    }

    /// The log of node `id` so far.
    pub fn log(&self, id: i32) -> String {
        self.node(id)
            .broker
            .as_ref()
            .map_or_else(String::new, Broker::log)
    }

    /// Every running node's log, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("---- node {} ----\n{}", n.id, self.log(n.id)))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if node.paused {
                if let Some(b) = &node.broker {
                    // SAFETY: signalling a child process this test started.
                    unsafe { libc::kill(b.pid as i32, libc::SIGCONT) };
                }
            }
            drop(node.broker.take());
        }
    }
}

/// Metadata (v12) from the broker at `addr`: all topics when `topics` is `None`.
pub fn metadata(addr: &str, topics: Option<&[&str]>) -> MetadataResponse {
    let request = MetadataRequest::default().with_topics(topics.map(|names| {
        names
            .iter()
            .map(|n| {
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(kafka_protocol::messages::TopicName(
                        kafka_protocol::protocol::StrBytes::from_string(n.to_string()),
                    )))
            })
            .collect()
    }));
    let mut client = super::Client::connect(addr);
    client.call(ApiKey::Metadata, METADATA_VERSION, &request)
}

/// Asks `addr` for Metadata until `ready` holds for it (or panics after `timeout`, showing
/// the last answer); returns that answer.
pub fn wait_metadata(
    addr: &str,
    topics: Option<&[&str]>,
    timeout: Duration,
    ready: impl Fn(&MetadataResponse) -> bool,
) -> MetadataResponse {
    let deadline = Instant::now() + timeout;
    loop {
        let response = std::panic::catch_unwind(|| metadata(addr, topics)).ok();
        if let Some(r) = &response {
            if ready(r) {
                return r.clone();
            }
        }
        if Instant::now() > deadline {
            panic!("Metadata from {addr} not as expected within {timeout:?}; last: {response:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
