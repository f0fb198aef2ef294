//! libcrypto functions that openssl-sys 0.9 does not declare (checked against 0.9.118).
//!
//! Declarations only, all present in OpenSSL 3.0.0 and later; the prototypes are copied from
//! `openssl/params.h` (3.0.19). Add a function here only when openssl-sys lacks it.

use core::ffi::{c_char, c_int, c_uint, c_void};

use openssl_sys::OSSL_PARAM;

unsafe extern "C" {
    // --- typed OSSL_PARAM getters (params.h) ---
    pub fn OSSL_PARAM_get_int(p: *const OSSL_PARAM, val: *mut c_int) -> c_int;
    pub fn OSSL_PARAM_get_uint(p: *const OSSL_PARAM, val: *mut c_uint) -> c_int;
    pub fn OSSL_PARAM_get_int64(p: *const OSSL_PARAM, val: *mut i64) -> c_int;
    pub fn OSSL_PARAM_get_uint64(p: *const OSSL_PARAM, val: *mut u64) -> c_int;
    pub fn OSSL_PARAM_get_size_t(p: *const OSSL_PARAM, val: *mut usize) -> c_int;

    // --- typed OSSL_PARAM setters (params.h) ---
    pub fn OSSL_PARAM_set_int(p: *mut OSSL_PARAM, val: c_int) -> c_int;
    pub fn OSSL_PARAM_set_uint(p: *mut OSSL_PARAM, val: c_uint) -> c_int;
    pub fn OSSL_PARAM_set_int64(p: *mut OSSL_PARAM, val: i64) -> c_int;
    pub fn OSSL_PARAM_set_uint64(p: *mut OSSL_PARAM, val: u64) -> c_int;
    pub fn OSSL_PARAM_set_size_t(p: *mut OSSL_PARAM, val: usize) -> c_int;
    pub fn OSSL_PARAM_set_utf8_string(p: *mut OSSL_PARAM, val: *const c_char) -> c_int;
    pub fn OSSL_PARAM_set_utf8_ptr(p: *mut OSSL_PARAM, val: *const c_char) -> c_int;
    pub fn OSSL_PARAM_set_octet_string(p: *mut OSSL_PARAM, val: *const c_void, len: usize)
    -> c_int;
    pub fn OSSL_PARAM_set_octet_ptr(
        p: *mut OSSL_PARAM,
        val: *const c_void,
        used_len: usize,
    ) -> c_int;
}

/// OpenSSL's `UI` (opaque).
#[repr(C)]
#[derive(Debug)]
pub struct UI {
    _private: [u8; 0],
}

unsafe extern "C" {
    // --- ui.h: the PIN prompt of last resort ---
    pub fn UI_new() -> *mut UI;
    pub fn UI_free(ui: *mut UI);
    pub fn UI_add_input_string(
        ui: *mut UI,
        prompt: *const c_char,
        flags: c_int,
        result_buf: *mut c_char,
        minsize: c_int,
        maxsize: c_int,
    ) -> c_int;
    pub fn UI_process(ui: *mut UI) -> c_int;
}

unsafe extern "C" {
    // --- evp.h / x509.h: software public-key operations in p11fwd's own library context
    // (ffi::soft) ---
    pub fn EVP_PKEY_CTX_new_from_pkey(
        libctx: *mut openssl_sys::OSSL_LIB_CTX,
        pkey: *mut openssl_sys::EVP_PKEY,
        propquery: *const c_char,
    ) -> *mut openssl_sys::EVP_PKEY_CTX;
    pub fn d2i_PUBKEY_ex(
        a: *mut *mut openssl_sys::EVP_PKEY,
        pp: *mut *const u8,
        length: core::ffi::c_long,
        libctx: *mut openssl_sys::OSSL_LIB_CTX,
        propq: *const c_char,
    ) -> *mut openssl_sys::EVP_PKEY;
    pub fn EVP_PKEY_verify_init_ex(
        ctx: *mut openssl_sys::EVP_PKEY_CTX,
        params: *const OSSL_PARAM,
    ) -> c_int;
    pub fn EVP_PKEY_encrypt_init_ex(
        ctx: *mut openssl_sys::EVP_PKEY_CTX,
        params: *const OSSL_PARAM,
    ) -> c_int;
    pub fn EVP_DigestVerifyInit_ex(
        ctx: *mut openssl_sys::EVP_MD_CTX,
        pctx: *mut *mut openssl_sys::EVP_PKEY_CTX,
        mdname: *const c_char,
        libctx: *mut openssl_sys::OSSL_LIB_CTX,
        props: *const c_char,
        pkey: *mut openssl_sys::EVP_PKEY,
        params: *const OSSL_PARAM,
    ) -> c_int;
}
