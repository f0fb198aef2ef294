//! p11fwd.so part 2: TLS 1.2 and 1.3 handshakes with `openssl s_server` / `s_client` whose
//! private key is on the token (RSA with rsa_pss_rsae, the PSS-only RSA key with an RSA-PSS
//! certificate made by the token key, ECDSA P-256, Ed25519), on the server side and on the
//! client side (`s_server -Verify`), certificates from files and from the token, against
//! SoftHSM behind both servers. Also the TLS 1.2 RSA key exchange, which decrypts the premaster
//! on the token with `RSA_PKCS1_WITH_TLS_PADDING`.

#![allow(clippy::unwrap_used)]

mod provider_common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use p11fwd_tests::Key;
use p11fwd_tests::run::run_with;
use provider_common::{Env, KINDS, s};

const PROVIDERS: [&str; 4] = ["-provider", "default", "-provider", "p11fwd"];

/// A running `openssl s_server`.
struct TlsServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl TlsServer {
    fn start(env: &Env, name: &str, args: &[&str]) -> Self {
        let log = env.path(&format!("{name}.s_server.log"));
        let mut cmd = env.openssl_cmd(&["s_server"]);
        cmd.args(PROVIDERS)
            .args(["-accept", "127.0.0.1:0", "-naccept", "1", "-www"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("ACCEPT ") {
                        break addr.rsplit(':').next().unwrap().parse().unwrap();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "s_server did not start: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        };
        Self { child, port, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn finish(mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }
}

/// `s_client` against `server`, GET / and the answer.
fn client(env: &Env, server: &TlsServer, args: &[&str]) -> p11fwd_tests::RunOutput {
    let connect = format!("127.0.0.1:{}", server.port);
    let mut cmd = env.openssl_cmd(&["s_client"]);
    cmd.args(PROVIDERS)
        .args(["-connect", &connect, "-ign_eof", "-verify_return_error"])
        .args(args);
    run_with(
        &mut cmd,
        Some(b"GET / HTTP/1.0\r\n\r\n"),
        Duration::from_secs(30),
    )
}

fn check(out: &p11fwd_tests::RunOutput, server_log: &str, what: &str, version: &str) {
    assert!(
        out.stdout.contains("HTTP/1.0 200 ok"),
        "{what}: no HTTP answer\n--- s_client stdout\n{}\n--- s_client stderr\n{}\n--- s_server\n{server_log}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains(&format!("Protocol  : {version}"))
            || out.stdout.contains(&format!("New, {version}")),
        "{what}: not {version}\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Verify return code: 0 (ok)"),
        "{what}\n{}",
        out.stdout
    );
}

/// A certificate for `label` made by the token key itself (`req -x509 -key pkcs11:`), for keys
/// the fixture has no certificate for.
fn self_signed(env: &Env, label: &str) -> PathBuf {
    let cert = env.path(&format!("{label}.tls.crt"));
    env.ok(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &env.key_uri(label),
        "-subj",
        &format!("/CN={label}"),
        "-days",
        "2",
        "-out",
        s(&cert),
    ]);
    cert
}

fn cert_for(env: &Env, label: &str) -> PathBuf {
    match label {
        "rsa2048" | "ec-p256" => env.token.cert_pem(label),
        _ => self_signed(env, label),
    }
}

/// A software CA-less peer: a P-256 key and self-signed certificate in files.
fn software_peer(env: &Env, name: &str) -> (PathBuf, PathBuf) {
    let key = env.path(&format!("{name}.key"));
    let cert = env.path(&format!("{name}.crt"));
    env.soft_ok(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        s(&key),
        "-out",
        s(&cert),
        "-subj",
        &format!("/CN={name}"),
        "-days",
        "2",
    ]);
    (key, cert)
}

const KEYS: [Key; 4] = [Key::Rsa2048, Key::RsaPss, Key::EcP256, Key::Ed25519];

#[test]
fn tls_servers_with_token_keys() {
    for kind in KINDS {
        let env = Env::new(kind, &KEYS);
        for key in KEYS {
            let label = key.label();
            let cert = cert_for(&env, label);
            for version in ["TLSv1.3", "TLSv1.2"] {
                let flag = if version == "TLSv1.3" {
                    "-tls1_3"
                } else {
                    "-tls1_2"
                };
                let what = format!("{kind}, server key {label}, {version}");
                let server = TlsServer::start(
                    &env,
                    &format!("{label}-{flag}"),
                    &["-key", &env.key_uri(label), "-cert", s(&cert), flag],
                );
                // The key is loaded before ACCEPT; the handshake itself is one signature.
                env.take_round_trips();
                let out = client(
                    &env,
                    &server,
                    &["-CAfile", s(&cert), "-servername", label, "-trace"],
                );
                let trips = env.take_round_trips();
                let log = server.finish();
                check(&out, &log, &what, version);
                assert_eq!(trips, 1, "{what}: round trips per handshake");
                // The server's one handshake signature, with the scheme its key calls for.
                assert_eq!(
                    signature_schemes(&out.stdout),
                    [expected_scheme(key)],
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn tls_clients_with_token_keys_and_server_verify() {
    for kind in KINDS {
        let env = Env::new(kind, &KEYS);
        let (server_key, server_cert) = software_peer(&env, "server");
        for key in KEYS {
            let label = key.label();
            let cert = cert_for(&env, label);
            for version in ["TLSv1.3", "TLSv1.2"] {
                let flag = if version == "TLSv1.3" {
                    "-tls1_3"
                } else {
                    "-tls1_2"
                };
                let what = format!("{kind}, client key {label}, {version}");
                let trace = env.path(&format!("client-{label}-{flag}.trace"));
                let server = TlsServer::start(
                    &env,
                    &format!("client-{label}-{flag}"),
                    &[
                        "-trace",
                        "-msgfile",
                        s(&trace),
                        "-key",
                        s(&server_key),
                        "-cert",
                        s(&server_cert),
                        "-Verify",
                        "1",
                        "-verify_return_error",
                        "-CAfile",
                        s(&cert),
                        flag,
                    ],
                );
                let out = client(
                    &env,
                    &server,
                    &[
                        "-CAfile",
                        s(&server_cert),
                        "-key",
                        &env.key_uri(label),
                        "-cert",
                        s(&cert),
                    ],
                );
                let log = server.finish();
                check(&out, &log, &what, version);
                // The server's (software P-256) signature, then the client's token key's.
                let trace = std::fs::read_to_string(&trace).unwrap();
                assert_eq!(
                    signature_schemes(&trace),
                    ["ecdsa_secp256r1_sha256", expected_scheme(key)],
                    "{what}"
                );
            }
        }
    }
}

/// The TLS signature scheme each handshake signature was made with, in order, from `-trace`
/// output (`Signature Algorithm: rsa_pss_rsae_sha256 (0x0804)` in CertificateVerify, and in
/// TLS 1.2's ServerKeyExchange).
fn signature_schemes(trace: &str) -> Vec<&str> {
    trace
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Signature Algorithm: "))
        .filter(|l| l.contains("(0x"))
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

/// The scheme a token key must sign TLS 1.2 and 1.3 handshakes with: RSA keys PSS with the
/// rsaEncryption public key (rsa_pss_rsae, as TLS 1.3 requires), the PSS-only key PSS with its
/// RSA-PSS certificate (rsa_pss_pss), EC and Ed25519 keys their own.
fn expected_scheme(key: Key) -> &'static str {
    match key {
        Key::Rsa2048 => "rsa_pss_rsae_sha256",
        Key::RsaPss => "rsa_pss_pss_sha256",
        Key::EcP256 => "ecdsa_secp256r1_sha256",
        Key::Ed25519 => "ed25519",
        other => panic!("no TLS scheme expected for {other:?}"),
    }
}

/// Certificates from the token (`-cert pkcs11:...;type=cert`) on both sides, and the TLS 1.2
/// RSA key exchange (the server decrypts the premaster on the token).
#[test]
fn tls_with_token_certificates_and_rsa_key_exchange() {
    for kind in KINDS {
        let env = Env::new(kind, &[Key::Rsa2048, Key::EcP256]);
        let cert_uri = |label: &str| {
            format!(
                "{};type=cert?pin-value={}",
                env.token.object_uri(label),
                env.token.user_pin()
            )
        };
        // Server: key and certificate from the token.
        let server = TlsServer::start(
            &env,
            "token-cert-server",
            &[
                "-key",
                &env.key_uri("ec-p256"),
                "-cert",
                &cert_uri("ec-p256"),
            ],
        );
        let out = client(
            &env,
            &server,
            &["-CAfile", s(&env.token.cert_pem("ec-p256"))],
        );
        check(
            &out,
            &server.finish(),
            &format!("{kind}: server cert from token"),
            "TLSv1.3",
        );
        // Client: key and certificate from the token.
        let (server_key, server_cert) = software_peer(&env, "server");
        let server = TlsServer::start(
            &env,
            "token-cert-client",
            &[
                "-key",
                s(&server_key),
                "-cert",
                s(&server_cert),
                "-Verify",
                "1",
                "-verify_return_error",
                "-CAfile",
                s(&env.token.cert_pem("rsa2048")),
            ],
        );
        let out = client(
            &env,
            &server,
            &[
                "-CAfile",
                s(&server_cert),
                "-key",
                &env.key_uri("rsa2048"),
                "-cert",
                &cert_uri("rsa2048"),
            ],
        );
        check(
            &out,
            &server.finish(),
            &format!("{kind}: client cert from token"),
            "TLSv1.3",
        );
        // TLS 1.2 with the RSA key exchange: the premaster is decrypted on the token.
        let server = TlsServer::start(
            &env,
            "rsa-kx",
            &[
                "-key",
                &env.key_uri("rsa2048"),
                "-cert",
                s(&env.token.cert_pem("rsa2048")),
                "-tls1_2",
                "-cipher",
                "AES128-GCM-SHA256",
            ],
        );
        env.take_round_trips();
        let out = client(
            &env,
            &server,
            &[
                "-CAfile",
                s(&env.token.cert_pem("rsa2048")),
                "-cipher",
                "AES128-GCM-SHA256",
            ],
        );
        let trips = env.take_round_trips();
        check(
            &out,
            &server.finish(),
            &format!("{kind}: RSA key exchange"),
            "TLSv1.2",
        );
        assert_eq!(
            trips, 1,
            "{kind}: one round trip for the premaster decryption"
        );
        assert!(out.stdout.contains("AES128-GCM-SHA256"), "{}", out.stdout);
    }
}

/// TLS 1.3 (rsa_pss_rsae) and 1.2 with an RSA key the token lets sign only with raw RSA, like
/// cards without PSS (libp11 #628: "OpenPGP cards without PSS break TLS 1.3"): p11fwd pads.
#[test]
fn tls_with_a_raw_rsa_only_key() {
    for kind in KINDS {
        let env = Env::new(kind, &[Key::EcP256]);
        env.token.generate_key_pair(
            "rsa-raw",
            "0b",
            "rsa:2048",
            &["--allowed-mechanisms", "RSA-X-509", "--usage-sign"],
        );
        // Made by the token key itself: PKCS#1 v1.5 padded here.
        let cert = self_signed(&env, "rsa-raw");
        for (version, flag) in [("TLSv1.3", "-tls1_3"), ("TLSv1.2", "-tls1_2")] {
            let what = format!("{kind}, raw-RSA-only server key, {version}");
            let server = TlsServer::start(
                &env,
                &format!("rsa-raw{flag}"),
                &["-key", &env.key_uri("rsa-raw"), "-cert", s(&cert), flag],
            );
            let out = client(
                &env,
                &server,
                &["-CAfile", s(&cert), "-servername", "rsa-raw", "-trace"],
            );
            let log = server.finish();
            check(&out, &log, &what, version);
            assert_eq!(
                signature_schemes(&out.stdout),
                ["rsa_pss_rsae_sha256"],
                "{what}"
            );
        }
    }
}
