#!/usr/bin/env python3
"""Cluster part of scripts/bench (issue #15); called by it, not meant to be run by hand.

  bench-cluster.py failover --nodes NODES.json --topic T --partition P --runs N --json OUT
      With a producer running (confluent_kafka, acks=all, one record to partition P every
      ~5 ms), kill -9 the current leader of P, measure the time until Metadata (asked of a
      surviving broker) names another leader, and until the first acks=all produce sent at or
      after the kill is acknowledged; restart the killed broker with its own command line,
      wait until it is back in P's ISR; N times.  NODES.json: [{"id", "addr", "argv", "log",
      "pidfile"}]; the pid file is rewritten on restart (scripts/bench kills from it).
  bench-cluster.py report --dir target/bench --markdown docs/benchmarks.md
      Writes (or replaces) the section between the CLUSTER markers in the markdown page.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

BEGIN = "<!-- cluster (issue #15): written by scripts/bench (bench-cluster.py report) -->"
END = "<!-- end of cluster section -->"


def metadata(admin, topic, partition):
    """(leader, isr, replicas) of the partition, or None when no broker answered in time."""
    try:
        md = admin.list_topics(topic=topic, timeout=1.0)
    except Exception:  # a timeout or a transport error: ask again
        return None
    t = md.topics.get(topic)
    if t is None or t.error is not None or partition not in t.partitions:
        return None
    p = t.partitions[partition]
    return p.leader, list(p.isrs), list(p.replicas)


def controller_id(binary, addr):
    try:
        out = subprocess.run([binary, "cluster", "-b", addr, "--format", "json", "info"],
                             capture_output=True, text=True, timeout=5).stdout
        return json.loads(out).get("controller_id")
    except Exception:
        return None


def failover(args):
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    nodes = {n["id"]: n for n in json.load(open(args.nodes))}
    addrs = {i: n["addr"] for i, n in nodes.items()}
    bootstrap = ",".join(addrs.values())

    acks = []  # (partition, sent_at, acked_at, error or None), monotonic seconds
    parts = list(range(args.partitions))
    lock = threading.Lock()
    stop = threading.Event()
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 0,
        "message.timeout.ms": 60000,
        "retry.backoff.ms": 10,
        "retry.backoff.max.ms": 100,
        "reconnect.backoff.ms": 10,
        "reconnect.backoff.max.ms": 100,
        "topic.metadata.refresh.fast.interval.ms": 20,
        "enable.idempotence": False,
        "log_level": 2,
    })

    def produce_loop():
        value = b"x" * 100
        n = 0
        while not stop.is_set():
            sent = time.monotonic()
            part = parts[n % len(parts)]
            n += 1

            def done(err, _msg, sent=sent, part=part):
                with lock:
                    acks.append((part, sent, time.monotonic(), None if err is None else str(err)))

            try:
                producer.produce(args.topic, value=value, partition=part, on_delivery=done)
            except BufferError:
                pass
            producer.poll(0.002)
        producer.flush(30)

    thread = threading.Thread(target=produce_loop, daemon=True)
    thread.start()

    def admin_for(ids):
        return AdminClient({"bootstrap.servers": ",".join(addrs[i] for i in ids),
                            "reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 100,
                            "log_level": 2})

    def wait_full_isr(admin, deadline_s, preferred=False):
        """{partition: metadata} once every partition has a leader and every broker in its
        ISR (and, with `preferred`, is led by its preferred replica), or None."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            ms = {p: metadata(admin, args.topic, p) for p in parts}
            if all(m and m[0] >= 0 and sorted(m[1]) == sorted(nodes) and
                   (not preferred or m[0] == m[2][0]) for m in ms.values()):
                return ms
            time.sleep(0.05)
        return None

    runs = []
    admin_all = admin_for(sorted(nodes))
    if wait_full_isr(admin_all, 60) is None:
        sys.exit("bench-cluster: partition never had every broker in its ISR")
    time.sleep(1.0)
    for run in range(args.runs):
        if wait_full_isr(admin_all, 120) is None:
            sys.exit(f"bench-cluster: run {run}: the ISR is not complete after 120 s")
        # The controller moves leadership back to the preferred replica (the first of the
        # replicas) once it is in the ISR again: wait for that (60 s at most), so that it does
        # not happen during the measurement, then for the same leaders twice, 0.5 s apart.
        ms = wait_full_isr(admin_all, 60, preferred=True) or wait_full_isr(admin_all, 60)
        while True:
            time.sleep(0.5)
            ms2 = wait_full_isr(admin_all, 60)
            if ms2 and all(ms2[p][0] == ms[p][0] for p in parts):
                break
            ms = ms2 or ms
        # Alternate: even runs kill a leader that is not the active controller, odd runs the
        # leader that is (when a partition has it as leader).
        ctrl0 = controller_id(args.binary, addrs[ms[parts[0]][0]])
        want_ctrl = run % 2 == 1
        pick = [p for p in parts if (ms[p][0] == ctrl0) == want_ctrl] or parts
        partition = pick[0]
        m = ms[partition]
        old = m[0]
        preferred = m[2][0]
        ctrl = ctrl0
        survivors = [i for i in sorted(nodes) if i != old]
        admin = admin_for(survivors)
        metadata(admin, args.topic, partition)  # connect before the kill
        pid = int(open(nodes[old]["pidfile"]).read())
        # A second, independent client: `ringbroker produce --acks -1` (routes by Metadata),
        # started again every 20 ms after a failure, bootstrapping from the survivors.
        probe = {}

        def cli_probe(t0):
            while time.monotonic() - t0 < 60:
                try:
                    ok = subprocess.run(
                        [args.binary, "produce", "-b", ",".join(addrs[i] for i in survivors),
                         "--acks", "-1", "-p", str(partition), args.topic],
                        input="probe\n", capture_output=True, text=True, timeout=10).returncode == 0
                except subprocess.TimeoutExpired:
                    ok = False
                if ok:
                    probe["s"] = time.monotonic() - t0
                    return
                time.sleep(0.02)

        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        prober = threading.Thread(target=cli_probe, args=(t0,), daemon=True)
        prober.start()
        new_leader, t_meta = None, None
        while time.monotonic() - t0 < 60:
            mm = metadata(admin, args.topic, partition)
            if mm and mm[0] >= 0 and mm[0] != old:
                new_leader, t_meta = mm[0], time.monotonic() - t0
                break
            time.sleep(0.01)
        t_ack = None
        while time.monotonic() - t0 < 60:
            with lock:
                ok = [a for q, s, a, e in acks if q == partition and s >= t0 and e is None]
            if ok:
                t_ack = min(ok) - t0
                break
            time.sleep(0.01)
        prober.join(70)
        with lock:
            errors = sorted({e for _q, s, a, e in acks if a >= t0 and e is not None})
        # Restart the killed broker with its own command line and wait for it to rejoin.
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # not our child (started by scripts/bench): the kernel reaps it on our exit
        t_restart = time.monotonic()
        log = open(nodes[old]["log"], "ab")
        proc = subprocess.Popen(nodes[old]["argv"], stdout=log, stderr=log, start_new_session=True)
        with open(nodes[old]["pidfile"], "w") as f:
            f.write(str(proc.pid))
        back = wait_full_isr(admin_all, 120)
        rejoin_s = time.monotonic() - t_restart if back else None
        r = {"run": run + 1, "partition": partition, "killed": old, "killed_was_controller": ctrl == old,
             "controller_before": ctrl, "killed_was_preferred": old == preferred, "new_leader": new_leader,
             "metadata_new_leader_s": t_meta, "first_ack_s": t_ack, "cli_ack_s": probe.get("s"),
             "rejoin_isr_s": rejoin_s, "producer_errors": errors}
        print(json.dumps(r), flush=True)
        runs.append(r)
        if back is None:
            break
    stop.set()
    thread.join(60)
    with lock:
        total = len(acks)
        failed = sum(1 for _q, _s, _a, e in acks if e is not None)
    json.dump({"topic": args.topic, "partitions": args.partitions, "runs": runs,
               "producer_records": total, "producer_failed": failed}, open(args.json, "w"), indent=1)


def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None


def fmt(v, unit="", nd=1):
    return "n/a" if v is None else f"{v:,.{nd}f}{unit}"


def report(args):
    d = args.dir
    run = dict(line.rstrip("\n").split("=", 1) for line in open(f"{d}/run.txt") if "=" in line)
    out = [BEGIN, "", "## Cluster (issue #15)", ""]
    out.append(f"Run {run.get('date')} ({run.get('mode')} mode, commit {run.get('commit')}), "
               f"{run.get('cpus')} CPUs ({run.get('cpu')}, {run.get('hypervisor') or 'bare metal'}), "
               f"{run.get('memory')} memory, data on {run.get('filesystem')}, kernel {run.get('kernel')}; "
               f"{run.get('duration_s')} s per run after {run.get('warmup_s')} s warm-up.")
    out.append("")
    out.append("**All three brokers and the load generator share this machine's "
               f"{run.get('cpus')} CPUs**: broker 1 is pinned to CPU 0, broker 2 to CPU 1, broker 3 "
               "to CPU 0 (`--cores`, one shard each); their quorum threads and the generator are "
               "unpinned. The single broker of the comparison runs one shard on CPU 0 with the "
               "same unpinned generator. Every byte is written three times (leader and two "
               "follower fetches), on one disk, and crosses loopback twice more, so RF=3 on one "
               "machine measures the cost of replication on shared CPUs and one disk, not what "
               "three machines would do.")
    out.append("")
    # Machine limits of the same run.
    lim = []
    ip = load(f"{d}/iperf3.json")
    if ip:
        lim.append(("iperf3 loopback, one stream", ip["end"]["sum_received"]["bits_per_second"] / 1e9, "Gbit/s"))
    ipz = load(f"{d}/iperf3-zerocopy.json")
    if ipz:
        lim.append(("iperf3 loopback, one stream, -Z", ipz["end"]["sum_received"]["bits_per_second"] / 1e9, "Gbit/s"))
    for name, label in [("fio-write", "fio sequential buffered write, 1 MiB"),
                        ("fio-write-sustained", "fio sequential write incl. final fsync (sustained)"),
                        ("fio-sync-1m", "fio write + fdatasync, 1 MiB"),
                        ("fio-sync-4k", "fio write + fdatasync, 4 KiB")]:
        f = load(f"{d}/{name}.json")
        if f:
            w = f["jobs"][0]["write"]
            lim.append((label, w["bw_bytes"] / 1e6, "MB/s"))
            if name.startswith("fio-sync"):
                lim.append((label + " (IOPS)", w["iops"], "fsyncs/s"))
    mf = load(f"{d}/fio-memfill.json")
    if mf:
        lim.append(("fio buffered write into tmpfs", mf["jobs"][0]["write"]["bw_bytes"] / 1e6, "MB/s"))
    if lim:
        out += ["Machine limits, measured in the same run:", "", "| limit | value |", "|---|---:|"]
        out += [f"| {n} | {v:,.1f} {u} |" for n, v, u in lim]
        out.append("")

    c = f"{d}/cluster"
    rows = [("single broker, RF=1", "rf1"), ("3 brokers, RF=3", "rf3")]
    out += ["### Replicated produce, acks=all", "",
            "`ringbroker bench produce`: 3 partitions, 4 producer connections, 1 KiB records, "
            "1 MiB batches, acks=all; latency open loop at 50% of the measured maximum (from the "
            "scheduled send time to the acknowledgement).", "",
            "| setup | MB/s | records/s | p99 at 50% (ms) | p50 at 50% (ms) | p99.9 at 50% (ms) |",
            "|---|---:|---:|---:|---:|---:|"]
    res = {}
    for label, key in rows:
        p = load(f"{c}/produce-{key}.json")
        lat = load(f"{c}/latency-{key}.json")
        res[key] = (p, lat)
        ll = (lat or {}).get("latency_ms") or {}
        out.append(f"| {label} | {fmt(p and p['mb_per_s'])} | {fmt(p and p['records_per_s'], nd=0)} | "
                   f"{fmt(ll.get('p99'), nd=2)} | {fmt(ll.get('p50'), nd=2)} | {fmt(ll.get('p999'), nd=2)} |")
    p1, l1 = res["rf1"]
    p3, l3 = res["rf3"]
    if p1 and p3 and p1["mb_per_s"] > 0:
        line = f"RF=3 / RF=1: throughput {p3['mb_per_s'] / p1['mb_per_s']:.2f}x"
        a = ((l1 or {}).get("latency_ms") or {}).get("p99")
        b = ((l3 or {}).get("latency_ms") or {}).get("p99")
        if a and b:
            line += (f"; p99 latency at 50% {b / a:.2f}x (each at half of its own maximum, so RF=3 "
                     f"carries {p3['mb_per_s'] / p1['mb_per_s']:.2f}x the load of RF=1 there)")
        out += ["", line + "."]
    rdk = [(lbl, load(f"{c}/rdk-{k}.json")) for lbl, k in
           [("single broker, RF=1", "rf1"), ("3 brokers, RF=3", "rf3")]]
    if any(r for _, r in rdk):
        out += ["", "The same from librdkafka's rdkafka_performance (one partition, 1,000-byte records, "
                "1 MiB batch.size, linger 5 ms, acks=all):", "",
                "| setup | MB/s | records/s |", "|---|---:|---:|"]
        for lbl, r in rdk:
            out.append(f"| {lbl} | {fmt(r and r['mb_per_s'])} | {fmt(r and r['records_per_s'], nd=0)} |")
    out.append("")

    fo = load(f"{c}/failover.json")
    out += ["### Time to a new leader after kill -9", ""]
    if fo and fo["runs"]:
        rs = fo["runs"]
        ctl = sum(1 for r in rs if r["killed_was_controller"])
        out.append(f"Topic `{fo['topic']}` ({fo['partitions']} partitions, RF=3), a confluent_kafka "
                   "producer sending one 100-byte record every ~2 ms with acks=all, round robin over "
                   "the partitions, throughout. Each run waits until every broker is in every ISR "
                   "and the preferred replicas lead, kills the leader of one partition with SIGKILL "
                   "(even runs: a leader that is not the active controller; odd runs: the one that "
                   "is, so the quorum must elect a new controller first), and measures from the kill "
                   "until Metadata from a surviving broker names another leader, and until the first "
                   "record to that partition sent at or after the kill is acknowledged (acks=all); "
                   "independently, `ringbroker produce --acks -1` to that partition (bootstrapping "
                   "from the survivors) is started again 20 ms after each failure until one is "
                   "acknowledged. Then it restarts the killed broker with its command line and "
                   "measures until it is back in the ISR of every partition. Metadata is polled "
                   "every 10 ms.")
        out += ["", "| run | partition | killed | was controller | new leader | Metadata names new leader (s) | "
                "first acks=all ack, librdkafka (s) | first acks=all ack, `ringbroker produce` (s) | "
                "rejoined every ISR after restart (s) |", "|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
        for r in rs:
            out.append(f"| {r['run']} | {r.get('partition', 0)} | {r['killed']} | {'yes' if r['killed_was_controller'] else 'no'} | "
                       f"{r['new_leader']} | {fmt(r['metadata_new_leader_s'], nd=2)} | "
                       f"{fmt(r['first_ack_s'], nd=2)} | {fmt(r.get('cli_ack_s'), nd=2)} | "
                       f"{fmt(r['rejoin_isr_s'], nd=2)} |")
        for title, sel in [("all runs", rs),
                           ("leader only (not the controller)", [r for r in rs if not r["killed_was_controller"]]),
                           ("leader that was also the active controller", [r for r in rs if r["killed_was_controller"]])]:
            if not sel:
                continue
            out += ["", f"| {title}: {len(sel)} run(s) | median (s) | max (s) |", "|---|---:|---:|"]
            for key, lbl in [("metadata_new_leader_s", "Metadata names a new leader"),
                             ("first_ack_s", "next acks=all produce acknowledged (librdkafka producer)"),
                             ("cli_ack_s", "acks=all produce acknowledged (`ringbroker produce` retried every 20 ms)"),
                             ("rejoin_isr_s", "restarted broker back in every ISR")]:
                v = [r.get(key) for r in sel if r.get(key) is not None]
                missing = len(sel) - len(v)
                note = f" ({missing} run(s) without one)" if missing else ""
                out.append(f"| {lbl}{note} | {fmt(statistics.median(v) if v else None, nd=2)} | "
                           f"{fmt(max(v) if v else None, nd=2)} |")
        out += ["", f"The producer sent {fo['producer_records']:,} records over all runs; "
                f"{fo['producer_failed']:,} of them failed (delivery error after librdkafka's retries)."]
        errs = sorted({e for r in rs for e in r["producer_errors"]})
        if errs:
            out.append("Errors seen: " + "; ".join(f"`{e}`" for e in errs[:5]) + ".")
    else:
        out.append("Not measured in this run (see target/bench/cluster/failover.log).")
    out.append("")
    lines = [line.rstrip("\n") for line in open(f"{d}/commands.txt")]
    mark = lines.index("# cluster (issue #15)") if "# cluster (issue #15)" in lines else len(lines)
    cmds = [x for x in lines[:mark] if x.startswith(("timeout ", "iperf3", "fio"))
            and ("iperf3" in x or " fio " in x)] + lines[mark + 1:]
    out += ["### Commands", "", "`scripts/bench --cluster-only` (or the cluster part of `scripts/bench`) ran:", "", "```"]
    out += cmds
    out += ["```", "", "Caveats: the time to a new leader is dominated by the controller's fencing "
            "timeout (a broker not heard from for 2 s is fenced; heartbeats every 250 ms), plus "
            "a new controller election when the killed broker was the active controller; the "
            "producer's figure adds librdkafka's metadata refresh and retry back-off (set to "
            "20 ms and 10-100 ms here). Each run starts 5 s after the previous run's topic was deleted: "
            "right after DeleteTopics of a replicated topic holding about a gigabyte per broker, "
            "acks=all produces to other topics stalled for up to several hundred ms for a few "
            "seconds (a known issue, reported). Quick mode runs are short (seconds), so throughput "
            "figures carry page-cache and writeback noise.", "", END]
    text = open(args.markdown).read() if os.path.exists(args.markdown) else ""
    section = "\n".join(out) + "\n"
    if BEGIN in text and END in text:
        a = text.index(BEGIN)
        b = text.index(END) + len(END)
        text = text[:a] + section.rstrip("\n") + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    open(args.markdown, "w").write(text)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("failover")
    f.add_argument("--nodes", required=True)
    f.add_argument("--topic", required=True)
    f.add_argument("--partitions", type=int, default=3)
    f.add_argument("--runs", type=int, default=5)
    f.add_argument("--binary", required=True)
    f.add_argument("--json", required=True)
    r = sub.add_parser("report")
    r.add_argument("--dir", required=True)
    r.add_argument("--markdown", required=True)
    a = ap.parse_args()
    failover(a) if a.cmd == "failover" else report(a)


if __name__ == "__main__":
    main()
