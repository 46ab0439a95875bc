//! Durability end to end: SIGKILL mid-stream loses no acknowledged acks=all record; a clean
//! stop lets the next start trust the files; a torn tail is cut on restart.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

fn kill9(broker: &mut Broker) {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(broker.pid as i32, libc::SIGKILL) };
}

#[test]
fn acknowledged_acks_all_records_survive_three_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    let acked_file = dir.path().join("acked.tsv");
    let data = dir.path().join("data");
    let mut acked_total = 0;
    let mut rounds_with_data = 0;
    for round in 0..3 {
        let mut broker = Broker::start(&data, &[]);
        if round == 0 {
            kafka_python(&["create", &broker.addr, "crash", "4"], "");
        }
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/clients/confluent_kafka_client.py"
        );
        let mut producer = Command::new("python3")
            .args([
                script,
                "produce-until-killed",
                &broker.addr,
                "crash",
                &format!("r{round}"),
            ])
            .arg(&acked_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        kill9(&mut broker); // mid-stream: the producer is still sending
        std::thread::sleep(Duration::from_millis(200));
        let _ = producer.kill();
        let _ = producer.wait();
        drop(broker);

        let acked: BTreeSet<String> = std::fs::read_to_string(&acked_file)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert!(
            acked.len() > acked_total,
            "round {round}: the producer got acknowledgements"
        );
        rounds_with_data += 1;
        acked_total = acked.len();

        let broker = Broker::start(&data, &[]);
        assert!(
            broker.log().contains("recovery scanned"),
            "an unclean stop is recovered by a scan"
        );
        let stored: BTreeSet<String> = kcat_consume_all(&broker.addr, "crash")
            .into_iter()
            .collect();
        let lost: Vec<&String> = acked.difference(&stored).take(5).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged records lost or moved: {lost:?} (of {})",
            acked.len()
        );
    }
    assert_eq!(rounds_with_data, 3);
    eprintln!("acknowledged records checked after 3 SIGKILLs: {acked_total}");
}

/// `(scanned, total)` bytes from the start-up line "recovery scanned N bytes of M in …".
fn recovery_scanned_bytes(log: &str) -> Option<(u64, u64)> {
    let rest = log.split("recovery scanned ").nth(1)?;
    let words: Vec<&str> = rest.split_whitespace().take(4).collect();
    match words[..] {
        [n, "bytes", "of", m] => Some((n.parse().ok()?, m.parse().ok()?)),
        _ => None,
    }
}

#[test]
fn a_restart_after_kill9_scans_only_what_follows_the_recovery_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--recovery-checkpoint-ms",
        "100",
        "--segment-bytes",
        "65536",
    ];
    let mut broker = Broker::start(dir.path(), &flags);
    kafka_python(&["create", &broker.addr, "ckpt", "2"], "");
    let pad = "x".repeat(100);
    // acks=all (kcat's default): fdatasync'd before the answer, then checkpointed.
    let synced: String = (0..4000).map(|i| format!("s{i}\t{pad}{i}\n")).collect();
    kcat_produce(&broker.addr, "ckpt", &synced);
    std::thread::sleep(Duration::from_millis(1000));
    // acks=1 under --flush acks: written, never fdatasync'd, so after the recovery point.
    let unsynced: String = (0..300).map(|i| format!("u{i}\t{pad}{i}\n")).collect();
    run(
        "timeout",
        &[
            "60",
            "kcat",
            "-b",
            &broker.addr,
            "-t",
            "ckpt",
            "-P",
            "-K",
            "\t",
            "-X",
            "acks=1",
        ],
        &unsynced,
    );
    let before = kcat_consume_all(&broker.addr, "ckpt");
    assert_eq!(before.len(), 4300);
    kill9(&mut broker);
    drop(broker);

    let broker = Broker::start(dir.path(), &flags);
    let log = broker.log();
    let (scanned, total) = recovery_scanned_bytes(&log)
        .unwrap_or_else(|| panic!("no recovery line in the start-up log:\n{log}"));
    // 4300 records of ~110 bytes; the 300 unsynced ones are at most ~40 KB of batches.
    assert!(total > 450_000, "{log}");
    assert!(
        scanned > 0 && scanned < 60_000,
        "only the bytes after the recovery points are scanned: {scanned} of {total}\n{log}"
    );
    assert_eq!(kcat_consume_all(&broker.addr, "ckpt"), before);
}

#[test]
fn a_clean_stop_is_trusted_and_a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    kafka_python(&["create", &broker.addr, "torn", "1"], "");
    let input: String = (0..3000).map(|i| format!("k{i}\tv{i}\n")).collect();
    kcat_produce(&broker.addr, "torn", &input);
    let before = kcat_consume_all(&broker.addr, "torn");
    assert_eq!(before.len(), 3000);
    assert!(broker.stop().success());
    assert!(dir.path().join("meta/clean-shutdown").exists());
    drop(broker);

    let mut broker = Broker::start(dir.path(), &[]);
    assert!(
        broker.log().contains("trusted clean shutdown"),
        "{}",
        broker.log()
    );
    assert_eq!(kcat_consume_all(&broker.addr, "torn"), before);
    assert!(broker.stop().success());
    drop(broker);

    // Garbage after the last batch, as a crash in the middle of a write could leave.
    let segment = dir.path().join("torn-0/00000000000000000000.log");
    let good_len = std::fs::metadata(&segment).unwrap().len();
    let garbage: Vec<u8> = (0..4321u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    std::io::Write::write_all(&mut f, &garbage).unwrap();
    drop(f);
    std::fs::remove_file(dir.path().join("meta/clean-shutdown")).unwrap();

    let broker = Broker::start(dir.path(), &[]);
    assert!(broker.log().contains("truncating"), "{}", broker.log());
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), good_len);
    assert_eq!(kcat_consume_all(&broker.addr, "torn"), before);
    run(
        "timeout",
        &["60", "kcat", "-b", &broker.addr, "-t", "torn", "-P"],
        "after\n",
    );
    assert_eq!(kcat_consume_all(&broker.addr, "torn").len(), 3001);
}

fn offsets(addr: &str, topic: &str, ts: i64) -> (i64, i64, i64) {
    let out = kafka_python(&["offsets", addr, topic, "0", &ts.to_string()], "");
    let v: Vec<i64> = out.trim().split('\t').map(|x| x.parse().unwrap()).collect();
    (v[0], v[1], v[2])
}

#[test]
fn list_offsets_by_timestamp_finds_the_first_record_at_or_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    kafka_python(
        &["create", &broker.addr, "timed", "1", "segment.bytes=2048"],
        "",
    );
    // 200 records, timestamps 1_700_000_000_000 + 1000 i, each its own batch (several segments).
    let base = 1_700_000_000_000i64;
    let input: String = (0..200)
        .map(|i| format!("{}\tvalue-{i}\n", base + 1000 * i))
        .collect();
    kafka_python(&["produce-timed", &broker.addr, "timed"], &input);
    assert_eq!(offsets(&broker.addr, "timed", base), (0, 200, 0));
    assert_eq!(offsets(&broker.addr, "timed", base + 1).2, 1);
    assert_eq!(offsets(&broker.addr, "timed", base + 123_000).2, 123);
    assert_eq!(offsets(&broker.addr, "timed", base + 199_000).2, 199);
    assert_eq!(offsets(&broker.addr, "timed", base + 199_001).2, -1);
    assert!(
        std::fs::read_dir(dir.path().join("timed-0"))
            .unwrap()
            .count()
            > 3 * 2,
        "segments rolled"
    );
}

#[test]
fn retention_deletes_old_segments_and_the_earliest_offset_moves() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--retention-check-ms", "100"]);
    kafka_python(
        &[
            "create",
            &broker.addr,
            "ret",
            "1",
            "segment.bytes=4096,retention.bytes=16384",
        ],
        "",
    );
    let input: String = (0..3000)
        .map(|i| format!("k{i}\tvalue-{i}-{}\n", "p".repeat(40)))
        .collect();
    run(
        "timeout",
        &[
            "60",
            "kcat",
            "-b",
            &broker.addr,
            "-t",
            "ret",
            "-P",
            "-K",
            "\t",
            "-X",
            "batch.num.messages=20",
            "-X",
            "linger.ms=0",
        ],
        &input,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (earliest, latest, _) = loop {
        let o = offsets(&broker.addr, "ret", 0);
        if o.0 > 0 || std::time::Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(latest, 3000);
    assert!(earliest > 0, "retention moved the log start");
    let logs = std::fs::read_dir(dir.path().join("ret-0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")
        })
        .count();
    assert!(logs <= 6, "old segments deleted ({logs} left)");
    assert!(!dir.path().join("ret-0/00000000000000000000.log").exists());
    // Consumers starting from the beginning get exactly the retained records, in order.
    let got = kafka_python_consume_all(&broker.addr, "ret");
    assert_eq!(got.len() as i64, latest - earliest);
    // A fetch below the log start is refused (kcat -o 0 reports the offset as out of range).
    let (_, out) = run_unchecked(
        "timeout",
        &[
            "20",
            "kcat",
            "-b",
            &broker.addr,
            "-t",
            "ret",
            "-C",
            "-o",
            "0",
            "-c",
            "1",
            "-X",
            "auto.offset.reset=error",
        ],
    );
    assert!(out.to_lowercase().contains("out of range"), "{out}");
}

#[test]
fn a_long_poll_fetch_returns_as_soon_as_a_record_arrives() {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    kafka_python(&["create", &broker.addr, "poll", "2"], "");
    let addr = broker.addr.clone();
    let fetcher = std::thread::spawn(move || {
        let mut c = Client::connect(&addr);
        let name = TopicName(StrBytes::from_static_str("poll"));
        let parts = (0..2)
            .map(|p| {
                fetch_request::FetchPartition::default()
                    .with_partition(p)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)
            })
            .collect();
        let topic = fetch_request::FetchTopic::default()
            .with_topic(name)
            .with_partitions(parts);
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(5000)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![topic]);
        let start = std::time::Instant::now();
        let r: FetchResponse = c.call(ApiKey::Fetch, 12, &req);
        let bytes: usize = r.responses[0]
            .partitions
            .iter()
            .map(|p| p.records.as_ref().map_or(0, |b| b.len()))
            .sum();
        (start.elapsed(), bytes)
    });
    std::thread::sleep(Duration::from_millis(500));
    run(
        "timeout",
        &[
            "20",
            "kcat",
            "-b",
            &broker.addr,
            "-t",
            "poll",
            "-P",
            "-p",
            "1",
        ],
        "wake up\n",
    );
    let (elapsed, bytes) = fetcher.join().unwrap();
    assert!(bytes > 0, "the fetch returned the new record");
    assert!(
        elapsed < Duration::from_millis(2500),
        "returned {elapsed:?} after it was sent, well before max_wait 5 s"
    );
    assert!(
        elapsed >= Duration::from_millis(400),
        "it waited for the record ({elapsed:?})"
    );
}

/// Mounts a small tmpfs (needs root); `None` with the reason printed where that is impossible.
fn small_filesystem(dir: &std::path::Path, size: &str) -> Option<()> {
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(()),
        Ok(o) => {
            eprintln!(
                "SKIPPED: cannot mount a small tmpfs here: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("SKIPPED: cannot run mount: {e}");
            None
        }
    }
}

#[test]
fn a_full_disk_answers_kafka_storage_error_keeps_what_was_stored_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    if small_filesystem(dir.path(), "3m").is_none() {
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dir.path().to_path_buf());
    let data = dir.path().join("data");
    let broker = Broker::start(&data, &["--cores", "0"]);
    kafka_python(&["create", &broker.addr, "full", "1"], "");
    let first: String = (0..100).map(|i| format!("k{i}\tfirst-{i}\n")).collect();
    kcat_produce(&broker.addr, "full", &first);
    let stored = kcat_consume_all(&broker.addr, "full");
    assert_eq!(stored.len(), 100);
    // Ballast to delete later, so that space can come back.
    let ballast = dir.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 512 * 1024]).unwrap();
    // ~6 MB more than the filesystem holds.
    let flood: String = (0..1500)
        .map(|i| format!("f{i}\t{}\n", "z".repeat(4000)))
        .collect();
    let flood_args = [
        "60",
        "kcat",
        "-b",
        &broker.addr,
        "-t",
        "full",
        "-P",
        "-K",
        "\t",
        "-X",
        "message.send.max.retries=0",
    ];
    let (ok, stdout, stderr) = run_status("timeout", &flood_args, &flood);
    let out = format!("{stdout}{stderr}");
    assert!(
        !ok || out.contains("Disk error"),
        "the flood cannot all fit: {out}"
    );
    assert!(
        out.contains("Disk error when trying to access log file on disk"),
        "KAFKA_STORAGE_ERROR reached the client: {out}"
    );
    assert!(
        broker.log().contains("append failed"),
        "the broker logged the failure"
    );
    // Everything stored before the disk filled is intact and readable; the broker still serves.
    let after = kcat_consume_all(&broker.addr, "full");
    let after: BTreeSet<String> = after.into_iter().collect();
    let missing = stored.iter().filter(|l| !after.contains(*l)).count();
    assert_eq!(
        missing, 0,
        "every record stored before the disk filled is still there, unchanged"
    );
    let (listed, listing) = run_unchecked("kcat", &["-b", &broker.addr, "-L"]);
    assert!(listed, "{listing}");

    // Space comes back: the partition is cut back to its high watermark and takes writes.
    std::fs::remove_file(&ballast).unwrap();
    let again: String = (0..100).map(|i| format!("a{i}\tagain-{i}\n")).collect();
    let out = kafka_python(&["produce", &broker.addr, "full", "none"], &again);
    assert!(out.contains("acked\t100"), "{out}");
    assert!(
        broker.log().contains("accepting writes again"),
        "the broker logged the recovery"
    );
    let last = kcat_consume_all(&broker.addr, "full");
    let last_set: BTreeSet<String> = last.iter().cloned().collect();
    assert_eq!(last_set.len(), last.len(), "no record twice");
    assert!(stored.iter().all(|l| last_set.contains(l)));
    assert!(
        after.iter().all(|l| last_set.contains(l)),
        "nothing acknowledged was lost"
    );
    for i in 0..100 {
        let want = format!("\ta{i}\tagain-{i}");
        assert!(last.iter().any(|l| l.ends_with(&want)), "a{i} missing");
    }
}
