//! `p11fwd-client.so` in OpenSSH: `ssh-keygen -D` prints the token's public keys, and
//! `ssh -I` logs in to an `sshd` on 127.0.0.1 (own config, port, host key; the token's P-256 key
//! in `AuthorizedKeysFile`) and runs a command. The PIN comes from `SSH_ASKPASS`. Against a
//! stock `p11-kit server` and `p11fwd server`.
//!
//! `sshd` runs as the test user (root on the CI machine): see `p11fwd_tests::Sshd`.
#![allow(clippy::unwrap_used)] // Tests unwrap: a panic is a test failure.

mod client_common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use client_common::module;
use p11fwd_tests::{AnyServer, Key, Server, ServerKind, Sshd, TestToken, require_tool, run_ok};

/// The public key in OpenSSH form (`type base64`) of a PEM SubjectPublicKeyInfo.
fn ssh_public(pem: &Path) -> String {
    let out = run_ok(
        Command::new(require_tool("ssh-keygen"))
            .args(["-i", "-m", "PKCS8", "-f"])
            .arg(pem),
    );
    let mut fields = out.stdout.split_whitespace();
    format!("{} {}", fields.next().unwrap(), fields.next().unwrap())
}

fn ssh_works(kind: ServerKind) {
    let token = TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::EcP256)
        .build();
    let server = AnyServer::start(kind, &token);
    let env = server.p11env();
    let ours = module();

    // ssh-keygen -D: the token's public keys.
    let listed = env
        .run_ok(env.command(require_tool("ssh-keygen")).arg("-D").arg(&ours))
        .stdout;
    let ec = ssh_public(&token.public_pem("ec-p256"));
    let rsa = ssh_public(&token.public_pem("rsa2048"));
    assert!(listed.contains(&ec), "{ec} missing:\n{listed}");
    assert!(listed.contains(&rsa), "{rsa} missing:\n{listed}");

    // ssh -I: a login with the token's P-256 key.
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(dir.path(), &format!("{ec} p11fwd-test\n"), &[]);
    let askpass = dir.path().join("askpass");
    std::fs::write(&askpass, format!("#!/bin/sh\necho {}\n", token.user_pin())).unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = env.run(
        env.command(require_tool("ssh"))
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .args(sshd.client_args())
            .arg("-I")
            .arg(&ours)
            .args(["root@127.0.0.1", "echo", "p11fwd-ssh-login-ok"]),
    );
    assert!(
        out.success() && out.stdout.contains("p11fwd-ssh-login-ok"),
        "{out}\n--- sshd ---\n{}",
        sshd.log()
    );
}

#[test]
fn ssh_stock_server() {
    ssh_works(ServerKind::Stock);
}

#[test]
fn ssh_p11fwd_server() {
    ssh_works(ServerKind::Forwarder);
}
