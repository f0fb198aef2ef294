//! The few raw PKCS#11 calls that provision a SoftHSM token (token and PIN initialisation,
//! `C_CreateObject`).
//!
//! This is the only module of `p11fwd-tests` with `unsafe`. It runs only inside the
//! `p11fwd-test-token` helper process (see [`crate::provision`]), never in a test process: SoftHSM
//! takes its configuration from the `SOFTHSM2_CONF` environment variable, which tests must not set
//! globally. A high-level wrapper such as `cryptoki` is not used because it cannot express
//! `CKA_WRAP_TEMPLATE` (an attribute whose value is itself a template).
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::path::Path;
use std::ptr;

use anyhow::{Context, Result, bail};
use cryptoki_sys::{
    CK_ATTRIBUTE, CK_ATTRIBUTE_TYPE, CK_BBOOL, CK_C_GetFunctionList, CK_FUNCTION_LIST,
    CK_MECHANISM_TYPE, CK_OBJECT_HANDLE, CK_RV, CK_SESSION_HANDLE, CK_SLOT_ID, CK_TOKEN_INFO,
    CK_ULONG, CK_USER_TYPE, CKF_RW_SESSION, CKF_SERIAL_SESSION, CKR_OK,
};
use libloading::Library;

/// The value of one attribute in a template we send.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// `CK_ULONG` (classes, key types, lengths).
    Ulong(CK_ULONG),
    /// `CK_BBOOL`.
    Bool(bool),
    /// A byte array (labels, ids, big integers, DER).
    Bytes(Vec<u8>),
    /// `CK_MECHANISM_TYPE_PTR` (`CKA_ALLOWED_MECHANISMS`).
    Mechanisms(Vec<CK_MECHANISM_TYPE>),
    /// `CK_ATTRIBUTE_PTR` (`CKA_WRAP_TEMPLATE` and friends).
    Template(Vec<Attr>),
}

/// One attribute of a template.
#[derive(Debug, Clone)]
pub(crate) struct Attr {
    pub(crate) ty: CK_ATTRIBUTE_TYPE,
    pub(crate) value: Value,
}

impl Attr {
    pub(crate) fn ulong(ty: CK_ATTRIBUTE_TYPE, v: CK_ULONG) -> Self {
        Self {
            ty,
            value: Value::Ulong(v),
        }
    }
    pub(crate) fn bool(ty: CK_ATTRIBUTE_TYPE, v: bool) -> Self {
        Self {
            ty,
            value: Value::Bool(v),
        }
    }
    pub(crate) fn bytes(ty: CK_ATTRIBUTE_TYPE, v: impl Into<Vec<u8>>) -> Self {
        Self {
            ty,
            value: Value::Bytes(v.into()),
        }
    }
    pub(crate) fn mechanisms(ty: CK_ATTRIBUTE_TYPE, v: Vec<CK_MECHANISM_TYPE>) -> Self {
        Self {
            ty,
            value: Value::Mechanisms(v),
        }
    }
    pub(crate) fn template(ty: CK_ATTRIBUTE_TYPE, v: Vec<Self>) -> Self {
        Self {
            ty,
            value: Value::Template(v),
        }
    }
}

/// A `CK_ATTRIBUTE` array together with the buffers its pointers point into. The buffers live on
/// the heap, so moving this struct does not invalidate the pointers.
struct RawTemplate {
    attrs: Vec<CK_ATTRIBUTE>,
    _buffers: Vec<Vec<u8>>,
    _nested: Vec<Self>,
}

impl RawTemplate {
    fn new(template: &[Attr]) -> Self {
        let mut attrs = Vec::with_capacity(template.len());
        let mut buffers = Vec::new();
        let mut nested = Vec::new();
        for attr in template {
            let (ptr, len) = match &attr.value {
                Value::Template(inner) => {
                    let mut raw = Self::new(inner);
                    let len = raw.attrs.len() * size_of::<CK_ATTRIBUTE>();
                    let ptr = raw.attrs.as_mut_ptr().cast::<c_void>();
                    nested.push(raw);
                    (ptr, len)
                }
                other => {
                    let mut buf = match other {
                        Value::Ulong(v) => v.to_ne_bytes().to_vec(),
                        Value::Bool(b) => vec![CK_BBOOL::from(*b)],
                        Value::Bytes(b) => b.clone(),
                        Value::Mechanisms(m) => m.iter().flat_map(|v| v.to_ne_bytes()).collect(),
                        Value::Template(_) => unreachable!("handled above"),
                    };
                    let len = buf.len();
                    let ptr = if len == 0 {
                        ptr::null_mut()
                    } else {
                        buf.as_mut_ptr().cast::<c_void>()
                    };
                    buffers.push(buf);
                    (ptr, len)
                }
            };
            attrs.push(CK_ATTRIBUTE {
                type_: attr.ty,
                pValue: ptr,
                ulValueLen: len as CK_ULONG,
            });
        }
        Self {
            attrs,
            _buffers: buffers,
            _nested: nested,
        }
    }
}

/// A loaded PKCS#11 module.
pub(crate) struct Module {
    functions: *const CK_FUNCTION_LIST,
    // Declared last so it is dropped after everything that may point into it.
    _lib: Library,
}

fn check(rv: CK_RV, what: &str) -> Result<()> {
    if rv == CKR_OK {
        Ok(())
    } else {
        bail!("{what} failed: {} (0x{rv:08x})", rv_name(rv))
    }
}

/// Name of the return values that provisioning can meet.
pub(crate) fn rv_name(rv: CK_RV) -> &'static str {
    use cryptoki_sys::*;
    match rv {
        CKR_OK => "CKR_OK",
        CKR_GENERAL_ERROR => "CKR_GENERAL_ERROR",
        CKR_FUNCTION_FAILED => "CKR_FUNCTION_FAILED",
        CKR_ARGUMENTS_BAD => "CKR_ARGUMENTS_BAD",
        CKR_ATTRIBUTE_READ_ONLY => "CKR_ATTRIBUTE_READ_ONLY",
        CKR_ATTRIBUTE_TYPE_INVALID => "CKR_ATTRIBUTE_TYPE_INVALID",
        CKR_ATTRIBUTE_VALUE_INVALID => "CKR_ATTRIBUTE_VALUE_INVALID",
        CKR_CURVE_NOT_SUPPORTED => "CKR_CURVE_NOT_SUPPORTED",
        CKR_DOMAIN_PARAMS_INVALID => "CKR_DOMAIN_PARAMS_INVALID",
        CKR_KEY_SIZE_RANGE => "CKR_KEY_SIZE_RANGE",
        CKR_MECHANISM_INVALID => "CKR_MECHANISM_INVALID",
        CKR_PIN_INCORRECT => "CKR_PIN_INCORRECT",
        CKR_PIN_LEN_RANGE => "CKR_PIN_LEN_RANGE",
        CKR_SLOT_ID_INVALID => "CKR_SLOT_ID_INVALID",
        CKR_TEMPLATE_INCOMPLETE => "CKR_TEMPLATE_INCOMPLETE",
        CKR_TEMPLATE_INCONSISTENT => "CKR_TEMPLATE_INCONSISTENT",
        CKR_TOKEN_NOT_PRESENT => "CKR_TOKEN_NOT_PRESENT",
        CKR_USER_NOT_LOGGED_IN => "CKR_USER_NOT_LOGGED_IN",
        CKR_CRYPTOKI_NOT_INITIALIZED => "CKR_CRYPTOKI_NOT_INITIALIZED",
        _ => "unknown CKR",
    }
}

impl Module {
    /// Loads the module and calls `C_GetFunctionList`.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        // SAFETY: loading a PKCS#11 module runs its initialisers; that is what we are here for,
        // and the path is a PKCS#11 module named by the test fixture.
        let lib = unsafe { Library::new(path) }
            .with_context(|| format!("cannot load {}", path.display()))?;
        let mut functions: *mut CK_FUNCTION_LIST = ptr::null_mut();
        {
            // SAFETY: `C_GetFunctionList` has type `CK_C_GetFunctionList` in every PKCS#11 module.
            let get: libloading::Symbol<'_, CK_C_GetFunctionList> =
                unsafe { lib.get(b"C_GetFunctionList\0") }
                    .with_context(|| format!("{} has no C_GetFunctionList", path.display()))?;
            let get = (*get).context("C_GetFunctionList is NULL")?;
            // SAFETY: `functions` is a valid out-pointer for the duration of the call.
            let rv = unsafe { get(&mut functions) };
            check(rv, "C_GetFunctionList")?;
        }
        if functions.is_null() {
            bail!("C_GetFunctionList returned a NULL list");
        }
        Ok(Self {
            functions,
            _lib: lib,
        })
    }

    fn list(&self) -> &CK_FUNCTION_LIST {
        // SAFETY: non-NULL (checked in `load`), returned by the module, and valid while the library
        // stays loaded, which `self._lib` guarantees for the lifetime of `self`.
        unsafe { &*self.functions }
    }

    pub(crate) fn initialize(&self) -> Result<()> {
        let f = self.list().C_Initialize.context("C_Initialize missing")?;
        // SAFETY: NULL arguments are allowed: the application does not use threads here.
        let rv = unsafe { f(ptr::null_mut()) };
        check(rv, "C_Initialize")
    }

    pub(crate) fn finalize(&self) -> Result<()> {
        let f = self.list().C_Finalize.context("C_Finalize missing")?;
        // SAFETY: the reserved argument must be NULL.
        let rv = unsafe { f(ptr::null_mut()) };
        check(rv, "C_Finalize")
    }

    pub(crate) fn slots(&self) -> Result<Vec<CK_SLOT_ID>> {
        let f = self.list().C_GetSlotList.context("C_GetSlotList missing")?;
        let mut count: CK_ULONG = 0;
        // SAFETY: a NULL list with a valid count pointer is the length query.
        let rv = unsafe { f(0, ptr::null_mut(), &mut count) };
        check(rv, "C_GetSlotList")?;
        let mut slots: Vec<CK_SLOT_ID> = vec![0; count as usize];
        // SAFETY: `slots` has room for `count` entries.
        let rv = unsafe { f(0, slots.as_mut_ptr(), &mut count) };
        check(rv, "C_GetSlotList")?;
        slots.truncate(count as usize);
        Ok(slots)
    }

    pub(crate) fn token_info(&self, slot: CK_SLOT_ID) -> Result<CK_TOKEN_INFO> {
        let f = self
            .list()
            .C_GetTokenInfo
            .context("C_GetTokenInfo missing")?;
        let mut info = CK_TOKEN_INFO::default();
        // SAFETY: `info` is a valid out-pointer.
        let rv = unsafe { f(slot, &mut info) };
        check(rv, "C_GetTokenInfo")?;
        Ok(info)
    }

    pub(crate) fn init_token(&self, slot: CK_SLOT_ID, so_pin: &str, label: &str) -> Result<()> {
        let f = self.list().C_InitToken.context("C_InitToken missing")?;
        let mut padded = [b' '; 32];
        if label.len() > padded.len() {
            bail!("token label {label:?} is longer than 32 bytes");
        }
        padded[..label.len()].copy_from_slice(label.as_bytes());
        let mut pin = so_pin.as_bytes().to_vec();
        // SAFETY: the PIN buffer holds `pin.len()` bytes and the label buffer 32, as required.
        let rv = unsafe {
            f(
                slot,
                pin.as_mut_ptr(),
                pin.len() as CK_ULONG,
                padded.as_mut_ptr(),
            )
        };
        check(rv, "C_InitToken")
    }

    pub(crate) fn open_session(&self, slot: CK_SLOT_ID) -> Result<CK_SESSION_HANDLE> {
        let f = self.list().C_OpenSession.context("C_OpenSession missing")?;
        let mut session: CK_SESSION_HANDLE = 0;
        let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
        // SAFETY: no notification callback; `session` is a valid out-pointer.
        let rv = unsafe { f(slot, flags, ptr::null_mut(), None, &mut session) };
        check(rv, "C_OpenSession")?;
        Ok(session)
    }

    pub(crate) fn close_session(&self, session: CK_SESSION_HANDLE) -> Result<()> {
        let f = self
            .list()
            .C_CloseSession
            .context("C_CloseSession missing")?;
        // SAFETY: plain handle argument.
        let rv = unsafe { f(session) };
        check(rv, "C_CloseSession")
    }

    pub(crate) fn login(
        &self,
        session: CK_SESSION_HANDLE,
        user: CK_USER_TYPE,
        pin: &str,
    ) -> Result<()> {
        let f = self.list().C_Login.context("C_Login missing")?;
        let mut pin = pin.as_bytes().to_vec();
        // SAFETY: the PIN buffer holds `pin.len()` bytes.
        let rv = unsafe { f(session, user, pin.as_mut_ptr(), pin.len() as CK_ULONG) };
        check(rv, "C_Login")
    }

    pub(crate) fn logout(&self, session: CK_SESSION_HANDLE) -> Result<()> {
        let f = self.list().C_Logout.context("C_Logout missing")?;
        // SAFETY: plain handle argument.
        let rv = unsafe { f(session) };
        check(rv, "C_Logout")
    }

    pub(crate) fn init_pin(&self, session: CK_SESSION_HANDLE, pin: &str) -> Result<()> {
        let f = self.list().C_InitPIN.context("C_InitPIN missing")?;
        let mut pin = pin.as_bytes().to_vec();
        // SAFETY: the PIN buffer holds `pin.len()` bytes.
        let rv = unsafe { f(session, pin.as_mut_ptr(), pin.len() as CK_ULONG) };
        check(rv, "C_InitPIN")
    }

    pub(crate) fn create_object(
        &self,
        session: CK_SESSION_HANDLE,
        template: &[Attr],
    ) -> Result<CK_OBJECT_HANDLE> {
        let f = self
            .list()
            .C_CreateObject
            .context("C_CreateObject missing")?;
        let mut raw = RawTemplate::new(template);
        let mut handle: CK_OBJECT_HANDLE = 0;
        let count = raw.attrs.len() as CK_ULONG;
        // SAFETY: `raw` owns the attribute array and every buffer it points into for the duration
        // of the call; `handle` is a valid out-pointer.
        let rv = unsafe { f(session, raw.attrs.as_mut_ptr(), count, &mut handle) };
        check(rv, "C_CreateObject")?;
        Ok(handle)
    }
}
