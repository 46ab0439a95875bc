//! Topic and broker configs: DescribeConfigs, AlterConfigs, IncrementalAlterConfigs and strict
//! CreateTopics at every advertised version over a raw socket, the same through confluent-kafka's
//! and kafka-python's admin clients, and changes that act on live partitions without a restart
//! (retention, segment size, max.message.bytes, LogAppendTime) and survive one.

mod common;

use bytes::Bytes;
use common::{Broker, Client};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use ringbroker_broker::api::SUPPORTED;
use std::time::{Duration, Instant};

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

fn range(api: ApiKey) -> std::ops::RangeInclusive<i16> {
    let &(_, min, max) = SUPPORTED
        .iter()
        .find(|(a, _, _)| *a == api)
        .unwrap_or_else(|| panic!("{api:?} is not advertised"));
    min..=max
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn creatable(
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> create_topics_request::CreatableTopic {
    create_topics_request::CreatableTopic::default()
        .with_name(TopicName(s(topic)))
        .with_num_partitions(partitions)
        .with_replication_factor(1)
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    create_topics_request::CreatableTopicConfig::default()
                        .with_name(s(k))
                        .with_value(Some(s(v)))
                })
                .collect(),
        )
}

fn create(
    c: &mut Client,
    version: i16,
    topic: create_topics_request::CreatableTopic,
    validate_only: bool,
) -> create_topics_response::CreatableTopicResult {
    let req = CreateTopicsRequest::default()
        .with_topics(vec![topic])
        .with_timeout_ms(5000)
        .with_validate_only(validate_only);
    let r: CreateTopicsResponse = c.call(ApiKey::CreateTopics, version, &req);
    r.topics.into_iter().next().unwrap()
}

fn describe(
    c: &mut Client,
    version: i16,
    resource_type: i8,
    name: &str,
    keys: Option<&[&str]>,
) -> describe_configs_response::DescribeConfigsResult {
    let resource = describe_configs_request::DescribeConfigsResource::default()
        .with_resource_type(resource_type)
        .with_resource_name(s(name))
        .with_configuration_keys(keys.map(|k| k.iter().map(|k| s(k)).collect()));
    let req = DescribeConfigsRequest::default()
        .with_resources(vec![resource])
        .with_include_synonyms(true)
        .with_include_documentation(version >= 3);
    let r: DescribeConfigsResponse = c.call(ApiKey::DescribeConfigs, version, &req);
    r.results.into_iter().next().unwrap()
}

/// `(value, source, read_only)` of config `key` of a topic.
fn topic_value(c: &mut Client, topic: &str, key: &str) -> (String, i8, bool) {
    let r = describe(c, 4, TOPIC, topic, Some(&[key]));
    assert_eq!(r.error_code, 0, "{:?}", r.error_message);
    let e = &r.configs[0];
    (
        e.value.as_ref().unwrap().to_string(),
        e.config_source,
        e.read_only,
    )
}

fn alter(c: &mut Client, version: i16, resource_type: i8, name: &str, set: &[(&str, &str)]) -> i16 {
    let resource = alter_configs_request::AlterConfigsResource::default()
        .with_resource_type(resource_type)
        .with_resource_name(s(name))
        .with_configs(
            set.iter()
                .map(|(k, v)| {
                    alter_configs_request::AlterableConfig::default()
                        .with_name(s(k))
                        .with_value(Some(s(v)))
                })
                .collect(),
        );
    let req = AlterConfigsRequest::default().with_resources(vec![resource]);
    let r: AlterConfigsResponse = c.call(ApiKey::AlterConfigs, version, &req);
    assert_eq!(r.responses[0].resource_name.as_str(), name);
    r.responses[0].error_code
}

fn incremental(
    c: &mut Client,
    version: i16,
    resource_type: i8,
    name: &str,
    ops: &[(&str, i8, Option<&str>)],
    validate_only: bool,
) -> (i16, Option<String>) {
    let resource = incremental_alter_configs_request::AlterConfigsResource::default()
        .with_resource_type(resource_type)
        .with_resource_name(s(name))
        .with_configs(
            ops.iter()
                .map(|(k, op, v)| {
                    incremental_alter_configs_request::AlterableConfig::default()
                        .with_name(s(k))
                        .with_config_operation(*op)
                        .with_value(v.map(s))
                })
                .collect(),
        );
    let req = IncrementalAlterConfigsRequest::default()
        .with_resources(vec![resource])
        .with_validate_only(validate_only);
    let r: IncrementalAlterConfigsResponse = c.call(ApiKey::IncrementalAlterConfigs, version, &req);
    let out = &r.responses[0];
    (
        out.error_code,
        out.error_message.as_ref().map(|m| m.to_string()),
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Produces one batch of `values` with `timestamp_ms`; the partition's error code.
fn produce(c: &mut Client, topic: &str, timestamp_ms: i64, values: &[&[u8]]) -> i16 {
    let batch = ringbroker_protocol::batch::build_batch(0, timestamp_ms, values);
    let pd = produce_request::PartitionProduceData::default()
        .with_index(0)
        .with_records(Some(Bytes::from(batch)));
    let td = produce_request::TopicProduceData::default()
        .with_name(TopicName(s(topic)))
        .with_partition_data(vec![pd]);
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![td]);
    let r: ProduceResponse = c.call(ApiKey::Produce, 9, &req);
    r.responses[0].partition_responses[0].error_code
}

fn segment_files(broker: &Broker, topic: &str) -> usize {
    std::fs::read_dir(broker.data_dir.join(format!("{topic}-0")))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")
        })
        .count()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_config_api_version_answers_and_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);

    for v in range(ApiKey::CreateTopics) {
        // validate_only: checked, answered in full, nothing created.
        let r = create(
            &mut c,
            v,
            creatable(&format!("c{v}"), 2, &[("retention.ms", "60000")]),
            true,
        );
        assert_eq!(
            r.error_code, 0,
            "CreateTopics v{v} validate_only: {:?}",
            r.error_message
        );
        if v >= 5 {
            assert_eq!((r.num_partitions, r.replication_factor), (2, 1));
            let configs = r.configs.as_ref().unwrap();
            let retention = configs
                .iter()
                .find(|e| e.name.as_str() == "retention.ms")
                .unwrap();
            assert_eq!(retention.value.as_deref(), Some("60000"));
            assert_eq!(retention.config_source, 1, "DYNAMIC_TOPIC_CONFIG");
            let compression = configs
                .iter()
                .find(|e| e.name.as_str() == "compression.type")
                .unwrap();
            assert!(compression.read_only);
            assert_eq!(compression.config_source, 5, "DEFAULT_CONFIG");
        }
        assert_eq!(
            describe(&mut c, 4, TOPIC, &format!("c{v}"), None).error_code,
            3
        );
        let r = create(
            &mut c,
            v,
            creatable(&format!("c{v}"), 2, &[("retention.ms", "60000")]),
            false,
        );
        assert_eq!(r.error_code, 0, "CreateTopics v{v}");
        let r = create(
            &mut c,
            v,
            creatable(&format!("bad{v}"), 1, &[("dummy.doesntexist", "1")]),
            false,
        );
        assert_eq!(r.error_code, 40, "CreateTopics v{v}: INVALID_CONFIG");
        assert!(r.error_message.unwrap().contains("dummy.doesntexist"));
        assert_eq!(
            describe(&mut c, 4, TOPIC, &format!("bad{v}"), None).error_code,
            3
        );
    }

    for v in range(ApiKey::DescribeConfigs) {
        let r = describe(&mut c, v, TOPIC, "c7", None);
        assert_eq!(r.error_code, 0, "DescribeConfigs v{v}");
        assert!(r.configs.len() >= 30, "v{v}: {} configs", r.configs.len());
        let retention = r
            .configs
            .iter()
            .find(|e| e.name.as_str() == "retention.ms")
            .unwrap();
        assert_eq!(retention.value.as_deref(), Some("60000"));
        assert_eq!(retention.config_source, 1);
        assert_eq!(
            retention.synonyms.len(),
            2,
            "topic override, then the default"
        );
        assert_eq!(retention.synonyms[1].name.as_str(), "log.retention.ms");
        assert!(!retention.is_sensitive);
        if v >= 3 {
            assert_eq!(retention.config_type, 5, "LONG");
            assert!(retention
                .documentation
                .as_ref()
                .is_some_and(|d| !d.is_empty()));
        }
        let keys = describe(&mut c, v, TOPIC, "c7", Some(&["segment.bytes", "nope"]));
        assert_eq!(keys.configs.len(), 1, "config_keys filter");
        assert_eq!(describe(&mut c, v, TOPIC, "missing", None).error_code, 3);
        let b = describe(&mut c, v, BROKER, "0", None);
        assert_eq!(b.error_code, 0);
        let id = b
            .configs
            .iter()
            .find(|e| e.name.as_str() == "node.id")
            .unwrap();
        assert_eq!(id.value.as_deref(), Some("0"));
        assert!(b
            .configs
            .iter()
            .any(|e| e.name.as_str() == "log.retention.ms" && !e.read_only));
        assert_eq!(describe(&mut c, v, BROKER, "", None).error_code, 0);
        assert_eq!(describe(&mut c, v, BROKER, "7", None).error_code, 42);
        assert_eq!(
            describe(&mut c, v, 8, "root", None).error_code,
            42,
            "BROKER_LOGGER"
        );
    }

    for v in range(ApiKey::AlterConfigs) {
        let value = format!("{}", 1000 + v);
        assert_eq!(
            alter(&mut c, v, TOPIC, "c7", &[("retention.ms", &value)]),
            0,
            "AlterConfigs v{v}"
        );
        assert_eq!(topic_value(&mut c, "c7", "retention.ms").0, value);
        assert_eq!(
            alter(&mut c, v, TOPIC, "c7", &[("dummy.doesntexist", "1")]),
            40
        );
        assert_eq!(
            alter(&mut c, v, TOPIC, "missing", &[("retention.ms", "1")]),
            3
        );
        assert_eq!(
            alter(
                &mut c,
                v,
                BROKER,
                "",
                &[("log.retention.bytes", "123456789")]
            ),
            0
        );
    }

    for v in range(ApiKey::IncrementalAlterConfigs) {
        let (code, msg) = incremental(
            &mut c,
            v,
            TOPIC,
            "c6",
            &[
                ("segment.ms", SET, Some("5000")),
                ("retention.ms", DELETE, None),
            ],
            false,
        );
        assert_eq!(code, 0, "IncrementalAlterConfigs v{v}: {msg:?}");
        assert_eq!(topic_value(&mut c, "c6", "segment.ms").0, "5000");
        assert_ne!(
            topic_value(&mut c, "c6", "retention.ms").1,
            1,
            "the override is gone"
        );
        let (code, _) = incremental(
            &mut c,
            v,
            TOPIC,
            "c6",
            &[("cleanup.policy", APPEND, Some("delete"))],
            false,
        );
        assert_eq!(code, 0);
        let (code, msg) = incremental(
            &mut c,
            v,
            TOPIC,
            "c6",
            &[("cleanup.policy", APPEND, Some("compact"))],
            false,
        );
        assert_eq!(code, 0, "compaction is honoured: {msg:?}");
        assert_eq!(
            topic_value(&mut c, "c6", "cleanup.policy").0,
            "delete,compact"
        );
        let (code, msg) = incremental(
            &mut c,
            v,
            TOPIC,
            "c6",
            &[("max.compaction.lag.ms", SET, Some("0"))],
            false,
        );
        assert_eq!(code, 40);
        assert!(msg.unwrap().contains("max.compaction.lag.ms"));
        let (code, _) = incremental(
            &mut c,
            v,
            TOPIC,
            "c6",
            &[("cleanup.policy", SUBTRACT, Some("compact"))],
            false,
        );
        assert_eq!(code, 0);
        let (code, _) = incremental(
            &mut c,
            v,
            TOPIC,
            "c6",
            &[("retention.ms", 9, Some("1"))],
            false,
        );
        assert_eq!(code, 42, "unknown operation: INVALID_REQUEST");
        let (code, _) = incremental(
            &mut c,
            v,
            TOPIC,
            "c6",
            &[("segment.ms", SET, Some("7"))],
            true,
        );
        assert_eq!(code, 0);
        assert_eq!(
            topic_value(&mut c, "c6", "segment.ms").0,
            "5000",
            "validate_only"
        );
        let (code, _) = incremental(
            &mut c,
            v,
            BROKER,
            "",
            &[("log.retention.ms", SET, Some("3600000"))],
            false,
        );
        assert_eq!(code, 0);
        let (code, _) = incremental(
            &mut c,
            v,
            BROKER,
            "0",
            &[("num.partitions", SET, Some("3"))],
            false,
        );
        assert_eq!(code, 40, "a static broker config");
        let (code, _) = incremental(
            &mut c,
            v,
            BROKER,
            "7",
            &[("log.retention.ms", SET, Some("1"))],
            false,
        );
        assert_eq!(code, 42, "another broker id");
    }
    assert_eq!(
        topic_value(&mut c, "c5", "retention.bytes"),
        ("123456789".into(), 3, false),
        "DYNAMIC_DEFAULT_BROKER_CONFIG"
    );
    assert_eq!(topic_value(&mut c, "c6", "retention.ms").0, "3600000");
    let cluster = describe(&mut c, 4, BROKER, "", None);
    let names: Vec<&str> = cluster.configs.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["log.retention.bytes", "log.retention.ms"]);
}

#[test]
fn create_topics_is_as_strict_as_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    let assigned = |name: &str, partitions: &[(i32, &[i32])]| {
        create_topics_request::CreatableTopic::default()
            .with_name(TopicName(s(name)))
            .with_num_partitions(-1)
            .with_replication_factor(-1)
            .with_assignments(
                partitions
                    .iter()
                    .map(|(p, brokers)| {
                        create_topics_request::CreatableReplicaAssignment::default()
                            .with_partition_index(*p)
                            .with_broker_ids(brokers.iter().map(|&b| BrokerId(b)).collect())
                    })
                    .collect(),
            )
    };
    let code = |c: &mut Client, t| create(c, 7, t, false).error_code;
    assert_eq!(code(&mut c, assigned("ok", &[(0, &[0]), (1, &[0])])), 0);
    assert_eq!(code(&mut c, assigned("gap", &[(0, &[0]), (2, &[0])])), 39);
    assert_eq!(code(&mut c, assigned("dup", &[(0, &[0, 0])])), 39);
    assert_eq!(code(&mut c, assigned("other", &[(0, &[3])])), 39);
    assert_eq!(
        code(
            &mut c,
            assigned("both", &[(0, &[0])]).with_num_partitions(1)
        ),
        42
    );
    assert_eq!(
        code(&mut c, creatable("rf", 1, &[]).with_replication_factor(2)),
        38
    );
    assert_eq!(
        code(
            &mut c,
            creatable("bad-value", 1, &[("segment.bytes", "big")])
        ),
        40
    );
    assert_eq!(
        code(
            &mut c,
            creatable(
                "compact",
                1,
                &[
                    ("cleanup.policy", "compact"),
                    ("min.compaction.lag.ms", "10"),
                    ("max.compaction.lag.ms", "5")
                ]
            )
        ),
        40,
        "min.compaction.lag.ms above max.compaction.lag.ms"
    );
    assert_eq!(
        code(
            &mut c,
            creatable("compacted", 1, &[("cleanup.policy", "compact,delete")])
        ),
        0
    );
    assert_eq!(
        code(
            &mut c,
            creatable("zstd", 1, &[("compression.type", "zstd")])
        ),
        40
    );
    assert_eq!(
        code(&mut c, creatable("isr", 1, &[("min.insync.replicas", "2")])),
        40
    );
    assert_eq!(
        code(
            &mut c,
            creatable(
                "same",
                1,
                &[
                    ("compression.type", "producer"),
                    ("min.insync.replicas", "1")
                ]
            )
        ),
        0
    );
    let null = creatable("null", 1, &[]).with_configs(vec![
        create_topics_request::CreatableTopicConfig::default().with_name(s("retention.ms")),
    ]);
    assert_eq!(code(&mut c, null), 40);
    assert_eq!(code(&mut c, creatable("x.y", 1, &[])), 0);
    assert_eq!(
        code(&mut c, creatable("x_y", 1, &[])),
        17,
        "collides with x.y"
    );
    let r = create(&mut c, 7, assigned("ok2", &[(1, &[0]), (0, &[0])]), false);
    assert_eq!((r.error_code, r.num_partitions), (0, 2));
    for gone in [
        "gap",
        "dup",
        "other",
        "both",
        "rf",
        "bad-value",
        "compact",
        "zstd",
        "isr",
        "null",
        "x_y",
    ] {
        assert_eq!(
            describe(&mut c, 4, TOPIC, gone, None).error_code,
            3,
            "{gone} was created"
        );
    }
}

#[test]
fn changed_configs_act_on_live_partitions_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &["--retention-check-ms", "100"]);
    let mut c = Client::connect(&broker.addr);
    let value = [7u8; 200];
    let now = now_ms();

    // retention.bytes lowered: old segments go without a restart.
    assert_eq!(
        create(
            &mut c,
            7,
            creatable("by-bytes", 1, &[("segment.bytes", "1024")]),
            false
        )
        .error_code,
        0
    );
    for _ in 0..20 {
        assert_eq!(produce(&mut c, "by-bytes", now, &[&value]), 0);
    }
    assert!(segment_files(&broker, "by-bytes") > 3);
    let (code, _) = incremental(
        &mut c,
        1,
        TOPIC,
        "by-bytes",
        &[("retention.bytes", SET, Some("1"))],
        false,
    );
    assert_eq!(code, 0);
    wait_until("retention.bytes deletes old segments", || {
        segment_files(&broker, "by-bytes") == 1
    });

    // retention.ms lowered: segments of records ten minutes old go.
    assert_eq!(
        create(
            &mut c,
            7,
            creatable("by-age", 1, &[("segment.bytes", "1024")]),
            false
        )
        .error_code,
        0
    );
    for _ in 0..20 {
        assert_eq!(produce(&mut c, "by-age", now - 600_000, &[&value]), 0);
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = segment_files(&broker, "by-age");
    assert!(before > 3, "7 days of retention keep them: {before}");
    assert_eq!(
        alter(
            &mut c,
            2,
            TOPIC,
            "by-age",
            &[("segment.bytes", "1024"), ("retention.ms", "60000")]
        ),
        0
    );
    wait_until("retention.ms deletes old segments", || {
        segment_files(&broker, "by-age") == 1
    });

    // segment.bytes lowered: the next appends roll.
    assert_eq!(
        create(&mut c, 7, creatable("rolled", 1, &[]), false).error_code,
        0
    );
    for _ in 0..5 {
        assert_eq!(produce(&mut c, "rolled", now, &[&value]), 0);
    }
    assert_eq!(segment_files(&broker, "rolled"), 1);
    let (code, _) = incremental(
        &mut c,
        0,
        TOPIC,
        "rolled",
        &[("segment.bytes", SET, Some("1024"))],
        false,
    );
    assert_eq!(code, 0);
    for _ in 0..10 {
        assert_eq!(produce(&mut c, "rolled", now, &[&value]), 0);
    }
    assert!(segment_files(&broker, "rolled") > 1);

    // max.message.bytes lowered: a batch accepted before is refused (MESSAGE_TOO_LARGE).
    let big = [1u8; 3000];
    assert_eq!(
        create(&mut c, 7, creatable("sized", 1, &[]), false).error_code,
        0
    );
    assert_eq!(produce(&mut c, "sized", now, &[&big]), 0);
    let (code, _) = incremental(
        &mut c,
        1,
        TOPIC,
        "sized",
        &[("max.message.bytes", SET, Some("1000"))],
        false,
    );
    assert_eq!(code, 0);
    assert_eq!(produce(&mut c, "sized", now, &[&big]), 10);
    assert_eq!(produce(&mut c, "sized", now, &[&value]), 0);

    // The broker-wide default follows a dynamic change too.
    assert_eq!(
        create(&mut c, 7, creatable("plain", 1, &[]), false).error_code,
        0
    );
    let (code, _) = incremental(
        &mut c,
        1,
        BROKER,
        "",
        &[("message.max.bytes", SET, Some("2000"))],
        false,
    );
    assert_eq!(code, 0);
    assert_eq!(produce(&mut c, "plain", now, &[&big]), 10);
    assert_eq!(
        topic_value(&mut c, "plain", "max.message.bytes"),
        ("2000".into(), 3, false)
    );

    // CreateTime bounds: a record an hour old is refused once before.max.ms is a minute.
    let (code, _) = incremental(
        &mut c,
        1,
        TOPIC,
        "plain",
        &[("message.timestamp.before.max.ms", SET, Some("60000"))],
        false,
    );
    assert_eq!(code, 0);
    assert_eq!(
        produce(&mut c, "plain", now - 3_600_000, &[&value]),
        32,
        "INVALID_TIMESTAMP"
    );
    assert_eq!(produce(&mut c, "plain", now_ms(), &[&value]), 0);

    // Everything survives a restart.
    drop(c);
    broker.stop();
    let broker = Broker::start(dir.path(), &["--retention-check-ms", "100"]);
    let mut c = Client::connect(&broker.addr);
    assert_eq!(
        topic_value(&mut c, "by-bytes", "retention.bytes"),
        ("1".into(), 1, false)
    );
    assert_eq!(
        topic_value(&mut c, "by-age", "retention.ms"),
        ("60000".into(), 1, false)
    );
    assert_eq!(
        topic_value(&mut c, "rolled", "segment.bytes"),
        ("1024".into(), 1, false)
    );
    assert_eq!(
        topic_value(&mut c, "plain", "max.message.bytes"),
        ("2000".into(), 3, false)
    );
    assert_eq!(produce(&mut c, "sized", now_ms(), &[&big]), 10);
    assert_eq!(
        produce(&mut c, "plain", now_ms() - 3_600_000, &[&value]),
        32
    );
    let b = describe(&mut c, 4, BROKER, "", None);
    assert_eq!(b.configs.len(), 1);
    assert_eq!(b.configs[0].name.as_str(), "message.max.bytes");
}

fn script(name: &str) -> String {
    format!("{}/../../tests/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn confluent_admin_client_describes_alters_and_creates() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--default-partitions", "3"]);
    let path = script("admin_configs_confluent.py");
    for scenario in [
        "describe",
        "alter",
        "create",
        "timestamp-bounds",
        "max-message-bytes",
    ] {
        let out = common::run(
            "timeout",
            &["120", "python3", &path, scenario, &broker.addr],
            "",
        );
        assert_eq!(out.trim(), "ok", "{scenario}");
    }
}

#[test]
fn kafka_python_admin_client_describes_alters_and_creates() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let path = script("admin_configs_kafka_python.py");
    let out = common::run(
        "timeout",
        &["120", "python3", &path, "configs", &broker.addr],
        "",
    );
    assert_eq!(out.trim(), "ok");
}

#[test]
fn log_append_time_topics_show_the_broker_clock_in_confluent_and_kcat() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let started = now_ms();
    let path = script("admin_configs_confluent.py");
    let out = common::run(
        "timeout",
        &[
            "120",
            "python3",
            &path,
            "log-append-time",
            &broker.addr,
            "stamped",
        ],
        "",
    );
    assert_eq!(out.trim(), "ok");
    // kcat reads the same records: the first was produced with timestamp 1000 and stamped by
    // the broker, the second (after the switch back to CreateTime) keeps 1000.
    let out = common::run(
        "timeout",
        &[
            "60",
            "kcat",
            "-b",
            &broker.addr,
            "-C",
            "-t",
            "stamped",
            "-e",
            "-f",
            "%T %s\n",
        ],
        "",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let stamped: i64 = lines[0].split(' ').next().unwrap().parse().unwrap();
    assert!(stamped >= started && stamped <= now_ms(), "{out}");
    assert_eq!(lines[1], "1000 created");
}

#[test]
fn list_offsets_by_time_in_a_log_append_time_topic_answers_the_broker_stamp() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    let r = create(
        &mut c,
        7,
        creatable("stamped", 1, &[("message.timestamp.type", "LogAppendTime")]),
        false,
    );
    assert_eq!(r.error_code, 0);
    // The producer's clock is an hour ahead; the broker stamps the batch with its own.
    let before = now_ms();
    assert_eq!(
        produce(&mut c, "stamped", before + 3_600_000, &[b"a", b"b"]),
        0
    );
    let after = now_ms();
    let partition = list_offsets_request::ListOffsetsPartition::default()
        .with_partition_index(0)
        .with_timestamp(before - 60_000);
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(TopicName(s("stamped")))
            .with_partitions(vec![partition])]);
    let r: ListOffsetsResponse = c.call(ApiKey::ListOffsets, 4, &req);
    let p = &r.topics[0].partitions[0];
    assert_eq!((p.error_code, p.offset), (0, 0));
    assert!(
        (before..=after).contains(&p.timestamp),
        "the batch's stamp, not a record's own timestamp: {} not in {before}..={after}",
        p.timestamp
    );
}

/// The offsets topic must keep every group's latest commit: no alter of its configs, and
/// no cluster-wide retention or segment setting reaches it, so a restart (which replays the
/// commits from its log) still finds every group's offsets.
#[test]
fn the_offsets_topic_keeps_every_commit_whatever_the_configs_say() {
    const OFFSETS: &str = "__consumer_offsets";
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &["--retention-check-ms", "100"]);
    let mut c = Client::connect(&broker.addr);
    let commit = |c: &mut Client, group: &str, offset: i64| -> i16 {
        use kafka_protocol::messages::offset_commit_request::*;
        let r: OffsetCommitResponse = c.call(
            ApiKey::OffsetCommit,
            8,
            &OffsetCommitRequest::default()
                .with_group_id(GroupId(s(group)))
                .with_generation_id_or_member_epoch(-1)
                .with_member_id(s(""))
                .with_topics(vec![OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s("kept")))
                    .with_partitions(vec![OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(offset)])]),
        );
        r.topics[0].partitions[0].error_code
    };
    let committed = |c: &mut Client, group: &str| -> i64 {
        use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
        let r: OffsetFetchResponse = c.call(
            ApiKey::OffsetFetch,
            7,
            &OffsetFetchRequest::default()
                .with_group_id(GroupId(s(group)))
                .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                    .with_name(TopicName(s("kept")))
                    .with_partition_indexes(vec![0])])),
        );
        r.topics[0].partitions[0].committed_offset
    };
    assert_eq!(
        create(&mut c, 7, creatable("kept", 1, &[]), false).error_code,
        0
    );
    let groups: Vec<String> = (0..16).map(|i| format!("g{i}")).collect();
    for (i, g) in groups.iter().enumerate() {
        assert_eq!(commit(&mut c, g, 100 + i as i64), 0, "first commit of {g}");
    }

    // The offsets topic's own configs cannot be changed (POLICY_VIOLATION).
    assert_eq!(
        alter(&mut c, 2, TOPIC, OFFSETS, &[("retention.ms", "1")]),
        44
    );
    let (code, _) = incremental(
        &mut c,
        1,
        TOPIC,
        OFFSETS,
        &[("retention.ms", DELETE, None)],
        false,
    );
    assert_eq!(code, 44);
    // Cluster-wide settings that would roll a segment per commit and delete all but the last.
    let (code, why) = incremental(
        &mut c,
        1,
        BROKER,
        "",
        &[
            ("log.segment.bytes", SET, Some("14")),
            ("log.retention.bytes", SET, Some("0")),
            ("log.retention.ms", SET, Some("1")),
        ],
        false,
    );
    assert_eq!(code, 0, "{why:?}");
    // More commits after them: each would be a segment of its own.
    for (i, g) in groups.iter().enumerate().take(8) {
        assert_eq!(commit(&mut c, g, 200 + i as i64), 0, "second commit of {g}");
    }
    std::thread::sleep(Duration::from_millis(600)); // several retention checks
    drop(c);
    broker.stop();

    let broker = Broker::start(dir.path(), &["--retention-check-ms", "100"]);
    let mut c = Client::connect(&broker.addr);
    for (i, g) in groups.iter().enumerate() {
        let want = if i < 8 { 200 + i } else { 100 + i } as i64;
        assert_eq!(
            committed(&mut c, g),
            want,
            "offset of {g} after the restart"
        );
    }
}

/// DescribeConfigs: a resource named again gets INVALID_REQUEST for each repeat (its first
/// entry is answered), and more than DESCRIBE_CONFIGS_RESOURCES_MAX resources close the
/// connection, so a response never grows with repeats. CreateTopics validate_only counts the
/// partitions of the topics it validates against the broker's partition limit, as if created.
#[test]
fn describe_configs_refuses_repeats_and_validate_only_counts_against_the_partition_limit() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut c = Client::connect(&broker.addr);
    assert_eq!(
        create(&mut c, 7, creatable("dc", 1, &[]), false).error_code,
        0
    );
    let resource = |t: i8, name: &str| {
        describe_configs_request::DescribeConfigsResource::default()
            .with_resource_type(t)
            .with_resource_name(s(name))
            .with_configuration_keys(Some(vec![s("retention.ms"), s("cleanup.policy")]))
    };
    let req = DescribeConfigsRequest::default().with_resources(vec![
        resource(TOPIC, "dc"),
        resource(BROKER, "0"),
        resource(TOPIC, "dc"),
        resource(TOPIC, "dc"),
    ]);
    for v in range(ApiKey::DescribeConfigs) {
        let r: DescribeConfigsResponse = c.call(ApiKey::DescribeConfigs, v, &req);
        let codes: Vec<(i16, usize)> = r
            .results
            .iter()
            .map(|r| (r.error_code, r.configs.len()))
            .collect();
        assert_eq!(codes, vec![(0, 2), (0, 0), (42, 0), (42, 0)], "v{v}");
    }
    // One resource past the limit: the connection is closed, nothing is answered.
    let many = DescribeConfigsRequest::default().with_resources(
        (0..10_001)
            .map(|i| resource(TOPIC, &format!("t{i}")))
            .collect(),
    );
    let (_, frame) = c.frame(ApiKey::DescribeConfigs, 4, &many);
    let mut raw = std::net::TcpStream::connect(&broker.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    raw.write_all(&frame).unwrap();
    let mut size = [0u8; 4];
    assert!(
        raw.read_exact(&mut size).is_err(),
        "answered past the limit"
    );
    // validate_only: 60000 partitions validate; 60000 more in the same request would pass
    // the broker's 100000 (one already exists): POLICY_VIOLATION, as a real creation.
    let both = CreateTopicsRequest::default()
        .with_topics(vec![
            creatable("v1", 60_000, &[]),
            creatable("v2", 60_000, &[]),
        ])
        .with_timeout_ms(5000)
        .with_validate_only(true);
    let r: CreateTopicsResponse = c.call(ApiKey::CreateTopics, 7, &both);
    let codes: Vec<i16> = r.topics.iter().map(|t| t.error_code).collect();
    assert_eq!(codes, vec![0, 44]);
    // Nothing was created: a real topic still fits.
    assert_eq!(
        create(&mut c, 7, creatable("dc2", 1, &[]), false).error_code,
        0
    );
}
