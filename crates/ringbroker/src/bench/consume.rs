//! Consumer connections: each thread fetches its share of the partitions (one fetch loop per
//! partition leader, one Fetch in flight each, as Kafka consumers do) from a start offset to
//! an end offset, a deadline or a stop signal. Throughput counts record-batch bytes as the
//! broker stores and sends them.

use super::kafka::{self, Client};
use super::report::RunReport;
use super::{assign, join_all, run_threads, LoadArgs, Start, Window, WorkerStats};
use anyhow::{bail, Context, Result};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use ringbroker_runtime::spawn;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// One partition to read: where to start and (optionally) where to stop.
#[derive(Clone, Debug)]
pub struct PartitionRange {
    pub partition: i32,
    pub leader: String,
    pub from: i64,
    pub until: Option<i64>,
}

/// What the consumer threads of one run share.
pub struct ConsumeShared {
    pub start: Arc<Start>,
    /// Set to end every fetch loop after its current Fetch.
    pub stop: AtomicBool,
    pub consumed: AtomicU64,
}

/// `bench consume`.
pub fn run(args: &LoadArgs) -> Result<RunReport> {
    let ranges = super::block_on({
        let args = args.clone();
        async move {
            let mut client = Client::connect(&args.bootstrap, &args.client_security()).await?;
            let layout = kafka::describe_topic(&mut client, &args.topic)
                .await?
                .with_context(|| format!("topic {:?} does not exist: produce first", args.topic))?;
            let stop_at_end = args.duration.is_none() && args.total_bytes.is_none();
            partition_ranges(&mut client, &args.topic, &layout, &args.from, stop_at_end).await
        }
    })?;
    if ranges.iter().all(|r| r.until.is_some_and(|u| u <= r.from)) {
        bail!(
            "topic {:?} holds no records from the {} offsets: produce first",
            args.topic,
            args.from
        );
    }
    let shared = Arc::new(ConsumeShared {
        start: Start::new(args.consumers),
        stop: AtomicBool::new(false),
        consumed: AtomicU64::new(0),
    });
    let stats = join_all(spawn_consumers(args, &ranges, shared, false)?)?;
    let mut total = WorkerStats::new();
    for s in &stats {
        total.merge(s);
    }
    let elapsed_s = match (total.first_at, total.last_at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    Ok(RunReport::new(
        "consume",
        args,
        total.records,
        total.value_bytes,
        elapsed_s,
    ))
}

/// Start offsets (`earliest` or `latest`) of every partition, and the latest offsets as end
/// offsets when `stop_at_end`.
pub async fn partition_ranges(
    client: &mut Client,
    topic: &str,
    layout: &kafka::TopicLayout,
    from: &str,
    stop_at_end: bool,
) -> Result<Vec<PartitionRange>> {
    let ids: Vec<i32> = layout.partitions.iter().map(|(p, _)| *p).collect();
    let latest: BTreeMap<i32, i64> = kafka::list_offsets(client, topic, &ids, kafka::LATEST)
        .await?
        .into_iter()
        .collect();
    let starts: BTreeMap<i32, i64> = if from == "latest" {
        latest.clone()
    } else {
        kafka::list_offsets(client, topic, &ids, kafka::EARLIEST)
            .await?
            .into_iter()
            .collect()
    };
    layout
        .partitions
        .iter()
        .map(|(p, leader)| {
            Ok(PartitionRange {
                partition: *p,
                leader: leader.clone(),
                from: *starts
                    .get(p)
                    .with_context(|| format!("no start offset for partition {p}"))?,
                until: if stop_at_end {
                    latest.get(p).copied()
                } else {
                    None
                },
            })
        })
        .collect()
}

/// Starts one thread per consumer connection. With `stamp`, every record's value carries its
/// scheduled send time and the latency to now is recorded.
pub fn spawn_consumers(
    args: &LoadArgs,
    ranges: &[PartitionRange],
    shared: Arc<ConsumeShared>,
    stamp: bool,
) -> Result<Vec<std::thread::JoinHandle<Result<WorkerStats>>>> {
    if args.consumers > ranges.len() {
        bail!(
            "--consumers {} is more than the {} partitions: a partition is read by one consumer",
            args.consumers,
            ranges.len()
        );
    }
    let plans = Arc::new(assign(ranges, args.consumers));
    let cores = args.cores()?;
    // Consumers go on the CPUs after the producers' when both run (e2e).
    let cores = cores.map(|c| {
        let skip = if stamp { args.producers } else { 0 };
        (0..c.len())
            .map(|i| c[(i + skip) % c.len()])
            .collect::<Vec<_>>()
    });
    let args = Arc::new(args.clone());
    Ok(run_threads(
        "consumer",
        args.consumers,
        cores.as_deref(),
        move |i| {
            let args = args.clone();
            let plans = plans.clone();
            let shared = shared.clone();
            async move { consume(&args, &plans[i], shared, stamp).await }
        },
    ))
}

async fn consume(
    args: &LoadArgs,
    ranges: &[PartitionRange],
    shared: Arc<ConsumeShared>,
    stamp: bool,
) -> Result<WorkerStats> {
    let mut by_leader: BTreeMap<String, Vec<PartitionRange>> = BTreeMap::new();
    for r in ranges {
        by_leader
            .entry(r.leader.clone())
            .or_default()
            .push(r.clone());
    }
    let security = args.client_security();
    let mut clients = Vec::new();
    for (leader, ranges) in by_leader {
        let mut client = Client::connect(&leader, &security).await?;
        kafka::wait_for_topic(&mut client, &args.topic).await?;
        clients.push((client, ranges));
    }
    let start = shared.start.wait();
    let start_wall_ns = kafka::wall_ns();
    let window = Window::new(start, args.warmup, args.duration);
    let measure_from_wall_ns =
        start_wall_ns + window.measure_from.duration_since(start).as_nanos() as u64;
    let stats = Rc::new(RefCell::new(WorkerStats::new()));
    let loops: Vec<_> = clients
        .into_iter()
        .map(|(client, ranges)| {
            let loop_args = LoopArgs {
                topic: TopicName(StrBytes::from_string(args.topic.clone())),
                fetch_bytes: args.fetch_bytes as i32,
                total_bytes: args.total_bytes,
                window,
                stamp,
                measure_from_wall_ns,
            };
            spawn(fetch_loop(
                client,
                ranges,
                loop_args,
                stats.clone(),
                shared.clone(),
            ))
        })
        .collect();
    let mut result = Ok(());
    for l in loops {
        match l.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shared.stop.store(true, Ordering::Relaxed);
                if result.is_ok() {
                    result = Err(e);
                }
            }
            Err(_) => bail!("a fetch loop was dropped"),
        }
    }
    result?;
    let mut s = std::mem::replace(&mut *stats.borrow_mut(), WorkerStats::new());
    s.first_at.get_or_insert(window.measure_from);
    Ok(s)
}

struct LoopArgs {
    topic: TopicName,
    fetch_bytes: i32,
    total_bytes: Option<u64>,
    window: Window,
    stamp: bool,
    measure_from_wall_ns: u64,
}

async fn fetch_loop(
    mut client: Client,
    mut ranges: Vec<PartitionRange>,
    a: LoopArgs,
    stats: Rc<RefCell<WorkerStats>>,
    shared: Arc<ConsumeShared>,
) -> Result<()> {
    let max_bytes = a.fetch_bytes.saturating_mul(ranges.len() as i32);
    loop {
        let offsets: Vec<(i32, i64)> = ranges
            .iter()
            .filter(|r| r.until.is_none_or(|u| r.from < u))
            .map(|r| (r.partition, r.from))
            .collect();
        if offsets.is_empty()
            || shared.stop.load(Ordering::Relaxed)
            || a.window.until.is_some_and(|u| Instant::now() >= u)
            || a.total_bytes
                .is_some_and(|t| stats.borrow().value_bytes >= t)
        {
            return Ok(());
        }
        let request = kafka::fetch_request(&a.topic, &offsets, 500, a.fetch_bytes, max_bytes);
        let fetched = kafka::fetch(&mut client, &request).await?;
        let now = Instant::now();
        let now_wall_ns = kafka::wall_ns();
        let mut s = stats.borrow_mut();
        for f in fetched {
            let Some(range) = ranges.iter_mut().find(|r| r.partition == f.partition) else {
                bail!(
                    "Fetch answered partition {} that was not asked for",
                    f.partition
                );
            };
            let scan = kafka::scan_batches(&f.records)?;
            match scan.next_offset {
                Some(next) => range.from = next,
                None if !f.records.is_empty() && range.from < f.high_watermark => bail!(
                    "partition {}: the batch at offset {} is larger than --fetch-bytes {}",
                    f.partition,
                    range.from,
                    a.fetch_bytes
                ),
                None => continue,
            }
            if a.stamp {
                for batch in kafka::whole_batches(&f.records)? {
                    for sent_ns in kafka::value_stamps(batch) {
                        if sent_ns >= a.measure_from_wall_ns {
                            s.latency_ns
                                .saturating_record(now_wall_ns.saturating_sub(sent_ns));
                        }
                    }
                }
            }
            if now >= a.window.measure_from {
                s.records += scan.records;
                s.value_bytes += scan.bytes;
                s.requests += 1;
                s.last_at = Some(now);
            }
            shared.consumed.fetch_add(scan.records, Ordering::Relaxed);
        }
    }
}
