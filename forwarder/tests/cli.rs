//! The command line: daemon mode prints an eval-able snippet with the child's PID, `-k` stops
//! it and removes the socket; a client module is never loaded.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use p11fwd_tests::{Key, P11Env, P11KIT_CLIENT_MODULE, TestToken, require_tool, run_fail, run_ok};

#[test]
fn daemon_snippet_and_kill() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    let out = run_ok(
        Command::new(common::bin())
            .envs(token.env())
            .args(["server", "-s", "--provider"])
            .arg(token.module_path())
            .arg("-n")
            .arg(&socket)
            .arg(token.uri()),
    );
    let mut address = None;
    let mut pid = None;
    for part in out.stdout.split(';').map(str::trim) {
        if let Some(a) = part.strip_prefix("P11_KIT_SERVER_ADDRESS=") {
            address = Some(a.to_owned());
        }
        if let Some(p) = part.strip_prefix("P11_KIT_SERVER_PID=") {
            pid = Some(p.to_owned());
        }
    }
    let (address, pid) = (address.unwrap(), pid.unwrap());
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    let l = P11Env::new(&address).run_ok(Command::new(require_tool("pkcs11-tool")).args([
        "--module",
        P11KIT_CLIENT_MODULE,
        "-L",
    ]));
    assert!(l.stdout.contains(token.label()), "{}", l.stdout);
    let k = run_ok(
        Command::new(common::bin())
            .args(["server", "-k", "-s"])
            .env("P11_KIT_SERVER_PID", &pid),
    );
    assert_eq!(
        k.stdout,
        "unset P11_KIT_SERVER_ADDRESS;\nunset P11_KIT_SERVER_PID;\n"
    );
    for _ in 0..300 {
        if !socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!socket.exists(), "socket not removed on SIGTERM");
}

#[test]
fn refuses_client_modules() {
    let out = run_fail(Command::new(common::bin()).args([
        "server",
        "-f",
        "-p",
        P11KIT_CLIENT_MODULE,
        "-n",
        "/tmp/p11fwd-never.sock",
        "pkcs11:",
    ]));
    assert!(out.stderr.contains("refusing to load"), "{}", out.stderr);
}
