//! Producer connections. Each thread owns one connection per partition leader it sends to;
//! one task per connection reads the answers while the sender keeps up to `--max-inflight`
//! requests outstanding. With `--rate` every batch has a send time fixed in advance
//! (`start + k * interval`): a sender that falls behind sends at once, and the latency still
//! counts from the scheduled time, so a stall shows up in the percentiles instead of
//! silently lowering the offered load (coordinated omission).

use super::kafka::transport::Transport;
use super::kafka::{self, BatchTemplate, FrameReader, TopicLayout};
use super::report::{Latency, RunReport};
use super::{assign, join_all, run_threads, LoadArgs, Start, Window, WorkerStats};
use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use ringbroker_runtime::notify::Notify;
use ringbroker_runtime::op;
use ringbroker_runtime::spawn;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the producer threads of one run share.
pub struct ProduceShared {
    pub start: Arc<Start>,
    /// Record-value bytes left to send under `--total-bytes`.
    pub budget: Option<AtomicI64>,
    /// Records acknowledged (or sent, with acks=0), for e2e consumers to know when to stop.
    pub produced: AtomicU64,
}

/// `bench produce`.
pub fn run(args: &LoadArgs) -> Result<RunReport> {
    let layout = super::block_on({
        let args = args.clone();
        async move { prepare(&args).await }
    })?;
    let threads = args.producers;
    let shared = Arc::new(ProduceShared {
        start: Start::new(threads),
        budget: args.total_bytes.map(|b| AtomicI64::new(b as i64)),
        produced: AtomicU64::new(0),
    });
    let handles = spawn_producers(args, &layout, shared, false)?;
    let stats = join_all(handles)?;
    let mut total = WorkerStats::new();
    for s in &stats {
        total.merge(s);
    }
    Ok(summarise("produce", args, &total))
}

/// Creates the topic if needed and finds its partitions' leaders.
pub async fn prepare(args: &LoadArgs) -> Result<TopicLayout> {
    let mut client = kafka::Client::connect(&args.bootstrap, &args.client_security()).await?;
    kafka::ensure_topic(&mut client, &args.topic, args.partitions).await
}

/// Starts one thread per producer connection (`stamp`: see [`produce`]).
pub fn spawn_producers(
    args: &LoadArgs,
    layout: &TopicLayout,
    shared: Arc<ProduceShared>,
    stamp: bool,
) -> Result<Vec<std::thread::JoinHandle<Result<WorkerStats>>>> {
    let plans = assign(&layout.partitions, args.producers);
    let cores = args.cores()?;
    let args = Arc::new(args.clone());
    let plans = Arc::new(plans);
    Ok(run_threads(
        "producer",
        args.producers,
        cores.as_deref(),
        move |i| {
            let args = args.clone();
            let plans = plans.clone();
            let shared = shared.clone();
            async move { produce(i, &args, &plans[i], &shared, stamp).await }
        },
    ))
}

/// One request waiting for its answer.
struct Pending {
    correlation_id: i32,
    scheduled: Instant,
    records: u64,
    value_bytes: u64,
}

/// A connection to one partition leader and what its answer reader shares with the sender.
struct Connection {
    conn: Rc<Transport>,
    pending: RefCell<VecDeque<Pending>>,
    /// Fires when an answer arrived, a request was queued, or the connection closed.
    changed: Rc<Notify>,
    closed: Cell<bool>,
    error: RefCell<Option<anyhow::Error>>,
}

impl Connection {
    fn fail(&self, e: anyhow::Error) {
        self.error.borrow_mut().get_or_insert(e);
        self.closed.set(true);
        self.changed.notify_all();
    }

    fn take_error(&self) -> Option<anyhow::Error> {
        self.error.borrow_mut().take()
    }
}

/// Producer connection thread `index`: sends batches to `partitions` until the window or the
/// byte budget ends. With `stamp`, every batch is re-stamped with its scheduled send time
/// (values carry it for e2e latency).
pub async fn produce(
    index: usize,
    args: &LoadArgs,
    partitions: &[(i32, String)],
    shared: &Arc<ProduceShared>,
    stamp: bool,
) -> Result<WorkerStats> {
    let topic = TopicName(StrBytes::from_string(args.topic.clone()));
    let records_per_batch = args.records_per_batch();
    let template = BatchTemplate::new(
        records_per_batch,
        args.record_size as usize,
        index as u64 + 1,
    );
    let frozen = template.frozen();
    let stats = Rc::new(RefCell::new(WorkerStats::new()));

    let security = args.client_security();
    let mut connections: BTreeMap<String, Rc<Connection>> = BTreeMap::new();
    for (_, leader) in partitions {
        if !connections.contains_key(leader) {
            let mut client = kafka::Client::connect(leader, &security).await?;
            kafka::wait_for_topic(&mut client, &args.topic).await?;
            let conn = client.conn.clone();
            connections.insert(
                leader.clone(),
                Rc::new(Connection {
                    conn,
                    pending: RefCell::new(VecDeque::new()),
                    changed: Notify::new(),
                    closed: Cell::new(false),
                    error: RefCell::new(None),
                }),
            );
        }
    }

    let start = shared.start.wait();
    let start_wall_ns = kafka::wall_ns();
    let window = Window::new(
        start,
        args.warmup,
        args.duration.or(if args.total_bytes.is_some() {
            None
        } else {
            Some(10.0)
        }),
    );
    let readers: Vec<_> = if args.acks != 0 {
        connections
            .values()
            .map(|c| {
                spawn(read_answers(
                    c.clone(),
                    stats.clone(),
                    shared.clone(),
                    window,
                ))
            })
            .collect()
    } else {
        Vec::new()
    };

    // Open loop: this connection's share of the rate, its sends staggered against the others.
    let interval_s = args
        .rate
        .map(|r| records_per_batch as f64 / (r / args.producers as f64));
    let stagger_s = interval_s.map_or(0.0, |iv| iv * index as f64 / args.producers as f64);
    let mut correlation_id = 0i32;
    let mut sent_batches: u64 = 0;
    let result: Result<()> = async {
        loop {
            let scheduled = match interval_s {
                Some(iv) => start + Duration::from_secs_f64(stagger_s + iv * sent_batches as f64),
                None => Instant::now(),
            };
            if window.until.is_some_and(|until| scheduled >= until) {
                return Ok(());
            }
            if let Some(budget) = &shared.budget {
                if budget.fetch_sub(template.value_bytes as i64, Ordering::Relaxed) <= 0 {
                    return Ok(());
                }
            }
            let now = Instant::now();
            if scheduled > now {
                op::sleep(scheduled - now).await;
            }
            let (partition, leader) = &partitions[sent_batches as usize % partitions.len()];
            let connection = connections
                .get(leader)
                .ok_or_else(|| anyhow!("no connection to {leader}"))?;
            while args.acks != 0
                && connection.pending.borrow().len() >= args.max_inflight
                && !connection.closed.get()
            {
                connection.changed.notified().await;
            }
            if let Some(e) = connection.take_error() {
                return Err(e);
            }
            let scheduled = if interval_s.is_some() {
                scheduled
            } else {
                Instant::now()
            };
            let batch: Bytes = if stamp {
                template.stamped(start_wall_ns + scheduled.duration_since(start).as_nanos() as u64)
            } else {
                frozen.clone()
            };
            correlation_id = correlation_id.wrapping_add(1);
            let pieces =
                kafka::produce_request(&topic, *partition, args.acks, correlation_id, &batch)?;
            if args.acks != 0 {
                connection.pending.borrow_mut().push_back(Pending {
                    correlation_id,
                    scheduled,
                    records: template.records as u64,
                    value_bytes: template.value_bytes as u64,
                });
                connection.changed.notify_all();
            }
            connection
                .conn
                .send(pieces)
                .await
                .with_context(|| format!("sending Produce to {leader}"))?;
            sent_batches += 1;
            if args.acks == 0 {
                let now = Instant::now();
                shared
                    .produced
                    .fetch_add(template.records as u64, Ordering::Relaxed);
                if scheduled >= window.measure_from {
                    let mut s = stats.borrow_mut();
                    s.records += template.records as u64;
                    s.value_bytes += template.value_bytes as u64;
                    s.requests += 1;
                    s.first_at.get_or_insert(window.measure_from);
                    s.last_at = Some(now);
                }
            }
        }
    }
    .await;

    for c in connections.values() {
        c.closed.set(true);
        c.changed.notify_all();
    }
    for r in readers {
        let _ = r.await;
    }
    result?;
    for c in connections.values() {
        if let Some(e) = c.take_error() {
            return Err(e);
        }
    }
    let s = Rc::try_unwrap(stats)
        .map_err(|_| anyhow!("answer readers still hold the statistics"))?
        .into_inner();
    Ok(s)
}

/// Reads Produce answers in order, matching each to its request, until the sender has
/// closed the connection and nothing is outstanding.
async fn read_answers(
    connection: Rc<Connection>,
    stats: Rc<RefCell<WorkerStats>>,
    shared: Arc<ProduceShared>,
    window: Window,
) {
    let mut reader = FrameReader::new(connection.conn.clone());
    loop {
        while connection.pending.borrow().is_empty() {
            if connection.closed.get() {
                return;
            }
            connection.changed.notified().await;
        }
        let frame = match reader.next().await {
            Ok(f) => f,
            Err(e) => return connection.fail(e.context("reading Produce answers")),
        };
        let now = Instant::now();
        let Some(p) = connection.pending.borrow_mut().pop_front() else {
            return connection.fail(anyhow!("a Produce answer nobody asked for"));
        };
        if let Err(e) = kafka::check_produce_response(frame, p.correlation_id) {
            return connection.fail(e);
        }
        if p.scheduled >= window.measure_from {
            let mut s = stats.borrow_mut();
            s.records += p.records;
            s.value_bytes += p.value_bytes;
            s.requests += 1;
            s.latency_ns
                .saturating_record(now.duration_since(p.scheduled).as_nanos() as u64);
            s.first_at.get_or_insert(window.measure_from);
            s.last_at = Some(now);
        }
        shared.produced.fetch_add(p.records, Ordering::Relaxed);
        connection.changed.notify_all();
    }
}

/// Turns merged counters into the run's report.
pub fn summarise(mode: &str, args: &LoadArgs, total: &WorkerStats) -> RunReport {
    let elapsed_s = match (total.first_at, total.last_at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    RunReport::new(mode, args, total.records, total.value_bytes, elapsed_s)
        .with_latency((!total.latency_ns.is_empty()).then(|| Latency::from(&total.latency_ns)))
}
