//! Putting errors on the OpenSSL error queue.
//!
//! `ERR_new()` + `ERR_set_debug(file, line, func)` + `ERR_set_error(lib, reason, "%s", message)`,
//! called directly in libcrypto (the variadic call is fine from Rust). The core's own
//! `core_vset_error` upcall takes a `va_list`, which stable Rust cannot construct, so p11fwd
//! registers its **own** error library once per process (`ERR_get_next_error_library` +
//! `ERR_load_strings`, named "p11fwd", with the [`Reason`] texts). The core also registers the
//! same texts under the library it assigned to this provider instance (from
//! `OSSL_FUNC_provider_get_reason_strings`); that library is only reachable through
//! `core_vset_error`, so it stays unused until Rust can pass a `va_list`.
//!
//! The registered strings are copied to the heap and leaked on purpose: OpenSSL keeps pointers
//! to them for the life of the process.

use core::ffi::{CStr, c_int, c_ulong};
use std::ffi::CString;
use std::sync::OnceLock;

use crate::error::{Error, Reason};
use crate::ffi::boundary::Site;
use crate::sys;

/// The name OpenSSL prints for p11fwd's error library.
const LIBRARY_NAME: &CStr = c"p11fwd";

/// p11fwd's OpenSSL error library number, registering it and its reason strings on first use.
pub(crate) fn library() -> c_int {
    static LIBRARY: OnceLock<c_int> = OnceLock::new();
    *LIBRARY.get_or_init(register_library)
}

fn register_library() -> c_int {
    // SAFETY: no preconditions; returns a fresh library number (thread-safe in 3.x).
    let lib = unsafe { sys::ERR_get_next_error_library() };
    let leak = |s: &CStr| -> *const core::ffi::c_char { CString::from(s).into_raw() };
    let mut table: Vec<sys::ERR_STRING_DATA> = Vec::with_capacity(Reason::ALL.len() + 2);
    // Entry 0 names the library; ERR_load_strings stops at the first 0 code, so it is packed.
    table.push(sys::ERR_STRING_DATA {
        error: sys::ERR_PACK(lib, 0, 0),
        string: leak(LIBRARY_NAME),
    });
    for reason in Reason::ALL {
        table.push(sys::ERR_STRING_DATA {
            error: c_ulong::from(reason.code()),
            string: leak(reason.text()),
        });
    }
    table.push(sys::ERR_STRING_DATA {
        error: 0,
        string: core::ptr::null(),
    });
    let table: &'static mut [sys::ERR_STRING_DATA] = table.leak();
    // SAFETY: `table` is a 0-terminated ERR_STRING_DATA array that stays valid and unaliased for
    // the rest of the process (leaked); ERR_load_strings patches the library into each code and
    // keeps the pointers.
    unsafe { sys::ERR_load_strings(lib, table.as_mut_ptr()) };
    lib
}

/// Puts `error` on this thread's OpenSSL error queue, attributed to `site`.
pub(crate) fn raise(error: &Error, site: &'static Site) {
    let lib = library();
    let message = error.message().replace('\0', "\\0");
    let message = CString::new(message).unwrap_or_default();
    let line = c_int::try_from(site.line).unwrap_or(0);
    // The reason codes are small (checked by a test), so the cast cannot truncate.
    let reason = error.reason().code() as c_int;
    // SAFETY: no preconditions; starts a new error record on this thread's queue.
    unsafe { sys::ERR_new() };
    // SAFETY: `file` and `func` are NUL-terminated and 'static; OpenSSL stores the pointers.
    unsafe { sys::ERR_set_debug(site.file.as_ptr(), line, site.func.as_ptr()) };
    // SAFETY: the format is "%s" and exactly one NUL-terminated string argument follows; OpenSSL
    // copies the formatted text before returning.
    unsafe { sys::ERR_set_error(lib, reason, c"%s".as_ptr(), message.as_ptr()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_is_registered_once_with_its_reason_texts() {
        let lib = library();
        assert_eq!(lib, library());
        for reason in Reason::ALL {
            let code = sys::ERR_PACK(lib, 0, reason.code() as c_int);
            // SAFETY: no preconditions; returns a static string or NULL.
            let text = unsafe { openssl_sys::ERR_reason_error_string(code) };
            assert!(!text.is_null(), "{reason:?} not registered");
            // SAFETY: non-NULL, and it points into our leaked, NUL-terminated copy.
            assert_eq!(unsafe { CStr::from_ptr(text) }, reason.text());
        }
        // SAFETY: as above.
        let name = unsafe { openssl_sys::ERR_lib_error_string(sys::ERR_PACK(lib, 0, 1)) };
        assert!(!name.is_null());
        // SAFETY: as above.
        assert_eq!(unsafe { CStr::from_ptr(name) }, LIBRARY_NAME);
    }
}
