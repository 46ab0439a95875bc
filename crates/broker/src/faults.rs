//! Fault injection for the tests of fail-stop behaviour; inert unless the process starts with
//! [`FAULT_FILE_ENV`] set (no client can reach it: only whoever starts the process can).
//!
//! A thread polls the named file; when it appears, its first line names one fault, which is
//! applied once and the file removed (so a test can inject several, one after the other):
//!
//! - `panic shard <n>`: shard `n` panics inside its loop;
//! - `panic metrics`: the metrics thread panics;
//! - `stall shard <n> <ms>`: shard `n` blocks its thread for `ms` milliseconds;
//! - `fail-close shard <n>`: at shutdown, shard `n` reports that its logs failed to close;
//! - `delay-close <ms>`: at shutdown, every shard waits `ms` milliseconds (serving its ring)
//!   after it stopped accepting and before it closes its logs.
//!
//! [`LOAD_DELAY_ENV`] (read at start, not from the file) delays the state loading of every
//! shard but shard 0.

use ringbroker_runtime::mesh::Mesh;
use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Milliseconds every shard but shard 0 waits at start before loading its committed offsets
/// and producer state (tests only: the window in which a shard that loaded first must not
/// serve clients yet).
pub const LOAD_DELAY_ENV: &str = "RINGBROKER_TEST_LOAD_DELAY_MS";

/// On a shard at start: how long a test asked it to wait before loading its state.
pub fn load_delay(shard: usize) -> Duration {
    let ms = std::env::var(LOAD_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|_| shard > 0)
        .unwrap_or(0);
    Duration::from_millis(ms)
}

/// Names the file whose appearance injects a fault (tests only).
pub const FAULT_FILE_ENV: &str = "RINGBROKER_TEST_FAULT_FILE";
/// How often the fault file is looked for.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    PanicShard(usize),
    PanicMetrics,
    StallShard { shard: usize, ms: u64 },
    FailClose(usize),
    DelayClose { ms: u64 },
}

/// Set when the metrics thread must panic at its next turn.
static METRICS_PANIC: AtomicBool = AtomicBool::new(false);

thread_local! {
    static FAIL_CLOSE: Cell<bool> = const { Cell::new(false) };
    static DELAY_CLOSE_MS: Cell<u64> = const { Cell::new(0) };
}

pub fn parse(line: &str) -> Option<Fault> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
    match words.as_slice() {
        ["panic", "shard", _] => Some(Fault::PanicShard(num(2)? as usize)),
        ["panic", "metrics"] => Some(Fault::PanicMetrics),
        ["stall", "shard", _, _] => Some(Fault::StallShard {
            shard: num(2)? as usize,
            ms: num(3)?,
        }),
        ["fail-close", "shard", _] => Some(Fault::FailClose(num(2)? as usize)),
        ["delay-close", _] => Some(Fault::DelayClose { ms: num(1)? }),
        _ => None,
    }
}

/// Starts the watcher when [`FAULT_FILE_ENV`] is set.
pub fn start_watcher(mesh: Arc<Mesh>) {
    let Some(path) = std::env::var_os(FAULT_FILE_ENV).map(PathBuf::from) else {
        return;
    };
    tracing::warn!(file = %path.display(), "test fault injection is enabled ({FAULT_FILE_ENV}); never set it in production");
    let spawned = std::thread::Builder::new()
        .name("fault-injection".into())
        .spawn(move || loop {
            std::thread::sleep(POLL_INTERVAL);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let line = text.lines().next().unwrap_or("");
            if line.trim().is_empty() {
                continue; // still being written
            }
            let _ = std::fs::remove_file(&path);
            match parse(line) {
                Some(fault) if !matches!(target_shard(fault), Some(s) if s >= mesh.shard_count()) =>
                {
                    tracing::warn!(?fault, "injecting a test fault");
                    apply(fault, &mesh);
                }
                _ => tracing::warn!(line, "unknown test fault"),
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the fault-injection thread");
    }
}

fn target_shard(fault: Fault) -> Option<usize> {
    match fault {
        Fault::PanicShard(s) | Fault::StallShard { shard: s, .. } | Fault::FailClose(s) => Some(s),
        Fault::PanicMetrics | Fault::DelayClose { .. } => None,
    }
}

fn apply(fault: Fault, mesh: &Mesh) {
    match fault {
        Fault::PanicShard(s) => mesh.send_control(
            s,
            Box::new(move || panic!("injected test fault: shard {s} panics")),
        ),
        Fault::StallShard { shard, ms } => mesh.send_control(
            shard,
            Box::new(move || std::thread::sleep(Duration::from_millis(ms))),
        ),
        Fault::FailClose(s) => mesh.send_control(s, Box::new(|| FAIL_CLOSE.with(|f| f.set(true)))),
        Fault::DelayClose { ms } => {
            for s in 0..mesh.shard_count() {
                mesh.send_control(s, Box::new(move || DELAY_CLOSE_MS.with(|d| d.set(ms))));
            }
        }
        Fault::PanicMetrics => METRICS_PANIC.store(true, Ordering::Release),
    }
}

/// Called by the metrics thread once per turn.
pub fn metrics_turn() {
    if METRICS_PANIC.swap(false, Ordering::AcqRel) {
        panic!("injected test fault: the metrics thread panics");
    }
}

/// On a shard at shutdown: whether a test asked this shard's log close to fail.
pub fn close_must_fail() -> bool {
    FAIL_CLOSE.with(Cell::get)
}

/// On a shard at shutdown: how long a test asked it to wait before closing its logs.
pub fn close_delay() -> Duration {
    Duration::from_millis(DELAY_CLOSE_MS.with(Cell::get))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!(parse("panic shard 1"), Some(Fault::PanicShard(1)));
        assert_eq!(parse("panic metrics\n"), Some(Fault::PanicMetrics));
        assert_eq!(
            parse("stall shard 0 3000"),
            Some(Fault::StallShard { shard: 0, ms: 3000 })
        );
        assert_eq!(parse("fail-close shard 1"), Some(Fault::FailClose(1)));
        assert_eq!(
            parse("delay-close 500"),
            Some(Fault::DelayClose { ms: 500 })
        );
        assert_eq!(parse("panic shard x"), None);
        assert_eq!(parse("reboot"), None);
    }
}
