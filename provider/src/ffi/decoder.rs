//! C shims of the URI-PEM decoders (logic in `crate::decoder`).

use core::ffi::{c_int, c_void};

use crate::decoder::{DecoderCtx, PemOutcome, key_for_der, read_pem};
use crate::error::Error;
use crate::ffi::boundary::entry;
use crate::ffi::cast::{ArcCastable, BoxCastable, Castable};
use crate::ffi::dispatch::{DispatchTable, dispatch_table};
use crate::ffi::params::ParamBuilder;
use crate::ffi::store::CallbackPrompt;
use crate::key::registry;
use crate::provider::ProvCtx;
use crate::sys::{self, OSSL_CALLBACK, OSSL_CORE_BIO, OSSL_PASSPHRASE_CALLBACK};

/// Keep going: let other decoders try (OpenSSL's "carry on decoding").
const CARRY_ON: c_int = 1;

/// The largest URI-PEM DER body read (a URI is a few hundred bytes).
const MAX_DER: usize = 64 * 1024;

pub(crate) static PEM_FUNCTIONS: DispatchTable = dispatch_table![
    decoder_newctx => p11fwd_decoder_newctx,
    decoder_freectx => p11fwd_decoder_freectx,
    decoder_decode => p11fwd_decoder_pem_decode,
];

macro_rules! key_decoder {
    ($table:ident, $decode:ident, $name:expr) => {
        pub(crate) static $table: DispatchTable = dispatch_table![
            decoder_newctx => p11fwd_decoder_newctx,
            decoder_freectx => p11fwd_decoder_freectx,
            decoder_decode => $decode,
        ];

        entry! {
            /// `OSSL_FUNC_decoder_decode`: a URI-PEM DER body to a key of this type.
            fn $decode(
                ctx: *mut c_void,
                cin: *mut OSSL_CORE_BIO,
                _selection: c_int,
                object_cb: OSSL_CALLBACK,
                object_cbarg: *mut c_void,
                pw_cb: OSSL_PASSPHRASE_CALLBACK,
                pw_cbarg: *mut c_void,
            ) -> c_int {
                // SAFETY: the core's arguments for this call.
                unsafe { decode_key(ctx, cin, $name, object_cb, object_cbarg, pw_cb, pw_cbarg) }
            }
        }
    };
}

key_decoder!(RSA_FUNCTIONS, decode_rsa, c"RSA");
key_decoder!(RSA_PSS_FUNCTIONS, decode_rsa_pss, c"RSA-PSS");
key_decoder!(EC_FUNCTIONS, decode_ec, c"EC");
key_decoder!(ED25519_FUNCTIONS, decode_ed25519, c"ED25519");
key_decoder!(ED448_FUNCTIONS, decode_ed448, c"ED448");
key_decoder!(X25519_FUNCTIONS, decode_x25519, c"X25519");
key_decoder!(X448_FUNCTIONS, decode_x448, c"X448");

entry! {
    /// `OSSL_FUNC_decoder_newctx`
    fn p11fwd_decoder_newctx(provctx: *mut c_void) -> *mut c_void {
        // SAFETY: the core passes our provctx, live until teardown.
        let provctx = unsafe { ProvCtx::clone_arc(provctx) }?;
        Ok(DecoderCtx { provctx }.into_raw())
    }
}

entry! {
    /// `OSSL_FUNC_decoder_freectx`
    fn p11fwd_decoder_freectx(ctx: *mut c_void) {
        // SAFETY: the core hands the ctx back once.
        drop(unsafe { DecoderCtx::from_raw(ctx) });
        Ok(())
    }
}

entry! {
    /// `OSSL_FUNC_decoder_decode` of the PEM step: a `PKCS#11 PROVIDER URI` block becomes its
    /// DER body (structure `pk11-uri`); anything else is left to other decoders.
    fn p11fwd_decoder_pem_decode(
        ctx: *mut c_void,
        cin: *mut OSSL_CORE_BIO,
        _selection: c_int,
        object_cb: OSSL_CALLBACK,
        object_cbarg: *mut c_void,
        _pw_cb: OSSL_PASSPHRASE_CALLBACK,
        _pw_cbarg: *mut c_void,
    ) -> c_int {
        // SAFETY: our decoder ctx.
        let ctx = unsafe { DecoderCtx::borrow(ctx) }?;
        let core = ctx.provctx.core();
        // SAFETY: `cin` is the core's BIO for this call.
        let outcome = read_pem(|| unsafe { core.bio_line(cin) })?;
        let PemOutcome::UriPem(der) = outcome else {
            return Ok(CARRY_ON);
        };
        let cb = object_cb.ok_or(Error::NullPointer("object_cb"))?;
        let structure = c"pk11-uri";
        let params = ParamBuilder::new()
            .octets(sys::OSSL_OBJECT_PARAM_DATA, &der)
            .utf8(sys::OSSL_OBJECT_PARAM_DATA_STRUCTURE, structure)
            .build();
        // SAFETY: the core's callback with its own argument; the array outlives the call.
        Ok(unsafe { cb(params.as_ptr(), object_cbarg) })
    }
}

/// The key-type step.
///
/// # Safety
///
/// The arguments are those of an `OSSL_FUNC_decoder_decode` call on our decoder ctx.
unsafe fn decode_key(
    ctx: *mut c_void,
    cin: *mut OSSL_CORE_BIO,
    desired: &'static core::ffi::CStr,
    object_cb: OSSL_CALLBACK,
    object_cbarg: *mut c_void,
    pw_cb: OSSL_PASSPHRASE_CALLBACK,
    pw_cbarg: *mut c_void,
) -> Result<c_int, Error> {
    // SAFETY: per the contract.
    let ctx = unsafe { DecoderCtx::borrow(ctx) }?;
    // SAFETY: per the contract, the core's BIO.
    let der = unsafe { ctx.provctx.core().bio_read_all(cin, MAX_DER) }?;
    if p11fwd_conf::uripem::decode_der(&der).is_err() {
        // Not a URI-PEM body (this decoder is only chained after ours, but be safe).
        return Ok(CARRY_ON);
    }
    let mut prompt = CallbackPrompt {
        cb: pw_cb,
        arg: pw_cbarg,
    };
    let cb = object_cb.ok_or(Error::NullPointer("object_cb"))?;
    let (reference, data_type, description) =
        match key_for_der(&ctx.provctx, &der, desired, &mut prompt) {
            Ok(Some(key)) => (key.reference, key.data_type, key.description),
            Ok(None) => return Ok(CARRY_ON),
            Err(e) => {
                // OpenSSL drops errors raised inside decoders when it then finds "nothing
                // to decode". Handing over a reference that our keymgmt's `load` turns back
                // into this error puts it where OpenSSL keeps it for the user.
                tracing::debug!(error = %e, "URI-PEM key lookup failed");
                (
                    registry::register_error(e),
                    desired,
                    c"p11fwd: URI-PEM key".to_owned(),
                )
            }
        };
    let params = ParamBuilder::new()
        .int(sys::OSSL_OBJECT_PARAM_TYPE, sys::OSSL_OBJECT_PKEY as c_int)
        .utf8(sys::OSSL_OBJECT_PARAM_DATA_TYPE, data_type)
        .octets(sys::OSSL_OBJECT_PARAM_REFERENCE, &reference)
        .utf8(sys::OSSL_OBJECT_PARAM_DESC, &description)
        .build();
    // SAFETY: the core's callback with its own argument; the array outlives the call.
    Ok(unsafe { cb(params.as_ptr(), object_cbarg) })
}
