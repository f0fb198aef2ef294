//! Issue 7: fewer round trips with the same PKCS#11 results, against the stock `p11-kit server`
//! 0.24.1 (protocol version 0) and `p11fwd server` (version 2), through a relay that counts
//! round trips.
//!
//! - deferred `C_*Init` (sent with the next call), with Init errors reported by that call,
//!   by the next call of the operation when an unrelated call carried it, or at once when what
//!   we know of the key contradicts the mechanism; a second Init, cancels, `C_SessionCancel`;
//! - local size queries and short buffers (the operation stays active);
//! - deferred `C_FindObjectsInit` (with `C_FindObjects`) and `C_FindObjectsFinal` (with the
//!   next call);
//! - cached mechanism lists/infos, the slot list of a count query;
//! - round-trip counts: one per signature, decryption and digest after the first, driven by raw
//!   calls, by the `cryptoki` crate, and by `pkcs11-tool --sign` (compared with the stock client).
#![allow(unsafe_code, clippy::unwrap_used, clippy::macro_metavars_in_unsafe)] // C API tests (common/mod.rs)

mod common;

use std::path::Path;
use std::process::Command;
use std::ptr;

use common::{Kind, Lib, Relayed, Rig, arg, input, lock, mech, mech_with, openssl, output};
use cryptoki_sys::*;
use p11fwd_tests::{Key, TestToken, artifacts, require_tool};

fn token() -> TestToken {
    TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::RsaPss)
        .with(Key::EcP256)
        .with(Key::RsaAlwaysAuth)
        .build()
}

/// `C_Sign` into a buffer of `cap` bytes (NULL for `None`): (rv, length, signature).
fn sign_raw(
    lib: &Lib,
    h: CK_SESSION_HANDLE,
    data: &[u8],
    cap: Option<usize>,
) -> (CK_RV, u64, Vec<u8>) {
    let (d, dl) = input(data);
    output(cap, |o, l| call!(lib, C_Sign, h, d, dl, o, l))
}

fn verify_ecdsa(token: &TestToken, digest: &[u8], raw: &[u8]) {
    // raw r|s → DER for openssl.
    let der = |x: &[u8]| {
        let x: Vec<u8> = x.iter().copied().skip_while(|b| *b == 0).collect();
        let mut v = vec![0x02];
        if x.first().is_some_and(|b| b & 0x80 != 0) {
            v.push(x.len() as u8 + 1);
            v.push(0);
        } else {
            v.push(x.len() as u8);
        }
        v.extend(x);
        v
    };
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut body = der(r);
    body.extend(der(s));
    let mut sig = vec![0x30, body.len() as u8];
    sig.extend(body);
    openssl(
        &[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            &arg(&token.public_pem("ec-p256")),
            "-in",
            "{data}",
            "-sigfile",
            "{sig}",
        ],
        digest,
        &sig,
    );
}

fn verify_rsa(token: &TestToken, data: &[u8], sig: &[u8]) {
    openssl(
        &[
            "dgst",
            "-sha256",
            "-verify",
            &arg(&token.public_pem("rsa2048")),
            "-signature",
            "{sig}",
            "{data}",
        ],
        data,
        sig,
    );
}

fn round_trips(kind: Kind) {
    let _g = lock();
    let token = token();
    let rig = Rig::new(kind, &token);
    let lib = &rig.lib;
    assert_eq!(
        rig.rt(),
        1,
        "the version byte and C_Initialize in one write"
    );

    // The slot list: the count query asks the server, the fill uses its answer.
    let slot = lib.slots().unwrap()[0];
    assert_eq!(rig.rt(), 1, "C_GetSlotList count + fill");
    // Mechanism lists and infos are asked once per connection.
    let mechs = lib.mechanisms(slot).unwrap();
    assert_eq!(rig.rt(), 1);
    assert_eq!(lib.mechanisms(slot).unwrap(), mechs);
    assert_eq!(rig.rt(), 0, "mechanism list cached");
    let mut info = CK_MECHANISM_INFO::default();
    for _ in 0..2 {
        assert_eq!(
            call!(lib, C_GetMechanismInfo, slot, CKM_ECDSA, &mut info),
            CKR_OK
        );
    }
    assert!(info.flags & CKF_SIGN != 0);
    assert_eq!(rig.rt(), 1, "mechanism info cached");

    let h = lib.open(slot).unwrap();
    lib.login(h, token.user_pin()).unwrap();
    assert_eq!(rig.rt(), 2, "C_OpenSession, C_Login");
    // Init + FindObjects in one write; the Final travels with the next call.
    let key = lib.object(h, CKO_PRIVATE_KEY, "ec-p256");
    let public = lib.object(h, CKO_PUBLIC_KEY, "ec-p256");
    assert_eq!(rig.rt(), 2, "one round trip per search");

    // ECDSA: SignInit + size query + C_Sign, as the cryptoki crate does it. The first one asks
    // the server for the size (and fetches the key's metadata in the same write).
    let digest = [0x5au8; 32];
    let sig = lib.sign(h, &mut mech(CKM_ECDSA), key, &digest).unwrap();
    assert_eq!(sig.len(), 64);
    assert_eq!(rig.rt(), 2, "first signature: size query + signature");
    for i in 0..5u8 {
        let digest = [i; 32];
        let sig = lib.sign(h, &mut mech(CKM_ECDSA), key, &digest).unwrap();
        assert_eq!(rig.rt(), 1, "one round trip per ECDSA signature");
        lib.verify(h, &mut mech(CKM_ECDSA), public, &digest, &sig)
            .unwrap();
        assert_eq!(rig.rt(), 1, "one round trip per verification");
        if i == 0 {
            verify_ecdsa(&token, &digest, &sig);
        }
    }

    // RSA PKCS#1 v1.5 with SHA-256.
    let rsa = lib.object(h, CKO_PRIVATE_KEY, "rsa2048");
    assert_eq!(rig.rt(), 1);
    let data = b"one round trip per signature";
    lib.sign(h, &mut mech(CKM_SHA256_RSA_PKCS), rsa, data)
        .unwrap();
    assert_eq!(rig.rt(), 2);
    for _ in 0..3 {
        let sig = lib
            .sign(h, &mut mech(CKM_SHA256_RSA_PKCS), rsa, data)
            .unwrap();
        assert_eq!(sig.len(), 256);
        assert_eq!(rig.rt(), 1, "one round trip per RSA signature");
        verify_rsa(&token, data, &sig);
    }

    // RSA decryption: DecryptInit + size query + C_Decrypt in one round trip.
    let secret = b"premaster secret of 48 bytes....................";
    let ct = openssl(
        &[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            &arg(&token.public_pem("rsa2048")),
            "-in",
            "{data}",
            "-out",
            "{out}",
        ],
        secret,
        &[],
    );
    rig.rt();
    for _ in 0..3 {
        assert_eq!(
            call!(lib, C_DecryptInit, h, &mut mech(CKM_RSA_PKCS), rsa),
            CKR_OK
        );
        let mut len = 0;
        assert_eq!(
            call!(
                lib,
                C_Decrypt,
                h,
                ct.as_ptr().cast_mut(),
                ct.len() as CK_ULONG,
                ptr::null_mut(),
                &mut len
            ),
            CKR_OK
        );
        assert_eq!(len, 256, "the token's answer: the modulus length");
        let mut pt = vec![0u8; len as usize];
        assert_eq!(
            call!(
                lib,
                C_Decrypt,
                h,
                ct.as_ptr().cast_mut(),
                ct.len() as CK_ULONG,
                pt.as_mut_ptr(),
                &mut len
            ),
            CKR_OK
        );
        assert_eq!(&pt[..len as usize], secret);
        assert_eq!(rig.rt(), 1, "one round trip per decryption");
    }

    // A digest: the size is known from the mechanism.
    assert_eq!(call!(lib, C_DigestInit, h, &mut mech(CKM_SHA256)), CKR_OK);
    let mut len = 0;
    let d = data.as_ptr().cast_mut();
    assert_eq!(
        call!(
            lib,
            C_Digest,
            h,
            d,
            data.len() as CK_ULONG,
            ptr::null_mut(),
            &mut len
        ),
        CKR_OK
    );
    assert_eq!(len, 32);
    let mut out = [0u8; 32];
    assert_eq!(
        call!(
            lib,
            C_Digest,
            h,
            d,
            data.len() as CK_ULONG,
            out.as_mut_ptr(),
            &mut len
        ),
        CKR_OK
    );
    assert_eq!(rig.rt(), 1, "one round trip per digest");
    let expected = openssl(
        &["dgst", "-sha256", "-binary", "-out", "{out}", "{data}"],
        data,
        &[],
    );
    assert_eq!(&out[..], &expected[..]);

    assert_eq!(call!(lib, C_CloseSession, h), CKR_OK);
    assert_eq!(lib.finalize(), CKR_OK);
}

#[test]
fn round_trips_stock() {
    round_trips(Kind::Stock);
}

#[test]
fn round_trips_p11fwd() {
    round_trips(Kind::Fwd);
}

/// A private key's handle, found with the relay count reset afterwards.
fn key(rig: &Rig, h: CK_SESSION_HANDLE, label: &str) -> CK_OBJECT_HANDLE {
    let k = rig.lib.object(h, CKO_PRIVATE_KEY, label);
    rig.rt();
    k
}

fn semantics(kind: Kind) {
    let _g = lock();
    let token = token();
    let rig = Rig::new(kind, &token);
    let lib = &rig.lib;
    let h = lib.session();
    let ec = key(&rig, h, "ec-p256");
    let rsa = key(&rig, h, "rsa2048");
    let digest = [7u8; 32];
    // Metadata of both keys (the first signature fetches it).
    lib.sign(h, &mut mech(CKM_ECDSA), ec, &digest).unwrap();
    lib.sign(h, &mut mech(CKM_SHA256_RSA_PKCS), rsa, b"x")
        .unwrap();
    rig.rt();

    // Size query and short buffers, answered locally; the operation stays active.
    for (k, m, n) in [(ec, CKM_ECDSA, 64u64), (rsa, CKM_SHA256_RSA_PKCS, 256)] {
        assert_eq!(call!(lib, C_SignInit, h, &mut mech(m), k), CKR_OK);
        let (r, len, _) = sign_raw(lib, h, &digest, None);
        assert_eq!((r, len), (CKR_OK, n));
        let (r, len, _) = sign_raw(lib, h, &digest, Some(10));
        assert_eq!((r, len), (CKR_BUFFER_TOO_SMALL, n));
        // A non-NULL buffer of length 0 is a short buffer, not a size query.
        let (r, len, _) = sign_raw(lib, h, &digest, Some(0));
        assert_eq!((r, len), (CKR_BUFFER_TOO_SMALL, n));
        assert_eq!(
            rig.rt(),
            0,
            "Init, size query and short buffers without a round trip"
        );
        let (r, len, sig) = sign_raw(lib, h, &digest, Some(n as usize));
        assert_eq!((r, len), (CKR_OK, n));
        assert_eq!(rig.rt(), 1);
        if m == CKM_ECDSA {
            verify_ecdsa(&token, &digest, &sig);
        }
        // The operation ended.
        assert_eq!(
            sign_raw(lib, h, &digest, Some(512)).0,
            CKR_OPERATION_NOT_INITIALIZED
        );
        assert_eq!(rig.rt(), 1);
    }

    // An Init the server rejects, reported by the C_Sign it travelled with: the rsa-pss key
    // allows PSS only (SoftHSM enforces CKA_ALLOWED_MECHANISMS in C_SignInit).
    let pss = key(&rig, h, "rsa-pss");
    assert_eq!(
        call!(lib, C_SignInit, h, &mut mech(CKM_SHA256_RSA_PKCS), pss),
        CKR_OK
    );
    assert_eq!(rig.rt(), 0, "deferred");
    assert_eq!(
        sign_raw(lib, h, b"data", Some(256)).0,
        CKR_MECHANISM_INVALID
    );
    assert_eq!(rig.rt(), 1);
    // It never became active; a new operation works.
    assert_eq!(
        sign_raw(lib, h, b"data", Some(256)).0,
        CKR_OPERATION_NOT_INITIALIZED
    );
    let mut pss_params = CK_RSA_PKCS_PSS_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        sLen: 32,
    };
    assert_eq!(
        call!(
            lib,
            C_SignInit,
            h,
            &mut mech_with(CKM_SHA256_RSA_PKCS_PSS, &mut pss_params),
            pss
        ),
        CKR_OK
    );
    assert_eq!(sign_raw(lib, h, b"data", Some(256)).0, CKR_OK);
    rig.rt();

    // The same failure carried by an unrelated call: kept, and reported by the next C_Sign
    // without a round trip.
    assert_eq!(
        call!(lib, C_SignInit, h, &mut mech(CKM_SHA256_RSA_PKCS), pss),
        CKR_OK
    );
    let mut label = [0u8; 32];
    let mut attr = CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: label.as_mut_ptr().cast(),
        ulValueLen: 32,
    };
    assert_eq!(
        call!(lib, C_GetAttributeValue, h, pss, &mut attr, 1),
        CKR_OK
    );
    assert_eq!(&label[..attr.ulValueLen as usize], b"rsa-pss");
    assert_eq!(rig.rt(), 1);
    assert_eq!(sign_raw(lib, h, b"data", None).0, CKR_MECHANISM_INVALID);
    assert_eq!(rig.rt(), 0);
    assert_eq!(
        sign_raw(lib, h, b"data", Some(256)).0,
        CKR_OPERATION_NOT_INITIALIZED
    );
    rig.rt();

    // What we know contradicts the Init (an RSA key for ECDSA): sent at once, so the token's
    // own answer comes back from C_SignInit (SoftHSM 2.6.1 accepts it and fails in C_Sign).
    let rv = call!(lib, C_SignInit, h, &mut mech(CKM_ECDSA), rsa);
    assert_eq!(rig.rt(), 1, "not deferred");
    if rv == CKR_OK {
        assert_ne!(sign_raw(lib, h, &digest, Some(512)).0, CKR_OK);
    }
    rig.rt();
    // A handle the server never gave us: at once too.
    let rv = call!(lib, C_SignInit, h, &mut mech(CKM_ECDSA), 0xdead);
    assert!(
        rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID,
        "{rv:#x}"
    );
    assert_eq!(rig.rt(), 1);

    // An Init followed by no operation, then another Init: the token's CKR_OPERATION_ACTIVE,
    // and the first operation is still there.
    assert_eq!(call!(lib, C_SignInit, h, &mut mech(CKM_ECDSA), ec), CKR_OK);
    assert_eq!(
        call!(lib, C_SignInit, h, &mut mech(CKM_ECDSA), ec),
        CKR_OPERATION_ACTIVE
    );
    assert_eq!(rig.rt(), 1);
    let (r, _, sig) = sign_raw(lib, h, &digest, Some(64));
    assert_eq!(r, CKR_OK);
    verify_ecdsa(&token, &digest, &sig);
    rig.rt();

    // Cancel (NULL mechanism) of a deferred Init: nothing reaches the server, against every
    // generation (a 0.24 server could not even carry the cancel).
    assert_eq!(call!(lib, C_SignInit, h, &mut mech(CKM_ECDSA), ec), CKR_OK);
    assert_eq!(call!(lib, C_SignInit, h, ptr::null_mut(), ec), CKR_OK);
    assert_eq!(rig.rt(), 0);
    assert_eq!(
        sign_raw(lib, h, &digest, Some(64)).0,
        CKR_OPERATION_NOT_INITIALIZED
    );
    // Cancel of an operation the server has: forwarded (0.25+) or refused (0.24), as before.
    assert_eq!(call!(lib, C_SignInit, h, &mut mech(CKM_ECDSA), ec), CKR_OK);
    let mut si = CK_SESSION_INFO::default();
    assert_eq!(call!(lib, C_GetSessionInfo, h, &mut si), CKR_OK);
    rig.rt();
    let cancel = call!(lib, C_SignInit, h, ptr::null_mut(), ec);
    if kind == Kind::Stock {
        assert_eq!(cancel, CKR_FUNCTION_NOT_SUPPORTED);
        assert_eq!(rig.rt(), 0);
    } else {
        // SoftHSM 2.6.1 is a 2.40 module: it does not know the 3.0 cancel.
        assert_ne!(cancel, CKR_GENERAL_ERROR);
        assert_eq!(rig.rt(), 1);
    }
    if cancel != CKR_OK {
        assert_eq!(
            sign_raw(lib, h, &digest, Some(64)).0,
            CKR_OK,
            "still active"
        );
    }
    // C_SessionCancel with a deferred Init: same answer as without pipelining, and the Init
    // survives (against 0.24 nothing is sent; SoftHSM 2.6.1 does not implement it).
    assert_eq!(call!(lib, C_SignInit, h, &mut mech(CKM_ECDSA), ec), CKR_OK);
    let rv = call!(lib, C_SessionCancel, h, CKF_SIGN);
    if kind == Kind::Stock {
        assert_eq!(rv, CKR_FUNCTION_NOT_SUPPORTED);
    }
    if rv == CKR_OK {
        assert_eq!(
            sign_raw(lib, h, &digest, Some(64)).0,
            CKR_OPERATION_NOT_INITIALIZED
        );
    } else {
        assert_eq!(sign_raw(lib, h, &digest, Some(64)).0, CKR_OK);
    }
    rig.rt();

    // Searches: Init travels with the first C_FindObjects, Final with the next call.
    let mut class = CKO_PRIVATE_KEY;
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_CLASS,
        pValue: (&raw mut class).cast(),
        ulValueLen: 8,
    }];
    let mut found = [0; 8];
    let mut n = 0;
    assert_eq!(call!(lib, C_FindObjectsInit, h, t.as_mut_ptr(), 1), CKR_OK);
    assert_eq!(rig.rt(), 0);
    assert_eq!(
        call!(lib, C_FindObjects, h, found.as_mut_ptr(), 2, &mut n),
        CKR_OK
    );
    assert_eq!(n, 2);
    assert_eq!(
        call!(lib, C_FindObjects, h, found[2..].as_mut_ptr(), 6, &mut n),
        CKR_OK
    );
    assert_eq!(n, 2, "four private keys on the token");
    assert_eq!(rig.rt(), 2);
    // A second Init while the search is active: the token's answer.
    assert_eq!(
        call!(lib, C_FindObjectsInit, h, t.as_mut_ptr(), 1),
        CKR_OPERATION_ACTIVE
    );
    assert_eq!(rig.rt(), 1);
    assert_eq!(call!(lib, C_FindObjectsFinal, h), CKR_OK);
    assert_eq!(call!(lib, C_FindObjectsInit, h, t.as_mut_ptr(), 1), CKR_OK);
    assert_eq!(
        rig.rt(),
        0,
        "Final and the next Init wait for C_FindObjects"
    );
    assert_eq!(
        call!(lib, C_FindObjects, h, found.as_mut_ptr(), 8, &mut n),
        CKR_OK
    );
    assert_eq!(n, 4);
    assert_eq!(rig.rt(), 1);
    assert_eq!(call!(lib, C_FindObjectsFinal, h), CKR_OK);
    // Init then Final without a search: neither reaches the server.
    assert_eq!(call!(lib, C_FindObjectsInit, h, t.as_mut_ptr(), 1), CKR_OK);
    assert_eq!(call!(lib, C_FindObjectsFinal, h), CKR_OK);
    assert_eq!(rig.rt(), 0);
    assert_eq!(
        call!(lib, C_FindObjects, h, found.as_mut_ptr(), 8, &mut n),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(
        call!(lib, C_FindObjectsFinal, h),
        CKR_OPERATION_NOT_INITIALIZED
    );
    // A bad template is still refused at once.
    let mut bad = [CK_ATTRIBUTE {
        type_: CKA_CLASS,
        pValue: (&raw mut class).cast(),
        ulValueLen: 3,
    }];
    assert_eq!(
        call!(lib, C_FindObjectsInit, h, bad.as_mut_ptr(), 1),
        CKR_ATTRIBUTE_VALUE_INVALID
    );
    rig.rt();

    // CKA_ALWAYS_AUTHENTICATE: the context-specific login carries the deferred Init.
    let always = key(&rig, h, "rsa-always-auth");
    assert_eq!(
        call!(lib, C_SignInit, h, &mut mech(CKM_SHA256_RSA_PKCS), always),
        CKR_OK
    );
    let pin = token.user_pin();
    assert_eq!(
        call!(
            lib,
            C_Login,
            h,
            CKU_CONTEXT_SPECIFIC,
            pin.as_ptr().cast_mut(),
            pin.len() as CK_ULONG
        ),
        CKR_OK
    );
    assert_eq!(sign_raw(lib, h, b"data", Some(256)).0, CKR_OK);
    assert_eq!(rig.rt(), 2);

    // Closing a session with a deferred Init.
    let h2 = lib.open(lib.slots().unwrap()[0]).unwrap();
    assert_eq!(call!(lib, C_SignInit, h2, &mut mech(CKM_ECDSA), ec), CKR_OK);
    assert_eq!(call!(lib, C_CloseSession, h2), CKR_OK);
    assert_eq!(call!(lib, C_CloseSession, h), CKR_OK);
    assert_eq!(lib.finalize(), CKR_OK);
}

#[test]
fn semantics_stock() {
    semantics(Kind::Stock);
}

#[test]
fn semantics_p11fwd() {
    semantics(Kind::Fwd);
}

/// The `cryptoki` crate's sign (SignInit, size query, C_Sign): one round trip per signature
/// after the first.
fn cryptoki_driven(kind: Kind) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let _g = lock();
    let token = token();
    let Relayed {
        relay,
        server: _server,
        dir: _dir,
    } = Relayed::start(kind, &token);
    let pkcs11 = Pkcs11::new(artifacts::client_module()).unwrap();
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = pkcs11.get_slots_with_token().unwrap()[0];
    let session = pkcs11.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(token.user_pin().into())))
        .unwrap();
    let find = |label: &str| {
        session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .unwrap()[0]
    };
    let ec = find("ec-p256");
    let rsa = find("rsa2048");
    let setup = relay.stats().round_trips;
    relay.reset_stats();

    let digest = [3u8; 32];
    session.sign(&Mechanism::Ecdsa, ec, &digest).unwrap();
    let first = relay.stats().round_trips;
    relay.reset_stats();
    for _ in 0..10 {
        let sig = session.sign(&Mechanism::Ecdsa, ec, &digest).unwrap();
        assert_eq!(sig.len(), 64);
    }
    let ten = relay.stats().round_trips;
    relay.reset_stats();
    session
        .sign(&Mechanism::Sha256RsaPkcs, rsa, b"data")
        .unwrap();
    relay.reset_stats();
    for _ in 0..5 {
        let sig = session
            .sign(&Mechanism::Sha256RsaPkcs, rsa, b"data")
            .unwrap();
        verify_rsa(&token, b"data", &sig);
    }
    let five = relay.stats().round_trips;
    println!(
        "{kind:?}: setup {setup} round trips, first ECDSA signature {first}, 10 more {ten}, 5 RSA {five}"
    );
    assert!(first <= 2, "first signature: {first} round trips");
    assert_eq!(ten, 10, "one round trip per ECDSA signature");
    assert_eq!(five, 5, "one round trip per RSA signature");
    drop(session);
    pkcs11.finalize().unwrap();
}

#[test]
fn cryptoki_signatures_stock() {
    cryptoki_driven(Kind::Stock);
}

#[test]
fn cryptoki_signatures_p11fwd() {
    cryptoki_driven(Kind::Fwd);
}

/// `pkcs11-tool --sign` through our module and through the stock client, same server, same
/// relay: the whole process's round trips.
fn pkcs11_tool_sign(kind: Kind) {
    let _g = lock();
    let token = token();
    let Relayed {
        relay,
        dir,
        server: _server,
    } = Relayed::start(kind, &token);
    let data = dir.path().join("data");
    std::fs::write(&data, [9u8; 32]).unwrap();
    let run = |module: &Path| {
        relay.reset_stats();
        let sig = dir.path().join("sig");
        let mut cmd = Command::new(require_tool("pkcs11-tool"));
        cmd.arg("--module")
            .arg(module)
            .args([
                "--login",
                "--pin",
                token.user_pin(),
                "--sign",
                "--mechanism",
                "ECDSA",
            ])
            // pkcs11-tool 0.23 picks the key by id (it ignores --label for --sign).
            .args(["--id", &Key::EcP256.id_hex(), "--input-file"])
            .arg(&data)
            .arg("--output-file")
            .arg(&sig)
            .env("P11FWD_SERVER_ADDRESS", relay.address())
            .env("P11_KIT_SERVER_ADDRESS", relay.address());
        p11fwd_tests::run_ok(&mut cmd);
        assert_eq!(std::fs::read(&sig).unwrap().len(), 64);
        relay.stats().round_trips
    };
    let ours = run(&artifacts::client_module());
    let stock = run(Path::new(p11fwd_tests::P11KIT_CLIENT_MODULE));
    println!(
        "{kind:?}: pkcs11-tool --sign: {ours} round trips with p11fwd-client.so, {stock} with p11-kit-client.so"
    );
    assert!(ours < stock, "{ours} vs {stock}");
}

#[test]
fn pkcs11_tool_sign_stock() {
    pkcs11_tool_sign(Kind::Stock);
}

#[test]
fn pkcs11_tool_sign_p11fwd() {
    pkcs11_tool_sign(Kind::Fwd);
}
