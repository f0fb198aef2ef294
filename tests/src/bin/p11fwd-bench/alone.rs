//! The forwarder alone (issue 3's benchmark): connection setup time, memory per idle
//! connection, and many clients signing at once; each against `p11fwd server` and the stock
//! `p11-kit server`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// `C_Initialize` with the handshake and no `pReserved`, as frame code 0x10 with the options
/// "client" (rpc §2.3, §6 id 1); the same bytes in every protocol version.
fn initialize_frame() -> Vec<u8> {
    const HANDSHAKE: &[u8] = b"PRIVATE-GNOME-KEYRING-PKCS11-PROTOCOL-V-1";
    let mut body = Vec::new();
    body.extend_from_slice(&1u32.to_be_bytes()); // call id
    body.extend_from_slice(&5u32.to_be_bytes());
    body.extend_from_slice(b"ayyay");
    // `ay`: a validity byte, then the byte array (u32 length, bytes).
    body.push(1);
    body.extend_from_slice(&(HANDSHAKE.len() as u32).to_be_bytes());
    body.extend_from_slice(HANDSHAKE);
    body.push(0); // `y`: no pReserved
    body.push(1);
    body.extend_from_slice(&1u32.to_be_bytes());
    body.push(0); // the empty string's NUL
    let options = b"client";
    let mut frame = Vec::new();
    frame.extend_from_slice(&0x10u32.to_be_bytes());
    frame.extend_from_slice(&(options.len() as u32).to_be_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(options);
    frame.extend_from_slice(&body);
    frame
}

/// A connection that has negotiated version 0 and done its RPC `C_Initialize`, as stock
/// clients do it (version byte, its answer, then the request); with the times from `connect`
/// to the version answer and to the `C_Initialize` reply.
pub(crate) fn open_initialized(socket: &Path) -> Result<(UnixStream, Duration, Duration)> {
    let t0 = Instant::now();
    let mut s = UnixStream::connect(socket).with_context(|| format!("connect {socket:?}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(&[0])?;
    let mut version = [0u8; 1];
    s.read_exact(&mut version)?;
    let first = t0.elapsed();
    s.write_all(&initialize_frame())?;
    let mut header = [0u8; 12];
    s.read_exact(&mut header)?;
    let options = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let body = u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if options + body > 4096 {
        bail!("unexpected C_Initialize reply of {} bytes", options + body);
    }
    let mut rest = vec![0u8; options + body];
    s.read_exact(&mut rest)?;
    let ready = t0.elapsed();
    // Reply body: call id 1 (0 is an ERROR frame).
    let call = rest
        .get(options..options + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    if call != Some(1) {
        bail!("C_Initialize failed (reply call id {call:?})");
    }
    Ok((s, first, ready))
}

/// `n` sequential connections: nanoseconds from `connect` to the version answer, and to the
/// RPC `C_Initialize` reply.
pub(crate) fn setup_times(socket: &Path, n: usize) -> Result<(Vec<u64>, Vec<u64>)> {
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let mut first = Vec::with_capacity(n);
    let mut ready = Vec::with_capacity(n);
    for _ in 0..n {
        let (s, f, r) = open_initialized(socket)?;
        first.push(ns(f));
        ready.push(ns(r));
        drop(s);
    }
    Ok((first, ready))
}

/// Resident memory of a process, in KiB (`VmRSS`).
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    status_field(pid, "VmRSS:")
}

fn status_field(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix(field) {
            return Ok(v.trim().trim_end_matches("kB").trim().parse()?);
        }
    }
    bail!("{field} not in /proc/{pid}/status")
}

/// Proportional set size of a process, in KiB (shared pages divided among their users).
pub(crate) fn pss_kib(pid: u32) -> Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    for line in rollup.lines() {
        if let Some(v) = line.strip_prefix("Pss:") {
            return Ok(v.trim().trim_end_matches("kB").trim().parse()?);
        }
    }
    bail!("no Pss in /proc/{pid}/smaps_rollup")
}

/// The children of `pid` (stock `p11-kit server` forks one `p11-kit-remote` per connection).
pub(crate) fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Memory per idle connection: (KiB before, KiB after, connections, KiB per connection).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleMemory {
    pub(crate) before_kib: u64,
    pub(crate) after_kib: u64,
    pub(crate) conns: usize,
    pub(crate) per_conn_kib: f64,
}

/// Open `n` idle connections to a single-process server and compare its RSS.
pub(crate) fn idle_memory_single(socket: &Path, pid: u32, n: usize) -> Result<IdleMemory> {
    // One connection first: lazily allocated runtime state is not per connection.
    drop(open_initialized(socket)?.0);
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib(pid)?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(open_initialized(socket)?.0);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid)?;
    drop(conns);
    Ok(IdleMemory {
        before_kib: before,
        after_kib: after,
        conns: n,
        per_conn_kib: (after as f64 - before as f64) / n as f64,
    })
}

/// Open `n` idle connections to the stock server (a process per connection) and add up the
/// proportional memory of the server and its children.
pub(crate) fn idle_memory_forking(socket: &Path, pid: u32, n: usize) -> Result<IdleMemory> {
    let total = || -> Result<u64> {
        let mut sum = pss_kib(pid)?;
        for c in children(pid) {
            sum += pss_kib(c).unwrap_or(0);
        }
        Ok(sum)
    };
    std::thread::sleep(Duration::from_millis(300));
    let before = total()?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(open_initialized(socket)?.0);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = total()?;
    drop(conns);
    Ok(IdleMemory {
        before_kib: before,
        after_kib: after,
        conns: n,
        per_conn_kib: (after as f64 - before as f64) / n as f64,
    })
}

/// Raise the soft limit on open files to the hard limit (1,000 connections need them).
pub(crate) fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if let Some(max) = lim.maximum {
        lim.current = Some(max.min(65536));
        let _ = setrlimit(Resource::Nofile, lim);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Bytes of the request and the reply of one signature through the client module (`C_SignInit`
/// and `C_Sign` of ECDSA P-256 in one write, their two replies), rounded up.
pub(crate) const FLOOR_REQUEST: usize = 160;
pub(crate) const FLOOR_REPLY: usize = 128;

/// A child process (`p11fwd-bench echo-peer`) that answers every [`FLOOR_REQUEST`]-byte message
/// on a Unix socket with [`FLOOR_REPLY`] bytes, doing nothing else: a server that costs nothing.
pub(crate) struct EchoPeer {
    sock: UnixStream,
    child: std::process::Child,
}

impl EchoPeer {
    pub(crate) fn start() -> Result<Self> {
        use std::os::fd::OwnedFd;
        use std::process::{Command, Stdio};
        let (sock, peer) = UnixStream::pair()?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        let child = Command::new(std::env::current_exe()?)
            .arg("echo-peer")
            .stdin(Stdio::from(OwnedFd::from(peer.try_clone()?)))
            .stdout(Stdio::from(OwnedFd::from(peer)))
            .spawn()
            .context("start p11fwd-bench echo-peer")?;
        Ok(Self { sock, child })
    }

    /// One request → reply.
    pub(crate) fn ping(&mut self) -> Result<()> {
        let mut reply = [0u8; FLOOR_REPLY];
        self.sock.write_all(&[0x5a; FLOOR_REQUEST])?;
        self.sock.read_exact(&mut reply)?;
        Ok(())
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        let _ = self.child.wait();
    }
}

/// The floor of any remoting design on this machine: request → reply with an [`EchoPeer`], in
/// sorted nanoseconds (after a tenth as many unmeasured warm-up exchanges).
pub(crate) fn socket_floor(n: usize) -> Result<Vec<u64>> {
    let mut peer = EchoPeer::start()?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        peer.ping()?;
        if i >= n / 10 {
            samples.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
    }
    samples.sort_unstable();
    Ok(samples)
}

/// `p11fwd-bench echo-peer`: the child of an [`EchoPeer`], on stdin and stdout.
pub(crate) fn echo_peer() -> Result<()> {
    let (mut input, mut output) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut request = [0u8; FLOOR_REQUEST];
    let reply = [0xa5u8; FLOOR_REPLY];
    while input.read_exact(&mut request).is_ok() {
        output.write_all(&reply)?;
        output.flush()?;
    }
    Ok(())
}
