//! `OSSL_PARAM` arrays: reading what OpenSSL passes in, filling what it asks for, and static
//! descriptor tables for `gettable_*`/`settable_*` callbacks.
//!
//! - [`Params`]: a borrowed, read-only array (`set_params`, `set_ctx_params`, `load` inputs).
//!   [`Param`] reads one entry with type checks: [`Param::utf8`], [`Param::octets`],
//!   [`Param::int`], [`Param::size_t`], ...
//! - [`ParamsMut`]: a borrowed array whose buffers we fill (`get_params`, `get_ctx_params`).
//!   [`ParamMut`] writes one entry: [`ParamMut::set_int`], [`ParamMut::set_utf8`],
//!   [`ParamMut::set_static_utf8`], [`ParamMut::set_octets`], ...
//! - [`ParamBuilder`]: an array we build for OpenSSL (callbacks such as the store's
//!   `object_cb`), borrowing its strings and bytes.
//! - [`ParamTable`] + [`param_table!`]: a `static` descriptor array, END-terminated by the macro.
//!
//! Integers and the copying setters go through libcrypto's `OSSL_PARAM_get_*`/`set_*`, so
//! width conversions, `return_size` and the "NULL data means size query" rule are OpenSSL's own.
//! Lifetimes tie every `&str`/`&[u8]` read to the array's borrow (the kryoptic pattern).

use core::ffi::{CStr, c_char, c_int, c_uint, c_void};
use core::fmt;
use core::marker::PhantomData;
use std::ffi::CString;

use crate::error::Error;
use crate::sys::{self, OSSL_PARAM};

/// The `data_type` of an `OSSL_PARAM` (core.h `OSSL_PARAM_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParamType {
    /// `OSSL_PARAM_INTEGER`: a native signed integer of `data_size` bytes.
    Integer,
    /// `OSSL_PARAM_UNSIGNED_INTEGER`.
    UnsignedInteger,
    /// `OSSL_PARAM_REAL`: a `double`.
    Real,
    /// `OSSL_PARAM_UTF8_STRING`: the characters are in `data`.
    Utf8String,
    /// `OSSL_PARAM_OCTET_STRING`: the bytes are in `data`.
    OctetString,
    /// `OSSL_PARAM_UTF8_PTR`: `data` points to a `const char *`.
    Utf8Ptr,
    /// `OSSL_PARAM_OCTET_PTR`: `data` points to a `const void *`.
    OctetPtr,
}

impl ParamType {
    /// The C tag.
    pub(crate) const fn tag(self) -> c_uint {
        match self {
            Self::Integer => sys::OSSL_PARAM_INTEGER,
            Self::UnsignedInteger => sys::OSSL_PARAM_UNSIGNED_INTEGER,
            Self::Real => sys::OSSL_PARAM_REAL,
            Self::Utf8String => sys::OSSL_PARAM_UTF8_STRING,
            Self::OctetString => sys::OSSL_PARAM_OCTET_STRING,
            Self::Utf8Ptr => sys::OSSL_PARAM_UTF8_PTR,
            Self::OctetPtr => sys::OSSL_PARAM_OCTET_PTR,
        }
    }

    /// The type of a C tag, `None` for an unknown tag.
    pub(crate) fn from_tag(tag: c_uint) -> Option<Self> {
        [
            Self::Integer,
            Self::UnsignedInteger,
            Self::Real,
            Self::Utf8String,
            Self::OctetString,
            Self::Utf8Ptr,
            Self::OctetPtr,
        ]
        .into_iter()
        .find(|t| t.tag() == tag)
    }
}

/// A descriptor entry (`OSSL_PARAM_DEFN(key, type, NULL, 0)`), for [`ParamTable`]s.
pub(crate) const fn describe(key: &'static CStr, data_type: ParamType) -> OSSL_PARAM {
    OSSL_PARAM {
        key: key.as_ptr(),
        data_type: data_type.tag(),
        data: core::ptr::null_mut(),
        data_size: 0,
        return_size: sys::OSSL_PARAM_UNMODIFIED,
    }
}

/// The terminating entry (`OSSL_PARAM_END`).
pub(crate) const PARAM_END: OSSL_PARAM = OSSL_PARAM {
    key: core::ptr::null(),
    data_type: 0,
    data: core::ptr::null_mut(),
    data_size: 0,
    return_size: 0,
};

/// A static, END-terminated descriptor array, returned by `gettable_*`/`settable_*`.
/// Build it with [`param_table!`].
pub(crate) struct ParamTable(&'static [OSSL_PARAM]);

// SAFETY: the array is immutable and 'static, and its pointers point to 'static C strings; OpenSSL
// only reads it, from any thread.
unsafe impl Sync for ParamTable {}

impl ParamTable {
    /// Wraps `params`, which must have exactly one END entry, at the end (checked at compile
    /// time when used in a `static`).
    pub(crate) const fn new(params: &'static [OSSL_PARAM]) -> Self {
        let mut i = 0;
        while i < params.len() {
            let is_end = params[i].key.is_null();
            assert!(
                is_end == (i + 1 == params.len()),
                "ParamTable must end with one PARAM_END"
            );
            i += 1;
        }
        assert!(!params.is_empty(), "ParamTable must end with PARAM_END");
        Self(params)
    }

    /// The pointer to hand to OpenSSL.
    pub(crate) const fn as_ptr(&'static self) -> *const OSSL_PARAM {
        self.0.as_ptr()
    }

    /// The descriptors, as [`Params`].
    pub(crate) fn params(&self) -> Params<'static> {
        // SAFETY: the array is END-terminated (checked in `new`), 'static and immutable, and
        // descriptor entries have NULL data.
        unsafe { Params::from_ptr(self.0.as_ptr()) }
    }
}

/// Declares a [`ParamTable`]: `param_table![(OSSL_PROV_PARAM_NAME, Utf8Ptr), ...]`. The END
/// entry is appended.
macro_rules! param_table {
    ($(($key:expr, $ty:ident)),* $(,)?) => {
        $crate::ffi::params::ParamTable::new({
            const ENTRIES: &[$crate::sys::OSSL_PARAM] = &[
                $($crate::ffi::params::describe($key, $crate::ffi::params::ParamType::$ty),)*
                $crate::ffi::params::PARAM_END,
            ];
            ENTRIES
        })
    };
}
pub(crate) use param_table;

/// A borrowed, read-only, END-terminated `OSSL_PARAM` array (NULL reads as empty).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params<'a> {
    first: *const OSSL_PARAM,
    _array: PhantomData<&'a [OSSL_PARAM]>,
}

impl<'a> Params<'a> {
    /// Wraps a C array.
    ///
    /// # Safety
    ///
    /// `ptr` is NULL or points to an END-terminated `OSSL_PARAM` array that, with every key and
    /// every entry's data (as its `data_type`/`data_size` describe), stays valid and unmodified
    /// for `'a`.
    pub(crate) unsafe fn from_ptr(ptr: *const OSSL_PARAM) -> Self {
        Self {
            first: ptr,
            _array: PhantomData,
        }
    }

    /// The entries, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Param<'a>> + use<'a> {
        let mut next = self.first;
        core::iter::from_fn(move || {
            // SAFETY: `next` is NULL or inside the END-terminated array (`from_ptr` contract); we
            // never step past the END entry.
            let raw = unsafe { next.as_ref() }?;
            if raw.key.is_null() {
                return None;
            }
            // SAFETY: `raw` is not the END entry, so the next element exists.
            next = unsafe { next.add(1) };
            Some(Param { raw })
        })
    }

    /// The first entry with `key` (`OSSL_PARAM_locate_const`).
    pub(crate) fn locate(&self, key: &CStr) -> Option<Param<'a>> {
        self.iter().find(|p| p.key() == key)
    }

    /// Whether the array has no entries.
    pub(crate) fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// One read-only entry.
#[derive(Clone, Copy)]
pub(crate) struct Param<'a> {
    raw: &'a OSSL_PARAM,
}

impl<'a> Param<'a> {
    /// The key.
    pub(crate) fn key(&self) -> &'a CStr {
        // SAFETY: entries reached by iteration have a non-NULL, NUL-terminated key valid for 'a
        // (`Params::from_ptr` contract).
        unsafe { CStr::from_ptr(self.raw.key) }
    }

    /// The data type, `None` for a tag this OpenSSL version does not define.
    pub(crate) fn data_type(&self) -> Option<ParamType> {
        ParamType::from_tag(self.raw.data_type)
    }

    fn error(&self, problem: &'static str) -> Error {
        Error::Param {
            key: self.key().to_string_lossy().into_owned(),
            problem,
        }
    }

    /// A UTF8_STRING or UTF8_PTR value (a trailing NUL inside `data_size` is not part of it).
    pub(crate) fn utf8(&self) -> Result<&'a str, Error> {
        let bytes: &'a [u8] = match self.data_type() {
            Some(ParamType::Utf8String) => {
                if self.raw.data.is_null() {
                    return Err(self.error("no data"));
                }
                // SAFETY: a UTF8_STRING's `data` holds `data_size` bytes valid for 'a.
                let all = unsafe {
                    core::slice::from_raw_parts(self.raw.data.cast::<u8>(), self.raw.data_size)
                };
                all.split(|&b| b == 0).next().unwrap_or_default()
            }
            Some(ParamType::Utf8Ptr) => {
                if self.raw.data.is_null() {
                    return Err(self.error("no data"));
                }
                // SAFETY: a UTF8_PTR's `data` points to a `const char *` valid for 'a.
                let ptr = unsafe { *self.raw.data.cast::<*const c_char>() };
                if ptr.is_null() {
                    return Err(self.error("NULL string pointer"));
                }
                // SAFETY: that pointer is a NUL-terminated string valid for 'a.
                unsafe { CStr::from_ptr(ptr) }.to_bytes()
            }
            _ => return Err(self.error("not a UTF-8 string")),
        };
        core::str::from_utf8(bytes).map_err(|_| self.error("not valid UTF-8"))
    }

    /// An OCTET_STRING or OCTET_PTR value (`OSSL_PARAM_get_octet_string_ptr`).
    pub(crate) fn octets(&self) -> Result<&'a [u8], Error> {
        let mut ptr: *const c_void = core::ptr::null();
        let mut len = 0usize;
        // SAFETY: `raw` is a valid entry; the out-pointers are locals.
        let ok =
            unsafe { openssl_sys::OSSL_PARAM_get_octet_string_ptr(self.raw, &mut ptr, &mut len) };
        if ok != 1 {
            return Err(self.error("not an octet string"));
        }
        if ptr.is_null() {
            return if len == 0 {
                Ok(&[])
            } else {
                Err(self.error("no data"))
            };
        }
        // SAFETY: OpenSSL returned the entry's own data pointer and length, valid for 'a.
        Ok(unsafe { core::slice::from_raw_parts(ptr.cast::<u8>(), len) })
    }

    /// An UNSIGNED_INTEGER of any size (a big number, as `OSSL_PARAM_get_BN` reads it: native
    /// byte order), returned big-endian without leading zeros.
    pub(crate) fn biguint_be(&self) -> Result<Vec<u8>, Error> {
        if self.data_type() != Some(ParamType::UnsignedInteger) || self.raw.data.is_null() {
            return Err(self.error("not an unsigned integer"));
        }
        // SAFETY: an UNSIGNED_INTEGER's `data` holds `data_size` bytes valid for 'a.
        let native =
            unsafe { core::slice::from_raw_parts(self.raw.data.cast::<u8>(), self.raw.data_size) };
        let mut be: Vec<u8> = if cfg!(target_endian = "little") {
            native.iter().rev().copied().collect()
        } else {
            native.to_vec()
        };
        let skip = be.iter().take_while(|&&b| b == 0).count();
        be.drain(..skip);
        Ok(be)
    }

    /// An integer value as `int` (`OSSL_PARAM_get_int`; converts widths and signedness when
    /// the value fits).
    pub(crate) fn int(&self) -> Result<c_int, Error> {
        let mut v = 0;
        // SAFETY: valid entry, local out-pointer.
        let ok = unsafe { sys::OSSL_PARAM_get_int(self.raw, &mut v) };
        (ok == 1)
            .then_some(v)
            .ok_or_else(|| self.error("not an int"))
    }

    /// An integer value as `unsigned int` (`OSSL_PARAM_get_uint`).
    pub(crate) fn uint(&self) -> Result<c_uint, Error> {
        let mut v = 0;
        // SAFETY: valid entry, local out-pointer.
        let ok = unsafe { sys::OSSL_PARAM_get_uint(self.raw, &mut v) };
        (ok == 1)
            .then_some(v)
            .ok_or_else(|| self.error("not an unsigned int"))
    }

    /// An integer value as `int64_t` (`OSSL_PARAM_get_int64`).
    pub(crate) fn int64(&self) -> Result<i64, Error> {
        let mut v = 0;
        // SAFETY: valid entry, local out-pointer.
        let ok = unsafe { sys::OSSL_PARAM_get_int64(self.raw, &mut v) };
        (ok == 1)
            .then_some(v)
            .ok_or_else(|| self.error("not a 64-bit int"))
    }

    /// An integer value as `uint64_t` (`OSSL_PARAM_get_uint64`).
    pub(crate) fn uint64(&self) -> Result<u64, Error> {
        let mut v = 0;
        // SAFETY: valid entry, local out-pointer.
        let ok = unsafe { sys::OSSL_PARAM_get_uint64(self.raw, &mut v) };
        (ok == 1)
            .then_some(v)
            .ok_or_else(|| self.error("not an unsigned 64-bit int"))
    }

    /// An integer value as `size_t` (`OSSL_PARAM_get_size_t`).
    pub(crate) fn size_t(&self) -> Result<usize, Error> {
        let mut v = 0;
        // SAFETY: valid entry, local out-pointer.
        let ok = unsafe { sys::OSSL_PARAM_get_size_t(self.raw, &mut v) };
        (ok == 1)
            .then_some(v)
            .ok_or_else(|| self.error("not a size_t"))
    }
}

/// A borrowed, END-terminated `OSSL_PARAM` array whose buffers we fill (NULL reads as empty).
#[derive(Debug)]
pub(crate) struct ParamsMut<'a> {
    first: *mut OSSL_PARAM,
    _array: PhantomData<&'a mut [OSSL_PARAM]>,
}

impl<'a> ParamsMut<'a> {
    /// Wraps a C array.
    ///
    /// # Safety
    ///
    /// As [`Params::from_ptr`], and the array and every entry's `data` buffer (`data_size`
    /// bytes, or a pointer slot for the `*_PTR` types) are writable and not otherwise accessed
    /// for `'a`.
    pub(crate) unsafe fn from_ptr(ptr: *mut OSSL_PARAM) -> Self {
        Self {
            first: ptr,
            _array: PhantomData,
        }
    }

    /// The entries, in order, mutably.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = ParamMut<'_>> {
        let mut next = self.first;
        core::iter::from_fn(move || {
            // SAFETY: `next` is NULL or inside the END-terminated array; each element is handed
            // out once, so the `&mut` do not alias (as in `slice::IterMut`).
            let raw = unsafe { next.as_mut() }?;
            if raw.key.is_null() {
                return None;
            }
            // SAFETY: `raw` is not the END entry, so the next element exists.
            next = unsafe { next.add(1) };
            Some(ParamMut { raw })
        })
    }

    /// The first entry with `key` (`OSSL_PARAM_locate`).
    pub(crate) fn locate(&mut self, key: &CStr) -> Option<ParamMut<'_>> {
        self.iter_mut().find(|p| p.key() == key)
    }

    /// The same array, read-only.
    pub(crate) fn as_params(&self) -> Params<'_> {
        // SAFETY: the `from_ptr` contract of `self` covers it, and `&self` prevents writes.
        unsafe { Params::from_ptr(self.first) }
    }
}

/// One writable entry.
pub(crate) struct ParamMut<'b> {
    raw: &'b mut OSSL_PARAM,
}

impl ParamMut<'_> {
    /// The key.
    pub(crate) fn key(&self) -> &CStr {
        self.as_param().key()
    }

    /// The entry, read-only.
    pub(crate) fn as_param(&self) -> Param<'_> {
        Param { raw: self.raw }
    }

    /// Whether a setter has written this entry (`OSSL_PARAM_modified`).
    pub(crate) fn modified(&self) -> bool {
        self.raw.return_size != sys::OSSL_PARAM_UNMODIFIED
    }

    fn check(&self, ok: c_int, problem: &'static str) -> Result<(), Error> {
        if ok == 1 {
            Ok(())
        } else {
            Err(self.as_param().error(problem))
        }
    }

    /// `OSSL_PARAM_set_int`.
    pub(crate) fn set_int(&mut self, v: c_int) -> Result<(), Error> {
        // SAFETY: valid, writable entry (`ParamsMut::from_ptr` contract).
        let ok = unsafe { sys::OSSL_PARAM_set_int(self.raw, v) };
        self.check(ok, "cannot hold an int")
    }

    /// `OSSL_PARAM_set_uint`.
    pub(crate) fn set_uint(&mut self, v: c_uint) -> Result<(), Error> {
        // SAFETY: valid, writable entry.
        let ok = unsafe { sys::OSSL_PARAM_set_uint(self.raw, v) };
        self.check(ok, "cannot hold an unsigned int")
    }

    /// `OSSL_PARAM_set_int64`.
    pub(crate) fn set_int64(&mut self, v: i64) -> Result<(), Error> {
        // SAFETY: valid, writable entry.
        let ok = unsafe { sys::OSSL_PARAM_set_int64(self.raw, v) };
        self.check(ok, "cannot hold a 64-bit int")
    }

    /// `OSSL_PARAM_set_uint64`.
    pub(crate) fn set_uint64(&mut self, v: u64) -> Result<(), Error> {
        // SAFETY: valid, writable entry.
        let ok = unsafe { sys::OSSL_PARAM_set_uint64(self.raw, v) };
        self.check(ok, "cannot hold an unsigned 64-bit int")
    }

    /// `OSSL_PARAM_set_size_t`.
    pub(crate) fn set_size_t(&mut self, v: usize) -> Result<(), Error> {
        // SAFETY: valid, writable entry.
        let ok = unsafe { sys::OSSL_PARAM_set_size_t(self.raw, v) };
        self.check(ok, "cannot hold a size_t")
    }

    /// Copies `v` into a UTF8_STRING buffer (`OSSL_PARAM_set_utf8_string`; NULL data is a size
    /// query). A UTF8_PTR entry is refused: the pointer would dangle. Use
    /// [`ParamMut::set_static_utf8`] for those.
    pub(crate) fn set_utf8(&mut self, v: &str) -> Result<(), Error> {
        if self.raw.data_type == sys::OSSL_PARAM_UTF8_PTR {
            return Err(self
                .as_param()
                .error("a UTF8_PTR cannot point to a temporary string"));
        }
        let Ok(v) = CString::new(v) else {
            return Err(self.as_param().error("value has an interior NUL"));
        };
        // SAFETY: valid, writable entry; `v` is NUL-terminated and copied before returning.
        let ok = unsafe { sys::OSSL_PARAM_set_utf8_string(self.raw, v.as_ptr()) };
        self.check(ok, "not a UTF8_STRING, or its buffer is too small")
    }

    /// Sets a UTF8_PTR to `v`, or copies `v` into a UTF8_STRING buffer.
    pub(crate) fn set_static_utf8(&mut self, v: &'static CStr) -> Result<(), Error> {
        let ok = if self.raw.data_type == sys::OSSL_PARAM_UTF8_PTR {
            // SAFETY: valid, writable entry; `v` is 'static, so the stored pointer never dangles.
            unsafe { sys::OSSL_PARAM_set_utf8_ptr(self.raw, v.as_ptr()) }
        } else {
            // SAFETY: valid, writable entry; `v` is NUL-terminated.
            unsafe { sys::OSSL_PARAM_set_utf8_string(self.raw, v.as_ptr()) }
        };
        self.check(ok, "not a UTF-8 string, or its buffer is too small")
    }

    /// Writes a non-negative big number given as big-endian bytes into an UNSIGNED_INTEGER
    /// (as `OSSL_PARAM_set_BN` does: native byte order, padded to the buffer; NULL data is a
    /// size query).
    pub(crate) fn set_biguint(&mut self, be: &[u8]) -> Result<(), Error> {
        if self.raw.data_type != sys::OSSL_PARAM_UNSIGNED_INTEGER {
            return Err(self.as_param().error("not an unsigned integer"));
        }
        let skip = be.iter().take_while(|&&b| b == 0).count();
        let be = &be[skip..];
        self.raw.return_size = be.len().max(1);
        if self.raw.data.is_null() {
            return Ok(());
        }
        let size = self.raw.data_size;
        if size < be.len() {
            return Err(self.as_param().error("buffer too small for the number"));
        }
        // SAFETY: a non-NULL UNSIGNED_INTEGER's `data` holds `data_size` writable bytes
        // (`ParamsMut::from_ptr` contract).
        let out = unsafe { core::slice::from_raw_parts_mut(self.raw.data.cast::<u8>(), size) };
        out.fill(0);
        for (i, b) in be.iter().rev().enumerate() {
            if cfg!(target_endian = "little") {
                out[i] = *b;
            } else {
                out[size - 1 - i] = *b;
            }
        }
        self.raw.return_size = size;
        Ok(())
    }

    /// Copies `v` into an OCTET_STRING buffer (`OSSL_PARAM_set_octet_string`; NULL data is a
    /// size query). An OCTET_PTR entry is refused, as in [`ParamMut::set_utf8`].
    pub(crate) fn set_octets(&mut self, v: &[u8]) -> Result<(), Error> {
        if self.raw.data_type == sys::OSSL_PARAM_OCTET_PTR {
            return Err(self
                .as_param()
                .error("an OCTET_PTR cannot point to temporary bytes"));
        }
        // SAFETY: valid, writable entry; `v` is `v.len()` readable bytes, copied before returning.
        let ok = unsafe { sys::OSSL_PARAM_set_octet_string(self.raw, v.as_ptr().cast(), v.len()) };
        self.check(ok, "not an OCTET_STRING, or its buffer is too small")
    }
}

/// Builds an END-terminated array to hand to OpenSSL: the store's object callback, keymgmt
/// export callbacks, upcalls. Entries borrow their strings and bytes for `'a`; integers are
/// copied into the builder.
///
/// ```ignore
/// let params = ParamBuilder::new()
///     .int(OSSL_OBJECT_PARAM_TYPE, OSSL_OBJECT_PKEY)
///     .utf8(OSSL_OBJECT_PARAM_DATA_TYPE, c"RSA")
///     .octets(OSSL_OBJECT_PARAM_REFERENCE, &reference)
///     .build();
/// // SAFETY: ... object_cb is the core's callback ...
/// unsafe { object_cb(params.as_ptr(), object_cbarg) };
/// ```
pub(crate) struct ParamBuilder<'a> {
    entries: Vec<OSSL_PARAM>,
    /// Integer values, and the index of the entry each belongs to. Their addresses are filled
    /// in by `build`, once this vector no longer grows.
    scalars: Vec<(Scalar, usize)>,
    _data: PhantomData<&'a [u8]>,
}

/// The value of an integer entry.
enum Scalar {
    Int(c_int),
    UInt(c_uint),
    SizeT(usize),
    Int64(i64),
    UInt64(u64),
}

impl Scalar {
    fn data_type(&self) -> ParamType {
        match self {
            Self::Int(_) | Self::Int64(_) => ParamType::Integer,
            Self::UInt(_) | Self::SizeT(_) | Self::UInt64(_) => ParamType::UnsignedInteger,
        }
    }

    fn size(&self) -> usize {
        match self {
            Self::Int(_) => size_of::<c_int>(),
            Self::UInt(_) => size_of::<c_uint>(),
            Self::SizeT(_) => size_of::<usize>(),
            Self::Int64(_) | Self::UInt64(_) => size_of::<u64>(),
        }
    }

    fn data(&mut self) -> *mut c_void {
        match self {
            Self::Int(v) => (v as *mut c_int).cast(),
            Self::UInt(v) => (v as *mut c_uint).cast(),
            Self::SizeT(v) => (v as *mut usize).cast(),
            Self::Int64(v) => (v as *mut i64).cast(),
            Self::UInt64(v) => (v as *mut u64).cast(),
        }
    }
}

impl<'a> ParamBuilder<'a> {
    /// An empty builder.
    pub(crate) fn new() -> Self {
        Self {
            entries: Vec::new(),
            scalars: Vec::new(),
            _data: PhantomData,
        }
    }

    fn push(mut self, key: &'a CStr, data_type: ParamType, data: *mut c_void, size: usize) -> Self {
        self.entries.push(OSSL_PARAM {
            key: key.as_ptr(),
            data_type: data_type.tag(),
            data,
            data_size: size,
            return_size: sys::OSSL_PARAM_UNMODIFIED,
        });
        self
    }

    fn scalar(mut self, key: &'a CStr, value: Scalar) -> Self {
        let (data_type, size) = (value.data_type(), value.size());
        self.scalars.push((value, self.entries.len()));
        // `data` is set in `build`.
        self.push(key, data_type, core::ptr::null_mut(), size)
    }

    /// An `int` entry (`OSSL_PARAM_construct_int`).
    pub(crate) fn int(self, key: &'a CStr, value: c_int) -> Self {
        self.scalar(key, Scalar::Int(value))
    }

    /// An `unsigned int` entry.
    pub(crate) fn uint(self, key: &'a CStr, value: c_uint) -> Self {
        self.scalar(key, Scalar::UInt(value))
    }

    /// A `size_t` entry.
    pub(crate) fn size_t(self, key: &'a CStr, value: usize) -> Self {
        self.scalar(key, Scalar::SizeT(value))
    }

    /// An `int64_t` entry.
    pub(crate) fn int64(self, key: &'a CStr, value: i64) -> Self {
        self.scalar(key, Scalar::Int64(value))
    }

    /// A `uint64_t` entry.
    pub(crate) fn uint64(self, key: &'a CStr, value: u64) -> Self {
        self.scalar(key, Scalar::UInt64(value))
    }

    /// A UTF8_STRING entry (`OSSL_PARAM_construct_utf8_string(key, value, 0)`): `data_size` is
    /// the length without the NUL, and the NUL is there for readers that use the pointer as a
    /// C string (`OSSL_PARAM_get_utf8_string_ptr`, as OpenSSL's store code does).
    pub(crate) fn utf8(self, key: &'a CStr, value: &'a CStr) -> Self {
        let len = value.to_bytes().len();
        self.push(
            key,
            ParamType::Utf8String,
            value.as_ptr().cast_mut().cast(),
            len,
        )
    }

    /// An OCTET_STRING entry (`OSSL_PARAM_construct_octet_string`).
    pub(crate) fn octets(self, key: &'a CStr, value: &'a [u8]) -> Self {
        // Readers never write through a const array; `cast_mut` only fits the C struct.
        self.push(
            key,
            ParamType::OctetString,
            value.as_ptr().cast_mut().cast(),
            value.len(),
        )
    }

    /// An UNSIGNED_INTEGER big number, given in **native** byte order (what `OSSL_PARAM_get_BN`
    /// reads).
    pub(crate) fn biguint_native(self, key: &'a CStr, value: &'a [u8]) -> Self {
        self.push(
            key,
            ParamType::UnsignedInteger,
            value.as_ptr().cast_mut().cast(),
            value.len(),
        )
    }

    /// The finished, END-terminated array.
    pub(crate) fn build(mut self) -> BuiltParams<'a> {
        self.entries.push(PARAM_END);
        // One `iter_mut` hands out disjoint `&mut`, so the pointers taken here stay valid; the
        // vector's buffer does not move when the vector itself moves into `BuiltParams`.
        for (value, index) in self.scalars.iter_mut() {
            self.entries[*index].data = value.data();
        }
        BuiltParams {
            entries: self.entries,
            _scalars: self.scalars,
            _data: PhantomData,
        }
    }
}

/// An array made by [`ParamBuilder`]; it owns its integer values and borrows the rest.
pub(crate) struct BuiltParams<'a> {
    entries: Vec<OSSL_PARAM>,
    _scalars: Vec<(Scalar, usize)>,
    _data: PhantomData<&'a [u8]>,
}

impl BuiltParams<'_> {
    /// The array for a C `const OSSL_PARAM[]` argument, valid while `self` lives.
    pub(crate) fn as_ptr(&self) -> *const OSSL_PARAM {
        self.entries.as_ptr()
    }

    /// The array, readable from Rust.
    pub(crate) fn params(&self) -> Params<'_> {
        // SAFETY: END-terminated (`build`); every entry's data is a live integer slot owned by
        // `self` or a `'a` borrow, valid and unmodified while `self` is borrowed.
        unsafe { Params::from_ptr(self.entries.as_ptr()) }
    }
}

impl fmt::Debug for ParamBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParamBuilder")
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl fmt::Debug for BuiltParams<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.params().iter()).finish()
    }
}

impl fmt::Debug for ParamTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.params().iter()).finish()
    }
}

impl fmt::Debug for Param<'_> {
    /// Key and type only: values may be PINs or key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Param")
            .field("key", &self.key())
            .field("type", &self.data_type())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ParamMut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_param().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{OSSL_PROV_PARAM_NAME, OSSL_PROV_PARAM_STATUS, OSSL_PROV_PARAM_VERSION};

    fn entry(key: &'static CStr, ty: ParamType, data: *mut c_void, size: usize) -> OSSL_PARAM {
        OSSL_PARAM {
            key: key.as_ptr(),
            data_type: ty.tag(),
            data,
            data_size: size,
            return_size: sys::OSSL_PARAM_UNMODIFIED,
        }
    }

    static TABLE: ParamTable = param_table![
        (OSSL_PROV_PARAM_NAME, Utf8Ptr),
        (OSSL_PROV_PARAM_STATUS, Integer),
    ];

    #[test]
    fn builder_makes_arrays_openssl_can_read() {
        let reference = [9u8, 8, 7];
        let built = ParamBuilder::new()
            .int(c"type", 2)
            .utf8(c"data-type", c"RSA")
            .octets(c"reference", &reference)
            .size_t(c"bits", 2048)
            .uint64(c"big", u64::MAX)
            .build();
        let params = built.params();
        assert_eq!(params.iter().count(), 5);
        assert_eq!(params.locate(c"type").unwrap().int().unwrap(), 2);
        assert_eq!(params.locate(c"data-type").unwrap().utf8().unwrap(), "RSA");
        assert_eq!(
            params.locate(c"reference").unwrap().octets().unwrap(),
            reference
        );
        assert_eq!(params.locate(c"bits").unwrap().int().unwrap(), 2048);
        assert_eq!(params.locate(c"big").unwrap().uint64().unwrap(), u64::MAX);
        // As OpenSSL's store code reads it: a C string pointer.
        // SAFETY: `built` is a valid END-terminated array; the key is NUL-terminated.
        let p =
            unsafe { openssl_sys::OSSL_PARAM_locate_const(built.as_ptr(), c"data-type".as_ptr()) };
        let mut s: *const c_char = core::ptr::null();
        // SAFETY: `p` is an entry of `built`; `s` is a local out-pointer.
        let ok = unsafe { openssl_sys::OSSL_PARAM_get_utf8_string_ptr(p, &mut s) };
        assert_eq!(ok, 1);
        // SAFETY: points at the NUL-terminated c"RSA".
        assert_eq!(unsafe { CStr::from_ptr(s) }, c"RSA");
    }

    #[test]
    fn static_table_is_terminated_and_readable() {
        let keys: Vec<&CStr> = TABLE.params().iter().map(|p| p.key()).collect();
        assert_eq!(keys, [OSSL_PROV_PARAM_NAME, OSSL_PROV_PARAM_STATUS]);
        assert_eq!(
            TABLE
                .params()
                .locate(OSSL_PROV_PARAM_STATUS)
                .unwrap()
                .data_type(),
            Some(ParamType::Integer)
        );
    }

    #[test]
    fn fills_a_get_params_request_like_openssl_list() {
        let mut name: *const c_char = core::ptr::null();
        let mut version = [0u8; 8];
        let mut status: c_int = -1;
        let mut array = [
            entry(
                OSSL_PROV_PARAM_NAME,
                ParamType::Utf8Ptr,
                (&raw mut name).cast(),
                0,
            ),
            entry(
                OSSL_PROV_PARAM_VERSION,
                ParamType::Utf8String,
                version.as_mut_ptr().cast(),
                8,
            ),
            entry(
                OSSL_PROV_PARAM_STATUS,
                ParamType::Integer,
                (&raw mut status).cast(),
                4,
            ),
            PARAM_END,
        ];
        {
            // SAFETY: the array is END-terminated and its buffers outlive `params`.
            let mut params = unsafe { ParamsMut::from_ptr(array.as_mut_ptr()) };
            params
                .locate(OSSL_PROV_PARAM_NAME)
                .unwrap()
                .set_static_utf8(c"p11fwd")
                .unwrap();
            let mut v = params.locate(OSSL_PROV_PARAM_VERSION).unwrap();
            assert!(!v.modified());
            v.set_utf8("0.1.0").unwrap();
            assert!(v.modified());
            params
                .locate(OSSL_PROV_PARAM_STATUS)
                .unwrap()
                .set_int(1)
                .unwrap();
            assert!(params.locate(c"nope").is_none());
            // A UTF8_PTR must not point to a temporary.
            assert!(
                params
                    .locate(OSSL_PROV_PARAM_NAME)
                    .unwrap()
                    .set_utf8("x")
                    .is_err()
            );
            // Wrong type.
            assert!(
                params
                    .locate(OSSL_PROV_PARAM_STATUS)
                    .unwrap()
                    .set_utf8("x")
                    .is_err()
            );
        }
        // SAFETY: set to a 'static C string above.
        assert_eq!(unsafe { CStr::from_ptr(name) }, c"p11fwd");
        assert_eq!(&version, b"0.1.0\0\0\0");
        assert_eq!(array[1].return_size, 5);
        assert_eq!(status, 1);
    }

    #[test]
    fn short_buffer_fails_and_null_data_is_a_size_query() {
        let mut small = [0u8; 2];
        let mut array = [
            entry(c"a", ParamType::OctetString, small.as_mut_ptr().cast(), 2),
            entry(c"b", ParamType::OctetString, core::ptr::null_mut(), 0),
            PARAM_END,
        ];
        {
            // SAFETY: END-terminated, buffers outlive `params`.
            let mut params = unsafe { ParamsMut::from_ptr(array.as_mut_ptr()) };
            let err = params.locate(c"a").unwrap().set_octets(b"abc").unwrap_err();
            assert!(err.message().contains("too small"), "{}", err.message());
            params.locate(c"b").unwrap().set_octets(b"abc").unwrap();
        }
        assert_eq!(array[1].return_size, 3);
    }

    #[test]
    fn reads_typed_values_and_rejects_wrong_types() {
        let mut text = *b"pkcs11:object=k\0";
        let mut ptr_text: *const c_char = c"ptr".as_ptr();
        let mut bytes = [1u8, 2, 3];
        let mut wide: u64 = 42;
        let mut array = [
            entry(c"s", ParamType::Utf8String, text.as_mut_ptr().cast(), 15),
            entry(c"p", ParamType::Utf8Ptr, (&raw mut ptr_text).cast(), 0),
            entry(c"o", ParamType::OctetString, bytes.as_mut_ptr().cast(), 3),
            entry(c"n", ParamType::UnsignedInteger, (&raw mut wide).cast(), 8),
            PARAM_END,
        ];
        // SAFETY: END-terminated, buffers outlive `params`, nothing writes meanwhile.
        let params = unsafe { Params::from_ptr(array.as_mut_ptr()) };
        assert_eq!(
            params.locate(c"s").unwrap().utf8().unwrap(),
            "pkcs11:object=k"
        );
        assert_eq!(params.locate(c"p").unwrap().utf8().unwrap(), "ptr");
        assert_eq!(params.locate(c"o").unwrap().octets().unwrap(), [1, 2, 3]);
        let n = params.locate(c"n").unwrap();
        assert_eq!(n.int().unwrap(), 42);
        assert_eq!(n.size_t().unwrap(), 42);
        assert_eq!(n.uint64().unwrap(), 42);
        assert!(params.locate(c"s").unwrap().int().is_err());
        assert!(params.locate(c"n").unwrap().utf8().is_err());
        assert!(params.locate(c"n").unwrap().octets().is_err());
        assert_eq!(params.iter().count(), 4);
        // SAFETY: NULL is an empty array.
        assert!(unsafe { Params::from_ptr(core::ptr::null()) }.is_empty());
    }
}
