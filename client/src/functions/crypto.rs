//! Cryptographic functions (PKCS#11 §5.8–5.15): encrypt, decrypt, digest, sign, verify, the
//! dual-function updates, key management and random numbers.
//!
//! Output buffers follow PKCS#11 §5.2 through [`OutBytes`] and `OutCap`: a NULL buffer is a
//! size query, a short buffer gets `CKR_BUFFER_TOO_SMALL` with the size needed (the operation
//! stays active), and a non-NULL zero-length buffer is sent as such (`0xFFFFFFFF`) to 0.25+
//! servers and emulated for 0.24 ones (rpc §4, §12 client 3).

use cryptoki_sys::{CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CKR_ARGUMENTS_BAD};
use p11fwd_wire::client::{OutCap, parse, req};
use p11fwd_wire::{CallId, Mechanism, Rv};

use crate::attrs::{self, local};
use crate::ffi::{InAttr, MAX_OUTPUT, OutBytes, OutFixed};
use crate::state::Module;
use crate::{Result, rv};

/// The mechanism a key-management call needs (a NULL one is `CKR_ARGUMENTS_BAD`).
fn required(mech: Option<Mechanism>) -> Result<Mechanism> {
    mech.ok_or(rv(CKR_ARGUMENTS_BAD))
}

/// An `*Init` call with a mechanism and a key (`uMu`); a NULL mechanism cancels the operation
/// (0.25+ servers; `CKR_FUNCTION_NOT_SUPPORTED` against 0.24).
pub(crate) fn init(
    m: &Module,
    call: CallId,
    h: CK_SESSION_HANDLE,
    mech: Option<Mechanism>,
    key: CK_OBJECT_HANDLE,
) -> Result<()> {
    m.session_call(h, |c, s| {
        c.connection()
            .call(&req::init_with_key(call, s, mech, key))
            .and_then(parse::unit)
    })
}

/// `C_DigestInit`
pub(crate) fn digest_init(m: &Module, h: CK_SESSION_HANDLE, mech: Option<Mechanism>) -> Result<()> {
    m.session_call(h, |c, s| c.digest_init(s, mech))
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
    let cap = out.cap();
    let got = m.session_call(h, |c, s| {
        c.connection()
            .call(&req::data_in_out(c.dialect(), call, s, data, cap))
            .and_then(parse::output)
    })?;
    out.put(got)
}

/// A final call (`ufy` → `ay`): EncryptFinal, DecryptFinal, DigestFinal, SignFinal.
pub(crate) fn out_only(
    m: &Module,
    call: CallId,
    h: CK_SESSION_HANDLE,
    out: OutBytes<'_>,
) -> Result<()> {
    let cap = out.cap();
    let got = m.session_call(h, |c, s| {
        c.connection()
            .call(&req::data_out(c.dialect(), call, s, cap))
            .and_then(parse::output)
    })?;
    out.put(got)
}

/// A one-input call (`uay`): DigestUpdate, SignUpdate, VerifyUpdate, VerifyFinal, SeedRandom.
pub(crate) fn in_only(m: &Module, call: CallId, h: CK_SESSION_HANDLE, data: &[u8]) -> Result<()> {
    m.session_call(h, |c, s| {
        c.connection()
            .call(&req::data_in(call, s, data))
            .and_then(parse::unit)
    })
}

/// `C_Verify`
pub(crate) fn verify(
    m: &Module,
    h: CK_SESSION_HANDLE,
    data: &[u8],
    signature: &[u8],
) -> Result<()> {
    m.session_call(h, |c, s| c.verify(s, data, signature))
}

/// `C_DigestKey`
pub(crate) fn digest_key(m: &Module, h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> Result<()> {
    m.session_call(h, |c, s| c.digest_key(s, key))
}

/// `C_GenerateKey`
pub(crate) fn generate_key(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mech: Option<Mechanism>,
    template: &[InAttr<'_>],
) -> Result<CK_OBJECT_HANDLE> {
    let mech = required(mech)?;
    m.session_call(h, |c, s| {
        let t = attrs::to_wire(template, c.dialect()).map_err(|e| local(CallId::GenerateKey, e))?;
        c.generate_key(s, mech, t)
    })
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
    m.session_call(h, |c, s| {
        let err = |e| local(CallId::GenerateKeyPair, e);
        let public = attrs::to_wire(public, c.dialect()).map_err(err)?;
        let private = attrs::to_wire(private, c.dialect()).map_err(err)?;
        c.generate_key_pair(s, mech, public, private)
    })
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
    let got = m.session_call(h, |c, s| c.wrap_key(s, mech, wrapping_key, key, cap))?;
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
    m.session_call(h, |c, s| {
        let t = attrs::to_wire(template, c.dialect()).map_err(|e| local(CallId::UnwrapKey, e))?;
        c.unwrap_key(s, mech, unwrapping_key, wrapped, t)
    })
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
    m.session_call(h, |c, s| {
        let t = attrs::to_wire(template, c.dialect()).map_err(|e| local(CallId::DeriveKey, e))?;
        Ok(c.derive_key(s, mech, base, t)?.0)
    })
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
