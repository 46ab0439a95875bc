#!/usr/bin/env python3
"""Kafka clients over TLS (security.protocol=SSL), driven from crates/ringbroker/tests/tls.rs.

  LIB BOOTSTRAP CA TOPIC GROUP COUNT [CERT KEY]
      LIB: confluent | kafka-python. Produces COUNT records "LIB-i" (acks=all), consumes
      them in consumer group GROUP from the beginning, commits synchronously, then reads the
      group's committed offset back with a new consumer. Prints "record<TAB>value" per record
      and "committed<TAB>offset". CERT/KEY: a client certificate (mTLS).
"""
import sys
import time


def confluent(bootstrap, ca, topic, group, count, cert=None, key=None):
    from confluent_kafka import Consumer, Producer, TopicPartition

    tls = {"security.protocol": "SSL", "ssl.ca.location": ca}
    if cert:
        tls.update({"ssl.certificate.location": cert, "ssl.key.location": key})
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", **tls})
    errors = []
    for i in range(count):
        producer.produce(topic, value=f"confluent-{i}".encode(), partition=0,
                         on_delivery=lambda err, _m: err and errors.append(err))
    if producer.flush(30) != 0 or errors:
        sys.exit(f"produce failed: {errors}")
    settings = {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                "auto.offset.reset": "earliest", **tls}
    consumer = Consumer(settings)
    consumer.assign([TopicPartition(topic, 0, 0)])
    got = []
    deadline = time.time() + 30
    while len(got) < count and time.time() < deadline:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        got.append(msg.value().decode())
    consumer.commit(asynchronous=False)
    consumer.close()
    for v in got:
        print(f"record\t{v}")
    check = Consumer(settings)
    committed = check.committed([TopicPartition(topic, 0)], timeout=20)
    check.close()
    print(f"committed\t{committed[0].offset}")


def kafka_python(bootstrap, ca, topic, group, count, cert=None, key=None):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    tls = {"security_protocol": "SSL", "ssl_cafile": ca}
    if cert:
        tls.update({"ssl_certfile": cert, "ssl_keyfile": key})
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **tls)
    futures = [producer.send(topic, value=f"kafka-python-{i}".encode(), partition=0)
               for i in range(count)]
    for f in futures:
        f.get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                             auto_offset_reset="earliest", **tls)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    got = []
    deadline = time.time() + 30
    while len(got) < count and time.time() < deadline:
        for records in consumer.poll(timeout_ms=1000).values():
            got.extend(r.value.decode() for r in records)
    consumer.commit()
    consumer.close()
    for v in got:
        print(f"record\t{v}")
    check = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                          **tls)
    print(f"committed\t{check.committed(tp)}")
    check.close()


if __name__ == "__main__":
    lib, bootstrap, ca, topic, group, count, *client = sys.argv[1:]
    run = {"confluent": confluent, "kafka-python": kafka_python}[lib]
    run(bootstrap, ca, topic, group, int(count), *client)
