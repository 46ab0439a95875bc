#!/usr/bin/env python3
"""Partition reassignment through kafka-python's admin client (KIP-455 APIs), driven from
crates/ringbroker/tests/cluster_reassign.rs. Each command prints one JSON line.

  create BOOTSTRAP TOPIC ASSIGNMENT
      a topic with explicit replicas, ASSIGNMENT like "1,2;2,3" (one list per partition).
      {"ok": true} or {"error": NAME}
  produce BOOTSTRAP TOPIC PARTITION COUNT
      acks=all values "v<index>" for index 0..COUNT to one partition. {"acked": n}
  reassign BOOTSTRAP TOPIC PARTITION REPLICAS
      REPLICAS "2,3" or "none" (cancel). {"result": error name or null}
  list BOOTSTRAP
      {"ongoing": [{"topic", "partition", "replicas", "adding", "removing"}]}
  consume BOOTSTRAP TOPIC PARTITION EXPECTED TIMEOUT_S
      reads the partition from offset 0. {"values": [index, ...] in offset order}
"""
import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic


def admin(bootstrap):
    return KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=30000)


def create(bootstrap, topic, assignment):
    lists = [[int(b) for b in part.split(",")] for part in assignment.split(";")]
    t = NewTopic(topic, num_partitions=-1, replication_factor=-1,
                 replica_assignments={i: r for i, r in enumerate(lists)})
    try:
        admin(bootstrap).create_topics([t], timeout_ms=30000)
        return {"ok": True}
    except Exception as e:  # noqa: BLE001 - reported to the test
        return {"error": type(e).__name__}


def produce(bootstrap, topic, partition, count):
    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", linger_ms=5,
                             retries=20, request_timeout_ms=15000)
    futures = [producer.send(topic, value=("v%d" % i).encode(), partition=partition)
               for i in range(count)]
    producer.flush(120)
    acked = 0
    for f in futures:
        try:
            f.get(timeout=60)
            acked += 1
        except Exception:  # noqa: BLE001 - counted
            pass
    producer.close()
    return {"acked": acked}


def reassign(bootstrap, topic, partition, replicas):
    target = None if replicas == "none" else [int(b) for b in replicas.split(",")]
    out = admin(bootstrap).alter_partition_reassignments(
        {TopicPartition(topic, partition): target}, timeout_ms=30000)
    err = out.get(TopicPartition(topic, partition))
    return {"result": None if err is None else err.__name__}


def list_(bootstrap):
    out = admin(bootstrap).list_partition_reassignments()
    return {"ongoing": [
        {"topic": tp.topic, "partition": tp.partition, "replicas": v["replicas"],
         "adding": v["adding_replicas"], "removing": v["removing_replicas"]}
        for tp, v in sorted(out.items())]}


def consume(bootstrap, topic, partition, expected, timeout_s):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False,
                             consumer_timeout_ms=1000)
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    values = []
    deadline = time.time() + timeout_s
    while len(values) < expected and time.time() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            values.extend(int(r.value.decode()[1:]) for r in batch)
    consumer.close()
    return {"values": values}


def main():
    cmd, bootstrap = sys.argv[1], sys.argv[2]
    a = sys.argv[3:]
    if cmd == "create":
        out = create(bootstrap, a[0], a[1])
    elif cmd == "produce":
        out = produce(bootstrap, a[0], int(a[1]), int(a[2]))
    elif cmd == "reassign":
        out = reassign(bootstrap, a[0], int(a[1]), a[2])
    elif cmd == "list":
        out = list_(bootstrap)
    elif cmd == "consume":
        out = consume(bootstrap, a[0], int(a[1]), int(a[2]), float(a[3]))
    else:
        raise SystemExit("unknown command " + cmd)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
