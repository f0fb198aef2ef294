//! Cryptographic functions (PKCS#11 §5.8–5.15): encrypt, decrypt, digest, sign, verify, the
//! dual-function updates, key management and random numbers.
//!
//! Output buffers follow PKCS#11 §5.2 through [`OutBytes`] and `OutCap`: a NULL buffer is a
//! size query, a short buffer gets `CKR_BUFFER_TOO_SMALL` with the size needed (the operation
//! stays active), and a non-NULL zero-length buffer is sent as such (`0xFFFFFFFF`) to 0.25+
//! servers; for 0.24 ones the size is asked first ([`size_first`], rpc §4, §12 client 3).

use cryptoki_sys::{CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CKR_ARGUMENTS_BAD, CKR_GENERAL_ERROR};
use p11fwd_wire::client::{OutCap, Output, parse, req};
use p11fwd_wire::message::Request;
use p11fwd_wire::{CallId, Dialect, Mechanism, Rv};

use crate::attrs::{self, local};
use crate::ffi::{InAttr, MAX_OUTPUT, OutBytes, OutFixed};
use crate::pipeline::{Current, Event, KeyMeta, Op, OpSet, digest_len, ends_after_output};
use crate::state::{Module, Tx};
use crate::{Result, rv};

/// The mechanism a key-management call needs (a NULL one is `CKR_ARGUMENTS_BAD`).
fn required(mech: Option<Mechanism>) -> Result<Mechanism> {
    mech.ok_or(rv(CKR_ARGUMENTS_BAD))
}

/// An `*Init` call with a mechanism and a key (`uMu`); a NULL mechanism cancels the operation
/// (0.25+ servers; `CKR_FUNCTION_NOT_SUPPORTED` against 0.24 unless the Init it cancels was
/// never sent). Deferred when possible (`crate::pipeline`).
pub(crate) fn init(
    m: &Module,
    call: CallId,
    h: CK_SESSION_HANDLE,
    mech: Option<Mechanism>,
    key: CK_OBJECT_HANDLE,
) -> Result<()> {
    let op = Op::of_init(call).ok_or(rv(CKR_GENERAL_ERROR))?;
    start(m, call, op, h, mech, Some(key))
}

/// `C_DigestInit`
pub(crate) fn digest_init(m: &Module, h: CK_SESSION_HANDLE, mech: Option<Mechanism>) -> Result<()> {
    start(m, CallId::DigestInit, Op::Digest, h, mech, None)
}

fn init_request(call: CallId, s: u64, mech: Option<Mechanism>, key: Option<u64>) -> Request {
    match key {
        Some(k) => req::init_with_key(call, s, mech, k),
        None => req::digest_init(s, mech),
    }
}

fn start(
    m: &Module,
    call: CallId,
    op: Op,
    h: CK_SESSION_HANDLE,
    mech: Option<Mechanism>,
    key: Option<u64>,
) -> Result<()> {
    let Some(mech) = mech else {
        // A cancel: nothing to send if the operation never reached the server.
        if m.with_ops(h, |ops, _| ops.cancel_locally(op))? {
            return Ok(());
        }
        m.session_tx(h, OpSet::NONE, None, |tx, s| {
            tx.call(&init_request(call, s, None, key))
                .and_then(parse::unit)
        })?;
        m.record(h, Event::Ended(op));
        return Ok(());
    };
    let current = Current { mech: mech.ty, key };
    if defer(m, call, op, h, &mech, key)? {
        return Ok(());
    }
    m.session_tx(h, OpSet::NONE, None, |tx, s| {
        tx.call(&init_request(call, s, Some(mech), key))
            .and_then(parse::unit)
    })?;
    m.record(h, Event::Started(op, current));
    Ok(())
}

/// Hold an Init back until the session's next call, when nothing we know says the server
/// would refuse it: our session, no operation of that kind possibly active, a key handle the
/// server gave us whose known type and usage fit the mechanism, a mechanism the token lists
/// (when we have its list) and that this server's generation can carry. `true` if deferred.
fn defer(
    m: &Module,
    call: CallId,
    op: Op,
    h: CK_SESSION_HANDLE,
    mech: &Mechanism,
    key: Option<u64>,
) -> Result<bool> {
    let place = m.place(h)?;
    let Some(dialect) = m.dialect() else {
        return Ok(false);
    };
    if let Some(k) = key {
        let mut objects = m.objects()?;
        if !objects.is_known(place.generation, place.slot, k) {
            return Ok(false);
        }
        if let Some(Some(meta)) = objects.meta(place.generation, place.slot, k)
            && meta.contradicts(op, mech.ty)
        {
            return Ok(false);
        }
    }
    if m.cached_mechanisms(place.generation, place.slot)
        .is_some_and(|list| !list.contains(&mech.ty))
    {
        return Ok(false);
    }
    let req = init_request(call, place.remote, Some(mech.clone()), key);
    if !dialect.knows(call) || req.encode(dialect).is_err() {
        return Ok(false);
    }
    m.with_ops(h, |ops, now| {
        if now != place || !ops.may_defer(op) {
            return false;
        }
        ops.defer_init(op, req, Current { mech: mech.ty, key });
        true
    })
}

/// How a data call continues its operation.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// A one-shot or final call with output: ends the operation unless it only reports a size.
    Once(Op),
    /// An update with output: ends the operation on errors other than BUFFER_TOO_SMALL.
    Update(Op),
    /// A dual-function update (two operations; their state is left as it is).
    Dual(Op, Op),
}

impl Step {
    fn of(call: CallId) -> Option<Self> {
        use CallId as C;
        Some(match call {
            C::Encrypt | C::EncryptFinal => Self::Once(Op::Encrypt),
            C::Decrypt | C::DecryptFinal => Self::Once(Op::Decrypt),
            C::Digest | C::DigestFinal => Self::Once(Op::Digest),
            C::Sign | C::SignFinal => Self::Once(Op::Sign),
            C::SignRecover => Self::Once(Op::SignRecover),
            C::VerifyRecover => Self::Once(Op::VerifyRecover),
            C::EncryptUpdate => Self::Update(Op::Encrypt),
            C::DecryptUpdate => Self::Update(Op::Decrypt),
            C::DigestEncryptUpdate => Self::Dual(Op::Digest, Op::Encrypt),
            C::DecryptDigestUpdate => Self::Dual(Op::Decrypt, Op::Digest),
            C::SignEncryptUpdate => Self::Dual(Op::Sign, Op::Encrypt),
            C::DecryptVerifyUpdate => Self::Dual(Op::Decrypt, Op::Verify),
            _ => return None,
        })
    }

    fn uses(self) -> OpSet {
        match self {
            Self::Once(op) | Self::Update(op) => OpSet::of(op),
            Self::Dual(a, b) => OpSet::of(a).with(b),
        }
    }
}

/// What we know of a size query's answer.
enum Known {
    /// The token's answer.
    Size(u64),
    /// Ask the server (fetching this key's metadata in the same write, if given).
    Ask(Option<u64>),
}

/// The output size of the current `op` on session `h`, if it follows from its mechanism and
/// key; a deferred Init that failed is reported here.
fn known_output(m: &Module, h: CK_SESSION_HANDLE, op: Op) -> Result<Known> {
    let (current, generation, slot) =
        m.with_ops(h, |ops, place| match ops.take_failure(op) {
            Some(code) => Err(code),
            None => Ok((ops.current(op), place.generation, place.slot)),
        })??;
    let Some(current) = current else {
        return Ok(Known::Ask(None));
    };
    let Some(key) = current.key else {
        return Ok(digest_len(current.mech).map_or(Known::Ask(None), Known::Size));
    };
    let mut objects = m.objects()?;
    let known = objects.is_known(generation, slot, key);
    Ok(match objects.meta(generation, slot, key) {
        Some(Some(meta)) => meta
            .output_len(op, current.mech)
            .map_or(Known::Ask(None), Known::Size),
        Some(None) => Known::Ask(None),
        None if known => Known::Ask(Some(key)),
        None => Known::Ask(None),
    })
}

/// A call with an output buffer on an operation: size queries answered locally when the size
/// is known, the operation state recorded afterwards.
fn output_call(
    m: &Module,
    call: CallId,
    h: CK_SESSION_HANDLE,
    out: OutBytes<'_>,
    build: impl Fn(&Tx<'_>, u64, OutCap) -> Request,
) -> Result<()> {
    let cap = out.cap();
    let step = Step::of(call);
    let mut fetch = None;
    if let Some(Step::Once(op @ (Op::Sign | Op::Decrypt | Op::Encrypt | Op::Digest))) = step {
        match known_output(m, h, op)? {
            Known::Size(n) => {
                let short = matches!(cap, OutCap::Buffer(b) if b < n) && KeyMeta::exact_output(op);
                if cap == OutCap::Query || short {
                    // A size query, or CKR_BUFFER_TOO_SMALL: the operation stays active.
                    return out.put(Output::Size(n));
                }
            }
            Known::Ask(key) => fetch = key,
        }
    }
    let uses = step.map_or(OpSet::NONE, Step::uses);
    let got = m.session_tx(h, uses, fetch, |tx, s| {
        size_first(tx.dialect(), cap, |cap| {
            tx.call(&build(tx, s, cap)).and_then(parse::output)
        })
    });
    if let Some(Step::Once(op) | Step::Update(op)) = step {
        let outcome = got
            .as_ref()
            .map(|o| matches!(o, Output::Data(_)))
            .map_err(|e| *e);
        if ends_after_output(&outcome, matches!(step, Some(Step::Update(_)))) {
            m.record(h, Event::Ended(op));
        }
    }
    out.put(got?)
}

/// Sends a call with an output buffer through `send`. A version-0 server cannot be told "a
/// buffer of length 0" (`fy = 0` is a size query there, rpc §4), and the 1-byte buffer that
/// stands in for it would take a 1-byte result: the token would end the operation while the
/// caller is told `CKR_BUFFER_TOO_SMALL`, and the data would be lost. So the size is asked
/// first: a size other than 0 is the caller's `CKR_BUFFER_TOO_SMALL` (the operation stays
/// active, as with the token itself); an empty result is then fetched through the 1-byte buffer,
/// which ends the operation as the call should.
pub(crate) fn size_first(
    dialect: Dialect,
    cap: OutCap,
    mut send: impl FnMut(OutCap) -> p11fwd_wire::Result<Output>,
) -> p11fwd_wire::Result<Output> {
    if cap == OutCap::Buffer(0)
        && !dialect.has_zero_length_marker()
        && let Output::Size(n @ 1..) = send(OutCap::Query)?
    {
        return Ok(Output::Size(n));
    }
    send(cap)
}

/// A one-input, one-output call (`uayfy` → `ay`): Encrypt, Decrypt, Digest, Sign, the
/// updates that return data, SignRecover, VerifyRecover and the dual-function updates.
pub(crate) fn in_out(
    m: &Module,
    call: CallId,
    h: CK_SESSION_HANDLE,
    data: &[u8],
    out: OutBytes<'_>,
) -> Result<()> {
    output_call(m, call, h, out, |tx, s, cap| {
        req::data_in_out(tx.dialect(), call, s, data, cap)
    })
}

/// A final call (`ufy` → `ay`): EncryptFinal, DecryptFinal, DigestFinal, SignFinal.
pub(crate) fn out_only(
    m: &Module,
    call: CallId,
    h: CK_SESSION_HANDLE,
    out: OutBytes<'_>,
) -> Result<()> {
    output_call(m, call, h, out, |tx, s, cap| {
        req::data_out(tx.dialect(), call, s, cap)
    })
}

/// A one-input call (`uay`): DigestUpdate, SignUpdate, VerifyUpdate, VerifyFinal, SeedRandom.
pub(crate) fn in_only(m: &Module, call: CallId, h: CK_SESSION_HANDLE, data: &[u8]) -> Result<()> {
    let op = match call {
        CallId::DigestUpdate => Some(Op::Digest),
        CallId::SignUpdate => Some(Op::Sign),
        CallId::VerifyUpdate | CallId::VerifyFinal => Some(Op::Verify),
        _ => None,
    };
    let res = m.session_tx(h, op.map_or(OpSet::NONE, OpSet::of), None, |tx, s| {
        tx.call(&req::data_in(call, s, data)).and_then(parse::unit)
    });
    if let Some(op) = op
        && (res.is_err() || call == CallId::VerifyFinal)
    {
        m.record(h, Event::Ended(op));
    }
    res
}

/// `C_Verify` (always ends the operation).
pub(crate) fn verify(
    m: &Module,
    h: CK_SESSION_HANDLE,
    data: &[u8],
    signature: &[u8],
) -> Result<()> {
    let res = m.session_tx(h, OpSet::of(Op::Verify), None, |tx, s| {
        tx.call(&req::verify(s, data, signature))
            .and_then(parse::unit)
    });
    m.record(h, Event::Ended(Op::Verify));
    res
}

/// `C_DigestKey`
pub(crate) fn digest_key(m: &Module, h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> Result<()> {
    let res = m.session_tx(h, OpSet::of(Op::Digest), None, |tx, s| {
        tx.call(&req::digest_key(s, key)).and_then(parse::unit)
    });
    if res.is_err() {
        m.record(h, Event::Ended(Op::Digest));
    }
    res
}

/// Remember object handles the server created for us.
fn learn(m: &Module, h: CK_SESSION_HANDLE, handles: &[u64]) {
    if let Ok(place) = m.place(h)
        && let Ok(mut objects) = m.objects()
    {
        objects.learn(place.generation, place.slot, handles);
    }
}

/// `C_GenerateKey`
pub(crate) fn generate_key(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mech: Option<Mechanism>,
    template: &[InAttr<'_>],
) -> Result<CK_OBJECT_HANDLE> {
    let mech = required(mech)?;
    let key = m.session_tx(h, OpSet::NONE, None, |tx, s| {
        let t =
            attrs::to_wire(template, tx.dialect()).map_err(|e| local(CallId::GenerateKey, e))?;
        tx.call(&req::generate_key(s, mech, t))
            .and_then(parse::ulong)
    })?;
    learn(m, h, &[key]);
    Ok(key)
}

/// `C_GenerateKeyPair`: (public, private).
pub(crate) fn generate_key_pair(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mech: Option<Mechanism>,
    public: &[InAttr<'_>],
    private: &[InAttr<'_>],
) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
    let mech = required(mech)?;
    let pair = m.session_tx(h, OpSet::NONE, None, |tx, s| {
        let err = |e| local(CallId::GenerateKeyPair, e);
        let public = attrs::to_wire(public, tx.dialect()).map_err(err)?;
        let private = attrs::to_wire(private, tx.dialect()).map_err(err)?;
        tx.call(&req::generate_key_pair(s, mech, public, private))
            .and_then(parse::ulong_pair)
    })?;
    learn(m, h, &[pair.0, pair.1]);
    Ok(pair)
}

/// `C_WrapKey`
pub(crate) fn wrap_key(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mech: Option<Mechanism>,
    wrapping_key: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    out: OutBytes<'_>,
) -> Result<()> {
    let mech = required(mech)?;
    let cap = out.cap();
    let got = m.session_call(h, |c, s| {
        size_first(c.dialect(), cap, |cap| {
            c.wrap_key(s, mech.clone(), wrapping_key, key, cap)
        })
    })?;
    out.put(got)
}

/// `C_UnwrapKey`
pub(crate) fn unwrap_key(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mech: Option<Mechanism>,
    unwrapping_key: CK_OBJECT_HANDLE,
    wrapped: &[u8],
    template: &[InAttr<'_>],
) -> Result<CK_OBJECT_HANDLE> {
    let mech = required(mech)?;
    let key = m.session_call(h, |c, s| {
        let t = attrs::to_wire(template, c.dialect()).map_err(|e| local(CallId::UnwrapKey, e))?;
        c.unwrap_key(s, mech, unwrapping_key, wrapped, t)
    })?;
    learn(m, h, &[key]);
    Ok(key)
}

/// `C_DeriveKey` (`C_DeriveKey2` at version 2; a parameter the token writes back is only
/// returned by the IBM mechanisms, which this client does not carry).
pub(crate) fn derive_key(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mech: Option<Mechanism>,
    base: CK_OBJECT_HANDLE,
    template: &[InAttr<'_>],
) -> Result<CK_OBJECT_HANDLE> {
    let mech = required(mech)?;
    let key = m.session_call(h, |c, s| {
        let t = attrs::to_wire(template, c.dialect()).map_err(|e| local(CallId::DeriveKey, e))?;
        Ok(c.derive_key(s, mech, base, t)?.0)
    })?;
    learn(m, h, &[key]);
    Ok(key)
}

/// `C_GenerateRandom`: zero bytes succeed without a round trip; large requests are split so
/// that no reply exceeds the transport's frame limit.
pub(crate) fn generate_random(m: &Module, h: CK_SESSION_HANDLE, out: OutFixed<'_>) -> Result<()> {
    let want = out.len();
    if want == 0 {
        m.check_session(h)?;
        return out.put(&[]);
    }
    let mut data = Vec::with_capacity(want);
    while data.len() < want {
        let n = ((want - data.len()) as u64).min(MAX_OUTPUT / 2);
        let chunk = m.session_call(h, |c, s| {
            c.generate_random(s, OutCap::Buffer(n))?
                .into_data(CallId::GenerateRandom)
        })?;
        if chunk.is_empty() || chunk.len() as u64 > n {
            return Err(Rv(cryptoki_sys::CKR_DEVICE_ERROR));
        }
        data.extend_from_slice(&chunk);
    }
    out.put(&data)
}
