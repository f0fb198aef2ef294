//! The blocking transport against scripted servers: out-of-order replies, replies nobody asked
//! for, silence, early close and hostile lengths (rpc §2.3, §12 client rules 5 and 6).
#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use p11fwd_wire::client::{Client, req};
use p11fwd_wire::frame::{self, Limits};
use p11fwd_wire::transport::blocking::{Connection, Options};
use p11fwd_wire::value::UlongArray;
use p11fwd_wire::{Arg, CallId, Dialect, Error, Reply, Request};

/// A scripted server: accepts one connection, answers the version byte with `answer`, then runs
/// `script` on the stream.
fn serve(
    answer: u8,
    script: impl FnOnce(UnixStream) + Send + 'static,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut b = [0u8];
        s.read_exact(&mut b).unwrap();
        s.write_all(&[answer]).unwrap();
        script(s);
    });
    (dir, path)
}

/// Reads request frames, keeping bytes that arrived with an earlier frame (pipelining).
#[derive(Default)]
struct Frames(Vec<u8>);

impl Frames {
    fn next(&mut self, s: &mut UnixStream) -> Option<(u32, Request)> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((f, n)) = frame::parse(&self.0, Limits::DEFAULT).unwrap() {
                self.0.drain(..n);
                return Some((f.code, Request::decode(&f.body, Dialect::V2).unwrap()));
            }
            let n = s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.0.extend_from_slice(&chunk[..n]);
        }
    }
}

fn read_frame(s: &mut UnixStream) -> Option<(u32, Request)> {
    Frames::default().next(s)
}

fn reply(s: &mut UnixStream, code: u32, call: CallId, args: Vec<Arg>) {
    let body = Reply::Ok { call, args }.encode(Dialect::V2, None).unwrap();
    s.write_all(&frame::encode(code, &[], &body)).unwrap();
}

fn slot_list_reply(s: &mut UnixStream, code: u32, slot: u64) {
    reply(
        s,
        code,
        CallId::GetSlotList,
        vec![Arg::UlongArray(UlongArray::Data(vec![slot]))],
    );
}

fn opts(timeout_ms: u64) -> Options {
    Options {
        timeout: Duration::from_millis(timeout_ms),
        ..Options::default()
    }
}

#[test]
fn pipelined_replies_in_reverse_order_reach_their_requests() {
    let (_d, path) = serve(2, |mut s| {
        let mut frames = Frames::default();
        let mut pending = Vec::new();
        for _ in 0..3 {
            pending.push(frames.next(&mut s).unwrap());
        }
        for (i, (code, _)) in pending.iter().enumerate().rev() {
            slot_list_reply(&mut s, *code, 0x100 + i as u64);
        }
    });
    let conn = Connection::connect(&path, opts(5000)).unwrap();
    assert_eq!(conn.dialect(), Dialect::V2);
    let reqs: Vec<_> = (0..3)
        .map(|_| req::get_slot_list(true, p11fwd_wire::client::OutCap::Buffer(4)))
        .collect();
    let results = conn.call_batch(&reqs);
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(
            r.unwrap(),
            vec![Arg::UlongArray(UlongArray::Data(vec![0x100 + i as u64]))]
        );
    }
}

#[test]
fn threads_get_their_own_replies_when_the_server_answers_out_of_order() {
    let (_d, path) = serve(2, |mut s| {
        // Collect 8 requests from 8 threads, answer them last-in first-out, echoing the slot
        // each asked about so the test can check the pairing.
        let mut frames = Frames::default();
        let mut pending = Vec::new();
        for _ in 0..8 {
            pending.push(frames.next(&mut s).unwrap());
        }
        while let Some((code, r)) = pending.pop() {
            let Arg::Ulong(slot) = r.args[0] else {
                panic!()
            };
            let body = Reply::Ok {
                call: CallId::GetMechanismList,
                args: vec![Arg::UlongArray(UlongArray::Data(vec![slot * 2]))],
            }
            .encode(Dialect::V2, None)
            .unwrap();
            s.write_all(&frame::encode(code, &[], &body)).unwrap();
        }
    });
    let client = Arc::new(Client::connect(&path, opts(5000)).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|i| {
            let c = client.clone();
            std::thread::spawn(move || {
                let out = c
                    .get_mechanism_list(i, p11fwd_wire::client::OutCap::Buffer(4))
                    .unwrap();
                assert_eq!(out, p11fwd_wire::client::UlongOutput::Data(vec![i * 2]));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_reply_nobody_asked_for_does_not_hang_the_client() {
    let (_d, path) = serve(0, |mut s| {
        let (code, _) = read_frame(&mut s).unwrap();
        slot_list_reply(&mut s, 0xdead_beef, 1); // stock clients wait forever after this
        slot_list_reply(&mut s, code, 7);
    });
    let client = Client::connect(&path, opts(5000)).unwrap();
    assert_eq!(client.dialect(), Dialect::V0);
    assert_eq!(
        client
            .get_slot_list(true, p11fwd_wire::client::OutCap::Buffer(4))
            .unwrap(),
        p11fwd_wire::client::UlongOutput::Data(vec![7])
    );
}

#[test]
fn a_silent_server_times_out_and_breaks_the_connection() {
    let (_d, path) = serve(2, |mut s| {
        let _ = read_frame(&mut s);
        std::thread::sleep(Duration::from_secs(3));
    });
    let client = Client::connect(&path, opts(1000)).unwrap();
    let t = Instant::now();
    let err = client.get_info().unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(client.connection().is_broken());
    // Later calls fail fast, with a device error for PKCS#11 callers.
    let t = Instant::now();
    assert_eq!(
        client.get_info().unwrap_err().rv().0,
        p11fwd_wire::consts::CKR_DEVICE_ERROR
    );
    // Without failing fast it would wait for the 1 s timeout again.
    assert!(t.elapsed() < Duration::from_millis(500));
}

#[test]
fn a_server_that_dies_mid_frame_is_an_error_not_a_hang() {
    let (_d, path) = serve(2, |mut s| {
        let (code, _) = read_frame(&mut s).unwrap();
        s.write_all(&code.to_be_bytes()).unwrap();
        s.write_all(&[0, 0, 0, 0, 0, 0, 0x10]).unwrap(); // header cut short, then EOF
    });
    let client = Client::connect(&path, opts(5000)).unwrap();
    let err = client.get_info().unwrap_err();
    assert!(matches!(err, Error::Closed), "{err:?}");
    // Writing to the dead peer is an error too (MSG_NOSIGNAL: no SIGPIPE).
    assert!(client.get_info().is_err());
}

#[test]
fn hostile_lengths_are_refused_before_allocating() {
    let (_d, path) = serve(2, |mut s| {
        let (code, _) = read_frame(&mut s).unwrap();
        let mut h = code.to_be_bytes().to_vec();
        h.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xf0]);
        s.write_all(&h).unwrap();
        std::thread::sleep(Duration::from_secs(1));
    });
    let client = Client::connect(&path, opts(5000)).unwrap();
    let err = client.get_info().unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
}

#[test]
fn a_version_answer_above_the_offer_is_clamped() {
    // Stock clients accept any answer (rpc §2.2); we never use more than we offered.
    let (_d, path) = serve(7, |_| std::thread::sleep(Duration::from_millis(200)));
    let conn = Connection::connect(&path, opts(5000)).unwrap();
    assert_eq!(conn.dialect(), Dialect::V2);
}

/// The deadline is for the whole call, not for each `recv`: a server that trickles its reply
/// one byte every 100 ms (10 s for this reply) does not stretch a 1 s call.
#[test]
fn a_trickled_reply_times_out_at_the_call_deadline() {
    let (_d, path) = serve(2, |mut s| {
        let (code, _) = read_frame(&mut s).unwrap();
        let body = Reply::Ok {
            call: CallId::GetSlotList,
            args: vec![Arg::UlongArray(UlongArray::Data(vec![7; 10]))],
        }
        .encode(Dialect::V2, None)
        .unwrap();
        let frame = frame::encode(code, &[], &body);
        assert!(frame.len() >= 100, "{} bytes", frame.len());
        for b in frame {
            if s.write_all(&[b]).is_err() {
                return; // the client gave up and closed: what we want
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let client = Client::connect(&path, opts(1000)).unwrap();
    let err = client
        .get_slot_list(true, p11fwd_wire::client::OutCap::Buffer(16))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    assert!(client.connection().is_broken());
    assert!(client.get_info().is_err());
}

/// A listener that accepts connections and reads nothing until the test ends (`hold` dropped).
fn mute_server() -> (tempfile::TempDir, PathBuf, std::sync::mpsc::Sender<()>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (hold, released) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut conns = Vec::new();
        for s in listener.incoming() {
            conns.push(s);
            if conns.len() == 2 {
                break;
            }
        }
        let _ = released.recv();
    });
    (dir, path, hold)
}

#[test]
fn a_server_that_never_answers_the_version_byte_times_out() {
    let (_d, path, _hold) = mute_server();
    let err = Connection::connect(&path, opts(500)).unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    let err = Connection::connect_with(&path, opts(500), &[req::get_info()]).unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
}

#[test]
fn a_server_that_stops_reading_times_out_the_write() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (_d, path) = serve(2, move |s| {
        let _ = rx.recv(); // read nothing until the test is over
        drop(s);
    });
    let client = Client::connect(&path, opts(500)).unwrap();
    // Far more than the socket buffers hold.
    let big = vec![0u8; 8 << 20];
    let err = client.seed_random(1, &big).unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    assert!(client.connection().is_broken());
    drop(tx);
}

/// A server that does not accept (stopped, or overloaded: its listen backlog is full) would
/// block `connect(2)` for ever.
#[test]
fn connecting_to_a_server_that_does_not_accept_times_out() {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let addr = SocketAddrUnix::new(&path).unwrap();
    let unix_socket = |flags| {
        rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None).unwrap()
    };
    let listener = unix_socket(SocketFlags::CLOEXEC);
    rustix::net::bind(&listener, &addr).unwrap();
    rustix::net::listen(&listener, 0).unwrap();
    // Fill the backlog with connections nobody accepts, until the kernel says it is full.
    let mut fillers = Vec::new();
    loop {
        let s = unix_socket(SocketFlags::CLOEXEC | SocketFlags::NONBLOCK);
        match rustix::net::connect(&s, &addr) {
            Ok(()) => fillers.push(s),
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => panic!("filling the backlog: {e}"),
        }
        assert!(fillers.len() < 64, "the backlog never filled");
    }
    let err = Connection::connect(&path, opts(300)).unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    drop(listener);
}

/// A module may return fewer handles than asked for before the search ends: `find_all` goes on
/// until a `C_FindObjects` comes back empty (here one handle per call, 5 in all).
#[test]
fn find_all_goes_on_until_the_module_returns_no_handle() {
    let (_d, path) = serve(2, |mut s| {
        let mut frames = Frames::default();
        let mut next = 1;
        while let Some((code, r)) = frames.next(&mut s) {
            let args = match r.call {
                CallId::FindObjectsInit => {
                    next = 1;
                    vec![]
                }
                CallId::FindObjects if next <= 5 => {
                    next += 1;
                    vec![Arg::UlongArray(UlongArray::Data(vec![next - 1]))]
                }
                CallId::FindObjects => vec![Arg::UlongArray(UlongArray::Data(vec![]))],
                CallId::FindObjectsFinal => vec![],
                other => panic!("unexpected {other}"),
            };
            reply(&mut s, code, r.call, args);
        }
    });
    let client = Client::connect(&path, opts(5000)).unwrap();
    assert_eq!(
        client.find_all(1, vec![], 4096).unwrap(),
        vec![1, 2, 3, 4, 5]
    );
}

/// This thread's voluntary context switches so far (`/proc/thread-self/status`).
fn voluntary_switches() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A call sleeps once, until its reply: not also when the server reads the request. (A Unix
/// stream socket wakes everything on its wait queue when the peer frees room in the send
/// buffer; a thread blocked in `recv` would wake for nothing there, docs/design.md "Waiting for
/// input".) The server waits a little between reading each request and answering it, so that
/// such a wake-up would be a separate sleep of its own.
#[test]
fn a_call_sleeps_once_not_again_when_the_server_reads_the_request() {
    const CALLS: u64 = 20;
    let (_d, path) = serve(2, |mut s| {
        let mut frames = Frames::default();
        while let Some((code, _)) = frames.next(&mut s) {
            std::thread::sleep(Duration::from_millis(5));
            slot_list_reply(&mut s, code, 1);
        }
    });
    let client = Client::connect(&path, opts(5000)).unwrap();
    let cap = || p11fwd_wire::client::OutCap::Buffer(4);
    client.get_slot_list(true, cap()).unwrap();
    let before = voluntary_switches();
    for _ in 0..CALLS {
        client.get_slot_list(true, cap()).unwrap();
    }
    let slept = voluntary_switches() - before;
    // One per call; a little room for an unrelated sleep (a page fault, the allocator).
    assert!(
        slept <= CALLS + CALLS / 4,
        "{slept} sleeps for {CALLS} calls"
    );
}
