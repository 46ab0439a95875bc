//! Operations as futures. `Op::submit` queues an SQE at once and owns `data` (the buffers
//! and fds the SQE points into) until the completion arrives; the future then yields the
//! result and gives `data` back. Dropping the future early cancels the SQE and parks `data`
//! in the driver until the kernel is done with it; when the driver cannot be reached (it is
//! gone, at thread exit) `data` is leaked, since the kernel may still write into it.

use crate::driver::{self, Slot, IGNORE};
use bytes::{Bytes, BytesMut};
use io_uring::{opcode, squeue, types};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A submitted operation; resolves to `(result, data)` where `result` is the CQE's `res`.
pub struct Op<T: 'static> {
    key: usize,
    /// The driver the slot belongs to (a later driver on this thread reuses keys).
    generation: u64,
    data: Option<T>,
}

impl<T: 'static> Op<T> {
    /// Queues `entry` on this thread's ring.
    ///
    /// # Safety
    /// Every pointer in `entry` must point into memory owned by `data` (heap memory that does
    /// not move when `data` moves) or into `'static` memory.
    pub unsafe fn submit(entry: squeue::Entry, data: T) -> Op<T> {
        let (key, generation) = driver::with(|d| (d.submit_op(entry), d.generation()));
        Op {
            key,
            generation,
            data: Some(data),
        }
    }
}

impl<A: 'static, B: 'static> Op<(A, B)> {
    /// Queues two SQEs linked with IO_LINK (the second starts when the first completes in
    /// full; a short first result cancels it) and returns one op per SQE.
    ///
    /// # Safety
    /// As for [`Op::submit`], for each entry and its data.
    pub unsafe fn submit_linked(
        first: squeue::Entry,
        first_data: A,
        second: squeue::Entry,
        second_data: B,
    ) -> (Op<A>, Op<B>) {
        let (k1, k2, generation) = driver::with(|d| {
            d.reserve(2);
            let k1 = d.submit_op(first.flags(squeue::Flags::IO_LINK));
            let k2 = d.submit_op(second);
            (k1, k2, d.generation())
        });
        (
            Op {
                key: k1,
                generation,
                data: Some(first_data),
            },
            Op {
                key: k2,
                generation,
                data: Some(second_data),
            },
        )
    }
}

impl<T: Unpin + 'static> Future for Op<T> {
    type Output = (i32, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(i32, T)> {
        let key = self.key;
        let done = driver::with(|d| match d.slot_mut(key) {
            Slot::Pending(waker) => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                None
            }
            Slot::Done { result, .. } => {
                let result = *result;
                d.remove_slot(key);
                Some(result)
            }
            Slot::Orphaned(_) | Slot::EventfdRead(_) => unreachable!("polled a slot not ours"),
        });
        match done {
            Some(result) => {
                let data = self.data.take().expect("op polled after completion");
                Poll::Ready((result, data))
            }
            None => Poll::Pending,
        }
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(data) = self.data.take() else { return };
        let (key, generation) = (self.key, self.generation);
        let mut data = Some(data);
        // Where the data goes: into the slot (parked until the CQE), freed (the CQE came),
        // or, when the driver cannot be reached, nowhere.
        let kernel_done = driver::try_with(|d| match d.slot_of(generation, key) {
            Some(Slot::Done { .. }) => {
                d.remove_slot(key);
                true
            }
            Some(slot @ Slot::Pending(_)) => {
                let parked = data.take().expect("data taken once");
                *slot = Slot::Orphaned(Box::new(parked));
                let cancel = opcode::AsyncCancel::new(key as u64)
                    .build()
                    .user_data(IGNORE);
                d.push(cancel);
                false
            }
            Some(Slot::Orphaned(_) | Slot::EventfdRead(_)) => unreachable!("slot not ours"),
            None => false,
        });
        match data {
            Some(data) if kernel_done == Some(true) => drop(data),
            // The driver is gone (thread exit) or busy, or its slot is: the kernel may still
            // write into these buffers, so they must never be freed. (A panic in here ends the
            // process: the broker is fail-stop.)
            Some(data) => std::mem::forget(data),
            None => {}
        }
    }
}

fn cvt(result: i32) -> io::Result<usize> {
    if result < 0 {
        Err(io::Error::from_raw_os_error(-result))
    } else {
        Ok(result as usize)
    }
}

/// An fd shared by the ops that use it: it stays open until the last op completes.
pub type SharedFd = Arc<OwnedFd>;

/// Accepts one connection on a listening socket.
pub async fn accept(listener: &SharedFd) -> io::Result<OwnedFd> {
    let fd = listener.clone();
    let entry = opcode::Accept::new(
        types::Fd(fd.as_raw_fd()),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    )
    .flags(libc::SOCK_CLOEXEC)
    .build();
    // SAFETY: no pointers besides the fd, which `fd` keeps open.
    let (result, _fd) = unsafe { Op::submit(entry, fd) }.await;
    let raw = cvt(result)? as i32;
    // SAFETY: the kernel just returned this fresh fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Opens a TCP connection to `addr` through the ring (IORING_OP_CONNECT). The socket is
/// created non-blocking and close-on-exec, like the listeners; the connect itself completes
/// on the ring, so the shard's loop never blocks on it. Drop the future to give up (the
/// socket is closed once the kernel lets go of it).
pub async fn connect(addr: std::net::SocketAddr) -> io::Result<SharedFd> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    let fd: SharedFd = Arc::new(socket.into());
    let sockaddr = Box::new(socket2::SockAddr::from(addr));
    let entry = opcode::Connect::new(
        types::Fd(fd.as_raw_fd()),
        sockaddr.as_ptr() as *const libc::sockaddr,
        sockaddr.len(),
    )
    .build();
    // SAFETY: the address is boxed (it does not move) and owned by the op's data with the fd.
    let (result, _data) = unsafe { Op::submit(entry, (sockaddr, fd.clone())) }.await;
    cvt(result)?;
    Ok(fd)
}

/// Receives into the spare capacity of `buf` (at most `buf.capacity() - buf.len()` bytes).
pub async fn recv(fd: &SharedFd, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
    let spare = buf.capacity() - buf.len();
    // SAFETY: the pointer is within buf's allocation; the op owns buf until completion.
    let ptr = unsafe { buf.as_mut_ptr().add(buf.len()) };
    let entry = opcode::Recv::new(types::Fd(fd.as_raw_fd()), ptr, spare as u32).build();
    let (result, (mut buf, _fd)) = unsafe { Op::submit(entry, (buf, fd.clone())) }.await;
    match cvt(result) {
        Ok(n) => {
            debug_assert!(n <= spare);
            // SAFETY: the kernel initialised n bytes after the old length.
            unsafe { buf.set_len(buf.len() + n) };
            (Ok(n), buf)
        }
        Err(e) => (Err(e), buf),
    }
}

/// Sends from several buffers with one `sendmsg`; returns how many bytes went out.
pub async fn sendv(fd: &SharedFd, bufs: Vec<Bytes>) -> (io::Result<usize>, Vec<Bytes>) {
    let iovecs: Box<[libc::iovec]> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: zeroed msghdr is valid; it points at the boxed iovecs kept in the op's data.
    let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    msg.msg_iov = iovecs.as_ptr() as *mut _;
    msg.msg_iovlen = iovecs.len();
    let entry = opcode::SendMsg::new(types::Fd(fd.as_raw_fd()), &*msg as *const _)
        .flags(libc::MSG_NOSIGNAL as u32)
        .build();
    // SAFETY: msg, iovecs and every buffer they point to are owned by the op's data.
    let (result, (bufs, _iov, _msg, _fd)) =
        unsafe { Op::submit(entry, (bufs, iovecs, msg, fd.clone())) }.await;
    (cvt(result), bufs)
}

/// Sends every byte of `bufs`, resubmitting after short sends.
pub async fn send_all(fd: &SharedFd, mut bufs: Vec<Bytes>) -> io::Result<()> {
    bufs.retain(|b| !b.is_empty());
    while !bufs.is_empty() {
        // Bound one sendmsg to IOV_MAX buffers.
        let rest = if bufs.len() > 512 {
            bufs.split_off(512)
        } else {
            Vec::new()
        };
        let (result, mut sent_bufs) = sendv(fd, bufs).await;
        let mut sent = result?;
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "peer stopped reading",
            ));
        }
        while sent > 0 {
            let first = &mut sent_bufs[0];
            if first.len() <= sent {
                sent -= first.len();
                sent_bufs.remove(0);
            } else {
                let _ = first.split_to(sent);
                sent = 0;
            }
        }
        sent_bufs.extend(rest);
        bufs = sent_bufs;
    }
    Ok(())
}

/// Writes all of `buf` at `offset` of a file.
pub async fn write_all_at(fd: &SharedFd, mut buf: Bytes, mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let entry = opcode::Write::new(types::Fd(fd.as_raw_fd()), buf.as_ptr(), buf.len() as u32)
            .offset(offset)
            .build();
        // SAFETY: buf is owned by the op until completion.
        let (result, (b, _fd)) = unsafe { Op::submit(entry, (buf, fd.clone())) }.await;
        buf = b;
        let n = cvt(result)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
        }
        let _ = buf.split_to(n);
        offset += n as u64;
    }
    Ok(())
}

/// Writes every byte of `bufs` at `offset` of a file with `pwritev` through the ring,
/// continuing after short writes.
pub async fn writev_all_at(fd: &SharedFd, mut bufs: Vec<Bytes>, mut offset: u64) -> io::Result<()> {
    bufs.retain(|b| !b.is_empty());
    while !bufs.is_empty() {
        let iovecs: Box<[libc::iovec]> = bufs
            .iter()
            .take(512)
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut _,
                iov_len: b.len(),
            })
            .collect();
        let entry = opcode::Writev::new(
            types::Fd(fd.as_raw_fd()),
            iovecs.as_ptr(),
            iovecs.len() as u32,
        )
        .offset(offset)
        .build();
        // SAFETY: the iovecs and the buffers they point to are owned by the op's data.
        let (result, (b, _iov, _fd)) =
            unsafe { Op::submit(entry, (bufs, iovecs, fd.clone())) }.await;
        bufs = b;
        let mut written = cvt(result)?;
        if written == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "writev returned 0",
            ));
        }
        offset += written as u64;
        while written > 0 {
            if bufs[0].len() <= written {
                written -= bufs[0].len();
                bufs.remove(0);
            } else {
                let _ = bufs[0].split_to(written);
                written = 0;
            }
        }
    }
    Ok(())
}

/// Reads up to `len` bytes at `offset` into the spare capacity of `buf` (reserving as needed).
pub async fn read_at(
    fd: &SharedFd,
    mut buf: BytesMut,
    offset: u64,
    len: usize,
) -> (io::Result<usize>, BytesMut) {
    buf.reserve(len);
    // SAFETY: reserve guarantees `len` writable bytes after buf.len().
    let ptr = unsafe { buf.as_mut_ptr().add(buf.len()) };
    let entry = opcode::Read::new(types::Fd(fd.as_raw_fd()), ptr, len as u32)
        .offset(offset)
        .build();
    let (result, (mut buf, _fd)) = unsafe { Op::submit(entry, (buf, fd.clone())) }.await;
    match cvt(result) {
        Ok(n) => {
            // SAFETY: the kernel initialised n <= len bytes.
            unsafe { buf.set_len(buf.len() + n) };
            (Ok(n), buf)
        }
        Err(e) => (Err(e), buf),
    }
}

/// Reads exactly `len` bytes at `offset` (short reads are continued; EOF is an error).
pub async fn read_exact_at(
    fd: &SharedFd,
    mut buf: BytesMut,
    offset: u64,
    len: usize,
) -> io::Result<BytesMut> {
    let start = buf.len();
    while buf.len() - start < len {
        let done = buf.len() - start;
        let (result, b) = read_at(fd, buf, offset + done as u64, len - done).await;
        buf = b;
        if result? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than expected",
            ));
        }
    }
    Ok(buf)
}

/// fdatasync through the ring.
pub async fn fdatasync(fd: &SharedFd) -> io::Result<()> {
    let entry = opcode::Fsync::new(types::Fd(fd.as_raw_fd()))
        .flags(types::FsyncFlags::DATASYNC)
        .build();
    // SAFETY: only the fd, kept open by the op's data.
    let (result, _) = unsafe { Op::submit(entry, fd.clone()) }.await;
    cvt(result).map(|_| ())
}

/// Sleeps for `duration` with a ring timeout (cancelled if the future is dropped).
pub async fn sleep(duration: Duration) {
    let ts = Box::new(
        types::Timespec::new()
            .sec(duration.as_secs())
            .nsec(duration.subsec_nanos()),
    );
    let entry = opcode::Timeout::new(&*ts as *const _).build();
    // SAFETY: the timespec is boxed and owned by the op's data.
    let (result, _ts) = unsafe { Op::submit(entry, ts) }.await;
    debug_assert!(
        result == -libc::ETIME || result == 0 || result == -libc::ECANCELED,
        "timeout: {result}"
    );
}

/// Runs `future` for at most `duration`; `None` if the time ran out first.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut timer = std::pin::pin!(sleep(duration));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// Writes the 8-byte value 1 to an eventfd (a cross-shard wake-up), completion ignored.
pub fn wake_eventfd(fd: i32) {
    static ONE: u64 = 1;
    let entry = opcode::Write::new(types::Fd(fd), &ONE as *const u64 as *const u8, 8)
        .offset(u64::MAX) // -1: use the file position (eventfds have none)
        .build()
        .user_data(IGNORE);
    driver::with(|d| d.push(entry));
}

/// Posts a WAKE completion on another ring (MSG_RING), completion on ours ignored.
pub fn wake_ring(ring_fd: i32) {
    let entry = opcode::MsgRingData::new(types::Fd(ring_fd), 0, crate::driver::WAKE, None)
        .build()
        .user_data(IGNORE);
    driver::with(|d| d.push(entry));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{spawn, Runtime};
    use crate::RingConfig;
    use std::io::Write;
    use std::time::Instant;

    fn rt() -> Runtime {
        Runtime::new(&RingConfig::default()).unwrap()
    }

    fn file_fd(f: &std::fs::File) -> SharedFd {
        Arc::new(f.try_clone().unwrap().into())
    }

    #[test]
    fn write_then_read_back_through_the_ring() {
        let tmp = tempfile::tempfile().unwrap();
        let fd = file_fd(&tmp);
        rt().block_on(async move {
            write_all_at(&fd, Bytes::from_static(b"hello ring"), 0)
                .await
                .unwrap();
            write_all_at(&fd, Bytes::from_static(b"!"), 10)
                .await
                .unwrap();
            fdatasync(&fd).await.unwrap();
            let buf = read_exact_at(&fd, BytesMut::new(), 0, 11).await.unwrap();
            assert_eq!(&buf[..], b"hello ring!");
            let (n, _) = read_at(&fd, BytesMut::new(), 11, 10).await;
            assert_eq!(n.unwrap(), 0);
        });
    }

    #[test]
    fn connect_reaches_a_local_listener_and_fails_on_a_closed_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"hi").unwrap();
        });
        rt().block_on(async move {
            let fd = connect(addr).await.unwrap();
            let mut buf = BytesMut::with_capacity(16);
            while buf.len() < 2 {
                let (n, b) = recv(&fd, buf).await;
                buf = b;
                assert!(n.unwrap() > 0, "peer closed early");
            }
            assert_eq!(&buf[..], b"hi");
            send_all(&fd, vec![Bytes::from_static(b"x")]).await.unwrap();
        });
        server.join().unwrap();
        // A port nobody listens on: bind, note the port, close, then connect to it.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        rt().block_on(async move {
            let e = connect(closed).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        });
    }

    #[test]
    fn timeout_sleeps_and_dropped_timeout_is_cancelled() {
        rt().block_on(async {
            let start = Instant::now();
            sleep(Duration::from_millis(30)).await;
            assert!(start.elapsed() >= Duration::from_millis(30));
            // Drop a long timeout before it fires: it must not keep the loop busy or crash.
            let long = sleep(Duration::from_secs(60));
            drop(long);
            let start = Instant::now();
            sleep(Duration::from_millis(1)).await;
            assert!(start.elapsed() < Duration::from_secs(5));
        });
    }

    #[test]
    fn dropped_recv_is_cancelled_and_its_slot_freed() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let a: SharedFd = Arc::new(a.into());
        let mut b = b;
        rt().block_on(async move {
            let before = crate::driver::stats().inflight;
            {
                // Submit a recv, then drop its future while the kernel still holds the buffer.
                let mut pending = Box::pin(recv(&a, BytesMut::with_capacity(64)));
                let waker = std::task::Waker::noop();
                let mut cx = Context::from_waker(waker);
                assert!(pending.as_mut().poll(&mut cx).is_pending());
                assert_eq!(crate::driver::stats().inflight, before + 1);
            }
            // The orphaned slot disappears once the cancellation completes.
            for _ in 0..100 {
                if crate::driver::stats().inflight == before {
                    break;
                }
                sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(crate::driver::stats().inflight, before);
            // The cancelled recv consumed nothing: a new one gets the bytes.
            b.write_all(b"late data").unwrap();
            let (n, buf) = recv(&a, BytesMut::with_capacity(64)).await;
            assert_eq!(n.unwrap(), 9);
            assert_eq!(&buf[..], b"late data");
        });
    }

    /// Sets its flag when dropped: tells whether an op's data was freed.
    struct DropFlag(std::rc::Rc<std::cell::Cell<bool>>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }

    /// A recv that stays in flight (nobody writes to the peer), owning a `DropFlag`.
    fn pending_recv(
        fd: &SharedFd,
        freed: &std::rc::Rc<std::cell::Cell<bool>>,
    ) -> Op<(Vec<u8>, SharedFd, DropFlag)> {
        let mut buf = vec![0u8; 64];
        let entry = opcode::Recv::new(types::Fd(fd.as_raw_fd()), buf.as_mut_ptr(), 64).build();
        // SAFETY: the entry points into buf's heap memory, owned by the op's data.
        unsafe { Op::submit(entry, (buf, fd.clone(), DropFlag(freed.clone()))) }
    }

    #[test]
    fn an_op_dropped_after_its_driver_is_gone_leaks_its_buffers_and_touches_no_other_ring() {
        let pair = || {
            let (s, peer) = std::os::unix::net::UnixStream::pair().unwrap();
            (Arc::new(s.into()) as SharedFd, peer)
        };
        let ((a, _a_peer), (b, mut b_peer), (c, _c_peer)) = (pair(), pair(), pair());
        let flag = || std::rc::Rc::new(std::cell::Cell::new(false));
        let freed = [flag(), flag()];
        let first = rt();
        let f = freed.clone();
        // Slots 0 and 1 of the first ring.
        let (op_no_ring, op_other_ring) =
            first.block_on(async move { (pending_recv(&a, &f[0]), pending_recv(&a, &f[1])) });
        drop(first);
        // No ring on this thread any more: the kernel may still write into the buffer.
        drop(op_no_ring);
        assert!(
            !freed[0].get(),
            "an op's buffers were freed with no ring to park them in"
        );
        // A new ring on this thread hands out the same slot keys: the old op must leave the
        // new ring's op in slot 1 alone.
        rt().block_on(async move {
            let (unused, mine) = (flag(), flag());
            let _slot0 = pending_recv(&c, &unused);
            let slot1 = pending_recv(&b, &mine);
            drop(op_other_ring);
            b_peer.write_all(b"mine").unwrap();
            let (n, (buf, _, _)) = slot1.await;
            assert_eq!(n, 4);
            assert_eq!(&buf[..4], b"mine");
        });
        assert!(
            !freed[1].get(),
            "an op's buffers were freed by another ring"
        );
    }

    #[test]
    fn send_all_delivers_every_byte_over_a_socket() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let a: SharedFd = Arc::new(a.into());
        let b: SharedFd = Arc::new(b.into());
        rt().block_on(async move {
            let payload: Vec<Bytes> = (0..100u8).map(|i| Bytes::from(vec![i; 10_000])).collect();
            let expected: Vec<u8> = payload.iter().flat_map(|b| b.iter().copied()).collect();
            let reader = spawn(async move {
                let mut got = BytesMut::with_capacity(expected.len() + 1);
                while got.len() < expected.len() {
                    got.reserve(65536);
                    let (n, g) = recv(&b, got).await;
                    got = g;
                    assert!(n.unwrap() > 0);
                }
                assert_eq!(&got[..], &expected[..]);
            });
            send_all(&a, payload).await.unwrap();
            reader.await.unwrap();
        });
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        #[test]
        fn writes_at_offsets_read_back(chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 1..5000), 1..8)) {
            let tmp = tempfile::tempfile().unwrap();
            let fd = file_fd(&tmp);
            let expected: Vec<u8> = chunks.concat();
            rt().block_on(async move {
                let mut offset = 0u64;
                for c in chunks {
                    let len = c.len() as u64;
                    write_all_at(&fd, Bytes::from(c), offset).await.unwrap();
                    offset += len;
                }
                let buf = read_exact_at(&fd, BytesMut::new(), 0, expected.len()).await.unwrap();
                assert_eq!(&buf[..], &expected[..]);
            });
        }
    }
}
