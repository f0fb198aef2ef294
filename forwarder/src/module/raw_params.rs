//! Which raw mechanism parameters may reach a module.
//!
//! A mechanism parameter arrives as raw bytes (`MechParam::Raw`) when the peer's p11-kit
//! generation has no serializer for it: the bytes are the client's native structure. If that
//! structure holds pointers, the module would dereference the client's addresses, and since one
//! process serves every connection, one client could crash everybody's module. So raw bytes are
//! **allowed, not refused**: they pass only for mechanisms whose parameter is known to be flat,
//! with exactly the size of that structure (a short buffer would be read past its end), and every
//! other raw parameter is `CKR_MECHANISM_PARAM_INVALID`. Vendor-defined mechanisms are unknown
//! to us and refused too, unless the operator names them (`p11fwd server --pass-raw-params`).

use std::mem::size_of;

use cryptoki_sys::CK_ULONG;
use p11fwd_wire::consts::*;
use p11fwd_wire::dialect::{ParamCodec, ParamLayout, param_layout};
use p11fwd_wire::{Dialect, Rv};

const UL: usize = size_of::<CK_ULONG>();

/// What a raw parameter that may pass is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RawKind {
    /// Plain bytes, handed over as they are.
    Bytes,
    /// One object handle of the connection's, to translate to the real one.
    Handle,
}

/// The sizes a flat parameter may have, if the mechanism's parameter is known to be flat.
enum Size {
    Exactly(usize),
    /// Optional in PKCS#11 (a raw parameter has at least one byte, so it must be this size).
    Optional(usize),
    /// A byte string of any non-zero length (the DH public value).
    AnyBytes,
    /// A `CK_OBJECT_HANDLE`.
    Handle,
}

fn flat_size(mech: u64) -> Option<Size> {
    if param_layout(mech) != ParamLayout::Flat {
        return None;
    }
    if let Some(codec) = Dialect::V2.serializer(mech) {
        return match codec {
            ParamCodec::RsaPkcsPss => Some(Size::Exactly(3 * UL)),
            ParamCodec::AesIv => Some(Size::Exactly(16)),
            ParamCodec::DesIv => Some(Size::Exactly(8)),
            ParamCodec::AesCtr => Some(Size::Exactly(UL + 16)),
            ParamCodec::MacGeneral | ParamCodec::IbmEcdsaOther => Some(Size::Exactly(UL)),
            ParamCodec::DhPkcsDerive => Some(Size::AnyBytes),
            ParamCodec::IbmAttrBoundWrap => Some(Size::Handle),
            ParamCodec::RsaPkcsOaep
            | ParamCodec::Ecdh1Derive
            | ParamCodec::AesGcm
            | ParamCodec::IbmBtcDerive
            | ParamCodec::IbmKyber => None,
        };
    }
    match mech {
        CKM_SHA3_224_RSA_PKCS_PSS
        | CKM_SHA3_256_RSA_PKCS_PSS
        | CKM_SHA3_384_RSA_PKCS_PSS
        | CKM_SHA3_512_RSA_PKCS_PSS => Some(Size::Exactly(3 * UL)),
        CKM_DES_CBC | CKM_DES3_CBC | CKM_DES3_CBC_PAD => Some(Size::Exactly(8)),
        CKM_SHA512_224_HMAC_GENERAL | CKM_SHA512_256_HMAC_GENERAL => Some(Size::Exactly(UL)),
        // An optional IV: 8 bytes (RFC 3394 / 5649 with an alternative IV), 4 for KWP.
        CKM_AES_KEY_WRAP | CKM_AES_KEY_WRAP_PAD => Some(Size::Optional(8)),
        CKM_AES_KEY_WRAP_KWP => Some(Size::Optional(4)),
        CKM_CONCATENATE_BASE_AND_KEY => Some(Size::Handle),
        // The others `param_layout` calls flat take no parameter at all: raw bytes (never
        // empty) are wrong.
        _ => None,
    }
}

/// The raw-parameter rule of a server: the built-in allow-list plus the vendor mechanisms the
/// operator named.
#[derive(Clone, Debug, Default)]
pub struct RawParams {
    vendor: Vec<u64>,
}

impl RawParams {
    /// The built-in rule, and raw parameters of any size for the vendor-defined mechanisms in
    /// `vendor` (each must be `>= CKM_VENDOR_DEFINED`).
    pub fn new(vendor: Vec<u64>) -> Result<Self, u64> {
        if let Some(m) = vendor.iter().find(|m| **m < CKM_VENDOR_DEFINED) {
            return Err(*m);
        }
        Ok(Self { vendor })
    }

    /// Whether a raw parameter of `len` bytes for `mech` may reach the module, and as what.
    pub(crate) fn check(&self, mech: u64, len: usize) -> Result<RawKind, Rv> {
        let invalid = Rv(CKR_MECHANISM_PARAM_INVALID);
        match flat_size(mech) {
            Some(Size::Exactly(n) | Size::Optional(n)) if len == n => Ok(RawKind::Bytes),
            Some(Size::AnyBytes) if len > 0 => Ok(RawKind::Bytes),
            Some(Size::Handle) if len == UL => Ok(RawKind::Handle),
            Some(_) => Err(invalid),
            // Known flat structures of vendors are checked above; the operator's list is for
            // the ones we know nothing about (never for ones known to hold pointers).
            None if mech >= CKM_VENDOR_DEFINED
                && param_layout(mech) == ParamLayout::Unknown
                && self.vendor.contains(&mech) =>
            {
                Ok(RawKind::Bytes)
            }
            None => Err(invalid),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_known_flat_parameters_of_the_right_size_pass() {
        let r = RawParams::default();
        let bad = Err(Rv(CKR_MECHANISM_PARAM_INVALID));
        let bytes = Ok(RawKind::Bytes);
        let handle = Ok(RawKind::Handle);
        for (m, len, want) in [
            // Flat structures a 0.24 client sends raw, and their wrong sizes.
            (CKM_SHA256_RSA_PKCS_PSS, 24, bytes),
            (CKM_SHA256_RSA_PKCS_PSS, 12, bad),
            (CKM_AES_CBC, 16, bytes),
            (CKM_AES_CBC, 15, bad),
            (CKM_AES_CTR, 24, bytes),
            (CKM_DES3_CBC, 8, bytes),
            (CKM_SHA256_HMAC_GENERAL, 8, bytes),
            (CKM_DH_PKCS_DERIVE, 3, bytes),
            (CKM_AES_KEY_WRAP, 8, bytes),
            (CKM_AES_KEY_WRAP_KWP, 4, bytes),
            (CKM_AES_KEY_WRAP_KWP, 8, bad),
            (CKM_CONCATENATE_BASE_AND_KEY, 8, handle),
            (CKM_CONCATENATE_BASE_AND_KEY, 4, bad),
            (CKM_IBM_ATTRIBUTEBOUND_WRAP, 8, handle),
            (CKM_IBM_ECDSA_OTHER, 8, bytes),
            // No parameter at all.
            (CKM_SHA256, 8, bad),
            (CKM_AES_ECB, 16, bad),
            (CKM_SHA3_256, 1, bad),
        ] {
            assert_eq!(r.check(m, len), want, "{m:#x} {len}");
        }
        // Pointers (decoded by a codec when the peer has one, listed in wire, of a vendor), and
        // standard mechanisms nobody classified. (wire's tests check the list itself.)
        for m in [
            CKM_AES_GCM,
            CKM_ECDH1_DERIVE,
            CKM_EDDSA,
            CKM_CHACHA20,
            CKM_TLS_KEY_AND_MAC_DERIVE,
            CKM_AES_XTS,
            CKM_RC2_CBC,
            CKM_IBM_KYBER,
        ] {
            for len in [1, 8, 24, 32, 40, 48, 64] {
                assert_eq!(r.check(m, len), bad, "{m:#x} {len}");
            }
        }
        // Vendor mechanisms: refused by default.
        assert_eq!(r.check(0x8123_4567, 16), bad);
    }

    #[test]
    fn named_vendor_mechanisms_pass_raw() {
        assert_eq!(RawParams::new(vec![CKM_SHA256]).unwrap_err(), CKM_SHA256);
        let r = RawParams::new(vec![0x8123_4567, CKM_IBM_KYBER]).unwrap();
        assert_eq!(r.check(0x8123_4567, 3), Ok(RawKind::Bytes));
        assert_eq!(r.check(0x8123_4567, 300), Ok(RawKind::Bytes));
        assert_eq!(
            r.check(0x8123_4568, 3),
            Err(Rv(CKR_MECHANISM_PARAM_INVALID))
        );
        // Known to hold pointers: naming it changes nothing.
        assert_eq!(
            r.check(CKM_IBM_KYBER, 64),
            Err(Rv(CKR_MECHANISM_PARAM_INVALID))
        );
        // A known flat vendor structure keeps its size check.
        assert_eq!(
            r.check(CKM_IBM_ECDSA_OTHER, 4),
            Err(Rv(CKR_MECHANISM_PARAM_INVALID))
        );
    }
}
