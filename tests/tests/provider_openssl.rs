//! p11fwd.so end to end: the real `openssl` CLI with token keys on SoftHSM behind a stock
//! `p11-kit server` (and `p11fwd server` when `P11FWD_TEST_FORWARDER=1`), every signature
//! verified by OpenSSL's default provider from the exported public key and from the fixture's
//! PEM.
//!
//! Needs `cargo build --workspace` first (the tests load the built `libp11fwd_provider.so`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use p11fwd_tests::artifacts::ModuleTree;
use p11fwd_tests::relay::Relay;
use p11fwd_tests::run::{run, run_with};
use p11fwd_tests::{Key, RunOutput, StockServer, TestToken};

/// One token, one server, a module dir, a scratch dir.
struct Env {
    token: TestToken,
    server: StockServer,
    modules: ModuleTree,
    scratch: tempfile::TempDir,
    /// Where the provider connects (the server, or a relay in front of it).
    address: String,
}

impl Env {
    fn new(keys: &[Key]) -> Self {
        let mut b = TestToken::builder();
        for k in keys {
            b = b.with(*k);
        }
        let token = b.build();
        let server = StockServer::start(&token);
        let address = server.address();
        let scratch = tempfile::tempdir().expect("scratch dir");
        std::fs::write(scratch.path().join("empty.cnf"), "").expect("empty config");
        std::fs::write(scratch.path().join("data.txt"), b"p11fwd signs this\n").expect("data");
        Self {
            token,
            server,
            modules: ModuleTree::new(),
            scratch,
            address,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// `pkcs11:token=...;object=<label>;type=private?pin-value=...`
    fn key_uri(&self, label: &str) -> String {
        format!(
            "{};type=private?pin-value={}",
            self.token.object_uri(label),
            self.token.user_pin()
        )
    }

    fn openssl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("openssl");
        cmd.args(args)
            .env("OPENSSL_MODULES", self.modules.ossl_modules_dir())
            .env("OPENSSL_CONF", self.path("empty.cnf"))
            .env("P11FWD_SERVER_ADDRESS", &self.address)
            .env_remove("P11FWD_DEBUG")
            .env_remove("P11_KIT_SERVER_ADDRESS")
            .current_dir(self.scratch.path());
        cmd
    }

    /// `openssl args...` with p11fwd (first) and default loaded.
    fn ossl(&self, args: &[&str]) -> RunOutput {
        // Options go before positional arguments (dgst's file).
        let mut all: Vec<&str> = args[..1].to_vec();
        all.extend(["-provider", "p11fwd", "-provider", "default"]);
        all.extend(&args[1..]);
        run(&mut self.openssl_cmd(&all))
    }

    /// `openssl args...` with nothing but what `args` says.
    fn raw(&self, args: &[&str]) -> RunOutput {
        run(&mut self.openssl_cmd(args))
    }

    fn ok(&self, args: &[&str]) -> RunOutput {
        let out = self.ossl(args);
        assert!(
            out.success() && !out.stderr.contains("panicked"),
            "openssl {args:?} failed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        out
    }

    /// Exports the token key's public key with p11fwd and checks it equals the fixture's PEM.
    fn export_public(&self, label: &str) -> PathBuf {
        let out = self.path(&format!("{label}.exported.pub.pem"));
        self.ok(&[
            "pkey",
            "-in",
            &self.key_uri(label),
            "-pubout",
            "-out",
            out.to_str().unwrap(),
        ]);
        let ours = std::fs::read_to_string(&out).unwrap();
        let fixture = std::fs::read_to_string(self.token.public_pem(label)).unwrap();
        if label != "rsa-pss" {
            assert_eq!(
                ours, fixture,
                "exported public key of {label} differs from the fixture"
            );
        }
        out
    }

    /// Verifies `sig` over data.txt with the default provider only.
    fn verify(&self, pubkey: &Path, sig: &Path, extra: &[&str]) {
        let mut args = vec![
            "dgst",
            "-verify",
            pubkey.to_str().unwrap(),
            "-signature",
            sig.to_str().unwrap(),
        ];
        args.extend(extra);
        args.push("data.txt");
        let out = run(&mut self.openssl_cmd(&args));
        assert!(
            out.success() && out.stdout.contains("Verified OK"),
            "verification failed: {args:?}\n{}{}",
            out.stdout,
            out.stderr
        );
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn provider_lists_its_algorithms() {
    let env = Env::new(&[Key::EcP256]);
    let out = env.ok(&["list", "-signature-algorithms"]);
    assert!(out.stdout.contains("p11fwd"), "{}", out.stdout);
}

#[test]
fn dgst_sign_with_every_key_type_verifies_in_software() {
    let keys = [Key::Rsa2048, Key::EcP256, Key::EcP384, Key::EcP521];
    let env = Env::new(&keys);
    for key in keys {
        let label = key.label();
        let pubkey = env.export_public(label);
        for md in ["-sha256", "-sha384", "-sha1", "-sha512", "-sha224"] {
            let sig = env.path(&format!("{label}{md}.sig"));
            env.ok(&[
                "dgst",
                md,
                "-sign",
                &env.key_uri(label),
                "-out",
                s(&sig),
                "data.txt",
            ]);
            env.verify(&pubkey, &sig, &[md]);
            env.verify(&env.token.public_pem(label), &sig, &[md]);
        }
    }
}

#[test]
fn rsa_pss_with_every_salt_length_mode() {
    let env = Env::new(&[Key::Rsa2048, Key::RsaPss]);
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
                    "auto".into()
                } else {
                    salt_opt.clone()
                };
                let verify_salt = if verify_salt == "auto" {
                    "rsa_pss_saltlen:auto".to_string()
                } else {
                    verify_salt
                };
                env.verify(
                    &pubkey,
                    &sig,
                    &[
                        md,
                        "-sigopt",
                        "rsa_padding_mode:pss",
                        "-sigopt",
                        &verify_salt,
                    ],
                );
            }
        }
    }
}

#[test]
fn ed25519_signs_with_pkeyutl_rawin() {
    let env = Env::new(&[Key::Ed25519]);
    let pubkey = env.export_public("ed25519");
    let sig = env.path("ed.sig");
    env.ok(&[
        "pkeyutl",
        "-sign",
        "-rawin",
        "-inkey",
        &env.key_uri("ed25519"),
        "-in",
        "data.txt",
        "-out",
        s(&sig),
    ]);
    let out = run(&mut env.openssl_cmd(&[
        "pkeyutl",
        "-verify",
        "-rawin",
        "-pubin",
        "-inkey",
        s(&pubkey),
        "-in",
        "data.txt",
        "-sigfile",
        s(&sig),
    ]));
    assert!(
        out.stdout.contains("Signature Verified Successfully"),
        "{}{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn req_new_works_with_and_without_the_default_provider() {
    let keys = [
        Key::Rsa2048,
        Key::EcP256,
        Key::EcP384,
        Key::Ed25519,
        Key::RsaPss,
    ];
    let env = Env::new(&keys);
    for key in keys {
        let label = key.label();
        let csr = env.path(&format!("{label}.csr"));
        env.ok(&[
            "req",
            "-new",
            "-key",
            &env.key_uri(label),
            "-subj",
            &format!("/CN={label}"),
            "-out",
            s(&csr),
        ]);
        let out = run(&mut env.openssl_cmd(&["req", "-in", s(&csr), "-verify", "-noout"]));
        assert!(
            out.stderr.contains("verify OK") || out.stdout.contains("verify OK"),
            "{label}: {}{}",
            out.stdout,
            out.stderr
        );
        if label != "rsa-pss" {
            // Only p11fwd: its digests, signature and SPKI encoder.
            let csr2 = env.path(&format!("{label}.only.csr"));
            let out = env.raw(&[
                "req",
                "-new",
                "-provider",
                "p11fwd",
                "-key",
                &env.key_uri(label),
                "-subj",
                &format!("/CN={label}"),
                "-out",
                s(&csr2),
            ]);
            assert!(out.success(), "{label} without default:\n{}", out.stderr);
            let out = run(&mut env.openssl_cmd(&["req", "-in", s(&csr2), "-verify", "-noout"]));
            assert!(
                out.stderr.contains("verify OK") || out.stdout.contains("verify OK"),
                "{}",
                out.stderr
            );
        }
    }
}
