//! Two tokens behind one server (pkcs11-provider #66/#557: the wrong slot or PIN on multi-slot
//! setups): a second SoftHSM token with a PIN of its own next to the fixture's, both exported by
//! one URI that selects them both, against both servers. `p11fwd list` and the client module
//! show both; each key is found on its own token by URI (with `token=`, and by its unique label
//! alone) and signs with its own token's PIN; the other token's PIN is refused.

#![allow(clippy::unwrap_used)]

mod provider_common;

use p11fwd_tests::run::run;
use p11fwd_tests::{Key, SECOND_LABEL, SECOND_PIN, TestToken, artifacts, require_tool};
use provider_common::{Env, KINDS, s};

const SECOND: &str = SECOND_LABEL;

/// The fixture's token plus the second one (`ec-second`, its own PIN) in the same SoftHSM.
fn two_tokens() -> TestToken {
    let token = TestToken::builder().with(Key::EcP256).build();
    token.add_second_token();
    token
}

#[test]
fn two_tokens_each_key_with_its_own_pin() {
    for kind in KINDS {
        let env = Env::with_token_uri(kind, two_tokens(), "pkcs11:model=SoftHSM%20v2");
        // Both tokens through the socket: `p11fwd list` and the client module.
        let mut list = std::process::Command::new(artifacts::forwarder_bin());
        list.args(["list", "--address", &env.address()]);
        let out = run(&mut list);
        assert!(out.success(), "{kind}: {}{}", out.stdout, out.stderr);
        for label in [env.token.label(), SECOND] {
            assert!(
                out.stdout.contains(&format!("Token: {label}\n")),
                "{kind}: {}",
                out.stdout
            );
        }
        let mut slots = std::process::Command::new(require_tool("pkcs11-tool"));
        slots
            .arg("--module")
            .arg(env.modules.client())
            .arg("-L")
            .env("P11FWD_SERVER_ADDRESS", env.address());
        let out = run(&mut slots);
        assert!(out.success(), "{kind}: {}", out.stderr);
        assert_eq!(
            out.stdout.matches("token label").count(),
            2,
            "{kind}: {}",
            out.stdout
        );

        let first = env.token.label().to_owned();
        let cases = [
            (
                format!("pkcs11:token={first};object=ec-p256"),
                env.token.user_pin(),
            ),
            (
                format!("pkcs11:token={SECOND};object=ec-second"),
                SECOND_PIN,
            ),
            // The label alone is unique: the second token's key, with the second token's PIN.
            ("pkcs11:object=ec-second".to_owned(), SECOND_PIN),
        ];
        for (i, (uri, pin)) in cases.iter().enumerate() {
            let what = format!("{kind}, {uri}");
            let pubkey = env.path(&format!("multi-{i}.pub.pem"));
            env.ok(&[
                "pkey",
                "-pubin",
                "-in",
                &format!("{uri};type=public"),
                "-pubout",
                "-out",
                s(&pubkey),
            ]);
            let sig = env.path(&format!("multi-{i}.sig"));
            let key = format!("{uri};type=private?pin-value={pin}");
            let out = env.ossl(&[
                "dgst",
                "-sha256",
                "-sign",
                &key,
                "-out",
                s(&sig),
                "data.txt",
            ]);
            assert!(out.success(), "{what}: {}", out.stderr);
            let out = env.soft(&[
                "dgst",
                "-sha256",
                "-verify",
                s(&pubkey),
                "-signature",
                s(&sig),
                "data.txt",
            ]);
            assert!(
                out.stdout.contains("Verified OK"),
                "{what}: {}{}",
                out.stdout,
                out.stderr
            );
        }
        // The two keys differ (each URI found its own token's key).
        let a = std::fs::read(env.path("multi-0.pub.pem")).unwrap();
        let b = std::fs::read(env.path("multi-1.pub.pem")).unwrap();
        assert_ne!(a, b, "{kind}: both URIs found the same key");
        // The PIN goes to the token that holds the key only: with the label alone, the other
        // token is not tried (each wrong PIN counts towards a token's lock-out).
        let key = format!("pkcs11:object=ec-second;type=private?pin-value={SECOND_PIN}");
        let mut cmd = env.openssl_cmd(&[
            "dgst",
            "-provider",
            "default",
            "-provider",
            "p11fwd",
            "-sha256",
            "-sign",
            &key,
            "-out",
            s(&env.path("traced.sig")),
            "data.txt",
        ]);
        cmd.env("P11FWD_DEBUG", "debug");
        let out = run(&mut cmd);
        assert!(out.success(), "{kind}: {}", out.stderr);
        assert!(
            !out.stderr.contains("rejected the PIN"),
            "{kind}: {}",
            out.stderr
        );
        // A URI both tokens answer before a login: refused before any PIN is sent.
        let key = format!("pkcs11:type=private?pin-value={SECOND_PIN}");
        let out = env.ossl(&[
            "dgst",
            "-sha256",
            "-sign",
            &key,
            "-out",
            s(&env.path("none.sig")),
            "data.txt",
        ]);
        assert!(!out.success(), "{kind}: signed with an ambiguous URI");
        assert!(out.stderr.contains("token="), "{kind}: {}", out.stderr);
        // The first token's PIN does not open the second token.
        let key = format!(
            "pkcs11:token={SECOND};object=ec-second;type=private?pin-value={}",
            env.token.user_pin()
        );
        let out = env.ossl(&[
            "dgst",
            "-sha256",
            "-sign",
            &key,
            "-out",
            s(&env.path("wrong.sig")),
            "data.txt",
        ]);
        assert!(!out.success(), "{kind}: signed with the other token's PIN");
        assert!(
            out.stderr.contains("PIN incorrect"),
            "{kind}: {}",
            out.stderr
        );
    }
}
