//! Mechanisms: which ones the negotiated generation can carry, and how their native parameters
//! are read.
//!
//! No hiding (issue 4): `C_GetMechanismList` shows every mechanism of the server's module except
//! those whose parameter cannot reach the server at all. A parameter crosses when
//! - the generation has a serializer for it (PSS and OAEP everywhere; ECDH1, GCM, CTR, the IVs,
//!   MAC_GENERAL, DH from 0.25), or
//! - it is a flat structure without pointers: then its native bytes travel as an opaque byte
//!   array, which every server hands to its module unchanged (rpc §5.2; `MechParam::native_flat`),
//!   e.g. SHA256_RSA_PKCS_PSS or AES_CBC against 0.24; or
//! - the mechanism may be used without one (EDDSA with a NULL parameter is pure Ed25519/Ed448).
//!
//! Structures with pointers and no serializer (ECDH1_DERIVE and GCM against 0.24, the
//! `*_ENCRYPT_DATA` and `CONCATENATE_*` derivations, AES_CCM, HKDF, ...) cannot cross: those
//! mechanisms are not listed, and a non-NULL parameter of that kind is refused with
//! `CKR_MECHANISM_PARAM_INVALID` (a NULL one is forwarded).

use cryptoki_sys::*;
use p11fwd_wire::Dialect;
use p11fwd_wire::dialect::{ParamCodec, ParamLayout, param_layout};

/// Mechanisms whose pointer-carrying parameter is optional: listed, forwarded with NULL.
const OPTIONAL_POINTER_PARAMS: &[u64] = &[CKM_EDDSA];

/// Mechanisms whose per-message parameters (PKCS#11 3.0 message functions) are structures with
/// pointers (`CK_GCM_MESSAGE_PARAMS`, `CK_CCM_MESSAGE_PARAMS`,
/// `CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS`): their message operations cannot cross, since
/// message parameters travel as raw bytes (rpc §6).
const POINTER_MESSAGE_PARAMS: &[u64] = &[
    CKM_AES_GCM,
    CKM_AES_CCM,
    CKM_CHACHA20_POLY1305,
    CKM_SALSA20_POLY1305,
];

/// Whether a message-based operation with `mech` needs per-message parameters with pointers.
pub(crate) fn pointer_message_params(mech: u64) -> bool {
    POINTER_MESSAGE_PARAMS.contains(&mech)
}

/// How to read a mechanism's native parameter (chosen by the mechanism type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NativeParam {
    /// `CK_RSA_PKCS_PSS_PARAMS`.
    Pss,
    /// `CK_RSA_PKCS_OAEP_PARAMS` (pointer: the label).
    Oaep,
    /// `CK_ECDH1_DERIVE_PARAMS` (pointers: shared and public data).
    Ecdh1,
    /// `CK_GCM_PARAMS` (pointers: IV and AAD).
    Gcm,
    /// `CK_AES_CTR_PARAMS`.
    AesCtr,
    /// An IV of exactly this many bytes.
    Iv(usize),
    /// `CK_MAC_GENERAL_PARAMS` (a `CK_ULONG`).
    MacGeneral,
    /// The other party's DH public value (non-empty bytes).
    DhPublic,
    /// `CK_IBM_ECDSA_OTHER_PARAMS` (a `CK_ULONG`).
    IbmEcdsaOther,
    /// `CK_IBM_ATTRIBUTEBOUND_WRAP_PARAMS` (a `CK_OBJECT_HANDLE`).
    IbmAttrBoundWrap,
    /// Anything else without pointers: its bytes, as they are.
    Raw,
    /// A structure with pointers that this client cannot serialize.
    NotCarried,
}

impl NativeParam {
    /// Whether the parameter struct holds pointers (it then needs the generation's serializer).
    fn has_pointers(self) -> bool {
        matches!(
            self,
            Self::Oaep | Self::Ecdh1 | Self::Gcm | Self::NotCarried
        )
    }
}

/// How the native parameter of `mech` is read.
pub(crate) fn native_param(mech: u64) -> NativeParam {
    // The newest generation's table names every structure p11-kit knows.
    match Dialect::V2.serializer(mech) {
        Some(ParamCodec::RsaPkcsPss) => NativeParam::Pss,
        Some(ParamCodec::RsaPkcsOaep) => NativeParam::Oaep,
        Some(ParamCodec::Ecdh1Derive) => NativeParam::Ecdh1,
        Some(ParamCodec::AesGcm) => NativeParam::Gcm,
        Some(ParamCodec::AesCtr) => NativeParam::AesCtr,
        Some(ParamCodec::AesIv) => NativeParam::Iv(16),
        Some(ParamCodec::DesIv) => NativeParam::Iv(8),
        Some(ParamCodec::MacGeneral) => NativeParam::MacGeneral,
        Some(ParamCodec::DhPkcsDerive) => NativeParam::DhPublic,
        Some(ParamCodec::IbmEcdsaOther) => NativeParam::IbmEcdsaOther,
        Some(ParamCodec::IbmAttrBoundWrap) => NativeParam::IbmAttrBoundWrap,
        // Their parameters are written back by the token; not supported here.
        Some(ParamCodec::IbmBtcDerive | ParamCodec::IbmKyber) => NativeParam::NotCarried,
        None => match param_layout(mech) {
            ParamLayout::Pointers => NativeParam::NotCarried,
            ParamLayout::None | ParamLayout::Flat | ParamLayout::Unknown => NativeParam::Raw,
        },
    }
}

/// Whether `C_GetMechanismList` shows `mech` on a connection of `dialect` (module docs).
pub(crate) fn listed(dialect: Dialect, mech: u64) -> bool {
    if dialect.is_noparam(mech) {
        return true;
    }
    let native = native_param(mech);
    if !native.has_pointers() {
        return true;
    }
    if native == NativeParam::NotCarried {
        return OPTIONAL_POINTER_PARAMS.contains(&mech);
    }
    dialect.serializer(mech).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_what_crosses_each_generation() {
        // The examples against 0.24.1 (version 0).
        for m in [
            CKM_EDDSA,
            CKM_SHA256_RSA_PKCS_PSS,
            CKM_AES_CBC,
            CKM_AES_CBC_PAD,
        ] {
            assert!(listed(Dialect::V0, m), "{m:#x}");
        }
        for m in [
            CKM_RSA_PKCS_OAEP,
            CKM_RSA_PKCS_PSS,
            CKM_SHA256,
            CKM_ECDSA,
            CKM_AES_CTR,
        ] {
            assert!(listed(Dialect::V0, m), "{m:#x}");
        }
        // Pointers without a 0.24 serializer.
        for m in [CKM_ECDH1_DERIVE, CKM_AES_GCM] {
            assert!(!listed(Dialect::V0, m), "{m:#x}");
            assert!(listed(Dialect::V1, m), "{m:#x}");
            assert!(listed(Dialect::V2, m), "{m:#x}");
        }
        // Pointers nobody serializes.
        for d in [Dialect::V0, Dialect::V1, Dialect::V2] {
            assert!(!listed(d, CKM_AES_CBC_ENCRYPT_DATA));
            assert!(!listed(d, CKM_ECDH1_COFACTOR_DERIVE));
            assert!(listed(d, CKM_EDDSA));
            assert!(listed(d, CKM_EC_EDWARDS_KEY_PAIR_GEN));
            // Vendor mechanisms of unknown layout pass as bytes.
            assert!(listed(d, 0x8000_1234));
        }
    }

    #[test]
    fn pointer_parameters_never_go_as_bytes() {
        // Structures with pointers and no p11-kit serializer (wire's `param_layout`).
        for m in [
            CKM_CHACHA20,
            CKM_TLS_KEY_AND_MAC_DERIVE,
            CKM_PBE_SHA1_DES3_EDE_CBC,
            CKM_KEY_WRAP_SET_OAEP,
            CKM_SEED_ECB_ENCRYPT_DATA,
            CKM_HOTP,
            CKM_DSA_FIPS_G_GEN,
            CKM_IKE1_EXTENDED_DERIVE,
        ] {
            assert_eq!(native_param(m), NativeParam::NotCarried, "{m:#x}");
            for d in [Dialect::V0, Dialect::V1, Dialect::V2] {
                assert!(!listed(d, m), "{m:#x}");
            }
        }
        for m in [CKM_AES_GCM, CKM_AES_CCM, CKM_CHACHA20_POLY1305] {
            assert!(pointer_message_params(m));
        }
        assert!(!pointer_message_params(CKM_AES_CBC));
        assert!(!pointer_message_params(0x8000_1234));
    }

    #[test]
    fn reads_parameters_by_type() {
        assert_eq!(native_param(CKM_SHA384_RSA_PKCS_PSS), NativeParam::Pss);
        assert_eq!(native_param(CKM_AES_CBC_PAD), NativeParam::Iv(16));
        assert_eq!(native_param(CKM_DES3_CBC), NativeParam::Iv(8));
        assert_eq!(
            native_param(CKM_SHA256_HMAC_GENERAL),
            NativeParam::MacGeneral
        );
        assert_eq!(native_param(CKM_EDDSA), NativeParam::NotCarried);
        assert_eq!(native_param(CKM_SHA3_256), NativeParam::Raw);
    }
}
