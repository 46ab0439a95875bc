//! Partition replication across three real brokers (`--cluster`), driven by librdkafka
//! (confluent-kafka): acks=all records reach every replica, whose logs end up byte-identical;
//! consumers read every acknowledged record exactly once and in order; a killed leader is
//! replaced within seconds without losing an acknowledged record, and comes back into the ISR
//! after a restart; a paused leader loses leadership and rejoins the ISR once resumed.

mod common;

use bytes::Bytes;
use common::cluster::{wait_metadata, Cluster};
use common::{run, Client};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_response::MetadataResponse;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, DeleteRecordsRequest, DeleteRecordsResponse, FetchRequest, FetchResponse,
    ListOffsetsRequest, ListOffsetsResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn script() -> String {
    format!(
        "{}/../../tests/clients/cluster_replication.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn py(args: &[&str]) -> serde_json::Value {
    let path = script();
    let mut full = vec![path.as_str()];
    full.extend_from_slice(args);
    let out = run("python3", &full, "");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out:?}: {e}"))
}

/// (leader, isr) of each partition of `topic`, in partition order.
fn partitions(m: &MetadataResponse, topic: &str) -> Option<Vec<(i32, Vec<i32>)>> {
    let t = m
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic) && t.error_code == 0)?;
    let mut ps: Vec<_> = t.partitions.iter().collect();
    ps.sort_by_key(|p| p.partition_index);
    Some(
        ps.into_iter()
            .map(|p| {
                let mut isr: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
                isr.sort_unstable();
                (p.leader_id.0, isr)
            })
            .collect(),
    )
}

/// Waits (asking node `via`) until every partition of `topic` has a leader and `ok` holds
/// for it; returns the partitions.
fn wait_partitions(
    c: &Cluster,
    via: i32,
    topic: &str,
    ok: impl Fn(i32, &[i32]) -> bool,
) -> Vec<(i32, Vec<i32>)> {
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_metadata(&c.addr(via), Some(&[topic]), WAIT, |m| {
            partitions(m, topic).is_some_and(|ps| {
                !ps.is_empty() && ps.iter().all(|(l, isr)| *l >= 0 && ok(*l, isr))
            })
        })
    }));
    match waited {
        Ok(m) => partitions(&m, topic).expect("checked"),
        Err(_) => panic!("{topic} did not settle as expected\n{}", c.logs()),
    }
}

fn create(c: &Cluster, topic: &str, partitions: i32) {
    let out = py(&[
        "create",
        &c.bootstrap(),
        topic,
        &partitions.to_string(),
        "3",
    ]);
    assert_eq!(out["ok"], true, "{out}\n{}", c.logs());
    wait_partitions(c, 1, topic, |_, isr| isr.len() == 3);
}

fn acked(out: &serde_json::Value) -> Vec<i64> {
    out["acked"]
        .as_array()
        .unwrap_or_else(|| panic!("{out}"))
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

/// Reads the whole topic and checks that every index of `acked` is there exactly once, that
/// nothing appears twice, and that each partition holds its indexes in produce order.
fn check_consumed(bootstrap: &str, topic: &str, acked: &[i64], expected: usize) {
    let out = py(&["consume", bootstrap, topic, &expected.to_string(), "90"]);
    let mut count: BTreeMap<i64, usize> = BTreeMap::new();
    for (p, values) in out["partitions"].as_object().unwrap() {
        let values: Vec<i64> = values
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "partition {p} is out of order or has duplicates: {values:?}"
        );
        for v in values {
            *count.entry(v).or_default() += 1;
        }
    }
    let missing: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|i| !count.contains_key(i))
        .collect();
    assert!(missing.is_empty(), "acknowledged records lost: {missing:?}");
    let twice: Vec<i64> = count
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(&i, _)| i)
        .collect();
    assert!(twice.is_empty(), "records read twice: {twice:?}");
}

/// The concatenated `.log` segments of `topic`-`partition` on a node.
fn log_bytes(data_dir: &Path, topic: &str, partition: i32) -> Vec<u8> {
    let dir = data_dir.join(format!("{topic}-{partition}"));
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect()
}

#[test]
fn replicas_hold_identical_logs_and_consumers_read_every_acked_record() {
    let c = Cluster::start(3);
    let topic = "replicated";
    create(&c, topic, 3);
    let out = py(&["produce", &c.bootstrap(), topic, "3000"]);
    let acked = acked(&out);
    assert_eq!(acked.len(), 3000, "{out}\n{}", c.logs());
    check_consumed(&c.bootstrap(), topic, &acked, 3000);
    // Once the load stops, every replica holds the same bytes.
    let deadline = Instant::now() + WAIT;
    for p in 0..3 {
        loop {
            let logs: Vec<Vec<u8>> = c
                .nodes
                .iter()
                .map(|n| log_bytes(&n.data_dir, topic, p))
                .collect();
            if !logs[0].is_empty() && logs.iter().all(|l| *l == logs[0]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "partition {p}: replica logs differ ({:?} bytes)\n{}",
                logs.iter().map(Vec::len).collect::<Vec<_>>(),
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Every leader publishes its partitions' high watermark, and nothing is under-replicated.
    let deadline = Instant::now() + WAIT;
    loop {
        let bodies: Vec<String> = c
            .nodes
            .iter()
            .map(|n| n.broker.as_ref().unwrap().http_get("/metrics").1)
            .collect();
        let all = bodies.concat();
        let hw_total: i64 = (0..3)
            .map(|p| {
                let key = format!(
                    "ringbroker_partition_high_watermark{{topic=\"{topic}\",partition=\"{p}\"}} "
                );
                // The leader's and the followers' values agree once the load stops.
                bodies
                    .iter()
                    .filter_map(|b| b.lines().find_map(|l| l.strip_prefix(key.as_str())))
                    .filter_map(|v| v.trim().parse::<f64>().ok())
                    .map(|v| v as i64)
                    .max()
                    .unwrap_or(0)
            })
            .sum();
        let under_replicated = bodies.iter().all(|b| {
            b.lines()
                .any(|l| l == "ringbroker_under_replicated_partitions 0")
        });
        if hw_total == 3000 && under_replicated {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replication metrics: high watermarks sum to {hw_total}\n{all}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_killed_follower_leaves_the_isr_and_acks_all_goes_on_without_it() {
    let mut c = Cluster::start(3);
    let topic = "follower-down";
    create(&c, topic, 1);
    let leader = wait_partitions(&c, 1, topic, |_, _| true)[0].0;
    let follower = c
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader)
        .unwrap();
    c.kill(follower);
    // acks=all waits until the ISR no longer holds it, then goes on with the other two.
    let out = py(&["produce", &c.bootstrap(), topic, "200"]);
    assert_eq!(acked(&out).len(), 200, "{out}\n{}", c.logs());
    let after = wait_partitions(&c, leader, topic, |l, isr| {
        l == leader && !isr.contains(&follower)
    });
    assert_eq!(after[0].1.len(), 2, "{after:?}");
    // Restarted, it fetches what it missed and is back in the ISR.
    c.restart(follower);
    wait_partitions(&c, leader, topic, |_, isr| isr.contains(&follower));
    let mut f = Client::connect(&c.addr(follower));
    assert_eq!(produce_one(&mut f, topic).0, NOT_LEADER_OR_FOLLOWER);
    let deadline = Instant::now() + WAIT;
    loop {
        let logs: Vec<Vec<u8>> = [leader, follower]
            .iter()
            .map(|&id| log_bytes(&c.node(id).data_dir, topic, 0))
            .collect();
        if logs[0] == logs[1] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted follower's log differs"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    check_consumed(&c.bootstrap(), topic, &acked(&out), 200);
}

#[test]
fn a_killed_leader_loses_no_acknowledged_record_and_rejoins_after_a_restart() {
    let mut c = Cluster::start(3);
    let topic = "failover";
    create(&c, topic, 1);
    let leader = wait_partitions(&c, 1, topic, |_, _| true)[0].0;
    let other = c
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader)
        .unwrap();
    // A producer that keeps going through the failover.
    let path = script();
    let bootstrap = c.bootstrap();
    let producer = Command::new("python3")
        .args([path.as_str(), "produce", &bootstrap, topic, "4000", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    std::thread::sleep(Duration::from_millis(2000));
    c.kill(leader);
    let killed_at = Instant::now();
    let after = wait_partitions(&c, other, topic, |l, _| l != leader);
    let failover = killed_at.elapsed();
    assert!(
        failover < Duration::from_secs(10),
        "new leader after {failover:?}"
    );
    assert!(!after[0].1.contains(&leader), "{after:?}");
    let output = producer.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{stdout:?}: {e}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let acked = acked(&out);
    // The idempotent producer retries through the failover: everything is delivered.
    assert_eq!(acked.len(), 4000, "{out}\n{}", c.logs());
    check_consumed(&c.bootstrap(), topic, &acked, acked.len());
    // Back on the same data: it catches up and its leader adds it to the ISR again.
    c.restart(leader);
    wait_partitions(&c, other, topic, |_, isr| isr.contains(&leader));
}

#[test]
fn a_paused_leader_loses_leadership_and_rejoins_when_resumed() {
    let mut c = Cluster::start(3);
    let topic = "paused";
    create(&c, topic, 1);
    let leader = wait_partitions(&c, 1, topic, |_, _| true)[0].0;
    let other = c
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader)
        .unwrap();
    let first = acked(&py(&["produce", &c.bootstrap(), topic, "100"]));
    assert_eq!(first.len(), 100);
    c.pause(leader);
    let after = wait_partitions(&c, other, topic, |l, _| l != leader);
    assert!(!after[0].1.contains(&leader), "{after:?}");
    // The new leader takes acks=all writes without it.
    let out = py(&["produce", &c.bootstrap(), topic, "100"]);
    assert_eq!(acked(&out).len(), 100, "{out}\n{}", c.logs());
    c.resume(leader);
    wait_partitions(&c, other, topic, |_, isr| isr.contains(&leader));
    // Both rounds used indexes 0..100: every value is read twice overall (once per round),
    // so check the second round by count and order only through the consumer's view.
    let read = py(&["consume", &c.bootstrap(), topic, "200", "60"]);
    let values: Vec<i64> = read["partitions"]["0"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (0..100).chain(0..100).collect();
    assert_eq!(values, expected, "{}", c.logs());
}

const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const UNKNOWN_LEADER_EPOCH: i16 = 75;
const FENCED_LEADER_EPOCH: i16 = 74;

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// Produce v9 of one batch with acks=all: (error, base offset).
fn produce_one(c: &mut Client, topic: &str) -> (i16, i64) {
    let batch = ringbroker_protocol::batch::build_batch(0, 1000, &[b"x", b"y"]);
    let pd = PartitionProduceData::default()
        .with_index(0)
        .with_records(Some(Bytes::from(batch)));
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![pd])]);
    let r: ProduceResponse = c.call(ApiKey::Produce, 9, &req);
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// A consumer's Fetch v12 of partition 0 from offset 0: (error, high watermark, record bytes).
fn fetch_one(c: &mut Client, topic: &str, current_leader_epoch: i32) -> (i16, i64, usize) {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(current_leader_epoch)
                .with_fetch_offset(0)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(1 << 20)])]);
    let r: FetchResponse = c.call(ApiKey::Fetch, 12, &req);
    let p = &r.responses[0].partitions[0];
    (
        p.error_code,
        p.high_watermark,
        p.records.as_ref().map_or(0, Bytes::len),
    )
}

/// ListOffsets v7 latest of partition 0: (error, offset, leader epoch).
fn latest_offset(c: &mut Client, topic: &str) -> (i16, i64, i32) {
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_current_leader_epoch(-1)
                .with_timestamp(-1)])]);
    let r: ListOffsetsResponse = c.call(ApiKey::ListOffsets, 7, &req);
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.offset, p.leader_epoch)
}

/// OffsetForLeaderEpoch v4 (as a consumer) of partition 0 for `epoch`: (error, epoch, end).
fn epoch_end(c: &mut Client, topic: &str, epoch: i32) -> (i16, i32, i64) {
    let req = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![OffsetForLeaderPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(-1)
                .with_leader_epoch(epoch)])]);
    let r: OffsetForLeaderEpochResponse = c.call(ApiKey::OffsetForLeaderEpoch, 4, &req);
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.leader_epoch, p.end_offset)
}

#[test]
fn only_the_leader_serves_clients_and_it_checks_their_leader_epochs() {
    let c = Cluster::start(3);
    let topic = "roles";
    create(&c, topic, 1);
    let m = wait_metadata(&c.addr(1), Some(&[topic]), WAIT, |m| {
        partitions(m, topic).is_some_and(|ps| ps[0].0 >= 0)
    });
    let p = &m.topics[0].partitions[0];
    let (leader, epoch) = (p.leader_id.0, p.leader_epoch);
    let follower = c
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader)
        .unwrap();
    let mut l = Client::connect(&c.addr(leader));
    let mut f = Client::connect(&c.addr(follower));
    // Writes and reads go to the leader only.
    assert_eq!(produce_one(&mut f, topic).0, NOT_LEADER_OR_FOLLOWER);
    assert_eq!(produce_one(&mut l, topic), (0, 0));
    assert_eq!(fetch_one(&mut f, topic, -1).0, NOT_LEADER_OR_FOLLOWER);
    assert_eq!(latest_offset(&mut f, topic).0, NOT_LEADER_OR_FOLLOWER);
    // acks=all answered: every replica has it, the high watermark covers it.
    let (error, hw, bytes) = fetch_one(&mut l, topic, epoch);
    assert_eq!((error, hw), (0, 2));
    assert!(bytes > 0);
    assert_eq!(latest_offset(&mut l, topic), (0, 2, epoch));
    // KIP-320: a newer epoch than the leader's is unknown, an older one fenced.
    assert_eq!(fetch_one(&mut l, topic, epoch + 1).0, UNKNOWN_LEADER_EPOCH);
    if epoch > 0 {
        assert_eq!(fetch_one(&mut l, topic, epoch - 1).0, FENCED_LEADER_EPOCH);
    }
    // The leader's epoch cache: its epoch ends at its log end.
    assert_eq!(epoch_end(&mut l, topic, epoch), (0, epoch, 2));
}

#[test]
fn a_follower_behind_the_leaders_log_start_restarts_its_log_there() {
    let mut c = Cluster::start(3);
    let topic = "moved-start";
    create(&c, topic, 1);
    let leader = wait_partitions(&c, 1, topic, |_, _| true)[0].0;
    let follower = c
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != leader)
        .unwrap();
    c.kill(follower);
    // One record per batch, so that offset 150 starts a batch.
    let out = py(&["produce", &c.bootstrap(), topic, "200", "-1"]);
    assert_eq!(acked(&out).len(), 200, "{out}\n{}", c.logs());
    // The leader drops everything below 150 while the follower is away.
    let mut l = Client::connect(&c.addr(leader));
    let r: DeleteRecordsResponse = l.call(
        ApiKey::DeleteRecords,
        2,
        &DeleteRecordsRequest::default()
            .with_timeout_ms(10000)
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![DeleteRecordsPartition::default()
                    .with_partition_index(0)
                    .with_offset(150)])]),
    );
    let p = &r.topics[0].partitions[0];
    assert_eq!((p.error_code, p.low_watermark), (0, 150));
    // Back, it finds its log end below the leader's start: it starts its log at the batch
    // holding 150, fetches the rest and rejoins the ISR.
    c.restart(follower);
    wait_partitions(&c, leader, topic, |_, isr| isr.contains(&follower));
    let deadline = Instant::now() + WAIT;
    loop {
        let ours = log_bytes(&c.node(follower).data_dir, topic, 0);
        let theirs = log_bytes(&c.node(leader).data_dir, topic, 0);
        let dir = c.node(follower).data_dir.join(format!("{topic}-0"));
        let restarted = dir.join(format!("{:020}.log", 150)).exists();
        if restarted && !ours.is_empty() && ours.len() < theirs.len() && theirs.ends_with(&ours) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "follower log: {} bytes, leader's: {}\n{}",
            ours.len(),
            theirs.len(),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    check_consumed(&c.bootstrap(), topic, &(150..200).collect::<Vec<i64>>(), 50);
}
