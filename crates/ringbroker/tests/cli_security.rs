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

/// PEM files made by `openssl` for one test: a CA, the broker's certificate for 127.0.0.1
/// signed by it, and a client certificate (CN=bench-client) signed by it.
struct Certs {
    ca: PathBuf,
    broker_cert: PathBuf,
    broker_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs(dir: &Path) -> Certs {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend_from_slice(&ec);
    ca.extend_from_slice(&[
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(dir, &ca);
    std::fs::write(
        dir.join("broker.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("broker", "/CN=127.0.0.1"), ("client", "/CN=bench-client")] {
        let mut req = vec!["req"];
        req.extend_from_slice(&ec);
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        let ext = format!("{name}.ext");
        req.extend_from_slice(&["-subj", cn, "-keyout", &key, "-out", &csr]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
        );
    }
    Certs {
        ca: dir.join("ca.crt"),
        broker_cert: dir.join("broker.crt"),
        broker_key: dir.join("broker.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}

/// Listener name → host:port, from the broker's start-up line
/// (`listeners=PLAINTEXT://127.0.0.1:P (advertised ...), SSL://...`).
fn listener_addrs(broker: &Broker) -> BTreeMap<String, String> {
    let log = broker.log();
    let line = log
        .lines()
        .find(|l| l.contains("listening on"))
        .unwrap_or_else(|| panic!("no start-up line:\n{log}"));
    let mut out = BTreeMap::new();
    for part in line.split("://").collect::<Vec<_>>().windows(2) {
        let name = part[0]
            .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("");
        let addr = part[1]
            .split(|c: char| c.is_whitespace() || c == ',')
            .next()
            .unwrap_or("");
        if !name.is_empty() && addr.contains(':') && !out.contains_key(name) {
            out.insert(name.to_string(), addr.to_string());
        }
    }
    out
}

/// `ringbroker user create alice --mechanism SCRAM-SHA-512` into `data` (before the broker
/// starts there).
fn create_user(data: &Path, password_file: &Path) {
    run(
        CLI,
        &[
            "user",
            "create",
            "alice",
            "--mechanism",
            "SCRAM-SHA-512",
            "--password-file",
            password_file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        "",
    );
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
        create_user(&data, &password_file);
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
    let listeners = listener_addrs(&broker);
    for name in ["PLAINTEXT", "SSL", "SASL_SSL"] {
        assert!(
            listeners.contains_key(name),
            "{name} missing in {listeners:?}:\n{}",
            broker.log()
        );
    }
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

#[test]
fn bench_produce_over_tls_counts_records() {
    let s = start_secured(false, false);
    let json = s.dir.path().join("bench.json");
    let out = run(
        "timeout",
        &[
            "120",
            CLI,
            "bench",
            "produce",
            "--bootstrap",
            &s.addr("SSL"),
            "--security-protocol",
            "SSL",
            "--tls-ca-file",
            s.certs.ca.to_str().unwrap(),
            "--topic",
            "bench-tls",
            "--partitions",
            "2",
            "--producers",
            "2",
            "--batch-bytes",
            "16KiB",
            "--duration",
            "2",
            "--json",
            json.to_str().unwrap(),
        ],
        "",
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let records = r["records"].as_u64().unwrap();
    assert!(records > 0, "{out}\n{r}");
    // The broker holds them: the end offsets over plaintext add up to at least that many
    // (acknowledged records; a few more may have been in flight when the run ended).
    let offsets = cli(
        &["topic", "describe", "bench-tls", "--format", "json"],
        &s.client_flags("PLAINTEXT"),
        "",
    );
    let v: Value = serde_json::from_str(&offsets).unwrap();
    let stored: i64 = v["partitions"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["high_watermark"].as_i64()).sum())
        .unwrap_or(0);
    assert!(stored as u64 >= records, "stored {stored} < {records}: {v}");
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
