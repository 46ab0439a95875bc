#!/usr/bin/env python3
"""Cluster admin through kafka-python's KafkaAdminClient, driven from
crates/ringbroker/tests/cluster_metadata.rs. Each command prints one JSON line.

  describe BOOTSTRAP                      describe_cluster: cluster id, controller, brokers
  create BOOTSTRAP TOPIC PARTITIONS RF    create_topics (RF -1: the cluster's default)
  grow BOOTSTRAP TOPIC TOTAL              create_partitions
  delete BOOTSTRAP TOPIC                  delete_topics
(create, grow and delete print {"ok": true} or {"error": NAME}; kafka-python sends them to
the controller.)
  topic BOOTSTRAP TOPIC                   describe_topics: partition -> [leader, replicas, isr]
  group BOOTSTRAP GROUP                   describe_groups (through the group's coordinator)
"""
import json
import sys

from kafka.admin import KafkaAdminClient, NewPartitions, NewTopic
from kafka.errors import KafkaError


def admin(bootstrap):
    return KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=30000)


def error_name(e):
    return type(e).__name__


def main():
    command, bootstrap = sys.argv[1], sys.argv[2]
    a = admin(bootstrap)
    out = {}
    try:
        if command == "describe":
            d = a.describe_cluster()
            out = {
                "cluster_id": d["cluster_id"],
                "controller_id": d["controller_id"],
                "brokers": sorted(b["broker_id"] for b in d["brokers"]),
            }
        elif command == "create":
            topic, partitions, rf = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
            a.create_topics([NewTopic(topic, partitions, rf)])
            out = {"ok": True}
        elif command == "grow":
            a.create_partitions({sys.argv[3]: NewPartitions(int(sys.argv[4]))})
            out = {"ok": True}
        elif command == "delete":
            a.delete_topics([sys.argv[3]])
            out = {"ok": True}
        elif command == "topic":
            [t] = a.describe_topics([sys.argv[3]])
            out = {
                str(p["partition_index"]): [p["leader_id"], sorted(p["replica_nodes"]), sorted(p["isr_nodes"])]
                for p in t["partitions"]
            }
        elif command == "group":
            g = a.describe_groups([sys.argv[3]])[sys.argv[3]]
            out = {"group": sys.argv[3], "state": g["group_state"]}
        else:
            raise SystemExit("unknown command " + command)
    except KafkaError as e:
        out = {"error": error_name(e)}
    finally:
        a.close()
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
