//! One connection: a thread of its own that reads requests, calls the module and writes the
//! replies, like the process `p11-kit server` forks per connection, plus a shared pool for the
//! requests that must run concurrently.
//!
//! - **Fast path.** The connection thread waits in `poll` for input and reads with one `recv`
//!   into a buffer (a frame header and body usually arrive in one call; [`ReadBuf::wait_fill`]
//!   says why not a blocking `recv`), takes every complete frame in it, runs them
//!   itself and sends their replies with one `send`. A request therefore costs the peer's
//!   wake-up of this thread and nothing else: no task, no channel, no hand-off.
//! - **Concurrency.** Requests on the same session form a *lane* and run in arrival order;
//!   requests of different lanes may run concurrently and reply out of order. Of the frames
//!   read together, the connection thread runs one lane and the session-less calls itself and
//!   gives the other lanes to the **pool** (the runtime's blocking threads). A lane already busy
//!   in the pool gets later requests queued behind it. Replies leave through the connection's
//!   out queue ([`Link::send`]): one thread sends at a time, the others append and go on.
//!   Logins and PIN calls without a PIN (PIN pad, protected path) always go to the pool.
//! - **Requests arriving while the thread is inside the module** are noticed by the
//!   [watcher](crate::watch): before running requests itself, the thread arms its socket in the
//!   watcher's epoll set and parks its read buffer in [`Sched`]; if a request arrives, the
//!   watcher reads it (non-blocking) and hands it to the pool (behind the running lane if it is
//!   on the same session). When the thread is done it disarms the socket and takes its buffer
//!   back. A slow call (a PIN pad, a slow token) therefore never blocks the connection's other
//!   sessions.
//! - `C_Initialize`, `C_Finalize` and `C_CloseAllSessions` are barriers: the thread waits for
//!   everything in flight, runs them, and reads nothing meanwhile. `C_WaitForSlotEvent` is an
//!   async task on the runtime ([`slot_event`]) holding no thread.
//! - Caps: [`Config::max_in_flight`](crate::server::Config) requests, and as many slot waits,
//!   read and not answered, a reply counting as answered once sent (the thread, or the watcher,
//!   stops reading); frame sizes from [`Limits`].

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use p11fwd_wire::consts::{
    CKF_DONT_BLOCK, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_FUNCTION_FAILED, CKR_FUNCTION_NOT_SUPPORTED,
    CKR_GENERAL_ERROR,
};
use p11fwd_wire::dialect::MAX_VERSION;
use p11fwd_wire::frame::{HEADER_LEN, Header, Limits};
use p11fwd_wire::{Arg, ByteArray, CallId, Dialect, ProtocolError, Reply, Request, Rv};
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, error, warn};
use zeroize::Zeroize;

use crate::dispatch;
use crate::state::{Conn, Shared, lock};
use crate::watch::Watcher;

/// What every connection of a server shares.
#[derive(Debug)]
pub(crate) struct Env {
    pub(crate) shared: Arc<Shared>,
    pub(crate) limits: Limits,
    pub(crate) max_in_flight: usize,
    pub(crate) max_waits_per_connection: usize,
    /// Pending blocking `C_WaitForSlotEvent` calls, all connections together.
    pub(crate) waits: Arc<Semaphore>,
    pub(crate) rt: Handle,
    pub(crate) watcher: Arc<Watcher>,
}

/// Held for as long as a connection exists (its thread, its pool jobs and slot waits): the
/// connection-limit permit, the idle-timeout count, the shutdown-completion sender.
pub(crate) type Keep = Box<dyn Send + Sync + std::fmt::Debug>;

/// What the reply of one request answers.
const ONE_REQUEST: Answered = Answered {
    requests: 1,
    slot_waits: 0,
};

/// Read buffers start (and shrink back to) this size.
const INITIAL_BUF: usize = 1024;
/// A buffer grown past this (a large frame) is shrunk back once empty.
const SHRINK_ABOVE: usize = 64 << 10;

/// Bytes read from a connection and not yet taken as frames (`buf[start..]`). Consumed bytes
/// are wiped: frames carry PINs.
#[derive(Debug, Default)]
pub(crate) struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
}

impl ReadBuf {
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn header(&self, limits: Limits) -> Result<Option<Header>, ProtocolError> {
        match self.pending().first_chunk::<HEADER_LEN>() {
            Some(h) => Header::parse(h, limits).map(Some),
            None => Ok(None),
        }
    }

    /// The next complete frame: its code and the range of its body in `buf`.
    fn peek(&self, limits: Limits) -> Result<Option<(u32, Range<usize>)>, ProtocolError> {
        let Some(h) = self.header(limits)? else {
            return Ok(None);
        };
        if self.pending().len() < h.frame_len() {
            return Ok(None);
        }
        let body = self.start + HEADER_LEN + h.options_len as usize;
        Ok(Some((h.code, body..body + h.body_len as usize)))
    }

    fn has_frame(&self, limits: Limits) -> bool {
        matches!(self.peek(limits), Ok(Some(_)) | Err(_))
    }

    /// Wipe and drop everything up to `end`.
    fn consume(&mut self, end: usize) {
        self.buf[self.start..end].zeroize();
        self.start = end;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > SHRINK_ABOVE {
                self.buf = Vec::new();
            }
        }
    }

    /// Wait for input, then [`fill`](Self::fill) without blocking. `Ok(0)` is the end of the
    /// stream.
    ///
    /// The wait is a `poll` for input, not a blocking `recv`: a Unix stream socket has one wait
    /// queue for its readers and its writers, and each time the client reads one of our
    /// replies (freeing room in our send buffer) the kernel wakes everything queued there. A
    /// thread blocked in `recv` would wake up for nothing once per request, while the client
    /// works on the reply, taking a CPU from it or from the arming thread (docs/design.md,
    /// "Waiting for input").
    fn wait_fill(&mut self, sock: &UnixStream, limits: Limits) -> rustix::io::Result<usize> {
        loop {
            let mut fds = [PollFd::new(sock, PollFlags::IN)];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(e),
            }
            match self.fill(sock, RecvFlags::DONTWAIT, limits) {
                Err(Errno::AGAIN) => {}
                r => return r,
            }
        }
    }

    /// One `recv` into the free space, after making room for the frame being read. `Ok(0)` is
    /// the end of the stream.
    fn fill(
        &mut self,
        sock: &UnixStream,
        flags: RecvFlags,
        limits: Limits,
    ) -> rustix::io::Result<usize> {
        if self.start > 0 {
            let n = self.buf.len() - self.start;
            self.buf.copy_within(self.start.., 0);
            self.buf[n..].zeroize();
            self.buf.truncate(n);
            self.start = 0;
        }
        let need = match self.header(limits) {
            Ok(Some(h)) => h.frame_len(),
            _ => HEADER_LEN,
        }
        .max(INITIAL_BUF);
        if self.buf.capacity() < need {
            // Grow by hand so that the old allocation is wiped.
            let mut grown = Vec::with_capacity(need);
            grown.extend_from_slice(&self.buf);
            self.buf.zeroize();
            self.buf = grown;
        }
        loop {
            match rustix::net::recv(sock, rustix::buffer::spare_capacity(&mut self.buf), flags) {
                Err(Errno::INTR) => continue,
                r => return r.map(|(n, _)| n),
            }
        }
    }
}

/// A request taken from the socket.
#[derive(Debug)]
struct Job {
    code: u32,
    body_len: usize,
    lane: Option<u64>,
    work: Work,
}

#[derive(Debug)]
enum Work {
    Call(Request),
    /// An unknown call id: answered with this error.
    Refuse(Rv),
}

/// How a request is run.
enum Route {
    /// `C_WaitForSlotEvent`: an async task.
    Wait,
    /// Waits for everything in flight; nothing is read until it is done.
    Barrier,
    /// A call in `lane` (its session, or none); `slow` if it may wait for a person.
    Call { lane: Option<u64>, slow: bool },
}

fn route(req: &Request) -> Route {
    if req.call == CallId::WaitForSlotEvent {
        return Route::Wait;
    }
    if dispatch::is_barrier(req.call) {
        return Route::Barrier;
    }
    Route::Call {
        lane: dispatch::session_of(req),
        slow: may_block(req),
    }
}

/// PIN calls without a PIN: the token asks for it on its own PIN pad (protected authentication
/// path) and may wait for a person.
fn may_block(req: &Request) -> bool {
    let null = |i: usize| {
        matches!(
            req.args.get(i),
            Some(Arg::ByteArray(ByteArray::Null | ByteArray::Length(_)))
        )
    };
    match req.call {
        CallId::Login | CallId::LoginUser => null(2),
        CallId::InitToken | CallId::InitToken2 | CallId::InitPIN => null(1),
        CallId::SetPIN => null(1) || null(2),
        _ => false,
    }
}

/// Why the watcher stopped reading a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    No,
    /// The next frame is a barrier: the connection thread runs it.
    Barrier,
    /// `max_in_flight` requests in flight; reading resumes when one finishes.
    Full,
    /// End of stream, read error or malformed frame.
    Closed,
}

/// A session's requests running or queued.
#[derive(Debug, Default)]
struct Lane {
    queue: VecDeque<Job>,
}

/// Scheduling state of a connection.
#[derive(Debug)]
struct Sched {
    /// Requests read and not yet answered (slot waits excepted).
    in_flight: usize,
    /// `C_WaitForSlotEvent` requests read and not yet answered. Capped like `in_flight`, but
    /// apart from it: barriers do not wait for slot waits (C_Finalize cancels them).
    slot_waits: usize,
    /// Lanes with a request running; the queue holds the ones waiting behind it. The lane the
    /// connection thread runs (if any) is drained by that thread, the others by a pool thread.
    lanes: HashMap<u64, Lane>,
    /// The read buffer, while the watcher may read the connection.
    watched: Option<ReadBuf>,
    hold: Hold,
    /// The connection thread waits on [`Link::idle`].
    waiting: bool,
}

/// What a reply frame answers, for the accounting done once it is sent.
#[derive(Debug, Default, Clone, Copy)]
struct Answered {
    /// Requests counted in [`Sched::in_flight`].
    requests: usize,
    /// Slot waits counted in [`Sched::slot_waits`].
    slot_waits: usize,
}

/// Replies not sent yet. One thread at a time sends (`sending`); the others append and go on, so
/// a peer that stops reading blocks one thread of ours, not one per reply. The requests a
/// queued reply answers stay in flight until it is sent, so the in-flight caps also bound this
/// queue.
#[derive(Debug, Default)]
struct OutQueue {
    bytes: Vec<u8>,
    answered: Answered,
    sending: bool,
    /// A send failed: the peer is gone, replies are dropped.
    broken: bool,
}

/// A connection, shared by its thread, its pool jobs, its slot waits and the watcher.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) id: u64,
    sock: Arc<UnixStream>,
    env: Arc<Env>,
    conn: Arc<Mutex<Conn>>,
    dialect: Dialect,
    /// Replies waiting to be sent, and whether a thread is sending them (see [`Link::send`]).
    out: Mutex<OutQueue>,
    sched: Mutex<Sched>,
    idle: Condvar,
    /// Bumped by C_Finalize and when the connection ends: pending slot waits give up.
    cancel_waits: watch::Sender<u64>,
    conn_waits: Arc<Semaphore>,
    _keep: Keep,
}

/// Serve one connection on the calling thread (spawned per connection by the accept loop).
pub(crate) fn serve(env: Arc<Env>, sock: UnixStream, keep: Keep) {
    let sock = Arc::new(sock);
    let id = env.shared.next_conn_id();
    if !env.watcher.register(id, &sock) {
        return;
    }
    struct Unregister<'a>(&'a Watcher, u64);
    impl Drop for Unregister<'_> {
        fn drop(&mut self) {
            self.0.unregister(self.1);
        }
    }
    let _unregister = Unregister(&env.watcher, id);
    let mut rb = ReadBuf::default();
    let offered = loop {
        if let Some(&b) = rb.pending().first() {
            rb.consume(rb.start + 1);
            break b;
        }
        match rb.wait_fill(&sock, env.limits) {
            Ok(0) => {
                debug!("connection closed before the version byte");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                debug!(cause = %e, "connection closed before the version byte");
                return;
            }
        }
    };
    let answer = offered.min(MAX_VERSION);
    let dialect = Dialect::from_version(answer);
    debug!(offered, version = dialect.version(), "connection accepted");
    let link = Arc::new(Link {
        id,
        sock,
        conn: Arc::new(Mutex::new(Conn::new(id, dialect))),
        dialect,
        out: Mutex::new(OutQueue::default()),
        sched: Mutex::new(Sched {
            in_flight: 0,
            slot_waits: 0,
            lanes: HashMap::new(),
            watched: None,
            hold: Hold::No,
            waiting: false,
        }),
        idle: Condvar::new(),
        cancel_waits: watch::channel(0u64).0,
        conn_waits: Arc::new(Semaphore::new(env.max_waits_per_connection)),
        env: env.clone(),
        _keep: keep,
    });
    link.send(&[answer], Answered::default());
    env.watcher.attach(&link);
    let mut worker = Worker {
        link,
        rb,
        out: Vec::new(),
        out_lane: None,
        inline: Vec::new(),
        closed: false,
    };
    worker.run();
}

/// The connection thread's own state.
struct Worker {
    link: Arc<Link>,
    rb: ReadBuf,
    /// Replies of the requests this thread ran, sent together.
    out: Vec<u8>,
    /// The lane of the replies in `out`.
    out_lane: Option<u64>,
    /// Requests this thread will run, in arrival order.
    inline: Vec<Job>,
    /// The watcher saw the end of the stream (or a malformed frame).
    closed: bool,
}

/// Closes what a connection left open, even if its thread panics.
struct Release<'a>(&'a Link);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        // End the pending slot waits, wait for everything in flight, then clean up.
        self.0.cancel_waits.send_modify(|e| *e = e.wrapping_add(1));
        self.0.wait_until(|s| s.in_flight == 0);
        dispatch::release_all(&self.0.env.shared, &self.0.conn);
        debug!(conn = self.0.id, "connection closed");
    }
}

impl Worker {
    fn run(&mut self) {
        let link = self.link.clone();
        let _release = Release(&link);
        let limits = link.env.limits;
        loop {
            let go_on = self.batch();
            self.flush();
            if !go_on || self.closed || link.env.watcher.stopping() {
                break;
            }
            match self.rb.wait_fill(&link.sock, limits) {
                Ok(0) => {
                    if self.rb.pending().is_empty() {
                        debug!(conn = link.id, "peer closed the connection");
                    } else {
                        warn!(
                            conn = link.id,
                            cause = "end of stream inside a frame",
                            "malformed frame; closing the connection"
                        );
                    }
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(conn = link.id, cause = %e, "read failed; closing the connection");
                    break;
                }
            }
        }
    }

    /// Send the replies gathered so far.
    fn flush(&mut self) {
        if !self.out.is_empty() {
            self.link.send(&self.out, Answered::default());
            self.out.zeroize();
            if self.out.capacity() > SHRINK_ABOVE {
                self.out = Vec::new();
            }
        }
    }

    /// At a cap: run what this thread holds, send the replies, then wait until `room` holds,
    /// reading nothing meanwhile. `false` if the connection is closing.
    fn wait_for_room(&mut self, lane: &mut Option<u64>, room: impl Fn(&Sched) -> bool) -> bool {
        self.run_inline(lane, false);
        self.flush();
        if self.closed {
            return false;
        }
        self.link.clone().wait_until(room);
        true
    }

    /// Take every complete frame in the buffer and run or dispatch it; `false` to close.
    fn batch(&mut self) -> bool {
        let link = self.link.clone();
        let (limits, max) = (link.env.limits, link.env.max_in_flight);
        loop {
            // The requests this thread runs in this round: those of the first lane (or the
            // session-less ones, if a session-less request comes first); other lanes and other
            // session-less requests go to the pool, so that they neither wait for nor delay
            // these. `lane` is the lane reserved in `Sched::lanes`.
            let mut group: Option<Option<u64>> = None;
            let mut lane: Option<u64> = None;
            loop {
                let (code, body) = match self.rb.peek(limits) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        warn!(conn = link.id, cause = %e, "malformed frame; closing the connection");
                        self.run_inline(&mut lane, false);
                        return false;
                    }
                };
                let decoded = Request::decode(&self.rb.buf[body.clone()], link.dialect);
                self.rb.consume(body.end);
                let body_len = body.len();
                let req = match decoded {
                    Ok(r) => r,
                    Err(ProtocolError::UnknownCall(call)) => {
                        debug!(conn = link.id, call, "unknown call id");
                        link.sched().in_flight += 1;
                        self.inline.push(Job {
                            code,
                            body_len,
                            lane: None,
                            work: Work::Refuse(Rv(CKR_FUNCTION_NOT_SUPPORTED)),
                        });
                        continue;
                    }
                    Err(e) => {
                        warn!(conn = link.id, cause = %e, "malformed request; closing the connection");
                        self.run_inline(&mut lane, false);
                        return false;
                    }
                };
                match route(&req) {
                    Route::Wait => {
                        if link.sched().slot_waits >= max {
                            // As for the in-flight cap below, but for slot waits.
                            group = None;
                            if !self.wait_for_room(&mut lane, |s| s.slot_waits < max) {
                                return false;
                            }
                        }
                        link.sched().slot_waits += 1;
                        link.slot_wait(code, body_len, &req);
                    }
                    Route::Barrier => {
                        if req.call == CallId::Finalize {
                            link.cancel_waits.send_modify(|e| *e = e.wrapping_add(1));
                        }
                        // Whatever came before, then everything in flight, then the barrier,
                        // with nothing read meanwhile.
                        self.run_inline(&mut lane, false);
                        group = None;
                        self.flush();
                        link.wait_until(|s| s.in_flight == 0);
                        link.sched().in_flight += 1;
                        self.inline.push(Job {
                            code,
                            body_len,
                            lane: None,
                            work: Work::Call(req),
                        });
                        self.run_inline(&mut None, false);
                    }
                    Route::Call { lane: l, slow } => {
                        if link.sched().in_flight >= max {
                            // Nothing more is read (by the watcher either: this request
                            // would be overtaken) until the count is below the cap.
                            group = None;
                            if !self.wait_for_room(&mut lane, |s| s.in_flight < max) {
                                return false;
                            }
                        }
                        let job = Job {
                            code,
                            body_len,
                            lane: l,
                            work: Work::Call(req),
                        };
                        let mut s = link.sched();
                        s.in_flight += 1;
                        if group == Some(l) && !(slow && l.is_none()) {
                            self.inline.push(job);
                        } else if group.is_none()
                            && !slow
                            && l.is_none_or(|x| !s.lanes.contains_key(&x))
                        {
                            // This thread's group for this round.
                            if let Some(x) = l {
                                s.lanes.insert(x, Lane::default());
                                lane = Some(x);
                            }
                            group = Some(l);
                            self.inline.push(job);
                        } else if let Some(x) = l {
                            link.enqueue(&mut s, x, job);
                        } else {
                            link.spawn_job(job);
                        }
                    }
                }
            }
            self.run_inline(&mut lane, true);
            if self.closed {
                return false;
            }
            if !self.rb.has_frame(limits) {
                return true;
            }
        }
    }

    /// Run the requests in `inline`, then whatever the watcher queued behind them on `lane`.
    /// With `watch`, requests arriving meanwhile are read by the watcher.
    fn run_inline(&mut self, lane: &mut Option<u64>, watch: bool) {
        if self.inline.is_empty() && lane.is_none() {
            return;
        }
        let link = self.link.clone();
        if watch {
            let mut s = link.sched();
            s.watched = Some(std::mem::take(&mut self.rb));
            s.hold = Hold::No;
            link.env.watcher.arm(link.id, &link.sock);
        }
        let mut jobs = std::mem::take(&mut self.inline);
        loop {
            let n = jobs.len();
            for job in jobs.drain(..) {
                // Replies of one lane leave together; another lane's are not held back by a
                // call that may take long.
                if self.out_lane != job.lane {
                    self.flush();
                }
                self.out_lane = job.lane;
                link.answer(job, &mut self.out);
            }
            let mut s = link.sched();
            link.finished(&mut s, n);
            if let Some(x) = *lane {
                if let Some(l) = s.lanes.get_mut(&x)
                    && !l.queue.is_empty()
                {
                    jobs.extend(l.queue.drain(..));
                    continue;
                }
                s.lanes.remove(&x);
            }
            if watch {
                link.env.watcher.disarm(link.id, &link.sock);
                self.rb = s.watched.take().unwrap_or_default();
                if s.hold == Hold::Closed {
                    self.closed = true;
                }
                s.hold = Hold::No;
            }
            break;
        }
        self.inline = jobs;
        *lane = None;
    }
}

impl Link {
    fn sched(&self) -> MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Block the connection thread until `done` holds.
    fn wait_until(&self, done: impl Fn(&Sched) -> bool) {
        let mut s = self.sched();
        while !done(&s) {
            s.waiting = true;
            s = self.idle.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.waiting = false;
    }

    /// Whether nothing more may be read: too many requests or slot waits in flight.
    fn full(&self, s: &Sched) -> bool {
        s.in_flight >= self.env.max_in_flight || s.slot_waits >= self.env.max_in_flight
    }

    /// `n` requests were answered.
    fn finished(self: &Arc<Self>, s: &mut Sched, n: usize) {
        self.account(
            s,
            Answered {
                requests: n,
                slot_waits: 0,
            },
        );
    }

    /// Requests and slot waits were answered: wake the connection thread if it waits for
    /// room, and let the watcher read again if it stopped at a cap.
    fn account(self: &Arc<Self>, s: &mut Sched, done: Answered) {
        if done.requests == 0 && done.slot_waits == 0 {
            return;
        }
        s.in_flight -= done.requests;
        s.slot_waits -= done.slot_waits;
        if s.waiting {
            self.idle.notify_one();
        }
        if s.hold == Hold::Full && !self.full(s) {
            s.hold = Hold::No;
            self.pump(s);
        }
    }

    fn out_queue(&self) -> MutexGuard<'_, OutQueue> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Send whole reply frames, then count what they answer as done. If another thread is
    /// sending, the frames join its queue and that thread sends them and does the counting.
    /// Never called with `sched` held (the counting takes it).
    fn send(self: &Arc<Self>, bytes: &[u8], answered: Answered) {
        let mut q = self.out_queue();
        if q.broken {
            drop(q);
            self.account(&mut self.sched(), answered);
            return;
        }
        if q.bytes.capacity() - q.bytes.len() < bytes.len() {
            // Grow by hand so that the old allocation is wiped: replies may carry secrets.
            let need = (q.bytes.len() + bytes.len()).max(2 * q.bytes.capacity());
            let mut grown = Vec::with_capacity(need.max(INITIAL_BUF));
            grown.extend_from_slice(&q.bytes);
            q.bytes.zeroize();
            q.bytes = grown;
        }
        q.bytes.extend_from_slice(bytes);
        q.answered.requests += answered.requests;
        q.answered.slot_waits += answered.slot_waits;
        if q.sending {
            return;
        }
        q.sending = true;
        loop {
            let mut chunk = std::mem::take(&mut q.bytes);
            let done = std::mem::take(&mut q.answered);
            drop(q);
            let sent = self.send_all(&chunk);
            chunk.zeroize();
            self.account(&mut self.sched(), done);
            q = self.out_queue();
            if !sent {
                q.broken = true;
                q.bytes.zeroize();
                q.bytes = Vec::new();
            }
            if q.bytes.is_empty() && (q.answered.requests | q.answered.slot_waits) == 0 {
                q.sending = false;
                return;
            }
            if q.broken {
                let rest = std::mem::take(&mut q.answered);
                q.sending = false;
                drop(q);
                self.account(&mut self.sched(), rest);
                return;
            }
        }
    }

    /// Write `bytes` (blocking); `false` if the peer is gone.
    fn send_all(&self, bytes: &[u8]) -> bool {
        let mut rest = bytes;
        while !rest.is_empty() {
            match rustix::net::send(&*self.sock, rest, SendFlags::NOSIGNAL) {
                Ok(n) => rest = &rest[n..],
                Err(Errno::INTR) => {}
                Err(e) => {
                    debug!(conn = self.id, cause = %e, "write failed; peer gone");
                    return false;
                }
            }
        }
        true
    }

    /// Run a request and append its reply frame to `out`.
    fn answer(&self, job: Job, out: &mut Vec<u8>) {
        match job.work {
            Work::Refuse(rv) => {
                encode_reply(out, job.code, &Reply::Error(rv), self.dialect, None);
            }
            Work::Call(req) => {
                let start = Instant::now();
                let reply = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    dispatch::dispatch(&self.env.shared, &self.conn, &req)
                }))
                .unwrap_or_else(|_| {
                    error!(call = %req.call, "request handler panicked");
                    Reply::Error(Rv(CKR_GENERAL_ERROR))
                });
                let mech = dispatch::mechanism_of(&req);
                let n = encode_reply(out, job.code, &reply, self.dialect, mech);
                trace_call(req.call, job.lane, &reply, start.elapsed(), job.body_len, n);
            }
        }
    }

    /// Run a session-less request on the pool.
    fn spawn_job(self: &Arc<Self>, job: Job) {
        let link = self.clone();
        self.env.rt.spawn_blocking(move || {
            let mut out = Vec::new();
            link.answer(job, &mut out);
            link.send(&out, ONE_REQUEST);
            out.zeroize();
        });
    }

    /// Queue a request on its lane; start a pool thread on the lane if it was idle.
    fn enqueue(self: &Arc<Self>, s: &mut Sched, lane: u64, job: Job) {
        match s.lanes.entry(lane) {
            Entry::Occupied(mut e) => e.get_mut().queue.push_back(job),
            Entry::Vacant(e) => {
                e.insert(Lane::default()).queue.push_back(job);
                let link = self.clone();
                self.env.rt.spawn_blocking(move || link.drain(lane));
            }
        }
    }

    /// A pool thread: run a lane's requests until its queue is empty.
    fn drain(self: Arc<Self>, lane: u64) {
        let mut out = Vec::new();
        loop {
            let job = {
                let mut s = self.sched();
                match s.lanes.get_mut(&lane).and_then(|l| l.queue.pop_front()) {
                    Some(j) => j,
                    None => {
                        s.lanes.remove(&lane);
                        return;
                    }
                }
            };
            self.answer(job, &mut out);
            self.send(&out, ONE_REQUEST);
            out.zeroize();
            out.clear();
        }
    }

    /// The watcher saw input while the connection thread is busy.
    pub(crate) fn on_readable(self: &Arc<Self>) {
        let mut s = self.sched();
        self.pump(&mut s);
    }

    /// Read what has arrived (without blocking) and dispatch it to the pool, until the socket
    /// is empty (then watch it again), a barrier, the in-flight cap or the end of the stream.
    /// Only while the connection thread has parked its buffer in `s.watched`.
    fn pump(self: &Arc<Self>, s: &mut Sched) {
        if s.hold != Hold::No {
            return;
        }
        let Some(mut rb) = s.watched.take() else {
            return;
        };
        let limits = self.env.limits;
        s.hold = 'read: loop {
            loop {
                if self.full(s) {
                    break 'read Hold::Full;
                }
                let (code, body) = match rb.peek(limits) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        warn!(conn = self.id, cause = %e, "malformed frame; closing the connection");
                        break 'read Hold::Closed;
                    }
                };
                let body_len = body.len();
                let req = match Request::decode(&rb.buf[body.clone()], self.dialect) {
                    Ok(r) => r,
                    Err(ProtocolError::UnknownCall(call)) => {
                        debug!(conn = self.id, call, "unknown call id");
                        rb.consume(body.end);
                        s.in_flight += 1;
                        self.spawn_job(Job {
                            code,
                            body_len,
                            lane: None,
                            work: Work::Refuse(Rv(CKR_FUNCTION_NOT_SUPPORTED)),
                        });
                        continue;
                    }
                    Err(e) => {
                        warn!(conn = self.id, cause = %e, "malformed request; closing the connection");
                        break 'read Hold::Closed;
                    }
                };
                match route(&req) {
                    // Left in the buffer for the connection thread.
                    Route::Barrier => break 'read Hold::Barrier,
                    Route::Wait => {
                        rb.consume(body.end);
                        s.slot_waits += 1;
                        self.slot_wait(code, body_len, &req);
                    }
                    Route::Call { lane, .. } => {
                        rb.consume(body.end);
                        s.in_flight += 1;
                        let job = Job {
                            code,
                            body_len,
                            lane,
                            work: Work::Call(req),
                        };
                        match lane {
                            Some(x) => self.enqueue(s, x, job),
                            None => self.spawn_job(job),
                        }
                    }
                }
            }
            match rb.fill(&self.sock, RecvFlags::DONTWAIT, limits) {
                Ok(0) => break 'read Hold::Closed,
                Ok(_) => {}
                Err(Errno::AGAIN) => {
                    self.env.watcher.arm(self.id, &self.sock);
                    break 'read Hold::No;
                }
                Err(e) => {
                    debug!(conn = self.id, cause = %e, "read failed; closing the connection");
                    break 'read Hold::Closed;
                }
            }
        };
        s.watched = Some(rb);
    }

    /// Start a `C_WaitForSlotEvent`.
    fn slot_wait(self: &Arc<Self>, code: u32, body_len: usize, req: &Request) {
        let flags = match req.args.first() {
            Some(Arg::Ulong(f)) => *f,
            _ => 0,
        };
        // A blocking wait takes its permits here, in arrival order.
        let permits = if flags & CKF_DONT_BLOCK == 0 {
            match (
                self.conn_waits.clone().try_acquire_owned(),
                self.env.waits.clone().try_acquire_owned(),
            ) {
                (Ok(mine), Ok(all)) => Some((mine, all)),
                _ => None,
            }
        } else {
            None
        };
        let wait = SlotWait {
            shared: self.env.shared.clone(),
            conn: self.conn.clone(),
            flags,
            cancel: self.cancel_waits.subscribe(),
            permits,
        };
        let link = self.clone();
        self.env.rt.spawn(async move {
            let start = Instant::now();
            let reply = slot_event(wait).await;
            // The send may block (a peer that does not read): off the reactor.
            let _ = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                let n = encode_reply(&mut out, code, &reply, link.dialect, None);
                link.send(
                    &out,
                    Answered {
                        requests: 0,
                        slot_waits: 1,
                    },
                );
                out.zeroize();
                trace_call(
                    CallId::WaitForSlotEvent,
                    None,
                    &reply,
                    start.elapsed(),
                    body_len,
                    n,
                );
            })
            .await;
        });
    }
}

/// A `C_WaitForSlotEvent` request and what it needs.
struct SlotWait {
    shared: Arc<Shared>,
    conn: Arc<Mutex<Conn>>,
    flags: u64,
    /// Changes when the connection finalises or ends.
    cancel: watch::Receiver<u64>,
    /// For a blocking wait: its places among the connection's and all pending waits (`None`
    /// if either cap was reached).
    permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

/// `C_WaitForSlotEvent`: the connection's virtual slot with an event (see [`crate::events`]).
async fn slot_event(mut w: SlotWait) -> Reply {
    let ok = |slot: u64| Reply::Ok {
        call: CallId::WaitForSlotEvent,
        args: vec![Arg::Ulong(slot)],
    };
    let events = w.shared.events.clone();
    // Subscribed under the connection's lock: a C_Finalize or the end of the connection
    // (`dispatch::release_all`, which unsubscribes under the same lock) cannot come in between
    // and leave a subscription behind.
    let (id, sub) = match lock(&w.conn) {
        Ok(c) if c.initialized => {
            match events.subscribe(c.id, c.slots.iter().map(|s| s.token).collect()) {
                Ok(sub) => (c.id, sub),
                Err(rv) => return Reply::Error(rv),
            }
        }
        Ok(_) => return Reply::Error(Rv(CKR_CRYPTOKI_NOT_INITIALIZED)),
        Err(rv) => return Reply::Error(rv),
    };
    if w.flags & CKF_DONT_BLOCK != 0 {
        // May ask the modules (without blocking): off the reactor.
        let shared = w.shared.clone();
        return match tokio::task::spawn_blocking(move || shared.events.poll(&shared.modules, &sub))
            .await
        {
            Ok(Ok(slot)) => ok(slot),
            Ok(Err(rv)) => Reply::Error(rv),
            Err(_) => Reply::Error(Rv(CKR_GENERAL_ERROR)),
        };
    }
    let Some(_permits) = w.permits.take() else {
        warn!(conn = id, "too many pending C_WaitForSlotEvent calls");
        return Reply::Error(Rv(CKR_FUNCTION_FAILED));
    };
    let mut changed = sub.watch();
    let _registered = match events.begin_wait(&w.shared.modules, &sub) {
        Ok(g) => g,
        Err(rv) => return Reply::Error(rv),
    };
    loop {
        match sub.next() {
            Some(Ok(slot)) => return ok(slot),
            Some(Err(rv)) => return Reply::Error(rv),
            None => {}
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() {
                return Reply::Error(Rv(CKR_GENERAL_ERROR));
            },
            _ = w.cancel.changed() => return Reply::Error(Rv(CKR_CRYPTOKI_NOT_INITIALIZED)),
        }
    }
}

fn trace_call(
    call: CallId,
    session: Option<u64>,
    reply: &Reply,
    took: Duration,
    in_len: usize,
    out_len: usize,
) {
    if !tracing::enabled!(target: "p11fwd::call", tracing::Level::DEBUG) {
        return;
    }
    // The CK_RV the client sees: an ERROR frame's, or the one embedded in C_GetAttributeValue
    // (SENSITIVE, TYPE_INVALID, BUFFER_TOO_SMALL) and C_DeriveKey2 replies.
    let rv = match reply {
        Reply::Ok { call, args } => {
            let embedded = match (call, args.as_slice()) {
                (CallId::GetAttributeValue, [_, Arg::Ulong(rv)])
                | (CallId::DeriveKey2, [Arg::Ulong(rv), ..]) => *rv,
                _ => p11fwd_wire::consts::CKR_OK,
            };
            format!("{:?}", Rv(embedded))
        }
        Reply::Error(rv) => format!("{rv:?}"),
    };
    debug!(
        target: "p11fwd::call",
        call = call.name(),
        session = ?session,
        rv = %rv,
        us = took.as_micros() as u64,
        in_bytes = in_len,
        out_bytes = out_len,
    );
}

/// Append a reply frame (empty options) to `out`; returns the body length.
fn encode_reply(
    out: &mut Vec<u8>,
    code: u32,
    reply: &Reply,
    dialect: Dialect,
    mech: Option<u64>,
) -> usize {
    let mut body = match reply.encode(dialect, mech) {
        Ok(b) => b,
        Err(e) => {
            error!(cause = %e, "cannot encode a reply");
            match Reply::Error(Rv(CKR_GENERAL_ERROR)).encode(dialect, None) {
                Ok(b) => b,
                Err(_) => return 0,
            }
        }
    };
    let n = body.len();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&(n as u32).to_be_bytes());
    out.extend_from_slice(&body);
    body.zeroize();
    n
}
