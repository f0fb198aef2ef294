//! The module state: initialisation, fork detection, the shared connection, reconnection and
//! session handles.
//!
//! - One `Mutex<Option<Arc<Module>>>` per instance, held only long enough to clone the `Arc`:
//!   calls run without any global lock, and many threads share one connection (the blocking
//!   transport multiplexes them by request code). Every `C_GetFunctionList`/`C_GetInterface`
//!   hands out the function list of a new instance, with its own `C_Initialize`, connection and
//!   `C_Finalize`, as `p11-kit-client.so` does (two users of the module in one process, e.g. NSS
//!   and p11-kit-proxy, do not share or close each other's connection). The lists' functions
//!   are `boundary::Instance<I>`'s, which run the exported function with `CURRENT = I`.
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

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cryptoki_sys::{
    CK_SESSION_HANDLE, CK_SLOT_ID, CKF_DONT_BLOCK, CKR_CRYPTOKI_ALREADY_INITIALIZED,
    CKR_CRYPTOKI_NOT_INITIALIZED, CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED, CKR_GENERAL_ERROR,
    CKR_NO_EVENT, CKR_SESSION_CLOSED, CKR_SESSION_HANDLE_INVALID,
};
use p11fwd_wire::client::{Client, parse, req};
use p11fwd_wire::info::MechanismInfo;
use p11fwd_wire::message::Request;
use p11fwd_wire::transport::blocking::Connection;
use p11fwd_wire::{Arg, CallId, Dialect, Error as WireError, Rv};
use rustix::process::{Pid, getpid};

use crate::config::{self, Config};
use crate::functions::scrub;
use crate::pipeline::{
    Event, KeyMeta, Objects, OpSet, OpState, Pending, PendingKind, meta_request,
};
use crate::{Result, rv};

/// How many function lists `C_GetFunctionList`/`C_GetInterface` can hand out, each its own
/// module instance (as `p11-kit-client.so` makes one per call, rpc §8). Instance 0 belongs to
/// the exported `C_*` symbols, called directly, and serves every list asked for after these.
pub(crate) const INSTANCES: usize = 64;

/// The state of each instance (its `C_Initialize`, connection, sessions).
static STATES: [Mutex<Option<Arc<Module>>>; INSTANCES + 1] =
    [const { Mutex::new(None) }; INSTANCES + 1];

/// The next instance to hand out.
static NEXT: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// The instance whose function the calling thread is in (0 for the exported symbols).
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// A fresh instance for a new function list; instance 0 (shared with the exported symbols)
/// once all are handed out.
pub(crate) fn new_instance() -> usize {
    let i = NEXT
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n <= INSTANCES).then_some(n + 1)
        })
        .unwrap_or(0);
    if i == 0 {
        tracing::warn!(
            instances = INSTANCES,
            "every function list has been handed out; this one shares the exported symbols' instance"
        );
    }
    i
}

/// Run `f` (an exported function) as a function of instance `i`.
pub(crate) fn with_instance<R>(i: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.set(self.0);
        }
    }
    let _restore = Restore(CURRENT.replace(i));
    f()
}

/// The state of the calling function's instance.
fn this_instance() -> &'static Mutex<Option<Arc<Module>>> {
    &STATES[CURRENT.get().min(INSTANCES)]
}

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
    let mut state = lock(this_instance())?;
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
        objects: Mutex::new(Objects::default()),
        cache: Mutex::new(Cache::default()),
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
        let mut state = lock(this_instance())?;
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
    let state = lock(this_instance())?;
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

/// A session: the server's handle, its slot, the connection it lives on, and its operations
/// and deferred requests (`crate::pipeline`).
#[derive(Debug)]
struct Session {
    remote: u64,
    slot: CK_SLOT_ID,
    generation: u64,
    ops: OpState,
    /// Held through a call on the session (see [`Module::session_tx`]).
    calls: Arc<Mutex<()>>,
}

/// Where a session lives, for a call on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Place {
    /// The server's session handle.
    pub(crate) remote: u64,
    /// The session's slot.
    pub(crate) slot: CK_SLOT_ID,
    /// The connection generation.
    pub(crate) generation: u64,
}

/// Answers that cannot change while a connection lives (issue 7): mechanism lists and
/// mechanism infos per slot, and the slot list of the last count query (PKCS#11 §5.5: the set
/// of slots is checked when `C_GetSlotList` is called with a NULL list).
#[derive(Debug, Default)]
struct Cache {
    generation: u64,
    mechanisms: HashMap<CK_SLOT_ID, Vec<u64>>,
    mechanism_info: HashMap<(CK_SLOT_ID, u64), MechanismInfo>,
    /// The list a count query fetched, for the call that fills the caller's buffer; index 1 for
    /// `tokenPresent`.
    slot_list: [Option<Vec<u64>>; 2],
}

impl Cache {
    fn sync(&mut self, generation: u64) -> &mut Self {
        if self.generation != generation {
            *self = Self {
                generation,
                ..Self::default()
            };
        }
        self
    }
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
    objects: Mutex<Objects>,
    cache: Mutex<Cache>,
    finalized: AtomicBool,
}

impl Module {
    /// Connect, negotiate the version and send the RPC `C_Initialize`.
    fn open(&self) -> std::result::Result<Client, Open> {
        // The RPC C_Initialize goes in the same write as the version byte: one round trip.
        let (conn, mut replies) = Connection::connect_with(
            &self.config.socket,
            self.config.options.clone(),
            &[req::initialize(self.reserved.as_deref())],
        )
        .map_err(Open::NoServer)?;
        let client = Client::new(conn);
        match replies
            .pop()
            .unwrap_or(Err(p11fwd_wire::Error::Closed))
            .and_then(parse::unit)
        {
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
    /// The session's deferred requests are sent first (in one write, before `f` runs).
    pub(crate) fn session_call<T>(
        &self,
        handle: CK_SESSION_HANDLE,
        f: impl FnOnce(&Client, u64) -> p11fwd_wire::Result<T>,
    ) -> Result<T> {
        self.session_tx(handle, OpSet::NONE, None, |tx, s| f(tx.client()?, s))
    }

    /// A call on one of our sessions through a [`Tx`], whose first request travels in one
    /// write with the session's deferred requests (`crate::pipeline`).
    ///
    /// `uses`: the operation kinds this call continues (`C_Sign` continues a Sign). A deferred
    /// Init of one of them that the server rejected makes this call return the Init's CK_RV,
    /// without a round trip if that was already known. `meta`: a key whose metadata should be
    /// fetched in the same write.
    pub(crate) fn session_tx<T>(
        &self,
        handle: CK_SESSION_HANDLE,
        uses: OpSet,
        meta: Option<u64>,
        f: impl FnOnce(&Tx<'_>, u64) -> p11fwd_wire::Result<T>,
    ) -> Result<T> {
        // One call at a time per session, from taking its deferred requests until their
        // outcome is recorded: a thread must not send another thread's deferred Init after
        // that thread's own call (replies of one session would then come in the wrong order).
        let calls = lock(&self.sessions)?
            .map
            .get(&handle)
            .map(|s| Arc::clone(&s.calls))
            .ok_or(rv(CKR_SESSION_HANDLE_INVALID))?;
        let _one_call = calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (place, pending) = {
            let mut sessions = lock(&self.sessions)?;
            let session = sessions
                .map
                .get_mut(&handle)
                .ok_or(rv(CKR_SESSION_HANDLE_INVALID))?;
            if let Some(code) = session.ops.take_failure_in(uses) {
                return Err(code);
            }
            let place = Place {
                remote: session.remote,
                slot: session.slot,
                generation: session.generation,
            };
            (place, session.ops.take_pending())
        };
        let conn = match self.current() {
            Ok(Some(c)) if c.generation == place.generation => c,
            other => {
                self.forget(handle);
                other?;
                return Err(rv(CKR_SESSION_HANDLE_INVALID));
            }
        };
        let tx = Tx {
            client: &conn.client,
            remote: place.remote,
            uses,
            pending: RefCell::new(pending),
            outcomes: RefCell::new(Vec::new()),
            meta_for: Cell::new(meta),
            meta: RefCell::new(None),
        };
        let res = f(&tx, place.remote);
        self.settle(handle, place, tx);
        match res {
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

    /// After a [`Tx`]: record what the deferred requests did, put back those not sent, keep
    /// fetched key metadata.
    fn settle(&self, handle: CK_SESSION_HANDLE, place: Place, tx: Tx<'_>) {
        let Tx {
            pending,
            outcomes,
            meta,
            ..
        } = tx;
        if let Some((key, m)) = meta.into_inner()
            && let Ok(mut objects) = self.objects.lock()
        {
            objects.store_meta(place.generation, place.slot, key, m);
        }
        let Ok(mut sessions) = self.sessions.lock() else {
            return;
        };
        let Some(session) = sessions.map.get_mut(&handle) else {
            return;
        };
        for (kind, result, reported) in outcomes.into_inner() {
            session.ops.pending_done(kind, result, reported);
        }
        let unsent = pending.into_inner();
        if !unsent.is_empty() {
            session.ops.restore_pending(unsent);
        }
    }

    /// Run `f` on a session's operation state (our session on the current connection, else
    /// `CKR_SESSION_HANDLE_INVALID`).
    pub(crate) fn with_ops<R>(
        &self,
        handle: CK_SESSION_HANDLE,
        f: impl FnOnce(&mut OpState, Place) -> R,
    ) -> Result<R> {
        self.check_session(handle)?;
        let mut sessions = lock(&self.sessions)?;
        let session = sessions
            .map
            .get_mut(&handle)
            .ok_or(rv(CKR_SESSION_HANDLE_INVALID))?;
        let place = Place {
            remote: session.remote,
            slot: session.slot,
            generation: session.generation,
        };
        Ok(f(&mut session.ops, place))
    }

    /// Record what a call did to its session's operations (a session that went away is fine).
    pub(crate) fn record(&self, handle: CK_SESSION_HANDLE, event: Event) {
        if let Ok(mut sessions) = self.sessions.lock()
            && let Some(s) = sessions.map.get_mut(&handle)
        {
            s.ops.record(event);
        }
    }

    /// The object handles and key metadata of the current connection.
    pub(crate) fn objects(&self) -> Result<MutexGuard<'_, Objects>> {
        lock(&self.objects)
    }

    /// The negotiated dialect of the current connection, if any.
    pub(crate) fn dialect(&self) -> Option<Dialect> {
        self.current().ok().flatten().map(|c| c.client.dialect())
    }

    /// A slot's mechanism list, if this connection asked for it already.
    pub(crate) fn cached_mechanisms(&self, generation: u64, slot: CK_SLOT_ID) -> Option<Vec<u64>> {
        let mut cache = self.cache.lock().ok()?;
        cache.sync(generation).mechanisms.get(&slot).cloned()
    }

    /// Keep a slot's mechanism list for the connection's life.
    pub(crate) fn keep_mechanisms(&self, generation: u64, slot: CK_SLOT_ID, list: &[u64]) {
        if let Ok(mut cache) = self.cache.lock() {
            cache
                .sync(generation)
                .mechanisms
                .insert(slot, list.to_vec());
        }
    }

    /// A cached mechanism info.
    pub(crate) fn cached_mechanism_info(
        &self,
        generation: u64,
        slot: CK_SLOT_ID,
        ty: u64,
    ) -> Option<MechanismInfo> {
        let mut cache = self.cache.lock().ok()?;
        cache
            .sync(generation)
            .mechanism_info
            .get(&(slot, ty))
            .cloned()
    }

    /// Keep a mechanism info for the connection's life.
    pub(crate) fn keep_mechanism_info(
        &self,
        generation: u64,
        slot: CK_SLOT_ID,
        ty: u64,
        info: &MechanismInfo,
    ) {
        if let Ok(mut cache) = self.cache.lock() {
            cache
                .sync(generation)
                .mechanism_info
                .insert((slot, ty), *info);
        }
    }

    /// The slot list a count query of this connection fetched (taken: used once).
    pub(crate) fn take_slot_list(&self, generation: u64, token_present: bool) -> Option<Vec<u64>> {
        let mut cache = self.cache.lock().ok()?;
        cache.sync(generation).slot_list[usize::from(token_present)].take()
    }

    /// Keep the slot list a count query fetched, for the call that fills the buffer.
    pub(crate) fn keep_slot_list(&self, generation: u64, token_present: bool, list: Vec<u64>) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.sync(generation).slot_list[usize::from(token_present)] = Some(list);
        }
    }

    /// The slot of one of our sessions, on the current connection.
    pub(crate) fn place(&self, handle: CK_SESSION_HANDLE) -> Result<Place> {
        self.with_ops(handle, |_, p| p)
    }

    /// Our session, or `CKR_SESSION_HANDLE_INVALID`: (server handle, connection generation).
    fn session(&self, handle: CK_SESSION_HANDLE) -> Result<(u64, u64)> {
        lock(&self.sessions)?
            .map
            .get(&handle)
            .map(|s| (s.remote, s.generation))
            .ok_or(rv(CKR_SESSION_HANDLE_INVALID))
    }

    /// Whether `handle` is one of our sessions (for calls answered without a round trip).
    pub(crate) fn check_session(&self, handle: CK_SESSION_HANDLE) -> Result<()> {
        let (_, generation) = self.session(handle)?;
        match self.current()? {
            Some(c) if c.generation == generation => Ok(()),
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
                ops: OpState::default(),
                calls: Arc::default(),
            },
        );
        Ok(handle)
    }

    /// Forget one session (its deferred requests are dropped: they die with it).
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

/// What the server answered to a deferred request: (kind, result, reported to the application
/// by the call it travelled with).
type Outcome = (PendingKind, std::result::Result<(), Rv>, bool);

/// One session call's way to the server: its first request travels in one write with the
/// session's deferred requests (and a key-metadata fetch, if asked for).
pub(crate) struct Tx<'a> {
    client: &'a Client,
    remote: u64,
    uses: OpSet,
    /// Deferred requests not sent yet.
    pending: RefCell<Vec<Pending>>,
    /// What the server answered to the deferred requests: (kind, result, reported to the
    /// application by this call).
    outcomes: RefCell<Vec<Outcome>>,
    /// A key whose metadata to fetch with the first request.
    meta_for: Cell<Option<u64>>,
    meta: RefCell<Option<(u64, KeyMeta)>>,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("remote", &self.remote)
            .field("pending", &self.pending.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Tx<'_> {
    /// The negotiated dialect.
    pub(crate) fn dialect(&self) -> Dialect {
        self.client.dialect()
    }

    /// The client, after the deferred requests have been sent (for typed calls that cannot
    /// join the batch).
    pub(crate) fn client(&self) -> p11fwd_wire::Result<&Client> {
        if !self.pending.borrow().is_empty() || self.meta_for.get().is_some() {
            self.exchange(None)?;
        }
        Ok(self.client)
    }

    /// Send `req` (after the deferred requests, in the same write) and return its reply. If a
    /// deferred Init of a kind this call continues was rejected, that CK_RV is the result.
    pub(crate) fn call(&self, req: &Request) -> p11fwd_wire::Result<Vec<Arg>> {
        if self.pending.borrow().is_empty() && self.meta_for.get().is_none() {
            return self.client.connection().call(req);
        }
        // A request this server cannot take is refused locally; the deferred requests must not
        // go down with it (call_batch refuses a whole batch), so they wait for the next call.
        let dialect = self.client.dialect();
        if !dialect.knows(req.call) || req.encode(dialect).is_err() {
            return self.client.connection().call(req);
        }
        self.exchange(Some(req))
    }

    /// Write the metadata fetch, the deferred requests and `own` in one batch; record what the
    /// server said to each; return `own`'s reply (empty without one).
    fn exchange(&self, own: Option<&Request>) -> p11fwd_wire::Result<Vec<Arg>> {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        let meta = self.meta_for.take();
        let mut batch = Vec::with_capacity(pending.len() + 2);
        if let Some(key) = meta {
            batch.push(meta_request(self.remote, key));
        }
        let kinds: Vec<(PendingKind, CallId)> =
            pending.iter().map(|p| (p.kind, p.req.call)).collect();
        batch.extend(pending.into_iter().map(|p| p.req));
        if let Some(r) = own {
            batch.push(r.clone());
        }
        tracing::trace!(requests = batch.len(), "pipelined batch");
        let replies = self.client.connection().call_batch(&batch);
        if own.is_some_and(|r| {
            matches!(
                r.call,
                CallId::Login | CallId::LoginUser | CallId::InitPIN | CallId::SetPIN
            )
        }) && let Some(last) = batch.last_mut()
        {
            scrub(last);
        }
        let mut replies = replies.into_iter();
        let missing = || WireError::Invalid("pipelined batch without a reply");
        if let Some(key) = meta {
            match replies.next().ok_or_else(missing)? {
                Ok(args) => {
                    if let Some(m) = KeyMeta::from_reply(args) {
                        *self.meta.borrow_mut() = Some((key, m));
                    }
                }
                Err(e) if e.is_fatal() => return Err(e),
                Err(_) => {}
            }
        }
        let mut failure = None;
        for (kind, call) in kinds {
            let result = match replies.next().ok_or_else(missing)? {
                Ok(_) => Ok(()),
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => Err(e.rv()),
            };
            let reported = match (kind, result) {
                (PendingKind::Init(op), Err(code)) if failure.is_none() && self.uses.has(op) => {
                    failure = Some((call, code));
                    true
                }
                _ => false,
            };
            self.outcomes.borrow_mut().push((kind, result, reported));
        }
        let reply = match own {
            Some(_) => replies.next().ok_or_else(missing)?,
            None => Ok(Vec::new()),
        };
        if let Some((call, code)) = failure {
            tracing::debug!(%call, rv = %code, "a deferred request failed; reported now");
            if let Err(e) = &reply
                && e.is_fatal()
            {
                return reply;
            }
            return Err(WireError::Rv {
                call: own.map_or(call, |r| r.call),
                rv: code,
            });
        }
        reply
    }
}
