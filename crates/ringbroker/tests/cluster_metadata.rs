//! Clusters at the metadata level (`--cluster`): three processes form one cluster that real
//! clients see whole (brokers, controller, replica sets with leaders spread over the nodes);
//! admin requests work from any node; FindCoordinator names the leader of the group's offsets
//! partition and the other nodes send group requests there; a killed node leaves Metadata and
//! the partitions it led get new leaders, a restarted one comes back.

mod common;

use common::cluster::{metadata, wait_metadata, Cluster};
use common::{run, Client};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableReplicaAssignment, CreatableTopic};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::metadata_response::MetadataResponse;
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const NOT_COORDINATOR: i16 = 16;
const WAIT: Duration = Duration::from_secs(20);

fn python_admin(args: &[&str]) -> serde_json::Value {
    let path = format!(
        "{}/../../tests/clients/cluster_admin.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut full = vec![path.as_str()];
    full.extend_from_slice(args);
    let out = run("python3", &full, "");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out:?}: {e}"))
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Broker ids a Metadata response lists.
fn broker_ids(m: &MetadataResponse) -> BTreeSet<i32> {
    m.brokers.iter().map(|b| b.node_id.0).collect()
}

/// (leader, leader epoch, replicas, isr, offline) of each partition of `topic`.
type PartitionView = (i32, i32, Vec<i32>, Vec<i32>, Vec<i32>);

fn partitions(m: &MetadataResponse, topic: &str) -> Option<Vec<PartitionView>> {
    let t = m
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic) && t.error_code == 0)?;
    let mut ps: Vec<_> = t.partitions.iter().collect();
    ps.sort_by_key(|p| p.partition_index);
    Some(
        ps.into_iter()
            .map(|p| {
                (
                    p.leader_id.0,
                    p.leader_epoch,
                    p.replica_nodes.iter().map(|b| b.0).collect(),
                    p.isr_nodes.iter().map(|b| b.0).collect(),
                    p.offline_replicas.iter().map(|b| b.0).collect(),
                )
            })
            .collect(),
    )
}

fn has_topic(m: &MetadataResponse, topic: &str) -> bool {
    m.topics
        .iter()
        .any(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
}

/// Waits until every node of `cluster` lists all `ids` as brokers and agrees on a controller.
fn wait_brokers(cluster: &Cluster, ids: &[i32]) -> MetadataResponse {
    let want: BTreeSet<i32> = ids.iter().copied().collect();
    let mut last = None;
    for node in cluster.nodes.iter().filter(|n| n.broker.is_some()) {
        last = Some(wait_metadata(&node.addr(), None, WAIT, |m| {
            broker_ids(m) == want && want.contains(&m.controller_id.0)
        }));
    }
    last.expect("a running node")
}

#[test]
fn three_nodes_form_one_cluster_that_clients_see_whole() {
    let cluster = Cluster::start(3);
    let m = wait_brokers(&cluster, &[1, 2, 3]);
    let controller = m.controller_id.0;
    let cluster_id = m.cluster_id.clone().expect("a cluster id");
    for node in &cluster.nodes {
        let m = metadata(&node.addr(), None);
        assert_eq!(m.cluster_id.as_ref(), Some(&cluster_id), "node {}", node.id);
        assert_eq!(m.controller_id.0, controller, "node {}", node.id);
        // Each broker is listed at its own client address.
        for b in &m.brokers {
            assert_eq!(b.port, cluster.node(b.node_id.0).client_port as i32);
        }
    }

    // kcat (librdkafka) and kafka-python's admin see three brokers and the controller.
    let listing = run("timeout", &["30", "kcat", "-L", "-b", &cluster.addr(1)], "");
    assert!(listing.contains(" 3 brokers:"), "{listing}");
    assert!(
        listing.contains(&format!(
            "broker {controller} at 127.0.0.1:{} (controller)",
            cluster.node(controller).client_port
        )),
        "{listing}"
    );
    let described = python_admin(&["describe", &cluster.addr(2)]);
    assert_eq!(described["brokers"], serde_json::json!([1, 2, 3]));
    assert_eq!(described["controller_id"], controller);
    assert_eq!(described["cluster_id"], cluster_id.as_str());

    // A topic created with RF 3 through one node: three replicas everywhere, leaders spread.
    let non_controller = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != controller)
        .unwrap();
    let created = python_admin(&["create", &cluster.addr(non_controller), "spread", "6", "3"]);
    assert_eq!(created, serde_json::json!({"ok": true}));
    for node in &cluster.nodes {
        let m = wait_metadata(&node.addr(), None, WAIT, |m| {
            partitions(m, "spread").is_some_and(|p| p.len() == 6)
        });
        let ps = partitions(&m, "spread").unwrap();
        let leaders: BTreeSet<i32> = ps.iter().map(|p| p.0).collect();
        assert_eq!(
            leaders,
            BTreeSet::from([1, 2, 3]),
            "node {}: {ps:?}",
            node.id
        );
        for (leader, _, replicas, isr, offline) in &ps {
            let mut sorted = replicas.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [1, 2, 3], "{ps:?}");
            assert_eq!(replicas[0], *leader, "the preferred replica leads: {ps:?}");
            assert!(isr.contains(leader), "{ps:?}");
            assert!(offline.is_empty(), "{ps:?}");
        }
    }
    // kafka-python's describe_topics agrees.
    let described = python_admin(&["topic", &cluster.addr(3), "spread"]);
    assert_eq!(described.as_object().unwrap().len(), 6, "{described}");
    // Every node holds the log of every partition (RF 3 over 3 nodes).
    for node in &cluster.nodes {
        for p in 0..6 {
            assert!(
                node.data_dir.join(format!("spread-{p}")).is_dir(),
                "node {} has no spread-{p}",
                node.id
            );
        }
    }

    // CreatePartitions and DeleteTopics answered by a node that is not the controller.
    let mut client = Client::connect(&cluster.addr(non_controller));
    let grown: CreatePartitionsResponse = client.call(
        ApiKey::CreatePartitions,
        3,
        &CreatePartitionsRequest::default()
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(topic_name("spread"))
                .with_count(9)
                .with_assignments(None)])
            .with_timeout_ms(10_000),
    );
    assert_eq!(grown.results[0].error_code, 0, "{grown:?}");
    // Answered once the node that was asked sees the change.
    let m = metadata(&cluster.addr(non_controller), None);
    assert_eq!(partitions(&m, "spread").map(|p| p.len()), Some(9));
    for node in &cluster.nodes {
        wait_metadata(&node.addr(), None, WAIT, |m| {
            partitions(m, "spread").is_some_and(|p| p.len() == 9)
        });
    }
    let deleted: DeleteTopicsResponse = client.call(
        ApiKey::DeleteTopics,
        6,
        &DeleteTopicsRequest::default()
            .with_topics(vec![
                DeleteTopicState::default().with_name(Some(topic_name("spread")))
            ])
            .with_timeout_ms(10_000),
    );
    assert_eq!(deleted.responses[0].error_code, 0, "{deleted:?}");
    assert!(!has_topic(
        &metadata(&cluster.addr(non_controller), None),
        "spread"
    ));
    for node in &cluster.nodes {
        wait_metadata(&node.addr(), None, WAIT, |m| !has_topic(m, "spread"));
    }
    // The partitions' files are gone from every node.
    let deadline = std::time::Instant::now() + WAIT;
    for node in &cluster.nodes {
        while node.data_dir.join("spread-0").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "node {} kept spread-0",
                node.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Deleting it again: unknown.
    let again: DeleteTopicsResponse = client.call(
        ApiKey::DeleteTopics,
        6,
        &DeleteTopicsRequest::default()
            .with_topics(vec![
                DeleteTopicState::default().with_name(Some(topic_name("spread")))
            ])
            .with_timeout_ms(10_000),
    );
    assert_eq!(again.responses[0].error_code, 3, "{again:?}");

    // Auto-creation on Metadata goes through the controller with the default RF (3).
    let auto = wait_metadata(&cluster.addr(3), Some(&["auto-made"]), WAIT, |m| {
        partitions(m, "auto-made").is_some()
    });
    for (_, _, replicas, _, _) in partitions(&auto, "auto-made").unwrap() {
        assert_eq!(replicas.len(), 3, "{auto:?}");
    }
    for node in &cluster.nodes {
        wait_metadata(&node.addr(), None, WAIT, |m| has_topic(m, "auto-made"));
    }
    // Topic configs changed on one node are the cluster's.
    let altered: IncrementalAlterConfigsResponse = client.call(
        ApiKey::IncrementalAlterConfigs,
        1,
        &IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("auto-made"))
                .with_configs(vec![AlterableConfig::default()
                    .with_name(StrBytes::from_static_str("retention.ms"))
                    .with_config_operation(0)
                    .with_value(Some(StrBytes::from_static_str("1234")))]),
        ]),
    );
    assert_eq!(altered.responses[0].error_code, 0, "{altered:?}");
    for node in &cluster.nodes {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let described: DescribeConfigsResponse = Client::connect(&node.addr()).call(
                ApiKey::DescribeConfigs,
                4,
                &DescribeConfigsRequest::default().with_resources(vec![
                    DescribeConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(StrBytes::from_static_str("auto-made"))
                        .with_configuration_keys(Some(vec![StrBytes::from_static_str(
                            "retention.ms",
                        )])),
                ]),
            );
            let value = described.results[0].configs[0].value.clone();
            if value.as_deref() == Some("1234") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {}: {described:?}",
                node.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // validate_only is answered locally: more replicas than brokers is refused, nothing made.
    let checked: CreateTopicsResponse = client.call(
        ApiKey::CreateTopics,
        5,
        &CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name("too-many"))
                .with_num_partitions(1)
                .with_replication_factor(4)])
            .with_validate_only(true)
            .with_timeout_ms(10_000),
    );
    assert_eq!(checked.topics[0].error_code, 38, "{checked:?}");
    let checked: CreateTopicsResponse = client.call(
        ApiKey::CreateTopics,
        5,
        &CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name("just-checked"))
                .with_num_partitions(2)
                .with_replication_factor(-1)])
            .with_validate_only(true)
            .with_timeout_ms(10_000),
    );
    assert_eq!(checked.topics[0].error_code, 0, "{checked:?}");
    assert_eq!(checked.topics[0].replication_factor, 3, "{checked:?}");
    assert!(!has_topic(
        &metadata(&cluster.addr(1), None),
        "just-checked"
    ));
    // Replicas chosen by the client are kept as given; unknown brokers are refused.
    let mut assigned = |name: &str, replicas: &[&[i32]]| -> CreateTopicsResponse {
        client.call(
            ApiKey::CreateTopics,
            5,
            &CreateTopicsRequest::default()
                .with_topics(vec![CreatableTopic::default()
                    .with_name(topic_name(name))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1)
                    .with_assignments(
                        replicas
                            .iter()
                            .enumerate()
                            .map(|(p, brokers)| {
                                CreatableReplicaAssignment::default()
                                    .with_partition_index(p as i32)
                                    .with_broker_ids(brokers.iter().map(|&b| BrokerId(b)).collect())
                            })
                            .collect(),
                    )])
                .with_timeout_ms(10_000),
        )
    };
    let placed = assigned("placed", &[&[2, 3], &[3, 1]]);
    assert_eq!(placed.topics[0].error_code, 0, "{placed:?}");
    assert_eq!(placed.topics[0].replication_factor, 2, "{placed:?}");
    let refused = assigned("misplaced", &[&[1, 9]]);
    assert_eq!(refused.topics[0].error_code, 39, "{refused:?}");
    let m = metadata(&cluster.addr(non_controller), None);
    let ps = partitions(&m, "placed").unwrap();
    assert_eq!(ps[0].2, [2, 3], "{ps:?}");
    assert_eq!(ps[1].2, [3, 1], "{ps:?}");

    // FindCoordinator names the leader of the group's offsets partition, a live broker; the
    // other nodes answer group requests NOT_COORDINATOR.
    wait_metadata(&cluster.addr(1), None, WAIT, |m| {
        partitions(m, "__consumer_offsets")
            .is_some_and(|p| p.len() == 8 && p.iter().all(|x| x.0 > 0))
    });
    let group = "cluster-group";
    let mut coordinators = BTreeMap::new();
    for node in &cluster.nodes {
        let found: FindCoordinatorResponse = Client::connect(&node.addr()).call(
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default()
                .with_key(StrBytes::from_static_str(group))
                .with_key_type(0),
        );
        assert_eq!(found.error_code, 0, "{found:?}");
        assert_eq!(found.port, cluster.node(found.node_id.0).client_port as i32);
        coordinators.insert(node.id, found.node_id.0);
    }
    let coordinator = coordinators[&1];
    assert!(
        coordinators.values().all(|&c| c == coordinator),
        "{coordinators:?}"
    );
    for node in &cluster.nodes {
        let answer: HeartbeatResponse = Client::connect(&node.addr()).call(
            ApiKey::Heartbeat,
            4,
            &HeartbeatRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str(group)))
                .with_generation_id(1)
                .with_member_id(StrBytes::from_static_str("nobody")),
        );
        if node.id == coordinator {
            assert_ne!(answer.error_code, NOT_COORDINATOR, "node {}", node.id);
        } else {
            assert_eq!(answer.error_code, NOT_COORDINATOR, "node {}", node.id);
        }
    }
    // kafka-python finds the coordinator and describes the group there.
    let described = python_admin(&["group", &cluster.bootstrap(), group]);
    assert_eq!(described["group"], group, "{described}");
}

#[test]
fn a_killed_node_leaves_and_its_partitions_get_new_leaders_then_it_comes_back() {
    let mut cluster = Cluster::start(3);
    wait_brokers(&cluster, &[1, 2, 3]);
    let created = python_admin(&["create", &cluster.addr(1), "failover", "3", "3"]);
    assert_eq!(created, serde_json::json!({"ok": true}));
    let before = wait_metadata(&cluster.addr(1), None, WAIT, |m| {
        partitions(m, "failover").is_some_and(|p| p.len() == 3)
    });
    let before = partitions(&before, "failover").unwrap();
    let victim = before[0].0;
    let led: Vec<usize> = (0..3).filter(|&p| before[p].0 == victim).collect();
    let survivor = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != victim)
        .unwrap();

    cluster.kill(victim);
    let started = std::time::Instant::now();
    let survivors: Vec<i32> = (1..=3).filter(|&id| id != victim).collect();
    let after = wait_metadata(&cluster.addr(survivor), None, WAIT, |m| {
        let Some(ps) = partitions(m, "failover") else {
            return false;
        };
        broker_ids(m) == survivors.iter().copied().collect()
            && led.iter().all(|&p| ps[p].0 != victim && ps[p].0 > 0)
    });
    let gone_after = started.elapsed();
    assert!(gone_after < Duration::from_secs(10), "took {gone_after:?}");
    let after_ps = partitions(&after, "failover").unwrap();
    for &p in &led {
        let (leader, epoch, _, isr, offline) = &after_ps[p];
        assert!(survivors.contains(leader), "{after_ps:?}");
        assert!(
            *epoch > before[p].1,
            "epoch bumped: {before:?} -> {after_ps:?}"
        );
        assert!(!isr.contains(&victim), "{after_ps:?}");
        assert_eq!(offline, &[victim], "{after_ps:?}");
    }
    // The other survivor agrees.
    let other = survivors
        .iter()
        .copied()
        .find(|&id| id != survivor)
        .unwrap();
    wait_metadata(&cluster.addr(other), None, WAIT, |m| {
        broker_ids(m) == survivors.iter().copied().collect()
            && partitions(m, "failover").is_some_and(|ps| ps == after_ps)
    });

    cluster.restart(victim);
    let back = wait_brokers(&cluster, &[1, 2, 3]);
    assert!(has_topic(&back, "failover"), "{back:?}");
    // The restarted node knows the topic and its new leaders.
    let seen = wait_metadata(&cluster.addr(victim), None, WAIT, |m| {
        partitions(m, "failover").is_some_and(|ps| {
            led.iter()
                .all(|&p| ps[p].0 != victim || ps[p].1 > after_ps[p].1)
        })
    });
    assert_eq!(
        broker_ids(&seen),
        BTreeSet::from([1, 2, 3]),
        "{}",
        cluster.logs()
    );
}

#[test]
fn a_paused_node_is_fenced_until_resumed_and_a_node_down_during_a_delete_drops_the_files() {
    let mut cluster = Cluster::start(3);
    let m = wait_brokers(&cluster, &[1, 2, 3]);
    let controller = m.controller_id.0;
    let created = python_admin(&["create", &cluster.addr(controller), "held", "3", "3"]);
    assert_eq!(created, serde_json::json!({"ok": true}));
    let target = (1..=3).find(|&id| id != controller).unwrap();
    for node in &cluster.nodes {
        wait_metadata(&node.addr(), None, WAIT, |m| {
            partitions(m, "held").is_some()
        });
    }
    assert!(cluster.node(target).data_dir.join("held-0").is_dir());

    // SIGSTOP: its sockets stay open but it stops heartbeating; the controller fences it.
    cluster.pause(target);
    let others: BTreeSet<i32> = (1..=3).filter(|&id| id != target).collect();
    let fenced = wait_metadata(&cluster.addr(controller), None, WAIT, |m| {
        broker_ids(m) == others
            && partitions(m, "held").is_some_and(|ps| ps.iter().all(|p| p.0 != target))
    });
    for (leader, _, _, isr, offline) in partitions(&fenced, "held").unwrap() {
        assert!(others.contains(&leader));
        assert!(!isr.contains(&target));
        assert_eq!(offline, [target]);
    }
    cluster.resume(target);
    wait_brokers(&cluster, &[1, 2, 3]);

    // Down while its topic is deleted: at the next start it removes the topic's files.
    cluster.kill(target);
    let mut client = Client::connect(&cluster.addr(controller));
    let deleted: DeleteTopicsResponse = client.call(
        ApiKey::DeleteTopics,
        6,
        &DeleteTopicsRequest::default()
            .with_topics(vec![
                DeleteTopicState::default().with_name(Some(topic_name("held")))
            ])
            .with_timeout_ms(10_000),
    );
    assert_eq!(deleted.responses[0].error_code, 0, "{deleted:?}");
    assert!(cluster.node(target).data_dir.join("held-0").is_dir());
    cluster.restart(target);
    assert!(
        !cluster.node(target).data_dir.join("held-0").exists(),
        "{}",
        cluster.log(target)
    );
    let m = wait_brokers(&cluster, &[1, 2, 3]);
    assert!(!has_topic(&m, "held"));
    assert!(!has_topic(&metadata(&cluster.addr(target), None), "held"));
}

#[test]
fn a_single_node_data_dir_is_refused_and_a_one_node_cluster_works() {
    // A data dir with topics of a broker that ran alone: cluster mode would delete them.
    let dir = tempfile::tempdir().unwrap();
    let mut alone = common::Broker::start(dir.path(), &[]);
    assert!(alone.stop().success());
    let internal = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (ok, out) = common::run_unchecked(
        env!("CARGO_BIN_EXE_ringbroker"),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--node-id",
            "1",
            "--cluster",
            &format!("1@{internal}"),
        ],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("ran without --cluster"), "{out}");
    assert!(dir.path().join("__consumer_offsets-0").is_dir());

    // One voter: a cluster of one, replication factor 1.
    let cluster = Cluster::start(1);
    let m = wait_metadata(&cluster.addr(1), None, WAIT, |m| {
        partitions(m, "__consumer_offsets").is_some_and(|p| p.iter().all(|x| x.0 == 1))
    });
    assert_eq!(broker_ids(&m), BTreeSet::from([1]));
    assert_eq!(m.controller_id.0, 1);
    for (_, _, replicas, _, _) in partitions(&m, "__consumer_offsets").unwrap() {
        assert_eq!(replicas, [1]);
    }
}

#[test]
fn a_consumer_group_reaches_its_coordinator_on_another_node() {
    let cluster = Cluster::start(3);
    wait_brokers(&cluster, &[1, 2, 3]);
    wait_metadata(&cluster.addr(1), None, WAIT, |m| {
        partitions(m, "__consumer_offsets")
            .is_some_and(|p| p.len() == 8 && p.iter().all(|x| x.0 > 0))
    });
    // One replica per partition: this test is about group routing, not data replication.
    let created = python_admin(&["create", &cluster.addr(1), "grouped", "3", "1"]);
    assert_eq!(created, serde_json::json!({"ok": true}));
    for node in &cluster.nodes {
        wait_metadata(&node.addr(), None, WAIT, |m| {
            partitions(m, "grouped").is_some_and(|p| p.iter().all(|x| x.0 > 0))
        });
    }
    let input: String = (0..30).map(|i| format!("k{i}\tv{i}\n")).collect();
    common::kcat_produce(&cluster.bootstrap(), "grouped", &input);

    // A group whose coordinator is not node 1, the only node the consumer is told about.
    let coordinator_of = |group: &str| {
        let found: FindCoordinatorResponse = Client::connect(&cluster.addr(1)).call(
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default()
                .with_key(StrBytes::from_string(group.to_string()))
                .with_key_type(0),
        );
        assert_eq!(found.error_code, 0, "{found:?}");
        found.node_id.0
    };
    let group = (0..)
        .map(|i| format!("routed-{i}"))
        .find(|g| coordinator_of(g) != 1)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("member.txt");
    let script = format!(
        "{}/../../tests/clients/kafka_python_client.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let member = |seconds: &str| {
        run(
            "python3",
            &[
                &script,
                "group-member",
                &cluster.addr(1),
                "grouped",
                &group,
                out.to_str().unwrap(),
                seconds,
            ],
            "",
        );
        std::fs::read_to_string(&out).unwrap_or_default()
    };
    let first = member("8");
    let records = first.lines().filter(|l| l.starts_with("record\t")).count();
    assert_eq!(records, 30, "{first}");
    assert!(first.contains("assigned\t0,1,2"), "{first}");
    // Its commits are at the coordinator: a new session of the group reads nothing again.
    std::fs::remove_file(&out).unwrap();
    let second = member("4");
    assert!(second.contains("assigned\t0,1,2"), "{second}");
    assert!(!second.contains("record\t"), "{second}");
}
