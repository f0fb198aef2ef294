//! The C boundary: [`guard`] and the `entry!` macro that stamps every exported `C_*` function.
//!
//! Each export is `#[unsafe(no_mangle)] pub unsafe extern "C" fn C_x(..) -> CK_RV` whose body
//! runs inside [`guard`]: a panic becomes `CKR_GENERAL_ERROR` (logged at `error!`) instead of
//! aborting the host, and the body's `Result<(), Rv>` becomes the returned CK_RV. This works
//! because the workspace keeps `panic = "unwind"`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use cryptoki_sys::{
    CK_RV, CKR_ATTRIBUTE_SENSITIVE, CKR_ATTRIBUTE_TYPE_INVALID, CKR_BUFFER_TOO_SMALL,
    CKR_CRYPTOKI_ALREADY_INITIALIZED, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_FUNCTION_NOT_PARALLEL,
    CKR_FUNCTION_NOT_SUPPORTED, CKR_GENERAL_ERROR, CKR_MECHANISM_INVALID, CKR_NO_EVENT,
    CKR_OBJECT_HANDLE_INVALID, CKR_OK, CKR_SIGNATURE_INVALID, CKR_USER_ALREADY_LOGGED_IN,
    CKR_USER_NOT_LOGGED_IN,
};
use p11fwd_wire::Rv;

/// Runs one exported function's body: panics become `CKR_GENERAL_ERROR`, errors their CK_RV.
pub fn guard(function: &'static str, body: impl FnOnce() -> crate::Result<()>) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(rv)) => {
            log_rv(function, rv);
            rv.0
        }
        Err(payload) => {
            let cause = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(non-string panic payload)");
            tracing::error!(function, cause, "panic caught at the PKCS#11 boundary");
            CKR_GENERAL_ERROR
        }
    }
}

/// Routine outcomes at `debug`, everything else at `warn` (style: levels follow meaning).
fn log_rv(function: &'static str, rv: Rv) {
    let routine = matches!(
        rv.0,
        CKR_BUFFER_TOO_SMALL
            | CKR_ATTRIBUTE_TYPE_INVALID
            | CKR_ATTRIBUTE_SENSITIVE
            | CKR_NO_EVENT
            | CKR_CRYPTOKI_NOT_INITIALIZED
            | CKR_CRYPTOKI_ALREADY_INITIALIZED
            | CKR_USER_ALREADY_LOGGED_IN
            | CKR_USER_NOT_LOGGED_IN
            | CKR_SIGNATURE_INVALID
            | CKR_FUNCTION_NOT_SUPPORTED
            | CKR_FUNCTION_NOT_PARALLEL
            | CKR_MECHANISM_INVALID
            | CKR_OBJECT_HANDLE_INVALID
    );
    if routine {
        tracing::debug!(function, rv = %rv, "returned");
    } else {
        tracing::warn!(function, rv = %rv, "failed");
    }
}

/// Stamps exported PKCS#11 functions.
///
/// ```ignore
/// entry! {
///     /// `C_Logout`
///     fn C_Logout(hSession: CK_SESSION_HANDLE) {
///         functions::session::logout(hSession)
///     }
/// }
/// ```
///
/// The body is a block of type `crate::Result<()>`; it may use `?`. The arguments keep their C
/// names. Raw pointer arguments must be turned into safe values through the helpers in
/// [`crate::ffi`] before anything else happens.
///
/// With `per_instance;` first, each function also gets its twin in every function list's
/// instance: `Instance::<I>::C_x`, which runs `C_x` as instance `I` (`crate::state`).
macro_rules! entry {
    (per_instance; $(
        $(#[$meta:meta])*
        fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block
    )*) => {
        $crate::boundary::entry! {$(
            $(#[$meta])*
            fn $name($($arg: $ty),*) $body
        )*}

        impl<const I: usize> $crate::boundary::Instance<I> {$(
            #[doc = concat!("`", stringify!($name), "` of the function lists of instance `I`.")]
            ///
            /// # Safety
            ///
            /// As the exported function.
            #[allow(non_snake_case)] // PKCS#11 names.
            pub(crate) unsafe extern "C" fn $name($($arg: $ty),*) -> ::cryptoki_sys::CK_RV {
                // SAFETY: the caller keeps the exported function's contract.
                $crate::state::with_instance(I, || unsafe { $name($($arg),*) })
            }
        )*}
    };
    ($(
        $(#[$meta:meta])*
        fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block
    )*) => {$(
        $(#[$meta])*
        ///
        /// # Safety
        ///
        /// The caller keeps the PKCS#11 contract for this function: every pointer is NULL or
        /// valid for the length the specification gives it, for the duration of the call.
        /// NULL pointers where the specification requires one are reported as
        /// `CKR_ARGUMENTS_BAD`, never dereferenced.
        #[allow(non_snake_case)] // PKCS#11 names.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> ::cryptoki_sys::CK_RV {
            $crate::boundary::guard(stringify!($name), || $body)
        }
    )*};
}

pub(crate) use entry;

/// Module instance `I`: its function lists' functions are associated functions of this type
/// (stamped by `entry!`), so that each list calls into its own instance.
#[derive(Debug)]
pub(crate) struct Instance<const I: usize>;

#[cfg(test)]
mod tests {
    use cryptoki_sys::{CKR_GENERAL_ERROR, CKR_OK, CKR_PIN_INCORRECT};
    use p11fwd_wire::Rv;

    use super::guard;

    #[test]
    fn a_panic_becomes_general_error() {
        assert_eq!(guard("C_Test", || panic!("boom")), CKR_GENERAL_ERROR);
        assert_eq!(
            guard("C_Test", || std::panic::panic_any(42_u32)),
            CKR_GENERAL_ERROR
        );
        assert_eq!(guard("C_Test", || Ok(())), CKR_OK);
        assert_eq!(
            guard("C_Test", || Err(Rv(CKR_PIN_INCORRECT))),
            CKR_PIN_INCORRECT
        );
    }
}
