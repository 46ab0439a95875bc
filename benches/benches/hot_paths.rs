//! Micro-benchmarks of the data path: log append through the ring, index lookup, batch
//! validation, framing, and Fetch response gather encoding. Run: `cargo bench -p ringbroker-benches`.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{ApiKey, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::batch::{build_batch, validate_produced};
use ringbroker_protocol::frame::{next_frame, Next};
use ringbroker_protocol::gather::placeholder;
use ringbroker_protocol::response::encode_response_gather;
use ringbroker_runtime::executor::Runtime;
use ringbroker_runtime::RingConfig;
use ringbroker_storage::index::OffsetIndex;
use ringbroker_storage::{LogConfig, PartitionLog};
use std::time::{Duration, Instant};

/// A 16 KiB batch of 16 records of ~1 KiB (uncompressed).
fn batch_16k() -> Bytes {
    let value = vec![b'v'; 1000];
    let values: Vec<&[u8]> = (0..16).map(|_| value.as_slice()).collect();
    Bytes::from(build_batch(0, 1_700_000_000_000, &values))
}

fn log_append(c: &mut Criterion) {
    let batch = batch_16k();
    let mut group = c.benchmark_group("log_append");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function("16KiB_batch_write_through_ring", |b| {
        b.iter_custom(|iters| {
            let dir = tempfile::tempdir().unwrap();
            let rt = Runtime::new(&RingConfig::default()).unwrap();
            let batch = batch.clone();
            let elapsed = rt.block_on(async move {
                let log =
                    PartitionLog::open(&dir.path().join("b-0"), LogConfig::default()).unwrap();
                let start = Instant::now();
                for _ in 0..iters {
                    log.append_batch(batch.clone(), 16).await.unwrap();
                }
                start.elapsed()
            });
            drop(rt);
            elapsed
        })
    });
    group.finish();
}

fn index_lookup(c: &mut Criterion) {
    // A full 1 GiB segment indexed every 4 KiB: 262,144 entries.
    let mut index = OffsetIndex::default();
    for i in 0..262_144u32 {
        index.push(i * 16, i * 4096);
    }
    let mut probe = 0u32;
    c.bench_function("index_lookup_262144_entries", |b| {
        b.iter(|| {
            probe = probe.wrapping_mul(1_103_515_245).wrapping_add(12_345) % (262_144 * 16);
            std::hint::black_box(index.lookup(probe))
        })
    });
}

fn batch_validation(c: &mut Criterion) {
    let batch = batch_16k();
    let mut group = c.benchmark_group("batch_validation");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function("validate_16KiB_batch_crc_and_records", |b| {
        b.iter(|| validate_produced(&batch).unwrap())
    });
    group.finish();
}

fn framing(c: &mut Criterion) {
    let mut stream = Vec::new();
    for _ in 0..100 {
        stream.extend_from_slice(&1020i32.to_be_bytes());
        stream.extend_from_slice(&[7u8; 1020]);
    }
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Elements(100));
    group.bench_function("split_100_frames_of_1KiB", |b| {
        b.iter_batched(
            || BytesMut::from(&stream[..]),
            |mut buf| {
                let mut n = 0;
                while let Next::Frame(_) = next_frame(&mut buf, 1 << 20).unwrap() {
                    n += 1;
                }
                assert_eq!(n, 100);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn fetch_encoding(c: &mut Criterion) {
    c.bench_function("fetch_response_gather_encode_8_partitions_v12", |b| {
        b.iter(|| {
            let partitions = (0..8)
                .map(|i| {
                    PartitionData::default()
                        .with_partition_index(i)
                        .with_high_watermark(1 << 20)
                        .with_records(Some(
                            placeholder(1 << 20).expect("1 MiB fits a placeholder"),
                        ))
                })
                .collect();
            let topic = FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("bench")))
                .with_partitions(partitions);
            let response = FetchResponse::default().with_responses(vec![topic]);
            encode_response_gather(ApiKey::Fetch, 12, 1, &response).unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = log_append, index_lookup, batch_validation, framing, fetch_encoding
}
criterion_main!(benches);
