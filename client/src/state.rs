//! The module state: initialisation, fork detection, the shared connection, reconnection and
//! session handles.
//!
//! - One global `Mutex<Option<Arc<Module>>>`, held only long enough to clone the `Arc`: calls
//!   run without any global lock, and many threads share one connection (the blocking
//!   transport multiplexes them by request code).
//! - The PID at `C_Initialize` is kept. In a `fork()` child every call returns
//!   `CKR_CRYPTOKI_NOT_INITIALIZED` until the child calls `C_Initialize`, which opens its own
//!   connection; the parent's socket is never written, read or shut down by the child (the
//!   transport only closes its file descriptor copy).
//! - **Stand-in**: if no server answers at `C_Initialize`, it still succeeds and the module
//!   shows no slots, like `p11-kit-client.so` (rpc §8). Unlike it, every later call that needs
//!   the server tries to connect again, so a server started (or restarted) later is picked up
//!   without re-initialising.
//! - **Reconnection**: a transport failure (the server went away, a timeout, a reply we cannot
//!   parse) drops the connection. Slot-level calls reconnect (version negotiation and RPC
//!   `C_Initialize` again) and, when they are idempotent, retry once, so the first call after
//!   a server restart already works. Sessions belong to the connection that opened them:
//!   afterwards they report `CKR_SESSION_HANDLE_INVALID`, and a call that was in flight when
//!   the connection died reports `CKR_DEVICE_REMOVED` (`CKR_DEVICE_ERROR` for a timeout).
//! - Session handles are ours (1, 2, 3, ... never reused), mapped to the server's handles and
//!   the connection generation, so a new server's handle can never be mistaken for an old one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cryptoki_sys::{
    CK_SESSION_HANDLE, CK_SLOT_ID, CKF_DONT_BLOCK, CKR_CRYPTOKI_ALREADY_INITIALIZED,
    CKR_CRYPTOKI_NOT_INITIALIZED, CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED, CKR_GENERAL_ERROR,
    CKR_NO_EVENT, CKR_SESSION_CLOSED, CKR_SESSION_HANDLE_INVALID,
};
use p11fwd_wire::client::Client;
use p11fwd_wire::{Error as WireError, Rv};
use rustix::process::{Pid, getpid};

use crate::config::{self, Config};
use crate::{Result, rv};

/// The one module instance of this process (per `C_Initialize`).
static STATE: Mutex<Option<Arc<Module>>> = Mutex::new(None);

/// How often a blocking `C_WaitForSlotEvent` asks the server (always with `CKF_DONT_BLOCK`).
const SLOT_EVENT_POLL: Duration = Duration::from_millis(500);

/// A lock, or `CKR_GENERAL_ERROR` if a panic poisoned it.
fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    m.lock().map_err(|_| {
        tracing::error!("a lock was poisoned by an earlier panic");
        rv(CKR_GENERAL_ERROR)
    })
}

/// The CK_RV for a transport failure during a call.
fn transport_rv(e: &WireError) -> Rv {
    match e {
        WireError::Timeout | WireError::Protocol(_) => rv(CKR_DEVICE_ERROR),
        _ => rv(CKR_DEVICE_REMOVED),
    }
}

/// `C_Initialize` after the argument checks: `reserved` is the `pReserved` string to forward.
pub(crate) fn initialize(reserved: Option<Vec<u8>>) -> Result<()> {
    let mut state = lock(&STATE)?;
    let pid = getpid();
    if let Some(m) = state.as_ref() {
        if m.pid == pid {
            return Err(rv(CKR_CRYPTOKI_ALREADY_INITIALIZED));
        }
        tracing::debug!("initialising in a fork child; the parent's connection is left alone");
    }
    // In a fork child this drops the parent's state: the transport sees that the connection
    // was inherited and only closes this process's copy of the descriptor.
    *state = None;
    let config = config::from_process().map_err(|msg| {
        // Configuration mistakes are reported even without tracing: the user must see why.
        eprintln!("p11fwd-client: {msg}");
        tracing::error!(cause = %msg, "cannot find the server address");
        rv(CKR_GENERAL_ERROR)
    })?;
    let module = Module {
        pid,
        config,
        reserved,
        link: Mutex::new(Link::default()),
        sessions: Mutex::new(Sessions::default()),
        finalized: AtomicBool::new(false),
    };
    match module.open() {
        Ok(client) => {
            tracing::info!(
                socket = %module.config.socket.display(),
                version = client.dialect().version(),
                "connected"
            );
            let mut link = lock(&module.link)?;
            link.generation = 1;
            link.client = Some(Arc::new(client));
        }
        Err(Open::NoServer(e)) => tracing::info!(
            socket = %module.config.socket.display(),
            origin = %module.config.origin,
            cause = %e,
            "no server; showing no slots until one answers"
        ),
        Err(Open::Refused(code)) => return Err(code),
    }
    *state = Some(Arc::new(module));
    Ok(())
}

/// `C_Finalize`: forget the state, say goodbye to the server, close the connection.
pub(crate) fn finalize() -> Result<()> {
    let module = {
        let mut state = lock(&STATE)?;
        match state.as_ref() {
            Some(m) if m.pid == getpid() => state.take(),
            _ => None,
        }
    };
    let module = module.ok_or(rv(CKR_CRYPTOKI_NOT_INITIALIZED))?;
    module.finalized.store(true, Ordering::SeqCst);
    let client = lock(&module.link)?.client.take();
    if let Some(client) = client {
        if let Err(e) = client.finalize() {
            tracing::debug!(cause = %e, "RPC C_Finalize failed");
        }
        client.connection().close();
    }
    Ok(())
}

/// The initialised module of this process, or `CKR_CRYPTOKI_NOT_INITIALIZED` (also in a fork
/// child that has not called `C_Initialize` itself).
pub(crate) fn module() -> Result<Arc<Module>> {
    let state = lock(&STATE)?;
    match state.as_ref() {
        Some(m) if m.pid == getpid() => Ok(Arc::clone(m)),
        _ => Err(rv(CKR_CRYPTOKI_NOT_INITIALIZED)),
    }
}

/// Why a connection could not be opened.
enum Open {
    /// Nobody answered, or the connection failed: behave as the stand-in.
    NoServer(WireError),
    /// The server answered the RPC `C_Initialize` with an error.
    Refused(Rv),
}

/// The current connection.
#[derive(Debug, Default)]
struct Link {
    client: Option<Arc<Client>>,
    /// Incremented for every new connection; sessions remember the one they were opened on.
    generation: u64,
}

/// A connection and its generation, for one call.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The typed client.
    pub(crate) client: Arc<Client>,
    /// The connection generation (for session bookkeeping).
    pub(crate) generation: u64,
}

/// A session: the server's handle, its slot, and the connection it lives on.
#[derive(Clone, Copy, Debug)]
struct Session {
    remote: u64,
    slot: CK_SLOT_ID,
    generation: u64,
}

#[derive(Debug, Default)]
struct Sessions {
    last: CK_SESSION_HANDLE,
    map: HashMap<CK_SESSION_HANDLE, Session>,
}

/// The module after `C_Initialize`.
#[derive(Debug)]
pub(crate) struct Module {
    pid: Pid,
    config: Config,
    reserved: Option<Vec<u8>>,
    link: Mutex<Link>,
    sessions: Mutex<Sessions>,
    finalized: AtomicBool,
}

impl Module {
    /// Connect, negotiate the version and send the RPC `C_Initialize`.
    fn open(&self) -> std::result::Result<Client, Open> {
        let client = Client::connect(&self.config.socket, self.config.options.clone())
            .map_err(Open::NoServer)?;
        match client.initialize(self.reserved.as_deref()) {
            Ok(()) => Ok(client),
            Err(e) if e.is_fatal() => Err(Open::NoServer(e)),
            Err(e) => {
                client.connection().close();
                Err(Open::Refused(e.rv()))
            }
        }
    }

    /// Whether a usable connection exists right now (without trying to connect).
    pub(crate) fn is_connected(&self) -> bool {
        matches!(self.current(), Ok(Some(_)))
    }

    /// The connection if it is usable, without reconnecting.
    fn current(&self) -> Result<Option<Conn>> {
        let link = lock(&self.link)?;
        Ok(match &link.client {
            Some(c) if !c.connection().is_broken() => Some(Conn {
                client: Arc::clone(c),
                generation: link.generation,
            }),
            _ => None,
        })
    }

    /// The connection, reconnecting if there is none or it broke; `None` when no server
    /// answers (the stand-in).
    pub(crate) fn connection(&self) -> Result<Option<Conn>> {
        let mut link = lock(&self.link)?;
        if let Some(c) = &link.client {
            if !c.connection().is_broken() {
                return Ok(Some(Conn {
                    client: Arc::clone(c),
                    generation: link.generation,
                }));
            }
            link.client = None;
        }
        if self.finalized.load(Ordering::SeqCst) {
            return Err(rv(CKR_CRYPTOKI_NOT_INITIALIZED));
        }
        match self.open() {
            Ok(client) => {
                link.generation += 1;
                let generation = link.generation;
                tracing::info!(
                    generation,
                    version = client.dialect().version(),
                    "reconnected to the server"
                );
                let client = Arc::new(client);
                link.client = Some(Arc::clone(&client));
                // Sessions of earlier connections can never be used again.
                lock(&self.sessions)?
                    .map
                    .retain(|_, s| s.generation == generation);
                Ok(Some(Conn { client, generation }))
            }
            Err(Open::NoServer(e)) => {
                tracing::debug!(cause = %e, socket = %self.config.socket.display(), "no server");
                Ok(None)
            }
            Err(Open::Refused(code)) => {
                tracing::warn!(rv = %code, "the server refused the RPC C_Initialize");
                Ok(None)
            }
        }
    }

    /// Drop the connection of `generation` after a transport failure.
    fn lost(&self, generation: u64) {
        if let Ok(mut link) = self.link.lock()
            && link.generation == generation
            && let Some(c) = link.client.take()
        {
            c.connection().close();
        }
    }

    /// A slot-level (or general) call: reconnects when needed. Without a server, `stand_in`
    /// answers. `retry` repeats an idempotent call once on a fresh connection when the old one
    /// turns out to be closed (the usual sign of a server restart).
    pub(crate) fn slot_call<T>(
        &self,
        retry: bool,
        stand_in: impl FnOnce() -> Result<T>,
        mut f: impl FnMut(&Conn) -> p11fwd_wire::Result<T>,
    ) -> Result<T> {
        let mut attempts = if retry { 2 } else { 1 };
        loop {
            let Some(conn) = self.connection()? else {
                return stand_in();
            };
            match f(&conn) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_fatal() => {
                    tracing::warn!(cause = %e, "connection to the server lost");
                    self.lost(conn.generation);
                    // A closed connection is the sign of a restart: try a fresh one. A timeout
                    // or a malformed reply would most likely just happen again.
                    attempts -= 1;
                    if attempts == 0 || !matches!(e, WireError::Closed | WireError::Io(_)) {
                        return Err(transport_rv(&e));
                    }
                }
                Err(e) => return Err(e.rv()),
            }
        }
    }

    /// A call on one of our sessions: `f` gets the client and the server's session handle.
    pub(crate) fn session_call<T>(
        &self,
        handle: CK_SESSION_HANDLE,
        f: impl FnOnce(&Client, u64) -> p11fwd_wire::Result<T>,
    ) -> Result<T> {
        let session = self.session(handle)?;
        let conn = match self.current()? {
            Some(c) if c.generation == session.generation => c,
            _ => {
                self.forget(handle);
                return Err(rv(CKR_SESSION_HANDLE_INVALID));
            }
        };
        match f(&conn.client, session.remote) {
            Ok(v) => Ok(v),
            Err(e) if e.is_fatal() => {
                tracing::warn!(cause = %e, "connection to the server lost during a session call");
                self.lost(conn.generation);
                self.forget(handle);
                Err(transport_rv(&e))
            }
            Err(e) => {
                let code = e.rv();
                if code.0 == CKR_SESSION_HANDLE_INVALID || code.0 == CKR_SESSION_CLOSED {
                    self.forget(handle);
                }
                Err(code)
            }
        }
    }

    /// Our session, or `CKR_SESSION_HANDLE_INVALID`.
    fn session(&self, handle: CK_SESSION_HANDLE) -> Result<Session> {
        lock(&self.sessions)?
            .map
            .get(&handle)
            .copied()
            .ok_or(rv(CKR_SESSION_HANDLE_INVALID))
    }

    /// Whether `handle` is one of our sessions (for calls answered without a round trip).
    pub(crate) fn check_session(&self, handle: CK_SESSION_HANDLE) -> Result<()> {
        let session = self.session(handle)?;
        match self.current()? {
            Some(c) if c.generation == session.generation => Ok(()),
            _ => {
                self.forget(handle);
                Err(rv(CKR_SESSION_HANDLE_INVALID))
            }
        }
    }

    /// Register a session the server opened on connection `generation`; returns our handle.
    pub(crate) fn add_session(
        &self,
        generation: u64,
        slot: CK_SLOT_ID,
        remote: u64,
    ) -> Result<CK_SESSION_HANDLE> {
        let mut s = lock(&self.sessions)?;
        loop {
            s.last = s.last.wrapping_add(1);
            // 0 is CK_INVALID_HANDLE.
            if s.last != 0 && !s.map.contains_key(&s.last) {
                break;
            }
        }
        let handle = s.last;
        s.map.insert(
            handle,
            Session {
                remote,
                slot,
                generation,
            },
        );
        Ok(handle)
    }

    /// Forget one session.
    pub(crate) fn forget(&self, handle: CK_SESSION_HANDLE) {
        if let Ok(mut s) = self.sessions.lock() {
            s.map.remove(&handle);
        }
    }

    /// Forget every session of `slot` (after `C_CloseAllSessions`).
    pub(crate) fn forget_slot(&self, slot: CK_SLOT_ID) {
        if let Ok(mut s) = self.sessions.lock() {
            s.map.retain(|_, v| v.slot != slot);
        }
    }

    /// `C_WaitForSlotEvent`: always asks the server with `CKF_DONT_BLOCK` (a blocking wait
    /// would stall every other request on the connection, rpc §6 id 65). A blocking wait polls
    /// without holding any lock, and ends with `CKR_CRYPTOKI_NOT_INITIALIZED` when another
    /// thread calls `C_Finalize`.
    pub(crate) fn wait_for_slot_event(&self, flags: u64) -> Result<CK_SLOT_ID> {
        loop {
            if self.finalized.load(Ordering::SeqCst) {
                return Err(rv(CKR_CRYPTOKI_NOT_INITIALIZED));
            }
            let got = self.slot_call(
                true,
                || Err(rv(CKR_NO_EVENT)),
                |c| c.client.wait_for_slot_event(CKF_DONT_BLOCK),
            );
            match got {
                Err(code) if code.0 == CKR_NO_EVENT && flags & CKF_DONT_BLOCK == 0 => {
                    std::thread::sleep(SLOT_EVENT_POLL);
                }
                other => return other,
            }
        }
    }
}
