#!/usr/bin/env python3
"""The TLS part of scripts/bench (issue #16).

  bench-tls.py report --dir target/bench --markdown docs/benchmarks.md
      Reads DIR/tls/{produce,consume}-{plain,tls}-{1,2}.json (`ringbroker bench --json` results
      of runs that alternated between a PLAINTEXT and an SSL listener of one broker) and
      DIR/run.txt, and writes (or replaces) the section between the TLS markers in the markdown
      page: MB/s of each run, the TLS/plaintext ratios of the means, and CPU per MB of the
      broker and of the load generator.
"""
import argparse
import json
import os

BEGIN = "<!-- tls (issue #16): written by scripts/bench (bench-tls.py report) -->"
END = "<!-- end of TLS section -->"
LISTENERS = [("plain", "PLAINTEXT"), ("tls", "SSL (TLS)")]


def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None


def fmt(v, nd=1):
    return "n/a" if v is None else f"{v:,.{nd}f}"


def cpu_ms_per_mb(r, key):
    """CPU milliseconds per MB moved: average cores over the command's wall time divided by the
    throughput (the wall time includes connecting, so this slightly overstates it)."""
    if not r or r.get(key) is None or not r.get("mb_per_s"):
        return None
    return r[key] * 1000.0 / r["mb_per_s"]


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def section(d):
    run = {}
    if os.path.exists(f"{d}/run.txt"):
        run = dict(line.rstrip("\n").split("=", 1) for line in open(f"{d}/run.txt") if "=" in line)
    t = f"{d}/tls"
    out = [BEGIN, "", "## TLS against plaintext (issue #16)", ""]
    out.append(f"Run {run.get('date')} ({run.get('mode')} mode, commit {run.get('commit')}), "
               f"{run.get('cpus')} CPUs ({run.get('cpu')}, {run.get('hypervisor') or 'bare metal'}), "
               f"kernel {run.get('kernel')}; {run.get('duration_s')} s per produce run after "
               f"{run.get('warmup_s')} s warm-up.")
    out.append("")
    out.append("One broker, one shard on CPU 0, with two listeners: `PLAINTEXT://127.0.0.1:P1` and "
               "`SSL://127.0.0.1:P2` (rustls; certificate and CA made with `openssl` for the run, EC "
               "P-256 keys). The load generator (`ringbroker bench`) is pinned to CPU 1 and connects "
               "to one listener or the other (`--security-protocol SSL --tls-ca-file ca.crt`); the "
               "runs alternate (plaintext, TLS, plaintext, TLS), so a drift of the machine shows as "
               "a difference between two runs of one listener. Produce: 2 partitions, 4 producer "
               "connections, 1 KiB records, 16 KiB batches, acks=1, 5 requests in flight each, one "
               "new topic per run. Fetch: 2 consumer connections read the same topic (written once "
               "over plaintext, then read once to have it in the page cache) from the start to its "
               "end. CPU per MB: the process's CPU time (user + system, all threads) during the "
               "command divided by the megabytes it moved.")
    out.append("")
    kinds = [("produce", "Produce"), ("consume", "Fetch (consume from the page cache)")]
    summary = []
    for kind, title in kinds:
        out += [f"### {title}", "",
                "| run | listener | MB/s | records/s | broker CPU cores | broker CPU ms/MB | client CPU ms/MB |",
                "|---:|---|---:|---:|---:|---:|---:|"]
        # In the order they ran: plaintext, TLS, plaintext, TLS.
        for n, (i, (key, name)) in enumerate(((i, l) for i in (1, 2) for l in LISTENERS), 1):
            r = load(f"{t}/{kind}-{key}-{i}.json")
            out.append(f"| {n} | {name} | {fmt(r and r['mb_per_s'])} | "
                       f"{fmt(r and r['records_per_s'], 0)} | {fmt(r and r.get('broker_cores'), 2)} | "
                       f"{fmt(cpu_ms_per_mb(r, 'broker_cores'), 2)} | {fmt(cpu_ms_per_mb(r, 'client_cores'), 2)} |")
        means = {}
        for key, _name in LISTENERS:
            rs = [load(f"{t}/{kind}-{key}-{i}.json") for i in (1, 2)]
            means[key] = (mean([r and r["mb_per_s"] for r in rs]),
                          mean([cpu_ms_per_mb(r, "broker_cores") for r in rs]),
                          mean([cpu_ms_per_mb(r, "client_cores") for r in rs]))
        (pm, pb, pc), (tm, tb, tc) = means["plain"], means["tls"]
        out += ["", f"Means: plaintext {fmt(pm)} MB/s, TLS {fmt(tm)} MB/s; **TLS/plaintext "
                f"throughput {fmt(ratio(tm, pm), 2)}x**, broker CPU per MB "
                f"{fmt(ratio(tb, pb), 2)}x, client CPU per MB {fmt(ratio(tc, pc), 2)}x.", ""]
        summary.append((title, pm, tm, ratio(tm, pm), ratio(tb, pb)))
    fill = load(f"{t}/fill.json")
    if fill:
        out += [f"The topic read by the Fetch runs holds {fill['bytes'] / 1e9:,.2f} GB of record values "
                f"({fill['records']:,} records in 1 MiB batches).", ""]
    cmds = []
    if os.path.exists(f"{d}/commands.txt"):
        lines = [line.rstrip("\n") for line in open(f"{d}/commands.txt")]
        if "# tls (issue #16)" in lines:
            for line in lines[lines.index("# tls (issue #16)") + 1:]:
                if line.startswith("# "):
                    break
                cmds.append(line)
    out += ["### Commands", "", "`scripts/bench --tls-only` (or the TLS part of `scripts/bench`) ran:", "", "```"]
    out += cmds
    out += ["```", "", "Caveats: the broker's TLS path here is rustls in user space (this kernel has no "
            "kTLS), so every byte the broker sends is read from the page cache into memory and "
            "encrypted instead of being spliced from the file to the socket, and every byte it "
            "receives is decrypted before it is appended. The generator has the other CPU to "
            "itself; a side using about one core is what limits a figure (plaintext Fetch, "
            "spliced by the broker, is bounded by the generator). CPU per MB counts the "
            "command's whole run time (connecting included), so it overstates short runs. Quick "
            "mode runs are short (seconds; a quick Fetch run well under one) and carry page-cache "
            "and writeback noise.", "", END]
    return "\n".join(out) + "\n", summary


def report(args):
    text = open(args.markdown).read() if os.path.exists(args.markdown) else ""
    new, summary = section(args.dir)
    if BEGIN in text and END in text:
        a = text.index(BEGIN)
        b = text.index(END) + len(END)
        text = text[:a] + new.rstrip("\n") + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + new
    open(args.markdown, "w").write(text)
    for title, pm, tm, r, c in summary:
        print(f"{title}: plaintext {fmt(pm)} MB/s, TLS {fmt(tm)} MB/s, TLS/plaintext {fmt(r, 2)}x, "
              f"broker CPU/MB TLS/plaintext {fmt(c, 2)}x")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("report")
    r.add_argument("--dir", required=True)
    r.add_argument("--markdown", required=True)
    report(ap.parse_args())


if __name__ == "__main__":
    main()
