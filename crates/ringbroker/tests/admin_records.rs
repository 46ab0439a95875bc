//! The record-level admin APIs (CreatePartitions, DeleteRecords, DescribeLogDirs,
//! OffsetForLeaderEpoch, DescribeProducers, ListOffsets v7-10) over a raw socket at every
//! advertised version, requests encoded and responses decoded with kafka-protocol's client
//! side; then driven by real clients (confluent-kafka, kafka-python, kcat) through
//! tests/clients/admin_records.py.

mod common;

use bytes::Bytes;
use common::{Broker, Client};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use ringbroker_broker::api::SUPPORTED;
use ringbroker_protocol::compression::Codec;
use std::time::Duration;

fn range(api: ApiKey) -> std::ops::RangeInclusive<i16> {
    let &(_, min, max) = SUPPORTED
        .iter()
        .find(|(a, _, _)| *a == api)
        .unwrap_or_else(|| panic!("{api:?} is advertised"));
    min..=max
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn create_topic(c: &mut Client, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let configs = configs
        .iter()
        .map(|(k, v)| {
            create_topics_request::CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(k.to_string()))
                .with_value(Some(StrBytes::from_string(v.to_string())))
        })
        .collect();
    let t = create_topics_request::CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(1)
        .with_configs(configs);
    let r: CreateTopicsResponse = c.call(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default().with_topics(vec![t]),
    );
    assert_eq!(r.topics[0].error_code, 0, "create {topic}");
}

/// Produces one batch; returns its base offset.
fn produce(c: &mut Client, topic: &str, partition: i32, batch: Vec<u8>) -> i64 {
    let pd = produce_request::PartitionProduceData::default()
        .with_index(partition)
        .with_records(Some(Bytes::from(batch)));
    let td = produce_request::TopicProduceData::default()
        .with_name(name(topic))
        .with_partition_data(vec![pd]);
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![td]);
    let r: ProduceResponse = c.call(ApiKey::Produce, 9, &req);
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0, "produce to {topic}-{partition}");
    p.base_offset
}

fn partition_count(c: &mut Client, topic: &str) -> usize {
    let t = metadata_request::MetadataRequestTopic::default().with_name(Some(name(topic)));
    let r: MetadataResponse = c.call(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default()
            .with_topics(Some(vec![t]))
            .with_allow_auto_topic_creation(false),
    );
    assert_eq!(r.topics[0].error_code, 0);
    r.topics[0].partitions.len()
}

/// (error, offset, timestamp) of a ListOffsets for one partition at version `v`.
fn list_offset(c: &mut Client, v: i16, topic: &str, partition: i32, ts: i64) -> (i16, i64, i64) {
    let p = list_offsets_request::ListOffsetsPartition::default()
        .with_partition_index(partition)
        .with_timestamp(ts);
    let t = list_offsets_request::ListOffsetsTopic::default()
        .with_name(name(topic))
        .with_partitions(vec![p]);
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_timeout_ms(1000)
        .with_topics(vec![t]);
    let r: ListOffsetsResponse = c.call(ApiKey::ListOffsets, v, &req);
    let p = &r.topics[0].partitions[0];
    let ts = if v >= 1 { p.timestamp } else { -1 };
    (p.error_code, p.offset, ts)
}

/// A topic to grow: name, new count, replica lists of the new partitions.
type Growth<'a> = (&'a str, i32, Option<Vec<Vec<i32>>>);

fn grow(
    c: &mut Client,
    v: i16,
    topics: &[Growth],
    validate_only: bool,
) -> Vec<(String, i16, Option<String>)> {
    let topics = topics
        .iter()
        .map(|(t, count, assignments)| {
            create_partitions_request::CreatePartitionsTopic::default()
                .with_name(name(t))
                .with_count(*count)
                .with_assignments(assignments.as_ref().map(|a| {
                    a.iter()
                        .map(|ids| {
                            create_partitions_request::CreatePartitionsAssignment::default()
                                .with_broker_ids(ids.iter().map(|&b| BrokerId(b)).collect())
                        })
                        .collect()
                }))
        })
        .collect();
    let req = CreatePartitionsRequest::default()
        .with_topics(topics)
        .with_timeout_ms(5000)
        .with_validate_only(validate_only);
    let r: CreatePartitionsResponse = c.call(ApiKey::CreatePartitions, v, &req);
    r.results
        .into_iter()
        .map(|x| {
            (
                x.name.0.to_string(),
                x.error_code,
                x.error_message.map(|m| m.to_string()),
            )
        })
        .collect()
}

#[test]
fn create_partitions_answers_every_version_as_kafka_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    create_topic(&mut c, "cp", 1, &[]);
    let mut count = 1;
    for v in range(ApiKey::CreatePartitions) {
        // validate_only changes nothing.
        let r = grow(&mut c, v, &[("cp", count + 5, None)], true);
        assert_eq!(r, vec![("cp".into(), 0, None)], "v{v} validate_only");
        assert_eq!(partition_count(&mut c, "cp"), count as usize);
        count += 1 + v as i32;
        let r = grow(&mut c, v, &[("cp", count, None)], false);
        assert_eq!(r, vec![("cp".into(), 0, None)], "v{v}");
        assert_eq!(partition_count(&mut c, "cp"), count as usize, "v{v}");
        // The new last partition takes records.
        let batch = ringbroker_protocol::batch::build_batch(0, 1000, &[b"new"]);
        assert_eq!(produce(&mut c, "cp", count - 1, batch), 0);
    }
    let refused = |code: i16, message: &str| (code, Some(message.to_string()));
    let r = grow(
        &mut c,
        3,
        &[
            ("cp", count - 1, None),
            ("cp2", 3, None),
            ("cp", count, None),
            ("missing", 4, None),
        ],
        false,
    );
    // A topic named twice gets one INVALID_REQUEST; the others their own answers.
    let by_name = |n: &str| {
        let x = r.iter().find(|x| x.0 == n).unwrap();
        (x.1, x.2.clone())
    };
    assert_eq!(r.len(), 3, "{r:?}");
    assert_eq!(by_name("cp"), refused(42, "Duplicate topic name."));
    assert_eq!(by_name("missing").0, 3);
    assert_eq!(by_name("cp2").0, 3);
    let r = grow(&mut c, 3, &[("cp", count - 1, None)], false);
    assert_eq!(
        (r[0].1, r[0].2.clone()),
        refused(
            37,
            &format!(
                "The topic cp currently has {count} partition(s); {} would not be an increase.",
                count - 1
            )
        )
    );
    let r = grow(&mut c, 3, &[("cp", count, None)], false);
    assert_eq!(
        (r[0].1, r[0].2.clone()),
        refused(37, &format!("Topic already has {count} partition(s)."))
    );
    let assignment_cases: [(Vec<Vec<i32>>, &str); 4] = [
        (
            vec![vec![0]],
            "Attempted to add 2 additional partition(s), but only 1 assignment(s) were specified.",
        ),
        (
            vec![vec![0], vec![1]],
            "The manual partition assignment includes broker 1, but no such broker is registered.",
        ),
        (
            vec![vec![0], vec![0, 0]],
            "The manual partition assignment includes the broker 0 more than once.",
        ),
        (
            vec![vec![0], vec![]],
            "The manual partition assignment includes an empty replica list.",
        ),
    ];
    for (assignments, message) in assignment_cases {
        let r = grow(&mut c, 3, &[("cp", count + 2, Some(assignments))], false);
        assert_eq!((r[0].1, r[0].2.clone()), refused(39, message));
    }
    assert_eq!(partition_count(&mut c, "cp"), count as usize);
    let r = grow(
        &mut c,
        3,
        &[("cp", count + 2, Some(vec![vec![0], vec![0]]))],
        false,
    );
    assert_eq!(r[0].1, 0);
    count += 2;
    let r = grow(&mut c, 3, &[("cp", 100_001, None)], false);
    assert_eq!(r[0].1, 37, "over the per-topic limit");
    // New partitions went to the least-loaded shards: the two shards own all partitions
    // (including __consumer_offsets') within one of each other.
    let table: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("meta/topics.json")).unwrap())
            .unwrap();
    let mut load = [0usize; 2];
    for t in table["topics"].as_array().unwrap() {
        for owner in t["owners"].as_array().unwrap() {
            load[owner.as_u64().unwrap() as usize] += 1;
        }
    }
    assert!(load[0].abs_diff(load[1]) <= 1, "{load:?}");
    // Persisted: a restart keeps every partition and its records.
    broker.stop();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    assert_eq!(partition_count(&mut c, "cp"), count as usize);
    // Partitions added earlier kept their records through later growths and the restart.
    for partition in [1, 3, 6, 10] {
        assert_eq!(list_offset(&mut c, 10, "cp", partition, -1), (0, 1, -1));
    }
    assert_eq!(list_offset(&mut c, 10, "cp", 11, -1), (0, 0, -1));
}

#[test]
fn delete_records_log_dirs_epochs_and_producers_answer_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    create_topic(&mut c, "dr", 2, &[("segment.bytes", "1024")]);
    for i in 0..40 {
        let batch = ringbroker_protocol::batch::build_batch(0, 1000 + i, &[&[b'x'; 100]]);
        produce(&mut c, "dr", 0, batch);
    }
    let segments = |broker: &Broker| {
        std::fs::read_dir(broker.data_dir.join("dr-0"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".log")
            })
            .count()
    };
    let before = segments(&broker);
    assert!(before > 3, "{before} segments");

    // DeleteRecords
    let delete = |c: &mut Client, v: i16, topic: &str, partition: i32, offset: i64| {
        let p = delete_records_request::DeleteRecordsPartition::default()
            .with_partition_index(partition)
            .with_offset(offset);
        let t = delete_records_request::DeleteRecordsTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![p]);
        let req = DeleteRecordsRequest::default()
            .with_topics(vec![t])
            .with_timeout_ms(5000);
        let r: DeleteRecordsResponse = c.call(ApiKey::DeleteRecords, v, &req);
        let p = &r.topics[0].partitions[0];
        (p.error_code, p.low_watermark)
    };
    let mut start = 0;
    for v in range(ApiKey::DeleteRecords) {
        start += 7;
        assert_eq!(delete(&mut c, v, "dr", 0, start), (0, start), "v{v}");
        assert_eq!(list_offset(&mut c, 10, "dr", 0, -2), (0, start, -1));
        assert_eq!(
            delete(&mut c, v, "dr", 0, 41),
            (1, -1),
            "above the high watermark"
        );
        assert_eq!(
            delete(&mut c, v, "dr", 0, 2),
            (0, start),
            "below the start: no change"
        );
        assert_eq!(delete(&mut c, v, "nope", 0, 2), (3, -1));
        assert_eq!(delete(&mut c, v, "dr", 9, 2), (3, -1));
        assert_eq!(
            delete(&mut c, v, "__consumer_offsets", 0, -1),
            (17, -1),
            "internal"
        );
    }
    assert!(
        segments(&broker) < before,
        "whole segments below the start deleted"
    );
    // A timestamp below the start finds the first record at or after the start.
    assert_eq!(
        list_offset(&mut c, 10, "dr", 0, 0),
        (0, start, 1000 + start)
    );

    // Fetch below the start: OFFSET_OUT_OF_RANGE reporting the start.
    let part = fetch_request::FetchPartition::default()
        .with_partition(0)
        .with_fetch_offset(start - 1)
        .with_partition_max_bytes(1 << 20);
    let topic = fetch_request::FetchTopic::default()
        .with_topic(name("dr"))
        .with_partitions(vec![part]);
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(10)
        .with_max_bytes(1 << 20)
        .with_topics(vec![topic]);
    let r: FetchResponse = c.call(ApiKey::Fetch, 12, &req);
    let p = &r.responses[0].partitions[0];
    assert_eq!((p.error_code, p.log_start_offset), (1, start));

    // DescribeLogDirs
    let data_dir = std::path::absolute(dir.path()).unwrap();
    for v in range(ApiKey::DescribeLogDirs) {
        for filtered in [false, true] {
            let topics = filtered.then(|| {
                vec![describe_log_dirs_request::DescribableLogDirTopic::default()
                    .with_topic(name("dr"))
                    .with_partitions(vec![1])]
            });
            let r: DescribeLogDirsResponse = c.call(
                ApiKey::DescribeLogDirs,
                v,
                &DescribeLogDirsRequest::default().with_topics(topics),
            );
            assert_eq!(r.results.len(), 1);
            let d = &r.results[0];
            assert_eq!(d.error_code, 0);
            assert_eq!(d.log_dir.as_str(), data_dir.to_str().unwrap());
            let t = d.topics.iter().find(|t| t.name.0.as_str() == "dr").unwrap();
            if filtered {
                assert_eq!(d.topics.len(), 1);
                assert_eq!(t.partitions.len(), 1);
                assert_eq!(
                    (
                        t.partitions[0].partition_index,
                        t.partitions[0].partition_size
                    ),
                    (1, 0)
                );
            } else {
                let p0 = t
                    .partitions
                    .iter()
                    .find(|p| p.partition_index == 0)
                    .unwrap();
                assert!(p0.partition_size > 0 && p0.partition_size < 40 * 200);
                assert_eq!((p0.offset_lag, p0.is_future_key), (0, false));
            }
            if v >= 4 {
                assert!(d.total_bytes > 0 && d.usable_bytes > 0 && d.usable_bytes <= d.total_bytes);
            }
        }
    }

    // OffsetForLeaderEpoch
    let epoch = |c: &mut Client, v: i16, topic: &str, current: i32, leader_epoch: i32| {
        let p = offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
            .with_partition(0)
            .with_current_leader_epoch(current)
            .with_leader_epoch(leader_epoch);
        let t = offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![p]);
        let req = OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![t]);
        let r: OffsetForLeaderEpochResponse = c.call(ApiKey::OffsetForLeaderEpoch, v, &req);
        let p = &r.topics[0].partitions[0];
        (p.error_code, p.leader_epoch, p.end_offset)
    };
    for v in range(ApiKey::OffsetForLeaderEpoch) {
        assert_eq!(epoch(&mut c, v, "dr", 0, 0), (0, 0, 40), "v{v}");
        assert_eq!(epoch(&mut c, v, "dr", -1, 0), (0, 0, 40));
        assert_eq!(epoch(&mut c, v, "dr", 0, 1), (0, -1, -1));
        assert_eq!(epoch(&mut c, v, "dr", 0, -1), (0, -1, -1));
        assert_eq!(
            epoch(&mut c, v, "dr", 1, 0),
            (75, -1, -1),
            "UNKNOWN_LEADER_EPOCH"
        );
        assert_eq!(
            epoch(&mut c, v, "dr", -2, 0),
            (74, -1, -1),
            "FENCED_LEADER_EPOCH"
        );
        assert_eq!(epoch(&mut c, v, "nope", 0, 0), (3, -1, -1));
    }

    // DescribeProducers
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
    let b = ringbroker_protocol::batch::build_idempotent_batch(
        pid,
        init.producer_epoch,
        0,
        &[b"a", b"b"],
    );
    produce(&mut c, "dr", 1, b);
    let b =
        ringbroker_protocol::batch::build_idempotent_batch(pid, init.producer_epoch, 2, &[b"c"]);
    produce(&mut c, "dr", 1, b);
    for v in range(ApiKey::DescribeProducers) {
        let t = describe_producers_request::TopicRequest::default()
            .with_name(name("dr"))
            .with_partition_indexes(vec![1, 0, 7]);
        let r: DescribeProducersResponse = c.call(
            ApiKey::DescribeProducers,
            v,
            &DescribeProducersRequest::default().with_topics(vec![t]),
        );
        let ps = &r.topics[0].partitions;
        assert_eq!((ps[0].error_code, ps[0].active_producers.len()), (0, 1));
        let p = &ps[0].active_producers[0];
        assert_eq!(
            (
                p.producer_id.0,
                p.producer_epoch,
                p.last_sequence,
                p.last_timestamp,
                p.coordinator_epoch,
                p.current_txn_start_offset
            ),
            (
                pid,
                init.producer_epoch as i32,
                2,
                1_700_000_000_000,
                -1,
                -1
            )
        );
        assert_eq!((ps[1].error_code, ps[1].active_producers.len()), (0, 0));
        assert_eq!(ps[2].error_code, 3);
    }
}

#[test]
fn list_offsets_is_exact_inside_compressed_batches_at_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    create_topic(&mut c, "lo", 1, &[]);
    let codecs = [
        Codec::None,
        Codec::Gzip,
        Codec::Snappy,
        Codec::Lz4,
        Codec::Zstd,
    ];
    // Batch k holds 4 records at base + (0, 10, 5, 30): the largest is the last but one
    // inserted is not the max; lookups must land inside the batch.
    let mut bases = Vec::new();
    for (k, codec) in codecs.iter().enumerate() {
        let base = 10_000 + 1000 * k as i64;
        let records: Vec<(i64, &[u8])> = vec![
            (base, b"a"),
            (base + 10, b"b"),
            (base + 5, b"c"),
            (base + 30, b"d"),
        ];
        let batch =
            ringbroker_protocol::records::build_compressed_batch(*codec, 0, &records).unwrap();
        bases.push((produce(&mut c, "lo", 0, batch), base));
    }
    for v in range(ApiKey::ListOffsets) {
        for &(first, base) in &bases {
            assert_eq!(
                list_offset(&mut c, v, "lo", 0, base + 1),
                (0, first + 1, base + 10),
                "v{v}"
            );
            assert_eq!(
                list_offset(&mut c, v, "lo", 0, base + 11),
                (0, first + 3, base + 30)
            );
            assert_eq!(
                list_offset(&mut c, v, "lo", 0, base + 3),
                (0, first + 1, base + 10)
            );
        }
        assert_eq!(list_offset(&mut c, v, "lo", 0, 1_000_000), (0, -1, -1));
        assert_eq!(list_offset(&mut c, v, "lo", 0, -1), (0, 20, -1));
        assert_eq!(list_offset(&mut c, v, "lo", 0, -2), (0, 0, -1));
        if v >= 7 {
            let (last_first, last_base) = bases[4];
            assert_eq!(
                list_offset(&mut c, v, "lo", 0, -3),
                (0, last_first + 3, last_base + 30),
                "MAX_TIMESTAMP v{v}"
            );
        }
        if v >= 8 {
            assert_eq!(
                list_offset(&mut c, v, "lo", 0, -4),
                (0, 0, -1),
                "EARLIEST_LOCAL"
            );
        }
        if v >= 9 {
            assert_eq!(
                list_offset(&mut c, v, "lo", 0, -5),
                (0, -1, -1),
                "LATEST_TIERED"
            );
        }
        assert_eq!(list_offset(&mut c, v, "lo", 0, -6).0, 42);
        if v >= 4 {
            let epoch_checked = |c: &mut Client, current: i32| {
                let p = list_offsets_request::ListOffsetsPartition::default()
                    .with_timestamp(-1)
                    .with_current_leader_epoch(current);
                let t = list_offsets_request::ListOffsetsTopic::default()
                    .with_name(name("lo"))
                    .with_partitions(vec![p]);
                let req = ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![t]);
                let r: ListOffsetsResponse = c.call(ApiKey::ListOffsets, v, &req);
                let p = &r.topics[0].partitions[0];
                (p.error_code, p.offset, p.leader_epoch)
            };
            assert_eq!(epoch_checked(&mut c, 0), (0, 20, 0));
            assert_eq!(epoch_checked(&mut c, -1), (0, 20, 0));
            assert_eq!(
                epoch_checked(&mut c, 1),
                (75, -1, -1),
                "UNKNOWN_LEADER_EPOCH"
            );
            assert_eq!(
                epoch_checked(&mut c, -2),
                (74, -1, -1),
                "FENCED_LEADER_EPOCH"
            );
        }
    }
    // An empty partition has no max timestamp.
    create_topic(&mut c, "empty", 1, &[]);
    assert_eq!(list_offset(&mut c, 10, "empty", 0, -3), (0, -1, -1));
    drop(broker);
    std::thread::sleep(Duration::from_millis(10));
}

/// Runs tests/clients/admin_records.py; its output lines split at tabs.
fn client(args: &[&str]) -> Vec<Vec<String>> {
    let script = format!(
        "{}/../../tests/clients/admin_records.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut full = vec!["120", "python3", script.as_str()];
    full.extend_from_slice(args);
    common::run("timeout", &full, "")
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn kcat(args: &[&str], input: &str) -> String {
    let mut full = vec!["60", "kcat"];
    full.extend_from_slice(args);
    common::run("timeout", &full, input)
}

#[test]
fn real_clients_add_partitions_that_producers_and_consumers_use_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &["--default-partitions", "2"]);
    let b = broker.addr.clone();
    let mut c = Client::connect(&b);
    create_topic(&mut c, "grow", 1, &[]);
    assert_eq!(
        client(&["create-partitions", "confluent", &b, "grow", "3"]),
        [["ok"]]
    );
    assert_eq!(
        client(&["create-partitions", "kafka-python", &b, "grow", "5"]),
        [["ok"]]
    );
    assert_eq!(
        client(&[
            "create-partitions",
            "confluent",
            &b,
            "grow",
            "9",
            "validate"
        ]),
        [["ok"]]
    );
    assert_eq!(
        client(&["create-partitions", "confluent", &b, "grow", "2"]),
        [[
            "error",
            "INVALID_PARTITIONS",
            "The topic grow currently has 5 partition(s); 2 would not be an increase."
        ]]
    );
    let unknown = client(&["create-partitions", "kafka-python", &b, "missing", "4"]);
    assert_eq!(unknown[0][..2], ["error", "UnknownTopicOrPartitionError"]);
    assert_eq!(partition_count(&mut c, "grow"), 5);
    // A producer and a consumer use the new last partition by number.
    kcat(
        &["-b", &b, "-t", "grow", "-P", "-p", "4", "-K", "\t"],
        "k\tin-four\n",
    );
    let read = kcat(
        &[
            "-b",
            &b,
            "-t",
            "grow",
            "-C",
            "-p",
            "4",
            "-e",
            "-q",
            "-f",
            "%p %o %s\n",
        ],
        "",
    );
    assert_eq!(read, "4 0 in-four\n");
    // An auto-created topic still gets the default partition count.
    kcat(&["-b", &b, "-t", "auto", "-P", "-K", "\t"], "k\tv\n");
    assert_eq!(partition_count(&mut c, "auto"), 2);
    broker.stop();
    let broker = Broker::start(dir.path(), &["--default-partitions", "2"]);
    let b = broker.addr.clone();
    let mut c = Client::connect(&b);
    assert_eq!(partition_count(&mut c, "grow"), 5);
    let read = kcat(
        &[
            "-b",
            &b,
            "-t",
            "grow",
            "-C",
            "-p",
            "4",
            "-e",
            "-q",
            "-f",
            "%p %o %s\n",
        ],
        "",
    );
    assert_eq!(read, "4 0 in-four\n");
}

#[test]
fn real_clients_delete_records_and_every_reader_starts_after_them_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let b = broker.addr.clone();
    let mut c = Client::connect(&b);
    create_topic(&mut c, "dr", 1, &[("segment.bytes", "1024")]);
    let input: String = (0..30)
        .map(|i| format!("k{i}\tvalue-{i}-{}\n", "x".repeat(90)))
        .collect();
    kcat(
        &[
            "-b",
            &b,
            "-t",
            "dr",
            "-P",
            "-K",
            "\t",
            "-X",
            "linger.ms=0",
            "-X",
            "batch.num.messages=1",
        ],
        &input,
    );
    let has_first_segment =
        |dir: &std::path::Path| dir.join("dr-0/00000000000000000000.log").exists();
    assert!(has_first_segment(dir.path()));
    assert_eq!(
        client(&["delete-records", "confluent", &b, "dr", "0", "5"]),
        [["low_watermark", "5"]]
    );
    assert_eq!(
        client(&["delete-records", "kafka-python", &b, "dr", "0", "8"]),
        [["low_watermark", "8"]]
    );
    assert!(
        !has_first_segment(dir.path()),
        "the segment wholly below 8 is deleted"
    );
    let beyond = client(&["delete-records", "confluent", &b, "dr", "0", "31"]);
    assert_eq!(beyond[0][..2], ["error", "OFFSET_OUT_OF_RANGE"]);
    let beyond = client(&["delete-records", "kafka-python", &b, "dr", "0", "31"]);
    assert_eq!(beyond[0][..2], ["error", "OffsetOutOfRangeError"]);
    let first_offset = |b: &str| {
        let out = kcat(
            &[
                "-b",
                b,
                "-t",
                "dr",
                "-C",
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%o\n",
            ],
            "",
        );
        out.lines().next().unwrap().to_string()
    };
    assert_eq!(first_offset(&b), "8");
    assert_eq!(
        client(&["first-earliest", &b, "dr", "g1"]),
        [["first", "8"]]
    );
    // A clean restart, then a kill -9, keep the start.
    broker.stop();
    let broker = Broker::start(dir.path(), &[]);
    assert_eq!(first_offset(&broker.addr), "8");
    let b = broker.addr.clone();
    assert_eq!(
        client(&["delete-records", "confluent", &b, "dr", "0", "-1"]),
        [["low_watermark", "30"]]
    );
    drop(broker); // SIGKILL
    let broker = Broker::start(dir.path(), &[]);
    let b = broker.addr.clone();
    let mut c = Client::connect(&b);
    assert_eq!(list_offset(&mut c, 10, "dr", 0, -2), (0, 30, -1));
    kcat(&["-b", &b, "-t", "dr", "-P", "-K", "\t"], "k\tafter\n");
    assert_eq!(
        client(&["first-earliest", &b, "dr", "g2"]),
        [["first", "30"]]
    );
}

#[test]
fn real_clients_find_records_by_timestamp_inside_compressed_batches() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let b = broker.addr.clone();
    let mut c = Client::connect(&b);
    let t0: i64 = 1_700_000_000_000;
    let stamps: Vec<String> = [0, 10, 5, 30, 20]
        .iter()
        .map(|d| (t0 + d).to_string())
        .collect();
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("ts-{codec}");
        create_topic(&mut c, &topic, 1, &[]);
        let mut args = vec!["produce-timestamps", &b, &topic, "0", codec];
        args.extend(stamps.iter().map(String::as_str));
        let produced = client(&args);
        assert_eq!(produced.len(), 5);
        // One compressed batch holds them all.
        let log = std::fs::read(
            dir.path()
                .join(format!("{topic}-0/00000000000000000000.log")),
        )
        .unwrap();
        let frame = ringbroker_storage::frame::BatchFrame::parse(&log).unwrap();
        assert_eq!(
            (frame.last_offset_delta, frame.total_bytes),
            (4, log.len()),
            "{codec}"
        );
        assert_ne!(frame.compression(), 0);
        let (a, b1, b2) = (
            (t0 + 1).to_string(),
            (t0 + 11).to_string(),
            (t0 + 31).to_string(),
        );
        assert_eq!(
            client(&[
                "offsets-for-times",
                "confluent",
                &b,
                &topic,
                "0",
                &a,
                &b1,
                &b2
            ]),
            [
                [a.as_str(), "1", "-"],
                [b1.as_str(), "3", "-"],
                [b2.as_str(), "-1", "-"]
            ],
            "{codec}"
        );
        assert_eq!(
            client(&[
                "offsets-for-times",
                "kafka-python",
                &b,
                &topic,
                "0",
                &a,
                &b1
            ]),
            [
                [a.as_str(), "1", &(t0 + 10).to_string()],
                [b1.as_str(), "3", &(t0 + 30).to_string()]
            ],
            "{codec}"
        );
        assert_eq!(
            client(&["max-timestamp", &b, &topic, "0"]),
            [["max", "3", &(t0 + 30).to_string()]],
            "{codec}"
        );
    }
}

#[test]
fn real_clients_describe_producers_and_log_dirs_and_validate_positions_by_leader_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let b = broker.addr.clone();
    let mut c = Client::connect(&b);
    create_topic(&mut c, "p", 2, &[]);
    assert_eq!(
        client(&["produce-idempotent", &b, "p", "1", "3"]),
        [["acked", "3"]]
    );
    let producers = client(&["describe-producers", &b, "p", "1"]);
    assert_eq!(producers.len(), 1, "{producers:?}");
    let p = &producers[0];
    assert_eq!(
        (p[0].as_str(), p[2].as_str(), p[3].as_str()),
        ("producer", "0", "2")
    );
    assert_eq!((p[5].as_str(), p[6].as_str()), ("-1", "-1"));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let last_ts: i64 = p[4].parse().unwrap();
    assert!((now_ms - 120_000..=now_ms).contains(&last_ts), "{last_ts}");
    assert!(client(&["describe-producers", &b, "p", "0"]).is_empty());

    let dirs = client(&["log-dirs", &b]);
    let data_dir = std::path::absolute(dir.path()).unwrap();
    assert_eq!(dirs[0], ["dir", "0", data_dir.to_str().unwrap()]);
    let size = |partition: &str| {
        dirs.iter()
            .find(|l| l[0] == "size" && l[1] == "p" && l[2] == partition)
            .unwrap_or_else(|| panic!("{dirs:?}"))[3..]
            .to_vec()
    };
    let on_disk = std::fs::metadata(dir.path().join("p-1/00000000000000000000.log"))
        .unwrap()
        .len();
    assert_eq!(size("1"), [on_disk.to_string().as_str(), "0", "False"]);
    assert_eq!(size("0"), ["0", "0", "False"]);

    // librdkafka validates a position carrying a leader epoch with OffsetForLeaderEpoch.
    assert_eq!(
        client(&["seek-with-epoch", &b, "p", "1", "1"]),
        [["got", "1", "0"]]
    );
    let (_, metrics) = broker.http_get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ringbroker_requests_total{api=\"OffsetForLeaderEpoch\"")),
        "the consumer asked OffsetForLeaderEpoch"
    );
}

/// A zstd batch of a few KB whose header claims 16M records of 4 bytes each (64 MiB once
/// decompressed): Produce takes it without looking inside; a ListOffsets by a timestamp that
/// no record reaches would walk all of it. The walk stops at its bound (64 times the batch,
/// at least 1 MiB) and the answer is the batch's first offset and max timestamp, as for any
/// compressed batch before exact lookups. A partition named twice gets INVALID_REQUEST.
#[test]
fn a_decompression_bomb_is_answered_approximately_and_repeats_are_invalid() {
    use ringbroker_protocol::records::{bomb_section, build_batch_around};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    create_topic(&mut c, "bomb", 2, &[]);
    let count = 16 << 20;
    let (base_ts, max_ts) = (1_700_000_000_000, 1_700_000_001_000);
    let bomb = build_batch_around(
        Codec::Zstd,
        0,
        count as i32,
        (base_ts, max_ts),
        &bomb_section(count),
    )
    .unwrap();
    assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
    assert_eq!(produce(&mut c, "bomb", 0, bomb), 0);
    // Every record says base_ts; max_ts is only in the header: a walk finds nothing.
    for v in [1, 4, 10] {
        assert_eq!(
            list_offset(&mut c, v, "bomb", 0, base_ts + 1),
            (0, 0, if v >= 1 { max_ts } else { -1 }),
            "v{v}"
        );
    }
    assert_eq!(list_offset(&mut c, 10, "bomb", 0, base_ts), (0, 0, base_ts));
    assert_eq!(
        list_offset(&mut c, 10, "bomb", 0, -1),
        (0, count as i64, -1)
    );
    // The same partition named twice (and once more in another topic entry): each entry
    // INVALID_REQUEST; the partition named once is answered.
    let p = |index: i32| {
        list_offsets_request::ListOffsetsPartition::default()
            .with_partition_index(index)
            .with_timestamp(base_ts + 1)
    };
    let t = |partitions| {
        list_offsets_request::ListOffsetsTopic::default()
            .with_name(name("bomb"))
            .with_partitions(partitions)
    };
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![t(vec![p(0), p(1)]), t(vec![p(0)])]);
    for v in range(ApiKey::ListOffsets) {
        let r: ListOffsetsResponse = c.call(ApiKey::ListOffsets, v, &req);
        let codes: Vec<(i32, i16)> = r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (p.partition_index, p.error_code))
            })
            .collect();
        assert_eq!(codes, vec![(0, 42), (1, 0), (0, 42)], "v{v}");
    }
    // Still serving.
    assert_eq!(list_offset(&mut c, 10, "bomb", 1, -1), (0, 0, -1));
}

/// DescribeProducers answers the last batch's max timestamp from the producer state (kept
/// when the batch is written and across a clean restart, as Kafka's ProducerStateEntry does),
/// not by reading the log: it stays once DeleteRecords removed the batch. A partition named
/// twice gets INVALID_REQUEST for each entry.
#[test]
fn describe_producers_keeps_last_timestamps_and_refuses_repeated_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    create_topic(&mut c, "dp", 2, &[]);
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
    let b =
        ringbroker_protocol::batch::build_idempotent_batch(pid, init.producer_epoch, 0, &[b"a"]);
    produce(&mut c, "dp", 0, b);
    produce(
        &mut c,
        "dp",
        0,
        ringbroker_protocol::batch::build_batch(0, 5, &[b"plain"]),
    );
    let delete = DeleteRecordsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![delete_records_request::DeleteRecordsTopic::default()
            .with_name(name("dp"))
            .with_partitions(vec![
                delete_records_request::DeleteRecordsPartition::default()
                    .with_partition_index(0)
                    .with_offset(2),
            ])]);
    let r: DeleteRecordsResponse = c.call(ApiKey::DeleteRecords, 2, &delete);
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    let describe = |c: &mut Client, v: i16, indexes: Vec<i32>| {
        let t = describe_producers_request::TopicRequest::default()
            .with_name(name("dp"))
            .with_partition_indexes(indexes);
        let r: DescribeProducersResponse = c.call(
            ApiKey::DescribeProducers,
            v,
            &DescribeProducersRequest::default().with_topics(vec![t]),
        );
        r.topics[0]
            .partitions
            .iter()
            .map(|p| {
                let last = p.active_producers.first();
                (
                    p.error_code,
                    last.map(|a| (a.producer_id.0, a.last_sequence, a.last_timestamp)),
                )
            })
            .collect::<Vec<_>>()
    };
    let kept = Some((pid, 0, 1_700_000_000_000));
    for v in range(ApiKey::DescribeProducers) {
        assert_eq!(describe(&mut c, v, vec![0, 1]), vec![(0, kept), (0, None)]);
        assert_eq!(
            describe(&mut c, v, vec![1, 0, 1]),
            vec![(42, None), (0, kept), (42, None)]
        );
    }
    drop(c);
    broker.stop();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    assert_eq!(describe(&mut c, 0, vec![0]), vec![(0, kept)]);
}
