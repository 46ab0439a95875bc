//! criterion benchmarks live in benches/hot_paths.rs
