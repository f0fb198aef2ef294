//! p11fwd.so part 2: deployments with nothing but openssl.cnf and files, against SoftHSM behind
//! both servers:
//! - `p11fwd uri-pem URI -o key.pem` writes a URI-PEM key file;
//! - an openssl.cnf that activates `default` and `p11fwd` makes `openssl` commands work without
//!   `-provider` (with the key file, with a `pkcs11:` URI, PIN from a file named in the config);
//! - curl 7.88.1 (Debian 12, no provider support of its own) does mutual TLS with `--key
//!   key.pem --cert client.crt` against `openssl s_server -Verify 1 -www` on 127.0.0.1 with a
//!   CA made here: HTTP 200.
//!
//! This is the recipe of notes-provider.md "openssl.cnf deployment".

#![allow(clippy::unwrap_used)]

mod provider_common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use p11fwd_tests::run::{run, run_with};
use p11fwd_tests::{Key, artifacts, require_tool};
use provider_common::{Env, KINDS, assert_ok, s};

/// The openssl.cnf of the recipe.
fn write_config(env: &Env, pin_file: &Path) -> PathBuf {
    let cnf = env.path("p11fwd.cnf");
    std::fs::write(
        &cnf,
        format!(
            "openssl_conf = openssl_init\n\
             \n\
             [openssl_init]\n\
             providers = provider_sect\n\
             \n\
             # default first: software keys, TLS ephemeral keys and digests come from it.\n\
             [provider_sect]\n\
             default = default_sect\n\
             p11fwd = p11fwd_sect\n\
             \n\
             [default_sect]\n\
             activate = 1\n\
             \n\
             [p11fwd_sect]\n\
             activate = 1\n\
             p11fwd-server-address = {}\n\
             pkcs11-module-token-pin = file:{}\n",
            env.address(),
            pin_file.display()
        ),
    )
    .unwrap();
    cnf
}

/// A command with only the config file: no `-provider`, no P11FWD_SERVER_ADDRESS.
fn with_config(env: &Env, cnf: &Path, program: &Path) -> Command {
    let mut cmd = Command::new(program);
    env.provider_env(&mut cmd);
    cmd.env("OPENSSL_CONF", cnf)
        .env_remove("P11FWD_SERVER_ADDRESS");
    cmd
}

/// CA, server and client certificates (the client's for the token key, through its
/// URI-PEM file and the config).
struct Pki {
    ca: PathBuf,
    server_key: PathBuf,
    server_cert: PathBuf,
    client_cert: PathBuf,
}

fn pki(env: &Env, cnf: &Path, key_pem: &Path) -> Pki {
    let p = |n: &str| env.path(n);
    let (ca_key, ca) = (p("ca.key"), p("ca.crt"));
    env.soft_ok(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        s(&ca_key),
        "-out",
        s(&ca),
        "-subj",
        "/CN=p11fwd test CA",
        "-days",
        "2",
    ]);
    std::fs::write(
        p("ext.cnf"),
        "[server]\nsubjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n\
         [client]\nextendedKeyUsage = clientAuth\n",
    )
    .unwrap();
    let (server_key, server_csr, server_cert) = (p("server.key"), p("server.csr"), p("server.crt"));
    env.soft_ok(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        s(&server_key),
        "-out",
        s(&server_csr),
        "-subj",
        "/CN=127.0.0.1",
    ]);
    env.soft_ok(&[
        "x509",
        "-req",
        "-in",
        s(&server_csr),
        "-CA",
        s(&ca),
        "-CAkey",
        s(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        s(&p("ext.cnf")),
        "-extensions",
        "server",
        "-out",
        s(&server_cert),
    ]);
    // The client's CSR is signed by the token key, through the key file and the config only.
    let client_csr = p("client.csr");
    let out = run(with_config(env, cnf, Path::new("openssl")).args([
        "req",
        "-new",
        "-key",
        s(key_pem),
        "-subj",
        "/CN=p11fwd client",
        "-out",
        s(&client_csr),
    ]));
    assert_ok(&out, "req -new with the URI-PEM key and openssl.cnf only");
    let client_cert = p("client.crt");
    env.soft_ok(&[
        "x509",
        "-req",
        "-in",
        s(&client_csr),
        "-CA",
        s(&ca),
        "-CAkey",
        s(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        s(&p("ext.cnf")),
        "-extensions",
        "client",
        "-out",
        s(&client_cert),
    ]);
    Pki {
        ca,
        server_key,
        server_cert,
        client_cert,
    }
}

/// `openssl s_server -Verify 1 -www` with a software key; returns (child, port, log). The
/// caller waits for the child (it exits after one connection).
#[allow(
    clippy::zombie_processes,
    reason = "the caller waits for the returned child"
)]
fn s_server(env: &Env, pki: &Pki) -> (std::process::Child, u16, PathBuf) {
    let log = env.path("s_server.log");
    let mut cmd = env.openssl_cmd(&[
        "s_server",
        "-accept",
        "127.0.0.1:0",
        "-naccept",
        "1",
        "-www",
        "-Verify",
        "1",
        "-verify_return_error",
        "-CAfile",
        s(&pki.ca),
        "-cert",
        s(&pki.server_cert),
        "-key",
        s(&pki.server_key),
    ]);
    cmd.stdin(Stdio::null())
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
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if let Some(addr) = line.strip_prefix("ACCEPT ") {
                    let port = addr.rsplit(':').next().unwrap().parse().unwrap();
                    return (child, port, log);
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "s_server: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
    }
}

#[test]
fn openssl_cnf_only_uri_pem_and_curl_mutual_tls() {
    let curl = require_tool("curl");
    for kind in KINDS {
        for key in [Key::EcP256, Key::Rsa2048] {
            let env = Env::new(kind, &[key]);
            let label = key.label();
            let what = format!("{kind}, {label}");
            let pin_file = env.path("pin.txt");
            std::fs::write(&pin_file, "123456\n").unwrap();
            let cnf = write_config(&env, &pin_file);
            // The key file, written by `p11fwd uri-pem` for a URI without a PIN.
            let key_pem = env.path("client-key.pem");
            let uri = format!("{};type=private", env.token.object_uri(label));
            let out = run(Command::new(artifacts::forwarder_bin()).args([
                "uri-pem",
                &uri,
                "-o",
                s(&key_pem),
            ]));
            assert_ok(&out, "p11fwd uri-pem");
            assert_eq!(
                p11fwd_conf::uripem::decode_pem(&std::fs::read_to_string(&key_pem).unwrap())
                    .unwrap(),
                uri
            );
            // openssl without -provider: the key file, and a pkcs11: URI, PIN from the config.
            let public = env.path("from-file.pub");
            let out = run(with_config(&env, &cnf, Path::new("openssl")).args([
                "pkey",
                "-in",
                s(&key_pem),
                "-pubout",
                "-out",
                s(&public),
            ]));
            assert_ok(&out, &format!("{what}: pkey -in key.pem"));
            assert_eq!(
                std::fs::read(&public).unwrap(),
                std::fs::read(env.token.public_pem(label)).unwrap(),
                "{what}"
            );
            let out = run(with_config(&env, &cnf, Path::new("openssl")).args([
                "dgst", "-sha256", "-sign", &uri, "-out", "uri.sig", "data.txt",
            ]));
            assert_ok(&out, &format!("{what}: dgst -sign pkcs11:"));
            let out = env.soft(&[
                "dgst",
                "-sha256",
                "-verify",
                s(&env.token.public_pem(label)),
                "-signature",
                "uri.sig",
                "data.txt",
            ]);
            assert!(out.stdout.contains("Verified OK"), "{what}: {}", out.stderr);
            // curl 7.88.1: mutual TLS with the token key through the key file.
            let pki = pki(&env, &cnf, &key_pem);
            let (mut server, port, log) = s_server(&env, &pki);
            env.take_round_trips();
            let url = format!("https://127.0.0.1:{port}/");
            let out = run_with(
                with_config(&env, &cnf, &curl).args([
                    "-sS",
                    "--max-time",
                    "30",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--cacert",
                    s(&pki.ca),
                    "--cert",
                    s(&pki.client_cert),
                    "--key",
                    s(&key_pem),
                    &url,
                ]),
                None,
                Duration::from_secs(40),
            );
            let trips = env.take_round_trips();
            let _ = server.wait();
            let server_log = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                out.stdout.trim() == "200",
                "{what}: curl said {:?}\n{}\n--- s_server\n{server_log}",
                out.stdout,
                out.stderr
            );
            println!(
                "{what}: curl mutual TLS HTTP 200; {trips} round trips (key load + 1 signature)"
            );
            assert!(trips <= 6, "{what}: {trips} round trips");
        }
    }
}
