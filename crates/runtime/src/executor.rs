//! A single-threaded executor for `!Send` tasks, driven together with the thread's ring.
//!
//! One loop turn: poll the ready tasks (bounded), run the turn hooks (cross-shard mailbox),
//! reap completions, then enter the ring — blocking for at least one completion only when no
//! task is ready. Wakers may only be used on the executor's own thread (asserted).

use crate::driver::{self, Driver};
use crate::oneshot;
use crate::probe::KernelFeatures;
use crate::RingConfig;
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// Tasks polled per turn before the ring is entered again, so I/O is never starved.
const TASKS_PER_TURN_MAX: usize = 256;

type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

struct TaskEntry {
    future: Option<LocalFuture>,
    waker: Arc<TaskWaker>,
}

struct TaskWaker {
    id: usize,
    executor_id: u64,
    queued: AtomicBool,
}

static NEXT_EXECUTOR_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static EXECUTOR_ID: Cell<u64> = const { Cell::new(0) };
    static READY: RefCell<VecDeque<usize>> = const { RefCell::new(VecDeque::new()) };
    static TASKS: RefCell<Slab<TaskEntry>> = const { RefCell::new(Slab::new()) };
    static TURN_HOOKS: RefCell<Vec<Rc<dyn Fn()>>> = const { RefCell::new(Vec::new()) };
}

use std::rc::Rc;

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // 0: this thread's runtime is gone (thread-locals being torn down); nothing will run.
        let here = EXECUTOR_ID.try_with(Cell::get).unwrap_or(0);
        if here == 0 {
            return;
        }
        assert_eq!(
            here, self.executor_id,
            "a shard task was woken from another thread; cross-shard work must use the mesh"
        );
        if !self.queued.swap(true, Ordering::Relaxed) {
            let _ = READY.try_with(|r| r.borrow_mut().push_back(self.id));
        }
    }
}

/// Handle to a spawned task's output. Dropping it detaches the task.
pub type JoinHandle<T> = oneshot::Receiver<T>;

/// Spawns a task on this thread's executor.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let (tx, rx) = oneshot::channel();
    let wrapped: LocalFuture = Box::pin(async move {
        tx.send(future.await);
    });
    let executor_id = EXECUTOR_ID.with(Cell::get);
    assert_ne!(executor_id, 0, "spawn outside Runtime::block_on");
    let id = TASKS.with(|t| {
        let mut tasks = t.borrow_mut();
        let entry = tasks.vacant_entry();
        let id = entry.key();
        let waker = Arc::new(TaskWaker {
            id,
            executor_id,
            queued: AtomicBool::new(true),
        });
        entry.insert(TaskEntry {
            future: Some(wrapped),
            waker,
        });
        id
    });
    READY.with(|r| r.borrow_mut().push_back(id));
    rx
}

/// Registers a function run once per loop turn (before the thread may block in the ring).
pub fn add_turn_hook(hook: Rc<dyn Fn()>) {
    TURN_HOOKS.with(|h| h.borrow_mut().push(hook));
}

/// Yields once to let other tasks run.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Number of live tasks on this thread.
pub fn task_count() -> usize {
    TASKS.with(|t| t.borrow().len())
}

fn run_ready_tasks() {
    for _ in 0..TASKS_PER_TURN_MAX {
        let Some(id) = READY.with(|r| r.borrow_mut().pop_front()) else {
            return;
        };
        let taken = TASKS.with(|t| {
            let mut tasks = t.borrow_mut();
            let entry = tasks.get_mut(id)?;
            entry.waker.queued.store(false, Ordering::Relaxed);
            Some((entry.future.take()?, entry.waker.clone()))
        });
        let Some((mut future, waker_arc)) = taken else {
            continue;
        };
        let waker = Waker::from(waker_arc);
        let mut cx = Context::from_waker(&waker);
        let done = future.as_mut().poll(&mut cx).is_ready();
        TASKS.with(|t| {
            let mut tasks = t.borrow_mut();
            if done {
                tasks.remove(id);
            } else if let Some(entry) = tasks.get_mut(id) {
                entry.future = Some(future);
            }
        });
    }
}

fn has_ready() -> bool {
    READY.with(|r| !r.borrow().is_empty())
}

/// A thread's ring plus executor. Create one per shard thread; it is `!Send`.
pub struct Runtime {
    _not_send: PhantomData<*const ()>,
}

impl Runtime {
    /// Sets up this thread's ring (probing the kernel once per process).
    pub fn new(config: &RingConfig) -> io::Result<Runtime> {
        let features = KernelFeatures::get().map_err(|e| io::Error::other(e.to_string()))?;
        Self::with_features(config, &features)
    }

    pub fn with_features(config: &RingConfig, features: &KernelFeatures) -> io::Result<Runtime> {
        let driver = Driver::new(config, features)?;
        driver::install(driver);
        EXECUTOR_ID.with(|e| e.set(NEXT_EXECUTOR_ID.fetch_add(1, Ordering::Relaxed)));
        Ok(Runtime {
            _not_send: PhantomData,
        })
    }

    /// Runs `future` to completion, together with every task it spawns, on this thread.
    pub fn block_on<F: Future + 'static>(&self, future: F) -> F::Output
    where
        F::Output: 'static,
    {
        let mut main = spawn(future);
        let main_waker = Waker::noop();
        let mut cx = Context::from_waker(main_waker);
        loop {
            run_ready_tasks();
            let finished = Pin::new(&mut main).poll(&mut cx);
            let hooks: Vec<Rc<dyn Fn()>> = TURN_HOOKS.with(|h| h.borrow().clone());
            for hook in hooks {
                hook();
            }
            if let Poll::Ready(out) = finished {
                // The hooks above flushed wake-ups for messages sent in this last turn; make
                // sure their SQEs reach the kernel before the ring goes away.
                driver::with(|d| d.submit(false)).expect("io_uring enter failed");
                return out.expect("main task dropped its output");
            }
            let wait = !has_ready();
            driver::with(|d| {
                d.reap();
                // A wake-up reaped here arrived after this turn's mesh drain: its message is
                // still queued, so go round again instead of blocking.
                let wait = wait && !has_ready() && !d.wake_pending();
                if let Err(e) = d.submit(wait) {
                    panic!("io_uring enter failed: {e}");
                }
                d.reap();
            });
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Drop tasks first (their ops become orphans the driver parks), then the ring.
        let tasks = TASKS.with(|t| std::mem::take(&mut *t.borrow_mut()));
        drop(tasks);
        READY.with(|r| r.borrow_mut().clear());
        TURN_HOOKS.with(|h| h.borrow_mut().clear());
        drop(driver::uninstall());
        EXECUTOR_ID.with(|e| e.set(0));
    }
}

/// Convenience: a runtime with the default ring, running one future.
pub fn block_on<F: Future + 'static>(future: F) -> io::Result<F::Output>
where
    F::Output: 'static,
{
    let rt = Runtime::new(&RingConfig::default())?;
    Ok(rt.block_on(future))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_tasks_run_and_join() {
        let out = block_on(async {
            let a = spawn(async { 1 });
            let b = spawn(async {
                yield_now().await;
                2
            });
            a.await.unwrap() + b.await.unwrap()
        })
        .unwrap();
        assert_eq!(out, 3);
    }

    #[test]
    fn many_tasks_interleave() {
        let out = block_on(async {
            let counter = Rc::new(Cell::new(0));
            let handles: Vec<_> = (0..1000)
                .map(|_| {
                    let c = counter.clone();
                    spawn(async move {
                        yield_now().await;
                        c.set(c.get() + 1);
                    })
                })
                .collect();
            for h in handles {
                h.await.unwrap();
            }
            counter.get()
        })
        .unwrap();
        assert_eq!(out, 1000);
    }
}
