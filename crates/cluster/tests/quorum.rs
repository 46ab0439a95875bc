//! Three `Cluster`s in one process on 127.0.0.1: election, forwarding, fencing, restart and
//! controller failover, observed through what each node publishes.

use ringbroker_cluster::{
    AdminError, AdminRequest, AdminResult, Cluster, ClusterConfig, MetadataImage, NodeId,
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
fn three_nodes_elect_agree_and_answer_a_forwarded_create_topic() {
    let cluster = TestCluster::start();
    let controller = cluster.wait_ready();
    let follower = (1..=3).find(|id| *id != controller).unwrap();
    let node = cluster.node(follower);

    let index = submit(node, create("orders", 3, 3, None)).expect("created");
    // Answered only once the asking node published an image holding it.
    let image = node.image();
    assert!(image.applied_index >= index);
    let topic = image
        .topics
        .get("orders")
        .expect("published before the reply");
    assert_eq!(topic.partitions.len(), 3);
    let leaders: Vec<NodeId> = topic.partitions.iter().map(|p| p.leader).collect();
    let mut sorted = leaders.clone();
    sorted.sort();
    assert_eq!(sorted, vec![1, 2, 3], "leaders spread: {leaders:?}");
    for p in &topic.partitions {
        assert_eq!(p.isr.len(), 3);
        assert_eq!(p.leader, p.replicas[0]);
    }
    wait_until("every node to publish the topic", || {
        cluster
            .nodes
            .iter()
            .all(|n| n.image().topics.get("orders") == Some(topic))
    });

    // Errors come back through the forwarding path too.
    assert_eq!(
        submit(node, create("orders", 1, 1, None)),
        Err(AdminError::TopicExists)
    );
    assert!(matches!(
        submit(node, create("wide", 1, 4, None)),
        Err(AdminError::InvalidReplicationFactor(_))
    ));
    // A stale AlterIsr is refused with the epoch errors; a current one is applied.
    let p0 = topic.partitions[0].clone();
    let alter = |leader_epoch, partition_epoch, isr: Vec<NodeId>| AdminRequest::AlterIsr {
        from: p0.leader,
        topic: "orders".to_string(),
        partition: 0,
        leader_epoch,
        partition_epoch,
        isr,
    };
    assert_eq!(
        submit(
            node,
            alter(p0.leader_epoch + 1, p0.partition_epoch, vec![p0.leader])
        ),
        Err(AdminError::FencedLeaderEpoch)
    );
    assert_eq!(
        submit(
            node,
            alter(p0.leader_epoch, p0.partition_epoch + 7, vec![p0.leader])
        ),
        Err(AdminError::InvalidUpdateVersion)
    );
    let index = submit(
        node,
        alter(p0.leader_epoch, p0.partition_epoch, vec![p0.leader]),
    )
    .expect("shrink");
    let p = &node.image().topics["orders"].partitions[0];
    assert!(node.image().applied_index >= index);
    assert_eq!(p.isr, vec![p0.leader]);
    assert_eq!(p.partition_epoch, p0.partition_epoch + 1);

    let status = node.cluster().status();
    assert_eq!(status.node_id, follower);
    assert_eq!(status.controller_id, controller);
    assert!(status.raft_term >= 1);
    assert!(status.applied_index >= index);
    assert!(status.committed_index >= status.applied_index);
}

#[test]
fn a_stopped_partition_leader_is_fenced_and_comes_back_after_restart() {
    let mut cluster = TestCluster::start();
    let controller = cluster.wait_ready();
    // The partition is led by a node that is not the controller.
    let victim = (1..=3).find(|id| *id != controller).unwrap();
    let others: Vec<NodeId> = (1..=3).filter(|id| *id != victim).collect();
    let replicas = vec![victim, others[0], others[1]];
    submit(
        cluster.node(controller),
        create("events", -1, -1, Some(vec![replicas.clone()])),
    )
    .expect("created");
    let before = cluster.node(controller).image().topics["events"].partitions[0].clone();
    assert_eq!(before.leader, victim);
    wait_until("the victim to apply the topic", || {
        cluster.node(victim).image().topics.contains_key("events")
    });

    cluster.node_mut(victim).stop();
    let stopped_at = Instant::now();
    let watcher = cluster.node(controller).latest.clone();
    let watch = || watcher.lock().unwrap().clone();
    wait_until("the stopped leader to be fenced", || {
        let image = watch();
        let p = &image.topics["events"].partitions[0];
        image.brokers[&victim].fenced && p.leader != victim
    });
    let fenced_after = stopped_at.elapsed();
    assert!(
        fenced_after < Duration::from_secs(5),
        "fenced after {fenced_after:?} (session timeout 2 s)"
    );
    let after = watch().topics["events"].partitions[0].clone();
    assert_eq!(
        after.leader, others[0],
        "the first unfenced ISR member leads"
    );
    assert_eq!(after.leader_epoch, before.leader_epoch + 1);
    assert!(!after.isr.contains(&victim));

    // Restart from its directory: the replayed image is published before start returns.
    cluster.node_mut(victim).start();
    let replayed = cluster.node(victim).image();
    assert!(
        replayed.topics.contains_key("events"),
        "start replays the node's own log"
    );
    wait_until("the restarted broker to be unfenced", || {
        cluster.running().all(|n| {
            let image = n.image();
            image.brokers.get(&victim).is_some_and(|b| !b.fenced)
                && image.topics["events"].partitions[0] == watch().topics["events"].partitions[0]
        })
    });
    // A new incarnation leads nothing and is in no ISR until its leader adds it back.
    let p = watch().topics["events"].partitions[0].clone();
    assert_eq!(p.leader, others[0]);
    assert!(!p.isr.contains(&victim));

    // The leader adds it back; the controller then moves leadership to the preferred replica.
    let mut isr = p.isr.clone();
    isr.push(victim);
    submit(
        cluster.node(victim),
        AdminRequest::AlterIsr {
            from: p.leader,
            topic: "events".to_string(),
            partition: 0,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr,
        },
    )
    .expect("expand");
    wait_until("leadership back at the preferred replica", || {
        let p = &cluster.node(victim).image().topics["events"].partitions[0];
        p.leader == victim
    });
    let back = cluster.node(victim).image().topics["events"].partitions[0].clone();
    assert_eq!(back.leader_epoch, p.leader_epoch + 1);
}

#[test]
fn a_new_controller_takes_over_when_the_active_one_stops() {
    let mut cluster = TestCluster::start();
    let old = cluster.wait_ready();
    for i in 0..3 {
        submit(cluster.node(old), create(&format!("t{i}"), 1, 2, None)).expect("created");
    }
    let cluster_id = cluster.node(old).image().cluster_id.clone();
    let old_applied = cluster.node(old).image().applied_index;
    cluster.node_mut(old).stop();
    let new = cluster.wait_ready();
    assert_ne!(new, old);
    let survivor = (1..=3).find(|id| *id != old && *id != new).unwrap();
    // Requests still work, and enough of them pass `snapshot_entries` (20): the new leader
    // compacts its log past what the stopped node has.
    let mut index = 0;
    for i in 0..25 {
        index =
            submit(cluster.node(survivor), create(&format!("s{i}"), 2, 2, None)).expect("created");
    }
    assert!(cluster.node(survivor).image().applied_index >= index);
    let snapshot: serde_json::Value = serde_json::from_slice(
        &std::fs::read(cluster.node(new).config.dir.join("snapshot.json")).expect("a snapshot"),
    )
    .unwrap();
    assert!(snapshot["index"].as_u64().unwrap() > old_applied + 1);
    wait_until("the old controller to be fenced", || {
        [new, survivor]
            .iter()
            .all(|&id| cluster.node(id).image().brokers[&old].fenced)
    });
    for id in [new, survivor] {
        let image = cluster.node(id).image();
        assert_eq!(image.cluster_id, cluster_id, "the cluster id never changes");
        assert_eq!(image.topics.len(), 28);
        for t in image.topics.values() {
            for p in &t.partitions {
                assert_ne!(p.leader, old, "a fenced broker leads nothing");
                assert!(!p.isr.contains(&old) || p.leader == -1);
            }
        }
    }
    // The old controller comes back and catches up from the leader's snapshot.
    cluster.node_mut(old).start();
    cluster.wait_ready();
    wait_until("the old controller to catch up", || {
        let a = cluster.node(old).image();
        let b = cluster.node(new).image();
        a.topics == b.topics && a.brokers == b.brokers && a.cluster_id == cluster_id
    });
}

#[test]
fn requests_without_a_quorum_fail_by_their_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let voters: Vec<(NodeId, SocketAddr)> = (1..=3).map(|id| (id, free_addr())).collect();
    let config = ClusterConfig::new(
        1,
        voters.clone(),
        voters[0].1,
        "127.0.0.1".to_string(),
        9001,
        dir.path().to_path_buf(),
    );
    let cluster = Cluster::start(config, Box::new(|_| {})).expect("start");
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    cluster.submit(
        create("lonely", 1, 1, None),
        Duration::from_millis(800),
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    let r = rx.recv_timeout(Duration::from_secs(5)).expect("answered");
    assert_eq!(r, Err(AdminError::NotController));
    assert!(started.elapsed() >= Duration::from_millis(700));
    cluster.shutdown();
    // After shutdown requests fail at once.
    let (tx, rx) = mpsc::channel();
    cluster.submit(
        create("late", 1, 1, None),
        Duration::from_secs(5),
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(1)).expect("answered"),
        Err(AdminError::NotController)
    );
}

#[test]
fn a_voter_that_accepts_but_never_reads_blocks_nobody() {
    let dir = tempfile::tempdir().unwrap();
    // Voter 3 is a socket whose connections complete in the kernel but are never read: a
    // paused process. Voters 1 and 2 are a majority and must carry on.
    let paused = TcpListener::bind("127.0.0.1:0").unwrap();
    let voters: Vec<(NodeId, SocketAddr)> = vec![
        (1, free_addr()),
        (2, free_addr()),
        (3, paused.local_addr().unwrap()),
    ];
    let mut nodes: Vec<TestNode> = (1..=2)
        .map(|id| {
            let mut config = ClusterConfig::new(
                id,
                voters.clone(),
                voters[(id - 1) as usize].1,
                "127.0.0.1".to_string(),
                9000 + id as u16,
                dir.path().join(format!("node-{id}")),
            );
            config.tick = Duration::from_millis(50);
            let mut node = TestNode {
                config,
                latest: Arc::new(Mutex::new(Arc::new(MetadataImage::default()))),
                cluster: None,
            };
            node.start();
            node
        })
        .collect();
    wait_until("a controller and a cluster id", || {
        nodes
            .iter()
            .all(|n| n.image().controller_id != -1 && !n.image().cluster_id.is_empty())
    });
    // Enough traffic to fill the socket buffers towards the paused voter.
    for i in 0..40 {
        let mut configs = BTreeMap::new();
        configs.insert("padding".to_string(), "x".repeat(20_000));
        let request = AdminRequest::CreateTopic {
            name: format!("big{i}"),
            partitions: 1,
            replication_factor: 1,
            assignments: None,
            configs,
        };
        let started = Instant::now();
        submit(&nodes[i % 2], request).expect("created");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "request {i} took {:?}",
            started.elapsed()
        );
    }
    let started = Instant::now();
    for n in &mut nodes {
        n.stop();
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    drop(paused);
}

#[test]
fn a_single_voter_leads_itself_and_survives_restart() {
    fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<Cluster>();

    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut config = ClusterConfig::new(
        1,
        vec![(1, addr)],
        addr,
        "127.0.0.1".to_string(),
        9092,
        dir.path().to_path_buf(),
    );
    config.tick = Duration::from_millis(20);
    let mut node = TestNode {
        config,
        latest: Arc::new(Mutex::new(Arc::new(MetadataImage::default()))),
        cluster: None,
    };
    node.start();
    wait_until("the single voter to lead", || {
        let i = node.image();
        i.controller_id == 1
            && !i.cluster_id.is_empty()
            && i.brokers.get(&1).is_some_and(|b| !b.fenced)
    });
    let index = submit(&node, create("solo", 4, -1, None)).expect("created");
    let image = node.image();
    assert!(image.applied_index >= index);
    let topic = &image.topics["solo"];
    assert!(topic
        .partitions
        .iter()
        .all(|p| p.replicas == vec![1] && p.leader == 1));
    assert_eq!(topic.configs["cleanup.policy"], "delete");
    let cluster_id = image.cluster_id.clone();
    node.stop();
    node.start();
    let replayed = node.image();
    assert_eq!(replayed.cluster_id, cluster_id);
    assert_eq!(replayed.topics["solo"], *topic);
    assert_eq!(
        replayed.controller_id, -1,
        "not known before the quorum runs"
    );
    wait_until("the restarted voter to lead again", || {
        node.image().controller_id == 1
    });
}

#[test]
fn oversized_requests_are_refused_and_another_voter_set_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut config = ClusterConfig::new(
        1,
        vec![(1, addr)],
        addr,
        "127.0.0.1".to_string(),
        9092,
        dir.path().join("meta").join("raft"),
    );
    config.tick = Duration::from_millis(20);
    let mut node = TestNode {
        config: config.clone(),
        latest: Arc::new(Mutex::new(Arc::new(MetadataImage::default()))),
        cluster: None,
    };
    node.start();
    wait_until("the single voter to lead", || {
        let i = node.image();
        i.controller_id == 1 && i.brokers.get(&1).is_some_and(|b| !b.fenced)
    });
    let huge = AdminRequest::CreateTopic {
        name: "huge".to_string(),
        partitions: 1,
        replication_factor: 1,
        assignments: None,
        configs: BTreeMap::from([(
            "x".to_string(),
            "v".repeat(ringbroker_cluster::state::COMMAND_BYTES_MAX),
        )]),
    };
    match submit(&node, huge) {
        Err(AdminError::Other(msg)) => assert!(msg.contains("over the limit"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // Nothing oversized reached the log: the node restarts with what it had.
    submit(&node, create("small", 1, 1, None)).expect("created");
    node.stop();
    node.start();
    assert!(node.image().topics.contains_key("small"));
    assert!(!node.image().topics.contains_key("huge"));
    node.stop();
    // The same directory with another --cluster list is refused.
    let mut other = config;
    other.voters.push((2, free_addr()));
    let e = Cluster::start(other, Box::new(|_| {})).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("voters"), "{e}");
}
