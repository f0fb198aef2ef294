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

#[test]
fn a_pin_source_in_the_uri_lists_private_objects() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let server = StockServer::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let pin = dir.path().join("pin");
    std::fs::write(&pin, format!("{}\n", token.user_pin())).unwrap();
    let uri = format!(
        "pkcs11:token={}?pin-source=file:{}",
        token.label(),
        p11fwd_tests::percent_encode(&pin.to_string_lossy())
    );
    let out = run_ok(&mut list(&server, &[&uri], None));
    let objs = objects(&out.stdout);
    assert!(
        objs.iter()
            .any(|(u, d)| u.contains("object=ec-p256;type=private") && d.contains("P-256")),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("private objects not shown"));
    // A wrong path is an error naming the file, not a listing without the private objects.
    let bad = format!(
        "pkcs11:token={}?pin-source=file:/nonexistent/pin",
        token.label()
    );
    let out = run_fail(&mut list(&server, &[&bad], None));
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("/nonexistent/pin"),
        "{out}"
    );
}

/// `p11fwd list -l` asks for the PIN on the terminal (a pseudo-terminal made by `script` from
/// util-linux), without echoing it, and then shows the private objects.
#[test]
fn login_prompts_for_the_pin_on_the_terminal() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::Duration;

    let token = TestToken::builder().with(Key::EcP256).build();
    let server = StockServer::start(&token);
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let line = format!(
        "{} list -l --address {}",
        quote(&artifacts::forwarder_bin().to_string_lossy()),
        quote(&server.address())
    );
    let mut child = Command::new(require_tool("script"))
        .args(["-qec", &line, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .env_remove("P11_KIT_SERVER_ADDRESS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    // A guard against a hang, not a timing assertion: the prompt comes at once.
    let limit = Duration::from_secs(60);
    let mut seen = Vec::new();
    let prompt = format!("Enter PIN for {}: ", token.label());
    while !String::from_utf8_lossy(&seen).contains(&prompt) {
        match rx.recv_timeout(limit) {
            Ok(chunk) => seen.extend(chunk),
            Err(e) => {
                let _ = child.kill();
                panic!("no PIN prompt ({e}): {}", String::from_utf8_lossy(&seen));
            }
        }
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{}\n", token.user_pin()).as_bytes())
        .unwrap();
    while let Ok(chunk) = rx.recv_timeout(limit) {
        seen.extend(chunk);
    }
    let status = child.wait().unwrap();
    drop(stdin);
    let out = String::from_utf8_lossy(&seen).replace("\r\n", "\n");
    assert!(status.success(), "{status}: {out}");
    assert!(
        objects(&out)
            .iter()
            .any(|(u, _)| u.contains("object=ec-p256;type=private")),
        "{out}"
    );
    assert!(!out.contains(token.user_pin()), "the PIN was echoed: {out}");
}

/// Labels and IDs longer than the first buffers (256 bytes) are fetched whole, so their URIs
/// resolve; a label that is not UTF-8 is left out of its object's URI instead of failing the
/// token's listing.
#[test]
fn long_and_non_utf8_attributes_still_give_uris_that_resolve() {
    use p11fwd_wire::Attribute;
    use p11fwd_wire::client::Client;
    use p11fwd_wire::consts::*;
    use p11fwd_wire::transport::blocking::Options;

    let token = TestToken::builder().with(Key::EcP256).build();
    let server = StockServer::start(&token);
    let long_label = "L".repeat(300);
    let long_id = vec![0xa5u8; 300];
    {
        let c =
            Client::connect_initialized(server.socket_path(), Options::default(), None).unwrap();
        let s = c
            .open_session(0x11, CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .unwrap();
        c.login(s, CKU_USER, Some(token.user_pin().as_bytes()))
            .unwrap();
        let key = |label: &[u8], id: &[u8]| {
            c.generate_key(
                s,
                p11fwd_wire::Mechanism::new(CKM_AES_KEY_GEN),
                vec![
                    Attribute::ulong(CKA_VALUE_LEN, 16),
                    Attribute::bool(CKA_TOKEN, true),
                    Attribute::bytes(CKA_LABEL, label),
                    Attribute::bytes(CKA_ID, id),
                ],
            )
            .unwrap();
        };
        key(long_label.as_bytes(), b"\x31");
        key(b"long-id", &long_id);
        key(b"bad\xff\xfelabel", b"\x32");
        c.create_object(
            s,
            vec![
                Attribute::ulong(CKA_CLASS, CKO_DATA),
                Attribute::bool(CKA_TOKEN, true),
                Attribute::bool(CKA_PRIVATE, false),
                Attribute::bytes(CKA_LABEL, format!("data-{long_label}")),
                Attribute::bytes(CKA_VALUE, "x"),
            ],
        )
        .unwrap();
        c.finalize().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let pin = dir.path().join("pin");
    std::fs::write(&pin, format!("{}\n", token.user_pin())).unwrap();
    let out = run_ok(&mut list(&server, &[], Some(&pin)));
    let objs = objects(&out.stdout);
    let id_hex: String = long_id.iter().map(|b| format!("%{b:02X}")).collect();
    let find = |what: &str, pred: &dyn Fn(&str) -> bool| {
        objs.iter()
            .find(|(u, _)| pred(u))
            .unwrap_or_else(|| panic!("{what}: {}", out.stdout))
            .0
            .clone()
    };
    let uris = [
        find("long label", &|u| {
            u.contains(&format!("object={long_label};type=secret-key"))
        }),
        find("long id", &|u| {
            u.contains(&format!("id={id_hex};object=long-id"))
        }),
        find("non-UTF-8 label", &|u| u.contains("id=%32;type=secret-key")),
        find("long data label", &|u| {
            u.contains(&format!("object=data-{long_label};type=data"))
        }),
    ];
    assert!(
        out.stdout.contains("(not UTF-8: not in the URI)"),
        "{}",
        out.stdout
    );
    // The other objects are all there too.
    assert!(
        objs.iter()
            .any(|(u, _)| u.contains("object=ec-p256;type=private")),
        "{}",
        out.stdout
    );
    for uri in &uris {
        let again = run_ok(&mut list(&server, &[uri], Some(&pin)));
        let found = objects(&again.stdout);
        assert_eq!(found.len(), 1, "{uri}: {}", again.stdout);
        assert_eq!(&found[0].0, uri);
    }
}
