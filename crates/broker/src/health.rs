//! Liveness of the shards, for `/health` and `ringbroker_shard_heartbeat_age_seconds`.
//!
//! Each shard stamps its heartbeat once per executor loop turn (one relaxed store of a coarse
//! monotonic clock); a timer task makes an idle shard turn at least every [`HEARTBEAT_TICK`].
//! A shard whose loop has not turned for [`HEARTBEAT_STALE`] is stuck: a blocking call, an
//! endless loop, a task that never yields. The metrics thread only reads the stamps, so a
//! stuck shard cannot stall the answer.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// An idle shard still turns its loop this often (a timer wakes it).
pub const HEARTBEAT_TICK: Duration = Duration::from_millis(250);
/// A shard whose loop has not turned for this long is reported stuck.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(2);

/// One heartbeat stamp per shard (milliseconds of `CLOCK_MONOTONIC_COARSE`).
#[derive(Debug)]
pub struct Heartbeats {
    stamps_ms: Box<[AtomicU64]>,
}

/// Milliseconds of the coarse monotonic clock (a vDSO read, no syscall; a few ms resolution).
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the local timespec; CLOCK_MONOTONIC_COARSE always exists
    // on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

impl Heartbeats {
    /// Stamps of `shards` shards, all set to now (a shard starting up is not stuck yet).
    pub fn new(shards: usize) -> Heartbeats {
        let now = now_ms();
        Heartbeats {
            stamps_ms: (0..shards).map(|_| AtomicU64::new(now)).collect(),
        }
    }

    /// Called by `shard` once per loop turn.
    #[inline]
    pub fn beat(&self, shard: usize) {
        self.stamps_ms[shard].store(now_ms(), Ordering::Relaxed);
    }

    /// Time since each shard's loop last turned, by shard.
    pub fn ages(&self) -> Vec<Duration> {
        let now = now_ms();
        self.stamps_ms
            .iter()
            .map(|s| Duration::from_millis(now.saturating_sub(s.load(Ordering::Relaxed))))
            .collect()
    }

    /// (shard, age) of every shard whose loop has not turned for [`HEARTBEAT_STALE`].
    pub fn stuck(&self) -> Vec<(usize, Duration)> {
        self.ages()
            .into_iter()
            .enumerate()
            .filter(|(_, age)| *age >= HEARTBEAT_STALE)
            .collect()
    }
}

/// The answer of `/health`: `Ok(())` for 200 "ok", `Err(body)` for 503.
pub fn verdict(ready: bool, heartbeats: &Heartbeats) -> Result<(), String> {
    if !ready {
        return Err("not ready (starting or stopping)\n".into());
    }
    let stuck = heartbeats.stuck();
    if stuck.is_empty() {
        return Ok(());
    }
    let mut body = String::new();
    for (shard, age) in stuck {
        let _ = writeln!(
            body,
            "stuck: shard {shard} has not turned its loop for {:.1} s",
            age.as_secs_f64()
        );
    }
    Err(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_heartbeat_names_its_shard() {
        let h = Heartbeats::new(3);
        assert_eq!(verdict(true, &h), Ok(()));
        assert!(verdict(false, &h).is_err());
        h.stamps_ms[1].store(now_ms().saturating_sub(5_000), Ordering::Relaxed);
        let body = verdict(true, &h).unwrap_err();
        assert!(body.contains("shard 1 "), "{body}");
        assert!(
            !body.contains("shard 0") && !body.contains("shard 2"),
            "{body}"
        );
        h.beat(1);
        assert_eq!(verdict(true, &h), Ok(()));
    }
}
