//! Messages between shards: a bounded SPSC queue for every ordered pair of shards, plus a
//! small control mailbox per shard for the main thread (start-up, shutdown).
//!
//! A message is a closure run on the target shard. The sender pushes it, marks the target,
//! and once per loop turn wakes each marked target through its own ring: MSG_RING (a WAKE
//! completion appears on the target's ring) or, as fallback, a write to the target's eventfd,
//! on which every shard keeps a read armed. The target drains its queues every turn.

use crate::driver;
use crate::op;
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Work for another shard.
pub type Message = Box<dyn FnOnce() + Send>;

/// Capacity of each shard-to-shard queue; a full queue makes the sender wait (back-pressure).
pub const QUEUE_MESSAGES_MAX: usize = 4096;
/// Messages run per queue per loop turn, so one busy peer cannot starve local work.
const DRAIN_PER_TURN_MAX: usize = 1024;

struct Peer {
    eventfd: OwnedFd,
    ring_fd: AtomicI32,
    control: Mutex<Vec<Message>>,
    control_pending: AtomicBool,
}

/// The shared part of the mesh: how to wake each shard, and the traffic counters.
pub struct Mesh {
    peers: Vec<Peer>,
    use_msg_ring: bool,
    /// Messages sent, indexed `from * n + to`.
    sent: Vec<AtomicU64>,
}

/// One shard's ends of the queues; moved into the shard thread and installed there.
pub struct Endpoint {
    shard: usize,
    mesh: Arc<Mesh>,
    tx: Vec<Option<rtrb::Producer<Message>>>,
    rx: Vec<Option<rtrb::Consumer<Message>>>,
}

struct Installed {
    shard: usize,
    mesh: Arc<Mesh>,
    tx: Vec<Option<rtrb::Producer<Message>>>,
    rx: Vec<Option<rtrb::Consumer<Message>>>,
    wake_pending: Vec<bool>,
}

type Reply = Box<dyn std::any::Any + Send>;

thread_local! {
    static LOCAL: RefCell<Option<Installed>> = const { RefCell::new(None) };
    /// Callers on this shard waiting for a `call` to come back, keyed by the id they sent.
    static REPLIES: RefCell<slab::Slab<crate::oneshot::Sender<Reply>>> = const { RefCell::new(slab::Slab::new()) };
}

impl Mesh {
    /// Builds the mesh for `shards` shards; returns the shared handle and one endpoint each.
    pub fn build(shards: usize, use_msg_ring: bool) -> io::Result<(Arc<Mesh>, Vec<Endpoint>)> {
        let mut peers = Vec::with_capacity(shards);
        for _ in 0..shards {
            // SAFETY: plain eventfd creation; the returned fd is owned by the OwnedFd.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            peers.push(Peer {
                eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
                ring_fd: AtomicI32::new(-1),
                control: Mutex::new(Vec::new()),
                control_pending: AtomicBool::new(false),
            });
        }
        let sent = (0..shards * shards).map(|_| AtomicU64::new(0)).collect();
        let mesh = Arc::new(Mesh {
            peers,
            use_msg_ring,
            sent,
        });
        let mut tx: Vec<Vec<Option<rtrb::Producer<Message>>>> = (0..shards)
            .map(|_| (0..shards).map(|_| None).collect())
            .collect();
        let mut rx: Vec<Vec<Option<rtrb::Consumer<Message>>>> = (0..shards)
            .map(|_| (0..shards).map(|_| None).collect())
            .collect();
        for from in 0..shards {
            for to in 0..shards {
                if from != to {
                    let (p, c) = rtrb::RingBuffer::new(QUEUE_MESSAGES_MAX);
                    tx[from][to] = Some(p);
                    rx[to][from] = Some(c);
                }
            }
        }
        let endpoints = tx
            .into_iter()
            .zip(rx)
            .enumerate()
            .map(|(shard, (tx, rx))| Endpoint {
                shard,
                mesh: mesh.clone(),
                tx,
                rx,
            })
            .collect();
        Ok((mesh, endpoints))
    }

    pub fn shard_count(&self) -> usize {
        self.peers.len()
    }

    /// Sends control work to a shard from any thread (not the data path: takes a mutex and
    /// makes a plain eventfd write).
    pub fn send_control(&self, to: usize, message: Message) {
        let peer = &self.peers[to];
        peer.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
        peer.control_pending.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a local to an eventfd we own.
        unsafe { libc::write(peer.eventfd.as_raw_fd(), &one as *const u64 as *const _, 8) };
    }

    /// Messages sent from shard `from` to shard `to` so far.
    pub fn sent_count(&self, from: usize, to: usize) -> u64 {
        self.sent[from * self.peers.len() + to].load(Ordering::Relaxed)
    }
}

impl Endpoint {
    /// Installs this endpoint on the current shard thread (after its `Runtime` exists):
    /// publishes the ring fd for MSG_RING, arms the eventfd read, hooks the drain into the
    /// executor's loop.
    pub fn install(self) {
        let ring_fd = driver::ring_fd();
        self.mesh.peers[self.shard]
            .ring_fd
            .store(ring_fd, Ordering::Release);
        let n = self.mesh.peers.len();
        let installed = Installed {
            shard: self.shard,
            mesh: self.mesh,
            tx: self.tx,
            rx: self.rx,
            wake_pending: vec![false; n],
        };
        arm_eventfd(&installed);
        LOCAL.with(|l| *l.borrow_mut() = Some(installed));
        crate::executor::add_turn_hook(Rc::new(on_turn));
    }
}

/// Arms the read on this shard's eventfd. Its buffer belongs to the driver's slot, so it
/// lives until the read completes, or is leaked with the slot when the shard exits first.
fn arm_eventfd(inst: &Installed) {
    let fd = inst.mesh.peers[inst.shard].eventfd.as_raw_fd();
    // SAFETY: the eventfd is owned by the mesh, which `inst` (this thread's mesh state) keeps
    // alive for as long as the shard runs.
    driver::with(|d| unsafe { d.arm_eventfd_read(fd) });
}

/// This shard's id, or `None` off the shard threads.
pub fn shard_id() -> Option<usize> {
    LOCAL.with(|l| l.borrow().as_ref().map(|i| i.shard))
}

/// The number of shards in the mesh this thread belongs to.
pub fn shard_count() -> usize {
    LOCAL.with(|l| l.borrow().as_ref().map_or(1, |i| i.mesh.peers.len()))
}

/// Queues `message` for shard `to`; gives it back if that queue is full.
pub fn try_send(to: usize, message: Message) -> Result<(), Message> {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let inst = l.as_mut().expect("mesh not installed on this thread");
        if to == inst.shard {
            drop(l);
            crate::executor::spawn(async move { message() });
            return Ok(());
        }
        let producer = inst.tx[to].as_mut().expect("no queue to that shard");
        match producer.push(message) {
            Ok(()) => {
                inst.wake_pending[to] = true;
                inst.mesh.sent[inst.shard * inst.mesh.peers.len() + to]
                    .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(rtrb::PushError::Full(m)) => Err(m),
        }
    })
}

/// Queues `message` for shard `to`, waiting while that queue is full.
pub async fn send(to: usize, mut message: Message) {
    // Messages to one shard leave in the order `send` was called, even when the queue is
    // full and senders have to wait: each takes a ticket and may enqueue only on its turn.
    let mut ticket = Ticket::take(to);
    loop {
        if ticket.is_turn() {
            match try_send(to, message) {
                Ok(()) => {
                    ticket.done();
                    return;
                }
                Err(m) => message = m,
            }
        }
        flush_wakes();
        op::sleep(std::time::Duration::from_micros(50)).await;
    }
}

#[derive(Default, Clone)]
struct TicketLine {
    next: u64,
    serving: u64,
    /// Tickets whose sender went away before its turn: skipped when reached.
    abandoned: std::collections::BTreeSet<u64>,
}

impl TicketLine {
    fn advance(&mut self) {
        self.serving += 1;
        while self.abandoned.remove(&self.serving) {
            self.serving += 1;
        }
    }
}

thread_local! {
    static TICKETS: RefCell<Vec<TicketLine>> = const { RefCell::new(Vec::new()) };
}

struct Ticket {
    to: usize,
    number: u64,
    finished: bool,
}

impl Ticket {
    fn take(to: usize) -> Ticket {
        let number = TICKETS.with(|t| {
            let mut t = t.borrow_mut();
            if t.len() <= to {
                t.resize(to + 1, TicketLine::default());
            }
            t[to].next += 1;
            t[to].next - 1
        });
        Ticket {
            to,
            number,
            finished: false,
        }
    }

    fn is_turn(&self) -> bool {
        TICKETS.with(|t| t.borrow()[self.to].serving == self.number)
    }

    fn done(&mut self) {
        self.finished = true;
        TICKETS.with(|t| t.borrow_mut()[self.to].advance());
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.finished {
            TICKETS.with(|t| {
                let mut t = t.borrow_mut();
                let line = &mut t[self.to];
                if line.serving == self.number {
                    line.advance();
                } else {
                    line.abandoned.insert(self.number);
                }
            });
        }
    }
}

/// Runs `f` on shard `to` (a task there, so it may do I/O on that shard's ring) and returns
/// its result here. Runs in place when `to` is this shard.
pub async fn call<R, F, Fut>(to: usize, f: F) -> R
where
    R: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
{
    let me = shard_id().expect("mesh not installed on this thread");
    if to == me {
        return f().await;
    }
    let (tx, rx) = crate::oneshot::channel::<Reply>();
    let key = REPLIES.with(|r| r.borrow_mut().insert(tx));
    let job: Message = Box::new(move || {
        crate::executor::spawn(async move {
            let out: Reply = Box::new(f().await);
            let reply: Message = Box::new(move || {
                // The caller may be gone (its future dropped): then the value is dropped here.
                if let Some(tx) = REPLIES.with(|r| r.borrow_mut().try_remove(key)) {
                    tx.send(out);
                }
            });
            send(me, reply).await;
        });
    });
    send(to, job).await;
    let out = rx.await.expect("a shard dropped a call without replying");
    *out.downcast::<R>()
        .expect("reply of the type the call returns")
}

/// Like [`call`], but `f` runs to its end even when the caller's future is dropped, also when
/// `to` is this shard (then it runs as a task of its own rather than in place). For
/// operations that must not stop half-way: a change persisted and then told to each shard,
/// a group marked and then its tombstones written.
pub async fn call_detached<R, F, Fut>(to: usize, f: F) -> R
where
    R: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
{
    let me = shard_id().expect("mesh not installed on this thread");
    if to == me {
        return crate::executor::spawn(f())
            .await
            .expect("a shard dropped a task of its own without finishing it");
    }
    call(to, f).await
}

fn flush_wakes() {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let Some(inst) = l.as_mut() else { return };
        for to in 0..inst.wake_pending.len() {
            if std::mem::take(&mut inst.wake_pending[to]) {
                let peer = &inst.mesh.peers[to];
                let ring_fd = peer.ring_fd.load(Ordering::Acquire);
                if inst.mesh.use_msg_ring && ring_fd >= 0 {
                    op::wake_ring(ring_fd);
                } else {
                    op::wake_eventfd(peer.eventfd.as_raw_fd());
                }
            }
        }
    });
}

/// Runs once per loop turn: drains incoming queues and control, sends pending wake-ups.
fn on_turn() {
    let mut batch: Vec<Message> = Vec::new();
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let Some(inst) = l.as_mut() else { return };
        let fired = driver::with(|d| {
            d.take_wake();
            d.take_eventfd_fired()
        });
        if fired {
            arm_eventfd(inst);
        }
        for rx in inst.rx.iter_mut().flatten() {
            let n = rx.slots().min(DRAIN_PER_TURN_MAX);
            for _ in 0..n {
                match rx.pop() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
        }
        let peer = &inst.mesh.peers[inst.shard];
        if peer.control_pending.swap(false, Ordering::Acquire) {
            batch.append(&mut peer.control.lock().unwrap_or_else(|p| p.into_inner()));
        }
    });
    for m in batch {
        m();
    }
    flush_wakes();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::Runtime;
    use crate::RingConfig;
    use std::sync::mpsc;

    /// Runs `body(shard)` on two shard threads wired by a mesh; `body` returns when that shard
    /// is done. Returns the mesh (for its counters) after both threads exit.
    fn two_shards<F, Fut>(use_msg_ring: bool, taskrun_flags: bool, body: F) -> Arc<Mesh>
    where
        F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let (mesh, endpoints) = Mesh::build(2, use_msg_ring).unwrap();
        let threads: Vec<_> = endpoints
            .into_iter()
            .map(|ep| {
                let body = body.clone();
                std::thread::spawn(move || {
                    let cfg = RingConfig {
                        use_taskrun_flags: taskrun_flags,
                        ..RingConfig::default()
                    };
                    let rt = Runtime::new(&cfg).unwrap();
                    let me = ep.shard;
                    ep.install();
                    let stop = Rc::new(crate::notify::Notify::default());
                    STOP.with(|s| *s.borrow_mut() = Some(stop));
                    rt.block_on(body(me));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        mesh
    }

    /// Waits until this shard is told to stop (by `stop_other`).
    async fn until_stopped() {
        let stop = STOP.with(|s| s.borrow().clone().unwrap());
        stop.notified().await;
    }

    /// Tells the other shard to stop, through the mesh.
    async fn stop_other() {
        let other = 1 - shard_id().unwrap();
        send(
            other,
            Box::new(|| STOP.with(|s| s.borrow().as_ref().unwrap().notify_all())),
        )
        .await;
    }

    /// Two shards ping-pong `rounds` messages; run with MSG_RING and with the eventfd path.
    fn ping_pong(use_msg_ring: bool, taskrun_flags: bool) {
        let rounds = 2000u32;
        let mesh = two_shards(use_msg_ring, taskrun_flags, move |me| async move {
            if me == 0 {
                send(1, Box::new(move || bounce(1, rounds))).await;
            }
            until_stopped().await;
        });
        // Each hop is one message, plus one stop message from the last shard to the other.
        assert_eq!(
            mesh.sent_count(0, 1) + mesh.sent_count(1, 0),
            rounds as u64 + 1
        );
    }

    thread_local! {
        static STOP: RefCell<Option<Rc<crate::notify::Notify>>> = const { RefCell::new(None) };
    }

    fn bounce(hops: u32, rounds: u32) {
        if hops == rounds {
            crate::executor::spawn(async {
                stop_other().await;
                STOP.with(|s| s.borrow().as_ref().unwrap().notify_all());
            });
            return;
        }
        let to = 1 - shard_id().unwrap();
        crate::executor::spawn(async move {
            send(to, Box::new(move || bounce(hops + 1, rounds))).await
        });
    }

    #[test]
    fn call_returns_values_across_shards() {
        let (done_tx, done_rx) = mpsc::channel::<u64>();
        let done_tx = std::sync::Arc::new(std::sync::Mutex::new(done_tx));
        two_shards(true, true, move |me| {
            let done_tx = done_tx.clone();
            async move {
                if me == 0 {
                    let mut sum = 0u64;
                    for i in 0..500u64 {
                        sum += call(1, move || async move {
                            crate::op::sleep(std::time::Duration::from_micros(1)).await;
                            i * shard_id().unwrap() as u64
                        })
                        .await;
                    }
                    done_tx.lock().unwrap().send(sum).unwrap();
                    stop_other().await;
                } else {
                    until_stopped().await;
                }
            }
        });
        assert_eq!(done_rx.recv().unwrap(), (0..500u64).sum::<u64>());
    }

    static ORDER: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

    #[test]
    fn a_detached_call_runs_to_its_end_when_its_caller_is_dropped_also_on_its_own_shard() {
        static FINISHED: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());
        two_shards(true, true, move |me| async move {
            if me == 0 {
                for to in [0usize, 1] {
                    let call = call_detached(to, move || async move {
                        crate::op::sleep(std::time::Duration::from_millis(20)).await;
                        FINISHED.lock().unwrap().push(to);
                    });
                    // Poll the call once (it starts), then drop it mid-sleep.
                    let mut call = Box::pin(call);
                    std::future::poll_fn(|cx| {
                        let _ = std::future::Future::poll(call.as_mut(), cx);
                        std::task::Poll::Ready(())
                    })
                    .await;
                    drop(call);
                }
                crate::op::sleep(std::time::Duration::from_millis(200)).await;
                stop_other().await;
            } else {
                until_stopped().await;
            }
        });
        let mut finished = FINISHED.lock().unwrap().clone();
        finished.sort_unstable();
        assert_eq!(finished, vec![0, 1]);
    }

    #[test]
    fn messages_to_one_shard_arrive_in_send_order_under_load() {
        let n = 3 * QUEUE_MESSAGES_MAX as u64;
        two_shards(true, true, move |me| async move {
            if me == 0 {
                let mut tasks = Vec::new();
                for i in 0..n {
                    if i == n / 2 {
                        // Let the receiver drain part of the queue while senders wait: new
                        // senders must not overtake the waiting ones.
                        crate::op::sleep(std::time::Duration::from_micros(200)).await;
                    }
                    tasks.push(crate::executor::spawn(async move {
                        send(1, Box::new(move || ORDER.lock().unwrap().push(i))).await
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                stop_other().await;
            } else {
                until_stopped().await;
            }
        });
        let order = ORDER.lock().unwrap();
        assert_eq!(order.len() as u64, n);
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "messages overtook each other"
        );
    }

    #[test]
    fn the_armed_eventfd_read_owns_its_buffer_through_a_ring_slot() {
        let (mesh, mut endpoints) = Mesh::build(1, false).unwrap();
        let rt = Runtime::new(&RingConfig::default()).unwrap();
        let before = driver::stats().inflight;
        endpoints.pop().unwrap().install();
        // The read is an in-flight slot of the ring, so its buffer is parked (or leaked at
        // exit) with the other in-flight ops instead of being freed under the kernel.
        assert_eq!(driver::stats().inflight, before + 1);
        let rounds = 3u64;
        let count = Arc::new(AtomicU64::new(0));
        let sender = {
            let (mesh, count) = (mesh.clone(), count.clone());
            std::thread::spawn(move || {
                for _ in 0..rounds {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    let c = count.clone();
                    mesh.send_control(0, Box::new(move || _ = c.fetch_add(1, Ordering::Relaxed)));
                }
            })
        };
        rt.block_on(async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while count.load(Ordering::Relaxed) < rounds && std::time::Instant::now() < deadline {
                crate::op::sleep(std::time::Duration::from_millis(1)).await;
                // Re-armed with a fresh slot after each wake-up, never two at once.
                assert!(driver::stats().inflight <= before + 1);
            }
            assert_eq!(count.load(Ordering::Relaxed), rounds);
            // The hook that ran the last message re-armed the read first.
            assert_eq!(driver::stats().inflight, before + 1);
        });
        sender.join().unwrap();
    }

    #[test]
    fn messages_cross_shards_with_msg_ring() {
        ping_pong(true, true);
    }

    #[test]
    fn messages_cross_shards_with_eventfd_fallback() {
        ping_pong(false, false);
    }
}
