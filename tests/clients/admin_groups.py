#!/usr/bin/env python3
"""Group and cluster admin calls through confluent-kafka's AdminClient (librdkafka) and
kafka-python's KafkaAdminClient, driven from crates/ringbroker/tests/group_admin.rs.
Each command prints one line per result; errors are printed as the Kafka error name.

  ck-alter BOOTSTRAP GROUP TOPIC:P=OFFSET,...     alter_consumer_group_offsets
  ck-offsets BOOTSTRAP GROUP                      list_consumer_group_offsets (all partitions)
  ck-list BOOTSTRAP [STATE,...]                   list_consumer_groups (states filter)
  ck-describe BOOTSTRAP GROUP                     describe_consumer_groups, with operations
  ck-cluster BOOTSTRAP                            describe_cluster, with operations
  ck-topic BOOTSTRAP TOPIC                        describe_topics, with operations
  ck-member BOOTSTRAP TOPIC GROUP SECONDS         a subscribed consumer for SECONDS ("assigned")
  ck-join-error BOOTSTRAP TOPIC GROUP SECONDS     a consumer that subscribes and prints the
                                                  first error it is given ("error NAME") or
                                                  its assignment ("assigned N")
  kp-alter BOOTSTRAP GROUP TOPIC:P=OFFSET,...     alter_group_offsets
  kp-offsets BOOTSTRAP GROUP                      list_group_offsets
  kp-delete BOOTSTRAP GROUP TOPIC:P,...           delete_group_offsets
  kp-list BOOTSTRAP                               list_groups
  kp-describe BOOTSTRAP GROUP                     describe_groups
  kp-cluster BOOTSTRAP                            describe_cluster
"""
import sys
import time


def parse_offsets(spec):
    out = []
    for item in spec.split(","):
        tp, offset = item.split("=")
        topic, p = tp.rsplit(":", 1)
        out.append((topic, int(p), int(offset)))
    return out


_ADMINS = []


def ck_admin(bootstrap):
    """An AdminClient kept alive until exit (a dropped one fails its pending futures)."""
    from confluent_kafka.admin import AdminClient
    _ADMINS.append(AdminClient({"bootstrap.servers": bootstrap}))
    return _ADMINS[-1]


def ck_error(e):
    err = e.args[0] if e.args else e
    name = getattr(err, "name", None)
    return name() if callable(name) else str(e)


def ck_alter(bootstrap, group, spec):
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    tps = [TopicPartition(t, p, o) for t, p, o in parse_offsets(spec)]
    fut = ck_admin(bootstrap).alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])[group]
    try:
        res = fut.result(timeout=15)
        for tp in res.topic_partitions:
            print(f"{tp.topic}\t{tp.partition}\t{tp.error.name() if tp.error else 'NONE'}")
    except Exception as e:  # noqa: BLE001
        print(f"error\t{ck_error(e)}")


def ck_offsets(bootstrap, group):
    from confluent_kafka import ConsumerGroupTopicPartitions
    fut = ck_admin(bootstrap).list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    res = fut.result(timeout=15)
    for tp in sorted(res.topic_partitions, key=lambda t: (t.topic, t.partition)):
        print(f"{tp.topic}\t{tp.partition}\t{tp.offset}")


def ck_list(bootstrap, states=""):
    from confluent_kafka import ConsumerGroupState
    kwargs = {}
    if states:
        kwargs["states"] = {ConsumerGroupState[s] for s in states.split(",")}
    res = ck_admin(bootstrap).list_consumer_groups(request_timeout=15, **kwargs).result(timeout=20)
    for g in sorted(res.valid, key=lambda g: g.group_id):
        print(f"{g.group_id}\t{g.state.name}\t{g.type.name if hasattr(g, 'type') and g.type else ''}")
    for e in res.errors:
        print(f"error\t{e}")


def ck_describe(bootstrap, group):
    fut = ck_admin(bootstrap).describe_consumer_groups([group], include_authorized_operations=True)[group]
    d = fut.result(timeout=15)
    ops = ",".join(sorted(op.name for op in (d.authorized_operations or [])))
    print(f"state\t{d.state.name}\t{d.protocol_type if hasattr(d, 'protocol_type') else ''}")
    print(f"members\t{len(d.members)}")
    print(f"operations\t{ops}")


def ck_cluster(bootstrap):
    d = ck_admin(bootstrap).describe_cluster(include_authorized_operations=True, request_timeout=15).result(timeout=20)
    print(f"cluster_id\t{d.cluster_id}")
    print(f"controller\t{d.controller.id}\t{d.controller.host}\t{d.controller.port}")
    for n in d.nodes:
        print(f"node\t{n.id}\t{n.host}\t{n.port}\t{n.rack}")
    print("operations\t" + ",".join(sorted(op.name for op in (d.authorized_operations or []))))


def ck_topic(bootstrap, topic):
    from confluent_kafka import TopicCollection
    fut = ck_admin(bootstrap).describe_topics(TopicCollection([topic]), include_authorized_operations=True)[topic]
    d = fut.result(timeout=15)
    print(f"partitions\t{len(d.partitions)}")
    print("operations\t" + ",".join(sorted(op.name for op in (d.authorized_operations or []))))


def ck_member(bootstrap, topic, group, seconds):
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "session.timeout.ms": 6000})
    c.subscribe([topic])
    deadline = time.time() + float(seconds)
    announced = False
    while time.time() < deadline:
        c.poll(0.2)
        if not announced and c.assignment():
            print("assigned", flush=True)
            announced = True
    c.close()


def ck_join_error(bootstrap, topic, group, seconds):
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "session.timeout.ms": 6000})
    c.subscribe([topic])
    deadline = time.time() + float(seconds)
    while time.time() < deadline:
        m = c.poll(0.2)
        if m is not None and m.error():
            print(f"error\t{m.error().name()}")
            break
        if c.assignment():
            print(f"assigned\t{len(c.assignment())}")
            break
    c.close()


def kp_admin(bootstrap):
    from kafka import KafkaAdminClient
    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)


def kp_alter(bootstrap, group, spec):
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata
    offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for t, p, o in parse_offsets(spec)}
    try:
        res = kp_admin(bootstrap).alter_group_offsets(group, offsets)
        for tp, err in sorted((res or {}).items()):
            print(f"{tp.topic}\t{tp.partition}\t{getattr(err, '__name__', err)}")
        print("done")
    except Exception as e:  # noqa: BLE001
        print(f"error\t{type(e).__name__}")


def kp_offsets(bootstrap, group):
    offsets = kp_admin(bootstrap).list_group_offsets({group: None})
    if isinstance(offsets, dict) and group in offsets:
        offsets = offsets[group]
    for tp, om in sorted(offsets.items()):
        print(f"{tp.topic}\t{tp.partition}\t{om.offset}")


def kp_delete(bootstrap, group, spec):
    from kafka import TopicPartition
    parts = []
    for item in spec.split(","):
        t, p = item.rsplit(":", 1)
        parts.append(TopicPartition(t, int(p)))
    try:
        res = kp_admin(bootstrap).delete_group_offsets(group, parts)
        for tp, err in sorted((res or {}).items()):
            print(f"{tp.topic}\t{tp.partition}\t{getattr(err, '__name__', err)}")
        print("done")
    except Exception as e:  # noqa: BLE001
        print(f"error\t{type(e).__name__}")


def kp_list(bootstrap):
    for g in kp_admin(bootstrap).list_groups():
        if isinstance(g, dict):
            print("\t".join(str(g.get(k, "")) for k in ("group_id", "protocol_type", "group_state", "group_type")))
        else:
            print("\t".join(str(x) for x in g))


def kp_describe(bootstrap, group):
    d = kp_admin(bootstrap).describe_groups([group], include_authorized_operations=True)[group]
    print(f"state\t{d['group_state']}")
    print(f"members\t{len(d['members'])}")
    print("operations\t" + ",".join(sorted(d["authorized_operations"] or [])))


def kp_cluster(bootstrap):
    d = kp_admin(bootstrap).describe_cluster()
    print(f"cluster_id\t{d.get('cluster_id')}")
    print(f"controller\t{d.get('controller_id')}")
    for b in d.get("brokers", []):
        print(f"node\t{b.get('node_id', b.get('broker_id'))}\t{b.get('host')}\t{b.get('port')}")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    commands = {
        "ck-alter": ck_alter, "ck-offsets": ck_offsets, "ck-list": ck_list,
        "ck-describe": ck_describe, "ck-cluster": ck_cluster, "ck-topic": ck_topic,
        "ck-member": ck_member, "ck-join-error": ck_join_error, "kp-alter": kp_alter, "kp-offsets": kp_offsets,
        "kp-delete": kp_delete, "kp-list": kp_list, "kp-describe": kp_describe,
        "kp-cluster": kp_cluster,
    }
    commands[command](*args)
