//! Fewer round trips with the same PKCS#11 results (issue 7): deferred requests, operation
//! tracking and key metadata, per session.
//!
//! Every request still reaches the server, in the order the application made the calls; what
//! changes is *when* some of them travel and when the application learns their result.
//!
//! - **Deferred `C_*Init`** (Encrypt, Decrypt, Digest, Sign, Verify) and `C_FindObjectsInit`:
//!   checked locally (our session, a key handle the server gave us, a key and mechanism that
//!   do not contradict what we know of the key, no operation of that kind possibly active),
//!   answered `CKR_OK`, and written in one `send` with the session's next request (normally
//!   `C_Sign`, `C_Decrypt`, `C_FindObjects`, ...). Stock servers of every generation and
//!   `p11fwd server` run a session's requests in order, so the server sees exactly the calls it
//!   would have seen. **Deviation**: if the server rejects the Init, the application learns it
//!   from the next call of that operation (`C_Sign` returns the Init's CK_RV) instead of from
//!   the Init itself. This is safe: the operation was never active on the server, the call
//!   that reports the error ends it (as any error from `C_Sign` does), and nothing was signed
//!   or decrypted with an unexpected key. When the Init's failure comes back with an unrelated
//!   call, it is kept and returned by the next call of that operation.
//! - **Cancel**: `C_SignInit(NULL)` (or any Init with a NULL mechanism) while the Init is still
//!   deferred drops it locally: the server never had the operation, which is what a successful
//!   cancel leaves behind; this works against 0.24 servers too, which cannot carry the cancel.
//!   `C_SessionCancel` is sent after the deferred requests.
//! - **Deferred `C_FindObjectsFinal`**: when a search is known to be active on the server, the
//!   Final is answered `CKR_OK` and sent with the session's next request (a Final of an active
//!   search cannot fail). A Final right after a deferred `C_FindObjectsInit` drops both.
//! - **Known output sizes**: while a Sign/Decrypt/Encrypt/Digest operation is (projected)
//!   active and the key's type and size are known, `C_Sign(NULL)` and the other size queries are
//!   answered locally with what the token answers (RSA: the modulus length; ECDSA: twice the
//!   curve's order length; EdDSA: 64/114; digests: their length); a signature buffer shorter
//!   than that gets `CKR_BUFFER_TOO_SMALL` locally (the operation stays active, as PKCS#11
//!   requires). Otherwise the server is asked.
//! - **Key metadata** (class, key type, token flag, usage flags, modulus, EC parameters) is
//!   fetched once per token key, in the same write as the first operation that needs it, and
//!   kept for the connection's life (these attributes cannot change; usage flags only serve the
//!   deferral check, never an answer). Session objects are not cached (their handles die with
//!   their session).
//!
//! Operation tracking is conservative: a kind is marked "possibly active" whenever it might be,
//! and cleared only by a definite end (a completed or failed one-shot/final call, a cancel).
//! "Possibly active" only disables deferral, so an unknown state costs a round trip, never a
//! wrong answer.

use std::collections::{HashMap, HashSet};

use cryptoki_sys::*;
use p11fwd_wire::client::req;
use p11fwd_wire::message::Request;
use p11fwd_wire::value::AttrSlot;
use p11fwd_wire::{Arg, Attribute, CallId, Rv};

/// The kinds of session operations PKCS#11 keeps state for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    Encrypt = 0,
    Decrypt = 1,
    Digest = 2,
    Sign = 3,
    Verify = 4,
    SignRecover = 5,
    VerifyRecover = 6,
    Find = 7,
}

/// Every kind.
pub(crate) const ALL_OPS: [Op; 8] = [
    Op::Encrypt,
    Op::Decrypt,
    Op::Digest,
    Op::Sign,
    Op::Verify,
    Op::SignRecover,
    Op::VerifyRecover,
    Op::Find,
];

impl Op {
    /// Its bit in an [`OpSet`].
    pub(crate) const fn bit(self) -> u16 {
        1 << self as u16
    }

    /// The kind an `*Init` call starts.
    pub(crate) fn of_init(call: CallId) -> Option<Self> {
        Some(match call {
            CallId::EncryptInit => Self::Encrypt,
            CallId::DecryptInit => Self::Decrypt,
            CallId::DigestInit => Self::Digest,
            CallId::SignInit => Self::Sign,
            CallId::VerifyInit => Self::Verify,
            CallId::SignRecoverInit => Self::SignRecover,
            CallId::VerifyRecoverInit => Self::VerifyRecover,
            CallId::FindObjectsInit => Self::Find,
            _ => return None,
        })
    }

    /// Whether its Init may be deferred (the kinds issue 7 names, plus searches).
    pub(crate) fn deferrable(self) -> bool {
        !matches!(self, Self::SignRecover | Self::VerifyRecover)
    }

    /// The `C_SessionCancel` flag that ends it.
    fn cancel_flag(self) -> CK_FLAGS {
        match self {
            Self::Encrypt => CKF_ENCRYPT,
            Self::Decrypt => CKF_DECRYPT,
            Self::Digest => CKF_DIGEST,
            Self::Sign => CKF_SIGN,
            Self::Verify => CKF_VERIFY,
            Self::SignRecover => CKF_SIGN_RECOVER,
            Self::VerifyRecover => CKF_VERIFY_RECOVER,
            Self::Find => CKF_FIND_OBJECTS,
        }
    }
}

/// A set of [`Op`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OpSet(u16);

impl OpSet {
    pub(crate) const NONE: Self = Self(0);
    pub(crate) const ALL: Self = Self(0xff);

    pub(crate) const fn of(op: Op) -> Self {
        Self(op.bit())
    }
    pub(crate) const fn with(self, op: Op) -> Self {
        Self(self.0 | op.bit())
    }
    pub(crate) const fn has(self, op: Op) -> bool {
        self.0 & op.bit() != 0
    }
    fn add(&mut self, op: Op) {
        self.0 |= op.bit();
    }
    fn remove(&mut self, op: Op) {
        self.0 &= !op.bit();
    }
}

/// A request held back until the session's next call.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The request, ready to send.
    pub(crate) req: Request,
    /// What it is.
    pub(crate) kind: PendingKind,
}

/// What a deferred request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PendingKind {
    /// An `*Init` that starts `Op` (`C_FindObjectsInit` for [`Op::Find`]).
    Init(Op),
    /// `C_FindObjectsFinal` of a search known to be active.
    FindFinal,
}

/// The operation the last Init of a kind started: for local size answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Current {
    /// The mechanism type.
    pub(crate) mech: u64,
    /// The key (none for digests).
    pub(crate) key: Option<u64>,
}

/// What a call does to the operation state of its session (recorded after the reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// An Init succeeded: the operation is active.
    Started(Op, Current),
    /// The operation ended (completed, failed, or cancelled).
    Ended(Op),
    /// `C_SessionCancel` succeeded with these flags.
    Cancelled(CK_FLAGS),
    /// `C_SetOperationState` succeeded: any kind may now be active.
    Unknown,
}

/// Per-session bookkeeping of operations and deferred requests.
#[derive(Debug, Default)]
pub(crate) struct OpState {
    /// Kinds possibly active on the server once the pending requests have run.
    active: OpSet,
    /// Deferred Inits the server rejected, not reported yet: the next call of that kind
    /// returns the CK_RV.
    failed: Vec<(Op, Rv)>,
    /// Requests not sent yet, in call order.
    pending: Vec<Pending>,
    /// The mechanism and key of each kind's current operation.
    current: [Option<Current>; 8],
}

/// Most deferred requests a session holds before they are sent on their own.
pub(crate) const MAX_PENDING: usize = 8;

impl OpState {
    /// Whether an Init of `op` may be deferred now.
    pub(crate) fn may_defer(&self, op: Op) -> bool {
        op.deferrable() && !self.active.has(op) && self.pending.len() < MAX_PENDING
    }

    /// Hold back an Init of `op` (the caller checked [`Self::may_defer`]).
    pub(crate) fn defer_init(&mut self, op: Op, req: Request, current: Current) {
        self.take_failure(op);
        self.active.add(op);
        self.current[op as usize] = Some(current);
        self.pending.push(Pending {
            req,
            kind: PendingKind::Init(op),
        });
    }

    /// Whether an Init of `op` is still held back.
    #[cfg(test)]
    pub(crate) fn init_pending(&self, op: Op) -> bool {
        self.pending.iter().any(|p| p.kind == PendingKind::Init(op))
    }

    /// A cancel (`*Init` with a NULL mechanism) that needs no server: the Init is still held
    /// back (it is dropped), or it failed without being reported. `true` if handled.
    pub(crate) fn cancel_locally(&mut self, op: Op) -> bool {
        if let Some(i) = self
            .pending
            .iter()
            .position(|p| p.kind == PendingKind::Init(op))
        {
            self.pending.remove(i);
            self.end(op);
            return true;
        }
        if self.take_failure(op).is_some() {
            self.end(op);
            return true;
        }
        false
    }

    /// `C_FindObjectsFinal` without a round trip: `true` if handled (a held-back
    /// `C_FindObjectsInit` is dropped with it; a search known to be active gets its Final
    /// deferred; a failed deferred Init is forgotten).
    pub(crate) fn find_final_locally(&mut self, req: Request) -> bool {
        if self.cancel_locally(Op::Find) {
            return true;
        }
        if self.active.has(Op::Find) && self.pending.len() < MAX_PENDING {
            self.pending.push(Pending {
                req,
                kind: PendingKind::FindFinal,
            });
            self.end(Op::Find);
            return true;
        }
        false
    }

    /// The failure of a deferred Init of `op` not reported yet (taken: reported now).
    pub(crate) fn take_failure(&mut self, op: Op) -> Option<Rv> {
        let i = self.failed.iter().position(|(o, _)| *o == op)?;
        Some(self.failed.remove(i).1)
    }

    /// The first unreported failure of any kind in `ops`.
    pub(crate) fn take_failure_in(&mut self, ops: OpSet) -> Option<Rv> {
        let i = self.failed.iter().position(|(o, _)| ops.has(*o))?;
        Some(self.failed.remove(i).1)
    }

    /// The current operation of `op`, if it is (projected) active.
    pub(crate) fn current(&self, op: Op) -> Option<Current> {
        if self.active.has(op) {
            self.current[op as usize]
        } else {
            None
        }
    }

    /// Take the deferred requests (to send them).
    pub(crate) fn take_pending(&mut self) -> Vec<Pending> {
        std::mem::take(&mut self.pending)
    }

    /// Put back deferred requests that were not sent, ahead of any deferred since.
    pub(crate) fn restore_pending(&mut self, mut pending: Vec<Pending>) {
        pending.append(&mut self.pending);
        self.pending = pending;
    }

    /// The server's answer to a deferred request. `reported`: the failure was returned to
    /// the application by the call it travelled with.
    pub(crate) fn pending_done(
        &mut self,
        kind: PendingKind,
        result: Result<(), Rv>,
        reported: bool,
    ) {
        match (kind, result) {
            (_, Ok(())) => {}
            (PendingKind::Init(op), Err(code)) => {
                self.end(op);
                if !reported {
                    self.failed.push((op, code));
                }
            }
            (PendingKind::FindFinal, Err(code)) => {
                tracing::debug!(rv = %code, "a deferred C_FindObjectsFinal failed");
            }
        }
    }

    /// Record what a call did.
    pub(crate) fn record(&mut self, event: Event) {
        match event {
            Event::Started(op, current) => {
                self.take_failure(op);
                self.active.add(op);
                self.current[op as usize] = Some(current);
            }
            Event::Ended(op) => self.end(op),
            Event::Cancelled(flags) => {
                for op in ALL_OPS {
                    if flags & op.cancel_flag() != 0 {
                        self.take_failure(op);
                        self.end(op);
                    }
                }
            }
            Event::Unknown => {
                self.failed.clear();
                self.active = OpSet::ALL;
                self.current = [None; 8];
            }
        }
    }

    fn end(&mut self, op: Op) {
        self.active.remove(op);
        self.current[op as usize] = None;
    }
}

/// What happens to an operation after a call that produces output (one-shot or final, or an
/// update with output): whether the operation ended.
pub(crate) fn ends_after_output(result: &Result<bool, Rv>, update: bool) -> bool {
    match result {
        // `true`: data came back (not a size answer and not CKR_BUFFER_TOO_SMALL).
        Ok(data) => *data && !update,
        Err(code) => code.0 != CKR_BUFFER_TOO_SMALL,
    }
}

// ---------------------------------------------------------------------------------------------
// Key metadata

/// Attributes fetched for a key, in this order.
const META_TYPES: [CK_ATTRIBUTE_TYPE; 9] = [
    CKA_CLASS,
    CKA_KEY_TYPE,
    CKA_TOKEN,
    CKA_MODULUS,
    CKA_EC_PARAMS,
    CKA_SIGN,
    CKA_DECRYPT,
    CKA_ENCRYPT,
    CKA_VERIFY,
];

/// Room for `CKA_MODULUS` (RSA-8192) and `CKA_EC_PARAMS` (an OID or a curve name).
const META_BUFLEN: [u32; 9] = [8, 8, 1, 1024, 128, 1, 1, 1, 1];

/// What we know of a key: attributes that cannot change while the object exists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyMeta {
    pub(crate) class: Option<u64>,
    pub(crate) key_type: Option<u64>,
    pub(crate) token: Option<bool>,
    /// The modulus length in bytes (leading zero bytes not counted).
    pub(crate) modulus_len: Option<u64>,
    pub(crate) ec_params: Option<Vec<u8>>,
    pub(crate) sign: Option<bool>,
    pub(crate) decrypt: Option<bool>,
    pub(crate) encrypt: Option<bool>,
    pub(crate) verify: Option<bool>,
}

/// The `C_GetAttributeValue` request that fetches a key's metadata.
pub(crate) fn meta_request(session: u64, object: u64) -> Request {
    let slots = META_TYPES
        .iter()
        .zip(META_BUFLEN)
        .map(|(ty, buflen)| AttrSlot {
            ty: *ty,
            buflen,
            nested: None,
        })
        .collect();
    req::get_attribute_value(session, object, slots)
}

impl KeyMeta {
    /// From the reply to [`meta_request`]; `None` if the reply does not fit.
    pub(crate) fn from_reply(args: Vec<Arg>) -> Option<Self> {
        let (attrs, _) = p11fwd_wire::client::parse::attributes(args).ok()?;
        if attrs.len() != META_TYPES.len() {
            return None;
        }
        let get = |ty: CK_ATTRIBUTE_TYPE| -> Option<&Attribute> {
            attrs.iter().find(|a| a.ty == ty && !a.is_unavailable())
        };
        let ulong = |ty| get(ty).and_then(Attribute::as_ulong);
        let flag = |ty| get(ty).and_then(Attribute::as_bool);
        let bytes = |ty| get(ty).and_then(Attribute::as_bytes);
        Some(Self {
            class: ulong(CKA_CLASS),
            key_type: ulong(CKA_KEY_TYPE),
            token: flag(CKA_TOKEN),
            modulus_len: bytes(CKA_MODULUS).map(|m| {
                let significant = m.iter().skip_while(|b| **b == 0).count();
                significant as u64
            }),
            ec_params: bytes(CKA_EC_PARAMS).map(<[u8]>::to_vec),
            sign: flag(CKA_SIGN),
            decrypt: flag(CKA_DECRYPT),
            encrypt: flag(CKA_ENCRYPT),
            verify: flag(CKA_VERIFY),
        })
    }

    /// Whether what we know of the key contradicts an Init of `op` with `mech` (the server
    /// would refuse it): then the Init is sent at once, so its error is reported exactly.
    pub(crate) fn contradicts(&self, op: Op, mech: u64) -> bool {
        let (class, usage) = match op {
            Op::Sign => (CKO_PRIVATE_KEY, self.sign),
            Op::Decrypt => (CKO_PRIVATE_KEY, self.decrypt),
            Op::Encrypt => (CKO_PUBLIC_KEY, self.encrypt),
            Op::Verify => (CKO_PUBLIC_KEY, self.verify),
            _ => return false,
        };
        if usage == Some(false) {
            return true;
        }
        let Some(family) = family(mech) else {
            // A mechanism we do not classify: nothing to contradict.
            return false;
        };
        if self.class.is_some_and(|c| c != class) {
            return true;
        }
        self.key_type.is_some_and(|t| t != family)
    }

    /// The output length the token reports for `op` with `mech` on this key, when it follows
    /// from the key alone (see the module docs); `None` means "ask the server".
    pub(crate) fn output_len(&self, op: Op, mech: u64) -> Option<u64> {
        let family = family(mech)?;
        if self.key_type != Some(family) {
            return None;
        }
        match (op, family) {
            (Op::Sign, CKK_RSA) if RSA_SIGN.contains(&mech) => self.modulus_len,
            (Op::Decrypt | Op::Encrypt, CKK_RSA) if RSA_CRYPT.contains(&mech) => self.modulus_len,
            (Op::Sign, CKK_EC) => {
                let order = curve_order_len(self.ec_params.as_deref()?)?;
                Some(2 * order)
            }
            (Op::Sign, CKK_EC_EDWARDS) => edwards_signature_len(self.ec_params.as_deref()?),
            _ => None,
        }
    }

    /// Whether a signature of this length can never fit a shorter buffer: RSA, ECDSA (raw
    /// `r|s`) and EdDSA signatures always have exactly [`Self::output_len`] bytes.
    pub(crate) fn exact_output(op: Op) -> bool {
        op == Op::Sign
    }
}

/// RSA signature mechanisms whose output is exactly the modulus length.
const RSA_SIGN: &[u64] = &[
    CKM_RSA_PKCS,
    CKM_RSA_X_509,
    CKM_RSA_PKCS_PSS,
    CKM_SHA1_RSA_PKCS,
    CKM_SHA224_RSA_PKCS,
    CKM_SHA256_RSA_PKCS,
    CKM_SHA384_RSA_PKCS,
    CKM_SHA512_RSA_PKCS,
    CKM_SHA1_RSA_PKCS_PSS,
    CKM_SHA224_RSA_PKCS_PSS,
    CKM_SHA256_RSA_PKCS_PSS,
    CKM_SHA384_RSA_PKCS_PSS,
    CKM_SHA512_RSA_PKCS_PSS,
];

/// RSA encryption mechanisms: the output (encryption) or its upper bound (decryption, which is
/// what tokens answer to a size query) is the modulus length.
const RSA_CRYPT: &[u64] = &[CKM_RSA_PKCS, CKM_RSA_PKCS_OAEP, CKM_RSA_X_509];

/// The key type a mechanism needs, for the mechanisms we reason about.
fn family(mech: u64) -> Option<u64> {
    if RSA_SIGN.contains(&mech) || RSA_CRYPT.contains(&mech) {
        return Some(CKK_RSA);
    }
    match mech {
        CKM_ECDSA | CKM_ECDSA_SHA1 | CKM_ECDSA_SHA224 | CKM_ECDSA_SHA256 | CKM_ECDSA_SHA384
        | CKM_ECDSA_SHA512 => Some(CKK_EC),
        CKM_EDDSA => Some(CKK_EC_EDWARDS),
        _ => None,
    }
}

/// The byte length of the group order of a named curve (DER OID in `CKA_EC_PARAMS`).
fn curve_order_len(params: &[u8]) -> Option<u64> {
    const CURVES: &[(&[u8], u64)] = &[
        // secp256r1 / P-256: 1.2.840.10045.3.1.7
        (
            &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            32,
        ),
        // secp384r1: 1.3.132.0.34
        (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22], 48),
        // secp521r1: 1.3.132.0.35 (521-bit order: 66 bytes)
        (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23], 66),
        // secp224r1: 1.3.132.0.33
        (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x21], 28),
        // secp192r1 / P-192: 1.2.840.10045.3.1.1
        (
            &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x01],
            24,
        ),
        // secp256k1: 1.3.132.0.10
        (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a], 32),
        // brainpoolP256r1, P384r1, P512r1: 1.3.36.3.3.2.8.1.1.{7,11,13}
        (
            &[
                0x06, 0x09, 0x2b, 0x24, 0x03, 0x03, 0x02, 0x08, 0x01, 0x01, 0x07,
            ],
            32,
        ),
        (
            &[
                0x06, 0x09, 0x2b, 0x24, 0x03, 0x03, 0x02, 0x08, 0x01, 0x01, 0x0b,
            ],
            48,
        ),
        (
            &[
                0x06, 0x09, 0x2b, 0x24, 0x03, 0x03, 0x02, 0x08, 0x01, 0x01, 0x0d,
            ],
            64,
        ),
    ];
    CURVES
        .iter()
        .find(|(oid, _)| *oid == params)
        .map(|(_, n)| *n)
}

/// EdDSA signature lengths by `CKA_EC_PARAMS` (OID or the PrintableString curve name).
fn edwards_signature_len(params: &[u8]) -> Option<u64> {
    const ED25519: &[&[u8]] = &[&[0x06, 0x03, 0x2b, 0x65, 0x70], b"\x13\x0cedwards25519"];
    const ED448: &[&[u8]] = &[&[0x06, 0x03, 0x2b, 0x65, 0x71], b"\x13\x0aedwards448"];
    if ED25519.contains(&params) {
        Some(64)
    } else if ED448.contains(&params) {
        Some(114)
    } else {
        None
    }
}

/// The length of a digest mechanism's output.
pub(crate) fn digest_len(mech: u64) -> Option<u64> {
    Some(match mech {
        CKM_MD5 => 16,
        CKM_SHA_1 => 20,
        CKM_SHA224 | CKM_SHA3_224 => 28,
        CKM_SHA256 | CKM_SHA3_256 => 32,
        CKM_SHA384 | CKM_SHA3_384 => 48,
        CKM_SHA512 | CKM_SHA3_512 => 64,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Objects of one connection

/// Most object handles remembered per connection (a bound, not a working set).
const MAX_KNOWN: usize = 1 << 16;

/// Object handles the server gave us on one connection, and the metadata of token keys. Handles
/// are only unique per token (a module-mode stock server passes a multi-slot module's handles
/// through), so everything is kept by slot and handle.
#[derive(Debug, Default)]
pub(crate) struct Objects {
    generation: u64,
    known: HashSet<(u64, u64)>,
    /// Fetched metadata; `None`: fetched, but not kept (a session object).
    meta: HashMap<(u64, u64), Option<KeyMeta>>,
}

impl Objects {
    /// Start over if `generation` is a new connection.
    fn sync(&mut self, generation: u64) {
        if self.generation != generation {
            *self = Self {
                generation,
                ..Self::default()
            };
        }
    }

    /// Handles the server returned (found, created, generated, unwrapped, derived) on `slot`.
    pub(crate) fn learn(&mut self, generation: u64, slot: u64, handles: &[u64]) {
        self.sync(generation);
        if self.known.len() + handles.len() > MAX_KNOWN {
            self.known.clear();
            self.meta.clear();
        }
        self.known
            .extend(handles.iter().filter(|h| **h != 0).map(|h| (slot, *h)));
    }

    /// An object is gone (destroyed) or changed (attributes set).
    pub(crate) fn forget(&mut self, generation: u64, slot: u64, handle: u64, destroyed: bool) {
        self.sync(generation);
        self.meta.remove(&(slot, handle));
        if destroyed {
            self.known.remove(&(slot, handle));
        }
    }

    /// Whether the server gave us `handle` on `slot` on this connection.
    pub(crate) fn is_known(&mut self, generation: u64, slot: u64, handle: u64) -> bool {
        self.sync(generation);
        self.known.contains(&(slot, handle))
    }

    /// The metadata of a key: `None` if never fetched, `Some(None)` if fetched but not kept.
    pub(crate) fn meta(
        &mut self,
        generation: u64,
        slot: u64,
        handle: u64,
    ) -> Option<Option<&KeyMeta>> {
        self.sync(generation);
        self.meta.get(&(slot, handle)).map(Option::as_ref)
    }

    /// Keep the metadata of a token key (of a session object, only that it was fetched: its
    /// handle dies with its session and may come back as another object).
    pub(crate) fn store_meta(&mut self, generation: u64, slot: u64, handle: u64, meta: KeyMeta) {
        self.sync(generation);
        if self.known.contains(&(slot, handle)) {
            let keep = meta.token == Some(true);
            self.meta.insert((slot, handle), keep.then_some(meta));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests unwrap: a panic is a test failure.
mod tests {
    use super::*;

    fn init(_op: Op) -> Request {
        req::init_with_key(CallId::SignInit, 1, None, 2)
    }

    const CUR: Current = Current {
        mech: CKM_ECDSA,
        key: Some(2),
    };

    #[test]
    fn defers_only_when_nothing_is_active() {
        let mut s = OpState::default();
        assert!(s.may_defer(Op::Sign));
        s.defer_init(Op::Sign, init(Op::Sign), CUR);
        assert!(s.init_pending(Op::Sign));
        // A second Init of the same kind goes to the server (it must see OPERATION_ACTIVE).
        assert!(!s.may_defer(Op::Sign));
        assert!(s.may_defer(Op::Digest));
        assert!(!s.may_defer(Op::SignRecover));
        assert_eq!(s.current(Op::Sign), Some(CUR));
        let p = s.take_pending();
        assert_eq!(p.len(), 1);
        // The deferred Init failed and the call it went with was unrelated: kept for the next
        // C_Sign, and the operation is not active.
        s.pending_done(p[0].kind, Err(Rv(CKR_KEY_TYPE_INCONSISTENT)), false);
        assert_eq!(s.current(Op::Sign), None);
        assert!(s.may_defer(Op::Sign));
        assert_eq!(
            s.take_failure(Op::Sign),
            Some(Rv(CKR_KEY_TYPE_INCONSISTENT))
        );
        assert_eq!(s.take_failure(Op::Sign), None);
    }

    #[test]
    fn cancel_drops_a_deferred_init() {
        let mut s = OpState::default();
        s.defer_init(Op::Sign, init(Op::Sign), CUR);
        assert!(s.cancel_locally(Op::Sign));
        assert!(s.take_pending().is_empty());
        assert!(s.may_defer(Op::Sign));
        // Nothing deferred, nothing failed: the server must see the cancel.
        assert!(!s.cancel_locally(Op::Sign));
        // A failed deferred Init is cancelled locally too.
        s.pending_done(
            PendingKind::Init(Op::Decrypt),
            Err(Rv(CKR_KEY_HANDLE_INVALID)),
            false,
        );
        assert!(s.cancel_locally(Op::Decrypt));
        assert_eq!(s.take_failure(Op::Decrypt), None);
    }

    #[test]
    fn find_final_is_deferred_or_dropped() {
        let mut s = OpState::default();
        let fin = || req::find_objects_final(1);
        // No search: ask the server.
        assert!(!s.find_final_locally(fin()));
        // Init still deferred: both dropped.
        s.defer_init(Op::Find, req::find_objects_init(1, vec![]), CUR);
        assert!(s.find_final_locally(fin()));
        assert!(s.take_pending().is_empty());
        // A confirmed search: the Final waits for the next call.
        s.record(Event::Started(Op::Find, CUR));
        assert!(s.find_final_locally(fin()));
        let p = s.take_pending();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].kind, PendingKind::FindFinal);
        assert!(s.may_defer(Op::Find));
    }

    #[test]
    fn session_cancel_and_set_state() {
        let mut s = OpState::default();
        s.record(Event::Started(Op::Sign, CUR));
        s.record(Event::Started(Op::Digest, CUR));
        s.record(Event::Cancelled(CKF_SIGN));
        assert!(s.may_defer(Op::Sign));
        assert!(!s.may_defer(Op::Digest));
        s.record(Event::Unknown);
        assert!(!s.may_defer(Op::Sign));
        assert_eq!(s.current(Op::Sign), None);
    }

    #[test]
    fn pending_keeps_call_order_when_restored() {
        let mut s = OpState::default();
        s.defer_init(Op::Find, req::find_objects_init(1, vec![]), CUR);
        let taken = s.take_pending();
        s.defer_init(Op::Sign, init(Op::Sign), CUR);
        s.restore_pending(taken);
        let p = s.take_pending();
        assert_eq!(p[0].kind, PendingKind::Init(Op::Find));
        assert_eq!(p[1].kind, PendingKind::Init(Op::Sign));
    }

    #[test]
    fn ends() {
        assert!(ends_after_output(&Ok(true), false));
        assert!(!ends_after_output(&Ok(false), false));
        assert!(!ends_after_output(&Ok(true), true));
        assert!(!ends_after_output(&Err(Rv(CKR_BUFFER_TOO_SMALL)), false));
        assert!(ends_after_output(&Err(Rv(CKR_DATA_LEN_RANGE)), true));
    }

    fn ec(oid: &[u8]) -> KeyMeta {
        KeyMeta {
            class: Some(CKO_PRIVATE_KEY),
            key_type: Some(CKK_EC),
            token: Some(true),
            ec_params: Some(oid.to_vec()),
            sign: Some(true),
            ..KeyMeta::default()
        }
    }

    #[test]
    fn output_lengths() {
        let p256 = ec(&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]);
        assert_eq!(p256.output_len(Op::Sign, CKM_ECDSA), Some(64));
        assert_eq!(p256.output_len(Op::Sign, CKM_ECDSA_SHA256), Some(64));
        assert_eq!(p256.output_len(Op::Sign, CKM_RSA_PKCS), None);
        assert_eq!(p256.output_len(Op::Sign, CKM_SHA256_HMAC), None);
        let p521 = ec(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23]);
        assert_eq!(p521.output_len(Op::Sign, CKM_ECDSA), Some(132));
        assert_eq!(
            ec(&[0x06, 0x01, 0x00]).output_len(Op::Sign, CKM_ECDSA),
            None
        );
        let mut ed = ec(&[0x06, 0x03, 0x2b, 0x65, 0x70]);
        ed.key_type = Some(CKK_EC_EDWARDS);
        assert_eq!(ed.output_len(Op::Sign, CKM_EDDSA), Some(64));
        ed.ec_params = Some(b"\x13\x0aedwards448".to_vec());
        assert_eq!(ed.output_len(Op::Sign, CKM_EDDSA), Some(114));
        let rsa = KeyMeta {
            class: Some(CKO_PRIVATE_KEY),
            key_type: Some(CKK_RSA),
            token: Some(true),
            modulus_len: Some(256),
            sign: Some(true),
            decrypt: Some(false),
            ..KeyMeta::default()
        };
        assert_eq!(rsa.output_len(Op::Sign, CKM_SHA256_RSA_PKCS_PSS), Some(256));
        assert_eq!(rsa.output_len(Op::Decrypt, CKM_RSA_PKCS_OAEP), Some(256));
        assert_eq!(rsa.output_len(Op::Sign, CKM_RSA_9796), None);
        assert!(!rsa.contradicts(Op::Sign, CKM_RSA_PKCS));
        assert!(rsa.contradicts(Op::Sign, CKM_ECDSA));
        assert!(rsa.contradicts(Op::Decrypt, CKM_RSA_PKCS));
        assert!(rsa.contradicts(Op::Verify, CKM_RSA_PKCS));
        assert!(!rsa.contradicts(Op::Sign, 0x8000_0001));
        assert_eq!(digest_len(CKM_SHA384), Some(48));
    }

    #[test]
    fn objects_belong_to_a_connection() {
        let mut o = Objects::default();
        o.learn(1, 0x11, &[5, 6]);
        assert!(o.is_known(1, 0x11, 5));
        assert_eq!(o.meta(1, 0x11, 5), None);
        o.store_meta(1, 0x11, 5, ec(&[0x06]));
        assert!(matches!(o.meta(1, 0x11, 5), Some(Some(_))));
        // The same handle on another token is another object.
        assert!(!o.is_known(1, 0x12, 5) && o.meta(1, 0x12, 5).is_none());
        // Session objects are not cached, but not fetched again either.
        let mut session_key = ec(&[0x06]);
        session_key.token = Some(false);
        o.store_meta(1, 0x11, 6, session_key);
        assert_eq!(o.meta(1, 0x11, 6), Some(None));
        // Unknown handles are not cached at all.
        o.store_meta(1, 0x11, 7, ec(&[0x06]));
        assert_eq!(o.meta(1, 0x11, 7), None);
        o.forget(1, 0x11, 5, true);
        assert!(!o.is_known(1, 0x11, 5) && o.meta(1, 0x11, 5).is_none());
        assert!(!o.is_known(2, 0x11, 6), "a new connection knows nothing");
    }
}
