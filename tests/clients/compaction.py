#!/usr/bin/env python3
"""Compacted topics driven by real clients (confluent-kafka and kafka-python). Every command
prints tab-separated lines; a refused produce prints "error<TAB>CODE_OR_NAME<TAB>message".
A value written "<null>" is a tombstone (null value).

  create BOOTSTRAP TOPIC PARTITIONS [name=value...]   confluent AdminClient; "ok" or error
  produce LIB BOOTSTRAP TOPIC [CODEC]                 stdin "key<TAB>value" lines, in order, to
                                                      partition 0, acks=all, small batches;
                                                      prints "offset<TAB>key" per record
  produce-keyless LIB BOOTSTRAP TOPIC CODEC           one batch: a keyed record, then one
                                                      without a key; prints "ok" or the error
                                                      of each record
  consume LIB BOOTSTRAP TOPIC                         partition 0 from offset 0 to its end:
                                                      "offset<TAB>key<TAB>value"
  committed LIB BOOTSTRAP TOPIC PARTITIONS GROUP...   "group<TAB>partition<TAB>offset" (-1:
                                                      none) of each group's committed offsets
  alter-broker-default BOOTSTRAP NAME VALUE           confluent incremental_alter_configs SET
                                                      on broker 0's dynamic configs; "ok"
                                                      or "error<TAB>NAME<TAB>message"
"""
import sys
import time

TIMEOUT = 30
NULL = "<null>"


def text(b):
    return NULL if b is None else b.decode()


def raw(s):
    return None if s == NULL else s.encode()


def create(bootstrap, topic, partitions, *configs):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = dict(c.split("=", 1) for c in configs)
    fs = admin.create_topics([NewTopic(topic, int(partitions), 1, config=config)],
                             request_timeout=20)
    try:
        fs[topic].result(TIMEOUT)
        print("ok")
    except KafkaException as e:
        err = e.args[0]
        print(f"error\t{err.code()}\t{err.str()}")


def read_pairs():
    for line in sys.stdin.read().splitlines():
        if line:
            key, value = line.split("\t", 1)
            yield key, value


def produce(lib, bootstrap, topic, codec="none"):
    pairs = list(read_pairs())
    if lib == "confluent":
        from confluent_kafka import Producer
        # Small batches: many of them, over many segments.
        p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                      "compression.type": codec, "enable.idempotence": False,
                      "batch.num.messages": 20, "max.in.flight.requests.per.connection": 1})
        out = []

        def report(err, msg):
            if err is not None:
                raise SystemExit(f"delivery failed: {err}")
            out.append((msg.offset(), msg.key().decode()))

        for key, value in pairs:
            p.produce(topic, partition=0, key=key.encode(), value=raw(value), on_delivery=report)
            p.poll(0)
        if p.flush(60):
            raise SystemExit("not delivered")
    else:
        from kafka import KafkaProducer
        p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                          compression_type=None if codec == "none" else codec,
                          batch_size=1024, max_in_flight_requests_per_connection=1)
        futures = [(key, p.send(topic, partition=0, key=key.encode(), value=raw(value)))
                   for key, value in pairs]
        p.flush(60)
        out = [(f.get(timeout=TIMEOUT).offset, key) for key, f in futures]
        p.close()
    for offset, key in sorted(out):
        print(f"{offset}\t{key}")


def produce_keyless(lib, bootstrap, topic, codec):
    """A keyed record and a key-less one in one batch (long linger): the whole batch is
    refused, the keyed record too."""
    if lib == "confluent":
        from confluent_kafka import Producer
        p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 500,
                      "compression.type": codec, "retries": 0, "enable.idempotence": False})
        # Metadata first: records produced while librdkafka still looks the topic up can be
        # moved to the partition's queue one by one and leave in two batches.
        p.list_topics(topic, timeout=TIMEOUT)
        results = []

        def report(err, msg):
            if err is None:
                results.append(f"ok\t{msg.offset()}")
            else:
                results.append(f"error\t{err.code()}\t{err.name()}\t{err.str()}")

        p.produce(topic, partition=0, key=b"keyed", value=b"v", on_delivery=report)
        p.produce(topic, partition=0, value=b"no key", on_delivery=report)
        p.flush(60)
        print("\n".join(results))
    else:
        from kafka import KafkaProducer
        p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=500, retries=0,
                          compression_type=None if codec == "none" else codec)
        futures = [p.send(topic, partition=0, key=b"keyed", value=b"v"),
                   p.send(topic, partition=0, value=b"no key")]
        p.flush(60)
        for f in futures:
            try:
                print(f"ok\t{f.get(timeout=TIMEOUT).offset}")
            except Exception as e:  # the client's error type names Kafka's error
                errno = getattr(e, "errno", None)
                print(f"error\t{errno}\t{type(e).__name__}\t{e}")
        p.close()


def consume(lib, bootstrap, topic):
    out = []
    if lib == "confluent":
        from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "compaction-reader",
                      "enable.auto.commit": False, "enable.partition.eof": True})
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.time() + 60
        while time.time() < deadline:
            m = c.poll(1.0)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191:  # _PARTITION_EOF
                    break
                raise SystemExit(f"consume error: {m.error()}")
            out.append(f"{m.offset()}\t{text(m.key())}\t{text(m.value())}")
        c.close()
    else:
        from kafka import KafkaConsumer, TopicPartition
        c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        end = c.end_offsets([tp])[tp]
        deadline = time.time() + 60
        while c.position(tp) < end and time.time() < deadline:
            for records in c.poll(timeout_ms=1000).values():
                for r in records:
                    out.append(f"{r.offset}\t{text(r.key)}\t{text(r.value)}")
        c.close()
    sys.stdout.write("".join(line + "\n" for line in out))


def committed(lib, bootstrap, topic, partitions, *groups):
    parts = range(int(partitions))
    for group in groups:
        if lib == "confluent":
            from confluent_kafka import Consumer, TopicPartition
            c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                          "enable.auto.commit": False})
            for tp in c.committed([TopicPartition(topic, p) for p in parts], timeout=TIMEOUT):
                print(f"{group}\t{tp.partition}\t{tp.offset if tp.offset >= 0 else -1}")
            c.close()
        else:
            from kafka import KafkaConsumer, TopicPartition
            c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                              enable_auto_commit=False)
            for p in parts:
                offset = c.committed(TopicPartition(topic, p))
                print(f"{group}\t{p}\t{-1 if offset is None else offset}")
            c.close()


def alter_broker_default(bootstrap, name, value):
    from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,
                                       ConfigResource, ResourceType)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ResourceType.BROKER, "0", incremental_configs=[
        ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)])
    try:
        admin.incremental_alter_configs([resource])[resource].result(timeout=TIMEOUT)
        print("ok")
    except Exception as e:
        err = e.args[0] if e.args else e
        name = err.name() if hasattr(err, "name") else type(e).__name__
        msg = err.str() if hasattr(err, "str") else str(e)
        print(f"error\t{name}\t{msg}")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    commands = {
        "create": create,
        "produce": produce,
        "produce-keyless": produce_keyless,
        "consume": consume,
        "committed": committed,
        "alter-broker-default": alter_broker_default,
    }
    commands[command](*args)
