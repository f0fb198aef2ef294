//! One function per RPC call: translate the connection's virtual slots, sessions and object
//! handles to real ones, enforce the per-connection isolation rules, call the module, and build
//! the reply with the CK_RV placement of rpc §4/§6.
//!
//! Everything here is synchronous and may block in the module: the server runs it off the
//! reactor (`spawn_blocking`).

use std::sync::Mutex;

use p11fwd_wire::consts::*;
use p11fwd_wire::info::Info;
use p11fwd_wire::value::{
    Arg, AttrSlot, Attribute, ByteArray, MechParam, MechUpdate, Mechanism, ParamUpdate, UlongArray,
    Version,
};
use p11fwd_wire::{CallId, Reply, Request, Rv};
use zeroize::Zeroizing;

use crate::module::{
    InOnly, InOut, InitKind, NativeMechanism, NativeTemplate, OutBuf, OutOnly, OutTemplate,
};
use crate::prearm::{self, Armed, Bound};
use crate::state::{
    Conn, FIRST_SLOT, ObjEntry, PinHash, SessionEntry, Shared, TokenKey, lock, ops,
};

/// The handshake string of RPC `C_Initialize` (rpc §6, id 1).
pub const HANDSHAKE: &[u8] = b"PRIVATE-GNOME-KEYRING-PKCS11-PROTOCOL-V-1";

/// `CKS_RO_USER_FUNCTIONS` (missing from the wire constants, which have its 3.2 alias).
const CKS_RO_USER_FUNCTIONS: u64 = 0x1;

/// Budget for the value buffers of one `C_GetAttributeValue`.
const MAX_ATTR_OUT: usize = 16 << 20;

/// Handle one request and build its reply.
pub(crate) fn dispatch(shared: &Shared, conn: &Mutex<Conn>, req: &Request) -> Reply {
    let cx = Cx { shared, conn };
    match cx.run(req) {
        Ok(args) => Reply::Ok {
            call: req.call,
            args,
        },
        // An ERROR frame carrying CKR_OK is a protocol error for the client.
        Err(rv) if rv.is_ok() => Reply::Error(Rv(CKR_GENERAL_ERROR)),
        Err(rv) => Reply::Error(rv),
    }
}

/// Close everything a connection still holds (its peer went away, or it sent C_Finalize).
pub(crate) fn release_all(shared: &Shared, conn: &Mutex<Conn>) {
    let cx = Cx { shared, conn };
    let sessions: Vec<(u64, SessionEntry)> = match lock(conn) {
        Ok(c) => c.sessions.iter().map(|(v, s)| (*v, *s)).collect(),
        Err(_) => return,
    };
    for (v, s) in sessions {
        let _ = cx.close_session(v, s);
    }
    if let Ok(mut c) = lock(conn) {
        c.logged_in.clear();
        c.initialized = false;
        shared.events.unsubscribe(c.id);
    }
}

/// Typed access to a decoded request's arguments. The signature was checked by the decoder,
/// so a mismatch here is our bug: CKR_GENERAL_ERROR.
struct A<'a>(&'a [Arg]);

fn bug() -> Rv {
    Rv(CKR_GENERAL_ERROR)
}

impl<'a> A<'a> {
    fn get(&self, i: usize) -> Result<&'a Arg, Rv> {
        self.0.get(i).ok_or_else(bug)
    }
    fn u(&self, i: usize) -> Result<u64, Rv> {
        match self.get(i)? {
            Arg::Ulong(u) => Ok(*u),
            _ => Err(bug()),
        }
    }
    /// An input byte array: `None` for a NULL pointer.
    fn ay(&self, i: usize) -> Result<Option<&'a [u8]>, Rv> {
        match self.get(i)? {
            Arg::ByteArray(ByteArray::Data(d)) => Ok(Some(d)),
            Arg::ByteArray(ByteArray::Null | ByteArray::Length(_)) => Ok(None),
            _ => Err(bug()),
        }
    }
    /// An input byte array where NULL means empty.
    fn data(&self, i: usize) -> Result<&'a [u8], Rv> {
        Ok(self.ay(i)?.unwrap_or(&[]))
    }
    fn fy(&self, i: usize) -> Result<OutBuf, Rv> {
        match self.get(i)? {
            Arg::ByteBuffer(n) => Ok(OutBuf::from_fy(*n)),
            _ => Err(bug()),
        }
    }
    fn fu(&self, i: usize) -> Result<u32, Rv> {
        match self.get(i)? {
            Arg::UlongBuffer(n) => Ok(*n),
            _ => Err(bug()),
        }
    }
    fn attrs(&self, i: usize) -> Result<&'a [Attribute], Rv> {
        match self.get(i)? {
            Arg::Attributes(a) => Ok(a),
            _ => Err(bug()),
        }
    }
    fn slots(&self, i: usize) -> Result<&'a [AttrSlot], Rv> {
        match self.get(i)? {
            Arg::AttrBuffer(s) => Ok(s),
            _ => Err(bug()),
        }
    }
    fn mech(&self, i: usize) -> Result<Option<&'a Mechanism>, Rv> {
        match self.get(i)? {
            Arg::Mechanism(m) => Ok(m.as_ref()),
            _ => Err(bug()),
        }
    }
    fn text(&self, i: usize) -> Result<&'a [u8], Rv> {
        match self.get(i)? {
            Arg::Space(s) | Arg::Zstr(s) => Ok(s),
            _ => Err(bug()),
        }
    }
}

/// An `au` reply for a list and the client's capacity (rpc §4: a size query or a buffer that
/// is too small gets the count only, as a normal reply).
fn ulong_array(list: Vec<u64>, cap: u32) -> Arg {
    let n = u32::try_from(list.len()).unwrap_or(u32::MAX);
    if cap == 0 || (cap as usize) < list.len() {
        Arg::UlongArray(UlongArray::Length(n))
    } else {
        Arg::UlongArray(UlongArray::Data(list))
    }
}

fn padded32(label: &[u8]) -> [u8; 32] {
    let mut out = [b' '; 32];
    let n = label.len().min(32);
    out[..n].copy_from_slice(&label[..n]);
    out
}

/// Our own library information (the stock proxy's equivalent is "PKCS#11 Kit Proxy Module").
pub fn library_info(dialect_version: u8) -> Info {
    let v: Vec<u8> = env!("CARGO_PKG_VERSION")
        .split('.')
        .take(2)
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    Info {
        cryptoki_version: if dialect_version == 0 {
            Version {
                major: 2,
                minor: 40,
            }
        } else {
            Version { major: 3, minor: 0 }
        },
        manufacturer_id: p11fwd_wire::info::padded("p11fwd"),
        flags: 0,
        library_description: p11fwd_wire::info::padded("p11fwd forwarder"),
        library_version: Version {
            major: v.first().copied().unwrap_or(0),
            minor: v.get(1).copied().unwrap_or(0),
        },
    }
}

struct Cx<'a> {
    shared: &'a Shared,
    conn: &'a Mutex<Conn>,
}

impl Cx<'_> {
    fn lib(&self, token: TokenKey) -> Result<&crate::module::Library, Rv> {
        self.shared
            .modules
            .get(token.module)
            .map(|m| &m.lib)
            .ok_or_else(bug)
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Conn>, Rv> {
        let c = lock(self.conn)?;
        if !c.initialized {
            return Err(Rv(CKR_CRYPTOKI_NOT_INITIALIZED));
        }
        Ok(c)
    }

    fn check_init(&self) -> Result<(), Rv> {
        self.conn().map(drop)
    }

    fn session(&self, vs: u64) -> Result<SessionEntry, Rv> {
        self.conn()?.session(vs)
    }

    fn object(&self, s: &SessionEntry, v: u64, invalid: u64) -> Result<u64, Rv> {
        Ok(self.conn()?.object(v, s.token, invalid)?.real)
    }

    fn mechanism(&self, s: &SessionEntry, m: &Mechanism) -> Result<NativeMechanism, Rv> {
        let c = self.conn()?;
        NativeMechanism::new(
            m,
            &|v| Ok(c.object(v, s.token, CKR_KEY_HANDLE_INVALID)?.real),
            &self.shared.raw_params,
        )
    }

    /// `(CKA_TOKEN, CKA_PRIVATE)` of a real object; unknown values count as token and private.
    fn classify(&self, s: &SessionEntry, real: u64) -> Result<(bool, bool), Rv> {
        let lib = self.lib(s.token)?;
        let slots = [CKA_TOKEN, CKA_PRIVATE].map(|ty| AttrSlot {
            ty,
            buflen: 1,
            nested: None,
        });
        let mut budget = 64;
        let mut t = OutTemplate::new(&slots, p11fwd_wire::Dialect::V2, &mut budget)?;
        let _ = lib.get_attribute_value(s.real, real, &mut t);
        let attrs = t.into_attributes(p11fwd_wire::Dialect::V2);
        let flag = |i: usize| attrs.get(i).and_then(Attribute::as_bool).unwrap_or(true);
        Ok((flag(0), flag(1)))
    }

    /// Record an object the connection just created; a private object created while the
    /// connection is not logged in (another one is) is destroyed again.
    fn register_new(&self, s: &SessionEntry, real: u64) -> Result<u64, Rv> {
        let (token_obj, private) = self.classify(s, real)?;
        if private && !self.conn()?.is_logged_in(s.token) {
            let _ = self.lib(s.token)?.destroy_object(s.real, real);
            return Err(Rv(CKR_USER_NOT_LOGGED_IN));
        }
        let mut c = self.conn()?;
        if !token_obj {
            lock(&self.shared.session_objects)?.insert((s.token, real), (c.id, s.real));
        }
        c.add_object(ObjEntry {
            token: s.token,
            real,
            private,
            session: (!token_obj).then_some(s.real),
        })
    }

    /// Whether a real object found by the module may be shown to this connection, and its
    /// virtual handle if so.
    fn admit_found(&self, s: &SessionEntry, real: u64) -> Result<Option<u64>, Rv> {
        {
            let c = self.conn()?;
            if let Some(v) = c.known(s.token, real) {
                return Ok(c
                    .object(v, s.token, CKR_OBJECT_HANDLE_INVALID)
                    .ok()
                    .map(|_| v));
            }
        }
        let (token_obj, private) = self.classify(s, real)?;
        let mut c = self.conn()?;
        if private && !c.is_logged_in(s.token) {
            return Ok(None);
        }
        let mut session = None;
        if !token_obj {
            match lock(&self.shared.session_objects)?.get(&(s.token, real)) {
                Some((owner, sess)) if *owner == c.id => session = Some(*sess),
                _ => return Ok(None),
            }
        }
        c.add_object(ObjEntry {
            token: s.token,
            real,
            private,
            session,
        })
        .map(Some)
    }

    /// Close one of the connection's sessions; its last session on a token also ends its login.
    fn close_session(&self, vs: u64, s: SessionEntry) -> Result<(), Rv> {
        let lib = self.lib(s.token)?;
        let bound = lock(self.conn)?.bound.remove(&vs);
        if let Some(b) = bound {
            self.shared.prearm.release(b, &self.shared.modules);
        }
        let (last, logged_in, conn_id) = {
            let c = lock(self.conn)?;
            let last = c.sessions_on(s.token).len() == 1;
            (last, c.is_logged_in(s.token), c.id)
        };
        if last && logged_in {
            self.release_login(conn_id, s.token, s.real)?;
            lock(self.conn)?.logged_in.remove(&s.token);
        }
        let r = lib.close_session(s.real);
        let mut c = lock(self.conn)?;
        c.sessions.remove(&vs);
        c.forget_session_objects(s.token, s.real);
        let id = c.id;
        drop(c);
        lock(&self.shared.session_objects)?
            .retain(|(token, _), v| *token != s.token || *v != (id, s.real));
        r
    }

    /// This connection leaves the token's login; the module logs out when nobody is left.
    fn release_login(&self, conn_id: u64, token: TokenKey, real_session: u64) -> Result<(), Rv> {
        let state = self.shared.login_state(token)?;
        let mut st = lock(&state)?;
        if st.conns.remove(&conn_id) && st.conns.is_empty() {
            st.pin = None;
            self.shared.prearm.invalidate(token, &self.shared.modules);
            match self.lib(token)?.logout(real_session) {
                Ok(()) | Err(Rv(CKR_USER_NOT_LOGGED_IN)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn login(
        &self,
        vs: u64,
        user: u64,
        pin: Option<&[u8]>,
        name: Option<&[u8]>,
        login_user: bool,
    ) -> Result<(), Rv> {
        let s = self.session(vs)?;
        let lib = self.lib(s.token)?;
        if login_user && !lib.has_login_user() {
            // A 2.40 module: say so before any of our login bookkeeping answers (stock's proxy
            // does the same), and never admit a C_LoginUser the module cannot check.
            return Err(Rv(CKR_FUNCTION_NOT_SUPPORTED));
        }
        let module_login = |pin: Option<&[u8]>| {
            if login_user {
                lib.login_user(s.real, user, pin, name)
            } else {
                lib.login(s.real, user, pin)
            }
        };
        let (conn_id, mine) = {
            let c = self.conn()?;
            (c.id, c.logged_in.get(&s.token).copied())
        };
        if user == CKU_CONTEXT_SPECIFIC {
            // Re-authentication for one operation: only for a connection that is logged in.
            if mine.is_none() {
                return Err(Rv(CKR_USER_NOT_LOGGED_IN));
            }
            return module_login(pin);
        }
        if mine.is_some() {
            return Err(Rv(CKR_USER_ALREADY_LOGGED_IN));
        }
        let state = self.shared.login_state(s.token)?;
        let mut st = lock(&state)?;
        if !st.conns.is_empty() {
            // The module is logged in for another connection: admit this one only with the
            // same user type and the PIN that worked, without touching the token.
            if st.user_type != user {
                return Err(Rv(CKR_USER_ANOTHER_ALREADY_LOGGED_IN));
            }
            match (&st.pin, pin) {
                (Some(h), Some(p)) if h.matches(p) => {}
                (Some(_), Some(_)) => return Err(Rv(CKR_PIN_INCORRECT)),
                // A protected-path login cannot be checked against anything.
                _ => return Err(Rv(CKR_USER_ANOTHER_ALREADY_LOGGED_IN)),
            }
        } else {
            match module_login(pin) {
                Ok(()) => {}
                Err(Rv(CKR_USER_ALREADY_LOGGED_IN)) => {
                    // Left over from outside our bookkeeping: start from a clean state so the
                    // PIN is really checked.
                    self.shared.prearm.invalidate(s.token, &self.shared.modules);
                    let _ = lib.logout(s.real);
                    module_login(pin)?;
                }
                Err(e) => return Err(e),
            }
            st.user_type = user;
            st.pin = pin.map(PinHash::new).transpose()?;
        }
        st.conns.insert(conn_id);
        drop(st);
        self.conn()?.logged_in.insert(s.token, user);
        Ok(())
    }

    fn logout(&self, vs: u64) -> Result<(), Rv> {
        let s = self.session(vs)?;
        let (id, mine) = {
            let c = self.conn()?;
            (c.id, c.is_logged_in(s.token))
        };
        if !mine {
            // Nobody holds a login: let the module answer as it would without us (SoftHSM says
            // CKR_OK). Otherwise the module's login belongs to others and must not be touched.
            let state = self.shared.login_state(s.token)?;
            let st = lock(&state)?;
            if st.conns.is_empty() {
                return self.lib(s.token)?.logout(s.real);
            }
            return Err(Rv(CKR_USER_NOT_LOGGED_IN));
        }
        self.release_login(id, s.token, s.real)?;
        self.conn()?.logged_in.remove(&s.token);
        Ok(())
    }

    fn init_op(&self, kind: InitKind, a: &A<'_>, with_key: bool) -> Result<Vec<Arg>, Rv> {
        let vs = a.u(0)?;
        let s = self.session(vs)?;
        let key = if with_key {
            self.object(&s, a.u(2)?, CKR_KEY_HANDLE_INVALID)?
        } else {
            0
        };
        let ahead = match (a.mech(1)?, prearm::Op::of(kind)) {
            (Some(m), Some(op)) => self.init_ahead(vs, &s, a.u(2)?, key, m, op)?,
            _ => None,
        };
        if let Some(Ok(b)) = ahead {
            // A spare already did this C_SignInit (C_DecryptInit): the module accepted it.
            self.conn()?.bound.insert(vs, b);
            return Ok(vec![]);
        }
        let mut m = match a.mech(1)? {
            Some(m) => Some(self.mechanism(&s, m)?),
            None => None,
        };
        self.lib(s.token)?.init(kind, s.real, m.as_mut(), key)?;
        if let Some(Err(what)) = ahead {
            self.shared.prearm.want(&what, &self.shared.modules);
        }
        Ok(vec![])
    }

    /// For a C_SignInit or C_DecryptInit that may be done ahead: `Ok(bound)` with a spare
    /// armed for it, else `Err(what)` to arm spares for once the client's own call succeeded;
    /// `None` if it may not (see `crate::prearm`).
    fn init_ahead(
        &self,
        vs: u64,
        s: &SessionEntry,
        vkey: u64,
        key: u64,
        m: &Mechanism,
        op: prearm::Op,
    ) -> Result<Option<Result<Bound, Armed>>, Rv> {
        let p = &self.shared.prearm;
        if !p.enabled() || !prearm::eligible(m) {
            return Ok(None);
        }
        {
            let c = self.conn()?;
            let token_object = c
                .object(vkey, s.token, CKR_KEY_HANDLE_INVALID)?
                .session
                .is_none();
            let idle = c.sessions.get(&vs).is_some_and(|e| e.ops == 0);
            if !(token_object && idle && c.is_logged_in(s.token)) {
                return Ok(None);
            }
        }
        let what = Armed {
            token: s.token,
            key,
            mech: m.clone(),
            op,
        };
        Ok(Some(p.take(&what, &self.shared.modules).ok_or(what)))
    }

    /// Run `req`: on a bound session, C_Sign (C_Decrypt) runs on the spare and anything else
    /// first moves the operation back to the client's session.
    fn run(&self, req: &Request) -> Result<Vec<Arg>, Rv> {
        let vs = session_of(req);
        if let Some(vs) = vs
            && req.call != CallId::CloseSession
            && self.shared.prearm.enabled()
        {
            let bound = lock(self.conn)?.bound.remove(&vs);
            if let Some(b) = bound {
                let calls = b.what.op.calls();
                if req.call == calls[0] && self.shared.prearm.current(&b) {
                    return self.run_bound(vs, b, req);
                }
                let moved = self.unbind(vs, b);
                if let Err(rv) = moved
                    && calls.contains(&req.call)
                {
                    return Err(rv);
                }
            }
        }
        let r = self.handle(req);
        if let Some(vs) = vs {
            self.track(vs, req, &r);
        }
        r
    }

    /// C_Sign (C_Decrypt) of a bound session, on its spare.
    fn run_bound(&self, vs: u64, b: Bound, req: &Request) -> Result<Vec<Arg>, Rv> {
        let a = A(&req.args);
        let r = match (self.lib(b.what.token), a.data(1), a.fy(2)) {
            (Ok(lib), Ok(data), Ok(out)) => lib.in_out(b.what.op.in_out(), b.spare, data, out),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
        };
        if matches!(r, Ok(ByteArray::Length(_))) {
            // A size query, or a buffer too small: the operation goes on.
            lock(self.conn)?.bound.insert(vs, b);
        } else {
            // The tests count these lines.
            match b.what.op {
                prearm::Op::Sign => {
                    tracing::debug!(target: "p11fwd::prearm", session = vs, "signed on a spare");
                }
                prearm::Op::Decrypt => {
                    tracing::debug!(target: "p11fwd::prearm", session = vs, "decrypted on a spare");
                }
            }
            self.shared.prearm.finished(b, &self.shared.modules);
        }
        Ok(vec![Arg::ByteArray(r?)])
    }

    /// Move a bound session's operation to its own session: C_SignInit (C_DecryptInit) there
    /// with what the spare was initialised for, and the spare goes back to its pool unused.
    fn unbind(&self, vs: u64, b: Bound) -> Result<(), Rv> {
        let r = (|| {
            let s = self.session(vs)?;
            let mut m = prearm::native(&b.what.mech)?;
            self.lib(s.token)?
                .init(b.what.op.init_kind(), s.real, Some(&mut m), b.what.key)?;
            if let Some(e) = self.conn()?.sessions.get_mut(&vs) {
                e.ops |= b.what.op.ops_bit();
            }
            Ok(())
        })();
        self.shared.prearm.release(b, &self.shared.modules);
        r
    }

    /// Note which operations a call on session `vs` started or ended (`SessionEntry::ops`).
    fn track(&self, vs: u64, req: &Request, r: &Result<Vec<Arg>, Rv>) {
        use ops::*;
        let ok = r.is_ok();
        // An output call ended its operation unless it only answered a size.
        let ended = match r {
            Ok(args) => !matches!(args.first(), Some(Arg::ByteArray(ByteArray::Length(_)))),
            Err(_) => true,
        };
        let init = |bit: u16| match req.args.get(1) {
            _ if !ok => (0, 0),
            Some(Arg::Mechanism(None)) => (0, bit),
            _ => (bit, 0),
        };
        let end_if = |bit: u16, yes: bool| if yes { (0, bit) } else { (0, 0) };
        let (set, clear) = match req.call {
            CallId::FindObjectsInit => (if ok { FIND } else { 0 }, 0),
            CallId::FindObjectsFinal => end_if(FIND, ok),
            CallId::EncryptInit => init(ENCRYPT),
            CallId::DecryptInit => init(DECRYPT),
            CallId::DigestInit => init(DIGEST),
            CallId::SignInit => init(SIGN),
            CallId::VerifyInit => init(VERIFY),
            CallId::SignRecoverInit => init(SIGN_RECOVER),
            CallId::VerifyRecoverInit => init(VERIFY_RECOVER),
            CallId::Encrypt | CallId::EncryptFinal => end_if(ENCRYPT, ended),
            CallId::Decrypt | CallId::DecryptFinal => end_if(DECRYPT, ended),
            CallId::Digest | CallId::DigestFinal => end_if(DIGEST, ended),
            CallId::Sign | CallId::SignFinal => end_if(SIGN, ended),
            CallId::SignRecover => end_if(SIGN_RECOVER, ended),
            CallId::VerifyRecover => end_if(VERIFY_RECOVER, ended),
            CallId::Verify | CallId::VerifyFinal => (0, VERIFY),
            CallId::EncryptUpdate => end_if(ENCRYPT, !ok),
            CallId::DecryptUpdate => end_if(DECRYPT, !ok),
            CallId::DigestUpdate | CallId::DigestKey => end_if(DIGEST, !ok),
            CallId::SignUpdate => end_if(SIGN, !ok),
            CallId::VerifyUpdate => end_if(VERIFY, !ok),
            CallId::SetOperationState => (if ok { UNKNOWN } else { 0 }, 0),
            _ => return,
        };
        if let Ok(mut c) = lock(self.conn) {
            // A C_SignInit (C_DecryptInit) answered by a spare left the client's own session
            // alone.
            let set = if c.bound.contains_key(&vs) {
                set & !(SIGN | DECRYPT)
            } else {
                set
            };
            if let Some(e) = c.sessions.get_mut(&vs) {
                e.ops = (e.ops | set) & !clear;
            }
        }
    }

    fn in_out(&self, kind: InOut, a: &A<'_>) -> Result<Vec<Arg>, Rv> {
        let s = self.session(a.u(0)?)?;
        let out = self
            .lib(s.token)?
            .in_out(kind, s.real, a.data(1)?, a.fy(2)?)?;
        Ok(vec![Arg::ByteArray(out)])
    }

    fn out_only(&self, kind: OutOnly, a: &A<'_>) -> Result<Vec<Arg>, Rv> {
        let s = self.session(a.u(0)?)?;
        let out = self.lib(s.token)?.out_only(kind, s.real, a.fy(1)?)?;
        Ok(vec![Arg::ByteArray(out)])
    }

    fn in_only(&self, kind: InOnly, a: &A<'_>) -> Result<Vec<Arg>, Rv> {
        let s = self.session(a.u(0)?)?;
        self.lib(s.token)?.in_only(kind, s.real, a.data(1)?)?;
        Ok(vec![])
    }

    fn template(&self, attrs: &[Attribute]) -> Result<NativeTemplate, Rv> {
        NativeTemplate::new(attrs)
    }

    /// Creating objects needs a read/write session unless they are session objects; the module
    /// checks that. Write protection is ours to check for token objects.
    fn check_writable(&self, s: &SessionEntry, attrs: &[Attribute]) -> Result<(), Rv> {
        let wp = self
            .conn()?
            .slots
            .get(s.slot)
            .is_some_and(|e| e.write_protected);
        if wp
            && attrs
                .iter()
                .any(|a| a.ty == CKA_TOKEN && a.as_bool() == Some(true))
        {
            return Err(Rv(CKR_TOKEN_WRITE_PROTECTED));
        }
        Ok(())
    }

    fn handle(&self, req: &Request) -> Result<Vec<Arg>, Rv> {
        let a = A(&req.args);
        match req.call {
            CallId::Initialize => {
                if a.ay(0)? != Some(HANDSHAKE) {
                    return Err(Rv(CKR_GENERAL_ERROR));
                }
                let mut c = lock(self.conn)?;
                if !c.initialized {
                    c.slots = self.shared.matching_tokens();
                    c.initialized = true;
                }
                Ok(vec![])
            }
            CallId::Finalize => {
                self.check_init()?;
                release_all(self.shared, self.conn);
                Ok(vec![])
            }
            CallId::GetInfo => {
                let v = self.conn()?.dialect.version();
                Ok(library_info(v).to_args())
            }
            CallId::GetSlotList => {
                let c = self.conn()?;
                let list = (0..c.slots.len() as u64).map(|i| FIRST_SLOT + i).collect();
                Ok(vec![ulong_array(list, a.fu(1)?)])
            }
            CallId::GetSlotInfo => {
                let (_, e) = self.conn()?.slot(a.u(0)?)?;
                Ok(self.lib(e.token)?.slot_info(e.token.slot)?.to_args())
            }
            CallId::GetTokenInfo => {
                let (_, e) = self.conn()?.slot(a.u(0)?)?;
                let mut ti = self.lib(e.token)?.token_info(e.token.slot)?;
                if e.write_protected {
                    ti.flags |= CKF_WRITE_PROTECTED;
                }
                Ok(ti.to_args())
            }
            CallId::GetMechanismList => {
                let (_, e) = self.conn()?.slot(a.u(0)?)?;
                let list = self.lib(e.token)?.mechanism_list(e.token.slot)?;
                Ok(vec![ulong_array(list, a.fu(1)?)])
            }
            CallId::GetMechanismInfo => {
                let (_, e) = self.conn()?.slot(a.u(0)?)?;
                Ok(self
                    .lib(e.token)?
                    .mechanism_info(e.token.slot, a.u(1)?)?
                    .to_args())
            }
            CallId::InitToken | CallId::InitToken2 => {
                let (_, e) = self.conn()?.slot(a.u(0)?)?;
                if e.write_protected {
                    return Err(Rv(CKR_TOKEN_WRITE_PROTECTED));
                }
                let label = padded32(a.text(2)?);
                self.lib(e.token)?
                    .init_token(e.token.slot, a.ay(1)?, &label)?;
                Ok(vec![])
            }
            CallId::OpenSession => {
                let (i, e) = self.conn()?.slot(a.u(0)?)?;
                let flags = a.u(1)?;
                let rw = flags & CKF_RW_SESSION != 0;
                if rw && e.write_protected {
                    return Err(Rv(CKR_TOKEN_WRITE_PROTECTED));
                }
                let lib = self.lib(e.token)?;
                let real = match lib.open_session(e.token.slot, flags) {
                    Err(Rv(CKR_SESSION_COUNT))
                        if self.shared.prearm.make_room(e.token, &self.shared.modules) =>
                    {
                        // Our spares took the token's last sessions: they go, the client gets one.
                        lib.open_session(e.token.slot, flags)?
                    }
                    r => r?,
                };
                let added = self.conn().and_then(|mut c| {
                    c.add_session(SessionEntry {
                        slot: i,
                        token: e.token,
                        real,
                        rw,
                        ops: 0,
                    })
                });
                match added {
                    Ok(v) => Ok(vec![Arg::Ulong(v)]),
                    Err(rv) => {
                        let _ = lib.close_session(real);
                        Err(rv)
                    }
                }
            }
            CallId::CloseSession => {
                let vs = a.u(0)?;
                let s = self.session(vs)?;
                self.close_session(vs, s)?;
                Ok(vec![])
            }
            CallId::CloseAllSessions => {
                // Only this connection's sessions: the module's C_CloseAllSessions would close
                // everybody's.
                let (_, e) = self.conn()?.slot(a.u(0)?)?;
                let sessions = self.conn()?.sessions_on(e.token);
                for (v, s) in sessions {
                    self.close_session(v, s)?;
                }
                Ok(vec![])
            }
            CallId::GetSessionInfo => {
                let vs = a.u(0)?;
                let s = self.session(vs)?;
                let mut info = self.lib(s.token)?.session_info(s.real)?;
                let c = self.conn()?;
                info.slot_id = FIRST_SLOT + s.slot as u64;
                info.state = match (c.logged_in.get(&s.token), s.rw) {
                    (Some(&CKU_SO), _) => CKS_RW_SO_FUNCTIONS,
                    (Some(_), true) => CKS_RW_USER_FUNCTIONS,
                    (Some(_), false) => CKS_RO_USER_FUNCTIONS,
                    (None, true) => CKS_RW_PUBLIC_SESSION,
                    (None, false) => CKS_RO_PUBLIC_SESSION,
                };
                Ok(info.to_args())
            }
            CallId::InitPIN => {
                let s = self.session(a.u(0)?)?;
                if self.conn()?.logged_in.get(&s.token) != Some(&CKU_SO) {
                    return Err(Rv(CKR_USER_NOT_LOGGED_IN));
                }
                self.lib(s.token)?.init_pin(s.real, a.ay(1)?)?;
                Ok(vec![])
            }
            CallId::SetPIN => {
                let s = self.session(a.u(0)?)?;
                let new = a.ay(2)?;
                self.lib(s.token)?.set_pin(s.real, a.ay(1)?, new)?;
                let mine = self.conn()?.is_logged_in(s.token);
                let state = self.shared.login_state(s.token)?;
                let mut st = lock(&state)?;
                if !st.conns.is_empty() && (mine || st.user_type == CKU_USER) {
                    st.pin = new.map(PinHash::new).transpose()?;
                }
                Ok(vec![])
            }
            CallId::GetOperationState => self.out_only(OutOnly::GetOperationState, &a),
            CallId::SetOperationState => {
                let s = self.session(a.u(0)?)?;
                let key = |i: usize| -> Result<u64, Rv> {
                    match a.u(i)? {
                        0 => Ok(0),
                        v => self.object(&s, v, CKR_KEY_HANDLE_INVALID),
                    }
                };
                let (enc, auth) = (key(2)?, key(3)?);
                self.lib(s.token)?
                    .set_operation_state(s.real, a.data(1)?, enc, auth)?;
                Ok(vec![])
            }
            CallId::Login => {
                let pin = a.ay(2)?.map(|p| Zeroizing::new(p.to_vec()));
                self.login(
                    a.u(0)?,
                    a.u(1)?,
                    pin.as_deref().map(Vec::as_slice),
                    None,
                    false,
                )?;
                Ok(vec![])
            }
            CallId::LoginUser => {
                let pin = a.ay(2)?.map(|p| Zeroizing::new(p.to_vec()));
                self.login(
                    a.u(0)?,
                    a.u(1)?,
                    pin.as_deref().map(Vec::as_slice),
                    a.ay(3)?,
                    true,
                )?;
                Ok(vec![])
            }
            CallId::Logout => {
                self.logout(a.u(0)?)?;
                Ok(vec![])
            }
            CallId::CreateObject => {
                let s = self.session(a.u(0)?)?;
                let attrs = a.attrs(1)?;
                self.check_writable(&s, attrs)?;
                let mut t = self.template(attrs)?;
                let real = self.lib(s.token)?.create_object(s.real, &mut t)?;
                Ok(vec![Arg::Ulong(self.register_new(&s, real)?)])
            }
            CallId::CopyObject => {
                let s = self.session(a.u(0)?)?;
                let obj = self.object(&s, a.u(1)?, CKR_OBJECT_HANDLE_INVALID)?;
                let attrs = a.attrs(2)?;
                self.check_writable(&s, attrs)?;
                let mut t = self.template(attrs)?;
                let real = self.lib(s.token)?.copy_object(s.real, obj, &mut t)?;
                Ok(vec![Arg::Ulong(self.register_new(&s, real)?)])
            }
            CallId::DestroyObject => {
                let s = self.session(a.u(0)?)?;
                let v = a.u(1)?;
                let e = self.conn()?.object(v, s.token, CKR_OBJECT_HANDLE_INVALID)?;
                let obj = e.real;
                self.lib(s.token)?.destroy_object(s.real, obj)?;
                if e.session.is_none() {
                    // Spares may be armed with it.
                    self.shared.prearm.invalidate(s.token, &self.shared.modules);
                }
                self.conn()?.remove_object(v);
                lock(&self.shared.session_objects)?.remove(&(s.token, obj));
                Ok(vec![])
            }
            CallId::GetObjectSize => {
                let s = self.session(a.u(0)?)?;
                let obj = self.object(&s, a.u(1)?, CKR_OBJECT_HANDLE_INVALID)?;
                Ok(vec![Arg::Ulong(
                    self.lib(s.token)?.object_size(s.real, obj)?,
                )])
            }
            CallId::GetAttributeValue => {
                let s = self.session(a.u(0)?)?;
                let obj = self.object(&s, a.u(1)?, CKR_OBJECT_HANDLE_INVALID)?;
                let dialect = self.conn()?.dialect;
                let mut budget = MAX_ATTR_OUT;
                let mut t = OutTemplate::new(a.slots(2)?, dialect, &mut budget)?;
                let rv = self.lib(s.token)?.get_attribute_value(s.real, obj, &mut t);
                match rv {
                    CKR_OK
                    | CKR_ATTRIBUTE_SENSITIVE
                    | CKR_ATTRIBUTE_TYPE_INVALID
                    | CKR_BUFFER_TOO_SMALL => Ok(vec![
                        Arg::Attributes(t.into_attributes(dialect)),
                        Arg::Ulong(rv),
                    ]),
                    rv => Err(Rv(rv)),
                }
            }
            CallId::SetAttributeValue => {
                let s = self.session(a.u(0)?)?;
                let e = self
                    .conn()?
                    .object(a.u(1)?, s.token, CKR_OBJECT_HANDLE_INVALID)?;
                let obj = e.real;
                let attrs = a.attrs(2)?;
                let wp = self
                    .conn()?
                    .slots
                    .get(s.slot)
                    .is_some_and(|e| e.write_protected);
                if wp && s.rw {
                    return Err(Rv(CKR_TOKEN_WRITE_PROTECTED));
                }
                let mut t = self.template(attrs)?;
                self.lib(s.token)?
                    .set_attribute_value(s.real, obj, &mut t)?;
                if e.session.is_none() {
                    // Spares may be armed with it (and CKA_SIGN may be gone now).
                    self.shared.prearm.invalidate(s.token, &self.shared.modules);
                }
                Ok(vec![])
            }
            CallId::FindObjectsInit => {
                let s = self.session(a.u(0)?)?;
                let mut t = self.template(a.attrs(1)?)?;
                self.lib(s.token)?.find_objects_init(s.real, &mut t)?;
                Ok(vec![])
            }
            CallId::FindObjects => {
                let s = self.session(a.u(0)?)?;
                let max = (a.fu(1)? as usize).min(1 << 16);
                let lib = self.lib(s.token)?;
                let mut found = Vec::new();
                // Hidden objects must not end the search early: keep asking until the module
                // has nothing more or we have `max` visible ones.
                while found.len() < max {
                    let batch = lib.find_objects(s.real, max - found.len())?;
                    if batch.is_empty() {
                        break;
                    }
                    for real in batch {
                        if let Some(v) = self.admit_found(&s, real)? {
                            found.push(v);
                        }
                    }
                }
                Ok(vec![Arg::UlongArray(UlongArray::Data(found))])
            }
            CallId::FindObjectsFinal => {
                let s = self.session(a.u(0)?)?;
                self.lib(s.token)?.find_objects_final(s.real)?;
                Ok(vec![])
            }
            CallId::EncryptInit => self.init_op(InitKind::Encrypt, &a, true),
            CallId::DecryptInit => self.init_op(InitKind::Decrypt, &a, true),
            CallId::SignInit => self.init_op(InitKind::Sign, &a, true),
            CallId::SignRecoverInit => self.init_op(InitKind::SignRecover, &a, true),
            CallId::VerifyInit => self.init_op(InitKind::Verify, &a, true),
            CallId::VerifyRecoverInit => self.init_op(InitKind::VerifyRecover, &a, true),
            CallId::DigestInit => self.init_op(InitKind::Digest, &a, false),
            CallId::Encrypt => self.in_out(InOut::Encrypt, &a),
            CallId::EncryptUpdate => self.in_out(InOut::EncryptUpdate, &a),
            CallId::Decrypt => self.in_out(InOut::Decrypt, &a),
            CallId::DecryptUpdate => self.in_out(InOut::DecryptUpdate, &a),
            CallId::Digest => self.in_out(InOut::Digest, &a),
            CallId::Sign => self.in_out(InOut::Sign, &a),
            CallId::SignRecover => self.in_out(InOut::SignRecover, &a),
            CallId::VerifyRecover => self.in_out(InOut::VerifyRecover, &a),
            CallId::DigestEncryptUpdate => self.in_out(InOut::DigestEncryptUpdate, &a),
            CallId::DecryptDigestUpdate => self.in_out(InOut::DecryptDigestUpdate, &a),
            CallId::SignEncryptUpdate => self.in_out(InOut::SignEncryptUpdate, &a),
            CallId::DecryptVerifyUpdate => self.in_out(InOut::DecryptVerifyUpdate, &a),
            CallId::EncryptFinal => self.out_only(OutOnly::EncryptFinal, &a),
            CallId::DecryptFinal => self.out_only(OutOnly::DecryptFinal, &a),
            CallId::DigestFinal => self.out_only(OutOnly::DigestFinal, &a),
            CallId::SignFinal => self.out_only(OutOnly::SignFinal, &a),
            CallId::DigestUpdate => self.in_only(InOnly::DigestUpdate, &a),
            CallId::SignUpdate => self.in_only(InOnly::SignUpdate, &a),
            CallId::VerifyUpdate => self.in_only(InOnly::VerifyUpdate, &a),
            CallId::VerifyFinal => self.in_only(InOnly::VerifyFinal, &a),
            CallId::SeedRandom => self.in_only(InOnly::SeedRandom, &a),
            CallId::Verify => {
                let s = self.session(a.u(0)?)?;
                self.lib(s.token)?.verify(s.real, a.data(1)?, a.data(2)?)?;
                Ok(vec![])
            }
            CallId::DigestKey => {
                let s = self.session(a.u(0)?)?;
                let key = self.object(&s, a.u(1)?, CKR_KEY_HANDLE_INVALID)?;
                self.lib(s.token)?.digest_key(s.real, key)?;
                Ok(vec![])
            }
            CallId::GenerateKey => {
                let s = self.session(a.u(0)?)?;
                let m = a.mech(1)?.ok_or(Rv(CKR_MECHANISM_INVALID))?;
                let attrs = a.attrs(2)?;
                self.check_writable(&s, attrs)?;
                let mut m = self.mechanism(&s, m)?;
                let mut t = self.template(attrs)?;
                let real = self.lib(s.token)?.generate_key(s.real, &mut m, &mut t)?;
                Ok(vec![Arg::Ulong(self.register_new(&s, real)?)])
            }
            CallId::GenerateKeyPair => {
                let s = self.session(a.u(0)?)?;
                let m = a.mech(1)?.ok_or(Rv(CKR_MECHANISM_INVALID))?;
                let (pubt, privt) = (a.attrs(2)?, a.attrs(3)?);
                self.check_writable(&s, pubt)?;
                self.check_writable(&s, privt)?;
                let mut m = self.mechanism(&s, m)?;
                let mut pt = self.template(pubt)?;
                let mut kt = self.template(privt)?;
                let lib = self.lib(s.token)?;
                let (pk, sk) = lib.generate_key_pair(s.real, &mut m, &mut pt, &mut kt)?;
                let vpub = match self.register_new(&s, pk) {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = lib.destroy_object(s.real, sk);
                        return Err(e);
                    }
                };
                match self.register_new(&s, sk) {
                    Ok(vpriv) => Ok(vec![Arg::Ulong(vpub), Arg::Ulong(vpriv)]),
                    Err(e) => {
                        let _ = lib.destroy_object(s.real, pk);
                        self.conn()?.remove_object(vpub);
                        Err(e)
                    }
                }
            }
            CallId::WrapKey => {
                let s = self.session(a.u(0)?)?;
                let m = a.mech(1)?.ok_or(Rv(CKR_MECHANISM_INVALID))?;
                let wrapping = self.object(&s, a.u(2)?, CKR_WRAPPING_KEY_HANDLE_INVALID)?;
                let key = self.object(&s, a.u(3)?, CKR_KEY_HANDLE_INVALID)?;
                let mut m = self.mechanism(&s, m)?;
                let out = self
                    .lib(s.token)?
                    .wrap_key(s.real, &mut m, wrapping, key, a.fy(4)?)?;
                Ok(vec![Arg::ByteArray(out)])
            }
            CallId::UnwrapKey => {
                let s = self.session(a.u(0)?)?;
                let m = a.mech(1)?.ok_or(Rv(CKR_MECHANISM_INVALID))?;
                let unwrapping = self.object(&s, a.u(2)?, CKR_UNWRAPPING_KEY_HANDLE_INVALID)?;
                let attrs = a.attrs(4)?;
                self.check_writable(&s, attrs)?;
                let mut m = self.mechanism(&s, m)?;
                let mut t = self.template(attrs)?;
                let real = self.lib(s.token)?.unwrap_key(
                    s.real,
                    &mut m,
                    unwrapping,
                    a.data(3)?,
                    &mut t,
                )?;
                Ok(vec![Arg::Ulong(self.register_new(&s, real)?)])
            }
            CallId::DeriveKey | CallId::DeriveKey2 => {
                let s = self.session(a.u(0)?)?;
                let mech = a.mech(1)?.ok_or(Rv(CKR_MECHANISM_INVALID))?;
                let base = self.object(&s, a.u(2)?, CKR_KEY_HANDLE_INVALID)?;
                let attrs = a.attrs(3)?;
                self.check_writable(&s, attrs)?;
                let mut m = self.mechanism(&s, mech)?;
                let mut t = self.template(attrs)?;
                let real = self
                    .lib(s.token)?
                    .derive_key(s.real, &mut m, base, &mut t)?;
                let v = self.register_new(&s, real)?;
                if req.call == CallId::DeriveKey {
                    return Ok(vec![Arg::Ulong(v)]);
                }
                let dialect = self.conn()?.dialect;
                let update = if dialect.is_noparam(mech.ty) {
                    MechUpdate::Absent
                } else if mech.param == MechParam::None {
                    MechUpdate::Null
                } else {
                    MechUpdate::Present(ParamUpdate::Empty)
                };
                Ok(vec![
                    Arg::Ulong(CKR_OK),
                    Arg::MechUpdate(update),
                    Arg::Ulong(v),
                ])
            }
            CallId::GenerateRandom => {
                let s = self.session(a.u(0)?)?;
                let out = self.lib(s.token)?.generate_random(s.real, a.fy(1)?)?;
                Ok(vec![Arg::ByteArray(out)])
            }
            CallId::WaitForSlotEvent => {
                // Served by the server (`server::slot_event`): a blocking wait is async there so
                // that C_Finalize and a disconnect can end it. Not reached.
                self.check_init()?;
                Err(Rv(CKR_FUNCTION_NOT_SUPPORTED))
            }
            CallId::SessionCancel => {
                let s = self.session(a.u(0)?)?;
                self.lib(s.token)?.session_cancel(s.real, a.u(1)?)?;
                Ok(vec![])
            }
            // The message-based functions carry native parameter structures with pointers as
            // raw bytes (rpc §6): they cannot be forwarded safely.
            CallId::MessageEncryptInit
            | CallId::EncryptMessage
            | CallId::EncryptMessageBegin
            | CallId::EncryptMessageNext
            | CallId::MessageEncryptFinal
            | CallId::MessageDecryptInit
            | CallId::DecryptMessage
            | CallId::DecryptMessageBegin
            | CallId::DecryptMessageNext
            | CallId::MessageDecryptFinal
            | CallId::MessageSignInit
            | CallId::SignMessage
            | CallId::SignMessageBegin
            | CallId::SignMessageNext
            | CallId::MessageSignFinal
            | CallId::MessageVerifyInit
            | CallId::VerifyMessage
            | CallId::VerifyMessageBegin
            | CallId::VerifyMessageNext
            | CallId::MessageVerifyFinal => {
                self.check_init()?;
                Err(Rv(CKR_FUNCTION_NOT_SUPPORTED))
            }
            CallId::Error => Err(Rv(CKR_FUNCTION_NOT_SUPPORTED)),
        }
    }
}

/// The session a request works on, if its first argument is a session handle: requests on the
/// same session are processed in arrival order.
pub(crate) fn session_of(req: &Request) -> Option<u64> {
    match req.call {
        CallId::Error
        | CallId::Initialize
        | CallId::Finalize
        | CallId::GetInfo
        | CallId::GetSlotList
        | CallId::GetSlotInfo
        | CallId::GetTokenInfo
        | CallId::GetMechanismList
        | CallId::GetMechanismInfo
        | CallId::InitToken
        | CallId::InitToken2
        | CallId::OpenSession
        | CallId::CloseAllSessions
        | CallId::WaitForSlotEvent => None,
        _ => match req.args.first() {
            Some(Arg::Ulong(s)) => Some(*s),
            _ => None,
        },
    }
}

/// Calls that wait for the connection's other requests and hold back later ones.
pub(crate) fn is_barrier(call: CallId) -> bool {
    matches!(
        call,
        CallId::Initialize | CallId::Finalize | CallId::CloseAllSessions
    )
}

/// The mechanism type of a request (for encoding a `C_DeriveKey2` reply).
pub(crate) fn mechanism_of(req: &Request) -> Option<u64> {
    req.args.iter().find_map(|a| match a {
        Arg::Mechanism(Some(m)) => Some(m.ty),
        _ => None,
    })
}
