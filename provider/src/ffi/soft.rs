//! Public-key operations in software: signature verification and RSA encryption with the
//! public half of a key, done by OpenSSL's `default` provider in a library context of p11fwd's
//! own (made on first use, never freed).
//!
//! Why: p11fwd's keymgmt imports public keys (it must, for the ECDH peer key of
//! `EVP_PKEY_derive_set_peer`), and OpenSSL 3.0 then sometimes hands p11fwd the verification of
//! a key from a file (when p11fwd is loaded before `default`, the first fetch finds p11fwd's
//! signature and the export to p11fwd's keymgmt now succeeds). A private library context that
//! holds only `default` verifies without recursing into p11fwd, with OpenSSL's own code, and
//! costs no round trip. The same path verifies and encrypts with token keys' public parts.

use core::ffi::CStr;
use std::sync::OnceLock;

use openssl_sys as ossl;

use crate::error::Error;
use crate::ffi::params::BuiltParams;
use crate::sys;

/// The private library context with `default` loaded, as an address (`Send`/`Sync`).
fn libctx() -> Result<*mut ossl::OSSL_LIB_CTX, Error> {
    static CTX: OnceLock<Option<usize>> = OnceLock::new();
    let ctx = CTX.get_or_init(|| {
        // SAFETY: no preconditions; NULL on failure.
        let ctx = unsafe { ossl::OSSL_LIB_CTX_new() };
        if ctx.is_null() {
            return None;
        }
        // SAFETY: `ctx` is live; "default" is a NUL-terminated name. The provider stays
        // loaded for the life of the process (the context is never freed).
        let prov = unsafe { ossl::OSSL_PROVIDER_load(ctx, c"default".as_ptr()) };
        if prov.is_null() {
            return None;
        }
        Some(ctx as usize)
    });
    ctx.map(|c| c as *mut ossl::OSSL_LIB_CTX)
        .ok_or(Error::Unsupported(
            "software public-key operations (OpenSSL's default provider could not be loaded)",
        ))
}

/// An `EVP_PKEY` in the private context, freed on drop.
struct Pkey(*mut ossl::EVP_PKEY);

impl Drop for Pkey {
    fn drop(&mut self) {
        // SAFETY: we own this reference.
        unsafe { ossl::EVP_PKEY_free(self.0) };
    }
}

struct PkeyCtx(*mut ossl::EVP_PKEY_CTX);

impl Drop for PkeyCtx {
    fn drop(&mut self) {
        // SAFETY: we own this context.
        unsafe { ossl::EVP_PKEY_CTX_free(self.0) };
    }
}

struct MdCtx(*mut ossl::EVP_MD_CTX);

impl Drop for MdCtx {
    fn drop(&mut self) {
        // SAFETY: we own this context.
        unsafe { ossl::EVP_MD_CTX_free(self.0) };
    }
}

fn failed(what: &'static str) -> Error {
    Error::Token {
        call: what,
        rv: "failed in OpenSSL's default provider".into(),
    }
}

/// The public key of a SubjectPublicKeyInfo, in the private context.
fn pkey(spki: &[u8]) -> Result<Pkey, Error> {
    let ctx = libctx()?;
    let mut p = spki.as_ptr();
    let len = core::ffi::c_long::try_from(spki.len())
        .map_err(|_| Error::Internal("SubjectPublicKeyInfo too long"))?;
    // SAFETY: `p` points to `len` readable bytes; `ctx` is live; NULL propq.
    let key =
        unsafe { sys::d2i_PUBKEY_ex(core::ptr::null_mut(), &mut p, len, ctx, core::ptr::null()) };
    if key.is_null() {
        return Err(failed("d2i_PUBKEY_ex"));
    }
    Ok(Pkey(key))
}

fn pkey_ctx(key: &Pkey) -> Result<PkeyCtx, Error> {
    let ctx = libctx()?;
    // SAFETY: `ctx` and `key` are live; NULL propq.
    let c = unsafe { sys::EVP_PKEY_CTX_new_from_pkey(ctx, key.0, core::ptr::null()) };
    if c.is_null() {
        return Err(failed("EVP_PKEY_CTX_new_from_pkey"));
    }
    Ok(PkeyCtx(c))
}

/// Verifies `sig` over the digest `tbs` (`EVP_PKEY_verify`) with the signature parameters
/// `params` (digest, padding, salt length, MGF1 digest). `Ok(false)`: a wrong signature.
pub(crate) fn verify_digest(
    spki: &[u8],
    params: &BuiltParams<'_>,
    tbs: &[u8],
    sig: &[u8],
) -> Result<bool, Error> {
    let key = pkey(spki)?;
    let c = pkey_ctx(&key)?;
    // SAFETY: live context; `params` is END-terminated and outlives the call.
    if unsafe { sys::EVP_PKEY_verify_init_ex(c.0, params.as_ptr()) } != 1 {
        return Err(failed("EVP_PKEY_verify_init_ex"));
    }
    // SAFETY: live context; both buffers are readable for their lengths.
    let rc =
        unsafe { ossl::EVP_PKEY_verify(c.0, sig.as_ptr(), sig.len(), tbs.as_ptr(), tbs.len()) };
    Ok(rc == 1)
}

/// Verifies `sig` over the whole `message` (`EVP_DigestVerify`; `md` NULL for EdDSA).
pub(crate) fn verify_message(
    spki: &[u8],
    md: Option<&CStr>,
    message: &[u8],
    sig: &[u8],
) -> Result<bool, Error> {
    let key = pkey(spki)?;
    let ctx = libctx()?;
    // SAFETY: no preconditions.
    let m = MdCtx(unsafe { ossl::EVP_MD_CTX_new() });
    if m.0.is_null() {
        return Err(failed("EVP_MD_CTX_new"));
    }
    // SAFETY: live contexts and key; `md` is NULL or a NUL-terminated name; NULL params.
    let ok = unsafe {
        sys::EVP_DigestVerifyInit_ex(
            m.0,
            core::ptr::null_mut(),
            md.map_or(core::ptr::null(), CStr::as_ptr),
            ctx,
            core::ptr::null(),
            key.0,
            core::ptr::null(),
        )
    };
    if ok != 1 {
        return Err(failed("EVP_DigestVerifyInit_ex"));
    }
    // SAFETY: live context; buffers readable for their lengths.
    let rc = unsafe {
        ossl::EVP_DigestVerify(
            m.0,
            sig.as_ptr(),
            sig.len(),
            message.as_ptr(),
            message.len(),
        )
    };
    Ok(rc == 1)
}

/// Encrypts `data` with the public key (`EVP_PKEY_encrypt`) and the cipher parameters
/// `params` (padding, OAEP digests and label).
pub(crate) fn encrypt(
    spki: &[u8],
    params: &BuiltParams<'_>,
    data: &[u8],
) -> Result<Vec<u8>, Error> {
    let key = pkey(spki)?;
    let c = pkey_ctx(&key)?;
    // SAFETY: live context; END-terminated params outliving the call.
    if unsafe { sys::EVP_PKEY_encrypt_init_ex(c.0, params.as_ptr()) } != 1 {
        return Err(failed("EVP_PKEY_encrypt_init_ex"));
    }
    let mut len = 0usize;
    // SAFETY: size query: NULL output, `len` a local.
    if unsafe {
        ossl::EVP_PKEY_encrypt(
            c.0,
            core::ptr::null_mut(),
            &mut len,
            data.as_ptr(),
            data.len(),
        )
    } != 1
    {
        return Err(failed("EVP_PKEY_encrypt"));
    }
    let mut out = vec![0u8; len];
    // SAFETY: `out` has `len` writable bytes; `data` readable.
    if unsafe { ossl::EVP_PKEY_encrypt(c.0, out.as_mut_ptr(), &mut len, data.as_ptr(), data.len()) }
        != 1
    {
        return Err(failed("EVP_PKEY_encrypt"));
    }
    out.truncate(len);
    Ok(out)
}
