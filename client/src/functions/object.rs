//! Object management (PKCS#11 §5.7): create, copy, destroy, size, attributes, search.

use cryptoki_sys::{CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CKR_DEVICE_ERROR};
use p11fwd_wire::CallId;
use p11fwd_wire::value::MAX_ULONG_ARRAY;

use crate::attrs::{self, local};
use crate::ffi::{InAttr, OutAttr, OutUlongs};
use crate::state::Module;
use crate::{Result, rv};

/// `C_CreateObject`
pub(crate) fn create_object(
    m: &Module,
    h: CK_SESSION_HANDLE,
    template: &[InAttr<'_>],
) -> Result<CK_OBJECT_HANDLE> {
    m.session_call(h, |c, s| {
        let t =
            attrs::to_wire(template, c.dialect()).map_err(|e| local(CallId::CreateObject, e))?;
        c.create_object(s, t)
    })
}

/// `C_CopyObject`
pub(crate) fn copy_object(
    m: &Module,
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: &[InAttr<'_>],
) -> Result<CK_OBJECT_HANDLE> {
    m.session_call(h, |c, s| {
        let t = attrs::to_wire(template, c.dialect()).map_err(|e| local(CallId::CopyObject, e))?;
        c.copy_object(s, object, t)
    })
}

/// `C_DestroyObject`
pub(crate) fn destroy_object(
    m: &Module,
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
) -> Result<()> {
    m.session_call(h, |c, s| c.destroy_object(s, object))
}

/// `C_GetObjectSize`
pub(crate) fn object_size(
    m: &Module,
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
) -> Result<u64> {
    m.session_call(h, |c, s| c.get_object_size(s, object))
}

/// `C_GetAttributeValue` (see [`attrs::get`]).
pub(crate) fn get_attribute_value(
    m: &Module,
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: &mut [OutAttr<'_>],
) -> Result<()> {
    let code = m.session_call(h, |c, s| attrs::get(c, s, object, template))?;
    if code.is_ok() { Ok(()) } else { Err(code) }
}

/// `C_SetAttributeValue`
pub(crate) fn set_attribute_value(
    m: &Module,
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: &[InAttr<'_>],
) -> Result<()> {
    m.session_call(h, |c, s| {
        let t = attrs::to_wire(template, c.dialect())
            .map_err(|e| local(CallId::SetAttributeValue, e))?;
        c.set_attribute_value(s, object, t)
    })
}

/// `C_FindObjectsInit`
pub(crate) fn find_objects_init(
    m: &Module,
    h: CK_SESSION_HANDLE,
    template: &[InAttr<'_>],
) -> Result<()> {
    m.session_call(h, |c, s| {
        let t =
            attrs::to_wire(template, c.dialect()).map_err(|e| local(CallId::FindObjectsInit, e))?;
        c.find_objects_init(s, t)
    })
}

/// `C_FindObjects`: up to the caller's maximum (a maximum of 0 finds nothing, locally).
pub(crate) fn find_objects(m: &Module, h: CK_SESSION_HANDLE, out: OutUlongs<'_>) -> Result<()> {
    let max = out.capacity();
    if max == 0 {
        m.check_session(h)?;
        return out.put(&[]);
    }
    let ask = u32::try_from(max).unwrap_or(u32::MAX).min(MAX_ULONG_ARRAY);
    let found = m.session_call(h, |c, s| c.find_objects(s, ask))?;
    if found.len() > max {
        return Err(rv(CKR_DEVICE_ERROR));
    }
    out.put(&found)
}

/// `C_FindObjectsFinal`
pub(crate) fn find_objects_final(m: &Module, h: CK_SESSION_HANDLE) -> Result<()> {
    m.session_call(h, |c, s| c.find_objects_final(s))
}
