//! A fourth `Cluster` started with an id outside the voter list joins a three-voter quorum as
//! a raft learner: it receives the metadata (a snapshot, the voters' log being compacted), is
//! registered as a broker through its heartbeats, forwards requests, can be a reassignment
//! target, never becomes the controller, and keeps all of it across its own and a voter's
//! restart.

use ringbroker_cluster::{
    AdminError, AdminRequest, AdminResult, Cluster, ClusterConfig, MetadataImage, NodeId,
    ReassignmentMove,
};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

struct TestNode {
    config: ClusterConfig,
    latest: Arc<Mutex<Arc<MetadataImage>>>,
    cluster: Option<Arc<Cluster>>,
}

impl TestNode {
    fn image(&self) -> Arc<MetadataImage> {
        self.latest.lock().unwrap().clone()
    }

    fn cluster(&self) -> &Cluster {
        self.cluster.as_ref().expect("node is running")
    }

    fn start(&mut self) {
        let latest = self.latest.clone();
        *latest.lock().unwrap() = Arc::new(MetadataImage::default());
        let publish = Box::new(move |image: Arc<MetadataImage>| {
            let mut l = latest.lock().unwrap();
            assert!(
                image.applied_index >= l.applied_index,
                "images are published in order"
            );
            *l = image;
        });
        self.cluster = Some(Cluster::start(self.config.clone(), publish).expect("start"));
    }

    fn stop(&mut self) {
        if let Some(c) = self.cluster.take() {
            c.shutdown();
        }
    }
}

struct TestCluster {
    nodes: Vec<TestNode>,
    _dir: tempfile::TempDir,
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl TestCluster {
    fn start() -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let voters: Vec<(NodeId, SocketAddr)> = (1..=3).map(|id| (id, free_addr())).collect();
        let mut nodes = Vec::new();
        for &(id, addr) in &voters {
            let mut config = ClusterConfig::new(
                id,
                voters.clone(),
                addr,
                "127.0.0.1".to_string(),
                9000 + id as u16,
                dir.path().join(format!("node-{id}")),
            );
            config.tick = Duration::from_millis(50);
            config.leader_rebalance_interval = Duration::from_millis(500);
            config.snapshot_entries = 20;
            let mut node = TestNode {
                config,
                latest: Arc::new(Mutex::new(Arc::new(MetadataImage::default()))),
                cluster: None,
            };
            node.start();
            nodes.push(node);
        }
        TestCluster { nodes, _dir: dir }
    }

    fn node(&self, id: NodeId) -> &TestNode {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: NodeId) -> &mut TestNode {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Starts node `id`, outside the voter list: it joins as a learner.
    fn add_learner(&mut self, id: NodeId) {
        let voters = self.nodes[0].config.voters.clone();
        let base = self.nodes[0].config.clone();
        let mut config = ClusterConfig::new(
            id,
            voters,
            free_addr(),
            "127.0.0.1".to_string(),
            9000 + id as u16,
            base.dir.parent().unwrap().join(format!("node-{id}")),
        );
        config.tick = base.tick;
        config.leader_rebalance_interval = base.leader_rebalance_interval;
        config.snapshot_entries = base.snapshot_entries;
        let mut node = TestNode {
            config,
            latest: Arc::new(Mutex::new(Arc::new(MetadataImage::default()))),
            cluster: None,
        };
        node.start();
        self.nodes.push(node);
    }

    fn running(&self) -> impl Iterator<Item = &TestNode> {
        self.nodes.iter().filter(|n| n.cluster.is_some())
    }

    /// Waits until the running nodes agree on a controller and a cluster id and see every
    /// running broker unfenced; returns the controller.
    fn wait_ready(&self) -> NodeId {
        let mut controller = -1;
        wait_until("the quorum to settle", || {
            let images: Vec<Arc<MetadataImage>> = self.running().map(|n| n.image()).collect();
            let first = &images[0];
            controller = first.controller_id;
            self.running().any(|n| n.config.node_id == controller)
                && !first.cluster_id.is_empty()
                && images.iter().all(|i| {
                    i.controller_id == controller
                        && i.cluster_id == first.cluster_id
                        && self
                            .running()
                            .all(|n| i.brokers.get(&n.config.node_id).is_some_and(|b| !b.fenced))
                })
        });
        controller
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn submit(node: &TestNode, request: AdminRequest) -> AdminResult {
    let (tx, rx) = mpsc::channel();
    node.cluster().submit(
        request,
        REQUEST_TIMEOUT,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.recv_timeout(REQUEST_TIMEOUT + Duration::from_secs(5))
        .expect("every request is answered")
}

fn create(
    name: &str,
    partitions: i32,
    rf: i16,
    assignments: Option<Vec<Vec<NodeId>>>,
) -> AdminRequest {
    AdminRequest::CreateTopic {
        name: name.to_string(),
        partitions,
        replication_factor: rf,
        assignments,
        configs: BTreeMap::from([("cleanup.policy".to_string(), "delete".to_string())]),
    }
}

#[test]
fn a_node_outside_the_voters_joins_as_a_learner_and_survives_restarts() {
    let mut cluster = TestCluster::start();
    cluster.wait_ready();
    // Enough entries that the voters compacted their logs: the learner starts from a snapshot.
    for i in 0..30 {
        assert!(submit(cluster.node(1), create(&format!("t{i}"), 1, 2, None)).is_ok());
    }
    cluster.add_learner(4);
    wait_until("the learner to see the topics and be registered", || {
        let image = cluster.node(4).image();
        image.topics.len() == 30 && image.brokers.get(&4).is_some_and(|b| !b.fenced)
    });
    // Every voter sees it registered.
    wait_until("the voters to register the learner", || {
        (1..=3).all(|id| {
            cluster
                .node(id)
                .image()
                .brokers
                .get(&4)
                .is_some_and(|b| !b.fenced)
        })
    });
    // It forwards requests, and it can take replicas.
    let moved = AdminRequest::AlterReassignments {
        moves: vec![ReassignmentMove {
            topic: "t0".to_string(),
            partition: 0,
            target: Some(vec![4]),
        }],
    };
    assert!(submit(cluster.node(4), moved).is_ok());
    assert!(cluster.node(4).image().topics["t0"].partitions[0]
        .replicas
        .contains(&4));
    assert!(submit(cluster.node(4), create("from-learner", 2, 4, None)).is_ok());
    wait_until("the voters to apply the learner's request", || {
        (1..=3).all(|id| cluster.node(id).image().topics.contains_key("from-learner"))
    });
    assert_eq!(
        submit(cluster.node(4), create("from-learner", 1, 1, None)),
        Err(AdminError::TopicExists)
    );
    // The learner restarts: it replays what it had and follows on.
    cluster.nodes[3].stop();
    assert!(submit(cluster.node(2), create("while-down", 1, 1, None)).is_ok());
    cluster.nodes[3].start();
    assert!(
        cluster.node(4).image().topics.contains_key("from-learner"),
        "replayed at start"
    );
    wait_until("the restarted learner to catch up", || {
        cluster.node(4).image().topics.contains_key("while-down")
    });
    // The controller restarts: the learner is still in the configuration and follows.
    let controller = cluster.wait_ready();
    assert_ne!(controller, 4, "a learner never leads");
    cluster.node_mut(controller).stop();
    cluster.node_mut(controller).start();
    let controller = cluster.wait_ready();
    assert_ne!(controller, 4);
    assert!(submit(cluster.node(controller), create("after", 1, 1, None)).is_ok());
    wait_until("the learner to follow the new controller", || {
        cluster.node(4).image().topics.contains_key("after")
    });
    assert_eq!(cluster.node(4).cluster().status().controller_id, controller);
}
