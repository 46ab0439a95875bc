#!/usr/bin/env python3
"""confluent-kafka's AdminClient against the config APIs; each scenario asserts and prints "ok".

  describe BOOTSTRAP           DescribeConfigs of a topic and of the broker
  alter BOOTSTRAP              AlterConfigs and IncrementalAlterConfigs (SET, DELETE, APPEND,
                               SUBTRACT, validate_only), topic and broker resources
  create BOOTSTRAP             CreateTopics as strict as Kafka (unknown configs, validate_only,
                               replication factor, replica assignments, name collisions)
  log-append-time BOOTSTRAP TOPIC
                               TOPIC created with LogAppendTime; a record produced with
                               timestamp 1000 comes back stamped with the broker's clock
  timestamp-bounds BOOTSTRAP   CreateTime bounds refuse an old record (INVALID_TIMESTAMP)
  max-message-bytes BOOTSTRAP  a lowered max.message.bytes refuses a record accepted before
"""
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   ConfigSource, NewTopic)

TIMEOUT = 20


def admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap})


def error_code(future):
    """The Kafka error code a future fails with, or None when it succeeds."""
    try:
        future.result(timeout=TIMEOUT)
        return None
    except KafkaException as e:
        return e.args[0].code()


def create(a, topic, partitions=1, config=None):
    a.create_topics([NewTopic(topic, partitions, 1, config=config or {})])[topic].result(
        timeout=TIMEOUT)


def describe_topic(a, topic):
    r = ConfigResource("topic", topic)
    return a.describe_configs([r])[r].result(timeout=TIMEOUT)


def describe_broker(a, name="0"):
    r = ConfigResource("broker", name)
    return a.describe_configs([r])[r].result(timeout=TIMEOUT)


def incremental(a, rtype, name, ops, validate_only=False):
    entries = [ConfigEntry(k, v, incremental_operation=op) for k, op, v in ops]
    r = ConfigResource(rtype, name, incremental_configs=entries)
    return a.incremental_alter_configs([r], validate_only=validate_only)[r]


def describe(bootstrap):
    a = admin(bootstrap)
    create(a, "described", 2, {"retention.ms": "3600000", "max.message.bytes": "2000"})
    cfg = describe_topic(a, "described")
    for name in ["cleanup.policy", "compression.type", "retention.bytes", "segment.bytes",
                 "segment.ms", "message.timestamp.type", "min.insync.replicas",
                 "unclean.leader.election.enable", "message.timestamp.before.max.ms",
                 "leader.replication.throttled.replicas", "remote.storage.enable"]:
        assert name in cfg, name
    r = cfg["retention.ms"]
    assert (r.value, r.source, r.is_read_only, r.is_sensitive) == (
        "3600000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value, False, False), r
    syn = [(s.name, s.value, s.source) for s in r.synonyms.values()]
    assert syn[0] == ("retention.ms", "3600000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value), syn
    assert ("log.retention.ms", "604800000", ConfigSource.DEFAULT_CONFIG.value) in syn, syn
    assert cfg["max.message.bytes"].value == "2000"
    c = cfg["cleanup.policy"]
    assert (c.value, c.source, c.is_read_only) == ("delete", ConfigSource.DEFAULT_CONFIG.value,
                                                   False), c
    c = cfg["compression.type"]
    assert (c.value, c.is_read_only) == ("producer", True), c
    assert cfg["min.insync.replicas"].is_read_only
    assert cfg["segment.bytes"].value == "1073741824"

    b = describe_broker(a)
    for name in ["broker.id", "node.id", "log.dirs", "listeners", "advertised.listeners",
                 "num.partitions", "auto.create.topics.enable", "default.replication.factor",
                 "log.retention.ms", "log.retention.bytes", "log.segment.bytes", "log.roll.ms",
                 "message.max.bytes", "fetch.max.bytes"]:
        assert name in b, name
    assert b["broker.id"].value == "0"
    assert b["num.partitions"].value == "3", b["num.partitions"]  # the test starts with 3
    assert b["num.partitions"].source == ConfigSource.STATIC_BROKER_CONFIG.value
    assert b["num.partitions"].is_read_only
    assert not b["log.retention.ms"].is_read_only
    assert b["listeners"].value.startswith("PLAINTEXT://127.0.0.1:")

    r = ConfigResource("topic", "no-such-topic")
    code = error_code(a.describe_configs([r])[r])
    assert code == KafkaError.UNKNOWN_TOPIC_OR_PART, code
    print("ok")


def alter(bootstrap):
    a = admin(bootstrap)
    create(a, "altered", 1, {"retention.ms": "100000", "segment.ms": "200000"})

    # AlterConfigs replaces the whole override set.
    r = ConfigResource("topic", "altered", set_config={"retention.bytes": "123456"})
    a.alter_configs([r])[r].result(timeout=TIMEOUT)
    cfg = describe_topic(a, "altered")
    assert cfg["retention.bytes"].value == "123456"
    assert cfg["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value, cfg["retention.ms"]
    assert cfg["segment.ms"].source == ConfigSource.DEFAULT_CONFIG.value

    # Unknown names and refused values: INVALID_CONFIG, nothing changes.
    r = ConfigResource("topic", "altered", set_config={"dummy.doesntexist": "1"})
    assert error_code(a.alter_configs([r])[r]) == KafkaError.INVALID_CONFIG
    assert describe_topic(a, "altered")["retention.bytes"].value == "123456"

    S, D, A, X = (AlterConfigOpType.SET, AlterConfigOpType.DELETE, AlterConfigOpType.APPEND,
                  AlterConfigOpType.SUBTRACT)
    incremental(a, "topic", "altered", [("retention.ms", S, "5000"),
                                        ("retention.bytes", D, None)]).result(timeout=TIMEOUT)
    cfg = describe_topic(a, "altered")
    assert cfg["retention.ms"].value == "5000"
    assert cfg["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert cfg["retention.bytes"].source == ConfigSource.DEFAULT_CONFIG.value

    # APPEND/SUBTRACT on the list-typed cleanup.policy.
    incremental(a, "topic", "altered", [("cleanup.policy", A, "delete")]).result(timeout=TIMEOUT)
    assert describe_topic(a, "altered")["cleanup.policy"].value == "delete"
    incremental(a, "topic", "altered", [("cleanup.policy", A, "compact")]).result(timeout=TIMEOUT)
    assert describe_topic(a, "altered")["cleanup.policy"].value == "delete,compact"
    code = error_code(incremental(a, "topic", "altered",
                                  [("min.cleanable.dirty.ratio", S, "1.5")]))
    assert code == KafkaError.INVALID_CONFIG, code
    incremental(a, "topic", "altered", [("cleanup.policy", X, "compact")]).result(timeout=TIMEOUT)
    assert describe_topic(a, "altered")["cleanup.policy"].value == "delete"
    code = error_code(incremental(a, "topic", "altered", [("retention.ms", A, "1")]))
    assert code == KafkaError.INVALID_CONFIG, code
    code = error_code(incremental(a, "topic", "altered", [("compression.type", S, "zstd")]))
    assert code == KafkaError.INVALID_CONFIG, code
    incremental(a, "topic", "altered", [("compression.type", S, "producer")]).result(
        timeout=TIMEOUT)

    # validate_only checks and changes nothing.
    incremental(a, "topic", "altered", [("retention.ms", S, "7777")],
                validate_only=True).result(timeout=TIMEOUT)
    assert describe_topic(a, "altered")["retention.ms"].value == "5000"
    code = error_code(incremental(a, "topic", "no-such-topic", [("retention.ms", S, "1")]))
    assert code == KafkaError.UNKNOWN_TOPIC_OR_PART, code

    # Broker-level dynamic defaults apply to topics without an override.
    create(a, "follows-broker", 1)
    # (librdkafka refuses the cluster-wide resource name ""; the Rust and kafka-python tests
    # set it.)
    incremental(a, "broker", "0", [("log.retention.ms", S, "1800000")]).result(timeout=TIMEOUT)
    r = describe_topic(a, "follows-broker")["retention.ms"]
    assert (r.value, r.source) == ("1800000", ConfigSource.DYNAMIC_BROKER_CONFIG.value), r
    b = describe_broker(a)["log.retention.ms"]
    assert (b.value, b.source) == ("1800000", ConfigSource.DYNAMIC_BROKER_CONFIG.value), b
    incremental(a, "broker", "0", [("log.retention.ms", D, None)]).result(timeout=TIMEOUT)
    r = describe_topic(a, "follows-broker")["retention.ms"]
    assert (r.value, r.source) == ("604800000", ConfigSource.DEFAULT_CONFIG.value), r
    code = error_code(incremental(a, "broker", "0", [("num.partitions", S, "5")]))
    assert code == KafkaError.INVALID_CONFIG, code
    print("ok")


def create_strict(bootstrap):
    a = admin(bootstrap)

    def code_of(new_topic, validate_only=False):
        fs = a.create_topics([new_topic], validate_only=validate_only)
        return error_code(fs[new_topic.topic])

    assert code_of(NewTopic("bad-config", 1, 1, config={"dummy.doesntexist": "x"})) == \
        KafkaError.INVALID_CONFIG
    assert code_of(NewTopic("bad-value", 1, 1, config={"retention.ms": "soon"})) == \
        KafkaError.INVALID_CONFIG
    assert code_of(NewTopic("compacted", 1, 1, config={"cleanup.policy": "compact",
                                                       "min.compaction.lag.ms": "10",
                                                       "max.compaction.lag.ms": "5"})) == \
        KafkaError.INVALID_CONFIG
    assert code_of(NewTopic("rf3", 1, 3)) == KafkaError.INVALID_REPLICATION_FACTOR
    assert code_of(NewTopic("elsewhere", 1, -1, replica_assignment=[[1]])) == \
        KafkaError.INVALID_REPLICA_ASSIGNMENT
    assert code_of(NewTopic("twice", 1, -1, replica_assignment=[[0, 0]])) == \
        KafkaError.INVALID_REPLICA_ASSIGNMENT
    assert code_of(NewTopic("assigned", 2, -1, replica_assignment=[[0], [0]])) is None
    assert code_of(NewTopic("only.checked", 4, 1, config={"retention.ms": "1000"}),
                   validate_only=True) is None
    topics = a.list_topics(timeout=TIMEOUT).topics
    assert "only.checked" not in topics, topics.keys()
    assert len(topics["assigned"].partitions) == 2
    for name in ["bad-config", "bad-value", "compacted", "rf3", "elsewhere", "twice"]:
        assert name not in topics, name
    assert code_of(NewTopic("a.b", 1, 1)) is None
    assert code_of(NewTopic("a_b", 1, 1)) == KafkaError.TOPIC_EXCEPTION
    print("ok")


def produce_one(bootstrap, topic, value, timestamp=None):
    """Produces one record; the delivery error code, or None."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.max.bytes": 10_000_000,
                  "retries": 0})
    result = []
    kwargs = {"timestamp": timestamp} if timestamp is not None else {}
    p.produce(topic, value=value, on_delivery=lambda err, msg: result.append(err), **kwargs)
    p.flush(TIMEOUT)
    assert len(result) == 1, result
    return None if result[0] is None else result[0].code()


def consume_all(bootstrap, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "cfg-" + topic,
                  "enable.auto.commit": False})
    _, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=TIMEOUT)
    c.assign([TopicPartition(topic, 0, 0)])
    out = []
    deadline = time.time() + TIMEOUT
    while len(out) < high and time.time() < deadline:
        m = c.poll(1.0)
        if m is not None and m.error() is None:
            out.append(m)
    c.close()
    return out


def log_append_time(bootstrap, topic):
    a = admin(bootstrap)
    create(a, topic, 1, {"message.timestamp.type": "LogAppendTime"})
    before = int(time.time() * 1000)
    assert produce_one(bootstrap, topic, b"stamped", timestamp=1000) is None
    after = int(time.time() * 1000)
    [m] = consume_all(bootstrap, topic)
    kind, ts = m.timestamp()
    assert kind == 2, m.timestamp()  # TIMESTAMP_LOG_APPEND_TIME
    assert before - 1000 <= ts <= after + 1000, (before, ts, after)
    # Back to CreateTime: the producer's timestamp is kept.
    S = AlterConfigOpType.SET
    incremental(a, "topic", topic, [("message.timestamp.type", S, "CreateTime")]).result(
        timeout=TIMEOUT)
    assert produce_one(bootstrap, topic, b"created", timestamp=1000) is None
    msgs = consume_all(bootstrap, topic)
    assert msgs[1].timestamp() == (1, 1000), msgs[1].timestamp()
    print("ok")


def timestamp_bounds(bootstrap):
    a = admin(bootstrap)
    create(a, "bounded", 1, {"message.timestamp.before.max.ms": "60000"})
    code = produce_one(bootstrap, "bounded", b"old", timestamp=1000)
    assert code == KafkaError.INVALID_TIMESTAMP, code
    assert produce_one(bootstrap, "bounded", b"now") is None
    S = AlterConfigOpType.SET
    incremental(a, "topic", "bounded", [("message.timestamp.after.max.ms", S, "60000")]).result(
        timeout=TIMEOUT)
    future = int(time.time() * 1000) + 3_600_000
    code = produce_one(bootstrap, "bounded", b"future", timestamp=future)
    assert code == KafkaError.INVALID_TIMESTAMP, code
    print("ok")


def max_message_bytes(bootstrap):
    a = admin(bootstrap)
    create(a, "sized", 1)
    value = b"x" * 5000
    assert produce_one(bootstrap, "sized", value) is None
    S = AlterConfigOpType.SET
    incremental(a, "topic", "sized", [("max.message.bytes", S, "1000")]).result(timeout=TIMEOUT)
    code = produce_one(bootstrap, "sized", value)
    assert code == KafkaError.MSG_SIZE_TOO_LARGE, code
    print("ok")


def main():
    cmd, bootstrap = sys.argv[1], sys.argv[2]
    if cmd == "describe":
        describe(bootstrap)
    elif cmd == "alter":
        alter(bootstrap)
    elif cmd == "create":
        create_strict(bootstrap)
    elif cmd == "log-append-time":
        log_append_time(bootstrap, sys.argv[3])
    elif cmd == "timestamp-bounds":
        timestamp_bounds(bootstrap)
    elif cmd == "max-message-bytes":
        max_message_bytes(bootstrap)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
