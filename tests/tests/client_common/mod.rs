//! Helpers of the `client_*` tests: `p11fwd-client.so` (the debug `libp11fwd_client.so`)
//! driven by real programs against a stock `p11-kit server` or `p11fwd server` that serves a
//! SoftHSM [`TestToken`].
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // shared by several test crates

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use p11fwd_tests::{P11Env, StockServer, TestToken, artifacts, percent_encode, require_tool};
use tempfile::TempDir;

/// The server a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Debian's `p11-kit server` 0.24.1 (protocol version 0).
    Stock,
    /// `p11fwd server` (protocol version 2).
    Fwd,
}

/// A running server of either kind.
#[derive(Debug)]
pub enum Server {
    /// `p11-kit server`.
    Stock(StockServer),
    /// `p11fwd server`.
    Fwd(Fwd),
}

impl Server {
    /// Serve `token` with a server of `kind`.
    #[track_caller]
    pub fn start(kind: Kind, token: &TestToken) -> Self {
        match kind {
            Kind::Stock => Self::Stock(StockServer::start(token)),
            Kind::Fwd => Self::Fwd(Fwd::start(token)),
        }
    }

    /// `unix:path=...`.
    pub fn address(&self) -> String {
        match self {
            Self::Stock(s) => s.address(),
            Self::Fwd(f) => f.address(),
        }
    }

    /// Environment for client programs: `P11_KIT_SERVER_ADDRESS`, which `p11fwd-client.so`
    /// honours exactly as `p11-kit-client.so` does.
    pub fn p11env(&self) -> P11Env {
        P11Env::new(self.address())
    }

    /// The server's log.
    pub fn log(&self) -> String {
        match self {
            Self::Stock(s) => s.log(),
            Self::Fwd(f) => f.log(),
        }
    }
}

/// `p11fwd server -f --provider <softhsm> -n <dir>/fwd.sock <token uri>`, stopped on drop.
#[derive(Debug)]
pub struct Fwd {
    child: Child,
    dir: TempDir,
    socket: PathBuf,
}

impl Fwd {
    /// Start it and wait for its socket.
    #[track_caller]
    pub fn start(token: &TestToken) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("p11fwd-client-fwd.")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("fwd.sock");
        let child = Command::new(artifacts::forwarder_bin())
            .envs(token.env())
            .args(["server", "-f", "--provider"])
            .arg(token.module_path())
            .arg("-n")
            .arg(&socket)
            .arg(token.uri())
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("fwd.out")).unwrap())
            .stderr(File::create(dir.path().join("fwd.log")).unwrap())
            .spawn()
            .unwrap();
        let mut fwd = Self { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&fwd.socket).is_err() {
            if let Ok(Some(status)) = fwd.child.try_wait() {
                panic!("p11fwd server exited with {status}:\n{}", fwd.log());
            }
            assert!(
                Instant::now() < deadline,
                "p11fwd server not up:\n{}",
                fwd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        fwd
    }

    /// `unix:path=...`.
    pub fn address(&self) -> String {
        format!(
            "unix:path={}",
            percent_encode(&self.socket.to_string_lossy())
        )
    }

    /// What it logged.
    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            read("fwd.out"),
            read("fwd.log")
        )
    }
}

impl Drop for Fwd {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Our module (fails loudly if it was not built: `cargo build -p p11fwd-client`).
pub fn module() -> PathBuf {
    artifacts::client_module()
}

/// `openssl` with `args`.
#[track_caller]
pub fn openssl(args: &[&str]) -> p11fwd_tests::RunOutput {
    p11fwd_tests::run_ok(Command::new(require_tool("openssl")).args(args))
}

/// The DER SubjectPublicKeyInfo of a PEM public key, certificate or CSR (by `kind`: `pkey`,
/// `x509` or `req`; `der` for DER input).
#[track_caller]
pub fn spki(kind: &str, path: &Path, der: bool) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("pub.pem");
    let inform = if der { "DER" } else { "PEM" };
    let p = path.to_string_lossy();
    let out = pem.to_string_lossy();
    match kind {
        "pkey" => openssl(&["pkey", "-pubin", "-inform", inform, "-in", &p, "-out", &out]),
        other => openssl(&[
            other, "-inform", inform, "-in", &p, "-noout", "-pubkey", "-out", &out,
        ]),
    };
    openssl(&["pkey", "-pubin", "-in", &out, "-outform", "DER"]).stdout_bytes
}

/// The mechanism names in `pkcs11-tool -M` output.
pub fn mechanism_names(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| l.trim().split([',', ' ']).next())
        .map(str::to_owned)
        .collect()
}
