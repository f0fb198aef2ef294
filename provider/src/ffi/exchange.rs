//! C shims of the key exchanges ECDH, X25519 and X448 (logic in `crate::exchange`).

use core::ffi::{c_int, c_uchar, c_void};

use crate::error::Error;
use crate::exchange::ExchCtx;
use crate::ffi::boundary::entry;
use crate::ffi::cast::{ArcCastable, BoxCastable, Castable, write_out};
use crate::ffi::dispatch::{DispatchTable, dispatch_table};
use crate::ffi::params::{ParamTable, Params, ParamsMut, param_table};
use crate::key::Key;
use crate::provider::ProvCtx;
use crate::sys::{self, OSSL_PARAM};

pub(crate) static FUNCTIONS: DispatchTable = dispatch_table![
    keyexch_newctx => p11fwd_exch_newctx,
    keyexch_init => p11fwd_exch_init,
    keyexch_set_peer => p11fwd_exch_set_peer,
    keyexch_derive => p11fwd_exch_derive,
    keyexch_freectx => p11fwd_exch_freectx,
    keyexch_dupctx => p11fwd_exch_dupctx,
    keyexch_set_ctx_params => p11fwd_exch_set_ctx_params,
    keyexch_settable_ctx_params => p11fwd_exch_settable_ctx_params,
    keyexch_get_ctx_params => p11fwd_exch_get_ctx_params,
    keyexch_gettable_ctx_params => p11fwd_exch_gettable_ctx_params,
];

static SETTABLE: ParamTable = param_table![
    (sys::OSSL_EXCHANGE_PARAM_PAD, UnsignedInteger),
    (sys::OSSL_EXCHANGE_PARAM_EC_ECDH_COFACTOR_MODE, Integer),
    (sys::OSSL_EXCHANGE_PARAM_KDF_TYPE, Utf8String),
];

static GETTABLE: ParamTable = param_table![
    (sys::OSSL_EXCHANGE_PARAM_EC_ECDH_COFACTOR_MODE, Integer),
    (sys::OSSL_EXCHANGE_PARAM_KDF_TYPE, Utf8String),
];

entry! {
    /// `OSSL_FUNC_keyexch_newctx`
    fn p11fwd_exch_newctx(provctx: *mut c_void) -> *mut c_void {
        // SAFETY: the core passes our provctx, live until teardown.
        let provctx = unsafe { ProvCtx::clone_arc(provctx) }?;
        Ok(ExchCtx::new(provctx).into_raw())
    }
}

entry! {
    /// `OSSL_FUNC_keyexch_freectx`
    fn p11fwd_exch_freectx(ctx: *mut c_void) {
        // SAFETY: the core hands the ctx back once.
        drop(unsafe { ExchCtx::from_raw(ctx) });
        Ok(())
    }
}

entry! {
    /// `OSSL_FUNC_keyexch_dupctx`
    fn p11fwd_exch_dupctx(ctx: *mut c_void) -> *mut c_void {
        // SAFETY: our ctx.
        Ok(unsafe { ExchCtx::borrow(ctx) }?.clone().into_raw())
    }
}

entry! {
    /// `OSSL_FUNC_keyexch_init`
    fn p11fwd_exch_init(ctx: *mut c_void, provkey: *mut c_void, params: *const OSSL_PARAM) -> c_int {
        // SAFETY: our ctx, not used concurrently.
        let ctx = unsafe { ExchCtx::borrow_mut(ctx) }?;
        // SAFETY: the core passes our keydata.
        let key = unsafe { Key::clone_arc(provkey) }?;
        ctx.init(key)?;
        // SAFETY: the caller's END-terminated array, valid for this call.
        set_params(unsafe { Params::from_ptr(params) })?;
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_keyexch_set_peer`
    fn p11fwd_exch_set_peer(ctx: *mut c_void, provkey: *mut c_void) -> c_int {
        // SAFETY: our ctx, not used concurrently.
        let ctx = unsafe { ExchCtx::borrow_mut(ctx) }?;
        // SAFETY: the core passes our keydata (the peer, imported into our keymgmt).
        let peer = unsafe { Key::clone_arc(provkey) }?;
        ctx.set_peer(peer)?;
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_keyexch_derive` (`secret` NULL: the size).
    fn p11fwd_exch_derive(
        ctx: *mut c_void,
        secret: *mut c_uchar,
        secretlen: *mut usize,
        outlen: usize,
    ) -> c_int {
        // SAFETY: our ctx, not used concurrently.
        let ctx = unsafe { ExchCtx::borrow_mut(ctx) }?;
        if secret.is_null() {
            // SAFETY: the caller's out-parameter.
            unsafe { write_out(secretlen, ctx.secret_len()?, "secretlen") }?;
            return Ok(1);
        }
        let value = ctx.derive()?;
        if value.len() > outlen {
            return Err(Error::Param { key: "secret".into(), problem: "buffer too small" });
        }
        // SAFETY: `secret` has `outlen` writable bytes (checked above).
        unsafe { core::ptr::copy_nonoverlapping(value.as_ptr(), secret, value.len()) };
        // SAFETY: the caller's out-parameter.
        unsafe { write_out(secretlen, value.len(), "secretlen") }?;
        Ok(1)
    }
}

fn set_params(params: Params<'_>) -> Result<(), Error> {
    for p in params.iter() {
        let k = p.key();
        if k == sys::OSSL_EXCHANGE_PARAM_KDF_TYPE && !p.utf8()?.is_empty() {
            return Err(Error::Unsupported(
                "a KDF in the key exchange (p11fwd returns the raw secret)",
            ));
        }
        // `pad` (DH) and the cofactor mode (1 for the NIST curves) change nothing here.
    }
    Ok(())
}

entry! {
    /// `OSSL_FUNC_keyexch_set_ctx_params`
    fn p11fwd_exch_set_ctx_params(_ctx: *mut c_void, params: *const OSSL_PARAM) -> c_int {
        // SAFETY: the caller's END-terminated array.
        set_params(unsafe { Params::from_ptr(params) })?;
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_keyexch_settable_ctx_params`
    fn p11fwd_exch_settable_ctx_params(_ctx: *mut c_void, _provctx: *mut c_void) -> *const OSSL_PARAM {
        Ok(SETTABLE.as_ptr())
    }
}

entry! {
    /// `OSSL_FUNC_keyexch_get_ctx_params`
    fn p11fwd_exch_get_ctx_params(_ctx: *mut c_void, params: *mut OSSL_PARAM) -> c_int {
        // SAFETY: the caller's END-terminated request array.
        let mut params = unsafe { ParamsMut::from_ptr(params) };
        for mut p in params.iter_mut() {
            let k = p.key();
            if k == sys::OSSL_EXCHANGE_PARAM_EC_ECDH_COFACTOR_MODE {
                p.set_int(0)?;
            } else if k == sys::OSSL_EXCHANGE_PARAM_KDF_TYPE {
                p.set_static_utf8(c"")?;
            }
        }
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_keyexch_gettable_ctx_params`
    fn p11fwd_exch_gettable_ctx_params(_ctx: *mut c_void, _provctx: *mut c_void) -> *const OSSL_PARAM {
        Ok(GETTABLE.as_ptr())
    }
}
