//! Configuration for p11fwd: everything that is text, files or environment, and nothing that
//! touches a socket or a PKCS#11 module.
//!
//! - [`uri`]: RFC 7512 `pkcs11:` URIs — parse, canonical format, and matching against small
//!   view structs of `CK_INFO`, `CK_SLOT_INFO`, `CK_TOKEN_INFO` and object attributes.
//! - [`pin`]: `pin-source` (`file:` and bare paths) and the PIN precedence of a URI.
//! - [`discovery`]: where a client finds its server, exactly as `p11-kit-client.so` does it
//!   (`P11_KIT_SERVER_ADDRESS`, then `<runtime dir>/p11-kit/pkcs11`), and the address syntax.
//! - [`shell`]: the `sh`/`csh` snippets that `p11fwd server` prints, identical to
//!   `p11-kit server`.
//! - [`templates`]: systemd user units and the p11-kit module registration file.
//! - [`uripem`]: pkcs11-provider's URI-PEM key files (`-----BEGIN PKCS#11 PROVIDER URI-----`).
//!
//! Every function is pure over its inputs where that is possible: the environment is injected
//! through [`discovery::Environment`], so tests never touch the process environment. No input
//! makes this crate panic, and PINs never appear in `Debug` output or error messages.
//!
//! There is no `unsafe` code in this crate.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod der;
pub mod discovery;
pub mod pin;
pub mod shell;
pub mod templates;
pub mod uri;
pub mod uripem;

mod error;
mod percent;

pub use error::Error;
pub use uri::{LibraryView, ObjectClass, ObjectView, Pkcs11Uri, SlotView, TokenView};
pub use zeroize::Zeroizing;
