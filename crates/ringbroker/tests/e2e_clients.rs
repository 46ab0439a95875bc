//! End-to-end: the real binary with real Kafka clients (kcat = librdkafka, kafka-python).

mod common;

use common::*;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;

fn keyed_input(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{prefix}-key-{i}\t{prefix}-value-{i}-{}\n",
                "x".repeat(i % 97)
            )
        })
        .collect()
}

#[test]
fn kcat_and_kafka_python_move_20000_keyed_records_through_two_shards_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let addr = broker.addr.clone();
    kafka_python(&["create", &addr, "orders", "4"], "");

    // 10,000 keyed records from kcat (lz4 batches), 10,000 from kafka-python (lz4, acks=all).
    let from_kcat = keyed_input("kcat", 10_000);
    run(
        "timeout",
        &[
            "120", "kcat", "-b", &addr, "-t", "orders", "-P", "-K", "\t", "-z", "lz4", "-X",
            "acks=all",
        ],
        &from_kcat,
    );
    let from_python = keyed_input("py", 10_000);
    let acked = kafka_python(&["produce", &addr, "orders", "lz4"], &from_python);
    assert_eq!(acked.trim(), "acked\t10000");

    let expected: BTreeSet<String> = from_kcat
        .lines()
        .chain(from_python.lines())
        .map(str::to_string)
        .collect();
    let by_kcat = kcat_consume_all(&addr, "orders");
    let by_python = kafka_python_consume_all(&addr, "orders");
    assert_eq!(by_kcat.len(), 20_000);
    assert_eq!(
        by_kcat, by_python,
        "both clients see the same (partition, offset, key, value)"
    );
    let got: BTreeSet<String> = by_kcat
        .iter()
        .map(|l| l.splitn(3, '\t').nth(2).unwrap().to_string())
        .collect();
    assert_eq!(got, expected, "every record comes back byte-identical");
    // Keyed records spread over all 4 partitions, and the same key always lands together.
    let partitions: BTreeSet<&str> = by_kcat
        .iter()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(partitions.len(), 4);
    for p in 0..4 {
        let dir = broker.data_dir.join(format!("orders-{p}"));
        assert!(
            dir.join("00000000000000000000.log")
                .metadata()
                .unwrap()
                .len()
                > 0,
            "{dir:?}"
        );
    }

    let status = broker.stop();
    assert!(status.success(), "{status}: {}", broker.log());
    drop(broker);
    let broker = Broker::start(dir.path(), &[]);
    assert_eq!(
        kcat_consume_all(&broker.addr, "orders"),
        by_kcat,
        "same data after a restart"
    );
    assert_eq!(kafka_python_consume_all(&broker.addr, "orders"), by_kcat);
}

#[test]
fn metadata_lists_topics_and_unknown_topics_get_unknown_topic_or_partition() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--auto-create-topics=false"]);
    kafka_python(&["create", &broker.addr, "alpha", "3"], "");
    kafka_python(&["create", &broker.addr, "beta", "1"], "");
    assert_eq!(
        kafka_python(&["topics", &broker.addr], ""),
        "alpha\t3\nbeta\t1\n"
    );

    let (_, listing) = run_unchecked("kcat", &["-b", &broker.addr, "-L", "-t", "alpha"]);
    assert!(
        listing.contains("topic \"alpha\" with 3 partitions"),
        "{listing}"
    );
    let (_, unknown) = run_unchecked("kcat", &["-b", &broker.addr, "-L", "-t", "nope"]);
    assert!(unknown.contains("Unknown topic or partition"), "{unknown}");
    // Auto-creation is off: the topic still does not exist.
    assert_eq!(
        kafka_python(&["topics", &broker.addr], ""),
        "alpha\t3\nbeta\t1\n"
    );
}

#[test]
fn metadata_auto_creates_topics_with_the_default_partition_count() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--default-partitions", "3"]);
    run(
        "timeout",
        &["60", "kcat", "-b", &broker.addr, "-t", "auto", "-P"],
        "a\nb\nc\n",
    );
    let (_, listing) = run_unchecked("kcat", &["-b", &broker.addr, "-L", "-t", "auto"]);
    assert!(
        listing.contains("topic \"auto\" with 3 partitions"),
        "{listing}"
    );
    assert_eq!(kcat_consume_all(&broker.addr, "auto").len(), 3);
}

#[test]
fn shard_threads_are_pinned_each_to_its_own_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let cores = two_cores();
    let broker = Broker::start(dir.path(), &["--cores", &cores]);
    let wanted: Vec<&str> = cores.split(',').collect();
    let mut seen = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", broker.pid)).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let name = field("Name:");
        if let Some(id) = name.strip_prefix("shard-") {
            let id: usize = id.parse().unwrap();
            assert_eq!(
                field("Cpus_allowed_list:"),
                wanted[id],
                "shard-{id} pinned to its CPU"
            );
            seen.push(id);
        }
    }
    seen.sort();
    assert_eq!(seen, (0..wanted.len()).collect::<Vec<_>>());
}

#[test]
fn the_forced_fallback_ring_mode_serves_clients_too() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--uring-fallback"]);
    assert!(
        broker.log().contains("wakeups=\"eventfd\""),
        "{}",
        broker.log()
    );
    kafka_python(&["create", &broker.addr, "fb", "4"], "");
    kcat_produce(&broker.addr, "fb", &keyed_input("fb", 2000));
    let got = kcat_consume_all(&broker.addr, "fb");
    assert_eq!(got.len(), 2000);
    assert_eq!(kafka_python_consume_all(&broker.addr, "fb"), got);
}

/// A request frame: size, api key, version, correlation id, client id (classic header v1).
fn raw_request(api_key: i16, version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&api_key.to_be_bytes());
    frame.extend_from_slice(&version.to_be_bytes());
    frame.extend_from_slice(&correlation_id.to_be_bytes());
    frame.extend_from_slice(&4i16.to_be_bytes());
    frame.extend_from_slice(b"test");
    frame.extend_from_slice(body);
    let mut out = (frame.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&frame);
    out
}

#[test]
fn api_versions_above_our_range_gets_unsupported_version_and_unknown_apis_close() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let mut s = TcpStream::connect(&broker.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(&raw_request(18, 99, 7, &[])).unwrap();
    let mut size = [0u8; 4];
    s.read_exact(&mut size).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).unwrap();
    assert_eq!(
        i32::from_be_bytes(body[0..4].try_into().unwrap()),
        7,
        "correlation id"
    );
    assert_eq!(
        i16::from_be_bytes(body[4..6].try_into().unwrap()),
        35,
        "UNSUPPORTED_VERSION"
    );
    let count = i32::from_be_bytes(body[6..10].try_into().unwrap());
    assert!(count >= 7, "the v0 answer lists the supported APIs");

    // An unknown API key closes the connection; the broker keeps serving others.
    s.write_all(&raw_request(4242, 0, 8, &[])).unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).unwrap(),
        0,
        "connection closed without a reply"
    );
    let (ok, listing) = run_unchecked("kcat", &["-b", &broker.addr, "-L"]);
    assert!(ok, "{listing}");
}

#[test]
fn recent_librdkafka_batches_in_every_codec_are_stored_as_sent_and_read_by_all_clients() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let addr = broker.addr.clone();
    kafka_python(&["create", &addr, "codecs", "4"], "");
    let mut expected = BTreeSet::new();
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let input = keyed_input(codec, 1500);
        expected.extend(input.lines().map(str::to_string));
        assert_eq!(
            confluent_kafka(&["produce", &addr, "codecs", codec], &input).trim(),
            "acked\t1500"
        );
    }
    let by_librdkafka = sorted_lines(&confluent_kafka(&["consume", &addr, "codecs", "4"], ""));
    assert_eq!(by_librdkafka.len(), 6000);
    assert_eq!(kcat_consume_all(&addr, "codecs"), by_librdkafka);
    assert_eq!(kafka_python_consume_all(&addr, "codecs"), by_librdkafka);
    let got: BTreeSet<String> = by_librdkafka
        .iter()
        .map(|l| l.splitn(3, '\t').nth(2).unwrap().to_string())
        .collect();
    assert_eq!(got, expected);
}

/// `ringbroker_fetch_spliced_bytes_total`, summed over shards, from /metrics.
fn spliced_bytes(broker: &Broker) -> u64 {
    let (status, text) = broker.http_get("/metrics");
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| l.starts_with("ringbroker_fetch_spliced_bytes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn a_large_fetch_goes_out_by_splice_and_arrives_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    kafka_python(&["create", &broker.addr, "big", "2"], "");
    // ~24 MB of incompressible-ish values, uncompressed, from the recent librdkafka.
    let input: String = (0..12_000)
        .map(|i| {
            format!(
                "k{i}\t{}\n",
                (0..2000)
                    .map(|j| (b'a' + ((i * 7 + j * 13) % 26) as u8) as char)
                    .collect::<String>()
            )
        })
        .collect();
    let produced_bytes = input.len() as u64;
    assert_eq!(
        confluent_kafka(&["produce", &broker.addr, "big", "none"], &input).trim(),
        "acked\t12000"
    );
    let got = kcat_consume_all(&broker.addr, "big");
    assert_eq!(got.len(), 12_000);
    let values: BTreeSet<String> = got
        .iter()
        .map(|l| l.splitn(3, '\t').nth(2).unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = input.lines().map(str::to_string).collect();
    assert!(
        values == expected,
        "consumed records differ from produced ones"
    );
    let spliced = spliced_bytes(&broker);
    let status = broker.stop();
    assert!(status.success());
    assert!(
        spliced >= produced_bytes,
        "Fetch used splice: {spliced} bytes spliced for {produced_bytes} produced"
    );
}
