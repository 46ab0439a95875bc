//! `bench e2e`: producers and consumers at once on the same topic. Consumers start at the
//! latest offsets; each record value carries its scheduled send time (wall clock, ns), and
//! the latency is taken when a consumer holds the record. After the producers stop, the
//! consumers get a bounded grace period to catch up.

use super::consume::{self, ConsumeShared};
use super::kafka::{self, Client};
use super::produce::{self, ProduceShared};
use super::report::{Latency, RunReport};
use super::{join_all, LoadArgs, Start, WorkerStats};
use anyhow::{bail, Result};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long consumers may take to catch up after the last send.
const DRAIN_WAIT_MAX: Duration = Duration::from_secs(10);

pub fn run(args: &LoadArgs) -> Result<RunReport> {
    if args.record_size < 8 {
        bail!("e2e needs --record-size of at least 8 (the value carries the send time)");
    }
    let (layout, ranges) = super::block_on({
        let args = args.clone();
        async move {
            let mut client = Client::connect(&args.bootstrap, &args.client_security()).await?;
            let layout = kafka::ensure_topic(&mut client, &args.topic, args.partitions).await?;
            let ranges =
                consume::partition_ranges(&mut client, &args.topic, &layout, "latest", false)
                    .await?;
            Ok((layout, ranges))
        }
    })?;
    let start = Start::new(args.producers + args.consumers);
    let produce_shared = Arc::new(ProduceShared {
        start: start.clone(),
        budget: args.total_bytes.map(|b| AtomicI64::new(b as i64)),
        produced: AtomicU64::new(0),
    });
    let consume_shared = Arc::new(ConsumeShared {
        start,
        stop: AtomicBool::new(false),
        consumed: AtomicU64::new(0),
    });
    // Consumers are told the run's window through a copy of the arguments without a duration:
    // they stop when they have everything the producers got acknowledged.
    let mut consumer_args = args.clone();
    consumer_args.duration = None;
    consumer_args.total_bytes = None;
    let consumers =
        consume::spawn_consumers(&consumer_args, &ranges, consume_shared.clone(), true)?;
    let producers = produce::spawn_producers(args, &layout, produce_shared.clone(), true)?;
    let produced = join_all(producers);
    let target = produce_shared.produced.load(Ordering::Relaxed);
    let deadline = Instant::now() + DRAIN_WAIT_MAX;
    while produced.is_ok()
        && consume_shared.consumed.load(Ordering::Relaxed) < target
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    consume_shared.stop.store(true, Ordering::Relaxed);
    let consumed = join_all(consumers);
    let produced = produced?;
    let consumed = consumed?;
    let seen = consume_shared.consumed.load(Ordering::Relaxed);
    if seen < target {
        eprintln!(
            "bench e2e: consumers saw {seen} of the {target} acknowledged records within {DRAIN_WAIT_MAX:?} after the last send"
        );
    }
    let mut p = WorkerStats::new();
    for s in &produced {
        p.merge(s);
    }
    let mut c = WorkerStats::new();
    for s in &consumed {
        c.merge(s);
    }
    let report = produce::summarise("e2e", args, &p);
    Ok(RunReport {
        ack_latency_ms: report.latency_ms.clone(),
        latency_ms: (!c.latency_ns.is_empty()).then(|| Latency::from(&c.latency_ns)),
        consumed_records: Some(seen),
        ..report
    })
}
