//! General-purpose and slot/token functions (PKCS#11 §5.4, §5.5): `C_Initialize`,
//! `C_Finalize`, `C_GetInfo`, slots, tokens, mechanisms, `C_InitToken`, `C_WaitForSlotEvent`.

use cryptoki_sys::{
    CK_FLAGS, CK_MECHANISM_TYPE, CK_SLOT_ID, CKF_OS_LOCKING_OK, CKR_ARGUMENTS_BAD, CKR_CANT_LOCK,
    CKR_MECHANISM_INVALID, CKR_SLOT_ID_INVALID,
};
use p11fwd_wire::CallId;
use p11fwd_wire::client::{parse, req};
use p11fwd_wire::info::{MechanismInfo, SlotInfo, TokenInfo};

use crate::attrs::local;
use crate::ffi::{InitArgs, OutUlongs};
use crate::functions::scrub;
use crate::state::{self, Module};
use crate::{Result, mech, rv};

/// `C_Initialize`. Argument rules as `p11-kit-client.so` applies them (rpc §8):
/// - the four mutex callbacks are all set or all NULL, else `CKR_ARGUMENTS_BAD`;
/// - when arguments are given, `CKF_OS_LOCKING_OK` must be set, else `CKR_CANT_LOCK` (even
///   without callbacks: we only use the OS's locks);
/// - `pReserved`, if not NULL, is a C string that is forwarded to the server's module.
pub(crate) fn initialize(args: Option<InitArgs>) -> Result<()> {
    crate::log::init();
    let reserved = match args {
        None => None,
        Some(a) => {
            if a.mutex_callbacks != 0 && a.mutex_callbacks != 4 {
                return Err(rv(CKR_ARGUMENTS_BAD));
            }
            if a.flags & CKF_OS_LOCKING_OK == 0 {
                return Err(rv(CKR_CANT_LOCK));
            }
            a.reserved
        }
    };
    state::initialize(reserved)
}

/// `C_Finalize`.
pub(crate) fn finalize() -> Result<()> {
    state::finalize()
}

/// The library description `C_GetInfo` reports (answered locally, without a round trip).
pub(crate) fn description(m: &Module) -> &'static str {
    if m.is_connected() {
        "p11fwd PKCS#11 RPC client"
    } else {
        "p11fwd (no connection)"
    }
}

/// `C_GetSlotList`: reconnects if needed; no server shows no slots.
///
/// PKCS#11 §5.5: the set of slots is checked when the list is asked for with a NULL
/// `pSlotList`; the call that then fills the caller's buffer gets that same list without a
/// round trip (once; a fill without a count query first asks the server).
pub(crate) fn slot_list(m: &Module, token_present: bool, out: OutUlongs<'_>) -> Result<()> {
    let query = out.is_count_query();
    let slots = m.slot_call(
        true,
        || Ok(Vec::new()),
        |c| {
            if !query && let Some(list) = m.take_slot_list(c.generation, token_present) {
                return Ok(list);
            }
            let list = c.client.slots(token_present)?;
            if query {
                m.keep_slot_list(c.generation, token_present, list.clone());
            }
            Ok(list)
        },
    )?;
    out.put(&slots)
}

/// `C_GetSlotInfo`
pub(crate) fn slot_info(m: &Module, slot: CK_SLOT_ID) -> Result<SlotInfo> {
    m.slot_call(true, no_slot, |c| c.client.get_slot_info(slot))
}

/// `C_GetTokenInfo`
pub(crate) fn token_info(m: &Module, slot: CK_SLOT_ID) -> Result<TokenInfo> {
    m.slot_call(true, no_slot, |c| c.client.get_token_info(slot))
}

fn no_slot<T>() -> Result<T> {
    Err(rv(CKR_SLOT_ID_INVALID))
}

/// `C_GetMechanismList`: every mechanism of the server's module that the negotiated
/// generation can carry (`mech::listed`).
pub(crate) fn mechanism_list(m: &Module, slot: CK_SLOT_ID, out: OutUlongs<'_>) -> Result<()> {
    let list = m.slot_call(true, no_slot, |c| {
        let dialect = c.client.dialect();
        // A token's mechanisms do not change: asked once per connection (issue 7).
        let all = match m.cached_mechanisms(c.generation, slot) {
            Some(all) => all,
            None => {
                let all = c.client.mechanisms(slot)?;
                m.keep_mechanisms(c.generation, slot, &all);
                all
            }
        };
        let shown: Vec<u64> = all
            .iter()
            .copied()
            .filter(|t| mech::listed(dialect, *t))
            .collect();
        if shown.len() != all.len() {
            tracing::debug!(
                all = all.len(),
                shown = shown.len(),
                version = dialect.version(),
                "mechanisms whose parameters cannot cross are not listed"
            );
        }
        Ok(shown)
    })?;
    out.put(&list)
}

/// `C_GetMechanismInfo`: `CKR_MECHANISM_INVALID` for mechanisms we do not list.
pub(crate) fn mechanism_info(
    m: &Module,
    slot: CK_SLOT_ID,
    ty: CK_MECHANISM_TYPE,
) -> Result<MechanismInfo> {
    m.slot_call(true, no_slot, |c| {
        if !mech::listed(c.client.dialect(), ty) {
            return Err(local(CallId::GetMechanismInfo, rv(CKR_MECHANISM_INVALID)));
        }
        if let Some(info) = m.cached_mechanism_info(c.generation, slot, ty) {
            return Ok(info);
        }
        let info = c.client.get_mechanism_info(slot, ty)?;
        m.keep_mechanism_info(c.generation, slot, ty, &info);
        Ok(info)
    })
}

/// `C_InitToken` (`C_InitToken2` from version 1); not retried.
pub(crate) fn init_token(
    m: &Module,
    slot: CK_SLOT_ID,
    pin: Option<&[u8]>,
    label: &[u8; 32],
) -> Result<()> {
    m.slot_call(false, no_slot, |c| {
        let mut r = req::init_token(c.client.dialect(), slot, pin, label);
        let res = c.client.connection().call(&r).and_then(parse::unit);
        scrub(&mut r);
        res
    })
}

/// `C_WaitForSlotEvent` (see `Module::wait_for_slot_event`).
pub(crate) fn wait_for_slot_event(m: &Module, flags: CK_FLAGS) -> Result<CK_SLOT_ID> {
    m.wait_for_slot_event(flags)
}
