//! Shared helpers for end-to-end tests: start the real `ringbroker` binary on an ephemeral
//! port with a temporary data dir, run real Kafka clients (kcat, kafka-python) against it.
#![allow(dead_code)]

pub mod certs;
pub mod cluster;
pub mod sasl;
pub mod tls_client;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Broker {
    child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub pid: u32,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

/// The first two CPUs this process may use ("0,1" on the 2-core test machine).
pub fn two_cores() -> String {
    let allowed = ringbroker_runtime::affinity::allowed_cpus().unwrap();
    allowed
        .iter()
        .take(2)
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl Broker {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Broker {
        Broker::start_with_env(data_dir, extra, &[])
    }

    /// Like [`Broker::start`], with extra environment variables.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Broker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringbroker"));
        cmd.envs(env.iter().copied());
        cmd.arg("serve").arg("--data-dir").arg(data_dir);
        if !extra.contains(&"--listen") && !extra.contains(&"--listeners") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !extra.contains(&"--metrics-listen") {
            cmd.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        if !extra.contains(&"--cores") {
            cmd.args(["--cores", &two_cores()]);
        }
        cmd.args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start ringbroker");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Record the line before announcing the address, so the log has it.
                {
                    let mut log = log2.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("broker did not start; log:\n{}", log.lock().unwrap());
            }
        };
        let pid = child.id();
        Broker {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            pid,
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// host:port of the metrics endpoint, from the start-up line.
    pub fn metrics_addr(&self) -> String {
        let log = self.log();
        let rest = log
            .split("metrics=http://")
            .nth(1)
            .unwrap_or_else(|| panic!("no metrics address in the start-up line:\n{log}"));
        rest.split('/').next().unwrap().to_string()
    }

    /// GET `path` from the metrics endpoint: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(&self.metrics_addr(), path)
    }

    /// The exit status, once the process has ended by itself within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "broker did not stop within 20 s after SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 GET: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {text:?}"));
    (status, body.to_string())
}

/// Runs a command with `input` on stdin (fed from a thread, so a child that stops reading
/// cannot block us); returns (success, stdout, stderr).
pub fn run_status(program: &str, args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/test installs it): {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a client command with `input` on stdin; panics with its output unless it succeeds.
pub fn run(program: &str, args: &[&str], input: &str) -> String {
    let (ok, stdout, stderr) = run_status(program, args, input);
    assert!(
        ok,
        "{program} {args:?} failed:\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

/// Like `run` but returns (success, stdout + stderr) instead of asserting.
pub fn run_unchecked(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs one of the client scripts in `tests/clients/` with python3.
fn python_client(script: &str, args: &[&str], input: &str) -> String {
    let path = format!(
        "{}/../../tests/clients/{script}",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut full = vec![path.as_str()];
    full.extend_from_slice(args);
    run("python3", &full, input)
}

/// kafka-python, the pure-Python client.
pub fn kafka_python(args: &[&str], input: &str) -> String {
    python_client("kafka_python_client.py", args, input)
}

/// confluent-kafka, the recent librdkafka from PyPI's wheel.
pub fn confluent_kafka(args: &[&str], input: &str) -> String {
    python_client("confluent_kafka_client.py", args, input)
}

/// `partition<TAB>offset<TAB>key<TAB>value` lines of every record, via kcat, sorted.
/// Produces `input` ("key<TAB>value" lines) with kcat; panics unless every line is delivered.
pub fn kcat_produce(addr: &str, topic: &str, input: &str) {
    run(
        "timeout",
        &["60", "kcat", "-b", addr, "-t", topic, "-P", "-K", "\t"],
        input,
    );
}

pub fn kcat_consume_all(addr: &str, topic: &str) -> Vec<String> {
    let out = run(
        "timeout",
        &[
            "60",
            "kcat",
            "-b",
            addr,
            "-t",
            topic,
            "-C",
            "-e",
            "-q",
            "-f",
            "%p\t%o\t%k\t%s\n",
        ],
        "",
    );
    sorted_lines(&out)
}

pub fn kafka_python_consume_all(addr: &str, topic: &str) -> Vec<String> {
    sorted_lines(&kafka_python(&["consume", addr, topic], ""))
}

pub fn sorted_lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// A raw Kafka protocol client: requests encoded and responses decoded with kafka-protocol.
pub struct Client {
    stream: TcpStream,
    correlation_id: i32,
}

impl Client {
    pub fn connect(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(15)))
            .unwrap();
        Client {
            stream,
            correlation_id: 0,
        }
    }

    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: kafka_protocol::messages::ApiKey,
        version: i16,
        request: &Req,
    ) -> Resp {
        let (correlation_id, frame) = self.frame(api, version, request);
        self.stream.write_all(&frame).unwrap();
        self.read(api, version, correlation_id)
    }

    /// Encodes a request with the next correlation id, to send later with [`Client::send`]
    /// (several frames in one write are pipelined).
    pub fn frame<Req: Encodable>(
        &mut self,
        api: kafka_protocol::messages::ApiKey,
        version: i16,
        request: &Req,
    ) -> (i32, Vec<u8>) {
        self.correlation_id += 1;
        let header = kafka_protocol::messages::RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("every-version")));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, api.request_header_version(version))
            .unwrap();
        request
            .encode(&mut body, version)
            .unwrap_or_else(|e| panic!("encode {api:?} v{version}: {e}"));
        let mut frame = BytesMut::new();
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(&body);
        (self.correlation_id, frame.to_vec())
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads the next response, which must answer `correlation_id`.
    pub fn read<Resp: Decodable>(
        &mut self,
        api: kafka_protocol::messages::ApiKey,
        version: i16,
        correlation_id: i32,
    ) -> Resp {
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .unwrap_or_else(|e| panic!("{api:?} v{version}: no response ({e})"));
        let mut buf = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut buf).unwrap();
        let mut buf = Bytes::from(buf);
        let rh = kafka_protocol::messages::ResponseHeader::decode(
            &mut buf,
            api.response_header_version(version),
        )
        .unwrap();
        assert_eq!(rh.correlation_id, correlation_id);
        let resp = Resp::decode(&mut buf, version)
            .unwrap_or_else(|e| panic!("decode {api:?} v{version}: {e}"));
        assert!(
            !buf.has_remaining(),
            "{api:?} v{version}: {} bytes left over",
            buf.remaining()
        );
        resp
    }
}
