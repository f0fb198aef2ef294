//! Concurrency within one connection: lanes (a session's requests in arrival order), out-of-order
//! replies, requests that arrive while the connection's thread is inside the module (the
//! watcher hands them to the pool), the in-flight cap, a PIN-pad login, barriers and shutdown
//! with a call running, many threads sharing one connection, and frames in any chunking.
//!
//! The slow calls come from `tests/fixtures/fake-slow.c` (`common::slow`), a module built here with `cc` that is
//! SoftHSM with C_GenerateRandom of 13 bytes held until the test creates `release`, and
//! C_Login without a PIN (a PIN pad) held until the test writes the PIN to `pin`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::slow::{Fake, wait_until};
use common::{Fwd, FwdExt, find_one, session};
use p11fwd_tests::{Key, TestToken};
use p11fwd_wire::client::{OutCap, Output, req};
use p11fwd_wire::consts::*;
use p11fwd_wire::frame::{self, Limits};
use p11fwd_wire::{Arg, ByteArray, CallId, Dialect, Mechanism, Reply, Request};
use sha2::{Digest, Sha256};

/// A connection driven frame by frame, for requests left pending and replies out of order.
struct Raw {
    stream: UnixStream,
    buf: Vec<u8>,
    /// The call of each code sent and not answered yet.
    calls: std::collections::HashMap<u32, CallId>,
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
            calls: Default::default(),
        };
        raw.send(&[(1, req::initialize(None))]);
        assert_eq!(raw.recv_ok(), (1, vec![]));
        raw
    }

    /// Send requests in one write.
    fn send(&mut self, reqs: &[(u32, Request)]) {
        let mut bytes = Vec::new();
        for (code, r) in reqs {
            self.calls.insert(*code, r.call);
            let body = r.encode(Dialect::V2).unwrap();
            bytes.extend(frame::encode(*code, frame::CLIENT_OPTIONS, &body));
        }
        self.stream.write_all(&bytes).unwrap();
    }

    /// The next reply, or `None` if none comes within `wait`.
    fn try_recv(&mut self, wait: Duration) -> Option<(u32, Reply)> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((f, n)) = frame::parse(&self.buf, Limits::DEFAULT).unwrap() {
                self.buf.drain(..n);
                let call = self
                    .calls
                    .remove(&f.code)
                    .expect("a reply to a request sent");
                let reply = Reply::decode(&f.body, call, Dialect::V2, None).unwrap();
                return Some((f.code, reply));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("connection closed"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[track_caller]
    fn recv(&mut self) -> (u32, Reply) {
        self.try_recv(Duration::from_secs(20))
            .expect("a reply within 20 s")
    }

    #[track_caller]
    fn recv_ok(&mut self) -> (u32, Vec<Arg>) {
        match self.recv() {
            (code, Reply::Ok { args, .. }) => (code, args),
            (code, Reply::Error(rv)) => panic!("request {code}: {rv:?}"),
        }
    }

    /// The codes of the next `n` replies (all OK), in arrival order.
    #[track_caller]
    fn codes_ok(&mut self, n: usize) -> Vec<u32> {
        (0..n).map(|_| self.recv_ok().0).collect()
    }

    /// Asserts that no reply arrives for a while.
    #[track_caller]
    fn nothing_for(&mut self, wait: Duration) {
        if let Some((code, reply)) = self.try_recv(wait) {
            panic!("unexpected reply to request {code}: {reply:?}");
        }
    }

    fn slot(&mut self, code: u32) -> u64 {
        self.send(&[(code, req::get_slot_list(true, OutCap::Buffer(8)))]);
        match self.recv_ok().1.as_slice() {
            [Arg::UlongArray(p11fwd_wire::UlongArray::Data(v))] => v[0],
            other => panic!("{other:?}"),
        }
    }

    fn open_session(&mut self, code: u32, slot: u64) -> u64 {
        self.send(&[(
            code,
            req::open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION),
        )]);
        match self.recv_ok().1.as_slice() {
            [Arg::Ulong(s)] => *s,
            other => panic!("{other:?}"),
        }
    }
}

/// The C_GenerateRandom of 13 bytes the fake module holds.
fn held_random(s: u64) -> Request {
    req::data_out(Dialect::V2, CallId::GenerateRandom, s, OutCap::Buffer(13))
}

fn random_len(args: &[Arg]) -> usize {
    match args {
        [Arg::ByteArray(ByteArray::Data(d))] => d.len(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_call_inside_the_module_holds_only_its_session() {
    let fake = Fake::build();
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = fake.serve(&token);
    let mut raw = Raw::open(&fwd);
    let slot = raw.slot(2);
    let (s1, s2) = (raw.open_session(3, slot), raw.open_session(4, slot));

    // A call the connection's thread runs itself, stuck in the module.
    raw.send(&[(10, held_random(s1))]);
    wait_until("the held call", || fake.in_random());
    // Requests arriving meanwhile: another session's and a session-less one are answered...
    raw.send(&[(11, req::get_session_info(s2))]);
    assert_eq!(raw.recv_ok().0, 11);
    raw.send(&[(12, req::get_info())]);
    assert_eq!(raw.recv_ok().0, 12);
    // ... several in one write too, but not the held session's, which waits its turn.
    raw.send(&[
        (13, req::get_session_info(s1)),
        (14, req::get_session_info(s2)),
        (15, req::get_token_info(slot)),
    ]);
    let mut got = raw.codes_ok(2);
    got.sort();
    assert_eq!(got, [14, 15]);
    raw.nothing_for(Duration::from_millis(300));
    // Other connections are served as well.
    let other = fwd.client(2);
    assert_eq!(other.slots(true).unwrap(), [0x11]);
    // Released: the held call's reply, then the request queued behind it on its session.
    fake.release();
    let (code, args) = raw.recv_ok();
    assert_eq!((code, random_len(&args)), (10, 13));
    assert_eq!(raw.recv_ok().0, 13);

    // The same with everything in one write: the held call's session is run by the connection
    // thread, the rest by the pool.
    raw.send(&[
        (20, held_random(s1)),
        (21, req::get_session_info(s2)),
        (22, req::get_info()),
        (23, req::get_session_info(s1)),
        (24, req::get_session_info(s2)),
    ]);
    let mut got = raw.codes_ok(3);
    got.sort();
    assert_eq!(got, [21, 22, 24]);
    // The pool's replies may overtake the connection thread on its way into the module.
    wait_until("the held call", || fake.in_random());
    raw.nothing_for(Duration::from_millis(300));
    fake.release();
    assert_eq!(raw.codes_ok(2), [20, 23]);

    // And with the session-less request first: the pool runs the held session.
    raw.send(&[
        (30, req::get_info()),
        (31, held_random(s1)),
        (32, req::get_info()),
        (33, req::get_session_info(s1)),
    ]);
    let mut got = raw.codes_ok(2);
    got.sort();
    assert_eq!(got, [30, 32]);
    wait_until("the held call", || fake.in_random());
    raw.send(&[(34, req::get_session_info(s2))]);
    assert_eq!(raw.recv_ok().0, 34);
    fake.release();
    assert_eq!(raw.codes_ok(2), [31, 33]);
}

#[test]
fn the_in_flight_cap_holds_reading_and_resumes() {
    let fake = Fake::build();
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = fake.serve(&token);
    let mut raw = Raw::open(&fwd);
    let slot = raw.slot(2);
    let (s1, s2) = (raw.open_session(3, slot), raw.open_session(4, slot));
    raw.send(&[(1000, held_random(s1))]);
    wait_until("the held call", || fake.in_random());
    // 100 requests on another session (the cap is 64 in flight): all answered, in order, while
    // the held call stays in the module.
    let batch: Vec<(u32, Request)> = (1..=100).map(|c| (c, req::get_session_info(s2))).collect();
    raw.send(&batch);
    assert_eq!(raw.codes_ok(100), (1..=100).collect::<Vec<_>>());
    assert!(fake.in_random());
    // 100 on the held session: none before the held call's reply, then all in order.
    let batch: Vec<(u32, Request)> = (101..=200)
        .map(|c| (c, req::get_session_info(s1)))
        .collect();
    raw.send(&batch);
    raw.nothing_for(Duration::from_millis(300));
    fake.release();
    let mut want = vec![1000];
    want.extend(101..=200);
    assert_eq!(raw.codes_ok(101), want);
}

#[test]
fn a_pin_pad_login_blocks_nobody() {
    let fake = Fake::build();
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = fake.serve(&token);
    let mut raw = Raw::open(&fwd);
    let slot = raw.slot(2);
    let (s1, s2) = (raw.open_session(3, slot), raw.open_session(4, slot));
    raw.send(&[(10, req::login(s1, CKU_USER, None))]);
    wait_until("the PIN pad", || fake.in_login());
    // The connection's other session and another connection go on while the PIN is typed.
    let data = b"digest me";
    for i in 0..10u32 {
        raw.send(&[
            (
                100 + 2 * i,
                req::digest_init(s2, Some(Mechanism::new(CKM_SHA256))),
            ),
            (
                101 + 2 * i,
                req::data_in_out(Dialect::V2, CallId::Digest, s2, data, OutCap::Buffer(32)),
            ),
        ]);
        assert_eq!(raw.recv_ok().0, 100 + 2 * i);
        let (code, args) = raw.recv_ok();
        assert_eq!(code, 101 + 2 * i);
        assert_eq!(
            args,
            [Arg::ByteArray(ByteArray::Data(
                Sha256::digest(data).to_vec()
            ))]
        );
    }
    let other = fwd.client(2);
    let so = session(&other);
    assert_eq!(
        other
            .generate_random(so, OutCap::Buffer(32))
            .unwrap()
            .into_data(CallId::GenerateRandom)
            .unwrap()
            .len(),
        32
    );
    assert!(fake.in_login());
    fake.type_pin(token.user_pin());
    assert_eq!(raw.recv_ok().0, 10);
    // Logged in: the connection's sessions see the private key.
    raw.send(&[(
        20,
        req::find_objects_init(
            s2,
            vec![p11fwd_wire::Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY)],
        ),
    )]);
    assert_eq!(raw.recv_ok().0, 20);
    raw.send(&[(21, req::find_objects(s2, 8))]);
    match raw.recv_ok() {
        (21, args) => assert!(
            matches!(args.as_slice(), [Arg::UlongArray(p11fwd_wire::UlongArray::Data(v))] if v.len() == 1),
            "{args:?}"
        ),
        (code, _) => panic!("{code}"),
    }
}

#[test]
fn sigterm_lets_a_running_call_finish() {
    let fake = Fake::build();
    let token = TestToken::builder().with(Key::EcP256).build();
    let mut fwd = fake.serve(&token);
    let mut raw = Raw::open(&fwd);
    let slot = raw.slot(2);
    let s = raw.open_session(3, slot);
    raw.send(&[(10, held_random(s))]);
    wait_until("the held call", || fake.in_random());
    fwd.signal(rustix::process::Signal::TERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(fwd.alive(), "exited with a call inside the module");
    fake.release();
    let (code, args) = raw.recv_ok();
    assert_eq!((code, random_len(&args)), (10, 13));
    let status = fwd.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        fwd.log()
    );
    assert!(!fwd.socket_path().exists());
}

/// Eight threads, each with its own session, share one connection and pipeline
/// `C_DigestInit` + `C_Digest` (and `C_SignInit` + `C_Sign`): every reply is the right one.
#[test]
fn threads_share_one_connection() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::start(&token);
    let c = fwd.client(2);
    let s0 = session(&c);
    c.login(s0, CKU_USER, Some(token.user_pin().as_bytes()))
        .unwrap();
    let key = find_one(&c, s0, "ec-p256", CKO_PRIVATE_KEY);
    std::thread::scope(|scope| {
        for t in 0..8u32 {
            let c = &c;
            scope.spawn(move || {
                let s = session(c);
                for i in 0..150u32 {
                    let data = format!("thread {t} request {i}");
                    let mut reqs = vec![
                        req::digest_init(s, Some(Mechanism::new(CKM_SHA256))),
                        req::data_in_out(
                            Dialect::V2,
                            CallId::Digest,
                            s,
                            data.as_bytes(),
                            OutCap::Buffer(32),
                        ),
                    ];
                    if i % 10 == 0 {
                        reqs.push(req::get_info());
                        reqs.push(req::init_with_key(
                            CallId::SignInit,
                            s,
                            Some(Mechanism::new(CKM_ECDSA)),
                            key,
                        ));
                        reqs.push(req::data_in_out(
                            Dialect::V2,
                            CallId::Sign,
                            s,
                            &[7; 32],
                            OutCap::Buffer(64),
                        ));
                    }
                    let mut replies: Vec<Vec<Arg>> = c
                        .connection()
                        .call_batch(&reqs)
                        .into_iter()
                        .map(|r| r.unwrap_or_else(|e| panic!("thread {t} request {i}: {e}")))
                        .collect();
                    let digest =
                        p11fwd_wire::client::parse::output(replies.swap_remove(1)).unwrap();
                    assert_eq!(
                        digest,
                        Output::Data(Sha256::digest(data.as_bytes()).to_vec()),
                        "thread {t} request {i}"
                    );
                }
            });
        }
    });
}

#[test]
fn a_barrier_waits_for_a_call_inside_the_module() {
    let fake = Fake::build();
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = fake.serve(&token);
    let mut raw = Raw::open(&fwd);
    let slot = raw.slot(2);
    let (s1, s2) = (raw.open_session(3, slot), raw.open_session(4, slot));
    raw.send(&[(10, held_random(s1))]);
    wait_until("the held call", || fake.in_random());
    // C_CloseAllSessions, then requests behind it: nothing overtakes the barrier, which waits
    // for the call inside the module.
    raw.send(&[
        (11, req::close_all_sessions(slot)),
        (12, req::get_session_info(s2)),
        (13, req::get_info()),
    ]);
    raw.nothing_for(Duration::from_millis(300));
    fake.release();
    assert_eq!(raw.recv_ok().0, 10);
    assert_eq!(raw.recv_ok().0, 11);
    let mut rest = [raw.recv(), raw.recv()];
    rest.sort_by_key(|(code, _)| *code);
    assert_eq!(
        rest[0],
        (
            12,
            Reply::Error(p11fwd_wire::Rv(CKR_SESSION_HANDLE_INVALID))
        )
    );
    assert!(matches!(rest[1], (13, Reply::Ok { .. })));
    // The same with C_Finalize, sent in a later write while the call is inside the module.
    let s3 = raw.open_session(20, slot);
    raw.send(&[(21, held_random(s3))]);
    wait_until("the held call", || fake.in_random());
    raw.send(&[(22, req::get_info())]);
    assert_eq!(raw.recv_ok().0, 22);
    raw.send(&[(23, req::finalize())]);
    raw.send(&[(24, req::get_info())]);
    raw.nothing_for(Duration::from_millis(300));
    fake.release();
    assert_eq!(raw.recv_ok().0, 21);
    assert_eq!(raw.recv_ok().0, 23);
    assert_eq!(
        raw.recv(),
        (
            24,
            Reply::Error(p11fwd_wire::Rv(CKR_CRYPTOKI_NOT_INITIALIZED))
        )
    );
}

/// The version byte and the first requests in one write (what a client that does not wait for
/// the version answer sends), a frame trickled byte by byte, and a 2 MiB frame then small ones.
#[test]
fn frames_arrive_in_any_chunking() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::start(&token);
    let mut stream = UnixStream::connect(fwd.socket_path()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut bytes = vec![2u8];
    for (code, r) in [(1, req::initialize(None)), (2, req::get_info())] {
        bytes.extend(frame::encode(
            code,
            frame::CLIENT_OPTIONS,
            &r.encode(Dialect::V2).unwrap(),
        ));
    }
    stream.write_all(&bytes).unwrap();
    let mut v = [0u8];
    stream.read_exact(&mut v).unwrap();
    assert_eq!(v[0], 2);
    let mut raw = Raw {
        stream,
        buf: Vec::new(),
        calls: [(1, CallId::Initialize), (2, CallId::GetInfo)].into(),
    };
    assert_eq!(raw.codes_ok(2), [1, 2]);
    let slot = raw.slot(3);
    let s = raw.open_session(4, slot);
    // Byte by byte.
    raw.calls.insert(5, CallId::GetSessionInfo);
    let one = frame::encode(
        5,
        frame::CLIENT_OPTIONS,
        &req::get_session_info(s).encode(Dialect::V2).unwrap(),
    );
    for b in one {
        raw.stream.write_all(&[b]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(raw.recv_ok().0, 5);
    // 2 MiB in one frame, then small frames again.
    let big: Vec<u8> = (0..2 << 20).map(|i| (i % 251) as u8).collect();
    raw.send(&[
        (6, req::digest_init(s, Some(Mechanism::new(CKM_SHA256)))),
        (
            7,
            req::data_in_out(Dialect::V2, CallId::Digest, s, &big, OutCap::Buffer(32)),
        ),
        (8, req::get_session_info(s)),
    ]);
    assert_eq!(raw.recv_ok().0, 6);
    assert_eq!(
        raw.recv_ok(),
        (
            7,
            vec![Arg::ByteArray(ByteArray::Data(
                Sha256::digest(&big).to_vec()
            ))]
        )
    );
    assert_eq!(raw.recv_ok().0, 8);
    raw.send(&[(9, req::get_info())]);
    assert_eq!(raw.recv_ok().0, 9);
}

/// A connection that writes requests and never reads, until the socket takes no more: the
/// server's replies to it pile up unread.
fn flood_without_reading(fwd: &Fwd, requests: impl Fn(u32) -> Request) -> UnixStream {
    let mut stream = UnixStream::connect(fwd.socket_path()).unwrap();
    stream.write_all(&[2]).unwrap();
    let mut v = [0u8];
    stream.read_exact(&mut v).unwrap();
    let mut bytes = Vec::new();
    let body = req::initialize(None).encode(Dialect::V2).unwrap();
    bytes.extend(frame::encode(1, frame::CLIENT_OPTIONS, &body));
    for code in 2..20_000 {
        let body = requests(code).encode(Dialect::V2).unwrap();
        bytes.extend(frame::encode(code, frame::CLIENT_OPTIONS, &body));
    }
    stream.set_nonblocking(true).unwrap();
    // Until everything is written or the server has stopped reading for 300 ms.
    let mut rest = &bytes[..];
    let mut blocked = 0;
    while !rest.is_empty() && blocked < 15 {
        match stream.write(rest) {
            Ok(n) => {
                rest = &rest[n..];
                blocked = 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                blocked += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
    stream
}

/// Peers that stop reading their replies hold up only themselves: neither thousands of
/// C_WaitForSlotEvent(CKF_DONT_BLOCK) nor requests on many sessions, from eleven such peers,
/// take the shared pool's threads away from other connections (once one thread per reply
/// blocked in `send`, and 512 of them starved everyone).
#[test]
fn peers_that_stop_reading_stall_only_themselves() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let fwd = common::start(&token);
    let mut stuck = vec![flood_without_reading(&fwd, |_| {
        req::wait_for_slot_event(CKF_DONT_BLOCK)
    })];
    for _ in 0..10 {
        // Invalid sessions, each its own lane: pool jobs answering with an error.
        stuck.push(flood_without_reading(&fwd, |code| {
            req::get_session_info(u64::from(code) + 1_000)
        }));
    }
    // Another connection: a session-less request and one on a lane (run by the pool).
    let mut raw = Raw::open(&fwd);
    let slot = raw.slot(2);
    let s = raw.open_session(3, slot);
    raw.send(&[(4, req::get_info()), (5, req::get_session_info(s + 99))]);
    let mut got = vec![raw.recv().0, raw.recv().0];
    got.sort();
    assert_eq!(got, [4, 5]);
    let other = fwd.client(2);
    assert_eq!(other.slots(true).unwrap(), [0x11]);
    drop(stuck);
}

/// SIGTERM ends the server even while a peer that stopped reading has replies pending: after a
/// grace period its socket is closed both ways.
#[test]
fn sigterm_does_not_wait_for_a_peer_that_stopped_reading() {
    let token = TestToken::builder().with(Key::EcP256).build();
    let mut fwd = common::start(&token);
    let stuck = flood_without_reading(&fwd, |_| req::get_session_info(1));
    std::thread::sleep(Duration::from_millis(300));
    fwd.signal(rustix::process::Signal::TERM);
    let status = fwd.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        fwd.log()
    );
    drop(stuck);
}

/// Voluntary context switches so far of the forwarder's connection threads (`p11fwd-conn`),
/// with how many there are.
fn conn_thread_sleeps(fwd: &Fwd) -> (usize, u64) {
    let threads = common::server_threads(fwd, "p11fwd-conn");
    let sleeps = threads
        .iter()
        .map(|dir| {
            std::fs::read_to_string(dir.join("status"))
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    (threads.len(), sleeps)
}

/// The connection's thread sleeps once per request, until the request comes: not also when the
/// client reads the reply. (A Unix stream socket wakes everything on its wait queue when the
/// peer frees room in the send buffer; a thread blocked in `recv` would wake for nothing
/// there, docs/design.md "Waiting for input".) The client reads each reply a while after it
/// came and sends the next request a while after that, so that such a wake-up would be a sleep
/// of its own.
#[test]
fn the_connection_thread_sleeps_once_per_request_not_again_when_the_client_reads() {
    const CALLS: u32 = 20;
    let token = TestToken::builder().build();
    let fwd = common::start(&token);
    let mut raw = Raw::open(&fwd);
    raw.slot(2);
    let (threads, before) = conn_thread_sleeps(&fwd);
    assert_eq!(threads, 1, "one connection, one connection thread");
    for code in 0..CALLS {
        raw.send(&[(10 + code, req::get_slot_list(true, OutCap::Buffer(8)))]);
        // Long enough for the reply to be sent and the thread to wait for input again, and
        // (after the read) for a wake-up by the read to be one of its own.
        std::thread::sleep(Duration::from_millis(5));
        raw.recv_ok();
        std::thread::sleep(Duration::from_millis(5));
    }
    let slept = conn_thread_sleeps(&fwd).1 - before;
    let calls = u64::from(CALLS);
    // One per request; a little room for an unrelated sleep (a page fault, a lock).
    assert!(
        slept <= calls + calls / 4,
        "{slept} sleeps for {calls} requests"
    );
}
