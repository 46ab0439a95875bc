#!/usr/bin/env python3
"""kafka-python group scenarios driven from crates/ringbroker/tests/group_semantics.rs.

  close-together BOOTSTRAP TOPIC GROUP TOTAL
      Two consumers of GROUP (auto-commit on, but only on close: the interval is an hour)
      share TOPIC; once both hold partitions, TOTAL keyed records are produced; once they
      have read them between them, the first closes (it
      commits, then leaves: the group starts a rebalance) and the second closes right after
      (its final commit carries the generation the rebalance has not replaced yet). Prints
      "read<TAB>A<TAB>B" and, per consumer, "close<TAB>NAME<TAB>ok|error text".
  read-group BOOTSTRAP TOPIC GROUP SECONDS
      A fresh consumer of GROUP reads for SECONDS from the committed offsets and prints
      "read<TAB>N".
  committed BOOTSTRAP GROUP
      KafkaAdminClient.list_group_offsets: "topic<TAB>partition<TAB>offset" lines.
"""
import logging
import sys
import threading
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer


class CommitErrors(logging.Handler):
    """Collects kafka-python's log lines about failed offset commits (close() logs them),
    from the moment `armed` is set: commits while the group first forms carry no consumed
    records (and fail client-side when a heartbeat saw the rebalance first)."""

    def __init__(self, armed):
        super().__init__(logging.INFO)
        self.armed = armed
        self.lines = []

    def emit(self, record):
        text = record.getMessage()
        if self.armed.is_set() and "ommit" in text and "fail" in text.lower():
            self.lines.append(f"{record.levelname} {text}")


def consumer(bootstrap, group):
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=True,
        auto_commit_interval_ms=3_600_000,
        auto_offset_reset="earliest",
        session_timeout_ms=10000,
        heartbeat_interval_ms=500,
    )


def close_together(bootstrap, topic, group, total):
    total = int(total)
    produced = threading.Event()
    errors = CommitErrors(produced)
    logging.getLogger("kafka").addHandler(errors)
    logging.getLogger("kafka").setLevel(logging.INFO)
    trace = []

    class Trace(logging.Handler):
        def emit(self, record):
            if "need_rejoin" in record.getMessage():
                return
            trace.append(f"{record.created:.3f} {record.threadName} {record.name} {record.getMessage()}")

    logging.getLogger("kafka.coordinator").addHandler(Trace(logging.DEBUG))
    logging.getLogger("kafka.coordinator").setLevel(logging.DEBUG)
    counts = {"a": 0, "b": 0}
    assigned = {"a": False, "b": False}
    lock = threading.Lock()
    done = threading.Event()
    a_closed = threading.Event()
    results = {}

    def run(name):
        c = consumer(bootstrap, group)
        c.subscribe([topic])
        deadline = time.time() + 180
        while time.time() < deadline:
            # Long enough for a whole join and sync: kafka-python 3.0.12 can lose a SyncGroup
            # answer that arrives after poll() gave up waiting, and then never rejoins.
            batch = c.poll(timeout_ms=1000)
            with lock:
                counts[name] += sum(len(r) for r in batch.values())
                assigned[name] = bool(c.assignment())
                if produced.is_set() and sum(counts.values()) >= total:
                    done.set()
            if done.is_set():
                break
        if name == "b":
            a_closed.wait(30)
        try:
            c.close()
            results[name] = "ok"
        except Exception as e:  # noqa: BLE001 - reported to the test
            results[name] = f"error {e!r}"
        if name == "a":
            a_closed.set()

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    # Both hold partitions (and kept them for a second: the group is stable) before anything
    # is there to read, so each reads and commits only its own partitions.
    stable_since = None
    deadline = time.time() + 120
    while True:
        if time.time() > deadline:
            print("never-stable")
            for line in trace:
                print(f"trace\t{line}")
            break
        with lock:
            both = all(assigned.values())
        if not both:
            stable_since = None
        elif stable_since is None:
            stable_since = time.time()
        elif time.time() - stable_since > 1.0:
            break
        time.sleep(0.05)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(total):
        producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
    producer.flush()
    producer.close()
    produced.set()
    for t in threads:
        t.join()
    print(f"read\t{counts['a']}\t{counts['b']}")
    for name in ("a", "b"):
        print(f"close\t{name}\t{results.get(name)}")
    for line in errors.lines:
        print(f"log\t{line}")


def read_group(bootstrap, topic, group, seconds):
    c = consumer(bootstrap, group)
    c.subscribe([topic])
    n = 0
    deadline = time.time() + float(seconds)
    while time.time() < deadline:
        n += sum(len(r) for r in c.poll(timeout_ms=200).values())
    c.close(autocommit=False)
    print(f"read\t{n}")


def committed(bootstrap, group):
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    offsets = admin.list_group_offsets({group: None})
    if isinstance(offsets, dict) and group in offsets:
        offsets = offsets[group]
    for tp, om in sorted(offsets.items()):
        print(f"{tp.topic}\t{tp.partition}\t{om.offset}")
    admin.close()


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"close-together": close_together, "read-group": read_group, "committed": committed}[command](*args)
