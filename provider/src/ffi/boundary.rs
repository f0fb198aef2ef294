//! The boundary every C entry point goes through: [`entry!`] declares the function, [`guard`]
//! runs its body.
//!
//! `guard` catches panics (a panic reaching `extern "C"` aborts the host process), logs them at
//! `error!`, turns an `Err` into an entry on the OpenSSL error queue (`ffi::err::raise`) and
//! returns the C failure value of the return type ([`Failure`]): `0` for `int`, NULL for
//! pointers, nothing for `void`. Only `panic = "unwind"` makes this work; the workspace sets it.

use core::ffi::{CStr, c_int};
use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::Error;
use crate::ffi::err;

/// The value a C entry point returns when it fails or panics.
pub(crate) trait Failure {
    /// The failure value (rustls-ffi's `PanicOrDefault`).
    const FAILURE: Self;
}

impl Failure for c_int {
    const FAILURE: Self = 0;
}

impl Failure for () {
    const FAILURE: Self = ();
}

impl<T> Failure for *mut T {
    const FAILURE: Self = core::ptr::null_mut();
}

impl<T> Failure for *const T {
    const FAILURE: Self = core::ptr::null();
}

/// Where an entry point is, for `ERR_set_debug` and the trace. Built at compile time by
/// [`entry!`]; the strings live in the (never unloaded, see build.rs) library.
#[derive(Debug)]
pub(crate) struct Site {
    /// The Rust function name of the entry point.
    pub(crate) func: &'static CStr,
    /// The source file.
    pub(crate) file: &'static CStr,
    /// The line of the `entry!` invocation.
    pub(crate) line: u32,
}

impl Site {
    /// `func` as `&str`, for tracing.
    pub(crate) fn name(&self) -> &'static str {
        self.func.to_str().unwrap_or("?")
    }
}

/// Runs the body of the C entry point at `site`. See the module docs.
pub(crate) fn guard<R: Failure>(site: &'static Site, body: impl FnOnce() -> Result<R, Error>) -> R {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // Inside the unwind guard: even tracing may panic (e.g. at process exit).
        let _span = tracing::trace_span!("ossl", entry = site.name()).entered();
        body()
    }));
    // Reporting allocates and formats; it must not unwind into C either.
    let reported = catch_unwind(AssertUnwindSafe(|| match outcome {
        Ok(Ok(value)) => value,
        Ok(Err(error)) => {
            if error.is_routine() {
                tracing::debug!(entry = site.name(), %error, "failed");
            } else {
                tracing::warn!(entry = site.name(), %error, "failed");
            }
            err::raise(&error, site);
            R::FAILURE
        }
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            tracing::error!(entry = site.name(), panic = %message, "panic caught at the C boundary");
            drop_payload(payload);
            err::raise(&Error::Panic(message), site);
            R::FAILURE
        }
    }));
    reported.unwrap_or(R::FAILURE)
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Drops a panic payload, whose own `Drop` may panic; a second payload is leaked.
fn drop_payload(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(|| drop(payload))) {
        std::mem::forget(again);
    }
}

/// `&'static CStr` from a string literal or `concat!`/`stringify!`/`file!` expression, checked at
/// compile time.
macro_rules! const_cstr {
    ($s:expr) => {
        match ::core::ffi::CStr::from_bytes_with_nul(concat!($s, "\0").as_bytes()) {
            Ok(s) => s,
            Err(_) => panic!("interior NUL in a C string constant"),
        }
    };
}
pub(crate) use const_cstr;

/// Declares a C entry point: a provider callback, or with `export fn` an exported
/// `#[unsafe(no_mangle)]` symbol (only `OSSL_provider_init`; the export test pins the set).
///
/// ```ignore
/// entry! {
///     /// OSSL_FUNC_provider_get_params
///     fn p11fwd_get_params(provctx: *mut c_void, params: *mut OSSL_PARAM) -> c_int {
///         let ctx = /* SAFETY: ... */ unsafe { ProvCtx::borrow(provctx) }?;
///         ...
///         Ok(1)
///     }
/// }
/// ```
///
/// The body is a closure returning `Result<$ret, Error>` (`?` works); it runs under [`guard`].
/// The function is an `unsafe extern "C" fn`, because it trusts its pointer arguments: it is
/// only ever called by OpenSSL through a dispatch table whose typedef fixes the contract (the
/// `dispatch_table!` macro checks the signature against that typedef). Unsafe operations in the
/// body still need their own `unsafe {}` block and `// SAFETY:` comment.
macro_rules! entry {
    (
        $(#[$meta:meta])*
        export fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block
    ) => {
        $(#[$meta])*
        ///
        /// # Safety
        ///
        /// Called by the OpenSSL core with arguments that meet the C contract of this symbol.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            $crate::ffi::boundary::entry!(@body $name, $ret, $body)
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block
    ) => {
        $(#[$meta])*
        ///
        /// # Safety
        ///
        /// Called by the OpenSSL core through a dispatch table, with arguments that meet the C
        /// contract of that dispatch slot.
        $vis unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            $crate::ffi::boundary::entry!(@body $name, $ret, $body)
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block
    ) => {
        $crate::ffi::boundary::entry! {
            $(#[$meta])*
            $vis fn $name($($arg: $ty),*) -> () $body
        }
    };
    (@body $name:ident, $ret:ty, $body:block) => {{
        static SITE: $crate::ffi::boundary::Site = $crate::ffi::boundary::Site {
            func: $crate::ffi::boundary::const_cstr!(stringify!($name)),
            file: $crate::ffi::boundary::const_cstr!(file!()),
            line: line!(),
        };
        $crate::ffi::boundary::guard(
            &SITE,
            move || -> ::core::result::Result<$ret, $crate::error::Error> { $body },
        )
    }};
}
pub(crate) use entry;

#[cfg(test)]
mod tests {
    use core::ffi::c_void;

    use super::*;
    use crate::sys;

    entry! {
        /// Panics, to test the boundary.
        fn panics(_x: *mut c_void) -> c_int {
            panic!("boom");
        }
    }

    entry! {
        /// Fails, to test the boundary.
        fn fails() -> *const c_void {
            Err(Error::Unsupported("testing"))
        }
    }

    entry! {
        /// Succeeds, returning nothing.
        fn succeeds() {
            Ok(())
        }
    }

    /// Pops the oldest error of this thread's queue: (lib, reason, data).
    fn pop_error() -> Option<(c_int, c_int, String)> {
        let mut data: *const core::ffi::c_char = core::ptr::null();
        let mut flags: c_int = 0;
        // SAFETY: all out-pointers are valid locals; file/line/func are allowed to be NULL.
        let code = unsafe {
            openssl_sys::ERR_get_error_all(
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                &mut data,
                &mut flags,
            )
        };
        if code == 0 {
            return None;
        }
        let text = if data.is_null() {
            String::new()
        } else {
            // SAFETY: ERR_get_error_all returns a NUL-terminated string owned by the queue,
            // valid until the next ERR call on this thread; we copy it at once.
            unsafe { CStr::from_ptr(data) }
                .to_string_lossy()
                .into_owned()
        };
        Some((sys::ERR_GET_LIB(code), sys::ERR_GET_REASON(code), text))
    }

    #[test]
    fn panic_becomes_failure_value_and_queued_error() {
        // SAFETY: the test entry points ignore their arguments.
        assert_eq!(unsafe { panics(core::ptr::null_mut()) }, 0);
        let (lib, reason, data) = pop_error().expect("an error was queued");
        assert_eq!(lib, err::library());
        assert_eq!(reason as u32, crate::error::Reason::Internal.code());
        assert_eq!(data, "panic: boom");
        assert_eq!(pop_error(), None);
    }

    #[test]
    fn error_becomes_null_and_queued_error() {
        // SAFETY: as above.
        assert!(unsafe { fails() }.is_null());
        let (_, reason, data) = pop_error().expect("an error was queued");
        assert_eq!(reason as u32, crate::error::Reason::Unsupported.code());
        assert_eq!(data, "testing is not supported");
    }

    #[test]
    fn success_queues_nothing() {
        // SAFETY: as above.
        unsafe { succeeds() };
        assert_eq!(pop_error(), None);
    }
}
