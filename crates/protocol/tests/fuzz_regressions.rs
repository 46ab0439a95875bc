//! Replays the fuzz seed corpus (real kcat and kafka-python requests, `fuzz/corpus/`) and every
//! input the fuzzers ever crashed on (`tests/fuzz_regressions/<target>/`) through the code the
//! fuzz targets exercise, with the broker's guarded allocator.

use bytes::Bytes;
use ringbroker_protocol::batch::validate_produced;
use ringbroker_protocol::request::decode_stream;
use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: ringbroker_protocol::alloc::GuardedAlloc = ringbroker_protocol::alloc::GuardedAlloc;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_recorded_client_request_decodes() {
    let seeds = files(&root().join("fuzz/corpus/request"));
    assert!(
        seeds.len() >= 20,
        "seed corpus missing: {} files",
        seeds.len()
    );
    for seed in seeds {
        let data = std::fs::read(&seed).unwrap();
        assert_eq!(
            decode_stream(&data, 100 << 20, |_, _| true),
            1,
            "{}",
            seed.display()
        );
    }
}

#[test]
fn every_recorded_client_batch_validates() {
    let seeds = files(&root().join("fuzz/corpus/batch"));
    assert!(!seeds.is_empty(), "batch seed corpus missing");
    for seed in seeds {
        let data = Bytes::from(std::fs::read(&seed).unwrap());
        validate_produced(&data).unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
    }
}

#[test]
fn crash_inputs_stay_fixed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    for input in files(&dir.join("request")) {
        let data = std::fs::read(&input).unwrap();
        decode_stream(&data, 1 << 20, |_, _| true);
    }
    for input in files(&dir.join("batch")) {
        let data = Bytes::from(std::fs::read(&input).unwrap());
        let _ = validate_produced(&data);
    }
}
