//! Everything that touches C: the only place (with `sys`) where `unsafe` is allowed.
//!
//! - [`boundary`]: `entry!` (declares every C entry point) and `guard` (panics, errors, C
//!   failure values).
//! - [`cast`]: `Castable` ownership of the objects OpenSSL holds as `void *`; pointer helpers.
//! - [`params`]: `OSSL_PARAM` reading/writing, static descriptor tables.
//! - [`dispatch`]: static `OSSL_DISPATCH`/`OSSL_ALGORITHM`/`OSSL_ITEM` tables, core upcall lookup.
//! - [`core`]: the core handle and upcalls (`core_get_params`, `core_get_libctx`).
//! - [`err`]: raising errors on the OpenSSL error queue.
//! - [`process`]: exit detection (tracing must stop before `OPENSSL_cleanup` tears us down).
//! - [`provider`]: the provider's own callbacks; [`algorithms`]: the per-operation tables.
//!
//! Operation modules (store, keymgmt, signature, ...) add one file here with their C shims and
//! `DispatchTable`, and put their logic in a safe module at the crate root.

// The helper modules are the toolkit for the operation modules that come next; until then parts
// of them are used only by their unit tests.
pub(crate) mod algorithms;
pub(crate) mod asym_cipher;
pub(crate) mod boundary;
#[allow(dead_code, reason = "toolkit for the operation modules; unit-tested")]
pub(crate) mod cast;
#[allow(dead_code, reason = "toolkit for the operation modules; unit-tested")]
pub(crate) mod core;
pub(crate) mod decoder;
pub(crate) mod digest;
#[allow(dead_code, reason = "toolkit for the operation modules; unit-tested")]
pub(crate) mod dispatch;
pub(crate) mod encoder;
pub(crate) mod err;
pub(crate) mod exchange;
pub(crate) mod keymgmt;
#[allow(dead_code, reason = "toolkit for the operation modules; unit-tested")]
pub(crate) mod params;
pub(crate) mod process;
pub(crate) mod provider;
pub(crate) mod rand;
pub(crate) mod signature;
pub(crate) mod soft;
pub(crate) mod store;
pub(crate) mod ui;
