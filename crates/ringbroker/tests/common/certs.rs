//! Test certificates, made at test time with the `openssl` CLI into a temp dir (never
//! committed keys). These are the commands docs/operations.md shows for a secure set-up:
//!
//! ```text
//! # A CA
//! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
//!     -keyout ca.key -out ca.pem -days 365 -subj "/CN=ringbroker test CA"
//! # The broker's certificate, for the names clients connect to (subjectAltName)
//! openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
//!     -keyout server.key -out server.csr -subj "/CN=localhost"
//! printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
//! openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
//!     -out server.pem -days 365 -extfile server.ext
//! # A client certificate (mTLS); its subject becomes the principal User:CN=alice,OU=eng,O=acme
//! openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
//!     -keyout alice.key -out alice.csr -subj "/O=acme/OU=eng/CN=alice"
//! printf 'extendedKeyUsage=clientAuth\n' > client.ext
//! openssl x509 -req -in alice.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
//!     -out alice.pem -days 365 -extfile client.ext
//! ```
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate (PEM) and its private key (PEM).
#[derive(Debug, Clone)]
pub struct CertKey {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (scripts/test installs it): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

/// A self-signed CA `name` (files `<name>.pem`, `<name>.key` in `dir`).
pub fn make_ca(dir: &Path, name: &str) -> CertKey {
    let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
    let subject = format!("/CN=ringbroker test CA {name}");
    let mut args = vec!["req", "-x509"];
    args.extend(EC);
    args.extend([
        "-nodes", "-keyout", &key, "-out", &cert, "-days", "365", "-subj", &subject,
    ]);
    openssl(dir, &args);
    CertKey {
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

/// A certificate `name` signed by `ca` with subject `subject` (`/O=acme/CN=x`) and the
/// extensions `ext` (lines of `openssl x509 -extfile`).
pub fn make_signed(dir: &Path, ca: &CertKey, name: &str, subject: &str, ext: &str) -> CertKey {
    let (cert, key, csr, extfile) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
    );
    let mut args = vec!["req"];
    args.extend(EC);
    args.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", subject]);
    openssl(dir, &args);
    std::fs::write(dir.join(&extfile), ext).unwrap();
    let (ca_cert, ca_key) = (
        ca.cert.to_str().unwrap().to_string(),
        ca.key.to_str().unwrap().to_string(),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "365",
            "-extfile",
            &extfile,
        ],
    );
    CertKey {
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

/// The broker's certificate for 127.0.0.1 and localhost.
pub fn make_server(dir: &Path, ca: &CertKey) -> CertKey {
    make_signed(
        dir,
        ca,
        "server",
        "/CN=localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
}

/// A client certificate (mTLS) with subject `subject`, e.g. `/O=acme/OU=eng/CN=alice`.
pub fn make_client(dir: &Path, ca: &CertKey, name: &str, subject: &str) -> CertKey {
    make_signed(dir, ca, name, subject, "extendedKeyUsage=clientAuth\n")
}

/// A CA and a server certificate in `dir`: the usual set-up of a TLS test.
pub struct TestPki {
    pub ca: CertKey,
    pub server: CertKey,
}

impl TestPki {
    pub fn new(dir: &Path) -> TestPki {
        let ca = make_ca(dir, "ca");
        let server = make_server(dir, &ca);
        TestPki { ca, server }
    }

    /// The broker flags of this PKI (`--tls-cert-file`, `--tls-key-file`).
    pub fn broker_flags(&self) -> Vec<String> {
        vec![
            "--tls-cert-file".into(),
            self.server.cert.display().to_string(),
            "--tls-key-file".into(),
            self.server.key.display().to_string(),
        ]
    }
}

/// host:port of listener `name` from the broker's start-up line (`NAME://host:port (`).
pub fn listener_addr(log: &str, name: &str) -> String {
    let marker = format!("{name}://");
    for part in log.split(&[' ', '='][..]) {
        if let Some(rest) = part.strip_prefix(&marker) {
            return rest.to_string();
        }
    }
    panic!("no listener {name} in the start-up line:\n{log}");
}
