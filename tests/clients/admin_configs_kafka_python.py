#!/usr/bin/env python3
"""kafka-python's KafkaAdminClient against the config APIs; asserts, then prints "ok".

  configs BOOTSTRAP   create_topics with configs (and an unknown one), describe_configs of a
                      topic and of the broker, alter_configs (IncrementalAlterConfigs and the
                      legacy AlterConfigs), validate_only
"""
import sys

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import InvalidConfigurationError


def topic_configs(a, name, **kwargs):
    r = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)], config_filter="all",
                           **kwargs)
    return r["topic"][name]


def configs(bootstrap):
    a = KafkaAdminClient(bootstrap_servers=bootstrap)
    a.create_topics([NewTopic("kp", 2, 1, topic_configs={"retention.ms": "1234",
                                                         "segment.bytes": "1048576"})])
    try:
        a.create_topics([NewTopic("kp-bad", 1, 1, topic_configs={"dummy.doesntexist": "1"})])
        raise AssertionError("an unknown config was accepted")
    except InvalidConfigurationError as e:
        assert "dummy.doesntexist" in str(e), e
    assert "kp-bad" not in a.list_topics()

    cfg = topic_configs(a, "kp", include_synonyms=True)
    assert cfg["retention.ms"]["value"] == "1234", cfg["retention.ms"]
    assert cfg["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
    assert cfg["retention.ms"]["config_type"] == "LONG", cfg["retention.ms"]
    assert cfg["segment.bytes"]["value"] == "1048576"
    assert cfg["cleanup.policy"]["config_source"] == "DEFAULT_CONFIG"
    assert cfg["compression.type"]["read_only"] is True
    assert [s["name"] for s in cfg["retention.ms"]["synonyms"]] == ["retention.ms",
                                                                   "log.retention.ms"]
    modified = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "kp")])["topic"]["kp"]
    assert sorted(modified) == ["retention.ms", "segment.bytes"], modified

    broker = a.describe_configs([ConfigResource(ConfigResourceType.BROKER, "0")],
                                config_filter="all")["broker"]["0"]
    assert broker["broker.id"]["value"] == "0"
    assert broker["log.retention.ms"]["read_only"] is False
    assert broker["log.dirs"]["read_only"] is True

    # IncrementalAlterConfigs (kafka-python's default here): a SET keeps the other overrides.
    r = a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "kp",
                                        configs={"retention.bytes": "100000"})])
    assert r == {"topic": {"kp": "OK"}}, r
    cfg = topic_configs(a, "kp")
    assert (cfg["retention.bytes"]["value"], cfg["retention.ms"]["value"]) == ("100000", "1234")
    # validate_only changes nothing; a bad value names its key.
    r = a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "kp",
                                        configs={"retention.bytes": "5"})], validate_only=True)
    assert r == {"topic": {"kp": "OK"}}, r
    assert topic_configs(a, "kp")["retention.bytes"]["value"] == "100000"
    r = a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "kp",
                                        configs={"segment.bytes": "lots"})])
    assert "segment.bytes" in r["topic"]["kp"] and "InvalidConfiguration" in r["topic"]["kp"], r
    # Legacy AlterConfigs: the client re-sends the other modified keys itself.
    r = a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, "kp",
                                        configs={"retention.ms": "4321"})], incremental=False)
    assert r == {"topic": {"kp": "OK"}}, r
    cfg = topic_configs(a, "kp")
    assert (cfg["retention.ms"]["value"], cfg["retention.bytes"]["value"]) == ("4321", "100000")
    # Broker dynamic config on this node.
    r = a.alter_configs([ConfigResource(ConfigResourceType.BROKER, "0",
                                        configs={"log.retention.bytes": "99999999"})])
    assert r == {"broker": {"0": "OK"}}, r
    a.create_topics([NewTopic("kp-follows", 1, 1)])
    cfg = topic_configs(a, "kp-follows")
    assert cfg["retention.bytes"]["value"] == "99999999", cfg["retention.bytes"]
    assert cfg["retention.bytes"]["config_source"] == "DYNAMIC_BROKER_CONFIG"
    print("ok")


def main():
    cmd, bootstrap = sys.argv[1], sys.argv[2]
    if cmd == "configs":
        configs(bootstrap)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
