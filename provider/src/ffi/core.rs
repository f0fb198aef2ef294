//! The core handle and the upcalls into the OpenSSL core that the provider uses.
//!
//! [`Core`] is captured once in `OSSL_provider_init` and kept in the provctx. It holds the
//! handle, the core's dispatch table (for more upcalls later: `core_upcall!(core.dispatch(),
//! core_obj_create)`, or `OSSL_LIB_CTX_new_child(handle, in)`) and the upcalls used today.

use core::ffi::{CStr, c_char};
use core::ptr::NonNull;

use crate::config::RawConfig;
use crate::error::Error;
use crate::ffi::dispatch::{CoreDispatch, core_upcall};
use crate::sys::{self, OPENSSL_CORE_CTX, OSSL_CORE_HANDLE, OSSL_PARAM};

/// The core's handle for this provider instance plus the upcalls we use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Core {
    handle: NonNull<OSSL_CORE_HANDLE>,
    dispatch: CoreDispatch,
    get_params: sys::OSSL_FUNC_core_get_params_fn,
    get_libctx: sys::OSSL_FUNC_core_get_libctx_fn,
    bio_write: sys::OSSL_FUNC_BIO_write_ex_fn,
    bio_read: sys::OSSL_FUNC_BIO_read_ex_fn,
    bio_gets: sys::OSSL_FUNC_BIO_gets_fn,
}

// SAFETY: the handle is the core's `OSSL_PROVIDER`, valid until our teardown returns, and the
// core's upcalls may be called from any thread (they lock internally).
unsafe impl Send for Core {}
// SAFETY: as above; `Core` itself is immutable.
unsafe impl Sync for Core {}

/// The `OPENSSL_CORE_CTX *` of the library context this instance was loaded into. Opaque to
/// providers; compare it, or pass it back to the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CoreCtx(*const OPENSSL_CORE_CTX);

impl Core {
    /// Captures the handle and upcalls passed to `OSSL_provider_init`.
    ///
    /// # Safety
    ///
    /// `handle` is NULL or the core handle passed to `OSSL_provider_init` together with
    /// `dispatch`, and stays valid until the provider's teardown returns.
    pub(crate) unsafe fn new(
        handle: *const OSSL_CORE_HANDLE,
        dispatch: CoreDispatch,
    ) -> Result<Self, Error> {
        let handle = NonNull::new(handle.cast_mut()).ok_or(Error::NullPointer("core handle"))?;
        let get_params = core_upcall!(dispatch, core_get_params);
        let get_libctx = core_upcall!(dispatch, core_get_libctx);
        if get_params.is_none() || get_libctx.is_none() {
            return Err(Error::Internal(
                "the core offers no core_get_params/core_get_libctx",
            ));
        }
        let bio_write = core_upcall!(dispatch, BIO_write_ex);
        let bio_read = core_upcall!(dispatch, BIO_read_ex);
        let bio_gets = core_upcall!(dispatch, BIO_gets);
        Ok(Self {
            handle,
            dispatch,
            get_params,
            get_libctx,
            bio_write,
            bio_read,
            bio_gets,
        })
    }

    /// The core handle, for upcalls that take it.
    pub(crate) fn handle(&self) -> *const OSSL_CORE_HANDLE {
        self.handle.as_ptr().cast_const()
    }

    /// The core's dispatch table, for looking up further upcalls.
    pub(crate) fn dispatch(&self) -> CoreDispatch {
        self.dispatch
    }

    /// Writes all of `data` to a core BIO (`BIO_write_ex` upcall), for encoders.
    ///
    /// # Safety
    ///
    /// `bio` is the `OSSL_CORE_BIO *` the core passed to the current encoder call.
    pub(crate) unsafe fn bio_write(
        &self,
        bio: *mut sys::OSSL_CORE_BIO,
        data: &[u8],
    ) -> Result<(), Error> {
        let write = self
            .bio_write
            .ok_or(Error::Internal("the core offers no BIO_write_ex"))?;
        let mut written = 0usize;
        // SAFETY: `bio` is the core's BIO for this call (contract); `data` is readable for its
        // length; `written` is a local out-parameter.
        let ok = unsafe { write(bio, data.as_ptr().cast(), data.len(), &mut written) };
        if ok != 1 || written != data.len() {
            return Err(Error::Internal("BIO_write_ex failed"));
        }
        Ok(())
    }

    /// Reads everything left in a core BIO (`BIO_read_ex` upcall), at most `limit` bytes, for
    /// decoders.
    ///
    /// # Safety
    ///
    /// `bio` is the `OSSL_CORE_BIO *` the core passed to the current decoder call.
    pub(crate) unsafe fn bio_read_all(
        &self,
        bio: *mut sys::OSSL_CORE_BIO,
        limit: usize,
    ) -> Result<Vec<u8>, Error> {
        let read = self
            .bio_read
            .ok_or(Error::Internal("the core offers no BIO_read_ex"))?;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while out.len() < limit {
            let mut n = 0usize;
            // SAFETY: `bio` is the core's BIO for this call; `buf` is writable for its length;
            // `n` is a local out-parameter.
            let ok = unsafe { read(bio, buf.as_mut_ptr().cast(), buf.len(), &mut n) };
            if ok != 1 || n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n.min(buf.len())]);
        }
        Ok(out)
    }

    /// Reads one line (with its `\n`, if any) from a core BIO: `BIO_gets` when the core offers
    /// it, else one byte at a time, so that nothing after the line is consumed. Empty at the end.
    ///
    /// # Safety
    ///
    /// `bio` is the `OSSL_CORE_BIO *` the core passed to the current decoder call.
    pub(crate) unsafe fn bio_line(&self, bio: *mut sys::OSSL_CORE_BIO) -> Result<Vec<u8>, Error> {
        const MAX: usize = 8192;
        if let Some(gets) = self.bio_gets {
            let mut buf = vec![0u8; MAX + 1];
            // SAFETY: `bio` is the core's BIO; `buf` has MAX + 1 writable bytes (room for the NUL).
            let n = unsafe { gets(bio, buf.as_mut_ptr().cast(), (MAX + 1) as core::ffi::c_int) };
            if n <= 0 {
                return Ok(Vec::new());
            }
            buf.truncate((n as usize).min(MAX));
            return Ok(buf);
        }
        let read = self
            .bio_read
            .ok_or(Error::Internal("the core offers no BIO_read_ex"))?;
        let mut line = Vec::new();
        while line.len() < MAX {
            let mut b = 0u8;
            let mut n = 0usize;
            // SAFETY: as above, one writable byte.
            let ok = unsafe { read(bio, (&raw mut b).cast(), 1, &mut n) };
            if ok != 1 || n == 0 {
                break;
            }
            line.push(b);
            if b == b'\n' {
                break;
            }
        }
        Ok(line)
    }

    /// `core_get_libctx`.
    pub(crate) fn libctx(&self) -> CoreCtx {
        let Some(get_libctx) = self.get_libctx else {
            return CoreCtx(core::ptr::null());
        };
        // SAFETY: `get_libctx` is the core's upcall for this handle (checked in `new`).
        CoreCtx(unsafe { get_libctx(self.handle()) }.cast_const())
    }

    /// Looks up string parameters with `core_get_params`: the keys of this provider's
    /// openssl.cnf section, and the core's own `openssl-version`, `provider-name` and
    /// `module-filename`. Absent keys are absent from the result. One upcall for all keys.
    pub(crate) fn string_params(&self, keys: &[&'static CStr]) -> Result<RawConfig, Error> {
        let Some(get_params) = self.get_params else {
            return Err(Error::Internal("no core_get_params"));
        };
        // One pointer slot per key; the core stores a pointer to its own copy of the value.
        let mut values: Vec<*const c_char> = vec![core::ptr::null(); keys.len()];
        let slots = values.as_mut_ptr();
        let mut request: Vec<OSSL_PARAM> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| OSSL_PARAM {
                key: key.as_ptr(),
                data_type: sys::OSSL_PARAM_UTF8_PTR,
                // `i < values.len()`: the slot is inside `values`.
                data: slots.wrapping_add(i).cast(),
                data_size: 0,
                return_size: sys::OSSL_PARAM_UNMODIFIED,
            })
            .collect();
        request.push(crate::ffi::params::PARAM_END);
        // SAFETY: `request` is END-terminated; each entry's data is a writable `const char *`
        // slot in `values`, which outlives the call; the handle is valid (`new` contract).
        let ok = unsafe { get_params(self.handle(), request.as_mut_ptr()) };
        if ok != 1 {
            return Err(Error::Internal("core_get_params failed"));
        }
        drop(request);
        let mut raw = RawConfig::default();
        for (key, value) in keys.iter().zip(values) {
            if value.is_null() {
                continue;
            }
            // SAFETY: the core set the slot to a NUL-terminated string it owns for at least
            // the life of this provider instance; we copy it at once.
            let value = unsafe { CStr::from_ptr(value) };
            let value = value.to_str().map_err(|_| Error::Config {
                key: "configuration",
                problem: format!("the value of {key:?} is not UTF-8"),
            })?;
            raw.insert(key, value.to_owned());
        }
        Ok(raw)
    }
}
