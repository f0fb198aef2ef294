//! The raw side of the C boundary. All of the crate's `unsafe` code is in this module (and in
//! the expansion of `entry!`), one operation per block, each with its `// SAFETY:` reason.
//!
//! - [`exports`](self#exports): the `C_*` functions; [`lists`](self#lists): the function lists,
//!   `C_GetFunctionList`, `C_GetInterfaceList`, `C_GetInterface`.
//! - Helpers that turn raw pointers into safe values **at once**: [`in_bytes`],
//!   [`in_template`], [`mechanism`], [`init_args`], and output handles that implement the
//!   PKCS#11 length conventions exactly once: [`OutBytes`] (§5.2: NULL size query,
//!   `CKR_BUFFER_TOO_SMALL` with the needed size), [`OutUlongs`], [`OutFixed`], [`OutPtr`]
//!   and [`OutAttr`] (`C_GetAttributeValue`, nested templates included). Outputs are written
//!   through raw pointers, never through references to caller memory that may be
//!   uninitialised.
//!
//! The contract every helper relies on is the PKCS#11 caller contract: a pointer is NULL or
//! valid for the length the specification gives it, for the duration of the call.

mod exports;
mod lists;

use std::ffi::{CStr, c_char, c_void};
use std::marker::PhantomData;
use std::mem::size_of;
use std::ptr::NonNull;

use cryptoki_sys::*;
use p11fwd_wire::client::{OutCap, Output};
use p11fwd_wire::info::{MechanismInfo, SessionInfo, SlotInfo, TokenInfo};
use p11fwd_wire::value::{MAX_ATTRIBUTES, MAX_TEMPLATE_DEPTH, Version};
use p11fwd_wire::{MechParam, Mechanism, Rv, dialect::is_template_type};

pub use exports::*;
pub(crate) use lists::EXPORTED_NAMES;
pub use lists::{C_GetFunctionList, C_GetInterface, C_GetInterfaceList};

use crate::mech::{NativeParam, native_param};
use crate::{Result, rv};

/// The most we ask a server to allocate for one output: its replies cannot be larger (the
/// transport's frame limit), and a caller's huge buffer must not become a huge allocation
/// on the server.
pub(crate) const MAX_OUTPUT: u64 = 16 << 20;

/// `sizeof(CK_ATTRIBUTE)`, the unit of template-valued attribute lengths.
const ATTRIBUTE_SIZE: CK_ULONG = size_of::<CK_ATTRIBUTE>() as CK_ULONG;

const fn bad() -> Rv {
    rv(CKR_ARGUMENTS_BAD)
}

fn to_usize(len: CK_ULONG) -> Result<usize> {
    usize::try_from(len)
        .ok()
        .filter(|l| *l <= isize::MAX as usize)
        .ok_or(bad())
}

/// An input byte array (`pData, ulDataLen`): NULL is allowed only with length 0.
///
/// # Safety
/// `p` is NULL or points to `len` initialised bytes that stay valid and unchanged for `'a`.
pub(crate) unsafe fn in_bytes<'a>(p: *const u8, len: CK_ULONG) -> Result<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(bad());
    }
    let n = to_usize(len)?;
    // SAFETY: `p` is not NULL and, by this function's contract, valid for `len` bytes for 'a.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// An optional input (a PIN: NULL with length 0 means the protected authentication path).
///
/// # Safety
/// As [`in_bytes`].
pub(crate) unsafe fn in_opt_bytes<'a>(p: *const u8, len: CK_ULONG) -> Result<Option<&'a [u8]>> {
    if p.is_null() {
        return if len == 0 { Ok(None) } else { Err(bad()) };
    }
    // SAFETY: same contract as ours.
    unsafe { in_bytes(p, len) }.map(Some)
}

/// A NUL-terminated string, without its NUL; `None` for NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for the call.
pub(crate) unsafe fn c_string(p: *const c_char) -> Option<Vec<u8>> {
    if p.is_null() {
        return None;
    }
    // SAFETY: not NULL and NUL-terminated by this function's contract.
    let s = unsafe { CStr::from_ptr(p) };
    Some(s.to_bytes().to_vec())
}

/// What `C_Initialize` was given (`CK_C_INITIALIZE_ARGS`).
#[derive(Debug)]
pub(crate) struct InitArgs {
    /// How many of the four mutex callbacks are set (0 or 4 are valid).
    pub(crate) mutex_callbacks: usize,
    /// `flags`.
    pub(crate) flags: CK_FLAGS,
    /// `pReserved` as a C string (p11-kit forwards it to the server's module, rpc §8).
    pub(crate) reserved: Option<Vec<u8>>,
}

/// Reads `C_Initialize`'s argument.
///
/// # Safety
/// `p` is NULL or points to a `CK_C_INITIALIZE_ARGS` whose `pReserved` is NULL or a
/// NUL-terminated string.
pub(crate) unsafe fn init_args(p: *mut c_void) -> Option<InitArgs> {
    if p.is_null() {
        return None;
    }
    // SAFETY: not NULL; C_Initialize's argument is a CK_C_INITIALIZE_ARGS (PKCS#11 §5.4). Any
    // bit pattern is a valid value of it; the callbacks are only tested for NULL, never called.
    let a = unsafe { std::ptr::read_unaligned(p.cast::<CK_C_INITIALIZE_ARGS>()) };
    let mutex_callbacks = [
        a.CreateMutex.is_some(),
        a.DestroyMutex.is_some(),
        a.LockMutex.is_some(),
        a.UnlockMutex.is_some(),
    ]
    .into_iter()
    .filter(|set| *set)
    .count();
    // SAFETY: pReserved is NULL or a C string (p11-kit's convention, which NSS also follows).
    let reserved = unsafe { c_string(a.pReserved.cast::<c_char>()) };
    Some(InitArgs {
        mutex_callbacks,
        flags: a.flags,
        reserved,
    })
}

/// An output byte buffer with its length (`pOut, pulOutLen`), §5.2 of PKCS#11.
#[derive(Debug)]
pub(crate) struct OutBytes<'a> {
    buf: Option<NonNull<u8>>,
    cap: usize,
    len: &'a mut CK_ULONG,
    _buf: PhantomData<&'a mut [u8]>,
}

impl<'a> OutBytes<'a> {
    /// `len` must not be NULL; `buf` NULL is a size query.
    ///
    /// # Safety
    /// `len` is NULL or valid for reads and writes of a `CK_ULONG` for `'a`; `buf` is NULL or
    /// valid for writes of `*len` bytes for `'a`.
    pub(crate) unsafe fn from_raw(buf: *mut u8, len: *mut CK_ULONG) -> Result<Self> {
        // SAFETY: NULL becomes None; otherwise valid for 'a by this function's contract.
        let len = unsafe { len.as_mut() }.ok_or(bad())?;
        let cap = if buf.is_null() { 0 } else { to_usize(*len)? };
        Ok(Self {
            buf: NonNull::new(buf),
            cap,
            len,
            _buf: PhantomData,
        })
    }

    /// What to ask the server for.
    pub(crate) fn cap(&self) -> OutCap {
        match self.buf {
            None => OutCap::Query,
            Some(_) => OutCap::Buffer((self.cap as u64).min(MAX_OUTPUT)),
        }
    }

    /// Report a reply: data, or only a size (a size-query answer, or `CKR_BUFFER_TOO_SMALL`).
    pub(crate) fn put(self, out: Output) -> Result<()> {
        match out {
            Output::Data(d) => self.put_slice(&d),
            Output::Size(n) => {
                *self.len = n;
                // A size of 0 fits any buffer (0.25+ servers send a NULL array for it).
                if self.buf.is_some() && n != 0 {
                    Err(rv(CKR_BUFFER_TOO_SMALL))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Report `data`: its length for a size query; copied if it fits; otherwise
    /// `CKR_BUFFER_TOO_SMALL` with the length needed.
    pub(crate) fn put_slice(self, data: &[u8]) -> Result<()> {
        *self.len = data.len() as CK_ULONG;
        let Some(buf) = self.buf else {
            return Ok(());
        };
        if data.len() > self.cap {
            return Err(rv(CKR_BUFFER_TOO_SMALL));
        }
        // SAFETY: `buf` is valid for `cap` bytes (constructor contract) and `data.len() <= cap`;
        // `data` is our own memory (a reply), so the two do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.as_ptr(), data.len()) };
        Ok(())
    }
}

/// An output buffer of exactly `len` bytes and no length pointer (`C_GenerateRandom`).
#[derive(Debug)]
pub(crate) struct OutFixed<'a> {
    buf: Option<NonNull<u8>>,
    len: usize,
    _buf: PhantomData<&'a mut [u8]>,
}

impl<'a> OutFixed<'a> {
    /// NULL is allowed only with length 0.
    ///
    /// # Safety
    /// `buf` is NULL or valid for writes of `len` bytes for `'a`.
    pub(crate) unsafe fn from_raw(buf: *mut u8, len: CK_ULONG) -> Result<Self> {
        let len = to_usize(len)?;
        if buf.is_null() && len != 0 {
            return Err(bad());
        }
        Ok(Self {
            buf: NonNull::new(buf),
            len,
            _buf: PhantomData,
        })
    }

    /// The number of bytes wanted.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Fill the buffer; `data` must be exactly as long.
    pub(crate) fn put(self, data: &[u8]) -> Result<()> {
        if data.len() != self.len {
            return Err(rv(CKR_DEVICE_ERROR));
        }
        if let Some(buf) = self.buf {
            // SAFETY: valid for `len` bytes (constructor contract) = data.len(); no overlap.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.as_ptr(), data.len()) };
        }
        Ok(())
    }
}

/// An output array of `CK_ULONG`s with its count (`C_GetSlotList`, `C_GetMechanismList`,
/// `C_FindObjects`).
#[derive(Debug)]
pub(crate) struct OutUlongs<'a> {
    buf: Option<NonNull<CK_ULONG>>,
    cap: usize,
    count: &'a mut CK_ULONG,
    _buf: PhantomData<&'a mut [CK_ULONG]>,
}

impl<'a> OutUlongs<'a> {
    /// `pList, pulCount` where `*pulCount` is the capacity; NULL `pList` asks for the count.
    ///
    /// # Safety
    /// `count` is NULL or valid for reads and writes for `'a`; `buf` is NULL or valid for
    /// writes of `*count` elements for `'a`.
    pub(crate) unsafe fn from_raw(buf: *mut CK_ULONG, count: *mut CK_ULONG) -> Result<Self> {
        // SAFETY: NULL becomes None; otherwise valid for 'a by contract.
        let count = unsafe { count.as_mut() }.ok_or(bad())?;
        let cap = if buf.is_null() { 0 } else { to_usize(*count)? };
        Ok(Self {
            buf: NonNull::new(buf),
            cap,
            count,
            _buf: PhantomData,
        })
    }

    /// `C_FindObjects`: the buffer holds `max` handles and `count` is only written.
    ///
    /// # Safety
    /// `count` is NULL or valid for writes for `'a`; `buf` is NULL or valid for writes of
    /// `max` elements for `'a`.
    pub(crate) unsafe fn with_capacity(
        buf: *mut CK_ULONG,
        max: CK_ULONG,
        count: *mut CK_ULONG,
    ) -> Result<Self> {
        // SAFETY: NULL becomes None; otherwise valid for 'a by contract.
        let count = unsafe { count.as_mut() }.ok_or(bad())?;
        if buf.is_null() && max != 0 {
            return Err(bad());
        }
        Ok(Self {
            buf: NonNull::new(buf),
            cap: to_usize(max)?,
            count,
            _buf: PhantomData,
        })
    }

    /// The capacity (0 for a count query).
    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    /// Whether the list pointer is NULL (a count query).
    pub(crate) fn is_count_query(&self) -> bool {
        self.buf.is_none()
    }

    /// Report a list: its count for a count query; copied if it fits; otherwise
    /// `CKR_BUFFER_TOO_SMALL` with the count needed.
    pub(crate) fn put(self, items: &[CK_ULONG]) -> Result<()> {
        *self.count = items.len() as CK_ULONG;
        let Some(buf) = self.buf else {
            return Ok(());
        };
        if items.len() > self.cap {
            return Err(rv(CKR_BUFFER_TOO_SMALL));
        }
        // SAFETY: valid for `cap` elements (constructor contract) and items.len() <= cap; the
        // items are our own memory.
        unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), buf.as_ptr(), items.len()) };
        Ok(())
    }
}

/// A pointer to one output value (`phSession`, `pInfo`, ...).
#[derive(Debug)]
pub(crate) struct OutPtr<'a, T> {
    p: NonNull<T>,
    _p: PhantomData<&'a mut T>,
}

impl<'a, T> OutPtr<'a, T> {
    /// NULL is `CKR_ARGUMENTS_BAD`.
    ///
    /// # Safety
    /// `p` is NULL or valid for writes of a `T` for `'a`.
    pub(crate) unsafe fn from_raw(p: *mut T) -> Result<Self> {
        Ok(Self {
            p: NonNull::new(p).ok_or(bad())?,
            _p: PhantomData,
        })
    }

    /// Write the value.
    pub(crate) fn put(self, value: T) {
        // SAFETY: valid for writes of a T (constructor contract); unaligned writes are fine
        // for any T, and the old contents (plain C data) need no drop.
        unsafe { self.p.as_ptr().write_unaligned(value) };
    }
}

/// One attribute of an input template (`C_CreateObject`, `C_FindObjectsInit`, ...).
#[derive(Debug)]
pub(crate) struct InAttr<'a> {
    /// `type`.
    pub(crate) ty: CK_ATTRIBUTE_TYPE,
    /// `pValue, ulValueLen` (`None` for a NULL `pValue`; template types keep it in `nested`).
    pub(crate) value: Option<&'a [u8]>,
    /// The nested template of `CKA_WRAP/UNWRAP/DERIVE_TEMPLATE`.
    pub(crate) nested: Option<Vec<Self>>,
}

/// Reads an input template.
///
/// # Safety
/// `p` is NULL or points to `count` `CK_ATTRIBUTE`s valid for `'a`, each `pValue` NULL or valid
/// for `ulValueLen` bytes (for template-valued types: an array of `ulValueLen /
/// sizeof(CK_ATTRIBUTE)` attributes with the same contract).
pub(crate) unsafe fn in_template<'a>(
    p: *const CK_ATTRIBUTE,
    count: CK_ULONG,
) -> Result<Vec<InAttr<'a>>> {
    // SAFETY: same contract.
    unsafe { in_template_at(p, count, 0) }
}

/// # Safety
/// As [`in_template`].
unsafe fn in_template_at<'a>(
    p: *const CK_ATTRIBUTE,
    count: CK_ULONG,
    depth: usize,
) -> Result<Vec<InAttr<'a>>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() || count > CK_ULONG::from(MAX_ATTRIBUTES) {
        return Err(if depth == 0 {
            bad()
        } else {
            rv(CKR_ATTRIBUTE_VALUE_INVALID)
        });
    }
    // SAFETY: not NULL, and `count` attributes are readable for 'a by contract.
    let raw = unsafe { std::slice::from_raw_parts(p, to_usize(count)?) };
    let mut out = Vec::with_capacity(raw.len());
    for a in raw {
        if is_template_type(a.type_) && !a.pValue.is_null() {
            if a.ulValueLen % ATTRIBUTE_SIZE != 0 || depth >= MAX_TEMPLATE_DEPTH {
                return Err(rv(CKR_ATTRIBUTE_VALUE_INVALID));
            }
            // SAFETY: a template-valued attribute's pValue is an array of ulValueLen /
            // sizeof(CK_ATTRIBUTE) attributes, under the same contract.
            let nested = unsafe {
                in_template_at(
                    a.pValue.cast::<CK_ATTRIBUTE>(),
                    a.ulValueLen / ATTRIBUTE_SIZE,
                    depth + 1,
                )
            }?;
            out.push(InAttr {
                ty: a.type_,
                value: None,
                nested: Some(nested),
            });
        } else {
            // SAFETY: pValue is NULL or valid for ulValueLen bytes by contract.
            let value = unsafe { in_opt_bytes(a.pValue.cast::<u8>(), a.ulValueLen) }
                .map_err(|_| rv(CKR_ATTRIBUTE_VALUE_INVALID))?;
            out.push(InAttr {
                ty: a.type_,
                value,
                nested: None,
            });
        }
    }
    Ok(out)
}

/// What the caller passed for one attribute of `C_GetAttributeValue`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `pValue` NULL: a size query.
    Query,
    /// A buffer of this many bytes.
    Buffer(usize),
    /// A template-valued attribute with an array of this many `CK_ATTRIBUTE`s.
    Nested(usize),
}

/// One entry of a `C_GetAttributeValue` template: where its value and length go.
#[derive(Debug)]
pub(crate) struct OutAttr<'a> {
    ty: &'a mut CK_ATTRIBUTE_TYPE,
    len: &'a mut CK_ULONG,
    buf: Option<NonNull<u8>>,
    cap: usize,
    nested: Option<Vec<Self>>,
    _buf: PhantomData<&'a mut [u8]>,
}

/// Reads a `C_GetAttributeValue` template.
///
/// # Safety
/// `p` is NULL or points to `count` `CK_ATTRIBUTE`s valid for reads and writes for `'a`, each
/// `pValue` NULL or valid for writes of `ulValueLen` bytes (for template-valued types: an
/// array of `ulValueLen / sizeof(CK_ATTRIBUTE)` attributes with the same contract), none of
/// them overlapping.
pub(crate) unsafe fn out_template<'a>(
    p: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> Result<Vec<OutAttr<'a>>> {
    // SAFETY: same contract.
    unsafe { out_template_at(p, count, 0) }
}

/// # Safety
/// As [`out_template`].
unsafe fn out_template_at<'a>(
    p: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    depth: usize,
) -> Result<Vec<OutAttr<'a>>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() || count > CK_ULONG::from(MAX_ATTRIBUTES) {
        return Err(bad());
    }
    // SAFETY: not NULL; `count` attributes valid for reads and writes for 'a by contract, and
    // not referenced elsewhere during the call.
    let raw = unsafe { std::slice::from_raw_parts_mut(p, to_usize(count)?) };
    let mut out = Vec::with_capacity(raw.len());
    for a in raw {
        let CK_ATTRIBUTE {
            type_: ty,
            pValue: value,
            ulValueLen: len,
        } = a;
        let value = *value;
        let mut nested = None;
        let mut cap = 0;
        if !value.is_null() {
            if is_template_type(*ty) && depth < MAX_TEMPLATE_DEPTH {
                // SAFETY: a template-valued attribute's pValue is an array of ulValueLen /
                // sizeof(CK_ATTRIBUTE) attributes, under the same contract.
                nested = Some(unsafe {
                    out_template_at(
                        value.cast::<CK_ATTRIBUTE>(),
                        *len / ATTRIBUTE_SIZE,
                        depth + 1,
                    )
                }?);
            } else {
                cap = to_usize(*len)?;
            }
        }
        out.push(OutAttr {
            ty,
            len,
            buf: NonNull::new(value.cast::<u8>()),
            cap,
            nested,
            _buf: PhantomData,
        });
    }
    Ok(out)
}

impl<'a> OutAttr<'a> {
    /// The attribute type asked for.
    pub(crate) fn ty(&self) -> CK_ATTRIBUTE_TYPE {
        *self.ty
    }

    /// What the caller passed.
    pub(crate) fn shape(&self) -> Shape {
        match (&self.nested, self.buf) {
            (Some(n), _) => Shape::Nested(n.len()),
            (None, None) => Shape::Query,
            (None, Some(_)) => Shape::Buffer(self.cap),
        }
    }

    /// The nested entries of a template-valued attribute.
    pub(crate) fn nested(&self) -> &[Self] {
        self.nested.as_deref().unwrap_or(&[])
    }

    /// The nested entries, for filling.
    pub(crate) fn nested_mut(&mut self) -> Option<&mut [Self]> {
        self.nested.as_deref_mut()
    }

    /// The module writes the types of nested entries.
    pub(crate) fn set_type(&mut self, ty: CK_ATTRIBUTE_TYPE) {
        *self.ty = ty;
    }

    /// `ulValueLen = CK_UNAVAILABLE_INFORMATION`.
    pub(crate) fn set_unavailable(&mut self) {
        *self.len = CK_UNAVAILABLE_INFORMATION;
    }

    /// `ulValueLen = len`.
    pub(crate) fn set_len(&mut self, len: u64) {
        *self.len = len;
    }

    /// Store `data`: its length for a size query; copied if it fits; otherwise the entry
    /// becomes unavailable and `false` is returned (the call's CK_RV is then
    /// `CKR_BUFFER_TOO_SMALL`).
    pub(crate) fn write(&mut self, data: &[u8]) -> bool {
        match (self.buf, &self.nested) {
            (None, _) => {
                *self.len = data.len() as CK_ULONG;
                true
            }
            (Some(buf), None) if data.len() <= self.cap => {
                // SAFETY: `buf` is valid for `cap` bytes (constructor contract) and
                // data.len() <= cap; `data` is our own memory.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.as_ptr(), data.len()) };
                *self.len = data.len() as CK_ULONG;
                true
            }
            _ => {
                self.set_unavailable();
                false
            }
        }
    }
}

/// Reads a `CK_MECHANISM`; `None` is a NULL pointer (cancelling an operation).
///
/// # Safety
/// `p` is NULL or points to a `CK_MECHANISM` whose `pParameter` is NULL or valid for
/// `ulParameterLen` bytes, and the pointers inside the standard parameter structures are NULL
/// or valid for their lengths, for the call.
pub(crate) unsafe fn mechanism(p: *const CK_MECHANISM) -> Result<Option<Mechanism>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: not NULL and points to a CK_MECHANISM by contract; any bit pattern is valid.
    let m = unsafe { std::ptr::read_unaligned(p) };
    if m.mechanism >= 0xFFFF_FFFF {
        // The protocol carries mechanism types as u32, and 0xFFFFFFFF is its NULL marker.
        return Err(rv(CKR_MECHANISM_INVALID));
    }
    if m.pParameter.is_null() || m.ulParameterLen == 0 {
        if m.pParameter.is_null() && m.ulParameterLen != 0 {
            return Err(rv(CKR_MECHANISM_PARAM_INVALID));
        }
        return Ok(Some(Mechanism::new(m.mechanism)));
    }
    // SAFETY: pParameter is not NULL and valid for ulParameterLen bytes by contract.
    let param = unsafe { mechanism_param(m.mechanism, m.pParameter, m.ulParameterLen) }?;
    Ok(Some(Mechanism::with(m.mechanism, param)))
}

/// Reads a parameter structure `T` of exactly `size_of::<T>()` bytes.
///
/// # Safety
/// `p` is not NULL and valid for `len` bytes.
unsafe fn read_param<T>(p: *const c_void, len: CK_ULONG) -> Result<T> {
    if usize::try_from(len).ok() != Some(size_of::<T>()) {
        return Err(rv(CKR_MECHANISM_PARAM_INVALID));
    }
    // SAFETY: valid for len = size_of::<T>() bytes (checked); unaligned reads need no
    // alignment; the parameter structures are plain C data for which every bit pattern is a
    // valid value.
    Ok(unsafe { std::ptr::read_unaligned(p.cast::<T>()) })
}

/// Bytes that a parameter structure points to; `None` for NULL.
///
/// # Safety
/// As [`in_opt_bytes`].
unsafe fn param_bytes(p: *const c_void, len: CK_ULONG) -> Result<Option<Vec<u8>>> {
    // SAFETY: same contract.
    unsafe { in_opt_bytes(p.cast::<u8>(), len) }
        .map(|b| b.map(<[u8]>::to_vec))
        .map_err(|_| rv(CKR_MECHANISM_PARAM_INVALID))
}

/// Converts a native parameter to its wire form, by mechanism type.
///
/// # Safety
/// `p` is not NULL and valid for `len` bytes; pointers inside the structure are NULL or
/// valid for their lengths.
unsafe fn mechanism_param(
    mech: CK_MECHANISM_TYPE,
    p: *const c_void,
    len: CK_ULONG,
) -> Result<MechParam> {
    let invalid = || rv(CKR_MECHANISM_PARAM_INVALID);
    Ok(match native_param(mech) {
        NativeParam::Pss => {
            // SAFETY: p valid for len bytes (contract); size checked by read_param.
            let s: CK_RSA_PKCS_PSS_PARAMS = unsafe { read_param(p, len) }?;
            MechParam::RsaPkcsPss {
                hash_alg: s.hashAlg,
                mgf: s.mgf,
                salt_len: s.sLen,
            }
        }
        NativeParam::Oaep => {
            // SAFETY: as above.
            let s: CK_RSA_PKCS_OAEP_PARAMS = unsafe { read_param(p, len) }?;
            // SAFETY: pSourceData is NULL or valid for ulSourceDataLen bytes (contract).
            let source_data = unsafe { param_bytes(s.pSourceData, s.ulSourceDataLen) }?;
            MechParam::RsaPkcsOaep {
                hash_alg: s.hashAlg,
                mgf: s.mgf,
                source: s.source,
                source_data,
            }
        }
        NativeParam::Ecdh1 => {
            // SAFETY: as above.
            let s: CK_ECDH1_DERIVE_PARAMS = unsafe { read_param(p, len) }?;
            // SAFETY: pSharedData is NULL or valid for ulSharedDataLen bytes (contract).
            let shared_data = unsafe { param_bytes(s.pSharedData.cast(), s.ulSharedDataLen) }?;
            // SAFETY: pPublicData is NULL or valid for ulPublicDataLen bytes (contract).
            let public_data = unsafe { param_bytes(s.pPublicData.cast(), s.ulPublicDataLen) }?;
            MechParam::Ecdh1Derive {
                kdf: s.kdf,
                shared_data,
                public_data,
            }
        }
        NativeParam::Gcm => {
            // SAFETY: as above.
            let s: CK_GCM_PARAMS = unsafe { read_param(p, len) }?;
            // SAFETY: pIv is NULL or valid for ulIvLen bytes (contract).
            let iv = unsafe { param_bytes(s.pIv.cast(), s.ulIvLen) }?;
            // SAFETY: pAAD is NULL or valid for ulAADLen bytes (contract).
            let aad = unsafe { param_bytes(s.pAAD.cast(), s.ulAADLen) }?;
            MechParam::AesGcm {
                iv,
                iv_bits: s.ulIvBits,
                aad,
                tag_bits: s.ulTagBits,
            }
        }
        NativeParam::AesCtr => {
            // SAFETY: as above.
            let s: CK_AES_CTR_PARAMS = unsafe { read_param(p, len) }?;
            MechParam::AesCtr {
                counter_bits: s.ulCounterBits,
                cb: s.cb,
            }
        }
        NativeParam::Iv(n) => {
            // SAFETY: p valid for len bytes (contract).
            let iv = unsafe { param_bytes(p, len) }?.unwrap_or_default();
            if iv.len() != n {
                return Err(invalid());
            }
            MechParam::Iv(iv)
        }
        NativeParam::MacGeneral => {
            // SAFETY: as above.
            MechParam::MacGeneral(unsafe { read_param::<CK_ULONG>(p, len) }?)
        }
        NativeParam::IbmEcdsaOther => {
            // SAFETY: as above.
            MechParam::IbmEcdsaOther(unsafe { read_param::<CK_ULONG>(p, len) }?)
        }
        NativeParam::IbmAttrBoundWrap => {
            // SAFETY: as above.
            MechParam::IbmAttrBoundWrap(unsafe { read_param::<CK_ULONG>(p, len) }?)
        }
        NativeParam::DhPublic => {
            // SAFETY: p valid for len bytes (contract); len > 0 was checked by the caller.
            MechParam::DhPkcsDerive(unsafe { param_bytes(p, len) }?.unwrap_or_default())
        }
        NativeParam::Raw => {
            // SAFETY: p valid for len bytes (contract).
            MechParam::Raw(unsafe { param_bytes(p, len) }?.unwrap_or_default())
        }
        NativeParam::NotCarried => return Err(invalid()),
    })
}

/// `CK_VERSION`.
pub(crate) fn ck_version(v: Version) -> CK_VERSION {
    CK_VERSION {
        major: v.major,
        minor: v.minor,
    }
}

/// `CK_INFO` for this library.
pub(crate) fn ck_info(cryptoki: (u8, u8), description: &str) -> CK_INFO {
    CK_INFO {
        cryptokiVersion: CK_VERSION {
            major: cryptoki.0,
            minor: cryptoki.1,
        },
        manufacturerID: p11fwd_wire::info::padded("p11fwd"),
        flags: 0,
        libraryDescription: p11fwd_wire::info::padded(description),
        libraryVersion: CK_VERSION {
            major: env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0),
            minor: env!("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0),
        },
    }
}

/// `CK_SLOT_INFO`.
pub(crate) fn ck_slot_info(i: &SlotInfo) -> CK_SLOT_INFO {
    CK_SLOT_INFO {
        slotDescription: i.slot_description,
        manufacturerID: i.manufacturer_id,
        flags: i.flags,
        hardwareVersion: ck_version(i.hardware_version),
        firmwareVersion: ck_version(i.firmware_version),
    }
}

/// `CK_TOKEN_INFO`.
pub(crate) fn ck_token_info(i: &TokenInfo) -> CK_TOKEN_INFO {
    CK_TOKEN_INFO {
        label: i.label,
        manufacturerID: i.manufacturer_id,
        model: i.model,
        serialNumber: i.serial_number,
        flags: i.flags,
        ulMaxSessionCount: i.max_session_count,
        ulSessionCount: i.session_count,
        ulMaxRwSessionCount: i.max_rw_session_count,
        ulRwSessionCount: i.rw_session_count,
        ulMaxPinLen: i.max_pin_len,
        ulMinPinLen: i.min_pin_len,
        ulTotalPublicMemory: i.total_public_memory,
        ulFreePublicMemory: i.free_public_memory,
        ulTotalPrivateMemory: i.total_private_memory,
        ulFreePrivateMemory: i.free_private_memory,
        hardwareVersion: ck_version(i.hardware_version),
        firmwareVersion: ck_version(i.firmware_version),
        utcTime: i.utc_time,
    }
}

/// `CK_SESSION_INFO`.
pub(crate) fn ck_session_info(i: &SessionInfo) -> CK_SESSION_INFO {
    CK_SESSION_INFO {
        slotID: i.slot_id,
        state: i.state,
        flags: i.flags,
        ulDeviceError: i.device_error,
    }
}

/// `CK_MECHANISM_INFO`.
pub(crate) fn ck_mechanism_info(i: &MechanismInfo) -> CK_MECHANISM_INFO {
    CK_MECHANISM_INFO {
        ulMinKeySize: i.min_key_size,
        ulMaxKeySize: i.max_key_size,
        flags: i.flags,
    }
}
