//! Fault tests for a three-broker cluster (issue #15): while an idempotent acks=all producer and
//! a group consumer (librdkafka, tests/clients/cluster_chaos.py) run, partition leaders are
//! killed with SIGKILL (and, in the long form, frozen with SIGSTOP, and the active controller
//! killed) and brought back, again and again. Afterwards every acknowledged record must be in
//! the topic exactly once, at its acknowledged offset, in produce order per partition; the group
//! consumer must have seen every one; and the replicas' partition logs must be byte-identical.
//! The time from each kill until Metadata names a new leader, and until the producer's next
//! acknowledgement on that partition, is measured and printed (max and median).
//!
//! The long form runs only with `RINGBROKER_LONG_TESTS=1`.

mod common;

use common::cluster::{metadata, Cluster};
use common::{run, Client};
use kafka_protocol::messages::metadata_response::MetadataResponse;
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, FindCoordinatorResponse, GroupId, OffsetFetchRequest,
    OffsetFetchResponse,
};
use kafka_protocol::protocol::StrBytes;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const PARTITIONS: i32 = 6;
/// The producer's rate: enough load that every fault hits records in flight, little enough
/// that two shared cores keep up (a saturated machine measures the machine, not failover).
const RATE_PER_S: u32 = 3000;

fn chaos_script() -> String {
    format!(
        "{}/../../tests/clients/cluster_chaos.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// (leader, isr) per partition of `topic`, in partition order.
fn partitions(m: &MetadataResponse, topic: &str) -> Option<Vec<(i32, Vec<i32>)>> {
    let t = m
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic) && t.error_code == 0)?;
    let mut ps: Vec<_> = t.partitions.iter().collect();
    ps.sort_by_key(|p| p.partition_index);
    Some(
        ps.into_iter()
            .map(|p| (p.leader_id.0, p.isr_nodes.iter().map(|b| b.0).collect()))
            .collect(),
    )
}

/// Metadata from `addr`, or `None` when the node does not answer.
fn try_metadata(addr: &str, topics: Option<&[&str]>) -> Option<MetadataResponse> {
    std::panic::catch_unwind(|| metadata(addr, topics)).ok()
}

/// The running, unpaused node ids.
fn live(c: &Cluster, paused: &[i32]) -> Vec<i32> {
    c.nodes
        .iter()
        .filter(|n| n.broker.is_some() && !paused.contains(&n.id))
        .map(|n| n.id)
        .collect()
}

/// Waits until `ok` holds for the partitions of `topic` as every live node reports them (so
/// no node is behind); panics with the cluster's logs after `timeout`.
fn wait_all(
    c: &Cluster,
    paused: &[i32],
    topic: &str,
    timeout: Duration,
    ok: impl Fn(&[(i32, Vec<i32>)]) -> bool,
) -> Vec<(i32, Vec<i32>)> {
    let deadline = Instant::now() + timeout;
    loop {
        let answers: Vec<_> = live(c, paused)
            .iter()
            .map(|&id| {
                try_metadata(&c.addr(id), Some(&[topic])).and_then(|m| partitions(&m, topic))
            })
            .collect();
        if let Some(Some(first)) = answers.first() {
            if !first.is_empty() && answers.iter().all(|a| a.as_ref() == Some(first)) && ok(first) {
                return first.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{topic} not as expected within {timeout:?}: {answers:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every partition led, with all three replicas in sync.
fn full(ps: &[(i32, Vec<i32>)]) -> bool {
    ps.iter().all(|(l, isr)| *l > 0 && isr.len() == 3)
}

fn create(c: &Cluster, topic: &str) {
    let admin = format!(
        "{}/../../tests/clients/cluster_admin.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = run(
        "python3",
        &[
            &admin,
            "create",
            &c.bootstrap(),
            topic,
            &PARTITIONS.to_string(),
            "3",
        ],
        "",
    );
    assert!(out.contains("\"ok\": true"), "{out}\n{}", c.logs());
    wait_all(c, &[], topic, WAIT, full);
}

/// The lines `partition, offset, value, unix time` of a driver's output file so far.
fn records(path: &Path) -> Vec<(i32, i64, String, f64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Some((
                f.first()?.parse().ok()?,
                f.get(1)?.parse().ok()?,
                f.get(2)?.to_string(),
                f.get(3)?.parse().ok()?,
            ))
        })
        .collect()
}

/// The concatenated `.log` segments of `topic`-`partition` on a node.
fn log_bytes(data_dir: &Path, topic: &str, partition: i32) -> Vec<u8> {
    let dir = data_dir.join(format!("{topic}-{partition}"));
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap_or_default())
        .collect()
}

/// The background load: the producer and the group consumer, each with its own stop file.
/// The consumer can be replaced by a new one in the same group (a new "generation", with its
/// own files).
struct Load {
    dir: tempfile::TempDir,
    bootstrap: String,
    topic: String,
    group: String,
    producer: Option<Child>,
    consumer: Option<Child>,
    generation: usize,
}

fn spawn_driver(args: &[String]) -> Child {
    Command::new("python3")
        .arg(chaos_script())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3")
}

fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter(|l| !l.starts_with('%'))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    )
}

impl Load {
    fn start(c: &Cluster, topic: &str, group: &str) -> Load {
        let dir = tempfile::tempdir().unwrap();
        let mut load = Load {
            dir,
            bootstrap: c.bootstrap(),
            topic: topic.to_string(),
            group: group.to_string(),
            producer: None,
            consumer: None,
            generation: 0,
        };
        load.producer = Some(spawn_driver(&[
            "produce".into(),
            load.bootstrap.clone(),
            topic.into(),
            "600".into(),
            load.path("acked"),
            load.path("stop-producer"),
            RATE_PER_S.to_string(),
        ]));
        load.start_consumer();
        load
    }

    fn start_consumer(&mut self) {
        self.generation += 1;
        self.consumer = Some(spawn_driver(&[
            "group-consume".into(),
            self.bootstrap.clone(),
            self.topic.clone(),
            self.group.clone(),
            "600".into(),
            self.path(&format!("seen-{}", self.generation)),
            self.path(&format!("stop-consumer-{}", self.generation)),
        ]));
    }

    /// Stops the current consumer (it commits as it closes); returns its output.
    fn stop_consumer(&mut self) -> String {
        std::fs::write(self.file(&format!("stop-consumer-{}", self.generation)), "").unwrap();
        output_text(&self.consumer.take().unwrap().wait_with_output().unwrap())
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn path(&self, name: &str) -> String {
        self.file(name).to_str().unwrap().to_string()
    }

    fn acked(&self) -> Vec<(i32, i64, String, f64)> {
        records(&self.file("acked"))
    }

    /// What consumer generation `g` saw.
    fn seen_by(&self, g: usize) -> Vec<(i32, i64, String, f64)> {
        records(&self.file(&format!("seen-{g}")))
    }

    /// What every consumer generation saw.
    fn seen(&self) -> Vec<(i32, i64, String, f64)> {
        (1..=self.generation)
            .flat_map(|g| self.seen_by(g))
            .collect()
    }

    /// Waits until the producer has `n` more acknowledgements than now.
    fn wait_progress(&self, n: usize, c: &Cluster) {
        let from = self.acked().len();
        let deadline = Instant::now() + WAIT;
        while self.acked().len() < from + n {
            assert!(
                Instant::now() < deadline,
                "the producer made no progress\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the producer (it flushes: every record ends acknowledged or failed), then lets the
    /// consumer run until the consumers together have seen every acknowledged record (or `WAIT`
    /// passes), and stops it. Returns their outputs.
    fn stop(&mut self) -> (String, String) {
        std::fs::write(self.file("stop-producer"), "").unwrap();
        let produced = output_text(&self.producer.take().unwrap().wait_with_output().unwrap());
        let acked: HashSet<String> = self.acked().into_iter().map(|r| r.2).collect();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let seen: HashSet<String> = self.seen().into_iter().map(|r| r.2).collect();
            if acked.is_subset(&seen) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let consumed = self.stop_consumer();
        // One file with everything the group saw, for the driver's `verify`.
        let all: String = (1..=self.generation)
            .map(|g| std::fs::read_to_string(self.file(&format!("seen-{g}"))).unwrap_or_default())
            .collect();
        std::fs::write(self.file("seen"), all).unwrap();
        (produced, consumed)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for child in [self.producer.as_mut(), self.consumer.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the driver's `verify` and the replica-divergence check; panics on any failure.
fn verify(c: &Cluster, load: &Load, topic: &str, produced: &str, consumed: &str) {
    let acked = load.file("acked");
    let seen = load.file("seen");
    let out = run(
        "python3",
        &[
            &chaos_script(),
            "verify",
            &c.bootstrap(),
            topic,
            acked.to_str().unwrap(),
            seen.to_str().unwrap(),
        ],
        "",
    );
    println!("producer: {produced}\nconsumer: {consumed}\nverify: {out}");
    assert!(
        out.lines().any(|l| l.starts_with("ok\t")) && !out.contains("fail\t"),
        "{out}\nproducer: {produced}\nconsumer: {consumer}\n{logs}",
        consumer = consumed,
        logs = c.logs()
    );
    assert!(
        load.acked().len() > 1000,
        "too little load to mean anything: {produced}"
    );
    // Once the load has stopped and every ISR is full, every replica holds the same bytes
    // (up to the high watermark, which is then every replica's log end).
    wait_all(c, &[], topic, WAIT, full);
    let deadline = Instant::now() + WAIT;
    for p in 0..PARTITIONS {
        loop {
            let logs: Vec<Vec<u8>> = c
                .nodes
                .iter()
                .map(|n| log_bytes(&n.data_dir, topic, p))
                .collect();
            if !logs[0].is_empty() && logs.iter().all(|l| *l == logs[0]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "partition {p}: replica logs diverge ({:?} bytes, first difference at {:?})\n{}",
                logs.iter().map(Vec::len).collect::<Vec<_>>(),
                logs.iter()
                    .skip(1)
                    .map(|l| l.iter().zip(&logs[0]).position(|(a, b)| a != b))
                    .collect::<Vec<_>>(),
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn summary(what: &str, mut times: Vec<Duration>) -> Duration {
    times.sort();
    let max = times.last().copied().unwrap_or_default();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    println!(
        "{what}: n={} median={median:?} max={max:?} all={times:?}",
        times.len()
    );
    max
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// SIGKILL the leader of a partition, restart it after a pause.
    KillLeader,
    /// SIGSTOP the leader of a partition, SIGCONT it after a pause.
    PauseLeader,
    /// SIGKILL the active controller, restart it after a pause.
    KillController,
}

/// The fault loop: `rounds` faults from `plan`, each followed by recovery to full ISRs.
fn chaos(rounds: usize, plan: impl Fn(usize) -> Fault) {
    let mut c = Cluster::start(3);
    let topic = "chaos";
    create(&c, topic);
    let mut load = Load::start(&c, topic, "chaos-group");
    load.wait_progress(300, &c);
    let mut to_leader: Vec<Duration> = Vec::new();
    let mut to_ack: Vec<Duration> = Vec::new();
    let started = Instant::now();
    for round in 0..rounds {
        let fault = plan(round);
        let partition = (round as i32) % PARTITIONS;
        let now = wait_all(&c, &[], topic, WAIT, full);
        let victim = match fault {
            Fault::KillController => {
                let m = try_metadata(&c.addr(1), None).expect("node 1 answers");
                m.controller_id.0
            }
            _ => now[partition as usize].0,
        };
        let controller = try_metadata(&c.addr(victim), None).map(|m| m.controller_id.0);
        let led: Vec<i32> = (0..PARTITIONS)
            .filter(|&p| now[p as usize].0 == victim)
            .collect();
        let acked_before: HashMap<i32, usize> = led
            .iter()
            .map(|&p| (p, load.acked().iter().filter(|r| r.0 == p).count()))
            .collect();
        let paused = if fault == Fault::PauseLeader {
            c.pause(victim);
            vec![victim]
        } else {
            c.kill(victim);
            vec![]
        };
        let fault_at = Instant::now();
        let others = if paused.is_empty() {
            vec![]
        } else {
            vec![victim]
        };
        let survivor = live(&c, &others)
            .into_iter()
            .find(|&id| id != victim)
            .unwrap();
        // Until Metadata (from a survivor) names new leaders for all the victim's partitions.
        if !led.is_empty() {
            let deadline = fault_at + WAIT;
            loop {
                let moved = try_metadata(&c.addr(survivor), Some(&[topic]))
                    .and_then(|m| partitions(&m, topic))
                    .is_some_and(|ps| {
                        led.iter()
                            .all(|&p| ps[p as usize].0 > 0 && ps[p as usize].0 != victim)
                    });
                if moved {
                    to_leader.push(fault_at.elapsed());
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "round {round}: no new leader after {fault:?} of {victim}\n{}",
                    c.logs()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            // Until the producer's next acknowledgement on every one of those partitions.
            let deadline = fault_at + WAIT;
            loop {
                let acked = load.acked();
                let all = led
                    .iter()
                    .all(|p| acked.iter().filter(|r| r.0 == *p).count() > acked_before[p]);
                if all {
                    to_ack.push(fault_at.elapsed());
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "round {round}: no acknowledgement after {fault:?} of {victim}\n{}",
                    c.logs()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        if paused.is_empty() {
            c.restart(victim);
        } else {
            c.resume(victim);
        }
        // Back: every partition led and fully in sync again, as every node reports it.
        wait_all(&c, &[], topic, WAIT, full);
        println!(
            "round {round}: {fault:?} of node {victim} (led {led:?}, {}) at {:?}: new leaders after {:?}, next ack after {:?}",
            if controller == Some(victim) { "the active controller" } else { "not the controller" },
            started.elapsed(),
            to_leader.last().filter(|_| !led.is_empty()),
            to_ack.last().filter(|_| !led.is_empty()),
        );
    }
    let (produced, consumed) = load.stop();
    verify(&c, &load, topic, &produced, &consumed);
    let leader_max = summary("kill -> new leader in Metadata", to_leader);
    let ack_max = summary("kill -> next acknowledged produce", to_ack);
    // The stated bound (issue #15): fencing takes 2 s of missed heartbeats, then one raft
    // round trip; librdkafka retries within its backoff.
    assert!(
        leader_max < Duration::from_secs(6),
        "new leader after {leader_max:?}"
    );
    assert!(
        ack_max < Duration::from_secs(10),
        "next acknowledgement after {ack_max:?}"
    );
}

#[test]
fn killed_leaders_lose_no_acknowledged_record_and_replicas_never_diverge() {
    chaos(10, |_| Fault::KillLeader);
}

#[test]
fn long_chaos_with_kills_pauses_and_controller_kills() {
    if std::env::var("RINGBROKER_LONG_TESTS").as_deref() != Ok("1") {
        println!("skipped: the long fault test runs only with RINGBROKER_LONG_TESTS=1");
        return;
    }
    chaos(50, |round| match round % 5 {
        1 | 3 => Fault::PauseLeader,
        4 => Fault::KillController,
        _ => Fault::KillLeader,
    });
}

fn coordinator(addr: &str, group: &str) -> Option<i32> {
    let found: FindCoordinatorResponse = std::panic::catch_unwind(|| {
        Client::connect(addr).call(
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default()
                .with_key(StrBytes::from_string(group.to_string()))
                .with_key_type(0),
        )
    })
    .ok()?;
    (found.error_code == 0).then_some(found.node_id.0)
}

/// The committed offsets of `group` in `topic` as node `addr` answers OffsetFetch (v5, all
/// partitions); `None` when it does not answer or is not (yet) the coordinator.
fn committed(addr: &str, group: &str, topic: &str) -> Option<BTreeMap<i32, i64>> {
    let r: OffsetFetchResponse = std::panic::catch_unwind(|| {
        Client::connect(addr).call(
            ApiKey::OffsetFetch,
            5,
            &OffsetFetchRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
                .with_topics(None),
        )
    })
    .ok()?;
    if r.error_code != 0 {
        return None;
    }
    Some(
        r.topics
            .iter()
            .filter(|t| t.name.0.as_str() == topic)
            .flat_map(|t| t.partitions.iter())
            .filter(|p| p.error_code == 0 && p.committed_offset >= 0)
            .map(|p| (p.partition_index, p.committed_offset))
            .collect(),
    )
}

/// Waits until `group`'s coordinator (asked through node `via`) is `want` (any node but
/// `not` when `want` is `None`) and its committed offsets of every partition of `topic` are
/// at least `floor`'s and beyond `beyond`'s; returns (coordinator, offsets).
#[allow(clippy::too_many_arguments)]
fn wait_committed(
    c: &Cluster,
    via: i32,
    group: &str,
    topic: &str,
    want: Option<i32>,
    not: i32,
    floor: &BTreeMap<i32, i64>,
    beyond: &BTreeMap<i32, i64>,
) -> (i32, BTreeMap<i32, i64>) {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    loop {
        if let Some(n) =
            coordinator(&c.addr(via), group).filter(|&n| n != not && want.is_none_or(|w| w == n))
        {
            if let Some(offsets) = committed(&c.addr(n), group, topic) {
                // A coordinator never answers with less than was committed before.
                for (p, &f) in floor {
                    let got = offsets.get(p).copied().unwrap_or(-1);
                    assert!(
                        got >= f,
                        "coordinator {n}: partition {p} committed at {got}, but {f} was committed before\n{}",
                        c.logs()
                    );
                }
                let done = (0..PARTITIONS).all(|p| {
                    offsets.get(&p).copied().unwrap_or(-1) > beyond.get(&p).copied().unwrap_or(0)
                });
                if done {
                    return (n, offsets);
                }
                last = Some((n, offsets));
            }
        }
        assert!(
            Instant::now() < deadline,
            "no coordinator with commits beyond {beyond:?} (want {want:?}, not {not}); last {last:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The group's coordinator dies while the group consumes (and produce goes on): the offsets
/// partition's new leader takes the group over, with every commit made before (loaded from
/// its replica), and the consumer keeps consuming and committing there; the old coordinator
/// comes back (it fetched those commits as a follower) and, when it leads the offsets
/// partition again, serves them; a new member of the group starts from them, and the group
/// misses no acknowledged record.
#[test]
fn the_group_resumes_from_its_commits_when_its_coordinator_dies_mid_consumption() {
    let mut c = Cluster::start(3);
    let topic = "coordinated";
    create(&c, topic);
    wait_all(&c, &[], "__consumer_offsets", WAIT, full);
    let group = "chaos-coordinated";
    let mut load = Load::start(&c, topic, group);
    let none = BTreeMap::new();
    // The group has committed on every partition.
    let (before, first) = wait_committed(&c, 1, group, topic, None, -1, &none, &none);
    c.kill(before);
    let killed_at = Instant::now();
    let survivor = (1..=3).find(|&id| id != before).unwrap();
    // A new coordinator, which has every earlier commit and takes new ones.
    let (after, second) = wait_committed(&c, survivor, group, topic, None, before, &first, &first);
    let to_commit = killed_at.elapsed();
    c.restart(before);
    wait_all(&c, &[], "__consumer_offsets", WAIT, full);
    // Leadership of the offsets partition moves back to its preferred replica, the restarted
    // node, which loads the group from its copy of the partition: the commits made while it
    // was dead are there.
    let (back, third) = wait_committed(
        &c,
        survivor,
        group,
        topic,
        Some(before),
        -1,
        &second,
        &second,
    );
    // A new member replaces the first: it starts at the group's commits, not from the start.
    let first_out = load.stop_consumer();
    load.start_consumer();
    load.wait_progress(3000, &c);
    let (produced, consumed) = load.stop();
    let mut first_read: BTreeMap<i32, i64> = BTreeMap::new();
    for r in &load.seen_by(2) {
        let e = first_read.entry(r.0).or_insert(i64::MAX);
        *e = (*e).min(r.1);
    }
    println!(
        "coordinator {before} killed -> {after} committing after {to_commit:?} -> back to {back}; \
         committed {first:?} -> {second:?} -> {third:?}; second member's first offsets {first_read:?}"
    );
    for (p, &at_least) in &third {
        let first = first_read.get(p).copied().unwrap_or(i64::MAX);
        assert!(
            first >= at_least,
            "partition {p}: the group went back to {first}, before its commit {at_least}\nfirst member: {first_out}\n{}",
            c.logs()
        );
    }
    verify(&c, &load, topic, &produced, &consumed);
}
