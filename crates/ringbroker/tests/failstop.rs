//! Fail-stop end to end: a panic on a shard or on the metrics thread ends the process at once
//! (non-zero, one log line, no clean-shutdown marker) and a restart serves every acknowledged
//! record; `/health` names a stuck shard and answers whatever other clients of its port do;
//! the clean-shutdown marker is written only when every shard closed its logs; at shutdown
//! no connection is accepted or read once the shards start closing their logs.
//!
//! Faults are injected through the test-only `RINGBROKER_TEST_FAULT_FILE` (see
//! `ringbroker_broker::faults`), which no client can reach.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FAULT_ENV: &str = "RINGBROKER_TEST_FAULT_FILE";

fn marker(data: &Path) -> PathBuf {
    data.join("meta").join("clean-shutdown")
}

/// Writes a fault for the broker to pick up, and waits until it has (the file is removed).
fn inject(fault_file: &Path, fault: &str) {
    let tmp = fault_file.with_extension("tmp");
    std::fs::write(&tmp, format!("{fault}\n")).unwrap();
    std::fs::rename(&tmp, fault_file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fault_file.exists() {
        assert!(Instant::now() < deadline, "fault {fault:?} never picked up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the broker's log contains `needle` (the log is read by a thread).
fn log_has(broker: &Broker, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if broker.log().contains(needle) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts the process ended by itself with status 101 and one FATAL line naming `thread`.
fn assert_fail_stopped(broker: &mut Broker, thread: &str) {
    let status = broker
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10 s after the panic; log:\n{}", broker.log()));
    assert_eq!(status.code(), Some(101), "log:\n{}", broker.log());
    let needle = format!("FATAL: thread '{thread}' panicked at ");
    assert!(log_has(broker, &needle), "log:\n{}", broker.log());
    let log = broker.log();
    let fatal: Vec<&str> = log.lines().filter(|l| l.contains("FATAL")).collect();
    assert_eq!(fatal.len(), 1, "one FATAL line: {fatal:?}");
    assert!(fatal[0].contains("injected test fault"), "{}", fatal[0]);
    assert!(
        !marker(&broker.data_dir).exists(),
        "no clean-shutdown marker"
    );
}

#[test]
fn a_shard_panic_stops_the_process_and_a_restart_serves_every_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fault = dir.path().join("fault");
    let acked_file = dir.path().join("acked.tsv");
    let fault_str = fault.to_str().unwrap();
    let mut broker = Broker::start_with_env(&data, &[], &[(FAULT_ENV, fault_str)]);
    kafka_python(&["create", &broker.addr, "fs", "4"], "");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/clients/confluent_kafka_client.py"
    );
    let mut producer = Command::new("python3")
        .args([script, "produce-until-killed", &broker.addr, "fs", "p"])
        .arg(&acked_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    inject(&fault, "panic shard 1"); // mid-stream: the producer is still sending
    assert_fail_stopped(&mut broker, "shard-1");
    std::thread::sleep(Duration::from_millis(200));
    let _ = producer.kill();
    let _ = producer.wait();

    let acked: BTreeSet<String> = std::fs::read_to_string(&acked_file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(!acked.is_empty(), "the producer got acknowledgements");
    let broker = Broker::start(&data, &[]);
    assert!(
        broker
            .log()
            .contains("scanned after the recovery checkpoints"),
        "a fail-stop is recovered by a scan"
    );
    let stored: BTreeSet<String> = kcat_consume_all(&broker.addr, "fs").into_iter().collect();
    let lost: Vec<&String> = acked.difference(&stored).take(5).collect();
    assert!(
        lost.is_empty(),
        "acknowledged records lost: {lost:?} (of {})",
        acked.len()
    );
    eprintln!(
        "acknowledged records checked after a shard panic: {}",
        acked.len()
    );
}

#[test]
fn a_metrics_thread_panic_stops_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fault = dir.path().join("fault");
    let mut broker = Broker::start_with_env(&data, &[], &[(FAULT_ENV, fault.to_str().unwrap())]);
    kcat_produce(&broker.addr, "m", "k\tv\n");
    inject(&fault, "panic metrics");
    assert_fail_stopped(&mut broker, "metrics");
}

/// GET with a measured duration.
fn timed_get(addr: &str, path: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let (status, body) = http_get(addr, path);
    (status, body, started.elapsed())
}

#[test]
fn health_names_a_stuck_shard_and_metrics_do_not_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fault = dir.path().join("fault");
    let broker = Broker::start_with_env(&data, &[], &[(FAULT_ENV, fault.to_str().unwrap())]);
    let metrics = broker.metrics_addr();
    assert_eq!(http_get(&metrics, "/health"), (200, "ok\n".to_string()));
    inject(&fault, "stall shard 1 6000");
    let stalled_at = Instant::now();
    let deadline = stalled_at + Duration::from_secs(4);
    let (status, body, took) = loop {
        let r = timed_get(&metrics, "/health");
        if r.0 != 200 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("stuck: shard 1 "), "{body}");
    assert!(!body.contains("shard 0"), "{body}");
    assert!(took < Duration::from_millis(500), "/health took {took:?}");
    // The stuck shard is not asked for a snapshot, so a scrape does not wait for it.
    let (status, text, took) = timed_get(&metrics, "/metrics");
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_millis(1500),
        "/metrics took {took:?} while a shard is stuck"
    );
    let age = text
        .lines()
        .find(|l| l.starts_with("ringbroker_shard_heartbeat_age_seconds{shard=\"1\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no heartbeat age of shard 1:\n{text}"));
    assert!(age >= 2.0, "heartbeat age of the stuck shard: {age}");
    assert!(
        stalled_at.elapsed() < Duration::from_secs(6),
        "checked while the shard was stuck"
    );
    // Once the shard turns again, it is healthy again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(&metrics, "/health").0 != 200 {
        assert!(Instant::now() < deadline, "/health never recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn health_answers_within_100_ms_while_100_idle_and_half_sent_connections_are_open() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let metrics = broker.metrics_addr();
    let mut held = Vec::new();
    for i in 0..100 {
        let mut s = TcpStream::connect(&metrics).unwrap();
        if i % 2 == 1 {
            // Half a request: the head never ends.
            write!(s, "GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
        }
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let (status, body, took) = timed_get(&metrics, "/health");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        slowest = slowest.max(took);
    }
    assert!(
        slowest < Duration::from_millis(100),
        "/health took {slowest:?} with 100 idle connections open"
    );
    // /metrics too (rendering runs on the publisher thread, not in the way of /health).
    let (status, _, took) = timed_get(&metrics, "/metrics");
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "/metrics took {took:?}");
    // The held connections are closed by their deadline, not kept for ever.
    let mut first = held.remove(0);
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let waited = Instant::now();
    let n = first.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "an idle connection gets no answer");
    assert!(
        waited.elapsed() < Duration::from_secs(8),
        "an idle connection is closed at its deadline"
    );
    eprintln!("/health with 100 idle and half-sent connections: slowest of 10 took {slowest:?}");
}

#[test]
fn the_marker_is_removed_at_start_and_not_written_when_a_shard_fails_to_close() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fault = dir.path().join("fault");
    let mut broker = Broker::start(&data, &[]);
    kafka_python(&["create", &broker.addr, "mk", "4"], "");
    let input: String = (0..50).map(|i| format!("k{i}\tv{i}\n")).collect();
    kcat_produce(&broker.addr, "mk", &input);
    assert!(broker.stop().success());
    assert!(marker(&data).exists(), "a clean stop leaves the marker");

    let mut broker = Broker::start_with_env(&data, &[], &[(FAULT_ENV, fault.to_str().unwrap())]);
    assert!(broker.log().contains("trusted clean shutdown"));
    assert!(
        !marker(&data).exists(),
        "the marker is gone while the broker runs"
    );
    kcat_produce(&broker.addr, "mk", "late\tafter-restart\n");
    inject(&fault, "fail-close shard 1");
    let status = broker.stop();
    assert!(!status.success(), "a failed close is a failed stop");
    assert!(
        log_has(&broker, "no clean-shutdown marker written"),
        "{}",
        broker.log()
    );
    assert!(!marker(&data).exists(), "no marker after a failed close");

    let broker = Broker::start(&data, &[]);
    assert!(
        broker
            .log()
            .contains("scanned after the recovery checkpoints"),
        "{}",
        broker.log()
    );
    assert_eq!(kcat_consume_all(&broker.addr, "mk").len(), 51);
}

#[test]
fn shutdown_stops_accepting_and_reading_before_the_logs_close() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fault = dir.path().join("fault");
    let mut broker = Broker::start_with_env(&data, &[], &[(FAULT_ENV, fault.to_str().unwrap())]);
    kafka_python(&["create", &broker.addr, "sd", "2"], "");
    kcat_produce(&broker.addr, "sd", "a\t1\nb\t2\n");
    // An idle client connection, open before the stop.
    let mut idle = TcpStream::connect(&broker.addr).unwrap();
    // Every shard waits 4 s between draining and closing its logs.
    inject(&fault, "delay-close 4000");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(broker.pid as i32, libc::SIGTERM) };
    let signalled = Instant::now();

    std::thread::sleep(Duration::from_millis(300));
    // New connections are refused, and a produce is not acknowledged.
    assert!(
        TcpStream::connect(&broker.addr).is_err(),
        "a connection was accepted during shutdown"
    );
    let (ok, _, err) = run_status(
        "timeout",
        &[
            "10",
            "kcat",
            "-b",
            &broker.addr,
            "-t",
            "sd",
            "-P",
            "-K",
            "\t",
            "-X",
            "message.timeout.ms=1500",
        ],
        "late\tx\n",
    );
    assert!(!ok, "a produce during shutdown must fail: {err}");
    // The idle connection was closed by the broker (EOF) while the process still runs.
    idle.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 16];
    let eof = matches!(idle.read(&mut buf), Ok(0));
    assert!(eof, "the idle connection is closed at shutdown");
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "checked while the shard was still closing ({:?})",
        signalled.elapsed()
    );
    assert!(broker.stop().success(), "{}", broker.log());
    assert!(marker(&data).exists());
    let broker = Broker::start(&data, &[]);
    assert_eq!(kcat_consume_all(&broker.addr, "sd").len(), 2);
}

/// A Fetch v12 request frame for partition 0 of `topic`, asking for up to 64 MiB at once.
fn big_fetch_frame(topic: &'static str) -> Vec<u8> {
    use bytes::BufMut;
    use kafka_protocol::messages::fetch_request::*;
    use kafka_protocol::messages::{ApiKey, RequestHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let version = 12;
    let fetch = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(64 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(topic)))
            .with_partitions(vec![
                FetchPartition::default().with_partition_max_bytes(64 << 20)
            ])]);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Fetch as i16)
        .with_request_api_version(version)
        .with_correlation_id(1);
    let mut body = bytes::BytesMut::new();
    header
        .encode(&mut body, ApiKey::Fetch.request_header_version(version))
        .unwrap();
    fetch.encode(&mut body, version).unwrap();
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    frame
}

#[test]
fn a_consumer_that_never_reads_its_response_does_not_cost_the_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    kafka_python(&["create", &broker.addr, "wide", "1"], "");
    let value = "v".repeat(10_000);
    let input: String = (0..3000).map(|i| format!("k{i}\t{value}\n")).collect();
    kcat_produce(&broker.addr, "wide", &input);
    // A ~30 MB Fetch response on a socket that is never read: the broker's send stays blocked.
    let mut stalled = TcpStream::connect(&broker.addr).unwrap();
    stalled.write_all(&big_fetch_frame("wide")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let status = broker.stop();
    assert!(status.success(), "{status}: {}", broker.log());
    assert!(
        broker
            .log()
            .contains("connections still busy after the drain timeout"),
        "the stalled connection held the drain: {}",
        broker.log()
    );
    assert!(
        marker(&data).exists(),
        "a clean stop despite the stalled consumer"
    );
    eprintln!(
        "stop with a consumer that never reads took {:?}",
        started.elapsed()
    );
    drop(stalled);
}

/// Requests that wait for a client-chosen time — a long-poll Fetch (`max_wait_ms` 60 s, more
/// bytes than will come) and a JoinGroup waiting for a rebalance (the first member has 60 s to
/// rejoin) — end when the broker starts its stop: the stop takes well under the drain timeout,
/// exits 0 and writes the marker; the JoinGroup is told NOT_COORDINATOR, as Kafka's unloading
/// coordinator answers.
#[test]
fn a_clean_stop_ends_long_polls_and_rebalance_waits() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    let name = |s: &str| StrBytes::from_string(s.to_string());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = Broker::start(&data, &[]);
    kcat_produce(&broker.addr, "lp", "one\n");

    let join = |group: &str, member: &str| {
        JoinGroupRequest::default()
            .with_group_id(GroupId(name(group)))
            .with_session_timeout_ms(60_000)
            .with_rebalance_timeout_ms(60_000)
            .with_member_id(name(member))
            .with_protocol_type(name("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(name("range"))
                .with_metadata(bytes::Bytes::new())])
    };
    // Member A joins and the group is stable with it alone.
    let mut a = Client::connect(&broker.addr);
    let r: JoinGroupResponse = a.call(ApiKey::JoinGroup, 5, &join("lp-group", ""));
    let a_id = r.member_id.to_string();
    let r: JoinGroupResponse = a.call(ApiKey::JoinGroup, 5, &join("lp-group", &a_id));
    assert_eq!(r.error_code, 0, "A joined");
    // Member B's join starts a rebalance that waits for A.
    let mut b = Client::connect(&broker.addr);
    let r: JoinGroupResponse = b.call(ApiKey::JoinGroup, 5, &join("lp-group", ""));
    let b_id = r.member_id.to_string();
    let (b_corr, b_frame) = b.frame(ApiKey::JoinGroup, 5, &join("lp-group", &b_id));
    b.send(&b_frame);
    // A long poll past the log end.
    let mut f = Client::connect(&broker.addr);
    let fetch = FetchRequest::default()
        .with_max_wait_ms(60_000)
        .with_min_bytes(1 << 20)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(name("lp")))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(1)
                .with_partition_max_bytes(1 << 20)])]);
    let (f_corr, f_frame) = f.frame(ApiKey::Fetch, 11, &fetch);
    f.send(&f_frame);
    std::thread::sleep(Duration::from_millis(500));

    let asked = Instant::now();
    let status = broker.stop();
    let took = asked.elapsed();
    assert!(status.success(), "{status:?}\n{}", broker.log());
    assert!(took < Duration::from_secs(5), "the stop took {took:?}");
    assert!(marker(&data).exists());
    let r: JoinGroupResponse = b.read(ApiKey::JoinGroup, 5, b_corr);
    assert_eq!(
        r.error_code, 16,
        "the waiting JoinGroup is told NOT_COORDINATOR"
    );
    let r: FetchResponse = f.read(ApiKey::Fetch, 11, f_corr);
    assert_eq!(r.error_code, 0);
}
