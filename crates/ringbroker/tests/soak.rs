//! The short form of the soak test: `tests/soak/soak.py` against this build's binary for
//! [`SOAK_LOAD_S`] seconds (the long form is `scripts/soak`). Idempotent acks=all producers,
//! consumers in a group, hostile clients (abrupt disconnects, garbage frames, the largest legal
//! fetch sizes on a partition above 256 MiB, readers that never read, connection floods, idle
//! HTTP connections) and kill -9 / restart at seeded random moments; then every acknowledged
//! record must be present exactly once and in order, committed offsets must never have moved
//! backwards, and no health probe may have found the broker unresponsive while it was up.
//! `SOAK_SEED=<n>` repeats a run's random choices (the seed is printed); `SOAK_ARGS` adds
//! driver options (e.g. `SOAK_ARGS="--big-mib 0"` leaves out the partition above 256 MiB).

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds of load; set-up (a 260 MiB partition) and the final checks add about 15 s.
const SOAK_LOAD_S: u32 = 60;
/// The driver ends the run (and the broker) after this many seconds whatever happens.
const SOAK_HARD_TIMEOUT_S: u32 = 165;

#[test]
fn soak_short_form_keeps_every_acknowledged_record_and_stays_responsive() {
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() % 1_000_000)
        });
    let driver = format!("{}/../../tests/soak/soak.py", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(&driver)
        .args(["--broker", env!("CARGO_BIN_EXE_ringbroker")])
        .args(["--duration", &SOAK_LOAD_S.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--cores", &common::two_cores()])
        .args(["--kill-min", "15", "--kill-max", "25"])
        .args(["--hard-timeout", &SOAK_HARD_TIMEOUT_S.to_string()])
        .args(
            std::env::var("SOAK_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 {driver} (scripts/test installs its modules): {e}")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let summary = stdout
        .lines()
        .find_map(|l| l.strip_prefix("soak: "))
        .unwrap_or_else(|| {
            panic!(
                "soak (seed {seed}) printed no summary ({}):\n{stdout}\n{stderr}",
                out.status
            )
        });
    let counts: HashMap<&str, u64> = summary
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    let count = |k: &str| {
        *counts
            .get(k)
            .unwrap_or_else(|| panic!("no {k} in the summary {summary:?}"))
    };
    assert!(
        out.status.success() && count("anomalies") == 0,
        "soak (seed {seed}, SOAK_SEED={seed} repeats it) found anomalies ({}): {summary}\n{stdout}\n{stderr}",
        out.status
    );
    // A run that exercised nothing would prove nothing.
    assert!(count("restarts") >= 2, "fewer than two kills: {summary}");
    assert!(
        count("records_acknowledged") >= 10_000,
        "too few acknowledged records: {summary}"
    );
    assert!(
        count("hostile_connections") >= 500,
        "too few hostile connections: {summary}"
    );
    assert!(
        count("health_probes") >= u64::from(SOAK_LOAD_S) / 2,
        "too few health probes while the broker was up: {summary}"
    );
}
