//! p11fwd.so part 2: RSA decryption with token keys (PKCS#1 v1.5 with implicit rejection, OAEP
//! with every digest/label combination OpenSSL offers, raw RSA) and encryption with their public
//! part, against SoftHSM behind both servers. Ciphertexts are made by OpenSSL's default
//! provider from the fixture's public key; results are compared with the plaintext.

#![allow(clippy::unwrap_used)]

mod provider_common;

use p11fwd_tests::{Key, Profile, ServerKind, TestToken};
use provider_common::{Env, KINDS, s};

const SECRET: &[u8] = b"a 32-byte secret for p11fwd test";

/// Encrypts SECRET in software with `opts`; returns the ciphertext file.
fn encrypt(env: &Env, name: &str, pubkey: &str, opts: &[&str]) -> std::path::PathBuf {
    let ct = env.path(name);
    let mut args = vec!["pkeyutl", "-encrypt", "-pubin", "-inkey", pubkey];
    args.extend(["-in", "secret.bin", "-out", s(&ct)]);
    args.extend(opts);
    env.soft_ok(&args);
    ct
}

fn decrypt(env: &Env, key: &str, ct: &std::path::Path, opts: &[&str]) -> Vec<u8> {
    let out = env.path("plain.bin");
    let _ = std::fs::remove_file(&out);
    let mut args = vec![
        "pkeyutl",
        "-decrypt",
        "-inkey",
        key,
        "-in",
        s(ct),
        "-out",
        s(&out),
    ];
    args.extend(opts);
    env.ok(&args);
    std::fs::read(out).unwrap()
}

#[test]
fn pkcs1_oaep_and_raw_decryption_on_both_servers() {
    for kind in KINDS {
        let env = Env::new(kind, &[Key::Rsa2048]);
        std::fs::write(env.path("secret.bin"), SECRET).unwrap();
        let pubkey = env.token.public_pem("rsa2048");
        let key = env.key_uri("rsa2048");
        let cases: Vec<(&str, Vec<&str>)> = vec![
            ("pkcs1", vec![]),
            ("oaep-default", vec!["-pkeyopt", "rsa_padding_mode:oaep"]),
            (
                "oaep-sha256",
                vec![
                    "-pkeyopt",
                    "rsa_padding_mode:oaep",
                    "-pkeyopt",
                    "rsa_oaep_md:sha256",
                ],
            ),
            (
                "oaep-sha256-mgf1-sha1-label",
                vec![
                    "-pkeyopt",
                    "rsa_padding_mode:oaep",
                    "-pkeyopt",
                    "rsa_oaep_md:sha256",
                    "-pkeyopt",
                    "rsa_mgf1_md:sha1",
                    "-pkeyopt",
                    "rsa_oaep_label:0102030405",
                ],
            ),
            (
                "oaep-sha1-label",
                vec![
                    "-pkeyopt",
                    "rsa_padding_mode:oaep",
                    "-pkeyopt",
                    "rsa_oaep_label:cafe",
                ],
            ),
            (
                "oaep-sha512",
                vec![
                    "-pkeyopt",
                    "rsa_padding_mode:oaep",
                    "-pkeyopt",
                    "rsa_oaep_md:sha512",
                ],
            ),
        ];
        for (name, opts) in &cases {
            let ct = encrypt(&env, &format!("{name}.ct"), s(&pubkey), opts);
            env.take_round_trips();
            let plain = decrypt(&env, &key, &ct, opts);
            let trips = env.take_round_trips();
            assert_eq!(plain, SECRET, "{kind}: {name}");
            println!("{kind}: {name}: key load + decryption = {trips} round trips");
        }
        // Raw RSA: the fixture's software key makes a raw block, the token undoes it.
        let block = env.path("raw.in");
        let mut m = vec![0u8; 256];
        m[1..33].copy_from_slice(SECRET);
        std::fs::write(&block, &m).unwrap();
        let ct = env.path("raw.ct");
        env.soft_ok(&[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            s(&pubkey),
            "-in",
            s(&block),
            "-out",
            s(&ct),
            "-pkeyopt",
            "rsa_padding_mode:none",
        ]);
        let plain = decrypt(&env, &key, &ct, &["-pkeyopt", "rsa_padding_mode:none"]);
        assert_eq!(plain, m, "{kind}: raw");
        // Encryption with the token key's public part (software), decrypted on the token.
        let ct2 = env.path("by-token-key.ct");
        env.ok(&[
            "pkeyutl",
            "-encrypt",
            "-inkey",
            &key,
            "-in",
            "secret.bin",
            "-out",
            s(&ct2),
        ]);
        assert_eq!(decrypt(&env, &key, &ct2, &[]), SECRET, "{kind}: encrypt");
    }
}

/// A bad PKCS#1 v1.5 padding gives a deterministic synthetic message (implicit rejection),
/// never an error, unless implicit rejection is switched off.
#[test]
fn bad_pkcs1_padding_is_implicitly_rejected() {
    for kind in KINDS {
        let env = Env::new(kind, &[Key::Rsa2048]);
        let pubkey = env.token.public_pem("rsa2048");
        let key = env.key_uri("rsa2048");
        // A raw block that is not PKCS#1 type 2 (first bytes 00 01).
        let mut m = vec![0x11u8; 256];
        m[0] = 0;
        m[1] = 1;
        std::fs::write(env.path("bad.in"), &m).unwrap();
        let ct = env.path("bad.ct");
        env.soft_ok(&[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            s(&pubkey),
            "-in",
            "bad.in",
            "-out",
            s(&ct),
            "-pkeyopt",
            "rsa_padding_mode:none",
        ]);
        let a = decrypt(&env, &key, &ct, &[]);
        assert!(a.len() <= 256 - 11, "{kind}: {} bytes", a.len());
        // Deterministic: the same synthetic message in another process (the secret is derived
        // from the key on the token, not drawn per process).
        let b = decrypt(&env, &key, &ct, &[]);
        assert_eq!(a, b, "{kind}");
        // OpenSSL 3.2's `implicit-rejection` parameter switches it off: then an error.
        let out = env.ossl(&[
            "pkeyutl",
            "-decrypt",
            "-inkey",
            &key,
            "-in",
            s(&ct),
            "-pkeyopt",
            "implicit-rejection:0",
        ]);
        assert!(!out.success(), "{kind}: {}", out.stdout);
        assert!(
            out.stderr.contains("decryption failed"),
            "{kind}: {}",
            out.stderr
        );
    }
}

/// The vectors-profile key allows CKM_RSA_PKCS and CKM_RSA_PKCS_OAEP but not CKM_RSA_X_509:
/// PKCS#1 goes to the token's mechanism, OAEP with SHA-1 too, and OAEP with SHA-256 (which
/// SoftHSM refuses at C_DecryptInit) is a clear error.
#[test]
fn a_key_without_raw_rsa_uses_the_tokens_padding() {
    for kind in KINDS {
        let token = TestToken::builder()
            .profile(Profile::Vectors)
            .with(Key::Rsa2048)
            .build();
        let env = Env::with_token(kind, token);
        std::fs::write(env.path("secret.bin"), SECRET).unwrap();
        let pubkey = env.token.public_pem("rsa2048");
        let key = env.key_uri("rsa2048");
        let ct = encrypt(&env, "p1.ct", s(&pubkey), &[]);
        assert_eq!(
            decrypt(&env, &key, &ct, &[]),
            SECRET,
            "{kind}: pkcs1 on token"
        );
        let oaep = ["-pkeyopt", "rsa_padding_mode:oaep"];
        let ct = encrypt(&env, "o1.ct", s(&pubkey), &oaep);
        assert_eq!(
            decrypt(&env, &key, &ct, &oaep),
            SECRET,
            "{kind}: oaep on token"
        );
        // A bad padding through the token's CKM_RSA_PKCS: still no error.
        let mut m = vec![0x22u8; 256];
        m[0] = 0;
        m[1] = 1;
        std::fs::write(env.path("bad.in"), &m).unwrap();
        let bad = env.path("bad.ct");
        env.soft_ok(&[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            s(&pubkey),
            "-in",
            "bad.in",
            "-out",
            s(&bad),
            "-pkeyopt",
            "rsa_padding_mode:none",
        ]);
        let synthetic = decrypt(&env, &key, &bad, &[]);
        assert!(synthetic.len() <= 245, "{kind}");
        assert_eq!(
            synthetic,
            decrypt(&env, &key, &bad, &[]),
            "{kind}: deterministic"
        );
        let sha256 = [
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
        ];
        let ct = encrypt(&env, "o256.ct", s(&pubkey), &sha256);
        let mut args = vec!["pkeyutl", "-decrypt", "-inkey", &key, "-in", s(&ct)];
        args.extend(sha256);
        let out = env.ossl(&args);
        assert!(!out.success(), "{kind}");
        assert!(
            out.stderr.contains("OAEP with these parameters"),
            "{kind}: {}",
            out.stderr
        );
    }
}

#[test]
fn one_round_trip_per_decryption() {
    let env = Env::new(ServerKind::Forwarder, &[Key::Rsa2048]);
    std::fs::write(env.path("secret.bin"), SECRET).unwrap();
    let pubkey = env.token.public_pem("rsa2048");
    let key = env.key_uri("rsa2048");
    let ct = encrypt(&env, "p1.ct", s(&pubkey), &[]);
    // pkey loads the key only; pkeyutl loads and decrypts: the difference is the decryption.
    env.take_round_trips();
    env.ok(&["pkey", "-in", &key, "-pubout", "-out", "pub.pem"]);
    let load = env.take_round_trips();
    decrypt(&env, &key, &ct, &[]);
    let both = env.take_round_trips();
    println!("key load {load} round trips, load + decryption {both}");
    assert_eq!(both, load + 1);
}
