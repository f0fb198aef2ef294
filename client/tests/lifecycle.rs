//! Where `p11-kit-client.so` fails its users: server restarts (we reconnect), a server that
//! appears after `C_Initialize`, `fork()` (the child must initialise its own connection, the
//! parent is unaffected), SIGPIPE (a host with the default disposition survives a dead server;
//! the stock client dies), and a blocking `C_WaitForSlotEvent` that holds no lock.
#![allow(unsafe_code, clippy::unwrap_used, clippy::macro_metavars_in_unsafe)] // C API tests (common/mod.rs)

mod common;

use std::os::unix::net::{UnixListener, UnixStream};
use std::ptr;
use std::time::{Duration, Instant};

use common::{Kind, Lib, Relayed, Server, accept_request, lock, mech, send_reply, set_env, text};
use cryptoki_sys::*;
use p11fwd_tests::{Key, TestToken};

fn token() -> TestToken {
    TestToken::builder().with(Key::EcP256).build()
}

/// Sign and verify once with `ec-p256` on session `h`.
fn sign_ok(lib: &Lib, h: CK_SESSION_HANDLE) {
    let key = lib.object(h, CKO_PRIVATE_KEY, "ec-p256");
    let public = lib.object(h, CKO_PUBLIC_KEY, "ec-p256");
    let data = [0x11u8; 32];
    let sig = lib.sign(h, &mut mech(CKM_ECDSA), key, &data).unwrap();
    lib.verify(h, &mut mech(CKM_ECDSA), public, &data, &sig)
        .unwrap();
}

fn server_restart(kind: Kind) {
    let _g = lock();
    let token = token();
    let mut server = Server::start(kind, &token);
    set_env("P11FWD_SERVER_ADDRESS", Some(&server.address()));
    set_env("P11FWD_TIMEOUT", Some("20"));
    let lib = Lib::ours();
    assert_eq!(lib.init(), CKR_OK);
    let slot = lib.slots().unwrap()[0];
    let h = lib.session();
    sign_ok(&lib, h);
    let key = lib.object(h, CKO_PRIVATE_KEY, "ec-p256");

    server.restart();

    // The old session belonged to the old connection. The Init is deferred (issue 7: it
    // travels with C_Sign), so the first call that needs the server reports the loss.
    let mut m = mech(CKM_ECDSA);
    let mut first = call!(lib, C_SignInit, h, &mut m, key);
    if first == CKR_OK {
        let data = [0u8; 32];
        let mut sig = [0u8; 64];
        let mut len = 64;
        first = call!(
            lib,
            C_Sign,
            h,
            data.as_ptr().cast_mut(),
            32,
            sig.as_mut_ptr(),
            &mut len
        );
    }
    assert!(
        first == CKR_DEVICE_REMOVED || first == CKR_SESSION_HANDLE_INVALID,
        "{first:#x}"
    );
    assert_eq!(
        call!(lib, C_SignInit, h, &mut m, key),
        CKR_SESSION_HANDLE_INVALID
    );
    // Slot calls work again without C_Finalize/C_Initialize: the module reconnected.
    assert_eq!(lib.slots().unwrap(), vec![slot]);
    assert_eq!(
        text(&lib.info().unwrap().libraryDescription),
        "p11fwd PKCS#11 RPC client"
    );
    let h2 = lib.session();
    assert_ne!(h2, h, "session handles are never reused");
    sign_ok(&lib, h2);
    assert_eq!(call!(lib, C_CloseSession, h), CKR_SESSION_HANDLE_INVALID);

    // Restart again, and let a slot call be the first one: it reconnects and retries.
    server.restart();
    assert_eq!(lib.slots().unwrap(), vec![slot]);
    let h3 = lib.session();
    sign_ok(&lib, h3);
    assert_eq!(lib.finalize(), CKR_OK);
}

#[test]
fn reconnects_after_a_stock_server_restart() {
    server_restart(Kind::Stock);
}

#[test]
fn reconnects_after_a_p11fwd_server_restart() {
    server_restart(Kind::Fwd);
}

#[test]
fn a_server_started_later_is_picked_up() {
    let _g = lock();
    let token = token();
    let mut server = Server::start(Kind::Stock, &token);
    server.stop();
    set_env("P11FWD_SERVER_ADDRESS", Some(&server.address()));
    set_env("P11FWD_TIMEOUT", Some("20"));
    let lib = Lib::ours();
    assert_eq!(lib.init(), CKR_OK);
    assert_eq!(lib.slots().unwrap(), Vec::<CK_SLOT_ID>::new());
    assert_eq!(
        text(&lib.info().unwrap().libraryDescription),
        "p11fwd (no connection)"
    );
    server.restart();
    assert_eq!(lib.slots().unwrap().len(), 1);
    let h = lib.session();
    sign_ok(&lib, h);
    // And when it goes away again, the module shows no slots instead of failing.
    server.stop();
    assert_eq!(lib.slots().unwrap(), Vec::<CK_SLOT_ID>::new());
    assert_eq!(lib.finalize(), CKR_OK);
}

/// Run `child` in a fork child; returns its wait status.
fn in_child(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only runs `child` (module calls, no locks held by other threads of
    // this test: the test lock serialises module users) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(99);
        // SAFETY: leave the child without running the parent's atexit handlers or test harness.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    status
}

fn fork(kind: Kind) {
    let _g = lock();
    let token = token();
    let server = Server::start(kind, &token);
    set_env("P11FWD_SERVER_ADDRESS", Some(&server.address()));
    let lib = Lib::ours();
    assert_eq!(lib.init(), CKR_OK);
    let h = lib.session();
    sign_ok(&lib, h);
    let key = lib.object(h, CKO_PRIVATE_KEY, "ec-p256");

    let status = in_child(|| {
        let mut n: CK_ULONG = 0;
        if call!(lib, C_GetSlotList, CK_TRUE, ptr::null_mut(), &mut n)
            != CKR_CRYPTOKI_NOT_INITIALIZED
        {
            return 1;
        }
        let mut m = mech(CKM_ECDSA);
        if call!(lib, C_SignInit, h, &mut m, key) != CKR_CRYPTOKI_NOT_INITIALIZED {
            return 2;
        }
        if lib.info().err() != Some(CKR_CRYPTOKI_NOT_INITIALIZED) {
            return 3;
        }
        // Its own C_Initialize opens its own connection.
        if lib.init() != CKR_OK {
            return 4;
        }
        if lib.slots().map(|s| s.len()) != Ok(1) {
            return 5;
        }
        let h = lib.session();
        sign_ok(&lib, h);
        if lib.finalize() != CKR_OK {
            return 6;
        }
        0
    });
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child failed at step {}",
        libc::WEXITSTATUS(status)
    );

    // The parent's connection and session are untouched.
    sign_ok(&lib, h);
    assert_eq!(lib.slots().unwrap().len(), 1);
    assert_eq!(lib.finalize(), CKR_OK);
}

#[test]
fn fork_child_needs_its_own_initialize_stock() {
    fork(Kind::Stock);
}

#[test]
fn fork_child_needs_its_own_initialize_p11fwd() {
    fork(Kind::Fwd);
}

/// Two users of the module in one process, e.g. NSS loading it directly and p11-kit-proxy
/// loading it too: each `C_GetInterface`/`C_GetFunctionList` is an instance of its own, with
/// its own `C_Initialize`, connection and `C_Finalize`, as with `p11-kit-client.so` (which this
/// test checks too). A list's own `C_GetFunctionList` stays in its instance; the exported
/// symbols are one more instance.
fn two_users(kind: Kind) {
    let _g = lock();
    let token = token();
    let Relayed {
        relay,
        server,
        dir: _dir,
    } = Relayed::start(kind, &token);
    let nss = Lib::ours();
    let proxy = Lib::ours_2_40();
    assert_eq!(nss.init(), CKR_OK);
    assert_eq!(
        proxy.init(),
        CKR_OK,
        "{kind:?}: not CKR_CRYPTOKI_ALREADY_INITIALIZED"
    );
    assert_eq!(nss.init(), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    assert_eq!(relay.stats().conns, 2, "{kind:?}: a connection each");
    let (a, b) = (nss.session(), proxy.session());
    sign_ok(&nss, a);
    sign_ok(&proxy, b);
    assert_eq!(proxy.finalize(), CKR_OK);
    sign_ok(&nss, a);
    let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
    assert_eq!(call!(nss, C_GetFunctionList, &mut list), CKR_OK);
    let mut info = CK_SESSION_INFO::default();
    // SAFETY: the module returned a pointer to one of its static lists.
    let get_session_info = unsafe { (*list).C_GetSessionInfo }.unwrap();
    // SAFETY: the module's function, a valid out pointer.
    let rv = unsafe { get_session_info(a, &mut info) };
    assert_eq!(
        rv, CKR_OK,
        "{kind:?}: the list's C_GetFunctionList keeps the instance"
    );
    let exported = nss
        .symbol::<CK_C_GetSessionInfo>("C_GetSessionInfo")
        .unwrap();
    // SAFETY: the exported function, a valid out pointer.
    let rv = unsafe { exported(a, &mut info) };
    assert_eq!(
        rv, CKR_CRYPTOKI_NOT_INITIALIZED,
        "{kind:?}: the exported symbols' instance"
    );
    assert_eq!(nss.finalize(), CKR_OK);
    assert_eq!(proxy.init(), CKR_OK);
    assert_eq!(proxy.finalize(), CKR_OK);

    set_env("P11_KIT_SERVER_ADDRESS", Some(&server.address()));
    let (first, second) = (Lib::stock_client(), Lib::stock_client());
    assert_eq!(
        (first.init(), second.init()),
        (CKR_OK, CKR_OK),
        "p11-kit-client.so"
    );
    assert_eq!(second.finalize(), CKR_OK);
    let mut n = 0;
    assert_eq!(
        call!(first, C_GetSlotList, CK_TRUE, ptr::null_mut(), &mut n),
        CKR_OK
    );
    assert_eq!(
        n, 1,
        "p11-kit-client.so: the first instance still has its connection"
    );
    assert_eq!(first.finalize(), CKR_OK);
    set_env("P11_KIT_SERVER_ADDRESS", None);
}

per_server! {
    two_users => each_function_list_is_an_instance_stock, each_function_list_is_an_instance_p11fwd;
}

/// A server that answers the version byte and `C_Initialize`, then hangs up at once.
fn hang_up_server(path: &std::path::Path) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(path).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((s, _)) => {
                    let _ = serve_then_hang_up(s);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    })
}

fn serve_then_hang_up(mut s: UnixStream) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let code = accept_request(&mut s)?;
    // Reply to C_Initialize (call 1, empty signature).
    send_reply(&mut s, code, &[0, 0, 0, 1, 0, 0, 0, 0])?;
    s.shutdown(std::net::Shutdown::Both)
}

#[test]
fn sigpipe_never_kills_the_host() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hangup.sock");
    let server = hang_up_server(&path);
    let address = format!("unix:path={}", path.display());
    set_env("P11FWD_SERVER_ADDRESS", Some(&address));
    set_env("P11_KIT_SERVER_ADDRESS", Some(&address));
    set_env("P11FWD_TIMEOUT", Some("5"));

    let host = |lib: Lib| {
        move || {
            // A C host: SIGPIPE has its default disposition (Rust sets it to ignore).
            // SAFETY: resetting a signal disposition in a single-threaded child.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            if lib.init() != CKR_OK {
                return 10;
            }
            // Let the server hang up before we write.
            std::thread::sleep(Duration::from_millis(100));
            for _ in 0..3 {
                let mut n: CK_ULONG = 0;
                let _ = call!(lib, C_GetSlotList, CK_TRUE, ptr::null_mut(), &mut n);
                let mut info = CK_SLOT_INFO::default();
                let _ = call!(lib, C_GetSlotInfo, 0x11, &mut info);
                let mut h = 0;
                let _ = call!(
                    lib,
                    C_OpenSession,
                    0x11,
                    CKF_SERIAL_SESSION,
                    ptr::null_mut(),
                    None,
                    &mut h
                );
            }
            let _ = lib.finalize();
            0
        }
    };

    let ours = in_child(host(Lib::ours()));
    assert!(
        libc::WIFEXITED(ours) && libc::WEXITSTATUS(ours) == 0,
        "p11fwd-client: host status {ours:#x} (signal {})",
        libc::WTERMSIG(ours)
    );
    // The stock client in the same situation dies of SIGPIPE (rpc §8): the test can tell.
    let stock = in_child(host(Lib::stock_client()));
    assert!(
        libc::WIFSIGNALED(stock) && libc::WTERMSIG(stock) == libc::SIGPIPE,
        "expected p11-kit-client.so to die of SIGPIPE, status {stock:#x}"
    );
    set_env("P11FWD_TIMEOUT", None);
    drop(server);
}

#[test]
fn a_blocking_slot_event_wait_holds_no_lock_and_ends_at_finalize() {
    let _g = lock();
    let dir = tempfile::tempdir().unwrap();
    set_env(
        "P11FWD_SERVER_ADDRESS",
        Some(&format!("unix:path={}/nobody.sock", dir.path().display())),
    );
    let lib = Lib::ours();
    assert_eq!(lib.init(), CKR_OK);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let mut slot = 0;
            call!(lib, C_WaitForSlotEvent, 0, &mut slot, ptr::null_mut())
        });
        std::thread::sleep(Duration::from_millis(300));
        // Other calls go on while a thread waits.
        let t = Instant::now();
        assert_eq!(lib.slots().unwrap(), Vec::<CK_SLOT_ID>::new());
        // (Blocked behind the wait, it would never return; the bound only keeps a CI failure
        // from taking forever.)
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(!waiter.is_finished());
        assert_eq!(lib.finalize(), CKR_OK);
        let t = Instant::now();
        assert_eq!(waiter.join().unwrap(), CKR_CRYPTOKI_NOT_INITIALIZED);
        assert!(t.elapsed() < Duration::from_secs(2));
    });
}
