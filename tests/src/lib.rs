//! Test infrastructure for p11fwd's end-to-end tests against real peers.
//!
//! - [`require_tool`]: find a peer program or fail loudly (`make deps` installs them all).
//! - [`run`](mod@run): run a command with a timeout and assert on its status, with the full output in
//!   the panic message ([`run_ok`], [`run_fail`]).
//! - [`artifacts`]: the workspace's build products (`p11fwd`, `libp11fwd_client.so`,
//!   `libp11fwd_provider.so`) and a module tree with the installed names.
//! - [`TestToken`]: a fresh SoftHSM token in a temp dir, with the keys a test asks for ([`Key`]).
//! - [`StockServer`]: the stock `p11-kit server` serving a [`TestToken`].
//! - [`ForwarderServer`]: `p11fwd server` serving a [`TestToken`]; [`Server`], [`AnyServer`] and
//!   [`servers`] run one test body against both.
//! - [`P11Env`]: run clients with `P11_KIT_SERVER_ADDRESS` set.
//! - [`relay::Relay`]: a Unix-socket relay adding latency and counting round trips.
//!
//! Fixtures panic with a message that says what to do when something is missing: a test whose
//! peer is absent must fail, never pass silently. The only `unsafe` is in the `ffi` module, which
//! runs in the `p11fwd-test-token` helper process only.

pub mod artifacts;
mod der;
mod ffi;
mod forwarder;
mod p11env;
#[doc(hidden)]
pub mod provision;
pub mod relay;
pub mod run;
pub mod sshd;
mod stock;
mod token;

pub use forwarder::{
    AnyServer, DEFAULT_FORWARDER_LOG, ForwarderServer, ForwarderServerBuilder, Server, ServerKind,
    servers, servers_uri,
};
pub use p11env::P11Env;
pub use run::{RunOutput, require_tool, run_fail, run_ok};
pub use sshd::Sshd;
pub use stock::StockServer;
pub use token::{
    DEFAULT_LABEL, Key, Profile, SECOND_KEY, SECOND_LABEL, SECOND_PIN, SO_PIN, TestToken,
    TestTokenBuilder, USER_PIN,
};

/// The SoftHSM module Debian installs (`softhsm2`).
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The stock p11-kit RPC client module (`p11-kit-modules`).
pub const P11KIT_CLIENT_MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";

/// Percent-encodes `s` the way p11-kit encodes paths and URI values: `[A-Za-z0-9._/-]` stays,
/// everything else becomes `%XX`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._/-".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Panics unless `path` exists, telling the reader to run `make deps`.
pub fn require_file(path: impl AsRef<std::path::Path>) -> std::path::PathBuf {
    let path = path.as_ref();
    assert!(
        path.exists(),
        "{} not found: run `make deps`",
        path.display()
    );
    path.to_path_buf()
}
