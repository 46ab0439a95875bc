//! Idempotent producers end to end: pipelined batches of one producer with injected retries,
//! from a connection served by a shard that does not own the partition.

mod common;

use common::*;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeSet;

const TOPIC: &str = "pipelined";
/// Produce requests of the producer in flight at once (Kafka's limit for idempotence).
const IN_FLIGHT: usize = 5;
const ROUNDS: usize = 40;
/// Which of a round's requests are sent again, each right after the request that follows it
/// (so the retry arrives while its first copy may still be written).
const RETRIED: [usize; 3] = [0, 2, 4];

/// (producer id, epoch) for a producer that has `current` (or `(-1, -1)` for a new one).
fn init_producer_id(c: &mut Client, current: (i64, i16)) -> (i64, i16) {
    let init: InitProducerIdResponse = c.call(
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(current.0))
            .with_producer_epoch(current.1),
    );
    assert_eq!(init.error_code, 0);
    (init.producer_id.0, init.producer_epoch)
}

/// One Produce with a batch of `records` records for each of `partitions` partitions of
/// `topic`, starting at `seq`.
fn produce_request(
    topic: &str,
    partitions: i32,
    pid: i64,
    seq: i32,
    records: usize,
    tag: &str,
) -> ProduceRequest {
    let partition_data = (0..partitions)
        .map(|p| {
            let values: Vec<Vec<u8>> = (0..records)
                .map(|i| format!("{tag}-p{p}-{i}").into_bytes())
                .collect();
            let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
            let batch = ringbroker_protocol::batch::build_idempotent_batch(pid, 0, seq, &refs);
            produce_request::PartitionProduceData::default()
                .with_index(p)
                .with_records(Some(bytes::Bytes::from(batch)))
        })
        .collect();
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(partition_data)])
}

/// (error code, base offset) of partitions 0 and 1.
fn answers(r: &ProduceResponse) -> [(i16, i64); 2] {
    let mut out = [(-1, -1); 2];
    for p in &r.responses[0].partition_responses {
        out[p.index as usize] = (p.error_code, p.base_offset);
    }
    out
}

#[test]
fn pipelined_batches_of_one_producer_with_retries_are_each_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    kafka_python(&["create", &broker.addr, TOPIC, "2"], "");
    // The two partitions live on different shards, and every request writes both: whichever
    // shard serves the connection, one partition is owned by the other, and the connection
    // has no reason to move.
    let table: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("meta/topics.json")).unwrap())
            .unwrap();
    let topic = table["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == TOPIC)
        .unwrap();
    let owners: BTreeSet<u64> = topic["owners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(owners.len(), 2, "partitions on two shards: {topic}");

    let mut c = Client::connect(&broker.addr);
    let (pid, _) = init_producer_id(&mut c, (-1, -1));
    let mut seq = 0i32;
    let mut next_offset = [0i64; 2];
    let mut problems = Vec::new();
    let mut last_round = Vec::new();
    for round in 0..ROUNDS {
        // Five new requests, each retried one right after the next one is sent, in one write.
        let mut wire = Vec::new();
        let mut sent: Vec<(usize, i32)> = Vec::new(); // (request, correlation id)
        let mut frames = Vec::new();
        for k in 0..IN_FLIGHT {
            let records = 1 + (round + k) % 3;
            let tag = format!("r{round}k{k}");
            let request = produce_request(TOPIC, 2, pid, seq, records, &tag);
            seq += records as i32;
            frames.push((records, request));
        }
        for k in 0..IN_FLIGHT {
            let (id, bytes) = c.frame(ApiKey::Produce, 9, &frames[k].1);
            wire.extend_from_slice(&bytes);
            sent.push((k, id));
            if k > 0 && RETRIED.contains(&(k - 1)) {
                let (id, bytes) = c.frame(ApiKey::Produce, 9, &frames[k - 1].1);
                wire.extend_from_slice(&bytes);
                sent.push((k - 1, id));
            }
        }
        if RETRIED.contains(&(IN_FLIGHT - 1)) {
            let (id, bytes) = c.frame(ApiKey::Produce, 9, &frames[IN_FLIGHT - 1].1);
            wire.extend_from_slice(&bytes);
            sent.push((IN_FLIGHT - 1, id));
        }
        c.send(&wire);
        // Every answer is NONE; a retry gets its first copy's offsets; batches are contiguous.
        let mut first_answer: Vec<Option<[(i16, i64); 2]>> = vec![None; IN_FLIGHT];
        for (k, id) in sent {
            let r: ProduceResponse = c.read(ApiKey::Produce, 9, id);
            let got = answers(&r);
            for (p, (code, _)) in got.iter().enumerate() {
                if *code != 0 {
                    problems.push(format!(
                        "round {round} request {k} partition {p}: error {code}"
                    ));
                }
            }
            match first_answer[k] {
                None => first_answer[k] = Some(got),
                Some(first) if first != got => problems.push(format!(
                    "round {round} request {k}: retry answered {got:?}, first copy {first:?}"
                )),
                Some(_) => {}
            }
        }
        for (k, answer) in first_answer.iter().enumerate() {
            let answer = answer.expect("every request answered");
            for p in 0..2 {
                if answer[p].0 == 0 && answer[p].1 != next_offset[p] {
                    problems.push(format!(
                        "round {round} request {k} partition {p}: offset {} expected {}",
                        answer[p].1, next_offset[p]
                    ));
                }
                next_offset[p] = answer[p].1.max(next_offset[p]) + frames[k].0 as i64;
            }
        }
        last_round = frames
            .into_iter()
            .zip(first_answer)
            .map(|((_, request), answer)| (request, answer.expect("answered")))
            .collect();
        if problems.len() > 20 {
            break;
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Retries of written batches, once they are all done: their first copies' offsets.
    for (k, (request, first)) in last_round.iter().enumerate() {
        let r: ProduceResponse = c.call(ApiKey::Produce, 9, request);
        assert_eq!(answers(&r), *first, "late retry of request {k}");
    }

    // The log holds each record exactly once.
    let stored = kcat_consume_all(&broker.addr, TOPIC);
    let values: Vec<&str> = stored
        .iter()
        .map(|l| l.rsplit('\t').next().unwrap())
        .collect();
    let unique: BTreeSet<&str> = values.iter().copied().collect();
    assert_eq!(unique.len(), values.len(), "duplicates in the log");
    assert_eq!(values.len(), 2 * seq as usize, "every record stored");

    // The connection stayed where it was, so one partition was always on the other shard.
    let (_, metrics) = broker.http_get("/metrics");
    let moved: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("ringbroker_connections_moved_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(moved, 0.0, "the connection moved");
}

#[test]
fn a_producer_at_its_last_epoch_gets_a_new_id() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    let (pid, epoch) = init_producer_id(&mut c, (-1, -1));
    assert_eq!(epoch, 0);
    assert_eq!(init_producer_id(&mut c, (pid, 0)), (pid, 1), "KIP-360 bump");
    let (next, epoch) = init_producer_id(&mut c, (pid, i16::MAX));
    assert_eq!(epoch, 0);
    assert_ne!(next, pid, "epoch 0 of the same id would be fenced as stale");
}

#[test]
fn a_batch_written_after_the_shutdown_snapshot_is_known_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "snapshotted";
    let snapshot = dir
        .path()
        .join(format!("{topic}-0/producer-state.snapshot"));
    let mut broker = Broker::start(dir.path(), &[]);
    kafka_python(&["create", &broker.addr, topic, "1"], "");
    let mut c = Client::connect(&broker.addr);
    let (pid, _) = init_producer_id(&mut c, (-1, -1));
    let produce = |c: &mut Client, seq: i32, records: usize| -> (i16, i64) {
        let request = produce_request(topic, 1, pid, seq, records, &format!("s{seq}"));
        let r: ProduceResponse = c.call(ApiKey::Produce, 9, &request);
        answers(&r)[0]
    };
    assert_eq!(produce(&mut c, 0, 2), (0, 0));
    assert!(broker.stop().success());
    drop(broker);
    let early = std::fs::read(&snapshot).expect("a clean stop snapshots producer state");

    let mut broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    assert_eq!(produce(&mut c, 2, 1), (0, 2));
    assert!(broker.stop().success());
    drop(broker);
    // As if the snapshot had been taken before that batch was written (connections still
    // write while a shard stops).
    std::fs::write(&snapshot, early).unwrap();

    let broker = Broker::start(dir.path(), &[]);
    assert!(broker.log().contains("trusted clean shutdown"));
    let mut c = Client::connect(&broker.addr);
    assert_eq!(
        produce(&mut c, 2, 1),
        (0, 2),
        "a retry gets its first copy's offset"
    );
    assert_eq!(produce(&mut c, 3, 1), (0, 3));
    assert_eq!(kcat_consume_all(&broker.addr, topic).len(), 4);
}
