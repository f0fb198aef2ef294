//! The exported `C_*` functions. Each turns its raw arguments into safe values through the
//! helpers of [`super`], checks that the module is initialised first (so that every call
//! before `C_Initialize`, or in a fork child, gets `CKR_CRYPTOKI_NOT_INITIALIZED`), and calls
//! the safe implementation in [`crate::functions`].

use std::ffi::c_void;

use cryptoki_sys::*;
use p11fwd_wire::CallId;
use zeroize::Zeroizing;

use super::{
    OutBytes, OutFixed, OutPtr, OutUlongs, ck_info, ck_mechanism_info, ck_session_info,
    ck_slot_info, ck_token_info, in_bytes, in_opt_bytes, in_template, init_args, mechanism,
    out_template,
};
use crate::boundary::{Instance, entry, guard};
use crate::functions::{crypto, general, message, object, session};
use crate::state;
use crate::{Result, rv};

/// `C_GetInfo` with the interface version of the list it came from.
fn info(p_info: *mut CK_INFO, cryptoki: (u8, u8)) -> Result<()> {
    let m = state::module()?;
    // SAFETY: C_GetInfo's pInfo is NULL (rejected) or valid for a CK_INFO (caller contract).
    let out = unsafe { OutPtr::from_raw(p_info) }?;
    out.put(ck_info(cryptoki, general::description(&m)));
    Ok(())
}

impl<const I: usize> Instance<I> {
    /// `C_GetInfo` in the 2.40 function list of instance `I`: reports Cryptoki 2.40.
    ///
    /// # Safety
    ///
    /// `p_info` is NULL or valid for writing a `CK_INFO`.
    pub(super) unsafe extern "C" fn get_info_2_40(p_info: *mut CK_INFO) -> CK_RV {
        state::with_instance(I, || guard("C_GetInfo", || info(p_info, (2, 40))))
    }
}

entry! {
    per_instance;

    /// `C_Initialize` (PKCS#11 §5.4; argument rules of rpc §8, see `general::initialize`).
    fn C_Initialize(pInitArgs: *mut c_void) {
        // SAFETY: pInitArgs is NULL or a CK_C_INITIALIZE_ARGS (caller contract).
        let args = unsafe { init_args(pInitArgs) };
        general::initialize(args)
    }

    /// `C_Finalize` (§5.4): `pReserved` must be NULL.
    fn C_Finalize(pReserved: *mut c_void) {
        state::module()?;
        if !pReserved.is_null() {
            return Err(rv(CKR_ARGUMENTS_BAD));
        }
        general::finalize()
    }

    /// `C_GetInfo` (§5.4), answered locally: manufacturer "p11fwd", Cryptoki 3.0.
    fn C_GetInfo(pInfo: *mut CK_INFO) {
        info(pInfo, (3, 0))
    }

    /// `C_GetSlotList` (§5.5).
    fn C_GetSlotList(tokenPresent: CK_BBOOL, pSlotList: *mut CK_SLOT_ID, pulCount: *mut CK_ULONG) {
        let m = state::module()?;
        // SAFETY: pulCount NULL (rejected) or in/out; pSlotList NULL or *pulCount slots.
        let out = unsafe { OutUlongs::from_raw(pSlotList, pulCount) }?;
        general::slot_list(&m, tokenPresent != 0, out)
    }

    /// `C_GetSlotInfo` (§5.5).
    fn C_GetSlotInfo(slotID: CK_SLOT_ID, pInfo: *mut CK_SLOT_INFO) {
        let m = state::module()?;
        // SAFETY: pInfo NULL (rejected) or valid for a CK_SLOT_INFO.
        let out = unsafe { OutPtr::from_raw(pInfo) }?;
        out.put(ck_slot_info(&general::slot_info(&m, slotID)?));
        Ok(())
    }

    /// `C_GetTokenInfo` (§5.5).
    fn C_GetTokenInfo(slotID: CK_SLOT_ID, pInfo: *mut CK_TOKEN_INFO) {
        let m = state::module()?;
        // SAFETY: pInfo NULL (rejected) or valid for a CK_TOKEN_INFO.
        let out = unsafe { OutPtr::from_raw(pInfo) }?;
        out.put(ck_token_info(&general::token_info(&m, slotID)?));
        Ok(())
    }

    /// `C_GetMechanismList` (§5.5): every mechanism that can cross (see `mech::listed`).
    fn C_GetMechanismList(
        slotID: CK_SLOT_ID,
        pMechanismList: *mut CK_MECHANISM_TYPE,
        pulCount: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pulCount NULL (rejected) or in/out; pMechanismList NULL or *pulCount entries.
        let out = unsafe { OutUlongs::from_raw(pMechanismList, pulCount) }?;
        general::mechanism_list(&m, slotID, out)
    }

    /// `C_GetMechanismInfo` (§5.5).
    fn C_GetMechanismInfo(slotID: CK_SLOT_ID, type_: CK_MECHANISM_TYPE, pInfo: *mut CK_MECHANISM_INFO) {
        let m = state::module()?;
        // SAFETY: pInfo NULL (rejected) or valid for a CK_MECHANISM_INFO.
        let out = unsafe { OutPtr::from_raw(pInfo) }?;
        out.put(ck_mechanism_info(&general::mechanism_info(&m, slotID, type_)?));
        Ok(())
    }

    /// `C_InitToken` (§5.5): `pLabel` is 32 space-padded bytes.
    fn C_InitToken(slotID: CK_SLOT_ID, pPin: *mut CK_UTF8CHAR, ulPinLen: CK_ULONG, pLabel: *mut CK_UTF8CHAR) {
        let m = state::module()?;
        // SAFETY: pPin NULL or ulPinLen bytes.
        let pin = unsafe { in_opt_bytes(pPin, ulPinLen) }?;
        // SAFETY: pLabel NULL (rejected) or 32 bytes (PKCS#11 C_InitToken).
        let label = unsafe { in_bytes(pLabel, 32) }?;
        let label: &[u8; 32] = label.try_into().map_err(|_| rv(CKR_ARGUMENTS_BAD))?;
        general::init_token(&m, slotID, pin, label)
    }

    /// `C_InitPIN` (§5.6).
    fn C_InitPIN(hSession: CK_SESSION_HANDLE, pPin: *mut CK_UTF8CHAR, ulPinLen: CK_ULONG) {
        let m = state::module()?;
        // SAFETY: pPin NULL or ulPinLen bytes.
        let pin = unsafe { in_opt_bytes(pPin, ulPinLen) }?;
        session::init_pin(&m, hSession, pin)
    }

    /// `C_SetPIN` (§5.6).
    fn C_SetPIN(
        hSession: CK_SESSION_HANDLE,
        pOldPin: *mut CK_UTF8CHAR,
        ulOldLen: CK_ULONG,
        pNewPin: *mut CK_UTF8CHAR,
        ulNewLen: CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pOldPin NULL or ulOldLen bytes.
        let old = unsafe { in_opt_bytes(pOldPin, ulOldLen) }?;
        // SAFETY: pNewPin NULL or ulNewLen bytes.
        let new = unsafe { in_opt_bytes(pNewPin, ulNewLen) }?;
        session::set_pin(&m, hSession, old, new)
    }

    /// `C_OpenSession` (§5.6): `pApplication` and `Notify` are not used.
    fn C_OpenSession(
        slotID: CK_SLOT_ID,
        flags: CK_FLAGS,
        pApplication: *mut c_void,
        Notify: CK_NOTIFY,
        phSession: *mut CK_SESSION_HANDLE,
    ) {
        let _ = (pApplication, Notify);
        let m = state::module()?;
        // SAFETY: phSession NULL (rejected) or valid for a CK_SESSION_HANDLE.
        let out = unsafe { OutPtr::from_raw(phSession) }?;
        out.put(session::open_session(&m, slotID, flags)?);
        Ok(())
    }

    /// `C_CloseSession` (§5.6).
    fn C_CloseSession(hSession: CK_SESSION_HANDLE) {
        session::close_session(&*state::module()?, hSession)
    }

    /// `C_CloseAllSessions` (§5.6).
    fn C_CloseAllSessions(slotID: CK_SLOT_ID) {
        session::close_all_sessions(&*state::module()?, slotID)
    }

    /// `C_GetSessionInfo` (§5.6).
    fn C_GetSessionInfo(hSession: CK_SESSION_HANDLE, pInfo: *mut CK_SESSION_INFO) {
        let m = state::module()?;
        // SAFETY: pInfo NULL (rejected) or valid for a CK_SESSION_INFO.
        let out = unsafe { OutPtr::from_raw(pInfo) }?;
        out.put(ck_session_info(&session::session_info(&m, hSession)?));
        Ok(())
    }

    /// `C_GetOperationState` (§5.6).
    fn C_GetOperationState(
        hSession: CK_SESSION_HANDLE,
        pOperationState: *mut CK_BYTE,
        pulOperationStateLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pOperationState, pulOperationStateLen) }?;
        session::operation_state(&m, hSession, out)
    }

    /// `C_SetOperationState` (§5.6).
    fn C_SetOperationState(
        hSession: CK_SESSION_HANDLE,
        pOperationState: *mut CK_BYTE,
        ulOperationStateLen: CK_ULONG,
        hEncryptionKey: CK_OBJECT_HANDLE,
        hAuthenticationKey: CK_OBJECT_HANDLE,
    ) {
        let m = state::module()?;
        // SAFETY: NULL or ulOperationStateLen bytes.
        let st = unsafe { in_bytes(pOperationState, ulOperationStateLen) }?;
        session::set_operation_state(&m, hSession, st, hEncryptionKey, hAuthenticationKey)
    }

    /// `C_Login` (§5.6): a NULL PIN of length 0 uses the protected authentication path.
    fn C_Login(hSession: CK_SESSION_HANDLE, userType: CK_USER_TYPE, pPin: *mut CK_UTF8CHAR, ulPinLen: CK_ULONG) {
        let m = state::module()?;
        // SAFETY: pPin NULL or ulPinLen bytes.
        let pin = unsafe { in_opt_bytes(pPin, ulPinLen) }?;
        session::login(&m, hSession, userType, pin)
    }

    /// `C_Logout` (§5.6).
    fn C_Logout(hSession: CK_SESSION_HANDLE) {
        session::logout(&*state::module()?, hSession)
    }

    /// `C_CreateObject` (§5.7).
    fn C_CreateObject(
        hSession: CK_SESSION_HANDLE,
        pTemplate: *mut CK_ATTRIBUTE,
        ulCount: CK_ULONG,
        phObject: *mut CK_OBJECT_HANDLE,
    ) {
        let m = state::module()?;
        // SAFETY: pTemplate NULL or ulCount attributes with valid values.
        let t = unsafe { in_template(pTemplate, ulCount) }?;
        // SAFETY: phObject NULL (rejected) or valid for a handle.
        let out = unsafe { OutPtr::from_raw(phObject) }?;
        out.put(object::create_object(&m, hSession, &t)?);
        Ok(())
    }

    /// `C_CopyObject` (§5.7).
    fn C_CopyObject(
        hSession: CK_SESSION_HANDLE,
        hObject: CK_OBJECT_HANDLE,
        pTemplate: *mut CK_ATTRIBUTE,
        ulCount: CK_ULONG,
        phNewObject: *mut CK_OBJECT_HANDLE,
    ) {
        let m = state::module()?;
        // SAFETY: pTemplate NULL or ulCount attributes with valid values.
        let t = unsafe { in_template(pTemplate, ulCount) }?;
        // SAFETY: phNewObject NULL (rejected) or valid for a handle.
        let out = unsafe { OutPtr::from_raw(phNewObject) }?;
        out.put(object::copy_object(&m, hSession, hObject, &t)?);
        Ok(())
    }

    /// `C_DestroyObject` (§5.7).
    fn C_DestroyObject(hSession: CK_SESSION_HANDLE, hObject: CK_OBJECT_HANDLE) {
        object::destroy_object(&*state::module()?, hSession, hObject)
    }

    /// `C_GetObjectSize` (§5.7).
    fn C_GetObjectSize(hSession: CK_SESSION_HANDLE, hObject: CK_OBJECT_HANDLE, pulSize: *mut CK_ULONG) {
        let m = state::module()?;
        // SAFETY: pulSize NULL (rejected) or valid for a CK_ULONG.
        let out = unsafe { OutPtr::from_raw(pulSize) }?;
        out.put(object::object_size(&m, hSession, hObject)?);
        Ok(())
    }

    /// `C_GetAttributeValue` (§5.7; see `attrs::get`).
    fn C_GetAttributeValue(
        hSession: CK_SESSION_HANDLE,
        hObject: CK_OBJECT_HANDLE,
        pTemplate: *mut CK_ATTRIBUTE,
        ulCount: CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pTemplate NULL or ulCount writable attributes whose pValue are NULL or
        // writable for ulValueLen bytes (nested arrays for template types).
        let mut t = unsafe { out_template(pTemplate, ulCount) }?;
        object::get_attribute_value(&m, hSession, hObject, &mut t)
    }

    /// `C_SetAttributeValue` (§5.7).
    fn C_SetAttributeValue(
        hSession: CK_SESSION_HANDLE,
        hObject: CK_OBJECT_HANDLE,
        pTemplate: *mut CK_ATTRIBUTE,
        ulCount: CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pTemplate NULL or ulCount attributes with valid values.
        let t = unsafe { in_template(pTemplate, ulCount) }?;
        object::set_attribute_value(&m, hSession, hObject, &t)
    }

    /// `C_FindObjectsInit` (§5.7).
    fn C_FindObjectsInit(hSession: CK_SESSION_HANDLE, pTemplate: *mut CK_ATTRIBUTE, ulCount: CK_ULONG) {
        let m = state::module()?;
        // SAFETY: pTemplate NULL or ulCount attributes with valid values.
        let t = unsafe { in_template(pTemplate, ulCount) }?;
        object::find_objects_init(&m, hSession, &t)
    }

    /// `C_FindObjects` (§5.7).
    fn C_FindObjects(
        hSession: CK_SESSION_HANDLE,
        phObject: *mut CK_OBJECT_HANDLE,
        ulMaxObjectCount: CK_ULONG,
        pulObjectCount: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pulObjectCount NULL (rejected) or writable; phObject NULL or
        // ulMaxObjectCount handles.
        let out = unsafe { OutUlongs::with_capacity(phObject, ulMaxObjectCount, pulObjectCount) }?;
        object::find_objects(&m, hSession, out)
    }

    /// `C_FindObjectsFinal` (§5.7).
    fn C_FindObjectsFinal(hSession: CK_SESSION_HANDLE) {
        object::find_objects_final(&*state::module()?, hSession)
    }

    /// `C_EncryptInit` (§5.8).
    fn C_EncryptInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE) {
        let m = state::module()?;
        // SAFETY: pMechanism NULL or a CK_MECHANISM with a valid parameter.
        let mech = unsafe { mechanism(pMechanism) }?;
        crypto::init(&m, CallId::EncryptInit, hSession, mech, hKey)
    }

    /// `C_Encrypt` (§5.8).
    fn C_Encrypt(
        hSession: CK_SESSION_HANDLE,
        pData: *mut CK_BYTE,
        ulDataLen: CK_ULONG,
        pEncryptedData: *mut CK_BYTE,
        pulEncryptedDataLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // Copied: the output may be the same buffer (in-place Encrypt, allowed by PKCS#11), and a
        // shared reference must not be alive while it is written.
        // SAFETY: pData NULL or ulDataLen bytes.
        let data = Zeroizing::new(unsafe { in_bytes(pData, ulDataLen) }?.to_vec());
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pEncryptedData, pulEncryptedDataLen) }?;
        crypto::in_out(&m, CallId::Encrypt, hSession, &data, out)
    }

    /// `C_EncryptUpdate` (§5.8).
    fn C_EncryptUpdate(
        hSession: CK_SESSION_HANDLE,
        pPart: *mut CK_BYTE,
        ulPartLen: CK_ULONG,
        pEncryptedPart: *mut CK_BYTE,
        pulEncryptedPartLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // Copied: the output may be the same buffer (in-place EncryptUpdate, allowed by PKCS#11), and a
        // shared reference must not be alive while it is written.
        // SAFETY: pPart NULL or ulPartLen bytes.
        let data = Zeroizing::new(unsafe { in_bytes(pPart, ulPartLen) }?.to_vec());
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pEncryptedPart, pulEncryptedPartLen) }?;
        crypto::in_out(&m, CallId::EncryptUpdate, hSession, &data, out)
    }

    /// `C_EncryptFinal` (§5.8).
    fn C_EncryptFinal(
        hSession: CK_SESSION_HANDLE,
        pLastEncryptedPart: *mut CK_BYTE,
        pulLastEncryptedPartLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pLastEncryptedPart, pulLastEncryptedPartLen) }?;
        crypto::out_only(&m, CallId::EncryptFinal, hSession, out)
    }

    /// `C_DecryptInit` (§5.9).
    fn C_DecryptInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE) {
        let m = state::module()?;
        // SAFETY: pMechanism NULL or a CK_MECHANISM with a valid parameter.
        let mech = unsafe { mechanism(pMechanism) }?;
        crypto::init(&m, CallId::DecryptInit, hSession, mech, hKey)
    }

    /// `C_Decrypt` (§5.9).
    fn C_Decrypt(
        hSession: CK_SESSION_HANDLE,
        pEncryptedData: *mut CK_BYTE,
        ulEncryptedDataLen: CK_ULONG,
        pData: *mut CK_BYTE,
        pulDataLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // Copied: the output may be the same buffer (in-place Decrypt, allowed by PKCS#11), and a
        // shared reference must not be alive while it is written.
        // SAFETY: pEncryptedData NULL or ulEncryptedDataLen bytes.
        let data = Zeroizing::new(unsafe { in_bytes(pEncryptedData, ulEncryptedDataLen) }?.to_vec());
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pData, pulDataLen) }?;
        crypto::in_out(&m, CallId::Decrypt, hSession, &data, out)
    }

    /// `C_DecryptUpdate` (§5.9).
    fn C_DecryptUpdate(
        hSession: CK_SESSION_HANDLE,
        pEncryptedPart: *mut CK_BYTE,
        ulEncryptedPartLen: CK_ULONG,
        pPart: *mut CK_BYTE,
        pulPartLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // Copied: the output may be the same buffer (in-place DecryptUpdate, allowed by PKCS#11), and a
        // shared reference must not be alive while it is written.
        // SAFETY: pEncryptedPart NULL or ulEncryptedPartLen bytes.
        let data = Zeroizing::new(unsafe { in_bytes(pEncryptedPart, ulEncryptedPartLen) }?.to_vec());
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pPart, pulPartLen) }?;
        crypto::in_out(&m, CallId::DecryptUpdate, hSession, &data, out)
    }

    /// `C_DecryptFinal` (§5.9).
    fn C_DecryptFinal(hSession: CK_SESSION_HANDLE, pLastPart: *mut CK_BYTE, pulLastPartLen: *mut CK_ULONG) {
        let m = state::module()?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pLastPart, pulLastPartLen) }?;
        crypto::out_only(&m, CallId::DecryptFinal, hSession, out)
    }

    /// `C_DigestInit` (§5.10).
    fn C_DigestInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM) {
        let m = state::module()?;
        // SAFETY: pMechanism NULL or a CK_MECHANISM with a valid parameter.
        let mech = unsafe { mechanism(pMechanism) }?;
        crypto::digest_init(&m, hSession, mech)
    }

    /// `C_Digest` (§5.10).
    fn C_Digest(
        hSession: CK_SESSION_HANDLE,
        pData: *mut CK_BYTE,
        ulDataLen: CK_ULONG,
        pDigest: *mut CK_BYTE,
        pulDigestLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pData NULL or ulDataLen bytes.
        let data = unsafe { in_bytes(pData, ulDataLen) }?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pDigest, pulDigestLen) }?;
        crypto::in_out(&m, CallId::Digest, hSession, data, out)
    }

    /// `C_DigestUpdate` (§5.10).
    fn C_DigestUpdate(hSession: CK_SESSION_HANDLE, pPart: *mut CK_BYTE, ulPartLen: CK_ULONG) {
        let m = state::module()?;
        // SAFETY: pPart NULL or ulPartLen bytes.
        let data = unsafe { in_bytes(pPart, ulPartLen) }?;
        crypto::in_only(&m, CallId::DigestUpdate, hSession, data)
    }

    /// `C_DigestKey` (§5.10).
    fn C_DigestKey(hSession: CK_SESSION_HANDLE, hKey: CK_OBJECT_HANDLE) {
        crypto::digest_key(&*state::module()?, hSession, hKey)
    }

    /// `C_DigestFinal` (§5.10).
    fn C_DigestFinal(hSession: CK_SESSION_HANDLE, pDigest: *mut CK_BYTE, pulDigestLen: *mut CK_ULONG) {
        let m = state::module()?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pDigest, pulDigestLen) }?;
        crypto::out_only(&m, CallId::DigestFinal, hSession, out)
    }

    /// `C_SignInit` (§5.11).
    fn C_SignInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE) {
        let m = state::module()?;
        // SAFETY: pMechanism NULL or a CK_MECHANISM with a valid parameter.
        let mech = unsafe { mechanism(pMechanism) }?;
        crypto::init(&m, CallId::SignInit, hSession, mech, hKey)
    }

    /// `C_Sign` (§5.11).
    fn C_Sign(
        hSession: CK_SESSION_HANDLE,
        pData: *mut CK_BYTE,
        ulDataLen: CK_ULONG,
        pSignature: *mut CK_BYTE,
        pulSignatureLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pData NULL or ulDataLen bytes.
        let data = unsafe { in_bytes(pData, ulDataLen) }?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pSignature, pulSignatureLen) }?;
        crypto::in_out(&m, CallId::Sign, hSession, data, out)
    }

    /// `C_SignUpdate` (§5.11).
    fn C_SignUpdate(hSession: CK_SESSION_HANDLE, pPart: *mut CK_BYTE, ulPartLen: CK_ULONG) {
        let m = state::module()?;
        // SAFETY: pPart NULL or ulPartLen bytes.
        let data = unsafe { in_bytes(pPart, ulPartLen) }?;
        crypto::in_only(&m, CallId::SignUpdate, hSession, data)
    }

    /// `C_SignFinal` (§5.11).
    fn C_SignFinal(hSession: CK_SESSION_HANDLE, pSignature: *mut CK_BYTE, pulSignatureLen: *mut CK_ULONG) {
        let m = state::module()?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pSignature, pulSignatureLen) }?;
        crypto::out_only(&m, CallId::SignFinal, hSession, out)
    }

    /// `C_SignRecoverInit` (§5.11).
    fn C_SignRecoverInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE) {
        let m = state::module()?;
        // SAFETY: pMechanism NULL or a CK_MECHANISM with a valid parameter.
        let mech = unsafe { mechanism(pMechanism) }?;
        crypto::init(&m, CallId::SignRecoverInit, hSession, mech, hKey)
    }

    /// `C_SignRecover` (§5.11).
    fn C_SignRecover(
        hSession: CK_SESSION_HANDLE,
        pData: *mut CK_BYTE,
        ulDataLen: CK_ULONG,
        pSignature: *mut CK_BYTE,
        pulSignatureLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pData NULL or ulDataLen bytes.
        let data = unsafe { in_bytes(pData, ulDataLen) }?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pSignature, pulSignatureLen) }?;
        crypto::in_out(&m, CallId::SignRecover, hSession, data, out)
    }

    /// `C_VerifyInit` (§5.12).
    fn C_VerifyInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE) {
        let m = state::module()?;
        // SAFETY: pMechanism NULL or a CK_MECHANISM with a valid parameter.
        let mech = unsafe { mechanism(pMechanism) }?;
        crypto::init(&m, CallId::VerifyInit, hSession, mech, hKey)
    }

    /// `C_Verify` (§5.12).
    fn C_Verify(
        hSession: CK_SESSION_HANDLE,
        pData: *mut CK_BYTE,
        ulDataLen: CK_ULONG,
        pSignature: *mut CK_BYTE,
        ulSignatureLen: CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pData NULL or ulDataLen bytes.
        let data = unsafe { in_bytes(pData, ulDataLen) }?;
        // SAFETY: pSignature NULL or ulSignatureLen bytes.
        let sig = unsafe { in_bytes(pSignature, ulSignatureLen) }?;
        crypto::verify(&m, hSession, data, sig)
    }

    /// `C_VerifyUpdate` (§5.12).
    fn C_VerifyUpdate(hSession: CK_SESSION_HANDLE, pPart: *mut CK_BYTE, ulPartLen: CK_ULONG) {
        let m = state::module()?;
        // SAFETY: pPart NULL or ulPartLen bytes.
        let data = unsafe { in_bytes(pPart, ulPartLen) }?;
        crypto::in_only(&m, CallId::VerifyUpdate, hSession, data)
    }

    /// `C_VerifyFinal` (§5.12).
    fn C_VerifyFinal(hSession: CK_SESSION_HANDLE, pSignature: *mut CK_BYTE, ulSignatureLen: CK_ULONG) {
        let m = state::module()?;
        // SAFETY: pSignature NULL or ulSignatureLen bytes.
        let sig = unsafe { in_bytes(pSignature, ulSignatureLen) }?;
        crypto::in_only(&m, CallId::VerifyFinal, hSession, sig)
    }

    /// `C_VerifyRecoverInit` (§5.12).
    fn C_VerifyRecoverInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE) {
        let m = state::module()?;
        // SAFETY: pMechanism NULL or a CK_MECHANISM with a valid parameter.
        let mech = unsafe { mechanism(pMechanism) }?;
        crypto::init(&m, CallId::VerifyRecoverInit, hSession, mech, hKey)
    }

    /// `C_VerifyRecover` (§5.12).
    fn C_VerifyRecover(
        hSession: CK_SESSION_HANDLE,
        pSignature: *mut CK_BYTE,
        ulSignatureLen: CK_ULONG,
        pData: *mut CK_BYTE,
        pulDataLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pSignature NULL or ulSignatureLen bytes.
        let sig = unsafe { in_bytes(pSignature, ulSignatureLen) }?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pData, pulDataLen) }?;
        crypto::in_out(&m, CallId::VerifyRecover, hSession, sig, out)
    }

    /// `C_DigestEncryptUpdate` (§5.13).
    fn C_DigestEncryptUpdate(
        hSession: CK_SESSION_HANDLE,
        pPart: *mut CK_BYTE,
        ulPartLen: CK_ULONG,
        pEncryptedPart: *mut CK_BYTE,
        pulEncryptedPartLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pPart NULL or ulPartLen bytes.
        let data = unsafe { in_bytes(pPart, ulPartLen) }?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pEncryptedPart, pulEncryptedPartLen) }?;
        crypto::in_out(&m, CallId::DigestEncryptUpdate, hSession, data, out)
    }

    /// `C_DecryptDigestUpdate` (§5.13).
    fn C_DecryptDigestUpdate(
        hSession: CK_SESSION_HANDLE,
        pEncryptedPart: *mut CK_BYTE,
        ulEncryptedPartLen: CK_ULONG,
        pPart: *mut CK_BYTE,
        pulPartLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pEncryptedPart NULL or ulEncryptedPartLen bytes.
        let data = unsafe { in_bytes(pEncryptedPart, ulEncryptedPartLen) }?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pPart, pulPartLen) }?;
        crypto::in_out(&m, CallId::DecryptDigestUpdate, hSession, data, out)
    }

    /// `C_SignEncryptUpdate` (§5.13).
    fn C_SignEncryptUpdate(
        hSession: CK_SESSION_HANDLE,
        pPart: *mut CK_BYTE,
        ulPartLen: CK_ULONG,
        pEncryptedPart: *mut CK_BYTE,
        pulEncryptedPartLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pPart NULL or ulPartLen bytes.
        let data = unsafe { in_bytes(pPart, ulPartLen) }?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pEncryptedPart, pulEncryptedPartLen) }?;
        crypto::in_out(&m, CallId::SignEncryptUpdate, hSession, data, out)
    }

    /// `C_DecryptVerifyUpdate` (§5.13).
    fn C_DecryptVerifyUpdate(
        hSession: CK_SESSION_HANDLE,
        pEncryptedPart: *mut CK_BYTE,
        ulEncryptedPartLen: CK_ULONG,
        pPart: *mut CK_BYTE,
        pulPartLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pEncryptedPart NULL or ulEncryptedPartLen bytes.
        let data = unsafe { in_bytes(pEncryptedPart, ulEncryptedPartLen) }?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pPart, pulPartLen) }?;
        crypto::in_out(&m, CallId::DecryptVerifyUpdate, hSession, data, out)
    }

    /// `C_GenerateKey` (§5.14).
    fn C_GenerateKey(
        hSession: CK_SESSION_HANDLE,
        pMechanism: *mut CK_MECHANISM,
        pTemplate: *mut CK_ATTRIBUTE,
        ulCount: CK_ULONG,
        phKey: *mut CK_OBJECT_HANDLE,
    ) {
        let m = state::module()?;
        // SAFETY: pMechanism NULL or a CK_MECHANISM with a valid parameter.
        let mech = unsafe { mechanism(pMechanism) }?;
        // SAFETY: pTemplate NULL or ulCount attributes with valid values.
        let t = unsafe { in_template(pTemplate, ulCount) }?;
        // SAFETY: phKey NULL (rejected) or valid for a handle.
        let out = unsafe { OutPtr::from_raw(phKey) }?;
        out.put(crypto::generate_key(&m, hSession, mech, &t)?);
        Ok(())
    }

    /// `C_GenerateKeyPair` (§5.14).
    fn C_GenerateKeyPair(
        hSession: CK_SESSION_HANDLE,
        pMechanism: *mut CK_MECHANISM,
        pPublicKeyTemplate: *mut CK_ATTRIBUTE,
        ulPublicKeyAttributeCount: CK_ULONG,
        pPrivateKeyTemplate: *mut CK_ATTRIBUTE,
        ulPrivateKeyAttributeCount: CK_ULONG,
        phPublicKey: *mut CK_OBJECT_HANDLE,
        phPrivateKey: *mut CK_OBJECT_HANDLE,
    ) {
        let m = state::module()?;
        // SAFETY: pMechanism NULL or a CK_MECHANISM with a valid parameter.
        let mech = unsafe { mechanism(pMechanism) }?;
        // SAFETY: NULL or ulPublicKeyAttributeCount attributes with valid values.
        let public = unsafe { in_template(pPublicKeyTemplate, ulPublicKeyAttributeCount) }?;
        // SAFETY: NULL or ulPrivateKeyAttributeCount attributes with valid values.
        let private = unsafe { in_template(pPrivateKeyTemplate, ulPrivateKeyAttributeCount) }?;
        // SAFETY: NULL (rejected) or valid for a handle.
        let out_public = unsafe { OutPtr::from_raw(phPublicKey) }?;
        // SAFETY: NULL (rejected) or valid for a handle.
        let out_private = unsafe { OutPtr::from_raw(phPrivateKey) }?;
        let (pubkey, privkey) = crypto::generate_key_pair(&m, hSession, mech, &public, &private)?;
        out_public.put(pubkey);
        out_private.put(privkey);
        Ok(())
    }

    /// `C_WrapKey` (§5.14).
    fn C_WrapKey(
        hSession: CK_SESSION_HANDLE,
        pMechanism: *mut CK_MECHANISM,
        hWrappingKey: CK_OBJECT_HANDLE,
        hKey: CK_OBJECT_HANDLE,
        pWrappedKey: *mut CK_BYTE,
        pulWrappedKeyLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pMechanism NULL or a CK_MECHANISM with a valid parameter.
        let mech = unsafe { mechanism(pMechanism) }?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pWrappedKey, pulWrappedKeyLen) }?;
        crypto::wrap_key(&m, hSession, mech, hWrappingKey, hKey, out)
    }

    /// `C_UnwrapKey` (§5.14).
    fn C_UnwrapKey(
        hSession: CK_SESSION_HANDLE,
        pMechanism: *mut CK_MECHANISM,
        hUnwrappingKey: CK_OBJECT_HANDLE,
        pWrappedKey: *mut CK_BYTE,
        ulWrappedKeyLen: CK_ULONG,
        pTemplate: *mut CK_ATTRIBUTE,
        ulAttributeCount: CK_ULONG,
        phKey: *mut CK_OBJECT_HANDLE,
    ) {
        let m = state::module()?;
        // SAFETY: pMechanism NULL or a CK_MECHANISM with a valid parameter.
        let mech = unsafe { mechanism(pMechanism) }?;
        // SAFETY: pWrappedKey NULL or ulWrappedKeyLen bytes.
        let wrapped = unsafe { in_bytes(pWrappedKey, ulWrappedKeyLen) }?;
        // SAFETY: pTemplate NULL or ulAttributeCount attributes with valid values.
        let t = unsafe { in_template(pTemplate, ulAttributeCount) }?;
        // SAFETY: phKey NULL (rejected) or valid for a handle.
        let out = unsafe { OutPtr::from_raw(phKey) }?;
        out.put(crypto::unwrap_key(&m, hSession, mech, hUnwrappingKey, wrapped, &t)?);
        Ok(())
    }

    /// `C_DeriveKey` (§5.14).
    fn C_DeriveKey(
        hSession: CK_SESSION_HANDLE,
        pMechanism: *mut CK_MECHANISM,
        hBaseKey: CK_OBJECT_HANDLE,
        pTemplate: *mut CK_ATTRIBUTE,
        ulAttributeCount: CK_ULONG,
        phKey: *mut CK_OBJECT_HANDLE,
    ) {
        let m = state::module()?;
        // SAFETY: pMechanism NULL or a CK_MECHANISM with a valid parameter.
        let mech = unsafe { mechanism(pMechanism) }?;
        // SAFETY: pTemplate NULL or ulAttributeCount attributes with valid values.
        let t = unsafe { in_template(pTemplate, ulAttributeCount) }?;
        // SAFETY: phKey NULL (rejected) or valid for a handle.
        let out = unsafe { OutPtr::from_raw(phKey) }?;
        out.put(crypto::derive_key(&m, hSession, mech, hBaseKey, &t)?);
        Ok(())
    }

    /// `C_SeedRandom` (§5.15).
    fn C_SeedRandom(hSession: CK_SESSION_HANDLE, pSeed: *mut CK_BYTE, ulSeedLen: CK_ULONG) {
        let m = state::module()?;
        // SAFETY: pSeed NULL or ulSeedLen bytes.
        let seed = unsafe { in_bytes(pSeed, ulSeedLen) }?;
        crypto::in_only(&m, CallId::SeedRandom, hSession, seed)
    }

    /// `C_GenerateRandom` (§5.15): zero bytes succeed without a round trip.
    fn C_GenerateRandom(hSession: CK_SESSION_HANDLE, RandomData: *mut CK_BYTE, ulRandomLen: CK_ULONG) {
        let m = state::module()?;
        // SAFETY: RandomData NULL (rejected unless ulRandomLen is 0) or ulRandomLen bytes.
        let out = unsafe { OutFixed::from_raw(RandomData, ulRandomLen) }?;
        crypto::generate_random(&m, hSession, out)
    }

    /// `C_GetFunctionStatus` (§5.16, legacy): `CKR_FUNCTION_NOT_PARALLEL`.
    fn C_GetFunctionStatus(hSession: CK_SESSION_HANDLE) {
        let _ = hSession;
        state::module()?;
        Err(rv(CKR_FUNCTION_NOT_PARALLEL))
    }

    /// `C_CancelFunction` (§5.16, legacy): `CKR_FUNCTION_NOT_PARALLEL`.
    fn C_CancelFunction(hSession: CK_SESSION_HANDLE) {
        let _ = hSession;
        state::module()?;
        Err(rv(CKR_FUNCTION_NOT_PARALLEL))
    }

    /// `C_WaitForSlotEvent` (§5.5): asks the server with `CKF_DONT_BLOCK`; a blocking wait
    /// polls without holding locks.
    fn C_WaitForSlotEvent(flags: CK_FLAGS, pSlot: *mut CK_SLOT_ID, pReserved: *mut c_void) {
        let _ = pReserved;
        let m = state::module()?;
        // SAFETY: pSlot NULL (rejected) or valid for a CK_SLOT_ID.
        let out = unsafe { OutPtr::from_raw(pSlot) }?;
        out.put(general::wait_for_slot_event(&m, flags)?);
        Ok(())
    }

    /// `C_LoginUser` (3.0 §5.6).
    fn C_LoginUser(
        hSession: CK_SESSION_HANDLE,
        userType: CK_USER_TYPE,
        pPin: *mut CK_UTF8CHAR,
        ulPinLen: CK_ULONG,
        pUsername: *mut CK_UTF8CHAR,
        ulUsernameLen: CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pPin NULL or ulPinLen bytes.
        let pin = unsafe { in_opt_bytes(pPin, ulPinLen) }?;
        // SAFETY: pUsername NULL or ulUsernameLen bytes.
        let name = unsafe { in_bytes(pUsername, ulUsernameLen) }?;
        session::login_user(&m, hSession, userType, pin, name)
    }

    /// `C_SessionCancel` (3.0 §5.6).
    fn C_SessionCancel(hSession: CK_SESSION_HANDLE, flags: CK_FLAGS) {
        session::session_cancel(&*state::module()?, hSession, flags)
    }

    /// `C_MessageEncryptInit` (3.0 §5.11).
    fn C_MessageEncryptInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE) {
        let m = state::module()?;
        // SAFETY: pMechanism NULL or a CK_MECHANISM with a valid parameter.
        let mech = unsafe { mechanism(pMechanism) }?;
        message::init(&m, CallId::MessageEncryptInit, hSession, mech, hKey)
    }

    /// `C_EncryptMessage` (3.0 §5.11).
    fn C_EncryptMessage(
        hSession: CK_SESSION_HANDLE,
        pParameter: *mut c_void,
        ulParameterLen: CK_ULONG,
        pAssociatedData: *mut CK_BYTE,
        ulAssociatedDataLen: CK_ULONG,
        pPlaintext: *mut CK_BYTE,
        ulPlaintextLen: CK_ULONG,
        pCiphertext: *mut CK_BYTE,
        pulCiphertextLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pParameter NULL or ulParameterLen bytes.
        let param = unsafe { in_bytes(pParameter.cast::<u8>(), ulParameterLen) }?;
        // SAFETY: NULL or ulAssociatedDataLen bytes.
        let aad = unsafe { in_bytes(pAssociatedData, ulAssociatedDataLen) }?;
        // SAFETY: NULL or ulPlaintextLen bytes.
        let data = unsafe { in_bytes(pPlaintext, ulPlaintextLen) }?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pCiphertext, pulCiphertextLen) }?;
        message::crypt(&m, true, hSession, param, aad, data, out)
    }

    /// `C_EncryptMessageBegin` (3.0 §5.11).
    fn C_EncryptMessageBegin(
        hSession: CK_SESSION_HANDLE,
        pParameter: *mut c_void,
        ulParameterLen: CK_ULONG,
        pAssociatedData: *mut CK_BYTE,
        ulAssociatedDataLen: CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pParameter NULL or ulParameterLen bytes.
        let param = unsafe { in_bytes(pParameter.cast::<u8>(), ulParameterLen) }?;
        // SAFETY: NULL or ulAssociatedDataLen bytes.
        let aad = unsafe { in_bytes(pAssociatedData, ulAssociatedDataLen) }?;
        message::crypt_begin(&m, true, hSession, param, aad)
    }

    /// `C_EncryptMessageNext` (3.0 §5.11).
    fn C_EncryptMessageNext(
        hSession: CK_SESSION_HANDLE,
        pParameter: *mut c_void,
        ulParameterLen: CK_ULONG,
        pPlaintextPart: *mut CK_BYTE,
        ulPlaintextPartLen: CK_ULONG,
        pCiphertextPart: *mut CK_BYTE,
        pulCiphertextPartLen: *mut CK_ULONG,
        flags: CK_FLAGS,
    ) {
        let m = state::module()?;
        // SAFETY: pParameter NULL or ulParameterLen bytes.
        let param = unsafe { in_bytes(pParameter.cast::<u8>(), ulParameterLen) }?;
        // SAFETY: NULL or ulPlaintextPartLen bytes.
        let part = unsafe { in_bytes(pPlaintextPart, ulPlaintextPartLen) }?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pCiphertextPart, pulCiphertextPartLen) }?;
        message::crypt_next(&m, true, hSession, param, part, out, flags)
    }

    /// `C_MessageEncryptFinal` (3.0 §5.11).
    fn C_MessageEncryptFinal(hSession: CK_SESSION_HANDLE) {
        message::finish(&*state::module()?, CallId::MessageEncryptFinal, hSession)
    }

    /// `C_MessageDecryptInit` (3.0 §5.12).
    fn C_MessageDecryptInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE) {
        let m = state::module()?;
        // SAFETY: pMechanism NULL or a CK_MECHANISM with a valid parameter.
        let mech = unsafe { mechanism(pMechanism) }?;
        message::init(&m, CallId::MessageDecryptInit, hSession, mech, hKey)
    }

    /// `C_DecryptMessage` (3.0 §5.12).
    fn C_DecryptMessage(
        hSession: CK_SESSION_HANDLE,
        pParameter: *mut c_void,
        ulParameterLen: CK_ULONG,
        pAssociatedData: *mut CK_BYTE,
        ulAssociatedDataLen: CK_ULONG,
        pCiphertext: *mut CK_BYTE,
        ulCiphertextLen: CK_ULONG,
        pPlaintext: *mut CK_BYTE,
        pulPlaintextLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pParameter NULL or ulParameterLen bytes.
        let param = unsafe { in_bytes(pParameter.cast::<u8>(), ulParameterLen) }?;
        // SAFETY: NULL or ulAssociatedDataLen bytes.
        let aad = unsafe { in_bytes(pAssociatedData, ulAssociatedDataLen) }?;
        // SAFETY: NULL or ulCiphertextLen bytes.
        let data = unsafe { in_bytes(pCiphertext, ulCiphertextLen) }?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pPlaintext, pulPlaintextLen) }?;
        message::crypt(&m, false, hSession, param, aad, data, out)
    }

    /// `C_DecryptMessageBegin` (3.0 §5.12).
    fn C_DecryptMessageBegin(
        hSession: CK_SESSION_HANDLE,
        pParameter: *mut c_void,
        ulParameterLen: CK_ULONG,
        pAssociatedData: *mut CK_BYTE,
        ulAssociatedDataLen: CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pParameter NULL or ulParameterLen bytes.
        let param = unsafe { in_bytes(pParameter.cast::<u8>(), ulParameterLen) }?;
        // SAFETY: NULL or ulAssociatedDataLen bytes.
        let aad = unsafe { in_bytes(pAssociatedData, ulAssociatedDataLen) }?;
        message::crypt_begin(&m, false, hSession, param, aad)
    }

    /// `C_DecryptMessageNext` (3.0 §5.12).
    fn C_DecryptMessageNext(
        hSession: CK_SESSION_HANDLE,
        pParameter: *mut c_void,
        ulParameterLen: CK_ULONG,
        pCiphertextPart: *mut CK_BYTE,
        ulCiphertextPartLen: CK_ULONG,
        pPlaintextPart: *mut CK_BYTE,
        pulPlaintextPartLen: *mut CK_ULONG,
        flags: CK_FLAGS,
    ) {
        let m = state::module()?;
        // SAFETY: pParameter NULL or ulParameterLen bytes.
        let param = unsafe { in_bytes(pParameter.cast::<u8>(), ulParameterLen) }?;
        // SAFETY: NULL or ulCiphertextPartLen bytes.
        let part = unsafe { in_bytes(pCiphertextPart, ulCiphertextPartLen) }?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pPlaintextPart, pulPlaintextPartLen) }?;
        message::crypt_next(&m, false, hSession, param, part, out, flags)
    }

    /// `C_MessageDecryptFinal` (3.0 §5.12).
    fn C_MessageDecryptFinal(hSession: CK_SESSION_HANDLE) {
        message::finish(&*state::module()?, CallId::MessageDecryptFinal, hSession)
    }

    /// `C_MessageSignInit` (3.0 §5.13).
    fn C_MessageSignInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE) {
        let m = state::module()?;
        // SAFETY: pMechanism NULL or a CK_MECHANISM with a valid parameter.
        let mech = unsafe { mechanism(pMechanism) }?;
        message::init(&m, CallId::MessageSignInit, hSession, mech, hKey)
    }

    /// `C_SignMessage` (3.0 §5.13).
    fn C_SignMessage(
        hSession: CK_SESSION_HANDLE,
        pParameter: *mut c_void,
        ulParameterLen: CK_ULONG,
        pData: *mut CK_BYTE,
        ulDataLen: CK_ULONG,
        pSignature: *mut CK_BYTE,
        pulSignatureLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pParameter NULL or ulParameterLen bytes.
        let param = unsafe { in_bytes(pParameter.cast::<u8>(), ulParameterLen) }?;
        // SAFETY: NULL or ulDataLen bytes.
        let data = unsafe { in_bytes(pData, ulDataLen) }?;
        // SAFETY: length pointer NULL (rejected) or in/out; buffer NULL or that many bytes.
        let out = unsafe { OutBytes::from_raw(pSignature, pulSignatureLen) }?;
        message::sign(&m, hSession, param, data, out)
    }

    /// `C_SignMessageBegin` (3.0 §5.13).
    fn C_SignMessageBegin(hSession: CK_SESSION_HANDLE, pParameter: *mut c_void, ulParameterLen: CK_ULONG) {
        let m = state::module()?;
        // SAFETY: pParameter NULL or ulParameterLen bytes.
        let param = unsafe { in_bytes(pParameter.cast::<u8>(), ulParameterLen) }?;
        message::begin(&m, true, hSession, param)
    }

    /// `C_SignMessageNext` (3.0 §5.13): a NULL `pulSignatureLen` means more parts follow.
    fn C_SignMessageNext(
        hSession: CK_SESSION_HANDLE,
        pParameter: *mut c_void,
        ulParameterLen: CK_ULONG,
        pData: *mut CK_BYTE,
        ulDataLen: CK_ULONG,
        pSignature: *mut CK_BYTE,
        pulSignatureLen: *mut CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pParameter NULL or ulParameterLen bytes.
        let param = unsafe { in_bytes(pParameter.cast::<u8>(), ulParameterLen) }?;
        // SAFETY: NULL or ulDataLen bytes.
        let data = unsafe { in_bytes(pData, ulDataLen) }?;
        let out = if pulSignatureLen.is_null() {
            None
        } else {
            // SAFETY: length pointer in/out; buffer NULL or that many bytes.
            Some(unsafe { OutBytes::from_raw(pSignature, pulSignatureLen) }?)
        };
        message::sign_next(&m, hSession, param, data, out)
    }

    /// `C_MessageSignFinal` (3.0 §5.13).
    fn C_MessageSignFinal(hSession: CK_SESSION_HANDLE) {
        message::finish(&*state::module()?, CallId::MessageSignFinal, hSession)
    }

    /// `C_MessageVerifyInit` (3.0 §5.14).
    fn C_MessageVerifyInit(hSession: CK_SESSION_HANDLE, pMechanism: *mut CK_MECHANISM, hKey: CK_OBJECT_HANDLE) {
        let m = state::module()?;
        // SAFETY: pMechanism NULL or a CK_MECHANISM with a valid parameter.
        let mech = unsafe { mechanism(pMechanism) }?;
        message::init(&m, CallId::MessageVerifyInit, hSession, mech, hKey)
    }

    /// `C_VerifyMessage` (3.0 §5.14).
    fn C_VerifyMessage(
        hSession: CK_SESSION_HANDLE,
        pParameter: *mut c_void,
        ulParameterLen: CK_ULONG,
        pData: *mut CK_BYTE,
        ulDataLen: CK_ULONG,
        pSignature: *mut CK_BYTE,
        ulSignatureLen: CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pParameter NULL or ulParameterLen bytes.
        let param = unsafe { in_bytes(pParameter.cast::<u8>(), ulParameterLen) }?;
        // SAFETY: NULL or ulDataLen bytes.
        let data = unsafe { in_bytes(pData, ulDataLen) }?;
        // SAFETY: NULL or ulSignatureLen bytes.
        let sig = unsafe { in_bytes(pSignature, ulSignatureLen) }?;
        message::verify(&m, false, hSession, param, data, sig)
    }

    /// `C_VerifyMessageBegin` (3.0 §5.14).
    fn C_VerifyMessageBegin(hSession: CK_SESSION_HANDLE, pParameter: *mut c_void, ulParameterLen: CK_ULONG) {
        let m = state::module()?;
        // SAFETY: pParameter NULL or ulParameterLen bytes.
        let param = unsafe { in_bytes(pParameter.cast::<u8>(), ulParameterLen) }?;
        message::begin(&m, false, hSession, param)
    }

    /// `C_VerifyMessageNext` (3.0 §5.14).
    fn C_VerifyMessageNext(
        hSession: CK_SESSION_HANDLE,
        pParameter: *mut c_void,
        ulParameterLen: CK_ULONG,
        pData: *mut CK_BYTE,
        ulDataLen: CK_ULONG,
        pSignature: *mut CK_BYTE,
        ulSignatureLen: CK_ULONG,
    ) {
        let m = state::module()?;
        // SAFETY: pParameter NULL or ulParameterLen bytes.
        let param = unsafe { in_bytes(pParameter.cast::<u8>(), ulParameterLen) }?;
        // SAFETY: NULL or ulDataLen bytes.
        let data = unsafe { in_bytes(pData, ulDataLen) }?;
        // SAFETY: NULL or ulSignatureLen bytes.
        let sig = unsafe { in_bytes(pSignature, ulSignatureLen) }?;
        message::verify(&m, true, hSession, param, data, sig)
    }

    /// `C_MessageVerifyFinal` (3.0 §5.14).
    fn C_MessageVerifyFinal(hSession: CK_SESSION_HANDLE) {
        message::finish(&*state::module()?, CallId::MessageVerifyFinal, hSession)
    }
}
