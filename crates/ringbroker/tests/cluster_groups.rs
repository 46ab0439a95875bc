//! Group coordinator failover in a cluster: the coordinator of a group is the leader of its
//! `__consumer_offsets` partition; when that node dies, the partition's new leader (a replica
//! that fetched the committed offsets) loads the group's offsets from its log, and the group
//! resumes where it committed.

mod common;

use common::cluster::{wait_metadata, Cluster};
use common::{run, Client};
use kafka_protocol::messages::metadata_response::MetadataResponse;
use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// Every partition of `topic` led and with `isr` in-sync replicas.
fn settled(m: &MetadataResponse, topic: &str, isr: usize) -> bool {
    m.topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
        .is_some_and(|t| {
            !t.partitions.is_empty()
                && t.partitions
                    .iter()
                    .all(|p| p.leader_id.0 > 0 && p.isr_nodes.len() == isr)
        })
}

fn coordinator(addr: &str, group: &str) -> Option<i32> {
    let found: FindCoordinatorResponse = Client::connect(addr).call(
        ApiKey::FindCoordinator,
        3,
        &FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(group.to_string()))
            .with_key_type(0),
    );
    (found.error_code == 0).then_some(found.node_id.0)
}

#[test]
fn a_new_coordinator_resumes_a_group_from_its_committed_offsets() {
    let mut cluster = Cluster::start(3);
    wait_metadata(&cluster.addr(1), None, WAIT, |m| {
        m.brokers.len() == 3 && settled(m, "__consumer_offsets", 3)
    });
    let script = format!(
        "{}/../../tests/clients/cluster_admin.py",
        env!("CARGO_MANIFEST_DIR")
    );
    run(
        "python3",
        &[&script, "create", &cluster.addr(1), "resumed", "3", "3"],
        "",
    );
    wait_metadata(&cluster.addr(1), None, WAIT, |m| settled(m, "resumed", 3));
    let first: String = (0..30).map(|i| format!("k{i}\tfirst{i}\n")).collect();
    common::kcat_produce(&cluster.bootstrap(), "resumed", &first);

    let group = "resumed-group";
    let before = coordinator(&cluster.addr(1), group).expect("a coordinator");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("member.txt");
    let client = format!(
        "{}/../../tests/clients/kafka_python_client.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let member = |bootstrap: &str, seconds: &str| {
        let _ = std::fs::remove_file(&out);
        run(
            "python3",
            &[
                &client,
                "group-member",
                bootstrap,
                "resumed",
                group,
                out.to_str().unwrap(),
                seconds,
            ],
            "",
        );
        std::fs::read_to_string(&out).unwrap_or_default()
    };
    let read = member(&cluster.bootstrap(), "8");
    assert_eq!(
        read.lines().filter(|l| l.starts_with("record\t")).count(),
        30,
        "{read}"
    );
    // The commits reach the offsets partition's followers (they fetch continuously).
    std::thread::sleep(Duration::from_secs(2));

    cluster.kill(before);
    let survivor = (1..=3).find(|&id| id != before).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let after = loop {
        if let Some(c) = coordinator(&cluster.addr(survivor), group).filter(|&c| c != before) {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "no new coordinator");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(after, before);
    wait_metadata(&cluster.addr(survivor), None, WAIT, |m| {
        settled(m, "resumed", 2)
    });
    let second: String = (0..10).map(|i| format!("k{i}\tsecond{i}\n")).collect();
    common::kcat_produce(&cluster.bootstrap(), "resumed", &second);
    // The group goes on from its commits: only the new records.
    let read = member(&cluster.bootstrap(), "8");
    let records: Vec<&str> = read.lines().filter(|l| l.starts_with("record\t")).collect();
    assert_eq!(records.len(), 10, "{read}\n{}", cluster.logs());
    assert!(records.iter().all(|r| r.contains("\tsecond")), "{read}");
}
