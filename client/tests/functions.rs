//! Every PKCS#11 function through the module, against both servers, checked against SoftHSM
//! called directly: the same sequence of calls runs on SoftHSM loaded in this process and
//! through the module, and the two transcripts of (call, CK_RV, length) must be equal. Results
//! are also checked on their own (openssl verifies the multi-part signature, digest and
//! ciphertext; wrapped keys unwrap to the same value), and, through the module, the calls that
//! must be answered locally (`C_SignFinal(NULL)`, `C_DigestFinal(NULL)`) or by the server (a
//! `CKR_BUFFER_TOO_SMALL` of `C_EncryptUpdate` and `C_WrapKey`) are counted by a relay.
//! The 3.0 message functions, which SoftHSM 2.6 lacks, are checked through the module only.
#![allow(unsafe_code, clippy::unwrap_used, clippy::macro_metavars_in_unsafe)] // C API tests (common/mod.rs)

mod common;

use std::ffi::c_void;
use std::ptr;

use common::{Kind, Lib, Rig, arg, hex, input, lock, mech, mech_with, openssl, output};
use cryptoki_sys::*;
use p11fwd_tests::relay::Relay;
use p11fwd_tests::{Key, TestToken};

fn token() -> TestToken {
    TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::EcP256)
        .with(Key::Aes256)
        .build()
}

/// One call of the sequence: its name, CK_RV and the length it reported (0 if none).
type Step = (&'static str, CK_RV, CK_ULONG);

/// The sequence being run: the transcript, and the relay counting round trips (through the
/// module only).
struct Run<'a> {
    relay: Option<&'a Relay>,
    steps: Vec<Step>,
}

impl Run<'_> {
    /// Record a call's CK_RV.
    fn rv(&mut self, name: &'static str, rv: CK_RV) -> CK_RV {
        self.steps.push((name, rv, 0));
        rv
    }

    /// Record a call that must succeed.
    #[track_caller]
    fn ok(&mut self, name: &'static str, rv: CK_RV) {
        assert_eq!(self.rv(name, rv), CKR_OK, "{name}");
    }

    /// Record a call with an output buffer; returns what it wrote.
    fn out(&mut self, name: &'static str, got: (CK_RV, CK_ULONG, Vec<u8>)) -> Vec<u8> {
        self.steps.push((name, got.0, got.1));
        got.2
    }

    /// Start counting round trips.
    fn count(&self) {
        if let Some(r) = self.relay {
            r.reset_stats();
        }
    }

    /// Round trips since [`Self::count`] must be `n` (through the module).
    #[track_caller]
    fn trips(&self, n: u64, what: &str) {
        if let Some(r) = self.relay {
            assert_eq!(r.stats().round_trips, n, "round trips of {what}");
        }
    }
}

/// A template entry pointing at `v`.
fn attr<T>(ty: CK_ATTRIBUTE_TYPE, v: &mut T) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: (v as *mut T).cast::<c_void>(),
        ulValueLen: size_of::<T>() as CK_ULONG,
    }
}

/// A template entry holding `v`'s bytes.
fn attr_bytes(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: v.as_ptr().cast_mut().cast(),
        ulValueLen: v.len() as CK_ULONG,
    }
}

/// `openssl` computing over `data` (`{data}` in, `{out}` out).
fn ossl(args: &[&str], data: &[u8]) -> Vec<u8> {
    openssl(args, data, &[])
}

/// The whole sequence; returns the transcript.
#[allow(clippy::too_many_lines)] // One sequence, in the order of the specification's chapters.
fn sequence(lib: &Lib, token: &TestToken, relay: Option<&Relay>) -> Vec<Step> {
    let mut run = Run {
        relay,
        steps: Vec::new(),
    };
    let r = &mut run;
    let slot = lib.slots().unwrap()[0];
    let h = lib.session();
    let rsa = lib.object(h, CKO_PRIVATE_KEY, "rsa2048");
    let rsa_pub = lib.object(h, CKO_PUBLIC_KEY, "rsa2048");
    let aes = lib.object(h, CKO_SECRET_KEY, "aes256");
    let aes_hex = hex(&token.secret("aes256"));

    // Multi-part signature, twice: the second C_SignFinal(NULL) is answered by the module
    // (the key's metadata came with the first), the short buffer too.
    let parts: [&[u8]; 2] = [b"multi-part ", b"signature"];
    let data = parts.concat();
    let mut signature = Vec::new();
    for round in 0..2 {
        r.ok(
            "C_SignInit",
            call!(lib, C_SignInit, h, &mut mech(CKM_SHA256_RSA_PKCS), rsa),
        );
        for p in parts {
            let (d, dl) = input(p);
            r.ok("C_SignUpdate", call!(lib, C_SignUpdate, h, d, dl));
        }
        r.count();
        r.out(
            "C_SignFinal(NULL)",
            output(None, |o, l| call!(lib, C_SignFinal, h, o, l)),
        );
        r.out(
            "C_SignFinal(16)",
            output(Some(16), |o, l| call!(lib, C_SignFinal, h, o, l)),
        );
        if round == 1 {
            r.trips(0, "C_SignFinal(NULL) and a short buffer, the key known");
        }
        signature = r.out(
            "C_SignFinal",
            output(Some(256), |o, l| call!(lib, C_SignFinal, h, o, l)),
        );
        assert_eq!(signature.len(), 256);
    }
    let pem = arg(&token.public_pem("rsa2048"));
    openssl(
        &[
            "dgst",
            "-sha256",
            "-verify",
            &pem,
            "-signature",
            "{sig}",
            "{data}",
        ],
        &data,
        &signature,
    );
    let mut bad = signature.clone();
    bad[7] ^= 1;
    for (sig, want) in [(&signature, CKR_OK), (&bad, CKR_SIGNATURE_INVALID)] {
        r.ok(
            "C_VerifyInit",
            call!(
                lib,
                C_VerifyInit,
                h,
                &mut mech(CKM_SHA256_RSA_PKCS),
                rsa_pub
            ),
        );
        for p in parts {
            let (d, dl) = input(p);
            r.ok("C_VerifyUpdate", call!(lib, C_VerifyUpdate, h, d, dl));
        }
        let (s, sl) = input(sig);
        assert_eq!(
            r.rv("C_VerifyFinal", call!(lib, C_VerifyFinal, h, s, sl)),
            want
        );
    }
    assert_eq!(
        r.rv(
            "C_VerifyFinal (ended)",
            call!(lib, C_VerifyFinal, h, signature.as_mut_ptr(), 256)
        ),
        CKR_OPERATION_NOT_INITIALIZED
    );

    // Multi-part digest with C_DigestKey in the middle; C_DigestFinal(NULL) is local.
    r.ok(
        "C_DigestInit",
        call!(lib, C_DigestInit, h, &mut mech(CKM_SHA256)),
    );
    let (d, dl) = input(parts[0]);
    r.ok("C_DigestUpdate", call!(lib, C_DigestUpdate, h, d, dl));
    r.ok("C_DigestKey", call!(lib, C_DigestKey, h, aes));
    let (d, dl) = input(parts[1]);
    r.ok("C_DigestUpdate", call!(lib, C_DigestUpdate, h, d, dl));
    r.count();
    r.out(
        "C_DigestFinal(NULL)",
        output(None, |o, l| call!(lib, C_DigestFinal, h, o, l)),
    );
    r.trips(0, "C_DigestFinal(NULL)");
    let digest = r.out(
        "C_DigestFinal",
        output(Some(32), |o, l| call!(lib, C_DigestFinal, h, o, l)),
    );
    let digested = [parts[0], &token.secret("aes256"), parts[1]].concat();
    let expected = ossl(
        &["dgst", "-sha256", "-binary", "-out", "{out}", "{data}"],
        &digested,
    );
    assert_eq!(digest, expected);

    // Multi-part AES-CBC-PAD; a short buffer for C_EncryptUpdate is the token's answer.
    let plain: Vec<u8> = (0..60).collect();
    let iv = [6u8; 16];
    let ct = in_parts(r, (lib, h, aes), &iv, true, &plain, 20);
    let iv_hex = hex(&iv);
    let enc = [
        "enc",
        "-aes-256-cbc",
        "-K",
        &aes_hex,
        "-iv",
        &iv_hex,
        "-in",
        "{data}",
        "-out",
        "{out}",
    ];
    assert_eq!(ct, ossl(&enc, &plain));
    assert_eq!(in_parts(r, (lib, h, aes), &iv, false, &ct, 30), plain);

    // Recovery and dual-function calls: SoftHSM has none of them; its answer comes back.
    let mut rsa_pkcs = mech(CKM_RSA_PKCS);
    r.rv(
        "C_SignRecoverInit",
        call!(lib, C_SignRecoverInit, h, &mut rsa_pkcs, rsa),
    );
    let (d, dl) = input(b"recover me");
    r.out(
        "C_SignRecover",
        output(Some(256), |o, l| call!(lib, C_SignRecover, h, d, dl, o, l)),
    );
    r.rv(
        "C_VerifyRecoverInit",
        call!(lib, C_VerifyRecoverInit, h, &mut rsa_pkcs, rsa_pub),
    );
    let (s, sl) = input(&signature);
    r.out(
        "C_VerifyRecover",
        output(Some(256), |o, l| {
            call!(lib, C_VerifyRecover, h, s, sl, o, l)
        }),
    );
    let duals = [
        (
            "C_DigestEncryptUpdate",
            lib.f.C_DigestEncryptUpdate.unwrap(),
        ),
        (
            "C_DecryptDigestUpdate",
            lib.f.C_DecryptDigestUpdate.unwrap(),
        ),
        ("C_SignEncryptUpdate", lib.f.C_SignEncryptUpdate.unwrap()),
        (
            "C_DecryptVerifyUpdate",
            lib.f.C_DecryptVerifyUpdate.unwrap(),
        ),
    ];
    for (name, f) in duals {
        // SAFETY: a function of the module under test with valid buffers.
        r.out(name, output(Some(32), |o, l| unsafe { f(h, d, dl, o, l) }));
    }

    // Operation state: SoftHSM cannot save it.
    r.out(
        "C_GetOperationState",
        output(None, |o, l| call!(lib, C_GetOperationState, h, o, l)),
    );
    let (st, stl) = input(&[1, 2, 3, 4]);
    r.rv(
        "C_SetOperationState",
        call!(lib, C_SetOperationState, h, st, stl, 0, 0),
    );

    // A session AES key: wrapped (a short buffer is the server's answer), unwrapped, copied,
    // renamed, sized, destroyed.
    let (mut yes, mut no) = (CK_TRUE, CK_FALSE);
    let (mut class, mut kt, mut len) = (CKO_SECRET_KEY, CKK_AES, 32 as CK_ULONG);
    let mut template = [
        attr(CKA_CLASS, &mut class),
        attr(CKA_KEY_TYPE, &mut kt),
        attr(CKA_TOKEN, &mut no),
        attr(CKA_EXTRACTABLE, &mut yes),
        attr(CKA_SENSITIVE, &mut no),
        attr(CKA_ENCRYPT, &mut yes),
        attr(CKA_VALUE_LEN, &mut len),
    ];
    let (t, tl) = (template.as_mut_ptr(), template.len() as CK_ULONG);
    let mut key = 0;
    let mut gen_mech = mech(CKM_AES_KEY_GEN);
    r.ok(
        "C_GenerateKey",
        call!(lib, C_GenerateKey, h, &mut gen_mech, t, tl, &mut key),
    );
    let value = lib.attr_bytes(h, key, CKA_VALUE).unwrap();
    assert_eq!(value.len(), 32);
    let mut wrap = mech(CKM_AES_KEY_WRAP);
    let mut wrapped = Vec::new();
    for cap in [None, Some(8), Some(40)] {
        r.count();
        wrapped = r.out(
            "C_WrapKey",
            output(cap, |o, l| {
                call!(lib, C_WrapKey, h, &mut wrap, aes, key, o, l)
            }),
        );
        if cap == Some(8) {
            r.trips(1, "a short buffer for C_WrapKey");
        }
    }
    let kw = [
        "enc",
        "-id-aes256-wrap",
        "-K",
        &aes_hex,
        "-iv",
        "A6A6A6A6A6A6A6A6",
        "-in",
        "{data}",
        "-out",
        "{out}",
    ];
    assert_eq!(
        wrapped,
        ossl(&kw, &value),
        "RFC 3394 wrapping of the key's value"
    );
    let (w, wl) = input(&wrapped);
    let mut unwrapped = 0;
    // The same template without CKA_VALUE_LEN (the wrapped value has it).
    r.ok(
        "C_UnwrapKey",
        call!(
            lib,
            C_UnwrapKey,
            h,
            &mut wrap,
            aes,
            w,
            wl,
            t,
            tl - 1,
            &mut unwrapped
        ),
    );
    assert_eq!(lib.attr_bytes(h, unwrapped, CKA_VALUE).unwrap(), value);
    let mut label = [attr_bytes(CKA_LABEL, b"copy")];
    let mut copy = 0;
    r.ok(
        "C_CopyObject",
        call!(lib, C_CopyObject, h, key, label.as_mut_ptr(), 1, &mut copy),
    );
    assert_eq!(lib.attr_bytes(h, copy, CKA_LABEL).unwrap(), b"copy");
    assert_eq!(lib.attr_bytes(h, copy, CKA_VALUE).unwrap(), value);
    let mut label = [attr_bytes(CKA_LABEL, b"renamed")];
    r.ok(
        "C_SetAttributeValue",
        call!(lib, C_SetAttributeValue, h, copy, label.as_mut_ptr(), 1),
    );
    assert_eq!(lib.attr_bytes(h, copy, CKA_LABEL).unwrap(), b"renamed");
    let mut size = 0;
    r.ok(
        "C_GetObjectSize",
        call!(lib, C_GetObjectSize, h, copy, &mut size),
    );
    assert_eq!(size, CK_UNAVAILABLE_INFORMATION);
    for k in [copy, unwrapped] {
        r.ok("C_DestroyObject", call!(lib, C_DestroyObject, h, k));
    }
    let gone = lib.attr_bytes(h, copy, CKA_LABEL);
    r.rv(
        "C_GetAttributeValue (destroyed)",
        gone.err().unwrap_or(CKR_OK),
    );

    // A session key pair, used at once.
    let ec_params = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let mut public = [
        attr(CKA_TOKEN, &mut no),
        attr(CKA_VERIFY, &mut yes),
        attr_bytes(CKA_EC_PARAMS, &ec_params),
    ];
    let mut private = [attr(CKA_TOKEN, &mut no), attr(CKA_SIGN, &mut yes)];
    let (mut pk, mut sk) = (0, 0);
    r.ok(
        "C_GenerateKeyPair",
        call!(
            lib,
            C_GenerateKeyPair,
            h,
            &mut mech(CKM_EC_KEY_PAIR_GEN),
            public.as_mut_ptr(),
            3,
            private.as_mut_ptr(),
            2,
            &mut pk,
            &mut sk
        ),
    );
    let sig = lib.sign(h, &mut mech(CKM_ECDSA), sk, &[9; 32]).unwrap();
    let verified = lib.verify(h, &mut mech(CKM_ECDSA), pk, &[9; 32], &sig);
    r.ok(
        "C_Verify (generated pair)",
        verified.err().unwrap_or(CKR_OK),
    );

    // Random numbers, legacy calls, slot events.
    let (s, sl) = input(&[0x11; 32]);
    r.ok("C_SeedRandom", call!(lib, C_SeedRandom, h, s, sl));
    let mut rnd = [0u8; 24];
    r.ok(
        "C_GenerateRandom",
        call!(lib, C_GenerateRandom, h, rnd.as_mut_ptr(), 24),
    );
    r.rv("C_GetFunctionStatus", call!(lib, C_GetFunctionStatus, h));
    r.rv("C_CancelFunction", call!(lib, C_CancelFunction, h));

    // PINs: the user changes hers, C_CloseAllSessions, the SO resets it, C_InitToken wipes.
    let user = token.user_pin();
    let pin = |p: &str| (p.as_ptr().cast_mut(), p.len() as CK_ULONG);
    let ((old, ol), (new, nl)) = (pin(user), pin("654321"));
    r.ok("C_SetPIN", call!(lib, C_SetPIN, h, old, ol, new, nl));
    r.ok("C_Logout", call!(lib, C_Logout, h));
    r.rv(
        "C_Login (old PIN)",
        call!(lib, C_Login, h, CKU_USER, old, ol),
    );
    r.ok(
        "C_Login (new PIN)",
        call!(lib, C_Login, h, CKU_USER, new, nl),
    );
    let other = lib.open(slot).unwrap();
    r.ok("C_CloseAllSessions", call!(lib, C_CloseAllSessions, slot));
    let mut info = CK_SESSION_INFO::default();
    for s in [h, other] {
        r.rv(
            "C_GetSessionInfo (closed)",
            call!(lib, C_GetSessionInfo, s, &mut info),
        );
    }
    let h = lib.open(slot).unwrap();
    let (so, sol) = pin(token.so_pin());
    r.ok("C_Login (SO)", call!(lib, C_Login, h, CKU_SO, so, sol));
    r.ok("C_InitPIN", call!(lib, C_InitPIN, h, old, ol));
    r.ok("C_Logout", call!(lib, C_Logout, h));
    r.ok(
        "C_Login (reset PIN)",
        call!(lib, C_Login, h, CKU_USER, old, ol),
    );
    r.ok("C_CloseSession", call!(lib, C_CloseSession, h));
    let mut label = [b' '; 32];
    label[..token.label().len()].copy_from_slice(token.label().as_bytes());
    r.ok(
        "C_InitToken",
        call!(lib, C_InitToken, slot, so, sol, label.as_mut_ptr()),
    );
    let h = lib.open(slot).unwrap();
    r.rv("C_Login (wiped)", call!(lib, C_Login, h, CKU_USER, old, ol));
    let found = lib.find(h, CKO_PRIVATE_KEY, "rsa2048");
    let found = (
        found.as_ref().err().copied().unwrap_or(CKR_OK),
        found.map_or(0, |v| v.len() as CK_ULONG),
    );
    r.out("C_FindObjects (wiped)", (found.0, found.1, Vec::new()));
    r.ok("C_CloseSession", call!(lib, C_CloseSession, h));
    run.steps
}

/// AES-CBC-PAD encryption or decryption of `data` in parts of `chunk` bytes, then the final
/// part; the first encryption update is tried with a short buffer first (the token's
/// `CKR_BUFFER_TOO_SMALL`, one round trip through the module).
fn in_parts(
    r: &mut Run<'_>,
    (lib, h, key): (&Lib, CK_SESSION_HANDLE, CK_OBJECT_HANDLE),
    iv: &[u8; 16],
    encrypt: bool,
    data: &[u8],
    chunk: usize,
) -> Vec<u8> {
    let mut iv = *iv;
    let mut m = mech_with(CKM_AES_CBC_PAD, &mut iv);
    let (init, update, last) = match encrypt {
        true => ("C_EncryptInit", "C_EncryptUpdate", "C_EncryptFinal"),
        false => ("C_DecryptInit", "C_DecryptUpdate", "C_DecryptFinal"),
    };
    r.ok(
        init,
        match encrypt {
            true => call!(lib, C_EncryptInit, h, &mut m, key),
            false => call!(lib, C_DecryptInit, h, &mut m, key),
        },
    );
    let mut out = Vec::new();
    for (i, part) in data.chunks(chunk).enumerate() {
        let (d, dl) = input(part);
        let run = |cap| {
            output(Some(cap), |o, l| match encrypt {
                true => call!(lib, C_EncryptUpdate, h, d, dl, o, l),
                false => call!(lib, C_DecryptUpdate, h, d, dl, o, l),
            })
        };
        if encrypt && i == 0 {
            r.count();
            r.out("C_EncryptUpdate(4)", run(4));
            r.trips(1, "a short buffer for C_EncryptUpdate");
        }
        out.extend(r.out(update, run(48)));
    }
    out.extend(r.out(
        last,
        output(Some(16), |o, l| match encrypt {
            true => call!(lib, C_EncryptFinal, h, o, l),
            false => call!(lib, C_DecryptFinal, h, o, l),
        }),
    ));
    out
}

/// The 3.0 message functions (SoftHSM 2.6 has none): `CKR_FUNCTION_NOT_SUPPORTED` from the
/// module against a 0.24 server (it would drop the connection on their call ids), from the
/// server (`p11fwd server` does not offer them); the connection works on afterwards.
fn message_functions(lib: &Lib) {
    let h = lib.session();
    let key = lib.object(h, CKO_SECRET_KEY, "aes256");
    let (d, dl) = input(b"message");
    let p: *mut c_void = ptr::null_mut();
    let mut m = mech(CKM_AES_CBC);
    let mut buf = [0u8; 64];
    let mut len: CK_ULONG = 64;
    let (o, l) = (buf.as_mut_ptr(), &raw mut len);
    // (name, CK_RV) of a call of the module's list.
    macro_rules! named {
        ($f:ident $(, $a:expr)*) => {
            (stringify!($f), call!(lib, $f $(, $a)*))
        };
    }
    let results = [
        named!(C_MessageEncryptInit, h, &mut m, key),
        named!(C_EncryptMessage, h, p, 0, d, dl, d, dl, o, l),
        named!(C_EncryptMessageBegin, h, p, 0, d, dl),
        named!(C_EncryptMessageNext, h, p, 0, d, dl, o, l, 0),
        named!(C_MessageEncryptFinal, h),
        named!(C_MessageDecryptInit, h, &mut m, key),
        named!(C_DecryptMessage, h, p, 0, d, dl, d, dl, o, l),
        named!(C_DecryptMessageBegin, h, p, 0, d, dl),
        named!(C_DecryptMessageNext, h, p, 0, d, dl, o, l, 0),
        named!(C_MessageDecryptFinal, h),
        named!(C_MessageSignInit, h, &mut m, key),
        named!(C_SignMessage, h, p, 0, d, dl, o, l),
        named!(C_SignMessageBegin, h, p, 0),
        named!(C_SignMessageNext, h, p, 0, d, dl, o, l),
        named!(C_MessageSignFinal, h),
        named!(C_MessageVerifyInit, h, &mut m, key),
        named!(C_VerifyMessage, h, p, 0, d, dl, d, dl),
        named!(C_VerifyMessageBegin, h, p, 0),
        named!(C_VerifyMessageNext, h, p, 0, d, dl, d, dl),
        named!(C_MessageVerifyFinal, h),
    ];
    for (name, rv) in results {
        assert_eq!(rv, CKR_FUNCTION_NOT_SUPPORTED, "{name}: {rv:#x}");
    }
    let mut info = CK_SESSION_INFO::default();
    assert_eq!(call!(lib, C_GetSessionInfo, h, &mut info), CKR_OK);
    let ec = lib.object(h, CKO_PRIVATE_KEY, "ec-p256");
    assert_eq!(
        lib.sign(h, &mut mech(CKM_ECDSA), ec, &[1; 32])
            .unwrap()
            .len(),
        64
    );
    assert_eq!(call!(lib, C_CloseSession, h), CKR_OK);
}

fn every_function(kind: Kind) {
    let _g = lock();
    // SoftHSM itself: the reference transcript.
    let reference = token();
    let softhsm = Lib::softhsm(&reference);
    let expected = sequence(&softhsm, &reference, None);
    assert_eq!(softhsm.finalize(), CKR_OK);

    let token = token();
    let remote = Rig::new(kind, &token);
    let (lib, relay) = (&remote.lib, &remote.relay);
    // Before the sequence: it wipes the token.
    message_functions(lib);
    let got = sequence(lib, &token, Some(relay));
    let mut event = 0;
    let rv = call!(
        lib,
        C_WaitForSlotEvent,
        CKF_DONT_BLOCK,
        &mut event,
        ptr::null_mut()
    );
    // SoftHSM: no event; the stock server in token mode does not offer slot events.
    let want = if kind == Kind::Stock {
        CKR_FUNCTION_NOT_SUPPORTED
    } else {
        CKR_NO_EVENT
    };
    assert_eq!(rv, want, "C_WaitForSlotEvent(CKF_DONT_BLOCK)");
    assert_eq!(lib.finalize(), CKR_OK);
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(
            g, e,
            "{kind:?}: step {i} differs from SoftHSM's; through the module {got:x?}\nSoftHSM {expected:x?}"
        );
    }
    assert_eq!(got.len(), expected.len());
    eprintln!(
        "{kind:?}: {} calls answered as SoftHSM answers them",
        got.len()
    );
    drop(softhsm);
}

/// Our pointer values never reach a server: parameters of standard mechanisms that are
/// structures with pointers and that no protocol generation serializes are refused before
/// anything is sent, as are message operations whose per-message parameters hold pointers
/// (where the server has message functions at all). A vendor mechanism's parameter, of a layout
/// we cannot know, still goes as bytes (the token's answer comes back).
fn pointer_parameters(kind: Kind) {
    let _g = lock();
    let token = token();
    let remote = Rig::new(kind, &token);
    let lib = &remote.lib;
    let h = lib.session();
    let aes = lib.object(h, CKO_SECRET_KEY, "aes256");
    let ec = lib.object(h, CKO_PRIVATE_KEY, "ec-p256");
    let mechs = lib.mechanisms(lib.slots().unwrap()[0]).unwrap();
    // Sends the deferred C_FindObjectsFinal, so that the counts below are the calls' own.
    let mut info = CK_SESSION_INFO::default();
    assert_eq!(call!(lib, C_GetSessionInfo, h, &mut info), CKR_OK);
    remote.rt();

    let mut nonce = [1u8; 12];
    let mut counter = [0u8; 4];
    let mut chacha = CK_CHACHA20_PARAMS {
        pBlockCounter: counter.as_mut_ptr(),
        blockCounterBits: 32,
        pNonce: nonce.as_mut_ptr(),
        ulNonceBits: 96,
    };
    let mut m = mech_with(CKM_CHACHA20, &mut chacha);
    assert_eq!(
        call!(lib, C_EncryptInit, h, &mut m, aes),
        CKR_MECHANISM_PARAM_INVALID
    );
    let mut data = CK_KEY_DERIVATION_STRING_DATA {
        pData: nonce.as_mut_ptr(),
        ulLen: 12,
    };
    let mut m = mech_with(CKM_SEED_ECB_ENCRYPT_DATA, &mut data);
    let mut derived = 0;
    let rv = call!(
        lib,
        C_DeriveKey,
        h,
        &mut m,
        aes,
        ptr::null_mut(),
        0,
        &mut derived
    );
    assert_eq!(rv, CKR_MECHANISM_PARAM_INVALID);
    let mut wrap_oaep = CK_KEY_WRAP_SET_OAEP_PARAMS {
        bBC: 0,
        pX: nonce.as_mut_ptr(),
        ulXLen: 12,
    };
    let mut m = mech_with(CKM_KEY_WRAP_SET_OAEP, &mut wrap_oaep);
    let rv = call!(
        lib,
        C_WrapKey,
        h,
        &mut m,
        aes,
        aes,
        ptr::null_mut(),
        &mut derived
    );
    assert_eq!(rv, CKR_MECHANISM_PARAM_INVALID);
    assert_eq!(remote.rt(), 0, "{kind:?}: refused before sending");
    for m in [
        CKM_CHACHA20,
        CKM_SEED_ECB_ENCRYPT_DATA,
        CKM_KEY_WRAP_SET_OAEP,
    ] {
        assert!(!mechs.contains(&m), "{m:#x} listed");
    }

    // Message operations of AES-GCM: per-message CK_GCM_MESSAGE_PARAMS hold pointers.
    let mut gcm = mech(CKM_AES_GCM);
    let rv = call!(lib, C_MessageEncryptInit, h, &mut gcm, aes);
    let mut cbc = mech(CKM_AES_CBC);
    let other = call!(lib, C_MessageEncryptInit, h, &mut cbc, aes);
    if kind == Kind::Stock {
        // No message functions in 0.24: refused locally, whatever the mechanism.
        assert_eq!(
            (rv, other),
            (CKR_FUNCTION_NOT_SUPPORTED, CKR_FUNCTION_NOT_SUPPORTED)
        );
        assert_eq!(remote.rt(), 0);
    } else {
        assert_eq!(rv, CKR_MECHANISM_PARAM_INVALID);
        // Another mechanism goes to the server (which has no message functions).
        assert_eq!(other, CKR_FUNCTION_NOT_SUPPORTED);
        assert_eq!(remote.rt(), 1, "only the AES-CBC one was sent");
    }

    // A vendor mechanism: its parameter goes as bytes (its layout is unknown here). The stock
    // server hands it to SoftHSM, which does not know it; p11fwd server refuses raw parameters
    // of vendor mechanisms unless told otherwise (`--pass-raw-params`).
    let mut vendor = [7u8; 8];
    let mut m = mech_with(CKM_VENDOR_DEFINED | 0x1234, &mut vendor);
    let mut no = CK_FALSE;
    let mut t = [attr(CKA_TOKEN, &mut no)];
    let t = t.as_mut_ptr();
    let rv = call!(lib, C_DeriveKey, h, &mut m, ec, t, 1, &mut derived);
    let expected = if kind == Kind::Stock {
        CKR_MECHANISM_INVALID
    } else {
        CKR_MECHANISM_PARAM_INVALID
    };
    assert_eq!(rv, expected, "{kind:?}");
    assert_eq!(remote.rt(), 1);
    assert_eq!(lib.finalize(), CKR_OK);
}

per_server! {
    every_function => every_function_as_softhsm_stock, every_function_as_softhsm_p11fwd;
    pointer_parameters => pointer_parameters_never_cross_stock, pointer_parameters_never_cross_p11fwd;
}
