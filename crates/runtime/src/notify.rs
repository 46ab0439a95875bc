//! Wake every task waiting on an event of this shard (a partition got data, a sync finished).
//! A waiter created before `notify_all` is always released by it (waiters compare epochs),
//! and a waiter dropped early removes itself, so idle long polls leave nothing behind.

use slab::Slab;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Notify {
    epoch: Cell<u64>,
    waiters: RefCell<Slab<Waker>>,
}

impl Notify {
    pub fn new() -> Rc<Notify> {
        Rc::new(Notify::default())
    }

    /// Releases every current waiter.
    pub fn notify_all(&self) {
        self.epoch.set(self.epoch.get() + 1);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for (_, w) in waiters {
            w.wake();
        }
    }

    /// A future that completes at the next `notify_all` after this call.
    pub fn notified(&self) -> Notified<'_> {
        Notified {
            notify: self,
            epoch: self.epoch.get(),
            key: None,
        }
    }

    pub fn waiter_count(&self) -> usize {
        self.waiters.borrow().len()
    }
}

pub struct Notified<'a> {
    notify: &'a Notify,
    epoch: u64,
    key: Option<usize>,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.epoch.get() != self.epoch {
            self.key = None; // notify_all already emptied the slab
            return Poll::Ready(());
        }
        let mut waiters = self.notify.waiters.borrow_mut();
        match self.key {
            Some(key) if waiters.contains(key) => waiters[key] = cx.waker().clone(),
            _ => {
                let key = waiters.insert(cx.waker().clone());
                drop(waiters);
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            if self.notify.epoch.get() == self.epoch {
                self.notify.waiters.borrow_mut().try_remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{block_on, spawn, yield_now};

    #[test]
    fn notify_releases_waiters_and_dropped_waiters_leave() {
        block_on(async {
            let n = Notify::new();
            let n2 = n.clone();
            let waiter = spawn(async move { n2.notified().await });
            yield_now().await;
            assert_eq!(n.waiter_count(), 1);
            n.notify_all();
            waiter.await.unwrap();
            {
                let mut f = Box::pin(n.notified());
                let waker = std::task::Waker::noop();
                assert!(f
                    .as_mut()
                    .poll(&mut Context::from_waker(waker))
                    .is_pending());
                assert_eq!(n.waiter_count(), 1);
            }
            assert_eq!(n.waiter_count(), 0);
        })
        .unwrap();
    }
}
