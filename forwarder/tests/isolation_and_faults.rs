//! Isolation between connections, faults (dead clients, garbage), and load, through
//! `p11fwd server` with wire's typed client.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::slow::{Fake, wait_until};
use common::{Fwd, FwdExt, assert_no_module_sessions, connect, find, find_one, rv_of, session};
use p11fwd_tests::{Key, P11KIT_CLIENT_MODULE, TestToken, require_tool};
use p11fwd_wire::client::{Client, OutCap};
use p11fwd_wire::consts::*;
use p11fwd_wire::value::{Attribute, Mechanism};

fn pin(t: &TestToken) -> Option<&[u8]> {
    Some(t.user_pin().as_bytes())
}

#[test]
fn handles_of_another_connection_are_rejected() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::start(&token);
    let a = fwd.client(2);
    let b = fwd.client(2);
    let sa = session(&a);
    let sa2 = session(&a);
    let sb = session(&b);
    assert_eq!(
        (sa, sa2, sb),
        (0x11, 0x12, 0x11),
        "virtual session handles like the proxy's"
    );
    // B never opened 0x12.
    assert_eq!(rv_of(b.get_session_info(sa2)), CKR_SESSION_HANDLE_INVALID);
    a.login(sa, CKU_USER, pin(&token)).unwrap();
    b.login(sb, CKU_USER, pin(&token)).unwrap();
    let key_a = find_one(&a, sa, "ec-p256", CKO_PRIVATE_KEY);
    let pub_a = find_one(&a, sa, "ec-p256", CKO_PUBLIC_KEY);
    // B has not obtained these handles: they mean nothing to it.
    assert_eq!(
        rv_of(b.sign_init(sb, Some(Mechanism::new(CKM_ECDSA)), key_a)),
        CKR_KEY_HANDLE_INVALID
    );
    assert_eq!(
        rv_of(b.get_attribute_value(sb, pub_a, vec![])),
        CKR_OBJECT_HANDLE_INVALID
    );
    assert_eq!(
        rv_of(b.destroy_object(sb, pub_a)),
        CKR_OBJECT_HANDLE_INVALID
    );
    // Object handles are stable within a connection.
    assert_eq!(find_one(&a, sa2, "ec-p256", CKO_PRIVATE_KEY), key_a);
    // Session objects of A are invisible to B.
    let data = a
        .create_object(
            sa,
            vec![
                Attribute::ulong(CKA_CLASS, CKO_DATA),
                Attribute::bool(CKA_TOKEN, false),
                Attribute::bytes(CKA_LABEL, b"a-only".to_vec()),
                Attribute::bytes(CKA_VALUE, b"secret of A".to_vec()),
            ],
        )
        .unwrap();
    assert_eq!(find(&a, sa2, "a-only", CKO_DATA), vec![data]);
    assert!(find(&b, sb, "a-only", CKO_DATA).is_empty());
}

#[test]
fn private_objects_need_this_connections_login() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::start(&token);
    let a = fwd.client(2);
    let b = fwd.client(0);
    let sa = session(&a);
    let sb = session(&b);
    a.login(sa, CKU_USER, pin(&token)).unwrap();
    assert_eq!(a.get_session_info(sa).unwrap().state, CKS_RW_USER_FUNCTIONS);
    // The module is logged in, but B is not.
    assert_eq!(b.get_session_info(sb).unwrap().state, CKS_RW_PUBLIC_SESSION);
    assert!(find(&b, sb, "ec-p256", CKO_PRIVATE_KEY).is_empty());
    assert_eq!(find(&b, sb, "ec-p256", CKO_PUBLIC_KEY).len(), 1);
    // B cannot create private objects through A's login either.
    let r = b.create_object(
        sb,
        vec![
            Attribute::ulong(CKA_CLASS, CKO_DATA),
            Attribute::bool(CKA_TOKEN, false),
            Attribute::bool(CKA_PRIVATE, true),
            Attribute::bytes(CKA_LABEL, b"sneaky".to_vec()),
        ],
    );
    assert_eq!(rv_of(r), CKR_USER_NOT_LOGGED_IN);
    assert!(find(&a, sa, "sneaky", CKO_DATA).is_empty());
    // A handle obtained while logged in dies with the login.
    let key = find_one(&a, sa, "ec-p256", CKO_PRIVATE_KEY);
    a.logout(sa).unwrap();
    assert_eq!(
        rv_of(a.sign_init(sa, Some(Mechanism::new(CKM_ECDSA)), key)),
        CKR_KEY_HANDLE_INVALID
    );
}

#[test]
fn logins_are_per_connection() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::start(&token);
    let a = fwd.client(2);
    let b = fwd.client(2);
    let sa = session(&a);
    let sb = session(&b);
    a.login(sa, CKU_USER, pin(&token)).unwrap();
    // A wrong PIN while A holds the login: refused without touching the token.
    for _ in 0..20 {
        assert_eq!(
            rv_of(b.login(sb, CKU_USER, Some(b"999999"))),
            CKR_PIN_INCORRECT
        );
    }
    assert_eq!(
        rv_of(b.login(sb, CKU_SO, Some(b"12345678"))),
        CKR_USER_ANOTHER_ALREADY_LOGGED_IN
    );
    b.login(sb, CKU_USER, pin(&token)).unwrap();
    assert_eq!(
        rv_of(b.login(sb, CKU_USER, pin(&token))),
        CKR_USER_ALREADY_LOGGED_IN
    );
    // A logs out: B stays logged in and can sign.
    a.logout(sa).unwrap();
    assert_eq!(a.get_session_info(sa).unwrap().state, CKS_RW_PUBLIC_SESSION);
    let key = find_one(&b, sb, "ec-p256", CKO_PRIVATE_KEY);
    b.sign_init(sb, Some(Mechanism::new(CKM_ECDSA)), key)
        .unwrap();
    let sig = b
        .sign(sb, &[7; 32], OutCap::Buffer(128))
        .unwrap()
        .into_data(p11fwd_wire::CallId::Sign)
        .unwrap();
    assert_eq!(sig.len(), 64);
    // B disconnects: the module logs out, and a new login checks the PIN on the token again.
    drop(b);
    let c = fwd.client(2);
    let sc = session(&c);
    assert_eq!(
        rv_of(c.login(sc, CKU_USER, Some(b"999999"))),
        CKR_PIN_INCORRECT
    );
    c.login(sc, CKU_USER, pin(&token)).unwrap();
    // SetPIN through us updates the PIN other connections must present.
    c.set_pin(sc, pin(&token), Some(b"654321")).unwrap();
    let d = fwd.client(2);
    let sd = session(&d);
    assert_eq!(rv_of(d.login(sd, CKU_USER, pin(&token))), CKR_PIN_INCORRECT);
    d.login(sd, CKU_USER, Some(b"654321")).unwrap();
}

#[test]
fn a_dead_client_leaves_nothing_open() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::start(&token);
    let watcher = fwd.client(2);
    let sw = session(&watcher);
    {
        let victim = fwd.client(2);
        let s1 = session(&victim);
        let s2 = session(&victim);
        let _s3 = session(&victim);
        victim.login(s1, CKU_USER, pin(&token)).unwrap();
        let key = find_one(&victim, s1, "ec-p256", CKO_PRIVATE_KEY);
        victim
            .sign_init(s1, Some(Mechanism::new(CKM_ECDSA)), key)
            .unwrap();
        victim.find_objects_init(s2, vec![]).unwrap();
        // Mid-operation (a signature and a search are active), the client goes away.
        victim.connection().close();
    }
    // Its login is gone (once the server has cleaned up): the watcher's session is public.
    let mut state = watcher.get_session_info(sw).unwrap().state;
    for _ in 0..500 {
        if state == CKS_RW_PUBLIC_SESSION {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        state = watcher.get_session_info(sw).unwrap().state;
    }
    assert_eq!(state, CKS_RW_PUBLIC_SESSION);
    let label = p11fwd_wire::info::padded::<32>(token.label());
    assert_eq!(
        rv_of(watcher.init_token(0x11, Some(token.so_pin().as_bytes()), &label)),
        CKR_SESSION_EXISTS,
        "the module must refuse C_InitToken while the watcher's session is open"
    );
    watcher.close_session(sw).unwrap();
    // SoftHSM does not report ulSessionCount (CK_UNAVAILABLE_INFORMATION), but C_InitToken
    // fails with CKR_SESSION_EXISTS while any session of the module is open: its success proves
    // the module's session count is back to zero.
    assert_no_module_sessions(&watcher, &token);
}

/// SoftHSM refuses C_InitToken while any of its sessions is open: `c` (which has none itself)
/// proves someone else's are.
#[track_caller]
fn assert_module_sessions_open(c: &Client, token: &TestToken, whose: &str) {
    let label = p11fwd_wire::info::padded::<32>(token.label());
    assert_eq!(
        rv_of(c.init_token(0x11, Some(token.so_pin().as_bytes()), &label)),
        CKR_SESSION_EXISTS,
        "{whose} sessions must be open"
    );
}

fn raw_connect(fwd: &Fwd) -> UnixStream {
    let mut s = UnixStream::connect(fwd.socket_path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&[2]).unwrap();
    let mut v = [0u8; 1];
    s.read_exact(&mut v).unwrap();
    assert_eq!(v[0], 2);
    s
}

fn frame(code: u32, body: &[u8]) -> Vec<u8> {
    p11fwd_wire::frame::encode(code, b"client", body)
}

/// The server closed `s` without replying. Closing with our junk still unread in its receive
/// buffer makes the kernel send a reset instead of an EOF: both mean closed.
#[track_caller]
fn assert_closed(s: &mut UnixStream) {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("connection not closed: {other:?}, {} bytes", rest.len()),
    }
}

#[test]
fn garbage_closes_only_that_connection() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::start(&token);
    let good = fwd.client(2);
    let sg = session(&good);

    // An unknown call id gets CKR_FUNCTION_NOT_SUPPORTED and the connection stays.
    let mut s = raw_connect(&fwd);
    let mut body = 200u32.to_be_bytes().to_vec();
    body.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&frame(0x77, &body)).unwrap();
    let mut reply = [0u8; 12 + 17];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..4], &0x77u32.to_be_bytes());
    assert_eq!(&reply[12..16], &[0, 0, 0, 0], "ERROR frame");
    assert_eq!(
        u64::from_be_bytes(reply[21..29].try_into().unwrap()),
        CKR_FUNCTION_NOT_SUPPORTED
    );
    // A signature mismatch closes it without a reply.
    let mut body = 3u32.to_be_bytes().to_vec();
    body.extend_from_slice(&1u32.to_be_bytes());
    body.push(b'u');
    s.write_all(&frame(0x78, &body)).unwrap();
    assert_closed(&mut s);

    // Random bytes, an over-long header, a truncated argument: each closes its connection.
    for junk in [
        b"\xde\xad\xbe\xef garbage garbage garbage".to_vec(),
        [0, 0, 0, 1, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff].to_vec(),
        frame(0x10, &[0, 0, 0, 13, 0, 0, 0, 1, b'u', 0, 0]),
    ] {
        let mut s = raw_connect(&fwd);
        s.write_all(&junk).unwrap();
        assert_closed(&mut s);
    }
    // The server and the other connection are fine, and the log says why each one was closed.
    assert!(good.get_session_info(sg).is_ok());
    assert_eq!(good.slots(true).unwrap(), vec![0x11]);
    let log = fwd.stderr();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("closing the connection"))
        .count();
    assert_eq!(warnings, 4, "{log}");
}

#[test]
fn calls_before_initialize_and_after_finalize() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::start(&token);
    let c = Client::connect(fwd.socket_path(), Default::default()).unwrap();
    assert_eq!(rv_of(c.get_info()), CKR_CRYPTOKI_NOT_INITIALIZED);
    c.initialize(None).unwrap();
    c.initialize(None).unwrap();
    let info = c.get_info().unwrap();
    assert_eq!(p11fwd_wire::info::unpad(&info.manufacturer_id), "p11fwd");
    assert_eq!(
        (info.cryptoki_version.major, info.cryptoki_version.minor),
        (3, 0)
    );
    let s = session(&c);
    c.finalize().unwrap();
    assert_eq!(rv_of(c.get_session_info(s)), CKR_CRYPTOKI_NOT_INITIALIZED);
    let v0 = fwd.client(0);
    let info = v0.get_info().unwrap();
    assert_eq!(
        (info.cryptoki_version.major, info.cryptoki_version.minor),
        (2, 40)
    );
    // C_Finalize closed the session in the module.
    assert_no_module_sessions(&v0, &token);
}

#[test]
fn sixty_four_clients_sign_five_hundred_times_each() {
    const CLIENTS: usize = 64;
    const SIGNATURES: usize = 500;
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::start(&token);
    let socket = fwd.socket_path().to_path_buf();
    let user_pin = token.user_pin().to_owned();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let socket = socket.clone();
            let user_pin = user_pin.clone();
            std::thread::spawn(move || {
                let c = connect(&socket, if i % 2 == 0 { 2 } else { 0 });
                let s = session(&c);
                c.login(s, CKU_USER, Some(user_pin.as_bytes())).unwrap();
                let key = find_one(&c, s, "ec-p256", CKO_PRIVATE_KEY);
                let d = c.dialect();
                let mut errors = 0;
                for n in 0..SIGNATURES {
                    // SignInit and Sign pipelined, as one round trip.
                    let r = c.connection().call_batch(&[
                        p11fwd_wire::client::req::init_with_key(p11fwd_wire::CallId::SignInit, s, Some(Mechanism::new(CKM_ECDSA)), key),
                        p11fwd_wire::client::req::data_in_out(d, p11fwd_wire::CallId::Sign, s, &[(n % 251) as u8; 32], OutCap::Buffer(72)),
                    ]);
                    let ok = r.len() == 2
                        && r[0].is_ok()
                        && matches!(r[1].as_ref().map(|a| p11fwd_wire::client::parse::output(a.clone())), Ok(Ok(p11fwd_wire::client::Output::Data(sig))) if sig.len() == 64);
                    if !ok {
                        errors += 1;
                    }
                }
                errors
            })
        })
        .collect();
    let errors: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(errors, 0, "{errors} failed signatures\n{}", fwd.log());
}

/// The forwarder's log filter with the connection-closed messages (logged once a connection's
/// cleanup is done).
const LOG_CLOSES: &str = "info,p11fwd::call=debug,p11fwd_forwarder::conn=debug";

/// Waits until the server has cleaned up after `n` connections in all.
#[track_caller]
fn wait_closed(fwd: &Fwd, n: usize) {
    wait_until(&format!("{n} connections to be cleaned up"), || {
        fwd.stderr().matches("connection closed conn=").count() >= n
    });
}

/// A connection with a session logged in, and its handle of the `ec-p256` private key.
fn logged_in_with_key(fwd: &Fwd, token: &TestToken) -> (Client, u64, u64) {
    let c = fwd.client(2);
    let s = session(&c);
    c.login(s, CKU_USER, pin(token)).unwrap();
    let key = find_one(&c, s, "ec-p256", CKO_PRIVATE_KEY);
    (c, s, key)
}

fn ecdsa(c: &Client, s: u64, key: u64) -> Vec<u8> {
    c.sign_init(s, Some(Mechanism::new(CKM_ECDSA)), key)
        .unwrap();
    c.sign(s, &[7; 32], OutCap::Buffer(128))
        .unwrap()
        .into_data(p11fwd_wire::CallId::Sign)
        .unwrap()
}

#[test]
fn a_disconnect_leaves_other_logins_alone() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::builder(&token).log_filter(Some(LOG_CLOSES)).start();
    let (a, sa, key_a) = logged_in_with_key(&fwd, &token);
    let (b, sb, key_b) = logged_in_with_key(&fwd, &token);
    a.sign_init(sa, Some(Mechanism::new(CKM_ECDSA)), key_a)
        .unwrap();
    // A goes away logged in, mid-operation.
    a.connection().close();
    drop(a);
    wait_closed(&fwd, 1);
    // B is still logged in and signs with the handle it had.
    assert_eq!(b.get_session_info(sb).unwrap().state, CKS_RW_USER_FUNCTIONS);
    assert_eq!(ecdsa(&b, sb, key_b).len(), 64);
    assert_eq!(find(&b, sb, "ec-p256", CKO_PRIVATE_KEY), [key_b]);
}

#[test]
fn a_logout_ends_private_handles_while_another_connection_keeps_the_login() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::start(&token);
    let (a, sa, key_a) = logged_in_with_key(&fwd, &token);
    let (b, sb, key_b) = logged_in_with_key(&fwd, &token);
    let pub_a = find_one(&a, sa, "ec-p256", CKO_PUBLIC_KEY);
    a.logout(sa).unwrap();
    // The module stays logged in for B, but A's private handle is dead for A ...
    assert_eq!(
        rv_of(a.sign_init(sa, Some(Mechanism::new(CKM_ECDSA)), key_a)),
        CKR_KEY_HANDLE_INVALID
    );
    assert_eq!(
        rv_of(a.get_attribute_value(sa, key_a, vec![])),
        CKR_OBJECT_HANDLE_INVALID
    );
    assert!(find(&a, sa, "ec-p256", CKO_PRIVATE_KEY).is_empty());
    // ... its public one is not ...
    assert_eq!(find(&a, sa, "ec-p256", CKO_PUBLIC_KEY), [pub_a]);
    // ... and B still signs.
    assert_eq!(b.get_session_info(sb).unwrap().state, CKS_RW_USER_FUNCTIONS);
    assert_eq!(ecdsa(&b, sb, key_b).len(), 64);
    // A logs in again (admitted by the PIN check, the module is logged in) and signs.
    a.login(sa, CKU_USER, pin(&token)).unwrap();
    let key_a = find_one(&a, sa, "ec-p256", CKO_PRIVATE_KEY);
    assert_eq!(ecdsa(&a, sa, key_a).len(), 64);
}

/// A connection that goes away while one of its calls is held inside the module (the fake
/// module of `common::slow`) keeps its sessions until the call returns, then closes them all.
#[test]
fn a_disconnect_during_a_call_in_the_module_closes_everything_once_it_returns() {
    let fake = Fake::build();
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = fake.serve(&token);
    let victim = std::sync::Arc::new(fwd.client(2));
    let s1 = session(&victim);
    let _s2 = session(&victim);
    victim.login(s1, CKU_USER, pin(&token)).unwrap();
    let held = {
        let victim = victim.clone();
        std::thread::spawn(move || victim.generate_random(s1, OutCap::Buffer(13)))
    };
    wait_until("the held call", || fake.in_random());
    victim.connection().close();
    let watcher = fwd.client(2);
    // The call is still inside the module: its connection's sessions are still open.
    assert_module_sessions_open(&watcher, &token, "the closed connection's");
    fake.release();
    assert!(
        held.join().unwrap().is_err(),
        "a reply on a closed connection"
    );
    assert_no_module_sessions(&watcher, &token);
}

/// A real process driving stock `p11-kit-client.so` (pkcs11-tool, logged in and waiting for the
/// data to sign on its stdin) is killed with SIGKILL: its sessions are closed.
#[test]
fn a_killed_stock_client_process_leaves_nothing_open() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::builder(&token).log_filter(Some(LOG_CLOSES)).start();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(require_tool("pkcs11-tool"))
        .args(["--module", P11KIT_CLIENT_MODULE, "--login", "--pin"])
        .arg(token.user_pin())
        .args([
            "--sign",
            "-m",
            "ECDSA",
            "--id",
            "03",
            "-i",
            "/dev/stdin",
            "-o",
        ])
        .arg(dir.path().join("sig"))
        .env("P11_KIT_SERVER_ADDRESS", fwd.address())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Logged in and the key found: pkcs11-tool now reads its input, which never comes.
    wait_until("pkcs11-tool to find its key", || {
        let log = fwd.stderr();
        log.find("call=\"C_Login\" session=Some(17) rv=CKR_OK")
            .is_some_and(|at| log[at..].contains("call=\"C_FindObjectsFinal\""))
    });
    let watcher = fwd.client(2);
    assert_module_sessions_open(&watcher, &token, "pkcs11-tool's");
    child.kill().unwrap();
    child.wait().unwrap();
    wait_closed(&fwd, 1);
    assert_no_module_sessions(&watcher, &token);
}
