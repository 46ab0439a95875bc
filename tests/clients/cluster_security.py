#!/usr/bin/env python3
"""cluster_replication.py's commands (create, produce, consume) with every client configured
for a secured listener, driven from crates/ringbroker/tests/cluster_security.rs.

  RB_CLIENT_CONFIG='{"security.protocol": "SASL_SSL", ...}' cluster_security.py COMMAND ...

RB_CLIENT_CONFIG is a JSON object of librdkafka properties merged into the configuration of
every producer, consumer and admin client the command makes.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_replication as base  # noqa: E402

EXTRA = json.loads(os.environ.get("RB_CLIENT_CONFIG", "{}"))


def configured(cls):
    def make(config, **kwargs):
        return cls({**config, **EXTRA}, **kwargs)

    return make


base.Producer = configured(base.Producer)
base.Consumer = configured(base.Consumer)
base.AdminClient = configured(base.AdminClient)

if __name__ == "__main__":
    base.main()
