//! The values a call carries, and their encodings (rpc §3, §5).
//!
//! Each signature code maps to one [`Arg`] variant. Attribute values are encoded by the class of
//! their *type* ([`Dialect::attr_class`]), and their `length` field carries the native LP64
//! `ulValueLen`, not the number of encoded bytes (rpc §3.1). Mechanisms use the framing of the
//! negotiated generation ([`Dialect::mech_framing`]).

use crate::codec::{Reader, Writer};
use crate::consts::*;
use crate::dialect::{AttrClass, Dialect, MechFraming, ParamCodec, is_template_type};
use crate::error::{Error, ProtocolError};

/// Templates may nest at most this deep (p11-kit 0.26.3, CVE-2026-13757).
pub const MAX_TEMPLATE_DEPTH: usize = 8;
/// Attributes in one template or attribute buffer.
pub const MAX_ATTRIBUTES: u32 = 4096;
/// Elements in one `au` array (slot, mechanism and object handle lists).
pub const MAX_ULONG_ARRAY: u32 = 1 << 20;
/// Elements in one `CKA_ALLOWED_MECHANISMS` value.
pub const MAX_MECHANISM_ARRAY: u32 = 65536;
/// `sizeof(CK_ATTRIBUTE)` on LP64: the native length unit of template values.
pub const NATIVE_ATTRIBUTE_SIZE: u32 = 24;
/// `sizeof(CK_ULONG)` on LP64.
pub const NATIVE_ULONG_SIZE: u32 = 8;

/// `CK_VERSION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Version {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
}

/// An `ay` value: an input array, or a reply's output.
#[derive(Clone, PartialEq, Eq)]
pub enum ByteArray {
    /// `01 len bytes`: data (possibly empty).
    Data(Vec<u8>),
    /// `01 FFFFFFFF`: a NULL pointer with length 0 (0.25.0+ senders).
    Null,
    /// `00 len`: no data, only a length (a size-query answer or CKR_BUFFER_TOO_SMALL).
    Length(u32),
}

impl std::fmt::Debug for ByteArray {
    // Never print contents: they may be PINs, plaintext or key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Data(d) => write!(f, "Data({} bytes)", d.len()),
            Self::Null => f.write_str("Null"),
            Self::Length(n) => write!(f, "Length({n})"),
        }
    }
}

/// An `au` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UlongArray {
    /// `01 count values`.
    Data(Vec<u64>),
    /// `00 count`: a count without values.
    Length(u32),
}

/// One entry of an `fA` attribute buffer (a `C_GetAttributeValue` template).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrSlot {
    /// Attribute type.
    pub ty: u64,
    /// The caller's buffer size; 0 means a size query (NULL `pValue`).
    pub buflen: u32,
    /// For template-valued types with a buffer: the nested entries (0.25.4+).
    pub nested: Option<Vec<Self>>,
}

/// An attribute value, decoded by the class of its type.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    /// A `CK_BBOOL`/`CK_BYTE`.
    Byte(u8),
    /// A `CK_ULONG`.
    Ulong(u64),
    /// A byte array; `None` is a NULL value (sent as `FFFFFFFF`).
    Bytes(Option<Vec<u8>>),
    /// A `CK_DATE` as `YYYYMMDD` (8 bytes) or empty; `None` is a NULL value.
    Date(Option<Vec<u8>>),
    /// A nested template.
    Template(Vec<Attribute>),
    /// An array of mechanism types.
    Mechanisms(Vec<u64>),
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Byte(b) => write!(f, "Byte({b})"),
            Self::Ulong(u) => write!(f, "Ulong(0x{u:x})"),
            Self::Bytes(None) => f.write_str("Bytes(NULL)"),
            Self::Bytes(Some(b)) => write!(f, "Bytes({} bytes)", b.len()),
            Self::Date(d) => write!(
                f,
                "Date({:?})",
                d.as_ref().map(|d| String::from_utf8_lossy(d))
            ),
            Self::Template(t) => f.debug_tuple("Template").field(t).finish(),
            Self::Mechanisms(m) => f.debug_tuple("Mechanisms").field(m).finish(),
        }
    }
}

/// Whether an attribute has a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrValue {
    /// Validity 0: `ulValueLen == CK_UNAVAILABLE_INFORMATION` (sensitive, unknown, too small).
    Unavailable,
    /// Validity 1: the native length and the value.
    Present {
        /// The native `ulValueLen` as sent (for a size query this is the answer).
        len: u32,
        /// The decoded value.
        value: Value,
    },
}

/// A `CK_ATTRIBUTE` on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Attribute {
    /// Attribute type (`CKA_*`); sent as u32.
    pub ty: u64,
    /// Validity, length and value.
    pub value: AttrValue,
}

impl std::fmt::Debug for Attribute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = crate::names::or_hex(crate::names::attr_name(self.ty), self.ty);
        match &self.value {
            AttrValue::Unavailable => write!(f, "{name}=<unavailable>"),
            AttrValue::Present { len, value } => write!(f, "{name}[{len}]={value:?}"),
        }
    }
}

impl Value {
    /// The native (LP64) `ulValueLen` of this value.
    pub fn native_len(&self) -> u64 {
        match self {
            Self::Byte(_) => 1,
            Self::Ulong(_) => NATIVE_ULONG_SIZE.into(),
            Self::Bytes(b) | Self::Date(b) => b.as_ref().map_or(0, |b| b.len() as u64),
            Self::Template(t) => t.len() as u64 * u64::from(NATIVE_ATTRIBUTE_SIZE),
            Self::Mechanisms(m) => m.len() as u64 * u64::from(NATIVE_ULONG_SIZE),
        }
    }

    /// The class this value encodes as.
    pub fn class(&self) -> AttrClass {
        match self {
            Self::Byte(_) => AttrClass::Byte,
            Self::Ulong(_) => AttrClass::Ulong,
            Self::Bytes(_) => AttrClass::Bytes,
            Self::Date(_) => AttrClass::Date,
            Self::Template(_) => AttrClass::Template,
            Self::Mechanisms(_) => AttrClass::MechanismArray,
        }
    }

    /// The value a NULL `pValue` encodes as, for a size-query answer of `len` bytes.
    ///
    /// For `CKA_ALLOWED_MECHANISMS` this is `len / 8` zero mechanisms: stock servers send the
    /// count without elements, which no stock client can parse (rpc §3.2, §12.5).
    pub fn null_of(class: AttrClass, len: u32) -> Self {
        match class {
            AttrClass::Byte => Self::Byte(0),
            AttrClass::Ulong => Self::Ulong(0),
            AttrClass::Bytes => Self::Bytes(None),
            AttrClass::Date => Self::Date(None),
            AttrClass::Template => Self::Template(Vec::new()),
            AttrClass::MechanismArray => {
                let n = (len / NATIVE_ULONG_SIZE).min(MAX_MECHANISM_ARRAY);
                Self::Mechanisms(vec![0; n as usize])
            }
        }
    }
}

impl Attribute {
    /// An attribute with a value; the length is the value's native length.
    pub fn new(ty: u64, value: Value) -> Self {
        let len = u32::try_from(value.native_len()).unwrap_or(u32::MAX);
        Self {
            ty,
            value: AttrValue::Present { len, value },
        }
    }

    /// A `CK_BBOOL` attribute.
    pub fn bool(ty: u64, v: bool) -> Self {
        Self::new(ty, Value::Byte(u8::from(v)))
    }

    /// A `CK_ULONG` attribute.
    pub fn ulong(ty: u64, v: u64) -> Self {
        Self::new(ty, Value::Ulong(v))
    }

    /// A byte-array attribute.
    pub fn bytes(ty: u64, v: impl Into<Vec<u8>>) -> Self {
        Self::new(ty, Value::Bytes(Some(v.into())))
    }

    /// A validity-0 attribute.
    pub fn unavailable(ty: u64) -> Self {
        Self {
            ty,
            value: AttrValue::Unavailable,
        }
    }

    /// A size-query answer: length `len` with the class's NULL value (rpc §3.2).
    pub fn size_only(ty: u64, len: u32, dialect: Dialect) -> Self {
        let value = Value::null_of(dialect.attr_class(ty), len);
        Self {
            ty,
            value: AttrValue::Present { len, value },
        }
    }

    /// The value, if present.
    pub fn value(&self) -> Option<&Value> {
        match &self.value {
            AttrValue::Present { value, .. } => Some(value),
            AttrValue::Unavailable => None,
        }
    }

    /// The native length: `None` when unavailable.
    pub fn native_len(&self) -> Option<u32> {
        match &self.value {
            AttrValue::Present { len, .. } => Some(*len),
            AttrValue::Unavailable => None,
        }
    }

    /// Whether the attribute is unavailable (validity 0).
    pub fn is_unavailable(&self) -> bool {
        matches!(self.value, AttrValue::Unavailable)
    }

    /// The value as a `CK_ULONG`, if it is one.
    pub fn as_ulong(&self) -> Option<u64> {
        match self.value()? {
            Value::Ulong(v) => Some(*v),
            _ => None,
        }
    }

    /// The value as a `CK_BBOOL`, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self.value()? {
            Value::Byte(v) => Some(*v != 0),
            _ => None,
        }
    }

    /// The value as bytes (byte arrays and dates).
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self.value()? {
            Value::Bytes(Some(b)) | Value::Date(Some(b)) => Some(b),
            _ => None,
        }
    }

    /// The value as a list of mechanisms.
    pub fn as_mechanisms(&self) -> Option<&[u64]> {
        match self.value()? {
            Value::Mechanisms(m) => Some(m),
            _ => None,
        }
    }

    /// Encode as one ATTR of an `aA` (rpc §3.1).
    pub fn encode(&self, w: &mut Writer, dialect: Dialect) -> Result<(), Error> {
        let ty =
            u32::try_from(self.ty).map_err(|_| Error::Invalid("attribute type above 32 bits"))?;
        w.u32(ty);
        let (len, value) = match &self.value {
            AttrValue::Unavailable => {
                w.u8(0);
                return Ok(());
            }
            AttrValue::Present { len, value } => (*len, value),
        };
        w.u8(1);
        w.u32(len);
        let class = dialect.attr_class(self.ty);
        if value.class() != class {
            return Err(Error::Invalid(
                "attribute value does not match the class of its type",
            ));
        }
        match value {
            Value::Byte(b) => w.u8(*b),
            Value::Ulong(u) => w.u64(*u),
            Value::Bytes(b) => w.byte_array(b.as_deref())?,
            Value::Date(d) => {
                if d.as_ref().is_some_and(|d| d.len() != 8 && !d.is_empty()) {
                    return Err(Error::Invalid("CK_DATE must be 8 bytes or empty"));
                }
                w.byte_array(d.as_deref())?;
            }
            Value::Template(t) => {
                w.count(t.len())?;
                for a in t {
                    a.encode(w, dialect)?;
                }
            }
            Value::Mechanisms(m) => {
                w.count(m.len())?;
                for v in m {
                    w.u64(*v);
                }
            }
        }
        Ok(())
    }

    /// Decode one ATTR (rpc §3.1). `length` is kept as sent; sizes come from the value.
    pub fn decode(
        r: &mut Reader<'_>,
        dialect: Dialect,
        depth: usize,
    ) -> Result<Self, ProtocolError> {
        if depth > MAX_TEMPLATE_DEPTH {
            return Err(ProtocolError::TooDeep(MAX_TEMPLATE_DEPTH));
        }
        let ty = u64::from(r.u32("attribute type")?);
        let validity = r.u8("attribute validity")?;
        if validity == 0 {
            return Ok(Self::unavailable(ty));
        }
        let len = r.u32("attribute length")?;
        let value = match dialect.attr_class(ty) {
            AttrClass::Byte => Value::Byte(r.u8("attribute byte value")?),
            AttrClass::Ulong => Value::Ulong(r.u64("attribute ulong value")?),
            AttrClass::Bytes => Value::Bytes(r.byte_array("attribute value")?.map(<[u8]>::to_vec)),
            AttrClass::Date => {
                let d = r.byte_array("attribute date")?;
                if d.is_some_and(|d| !d.is_empty() && d.len() != 8) {
                    return Err(ProtocolError::BadValue("CK_DATE length"));
                }
                Value::Date(d.map(<[u8]>::to_vec))
            }
            AttrClass::Template => {
                // Each nested ATTR takes at least 5 bytes (type + validity).
                let n = r.count("template count", 5, MAX_ATTRIBUTES)?;
                let mut t = Vec::with_capacity(n);
                for _ in 0..n {
                    t.push(Self::decode(r, dialect, depth + 1)?);
                }
                Value::Template(t)
            }
            AttrClass::MechanismArray => {
                let n = r.count("mechanism array count", 8, MAX_MECHANISM_ARRAY)?;
                let mut m = Vec::with_capacity(n);
                for _ in 0..n {
                    m.push(r.u64("mechanism type")?);
                }
                Value::Mechanisms(m)
            }
        };
        Ok(Self {
            ty,
            value: AttrValue::Present { len, value },
        })
    }
}

/// Encode an `aA` array.
pub fn encode_attributes(
    w: &mut Writer,
    attrs: &[Attribute],
    dialect: Dialect,
) -> Result<(), Error> {
    w.count(attrs.len())?;
    for a in attrs {
        a.encode(w, dialect)?;
    }
    Ok(())
}

/// Decode an `aA` array.
pub fn decode_attributes(
    r: &mut Reader<'_>,
    dialect: Dialect,
) -> Result<Vec<Attribute>, ProtocolError> {
    let n = r.count("attribute count", 5, MAX_ATTRIBUTES)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(Attribute::decode(r, dialect, 0)?);
    }
    Ok(v)
}

/// How `fA` entries of template type are laid out by the sender (rpc §3, §14 D2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrBufferLayout {
    /// ≤ 0.25.3: no nested lists at all.
    Flat,
    /// 0.25.6+: a nested `fA` follows a template-type entry whose buffer length is non-zero.
    NestedIfBuffer,
    /// 0.25.4/0.25.5: a nested `fA` follows every template-type entry, a count of 0 for a size
    /// query.
    NestedAlways,
}

/// Encode an `fA` attribute buffer in `layout`.
pub fn encode_attr_buffer(
    w: &mut Writer,
    slots: &[AttrSlot],
    layout: AttrBufferLayout,
) -> Result<(), Error> {
    w.count(slots.len())?;
    for s in slots {
        let ty = u32::try_from(s.ty).map_err(|_| Error::Invalid("attribute type above 32 bits"))?;
        w.u32(ty);
        w.u32(s.buflen);
        if is_template_type(s.ty) {
            match layout {
                AttrBufferLayout::Flat => {}
                AttrBufferLayout::NestedIfBuffer if s.buflen == 0 => {}
                AttrBufferLayout::NestedIfBuffer | AttrBufferLayout::NestedAlways => {
                    encode_attr_buffer(w, s.nested.as_deref().unwrap_or(&[]), layout)?;
                }
            }
        }
    }
    Ok(())
}

/// Decode an `fA` attribute buffer laid out as `layout`.
pub fn decode_attr_buffer(
    r: &mut Reader<'_>,
    layout: AttrBufferLayout,
    depth: usize,
) -> Result<Vec<AttrSlot>, ProtocolError> {
    if depth > MAX_TEMPLATE_DEPTH {
        return Err(ProtocolError::TooDeep(MAX_TEMPLATE_DEPTH));
    }
    let n = r.count("attribute buffer count", 8, MAX_ATTRIBUTES)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let ty = u64::from(r.u32("attribute type")?);
        let buflen = r.u32("attribute buffer length")?;
        let nested = if !is_template_type(ty) {
            None
        } else {
            match layout {
                AttrBufferLayout::Flat => None,
                AttrBufferLayout::NestedIfBuffer if buflen == 0 => None,
                AttrBufferLayout::NestedIfBuffer | AttrBufferLayout::NestedAlways => {
                    let nested = decode_attr_buffer(r, layout, depth + 1)?;
                    // A size query carries a (spurious) empty list in the 0.25.4/5 layout.
                    (buflen != 0).then_some(nested)
                }
            }
        };
        v.push(AttrSlot { ty, buflen, nested });
    }
    Ok(v)
}

/// A `CK_MECHANISM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mechanism {
    /// Mechanism type (`CKM_*`); sent as u32.
    pub ty: u64,
    /// Its parameter.
    pub param: MechParam,
}

impl Mechanism {
    /// A mechanism without a parameter.
    pub fn new(ty: u64) -> Self {
        Self {
            ty,
            param: MechParam::None,
        }
    }

    /// A mechanism with a parameter.
    pub fn with(ty: u64, param: MechParam) -> Self {
        Self { ty, param }
    }
}

/// A mechanism parameter, in the structured form p11-kit's serializers use (rpc §5.1).
#[derive(Clone, PartialEq, Eq)]
pub enum MechParam {
    /// No parameter (`pParameter = NULL, ulParameterLen = 0`).
    None,
    /// Opaque native bytes: a parameter without a serializer, passed through as a byte array.
    Raw(Vec<u8>),
    /// `CK_RSA_PKCS_PSS_PARAMS`.
    RsaPkcsPss {
        /// `hashAlg` (`CKM_SHA256`, ...).
        hash_alg: u64,
        /// `mgf` (`CKG_MGF1_SHA256`, ...).
        mgf: u64,
        /// `sLen`.
        salt_len: u64,
    },
    /// `CK_RSA_PKCS_OAEP_PARAMS`.
    RsaPkcsOaep {
        /// `hashAlg`.
        hash_alg: u64,
        /// `mgf`.
        mgf: u64,
        /// `source` (`CKZ_DATA_SPECIFIED` or 0).
        source: u64,
        /// `pSourceData` (the label); `None` is NULL.
        source_data: Option<Vec<u8>>,
    },
    /// `CK_ECDH1_DERIVE_PARAMS` (also used by the IBM X25519/X448 mechanisms).
    Ecdh1Derive {
        /// `kdf` (`CKD_NULL`, ...).
        kdf: u64,
        /// `pSharedData`; `None` is NULL.
        shared_data: Option<Vec<u8>>,
        /// `pPublicData`: the peer's public value.
        public_data: Option<Vec<u8>>,
    },
    /// An IV: 16 bytes for the AES modes, 8 for the DES modes.
    Iv(Vec<u8>),
    /// `CK_AES_CTR_PARAMS`.
    AesCtr {
        /// `ulCounterBits`.
        counter_bits: u64,
        /// `cb`: the counter block.
        cb: [u8; 16],
    },
    /// `CK_GCM_PARAMS`.
    AesGcm {
        /// `pIv`; `None` is NULL.
        iv: Option<Vec<u8>>,
        /// `ulIvBits`.
        iv_bits: u64,
        /// `pAAD`; `None` is NULL.
        aad: Option<Vec<u8>>,
        /// `ulTagBits`.
        tag_bits: u64,
    },
    /// `CK_MAC_GENERAL_PARAMS`: the MAC length.
    MacGeneral(u64),
    /// The other party's DH public value (must not be empty).
    DhPkcsDerive(Vec<u8>),
    /// `CK_IBM_ECDSA_OTHER_PARAMS`.
    IbmEcdsaOther(u64),
    /// `CK_IBM_ATTRIBUTEBOUND_WRAP_PARAMS`.
    IbmAttrBoundWrap(u64),
    /// `CK_IBM_BTC_DERIVE_PARAMS`.
    IbmBtcDerive {
        /// `type`.
        ty: u64,
        /// `childKeyIndex`.
        child_key_index: u64,
        /// `pChainCode`.
        chain_code: Option<Vec<u8>>,
        /// `version`.
        version: u64,
    },
    /// `CK_IBM_KYBER_PARAMS`.
    IbmKyber {
        /// `ulVersion`.
        version: u64,
        /// `mode`.
        mode: u64,
        /// `kdf`.
        kdf: u64,
        /// `bPrepend`.
        prepend: u8,
        /// `pCipher`.
        cipher: Option<Vec<u8>>,
        /// `pSharedData`.
        shared_data: Option<Vec<u8>>,
        /// `hSecret`.
        secret: u64,
    },
}

impl std::fmt::Debug for MechParam {
    // Parameters can hold labels and peer public values but no secrets; still, keep logs short.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Raw(b) => write!(f, "Raw({} bytes)", b.len()),
            Self::RsaPkcsPss {
                hash_alg,
                mgf,
                salt_len,
            } => {
                write!(f, "Pss(hash=0x{hash_alg:x}, mgf={mgf}, salt={salt_len})")
            }
            Self::RsaPkcsOaep {
                hash_alg,
                mgf,
                source,
                source_data,
            } => write!(
                f,
                "Oaep(hash=0x{hash_alg:x}, mgf={mgf}, source={source}, label={:?})",
                source_data.as_ref().map(Vec::len)
            ),
            Self::Ecdh1Derive {
                kdf,
                shared_data,
                public_data,
            } => write!(
                f,
                "Ecdh1(kdf={kdf}, shared={:?}, public={:?})",
                shared_data.as_ref().map(Vec::len),
                public_data.as_ref().map(Vec::len)
            ),
            Self::Iv(iv) => write!(f, "Iv({} bytes)", iv.len()),
            Self::AesCtr { counter_bits, .. } => write!(f, "AesCtr(bits={counter_bits})"),
            Self::AesGcm {
                iv_bits, tag_bits, ..
            } => {
                write!(f, "Gcm(iv_bits={iv_bits}, tag_bits={tag_bits})")
            }
            Self::MacGeneral(n) => write!(f, "MacGeneral({n})"),
            Self::DhPkcsDerive(p) => write!(f, "DhPkcsDerive({} bytes)", p.len()),
            Self::IbmEcdsaOther(v) => write!(f, "IbmEcdsaOther({v})"),
            Self::IbmAttrBoundWrap(v) => write!(f, "IbmAttrBoundWrap({v})"),
            Self::IbmBtcDerive { .. } => f.write_str("IbmBtcDerive"),
            Self::IbmKyber { .. } => f.write_str("IbmKyber"),
        }
    }
}

impl MechParam {
    /// The parameter as native LP64 little-endian bytes, for structures without pointers.
    ///
    /// This is how a structured parameter reaches a server whose generation has no serializer
    /// for it: such a server passes unknown parameters to its module as raw bytes (rpc §5.2),
    /// which is correct for flat structures on an LP64 little-endian server (x86-64, aarch64).
    /// Structures with pointers return `None`: they cannot cross.
    pub fn native_flat(&self) -> Option<Vec<u8>> {
        let mut v = Vec::new();
        match self {
            Self::None => return None,
            Self::Raw(b) | Self::Iv(b) | Self::DhPkcsDerive(b) => v.extend_from_slice(b),
            Self::RsaPkcsPss {
                hash_alg,
                mgf,
                salt_len,
            } => {
                for x in [hash_alg, mgf, salt_len] {
                    v.extend_from_slice(&x.to_le_bytes());
                }
            }
            Self::AesCtr { counter_bits, cb } => {
                v.extend_from_slice(&counter_bits.to_le_bytes());
                v.extend_from_slice(cb);
            }
            Self::MacGeneral(x) | Self::IbmEcdsaOther(x) | Self::IbmAttrBoundWrap(x) => {
                v.extend_from_slice(&x.to_le_bytes());
            }
            Self::RsaPkcsOaep { .. }
            | Self::Ecdh1Derive { .. }
            | Self::AesGcm { .. }
            | Self::IbmBtcDerive { .. }
            | Self::IbmKyber { .. } => return None,
        }
        Some(v)
    }

    fn encode_with(&self, codec: ParamCodec, w: &mut Writer) -> Result<(), Error> {
        const MISMATCH: Error = Error::Unsupported {
            what: "mechanism parameter does not match the mechanism",
            rv: crate::Rv(CKR_MECHANISM_PARAM_INVALID),
        };
        match (codec, self) {
            (
                ParamCodec::RsaPkcsPss,
                Self::RsaPkcsPss {
                    hash_alg,
                    mgf,
                    salt_len,
                },
            ) => {
                w.u64(*hash_alg);
                w.u64(*mgf);
                w.u64(*salt_len);
            }
            (
                ParamCodec::RsaPkcsOaep,
                Self::RsaPkcsOaep {
                    hash_alg,
                    mgf,
                    source,
                    source_data,
                },
            ) => {
                w.u64(*hash_alg);
                w.u64(*mgf);
                w.u64(*source);
                w.byte_array(source_data.as_deref())?;
            }
            (
                ParamCodec::Ecdh1Derive,
                Self::Ecdh1Derive {
                    kdf,
                    shared_data,
                    public_data,
                },
            ) => {
                w.u64(*kdf);
                w.byte_array(shared_data.as_deref())?;
                w.byte_array(public_data.as_deref())?;
            }
            (ParamCodec::AesIv, Self::Iv(iv)) if iv.len() == 16 => w.byte_array(Some(iv))?,
            (ParamCodec::DesIv, Self::Iv(iv)) if iv.len() == 8 => w.byte_array(Some(iv))?,
            (ParamCodec::AesCtr, Self::AesCtr { counter_bits, cb }) => {
                w.u64(*counter_bits);
                w.byte_array(Some(cb))?;
            }
            (
                ParamCodec::AesGcm,
                Self::AesGcm {
                    iv,
                    iv_bits,
                    aad,
                    tag_bits,
                },
            ) => {
                w.byte_array(iv.as_deref())?;
                w.u64(*iv_bits);
                w.byte_array(aad.as_deref())?;
                w.u64(*tag_bits);
            }
            (ParamCodec::MacGeneral, Self::MacGeneral(n)) => w.u64(*n),
            (ParamCodec::DhPkcsDerive, Self::DhPkcsDerive(p)) if !p.is_empty() => {
                w.byte_array(Some(p))?;
            }
            (ParamCodec::IbmEcdsaOther, Self::IbmEcdsaOther(v))
            | (ParamCodec::IbmAttrBoundWrap, Self::IbmAttrBoundWrap(v)) => w.u64(*v),
            (
                ParamCodec::IbmBtcDerive,
                Self::IbmBtcDerive {
                    ty,
                    child_key_index,
                    chain_code,
                    version,
                },
            ) => {
                w.u64(*ty);
                w.u64(*child_key_index);
                w.byte_array(chain_code.as_deref())?;
                w.u64(*version);
            }
            (
                ParamCodec::IbmKyber,
                Self::IbmKyber {
                    version,
                    mode,
                    kdf,
                    prepend,
                    cipher,
                    shared_data,
                    secret,
                },
            ) => {
                w.u64(*version);
                w.u64(*mode);
                w.u64(*kdf);
                w.u8(*prepend);
                w.byte_array(cipher.as_deref())?;
                w.byte_array(shared_data.as_deref())?;
                w.u64(*secret);
            }
            _ => return Err(MISMATCH),
        }
        Ok(())
    }

    fn decode_with(codec: ParamCodec, r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        let ba = |r: &mut Reader<'_>, what| r.byte_array(what).map(|b| b.map(<[u8]>::to_vec));
        Ok(match codec {
            ParamCodec::RsaPkcsPss => Self::RsaPkcsPss {
                hash_alg: r.u64("PSS hashAlg")?,
                mgf: r.u64("PSS mgf")?,
                salt_len: r.u64("PSS sLen")?,
            },
            ParamCodec::RsaPkcsOaep => Self::RsaPkcsOaep {
                hash_alg: r.u64("OAEP hashAlg")?,
                mgf: r.u64("OAEP mgf")?,
                source: r.u64("OAEP source")?,
                source_data: ba(r, "OAEP source data")?,
            },
            ParamCodec::Ecdh1Derive => Self::Ecdh1Derive {
                kdf: r.u64("ECDH kdf")?,
                shared_data: ba(r, "ECDH shared data")?,
                public_data: ba(r, "ECDH public data")?,
            },
            ParamCodec::AesIv | ParamCodec::DesIv => {
                let want = if codec == ParamCodec::AesIv { 16 } else { 8 };
                match r.byte_array("IV")? {
                    Some(iv) if iv.len() == want => Self::Iv(iv.to_vec()),
                    _ => return Err(ProtocolError::BadValue("IV length")),
                }
            }
            ParamCodec::AesCtr => {
                let counter_bits = r.u64("CTR counter bits")?;
                let cb: [u8; 16] = r
                    .byte_array("CTR counter block")?
                    .and_then(|b| b.try_into().ok())
                    .ok_or(ProtocolError::BadValue("CTR counter block length"))?;
                Self::AesCtr { counter_bits, cb }
            }
            ParamCodec::AesGcm => Self::AesGcm {
                iv: ba(r, "GCM IV")?,
                iv_bits: r.u64("GCM IV bits")?,
                aad: ba(r, "GCM AAD")?,
                tag_bits: r.u64("GCM tag bits")?,
            },
            ParamCodec::MacGeneral => Self::MacGeneral(r.u64("MAC length")?),
            ParamCodec::DhPkcsDerive => match r.byte_array("DH public value")? {
                Some(p) if !p.is_empty() => Self::DhPkcsDerive(p.to_vec()),
                _ => return Err(ProtocolError::BadValue("empty DH public value")),
            },
            ParamCodec::IbmEcdsaOther => Self::IbmEcdsaOther(r.u64("ECDSA other")?),
            ParamCodec::IbmAttrBoundWrap => Self::IbmAttrBoundWrap(r.u64("attrbound key")?),
            ParamCodec::IbmBtcDerive => Self::IbmBtcDerive {
                ty: r.u64("BTC type")?,
                child_key_index: r.u64("BTC child index")?,
                chain_code: ba(r, "BTC chain code")?,
                version: r.u64("BTC version")?,
            },
            ParamCodec::IbmKyber => Self::IbmKyber {
                version: r.u64("Kyber version")?,
                mode: r.u64("Kyber mode")?,
                kdf: r.u64("Kyber kdf")?,
                prepend: r.u8("Kyber prepend")?,
                cipher: ba(r, "Kyber cipher")?,
                shared_data: ba(r, "Kyber shared data")?,
                secret: r.u64("Kyber secret")?,
            },
        })
    }
}

/// The NULL-mechanism marker (a `C_*Init(NULL)` cancel), 0.25.3+.
pub const NULL_MECHANISM: u32 = 0xFFFF_FFFF;

/// Encode an `M` (rpc §5.2): `None` is the NULL mechanism.
pub fn encode_mechanism(
    w: &mut Writer,
    mech: Option<&Mechanism>,
    dialect: Dialect,
) -> Result<(), Error> {
    let Some(mech) = mech else {
        if !dialect.has_null_mechanism() {
            return Err(Error::Unsupported {
                what: "cancelling an operation needs p11-kit 0.25 or later on the server",
                rv: crate::Rv(CKR_FUNCTION_NOT_SUPPORTED),
            });
        }
        w.u32(NULL_MECHANISM);
        return Ok(());
    };
    let ty = u32::try_from(mech.ty)
        .ok()
        .filter(|t| *t != NULL_MECHANISM)
        .ok_or(Error::Invalid("mechanism type above 32 bits"))?;
    w.u32(ty);
    let serializer = dialect.serializer(mech.ty);
    let unsupported = || Error::Unsupported {
        what: "the server's p11-kit version cannot carry this mechanism's parameters",
        rv: crate::Rv(CKR_MECHANISM_PARAM_INVALID),
    };
    match dialect.mech_framing() {
        MechFraming::V0 => match (serializer, &mech.param) {
            (Some(codec), p) if *p != MechParam::None => p.encode_with(codec, w),
            // 0.24.1 makes a NULL PSS parameter a local CKR_HOST_MEMORY; we refuse it as bad.
            (Some(_), _) => Err(Error::Unsupported {
                what: "this mechanism needs a parameter",
                rv: crate::Rv(CKR_MECHANISM_PARAM_INVALID),
            }),
            (None, MechParam::None) => w.byte_array(None),
            (None, p) => w.byte_array(Some(&p.native_flat().ok_or_else(unsupported)?)),
        },
        MechFraming::V2 => {
            if dialect.is_noparam(mech.ty) {
                // The list is part of the wire format: nothing may follow (stock drops params).
                return Ok(());
            }
            if mech.param == MechParam::None {
                w.u8(0);
                return Ok(());
            }
            w.u8(1);
            match serializer {
                Some(codec) => mech.param.encode_with(codec, w),
                None => w.byte_array(Some(&mech.param.native_flat().ok_or_else(unsupported)?)),
            }
        }
    }
}

/// Decode an `M` (rpc §5.2): `None` is the NULL mechanism, accepted in both framings.
pub fn decode_mechanism(
    r: &mut Reader<'_>,
    dialect: Dialect,
) -> Result<Option<Mechanism>, ProtocolError> {
    let ty = r.u32("mechanism type")?;
    if ty == NULL_MECHANISM {
        return Ok(None);
    }
    let ty = u64::from(ty);
    let serializer = dialect.serializer(ty);
    let param = match dialect.mech_framing() {
        MechFraming::V0 => match serializer {
            Some(codec) => MechParam::decode_with(codec, r)?,
            None => raw_param(r)?,
        },
        MechFraming::V2 => {
            // No-parameter mechanisms carry nothing; the others a has_param byte.
            if dialect.is_noparam(ty) || r.u8("mechanism has_param")? == 0 {
                MechParam::None
            } else {
                match serializer {
                    Some(codec) => MechParam::decode_with(codec, r)?,
                    None => raw_param(r)?,
                }
            }
        }
    };
    Ok(Some(Mechanism { ty, param }))
}

fn raw_param(r: &mut Reader<'_>) -> Result<MechParam, ProtocolError> {
    Ok(match r.byte_array("mechanism parameter")? {
        None => MechParam::None,
        Some([]) => MechParam::None,
        Some(b) => MechParam::Raw(b.to_vec()),
    })
}

/// `CK_IBM_KYBER_KEM_ENCAPSULATE`.
pub const IBM_KYBER_KEM_ENCAPSULATE: u8 = 1;

/// The `P` value of a `C_DeriveKey2` reply: the mechanism parameter written back (rpc §5.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MechUpdate {
    /// A no-parameter mechanism: nothing on the wire.
    Absent,
    /// `u8 0`: a NULL parameter.
    Null,
    /// `u8 1`, then the update serializer's encoding (only the IBM BTC and Kyber mechanisms
    /// have one).
    Present(ParamUpdate),
}

/// An updated mechanism parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamUpdate {
    /// No update serializer: nothing follows the `01`.
    Empty,
    /// `CKM_IBM_BTC_DERIVE`: the chain code (`has_data` then a byte array or a length).
    IbmBtcDerive(ByteArray),
    /// `CKM_IBM_KYBER`: the mode, and for encapsulation the cipher.
    IbmKyber {
        /// `mode` as a byte.
        mode: u8,
        /// The cipher (only when `mode` is encapsulate).
        cipher: Option<ByteArray>,
    },
}

fn encode_flagged_array(w: &mut Writer, a: &ByteArray) -> Result<(), Error> {
    match a {
        ByteArray::Length(n) => {
            w.u8(0);
            w.u32(*n);
        }
        ByteArray::Data(d) => {
            w.u8(1);
            w.byte_array(Some(d))?;
        }
        ByteArray::Null => {
            w.u8(1);
            w.byte_array(None)?;
        }
    }
    Ok(())
}

fn decode_flagged_array(r: &mut Reader<'_>) -> Result<ByteArray, ProtocolError> {
    Ok(if r.u8("update has_data")? != 0 {
        match r.byte_array("update data")? {
            Some(d) => ByteArray::Data(d.to_vec()),
            None => ByteArray::Null,
        }
    } else {
        ByteArray::Length(r.u32("update length")?)
    })
}

impl MechUpdate {
    fn encode(&self, w: &mut Writer) -> Result<(), Error> {
        match self {
            Self::Absent => {}
            Self::Null => w.u8(0),
            Self::Present(u) => {
                w.u8(1);
                match u {
                    ParamUpdate::Empty => {}
                    ParamUpdate::IbmBtcDerive(a) => encode_flagged_array(w, a)?,
                    ParamUpdate::IbmKyber { mode, cipher } => {
                        w.u8(*mode);
                        if *mode == IBM_KYBER_KEM_ENCAPSULATE {
                            encode_flagged_array(w, cipher.as_ref().unwrap_or(&ByteArray::Null))?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Decode a `P`; `mech` is the request's mechanism type (the layout depends on it).
    fn decode(
        r: &mut Reader<'_>,
        dialect: Dialect,
        mech: Option<u64>,
    ) -> Result<Self, ProtocolError> {
        if mech.is_some_and(|m| dialect.is_noparam(m)) {
            return Ok(Self::Absent);
        }
        if r.u8("mechanism update has_param")? == 0 {
            return Ok(Self::Null);
        }
        Ok(Self::Present(match mech {
            Some(CKM_IBM_BTC_DERIVE) => ParamUpdate::IbmBtcDerive(decode_flagged_array(r)?),
            Some(CKM_IBM_KYBER) => {
                let mode = r.u8("Kyber update mode")?;
                let cipher = if mode == IBM_KYBER_KEM_ENCAPSULATE {
                    Some(decode_flagged_array(r)?)
                } else {
                    None
                };
                ParamUpdate::IbmKyber { mode, cipher }
            }
            _ => ParamUpdate::Empty,
        }))
    }
}

/// One argument of a request or reply, by signature code (rpc §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// `y`
    Byte(u8),
    /// `u`
    Ulong(u64),
    /// `v`
    Version(Version),
    /// `s`: a fixed-width, space-padded string (exact width checked against the call).
    Space(Vec<u8>),
    /// `z`: a NUL-terminated string, sent without the NUL.
    Zstr(Vec<u8>),
    /// `ay`
    ByteArray(ByteArray),
    /// `au`
    UlongArray(UlongArray),
    /// `fy`: an output byte buffer's capacity (0 = size query; `0xFFFFFFFF` = non-NULL, empty).
    ByteBuffer(u32),
    /// `fu`: an output ulong buffer's capacity (0 = size query).
    UlongBuffer(u32),
    /// `aA`
    Attributes(Vec<Attribute>),
    /// `fA`
    AttrBuffer(Vec<AttrSlot>),
    /// `M`: `None` is the NULL mechanism.
    Mechanism(Option<Mechanism>),
    /// `P`
    MechUpdate(MechUpdate),
}

/// Zero every byte array, attribute value and raw mechanism parameter of `args` in place
/// (a request's secrets, before its memory is freed).
pub(crate) fn wipe_args(args: &mut [Arg]) {
    use zeroize::Zeroize;
    fn attributes(attrs: &mut [Attribute]) {
        for a in attrs {
            if let AttrValue::Present { value, .. } = &mut a.value {
                match value {
                    Value::Bytes(Some(b)) => b.zeroize(),
                    Value::Template(t) => attributes(t),
                    _ => {}
                }
            }
        }
    }
    for arg in args {
        match arg {
            Arg::ByteArray(ByteArray::Data(d)) | Arg::Space(d) | Arg::Zstr(d) => d.zeroize(),
            Arg::Attributes(attrs) => attributes(attrs),
            Arg::Mechanism(Some(Mechanism {
                param: MechParam::Raw(raw),
                ..
            })) => raw.zeroize(),
            _ => {}
        }
    }
}

/// `fy` capacity meaning "a non-NULL buffer of length 0" (0.25.0+).
pub const ZERO_LENGTH_BUFFER: u32 = 0xFFFF_FFFF;

/// One code of a signature string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Code {
    Y,
    U,
    V,
    S,
    Z,
    Ay,
    Au,
    Fy,
    Fu,
    AA,
    FA,
    M,
    P,
}

/// Split a signature into codes. Signatures come from our own table, so they are well formed.
pub(crate) fn codes(sig: &'static str) -> Vec<Code> {
    let b = sig.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let (code, n) = match (b[i], b.get(i + 1)) {
            (b'a', Some(b'y')) => (Code::Ay, 2),
            (b'a', Some(b'u')) => (Code::Au, 2),
            (b'a', Some(b'A')) => (Code::AA, 2),
            (b'f', Some(b'y')) => (Code::Fy, 2),
            (b'f', Some(b'u')) => (Code::Fu, 2),
            (b'f', Some(b'A')) => (Code::FA, 2),
            (b'y', _) => (Code::Y, 1),
            (b'u', _) => (Code::U, 1),
            (b'v', _) => (Code::V, 1),
            (b's', _) => (Code::S, 1),
            (b'z', _) => (Code::Z, 1),
            (b'M', _) => (Code::M, 1),
            (b'P', _) => (Code::P, 1),
            // Unreachable with the generated table; a test checks every signature.
            _ => (Code::U, 1),
        };
        out.push(code);
        i += n;
    }
    out
}

/// Context for encoding or decoding one argument.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ArgContext {
    pub(crate) dialect: Dialect,
    /// Width a `s` must have.
    pub(crate) space_width: Option<usize>,
    /// Layout of an `fA`.
    pub(crate) attr_buffer: AttrBufferLayout,
    /// The request's mechanism, for a `P`.
    pub(crate) mech: Option<u64>,
}

impl Arg {
    pub(crate) fn encode(&self, code: Code, w: &mut Writer, cx: ArgContext) -> Result<(), Error> {
        let mismatch = Err(Error::Protocol(ProtocolError::ArgumentMismatch(
            "argument type",
        )));
        match (code, self) {
            (Code::Y, Self::Byte(b)) => w.u8(*b),
            (Code::U, Self::Ulong(u)) => w.u64(*u),
            (Code::V, Self::Version(v)) => {
                w.u8(v.major);
                w.u8(v.minor);
            }
            (Code::S, Self::Space(s)) => {
                if cx.space_width.is_some_and(|width| width != s.len()) {
                    return Err(Error::Invalid("space-padded string of the wrong width"));
                }
                w.byte_array(Some(s))?;
            }
            (Code::Z, Self::Zstr(s)) => w.byte_array(Some(s))?,
            (Code::Ay, Self::ByteArray(a)) => match a {
                ByteArray::Data(d) => {
                    w.u8(1);
                    w.byte_array(Some(d))?;
                }
                ByteArray::Null => {
                    w.u8(1);
                    w.byte_array(None)?;
                }
                ByteArray::Length(n) => {
                    w.u8(0);
                    w.u32(*n);
                }
            },
            (Code::Au, Self::UlongArray(a)) => match a {
                UlongArray::Data(v) => {
                    w.u8(1);
                    w.count(v.len())?;
                    for x in v {
                        w.u64(*x);
                    }
                }
                UlongArray::Length(n) => {
                    w.u8(0);
                    w.u32(*n);
                }
            },
            (Code::Fy, Self::ByteBuffer(n)) | (Code::Fu, Self::UlongBuffer(n)) => w.u32(*n),
            (Code::AA, Self::Attributes(a)) => encode_attributes(w, a, cx.dialect)?,
            (Code::FA, Self::AttrBuffer(s)) => encode_attr_buffer(w, s, cx.attr_buffer)?,
            (Code::M, Self::Mechanism(m)) => encode_mechanism(w, m.as_ref(), cx.dialect)?,
            (Code::P, Self::MechUpdate(u)) => u.encode(w)?,
            _ => return mismatch,
        }
        Ok(())
    }

    pub(crate) fn decode(
        code: Code,
        r: &mut Reader<'_>,
        cx: ArgContext,
    ) -> Result<Self, ProtocolError> {
        Ok(match code {
            Code::Y => Self::Byte(r.u8("byte")?),
            Code::U => Self::Ulong(r.u64("ulong")?),
            Code::V => Self::Version(Version {
                major: r.u8("version")?,
                minor: r.u8("version")?,
            }),
            Code::S => {
                let s = r
                    .byte_array("space-padded string")?
                    .ok_or(ProtocolError::BadValue("NULL string"))?;
                if cx.space_width.is_some_and(|width| width != s.len()) {
                    return Err(ProtocolError::BadValue("space-padded string width"));
                }
                Self::Space(s.to_vec())
            }
            Code::Z => Self::Zstr(
                r.byte_array("string")?
                    .ok_or(ProtocolError::BadValue("NULL string"))?
                    .to_vec(),
            ),
            Code::Ay => {
                if r.u8("byte array present")? == 0 {
                    Self::ByteArray(ByteArray::Length(r.u32("byte array length")?))
                } else {
                    Self::ByteArray(match r.byte_array("byte array")? {
                        Some(d) => ByteArray::Data(d.to_vec()),
                        None => ByteArray::Null,
                    })
                }
            }
            Code::Au => {
                let present = r.u8("ulong array present")?;
                if present == 0 {
                    Self::UlongArray(UlongArray::Length(r.u32("ulong array length")?))
                } else {
                    let n = r.count("ulong array count", 8, MAX_ULONG_ARRAY)?;
                    let mut v = Vec::with_capacity(n);
                    for _ in 0..n {
                        v.push(r.u64("ulong array element")?);
                    }
                    Self::UlongArray(UlongArray::Data(v))
                }
            }
            Code::Fy => Self::ByteBuffer(r.u32("byte buffer length")?),
            Code::Fu => Self::UlongBuffer(r.u32("ulong buffer length")?),
            Code::AA => Self::Attributes(decode_attributes(r, cx.dialect)?),
            Code::FA => Self::AttrBuffer(decode_attr_buffer(r, cx.attr_buffer, 0)?),
            Code::M => Self::Mechanism(decode_mechanism(r, cx.dialect)?),
            Code::P => Self::MechUpdate(MechUpdate::decode(r, cx.dialect, cx.mech)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wiping_request_arguments_zeroes_every_secret_byte() {
        let mut args = vec![
            Arg::Ulong(7),
            Arg::ByteArray(ByteArray::Data(b"123456".to_vec())),
            Arg::Attributes(vec![
                Attribute::bytes(CKA_VALUE, b"secret key"),
                Attribute {
                    ty: CKA_WRAP_TEMPLATE,
                    value: AttrValue::Present {
                        len: 24,
                        value: Value::Template(vec![Attribute::bytes(CKA_VALUE, b"inner")]),
                    },
                },
            ]),
            Arg::Mechanism(Some(Mechanism {
                ty: CKM_AES_CBC,
                param: MechParam::Raw(vec![9; 16]),
            })),
        ];
        wipe_args(&mut args);
        // `Vec::zeroize` zeroes the whole allocation, then empties the vector.
        fn zero(v: &[u8]) -> bool {
            v.is_empty()
        }
        let Arg::ByteArray(ByteArray::Data(pin)) = &args[1] else {
            panic!()
        };
        assert!(zero(pin));
        let Arg::Attributes(attrs) = &args[2] else {
            panic!()
        };
        let value = |a: &Attribute| match &a.value {
            AttrValue::Present { value, .. } => value.clone(),
            AttrValue::Unavailable => panic!(),
        };
        assert_eq!(value(&attrs[0]), Value::Bytes(Some(vec![])));
        let Value::Template(inner) = value(&attrs[1]) else {
            panic!()
        };
        assert_eq!(value(&inner[0]), Value::Bytes(Some(vec![])));
        let Arg::Mechanism(Some(Mechanism {
            param: MechParam::Raw(raw),
            ..
        })) = &args[3]
        else {
            panic!()
        };
        assert!(zero(raw));
        assert_eq!(args[0], Arg::Ulong(7));
    }

    fn enc_mech(m: Option<&Mechanism>, d: Dialect) -> Result<String, Error> {
        let mut w = Writer::new();
        encode_mechanism(&mut w, m, d)?;
        Ok(hex(w.as_slice()))
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn pss() -> Mechanism {
        Mechanism::with(
            CKM_RSA_PKCS_PSS,
            MechParam::RsaPkcsPss {
                hash_alg: CKM_SHA256,
                mgf: CKG_MGF1_SHA256,
                salt_len: 32,
            },
        )
    }

    #[test]
    fn mechanism_framings_match_the_captures() {
        // rpc §5.2 / vectors README §4.1.
        let sha256_rsa = Mechanism::new(CKM_SHA256_RSA_PKCS);
        assert_eq!(
            enc_mech(Some(&sha256_rsa), Dialect::V0).unwrap(),
            "00000040ffffffff"
        );
        assert_eq!(
            enc_mech(Some(&sha256_rsa), Dialect::V2).unwrap(),
            "00000040"
        );
        assert_eq!(
            enc_mech(Some(&pss()), Dialect::V0).unwrap(),
            "0000000d000000000000025000000000000000020000000000000020"
        );
        assert_eq!(
            enc_mech(Some(&pss()), Dialect::V2).unwrap(),
            "0000000d01000000000000025000000000000000020000000000000020"
        );
        let oaep = Mechanism::with(
            CKM_RSA_PKCS_OAEP,
            MechParam::RsaPkcsOaep {
                hash_alg: CKM_SHA_1,
                mgf: CKG_MGF1_SHA1,
                source: CKZ_DATA_SPECIFIED,
                source_data: None,
            },
        );
        assert_eq!(
            enc_mech(Some(&oaep), Dialect::V0).unwrap(),
            "00000009000000000000022000000000000000010000000000000001ffffffff"
        );
        let gcm = Mechanism::with(
            CKM_AES_GCM,
            MechParam::AesGcm {
                iv: Some((0..12).collect()),
                iv_bits: 96,
                aad: Some(vec![0xaa, 0xbb, 0xcc, 0xdd]),
                tag_bits: 128,
            },
        );
        assert_eq!(
            enc_mech(Some(&gcm), Dialect::V1).unwrap(),
            "000010870000000c000102030405060708090a0b000000000000006000000004aabbccdd0000000000000080"
        );
        assert_eq!(
            enc_mech(Some(&gcm), Dialect::V2).unwrap(),
            "00001087010000000c000102030405060708090a0b000000000000006000000004aabbccdd0000000000000080"
        );
        assert_eq!(enc_mech(None, Dialect::V2).unwrap(), "ffffffff");
        assert!(enc_mech(None, Dialect::V0).is_err());
    }

    #[test]
    fn v0_peers_get_flat_parameters_as_native_bytes() {
        // 0.24.1 has no serializer for SHA256_RSA_PKCS_PSS: its server passes a byte array to
        // the module, so we send the native LP64 structure.
        let m = Mechanism::with(
            CKM_SHA256_RSA_PKCS_PSS,
            MechParam::RsaPkcsPss {
                hash_alg: CKM_SHA256,
                mgf: CKG_MGF1_SHA256,
                salt_len: 32,
            },
        );
        assert_eq!(
            enc_mech(Some(&m), Dialect::V0).unwrap(),
            "0000004300000018500200000000000002000000000000002000000000000000"
        );
        // ECDH needs pointers: it cannot reach a 0.24 server.
        let ecdh = Mechanism::with(
            CKM_ECDH1_DERIVE,
            MechParam::Ecdh1Derive {
                kdf: CKD_NULL,
                shared_data: None,
                public_data: Some(vec![4; 65]),
            },
        );
        let err = enc_mech(Some(&ecdh), Dialect::V0).unwrap_err();
        assert_eq!(err.rv().0, CKR_MECHANISM_PARAM_INVALID);
        assert!(enc_mech(Some(&ecdh), Dialect::V1).is_ok());
        // EdDSA without a parameter crosses every generation.
        let eddsa = Mechanism::new(CKM_EDDSA);
        assert_eq!(
            enc_mech(Some(&eddsa), Dialect::V0).unwrap(),
            "00001057ffffffff"
        );
        assert_eq!(enc_mech(Some(&eddsa), Dialect::V2).unwrap(), "0000105700");
    }

    #[test]
    fn mechanisms_round_trip_in_every_dialect() {
        let mechs = vec![
            pss(),
            Mechanism::new(CKM_SHA256),
            Mechanism::new(CKM_EDDSA),
            Mechanism::with(CKM_AES_CBC, MechParam::Iv(vec![7; 16])),
            Mechanism::with(CKM_DES3_CBC, MechParam::Iv(vec![7; 8])),
            Mechanism::with(
                CKM_AES_CTR,
                MechParam::AesCtr {
                    counter_bits: 128,
                    cb: [9; 16],
                },
            ),
            Mechanism::with(CKM_SHA256_HMAC_GENERAL, MechParam::MacGeneral(16)),
            Mechanism::with(CKM_DH_PKCS_DERIVE, MechParam::DhPkcsDerive(vec![1, 2, 3])),
            Mechanism::with(
                CKM_ECDH1_DERIVE,
                MechParam::Ecdh1Derive {
                    kdf: 1,
                    shared_data: Some(vec![]),
                    public_data: Some(vec![4, 5]),
                },
            ),
            Mechanism::with(0x8000_1234, MechParam::Raw(vec![1, 2, 3])),
        ];
        for d in [Dialect::V0, Dialect::V1, Dialect::V2] {
            for m in &mechs {
                let mut w = Writer::new();
                if encode_mechanism(&mut w, Some(m), d).is_err() {
                    // Not expressible to this generation (e.g. ECDH to 0.24).
                    continue;
                }
                let bytes = w.into_inner();
                let mut r = Reader::new(&bytes);
                let back = decode_mechanism(&mut r, d).unwrap().unwrap();
                assert!(r.is_empty(), "{m:?} in {d:?} left bytes");
                if d.serializer(m.ty).is_some() || m.param == MechParam::None {
                    assert_eq!(&back, m, "{d:?}");
                } else {
                    // Without a serializer the receiver sees the native bytes.
                    assert_eq!(back.param, MechParam::Raw(m.param.native_flat().unwrap()));
                }
            }
        }
    }

    #[test]
    fn attributes_use_native_lengths() {
        // rpc §3.1 worked example.
        let attrs = vec![
            Attribute::ulong(CKA_CLASS, CKO_DATA),
            Attribute::bool(CKA_TOKEN, false),
            Attribute::bytes(CKA_LABEL, b"lbl".to_vec()),
            Attribute::bytes(CKA_VALUE, vec![0xde, 0xad, 0xbe, 0xef]),
        ];
        let mut w = Writer::new();
        encode_attributes(&mut w, &attrs, Dialect::V0).unwrap();
        assert_eq!(
            hex(w.as_slice()),
            "00000004\
             0000000001000000080000000000000000\
             000000010100000001\
             00\
             000000030100000003000000036c626c\
             000000110100000004\
             00000004deadbeef"
        );
        let bytes = w.into_inner();
        let mut r = Reader::new(&bytes);
        assert_eq!(decode_attributes(&mut r, Dialect::V0).unwrap(), attrs);

        let t = Attribute::new(
            CKA_WRAP_TEMPLATE,
            Value::Template(vec![
                Attribute::ulong(CKA_CLASS, 4),
                Attribute::ulong(CKA_KEY_TYPE, 0x1f),
            ]),
        );
        let m = Attribute::new(
            CKA_ALLOWED_MECHANISMS,
            Value::Mechanisms(vec![0x1081, 0x1082]),
        );
        let date = Attribute::new(CKA_START_DATE, Value::Date(Some(b"20240131".to_vec())));
        let mut w = Writer::new();
        encode_attributes(&mut w, &[m, date, t], Dialect::V2).unwrap();
        // rpc §3.1: the request a 0.24.1 client sent, byte for byte.
        let expected = [
            "00000003",
            "40000600 01 00000010 00000002 0000000000001081 0000000000001082",
            "00000110 01 00000008 00000008 3230323430313331",
            "40000211 01 00000030 00000002 00000000 01 00000008 0000000000000004 \
             00000100 01 00000008 000000000000001f",
        ]
        .concat()
        .split_whitespace()
        .collect::<String>();
        assert_eq!(hex(w.as_slice()), expected);
    }

    #[test]
    fn size_query_answers_are_parseable() {
        let a = Attribute::size_only(CKA_ALLOWED_MECHANISMS, 40, Dialect::V2);
        let mut w = Writer::new();
        a.encode(&mut w, Dialect::V2).unwrap();
        let b = w.into_inner();
        // count 5 followed by five zero mechanisms (rpc §12.5), length 40.
        assert_eq!(&b[..13], &[0x40, 0, 6, 0, 1, 0, 0, 0, 40, 0, 0, 0, 5]);
        assert_eq!(b.len(), 13 + 40);
        let t = Attribute::size_only(CKA_WRAP_TEMPLATE, 48, Dialect::V2);
        let mut w = Writer::new();
        t.encode(&mut w, Dialect::V2).unwrap();
        assert_eq!(hex(w.as_slice()), "40000211010000003000000000");
    }

    #[test]
    fn rejects_templates_nested_too_deep() {
        let mut a = Attribute::ulong(CKA_CLASS, 1);
        for _ in 0..=MAX_TEMPLATE_DEPTH {
            a = Attribute::new(CKA_WRAP_TEMPLATE, Value::Template(vec![a]));
        }
        let mut w = Writer::new();
        encode_attributes(&mut w, &[a], Dialect::V2).unwrap();
        let b = w.into_inner();
        let err = decode_attributes(&mut Reader::new(&b), Dialect::V2).unwrap_err();
        assert_eq!(err, ProtocolError::TooDeep(MAX_TEMPLATE_DEPTH));
    }

    #[test]
    fn attr_buffer_layouts() {
        let slots = vec![
            AttrSlot {
                ty: CKA_WRAP_TEMPLATE,
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
            },
            AttrSlot {
                ty: CKA_UNWRAP_TEMPLATE,
                buflen: 0,
                nested: None,
            },
            AttrSlot {
                ty: CKA_LABEL,
                buflen: 3,
                nested: None,
            },
        ];
        for layout in [
            AttrBufferLayout::NestedIfBuffer,
            AttrBufferLayout::NestedAlways,
        ] {
            let mut w = Writer::new();
            encode_attr_buffer(&mut w, &slots, layout).unwrap();
            let b = w.into_inner();
            let mut r = Reader::new(&b);
            assert_eq!(decode_attr_buffer(&mut r, layout, 0).unwrap(), slots);
            assert!(r.is_empty());
        }
    }
}
