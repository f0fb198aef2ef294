//! The p11-kit RPC ("remote PKCS#11") protocol, as every stock generation speaks it.
//!
//! p11-kit 0.24 (protocol version 0), 0.25.0–0.25.5 (version 1) and 0.25.6+/0.26 (version 2)
//! disagree about how mechanisms, buffers and templates travel; the one byte negotiated when a
//! connection opens is the only sign of the peer's generation. Everything here is driven by a
//! [`Dialect`] built from that byte, so one implementation talks correctly to all of them.
//!
//! Layers, bottom up:
//! - [`codec`]: a bounds-checked [`codec::Reader`] and a [`codec::Writer`] for the primitive
//!   encodings (big-endian integers, byte arrays with the `0xFFFFFFFF` NULL marker).
//! - [`value`]: the values a call carries ([`Arg`], [`Attribute`], [`Mechanism`], ...) and their
//!   encodings, including both mechanism framings and every parameter serializer.
//! - [`message`]: request and reply bodies checked against the signature table of [`CallId`].
//! - [`frame`]: the 12-byte frame header, sans-IO, with caps on every length.
//! - [`transport`]: a blocking transport for host processes (no threads, no runtime,
//!   `MSG_NOSIGNAL`, hard deadlines, multiplexed by request code).
//! - [`client`]: a typed client with one method per PKCS#11 function.
//!
//! This crate has no `unsafe` code and never panics on peer input: every length a peer sends is
//! checked against the bytes actually present and against explicit caps before anything is
//! allocated.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod codec;
pub mod consts;
pub mod dialect;
pub mod error;
pub mod frame;
pub mod info;
pub mod message;
pub mod names;
mod tables;
pub mod transport;
pub mod value;

#[doc(hidden)]
pub mod fuzzing;

pub use dialect::Dialect;
pub use error::{Error, ProtocolError, Result};
pub use message::{Reply, Request};
pub use tables::CallId;
pub use value::{Arg, AttrValue, Attribute, ByteArray, MechParam, Mechanism, UlongArray, Value};

/// A PKCS#11 return value (`CK_RV`), kept exactly as sent: unknown and vendor codes survive.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Rv(pub u64);

impl Rv {
    /// `CKR_OK`
    pub const OK: Self = Self(consts::CKR_OK);

    /// Whether this is `CKR_OK`.
    pub fn is_ok(self) -> bool {
        self.0 == consts::CKR_OK
    }

    /// The `CKR_` name, if this is a standard code.
    pub fn name(self) -> Option<&'static str> {
        names::rv_name(self.0)
    }
}

impl std::fmt::Debug for Rv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "CKR_0x{:x}", self.0),
        }
    }
}

impl std::fmt::Display for Rv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} (0x{:x})", self.0),
            None => write!(f, "0x{:x}", self.0),
        }
    }
}

impl CallId {
    /// The call with this id, if the id is in the table (0..=89).
    pub fn from_u32(id: u32) -> Option<Self> {
        Self::ALL.get(usize::try_from(id).ok()?).copied()
    }

    /// The numeric id sent on the wire.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// The PKCS#11 function name, e.g. `C_Sign` (`ERROR` for id 0).
    pub fn name(self) -> &'static str {
        tables::CALLS[self as usize].1
    }

    /// The request signature, e.g. `"uayfy"`.
    pub fn request_signature(self) -> &'static str {
        tables::CALLS[self as usize].2
    }

    /// The reply signature, e.g. `"ay"`.
    pub fn reply_signature(self) -> &'static str {
        tables::CALLS[self as usize].3
    }
}

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
