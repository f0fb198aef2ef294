//! `make dist` and `make install` lay out the install tree the README promises, and what they
//! install works: the dist `p11fwd list` against a stock `p11-kit server`, and OpenSSL finding
//! the provider through `OPENSSL_MODULES`.
//!
//! The tree is laid out from the debug build (`PROFILE=debug`), which `make test` has just
//! made: cargo has nothing to rebuild, so this costs seconds, not a second (release) build of
//! the workspace. The release layout differs only in the directory the files are copied from.

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use std::path::Path;
use std::process::Command;

use p11fwd_tests::{Key, StockServer, TestToken, artifacts, require_tool, run_ok};

fn make(args: &[&str]) -> Command {
    let mut cmd = Command::new(require_tool("make"));
    cmd.arg("--no-print-directory")
        .arg("-C")
        .arg(artifacts::workspace_root())
        .arg("PROFILE=debug")
        .args(args);
    cmd
}

/// The files of an install tree rooted at `root` (`bin/`, `lib/`, `share/`).
fn check_tree(root: &Path, bindir: &str) {
    for f in [
        "bin/p11fwd",
        "lib/ossl-modules/p11fwd.so",
        "lib/pkcs11/p11fwd-client.so",
        "share/p11fwd/p11fwd-client.module",
        "share/p11fwd/p11fwd-server.service",
        "share/p11fwd/p11fwd-server.socket",
    ] {
        let p = root.join(f);
        let meta = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(meta.is_file() && meta.len() > 0, "{}", p.display());
    }
    // The templates are rendered for the prefix: no placeholder is left.
    for t in std::fs::read_dir(root.join("share/p11fwd")).unwrap() {
        let text = std::fs::read_to_string(t.unwrap().path()).unwrap();
        assert!(!text.contains('@'), "{text}");
    }
    let service = std::fs::read_to_string(root.join("share/p11fwd/p11fwd-server.service")).unwrap();
    assert!(
        service.contains(&format!("ExecStart={bindir}/p11fwd server")),
        "{service}"
    );
}

#[test]
fn make_dist_and_install_lay_out_a_tree_that_works() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = tmp.path().join("dist");
    let out = run_ok(&mut make(&["dist", &format!("DIST={}", dist.display())]));
    check_tree(&dist, "/usr/local/bin");
    assert!(out.stdout.contains("install tree in"), "{out}");

    let destdir = tmp.path().join("root");
    run_ok(&mut make(&[
        "install",
        &format!("DIST={}", tmp.path().join("dist-usr").display()),
        &format!("DESTDIR={}", destdir.display()),
        "PREFIX=/usr",
    ]));
    check_tree(&destdir.join("usr"), "/usr/bin");
    let installed = std::fs::read(destdir.join("usr/bin/p11fwd")).unwrap();
    assert_eq!(installed, std::fs::read(dist.join("bin/p11fwd")).unwrap());

    // The dist binary lists a token behind the stock server.
    let token = TestToken::builder().with(Key::EcP256).build();
    let server = StockServer::start(&token);
    let list = run_ok(
        Command::new(dist.join("bin/p11fwd"))
            .args(["list", "--address", &server.address()])
            .env_remove("P11_KIT_SERVER_ADDRESS"),
    );
    assert!(
        list.stdout.contains(&format!("Token: {}", token.label())),
        "{list}"
    );
    assert!(
        list.stdout.contains("public key (EC P-256)") && list.stdout.contains("ec-p256"),
        "{list}"
    );

    // OpenSSL loads the dist provider by name from OPENSSL_MODULES.
    let providers = run_ok(
        Command::new(require_tool("openssl"))
            .args(["list", "-providers", "-provider", "p11fwd"])
            .env("OPENSSL_MODULES", dist.join("lib/ossl-modules"))
            .env_remove("OPENSSL_CONF"),
    );
    assert!(providers.stdout.contains("p11fwd"), "{providers}");
    assert!(providers.stdout.contains("status: active"), "{providers}");
}
