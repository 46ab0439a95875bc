//! Adding a broker and moving a partition onto it (KIP-455), with real brokers (`--cluster`)
//! and kafka-python's admin client: a fourth broker started outside the voter list joins as a
//! metadata learner and registers; a partition with data moves from replicas [1, 2] to
//! [2, 4]; the new replica catches up by fetching, the move completes on its own
//! (ListPartitionReassignments shows none), Metadata names the new replicas, the new
//! replica's log is byte-identical to the leader's, the removed replica's directory is gone
//! and a consumer reads every record.

mod common;

use common::cluster::{metadata, wait_metadata, Cluster};
use common::run;
use kafka_protocol::messages::metadata_response::MetadataResponse;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn py(args: &[&str]) -> serde_json::Value {
    let path = format!(
        "{}/../../tests/clients/cluster_reassign.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut full = vec![path.as_str()];
    full.extend_from_slice(args);
    let out = run("python3", &full, "");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out:?}: {e}"))
}

/// (replicas, isr sorted, leader) of partition `p` of `topic`.
fn partition(m: &MetadataResponse, topic: &str, p: i32) -> Option<(Vec<i32>, Vec<i32>, i32)> {
    let t = m
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic) && t.error_code == 0)?;
    let p = t.partitions.iter().find(|x| x.partition_index == p)?;
    let mut isr: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
    isr.sort_unstable();
    Some((
        p.replica_nodes.iter().map(|b| b.0).collect(),
        isr,
        p.leader_id.0,
    ))
}

/// The concatenated `.log` segments of `topic`-`partition` on a node.
fn log_bytes(data_dir: &Path, topic: &str, partition: i32) -> Vec<u8> {
    let dir = data_dir.join(format!("{topic}-{partition}"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut names: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap_or_default())
        .collect()
}

fn wait_until(c: &Cluster, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_partition_with_data_moves_to_an_added_broker() {
    let mut c = Cluster::start(3);
    let topic = "moving";
    let created = py(&["create", &c.bootstrap(), topic, "1,2;3,1"]);
    assert_eq!(created["ok"], true, "{created}\n{}", c.logs());
    wait_metadata(&c.addr(1), Some(&[topic]), WAIT, |m| {
        partition(m, topic, 0).is_some_and(|(_, isr, l)| l == 1 && isr == vec![1, 2])
    });
    let produced = py(&["produce", &c.bootstrap(), topic, "0", "2000"]);
    assert_eq!(produced["acked"], 2000, "{produced}\n{}", c.logs());

    // Errors as Kafka's (kafka-python names code 39 InvalidReplicationAssignmentError): a
    // cancel of nothing, an unknown broker, a broker twice, an unknown partition.
    let refused = |partition: &str, replicas: &str| {
        py(&["reassign", &c.bootstrap(), topic, partition, replicas])["result"].clone()
    };
    assert_eq!(refused("0", "none"), "NoReassignmentInProgressError");
    assert_eq!(refused("0", "2,9"), "InvalidReplicationAssignmentError");
    assert_eq!(refused("0", "2,2"), "InvalidReplicationAssignmentError");
    assert_eq!(refused("5", "2,3"), "UnknownTopicOrPartitionError");
    assert_eq!(
        py(&["list", &c.bootstrap()])["ongoing"],
        serde_json::json!([])
    );

    // Broker 4 is not registered yet: a target naming it is refused.
    assert_eq!(refused("0", "2,4"), "InvalidReplicationAssignmentError");
    let added = c.add_node();
    assert_eq!(added, 4);
    for node in 1..=4 {
        wait_metadata(&c.addr(node), None, WAIT, |m| m.brokers.len() == 4);
    }
    let moved = py(&["reassign", &c.bootstrap(), topic, "0", "2,4"]);
    assert_eq!(
        moved["result"],
        serde_json::Value::Null,
        "{moved}\n{}",
        c.logs()
    );
    // It completes on its own once broker 3 caught up.
    wait_until(&c, "the reassignment did not complete", || {
        py(&["list", &c.bootstrap()])["ongoing"] == serde_json::json!([])
    });
    for node in 1..=4 {
        wait_metadata(&c.addr(node), Some(&[topic]), WAIT, |m| {
            partition(m, topic, 0)
                .is_some_and(|(r, isr, l)| r == vec![2, 4] && isr == vec![2, 4] && l == 2)
        });
    }
    // The other partition did not move.
    let other = partition(&metadata(&c.addr(1), Some(&[topic])), topic, 1).expect("partition 1");
    assert_eq!(other.0, vec![3, 1]);
    // The new replica holds the leader's bytes; the removed one dropped its copy.
    let leader = log_bytes(&c.node(2).data_dir, topic, 0);
    assert!(!leader.is_empty());
    wait_until(&c, "broker 4's log differs from the leader's", || {
        log_bytes(&c.node(4).data_dir, topic, 0) == leader
    });
    let removed = c.node(1).data_dir.join(format!("{topic}-0"));
    wait_until(&c, "broker 1 kept the moved partition", || {
        !removed.exists()
    });
    let consumed = py(&["consume", &c.bootstrap(), topic, "0", "2000", "60"]);
    let values: Vec<i64> = consumed["values"]
        .as_array()
        .unwrap_or_else(|| panic!("{consumed}"))
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(values, (0..2000).collect::<Vec<i64>>());

    // The CLI: partition 1 moves from [3, 1] to [3, 4]; a cancel of nothing fails.
    let cli = |args: &[&str]| {
        let mut full = vec!["topic"];
        full.extend_from_slice(args);
        let bootstrap = c.bootstrap();
        full.extend_from_slice(&["--brokers", &bootstrap, "--format", "json"]);
        common::run_status(env!("CARGO_BIN_EXE_ringbroker"), &full, "")
    };
    let (ok, out, err) = cli(&["reassign", "--topic", topic, "-p", "1", "--replicas", "3,4"]);
    assert!(ok, "{out}{err}");
    let answer: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(answer["error"], serde_json::Value::Null, "{answer}");
    wait_until(&c, "the CLI's reassignment did not complete", || {
        let (ok, out, _) = cli(&["reassignments"]);
        ok && serde_json::from_str::<serde_json::Value>(out.trim())
            .is_ok_and(|v| v["reassignments"] == serde_json::json!([]))
    });
    wait_metadata(&c.addr(1), Some(&[topic]), WAIT, |m| {
        partition(m, topic, 1).is_some_and(|(r, isr, _)| r == vec![3, 4] && isr == vec![3, 4])
    });
    let (ok, out, _) = cli(&["reassign", "--topic", topic, "-p", "1", "--cancel"]);
    assert!(!ok, "a cancel of nothing fails: {out}");
    assert!(out.contains("NO_REASSIGNMENT_IN_PROGRESS"), "{out}");
}

#[test]
fn a_broker_alone_answers_as_a_one_broker_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::Broker::start(dir.path(), &[]);
    let created = py(&["create", &broker.addr, "alone", "0"]);
    assert_eq!(created["ok"], true, "{created}");
    let reassign = |partition: &str, replicas: &str| {
        py(&["reassign", &broker.addr, "alone", partition, replicas])["result"].clone()
    };
    // Its replicas already: nothing to do, success.
    assert_eq!(reassign("0", "0"), serde_json::Value::Null);
    assert_eq!(reassign("0", "0,1"), "InvalidReplicationAssignmentError");
    assert_eq!(reassign("0", "none"), "NoReassignmentInProgressError");
    assert_eq!(reassign("3", "0"), "UnknownTopicOrPartitionError");
    assert_eq!(
        py(&["list", &broker.addr])["ongoing"],
        serde_json::json!([])
    );
}
