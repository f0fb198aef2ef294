//! C shims of the RSA asymmetric cipher (logic in `crate::cipher`).

use core::ffi::{c_int, c_uchar, c_void};

use zeroize::Zeroizing;

use crate::cipher::{CipherCtx, RsaPadding};
use crate::error::Error;
use crate::ffi::boundary::entry;
use crate::ffi::cast::{ArcCastable, BoxCastable, Castable, bytes, write_out};
use crate::ffi::dispatch::{DispatchTable, dispatch_table};
use crate::ffi::params::{ParamTable, ParamType, Params, ParamsMut, param_table};
use crate::hash::Hash;
use crate::key::Key;
use crate::provider::ProvCtx;
use crate::sys::{self, OSSL_PARAM};

/// OpenSSL 3.2's `OSSL_ASYM_CIPHER_PARAM_IMPLICIT_REJECTION` (not in the 3.0 headers).
pub(crate) const IMPLICIT_REJECTION: &core::ffi::CStr = c"implicit-rejection";

pub(crate) static RSA_FUNCTIONS: DispatchTable = dispatch_table![
    asym_cipher_newctx => p11fwd_cipher_newctx,
    asym_cipher_freectx => p11fwd_cipher_freectx,
    asym_cipher_dupctx => p11fwd_cipher_dupctx,
    asym_cipher_encrypt_init => p11fwd_cipher_encrypt_init,
    asym_cipher_encrypt => p11fwd_cipher_encrypt,
    asym_cipher_decrypt_init => p11fwd_cipher_decrypt_init,
    asym_cipher_decrypt => p11fwd_cipher_decrypt,
    asym_cipher_get_ctx_params => p11fwd_cipher_get_ctx_params,
    asym_cipher_gettable_ctx_params => p11fwd_cipher_gettable_ctx_params,
    asym_cipher_set_ctx_params => p11fwd_cipher_set_ctx_params,
    asym_cipher_settable_ctx_params => p11fwd_cipher_settable_ctx_params,
];

static GETTABLE: ParamTable = param_table![
    (sys::OSSL_ASYM_CIPHER_PARAM_PAD_MODE, Utf8String),
    (sys::OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST, Utf8String),
    (sys::OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST, Utf8String),
    (sys::OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL, OctetString),
    (
        sys::OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION,
        UnsignedInteger
    ),
    (
        sys::OSSL_ASYM_CIPHER_PARAM_TLS_NEGOTIATED_VERSION,
        UnsignedInteger
    ),
    (IMPLICIT_REJECTION, UnsignedInteger),
];

static SETTABLE: ParamTable = param_table![
    (sys::OSSL_ASYM_CIPHER_PARAM_PAD_MODE, Utf8String),
    (sys::OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST, Utf8String),
    (sys::OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST_PROPS, Utf8String),
    (sys::OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST, Utf8String),
    (sys::OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST_PROPS, Utf8String),
    (sys::OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL, OctetString),
    (
        sys::OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION,
        UnsignedInteger
    ),
    (
        sys::OSSL_ASYM_CIPHER_PARAM_TLS_NEGOTIATED_VERSION,
        UnsignedInteger
    ),
    (IMPLICIT_REJECTION, UnsignedInteger),
];

entry! {
    /// `OSSL_FUNC_asym_cipher_newctx`
    fn p11fwd_cipher_newctx(provctx: *mut c_void) -> *mut c_void {
        // SAFETY: the core passes our provctx, live until teardown.
        let provctx = unsafe { ProvCtx::clone_arc(provctx) }?;
        Ok(CipherCtx::new(provctx).into_raw())
    }
}

entry! {
    /// `OSSL_FUNC_asym_cipher_freectx`
    fn p11fwd_cipher_freectx(ctx: *mut c_void) {
        // SAFETY: the core hands the ctx back once.
        drop(unsafe { CipherCtx::from_raw(ctx) });
        Ok(())
    }
}

entry! {
    /// `OSSL_FUNC_asym_cipher_dupctx`
    fn p11fwd_cipher_dupctx(ctx: *mut c_void) -> *mut c_void {
        // SAFETY: our ctx.
        Ok(unsafe { CipherCtx::borrow(ctx) }?.clone().into_raw())
    }
}

/// Shared body of the two init calls.
///
/// # Safety
///
/// `ctx` is our cipher ctx, `provkey` our keydata, `params` NULL or END-terminated.
unsafe fn init(
    ctx: *mut c_void,
    provkey: *mut c_void,
    params: *const OSSL_PARAM,
    decrypt: bool,
) -> Result<c_int, Error> {
    // SAFETY: per the contract.
    let ctx = unsafe { CipherCtx::borrow_mut(ctx) }?;
    // SAFETY: per the contract.
    let key = unsafe { Key::clone_arc(provkey) }?;
    ctx.init(key, decrypt)?;
    // SAFETY: per the contract.
    set_params(ctx, unsafe { Params::from_ptr(params) })?;
    Ok(1)
}

entry! {
    /// `OSSL_FUNC_asym_cipher_encrypt_init`
    fn p11fwd_cipher_encrypt_init(ctx: *mut c_void, provkey: *mut c_void, params: *const OSSL_PARAM) -> c_int {
        // SAFETY: the core's arguments for this call.
        unsafe { init(ctx, provkey, params, false) }
    }
}

entry! {
    /// `OSSL_FUNC_asym_cipher_decrypt_init`
    fn p11fwd_cipher_decrypt_init(ctx: *mut c_void, provkey: *mut c_void, params: *const OSSL_PARAM) -> c_int {
        // SAFETY: the core's arguments for this call.
        unsafe { init(ctx, provkey, params, true) }
    }
}

/// Copies `data` out.
///
/// # Safety
///
/// `out` has `outsize` writable bytes; `outlen` is writable.
unsafe fn output(
    out: *mut c_uchar,
    outlen: *mut usize,
    outsize: usize,
    data: &[u8],
) -> Result<c_int, Error> {
    if data.len() > outsize {
        return Err(Error::Param {
            key: "out".into(),
            problem: "buffer too small",
        });
    }
    // SAFETY: room checked; our buffer does not overlap the caller's.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), out, data.len()) };
    // SAFETY: the caller's out-parameter.
    unsafe { write_out(outlen, data.len(), "outlen") }?;
    Ok(1)
}

entry! {
    /// `OSSL_FUNC_asym_cipher_encrypt` (`out` NULL: the size).
    fn p11fwd_cipher_encrypt(
        ctx: *mut c_void,
        out: *mut c_uchar,
        outlen: *mut usize,
        outsize: usize,
        input: *const c_uchar,
        inlen: usize,
    ) -> c_int {
        // SAFETY: our ctx, not used concurrently.
        let ctx = unsafe { CipherCtx::borrow_mut(ctx) }?;
        if out.is_null() {
            // SAFETY: the caller's out-parameter.
            unsafe { write_out(outlen, ctx.max_output()?, "outlen") }?;
            return Ok(1);
        }
        // SAFETY: `inlen` readable bytes.
        let input = unsafe { bytes(input, inlen, "in") }?;
        let ciphertext = ctx.encrypt(input)?;
        // SAFETY: `out` has `outsize` writable bytes.
        unsafe { output(out, outlen, outsize, &ciphertext) }
    }
}

entry! {
    /// `OSSL_FUNC_asym_cipher_decrypt` (`out` NULL: the size).
    fn p11fwd_cipher_decrypt(
        ctx: *mut c_void,
        out: *mut c_uchar,
        outlen: *mut usize,
        outsize: usize,
        input: *const c_uchar,
        inlen: usize,
    ) -> c_int {
        // SAFETY: our ctx, not used concurrently.
        let ctx = unsafe { CipherCtx::borrow_mut(ctx) }?;
        if out.is_null() {
            // SAFETY: the caller's out-parameter.
            unsafe { write_out(outlen, ctx.max_output()?, "outlen") }?;
            return Ok(1);
        }
        // As OpenSSL's own provider: the buffer must take the largest output before anything is
        // decrypted, so that its size cannot tell a good padding (a short message) from a bad
        // one (implicit rejection's synthetic message).
        if outsize < ctx.max_output()? {
            return Err(Error::Param {
                key: "out".into(),
                problem: "buffer smaller than the key's output size",
            });
        }
        // SAFETY: `inlen` readable bytes.
        let input = unsafe { bytes(input, inlen, "in") }?;
        let plaintext: Zeroizing<Vec<u8>> = ctx.decrypt(input)?;
        // SAFETY: `out` has `outsize` writable bytes.
        unsafe { output(out, outlen, outsize, &plaintext) }
    }
}

entry! {
    /// `OSSL_FUNC_asym_cipher_gettable_ctx_params`
    fn p11fwd_cipher_gettable_ctx_params(_ctx: *mut c_void, _provctx: *mut c_void) -> *const OSSL_PARAM {
        Ok(GETTABLE.as_ptr())
    }
}

entry! {
    /// `OSSL_FUNC_asym_cipher_settable_ctx_params`
    fn p11fwd_cipher_settable_ctx_params(_ctx: *mut c_void, _provctx: *mut c_void) -> *const OSSL_PARAM {
        Ok(SETTABLE.as_ptr())
    }
}

entry! {
    /// `OSSL_FUNC_asym_cipher_get_ctx_params`
    fn p11fwd_cipher_get_ctx_params(ctx: *mut c_void, params: *mut OSSL_PARAM) -> c_int {
        // SAFETY: our ctx.
        let ctx = unsafe { CipherCtx::borrow(ctx) }?;
        // SAFETY: the caller's END-terminated request array.
        let mut params = unsafe { ParamsMut::from_ptr(params) };
        for mut p in params.iter_mut() {
            let k = p.key();
            if k == sys::OSSL_ASYM_CIPHER_PARAM_PAD_MODE {
                if p.as_param().data_type() == Some(ParamType::Integer) {
                    p.set_int(ctx.padding.as_int())?;
                } else {
                    p.set_static_utf8(ctx.padding.name())?;
                }
            } else if k == sys::OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST {
                p.set_utf8(ctx.oaep_md.name())?;
            } else if k == sys::OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST {
                p.set_utf8(ctx.mgf1.unwrap_or(ctx.oaep_md).name())?;
            } else if k == sys::OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL {
                p.set_octets(ctx.label.as_ref().map_or(&[][..], |l| l.as_slice()))?;
            } else if k == sys::OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION {
                p.set_uint(ctx.client_version)?;
            } else if k == sys::OSSL_ASYM_CIPHER_PARAM_TLS_NEGOTIATED_VERSION {
                p.set_uint(ctx.alt_version)?;
            } else if k == IMPLICIT_REJECTION {
                p.set_uint(u32::from(ctx.implicit_rejection))?;
            }
        }
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_asym_cipher_set_ctx_params`
    fn p11fwd_cipher_set_ctx_params(ctx: *mut c_void, params: *const OSSL_PARAM) -> c_int {
        // SAFETY: our ctx, not used concurrently.
        let ctx = unsafe { CipherCtx::borrow_mut(ctx) }?;
        // SAFETY: the caller's END-terminated array.
        set_params(ctx, unsafe { Params::from_ptr(params) })?;
        Ok(1)
    }
}

fn digest(name: &str) -> Result<Hash, Error> {
    Hash::from_name(name).ok_or(Error::Unsupported(
        "this digest (p11fwd knows SHA-1 and SHA-2)",
    ))
}

fn set_params(ctx: &mut CipherCtx, params: Params<'_>) -> Result<(), Error> {
    for p in params.iter() {
        let k = p.key();
        if k == sys::OSSL_ASYM_CIPHER_PARAM_PAD_MODE {
            let pad = if p.data_type() == Some(ParamType::Integer) {
                RsaPadding::from_int(p.int()?)
            } else {
                RsaPadding::from_name(p.utf8()?)
            };
            ctx.padding = pad.ok_or(Error::Unsupported("this RSA padding mode"))?;
        } else if k == sys::OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST {
            ctx.oaep_md = digest(p.utf8()?)?;
        } else if k == sys::OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST {
            ctx.mgf1 = Some(digest(p.utf8()?)?);
        } else if k == sys::OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL {
            let label = p.octets()?;
            ctx.label = (!label.is_empty()).then(|| Zeroizing::new(label.to_vec()));
        } else if k == sys::OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION {
            ctx.client_version = p.uint()?;
        } else if k == sys::OSSL_ASYM_CIPHER_PARAM_TLS_NEGOTIATED_VERSION {
            ctx.alt_version = p.uint()?;
        } else if k == IMPLICIT_REJECTION {
            ctx.implicit_rejection = p.uint()? != 0;
        }
    }
    Ok(())
}
