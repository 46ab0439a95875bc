//! Log compaction end to end with real clients: keyed updates over many segments leave the
//! latest value of each key (kcat, kafka-python and confluent-kafka read it back from offset
//! 0, skipping the gaps, at the offsets the records were acknowledged at); tombstones go only
//! after `delete.retention.ms`; `compact,delete` also applies retention; key-less records are
//! refused; a kill at each point of a cleaning's swap loses nothing; `__consumer_offsets` is
//! compacted and a restart restores every group's latest offsets.

mod common;

use bytes::Bytes;
use common::{run, Broker, Client};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// A record as produced: key, value ("<null>": a tombstone).
type Record = (String, String);

fn script(args: &[&str], input: &str) -> String {
    let path = format!(
        "{}/../../tests/clients/compaction.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut full = vec![path.as_str()];
    full.extend_from_slice(args);
    run("python3", &full, input)
}

fn create(addr: &str, topic: &str, configs: &[&str]) {
    let mut args = vec!["create", addr, topic, "1"];
    args.extend_from_slice(configs);
    assert_eq!(script(&args, "").trim(), "ok", "create {topic} {configs:?}");
}

/// Produces `records` (key, value; "<null>" is a tombstone) in order; the offset each got.
fn produce(lib: &str, addr: &str, topic: &str, records: &[(String, String)]) -> Vec<i64> {
    let input: String = records.iter().map(|(k, v)| format!("{k}\t{v}\n")).collect();
    let out = script(&["produce", lib, addr, topic], &input);
    let offsets: Vec<i64> = out
        .lines()
        .map(|l| l.split('\t').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(offsets.len(), records.len(), "{out}");
    offsets
}

/// `offset<TAB>key<TAB>value` of every record of partition 0, read from offset 0.
fn consume(lib: &str, addr: &str, topic: &str) -> Vec<String> {
    if lib == "kcat" {
        let out = run(
            "timeout",
            &[
                "60",
                "kcat",
                "-b",
                addr,
                "-t",
                topic,
                "-p",
                "0",
                "-o",
                "beginning",
                "-C",
                "-e",
                "-q",
                "-Z",
                "-f",
                "%o\t%k\t%s\n",
            ],
            "",
        );
        // kcat -Z prints a null value as NULL.
        return out
            .lines()
            .map(|l| l.replace("\tNULL", "\t<null>"))
            .collect();
    }
    script(&["consume", lib, addr, topic], "")
        .lines()
        .map(str::to_string)
        .collect()
}

/// Every record produced (offset, key, value), in offset order.
fn log_of(records: &[(String, String)], offsets: &[i64]) -> BTreeMap<i64, (String, String)> {
    offsets
        .iter()
        .copied()
        .zip(records.iter().cloned())
        .collect()
}

/// The latest record of each key, as `offset<TAB>key<TAB>value` lines in offset order.
fn latest_per_key(log: &BTreeMap<i64, (String, String)>) -> Vec<String> {
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for (offset, (key, _)) in log {
        last.insert(key, *offset);
    }
    let mut kept: Vec<i64> = last.into_values().collect();
    kept.sort();
    kept.iter()
        .map(|o| format!("{o}\t{}\t{}", log[o].0, log[o].1))
        .collect()
}

/// Waits until `lib` reads exactly `want` (the cleaner runs in the background).
fn wait_for_read(lib: &str, broker: &Broker, topic: &str, want: &[String], why: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = consume(lib, &broker.addr, topic);
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{why}: {lib} read {} records, wanted {}:\n{}\nwanted:\n{}\nlog:\n{}",
                got.len(),
                want.len(),
                got.join("\n"),
                want.join("\n"),
                broker.log()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The sum of the samples of metric `name` whose labels include every one of `labels`.
fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some(x) => x,
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        if labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.trim().parse::<f64>().unwrap();
        }
    }
    found
}

/// Bytes of a partition's segment files on disk.
fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// `rounds` updates of each of `keys` keys, then large records of keys of their own so every
/// update ends in a closed segment (the active one is never cleaned).
fn updates(keys: usize, rounds: usize) -> (Vec<Record>, Vec<Record>) {
    let mut records = Vec::new();
    for round in 0..rounds {
        for k in 0..keys {
            records.push((format!("k{k}"), format!("v{k}-round{round}")));
        }
    }
    let filler = (0..4)
        .map(|i| (format!("filler{i}"), "f".repeat(1500)))
        .collect();
    (records, filler)
}

#[test]
fn keyed_updates_leave_the_latest_value_per_key_for_kcat_kafka_python_and_confluent() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--cleaner-backoff-ms", "100"]);
    create(
        &broker.addr,
        "kv",
        &[
            "cleanup.policy=compact",
            "segment.bytes=2048",
            "min.cleanable.dirty.ratio=0.01",
        ],
    );
    create(&broker.addr, "plain", &[]);
    let (records, filler) = updates(40, 20);
    let mut offsets = produce("confluent", &broker.addr, "kv", &records);
    offsets.extend(produce("kafka-python", &broker.addr, "kv", &filler));
    let all: Vec<(String, String)> = records.iter().chain(&filler).cloned().collect();
    // A lower bound of what the records take uncleaned: their keys and values alone.
    let produced_bytes: u64 = all.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
    let want = latest_per_key(&log_of(&all, &offsets));
    assert_eq!(want.len(), 44);
    // Offsets are those acknowledged: the reads skip the gaps.
    wait_for_read("kcat", &broker, "kv", &want, "after cleaning");
    for lib in ["kafka-python", "confluent"] {
        assert_eq!(consume(lib, &broker.addr, "kv"), want, "{lib}");
    }
    let cleaned_bytes = log_bytes(&dir.path().join("kv-0"));
    assert!(
        cleaned_bytes * 2 < produced_bytes,
        "{cleaned_bytes} bytes left of {produced_bytes}"
    );

    // The cleaner's work shows in /metrics.
    let (status, body) = broker.http_get("/metrics");
    assert_eq!(status, 200);
    let get = |name: &str, labels: &[(&str, &str)]| {
        metric(&body, name, labels).unwrap_or_else(|| panic!("no {name} in\n{body}"))
    };
    assert!(get("ringbroker_cleaner_cleanings_total", &[]) >= 1.0);
    assert!(get("ringbroker_cleaner_bytes_read_total", &[]) > 0.0);
    assert!(get("ringbroker_cleaner_bytes_written_total", &[]) > 0.0);
    assert!(get("ringbroker_cleaner_records_removed_total", &[]) >= 760.0);
    assert_eq!(get("ringbroker_cleaner_errors_total", &[]), 0.0);
    let kv = [("topic", "kv"), ("partition", "0")];
    let ratio = get("ringbroker_partition_cleanable_dirty_ratio", &kv);
    assert!(
        (0.0..0.5).contains(&ratio),
        "dirty ratio {ratio} after cleaning"
    );
    assert!(get("ringbroker_partition_seconds_since_last_clean", &kv) < 60.0);
    // Only compacted partitions have cleaner gauges.
    assert!(metric(
        &body,
        "ringbroker_partition_cleanable_dirty_ratio",
        &[("topic", "plain")]
    )
    .is_none());
}

#[test]
fn tombstones_vanish_after_delete_retention_ms_and_not_before() {
    const RETENTION_MS: u64 = 8000;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &["--cleaner-backoff-ms", "100"]);
    create(
        &broker.addr,
        "tomb",
        &[
            "cleanup.policy=compact",
            "segment.bytes=1024",
            "min.cleanable.dirty.ratio=0.01",
            &format!("delete.retention.ms={RETENTION_MS}"),
        ],
    );
    let started = Instant::now();
    let mut records: Vec<(String, String)> = (0..10)
        .map(|k| (format!("t{k}"), format!("value{k}")))
        .collect();
    records.extend((0..5).map(|k| (format!("t{k}"), "<null>".to_string())));
    let (_, filler) = updates(0, 0);
    let mut offsets = produce("confluent", &broker.addr, "tomb", &records);
    offsets.extend(produce("confluent", &broker.addr, "tomb", &filler));
    let all: Vec<(String, String)> = records.iter().chain(&filler).cloned().collect();
    let with_tombstones = latest_per_key(&log_of(&all, &offsets));
    assert_eq!(
        with_tombstones
            .iter()
            .filter(|l| l.ends_with("<null>"))
            .count(),
        5
    );
    // Cleaned once: the older values are gone, the tombstones still there.
    wait_for_read(
        "kafka-python",
        &broker,
        "tomb",
        &with_tombstones,
        "first cleaning",
    );
    assert_eq!(consume("kcat", &broker.addr, "tomb"), with_tombstones);
    assert!(
        started.elapsed() < Duration::from_millis(RETENTION_MS),
        "the first cleaning took longer than delete.retention.ms: the test proves nothing"
    );

    // Past delete.retention.ms, the next cleaning (new data makes the log dirty) drops them.
    let wait = Duration::from_millis(RETENTION_MS + 2000).saturating_sub(started.elapsed());
    std::thread::sleep(wait);
    let more: Vec<(String, String)> = (4..8)
        .map(|i| (format!("more{i}"), "m".repeat(1500)))
        .collect();
    let more_offsets = produce("confluent", &broker.addr, "tomb", &more);
    let all: Vec<(String, String)> = all.into_iter().chain(more).collect();
    let offsets: Vec<i64> = offsets.into_iter().chain(more_offsets).collect();
    let want: Vec<String> = latest_per_key(&log_of(&all, &offsets))
        .into_iter()
        .filter(|l| !l.ends_with("<null>"))
        .collect();
    wait_for_read(
        "kafka-python",
        &broker,
        "tomb",
        &want,
        "tombstones past delete.retention.ms",
    );
    assert_eq!(consume("kcat", &broker.addr, "tomb"), want);
}

#[test]
fn compact_delete_also_applies_retention_and_compact_alone_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        dir.path(),
        &["--cleaner-backoff-ms", "100", "--retention-check-ms", "100"],
    );
    for (topic, policy) in [("both", "compact,delete"), ("compact-only", "compact")] {
        create(
            &broker.addr,
            topic,
            &[
                &format!("cleanup.policy={policy}"),
                "segment.bytes=1024",
                "retention.bytes=3000",
            ],
        );
    }
    // Every key once: compaction removes nothing, only retention can.
    let records: Vec<(String, String)> = (0..60)
        .map(|k| (format!("u{k}"), "x".repeat(200)))
        .collect();
    for topic in ["both", "compact-only"] {
        let offsets = produce("confluent", &broker.addr, topic, &records);
        assert_eq!(offsets, (0..60).collect::<Vec<i64>>());
    }
    let first_offset = |topic: &str| -> i64 {
        let lines = consume("kafka-python", &broker.addr, topic);
        lines[0].split('\t').next().unwrap().parse().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while first_offset("both") == 0 {
        assert!(
            Instant::now() < deadline,
            "retention never applied to compact,delete:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let kept = consume("kcat", &broker.addr, "both");
    assert!(kept.len() < 30, "{} records kept", kept.len());
    assert!(kept.last().unwrap().starts_with("59\tu59\t"));
    std::thread::sleep(Duration::from_millis(500)); // more retention checks
    assert_eq!(
        consume("kcat", &broker.addr, "compact-only").len(),
        60,
        "compact alone deletes nothing by size"
    );
}

fn produce_raw(
    c: &mut Client,
    version: i16,
    topic: &str,
    batch: Vec<u8>,
) -> (i16, i64, Vec<i32>, Option<String>) {
    let pd = produce_request::PartitionProduceData::default()
        .with_index(0)
        .with_records(Some(Bytes::from(batch)));
    let td = produce_request::TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_string(topic.into())))
        .with_partition_data(vec![pd]);
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![td]);
    let r: ProduceResponse = c.call(ApiKey::Produce, version, &req);
    let p = &r.responses[0].partition_responses[0];
    (
        p.error_code,
        p.base_offset,
        p.record_errors.iter().map(|e| e.batch_index).collect(),
        p.error_message.as_ref().map(|m| m.to_string()),
    )
}

#[test]
fn keyless_records_are_refused_by_a_compacted_topic_whole_batch_and_all() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create(&broker.addr, "keys", &["cleanup.policy=compact"]);
    create(&broker.addr, "plain", &[]);
    // confluent-kafka (librdkafka) and kafka-python, plain and compressed: both records of
    // the batch fail, the key-less one with INVALID_RECORD.
    for codec in ["none", "gzip", "lz4", "zstd", "snappy"] {
        let out = script(
            &["produce-keyless", "confluent", &broker.addr, "keys", codec],
            "",
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        for l in &lines {
            assert!(
                l.starts_with("error\t87\tINVALID_RECORD"),
                "confluent {codec}: {out}"
            );
        }
    }
    for codec in ["none", "gzip"] {
        let out = script(
            &[
                "produce-keyless",
                "kafka-python",
                &broker.addr,
                "keys",
                codec,
            ],
            "",
        );
        assert!(
            out.contains("error\t87\tInvalidRecordError")
                && out.contains("Compacted topic cannot accept message without key"),
            "kafka-python {codec}: {out}"
        );
        assert!(!out.contains("ok\t"), "{out}");
    }
    // kcat: a line without -K has no key.
    let (ok, _, err) = common::run_status(
        "timeout",
        &[
            "30",
            "kcat",
            "-b",
            &broker.addr,
            "-t",
            "keys",
            "-P",
            "-p",
            "0",
        ],
        "no key\n",
    );
    assert!(
        !ok || err.contains("Invalid record") || err.contains("failed to validate record"),
        "{err}"
    );
    assert!(
        err.contains("validate record") || err.contains("INVALID_RECORD"),
        "kcat: {err}"
    );
    // Nothing of the refused batches was written.
    assert_eq!(consume("kcat", &broker.addr, "keys"), Vec::<String>::new());

    // The wire: INVALID_RECORD on every version; v8+ name the record and say why.
    let mut c = Client::connect(&broker.addr);
    let keyless = ringbroker_protocol::batch::build_keyed_batch(
        0,
        1000,
        &[(Some(b"a"), Some(b"1")), (None, Some(b"2"))],
    );
    let (code, base, records, message) = produce_raw(&mut c, 7, "keys", keyless.clone());
    assert_eq!((code, base, records, message), (87, -1, vec![], None));
    let (code, base, records, message) = produce_raw(&mut c, 9, "keys", keyless.clone());
    assert_eq!((code, base, records), (87, -1, vec![1]));
    assert_eq!(
        message.as_deref(),
        Some("Compacted topic cannot accept message without key in topic partition keys-0.")
    );
    // The same batch is fine on a topic that is not compacted, and keyed ones on a compacted.
    assert_eq!(produce_raw(&mut c, 9, "plain", keyless).0, 0);
    let keyed = ringbroker_protocol::batch::build_keyed_batch(0, 1000, &[(Some(b"a"), None)]);
    assert_eq!(produce_raw(&mut c, 9, "keys", keyed).0, 0);
}

/// A kill at each point of a cleaning's swap (the broker aborts itself there): after a
/// restart every acknowledged record whose key has no later record is there at its offset,
/// nothing else is, and the next cleaning finishes the job.
#[test]
fn a_kill_at_each_point_of_a_cleaning_loses_nothing() {
    use std::os::unix::process::ExitStatusExt;
    for (point, leftover) in [
        ("cleaned-written", ".cleaned"),
        ("swap-renamed", ".swap"),
        ("old-deleted", ".swap"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = Broker::start(dir.path(), &["--log-cleaner-enable", "false"]);
        create(
            &broker.addr,
            "crash",
            &["cleanup.policy=compact", "segment.bytes=2048"],
        );
        let (records, filler) = updates(30, 10);
        let mut offsets = produce("confluent", &broker.addr, "crash", &records);
        offsets.extend(produce("confluent", &broker.addr, "crash", &filler));
        let all: Vec<(String, String)> = records.iter().chain(&filler).cloned().collect();
        let log = log_of(&all, &offsets);
        let everything: Vec<String> = log
            .iter()
            .map(|(o, (k, v))| format!("{o}\t{k}\t{v}"))
            .collect();
        assert_eq!(consume("kcat", &broker.addr, "crash"), everything);
        broker.stop();

        let mut broker = Broker::start_with_env(
            dir.path(),
            &["--cleaner-backoff-ms", "100"],
            &[("RINGBROKER_TEST_CLEAN_CRASH_AT", point)],
        );
        let status = broker
            .wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{point}: the broker did not abort:\n{}", broker.log()));
        assert_eq!(status.signal(), Some(libc::SIGABRT), "{point}: {status:?}");
        let names: Vec<String> = std::fs::read_dir(dir.path().join("crash-0"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|n| n.ends_with(leftover)),
            "{point}: no {leftover} file in {names:?}"
        );
        drop(broker);

        let broker = Broker::start(dir.path(), &["--cleaner-backoff-ms", "100"]);
        let got = consume("kafka-python", &broker.addr, "crash");
        let want = latest_per_key(&log);
        // Old or new segments, never a mix or a loss: each record read was acknowledged at
        // that offset, and every key's latest record is there.
        for line in &got {
            assert!(
                everything.contains(line),
                "{point}: {line} was never produced"
            );
        }
        for line in &want {
            assert!(got.contains(line), "{point}: {line} is lost");
        }
        // The cleaning started again finishes.
        wait_for_read("kcat", &broker, "crash", &want, point);
        // And the log goes on where it was.
        let next = produce(
            "confluent",
            &broker.addr,
            "crash",
            &[("k0".into(), "after".into())],
        );
        assert_eq!(next, vec![*offsets.last().unwrap() + 1], "{point}");
    }
}

fn commit(c: &mut Client, group: &str, topic: &str, offsets: &[(i32, i64)]) {
    use offset_commit_request::*;
    let r: OffsetCommitResponse = c.call(
        ApiKey::OffsetCommit,
        8,
        &OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.into())))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::from_static_str(""))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.into())))
                .with_partitions(
                    offsets
                        .iter()
                        .map(|&(p, o)| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(o)
                        })
                        .collect(),
                )]),
    );
    for p in &r.topics[0].partitions {
        assert_eq!(p.error_code, 0, "commit {group}");
    }
}

/// Sum of the sizes of the offsets topic's partitions, from /metrics.
fn offsets_topic_bytes(broker: &Broker) -> f64 {
    let (_, body) = broker.http_get("/metrics");
    metric(
        &body,
        "ringbroker_partition_size_bytes",
        &[("topic", "__consumer_offsets")],
    )
    .unwrap()
}

#[test]
fn the_offsets_topic_is_compacted_and_a_restart_restores_every_latest_commit() {
    const GROUPS: usize = 8;
    const ROUNDS: i64 = 150;
    let dir = tempfile::tempdir().unwrap();
    // Small segments for every topic, the offsets topic included (it follows the flag).
    let flags = ["--segment-bytes", "1024", "--cleaner-backoff-ms", "100"];
    let mut broker = Broker::start(dir.path(), &flags);
    assert_eq!(
        script(&["create", &broker.addr, "read", "3"], "").trim(),
        "ok"
    );
    let mut c = Client::connect(&broker.addr);
    let groups: Vec<String> = (0..GROUPS).map(|g| format!("group-{g}")).collect();
    for round in 0..ROUNDS {
        for (g, group) in groups.iter().enumerate() {
            let base = round * 10 + g as i64;
            commit(
                &mut c,
                group,
                "read",
                &[(0, base), (1, base + 1), (2, base + 2)],
            );
        }
    }
    // Tombstones: one group deleted, one partition's offset deleted.
    let r: DeleteGroupsResponse = c.call(
        ApiKey::DeleteGroups,
        2,
        &DeleteGroupsRequest::default()
            .with_groups_names(vec![GroupId(StrBytes::from_string(groups[7].clone()))]),
    );
    assert_eq!(r.results[0].error_code, 0);
    let r: OffsetDeleteResponse = c.call(
        ApiKey::OffsetDelete,
        0,
        &OffsetDeleteRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(groups[6].clone())))
            .with_topics(vec![
                offset_delete_request::OffsetDeleteRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("read")))
                    .with_partitions(vec![
                        offset_delete_request::OffsetDeleteRequestPartition::default()
                            .with_partition_index(0),
                    ]),
            ]),
    );
    assert_eq!(r.error_code, 0);
    assert_eq!(r.topics[0].partitions[0].error_code, 0);

    // Every commit is ~100 bytes in a batch of its own: the cleaner keeps the latest of each.
    let written = (ROUNDS as usize * GROUPS * 3 * 50) as f64;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let bytes = offsets_topic_bytes(&broker);
        if bytes < written / 10.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the offsets topic still holds {bytes} bytes (of at least {written} written):\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (_, body) = broker.http_get("/metrics");
    assert!(
        metric(
            &body,
            "ringbroker_partition_cleanable_dirty_ratio",
            &[("topic", "__consumer_offsets")]
        )
        .is_some(),
        "the offsets topic is compacted"
    );
    drop(c);
    broker.stop();

    let broker = Broker::start(dir.path(), &flags);
    let latest = |g: usize, p: i64| (ROUNDS - 1) * 10 + g as i64 + p;
    let mut want = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        for p in 0..3 {
            let offset = match (g, p) {
                (7, _) | (6, 0) => -1,
                _ => latest(g, p),
            };
            want.push(format!("{group}\t{p}\t{offset}"));
        }
    }
    for lib in ["kafka-python", "confluent"] {
        let mut args = vec!["committed", lib, &broker.addr, "read", "3"];
        args.extend(groups.iter().map(String::as_str));
        let got: Vec<String> = script(&args, "").lines().map(str::to_string).collect();
        assert_eq!(got, want, "{lib} after the restart");
    }
}

/// A stream processor's state: a Faust (faust-streaming) worker counts events per key in a
/// Table; Faust creates the table's changelog with cleanup.policy=compact, the cleaner
/// compacts it, and a fresh worker restores the table from it. Needs faust-streaming, which
/// scripts/test installs (`pip install faust-streaming`).
#[test]
fn a_faust_table_changelog_is_compacted_and_restores_the_table() {
    let (has_faust, _, _) = common::run_status("python3", &["-c", "import faust"], "");
    assert!(
        has_faust,
        "faust-streaming is not installed: run scripts/test, or pip install faust-streaming"
    );
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        dir.path(),
        &["--segment-bytes", "1024", "--cleaner-backoff-ms", "100"],
    );
    let faust = |args: &[&str]| -> Vec<String> {
        let path = format!(
            "{}/../../tests/clients/compaction_faust.py",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut full = vec!["120", "python3", path.as_str()];
        full.extend_from_slice(args);
        run("timeout", &full, "")
            .lines()
            // (Faust's worker may leave terminal escapes in front of a line.)
            .filter_map(|l| l.find("count\t").map(|at| l[at..].to_string()))
            .collect()
    };
    let want: Vec<String> = (0..5).map(|k| format!("count\tkey-{k}\t100")).collect();
    assert_eq!(faust(&["run", &broker.addr, "500"]), want);
    let topics = std::fs::read_to_string(dir.path().join("meta/topics.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&topics).unwrap();
    let changelog = meta["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "cwfaust-counts-changelog")
        .unwrap_or_else(|| panic!("no changelog topic in {topics}"));
    assert_eq!(changelog["configs"]["cleanup.policy"], "compact");
    // One more record closes the segment Faust's last batches went to (the active segment is
    // never cleaned, and how many updates a batch carries depends on the machine's speed).
    script(
        &[
            "produce",
            "confluent",
            &broker.addr,
            "cwfaust-counts-changelog",
        ],
        "\"roll\"\t<null>\n",
    );
    // The changelog (500 updates of 5 keys over many segments) gets cleaned.
    let labels = [("topic", "cwfaust-counts-changelog"), ("partition", "0")];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = broker.http_get("/metrics");
        let since = metric(
            &body,
            "ringbroker_partition_seconds_since_last_clean",
            &labels,
        );
        let cleaned = metric(&body, "ringbroker_cleaner_records_removed_total", &[]);
        if since.is_some() && cleaned.is_some_and(|n| n >= 400.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the changelog was not cleaned:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(faust(&["restore", &broker.addr]), want);
}

/// An offsets partition written by an earlier release holds key-less offset records, which a
/// cleaning drops: start-up replays them and writes what they leave committed again as keyed
/// records, so the offsets survive the cleaning and the next restart.
#[test]
fn offsets_committed_by_an_earlier_release_survive_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--segment-bytes", "1024", "--cleaner-backoff-ms", "100"];
    let mut broker = Broker::start(dir.path(), &flags);
    assert_eq!(
        script(&["create", &broker.addr, "old", "1"], "").trim(),
        "ok"
    );
    broker.stop();

    // The earlier release's record: version 1, group, topic, partition, offset, epoch, no
    // metadata; one batch of 40 commits of partition 0 (the last one wins), no key.
    let group = "upgraded";
    let legacy = |offset: i64| -> Vec<u8> {
        let mut v = vec![1u8];
        for s in [group, "old"] {
            v.extend_from_slice(&(s.len() as u16).to_be_bytes());
            v.extend_from_slice(s.as_bytes());
        }
        v.extend_from_slice(&0i32.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&(-1i32).to_be_bytes());
        v.extend_from_slice(&(-1i32).to_be_bytes());
        v
    };
    let values: Vec<Vec<u8>> = (1..=40).map(|i| legacy(i * 100)).collect();
    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    let batch = ringbroker_protocol::batch::build_batch(0, 1_700_000_000_000, &refs);
    assert!(
        batch.len() > 1024,
        "the legacy segment must be closed by the next append"
    );
    let partition = ringbroker_broker::groups::offsets_partition(group);
    let segment = dir
        .path()
        .join(format!("__consumer_offsets-{partition}"))
        .join("00000000000000000000.log");
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), 0);
    std::fs::write(&segment, &batch).unwrap();
    // As after a crash: the start scans the segment (and finds the batch).
    std::fs::remove_file(dir.path().join("meta/clean-shutdown")).unwrap();

    let mut broker = Broker::start(dir.path(), &flags);
    let committed = |broker: &Broker| {
        script(
            &["committed", "kafka-python", &broker.addr, "old", "1", group],
            "",
        )
    };
    assert_eq!(committed(&broker), format!("{group}\t0\t4000\n"));
    // A commit of another group of the same offsets partition closes the legacy segment
    // (if the keyed rewrite has not), which is then cleaned: its key-less records go.
    let other = (0..)
        .map(|i| format!("other-{i}"))
        .find(|g| ringbroker_broker::groups::offsets_partition(g) == partition)
        .unwrap();
    commit(&mut Client::connect(&broker.addr), &other, "old", &[(0, 7)]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let labels = [("topic", "__consumer_offsets")];
    loop {
        let (_, body) = broker.http_get("/metrics");
        if metric(&body, "ringbroker_cleaner_records_removed_total", &[]).unwrap_or(0.0) >= 40.0 {
            assert!(metric(&body, "ringbroker_partition_cleanable_dirty_ratio", &labels).is_some());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never cleaned:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    broker.stop();
    let broker = Broker::start(dir.path(), &flags);
    assert_eq!(committed(&broker), format!("{group}\t0\t4000\n"));
}

/// A broker default that one topic's own compaction settings conflict with is refused (an
/// accepted one would leave that topic's configs unusable, and the broker unable to open it at
/// its next start), and the broker still restarts.
#[test]
fn a_broker_default_a_topic_conflicts_with_is_refused_and_the_broker_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create(
        &broker.addr,
        "lagged",
        &["cleanup.policy=compact", "min.compaction.lag.ms=100000"],
    );
    let out = script(
        &[
            "alter-broker-default",
            &broker.addr,
            "log.cleaner.max.compaction.lag.ms",
            "60000",
        ],
        "",
    );
    assert!(
        out.starts_with("error\tINVALID_CONFIG") && out.contains("lagged"),
        "{out}"
    );
    // A default no topic conflicts with is accepted.
    let out = script(
        &[
            "alter-broker-default",
            &broker.addr,
            "log.cleaner.max.compaction.lag.ms",
            "600000",
        ],
        "",
    );
    assert_eq!(out.trim(), "ok");
    drop(broker);
    let broker = Broker::start(dir.path(), &[]);
    create(&broker.addr, "after", &["cleanup.policy=compact"]);
}

/// Clients cannot write to `__consumer_offsets` (Kafka: INVALID_TOPIC_EXCEPTION "Cannot append
/// to internal topic"): compaction keeps the latest record of each commit key, so a client's
/// record there would replace a group's real commit. Commits made before stay as they were.
#[test]
fn clients_cannot_produce_to_the_offsets_topic() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    create(&broker.addr, "plain", &[]);
    let (ok, stdout, stderr) = common::run_status(
        "kcat",
        &[
            "-P",
            "-b",
            &broker.addr,
            "-t",
            "__consumer_offsets",
            "-p",
            "0",
            "-K",
            ":",
            "-X",
            "message.send.max.retries=0",
        ],
        "somekey:garbage\n",
    );
    let said = format!("{stdout}{stderr}");
    assert!(
        !ok || said.contains("Invalid topic") || said.contains("INVALID_TOPIC"),
        "kcat: ok={ok} {said}"
    );
    assert!(
        said.contains("nvalid topic") || said.contains("INVALID_TOPIC"),
        "{said}"
    );
    let stored = run(
        "kcat",
        &[
            "-C",
            "-b",
            &broker.addr,
            "-t",
            "__consumer_offsets",
            "-p",
            "0",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%o\n",
        ],
        "",
    );
    assert_eq!(stored.trim(), "", "nothing written");
}
