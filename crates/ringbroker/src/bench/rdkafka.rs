//! `bench import-rdkafka`: turns the output of librdkafka's `rdkafka_performance` (run by
//! `scripts/bench` with `-u`, its table format, and for latency runs `-l -A FILE`) into the
//! same JSON as our own runs, so `bench report` can put an independent client's figures beside
//! ours.
//!
//! `rdkafka_performance` prints a row of cumulative counters about once a second (`elapsed` in
//! ms since it started producing or consuming, `dr` = messages acknowledged, for a consumer
//! `msgs`/`bytes` received). It has no duration option: `scripts/bench` stops it with SIGINT
//! after warm-up + duration + 1 s. A producer's figures are the difference between the first
//! row at or after the warm-up and the last row at or before warm-up + duration (+ 0.5 s of
//! slack for the row's timer), so neither the start nor the shutdown is counted. A consumer
//! (`-e`, stops at the end of the partition) is counted over its whole run, its last row.
//!
//! Latency (`-l -A FILE`): one line per acknowledged message, in acknowledgement order, with
//! microseconds from the `produce()` call to the delivery report. The samples of the measured
//! window are those after the first `dr` messages of its first row and up to the last row's `dr`.
//! Unlike `ringbroker bench --rate`, this counts from the moment the client enqueued the
//! message, not from a send time fixed in advance.

use super::report::{Latency, RunReport};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// What `rdkafka_performance -u` printed (stdout).
    pub output: PathBuf,
    /// Per-message latencies in microseconds (`rdkafka_performance -l -A FILE`).
    #[arg(long)]
    pub latency: Option<PathBuf>,
    /// Seconds at the start not counted (producer runs).
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Seconds counted after the warm-up (producer runs). [default: up to the last row]
    #[arg(long)]
    pub duration: Option<f64>,
    /// acks the producer used (recorded in the JSON).
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    pub acks: i16,
    /// `batch.size` the producer used (recorded in the JSON).
    #[arg(long, default_value_t = 0)]
    pub batch_bytes: u64,
    /// Target messages/s (`-r`), if any (recorded in the JSON).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Topic (recorded in the JSON).
    #[arg(long, default_value = "")]
    pub topic: String,
    /// A name for this run in the JSON output.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Write the result as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Slack for the row timer: a row due at the end of the window may come this late.
const ROW_SLACK_MS: f64 = 500.0;
/// Bound on the latency samples read (about 17 min at 100 k messages/s).
const LATENCY_SAMPLES_MAX: usize = 100_000_000;

/// One row of `rdkafka_performance -u` output, by column name.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    elapsed_ms: f64,
    /// Producer: messages acknowledged (`dr`); consumer: messages received (`msgs`).
    messages: u64,
    /// Consumer only: bytes received.
    bytes: u64,
}

/// What a run's output says.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// `P` (producer) or `C` (consumer).
    pub producer: bool,
    pub record_size: u64,
    pub records: u64,
    pub bytes: u64,
    pub elapsed_s: f64,
    /// Messages acknowledged before the measured window (producer), to skip latency samples.
    pub skip_samples: u64,
}

/// Parses `rdkafka_performance -u` output; `warmup_s`/`duration_s` select the window (producer).
pub fn parse(text: &str, warmup_s: f64, duration_s: Option<f64>) -> Result<Parsed> {
    let mut header: Option<Vec<String>> = None;
    let mut rows = Vec::new();
    let mut record_size = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("% Sending") {
            // "% Sending messages of size 1000 bytes" / "% Sending N messages of size 1000 bytes"
            record_size = rest
                .split_whitespace()
                .skip_while(|w| *w != "size")
                .nth(1)
                .and_then(|w| w.parse::<u64>().ok());
            continue;
        }
        if !line.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = line
            .trim_end()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.first() == Some(&"elapsed") {
            header = Some(cells.iter().map(|c| c.to_string()).collect());
            continue;
        }
        let Some(h) = &header else { continue };
        let col = |name: &str| -> Option<f64> {
            let i = h.iter().position(|c| c == name)?;
            cells.get(i)?.parse::<f64>().ok()
        };
        let producer = h.iter().any(|c| c == "dr");
        let (Some(elapsed_ms), Some(messages), Some(bytes)) = (
            col("elapsed"),
            col(if producer { "dr" } else { "msgs" }),
            col("bytes"),
        ) else {
            continue;
        };
        rows.push(Row {
            elapsed_ms,
            messages: messages as u64,
            bytes: bytes as u64,
        });
    }
    let Some(h) = header else {
        bail!("no table header (was rdkafka_performance run with -u?)");
    };
    let producer = h.iter().any(|c| c == "dr");
    if producer {
        let record_size = record_size.context("no \"% Sending ... of size N bytes\" line")?;
        let start_ms = warmup_s * 1e3;
        let end_ms = duration_s.map(|d| (warmup_s + d) * 1e3 + ROW_SLACK_MS);
        let first = rows
            .iter()
            .find(|r| r.elapsed_ms >= start_ms)
            .context("no row after the warm-up")?;
        let last = rows
            .iter()
            .rev()
            .find(|r| !matches!(end_ms, Some(e) if r.elapsed_ms > e))
            .context("no row in the measured window")?;
        if last.elapsed_ms <= first.elapsed_ms {
            bail!(
                "the measured window is empty (rows at {} and {} ms)",
                first.elapsed_ms,
                last.elapsed_ms
            );
        }
        let records = last.messages.saturating_sub(first.messages);
        Ok(Parsed {
            producer,
            record_size,
            records,
            bytes: records * record_size,
            elapsed_s: (last.elapsed_ms - first.elapsed_ms) / 1e3,
            skip_samples: first.messages,
        })
    } else {
        let last = rows
            .iter()
            .rev()
            .find(|r| r.elapsed_ms > 0.0)
            .context("no row with a positive elapsed time")?;
        Ok(Parsed {
            producer,
            record_size: last.bytes.checked_div(last.messages).unwrap_or(0),
            records: last.messages,
            bytes: last.bytes,
            elapsed_s: last.elapsed_ms / 1e3,
            skip_samples: 0,
        })
    }
}

/// Percentiles of the samples (microseconds, one a line) `skip..skip + count`.
pub fn latency(text: &str, skip: u64, count: u64) -> Result<Option<Latency>> {
    let mut h = super::new_histogram();
    for (i, line) in text
        .lines()
        .skip(usize::try_from(skip).unwrap_or(usize::MAX))
        .take(
            usize::try_from(count)
                .unwrap_or(usize::MAX)
                .min(LATENCY_SAMPLES_MAX),
        )
        .enumerate()
    {
        let us: u64 = line
            .trim()
            .parse()
            .with_context(|| format!("latency sample {}: {line:?}", skip as usize + i + 1))?;
        h.saturating_record(us.saturating_mul(1000).max(1));
    }
    Ok((!h.is_empty()).then(|| Latency::from(&h)))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// `bench import-rdkafka`.
pub fn import(args: &ImportArgs) -> Result<()> {
    let p = parse(&read(&args.output)?, args.warmup, args.duration)
        .with_context(|| format!("parsing {}", args.output.display()))?;
    let latency = match &args.latency {
        Some(path) => latency(&read(path)?, p.skip_samples, p.records)?,
        None => None,
    };
    let per_s = |v: f64| {
        if p.elapsed_s > 0.0 {
            v / p.elapsed_s
        } else {
            0.0
        }
    };
    let report = RunReport {
        mode: if p.producer { "produce" } else { "consume" }.into(),
        label: args.label.clone(),
        bootstrap: String::new(),
        topic: args.topic.clone(),
        partitions: 1,
        record_size: p.record_size,
        batch_bytes: args.batch_bytes,
        producers: usize::from(p.producer),
        consumers: usize::from(!p.producer),
        acks: args.acks,
        compression: "none".into(),
        max_inflight: 0,
        rate_target: args.rate,
        elapsed_s: p.elapsed_s,
        records: p.records,
        bytes: p.bytes,
        mb_per_s: per_s(p.bytes as f64) / 1e6,
        records_per_s: per_s(p.records as f64),
        gbit_per_s: per_s(p.bytes as f64) * 8.0 / 1e9,
        latency_ms: latency,
        ack_latency_ms: None,
        consumed_records: None,
        client_cores: None,
        broker_cores: None,
    };
    super::report::emit(&report, args.json.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Trimmed from a real run (rdkafka_performance of librdkafka 2.12.1 against ringbroker).
    const PRODUCE: &str = "\
% Sending messages of size 1000 bytes
|    elapsed |       msgs |      bytes |        rtt |         dr |     dr_m/s |    dr_MB/s |     dr_err |     tx_err |       outq |     offset |   lat_curr |    lat_avg |     lat_lo |     lat_hi 
|       1000 |     120000 |  120000000 |        212 |     100000 |     100000 |     100.00 |          0 |          0 |      20000 |      99999 |       1.00 |       1.00 |       0.06 |       9.00 
|       2001 |     220000 |  220000000 |        212 |     200000 |      99950 |      99.95 |          0 |          0 |      20000 |     199999 |       1.00 |       1.00 |       0.06 |       9.00 
|       3001 |     320000 |  320000000 |        212 |     300000 |      99966 |      99.97 |          0 |          0 |      20000 |     299999 |       1.00 |       1.00 |       0.06 |       9.00 
|       4002 |     420000 |  420000000 |        212 |     400000 |      99950 |      99.95 |          0 |          0 |      20000 |     399999 |       1.00 |       1.00 |       0.06 |       9.00 
|       4990 |     430000 |  430000000 |        212 |     405000 |      81162 |      81.16 |          0 |          0 |          0 |     404999 |       1.00 |       1.00 |       0.06 |       9.00 
";

    #[test]
    fn producer_window_skips_warmup_and_shutdown() {
        let p = parse(PRODUCE, 1.0, Some(3.0)).unwrap();
        assert!(p.producer);
        assert_eq!(p.record_size, 1000);
        // Rows at 1000 (first at/after the warm-up) and 4002 (last before 4000 + slack); the
        // row at 4990 (after SIGINT) is not counted.
        assert_eq!(p.records, 300_000);
        assert_eq!(p.bytes, 300_000_000);
        assert!((p.elapsed_s - 3.002).abs() < 1e-9);
        assert_eq!(p.skip_samples, 100_000);
        // Without a duration: up to the last row.
        let all = parse(PRODUCE, 0.0, None).unwrap();
        assert_eq!(all.records, 305_000);
    }

    #[test]
    fn consumer_counts_the_whole_run() {
        let text = "\
|    elapsed |       msgs |      bytes |        rtt |        m/s |       MB/s |     rx_err |     offset 
|          0 |          0 |          0 |          0 |          0 |       0.00 |          0 |          0 
|       1000 |    1000000 | 1000000000 |          0 |    1000000 |    1000.00 |          0 |    1000000 
|       1500 |    1200000 | 1200000000 |          0 |     800000 |     800.00 |          0 |    1200000 
% Average application fetch latency: 51us
";
        let p = parse(text, 1.0, Some(3.0)).unwrap();
        assert!(!p.producer);
        assert_eq!(
            (p.records, p.bytes, p.record_size),
            (1_200_000, 1_200_000_000, 1000)
        );
        assert!((p.elapsed_s - 1.5).abs() < 1e-9);
    }

    #[test]
    fn rejects_output_without_table_or_window() {
        assert!(parse("% Sending messages of size 10 bytes\n", 0.0, None).is_err());
        // Every row is before the end of the warm-up.
        assert!(parse(PRODUCE, 10.0, Some(3.0)).is_err());
    }

    #[test]
    fn latency_uses_the_window_samples() {
        // 3 warm-up samples (large), then 1..=100 ms, then a shutdown sample.
        let mut text = String::from("900000\n900000\n900000\n");
        for ms in 1..=100u64 {
            text.push_str(&format!("{}\n", ms * 1000));
        }
        text.push_str("5000000\n");
        let l = latency(&text, 3, 100).unwrap().unwrap();
        assert_eq!(l.count, 100);
        assert!((l.p50 - 50.0).abs() < 0.1, "{l:?}");
        assert!((l.p99 - 99.0).abs() < 0.1, "{l:?}");
        assert!((l.max - 100.0).abs() < 0.1, "{l:?}");
        assert!(latency("12\nx\n", 0, 10).is_err());
        assert_eq!(latency("", 0, 10).unwrap(), None);
    }
}
