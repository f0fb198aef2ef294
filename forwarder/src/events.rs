//! `C_WaitForSlotEvent` for many connections over one module instance.
//!
//! Stock p11-kit gives every connection its own process, so every connection's module instance
//! reports every event. Here one instance serves everyone, and an event the module reports is
//! consumed by whichever thread asked first. So events are fanned out:
//!
//! - A connection **subscribes** at its first `C_WaitForSlotEvent`; from then on every event on a
//!   slot it exports is queued for it (as its virtual slot id, at most [`MAX_QUEUED`] distinct
//!   slots), until its `C_Finalize` or disconnect. Events on slots it does not export are
//!   ignored for it.
//! - While at least one blocking wait is pending on a module, one dedicated thread per module
//!   (the **pump**, named `p11fwd-events`, never the runtime's blocking pool) sits in the
//!   module's blocking `C_WaitForSlotEvent` and publishes what it returns. It exits after the
//!   first return that finds no blocked waiter left. A module error (SoftHSM 2.6.1:
//!   CKR_FUNCTION_NOT_SUPPORTED) is handed to the blocked waiters and ends the pump.
//! - A `CKF_DONT_BLOCK` poll returns the connection's oldest queued event; with none, it asks
//!   each module whose pump is not running for an event (`CKF_DONT_BLOCK`, published to every
//!   subscriber), and otherwise answers the module's error or CKR_NO_EVENT.
//! - The waiting itself is async (`server.rs`): a pending wait holds no thread and no in-flight
//!   slot, so it blocks neither the connection's other requests nor C_Finalize, which ends it
//!   with CKR_CRYPTOKI_NOT_INITIALIZED; a disconnect drops it.
//! - At shutdown, modules with a pump inside `C_WaitForSlotEvent` are finalised, which per
//!   PKCS#11 makes the wait return CKR_CRYPTOKI_NOT_INITIALIZED. A module that never returns
//!   keeps one parked thread (one per module at most) until the process exits.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p11fwd_wire::Rv;
use p11fwd_wire::consts::*;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::module::Module;
use crate::state::{FIRST_SLOT, TokenKey, lock};

/// Events kept per connection between its waits.
pub const MAX_QUEUED: usize = 64;

/// The fan-out of slot events to the connections that wait for them.
#[derive(Debug)]
pub struct SlotEvents {
    subs: Mutex<HashMap<u64, Arc<Subscriber>>>,
    pumps: Vec<Mutex<Pump>>,
    shutting_down: AtomicBool,
}

/// The pump of one module.
#[derive(Debug, Default)]
struct Pump {
    /// A pump thread exists (it may be inside the module).
    running: bool,
    /// Blocking waits pending on connections that export this module's slots.
    blocked: usize,
}

/// One connection's subscription.
#[derive(Debug)]
pub struct Subscriber {
    /// The connection's slots: virtual slot `FIRST_SLOT + i` is `tokens[i]`.
    tokens: Vec<TokenKey>,
    state: Mutex<SubState>,
    /// Bumped on every change of `state`.
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct SubState {
    /// Virtual slot ids with an event, oldest first, each at most once.
    events: VecDeque<u64>,
    /// Module errors for the pending blocking waits.
    errors: VecDeque<Rv>,
    /// Pending blocking waits.
    blocked: usize,
}

impl Subscriber {
    /// A receiver that sees every later change.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The next answer for a blocking wait: an event, else a module error.
    pub(crate) fn next(&self) -> Option<Result<u64, Rv>> {
        let mut st = lock(&self.state).ok()?;
        if let Some(slot) = st.events.pop_front() {
            return Some(Ok(slot));
        }
        st.errors.pop_front().map(Err)
    }

    fn pop_event(&self) -> Option<u64> {
        lock(&self.state).ok()?.events.pop_front()
    }

    fn modules(&self) -> Vec<usize> {
        let mut m: Vec<usize> = self.tokens.iter().map(|t| t.module).collect();
        m.sort_unstable();
        m.dedup();
        m
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Queue an event on `token` if this connection exports it (without waking its waits);
    /// whether it does.
    fn offer(&self, token: TokenKey) -> bool {
        let Some(i) = self.tokens.iter().position(|t| *t == token) else {
            return false;
        };
        let slot = FIRST_SLOT + i as u64;
        if let Ok(mut st) = lock(&self.state)
            && !st.events.contains(&slot)
        {
            if st.events.len() >= MAX_QUEUED {
                st.events.pop_front();
            }
            st.events.push_back(slot);
        }
        true
    }
}

/// Ends a blocking wait's registration (on return, cancellation or drop).
#[derive(Debug)]
pub struct WaitGuard {
    events: Arc<SlotEvents>,
    sub: Arc<Subscriber>,
    modules: Vec<usize>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if let Ok(mut st) = lock(&self.sub.state) {
            st.blocked = st.blocked.saturating_sub(1);
            if st.blocked == 0 {
                st.errors.clear();
            }
        }
        for m in &self.modules {
            if let Some(p) = self.events.pumps.get(*m)
                && let Ok(mut p) = lock(p)
            {
                p.blocked = p.blocked.saturating_sub(1);
            }
        }
    }
}

impl SlotEvents {
    /// The fan-out for `modules` modules.
    pub fn new(modules: usize) -> Self {
        Self {
            subs: Mutex::new(HashMap::new()),
            pumps: (0..modules).map(|_| Mutex::new(Pump::default())).collect(),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// The subscription of connection `conn` (made on first use) exporting `tokens`.
    pub(crate) fn subscribe(
        &self,
        conn: u64,
        tokens: Vec<TokenKey>,
    ) -> Result<Arc<Subscriber>, Rv> {
        let mut subs = lock(&self.subs)?;
        Ok(subs
            .entry(conn)
            .or_insert_with(|| {
                Arc::new(Subscriber {
                    tokens,
                    state: Mutex::new(SubState::default()),
                    changed: watch::Sender::new(0),
                })
            })
            .clone())
    }

    /// Connection `conn` finalised or went away: forget its subscription and queued events.
    pub(crate) fn unsubscribe(&self, conn: u64) {
        if let Ok(mut subs) = lock(&self.subs) {
            subs.remove(&conn);
        }
    }

    /// Hand an event on `token` to every subscriber exporting it.
    fn publish(&self, token: TokenKey) {
        let subs: Vec<Arc<Subscriber>> = match lock(&self.subs) {
            Ok(s) => s.values().cloned().collect(),
            Err(_) => return,
        };
        debug!(
            module = token.module,
            slot = token.slot,
            subscribers = subs.len(),
            "slot event"
        );
        // Queue it everywhere before waking anyone, so that no connection can see the event
        // answered elsewhere and then miss it in its own queue.
        let queued: Vec<&Arc<Subscriber>> = subs.iter().filter(|s| s.offer(token)).collect();
        for s in queued {
            s.bump();
        }
    }

    /// Hand module `m`'s error to the blocking waits of the subscribers that export it.
    fn fail(&self, m: usize, rv: Rv) {
        let subs: Vec<Arc<Subscriber>> = match lock(&self.subs) {
            Ok(s) => s.values().cloned().collect(),
            Err(_) => return,
        };
        for s in subs {
            if !s.tokens.iter().any(|t| t.module == m) {
                continue;
            }
            if let Ok(mut st) = lock(&s.state) {
                for _ in 0..st.blocked {
                    st.errors.push_back(rv);
                }
            }
            s.bump();
        }
    }

    /// A `CKF_DONT_BLOCK` wait: the subscriber's oldest event, else one fetched from the modules
    /// nobody is pumping, else the modules' error or CKR_NO_EVENT. May call the modules (without
    /// blocking): run it off the reactor.
    pub(crate) fn poll(&self, modules: &[Arc<Module>], sub: &Subscriber) -> Result<u64, Rv> {
        if let Some(slot) = sub.pop_event() {
            return Ok(slot);
        }
        let mut answer = None;
        for m in sub.modules() {
            let pumping = self
                .pumps
                .get(m)
                .and_then(|p| lock(p).ok().map(|p| p.running))
                .unwrap_or(true);
            let Some(module) = modules.get(m).filter(|_| !pumping) else {
                continue;
            };
            match module.lib.wait_for_slot_event(CKF_DONT_BLOCK) {
                Ok(slot) => self.publish(TokenKey { module: m, slot }),
                Err(Rv(CKR_NO_EVENT)) => {}
                Err(rv) => {
                    answer.get_or_insert(rv);
                }
            }
        }
        match sub.pop_event() {
            Some(slot) => Ok(slot),
            None => Err(answer.unwrap_or(Rv(CKR_NO_EVENT))),
        }
    }

    /// Register a blocking wait of `sub`, starting the pumps of its modules as needed.
    pub(crate) fn begin_wait(
        self: &Arc<Self>,
        modules: &[Arc<Module>],
        sub: &Arc<Subscriber>,
    ) -> Result<WaitGuard, Rv> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Rv(CKR_CRYPTOKI_NOT_INITIALIZED));
        }
        lock(&sub.state)?.blocked += 1;
        let mut guard = WaitGuard {
            events: self.clone(),
            sub: sub.clone(),
            modules: Vec::new(),
        };
        for m in sub.modules() {
            let (Some(pump), Some(module)) = (self.pumps.get(m), modules.get(m)) else {
                continue;
            };
            let mut p = lock(pump)?;
            p.blocked += 1;
            guard.modules.push(m);
            if p.running {
                continue;
            }
            let (events, module) = (self.clone(), module.clone());
            let spawned = std::thread::Builder::new()
                .name("p11fwd-events".into())
                .spawn(move || events.pump(&module, m));
            match spawned {
                Ok(_) => p.running = true,
                Err(e) => {
                    warn!(cause = %e, "cannot start the slot event thread");
                    return Err(Rv(CKR_HOST_MEMORY));
                }
            }
        }
        Ok(guard)
    }

    /// The pump thread of module `m`.
    fn pump(&self, module: &Module, m: usize) {
        debug!(module = module.name(), "slot event thread started");
        loop {
            let r = module.lib.wait_for_slot_event(0);
            if let Ok(slot) = r {
                self.publish(TokenKey { module: m, slot });
            }
            let Some(pump) = self.pumps.get(m) else {
                return;
            };
            let Ok(mut p) = lock(pump) else { return };
            let stopping = self.shutting_down.load(Ordering::SeqCst);
            // Decided under the pump's lock: a wait registering now either sees the pump
            // running (and gets this error or a later event) or starts a new one.
            if let Err(rv) = r {
                if !stopping {
                    debug!(module = module.name(), rv = ?rv, "C_WaitForSlotEvent failed");
                    self.fail(m, rv);
                }
                p.running = false;
                return;
            }
            if p.blocked == 0 || stopping {
                p.running = false;
                debug!(module = module.name(), "slot event thread done");
                return;
            }
        }
    }

    /// The server is stopping: no new waits, and the modules whose pump is inside
    /// `C_WaitForSlotEvent` are finalised so that it returns; waits up to `grace` for the pumps
    /// to end. Blocks: run it off the reactor.
    pub fn shutdown(&self, modules: &[Arc<Module>], grace: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let running = |pump: &Mutex<Pump>| lock(pump).map(|p| p.running).unwrap_or(false);
        for (m, pump) in self.pumps.iter().enumerate() {
            if running(pump)
                && let Some(module) = modules.get(m)
            {
                debug!(
                    module = module.name(),
                    "finalising the module to end its slot wait"
                );
                module.lib.finalize();
            }
        }
        let deadline = Instant::now() + grace;
        while self.pumps.iter().any(running) {
            if Instant::now() >= deadline {
                warn!("a module did not return from C_WaitForSlotEvent after C_Finalize");
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
