//! TLS listeners (issue #16): real clients (kcat, confluent-kafka, kafka-python) over SSL,
//! PLAINTEXT and SSL listeners side by side each advertising its own endpoint, a large Fetch
//! over TLS (the userspace path's file-range fallback), mTLS, garbage on the TLS port, start-up
//! errors, and the kTLS probe. Certificates are made with `openssl` at test time
//! (common/certs.rs).

mod common;

use common::certs::{self, TestPki};
use common::tls_client;
use common::{run, run_status, Broker};
use kafka_protocol::messages::{
    ApiKey, DescribeClusterRequest, DescribeClusterResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, MetadataRequest, MetadataResponse,
};
use kafka_protocol::protocol::StrBytes;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

fn start_ssl(data: &Path, pki: &TestPki, listeners: &str, extra: &[&str]) -> Broker {
    let flags = pki.broker_flags();
    let mut args: Vec<&str> = vec!["--listeners", listeners];
    args.extend(flags.iter().map(String::as_str));
    args.extend_from_slice(extra);
    Broker::start(data, &args)
}

fn kcat_ssl(
    addr: &str,
    ca: &Path,
    client: Option<&certs::CertKey>,
    args: &[&str],
    input: &str,
) -> (bool, String, String) {
    let ca = ca.display().to_string();
    let mut full: Vec<String> = vec![
        "30".into(),
        "kcat".into(),
        "-b".into(),
        addr.into(),
        "-X".into(),
        "security.protocol=ssl".into(),
        "-X".into(),
        format!("ssl.ca.location={ca}"),
    ];
    if let Some(c) = client {
        full.push("-X".into());
        full.push(format!("ssl.certificate.location={}", c.cert.display()));
        full.push("-X".into());
        full.push(format!("ssl.key.location={}", c.key.display()));
    }
    full.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    run_status("timeout", &refs, input)
}

fn kcat_ssl_ok(
    addr: &str,
    ca: &Path,
    client: Option<&certs::CertKey>,
    args: &[&str],
    input: &str,
) -> String {
    let (ok, out, err) = kcat_ssl(addr, ca, client, args, input);
    assert!(ok, "kcat {args:?} failed:\nstdout: {out}\nstderr: {err}");
    out
}

#[test]
fn kcat_produces_and_consumes_over_ssl() {
    let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = TestPki::new(dir.path());
    let broker = start_ssl(data.path(), &pki, "SSL://127.0.0.1:0", &[]);
    let input: String = (0..200).map(|i| format!("k{i}\tvalue-{i}\n")).collect();
    kcat_ssl_ok(
        &broker.addr,
        &pki.ca.cert,
        None,
        &["-t", "t", "-P", "-K", "\t"],
        &input,
    );
    let out = kcat_ssl_ok(
        &broker.addr,
        &pki.ca.cert,
        None,
        &["-t", "t", "-C", "-e", "-q", "-f", "%k\t%s\n"],
        "",
    );
    assert_eq!(common::sorted_lines(&out), common::sorted_lines(&input));
}

fn tls_clients(
    lib: &str,
    addr: &str,
    ca: &Path,
    topic: &str,
    group: &str,
    client: Option<&certs::CertKey>,
) -> String {
    let script = format!(
        "{}/../../tests/clients/tls_clients.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let ca = ca.display().to_string();
    let mut args = vec![script.as_str(), lib, addr, ca.as_str(), topic, group, "20"];
    let (cert, key);
    if let Some(c) = client {
        cert = c.cert.display().to_string();
        key = c.key.display().to_string();
        args.push(&cert);
        args.push(&key);
    }
    run("python3", &args, "")
}

fn check_clients_output(out: &str, prefix: &str) {
    let records: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("record\t"))
        .collect();
    let want: Vec<String> = (0..20).map(|i| format!("{prefix}-{i}")).collect();
    assert_eq!(records, want, "output:\n{out}");
    assert!(out.lines().any(|l| l == "committed\t20"), "output:\n{out}");
}

#[test]
fn confluent_kafka_and_kafka_python_produce_consume_and_commit_over_ssl() {
    let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = TestPki::new(dir.path());
    let broker = start_ssl(data.path(), &pki, "SSL://127.0.0.1:0", &[]);
    let out = tls_clients("confluent", &broker.addr, &pki.ca.cert, "c", "gc", None);
    check_clients_output(&out, "confluent");
    let out = tls_clients("kafka-python", &broker.addr, &pki.ca.cert, "p", "gp", None);
    check_clients_output(&out, "kafka-python");
}

#[test]
fn plaintext_and_ssl_listeners_serve_at_once_each_advertising_its_own_endpoint() {
    let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = TestPki::new(dir.path());
    let broker = start_ssl(
        data.path(),
        &pki,
        "PLAINTEXT://127.0.0.1:0,SSL://127.0.0.1:0",
        &[],
    );
    let log = broker.log();
    let plain = certs::listener_addr(&log, "PLAINTEXT");
    let ssl = certs::listener_addr(&log, "SSL");
    let port = |a: &str| a.rsplit(':').next().unwrap().parse::<i32>().unwrap();
    assert_ne!(port(&plain), port(&ssl));
    let config = tls_client::client_config(&pki.ca.cert, None);

    // Metadata, FindCoordinator and DescribeCluster on each listener name its own port.
    let mut plain_conn = std::net::TcpStream::connect(&plain).unwrap();
    plain_conn
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut tls_conn = tls_client::connect(&ssl, config.clone());
    let find = FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g"));
    for _ in 0..2 {
        let m: MetadataResponse = tls_client::call(
            &mut plain_conn,
            ApiKey::Metadata,
            9,
            &MetadataRequest::default(),
        )
        .unwrap();
        assert_eq!(m.brokers.len(), 1);
        assert_eq!(m.brokers[0].port, port(&plain));
        let m: MetadataResponse = tls_client::call(
            &mut tls_conn,
            ApiKey::Metadata,
            9,
            &MetadataRequest::default(),
        )
        .unwrap();
        assert_eq!(m.brokers[0].port, port(&ssl));
        let f: FindCoordinatorResponse =
            tls_client::call(&mut plain_conn, ApiKey::FindCoordinator, 3, &find).unwrap();
        assert_eq!(f.port, port(&plain));
        let f: FindCoordinatorResponse =
            tls_client::call(&mut tls_conn, ApiKey::FindCoordinator, 3, &find).unwrap();
        assert_eq!(f.port, port(&ssl));
        let d: DescribeClusterResponse = tls_client::call(
            &mut tls_conn,
            ApiKey::DescribeCluster,
            0,
            &DescribeClusterRequest::default(),
        )
        .unwrap();
        assert_eq!(d.brokers[0].port, port(&ssl));
    }

    // Real clients on both at once: produce on PLAINTEXT, consume on SSL, and back.
    let input: String = (0..50).map(|i| format!("k{i}\tv{i}\n")).collect();
    common::kcat_produce(&plain, "both", &input);
    let out = kcat_ssl_ok(
        &ssl,
        &pki.ca.cert,
        None,
        &["-t", "both", "-C", "-e", "-q", "-f", "%k\t%s\n"],
        "",
    );
    assert_eq!(common::sorted_lines(&out), common::sorted_lines(&input));
    kcat_ssl_ok(
        &ssl,
        &pki.ca.cert,
        None,
        &["-t", "back", "-P", "-K", "\t"],
        &input,
    );
    let got: Vec<String> = common::kcat_consume_all(&plain, "back")
        .iter()
        .map(|l| l.splitn(3, '\t').nth(2).unwrap().to_string())
        .collect();
    assert_eq!(
        common::sorted_lines(&got.join("\n")),
        common::sorted_lines(&input)
    );
}

#[test]
fn a_fetch_of_several_mib_over_tls_is_byte_identical() {
    let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = TestPki::new(dir.path());
    let broker = start_ssl(data.path(), &pki, "SSL://127.0.0.1:0", &[]);
    let ssl = broker.addr.clone();
    // 48 records of 128 KiB (6 MiB), distinct pseudo-random bytes (hex) in each.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let input: String = (0..48)
        .map(|i| {
            let mut v = format!("{i:04}-");
            while v.len() < 128 * 1024 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push_str(&format!("{x:016x}"));
            }
            v + "\n"
        })
        .collect();
    // Produced over TLS too (requests larger than the connection's 64 KiB receive buffer).
    kcat_ssl_ok(
        &ssl,
        &pki.ca.cert,
        None,
        &["-t", "big", "-P", "-X", "message.max.bytes=1000000"],
        &input,
    );
    let out = kcat_ssl_ok(
        &ssl,
        &pki.ca.cert,
        None,
        &[
            "-t",
            "big",
            "-C",
            "-e",
            "-q",
            "-f",
            "%s\n",
            "-X",
            "fetch.message.max.bytes=8388608",
        ],
        "",
    );
    assert_eq!(out.len(), input.len(), "consumed bytes differ in length");
    assert!(out == input, "consumed bytes differ from the produced ones");
}

#[test]
fn mtls_refuses_clients_without_a_trusted_certificate_and_keeps_serving_others() {
    let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = TestPki::new(dir.path());
    let alice = certs::make_client(dir.path(), &pki.ca, "alice", "/O=acme/OU=eng/CN=alice");
    let other_ca = certs::make_ca(dir.path(), "other-ca");
    let mallory = certs::make_client(dir.path(), &other_ca, "mallory", "/CN=mallory");
    let ca = pki.ca.cert.display().to_string();
    let broker = start_ssl(
        data.path(),
        &pki,
        "SSL://127.0.0.1:0",
        &["--tls-client-ca-file", &ca],
    );
    let produce = |client: Option<&certs::CertKey>, topic: &str| {
        kcat_ssl(
            &broker.addr,
            &pki.ca.cert,
            client,
            &["-t", topic, "-P", "-X", "message.timeout.ms=5000"],
            "hello\n",
        )
    };
    let (ok, _, err) = produce(Some(&alice), "m");
    assert!(ok, "alice (a certificate of the CA) is served: {err}");
    let (ok, _, _) = produce(None, "m");
    assert!(!ok, "a client without a certificate is refused");
    let (ok, _, _) = produce(Some(&mallory), "m");
    assert!(!ok, "a certificate of another CA is refused");
    // A rustls client without a certificate: the handshake fails, no Kafka answer.
    let mut anon = tls_client::connect(&broker.addr, tls_client::client_config(&pki.ca.cert, None));
    let refused: std::io::Result<MetadataResponse> =
        tls_client::call(&mut anon, ApiKey::Metadata, 9, &MetadataRequest::default());
    assert!(refused.is_err(), "no answer without a client certificate");
    // The broker keeps serving alice.
    let (ok, _, err) = produce(Some(&alice), "m");
    assert!(ok, "alice is still served: {err}");
    let out = kcat_ssl_ok(
        &broker.addr,
        &pki.ca.cert,
        Some(&alice),
        &["-t", "m", "-C", "-e", "-q"],
        "",
    );
    assert_eq!(out.lines().filter(|l| *l == "hello").count(), 2);
    let (_, metrics) = broker.http_get("/metrics");
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ringbroker_tls_handshake_failures_total "))
        .unwrap_or_else(|| panic!("no handshake failure counter:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(failures >= 3.0, "handshake failures counted: {failures}");
}

#[test]
fn plaintext_kafka_bytes_on_the_tls_port_close_that_connection_only() {
    let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = TestPki::new(dir.path());
    let broker = start_ssl(data.path(), &pki, "SSL://127.0.0.1:0", &[]);
    let config = tls_client::client_config(&pki.ca.cert, None);
    let mut good = tls_client::connect(&broker.addr, config.clone());
    let _: MetadataResponse =
        tls_client::call(&mut good, ApiKey::Metadata, 9, &MetadataRequest::default()).unwrap();
    for garbage in [
        tls_client::frame(ApiKey::Metadata, 9, 1, &MetadataRequest::default()),
        vec![0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8],
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
    ] {
        let mut raw = std::net::TcpStream::connect(&broker.addr).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        raw.write_all(&garbage).unwrap();
        let mut answer = Vec::new();
        // Closed by the broker at once (an alert at most, then EOF), not by the handshake timeout.
        let started = std::time::Instant::now();
        let _ = raw.read_to_end(&mut answer);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the connection was not closed"
        );
        assert!(answer.len() < 64, "no Kafka answer on garbage: {answer:?}");
        if !answer.is_empty() {
            assert_eq!(answer[0], 0x15, "only a TLS alert: {answer:?}");
        }
    }
    // The other connection is unharmed, and new ones are served.
    let _: MetadataResponse =
        tls_client::call(&mut good, ApiKey::Metadata, 9, &MetadataRequest::default()).unwrap();
    let mut again = tls_client::connect(&broker.addr, config);
    let _: MetadataResponse =
        tls_client::call(&mut again, ApiKey::Metadata, 9, &MetadataRequest::default()).unwrap();
    assert!(broker.log().contains("TLS handshake failed"));
}

#[test]
fn a_peer_that_stalls_the_handshake_is_closed_after_the_timeout() {
    let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = TestPki::new(dir.path());
    let broker = start_ssl(data.path(), &pki, "SSL://127.0.0.1:0", &[]);
    let mut raw = std::net::TcpStream::connect(&broker.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // Half a ClientHello record, then nothing.
    raw.write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01])
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(8) && waited < Duration::from_secs(20),
        "closed after {waited:?} (TLS_HANDSHAKE_TIMEOUT is 10 s)"
    );
    assert!(broker.log().contains("no TLS handshake within"));
}

fn start_status(data: &Path, args: &[&str]) -> (bool, String) {
    let mut full = vec![
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--cores",
        "0",
    ];
    full.extend_from_slice(args);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringbroker"))
        .args(&full)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn start_up_refuses_a_missing_or_bad_tls_file_naming_the_flag_and_file() {
    let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = TestPki::new(dir.path());
    let cert = pki.server.cert.display().to_string();
    let missing = dir.path().join("no-such.key").display().to_string();
    let (ok, err) = start_status(
        data.path(),
        &[
            "--listeners",
            "SSL://127.0.0.1:0",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &missing,
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("--tls-key-file") && err.contains(&missing),
        "stderr: {err}"
    );
    // A key file without a key (the certificate given twice).
    let (ok, err) = start_status(
        data.path(),
        &[
            "--listeners",
            "SSL://127.0.0.1:0",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &cert,
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("--tls-key-file") && err.contains("private key"),
        "stderr: {err}"
    );
    // A TLS listener without TLS files.
    let (ok, err) = start_status(data.path(), &["--listeners", "SSL://127.0.0.1:0"]);
    assert!(!ok);
    assert!(err.contains("--tls-cert-file"), "stderr: {err}");
    // A client CA file that does not exist.
    let key = pki.server.key.display().to_string();
    let (ok, err) = start_status(
        data.path(),
        &[
            "--listeners",
            "SSL://127.0.0.1:0",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-client-ca-file",
            &missing,
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("--tls-client-ca-file") && err.contains(&missing),
        "stderr: {err}"
    );
}

/// Whether this kernel accepts the `tls` ULP (what the broker probes).
fn kernel_has_ktls() -> bool {
    ringbroker_broker::security::tls::ktls_probe().is_ok()
}

#[test]
fn ktls_probe_decides_the_path_and_the_metric_and_start_up_line_say_which() {
    let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = TestPki::new(dir.path());
    let want = if kernel_has_ktls() {
        "ktls"
    } else {
        "userspace"
    };
    let broker = start_ssl(
        data.path(),
        &pki,
        "PLAINTEXT://127.0.0.1:0,SSL://127.0.0.1:0",
        &[],
    );
    let log = broker.log();
    assert!(
        log.contains(&format!("TLS: {want}")),
        "start-up line:\n{log}"
    );
    let (_, metrics) = broker.http_get("/metrics");
    assert!(
        metrics.contains(&format!(
            "ringbroker_tls_path{{listener=\"SSL\",path=\"{want}\"}} 1"
        )),
        "metrics:\n{metrics}"
    );
    assert!(
        !metrics.contains("listener=\"PLAINTEXT\",path="),
        "no path for a plaintext listener"
    );
    drop(broker);
    // RINGBROKER_KTLS=off forces the userspace path.
    let data2 = tempfile::tempdir().unwrap();
    let flags = pki.broker_flags();
    let mut args = vec!["--listeners", "SSL://127.0.0.1:0"];
    args.extend(flags.iter().map(String::as_str));
    let broker = Broker::start_with_env(data2.path(), &args, &[("RINGBROKER_KTLS", "off")]);
    assert!(broker.log().contains("TLS: userspace"));
    assert!(broker.log().contains("RINGBROKER_KTLS=off"));
    // Served on that path.
    let out = kcat_ssl_ok(&broker.addr, &pki.ca.cert, None, &["-L"], "");
    assert!(out.contains("1 brokers"), "{out}");
}

/// A port free right now on 127.0.0.1 (released before use).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn in_a_cluster_metadata_answers_with_each_brokers_endpoint_of_the_clients_listener() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let internal = [free_port(), free_port()];
    let voters = format!("1@127.0.0.1:{},2@127.0.0.1:{}", internal[0], internal[1]);
    // A secured client listener in a cluster needs the inter-broker password (it
    // authenticates the metadata quorum's members).
    let password = dir.path().join("inter-broker-password");
    std::fs::write(&password, "inter-broker-secret\n").unwrap();
    let mut flags = pki.broker_flags();
    flags.extend([
        "--inter-broker-user".to_string(),
        "admin".to_string(),
        "--inter-broker-password-file".to_string(),
        password.display().to_string(),
    ]);
    let started: Vec<_> = (1..=2)
        .map(|id| {
            let data = dir.path().join(format!("node-{id}"));
            let (voters, flags) = (voters.clone(), flags.clone());
            std::thread::spawn(move || {
                let id = id.to_string();
                let mut args: Vec<&str> = vec![
                    "--listeners",
                    "PLAINTEXT://127.0.0.1:0,SSL://127.0.0.1:0",
                    "--node-id",
                    &id,
                    "--cluster",
                    &voters,
                ];
                args.extend(flags.iter().map(String::as_str));
                Broker::start(&data, &args)
            })
        })
        .collect();
    let brokers: Vec<Broker> = started.into_iter().map(|t| t.join().unwrap()).collect();
    let port = |a: &str| a.rsplit(':').next().unwrap().parse::<i32>().unwrap();
    let addrs: Vec<(String, String)> = brokers
        .iter()
        .map(|b| {
            let log = b.log();
            (
                certs::listener_addr(&log, "PLAINTEXT"),
                certs::listener_addr(&log, "SSL"),
            )
        })
        .collect();
    let mut want_plain: Vec<i32> = addrs.iter().map(|(p, _)| port(p)).collect();
    let mut want_ssl: Vec<i32> = addrs.iter().map(|(_, s)| port(s)).collect();
    want_plain.sort();
    want_ssl.sort();
    let config = tls_client::client_config(&pki.ca.cert, None);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut plain = std::net::TcpStream::connect(&addrs[0].0).unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let m: MetadataResponse =
            tls_client::call(&mut plain, ApiKey::Metadata, 9, &MetadataRequest::default()).unwrap();
        let mut got_plain: Vec<i32> = m.brokers.iter().map(|b| b.port).collect();
        got_plain.sort();
        let mut tls = tls_client::connect(&addrs[1].1, config.clone());
        let m: MetadataResponse =
            tls_client::call(&mut tls, ApiKey::Metadata, 9, &MetadataRequest::default()).unwrap();
        let mut got_ssl: Vec<i32> = m.brokers.iter().map(|b| b.port).collect();
        got_ssl.sort();
        if got_plain == want_plain && got_ssl == want_ssl {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "PLAINTEXT answered {got_plain:?} (want {want_plain:?}), SSL {got_ssl:?} (want {want_ssl:?})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The mTLS principal reaches the authorizer: `--super-users` names the admin certificate's
/// subject (commas and all); another certificate of the same CA gets
/// TOPIC_AUTHORIZATION_FAILED.
#[test]
fn a_client_certificates_subject_is_the_principal_acls_see() {
    let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = TestPki::new(dir.path());
    let admin = certs::make_client(dir.path(), &pki.ca, "admin", "/O=acme/OU=ops/CN=admin");
    let alice = certs::make_client(dir.path(), &pki.ca, "alice", "/O=acme/OU=eng/CN=alice");
    let ca = pki.ca.cert.display().to_string();
    let broker = start_ssl(
        data.path(),
        &pki,
        "SSL://127.0.0.1:0",
        &[
            "--tls-client-ca-file",
            &ca,
            "--authorizer",
            "acl",
            "--super-users",
            "User:CN=admin,OU=ops,O=acme",
        ],
    );
    let (ok, _, err) = kcat_ssl(
        &broker.addr,
        &pki.ca.cert,
        Some(&admin),
        &["-t", "secret", "-P", "-X", "message.timeout.ms=10000"],
        "for admins\n",
    );
    assert!(ok, "the super user produces: {err}");
    let topic_error = |who: &certs::CertKey| {
        let config = tls_client::client_config(&pki.ca.cert, Some((&who.cert, &who.key)));
        let mut conn = tls_client::connect(&broker.addr, config);
        let request = MetadataRequest::default()
            .with_topics(Some(vec![
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(kafka_protocol::messages::TopicName(
                        StrBytes::from_static_str("secret"),
                    ))),
            ]))
            .with_allow_auto_topic_creation(false);
        let m: MetadataResponse =
            tls_client::call(&mut conn, ApiKey::Metadata, 9, &request).unwrap();
        m.topics[0].error_code
    };
    assert_eq!(topic_error(&admin), 0, "the super user sees the topic");
    assert_eq!(
        topic_error(&alice),
        29,
        "TOPIC_AUTHORIZATION_FAILED for another subject"
    );
    let (ok, _, _) = kcat_ssl(
        &broker.addr,
        &pki.ca.cert,
        Some(&alice),
        &["-t", "secret", "-P", "-X", "message.timeout.ms=5000"],
        "not allowed\n",
    );
    assert!(!ok, "alice may not produce");
}

/// SASL over TLS: a SASL_SSL listener authenticates PLAIN users over the
/// encrypted connection, and the SASL identity (not ANONYMOUS) is what the authorizer sees.
#[test]
fn sasl_ssl_authenticates_over_tls_and_the_sasl_identity_is_the_principal() {
    let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = TestPki::new(dir.path());
    for (user, password) in [("admin", "admin-secret"), ("bob", "bob-secret")] {
        for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
            let (ok, out) = common::sasl::user_create(data.path(), user, mechanism, password);
            assert!(ok, "user create {user}: {out}");
        }
    }
    let broker = start_ssl(
        data.path(),
        &pki,
        "SASL_SSL://127.0.0.1:0",
        &[
            "--sasl-mechanisms",
            "PLAIN,SCRAM-SHA-256",
            "--authorizer",
            "acl",
            "--super-users",
            "User:admin",
        ],
    );
    let sasl = |mechanism: &str, user: &str, password: &str, args: &[&str], input: &str| {
        let mut full = vec![
            "-X".to_string(),
            "security.protocol=SASL_SSL".to_string(),
            "-X".to_string(),
            format!("sasl.mechanism={mechanism}"),
            "-X".to_string(),
            format!("sasl.username={user}"),
            "-X".to_string(),
            format!("sasl.password={password}"),
            "-X".to_string(),
            "message.timeout.ms=10000".to_string(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        // kcat_ssl sets security.protocol=ssl first; the later SASL_SSL wins.
        kcat_ssl(&broker.addr, &pki.ca.cert, None, &refs, input)
    };
    let (ok, _, err) = sasl(
        "PLAIN",
        "admin",
        "admin-secret",
        &["-t", "s", "-P"],
        "one\n",
    );
    assert!(ok, "admin over SASL_SSL (PLAIN): {err}");
    let (ok, _, err) = sasl(
        "SCRAM-SHA-256",
        "admin",
        "admin-secret",
        &["-t", "s", "-P"],
        "two\n",
    );
    assert!(ok, "admin over SASL_SSL (SCRAM-SHA-256): {err}");
    let (ok, out, err) = sasl(
        "PLAIN",
        "admin",
        "admin-secret",
        &["-t", "s", "-C", "-e", "-q"],
        "",
    );
    assert!(ok, "{err}");
    assert_eq!(common::sorted_lines(&out), vec!["one", "two"]);
    // bob authenticates but is no super user and has no ACL.
    let (ok, _, _) = sasl("PLAIN", "bob", "bob-secret", &["-t", "s", "-P"], "bob\n");
    assert!(!ok, "bob may not produce");
    // A wrong password fails authentication.
    let (ok, _, _) = sasl("PLAIN", "admin", "wrong", &["-t", "s", "-P"], "x\n");
    assert!(!ok, "a wrong password is refused");
}

#[test]
fn requested_client_auth_serves_clients_without_a_certificate_and_checks_the_ones_shown() {
    let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = TestPki::new(dir.path());
    let alice = certs::make_client(dir.path(), &pki.ca, "alice", "/O=acme/OU=eng/CN=alice");
    let other_ca = certs::make_ca(dir.path(), "other-ca");
    let mallory = certs::make_client(dir.path(), &other_ca, "mallory", "/CN=mallory");
    let ca = pki.ca.cert.display().to_string();
    let broker = start_ssl(
        data.path(),
        &pki,
        "SSL://127.0.0.1:0",
        &[
            "--tls-client-ca-file",
            &ca,
            "--tls-client-auth",
            "requested",
        ],
    );
    let produce = |client: Option<&certs::CertKey>| {
        kcat_ssl(
            &broker.addr,
            &pki.ca.cert,
            client,
            &["-t", "r", "-P", "-X", "message.timeout.ms=5000"],
            "hello\n",
        )
    };
    let (ok, _, err) = produce(None);
    assert!(ok, "a client without a certificate is served: {err}");
    let (ok, _, err) = produce(Some(&alice));
    assert!(ok, "a certificate of the CA is served: {err}");
    let (ok, _, _) = produce(Some(&mallory));
    assert!(!ok, "a certificate of another CA is still refused");
    let out = kcat_ssl_ok(
        &broker.addr,
        &pki.ca.cert,
        None,
        &["-t", "r", "-C", "-e", "-q"],
        "",
    );
    assert_eq!(out.lines().filter(|l| *l == "hello").count(), 2);
}
