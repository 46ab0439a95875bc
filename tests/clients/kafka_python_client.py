#!/usr/bin/env python3
"""kafka-python (a pure-Python Kafka client) driven from the end-to-end tests.

  create BOOTSTRAP TOPIC PARTITIONS [k=v,...]  CreateTopics through the admin client
  produce-timed BOOTSTRAP TOPIC          "timestamp_ms<TAB>value" lines on stdin to partition 0
  offsets BOOTSTRAP TOPIC PARTITION TS   print "earliest<TAB>latest<TAB>offset-for-TS"
                                         (offset-for-TS is -1 when no record is that recent)
  topics BOOTSTRAP                       print "topic<TAB>partitions" for every topic
  produce BOOTSTRAP TOPIC COMPRESSION    read "key<TAB>value" lines on stdin, produce them
                                         keyed (acks=all), print how many were acknowledged
  group-member BOOTSTRAP TOPIC GROUP OUT SECONDS [SESSION_MS]
                                         subscribe() in GROUP for SECONDS, committing after each
                                         poll; appends "assigned<TAB>p,p" on each assignment and
                                         "record<TAB>p<TAB>offset<TAB>value" per record to OUT
  consume BOOTSTRAP TOPIC                print "partition<TAB>offset<TAB>key<TAB>value" for
                                         every record from the beginning to the end offsets
"""
import sys

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic


def create(bootstrap, topic, partitions, configs=""):
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    topic_configs = dict(kv.split("=", 1) for kv in configs.split(",") if kv)
    admin.create_topics([NewTopic(topic, num_partitions=int(partitions), replication_factor=1, topic_configs=topic_configs)])
    admin.close()
    print("created", topic)


def topics(bootstrap):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    for t in sorted(consumer.topics()):
        print(f"{t}\t{len(consumer.partitions_for_topic(t))}")
    consumer.close()


def produce(bootstrap, topic, compression):
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        compression_type=None if compression == "none" else compression,
        linger_ms=5,
    )
    futures = []
    for line in sys.stdin:
        key, value = line.rstrip("\n").split("\t", 1)
        futures.append(producer.send(topic, key=key.encode(), value=value.encode()))
    producer.flush()
    acked = sum(1 for f in futures if f.get(timeout=30) is not None)
    producer.close()
    print(f"acked\t{acked}")


def produce_timed(bootstrap, topic):
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for line in sys.stdin:
        ts, value = line.rstrip("\n").split("\t", 1)
        producer.send(topic, value=value.encode(), partition=0, timestamp_ms=int(ts)).get(timeout=30)
    producer.close()


def offsets(bootstrap, topic, partition, ts):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    tp = TopicPartition(topic, int(partition))
    earliest = consumer.beginning_offsets([tp])[tp]
    latest = consumer.end_offsets([tp])[tp]
    found = consumer.offsets_for_times({tp: int(ts)})[tp]
    consumer.close()
    print(f"{earliest}\t{latest}\t{found.offset if found else -1}")


def group_member(bootstrap, topic, group, out_path, seconds, session_ms="10000"):
    import time
    from kafka import ConsumerRebalanceListener

    out = open(out_path, "a", buffering=1)

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            pass

        def on_partitions_assigned(self, assigned):
            out.write("assigned\t" + ",".join(str(tp.partition) for tp in sorted(assigned)) + "\n")

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(session_ms),
        heartbeat_interval_ms=max(100, int(session_ms) // 5),
    )
    consumer.subscribe([topic], listener=Listener())
    deadline = time.time() + float(seconds)
    while time.time() < deadline:
        batch = consumer.poll(timeout_ms=200)
        for tp, records in batch.items():
            for r in records:
                out.write(f"record\t{tp.partition}\t{r.offset}\t{r.value.decode()}\n")
        if batch:
            consumer.commit()
    consumer.close()


def consume(bootstrap, topic):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    if not parts:
        raise SystemExit(f"topic {topic} has no partitions")
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    end = consumer.end_offsets(parts)
    out = []
    while any(consumer.position(tp) < end[tp] for tp in parts):
        for tp, records in consumer.poll(timeout_ms=1000).items():
            for r in records:
                out.append(f"{tp.partition}\t{r.offset}\t{r.key.decode()}\t{r.value.decode()}")
    consumer.close()
    sys.stdout.write("".join(line + "\n" for line in out))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    commands = {
        "create": create,
        "topics": topics,
        "produce": produce,
        "produce-timed": produce_timed,
        "offsets": offsets,
        "group-member": group_member,
        "consume": consume,
    }
    commands[command](*args)
