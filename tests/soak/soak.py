#!/usr/bin/env python3
"""Soak test: tries to break a ringbroker on loopback for a bounded time, then checks what it kept.

Starts `ringbroker serve` on fixed free loopback ports with its own data dir and runs, at once:
  - idempotent acks=all producers (confluent-kafka, enable.idempotence=true) writing records
    with unique values "P<producer>:<incarnation>:<sequence>", remembering every acknowledged
    one with its partition and offset;
  - raw idempotent producers (InitProducerId, Produce v3) with one request in flight that
    resend a request whose answer a kill lost as soon as the restarted broker accepts;
  - consumers in one group (subscribe, synchronous commits every second), remembering every
    acknowledged commit; an observer reads the group's committed offsets every second, and a
    raw OffsetFetch every 20 ms while a restarted broker starts up;
  - hostile clients: abrupt disconnects mid-request, garbage frames, the largest legal fetch
    sizes (raw Fetch and a librdkafka consumer) on a partition larger than 256 MiB, readers that
    send Fetch and never read, connection floods, idle HTTP connections on the metrics port;
  - a health prober: every second GET /health and a Kafka ApiVersions round trip, each with a
    timeout, on new connections;
  - a killer: SIGKILL at seeded random moments, restart on the same data dir and ports.
At the end: load stops, the broker is stopped with SIGTERM (must exit 0) and started again,
every partition is read from offset 0, and it checks
  - every acknowledged record is present exactly once, at its acknowledged partition and
    offset; no value appears twice; per producer incarnation and partition, sequences increase;
    offsets are contiguous from 0;
  - committed offsets never moved backwards (observer), never fell below a commit that was
    acknowledged before the observation, and survived the restarts;
  - no probe saw the broker unresponsive while it was up (from its first 200 on /health until
    the kill), no broker exit we did not cause, no panic in its log.
Prints one summary line `soak: records_acknowledged=... anomalies=N` and exits 1 when N > 0.
Everything is loopback-only, bounded in count and time; a watchdog ends the run (and the broker)
after --hard-timeout seconds whatever happens.
"""
import argparse
import collections
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TOPIC = "soak"
BIG_TOPIC = "soak-big"
HOSTILE_TOPIC = "soak-hostile"
GROUP = "soak-group"
# librdkafka's largest legal values (CONFIGURATION.md ranges): fetch.max.bytes and
# max.partition.fetch.bytes; receive.message.max.bytes must be above fetch.max.bytes + 512.
FETCH_BYTES_MAX_LEGAL = 2147483135
PARTITION_FETCH_BYTES_MAX_LEGAL = 1000000000
RECEIVE_MESSAGE_BYTES_MAX_LEGAL = 2147483647

T0 = time.monotonic()
# librdkafka logs every refused connection during restarts; the driver reports what matters.
QUIET = {"log_level": 0}


def log(msg):
    sys.stdout.write(f"[{time.monotonic() - T0:7.1f}s] {msg}\n")
    sys.stdout.flush()


class Stats:
    """Counters and anomalies shared by every thread (guarded by one lock)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.anomalies = []
        self.notes = []

    def add(self, name, n=1):
        with self.lock:
            self.counts[name] += n

    def anomaly(self, text):
        with self.lock:
            self.anomalies.append(text)
        log(f"ANOMALY: {text}")

    def note(self, text):
        with self.lock:
            self.notes.append(text)
        log(f"note: {text}")


STATS = Stats()


# ---------------------------------------------------------------- Kafka wire encoding (raw clients)

def str16(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def frame(api_key, version, correlation_id, body, client_id="soak-hostile"):
    payload = struct.pack(">hhi", api_key, version, correlation_id) + str16(client_id) + body
    return struct.pack(">i", len(payload)) + payload


def api_versions_request(correlation_id, version=0):
    return frame(18, version, correlation_id, b"")


def fetch_request(correlation_id, topic, partition, offset, max_bytes, partition_max_bytes, max_wait_ms=0):
    """Fetch v4 (header v1): replica_id, max_wait, min_bytes, max_bytes, isolation, topics."""
    body = struct.pack(">iiiib", -1, max_wait_ms, 1, max_bytes, 0)
    body += struct.pack(">i", 1) + str16(topic) + struct.pack(">i", 1)
    body += struct.pack(">iqi", partition, offset, partition_max_bytes)
    return frame(1, 4, correlation_id, body)


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def varint(n):
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        if z < 0x80:
            out.append(z)
            return bytes(out)
        out.append((z & 0x7F) | 0x80)
        z >>= 7


def record_batch(values, producer_id=-1, epoch=-1, base_sequence=-1):
    """A valid uncompressed RecordBatch v2 holding `values` (idempotent with a producer id)."""
    now = int(time.time() * 1000)
    records = b""
    for i, v in enumerate(values):
        body = b"\x00" + varint(0) + varint(i) + varint(-1) + varint(len(v)) + v + varint(0)
        records += varint(len(body)) + body
    after_crc = struct.pack(">hiqqqhii", 0, len(values) - 1, now, now, producer_id, epoch, base_sequence,
                            len(values)) + records
    after_length = struct.pack(">ib", 0, 2) + struct.pack(">I", crc32c(after_crc)) + after_crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


def produce_request(correlation_id, topic, partition, batch, acks=-1):
    """Produce v3: transactional_id (null), acks, timeout, topics."""
    body = struct.pack(">hhi", -1, acks, 10000)
    body += struct.pack(">i", 1) + str16(topic) + struct.pack(">i", 1)
    body += struct.pack(">i", partition) + struct.pack(">i", len(batch)) + batch
    return frame(0, 3, correlation_id, body)


def offset_fetch_request(correlation_id, group, topic, partitions):
    """OffsetFetch v1: group, topics [name, partitions]."""
    body = str16(group) + struct.pack(">i", 1) + str16(topic) + struct.pack(">i", len(partitions))
    body += b"".join(struct.pack(">i", p) for p in partitions)
    return frame(9, 1, correlation_id, body)


def parse_offset_fetch_v1(body):
    """{partition: (committed offset, error code)} from an OffsetFetch v1 response body
    (after the correlation id)."""
    out = {}
    at = 0
    (topics,) = struct.unpack_from(">i", body, at)
    at += 4
    for _ in range(topics):
        (name_len,) = struct.unpack_from(">h", body, at)
        at += 2 + max(0, name_len)
        (parts,) = struct.unpack_from(">i", body, at)
        at += 4
        for _ in range(parts):
            p, off, meta_len = struct.unpack_from(">iqh", body, at)
            at += 14 + max(0, meta_len)
            (err,) = struct.unpack_from(">h", body, at)
            at += 2
            out[p] = (off, err)
    return out


def init_producer_id_request(correlation_id):
    """InitProducerId v0: no transactional id, transaction timeout."""
    return frame(22, 0, correlation_id, struct.pack(">hi", -1, 60000))


def parse_produce_v3(body):
    """(error code, base offset) of the one partition of a Produce v3 response body."""
    at = 4  # topics count
    (name_len,) = struct.unpack_from(">h", body, at)
    at += 2 + name_len + 4  # name, partitions count
    _, err, base, _ = struct.unpack_from(">ihqq", body, at)
    return err, base


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def reset_close(sock):
    """Close with RST (SO_LINGER 0): an abrupt disconnect."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


# ---------------------------------------------------------------- the broker under test

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_get(addr, path, timeout):
    """(status, body) of a GET on a new connection; raises on timeout or error."""
    host, port = addr
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split()
    if len(parts) < 2:
        raise ConnectionError(f"bad HTTP answer {data[:60]!r}")
    return int(parts[1]), body


def api_versions_round_trip(addr, timeout):
    with socket.create_connection(addr, timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(api_versions_request(7))
        (size,) = struct.unpack(">i", recv_exact(s, 4))
        body = recv_exact(s, size)
        corr, err = struct.unpack(">ih", body[:6])
        if corr != 7 or err != 0:
            raise ConnectionError(f"ApiVersions answered correlation {corr} error {err}")


class Broker:
    """One broker process at a time on fixed ports; `gen` counts starts, `state` is
    starting | up | down. Only the killer (and the final phase) start and stop it."""

    def __init__(self, args, data_dir, log_path):
        self.args = args
        self.data_dir = data_dir
        self.log_path = log_path
        self.kafka_addr = ("127.0.0.1", free_port())
        self.metrics_addr = ("127.0.0.1", free_port())
        self.bootstrap = f"{self.kafka_addr[0]}:{self.kafka_addr[1]}"
        self.lock = threading.Lock()
        self.proc = None
        self.gen = 0
        self.state = "down"
        self.spawned_at = 0.0
        self.up_at = 0.0
        self.expected_exit = True

    def snapshot(self):
        with self.lock:
            return self.gen, self.state

    def start(self, wait_s=90.0):
        """Starts the broker and waits for /health 200; returns the seconds that took."""
        started = time.monotonic()
        proc = self.spawn()
        deadline = started + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"broker exited with {proc.returncode} while starting (log {self.log_path})")
            try:
                status, _ = http_get(self.metrics_addr, "/health", 1.0)
                if status == 200:
                    with self.lock:
                        self.state = "up"
                        self.up_at = time.monotonic()
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"broker did not answer /health within {wait_s:.0f} s (log {self.log_path})")

    def spawn(self):
        cmd = [
            self.args.broker, "serve",
            "--listen", self.bootstrap,
            "--metrics-listen", f"{self.metrics_addr[0]}:{self.metrics_addr[1]}",
            "--data-dir", self.data_dir,
            "--cores", self.args.cores,
            "--auto-create-topics", "false",
        ]
        logf = open(self.log_path, "ab")
        logf.write(f"\n===== soak: start #{self.gen + 1} at {time.monotonic() - T0:.1f}s =====\n".encode())
        logf.flush()
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=logf, env=env)
        logf.close()
        with self.lock:
            self.proc = proc
            self.gen += 1
            self.state = "starting"
            self.expected_exit = False
            self.spawned_at = time.monotonic()
        return proc

    def kill9(self):
        with self.lock:
            self.state = "down"
            self.expected_exit = True
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def stop(self, wait_s=30.0):
        """SIGTERM and wait; returns the exit code (None if it had to be killed)."""
        with self.lock:
            self.state = "down"
            self.expected_exit = True
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else 0
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None

    def unexpected_exit(self):
        """The exit code if the process ended while we did not stop it (reported once)."""
        with self.lock:
            if self.proc is None or self.expected_exit:
                return None
            code = self.proc.poll()
            if code is None:
                return None
            self.expected_exit = True
            self.state = "down"
            return code


# ---------------------------------------------------------------- load: producers

class ProducerLoad:
    def __init__(self, broker, stop, args, idx):
        self.broker, self.stop, self.args, self.idx = broker, stop, args, idx
        self.acked = {}  # value -> (partition, offset)
        self.sent = 0
        self.failed = collections.Counter()
        self.incarnations = 0
        self.unacked_at_end = 0

    def run(self):
        filler = "x" * max(0, self.args.record_bytes - 24)
        per_tick = max(1, self.args.rate // 50)
        incarnation = 0
        while not self.stop.is_set():
            fatal = []
            reasons = []

            def on_error(err, fatal=fatal, reasons=reasons):
                if err.fatal():
                    fatal.append(str(err))
                    reasons.append(f"{err.name()}: {err.str()}")

            p = Producer({
                "bootstrap.servers": self.broker.bootstrap, **QUIET,
                "client.id": f"soak-producer-{self.idx}",
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 180000,
                "reconnect.backoff.ms": 50,
                "reconnect.backoff.max.ms": 500,
                "error_cb": on_error,
            })
            self.incarnations += 1
            seq = 0
            next_tick = time.monotonic()
            while not self.stop.is_set() and not fatal:
                for _ in range(per_tick):
                    value = f"P{self.idx}:{incarnation}:{seq}:{filler}"
                    partition = seq % self.args.partitions
                    try:
                        p.produce(TOPIC, value=value.encode(), partition=partition, on_delivery=self.on_delivery)
                    except BufferError:
                        break
                    except (KafkaException, SystemError) as e:
                        fatal.append(str(e))
                        break
                    seq += 1
                    self.sent += 1
                try:
                    p.poll(0)
                except (KafkaException, SystemError) as e:
                    fatal.append(str(e))
                next_tick += 0.02
                delay = next_tick - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_tick = time.monotonic()
            if fatal:
                try:
                    p.poll(0)  # serves error_cb, which names the cause
                except (KafkaException, SystemError) as e:
                    fatal.append(str(e))
                named = [r for r in reasons + fatal if "Local: Fatal error" not in r]
                reason = (named or fatal)[0]
                cause = re.search(r"code=(\w+)", reason)
                STATS.add(f"producer_fatal:{cause.group(1) if cause else reason.split(':')[0]}")
                STATS.note(f"producer {self.idx} incarnation {incarnation}: fatal error {reason[:300]}; recreated")
                STATS.add("producer_fatal_errors")
                try:
                    p.purge()
                    p.flush(10)
                except Exception:  # KafkaException, or SystemError wrapping one from a callback
                    pass
                incarnation += 1
                continue
            try:
                self.unacked_at_end += p.flush(30)
            except Exception as e:  # KafkaException, or SystemError wrapping one from a callback
                STATS.note(f"producer {self.idx} incarnation {incarnation}: fatal error at the final flush {e}")
                STATS.add("producer_fatal_errors")
                self.unacked_at_end += len(p)
            return

    def on_delivery(self, err, msg):
        if err is None:
            self.acked[msg.value().decode()] = (msg.partition(), msg.offset())
        else:
            self.failed[err.name()] += 1


class ReplayProducer:
    """A raw idempotent producer (InitProducerId, then Produce v3 acks=-1 with producer id,
    epoch and sequence), one request in flight. A request whose answer is lost (the broker was
    killed) is sent again unchanged as soon as a connection is accepted, every 10 ms, so the
    retry lands while the restarted broker is still starting up: it must be answered as a
    duplicate (or appended once if the first copy was not written), never written twice.
    Values "R<idx>:<incarnation>:<seq>:" join the soak topic's checks."""

    # Answers after which the same producer may not go on (a new producer id is taken).
    FATAL = {45: "OUT_OF_ORDER_SEQUENCE_NUMBER", 47: "INVALID_PRODUCER_EPOCH", 59: "UNKNOWN_PRODUCER_ID"}

    def __init__(self, broker, stop, args, idx):
        self.broker, self.stop, self.args, self.idx = broker, stop, args, idx
        self.acked = {}
        self.sent = 0
        self.failed = collections.Counter()
        self.incarnations = 0
        self.unacked_at_end = 0
        self.retries_after_loss = 0
        self.duplicates_answered = 0

    def run(self):
        conn = None
        producer = None  # (id, epoch)
        next_seq = {}
        seq = 0
        pending = None  # (partition, values, request)
        corr = 0
        while not self.stop.is_set():
            if conn is None:
                try:
                    conn = socket.create_connection(self.broker.kafka_addr, timeout=0.5)
                    conn.settimeout(15.0)
                except OSError:
                    self.stop.wait(0.01)
                    continue
            try:
                if producer is None:
                    corr += 1
                    conn.sendall(init_producer_id_request(corr))
                    (size,) = struct.unpack(">i", recv_exact(conn, 4))
                    body = recv_exact(conn, size)
                    _, err, pid, epoch = struct.unpack_from(">ihqh", body, 4)
                    if err != 0:
                        self.failed[f"InitProducerId error {err}"] += 1
                        self.stop.wait(0.1)
                        continue
                    producer = (pid, epoch)
                    self.incarnations += 1
                    next_seq = {}
                if pending is None:
                    p = seq % self.args.partitions
                    n = 1 + seq % 3
                    values = [f"R{self.idx}:{self.incarnations - 1}:{seq + i}:".encode() for i in range(n)]
                    seq += n
                    batch = record_batch(values, producer[0], producer[1], next_seq.get(p, 0))
                    pending = (p, values, batch)
                    self.sent += n
                p, values, batch = pending
                corr += 1
                conn.sendall(produce_request(corr, TOPIC, p, batch, acks=-1))
                (size,) = struct.unpack(">i", recv_exact(conn, 4))
                body = recv_exact(conn, size)
                err, base = parse_produce_v3(body[4:])
            except (OSError, struct.error):
                conn.close()
                conn = None
                if pending is not None:
                    self.retries_after_loss += 1
                continue
            if err in (0, 46):  # NONE, DUPLICATE_SEQUENCE_NUMBER
                if err == 46:
                    self.duplicates_answered += 1
                for i, v in enumerate(values):
                    self.acked[v.decode()] = (p, base + i if err == 0 else -1)
                next_seq[p] = next_seq.get(p, 0) + len(values)
                pending = None
                self.stop.wait(0.02)
            elif err in self.FATAL:
                STATS.add(f"producer_fatal:{self.FATAL[err]}")
                STATS.add("producer_fatal_errors")
                STATS.note(f"replay producer {self.idx} id {producer[0]}: {self.FATAL[err]} for a batch "
                           f"of sequence {next_seq.get(p, 0)} on {TOPIC}-{p}; new producer id")
                self.failed[self.FATAL[err]] += 1
                producer = None
                pending = None
            else:
                self.failed[f"error {err}"] += 1
                self.stop.wait(0.1)
        if conn is not None:
            conn.close()
        if pending is not None:
            self.unacked_at_end += len(pending[1])


# ---------------------------------------------------------------- load: consumers in a group

class ConsumerLoad:
    def __init__(self, broker, stop, args, idx, commits):
        self.broker, self.stop, self.args, self.idx = broker, stop, args, idx
        self.commits = commits  # shared list of (ack time, partition, offset)
        self.consumed = 0
        self.seen = {}  # (partition, offset) -> value read by a consumer
        self.commit_errors = collections.Counter()

    def run(self):
        c = Consumer({
            "bootstrap.servers": self.broker.bootstrap, **QUIET,
            "group.id": GROUP,
            "client.id": f"soak-consumer-{self.idx}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 1000,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
            "error_cb": lambda err: None,
        })
        c.subscribe([TOPIC])
        last_commit = time.monotonic()
        try:
            while not self.stop.is_set():
                for m in c.consume(500, 0.5):
                    if m.error():
                        continue
                    self.consumed += 1
                    self.seen[(m.partition(), m.offset())] = hash(m.value())
                if time.monotonic() - last_commit >= 1.0:
                    last_commit = time.monotonic()
                    self.commit(c)
            self.commit(c)
        finally:
            c.close()

    def commit(self, c):
        try:
            result = c.commit(asynchronous=False)
        except (KafkaException, SystemError) as e:
            kafka_error = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
            self.commit_errors[kafka_error.name() if kafka_error else type(e).__name__] += 1
            return
        now = time.monotonic()
        for tp in result or []:
            if tp.error is None and tp.offset >= 0:
                self.commits.append((now, tp.partition, tp.offset))
            elif tp.error is not None:
                self.commit_errors[tp.error.name()] += 1


class CommitObserver:
    """Reads the group's committed offsets every second (OffsetFetch, no membership): they must
    never move backwards, nor be below a commit acknowledged before the read began."""

    def __init__(self, broker, stop, args, commits):
        self.broker, self.stop, self.args, self.commits = broker, stop, args, commits
        self.observed = {}  # partition -> last observed committed offset
        self.reads = 0

    def acked_floor(self, before):
        floor = {}
        for t, p, off in list(self.commits):
            if t < before:
                floor[p] = max(floor.get(p, -1), off)
        return floor

    def run(self):
        c = Consumer({
            "bootstrap.servers": self.broker.bootstrap, **QUIET,
            "group.id": GROUP,
            "client.id": "soak-commit-observer",
            "enable.auto.commit": False,
            "reconnect.backoff.max.ms": 500,
            "error_cb": lambda err: None,
        })
        try:
            while not self.stop.wait(1.0):
                self.check(c)
        finally:
            c.close()

    def check(self, c):
        started = time.monotonic()
        try:
            result = c.committed([TopicPartition(TOPIC, p) for p in range(self.args.partitions)], timeout=5)
        except (KafkaException, SystemError):
            return False
        floor = self.acked_floor(started)
        self.reads += 1
        gen, state = self.broker.snapshot()
        when = f"(read at {started - T0:.1f}s, broker start #{gen} {state})"
        problems = []
        for tp in result:
            if tp.error is not None:
                continue
            p, off = tp.partition, tp.offset
            prev = self.observed.get(p)
            if off < 0 and prev is None:
                continue
            if prev is not None and off < prev:
                problems.append(f"{TOPIC}-{p} moved backwards {prev} -> {off}")
            if off < floor.get(p, -1):
                problems.append(f"{TOPIC}-{p} is {off}, below the acknowledged commit of {floor[p]}")
            self.observed[p] = max(off, prev if prev is not None else off)
        if problems:
            STATS.anomaly(f"committed offsets read {when}: {'; '.join(problems)}")
        return True


class StartupOffsetReader:
    """From the moment a (re)started broker accepts connections until a second after its
    /health answers, reads the group's committed offsets with a raw OffsetFetch every 20 ms:
    an answer without error must never be below a commit acknowledged before the read (a
    broker that serves OffsetFetch before it has loaded its committed offsets answers
    "none", and a consumer joining then starts over from auto.offset.reset)."""

    def __init__(self, broker, stop, args, observer):
        self.broker, self.stop, self.args, self.observer = broker, stop, args, observer
        self.reads = 0
        self.reported = set()  # broker starts with an anomaly already reported

    def run(self):
        while not self.stop.wait(0.02):
            gen, state = self.broker.snapshot()
            if state == "starting" or (state == "up" and time.monotonic() - self.broker.up_at < 1.0):
                self.read_once(gen)

    def read_once(self, gen):
        started = time.monotonic()
        try:
            with socket.create_connection(self.broker.kafka_addr, timeout=0.5) as s:
                s.settimeout(2.0)
                s.sendall(offset_fetch_request(3, GROUP, TOPIC, list(range(self.args.partitions))))
                (size,) = struct.unpack(">i", recv_exact(s, 4))
                body = recv_exact(s, size)
        except OSError:
            return
        try:
            answer = parse_offset_fetch_v1(body[4:])
        except struct.error:
            STATS.anomaly(f"OffsetFetch v1 answer that does not parse: {body[:64]!r}")
            return
        self.reads += 1
        floor = self.observer.acked_floor(started)
        for p, (off, err) in sorted(answer.items()):
            if err == 0 and off < floor.get(p, -1) and gen not in self.reported:
                self.reported.add(gen)
                STATS.anomaly(
                    f"OffsetFetch {started - self.broker.spawned_at:.3f} s after start #{gen} answered "
                    f"committed offset {off} for {TOPIC}-{p} without error, below the acknowledged "
                    f"commit of {floor[p]} (offsets not loaded yet?)")


# ---------------------------------------------------------------- health prober

class Prober:
    """Every second: GET /health and an ApiVersions round trip, each on a new connection with
    `probe_timeout` seconds. A failure counts only when the broker was up (same start, state
    up) both before and after the probe; consecutive failures form one unresponsive period."""

    def __init__(self, broker, stop, args):
        self.broker, self.stop, self.args = broker, stop, args
        self.probes = 0
        self.counted = 0
        self.periods = []  # [start, end, first error]
        self.in_period = False
        self.latency_max_s = 0.0

    def run(self):
        next_at = time.monotonic()
        while not self.stop.is_set():
            next_at += 1.0
            self.probe_once()
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            else:
                next_at = time.monotonic()

    def probe_once(self):
        gen0, state0 = self.broker.snapshot()
        t = time.monotonic()
        errors = []
        try:
            status, _ = http_get(self.broker.metrics_addr, "/health", self.args.probe_timeout)
            if status != 200:
                errors.append(f"/health answered {status}")
        except OSError as e:
            errors.append(f"/health: {e!r}")
        t_http = time.monotonic() - t
        t2 = time.monotonic()
        try:
            api_versions_round_trip(self.broker.kafka_addr, self.args.probe_timeout)
        except (OSError, struct.error) as e:
            errors.append(f"ApiVersions: {e!r}")
        t_kafka = time.monotonic() - t2
        gen1, state1 = self.broker.snapshot()
        self.probes += 1
        if not (gen0 == gen1 and state0 == "up" and state1 == "up"):
            return
        self.counted += 1
        self.latency_max_s = max(self.latency_max_s, t_http, t_kafka)
        if errors:
            if not self.in_period:
                self.in_period = True
                self.periods.append([t - T0, time.monotonic() - T0, "; ".join(errors)])
                log(f"unresponsive while up: {'; '.join(errors)}")
            else:
                self.periods[-1][1] = time.monotonic() - T0
        else:
            self.in_period = False


# ---------------------------------------------------------------- hostile clients

class Hostile:
    """Each kind runs in its own thread until `stop`; `connections` counts the connections
    that the broker accepted."""

    def __init__(self, broker, stop, args, seed):
        self.broker, self.stop, self.args = broker, stop, args
        self.rng = random.Random(seed)
        self.connections = collections.Counter()
        self.big_fetch_bytes = 0
        self.big_fetch_answers = 0
        self.big_consumer_records = 0

    def connect(self, addr=None, rcvbuf=None, timeout=3.0):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(timeout)
        try:
            s.connect(addr or self.broker.kafka_addr)
        except OSError:
            s.close()
            return None
        return s

    def kinds(self):
        return [
            ("abrupt", self.abrupt_disconnects),
            ("garbage", self.garbage_frames),
            ("big-fetch", self.largest_fetch_raw),
            ("big-consumer", self.largest_fetch_consumer),
            ("never-read", self.readers_that_never_read),
            ("flood", self.connection_flood),
            ("idle-http", self.idle_http),
        ]

    def loop(self, name, action, pause_s):
        while not self.stop.is_set():
            try:
                action(name)
            except Exception as e:  # a hostile client's own failure is not the broker's
                STATS.add(f"hostile_client_errors:{name}:{type(e).__name__}")
            self.stop.wait(self.rng.uniform(*pause_s))

    def abrupt_disconnects(self, name):
        """Half a frame then RST; a size prefix cut short; a whole acks=-1 Produce then RST
        before the answer; a long-poll Fetch then close."""
        choice = self.rng.randrange(4)
        s = self.connect()
        if s is None:
            return
        self.connections[name] += 1
        if choice == 0:
            req = fetch_request(1, TOPIC, 0, 0, 1 << 20, 1 << 20)
            s.sendall(req[: self.rng.randrange(5, len(req))])
        elif choice == 1:
            s.sendall(api_versions_request(1)[: self.rng.randrange(1, 4)])
        elif choice == 2:
            batch = record_batch([f"hostile-{self.rng.random()}".encode()])
            s.sendall(produce_request(1, HOSTILE_TOPIC, 0, batch, acks=-1))
        else:
            s.sendall(fetch_request(1, TOPIC, self.rng.randrange(self.args.partitions), 1 << 40, 1 << 20, 1 << 20, 5000))
        time.sleep(self.rng.uniform(0, 0.05))
        reset_close(s)

    def garbage_frames(self, name):
        """Random bytes in a valid size prefix, negative and huge size prefixes, an unknown API
        key, an ApiVersions of an unknown version, a Produce whose batch CRC is wrong."""
        choice = self.rng.randrange(6)
        s = self.connect()
        if s is None:
            return
        self.connections[name] += 1
        try:
            if choice == 0:
                junk = self.rng.randbytes(self.rng.randrange(1, 4096))
                s.sendall(struct.pack(">i", len(junk)) + junk)
            elif choice == 1:
                s.sendall(struct.pack(">i", -self.rng.randrange(1, 1 << 31)) + b"\x00" * 16)
            elif choice == 2:
                s.sendall(struct.pack(">i", 0x7FFFFFFF) + self.rng.randbytes(1024))
            elif choice == 3:
                s.sendall(frame(999, 0, 1, self.rng.randbytes(32)))
            elif choice == 4:
                s.sendall(api_versions_request(1, version=999))
            else:
                batch = bytearray(record_batch([b"bad-crc"]))
                batch[-1] ^= 0xFF
                s.sendall(produce_request(1, HOSTILE_TOPIC, 0, bytes(batch), acks=1))
            s.settimeout(2.0)
            try:
                s.recv(65536)
            except OSError:
                pass
        finally:
            s.close()

    def largest_fetch_raw(self, name):
        """A raw Fetch with the largest legal sizes on the big partition from offset 0; the
        answer is read and thrown away."""
        s = self.connect(timeout=60.0)
        if s is None:
            return
        self.connections[name] += 1
        try:
            s.sendall(fetch_request(1, BIG_TOPIC, 0, 0, FETCH_BYTES_MAX_LEGAL, PARTITION_FETCH_BYTES_MAX_LEGAL))
            (size,) = struct.unpack(">i", recv_exact(s, 4))
            left = size
            while left > 0:
                chunk = s.recv(min(left, 1 << 20))
                if not chunk:
                    raise ConnectionError("closed mid-answer")
                left -= len(chunk)
            self.big_fetch_bytes += size
            self.big_fetch_answers += 1
        finally:
            s.close()

    def largest_fetch_consumer(self, name):
        """librdkafka with fetch.max.bytes / max.partition.fetch.bytes at their largest legal
        values, reading the big partition from offset 0 for a few seconds."""
        c = Consumer({
            "bootstrap.servers": self.broker.bootstrap, **QUIET,
            "group.id": "soak-big-consumer",
            "enable.auto.commit": False,
            "fetch.max.bytes": FETCH_BYTES_MAX_LEGAL,
            "max.partition.fetch.bytes": PARTITION_FETCH_BYTES_MAX_LEGAL,
            "receive.message.max.bytes": RECEIVE_MESSAGE_BYTES_MAX_LEGAL,
            "error_cb": lambda err: None,
        })
        self.connections[name] += 1
        try:
            c.assign([TopicPartition(BIG_TOPIC, 0, 0)])
            until = time.monotonic() + 5
            while time.monotonic() < until and not self.stop.is_set():
                for m in c.consume(100, 0.5):
                    if not m.error():
                        self.big_consumer_records += 1
        finally:
            c.close()

    def readers_that_never_read(self, name):
        """A small receive buffer, three pipelined Fetches for lots of data, never a read;
        held a while, then closed."""
        socks = []
        for _ in range(3):
            s = self.connect(rcvbuf=4096)
            if s is None:
                continue
            self.connections[name] += 1
            topic, part = (BIG_TOPIC, 0) if self.args.big_mib > 0 else (TOPIC, 0)
            try:
                for i in range(3):
                    s.sendall(fetch_request(i + 1, topic, part, 0, 64 << 20, 32 << 20))
            except OSError:
                pass
            socks.append(s)
        self.stop.wait(self.rng.uniform(5, 15))
        for s in socks:
            reset_close(s)

    def connection_flood(self, name):
        """Opens `flood` connections at once (half of them send an ApiVersions), holds them a
        second, closes them."""
        socks = []
        for i in range(self.args.flood):
            s = self.connect(timeout=1.0)
            if s is None:
                continue
            self.connections[name] += 1
            if i % 2 == 0:
                try:
                    s.sendall(api_versions_request(i))
                except OSError:
                    pass
            socks.append(s)
        self.stop.wait(1.0)
        for s in socks:
            s.close()

    def idle_http(self, name):
        """Connections to the metrics port that send nothing (or half a request line) and are
        held for a few seconds."""
        socks = []
        for i in range(self.args.idle_http):
            s = self.connect(addr=self.broker.metrics_addr, timeout=1.0)
            if s is None:
                continue
            self.connections[name] += 1
            if i % 2:
                try:
                    s.sendall(b"GET /hea")
                except OSError:
                    pass
            socks.append(s)
        self.stop.wait(self.rng.uniform(3, 8))
        for s in socks:
            s.close()


# ---------------------------------------------------------------- setup, killer, final checks

def create_topics(broker, args):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, **QUIET})
    topics = [NewTopic(TOPIC, args.partitions, 1), NewTopic(HOSTILE_TOPIC, 1, 1)]
    if args.big_mib > 0:
        topics.append(NewTopic(BIG_TOPIC, 1, 1))
    for name, fut in admin.create_topics(topics, operation_timeout=30).items():
        fut.result(30)


def fill_big_partition(broker, args):
    """Writes `big_mib` MiB of 256 KiB records to the big partition (acks=1)."""
    p = Producer({
        "bootstrap.servers": broker.bootstrap, **QUIET,
        "acks": "1",
        "enable.idempotence": False,
        "linger.ms": 20,
        "batch.size": 1000000,
        "queue.buffering.max.kbytes": 262144,
    })
    value = os.urandom(256 * 1024)
    failed = []
    for _ in range(args.big_mib * 4):
        while True:
            try:
                p.produce(BIG_TOPIC, value=value, partition=0,
                          on_delivery=lambda err, _m: failed.append(err) if err else None)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(300)
    if left or failed:
        raise RuntimeError(f"filling {BIG_TOPIC}: {left} undelivered, errors {failed[:3]}")


def killer(broker, stop, args, rng, restarts, recoveries):
    """SIGKILLs the broker at seeded random moments (now and then only 1-4 s after it came
    up) and starts it again on the same data dir and ports; now and then the new process is
    killed again while it starts (recovering), before its /health answers."""
    while True:
        if rng.random() < 0.25:
            wait_s = rng.uniform(1, 4)
        else:
            wait_s = rng.uniform(args.kill_min, args.kill_max)
        if stop.wait(wait_s):
            return
        broker.kill9()
        restarts.append(time.monotonic() - T0)
        log(f"kill -9 #{len(restarts)}")
        time.sleep(rng.uniform(0, 1.0))
        if rng.random() < 0.15:
            broker.spawn()
            time.sleep(rng.uniform(0, 0.5))
            broker.kill9()
            restarts.append(time.monotonic() - T0)
            log(f"kill -9 #{len(restarts)} while starting")
        try:
            took = broker.start()
        except RuntimeError as e:
            STATS.anomaly(f"restart after kill -9 #{len(restarts)} failed: {e}")
            stop.set()
            return
        recoveries.append(took)
        log(f"restarted, /health 200 after {took:.2f} s")


def watch_exits(broker, stop):
    """Reports a broker exit we did not cause and starts it again."""
    while not stop.wait(0.2):
        code = broker.unexpected_exit()
        if code is None:
            continue
        STATS.anomaly(f"broker exited by itself with status {code} (see its log)")
        try:
            broker.start()
        except RuntimeError as e:
            STATS.anomaly(f"restart after an unexpected exit failed: {e}")
            stop.set()
            return


def read_partitions(broker, topic, partitions):
    """{partition: [(offset, value bytes)]} from offset 0 to the end, one assign-only consumer."""
    c = Consumer({
        "bootstrap.servers": broker.bootstrap, **QUIET,
        "group.id": "soak-verify",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "fetch.max.bytes": 52428800,
    })
    tps = [TopicPartition(topic, p, 0) for p in range(partitions)]
    ends = {tp.partition: c.get_watermark_offsets(tp, timeout=30)[1] for tp in tps}
    c.assign(tps)
    out = {p: [] for p in range(partitions)}
    done = {p for p, end in ends.items() if end == 0}
    deadline = time.monotonic() + 240
    while len(done) < partitions:
        if time.monotonic() > deadline:
            raise RuntimeError(f"final read of {topic} did not reach the end offsets {ends}")
        for m in c.consume(1000, 1.0):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF and m.offset() >= ends[m.partition()]:
                    done.add(m.partition())
                continue
            if m.offset() < ends[m.partition()]:
                out[m.partition()].append((m.offset(), m.value()))
    c.close()
    return out, ends


def verify(broker, args, producers, consumers):
    log_data, ends = read_partitions(broker, TOPIC, args.partitions)
    where = {}
    dupes = []
    order_errors = []
    for p, recs in log_data.items():
        expect = 0
        last_seq = {}
        for off, value in recs:
            if off != expect:
                STATS.anomaly(f"{TOPIC}-{p}: offset {off} where {expect} was expected (gap or repeat)")
            expect = off + 1
            v = value.decode()
            if v in where:
                dupes.append((v.split(":x")[0], where[v], (p, off)))
            where[v] = (p, off)
            prod, inc, seq = v.split(":")[:3]
            key = (prod, inc)
            if key in last_seq and int(seq) <= last_seq[key]:
                order_errors.append((p, off, prod, inc, int(seq), last_seq[key]))
            last_seq[key] = int(seq)
        if expect != ends[p]:
            STATS.anomaly(f"{TOPIC}-{p}: read up to {expect}, end offset is {ends[p]}")
    for d in dupes[:5]:
        STATS.anomaly(f"duplicate record {d[0]} at {d[1]} and {d[2]}")
    if len(dupes) > 5:
        STATS.anomaly(f"... {len(dupes) - 5} more duplicates")
    for e in order_errors[:5]:
        STATS.anomaly(f"{TOPIC}-{e[0]} offset {e[1]}: {e[2]} incarnation {e[3]} sequence {e[4]} after {e[5]}")
    if len(order_errors) > 5:
        STATS.anomaly(f"... {len(order_errors) - 5} more out-of-order records")
    missing = []
    misplaced = []
    acked_total = 0
    acked_offset_unknown = 0
    for prod in producers:
        for v, (p, off) in prod.acked.items():
            acked_total += 1
            found = where.get(v)
            if found is None:
                missing.append((v.split(":x")[0], p, off))
            elif off < 0:
                acked_offset_unknown += 1
                if found[0] != p:
                    misplaced.append((v.split(":x")[0], (p, off), found))
            elif found != (p, off):
                misplaced.append((v.split(":x")[0], (p, off), found))
    for m in missing[:5]:
        STATS.anomaly(f"acknowledged record {m[0]} ({TOPIC}-{m[1]} offset {m[2]}) is missing")
    if len(missing) > 5:
        STATS.anomaly(f"... {len(missing) - 5} more acknowledged records missing")
    for m in misplaced[:5]:
        STATS.anomaly(f"acknowledged record {m[0]} was acknowledged at {m[1]} but is at {m[2]}")
    if len(misplaced) > 5:
        STATS.anomaly(f"... {len(misplaced) - 5} more acknowledged records elsewhere than acknowledged")
    # Records a consumer read that are no longer there (or are another record now): reads of
    # data that a crash then lost. Reported, not an anomaly: such records were never acknowledged.
    by_offset = {}
    for p, recs in log_data.items():
        for off, value in recs:
            by_offset[(p, off)] = value
    reread = 0
    for c in consumers:
        for k, v in c.seen.items():
            if hash(by_offset.get(k)) != v:
                reread += 1
    return {
        "records_in_log": len(where),
        "acked_total": acked_total,
        "acked_offset_unknown": acked_offset_unknown,
        "consumed_then_lost": reread,
        "ends": ends,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", required=True, help="path of the ringbroker binary")
    ap.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    ap.add_argument("--seed", type=int, default=None, help="seed of every random choice (default: from the clock)")
    ap.add_argument("--data-dir", default=None, help="data dir (default: a new temporary dir, removed after a clean run)")
    ap.add_argument("--cores", default="0,1")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--producers", type=int, default=3)
    ap.add_argument("--rate", type=int, default=500, help="records per second per producer")
    ap.add_argument("--replay-producers", type=int, default=2,
                    help="raw idempotent producers that resend a lost request at once after a restart")
    ap.add_argument("--record-bytes", type=int, default=100)
    ap.add_argument("--consumers", type=int, default=3)
    ap.add_argument("--hostile", type=int, default=1, help="threads per hostile kind (0: none)")
    ap.add_argument("--flood", type=int, default=200, help="connections per flood")
    ap.add_argument("--idle-http", type=int, default=8, help="idle connections to the metrics port per round")
    ap.add_argument("--big-mib", type=int, default=260,
                    help="MiB written to the partition read with the largest fetch sizes (0: no big partition)")
    ap.add_argument("--skip", default="",
                    help="hostile kinds to leave out, comma-separated: abrupt,garbage,big-fetch,big-consumer,"
                         "never-read,flood,idle-http")
    ap.add_argument("--kill-min", type=float, default=20, help="shortest usual time between kills, s")
    ap.add_argument("--kill-max", type=float, default=60, help="longest usual time between kills, s")
    ap.add_argument("--no-kill", action="store_true")
    ap.add_argument("--probe-timeout", type=float, default=3.0, help="seconds a health probe may take")
    ap.add_argument("--hard-timeout", type=float, default=None,
                    help="the run ends (broker killed, exit 3) after this many seconds (default: duration + 420)")
    ap.add_argument("--keep", action="store_true", help="keep the data dir")
    args = ap.parse_args()

    seed = args.seed if args.seed is not None else int(time.time()) % 1000000
    rng = random.Random(seed)
    own_dir = args.data_dir is None
    work = tempfile.mkdtemp(prefix="ringbroker-soak-") if own_dir else args.data_dir
    data_dir = os.path.join(work, "data")
    log_path = os.path.join(work, "broker.log")
    broker = Broker(args, data_dir, log_path)
    log(f"seed={seed} broker={args.broker} kafka={broker.bootstrap} "
        f"metrics={broker.metrics_addr[0]}:{broker.metrics_addr[1]} work={work} duration={args.duration:.0f}s")

    def die(signum, _frame):
        broker.kill9()
        log(f"signal {signum}: broker killed, exiting")
        os._exit(130)

    signal.signal(signal.SIGTERM, die)
    signal.signal(signal.SIGINT, die)
    hard_timeout = args.hard_timeout or args.duration + 420

    def watchdog():
        broker.kill9()
        log(f"hard timeout of {hard_timeout:.0f} s reached: broker killed, exiting")
        os._exit(3)

    dog = threading.Timer(hard_timeout, watchdog)
    dog.daemon = True
    dog.start()

    try:
        return run(args, seed, rng, broker, work, own_dir)
    except Exception:
        traceback.print_exc()
        log(f"driver failed; broker log and data kept in {work}")
        return 2
    finally:
        broker.kill9()


def run(args, seed, rng, broker, work, own_dir):
    took = broker.start()
    log(f"broker up in {took:.2f} s")
    create_topics(broker, args)
    if args.big_mib > 0:
        t = time.monotonic()
        fill_big_partition(broker, args)
        log(f"{BIG_TOPIC}-0 filled with {args.big_mib} MiB in {time.monotonic() - t:.1f} s")

    stop = threading.Event()
    load_stop = threading.Event()
    commits = []
    producers = [ProducerLoad(broker, load_stop, args, i) for i in range(args.producers)]
    replayers = [ReplayProducer(broker, load_stop, args, i) for i in range(args.replay_producers)]
    producers += replayers
    consumers = [ConsumerLoad(broker, load_stop, args, i, commits) for i in range(args.consumers)]
    observer = CommitObserver(broker, load_stop, args, commits)
    prober = Prober(broker, stop, args)
    hostile = Hostile(broker, load_stop, args, rng.randrange(1 << 30))
    restarts, recoveries = [], []

    def thread(target, *a):
        t = threading.Thread(target=target, args=a, daemon=True)
        t.start()
        return t

    load_threads = [thread(p.run) for p in producers] + [thread(c.run) for c in consumers]
    load_threads.append(thread(observer.run))
    startup_reader = StartupOffsetReader(broker, load_stop, args, observer)
    load_threads.append(thread(startup_reader.run))
    pauses = {"abrupt": (0.05, 0.3), "garbage": (0.05, 0.3), "big-fetch": (2, 6), "big-consumer": (5, 15),
              "never-read": (1, 5), "flood": (5, 15), "idle-http": (5, 15)}
    for _ in range(args.hostile):
        for name, action in hostile.kinds():
            if (name.startswith("big") and args.big_mib == 0) or name in args.skip.split(","):
                continue
            load_threads.append(thread(hostile.loop, name, action, pauses[name]))
    probe_thread = thread(prober.run)
    exit_thread = thread(watch_exits, broker, stop)
    kill_stop = threading.Event()
    kill_thread = None if args.no_kill else thread(killer, broker, kill_stop, args, random.Random(rng.randrange(1 << 30)), restarts, recoveries)

    stop.wait(args.duration)
    log("load period over: stopping the killer, then the load")
    kill_stop.set()
    if kill_thread:
        kill_thread.join(120)
    load_stop.set()
    join_deadline = time.monotonic() + 30
    stuck = 0
    for t in load_threads:
        t.join(max(0.1, join_deadline - time.monotonic()))
        stuck += t.is_alive()
    if stuck:
        STATS.anomaly(f"{stuck} load threads did not stop within 30 s (broker stuck?)")
    stop.set()
    probe_thread.join(30)
    exit_thread.join(5)

    code = broker.stop()
    if code != 0:
        STATS.anomaly(f"SIGTERM after the load: broker exit status {code}, expected 0")
    took = broker.start()
    log(f"clean restart: /health 200 after {took:.2f} s; verifying")
    result = verify(broker, args, producers, consumers)
    final_check = Consumer({"bootstrap.servers": broker.bootstrap, **QUIET, **QUIET, "group.id": GROUP, "enable.auto.commit": False})
    floor = observer.acked_floor(time.monotonic())
    try:
        committed = final_check.committed([TopicPartition(TOPIC, p) for p in range(args.partitions)], timeout=30)
    finally:
        final_check.close()
    for tp in committed:
        if tp.partition in floor and tp.offset < floor[tp.partition]:
            STATS.anomaly(f"after the final restart {TOPIC}-{tp.partition} has committed offset {tp.offset}, "
                          f"below the acknowledged commit of {floor[tp.partition]}")
        if tp.offset > result["ends"][tp.partition]:
            STATS.note(f"{TOPIC}-{tp.partition}: committed offset {tp.offset} beyond the log end "
                       f"{result['ends'][tp.partition]}")
    code = broker.stop()
    if code != 0:
        STATS.anomaly(f"final SIGTERM: broker exit status {code}, expected 0")
    with open(broker.log_path, "rb") as f:
        text = f.read().decode(errors="replace")
    panics = [line for line in text.splitlines() if "panicked" in line]
    for line in panics[:5]:
        STATS.anomaly(f"broker log: {line.strip()[:300]}")

    for period in prober.periods:
        STATS.anomaly(f"unresponsive while up from {period[0]:.1f}s to {period[1]:.1f}s: {period[2]}")

    failed = collections.Counter()
    for p in producers:
        failed.update(p.failed)
    commit_errors = collections.Counter()
    for c in consumers:
        commit_errors.update(c.commit_errors)
    hostile_total = sum(hostile.connections.values())
    log("---- summary")
    log(f"seed {seed}; restarts at {[round(t, 1) for t in restarts]}; recovery (kill to /health 200 excluded "
        f"the kill) took {[round(t, 2) for t in recoveries]} s")
    log(f"producers: {sum(p.sent for p in producers)} sent, {result['acked_total']} acknowledged "
        f"({result['acked_offset_unknown']} without an offset), failed deliveries {dict(failed)}, "
        f"unacknowledged at the end {sum(p.unacked_at_end for p in producers)}, "
        f"incarnations {sum(p.incarnations for p in producers)}; raw replay producers: "
        f"{sum(len(r.acked) for r in replayers)} acknowledged, {sum(r.retries_after_loss for r in replayers)} "
        f"requests resent after a lost answer, {sum(r.duplicates_answered for r in replayers)} answered "
        f"DUPLICATE_SEQUENCE_NUMBER")
    log(f"log: {result['records_in_log']} records in {TOPIC}, end offsets {result['ends']}")
    log(f"consumers: {sum(c.consumed for c in consumers)} records consumed, {len(commits)} partition commits "
        f"acknowledged, commit errors {dict(commit_errors)}, observer reads {observer.reads}, "
        f"OffsetFetch reads during start-ups {startup_reader.reads}, "
        f"records read then lost by a crash {result['consumed_then_lost']}")
    log(f"hostile connections {dict(hostile.connections)}; largest-size Fetch answers "
        f"{hostile.big_fetch_answers} ({hostile.big_fetch_bytes} bytes), big consumer records "
        f"{hostile.big_consumer_records}; hostile client-side errors "
        f"{ {k: v for k, v in STATS.counts.items() if k.startswith('hostile_client_errors')} }")
    log(f"health: {prober.probes} probes, {prober.counted} while up, slowest {prober.latency_max_s:.3f} s, "
        f"{len(prober.periods)} unresponsive periods")
    fatal_causes = {k.split(":", 1)[1]: v for k, v in STATS.counts.items() if k.startswith("producer_fatal:")}
    log(f"producer fatal errors by cause (each producer was recreated): {fatal_causes}")
    for n in STATS.notes[:20]:
        log(f"note: {n}")
    if len(STATS.notes) > 20:
        log(f"... {len(STATS.notes) - 20} more notes")
    anomalies = len(STATS.anomalies)
    for a in STATS.anomalies:
        log(f"anomaly: {a}")
    print(f"soak: records_acknowledged={result['acked_total']} restarts={len(restarts)} "
          f"hostile_connections={hostile_total} health_probes={prober.counted} "
          f"unresponsive_periods={len(prober.periods)} producer_fatal_errors={STATS.counts['producer_fatal_errors']} "
          f"anomalies={anomalies}", flush=True)
    if anomalies == 0 and own_dir and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        # The big partition is random filler, of no use to a post-mortem: keep the disk.
        shutil.rmtree(os.path.join(work, "data", f"{BIG_TOPIC}-0"), ignore_errors=True)
        log(f"broker log and data kept in {work} (without {BIG_TOPIC}-0)")
    return 1 if anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
