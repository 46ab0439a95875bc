//! TLS on the shard's ring (issue #16): rustls does the protocol, every byte to and from the
//! socket goes through `ringbroker_runtime::op` on the calling shard's ring.
//!
//! API (reusable by the broker's client side: CLI, load generator, follower fetcher):
//! - [`server_config`] builds the broker's `rustls::ServerConfig` once at start from
//!   [`TlsFiles`] (`--tls-cert-file`, `--tls-key-file`, `--tls-client-ca-file`: mTLS);
//!   [`client_config`] builds a `rustls::ClientConfig` from a CA file and an optional client
//!   certificate and key. [`load_certs`], [`load_key`], [`load_roots`] read PEM files.
//! - [`TlsStream`] wraps a connected socket and a `rustls::Connection` (client or server):
//!   `handshake().await`, `recv(buf).await` (plaintext appended to `buf`, like `op::recv`),
//!   `send_chunks(chunks).await` (memory and file chunks, encrypted), `close().await`
//!   (close_notify). `recv` and `send_chunks` may run at the same time (one task polls both):
//!   only one writer at a time drains rustls' record queue to the socket, so records leave in
//!   order. Every future is safe to drop at any await; a dropped send or receive that may have
//!   moved part of a record breaks the stream (later calls fail) instead of sending a wrong
//!   byte.
//! - [`principal_of`]: the Kafka principal of a peer certificate (`User:` + RFC 2253 subject).
//! - kTLS: [`ktls_probe`] says whether the kernel has it; [`TlsStream::into_ktls`] hands the
//!   session keys to the kernel after the handshake, so the connection is then served as
//!   plaintext (splice included). THE HAND-OFF IS UNTESTED on the development machine (its
//!   kernel has no kTLS); `RINGBROKER_KTLS=off` forces the userspace path.
//!
//! Costs of the userspace path: received ciphertext is copied into rustls, decrypted in place
//! and copied into the frame buffer; answers are copied into rustls' record buffer as they are
//! encrypted, and file ranges (zero-copy Fetch data on plaintext listeners) are first read
//! into a [`FILE_READ_BYTES`] buffer through the ring.

use crate::security::TlsFiles;
use bytes::{Buf, Bytes, BytesMut};
use ringbroker_runtime::chunk::Chunk;
use ringbroker_runtime::op::{self, SharedFd};
pub use rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

/// A TLS handshake must be done within this long (a peer that stalls it is closed).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Ciphertext received per `recv` (and the most buffered between calls).
pub const CIPHER_RECV_BYTES: usize = 64 * 1024;
/// Plaintext encrypted before its records are sent (bounds rustls' outgoing buffer).
pub const ENCRYPT_BYTES_MAX: usize = 64 * 1024;
/// A file range of an answer is read through the ring in pieces of this size (the copy the
/// userspace path makes of zero-copy Fetch data).
pub const FILE_READ_BYTES: usize = 64 * 1024;
/// A closing connection waits this long for its close_notify to leave.
pub const CLOSE_NOTIFY_TIMEOUT: Duration = Duration::from_secs(1);
/// Environment variable: `off` forces the userspace TLS path even where the kernel has kTLS.
pub const KTLS_ENV: &str = "RINGBROKER_KTLS";

/// A PEM file of the TLS set-up could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {path}: {reason}")]
pub struct TlsFileError {
    pub flag: &'static str,
    pub path: String,
    pub reason: String,
}

fn file_error(flag: &'static str, path: &Path, reason: impl ToString) -> TlsFileError {
    TlsFileError {
        flag,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Reads every certificate of a PEM file (`flag` names the file in errors).
pub fn load_certs(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(flag, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(flag, path, format!("not a PEM certificate file: {e:?}")))?;
    if certs.is_empty() {
        return Err(file_error(flag, path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn load_key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(flag, path, e))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        file_error(
            flag,
            path,
            format!("no PKCS#8, PKCS#1 or SEC1 private key in the file: {e:?}"),
        )
    })
}

/// Reads a PEM file of CA certificates into a trust store.
pub fn load_roots(flag: &'static str, path: &Path) -> Result<rustls::RootCertStore, TlsFileError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(flag, path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(flag, path, format!("bad CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The broker's TLS server configuration: its certificate chain and key, TLS 1.2 and 1.3,
/// no ALPN; with a client CA every client must present a certificate chaining to it (mTLS).
/// `ktls`: prepare for the kernel hand-off (secret extraction on, no TLS 1.3 session tickets,
/// so no record is pending after the handshake).
pub fn server_config(files: &TlsFiles, ktls: bool) -> Result<rustls::ServerConfig, TlsFileError> {
    let certs = load_certs("--tls-cert-file", &files.cert)?;
    let key = load_key("--tls-key-file", &files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| file_error("--tls-cert-file", &files.cert, e))?;
    let builder = match (&files.client_ca, files.client_auth) {
        (
            Some(ca),
            crate::security::ClientAuth::Required | crate::security::ClientAuth::Requested,
        ) => {
            let roots = load_roots("--tls-client-ca-file", ca)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            );
            let verifier = if files.client_auth == crate::security::ClientAuth::Requested {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| file_error("--tls-client-ca-file", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        file_error(
            "--tls-key-file",
            &files.key,
            format!("does not fit --tls-cert-file {}: {e}", files.cert.display()),
        )
    })?;
    if ktls {
        config.enable_secret_extraction = true;
        config.send_tls13_tickets = 0;
    }
    Ok(config)
}

/// A TLS client configuration trusting the CAs of `ca_file`, presenting `client` (certificate
/// chain file, key file) when given.
pub fn client_config(
    ca_file: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsFileError> {
    let roots = load_roots("CA file", ca_file)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| file_error("CA file", ca_file, e))?
        .with_root_certificates(roots);
    match client {
        Some((cert, key)) => {
            let certs = load_certs("client certificate", cert)?;
            let key_der = load_key("client key", key)?;
            builder
                .with_client_auth_cert(certs, key_der)
                .map_err(|e| file_error("client key", key, e))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// A client connection to `server_name` (a DNS name or an IP address) for [`TlsStream::new`].
pub fn client_connection(
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> io::Result<rustls::Connection> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
    Ok(rustls::Connection::Client(conn))
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn broken() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "TLS stream broken by an interrupted send or receive",
    )
}

/// What [`TlsStream::into_ktls`] did.
pub enum KtlsHandoff {
    /// The kernel has the session: the socket is read and written as plaintext from now on.
    Kernel(SharedFd),
    /// The session cannot be handed over (cipher suite, records still buffered): it stays
    /// on the userspace path.
    Userspace(Box<TlsStream>),
    /// The keys were taken but the kernel refused them (or rustls failed): close.
    Failed(io::Error),
}

/// A TLS connection over a socket, driven through the shard's ring.
pub struct TlsStream {
    fd: SharedFd,
    conn: RefCell<rustls::Connection>,
    /// Ciphertext received and not yet fed to rustls (taken out while a receive runs).
    cipher: RefCell<BytesMut>,
    /// A writer drains rustls' records to the socket.
    writing: Cell<bool>,
    write_waiters: RefCell<Vec<Waker>>,
    /// An interrupted or failed send may have sent part of a record: nothing more is sent.
    broken: Cell<bool>,
    /// An interrupted or failed receive may have lost ciphertext: nothing more is received
    /// (sending goes on: the answers to requests read before still leave, then close_notify).
    recv_broken: Cell<bool>,
    /// The peer closed (TCP EOF).
    eof: Cell<bool>,
}

/// Marks the stream broken unless disarmed (an op interrupted by a drop).
struct BreakOnDrop<'a>(&'a Cell<bool>, bool);

impl Drop for BreakOnDrop<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.set(true);
        }
    }
}

/// The write token; releasing it wakes every waiter (each checks again).
struct WriteToken<'a>(&'a TlsStream);

impl Drop for WriteToken<'_> {
    fn drop(&mut self) {
        self.0.writing.set(false);
        for w in self.0.write_waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

impl TlsStream {
    /// Wraps a connected socket; `conn` is a fresh `rustls::Connection` (server or client).
    pub fn new(fd: SharedFd, conn: rustls::Connection) -> TlsStream {
        TlsStream {
            fd,
            conn: RefCell::new(conn),
            cipher: RefCell::new(BytesMut::with_capacity(CIPHER_RECV_BYTES)),
            writing: Cell::new(false),
            write_waiters: RefCell::new(Vec::new()),
            broken: Cell::new(false),
            recv_broken: Cell::new(false),
            eof: Cell::new(false),
        }
    }

    /// A server connection of `config` over `fd`.
    pub fn server(fd: SharedFd, config: Arc<rustls::ServerConfig>) -> io::Result<TlsStream> {
        let conn = rustls::ServerConnection::new(config).map_err(tls_error)?;
        Ok(TlsStream::new(fd, rustls::Connection::Server(conn)))
    }

    pub fn fd(&self) -> &SharedFd {
        &self.fd
    }

    /// The peer's certificate chain (end entity first), once the handshake is done.
    pub fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.conn.borrow().peer_certificates().map(<[_]>::to_vec)
    }

    /// The negotiated TLS version and cipher suite (for logs).
    pub fn negotiated(&self) -> String {
        let conn = self.conn.borrow();
        format!(
            "{:?} {:?}",
            conn.protocol_version(),
            conn.negotiated_cipher_suite().map(|s| s.suite())
        )
    }

    async fn lock_writer(&self) -> WriteToken<'_> {
        std::future::poll_fn(|cx| {
            if self.writing.get() {
                let mut waiters = self.write_waiters.borrow_mut();
                // One entry per waiting task, however often it is polled meanwhile.
                if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    waiters.push(cx.waker().clone());
                }
                Poll::Pending
            } else {
                self.writing.set(true);
                Poll::Ready(())
            }
        })
        .await;
        WriteToken(self)
    }

    /// Sends every record rustls has queued (the caller holds the write token).
    async fn flush_locked(&self, _token: &WriteToken<'_>) -> io::Result<()> {
        loop {
            if self.broken.get() {
                return Err(broken());
            }
            let out = {
                let mut conn = self.conn.borrow_mut();
                if !conn.wants_write() {
                    return Ok(());
                }
                let mut out = Vec::with_capacity(ENCRYPT_BYTES_MAX + 1024);
                while conn.wants_write() {
                    conn.write_tls(&mut out)?;
                }
                out
            };
            let mut guard = BreakOnDrop(&self.broken, true);
            let sent = op::send_all(&self.fd, vec![Bytes::from(out)]).await;
            if sent.is_err() {
                self.broken.set(true);
            }
            guard.1 = false;
            sent?;
        }
    }

    /// Sends queued records unless another writer runs (that one sends them, in order).
    async fn flush_if_idle(&self) -> io::Result<()> {
        if self.writing.get() || !self.conn.borrow().wants_write() {
            return Ok(());
        }
        let token = self.lock_writer().await;
        self.flush_locked(&token).await
    }

    /// Feeds buffered ciphertext to rustls and moves decrypted plaintext into the spare
    /// capacity of `buf` (never past it), draining plaintext between `read_tls` calls so
    /// rustls' received-plaintext limit is never hit.
    fn pump(&self, buf: &mut BytesMut) -> io::Result<()> {
        let mut conn = self.conn.borrow_mut();
        let mut cipher = self.cipher.borrow_mut();
        loop {
            // Plaintext first.
            loop {
                let room = buf.capacity() - buf.len();
                if room == 0 {
                    return Ok(());
                }
                let mut reader = conn.reader();
                let chunk = match reader.fill_buf() {
                    Ok(chunk) => chunk,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // EOF without close_notify once the plaintext is read: the peer left.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                };
                if chunk.is_empty() {
                    break; // close_notify received
                }
                let n = chunk.len().min(room);
                buf.extend_from_slice(&chunk[..n]);
                reader.consume(n);
            }
            if cipher.is_empty() {
                return Ok(());
            }
            let mut rd: &[u8] = &cipher[..];
            let n = conn.read_tls(&mut rd)?;
            cipher.advance(n);
            if let Err(e) = conn.process_new_packets() {
                return Err(tls_error(e));
            }
            if n == 0 {
                return Ok(());
            }
        }
    }

    /// Whether the peer closed: close_notify received, or TCP EOF.
    fn peer_closed(&self) -> bool {
        if self.eof.get() && self.cipher.borrow().is_empty() {
            return true;
        }
        let mut conn = self.conn.borrow_mut();
        let mut reader = conn.reader();
        matches!(reader.fill_buf(), Ok(chunk) if chunk.is_empty())
    }

    /// Receives more ciphertext into the buffer (through the ring); `Ok(false)` at EOF.
    async fn recv_cipher(&self) -> io::Result<bool> {
        let mut cipher = std::mem::take(&mut *self.cipher.borrow_mut());
        if cipher.capacity() - cipher.len() < CIPHER_RECV_BYTES / 4 {
            cipher.reserve(CIPHER_RECV_BYTES);
        }
        let mut guard = BreakOnDrop(&self.recv_broken, true);
        let (result, cipher) = op::recv(&self.fd, cipher).await;
        guard.1 = false;
        *self.cipher.borrow_mut() = cipher;
        match result {
            Ok(0) => {
                self.eof.set(true);
                Ok(false)
            }
            Ok(_) => Ok(true),
            Err(e) => {
                self.recv_broken.set(true);
                Err(e)
            }
        }
    }

    /// Feeds the whole records received to rustls while it handshakes; how many bytes.
    fn feed_handshake(&self) -> io::Result<usize> {
        let mut conn = self.conn.borrow_mut();
        let mut cipher = self.cipher.borrow_mut();
        let whole = whole_records_len(&cipher);
        let mut fed = 0;
        let mut result = Ok(());
        while fed < whole && conn.is_handshaking() {
            let mut rd: &[u8] = &cipher[fed..whole];
            match conn.read_tls(&mut rd) {
                Ok(0) => break,
                Ok(n) => fed += n,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            if let Err(e) = conn.process_new_packets() {
                result = Err(tls_error(e));
                break;
            }
        }
        cipher.advance(fed);
        result.map(|()| fed)
    }

    /// Does the handshake (bounded by the caller, e.g. with [`TLS_HANDSHAKE_TIMEOUT`]).
    /// Application data that arrived with its last flight stays buffered for [`Self::recv`].
    pub async fn handshake(&self) -> io::Result<()> {
        loop {
            let token = self.lock_writer().await;
            self.flush_locked(&token).await?;
            drop(token);
            if !self.conn.borrow().is_handshaking() {
                return Ok(());
            }
            if self.recv_broken.get() {
                return Err(broken());
            }
            // Feed whole records only (so nothing is half-fed when the handshake ends: the
            // kTLS hand-off needs rustls' input buffer empty).
            let fed = match self.feed_handshake() {
                Ok(fed) => fed,
                Err(e) => {
                    self.recv_broken.set(true);
                    // Tell the peer why (the alert rustls queued), best effort.
                    let token = self.lock_writer().await;
                    let _ = self.flush_locked(&token).await;
                    return Err(e);
                }
            };
            if fed > 0 {
                continue;
            }
            if self.cipher.borrow().len() >= rustls_max_record() * 4 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS record too large",
                ));
            }
            if !self.recv_cipher().await? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed during the TLS handshake",
                ));
            }
        }
    }

    /// Receives plaintext into the spare capacity of `buf` (like `op::recv`): `Ok(0)` when the
    /// peer closed. Records rustls produced while receiving (alerts, key updates) are sent
    /// when no send runs, or by the running one.
    /// `buf` must have spare capacity (`Ok(0)` means EOF only).
    pub async fn recv(&self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        let start = buf.len();
        if buf.capacity() == start {
            return (
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TlsStream::recv needs a buffer with spare capacity",
                )),
                buf,
            );
        }
        loop {
            if self.recv_broken.get() {
                return (Err(broken()), buf);
            }
            if let Err(e) = self.pump(&mut buf) {
                // Send the alert rustls queued, best effort, then fail.
                self.recv_broken.set(true);
                let _ = self.flush_if_idle().await;
                return (Err(e), buf);
            }
            let n = buf.len() - start;
            if n > 0 || buf.capacity() == buf.len() {
                // Dropped while sending what rustls queued, the plaintext in `buf` is lost.
                let mut guard = BreakOnDrop(&self.recv_broken, n > 0);
                let flushed = self.flush_if_idle().await;
                guard.1 = false;
                if let Err(e) = flushed {
                    return (Err(e), buf);
                }
                return (Ok(n), buf);
            }
            if self.peer_closed() {
                return (Ok(0), buf);
            }
            match self.recv_cipher().await {
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
        }
    }

    /// Encrypts and sends `chunks` in order; file ranges are read through the ring first.
    pub async fn send_chunks(&self, chunks: Vec<Chunk>) -> io::Result<()> {
        let token = self.lock_writer().await;
        // Dropped (or failed) once part of the answers may sit encrypted in rustls' queue, the
        // next writer would send a truncated answer: the stream is broken instead.
        let mut whole = BreakOnDrop(&self.broken, true);
        let mut file_buf: Option<BytesMut> = None;
        for chunk in chunks {
            match chunk {
                Chunk::Mem(bytes) => self.encrypt_all(&token, &bytes).await?,
                Chunk::File(slice) => {
                    let file: SharedFd = slice.file.clone();
                    let mut done = 0usize;
                    let len = slice.len as usize;
                    while done < len {
                        let step = (len - done).min(FILE_READ_BYTES);
                        let mut b = file_buf
                            .take()
                            .unwrap_or_else(|| BytesMut::with_capacity(FILE_READ_BYTES));
                        b.clear();
                        let b =
                            op::read_exact_at(&file, b, slice.position + done as u64, step).await?;
                        self.encrypt_all(&token, &b).await?;
                        file_buf = Some(b);
                        done += step;
                    }
                }
            }
        }
        self.flush_locked(&token).await?;
        whole.1 = false;
        Ok(())
    }

    /// Encrypts `plain`, sending records whenever [`ENCRYPT_BYTES_MAX`] are queued.
    async fn encrypt_all(&self, token: &WriteToken<'_>, mut plain: &[u8]) -> io::Result<()> {
        while !plain.is_empty() {
            let step = plain.len().min(ENCRYPT_BYTES_MAX);
            let n = self.conn.borrow_mut().writer().write(&plain[..step])?;
            plain = &plain[n..];
            if n < step || !plain.is_empty() {
                self.flush_locked(token).await?;
            }
        }
        Ok(())
    }

    /// Sends close_notify (and anything queued before it).
    pub async fn close(&self) -> io::Result<()> {
        let token = self.lock_writer().await;
        self.conn.borrow_mut().send_close_notify();
        self.flush_locked(&token).await
    }

    /// The session can go to the kernel: handshake done, nothing queued either way, a cipher
    /// suite kTLS knows.
    fn ktls_ready(&self) -> bool {
        if self.broken.get()
            || self.recv_broken.get()
            || !self.cipher.borrow().is_empty()
            || self.writing.get()
        {
            return false;
        }
        let conn = self.conn.borrow();
        if conn.is_handshaking() || conn.wants_write() {
            return false;
        }
        conn.negotiated_cipher_suite().is_some_and(|s| {
            use rustls::CipherSuite as C;
            matches!(
                s.suite(),
                C::TLS13_AES_128_GCM_SHA256
                    | C::TLS13_AES_256_GCM_SHA384
                    | C::TLS13_CHACHA20_POLY1305_SHA256
                    | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                    | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                    | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                    | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                    | C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            )
        })
    }

    /// Hands the session to the kernel (kTLS) after the handshake: plaintext rustls already
    /// decrypted is appended to `buf`, the keys go to the socket (TLS_TX, TLS_RX) and the
    /// socket is from then on read and written as plaintext. See [`KtlsHandoff`].
    ///
    /// UNTESTED on the development machine (no kTLS in its kernel).
    pub fn into_ktls(self, buf: &mut BytesMut) -> KtlsHandoff {
        if !self.ktls_ready() {
            return KtlsHandoff::Userspace(Box::new(self));
        }
        // Plaintext already decrypted must reach the frame buffer first.
        let spare_before = buf.capacity() - buf.len();
        if let Err(e) = self.pump(buf) {
            return KtlsHandoff::Failed(e);
        }
        if spare_before > 0 && buf.capacity() == buf.len() {
            // Maybe more plaintext buffered: stay in userspace.
            return KtlsHandoff::Userspace(Box::new(self));
        }
        let version = self.conn.borrow().protocol_version();
        let TlsStream { fd, conn, .. } = self;
        let secrets = match conn.into_inner().dangerous_extract_secrets() {
            Ok(s) => s,
            Err(e) => return KtlsHandoff::Failed(tls_error(e)),
        };
        match ktls::install(&fd, version, secrets) {
            Ok(()) => KtlsHandoff::Kernel(fd),
            Err(e) => KtlsHandoff::Failed(e),
        }
    }
}

/// The length of the leading whole TLS records of `bytes`; all of `bytes` once a record
/// header is not one TLS can have (rustls then says what is wrong at once, instead of the
/// handshake waiting for a record that never completes).
fn whole_records_len(bytes: &[u8]) -> usize {
    let mut at = 0;
    while bytes.len() - at >= 5 {
        let (kind, major) = (bytes[at], bytes[at + 1]);
        let len = u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]) as usize;
        if !(20..=24).contains(&kind) || major != 3 || 5 + len > rustls_max_record() {
            return bytes.len();
        }
        if bytes.len() - at < 5 + len {
            break;
        }
        at += 5 + len;
    }
    at
}

/// The largest TLS record on the wire (header, 16 KiB of data, expansion).
fn rustls_max_record() -> usize {
    5 + 16384 + 2048
}

/// Why a TLS connection was refused, counted (`ringbroker_tls_handshake_failures_total`).
static HANDSHAKE_FAILURES: AtomicU64 = AtomicU64::new(0);
/// Which path each TLS listener uses: (listener name, "userspace" | "ktls").
static PATHS: Mutex<Vec<(String, &'static str)>> = Mutex::new(Vec::new());

/// Counts a failed handshake.
pub fn handshake_failed() {
    HANDSHAKE_FAILURES.fetch_add(1, Ordering::Relaxed);
}

/// Records the path of listener `name` (at start).
pub fn set_path(name: &str, path: &'static str) {
    let mut paths = PATHS.lock().unwrap_or_else(|e| e.into_inner());
    paths.retain(|(n, _)| n != name);
    paths.push((name.to_string(), path));
}

/// Publishes the TLS series (called by the metrics publisher with its recorder installed).
pub fn record_metrics() {
    let paths = PATHS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (listener, path) in paths {
        for p in ["userspace", "ktls"] {
            metrics::gauge!("ringbroker_tls_path", "listener" => listener.clone(), "path" => p)
                .set(if p == path { 1.0 } else { 0.0 });
        }
    }
    if !PATHS.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
        metrics::counter!("ringbroker_tls_handshake_failures_total")
            .absolute(HANDSHAKE_FAILURES.load(Ordering::Relaxed));
    }
}

/// Whether TLS connections use kTLS: the kernel has it and `RINGBROKER_KTLS` is not `off`.
/// Returns (use it, why) for the start-up line.
pub fn ktls_decision() -> (bool, String) {
    if std::env::var(KTLS_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("off")) {
        return (false, format!("{KTLS_ENV}=off"));
    }
    match ktls_probe() {
        Ok(()) => (true, "kernel has kTLS".to_string()),
        Err(e) => (false, format!("kernel has no kTLS ({e})")),
    }
}

/// Probes the kernel for kTLS: `setsockopt(TCP_ULP, "tls")` on a connected loopback TCP
/// socket (ENOENT: the `tls` module is missing). Control-plane, plain syscalls.
pub fn ktls_probe() -> io::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let client = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (_server, _) = listener.accept()?;
    ktls::set_ulp(std::os::fd::AsRawFd::as_raw_fd(&client))
}

/// The kernel TLS hand-off (linux/tls.h). UNTESTED here: the development kernel has no kTLS.
mod ktls {
    use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion};
    use std::io;
    use std::os::fd::{AsRawFd, RawFd};

    const TCP_ULP: libc::c_int = 31;
    const SOL_TLS: libc::c_int = 282;
    const TLS_TX: libc::c_int = 1;
    const TLS_RX: libc::c_int = 2;
    const TLS_1_2_VERSION: u16 = 0x0303;
    const TLS_1_3_VERSION: u16 = 0x0304;
    const TLS_CIPHER_AES_GCM_128: u16 = 51;
    const TLS_CIPHER_AES_GCM_256: u16 = 52;
    const TLS_CIPHER_CHACHA20_POLY1305: u16 = 54;

    #[repr(C)]
    struct AesGcm128 {
        version: u16,
        cipher_type: u16,
        iv: [u8; 8],
        key: [u8; 16],
        salt: [u8; 4],
        rec_seq: [u8; 8],
    }

    #[repr(C)]
    struct AesGcm256 {
        version: u16,
        cipher_type: u16,
        iv: [u8; 8],
        key: [u8; 32],
        salt: [u8; 4],
        rec_seq: [u8; 8],
    }

    #[repr(C)]
    struct Chacha20Poly1305 {
        version: u16,
        cipher_type: u16,
        iv: [u8; 12],
        key: [u8; 32],
        rec_seq: [u8; 8],
    }

    fn setsockopt(
        fd: RawFd,
        level: libc::c_int,
        name: libc::c_int,
        value: &[u8],
    ) -> io::Result<()> {
        // SAFETY: value points at value.len() readable bytes for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                value.as_ptr() as *const libc::c_void,
                value.len() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub(super) fn set_ulp(fd: RawFd) -> io::Result<()> {
        setsockopt(fd, libc::IPPROTO_TCP, TCP_ULP, b"tls")
    }

    fn as_bytes<T>(value: &T) -> &[u8] {
        // SAFETY: T is a repr(C) struct of integers and byte arrays without padding (u16,
        // u16, then u8 arrays), so all its bytes are initialised.
        unsafe { std::slice::from_raw_parts(value as *const T as *const u8, size_of::<T>()) }
    }

    fn crypto_info(
        version: u16,
        seq: u64,
        secrets: &ConnectionTrafficSecrets,
    ) -> io::Result<Vec<u8>> {
        let rec_seq = seq.to_be_bytes();
        let info = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                let (key, iv) = (key.as_ref(), iv.as_ref());
                let mut v = AesGcm128 {
                    version,
                    cipher_type: TLS_CIPHER_AES_GCM_128,
                    iv: [0; 8],
                    key: [0; 16],
                    salt: [0; 4],
                    rec_seq,
                };
                v.key.copy_from_slice(key.get(..16).ok_or_else(bad_len)?);
                v.salt.copy_from_slice(iv.get(..4).ok_or_else(bad_len)?);
                v.iv.copy_from_slice(iv.get(4..12).ok_or_else(bad_len)?);
                as_bytes(&v).to_vec()
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                let (key, iv) = (key.as_ref(), iv.as_ref());
                let mut v = AesGcm256 {
                    version,
                    cipher_type: TLS_CIPHER_AES_GCM_256,
                    iv: [0; 8],
                    key: [0; 32],
                    salt: [0; 4],
                    rec_seq,
                };
                v.key.copy_from_slice(key.get(..32).ok_or_else(bad_len)?);
                v.salt.copy_from_slice(iv.get(..4).ok_or_else(bad_len)?);
                v.iv.copy_from_slice(iv.get(4..12).ok_or_else(bad_len)?);
                as_bytes(&v).to_vec()
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                let (key, iv) = (key.as_ref(), iv.as_ref());
                let mut v = Chacha20Poly1305 {
                    version,
                    cipher_type: TLS_CIPHER_CHACHA20_POLY1305,
                    iv: [0; 12],
                    key: [0; 32],
                    rec_seq,
                };
                v.key.copy_from_slice(key.get(..32).ok_or_else(bad_len)?);
                v.iv.copy_from_slice(iv.get(..12).ok_or_else(bad_len)?);
                as_bytes(&v).to_vec()
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "cipher suite not supported by kTLS",
                ))
            }
        };
        Ok(info)
    }

    fn bad_len() -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, "unexpected key length")
    }

    /// Installs the session keys on the socket. Key material lives in the temporary structs
    /// only (they are not logged).
    pub(super) fn install(
        fd: &crate::security::tls::SharedFd,
        version: Option<ProtocolVersion>,
        secrets: ExtractedSecrets,
    ) -> io::Result<()> {
        let version = match version {
            Some(ProtocolVersion::TLSv1_2) => TLS_1_2_VERSION,
            Some(ProtocolVersion::TLSv1_3) => TLS_1_3_VERSION,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "TLS version not supported by kTLS",
                ))
            }
        };
        let raw = fd.as_raw_fd();
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        let tx = crypto_info(version, tx_seq, &tx)?;
        let rx = crypto_info(version, rx_seq, &rx)?;
        set_ulp(raw)?;
        setsockopt(raw, SOL_TLS, TLS_TX, &tx)?;
        setsockopt(raw, SOL_TLS, TLS_RX, &rx)?;
        Ok(())
    }
}

/// The Kafka principal of a client certificate (DER): `User:` + its subject in RFC 2253 form
/// (Java's `X500Principal.getName()`, Kafka's default `ssl.principal.mapping.rules`).
pub fn principal_of(cert: &[u8]) -> Result<String, String> {
    use x509_cert::der::Decode;
    let cert =
        x509_cert::Certificate::from_der(cert).map_err(|e| format!("bad certificate: {e}"))?;
    Ok(format!("User:{}", rfc2253(&cert.tbs_certificate.subject)))
}

/// A distinguished name as RFC 2253 (last RDN first, `,` between RDNs, `+` within one;
/// known keywords CN, C, L, ST, O, OU, STREET, DC, UID; other types as dotted OIDs with the
/// value as `#` + hex of its DER encoding, as Java does).
pub fn rfc2253(name: &x509_cert::name::Name) -> String {
    use x509_cert::der::{Encode, Tag, Tagged};
    let mut out = String::new();
    for (i, rdn) in name.0.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.0.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let keyword = match atv.oid.to_string().as_str() {
                "2.5.4.3" => Some("CN"),
                "2.5.4.6" => Some("C"),
                "2.5.4.7" => Some("L"),
                "2.5.4.8" => Some("ST"),
                "2.5.4.10" => Some("O"),
                "2.5.4.11" => Some("OU"),
                "2.5.4.9" => Some("STREET"),
                "0.9.2342.19200300.100.1.25" => Some("DC"),
                "0.9.2342.19200300.100.1.1" => Some("UID"),
                _ => None,
            };
            let text = match atv.value.tag() {
                Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::TeletexString => {
                    std::str::from_utf8(atv.value.value()).ok()
                }
                _ => None,
            };
            match (keyword, text) {
                (Some(k), Some(text)) => {
                    out.push_str(k);
                    out.push('=');
                    escape_rfc2253(text, &mut out);
                }
                (k, _) => {
                    out.push_str(&k.map_or_else(|| atv.oid.to_string(), str::to_string));
                    out.push_str("=#");
                    for b in atv.value.to_der().unwrap_or_default() {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
        }
    }
    out
}

fn escape_rfc2253(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

/// What a TLS connection's principal is: its client certificate's, or ANONYMOUS.
pub fn principal_of_stream(stream: &TlsStream) -> String {
    match stream.peer_certificates().as_deref().and_then(<[_]>::first) {
        Some(cert) => principal_of(cert).unwrap_or_else(|_| crate::security::ANONYMOUS.into()),
        None => crate::security::ANONYMOUS.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_records_are_counted() {
        let mut b = vec![22, 3, 3, 0, 2, 1, 2];
        assert_eq!(whole_records_len(&b), 7);
        b.extend_from_slice(&[23, 3, 3, 0, 4, 9]);
        assert_eq!(whole_records_len(&b), 7);
        assert_eq!(whole_records_len(&b[..3]), 0);
        // Not TLS (a Kafka frame, an oversized record): everything, so rustls refuses it.
        assert_eq!(whole_records_len(&[0, 0, 0, 20, 0, 3, 0]), 7);
        assert_eq!(whole_records_len(&[22, 3, 1, 0xff, 0xff, 1]), 6);
    }

    #[test]
    fn a_subject_is_written_as_javas_rfc2253_name() {
        use std::str::FromStr;
        let name = x509_cert::name::Name::from_str("CN=alice,OU=eng,O=acme").unwrap();
        assert_eq!(rfc2253(&name), "CN=alice,OU=eng,O=acme");
        let name = x509_cert::name::Name::from_str("CN=a\\,b,OU=x+OU=y,C=US").unwrap();
        assert_eq!(rfc2253(&name), "CN=a\\,b,OU=x+OU=y,C=US");
    }

    /// A certificate made by `openssl` (as the docs show) maps to Kafka's default principal.
    #[test]
    fn a_client_certificate_maps_to_user_and_its_subject() {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
            "-days",
            "1",
            "-subj",
            "/emailAddress=a@b.c/O=acme/OU=eng/CN=alice",
        ]);
        let certs = load_certs("test", &dir.path().join("c.pem")).unwrap();
        assert_eq!(
            principal_of(&certs[0]).unwrap(),
            "User:CN=alice,OU=eng,O=acme,1.2.840.113549.1.9.1=#16056140622e63"
        );
        // Keys in PKCS#8 load; so do SEC1 ones.
        load_key("test", &dir.path().join("k.pem")).unwrap();
        run(&["ec", "-in", "k.pem", "-out", "sec1.pem"]);
        assert!(std::fs::read_to_string(dir.path().join("sec1.pem"))
            .unwrap()
            .contains("EC PRIVATE KEY"));
        load_key("test", &dir.path().join("sec1.pem")).unwrap();
        assert!(load_key("test", &dir.path().join("c.pem")).is_err());
    }

    #[test]
    fn rfc2253_escapes_specials() {
        let mut s = String::new();
        escape_rfc2253("a,b+c\"d\\e<f>g;h", &mut s);
        assert_eq!(s, "a\\,b\\+c\\\"d\\\\e\\<f\\>g\\;h");
        let mut s = String::new();
        escape_rfc2253("#x ", &mut s);
        assert_eq!(s, "\\#x\\ ");
    }
}
