//! C shims of the signature algorithms RSA, ECDSA, ED25519 and ED448 (logic in
//! `crate::signature`).

use core::ffi::{c_char, c_int, c_uchar, c_void};

use crate::error::Error;
use crate::ffi::boundary::entry;
use crate::ffi::cast::{ArcCastable, BoxCastable, Castable, bytes, c_str, write_out};
use crate::ffi::dispatch::{DispatchTable, dispatch_table};
use crate::ffi::params::{ParamTable, ParamType, Params, ParamsMut, param_table};
use crate::key::Key;
use crate::provider::ProvCtx;
use crate::signature::{Algorithm, Padding, SaltLen, SigCtx};
use crate::sys::{self, OSSL_PARAM};

/// Custom parameter: output raw `r|s` instead of DER for ECDSA (an int, 0 or 1).
pub(crate) const ECDSA_RAW: &core::ffi::CStr = c"p11fwd-ecdsa-raw";

macro_rules! signature_table {
    ($name:ident, $newctx:ident) => {
        pub(crate) static $name: DispatchTable = dispatch_table![
            signature_newctx => $newctx,
            signature_freectx => p11fwd_sig_freectx,
            signature_dupctx => p11fwd_sig_dupctx,
            signature_sign_init => p11fwd_sig_sign_init,
            signature_sign => p11fwd_sig_sign,
            signature_digest_sign_init => p11fwd_sig_digest_sign_init,
            signature_digest_sign_update => p11fwd_sig_digest_sign_update,
            signature_digest_sign_final => p11fwd_sig_digest_sign_final,
            signature_digest_sign => p11fwd_sig_digest_sign,
            signature_verify_init => p11fwd_sig_verify_init,
            signature_verify => p11fwd_sig_verify,
            signature_digest_verify_init => p11fwd_sig_digest_verify_init,
            signature_digest_verify_update => p11fwd_sig_digest_sign_update,
            signature_digest_verify_final => p11fwd_sig_digest_verify_final,
            signature_digest_verify => p11fwd_sig_digest_verify,
            signature_get_ctx_params => p11fwd_sig_get_ctx_params,
            signature_gettable_ctx_params => p11fwd_sig_gettable_ctx_params,
            signature_set_ctx_params => p11fwd_sig_set_ctx_params,
            signature_settable_ctx_params => p11fwd_sig_settable_ctx_params,
        ];
    };
}

signature_table!(RSA_FUNCTIONS, newctx_rsa);
signature_table!(ECDSA_FUNCTIONS, newctx_ecdsa);
signature_table!(ED25519_FUNCTIONS, newctx_ed25519);
signature_table!(ED448_FUNCTIONS, newctx_ed448);

macro_rules! newctx {
    ($name:ident, $alg:expr) => {
        entry! {
            /// `OSSL_FUNC_signature_newctx`
            fn $name(provctx: *mut c_void, _propq: *const c_char) -> *mut c_void {
                // SAFETY: the core passes our provctx, live until teardown.
                let provctx = unsafe { ProvCtx::clone_arc(provctx) }?;
                Ok(SigCtx::new(provctx, $alg).into_raw())
            }
        }
    };
}

newctx!(newctx_rsa, Algorithm::Rsa);
newctx!(newctx_ecdsa, Algorithm::Ecdsa);
newctx!(newctx_ed25519, Algorithm::Ed25519);
newctx!(newctx_ed448, Algorithm::Ed448);

static GETTABLE: ParamTable = param_table![
    (sys::OSSL_SIGNATURE_PARAM_ALGORITHM_ID, OctetString),
    (sys::OSSL_SIGNATURE_PARAM_DIGEST, Utf8String),
    (sys::OSSL_SIGNATURE_PARAM_PAD_MODE, Utf8String),
    (sys::OSSL_SIGNATURE_PARAM_PSS_SALTLEN, Utf8String),
    (sys::OSSL_SIGNATURE_PARAM_MGF1_DIGEST, Utf8String),
];

static SETTABLE: ParamTable = param_table![
    (sys::OSSL_SIGNATURE_PARAM_DIGEST, Utf8String),
    (sys::OSSL_SIGNATURE_PARAM_PROPERTIES, Utf8String),
    (sys::OSSL_SIGNATURE_PARAM_PAD_MODE, Utf8String),
    (sys::OSSL_SIGNATURE_PARAM_PSS_SALTLEN, Utf8String),
    (sys::OSSL_SIGNATURE_PARAM_MGF1_DIGEST, Utf8String),
    (sys::OSSL_SIGNATURE_PARAM_MGF1_PROPERTIES, Utf8String),
    (ECDSA_RAW, Integer),
];

entry! {
    /// `OSSL_FUNC_signature_freectx`
    fn p11fwd_sig_freectx(ctx: *mut c_void) {
        // SAFETY: the core hands the ctx back once.
        drop(unsafe { SigCtx::from_raw(ctx) });
        Ok(())
    }
}

entry! {
    /// `OSSL_FUNC_signature_dupctx`: a copy (the token operation itself only exists inside
    /// one round trip, so there is no token state to duplicate).
    fn p11fwd_sig_dupctx(ctx: *mut c_void) -> *mut c_void {
        // SAFETY: our sigctx.
        Ok(unsafe { SigCtx::borrow(ctx) }?.clone().into_raw())
    }
}

/// The key passed to an init call (NULL: keep the current one).
///
/// # Safety
///
/// `provkey` is NULL or our keydata.
unsafe fn init_key(provkey: *mut c_void) -> Result<Option<std::sync::Arc<Key>>, Error> {
    if provkey.is_null() {
        return Ok(None);
    }
    // SAFETY: per the contract, our keydata.
    Ok(Some(unsafe { Key::clone_arc(provkey) }?))
}

entry! {
    /// `OSSL_FUNC_signature_sign_init`
    fn p11fwd_sig_sign_init(ctx: *mut c_void, provkey: *mut c_void, params: *const OSSL_PARAM) -> c_int {
        // SAFETY: our sigctx, not used concurrently.
        let ctx = unsafe { SigCtx::borrow_mut(ctx) }?;
        // SAFETY: the core passes our keydata (or NULL).
        let key = unsafe { init_key(provkey) }?;
        ctx.init(key, None)?;
        // SAFETY: the caller's END-terminated array, valid for this call.
        set_params(ctx, unsafe { Params::from_ptr(params) })?;
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_signature_sign` (`sig` NULL: the size).
    fn p11fwd_sig_sign(
        ctx: *mut c_void,
        sig: *mut c_uchar,
        siglen: *mut usize,
        sigsize: usize,
        tbs: *const c_uchar,
        tbslen: usize,
    ) -> c_int {
        // SAFETY: our sigctx, not used concurrently.
        let ctx = unsafe { SigCtx::borrow_mut(ctx) }?;
        if sig.is_null() {
            // SAFETY: the caller's out-parameter.
            unsafe { write_out(siglen, ctx.max_size()?, "siglen") }?;
            return Ok(1);
        }
        // SAFETY: `tbslen` readable bytes, valid for the call.
        let tbs = unsafe { bytes(tbs, tbslen, "tbs") }?;
        let signature = ctx.sign(tbs)?;
        // SAFETY: `sig` has `sigsize` writable bytes.
        unsafe { output(sig, siglen, sigsize, &signature) }
    }
}

/// Copies a signature out.
///
/// # Safety
///
/// `sig` has `sigsize` writable bytes; `siglen` is writable.
unsafe fn output(
    sig: *mut c_uchar,
    siglen: *mut usize,
    sigsize: usize,
    signature: &[u8],
) -> Result<c_int, Error> {
    if signature.len() > sigsize {
        return Err(Error::Param {
            key: "sig".into(),
            problem: "buffer too small for the signature",
        });
    }
    // SAFETY: `sig` has room (checked) and does not overlap our Vec.
    unsafe { core::ptr::copy_nonoverlapping(signature.as_ptr(), sig, signature.len()) };
    // SAFETY: the caller's out-parameter.
    unsafe { write_out(siglen, signature.len(), "siglen") }?;
    Ok(1)
}

entry! {
    /// `OSSL_FUNC_signature_digest_sign_init`
    fn p11fwd_sig_digest_sign_init(
        ctx: *mut c_void,
        mdname: *const c_char,
        provkey: *mut c_void,
        params: *const OSSL_PARAM,
    ) -> c_int {
        // SAFETY: our sigctx, not used concurrently.
        let ctx = unsafe { SigCtx::borrow_mut(ctx) }?;
        // SAFETY: the core passes our keydata (or NULL).
        let key = unsafe { init_key(provkey) }?;
        let md = if mdname.is_null() {
            ""
        } else {
            // SAFETY: a NUL-terminated name valid for the call.
            unsafe { c_str(mdname, "mdname") }?.to_str().unwrap_or("")
        };
        ctx.init(key, Some(md))?;
        // SAFETY: the caller's END-terminated array, valid for this call.
        set_params(ctx, unsafe { Params::from_ptr(params) })?;
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_signature_digest_sign_update`
    fn p11fwd_sig_digest_sign_update(ctx: *mut c_void, data: *const c_uchar, datalen: usize) -> c_int {
        // SAFETY: our sigctx, not used concurrently.
        let ctx = unsafe { SigCtx::borrow_mut(ctx) }?;
        // SAFETY: `datalen` readable bytes.
        ctx.update(unsafe { bytes(data, datalen, "data") }?)?;
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_signature_digest_sign_final` (`sig` NULL: the size).
    fn p11fwd_sig_digest_sign_final(
        ctx: *mut c_void,
        sig: *mut c_uchar,
        siglen: *mut usize,
        sigsize: usize,
    ) -> c_int {
        // SAFETY: our sigctx, not used concurrently.
        let ctx = unsafe { SigCtx::borrow_mut(ctx) }?;
        if sig.is_null() {
            // SAFETY: the caller's out-parameter.
            unsafe { write_out(siglen, ctx.max_size()?, "siglen") }?;
            return Ok(1);
        }
        let signature = ctx.sign_final()?;
        // SAFETY: `sig` has `sigsize` writable bytes.
        unsafe { output(sig, siglen, sigsize, &signature) }
    }
}

entry! {
    /// `OSSL_FUNC_signature_digest_sign` (one shot; `sig` NULL: the size).
    fn p11fwd_sig_digest_sign(
        ctx: *mut c_void,
        sig: *mut c_uchar,
        siglen: *mut usize,
        sigsize: usize,
        tbs: *const c_uchar,
        tbslen: usize,
    ) -> c_int {
        // SAFETY: our sigctx, not used concurrently.
        let ctx = unsafe { SigCtx::borrow_mut(ctx) }?;
        if sig.is_null() {
            // SAFETY: the caller's out-parameter.
            unsafe { write_out(siglen, ctx.max_size()?, "siglen") }?;
            return Ok(1);
        }
        // SAFETY: `tbslen` readable bytes.
        let tbs = unsafe { bytes(tbs, tbslen, "tbs") }?;
        let signature = ctx.digest_sign(tbs)?;
        // SAFETY: `sig` has `sigsize` writable bytes.
        unsafe { output(sig, siglen, sigsize, &signature) }
    }
}

entry! {
    /// `OSSL_FUNC_signature_verify_init`: verification is done in software with the key's
    /// public part (`ffi::soft`).
    fn p11fwd_sig_verify_init(ctx: *mut c_void, provkey: *mut c_void, params: *const OSSL_PARAM) -> c_int {
        // SAFETY: our sigctx, not used concurrently.
        let ctx = unsafe { SigCtx::borrow_mut(ctx) }?;
        // SAFETY: the core passes our keydata (or NULL).
        let key = unsafe { init_key(provkey) }?;
        ctx.init_verify(key, None)?;
        // SAFETY: the caller's END-terminated array, valid for this call.
        set_params(ctx, unsafe { Params::from_ptr(params) })?;
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_signature_verify`: 1 valid, 0 not.
    fn p11fwd_sig_verify(
        ctx: *mut c_void,
        sig: *const c_uchar,
        siglen: usize,
        tbs: *const c_uchar,
        tbslen: usize,
    ) -> c_int {
        // SAFETY: our sigctx, not used concurrently.
        let ctx = unsafe { SigCtx::borrow_mut(ctx) }?;
        // SAFETY: `siglen` readable bytes.
        let sig = unsafe { bytes(sig, siglen, "sig") }?;
        // SAFETY: `tbslen` readable bytes.
        let tbs = unsafe { bytes(tbs, tbslen, "tbs") }?;
        Ok(c_int::from(ctx.verify(sig, tbs)?))
    }
}

entry! {
    /// `OSSL_FUNC_signature_digest_verify_init`
    fn p11fwd_sig_digest_verify_init(
        ctx: *mut c_void,
        mdname: *const c_char,
        provkey: *mut c_void,
        params: *const OSSL_PARAM,
    ) -> c_int {
        // SAFETY: our sigctx, not used concurrently.
        let ctx = unsafe { SigCtx::borrow_mut(ctx) }?;
        // SAFETY: the core passes our keydata (or NULL).
        let key = unsafe { init_key(provkey) }?;
        let md = if mdname.is_null() {
            ""
        } else {
            // SAFETY: a NUL-terminated name valid for the call.
            unsafe { c_str(mdname, "mdname") }?.to_str().unwrap_or("")
        };
        ctx.init_verify(key, Some(md))?;
        // SAFETY: the caller's END-terminated array, valid for this call.
        set_params(ctx, unsafe { Params::from_ptr(params) })?;
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_signature_digest_verify_final`: 1 valid, 0 not.
    fn p11fwd_sig_digest_verify_final(ctx: *mut c_void, sig: *const c_uchar, siglen: usize) -> c_int {
        // SAFETY: our sigctx, not used concurrently.
        let ctx = unsafe { SigCtx::borrow_mut(ctx) }?;
        // SAFETY: `siglen` readable bytes.
        let sig = unsafe { bytes(sig, siglen, "sig") }?;
        Ok(c_int::from(ctx.verify_final(sig)?))
    }
}

entry! {
    /// `OSSL_FUNC_signature_digest_verify` (one shot): 1 valid, 0 not.
    fn p11fwd_sig_digest_verify(
        ctx: *mut c_void,
        sig: *const c_uchar,
        siglen: usize,
        tbs: *const c_uchar,
        tbslen: usize,
    ) -> c_int {
        // SAFETY: our sigctx, not used concurrently.
        let ctx = unsafe { SigCtx::borrow_mut(ctx) }?;
        // SAFETY: `siglen` readable bytes.
        let sig = unsafe { bytes(sig, siglen, "sig") }?;
        // SAFETY: `tbslen` readable bytes.
        let tbs = unsafe { bytes(tbs, tbslen, "tbs") }?;
        Ok(c_int::from(ctx.digest_verify(sig, tbs)?))
    }
}

entry! {
    /// `OSSL_FUNC_signature_gettable_ctx_params`
    fn p11fwd_sig_gettable_ctx_params(_ctx: *mut c_void, _provctx: *mut c_void) -> *const OSSL_PARAM {
        Ok(GETTABLE.as_ptr())
    }
}

entry! {
    /// `OSSL_FUNC_signature_settable_ctx_params`
    fn p11fwd_sig_settable_ctx_params(_ctx: *mut c_void, _provctx: *mut c_void) -> *const OSSL_PARAM {
        Ok(SETTABLE.as_ptr())
    }
}

entry! {
    /// `OSSL_FUNC_signature_get_ctx_params`
    fn p11fwd_sig_get_ctx_params(ctx: *mut c_void, params: *mut OSSL_PARAM) -> c_int {
        // SAFETY: our sigctx.
        let ctx = unsafe { SigCtx::borrow(ctx) }?;
        // SAFETY: the caller's END-terminated request array.
        let mut params = unsafe { ParamsMut::from_ptr(params) };
        for mut p in params.iter_mut() {
            let k = p.key();
            if k == sys::OSSL_SIGNATURE_PARAM_ALGORITHM_ID {
                p.set_octets(&ctx.algorithm_id()?)?;
            } else if k == sys::OSSL_SIGNATURE_PARAM_DIGEST {
                if let Some(md) = ctx.md {
                    p.set_utf8(md.name())?;
                }
            } else if k == sys::OSSL_SIGNATURE_PARAM_PAD_MODE && ctx.algorithm == Algorithm::Rsa {
                if p.as_param().data_type() == Some(ParamType::Integer) {
                    p.set_int(ctx.padding.as_int())?;
                } else {
                    p.set_static_utf8(ctx.padding.name())?;
                }
            } else if k == sys::OSSL_SIGNATURE_PARAM_PSS_SALTLEN && ctx.algorithm == Algorithm::Rsa {
                if p.as_param().data_type() == Some(ParamType::Integer) {
                    p.set_int(ctx.saltlen.as_int())?;
                } else {
                    p.set_utf8(&ctx.saltlen.name())?;
                }
            } else if k == sys::OSSL_SIGNATURE_PARAM_MGF1_DIGEST
                && ctx.algorithm == Algorithm::Rsa
                && let Some(md) = ctx.mgf1.or(ctx.md)
            {
                p.set_utf8(md.name())?;
            }
        }
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_signature_set_ctx_params`
    fn p11fwd_sig_set_ctx_params(ctx: *mut c_void, params: *const OSSL_PARAM) -> c_int {
        // SAFETY: our sigctx, not used concurrently.
        let ctx = unsafe { SigCtx::borrow_mut(ctx) }?;
        // SAFETY: the caller's END-terminated array.
        set_params(ctx, unsafe { Params::from_ptr(params) })?;
        Ok(1)
    }
}

fn set_params(ctx: &mut SigCtx, params: Params<'_>) -> Result<(), Error> {
    for p in params.iter() {
        let k = p.key();
        if k == sys::OSSL_SIGNATURE_PARAM_DIGEST {
            ctx.set_digest(p.utf8()?)?;
        } else if k == sys::OSSL_SIGNATURE_PARAM_PAD_MODE {
            let pad = if p.data_type() == Some(ParamType::Integer) {
                Padding::from_int(p.int()?)
            } else {
                Padding::from_name(p.utf8()?)
            };
            ctx.padding = pad.ok_or(Error::Unsupported("this RSA padding mode"))?;
        } else if k == sys::OSSL_SIGNATURE_PARAM_PSS_SALTLEN {
            let salt = if p.data_type() == Some(ParamType::Integer) {
                SaltLen::from_int(p.int()?)
            } else {
                SaltLen::from_name(p.utf8()?)
            };
            ctx.saltlen = salt.ok_or(Error::Unsupported("this PSS salt length"))?;
        } else if k == sys::OSSL_SIGNATURE_PARAM_MGF1_DIGEST {
            ctx.mgf1 = Some(
                crate::hash::Hash::from_name(p.utf8()?)
                    .ok_or(Error::Unsupported("this MGF1 digest"))?,
            );
        } else if k == ECDSA_RAW {
            ctx.ecdsa_raw = p.int()? != 0;
        }
    }
    Ok(())
}
