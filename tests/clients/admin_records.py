#!/usr/bin/env python3
"""The record-level admin APIs driven by real clients (confluent-kafka's AdminClient and
consumer, kafka-python's KafkaAdminClient and consumer); every command prints tab-separated
lines, errors as "error<TAB>CODE<TAB>message".

  create-partitions LIB BOOTSTRAP TOPIC COUNT [validate]   LIB: confluent | kafka-python
  delete-records LIB BOOTSTRAP TOPIC PARTITION OFFSET      prints "low_watermark<TAB>N"
  offsets-for-times LIB BOOTSTRAP TOPIC PARTITION TS...    prints "TS<TAB>offset<TAB>timestamp"
  max-timestamp BOOTSTRAP TOPIC PARTITION                  confluent list_offsets(max_timestamp)
  produce-timestamps BOOTSTRAP TOPIC PARTITION CODEC TS... one batch (confluent, long linger),
                                                           value "v<TS>"; prints "offset<TAB>TS"
  produce-idempotent BOOTSTRAP TOPIC PARTITION COUNT       enable.idempotence=true, one record
                                                           at a time; prints "acked<TAB>N"
  first-earliest BOOTSTRAP TOPIC GROUP                     consumer, auto.offset.reset=earliest:
                                                           "first<TAB>offset" of the first record
  seek-with-epoch BOOTSTRAP TOPIC PARTITION OFFSET         confluent consumer assigned at OFFSET
                                                           with leader epoch 0 (position
                                                           validated with OffsetForLeaderEpoch);
                                                           "got<TAB>offset" of the first record
  describe-producers BOOTSTRAP TOPIC PARTITION             kafka-python; one line per producer:
                                                           "producer<TAB>id<TAB>epoch<TAB>last_seq
                                                           <TAB>last_ts<TAB>coord_epoch<TAB>txn"
  log-dirs BOOTSTRAP                                       kafka-python describe_log_dirs; lines
                                                           "dir<TAB>path" and
                                                           "size<TAB>topic<TAB>partition<TAB>bytes"
"""
import sys
import time


def confluent_admin(bootstrap):
    from confluent_kafka.admin import AdminClient
    return AdminClient({"bootstrap.servers": bootstrap})


def kafka_python_admin(bootstrap):
    from kafka import KafkaAdminClient
    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)


def print_kafka_exception(e):
    err = e.args[0]
    print(f"error\t{err.name()}\t{err.str()}")


def create_partitions(lib, bootstrap, topic, count, validate=None):
    count = int(count)
    if lib == "confluent":
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import NewPartitions
        admin = confluent_admin(bootstrap)  # kept alive until the futures complete
        fs = admin.create_partitions(
            [NewPartitions(topic, count)], validate_only=validate == "validate", request_timeout=20)
        try:
            fs[topic].result(30)
            print("ok")
        except KafkaException as e:
            print_kafka_exception(e)
    else:
        import kafka.errors
        admin = kafka_python_admin(bootstrap)
        try:
            admin.create_partitions({topic: count}, validate_only=validate == "validate")
            print("ok")
        except kafka.errors.BrokerResponseError as e:
            print(f"error\t{type(e).__name__}\t{e}")
        admin.close()


def delete_records(lib, bootstrap, topic, partition, offset):
    partition, offset = int(partition), int(offset)
    if lib == "confluent":
        from confluent_kafka import KafkaException, TopicPartition
        admin = confluent_admin(bootstrap)
        fs = admin.delete_records(
            [TopicPartition(topic, partition, offset)], request_timeout=20)
        try:
            for f in fs.values():
                print(f"low_watermark\t{f.result(30).low_watermark}")
        except KafkaException as e:
            print_kafka_exception(e)
    else:
        import kafka.errors
        from kafka import TopicPartition
        admin = kafka_python_admin(bootstrap)
        try:
            result = admin.delete_records({TopicPartition(topic, partition): offset})
            for value in result.values():
                low = value["low_watermark"] if isinstance(value, dict) else value
                print(f"low_watermark\t{low}")
        except kafka.errors.BrokerResponseError as e:
            print(f"error\t{type(e).__name__}\t{e}")
        admin.close()


def offsets_for_times(lib, bootstrap, topic, partition, *timestamps):
    partition = int(partition)
    if lib == "confluent":
        from confluent_kafka import Consumer, TopicPartition
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "times"})
        for ts in timestamps:
            [found] = c.offsets_for_times([TopicPartition(topic, partition, int(ts))], 20)
            print(f"{ts}\t{found.offset}\t-")
        c.close()
    else:
        from kafka import KafkaConsumer, TopicPartition
        c = KafkaConsumer(bootstrap_servers=bootstrap)
        tp = TopicPartition(topic, partition)
        for ts in timestamps:
            found = c.offsets_for_times({tp: int(ts)})[tp]
            if found is None:
                print(f"{ts}\t-1\t-1")
            else:
                print(f"{ts}\t{found.offset}\t{found.timestamp}")
        c.close()


def max_timestamp(bootstrap, topic, partition):
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec
    tp = TopicPartition(topic, int(partition))
    admin = confluent_admin(bootstrap)
    fs = admin.list_offsets({tp: OffsetSpec.max_timestamp()}, request_timeout=20)
    info = fs[tp].result(30)
    print(f"max\t{info.offset}\t{info.timestamp}")


def produce_timestamps(bootstrap, topic, partition, codec, *timestamps):
    from confluent_kafka import Producer
    p = Producer({
        "bootstrap.servers": bootstrap,
        "compression.type": codec,
        "linger.ms": 2000,
        "batch.num.messages": 100000,
        "acks": "all",
    })
    offsets = {}

    def report(err, msg):
        if err is not None:
            raise SystemExit(f"delivery failed: {err}")
        offsets[msg.timestamp()[1]] = msg.offset()

    for ts in timestamps:
        p.produce(topic, partition=int(partition), value=f"v{ts}".encode() * 20,
                  timestamp=int(ts), on_delivery=report)
    if p.flush(60):
        raise SystemExit("not delivered")
    for ts in timestamps:
        print(f"{offsets[int(ts)]}\t{ts}")


def produce_idempotent(bootstrap, topic, partition, count):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 0})
    for i in range(int(count)):
        p.produce(topic, partition=int(partition), value=f"idem-{i}".encode())
        if p.flush(30):
            raise SystemExit("not delivered")
    print(f"acked\t{count}")


def first_earliest(bootstrap, topic, group):
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    deadline = time.time() + 30
    while time.time() < deadline:
        m = c.poll(1.0)
        if m is None or m.error():
            continue
        print(f"first\t{m.offset()}")
        break
    c.close()


def seek_with_epoch(bootstrap, topic, partition, offset):
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "epoch-check",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, int(partition), int(offset), leader_epoch=0)])
    deadline = time.time() + 30
    while time.time() < deadline:
        m = c.poll(1.0)
        if m is None:
            continue
        if m.error():
            print(f"error\t{m.error().name()}\t{m.error().str()}")
            continue
        print(f"got\t{m.offset()}\t{m.leader_epoch()}")
        break
    c.close()


def describe_producers(bootstrap, topic, partition):
    from kafka import TopicPartition
    admin = kafka_python_admin(bootstrap)
    tp = TopicPartition(topic, int(partition))
    state = admin.describe_producers([tp])[tp]
    producers = state.active_producers if hasattr(state, "active_producers") else state
    for p in producers:
        print("producer\t" + "\t".join(str(getattr(p, k)) for k in (
            "producer_id", "producer_epoch", "last_sequence", "last_timestamp",
            "coordinator_epoch", "current_transaction_start_offset")))
    admin.close()


def log_dirs(bootstrap):
    admin = kafka_python_admin(bootstrap)
    for broker in admin.describe_log_dirs():
        for d in broker["log_dirs"]:
            print(f"dir\t{d['error_code']}\t{d['log_dir']}")
            for t in d["topics"]:
                for p in t["partitions"]:
                    print(f"size\t{t['name']}\t{p['partition_index']}\t{p['partition_size']}"
                          f"\t{p['offset_lag']}\t{p['is_future_key']}")
    admin.close()


COMMANDS = {
    "create-partitions": create_partitions,
    "delete-records": delete_records,
    "offsets-for-times": offsets_for_times,
    "max-timestamp": max_timestamp,
    "produce-timestamps": produce_timestamps,
    "produce-idempotent": produce_idempotent,
    "first-earliest": first_earliest,
    "seek-with-epoch": seek_with_epoch,
    "describe-producers": describe_producers,
    "log-dirs": log_dirs,
}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
