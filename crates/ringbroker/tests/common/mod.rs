//! Shared helpers for end-to-end tests: start the real `ringbroker` binary on an ephemeral
//! port with a temporary data dir, run real Kafka clients (kcat, kafka-python) against it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringbroker"));
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir);
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

/// Runs a client command with `input` on stdin; panics with its output unless it succeeds.
pub fn run(program: &str, args: &[&str], input: &str) -> String {
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
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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
