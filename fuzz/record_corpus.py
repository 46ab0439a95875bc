#!/usr/bin/env python3
"""Records real client requests as a fuzz seed corpus.

Starts a ringbroker (the binary given as argv[1]) on an ephemeral port, puts a recording TCP
proxy in front of it, drives the proxy with kcat and kafka-python, and writes every
client->broker request frame to fuzz/corpus/request/<api>-v<version>-<client>-<n> and every
record batch found in Produce requests to fuzz/corpus/batch/. Run from the repository root:

    python3 fuzz/record_corpus.py target/release/ringbroker
"""
import os, re, socket, struct, subprocess, sys, tempfile, threading, time

API_NAMES = {0: "produce", 1: "fetch", 2: "listoffsets", 3: "metadata", 8: "offsetcommit",
             9: "offsetfetch", 10: "findcoordinator", 11: "joingroup", 12: "heartbeat",
             13: "leavegroup", 14: "syncgroup", 15: "describegroups", 16: "listgroups",
             18: "apiversions", 19: "createtopics", 20: "deletetopics", 22: "initproducerid",
             42: "deletegroups"}
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
client_tag = ["none"]
counter = [0]
seen = {}
lock = threading.Lock()


def save_frame(frame):
    api, version = struct.unpack(">hh", frame[4:8])
    name = API_NAMES.get(api, f"api{api}")
    key = (api, version, client_tag[0])
    with lock:
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 3:  # a few of each kind are enough
            return
        counter[0] += 1
        path = os.path.join(OUT, "request", f"{name}-v{version}-{client_tag[0]}-{seen[key]}")
    with open(path, "wb") as f:
        f.write(frame)
    if api == 0:
        save_batches(frame)


def save_batches(frame):
    # A RecordBatch v2 starts with baseOffset(8) batchLength(4) leaderEpoch(4) magic(1)=2.
    data = frame
    for i in range(len(data) - 17):
        if data[i + 16] != 2:
            continue
        (length,) = struct.unpack(">i", data[i + 8:i + 12])
        if 49 <= length <= len(data) - i - 12 and data[i:i + 8] == b"\0" * 8:
            batch = data[i:i + 12 + length]
            with lock:
                counter[0] += 1
                path = os.path.join(OUT, "batch", f"batch-{client_tag[0]}-{counter[0]}")
            with open(path, "wb") as f:
                f.write(batch)


def pump(src, dst, record):
    buf = b""
    try:
        while True:
            chunk = src.recv(65536)
            if not chunk:
                break
            dst.sendall(chunk)
            if record:
                buf += chunk
                while len(buf) >= 4:
                    (size,) = struct.unpack(">i", buf[:4])
                    if len(buf) < 4 + size:
                        break
                    save_frame(buf[:4 + size])
                    buf = buf[4 + size:]
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def proxy(listener, upstream):
    while True:
        client, _ = listener.accept()
        server = socket.create_connection(upstream)
        threading.Thread(target=pump, args=(client, server, True), daemon=True).start()
        threading.Thread(target=pump, args=(server, client, False), daemon=True).start()


def main():
    binary = sys.argv[1]
    for d in ("request", "batch"):
        os.makedirs(os.path.join(OUT, d), exist_ok=True)
    data = tempfile.mkdtemp()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    broker = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--advertise",
                               f"127.0.0.1:{port}", "--data-dir", data, "--metrics-listen", "off",
                               "--default-partitions", "2"],
                              stderr=subprocess.PIPE, text=True)
    upstream = None
    for line in broker.stderr:
        m = re.search(r"listening on (\S+)", line)
        if m:
            host, p = m.group(1).rsplit(":", 1)
            upstream = (host, int(p))
            break
    threading.Thread(target=lambda: [None for _ in broker.stderr], daemon=True).start()
    threading.Thread(target=proxy, args=(listener, upstream), daemon=True).start()
    boot = f"127.0.0.1:{port}"
    try:
        client_tag[0] = "kcat"
        lines = "".join(f"k{i}:value-{i}\n" for i in range(200))
        for codec in ("none", "gzip", "snappy", "lz4", "zstd"):
            subprocess.run(["kcat", "-b", boot, "-t", f"seed-{codec}", "-P", "-K:", "-z", codec],
                           input=lines, text=True, timeout=60, check=True)
        subprocess.run(["kcat", "-b", boot, "-L"], capture_output=True, timeout=60, check=True)
        subprocess.run(["kcat", "-b", boot, "-t", "seed-lz4", "-C", "-e", "-q"],
                       capture_output=True, timeout=60, check=True)
        subprocess.run(["kcat", "-b", boot, "-t", "seed-none", "-C", "-o", "-5", "-e", "-q"],
                       capture_output=True, timeout=60, check=True)
        g = subprocess.Popen(["kcat", "-b", boot, "-G", "seed-group-kcat", "seed-none", "-q"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(8)
        g.terminate()
        g.wait(timeout=20)

        client_tag[0] = "kafkapython"
        from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
        from kafka.admin import NewTopic
        admin = KafkaAdminClient(bootstrap_servers=boot)
        admin.create_topics([NewTopic("seed-admin", 3, 1, topic_configs={"retention.ms": "60000"})])
        producer = KafkaProducer(bootstrap_servers=boot, acks="all", compression_type="gzip")
        for i in range(100):
            producer.send("seed-admin", key=b"k%d" % i, value=b"v%d" % i)
        producer.flush()
        producer.close()
        consumer = KafkaConsumer("seed-admin", bootstrap_servers=boot, group_id="seed-group-py",
                                 auto_offset_reset="earliest", enable_auto_commit=False)
        got = 0
        deadline = time.time() + 20
        while got < 100 and time.time() < deadline:
            for _, records in consumer.poll(timeout_ms=500).items():
                got += len(records)
            consumer.commit()
        consumer.close()
        admin.list_groups()
        admin.describe_groups(["seed-group-py"])
        admin.list_group_offsets("seed-group-py")
        admin.delete_groups(["seed-group-py"])
        admin.delete_topics(["seed-admin"])
        admin.close()
    finally:
        broker.terminate()
        broker.wait(timeout=30)
    print(f"recorded {counter[0]} files under {OUT}")


if __name__ == "__main__":
    main()
