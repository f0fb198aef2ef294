//! `p11fwd-client.so` in NSS: registered with `modutil -add`, the token's certificates listed by
//! `certutil -L -h all`, and a CSR signed by the token's key with `certutil -R`, verified by
//! `openssl req -verify`. Against a stock `p11-kit server` and `p11fwd server`.
//!
//! The address comes from `P11FWD_SERVER_ADDRESS` here, with `P11_KIT_SERVER_ADDRESS` pointing
//! nowhere: the override wins.
#![allow(clippy::unwrap_used)] // Tests unwrap: a panic is a test failure.

mod client_common;

use std::path::Path;

use client_common::{module, openssl, spki};
use p11fwd_tests::{AnyServer, Key, P11Env, Server, ServerKind, TestToken, require_tool};

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn nss_works(kind: ServerKind) {
    let token = TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::EcP256)
        .build();
    let server = AnyServer::start(kind, &token);
    let dir = tempfile::tempdir().unwrap();
    let env = P11Env::new(format!("unix:path={}/nobody.sock", dir.path().display()))
        .with("P11FWD_SERVER_ADDRESS", server.address());
    let db = format!("sql:{}", dir.path().display());
    let pwfile = dir.path().join("pin.txt");
    std::fs::write(&pwfile, format!("{}\n", token.user_pin())).unwrap();

    let certutil = || env.command(require_tool("certutil"));
    env.run_ok(certutil().args(["-N", "--empty-password", "-d", &db]));
    env.run_ok(
        env.command(require_tool("modutil"))
            .args(["-dbdir", &db, "-add", "p11fwd", "-libfile"])
            .arg(module())
            .arg("-force"),
    );
    env.run_ok(
        env.command(require_tool("modutil"))
            .args(["-dbdir", &db, "-list", "p11fwd"]),
    )
    .assert_stdout_contains("p11fwd-test");

    let listed = env
        .run_ok(
            certutil()
                .args(["-L", "-h", "all", "-d", &db, "-f"])
                .arg(&pwfile),
        )
        .stdout;
    for nick in ["p11fwd-test:rsa2048", "p11fwd-test:ec-p256"] {
        assert!(listed.contains(nick), "{nick} missing:\n{listed}");
    }
    let keys = env
        .run_ok(
            certutil()
                .args(["-K", "-h", "p11fwd-test", "-d", &db, "-f"])
                .arg(&pwfile),
        )
        .stdout;
    assert!(
        keys.contains("rsa2048") && keys.contains("ec-p256"),
        "{keys}"
    );

    let noise = dir.path().join("noise");
    std::fs::write(&noise, [0x5au8; 64]).unwrap();
    // The key by its CKA_ID (certutil's nickname lookup for -k asks for the PIN on a terminal).
    for key in [Key::Rsa2048, Key::EcP256] {
        let label = key.label();
        let csr = dir.path().join(format!("{label}.csr"));
        env.run_ok(
            certutil()
                .args(["-R", "-d", &db, "-h", "p11fwd-test", "-k"])
                .arg(key.id_hex())
                .args(["-s", &format!("CN={label} via p11fwd, O=p11fwd-test"), "-o"])
                .arg(&csr)
                .arg("-f")
                .arg(&pwfile)
                .arg("-z")
                .arg(&noise),
        );
        let checked = openssl(&[
            "req",
            "-in",
            &s(&csr),
            "-inform",
            "DER",
            "-verify",
            "-noout",
            "-subject",
        ]);
        assert!(
            format!("{}{}", checked.stdout, checked.stderr).contains("verify OK"),
            "{checked}"
        );
        assert_eq!(
            spki("req", &csr, true),
            spki("pkey", &token.public_pem(label), false)
        );
    }
}

#[test]
fn nss_stock_server() {
    nss_works(ServerKind::Stock);
}

#[test]
fn nss_p11fwd_server() {
    nss_works(ServerKind::Forwarder);
}
