//! The HTTP front of `/health` and `/metrics`: one thread, non-blocking sockets and `poll(2)`,
//! so no client (idle, half-sent, slow to read) delays another.
//!
//! Each connection has [`HTTP_REQUEST_DEADLINE`] for its request to arrive and its answer to
//! leave, and at most [`HTTP_CONNECTIONS_MAX`] are open (the oldest is dropped to make room for
//! a new one). `/health` is answered here, from atomics only. `/metrics` is handed with its
//! socket to the publisher thread through a bounded queue ([`SCRAPES_QUEUED_MAX`]; 503 when
//! full), which collects the shards' snapshots, renders and writes it.

use crate::health::Heartbeats;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// Connections open at once; a new one beyond this closes the oldest.
pub const HTTP_CONNECTIONS_MAX: usize = 512;
/// A connection must have sent its request and taken its answer within this.
pub const HTTP_REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Request head (request line and headers) bytes accepted.
pub const HTTP_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// `/metrics` requests waiting for the publisher.
pub const SCRAPES_QUEUED_MAX: usize = 8;
/// The loop looks at its stop flag and deadlines at least this often.
const POLL_TIMEOUT_MS_MAX: i32 = 100;

/// A `/metrics` request for the publisher: the socket (blocking, with a write timeout) and
/// whether only the head is wanted.
pub struct Scrape {
    pub stream: TcpStream,
    pub head: bool,
    /// The connection's deadline: the answer is given up past it.
    pub deadline: Instant,
}

impl Scrape {
    /// Writes `bytes` unless the deadline passes first: the socket's write timeout is the time
    /// left before every write, so a client that reads a little at a time cannot hold the
    /// publisher past the deadline.
    pub fn answer(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut written = 0;
        while written < bytes.len() {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ErrorKind::TimedOut.into());
            }
            self.stream.set_write_timeout(Some(left))?;
            match self.stream.write(&bytes[written..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// What a request gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Respond(Vec<u8>),
    Metrics { head: bool },
}

/// An HTTP/1.1 response that closes the connection.
pub fn response(status: &str, content_type: &str, body: &[u8], head: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body);
    }
    out
}

/// Routes a complete request head.
pub fn route(request: &[u8], ready: bool, heartbeats: &Heartbeats) -> Route {
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head = method == "HEAD";
    if method != "GET" && !head {
        return Route::Respond(response(
            "405 Method Not Allowed",
            "text/plain",
            b"use GET\n",
            false,
        ));
    }
    let text = |status: &str, body: &str| {
        Route::Respond(response(status, "text/plain", body.as_bytes(), head))
    };
    match path {
        "/metrics" if ready => Route::Metrics { head },
        "/metrics" => text("503 Service Unavailable", "starting\n"),
        "/health" => match crate::health::verdict(ready, heartbeats) {
            Ok(()) => text("200 OK", "ok\n"),
            Err(why) => text("503 Service Unavailable", &why),
        },
        _ => text("404 Not Found", "try /metrics or /health\n"),
    }
}

struct HttpConn {
    stream: TcpStream,
    request: Vec<u8>,
    /// Set once the request is answered: the bytes to send and how many are sent.
    response: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

enum Next {
    Keep,
    Close,
    Scrape { head: bool },
}

impl HttpConn {
    fn on_ready(&mut self, ready: bool, heartbeats: &Heartbeats) -> Next {
        if self.response.is_none() {
            let mut buf = [0u8; 1024];
            loop {
                match self.stream.read(&mut buf) {
                    Ok(0) => return Next::Close,
                    Ok(n) => self.request.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => return Next::Close,
                }
                if self.request.len() > HTTP_REQUEST_BYTES_MAX {
                    break;
                }
            }
            if self.request.len() > HTTP_REQUEST_BYTES_MAX {
                let r = response(
                    "431 Request Header Fields Too Large",
                    "text/plain",
                    b"",
                    false,
                );
                self.response = Some((r, 0));
            } else if self.request.windows(4).any(|w| w == b"\r\n\r\n") {
                match route(&self.request, ready, heartbeats) {
                    Route::Respond(r) => self.response = Some((r, 0)),
                    Route::Metrics { head } => return Next::Scrape { head },
                }
            } else {
                return Next::Keep;
            }
        }
        self.write_some()
    }

    fn write_some(&mut self) -> Next {
        let Some((bytes, sent)) = self.response.as_mut() else {
            return Next::Keep;
        };
        while *sent < bytes.len() {
            match self.stream.write(&bytes[*sent..]) {
                Ok(n) => *sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Keep,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        Next::Close
    }
}

/// Serves `listener` until `stop` is set.
pub fn serve(
    listener: TcpListener,
    stop: &AtomicBool,
    ready: &AtomicBool,
    heartbeats: &Heartbeats,
    scrapes: SyncSender<Scrape>,
) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!(error = %e, "metrics listener cannot be made non-blocking");
        return;
    }
    let mut conns: Vec<HttpConn> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        fds.clear();
        fds.push(libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let now = Instant::now();
        let mut timeout_ms = POLL_TIMEOUT_MS_MAX;
        for c in &conns {
            let events = if c.response.is_some() {
                libc::POLLOUT
            } else {
                libc::POLLIN
            };
            fds.push(libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events,
                revents: 0,
            });
            let left = c.deadline.saturating_duration_since(now).as_millis() as i32;
            timeout_ms = timeout_ms.min(left + 1);
        }
        // SAFETY: `fds` is a valid array of `fds.len()` initialised pollfd entries.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                tracing::warn!(error = %e, "metrics poll failed");
                std::thread::sleep(Duration::from_millis(POLL_TIMEOUT_MS_MAX as u64));
            }
            continue;
        }
        let is_ready = ready.load(Ordering::Acquire);
        let now = Instant::now();
        // Backwards, so swap_remove only moves entries already handled.
        for i in (0..conns.len()).rev() {
            let next = if fds[i + 1].revents != 0 {
                conns[i].on_ready(is_ready, heartbeats)
            } else {
                Next::Keep
            };
            match next {
                Next::Keep if now < conns[i].deadline => {}
                Next::Keep | Next::Close => drop(conns.swap_remove(i)),
                Next::Scrape { head } => {
                    let conn = conns.swap_remove(i);
                    if let Some(back) = hand_over(conn, head, &scrapes) {
                        conns.push(back);
                    }
                }
            }
        }
        if fds[0].revents != 0 {
            accept_all(&listener, &mut conns);
        }
    }
}

/// Gives a `/metrics` request to the publisher; when its queue is full, the connection comes
/// back with a 503 to send.
fn hand_over(mut conn: HttpConn, head: bool, scrapes: &SyncSender<Scrape>) -> Option<HttpConn> {
    // The publisher writes with blocking calls, each bounded by the time left (Scrape::answer).
    conn.stream.set_nonblocking(false).ok()?;
    match scrapes.try_send(Scrape {
        stream: conn.stream,
        head,
        deadline: conn.deadline,
    }) {
        Ok(()) => None,
        Err(TrySendError::Full(s)) | Err(TrySendError::Disconnected(s)) => {
            conn.stream = s.stream;
            conn.stream.set_nonblocking(true).ok()?;
            let r = response(
                "503 Service Unavailable",
                "text/plain",
                b"busy: too many scrapes waiting\n",
                head,
            );
            conn.response = Some((r, 0));
            Some(conn)
        }
    }
}

fn accept_all(listener: &TcpListener, conns: &mut Vec<HttpConn>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if conns.len() >= HTTP_CONNECTIONS_MAX {
                    // The oldest has had the longest to send its request.
                    if let Some(oldest) = (0..conns.len()).min_by_key(|&i| conns[i].deadline) {
                        drop(conns.swap_remove(oldest));
                    }
                }
                conns.push(HttpConn {
                    stream,
                    request: Vec::new(),
                    response: None,
                    deadline: Instant::now() + HTTP_REQUEST_DEADLINE,
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and friends: the pending connection stays queued; try again later.
                crate::warn_limited!(error = %e, "metrics accept failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_answer_gives_up_at_its_deadline_even_with_a_client_that_reads_slowly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // The client reads up to 64 KiB every 5 ms (about 13 MB/s): every write makes progress
        // well within the deadline, but 64 MiB takes seconds.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reading = done.clone();
        let reader = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            let mut buf = [0u8; 65536];
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5)
                && !reading.load(std::sync::atomic::Ordering::Acquire)
            {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let (stream, _) = listener.accept().unwrap();
        let mut scrape = Scrape {
            stream,
            head: false,
            deadline: Instant::now() + Duration::from_millis(300),
        };
        let started = Instant::now();
        let result = scrape.answer(&vec![b'x'; 64 << 20]);
        let took = started.elapsed();
        assert!(
            result.is_err(),
            "64 MiB cannot reach a slow reader in 300 ms"
        );
        assert!(took < Duration::from_secs(2), "the answer took {took:?}");
        done.store(true, std::sync::atomic::Ordering::Release);
        reader.join().unwrap();
    }

    #[test]
    fn routes() {
        let h = Heartbeats::new(1);
        let get =
            |path: &str, ready| route(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes(), ready, &h);
        assert_eq!(get("/metrics", true), Route::Metrics { head: false });
        let Route::Respond(r) = get("/health", true) else {
            panic!()
        };
        assert!(r.starts_with(b"HTTP/1.1 200 OK") && r.ends_with(b"ok\n"));
        let Route::Respond(r) = get("/health", false) else {
            panic!()
        };
        assert!(r.starts_with(b"HTTP/1.1 503"));
        let Route::Respond(r) = get("/nope", true) else {
            panic!()
        };
        assert!(r.starts_with(b"HTTP/1.1 404"));
    }
}
