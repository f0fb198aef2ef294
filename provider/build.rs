//! Build script of p11fwd.so.
//!
//! - Links the cdylib with `-z nodelete`: OpenSSL keeps pointers into the provider after
//!   unloading it (error-queue file/function names, registered strings), Rust libraries register
//!   thread-local destructors, and a global `tracing` subscriber lives in our statics, so the
//!   library must never be unmapped. `dlclose` then keeps it loaded (the export test checks the
//!   flag).
//! - Exports the OpenSSL version openssl-sys found (`DEP_OPENSSL_VERSION_NUMBER`) for the
//!   provider's buildinfo.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_OPENSSL_VERSION_NUMBER");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    }
    let version = std::env::var("DEP_OPENSSL_VERSION_NUMBER")
        .ok()
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        // OpenSSL 3 numbers are 0xMNN00PP0L.
        .map(|n| format!("{}.{}.{}", n >> 28, (n >> 20) & 0xff, (n >> 4) & 0xff))
        .unwrap_or_else(|| "3 (version unknown)".to_owned());
    println!("cargo:rustc-env=P11FWD_OPENSSL_BUILD_VERSION={version}");
}
