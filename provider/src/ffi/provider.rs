//! The C side of the provider itself: `OSSL_provider_init`'s body and the provider-level
//! callbacks of `PROVIDER_FUNCTIONS` (teardown, params, query_operation, reason strings,
//! capabilities). Each shim converts pointers and calls the safe code in `crate::provider`.

use core::ffi::{c_char, c_int, c_void};
use std::sync::Arc;

use crate::error::{Error, Reason};
use crate::ffi::algorithms;
use crate::ffi::boundary::entry;
use crate::ffi::cast::{ArcCastable, Castable, c_str, write_out};
use crate::ffi::core::Core;
use crate::ffi::dispatch::{
    CoreDispatch, DispatchTable, ITEM_END, ItemTable, dispatch_table, item,
};
use crate::ffi::params::ParamsMut;
use crate::provider::{GETTABLE_PARAMS, ProvCtx};
use crate::sys::{
    OSSL_ALGORITHM, OSSL_CALLBACK, OSSL_CORE_HANDLE, OSSL_DISPATCH, OSSL_ITEM, OSSL_PARAM,
};
use crate::trace;

/// The provider's own functions, handed to the core by `OSSL_provider_init`.
pub(crate) static PROVIDER_FUNCTIONS: DispatchTable = dispatch_table![
    provider_teardown => p11fwd_teardown,
    provider_gettable_params => p11fwd_gettable_params,
    provider_get_params => p11fwd_get_params,
    provider_query_operation => p11fwd_query_operation,
    provider_get_reason_strings => p11fwd_get_reason_strings,
    provider_get_capabilities => p11fwd_get_capabilities,
];

/// The body of `OSSL_provider_init` (the export itself is in lib.rs, under `entry!`).
///
/// # Safety
///
/// The arguments are those the core passes to `OSSL_provider_init`.
pub(crate) unsafe fn init(
    handle: *const OSSL_CORE_HANDLE,
    core_in: *const OSSL_DISPATCH,
    out: *mut *const OSSL_DISPATCH,
    provctx: *mut *mut c_void,
) -> Result<c_int, Error> {
    trace::init_from_env();
    if out.is_null() || provctx.is_null() {
        return Err(Error::NullPointer("out/provctx"));
    }
    // SAFETY: `core_in` is the core's dispatch table for this call.
    let dispatch = unsafe { CoreDispatch::from_ptr(core_in) }?;
    // SAFETY: `handle` comes with `core_in` and stays valid until our teardown.
    let core = unsafe { Core::new(handle, dispatch) }?;
    let ctx = ProvCtx::new(core)?;
    // SAFETY: checked non-NULL above; the core passes a writable slot.
    unsafe { write_out(out, PROVIDER_FUNCTIONS.as_ptr(), "out") }?;
    // SAFETY: as above. The reference handed out is taken back in `p11fwd_teardown`.
    unsafe { write_out(provctx, ProvCtx::arc_into_raw(Arc::new(ctx)), "provctx") }?;
    Ok(1)
}

entry! {
    /// `OSSL_FUNC_provider_teardown`: drops the core's reference to the provctx.
    fn p11fwd_teardown(provctx: *mut c_void) {
        // SAFETY: the core passes back the provctx from `init` exactly once, and never uses it
        // afterwards.
        let ctx = unsafe { ProvCtx::arc_from_raw(provctx) };
        if let Some(ctx) = &ctx {
            // Cached URI-PEM searches hold keys (and so this provctx) in the key registry.
            crate::decoder::forget(ctx);
        }
        tracing::debug!(
            references = ctx.as_ref().map(Arc::strong_count),
            "p11fwd provider teardown"
        );
        drop(ctx);
        Ok(())
    }
}

entry! {
    /// `OSSL_FUNC_provider_gettable_params`.
    fn p11fwd_gettable_params(_provctx: *mut c_void) -> *const OSSL_PARAM {
        Ok(GETTABLE_PARAMS.as_ptr())
    }
}

entry! {
    /// `OSSL_FUNC_provider_get_params`.
    fn p11fwd_get_params(provctx: *mut c_void, params: *mut OSSL_PARAM) -> c_int {
        // SAFETY: the core passes our provctx, live until teardown.
        let ctx = unsafe { ProvCtx::borrow(provctx) }?;
        // SAFETY: the caller's END-terminated request array, exclusively ours for this call.
        let mut params = unsafe { ParamsMut::from_ptr(params) };
        ctx.get_params(&mut params)?;
        Ok(1)
    }
}

entry! {
    /// `OSSL_FUNC_provider_query_operation`: the static table of `operation_id`, or NULL when
    /// we implement none of it or `pkcs11-module-block-operations` hides it. Neither changes
    /// while the provider is loaded, so OpenSSL may cache the answer.
    fn p11fwd_query_operation(
        provctx: *mut c_void,
        operation_id: c_int,
        no_store: *mut c_int,
    ) -> *const OSSL_ALGORITHM {
        if !no_store.is_null() {
            // SAFETY: non-NULL, and the core passes a writable int.
            unsafe { write_out(no_store, 0, "no_store") }?;
        }
        // SAFETY: the core passes our provctx, live until teardown.
        let ctx = unsafe { ProvCtx::borrow(provctx) }?;
        if ctx.config().blocks(operation_id) {
            tracing::trace!(operation_id, "query_operation: blocked by the configuration");
            return Ok(core::ptr::null());
        }
        let table = algorithms::for_operation(operation_id).filter(|t| !t.is_empty());
        tracing::trace!(operation_id, algorithms = table.map_or(0, |t| t.len()), "query_operation");
        Ok(table.map_or(core::ptr::null(), |t| t.as_ptr()))
    }
}

/// The [`Reason`] table as `OSSL_ITEM`s, for `get_reason_strings`.
static REASON_STRINGS: ItemTable = ItemTable::new(&REASON_ITEMS);

const REASON_ITEMS: [OSSL_ITEM; Reason::ALL.len() + 1] = {
    let mut items = [ITEM_END; Reason::ALL.len() + 1];
    let mut i = 0;
    while i < Reason::ALL.len() {
        items[i] = item(Reason::ALL[i].code(), Reason::ALL[i].text());
        i += 1;
    }
    items
};

entry! {
    /// `OSSL_FUNC_provider_get_reason_strings`: the core registers these under the error
    /// library it assigned to this instance (see `ffi::err` for why we raise under our own).
    fn p11fwd_get_reason_strings(_provctx: *mut c_void) -> *const OSSL_ITEM {
        Ok(REASON_STRINGS.as_ptr())
    }
}

entry! {
    /// `OSSL_FUNC_provider_get_capabilities`: no capabilities yet (TLS-GROUP, TLS-SIGALG).
    ///
    /// Returns 1, "success, nothing to report": libssl's `SSL_CTX_new` walks every provider's
    /// TLS-GROUP capability and fails outright if one of them returns 0.
    fn p11fwd_get_capabilities(
        _provctx: *mut c_void,
        capability: *const c_char,
        _cb: OSSL_CALLBACK,
        _arg: *mut c_void,
    ) -> c_int {
        // SAFETY: the core passes a NUL-terminated capability name (or NULL).
        let capability = unsafe { c_str(capability, "capability") }?;
        tracing::trace!(?capability, "get_capabilities: none");
        Ok(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_answer_success_with_nothing() {
        // SAFETY: the callback is never called; the provctx is unused.
        let rc = unsafe {
            p11fwd_get_capabilities(
                core::ptr::null_mut(),
                c"TLS-GROUP".as_ptr(),
                None,
                core::ptr::null_mut(),
            )
        };
        assert_eq!(rc, 1);
    }
}
