//! Results: one run as text and JSON (`RunReport`), and `bench report`, which turns the files
//! `scripts/bench` leaves in its output directory into `summary.json`, the markdown page and
//! the SVG plot.

use super::LoadArgs;
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Latency percentiles in milliseconds.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl From<&Histogram<u64>> for Latency {
    fn from(h: &Histogram<u64>) -> Latency {
        let ms = |ns: u64| ns as f64 / 1e6;
        Latency {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1e6,
        }
    }
}

/// The outcome of one `bench produce|consume|e2e` run.
#[derive(Serialize, Clone, Debug)]
pub struct RunReport {
    pub mode: String,
    pub label: String,
    pub bootstrap: String,
    pub topic: String,
    pub partitions: i32,
    pub record_size: u64,
    pub batch_bytes: u64,
    pub producers: usize,
    pub consumers: usize,
    pub acks: i16,
    pub compression: String,
    pub max_inflight: usize,
    /// Target records/s (open loop), if any.
    pub rate_target: Option<f64>,
    pub elapsed_s: f64,
    pub records: u64,
    /// Record-value bytes (produce, e2e) or record-batch bytes (consume).
    pub bytes: u64,
    pub mb_per_s: f64,
    pub records_per_s: f64,
    pub gbit_per_s: f64,
    /// produce: send (scheduled) to acknowledgement; e2e: send (scheduled) to consumption.
    pub latency_ms: Option<Latency>,
    /// e2e only: send (scheduled) to acknowledgement.
    pub ack_latency_ms: Option<Latency>,
    /// e2e only: records the consumers saw.
    pub consumed_records: Option<u64>,
    /// CPU cores the load generator used on average over the command's run time.
    pub client_cores: Option<f64>,
    /// The same for the broker named by `--broker-pid`.
    pub broker_cores: Option<f64>,
}

impl RunReport {
    pub fn new(mode: &str, args: &LoadArgs, records: u64, bytes: u64, elapsed_s: f64) -> Self {
        let per_s = |v: f64| if elapsed_s > 0.0 { v / elapsed_s } else { 0.0 };
        RunReport {
            mode: mode.to_string(),
            label: args.label.clone(),
            bootstrap: args.bootstrap.clone(),
            topic: args.topic.clone(),
            partitions: args.partitions,
            record_size: args.record_size,
            batch_bytes: args.batch_bytes,
            producers: args.producers,
            consumers: args.consumers,
            acks: args.acks,
            compression: args.compression.clone(),
            max_inflight: args.max_inflight,
            rate_target: args.rate,
            elapsed_s,
            records,
            bytes,
            mb_per_s: per_s(bytes as f64) / 1e6,
            records_per_s: per_s(records as f64),
            gbit_per_s: per_s(bytes as f64) * 8.0 / 1e9,
            latency_ms: None,
            ack_latency_ms: None,
            consumed_records: None,
            client_cores: None,
            broker_cores: None,
        }
    }

    pub fn with_latency(mut self, latency: Option<Latency>) -> Self {
        self.latency_ms = latency;
        self
    }

    pub fn text(&self) -> String {
        let mut out = format!(
            "{}{}: {} records, {:.1} MB in {:.2} s: {:.1} MB/s, {:.0} records/s, {:.2} Gbit/s",
            self.mode,
            if self.label.is_empty() {
                String::new()
            } else {
                format!(" [{}]", self.label)
            },
            self.records,
            self.bytes as f64 / 1e6,
            self.elapsed_s,
            self.mb_per_s,
            self.records_per_s,
            self.gbit_per_s
        );
        if let Some(r) = self.rate_target {
            out.push_str(&format!(" (target {r:.0} records/s)"));
        }
        let line = |name: &str, l: &Latency| {
            format!(
                "\n{name} latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}  (n={})",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
            )
        };
        match (self.mode.as_str(), &self.latency_ms) {
            ("e2e", Some(l)) => out.push_str(&line("end-to-end", l)),
            (_, Some(l)) => out.push_str(&line("ack", l)),
            _ => {}
        }
        if let Some(l) = &self.ack_latency_ms {
            out.push_str(&line("ack", l));
        }
        if let Some(c) = self.client_cores {
            out.push_str(&format!("\nCPU cores used: load generator {c:.2}"));
            if let Some(b) = self.broker_cores {
                out.push_str(&format!(", broker {b:.2}"));
            }
        }
        if let Some(c) = self.consumed_records {
            out.push_str(&format!("\nconsumed {c} records"));
        }
        out
    }
}

/// Prints the report and writes it as JSON when asked.
pub fn emit(report: &RunReport, json: Option<&Path>) -> Result<()> {
    println!("{}", report.text());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Directory holding the run's result files (written by scripts/bench).
    #[arg(long, default_value = "target/bench")]
    pub dir: std::path::PathBuf,
    /// Markdown page to (re)write; its "## Profile" section and what follows are kept.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub markdown: std::path::PathBuf,
    /// SVG plot to write.
    #[arg(long, default_value = "docs/benchmarks.svg")]
    pub svg: std::path::PathBuf,
}

/// The runs `scripts/bench` makes per shard count, by result file name.
const RUNS: [&str; 15] = [
    "produce-acks1",
    "produce-acksall",
    "consume",
    "latency-acks1",
    "latency-acksall",
    "e2e",
    "produce-100b",
    "tmpfs-produce-acks1",
    "tmpfs-latency-acks1",
    "produce-16k-acks1",
    "produce-16k-acksall",
    "latency-16k-acks1",
    "latency-16k-acksall",
    "floor-1m",
    "floor-16k",
];

/// Everything one `scripts/bench` run left in its directory.
struct Inputs {
    run: BTreeMap<String, String>,
    loopback_gbps: Option<f64>,
    loopback_zerocopy_gbps: Option<f64>,
    disk_write_gbps: Option<f64>,
    disk_sustained_gbps: Option<f64>,
    disk_sync_1m_gbps: Option<f64>,
    fdatasync_per_s: Option<f64>,
    fdatasync_p99_ms: Option<f64>,
    fdatasync_p999_ms: Option<f64>,
    fdatasync_max_ms: Option<f64>,
    /// Buffered write into tmpfs: the rate this machine fills fresh page-cache memory.
    memory_fill_gbps: Option<f64>,
    /// shard count -> run name -> report.
    shards: BTreeMap<u32, BTreeMap<String, Value>>,
    commands: String,
    rdkafka: Option<String>,
    profile: Option<String>,
}

fn load_json(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

impl Inputs {
    fn read(dir: &Path) -> Result<Inputs> {
        if !dir.is_dir() {
            bail!("{} does not exist: run scripts/bench first", dir.display());
        }
        let run = std::fs::read_to_string(dir.join("run.txt"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let gbps = |file: &str| {
            load_json(&dir.join(file))
                .and_then(|v| num(&v, "/end/sum_received/bits_per_second"))
                .map(|b| b / 1e9)
        };
        let fio =
            |file: &str, pointer: &str| load_json(&dir.join(file)).and_then(|v| num(&v, pointer));
        // A latency of fio's 4 KiB write+fdatasync job, in milliseconds.
        let fio_ms = |pointer: &str| fio("fio-sync-4k.json", pointer).map(|ns| ns / 1e6);
        let mut shards = BTreeMap::new();
        for n in [1u32, 2] {
            let mut runs = BTreeMap::new();
            for name in RUNS {
                if let Some(v) = load_json(&dir.join(format!("s{n}/{name}.json"))) {
                    runs.insert(name.to_string(), v);
                }
            }
            if !runs.is_empty() {
                shards.insert(n, runs);
            }
        }
        Ok(Inputs {
            run,
            loopback_gbps: gbps("iperf3.json"),
            loopback_zerocopy_gbps: gbps("iperf3-zerocopy.json"),
            disk_write_gbps: fio("fio-write.json", "/jobs/0/write/bw_bytes").map(|b| b * 8.0 / 1e9),
            disk_sustained_gbps: fio("fio-write-sustained.json", "/jobs/0/write/bw_bytes")
                .map(|b| b * 8.0 / 1e9),
            disk_sync_1m_gbps: fio("fio-sync-1m.json", "/jobs/0/write/bw_bytes")
                .map(|b| b * 8.0 / 1e9),
            fdatasync_per_s: fio("fio-sync-4k.json", "/jobs/0/write/iops"),
            fdatasync_p99_ms: fio_ms("/jobs/0/sync/lat_ns/percentile/99.000000"),
            fdatasync_p999_ms: fio_ms("/jobs/0/sync/lat_ns/percentile/99.900000"),
            fdatasync_max_ms: fio_ms("/jobs/0/sync/lat_ns/max"),
            memory_fill_gbps: fio("fio-memfill.json", "/jobs/0/write/bw_bytes")
                .map(|b| b * 8.0 / 1e9),
            shards,
            commands: std::fs::read_to_string(dir.join("commands.txt")).unwrap_or_default(),
            rdkafka: std::fs::read_to_string(dir.join("rdkafka_performance.txt")).ok(),
            profile: std::fs::read_to_string(dir.join("perf-report.txt")).ok(),
        })
    }

    fn get(&self, shards: u32, run: &str, pointer: &str) -> Option<f64> {
        self.shards
            .get(&shards)
            .and_then(|r| r.get(run))
            .and_then(|v| num(v, pointer))
    }

    fn shard_summary(&self, n: u32) -> Value {
        json!({
            "produce_gbps": self.get(n, "produce-acks1", "/gbit_per_s"),
            "produce_records_per_s": self.get(n, "produce-acks1", "/records_per_s"),
            "produce_acks_all_gbps": self.get(n, "produce-acksall", "/gbit_per_s"),
            "fetch_gbps": self.get(n, "consume", "/gbit_per_s"),
            "produce_p99_ms": self.get(n, "latency-acks1", "/latency_ms/p99"),
            "produce_acks_all_p99_ms": self.get(n, "latency-acksall", "/latency_ms/p99"),
            "e2e_p99_ms": self.get(n, "e2e", "/latency_ms/p99"),
            "small_records_per_s": self.get(n, "produce-100b", "/records_per_s"),
            "small_gbps": self.get(n, "produce-100b", "/gbit_per_s"),
            "tmpfs_produce_gbps": self.get(n, "tmpfs-produce-acks1", "/gbit_per_s"),
            "tmpfs_produce_p99_ms": self.get(n, "tmpfs-latency-acks1", "/latency_ms/p99"),
            "produce_16k_gbps": self.get(n, "produce-16k-acks1", "/gbit_per_s"),
            "produce_16k_acks_all_gbps": self.get(n, "produce-16k-acksall", "/gbit_per_s"),
            "produce_16k_p99_ms": self.get(n, "latency-16k-acks1", "/latency_ms/p99"),
            "produce_16k_acks_all_p99_ms": self.get(n, "latency-16k-acksall", "/latency_ms/p99"),
            "produce_unloaded_p50_ms": self.get(n, "floor-1m", "/latency_ms/p50"),
            "produce_unloaded_p99_ms": self.get(n, "floor-1m", "/latency_ms/p99"),
            "produce_16k_unloaded_p50_ms": self.get(n, "floor-16k", "/latency_ms/p50"),
            "produce_16k_unloaded_p99_ms": self.get(n, "floor-16k", "/latency_ms/p99"),
        })
    }

    fn summary(&self) -> Value {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let top =
            |run: &str, pointer: &str| self.get(2, run, pointer).or(self.get(1, run, pointer));
        let produce = top("produce-acks1", "/gbit_per_s");
        let fetch = top("consume", "/gbit_per_s");
        let p99 = top("latency-acks1", "/latency_ms/p99");
        let p99_all = top("latency-acksall", "/latency_ms/p99");
        let scaling = ratio(
            self.get(2, "produce-acks1", "/gbit_per_s"),
            self.get(1, "produce-acks1", "/gbit_per_s"),
        );
        let target = |name: &str, value: Option<f64>, op: &str, bound: f64| {
            let met = value.map(|v| if op == ">=" { v >= bound } else { v <= bound });
            json!({ "target": name, "measured": value, "bound": format!("{op} {bound}"), "met": met })
        };
        json!({
            "mode": self.run.get("mode"),
            "date": self.run.get("date"),
            "commit": self.run.get("commit"),
            "loopback_gbps": self.loopback_gbps,
            "loopback_zerocopy_gbps": self.loopback_zerocopy_gbps,
            "disk_write_gbps": self.disk_write_gbps,
            "disk_sustained_gbps": self.disk_sustained_gbps,
            "disk_fdatasync_1m_gbps": self.disk_sync_1m_gbps,
            "fdatasync_per_s": self.fdatasync_per_s,
            "fdatasync_p99_ms": self.fdatasync_p99_ms,
            "fdatasync_p999_ms": self.fdatasync_p999_ms,
            "fdatasync_max_ms": self.fdatasync_max_ms,
            "memory_fill_gbps": self.memory_fill_gbps,
            "produce_gbps": produce,
            "produce_ratio_to_memory_fill": ratio(produce, self.memory_fill_gbps),
            "produce_ratio_to_loopback": ratio(produce, self.loopback_gbps),
            "produce_ratio_to_disk_sustained": ratio(produce, self.disk_sustained_gbps),
            "tmpfs_produce_gbps": top("tmpfs-produce-acks1", "/gbit_per_s"),
            "tmpfs_produce_ratio_to_loopback": ratio(top("tmpfs-produce-acks1", "/gbit_per_s"), self.loopback_gbps),
            "tmpfs_produce_p99_ms": top("tmpfs-latency-acks1", "/latency_ms/p99"),
            "tmpfs_produce_2_vs_1_shards": ratio(
                self.get(2, "tmpfs-produce-acks1", "/gbit_per_s"),
                self.get(1, "tmpfs-produce-acks1", "/gbit_per_s"),
            ),
            "produce_acks_all_gbps": top("produce-acksall", "/gbit_per_s"),
            "fetch_gbps": fetch,
            "fetch_ratio_to_loopback": ratio(fetch, self.loopback_gbps),
            "produce_p99_ms": p99,
            "produce_acks_all_p99_ms": p99_all,
            "e2e_p99_ms": top("e2e", "/latency_ms/p99"),
            "produce_16k_p99_ms": top("latency-16k-acks1", "/latency_ms/p99"),
            "produce_16k_acks_all_p99_ms": top("latency-16k-acksall", "/latency_ms/p99"),
            "produce_unloaded_p50_ms": top("floor-1m", "/latency_ms/p50"),
            "produce_16k_unloaded_p50_ms": top("floor-16k", "/latency_ms/p50"),
            "shards": {
                "1": self.shard_summary(1),
                "2": self.shard_summary(2),
            },
            "produce_2_vs_1_shards": scaling,
            "fetch_2_vs_1_shards": ratio(self.get(2, "consume", "/gbit_per_s"), self.get(1, "consume", "/gbit_per_s")),
            "produce_acks_all_2_vs_1_shards": ratio(
                self.get(2, "produce-acksall", "/gbit_per_s"),
                self.get(1, "produce-acksall", "/gbit_per_s"),
            ),
            "targets": [
                target("produce acks=1, 2 shards / loopback", ratio(self.get(2, "produce-acks1", "/gbit_per_s"), self.loopback_gbps), ">=", 0.40),
                target("fetch from page cache / loopback", ratio(self.get(2, "consume", "/gbit_per_s"), self.loopback_gbps), ">=", 0.70),
                target("produce p99 ms, acks=1 at 50%", self.get(2, "latency-acks1", "/latency_ms/p99"), "<=", 1.0),
                target("produce p99 ms, acks=all at 50%", self.get(2, "latency-acksall", "/latency_ms/p99"), "<=", 5.0),
                target("2 shards / 1 shard, produce acks=1", scaling, ">=", 1.7),
                target("(16 KiB batches) produce p99 ms, acks=1 at 50%", self.get(2, "latency-16k-acks1", "/latency_ms/p99"), "<=", 1.0),
                target("(16 KiB batches) produce p99 ms, acks=all at 50%", self.get(2, "latency-16k-acksall", "/latency_ms/p99"), "<=", 5.0),
                target("(tmpfs) produce acks=1, 2 shards / loopback", ratio(self.get(2, "tmpfs-produce-acks1", "/gbit_per_s"), self.loopback_gbps), ">=", 0.40),
                target("(tmpfs) produce p99 ms, acks=1 at 50%", self.get(2, "tmpfs-latency-acks1", "/latency_ms/p99"), "<=", 1.0),
                target("(tmpfs) 2 shards / 1 shard, produce acks=1", ratio(
                    self.get(2, "tmpfs-produce-acks1", "/gbit_per_s"),
                    self.get(1, "tmpfs-produce-acks1", "/gbit_per_s"),
                ), ">=", 1.7),
            ],
        })
    }
}

/// `bench report`: summary.json in the results directory, the markdown page, the SVG plot.
pub fn render(args: &ReportArgs) -> Result<()> {
    let inputs = Inputs::read(&args.dir)?;
    let summary = inputs.summary();
    let summary_path = args.dir.join("summary.json");
    std::fs::write(
        &summary_path,
        serde_json::to_string_pretty(&summary)? + "\n",
    )
    .with_context(|| format!("writing {}", summary_path.display()))?;
    let kept = std::fs::read_to_string(&args.markdown)
        .ok()
        .and_then(|old| old.find(PROFILE_HEADING).map(|i| old[i..].to_string()));
    let svg_name = args
        .svg
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "benchmarks.svg".into());
    let markdown = markdown(&inputs, &summary, &svg_name, kept.as_deref());
    std::fs::write(&args.markdown, markdown)
        .with_context(|| format!("writing {}", args.markdown.display()))?;
    std::fs::write(&args.svg, svg(&inputs))
        .with_context(|| format!("writing {}", args.svg.display()))?;
    Ok(())
}

const PROFILE_HEADING: &str = "## Profile";

fn fmt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) => format!("{v:.decimals$}"),
        None => "–".into(),
    }
}

fn fmt_ratio(v: Option<f64>, limit: Option<f64>) -> String {
    match (v, limit) {
        (Some(v), Some(l)) if l > 0.0 => format!("{:.2}", v / l),
        _ => "–".into(),
    }
}

fn markdown(inputs: &Inputs, summary: &Value, svg_name: &str, kept: Option<&str>) -> String {
    let run = |k: &str| inputs.run.get(k).cloned().unwrap_or_else(|| "?".into());
    let mut m = String::new();
    let _ = writeln!(m, "# Benchmarks\n");
    let _ = writeln!(
        m,
        "Generated by `scripts/bench{}` on {} at commit {} (everything above \"Profile\" is rewritten by each run). \
         Each figure is compared with a limit of this machine measured in the same run. \
         Throughput counts record bytes (values for produce, stored batches for fetch); Gbit/s = 10^9 bit/s.\n",
        if run("mode") == "quick" { " --quick" } else { "" },
        run("date"),
        run("commit")
    );
    let _ = writeln!(m, "![throughput and latency]({svg_name})\n");
    let _ = writeln!(m, "## Machine\n");
    let _ = writeln!(m, "| | |\n|---|---|");
    for (k, label) in [
        ("cpu", "CPU"),
        ("cpus", "CPUs"),
        ("hypervisor", "hypervisor"),
        ("memory", "memory"),
        ("kernel", "kernel"),
        ("filesystem", "data filesystem"),
        ("uname", "uname -a"),
    ] {
        let _ = writeln!(m, "| {label} | {} |", run(k).replace('|', "\\|"));
    }
    let _ = writeln!(
        m,
        "\nThe load generator (`ringbroker bench`) runs on the same CPUs as the broker: on a 2-core machine \
         every figure below is shared between client and server.\n"
    );

    let _ = writeln!(m, "## Limits of this machine (same run)\n");
    let _ = writeln!(m, "| limit | value | tool |\n|---|---|---|");
    let _ = writeln!(
        m,
        "| loopback TCP, one stream | {} Gbit/s | `iperf3 -c 127.0.0.1` |",
        fmt(inputs.loopback_gbps, 2)
    );
    let _ = writeln!(
        m,
        "| loopback TCP, one stream, zero-copy send | {} Gbit/s | `iperf3 -Z` |",
        fmt(inputs.loopback_zerocopy_gbps, 2)
    );
    let _ = writeln!(
        m,
        "| sequential buffered write (1 MiB blocks, into the page cache) | {} Gbit/s | `fio --rw=write --bs=1M` |",
        fmt(inputs.disk_write_gbps, 2)
    );
    let _ = writeln!(
        m,
        "| sequential write, sustained (final flush counted) | {} Gbit/s | `fio --rw=write --bs=1M --end_fsync=1` |",
        fmt(inputs.disk_sustained_gbps, 2)
    );
    let _ = writeln!(
        m,
        "| sequential write + fdatasync per 1 MiB | {} Gbit/s | `fio --fdatasync=1 --bs=1M` |",
        fmt(inputs.disk_sync_1m_gbps, 2)
    );
    let _ = writeln!(
        m,
        "| write + fdatasync per 4 KiB | {} syncs/s, p99 {} ms, p99.9 {} ms, max {} ms | `fio --fdatasync=1 --bs=4k` |",
        fmt(inputs.fdatasync_per_s, 0),
        fmt(inputs.fdatasync_p99_ms, 3),
        fmt(inputs.fdatasync_p999_ms, 3),
        fmt(inputs.fdatasync_max_ms, 3)
    );
    let _ = writeln!(
        m,
        "| buffered write into tmpfs (the rate fresh page-cache memory is filled) | {} Gbit/s | `fio --directory=/dev/shm/... --rw=write --bs=1M` |\n",
        fmt(inputs.memory_fill_gbps, 2)
    );

    let lo = inputs.loopback_gbps;
    let _ = writeln!(m, "## Throughput\n");
    let _ = writeln!(
        m,
        "2 partitions, 4 producer connections (2 consumers for fetch), 1 KiB records in 1 MiB batches unless noted. \
         Each run starts after `sync`, so earlier runs' writeback does not slow it. \
         1 shard: broker on CPU 0, load generator pinned to CPU 1; 2 shards: broker on CPUs 0 and 1, generator \
         unpinned on the same CPUs.\n"
    );
    let _ = writeln!(
        m,
        "| run | limit (ratio = figure / limit) | 1 shard | ratio | CPU client / broker | 2 shards | ratio | CPU client / broker | 2 / 1 shards |\n|---|---|---|---|---|---|---|---|---|"
    );
    let rows: [(&str, &str, Option<f64>, &str); 10] = [
        ("produce acks=1", "produce-acks1", lo, "loopback TCP"),
        (
            "produce acks=1",
            "produce-acks1",
            inputs.memory_fill_gbps,
            "tmpfs write",
        ),
        (
            "produce acks=1",
            "produce-acks1",
            inputs.disk_sustained_gbps,
            "sustained disk write",
        ),
        (
            "produce acks=1, data on tmpfs",
            "tmpfs-produce-acks1",
            lo,
            "loopback TCP",
        ),
        (
            "produce acks=all",
            "produce-acksall",
            inputs.disk_sync_1m_gbps,
            "write+fdatasync 1 MiB",
        ),
        (
            "produce acks=1, 16 KiB batches",
            "produce-16k-acks1",
            lo,
            "loopback TCP",
        ),
        (
            "produce acks=all, 16 KiB batches",
            "produce-16k-acksall",
            inputs.disk_sync_1m_gbps,
            "write+fdatasync 1 MiB",
        ),
        ("fetch from page cache", "consume", lo, "loopback TCP"),
        (
            "produce 100-byte records",
            "produce-100b",
            lo,
            "loopback TCP",
        ),
        (
            "produce 100-byte records",
            "produce-100b",
            inputs.disk_sustained_gbps,
            "sustained disk write",
        ),
    ];
    for (label, name, limit, limit_name) in rows {
        let cell = |n: u32| {
            let g = inputs.get(n, name, "/gbit_per_s");
            let r = inputs.get(n, name, "/records_per_s");
            (
                format!(
                    "{} Gbit/s ({} k rec/s)",
                    fmt(g, 2),
                    fmt(r.map(|r| r / 1e3), 0)
                ),
                fmt_ratio(g, limit),
                format!(
                    "{} / {}",
                    fmt(inputs.get(n, name, "/client_cores"), 2),
                    fmt(inputs.get(n, name, "/broker_cores"), 2)
                ),
                g,
            )
        };
        let (a, ra, ca, ga) = cell(1);
        let (b, rb, cb, gb) = cell(2);
        let _ = writeln!(
            m,
            "| {label} | {limit_name} {} Gbit/s | {a} | {ra} | {ca} | {b} | {rb} | {cb} | {} |",
            fmt(limit, 2),
            fmt_ratio(gb, ga)
        );
    }
    let _ = writeln!(
        m,
        "\nCPU: cores used on average over each command (load generator from getrusage, broker from \
         /proc/PID/stat with its io_uring io-wq workers); the machine has 2 in all.\n"
    );

    let _ = writeln!(m, "## Latency at 50% of the measured maximum\n");
    let _ = writeln!(
        m,
        "Open loop: each batch has a send time fixed in advance at half the records/s measured above; latency counts \
         from that time (coordinated-omission aware). Produce: to the acknowledgement. End-to-end: to the moment a \
         consumer holds the record (send time carried in each value). Milliseconds.\n"
    );
    let _ = writeln!(m, "| run | shards | rate (records/s) | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|---|---|");
    for (label, name) in [
        ("produce acks=1", "latency-acks1"),
        ("produce acks=all", "latency-acksall"),
        ("end-to-end acks=1", "e2e"),
        ("produce acks=1, data on tmpfs", "tmpfs-latency-acks1"),
        ("produce acks=1, 16 KiB batches", "latency-16k-acks1"),
        ("produce acks=all, 16 KiB batches", "latency-16k-acksall"),
        ("produce acks=1, unloaded (about 20 batches/s)", "floor-1m"),
        (
            "produce acks=1, 16 KiB batches, unloaded (about 500 batches/s)",
            "floor-16k",
        ),
    ] {
        for n in [1u32, 2] {
            if inputs.get(n, name, "/elapsed_s").is_none() {
                continue;
            }
            let l = |q: &str| fmt(inputs.get(n, name, &format!("/latency_ms/{q}")), 3);
            let _ = writeln!(
                m,
                "| {label} | {n} | {} | {} | {} | {} | {} | {} |",
                fmt(inputs.get(n, name, "/rate_target"), 0),
                l("p50"),
                l("p90"),
                l("p99"),
                l("p999"),
                l("max")
            );
        }
    }
    let _ = writeln!(m);

    let _ = writeln!(m, "## Targets (issue #6)\n");
    let _ = writeln!(m, "| target | measured | bound | met |\n|---|---|---|---|");
    if let Some(targets) = summary.get("targets").and_then(Value::as_array) {
        for t in targets {
            let met = match t.get("met").and_then(Value::as_bool) {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            };
            let _ = writeln!(
                m,
                "| {} | {} | {} | {met} |",
                t.get("target").and_then(Value::as_str).unwrap_or(""),
                fmt(t.get("measured").and_then(Value::as_f64), 3),
                t.get("bound").and_then(Value::as_str).unwrap_or(""),
            );
        }
    }
    let _ = writeln!(m);

    let _ = writeln!(m, "## Cross-check with other clients\n");
    match &inputs.rdkafka {
        Some(text) => {
            let _ = writeln!(
                m,
                "```\n{}\n```\n",
                text.trim()
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        None => {
            let _ = writeln!(m, "rdkafka_performance was not run.\n");
        }
    }

    let _ = writeln!(m, "## Commands\n");
    let _ = writeln!(
        m,
        "`$WORK` is a temporary directory on the repository's filesystem; `$ADDR` the broker's ephemeral port.\n"
    );
    let _ = writeln!(m, "```sh\n{}```\n", inputs.commands);
    match kept {
        Some(k) => m.push_str(k),
        None => {
            let _ = writeln!(m, "{PROFILE_HEADING}\n");
            match &inputs.profile {
                Some(p) => {
                    let top: Vec<&str> = p
                        .lines()
                        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                        .take(60)
                        .collect();
                    let _ = writeln!(m, "`perf report --no-children` of the 2-shard broker during produce acks=1:\n\n```\n{}\n```", top.join("\n"));
                }
                None => {
                    let _ = writeln!(m, "Not recorded yet: run `scripts/bench --profile`.");
                }
            }
        }
    }
    if !m.ends_with('\n') {
        m.push('\n');
    }
    m
}

/// Two panels: throughput bars against the machine's limits, and latency percentiles.
fn svg(inputs: &Inputs) -> String {
    const W: f64 = 900.0;
    const H: f64 = 900.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="20" y="28" font-size="16" font-weight="bold">Throughput (Gbit/s): ringbroker against this machine's limits, same run</text>"#
    );

    // Panel 1: horizontal bars.
    let mut bars: Vec<(String, Option<f64>, &str)> = vec![
        (
            "loopback TCP (iperf3)".into(),
            inputs.loopback_gbps,
            "#888888",
        ),
        (
            "loopback TCP -Z (iperf3)".into(),
            inputs.loopback_zerocopy_gbps,
            "#aaaaaa",
        ),
        (
            "buffered write (fio)".into(),
            inputs.disk_write_gbps,
            "#888888",
        ),
        (
            "sustained write (fio)".into(),
            inputs.disk_sustained_gbps,
            "#aaaaaa",
        ),
        (
            "write+fdatasync 1 MiB (fio)".into(),
            inputs.disk_sync_1m_gbps,
            "#aaaaaa",
        ),
    ];
    for (label, name, colour) in [
        ("produce acks=1", "produce-acks1", "#1f77b4"),
        ("produce acks=1 tmpfs", "tmpfs-produce-acks1", "#17becf"),
        ("produce acks=all", "produce-acksall", "#ff7f0e"),
        ("fetch (page cache)", "consume", "#2ca02c"),
        ("produce 100 B records", "produce-100b", "#9467bd"),
    ] {
        for n in [1u32, 2] {
            bars.push((
                format!("{label}, {n} shard{}", if n == 1 { "" } else { "s" }),
                inputs.get(n, name, "/gbit_per_s"),
                colour,
            ));
        }
    }
    let max = bars
        .iter()
        .filter_map(|b| b.1)
        .fold(0.0f64, f64::max)
        .max(0.1);
    let (x0, y0, bar_w, bar_h) = (230.0, 45.0, 600.0, 20.0);
    for (i, (label, value, colour)) in bars.iter().enumerate() {
        let y = y0 + i as f64 * (bar_h + 4.0);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            x0 - 8.0,
            y + 14.0,
            escape(label)
        );
        if let Some(v) = value {
            let w = bar_w * v / max;
            let _ = writeln!(
                s,
                r#"<rect x="{x0}" y="{y}" width="{w:.1}" height="{bar_h}" fill="{colour}"/>"#
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}">{v:.2}</text>"#,
                x0 + w + 4.0,
                y + 14.0
            );
        } else {
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" fill="#999">not measured</text>"##,
                x0 + 4.0,
                y + 14.0
            );
        }
    }

    // Panel 2: latency percentiles, log scale.
    let top = y0 + bars.len() as f64 * (bar_h + 4.0) + 40.0;
    let _ = writeln!(
        s,
        r#"<text x="20" y="{top}" font-size="16" font-weight="bold">Latency at 50% of max rate (ms, log scale, from the scheduled send time)</text>"#
    );
    let (px, py, pw, ph) = (90.0, top + 20.0, 520.0, H - top - 70.0);
    let quantiles = [
        ("p50", "p50"),
        ("p90", "p90"),
        ("p99", "p99"),
        ("p99.9", "p999"),
        ("max", "max"),
    ];
    let series: Vec<(String, Vec<Option<f64>>, &str, &str)> = [
        ("produce acks=1", "latency-acks1", "#1f77b4"),
        ("produce acks=all", "latency-acksall", "#ff7f0e"),
        ("end-to-end acks=1", "e2e", "#2ca02c"),
        ("acks=1, 16 KiB batches", "latency-16k-acks1", "#9467bd"),
        ("acks=all, 16 KiB batches", "latency-16k-acksall", "#8c564b"),
    ]
    .iter()
    .flat_map(|(label, name, colour)| {
        [1u32, 2].into_iter().map(move |n| {
            (
                format!("{label}, {n} shard{}", if n == 1 { "" } else { "s" }),
                quantiles
                    .iter()
                    .map(|(_, key)| inputs.get(n, name, &format!("/latency_ms/{key}")))
                    .collect(),
                *colour,
                if n == 1 { "6,4" } else { "none" },
            )
        })
    })
    .collect();
    let values: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().flatten().copied())
        .collect();
    let lo = values.iter().copied().fold(f64::MAX, f64::min).max(0.001);
    let hi = values.iter().copied().fold(0.0f64, f64::max).max(lo * 10.0);
    let (lo_exp, hi_exp) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let y_of = |v: f64| {
        py + ph - ph * (v.max(lo).log10() - lo_exp as f64) / (hi_exp - lo_exp).max(1) as f64
    };
    let x_of = |i: usize| px + pw * i as f64 / (quantiles.len() - 1) as f64;
    let _ = writeln!(
        s,
        r##"<rect x="{px}" y="{py}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    for e in lo_exp..=hi_exp {
        let y = y_of(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{px}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            px + pw,
            px - 6.0,
            y + 4.0,
            10f64.powi(e)
        );
    }
    for (i, (label, _)) in quantiles.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            x_of(i),
            py + ph + 18.0
        );
    }
    for (k, (label, points, colour, dash)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x_of(i), y_of(v))))
            .collect();
        if path.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
            path.join(" ")
        );
        let ly = py + 10.0 + k as f64 * 18.0;
        let lx = px + pw + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}">{}</text>"#,
            lx + 25.0,
            lx + 30.0,
            ly + 4.0,
            escape(label)
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
