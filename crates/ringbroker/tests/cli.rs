//! The admin CLI (`ringbroker topic|group|cluster|produce|consume`) driven as a user would,
//! against the real broker, each result cross-checked with an independent client (kcat,
//! kafka-python); `--format json` parsed with serde_json; error exit statuses and messages.
//! A fake broker checks the ApiVersions negotiation.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

const CLI: &str = env!("CARGO_BIN_EXE_ringbroker");

/// Runs the CLI against `addr`; (exit success, stdout, stderr).
fn cli_status(addr: &str, args: &[&str], input: &str) -> (bool, String, String) {
    let mut full = vec!["timeout", "60", CLI];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-b", addr]);
    run_status(full[0], &full[1..], input)
}

/// Runs the CLI; panics with its output unless it succeeds.
fn cli(addr: &str, args: &[&str], input: &str) -> String {
    let (ok, out, err) = cli_status(addr, args, input);
    assert!(
        ok,
        "ringbroker {args:?} failed:\nstdout: {out}\nstderr: {err}"
    );
    out
}

/// Runs the CLI with `--format json` and parses its stdout.
fn cli_json(addr: &str, args: &[&str], input: &str) -> Value {
    let mut full = args.to_vec();
    full.extend_from_slice(&["--format", "json"]);
    let out = cli(addr, &full, input);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// Runs the CLI expecting failure; returns its stderr.
fn cli_fails(addr: &str, args: &[&str]) -> String {
    let (ok, out, err) = cli_status(addr, args, "");
    assert!(
        !ok,
        "ringbroker {args:?} should fail:\nstdout: {out}\nstderr: {err}"
    );
    err
}

fn wait_until(what: &str, deadline_s: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(deadline_s);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn cli_topics_are_created_listed_described_and_deleted_as_other_clients_see_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let addr = broker.addr.clone();

    // create: visible to kafka-python with its partition count.
    let created = cli_json(&addr, &["topic", "create", "orders", "-p", "3"], "");
    assert_eq!(created["dry_run"], false);
    assert_eq!(created["topics"][0]["topic"], "orders");
    assert_eq!(created["topics"][0]["partitions"], 3);
    assert_eq!(created["topics"][0]["error"], Value::Null);
    let text = cli(
        &addr,
        &["topic", "create", "audit", "-p", "2", "-r", "1"],
        "",
    );
    assert!(text.contains("audit") && text.contains("OK"), "{text}");
    let seen = kafka_python(&["topics", &addr], "");
    assert!(seen.lines().any(|l| l == "orders\t3"), "{seen}");
    assert!(seen.lines().any(|l| l == "audit\t2"), "{seen}");

    // --dry-run validates without creating.
    let dry = cli_json(
        &addr,
        &["topic", "create", "ghost", "-p", "1", "--dry-run"],
        "",
    );
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["topics"][0]["error"], Value::Null);
    assert!(!kafka_python(&["topics", &addr], "").contains("ghost"));

    // A second create fails, naming the Kafka error, with a non-zero exit status.
    let err = cli_fails(&addr, &["topic", "create", "orders", "-p", "3"]);
    assert!(err.contains("TOPIC_ALREADY_EXISTS (36)"), "{err}");
    assert!(err.contains("orders"), "{err}");
    let (ok, out, _) = cli_status(
        &addr,
        &["topic", "create", "orders", "--format", "json"],
        "",
    );
    assert!(!ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["topics"][0]["error"]["code"], 36);
    assert_eq!(v["topics"][0]["error"]["name"], "TOPIC_ALREADY_EXISTS");

    // list, as JSON and as a table.
    let list = cli_json(&addr, &["topic", "list"], "");
    let names: Vec<&str> = list["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["audit", "orders"]);
    assert_eq!(list["topics"][1]["partitions"], 3);
    let table = cli(&addr, &["topic", "list"], "");
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["orders", "3", "1"]),
        "{table}"
    );

    // describe: offsets follow what kcat wrote.
    kcat_produce(&addr, "orders", "a\t1\nb\t2\nc\t3\nd\t4\n");
    let d = cli_json(&addr, &["topic", "describe", "orders"], "");
    assert_eq!(d["topic"], "orders");
    let parts = d["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    let total: i64 = parts
        .iter()
        .map(|p| p["high_watermark"].as_i64().unwrap() - p["log_start_offset"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 4, "{d}");
    assert!(parts
        .iter()
        .all(|p| p["leader"] == 0 && p["error"].is_null()));
    let text = cli(&addr, &["topic", "describe", "orders"], "");
    assert!(text.contains("HIGH-WATERMARK"), "{text}");

    // delete: gone for kafka-python; deleting it again names the error.
    let deleted = cli_json(&addr, &["topic", "delete", "orders", "audit"], "");
    assert_eq!(deleted["topics"].as_array().unwrap().len(), 2);
    assert!(deleted["topics"][0]["error"].is_null());
    wait_until("the topics to disappear", 10, || {
        let seen = kafka_python(&["topics", &addr], "");
        !seen.contains("orders") && !seen.contains("audit")
    });
    let err = cli_fails(&addr, &["topic", "delete", "orders"]);
    assert!(err.contains("UNKNOWN_TOPIC_OR_PARTITION (3)"), "{err}");
    let err = cli_fails(&addr, &["topic", "describe", "orders"]);
    assert!(err.contains("UNKNOWN_TOPIC_OR_PARTITION (3)"), "{err}");
    broker.stop();
}

#[test]
fn cli_produce_and_consume_interoperate_with_kcat_and_kafka_python() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let addr = broker.addr.clone();
    cli(&addr, &["topic", "create", "lines", "-p", "3"], "");

    // produce: one record per line, offsets printed; kcat reads the same values.
    let out = cli(&addr, &["produce", "lines", "-p", "1"], "one\ntwo\nthree\n");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "Produced to partition 1 at offset 0",
            "Produced to partition 1 at offset 1",
            "Produced to partition 1 at offset 2"
        ]
    );
    assert_eq!(
        kcat_consume_all(&addr, "lines"),
        ["1\t0\t\tone", "1\t1\t\ttwo", "1\t2\t\tthree"]
    );

    // A pipe goes in batches (round robin over the partitions); each line's printed offset
    // is where kcat finds it.
    cli(&addr, &["topic", "create", "many", "-p", "3"], "");
    let input: String = (0..3000).map(|i| format!("line-{i}\n")).collect();
    let out = cli(&addr, &["produce", "many", "--format", "json"], &input);
    let mut printed: Vec<String> = out
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).unwrap();
            format!("{}\t{}\t\tline-{i}", v["partition"], v["offset"])
        })
        .collect();
    printed.sort();
    assert_eq!(printed.len(), 3000);
    assert_eq!(kcat_consume_all(&addr, "many"), printed);
    let d = cli_json(&addr, &["topic", "describe", "many"], "");
    for p in d["partitions"].as_array().unwrap() {
        assert_eq!(p["high_watermark"], 1000, "{d}");
    }

    // Keyed records land where Kafka's partitioner (kafka-python's murmur2) puts them.
    let keys: Vec<String> = (0..8).map(|i| format!("user-{i}")).collect();
    let input: String = keys.iter().map(|k| format!("{k}\tfrom-python\n")).collect();
    kafka_python(&["produce", &addr, "lines", "none"], &input);
    for key in &keys {
        let out = cli(
            &addr,
            &["produce", "lines", "-k", key, "--format", "json"],
            "from-cli\n",
        );
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["topic"], "lines");
        let record = format!("{}\t{}\t{key}\tfrom-cli", v["partition"], v["offset"]);
        let all = kcat_consume_all(&addr, "lines");
        assert!(all.contains(&record), "{record:?} not in {all:?}");
        let python_partition = all
            .iter()
            .find(|l| l.ends_with(&format!("\t{key}\tfrom-python")))
            .and_then(|l| l.split('\t').next())
            .unwrap()
            .to_string();
        assert_eq!(v["partition"].to_string(), python_partition, "key {key}");
    }

    // consume: kcat's records, then stops at the end it saw (default), or after -n.
    cli(&addr, &["topic", "create", "from-kcat", "-p", "1"], "");
    kcat_produce(&addr, "from-kcat", "k1\tv1\nk2\tv2\nk3\tv3\nk4\tv4\n");
    assert_eq!(
        cli(&addr, &["consume", "from-kcat"], ""),
        "v1\nv2\nv3\nv4\n"
    );
    assert_eq!(
        cli(&addr, &["consume", "from-kcat", "-n", "2"], ""),
        "v1\nv2\n"
    );
    assert_eq!(
        cli(&addr, &["consume", "from-kcat", "-o", "2"], ""),
        "v3\nv4\n"
    );
    assert_eq!(
        cli(&addr, &["consume", "from-kcat", "-o", "-1"], ""),
        "v4\n"
    );
    assert_eq!(cli(&addr, &["consume", "from-kcat", "-o", "end"], ""), "");
    let out = cli(
        &addr,
        &["consume", "from-kcat", "-n", "1", "--format", "json"],
        "",
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["offset"], 0);
    assert_eq!(v["partition"], 0);
    assert_eq!(v["key"], "k1");
    assert_eq!(v["value"], "v1");

    // --follow waits for records written after it started.
    let mut follower = std::process::Command::new(CLI)
        .args([
            "consume",
            "from-kcat",
            "-o",
            "end",
            "-f",
            "-n",
            "1",
            "-b",
            &addr,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    kcat_produce(&addr, "from-kcat", "k5\tlate\n");
    let mut out = String::new();
    follower
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(follower.wait().unwrap().success());
    assert_eq!(out, "late\n");

    // The CLI never creates a topic: an unknown one is an error naming the code.
    let err = cli_fails(&addr, &["produce", "nosuch"]);
    assert!(err.contains("UNKNOWN_TOPIC_OR_PARTITION (3)"), "{err}");
    let err = cli_fails(&addr, &["consume", "nosuch"]);
    assert!(err.contains("UNKNOWN_TOPIC_OR_PARTITION (3)"), "{err}");
    assert!(!kafka_python(&["topics", &addr], "").contains("nosuch"));
    broker.stop();
}

/// The lines kafka-python's group member wrote: (partition, offset, value) of each record.
fn member_records(path: &std::path::Path) -> Vec<(i32, i64, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 4 && f[0] == "record").then(|| {
                (
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].to_string(),
                )
            })
        })
        .collect()
}

fn group_member(
    addr: &str,
    topic: &str,
    group: &str,
    out: &std::path::Path,
    seconds: &str,
) -> std::process::Child {
    std::process::Command::new("python3")
        .arg(format!(
            "{}/../../tests/clients/kafka_python_client.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(["group-member", addr, topic, group])
        .arg(out)
        .args([seconds, "6000"])
        .spawn()
        .unwrap()
}

#[test]
fn cli_groups_are_described_reset_and_deleted_as_kafka_python_consumers_see_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let addr = broker.addr.clone();
    cli(&addr, &["topic", "create", "jobs", "-p", "1"], "");
    let lines: String = (0..10).map(|i| format!("job-{i}\n")).collect();
    cli(&addr, &["produce", "jobs"], &lines);

    // A kafka-python member reads and commits all ten records.
    let out1 = dir.path().join("member1.txt");
    let mut member = group_member(&addr, "jobs", "workers", &out1, "12");
    wait_until("the member to read every record", 30, || {
        member_records(&out1).len() == 10
    });
    let listed = cli_json(&addr, &["group", "list"], "");
    let g = listed["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "workers")
        .unwrap_or_else(|| panic!("{listed}"))
        .clone();
    assert_eq!(g["protocol_type"], "consumer");
    wait_until("the commit of offset 10", 15, || {
        let d = cli_json(&addr, &["group", "describe", "workers"], "");
        d["offsets"][0]["committed_offset"] == 10
    });
    let d = cli_json(&addr, &["group", "describe", "workers"], "");
    assert_eq!(d["state"], "Stable", "{d}");
    assert_eq!(d["members"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(d["offsets"][0]["topic"], "jobs");
    assert_eq!(d["offsets"][0]["log_end_offset"], 10);
    assert_eq!(d["offsets"][0]["lag"], 0);
    assert_eq!(d["total_lag"], 0);
    assert!(d["offsets"][0]["member_id"].is_string(), "{d}");

    // While the group has a member, the broker refuses the admin commit: clear error, exit 1.
    let err = cli_fails(
        &addr,
        &[
            "group",
            "reset-offsets",
            "workers",
            "--topic",
            "jobs",
            "--to-earliest",
        ],
    );
    // Kafka's classic-group rule: an admin commit (generation -1, no member id) to a group
    // with members is UNKNOWN_MEMBER_ID.
    assert!(err.contains("UNKNOWN_MEMBER_ID (25)"), "{err}");
    assert!(err.contains("the group has active members"), "{err}");
    // Deleting it is refused too.
    let err = cli_fails(&addr, &["group", "delete", "workers"]);
    assert!(err.contains("NON_EMPTY_GROUP (68)"), "{err}");
    assert!(member.wait().unwrap().success());

    // Empty now: a dry run changes nothing, a reset moves the committed offset...
    let dry = cli_json(
        &addr,
        &[
            "group",
            "reset-offsets",
            "workers",
            "--topic",
            "jobs",
            "--to-offset",
            "4",
            "--dry-run",
        ],
        "",
    );
    assert_eq!(dry["partitions"][0]["previous_offset"], 10);
    assert_eq!(dry["partitions"][0]["new_offset"], 4);
    let d = cli_json(&addr, &["group", "describe", "workers"], "");
    assert_eq!(d["offsets"][0]["committed_offset"], 10);
    let text = cli(
        &addr,
        &[
            "group",
            "reset-offsets",
            "workers",
            "--topic",
            "jobs",
            "--to-offset",
            "4",
        ],
        "",
    );
    assert!(text.contains("OK"), "{text}");
    let d = cli_json(&addr, &["group", "describe", "workers"], "");
    assert_eq!(d["state"], "Empty", "{d}");
    assert_eq!(d["offsets"][0]["committed_offset"], 4);
    assert_eq!(d["offsets"][0]["lag"], 6);
    let text = cli(&addr, &["group", "describe", "workers"], "");
    assert!(text.contains("TOTAL-LAG      6"), "{text}");

    // ...and a new kafka-python member of the group starts there.
    let out2 = dir.path().join("member2.txt");
    let mut member = group_member(&addr, "jobs", "workers", &out2, "5");
    wait_until("the second member to read from offset 4", 30, || {
        member_records(&out2).len() >= 6
    });
    assert!(member.wait().unwrap().success());
    let offsets: Vec<i64> = member_records(&out2).iter().map(|r| r.1).collect();
    assert_eq!(offsets, [4, 5, 6, 7, 8, 9]);
    assert_eq!(member_records(&out2)[0].2, "job-4");

    // --to-latest skips everything; --to-earliest goes back.
    let r = cli_json(
        &addr,
        &[
            "group",
            "reset-offsets",
            "workers",
            "--topic",
            "jobs",
            "--to-earliest",
        ],
        "",
    );
    assert_eq!(r["partitions"][0]["new_offset"], 0);
    assert_eq!(r["partitions"][0]["error"], Value::Null);

    // delete: gone from the list; deleting an unknown group names the error.
    let deleted = cli_json(&addr, &["group", "delete", "workers"], "");
    assert!(deleted["groups"][0]["error"].is_null(), "{deleted}");
    let listed = cli_json(&addr, &["group", "list"], "");
    assert!(!listed.to_string().contains("workers"), "{listed}");
    let err = cli_fails(&addr, &["group", "describe", "workers"]);
    assert!(err.contains("GROUP_ID_NOT_FOUND (69)"), "{err}");
    let err = cli_fails(&addr, &["group", "delete", "workers"]);
    assert!(err.contains("GROUP_ID_NOT_FOUND (69)"), "{err}");
    broker.stop();
}

#[test]
fn cli_cluster_info_matches_kcat_and_connection_errors_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let addr = broker.addr.clone();
    let info = cli_json(&addr, &["cluster", "info"], "");
    let port: i64 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(info["brokers"].as_array().unwrap().len(), 1, "{info}");
    assert_eq!(info["brokers"][0]["port"], port);
    assert_eq!(info["brokers"][0]["host"], "127.0.0.1");
    assert_eq!(info["controller_id"], info["brokers"][0]["node_id"]);
    // kcat -L reports the same broker.
    let kcat = run("timeout", &["30", "kcat", "-b", &addr, "-L"], "");
    let id = info["brokers"][0]["node_id"].as_i64().unwrap();
    assert!(
        kcat.contains(&format!("broker {id} at 127.0.0.1:{port}")),
        "{kcat}"
    );
    let text = cli(&addr, &["cluster", "info"], "");
    assert!(
        text.contains(&format!("{id}*")) && text.contains(&port.to_string()),
        "{text}"
    );

    // The broker list falls through to the next address; RINGBROKER_BROKERS is read.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    cli(&format!("{dead},{addr}"), &["topic", "list"], "");
    let out = std::process::Command::new(CLI)
        .args(["cluster", "info", "--format", "json"])
        .env("RINGBROKER_BROKERS", &addr)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["brokers"][0]["port"], port);
    let err = cli_fails(&dead, &["topic", "list"]);
    assert!(err.contains("could not connect"), "{err}");
    broker.stop();
}

/// A broker that advertises only the given APIs (key, min, max) and answers Metadata (any
/// version) with no topics; it reports each (API key, version) it was asked. An ApiVersions
/// request above the advertised ApiVersions range gets UNSUPPORTED_VERSION in the v0 layout,
/// as Kafka answers it.
fn fake_broker(apis: Vec<(i16, i16, i16)>) -> (String, std::sync::mpsc::Receiver<(i16, i16)>) {
    use bytes::{Buf, BufMut, Bytes, BytesMut};
    use kafka_protocol::messages::{
        api_versions_response::ApiVersion, ApiKey, ApiVersionsResponse, BrokerId, MetadataResponse,
        RequestHeader, ResponseHeader,
    };
    use kafka_protocol::protocol::{Decodable, Encodable};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            loop {
                let mut size = [0u8; 4];
                if s.read_exact(&mut size).is_err() {
                    break;
                }
                let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
                if s.read_exact(&mut body).is_err() {
                    break;
                }
                let mut body = Bytes::from(body);
                let key = (&body[..2]).get_i16();
                let version = (&body[2..4]).get_i16();
                let api = ApiKey::try_from(key).unwrap();
                let header =
                    RequestHeader::decode(&mut body, api.request_header_version(version)).unwrap();
                let _ = tx.send((key, version));
                let api_versions_max = apis.iter().find(|a| a.0 == 18).map_or(-1, |a| a.2);
                let unsupported = api == ApiKey::ApiVersions && version > api_versions_max;
                let version = if unsupported { 0 } else { version };
                let mut out = BytesMut::new();
                out.put_i32(0);
                ResponseHeader::default()
                    .with_correlation_id(header.correlation_id)
                    .encode(&mut out, api.response_header_version(version))
                    .unwrap();
                match api {
                    ApiKey::ApiVersions => ApiVersionsResponse::default()
                        .with_error_code(if unsupported { 35 } else { 0 })
                        .with_api_keys(
                            apis.iter()
                                .map(|&(k, min, max)| {
                                    ApiVersion::default()
                                        .with_api_key(k)
                                        .with_min_version(min)
                                        .with_max_version(max)
                                })
                                .collect(),
                        )
                        .encode(&mut out, version)
                        .unwrap(),
                    ApiKey::Metadata => MetadataResponse::default()
                        .with_controller_id(BrokerId(-1))
                        .encode(&mut out, version)
                        .unwrap(),
                    other => panic!("fake broker got {other:?}"),
                }
                let len = (out.len() - 4) as i32;
                out[..4].copy_from_slice(&len.to_be_bytes());
                if s.write_all(&out).is_err() {
                    break;
                }
            }
        }
    });
    (addr, rx)
}

#[test]
fn cli_negotiates_the_highest_common_version_and_names_a_missing_api() {
    // Metadata v4..v7 only: the CLI asks at v7 (its own range is v4..v13).
    let (addr, versions) = fake_broker(vec![(18, 0, 3), (3, 4, 7)]);
    let out = cli(&addr, &["topic", "list"], "");
    assert_eq!(out.trim(), "NAME  PARTITIONS  REPLICAS");
    let asked: Vec<(i16, i16)> = versions.try_iter().collect();
    assert_eq!(asked, [(18, 3), (3, 7)]);

    // A broker with ApiVersions up to v2 only: asked again at v2 after its v0-layout refusal.
    let (addr, versions) = fake_broker(vec![(18, 0, 2), (3, 4, 12)]);
    cli(&addr, &["topic", "list"], "");
    let asked: Vec<(i16, i16)> = versions.try_iter().collect();
    assert_eq!(asked, [(18, 3), (18, 2), (3, 12)]);

    // No Metadata at all: a clear message, exit 1.
    let (addr, _) = fake_broker(vec![(18, 0, 3)]);
    let err = cli_fails(&addr, &["topic", "list"]);
    assert!(
        err.contains("does not support Metadata (API key 3)"),
        "{err}"
    );
    // Metadata only below the CLI's range: no common version.
    let (addr, _) = fake_broker(vec![(18, 0, 3), (3, 0, 2)]);
    let err = cli_fails(&addr, &["topic", "list"]);
    assert!(err.contains("no common version"), "{err}");
    // DescribeCluster not offered: cluster info falls back to Metadata.
    let (addr, _) = fake_broker(vec![(18, 0, 3), (3, 4, 12)]);
    let v = cli_json(&addr, &["cluster", "info"], "");
    assert_eq!(v["source"], "Metadata");
}

/// confluent-kafka's AdminClient, the witness of the admin commands.
fn crosscheck(args: &[&str]) -> String {
    let path = format!(
        "{}/../../tests/clients/cli_crosscheck.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut full = vec![path.as_str()];
    full.extend_from_slice(args);
    run("python3", &full, "")
}

/// The value of `name` in `cli_crosscheck.py configs` output.
fn config_value(configs: &str, name: &str) -> Option<String> {
    configs.lines().find_map(|l| {
        let f: Vec<&str> = l.split('\t').collect();
        (f.first() == Some(&name)).then(|| f.get(1).unwrap_or(&"").to_string())
    })
}

/// The broker's DescribeConfigs / IncrementalAlterConfigs, CreatePartitions / DeleteRecords
/// and DescribeCluster, through the CLI.
#[test]
fn cli_configs_partitions_trim_and_cluster_use_the_admin_apis() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let addr = broker.addr.clone();

    // Configs given at creation are described by the CLI and by confluent-kafka.
    cli(
        &addr,
        &[
            "topic",
            "create",
            "cfg",
            "-p",
            "1",
            "-c",
            "retention.ms=3600000",
        ],
        "",
    );
    let d = cli_json(&addr, &["topic", "describe", "cfg"], "");
    let configs = d["configs"].as_array().unwrap_or_else(|| panic!("{d}"));
    let retention = configs
        .iter()
        .find(|c| c["name"] == "retention.ms")
        .unwrap_or_else(|| panic!("{d}"));
    assert_eq!(retention["value"], "3600000");
    assert_eq!(retention["source"], "DYNAMIC_TOPIC_CONFIG");
    assert_eq!(
        config_value(&crosscheck(&["configs", &addr, "cfg"]), "retention.ms").as_deref(),
        Some("3600000")
    );
    let text = cli(&addr, &["topic", "describe", "cfg"], "");
    assert!(
        text.contains("retention.ms") && text.contains("DYNAMIC_TOPIC_CONFIG"),
        "{text}"
    );

    // alter-config: --set, --dry-run, --delete, as confluent-kafka sees them.
    let dry = cli_json(
        &addr,
        &[
            "topic",
            "alter-config",
            "cfg",
            "--set",
            "retention.ms=1000",
            "--dry-run",
        ],
        "",
    );
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["error"], Value::Null);
    assert_eq!(
        config_value(&crosscheck(&["configs", &addr, "cfg"]), "retention.ms").as_deref(),
        Some("3600000")
    );
    cli(
        &addr,
        &[
            "topic",
            "alter-config",
            "cfg",
            "--set",
            "retention.ms=1000",
            "--set",
            "segment.ms=600000",
        ],
        "",
    );
    let seen = crosscheck(&["configs", &addr, "cfg"]);
    assert_eq!(
        config_value(&seen, "retention.ms").as_deref(),
        Some("1000"),
        "{seen}"
    );
    assert_eq!(
        config_value(&seen, "segment.ms").as_deref(),
        Some("600000"),
        "{seen}"
    );
    cli(
        &addr,
        &["topic", "alter-config", "cfg", "--delete", "retention.ms"],
        "",
    );
    let d = cli_json(&addr, &["topic", "describe", "cfg"], "");
    let retention = d["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "retention.ms")
        .unwrap()
        .clone();
    assert_ne!(retention["source"], "DYNAMIC_TOPIC_CONFIG", "{retention}");
    assert_ne!(retention["value"], "1000");
    // Refusals name INVALID_CONFIG and exit 1.
    let err = cli_fails(
        &addr,
        &["topic", "alter-config", "cfg", "--set", "retention.ms=soon"],
    );
    assert!(err.contains("INVALID_CONFIG (40)"), "{err}");
    let err = cli_fails(
        &addr,
        &["topic", "create", "bad", "-c", "dummy.doesntexist=1"],
    );
    assert!(err.contains("INVALID_CONFIG (40)"), "{err}");
    assert!(!kafka_python(&["topics", &addr], "").contains("bad\t"));

    // add-partitions: confluent-kafka sees them, producers use them; shrinking is refused.
    let dry = cli_json(
        &addr,
        &["topic", "add-partitions", "cfg", "-n", "3", "--dry-run"],
        "",
    );
    assert_eq!(dry["error"], Value::Null);
    assert_eq!(crosscheck(&["partitions", &addr, "cfg"]).trim(), "1");
    cli(&addr, &["topic", "add-partitions", "cfg", "-n", "3"], "");
    wait_until("3 partitions", 10, || {
        crosscheck(&["partitions", &addr, "cfg"]).trim() == "3"
    });
    let out = cli(
        &addr,
        &["produce", "cfg", "-p", "2"],
        "on-a-new-partition\n",
    );
    assert_eq!(out.trim(), "Produced to partition 2 at offset 0");
    assert!(kcat_consume_all(&addr, "cfg").contains(&"2\t0\t\ton-a-new-partition".to_string()));
    let err = cli_fails(&addr, &["topic", "add-partitions", "cfg", "-n", "2"]);
    assert!(err.contains("INVALID_PARTITIONS (37)"), "{err}");

    // trim: the log start offset moves for the CLI, confluent-kafka and kcat.
    let lines: String = (0..5).map(|i| format!("r{i}\n")).collect();
    cli(&addr, &["produce", "cfg", "-p", "0"], &lines);
    let t = cli_json(&addr, &["topic", "trim", "cfg", "-p", "0", "-o", "3"], "");
    assert_eq!(t["log_start_offset"], 3, "{t}");
    assert_eq!(
        crosscheck(&["watermarks", &addr, "cfg", "0"]).trim(),
        "3\t5"
    );
    let d = cli_json(&addr, &["topic", "describe", "cfg"], "");
    assert_eq!(d["partitions"][0]["log_start_offset"], 3);
    assert_eq!(cli(&addr, &["consume", "cfg", "-p", "0"], ""), "r3\nr4\n");
    let kcat: Vec<String> = kcat_consume_all(&addr, "cfg")
        .into_iter()
        .filter(|l| l.starts_with("0\t"))
        .collect();
    assert_eq!(kcat, ["0\t3\t\tr3", "0\t4\t\tr4"]);
    let err = cli_fails(&addr, &["topic", "trim", "cfg", "-p", "0", "-o", "99"]);
    assert!(err.contains("OFFSET_OUT_OF_RANGE (1)"), "{err}");

    // cluster info comes from DescribeCluster.
    let info = cli_json(&addr, &["cluster", "info"], "");
    assert_eq!(info["source"], "DescribeCluster", "{info}");
    assert_eq!(info["brokers"].as_array().unwrap().len(), 1);
    broker.stop();
}

/// Batches compressed by another client, decoded with `ringbroker_protocol::compression`.
#[test]
fn cli_consume_reads_batches_compressed_by_librdkafka() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &[]);
    let addr = broker.addr.clone();
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("packed-{codec}");
        cli(&addr, &["topic", "create", &topic, "-p", "1"], "");
        // Repetitive values, so librdkafka's batches really are compressed.
        let input: String = (0..200)
            .map(|i| format!("k{i}\t{codec} value number {i} {}\n", "x".repeat(100)))
            .collect();
        let acked = confluent_kafka(&["produce", &addr, &topic, codec], &input);
        assert!(acked.contains("acked\t200"), "{acked}");
        let out = cli(&addr, &["consume", &topic, "--format", "json"], "");
        let records: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records.len(), 200, "{codec}");
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r["offset"], i as i64);
            assert_eq!(r["key"], format!("k{i}"));
            assert_eq!(
                r["value"],
                format!("{codec} value number {i} {}", "x".repeat(100))
            );
        }
        // -o inside a compressed batch starts at that record.
        let out = cli(&addr, &["consume", &topic, "-o", "150", "-n", "1"], "");
        assert!(
            out.starts_with(&format!("{codec} value number 150 ")),
            "{out}"
        );
    }
    broker.stop();
}
