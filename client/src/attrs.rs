//! Attribute templates: native templates to wire attributes, and `C_GetAttributeValue` with the
//! exact PKCS#11 semantics against every server generation (rpc §3.1, §3.2).
//!
//! - Values are encoded by the class of their type in the negotiated generation; a `CK_BBOOL`
//!   must be 1 byte, a `CK_ULONG` 8, a date 0 or 8, a mechanism array a multiple of 8, else
//!   `CKR_ATTRIBUTE_VALUE_INVALID`.
//! - Template-valued attributes (`CKA_WRAP/UNWRAP/DERIVE_TEMPLATE`) travel, nested, to 0.25+
//!   servers only. A 0.24 server rejects them in templates and its per-connection process
//!   crashes on a size query for one, so against version 0 they are never sent: in an input
//!   template they are `CKR_ATTRIBUTE_TYPE_INVALID`, in `C_GetAttributeValue` they are answered
//!   locally as unavailable (`CK_UNAVAILABLE_INFORMATION`, `CKR_ATTRIBUTE_TYPE_INVALID`).
//! - `CKA_ALLOWED_MECHANISMS` is never asked with a size query (stock servers answer it with a
//!   count and no elements, which fails to parse): we ask with room for 1024 mechanisms and
//!   report the size ourselves.
//! - A value that does not fit the caller's buffer makes that entry unavailable and the call
//!   `CKR_BUFFER_TOO_SMALL`; the server's CK_RV (OK, SENSITIVE, TYPE_INVALID, BUFFER_TOO_SMALL)
//!   wins over ours when it is not OK.

use cryptoki_sys::{
    CKA_ALLOWED_MECHANISMS, CKR_ATTRIBUTE_TYPE_INVALID, CKR_ATTRIBUTE_VALUE_INVALID,
    CKR_BUFFER_TOO_SMALL, CKR_DEVICE_ERROR,
};
use p11fwd_wire::client::{parse, req};
use p11fwd_wire::dialect::{AttrClass, is_template_type};
use p11fwd_wire::value::{AttrSlot, AttrValue};
use p11fwd_wire::{Attribute, CallId, Dialect, Error as WireError, Rv, Value};

use crate::ffi::{InAttr, MAX_OUTPUT, OutAttr, Shape};
use crate::state::Tx;
use crate::{Result, rv};

/// Room we ask for when the caller queries the size of `CKA_ALLOWED_MECHANISMS`.
const ALLOWED_MECHANISMS_ROOM: u64 = 1024 * 8;

/// `sizeof(CK_ATTRIBUTE)` on LP64.
const ATTRIBUTE_SIZE: u64 = 24;

/// A locally detected error, as a wire error that keeps the connection.
pub(crate) fn local(call: CallId, code: Rv) -> WireError {
    WireError::Rv { call, rv: code }
}

/// A native input template as wire attributes for `dialect`.
pub(crate) fn to_wire(template: &[InAttr<'_>], dialect: Dialect) -> Result<Vec<Attribute>> {
    template.iter().map(|a| one(a, dialect)).collect()
}

fn one(a: &InAttr<'_>, dialect: Dialect) -> Result<Attribute> {
    let invalid = || rv(CKR_ATTRIBUTE_VALUE_INVALID);
    if a.ty > u64::from(u32::MAX) {
        return Err(rv(CKR_ATTRIBUTE_TYPE_INVALID));
    }
    if is_template_type(a.ty) {
        if !dialect.supports_templates() {
            return Err(rv(CKR_ATTRIBUTE_TYPE_INVALID));
        }
        let nested = to_wire(a.nested.as_deref().unwrap_or(&[]), dialect)?;
        return Ok(Attribute::new(a.ty, Value::Template(nested)));
    }
    let value = match dialect.attr_class(a.ty) {
        AttrClass::Byte => match a.value {
            Some([b]) => Value::Byte(*b),
            _ => return Err(invalid()),
        },
        AttrClass::Ulong => {
            let bytes: [u8; 8] = a
                .value
                .and_then(|v| v.try_into().ok())
                .ok_or_else(invalid)?;
            Value::Ulong(u64::from_ne_bytes(bytes))
        }
        AttrClass::Bytes => Value::Bytes(a.value.map(<[u8]>::to_vec)),
        AttrClass::Date => match a.value {
            None => Value::Date(None),
            Some(v) if v.is_empty() || v.len() == 8 => Value::Date(Some(v.to_vec())),
            Some(_) => return Err(invalid()),
        },
        AttrClass::MechanismArray => {
            let v = a.value.unwrap_or(&[]);
            if !v.len().is_multiple_of(8) {
                return Err(invalid());
            }
            Value::Mechanisms(
                v.chunks_exact(8)
                    .map(|c| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(c);
                        u64::from_ne_bytes(b)
                    })
                    .collect(),
            )
        }
        // Only the template types have this class, and they are handled above.
        AttrClass::Template => return Err(invalid()),
    };
    Ok(Attribute::new(a.ty, value))
}

/// What to ask the server for one entry.
fn slot_for(a: &OutAttr<'_>) -> AttrSlot {
    let ty = a.ty();
    let buflen = |n: u64| u32::try_from(n.min(MAX_OUTPUT)).unwrap_or(u32::MAX);
    match a.shape() {
        Shape::Query if ty == CKA_ALLOWED_MECHANISMS => AttrSlot {
            ty,
            buflen: buflen(ALLOWED_MECHANISMS_ROOM),
            nested: None,
        },
        Shape::Query => AttrSlot {
            ty,
            buflen: 0,
            nested: None,
        },
        Shape::Buffer(cap) if ty == CKA_ALLOWED_MECHANISMS => AttrSlot {
            ty,
            buflen: buflen((cap as u64).max(ALLOWED_MECHANISMS_ROOM)),
            nested: None,
        },
        Shape::Buffer(cap) => AttrSlot {
            ty,
            buflen: buflen(cap as u64),
            nested: None,
        },
        Shape::Nested(n) => AttrSlot {
            ty,
            buflen: buflen(n as u64 * ATTRIBUTE_SIZE),
            nested: Some(a.nested().iter().map(slot_for).collect()),
        },
    }
}

/// A returned value as the native bytes the caller expects; `None` for a size-only answer.
fn native_bytes(v: &Value) -> Option<Vec<u8>> {
    Some(match v {
        Value::Byte(b) => vec![*b],
        Value::Ulong(u) => u.to_ne_bytes().to_vec(),
        Value::Bytes(b) | Value::Date(b) => b.clone()?,
        Value::Mechanisms(m) => m.iter().flat_map(|x| x.to_ne_bytes()).collect(),
        Value::Template(_) => return None,
    })
}

/// Store one returned attribute in the caller's entry; `false` if it did not fit.
fn fill(a: &mut OutAttr<'_>, reply: &Attribute) -> bool {
    let (len, value) = match &reply.value {
        AttrValue::Unavailable => {
            a.set_unavailable();
            return true;
        }
        AttrValue::Present { len, value } => (u64::from(*len), value),
    };
    if let Value::Template(t) = value {
        let Some(entries) = a.nested_mut() else {
            // A size query (count 0 comes back with the native length).
            if a.shape() == Shape::Query {
                a.set_len(len);
                return true;
            }
            a.set_unavailable();
            return false;
        };
        if t.len() > entries.len() {
            a.set_unavailable();
            return false;
        }
        let mut fits = true;
        for (e, r) in entries.iter_mut().zip(t) {
            e.set_type(r.ty);
            fits &= fill(e, r);
        }
        a.set_len(t.len() as u64 * ATTRIBUTE_SIZE);
        return fits;
    }
    if a.shape() == Shape::Query {
        a.set_len(len);
        return true;
    }
    match native_bytes(value) {
        Some(bytes) => a.write(&bytes),
        // The server answered a size query (we sent 0 for an empty buffer): only an empty
        // value fits.
        None if len == 0 => a.write(&[]),
        None => {
            a.set_unavailable();
            false
        }
    }
}

/// `C_GetAttributeValue`: the CK_RV to return (OK or one of the per-attribute codes).
pub(crate) fn get(
    tx: &Tx<'_>,
    session: u64,
    object: u64,
    template: &mut [OutAttr<'_>],
) -> p11fwd_wire::Result<Rv> {
    let dialect = tx.dialect();
    let mut ours = Rv::OK;
    let mut sent = Vec::with_capacity(template.len());
    let mut slots = Vec::with_capacity(template.len());
    for (i, a) in template.iter_mut().enumerate() {
        let ty = a.ty();
        if ty > u64::from(u32::MAX) || (is_template_type(ty) && !dialect.supports_templates()) {
            a.set_unavailable();
            ours = rv(CKR_ATTRIBUTE_TYPE_INVALID);
            continue;
        }
        slots.push(slot_for(a));
        sent.push(i);
    }
    if slots.is_empty() {
        return Ok(ours);
    }
    let (attrs, server) =
        parse::attributes(tx.call(&req::get_attribute_value(session, object, slots))?)?;
    let mismatch = || local(CallId::GetAttributeValue, rv(CKR_DEVICE_ERROR));
    if attrs.len() != sent.len() {
        return Err(mismatch());
    }
    let mut too_small = false;
    for (i, reply) in sent.into_iter().zip(&attrs) {
        let a = template.get_mut(i).ok_or_else(mismatch)?;
        if reply.ty != a.ty() {
            return Err(mismatch());
        }
        too_small |= !fill(a, reply);
    }
    Ok(if !server.is_ok() {
        server
    } else if too_small {
        rv(CKR_BUFFER_TOO_SMALL)
    } else {
        ours
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests unwrap: a panic is a test failure.
mod tests {
    use cryptoki_sys::*;

    use super::*;

    fn attr<'a>(ty: u64, value: Option<&'a [u8]>) -> InAttr<'a> {
        InAttr {
            ty,
            value,
            nested: None,
        }
    }

    #[test]
    fn converts_values_by_class() {
        let class = CKO_PRIVATE_KEY.to_ne_bytes();
        let t = [
            attr(CKA_CLASS, Some(&class)),
            attr(CKA_TOKEN, Some(&[1])),
            attr(CKA_LABEL, Some(b"k")),
            attr(CKA_START_DATE, Some(b"20240131")),
            attr(CKA_ID, None),
        ];
        let w = to_wire(&t, Dialect::V0).unwrap();
        assert_eq!(w[0], Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY));
        assert_eq!(w[1], Attribute::bool(CKA_TOKEN, true));
        assert_eq!(w[2], Attribute::bytes(CKA_LABEL, b"k".to_vec()));
        assert_eq!(w[4].value(), Some(&Value::Bytes(None)));
    }

    #[test]
    fn rejects_malformed_values() {
        let e = |t: &[InAttr<'_>]| to_wire(t, Dialect::V2).unwrap_err().0;
        assert_eq!(
            e(&[attr(CKA_CLASS, Some(&[1, 2, 3, 4]))]),
            CKR_ATTRIBUTE_VALUE_INVALID
        );
        assert_eq!(
            e(&[attr(CKA_TOKEN, Some(&[1, 0]))]),
            CKR_ATTRIBUTE_VALUE_INVALID
        );
        assert_eq!(
            e(&[attr(CKA_START_DATE, Some(b"2024"))]),
            CKR_ATTRIBUTE_VALUE_INVALID
        );
        assert_eq!(
            e(&[attr(CKA_ALLOWED_MECHANISMS, Some(&[0; 7]))]),
            CKR_ATTRIBUTE_VALUE_INVALID
        );
        assert_eq!(e(&[attr(1 << 40, Some(&[]))]), CKR_ATTRIBUTE_TYPE_INVALID);
    }

    #[test]
    fn templates_only_cross_to_new_servers() {
        let class = CKO_SECRET_KEY.to_ne_bytes();
        let t = [InAttr {
            ty: CKA_WRAP_TEMPLATE,
            value: None,
            nested: Some(vec![attr(CKA_CLASS, Some(&class))]),
        }];
        assert_eq!(
            to_wire(&t, Dialect::V0).unwrap_err().0,
            CKR_ATTRIBUTE_TYPE_INVALID
        );
        let w = to_wire(&t, Dialect::V1).unwrap();
        assert_eq!(
            w[0].value(),
            Some(&Value::Template(vec![Attribute::ulong(
                CKA_CLASS,
                CKO_SECRET_KEY
            )]))
        );
        assert_eq!(w[0].native_len(), Some(24));
        let mechs: Vec<u8> = [CKM_AES_CBC, CKM_AES_GCM]
            .iter()
            .flat_map(|m| m.to_ne_bytes())
            .collect();
        let w = to_wire(&[attr(CKA_ALLOWED_MECHANISMS, Some(&mechs))], Dialect::V0).unwrap();
        assert_eq!(w[0].as_mechanisms(), Some(&[CKM_AES_CBC, CKM_AES_GCM][..]));
        assert_eq!(w[0].native_len(), Some(16));
    }
}
