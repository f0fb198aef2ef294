//! Every `unsafe` operation of the forwarder: loading a PKCS#11 module, calling its function
//! list, and building the native structures (`CK_ATTRIBUTE` arrays, `CK_MECHANISM` parameters,
//! output buffers) those calls take.
//!
//! The rest of the crate sees only [`Library`] and its safe methods, which take and return wire
//! types. Native structures are built by owners ([`NativeTemplate`], [`NativeMechanism`],
//! [`OutTemplate`]) that keep every buffer a pointer refers to alive, on the heap, for as long as
//! the structure itself, so moving an owner never invalidates a pointer.
#![allow(unsafe_code)]
// The function-list fields and C parameter names are the C API's.
#![allow(non_snake_case)]
// `CK_ULONG` is `u64` only on LP64 targets; the casts keep the code right elsewhere.
#![allow(clippy::unnecessary_cast)]

use std::ffi::c_void;
use std::path::Path;
use std::ptr;

use cryptoki_sys::{
    CK_AES_CTR_PARAMS, CK_ATTRIBUTE, CK_C_GetFunctionList, CK_C_GetInterface, CK_C_INITIALIZE_ARGS,
    CK_ECDH1_DERIVE_PARAMS, CK_FUNCTION_LIST, CK_FUNCTION_LIST_3_0, CK_GCM_PARAMS, CK_INFO,
    CK_INTERFACE, CK_MECHANISM, CK_MECHANISM_INFO, CK_RSA_PKCS_OAEP_PARAMS, CK_RSA_PKCS_PSS_PARAMS,
    CK_RV, CK_SESSION_INFO, CK_SLOT_INFO, CK_TOKEN_INFO, CK_ULONG, CK_VERSION,
};
use p11fwd_wire::consts::*;
use p11fwd_wire::dialect::AttrClass;
use p11fwd_wire::info::{Info, MechanismInfo, SessionInfo, SlotInfo, TokenInfo};
use p11fwd_wire::value::Version;
use p11fwd_wire::value::{AttrSlot, AttrValue, Attribute, ByteArray, MechParam, Mechanism, Value};
use p11fwd_wire::{Dialect, Rv};

use super::raw_params::{RawKind, RawParams};
use super::{InOnly, InOut, InitKind, OutBuf, OutOnly};

/// `CK_UNAVAILABLE_INFORMATION`.
const UNAVAILABLE: CK_ULONG = CK_ULONG::MAX;
/// The largest output buffer we allocate for one call (the frame limit is 16 MiB as well).
pub(crate) const MAX_OUT: usize = 16 << 20;

fn rv(r: CK_RV) -> Result<(), Rv> {
    if r == CKR_OK { Ok(()) } else { Err(Rv(r)) }
}

fn not_supported() -> Rv {
    Rv(CKR_FUNCTION_NOT_SUPPORTED)
}

/// Bytes on the heap with 8-byte alignment: mechanism parameters are cast to structures by the
/// module, so they must be aligned like one.
#[derive(Debug, Default)]
struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    fn from_bytes(b: &[u8]) -> Self {
        let mut words = vec![0u64; b.len().div_ceil(8)];
        for (i, chunk) in b.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            words[i] = u64::from_ne_bytes(w);
        }
        Self {
            words,
            len: b.len(),
        }
    }

    fn zeroed(len: usize) -> Self {
        Self {
            words: vec![0u64; len.div_ceil(8)],
            len,
        }
    }

    /// A pointer to the bytes, NULL when empty.
    fn ptr(&mut self) -> *mut c_void {
        if self.len == 0 {
            ptr::null_mut()
        } else {
            self.words.as_mut_ptr().cast()
        }
    }

    fn to_vec(&self, len: usize) -> Vec<u8> {
        let len = len.min(self.len);
        self.words
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .take(len)
            .collect()
    }
}

/// A `CK_ATTRIBUTE` array built from wire attributes, owning every value buffer.
#[derive(Debug)]
pub(crate) struct NativeTemplate {
    attrs: Vec<CK_ATTRIBUTE>,
    _buffers: Vec<Aligned>,
    _nested: Vec<Self>,
}

impl NativeTemplate {
    /// Convert `attrs`. Template attributes that a 0.24 peer sent as a byte array (its class
    /// table lacks `CKA_DERIVE_TEMPLATE`) would be raw native structures with the peer's
    /// pointers: they are refused.
    pub(crate) fn new(attrs: &[Attribute]) -> Result<Self, Rv> {
        let mut out = Vec::with_capacity(attrs.len());
        let mut buffers = Vec::new();
        let mut nested = Vec::new();
        for a in attrs {
            let (p, len) = match &a.value {
                AttrValue::Unavailable => (ptr::null_mut(), UNAVAILABLE),
                AttrValue::Present { value, .. } => match value {
                    Value::Template(t) => {
                        let mut n = Self::new(t)?;
                        let len = n.attrs.len() * size_of::<CK_ATTRIBUTE>();
                        let p = if n.attrs.is_empty() {
                            ptr::null_mut()
                        } else {
                            n.attrs.as_mut_ptr().cast()
                        };
                        nested.push(n);
                        (p, len as CK_ULONG)
                    }
                    Value::Bytes(b) | Value::Date(b)
                        if p11fwd_wire::dialect::is_template_type(a.ty)
                            && b.as_ref().is_some_and(|b| !b.is_empty()) =>
                    {
                        return Err(Rv(CKR_ATTRIBUTE_VALUE_INVALID));
                    }
                    other => {
                        let mut buf = match other {
                            Value::Byte(b) => Aligned::from_bytes(&[*b]),
                            Value::Ulong(u) => Aligned::from_bytes(&u.to_ne_bytes()),
                            Value::Bytes(b) | Value::Date(b) => match b {
                                Some(b) => Aligned::from_bytes(b),
                                None => Aligned::default(),
                            },
                            Value::Mechanisms(m) => {
                                let bytes: Vec<u8> =
                                    m.iter().flat_map(|v| v.to_ne_bytes()).collect();
                                Aligned::from_bytes(&bytes)
                            }
                            Value::Template(_) => Aligned::default(),
                        };
                        let len = buf.len as CK_ULONG;
                        let p = buf.ptr();
                        buffers.push(buf);
                        (p, len)
                    }
                },
            };
            out.push(CK_ATTRIBUTE {
                type_: a.ty as CK_ULONG,
                pValue: p,
                ulValueLen: len,
            });
        }
        Ok(Self {
            attrs: out,
            _buffers: buffers,
            _nested: nested,
        })
    }

    fn ptr(&mut self) -> *mut CK_ATTRIBUTE {
        if self.attrs.is_empty() {
            ptr::null_mut()
        } else {
            self.attrs.as_mut_ptr()
        }
    }

    fn len(&self) -> CK_ULONG {
        self.attrs.len() as CK_ULONG
    }
}

/// The class an output value is decoded as: the dialect's class, except that template types
/// are always templates natively (a 0.24 peer just cannot receive them).
fn native_class(dialect: Dialect, ty: u64) -> AttrClass {
    if p11fwd_wire::dialect::is_template_type(ty) {
        AttrClass::Template
    } else {
        dialect.attr_class(ty)
    }
}

/// The template of a `C_GetAttributeValue`: buffers of the sizes the client asked for.
#[derive(Debug)]
pub(crate) struct OutTemplate {
    attrs: Vec<CK_ATTRIBUTE>,
    buffers: Vec<Option<Aligned>>,
    nested: Vec<Option<Self>>,
}

impl OutTemplate {
    /// Buffers for `slots`; `budget` caps the bytes allocated in total.
    pub(crate) fn new(
        slots: &[AttrSlot],
        dialect: Dialect,
        budget: &mut usize,
    ) -> Result<Self, Rv> {
        let mut attrs = Vec::with_capacity(slots.len());
        let mut buffers = Vec::with_capacity(slots.len());
        let mut nested = Vec::with_capacity(slots.len());
        for s in slots {
            let want = s.buflen as usize;
            let mut take = |n: usize| -> Result<(), Rv> {
                *budget = budget.checked_sub(n).ok_or(Rv(CKR_DEVICE_MEMORY))?;
                Ok(())
            };
            if want == 0 {
                attrs.push(CK_ATTRIBUTE {
                    type_: s.ty as CK_ULONG,
                    pValue: ptr::null_mut(),
                    ulValueLen: 0,
                });
                buffers.push(None);
                nested.push(None);
                continue;
            }
            take(want)?;
            if native_class(dialect, s.ty) == AttrClass::Template {
                let n = want / size_of::<CK_ATTRIBUTE>();
                let inner: Vec<AttrSlot> = match &s.nested {
                    Some(inner) => inner.clone(),
                    // A 0.24 client sends no nested list: ask for sizes and types only.
                    None => (0..n)
                        .map(|_| AttrSlot {
                            ty: 0,
                            buflen: 0,
                            nested: None,
                        })
                        .collect(),
                };
                let mut t = Self::new(&inner, dialect, budget)?;
                let p = if t.attrs.is_empty() {
                    ptr::null_mut()
                } else {
                    t.attrs.as_mut_ptr().cast()
                };
                attrs.push(CK_ATTRIBUTE {
                    type_: s.ty as CK_ULONG,
                    pValue: p,
                    ulValueLen: (t.attrs.len() * size_of::<CK_ATTRIBUTE>()) as CK_ULONG,
                });
                buffers.push(None);
                nested.push(Some(t));
            } else {
                let mut b = Aligned::zeroed(want);
                attrs.push(CK_ATTRIBUTE {
                    type_: s.ty as CK_ULONG,
                    pValue: b.ptr(),
                    ulValueLen: want as CK_ULONG,
                });
                buffers.push(Some(b));
                nested.push(None);
            }
        }
        Ok(Self {
            attrs,
            buffers,
            nested,
        })
    }

    /// The template after the call, as wire attributes.
    pub(crate) fn into_attributes(self, dialect: Dialect) -> Vec<Attribute> {
        let mut out = Vec::with_capacity(self.attrs.len());
        for ((a, buf), nested) in self.attrs.iter().zip(self.buffers).zip(self.nested) {
            let ty = a.type_ as u64;
            if a.ulValueLen == UNAVAILABLE {
                out.push(Attribute::unavailable(ty));
                continue;
            }
            let len = a.ulValueLen as usize;
            let len32 = u32::try_from(len).unwrap_or(u32::MAX);
            let class = native_class(dialect, ty);
            let value = match (buf, nested) {
                (None, None) => {
                    if dialect.attr_class(ty) != class {
                        // A template type a 0.24 peer cannot receive.
                        out.push(Attribute::unavailable(ty));
                        continue;
                    }
                    out.push(Attribute::size_only(ty, len32, dialect));
                    continue;
                }
                (_, Some(t)) => {
                    if dialect.attr_class(ty) != AttrClass::Template {
                        out.push(Attribute::unavailable(ty));
                        continue;
                    }
                    let n = len / size_of::<CK_ATTRIBUTE>();
                    let mut inner = t.into_attributes(dialect);
                    inner.truncate(n);
                    Value::Template(inner)
                }
                (Some(b), None) => match class {
                    AttrClass::Byte => Value::Byte(b.to_vec(1).first().copied().unwrap_or(0)),
                    AttrClass::Ulong => {
                        let v = b.to_vec(8);
                        match <[u8; 8]>::try_from(v.as_slice()) {
                            Ok(a) if len == 8 => Value::Ulong(u64::from_ne_bytes(a)),
                            _ => {
                                out.push(Attribute::unavailable(ty));
                                continue;
                            }
                        }
                    }
                    AttrClass::Bytes => Value::Bytes(Some(b.to_vec(len))),
                    AttrClass::Date => {
                        let d = b.to_vec(len);
                        if !d.is_empty() && d.len() != 8 {
                            out.push(Attribute::unavailable(ty));
                            continue;
                        }
                        // An empty CK_DATE goes out as a NULL array, as every stock server
                        // sends it (p11_rpc_buffer_add_date_value).
                        Value::Date((!d.is_empty()).then_some(d))
                    }
                    AttrClass::MechanismArray => {
                        let bytes = b.to_vec(len);
                        Value::Mechanisms(
                            bytes
                                .chunks_exact(8)
                                .filter_map(|c| <[u8; 8]>::try_from(c).ok())
                                .map(u64::from_ne_bytes)
                                .collect(),
                        )
                    }
                    AttrClass::Template => Value::Template(Vec::new()),
                },
            };
            out.push(Attribute {
                ty,
                value: AttrValue::Present { len: len32, value },
            });
        }
        out
    }
}

/// IBM parameter structures are not in cryptoki-sys; the IBM mechanisms with pointer
/// parameters are refused, the flat ones are one `CK_ULONG`.
#[derive(Debug)]
// The buffers are read by the module through the pointers in the structures.
#[allow(dead_code)]
enum ParamStore {
    None,
    Bytes(Aligned),
    Ulong(Box<CK_ULONG>),
    Pss(Box<CK_RSA_PKCS_PSS_PARAMS>),
    Oaep(Box<CK_RSA_PKCS_OAEP_PARAMS>, Aligned),
    Ecdh(Box<CK_ECDH1_DERIVE_PARAMS>, Aligned, Aligned),
    Ctr(Box<CK_AES_CTR_PARAMS>),
    Gcm(Box<CK_GCM_PARAMS>, Aligned, Aligned),
}

/// A `CK_MECHANISM` with its parameter structure.
#[derive(Debug)]
pub(crate) struct NativeMechanism {
    mech: CK_MECHANISM,
    _store: ParamStore,
}

fn opt_bytes(b: &Option<Vec<u8>>) -> Aligned {
    b.as_deref().map(Aligned::from_bytes).unwrap_or_default()
}

impl NativeMechanism {
    /// Build the native form. `translate` maps a virtual object handle inside a parameter (the
    /// IBM attribute-bound wrap key, `CKM_CONCATENATE_BASE_AND_KEY`'s key) to the real one;
    /// `raw` says which raw parameters may reach the module at all.
    pub(crate) fn new(
        m: &Mechanism,
        translate: &dyn Fn(u64) -> Result<u64, Rv>,
        raw: &RawParams,
    ) -> Result<Self, Rv> {
        let invalid = Rv(CKR_MECHANISM_PARAM_INVALID);
        let mut store = match &m.param {
            MechParam::None => ParamStore::None,
            // Raw bytes of a structure with pointers would make the module dereference the
            // peer's addresses, and a short one would be read past its end: only known flat
            // structures of their exact size pass (see `raw_params`).
            MechParam::Raw(b) => match raw.check(m.ty, b.len())? {
                RawKind::Handle => {
                    let h = <[u8; 8]>::try_from(b.as_slice()).map_err(|_| invalid)?;
                    let real = translate(u64::from_ne_bytes(h))?;
                    ParamStore::Ulong(Box::new(real as CK_ULONG))
                }
                RawKind::Bytes => ParamStore::Bytes(Aligned::from_bytes(b)),
            },
            MechParam::Iv(b) | MechParam::DhPkcsDerive(b) => {
                ParamStore::Bytes(Aligned::from_bytes(b))
            }
            MechParam::RsaPkcsPss {
                hash_alg,
                mgf,
                salt_len,
            } => ParamStore::Pss(Box::new(CK_RSA_PKCS_PSS_PARAMS {
                hashAlg: *hash_alg as CK_ULONG,
                mgf: *mgf as CK_ULONG,
                sLen: *salt_len as CK_ULONG,
            })),
            MechParam::RsaPkcsOaep {
                hash_alg,
                mgf,
                source,
                source_data,
            } => {
                let mut label = opt_bytes(source_data);
                let p = Box::new(CK_RSA_PKCS_OAEP_PARAMS {
                    hashAlg: *hash_alg as CK_ULONG,
                    mgf: *mgf as CK_ULONG,
                    source: *source as CK_ULONG,
                    pSourceData: label.ptr(),
                    ulSourceDataLen: label.len as CK_ULONG,
                });
                ParamStore::Oaep(p, label)
            }
            MechParam::Ecdh1Derive {
                kdf,
                shared_data,
                public_data,
            } => {
                let mut shared = opt_bytes(shared_data);
                let mut public = opt_bytes(public_data);
                let p = Box::new(CK_ECDH1_DERIVE_PARAMS {
                    kdf: *kdf as CK_ULONG,
                    ulSharedDataLen: shared.len as CK_ULONG,
                    pSharedData: shared.ptr().cast(),
                    ulPublicDataLen: public.len as CK_ULONG,
                    pPublicData: public.ptr().cast(),
                });
                ParamStore::Ecdh(p, shared, public)
            }
            MechParam::AesCtr { counter_bits, cb } => {
                ParamStore::Ctr(Box::new(CK_AES_CTR_PARAMS {
                    ulCounterBits: *counter_bits as CK_ULONG,
                    cb: *cb,
                }))
            }
            MechParam::AesGcm {
                iv,
                iv_bits,
                aad,
                tag_bits,
            } => {
                let mut ivb = opt_bytes(iv);
                let mut aadb = opt_bytes(aad);
                let p = Box::new(CK_GCM_PARAMS {
                    pIv: ivb.ptr().cast(),
                    ulIvLen: ivb.len as CK_ULONG,
                    ulIvBits: *iv_bits as CK_ULONG,
                    pAAD: aadb.ptr().cast(),
                    ulAADLen: aadb.len as CK_ULONG,
                    ulTagBits: *tag_bits as CK_ULONG,
                });
                ParamStore::Gcm(p, ivb, aadb)
            }
            MechParam::MacGeneral(n) | MechParam::IbmEcdsaOther(n) => {
                ParamStore::Ulong(Box::new(*n as CK_ULONG))
            }
            MechParam::IbmAttrBoundWrap(h) => {
                ParamStore::Ulong(Box::new(translate(*h)? as CK_ULONG))
            }
            MechParam::IbmBtcDerive { .. } | MechParam::IbmKyber { .. } => return Err(invalid),
        };
        let (p, len): (*mut c_void, usize) = match &mut store {
            ParamStore::None => (ptr::null_mut(), 0),
            ParamStore::Bytes(b) => (b.ptr(), b.len),
            ParamStore::Ulong(u) => (ptr::from_mut(u.as_mut()).cast(), size_of::<CK_ULONG>()),
            ParamStore::Pss(p) => (
                ptr::from_mut(p.as_mut()).cast(),
                size_of::<CK_RSA_PKCS_PSS_PARAMS>(),
            ),
            ParamStore::Oaep(p, _) => (
                ptr::from_mut(p.as_mut()).cast(),
                size_of::<CK_RSA_PKCS_OAEP_PARAMS>(),
            ),
            ParamStore::Ecdh(p, _, _) => (
                ptr::from_mut(p.as_mut()).cast(),
                size_of::<CK_ECDH1_DERIVE_PARAMS>(),
            ),
            ParamStore::Ctr(p) => (
                ptr::from_mut(p.as_mut()).cast(),
                size_of::<CK_AES_CTR_PARAMS>(),
            ),
            ParamStore::Gcm(p, _, _) => {
                (ptr::from_mut(p.as_mut()).cast(), size_of::<CK_GCM_PARAMS>())
            }
        };
        Ok(Self {
            mech: CK_MECHANISM {
                mechanism: m.ty as CK_ULONG,
                pParameter: p,
                ulParameterLen: len as CK_ULONG,
            },
            _store: store,
        })
    }

    fn ptr(&mut self) -> *mut CK_MECHANISM {
        &raw mut self.mech
    }
}

/// An output byte buffer as the client described it (`fy`).
struct OutBytes {
    buf: Aligned,
    query: bool,
    cap: CK_ULONG,
}

impl OutBytes {
    fn new(spec: OutBuf) -> Self {
        match spec {
            OutBuf::Query => Self {
                buf: Aligned::default(),
                query: true,
                cap: 0,
            },
            // A non-NULL buffer of length 0: point at one dummy byte.
            OutBuf::Empty => Self {
                buf: Aligned::zeroed(1),
                query: false,
                cap: 0,
            },
            OutBuf::Len(n) => {
                let n = n.min(MAX_OUT);
                Self {
                    buf: Aligned::zeroed(n),
                    query: false,
                    cap: n as CK_ULONG,
                }
            }
        }
    }

    /// Run `f(pointer, &len)` and map the result as the stock server does (rpc §4).
    fn run(mut self, f: impl FnOnce(*mut u8, *mut CK_ULONG) -> CK_RV) -> Result<ByteArray, Rv> {
        let mut len = self.cap;
        let p: *mut u8 = if self.query {
            ptr::null_mut()
        } else {
            self.buf.words.as_mut_ptr().cast()
        };
        let r = f(p, &raw mut len);
        let len32 = u32::try_from(len).unwrap_or(u32::MAX);
        match r {
            CKR_OK if self.query => Ok(ByteArray::Length(len32)),
            CKR_OK if len > self.cap => Err(Rv(CKR_GENERAL_ERROR)),
            CKR_OK => Ok(ByteArray::Data(self.buf.to_vec(len as usize))),
            CKR_BUFFER_TOO_SMALL => Ok(ByteArray::Length(len32)),
            r => Err(Rv(r)),
        }
    }
}

fn in_ptr(data: &[u8]) -> *mut u8 {
    // Modules take input as `CK_BYTE_PTR` but never write through it.
    if data.is_empty() {
        ptr::null_mut()
    } else {
        data.as_ptr().cast_mut()
    }
}

fn opt_ptr(data: Option<&[u8]>) -> (*mut u8, CK_ULONG) {
    match data {
        Some(d) => (d.as_ptr().cast_mut(), d.len() as CK_ULONG),
        None => (ptr::null_mut(), 0),
    }
}

fn version(v: CK_VERSION) -> Version {
    Version {
        major: v.major,
        minor: v.minor,
    }
}

/// A loaded and initialised PKCS#11 module.
#[derive(Debug)]
pub(crate) struct Library {
    fl: *const CK_FUNCTION_LIST,
    fl3: *const CK_FUNCTION_LIST_3_0,
    finalized: std::sync::atomic::AtomicBool,
    // Dropped last: the function lists point into the library.
    _lib: libloading::Library,
}

// SAFETY: the module is initialised with CKF_OS_LOCKING_OK, which makes every entry point safe
// to call from any thread (PKCS#11 v2.40 §5.4.2); the function list itself is immutable.
unsafe impl Send for Library {}
// SAFETY: as above; we only read the function list.
unsafe impl Sync for Library {}

/// The interface name PKCS#11 3.x modules register.
const INTERFACE_NAME: &[u8] = b"PKCS 11\0";

impl Library {
    /// Load `path`, find its function list (3.x interface first) and call `C_Initialize` with
    /// `CKF_OS_LOCKING_OK` and `reserved` as `pReserved`.
    pub(crate) fn load(path: &Path, reserved: Option<&str>) -> Result<Self, String> {
        // SAFETY: loading a library runs its initialisers; the operator chose this module
        // (or registered it with p11-kit), and we refused client modules before this.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
        let mut fl: *const CK_FUNCTION_LIST = ptr::null();
        let mut fl3: *const CK_FUNCTION_LIST_3_0 = ptr::null();
        // SAFETY: `C_GetInterface` has this type in every PKCS#11 3.x module.
        let gi = unsafe { lib.get::<CK_C_GetInterface>(b"C_GetInterface\0") };
        if let Ok(gi) = gi
            && let Some(gi) = *gi
        {
            let mut iface: *mut CK_INTERFACE = ptr::null_mut();
            // SAFETY: the name is NUL-terminated, a NULL version asks for the default one, and
            // `iface` is a valid out pointer.
            let r = unsafe {
                gi(
                    INTERFACE_NAME.as_ptr().cast_mut(),
                    ptr::null_mut(),
                    &raw mut iface,
                    0,
                )
            };
            if r == CKR_OK && !iface.is_null() {
                // SAFETY: on success the module points `iface` at a static CK_INTERFACE.
                let list = unsafe { (*iface).pFunctionList };
                if !list.is_null() {
                    fl = list.cast();
                    // SAFETY: every function list starts with its CK_VERSION.
                    let v = unsafe { *list.cast::<CK_VERSION>() };
                    if v.major >= 3 {
                        fl3 = list.cast();
                    }
                }
            }
        }
        if fl.is_null() {
            // SAFETY: every PKCS#11 module exports `C_GetFunctionList` with this type.
            let gfl = unsafe { lib.get::<CK_C_GetFunctionList>(b"C_GetFunctionList\0") }
                .map_err(|e| e.to_string())?;
            let gfl = (*gfl).ok_or("C_GetFunctionList is NULL")?;
            let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
            // SAFETY: `list` is a valid out pointer.
            let r = unsafe { gfl(&raw mut list) };
            if r != CKR_OK || list.is_null() {
                return Err(format!("C_GetFunctionList failed: {:?}", Rv(r)));
            }
            fl = list;
        }
        let this = Self {
            fl,
            fl3,
            finalized: std::sync::atomic::AtomicBool::new(false),
            _lib: lib,
        };
        let reserved = reserved.map(|r| {
            let mut v = r.as_bytes().to_vec();
            v.push(0);
            v
        });
        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: CKF_OS_LOCKING_OK as CK_ULONG,
            pReserved: reserved
                .as_ref()
                .map_or(ptr::null_mut(), |r| r.as_ptr().cast_mut().cast()),
        };
        let init = this.list().C_Initialize.ok_or("no C_Initialize")?;
        // SAFETY: `args` is a valid CK_C_INITIALIZE_ARGS that outlives the call.
        let r = unsafe { init((&raw mut args).cast()) };
        if r != CKR_OK && r != CKR_CRYPTOKI_ALREADY_INITIALIZED {
            return Err(format!("C_Initialize failed: {:?}", Rv(r)));
        }
        Ok(this)
    }

    fn list(&self) -> &CK_FUNCTION_LIST {
        // SAFETY: `fl` came from the module, is non-NULL, and stays valid while `_lib` is loaded.
        unsafe { &*self.fl }
    }

    fn list3(&self) -> Option<&CK_FUNCTION_LIST_3_0> {
        // SAFETY: `fl3` is NULL or the module's 3.x list, valid while `_lib` is loaded.
        unsafe { self.fl3.as_ref() }
    }

    /// `C_Finalize`, once (later calls do nothing). Also what makes a thread blocked in
    /// [`Library::wait_for_slot_event`] return.
    pub(crate) fn finalize(&self) {
        if self
            .finalized
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        if let Some(f) = self.list().C_Finalize {
            // SAFETY: pReserved must be NULL.
            let _ = unsafe { f(ptr::null_mut()) };
        }
    }

    /// `C_GetInfo`.
    pub(crate) fn info(&self) -> Result<Info, Rv> {
        let f = self.list().C_GetInfo.ok_or_else(not_supported)?;
        let mut i = CK_INFO::default();
        // SAFETY: `i` is a valid out structure.
        rv(unsafe { f(&raw mut i) })?;
        Ok(Info {
            cryptoki_version: version(i.cryptokiVersion),
            manufacturer_id: i.manufacturerID,
            flags: i.flags as u64,
            library_description: i.libraryDescription,
            library_version: version(i.libraryVersion),
        })
    }

    /// `C_GetSlotList`.
    pub(crate) fn slot_list(&self, token_present: bool) -> Result<Vec<u64>, Rv> {
        let f = self.list().C_GetSlotList.ok_or_else(not_supported)?;
        for _ in 0..4 {
            let mut n: CK_ULONG = 0;
            // SAFETY: a NULL list asks for the count.
            rv(unsafe { f(u8::from(token_present), ptr::null_mut(), &raw mut n) })?;
            let mut v = vec![0 as CK_ULONG; (n as usize).min(4096)];
            let mut m = v.len() as CK_ULONG;
            // SAFETY: `v` holds `m` slots.
            match unsafe { f(u8::from(token_present), v.as_mut_ptr(), &raw mut m) } {
                CKR_OK => {
                    v.truncate(m as usize);
                    return Ok(v.into_iter().map(|s| s as u64).collect());
                }
                CKR_BUFFER_TOO_SMALL => continue,
                r => return Err(Rv(r)),
            }
        }
        Err(Rv(CKR_GENERAL_ERROR))
    }

    /// `C_GetSlotInfo`.
    pub(crate) fn slot_info(&self, slot: u64) -> Result<SlotInfo, Rv> {
        let f = self.list().C_GetSlotInfo.ok_or_else(not_supported)?;
        let mut i = CK_SLOT_INFO::default();
        // SAFETY: `i` is a valid out structure.
        rv(unsafe { f(slot as CK_ULONG, &raw mut i) })?;
        Ok(SlotInfo {
            slot_description: i.slotDescription,
            manufacturer_id: i.manufacturerID,
            flags: i.flags as u64,
            hardware_version: version(i.hardwareVersion),
            firmware_version: version(i.firmwareVersion),
        })
    }

    /// `C_GetTokenInfo`.
    pub(crate) fn token_info(&self, slot: u64) -> Result<TokenInfo, Rv> {
        let f = self.list().C_GetTokenInfo.ok_or_else(not_supported)?;
        let mut i = CK_TOKEN_INFO::default();
        // SAFETY: `i` is a valid out structure.
        rv(unsafe { f(slot as CK_ULONG, &raw mut i) })?;
        Ok(TokenInfo {
            label: i.label,
            manufacturer_id: i.manufacturerID,
            model: i.model,
            serial_number: i.serialNumber,
            flags: i.flags as u64,
            max_session_count: i.ulMaxSessionCount as u64,
            session_count: i.ulSessionCount as u64,
            max_rw_session_count: i.ulMaxRwSessionCount as u64,
            rw_session_count: i.ulRwSessionCount as u64,
            max_pin_len: i.ulMaxPinLen as u64,
            min_pin_len: i.ulMinPinLen as u64,
            total_public_memory: i.ulTotalPublicMemory as u64,
            free_public_memory: i.ulFreePublicMemory as u64,
            total_private_memory: i.ulTotalPrivateMemory as u64,
            free_private_memory: i.ulFreePrivateMemory as u64,
            hardware_version: version(i.hardwareVersion),
            firmware_version: version(i.firmwareVersion),
            utc_time: i.utcTime,
        })
    }

    /// `C_GetMechanismList`: all mechanisms, or with a capacity as the client asked
    /// (`Err` carries the CK_RV, `Ok((list, count))`).
    pub(crate) fn mechanism_list(&self, slot: u64) -> Result<Vec<u64>, Rv> {
        let f = self.list().C_GetMechanismList.ok_or_else(not_supported)?;
        for _ in 0..4 {
            let mut n: CK_ULONG = 0;
            // SAFETY: a NULL list asks for the count.
            rv(unsafe { f(slot as CK_ULONG, ptr::null_mut(), &raw mut n) })?;
            let mut v = vec![0 as CK_ULONG; (n as usize).min(65536)];
            let mut m = v.len() as CK_ULONG;
            // SAFETY: `v` holds `m` entries.
            match unsafe { f(slot as CK_ULONG, v.as_mut_ptr(), &raw mut m) } {
                CKR_OK => {
                    v.truncate(m as usize);
                    return Ok(v.into_iter().map(|s| s as u64).collect());
                }
                CKR_BUFFER_TOO_SMALL => continue,
                r => return Err(Rv(r)),
            }
        }
        Err(Rv(CKR_GENERAL_ERROR))
    }

    /// `C_GetMechanismInfo`.
    pub(crate) fn mechanism_info(&self, slot: u64, mech: u64) -> Result<MechanismInfo, Rv> {
        let f = self.list().C_GetMechanismInfo.ok_or_else(not_supported)?;
        let mut i = CK_MECHANISM_INFO::default();
        // SAFETY: `i` is a valid out structure.
        rv(unsafe { f(slot as CK_ULONG, mech as CK_ULONG, &raw mut i) })?;
        Ok(MechanismInfo {
            min_key_size: i.ulMinKeySize as u64,
            max_key_size: i.ulMaxKeySize as u64,
            flags: i.flags as u64,
        })
    }

    /// `C_InitToken`.
    pub(crate) fn init_token(
        &self,
        slot: u64,
        pin: Option<&[u8]>,
        label: &[u8; 32],
    ) -> Result<(), Rv> {
        let f = self.list().C_InitToken.ok_or_else(not_supported)?;
        let (p, n) = opt_ptr(pin);
        let mut label = *label;
        // SAFETY: the PIN is `n` readable bytes (or NULL); the label is 32 bytes.
        rv(unsafe { f(slot as CK_ULONG, p, n, label.as_mut_ptr()) })
    }

    /// `C_OpenSession` (no notification callback).
    pub(crate) fn open_session(&self, slot: u64, flags: u64) -> Result<u64, Rv> {
        let f = self.list().C_OpenSession.ok_or_else(not_supported)?;
        let mut h: CK_ULONG = 0;
        // SAFETY: no application pointer or callback; `h` is a valid out pointer.
        rv(unsafe {
            f(
                slot as CK_ULONG,
                flags as CK_ULONG,
                ptr::null_mut(),
                None,
                &raw mut h,
            )
        })?;
        Ok(h as u64)
    }

    /// `C_CloseSession`.
    pub(crate) fn close_session(&self, session: u64) -> Result<(), Rv> {
        let f = self.list().C_CloseSession.ok_or_else(not_supported)?;
        // SAFETY: plain integer argument.
        rv(unsafe { f(session as CK_ULONG) })
    }

    /// `C_GetSessionInfo`.
    pub(crate) fn session_info(&self, session: u64) -> Result<SessionInfo, Rv> {
        let f = self.list().C_GetSessionInfo.ok_or_else(not_supported)?;
        let mut i = CK_SESSION_INFO::default();
        // SAFETY: `i` is a valid out structure.
        rv(unsafe { f(session as CK_ULONG, &raw mut i) })?;
        Ok(SessionInfo {
            slot_id: i.slotID as u64,
            state: i.state as u64,
            flags: i.flags as u64,
            device_error: i.ulDeviceError as u64,
        })
    }

    /// `C_InitPIN`.
    pub(crate) fn init_pin(&self, session: u64, pin: Option<&[u8]>) -> Result<(), Rv> {
        let f = self.list().C_InitPIN.ok_or_else(not_supported)?;
        let (p, n) = opt_ptr(pin);
        // SAFETY: the PIN is `n` readable bytes or NULL.
        rv(unsafe { f(session as CK_ULONG, p, n) })
    }

    /// `C_SetPIN`.
    pub(crate) fn set_pin(
        &self,
        session: u64,
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<(), Rv> {
        let f = self.list().C_SetPIN.ok_or_else(not_supported)?;
        let (o, on) = opt_ptr(old);
        let (n, nn) = opt_ptr(new);
        // SAFETY: both PINs are readable for their lengths or NULL.
        rv(unsafe { f(session as CK_ULONG, o, on, n, nn) })
    }

    /// `C_SetOperationState`.
    pub(crate) fn set_operation_state(
        &self,
        session: u64,
        state: &[u8],
        enc: u64,
        auth: u64,
    ) -> Result<(), Rv> {
        let f = self.list().C_SetOperationState.ok_or_else(not_supported)?;
        // SAFETY: `state` is readable for its length.
        rv(unsafe {
            f(
                session as CK_ULONG,
                in_ptr(state),
                state.len() as CK_ULONG,
                enc as CK_ULONG,
                auth as CK_ULONG,
            )
        })
    }

    /// `C_Login`.
    pub(crate) fn login(&self, session: u64, user: u64, pin: Option<&[u8]>) -> Result<(), Rv> {
        let f = self.list().C_Login.ok_or_else(not_supported)?;
        let (p, n) = opt_ptr(pin);
        // SAFETY: the PIN is readable for its length or NULL (protected authentication path).
        rv(unsafe { f(session as CK_ULONG, user as CK_ULONG, p, n) })
    }

    /// Whether the module has `C_LoginUser` (a 3.x function list).
    pub(crate) fn has_login_user(&self) -> bool {
        self.list3().is_some_and(|l| l.C_LoginUser.is_some())
    }

    /// `C_LoginUser` (3.0).
    pub(crate) fn login_user(
        &self,
        session: u64,
        user: u64,
        pin: Option<&[u8]>,
        name: Option<&[u8]>,
    ) -> Result<(), Rv> {
        let f = self
            .list3()
            .and_then(|l| l.C_LoginUser)
            .ok_or_else(not_supported)?;
        let (p, n) = opt_ptr(pin);
        let (u, un) = opt_ptr(name);
        // SAFETY: both buffers are readable for their lengths or NULL.
        rv(unsafe { f(session as CK_ULONG, user as CK_ULONG, p, n, u, un) })
    }

    /// `C_Logout`.
    pub(crate) fn logout(&self, session: u64) -> Result<(), Rv> {
        let f = self.list().C_Logout.ok_or_else(not_supported)?;
        // SAFETY: plain integer argument.
        rv(unsafe { f(session as CK_ULONG) })
    }

    /// `C_WaitForSlotEvent`: the slot with an event. Without `CKF_DONT_BLOCK` this blocks
    /// until the module has an event or is finalised (then CKR_CRYPTOKI_NOT_INITIALIZED).
    pub(crate) fn wait_for_slot_event(&self, flags: u64) -> Result<u64, Rv> {
        let f = self.list().C_WaitForSlotEvent.ok_or_else(not_supported)?;
        let mut slot: CK_ULONG = 0;
        // SAFETY: `slot` is a valid out pointer; pReserved must be NULL.
        rv(unsafe { f(flags as CK_ULONG, &raw mut slot, ptr::null_mut()) })?;
        Ok(slot as u64)
    }

    /// `C_SessionCancel` (3.0).
    pub(crate) fn session_cancel(&self, session: u64, flags: u64) -> Result<(), Rv> {
        let f = self
            .list3()
            .and_then(|l| l.C_SessionCancel)
            .ok_or_else(not_supported)?;
        // SAFETY: plain integer arguments.
        rv(unsafe { f(session as CK_ULONG, flags as CK_ULONG) })
    }

    /// `C_CreateObject`.
    pub(crate) fn create_object(&self, session: u64, t: &mut NativeTemplate) -> Result<u64, Rv> {
        let f = self.list().C_CreateObject.ok_or_else(not_supported)?;
        let mut h: CK_ULONG = 0;
        // SAFETY: the template and its buffers are owned by `t`; `h` is a valid out pointer.
        rv(unsafe { f(session as CK_ULONG, t.ptr(), t.len(), &raw mut h) })?;
        Ok(h as u64)
    }

    /// `C_CopyObject`.
    pub(crate) fn copy_object(
        &self,
        session: u64,
        obj: u64,
        t: &mut NativeTemplate,
    ) -> Result<u64, Rv> {
        let f = self.list().C_CopyObject.ok_or_else(not_supported)?;
        let mut h: CK_ULONG = 0;
        // SAFETY: as for C_CreateObject.
        rv(unsafe {
            f(
                session as CK_ULONG,
                obj as CK_ULONG,
                t.ptr(),
                t.len(),
                &raw mut h,
            )
        })?;
        Ok(h as u64)
    }

    /// `C_DestroyObject`.
    pub(crate) fn destroy_object(&self, session: u64, obj: u64) -> Result<(), Rv> {
        let f = self.list().C_DestroyObject.ok_or_else(not_supported)?;
        // SAFETY: plain integer arguments.
        rv(unsafe { f(session as CK_ULONG, obj as CK_ULONG) })
    }

    /// `C_GetObjectSize`.
    pub(crate) fn object_size(&self, session: u64, obj: u64) -> Result<u64, Rv> {
        let f = self.list().C_GetObjectSize.ok_or_else(not_supported)?;
        let mut n: CK_ULONG = 0;
        // SAFETY: `n` is a valid out pointer.
        rv(unsafe { f(session as CK_ULONG, obj as CK_ULONG, &raw mut n) })?;
        Ok(n as u64)
    }

    /// `C_GetAttributeValue`: the module's CK_RV comes back with the template.
    pub(crate) fn get_attribute_value(&self, session: u64, obj: u64, t: &mut OutTemplate) -> CK_RV {
        let Some(f) = self.list().C_GetAttributeValue else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        let p = if t.attrs.is_empty() {
            ptr::null_mut()
        } else {
            t.attrs.as_mut_ptr()
        };
        // SAFETY: every pValue points into a buffer `t` owns, of the length given.
        unsafe {
            f(
                session as CK_ULONG,
                obj as CK_ULONG,
                p,
                t.attrs.len() as CK_ULONG,
            )
        }
    }

    /// `C_SetAttributeValue`.
    pub(crate) fn set_attribute_value(
        &self,
        session: u64,
        obj: u64,
        t: &mut NativeTemplate,
    ) -> Result<(), Rv> {
        let f = self.list().C_SetAttributeValue.ok_or_else(not_supported)?;
        // SAFETY: the template is owned by `t`.
        rv(unsafe { f(session as CK_ULONG, obj as CK_ULONG, t.ptr(), t.len()) })
    }

    /// `C_FindObjectsInit`.
    pub(crate) fn find_objects_init(&self, session: u64, t: &mut NativeTemplate) -> Result<(), Rv> {
        let f = self.list().C_FindObjectsInit.ok_or_else(not_supported)?;
        // SAFETY: the template is owned by `t`.
        rv(unsafe { f(session as CK_ULONG, t.ptr(), t.len()) })
    }

    /// `C_FindObjects`.
    pub(crate) fn find_objects(&self, session: u64, max: usize) -> Result<Vec<u64>, Rv> {
        let f = self.list().C_FindObjects.ok_or_else(not_supported)?;
        let mut v = vec![0 as CK_ULONG; max.max(1)];
        let mut n: CK_ULONG = 0;
        // SAFETY: `v` holds `max` handles.
        rv(unsafe {
            f(
                session as CK_ULONG,
                v.as_mut_ptr(),
                max as CK_ULONG,
                &raw mut n,
            )
        })?;
        v.truncate((n as usize).min(max));
        Ok(v.into_iter().map(|h| h as u64).collect())
    }

    /// `C_FindObjectsFinal`.
    pub(crate) fn find_objects_final(&self, session: u64) -> Result<(), Rv> {
        let f = self.list().C_FindObjectsFinal.ok_or_else(not_supported)?;
        // SAFETY: plain integer argument.
        rv(unsafe { f(session as CK_ULONG) })
    }

    /// The `C_*Init(session, mechanism, key)` family and `C_DigestInit` (key ignored).
    /// `None` is the NULL mechanism (a cancel).
    pub(crate) fn init(
        &self,
        kind: InitKind,
        session: u64,
        m: Option<&mut NativeMechanism>,
        key: u64,
    ) -> Result<(), Rv> {
        let l = self.list();
        let p = m.map_or(ptr::null_mut(), |m| m.ptr());
        let s = session as CK_ULONG;
        let k = key as CK_ULONG;
        let with_key = match kind {
            InitKind::Encrypt => l.C_EncryptInit,
            InitKind::Decrypt => l.C_DecryptInit,
            InitKind::Sign => l.C_SignInit,
            InitKind::SignRecover => l.C_SignRecoverInit,
            InitKind::Verify => l.C_VerifyInit,
            InitKind::VerifyRecover => l.C_VerifyRecoverInit,
            InitKind::Digest => {
                let f = l.C_DigestInit.ok_or_else(not_supported)?;
                // SAFETY: the mechanism and its parameter are owned by the caller's
                // NativeMechanism (or NULL).
                return rv(unsafe { f(s, p) });
            }
        };
        let f = with_key.ok_or_else(not_supported)?;
        // SAFETY: as above.
        rv(unsafe { f(s, p, k) })
    }

    /// Calls of the form `f(session, in, in_len, out, &out_len)`.
    pub(crate) fn in_out(
        &self,
        kind: InOut,
        session: u64,
        data: &[u8],
        out: OutBuf,
    ) -> Result<ByteArray, Rv> {
        let l = self.list();
        let f = match kind {
            InOut::Encrypt => l.C_Encrypt,
            InOut::EncryptUpdate => l.C_EncryptUpdate,
            InOut::Decrypt => l.C_Decrypt,
            InOut::DecryptUpdate => l.C_DecryptUpdate,
            InOut::Digest => l.C_Digest,
            InOut::Sign => l.C_Sign,
            InOut::SignRecover => l.C_SignRecover,
            InOut::VerifyRecover => l.C_VerifyRecover,
            InOut::DigestEncryptUpdate => l.C_DigestEncryptUpdate,
            InOut::DecryptDigestUpdate => l.C_DecryptDigestUpdate,
            InOut::SignEncryptUpdate => l.C_SignEncryptUpdate,
            InOut::DecryptVerifyUpdate => l.C_DecryptVerifyUpdate,
        }
        .ok_or_else(not_supported)?;
        OutBytes::new(out).run(|p, n| {
            // SAFETY: `data` is readable for its length; `p` is NULL or `*n` writable bytes.
            unsafe {
                f(
                    session as CK_ULONG,
                    in_ptr(data),
                    data.len() as CK_ULONG,
                    p,
                    n,
                )
            }
        })
    }

    /// Calls of the form `f(session, out, &out_len)`.
    pub(crate) fn out_only(
        &self,
        kind: OutOnly,
        session: u64,
        out: OutBuf,
    ) -> Result<ByteArray, Rv> {
        let l = self.list();
        let f = match kind {
            OutOnly::EncryptFinal => l.C_EncryptFinal,
            OutOnly::DecryptFinal => l.C_DecryptFinal,
            OutOnly::DigestFinal => l.C_DigestFinal,
            OutOnly::SignFinal => l.C_SignFinal,
            OutOnly::GetOperationState => l.C_GetOperationState,
        }
        .ok_or_else(not_supported)?;
        OutBytes::new(out).run(|p, n| {
            // SAFETY: `p` is NULL or `*n` writable bytes.
            unsafe { f(session as CK_ULONG, p, n) }
        })
    }

    /// Calls of the form `f(session, in, in_len)`.
    pub(crate) fn in_only(&self, kind: InOnly, session: u64, data: &[u8]) -> Result<(), Rv> {
        let l = self.list();
        let f = match kind {
            InOnly::DigestUpdate => l.C_DigestUpdate,
            InOnly::SignUpdate => l.C_SignUpdate,
            InOnly::VerifyUpdate => l.C_VerifyUpdate,
            InOnly::VerifyFinal => l.C_VerifyFinal,
            InOnly::SeedRandom => l.C_SeedRandom,
        }
        .ok_or_else(not_supported)?;
        // SAFETY: `data` is readable for its length.
        rv(unsafe { f(session as CK_ULONG, in_ptr(data), data.len() as CK_ULONG) })
    }

    /// `C_Verify`.
    pub(crate) fn verify(&self, session: u64, data: &[u8], sig: &[u8]) -> Result<(), Rv> {
        let f = self.list().C_Verify.ok_or_else(not_supported)?;
        // SAFETY: both buffers are readable for their lengths.
        rv(unsafe {
            f(
                session as CK_ULONG,
                in_ptr(data),
                data.len() as CK_ULONG,
                in_ptr(sig),
                sig.len() as CK_ULONG,
            )
        })
    }

    /// `C_DigestKey`.
    pub(crate) fn digest_key(&self, session: u64, key: u64) -> Result<(), Rv> {
        let f = self.list().C_DigestKey.ok_or_else(not_supported)?;
        // SAFETY: plain integer arguments.
        rv(unsafe { f(session as CK_ULONG, key as CK_ULONG) })
    }

    /// `C_GenerateKey`.
    pub(crate) fn generate_key(
        &self,
        session: u64,
        m: &mut NativeMechanism,
        t: &mut NativeTemplate,
    ) -> Result<u64, Rv> {
        let f = self.list().C_GenerateKey.ok_or_else(not_supported)?;
        let mut h: CK_ULONG = 0;
        // SAFETY: mechanism and template are owned by the caller; `h` is a valid out pointer.
        rv(unsafe { f(session as CK_ULONG, m.ptr(), t.ptr(), t.len(), &raw mut h) })?;
        Ok(h as u64)
    }

    /// `C_GenerateKeyPair`.
    pub(crate) fn generate_key_pair(
        &self,
        session: u64,
        m: &mut NativeMechanism,
        public: &mut NativeTemplate,
        private: &mut NativeTemplate,
    ) -> Result<(u64, u64), Rv> {
        let f = self.list().C_GenerateKeyPair.ok_or_else(not_supported)?;
        let (mut a, mut b): (CK_ULONG, CK_ULONG) = (0, 0);
        // SAFETY: mechanism and templates are owned by the caller; both outs are valid.
        rv(unsafe {
            f(
                session as CK_ULONG,
                m.ptr(),
                public.ptr(),
                public.len(),
                private.ptr(),
                private.len(),
                &raw mut a,
                &raw mut b,
            )
        })?;
        Ok((a as u64, b as u64))
    }

    /// `C_WrapKey`.
    pub(crate) fn wrap_key(
        &self,
        session: u64,
        m: &mut NativeMechanism,
        wrapping: u64,
        key: u64,
        out: OutBuf,
    ) -> Result<ByteArray, Rv> {
        let f = self.list().C_WrapKey.ok_or_else(not_supported)?;
        let mp = m.ptr();
        OutBytes::new(out).run(|p, n| {
            // SAFETY: the mechanism is owned by the caller; `p` is NULL or `*n` writable bytes.
            unsafe {
                f(
                    session as CK_ULONG,
                    mp,
                    wrapping as CK_ULONG,
                    key as CK_ULONG,
                    p,
                    n,
                )
            }
        })
    }

    /// `C_UnwrapKey`.
    pub(crate) fn unwrap_key(
        &self,
        session: u64,
        m: &mut NativeMechanism,
        unwrapping: u64,
        wrapped: &[u8],
        t: &mut NativeTemplate,
    ) -> Result<u64, Rv> {
        let f = self.list().C_UnwrapKey.ok_or_else(not_supported)?;
        let mut h: CK_ULONG = 0;
        // SAFETY: mechanism, wrapped bytes and template are valid for the call.
        rv(unsafe {
            f(
                session as CK_ULONG,
                m.ptr(),
                unwrapping as CK_ULONG,
                in_ptr(wrapped),
                wrapped.len() as CK_ULONG,
                t.ptr(),
                t.len(),
                &raw mut h,
            )
        })?;
        Ok(h as u64)
    }

    /// `C_DeriveKey`.
    pub(crate) fn derive_key(
        &self,
        session: u64,
        m: &mut NativeMechanism,
        base: u64,
        t: &mut NativeTemplate,
    ) -> Result<u64, Rv> {
        let f = self.list().C_DeriveKey.ok_or_else(not_supported)?;
        let mut h: CK_ULONG = 0;
        // SAFETY: mechanism and template are owned by the caller; `h` is a valid out pointer.
        rv(unsafe {
            f(
                session as CK_ULONG,
                m.ptr(),
                base as CK_ULONG,
                t.ptr(),
                t.len(),
                &raw mut h,
            )
        })?;
        Ok(h as u64)
    }

    /// `C_GenerateRandom`: `fy` is the length wanted (0 gives the module a NULL buffer, as the
    /// stock server does).
    pub(crate) fn generate_random(&self, session: u64, out: OutBuf) -> Result<ByteArray, Rv> {
        let f = self.list().C_GenerateRandom.ok_or_else(not_supported)?;
        let mut o = OutBytes::new(out);
        let len = o.cap;
        let p: *mut u8 = if o.query {
            ptr::null_mut()
        } else {
            o.buf.words.as_mut_ptr().cast()
        };
        // SAFETY: `p` is NULL or `len` writable bytes.
        rv(unsafe { f(session as CK_ULONG, p, len) })?;
        Ok(ByteArray::Data(o.buf.to_vec(len as usize)))
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        self.finalize();
    }
}
