//! The C boundary without a server: interfaces, `C_Initialize` rules, calls before
//! initialisation, the stand-in when nobody answers, and a server that never answers (timeout).
#![allow(unsafe_code, clippy::unwrap_used, clippy::macro_metavars_in_unsafe)] // C API tests (common/mod.rs)

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::ptr;
use std::time::{Duration, Instant};

use common::{Lib, accept_request, lock, send_reply, set_env, text};
use cryptoki_sys::*;

fn no_server_env() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("unix:path={}/nobody.sock", dir.path().display());
    set_env("P11FWD_SERVER_ADDRESS", Some(&addr));
    set_env("P11FWD_TIMEOUT", None);
    dir
}

#[test]
fn interfaces_need_no_initialisation() {
    let _g = lock();
    let lib = Lib::ours();
    let get_list = lib
        .symbol::<CK_C_GetFunctionList>("C_GetFunctionList")
        .unwrap();
    let get_iface_list = lib
        .symbol::<CK_C_GetInterfaceList>("C_GetInterfaceList")
        .unwrap();
    let get_iface = lib.symbol::<CK_C_GetInterface>("C_GetInterface").unwrap();
    // SAFETY: the module's entry points, with valid or deliberately NULL arguments.
    let get_list = |p| unsafe { get_list(p) };
    // SAFETY: as above.
    let get_iface_list = |p, n| unsafe { get_iface_list(p, n) };
    // SAFETY: as above.
    let get_iface = |n, v, p, f| unsafe { get_iface(n, v, p, f) };
    // SAFETY: every function list starts with its CK_VERSION, and lists are static.
    let version_at = |p: *mut std::ffi::c_void| unsafe { *p.cast::<CK_VERSION>() };

    let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
    assert_eq!(get_list(&mut list), CKR_OK);
    let v = version_at(list.cast());
    assert_eq!((v.major, v.minor), (2, 40));
    assert_eq!(get_list(ptr::null_mut()), CKR_ARGUMENTS_BAD);

    let mut n: CK_ULONG = 0;
    assert_eq!(get_iface_list(ptr::null_mut(), &mut n), CKR_OK);
    assert_eq!(n, 2);
    let empty = CK_INTERFACE {
        pInterfaceName: ptr::null_mut(),
        pFunctionList: ptr::null_mut(),
        flags: 0,
    };
    let mut two = [empty; 2];
    n = 1;
    assert_eq!(
        get_iface_list(two.as_mut_ptr(), &mut n),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(n, 2);
    assert_eq!(get_iface_list(two.as_mut_ptr(), &mut n), CKR_OK);
    // SAFETY: the names are static C strings.
    let name = unsafe { std::ffi::CStr::from_ptr(two[0].pInterfaceName.cast()) };
    assert_eq!(name.to_bytes(), b"PKCS 11");
    let versions: Vec<(u8, u8)> = two
        .iter()
        .map(|i| version_at(i.pFunctionList))
        .map(|v| (v.major, v.minor))
        .collect();
    assert_eq!(versions, [(3, 0), (2, 40)]);
    assert_eq!(
        get_iface_list(ptr::null_mut(), ptr::null_mut()),
        CKR_ARGUMENTS_BAD
    );

    let mut iface: *mut CK_INTERFACE = ptr::null_mut();
    let version_of = |i: *mut CK_INTERFACE| {
        // SAFETY: an interface the module returned.
        let v = version_at(unsafe { (*i).pFunctionList });
        (v.major, v.minor)
    };
    assert_eq!(
        get_iface(ptr::null_mut(), ptr::null_mut(), &mut iface, 0),
        CKR_OK
    );
    assert_eq!(version_of(iface), (3, 0));
    let mut name = *b"PKCS 11\0";
    let mut v240 = CK_VERSION {
        major: 2,
        minor: 40,
    };
    assert_eq!(
        get_iface(name.as_mut_ptr(), &mut v240, &mut iface, 0),
        CKR_OK
    );
    assert_eq!(version_of(iface), (2, 40));
    let mut v31 = CK_VERSION { major: 3, minor: 1 };
    assert_eq!(
        get_iface(name.as_mut_ptr(), &mut v31, &mut iface, 0),
        CKR_ARGUMENTS_BAD
    );
    let mut other = *b"Vendor X\0";
    assert_eq!(
        get_iface(other.as_mut_ptr(), ptr::null_mut(), &mut iface, 0),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(
        get_iface(
            ptr::null_mut(),
            ptr::null_mut(),
            &mut iface,
            CKF_INTERFACE_FORK_SAFE
        ),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(
        get_iface(ptr::null_mut(), ptr::null_mut(), ptr::null_mut(), 0),
        CKR_ARGUMENTS_BAD
    );
}

#[test]
fn calls_before_initialize_are_not_initialized() {
    let _g = lock();
    let lib = Lib::ours();
    let mut n: CK_ULONG = 0;
    let mut info = CK_INFO::default();
    let mut h = 0;
    assert_eq!(
        call!(lib, C_GetInfo, &mut info),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    // NULL pointers too: the initialisation check comes first.
    assert_eq!(
        call!(lib, C_GetInfo, ptr::null_mut()),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    assert_eq!(
        call!(lib, C_GetSlotList, CK_TRUE, ptr::null_mut(), &mut n),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    assert_eq!(
        call!(
            lib,
            C_OpenSession,
            0,
            CKF_SERIAL_SESSION,
            ptr::null_mut(),
            None,
            &mut h
        ),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    assert_eq!(
        call!(
            lib,
            C_Sign,
            1,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            ptr::null_mut()
        ),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    assert_eq!(
        call!(lib, C_GenerateRandom, 1, ptr::null_mut(), 0),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    assert_eq!(
        call!(lib, C_Finalize, ptr::null_mut()),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    assert_eq!(
        call!(lib, C_GetFunctionStatus, 1),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    assert_eq!(
        call!(
            lib,
            C_LoginUser,
            1,
            CKU_USER,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            0
        ),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    assert_eq!(
        call!(lib, C_MessageVerifyFinal, 1),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
}

#[test]
fn initialize_argument_rules() {
    let _g = lock();
    let _dir = no_server_env();
    let lib = Lib::ours();
    unsafe extern "C" fn create(_: *mut *mut std::ffi::c_void) -> CK_RV {
        CKR_OK
    }
    let mut args = CK_C_INITIALIZE_ARGS {
        CreateMutex: Some(create),
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: ptr::null_mut(),
    };
    // Some callbacks but not all.
    assert_eq!(
        call!(lib, C_Initialize, (&raw mut args).cast()),
        CKR_ARGUMENTS_BAD
    );
    // Arguments without CKF_OS_LOCKING_OK: CKR_CANT_LOCK, as p11-kit-client.so (rpc §8).
    args.CreateMutex = None;
    args.flags = 0;
    assert_eq!(
        call!(lib, C_Initialize, (&raw mut args).cast()),
        CKR_CANT_LOCK
    );
    // NULL arguments are fine; twice is CKR_CRYPTOKI_ALREADY_INITIALIZED.
    assert_eq!(call!(lib, C_Initialize, ptr::null_mut()), CKR_OK);
    assert_eq!(lib.init(), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    // C_Finalize's pReserved must be NULL.
    let mut junk = 0u8;
    assert_eq!(
        call!(lib, C_Finalize, (&raw mut junk).cast()),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(lib.finalize(), CKR_OK);
    assert_eq!(lib.finalize(), CKR_CRYPTOKI_NOT_INITIALIZED);
    // Re-initialising after C_Finalize works, with a pReserved string.
    let mut reserved = *b"some-config\0";
    args.flags = CKF_OS_LOCKING_OK;
    args.pReserved = reserved.as_mut_ptr().cast();
    assert_eq!(call!(lib, C_Initialize, (&raw mut args).cast()), CKR_OK);
    assert_eq!(lib.finalize(), CKR_OK);
}

#[test]
fn without_a_server_the_module_is_an_empty_stand_in() {
    let _g = lock();
    let _dir = no_server_env();
    let lib = Lib::ours();
    assert_eq!(lib.init(), CKR_OK);
    let info = lib.info().unwrap();
    assert_eq!(text(&info.manufacturerID), "p11fwd");
    assert_eq!(text(&info.libraryDescription), "p11fwd (no connection)");
    assert_eq!(
        (info.cryptokiVersion.major, info.cryptokiVersion.minor),
        (3, 0)
    );
    assert_eq!(lib.slots().unwrap(), Vec::<CK_SLOT_ID>::new());
    let mut si = CK_SLOT_INFO::default();
    assert_eq!(
        call!(lib, C_GetSlotInfo, 0x11, &mut si),
        CKR_SLOT_ID_INVALID
    );
    assert_eq!(lib.open(0x11), Err(CKR_SLOT_ID_INVALID));
    let mut slot = 0;
    assert_eq!(
        call!(
            lib,
            C_WaitForSlotEvent,
            CKF_DONT_BLOCK,
            &mut slot,
            ptr::null_mut()
        ),
        CKR_NO_EVENT
    );
    assert_eq!(call!(lib, C_CloseSession, 1), CKR_SESSION_HANDLE_INVALID);
    assert_eq!(
        call!(lib, C_GetFunctionStatus, 1),
        CKR_FUNCTION_NOT_PARALLEL
    );
    assert_eq!(call!(lib, C_CancelFunction, 1), CKR_FUNCTION_NOT_PARALLEL);

    // The 2.40 list (another instance, initialised on its own) reports Cryptoki 2.40.
    let v2 = Lib::ours_2_40();
    assert_eq!(v2.info().err(), Some(CKR_CRYPTOKI_NOT_INITIALIZED));
    assert_eq!(v2.init(), CKR_OK);
    let info = v2.info().unwrap();
    assert_eq!(
        (info.cryptokiVersion.major, info.cryptokiVersion.minor),
        (2, 40)
    );
    assert_eq!(v2.finalize(), CKR_OK);
    assert_eq!(lib.finalize(), CKR_OK);
}

#[test]
fn a_server_that_never_answers_times_out() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // Answers the version byte, then reads and never replies.
    let server = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(2) {
            let mut s = stream.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            s.write_all(&[0]).unwrap();
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(5));
    });
    set_env(
        "P11FWD_SERVER_ADDRESS",
        Some(&format!("unix:path={}", path.display())),
    );
    set_env("P11FWD_TIMEOUT", Some("500ms"));
    let lib = Lib::ours();
    let t = Instant::now();
    // The RPC C_Initialize times out: the module starts as the stand-in.
    assert_eq!(lib.init(), CKR_OK);
    let waited = t.elapsed();
    // At least the timeout; far less than the 120 s default (a loose bound: a loaded machine
    // must not fail it).
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(60),
        "{waited:?}"
    );
    // The next slot call tries again (and times out again): no slots, no hang.
    let t = Instant::now();
    assert_eq!(lib.slots().unwrap(), Vec::<CK_SLOT_ID>::new());
    assert!(t.elapsed() < Duration::from_secs(60));
    assert_eq!(lib.finalize(), CKR_OK);
    set_env("P11FWD_TIMEOUT", None);
    drop(server);
}

/// A server that answers the RPC `C_Initialize` with an error: `C_Initialize` returns that
/// error, as `p11-kit-client.so` does (rpc §8); the stand-in is only for no answer at all.
#[test]
fn a_server_error_to_c_initialize_is_returned() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refusing.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let mut s = stream.unwrap();
            let code = accept_request(&mut s).unwrap();
            // An error reply: call id 0, signature "u", the CK_RV as 8 bytes.
            let mut body = vec![0, 0, 0, 0, 0, 0, 0, 1, b'u'];
            body.extend_from_slice(&CKR_FUNCTION_FAILED.to_be_bytes());
            send_reply(&mut s, code, &body).unwrap();
        }
    });
    let address = format!("unix:path={}", path.display());
    set_env("P11FWD_SERVER_ADDRESS", Some(&address));
    set_env("P11_KIT_SERVER_ADDRESS", Some(&address));
    let ours = Lib::ours();
    assert_eq!(ours.init(), CKR_FUNCTION_FAILED);
    assert_eq!(ours.finalize(), CKR_CRYPTOKI_NOT_INITIALIZED);
    let stock = Lib::stock_client();
    assert_eq!(stock.init(), CKR_FUNCTION_FAILED, "p11-kit-client.so");
    server.join().unwrap();
    set_env("P11_KIT_SERVER_ADDRESS", None);
}

#[test]
fn a_bad_override_is_a_clear_error() {
    let _g = lock();
    set_env("P11FWD_SERVER_ADDRESS", Some("unix:path=relative/path"));
    let lib = Lib::ours();
    assert_eq!(lib.init(), CKR_GENERAL_ERROR);
    // vsock addresses are refused the same way (the module connects to Unix sockets only),
    // from either variable.
    set_env("P11FWD_SERVER_ADDRESS", Some("vsock:cid=3;port=5000"));
    assert_eq!(lib.init(), CKR_GENERAL_ERROR);
    set_env("P11FWD_SERVER_ADDRESS", None);
    set_env("P11_KIT_SERVER_ADDRESS", Some("vsock:port=5000"));
    assert_eq!(lib.init(), CKR_GENERAL_ERROR);
    set_env("P11_KIT_SERVER_ADDRESS", None);
}
