//! p11fwd.so part 2: key generation on the token (`openssl genpkey -provider p11fwd -provider
//! default -algorithm RSA|EC|ED25519 -pkeyopt pkcs11_uri:...`), writing a URI-PEM file that
//! then signs (`pkeyutl -sign -inkey key.pem`), against SoftHSM behind both servers. The new
//! objects are checked with pkcs11-tool on the SoftHSM module directly.

#![allow(clippy::unwrap_used)]

mod provider_common;

use p11fwd_tests::run::run;
use p11fwd_tests::{Key, SOFTHSM_MODULE, require_tool};
use provider_common::{Env, KINDS, assert_ok, s};

/// What pkcs11-tool says about the objects labelled `label`.
fn objects(env: &Env, label: &str) -> String {
    let mut cmd = env.token.command(require_tool("pkcs11-tool"));
    cmd.args([
        "--module",
        SOFTHSM_MODULE,
        "-O",
        "--login",
        "--pin",
        "123456",
    ]);
    let out = run(&mut cmd);
    assert_ok(&out, "pkcs11-tool -O");
    // One block per object (a header line, then indented attribute lines): keep `label`'s.
    let mut blocks: Vec<String> = Vec::new();
    for line in out.stdout.lines() {
        if !line.starts_with(' ') {
            blocks.push(String::new());
        }
        if let Some(b) = blocks.last_mut() {
            b.push_str(line);
            b.push('\n');
        }
    }
    blocks
        .into_iter()
        .filter(|b| {
            b.lines()
                .any(|l| l.trim() == format!("label:      {label}"))
        })
        .collect()
}

#[test]
fn genpkey_creates_token_keys_that_sign_through_their_uri_pem_file() {
    for kind in KINDS {
        let env = Env::new(kind, &[Key::EcP256]);
        std::fs::write(env.path("m.txt"), b"signed by a generated key\n").unwrap();
        let cases: [(&str, &[&str], &[&str]); 4] = [
            (
                "gen-rsa",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
                &["-digest", "sha256"],
            ),
            (
                "gen-p256",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
                &["-digest", "sha256"],
            ),
            (
                "gen-p384",
                &[
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-384",
                    "-pkeyopt",
                    "pkcs11_key_usage:digitalSignature",
                ],
                &["-digest", "sha384"],
            ),
            ("gen-ed25519", &["-algorithm", "ED25519"], &[]),
        ];
        for (label, alg, digest) in cases {
            let what = format!("{kind}: {label}");
            let key_pem = env.path(&format!("{label}.pem"));
            let uri = format!(
                "pkcs11_uri:{};object={label}?pin-value=123456",
                env.token.uri()
            );
            let mut args = vec!["genpkey"];
            args.extend(alg);
            args.extend(["-pkeyopt", &uri, "-out", s(&key_pem)]);
            env.take_round_trips();
            let out = env.ossl_p11fwd_first(&args);
            assert_ok(&out, &what);
            let trips = env.take_round_trips();
            println!("{what}: genpkey took {trips} round trips");
            let pem = std::fs::read_to_string(&key_pem).unwrap();
            assert!(
                pem.starts_with("-----BEGIN PKCS#11 PROVIDER URI-----"),
                "{what}: {pem}"
            );
            let inside = p11fwd_conf::uripem::decode_pem(&pem).unwrap();
            assert!(
                inside.contains(&format!("object={label}")) && inside.contains("type=private"),
                "{inside}"
            );
            assert!(
                !inside.contains("pin-value"),
                "{what}: the PIN must not be written: {inside}"
            );
            // On the token: a pair with the label, a 16-byte id, private sensitive and never
            // extractable, both token objects.
            let listing = objects(&env, label);
            assert_eq!(
                listing.matches(&format!("label:      {label}")).count(),
                2,
                "{what}:\n{listing}"
            );
            assert!(
                listing.contains("sensitive, always sensitive, never extractable, local"),
                "{what}:\n{listing}"
            );
            let id_line = listing
                .lines()
                .find(|l| l.trim_start().starts_with("ID:"))
                .unwrap();
            assert_eq!(
                id_line.split(':').nth(1).unwrap().trim().len(),
                32,
                "{what}: {id_line}"
            );
            if label == "gen-p384" {
                let private = listing.split("Private Key Object").nth(1).unwrap();
                let usage = private.lines().find(|l| l.contains("Usage:")).unwrap();
                assert!(
                    usage.contains("sign")
                        && !usage.contains("derive")
                        && !usage.contains("decrypt"),
                    "{what}: {usage}"
                );
            }
            // Sign through the URI-PEM file (PIN from -passin), verify with the exported key.
            let sig = env.path(&format!("{label}.sig"));
            let mut sign = vec![
                "pkeyutl",
                "-sign",
                "-rawin",
                "-inkey",
                s(&key_pem),
                "-passin",
                "pass:123456",
                "-in",
                "m.txt",
                "-out",
                s(&sig),
            ];
            sign.extend(digest);
            env.ok(&sign);
            let public = env.path(&format!("{label}.pub"));
            env.ok(&[
                "pkey",
                "-in",
                s(&key_pem),
                "-passin",
                "pass:123456",
                "-pubout",
                "-out",
                s(&public),
            ]);
            let mut verify = vec![
                "pkeyutl",
                "-verify",
                "-rawin",
                "-pubin",
                "-inkey",
                s(&public),
                "-in",
                "m.txt",
                "-sigfile",
                s(&sig),
            ];
            verify.extend(digest);
            let out = env.soft(&verify);
            assert!(
                out.stdout.contains("Signature Verified Successfully"),
                "{what}: {}{}",
                out.stdout,
                out.stderr
            );
        }
        // With `default` loaded first, `-propquery provider=p11fwd` picks p11fwd's keymgmt.
        let out = env.ossl(&[
            "genpkey",
            "-propquery",
            "provider=p11fwd",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-pkeyopt",
            &format!(
                "pkcs11_uri:{};object=gen-propq?pin-value=123456",
                env.token.uri()
            ),
        ]);
        assert_ok(&out, "propquery");
        assert!(
            out.stdout.contains("BEGIN PKCS#11 PROVIDER URI"),
            "{}",
            out.stdout
        );
        // Without pkcs11_uri: refused, saying how to get a software key.
        let out = env.ossl_p11fwd_first(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ]);
        assert!(!out.success());
        assert!(
            out.stderr.contains("generates keys only on a token"),
            "{}",
            out.stderr
        );
    }
}

/// `id=` in `pkcs11_uri` becomes the pair's CKA_ID (checked with pkcs11-tool), and `genpkey`
/// needs no other provider than p11fwd (`-provider p11fwd` alone: its keymgmt generates on the
/// token, its encoder writes the URI-PEM file) for RSA, EC and Ed25519. The new key is then
/// found by its id alone.
#[test]
fn genpkey_with_an_id_and_with_p11fwd_alone() {
    for kind in KINDS {
        let env = Env::new(kind, &[Key::EcP256]);
        let cases: [(&str, &str, &[&str]); 3] = [
            ("gen-id-rsa", "a1b2c3", &["-algorithm", "RSA"]),
            (
                "gen-id-p256",
                "0102",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            ),
            ("gen-id-ed25519", "ff", &["-algorithm", "ED25519"]),
        ];
        for (label, id, alg) in cases {
            let what = format!("{kind}: {label}");
            let key_pem = env.path(&format!("{label}.pem"));
            let id_uri: String = id
                .as_bytes()
                .chunks(2)
                .map(|h| format!("%{}", std::str::from_utf8(h).unwrap()))
                .collect();
            let uri = format!(
                "pkcs11_uri:{};object={label};id={id_uri}?pin-value=123456",
                env.token.uri()
            );
            let mut args = vec!["genpkey", "-provider", "p11fwd"];
            args.extend(alg);
            args.extend(["-pkeyopt", &uri, "-out", s(&key_pem)]);
            assert_ok(&env.soft(&args), &format!("{what}: p11fwd alone"));
            let listing = objects(&env, label);
            let ids: Vec<&str> = listing
                .lines()
                .filter_map(|l| l.trim_start().strip_prefix("ID:"))
                .map(str::trim)
                .collect();
            assert_eq!(ids, [id, id], "{what}:\n{listing}");
            // The pair is found by its id alone.
            let by_id = format!(
                "{};id={id_uri};type=private?pin-value=123456",
                env.token.uri()
            );
            let out = env.ok(&["pkey", "-in", &by_id, "-text", "-noout"]);
            assert!(
                out.stdout.contains(&format!("object={label}")),
                "{what}: {}",
                out.stdout
            );
        }
    }
}
