//! The built `p11fwd.so` loaded into this process through libcrypto's provider API: two
//! instances in two library contexts, parameters read back, unloaded while the process lives
//! (teardown outside of `exit()`).

// Calling libcrypto's C API directly (openssl-sys); each block says why it is sound.
#![allow(unsafe_code)]

mod common;

use std::ffi::{CStr, CString, c_char, c_int};
use std::os::unix::ffi::OsStrExt;

use common::{ModuleDir, TestResult};
use openssl_sys::{OSSL_LIB_CTX, OSSL_PARAM, OSSL_PROVIDER};
use p11fwd_provider::sys::{
    OSSL_PARAM_INTEGER, OSSL_PARAM_UTF8_PTR, OSSL_PROV_PARAM_NAME, OSSL_PROV_PARAM_STATUS,
    OSSL_PROV_PARAM_VERSION,
};

unsafe extern "C" {
    // provider.h (3.0); openssl-sys does not declare it.
    fn OSSL_PROVIDER_get_params(prov: *const OSSL_PROVIDER, params: *mut OSSL_PARAM) -> c_int;
}

/// One library context with p11fwd loaded from `modules`, freed on drop.
struct Loaded {
    libctx: *mut OSSL_LIB_CTX,
    provider: *mut OSSL_PROVIDER,
}

impl Loaded {
    fn new(modules: &ModuleDir) -> Result<Self, String> {
        // SAFETY: no preconditions.
        let libctx = unsafe { openssl_sys::OSSL_LIB_CTX_new() };
        assert!(!libctx.is_null());
        let dir = CString::new(modules.path().as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: valid libctx and NUL-terminated path; OpenSSL copies the string.
        let ok =
            unsafe { openssl_sys::OSSL_PROVIDER_set_default_search_path(libctx, dir.as_ptr()) };
        assert_eq!(ok, 1);
        // SAFETY: valid libctx and NUL-terminated name.
        let provider = unsafe { openssl_sys::OSSL_PROVIDER_load(libctx, c"p11fwd".as_ptr()) };
        let loaded = Self { libctx, provider };
        if provider.is_null() {
            return Err("OSSL_PROVIDER_load(p11fwd) failed".into());
        }
        Ok(loaded)
    }

    /// (name, version, status) through `OSSL_PROVIDER_get_params`, as `openssl list` asks.
    fn params(&self) -> (String, String, c_int) {
        let mut name: *const c_char = std::ptr::null();
        let mut version: *const c_char = std::ptr::null();
        let mut status: c_int = -1;
        let entry = |key: &'static CStr, data_type, data: *mut std::ffi::c_void, size| OSSL_PARAM {
            key: key.as_ptr(),
            data_type,
            data,
            data_size: size,
            return_size: usize::MAX,
        };
        let mut params = [
            entry(
                OSSL_PROV_PARAM_NAME,
                OSSL_PARAM_UTF8_PTR,
                (&raw mut name).cast(),
                0,
            ),
            entry(
                OSSL_PROV_PARAM_VERSION,
                OSSL_PARAM_UTF8_PTR,
                (&raw mut version).cast(),
                0,
            ),
            entry(
                OSSL_PROV_PARAM_STATUS,
                OSSL_PARAM_INTEGER,
                (&raw mut status).cast(),
                4,
            ),
            OSSL_PARAM {
                key: std::ptr::null(),
                data_type: 0,
                data: std::ptr::null_mut(),
                data_size: 0,
                return_size: 0,
            },
        ];
        // SAFETY: a loaded provider and an END-terminated array whose buffers outlive the call.
        let ok = unsafe { OSSL_PROVIDER_get_params(self.provider, params.as_mut_ptr()) };
        assert_eq!(ok, 1);
        assert!(!name.is_null() && !version.is_null());
        // SAFETY: the provider set both to NUL-terminated strings it owns ('static in p11fwd).
        let name = unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: as above.
        let version = unsafe { CStr::from_ptr(version) }
            .to_string_lossy()
            .into_owned();
        (name, version, status)
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        if !self.provider.is_null() {
            // SAFETY: loaded above and unloaded once; this runs the provider's teardown.
            let ok = unsafe { openssl_sys::OSSL_PROVIDER_unload(self.provider) };
            assert_eq!(ok, 1);
        }
        // SAFETY: created above, freed once, after its provider.
        unsafe { openssl_sys::OSSL_LIB_CTX_free(self.libctx) };
    }
}

#[test]
fn two_instances_load_answer_and_unload() -> TestResult {
    let modules = ModuleDir::new()?;
    let first = Loaded::new(&modules)?;
    let second = Loaded::new(&modules)?;
    for loaded in [&first, &second] {
        let (name, version, status) = loaded.params();
        assert_eq!(name, "p11fwd");
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
        assert_eq!(status, 1);
    }
    drop(first);
    // The other instance is unaffected by the first one's teardown.
    assert_eq!(second.params().0, "p11fwd");
    drop(second);
    // And loading again after both are gone works (the library stays mapped: -z nodelete).
    let again = Loaded::new(&modules)?;
    assert_eq!(again.params().2, 1);
    Ok(())
}
