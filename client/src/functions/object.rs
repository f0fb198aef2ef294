//! Object management (PKCS#11 §5.7): create, copy, destroy, size, attributes, search.

use cryptoki_sys::{CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CKR_DEVICE_ERROR};
use p11fwd_wire::CallId;
use p11fwd_wire::client::{UlongOutput, parse, req};
use p11fwd_wire::value::MAX_ULONG_ARRAY;

use crate::attrs::{self, local};
use crate::ffi::{InAttr, OutAttr, OutUlongs};
use crate::pipeline::{Current, Event, Op, OpSet};
use crate::state::Module;
use crate::{Result, rv};

/// Remember object handles the server gave us (deferred Inits need a known key).
fn learn(m: &Module, h: CK_SESSION_HANDLE, handles: &[u64]) {
    if let Ok(place) = m.place(h)
        && let Ok(mut objects) = m.objects()
    {
        objects.learn(place.generation, place.slot, handles);
    }
}

/// Forget what we know of an object (destroyed, or its attributes changed).
fn unlearn(m: &Module, h: CK_SESSION_HANDLE, object: u64, destroyed: bool) {
    if let Ok(place) = m.place(h)
        && let Ok(mut objects) = m.objects()
    {
        objects.forget(place.generation, place.slot, object, destroyed);
    }
}

/// `C_CreateObject`
pub(crate) fn create_object(
    m: &Module,
    h: CK_SESSION_HANDLE,
    template: &[InAttr<'_>],
) -> Result<CK_OBJECT_HANDLE> {
    let object = m.session_call(h, |c, s| {
        let t =
            attrs::to_wire(template, c.dialect()).map_err(|e| local(CallId::CreateObject, e))?;
        c.create_object(s, t)
    })?;
    learn(m, h, &[object]);
    Ok(object)
}

/// `C_CopyObject`
pub(crate) fn copy_object(
    m: &Module,
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: &[InAttr<'_>],
) -> Result<CK_OBJECT_HANDLE> {
    let copy = m.session_call(h, |c, s| {
        let t = attrs::to_wire(template, c.dialect()).map_err(|e| local(CallId::CopyObject, e))?;
        c.copy_object(s, object, t)
    })?;
    learn(m, h, &[copy]);
    Ok(copy)
}

/// `C_DestroyObject`
pub(crate) fn destroy_object(
    m: &Module,
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
) -> Result<()> {
    m.session_tx(h, OpSet::NONE, None, |tx, s| {
        tx.call(&req::destroy_object(s, object))
            .and_then(parse::unit)
    })?;
    unlearn(m, h, object, true);
    Ok(())
}

/// `C_GetObjectSize`
pub(crate) fn object_size(
    m: &Module,
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
) -> Result<u64> {
    m.session_tx(h, OpSet::NONE, None, |tx, s| {
        tx.call(&req::get_object_size(s, object))
            .and_then(parse::ulong)
    })
}

/// `C_GetAttributeValue` (see [`attrs::get`]).
pub(crate) fn get_attribute_value(
    m: &Module,
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: &mut [OutAttr<'_>],
) -> Result<()> {
    let code = m.session_tx(h, OpSet::NONE, None, |tx, s| {
        attrs::get(tx, s, object, template)
    })?;
    if code.is_ok() { Ok(()) } else { Err(code) }
}

/// `C_SetAttributeValue`
pub(crate) fn set_attribute_value(
    m: &Module,
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: &[InAttr<'_>],
) -> Result<()> {
    m.session_tx(h, OpSet::NONE, None, |tx, s| {
        let t = attrs::to_wire(template, tx.dialect())
            .map_err(|e| local(CallId::SetAttributeValue, e))?;
        tx.call(&req::set_attribute_value(s, object, t))
            .and_then(parse::unit)
    })?;
    unlearn(m, h, object, false);
    Ok(())
}

/// `C_FindObjectsInit`: deferred to the first `C_FindObjects` when no search is possibly
/// active (`crate::pipeline`); the template is checked here.
pub(crate) fn find_objects_init(
    m: &Module,
    h: CK_SESSION_HANDLE,
    template: &[InAttr<'_>],
) -> Result<()> {
    let search = Current { mech: 0, key: None };
    let place = m.place(h)?;
    if let Some(dialect) = m.dialect() {
        let r = req::find_objects_init(place.remote, attrs::to_wire(template, dialect)?);
        let deferred = r.encode(dialect).is_ok()
            && m.with_ops(h, |ops, now| {
                if now != place || !ops.may_defer(Op::Find) {
                    return false;
                }
                ops.defer_init(Op::Find, r, search);
                true
            })?;
        if deferred {
            return Ok(());
        }
    }
    m.session_tx(h, OpSet::NONE, None, |tx, s| {
        let t = attrs::to_wire(template, tx.dialect())
            .map_err(|e| local(CallId::FindObjectsInit, e))?;
        tx.call(&req::find_objects_init(s, t)).and_then(parse::unit)
    })?;
    m.record(h, Event::Started(Op::Find, search));
    Ok(())
}

/// `C_FindObjects`: up to the caller's maximum (a maximum of 0 finds nothing, locally). Sent
/// with a deferred `C_FindObjectsInit` in one write.
pub(crate) fn find_objects(m: &Module, h: CK_SESSION_HANDLE, out: OutUlongs<'_>) -> Result<()> {
    let max = out.capacity();
    if max == 0 {
        m.check_session(h)?;
        return out.put(&[]);
    }
    let ask = u32::try_from(max).unwrap_or(u32::MAX).min(MAX_ULONG_ARRAY);
    let found = m.session_tx(h, OpSet::of(Op::Find), None, |tx, s| {
        let got = tx
            .call(&req::find_objects(s, ask))
            .and_then(parse::ulong_output)?;
        Ok(match got {
            UlongOutput::Data(v) => v,
            UlongOutput::Size(_) => Vec::new(),
        })
    })?;
    if found.len() > max {
        return Err(rv(CKR_DEVICE_ERROR));
    }
    learn(m, h, &found);
    out.put(&found)
}

/// `C_FindObjectsFinal`: answered locally when the search is known to be active (the Final
/// travels with the session's next call) or never reached the server.
pub(crate) fn find_objects_final(m: &Module, h: CK_SESSION_HANDLE) -> Result<()> {
    if m.with_ops(h, |ops, place| {
        ops.find_final_locally(req::find_objects_final(place.remote))
    })? {
        return Ok(());
    }
    m.session_tx(h, OpSet::NONE, None, |tx, s| {
        tx.call(&req::find_objects_final(s)).and_then(parse::unit)
    })?;
    m.record(h, Event::Ended(Op::Find));
    Ok(())
}
