//! SHA-1 and SHA-2 digests (pure-Rust `sha1`/`sha2` crates), so that
//! `openssl req -new -provider p11fwd -key pkcs11:...` works with no other provider loaded.

use core::ffi::{c_int, c_uchar, c_void};

use crate::error::Error;
use crate::ffi::boundary::entry;
use crate::ffi::cast::{BoxCastable, Castable, OwnershipBox, bytes, write_out};
use crate::ffi::dispatch::{DispatchTable, dispatch_table};
use crate::ffi::params::{ParamTable, ParamsMut, param_table};
use crate::hash::{Hash, Hasher};
use crate::sys::{self, OSSL_PARAM};

/// A digest context.
#[derive(Debug, Clone)]
pub(crate) struct DigestCtx {
    hash: Hash,
    state: Hasher,
}

impl Castable for DigestCtx {
    type Ownership = OwnershipBox;
    const WHAT: &'static str = "digest ctx";
}

static GETTABLE: ParamTable = param_table![
    (sys::OSSL_DIGEST_PARAM_BLOCK_SIZE, UnsignedInteger),
    (sys::OSSL_DIGEST_PARAM_SIZE, UnsignedInteger),
    (sys::OSSL_DIGEST_PARAM_XOF, Integer),
    (sys::OSSL_DIGEST_PARAM_ALGID_ABSENT, Integer),
];

macro_rules! digest {
    ($table:ident, $newctx:ident, $get_params:ident, $hash:expr) => {
        pub(crate) static $table: DispatchTable = dispatch_table![
            digest_newctx => $newctx,
            digest_init => p11fwd_digest_init,
            digest_update => p11fwd_digest_update,
            digest_final => p11fwd_digest_final,
            digest_freectx => p11fwd_digest_freectx,
            digest_dupctx => p11fwd_digest_dupctx,
            digest_get_params => $get_params,
            digest_gettable_params => p11fwd_digest_gettable_params,
        ];

        entry! {
            /// `OSSL_FUNC_digest_newctx`
            fn $newctx(_provctx: *mut c_void) -> *mut c_void {
                Ok(DigestCtx { hash: $hash, state: $hash.hasher() }.into_raw())
            }
        }

        entry! {
            /// `OSSL_FUNC_digest_get_params`
            fn $get_params(params: *mut OSSL_PARAM) -> c_int {
                // SAFETY: the caller's END-terminated request array.
                get_params($hash, unsafe { ParamsMut::from_ptr(params) })
            }
        }
    };
}

digest!(SHA1_FUNCTIONS, newctx_sha1, get_params_sha1, Hash::Sha1);
digest!(
    SHA224_FUNCTIONS,
    newctx_sha224,
    get_params_sha224,
    Hash::Sha224
);
digest!(
    SHA256_FUNCTIONS,
    newctx_sha256,
    get_params_sha256,
    Hash::Sha256
);
digest!(
    SHA384_FUNCTIONS,
    newctx_sha384,
    get_params_sha384,
    Hash::Sha384
);
digest!(
    SHA512_FUNCTIONS,
    newctx_sha512,
    get_params_sha512,
    Hash::Sha512
);

fn get_params(hash: Hash, mut params: ParamsMut<'_>) -> Result<c_int, Error> {
    for mut p in params.iter_mut() {
        let k = p.key();
        if k == sys::OSSL_DIGEST_PARAM_BLOCK_SIZE {
            p.set_size_t(hash.block_size())?;
        } else if k == sys::OSSL_DIGEST_PARAM_SIZE {
            p.set_size_t(hash.size())?;
        } else if k == sys::OSSL_DIGEST_PARAM_XOF {
            p.set_int(0)?;
        } else if k == sys::OSSL_DIGEST_PARAM_ALGID_ABSENT {
            p.set_int(1)?;
        }
    }
    Ok(1)
}

entry! {
    /// `OSSL_FUNC_digest_gettable_params`
    fn p11fwd_digest_gettable_params(_provctx: *mut c_void) -> *const OSSL_PARAM {
        Ok(GETTABLE.as_ptr())
    }
}

entry! {
    /// `OSSL_FUNC_digest_init`
    fn p11fwd_digest_init(ctx: *mut c_void, _params: *const OSSL_PARAM) -> c_int {
        // SAFETY: our digest ctx, not used concurrently.
        let ctx = unsafe { DigestCtx::borrow_mut(ctx) }?;
        ctx.state = ctx.hash.hasher();
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_digest_update`
    fn p11fwd_digest_update(ctx: *mut c_void, data: *const c_uchar, len: usize) -> c_int {
        // SAFETY: our digest ctx, not used concurrently.
        let ctx = unsafe { DigestCtx::borrow_mut(ctx) }?;
        // SAFETY: `len` readable bytes.
        ctx.state.update(unsafe { bytes(data, len, "data") }?);
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_digest_final`
    fn p11fwd_digest_final(ctx: *mut c_void, out: *mut c_uchar, outl: *mut usize, outsz: usize) -> c_int {
        // SAFETY: our digest ctx, not used concurrently.
        let ctx = unsafe { DigestCtx::borrow_mut(ctx) }?;
        let size = ctx.hash.size();
        if outsz < size || out.is_null() {
            return Err(Error::Param { key: "out".into(), problem: "buffer too small for the digest" });
        }
        let state = std::mem::replace(&mut ctx.state, ctx.hash.hasher());
        let digest = state.finish();
        // SAFETY: `out` has `outsz` >= `size` writable bytes.
        unsafe { core::ptr::copy_nonoverlapping(digest.as_ptr(), out, size) };
        // SAFETY: the caller's out-parameter.
        unsafe { write_out(outl, size, "outl") }?;
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_digest_freectx`
    fn p11fwd_digest_freectx(ctx: *mut c_void) {
        // SAFETY: handed back once.
        drop(unsafe { DigestCtx::from_raw(ctx) });
        Ok(())
    }
}

entry! {
    /// `OSSL_FUNC_digest_dupctx`
    fn p11fwd_digest_dupctx(ctx: *mut c_void) -> *mut c_void {
        // SAFETY: our digest ctx.
        Ok(unsafe { DigestCtx::borrow(ctx) }?.clone().into_raw())
    }
}
