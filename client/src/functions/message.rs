//! Message-based functions (PKCS#11 3.0 §5.11, §5.14, ...), call ids 68–87.
//!
//! They are forwarded when the server's generation knows them (0.25+); against a 0.24 server
//! the transport refuses them locally with `CKR_FUNCTION_NOT_SUPPORTED` (an unknown call id
//! would make that server drop the connection). As in p11-kit, the per-message parameter
//! crosses as its raw native bytes (rpc §6): what the token writes back into it is not
//! returned. So that our pointer values never reach a server inside those bytes, the message
//! operations of the mechanisms whose per-message parameters are pointer structures (AES-GCM,
//! AES-CCM, ChaCha20/Salsa20-Poly1305) are refused at their Init with
//! `CKR_MECHANISM_PARAM_INVALID`; those of vendor mechanisms, whose layout we cannot know, are
//! forwarded as bytes.

use cryptoki_sys::{
    CK_FLAGS, CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CKR_ARGUMENTS_BAD, CKR_MECHANISM_PARAM_INVALID,
};
use p11fwd_wire::client::OutCap;
use p11fwd_wire::{CallId, Mechanism};

use crate::ffi::OutBytes;
use crate::state::Module;
use crate::{Result, mech, rv};

/// `C_MessageEncryptInit`, `C_MessageDecryptInit`, `C_MessageSignInit`, `C_MessageVerifyInit`.
pub(crate) fn init(
    m: &Module,
    call: CallId,
    h: CK_SESSION_HANDLE,
    mech: Option<Mechanism>,
    key: CK_OBJECT_HANDLE,
) -> Result<()> {
    let mech = mech.ok_or(rv(CKR_ARGUMENTS_BAD))?;
    // Per-message parameters with pointers cannot cross (module docs); refused without a round
    // trip. A server that lacks the message functions (0.24) still gets
    // CKR_FUNCTION_NOT_SUPPORTED from the transport.
    if mech::pointer_message_params(mech.ty) && m.dialect().is_some_and(|d| d.knows(call)) {
        m.check_session(h)?;
        return Err(rv(CKR_MECHANISM_PARAM_INVALID));
    }
    m.session_call(h, |c, s| match call {
        CallId::MessageEncryptInit => c.message_encrypt_init(s, mech, key),
        CallId::MessageDecryptInit => c.message_decrypt_init(s, mech, key),
        CallId::MessageSignInit => c.message_sign_init(s, mech, key),
        _ => c.message_verify_init(s, mech, key),
    })
}

/// `C_EncryptMessage` / `C_DecryptMessage`.
pub(crate) fn crypt(
    m: &Module,
    encrypt: bool,
    h: CK_SESSION_HANDLE,
    param: &[u8],
    aad: &[u8],
    data: &[u8],
    out: OutBytes<'_>,
) -> Result<()> {
    let cap = out.cap();
    let got = m.session_call(h, |c, s| {
        if encrypt {
            c.encrypt_message(s, param, aad, data, cap)
        } else {
            c.decrypt_message(s, param, aad, data, cap)
        }
    })?;
    out.put(got)
}

/// `C_EncryptMessageBegin` / `C_DecryptMessageBegin`.
pub(crate) fn crypt_begin(
    m: &Module,
    encrypt: bool,
    h: CK_SESSION_HANDLE,
    param: &[u8],
    aad: &[u8],
) -> Result<()> {
    m.session_call(h, |c, s| {
        if encrypt {
            c.encrypt_message_begin(s, param, aad)
        } else {
            c.decrypt_message_begin(s, param, aad)
        }
    })
}

/// `C_EncryptMessageNext` / `C_DecryptMessageNext`.
pub(crate) fn crypt_next(
    m: &Module,
    encrypt: bool,
    h: CK_SESSION_HANDLE,
    param: &[u8],
    part: &[u8],
    out: OutBytes<'_>,
    flags: CK_FLAGS,
) -> Result<()> {
    let cap = out.cap();
    let got = m.session_call(h, |c, s| {
        if encrypt {
            c.encrypt_message_next(s, param, part, cap, flags)
        } else {
            c.decrypt_message_next(s, param, part, cap, flags)
        }
    })?;
    out.put(got)
}

/// `C_MessageEncryptFinal`, `C_MessageDecryptFinal`, `C_MessageSignFinal`,
/// `C_MessageVerifyFinal`.
pub(crate) fn finish(m: &Module, call: CallId, h: CK_SESSION_HANDLE) -> Result<()> {
    m.session_call(h, |c, s| match call {
        CallId::MessageEncryptFinal => c.message_encrypt_final(s),
        CallId::MessageDecryptFinal => c.message_decrypt_final(s),
        CallId::MessageSignFinal => c.message_sign_final(s),
        _ => c.message_verify_final(s),
    })
}

/// `C_SignMessage`
pub(crate) fn sign(
    m: &Module,
    h: CK_SESSION_HANDLE,
    param: &[u8],
    data: &[u8],
    out: OutBytes<'_>,
) -> Result<()> {
    let cap = out.cap();
    let got = m.session_call(h, |c, s| c.sign_message(s, param, data, cap))?;
    out.put(got)
}

/// `C_SignMessageBegin` / `C_VerifyMessageBegin`.
pub(crate) fn begin(m: &Module, sign: bool, h: CK_SESSION_HANDLE, param: &[u8]) -> Result<()> {
    m.session_call(h, |c, s| {
        if sign {
            c.sign_message_begin(s, param)
        } else {
            c.verify_message_begin(s, param)
        }
    })
}

/// `C_SignMessageNext`: `out` is `None` for a part that is not the last one.
pub(crate) fn sign_next(
    m: &Module,
    h: CK_SESSION_HANDLE,
    param: &[u8],
    data: &[u8],
    out: Option<OutBytes<'_>>,
) -> Result<()> {
    let cap = out.as_ref().map_or(OutCap::Query, OutBytes::cap);
    let want = out.is_some();
    let got = m.session_call(h, |c, s| c.sign_message_next(s, param, data, want, cap))?;
    match out {
        Some(out) => out.put(got),
        None => Ok(()),
    }
}

/// `C_VerifyMessage` / `C_VerifyMessageNext`.
pub(crate) fn verify(
    m: &Module,
    next: bool,
    h: CK_SESSION_HANDLE,
    param: &[u8],
    data: &[u8],
    signature: &[u8],
) -> Result<()> {
    m.session_call(h, |c, s| {
        if next {
            c.verify_message_next(s, param, data, signature)
        } else {
            c.verify_message(s, param, data, signature)
        }
    })
}
