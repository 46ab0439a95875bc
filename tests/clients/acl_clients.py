#!/usr/bin/env python3
"""ACL tests' client driver: confluent-kafka (AdminClient, Producer, Consumer) and kafka-python
(KafkaAdminClient, KafkaProducer, KafkaConsumer) as a SASL/PLAIN user, or anonymous on
PLAINTEXT with the user "-".

  LIB BOOTSTRAP USER PASSWORD COMMAND ARGS...   LIB: confluent | kafka-python
    create-acl RTYPE NAME PATTERN PRINCIPAL HOST OP PERM
                                        prints "ok" or "error NAME"
    describe-acls RTYPE NAME PATTERN PRINCIPAL HOST OP PERM   (a filter; "-" is null)
                                        prints one "rtype name pattern principal host op perm"
                                        line per match, sorted, or "error NAME"
    delete-acls RTYPE NAME PATTERN PRINCIPAL HOST OP PERM     (a filter)
                                        prints the deleted entries as describe-acls, or "error NAME"
    produce TOPIC VALUE...              acks=all, no retries; prints "ok" or "error NAME"
    consume TOPIC GROUP COUNT           subscribe in GROUP, read COUNT values, commit; prints the
                                        values or "error NAME"
    topics                              the topics Metadata lists, one per line
Codes and names are Kafka's (topic, group, cluster, transactional_id, any; literal, prefixed,
match, any; read, write, ..., all, any; allow, deny, any).
"""
import sys
import time

RTYPES = {"any": 1, "topic": 2, "group": 3, "cluster": 4, "transactional_id": 5}
PATTERNS = {"any": 1, "match": 2, "literal": 3, "prefixed": 4}
OPS = {"any": 1, "all": 2, "read": 3, "write": 4, "create": 5, "delete": 6, "alter": 7,
       "describe": 8, "cluster_action": 9, "describe_configs": 10, "alter_configs": 11,
       "idempotent_write": 12}
PERMS = {"any": 1, "deny": 2, "allow": 3}


def name_of(table, code):
    return next(k for k, v in table.items() if v == int(code))


def parse_binding(args):
    rtype, name, pattern, principal, host, op, perm = args
    none = lambda s: None if s == "-" else s
    return (RTYPES[rtype], none(name), PATTERNS[pattern], none(principal), none(host), OPS[op],
            PERMS[perm])


def line(rtype, name, pattern, principal, host, op, perm):
    return " ".join([name_of(RTYPES, rtype), name, name_of(PATTERNS, pattern), principal, host,
                     name_of(OPS, op), name_of(PERMS, perm)])


# ---- confluent-kafka ----

def confluent_conf(bootstrap, user, password):
    conf = {"bootstrap.servers": bootstrap}
    if user != "-":
        conf.update({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                     "sasl.username": user, "sasl.password": password})
    return conf


def confluent(bootstrap, user, password, command, args):
    from confluent_kafka import KafkaException, Producer, Consumer
    from confluent_kafka.admin import (AdminClient, AclBinding, AclBindingFilter, ResourceType,
                                       ResourcePatternType, AclOperation, AclPermissionType)
    conf = confluent_conf(bootstrap, user, password)

    def enums(b):
        rtype, name, pattern, principal, host, op, perm = b
        return (ResourceType(rtype), name, ResourcePatternType(pattern), principal, host,
                AclOperation(op), AclPermissionType(perm))

    def out(bindings):
        for l in sorted(line(b.restype.value, b.name, b.resource_pattern_type.value, b.principal,
                             b.host, b.operation.value, b.permission_type.value)
                        for b in bindings):
            print(l)

    def error_name(e):
        err = e.args[0] if e.args else None
        return err.name() if hasattr(err, "name") else str(e)

    if command == "create-acl":
        admin = AdminClient(conf)
        binding = AclBinding(*enums(parse_binding(args)))
        try:
            admin.create_acls([binding])[binding].result(30)
            print("ok")
        except KafkaException as e:
            print("error", error_name(e))
    elif command in ("describe-acls", "delete-acls"):
        admin = AdminClient(conf)
        f = AclBindingFilter(*enums(parse_binding(args)))
        try:
            if command == "describe-acls":
                out(admin.describe_acls(f).result(30))
            else:
                out(admin.delete_acls([f])[f].result(30))
        except KafkaException as e:
            print("error", error_name(e))
    elif command == "produce":
        topic, values = args[0], args[1:]
        p = Producer({**conf, "acks": "all", "retries": 0, "enable.idempotence": False,
                      "message.timeout.ms": 10000})
        failed = []
        for v in values:
            p.produce(topic, value=v.encode(),
                      on_delivery=lambda err, _m: failed.append(err) if err else None)
        p.flush(30)
        print("ok" if not failed else "error " + failed[0].name())
    elif command == "consume":
        topic, group, count = args[0], args[1], int(args[2])
        c = Consumer({**conf, "group.id": group, "auto.offset.reset": "earliest",
                      "enable.auto.commit": False})
        c.subscribe([topic])
        got = []
        deadline = time.time() + 30
        try:
            while len(got) < count and time.time() < deadline:
                m = c.poll(0.5)
                if m is None:
                    continue
                if m.error():
                    print("error", m.error().name())
                    return
                got.append(m.value().decode())
            c.commit(asynchronous=False)
        except KafkaException as e:
            print("error", error_name(e))
            return
        finally:
            c.close()
        for v in got:
            print(v)
    elif command == "topics":
        admin = AdminClient(conf)
        for t in sorted(admin.list_topics(timeout=30).topics):
            print(t)
    else:
        raise SystemExit(f"unknown command {command}")


# ---- kafka-python ----

def kafka_python_conf(bootstrap, user, password):
    conf = {"bootstrap_servers": bootstrap}
    if user != "-":
        conf.update({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                     "sasl_plain_username": user, "sasl_plain_password": password})
    return conf


def kafka_python(bootstrap, user, password, command, args):
    from kafka import KafkaProducer, KafkaConsumer
    from kafka.admin import (KafkaAdminClient, ACL, ACLFilter, ResourcePattern,
                             ResourcePatternFilter, ACLOperation, ACLPermissionType, ResourceType,
                             ACLResourcePatternType)
    from kafka.errors import KafkaError
    conf = kafka_python_conf(bootstrap, user, password)

    def out(acls):
        for l in sorted(line(a.resource_pattern.resource_type.value,
                             a.resource_pattern.resource_name,
                             a.resource_pattern.pattern_type.value, a.principal, a.host,
                             a.operation.value, a.permission_type.value) for a in acls):
            print(l)

    if command == "create-acl":
        rtype, name, pattern, principal, host, op, perm = parse_binding(args)
        admin = KafkaAdminClient(**conf)
        acl = ACL(principal=principal, host=host, operation=ACLOperation(op),
                  permission_type=ACLPermissionType(perm),
                  resource_pattern=ResourcePattern(ResourceType(rtype), name,
                                                   ACLResourcePatternType(pattern)))
        result = admin.create_acls([acl])
        if result["failed"]:
            err = result["failed"][0]
            print("error", getattr(err, "message", str(err)))
        else:
            print("ok")
    elif command in ("describe-acls", "delete-acls"):
        rtype, name, pattern, principal, host, op, perm = parse_binding(args)
        admin = KafkaAdminClient(**conf)
        f = ACLFilter(principal=principal, host=host, operation=ACLOperation(op),
                      permission_type=ACLPermissionType(perm),
                      resource_pattern=ResourcePatternFilter(ResourceType(rtype), name,
                                                             ACLResourcePatternType(pattern)))
        try:
            if command == "describe-acls":
                acls, _err = admin.describe_acls(f)
                out(acls)
            else:
                [(_f, matched, err)] = admin.delete_acls([f])
                if err is not None and getattr(err, "errno", 0) != 0:
                    print("error", err.message)
                    return
                out(matched)
        except KafkaError as e:
            print("error", e.message)
    elif command == "produce":
        topic, values = args[0], args[1:]
        p = KafkaProducer(**conf, acks="all", retries=0, max_block_ms=15000)
        try:
            for v in values:
                p.send(topic, value=v.encode()).get(timeout=30)
            print("ok")
        except KafkaError as e:
            print("error", e.message if hasattr(e, "message") else type(e).__name__)
        finally:
            p.close(timeout=5)
    elif command == "consume":
        topic, group, count = args[0], args[1], int(args[2])
        c = KafkaConsumer(**conf, group_id=group, auto_offset_reset="earliest",
                          enable_auto_commit=False, consumer_timeout_ms=20000)
        got = []
        try:
            c.subscribe([topic])
            for m in c:
                got.append(m.value.decode())
                if len(got) >= count:
                    break
            c.commit()
        except KafkaError as e:
            print("error", e.message if hasattr(e, "message") else type(e).__name__)
            return
        finally:
            c.close()
        for v in got:
            print(v)
    elif command == "topics":
        c = KafkaConsumer(**conf)
        for t in sorted(c.topics()):
            print(t)
        c.close()
    else:
        raise SystemExit(f"unknown command {command}")


def main():
    lib, bootstrap, user, password, command, args = (sys.argv[1], sys.argv[2], sys.argv[3],
                                                     sys.argv[4], sys.argv[5], sys.argv[6:])
    {"confluent": confluent, "kafka-python": kafka_python}[lib](bootstrap, user, password,
                                                                 command, args)


if __name__ == "__main__":
    main()
