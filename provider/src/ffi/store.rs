//! C shims of the `pkcs11` STORE (logic in `crate::store`).

use core::ffi::{c_char, c_int, c_void};

use zeroize::Zeroizing;

use crate::backend::PinFrom;
use crate::error::Error;
use crate::ffi::boundary::entry;
use crate::ffi::cast::{ArcCastable, BoxCastable, Castable, bytes, c_str};
use crate::ffi::dispatch::{DispatchTable, dispatch_table};
use crate::ffi::keymgmt::export_public;
use crate::ffi::params::{ParamBuilder, ParamTable, Params, param_table};
use crate::key::registry;
use crate::provider::ProvCtx;
use crate::store::{Expect, Found, PinPrompt, StoreCtx};
use crate::sys::{
    self, OSSL_CALLBACK, OSSL_PARAM, OSSL_PASSPHRASE_CALLBACK, OSSL_PASSPHRASE_PARAM_INFO,
};

pub(crate) static STORE_FUNCTIONS: DispatchTable = dispatch_table![
    store_open => p11fwd_store_open,
    store_settable_ctx_params => p11fwd_store_settable_ctx_params,
    store_set_ctx_params => p11fwd_store_set_ctx_params,
    store_load => p11fwd_store_load,
    store_eof => p11fwd_store_eof,
    store_close => p11fwd_store_close,
    store_export_object => p11fwd_store_export_object,
];

static SETTABLE: ParamTable = param_table![
    (sys::OSSL_STORE_PARAM_EXPECT, Integer),
    (sys::OSSL_STORE_PARAM_SUBJECT, OctetString),
    (sys::OSSL_STORE_PARAM_ALIAS, Utf8String),
];

// store.h's OSSL_STORE_INFO_* (not in the core headers).
const INFO_PUBKEY: c_int = 3;
const INFO_PKEY: c_int = 4;
const INFO_CERT: c_int = 5;

entry! {
    /// `OSSL_FUNC_store_open`
    fn p11fwd_store_open(provctx: *mut c_void, uri: *const c_char) -> *mut c_void {
        // SAFETY: the core passes our provctx, live until teardown.
        let provctx = unsafe { ProvCtx::clone_arc(provctx) }?;
        // SAFETY: a NUL-terminated URI, valid for this call.
        let uri = unsafe { c_str(uri, "uri") }?;
        let uri = uri.to_str().map_err(|_| Error::UriParse {
            uri: String::new(),
            problem: "not UTF-8".into(),
        })?;
        Ok(StoreCtx::open(provctx, uri)?.into_raw())
    }
}

entry! {
    /// `OSSL_FUNC_store_settable_ctx_params`
    fn p11fwd_store_settable_ctx_params(_provctx: *mut c_void) -> *const OSSL_PARAM {
        Ok(SETTABLE.as_ptr())
    }
}

entry! {
    /// `OSSL_FUNC_store_set_ctx_params`: expect, subject, alias.
    fn p11fwd_store_set_ctx_params(ctx: *mut c_void, params: *const OSSL_PARAM) -> c_int {
        // SAFETY: our loader ctx, not used concurrently.
        let ctx = unsafe { StoreCtx::borrow_mut(ctx) }?;
        // SAFETY: the caller's END-terminated array, valid for this call.
        let params = unsafe { Params::from_ptr(params) };
        if let Some(p) = params.locate(sys::OSSL_STORE_PARAM_EXPECT) {
            ctx.set_expect(match p.int()? {
                INFO_PKEY => Expect::PrivateKey,
                INFO_PUBKEY => Expect::PublicKey,
                INFO_CERT => Expect::Certificate,
                0 => return Ok(1),
                _ => Expect::Other,
            });
        }
        if let Some(p) = params.locate(sys::OSSL_STORE_PARAM_SUBJECT) {
            ctx.set_subject(p.octets()?);
        }
        if let Some(p) = params.locate(sys::OSSL_STORE_PARAM_ALIAS) {
            ctx.set_alias(p.utf8()?);
        }
        Ok(1)
    }
}

/// The application's passphrase callback, then OpenSSL's UI.
pub(crate) struct CallbackPrompt {
    pub(crate) cb: OSSL_PASSPHRASE_CALLBACK,
    pub(crate) arg: *mut c_void,
}

impl PinPrompt for CallbackPrompt {
    fn ask(&mut self, token: &str, final_try: bool) -> Option<(Zeroizing<String>, PinFrom)> {
        if let Some(cb) = self.cb.filter(|_| !final_try) {
            let info = std::ffi::CString::new(format!("PKCS#11 token {token}")).ok()?;
            let params = ParamBuilder::new()
                .utf8(OSSL_PASSPHRASE_PARAM_INFO, &info)
                .build();
            let mut buf = Zeroizing::new(vec![0u8; 1024]);
            let mut len = 0usize;
            // SAFETY: the core's callback with its own argument; `buf` has the size we pass;
            // `len` is a local; `params` is END-terminated and outlives the call.
            let ok = unsafe {
                cb(
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut len,
                    params.as_ptr(),
                    self.arg,
                )
            };
            if ok == 1
                && len > 0
                && len <= buf.len()
                && let Ok(pin) = core::str::from_utf8(&buf[..len])
            {
                return Some((Zeroizing::new(pin.to_owned()), PinFrom::Given));
            }
            tracing::debug!("the application's passphrase callback gave no PIN");
        }
        crate::ffi::ui::TerminalPrompt.ask(token, final_try)
    }
}

entry! {
    /// `OSSL_FUNC_store_load`: one object per call, through `object_cb`.
    fn p11fwd_store_load(
        ctx: *mut c_void,
        object_cb: OSSL_CALLBACK,
        object_cbarg: *mut c_void,
        pw_cb: OSSL_PASSPHRASE_CALLBACK,
        pw_cbarg: *mut c_void,
    ) -> c_int {
        // SAFETY: our loader ctx, not used concurrently.
        let ctx = unsafe { StoreCtx::borrow_mut(ctx) }?;
        let mut prompt = CallbackPrompt { cb: pw_cb, arg: pw_cbarg };
        let Some(found) = ctx.next(&mut prompt)? else {
            return Ok(1);
        };
        let cb = object_cb.ok_or(Error::NullPointer("object_cb"))?;
        let rc = match &found {
            Found::Key { reference, data_type, description, .. } => {
                let params = ParamBuilder::new()
                    .int(sys::OSSL_OBJECT_PARAM_TYPE, sys::OSSL_OBJECT_PKEY as c_int)
                    .utf8(sys::OSSL_OBJECT_PARAM_DATA_TYPE, data_type)
                    .octets(sys::OSSL_OBJECT_PARAM_REFERENCE, reference)
                    .utf8(sys::OSSL_OBJECT_PARAM_DESC, description)
                    .build();
                // SAFETY: the core's callback, with its own arg and an END-terminated array
                // that outlives the call.
                unsafe { cb(params.as_ptr(), object_cbarg) }
            }
            Found::Certificate { der, description } => {
                let params = ParamBuilder::new()
                    .int(sys::OSSL_OBJECT_PARAM_TYPE, sys::OSSL_OBJECT_CERT as c_int)
                    .octets(sys::OSSL_OBJECT_PARAM_DATA, der)
                    .utf8(sys::OSSL_OBJECT_PARAM_DATA_STRUCTURE, c"Certificate")
                    .utf8(sys::OSSL_OBJECT_PARAM_DESC, description)
                    .build();
                // SAFETY: as above.
                unsafe { cb(params.as_ptr(), object_cbarg) }
            }
        };
        Ok(rc)
    }
}

entry! {
    /// `OSSL_FUNC_store_eof`
    fn p11fwd_store_eof(ctx: *mut c_void) -> c_int {
        // SAFETY: our loader ctx.
        Ok(c_int::from(unsafe { StoreCtx::borrow(ctx) }?.eof()))
    }
}

entry! {
    /// `OSSL_FUNC_store_close`
    fn p11fwd_store_close(ctx: *mut c_void) -> c_int {
        // SAFETY: the core hands the ctx back once and does not use it again.
        drop(unsafe { StoreCtx::from_raw(ctx) });
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_store_export_object`: the public parts of a public key, for a keymgmt of
    /// another provider. Refused for private keys, so that OpenSSL binds those to our own
    /// keymgmt (a default-provider copy could not sign).
    fn p11fwd_store_export_object(
        _ctx: *mut c_void,
        reference: *const c_void,
        reference_sz: usize,
        export_cb: OSSL_CALLBACK,
        export_cbarg: *mut c_void,
    ) -> c_int {
        // SAFETY: the reference bytes we handed out, valid for this call.
        let reference = unsafe { bytes(reference.cast(), reference_sz, "reference") }?;
        let key = registry::lookup(reference).ok_or(Error::NullPointer("key reference"))?;
        if key.has_private() {
            return Ok(0);
        }
        export_public(&key, sys::OSSL_KEYMGMT_SELECT_ALL as c_int, export_cb, export_cbarg)
    }
}
