//! `p11fwd list` against a SoftHSM token behind the stock `p11-kit server`: every object is
//! shown, each with a URI that resolves back to exactly that object, both in `p11fwd list`
//! itself and in GnuTLS's independent URI matcher (`p11tool`).

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use p11fwd_tests::{
    Key, P11KIT_CLIENT_MODULE, StockServer, TestToken, artifacts, require_tool, run_fail, run_ok,
};

fn list(server: &StockServer, args: &[&str], pin_file: Option<&Path>) -> Command {
    let mut cmd = Command::new(artifacts::forwarder_bin());
    cmd.arg("list")
        .arg("--address")
        .arg(server.address())
        .args(args);
    if let Some(p) = pin_file {
        cmd.arg("--pin-source").arg(p);
    }
    // Make sure discovery is not what finds the server.
    cmd.env_remove("P11_KIT_SERVER_ADDRESS");
    cmd
}

/// (URI, description) of every object in `p11fwd list` output.
fn objects(out: &str) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let mut desc = None;
    for line in out.lines() {
        let line = line.trim();
        if let Some(d) = line.strip_prefix("Object: ") {
            desc = Some(d.to_owned());
        } else if let Some(uri) = line.strip_prefix("URI: ")
            && let Some(d) = desc.take()
        {
            v.push((uri.to_owned(), d));
        }
    }
    v
}

#[test]
fn lists_every_object_with_uris_that_resolve_back() {
    let token = TestToken::full();
    let server = StockServer::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let pin = dir.path().join("pin");
    std::fs::write(&pin, format!("{}\n", token.user_pin())).unwrap();

    let out = run_ok(&mut list(&server, &[], Some(&pin)));
    assert!(
        out.stdout.contains(&format!("Token: {}", token.label())),
        "{}",
        out.stdout
    );
    let objs = objects(&out.stdout);
    let mut per_label: BTreeMap<String, usize> = BTreeMap::new();
    for (uri, _) in &objs {
        let parsed = p11fwd_conf::Pkcs11Uri::parse(uri).unwrap();
        *per_label
            .entry(parsed.object().unwrap().to_owned())
            .or_default() += 1;
    }
    for key in token.keys() {
        let expected = match (key.is_pair(), key.has_certificate()) {
            (false, _) => 1,
            (true, false) => 2,
            (true, true) => 3,
        };
        assert_eq!(
            per_label.get(key.label()),
            Some(&expected),
            "{}: {}",
            key.label(),
            out.stdout
        );
    }
    // Descriptions carry class, key type and size.
    let desc = |label: &str, class: &str| {
        objs.iter()
            .find(|(u, _)| u.contains(&format!("object={label};type={class}")))
            .map(|(_, d)| d.clone())
            .unwrap_or_default()
    };
    assert_eq!(desc("rsa2048", "private"), "private key (RSA-2048)");
    assert_eq!(desc("ec-p384", "public"), "public key (EC P-384)");
    assert_eq!(desc("ed25519", "private"), "private key (Ed25519)");
    assert_eq!(desc("rsa2048", "cert"), "certificate (X.509)");
    assert_eq!(desc("aes256", "secret-key"), "secret key (AES-256)");

    let p11tool = require_tool("p11tool");
    for (uri, _) in &objs {
        // Our own matcher: exactly this object comes back.
        let again = run_ok(&mut list(&server, &[uri], Some(&pin)));
        let found = objects(&again.stdout);
        assert_eq!(found.len(), 1, "{uri}: {}", again.stdout);
        assert_eq!(&found[0].0, uri);
        // GnuTLS, through the stock client module: the same single object, same URI.
        let out = server.p11env().run_ok(
            Command::new(&p11tool)
                .env("GNUTLS_PIN", token.user_pin())
                .args(["--provider", P11KIT_CLIENT_MODULE, "--list-all", "--login"])
                .arg(uri),
        );
        let urls: Vec<&str> = out
            .stdout
            .lines()
            .filter_map(|l| l.trim().strip_prefix("URL: "))
            .collect();
        assert_eq!(urls, vec![uri.as_str()], "p11tool on {uri}");
    }
}

#[test]
fn without_a_pin_only_public_objects_and_a_hint() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let server = StockServer::start(&token);
    let out = run_ok(&mut list(&server, &[], None));
    let objs = objects(&out.stdout);
    assert!(
        objs.iter().all(|(u, _)| !u.contains("type=private")),
        "{}",
        out.stdout
    );
    assert!(objs.iter().any(|(u, _)| u.contains("type=cert")));
    assert!(out.stdout.contains("private objects not shown"));
}

#[test]
fn errors_are_clear_and_fail() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let server = StockServer::start(&token);
    let out = run_fail(&mut list(
        &server,
        &["pkcs11:object=ec-p256?pin-value=000000"],
        None,
    ));
    assert!(out.stdout.contains("wrong PIN"), "{}", out.stdout);
    let out = run_fail(&mut list(&server, &["pkcs11:token=no-such-token"], None));
    assert!(
        out.stderr
            .contains("no token matches pkcs11:token=no-such-token"),
        "{}",
        out.stderr
    );
    let out = run_fail(&mut list(&server, &["pkcs11:object=%zz"], None));
    assert!(out.stderr.contains("invalid URI"), "{}", out.stderr);
    let mut cmd = Command::new(artifacts::forwarder_bin());
    cmd.args(["list", "--address", "unix:path=/nonexistent/p11fwd.sock"]);
    let out = run_fail(&mut cmd);
    assert!(
        out.stderr
            .contains("cannot connect to a p11-kit server at unix:path=/nonexistent/p11fwd.sock"),
        "{}",
        out.stderr
    );
    // The PIN never appears in output.
    assert!(!out.stderr.contains("000000"));
}

#[test]
fn discovery_finds_the_server_like_p11_kit_client() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let server = StockServer::start(&token);
    let mut cmd = Command::new(artifacts::forwarder_bin());
    cmd.arg("list")
        .env("P11_KIT_SERVER_ADDRESS", server.address());
    let out = run_ok(&mut cmd);
    assert!(out.stdout.contains("ec-p256"));
    // The default address is $XDG_RUNTIME_DIR/p11-kit/pkcs11.
    let runtime = tempfile::tempdir().unwrap();
    std::fs::create_dir(runtime.path().join("p11-kit")).unwrap();
    std::os::unix::fs::symlink(server.socket_path(), runtime.path().join("p11-kit/pkcs11"))
        .unwrap();
    let mut cmd = Command::new(artifacts::forwarder_bin());
    cmd.arg("list")
        .env_remove("P11_KIT_SERVER_ADDRESS")
        .env("XDG_RUNTIME_DIR", runtime.path());
    let out = run_ok(&mut cmd);
    assert!(out.stdout.contains("ec-p256"));
    let mut cmd = Command::new(artifacts::forwarder_bin());
    cmd.arg("list")
        .env_remove("P11_KIT_SERVER_ADDRESS")
        .env("XDG_RUNTIME_DIR", "/nonexistent");
    let out = run_fail(&mut cmd);
    assert!(
        out.stderr
            .contains("/nonexistent/p11-kit/pkcs11 (default; set P11_KIT_SERVER_ADDRESS)"),
        "{}",
        out.stderr
    );
}
