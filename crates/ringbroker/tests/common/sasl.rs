//! Helpers for SASL end-to-end tests: a broker with several listeners (`--listeners`), the
//! address of one listener from its start-up line, SCRAM users made with `ringbroker user`.

use super::Broker;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

impl Broker {
    /// Starts the broker with `--listeners LISTENERS` (instead of `--listen`) and `extra`.
    pub fn start_listeners(data_dir: &Path, listeners: &str, extra: &[&str]) -> Broker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringbroker"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listeners", listeners])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(["--cores", &super::two_cores()])
            .args(extra)
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

    /// host:port listener `name` is bound to, from the start-up line.
    pub fn listener_addr(&self, name: &str) -> String {
        let log = self.log();
        let marker = format!("{name}://");
        // The name must not be the tail of another (PLAINTEXT in SASL_PLAINTEXT).
        let at = log
            .match_indices(&marker)
            .map(|(i, _)| i)
            .find(|&i| {
                i == 0
                    || !log.as_bytes()[i - 1].is_ascii_alphanumeric()
                        && log.as_bytes()[i - 1] != b'_'
            })
            .unwrap_or_else(|| panic!("no {name} listener in the start-up line:\n{log}"));
        let rest = &log[at + marker.len()..];
        rest.split_whitespace().next().unwrap().to_string()
    }

    /// The value of `ringbroker_sasl_authentications_total{mechanism, result}` (0 when absent).
    pub fn sasl_count(&self, mechanism: &str, result: &str) -> u64 {
        let (_, body) = self.http_get("/metrics");
        let labels = [
            format!("mechanism=\"{mechanism}\""),
            format!("result=\"{result}\""),
        ];
        body.lines()
            .filter(|l| l.starts_with("ringbroker_sasl_authentications_total{"))
            .filter(|l| labels.iter().all(|x| l.contains(x.as_str())))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }
}

/// `ringbroker user create NAME --mechanism MECHANISM --password-file F --data-dir DIR`;
/// (success, stdout + stderr).
pub fn user_create(data_dir: &Path, name: &str, mechanism: &str, password: &str) -> (bool, String) {
    let file = data_dir.with_extension(format!("{name}-{mechanism}.password"));
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringbroker"))
        .args([
            "user",
            "create",
            name,
            "--mechanism",
            mechanism,
            "--password-file",
        ])
        .arg(&file)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs `tests/clients/sasl_clients.py` with `args`: (success, stdout, stderr).
pub fn sasl_script(args: &[&str]) -> (bool, String, String) {
    let path = format!(
        "{}/../../tests/clients/sasl_clients.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut full = vec!["120", "python3", path.as_str()];
    full.extend_from_slice(args);
    super::run_status("timeout", &full, "")
}

impl super::Client {
    /// Sends `frame` and reports whether the broker closed the connection instead of
    /// answering (EOF or reset within 10 s).
    pub fn closed_after(&mut self, frame: &[u8]) -> bool {
        use std::io::{Read, Write};
        if self.stream.write_all(frame).is_err() {
            return true;
        }
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 4];
        match self.stream.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
        }
    }

    /// Writes raw bytes and reads one size-prefixed raw frame back (SASL v0 tokens).
    pub fn raw_exchange(&mut self, token: &[u8]) -> Option<Vec<u8>> {
        use std::io::{Read, Write};
        let mut frame = (token.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(token);
        self.stream.write_all(&frame).ok()?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).ok()?;
        let mut buf = vec![0u8; u32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut buf).ok()?;
        Some(buf)
    }
}
