//! `/metrics` and `/health` of the real binary, checked by promtool, by a real Prometheus
//! server scraping it, and against the Grafana dashboard shipped in docs/.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Sample lines `name{labels} value` of an exposition, comments skipped.
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("label");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value.parse().expect("value"))
        })
        .collect()
}

fn sum_where(text: &str, name: &str, label: (&str, &str)) -> f64 {
    samples(text)
        .iter()
        .filter(|(n, l, _)| n == name && l.get(label.0).map(String::as_str) == Some(label.1))
        .map(|s| s.2)
        .sum()
}

fn metrics(broker: &Broker) -> String {
    let (status, body) = broker.http_get("/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls /metrics until `check` holds (published values trail the data path by at most a
/// publish; a scrape publishes first, so this normally passes at once).
fn metrics_until(broker: &Broker, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = metrics(broker);
        if check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never held; last exposition:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn produce_lines(broker: &Broker, topic: &str, from: usize, n: usize) {
    let input: String = (from..from + n).map(|i| format!("k{i}\tv{i}\n")).collect();
    let out = kafka_python(&["produce", &broker.addr, topic, "none"], &input);
    assert!(out.contains(&format!("acked\t{n}")), "{out}");
}

#[test]
fn exposition_counts_records_lag_and_requests_and_passes_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    let (status, body) = broker.http_get("/health");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(broker.http_get("/nope").0, 404);

    kafka_python(&["create", &broker.addr, "metered", "3"], "");
    produce_lines(&broker, "metered", 0, 700);
    // A group reads everything and commits; 250 more records make its lag 250.
    let out = dir.path().join("member.txt");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/kafka_python_client.py");
    let status = Command::new("python3")
        .arg(&script)
        .args([
            "group-member",
            &broker.addr,
            "metered",
            "lagging",
            out.to_str().unwrap(),
            "6",
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let read = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        read.lines().filter(|l| l.starts_with("record\t")).count(),
        700,
        "{read}"
    );
    produce_lines(&broker, "metered", 700, 250);
    let lines = kcat_consume_all(&broker.addr, "metered");
    assert_eq!(lines.len(), 950);

    let text = metrics_until(&broker, "log end offsets sum to 950 and lag to 250", |t| {
        sum_where(
            t,
            "ringbroker_partition_log_end_offset",
            ("topic", "metered"),
        ) == 950.0
            && sum_where(t, "ringbroker_consumer_group_lag", ("group", "lagging")) == 250.0
    });
    assert_eq!(
        samples(&text)
            .iter()
            .filter(|(n, l, _)| n == "ringbroker_partition_log_end_offset"
                && l.get("topic").map(String::as_str) == Some("metered"))
            .count(),
        3
    );
    assert!(sum_where(&text, "ringbroker_requests_total", ("api", "Produce")) >= 2.0);
    assert!(sum_where(&text, "ringbroker_requests_total", ("api", "Fetch")) >= 1.0);
    assert!(sum_where(&text, "ringbroker_requests_total", ("api", "JoinGroup")) >= 1.0);
    assert!(
        sum_where(
            &text,
            "ringbroker_request_duration_seconds_count",
            ("api", "Produce")
        ) >= 2.0
    );
    let total = |name: &str| -> f64 {
        samples(&text)
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|s| s.2)
            .sum()
    };
    // Offset commits go to __consumer_offsets without a Produce request.
    assert_eq!(total("ringbroker_produce_records_total"), 950.0);
    assert!(
        sum_where(
            &text,
            "ringbroker_partition_log_end_offset",
            ("topic", "__consumer_offsets")
        ) > 0.0
    );
    assert!(total("ringbroker_fetch_spliced_bytes_total") > 0.0);
    assert!(total("ringbroker_bytes_received_total") > 950.0 * 4.0);
    assert!(total("ringbroker_bytes_sent_total") >= total("ringbroker_fetch_spliced_bytes_total"));
    assert!(sum_where(&text, "ringbroker_uring_submissions_total", ("op", "RECV")) > 0.0);
    assert!(
        total("ringbroker_fsync_duration_seconds_count") > 0.0,
        "acks=all produces fsync"
    );
    assert!(
        sum_where(
            &text,
            "ringbroker_build_info",
            ("version", env!("CARGO_PKG_VERSION"))
        ) == 1.0
    );

    // A heartbeat for a group that does not exist is answered with an error code.
    heartbeat_unknown_group(&broker);
    let text = metrics_until(&broker, "the heartbeat error counted", |t| {
        t.contains("ringbroker_request_errors_total{api=\"Heartbeat\"")
    });
    let ok = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .expect("promtool (Debian package prometheus; scripts/test installs it)");
    assert!(
        ok.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
}

fn heartbeat_unknown_group(broker: &Broker) {
    use kafka_protocol::messages::{ApiKey, HeartbeatRequest, HeartbeatResponse};
    use kafka_protocol::protocol::StrBytes;
    let mut c = Client::connect(&broker.addr);
    let r: HeartbeatResponse = c.call(
        ApiKey::Heartbeat,
        4,
        &HeartbeatRequest::default()
            .with_group_id(StrBytes::from_static_str("no-such-group").into())
            .with_member_id(StrBytes::from_static_str("m")),
    );
    assert_ne!(r.error_code, 0);
}

#[test]
fn a_real_prometheus_scrapes_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    produce_lines(&broker, "scraped", 0, 10);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: ringbroker\n    static_configs:\n      - targets: ['{}']\n",
            broker.metrics_addr()
        ),
    )
    .unwrap();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package prometheus; scripts/test installs it)");
    let deadline = Instant::now() + Duration::from_secs(60);
    let prom = format!("127.0.0.1:{port}");
    let mut last = String::new();
    let found = loop {
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
        if std::net::TcpStream::connect(&prom).is_err() {
            continue;
        }
        let (status, body) = http_get(
            &prom,
            "/api/v1/query?query=ringbroker_requests_total%7Bapi%3D%22Produce%22%7D",
        );
        last = body;
        if status == 200 && last.contains("\"__name__\":\"ringbroker_requests_total\"") {
            break true;
        }
    };
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert!(
        found,
        "Prometheus never returned ringbroker_requests_total; last answer: {last}"
    );
}

#[test]
fn every_series_of_the_grafana_dashboard_exists() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/grafana/ringbroker.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(
        exprs.len() >= 10,
        "dashboard has only {} queries",
        exprs.len()
    );
    let mut used = BTreeSet::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(at) = rest.find("ringbroker_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            used.insert(name);
        }
    }

    // A broker with data in every kind of series, groups included.
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    produce_lines(&broker, "dash", 0, 20);
    let out = dir.path().join("member.txt");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/kafka_python_client.py");
    Command::new("python3")
        .arg(&script)
        .args([
            "group-member",
            &broker.addr,
            "dash",
            "g",
            out.to_str().unwrap(),
            "4",
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    heartbeat_unknown_group(&broker);
    let text = metrics_until(&broker, "group lag published", |t| {
        t.contains("ringbroker_consumer_group_lag{")
    });
    let names: BTreeSet<String> = samples(&text).into_iter().map(|s| s.0).collect();
    let missing: Vec<&String> = used.iter().filter(|n| !names.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "dashboard uses series the broker does not expose: {missing:?}\nexposed: {names:?}"
    );
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Connections that produce to a partition of one shard end up on that shard, whichever shard
/// SO_REUSEPORT gave them, and keep working there.
#[test]
fn connections_move_to_the_shard_that_owns_their_partition() {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), &[]);
    kafka_python(&["create", &broker.addr, "routed", "2"], "");
    // "created topic topic=routed partitions=2 owners=[0, 1]"
    let log = broker.log();
    let line = log
        .lines()
        .find(|l| l.contains("created topic") && l.contains("routed"))
        .expect("creation logged");
    let owners: Vec<usize> = line[line.find("owners=[").unwrap() + 8..]
        .split(']')
        .next()
        .unwrap()
        .split(", ")
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(owners.len(), 2);
    let owner = owners[1].to_string();
    let produce = |c: &mut Client, i: usize| {
        let value = format!("v{i}");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let batch = ringbroker_protocol::batch::build_batch(0, now_ms, &[value.as_bytes()]);
        let req = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("routed")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(1)
                    .with_records(Some(bytes::Bytes::from(batch)))])]);
        let r: ProduceResponse = c.call(ApiKey::Produce, 9, &req);
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    };
    let mut clients: Vec<Client> = (0..8).map(|_| Client::connect(&broker.addr)).collect();
    let mut sent = 0;
    for _ in 0..6 {
        for c in &mut clients {
            produce(c, sent);
            sent += 1;
        }
    }
    let text = metrics_until(&broker, "every connection on the partition's shard", |t| {
        sum_where(t, "ringbroker_connections", ("shard", &owner)) == 8.0
    });
    let moved: f64 = samples(&text)
        .iter()
        .filter(|(n, _, _)| n == "ringbroker_connections_moved_total")
        .map(|s| s.2)
        .sum();
    assert!(moved <= 8.0, "{moved} moves for 8 connections");
    // Moved connections keep serving: one more batch each, then read everything back.
    for c in &mut clients {
        produce(c, sent);
        sent += 1;
    }
    drop(clients);
    let mut got: Vec<String> = kcat_consume_all(&broker.addr, "routed")
        .iter()
        .map(|l| l.rsplit('\t').next().unwrap().to_string())
        .collect();
    got.sort();
    let mut want: Vec<String> = (0..sent).map(|i| format!("v{i}")).collect();
    want.sort();
    assert_eq!(got, want);
}
