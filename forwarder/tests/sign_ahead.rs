//! Signing ahead (`forwarder/src/prearm.rs`): spare sessions initialised for a key and
//! mechanism a client signs with. Clients must not be able to tell: every signature verifies,
//! every other call on the session behaves as if its own `C_SignInit` had run, and nothing armed
//! survives the login or a change of the key.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{FwdExt, assert_no_module_sessions, find_one, rv_of, session};
use p11fwd_forwarder::prearm::DEFAULT_PER_KEY;
use p11fwd_tests::{ForwarderServer, Key, TestToken};
use p11fwd_wire::CallId;
use p11fwd_wire::client::{Client, OutCap, Output, req};
use p11fwd_wire::consts::*;
use p11fwd_wire::value::{Arg, Attribute, ByteArray, MechParam, Mechanism};

/// The forwarder with the arming thread's trace on.
fn start(token: &TestToken, extra: &[&str]) -> ForwarderServer {
    common::builder(token)
        .args(extra.iter().copied())
        .log_filter(Some("info,p11fwd::call=debug,p11fwd::prearm=debug"))
        .start()
}

/// How many signatures ran on a spare so far (the forwarder's trace).
fn on_spares(fwd: &ForwarderServer) -> usize {
    fwd.log().matches("signed on a spare").count()
}

/// Spares armed so far for mechanism `ty` (each logged once it is back in its pool).
fn armed(fwd: &ForwarderServer, ty: u64) -> usize {
    fwd.log()
        .matches(&format!("mechanism={ty} armed=true"))
        .count()
}

/// Wait (bounded: a liveness bound, not a timing) until `n` spares were armed for `ty`: the
/// arming thread runs at the lowest priority and on a loaded machine lags behind a client.
fn until_armed(fwd: &ForwarderServer, ty: u64, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while armed(fwd, ty) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn pin(t: &TestToken) -> Option<&[u8]> {
    Some(t.user_pin().as_bytes())
}

/// A forwarder for a token with `keys`, and a logged-in client with a session.
fn logged_in(keys: &[Key]) -> (TestToken, ForwarderServer, Client, u64) {
    let mut b = TestToken::builder();
    for k in keys {
        b = b.with(*k);
    }
    let token = b.build();
    let fwd = start(&token, &[]);
    let c = fwd.client(2);
    let s = session(&c);
    c.login(s, CKU_USER, pin(&token)).unwrap();
    (token, fwd, c, s)
}

fn data(r: p11fwd_wire::Result<Output>) -> Vec<u8> {
    match r.unwrap() {
        Output::Data(d) => d,
        Output::Size(n) => panic!("only a size: {n}"),
    }
}

/// `C_SignInit` + `C_Sign` in one write, as p11fwd's provider and client module send them.
fn sign_pipelined(c: &Client, s: u64, m: &Mechanism, key: u64, msg: &[u8], cap: u64) -> Vec<u8> {
    let mut r = c.connection().call_batch(&[
        req::init_with_key(CallId::SignInit, s, Some(m.clone()), key),
        req::data_in_out(c.dialect(), CallId::Sign, s, msg, OutCap::Buffer(cap)),
    ]);
    let sig = r.pop().unwrap().unwrap();
    r.pop().unwrap().unwrap();
    match sig.first() {
        Some(Arg::ByteArray(ByteArray::Data(d))) => d.clone(),
        other => panic!("no signature: {other:?}"),
    }
}

fn verify(c: &Client, s: u64, m: &Mechanism, public: u64, msg: &[u8], sig: &[u8]) {
    c.verify_init(s, Some(m.clone()), public).unwrap();
    c.verify(s, msg, sig).unwrap();
}

/// Wait (bounded) until the arming thread has spares ready: a signature lands on one.
fn until_on_spares(fwd: &ForwarderServer, mut sign: impl FnMut()) {
    for _ in 0..200 {
        let before = on_spares(fwd);
        sign();
        if on_spares(fwd) > before {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no signature ran on a spare:\n{}", fwd.log());
}

#[test]
fn repeated_signatures_run_on_spares_and_verify() {
    let (_token, fwd, c, s) = logged_in(&[Key::EcP256, Key::Rsa2048]);
    let pss = Mechanism::with(
        CKM_RSA_PKCS_PSS,
        MechParam::RsaPkcsPss {
            hash_alg: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            salt_len: 32,
        },
    );
    let digest = [7u8; 32];
    let mut ec_used = 0;
    for (label, mech, cap) in [
        ("ec-p256", Mechanism::new(CKM_ECDSA), 64),
        ("rsa2048", Mechanism::new(CKM_SHA256_RSA_PKCS), 256),
        ("rsa2048", pss.clone(), 256),
    ] {
        let key = find_one(&c, s, label, CKO_PRIVATE_KEY);
        let public = find_one(&c, s, label, CKO_PUBLIC_KEY);
        let msg: &[u8] = if mech.ty == CKM_SHA256_RSA_PKCS {
            b"a message hashed by the token"
        } else {
            &digest
        };
        let warm = on_spares(&fwd);
        until_on_spares(&fwd, || {
            let sig = sign_pipelined(&c, s, &mech, key, msg, cap);
            verify(&c, s, &mech, public, msg, &sig);
        });
        let before = on_spares(&fwd);
        for _ in 0..20 {
            // The pool was filled with `DEFAULT_PER_KEY` spares and each signature on one
            // arms it again: once all of those are back, a spare is idle.
            let used = on_spares(&fwd) - warm;
            until_armed(&fwd, mech.ty, usize::from(DEFAULT_PER_KEY) + used);
            let sig = sign_pipelined(&c, s, &mech, key, msg, cap);
            verify(&c, s, &mech, public, msg, &sig);
        }
        assert_eq!(
            on_spares(&fwd) - before,
            20,
            "{label}: signatures on spares"
        );
        if mech.ty == CKM_ECDSA {
            ec_used = on_spares(&fwd) - warm;
        }
    }
    // The stock client's order: C_SignInit alone, a size query, then C_Sign.
    let key = find_one(&c, s, "ec-p256", CKO_PRIVATE_KEY);
    let public = find_one(&c, s, "ec-p256", CKO_PUBLIC_KEY);
    let m = Mechanism::new(CKM_ECDSA);
    until_armed(&fwd, CKM_ECDSA, usize::from(DEFAULT_PER_KEY) + ec_used);
    let before = on_spares(&fwd);
    c.sign_init(s, Some(m.clone()), key).unwrap();
    assert!(matches!(
        c.sign(s, &digest, OutCap::Query).unwrap(),
        Output::Size(64)
    ));
    assert!(matches!(
        c.sign(s, &digest, OutCap::Buffer(10)).unwrap(),
        Output::Size(64)
    ));
    let sig = data(c.sign(s, &digest, OutCap::Buffer(64)));
    verify(&c, s, &m, public, &digest, &sig);
    assert!(on_spares(&fwd) > before, "{}", fwd.log());
}

#[test]
fn other_calls_find_the_operation_on_their_own_session() {
    let (_token, fwd, c, s) = logged_in(&[Key::EcP256, Key::Rsa2048]);
    let key = find_one(&c, s, "rsa2048", CKO_PRIVATE_KEY);
    let public = find_one(&c, s, "rsa2048", CKO_PUBLIC_KEY);
    let m = Mechanism::new(CKM_SHA256_RSA_PKCS);
    until_on_spares(&fwd, || {
        sign_pipelined(&c, s, &m, key, b"x", 256);
    });
    std::thread::sleep(Duration::from_millis(100));

    // A multi-part signature after a C_SignInit a spare answered.
    c.sign_init(s, Some(m.clone()), key).unwrap();
    c.sign_update(s, b"part one, ").unwrap();
    c.sign_update(s, b"part two").unwrap();
    let sig = match c.sign_final(s, OutCap::Buffer(256)).unwrap() {
        Output::Data(d) => d,
        Output::Size(n) => panic!("{n}"),
    };
    verify(&c, s, &m, public, b"part one, part two", &sig);

    // A second C_SignInit while one is active: the module's answer.
    std::thread::sleep(Duration::from_millis(100));
    c.sign_init(s, Some(m.clone()), key).unwrap();
    assert_eq!(
        rv_of(c.sign_init(s, Some(m.clone()), key)),
        CKR_OPERATION_ACTIVE
    );
    let sig = data(c.sign(s, b"still active", OutCap::Buffer(256)));
    verify(&c, s, &m, public, b"still active", &sig);

    // An unrelated call in between, then the signature.
    std::thread::sleep(Duration::from_millis(100));
    c.sign_init(s, Some(m.clone()), key).unwrap();
    c.get_session_info(s).unwrap();
    let sig = data(c.sign(s, b"after info", OutCap::Buffer(256)));
    verify(&c, s, &m, public, b"after info", &sig);

    // Closed with an operation bound: the spare goes back unused, others keep working.
    std::thread::sleep(Duration::from_millis(100));
    let s2 = session(&c);
    c.sign_init(s2, Some(m.clone()), key).unwrap();
    c.close_session(s2).unwrap();
    let sig = sign_pipelined(&c, s, &m, key, b"after close", 256);
    verify(&c, s, &m, public, b"after close", &sig);

    // A session with another operation active is not given a spare: the module decides.
    let s3 = session(&c);
    c.find_objects_init(s3, vec![]).unwrap();
    let r = c.sign_init(s3, Some(m.clone()), key);
    assert_eq!(
        rv_of(r),
        CKR_OPERATION_ACTIVE,
        "SoftHSM: one operation per session"
    );
}

#[test]
fn nothing_armed_outlives_the_login() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = start(&token, &[]);
    let watcher = fwd.client(2);
    {
        let c = fwd.client(2);
        let s = session(&c);
        c.login(s, CKU_USER, pin(&token)).unwrap();
        let key = find_one(&c, s, "ec-p256", CKO_PRIVATE_KEY);
        let m = Mechanism::new(CKM_ECDSA);
        until_on_spares(&fwd, || {
            sign_pipelined(&c, s, &m, key, &[1; 32], 64);
        });
        // A bound operation left behind too.
        std::thread::sleep(Duration::from_millis(100));
        c.sign_init(s, Some(m), key).unwrap();
        c.logout(s).unwrap();
        c.connection().close();
    }
    // The module's session count is back to zero (SoftHSM refuses C_InitToken otherwise):
    // the spares were closed with the login.
    assert_no_module_sessions(&watcher, &token);
}

#[test]
fn a_changed_or_destroyed_key_is_never_signed_with_ahead() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = start(&token, &[]);
    let a = fwd.client(2);
    let b = fwd.client(2);
    let (sa, sb) = (session(&a), session(&b));
    a.login(sa, CKU_USER, pin(&token)).unwrap();
    b.login(sb, CKU_USER, pin(&token)).unwrap();
    let m = Mechanism::new(CKM_ECDSA);
    // A key of our own on the token, signed with until spares are armed for it.
    let (_, key_a) = a
        .generate_key_pair(
            sa,
            Mechanism::new(CKM_EC_KEY_PAIR_GEN),
            vec![
                Attribute::bytes(CKA_EC_PARAMS, hex_p256()),
                Attribute::bool(CKA_TOKEN, true),
                Attribute::bool(CKA_VERIFY, true),
                Attribute::bytes(CKA_LABEL, b"ephemeral".to_vec()),
            ],
            vec![
                Attribute::bool(CKA_TOKEN, true),
                Attribute::bool(CKA_PRIVATE, true),
                Attribute::bool(CKA_SIGN, true),
                Attribute::bytes(CKA_LABEL, b"ephemeral".to_vec()),
            ],
        )
        .unwrap();
    until_on_spares(&fwd, || {
        sign_pipelined(&a, sa, &m, key_a, &[2; 32], 64);
    });
    std::thread::sleep(Duration::from_millis(100));
    // B takes CKA_SIGN away: A's next C_SignInit gets the module's refusal, not a spare.
    let key_b = find_one(&b, sb, "ephemeral", CKO_PRIVATE_KEY);
    b.set_attribute_value(sb, key_b, vec![Attribute::bool(CKA_SIGN, false)])
        .unwrap();
    assert_eq!(
        rv_of(a.sign_init(sa, Some(m.clone()), key_a)),
        CKR_KEY_FUNCTION_NOT_PERMITTED
    );
    b.set_attribute_value(sb, key_b, vec![Attribute::bool(CKA_SIGN, true)])
        .unwrap();
    until_on_spares(&fwd, || {
        sign_pipelined(&a, sa, &m, key_a, &[3; 32], 64);
    });
    std::thread::sleep(Duration::from_millis(100));
    // B destroys it: A still holds the handle, and the module refuses it.
    b.destroy_object(sb, key_b).unwrap();
    let r = a.sign_init(sa, Some(m), key_a);
    let rv = rv_of(r);
    assert!(
        rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID,
        "{rv:#x}"
    );
}

#[test]
fn keys_that_need_a_login_per_signature_are_not_armed() {
    let (token, fwd, c, s) = logged_in(&[Key::RsaAlwaysAuth]);
    let key = find_one(&c, s, "rsa-always-auth", CKO_PRIVATE_KEY);
    let m = Mechanism::new(CKM_SHA256_RSA_PKCS);
    for _ in 0..5 {
        c.sign_init(s, Some(m.clone()), key).unwrap();
        c.login(s, CKU_CONTEXT_SPECIFIC, pin(&token)).unwrap();
        data(c.sign(s, b"each needs the PIN", OutCap::Buffer(256)));
        std::thread::sleep(Duration::from_millis(50));
    }
    // The arming thread looked at the key and left it alone.
    let log = fwd.log();
    assert!(log.contains("arming a spare"), "{log}");
    assert!(!log.contains("armed=true"), "{log}");
    assert_eq!(on_spares(&fwd), 0, "{log}");
}

#[test]
fn sign_ahead_zero_turns_it_off() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = start(&token, &["--sign-ahead", "0"]);
    let c = fwd.client(2);
    let s = session(&c);
    c.login(s, CKU_USER, pin(&token)).unwrap();
    let key = find_one(&c, s, "ec-p256", CKO_PRIVATE_KEY);
    for _ in 0..10 {
        sign_pipelined(&c, s, &Mechanism::new(CKM_ECDSA), key, &[4; 32], 64);
    }
    assert_eq!(on_spares(&fwd), 0, "{}", fwd.log());
}

/// DER of the P-256 curve OID.
fn hex_p256() -> Vec<u8> {
    vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
}

/// CPU time (user + system, in clock ticks) of the forwarder's arming thread, if it runs.
fn arming_thread_ticks(fwd: &ForwarderServer) -> Option<u64> {
    let dir = common::server_threads(fwd, "p11fwd-prearm").pop()?;
    let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
    // The fields after the command (which ends with the last ')'): utime is the 12th, stime
    // the 13th.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    Some(rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap())
}

/// Between back-to-back jobs the arming thread stays awake for a while (`prearm::next_job`);
/// once the client stops signing it must go to sleep, not keep a CPU busy.
#[test]
fn the_arming_thread_sleeps_once_signing_stops() {
    let (_token, fwd, c, s) = logged_in(&[Key::EcP256]);
    let key = find_one(&c, s, "ec-p256", CKO_PRIVATE_KEY);
    let mech = Mechanism::new(CKM_ECDSA);
    until_on_spares(&fwd, || {
        sign_pipelined(&c, s, &mech, key, &[7u8; 32], 64);
    });
    // A burst of back-to-back signatures: the arming thread spins between its jobs.
    for _ in 0..200 {
        sign_pipelined(&c, s, &mech, key, &[7u8; 32], 64);
    }
    let used = on_spares(&fwd);
    until_armed(&fwd, mech.ty, usize::from(DEFAULT_PER_KEY) + used);
    std::thread::sleep(Duration::from_millis(100));
    let before = arming_thread_ticks(&fwd).expect("an arming thread");
    // Half a second of an idle client: a spinning thread would use about 50 ticks here.
    std::thread::sleep(Duration::from_millis(500));
    let spent = arming_thread_ticks(&fwd).unwrap() - before;
    assert!(
        spent <= 5,
        "the idle arming thread used {spent} ticks in 0.5 s"
    );
}

/// How many decryptions ran on a spare so far (the forwarder's trace).
fn decrypted_on_spares(fwd: &ForwarderServer) -> usize {
    fwd.log().matches("decrypted on a spare").count()
}

/// `C_DecryptInit` + `C_Decrypt` in one write, as p11fwd's provider and client module send
/// them.
fn decrypt_pipelined(c: &Client, s: u64, m: &Mechanism, key: u64, ct: &[u8]) -> Vec<u8> {
    let mut r = c.connection().call_batch(&[
        req::init_with_key(CallId::DecryptInit, s, Some(m.clone()), key),
        req::data_in_out(c.dialect(), CallId::Decrypt, s, ct, OutCap::Buffer(256)),
    ]);
    let pt = r.pop().unwrap().unwrap();
    r.pop().unwrap().unwrap();
    match pt.first() {
        Some(Arg::ByteArray(ByteArray::Data(d))) => d.clone(),
        other => panic!("no plaintext: {other:?}"),
    }
}

/// Decrypting ahead: the same spares as signing, for `C_DecryptInit` + `C_Decrypt`.
#[test]
fn repeated_decryptions_run_on_spares_and_decrypt() {
    let (_token, fwd, c, s) = logged_in(&[Key::Rsa2048]);
    let key = find_one(&c, s, "rsa2048", CKO_PRIVATE_KEY);
    let public = find_one(&c, s, "rsa2048", CKO_PUBLIC_KEY);
    let m = Mechanism::new(CKM_RSA_PKCS);
    let secret = [0x5au8; 48];
    c.encrypt_init(s, Some(m.clone()), public).unwrap();
    let ct = data(c.encrypt(s, &secret, OutCap::Buffer(256)));

    for _ in 0..200 {
        assert_eq!(decrypt_pipelined(&c, s, &m, key, &ct), secret);
        if decrypted_on_spares(&fwd) > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let warm = decrypted_on_spares(&fwd);
    assert!(warm > 0, "no decryption ran on a spare:\n{}", fwd.log());
    for _ in 0..10 {
        until_armed(
            &fwd,
            m.ty,
            usize::from(DEFAULT_PER_KEY) + decrypted_on_spares(&fwd),
        );
        assert_eq!(decrypt_pipelined(&c, s, &m, key, &ct), secret);
    }
    assert_eq!(
        decrypted_on_spares(&fwd) - warm,
        10,
        "decryptions on spares"
    );

    // The stock client's order: C_DecryptInit alone, a size query, then C_Decrypt.
    until_armed(
        &fwd,
        m.ty,
        usize::from(DEFAULT_PER_KEY) + decrypted_on_spares(&fwd),
    );
    let before = decrypted_on_spares(&fwd);
    c.decrypt_init(s, Some(m.clone()), key).unwrap();
    assert!(matches!(
        c.decrypt(s, &ct, OutCap::Query).unwrap(),
        Output::Size(256)
    ));
    assert_eq!(data(c.decrypt(s, &ct, OutCap::Buffer(256))), secret);
    assert_eq!(decrypted_on_spares(&fwd), before + 1, "{}", fwd.log());

    // Another call while a spare holds the operation moves it to the session's own: a second
    // C_DecryptInit gets the module's answer, a C_Sign is not taken for the decryption, and
    // the first C_DecryptInit's decryption still works.
    let other_calls: [(&dyn Fn() -> u64, u64); 2] = [
        (
            &|| rv_of(c.decrypt_init(s, Some(m.clone()), key)),
            CKR_OPERATION_ACTIVE,
        ),
        (
            &|| rv_of(c.sign(s, b"x", OutCap::Buffer(256))),
            CKR_OPERATION_NOT_INITIALIZED,
        ),
    ];
    for (call, rv) in other_calls {
        until_armed(
            &fwd,
            m.ty,
            usize::from(DEFAULT_PER_KEY) + decrypted_on_spares(&fwd),
        );
        c.decrypt_init(s, Some(m.clone()), key).unwrap();
        assert_eq!(call(), rv);
        assert_eq!(data(c.decrypt(s, &ct, OutCap::Buffer(256))), secret);
    }
}
