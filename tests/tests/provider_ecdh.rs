//! p11fwd.so part 2: ECDH (`openssl pkeyutl -derive -inkey pkcs11:... -peerkey peer.pem`) on
//! P-256, P-384 and P-521 behind `p11fwd server`, checked against the same derivation in
//! software with the fixture's copy of the private key; behind a stock `p11-kit server` 0.24.1
//! a clear error (its protocol cannot carry `CK_ECDH1_DERIVE_PARAMS`).
//!
//! X25519/X448 use the same code path but SoftHSM 2.6.1 has no Montgomery keys: untested.

#![allow(clippy::unwrap_used)]

mod provider_common;

use p11fwd_tests::{Key, ServerKind};
use provider_common::{Env, s};

const CURVES: [(Key, &str); 3] = [
    (Key::EcP256, "P-256"),
    (Key::EcP384, "P-384"),
    (Key::EcP521, "P-521"),
];

fn peer(env: &Env, curve: &str) -> std::path::PathBuf {
    let key = env.path(&format!("peer-{curve}.key"));
    let public = env.path(&format!("peer-{curve}.pub"));
    env.soft_ok(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        &format!("ec_paramgen_curve:{curve}"),
        "-out",
        s(&key),
    ]);
    env.soft_ok(&["pkey", "-in", s(&key), "-pubout", "-out", s(&public)]);
    public
}

#[test]
fn ecdh_with_token_keys_matches_software() {
    let keys: Vec<Key> = CURVES.iter().map(|(k, _)| *k).collect();
    let env = Env::new(ServerKind::Forwarder, &keys);
    for (key, curve) in CURVES {
        let label = key.label();
        let peer_pub = peer(&env, curve);
        let ours = env.path(&format!("{label}.secret"));
        env.take_round_trips();
        env.ok(&[
            "pkeyutl",
            "-derive",
            "-inkey",
            &env.key_uri(label),
            "-peerkey",
            s(&peer_pub),
            "-out",
            s(&ours),
        ]);
        let trips = env.take_round_trips();
        let expected = env.path(&format!("{label}.expected"));
        env.soft_ok(&[
            "pkeyutl",
            "-derive",
            "-inkey",
            s(&env.token.private_pem(label)),
            "-peerkey",
            s(&peer_pub),
            "-out",
            s(&expected),
        ]);
        let ours = std::fs::read(ours).unwrap();
        assert_eq!(ours, std::fs::read(expected).unwrap(), "{curve}");
        println!(
            "{curve}: {} byte secret; key load + derive = {trips} round trips",
            ours.len()
        );
        // The other side of the same exchange: the software peer with the token's public key.
        let token_pub = env.path(&format!("{label}.pub.pem"));
        env.ok(&[
            "pkey",
            "-in",
            &env.key_uri(label),
            "-pubout",
            "-out",
            s(&token_pub),
        ]);
        let theirs = env.path(&format!("{label}.theirs"));
        env.soft_ok(&[
            "pkeyutl",
            "-derive",
            "-inkey",
            s(&env.path(&format!("peer-{curve}.key"))),
            "-peerkey",
            s(&token_pub),
            "-out",
            s(&theirs),
        ]);
        assert_eq!(std::fs::read(theirs).unwrap(), ours, "{curve}: both sides");
    }
    // p11fwd loaded first too (the peer key is imported into p11fwd's keymgmt either way).
    let peer_pub = env.path("peer-P-256.pub");
    let out = env.ossl_p11fwd_first(&[
        "pkeyutl",
        "-derive",
        "-inkey",
        &env.key_uri("ec-p256"),
        "-peerkey",
        s(&peer_pub),
        "-out",
        "first.secret",
    ]);
    provider_common::assert_ok(&out, "p11fwd first");
    assert_eq!(
        std::fs::read(env.path("first.secret")).unwrap(),
        std::fs::read(env.path("ec-p256.secret")).unwrap()
    );
    // No session objects are left behind: the token still holds only the fixture's objects.
    let out = env.ok(&["storeutl", &format!("{}?pin-value=123456", env.token.uri())]);
    assert!(out.stdout.contains("Total found: 7"), "{}", out.stdout);
}

/// A stock p11-kit 0.24.1 server speaks protocol 0, which has no serializer for
/// `CK_ECDH1_DERIVE_PARAMS`: the provider says so instead of failing obscurely.
#[test]
fn ecdh_through_a_stock_0_24_server_is_a_clear_error() {
    let env = Env::new(ServerKind::Stock, &[Key::EcP256]);
    let peer_pub = peer(&env, "P-256");
    let out = env.ossl(&[
        "pkeyutl",
        "-derive",
        "-inkey",
        &env.key_uri("ec-p256"),
        "-peerkey",
        s(&peer_pub),
    ]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("cannot carry ECDH parameters")
            && out.stderr.contains("use p11fwd server or p11-kit >= 0.25"),
        "{}",
        out.stderr
    );
}
