//! `p11fwd-client.so`: a PKCS#11 module that reaches a forwarded token over the p11-kit RPC
//! protocol, a drop-in replacement for `p11-kit-client.so` (issue 4, `docs/notes-client.md`).
//!
//! Applications (NSS, GnuTLS, OpenSSH, OpenSC tools, anything that loads a PKCS#11 module) load
//! this library; every call goes over one Unix socket to a `p11-kit server` or `p11fwd server`,
//! of any p11-kit generation (the negotiated [`p11fwd_wire::Dialect`] decides every encoding).
//!
//! Layout, from the C boundary inwards:
//! - [`mod@ffi`]: the only `unsafe` code. The exported `C_*` functions (stamped by `entry!`
//!   from [`boundary`]), the function lists and interfaces, and the helpers that turn raw
//!   pointers into safe values at once: input slices, templates and mechanisms, and output
//!   buffers that implement the PKCS#11 length conventions (`OutBytes`, `OutUlongs`,
//!   `OutAttr`).
//! - [`functions`]: one safe function per PKCS#11 call, grouped by specification chapter.
//! - [`state`]: the module state (initialisation, fork detection, the shared connection,
//!   reconnection, session handles); [`config`]: where the server is and how long to wait.
//! - [`mech`] and [`attrs`]: what may cross to the negotiated generation, and how native
//!   mechanisms and templates become wire values.
//!
//! The module never starts a thread or an async runtime in the host: calling threads do all the
//! I/O, multiplexed over one connection by `p11fwd_wire::transport::blocking`.

// The crate documentation above is a map of the modules, private ones included
// (`cargo doc --document-private-items` renders it all).
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod attrs;
pub mod boundary;
pub(crate) mod config;
#[allow(unsafe_code)] // The C boundary: every unsafe block carries its SAFETY comment.
pub mod ffi;
pub(crate) mod functions;
pub(crate) mod log;
pub(crate) mod mech;
pub(crate) mod pipeline;
pub(crate) mod state;

use p11fwd_wire::Rv;

/// Results inside the module: the error is the CK_RV the caller sees.
pub(crate) type Result<T, E = Rv> = std::result::Result<T, E>;

/// Every symbol the library exports: the fields of the PKCS#11 3.0 function list, which hold
/// every 2.40 function, `C_GetInterfaceList`, `C_GetInterface` and the 3.0 functions.
/// `exports.txt` holds the same list for the test that compares it with `nm -D`.
pub const EXPORTS: &[&str] = ffi::EXPORTED_NAMES;

/// The CK_RV for a constant.
pub(crate) const fn rv(code: cryptoki_sys::CK_RV) -> Rv {
    Rv(code)
}

#[cfg(test)]
mod tests {
    #[test]
    fn exports_txt_matches_the_function_list() {
        let file: Vec<&str> = include_str!("../exports.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let mut listed = super::EXPORTS.to_vec();
        let mut file_sorted = file.clone();
        listed.sort_unstable();
        file_sorted.sort_unstable();
        assert_eq!(listed, file_sorted);
        assert_eq!(file.len(), 92);
    }
}
