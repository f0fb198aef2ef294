//! What the forwarder remembers: the shared state of the process (modules, token logins,
//! session objects) and the per-connection view (slots, sessions, object handles, logins).
//!
//! One process serves every connection, so it has to provide the isolation stock p11-kit gets
//! from a process per connection. See docs/notes-forwarder.md, "Isolation".

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use p11fwd_conf::Pkcs11Uri;
use p11fwd_wire::consts::*;
use p11fwd_wire::{Dialect, Rv};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::events::SlotEvents;
use crate::module::{Module, RawParams};
use crate::prearm::{Bound, Prearm};

/// Virtual slot ids start here, as the stock proxy's do (rpc §7.3).
pub const FIRST_SLOT: u64 = 0x11;
/// Virtual session handles start here, as the stock proxy's do.
pub const FIRST_SESSION: u64 = 0x11;
/// Sessions one connection may have open.
pub const MAX_SESSIONS_PER_CONNECTION: usize = 4096;
/// Object handles one connection may hold (found or created) at once.
pub const MAX_OBJECTS_PER_CONNECTION: usize = 1 << 20;

/// Lock a mutex, turning poisoning (a panic elsewhere) into CKR_GENERAL_ERROR.
pub(crate) fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, Rv> {
    m.lock().map_err(|_| Rv(CKR_GENERAL_ERROR))
}

/// A token: a module and a real slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenKey {
    /// Index into [`Shared::modules`].
    pub module: usize,
    /// The module's slot id.
    pub slot: u64,
}

/// A salted SHA-256 of the last PIN that logged a token in. The PIN itself is never kept.
#[derive(Clone)]
pub(crate) struct PinHash {
    salt: [u8; 16],
    hash: [u8; 32],
}

impl std::fmt::Debug for PinHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinHash(..)")
    }
}

impl PinHash {
    pub(crate) fn new(pin: &[u8]) -> Result<Self, Rv> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|_| Rv(CKR_GENERAL_ERROR))?;
        Ok(Self {
            salt,
            hash: Self::digest(&salt, pin),
        })
    }

    fn digest(salt: &[u8; 16], pin: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(salt);
        h.update(pin);
        h.finalize().into()
    }

    /// Constant-time comparison with `pin`.
    pub(crate) fn matches(&self, pin: &[u8]) -> bool {
        Self::digest(&self.salt, pin).ct_eq(&self.hash).into()
    }
}

/// The login state of one token, shared by all connections.
#[derive(Debug, Default)]
pub(crate) struct TokenLogin {
    /// Connections logged in (the module is logged in iff this is not empty).
    pub(crate) conns: HashSet<u64>,
    /// The user type of the module's login.
    pub(crate) user_type: u64,
    /// The PIN that logged the module in (`None` after a protected-path login).
    pub(crate) pin: Option<PinHash>,
}

/// Everything the connections share.
#[derive(Debug)]
pub struct Shared {
    /// The loaded modules.
    pub modules: Vec<Arc<Module>>,
    /// The token URIs we serve.
    pub uris: Vec<Pkcs11Uri>,
    logins: Mutex<HashMap<TokenKey, Arc<Mutex<TokenLogin>>>>,
    /// Session objects (CKA_TOKEN=false): (token, real handle) → (connection, real session).
    /// Keyed by token, not module: object handles are only unique per token in some modules.
    pub(crate) session_objects: Mutex<HashMap<(TokenKey, u64), (u64, u64)>>,
    /// C_WaitForSlotEvent fan-out.
    pub events: Arc<SlotEvents>,
    /// Which raw mechanism parameters may reach the modules.
    pub raw_params: RawParams,
    /// Spare sessions initialised ahead for signing (`crate::prearm`).
    pub prearm: Prearm,
    next_conn: AtomicU64,
}

impl Shared {
    /// State for serving `uris` from `modules`.
    pub fn new(modules: Vec<Arc<Module>>, uris: Vec<Pkcs11Uri>, raw_params: RawParams) -> Self {
        Self {
            raw_params,
            events: Arc::new(SlotEvents::new(modules.len())),
            modules,
            uris,
            logins: Mutex::new(HashMap::new()),
            session_objects: Mutex::new(HashMap::new()),
            prearm: Prearm::new(crate::prearm::DEFAULT_PER_KEY.into()),
            next_conn: AtomicU64::new(1),
        }
    }

    /// Spare sessions per key and mechanism for signing ahead (0: off; `crate::prearm`).
    #[must_use]
    pub fn with_sign_ahead(mut self, per_key: usize) -> Self {
        self.prearm = Prearm::new(per_key);
        self
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn login_state(&self, token: TokenKey) -> Result<Arc<Mutex<TokenLogin>>, Rv> {
        Ok(lock(&self.logins)?.entry(token).or_default().clone())
    }

    /// Enumerate the tokens matching the URIs, in match order (module order, then slot order).
    pub(crate) fn matching_tokens(&self) -> Vec<SlotEntry> {
        let mut out = Vec::new();
        for (mi, m) in self.modules.iter().enumerate() {
            let Ok(info) = m.lib.info() else { continue };
            let Ok(slots) = m.lib.slot_list(true) else {
                continue;
            };
            let lib_view = p11fwd_conf::LibraryView {
                manufacturer: &info.manufacturer_id,
                description: &info.library_description,
                version: (info.library_version.major, info.library_version.minor),
            };
            for slot in slots {
                let (Ok(si), Ok(ti)) = (m.lib.slot_info(slot), m.lib.token_info(slot)) else {
                    continue;
                };
                let slot_view = p11fwd_conf::SlotView {
                    id: slot,
                    description: &si.slot_description,
                    manufacturer: &si.manufacturer_id,
                };
                let token_view = p11fwd_conf::TokenView {
                    label: &ti.label,
                    manufacturer: &ti.manufacturer_id,
                    model: &ti.model,
                    serial: &ti.serial_number,
                };
                let matched = self.uris.iter().find(|u| {
                    u.matches_library(&lib_view)
                        && u.matches_slot(&slot_view)
                        && u.matches_token(&token_view)
                });
                if let Some(u) = matched {
                    out.push(SlotEntry {
                        token: TokenKey { module: mi, slot },
                        write_protected: u.is_write_protected(),
                    });
                }
            }
        }
        out
    }
}

/// A token as one connection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotEntry {
    /// The real token.
    pub token: TokenKey,
    /// `?write-protected=yes`.
    pub write_protected: bool,
}

/// A session a connection opened.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionEntry {
    /// Index into the connection's slots.
    pub(crate) slot: usize,
    pub(crate) token: TokenKey,
    pub(crate) real: u64,
    pub(crate) rw: bool,
    /// Operations that may be active on the real session ([`ops`] bits); only ever cleared
    /// when the module's answer shows the operation ended.
    pub(crate) ops: u16,
}

/// Bits of [`SessionEntry::ops`].
pub(crate) mod ops {
    pub(crate) const FIND: u16 = 1;
    pub(crate) const ENCRYPT: u16 = 1 << 1;
    pub(crate) const DECRYPT: u16 = 1 << 2;
    pub(crate) const DIGEST: u16 = 1 << 3;
    pub(crate) const SIGN: u16 = 1 << 4;
    pub(crate) const VERIFY: u16 = 1 << 5;
    pub(crate) const SIGN_RECOVER: u16 = 1 << 6;
    pub(crate) const VERIFY_RECOVER: u16 = 1 << 7;
    /// Restored with C_SetOperationState: anything.
    pub(crate) const UNKNOWN: u16 = 1 << 15;
}

/// An object handle a connection obtained.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ObjEntry {
    pub(crate) token: TokenKey,
    pub(crate) real: u64,
    pub(crate) private: bool,
    /// For session objects: the real session that created them (they die with it).
    pub(crate) session: Option<u64>,
}

/// One connection's view.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) dialect: Dialect,
    pub(crate) initialized: bool,
    pub(crate) slots: Vec<SlotEntry>,
    pub(crate) sessions: HashMap<u64, SessionEntry>,
    next_session: u64,
    objects: HashMap<u64, ObjEntry>,
    /// (token, real handle) → virtual handle. By token: two tokens of one module may use the
    /// same real handle for different objects.
    reverse: HashMap<(TokenKey, u64), u64>,
    next_object: u64,
    /// Tokens this connection is logged in to, with the user type.
    pub(crate) logged_in: HashMap<TokenKey, u64>,
    /// Sessions whose signing operation runs on a spare session (`crate::prearm`).
    pub(crate) bound: HashMap<u64, Bound>,
}

impl Conn {
    pub(crate) fn new(id: u64, dialect: Dialect) -> Self {
        Self {
            id,
            dialect,
            initialized: false,
            slots: Vec::new(),
            sessions: HashMap::new(),
            next_session: FIRST_SESSION,
            objects: HashMap::new(),
            reverse: HashMap::new(),
            next_object: 1,
            logged_in: HashMap::new(),
            bound: HashMap::new(),
        }
    }

    /// The slot behind a virtual slot id.
    pub(crate) fn slot(&self, vslot: u64) -> Result<(usize, SlotEntry), Rv> {
        let i = vslot
            .checked_sub(FIRST_SLOT)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|i| *i < self.slots.len())
            .ok_or(Rv(CKR_SLOT_ID_INVALID))?;
        Ok((i, self.slots[i]))
    }

    /// The session behind a virtual session handle.
    pub(crate) fn session(&self, vs: u64) -> Result<SessionEntry, Rv> {
        self.sessions
            .get(&vs)
            .copied()
            .ok_or(Rv(CKR_SESSION_HANDLE_INVALID))
    }

    pub(crate) fn add_session(&mut self, e: SessionEntry) -> Result<u64, Rv> {
        if self.sessions.len() >= MAX_SESSIONS_PER_CONNECTION {
            return Err(Rv(CKR_SESSION_COUNT));
        }
        let mut h = self.next_session;
        while self.sessions.contains_key(&h) || h == 0 {
            h = h.wrapping_add(1);
        }
        self.next_session = h.wrapping_add(1);
        self.sessions.insert(h, e);
        Ok(h)
    }

    /// Whether this connection is logged in to `token`.
    pub(crate) fn is_logged_in(&self, token: TokenKey) -> bool {
        self.logged_in.contains_key(&token)
    }

    /// The real handle of virtual object `v`, usable from a session on `token`. Objects the
    /// connection never obtained, objects of another token, and private objects while the
    /// connection is not logged in are all `invalid`.
    pub(crate) fn object(&self, v: u64, token: TokenKey, invalid: u64) -> Result<ObjEntry, Rv> {
        match self.objects.get(&v) {
            Some(e) if e.token == token && (!e.private || self.is_logged_in(token)) => Ok(*e),
            _ => Err(Rv(invalid)),
        }
    }

    /// The virtual handle of a real object already known.
    pub(crate) fn known(&self, token: TokenKey, real: u64) -> Option<u64> {
        self.reverse.get(&(token, real)).copied()
    }

    /// Record an object; returns its (stable) virtual handle.
    pub(crate) fn add_object(&mut self, e: ObjEntry) -> Result<u64, Rv> {
        if let Some(v) = self.reverse.get(&(e.token, e.real)) {
            self.objects.insert(*v, e);
            return Ok(*v);
        }
        if self.objects.len() >= MAX_OBJECTS_PER_CONNECTION {
            return Err(Rv(CKR_HOST_MEMORY));
        }
        let mut h = self.next_object;
        while self.objects.contains_key(&h) || h == 0 {
            h = h.wrapping_add(1);
        }
        self.next_object = h.wrapping_add(1);
        self.objects.insert(h, e);
        self.reverse.insert((e.token, e.real), h);
        Ok(h)
    }

    /// Forget virtual object `v`.
    pub(crate) fn remove_object(&mut self, v: u64) {
        if let Some(e) = self.objects.remove(&v) {
            self.reverse.remove(&(e.token, e.real));
        }
    }

    /// Forget the session objects a real session created (the module destroyed them).
    pub(crate) fn forget_session_objects(&mut self, token: TokenKey, real_session: u64) {
        let dead: Vec<u64> = self
            .objects
            .iter()
            .filter(|(_, e)| e.token == token && e.session == Some(real_session))
            .map(|(v, _)| *v)
            .collect();
        for v in dead {
            self.remove_object(v);
        }
    }

    /// The sessions on `token`.
    pub(crate) fn sessions_on(&self, token: TokenKey) -> Vec<(u64, SessionEntry)> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.token == token)
            .map(|(v, s)| (*v, *s))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pin_hash_matches_only_the_pin() {
        let h = PinHash::new(b"123456").unwrap();
        assert!(h.matches(b"123456"));
        assert!(!h.matches(b"123457"));
        assert!(!h.matches(b""));
        assert!(!format!("{h:?}").contains("123456"));
    }

    #[test]
    fn object_handles_are_stable_and_checked() {
        let t = TokenKey { module: 0, slot: 1 };
        let other = TokenKey { module: 0, slot: 2 };
        let mut c = Conn::new(1, Dialect::V2);
        let e = ObjEntry {
            token: t,
            real: 77,
            private: true,
            session: None,
        };
        let v = c.add_object(e).unwrap();
        assert_eq!(c.add_object(e).unwrap(), v);
        assert_eq!(c.known(t, 77), Some(v));
        // Private and not logged in.
        assert!(c.object(v, t, CKR_OBJECT_HANDLE_INVALID).is_err());
        c.logged_in.insert(t, CKU_USER);
        assert_eq!(c.object(v, t, CKR_OBJECT_HANDLE_INVALID).unwrap().real, 77);
        assert!(c.object(v, other, CKR_OBJECT_HANDLE_INVALID).is_err());
        assert!(c.object(v + 1, t, CKR_KEY_HANDLE_INVALID).is_err());
        c.remove_object(v);
        assert!(c.object(v, t, CKR_OBJECT_HANDLE_INVALID).is_err());
    }

    #[test]
    fn the_same_real_handle_on_two_tokens_is_two_objects() {
        let a = TokenKey { module: 0, slot: 1 };
        let b = TokenKey { module: 0, slot: 2 };
        let mut c = Conn::new(1, Dialect::V2);
        let entry = |token| ObjEntry {
            token,
            real: 7,
            private: false,
            session: None,
        };
        let va = c.add_object(entry(a)).unwrap();
        let vb = c.add_object(entry(b)).unwrap();
        assert_ne!(va, vb);
        assert_eq!((c.known(a, 7), c.known(b, 7)), (Some(va), Some(vb)));
        assert_eq!(c.object(va, a, CKR_OBJECT_HANDLE_INVALID).unwrap().token, a);
        assert_eq!(c.object(vb, b, CKR_OBJECT_HANDLE_INVALID).unwrap().token, b);
        c.remove_object(va);
        assert_eq!((c.known(a, 7), c.known(b, 7)), (None, Some(vb)));
    }
}
