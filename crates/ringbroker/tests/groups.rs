//! Consumer groups end to end with kafka-python and librdkafka (confluent-kafka).

mod common;

use common::Client;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn member(
    addr: &str,
    topic: &str,
    group: &str,
    out: &Path,
    seconds: u32,
    session_ms: u32,
) -> Child {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/clients/kafka_python_client.py"
    );
    Command::new("python3")
        .args([script, "group-member", addr, topic, group])
        .arg(out)
        .args([seconds.to_string(), session_ms.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The last assignment a member reported, and every (partition, offset) it read.
fn report(out: &Path) -> (Vec<i32>, Vec<(i32, i64)>) {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut assigned = Vec::new();
    let mut records = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f[0] {
            "assigned" => {
                assigned = f.get(1).map_or(vec![], |s| {
                    s.split(',')
                        .filter(|x| !x.is_empty())
                        .map(|x| x.parse().unwrap())
                        .collect()
                })
            }
            "record" => records.push((f[1].parse().unwrap(), f[2].parse().unwrap())),
            _ => {}
        }
    }
    (assigned, records)
}

fn wait_until(what: &str, deadline_s: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(deadline_s);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn produce(addr: &str, topic: &str, from: usize, n: usize) {
    let input: String = (from..from + n).map(|i| format!("k{i}\tv{i}\n")).collect();
    kcat_produce(addr, topic, &input);
}

#[test]
fn kafka_python_group_splits_partitions_commits_and_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let addr = broker.addr.clone();
    kafka_python(&["create", &addr, "jobs", "4"], "");
    let (a_out, b_out) = (work.path().join("a"), work.path().join("b"));
    let mut a = member(&addr, "jobs", "workers", &a_out, 12, 6000);
    let mut b = member(&addr, "jobs", "workers", &b_out, 12, 6000);
    wait_until("both members hold two partitions", 30, || {
        report(&a_out).0.len() == 2 && report(&b_out).0.len() == 2
    });
    produce(&addr, "jobs", 0, 2000);
    a.wait().unwrap();
    b.wait().unwrap();
    let (a_parts, a_recs) = report(&a_out);
    let (b_parts, b_recs) = report(&b_out);
    let all: BTreeSet<i32> = a_parts.iter().chain(&b_parts).copied().collect();
    assert_eq!(
        all,
        (0..4).collect::<BTreeSet<_>>(),
        "two partitions each, together all four"
    );
    let mut seen: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for r in a_recs.iter().chain(&b_recs) {
        *seen.entry(*r).or_default() += 1;
    }
    assert_eq!(seen.len(), 2000, "every record read");
    assert!(seen.values().all(|&n| n == 1), "no record read twice");
    assert!(
        a_recs.iter().all(|(p, _)| a_parts.contains(p))
            && b_recs.iter().all(|(p, _)| b_parts.contains(p))
    );

    // Restart the broker; the group resumes from its committed offsets: only new records.
    assert!(broker.stop().success());
    drop(broker);
    let broker = Broker::start(dir.path(), &[]);
    let addr = broker.addr.clone();
    produce(&addr, "jobs", 2000, 300);
    let c_out = work.path().join("c");
    member(&addr, "jobs", "workers", &c_out, 8, 6000)
        .wait()
        .unwrap();
    let (c_parts, c_recs) = report(&c_out);
    assert_eq!(c_parts.len(), 4);
    assert_eq!(
        c_recs.len(),
        300,
        "resumed from committed offsets: only the 300 new records"
    );
    assert!(c_recs.iter().all(|(p, o)| !seen.contains_key(&(*p, *o))));
}

#[test]
fn a_third_member_triggers_a_rebalance_and_a_silent_member_is_removed_after_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let addr = broker.addr.clone();
    kafka_python(&["create", &addr, "tasks", "4"], "");
    let outs: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| work.path().join(n))
        .collect();
    let mut a = member(&addr, "tasks", "crew", &outs[0], 25, 3000);
    let mut b = member(&addr, "tasks", "crew", &outs[1], 25, 3000);
    wait_until("a and b share the partitions", 30, || {
        report(&outs[0]).0.len() == 2 && report(&outs[1]).0.len() == 2
    });
    let mut c = member(&addr, "tasks", "crew", &outs[2], 25, 3000);
    wait_until("the third member gets partitions", 30, || {
        !report(&outs[2]).0.is_empty()
    });
    wait_until(
        "the rebalance spread 4 partitions over 3 members",
        30,
        || {
            let sets: Vec<Vec<i32>> = outs.iter().map(|o| report(o).0).collect();
            let union: BTreeSet<i32> = sets.iter().flatten().copied().collect();
            sets.iter().all(|s| !s.is_empty())
                && union.len() == 4
                && sets.iter().map(Vec::len).sum::<usize>() == 4
        },
    );
    // Freeze c: no more heartbeats. After its 3 s session it is removed and a and b share all 4.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
    let frozen = Instant::now();
    wait_until(
        "the silent member is removed and its partitions move",
        30,
        || {
            let (pa, pb) = (report(&outs[0]).0, report(&outs[1]).0);
            pa.len() + pb.len() == 4 && pa.iter().chain(&pb).collect::<BTreeSet<_>>().len() == 4
        },
    );
    assert!(
        frozen.elapsed() >= Duration::from_millis(2500),
        "not before the session timeout ({:?})",
        frozen.elapsed()
    );
    let _ = c.kill();
    let _ = c.wait();
    let _ = a.kill();
    let _ = b.kill();
    let _ = a.wait();
    let _ = b.wait();
}

#[test]
fn librdkafka_subscribe_consumes_and_commits() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let addr = broker.addr.clone();
    kafka_python(&["create", &addr, "events", "4"], "");
    produce(&addr, "events", 0, 3000);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/clients/confluent_kafka_client.py"
    );
    let first = run(
        "python3",
        &[script, "group-consume", &addr, "events", "readers", "3000"],
        "",
    );
    let first: BTreeSet<String> = first.lines().map(str::to_string).collect();
    assert_eq!(first.len(), 3000);
    produce(&addr, "events", 3000, 100);
    let second = run(
        "python3",
        &[script, "group-consume", &addr, "events", "readers", "100"],
        "",
    );
    let second: Vec<&str> = second.lines().collect();
    assert_eq!(second.len(), 100);
    assert!(
        second.iter().all(|l| l
            .split('\t')
            .nth(2)
            .unwrap()
            .trim_start_matches('v')
            .parse::<usize>()
            .unwrap()
            >= 3000),
        "the group resumed after its commit"
    );
}

#[test]
fn librdkafka_idempotent_producer_sends_10000_records_without_error() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    kafka_python(&["create", &broker.addr, "idem", "4"], "");
    let input: String = (0..10_000).map(|i| format!("k{i}\tv{i}\n")).collect();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/clients/confluent_kafka_client.py"
    );
    let out = run(
        "python3",
        &[script, "produce", &broker.addr, "idem", "lz4", "idempotent"],
        &input,
    );
    assert_eq!(out.trim(), "acked\t10000");
    let stored = kcat_consume_all(&broker.addr, "idem");
    assert_eq!(stored.len(), 10_000, "each record stored exactly once");
}

#[test]
fn a_replayed_idempotent_batch_is_stored_once_and_a_gap_is_refused() {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    kafka_python(&["create", &broker.addr, "dedup", "1"], "");
    let mut c = Client::connect(&broker.addr);
    let init: InitProducerIdResponse = c.call(
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    );
    assert_eq!(init.error_code, 0);
    let pid = init.producer_id.0;
    let mut produce = |seq: i32, epoch: i16, n: usize| -> (i16, i64) {
        let values: Vec<Vec<u8>> = (0..n).map(|i| format!("s{seq}-{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
        let batch = ringbroker_protocol::batch::build_idempotent_batch(pid, epoch, seq, &refs);
        let pd = produce_request::PartitionProduceData::default()
            .with_index(0)
            .with_records(Some(bytes::Bytes::from(batch)));
        let td = produce_request::TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("dedup")))
            .with_partition_data(vec![pd]);
        let r: ProduceResponse = c.call(
            ApiKey::Produce,
            9,
            &ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(5000)
                .with_topic_data(vec![td]),
        );
        let p = &r.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    };
    assert_eq!(produce(0, 0, 3), (0, 0));
    assert_eq!(produce(3, 0, 2), (0, 3));
    assert_eq!(
        produce(0, 0, 3),
        (0, 0),
        "a replay gets its original offset"
    );
    assert_eq!(
        produce(3, 0, 2),
        (0, 3),
        "a replay gets its original offset"
    );
    assert_eq!(
        produce(9, 0, 1).0,
        45,
        "a sequence gap is OUT_OF_ORDER_SEQUENCE_NUMBER"
    );
    assert_eq!(produce(5, 0, 1), (0, 5));
    assert_eq!(
        produce(0, 1, 1),
        (0, 6),
        "a new epoch starts again at sequence 0"
    );
    assert_eq!(
        produce(6, 0, 1).0,
        47,
        "an older epoch is INVALID_PRODUCER_EPOCH"
    );
    assert_eq!(
        kcat_consume_all(&broker.addr, "dedup").len(),
        7,
        "replays were not written again"
    );
}

/// Shards load their committed offsets after they start; a shard that loaded first must not
/// serve a client whose request another shard still loading would answer ("no committed
/// offset", so the consumer would start over from `auto.offset.reset`). Shard 1 is held back
/// by a test-only delay; connections land on both shards.
#[test]
fn no_client_is_served_before_every_shard_has_loaded_its_committed_offsets() {
    use kafka_protocol::messages::offset_commit_request::*;
    use kafka_protocol::messages::offset_fetch_request::*;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    let name = |s: &str| StrBytes::from_string(s.to_string());
    let groups: Vec<String> = (0..8).map(|g| format!("loaded-{g}")).collect();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    kcat_produce(&broker.addr, "t", "a\nb\nc\n");
    let mut c = Client::connect(&broker.addr);
    for g in &groups {
        let r: OffsetCommitResponse = c.call(
            ApiKey::OffsetCommit,
            8,
            &OffsetCommitRequest::default()
                .with_group_id(GroupId(name(g)))
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![OffsetCommitRequestTopic::default()
                    .with_name(TopicName(name("t")))
                    .with_partitions(vec![OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(2)])]),
        );
        assert_eq!(r.topics[0].partitions[0].error_code, 0, "commit for {g}");
    }
    drop(c);
    assert!(broker.stop().success());

    let broker = Broker::start_with_env(&data, &[], &[("RINGBROKER_TEST_LOAD_DELAY_MS", "1500")]);
    let mut answers = Vec::new();
    for _ in 0..6 {
        let mut c = Client::connect(&broker.addr);
        for g in &groups {
            let r: OffsetFetchResponse = c.call(
                ApiKey::OffsetFetch,
                7,
                &OffsetFetchRequest::default()
                    .with_group_id(GroupId(name(g)))
                    .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                        .with_name(TopicName(name("t")))
                        .with_partition_indexes(vec![0])])),
            );
            let p = &r.topics[0].partitions[0];
            answers.push((g.clone(), r.error_code, p.error_code, p.committed_offset));
        }
    }
    let wrong: Vec<_> = answers
        .iter()
        .filter(|(_, e, pe, offset)| (*e, *pe, *offset) != (0, 0, 2))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} answers before every shard loaded: {:?}",
        wrong.len(),
        answers.len(),
        &wrong[..wrong.len().min(5)]
    );
}
