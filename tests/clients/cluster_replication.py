#!/usr/bin/env python3
"""Replication load through confluent-kafka (librdkafka), driven from
crates/ringbroker/tests/cluster_replication.rs. Each command prints one JSON line.

  create BOOTSTRAP TOPIC PARTITIONS RF
      AdminClient.create_topics; {"ok": true} or {"error": NAME}
  produce BOOTSTRAP TOPIC COUNT [PAUSE_MS]
      an idempotent producer (acks=all) sends values "v<index>" for index 0..COUNT, keyed
      by index so they spread over the partitions, PAUSE_MS between sends (0: as fast as it
      can; -1: each record delivered before the next is sent, one batch each); waits for
      every delivery report. {"acked": [indexes], "failed": {error: count}}
  consume BOOTSTRAP TOPIC EXPECTED TIMEOUT_S
      reads every partition from the beginning until EXPECTED records arrived or the time
      is up. {"partitions": {partition: [index, ...] in offset order}}
"""
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create(bootstrap, topic, partitions, rf):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, partitions, rf)], request_timeout=30)
    try:
        futures[topic].result(timeout=60)
        return {"ok": True}
    except KafkaException as e:
        return {"error": e.args[0].name()}


def produce(bootstrap, topic, count, pause_ms):
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 120000,
            "request.timeout.ms": 15000,
            "retry.backoff.ms": 100,
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )
    acked = []
    failed = {}

    def report(err, msg):
        index = int(msg.value().decode()[1:])
        if err is None:
            acked.append(index)
        else:
            failed[err.name()] = failed.get(err.name(), 0) + 1

    for i in range(count):
        while True:
            try:
                producer.produce(topic, key=str(i).encode(), value=("v%d" % i).encode(), on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if pause_ms > 0:
            time.sleep(pause_ms / 1000.0)
        elif pause_ms < 0:
            producer.flush(60)  # one record per batch
    producer.flush(180)
    return {"acked": sorted(acked), "failed": failed}


def consume(bootstrap, topic, expected, timeout_s):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "replication-check-" + uuid.uuid4().hex,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )
    metadata = consumer.list_topics(topic, timeout=30)
    partitions = sorted(metadata.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    got = {str(p): [] for p in partitions}
    seen = 0
    deadline = time.time() + timeout_s
    while seen < expected and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        got[str(msg.partition())].append(int(msg.value().decode()[1:]))
        seen += 1
    consumer.close()
    return {"partitions": got}


def main():
    command, bootstrap, topic = sys.argv[1], sys.argv[2], sys.argv[3]
    if command == "create":
        out = create(bootstrap, topic, int(sys.argv[4]), int(sys.argv[5]))
    elif command == "produce":
        pause_ms = int(sys.argv[5]) if len(sys.argv) > 5 else 0
        out = produce(bootstrap, topic, int(sys.argv[4]), pause_ms)
    elif command == "consume":
        out = consume(bootstrap, topic, int(sys.argv[4]), float(sys.argv[5]))
    else:
        raise SystemExit("unknown command " + command)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
