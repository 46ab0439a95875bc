//! Every size or count a client controls meets a named broker limit before it reaches an
//! assertion, an allocation or kept state; the client gets Kafka's error for it and the
//! broker keeps serving everyone (docs/operations.md, "Limits and failure behaviour").

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const GROUP_MAX_SIZE_REACHED: i16 = 81;
const OFFSET_METADATA_TOO_LARGE: i16 = 12;
const MEMBER_ID_REQUIRED: i16 = 79;
const INVALID_GROUP_ID: i16 = 24;
const INVALID_REQUEST: i16 = 42;

fn name(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn create_topic(c: &mut Client, topic: &str, partitions: i32) {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    let r: CreateTopicsResponse = c.call(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(name(topic)))
                .with_num_partitions(partitions)
                .with_replication_factor(1)])
            .with_timeout_ms(5000),
    );
    assert_eq!(r.topics[0].error_code, 0, "create {topic}");
}

fn assert_healthy(broker: &Broker) {
    let (status, body) = broker.http_get("/health");
    assert_eq!(status, 200, "/health: {body}\nlog:\n{}", broker.log());
    let mut c = Client::connect(&broker.addr);
    let r: ApiVersionsResponse = c.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(r.error_code, 0);
    assert!(
        !broker.log().contains("panicked"),
        "a shard panicked:\n{}",
        broker.log()
    );
}

/// The issue's reproduction: librdkafka's largest legal fetch settings against a partition of
/// more than 256 MiB (one gather placeholder). Before the clamp, the whole partition became one
/// record section and both shards panicked.
#[test]
fn largest_legal_librdkafka_fetch_settings_read_a_300_mb_partition_and_the_broker_stays_healthy() {
    const BATCHES: usize = 38;
    const VALUE_BYTES: usize = 8_000_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--max-message-bytes", "8388608"]);
    let mut c = Client::connect(&broker.addr);
    create_topic(&mut c, "big", 1);
    for i in 0..BATCHES {
        let value = vec![b'a' + (i % 26) as u8; VALUE_BYTES];
        let batch = ringbroker_protocol::batch::build_batch(0, 1_700_000_000_000, &[&value]);
        use kafka_protocol::messages::produce_request::*;
        let req = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(name("big")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(Bytes::from(batch)))])]);
        let r: ProduceResponse = c.call(ApiKey::Produce, 9, &req);
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    let out = run(
        "timeout",
        &[
            "120",
            "kcat",
            "-b",
            &broker.addr,
            "-t",
            "big",
            "-C",
            "-e",
            "-q",
            "-o",
            "beginning",
            "-X",
            "fetch.max.bytes=2147483135",
            "-X",
            "max.partition.fetch.bytes=1000000000",
            "-X",
            "receive.message.max.bytes=2147483647",
            "-f",
            "%o %S\n",
        ],
        "",
    );
    let expected: Vec<String> = (0..BATCHES).map(|o| format!("{o} {VALUE_BYTES}")).collect();
    let got: Vec<String> = out.lines().map(str::to_string).collect();
    assert_eq!(got, expected, "log:\n{}", broker.log());
    // A recent librdkafka (confluent-kafka's wheel) in a consumer group, same settings.
    let script = format!(
        r#"
from confluent_kafka import Consumer, KafkaError
c = Consumer({{"bootstrap.servers": "{addr}", "group.id": "big-readers",
    "auto.offset.reset": "earliest", "enable.partition.eof": True,
    "fetch.max.bytes": 2147483135, "max.partition.fetch.bytes": 1000000000,
    "receive.message.max.bytes": 2147483647}})
c.subscribe(["big"])
while True:
    m = c.poll(30)
    if m is None:
        raise SystemExit("no message within 30 s")
    if m.error():
        if m.error().code() == KafkaError._PARTITION_EOF:
            break
        raise SystemExit(str(m.error()))
    print(m.offset(), len(m.value()))
c.close()
"#,
        addr = broker.addr
    );
    let out = python(&script);
    let got: Vec<String> = out.lines().map(str::to_string).collect();
    assert_eq!(got, expected, "log:\n{}", broker.log());
    // The same limits by hand: the response holds --fetch-max-bytes (57671680) at most, in
    // whole batches, and a partition limit of 0 still gets one whole batch (KIP-74).
    let mut fetch = |max_bytes: i32, partition_max_bytes: i32| -> usize {
        use kafka_protocol::messages::fetch_request::*;
        let r: FetchResponse = c.call(
            ApiKey::Fetch,
            12,
            &FetchRequest::default()
                .with_max_bytes(max_bytes)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(TopicName(name("big")))
                    .with_partitions(vec![FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(partition_max_bytes)])]),
        );
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 0);
        p.records.as_ref().map_or(0, |b| b.len())
    };
    let batch_bytes = fetch(i32::MAX, 0);
    assert!(batch_bytes > VALUE_BYTES && batch_bytes < VALUE_BYTES + 100);
    let clamped = fetch(i32::MAX, 1_000_000_000);
    assert_eq!(clamped, 57_671_680 / batch_bytes * batch_bytes);
    assert_healthy(&broker);
}

fn python(script: &str) -> String {
    run("timeout", &["60", "python3", "-c", script], "")
}

#[test]
fn offset_commit_with_metadata_over_4096_bytes_gets_offset_metadata_too_large_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    create_topic(&mut c, "t", 2);
    // kafka-python, as a user would commit: partition 0 with 5000 bytes of metadata, partition
    // 1 with 4096 (the limit itself is allowed).
    let script = format!(
        r#"
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
c = KafkaConsumer(bootstrap_servers="{addr}", group_id="g", enable_auto_commit=False)
try:
    c.commit({{TopicPartition("t", 0): OffsetAndMetadata(5, "x" * 5000, -1)}})
    print("committed")
except Exception as e:
    print(type(e).__name__)
c.commit({{TopicPartition("t", 1): OffsetAndMetadata(7, "y" * 4096, -1)}})
print(c.committed(TopicPartition("t", 0)), c.committed(TopicPartition("t", 1)))
c.close()
"#,
        addr = broker.addr
    );
    let out = python(&script);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"OffsetMetadataTooLargeError"), "{out}");
    assert_eq!(lines.get(1), Some(&"None 7"), "{out}");

    // Raw, both in one request: only the oversized partition is refused.
    use kafka_protocol::messages::offset_commit_request::*;
    let part = |p: i32, meta: usize| {
        OffsetCommitRequestPartition::default()
            .with_partition_index(p)
            .with_committed_offset(3)
            .with_committed_metadata(Some(name(&"m".repeat(meta))))
    };
    let r: OffsetCommitResponse = c.call(
        ApiKey::OffsetCommit,
        8,
        &OffsetCommitRequest::default()
            .with_group_id(GroupId(name("raw")))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(name("t")))
                .with_partitions(vec![part(0, 4097), part(1, 10)])]),
    );
    let codes: Vec<i16> = r.topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(codes, [OFFSET_METADATA_TOO_LARGE, 0]);
    assert_healthy(&broker);
}

fn join(c: &mut Client, group: &str, member_id: &str, metadata: Bytes) -> JoinGroupResponse {
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    c.call(
        ApiKey::JoinGroup,
        5,
        &JoinGroupRequest::default()
            .with_group_id(GroupId(name(group)))
            .with_session_timeout_ms(30_000)
            .with_rebalance_timeout_ms(30_000)
            .with_member_id(name(member_id))
            .with_protocol_type(name("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(name("range"))
                .with_metadata(metadata)]),
    )
}

#[test]
fn joins_beyond_the_group_size_limit_get_group_max_size_reached_and_other_groups_still_join() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    // JoinGroup v4+ hands a new member an id (MEMBER_ID_REQUIRED) and holds a place for it.
    for i in 0..1000 {
        let r = join(&mut c, "full", "", Bytes::new());
        assert_eq!(r.error_code, MEMBER_ID_REQUIRED, "join {i}");
    }
    let r = join(&mut c, "full", "", Bytes::new());
    assert_eq!(r.error_code, GROUP_MAX_SIZE_REACHED);
    // A member that already holds a place may still join.
    let first = join(&mut c, "other", "", Bytes::new());
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    let joined = join(&mut c, "other", &first.member_id, Bytes::new());
    assert_eq!(joined.error_code, 0);
    assert_eq!(joined.leader, first.member_id);
    assert_healthy(&broker);
}

#[test]
fn join_group_sizes_over_their_limits_are_refused_before_any_state_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    let long_id = "g".repeat(1025);
    assert_eq!(
        join(&mut c, &long_id, "", Bytes::new()).error_code,
        INVALID_GROUP_ID
    );
    let big = Bytes::from(vec![0u8; (1 << 20) + 1]);
    assert_eq!(join(&mut c, "g", "", big).error_code, INVALID_REQUEST);
    // Neither left a group behind.
    let r: DescribeGroupsResponse = c.call(
        ApiKey::DescribeGroups,
        5,
        &DescribeGroupsRequest::default()
            .with_groups(vec![GroupId(name("g")), GroupId(name(&long_id))]),
    );
    let states: Vec<&str> = r.groups.iter().map(|g| &*g.group_state).collect();
    assert_eq!(states, ["Dead", "Dead"]);
    assert_healthy(&broker);
}

#[test]
fn a_leader_assignment_over_its_limit_gets_invalid_request_and_a_valid_one_then_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    let sync = |c: &mut Client, generation: i32, member: &str, bytes: usize| -> SyncGroupResponse {
        use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
        c.call(
            ApiKey::SyncGroup,
            5,
            &SyncGroupRequest::default()
                .with_group_id(GroupId(name("g")))
                .with_generation_id(generation)
                .with_member_id(name(member))
                .with_protocol_type(Some(name("consumer")))
                .with_protocol_name(Some(name("range")))
                .with_assignments(vec![SyncGroupRequestAssignment::default()
                    .with_member_id(name(member))
                    .with_assignment(Bytes::from(vec![7u8; bytes]))]),
        )
    };
    let first = join(&mut c, "g", "", Bytes::new());
    let joined = join(&mut c, "g", &first.member_id, Bytes::new());
    assert_eq!(joined.error_code, 0);
    let r = sync(
        &mut c,
        joined.generation_id,
        &joined.member_id,
        (1 << 20) + 1,
    );
    assert_eq!(r.error_code, INVALID_REQUEST);
    // The group rebalances; the member joins again and a valid assignment goes through.
    let again = join(&mut c, "g", &joined.member_id, Bytes::new());
    assert_eq!(again.error_code, 0);
    let r = sync(&mut c, again.generation_id, &again.member_id, 1 << 20);
    assert_eq!(r.error_code, 0);
    assert_eq!(r.assignment.len(), 1 << 20);
    assert_healthy(&broker);
}

#[test]
fn topic_configs_over_their_limit_get_invalid_config_and_the_other_topics_are_created() {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    let topic = |n: &str, value_bytes: usize| {
        CreatableTopic::default()
            .with_name(TopicName(name(n)))
            .with_num_partitions(1)
            .with_replication_factor(1)
            .with_configs(vec![CreatableTopicConfig::default()
                .with_name(name("leader.replication.throttled.replicas"))
                .with_value(Some(name(&format!(
                    "{}0:0",
                    "0:0,".repeat(value_bytes / 4)
                ))))])
    };
    let r: CreateTopicsResponse = c.call(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default()
            .with_topics(vec![
                topic("small", 100),
                topic("huge", 70_000),
                topic("also", 1),
            ])
            .with_timeout_ms(5000),
    );
    let codes: Vec<(&str, i16)> = r
        .topics
        .iter()
        .map(|t| (&*t.name.0, t.error_code))
        .collect();
    assert_eq!(codes, [("small", 0), ("huge", 40), ("also", 0)]);
    let m: MetadataResponse = c.call(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(None),
    );
    let mut names: Vec<String> = m
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
        .collect();
    names.sort();
    assert_eq!(names, ["__consumer_offsets", "also", "small"]);
    assert_healthy(&broker);
}

/// Kafka's rule: a topic named twice in CreateTopics or DeleteTopics is INVALID_REQUEST, and
/// the repeats never reach the topic table.
#[test]
fn a_topic_named_twice_in_create_or_delete_topics_gets_invalid_request() {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    let creatable = |n: &str| {
        CreatableTopic::default()
            .with_name(TopicName(name(n)))
            .with_num_partitions(1)
            .with_replication_factor(1)
    };
    let r: CreateTopicsResponse = c.call(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default()
            .with_topics(vec![creatable("a"), creatable("b"), creatable("a")])
            .with_timeout_ms(5000),
    );
    let codes: Vec<(&str, i16)> = r
        .topics
        .iter()
        .map(|t| (&*t.name.0, t.error_code))
        .collect();
    assert_eq!(
        codes,
        [("a", INVALID_REQUEST), ("b", 0), ("a", INVALID_REQUEST)]
    );
    let deletable = |n: &str| DeleteTopicState::default().with_name(Some(TopicName(name(n))));
    let r: DeleteTopicsResponse = c.call(
        ApiKey::DeleteTopics,
        6,
        &DeleteTopicsRequest::default()
            .with_topics(vec![deletable("b"), deletable("b"), deletable("nope")])
            .with_timeout_ms(5000),
    );
    let codes: Vec<i16> = r.responses.iter().map(|t| t.error_code).collect();
    assert_eq!(codes, [0, INVALID_REQUEST, 3]);
    assert_healthy(&broker);
}

/// A response is never a multiple of the broker's state: a group or topic named many times is
/// answered once.
#[test]
fn names_repeated_in_one_request_are_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    create_topic(&mut c, "wide", 64);
    let topic = || {
        metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(name("wide"))))
    };
    let r: MetadataResponse = c.call(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(Some(vec![topic(); 1000])),
    );
    assert_eq!(r.topics.len(), 1);
    assert_eq!(r.topics[0].partitions.len(), 64);
    let first = join(&mut c, "g", "", Bytes::new());
    let joined = join(
        &mut c,
        "g",
        &first.member_id,
        Bytes::from(vec![1u8; 100_000]),
    );
    assert_eq!(joined.error_code, 0);
    let r: DescribeGroupsResponse = c.call(
        ApiKey::DescribeGroups,
        5,
        &DescribeGroupsRequest::default().with_groups(vec![GroupId(name("g")); 1000]),
    );
    assert_eq!(r.groups.len(), 1);
    assert_eq!(r.groups[0].members[0].member_metadata.len(), 100_000);
    assert_healthy(&broker);
}

/// A Fetch naming more partitions than a broker may hold is a broken client: its connection
/// is closed, nothing else.
/// Sends one request on a new connection and expects it closed without an answer.
fn assert_closed_without_answer<Req: Encodable>(
    broker: &Broker,
    api: ApiKey,
    version: i16,
    req: &Req,
) {
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .encode(&mut body, api.request_header_version(version))
        .unwrap();
    req.encode(&mut body, version).unwrap();
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    let mut s = TcpStream::connect(&broker.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&frame).unwrap();
    let mut reply = Vec::new();
    let read = s.read_to_end(&mut reply);
    assert!(
        read.is_ok() && reply.is_empty(),
        "{api:?}: expected the connection closed without an answer, got {read:?} and {} bytes",
        reply.len()
    );
}

#[test]
fn a_fetch_or_produce_naming_more_partitions_than_the_broker_may_hold_closes_only_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    create_topic(&mut c, "t", 1);
    use kafka_protocol::messages::fetch_request::*;
    let partitions = vec![
        FetchPartition::default()
            .with_partition(0)
            .with_partition_max_bytes(1024);
        100_001
    ];
    let fetch = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(name("t")))
            .with_partitions(partitions)]);
    assert_closed_without_answer(&broker, ApiKey::Fetch, 12, &fetch);
    use kafka_protocol::messages::produce_request::*;
    let partitions = vec![
        PartitionProduceData::default()
            .with_index(0)
            .with_records(Some(Bytes::new()));
        100_001
    ];
    let produce = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(1000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(name("t")))
            .with_partition_data(partitions)]);
    assert_closed_without_answer(&broker, ApiKey::Produce, 9, &produce);
    assert_healthy(&broker);
}
