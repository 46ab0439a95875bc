//! Per-shard limits that keep hostile or broken clients from costing more than their own
//! connection: rate-limited warnings, the receive-buffer budget, the connection count.

use ringbroker_runtime::notify::Notify;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Warnings about bad input a shard logs per second (a burst of up to this many, refilled
/// continuously); the rest are counted and reported with the next one logged.
pub const WARNINGS_PER_SECOND: f64 = 10.0;

/// Receive buffers hold at most this many bytes per shard beyond the first
/// [`RECV_BYTES_MIN`](crate::connection::RECV_BYTES_MIN) of each connection; a connection that
/// needs a bigger buffer for a large frame waits until others give theirs back (one always
/// may, so progress is guaranteed). Kafka's equivalent is `queued.max.request.bytes`.
pub const RECV_BUDGET_BYTES_DEFAULT: usize = 512 * 1024 * 1024;

struct WarnBucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

thread_local! {
    static WARN: RefCell<WarnBucket> = RefCell::new(WarnBucket {
        tokens: WARNINGS_PER_SECOND,
        last: Instant::now(),
        suppressed: 0,
    });
    static RECV_BUDGET: Rc<RecvBudget> = Rc::new(RecvBudget {
        in_use: Cell::new(0),
        freed: Notify::new(),
    });
}

/// Whether a bad-input warning may be logged now: `Some(n)` with the number suppressed since
/// the last one logged, `None` to stay quiet (the warning is counted).
pub fn warn_allowed() -> Option<u64> {
    WARN.with(|w| {
        let mut w = w.borrow_mut();
        let now = Instant::now();
        let refill = now.duration_since(w.last).as_secs_f64() * WARNINGS_PER_SECOND;
        w.tokens = (w.tokens + refill).min(WARNINGS_PER_SECOND);
        w.last = now;
        if w.tokens >= 1.0 {
            w.tokens -= 1.0;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    })
}

/// Logs a warning about a client's bad input, rate limited per shard.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {
        if let Some(suppressed) = $crate::limits::warn_allowed() {
            tracing::warn!(suppressed, $($arg)+);
        }
    };
}

/// The shard's receive-buffer budget.
pub struct RecvBudget {
    in_use: Cell<usize>,
    freed: Rc<Notify>,
}

/// Bytes of the budget a connection holds; given back on drop.
pub struct RecvGrant {
    budget: Rc<RecvBudget>,
    bytes: usize,
}

impl RecvGrant {
    pub fn none() -> RecvGrant {
        RecvGrant {
            budget: RECV_BUDGET.with(Rc::clone),
            bytes: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Grows this grant to `bytes`, waiting while the shard's budget is spent (unless
    /// nothing else holds any, so one large frame can always be read).
    pub async fn grow_to(&mut self, bytes: usize, budget_max: usize) {
        if bytes <= self.bytes {
            return;
        }
        let more = bytes - self.bytes;
        loop {
            let notified = self.budget.freed.notified();
            let in_use = self.budget.in_use.get();
            if in_use + more <= budget_max || in_use == self.bytes {
                self.budget.in_use.set(in_use + more);
                self.bytes = bytes;
                return;
            }
            notified.await;
        }
    }

    /// Gives the whole grant back.
    pub fn release(&mut self) {
        if self.bytes > 0 {
            self.budget
                .in_use
                .set(self.budget.in_use.get() - self.bytes);
            self.bytes = 0;
            self.budget.freed.notify_all();
        }
    }
}

impl Drop for RecvGrant {
    fn drop(&mut self) {
        self.release();
    }
}

/// The broker-wide connection count, shared by every shard's accept loop.
#[derive(Debug, Default)]
pub struct ConnectionCount(AtomicUsize);

/// One counted connection; uncounted on drop.
pub struct ConnectionSlot(Arc<ConnectionCount>);

impl ConnectionCount {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// Takes a slot unless `max` connections are open.
    pub fn try_take(self: &Arc<Self>, max: usize) -> Option<ConnectionSlot> {
        let mut n = self.0.load(Ordering::Relaxed);
        loop {
            if n >= max {
                return None;
            }
            match self
                .0
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(ConnectionSlot(self.clone())),
                Err(now) => n = now,
            }
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn warnings_are_rate_limited_and_counted() {
        let allowed = (0..100).filter(|_| warn_allowed().is_some()).count();
        assert!(allowed <= WARNINGS_PER_SECOND as usize + 1, "{allowed}");
        std::thread::sleep(Duration::from_millis(250));
        assert!(matches!(warn_allowed(), Some(n) if n >= 80));
    }

    #[test]
    fn connection_slots_stop_at_the_limit_and_come_back() {
        let c = Arc::new(ConnectionCount::default());
        let a = c.try_take(2).unwrap();
        let _b = c.try_take(2).unwrap();
        assert!(c.try_take(2).is_none());
        drop(a);
        assert!(c.try_take(2).is_some());
    }
}
