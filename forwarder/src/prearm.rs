//! Signing ahead: sessions of our own on which `C_SignInit` was already called for a key and
//! mechanism that clients keep signing with, so that a client's `C_SignInit` + `C_Sign` waits
//! only for the signature.
//!
//! Many modules do much of a signature's work in `C_SignInit` (SoftHSM reads, decrypts and
//! parses the private key there: 96 µs of an ECDSA P-256 signature's 149 µs in one of our
//! benchmark runs). Once a client signed with a (token, key, mechanism), we keep up to
//! `--sign-ahead N` spare sessions of the module initialised for it. A client's `C_SignInit`
//! that finds an idle spare is answered without calling the module and the client session is
//! *bound* to the spare: its `C_Sign` runs there, and the spare is initialised again by the
//! arming thread (`p11fwd-prearm`, at the lowest priority) while the client is busy with the
//! reply. The client cannot tell: a spare was initialised with the same key
//! and mechanism, so the module accepted that `C_SignInit`; any other call on a bound session
//! first moves the operation back to the client's own session (`C_SignInit` there, which the
//! module accepted on the spare) and returns the spare, still clean, to its pool.
//!
//! Decryption is done ahead the same way ([`Op::Decrypt`]: `C_DecryptInit` on the spare, the
//! client's `C_Decrypt` there).
//!
//! Only for token objects, mechanisms without pointers in their parameter (none, or PSS),
//! connections that are logged in, keys without `CKA_ALWAYS_AUTHENTICATE`, and client sessions
//! with no operation active. Everything armed for a token is dropped when the module logs out
//! or an object of the token is destroyed or changed (the token's *epoch* moves on): a spare
//! armed before is never used after.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use p11fwd_wire::consts::*;
use p11fwd_wire::value::{AttrSlot, Attribute, MechParam, Mechanism};
use p11fwd_wire::{CallId, Dialect, Rv};
use tracing::debug;

use crate::module::{InOut, InitKind, Module, NativeMechanism, OutTemplate, RawParams};
use crate::state::TokenKey;

/// Spare sessions per (token, key, mechanism) by default.
pub const DEFAULT_PER_KEY: u8 = 4;
/// (token, key, mechanism) combinations armed at once; the least recently used goes first.
const MAX_KEYS: usize = 16;
/// Tokens that allow fewer sessions than this get no spares (their sessions are the clients').
const MIN_MAX_SESSIONS: u64 = 64;

/// What a spare session is initialised for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Armed {
    pub(crate) token: TokenKey,
    /// The module's object handle of the key.
    pub(crate) key: u64,
    pub(crate) mech: Mechanism,
    /// [`Op::Sign`] or [`Op::Decrypt`].
    pub(crate) op: Op,
}

/// The operations a spare may be initialised for: one input, one output, in one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    Sign,
    Decrypt,
}

impl Op {
    /// Of a `C_*Init`, if spares may do it.
    pub(crate) fn of(kind: InitKind) -> Option<Self> {
        match kind {
            InitKind::Sign => Some(Self::Sign),
            InitKind::Decrypt => Some(Self::Decrypt),
            _ => None,
        }
    }

    pub(crate) fn init_kind(self) -> InitKind {
        match self {
            Self::Sign => InitKind::Sign,
            Self::Decrypt => InitKind::Decrypt,
        }
    }

    /// The one-call operation that runs on the spare (`C_Sign`, `C_Decrypt`).
    pub(crate) fn in_out(self) -> InOut {
        match self {
            Self::Sign => InOut::Sign,
            Self::Decrypt => InOut::Decrypt,
        }
    }

    /// The calls that continue or end the operation: the one-call form first, then the
    /// multi-part ones.
    pub(crate) fn calls(self) -> [CallId; 3] {
        match self {
            Self::Sign => [CallId::Sign, CallId::SignUpdate, CallId::SignFinal],
            Self::Decrypt => [CallId::Decrypt, CallId::DecryptUpdate, CallId::DecryptFinal],
        }
    }

    /// Its bit in `SessionEntry::ops`.
    pub(crate) fn ops_bit(self) -> u16 {
        match self {
            Self::Sign => crate::state::ops::SIGN,
            Self::Decrypt => crate::state::ops::DECRYPT,
        }
    }
}

/// A client session whose signing operation lives on a spare session.
#[derive(Clone, Debug)]
pub(crate) struct Bound {
    pub(crate) what: Armed,
    /// The spare's real session handle.
    pub(crate) spare: u64,
    epoch: u64,
}

/// Mechanisms whose operation may be initialised ahead: their parameter holds no pointer and
/// is compared by value.
pub(crate) fn eligible(m: &Mechanism) -> bool {
    matches!(m.param, MechParam::None | MechParam::RsaPkcsPss { .. })
}

/// The native form of an eligible mechanism (no object handles to translate, no raw bytes).
pub(crate) fn native(m: &Mechanism) -> Result<NativeMechanism, Rv> {
    NativeMechanism::new(
        m,
        &|_| Err(Rv(CKR_MECHANISM_PARAM_INVALID)),
        &RawParams::default(),
    )
}

struct Pool {
    what: Armed,
    /// Armed and unused: (session, epoch it was armed in).
    idle: Vec<(u64, u64)>,
    /// Sessions of this pool bound to a client session or being armed.
    out: usize,
    last_used: u64,
}

#[derive(Default)]
struct Inner {
    pools: Vec<Pool>,
    /// Per token: moves on when everything armed for it must be dropped.
    epochs: HashMap<TokenKey, u64>,
    /// Combinations (token, key, mechanism type, operation) that failed to arm in the token's
    /// current epoch.
    refused: HashSet<(TokenKey, u64, u64, Op)>,
    /// `CKA_ALWAYS_AUTHENTICATE` of the keys looked at.
    always_auth: HashMap<(TokenKey, u64), bool>,
    /// Per token, whether it may have spares: not if it allows few sessions, or ran out of
    /// them (never reset).
    roomy: HashMap<TokenKey, bool>,
    tick: u64,
}

impl Inner {
    fn epoch(&self, token: TokenKey) -> u64 {
        self.epochs.get(&token).copied().unwrap_or(0)
    }

    fn pool(&mut self, what: &Armed) -> Option<&mut Pool> {
        self.pools.iter_mut().find(|p| p.what == *what)
    }

    /// Take the idle spares of `token` out of their pools (to be closed).
    fn drain_idle(&mut self, token: TokenKey) -> Vec<u64> {
        self.pools
            .iter_mut()
            .filter(|p| p.what.token == token)
            .flat_map(|p| p.idle.drain(..).map(|(s, _)| s))
            .collect()
    }
}

enum Job {
    /// Initialise `session` (or a new session) for `what`, then add it to its pool.
    Arm {
        what: Armed,
        session: Option<u64>,
        epoch: u64,
    },
}

/// The pools, shared with the arming thread.
struct Core {
    per_key: usize,
    inner: Mutex<Inner>,
}

impl Core {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Return a session of `what`'s pool: to its idle spares if `armed` and still current,
    /// else closed.
    fn give_back(
        &self,
        what: &Armed,
        armed: bool,
        epoch: u64,
        session: u64,
        modules: &[Arc<Module>],
    ) {
        let kept = {
            let mut inner = self.inner();
            let current = inner.epoch(what.token) == epoch;
            match inner.pool(what) {
                Some(p) => {
                    p.out = p.out.saturating_sub(1);
                    if armed && current {
                        p.idle.push((session, epoch));
                    }
                    armed && current
                }
                None => false,
            }
        };
        if !kept {
            close_all(modules, what.token, &[session]);
        }
    }

    /// The arming thread: initialise spares until the channel closes.
    fn run(&self, modules: &[Arc<Module>], rx: &Receiver<Job>) {
        // Whether jobs come back to back: then the thread waits for the next one awake.
        let mut spin = false;
        let mut done = Instant::now();
        while let Some(Job::Arm {
            what,
            session,
            epoch,
        }) = next_job(rx, spin)
        {
            spin = done.elapsed() < SPIN;
            let Some(module) = modules.get(what.token.module) else {
                continue;
            };
            let lib = &module.lib;
            let session = match session {
                Some(s) => Ok(s),
                None => lib.open_session(what.token.slot, CKF_SERIAL_SESSION),
            };
            let s = match session {
                Ok(s) => s,
                Err(rv) => {
                    if rv.0 == CKR_SESSION_COUNT {
                        self.inner().roomy.insert(what.token, false);
                    }
                    self.give_back(&what, false, epoch, 0, &[]);
                    continue;
                }
            };
            let armed = self.arm(lib, s, &what, epoch);
            if !armed && self.inner().epoch(what.token) == epoch {
                debug!(
                    target: "p11fwd::prearm",
                    mechanism = what.mech.ty,
                    "cannot sign ahead with this key and mechanism"
                );
                self.inner()
                    .refused
                    .insert((what.token, what.key, what.mech.ty, what.op));
            }
            self.give_back(&what, armed, epoch, s, modules);
            // Once the spare is back in its pool (the tests count these lines).
            debug!(target: "p11fwd::prearm", mechanism = what.mech.ty, armed, "arming a spare");
            done = Instant::now();
        }
    }

    /// `C_SignInit` on `s` for `what`, unless the epoch moved on or the key needs a login per
    /// operation.
    fn arm(&self, lib: &crate::module::Library, s: u64, what: &Armed, epoch: u64) -> bool {
        let check = {
            let inner = self.inner();
            if inner.epoch(what.token) != epoch
                || inner
                    .refused
                    .contains(&(what.token, what.key, what.mech.ty, what.op))
            {
                return false;
            }
            match inner.always_auth.get(&(what.token, what.key)) {
                Some(true) => return false,
                Some(false) => false,
                None => true,
            }
        };
        if check {
            let slots = [AttrSlot {
                ty: CKA_ALWAYS_AUTHENTICATE,
                buflen: 1,
                nested: None,
            }];
            let mut budget = 64;
            let Ok(mut t) = OutTemplate::new(&slots, Dialect::V2, &mut budget) else {
                return false;
            };
            let _ = lib.get_attribute_value(s, what.key, &mut t);
            let always = t
                .into_attributes(Dialect::V2)
                .first()
                .and_then(Attribute::as_bool)
                .unwrap_or(false);
            self.inner()
                .always_auth
                .insert((what.token, what.key), always);
            if always {
                return false;
            }
        }
        let Ok(mut m) = native(&what.mech) else {
            return false;
        };
        lib.init(what.op.init_kind(), s, Some(&mut m), what.key)
            .is_ok()
    }
}

/// How long the arming thread stays awake for its next job when jobs come back to back.
const SPIN: Duration = Duration::from_millis(1);

/// The arming thread's next job; `None` once the channel is closed. With `spin`, the thread
/// polls the channel for up to [`SPIN`] before it sleeps.
///
/// Why stay awake: when a thread wakes another, Linux puts the woken one on an idle CPU if
/// there is one. While a client signs back to back, the client and the connection thread wake
/// each other twice per signature and never run at the same time, so the fastest layout has
/// them share a CPU and the arming thread on another; but each time the arming thread sleeps,
/// its CPU is idle and the next wake-up moves the client or the connection thread there, which
/// then pays a cross-CPU wake-up (on a VM, an idle virtual CPU is halted: tens of µs) twice
/// per signature, and the arming thread shares a CPU with one of them. Awake (at nice 19, so
/// any other thread that wants the CPU gets it), it keeps its CPU busy: on a 2-CPU VM the
/// no-delay ECDSA rate went from 9–20 k/s (median 14.6 k) to 14.7–21 k/s (median 17.8 k),
/// docs/benchmarks.md. The cost is at most [`SPIN`] of CPU time after the last job of a burst;
/// jobs further apart than that never spin.
fn next_job(rx: &Receiver<Job>, spin: bool) -> Option<Job> {
    if spin {
        let end = Instant::now() + SPIN;
        loop {
            match rx.try_recv() {
                Ok(job) => return Some(job),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) if Instant::now() >= end => break,
                Err(TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
    }
    rx.recv().ok()
}

fn close_all(modules: &[Arc<Module>], token: TokenKey, sessions: &[u64]) {
    if let Some(m) = modules.get(token.module) {
        for s in sessions {
            let _ = m.lib.close_session(*s);
        }
    }
}

/// The spare sessions of the process. See the module documentation.
pub struct Prearm {
    core: Arc<Core>,
    armer: Mutex<Option<(Sender<Job>, JoinHandle<()>)>>,
}

impl std::fmt::Debug for Prearm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prearm")
            .field("per_key", &self.core.per_key)
            .finish_non_exhaustive()
    }
}

impl Prearm {
    /// Up to `per_key` spare sessions per (token, key, mechanism); 0 turns signing ahead off.
    pub fn new(per_key: usize) -> Self {
        Self {
            core: Arc::new(Core {
                per_key,
                inner: Mutex::new(Inner::default()),
            }),
            armer: Mutex::new(None),
        }
    }

    /// Whether signing ahead is on.
    pub fn enabled(&self) -> bool {
        self.core.per_key > 0
    }

    /// An idle spare armed for `what` in the current epoch, bound from now on.
    pub(crate) fn take(&self, what: &Armed, modules: &[Arc<Module>]) -> Option<Bound> {
        if !self.enabled() {
            return None;
        }
        let mut stale = Vec::new();
        let found = {
            let mut inner = self.core.inner();
            inner.tick += 1;
            let (tick, epoch) = (inner.tick, inner.epoch(what.token));
            let pool = inner.pool(what)?;
            pool.last_used = tick;
            let mut found = None;
            while let Some((spare, e)) = pool.idle.pop() {
                if e == epoch {
                    pool.out += 1;
                    found = Some(Bound {
                        what: what.clone(),
                        spare,
                        epoch,
                    });
                    break;
                }
                stale.push(spare);
            }
            found
        };
        close_all(modules, what.token, &stale);
        found
    }

    /// Whether `b` was armed in its token's current epoch.
    pub(crate) fn current(&self, b: &Bound) -> bool {
        self.core.inner().epoch(b.what.token) == b.epoch
    }

    /// A client signed with `what` on its own session: arm spares for it if it has fewer than
    /// `per_key`.
    pub(crate) fn want(&self, what: &Armed, modules: &[Arc<Module>]) {
        if !self.enabled() {
            return;
        }
        let mut evicted = Vec::new();
        let (n, epoch) = {
            let mut inner = self.core.inner();
            if inner
                .refused
                .contains(&(what.token, what.key, what.mech.ty, what.op))
                || inner.always_auth.get(&(what.token, what.key)) == Some(&true)
            {
                return;
            }
            let roomy = *inner.roomy.entry(what.token).or_insert_with(|| {
                // CK_UNAVAILABLE_INFORMATION and CK_EFFECTIVELY_INFINITE (0) are fine.
                modules
                    .get(what.token.module)
                    .and_then(|m| m.lib.token_info(what.token.slot).ok())
                    .is_some_and(|t| {
                        let max = t.max_session_count;
                        max == 0 || max == CK_UNAVAILABLE_INFORMATION || max >= MIN_MAX_SESSIONS
                    })
            });
            if !roomy {
                return;
            }
            let epoch = inner.epoch(what.token);
            inner.tick += 1;
            let tick = inner.tick;
            if inner.pool(what).is_none() {
                if inner.pools.len() >= MAX_KEYS
                    && let Some(i) =
                        (0..inner.pools.len()).min_by_key(|i| inner.pools[*i].last_used)
                {
                    // The least recently used combination goes; its sessions still out are
                    // closed when they come back.
                    let p = inner.pools.swap_remove(i);
                    evicted = p.idle.iter().map(|(s, _)| (p.what.token, *s)).collect();
                }
                inner.pools.push(Pool {
                    what: what.clone(),
                    idle: Vec::new(),
                    out: 0,
                    last_used: tick,
                });
            }
            let per_key = self.core.per_key;
            let Some(pool) = inner.pool(what) else {
                return;
            };
            pool.last_used = tick;
            let n = per_key.saturating_sub(pool.idle.len() + pool.out);
            pool.out += n;
            (n, epoch)
        };
        for (token, s) in evicted {
            close_all(modules, token, &[s]);
        }
        for _ in 0..n {
            self.send(
                Job::Arm {
                    what: what.clone(),
                    session: None,
                    epoch,
                },
                modules,
            );
        }
    }

    /// The bound operation ended (its `C_Sign` returned a signature or an error): initialise
    /// the spare again.
    pub(crate) fn finished(&self, b: Bound, modules: &[Arc<Module>]) {
        let keep = {
            let inner = self.core.inner();
            inner.epoch(b.what.token) == b.epoch && inner.pools.iter().any(|p| p.what == b.what)
        };
        if keep {
            self.send(
                Job::Arm {
                    what: b.what,
                    session: Some(b.spare),
                    epoch: b.epoch,
                },
                modules,
            );
        } else {
            self.core
                .give_back(&b.what, false, b.epoch, b.spare, modules);
        }
    }

    /// The bound operation was never used (its client session closed, or the operation moved
    /// to the client's session): the spare is still armed and clean.
    pub(crate) fn release(&self, b: Bound, modules: &[Arc<Module>]) {
        self.core
            .give_back(&b.what, true, b.epoch, b.spare, modules);
    }

    /// Everything armed for `token` is dropped: the module logs out, or one of its objects
    /// was destroyed or changed.
    pub(crate) fn invalidate(&self, token: TokenKey, modules: &[Arc<Module>]) {
        if !self.enabled() {
            return;
        }
        let idle: Vec<u64> = {
            let mut inner = self.core.inner();
            *inner.epochs.entry(token).or_default() += 1;
            inner.refused.retain(|r| r.0 != token);
            inner.always_auth.retain(|r, _| r.0 != token);
            inner.drain_idle(token)
        };
        close_all(modules, token, &idle);
    }

    /// A client could not open a session on `token` (`CKR_SESSION_COUNT`): close its idle
    /// spares for good. `true` if any were closed (the client may try again).
    pub(crate) fn make_room(&self, token: TokenKey, modules: &[Arc<Module>]) -> bool {
        if !self.enabled() {
            return false;
        }
        let idle: Vec<u64> = {
            let mut inner = self.core.inner();
            inner.roomy.insert(token, false);
            inner.drain_idle(token)
        };
        close_all(modules, token, &idle);
        !idle.is_empty()
    }

    /// Stop the arming thread (before the modules are finalised).
    pub fn stop(&self) {
        let armer = self
            .armer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((tx, thread)) = armer {
            drop(tx);
            let _ = thread.join();
        }
    }

    fn send(&self, job: Job, modules: &[Arc<Module>]) {
        let mut armer = self.armer.lock().unwrap_or_else(PoisonError::into_inner);
        if armer.is_none() {
            let (tx, rx) = mpsc::channel();
            let core = self.core.clone();
            let mods = modules.to_vec();
            match std::thread::Builder::new()
                .name("p11fwd-prearm".into())
                .spawn(move || {
                    // Spares are armed with spare CPU time: at the lowest priority (Linux nice
                    // is per thread), the thread that signs, and the client, always go first.
                    // A machine without idle time then simply has fewer spares ready.
                    let _ = rustix::process::setpriority_process(None, 19);
                    core.run(&mods, &rx)
                }) {
                Ok(t) => *armer = Some((tx, t)),
                Err(e) => {
                    debug!(cause = %e, "cannot start the arming thread");
                    drop(armer);
                    let Job::Arm {
                        what,
                        epoch,
                        session,
                    } = job;
                    // A new session was not opened yet: nothing to close.
                    let (s, m) = session.map_or((0, &[][..]), |s| (s, modules));
                    self.core.give_back(&what, false, epoch, s, m);
                    return;
                }
            }
        }
        if let Some((tx, _)) = armer.as_ref() {
            let _ = tx.send(job);
        }
    }
}
