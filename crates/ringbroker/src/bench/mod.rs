//! `ringbroker bench`: a Kafka load generator on our own runtime, and the report renderer.
//!
//! - [`kafka`] (`crate::client`, shared with the admin CLI): the minimal client codec (Metadata, CreateTopics, Produce v9, Fetch v12,
//!   ListOffsets) over ring-driven sockets; Produce requests send the batch without copying.
//! - [`produce`]: producer connections, closed loop (as fast as `--max-inflight` allows) or
//!   open loop (`--rate`: send times scheduled in advance, latency from the scheduled time).
//! - [`consume`]: fetch loops reading a topic from a start offset to an end.
//! - [`e2e`]: producers and consumers at once; latency from the scheduled send time carried in
//!   each record value to the moment a consumer holds the record.
//! - [`report`]: results as text and JSON, and `bench report` (summary.json, markdown, SVG).
//! - [`rdkafka`]: `bench import-rdkafka`, librdkafka's `rdkafka_performance` output as such JSON.
//!
//! Each connection runs on its own thread with its own ring (pinned with `--cores`), so the
//! generator scales like the broker does. Works against any Kafka-compatible broker.

mod consume;
mod e2e;
mod produce;
mod rdkafka;
mod report;

use crate::client as kafka;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use ringbroker_runtime::{affinity, KernelFeatures, RingConfig, Runtime};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Produce for a duration or a byte count, flat out or at `--rate`; report throughput and
    /// the latency from (scheduled) send to acknowledgement.
    Produce(LoadArgs),
    /// Read a topic from its earliest (or latest) offset up to the end it had at the start, or
    /// for `--duration`; report throughput.
    Consume(LoadArgs),
    /// Produce and consume at once; report the latency from (scheduled) send to consumption.
    E2e(LoadArgs),
    /// Turn the results `scripts/bench` left in a directory into summary.json, the markdown
    /// page and the SVG plot.
    Report(report::ReportArgs),
    /// Delete topics (DeleteTopics), e.g. to free a finished run's disk space.
    DeleteTopics(DeleteArgs),
    /// Turn the output of librdkafka's `rdkafka_performance -u` (and its `-l -A` latency file)
    /// into the JSON of our own runs, for `bench report`.
    ImportRdkafka(rdkafka::ImportArgs),
}

#[derive(Args, Debug, Clone)]
pub struct DeleteArgs {
    /// host:port of any broker of the cluster.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Topics to delete.
    #[arg(required = true)]
    pub topics: Vec<String>,
    #[command(flatten)]
    pub security: kafka::SecurityArgs,
}

#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// host:port of any broker of the cluster.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Topic to use; created with `--partitions` (replication factor 1) if missing.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Bytes of each record value (accepts K/KiB/M/MiB suffixes).
    #[arg(long, default_value = "1KiB", value_parser = parse_bytes)]
    pub record_size: u64,
    /// Bytes of record values per batch (one batch per Produce request).
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    pub batch_bytes: u64,
    /// Producer connections, each on its own thread and ring.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumer connections, each on its own thread and ring.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// 0 (no answer), 1 (leader wrote it) or -1 (all in-sync replicas; fsync'd on ringbroker).
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    pub acks: i16,
    /// Only `none`: batches are built uncompressed.
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Seconds to send (after `--warmup`). [default: 10 unless --total-bytes; consume: until
    /// the end offsets seen at the start]
    #[arg(long)]
    pub duration: Option<f64>,
    /// Stop after this many record-value bytes (K/M/G/KiB/MiB/GiB suffixes).
    #[arg(long, value_parser = parse_bytes)]
    pub total_bytes: Option<u64>,
    /// Target records/s over all producers (open loop: sends are scheduled in advance and
    /// latency counts from the scheduled time). [default: as fast as possible]
    #[arg(long)]
    pub rate: Option<f64>,
    /// Requests in flight per connection (pipelining).
    #[arg(long, default_value_t = 5)]
    pub max_inflight: usize,
    /// Seconds run before measuring (their records and latencies are not counted).
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// CPUs to pin the connection threads to, round robin, e.g. `0,1`. [default: unpinned]
    #[arg(long)]
    pub cores: Option<String>,
    /// Fetch: bytes per partition per request.
    #[arg(long, default_value = "8MiB", value_parser = parse_bytes)]
    pub fetch_bytes: u64,
    /// Consume: start at the `earliest` or `latest` offset.
    #[arg(long, default_value = "earliest")]
    pub from: String,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A name for this run in the JSON output.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Process id of a broker on this machine: its CPU time during the run is reported too.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// How to reach a secured broker (TLS, SASL).
    #[command(flatten)]
    pub security: kafka::SecurityArgs,
    /// `security` resolved (files read) once, by `run`.
    #[arg(skip)]
    pub resolved_security: Option<Arc<kafka::ClientSecurity>>,
}

impl LoadArgs {
    fn check(&self) -> Result<()> {
        if self.compression != "none" {
            bail!(
                "--compression {}: only `none` is implemented (batches are built uncompressed)",
                self.compression
            );
        }
        if ![0, 1, -1].contains(&self.acks) {
            bail!("--acks must be 0, 1 or -1");
        }
        if self.partitions < 1 || self.producers < 1 || self.consumers < 1 {
            bail!("--partitions, --producers and --consumers must be at least 1");
        }
        if self.record_size == 0 || self.batch_bytes < self.record_size {
            bail!("--record-size must be at least 1 and at most --batch-bytes");
        }
        if self.batch_bytes > 64 << 20 {
            bail!("--batch-bytes is limited to 64 MiB");
        }
        if self.max_inflight == 0 {
            bail!("--max-inflight must be at least 1");
        }
        if let Some(r) = self.rate {
            if !(r > 0.0 && r.is_finite()) {
                bail!("--rate must be a positive number of records per second");
            }
        }
        if self.from != "earliest" && self.from != "latest" {
            bail!("--from must be `earliest` or `latest`");
        }
        if self.fetch_bytes > i32::MAX as u64 / 4 {
            bail!("--fetch-bytes is too large");
        }
        Ok(())
    }

    /// Records per batch so that the whole batch (61-byte header, per-record framing) stays
    /// within `--batch-bytes`, as Kafka's `batch.size` does: a 1 MiB batch then also fits
    /// the default `max.message.bytes`.
    fn records_per_batch(&self) -> usize {
        let varint = |v: u64| (64 - (v << 1 | 1).leading_zeros()).div_ceil(7) as u64;
        // length, attributes, timestamp delta, offset delta (<= 3), key (null), value length,
        // header count.
        let framing = varint(self.record_size + 16) + 1 + 1 + 3 + 1 + varint(self.record_size) + 1;
        let header = ringbroker_protocol::batch::HEADER_BYTES as u64;
        (self.batch_bytes.saturating_sub(header) / (self.record_size + framing)).max(1) as usize
    }

    /// What every connection of the run uses (resolved by `run`; plaintext before that).
    pub fn client_security(&self) -> Arc<kafka::ClientSecurity> {
        self.resolved_security
            .clone()
            .unwrap_or_else(kafka::ClientSecurity::plaintext)
    }

    fn cores(&self) -> Result<Option<Vec<usize>>> {
        self.cores
            .as_deref()
            .map(|c| affinity::parse_cpu_list(c).map_err(anyhow::Error::msg))
            .transpose()
            .context("--cores")
    }
}

/// Accepts `1048576`, `64K`, `64KiB`, `1M`, `1MiB`, `2G`, `2GiB` (K/M/G are decimal).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "k" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "M" | "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "G" | "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} in {text:?}")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

pub fn run(args: BenchArgs) -> Result<()> {
    let (mut a, load): (LoadArgs, fn(&LoadArgs) -> Result<report::RunReport>) = match args.command {
        BenchCommand::Produce(a) => (a, produce::run),
        BenchCommand::Consume(a) => (a, consume::run),
        BenchCommand::E2e(a) => (a, e2e::run),
        BenchCommand::Report(r) => return report::render(&r),
        BenchCommand::ImportRdkafka(i) => return rdkafka::import(&i),
        BenchCommand::DeleteTopics(d) => {
            let security = d.security.resolve()?;
            return block_on(async move {
                let mut client = kafka::Client::connect(&d.bootstrap, &security).await?;
                kafka::delete_topics(&mut client, &d.topics).await
            });
        }
    };
    a.check()?;
    a.resolved_security = Some(a.security.resolve()?);
    let wall = Instant::now();
    let client_cpu = process_cpu_s();
    let broker_cpu = a.broker_pid.and_then(pid_cpu_s);
    let mut r = load(&a)?;
    let wall_s = wall.elapsed().as_secs_f64().max(1e-9);
    r.client_cores = process_cpu_s().map(|c| (c - client_cpu.unwrap_or(0.0)) / wall_s);
    r.broker_cores = match (a.broker_pid.and_then(pid_cpu_s), broker_cpu) {
        (Some(after), Some(before)) => Some((after - before) / wall_s),
        _ => None,
    };
    report::emit(&r, a.json.as_deref())
}

/// CPU seconds (user + system) this process has used, all threads.
fn process_cpu_s() -> Option<f64> {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(tv(usage.ru_utime) + tv(usage.ru_stime))
}

/// CPU seconds (user + system) of another process, all its threads (io_uring's io-wq workers
/// included), from /proc/PID/stat.
fn pid_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks > 0.0).then(|| (utime + stime) / ticks)
}

/// Latency histogram in nanoseconds, 1 ns to 1 h at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Counters and latencies of one connection thread, merged at the end.
pub struct WorkerStats {
    pub records: u64,
    pub value_bytes: u64,
    pub requests: u64,
    pub latency_ns: Histogram<u64>,
    /// The measured span: from the measuring start to the last counted answer.
    pub first_at: Option<Instant>,
    pub last_at: Option<Instant>,
}

impl WorkerStats {
    pub fn new() -> WorkerStats {
        WorkerStats {
            records: 0,
            value_bytes: 0,
            requests: 0,
            latency_ns: new_histogram(),
            first_at: None,
            last_at: None,
        }
    }

    pub fn merge(&mut self, other: &WorkerStats) {
        self.records += other.records;
        self.value_bytes += other.value_bytes;
        self.requests += other.requests;
        // Both histograms share bounds, so adding cannot fail.
        let _ = self.latency_ns.add(&other.latency_ns);
        self.first_at = match (self.first_at, other.first_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_at = self.last_at.max(other.last_at);
    }
}

/// What every connection thread of a run shares: a start line and the moment measuring starts.
pub struct Start {
    barrier: Barrier,
    at: OnceLock<Instant>,
}

impl Start {
    pub fn new(threads: usize) -> Arc<Start> {
        Arc::new(Start {
            barrier: Barrier::new(threads),
            at: OnceLock::new(),
        })
    }

    /// Blocks until every thread is connected, then gives the common start instant.
    pub fn wait(&self) -> Instant {
        self.barrier.wait();
        *self.at.get_or_init(Instant::now)
    }
}

/// Runs `work(i)` for `i in 0..threads`, each on its own thread with its own ring (pinned
/// round robin to `cores` when given), and collects the results in order.
pub fn run_threads<T, F, Fut>(
    name: &str,
    threads: usize,
    cores: Option<&[usize]>,
    work: F,
) -> Vec<std::thread::JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<T>> + 'static,
{
    (0..threads)
        .map(|i| {
            let work = work.clone();
            let name = name.to_string();
            let cpu = cores.map(|c| c[i % c.len()]);
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || -> Result<T> {
                    if let Some(cpu) = cpu {
                        affinity::pin_current_thread(cpu)
                            .with_context(|| format!("pinning {name} {i} to CPU {cpu}"))?;
                    }
                    let runtime = new_runtime()?;
                    runtime.block_on(work(i))
                })
                .expect("spawning a bench thread")
        })
        .collect()
}

/// Joins threads started by [`run_threads`]; the first error wins.
pub fn join_all<T>(handles: Vec<std::thread::JoinHandle<Result<T>>>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(anyhow::anyhow!("a bench thread panicked"));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// A ring + executor for this thread.
pub fn new_runtime() -> Result<Runtime> {
    let features = KernelFeatures::get()
        .map_err(anyhow::Error::msg)
        .context("io_uring is not usable")?;
    let config = RingConfig {
        entries: 256,
        ..RingConfig::default()
    };
    Runtime::with_features(&config, &features).context("setting up the io_uring ring")
}

/// Runs one future on a fresh runtime on this thread (control-plane steps).
pub fn block_on<T: 'static>(future: impl Future<Output = Result<T>> + 'static) -> Result<T> {
    let runtime = new_runtime()?;
    runtime.block_on(future)
}

/// Splits partitions over `connections`: round robin, or one partition each (repeating)
/// when there are more connections than partitions.
pub fn assign<T: Clone>(partitions: &[T], connections: usize) -> Vec<Vec<T>> {
    (0..connections)
        .map(|j| {
            if connections <= partitions.len() {
                partitions
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % connections == j)
                    .map(|(_, p)| p.clone())
                    .collect()
            } else {
                vec![partitions[j % partitions.len()].clone()]
            }
        })
        .collect()
}

/// The run's measuring window: from `start + warmup` for `duration` (if any).
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub measure_from: Instant,
    pub until: Option<Instant>,
}

impl Window {
    pub fn new(start: Instant, warmup_s: f64, duration_s: Option<f64>) -> Window {
        let measure_from = start + Duration::from_secs_f64(warmup_s.max(0.0));
        Window {
            measure_from,
            until: duration_s.map(|d| measure_from + Duration::from_secs_f64(d.max(0.0))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_take_units() {
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert_eq!(parse_bytes("2G"), Ok(2_000_000_000));
        assert!(parse_bytes("1 parsec").is_err());
        assert!(parse_bytes("MiB").is_err());
    }

    #[test]
    fn partitions_spread_over_connections() {
        assert_eq!(assign(&[0, 1, 2, 3], 2), vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(assign(&[0], 3), vec![vec![0], vec![0], vec![0]]);
    }
}
