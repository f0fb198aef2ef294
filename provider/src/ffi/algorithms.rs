//! What `query_operation` answers: one static [`AlgorithmTable`] per operation.
//!
//! Empty tables answer NULL. To add an algorithm, give its operation module a
//! `DispatchTable` and list it here, e.g. for the `pkcs11:` store:
//!
//! ```ignore
//! static STORE: AlgorithmTable = algorithm_table![algorithm(
//!     c"pkcs11",
//!     PROPERTIES,
//!     &crate::ffi::store::STORE_FUNCTIONS,
//!     c"p11fwd: pkcs11: URIs of the forwarded token",
//! )];
//! ```

use core::ffi::c_int;

use crate::ffi::dispatch::{AlgorithmTable, algorithm_table};
use crate::sys;

/// `OSSL_OP_STORE`: the `pkcs11` URI scheme.
static STORE: AlgorithmTable = algorithm_table![];
/// `OSSL_OP_KEYMGMT`: RSA, EC, ... keys that live on the token.
static KEYMGMT: AlgorithmTable = algorithm_table![];
/// `OSSL_OP_SIGNATURE`.
static SIGNATURE: AlgorithmTable = algorithm_table![];
/// `OSSL_OP_ASYM_CIPHER`.
static ASYM_CIPHER: AlgorithmTable = algorithm_table![];
/// `OSSL_OP_KEYEXCH`.
static KEYEXCH: AlgorithmTable = algorithm_table![];
/// `OSSL_OP_ENCODER`.
static ENCODER: AlgorithmTable = algorithm_table![];
/// `OSSL_OP_DECODER`.
static DECODER: AlgorithmTable = algorithm_table![];

/// The table for `operation_id`, `None` for operations p11fwd never implements.
pub(crate) fn for_operation(operation_id: c_int) -> Option<&'static AlgorithmTable> {
    match operation_id {
        sys::OSSL_OP_STORE => Some(&STORE),
        sys::OSSL_OP_KEYMGMT => Some(&KEYMGMT),
        sys::OSSL_OP_SIGNATURE => Some(&SIGNATURE),
        sys::OSSL_OP_ASYM_CIPHER => Some(&ASYM_CIPHER),
        sys::OSSL_OP_KEYEXCH => Some(&KEYEXCH),
        sys::OSSL_OP_ENCODER => Some(&ENCODER),
        sys::OSSL_OP_DECODER => Some(&DECODER),
        _ => None,
    }
}
