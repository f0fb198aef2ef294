//! Session management (PKCS#11 §5.6): open/close, info, login, PINs, operation state, and
//! `C_SessionCancel` (3.0).

use cryptoki_sys::{
    CK_FLAGS, CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CK_SLOT_ID, CK_USER_TYPE, CKF_SERIAL_SESSION,
    CKR_SESSION_PARALLEL_NOT_SUPPORTED, CKR_SLOT_ID_INVALID, CKU_CONTEXT_SPECIFIC,
};
use p11fwd_wire::client::{parse, req};
use p11fwd_wire::info::SessionInfo;
use p11fwd_wire::message::Request;

use crate::ffi::OutBytes;
use crate::functions::crypto::size_first;
use crate::functions::scrub;
use crate::pipeline::{Event, OpSet};
use crate::state::Module;
use crate::{Result, rv};

/// `C_OpenSession`: the server's session gets one of our handles. `pApplication` and `Notify`
/// do not cross the wire (as with `p11-kit-client.so`).
pub(crate) fn open_session(
    m: &Module,
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
) -> Result<CK_SESSION_HANDLE> {
    if flags & CKF_SERIAL_SESSION == 0 {
        return Err(rv(CKR_SESSION_PARALLEL_NOT_SUPPORTED));
    }
    let (remote, generation) = m.slot_call(
        true,
        || Err(rv(CKR_SLOT_ID_INVALID)),
        |c| Ok((c.client.open_session(slot, flags)?, c.generation)),
    )?;
    m.add_session(generation, slot, remote)
}

/// `C_CloseSession`: our handle is gone afterwards, whatever the server says. Deferred
/// requests are dropped: closing the session ends whatever they would have started.
pub(crate) fn close_session(m: &Module, h: CK_SESSION_HANDLE) -> Result<()> {
    m.with_ops(h, |ops, _| drop(ops.take_pending()))?;
    let res = m.session_tx(h, OpSet::NONE, None, |tx, s| {
        tx.call(&req::close_session(s)).and_then(parse::unit)
    });
    m.forget(h);
    res
}

/// `C_CloseAllSessions`
pub(crate) fn close_all_sessions(m: &Module, slot: CK_SLOT_ID) -> Result<()> {
    m.forget_slot(slot);
    m.slot_call(
        false,
        || Err(rv(CKR_SLOT_ID_INVALID)),
        |c| c.client.close_all_sessions(slot),
    )
}

/// `C_GetSessionInfo`
pub(crate) fn session_info(m: &Module, h: CK_SESSION_HANDLE) -> Result<SessionInfo> {
    m.session_tx(h, OpSet::NONE, None, |tx, s| {
        SessionInfo::from_args(tx.call(&req::get_session_info(s))?).map_err(Into::into)
    })
}

/// Send a request that carries a PIN, and wipe our copy afterwards. `uses`: a context-specific
/// login continues the operation its deferred Init started (its failure is reported here).
fn secret_call(
    m: &Module,
    h: CK_SESSION_HANDLE,
    uses: OpSet,
    build: impl FnOnce(u64) -> Request,
) -> Result<()> {
    m.session_tx(h, uses, None, |tx, s| {
        let mut r = build(s);
        let res = tx.call(&r).and_then(parse::unit);
        scrub(&mut r);
        res
    })
}

/// What a login continues: a context-specific login belongs to the operation just started.
fn login_uses(user: CK_USER_TYPE) -> OpSet {
    if user == CKU_CONTEXT_SPECIFIC {
        OpSet::ALL
    } else {
        OpSet::NONE
    }
}

/// `C_InitPIN`
pub(crate) fn init_pin(m: &Module, h: CK_SESSION_HANDLE, pin: Option<&[u8]>) -> Result<()> {
    secret_call(m, h, OpSet::NONE, |s| req::init_pin(s, pin))
}

/// `C_SetPIN`
pub(crate) fn set_pin(
    m: &Module,
    h: CK_SESSION_HANDLE,
    old: Option<&[u8]>,
    new: Option<&[u8]>,
) -> Result<()> {
    secret_call(m, h, OpSet::NONE, |s| req::set_pin(s, old, new))
}

/// `C_Login` (a NULL PIN: the protected authentication path).
pub(crate) fn login(
    m: &Module,
    h: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: Option<&[u8]>,
) -> Result<()> {
    secret_call(m, h, login_uses(user), |s| req::login(s, user, pin))
}

/// `C_LoginUser` (3.0; `CKR_FUNCTION_NOT_SUPPORTED` against a 0.24 server).
pub(crate) fn login_user(
    m: &Module,
    h: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: Option<&[u8]>,
    username: &[u8],
) -> Result<()> {
    secret_call(m, h, login_uses(user), |s| {
        req::login_user(s, user, pin, username)
    })
}

/// `C_Logout`
pub(crate) fn logout(m: &Module, h: CK_SESSION_HANDLE) -> Result<()> {
    m.session_tx(h, OpSet::NONE, None, |tx, s| {
        tx.call(&req::logout(s)).and_then(parse::unit)
    })
}

/// `C_GetOperationState`
pub(crate) fn operation_state(m: &Module, h: CK_SESSION_HANDLE, out: OutBytes<'_>) -> Result<()> {
    let cap = out.cap();
    let got = m.session_tx(h, OpSet::NONE, None, |tx, s| {
        size_first(tx.dialect(), cap, |cap| {
            tx.call(&req::get_operation_state(tx.dialect(), s, cap))
                .and_then(parse::output)
        })
    })?;
    out.put(got)
}

/// `C_SetOperationState`
pub(crate) fn set_operation_state(
    m: &Module,
    h: CK_SESSION_HANDLE,
    state: &[u8],
    enc_key: CK_OBJECT_HANDLE,
    auth_key: CK_OBJECT_HANDLE,
) -> Result<()> {
    m.session_call(h, |c, s| c.set_operation_state(s, state, enc_key, auth_key))?;
    // Whatever operations the state held are active now.
    m.record(h, Event::Unknown);
    Ok(())
}

/// `C_SessionCancel` (3.0)
pub(crate) fn session_cancel(m: &Module, h: CK_SESSION_HANDLE, flags: CK_FLAGS) -> Result<()> {
    m.session_tx(h, OpSet::NONE, None, |tx, s| {
        tx.call(&req::session_cancel(s, flags))
            .and_then(parse::unit)
    })?;
    m.record(h, Event::Cancelled(flags));
    Ok(())
}
