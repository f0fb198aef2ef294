//! Shared helpers of the forwarder's end-to-end tests: `p11fwd server -f` (the shared
//! [`ForwarderServer`] fixture, with this package's binary) serving a SoftHSM [`TestToken`], and
//! wire clients for it.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

pub mod slow;

use std::path::{Path, PathBuf};
use std::time::Duration;

use p11fwd_tests::{ForwarderServer, ForwarderServerBuilder, TestToken};
use p11fwd_wire::client::Client;
use p11fwd_wire::consts::*;
use p11fwd_wire::transport::blocking::Options;
use p11fwd_wire::value::Attribute;

/// The forwarder binary built with these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_p11fwd")
}

/// `p11fwd server` serving a test token: the shared fixture, started with this package's binary.
pub use p11fwd_tests::ForwarderServer as Fwd;

/// A `p11fwd server -f` builder for `token` with this package's freshly built binary (serving
/// `token.uri()` unless URIs are added).
pub fn builder(token: &TestToken) -> ForwarderServerBuilder {
    ForwarderServer::builder(token).binary(bin())
}

/// `p11fwd server -f` serving `token.uri()`, with this package's binary.
#[track_caller]
pub fn start(token: &TestToken) -> Fwd {
    builder(token).start()
}

/// Wire clients of a running forwarder.
pub trait FwdExt {
    /// A wire client offering `offer`, after RPC C_Initialize.
    fn client(&self, offer: u8) -> Client;
}

impl FwdExt for ForwarderServer {
    fn client(&self, offer: u8) -> Client {
        connect(self.socket_path(), offer)
    }
}

/// A wire client connected to `socket`, offering `offer`, after RPC C_Initialize.
pub fn connect(socket: &Path, offer: u8) -> Client {
    let opts = Options {
        offer,
        timeout: Duration::from_secs(60),
        ..Options::default()
    };
    let c = Client::connect(socket, opts).unwrap();
    c.initialize(None).unwrap();
    c
}

/// The `/proc/<pid>/task/<tid>` directories of the server's threads named `name` (none if the
/// server is gone).
pub fn server_threads(fwd: &ForwarderServer, name: &str) -> Vec<PathBuf> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", fwd.pid())) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| Some(t.ok()?.path()))
        .filter(|dir| std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == name))
        .collect()
}

/// Open a RW session on the first slot.
pub fn session(c: &Client) -> u64 {
    let slots = c.slots(true).unwrap();
    c.open_session(slots[0], CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap()
}

/// Find the objects with `label` and `class`.
pub fn find(c: &Client, s: u64, label: &str, class: u64) -> Vec<u64> {
    c.find_all(
        s,
        vec![
            Attribute::ulong(CKA_CLASS, class),
            Attribute::bytes(CKA_LABEL, label.as_bytes().to_vec()),
        ],
        16,
    )
    .unwrap()
}

/// The one object with `label` and `class`.
#[track_caller]
pub fn find_one(c: &Client, s: u64, label: &str, class: u64) -> u64 {
    let v = find(c, s, label, class);
    assert_eq!(v.len(), 1, "{label}/{class}: {v:?}");
    v[0]
}

/// The CK_RV of a failed wire call.
#[track_caller]
pub fn rv_of<T: std::fmt::Debug>(r: p11fwd_wire::Result<T>) -> u64 {
    match r {
        Err(e) => e.rv().0,
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// The session count the module reports for the token (counts every connection's sessions).
pub fn session_count(c: &Client) -> u64 {
    let slots = c.slots(true).unwrap();
    c.get_token_info(slots[0]).unwrap().session_count
}

/// Re-initialise the token, which SoftHSM allows only when no session at all is open
/// (bounded retries while the server finishes cleaning up).
#[track_caller]
pub fn assert_no_module_sessions(c: &Client, token: &TestToken) {
    let label = p11fwd_wire::info::padded::<32>(token.label());
    let mut last = None;
    for _ in 0..500 {
        match c.init_token(0x11, Some(token.so_pin().as_bytes()), &label) {
            Ok(()) => return,
            Err(e) if e.rv().0 == CKR_SESSION_EXISTS => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("C_InitToken: {e}"),
        }
    }
    panic!("sessions still open in the module: {last:?}");
}
