//! The ring of one shard and the table of its in-flight operations.
//!
//! Every submitted SQE carries the slab key of its slot as `user_data`. A slot is `Pending`
//! until its CQE arrives, then `Done` until the future takes the result. A future dropped
//! before completion turns its slot `Orphaned`, handing over the buffers and fds the kernel
//! may still touch; they are freed only when the CQE arrives. The eventfd read a mesh shard
//! keeps armed owns its 8-byte buffer through a slot too. Two `user_data` values are
//! reserved: [`IGNORE`] (cancels, wake-ups we send) and [`WAKE`] (a wake-up sent to us).
//! When the driver goes away with slots in flight, their buffers are leaked, never freed
//! under the kernel.

use crate::probe::KernelFeatures;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;
use std::any::Any;
use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Waker;

/// `user_data` of completions nobody waits for.
pub const IGNORE: u64 = u64::MAX;
/// `IORING_ENTER_GETEVENTS` from the kernel ABI (the io-uring crate keeps `sys` private).
const IORING_ENTER_GETEVENTS: u32 = 1;
/// `user_data` of a cross-shard wake-up posted on our ring by another shard (MSG_RING).
pub const WAKE: u64 = u64::MAX - 1;

/// How a shard's ring is set up.
#[derive(Clone, Debug)]
pub struct RingConfig {
    pub entries: u32,
    /// Use SINGLE_ISSUER / COOP_TASKRUN / DEFER_TASKRUN when the kernel has them.
    pub use_taskrun_flags: bool,
    /// Pin the ring's io-wq workers (splice, buffered writes) to this CPU.
    pub iowq_cpu: Option<usize>,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            entries: 1024,
            use_taskrun_flags: true,
            iowq_cpu: None,
        }
    }
}

/// Counters of one ring, read by the metrics publisher.
#[derive(Clone, Debug, Default)]
pub struct RingStats {
    /// Submitted SQEs by opcode.
    pub submitted_by_opcode: Vec<u64>,
    pub completed: u64,
    pub sq_full: u64,
    pub cq_overflow: u64,
    pub inflight: u64,
}

pub(crate) enum Slot {
    Pending(Option<Waker>),
    Done {
        result: i32,
    },
    Orphaned(#[allow(dead_code)] Box<dyn Any>),
    /// The read armed on this shard's eventfd (fallback wake-ups, control plane) and the
    /// buffer the kernel writes into; its completion sets the wake flags.
    EventfdRead(#[allow(dead_code)] Box<u64>),
}

/// Tells drivers apart, so an op that outlived its driver never touches another's slots.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

pub(crate) struct Driver {
    ring: IoUring,
    ops: Slab<Slot>,
    generation: u64,
    defer_taskrun: bool,
    /// Set when a WAKE completion arrived since the last `take_wake`.
    woken: bool,
    /// Set when the eventfd read completed (it must be re-armed).
    eventfd_fired: bool,
    submitted_by_opcode: Vec<u64>,
    completed: u64,
    sq_full: u64,
}

thread_local! {
    static DRIVER: RefCell<Option<Driver>> = const { RefCell::new(None) };
}

pub(crate) fn with<R>(f: impl FnOnce(&mut Driver) -> R) -> R {
    DRIVER.with(|d| {
        let mut d = d.borrow_mut();
        let driver = d
            .as_mut()
            .expect("no ring on this thread: run inside Runtime::block_on");
        f(driver)
    })
}

/// Like [`with`], but `None` instead of a panic when this thread has no usable driver (none
/// installed, or its thread-local already destroyed at exit, or already borrowed).
pub(crate) fn try_with<R>(f: impl FnOnce(&mut Driver) -> R) -> Option<R> {
    DRIVER
        .try_with(|d| {
            let mut d = d.try_borrow_mut().ok()?;
            d.as_mut().map(f)
        })
        .ok()
        .flatten()
}

pub(crate) fn install(driver: Driver) {
    DRIVER.with(|d| {
        let mut d = d.borrow_mut();
        assert!(d.is_none(), "this thread already has a ring");
        *d = Some(driver);
    });
}

pub(crate) fn uninstall() -> Option<Driver> {
    DRIVER.with(|d| d.borrow_mut().take())
}

impl Driver {
    pub(crate) fn new(config: &RingConfig, features: &KernelFeatures) -> io::Result<Driver> {
        let mut builder = IoUring::builder();
        let defer = config.use_taskrun_flags && features.defer_taskrun;
        if config.use_taskrun_flags && features.single_issuer {
            builder.setup_single_issuer();
        }
        if defer {
            builder.setup_defer_taskrun();
        } else if config.use_taskrun_flags && features.coop_taskrun {
            builder.setup_coop_taskrun();
        }
        builder.setup_cqsize(config.entries * 4);
        let ring = builder.build(config.entries)?;
        if let Some(cpu) = config.iowq_cpu {
            let set = crate::affinity::cpu_set_of(cpu);
            // Best effort: older kernels lack these registrations; io-wq then floats freely.
            let _ = ring.submitter().register_iowq_aff(&set);
        }
        Ok(Driver {
            ring,
            ops: Slab::with_capacity(256),
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            defer_taskrun: defer,
            woken: false,
            eventfd_fired: false,
            submitted_by_opcode: vec![0; 64],
            completed: 0,
            sq_full: 0,
        })
    }

    pub(crate) fn ring_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.ring.as_raw_fd()
    }

    /// Which driver this is; ops remember it with their slot key.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Queues `entry` with a fresh slot; returns the slot key.
    pub(crate) fn submit_op(&mut self, entry: squeue::Entry) -> usize {
        self.submit_op_with(entry, Slot::Pending(None))
    }

    /// Arms an 8-byte read on the eventfd `fd` into a buffer owned by its slot; its
    /// completion wakes this ring's loop (see [`Driver::take_eventfd_fired`]).
    ///
    /// # Safety
    /// `fd` must stay an open eventfd until the read completes (the mesh keeps it open for as
    /// long as the shard runs; at exit the slot and its buffer are leaked with the others).
    pub(crate) unsafe fn arm_eventfd_read(&mut self, fd: i32) {
        let mut buf = Box::new(0u64);
        let entry = opcode::Read::new(types::Fd(fd), &mut *buf as *mut u64 as *mut u8, 8)
            .offset(u64::MAX) // -1: use the file position (eventfds have none)
            .build();
        // The box's heap memory does not move when the box moves into the slot.
        self.submit_op_with(entry, Slot::EventfdRead(buf));
    }

    fn submit_op_with(&mut self, entry: squeue::Entry, slot: Slot) -> usize {
        let key = self.ops.insert(slot);
        self.push(entry.user_data(key as u64));
        key
    }

    /// Makes room for `count` consecutive SQEs (a linked chain must not be split across
    /// submissions, or its head would be submitted with a dangling IO_LINK).
    pub(crate) fn reserve(&mut self, count: usize) {
        while {
            let sq = self.ring.submission();
            sq.capacity() - sq.len() < count
        } {
            self.sq_full += 1;
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    self.reap();
                } else {
                    panic!("io_uring submit failed: {e}");
                }
            }
        }
    }

    /// Queues an SQE whose `user_data` is already set (IGNORE, or a key).
    pub(crate) fn push(&mut self, entry: squeue::Entry) {
        let opcode = entry.get_opcode() as usize;
        loop {
            // SAFETY: every entry's buffers are owned by its slot (or are 'static) until the
            // CQE for it is reaped, so they outlive the kernel's use of them.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                break;
            }
            self.sq_full += 1;
            // The SQ is full: hand it to the kernel, then retry.
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    self.reap();
                } else {
                    panic!("io_uring submit failed: {e}");
                }
            }
        }
        if let Some(count) = self.submitted_by_opcode.get_mut(opcode) {
            *count += 1;
        }
    }

    /// Submits queued SQEs and, if `wait`, blocks until at least one completion is ready.
    /// With DEFER_TASKRUN completions are only posted when we enter with GETEVENTS, so the
    /// non-waiting path enters with GETEVENTS and `min_complete = 0`.
    pub(crate) fn submit(&mut self, wait: bool) -> io::Result<()> {
        let result = if wait {
            self.ring.submit_and_wait(1)
        } else if self.defer_taskrun {
            let to_submit = self.ring.submission().len() as u32;
            // SAFETY: no argument struct is passed; flags are a valid enter flag.
            unsafe {
                self.ring.submitter().enter::<libc::sigset_t>(
                    to_submit,
                    0,
                    IORING_ENTER_GETEVENTS,
                    None,
                )
            }
        } else {
            self.ring.submit()
        };
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves every available completion into its slot and wakes its task.
    pub(crate) fn reap(&mut self) -> usize {
        let mut reaped = 0;
        let mut wakers: Vec<Waker> = Vec::new();
        let Driver {
            ring,
            ops,
            woken,
            eventfd_fired,
            ..
        } = self;
        for cqe in ring.completion() {
            reaped += 1;
            match cqe.user_data() {
                IGNORE => {}
                WAKE => *woken = true,
                key => match complete_slot(ops, key as usize, &cqe) {
                    Completed::Wake(w) => wakers.push(w),
                    Completed::Eventfd => {
                        *woken = true;
                        *eventfd_fired = true;
                    }
                    Completed::Quiet => {}
                },
            }
        }
        self.completed += reaped as u64;
        for w in wakers {
            w.wake();
        }
        reaped
    }

    pub(crate) fn slot_mut(&mut self, key: usize) -> &mut Slot {
        self.ops.get_mut(key).expect("op slot vanished")
    }

    /// The slot `key` of this driver, if `generation` is this driver's and the slot exists.
    pub(crate) fn slot_of(&mut self, generation: u64, key: usize) -> Option<&mut Slot> {
        if generation != self.generation {
            return None;
        }
        self.ops.get_mut(key)
    }

    pub(crate) fn remove_slot(&mut self, key: usize) -> Slot {
        self.ops.remove(key)
    }

    /// A wake-up arrived that the mesh has not handled yet: the loop must not block.
    pub(crate) fn wake_pending(&self) -> bool {
        self.woken
    }

    pub(crate) fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.woken)
    }

    pub(crate) fn take_eventfd_fired(&mut self) -> bool {
        std::mem::take(&mut self.eventfd_fired)
    }

    pub(crate) fn stats(&self) -> RingStats {
        RingStats {
            submitted_by_opcode: self.submitted_by_opcode.clone(),
            completed: self.completed,
            sq_full: self.sq_full,
            // SAFETY: the completion queue is only read here, on the owning thread, between
            // loop turns, while no other `completion()` borrow is alive.
            cq_overflow: unsafe { self.ring.completion_shared().overflow() as u64 },
            inflight: self.ops.len() as u64,
        }
    }
}

/// What a completion asks of the loop.
enum Completed {
    Wake(Waker),
    Eventfd,
    Quiet,
}

fn complete_slot(ops: &mut Slab<Slot>, key: usize, cqe: &cqueue::Entry) -> Completed {
    let Some(slot) = ops.get_mut(key) else {
        return Completed::Quiet;
    };
    match slot {
        Slot::Pending(waker) => {
            let waker = waker.take();
            *slot = Slot::Done {
                result: cqe.result(),
            };
            waker.map_or(Completed::Quiet, Completed::Wake)
        }
        Slot::Orphaned(_) => {
            // The future is gone: its buffers may be freed now.
            ops.remove(key);
            Completed::Quiet
        }
        Slot::EventfdRead(_) => {
            // The kernel is done with the buffer; the mesh arms a fresh read.
            ops.remove(key);
            Completed::Eventfd
        }
        Slot::Done { .. } => {
            debug_assert!(false, "second completion for single-shot op {key}");
            Completed::Quiet
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Ops still in the kernel may write into their buffers after the ring fd closes, so
        // their slots (and buffers) are leaked rather than freed. This only happens at exit.
        if !self.ops.is_empty() {
            let ops = std::mem::take(&mut self.ops);
            std::mem::forget(ops);
        }
    }
}

/// The name of an io_uring opcode, for logs and metrics.
pub fn opcode_name(code: usize) -> &'static str {
    use io_uring::opcode::*;
    match code as u8 {
        c if c == Accept::CODE => "ACCEPT",
        c if c == Recv::CODE => "RECV",
        c if c == SendMsg::CODE => "SENDMSG",
        c if c == Read::CODE => "READ",
        c if c == Write::CODE => "WRITE",
        c if c == Writev::CODE => "WRITEV",
        c if c == Fsync::CODE => "FSYNC",
        c if c == Timeout::CODE => "TIMEOUT",
        c if c == AsyncCancel::CODE => "ASYNC_CANCEL",
        c if c == Splice::CODE => "SPLICE",
        c if c == MsgRingData::CODE => "MSG_RING",
        _ => "OTHER",
    }
}

impl RingStats {
    /// `OPCODE=count` for every opcode submitted at least once.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .submitted_by_opcode
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(code, n)| format!("{}={n}", opcode_name(code)))
            .collect();
        parts.sort();
        parts.join(",")
    }
}

/// Runs `f` with the current thread's ring statistics.
pub fn stats() -> RingStats {
    with(|d| d.stats())
}

/// The raw fd of this thread's ring (the MSG_RING target other shards use).
pub fn ring_fd() -> i32 {
    with(|d| d.ring_fd())
}
