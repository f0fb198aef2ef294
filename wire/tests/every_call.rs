//! Every call id 1..=89, request and reply, in every dialect: encode, decode, compare; and the
//! decoders never panic on any prefix or corruption of those bodies.
#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use p11fwd_wire::consts::*;
use p11fwd_wire::value::{AttrSlot, MechUpdate, ParamUpdate, UlongArray, Version};
use p11fwd_wire::{
    Arg, Attribute, ByteArray, CallId, Dialect, MechParam, Mechanism, Reply, Request, Value,
};

/// Sample arguments for a signature. `variant` picks between alternative encodings so that
/// every form of every code is exercised across the variants.
fn sample_args(call: CallId, sig: &str, reply: bool, variant: usize, d: Dialect) -> Vec<Arg> {
    let b = sig.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut spaces = 0;
    while i < b.len() {
        let two = b.get(i + 1).copied();
        let (arg, n) = match (b[i], two) {
            (b'a', Some(b'y')) => (
                Arg::ByteArray(match variant % 3 {
                    0 => ByteArray::Data(b"some bytes".to_vec()),
                    1 => ByteArray::Null,
                    _ => ByteArray::Length(256),
                }),
                2,
            ),
            (b'a', Some(b'u')) => (
                Arg::UlongArray(if variant.is_multiple_of(2) {
                    UlongArray::Data(vec![0x11, 0x12, u64::MAX])
                } else {
                    UlongArray::Length(70)
                }),
                2,
            ),
            (b'a', Some(b'A')) => (Arg::Attributes(sample_attributes(d, variant)), 2),
            (b'f', Some(b'y')) => (Arg::ByteBuffer([0, 256, 0xFFFF_FFFF][variant % 3]), 2),
            (b'f', Some(b'u')) => (Arg::UlongBuffer([0, 8][variant % 2]), 2),
            (b'f', Some(b'A')) => (Arg::AttrBuffer(sample_slots(d, variant)), 2),
            (b'y', _) => (Arg::Byte(variant as u8), 1),
            (b'u', _) => (Arg::Ulong(0x1122_3344_5566_7788 ^ variant as u64), 1),
            (b'v', _) => (
                Arg::Version(Version {
                    major: 3,
                    minor: variant as u8,
                }),
                1,
            ),
            (b's', _) => {
                let width = match (call, reply, spaces) {
                    (CallId::GetSlotInfo, true, 0) => 64,
                    (CallId::GetTokenInfo, true, n) if n >= 2 => 16,
                    _ => 32,
                };
                spaces += 1;
                (Arg::Space(vec![b'x'; width]), 1)
            }
            (b'z', _) => (Arg::Zstr(b"label".to_vec()), 1),
            (b'M', _) => (Arg::Mechanism(sample_mechanism(d, variant)), 1),
            (b'P', _) => (Arg::MechUpdate(MechUpdate::Present(ParamUpdate::Empty)), 1),
            (c, _) => panic!("unknown code {}", c as char),
        };
        out.push(arg);
        i += n;
    }
    out
}

fn sample_attributes(d: Dialect, variant: usize) -> Vec<Attribute> {
    let mut v = vec![
        Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY),
        Attribute::bool(CKA_SIGN, true),
        Attribute::bytes(CKA_LABEL, b"key".to_vec()),
        Attribute::unavailable(CKA_PRIVATE_EXPONENT),
        Attribute::new(CKA_START_DATE, Value::Date(Some(b"20260101".to_vec()))),
        Attribute::new(
            CKA_ALLOWED_MECHANISMS,
            Value::Mechanisms(vec![CKM_RSA_PKCS_PSS]),
        ),
        Attribute::size_only(CKA_MODULUS, 256, d),
        Attribute::bytes(0x8000_0001, vec![1, 0, 0, 0, 0, 0, 0, 0]),
    ];
    if d.supports_templates() && variant.is_multiple_of(2) {
        v.push(Attribute::new(
            CKA_WRAP_TEMPLATE,
            Value::Template(vec![Attribute::ulong(CKA_KEY_TYPE, CKK_AES)]),
        ));
    }
    v
}

fn sample_slots(d: Dialect, variant: usize) -> Vec<AttrSlot> {
    let mut v = vec![
        AttrSlot {
            ty: CKA_MODULUS,
            buflen: 0,
            nested: None,
        },
        AttrSlot {
            ty: CKA_CLASS,
            buflen: 8,
            nested: None,
        },
    ];
    if d.nested_attr_buffers() {
        v.push(AttrSlot {
            ty: CKA_UNWRAP_TEMPLATE,
            buflen: 48,
            nested: Some(vec![
                AttrSlot {
                    ty: CKA_CLASS,
                    buflen: 8,
                    nested: None,
                },
                AttrSlot {
                    ty: CKA_KEY_TYPE,
                    buflen: 8,
                    nested: None,
                },
            ]),
        });
        if variant % 2 == 1 {
            v.push(AttrSlot {
                ty: CKA_WRAP_TEMPLATE,
                buflen: 0,
                nested: None,
            });
        }
    }
    v
}

fn sample_mechanism(d: Dialect, variant: usize) -> Option<Mechanism> {
    match variant % 4 {
        0 => Some(Mechanism::new(CKM_SHA256_RSA_PKCS)),
        1 => Some(Mechanism::with(
            CKM_RSA_PKCS_PSS,
            MechParam::RsaPkcsPss {
                hash_alg: CKM_SHA256,
                mgf: CKG_MGF1_SHA256,
                salt_len: 32,
            },
        )),
        2 => Some(Mechanism::with(
            CKM_RSA_PKCS_OAEP,
            MechParam::RsaPkcsOaep {
                hash_alg: CKM_SHA256,
                mgf: CKG_MGF1_SHA256,
                source: CKZ_DATA_SPECIFIED,
                source_data: Some(b"label".to_vec()),
            },
        )),
        _ if d.has_null_mechanism() => None,
        _ => Some(Mechanism::new(CKM_EDDSA)),
    }
}

const DIALECTS: [Dialect; 3] = [Dialect::V0, Dialect::V1, Dialect::V2];

#[test]
fn every_request_round_trips_in_every_dialect() {
    let mut checked = 0;
    for d in DIALECTS {
        for call in CallId::ALL.into_iter().skip(1) {
            for variant in 0..6 {
                let req = Request::new(
                    call,
                    sample_args(call, call.request_signature(), false, variant, d),
                );
                let body = req
                    .encode(d)
                    .unwrap_or_else(|e| panic!("{call} in {d:?}: {e}"));
                let back =
                    Request::decode(&body, d).unwrap_or_else(|e| panic!("{call} in {d:?}: {e}"));
                assert_eq!(back, req, "{call} variant {variant} in {d:?}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3 * 89 * 6);
}

#[test]
fn every_reply_round_trips_in_every_dialect() {
    for d in DIALECTS {
        for call in CallId::ALL.into_iter().skip(1) {
            for variant in 0..6 {
                let mut args = sample_args(call, call.reply_signature(), true, variant, d);
                if call == CallId::DeriveKey2 && variant % 2 == 1 {
                    // The short form: not OK, no key handle.
                    args = vec![
                        Arg::Ulong(CKR_BUFFER_TOO_SMALL),
                        Arg::MechUpdate(MechUpdate::Null),
                    ];
                }
                let reply = Reply::Ok { call, args };
                let mech = Some(CKM_ECDH1_DERIVE);
                let body = reply
                    .encode(d, mech)
                    .unwrap_or_else(|e| panic!("{call} in {d:?}: {e}"));
                let back = Reply::decode(&body, call, d, mech)
                    .unwrap_or_else(|e| panic!("{call} in {d:?}: {e}"));
                assert_eq!(back, reply, "{call} variant {variant} in {d:?}");
            }
            let err = Reply::Error(p11fwd_wire::Rv(CKR_KEY_HANDLE_INVALID));
            let body = err.encode(d, None).unwrap();
            assert_eq!(Reply::decode(&body, call, d, None).unwrap(), err);
        }
    }
}

#[test]
fn truncated_and_corrupted_bodies_never_panic() {
    for d in DIALECTS {
        for call in CallId::ALL.into_iter().skip(1) {
            let req = Request::new(
                call,
                sample_args(call, call.request_signature(), false, 0, d),
            );
            let body = req.encode(d).unwrap();
            let reply = Reply::Ok {
                call,
                args: sample_args(call, call.reply_signature(), true, 0, d),
            };
            let rbody = reply.encode(d, Some(CKM_ECDH1_DERIVE)).unwrap();
            for cut in 0..body.len() {
                let _ = Request::decode(&body[..cut], d);
            }
            for cut in 0..rbody.len() {
                let _ = Reply::decode(&rbody[..cut], call, d, None);
            }
            for i in 8..body.len() {
                let mut b = body.clone();
                b[i] ^= 0xff;
                let _ = Request::decode(&b, d);
            }
            for i in 8..rbody.len() {
                let mut b = rbody.clone();
                b[i] = b[i].wrapping_add(0x80);
                let _ = Reply::decode(&b, call, d, Some(CKM_IBM_KYBER));
            }
        }
    }
}
