//! Per-request latency and server CPU of `p11fwd server` builds against stock `p11-kit server`,
//! with a raw-socket client (no client library in the way). A measurement tool, not a test.
//!
//! ```sh
//! cargo build --workspace --release && cargo build -p p11fwd-tests --bin p11fwd-test-token
//! cargo run --release -p p11fwd-forwarder --example request_latency -- 5 \
//!     new=target/release/p11fwd old=/path/to/an/older/p11fwd stock
//! ```
//!
//! Every server serves the same SoftHSM token (`rsa2048`, `ec-p256`). Per round, each server in
//! turn gets one connection (version 2, C_Initialize, a logged-in session) and:
//! - `1 req`: `C_GetSessionInfo`, request → reply, p50 of 3,000;
//! - `2 req`: two `C_GetSessionInfo` in one write → both replies, p50 of 2,000;
//! - `ecdsa`, `rsa`: `C_SignInit` + `C_Sign` in one write (ECDSA P-256 over 32 bytes, RSA-2048
//!   PKCS#1 v1.5 over a SHA-256 DigestInfo) → both replies, p50 of 2,000 / 300, and the server's
//!   CPU time per signature (`/proc/<pid>/stat` of the server and its children, which is where
//!   stock's per-connection processes run).
//!
//! The medians of the rounds' values are printed at the end. `SCALE=n` multiplies the counts.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

use p11fwd_tests::{ForwarderServer, Key, StockServer, TestToken};
use p11fwd_wire::client::req;
use p11fwd_wire::consts::*;
use p11fwd_wire::{Arg, Attribute, ByteArray, CallId, Dialect, Mechanism, Reply, Request};
use p11fwd_wire::{UlongArray, frame};

struct Client {
    s: UnixStream,
    d: Dialect,
    code: u32,
}

impl Client {
    fn connect(path: &Path) -> Self {
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(&[2]).unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        Self {
            s,
            d: Dialect::from_version(b[0]),
            code: 0,
        }
    }

    /// The wire bytes of `reqs`, each with a new code.
    fn bytes(&mut self, reqs: &[Request]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in reqs {
            self.code += 1;
            out.extend(frame::encode(
                self.code,
                frame::CLIENT_OPTIONS,
                &r.encode(self.d).unwrap(),
            ));
        }
        out
    }

    fn read_reply(&mut self) -> Vec<u8> {
        let mut h = [0u8; frame::HEADER_LEN];
        self.s.read_exact(&mut h).unwrap();
        let u = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as usize;
        let mut rest = vec![0u8; u(4) + u(8)];
        self.s.read_exact(&mut rest).unwrap();
        rest.split_off(u(4))
    }

    fn call(&mut self, r: Request) -> Vec<Arg> {
        let b = self.bytes(std::slice::from_ref(&r));
        self.s.write_all(&b).unwrap();
        let body = self.read_reply();
        match Reply::decode(&body, r.call, self.d, None).unwrap() {
            Reply::Ok { args, .. } => args,
            Reply::Error(rv) => panic!("{:?}: {rv:?}", r.call),
        }
    }

    /// Write `bytes` (`n` requests), read `n` replies; seconds.
    fn round_trip(&mut self, bytes: &[u8], n: usize) -> f64 {
        let t = Instant::now();
        self.s.write_all(bytes).unwrap();
        for _ in 0..n {
            self.read_reply();
        }
        t.elapsed().as_secs_f64()
    }
}

/// CPU time (user + system) of `pid` and its children, in ms (USER_HZ is 100).
fn cpu_ms(pid: u32) -> f64 {
    let mut ticks = 0u64;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(st) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(close) = st.rfind(')') else { continue };
        let f: Vec<&str> = st[close + 2..].split(' ').collect();
        if p == pid || f[1].parse::<u32>() == Ok(pid) {
            ticks += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
    }
    ticks as f64 * 10.0
}

fn p50(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn find_key(c: &mut Client, session: u64, label: &str) -> u64 {
    c.call(req::find_objects_init(
        session,
        vec![
            Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY),
            Attribute::bytes(CKA_LABEL, label.as_bytes().to_vec()),
        ],
    ));
    let a = c.call(req::find_objects(session, 4));
    c.call(req::find_objects_final(session));
    match a.as_slice() {
        [Arg::UlongArray(UlongArray::Data(v))] => v[0],
        other => panic!("{other:?}"),
    }
}

fn sign(s: u64, mech: u64, key: u64, data: &[u8]) -> Vec<Request> {
    vec![
        req::init_with_key(CallId::SignInit, s, Some(Mechanism::new(mech)), key),
        Request::new(
            CallId::Sign,
            vec![
                Arg::Ulong(s),
                Arg::ByteArray(ByteArray::Data(data.to_vec())),
                Arg::ByteBuffer(512),
            ],
        ),
    ]
}

/// One round against one server: [1 req µs, 2 req µs, ecdsa ms, ecdsa CPU ms, rsa ms, rsa CPU ms].
fn round(path: &Path, pid: u32, pin: &str, scale: usize) -> [f64; 6] {
    let mut c = Client::connect(path);
    c.call(req::initialize(None));
    let slot = match c
        .call(Request::new(
            CallId::GetSlotList,
            vec![Arg::Byte(1), Arg::UlongBuffer(16)],
        ))
        .as_slice()
    {
        [Arg::UlongArray(UlongArray::Data(v))] => v[0],
        other => panic!("{other:?}"),
    };
    let s = match c
        .call(req::open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION))
        .as_slice()
    {
        [Arg::Ulong(s)] => *s,
        other => panic!("{other:?}"),
    };
    c.call(req::login(s, CKU_USER, Some(pin.as_bytes())));
    let ec = find_key(&mut c, s, "ec-p256");
    let rsa = find_key(&mut c, s, "rsa2048");

    let one = c.bytes(&[req::get_session_info(s)]);
    let two = c.bytes(&[req::get_session_info(s), req::get_session_info(s)]);
    for _ in 0..200 {
        c.round_trip(&one, 1);
    }
    let mut v: Vec<f64> = (0..3000 * scale).map(|_| c.round_trip(&one, 1)).collect();
    let one_us = p50(&mut v) * 1e6;
    v = (0..2000 * scale).map(|_| c.round_trip(&two, 2)).collect();
    let two_us = p50(&mut v) * 1e6;

    let mut measure = |reqs: Vec<Request>, n: usize| {
        let b = c.bytes(&reqs);
        let cpu = cpu_ms(pid);
        let mut v: Vec<f64> = (0..n).map(|_| c.round_trip(&b, 2)).collect();
        let cpu = (cpu_ms(pid) - cpu) / n as f64;
        (p50(&mut v) * 1e3, cpu)
    };
    let (ec_ms, ec_cpu) = measure(sign(s, CKM_ECDSA, ec, &[7; 32]), 2000 * scale);
    let mut digest_info = vec![
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    digest_info.extend([9u8; 32]);
    let (rsa_ms, rsa_cpu) = measure(sign(s, CKM_RSA_PKCS, rsa, &digest_info), 300 * scale);
    [one_us, two_us, ec_ms, ec_cpu, rsa_ms, rsa_cpu]
}

fn line(label: &str, x: &[f64; 6]) -> String {
    format!(
        "{label:>8}: 1 req {:6.1} µs   2 req {:6.1} µs   ecdsa {:.3} ms (server CPU {:.3} ms)   rsa {:.3} ms (server CPU {:.3} ms)",
        x[0], x[1], x[2], x[3], x[4], x[5]
    )
}

enum Server {
    Fwd(ForwarderServer),
    Stock(StockServer),
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(rounds), true) = (args.first().and_then(|r| r.parse().ok()), args.len() > 1) else {
        eprintln!("usage: request_latency ROUNDS (LABEL=PATH-TO-p11fwd | stock)...");
        std::process::exit(2);
    };
    let scale: usize = std::env::var("SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let token = TestToken::builder()
        .with(Key::Rsa2048)
        .with(Key::EcP256)
        .build();
    let servers: Vec<(String, Server)> = args[1..]
        .iter()
        .map(|a| match a.split_once('=') {
            _ if a == "stock" => (
                "stock".to_owned(),
                Server::Stock(StockServer::start(&token)),
            ),
            Some((label, path)) => (
                label.to_owned(),
                Server::Fwd(
                    ForwarderServer::builder(&token)
                        .binary(path)
                        .log_filter(Some("warn"))
                        .start(),
                ),
            ),
            None => panic!("{a:?}: LABEL=PATH or stock"),
        })
        .collect();
    let mut results: Vec<Vec<[f64; 6]>> = vec![Vec::new(); servers.len()];
    for r in 0..rounds {
        for (i, (label, server)) in servers.iter().enumerate() {
            let (path, pid) = match server {
                Server::Fwd(f) => (f.socket_path().to_path_buf(), f.pid()),
                Server::Stock(s) => (s.socket_path().to_path_buf(), s.pid()),
            };
            let x = round(&path, pid, token.user_pin(), scale);
            eprintln!("round {r} {}", line(label, &x));
            results[i].push(x);
        }
    }
    println!("median of {rounds} rounds:");
    for (i, (label, _)) in servers.iter().enumerate() {
        let mut m = [0.0; 6];
        for (k, v) in m.iter_mut().enumerate() {
            let mut col: Vec<f64> = results[i].iter().map(|x| x[k]).collect();
            *v = p50(&mut col);
        }
        println!("{}", line(label, &m));
    }
}
