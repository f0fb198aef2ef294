//! Every kind of mechanism parameter through `p11fwd server` with wire's client at v2 (and
//! what v0 can carry), plus the attribute size queries stock servers get wrong.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{Fwd, FwdExt, find_one, rv_of, session};
use p11fwd_tests::{Key, TestToken, run_ok};
use p11fwd_wire::CallId;
use p11fwd_wire::client::{Client, OutCap, Output};
use p11fwd_wire::consts::*;
use p11fwd_wire::value::{AttrSlot, Attribute, MechParam, Mechanism, Value};

fn data(o: Output) -> Vec<u8> {
    o.into_data(CallId::Sign).unwrap()
}

fn logged_in(fwd: &Fwd, token: &TestToken, offer: u8) -> (Client, u64) {
    let c = fwd.client(offer);
    let s = session(&c);
    c.login(s, CKU_USER, Some(token.user_pin().as_bytes()))
        .unwrap();
    (c, s)
}

fn sign_verify(c: &Client, s: u64, label: &str, mech: Mechanism, msg: &[u8]) -> Vec<u8> {
    let key = find_one(c, s, label, CKO_PRIVATE_KEY);
    let public = find_one(c, s, label, CKO_PUBLIC_KEY);
    c.sign_init(s, Some(mech.clone()), key).unwrap();
    let size = match c.sign(s, msg, OutCap::Query).unwrap() {
        Output::Size(n) => n,
        o => panic!("size query gave {o:?}"),
    };
    let sig = data(c.sign(s, msg, OutCap::Buffer(size)).unwrap());
    c.verify_init(s, Some(mech), public).unwrap();
    c.verify(s, msg, &sig).unwrap();
    sig
}

/// AES-CBC encryption and decryption of one block (at v0 the IV crosses as raw bytes).
fn cbc_round_trip(c: &Client, s: u64, aes: u64) {
    let cbc = Mechanism::with(CKM_AES_CBC, MechParam::Iv(vec![5; 16]));
    c.encrypt_init(s, Some(cbc.clone()), aes).unwrap();
    let ct = data(c.encrypt(s, &[7; 16], OutCap::Buffer(64)).unwrap());
    c.decrypt_init(s, Some(cbc), aes).unwrap();
    assert_eq!(
        data(c.decrypt(s, &ct, OutCap::Buffer(64)).unwrap()),
        vec![7; 16]
    );
}

fn pss(hash: u64, mgf: u64, salt: u64) -> MechParam {
    MechParam::RsaPkcsPss {
        hash_alg: hash,
        mgf,
        salt_len: salt,
    }
}

#[test]
fn signatures_at_v2() {
    let token = TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::RsaPss)
        .with(Key::EcP256)
        .with(Key::Ed25519)
        .build();
    let fwd = common::start(&token);
    let (c, s) = logged_in(&fwd, &token, 2);
    let sig = sign_verify(&c, s, "ed25519", Mechanism::new(CKM_EDDSA), b"edwards");
    assert_eq!(sig.len(), 64);
    sign_verify(
        &c,
        s,
        "rsa-pss",
        Mechanism::with(
            CKM_SHA256_RSA_PKCS_PSS,
            pss(CKM_SHA256, CKG_MGF1_SHA256, 32),
        ),
        b"hashed pss",
    );
    sign_verify(
        &c,
        s,
        "rsa-pss",
        Mechanism::with(CKM_RSA_PKCS_PSS, pss(CKM_SHA256, CKG_MGF1_SHA256, 32)),
        &[3; 32],
    );
    sign_verify(
        &c,
        s,
        "rsa2048",
        Mechanism::new(CKM_SHA256_RSA_PKCS),
        b"pkcs1",
    );
    sign_verify(&c, s, "ec-p256", Mechanism::new(CKM_ECDSA), &[9; 32]);
    // CKA_ALLOWED_MECHANISMS is enforced by the module behind us.
    let key = find_one(&c, s, "rsa-pss", CKO_PRIVATE_KEY);
    let r = c
        .sign_init(s, Some(Mechanism::new(CKM_SHA256_RSA_PKCS)), key)
        .and_then(|_| c.sign(s, b"x", OutCap::Buffer(512)));
    assert_eq!(rv_of(r), CKR_MECHANISM_INVALID);
    // An EdDSA parameter is a structure with pointers: raw bytes are refused, never passed on.
    let key = find_one(&c, s, "ed25519", CKO_PRIVATE_KEY);
    let raw = Mechanism::with(CKM_EDDSA, MechParam::Raw(vec![0; 24]));
    assert_eq!(
        rv_of(c.sign_init(s, Some(raw), key)),
        CKR_MECHANISM_PARAM_INVALID
    );
}

#[test]
fn encryption_at_v2() {
    let token = TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::Aes256)
        .build();
    let fwd = common::start(&token);
    let (c, s) = logged_in(&fwd, &token, 2);
    // OAEP (SoftHSM 2.6.1 refuses any label).
    let oaep = Mechanism::with(
        CKM_RSA_PKCS_OAEP,
        MechParam::RsaPkcsOaep {
            hash_alg: CKM_SHA_1,
            mgf: CKG_MGF1_SHA1,
            source: CKZ_DATA_SPECIFIED,
            source_data: None,
        },
    );
    let public = find_one(&c, s, "rsa2048", CKO_PUBLIC_KEY);
    let private = find_one(&c, s, "rsa2048", CKO_PRIVATE_KEY);
    c.encrypt_init(s, Some(oaep.clone()), public).unwrap();
    let ct = data(c.encrypt(s, b"oaep secret", OutCap::Buffer(256)).unwrap());
    c.decrypt_init(s, Some(oaep), private).unwrap();
    assert_eq!(
        data(c.decrypt(s, &ct, OutCap::Buffer(256)).unwrap()),
        b"oaep secret"
    );

    let aes = find_one(&c, s, "aes256", CKO_SECRET_KEY);
    let secret = token.secret("aes256");
    let plain = [0x11u8; 32];
    for mech in [
        Mechanism::with(
            CKM_AES_GCM,
            MechParam::AesGcm {
                iv: Some((0..12).collect()),
                iv_bits: 96,
                aad: Some(vec![0xaa, 0xbb]),
                tag_bits: 128,
            },
        ),
        Mechanism::with(CKM_AES_CBC, MechParam::Iv(vec![5; 16])),
        Mechanism::with(
            CKM_AES_CTR,
            MechParam::AesCtr {
                counter_bits: 128,
                cb: [9; 16],
            },
        ),
    ] {
        c.encrypt_init(s, Some(mech.clone()), aes).unwrap();
        let ct = data(c.encrypt(s, &plain, OutCap::Buffer(64)).unwrap());
        c.decrypt_init(s, Some(mech.clone()), aes).unwrap();
        assert_eq!(
            data(c.decrypt(s, &ct, OutCap::Buffer(64)).unwrap()),
            plain,
            "{mech:?}"
        );
        if mech.ty == CKM_AES_CBC {
            // Same bytes as openssl with the known key.
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("p"), plain).unwrap();
            let out = run_ok(
                Command::new("openssl")
                    .args([
                        "enc",
                        "-aes-256-cbc",
                        "-nopad",
                        "-K",
                        &hex::encode(&secret),
                        "-iv",
                        &hex::encode([5u8; 16]),
                        "-in",
                    ])
                    .arg(dir.path().join("p")),
            );
            assert_eq!(out.stdout_bytes, ct);
        }
    }
}

#[test]
fn derivation_and_hmac_at_v2() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::start(&token);
    let (c, s) = logged_in(&fwd, &token, 2);
    // ECDH1 with our own public point: the secret must equal openssl's.
    let public = find_one(&c, s, "ec-p256", CKO_PUBLIC_KEY);
    let private = find_one(&c, s, "ec-p256", CKO_PRIVATE_KEY);
    let point = c.attributes(s, public, &[CKA_EC_POINT], 256).unwrap();
    let der = point[0].as_bytes().unwrap().to_vec();
    assert_eq!(&der[..2], &[0x04, 0x41]);
    let mech = Mechanism::with(
        CKM_ECDH1_DERIVE,
        MechParam::Ecdh1Derive {
            kdf: CKD_NULL,
            shared_data: None,
            public_data: Some(der[2..].to_vec()),
        },
    );
    let template = vec![
        Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY),
        Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET),
        Attribute::ulong(CKA_VALUE_LEN, 32),
        Attribute::bool(CKA_TOKEN, false),
        Attribute::bool(CKA_SENSITIVE, false),
        Attribute::bool(CKA_EXTRACTABLE, true),
        Attribute::bool(CKA_SIGN, true),
        Attribute::bool(CKA_VERIFY, true),
    ];
    let (derived, update) = c.derive_key(s, mech, private, template).unwrap();
    assert!(update.is_some(), "C_DeriveKey2 at v2");
    let value = c.attributes(s, derived, &[CKA_VALUE], 64).unwrap();
    let expected = run_ok(
        Command::new("openssl")
            .args(["pkeyutl", "-derive", "-inkey"])
            .arg(token.private_pem("ec-p256"))
            .arg("-peerkey")
            .arg(token.public_pem("ec-p256")),
    )
    .stdout_bytes;
    assert_eq!(value[0].as_bytes().unwrap(), expected.as_slice());
    // HMAC with the derived generic secret.
    let hmac = Mechanism::new(CKM_SHA256_HMAC);
    c.sign_init(s, Some(hmac.clone()), derived).unwrap();
    let mac = data(c.sign(s, b"mac me", OutCap::Buffer(64)).unwrap());
    assert_eq!(mac.len(), 32);
    c.verify_init(s, Some(hmac), derived).unwrap();
    c.verify(s, b"mac me", &mac).unwrap();
    // SoftHSM 2.6.1 has no *_HMAC_GENERAL: the parameter is decoded and handed over, and the
    // module (not the forwarder) answers CKR_MECHANISM_INVALID.
    let general = Mechanism::with(CKM_SHA256_HMAC_GENERAL, MechParam::MacGeneral(16));
    assert_eq!(
        rv_of(c.sign_init(s, Some(general), derived)),
        CKR_MECHANISM_INVALID
    );
}

#[test]
fn what_v0_can_carry() {
    let token = TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::RsaPss)
        .with(Key::Aes256)
        .with(Key::EcP256)
        .build();
    let fwd = common::start(&token);
    let (c, s) = logged_in(&fwd, &token, 0);
    assert_eq!(c.dialect().version(), 0);
    sign_verify(
        &c,
        s,
        "rsa-pss",
        Mechanism::with(CKM_RSA_PKCS_PSS, pss(CKM_SHA256, CKG_MGF1_SHA256, 32)),
        &[1; 32],
    );
    // No serializer in 0.24: the flat structure crosses as native bytes and is accepted.
    sign_verify(
        &c,
        s,
        "rsa-pss",
        Mechanism::with(
            CKM_SHA256_RSA_PKCS_PSS,
            pss(CKM_SHA256, CKG_MGF1_SHA256, 32),
        ),
        b"v0 pss",
    );
    sign_verify(&c, s, "ec-p256", Mechanism::new(CKM_ECDSA), &[2; 32]);
    let aes = find_one(&c, s, "aes256", CKO_SECRET_KEY);
    cbc_round_trip(&c, s, aes);
    // GCM and ECDH need pointers, which a 0.24 peer cannot carry: refused before sending.
    let gcm = Mechanism::with(
        CKM_AES_GCM,
        MechParam::AesGcm {
            iv: Some(vec![0; 12]),
            iv_bits: 96,
            aad: None,
            tag_bits: 128,
        },
    );
    assert_eq!(
        rv_of(c.encrypt_init(s, Some(gcm), aes)),
        CKR_MECHANISM_PARAM_INVALID
    );
}

#[test]
fn allowed_mechanisms_and_template_size_queries() {
    let token = TestToken::builder()
        .with(Key::RsaPss)
        .with(Key::Aes256)
        .build();
    let fwd = common::start(&token);
    for offer in [2, 1, 0] {
        let (c, s) = logged_in(&fwd, &token, offer);
        let key = find_one(&c, s, "rsa-pss", CKO_PRIVATE_KEY);
        let q = |ty, buflen, nested| AttrSlot { ty, buflen, nested };
        // Size query of CKA_ALLOWED_MECHANISMS: the length and that many zero mechanisms, which
        // every stock client can parse (stock servers send the count alone).
        let (a, rv) = c
            .get_attribute_value(s, key, vec![q(CKA_ALLOWED_MECHANISMS, 0, None)])
            .unwrap();
        assert_eq!(rv.0, CKR_OK);
        assert_eq!(a[0].native_len(), Some(32));
        assert_eq!(a[0].value(), Some(&Value::Mechanisms(vec![0; 4])));
        let (a, _) = c
            .get_attribute_value(s, key, vec![q(CKA_ALLOWED_MECHANISMS, 32, None)])
            .unwrap();
        assert_eq!(
            a[0].as_mechanisms().unwrap(),
            &[
                CKM_RSA_PKCS_PSS,
                CKM_SHA256_RSA_PKCS_PSS,
                CKM_SHA384_RSA_PKCS_PSS,
                CKM_SHA512_RSA_PKCS_PSS
            ]
        );
        if offer == 0 {
            continue; // 0.24 cannot carry templates at all.
        }
        // Template size query: count 0 with length n × 24, then the values (0.25.4+ layout).
        let aes = find_one(&c, s, "aes256", CKO_SECRET_KEY);
        let (a, rv) = c
            .get_attribute_value(s, aes, vec![q(CKA_WRAP_TEMPLATE, 0, None)])
            .unwrap();
        assert_eq!(rv.0, CKR_OK);
        assert_eq!(a[0].native_len(), Some(48));
        assert_eq!(a[0].value(), Some(&Value::Template(vec![])));
        let nested = vec![q(CKA_CLASS, 8, None), q(CKA_KEY_TYPE, 8, None)];
        let (a, rv) = c
            .get_attribute_value(s, aes, vec![q(CKA_WRAP_TEMPLATE, 48, Some(nested))])
            .unwrap();
        assert_eq!(rv.0, CKR_OK);
        let Some(Value::Template(t)) = a[0].value() else {
            panic!("{a:?}")
        };
        let class = t
            .iter()
            .find(|x| x.ty == CKA_CLASS)
            .and_then(|x| x.as_ulong());
        let kt = t
            .iter()
            .find(|x| x.ty == CKA_KEY_TYPE)
            .and_then(|x| x.as_ulong());
        assert_eq!((class, kt), (Some(CKO_SECRET_KEY), Some(CKK_AES)));
    }
}

/// Raw mechanism parameters (the bytes of the client's native structure, which is what a peer
/// sends when its p11-kit generation has no serializer) reach the module only for mechanisms
/// whose parameter is known to be flat, with the right size. Everything else gets
/// CKR_MECHANISM_PARAM_INVALID from us, not from the module (SoftHSM would answer
/// CKR_MECHANISM_INVALID for the mechanisms it lacks), and the connection goes on.
#[test]
fn raw_parameters_reach_the_module_only_when_known_flat() {
    let token = TestToken::builder()
        .with(Key::Aes256)
        .with(Key::EcP256)
        .build();
    let fwd = common::start(&token);
    // What a client's structures with pointers look like: addresses and lengths.
    let pointers = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                if i % 2 == 0 {
                    0x0000_7f41_4141_4000u64
                } else {
                    16
                }
                .to_ne_bytes()
            })
            .collect()
    };
    let derived = || {
        session_secret(
            CKK_GENERIC_SECRET,
            vec![Attribute::ulong(CKA_VALUE_LEN, 32)],
        )
    };
    for offer in [0, 2] {
        let (c, s) = logged_in(&fwd, &token, offer);
        assert_eq!(c.dialect().version(), offer);
        let aes = find_one(&c, s, "aes256", CKO_SECRET_KEY);
        let ec = find_one(&c, s, "ec-p256", CKO_PRIVATE_KEY);
        let raw = |ty, bytes: Vec<u8>| Mechanism::with(ty, MechParam::Raw(bytes));
        let refused = CKR_MECHANISM_PARAM_INVALID;
        // CK_CHACHA20_PARAMS: two pointers and two lengths.
        assert_eq!(
            rv_of(c.encrypt_init(s, Some(raw(CKM_CHACHA20, pointers(4))), aes)),
            refused,
            "v{offer} CHACHA20"
        );
        // CK_SSL3_KEY_MAT_PARAMS: pointers to the randoms and to the output structure.
        assert_eq!(
            rv_of(c.derive_key(
                s,
                raw(CKM_TLS_KEY_AND_MAC_DERIVE, pointers(8)),
                aes,
                derived()
            )),
            refused,
            "v{offer} TLS_KEY_AND_MAC_DERIVE"
        );
        // A vendor mechanism nobody named on the command line.
        assert_eq!(
            rv_of(c.sign_init(s, Some(raw(0x8000_1234, pointers(2))), ec)),
            refused,
            "v{offer} vendor"
        );
        if offer == 0 {
            // No 0.24 serializer for GCM or ECDH1: a peer can still send their native
            // structures (pointers) as bytes; the server refuses them.
            assert_eq!(
                rv_of(c.encrypt_init(s, Some(raw(CKM_AES_GCM, pointers(6))), aes)),
                refused,
                "v0 raw GCM"
            );
            assert_eq!(
                rv_of(c.derive_key(s, raw(CKM_ECDH1_DERIVE, pointers(5)), ec, derived())),
                refused,
                "v0 raw ECDH1"
            );
            // A flat parameter of the wrong size (a 15-byte CBC IV) is refused too.
            assert_eq!(
                rv_of(c.encrypt_init(s, Some(raw(CKM_AES_CBC, vec![5; 15])), aes)),
                refused,
                "v0 short IV"
            );
        }
        // The connection and the module go on: AES-CBC (a raw IV at v0) and ECDSA.
        cbc_round_trip(&c, s, aes);
        sign_verify(&c, s, "ec-p256", Mechanism::new(CKM_ECDSA), &[4; 32]);
    }
    // And so do other connections.
    let (c, s) = logged_in(&fwd, &token, 2);
    sign_verify(&c, s, "ec-p256", Mechanism::new(CKM_ECDSA), &[5; 32]);
}

/// `--pass-raw-params` names vendor mechanisms whose raw parameters may reach the module; the
/// others stay refused, and standard mechanisms cannot be named.
#[test]
fn named_vendor_mechanisms_pass_raw_parameters() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::builder(&token)
        .args(["--pass-raw-params", "0x80001234,2147488307"])
        .start();
    for offer in [0, 2] {
        let (c, s) = logged_in(&fwd, &token, offer);
        let ec = find_one(&c, s, "ec-p256", CKO_PRIVATE_KEY);
        let raw = |ty| Some(Mechanism::with(ty, MechParam::Raw(vec![1, 2, 3])));
        // Reaches SoftHSM, which does not know it.
        for named in [0x8000_1234, 0x8000_1233] {
            assert_eq!(
                rv_of(c.sign_init(s, raw(named), ec)),
                CKR_MECHANISM_INVALID,
                "v{offer} {named:#x}"
            );
        }
        assert_eq!(
            rv_of(c.sign_init(s, raw(0x8000_1235), ec)),
            CKR_MECHANISM_PARAM_INVALID
        );
        // Naming a vendor mechanism does not open standard ones.
        assert_eq!(
            rv_of(c.encrypt_init(s, raw(CKM_CHACHA20), ec)),
            CKR_MECHANISM_PARAM_INVALID
        );
    }
    for bad in ["0x1226", "0x100000000", "chacha"] {
        let out = p11fwd_tests::run::run(
            Command::new(common::bin())
                .args([
                    "server",
                    "-f",
                    "-n",
                    "/nonexistent/x.sock",
                    "--pass-raw-params",
                ])
                .args([bad, "pkcs11:"]),
        );
        assert!(!out.success(), "{bad}: {out}");
        assert!(out.stderr.contains("--pass-raw-params"), "{bad}: {out}");
    }
}

/// The template of a session secret key of `key_type`, plus `extra`.
fn session_secret(key_type: u64, extra: Vec<Attribute>) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY),
        Attribute::ulong(CKA_KEY_TYPE, key_type),
        Attribute::bool(CKA_TOKEN, false),
    ];
    t.extend(extra);
    t
}

/// A `C_GetAttributeValue` entry: `buflen` 0 is a size query.
fn slot(ty: u64, buflen: u32, nested: Option<Vec<AttrSlot>>) -> AttrSlot {
    AttrSlot { ty, buflen, nested }
}

/// Template attributes from a 0.24 peer (version 0), whose stock server crashes on a template
/// size query (rpc §0 item 10, §3.2) and whose class table has no `CKA_DERIVE_TEMPLATE`.
#[test]
fn templates_at_v0() {
    let token = TestToken::builder().with(Key::Aes256).build();
    let size_query = |ty| vec![slot(ty, 0, None)];
    // Stock 0.24.1: the size query kills the connection's process (a segfault, rpc §3.2),
    // so the connection closes.
    let stock = p11fwd_tests::StockServer::start(&token);
    let c = common::connect(stock.socket_path(), 0);
    let s = session(&c);
    c.login(s, CKU_USER, Some(token.user_pin().as_bytes()))
        .unwrap();
    let aes = find_one(&c, s, "aes256", CKO_SECRET_KEY);
    let r = c.get_attribute_value(s, aes, size_query(CKA_WRAP_TEMPLATE));
    assert!(r.is_err(), "stock answered {r:?}");
    assert!(c.slots(true).is_err(), "the stock connection survived");

    let fwd = common::start(&token);
    let (c, s) = logged_in(&fwd, &token, 0);
    assert_eq!(c.dialect().version(), 0);
    let aes = find_one(&c, s, "aes256", CKO_SECRET_KEY);
    // The same size query: two attributes, 48 native bytes, and an empty template.
    let (a, rv) = c
        .get_attribute_value(s, aes, size_query(CKA_WRAP_TEMPLATE))
        .unwrap();
    assert_eq!(rv.0, CKR_OK);
    assert_eq!(a[0].native_len(), Some(48));
    assert_eq!(a[0].value(), Some(&Value::Template(vec![])));
    // CKA_DERIVE_TEMPLATE is a byte array to a 0.24 peer. Sent as bytes, it would be native
    // CK_ATTRIBUTEs with the peer's pointers: refused by us with ATTRIBUTE_VALUE_INVALID
    // (SoftHSM 2.6.1, which lacks the attribute, would answer ATTRIBUTE_TYPE_INVALID: see
    // `templates_in_calls_at_v2`).
    let native = [
        CKA_CLASS.to_ne_bytes(),
        0x0000_7f41_4141_4000u64.to_ne_bytes(),
        8u64.to_ne_bytes(),
    ]
    .concat();
    let template = session_secret(
        CKK_AES,
        vec![
            Attribute::ulong(CKA_VALUE_LEN, 32),
            Attribute::bytes(CKA_DERIVE_TEMPLATE, native),
        ],
    );
    assert_eq!(
        rv_of(c.generate_key(s, Mechanism::new(CKM_AES_KEY_GEN), template)),
        CKR_ATTRIBUTE_VALUE_INVALID
    );
    // The connection goes on, and the size query works again.
    cbc_round_trip(&c, s, aes);
    let (a, _) = c
        .get_attribute_value(s, aes, size_query(CKA_WRAP_TEMPLATE))
        .unwrap();
    assert_eq!(a[0].native_len(), Some(48));
}

/// Template attributes sent *in* calls at v2 (C_GenerateKey, C_CreateObject) reach the module
/// as native nested templates: they read back the same, and SoftHSM enforces the wrap template
/// it was given.
#[test]
fn templates_in_calls_at_v2() {
    let token = TestToken::builder().with(Key::Aes256).build();
    let fwd = common::start(&token);
    let (c, s) = logged_in(&fwd, &token, 2);
    let wrap = vec![
        Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY),
        Attribute::ulong(CKA_KEY_TYPE, CKK_AES),
    ];
    let unwrap = vec![
        Attribute::bool(CKA_SENSITIVE, true),
        Attribute::bool(CKA_EXTRACTABLE, false),
        Attribute::bool(CKA_TOKEN, false),
    ];
    let templates = || {
        vec![
            Attribute::new(CKA_WRAP_TEMPLATE, Value::Template(wrap.clone())),
            Attribute::new(CKA_UNWRAP_TEMPLATE, Value::Template(unwrap.clone())),
            Attribute::bool(CKA_WRAP, true),
            Attribute::bool(CKA_UNWRAP, true),
        ]
    };
    let mut gen_template = templates();
    gen_template.push(Attribute::ulong(CKA_VALUE_LEN, 32));
    let generated = c
        .generate_key(
            s,
            Mechanism::new(CKM_AES_KEY_GEN),
            session_secret(CKK_AES, gen_template),
        )
        .unwrap();
    let mut create_template = templates();
    create_template.push(Attribute::bytes(CKA_VALUE, vec![0x42; 16]));
    let created = c
        .create_object(s, session_secret(CKK_AES, create_template))
        .unwrap();
    for key in [generated, created] {
        for (ty, want) in [(CKA_WRAP_TEMPLATE, &wrap), (CKA_UNWRAP_TEMPLATE, &unwrap)] {
            let (a, rv) = c
                .get_attribute_value(s, key, vec![slot(ty, 0, None)])
                .unwrap();
            assert_eq!(rv.0, CKR_OK);
            let len = a[0].native_len().unwrap();
            assert_eq!(len as usize, want.len() * 24, "{ty:#x}");
            let nested = want
                .iter()
                .map(|w| slot(w.ty, w.native_len().unwrap(), None))
                .collect();
            let (a, rv) = c
                .get_attribute_value(s, key, vec![slot(ty, len, Some(nested))])
                .unwrap();
            assert_eq!(rv.0, CKR_OK);
            assert_eq!(
                a[0].value(),
                Some(&Value::Template(want.clone())),
                "{ty:#x}"
            );
        }
    }
    // The module enforces the wrap template it received: an AES key may be wrapped, a generic
    // secret may not.
    let extractable = |ty, value: Vec<u8>| {
        session_secret(
            ty,
            vec![
                Attribute::bytes(CKA_VALUE, value),
                Attribute::bool(CKA_EXTRACTABLE, true),
            ],
        )
    };
    let aes = c
        .create_object(s, extractable(CKK_AES, vec![1; 16]))
        .unwrap();
    let generic = c
        .create_object(s, extractable(CKK_GENERIC_SECRET, vec![2; 16]))
        .unwrap();
    let kw = || Mechanism::new(CKM_AES_KEY_WRAP);
    for wrapping in [generated, created] {
        let wrapped = data(
            c.wrap_key(s, kw(), wrapping, aes, OutCap::Buffer(64))
                .unwrap(),
        );
        assert_eq!(wrapped.len(), 24);
        assert_eq!(
            rv_of(c.wrap_key(s, kw(), wrapping, generic, OutCap::Buffer(64))),
            CKR_KEY_NOT_WRAPPABLE
        );
    }
    // CKA_DERIVE_TEMPLATE crosses as a template too; SoftHSM 2.6.1 does not know the attribute.
    let mut t = session_secret(CKK_AES, vec![Attribute::ulong(CKA_VALUE_LEN, 32)]);
    t.push(Attribute::new(
        CKA_DERIVE_TEMPLATE,
        Value::Template(vec![Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET)]),
    ));
    assert_eq!(
        rv_of(c.generate_key(s, Mechanism::new(CKM_AES_KEY_GEN), t)),
        CKR_ATTRIBUTE_TYPE_INVALID
    );
}
