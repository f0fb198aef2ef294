//! Helpers of the `client_*` tests: `p11fwd-client.so` (the debug `libp11fwd_client.so`)
//! driven by real programs against a stock `p11-kit server` or `p11fwd server` (the fixture
//! library's `AnyServer`) that serves a SoftHSM token.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // shared by several test crates

use std::path::{Path, PathBuf};
use std::process::Command;

use p11fwd_tests::{artifacts, require_tool};

/// Our module (fails loudly if it was not built: `cargo build -p p11fwd-client`).
pub fn module() -> PathBuf {
    artifacts::client_module()
}

/// `openssl` with `args`.
#[track_caller]
pub fn openssl(args: &[&str]) -> p11fwd_tests::RunOutput {
    p11fwd_tests::run_ok(Command::new(require_tool("openssl")).args(args))
}

/// The DER SubjectPublicKeyInfo of a PEM public key, certificate or CSR (by `kind`: `pkey`,
/// `x509` or `req`; `der` for DER input).
#[track_caller]
pub fn spki(kind: &str, path: &Path, der: bool) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("pub.pem");
    let inform = if der { "DER" } else { "PEM" };
    let p = path.to_string_lossy();
    let out = pem.to_string_lossy();
    match kind {
        "pkey" => openssl(&["pkey", "-pubin", "-inform", inform, "-in", &p, "-out", &out]),
        other => openssl(&[
            other, "-inform", inform, "-in", &p, "-noout", "-pubkey", "-out", &out,
        ]),
    };
    openssl(&["pkey", "-pubin", "-in", &out, "-outform", "DER"]).stdout_bytes
}

/// The mechanism names in `pkcs11-tool -M` output.
pub fn mechanism_names(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| l.trim().split([',', ' ']).next())
        .map(str::to_owned)
        .collect()
}
