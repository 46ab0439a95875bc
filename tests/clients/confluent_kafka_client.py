#!/usr/bin/env python3
"""confluent-kafka (the recent librdkafka shipped in PyPI's wheel) driven from the tests.

  produce BOOTSTRAP TOPIC COMPRESSION [idempotent]
                                        "key<TAB>value" lines on stdin, keyed, acks=all
                                        (enable.idempotence=true with "idempotent");
                                        prints "acked<TAB>N"
  produce-until-killed BOOTSTRAP TOPIC PREFIX ACKED_FILE
                                        produce "PREFIX-i" values (acks=all) until killed; every
                                        acknowledged record is appended to ACKED_FILE as
                                        "partition<TAB>offset<TAB>key<TAB>value", flushed at once
  group-consume BOOTSTRAP TOPIC GROUP COUNT
                                        subscribe() in GROUP until COUNT records arrived, commit,
                                        print "partition<TAB>offset<TAB>value" per record
  consume BOOTSTRAP TOPIC PARTITIONS    "partition<TAB>offset<TAB>key<TAB>value" for every
                                        record from the start to the end offsets (assign, no group)
"""
import sys

from confluent_kafka import Consumer, Producer, TopicPartition


def produce(bootstrap, topic, compression, mode="plain"):
    p = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "compression.type": compression,
        "linger.ms": 5,
        "enable.idempotence": mode == "idempotent",
    })
    acked = [0]
    failed = []

    def report(err, _msg):
        if err is None:
            acked[0] += 1
        else:
            failed.append(str(err))

    for line in sys.stdin:
        key, value = line.rstrip("\n").split("\t", 1)
        while True:
            try:
                p.produce(topic, key=key.encode(), value=value.encode(), on_delivery=report)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    remaining = p.flush(60)
    if failed or remaining:
        raise SystemExit(f"delivery failed: {failed[:3]} remaining={remaining}")
    print(f"acked\t{acked[0]}")


def produce_until_killed(bootstrap, topic, prefix, acked_file):
    p = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 1,
        "enable.idempotence": False,
        "retries": 0,
    })
    out = open(acked_file, "a", buffering=1)

    def report(err, msg):
        if err is None:
            out.write(f"{msg.partition()}\t{msg.offset()}\t{msg.key().decode()}\t{msg.value().decode()}\n")
            out.flush()

    i = 0
    while True:
        try:
            p.produce(topic, key=f"{prefix}-k{i}".encode(), value=f"{prefix}-value-{i}".encode(), on_delivery=report)
            i += 1
        except BufferError:
            pass
        p.poll(0.0005 if i % 50 else 0.01)


def group_consume(bootstrap, topic, group, count):
    import time
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    c.subscribe([topic])
    out = []
    deadline = time.time() + 60
    while len(out) < int(count) and time.time() < deadline:
        m = c.poll(1.0)
        if m is None or m.error():
            continue
        out.append(f"{m.partition()}\t{m.offset()}\t{m.value().decode()}")
    c.commit(asynchronous=False)
    c.close()
    sys.stdout.write("".join(line + "\n" for line in out))


def consume(bootstrap, topic, partitions):
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "unused-assign-only",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    parts = [TopicPartition(topic, p, 0) for p in range(int(partitions))]
    ends = {p.partition: c.get_watermark_offsets(p, timeout=10)[1] for p in parts}
    c.assign(parts)
    done = {p for p, end in ends.items() if end == 0}
    out = []
    while len(done) < len(parts):
        m = c.poll(5)
        if m is None:
            continue
        if m.error():
            if m.error().code() == -191:  # _PARTITION_EOF
                if m.offset() >= ends[m.partition()]:
                    done.add(m.partition())
                continue
            raise SystemExit(f"consume error: {m.error()}")
        out.append(f"{m.partition()}\t{m.offset()}\t{m.key().decode()}\t{m.value().decode()}")
    c.close()
    sys.stdout.write("".join(line + "\n" for line in out))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    commands = {
        "produce": produce,
        "produce-until-killed": produce_until_killed,
        "group-consume": group_consume,
        "consume": consume,
    }
    commands[command](*args)
