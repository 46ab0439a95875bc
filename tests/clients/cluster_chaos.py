#!/usr/bin/env python3
"""Clients for the cluster fault tests (confluent-kafka, librdkafka). Each runs until its time is
up or a stop file appears, so the test that starts it controls the faults meanwhile.

  produce BOOTSTRAP TOPIC SECONDS ACKED_FILE STOP_FILE [RATE]
      idempotent producer, acks=all, values "v<seq>" keyed over 32 keys (so every partition gets
      records); writes "partition<TAB>offset<TAB>value<TAB>unix time" for every acknowledged
      record (line-buffered, so the test can follow it while it runs); at most RATE records a
      second when given (so a small machine keeps up during faults); prints
      "acked<TAB>N<TAB>failed<TAB>M" at the end
  group-consume BOOTSTRAP TOPIC GROUP SECONDS SEEN_FILE STOP_FILE
      a consumer in GROUP (auto commit); writes "partition<TAB>offset<TAB>value<TAB>unix time"
      for every record it receives (line-buffered); prints "consumed<TAB>N"
  verify BOOTSTRAP TOPIC ACKED_FILE [SEEN_FILE]
      reads every partition of TOPIC from its start to its end and checks: every acknowledged
      value is present exactly once, at the offset it was acknowledged at, and per partition
      acknowledged values appear in the order they were produced; with SEEN_FILE also that the
      group consumer saw every acknowledged value. Prints "ok<TAB>acked<TAB>N<TAB>read<TAB>M" or
      "fail<TAB>reason" lines
"""
import os
import sys
import time


def stop_requested(deadline, stop_file):
    return time.time() >= deadline or os.path.exists(stop_file)


def produce(bootstrap, topic, seconds, acked_file, stop_file, rate=None):
    from confluent_kafka import Producer
    p = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 120000,
        "retry.backoff.ms": 100,
        "topic.metadata.refresh.interval.ms": 1000,
    })
    acked = 0
    failed = 0
    out = open(acked_file, "w", buffering=1)

    def delivered(err, msg):
        nonlocal acked, failed
        if err is not None:
            failed += 1
            print(f"delivery-error\t{err}", file=sys.stderr)
            return
        acked += 1
        out.write(f"{msg.partition()}\t{msg.offset()}\t{msg.value().decode()}\t{time.time():.3f}\n")

    start = time.time()
    deadline = start + float(seconds)
    rate = float(rate) if rate is not None else None
    seq = 0
    while not stop_requested(deadline, stop_file):
        if rate is not None and seq >= (time.time() - start) * rate:
            p.poll(0.01)
            continue
        try:
            p.produce(topic, key=str(seq % 32).encode(), value=f"v{seq}".encode(),
                      on_delivery=delivered)
            seq += 1
        except BufferError:
            p.poll(0.05)
            continue
        if seq % 100 == 0:
            p.poll(0)
            time.sleep(0.01)
    remaining = p.flush(180)
    out.close()
    print(f"acked\t{acked}\tfailed\t{failed}\tunflushed\t{remaining}\tproduced\t{seq}")


def group_consume(bootstrap, topic, group, seconds, seen_file, stop_file):
    from confluent_kafka import Consumer
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 500,
        "session.timeout.ms": 10000,
        "topic.metadata.refresh.interval.ms": 1000,
    })
    c.subscribe([topic])
    n = 0
    deadline = time.time() + float(seconds)
    with open(seen_file, "w", buffering=1) as out:
        while not stop_requested(deadline, stop_file):
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                print(f"consume-error\t{m.error()}", file=sys.stderr)
                continue
            n += 1
            out.write(f"{m.partition()}\t{m.offset()}\t{m.value().decode()}\t{time.time():.3f}\n")
    c.close()
    print(f"consumed\t{n}")


def read_all(bootstrap, topic):
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "verify-unused",
        "enable.auto.commit": False,
    })
    md = c.list_topics(topic, timeout=30)
    partitions = sorted(md.topics[topic].partitions)
    records = {}
    for p in partitions:
        low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        got = []
        if high > low:
            c.assign([TopicPartition(topic, p, low)])
            deadline = time.time() + 60
            while time.time() < deadline:
                m = c.poll(1.0)
                if m is None or m.error():
                    continue
                got.append((m.offset(), m.value().decode()))
                if m.offset() >= high - 1:
                    break
        records[p] = got
    c.close()
    return records


def verify(bootstrap, topic, acked_file, seen_file=None):
    acked = {}
    for line in open(acked_file):
        p, off, value = line.rstrip("\n").split("\t")[:3]
        acked[value] = (int(p), int(off))
    records = read_all(bootstrap, topic)
    failures = []
    where = {}
    total = 0
    for p, got in records.items():
        last_seq = -1
        for off, value in got:
            total += 1
            if value in where:
                failures.append(f"duplicate {value} at {p}/{off} and {where[value]}")
            where[value] = (p, off)
            if value in acked:
                seq = int(value[1:])
                if seq < last_seq:
                    failures.append(f"out of order in partition {p}: {value} after v{last_seq}")
                last_seq = max(last_seq, seq)
    for value, (p, off) in acked.items():
        if value not in where:
            failures.append(f"lost acknowledged {value} ({p}/{off})")
        elif where[value] != (p, off):
            failures.append(f"{value} acknowledged at {p}/{off} but found at {where[value]}")
    if seen_file is not None:
        seen = set(line.rstrip("\n").split("\t")[2] for line in open(seen_file) if line.strip())
        missing = [v for v in acked if v not in seen]
        if missing:
            failures.append(f"group consumer missed {len(missing)} acknowledged, e.g. {missing[:3]}")
    for f in failures[:20]:
        print(f"fail\t{f}")
    if not failures:
        print(f"ok\tacked\t{len(acked)}\tread\t{total}")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"produce": produce, "group-consume": group_consume, "verify": verify}[cmd](*args)


if __name__ == "__main__":
    main()
