//! Shared helpers of the forwarder's end-to-end tests: a `p11fwd server -f` child serving a
//! SoftHSM [`TestToken`], and wire clients for it.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use p11fwd_tests::{P11Env, TestToken, percent_encode};
use p11fwd_wire::client::Client;
use p11fwd_wire::consts::*;
use p11fwd_wire::transport::blocking::Options;
use p11fwd_wire::value::Attribute;
use tempfile::TempDir;

/// The forwarder binary built with these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_p11fwd")
}

/// A running `p11fwd server -f --provider <softhsm> -n <dir>/fwd.sock <uri>`, stopped on drop.
#[derive(Debug)]
pub struct Fwd {
    child: Child,
    dir: TempDir,
    socket: PathBuf,
}

impl Fwd {
    /// Serve `token.uri()`.
    #[track_caller]
    pub fn start(token: &TestToken) -> Self {
        Self::start_with(token, &token.uri(), &[])
    }

    /// Serve `uri` with extra arguments.
    #[track_caller]
    pub fn start_with(token: &TestToken, uri: &str, extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("p11fwd-fwd.")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("fwd.sock");
        let mut cmd = Command::new(bin());
        cmd.envs(token.env())
            .env("P11FWD_LOG", "info,p11fwd::call=debug")
            .arg("server")
            .arg("-f")
            .arg("--provider")
            .arg(token.module_path())
            .arg("-n")
            .arg(&socket)
            .args(extra)
            .arg(uri)
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("fwd.out")).unwrap())
            .stderr(File::create(dir.path().join("fwd.log")).unwrap());
        let child = cmd.spawn().unwrap();
        let mut fwd = Self { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = fwd.child.try_wait() {
                panic!("p11fwd server exited with {status}:\n{}", fwd.log());
            }
            if UnixStream::connect(&fwd.socket).is_ok() {
                break;
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

    /// The socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Environment for stock clients.
    pub fn p11env(&self) -> P11Env {
        P11Env::new(self.address())
    }

    /// The server's stdout and stderr so far.
    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            read("fwd.out"),
            read("fwd.log")
        )
    }

    /// A wire client offering `offer`, after RPC C_Initialize.
    pub fn client(&self, offer: u8) -> Client {
        connect(&self.socket, offer)
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
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

/// A wire client connected to `socket`, offering `offer`, after RPC C_Initialize.
pub fn connect(socket: &Path, offer: u8) -> Client {
    let opts = Options {
        offer,
        timeout: Duration::from_secs(60),
        ..Options::default()
    };
    let c = Client::connect(socket, opts).unwrap();
    c.initialize(None).unwrap();
    c
}

/// Open a RW session on the first slot.
pub fn session(c: &Client) -> u64 {
    let slots = c.slots(true).unwrap();
    c.open_session(slots[0], CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap()
}

/// Find the objects with `label` and `class`.
pub fn find(c: &Client, s: u64, label: &str, class: u64) -> Vec<u64> {
    c.find_all(
        s,
        vec![
            Attribute::ulong(CKA_CLASS, class),
            Attribute::bytes(CKA_LABEL, label.as_bytes().to_vec()),
        ],
        16,
    )
    .unwrap()
}

/// The one object with `label` and `class`.
#[track_caller]
pub fn find_one(c: &Client, s: u64, label: &str, class: u64) -> u64 {
    let v = find(c, s, label, class);
    assert_eq!(v.len(), 1, "{label}/{class}: {v:?}");
    v[0]
}

/// The CK_RV of a failed wire call.
#[track_caller]
pub fn rv_of<T: std::fmt::Debug>(r: p11fwd_wire::Result<T>) -> u64 {
    match r {
        Err(e) => e.rv().0,
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// The session count the module reports for the token (counts every connection's sessions).
pub fn session_count(c: &Client) -> u64 {
    let slots = c.slots(true).unwrap();
    c.get_token_info(slots[0]).unwrap().session_count
}
