//! A blocking client transport over a `std` Unix socket, for use inside host processes.
//!
//! - No threads and no runtime: the calling threads do all the I/O.
//! - Many threads share one connection. Writes take a short lock (one frame or one batch per
//!   `send`); replies are matched to requests by their code. Whichever waiting thread finds
//!   the socket idle reads the next frame and hands it to its owner (leader/follower), so
//!   replies may arrive in any order and several requests are in flight at once.
//! - Writes use `MSG_NOSIGNAL`: a dead server is an error, never a SIGPIPE that kills the host
//!   (stock p11-kit-client.so dies with status 141, rpc §8).
//! - Every call has a hard deadline: each `send`/`recv` waits in `poll` for at most the time
//!   left, so a server that trickles bytes or stops reading cannot stretch a call; connecting
//!   is bounded too. A timeout or any transport error marks the connection broken, and every
//!   later call fails fast with the same error class until the owner reconnects.
//! - A reply whose code nobody waits for is kept (bounded), not waited on forever (rpc §2.3).

use std::collections::HashMap;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};
use zeroize::Zeroizing;

use crate::dialect::{Dialect, MAX_VERSION};
use crate::error::{Error, ProtocolError, Result};
use crate::frame::{self, CLIENT_OPTIONS, HEADER_LEN, Header, Limits};
use crate::message::{Reply, Request};
use crate::value::Arg;
use crate::{CallId, Rv};

/// First request code, as stock clients use (rpc §2.3).
const FIRST_CODE: u32 = 0x10;
/// Replies nobody claimed that we keep before declaring the peer broken.
const MAX_UNCLAIMED: usize = 1024;

/// How to connect.
#[derive(Clone, Debug)]
pub struct Options {
    /// Deadline for connecting and exchanging the version byte (together), and for each call
    /// from the first byte sent to the last byte of its reply.
    pub timeout: Duration,
    /// The version we offer (2 unless testing).
    pub offer: u8,
    /// Caps on what the server may send.
    pub limits: Limits,
    /// The options string in every frame header.
    pub options: Vec<u8>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            // Long enough for a PIN-pad login on a slow link; short enough not to hang forever.
            timeout: Duration::from_secs(120),
            offer: MAX_VERSION,
            limits: Limits::DEFAULT,
            options: CLIENT_OPTIONS.to_vec(),
        }
    }
}

/// Why a connection is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Broken {
    Closed,
    Timeout,
    Io,
    Protocol,
}

impl Broken {
    fn error(self) -> Error {
        match self {
            Self::Closed => Error::Closed,
            Self::Timeout => Error::Timeout,
            Self::Io => Error::Io(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection failed earlier",
            )),
            Self::Protocol => Error::Protocol(ProtocolError::BadValue(
                "stream (an earlier reply was malformed)",
            )),
        }
    }

    fn of(e: &Error) -> Self {
        match e {
            Error::Closed => Self::Closed,
            Error::Timeout => Self::Timeout,
            Error::Protocol(_) => Self::Protocol,
            _ => Self::Io,
        }
    }
}

#[derive(Debug, Default)]
struct ReadState {
    /// A thread is reading from the socket right now.
    reading: bool,
    /// Replies read by another thread, by code.
    arrived: HashMap<u32, Zeroizing<Vec<u8>>>,
    broken: Option<Broken>,
    /// Threads waiting on `ready` (std's condition variable makes a system call on every
    /// notification, waiters or not: with one thread, two per pipelined signature).
    waiting: usize,
}

/// A connection to a p11-kit RPC server.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    dialect: Dialect,
    next_code: AtomicU32,
    write: Mutex<()>,
    read: Mutex<ReadState>,
    ready: Condvar,
    /// Bytes read from the socket but not yet parsed; only the thread holding the reader role
    /// (`ReadState::reading`) touches it.
    inbox: Mutex<Inbox>,
    opts: Options,
    pid: rustix::process::Pid,
}

/// Received bytes, consumed from `start`. Consumed bytes are wiped at once: replies can hold
/// decrypted data and derived secrets.
#[derive(Debug, Default)]
struct Inbox {
    data: Zeroizing<Vec<u8>>,
    start: usize,
}

/// Read at least this much per `recv` when the frame's size is not known yet: most replies,
/// and usually every reply of a pipelined batch, arrive with one system call.
const READ_CHUNK: usize = 16 * 1024;

impl Inbox {
    fn pending(&self) -> &[u8] {
        &self.data[self.start..]
    }

    /// Mark `n` bytes consumed, wiping them.
    fn consume(&mut self, n: usize) {
        let end = self.start + n;
        self.data[self.start..end].fill(0);
        self.start = end;
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        } else if self.start >= READ_CHUNK {
            // Compact, and wipe the copies the move leaves behind.
            let len = self.data.len() - self.start;
            self.data.copy_within(self.start.., 0);
            self.data[len..].fill(0);
            self.data.truncate(len);
            self.start = 0;
        }
    }

    /// Append up to `want` bytes (at least one `READ_CHUNK`) from `stream`, waiting until
    /// `deadline` at the most.
    fn fill(&mut self, stream: &UnixStream, want: usize, deadline: Instant) -> Result<()> {
        let old = self.data.len();
        self.data.resize(old + want.max(READ_CHUNK), 0);
        let got = recv_some(stream, &mut self.data[old..], deadline);
        self.data.truncate(old + *got.as_ref().unwrap_or(&0));
        if got? == 0 {
            return Err(Error::Closed);
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn io_error(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => Error::Closed,
        _ => Error::Io(e),
    }
}

/// The time left until `deadline`, or [`Error::Timeout`] if none is.
fn time_left(deadline: Instant) -> Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or(Error::Timeout)
}

/// Wait until `stream` is ready for `events`, or fail with [`Error::Timeout`] at `deadline`.
/// Error and hang-up conditions count as ready: the `recv`/`send` that follows reports them.
fn wait_ready(stream: &UnixStream, events: PollFlags, deadline: Instant) -> Result<()> {
    loop {
        let left = time_left(deadline)?;
        // Round up: poll's timeout is in milliseconds, and waking early only loops once more.
        let ts = Timespec::try_from(left + Duration::from_micros(999)).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(stream, events)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) | Err(Errno::INTR) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(io_error(e.into())),
        }
    }
}

/// One `recv` of up to `buf.len()` bytes (0 at EOF), waiting until `deadline` at the most.
///
/// Waits in `poll` for input, then reads without blocking. Not a blocking `recv`: a Unix
/// stream socket has one wait queue for its readers and its writers, and each time the server
/// reads one of our requests (freeing room in our send buffer) the kernel wakes everything
/// queued there. A thread blocked in `recv` for its reply wakes up for nothing, once per call:
/// one more sleep and wake-up, and on another CPU an interrupt to wake it, while the server
/// works on the request. `poll` asks for input only, and is woken for input only
/// (docs/design.md, "Waiting for input").
fn recv_some(stream: &UnixStream, buf: &mut [u8], deadline: Instant) -> Result<usize> {
    loop {
        wait_ready(stream, PollFlags::IN, deadline)?;
        match rustix::net::recv(stream, &mut *buf, RecvFlags::DONTWAIT) {
            Ok((n, _)) => return Ok(n),
            // A readiness with nothing to read, or a signal: wait again.
            Err(Errno::INTR | Errno::AGAIN) => {}
            Err(e) => return Err(io_error(e.into())),
        }
    }
}

/// Write all of `buf` with `MSG_NOSIGNAL`, by `deadline`.
fn send_all(stream: &UnixStream, mut buf: &[u8], deadline: Instant) -> Result<()> {
    while !buf.is_empty() {
        // Try first: there is almost always room for a request.
        match rustix::net::send(stream, buf, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
            Ok(0) => return Err(Error::Closed),
            Ok(n) => buf = &buf[n..],
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => wait_ready(stream, PollFlags::OUT, deadline)?,
            Err(e) => return Err(io_error(e.into())),
        }
    }
    Ok(())
}

/// Read the server's version byte, by `deadline`.
fn read_version(stream: &UnixStream, deadline: Instant) -> Result<u8> {
    let mut b = [0u8; 1];
    match recv_some(stream, &mut b, deadline)? {
        0 => Err(Error::Closed),
        _ => Ok(b[0]),
    }
}

/// Exchange the version byte on a fresh stream: offer `offer`, return the server's answer.
fn exchange_version(stream: &UnixStream, offer: u8, deadline: Instant) -> Result<u8> {
    send_all(stream, &[offer], deadline)?;
    read_version(stream, deadline)
}

/// Connect to `path` by `deadline`. A server that does not accept (its backlog is full: it is
/// stopped or overloaded) would block `connect` for ever; `SO_SNDTIMEO` bounds that wait
/// (Linux `unix_stream_connect`), and the kernel then answers `EAGAIN`.
fn open(path: &Path, deadline: Instant) -> Result<UnixStream> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketType, sockopt};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    let addr = SocketAddrUnix::new(path).map_err(io::Error::from)?;
    loop {
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(time_left(deadline)?))
            .map_err(io::Error::from)?;
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => break,
            Err(Errno::INTR) => {}
            Err(e) => return Err(io_error(e.into())),
        }
    }
    Ok(UnixStream::from(fd))
}

impl Connection {
    /// Connect to the server at `path` and negotiate the protocol version: offer
    /// `opts.offer`; if the server closes the connection (p11-kit 0.23, go-p11-kit), reconnect
    /// and offer 0, as stock clients do (rpc §2.2).
    pub fn connect(path: &Path, opts: Options) -> Result<Self> {
        let deadline = Instant::now() + opts.timeout;
        let stream = open(path, deadline)?;
        match exchange_version(&stream, opts.offer, deadline) {
            Ok(v) => Ok(Self::with_version(stream, v.min(opts.offer), opts)),
            Err(e @ (Error::Closed | Error::Io(_))) if opts.offer > 0 => {
                tracing::debug!(cause = %e, "version exchange failed; retrying with version 0");
                let stream = open(path, deadline)?;
                // Whatever a server answers to 0, version 0 it is.
                exchange_version(&stream, 0, deadline)?;
                Ok(Self::with_version(stream, 0, opts))
            }
            Err(e) => Err(e),
        }
    }

    /// Connect, and send `first` in the same write as the version byte: the answer to the
    /// version byte and the first replies then come back in one round trip.
    ///
    /// Only requests whose encoding is the same in every protocol version may go first (they
    /// are encoded before the version is known): `C_Initialize`, `C_GetSlotList`,
    /// `C_GetTokenInfo`, ... — anything without a mechanism, an attribute template of a
    /// generation-dependent class, or a version-dependent call id. Others are refused with
    /// [`Error::Invalid`]. The fallback of [`Connection::connect`] applies: if the server
    /// closes the connection (p11-kit 0.23, go-p11-kit), the same bytes go again after a `0`.
    pub fn connect_with(
        path: &Path,
        opts: Options,
        first: &[Request],
    ) -> Result<(Self, Vec<Result<Vec<Arg>>>)> {
        let mut bodies = Vec::with_capacity(first.len());
        for req in first {
            let body = Zeroizing::new(req.encode(Dialect::V0)?);
            let same = |d| req.encode(d).map(|b| Zeroizing::new(b) == body);
            if !same(Dialect::V1)? || !same(Dialect::V2)? {
                return Err(Error::Invalid(
                    "this request depends on the protocol version",
                ));
            }
            bodies.push(body);
        }
        let mut wire = Zeroizing::new(vec![opts.offer]);
        for (i, body) in bodies.iter().enumerate() {
            wire.extend_from_slice(&frame::encode(FIRST_CODE + i as u32, &opts.options, body));
        }
        let deadline = Instant::now() + opts.timeout;
        let send_offer = |wire: &[u8]| -> Result<(UnixStream, u8)> {
            let stream = open(path, deadline)?;
            send_all(&stream, wire, deadline)?;
            let v = read_version(&stream, deadline)?;
            Ok((stream, v))
        };
        let (stream, version) = match send_offer(&wire) {
            Ok((stream, v)) => (stream, v.min(opts.offer)),
            Err(e @ (Error::Closed | Error::Io(_))) if opts.offer > 0 => {
                tracing::debug!(cause = %e, "version exchange failed; retrying with version 0");
                wire[0] = 0;
                let (stream, _) = send_offer(&wire)?;
                (stream, 0)
            }
            Err(e) => return Err(e),
        };
        let conn = Self::with_version(stream, version, opts);
        conn.next_code
            .store(FIRST_CODE + first.len() as u32, Ordering::Relaxed);
        let replies = first
            .iter()
            .enumerate()
            .map(|(i, req)| {
                conn.await_reply(FIRST_CODE + i as u32, deadline)
                    .and_then(|body| conn.finish(req, &body))
            })
            .collect();
        Ok((conn, replies))
    }

    /// Use an already connected stream (e.g. one end of a socketpair); negotiates the version
    /// without the reconnect fallback.
    pub fn from_stream(stream: UnixStream, opts: Options) -> Result<Self> {
        let deadline = Instant::now() + opts.timeout;
        let v = exchange_version(&stream, opts.offer, deadline)?;
        Ok(Self::with_version(stream, v.min(opts.offer), opts))
    }

    fn with_version(stream: UnixStream, version: u8, opts: Options) -> Self {
        tracing::debug!(version, "negotiated protocol version");
        Self {
            stream,
            dialect: Dialect::from_version(version),
            next_code: AtomicU32::new(FIRST_CODE),
            write: Mutex::new(()),
            read: Mutex::new(ReadState::default()),
            ready: Condvar::new(),
            inbox: Mutex::new(Inbox::default()),
            opts,
            pid: rustix::process::getpid(),
        }
    }

    /// The negotiated dialect.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Whether the connection failed and must be replaced.
    pub fn is_broken(&self) -> bool {
        lock(&self.read).broken.is_some()
    }

    /// Whether this connection was opened by another process (we are a `fork()` child that
    /// inherited it). Such a connection must not be used: the parent owns the stream.
    pub fn is_inherited(&self) -> bool {
        self.pid != rustix::process::getpid()
    }

    fn next_code(&self) -> u32 {
        loop {
            let c = self.next_code.fetch_add(1, Ordering::Relaxed);
            // Code 0 is "invalid header values" to stock clients; never use it.
            if c != 0 {
                return c;
            }
        }
    }

    fn mark_broken(&self, st: &mut ReadState, why: Broken) {
        if st.broken.is_none() {
            st.broken = Some(why);
            // Wake everyone: nobody will read their reply now. Shut the socket so the server
            // sees us go.
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
        self.wake_all(st);
    }

    /// Wake the threads waiting for their reply (`st` is the locked read state).
    fn wake_all(&self, st: &ReadState) {
        if st.waiting > 0 {
            self.ready.notify_all();
        }
    }

    /// Read one frame from the socket (called by the thread that holds the reader role).
    fn read_frame(&self, deadline: Instant) -> Result<(u32, Zeroizing<Vec<u8>>)> {
        let mut inbox = lock(&self.inbox);
        loop {
            let pending = inbox.pending();
            // Check the header against the limits as soon as it is in, before reading on.
            let want = match pending.get(..HEADER_LEN) {
                None => HEADER_LEN - pending.len(),
                Some(h) => {
                    let mut head = [0u8; HEADER_LEN];
                    head.copy_from_slice(h);
                    let header = Header::parse(&head, self.opts.limits)?;
                    let total = header.frame_len();
                    if pending.len() >= total {
                        let opt_end = HEADER_LEN + header.options_len as usize;
                        let body = Zeroizing::new(pending[opt_end..total].to_vec());
                        inbox.consume(total);
                        return Ok((header.code, body));
                    }
                    total - pending.len()
                }
            };
            inbox.fill(&self.stream, want, deadline)?;
        }
    }

    /// Wait for the reply with `code`, reading frames for others as needed.
    fn await_reply(&self, code: u32, deadline: Instant) -> Result<Zeroizing<Vec<u8>>> {
        let mut st = lock(&self.read);
        loop {
            if let Some(body) = st.arrived.remove(&code) {
                return Ok(body);
            }
            if let Some(b) = st.broken {
                return Err(b.error());
            }
            let now = Instant::now();
            if now >= deadline {
                self.mark_broken(&mut st, Broken::Timeout);
                return Err(Error::Timeout);
            }
            if st.reading {
                st.waiting += 1;
                st = self
                    .ready
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                st.waiting -= 1;
                continue;
            }
            st.reading = true;
            drop(st);
            let got = self.read_frame(deadline);
            st = lock(&self.read);
            st.reading = false;
            match got {
                Ok((c, body)) if c == code => {
                    // Another thread takes over reading.
                    self.wake_all(&st);
                    return Ok(body);
                }
                Ok((c, body)) => {
                    if st.arrived.len() >= MAX_UNCLAIMED {
                        tracing::warn!("server sent too many replies nobody asked for");
                        self.mark_broken(&mut st, Broken::Protocol);
                        return Err(Broken::Protocol.error());
                    }
                    st.arrived.insert(c, body);
                    self.wake_all(&st);
                }
                Err(e) => {
                    self.mark_broken(&mut st, Broken::of(&e));
                    return Err(e);
                }
            }
        }
    }

    fn check_usable(&self) -> Result<()> {
        if let Some(b) = lock(&self.read).broken {
            return Err(b.error());
        }
        Ok(())
    }

    fn encode(&self, req: &Request) -> Result<Zeroizing<Vec<u8>>> {
        if !self.dialect.knows(req.call) {
            // A 0.24 server drops the connection on ids it does not know (rpc §6).
            return Err(Error::Unsupported {
                what: "the server's p11-kit version does not implement this function",
                rv: Rv(crate::consts::CKR_FUNCTION_NOT_SUPPORTED),
            });
        }
        req.encode(self.dialect).map(Zeroizing::new)
    }

    fn send(&self, frames: &[u8], deadline: Instant) -> Result<()> {
        let _w = lock(&self.write);
        self.check_usable()?;
        send_all(&self.stream, frames, deadline).inspect_err(|e| {
            let mut st = lock(&self.read);
            self.mark_broken(&mut st, Broken::of(e));
        })
    }

    fn finish(&self, req: &Request, body: &[u8]) -> Result<Vec<Arg>> {
        match Reply::decode(body, req.call, self.dialect, mechanism_of(req)) {
            Ok(Reply::Ok { args, .. }) => Ok(args),
            Ok(Reply::Error(rv)) => Err(Error::Rv { call: req.call, rv }),
            Err(e) => {
                // A reply we cannot parse leaves the stream in sync (we read the whole frame),
                // but the server is not speaking our dialect: stop using it.
                tracing::warn!(call = %req.call, cause = %e, "malformed reply");
                let mut st = lock(&self.read);
                self.mark_broken(&mut st, Broken::Protocol);
                Err(e.into())
            }
        }
    }

    /// Send one request and wait for its reply. An ERROR reply becomes [`Error::Rv`].
    pub fn call(&self, req: &Request) -> Result<Vec<Arg>> {
        let body = Zeroizing::new(self.encode(req)?);
        let code = self.next_code();
        let deadline = Instant::now() + self.opts.timeout;
        self.send(
            &Zeroizing::new(frame::encode(code, &self.opts.options, &body)),
            deadline,
        )?;
        let reply = self.await_reply(code, deadline)?;
        self.finish(req, &reply)
    }

    /// Pipeline: write all requests in one `send`, then collect every reply (one round trip).
    ///
    /// Stock servers handle a connection's requests in order, so a request may depend on the
    /// effect of an earlier one in the same batch (e.g. `C_SignInit` then `C_Sign`). If a
    /// request cannot be encoded for this server, nothing is sent.
    pub fn call_batch(&self, reqs: &[Request]) -> Vec<Result<Vec<Arg>>> {
        // Bodies first, then one buffer of the right size: requests may carry PINs, and neither
        // a temporary frame nor a growing buffer may leave a copy behind.
        let mut bodies = Vec::with_capacity(reqs.len());
        for req in reqs {
            match self.encode(req) {
                Ok(body) => bodies.push(Zeroizing::new(body)),
                Err(e) => {
                    let what = e.to_string();
                    let rv = e.rv();
                    return reqs
                        .iter()
                        .map(|_| {
                            Err(Error::Unsupported {
                                what: leak_reason(&what),
                                rv,
                            })
                        })
                        .collect();
                }
            }
        }
        let options = &self.opts.options;
        let total = bodies
            .iter()
            .map(|b| HEADER_LEN + options.len() + b.len())
            .sum();
        let mut wire = Zeroizing::new(Vec::with_capacity(total));
        let mut codes = Vec::with_capacity(reqs.len());
        for body in &bodies {
            let code = self.next_code();
            frame::encode_into(&mut wire, code, options, body);
            codes.push(code);
        }
        drop(bodies);
        let deadline = Instant::now() + self.opts.timeout;
        if let Err(e) = self.send(&wire, deadline) {
            let b = Broken::of(&e);
            return reqs.iter().map(|_| Err(b.error())).collect();
        }
        reqs.iter()
            .zip(codes)
            .map(|(req, code)| {
                self.await_reply(code, deadline)
                    .and_then(|body| self.finish(req, &body))
            })
            .collect()
    }

    /// Close the connection (the server sees EOF).
    pub fn close(&self) {
        let mut st = lock(&self.read);
        self.mark_broken(&mut st, Broken::Closed);
    }
}

/// Static reasons only: the batch error path reuses a fixed message.
fn leak_reason(_what: &str) -> &'static str {
    "a request in the batch cannot be sent to this server"
}

fn mechanism_of(req: &Request) -> Option<u64> {
    if req.call != CallId::DeriveKey2 {
        return None;
    }
    req.args.iter().find_map(|a| match a {
        Arg::Mechanism(Some(m)) => Some(m.ty),
        _ => None,
    })
}

impl Drop for Connection {
    fn drop(&mut self) {
        // In a fork child the parent still uses this socket: leave it alone.
        if !self.is_inherited() {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
    }
}
