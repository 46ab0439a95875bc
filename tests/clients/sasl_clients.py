#!/usr/bin/env python3
"""SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) with confluent-kafka and kafka-python.

  CLIENT roundtrip BOOTSTRAP PROTOCOL MECHANISM USER PASSWORD TOPIC GROUP [CA_FILE]
        produce 5 records, consume them in consumer group GROUP with a commit, print
        "ok<TAB>N" and the committed offset as "committed<TAB>OFFSET"
  CLIENT refused BOOTSTRAP PROTOCOL MECHANISM USER PASSWORD [CA_FILE]
        list topics; prints "refused<TAB>ERROR" when authentication fails, exits 1 otherwise
  confluent long-run BOOTSTRAP PROTOCOL MECHANISM USER PASSWORD TOPIC SECONDS
        produce one record and read it back every 0.5 s for SECONDS (sessions expire and the
        client re-authenticates meanwhile); prints "ok<TAB>ROUNDS"
  confluent alter-user BOOTSTRAP PROTOCOL MECHANISM USER PASSWORD NEW_USER NEW_MECHANISM NEW_PASSWORD
        AlterUserScramCredentials (upsert), then DescribeUserScramCredentials of NEW_USER:
        prints "described<TAB>NEW_USER<TAB>MECHANISM<TAB>ITERATIONS" per credential

CLIENT is confluent or kafka-python; PROTOCOL SASL_PLAINTEXT or SASL_SSL.
"""
import sys
import time
import uuid


def confluent_conf(bootstrap, protocol, mechanism, user, password, ca=None):
    conf = {
        "bootstrap.servers": bootstrap,
        "security.protocol": protocol,
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
    }
    if ca:
        conf["ssl.ca.location"] = ca
    return conf


def kp_conf(bootstrap, protocol, mechanism, user, password, ca=None):
    conf = {
        "bootstrap_servers": bootstrap,
        "security_protocol": protocol,
        "sasl_mechanism": mechanism,
        "sasl_plain_username": user,
        "sasl_plain_password": password,
    }
    if ca:
        conf["ssl_cafile"] = ca
        conf["ssl_check_hostname"] = False
    return conf


def confluent_roundtrip(bootstrap, protocol, mechanism, user, password, topic, group, ca=None):
    from confluent_kafka import Consumer, Producer
    base = confluent_conf(bootstrap, protocol, mechanism, user, password, ca)
    errors = []
    p = Producer({**base, "acks": "all", "error_cb": lambda e: errors.append(str(e))})
    for i in range(5):
        p.produce(topic, value=f"v{i}".encode())
    left = p.flush(30)
    if left:
        raise SystemExit(f"not delivered: {left}; errors {errors[:3]}")
    c = Consumer({**base, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    got = []
    deadline = time.time() + 60
    while len(got) < 5 and time.time() < deadline:
        m = c.poll(1.0)
        if m is None or m.error():
            continue
        got.append(m)
    if len(got) < 5:
        raise SystemExit(f"consumed {len(got)} of 5")
    c.commit(message=got[-1], asynchronous=False)
    committed = c.committed(c.assignment(), timeout=10)
    c.close()
    print(f"ok\t{len(got)}")
    for tp in committed:
        print(f"committed\t{tp.offset}")


def kp_roundtrip(bootstrap, protocol, mechanism, user, password, topic, group, ca=None):
    from kafka import KafkaConsumer, KafkaProducer
    base = kp_conf(bootstrap, protocol, mechanism, user, password, ca)
    p = KafkaProducer(acks="all", **base)
    for i in range(5):
        p.send(topic, value=f"v{i}".encode()).get(timeout=30)
    p.close()
    c = KafkaConsumer(topic, group_id=group, auto_offset_reset="earliest",
                      enable_auto_commit=False, consumer_timeout_ms=30000, **base)
    got = []
    for m in c:
        got.append(m)
        if len(got) == 5:
            break
    if len(got) < 5:
        raise SystemExit(f"consumed {len(got)} of 5")
    c.commit()
    tps = list(c.assignment())
    print(f"ok\t{len(got)}")
    for tp in tps:
        print(f"committed\t{c.committed(tp)}")
    c.close()


def confluent_refused(bootstrap, protocol, mechanism, user, password, ca=None):
    from confluent_kafka.admin import AdminClient
    errors = []
    conf = confluent_conf(bootstrap, protocol, mechanism, user, password, ca)
    conf["error_cb"] = lambda e: errors.append(e)
    a = AdminClient(conf)
    try:
        a.list_topics(timeout=10)
    except Exception as e:  # noqa: BLE001 (any failure is the expected refusal)
        msg = " ".join(str(x) for x in errors) or str(e)
        print(f"refused\t{msg}")
        return
    raise SystemExit("listed topics with a wrong password")


def kp_refused(bootstrap, protocol, mechanism, user, password, ca=None):
    from kafka import KafkaAdminClient
    try:
        a = KafkaAdminClient(request_timeout_ms=10000, **kp_conf(bootstrap, protocol, mechanism,
                                                                 user, password, ca))
        a.list_topics()
    except Exception as e:  # noqa: BLE001 (any failure is the expected refusal)
        print(f"refused\t{type(e).__name__}: {e}")
        return
    raise SystemExit("listed topics with a wrong password")


def confluent_long_run(bootstrap, protocol, mechanism, user, password, topic, seconds):
    from confluent_kafka import Consumer, Producer, TopicPartition
    base = confluent_conf(bootstrap, protocol, mechanism, user, password)
    errors = []
    p = Producer({**base, "acks": "all", "error_cb": lambda e: errors.append(str(e))})
    c = Consumer({**base, "group.id": "g-" + uuid.uuid4().hex, "enable.auto.commit": False,
                  "error_cb": lambda e: errors.append(str(e))})
    c.assign([TopicPartition(topic, 0, 0)])
    end = time.time() + float(seconds)
    rounds = 0
    seen = 0
    while time.time() < end:
        p.produce(topic, value=f"r{rounds}".encode(), partition=0)
        if p.flush(10):
            raise SystemExit(f"round {rounds}: not delivered; errors {errors[:3]}")
        deadline = time.time() + 10
        while seen <= rounds and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                seen += 1
        if seen <= rounds:
            raise SystemExit(f"round {rounds}: not consumed; errors {errors[:3]}")
        rounds += 1
        time.sleep(0.5)
    c.close()
    print(f"ok\t{rounds}")
    for e in errors:
        print(f"error\t{e}")


def confluent_alter_user(bootstrap, protocol, mechanism, user, password, new_user, new_mech,
                         new_password):
    from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialUpsertion)
    a = AdminClient(confluent_conf(bootstrap, protocol, mechanism, user, password))
    mech = {"SCRAM-SHA-256": ScramMechanism.SCRAM_SHA_256,
            "SCRAM-SHA-512": ScramMechanism.SCRAM_SHA_512}[new_mech]
    up = UserScramCredentialUpsertion(new_user, ScramCredentialInfo(mech, 4096),
                                      new_password.encode())
    for _, f in a.alter_user_scram_credentials([up]).items():
        f.result(timeout=30)
    described = a.describe_user_scram_credentials([new_user])
    for name, f in described.items():
        d = f.result(timeout=30)
        for info in d.scram_credential_infos:
            print(f"described\t{name}\t{info.mechanism.name}\t{info.iterations}")


def main():
    client, action, *args = sys.argv[1:]
    if action == "roundtrip":
        (kp_roundtrip if client == "kafka-python" else confluent_roundtrip)(*args)
    elif action == "refused":
        (kp_refused if client == "kafka-python" else confluent_refused)(*args)
    elif action == "long-run":
        confluent_long_run(*args)
    elif action == "alter-user":
        confluent_alter_user(*args)
    else:
        raise SystemExit(f"unknown action {action}")


if __name__ == "__main__":
    main()
