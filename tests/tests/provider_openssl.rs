//! p11fwd.so part 1 (issue 5) end to end: the real `openssl` CLI and small C programs with
//! token keys on SoftHSM, every test against a stock `p11-kit server` 0.24.1 **and** `p11fwd
//! server` (a loop over [`KINDS`]; failure messages name the server), with p11fwd loaded before
//! `default` (the part-2 tests use the other order). Every signature is verified by OpenSSL's
//! default provider with the public key p11fwd exports and with the fixture's PEM.
//!
//! Needs `cargo build --workspace` first (the tests load the built `libp11fwd_provider.so` and
//! start the built `p11fwd`).

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod provider_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use p11fwd_tests::run::{run, run_with};
use p11fwd_tests::{Key, RunOutput, ServerKind, TestToken};
use provider_common::{Env, KINDS, dgst_sign, rawin_sign, s, spy_count};

/// A fresh token with `keys` behind a server of `kind`, p11fwd loaded first.
fn env(kind: ServerKind, keys: &[Key]) -> Env {
    Env::new(kind, keys).p11fwd_first()
}

#[test]
fn provider_lists_its_algorithms() {
    for kind in KINDS {
        let env = env(kind, &[Key::EcP256]);
        let out = env.ok(&["list", "-signature-algorithms"]);
        assert!(out.stdout.contains("p11fwd"), "{kind}: {}", out.stdout);
    }
}

#[test]
fn dgst_sign_with_every_key_type_verifies_in_software() {
    let keys = [Key::Rsa2048, Key::EcP256, Key::EcP384, Key::EcP521];
    for kind in KINDS {
        let env = env(kind, &keys);
        for key in keys {
            let label = key.label();
            let pubkey = env.export_public(label);
            for md in ["-sha256", "-sha384", "-sha1", "-sha512", "-sha224"] {
                let sig = env.path(&format!("{label}{md}.sig"));
                env.ok(&dgst_sign(md, &env.key_uri(label), &sig));
                env.verify(&pubkey, &sig, &[md]);
                env.verify(&env.token.public_pem(label), &sig, &[md]);
            }
        }
    }
}

#[test]
fn rsa_pss_with_every_salt_length_mode() {
    for kind in KINDS {
        let env = env(kind, &[Key::Rsa2048, Key::RsaPss]);
        for label in ["rsa2048", "rsa-pss"] {
            let pubkey = env.token.public_pem(label);
            for salt in ["digest", "max", "auto", "20", "0"] {
                for md in ["-sha256", "-sha384"] {
                    let sig = env.path(&format!("{label}-{salt}{md}.sig"));
                    let salt_opt = format!("rsa_pss_saltlen:{salt}");
                    env.ok(&[
                        "dgst",
                        md,
                        "-sign",
                        &env.key_uri(label),
                        "-sigopt",
                        "rsa_padding_mode:pss",
                        "-sigopt",
                        &salt_opt,
                        "-out",
                        s(&sig),
                        "data.txt",
                    ]);
                    // "auto" on the verifying side recovers any salt length.
                    let verify_salt = if salt == "max" || salt == "auto" {
                        "rsa_pss_saltlen:auto"
                    } else {
                        &salt_opt
                    };
                    env.verify(
                        &pubkey,
                        &sig,
                        &[
                            md,
                            "-sigopt",
                            "rsa_padding_mode:pss",
                            "-sigopt",
                            verify_salt,
                        ],
                    );
                }
            }
        }
    }
}

/// A CSR for `CN=leaf` made from a fresh software P-256 key.
fn leaf_csr(env: &Env) -> PathBuf {
    let leaf_key = env.path("leaf.key");
    let leaf_csr = env.path("leaf.csr");
    if !leaf_csr.exists() {
        env.soft_ok(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            s(&leaf_key),
        ]);
        env.soft_ok(&[
            "req",
            "-new",
            "-key",
            s(&leaf_key),
            "-subj",
            "/CN=leaf",
            "-out",
            s(&leaf_csr),
        ]);
    }
    leaf_csr
}

/// A demoCA for `openssl ca` in the scratch dir; returns its config file.
fn ca_config(env: &Env) -> PathBuf {
    let dir = env.path("demoCA");
    std::fs::create_dir_all(dir.join("newcerts")).unwrap();
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("serial"), "1000\n").unwrap();
    let conf = env.path("ca.cnf");
    std::fs::write(
        &conf,
        format!(
            "[ca]\ndefault_ca = CA_default\n[CA_default]\ndir = {}\ndatabase = $dir/index.txt\n\
             new_certs_dir = $dir/newcerts\nserial = $dir/serial\ndefault_md = default\n\
             unique_subject = no\npolicy = policy_any\ndefault_days = 2\n\
             [policy_any]\ncommonName = supplied\n",
            dir.display()
        ),
    )
    .unwrap();
    conf
}

/// The key types of the command matrix: RSA-2048, the PSS-only RSA key, EC P-256 and P-384,
/// Ed25519 and Ed448.
const MATRIX_KEYS: [Key; 6] = [
    Key::Rsa2048,
    Key::RsaPss,
    Key::EcP256,
    Key::EcP384,
    Key::Ed25519,
    Key::Ed448,
];

/// Every command of issue 5 with every key type, behind both servers: `req -new` (with and
/// without `default`), `req -x509`, `x509 -req -CA -CAkey`, `ca -keyfile`, `dgst -sign`,
/// `pkeyutl -sign` and `cms -sign`. Each result is checked by OpenSSL's default provider alone
/// with the public key p11fwd exports: signatures are verified with it, and the CSR's and
/// certificates' public keys are that same key.
///
/// Where OpenSSL 3.0 itself cannot do a combination, the test runs the same command with the
/// fixture's software key and the default provider and asserts that it fails there too:
/// - `dgst -sign` with EdDSA keys: "Key type not supported for this operation" (OpenSSL 3.0's
///   `dgst` has no one-shot signing); `pkeyutl -sign -rawin` is the command for them.
/// - `cms -sign` with EdDSA keys: 3.0's CMS has no EdDSA ("no default digest").
///
/// RSA-PSS keys need `cms -sign -keyopt rsa_padding_mode:pss`, exactly like OpenSSL's own
/// RSA-PSS keys: without it 3.0's CMS labels the SignerInfo `rsaEncryption` while the key signs
/// PSS, and verification fails (also checked with a software RSA-PSS key).
#[test]
fn every_command_with_every_key_type() {
    for kind in KINDS {
        let env = env(kind, &MATRIX_KEYS);
        let leaf_csr = leaf_csr(&env);
        let ca_conf = ca_config(&env);
        let digest = env.path("digest.bin");
        env.soft_ok(&["dgst", "-sha256", "-binary", "-out", s(&digest), "data.txt"]);
        for key in MATRIX_KEYS {
            let label = key.label();
            let what = format!("{kind}, {label}");
            let uri = env.key_uri(label);
            let eddsa = matches!(key, Key::Ed25519 | Key::Ed448);
            let pubkey = env.export_public(label);
            let public_text = std::fs::read_to_string(&pubkey).unwrap();
            // The public key in a CSR or certificate is the exported one.
            let same_key = |args: &[&str], of: &str| {
                let out = env.soft(args);
                assert_eq!(out.stdout, public_text, "{what}: the public key of {of}");
            };

            // req -new, with default and with p11fwd alone.
            for (name, alone) in [("csr", false), ("alone.csr", true)] {
                let csr = env.path(&format!("{label}.{name}"));
                let args = [
                    "req",
                    "-new",
                    "-key",
                    &uri,
                    "-subj",
                    &format!("/CN={label}"),
                    "-out",
                    s(&csr),
                ];
                if alone {
                    let mut only = vec!["req", "-provider", "p11fwd"];
                    only.extend(&args[1..]);
                    let out = env.soft(&only);
                    provider_common::assert_ok(&out, &format!("{what}: req -new, p11fwd alone"));
                } else {
                    env.ok(&args);
                }
                let out = env.soft(&["req", "-in", s(&csr), "-verify", "-noout"]);
                assert!(
                    format!("{}{}", out.stdout, out.stderr).contains("verify OK"),
                    "{what}: {name}: {}{}",
                    out.stdout,
                    out.stderr
                );
                same_key(&["req", "-in", s(&csr), "-pubkey", "-noout"], name);
            }

            // req -x509: a self-signed CA certificate, used by the commands below.
            let ca = env.path(&format!("{label}.ca.pem"));
            env.ok(&[
                "req",
                "-x509",
                "-new",
                "-key",
                &uri,
                "-subj",
                &format!("/CN={label} CA"),
                "-days",
                "2",
                "-out",
                s(&ca),
            ]);
            verify_cert(&env, &what, &ca, &ca);
            same_key(&["x509", "-in", s(&ca), "-pubkey", "-noout"], "req -x509");

            // x509 -req -CA -CAkey (X509_check_private_key compares the token key with the CA
            // certificate's) and ca -keyfile.
            let leaf = env.path(&format!("{label}.x509.pem"));
            env.ok(&x509_ca_sign(&leaf_csr, s(&ca), &uri, &leaf));
            verify_cert(&env, &what, &ca, &leaf);
            let leaf = env.path(&format!("{label}.ca.leaf.pem"));
            env.ok(&ca_sign(&ca_conf, s(&ca), &uri, &leaf_csr, &leaf));
            verify_cert(&env, &what, &ca, &leaf);

            // dgst -sign.
            let sig = env.path(&format!("{label}.dgst.sig"));
            if eddsa {
                let out = env.ossl(&dgst_sign("-sha256", &uri, &sig));
                assert!(!out.success(), "{what}: dgst -sign now works with EdDSA");
                openssl_refuses_too(
                    &env,
                    &what,
                    &dgst_sign("-sha256", &soft_key(&env, label), &sig),
                );
            } else {
                env.ok(&dgst_sign("-sha256", &uri, &sig));
                env.verify(&pubkey, &sig, &["-sha256"]);
            }

            // pkeyutl -sign: a SHA-256 digest, or the message itself for EdDSA.
            let sig = env.path(&format!("{label}.pkeyutl.sig"));
            let (input, opts): (&Path, &[&str]) = if eddsa {
                (Path::new("data.txt"), &["-rawin"])
            } else {
                (&digest, &["-pkeyopt", "digest:sha256"])
            };
            let mut args = vec!["pkeyutl", "-sign", "-inkey", &uri, "-in", s(input)];
            args.extend(["-out", s(&sig)]);
            args.extend(opts);
            env.ok(&args);
            let mut args = vec!["pkeyutl", "-verify", "-pubin", "-inkey", s(&pubkey)];
            args.extend(["-in", s(input), "-sigfile", s(&sig)]);
            args.extend(opts);
            let out = env.soft(&args);
            assert!(
                out.stdout.contains("Signature Verified Successfully"),
                "{what}: pkeyutl: {}{}",
                out.stdout,
                out.stderr
            );

            // cms -sign with the CA certificate as signer.
            let signed = env.path(&format!("{label}.cms"));
            if eddsa {
                let out = env.ossl(&cms_sign(s(&ca), &uri, &signed, &[]));
                assert!(!out.success(), "{what}: cms -sign now works with EdDSA");
                openssl_refuses_too(
                    &env,
                    &what,
                    &cms_sign(s(&ca), &soft_key(&env, label), &signed, &[]),
                );
                continue;
            }
            let pss: &[&str] = if key == Key::RsaPss {
                &["-keyopt", "rsa_padding_mode:pss"]
            } else {
                &[]
            };
            env.ok(&cms_sign(s(&ca), &uri, &signed, pss));
            let out = cms_verify(&env, &signed, &ca);
            assert!(
                out.stderr.contains("Verification successful"),
                "{what}: cms: {}{}",
                out.stdout,
                out.stderr
            );
        }
    }
}

/// `x509 -req -in <csr> -CA <ca> -CAkey <key> -CAcreateserial -days 2 -out <out>`.
fn x509_ca_sign<'a>(csr: &'a Path, ca: &'a str, key: &'a str, out: &'a Path) -> [&'a str; 13] {
    [
        "x509",
        "-req",
        "-in",
        s(csr),
        "-CA",
        ca,
        "-CAkey",
        key,
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        s(out),
    ]
}

/// `ca -batch -config <conf> -cert <ca> -keyfile <key> -in <csr> -out <out>`.
fn ca_sign<'a>(
    conf: &'a Path,
    ca: &'a str,
    key: &'a str,
    csr: &'a Path,
    out: &'a Path,
) -> [&'a str; 12] {
    [
        "ca",
        "-batch",
        "-config",
        s(conf),
        "-cert",
        ca,
        "-keyfile",
        key,
        "-in",
        s(csr),
        "-out",
        s(out),
    ]
}

/// `cms -sign -in data.txt -signer <signer> -inkey <key> -nodetach -outform PEM -out <out>`.
fn cms_sign<'a>(signer: &'a str, key: &'a str, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["cms", "-sign", "-in", "data.txt", "-signer", signer];
    args.extend([
        "-inkey",
        key,
        "-nodetach",
        "-outform",
        "PEM",
        "-out",
        s(out),
    ]);
    args.extend(extra);
    args
}

/// `cms -verify` of the PEM CMS `signed` with the default provider, `ca` the trust anchor.
fn cms_verify(env: &Env, signed: &Path, ca: &Path) -> RunOutput {
    let out = env.path("cms.out");
    env.soft(&[
        "cms",
        "-verify",
        "-in",
        s(signed),
        "-inform",
        "PEM",
        "-CAfile",
        s(ca),
        "-out",
        s(&out),
    ])
}

/// `openssl verify -CAfile ca cert` with the default provider.
#[track_caller]
fn verify_cert(env: &Env, what: &str, ca: &Path, cert: &Path) {
    let out = env.soft(&["verify", "-CAfile", s(ca), s(cert)]);
    assert!(
        out.stdout.contains(": OK"),
        "{what}: {}: {}{}",
        cert.display(),
        out.stdout,
        out.stderr
    );
}

/// The fixture's software copy of the token key `label` (PKCS#8 PEM).
fn soft_key(env: &Env, label: &str) -> String {
    s(&env.token.private_pem(label)).to_owned()
}

/// A combination the matrix skips: the same command with the fixture's software key and
/// OpenSSL's default provider alone fails as well, so the limit is OpenSSL's.
#[track_caller]
fn openssl_refuses_too(env: &Env, what: &str, args: &[&str]) {
    let out = env.soft(args);
    assert!(
        !out.success(),
        "{what}: OpenSSL itself now does {args:?}: remove the skip\n{}",
        out.stdout
    );
}

/// The RSA-PSS limit of 3.0's `cms -sign` the matrix works around is OpenSSL's own: a software
/// RSA-PSS key signs a CMS that does not verify unless `-keyopt rsa_padding_mode:pss` is given.
#[test]
fn cms_needs_pss_padding_for_rsa_pss_keys_in_software_too() {
    let env = env(ServerKind::Forwarder, &[Key::EcP256]);
    let key = env.path("pss.key");
    let cert = env.path("pss.crt");
    env.soft_ok(&[
        "req",
        "-x509",
        "-newkey",
        "rsa-pss",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-nodes",
        "-keyout",
        s(&key),
        "-subj",
        "/CN=pss",
        "-days",
        "2",
        "-out",
        s(&cert),
    ]);
    for (extra, verifies) in [
        (&[][..], false),
        (&["-keyopt", "rsa_padding_mode:pss"][..], true),
    ] {
        let signed = env.path("pss.cms");
        env.soft_ok(&cms_sign(s(&cert), s(&key), &signed, extra));
        let out = cms_verify(&env, &signed, &cert);
        assert_eq!(
            out.stderr.contains("Verification successful"),
            verifies,
            "{extra:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn storeutl_lists_objects_with_uris_that_resolve_to_themselves() {
    for kind in KINDS {
        let env = env(kind, &[Key::Rsa2048, Key::EcP256, Key::Ed25519]);
        let all = format!("{}?pin-value={}", env.token.uri(), env.token.user_pin());
        let out = env.ok(&["storeutl", "-text", &all]);
        // 2 certificates, 3 public keys, 3 private keys.
        assert_found(&out, 8, &kind.to_string());
        let uris: Vec<&str> = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("URI "))
            .collect();
        assert_eq!(uris.len(), 6, "{kind}: {}", out.stdout);
        for uri in uris {
            let with_pin = format!("{uri}?pin-value={}", env.token.user_pin());
            let again = env.ok(&["storeutl", "-text", &with_pin]);
            assert!(
                again.stdout.contains("Total found: 1"),
                "{kind}, {uri}: {}",
                again.stdout
            );
            assert!(
                again.stdout.contains(&format!("URI {uri}")),
                "{kind}, {uri}: {}",
                again.stdout
            );
        }
        // Certificates come back as DER, identical to the fixture's.
        let out = env.ok(&[
            "storeutl",
            "-certs",
            &format!("{};object=ec-p256", env.token.uri()),
        ]);
        let fixture = std::fs::read_to_string(env.token.cert_pem("ec-p256")).unwrap();
        assert!(
            out.stdout.contains(fixture.trim()),
            "{kind}: {}",
            out.stdout
        );
        // Search by subject.
        let out = env.ok(&[
            "storeutl",
            "-certs",
            "-subject",
            "/CN=rsa2048/O=p11fwd-test",
            &env.token.uri(),
        ]);
        assert_found(&out, 1, &kind.to_string());
    }
}

/// `storeutl` printed "Total found: `n`".
#[track_caller]
fn assert_found(out: &RunOutput, n: usize, what: &str) {
    assert!(
        out.stdout.contains(&format!("Total found: {n}\n")),
        "{what}: not {n} objects:\n{}",
        out.stdout
    );
}

/// `storeutl -alias <label>`: the store's alias is the object label (as pkcs11-provider).
#[test]
fn storeutl_alias_finds_objects_by_label() {
    for kind in KINDS {
        let env = env(kind, &[Key::Rsa2048, Key::EcP256]);
        let all = format!("{}?pin-value={}", env.token.uri(), env.token.user_pin());
        let out = env.ok(&["storeutl", "-text", "-alias", "ec-p256", &all]);
        // Its certificate, public key and private key; nothing of rsa2048.
        assert_found(&out, 3, &kind.to_string());
        let uris: Vec<&str> = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("URI "))
            .collect();
        assert!(
            uris.len() == 2 && uris.iter().all(|u| u.contains("object=ec-p256;")),
            "{kind}: {}",
            out.stdout
        );
        let out = env.ok(&["storeutl", "-certs", "-alias", "rsa2048", &env.token.uri()]);
        let fixture = std::fs::read_to_string(env.token.cert_pem("rsa2048")).unwrap();
        assert!(
            out.stdout.contains("Total found: 1") && out.stdout.contains(fixture.trim()),
            "{kind}: {}",
            out.stdout
        );
    }
}

/// A key whose public part is only in its certificate (the token has no public-key object, as
/// on many smart cards): a public-key request finds it from the certificate, and the private
/// key loads, exports and signs.
#[test]
fn public_key_from_the_certificate_without_a_public_key_object() {
    for kind in KINDS {
        let env = env(kind, &[Key::EcP256, Key::Rsa2048]);
        for label in ["ec-p256", "rsa2048"] {
            env.token.delete_object("pubkey", label);
            let what = format!("{kind}, {label}");
            let public_uri = format!("{};type=public", env.token.object_uri(label));
            let out = env.ok(&["pkey", "-pubin", "-in", &public_uri, "-pubout"]);
            let fixture = std::fs::read_to_string(env.token.public_pem(label)).unwrap();
            assert_eq!(
                out.stdout, fixture,
                "{what}: public key from the certificate"
            );
            let pubkey = env.export_public(label);
            let sig = env.path(&format!("{label}.sig"));
            env.ok(&dgst_sign("-sha256", &env.key_uri(label), &sig));
            env.verify(&pubkey, &sig, &["-sha256"]);
        }
        // Listing a token's public keys does not turn its certificates into keys.
        let all = format!("{};type=public", env.token.uri());
        let out = env.ok(&["storeutl", "-text", &all]);
        assert_found(&out, 0, &kind.to_string());
    }
}

/// URIs without `type=` where OpenSSL wants a key or a certificate: the application's
/// expectation picks the class (`req -key`, `x509 -CA`/`-CAkey`, `ca -cert`/`-keyfile`, `cms
/// -signer`/`-inkey`, `x509 -in`).
#[test]
fn untyped_uris_for_keys_and_certificates() {
    for kind in KINDS {
        let env = env(kind, &[Key::EcP256, Key::EcP384]);
        let what = kind.to_string();
        let object = env.token.object_uri("ec-p256");
        let key = format!("{object}?pin-value={}", env.token.user_pin());
        let fixture_cert = env.token.cert_pem("ec-p256");
        let out = env.ok(&["x509", "-in", &object]);
        let fixture = std::fs::read_to_string(&fixture_cert).unwrap();
        assert_eq!(out.stdout, fixture, "{what}: x509 -in");
        let csr = env.path("untyped.csr");
        env.ok(&[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            "/CN=untyped",
            "-out",
            s(&csr),
        ]);
        let out = env.soft(&["req", "-in", s(&csr), "-pubkey", "-noout"]);
        assert_eq!(
            out.stdout,
            std::fs::read_to_string(env.token.public_pem("ec-p256")).unwrap(),
            "{what}: req -key"
        );
        let leaf_csr = leaf_csr(&env);
        let leaf = env.path("untyped.x509.pem");
        env.ok(&x509_ca_sign(&leaf_csr, &object, &key, &leaf));
        verify_cert(&env, &what, &fixture_cert, &leaf);
        let leaf = env.path("untyped.ca.pem");
        env.ok(&ca_sign(&ca_config(&env), &object, &key, &leaf_csr, &leaf));
        verify_cert(&env, &what, &fixture_cert, &leaf);
        let signed = env.path("untyped.cms");
        env.ok(&cms_sign(&object, &key, &signed, &[]));
        let out = cms_verify(&env, &signed, &fixture_cert);
        assert!(
            out.stderr.contains("Verification successful"),
            "{what}: cms: {}",
            out.stderr
        );
    }
}

#[test]
fn pkey_pubout_text_and_equality_with_the_file_key() {
    for kind in KINDS {
        let env = env(
            kind,
            &[Key::Rsa2048, Key::EcP256, Key::EcP384, Key::Ed25519],
        );
        for label in ["rsa2048", "ec-p256", "ec-p384", "ed25519"] {
            env.export_public(label);
            // DER output too.
            let der = env.path(&format!("{label}.pub.der"));
            env.ok(&[
                "pkey",
                "-in",
                &env.key_uri(label),
                "-pubout",
                "-outform",
                "DER",
                "-out",
                s(&der),
            ]);
            assert_eq!(
                std::fs::read(&der).unwrap(),
                std::fs::read(env.token.public_der(label)).unwrap(),
                "{kind}, {label}"
            );
            let out = env.ok(&["pkey", "-in", &env.key_uri(label), "-text", "-noout"]);
            assert!(out.stdout.contains("URI pkcs11:"), "{kind}: {}", out.stdout);
            assert!(
                out.stdout.contains(&format!("object={label};type=private")),
                "{kind}: {}",
                out.stdout
            );
            // The public key found by a public-key request, and from the private key's URI.
            let out = env.ok(&[
                "pkey",
                "-pubin",
                "-in",
                &env.token.object_uri(label),
                "-pubout",
            ]);
            let fixture = std::fs::read_to_string(env.token.public_pem(label)).unwrap();
            assert_eq!(out.stdout, fixture, "{kind}, {label}");
        }
    }
}

#[test]
fn always_authenticate_key_logs_in_per_signature() {
    for kind in KINDS {
        let env = env(kind, &[Key::RsaAlwaysAuth]);
        let pubkey = env.token.public_pem("rsa-always-auth");
        for i in 0..2 {
            let sig = env.path(&format!("aa{i}.sig"));
            env.ok(&dgst_sign("-sha256", &env.key_uri("rsa-always-auth"), &sig));
            env.verify(&pubkey, &sig, &["-sha256"]);
        }
    }
}

#[test]
fn wrong_pin_reaches_the_token_exactly_once() {
    for kind in KINDS {
        let (env, spy_log) = Env::with_spy(kind, &[Key::EcP256]);
        let env = env.p11fwd_first();
        let uri = format!(
            "{};type=private?pin-value=999999",
            env.token.object_uri("ec-p256")
        );
        let sig = env.path("never.sig");
        let out = env.ossl(&dgst_sign("-sha256", &uri, &sig));
        assert!(!out.success(), "{kind}");
        assert!(
            out.stderr.contains("PIN incorrect"),
            "{kind}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("not retried"), "{kind}: {}", out.stderr);
        let logins = spy_count(&spy_log, "C_Login");
        assert_eq!(logins, 1, "{kind}: C_Login calls seen by the token");
    }
}

/// Eight threads of one process load a key with the same wrong PIN at the same moment: the
/// token sees one C_Login, not one per thread (a card locks after a few). (This program did not
/// hit the race before the login lock; a reviewer's did, with 6, 3 and 1 logins in three runs.
/// It stays as a check of the behaviour.)
const WRONG_PIN_THREADS_C: &str = r#"
#include <openssl/provider.h>
#include <openssl/store.h>
#include <pthread.h>
#include <stdio.h>

static const char *uri;
static pthread_barrier_t start;

static void load_all(const char *u) {
    OSSL_STORE_CTX *s = OSSL_STORE_open(u, NULL, NULL, NULL, NULL);
    if (s != NULL) {
        while (!OSSL_STORE_eof(s)) {
            OSSL_STORE_INFO *i = OSSL_STORE_load(s);
            if (i == NULL)
                break;
            OSSL_STORE_INFO_free(i);
        }
        OSSL_STORE_close(s);
    }
}

static void *load(void *arg) {
    (void)arg;
    pthread_barrier_wait(&start);
    load_all(uri);
    return NULL;
}

int main(int argc, char **argv) {
    pthread_t t[8];
    if (argc != 3 || OSSL_PROVIDER_load(NULL, "default") == NULL
        || OSSL_PROVIDER_load(NULL, "p11fwd") == NULL)
        return 2;
    /* Connected first (a public object, no PIN): the threads race on the login alone. */
    load_all(argv[2]);
    uri = argv[1];
    pthread_barrier_init(&start, NULL, 8);
    for (int i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, load, NULL);
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    puts("done");
    return 0;
}
"#;

#[test]
fn threads_with_a_wrong_pin_send_it_once() {
    for kind in KINDS {
        let (env, spy_log) = Env::with_spy(kind, &[Key::EcP256]);
        let uri = format!(
            "{};type=private?pin-value=999999",
            env.token.object_uri("ec-p256")
        );
        let bin = env.compile_c("wrong_pin_threads", WRONG_PIN_THREADS_C);
        let out = run(env
            .c_command(&bin)
            .arg(&uri)
            .arg(format!("{};type=public", env.token.object_uri("ec-p256"))));
        assert!(
            out.success() && out.stdout.contains("done"),
            "{kind}: {}{}",
            out.stdout,
            out.stderr
        );
        let logins = spy_count(&spy_log, "C_Login");
        assert_eq!(logins, 1, "{kind}: C_Login calls seen by the token");
    }
}

/// Three bursts of sixteen threads signing at once with one key.
const SIGNING_BURSTS_C: &str = r#"
#include "p11fwd_test.h"
#include <pthread.h>
#include <stdio.h>

static EVP_PKEY *key;
static pthread_barrier_t start;
static int failures;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static void *sign(void *arg) {
    (void)arg;
    unsigned char digest[32] = {1}, sig[256];
    size_t len = sizeof sig;
    pthread_barrier_wait(&start);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
    if (ctx == NULL || EVP_PKEY_sign_init(ctx) <= 0
        || EVP_PKEY_sign(ctx, sig, &len, digest, sizeof digest) <= 0) {
        pthread_mutex_lock(&mu);
        failures++;
        pthread_mutex_unlock(&mu);
    }
    EVP_PKEY_CTX_free(ctx);
    return NULL;
}

int main(int argc, char **argv) {
    pthread_t t[16];
    if (argc != 2 || !load_providers())
        return 2;
    key = load_key(argv[1]);
    if (key == NULL)
        return 3;
    for (int burst = 0; burst < 3; burst++) {
        pthread_barrier_init(&start, NULL, 16);
        for (int i = 0; i < 16; i++)
            pthread_create(&t[i], NULL, sign, NULL);
        for (int i = 0; i < 16; i++)
            pthread_join(t[i], NULL);
        pthread_barrier_destroy(&start);
    }
    EVP_PKEY_free(key);
    printf("failures %d\n", failures);
    return failures != 0;
}
"#;

/// Sessions the provider does not keep (more threads than its pool holds) are closed on the
/// server, not forgotten: three bursts of sixteen threads leave open on the token at most the
/// pool's eight, the last burst's eight waiting to be closed and the key load's own (each burst
/// used to leave eight more, none closed).
#[test]
fn sessions_beyond_the_pool_are_closed() {
    for kind in KINDS {
        let (env, spy_log) = Env::with_spy(kind, &[Key::EcP256]);
        let bin = env.compile_c("bursts", SIGNING_BURSTS_C);
        let out = run(env.c_command(&bin).arg(env.key_uri("ec-p256")));
        assert!(out.success(), "{kind}: {}{}", out.stdout, out.stderr);
        let opened = spy_count(&spy_log, "C_OpenSession");
        let closed = spy_count(&spy_log, "C_CloseSession");
        assert!(
            opened >= 16 && opened - closed <= 20,
            "{kind}: {opened} sessions opened, {closed} closed"
        );
    }
}

/// Signs, waits for a line on stdin, signs again.
const SIGN_TWICE_C: &str = r#"
#include "p11fwd_test.h"

int main(int argc, char **argv) {
    EVP_PKEY *key = NULL;
    char line[16];
    if (argc != 2 || !load_providers())
        return 2;
    key = load_key(argv[1]);
    if (key == NULL || !sign_digest(key))
        return 3;
    puts("first");
    fflush(stdout);
    if (fgets(line, sizeof line, stdin) == NULL)
        return 4;
    if (!sign_digest(key))
        return 5;
    puts("second");
    EVP_PKEY_free(key);
    return 0;
}
"#;

/// A server on a socket path of the test's choosing, so that it can be started again on the same
/// path (the fixtures' servers pick their own). It runs in its own process group, killed as a
/// whole: a stock server's per-connection process dies with it, so the provider's connection
/// really breaks.
struct RestartableServer(std::process::Child);

impl RestartableServer {
    fn start(kind: ServerKind, token: &TestToken, socket: &Path) -> Self {
        use std::os::unix::process::CommandExt as _;
        let _ = std::fs::remove_file(socket);
        let program = match kind {
            ServerKind::Stock => p11fwd_tests::require_tool("p11-kit"),
            ServerKind::Forwarder => p11fwd_tests::artifacts::forwarder_bin(),
        };
        let child = Command::new(&program)
            .envs(token.env())
            .args(["server", "-f", "--provider"])
            .arg(token.module_path())
            .arg("-n")
            .arg(socket)
            .arg(token.uri())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start the server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(Instant::now() < deadline, "{kind} did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }
}

impl Drop for RestartableServer {
    fn drop(&mut self) {
        if let Some(group) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.0.wait();
    }
}

/// The first signature after the server restarted succeeds: the dead connection is noticed on
/// that signature, which is sent again once on a new connection (it used to fail, and only the
/// next operation reconnected: a failed TLS handshake per process per restart).
#[test]
fn the_first_signature_after_a_server_restart_succeeds() {
    use std::io::{BufRead, Write};
    for kind in KINDS {
        let env = env(kind, &[Key::EcP256]);
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("server.sock");
        let server = RestartableServer::start(kind, &env.token, &socket);
        let bin = env.compile_c("sign_twice", SIGN_TWICE_C);
        let mut program = env.c_command(&bin);
        program
            .env(
                "P11FWD_SERVER_ADDRESS",
                format!("unix:path={}", p11fwd_tests::percent_encode(s(&socket))),
            )
            .arg(env.key_uri("ec-p256"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = program.spawn().unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "first\n", "{kind}");
        // Restart the server on the same socket.
        drop(server);
        let _server = RestartableServer::start(kind, &env.token, &socket);
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        line.clear();
        stdout.read_line(&mut line).unwrap();
        let status = child.wait().unwrap();
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
        assert!(
            status.success() && line == "second\n",
            "{kind}: {status:?} {line:?}\n{err}"
        );
    }
}

/// Loads two keys in one process and signs with the second.
const SECOND_KEY_SIGNS_C: &str = r#"
#include "p11fwd_test.h"
#include <stdio.h>

int main(int argc, char **argv) {
    if (argc != 3 || !load_providers())
        return 2;
    EVP_PKEY *first = load_key(argv[1]), *second = load_key(argv[2]);
    if (first == NULL || second == NULL)
        return 3;
    if (!sign_digest(second))
        return 4;
    puts("signed");
    return 0;
}
"#;

/// A key with CKA_ALWAYS_AUTHENTICATE loaded after the token is logged in (by another key of
/// the same process) signs with the PIN in its URI (it used to find no PIN: none was "used" by
/// its search).
#[test]
fn always_authenticate_key_loaded_after_a_login_signs() {
    for kind in KINDS {
        let env = env(kind, &[Key::EcP256, Key::RsaAlwaysAuth]);
        let bin = env.compile_c("second_key", SECOND_KEY_SIGNS_C);
        let out = run(env
            .c_command(&bin)
            .arg(env.key_uri("ec-p256"))
            .arg(env.key_uri("rsa-always-auth")));
        assert!(
            out.success() && out.stdout.contains("signed"),
            "{kind}: {:?}: {}{}",
            out.status,
            out.stdout,
            out.stderr
        );
    }
}

#[test]
fn bad_input_fails_clearly_and_quickly() {
    for kind in KINDS {
        bad_input_fails_clearly_and_quickly_behind(kind);
    }
}

fn bad_input_fails_clearly_and_quickly_behind(kind: ServerKind) {
    let env = env(kind, &[Key::EcP256, Key::EcP384]);
    let cases: Vec<(String, &str)> = vec![
        (
            "pkcs11:object=ec-p256;bogus%zz".to_owned(),
            "malformed pkcs11 URI",
        ),
        (
            format!("{};object=nothing-here?pin-value=123456", env.token.uri()),
            "no object matches the URI",
        ),
        // Both EC keys match a URI naming only the token.
        (
            format!("{};type=private?pin-value=123456", env.token.uri()),
            "several objects match the URI",
        ),
    ];
    for (uri, reason) in cases {
        let sig = env.path("bad.sig");
        let out = env.ossl(&dgst_sign("-sha256", &uri, &sig));
        assert!(!out.success(), "{kind}: {uri} succeeded");
        assert!(
            out.stderr.contains(reason),
            "{kind}, {uri}: expected {reason:?} in\n{}",
            out.stderr
        );
        // (openssl itself echoes the URI it was given; our own messages never hold the PIN.)
        for line in out.stderr.lines().filter(|l| l.contains(":p11fwd:")) {
            assert!(!line.contains("123456"), "{kind}: PIN leaked: {line}");
        }
    }
    let out = env.ossl(&[
        "dgst",
        "-sha256",
        "-sign",
        &format!("{};type=private?pin-value=123456", env.token.uri()),
        "data.txt",
    ]);
    assert!(
        out.stderr.contains("object=ec-p384;type=private"),
        "{kind}: the candidates are listed: {}",
        out.stderr
    );
    // No PIN anywhere and no terminal: a clear "PIN required", no prompt, no hang.
    let no_pin = format!("{};type=private", env.token.object_uri("ec-p256"));
    let out = run_with(
        &mut env.ossl_cmd(&["pkey", "-in", &no_pin, "-pubout"]),
        None,
        Duration::from_secs(30),
    );
    assert!(!out.success(), "{kind}");
    assert!(
        out.stderr.contains("PIN required") || out.stderr.contains("needs a PIN"),
        "{kind}: {}",
        out.stderr
    );
}

/// No server at all, and a server that accepts and never answers: the same for either kind of
/// server, so this test runs once. `run_with` kills a command that runs past its limit and the
/// test then fails: that is the "never a hang" check.
#[test]
fn server_down_fails_with_a_clear_message() {
    let env = env(ServerKind::Forwarder, &[Key::EcP256]);
    let uri = env.key_uri("ec-p256");
    let pkey = |address: &str, timeout: Option<&str>| {
        let mut cmd = env.ossl_cmd(&["pkey", "-in", &uri, "-pubout"]);
        cmd.env("P11FWD_SERVER_ADDRESS", address);
        if let Some(t) = timeout {
            cmd.env("P11FWD_TIMEOUT", t);
        }
        run_with(&mut cmd, None, Duration::from_secs(30))
    };
    let nobody = format!("unix:path={}", s(&env.path("nobody-listens.sock")));
    let out = pkey(&nobody, None);
    assert!(!out.success());
    assert!(
        out.stderr.contains("cannot reach the p11fwd server"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("nobody-listens.sock"), "{}", out.stderr);
    // A server that accepts and then never answers: the per-call timeout ends it.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let _accepting = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let out = pkey(&format!("unix:path={}", s(&sock)), Some("2"));
    assert!(!out.success());
    assert!(
        out.stderr.contains("cannot reach the p11fwd server"),
        "{}",
        out.stderr
    );
}

#[test]
fn round_trips_per_key_load_signature_and_csr() {
    for kind in KINDS {
        let env = env(kind, &[Key::EcP256, Key::Rsa2048, Key::Ed25519]);
        for label in ["ec-p256", "rsa2048", "ed25519"] {
            let what = format!("{kind}, {label}");
            env.take_round_trips();
            let pubkey = env.export_public(label);
            let load = env.take_round_trips();
            let sig = env.path("rt.sig");
            if label == "ed25519" {
                env.ok(&rawin_sign(&env.key_uri(label), &sig));
            } else {
                env.ok(&dgst_sign("-sha256", &env.key_uri(label), &sig));
                env.verify(&pubkey, &sig, &["-sha256"]);
            }
            let sign = env.take_round_trips();
            env.ok(&[
                "req",
                "-new",
                "-key",
                &env.key_uri(label),
                "-subj",
                "/CN=rt",
                "-out",
                s(&env.path("rt.csr")),
            ]);
            let csr = env.take_round_trips();
            println!(
                "{what}: key load {load} round trips, load + 1 signature {sign}, req -new {csr}"
            );
            // Version byte + C_Initialize + slot list share a write: key load 4, req -new 5.
            assert!(load <= 4, "{what}: key load took {load} round trips");
            assert_eq!(sign, load + 1, "{what}: one round trip per signature");
            assert!(csr <= 5, "{what}: req -new took {csr} round trips");
        }
    }
}

#[test]
fn block_operations_hides_them_as_pkcs11_provider_does() {
    for kind in KINDS {
        block_operations_hides_them_as_pkcs11_provider_does_behind(kind);
    }
}

fn block_operations_hides_them_as_pkcs11_provider_does_behind(kind: ServerKind) {
    let env = env(kind, &[Key::EcP256]);
    let with = |cnf: &Path, args: &[&str]| {
        let mut cmd = env.openssl_cmd(args);
        cmd.env("OPENSSL_CONF", cnf);
        run(&mut cmd)
    };
    let p11fwd_lines =
        |out: &RunOutput| out.stdout.lines().filter(|l| l.contains("p11fwd")).count();
    // Nothing blocked: p11fwd offers signatures and key managers.
    let open = env.config_with("open.cnf", "");
    for what in ["-signature-algorithms", "-key-managers"] {
        let out = with(&open, &["list", what]);
        assert!(
            out.success() && p11fwd_lines(&out) > 0,
            "{kind}, {what}: {}",
            out.stdout
        );
    }
    // `signature` blocked: no signature algorithms of p11fwd, key managers still there, and a
    // signature with a token key fails (the key cannot leave the token for `default`).
    let blocked = env.config_with(
        "blocked.cnf",
        "pkcs11-module-block-operations = signature digest\n",
    );
    let out = with(&blocked, &["list", "-signature-algorithms"]);
    assert!(
        out.success() && p11fwd_lines(&out) == 0,
        "{kind}: {}",
        out.stdout
    );
    let out = with(&blocked, &["list", "-digest-algorithms"]);
    assert!(
        out.success() && p11fwd_lines(&out) == 0,
        "{kind}: {}",
        out.stdout
    );
    let out = with(&blocked, &["list", "-key-managers"]);
    assert!(
        out.success() && p11fwd_lines(&out) > 0,
        "{kind}: {}",
        out.stdout
    );
    let uri = env.key_uri("ec-p256");
    let out = with(&blocked, &["dgst", "-sha256", "-sign", &uri, "data.txt"]);
    assert!(!out.success(), "{kind}: signed with signatures blocked");
    assert!(!out.stderr.contains("panicked"), "{kind}: {}", out.stderr);
    // The same command signs when nothing is blocked.
    let sig = env.path("open.sig");
    let out = with(&open, &dgst_sign("-sha256", &uri, &sig));
    assert!(out.success(), "{kind}: {}", out.stderr);
    env.verify(&env.token.public_pem("ec-p256"), &sig, &["-sha256"]);
    // A name pkcs11-provider does not know: the provider refuses to load, and says why.
    let bad = env.config_with("bad.cnf", "pkcs11-module-block-operations = sign\n");
    let out = with(&bad, &["list", "-providers"]);
    assert!(!out.stdout.contains("p11fwd"), "{kind}: {}", out.stdout);
    let mut cmd = env.openssl_cmd(&["list", "-providers"]);
    cmd.env("OPENSSL_CONF", &bad).env("P11FWD_DEBUG", "1");
    let out = run(&mut cmd);
    assert!(
        out.stderr.contains("pkcs11-module-block-operations") && out.stderr.contains("\"sign\""),
        "{kind}: {}",
        out.stderr
    );
}

/// PSS whose MGF1 digest differs from the message digest (SHA-256 message, MGF1 with SHA-384
/// and SHA-1). SoftHSM refuses such parameters at C_SignInit (it wants MGF1 = the hash), so
/// p11fwd pads PSS itself and signs with raw RSA when the key allows CKM_RSA_X_509 (the RSA key);
/// the PSS-only key allows nothing else, and the error says so.
#[test]
fn pss_with_a_different_mgf1_digest() {
    for kind in KINDS {
        let env = env(kind, &[Key::Rsa2048, Key::RsaPss]);
        for label in ["rsa2048", "rsa-pss"] {
            let pubkey = env.export_public(label);
            for mgf1 in ["sha384", "sha1"] {
                let what = format!("{kind}, {label}, MGF1 {mgf1}");
                let opts = [
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    &format!("rsa_mgf1_md:{mgf1}"),
                    "-sigopt",
                    "rsa_pss_saltlen:digest",
                ]
                .map(str::to_owned);
                let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
                let sig = env.path(&format!("{label}-{mgf1}.sig"));
                let key = env.key_uri(label);
                let mut args = dgst_sign("-sha256", &key, &sig).to_vec();
                args.splice(1..1, opts.iter().copied());
                let out = env.ossl(&args);
                if label == "rsa-pss" {
                    assert!(
                        !out.success()
                            && out.stderr.contains("the token refuses them")
                            && out.stderr.contains("CKM_RSA_X_509"),
                        "{what}: {}",
                        out.stderr
                    );
                    continue;
                }
                provider_common::assert_ok(&out, &what);
                let mut verify = vec!["-sha256"];
                verify.extend(&opts);
                env.verify(&pubkey, &sig, &verify);
                // The wrong MGF1 digest does not verify.
                let wrong = env.soft(&provider_common::dgst_verify(
                    &pubkey,
                    &sig,
                    &[
                        "-sha256",
                        "-sigopt",
                        "rsa_padding_mode:pss",
                        "-sigopt",
                        "rsa_mgf1_md:sha256",
                    ],
                ));
                assert!(
                    !wrong.stdout.contains("Verified OK"),
                    "{what}: MGF1 ignored"
                );
            }
        }
    }
}

/// `sign_raw URI MODE IN OUT`: one `EVP_PKEY_sign` of the bytes in IN with the token key.
/// MODE `rsa-none`: RSA without padding (`RSA_NO_PADDING`, CKM_RSA_X_509), the signature to
/// OUT. MODE `ecdsa-raw`: ECDSA with p11fwd's ctx parameter `p11fwd-ecdsa-raw` = 1; prints
/// "raw <length>" and writes the `r|s` it got to OUT as a DER ECDSA-Sig-Value.
const SIGN_RAW_C: &str = r#"
#include "p11fwd_test.h"
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/rsa.h>

static size_t slurp(const char *path, unsigned char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(buf, 1, cap, f) : 0;
    if (f) fclose(f);
    return n;
}

static int spill(const char *path, const unsigned char *buf, size_t len) {
    FILE *f = fopen(path, "wb");
    int ok = f != NULL && fwrite(buf, 1, len, f) == len;
    if (f) fclose(f);
    return ok;
}

int main(int argc, char **argv) {
    unsigned char in[512], sig[1024];
    size_t siglen = sizeof sig;
    if (argc != 5 || !load_providers())
        return 2;
    EVP_PKEY *key = load_key(argv[1]);
    size_t inlen = slurp(argv[3], in, sizeof in);
    EVP_PKEY_CTX *ctx = key ? EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL) : NULL;
    if (ctx == NULL || inlen == 0 || EVP_PKEY_sign_init(ctx) <= 0)
        return 3;
    int raw = strcmp(argv[2], "ecdsa-raw") == 0;
    if (raw) {
        int one = 1;
        OSSL_PARAM p[] = {OSSL_PARAM_construct_int("p11fwd-ecdsa-raw", &one), OSSL_PARAM_END};
        if (EVP_PKEY_CTX_set_params(ctx, p) <= 0) {
            ERR_print_errors_fp(stderr);
            return 4;
        }
    } else if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_NO_PADDING) <= 0) {
        ERR_print_errors_fp(stderr);
        return 4;
    }
    if (EVP_PKEY_sign(ctx, sig, &siglen, in, inlen) <= 0) {
        ERR_print_errors_fp(stderr);
        return 5;
    }
    if (!raw)
        return spill(argv[4], sig, siglen) ? 0 : 6;
    printf("raw %zu\n", siglen);
    ECDSA_SIG *e = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)siglen / 2, NULL), *s = BN_bin2bn(sig + siglen / 2, (int)siglen / 2, NULL);
    unsigned char *der = NULL;
    int n = e && r && s && ECDSA_SIG_set0(e, r, s) ? i2d_ECDSA_SIG(e, &der) : 0;
    return n > 0 && spill(argv[4], der, (size_t)n) ? 0 : 7;
}
"#;

/// Raw RSA (`RSA_NO_PADDING` on a modulus-sized input: CKM_RSA_X_509; OpenSSL 3.0's `pkeyutl`
/// cannot ask for it, a program can) checked with OpenSSL's raw public operation; ECDSA with
/// `p11fwd-ecdsa-raw` gives `r|s` of twice the field size, verified after conversion to DER.
#[test]
fn raw_rsa_and_raw_ecdsa_signatures() {
    for kind in KINDS {
        let env = env(kind, &[Key::Rsa2048, Key::EcP256, Key::EcP384]);
        let bin = env.compile_c("sign_raw", SIGN_RAW_C);
        let sign = |label: &str, mode: &str, input: &Path, out: &Path| {
            let out = run(env
                .c_command(&bin)
                .args([&env.key_uri(label), mode, s(input), s(out)]));
            provider_common::assert_ok(&out, &format!("{kind}, {label}, {mode}"));
            out.stdout
        };
        // RSA: 256 bytes below the modulus (a leading zero byte).
        let block: Vec<u8> = std::iter::once(0u8)
            .chain((1..=255).map(|b| b as u8))
            .collect();
        let input = env.path("block.bin");
        std::fs::write(&input, &block).unwrap();
        let sig = env.path("raw-rsa.sig");
        sign("rsa2048", "rsa-none", &input, &sig);
        let recovered = env.path("recovered.bin");
        env.soft_ok(&[
            "pkeyutl",
            "-verifyrecover",
            "-pubin",
            "-inkey",
            s(&env.export_public("rsa2048")),
            "-pkeyopt",
            "rsa_padding_mode:none",
            "-in",
            s(&sig),
            "-out",
            s(&recovered),
        ]);
        assert_eq!(std::fs::read(&recovered).unwrap(), block, "{kind}: raw RSA");
        // ECDSA r|s.
        let digest = env.path("digest.bin");
        env.soft_ok(&["dgst", "-sha256", "-binary", "-out", s(&digest), "data.txt"]);
        for (label, field) in [("ec-p256", 32), ("ec-p384", 48)] {
            let der = env.path(&format!("{label}.raw.der"));
            let stdout = sign(label, "ecdsa-raw", &digest, &der);
            assert_eq!(
                stdout.trim(),
                format!("raw {}", 2 * field),
                "{kind}, {label}"
            );
            let out = env.soft(&[
                "pkeyutl",
                "-verify",
                "-pubin",
                "-inkey",
                s(&env.export_public(label)),
                "-in",
                s(&digest),
                "-sigfile",
                s(&der),
            ]);
            assert!(
                out.stdout.contains("Signature Verified Successfully"),
                "{kind}, {label}: {}{}",
                out.stdout,
                out.stderr
            );
        }
    }
}

/// The token's hashed mechanism (CKM_SHA256_RSA_PKCS, CKM_SHA256_RSA_PKCS_PSS) signs when the
/// token lists it; with `P11FWD_TOKEN_HASH=0` p11fwd hashes and the token gets the raw
/// mechanism. Seen at the token with pkcs11-spy.
#[test]
fn the_tokens_hashed_mechanism_unless_token_hash_is_off() {
    for kind in KINDS {
        let (env, spy_log) = Env::with_spy(kind, &[Key::Rsa2048]);
        let pubkey = env.token.public_pem("rsa2048");
        let key = env.key_uri("rsa2048");
        let mechanisms = |args: &[&str], local: bool| {
            let before = provider_common::spy_calls(&spy_log).len();
            let mut cmd = env.ossl_cmd(args);
            if local {
                cmd.env("P11FWD_TOKEN_HASH", "0");
            }
            let out = run(&mut cmd);
            provider_common::assert_ok(&out, &format!("{kind}: {args:?}"));
            provider_common::spy_calls(&spy_log)[before..]
                .iter()
                .filter_map(|c| c.strip_prefix("C_SignInit ").map(str::to_owned))
                .collect::<Vec<String>>()
        };
        let sig = env.path("hash.sig");
        let pkcs1 = dgst_sign("-sha256", &key, &sig);
        assert_eq!(mechanisms(&pkcs1, false), ["CKM_SHA256_RSA_PKCS"], "{kind}");
        env.verify(&pubkey, &sig, &["-sha256"]);
        assert_eq!(mechanisms(&pkcs1, true), ["CKM_RSA_PKCS"], "{kind}");
        env.verify(&pubkey, &sig, &["-sha256"]);
        let mut pss = pkcs1.to_vec();
        pss.splice(1..1, ["-sigopt", "rsa_padding_mode:pss"]);
        assert_eq!(
            mechanisms(&pss, false),
            ["CKM_SHA256_RSA_PKCS_PSS"],
            "{kind}"
        );
        env.verify(
            &pubkey,
            &sig,
            &["-sha256", "-sigopt", "rsa_padding_mode:pss"],
        );
        assert_eq!(mechanisms(&pss, true), ["CKM_RSA_PKCS_PSS"], "{kind}");
        env.verify(
            &pubkey,
            &sig,
            &["-sha256", "-sigopt", "rsa_padding_mode:pss"],
        );
    }
}

/// Loads openssl.cnf `argv[1]` into two library contexts and p11fwd into each (two provider
/// instances in one process), then signs in the second.
const TWO_CONTEXTS_C: &str = r#"
#include "p11fwd_test.h"

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    for (int i = 0; i < 2; i++) {
        OSSL_LIB_CTX *ctx = OSSL_LIB_CTX_new();
        if (ctx == NULL || !OSSL_LIB_CTX_load_config(ctx, argv[1])
            || OSSL_PROVIDER_load(ctx, "p11fwd") == NULL) {
            ERR_print_errors_fp(stderr);
            return 3;
        }
    }
    if (!load_providers())
        return 4;
    EVP_PKEY *key = load_key(argv[2]);
    if (key == NULL || !sign_digest(key))
        return 5;
    puts("signed");
    return 0;
}
"#;

/// pkcs11-provider's openssl.cnf keys that p11fwd does not implement: each one set to
/// something p11fwd does not do anyway is named on stderr once per process (here: three
/// provider instances), with what p11fwd does instead, and p11fwd still works;
/// `pkcs11-module-allow-export = 1` (keep public-key operations on the token) is refused,
/// because p11fwd does them in software. The same for either server: run once.
#[test]
fn pkcs11_provider_keys_p11fwd_lacks_are_named_once_or_refused() {
    let env = env(ServerKind::Forwarder, &[Key::EcP256]);
    let keys = [
        ("pkcs11-module-path", "/usr/lib/softhsm/libsofthsm2.so"),
        ("pkcs11-module-init-args", "configDir=/etc/pki/nssdb"),
        ("pkcs11-module-load-behavior", "early"),
        ("pkcs11-module-cache-keys", "true"),
        ("pkcs11-module-cache-sessions", "0"),
        ("pkcs11-module-quirks", "no-deinit no-allowed-mechanisms"),
        ("pkcs11-module-assume-fips", "true"),
        ("pkcs11-module-encode-provider-uri-to-pem", "false"),
    ];
    let lines: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    // Values that describe what p11fwd does anyway: no warning.
    let quiet = env.config_with(
        "quiet.cnf",
        "pkcs11-module-allow-export = 0\npkcs11-module-load-behavior = lazy\n\
         pkcs11-module-cache-keys = false\npkcs11-module-quirks = no-deinit\n\
         pkcs11-module-assume-fips = false\npkcs11-module-encode-provider-uri-to-pem = true\n",
    );
    let loud = env.config_with("loud.cnf", &lines);
    let bin = env.compile_c("two_contexts", TWO_CONTEXTS_C);
    for (cnf, warned) in [(&quiet, false), (&loud, true)] {
        let mut cmd = env.c_command(&bin);
        cmd.arg(cnf)
            .arg(env.key_uri("ec-p256"))
            .env("OPENSSL_CONF", cnf);
        let out = run(&mut cmd);
        assert!(
            out.success() && out.stdout.contains("signed"),
            "{}: {}{}",
            cnf.display(),
            out.stdout,
            out.stderr
        );
        for (key, _) in keys {
            let said = format!("p11fwd: warning: openssl.cnf key {key} is ignored: ");
            let n = out.stderr.matches(&said).count();
            assert_eq!(
                n,
                usize::from(warned),
                "{key} in {}:\n{}",
                cnf.display(),
                out.stderr
            );
        }
    }
    let refused = env.config_with("export.cnf", "pkcs11-module-allow-export = 1\n");
    // (The CLI drops a config activation error silently; the trace shows it.)
    let mut cmd = env.openssl_cmd(&["list", "-providers"]);
    cmd.env("OPENSSL_CONF", &refused).env("P11FWD_DEBUG", "1");
    let out = run(&mut cmd);
    assert!(
        !out.stdout.contains("p11fwd")
            && out.stderr.contains(
                "pkcs11-module-allow-export: 1 (public-key operations on the token) is not possible"
            ),
        "{}{}",
        out.stdout,
        out.stderr
    );
}

/// `EVP_PKEY_eq` with a key that is not the certificate's: `x509 -CA -CAkey` and `ca -cert
/// -keyfile` refuse a token key of the same type (another EC key) and of another type, so a
/// CA never signs with the wrong key.
#[test]
fn a_ca_key_that_does_not_match_the_certificate_is_refused() {
    for kind in KINDS {
        let env = env(kind, &[Key::EcP256, Key::EcP384, Key::Rsa2048]);
        let csr = leaf_csr(&env);
        let ca = env.token.cert_pem("ec-p256");
        let leaf = env.path("mismatch.pem");
        for (label, why) in [
            ("ec-p384", "key values mismatch"),
            ("rsa2048", "key type mismatch"),
        ] {
            let what = format!("{kind}, ec-p256 certificate with the {label} key");
            let key = env.key_uri(label);
            let out = env.ossl(&x509_ca_sign(&csr, s(&ca), &key, &leaf));
            assert!(
                !out.success() && out.stderr.contains(why),
                "{what}: x509: {}",
                out.stderr
            );
            let out = env.ossl(&ca_sign(&ca_config(&env), s(&ca), &key, &csr, &leaf));
            assert!(
                !out.success() && out.stderr.contains("CA private key do not match"),
                "{what}: ca: {}{}",
                out.stdout,
                out.stderr
            );
        }
    }
}

/// Prints the number of threads of the process (/proc/self/task) before the providers are
/// loaded and after a key is loaded and has signed twice.
const THREADS_C: &str = r#"
#include "p11fwd_test.h"
#include <dirent.h>

static int threads(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.';
    if (d) closedir(d);
    return n;
}

int main(int argc, char **argv) {
    int before = threads();
    if (argc != 2 || !load_providers())
        return 2;
    EVP_PKEY *key = load_key(argv[1]);
    if (key == NULL || !sign_digest(key) || !sign_digest(key))
        return 3;
    printf("threads %d %d\n", before, threads());
    return 0;
}
"#;

/// p11fwd starts no thread in the host application: loading the provider, a key from the
/// token and signing leave a single-threaded program single-threaded.
#[test]
fn loading_and_signing_start_no_thread() {
    for kind in KINDS {
        let env = env(kind, &[Key::EcP256, Key::Rsa2048]);
        let bin = env.compile_c("threads", THREADS_C);
        for label in ["ec-p256", "rsa2048"] {
            let out = run(env.c_command(&bin).arg(env.key_uri(label)));
            provider_common::assert_ok(&out, &format!("{kind}, {label}"));
            assert_eq!(out.stdout.trim(), "threads 1 1", "{kind}, {label}");
        }
    }
}

/// A key the token lets sign only with raw RSA (`CKA_ALLOWED_MECHANISMS` = {CKM_RSA_X_509}, like
/// smart cards without PSS: pkcs11-provider #552, libp11 #628): p11fwd pads PKCS#1 v1.5 and PSS
/// itself and the token only exponentiates.
#[test]
fn raw_rsa_only_keys_sign_pkcs1_and_pss() {
    for kind in KINDS {
        raw_rsa_only_keys_sign_pkcs1_and_pss_behind(kind);
    }
}

fn raw_rsa_only_keys_sign_pkcs1_and_pss_behind(kind: ServerKind) {
    let env = env(kind, &[Key::EcP256]);
    env.token.generate_key_pair(
        "rsa-raw",
        "0b",
        "rsa:2048",
        &["--allowed-mechanisms", "RSA-X-509", "--usage-sign"],
    );
    let pubkey = env.path("rsa-raw.pub.pem");
    let public_uri = format!("{};type=public", env.token.object_uri("rsa-raw"));
    env.ok(&[
        "pkey",
        "-pubin",
        "-in",
        &public_uri,
        "-pubout",
        "-out",
        s(&pubkey),
    ]);
    let uri = env.key_uri("rsa-raw");
    let mut cases: Vec<Vec<&str>> = vec![vec![]];
    for salt in ["digest", "max", "auto", "20", "0"] {
        cases.push(vec!["-sigopt", "rsa_padding_mode:pss", "-sigopt", salt]);
    }
    for (i, case) in cases.iter().enumerate() {
        let salt_opt;
        let mut sign_opts: Vec<&str> = Vec::new();
        let mut verify_opts: Vec<&str> = Vec::new();
        if let [_, mode, _, salt] = case.as_slice() {
            salt_opt = format!("rsa_pss_saltlen:{salt}");
            sign_opts.extend(["-sigopt", mode, "-sigopt", &salt_opt]);
            verify_opts.extend(["-sigopt", mode, "-sigopt"]);
            // "auto" when verifying recovers any salt length.
            verify_opts.push(if matches!(*salt, "max" | "auto") {
                "rsa_pss_saltlen:auto"
            } else {
                &salt_opt
            });
        }
        for md in ["-sha256", "-sha384"] {
            let sig = env.path(&format!("raw-{i}{md}.sig"));
            let mut args = vec!["dgst", md, "-sign", &uri];
            args.extend(&sign_opts);
            args.extend(["-out", s(&sig), "data.txt"]);
            env.ok(&args);
            let mut v = vec![md];
            v.extend(&verify_opts);
            env.verify(&pubkey, &sig, &v);
        }
    }
}
