//! The accept loop and the per-connection handler, after mini-redis `server.rs`.
//!
//! - The [`Listener`] holds a semaphore for the connection limit, a broadcast channel for
//!   shutdown, and an mpsc sender whose last drop signals that every handler has finished.
//! - A [`Handler`] checks the peer's credentials, answers the version byte, then reads frames.
//!   Each request becomes a task that runs the module call off the reactor
//!   (`spawn_blocking`) and sends its reply to the connection's writer task, so replies may go
//!   out of order. Requests on the same session form a *lane* and run strictly in arrival
//!   order; session-less requests run concurrently; `C_Initialize`, `C_Finalize` and
//!   `C_CloseAllSessions` wait for everything in flight and hold back what follows.
//! - `C_WaitForSlotEvent` is served apart ([`slot_event`], over [`crate::events`]): a blocking
//!   wait is an async task that holds no thread and no in-flight slot, and the connection's
//!   `C_Finalize` (CKR_CRYPTOKI_NOT_INITIALIZED) or disconnect ends it.
//! - When the connection ends (EOF, a malformed frame, shutdown), the handler waits for its
//!   in-flight requests, then closes every session the peer left open and ends its logins.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p11fwd_wire::consts::{
    CKF_DONT_BLOCK, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_FUNCTION_FAILED, CKR_FUNCTION_NOT_SUPPORTED,
    CKR_GENERAL_ERROR,
};
use p11fwd_wire::frame::{self, Limits};
use p11fwd_wire::transport::tokio::{FrameReader, accept_version};
use p11fwd_wire::{Arg, CallId, ProtocolError, Reply, Request, Rv};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::dispatch;
use crate::state::{Conn, Shared, lock};

/// Caps and access rules of a server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Frame size caps.
    pub limits: Limits,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Requests of one connection in flight at once; the connection is not read further
    /// until one finishes.
    pub max_in_flight: u32,
    /// Peer uids allowed besides our own.
    pub allowed_uids: Vec<u32>,
    /// Peer gids allowed.
    pub allowed_gids: Vec<u32>,
    /// Exit after this long without connections (`-t`).
    pub idle_timeout: Option<Duration>,
    /// Blocking `C_WaitForSlotEvent` calls pending at once, all connections together; more
    /// are answered CKR_FUNCTION_FAILED.
    pub max_waits: usize,
    /// Blocking `C_WaitForSlotEvent` calls pending at once on one connection.
    pub max_waits_per_connection: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            limits: Limits::DEFAULT,
            max_connections: 1024,
            max_in_flight: 64,
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            idle_timeout: None,
            max_waits: 1024,
            max_waits_per_connection: 8,
        }
    }
}

/// Listens and serves until `shutdown` completes (or the idle timeout passes); then waits for
/// every connection to clean up.
pub async fn run(
    listener: UnixListener,
    shared: Arc<Shared>,
    config: Config,
    shutdown: impl Future,
) {
    let (notify_shutdown, _) = broadcast::channel(1);
    let (shutdown_complete_tx, mut shutdown_complete_rx) = mpsc::channel::<()>(1);
    let active = Arc::new(AtomicUsize::new(0));
    let waits = Arc::new(Semaphore::new(config.max_waits));
    let modules = shared.modules.clone();
    let events = shared.events.clone();
    let mut server = Listener {
        listener,
        shared,
        waits,
        config: Arc::new(config),
        limit_connections: Arc::new(Semaphore::new(1)),
        notify_shutdown,
        shutdown_complete_tx,
        active: active.clone(),
    };
    server.limit_connections = Arc::new(Semaphore::new(server.config.max_connections));
    let idle = server.config.idle_timeout;
    tokio::select! {
        res = server.run() => {
            if let Err(e) = res {
                error!(cause = %e, "failed to accept");
            }
        }
        _ = shutdown => {
            info!("shutting down");
        }
        _ = idle_timer(idle, active) => {
            info!("no connections for the idle timeout; exiting");
        }
    }
    let Listener {
        notify_shutdown,
        shutdown_complete_tx,
        ..
    } = server;
    drop(notify_shutdown);
    drop(shutdown_complete_tx);
    let _ = shutdown_complete_rx.recv().await;
    // Every connection is gone: end the module waits of the slot event threads.
    let _ = tokio::task::spawn_blocking(move || events.shutdown(&modules, Duration::from_secs(2)))
        .await;
}

async fn idle_timer(timeout: Option<Duration>, active: Arc<AtomicUsize>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    let mut idle_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if active.load(Ordering::SeqCst) > 0 {
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= timeout {
            return;
        }
    }
}

struct Listener {
    listener: UnixListener,
    shared: Arc<Shared>,
    /// Pending blocking C_WaitForSlotEvent calls, all connections together.
    waits: Arc<Semaphore>,
    config: Arc<Config>,
    limit_connections: Arc<Semaphore>,
    notify_shutdown: broadcast::Sender<()>,
    shutdown_complete_tx: mpsc::Sender<()>,
    active: Arc<AtomicUsize>,
}

impl Listener {
    async fn run(&mut self) -> std::io::Result<()> {
        loop {
            let permit = self
                .limit_connections
                .clone()
                .acquire_owned()
                .await
                .map_err(std::io::Error::other)?;
            let stream = self.accept().await?;
            let handler = Handler {
                shared: self.shared.clone(),
                waits: self.waits.clone(),
                config: self.config.clone(),
                shutdown: Shutdown::new(self.notify_shutdown.subscribe()),
                _shutdown_complete: self.shutdown_complete_tx.clone(),
                active: ActiveGuard::new(self.active.clone()),
            };
            tokio::spawn(async move {
                handler.run(stream).await;
                drop(permit);
            });
        }
    }

    /// Accept, retrying with backoff on errors such as EMFILE.
    async fn accept(&mut self) -> std::io::Result<UnixStream> {
        let mut backoff = 1;
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => return Ok(stream),
                Err(e) => {
                    if backoff > 64 {
                        return Err(e);
                    }
                    warn!(cause = %e, "accept failed; retrying");
                }
            }
            tokio::time::sleep(Duration::from_millis(100 * backoff)).await;
            backoff *= 2;
        }
    }
}

/// Counts live connections for the idle timeout.
struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn new(a: Arc<AtomicUsize>) -> Self {
        a.fetch_add(1, Ordering::SeqCst);
        Self(a)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Remembers whether the shutdown signal arrived (mini-redis `shutdown.rs`).
struct Shutdown {
    is_shutdown: bool,
    notify: broadcast::Receiver<()>,
}

impl Shutdown {
    fn new(notify: broadcast::Receiver<()>) -> Self {
        Self {
            is_shutdown: false,
            notify,
        }
    }

    async fn recv(&mut self) {
        if self.is_shutdown {
            return;
        }
        let _ = self.notify.recv().await;
        self.is_shutdown = true;
    }
}

struct Handler {
    shared: Arc<Shared>,
    waits: Arc<Semaphore>,
    config: Arc<Config>,
    shutdown: Shutdown,
    /// Dropped when the handler is done: the last drop completes the server's shutdown.
    _shutdown_complete: mpsc::Sender<()>,
    active: ActiveGuard,
}

/// Closes what a connection left open, even if its handler task is cancelled or panics.
struct ConnGuard {
    shared: Arc<Shared>,
    conn: Arc<Mutex<Conn>>,
    done: bool,
}

impl ConnGuard {
    async fn release(mut self) {
        let (shared, conn) = (self.shared.clone(), self.conn.clone());
        let _ = tokio::task::spawn_blocking(move || dispatch::release_all(&shared, &conn)).await;
        self.done = true;
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if !self.done {
            dispatch::release_all(&self.shared, &self.conn);
        }
    }
}

impl Handler {
    fn peer_allowed(&self, stream: &UnixStream) -> bool {
        let Ok(cred) = stream.peer_cred() else {
            return false;
        };
        let me = rustix::process::geteuid().as_raw();
        cred.uid() == me
            || cred.uid() == 0 && me == 0
            || self.config.allowed_uids.contains(&cred.uid())
            || self.config.allowed_gids.contains(&cred.gid())
    }

    async fn run(mut self, mut stream: UnixStream) {
        let _active = &self.active;
        if !self.peer_allowed(&stream) {
            let cred = stream.peer_cred().ok();
            warn!(uid = ?cred.map(|c| c.uid()), gid = ?cred.map(|c| c.gid()), "connection refused: peer credentials not allowed");
            return;
        }
        let dialect = tokio::select! {
            r = accept_version(&mut stream) => match r {
                Ok((offered, d)) => {
                    debug!(offered, version = d.version(), "connection accepted");
                    d
                }
                Err(e) => {
                    debug!(cause = %e, "connection closed before the version byte");
                    return;
                }
            },
            _ = self.shutdown.recv() => return,
        };
        let id = self.shared.next_conn_id();
        let conn = Arc::new(Mutex::new(Conn::new(id, dialect)));
        let guard = ConnGuard {
            shared: self.shared.clone(),
            conn: conn.clone(),
            done: false,
        };
        let (read, mut write) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if let Err(e) = write.write_all(&bytes).await {
                    debug!(cause = %e, "write failed; peer gone");
                    break;
                }
            }
        });
        let in_flight = Arc::new(Semaphore::new(self.config.max_in_flight as usize));
        let conn_waits = Arc::new(Semaphore::new(self.config.max_waits_per_connection));
        // Bumped by C_Finalize and when the connection ends: pending slot waits give up.
        let (cancel_waits, _) = watch::channel(0u64);
        let mut reader = FrameReader::new(read, self.config.limits);
        let mut lanes: HashMap<u64, oneshot::Receiver<()>> = HashMap::new();
        loop {
            let frame = tokio::select! {
                f = reader.read_frame() => f,
                _ = self.shutdown.recv() => break,
            };
            let frame = match frame {
                Ok(Some(f)) => f,
                Ok(None) => {
                    debug!(conn = id, "peer closed the connection");
                    break;
                }
                Err(e) => {
                    warn!(conn = id, cause = %e, "malformed frame; closing the connection");
                    break;
                }
            };
            let req = match Request::decode(&frame.body, dialect) {
                Ok(r) => r,
                Err(ProtocolError::UnknownCall(call)) => {
                    debug!(conn = id, call, "unknown call id");
                    send(
                        &tx,
                        frame.code,
                        &Reply::Error(Rv(CKR_FUNCTION_NOT_SUPPORTED)),
                        dialect,
                        None,
                    );
                    continue;
                }
                Err(e) => {
                    warn!(conn = id, cause = %e, "malformed request; closing the connection");
                    break;
                }
            };
            if req.call == CallId::WaitForSlotEvent {
                let flags = match req.args.first() {
                    Some(Arg::Ulong(f)) => *f,
                    _ => 0,
                };
                // A blocking wait takes its permits here, in arrival order.
                let permits = if flags & CKF_DONT_BLOCK == 0 {
                    match (
                        conn_waits.clone().try_acquire_owned(),
                        self.waits.clone().try_acquire_owned(),
                    ) {
                        (Ok(mine), Ok(all)) => Some((mine, all)),
                        _ => None,
                    }
                } else {
                    None
                };
                let wait = SlotWait {
                    shared: self.shared.clone(),
                    conn: conn.clone(),
                    flags,
                    cancel: cancel_waits.subscribe(),
                    permits,
                };
                let (tx, code, body_len, dialect) =
                    (tx.clone(), frame.code, frame.body.len(), dialect);
                tokio::spawn(async move {
                    let start = Instant::now();
                    let reply = slot_event(wait).await;
                    let out_len = send(&tx, code, &reply, dialect, None);
                    trace_call(
                        CallId::WaitForSlotEvent,
                        None,
                        &reply,
                        start.elapsed(),
                        body_len,
                        out_len,
                    );
                });
                continue;
            }
            if req.call == CallId::Finalize {
                cancel_waits.send_modify(|e| *e = e.wrapping_add(1));
            }
            let barrier = dispatch::is_barrier(req.call);
            let permits = if barrier {
                self.config.max_in_flight
            } else {
                1
            };
            let permit = tokio::select! {
                p = in_flight.clone().acquire_many_owned(permits) => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = self.shutdown.recv() => break,
            };
            // Chain requests of one session: each waits for its predecessor.
            let lane = dispatch::session_of(&req);
            let (done_tx, done_rx) = oneshot::channel();
            let prev = lane.and_then(|s| lanes.insert(s, done_rx));
            if lanes.len() > 4096 {
                lanes.retain(|_, rx| {
                    matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
                });
            }
            let task = Task {
                shared: self.shared.clone(),
                conn: conn.clone(),
                tx: tx.clone(),
                code: frame.code,
                body_len: frame.body.len(),
                req,
                dialect,
            };
            let handle = tokio::spawn(task.run(prev, done_tx, permit));
            if barrier {
                // Nothing else is read until the barrier call is done.
                let _ = handle.await;
            }
        }
        // End the pending slot waits, wait for everything in flight, then clean up what the peer
        // left open.
        cancel_waits.send_modify(|e| *e = e.wrapping_add(1));
        let _ = in_flight.acquire_many(self.config.max_in_flight).await;
        guard.release().await;
        drop(tx);
        let _ = writer.await;
        debug!(conn = id, "connection closed");
    }
}

struct Task {
    shared: Arc<Shared>,
    conn: Arc<Mutex<Conn>>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    code: u32,
    body_len: usize,
    req: Request,
    dialect: p11fwd_wire::Dialect,
}

impl Task {
    async fn run(
        self,
        prev: Option<oneshot::Receiver<()>>,
        done: oneshot::Sender<()>,
        permit: OwnedSemaphorePermit,
    ) {
        if let Some(prev) = prev {
            let _ = prev.await;
        }
        let Self {
            shared,
            conn,
            tx,
            code,
            body_len,
            req,
            dialect,
        } = self;
        let start = Instant::now();
        let call = req.call;
        let session = dispatch::session_of(&req);
        let mech = dispatch::mechanism_of(&req);
        let reply = tokio::task::spawn_blocking(move || dispatch::dispatch(&shared, &conn, &req))
            .await
            .unwrap_or_else(|e| {
                error!(call = %call, cause = %e, "request handler panicked");
                Reply::Error(Rv(CKR_GENERAL_ERROR))
            });
        let out_len = send(&tx, code, &reply, dialect, mech);
        trace_call(call, session, &reply, start.elapsed(), body_len, out_len);
        let _ = done.send(());
        drop(permit);
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
    let (id, tokens) = match lock(&w.conn) {
        Ok(c) if c.initialized => (c.id, c.slots.iter().map(|s| s.token).collect()),
        Ok(_) => return Reply::Error(Rv(CKR_CRYPTOKI_NOT_INITIALIZED)),
        Err(rv) => return Reply::Error(rv),
    };
    let events = w.shared.events.clone();
    let sub = match events.subscribe(id, tokens) {
        Ok(s) => s,
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

/// Encode and queue a reply; returns the body length.
fn send(
    tx: &mpsc::UnboundedSender<Vec<u8>>,
    code: u32,
    reply: &Reply,
    dialect: p11fwd_wire::Dialect,
    mech: Option<u64>,
) -> usize {
    let body = match reply.encode(dialect, mech) {
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
    let _ = tx.send(frame::encode(code, &[], &body));
    n
}
