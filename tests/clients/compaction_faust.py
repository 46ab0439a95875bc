#!/usr/bin/env python3
"""A Faust (faust-streaming) worker with a Table, against ringbroker: Faust creates the table's
changelog topic with cleanup.policy=compact and writes every update to it keyed; a second
worker restores the table from the (compacted) changelog.

  run BOOTSTRAP EVENTS      produce EVENTS events ("key-i%5") and count them per key in a
                            Table; prints "count<TAB>key<TAB>n" once all are counted
  restore BOOTSTRAP         a fresh worker (in-memory store) recovers the table from its
                            changelog; prints "count<TAB>key<TAB>n"

Needs `pip install faust-streaming` (optional check).
"""
import asyncio
import logging
import sys

import faust

APP = "cwfaust"
KEYS = 5


def make_app(bootstrap):
    app = faust.App(
        APP,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        topic_partitions=1,
        topic_replication_factor=1,
        web_enabled=False,
        producer_acks=-1,
    )
    events = app.topic("cw-events", key_type=str, value_type=str, partitions=1)
    counts = app.Table("counts", default=int, partitions=1)
    return app, events, counts


def main():
    command, bootstrap = sys.argv[1], sys.argv[2]
    total = int(sys.argv[3]) if command == "run" else 0
    app, events, counts = make_app(bootstrap)
    result = {}

    if command == "run":
        @app.agent(events)
        async def count(stream):
            async for key, _ in stream.items():
                counts[key] += 1

        @app.task
        async def feed():
            for i in range(total):
                await events.send(key=f"key-{i % KEYS}", value=str(i))

    @app.timer(interval=0.5)
    async def done():
        seen = {k: counts[k] for k in (f"key-{i}" for i in range(KEYS))}
        if command == "run" and sum(seen.values()) < total:
            return
        if command == "restore" and sum(seen.values()) == 0:
            return
        result.update(seen)
        # Let the changelog writes of the last updates be flushed.
        await asyncio.sleep(2)
        await app.stop()
        asyncio.get_event_loop().stop()

    logging.basicConfig(level=logging.WARNING)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass
    for key in sorted(result):
        print(f"count\t{key}\t{result[key]}")


if __name__ == "__main__":
    main()
