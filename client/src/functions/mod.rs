//! One safe function per PKCS#11 call, by chapter of the specification (PKCS#11 3.0 §5.4–5.20).
//!
//! Each takes the initialised [`Module`](crate::state::Module), safe views of the caller's
//! arguments (made by [`crate::ffi`]), and returns the CK_RV as `Result<(), Rv>`. Slot-level
//! calls go through `Module::slot_call` (reconnects, stand-in answers), session calls through
//! `Module::session_call` (our handles, stale sessions).

pub(crate) mod crypto;
pub(crate) mod general;
pub(crate) mod message;
pub(crate) mod object;
pub(crate) mod session;

use p11fwd_wire::message::Request;
use p11fwd_wire::{Arg, ByteArray};
use zeroize::Zeroize;

/// Wipe the byte arrays of a request that carried a PIN.
pub(crate) fn scrub(req: &mut Request) {
    for arg in &mut req.args {
        if let Arg::ByteArray(ByteArray::Data(d)) = arg {
            d.zeroize();
        }
    }
}
