#!/usr/bin/env python3
"""confluent-kafka's AdminClient as the independent witness of the ringbroker CLI's admin
commands (crates/ringbroker/tests/cli.rs).

  configs BOOTSTRAP TOPIC        "name<TAB>value<TAB>source" for each config of TOPIC
  partitions BOOTSTRAP TOPIC     the number of partitions of TOPIC (Metadata)
  watermarks BOOTSTRAP TOPIC P   "low<TAB>high" of partition P
"""
import sys

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType


def configs(bootstrap, topic):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ResourceType.TOPIC, topic)
    result = admin.describe_configs([resource])[resource].result(timeout=30)
    for name in sorted(result):
        entry = result[name]
        print(f"{name}\t{entry.value}\t{entry.source}")


def partitions(bootstrap, topic):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(topic=topic, timeout=30)
    print(len(md.topics[topic].partitions))


def watermarks(bootstrap, topic, partition):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "cli-crosscheck"})
    low, high = c.get_watermark_offsets(TopicPartition(topic, int(partition)), timeout=30)
    c.close()
    print(f"{low}\t{high}")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"configs": configs, "partitions": partitions, "watermarks": watermarks}[command](*args)
