//! `p11fwd.so`: an OpenSSL 3 provider that resolves `pkcs11:` URIs and forwards private-key
//! operations to a remote token over p11-kit's RPC protocol.
//!
//! The only exported symbol is [`OSSL_provider_init`]. Layout (docs/notes-provider.md has the
//! walkthrough):
//! - `sys`: raw declarations (committed bindgen output, openssl-sys, a few libcrypto functions).
//! - `ffi`: all `unsafe`: the `entry!` boundary, `OSSL_PARAM`s, dispatch tables, upcalls, errors,
//!   and the C shims of each operation.
//! - safe modules: `provider` (provctx and provider params), `config`, `error`, `trace`.

// `unsafe` is denied workspace-wide; these two modules are the FFI layer (see their docs).
#[allow(unsafe_code)]
mod ffi;
#[doc(hidden)]
#[allow(unsafe_code)]
pub mod sys;

// Parts of these are for the operation modules that come next (errors they will raise, the
// config they will read).
#[allow(dead_code, reason = "read by the operation modules that come next")]
mod config;
#[allow(
    dead_code,
    reason = "variants raised by the operation modules that come next"
)]
mod error;
#[allow(
    dead_code,
    reason = "accessors for the operation modules that come next"
)]
mod provider;
mod trace;

mod backend;
mod cipher;
mod decoder;
mod der;
mod encoder;
mod exchange;
mod hash;
mod key;
mod keygen;
mod rsa_pad;
mod signature;
mod store;

#[allow(unsafe_code)] // `#[unsafe(no_mangle)]` and the hand-over to `ffi::provider::init`.
mod export {
    use core::ffi::{c_int, c_void};

    use crate::ffi::boundary::entry;
    use crate::sys::{OSSL_CORE_HANDLE, OSSL_DISPATCH};

    entry! {
        /// The provider entry point OpenSSL looks up after loading `p11fwd.so`: captures the
        /// core handle and upcalls, reads the configuration and returns the provider's
        /// function table and provctx.
        export fn OSSL_provider_init(
            handle: *const OSSL_CORE_HANDLE,
            core_in: *const OSSL_DISPATCH,
            out: *mut *const OSSL_DISPATCH,
            provctx: *mut *mut c_void,
        ) -> c_int {
            // SAFETY: the arguments are the core's, passed on unchanged.
            unsafe { crate::ffi::provider::init(handle, core_in, out, provctx) }
        }
    }

    // The export must have exactly the `OSSL_provider_init_fn` signature.
    const _: crate::sys::OSSL_provider_init_fn = Some(OSSL_provider_init);
}

pub use export::OSSL_provider_init;
