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

/// The runs `scripts/bench` makes per shard count, by result file name (`rdk-*`: librdkafka's
/// `rdkafka_performance`, imported with `bench import-rdkafka`).
const RUNS: &[&str] = &[
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
    "rdk-produce-16k-acks1",
    "rdk-produce-16k-acksall",
    "rdk-produce-1m-acks1",
    "rdk-produce-1m-acksall",
    "rdk-consume",
    "rdk-latency-16k-acks1",
    "rdk-latency-16k-acksall",
    "rdk-latency-1m-acks1",
    "rdk-latency-1m-acksall",
];

/// Everything one `scripts/bench` run left in its directory.
#[derive(Default)]
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
            for &name in RUNS {
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
            "rdkafka": self.rdkafka_summary(n),
        })
    }

    /// librdkafka's `rdkafka_performance` (one partition, one connection) on `n` shards.
    fn rdkafka_summary(&self, n: u32) -> Value {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let g = |run: &str| self.get(n, run, "/gbit_per_s");
        let p99 = |run: &str| self.get(n, run, "/latency_ms/p99");
        json!({
            "produce_16k_gbps": g("rdk-produce-16k-acks1"),
            "produce_16k_mb_per_s": self.get(n, "rdk-produce-16k-acks1", "/mb_per_s"),
            "produce_16k_records_per_s": self.get(n, "rdk-produce-16k-acks1", "/records_per_s"),
            "produce_16k_acks_all_gbps": g("rdk-produce-16k-acksall"),
            "produce_16k_acks_all_mb_per_s": self.get(n, "rdk-produce-16k-acksall", "/mb_per_s"),
            "produce_16k_acks_all_records_per_s": self.get(n, "rdk-produce-16k-acksall", "/records_per_s"),
            "produce_16k_acks_all_vs_acks1": ratio(g("rdk-produce-16k-acksall"), g("rdk-produce-16k-acks1")),
            "produce_1m_gbps": g("rdk-produce-1m-acks1"),
            "produce_1m_mb_per_s": self.get(n, "rdk-produce-1m-acks1", "/mb_per_s"),
            "produce_1m_acks_all_gbps": g("rdk-produce-1m-acksall"),
            "produce_1m_acks_all_mb_per_s": self.get(n, "rdk-produce-1m-acksall", "/mb_per_s"),
            "produce_1m_ratio_to_loopback": ratio(g("rdk-produce-1m-acks1"), self.loopback_gbps),
            "produce_1m_acks_all_ratio_to_fdatasync_1m": ratio(g("rdk-produce-1m-acksall"), self.disk_sync_1m_gbps),
            "consume_gbps": g("rdk-consume"),
            "consume_mb_per_s": self.get(n, "rdk-consume", "/mb_per_s"),
            "consume_ratio_to_loopback": ratio(g("rdk-consume"), self.loopback_gbps),
            "produce_16k_p99_ms": p99("rdk-latency-16k-acks1"),
            "produce_16k_acks_all_p99_ms": p99("rdk-latency-16k-acksall"),
            "produce_1m_p99_ms": p99("rdk-latency-1m-acks1"),
            "produce_1m_acks_all_p99_ms": p99("rdk-latency-1m-acksall"),
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
            "targets_issue_13": self.targets_issue_13(),
        })
    }

    /// Issue #13 (durable produce at everyday batch sizes), with our generator and with
    /// rdkafka_performance; the 2-shard figures (the broker's normal configuration).
    fn targets_issue_13(&self) -> Value {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let target = |name: &str, value: Option<f64>, op: &str, bound: f64| {
            let met = value.map(|v| if op == ">=" { v >= bound } else { v <= bound });
            json!({ "target": name, "measured": value, "bound": format!("{op} {bound}"), "met": met })
        };
        let g = |run: &str| self.get(2, run, "/gbit_per_s");
        let p99 = |run: &str| self.get(2, run, "/latency_ms/p99");
        json!([
            target(
                "acks=all / acks=1, 16 KiB batches (ringbroker bench)",
                ratio(g("produce-16k-acksall"), g("produce-16k-acks1")),
                ">=",
                0.7
            ),
            target(
                "acks=all / acks=1, 16 KiB batches, 1 partition (rdkafka_performance)",
                ratio(g("rdk-produce-16k-acksall"), g("rdk-produce-16k-acks1")),
                ">=",
                0.7
            ),
            target(
                "p99 ms, acks=all at 50%, 16 KiB batches (ringbroker bench)",
                p99("latency-16k-acksall"),
                "<=",
                5.0
            ),
            target(
                "p99 ms, acks=all at 50%, 16 KiB batches (rdkafka_performance)",
                p99("rdk-latency-16k-acksall"),
                "<=",
                5.0
            ),
            target(
                "p99 ms, acks=1 at 50%, 16 KiB batches (ringbroker bench)",
                p99("latency-16k-acks1"),
                "<=",
                2.0
            ),
            target(
                "p99 ms, acks=1 at 50%, 16 KiB batches (rdkafka_performance)",
                p99("rdk-latency-16k-acks1"),
                "<=",
                2.0
            ),
            target(
                "fetch from page cache / loopback",
                ratio(g("consume"), self.loopback_gbps),
                ">=",
                0.8
            ),
        ])
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

const RDK_1M_ACKS1: &str = "*rdkafka_performance produce acks=1, 1 MiB batches, 1 partition*";
const RDK_1M_ACKSALL: &str = "*rdkafka_performance produce acks=all, 1 MiB batches, 1 partition*";
const RDK_16K_ACKS1: &str = "*rdkafka_performance produce acks=1, 16 KiB batches, 1 partition*";
const RDK_16K_ACKSALL: &str = "*rdkafka_performance produce acks=all, 16 KiB batches, 1 partition*";
const RDK_CONSUME: &str = "*rdkafka_performance consume, 1 partition*";

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
         unpinned on the same CPUs. Rows in *italics*: librdkafka's `rdkafka_performance` (an independent client, \
         see \"Cross-check\" below): one partition, one producer connection, 1,000-byte records, `linger.ms=5`; \
         pinned to CPU 1 next to the 1-shard broker, unpinned next to the 2-shard one.\n"
    );
    let _ = writeln!(
        m,
        "| run | limit (ratio = figure / limit) | 1 shard | ratio | CPU client / broker | 2 shards | ratio | CPU client / broker | 2 / 1 shards |\n|---|---|---|---|---|---|---|---|---|"
    );
    let sync_1m = inputs.disk_sync_1m_gbps;
    let sync_name = "write+fdatasync 1 MiB";
    let rows: Vec<(&str, &str, Option<f64>, &str)> = vec![
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
        (RDK_1M_ACKS1, "rdk-produce-1m-acks1", lo, "loopback TCP"),
        (
            "produce acks=1, data on tmpfs",
            "tmpfs-produce-acks1",
            lo,
            "loopback TCP",
        ),
        ("produce acks=all", "produce-acksall", sync_1m, sync_name),
        (RDK_1M_ACKSALL, "rdk-produce-1m-acksall", sync_1m, sync_name),
        (
            "produce acks=1, 16 KiB batches",
            "produce-16k-acks1",
            lo,
            "loopback TCP",
        ),
        (RDK_16K_ACKS1, "rdk-produce-16k-acks1", lo, "loopback TCP"),
        (
            "produce acks=all, 16 KiB batches",
            "produce-16k-acksall",
            sync_1m,
            sync_name,
        ),
        (
            RDK_16K_ACKSALL,
            "rdk-produce-16k-acksall",
            sync_1m,
            sync_name,
        ),
        ("fetch from page cache", "consume", lo, "loopback TCP"),
        (RDK_CONSUME, "rdk-consume", lo, "loopback TCP"),
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
        if name.starts_with("rdk-")
            && [1u32, 2]
                .iter()
                .all(|&n| inputs.get(n, name, "/elapsed_s").is_none())
        {
            continue;
        }
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
         consumer holds the record (send time carried in each value). Rows in *italics*: `rdkafka_performance -r` at half \
         of its own maximum above, latency from its `produce()` call to the delivery report (`-l -A`; not from a \
         send time fixed in advance, and its rate limiter sleeps whole microseconds per message, so its achieved \
         rate, given here, can differ from half). Milliseconds.\n"
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
        (RDK_1M_ACKS1, "rdk-latency-1m-acks1"),
        (RDK_1M_ACKSALL, "rdk-latency-1m-acksall"),
        (RDK_16K_ACKS1, "rdk-latency-16k-acks1"),
        (RDK_16K_ACKSALL, "rdk-latency-16k-acksall"),
    ] {
        for n in [1u32, 2] {
            if inputs.get(n, name, "/elapsed_s").is_none() {
                continue;
            }
            let l = |q: &str| fmt(inputs.get(n, name, &format!("/latency_ms/{q}")), 3);
            let _ = writeln!(
                m,
                "| {label} | {n} | {} | {} | {} | {} | {} | {} |",
                if name.starts_with("rdk-") {
                    format!(
                        "{} (achieved {})",
                        fmt(inputs.get(n, name, "/rate_target"), 0),
                        fmt(inputs.get(n, name, "/records_per_s"), 0)
                    )
                } else {
                    fmt(inputs.get(n, name, "/rate_target"), 0)
                },
                l("p50"),
                l("p90"),
                l("p99"),
                l("p999"),
                l("max")
            );
        }
    }
    let _ = writeln!(m);

    for (heading, key) in [
        ("## Targets (issue #6)\n", "targets"),
        ("## Targets (issue #13, 2 shards)\n", "targets_issue_13"),
    ] {
        let _ = writeln!(m, "{heading}");
        let _ = writeln!(m, "| target | measured | bound | met |\n|---|---|---|---|");
        if let Some(targets) = summary.get(key).and_then(Value::as_array) {
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
    }

    let _ = writeln!(m, "## Cross-check with other clients\n");
    let _ = writeln!(
        m,
        "librdkafka's `rdkafka_performance` (its `examples/rdkafka_performance.c`), built by `scripts/bench` from the \
         librdkafka source the `rdkafka-sys` crate carries (fetched with cargo, no other download) into \
         `target/rdkafka/`, without SSL, SASL, zstd, zlib or curl. It runs against the same broker as `ringbroker bench`, \
         right after it: one partition (`-p 0`, topic auto-created), one connection, 1,000-byte records, \
         `-X linger.ms=5` with `-X batch.size=16384` (the Java client's default) or `1048576`, `-a 1` or `-a -1`; \
         then `-C -o beginning -e` reads the 1 MiB acks=1 topic back. It has no duration option: SIGINT ends each \
         produce run after warm-up + duration + 1 s, and `ringbroker bench import-rdkafka` counts the rows of \
         its once-a-second table (`-u`) between the end of the warm-up and the end of the duration. Its \
         figures are in the tables above in *italics*, and in the plot. Its rate limiter (`-r`) polls without \
         sleeping between messages (gaps under 1 ms) and starts each gap after the previous `produce()` call, so a \
         latency run keeps one CPU busy in the client (next to the 1-shard broker it is pinned to CPU 1 with its \
         own I/O thread) and reaches less than the rate asked for: its latency rows measure this client as much as \
         the broker, which is why they stay beside, not instead of, `ringbroker bench`'s open-loop figures.\n"
    );
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

/// A logarithmic value axis drawn downwards from `top` over `height` pixels: whole decades
/// from the one at or below the smallest value to the one at or above the largest.
#[derive(Debug, Clone, Copy)]
struct LogAxis {
    lo_exp: i32,
    hi_exp: i32,
    top: f64,
    height: f64,
}

/// Labels closer than this (pixels, vertically) would overlap at font size 12.
const TICK_LABEL_GAP_PX: f64 = 14.0;

impl LogAxis {
    /// The axis for `values` (non-positive ones ignored; 1 to 10 when none is left).
    fn new(values: &[f64], top: f64, height: f64) -> LogAxis {
        let positive = values.iter().copied().filter(|v| *v > 0.0 && v.is_finite());
        let lo = positive.clone().fold(f64::MAX, f64::min);
        let hi = positive.fold(0.0f64, f64::max);
        let (lo_exp, hi_exp) = if hi > 0.0 {
            (lo.log10().floor() as i32, hi.log10().ceil() as i32)
        } else {
            (0, 1)
        };
        LogAxis {
            lo_exp,
            hi_exp: hi_exp.max(lo_exp + 1),
            top,
            height,
        }
    }

    fn decade_px(&self) -> f64 {
        self.height / f64::from(self.hi_exp - self.lo_exp)
    }

    /// Pixel row of `v` (clamped to the axis' range).
    fn y(&self, v: f64) -> f64 {
        let e = v
            .max(10f64.powi(self.lo_exp))
            .min(10f64.powi(self.hi_exp))
            .log10();
        self.top + self.height - (e - f64::from(self.lo_exp)) * self.decade_px()
    }

    /// Ticks (value, pixel row, label), bottom up: every decade, thinned so that labels stay
    /// `TICK_LABEL_GAP_PX` apart, and 2 and 5 within each decade when there is room for them.
    fn ticks(&self) -> Vec<(f64, f64, String)> {
        let decade_px = self.decade_px();
        let step = (TICK_LABEL_GAP_PX / decade_px).ceil().max(1.0) as i32;
        // 1 -> 2 is the closest pair (log10 2 = 0.301 of a decade; 5 -> 10 likewise).
        let minor = decade_px * 2f64.log10() >= TICK_LABEL_GAP_PX;
        let mut ticks = Vec::new();
        for e in self.lo_exp..=self.hi_exp {
            if (e - self.lo_exp) % step == 0 {
                ticks.push(tick(1, e));
            }
            if minor && e < self.hi_exp {
                ticks.push(tick(2, e));
                ticks.push(tick(5, e));
            }
        }
        ticks
            .into_iter()
            .map(|(v, label)| (v, self.y(v), label))
            .collect()
    }
}

/// `mantissa` × 10^`exp` and its label, written without float noise ("0.2", "5000").
fn tick(mantissa: u32, exp: i32) -> (f64, String) {
    let value = f64::from(mantissa) * 10f64.powi(exp);
    let label = if exp >= 0 {
        format!("{mantissa}{}", "0".repeat(exp as usize))
    } else {
        format!("{value:.*}", (-exp) as usize)
    };
    (value, label)
}

/// Two panels: throughput bars against the machine's limits, and latency percentiles; our
/// generator's runs and librdkafka's `rdkafka_performance` side by side.
fn svg(inputs: &Inputs) -> String {
    const W: f64 = 960.0;
    let has_rdk = [1u32, 2].iter().any(|&n| {
        RUNS.iter()
            .any(|r| r.starts_with("rdk-") && inputs.get(n, r, "/elapsed_s").is_some())
    });

    // Panel 1: horizontal bars; each workload of ours followed by rdkafka_performance's.
    let mut bars: Vec<(String, Option<f64>, &str, f64)> = vec![
        (
            "loopback TCP (iperf3)".into(),
            inputs.loopback_gbps,
            "#888888",
            1.0,
        ),
        (
            "loopback TCP -Z (iperf3)".into(),
            inputs.loopback_zerocopy_gbps,
            "#aaaaaa",
            1.0,
        ),
        (
            "buffered write (fio)".into(),
            inputs.disk_write_gbps,
            "#888888",
            1.0,
        ),
        (
            "sustained write (fio)".into(),
            inputs.disk_sustained_gbps,
            "#aaaaaa",
            1.0,
        ),
        (
            "write+fdatasync 1 MiB (fio)".into(),
            inputs.disk_sync_1m_gbps,
            "#aaaaaa",
            1.0,
        ),
    ];
    let workloads: [(&str, &str, &str); 12] = [
        ("produce acks=1", "produce-acks1", "#1f77b4"),
        ("rdkafka acks=1 1 MiB", "rdk-produce-1m-acks1", "#1f77b4"),
        ("produce acks=1 tmpfs", "tmpfs-produce-acks1", "#17becf"),
        ("produce acks=all", "produce-acksall", "#ff7f0e"),
        (
            "rdkafka acks=all 1 MiB",
            "rdk-produce-1m-acksall",
            "#ff7f0e",
        ),
        ("produce acks=1 16 KiB", "produce-16k-acks1", "#9467bd"),
        ("rdkafka acks=1 16 KiB", "rdk-produce-16k-acks1", "#9467bd"),
        ("produce acks=all 16 KiB", "produce-16k-acksall", "#8c564b"),
        (
            "rdkafka acks=all 16 KiB",
            "rdk-produce-16k-acksall",
            "#8c564b",
        ),
        ("fetch (page cache)", "consume", "#2ca02c"),
        ("rdkafka consume", "rdk-consume", "#2ca02c"),
        ("produce 100 B records", "produce-100b", "#e377c2"),
    ];
    for (label, name, colour) in workloads {
        let rdk = name.starts_with("rdk-");
        if rdk && !has_rdk {
            continue;
        }
        for n in [1u32, 2] {
            bars.push((
                format!("{label}, {n} shard{}", if n == 1 { "" } else { "s" }),
                inputs.get(n, name, "/gbit_per_s"),
                colour,
                if rdk { 0.5 } else { 1.0 },
            ));
        }
    }
    let max = bars
        .iter()
        .filter_map(|b| b.1)
        .fold(0.0f64, f64::max)
        .max(0.1);
    let (x0, y0, bar_w, bar_h) = (270.0, 45.0, 600.0, 20.0);

    // Panel 2 geometry, so that the height is known before writing.
    let top = y0 + bars.len() as f64 * (bar_h + 4.0) + 40.0;
    let quantiles = [
        ("p50", "p50"),
        ("p90", "p90"),
        ("p99", "p99"),
        ("p99.9", "p999"),
        ("max", "max"),
    ];
    let mut lines: Vec<(&str, &str, &str)> = vec![
        ("acks=1", "latency-acks1", "#1f77b4"),
        ("acks=all", "latency-acksall", "#ff7f0e"),
        ("end-to-end acks=1", "e2e", "#2ca02c"),
        ("acks=1, 16 KiB", "latency-16k-acks1", "#9467bd"),
        ("acks=all, 16 KiB", "latency-16k-acksall", "#8c564b"),
    ];
    if has_rdk {
        lines.extend([
            ("rdkafka acks=1, 1 MiB", "rdk-latency-1m-acks1", "#17becf"),
            (
                "rdkafka acks=all, 1 MiB",
                "rdk-latency-1m-acksall",
                "#d62728",
            ),
            ("rdkafka acks=1, 16 KiB", "rdk-latency-16k-acks1", "#e377c2"),
            (
                "rdkafka acks=all, 16 KiB",
                "rdk-latency-16k-acksall",
                "#bcbd22",
            ),
        ]);
    }
    let series: Vec<(String, Vec<Option<f64>>, &str, &str)> = lines
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
    let legend_h = series.len() as f64 * 18.0 + 10.0;
    let (px, py, pw) = (90.0, top + 20.0, 500.0);
    let ph = legend_h.max(400.0);
    let h = py + ph + 40.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="20" y="28" font-size="16" font-weight="bold">Throughput (Gbit/s) against this machine's limits, same run; pale: rdkafka_performance, 1 partition</text>"#
    );
    for (i, (label, value, colour, opacity)) in bars.iter().enumerate() {
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
                r#"<rect x="{x0}" y="{y}" width="{w:.1}" height="{bar_h}" fill="{colour}" fill-opacity="{opacity}"/>"#
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
    let _ = writeln!(
        s,
        r#"<text x="20" y="{top}" font-size="16" font-weight="bold">Latency at 50% of max rate (ms, log scale); dashed: 1 shard, solid: 2 shards</text>"#
    );
    let values: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().flatten().copied())
        .collect();
    let axis = LogAxis::new(&values, py, ph);
    let x_of = |i: usize| px + pw * i as f64 / (quantiles.len() - 1) as f64;
    let _ = writeln!(
        s,
        r##"<rect x="{px}" y="{py}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    for (value, y, label) in axis.ticks() {
        let major = tick(1, value.log10().round() as i32).0 == value;
        let _ = writeln!(
            s,
            r##"<line x1="{px}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="{}"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            px + pw,
            if major { "#ccc" } else { "#eee" },
            px - 6.0,
            y + 4.0,
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
    let mut drawn = 0usize;
    for (label, points, colour, dash) in &series {
        let path: Vec<String> = points
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x_of(i), axis.y(v))))
            .collect();
        if path.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
            path.join(" ")
        );
        let ly = py + 10.0 + drawn as f64 * 18.0;
        drawn += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The label rows of the latency axis in `svg` output, by label text.
    fn axis_labels(svg: &str) -> Vec<(String, f64)> {
        svg.lines()
            .filter(|l| l.starts_with("<line x1=\"90\""))
            .filter_map(|l| {
                let text = l.split("text-anchor=\"end\">").nth(1)?;
                let label = text.split('<').next()?.to_string();
                let y: f64 = l.split(" y=\"").nth(1)?.split('"').next()?.parse().ok()?;
                Some((label, y))
            })
            .collect()
    }

    #[test]
    fn log_axis_ticks_sit_at_their_logarithms() {
        // 0.3 ms to 400 ms: decades 0.1 .. 1000 over 400 px, 100 px each.
        let axis = LogAxis::new(&[0.3, 2.0, 400.0], 50.0, 400.0);
        assert_eq!((axis.lo_exp, axis.hi_exp), (-1, 3));
        let ticks = axis.ticks();
        let at = |label: &str| {
            ticks
                .iter()
                .find(|t| t.2 == label)
                .unwrap_or_else(|| panic!("no tick {label}: {ticks:?}"))
                .1
        };
        assert_eq!(at("0.1"), 450.0);
        assert_eq!(at("1"), 350.0);
        assert_eq!(at("10"), 250.0);
        assert_eq!(at("1000"), 50.0);
        // Minor ticks where log10 puts them, and labels without float noise.
        assert!((at("0.2") - (450.0 - 100.0 * 2f64.log10())).abs() < 1e-9);
        assert!((at("5") - (350.0 - 100.0 * 5f64.log10())).abs() < 1e-9);
        assert!(ticks.iter().all(|t| !t.2.contains("000000")), "{ticks:?}");
        // A value is drawn where its tick is.
        assert!((axis.y(0.3) - (450.0 - 100.0 * 3f64.log10())).abs() < 1e-9);
        // Bottom up, never closer than a label's height.
        for pair in ticks.windows(2) {
            assert!(pair[0].1 - pair[1].1 >= TICK_LABEL_GAP_PX, "{pair:?}");
        }
    }

    #[test]
    fn log_axis_thins_labels_when_decades_are_narrow() {
        // 1 µs to 100 s: 8 decades in 80 px, 10 px each; no minor ticks.
        let axis = LogAxis::new(&[0.001, 100_000.0], 0.0, 80.0);
        let ticks = axis.ticks();
        assert!(
            ticks
                .iter()
                .all(|t| t.2.trim_start_matches(['0', '.']).starts_with('1')),
            "{ticks:?}"
        );
        assert_eq!(ticks.first().map(|t| t.2.as_str()), Some("0.001"));
        for pair in ticks.windows(2) {
            assert!(pair[0].1 - pair[1].1 >= TICK_LABEL_GAP_PX, "{pair:?}");
        }
        // Degenerate inputs still give a one-decade axis.
        let empty = LogAxis::new(&[], 0.0, 100.0);
        assert_eq!((empty.lo_exp, empty.hi_exp), (0, 1));
        let one = LogAxis::new(&[10.0, 0.0, -1.0], 0.0, 100.0);
        assert_eq!((one.lo_exp, one.hi_exp), (1, 2));
    }

    fn inputs_with_latency(p50: f64, max: f64, rdk: bool) -> Inputs {
        let mut runs = BTreeMap::new();
        let lat = json!({ "elapsed_s": 1.0, "gbit_per_s": 1.0,
            "latency_ms": { "p50": p50, "p90": p50 * 2.0, "p99": max / 2.0, "p999": max, "max": max } });
        runs.insert("latency-acks1".to_string(), lat.clone());
        if rdk {
            runs.insert("rdk-latency-16k-acksall".to_string(), lat.clone());
            runs.insert(
                "rdk-produce-16k-acks1".to_string(),
                json!({ "elapsed_s": 1.0, "gbit_per_s": 3.25 }),
            );
        }
        let mut shards = BTreeMap::new();
        shards.insert(2, runs);
        Inputs {
            shards,
            ..Inputs::default()
        }
    }

    #[test]
    fn svg_latency_axis_puts_a_decade_between_0_1_and_1() {
        // The smallest value (0.5) is not a power of ten: the 0.1 label belongs a whole
        // decade below 1, not at 0.5 just under it.
        let svg = svg(&inputs_with_latency(0.5, 40.0, false));
        let labels = axis_labels(&svg);
        let y = |label: &str| {
            labels
                .iter()
                .find(|l| l.0 == label)
                .unwrap_or_else(|| panic!("no label {label}: {labels:?}"))
                .1
        };
        let decade = y("0.1") - y("1");
        assert!(decade > 50.0, "{labels:?}");
        assert!((decade - (y("1") - y("10"))).abs() < 0.2, "{labels:?}");
        assert!((decade - (y("10") - y("100"))).abs() < 0.2, "{labels:?}");
        let mut rows: Vec<f64> = labels.iter().map(|l| l.1).collect();
        rows.sort_by(f64::total_cmp);
        for pair in rows.windows(2) {
            assert!(pair[1] - pair[0] >= TICK_LABEL_GAP_PX - 0.2, "{labels:?}");
        }
    }

    #[test]
    fn svg_shows_rdkafka_runs_beside_ours() {
        let with = svg(&inputs_with_latency(0.5, 40.0, true));
        assert!(
            with.contains(">rdkafka acks=all, 16 KiB, 2 shards</text>"),
            "{with}"
        );
        assert!(
            with.contains(">rdkafka acks=1 16 KiB, 2 shards</text>"),
            "{with}"
        );
        assert!(with.contains(">3.25</text>"), "{with}");
        // Without rdkafka_performance results, no empty rdkafka rows.
        let without = svg(&inputs_with_latency(0.5, 40.0, false));
        assert!(!without.contains("rdkafka acks"), "{without}");
    }

    #[test]
    fn markdown_has_rdkafka_rows_and_keeps_the_profile_section() {
        let inputs = inputs_with_latency(0.5, 40.0, true);
        let summary = inputs.summary();
        let kept = "## Profile\n\nhand-written\n\n## Later section\n";
        let m = markdown(&inputs, &summary, "benchmarks.svg", Some(kept));
        assert!(
            m.contains(&format!("| {RDK_16K_ACKS1} | loopback TCP")),
            "{m}"
        );
        assert!(m.contains(&format!("| {RDK_16K_ACKSALL} | 2 |")), "{m}");
        assert!(m.ends_with(kept), "{m}");
        assert_eq!(
            summary
                .pointer("/shards/2/rdkafka/produce_16k_gbps")
                .and_then(Value::as_f64),
            Some(3.25)
        );
    }
}
