//! Stock Debian clients through `p11fwd server`: `p11-kit-client.so` 0.24.1 driven by
//! pkcs11-tool, p11tool and certtool (GnuTLS), NSS certutil with the module added by modutil, and
//! ssh-keygen -D.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::Fwd;
use p11fwd_tests::{Key, P11KIT_CLIENT_MODULE, TestToken, require_file, require_tool, run_ok};

fn pkcs11_tool(fwd: &Fwd, args: &[&str]) -> String {
    require_file(P11KIT_CLIENT_MODULE);
    let out = fwd.p11env().run(
        Command::new(require_tool("pkcs11-tool"))
            .arg("--module")
            .arg(P11KIT_CLIENT_MODULE)
            .args(args),
    );
    assert!(
        out.success(),
        "pkcs11-tool {args:?} failed:\n{}\n{}",
        out.stderr,
        fwd.log()
    );
    out.stdout
}

#[test]
fn pkcs11_tool_lists_slots_mechanisms_and_objects() {
    let token = TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::EcP256)
        .with(Key::Aes256)
        .build();
    let fwd = common::start(&token);
    let l = pkcs11_tool(&fwd, &["-L"]);
    assert!(l.contains("(0x11)"), "{l}");
    assert!(l.contains(token.label()), "{l}");
    let m = pkcs11_tool(&fwd, &["-M"]);
    assert!(m.contains("SHA256-RSA-PKCS"), "{m}");
    assert!(m.contains("ECDSA"), "{m}");
    let public = pkcs11_tool(&fwd, &["-O"]);
    assert!(
        public.contains("rsa2048") && public.contains("ec-p256"),
        "{public}"
    );
    assert!(
        !public.contains("Private Key Object"),
        "private objects without login:\n{public}"
    );
    let all = pkcs11_tool(&fwd, &["-O", "--login", "--pin", token.user_pin()]);
    assert!(all.contains("Private Key Object; RSA"), "{all}");
    assert!(all.contains("Private Key Object; EC"), "{all}");
    assert!(all.contains("Certificate Object"), "{all}");
    assert!(all.contains("aes256"), "{all}");
}

#[test]
fn pkcs11_tool_signs_verifies_and_decrypts() {
    let token = TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::EcP256)
        .build();
    let fwd = common::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, b"p11fwd says hello\n").unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let pin = token.user_pin();

    // RSA PKCS#1 v1.5 with SHA-256, verified by pkcs11-tool and by openssl.
    pkcs11_tool(
        &fwd,
        &[
            "--login",
            "--pin",
            pin,
            "--sign",
            "-m",
            "SHA256-RSA-PKCS",
            "--id",
            "01",
            "-i",
            &p("data"),
            "-o",
            &p("rsa.sig"),
        ],
    );
    let v = pkcs11_tool(
        &fwd,
        &[
            "--verify",
            "-m",
            "SHA256-RSA-PKCS",
            "--id",
            "01",
            "-i",
            &p("data"),
            "--signature-file",
            &p("rsa.sig"),
        ],
    );
    assert!(v.contains("Signature is valid"), "{v}");
    run_ok(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(token.public_pem("rsa2048"))
            .arg("-signature")
            .arg(p("rsa.sig"))
            .arg(&data),
    );

    // ECDSA over a SHA-256 hash (the 0.24.1 client only allows raw CKM_ECDSA).
    let hash = run_ok(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-binary"])
            .arg(&data),
    )
    .stdout_bytes;
    std::fs::write(dir.path().join("hash"), hash).unwrap();
    pkcs11_tool(
        &fwd,
        &[
            "--login",
            "--pin",
            pin,
            "--sign",
            "-m",
            "ECDSA",
            "--id",
            "03",
            "--signature-format",
            "openssl",
            "-i",
            &p("hash"),
            "-o",
            &p("ec.sig"),
        ],
    );
    run_ok(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(token.public_pem("ec-p256"))
            .arg("-signature")
            .arg(p("ec.sig"))
            .arg(&data),
    );

    // RSA decryption of something openssl encrypted to the public key.
    run_ok(
        Command::new("openssl")
            .args(["pkeyutl", "-encrypt", "-pubin", "-inkey"])
            .arg(token.public_pem("rsa2048"))
            .arg("-in")
            .arg(&data)
            .arg("-out")
            .arg(p("enc")),
    );
    pkcs11_tool(
        &fwd,
        &[
            "--login",
            "--pin",
            pin,
            "--decrypt",
            "-m",
            "RSA-PKCS",
            "--id",
            "01",
            "-i",
            &p("enc"),
            "-o",
            &p("dec"),
        ],
    );
    assert_eq!(
        std::fs::read(p("dec")).unwrap(),
        std::fs::read(&data).unwrap()
    );
}

#[test]
fn pkcs11_tool_generates_key_pairs() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::start(&token);
    let pin = token.user_pin();
    pkcs11_tool(
        &fwd,
        &[
            "--login",
            "--pin",
            pin,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "fresh-ec",
            "--id",
            "42",
        ],
    );
    pkcs11_tool(
        &fwd,
        &[
            "--login",
            "--pin",
            pin,
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--label",
            "fresh-rsa",
            "--id",
            "43",
        ],
    );
    let all = pkcs11_tool(&fwd, &["-O", "--login", "--pin", pin]);
    assert!(
        all.contains("fresh-ec") && all.contains("fresh-rsa"),
        "{all}"
    );
}

#[test]
fn write_protected_tokens_refuse_changes_and_say_so() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let uri = format!("{}?write-protected=yes", token.uri());
    let fwd = common::builder(&token).uri(&uri).start();
    let l = pkcs11_tool(&fwd, &["-L"]);
    assert!(
        l.contains("readonly") || l.contains("write protected") || l.contains("write-protected"),
        "{l}"
    );
    let out = fwd.p11env().run(
        Command::new(require_tool("pkcs11-tool"))
            .args([
                "--module",
                P11KIT_CLIENT_MODULE,
                "--login",
                "--pin",
                token.user_pin(),
            ])
            .args([
                "--keypairgen",
                "--key-type",
                "EC:prime256v1",
                "--label",
                "nope",
            ]),
    );
    assert!(
        !out.success(),
        "keypairgen on a write-protected token succeeded"
    );
    // Reading still works.
    let all = pkcs11_tool(&fwd, &["-O", "--login", "--pin", token.user_pin()]);
    assert!(all.contains("ec-p256"), "{all}");
}

#[test]
fn p11tool_lists_all_objects() {
    let token = TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::EcP256)
        .build();
    let fwd = common::start(&token);
    let out = fwd.p11env().run_ok(
        Command::new(require_tool("p11tool"))
            .args([
                "--provider",
                P11KIT_CLIENT_MODULE,
                "--login",
                "--set-pin",
                token.user_pin(),
                "--list-all",
            ])
            .arg(token.uri()),
    );
    assert!(out.stdout.contains("object=rsa2048"), "{}", out.stdout);
    assert!(out.stdout.contains("object=ec-p256"), "{}", out.stdout);
    assert!(out.stdout.contains("Type: Private key"), "{}", out.stdout);
    let certs = fwd.p11env().run_ok(
        Command::new(require_tool("p11tool"))
            .args(["--provider", P11KIT_CLIENT_MODULE, "--list-all-certs"])
            .arg(token.uri()),
    );
    assert!(
        certs.stdout.contains("Type: X.509 Certificate"),
        "{}",
        certs.stdout
    );
}

#[test]
fn certtool_self_signs_with_a_forwarded_key() {
    // certtool --provider loads the stock client; the PIN comes from GNUTLS_PIN.
    let token = TestToken::builder()
        .with(Key::EcP256)
        .with(Key::Rsa2048)
        .build();
    let fwd = common::start(&token);
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("cert.cfg");
    std::fs::write(
        &template,
        "cn = p11fwd certtool\norganization = p11fwd-test\nserial = 7\nexpiration_days = 30\n\
         signing_key\nca\ncert_signing_key\n",
    )
    .unwrap();
    let openssl = require_tool("openssl");
    for label in ["ec-p256", "rsa2048"] {
        let key = format!("{};object={label};type=private", token.uri());
        let cert = dir.path().join(format!("{label}.pem"));
        let out = fwd.p11env().with("GNUTLS_PIN", token.user_pin()).run(
            Command::new(require_tool("certtool"))
                .args([
                    "--provider",
                    P11KIT_CLIENT_MODULE,
                    "--generate-self-signed",
                    "--load-privkey",
                    &key,
                    "--template",
                ])
                .arg(&template)
                .arg("--outfile")
                .arg(&cert),
        );
        assert!(out.success(), "certtool for {label}: {out}\n{}", fwd.log());
        // The certificate carries the token's public key ...
        let cert_key = run_ok(
            Command::new(&openssl)
                .args(["x509", "-noout", "-pubkey", "-in"])
                .arg(&cert),
        );
        let token_key = std::fs::read_to_string(token.public_pem(label)).unwrap();
        assert_eq!(cert_key.stdout.trim(), token_key.trim(), "{label}");
        // ... and its self-signature verifies with it.
        let verified = run_ok(
            Command::new(&openssl)
                .args(["verify", "-check_ss_sig", "-CAfile"])
                .arg(&cert)
                .arg(&cert),
        );
        assert!(verified.stdout.contains(": OK"), "{label}: {verified}");
        let text = run_ok(
            Command::new(&openssl)
                .args(["x509", "-noout", "-subject", "-in"])
                .arg(&cert),
        );
        assert!(text.stdout.contains("p11fwd certtool"), "{text}");
    }
    // The PIN went through the forwarder's login and never into its trace.
    assert!(!fwd.stderr().contains(token.user_pin()), "{}", fwd.log());
}

#[test]
fn p11tool_signs_with_a_forwarded_key() {
    let token = TestToken::builder()
        .with(Key::EcP256)
        .with(Key::Rsa2048)
        .build();
    let fwd = common::start(&token);
    for label in ["ec-p256", "rsa2048"] {
        let key = format!("{};object={label};type=private", token.uri());
        let out = fwd
            .p11env()
            .run_ok(Command::new(require_tool("p11tool")).args([
                "--provider",
                P11KIT_CLIENT_MODULE,
                "--login",
                "--set-pin",
                token.user_pin(),
                "--test-sign",
                &key,
            ]));
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(
            all.contains("Verifying against public key in the token... ok"),
            "{all}"
        );
    }
}

#[test]
fn nss_certutil_lists_the_certificates() {
    let token = TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::EcP256)
        .build();
    let fwd = common::start(&token);
    let db = tempfile::tempdir().unwrap();
    let dbarg = format!("sql:{}", db.path().display());
    run_ok(Command::new(require_tool("certutil")).args(["-N", "--empty-password", "-d", &dbarg]));
    fwd.p11env()
        .run_ok(Command::new(require_tool("modutil")).args([
            "-force",
            "-dbdir",
            &dbarg,
            "-add",
            "p11fwd",
            "-libfile",
            P11KIT_CLIENT_MODULE,
        ]));
    let out = fwd
        .p11env()
        .run_ok(Command::new(require_tool("certutil")).args(["-L", "-d", &dbarg, "-h", "all"]));
    assert!(
        out.stdout.contains(&format!("{}:rsa2048", token.label())),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("{}:ec-p256", token.label())),
        "{}",
        out.stdout
    );
}

#[test]
fn ssh_keygen_reads_the_public_keys() {
    let token = TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::EcP256)
        .build();
    let fwd = common::start(&token);
    let out = fwd
        .p11env()
        .run_ok(Command::new(require_tool("ssh-keygen")).args(["-D", P11KIT_CLIENT_MODULE]));
    assert!(out.stdout.contains("ssh-rsa "), "{}", out.stdout);
    assert!(
        out.stdout.contains("ecdsa-sha2-nistp256 "),
        "{}",
        out.stdout
    );
    // The RSA key is the token's.
    let want = run_ok(
        Command::new("ssh-keygen")
            .args(["-i", "-m", "PKCS8", "-f"])
            .arg(token.public_pem("rsa2048")),
    )
    .stdout;
    let want_body = want.split_whitespace().nth(1).unwrap();
    assert!(
        out.stdout.contains(want_body),
        "{}\nwant {want}",
        out.stdout
    );
}
