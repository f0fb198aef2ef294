//! `p11fwd-client.so` under OpenSC's `pkcs11-tool` and GnuTLS's `p11tool` and `certtool`,
//! against a stock `p11-kit server` (0.24.1, protocol version 0) and `p11fwd server` (version 2),
//! with the full SoftHSM test token. Signatures and certificates are checked with `openssl`.
#![allow(clippy::unwrap_used)] // Tests unwrap: a panic is a test failure.

mod client_common;

use std::path::Path;
use std::process::Command;

use client_common::{mechanism_names, module, openssl, spki};
use p11fwd_tests::{
    AnyServer, ForwarderServer, P11Env, P11KIT_CLIENT_MODULE, Server, ServerKind, TestToken,
    require_tool,
};

fn pkcs11_tool(env: &P11Env, module: &Path, args: &[&str]) -> Command {
    let mut cmd = env.command(require_tool("pkcs11-tool"));
    cmd.arg("--module").arg(module).args(args);
    cmd
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn pkcs11_tool_works(kind: ServerKind) {
    let token = TestToken::full();
    let server = AnyServer::start(kind, &token);
    let env = server.p11env();
    let ours = module();
    let pin = token.user_pin();
    let dir = tempfile::tempdir().unwrap();
    let file = |n: &str| s(&dir.path().join(n));

    // -L, -O
    env.run_ok(&mut pkcs11_tool(&env, &ours, &["-L"]))
        .assert_stdout_contains("token label        : p11fwd-test");
    let objects = env
        .run_ok(&mut pkcs11_tool(
            &env,
            &ours,
            &["-O", "--login", "--pin", pin],
        ))
        .stdout;
    for label in [
        "rsa2048",
        "rsa-pss",
        "ec-p256",
        "ec-p384",
        "ec-p521",
        "ed25519",
        "ed448",
        "aes256",
        "rsa-always-auth",
    ] {
        assert!(
            objects.contains(&format!("label:      {label}")),
            "{label} missing:\n{objects}"
        );
    }
    assert!(objects.contains("Certificate Object"), "{objects}");

    // -M: no hiding, compared with the stock client on the same server.
    let listing = env.run_ok(&mut pkcs11_tool(&env, &ours, &["-M"])).stdout;
    let ours_m = mechanism_names(&listing);
    let stock_m = mechanism_names(
        &env.run_ok(&mut pkcs11_tool(
            &env,
            Path::new(P11KIT_CLIENT_MODULE),
            &["-M"],
        ))
        .stdout,
    );
    eprintln!(
        "{kind:?}: -M lists {} mechanisms through p11fwd-client.so, {} through p11-kit-client.so",
        ours_m.len(),
        stock_m.len()
    );
    for m in &stock_m {
        assert!(ours_m.contains(m), "{m} hidden by us:\n{listing}");
    }
    for m in [
        "EDDSA",
        "SHA256-RSA-PKCS-PSS",
        "AES-CBC",
        "AES-CBC-PAD",
        "EC-EDWARDS-KEY-PAIR-GEN",
    ] {
        assert!(ours_m.iter().any(|x| x == m), "{m} missing:\n{listing}");
        assert!(
            !stock_m.iter().any(|x| x == m),
            "{m} shown by the stock client"
        );
    }
    assert_eq!(
        ours_m.iter().any(|x| x == "ECDH1-DERIVE"),
        kind == ServerKind::Forwarder
    );

    // --sign / --verify: ECDSA P-256 over a SHA-256 digest, checked by openssl.
    let data = file("data");
    std::fs::write(&data, b"signed through p11fwd-client.so").unwrap();
    let digest = file("digest");
    openssl(&["dgst", "-sha256", "-binary", "-out", &digest, &data]);
    let sig = file("ec.sig");
    env.run_ok(&mut pkcs11_tool(
        &env,
        &ours,
        &[
            "--login",
            "--pin",
            pin,
            "--sign",
            "--id",
            "03",
            "-m",
            "ECDSA",
            "--signature-format",
            "openssl",
            "-i",
            &digest,
            "-o",
            &sig,
        ],
    ));
    openssl(&[
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        &s(&token.public_pem("ec-p256")),
        "-in",
        &digest,
        "-sigfile",
        &sig,
    ]);
    env.run_ok(&mut pkcs11_tool(
        &env,
        &ours,
        &[
            "--verify",
            "--id",
            "03",
            "-m",
            "ECDSA",
            "--signature-format",
            "openssl",
            "-i",
            &digest,
            "--signature-file",
            &sig,
        ],
    ))
    .assert_stdout_contains("Signature is valid");

    // RSA PKCS#1 v1.5 and hashed PSS (hidden by the stock 0.24 client).
    let rsa_sig = file("rsa.sig");
    env.run_ok(&mut pkcs11_tool(
        &env,
        &ours,
        &[
            "--login",
            "--pin",
            pin,
            "--sign",
            "--id",
            "01",
            "-m",
            "SHA256-RSA-PKCS",
            "-i",
            &data,
            "-o",
            &rsa_sig,
        ],
    ));
    openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        &s(&token.public_pem("rsa2048")),
        "-signature",
        &rsa_sig,
        &data,
    ]);
    let pss_sig = file("pss.sig");
    env.run_ok(&mut pkcs11_tool(
        &env,
        &ours,
        &[
            "--login",
            "--pin",
            pin,
            "--sign",
            "--id",
            "02",
            "-m",
            "SHA256-RSA-PKCS-PSS",
            "-i",
            &data,
            "-o",
            &pss_sig,
        ],
    ));
    openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        &s(&token.public_pem("rsa-pss")),
        "-sigopt",
        "rsa_padding_mode:pss",
        "-sigopt",
        "rsa_pss_saltlen:-1",
        "-signature",
        &pss_sig,
        &data,
    ]);
    // Ed25519 (CKM_EDDSA, hidden by every stock client).
    let ed_sig = file("ed.sig");
    env.run_ok(&mut pkcs11_tool(
        &env,
        &ours,
        &[
            "--login", "--pin", pin, "--sign", "--id", "06", "-m", "EDDSA", "-i", &data, "-o",
            &ed_sig,
        ],
    ));
    openssl(&[
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        &s(&token.public_pem("ed25519")),
        "-rawin",
        "-in",
        &data,
        "-sigfile",
        &ed_sig,
    ]);

    // --decrypt of what openssl encrypted to the token's RSA key.
    let ct = file("ct");
    let pt = file("pt");
    openssl(&[
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        &s(&token.public_pem("rsa2048")),
        "-in",
        &data,
        "-out",
        &ct,
    ]);
    env.run_ok(&mut pkcs11_tool(
        &env,
        &ours,
        &[
            "--login",
            "--pin",
            pin,
            "--decrypt",
            "--id",
            "01",
            "-m",
            "RSA-PKCS",
            "-i",
            &ct,
            "-o",
            &pt,
        ],
    ));
    assert_eq!(std::fs::read(&pt).unwrap(), std::fs::read(&data).unwrap());

    // --keypairgen, then the new key signs.
    env.run_ok(&mut pkcs11_tool(
        &env,
        &ours,
        &[
            "--login",
            "--pin",
            pin,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "generated",
            "--id",
            "42",
        ],
    ));
    env.run_ok(&mut pkcs11_tool(
        &env,
        &ours,
        &["-O", "--login", "--pin", pin],
    ))
    .assert_stdout_contains("label:      generated");
    env.run_ok(&mut pkcs11_tool(
        &env,
        &ours,
        &[
            "--login", "--pin", pin, "--sign", "--id", "42", "-m", "ECDSA", "-i", &digest, "-o",
            &sig,
        ],
    ));
    // Random bytes; zero of them too.
    let rnd = env.run_ok(&mut pkcs11_tool(&env, &ours, &["--generate-random", "64"]));
    assert_eq!(rnd.stdout_bytes.len(), 64);
}

#[test]
fn pkcs11_tool_stock_server() {
    pkcs11_tool_works(ServerKind::Stock);
}

#[test]
fn pkcs11_tool_p11fwd_server() {
    pkcs11_tool_works(ServerKind::Forwarder);
}

fn gnutls_works(kind: ServerKind) {
    let token = TestToken::full();
    let server = AnyServer::start(kind, &token);
    let env = server.p11env().with("GNUTLS_PIN", token.user_pin());
    let ours = module();
    let list = env
        .run_ok(
            env.command(require_tool("p11tool"))
                .arg("--provider")
                .arg(&ours)
                .args(["--list-all", "--login"])
                .arg(token.uri()),
        )
        .stdout;
    for label in ["rsa2048", "ec-p256", "ed25519", "aes256"] {
        assert!(
            list.contains(&format!("Label: {label}")),
            "{label} missing:\n{list}"
        );
    }
    assert!(list.contains("type=private"), "{list}");

    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("cert.cfg");
    std::fs::write(
        &template,
        "cn = p11fwd certtool\nexpiration_days = 30\nsigning_key\n",
    )
    .unwrap();
    let cert = dir.path().join("cert.pem");
    for label in ["ec-p256", "rsa2048"] {
        let key_uri = format!("{};object={label};type=private", token.uri());
        env.run_ok(
            env.command(require_tool("certtool"))
                .arg("--provider")
                .arg(&ours)
                .args([
                    "--generate-self-signed",
                    "--load-privkey",
                    &key_uri,
                    "--template",
                ])
                .arg(&template)
                .arg("--outfile")
                .arg(&cert),
        );
        openssl(&["verify", "-CAfile", &s(&cert), &s(&cert)]);
        assert_eq!(
            spki("x509", &cert, false),
            spki("pkey", &token.public_pem(label), false)
        );
    }
}

#[test]
fn gnutls_stock_server() {
    gnutls_works(ServerKind::Stock);
}

#[test]
fn gnutls_p11fwd_server() {
    gnutls_works(ServerKind::Forwarder);
}

/// Registered with p11-kit through the module file template (`conf/templates`, installed as
/// `~/.config/pkcs11/modules/p11fwd-client.module` or `/etc/pkcs11/modules/`), the module is
/// loaded by p11-kit itself and by GnuTLS without `--provider`.
///
/// p11-kit ignores user configuration in programs running as root; then the module file is
/// bind-mounted over p11-kit's module directory in a private mount namespace (`unshare -m`), so
/// the system's configuration is never touched.
#[test]
fn p11kit_module_registration() {
    let token = TestToken::full();
    let server = AnyServer::start(ServerKind::Stock, &token);
    let (home, modules) = home_with_module_file();
    let env = server
        .p11env()
        .with("HOME", home.path())
        .with("GNUTLS_PIN", token.user_pin());
    let registered = |program: &str, args: &[&str]| {
        if rustix::process::getuid().is_root() {
            let mut cmd = env.command(require_tool("unshare"));
            cmd.args(["--mount", "sh", "-c"])
                .arg("mount --bind \"$0\" /usr/share/p11-kit/modules && exec \"$@\"")
                .arg(&modules)
                .arg(require_tool(program))
                .args(args);
            cmd
        } else {
            let mut cmd = env.command(require_tool(program));
            cmd.args(args);
            cmd
        }
    };
    finds_the_token(&env, &token, registered);
}

/// A `HOME` holding the module file as the README's recipe installs it; returns it and its
/// `.config/pkcs11/modules`.
fn home_with_module_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let home = tempfile::tempdir().unwrap();
    let modules = home.path().join(".config/pkcs11/modules");
    std::fs::create_dir_all(&modules).unwrap();
    let template = include_str!("../../conf/templates/p11fwd-client.module");
    assert!(template.contains("@LIBDIR@/pkcs11/p11fwd-client.so"));
    let text = template.replace("@LIBDIR@/pkcs11/p11fwd-client.so", &s(&module()));
    std::fs::write(modules.join("p11fwd-client.module"), text).unwrap();
    (home, modules)
}

/// `p11-kit list-modules` and `p11tool` without `--provider` find the token through the
/// registered module; `command` makes a program's command line.
fn finds_the_token(env: &P11Env, token: &TestToken, command: impl Fn(&str, &[&str]) -> Command) {
    let listed = env
        .run_ok(&mut command("p11-kit", &["list-modules"]))
        .stdout;
    let ours = format!("\n{listed}");
    let ours = ours
        .split("\np11fwd-client: ")
        .nth(1)
        .unwrap_or_else(|| panic!("p11fwd-client not registered:\n{listed}"));
    assert!(ours.contains("library-manufacturer: p11fwd"), "{ours}");
    assert!(ours.contains("token: p11fwd-test"), "{ours}");
    env.run_ok(&mut command(
        "p11tool",
        &["--list-all", "--login", &token.uri()],
    ))
    .assert_stdout_contains("Label: ec-p256");
}

/// The `~/.config/pkcs11/modules` recipe exactly as the README gives it, for an unprivileged
/// user: the module file in `$HOME/.config/pkcs11/modules`, then `p11-kit list-modules` and
/// `p11tool` (no `--provider`) find the forwarded token. As root the programs run as `nobody`
/// (`setpriv`, with a `HOME` of its own and `p11fwd server -u nobody` serving it); as any other
/// user, as that user.
#[test]
fn p11kit_user_config_unprivileged() {
    const NOBODY: u32 = 65534;
    let token = TestToken::full();
    let root = rustix::process::getuid().is_root();
    let mut server = ForwarderServer::builder(&token);
    if root {
        server = server.args(["-u", "nobody"]);
    }
    let server = server.start();
    let (home, _) = home_with_module_file();
    if root {
        use std::os::unix::fs::PermissionsExt;
        // nobody reaches the socket (the server lets uid nobody in) and owns its HOME.
        let socket_dir = server.socket_path().parent().unwrap();
        std::fs::set_permissions(socket_dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        for entry in walk(home.path()) {
            std::os::unix::fs::chown(&entry, Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    let env = server
        .p11env()
        .with("HOME", home.path())
        .with("GNUTLS_PIN", token.user_pin());
    let as_user = |program: &str, args: &[&str]| {
        let mut cmd;
        if root {
            cmd = env.command(require_tool("setpriv"));
            cmd.args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "--",
            ])
            .arg(require_tool(program));
        } else {
            cmd = env.command(require_tool(program));
        }
        cmd.args(args);
        cmd
    };
    finds_the_token(&env, &token, as_user);
}

/// `dir` and everything below it.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    if dir.is_dir() {
        for e in std::fs::read_dir(dir).unwrap() {
            all.extend(walk(&e.unwrap().path()));
        }
    }
    all
}
