//! Public-key encoders for token keys: SubjectPublicKeyInfo DER and PEM, and text (logic in
//! `crate::encoder`). They accept only our own keys (`obj_raw`); `import_object` refuses
//! others, so OpenSSL uses another provider's encoders for those.

use core::ffi::{c_int, c_void};
use std::sync::Arc;

use crate::encoder::{Output, encode};
use crate::error::Error;
use crate::ffi::boundary::entry;
use crate::ffi::cast::OwnershipBox;
use crate::ffi::cast::{ArcCastable, BoxCastable, Castable};
use crate::ffi::dispatch::{DispatchTable, dispatch_table};
use crate::key::Key;
use crate::provider::ProvCtx;
use crate::sys::{self, OSSL_CALLBACK, OSSL_CORE_BIO, OSSL_PARAM, OSSL_PASSPHRASE_CALLBACK};

/// An encoder context: the provctx (for the BIO upcall) and what to write.
#[derive(Debug)]
pub(crate) struct EncoderCtx {
    provctx: Arc<ProvCtx>,
    output: Output,
}

impl Castable for EncoderCtx {
    type Ownership = OwnershipBox;
    const WHAT: &'static str = "encoder ctx";
}

macro_rules! encoder_table {
    ($name:ident, $newctx:ident, $does:ident) => {
        pub(crate) static $name: DispatchTable = dispatch_table![
            encoder_newctx => $newctx,
            encoder_freectx => p11fwd_encoder_freectx,
            encoder_does_selection => $does,
            encoder_encode => p11fwd_encoder_encode,
            encoder_import_object => p11fwd_encoder_import_object,
            encoder_free_object => p11fwd_encoder_free_object,
        ];
    };
}

encoder_table!(SPKI_DER_FUNCTIONS, newctx_der, does_public);
encoder_table!(SPKI_PEM_FUNCTIONS, newctx_pem, does_public);
encoder_table!(TEXT_FUNCTIONS, newctx_text, does_any);
encoder_table!(URI_PEM_FUNCTIONS, newctx_uri_pem, does_private);
encoder_table!(URI_DER_FUNCTIONS, newctx_uri_der, does_private);

macro_rules! newctx {
    ($name:ident, $output:expr) => {
        entry! {
            /// `OSSL_FUNC_encoder_newctx`
            fn $name(provctx: *mut c_void) -> *mut c_void {
                // SAFETY: our provctx, live until teardown.
                let provctx = unsafe { ProvCtx::clone_arc(provctx) }?;
                Ok(EncoderCtx { provctx, output: $output }.into_raw())
            }
        }
    };
}

newctx!(newctx_der, Output::SpkiDer);
newctx!(newctx_pem, Output::SpkiPem);
newctx!(newctx_text, Output::Text);
newctx!(newctx_uri_pem, Output::UriPem);
newctx!(newctx_uri_der, Output::UriDer);

entry! {
    /// `OSSL_FUNC_encoder_does_selection` for PrivateKeyInfo (the URI-PEM file).
    fn does_private(_provctx: *mut c_void, selection: c_int) -> c_int {
        Ok(c_int::from(selection & sys::OSSL_KEYMGMT_SELECT_PRIVATE_KEY as c_int != 0))
    }
}

entry! {
    /// `OSSL_FUNC_encoder_does_selection` for SubjectPublicKeyInfo.
    fn does_public(_provctx: *mut c_void, selection: c_int) -> c_int {
        Ok(c_int::from(selection & sys::OSSL_KEYMGMT_SELECT_PUBLIC_KEY as c_int != 0))
    }
}

entry! {
    /// `OSSL_FUNC_encoder_does_selection` for text: any key part.
    fn does_any(_provctx: *mut c_void, selection: c_int) -> c_int {
        let keys = (sys::OSSL_KEYMGMT_SELECT_KEYPAIR | sys::OSSL_KEYMGMT_SELECT_ALL_PARAMETERS) as c_int;
        Ok(c_int::from(selection == 0 || selection & keys != 0))
    }
}

entry! {
    /// `OSSL_FUNC_encoder_freectx`
    fn p11fwd_encoder_freectx(ctx: *mut c_void) {
        // SAFETY: the core hands the ctx back once.
        drop(unsafe { EncoderCtx::from_raw(ctx) });
        Ok(())
    }
}

entry! {
    /// `OSSL_FUNC_encoder_import_object`: keys of other providers are not ours to encode.
    fn p11fwd_encoder_import_object(_ctx: *mut c_void, _selection: c_int, _params: *const OSSL_PARAM) -> *mut c_void {
        Ok(core::ptr::null_mut())
    }
}

entry! {
    /// `OSSL_FUNC_encoder_free_object`
    fn p11fwd_encoder_free_object(_obj: *mut c_void) {
        Ok(())
    }
}

entry! {
    /// `OSSL_FUNC_encoder_encode`
    fn p11fwd_encoder_encode(
        ctx: *mut c_void,
        out: *mut OSSL_CORE_BIO,
        obj_raw: *const c_void,
        _obj_abstract: *const OSSL_PARAM,
        selection: c_int,
        _cb: OSSL_PASSPHRASE_CALLBACK,
        _cbarg: *mut c_void,
    ) -> c_int {
        // SAFETY: our encoder ctx.
        let ctx = unsafe { EncoderCtx::borrow(ctx) }?;
        let public_output = matches!(ctx.output, Output::SpkiDer | Output::SpkiPem);
        if public_output && selection & sys::OSSL_KEYMGMT_SELECT_PUBLIC_KEY as c_int == 0 {
            return Err(Error::Unsupported("encoding private key material"));
        }
        // SAFETY: the core passes the keydata of a key of our keymgmt (or NULL).
        let key = unsafe { Key::borrow(obj_raw.cast_mut()) }?;
        let bytes = encode(key, ctx.output)?;
        // SAFETY: `out` is the core's BIO for this call.
        unsafe { ctx.provctx.core().bio_write(out, &bytes) }?;
        Ok(1)
    }
}

// Unused-import guard for the callback type in the signature above.
const _: Option<OSSL_CALLBACK> = None;
