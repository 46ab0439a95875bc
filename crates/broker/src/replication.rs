//! A partition's part in its replica set on this node: Kafka's follower-fetch / ISR protocol.
//!
//! Every partition runs on its owner shard of each node in its `replicas`. The metadata
//! quorum (crates/cluster) names its leader, leader epoch and in-sync replicas (ISR); the
//! shard calls [`topic_changed`] with every new view, and the owner takes up its role:
//!
//! - *Leader* at epoch E: stamps E into the log's epoch cache (`begin_leader_epoch`), takes
//!   Produce, serves followers' Fetch requests (`replica_id` ≥ 0) from its log end and
//!   consumers' below the high watermark (HW). Each follower's fetch offset is its durable log
//!   end; HW = min(own log end, fetch offsets of the other ISR members). ISR shrink (an ISR
//!   follower not caught up for [`REPLICA_LAG_TIME_MAX`]) and expand (a follower that reached
//!   HW and the start of E) go to the active controller as `AlterIsr`, one in flight per
//!   partition; the result comes back as a new view. acks=all Produce is answered once HW
//!   passes its batch ([`await_acks`]).
//! - *Follower* of L at epoch E: one fetcher task per (shard, leader broker) fetches for all
//!   partitions the shard follows from L (`fetcher.rs`).
//! - Neither (no leader, or no replica here): nothing runs; Produce and Fetch are refused.
//!
//! A single node (no `--cluster`) keeps [`Role::Alone`]: nothing new runs, HW is the log end
//! and every check below is one `RefCell` borrow and a match.

mod fetcher;

use crate::errors;
use crate::metadata::TopicInfo;
use crate::shard::{Partition, PartitionId, Shard};
use ringbroker_cluster::AdminRequest;
use ringbroker_runtime::executor::spawn;
use ringbroker_runtime::op;
use ringbroker_storage::PartitionLog;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A follower in the ISR that has not caught up with the leader's log end for this long is
/// dropped from the ISR (Kafka's `replica.lag.time.max.ms` default; the default of
/// `BrokerConfig::replica_lag_time_max`).
pub const REPLICA_LAG_TIME_MAX: Duration = Duration::from_secs(10);
/// How long an `AlterIsr` may take before the leader may send another.
const ALTER_ISR_TIMEOUT: Duration = Duration::from_secs(5);
/// After a refused or failed `AlterIsr`, the wait before the next attempt.
const ALTER_ISR_RETRY: Duration = Duration::from_secs(1);
/// How often each shard checks its led partitions for lagging followers and publishes the
/// replication metrics.
const LEADER_TICK: Duration = Duration::from_millis(1000);

/// Kafka's "no epoch" (and, for `current_leader_epoch`, "do not check").
pub const UNDEFINED_EPOCH: i32 = -1;

/// What this node does for one partition.
#[derive(Default)]
enum Role {
    /// A single node: the only replica and leader, HW = log end (today's path).
    #[default]
    Alone,
    /// Not a replica, or the partition has no leader: refuses Produce and Fetch.
    Unassigned,
    Leader(Box<Leader>),
    Follower {
        leader: i32,
        epoch: i32,
    },
}

/// The leader's view of its replica set.
struct Leader {
    /// This node.
    me: i32,
    topic: String,
    partition: i32,
    epoch: i32,
    partition_epoch: i32,
    /// The log end when this leadership began: a follower joins the ISR only once it has
    /// everything before it (Kafka's leader epoch start offset).
    epoch_start: i64,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    min_insync: usize,
    hw: i64,
    followers: Vec<FollowerProgress>,
    alter: Option<AlterInFlight>,
}

impl Leader {
    /// The HW with the log ending at `end`: the log end while the ISR is the leader alone
    /// (every append moves it), else what the followers' fetches made it.
    fn high_watermark(&self, end: i64) -> i64 {
        if self.isr.iter().all(|&r| r == self.me) {
            end.max(self.hw)
        } else {
            self.hw.min(end)
        }
    }

    /// Recomputes the HW from the ISR's fetch offsets.
    fn refresh(&mut self, end: i64) {
        self.hw = self.high_watermark(end);
        self.hw = compute_high_watermark(self.hw, end, self.me, &self.isr, &self.followers);
    }
}

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerProgress {
    pub id: i32,
    /// Its last fetch offset (its durable log end); -1 before its first fetch.
    pub fetch_offset: i64,
    /// The leader's log end when it last fetched.
    pub last_fetch_leader_end: i64,
    pub last_fetch: Option<Instant>,
    /// The last time it had everything the leader had (Kafka's lastCaughtUpTimeMs).
    pub last_caught_up: Instant,
}

impl FollowerProgress {
    pub fn new(id: i32, now: Instant) -> FollowerProgress {
        FollowerProgress {
            id,
            fetch_offset: -1,
            last_fetch_leader_end: -1,
            last_fetch: None,
            last_caught_up: now,
        }
    }
}

const ALTER_PENDING: u8 = 0;
const ALTER_DONE: u8 = 1;
const ALTER_FAILED: u8 = 2;

/// An `AlterIsr` sent to the controller; its reply (on a cluster thread) sets `status`.
struct AlterInFlight {
    partition_epoch: i32,
    sent: Instant,
    status: Arc<AtomicU8>,
}

impl AlterInFlight {
    /// Whether another `AlterIsr` may go out: the last one failed a while ago, or succeeded
    /// and its result has reached this shard (a new partition epoch), or timed out.
    fn settled(&self, partition_epoch: i32, now: Instant) -> bool {
        let age = now.saturating_duration_since(self.sent);
        match self.status.load(Ordering::Acquire) {
            ALTER_FAILED => age >= ALTER_ISR_RETRY,
            ALTER_DONE => partition_epoch != self.partition_epoch || age >= ALTER_ISR_TIMEOUT,
            _ => age >= ALTER_ISR_TIMEOUT * 2,
        }
    }
}

/// One partition's replication state, a field of its [`Partition`].
pub struct ReplicaState {
    role: RefCell<Role>,
    /// The HW as last known here (as leader, or from the leader as follower); -1: unknown
    /// (after a restart: a new leader starts from its log start and lets its followers move it).
    hw: Cell<i64>,
}

impl Default for ReplicaState {
    fn default() -> ReplicaState {
        ReplicaState {
            role: RefCell::new(Role::Alone),
            hw: Cell::new(-1),
        }
    }
}

impl ReplicaState {
    /// A single node's partition (the fast path: HW = log end, nothing replicated).
    pub fn is_alone(&self) -> bool {
        matches!(*self.role.borrow(), Role::Alone)
    }

    /// This node leads the partition.
    pub fn is_leader(&self) -> bool {
        matches!(*self.role.borrow(), Role::Alone | Role::Leader(_))
    }

    /// The leader epoch this node knows the partition at, when it is leader or follower.
    pub fn leader_epoch(&self) -> Option<i32> {
        match &*self.role.borrow() {
            Role::Alone => Some(0),
            Role::Leader(l) => Some(l.epoch),
            Role::Follower { epoch, .. } => Some(*epoch),
            Role::Unassigned => None,
        }
    }
}

/// The log's end offset (the next offset to be written).
fn log_end(log: &PartitionLog) -> i64 {
    log.log_end_offset()
}

/// Kafka's high watermark of `p`: consumers read below it, ListOffsets latest answers it.
pub fn high_watermark(p: &Partition) -> i64 {
    match &*p.replica.role.borrow() {
        Role::Alone => p.log.high_watermark(),
        Role::Leader(l) => l.high_watermark(log_end(&p.log)),
        _ => p
            .replica
            .hw
            .get()
            .min(log_end(&p.log))
            .max(p.log.log_start_offset()),
    }
}

/// Kafka's leader epoch check (KIP-320): `current` -1 is not checked; older than ours is
/// FENCED_LEADER_EPOCH, newer UNKNOWN_LEADER_EPOCH.
pub fn check_epoch(current: i32, ours: i32) -> Result<(), i16> {
    if current == UNDEFINED_EPOCH || current == ours {
        Ok(())
    } else if current < ours {
        Err(errors::FENCED_LEADER_EPOCH)
    } else {
        Err(errors::UNKNOWN_LEADER_EPOCH)
    }
}

/// On the owner: may `p` take a Produce with `acks`? Only its leader does; acks=all also
/// needs `min.insync.replicas` in the ISR.
pub fn check_produce(p: &Partition, acks: i16) -> Result<(), (i16, String)> {
    match &*p.replica.role.borrow() {
        Role::Alone => Ok(()),
        Role::Leader(l) if acks == -1 && l.isr.len() < l.min_insync => Err((
            errors::NOT_ENOUGH_REPLICAS,
            format!(
                "the in-sync replicas {:?} are fewer than min.insync.replicas {}",
                l.isr, l.min_insync
            ),
        )),
        Role::Leader(_) => Ok(()),
        _ => Err((
            errors::NOT_LEADER_OR_FOLLOWER,
            "this broker is not the partition's leader".into(),
        )),
    }
}

/// acks=all on a replicated leader: waits until the HW reaches `end` (the batch's end
/// offset) at the epoch the batch was written in, or for `timeout`.
pub async fn await_acks(p: &Partition, end: i64, timeout: Duration) -> Result<(), (i16, String)> {
    let epoch = match &*p.replica.role.borrow() {
        Role::Alone => return Ok(()),
        Role::Leader(l) => l.epoch,
        _ => return Err(not_leader()),
    };
    let appended = p.log.appended();
    let waited = op::timeout(timeout, async {
        loop {
            let next = appended.notified();
            match &*p.replica.role.borrow() {
                Role::Leader(l) if l.epoch == epoch => {
                    if l.high_watermark(log_end(&p.log)) >= end {
                        return if l.isr.len() < l.min_insync {
                            Err((
                                errors::NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                                format!(
                                    "written, but the in-sync replicas {:?} fell below min.insync.replicas {}",
                                    l.isr, l.min_insync
                                ),
                            ))
                        } else {
                            Ok(())
                        };
                    }
                }
                _ => return Err(not_leader()),
            }
            next.await;
        }
    })
    .await;
    waited.unwrap_or_else(|| {
        Err((
            errors::REQUEST_TIMED_OUT,
            "the in-sync replicas did not all have the batch within the request's timeout".into(),
        ))
    })
}

fn not_leader() -> (i16, String) {
    (
        errors::NOT_LEADER_OR_FOLLOWER,
        "this broker is not the partition's leader".into(),
    )
}

/// How far a Fetch may read on the owner: `Ok(None)` to the log end through today's path
/// (a single node's partition, or a follower's fetch), `Ok(Some(hw))` below the HW (a
/// consumer of a replicated leader), or the error to answer. A follower's fetch is recorded
/// here: it moves the HW (waking acks=all waiters and long polls) and may widen the ISR.
pub fn fetch_access(
    shard: &Shard,
    p: &Partition,
    replica_id: i32,
    current_leader_epoch: i32,
    offset: i64,
) -> Result<Option<i64>, i16> {
    let mut role = p.replica.role.borrow_mut();
    let l = match &mut *role {
        Role::Alone => return Ok(None),
        Role::Leader(l) => l,
        _ => return Err(errors::NOT_LEADER_OR_FOLLOWER),
    };
    check_epoch(current_leader_epoch, l.epoch)?;
    if replica_id < 0 || !l.replicas.contains(&replica_id) || replica_id == shard.shared.node_id {
        return Ok(Some(l.high_watermark(log_end(&p.log))));
    }
    let now = Instant::now();
    let end = log_end(&p.log);
    if offset > end {
        // Out of range: the read answers it; nothing to record.
        return Ok(None);
    }
    let Some(progress) = l.followers.iter_mut().find(|f| f.id == replica_id) else {
        return Ok(None);
    };
    record_fetch(progress, offset, end, now);
    let progress = *progress;
    let before = l.high_watermark(end);
    l.refresh(end);
    p.replica.hw.set(l.hw);
    if !l.isr.contains(&replica_id) && should_join_isr(&progress, l.hw, l.epoch_start) {
        tracing::info!(topic = %l.topic, partition = l.partition, replica = replica_id, fetch_offset = offset, hw = l.hw, log_end = end, epoch_start = l.epoch_start, "follower caught up");
        let mut isr = l.isr.clone();
        isr.push(replica_id);
        isr.sort_unstable();
        alter_isr(shard, l, isr, now);
    }
    if l.hw != before {
        drop(role);
        p.log.appended().notify_all();
    }
    Ok(None)
}

/// The offset a Fetch's long poll waits to see passed: the log end for a follower's fetch
/// (and a single node), the HW for a consumer of a replicated leader.
pub fn readable_end(p: &Partition, replica_fetch: bool) -> i64 {
    match &*p.replica.role.borrow() {
        Role::Alone => p.log.high_watermark(),
        Role::Leader(_) if replica_fetch => log_end(&p.log),
        _ => high_watermark(p),
    }
}

/// ListOffsets on the owner: `Ok(Some(hw))` on a replicated leader (latest = HW), `Ok(None)`
/// on a single node, or the error.
pub fn list_offsets_access(p: &Partition, current_leader_epoch: i32) -> Result<Option<i64>, i16> {
    match &*p.replica.role.borrow() {
        Role::Alone => Ok(None),
        Role::Leader(l) => {
            check_epoch(current_leader_epoch, l.epoch)?;
            Ok(Some(l.high_watermark(log_end(&p.log))))
        }
        _ => Err(errors::NOT_LEADER_OR_FOLLOWER),
    }
}

/// OffsetForLeaderEpoch on the owner of a replicated partition: `None` on a single node (the
/// caller answers as it always did), else `(epoch, end offset)` from the log's epoch cache or
/// the error. The leader answers; a follower too when a replica asks (`replica_id` ≥ 0).
pub fn epoch_end_offset(
    p: &Partition,
    replica_id: i32,
    current_leader_epoch: i32,
    requested: i32,
) -> Option<Result<(i32, i64), i16>> {
    let ours = match &*p.replica.role.borrow() {
        Role::Alone => return None,
        Role::Leader(l) => l.epoch,
        Role::Follower { epoch, .. } if replica_id >= 0 => *epoch,
        _ => return Some(Err(errors::NOT_LEADER_OR_FOLLOWER)),
    };
    if let Err(code) = check_epoch(current_leader_epoch, ours) {
        return Some(Err(code));
    }
    Some(Ok(p.log.end_offset_for_epoch(requested)))
}

/// DeleteRecords on the owner: only the leader; `Ok(Some(hw))` bounds the offset on a
/// replicated leader.
pub fn delete_records_access(p: &Partition) -> Result<Option<i64>, i16> {
    match &*p.replica.role.borrow() {
        Role::Alone => Ok(None),
        Role::Leader(l) => Ok(Some(l.high_watermark(log_end(&p.log)))),
        _ => Err(errors::NOT_LEADER_OR_FOLLOWER),
    }
}

/// HW from the ISR's fetch offsets: the lowest of the leader's log end and every other ISR
/// member's fetch offset (a member that has not fetched yet holds it where it is). It never
/// moves back.
pub fn compute_high_watermark(
    current: i64,
    log_end: i64,
    me: i32,
    isr: &[i32],
    followers: &[FollowerProgress],
) -> i64 {
    let mut hw = log_end;
    for &r in isr.iter().filter(|&&r| r != me) {
        match followers.iter().find(|f| f.id == r) {
            Some(f) if f.fetch_offset >= 0 => hw = hw.min(f.fetch_offset),
            _ => hw = hw.min(current),
        }
    }
    hw.max(current)
}

/// Records a follower's fetch at `fetch_offset` when the leader's log ends at `leader_end`
/// (Kafka's rule): it is caught up now when it has everything; else as of its previous fetch
/// when it has everything the leader had then.
pub fn record_fetch(p: &mut FollowerProgress, fetch_offset: i64, leader_end: i64, now: Instant) {
    if fetch_offset >= leader_end {
        p.last_caught_up = now;
    } else if let Some(previous) = p.last_fetch {
        if fetch_offset >= p.last_fetch_leader_end && previous > p.last_caught_up {
            p.last_caught_up = previous;
        }
    }
    p.fetch_offset = fetch_offset;
    p.last_fetch_leader_end = leader_end;
    p.last_fetch = Some(now);
}

/// A follower outside the ISR joins it once it has reached the HW and the start of the
/// leader's epoch.
pub fn should_join_isr(p: &FollowerProgress, hw: i64, epoch_start: i64) -> bool {
    p.fetch_offset >= 0 && p.fetch_offset >= hw && p.fetch_offset >= epoch_start
}

/// The ISR without the followers that have not caught up for `lag_max`; `None` when nobody
/// lags. The leader always stays.
pub fn shrunk_isr(
    isr: &[i32],
    me: i32,
    followers: &[FollowerProgress],
    now: Instant,
    lag_max: Duration,
) -> Option<Vec<i32>> {
    let lagging = |r: i32| {
        r != me
            && followers
                .iter()
                .find(|f| f.id == r)
                .is_none_or(|f| now.saturating_duration_since(f.last_caught_up) > lag_max)
    };
    if !isr.iter().any(|&r| lagging(r)) {
        return None;
    }
    Some(isr.iter().copied().filter(|&r| !lagging(r)).collect())
}

/// Asks the active controller for `isr`, unless an earlier request is still unsettled.
fn alter_isr(shard: &Shard, l: &mut Leader, isr: Vec<i32>, now: Instant) {
    let Some(cluster) = shard.shared.cluster.clone() else {
        return;
    };
    if l.alter
        .as_ref()
        .is_some_and(|a| !a.settled(l.partition_epoch, now))
    {
        return;
    }
    let status = Arc::new(AtomicU8::new(ALTER_PENDING));
    l.alter = Some(AlterInFlight {
        partition_epoch: l.partition_epoch,
        sent: now,
        status: status.clone(),
    });
    tracing::info!(topic = %l.topic, partition = l.partition, from = ?l.isr, to = ?isr, epoch = l.epoch, "asking to change the ISR");
    let (topic, partition) = (l.topic.clone(), l.partition);
    cluster.submit(
        AdminRequest::AlterIsr {
            from: shard.shared.node_id,
            topic: l.topic.clone(),
            partition: l.partition,
            leader_epoch: l.epoch,
            partition_epoch: l.partition_epoch,
            isr,
        },
        ALTER_ISR_TIMEOUT,
        Box::new(move |result| {
            // On a cluster thread: the new ISR arrives as a new view; only the flag goes back.
            let outcome = match &result {
                Ok(_) => ALTER_DONE,
                Err(e) => {
                    tracing::info!(%topic, partition, error = %e, "ISR change refused");
                    ALTER_FAILED
                }
            };
            status.store(outcome, Ordering::Release);
        }),
    );
}

/// `min.insync.replicas` of a topic (its own setting, else 1).
fn min_insync_of(topic: &TopicInfo) -> usize {
    topic
        .configs
        .get("min.insync.replicas")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(1)
        .max(1)
}

thread_local! {
    /// This shard's leader tick runs (started with the first replicated partition).
    static TICKING: Cell<bool> = const { Cell::new(false) };
}

/// `topic` was added to or changed in `shard`'s view (new replica sets, leaders, epochs, ISR,
/// configs or partitions). Called after the view holds it. A single node changes nothing.
pub fn topic_changed(shard: &Shard, topic: &Arc<TopicInfo>) {
    if shard.shared.cluster.is_none() {
        return;
    }
    let me = shard.shared.node_id;
    for (index, set) in topic.replication.iter().enumerate() {
        if topic.owners.get(index) != Some(&shard.id) {
            continue;
        }
        let id = PartitionId {
            topic_id: topic.id,
            index: index as i32,
        };
        let Some(p) = shard.partition(id) else {
            continue;
        };
        if set.leader == me {
            become_leader(shard, topic, &p, set);
        } else if set.leader >= 0 && set.replicas.contains(&me) {
            become_follower(shard, topic, &p, set.leader, set.leader_epoch);
        } else {
            step_down(shard, &p, Role::Unassigned);
        }
    }
    if !TICKING.with(Cell::get) {
        TICKING.with(|t| t.set(true));
        spawn(leader_tick());
    }
}

fn become_leader(
    shard: &Shard,
    topic: &TopicInfo,
    p: &Rc<Partition>,
    set: &crate::metadata::ReplicaSet,
) {
    let me = shard.shared.node_id;
    let now = Instant::now();
    let min_insync = min_insync_of(topic);
    {
        let mut role = p.replica.role.borrow_mut();
        if let Role::Leader(l) = &mut *role {
            if l.epoch == set.leader_epoch {
                // Same leadership: a new ISR, replica list or config. The HW under the old
                // ISR first (a leader alone had it at its log end).
                let end = log_end(&p.log);
                l.hw = l.high_watermark(end);
                l.replicas = set.replicas.clone();
                l.isr = set.isr.clone();
                l.partition_epoch = set.partition_epoch;
                l.min_insync = min_insync;
                l.followers.retain(|f| set.replicas.contains(&f.id));
                for &r in &set.replicas {
                    if r != me && !l.followers.iter().any(|f| f.id == r) {
                        l.followers.push(FollowerProgress::new(r, now));
                    }
                }
                l.refresh(end);
                p.replica.hw.set(l.hw);
                drop(role);
                p.log.appended().notify_all();
                return;
            }
        }
    }
    step_down(shard, p, Role::Unassigned);
    // Records the epoch when it is new, and makes appends stamp it (a follower's log stops
    // stamping).
    if let Err(e) = p.log.begin_leader_epoch(set.leader_epoch) {
        tracing::error!(topic = %topic.name, partition = p.id.index, error = %e, "could not record the leader epoch; not leading");
        return;
    }
    let end = log_end(&p.log);
    let hw = p.replica.hw.get().max(p.log.log_start_offset()).min(end);
    let followers: Vec<FollowerProgress> = set
        .replicas
        .iter()
        .filter(|&&r| r != me)
        .map(|&r| FollowerProgress::new(r, now))
        .collect();
    let hw = compute_high_watermark(hw, end, me, &set.isr, &followers);
    p.replica.hw.set(hw);
    tracing::info!(topic = %topic.name, partition = p.id.index, epoch = set.leader_epoch, isr = ?set.isr, hw, log_end = end, "leading");
    metrics::leader_changed();
    *p.replica.role.borrow_mut() = Role::Leader(Box::new(Leader {
        me,
        topic: topic.name.clone(),
        partition: p.id.index,
        epoch: set.leader_epoch,
        partition_epoch: set.partition_epoch,
        epoch_start: end,
        replicas: set.replicas.clone(),
        isr: set.isr.clone(),
        min_insync,
        hw,
        followers,
        alter: None,
    }));
    p.log.appended().notify_all();
}

fn become_follower(shard: &Shard, topic: &TopicInfo, p: &Rc<Partition>, leader: i32, epoch: i32) {
    if let Role::Follower {
        leader: l,
        epoch: e,
    } = &*p.replica.role.borrow()
    {
        if *l == leader && *e == epoch {
            return;
        }
    }
    step_down(shard, p, Role::Follower { leader, epoch });
    tracing::info!(topic = %topic.name, partition = p.id.index, leader, epoch, "following");
    metrics::leader_changed();
    fetcher::follow(shard, topic, p.clone(), leader, epoch);
}

/// Ends the current role (fetching stops, acks=all waiters are told) and takes `next`.
fn step_down(shard: &Shard, p: &Partition, next: Role) {
    let previous = std::mem::replace(&mut *p.replica.role.borrow_mut(), next);
    match previous {
        Role::Follower { leader, .. } => fetcher::unfollow(shard, leader, p.id),
        Role::Leader(l) => {
            p.replica.hw.set(l.high_watermark(log_end(&p.log)));
            p.log.appended().notify_all();
        }
        Role::Alone | Role::Unassigned => {}
    }
}

/// Partition `id` is gone from this shard (topic deleted, or moved away).
pub fn partition_removed(shard: &Shard, id: PartitionId) {
    if shard.shared.cluster.is_none() {
        return;
    }
    fetcher::forget(shard, id);
}

/// Per shard: every [`LEADER_TICK`], shrinks the ISR of led partitions whose followers lag
/// and publishes the replication metrics. Ends when the shard drains.
async fn leader_tick() {
    loop {
        if crate::server::draining() {
            return;
        }
        op::sleep(LEADER_TICK).await;
        let shard = crate::shard::current();
        let now = Instant::now();
        let me = shard.shared.node_id;
        let lag_max = shard.shared.config.replica_lag_time_max;
        let mut snapshot = metrics::Snapshot::default();
        for p in shard.owned() {
            let mut role = p.replica.role.borrow_mut();
            match &mut *role {
                Role::Leader(l) => {
                    let end = log_end(&p.log);
                    l.hw = l.high_watermark(end);
                    p.replica.hw.set(l.hw);
                    if let Some(isr) = shrunk_isr(&l.isr, me, &l.followers, now, lag_max) {
                        alter_isr(&shard, l, isr, now);
                    }
                    if l.isr.len() < l.replicas.len() {
                        snapshot.under_replicated += 1;
                    }
                    for f in &l.followers {
                        let lag = if f.fetch_offset < 0 {
                            end - p.log.log_start_offset()
                        } else {
                            end - f.fetch_offset
                        };
                        snapshot
                            .lags
                            .push((l.topic.clone(), l.partition, f.id, lag.max(0)));
                    }
                    snapshot
                        .high_watermarks
                        .push((l.topic.clone(), l.partition, l.hw));
                }
                Role::Follower { .. } => {
                    snapshot.high_watermarks.push((
                        p.topic.clone(),
                        p.id.index,
                        p.replica.hw.get().max(0),
                    ));
                }
                _ => {}
            }
        }
        metrics::publish(shard.id, snapshot);
    }
}

pub mod metrics {
    //! Replication metrics: per-shard values, published every leader tick into a
    //! process-wide table the `/metrics` endpoint renders.

    use std::cell::Cell;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    static LEADER_CHANGES: AtomicU64 = AtomicU64::new(0);

    thread_local! {
        static LOCAL_LEADER_CHANGES: Cell<u64> = const { Cell::new(0) };
    }

    /// A partition of this shard changed leader (became leader or follower).
    pub fn leader_changed() {
        LOCAL_LEADER_CHANGES.with(|c| c.set(c.get() + 1));
    }

    /// One shard's view at a tick.
    #[derive(Default)]
    pub struct Snapshot {
        pub under_replicated: u64,
        /// (topic, partition, replica, lag in offsets).
        pub lags: Vec<(String, i32, i32, i64)>,
        /// (topic, partition, high watermark).
        pub high_watermarks: Vec<(String, i32, i64)>,
    }

    static SHARDS: Mutex<BTreeMap<usize, Snapshot>> = Mutex::new(BTreeMap::new());

    /// Replaces shard `shard`'s published values.
    pub fn publish(shard: usize, snapshot: Snapshot) {
        let local = LOCAL_LEADER_CHANGES.with(|c| c.replace(0));
        LEADER_CHANGES.fetch_add(local, Ordering::Relaxed);
        if let Ok(mut shards) = SHARDS.lock() {
            shards.insert(shard, snapshot);
        }
    }

    /// Sets the replication gauges from every shard's last published values (on the metrics
    /// publisher's thread, before a scrape is rendered).
    pub fn record() {
        let shards = match SHARDS.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        if shards.is_empty() {
            return; // a single node: no replication
        }
        ::metrics::counter!("ringbroker_partition_leader_changes_total")
            .absolute(LEADER_CHANGES.load(Ordering::Relaxed));
        let under: u64 = shards.values().map(|s| s.under_replicated).sum();
        ::metrics::gauge!("ringbroker_under_replicated_partitions").set(under as f64);
        for s in shards.values() {
            for (topic, partition, replica, lag) in &s.lags {
                ::metrics::gauge!(
                    "ringbroker_partition_replica_lag_offsets",
                    "topic" => topic.clone(),
                    "partition" => partition.to_string(),
                    "replica" => replica.to_string()
                )
                .set(*lag as f64);
            }
            for (topic, partition, hw) in &s.high_watermarks {
                ::metrics::gauge!(
                    "ringbroker_partition_high_watermark",
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(*hw as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ringbroker_storage::LogConfig;

    /// An uncompressed v2 batch of `n` small records, CRC valid.
    pub(super) fn batch(n: usize) -> Bytes {
        let mut records = Vec::new();
        for i in 0..n {
            let body = [0u8, 0, (i as u8) << 1, 1, 2, b'x', 0];
            records.push((body.len() as u8) << 1);
            records.extend_from_slice(&body);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&((49 + records.len()) as i32).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.push(2);
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(n as i32 - 1).to_be_bytes());
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&(-1i64).to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&(n as i32).to_be_bytes());
        b.extend_from_slice(&records);
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(b)
    }

    fn leader_role(isr: Vec<i32>, min_insync: usize) -> Role {
        let now = Instant::now();
        Role::Leader(Box::new(Leader {
            me: 1,
            topic: "t".into(),
            partition: 0,
            epoch: 3,
            partition_epoch: 0,
            epoch_start: 0,
            replicas: vec![1, 2, 3],
            isr,
            min_insync,
            hw: 0,
            followers: vec![FollowerProgress::new(2, now), FollowerProgress::new(3, now)],
            alter: None,
        }))
    }

    fn partition(dir: &std::path::Path, role: Role) -> Rc<Partition> {
        let log = PartitionLog::open(dir, LogConfig::default()).unwrap();
        Rc::new(Partition {
            id: PartitionId {
                topic_id: uuid::Uuid::nil(),
                index: 0,
            },
            topic: "t".into(),
            log: Rc::new(log),
            producers: Default::default(),
            replica: ReplicaState {
                role: RefCell::new(role),
                hw: Cell::new(-1),
            },
        })
    }

    fn with_leader(p: &Partition, f: impl FnOnce(&mut Leader)) {
        match &mut *p.replica.role.borrow_mut() {
            Role::Leader(l) => f(l),
            _ => panic!("not leader"),
        }
        p.log.appended().notify_all();
    }

    #[test]
    fn produce_goes_to_the_leader_and_acks_all_needs_min_insync() {
        let dir = tempfile::tempdir().unwrap();
        let alone = partition(&dir.path().join("a"), Role::Alone);
        assert!(check_produce(&alone, -1).is_ok());
        let follower = partition(
            &dir.path().join("f"),
            Role::Follower {
                leader: 2,
                epoch: 3,
            },
        );
        assert_eq!(
            check_produce(&follower, 1).unwrap_err().0,
            errors::NOT_LEADER_OR_FOLLOWER
        );
        let none = partition(&dir.path().join("n"), Role::Unassigned);
        assert_eq!(
            check_produce(&none, 0).unwrap_err().0,
            errors::NOT_LEADER_OR_FOLLOWER
        );
        let short = partition(&dir.path().join("s"), leader_role(vec![1], 2));
        assert_eq!(
            check_produce(&short, -1).unwrap_err().0,
            errors::NOT_ENOUGH_REPLICAS
        );
        assert!(check_produce(&short, 1).is_ok());
        let enough = partition(&dir.path().join("e"), leader_role(vec![1, 2], 2));
        assert!(check_produce(&enough, -1).is_ok());
    }

    #[test]
    fn acks_all_is_answered_when_the_high_watermark_passes_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        ringbroker_runtime::block_on(async move {
            let p = partition(dir.path(), leader_role(vec![1, 2], 1));
            let base = p.log.append_batch(batch(3), 3).await.unwrap();
            let end = base + 3;
            assert_eq!(high_watermark(&p), 0);
            // Waits while the follower lacks the batch.
            let waiting = {
                let p = p.clone();
                spawn(async move { await_acks(&p, end, Duration::from_secs(10)).await })
            };
            op::sleep(Duration::from_millis(20)).await;
            with_leader(&p, |l| l.hw = end - 1);
            op::sleep(Duration::from_millis(20)).await;
            with_leader(&p, |l| l.hw = end);
            assert_eq!(waiting.await.unwrap(), Ok(()));
            assert_eq!(high_watermark(&p), end);

            // The ISR shrank below min.insync.replicas meanwhile.
            let base = p.log.append_batch(batch(1), 1).await.unwrap();
            with_leader(&p, |l| l.min_insync = 2);
            let waiting = {
                let p = p.clone();
                spawn(async move { await_acks(&p, base + 1, Duration::from_secs(10)).await })
            };
            op::sleep(Duration::from_millis(20)).await;
            with_leader(&p, |l| {
                l.isr = vec![1];
                l.hw = base + 1;
            });
            let code = waiting.await.unwrap().unwrap_err().0;
            assert_eq!(code, errors::NOT_ENOUGH_REPLICAS_AFTER_APPEND);

            // Leadership lost while waiting.
            with_leader(&p, |l| {
                l.isr = vec![1, 2];
                l.min_insync = 1;
            });
            let base = p.log.append_batch(batch(1), 1).await.unwrap();
            let waiting = {
                let p = p.clone();
                spawn(async move { await_acks(&p, base + 1, Duration::from_secs(10)).await })
            };
            op::sleep(Duration::from_millis(20)).await;
            *p.replica.role.borrow_mut() = Role::Follower {
                leader: 2,
                epoch: 4,
            };
            p.log.appended().notify_all();
            let code = waiting.await.unwrap().unwrap_err().0;
            assert_eq!(code, errors::NOT_LEADER_OR_FOLLOWER);

            // Nobody fetches: the request's timeout.
            *p.replica.role.borrow_mut() = leader_role(vec![1, 2], 1);
            let code = await_acks(&p, base + 1, Duration::from_millis(50))
                .await
                .unwrap_err()
                .0;
            assert_eq!(code, errors::REQUEST_TIMED_OUT);

            // A leader alone: its log end is the high watermark.
            *p.replica.role.borrow_mut() = leader_role(vec![1], 1);
            assert_eq!(high_watermark(&p), base + 1);
            assert_eq!(
                await_acks(&p, base + 1, Duration::from_millis(50)).await,
                Ok(())
            );
        })
        .unwrap();
    }

    fn progress(id: i32, fetch_offset: i64, now: Instant) -> FollowerProgress {
        FollowerProgress {
            fetch_offset,
            ..FollowerProgress::new(id, now)
        }
    }

    #[test]
    fn high_watermark_is_the_lowest_isr_fetch_offset_and_never_moves_back() {
        let now = Instant::now();
        let followers = [progress(2, 40, now), progress(3, 70, now)];
        // Both followers in the ISR: the slower one bounds it.
        assert_eq!(
            compute_high_watermark(10, 100, 1, &[1, 2, 3], &followers),
            40
        );
        // Follower 2 out of the ISR: only 3 counts.
        assert_eq!(compute_high_watermark(10, 100, 1, &[1, 3], &followers), 70);
        // The leader alone: its log end.
        assert_eq!(compute_high_watermark(10, 100, 1, &[1], &followers), 100);
        // Never back.
        assert_eq!(
            compute_high_watermark(50, 100, 1, &[1, 2, 3], &followers),
            50
        );
        // An ISR member that has not fetched since the leadership began holds it.
        let fresh = [FollowerProgress::new(2, now), progress(3, 70, now)];
        assert_eq!(compute_high_watermark(10, 100, 1, &[1, 2, 3], &fresh), 10);
        // Never past the leader's own log end.
        let ahead = [progress(2, 120, now)];
        assert_eq!(compute_high_watermark(10, 100, 1, &[1, 2], &ahead), 100);
    }

    #[test]
    fn a_follower_is_caught_up_when_it_has_what_the_leader_had() {
        let t0 = Instant::now();
        let mut p = FollowerProgress::new(2, t0);
        let t1 = t0 + Duration::from_secs(1);
        // Behind the leader's end and no previous fetch: not caught up now.
        record_fetch(&mut p, 50, 100, t1);
        assert_eq!(p.last_caught_up, t0);
        // The next fetch has everything the leader had at t1: caught up as of t1.
        let t2 = t0 + Duration::from_secs(2);
        record_fetch(&mut p, 100, 130, t2);
        assert_eq!(p.last_caught_up, t1);
        // Has everything now.
        let t3 = t0 + Duration::from_secs(3);
        record_fetch(&mut p, 130, 130, t3);
        assert_eq!(p.last_caught_up, t3);
        // Falls behind what the leader had at t3: stays at t3.
        let t4 = t0 + Duration::from_secs(4);
        record_fetch(&mut p, 120, 200, t4);
        assert_eq!(p.last_caught_up, t3);
        assert_eq!(p.fetch_offset, 120);
    }

    #[test]
    fn isr_expands_at_the_high_watermark_and_the_epoch_start() {
        let now = Instant::now();
        assert!(should_join_isr(&progress(2, 100, now), 100, 90));
        assert!(!should_join_isr(&progress(2, 99, now), 100, 90));
        // Reached the HW but not yet the start of this leader's epoch.
        assert!(!should_join_isr(&progress(2, 100, now), 80, 110));
        assert!(!should_join_isr(&FollowerProgress::new(2, now), 0, 0));
    }

    #[test]
    fn isr_shrinks_by_followers_not_caught_up_for_the_lag_time() {
        let t0 = Instant::now();
        let lag = Duration::from_secs(10);
        let mut slow = progress(2, 10, t0);
        slow.last_caught_up = t0;
        let mut quick = progress(3, 10, t0);
        quick.last_caught_up = t0 + Duration::from_secs(9);
        let followers = [slow, quick];
        assert_eq!(shrunk_isr(&[1, 2, 3], 1, &followers, t0 + lag, lag), None);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(
            shrunk_isr(&[1, 2, 3], 1, &followers, later, lag),
            Some(vec![1, 3])
        );
        // The leader never leaves; followers already out are not counted.
        assert_eq!(shrunk_isr(&[1, 3], 1, &followers, later, lag), None);
        let much_later = t0 + Duration::from_secs(30);
        assert_eq!(
            shrunk_isr(&[1, 2, 3], 1, &followers, much_later, lag),
            Some(vec![1])
        );
    }

    #[test]
    fn leader_epochs_are_checked_as_kip_320_says() {
        assert_eq!(check_epoch(-1, 5), Ok(()));
        assert_eq!(check_epoch(5, 5), Ok(()));
        assert_eq!(check_epoch(4, 5), Err(errors::FENCED_LEADER_EPOCH));
        assert_eq!(check_epoch(6, 5), Err(errors::UNKNOWN_LEADER_EPOCH));
    }

    #[test]
    fn an_alter_isr_is_resent_only_when_settled() {
        let t0 = Instant::now();
        let a = AlterInFlight {
            partition_epoch: 3,
            sent: t0,
            status: Arc::new(AtomicU8::new(ALTER_PENDING)),
        };
        assert!(!a.settled(3, t0 + Duration::from_secs(1)));
        assert!(a.settled(3, t0 + ALTER_ISR_TIMEOUT * 2));
        a.status.store(ALTER_DONE, Ordering::Release);
        // Done, but the new view has not arrived: wait for it.
        assert!(!a.settled(3, t0 + Duration::from_secs(1)));
        assert!(a.settled(4, t0 + Duration::from_secs(1)));
        a.status.store(ALTER_FAILED, Ordering::Release);
        assert!(!a.settled(3, t0));
        assert!(a.settled(3, t0 + ALTER_ISR_RETRY));
    }
}
