//! C_WaitForSlotEvent through `p11fwd server`.
//!
//! SoftHSM 2.6.1 answers a `CKF_DONT_BLOCK` poll with CKR_NO_EVENT and a blocking wait with
//! CKR_FUNCTION_NOT_SUPPORTED, so those answers being forwarded is all it can show. Everything else runs against `tests/fixtures/fake-events.c`, a module built here with
//! `cc` that is SoftHSM with C_WaitForSlotEvent replaced: events are files the test writes
//! (`event` = "token" for the served token's slot, "other" for SoftHSM's free slot, which is not
//! served), and `in-wait` exists while a blocking wait is inside the module.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::slow::{FakeModule, wait_until};
use common::{Fwd, FwdExt, find_one, rv_of, session};
use p11fwd_tests::{Key, TestToken};
use p11fwd_wire::client::{OutCap, Output, req};
use p11fwd_wire::consts::*;
use p11fwd_wire::frame::{self, Limits};
use p11fwd_wire::{CallId, Dialect, Mechanism, Reply, Request};

/// The fake module (`fake-events.c`) and its event directory.
struct Fake(FakeModule);

impl Fake {
    fn build() -> Self {
        Self(FakeModule::build("fake-events", "P11FWD_FAKE_EVENTS"))
    }

    fn events(&self) -> PathBuf {
        self.0.files()
    }

    fn serve(&self, token: &TestToken) -> Fwd {
        self.0.serve(token)
    }

    /// Raise an event ("token" or "other") once the previous one was taken.
    fn raise(&self, what: &str) {
        let event = self.events().join("event");
        wait_until("the previous event to be taken", || !event.exists());
        let tmp = self.events().join("event.new");
        std::fs::write(&tmp, what).unwrap();
        std::fs::rename(tmp, event).unwrap();
    }

    fn taken(&self) -> bool {
        !self.events().join("event").exists()
    }

    /// Whether a blocking C_WaitForSlotEvent is inside the module.
    fn in_module_wait(&self) -> bool {
        self.events().join("in-wait").exists()
    }

    /// How many blocking C_WaitForSlotEvent calls reached the module.
    fn module_waits(&self) -> usize {
        std::fs::read_to_string(self.events().join("waits"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

/// The server's threads named `p11fwd-events`.
fn event_threads(fwd: &Fwd) -> usize {
    common::server_threads(fwd, "p11fwd-events").len()
}

/// A connection driven frame by frame, for requests left pending.
struct Raw {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Raw {
    fn open(fwd: &Fwd) -> Self {
        let mut stream = UnixStream::connect(fwd.socket_path()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(&[2]).unwrap();
        let mut v = [0u8];
        stream.read_exact(&mut v).unwrap();
        assert_eq!(v[0], 2);
        let mut raw = Self {
            stream,
            buf: Vec::new(),
        };
        raw.send(1, &req::initialize(None));
        let (code, reply) = raw.recv(CallId::Initialize);
        assert_eq!((code, reply.is_ok()), (1, true));
        raw
    }

    fn send(&mut self, code: u32, r: &Request) {
        let body = r.encode(Dialect::V2).unwrap();
        self.stream
            .write_all(&frame::encode(code, frame::CLIENT_OPTIONS, &body))
            .unwrap();
    }

    fn recv(&mut self, call: CallId) -> (u32, Reply) {
        self.recv_with(|_| call)
    }

    /// The next reply, decoded as the answer to `call_of(code)`.
    fn recv_with(&mut self, call_of: impl Fn(u32) -> CallId) -> (u32, Reply) {
        loop {
            if let Some((f, n)) = frame::parse(&self.buf, Limits::DEFAULT).unwrap() {
                self.buf.drain(..n);
                let reply = Reply::decode(&f.body, call_of(f.code), Dialect::V2, None).unwrap();
                return (f.code, reply);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

trait ReplyExt {
    fn is_ok(&self) -> bool;
}

impl ReplyExt for Reply {
    fn is_ok(&self) -> bool {
        matches!(self, Self::Ok { .. })
    }
}

fn sign_ecdsa(c: &p11fwd_wire::client::Client, s: u64, key: u64) -> usize {
    c.sign_init(s, Some(Mechanism::new(CKM_ECDSA)), key)
        .unwrap();
    match c.sign(s, &[0x5a; 32], OutCap::Buffer(256)).unwrap() {
        Output::Data(d) => d.len(),
        Output::Size(n) => panic!("size {n}"),
    }
}

#[test]
fn softhsm_answer_is_forwarded() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::start(&token);
    let c = fwd.client(2);
    assert_eq!(rv_of(c.wait_for_slot_event(CKF_DONT_BLOCK)), CKR_NO_EVENT);
    assert_eq!(rv_of(c.wait_for_slot_event(0)), CKR_FUNCTION_NOT_SUPPORTED);
    assert_eq!(rv_of(c.wait_for_slot_event(0)), CKR_FUNCTION_NOT_SUPPORTED);
    // The connection goes on, and the module's error ended the event thread.
    assert_eq!(c.slots(true).unwrap(), [0x11]);
    wait_until("the event thread to end", || event_threads(&fwd) == 0);
    // Before C_Initialize, as every call.
    let raw = fwd.client(2);
    raw.finalize().unwrap();
    assert_eq!(
        rv_of(raw.wait_for_slot_event(0)),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
}

#[test]
fn a_pending_wait_blocks_nothing_and_gets_its_event() {
    let fake = Fake::build();
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = fake.serve(&token);
    let a = fwd.client(2);
    let s = session(&a);
    a.login(s, CKU_USER, Some(token.user_pin().as_bytes()))
        .unwrap();
    let key = find_one(&a, s, "ec-p256", CKO_PRIVATE_KEY);
    assert_eq!(rv_of(a.wait_for_slot_event(CKF_DONT_BLOCK)), CKR_NO_EVENT);
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| a.wait_for_slot_event(0));
        wait_until("the module wait", || fake.in_module_wait());
        // The same connection signs while its wait is pending, and so does another one.
        for _ in 0..20 {
            assert_eq!(sign_ecdsa(&a, s, key), 64);
        }
        let b = fwd.client(2);
        let sb = session(&b);
        b.login(sb, CKU_USER, Some(token.user_pin().as_bytes()))
            .unwrap();
        let kb = find_one(&b, sb, "ec-p256", CKO_PRIVATE_KEY);
        assert_eq!(sign_ecdsa(&b, sb, kb), 64);
        // An event on a slot we do not serve is not the connection's.
        fake.raise("other");
        wait_until("the event to be taken", || fake.taken());
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiter.is_finished(), "woken by another slot's event");
        fake.raise("token");
        wait_until("the waiter", || waiter.is_finished());
        assert_eq!(waiter.join().unwrap().unwrap(), 0x11);
    });
    // Nobody waits any more: the event thread goes with the next module return.
    fake.raise("other");
    wait_until("the event thread to end", || event_threads(&fwd) == 0);
    assert_eq!(rv_of(a.wait_for_slot_event(CKF_DONT_BLOCK)), CKR_NO_EVENT);
}

#[test]
fn events_reach_every_waiting_connection_and_are_queued() {
    let fake = Fake::build();
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = fake.serve(&token);
    let (a, b, c, d) = (fwd.client(2), fwd.client(2), fwd.client(2), fwd.client(0));
    // c subscribes with a poll; d never asked before the event.
    assert_eq!(rv_of(c.wait_for_slot_event(CKF_DONT_BLOCK)), CKR_NO_EVENT);
    std::thread::scope(|scope| {
        let wa = scope.spawn(|| a.wait_for_slot_event(0));
        let wb = scope.spawn(|| b.wait_for_slot_event(0));
        wait_until("the module wait", || fake.in_module_wait());
        std::thread::sleep(Duration::from_millis(200));
        // One thread waits in the module for both connections.
        assert_eq!(fake.module_waits(), 1);
        assert_eq!(event_threads(&fwd), 1);
        fake.raise("token");
        assert_eq!(wa.join().unwrap().unwrap(), 0x11);
        assert_eq!(wb.join().unwrap().unwrap(), 0x11);
    });
    assert_eq!(c.wait_for_slot_event(CKF_DONT_BLOCK).unwrap(), 0x11);
    assert_eq!(rv_of(c.wait_for_slot_event(CKF_DONT_BLOCK)), CKR_NO_EVENT);
    assert_eq!(rv_of(d.wait_for_slot_event(CKF_DONT_BLOCK)), CKR_NO_EVENT);
    // With nobody pumping, a poll fetches the module's event and queues it for every subscriber.
    fake.raise("token");
    wait_until("the event thread to end", || event_threads(&fwd) == 0);
    assert_eq!(d.wait_for_slot_event(CKF_DONT_BLOCK).unwrap(), 0x11);
    assert_eq!(c.wait_for_slot_event(CKF_DONT_BLOCK).unwrap(), 0x11);
    assert_eq!(a.wait_for_slot_event(CKF_DONT_BLOCK).unwrap(), 0x11);
    // And a blocking wait returns a queued event at once.
    assert_eq!(b.wait_for_slot_event(0).unwrap(), 0x11);
}

#[test]
fn finalize_and_disconnect_end_pending_waits() {
    let fake = Fake::build();
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = fake.serve(&token);

    // C_Finalize on the waiting connection: the wait returns CKR_CRYPTOKI_NOT_INITIALIZED.
    let a = fwd.client(2);
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| a.wait_for_slot_event(0));
        wait_until("the module wait", || fake.in_module_wait());
        let start = Instant::now();
        a.finalize().unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(rv_of(waiter.join().unwrap()), CKR_CRYPTOKI_NOT_INITIALIZED);
    });

    // A client that disconnects with waits pending leaves no thread behind once the module
    // returns.
    let mut raw = Raw::open(&fwd);
    for code in 2..5 {
        raw.send(code, &req::wait_for_slot_event(0));
    }
    wait_until("the module wait", || fake.in_module_wait());
    assert_eq!(event_threads(&fwd), 1);
    drop(raw);
    std::thread::sleep(Duration::from_millis(100));
    fake.raise("other");
    wait_until("the event thread to end", || event_threads(&fwd) == 0);

    // Per connection at most 8 blocking waits are pending; C_Finalize answers them all.
    let mut raw = Raw::open(&fwd);
    for code in 2..10 {
        raw.send(code, &req::wait_for_slot_event(0));
    }
    raw.send(10, &req::wait_for_slot_event(0));
    assert_eq!(
        raw.recv(CallId::WaitForSlotEvent),
        (10, Reply::Error(p11fwd_wire::Rv(CKR_FUNCTION_FAILED)))
    );
    raw.send(11, &req::get_info());
    assert!(raw.recv(CallId::GetInfo).1.is_ok());
    raw.send(12, &req::finalize());
    let mut codes = Vec::new();
    for _ in 0..9 {
        let (code, reply) = raw.recv_with(|code| {
            if code == 12 {
                CallId::Finalize
            } else {
                CallId::WaitForSlotEvent
            }
        });
        if code == 12 {
            assert!(reply.is_ok(), "{reply:?}");
        } else {
            assert_eq!(
                reply,
                Reply::Error(p11fwd_wire::Rv(CKR_CRYPTOKI_NOT_INITIALIZED))
            );
        }
        codes.push(code);
    }
    codes.sort();
    assert_eq!(codes, [2, 3, 4, 5, 6, 7, 8, 9, 12]);
}

#[test]
fn shutdown_ends_a_module_wait() {
    let fake = Fake::build();
    let token = TestToken::builder().with(Key::EcP256).build();
    let mut fwd = fake.serve(&token);
    let mut raw = Raw::open(&fwd);
    raw.send(2, &req::wait_for_slot_event(0));
    wait_until("the module wait", || fake.in_module_wait());
    fwd.signal(rustix::process::Signal::TERM);
    let status = fwd.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        fwd.log()
    );
    // The module's wait returned: C_Finalize reached it.
    assert!(!fake.in_module_wait());
    drop(raw);
}
