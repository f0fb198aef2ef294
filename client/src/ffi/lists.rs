//! The function lists and interfaces: `C_GetFunctionList` (the 2.40 list, version 2.40),
//! `C_GetInterfaceList` and `C_GetInterface` ("PKCS 11" 3.0, the default, and 2.40).
//!
//! Each call of the exported `C_GetFunctionList`, `C_GetInterfaceList` (once it fills a list)
//! or `C_GetInterface` hands out the lists of a new module instance, as `p11-kit-client.so`
//! does (`crate::state`): `INSTANCES` of them, then instance 0's, which the exported `C_*`
//! symbols use. The lists are plain `static`s filled at compile time, one per instance, whose
//! functions are `Instance::<I>`'s; the 3.0 list names every exported function, which is where
//! [`EXPORTED_NAMES`] comes from.

use std::ffi::{c_char, c_void};

use cryptoki_sys::*;

use super::{OutPtr, c_string};
use crate::boundary::{Instance, entry, guard};
use crate::state::{self, INSTANCES};
use crate::{Result, rv};

/// The interface name of both lists.
const INTERFACE_NAME: &[u8] = b"PKCS 11\0";

macro_rules! function_lists {
    (common: [$($f:ident),* $(,)?], v3: [$($g:ident),* $(,)?]) => {
        impl<const I: usize> Instance<I> {
            /// The PKCS#11 2.40 function list of instance `I`.
            const LIST_2_40: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
                version: CK_VERSION { major: 2, minor: 40 },
                C_GetInfo: Some(Self::get_info_2_40),
                $($f: Some(Self::$f),)*
            };

            /// The PKCS#11 3.0 function list of instance `I` (the default interface).
            const LIST_3_0: CK_FUNCTION_LIST_3_0 = CK_FUNCTION_LIST_3_0 {
                version: CK_VERSION { major: 3, minor: 0 },
                C_GetInfo: Some(Self::C_GetInfo),
                $($f: Some(Self::$f),)*
                $($g: Some(Self::$g),)*
            };
        }

        /// Every exported symbol.
        pub(crate) const EXPORTED_NAMES: &[&str] =
            &["C_GetInfo", $(stringify!($f),)* $(stringify!($g),)*];
    };
}

/// The lists and interfaces of every instance, by index.
macro_rules! instances {
    ($($i:literal)*) => {
        /// The 2.40 list of each instance.
        static LISTS_2_40: [CK_FUNCTION_LIST; INSTANCES + 1] = [$(Instance::<$i>::LIST_2_40,)*];

        /// The 3.0 list of each instance.
        static LISTS_3_0: [CK_FUNCTION_LIST_3_0; INSTANCES + 1] = [$(Instance::<$i>::LIST_3_0,)*];

        /// The two interfaces of each instance, default first.
        static INTERFACES: Interfaces = Interfaces([$(
            [
                CK_INTERFACE {
                    pInterfaceName: INTERFACE_NAME.as_ptr().cast_mut(),
                    pFunctionList: (&raw const LISTS_3_0[$i]).cast_mut().cast::<c_void>(),
                    flags: 0,
                },
                CK_INTERFACE {
                    pInterfaceName: INTERFACE_NAME.as_ptr().cast_mut(),
                    pFunctionList: (&raw const LISTS_2_40[$i]).cast_mut().cast::<c_void>(),
                    flags: 0,
                },
            ],
        )*]);
    };
}

instances!(
    0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32
    33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62
    63 64
);

function_lists! {
    common: [
        C_Initialize, C_Finalize, C_GetFunctionList, C_GetSlotList, C_GetSlotInfo,
        C_GetTokenInfo, C_GetMechanismList, C_GetMechanismInfo, C_InitToken, C_InitPIN,
        C_SetPIN, C_OpenSession, C_CloseSession, C_CloseAllSessions, C_GetSessionInfo,
        C_GetOperationState, C_SetOperationState, C_Login, C_Logout, C_CreateObject,
        C_CopyObject, C_DestroyObject, C_GetObjectSize, C_GetAttributeValue,
        C_SetAttributeValue, C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal,
        C_EncryptInit, C_Encrypt, C_EncryptUpdate, C_EncryptFinal, C_DecryptInit, C_Decrypt,
        C_DecryptUpdate, C_DecryptFinal, C_DigestInit, C_Digest, C_DigestUpdate, C_DigestKey,
        C_DigestFinal, C_SignInit, C_Sign, C_SignUpdate, C_SignFinal, C_SignRecoverInit,
        C_SignRecover, C_VerifyInit, C_Verify, C_VerifyUpdate, C_VerifyFinal,
        C_VerifyRecoverInit, C_VerifyRecover, C_DigestEncryptUpdate, C_DecryptDigestUpdate,
        C_SignEncryptUpdate, C_DecryptVerifyUpdate, C_GenerateKey, C_GenerateKeyPair,
        C_WrapKey, C_UnwrapKey, C_DeriveKey, C_SeedRandom, C_GenerateRandom,
        C_GetFunctionStatus, C_CancelFunction, C_WaitForSlotEvent,
    ],
    v3: [
        C_GetInterfaceList, C_GetInterface, C_LoginUser, C_SessionCancel,
        C_MessageEncryptInit, C_EncryptMessage, C_EncryptMessageBegin, C_EncryptMessageNext,
        C_MessageEncryptFinal, C_MessageDecryptInit, C_DecryptMessage, C_DecryptMessageBegin,
        C_DecryptMessageNext, C_MessageDecryptFinal, C_MessageSignInit, C_SignMessage,
        C_SignMessageBegin, C_SignMessageNext, C_MessageSignFinal, C_MessageVerifyInit,
        C_VerifyMessage, C_VerifyMessageBegin, C_VerifyMessageNext, C_MessageVerifyFinal,
    ]
}

/// The interfaces of every instance.
struct Interfaces([[CK_INTERFACE; 2]; INSTANCES + 1]);

// SAFETY: the pointers inside point to immutable statics (the name and the function lists)
// that live for the whole program and are never written through; sharing them between threads
// is as sound as sharing the statics themselves.
unsafe impl Sync for Interfaces {}

/// `C_GetFunctionList` for instance `i`.
fn get_function_list(i: usize, pp: *mut *mut CK_FUNCTION_LIST) -> Result<()> {
    // SAFETY: ppFunctionList NULL (rejected) or valid for writing a pointer.
    let out = unsafe { OutPtr::from_raw(pp) }?;
    // Callers get a mutable pointer by the C API's signature; they must not write to it.
    out.put((&raw const LISTS_2_40[i]).cast_mut());
    Ok(())
}

/// `C_GetInterfaceList`; `instance` picks the instance once the list is to be written.
fn get_interface_list(
    instance: impl FnOnce() -> usize,
    list: *mut CK_INTERFACE,
    count: *mut CK_ULONG,
) -> Result<()> {
    // SAFETY: pulCount NULL (rejected) or valid for reads and writes of a CK_ULONG.
    let count = unsafe { count.as_mut() }.ok_or(rv(CKR_ARGUMENTS_BAD))?;
    let n = 2;
    if list.is_null() {
        *count = n as CK_ULONG;
        return Ok(());
    }
    if *count < n as CK_ULONG {
        *count = n as CK_ULONG;
        return Err(rv(CKR_BUFFER_TOO_SMALL));
    }
    let ours = &INTERFACES.0[instance()];
    // SAFETY: the caller's list holds *count >= n entries (contract); ours are n plain
    // structs that do not overlap caller memory.
    unsafe { std::ptr::copy_nonoverlapping(ours.as_ptr(), list, n) };
    *count = n as CK_ULONG;
    Ok(())
}

/// `C_GetInterface` (3.0 §5.4): name NULL or "PKCS 11"; version NULL (3.0), 3.0 or 2.40;
/// `flags` must be 0 (our interfaces have no flags). `instance` picks the instance once the
/// arguments are known to be good.
fn get_interface(
    instance: impl FnOnce() -> usize,
    name: *mut CK_UTF8CHAR,
    version: *mut CK_VERSION,
    pp: *mut *mut CK_INTERFACE,
    flags: CK_FLAGS,
) -> Result<()> {
    // SAFETY: ppInterface NULL (rejected) or valid for writing a pointer.
    let out = unsafe { OutPtr::from_raw(pp) }?;
    // SAFETY: pInterfaceName NULL or a NUL-terminated string.
    let name = unsafe { c_string(name.cast::<c_char>().cast_const()) };
    if name.is_some_and(|n| n != INTERFACE_NAME[..INTERFACE_NAME.len() - 1]) {
        return Err(rv(CKR_ARGUMENTS_BAD));
    }
    // SAFETY: pVersion NULL or a CK_VERSION.
    let version = unsafe { version.as_ref() }.map(|v| (v.major, v.minor));
    if flags != 0 {
        return Err(rv(CKR_ARGUMENTS_BAD));
    }
    let which = match version {
        None | Some((3, 0)) => 0,
        Some((2, 40)) => 1,
        Some(_) => return Err(rv(CKR_ARGUMENTS_BAD)),
    };
    out.put((&raw const INTERFACES.0[instance()][which]).cast_mut());
    Ok(())
}

impl<const I: usize> Instance<I> {
    /// `C_GetFunctionList` in instance `I`'s lists: the same instance's 2.40 list (as
    /// p11-kit's wrapped lists answer).
    ///
    /// # Safety
    ///
    /// `pp` is NULL or valid for writing a pointer.
    #[allow(non_snake_case)] // PKCS#11 names.
    unsafe extern "C" fn C_GetFunctionList(pp: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
        guard("C_GetFunctionList", || get_function_list(I, pp))
    }

    /// `C_GetInterfaceList` in instance `I`'s 3.0 list: the same instance's interfaces.
    ///
    /// # Safety
    ///
    /// As `C_GetInterfaceList`.
    #[allow(non_snake_case)] // PKCS#11 names.
    unsafe extern "C" fn C_GetInterfaceList(
        list: *mut CK_INTERFACE,
        count: *mut CK_ULONG,
    ) -> CK_RV {
        guard("C_GetInterfaceList", || {
            get_interface_list(|| I, list, count)
        })
    }

    /// `C_GetInterface` in instance `I`'s 3.0 list: the same instance's interface.
    ///
    /// # Safety
    ///
    /// As `C_GetInterface`.
    #[allow(non_snake_case)] // PKCS#11 names.
    unsafe extern "C" fn C_GetInterface(
        name: *mut CK_UTF8CHAR,
        version: *mut CK_VERSION,
        pp: *mut *mut CK_INTERFACE,
        flags: CK_FLAGS,
    ) -> CK_RV {
        guard("C_GetInterface", || {
            get_interface(|| I, name, version, pp, flags)
        })
    }
}

entry! {
    /// `C_GetFunctionList`: the PKCS#11 2.40 list of a new instance (each call, as
    /// `p11-kit-client.so`). Needs no `C_Initialize`.
    fn C_GetFunctionList(ppFunctionList: *mut *mut CK_FUNCTION_LIST) {
        crate::log::init();
        if ppFunctionList.is_null() {
            return Err(rv(CKR_ARGUMENTS_BAD));
        }
        get_function_list(state::new_instance(), ppFunctionList)
    }

    /// `C_GetInterfaceList` (3.0 §5.4): "PKCS 11" 3.0 and 2.40, both of one new instance.
    /// Needs no `C_Initialize`.
    fn C_GetInterfaceList(pInterfacesList: *mut CK_INTERFACE, pulCount: *mut CK_ULONG) {
        crate::log::init();
        get_interface_list(state::new_instance, pInterfacesList, pulCount)
    }

    /// `C_GetInterface` (3.0 §5.4): an interface of a new instance. Needs no `C_Initialize`.
    fn C_GetInterface(
        pInterfaceName: *mut CK_UTF8CHAR,
        pVersion: *mut CK_VERSION,
        ppInterface: *mut *mut CK_INTERFACE,
        flags: CK_FLAGS,
    ) {
        crate::log::init();
        get_interface(state::new_instance, pInterfaceName, pVersion, ppInterface, flags)
    }
}
