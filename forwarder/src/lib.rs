//! The forwarder (`p11fwd server`) and the command-line tools of the `p11fwd` binary.
//!
//! - [`module`]: loading PKCS#11 modules and a safe interface to their function lists (all the
//!   module `unsafe` is in `module/ffi.rs`).
//! - [`state`]: what is shared between connections (token logins, session objects) and each
//!   connection's own view (virtual slots, sessions and object handles).
//! - `dispatch`: one handler per RPC call.
//! - [`events`]: `C_WaitForSlotEvent` fanned out from one module instance to many connections.
//! - [`prearm`]: spare sessions with `C_SignInit` done ahead, so a signature waits only for
//!   `C_Sign`.
//! - [`server`]: the accept loop, per-connection lanes and shutdown ([`server::run`]).
//! - [`cli`]: `p11fwd server`, the command line of `p11-kit server`.
//! - [`daemon`]: fork and socket activation (the only other `unsafe`).

// The crate documentation above is a map of the modules, private ones included
// (`cargo doc --document-private-items` renders it all).
#![allow(rustdoc::private_intra_doc_links)]

pub mod cli;
mod conn;
pub mod daemon;
mod dispatch;
pub mod events;
pub mod list;
pub mod module;
pub mod prearm;
pub mod server;
pub mod state;
mod watch;

pub use dispatch::{HANDSHAKE, library_info};
