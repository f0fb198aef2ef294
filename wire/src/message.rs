//! Request and reply bodies (rpc §2.4): `u32 call_id`, the signature as a byte array, then the
//! arguments, checked against the signature table.

use crate::codec::{Reader, Writer};
use crate::dialect::Dialect;
use crate::error::{Error, ProtocolError};
use crate::value::{Arg, ArgContext, AttrBufferLayout, Code, codes};
use crate::{CallId, Rv, consts};

/// A request: the call and its arguments in signature order.
///
/// Its byte arrays, attribute values and raw mechanism parameters are wiped when it is
/// dropped: requests carry PINs (`C_Login`, `C_InitPIN`, `C_SetPIN`, `C_InitToken`), data to
/// encrypt or sign, and secret-key values (`C_CreateObject`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The call.
    pub call: CallId,
    /// Its arguments, one per signature code.
    pub args: Vec<Arg>,
}

/// A reply: the call's outputs, or an ERROR frame's CK_RV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A normal reply for `call`.
    Ok {
        /// The call answered.
        call: CallId,
        /// Its outputs, one per reply signature code.
        args: Vec<Arg>,
    },
    /// An ERROR frame (`call_id 0`, signature `"u"`).
    Error(Rv),
}

/// Width of the `index`-th `s` of a signature, or `None` if the call has no fixed width there.
fn space_width(call: CallId, reply: bool, index: usize) -> Option<usize> {
    match (call, reply) {
        // CK_INFO: manufacturerID[32], libraryDescription[32]
        (CallId::GetInfo, true) => Some(32),
        // CK_SLOT_INFO: slotDescription[64], manufacturerID[32]
        (CallId::GetSlotInfo, true) => Some(if index == 0 { 64 } else { 32 }),
        // CK_TOKEN_INFO: label[32], manufacturerID[32], model[16], serialNumber[16], utcTime[16]
        (CallId::GetTokenInfo, true) => Some(if index < 2 { 32 } else { 16 }),
        // C_InitToken2: label[32]
        (CallId::InitToken2, false) => Some(32),
        _ => None,
    }
}

fn context(call: CallId, dialect: Dialect, layout: AttrBufferLayout) -> ArgContext {
    let _ = call;
    ArgContext {
        dialect,
        space_width: None,
        attr_buffer: layout,
        mech: None,
    }
}

/// The `fA` layout we send to a server of this generation.
fn send_layout(dialect: Dialect) -> AttrBufferLayout {
    if dialect.nested_attr_buffers() {
        AttrBufferLayout::NestedIfBuffer
    } else {
        AttrBufferLayout::Flat
    }
}

fn encode_body(
    call: CallId,
    reply: bool,
    args: &[Arg],
    dialect: Dialect,
    mech: Option<u64>,
) -> Result<Vec<u8>, Error> {
    let sig = if reply {
        call.reply_signature()
    } else {
        call.request_signature()
    };
    let codes = codes(sig);
    // C_DeriveKey2 replies omit the key handle unless the CK_RV is OK (rpc §6, id 89).
    let short_derive = reply && call == CallId::DeriveKey2 && args.len() == 2;
    if args.len() != codes.len() && !short_derive {
        return Err(Error::Protocol(ProtocolError::ArgumentMismatch(sig)));
    }
    let mut w = Writer::with_capacity(64);
    w.u32(call.id());
    w.byte_array(Some(sig.as_bytes()))?;
    let mut cx = context(call, dialect, send_layout(dialect));
    cx.mech = mech;
    let mut spaces = 0;
    for (code, arg) in codes.iter().zip(args) {
        if *code == Code::S {
            cx.space_width = space_width(call, reply, spaces);
            spaces += 1;
        }
        arg.encode(*code, &mut w, cx)?;
    }
    Ok(w.into_inner())
}

fn read_header(r: &mut Reader<'_>) -> Result<u32, ProtocolError> {
    r.u32("call id")
}

fn check_signature(
    r: &mut Reader<'_>,
    call: CallId,
    expected: &'static str,
) -> Result<(), ProtocolError> {
    let got = r
        .byte_array("signature")?
        .ok_or(ProtocolError::BadValue("NULL signature"))?;
    if got != expected.as_bytes() {
        return Err(ProtocolError::SignatureMismatch {
            call,
            expected,
            got: String::from_utf8_lossy(got).into_owned(),
        });
    }
    Ok(())
}

fn decode_args(
    r: &mut Reader<'_>,
    call: CallId,
    reply: bool,
    sig: &'static str,
    mut cx: ArgContext,
) -> Result<Vec<Arg>, ProtocolError> {
    let codes = codes(sig);
    let mut args = Vec::with_capacity(codes.len());
    let mut spaces = 0;
    for (i, code) in codes.iter().enumerate() {
        if *code == Code::S {
            cx.space_width = space_width(call, reply, spaces);
            spaces += 1;
        }
        // C_DeriveKey2's reply stops after `P` when its CK_RV is not OK.
        if reply
            && call == CallId::DeriveKey2
            && i == 2
            && r.is_empty()
            && matches!(args.first(), Some(Arg::Ulong(rv)) if *rv != consts::CKR_OK)
        {
            break;
        }
        args.push(Arg::decode(*code, r, cx)?);
    }
    // Trailing bytes are ignored, as stock does (rpc §2.4).
    Ok(args)
}

impl Drop for Request {
    fn drop(&mut self) {
        crate::value::wipe_args(&mut self.args);
    }
}

impl Request {
    /// A request.
    pub fn new(call: CallId, args: Vec<Arg>) -> Self {
        Self { call, args }
    }

    /// The body bytes for a server speaking `dialect`.
    pub fn encode(&self, dialect: Dialect) -> Result<Vec<u8>, Error> {
        if self.call == CallId::Error {
            return Err(Error::Protocol(ProtocolError::UnknownCall(0)));
        }
        encode_body(self.call, false, &self.args, dialect, None)
    }

    /// Decode a request body from a client speaking `dialect`.
    ///
    /// `fA` buffers from a version-1 client are parsed with each layout 0.25.x clients used
    /// (rpc §14 D2) until one consumes the body exactly.
    pub fn decode(body: &[u8], dialect: Dialect) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let id = read_header(&mut r)?;
        let call = CallId::from_u32(id)
            .filter(|c| *c != CallId::Error)
            .ok_or(ProtocolError::UnknownCall(id))?;
        let sig = call.request_signature();
        check_signature(&mut r, call, sig)?;
        let layouts: &[AttrBufferLayout] = match dialect.version() {
            0 => &[AttrBufferLayout::Flat],
            1 => &[
                AttrBufferLayout::NestedAlways,
                AttrBufferLayout::NestedIfBuffer,
                AttrBufferLayout::Flat,
            ],
            _ => &[AttrBufferLayout::NestedIfBuffer],
        };
        let mut first_err = None;
        for (i, layout) in layouts.iter().enumerate() {
            let mut attempt = r.clone();
            match decode_args(
                &mut attempt,
                call,
                false,
                sig,
                context(call, dialect, *layout),
            ) {
                Ok(args)
                    if attempt.is_empty()
                        || i + 1 == layouts.len()
                        || call != CallId::GetAttributeValue =>
                {
                    return Ok(Self { call, args });
                }
                Ok(_) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                    if call != CallId::GetAttributeValue {
                        break;
                    }
                }
            }
        }
        Err(first_err.unwrap_or(ProtocolError::Truncated("arguments")))
    }
}

impl Reply {
    /// An ERROR reply.
    pub fn error(rv: Rv) -> Self {
        Self::Error(rv)
    }

    /// The body bytes for a client speaking `dialect`. `mech` is the request's mechanism type,
    /// needed only for a `C_DeriveKey2` reply.
    pub fn encode(&self, dialect: Dialect, mech: Option<u64>) -> Result<Vec<u8>, Error> {
        match self {
            Self::Ok { call, args } => encode_body(*call, true, args, dialect, mech),
            Self::Error(rv) => {
                let mut w = Writer::with_capacity(17);
                w.u32(0);
                w.byte_array(Some(b"u"))?;
                // The stock server narrows to 32 bits before widening (rpc §2.4).
                w.u64(rv.0 & 0xFFFF_FFFF);
                Ok(w.into_inner())
            }
        }
    }

    /// Decode a reply to `expected` from a server speaking `dialect`; `mech` is the request's
    /// mechanism type (for `C_DeriveKey2`).
    pub fn decode(
        body: &[u8],
        expected: CallId,
        dialect: Dialect,
        mech: Option<u64>,
    ) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let id = read_header(&mut r)?;
        if id == 0 {
            check_signature(&mut r, CallId::Error, "u")?;
            let rv = r.u64("error code")?;
            if rv == consts::CKR_OK {
                return Err(ProtocolError::ErrorWithoutCode);
            }
            return Ok(Self::Error(Rv(rv)));
        }
        if id != expected.id() {
            return Err(ProtocolError::UnexpectedReply { expected, got: id });
        }
        let sig = expected.reply_signature();
        check_signature(&mut r, expected, sig)?;
        let mut cx = context(expected, dialect, AttrBufferLayout::NestedIfBuffer);
        cx.mech = mech;
        let args = decode_args(&mut r, expected, true, sig, cx)?;
        Ok(Self::Ok {
            call: expected,
            args,
        })
    }

    /// The call id carried by a reply body, without decoding it (0 for ERROR).
    pub fn peek_call_id(body: &[u8]) -> Option<u32> {
        Reader::new(body).u32("call id").ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{Attribute, ByteArray, Mechanism, UlongArray};

    #[test]
    fn every_signature_parses_into_known_codes() {
        for call in CallId::ALL {
            for sig in [call.request_signature(), call.reply_signature()] {
                let n: usize = codes(sig)
                    .iter()
                    .map(|c| match c {
                        Code::Ay | Code::Au | Code::Fy | Code::Fu | Code::AA | Code::FA => 2,
                        _ => 1,
                    })
                    .sum();
                assert_eq!(n, sig.len(), "{call:?} {sig}");
                assert!(sig.chars().all(|c| "yuvszafAMP".contains(c)), "{sig}");
            }
        }
    }

    #[test]
    fn encodes_c_initialize_like_the_capture() {
        // rpc §13: C_Initialize body.
        let req = Request::new(
            CallId::Initialize,
            vec![
                Arg::ByteArray(ByteArray::Data(
                    b"PRIVATE-GNOME-KEYRING-PKCS11-PROTOCOL-V-1".to_vec(),
                )),
                Arg::Byte(0),
                Arg::ByteArray(ByteArray::Data(vec![0])),
            ],
        );
        let body = req.encode(Dialect::V0).unwrap();
        assert_eq!(body.len(), 0x42);
        assert_eq!(&body[..14], b"\0\0\0\x01\0\0\0\x05ayyay\x01");
        assert_eq!(Request::decode(&body, Dialect::V0).unwrap(), req);
    }

    #[test]
    fn error_frame_round_trip() {
        let body = Reply::Error(Rv(0xa0)).encode(Dialect::V0, None).unwrap();
        assert_eq!(
            body,
            [0, 0, 0, 0, 0, 0, 0, 1, b'u', 0, 0, 0, 0, 0, 0, 0, 0xa0]
        );
        assert_eq!(
            Reply::decode(&body, CallId::Login, Dialect::V0, None).unwrap(),
            Reply::Error(Rv(0xa0))
        );
        let ok = Reply::Error(Rv(0)).encode(Dialect::V0, None).unwrap();
        assert_eq!(
            Reply::decode(&ok, CallId::Login, Dialect::V0, None),
            Err(ProtocolError::ErrorWithoutCode)
        );
    }

    #[test]
    fn rejects_signature_mismatch_and_unknown_calls() {
        let mut w = Writer::new();
        w.u32(3);
        w.byte_array(Some(b"u")).unwrap();
        let b = w.into_inner();
        assert!(matches!(
            Request::decode(&b, Dialect::V2),
            Err(ProtocolError::SignatureMismatch { .. })
        ));
        let mut w = Writer::new();
        w.u32(90);
        w.byte_array(Some(b"")).unwrap();
        assert_eq!(
            Request::decode(w.as_slice(), Dialect::V2),
            Err(ProtocolError::UnknownCall(90))
        );
        assert_eq!(
            Request::decode(&[0, 0, 0, 0, 0, 0, 0, 0], Dialect::V2),
            Err(ProtocolError::UnknownCall(0))
        );
        assert_eq!(
            Request::decode(&[0, 0], Dialect::V2),
            Err(ProtocolError::Truncated("call id"))
        );
    }

    #[test]
    fn derive_key2_short_reply() {
        let reply = Reply::Ok {
            call: CallId::DeriveKey2,
            args: vec![
                Arg::Ulong(consts::CKR_BUFFER_TOO_SMALL),
                Arg::MechUpdate(crate::value::MechUpdate::Null),
            ],
        };
        let body = reply
            .encode(Dialect::V2, Some(consts::CKM_ECDH1_DERIVE))
            .unwrap();
        assert_eq!(
            Reply::decode(
                &body,
                CallId::DeriveKey2,
                Dialect::V2,
                Some(consts::CKM_ECDH1_DERIVE)
            )
            .unwrap(),
            reply
        );
        let full = Reply::Ok {
            call: CallId::DeriveKey2,
            args: vec![
                Arg::Ulong(0),
                Arg::MechUpdate(crate::value::MechUpdate::Present(
                    crate::value::ParamUpdate::Empty,
                )),
                Arg::Ulong(5),
            ],
        };
        let body = full
            .encode(Dialect::V2, Some(consts::CKM_ECDH1_DERIVE))
            .unwrap();
        // vectors README §4.2
        assert_eq!(
            &body[11..],
            &[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5]
        );
        assert_eq!(
            Reply::decode(
                &body,
                CallId::DeriveKey2,
                Dialect::V2,
                Some(consts::CKM_ECDH1_DERIVE)
            )
            .unwrap(),
            full
        );
    }

    #[test]
    fn get_attribute_value_from_a_0255_client_with_the_stray_count() {
        // rpc §14 D2: {WRAP_TEMPLATE (NULL), VALUE_LEN, LABEL} with a spurious nested count.
        let mut w = Writer::new();
        w.u32(CallId::GetAttributeValue.id());
        w.byte_array(Some(b"uufA")).unwrap();
        w.u64(0x11);
        w.u64(5);
        w.u32(3);
        w.u32(consts::CKA_WRAP_TEMPLATE as u32);
        w.u32(0);
        w.u32(0); // the stray count
        w.u32(consts::CKA_VALUE_LEN as u32);
        w.u32(8);
        w.u32(consts::CKA_LABEL as u32);
        w.u32(3);
        let b = w.into_inner();
        let req = Request::decode(&b, Dialect::V1).unwrap();
        let Arg::AttrBuffer(slots) = &req.args[2] else {
            panic!()
        };
        assert_eq!(slots.len(), 3);
        assert_eq!(slots[1].ty, consts::CKA_VALUE_LEN);
        assert_eq!(slots[2].buflen, 3);
    }

    #[test]
    fn round_trips_a_sample_of_calls() {
        let cases = vec![
            Request::new(CallId::GetSlotList, vec![Arg::Byte(1), Arg::UlongBuffer(8)]),
            Request::new(
                CallId::SignInit,
                vec![
                    Arg::Ulong(0x11),
                    Arg::Mechanism(Some(Mechanism::new(consts::CKM_ECDSA))),
                    Arg::Ulong(3),
                ],
            ),
            Request::new(
                CallId::CreateObject,
                vec![
                    Arg::Ulong(1),
                    Arg::Attributes(vec![Attribute::ulong(consts::CKA_CLASS, 0)]),
                ],
            ),
        ];
        for d in [Dialect::V0, Dialect::V1, Dialect::V2] {
            for req in &cases {
                let body = req.encode(d).unwrap();
                assert_eq!(&Request::decode(&body, d).unwrap(), req);
            }
        }
        let reply = Reply::Ok {
            call: CallId::GetSlotList,
            args: vec![Arg::UlongArray(UlongArray::Data(vec![0x11, 0x12]))],
        };
        let body = reply.encode(Dialect::V0, None).unwrap();
        assert_eq!(
            Reply::decode(&body, CallId::GetSlotList, Dialect::V0, None).unwrap(),
            reply
        );
        assert!(matches!(
            Reply::decode(&body, CallId::GetInfo, Dialect::V0, None),
            Err(ProtocolError::UnexpectedReply { .. })
        ));
    }
}
