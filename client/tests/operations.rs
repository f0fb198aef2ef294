//! The module against real servers (stock `p11-kit server` 0.24.1 = protocol version 0, and
//! `p11fwd server` = version 2) with a SoftHSM token: PKCS#11 buffer conventions, bad input,
//! attributes (sizes, sensitive, unknown, `CKA_ALLOWED_MECHANISMS`, nested templates),
//! mechanisms (no hiding: EdDSA, hashed PSS, OAEP, AES-CBC, GCM and ECDH where they can cross;
//! the documented refusals against 0.24) and 8 threads signing at once.
#![allow(unsafe_code, clippy::unwrap_used, clippy::macro_metavars_in_unsafe)] // C API tests (common/mod.rs)

mod common;

use std::ptr;
use std::time::Duration;

use common::{Kind, Lib, Server, arg, hex, input, lock, mech, mech_with, openssl, output, set_env};
use cryptoki_sys::*;
use p11fwd_tests::relay::Relay;
use p11fwd_tests::{Key, TestToken};

fn token() -> TestToken {
    TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::RsaPss)
        .with(Key::EcP256)
        .with(Key::Ed25519)
        .with(Key::Aes256)
        .build()
}

/// Start `kind` for `token`, point the module at it, `C_Initialize`.
fn setup(kind: Kind, token: &TestToken) -> (Server, Lib) {
    let server = Server::start(kind, token);
    set_env("P11FWD_SERVER_ADDRESS", Some(&server.address()));
    set_env("P11FWD_TIMEOUT", Some("20"));
    let lib = Lib::ours();
    assert_eq!(lib.init(), CKR_OK);
    (server, lib)
}

fn buffers_and_bad_input(kind: Kind) {
    let _g = lock();
    let token = token();
    let (_server, lib) = setup(kind, &token);
    let slot = lib.slots().unwrap()[0];

    // Slot and mechanism lists: count queries and short buffers.
    let mut n: CK_ULONG = 0;
    assert_eq!(
        call!(
            lib,
            C_GetSlotList,
            CK_TRUE,
            ptr::null_mut(),
            ptr::null_mut()
        ),
        CKR_ARGUMENTS_BAD
    );
    let mut none: [CK_SLOT_ID; 0] = [];
    assert_eq!(
        call!(lib, C_GetSlotList, CK_TRUE, none.as_mut_ptr(), &mut n),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(n, 1);
    let mechs = lib.mechanisms(slot).unwrap();
    let mut few = [0; 3];
    n = 3;
    assert_eq!(
        call!(lib, C_GetMechanismList, slot, few.as_mut_ptr(), &mut n),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(n as usize, mechs.len());
    let mut mi = CK_MECHANISM_INFO::default();
    assert_eq!(
        call!(lib, C_GetMechanismInfo, slot, CKM_RSA_PKCS, ptr::null_mut()),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(
        call!(lib, C_GetMechanismInfo, slot, CKM_RSA_PKCS, &mut mi),
        CKR_OK
    );
    assert!(mi.ulMaxKeySize >= 2048);

    // Sessions.
    let mut h = 0;
    assert_eq!(
        call!(lib, C_OpenSession, slot, 0, ptr::null_mut(), None, &mut h),
        CKR_SESSION_PARALLEL_NOT_SUPPORTED
    );
    assert_eq!(
        call!(
            lib,
            C_OpenSession,
            slot,
            CKF_SERIAL_SESSION,
            ptr::null_mut(),
            None,
            ptr::null_mut()
        ),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(
        call!(
            lib,
            C_OpenSession,
            0x4242,
            CKF_SERIAL_SESSION,
            ptr::null_mut(),
            None,
            &mut h
        ),
        CKR_SLOT_ID_INVALID
    );
    let h = lib.open(slot).unwrap();
    assert_eq!(
        call!(lib, C_Login, h, CKU_USER, ptr::null_mut(), 6),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(lib.login(h, "000000"), Err(CKR_PIN_INCORRECT));
    lib.login(h, token.user_pin()).unwrap();
    assert_eq!(
        lib.login(h, token.user_pin()),
        Err(CKR_USER_ALREADY_LOGGED_IN)
    );
    let mut si = CK_SESSION_INFO::default();
    assert_eq!(call!(lib, C_GetSessionInfo, h, &mut si), CKR_OK);
    assert_eq!(si.slotID, slot);
    assert_eq!(si.state, CKS_RW_USER_FUNCTIONS);
    assert_eq!(
        call!(lib, C_GetSessionInfo, 0xdead, &mut si),
        CKR_SESSION_HANDLE_INVALID
    );

    // C_Sign: size query, short buffer (the operation stays active), exact buffer.
    let key = lib.object(h, CKO_PRIVATE_KEY, "rsa2048");
    let data = b"p11fwd buffer conventions";
    let mut m = mech(CKM_SHA256_RSA_PKCS);
    assert_eq!(call!(lib, C_SignInit, h, &mut m, key), CKR_OK);
    let d = data.as_ptr().cast_mut();
    let dl = data.len() as CK_ULONG;
    assert_eq!(
        call!(lib, C_Sign, h, d, dl, ptr::null_mut(), ptr::null_mut()),
        CKR_ARGUMENTS_BAD
    );
    let mut len: CK_ULONG = 0;
    assert_eq!(
        call!(lib, C_Sign, h, d, dl, ptr::null_mut(), &mut len),
        CKR_OK
    );
    assert_eq!(len, 256);
    let mut sig = vec![0u8; 256];
    len = 16;
    assert_eq!(
        call!(lib, C_Sign, h, d, dl, sig.as_mut_ptr(), &mut len),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(len, 256);
    // A non-NULL buffer of length 0 is a short buffer, not a size query.
    len = 0;
    assert_eq!(
        call!(lib, C_Sign, h, d, dl, sig.as_mut_ptr(), &mut len),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(len, 256);
    len = 256;
    assert_eq!(
        call!(lib, C_Sign, h, d, dl, sig.as_mut_ptr(), &mut len),
        CKR_OK
    );
    assert_eq!(len, 256);
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
        &sig,
    );
    // The operation ended: C_Sign without C_SignInit.
    assert_eq!(
        call!(lib, C_Sign, h, d, dl, sig.as_mut_ptr(), &mut len),
        CKR_OPERATION_NOT_INITIALIZED
    );

    // Bad handles and NULL mechanisms.
    assert_eq!(
        call!(lib, C_SignInit, 0xdead, &mut m, key),
        CKR_SESSION_HANDLE_INVALID
    );
    // (p11-kit 0.24's proxy reports an unknown key as CKR_OBJECT_HANDLE_INVALID.)
    let rv = call!(lib, C_SignInit, h, &mut m, 0xdead);
    assert!(
        rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID,
        "{rv:#x}"
    );
    let cancel = call!(lib, C_SignInit, h, ptr::null_mut(), key);
    if kind == Kind::Stock {
        // Cancelling needs p11-kit 0.25 on the server (a 0.24 server would drop the connection).
        assert_eq!(cancel, CKR_FUNCTION_NOT_SUPPORTED);
    } else {
        assert_ne!(cancel, CKR_GENERAL_ERROR);
    }
    assert_eq!(
        call!(
            lib,
            C_GenerateKeyPair,
            h,
            ptr::null_mut(),
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            0,
            &mut n,
            &mut n
        ),
        CKR_ARGUMENTS_BAD
    );

    // C_GenerateRandom: zero bytes without a round trip, NULL with a length is bad.
    assert_eq!(call!(lib, C_GenerateRandom, h, ptr::null_mut(), 0), CKR_OK);
    assert_eq!(
        call!(lib, C_GenerateRandom, 0xdead, ptr::null_mut(), 0),
        CKR_SESSION_HANDLE_INVALID
    );
    assert_eq!(
        call!(lib, C_GenerateRandom, h, ptr::null_mut(), 16),
        CKR_ARGUMENTS_BAD
    );
    let mut rnd = [0u8; 48];
    assert_eq!(
        call!(lib, C_GenerateRandom, h, rnd.as_mut_ptr(), 48),
        CKR_OK
    );
    assert_ne!(rnd, [0u8; 48]);

    // A non-NULL zero-length buffer that is big enough: C_EncryptFinal of AES-CBC after whole
    // blocks returns nothing and must end the operation (p11-kit 0.24's client got this wrong).
    let aes = lib.object(h, CKO_SECRET_KEY, "aes256");
    let mut iv = [7u8; 16];
    let mut m = CK_MECHANISM {
        mechanism: CKM_AES_CBC,
        pParameter: iv.as_mut_ptr().cast(),
        ulParameterLen: 16,
    };
    assert_eq!(call!(lib, C_EncryptInit, h, &mut m, aes), CKR_OK);
    let mut block = [1u8; 32];
    let mut out = [0u8; 32];
    len = 32;
    assert_eq!(
        call!(
            lib,
            C_EncryptUpdate,
            h,
            block.as_mut_ptr(),
            32,
            out.as_mut_ptr(),
            &mut len
        ),
        CKR_OK
    );
    assert_eq!(len, 32);
    len = 0;
    assert_eq!(
        call!(lib, C_EncryptFinal, h, out.as_mut_ptr(), &mut len),
        CKR_OK
    );
    assert_eq!(len, 0);
    assert_eq!(
        call!(lib, C_EncryptInit, h, &mut m, aes),
        CKR_OK,
        "the operation had ended"
    );
    len = 32;
    assert_eq!(
        call!(
            lib,
            C_Encrypt,
            h,
            block.as_mut_ptr(),
            32,
            out.as_mut_ptr(),
            &mut len
        ),
        CKR_OK
    );
    let expected = openssl(
        &[
            "enc",
            "-aes-256-cbc",
            "-nopad",
            "-K",
            &hex(&token.secret("aes256")),
            "-iv",
            &hex(&iv),
            "-in",
            "{data}",
            "-out",
            "{out}",
        ],
        &block,
        &[],
    );
    assert_eq!(&out[..], &expected[..]);

    // Objects: max 0 finds nothing; a bad object handle.
    let mut objs = [0; 4];
    assert_eq!(call!(lib, C_FindObjectsInit, h, ptr::null_mut(), 0), CKR_OK);
    assert_eq!(
        call!(lib, C_FindObjects, h, objs.as_mut_ptr(), 0, &mut n),
        CKR_OK
    );
    assert_eq!(n, 0);
    assert_eq!(
        call!(lib, C_FindObjects, h, objs.as_mut_ptr(), 4, ptr::null_mut()),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(
        call!(lib, C_FindObjects, h, objs.as_mut_ptr(), 4, &mut n),
        CKR_OK
    );
    assert_eq!(n, 4);
    assert_eq!(call!(lib, C_FindObjectsFinal, h), CKR_OK);
    let mut a = CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: ptr::null_mut(),
        ulValueLen: 0,
    };
    assert_eq!(
        call!(lib, C_GetAttributeValue, h, 0xdead, &mut a, 1),
        CKR_OBJECT_HANDLE_INVALID
    );
    assert_eq!(
        call!(lib, C_GetAttributeValue, h, key, ptr::null_mut(), 1),
        CKR_ARGUMENTS_BAD
    );

    // 3.0 calls: not for a 0.24 server.
    let name = b"user";
    let rv = call!(
        lib,
        C_LoginUser,
        h,
        CKU_USER,
        ptr::null_mut(),
        0,
        name.as_ptr().cast_mut(),
        4
    );
    if kind == Kind::Stock {
        assert_eq!(rv, CKR_FUNCTION_NOT_SUPPORTED);
        assert_eq!(
            call!(lib, C_SessionCancel, h, 0),
            CKR_FUNCTION_NOT_SUPPORTED
        );
    } else {
        assert_ne!(rv, CKR_OK);
    }
    assert_eq!(call!(lib, C_CloseSession, h), CKR_OK);
    assert_eq!(call!(lib, C_CloseSession, h), CKR_SESSION_HANDLE_INVALID);
    assert_eq!(lib.finalize(), CKR_OK);
}

/// A non-NULL buffer of length 0 whose true result is not empty: `CKR_BUFFER_TOO_SMALL` with
/// the size the token gives, and the operation stays active so that the data comes with the
/// next call. Against a 0.24 server (which cannot be told "length 0") the module used to send a
/// 1-byte buffer: a 1-byte result then ended the operation while the caller was told
/// `CKR_BUFFER_TOO_SMALL`, and the data was lost.
fn zero_length_buffers(kind: Kind) {
    let _g = lock();
    let token = token();
    let (_server, lib) = setup(kind, &token);
    let h = lib.session();
    let aes = lib.object(h, CKO_SECRET_KEY, "aes256");
    let key_hex = hex(&token.secret("aes256"));
    let enc = |cipher: &str, iv: &[u8], data: &[u8]| {
        let (k, iv) = (key_hex.as_str(), hex(iv));
        let args = [
            "enc", cipher, "-K", k, "-iv", &iv, "-in", "{data}", "-out", "{out}",
        ];
        openssl(&args, data, &[])
    };

    // AES-CTR, one byte in, one byte out (C_Encrypt, then C_Decrypt of the result).
    let mut ctr = CK_AES_CTR_PARAMS {
        ulCounterBits: 128,
        cb: [5u8; 16],
    };
    let byte = [0x5a_u8];
    let encrypted = enc("-aes-256-ctr", &ctr.cb, &byte);
    let mut m = mech_with(CKM_AES_CTR, &mut ctr);
    for (encrypt, data, want) in [
        (true, &byte[..], &encrypted[..]),
        (false, &encrypted, &byte),
    ] {
        let (d, dl) = input(data);
        let run = |cap| {
            output(Some(cap), |o, l| match encrypt {
                true => call!(lib, C_Encrypt, h, d, dl, o, l),
                false => call!(lib, C_Decrypt, h, d, dl, o, l),
            })
        };
        let init = match encrypt {
            true => call!(lib, C_EncryptInit, h, &mut m, aes),
            false => call!(lib, C_DecryptInit, h, &mut m, aes),
        };
        assert_eq!(init, CKR_OK);
        let too_small = (CKR_BUFFER_TOO_SMALL, 1, vec![]);
        assert_eq!(run(0), too_small, "{kind:?}: a 0-length buffer for 1 byte");
        let got = (CKR_OK, 1, want.to_vec());
        assert_eq!(run(1), got, "{kind:?}: the operation stayed active");
    }

    // AES-CBC-PAD: 17 bytes encrypt to 2 blocks; C_DecryptUpdate returns the first block and
    // keeps the last one, whose 1 byte of plaintext comes from C_DecryptFinal. SoftHSM sizes
    // that final output as the block minus one padding byte (15), directly as through us.
    let plain: Vec<u8> = (1..=17).collect();
    let mut iv = [4u8; 16];
    let ct = enc("-aes-256-cbc", &iv, &plain);
    assert_eq!(ct.len(), 32);
    let mut m = mech_with(CKM_AES_CBC_PAD, &mut iv);
    assert_eq!(call!(lib, C_DecryptInit, h, &mut m, aes), CKR_OK);
    let (d, dl) = input(&ct);
    let update = output(Some(32), |o, l| call!(lib, C_DecryptUpdate, h, d, dl, o, l));
    assert_eq!(update, (CKR_OK, 16, plain[..16].to_vec()));
    let last = |cap| output(Some(cap), |o, l| call!(lib, C_DecryptFinal, h, o, l));
    let too_small = (CKR_BUFFER_TOO_SMALL, 15, vec![]);
    assert_eq!(last(0), too_small, "{kind:?}: a 0-length buffer");
    assert_eq!(last(1), too_small, "{kind:?}: SoftHSM wants room for 15");
    assert_eq!(last(15), (CKR_OK, 1, plain[16..].to_vec()));
    assert_eq!(
        last(15).0,
        CKR_OPERATION_NOT_INITIALIZED,
        "{kind:?}: the operation ended with its data"
    );
    assert_eq!(lib.finalize(), CKR_OK);
}

fn attributes(kind: Kind) {
    let _g = lock();
    let token = token();
    let (_server, lib) = setup(kind, &token);
    let h = lib.session();
    let public = lib.object(h, CKO_PUBLIC_KEY, "rsa2048");
    let private = lib.object(h, CKO_PRIVATE_KEY, "rsa2048");

    // Size queries, values, a short buffer, an unknown type, in one call.
    let mut class: CK_ULONG = 0;
    let mut token_flag: CK_BBOOL = 0;
    let mut small = [0u8; 10];
    let mut t = [
        CK_ATTRIBUTE {
            type_: CKA_MODULUS,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        },
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: (&raw mut class).cast(),
            ulValueLen: 8,
        },
        CK_ATTRIBUTE {
            type_: CKA_TOKEN,
            pValue: (&raw mut token_flag).cast(),
            ulValueLen: 1,
        },
    ];
    assert_eq!(
        call!(lib, C_GetAttributeValue, h, public, t.as_mut_ptr(), 3),
        CKR_OK
    );
    assert_eq!(t[0].ulValueLen, 256);
    assert_eq!((class, token_flag), (CKO_PUBLIC_KEY, CK_TRUE));
    let mut t = [
        CK_ATTRIBUTE {
            type_: CKA_MODULUS,
            pValue: small.as_mut_ptr().cast(),
            ulValueLen: 10,
        },
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: (&raw mut class).cast(),
            ulValueLen: 8,
        },
    ];
    assert_eq!(
        call!(lib, C_GetAttributeValue, h, public, t.as_mut_ptr(), 2),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_eq!(t[1].ulValueLen, 8);
    let mut t = [
        CK_ATTRIBUTE {
            type_: 0x7777,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        },
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: (&raw mut class).cast(),
            ulValueLen: 8,
        },
    ];
    assert_eq!(
        call!(lib, C_GetAttributeValue, h, public, t.as_mut_ptr(), 2),
        CKR_ATTRIBUTE_TYPE_INVALID
    );
    assert_eq!(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_eq!(t[1].ulValueLen, 8);
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_PRIVATE_EXPONENT,
        pValue: ptr::null_mut(),
        ulValueLen: 0,
    }];
    assert_eq!(
        call!(lib, C_GetAttributeValue, h, private, t.as_mut_ptr(), 1),
        CKR_ATTRIBUTE_SENSITIVE
    );
    assert_eq!(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    let modulus = lib.attr_bytes(h, public, CKA_MODULUS).unwrap();
    assert_eq!(modulus.len(), 256);

    // CKA_ALLOWED_MECHANISMS: never a size query on the wire, yet the size is right.
    let pss = lib.object(h, CKO_PRIVATE_KEY, "rsa-pss");
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_ALLOWED_MECHANISMS,
        pValue: ptr::null_mut(),
        ulValueLen: 0,
    }];
    assert_eq!(
        call!(lib, C_GetAttributeValue, h, pss, t.as_mut_ptr(), 1),
        CKR_OK
    );
    assert_eq!(t[0].ulValueLen, 32);
    let mut allowed = [0 as CK_MECHANISM_TYPE; 4];
    t[0].pValue = allowed.as_mut_ptr().cast();
    assert_eq!(
        call!(lib, C_GetAttributeValue, h, pss, t.as_mut_ptr(), 1),
        CKR_OK
    );
    allowed.sort_unstable();
    assert_eq!(
        allowed,
        [
            CKM_RSA_PKCS_PSS,
            CKM_SHA256_RSA_PKCS_PSS,
            CKM_SHA384_RSA_PKCS_PSS,
            CKM_SHA512_RSA_PKCS_PSS
        ]
    );
    t[0].ulValueLen = 8;
    assert_eq!(
        call!(lib, C_GetAttributeValue, h, pss, t.as_mut_ptr(), 1),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);

    // CKA_WRAP_TEMPLATE: nested, to a version 2 server; answered locally for version 0.
    let aes = lib.object(h, CKO_SECRET_KEY, "aes256");
    let mut t = [
        CK_ATTRIBUTE {
            type_: CKA_WRAP_TEMPLATE,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        },
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: (&raw mut class).cast(),
            ulValueLen: 8,
        },
    ];
    let rv = call!(lib, C_GetAttributeValue, h, aes, t.as_mut_ptr(), 2);
    assert_eq!(class, CKO_SECRET_KEY);
    if kind == Kind::Stock {
        assert_eq!(rv, CKR_ATTRIBUTE_TYPE_INVALID);
        assert_eq!(t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    } else {
        assert_eq!(rv, CKR_OK);
        assert_eq!(t[0].ulValueLen, 48);
        let mut inner = [CK_ATTRIBUTE {
            type_: 0,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        }; 2];
        let mut t = [CK_ATTRIBUTE {
            type_: CKA_WRAP_TEMPLATE,
            pValue: inner.as_mut_ptr().cast(),
            ulValueLen: 48,
        }];
        assert_eq!(
            call!(lib, C_GetAttributeValue, h, aes, t.as_mut_ptr(), 1),
            CKR_OK
        );
        let mut types: Vec<_> = inner.iter().map(|a| (a.type_, a.ulValueLen)).collect();
        types.sort_unstable();
        assert_eq!(types, [(CKA_CLASS, 8), (CKA_KEY_TYPE, 8)]);
        let mut values = [0 as CK_ULONG; 2];
        for (a, v) in inner.iter_mut().zip(values.iter_mut()) {
            a.pValue = (v as *mut CK_ULONG).cast();
        }
        assert_eq!(
            call!(lib, C_GetAttributeValue, h, aes, t.as_mut_ptr(), 1),
            CKR_OK
        );
        let mut got: Vec<_> = inner
            .iter()
            .zip(values)
            .map(|(a, v)| (a.type_, v))
            .collect();
        got.sort_unstable();
        assert_eq!(got, [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES)]);
    }

    // Templates in: a data object, and a template attribute (refused for version 0).
    let mut data_class = CKO_DATA;
    let mut no = CK_FALSE;
    let label = b"client-test";
    let value = b"some data";
    let mut t = [
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: (&raw mut data_class).cast(),
            ulValueLen: 8,
        },
        CK_ATTRIBUTE {
            type_: CKA_TOKEN,
            pValue: (&raw mut no).cast(),
            ulValueLen: 1,
        },
        CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: label.as_ptr().cast_mut().cast(),
            ulValueLen: label.len() as CK_ULONG,
        },
        CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: value.as_ptr().cast_mut().cast(),
            ulValueLen: value.len() as CK_ULONG,
        },
    ];
    let mut obj = 0;
    assert_eq!(
        call!(lib, C_CreateObject, h, t.as_mut_ptr(), 4, &mut obj),
        CKR_OK
    );
    assert_eq!(lib.attr_bytes(h, obj, CKA_VALUE).unwrap(), value);
    let mut size = 0;
    assert_eq!(call!(lib, C_GetObjectSize, h, obj, &mut size), CKR_OK);
    assert_eq!(call!(lib, C_DestroyObject, h, obj), CKR_OK);
    // A CK_ULONG attribute must be 8 bytes.
    t[0].ulValueLen = 4;
    assert_eq!(
        call!(lib, C_CreateObject, h, t.as_mut_ptr(), 4, &mut obj),
        CKR_ATTRIBUTE_VALUE_INVALID
    );
    let mut key_type = CKK_AES;
    let mut wrap = [CK_ATTRIBUTE {
        type_: CKA_KEY_TYPE,
        pValue: (&raw mut key_type).cast(),
        ulValueLen: 8,
    }];
    let mut secret = CKO_SECRET_KEY;
    let mut len32: CK_ULONG = 32;
    let mut keygen = [
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: (&raw mut secret).cast(),
            ulValueLen: 8,
        },
        CK_ATTRIBUTE {
            type_: CKA_VALUE_LEN,
            pValue: (&raw mut len32).cast(),
            ulValueLen: 8,
        },
        CK_ATTRIBUTE {
            type_: CKA_TOKEN,
            pValue: (&raw mut no).cast(),
            ulValueLen: 1,
        },
        CK_ATTRIBUTE {
            type_: CKA_WRAP_TEMPLATE,
            pValue: wrap.as_mut_ptr().cast(),
            ulValueLen: 24,
        },
    ];
    let mut m = mech(CKM_AES_KEY_GEN);
    let rv = call!(
        lib,
        C_GenerateKey,
        h,
        &mut m,
        keygen.as_mut_ptr(),
        4,
        &mut obj
    );
    if kind == Kind::Stock {
        assert_eq!(rv, CKR_ATTRIBUTE_TYPE_INVALID);
    } else {
        assert_eq!(rv, CKR_OK);
        assert_eq!(lib.attr_bytes(h, obj, CKA_WRAP_TEMPLATE).unwrap().len(), 24);
    }
    assert_eq!(lib.finalize(), CKR_OK);
}

fn mechanisms(kind: Kind) {
    let _g = lock();
    let token = token();
    let (server, lib) = setup(kind, &token);
    let slot = lib.slots().unwrap()[0];
    let ours = lib.mechanisms(slot).unwrap();

    // No hiding: more than the stock client shows, including what it hides.
    let stock = {
        set_env("P11_KIT_SERVER_ADDRESS", Some(&server.address()));
        let stock = Lib::stock_client();
        assert_eq!(stock.init(), CKR_OK);
        let slot = stock.slots().unwrap()[0];
        let list = stock.mechanisms(slot).unwrap();
        assert_eq!(stock.finalize(), CKR_OK);
        list
    };
    for m in &stock {
        assert!(ours.contains(m), "stock client lists {m:#x}, we do not");
    }
    for m in [
        CKM_EDDSA,
        CKM_SHA256_RSA_PKCS_PSS,
        CKM_AES_CBC,
        CKM_AES_CBC_PAD,
        CKM_EC_EDWARDS_KEY_PAIR_GEN,
    ] {
        assert!(ours.contains(&m), "{m:#x} missing from {ours:x?}");
        assert!(!stock.contains(&m), "{m:#x} in the stock list");
    }
    eprintln!(
        "{kind:?}: {} mechanisms through p11fwd-client, {} through p11-kit-client.so",
        ours.len(),
        stock.len()
    );
    if kind == Kind::Stock {
        // Pointer parameters without a 0.24 serializer cannot cross: not listed, refused.
        assert!(!ours.contains(&CKM_ECDH1_DERIVE));
        assert!(!ours.contains(&CKM_AES_GCM));
        let mut mi = CK_MECHANISM_INFO::default();
        assert_eq!(
            call!(lib, C_GetMechanismInfo, slot, CKM_ECDH1_DERIVE, &mut mi),
            CKR_MECHANISM_INVALID
        );
    } else {
        assert!(ours.contains(&CKM_ECDH1_DERIVE));
        assert!(ours.contains(&CKM_AES_GCM));
    }

    let h = lib.session();
    let data = b"no mechanism hiding";

    // Ed25519 (CKM_EDDSA with a NULL parameter crosses every generation).
    let ed = lib.object(h, CKO_PRIVATE_KEY, "ed25519");
    let sig = lib.sign(h, &mut mech(CKM_EDDSA), ed, data).unwrap();
    assert_eq!(sig.len(), 64);
    openssl(
        &[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            &arg(&token.public_pem("ed25519")),
            "-rawin",
            "-in",
            "{data}",
            "-sigfile",
            "{sig}",
        ],
        data,
        &sig,
    );
    // CK_EDDSA_PARAMS has a pointer and no serializer anywhere.
    let mut ep = CK_EDDSA_PARAMS {
        phFlag: 0,
        ulContextDataLen: 0,
        pContextData: ptr::null_mut(),
    };
    let mut m = mech_with(CKM_EDDSA, &mut ep);
    assert_eq!(
        call!(lib, C_SignInit, h, &mut m, ed),
        CKR_MECHANISM_PARAM_INVALID
    );

    // Hashed PSS (native bytes to 0.24, the serializer to 0.25+).
    let pss = lib.object(h, CKO_PRIVATE_KEY, "rsa-pss");
    let mut p = CK_RSA_PKCS_PSS_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        sLen: 32,
    };
    let sig = lib
        .sign(
            h,
            &mut mech_with(CKM_SHA256_RSA_PKCS_PSS, &mut p),
            pss,
            data,
        )
        .unwrap();
    openssl(
        &[
            "dgst",
            "-sha256",
            "-verify",
            &arg(&token.public_pem("rsa-pss")),
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:32",
            "-signature",
            "{sig}",
            "{data}",
        ],
        data,
        &sig,
    );
    let mut short = mech_with(CKM_SHA256_RSA_PKCS_PSS, &mut p);
    short.ulParameterLen = 16;
    assert_eq!(
        call!(lib, C_SignInit, h, &mut short, pss),
        CKR_MECHANISM_PARAM_INVALID
    );
    // CKA_ALLOWED_MECHANISMS is enforced by the token.
    assert_eq!(
        lib.sign(h, &mut mech(CKM_SHA256_RSA_PKCS), pss, data),
        Err(CKR_MECHANISM_INVALID)
    );

    // OAEP decryption of what openssl encrypted (SoftHSM 2.6 supports OAEP with SHA-1 only).
    let rsa = lib.object(h, CKO_PRIVATE_KEY, "rsa2048");
    let secret = b"forwarded secret";
    let ct = openssl(
        &[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            &arg(&token.public_pem("rsa2048")),
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha1",
            "-pkeyopt",
            "rsa_mgf1_md:sha1",
            "-in",
            "{data}",
            "-out",
            "{out}",
        ],
        secret,
        &[],
    );
    let mut op = CK_RSA_PKCS_OAEP_PARAMS {
        hashAlg: CKM_SHA_1,
        mgf: CKG_MGF1_SHA1,
        source: CKZ_DATA_SPECIFIED,
        pSourceData: ptr::null_mut(),
        ulSourceDataLen: 0,
    };
    let mut m = mech_with(CKM_RSA_PKCS_OAEP, &mut op);
    assert_eq!(call!(lib, C_DecryptInit, h, &mut m, rsa), CKR_OK);
    let mut out = [0u8; 256];
    let mut len: CK_ULONG = 256;
    assert_eq!(
        call!(
            lib,
            C_Decrypt,
            h,
            ct.as_ptr().cast_mut(),
            ct.len() as CK_ULONG,
            out.as_mut_ptr(),
            &mut len
        ),
        CKR_OK
    );
    assert_eq!(&out[..len as usize], secret);

    // AES-CBC-PAD with an IV (native bytes to 0.24); a wrong IV length is refused.
    let aes = lib.object(h, CKO_SECRET_KEY, "aes256");
    let mut iv = [9u8; 16];
    let mut m = CK_MECHANISM {
        mechanism: CKM_AES_CBC_PAD,
        pParameter: iv.as_mut_ptr().cast(),
        ulParameterLen: 16,
    };
    assert_eq!(call!(lib, C_EncryptInit, h, &mut m, aes), CKR_OK);
    let mut ct = [0u8; 32];
    len = 32;
    assert_eq!(
        call!(
            lib,
            C_Encrypt,
            h,
            data.as_ptr().cast_mut(),
            data.len() as CK_ULONG,
            ct.as_mut_ptr(),
            &mut len
        ),
        CKR_OK
    );
    let plain = openssl(
        &[
            "enc",
            "-d",
            "-aes-256-cbc",
            "-K",
            &hex(&token.secret("aes256")),
            "-iv",
            &hex(&iv),
            "-in",
            "{data}",
            "-out",
            "{out}",
        ],
        &ct[..len as usize],
        &[],
    );
    assert_eq!(plain, data);
    m.ulParameterLen = 8;
    assert_eq!(
        call!(lib, C_EncryptInit, h, &mut m, aes),
        CKR_MECHANISM_PARAM_INVALID
    );

    // ECDH1 and GCM: pointers; version 2 carries them, version 0 refuses them.
    let ec = lib.object(h, CKO_PRIVATE_KEY, "ec-p256");
    let peer = peer_p256();
    let mut ecdh = CK_ECDH1_DERIVE_PARAMS {
        kdf: CKD_NULL,
        ulSharedDataLen: 0,
        pSharedData: ptr::null_mut(),
        ulPublicDataLen: peer.point.len() as CK_ULONG,
        pPublicData: peer.point.as_ptr().cast_mut(),
    };
    let mut m = mech_with(CKM_ECDH1_DERIVE, &mut ecdh);
    let mut class = CKO_SECRET_KEY;
    let mut kt = CKK_GENERIC_SECRET;
    let mut vlen: CK_ULONG = 32;
    let mut yes = CK_TRUE;
    let mut no = CK_FALSE;
    let mut t = [
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: (&raw mut class).cast(),
            ulValueLen: 8,
        },
        CK_ATTRIBUTE {
            type_: CKA_KEY_TYPE,
            pValue: (&raw mut kt).cast(),
            ulValueLen: 8,
        },
        CK_ATTRIBUTE {
            type_: CKA_VALUE_LEN,
            pValue: (&raw mut vlen).cast(),
            ulValueLen: 8,
        },
        CK_ATTRIBUTE {
            type_: CKA_EXTRACTABLE,
            pValue: (&raw mut yes).cast(),
            ulValueLen: 1,
        },
        CK_ATTRIBUTE {
            type_: CKA_SENSITIVE,
            pValue: (&raw mut no).cast(),
            ulValueLen: 1,
        },
        CK_ATTRIBUTE {
            type_: CKA_TOKEN,
            pValue: (&raw mut no).cast(),
            ulValueLen: 1,
        },
    ];
    let mut derived = 0;
    let rv = call!(
        lib,
        C_DeriveKey,
        h,
        &mut m,
        ec,
        t.as_mut_ptr(),
        6,
        &mut derived
    );
    let mut gcm_iv = [3u8; 12];
    let mut gp = CK_GCM_PARAMS {
        pIv: gcm_iv.as_mut_ptr(),
        ulIvLen: 12,
        ulIvBits: 96,
        pAAD: ptr::null_mut(),
        ulAADLen: 0,
        ulTagBits: 128,
    };
    let mut gm = mech_with(CKM_AES_GCM, &mut gp);
    let grv = call!(lib, C_EncryptInit, h, &mut gm, aes);
    if kind == Kind::Stock {
        assert_eq!(rv, CKR_MECHANISM_PARAM_INVALID);
        assert_eq!(grv, CKR_MECHANISM_PARAM_INVALID);
    } else {
        assert_eq!(rv, CKR_OK);
        let shared = lib.attr_bytes(h, derived, CKA_VALUE).unwrap();
        let expected = openssl(
            &[
                "pkeyutl",
                "-derive",
                "-inkey",
                &arg(&token.private_pem("ec-p256")),
                "-peerkey",
                &arg(&peer.pem),
                "-out",
                "{out}",
            ],
            &[],
            &[],
        );
        assert_eq!(shared, expected);
        assert_eq!(grv, CKR_OK);
        let mut ct = [0u8; 64];
        len = 64;
        assert_eq!(
            call!(
                lib,
                C_Encrypt,
                h,
                data.as_ptr().cast_mut(),
                data.len() as CK_ULONG,
                ct.as_mut_ptr(),
                &mut len
            ),
            CKR_OK
        );
        assert_eq!(len as usize, data.len() + 16);
        assert_eq!(call!(lib, C_DecryptInit, h, &mut gm, aes), CKR_OK);
        let mut pt = [0u8; 64];
        let mut plen: CK_ULONG = 64;
        assert_eq!(
            call!(
                lib,
                C_Decrypt,
                h,
                ct.as_mut_ptr(),
                len,
                pt.as_mut_ptr(),
                &mut plen
            ),
            CKR_OK
        );
        assert_eq!(&pt[..plen as usize], data);
    }
    assert_eq!(lib.finalize(), CKR_OK);
}

/// Mechanisms of SoftHSM 2.6.1 whose parameter no generation of the protocol can carry (a
/// structure with pointers and no serializer): never listed.
const NOT_CARRIED: [CK_MECHANISM_TYPE; 6] = [
    CKM_DES_ECB_ENCRYPT_DATA,
    CKM_DES_CBC_ENCRYPT_DATA,
    CKM_DES3_ECB_ENCRYPT_DATA,
    CKM_DES3_CBC_ENCRYPT_DATA,
    CKM_AES_ECB_ENCRYPT_DATA,
    CKM_AES_CBC_ENCRYPT_DATA,
];

/// ... and those whose pointer structure has a serializer from version 1 (p11-kit 0.25) on.
const NOT_CARRIED_BY_V0: [CK_MECHANISM_TYPE; 2] = [CKM_ECDH1_DERIVE, CKM_AES_GCM];

/// No mechanism hiding, proven: our list is SoftHSM's own (the module loaded directly) minus
/// exactly the documented set that cannot cross the negotiated protocol version.
fn mechanism_lists(kind: Kind) {
    let _g = lock();
    let token = token();
    let softhsm = Lib::softhsm(&token);
    let all = softhsm.mechanisms(softhsm.slots().unwrap()[0]).unwrap();
    assert_eq!(softhsm.finalize(), CKR_OK);
    let (server, lib) = setup(kind, &token);
    let ours = lib.mechanisms(lib.slots().unwrap()[0]).unwrap();
    assert_eq!(lib.finalize(), CKR_OK);
    let hidden: Vec<CK_MECHANISM_TYPE> = match kind {
        Kind::Stock => [&NOT_CARRIED[..], &NOT_CARRIED_BY_V0].concat(),
        Kind::Fwd => NOT_CARRIED.to_vec(),
    };
    for m in &hidden {
        assert!(all.contains(m), "SoftHSM lists no {m:#x}");
    }
    let expected: Vec<_> = all
        .iter()
        .copied()
        .filter(|m| !hidden.contains(m))
        .collect();
    let sorted = |v: &[CK_MECHANISM_TYPE]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    assert_eq!(sorted(&ours), sorted(&expected), "{kind:?}");
    set_env("P11_KIT_SERVER_ADDRESS", Some(&server.address()));
    let stock = Lib::stock_client();
    assert_eq!(stock.init(), CKR_OK);
    let stock_list = stock.mechanisms(stock.slots().unwrap()[0]).unwrap();
    assert_eq!(stock.finalize(), CKR_OK);
    let counts = (all.len(), ours.len(), stock_list.len());
    eprintln!(
        "{kind:?}: SoftHSM {}, p11fwd-client {}, p11-kit-client.so {}",
        counts.0, counts.1, counts.2
    );
    // SoftHSM 2.6.1 as Debian 12 builds it; the stock 0.24.1 client filters the same way
    // whichever server it talks to.
    let listed = if kind == Kind::Stock { 62 } else { 64 };
    assert_eq!(
        counts,
        (70, listed, 36),
        "{kind:?}: (SoftHSM, ours, stock client)"
    );
}

struct Peer {
    _dir: tempfile::TempDir,
    pem: std::path::PathBuf,
    point: Vec<u8>,
}

/// A software P-256 key: its public PEM and uncompressed point.
fn peer_p256() -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("peer.key");
    let pem = dir.path().join("peer.pub");
    let run = |args: &[&str]| {
        let mut c = std::process::Command::new(p11fwd_tests::require_tool("openssl"));
        c.args(args);
        p11fwd_tests::run_ok(&mut c).stdout_bytes
    };
    run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &arg(&key),
    ]);
    run(&["pkey", "-in", &arg(&key), "-pubout", "-out", &arg(&pem)]);
    let der = run(&["pkey", "-pubin", "-in", &arg(&pem), "-outform", "DER"]);
    let point = der[der.len() - 65..].to_vec();
    assert_eq!(point[0], 4);
    Peer {
        _dir: dir,
        pem,
        point,
    }
}

fn threads(kind: Kind) {
    let _g = lock();
    let token = token();
    let (_server, lib) = setup(kind, &token);
    let slot = lib.slots().unwrap()[0];
    let login = lib.session();
    let key = lib.object(login, CKO_PRIVATE_KEY, "ec-p256");
    let public = lib.object(login, CKO_PUBLIC_KEY, "ec-p256");
    std::thread::scope(|s| {
        for t in 0..8u8 {
            let lib = &lib;
            s.spawn(move || {
                let h = lib.open(slot).unwrap();
                for i in 0..25u8 {
                    let data = [t, i, 0x42];
                    let sig = lib.sign(h, &mut mech(CKM_ECDSA), key, &data).unwrap();
                    lib.verify(h, &mut mech(CKM_ECDSA), public, &data, &sig)
                        .unwrap();
                }
                assert_eq!(call!(lib, C_CloseSession, h), CKR_OK);
            });
        }
    });
    assert_eq!(lib.finalize(), CKR_OK);
}

/// This process's threads (`/proc/self/task`).
fn tasks() -> std::collections::BTreeSet<u32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect()
}

/// The calling thread's id.
fn tid() -> u32 {
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    link.file_name().unwrap().to_string_lossy().parse().unwrap()
}

/// The module starts no thread in the host: at every step (C_Initialize, sessions, 4 threads
/// signing, C_Finalize) the process's threads are the test's own. Threads that ended may show in
/// `/proc` a moment after `join`, so later checks allow the signers' ids; never any other.
fn no_threads_in_the_host(kind: Kind) {
    let _g = lock();
    let token = token();
    let server = Server::start(kind, &token);
    set_env("P11FWD_SERVER_ADDRESS", Some(&server.address()));
    let before = tasks();
    let ours = |what: &str, allowed: &std::collections::BTreeSet<u32>| {
        let now = tasks();
        assert!(
            now.is_subset(allowed),
            "{kind:?}: threads {:?} appeared {what}",
            now.difference(allowed).collect::<Vec<_>>()
        );
    };
    let lib = Lib::ours();
    assert_eq!(lib.init(), CKR_OK);
    ours("after C_Initialize", &before);
    let slot = lib.slots().unwrap()[0];
    let login = lib.session();
    let key = lib.object(login, CKO_PRIVATE_KEY, "ec-p256");
    ours("after a login", &before);
    let signers = std::sync::Mutex::new(before.clone());
    let all_signed = std::sync::Barrier::new(4);
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let (lib, signers, all_signed, ours, before) =
                (&lib, &signers, &all_signed, &ours, &before);
            s.spawn(move || {
                signers.lock().unwrap().insert(tid());
                let h = lib.open(slot).unwrap();
                for i in 0..5u8 {
                    lib.sign(h, &mut mech(CKM_ECDSA), key, &[t, i, 7]).unwrap();
                }
                all_signed.wait();
                // Every signer is alive here, and no other thread but the test's. (Threads of
                // `before` may have ended meanwhile: the server fixture's, say.)
                let signing = signers.lock().unwrap().clone();
                let now = tasks();
                let alive: std::collections::BTreeSet<u32> =
                    signing.difference(before).copied().collect();
                assert!(alive.is_subset(&now), "{kind:?}: {alive:?} {now:?}");
                ours("while 4 threads sign", &signing);
                all_signed.wait();
                assert_eq!(call!(lib, C_CloseSession, h), CKR_OK);
            });
        }
    });
    let allowed = signers.into_inner().unwrap();
    ours("after the signing threads", &allowed);
    assert_eq!(lib.finalize(), CKR_OK);
    ours("after C_Finalize", &allowed);
}

/// Two threads share one session: one signs (its `C_SignInit` deferred, sent with `C_Sign`),
/// the other reads an attribute; every signature succeeds (another thread's call used to take
/// the deferred Init and send it after the `C_Sign` it belongs to).
fn one_session_two_threads(kind: Kind) {
    let _g = lock();
    let token = token();
    let (_server, lib) = setup(kind, &token);
    let h = lib.session();
    let key = lib.object(h, CKO_PRIVATE_KEY, "ec-p256");
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let (lib, done) = (&lib, &done);
        s.spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let mut label = [0u8; 64];
                let mut attr = [CK_ATTRIBUTE {
                    type_: CKA_LABEL,
                    pValue: label.as_mut_ptr().cast(),
                    ulValueLen: 64,
                }];
                assert_eq!(
                    call!(lib, C_GetAttributeValue, h, key, attr.as_mut_ptr(), 1),
                    CKR_OK
                );
            }
        });
        let mut failures = Vec::new();
        for i in 0..2000u32 {
            let digest = [1u8; 32];
            let mut sig = [0u8; 256];
            let mut len: CK_ULONG = 256;
            let mut m = mech(CKM_ECDSA);
            let init = call!(lib, C_SignInit, h, &mut m, key);
            let sign = if init == CKR_OK {
                call!(
                    lib,
                    C_Sign,
                    h,
                    digest.as_ptr().cast_mut(),
                    32,
                    sig.as_mut_ptr(),
                    &mut len
                )
            } else {
                init
            };
            if sign != CKR_OK {
                failures.push((i, sign));
            }
        }
        assert!(
            failures.is_empty(),
            "{} failures: {:x?}",
            failures.len(),
            &failures[..failures.len().min(6)]
        );
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(lib.finalize(), CKR_OK);
}

/// Calls from many threads share one connection without waiting for each other. 8 threads make
/// 4 calls each, in 4 rounds (a barrier starts each round), through a relay that delays every
/// chunk by 50 ms each way and counts round trips: a write after a reply began. A module that
/// serialised the calls (a request in flight only when the one before had its reply) would
/// count exactly 32, however fast or slow the machine; calls in flight together share a round
/// trip (typically 4, one per round). The delay makes overlap likely, no time is measured.
fn multiplexed(kind: Kind) {
    let _g = lock();
    let token = TestToken::builder().with(Key::EcP256).build();
    let server = Server::start(kind, &token);
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path().join("relay.sock"),
        server.socket(),
        Duration::from_millis(50),
    )
    .unwrap();
    set_env("P11FWD_SERVER_ADDRESS", Some(&relay.address()));
    let lib = Lib::ours();
    assert_eq!(lib.init(), CKR_OK);
    let slot = lib.slots().unwrap()[0];
    let round = std::sync::Barrier::new(8);
    assert_eq!(relay.stats().conns, 1);
    relay.reset_stats();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..4 {
                    round.wait();
                    let mut info = CK_TOKEN_INFO::default();
                    assert_eq!(call!(lib, C_GetTokenInfo, slot, &mut info), CKR_OK);
                }
            });
        }
    });
    let stats = relay.stats();
    eprintln!(
        "{kind:?}: 8 threads x 4 calls took {} round trips",
        stats.round_trips
    );
    assert_eq!(stats.conns, 0, "{kind:?}: the one connection, no other");
    assert!(
        stats.round_trips < 32,
        "{kind:?}: 32 calls took {} round trips: serialised",
        stats.round_trips
    );
    assert_eq!(lib.finalize(), CKR_OK);
}

per_server! {
    mechanism_lists => mechanism_list_is_softhsms_stock, mechanism_list_is_softhsms_p11fwd;
    no_threads_in_the_host => no_threads_in_the_host_stock, no_threads_in_the_host_p11fwd;
    zero_length_buffers => zero_length_buffer_keeps_the_operation_stock, zero_length_buffer_keeps_the_operation_p11fwd;
    one_session_two_threads => one_session_two_threads_stock, one_session_two_threads_p11fwd;
    multiplexed => threads_share_the_connection_stock, threads_share_the_connection_p11fwd;
    buffers_and_bad_input => buffers_and_bad_input_stock, buffers_and_bad_input_p11fwd;
    attributes => attributes_stock, attributes_p11fwd;
    mechanisms => mechanisms_stock, mechanisms_p11fwd;
    threads => eight_threads_sign_at_once_stock, eight_threads_sign_at_once_p11fwd;
}
