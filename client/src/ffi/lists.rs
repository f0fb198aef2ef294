//! The function lists and interfaces: `C_GetFunctionList` (the 2.40 list, version 2.40),
//! `C_GetInterfaceList` and `C_GetInterface` ("PKCS 11" 3.0, the default, and 2.40).
//!
//! The lists are plain `static`s filled at compile time; the 3.0 list names every exported
//! function, which is where [`EXPORTED_NAMES`] comes from.

use std::ffi::{c_char, c_void};

use cryptoki_sys::*;

use super::exports::*;
use super::{OutPtr, c_string};
use crate::boundary::entry;
use crate::rv;

/// The interface name of both lists.
const INTERFACE_NAME: &[u8] = b"PKCS 11\0";

macro_rules! function_lists {
    (common: [$($f:ident),* $(,)?], v3: [$($g:ident),* $(,)?]) => {
        /// The PKCS#11 2.40 function list (`C_GetFunctionList`).
        static FUNCTION_LIST_2_40: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
            version: CK_VERSION { major: 2, minor: 40 },
            C_GetInfo: Some(get_info_2_40),
            $($f: Some($f),)*
        };

        /// The PKCS#11 3.0 function list (the default interface).
        static FUNCTION_LIST_3_0: CK_FUNCTION_LIST_3_0 = CK_FUNCTION_LIST_3_0 {
            version: CK_VERSION { major: 3, minor: 0 },
            C_GetInfo: Some(C_GetInfo),
            $($f: Some($f),)*
            $($g: Some($g),)*
        };

        /// Every exported symbol.
        pub(crate) const EXPORTED_NAMES: &[&str] =
            &["C_GetInfo", $(stringify!($f),)* $(stringify!($g),)*];
    };
}

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

/// The two interfaces, default first.
struct Interfaces([CK_INTERFACE; 2]);

// SAFETY: the pointers inside point to immutable statics (the name and the two function
// lists) that live for the whole program and are never written through; sharing them between
// threads is as sound as sharing the statics themselves.
unsafe impl Sync for Interfaces {}

static INTERFACES: Interfaces = Interfaces([
    CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr().cast_mut(),
        pFunctionList: (&raw const FUNCTION_LIST_3_0).cast_mut().cast::<c_void>(),
        flags: 0,
    },
    CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr().cast_mut(),
        pFunctionList: (&raw const FUNCTION_LIST_2_40).cast_mut().cast::<c_void>(),
        flags: 0,
    },
]);

entry! {
    /// `C_GetFunctionList`: the PKCS#11 2.40 list. Needs no `C_Initialize`.
    fn C_GetFunctionList(ppFunctionList: *mut *mut CK_FUNCTION_LIST) {
        crate::log::init();
        // SAFETY: ppFunctionList NULL (rejected) or valid for writing a pointer.
        let out = unsafe { OutPtr::from_raw(ppFunctionList) }?;
        // Callers get a mutable pointer by the C API's signature; they must not write to it.
        out.put((&raw const FUNCTION_LIST_2_40).cast_mut());
        Ok(())
    }

    /// `C_GetInterfaceList` (3.0 §5.4): "PKCS 11" 3.0 and 2.40. Needs no `C_Initialize`.
    fn C_GetInterfaceList(pInterfacesList: *mut CK_INTERFACE, pulCount: *mut CK_ULONG) {
        crate::log::init();
        // SAFETY: pulCount NULL (rejected) or valid for reads and writes of a CK_ULONG.
        let count = unsafe { pulCount.as_mut() }.ok_or(rv(CKR_ARGUMENTS_BAD))?;
        let n = INTERFACES.0.len();
        if pInterfacesList.is_null() {
            *count = n as CK_ULONG;
            return Ok(());
        }
        if *count < n as CK_ULONG {
            *count = n as CK_ULONG;
            return Err(rv(CKR_BUFFER_TOO_SMALL));
        }
        // SAFETY: the caller's list holds *count >= n entries (contract); ours are n plain
        // structs that do not overlap caller memory.
        unsafe { std::ptr::copy_nonoverlapping(INTERFACES.0.as_ptr(), pInterfacesList, n) };
        *count = n as CK_ULONG;
        Ok(())
    }

    /// `C_GetInterface` (3.0 §5.4): name NULL or "PKCS 11"; version NULL (3.0), 3.0 or 2.40;
    /// `flags` must be 0 (our interfaces have no flags). Needs no `C_Initialize`.
    fn C_GetInterface(
        pInterfaceName: *mut CK_UTF8CHAR,
        pVersion: *mut CK_VERSION,
        ppInterface: *mut *mut CK_INTERFACE,
        flags: CK_FLAGS,
    ) {
        crate::log::init();
        // SAFETY: ppInterface NULL (rejected) or valid for writing a pointer.
        let out = unsafe { OutPtr::from_raw(ppInterface) }?;
        // SAFETY: pInterfaceName NULL or a NUL-terminated string.
        let name = unsafe { c_string(pInterfaceName.cast::<c_char>().cast_const()) };
        if name.is_some_and(|n| n != INTERFACE_NAME[..INTERFACE_NAME.len() - 1]) {
            return Err(rv(CKR_ARGUMENTS_BAD));
        }
        // SAFETY: pVersion NULL or a CK_VERSION.
        let version = unsafe { pVersion.as_ref() }.map(|v| (v.major, v.minor));
        if flags != 0 {
            return Err(rv(CKR_ARGUMENTS_BAD));
        }
        let i = match version {
            None | Some((3, 0)) => 0,
            Some((2, 40)) => 1,
            Some(_) => return Err(rv(CKR_ARGUMENTS_BAD)),
        };
        out.put((&raw const INTERFACES.0[i]).cast_mut());
        Ok(())
    }
}
