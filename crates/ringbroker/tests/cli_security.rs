//! The admin CLI and the load generator against a secured broker (issue #16): the same
//! commands as over plaintext, over SSL (server-authenticated TLS and mTLS) and over SASL_SSL
//! with SCRAM-SHA-512; a wrong password is a clear error. Certificates are made at test time
//! with the `openssl` CLI in the test's temporary directory; SCRAM users with
//! `ringbroker user create` before the broker starts.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const CLI: &str = env!("CARGO_BIN_EXE_ringbroker");

/// PEM files made by `openssl` for one test (the shared helpers of `common::certs`): a CA,
/// the broker's certificate for 127.0.0.1 signed by it, and a client certificate
/// (CN=bench-client) signed by it.
struct Certs {
    ca: PathBuf,
    broker_cert: PathBuf,
    broker_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn make_certs(dir: &Path) -> Certs {
    let ca = certs::make_ca(dir, "ca");
    let server = certs::make_server(dir, &ca);
    let client = certs::make_client(dir, &ca, "client", "/CN=bench-client");
    Certs {
        ca: ca.cert,
        broker_cert: server.cert,
        broker_key: server.key,
        client_cert: client.cert,
        client_key: client.key,
    }
}

/// A broker with PLAINTEXT, SSL and SASL_SSL listeners (port 0 each) and a SCRAM user
/// `alice` (password `alice-secret`) created before it starts when `with_user`. `mtls`: TLS clients must
/// present a certificate signed by the test CA (`--tls-client-ca-file`).
struct Secured {
    dir: tempfile::TempDir,
    _broker: Broker,
    certs: Certs,
    listeners: BTreeMap<String, String>,
    password_file: PathBuf,
    wrong_password_file: PathBuf,
}

fn start_secured(mtls: bool, with_user: bool) -> Secured {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let data = dir.path().join("data");
    let password_file = dir.path().join("alice.password");
    std::fs::write(&password_file, "alice-secret\n").unwrap();
    let wrong_password_file = dir.path().join("wrong.password");
    std::fs::write(&wrong_password_file, "not-alices-password\n").unwrap();
    if with_user {
        let (ok, out) = sasl::user_create(&data, "alice", "SCRAM-SHA-512", "alice-secret");
        assert!(ok, "user create: {out}");
    }
    let mut args = vec![
        "--listeners",
        "PLAINTEXT://127.0.0.1:0,SSL://127.0.0.1:0,SASL_SSL://127.0.0.1:0",
        "--tls-cert-file",
        certs.broker_cert.to_str().unwrap(),
        "--tls-key-file",
        certs.broker_key.to_str().unwrap(),
    ];
    if mtls {
        args.extend_from_slice(&["--tls-client-ca-file", certs.ca.to_str().unwrap()]);
    }
    let broker = Broker::start(&data, &args);
    let log = broker.log();
    let listeners = ["PLAINTEXT", "SSL", "SASL_SSL"]
        .into_iter()
        .map(|name| (name.to_string(), certs::listener_addr(&log, name)))
        .collect();
    Secured {
        dir,
        _broker: broker,
        certs,
        listeners,
        password_file,
        wrong_password_file,
    }
}

impl Secured {
    fn addr(&self, listener: &str) -> String {
        self.listeners[listener].clone()
    }

    /// The client flags for `listener` (SSL: server-authenticated TLS; SASL_SSL: alice with
    /// SCRAM-SHA-512).
    fn client_flags(&self, listener: &str) -> Vec<String> {
        let mut f: Vec<String> = vec!["-b".into(), self.addr(listener)];
        match listener {
            "SSL" => f.extend([
                "--security-protocol".into(),
                "SSL".into(),
                "--tls-ca-file".into(),
                self.certs.ca.display().to_string(),
            ]),
            "SASL_SSL" => f.extend([
                "--security-protocol".into(),
                "SASL_SSL".into(),
                "--tls-ca-file".into(),
                self.certs.ca.display().to_string(),
                "--sasl-mechanism".into(),
                "SCRAM-SHA-512".into(),
                "--sasl-user".into(),
                "alice".into(),
                "--sasl-password-file".into(),
                self.password_file.display().to_string(),
            ]),
            _ => {}
        }
        f
    }
}

/// Runs the CLI with `args` then `flags`; (success, stdout, stderr).
fn cli_status(args: &[&str], flags: &[String], input: &str) -> (bool, String, String) {
    let mut full: Vec<&str> = vec!["60", CLI];
    full.extend_from_slice(args);
    full.extend(flags.iter().map(String::as_str));
    run_status("timeout", &full, input)
}

fn cli(args: &[&str], flags: &[String], input: &str) -> String {
    let (ok, out, err) = cli_status(args, flags, input);
    assert!(
        ok,
        "ringbroker {args:?} {flags:?} failed:\nstdout: {out}\nstderr: {err}"
    );
    out
}

/// topic create, produce, consume (and topic list) over `listener`; the records are then read
/// back over plaintext too, so they really went through the broker.
fn round_trip(s: &Secured, listener: &str, topic: &str) {
    let flags = s.client_flags(listener);
    let created = cli(
        &["topic", "create", topic, "-p", "2", "--format", "json"],
        &flags,
        "",
    );
    let v: Value = serde_json::from_str(&created).unwrap();
    assert_eq!(v["topics"][0]["error"], Value::Null, "{created}");
    let listed = cli(&["topic", "list"], &flags, "");
    assert!(listed.contains(topic), "{listed}");
    let input: String = (0..20)
        .map(|i| format!("{listener}-record-{i}\n"))
        .collect();
    cli(&["produce", topic, "--acks", "-1"], &flags, &input);
    let read = cli(&["consume", topic], &flags, "");
    let mut got: Vec<&str> = read.lines().collect();
    got.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("{listener}-record-{i}")).collect();
    want.sort();
    assert_eq!(got, want, "consumed over {listener}");
    let plain = cli(&["consume", topic], &s.client_flags("PLAINTEXT"), "");
    assert_eq!(plain.lines().count(), 20, "{plain}");
}

#[test]
fn cli_creates_produces_and_consumes_over_ssl() {
    let s = start_secured(false, false);
    round_trip(&s, "SSL", "over-ssl");
    // A plaintext client on the TLS port does not get an answer it takes for Kafka's.
    let (ok, _, err) = cli_status(&["topic", "list"], &["-b".into(), s.addr("SSL")], "");
    assert!(!ok, "a plaintext client on the SSL listener succeeded");
    assert!(!err.is_empty());
    // A CA that did not sign the broker's certificate: the handshake fails, naming TLS.
    let other = tempfile::tempdir().unwrap();
    let other_certs = make_certs(other.path());
    let (ok, _, err) = cli_status(
        &["topic", "list"],
        &[
            "-b".into(),
            s.addr("SSL"),
            "--security-protocol".into(),
            "SSL".into(),
            "--tls-ca-file".into(),
            other_certs.ca.display().to_string(),
        ],
        "",
    );
    assert!(!ok, "a certificate from an unknown CA was accepted");
    assert!(err.to_lowercase().contains("tls"), "{err}");
}

#[test]
fn cli_creates_produces_and_consumes_over_sasl_ssl_with_scram_sha_512() {
    let s = start_secured(false, true);
    round_trip(&s, "SASL_SSL", "over-sasl-ssl");
    // Group commands go through the same authenticated connections (FindCoordinator then
    // the coordinator's address, opened with the same credentials).
    let groups = cli(&["group", "list"], &s.client_flags("SASL_SSL"), "");
    assert!(!groups.contains("error"), "{groups}");
}

#[test]
fn a_wrong_password_is_a_clear_cli_error() {
    let s = start_secured(false, true);
    let mut flags = s.client_flags("SASL_SSL");
    let at = flags
        .iter()
        .position(|f| f == "--sasl-password-file")
        .unwrap();
    flags[at + 1] = s.wrong_password_file.display().to_string();
    let (ok, out, err) = cli_status(&["topic", "create", "nope"], &flags, "");
    assert!(!ok, "a wrong password was accepted:\n{out}");
    assert!(
        err.contains("authentication failed") && err.contains("SASL_AUTHENTICATION_FAILED"),
        "{err}"
    );
    assert!(err.contains("alice"), "{err}");
    assert!(
        !err.contains("not-alices-password"),
        "the password is printed: {err}"
    );
    // Nothing was created.
    let listed = cli(&["topic", "list"], &s.client_flags("PLAINTEXT"), "");
    assert!(!listed.contains("nope"), "{listed}");
}

/// `ringbroker bench MODE` over `listener` with `args`; the run's JSON result.
fn bench(s: &Secured, listener: &str, mode: &str, args: &[&str]) -> Value {
    let json = s.dir.path().join(format!("bench-{listener}-{mode}.json"));
    let mut full: Vec<String> = vec!["120".into(), CLI.into(), "bench".into(), mode.into()];
    for f in s.client_flags(listener) {
        full.push(if f == "-b" { "--bootstrap".into() } else { f });
    }
    full.extend(args.iter().map(|a| a.to_string()));
    full.extend(["--json".into(), json.display().to_string()]);
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    let out = run("timeout", &full, "");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("{e}: {out}"));
    serde_json::from_str(&text).unwrap()
}

/// Sum of the high watermarks of `topic`, read over plaintext.
fn stored_records(s: &Secured, topic: &str) -> u64 {
    let out = cli(
        &["topic", "describe", topic, "--format", "json"],
        &s.client_flags("PLAINTEXT"),
        "",
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    v["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["high_watermark"].as_i64())
                .sum::<i64>()
        })
        .unwrap_or(0) as u64
}

#[test]
fn bench_produce_over_tls_counts_records() {
    let s = start_secured(false, true);
    for listener in ["SSL", "SASL_SSL"] {
        let topic = format!("bench-{}", listener.to_lowercase());
        let produced = bench(
            &s,
            listener,
            "produce",
            &[
                "--topic",
                &topic,
                "--partitions",
                "2",
                "--producers",
                "2",
                "--batch-bytes",
                "16KiB",
                "--duration",
                "2",
            ],
        );
        let records = produced["records"].as_u64().unwrap();
        assert!(records > 0, "{listener}: {produced}");
        // The broker holds them (acknowledged records; a few more may have been in flight
        // when the run ended).
        let stored = stored_records(&s, &topic);
        assert!(stored >= records, "{listener}: stored {stored} < {records}");
        // And the load generator's consumer reads every one of them back over the listener.
        let consumed = bench(
            &s,
            listener,
            "consume",
            &["--topic", &topic, "--consumers", "2"],
        );
        assert_eq!(
            consumed["records"].as_u64().unwrap(),
            stored,
            "{listener}: {consumed}"
        );
    }
}

#[test]
fn mtls_client_certificate_is_presented_and_required() {
    let s = start_secured(true, false);
    let mut flags = s.client_flags("SSL");
    // Without a client certificate the broker refuses the handshake.
    let (ok, out, err) = cli_status(&["topic", "list"], &flags, "");
    assert!(!ok, "no client certificate, yet:\n{out}");
    assert!(err.contains("TLS") && err.contains("Certificate"), "{err}");
    flags.extend([
        "--tls-cert-file".into(),
        s.certs.client_cert.display().to_string(),
        "--tls-key-file".into(),
        s.certs.client_key.display().to_string(),
    ]);
    let created = cli(&["topic", "create", "mtls-topic"], &flags, "");
    assert!(created.contains("mtls-topic"), "{created}");
    cli(&["produce", "mtls-topic"], &flags, "over mTLS\n");
    let read = cli(&["consume", "mtls-topic"], &flags, "");
    assert_eq!(read.trim(), "over mTLS");
}
